//! Group commit: many writers, one flush. A writer that has written its envelopes asks for
//! durability; one flusher task takes every request waiting at that moment, flushes the store
//! once, and answers them all. A request is only ever answered by a flush that started after it
//! was made, so an answered writer's data is on disk.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::ops::Metrics;
use crate::store::{RelayStore, StoreError};

/// What group commit needs of a store: one call that makes everything written so far durable.
pub trait Flush: Send + Sync + 'static {
    /// Makes everything written before the call durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// A relay store, as something to flush.
pub struct StoreFlush(pub Arc<dyn RelayStore>);

impl Flush for StoreFlush {
    fn flush(&self) -> Result<(), StoreError> {
        self.0.flush()
    }
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// The handle writers use.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl GroupCommit {
    /// Starts the flusher. It ends when every handle is dropped.
    pub fn spawn(
        store: Arc<dyn Flush>,
        metrics: Arc<Metrics>,
        max_batch: usize,
    ) -> (Self, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        let max_batch = max_batch.max(1);
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(w) => batch.push(w),
                        Err(_) => break,
                    }
                }
                let s = Arc::clone(&store);
                let started = Instant::now();
                let result = match tokio::task::spawn_blocking(move || s.flush()).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                metrics.flush_latency.observe(started.elapsed());
                metrics.flush_batch.observe_value(batch.len() as f64);
                if let Err(e) = &result {
                    tracing::error!(error = %e, "flush failed");
                }
                for w in batch.drain(..) {
                    let _ = w.send(result.clone());
                }
            }
        });
        (Self { tx }, task)
    }

    /// Returns once everything this task wrote before calling it is durable.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .map_err(|_| StoreError::Backend("flusher stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("flusher stopped".into()))?
            .map_err(StoreError::Backend)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Records, at the start of each flush, how many writes had been made; a flush takes a while.
    #[derive(Default)]
    struct SlowDisk {
        writes: AtomicU64,
        flushes: AtomicU64,
        /// Writes covered by the latest completed flush.
        covered: AtomicU64,
    }

    impl Flush for SlowDisk {
        fn flush(&self) -> Result<(), StoreError> {
            let covered = self.writes.load(Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(2));
            self.flushes.fetch_add(1, Ordering::SeqCst);
            self.covered.fetch_max(covered, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answered_writer_is_covered_by_a_flush_and_flushes_are_shared() {
        let disk = Arc::new(SlowDisk::default());
        let flush: Arc<dyn Flush> = Arc::clone(&disk) as Arc<dyn Flush>;
        let (commit, task) = GroupCommit::spawn(flush, Arc::new(Metrics::new()), 1024);
        let writers: Vec<_> = (0..200)
            .map(|_| {
                let commit = commit.clone();
                let disk = Arc::clone(&disk);
                tokio::spawn(async move {
                    let mine = disk.writes.fetch_add(1, Ordering::SeqCst) + 1;
                    commit.durable().await.unwrap();
                    // Answered only by a flush that began after this write.
                    assert!(disk.covered.load(Ordering::SeqCst) >= mine);
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let flushes = disk.flushes.load(Ordering::SeqCst);
        assert!(flushes >= 1);
        assert!(
            flushes < 200,
            "every writer got its own flush: no group commit"
        );
        drop(commit);
        task.await.unwrap();
    }
}
