//! The store writer: every mutation of the relay's store goes through here.
//!
//! Threads, none of them a runtime worker:
//!
//! * an **applier** per lane owns the write side of the store (one lane for sled, whose
//!   operations rely on nothing interleaving; several for a store whose every operation is
//!   atomic on its own, such as the Redis store, whose operations each wait for a network round
//!   trip: lanes overlap those waits). A connection's operations always take the same lane, so
//!   they apply in the order it submitted them. An applier It takes every operation queued at that
//!   moment (at most [`limits::WRITER_BATCH_MAX`]), applies them one after another (each one a
//!   sled `apply_batch` or single-key write inside the store, see `store::sled_store`), and hands
//!   the batch's answers to the flusher. An operation may act on what it wrote at once: a send
//!   hands its envelopes to the connected recipients here, before anything is flushed.
//! * the **flusher** takes every applied batch waiting at that moment, makes the store durable
//!   with one flush, and only then releases those batches' answers. While it flushes, the applier
//!   goes on with the next batch.
//!
//! Atomicity: with one lane, operations are applied one at a time, in the order they were
//! submitted, by one thread, so nothing interleaves inside an operation (the store's own locks
//! make each operation atomic for readers too). With several lanes (a Redis store), operations
//! of different connections interleave, and each store call is atomic by itself (one Lua script
//! on one slot): a one-time key is still claimed once and a queue cap still checked against
//! everything written before, by the script. Either way a send from one connection keeps its
//! order against the same connection's later sends.
//!
//! Durability: an answer is released only by a flush that started after its operation was
//! applied, so an answered operation is on disk. An operation that asks for no answer (an
//! acknowledgement of delivered mail) does not by itself cause a flush: losing it in a crash only
//! re-delivers.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use crate::limits;
use crate::ops::Metrics;
use crate::store::{RelayStore, StoreError};

/// What the flusher needs of a store: one call that makes everything written so far durable.
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

/// What runs once the operation's effects are durable (or the flush failed).
pub type Settle = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// An operation: applied on the writer thread; returns what to run once it is durable, or
/// `None` if nothing waits for its durability.
pub type Op = Box<dyn FnOnce() -> Option<Settle> + Send>;

/// The handle connections submit operations through. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    lanes: Arc<[mpsc::Sender<Op>]>,
}

/// The writer's threads, to join after every [`Writer`] handle is gone.
pub struct WriterThreads {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WriterThreads {
    /// Waits (off the runtime) for both threads to finish what they hold.
    pub async fn join(self) {
        let _ = tokio::task::spawn_blocking(move || {
            for t in self.threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// The writer stopped (the relay is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the store writer has stopped")]
pub struct Stopped;

impl Writer {
    /// Starts the applier and the flusher. They stop when every handle is dropped, after
    /// applying, flushing and answering what was submitted.
    pub fn spawn(
        store: Arc<dyn Flush>,
        metrics: Arc<Metrics>,
        max_batch: usize,
    ) -> std::io::Result<(Self, WriterThreads)> {
        Self::spawn_lanes(store, metrics, max_batch, 1)
    }

    /// As [`Writer::spawn`], with `lanes` appliers (at least one) sharing one flusher.
    pub fn spawn_lanes(
        store: Arc<dyn Flush>,
        metrics: Arc<Metrics>,
        max_batch: usize,
        lanes: usize,
    ) -> std::io::Result<(Self, WriterThreads)> {
        let max_batch = max_batch.clamp(1, limits::WRITER_BATCH_MAX);
        let (flush_tx, flush_rx) = mpsc::channel::<Vec<Settle>>();
        let mut threads = Vec::new();
        let mut senders = Vec::new();
        for lane in 0..lanes.max(1) {
            let (tx, rx) = mpsc::channel::<Op>();
            let flush_tx = flush_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("hush-writer-{lane}"))
                    .spawn(move || apply_loop(&rx, &flush_tx, max_batch))?,
            );
            senders.push(tx);
        }
        drop(flush_tx);
        threads.push(
            std::thread::Builder::new()
                .name("hush-flusher".into())
                .spawn(move || flush_loop(&flush_rx, &*store, &metrics))?,
        );
        Ok((
            Self {
                lanes: senders.into(),
            },
            WriterThreads { threads },
        ))
    }

    /// Queues an operation (on the first lane).
    pub fn submit(&self, op: Op) -> Result<(), Stopped> {
        self.submit_on(0, op)
    }

    /// Queues an operation on the lane of `key` (a connection's id: its operations keep their
    /// order).
    pub fn submit_on(&self, key: u64, op: Op) -> Result<(), Stopped> {
        let n = self.lanes.len().max(1) as u64;
        let lane = usize::try_from(key % n).unwrap_or(0);
        self.lanes
            .get(lane)
            .ok_or(Stopped)?
            .send(op)
            .map_err(|_| Stopped)
    }

    /// Runs `f` on the writer and returns its result once it is durable (for callers outside a
    /// connection: the sweeper, tests).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move || {
            let value = f();
            Some(Box::new(move |durable: Result<(), StoreError>| {
                let _ = tx.send(durable.map(|()| value));
            }) as Settle)
        }))
        .map_err(|_| StoreError::Backend("writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("writer stopped".into()))?
    }
}

fn apply_loop(rx: &mpsc::Receiver<Op>, flush_tx: &mpsc::Sender<Vec<Settle>>, max_batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut settles = Vec::new();
        if let Some(s) = first() {
            settles.push(s);
        }
        let mut n = 1;
        while n < max_batch {
            let Ok(op) = rx.try_recv() else { break };
            if let Some(s) = op() {
                settles.push(s);
            }
            n += 1;
        }
        if !settles.is_empty() && flush_tx.send(settles).is_err() {
            return;
        }
    }
}

fn flush_loop(rx: &mpsc::Receiver<Vec<Settle>>, store: &dyn Flush, metrics: &Metrics) {
    while let Ok(first) = rx.recv() {
        let mut waiting = first;
        while let Ok(more) = rx.try_recv() {
            waiting.extend(more);
        }
        let started = Instant::now();
        let result = store.flush().map_err(|e| e.to_string());
        metrics
            .flush_latency
            .observe(started.elapsed().as_secs_f64());
        metrics.flush_batch.observe(waiting.len() as f64);
        if let Err(e) = &result {
            tracing::error!(error = %e, "flush failed");
        }
        for settle in waiting {
            settle(result.clone().map_err(StoreError::Backend));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts writes; each flush records how many writes it covered, and takes a while.
    #[derive(Default)]
    struct SlowDisk {
        writes: AtomicU64,
        flushes: AtomicU64,
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
    async fn answers_wait_for_a_flush_that_covers_them_and_flushes_are_shared() {
        let disk = Arc::new(SlowDisk::default());
        let (writer, threads) = Writer::spawn(
            Arc::clone(&disk) as Arc<dyn Flush>,
            Arc::new(Metrics::new()),
            1024,
        )
        .unwrap();
        let tasks: Vec<_> = (0..300)
            .map(|_| {
                let w = writer.clone();
                let d = Arc::clone(&disk);
                tokio::spawn(async move {
                    let d2 = Arc::clone(&d);
                    let mine = w
                        .run(move || d2.writes.fetch_add(1, Ordering::SeqCst) + 1)
                        .await
                        .unwrap();
                    assert!(d.covered.load(Ordering::SeqCst) >= mine);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let flushes = disk.flushes.load(Ordering::SeqCst);
        assert!(
            (1..300).contains(&flushes),
            "{flushes} flushes for 300 operations"
        );
        drop(writer);
        threads.join().await;
    }

    #[tokio::test]
    async fn operations_apply_in_submission_order_and_unanswered_ones_cause_no_flush() {
        let disk = Arc::new(SlowDisk::default());
        let (writer, threads) = Writer::spawn(
            Arc::clone(&disk) as Arc<dyn Flush>,
            Arc::new(Metrics::new()),
            8,
        )
        .unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        for i in 0..50 {
            let o = Arc::clone(&order);
            writer
                .submit(Box::new(move || {
                    o.lock().unwrap().push(i);
                    None
                }))
                .unwrap();
        }
        let o = Arc::clone(&order);
        writer
            .run(move || o.lock().unwrap().push(50))
            .await
            .unwrap();
        assert_eq!(*order.lock().unwrap(), (0..=50).collect::<Vec<_>>());
        assert_eq!(disk.flushes.load(Ordering::SeqCst), 1);
        drop(writer);
        threads.join().await;
    }
}
