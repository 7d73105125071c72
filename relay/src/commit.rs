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

type Waiter = oneshot::Sender<Result<(), String>>;

/// The handle writers use.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl GroupCommit {
    /// Starts the flusher. It ends when every handle is dropped.
    pub fn spawn(
        store: Arc<dyn RelayStore>,
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
