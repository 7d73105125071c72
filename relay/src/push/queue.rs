//! The wake-up queue: wakes coalesced per device, a cap on devices waiting, a bound on POSTs
//! in flight, retries with backoff, and the end of it all at shutdown.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{
    MAX_RETRY_AFTER, PushError, Reply, Verdict, backoff, classify, http_client, post,
};
use super::url::PushUrl;
use super::{PushConfig, PushStats, PushTargets, WebPushKeys};
use crate::store::DeviceId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting in the queue for its coalescing delay and a free slot.
    Queued,
    /// Being delivered; `again` is set when another wake came meanwhile.
    Running { again: bool },
}

#[derive(Debug, Default)]
pub(super) struct State {
    devices: HashMap<DeviceId, Phase>,
    /// Devices in [`Phase::Queued`], with the time their POST may start. All share one
    /// coalescing delay, so the times only grow from front to back.
    pub(super) queue: VecDeque<(Instant, DeviceId)>,
    closed: bool,
}

pub(super) struct Shared {
    cfg: PushConfig,
    targets: Arc<dyn PushTargets>,
    stats: Arc<PushStats>,
    http: Option<reqwest::Client>,
    state: Mutex<State>,
    queued: Notify,
    waiting: watch::Sender<usize>,
    pub(super) slots: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, state: &State) {
        self.waiting.send_replace(state.devices.len());
    }

    /// Ends a delivery: the device is queued once more if a wake came meanwhile.
    fn finish(&self, device: DeviceId) {
        let mut state = self.lock();
        let again = matches!(
            state.devices.get(&device),
            Some(Phase::Running { again: true })
        );
        if again && !state.closed {
            state.devices.insert(device, Phase::Queued);
            state
                .queue
                .push_back((Instant::now() + self.cfg.coalesce, device));
            self.queued.notify_one();
        } else {
            state.devices.remove(&device);
        }
        self.publish(&state);
    }

    /// Waits for a free POST slot, or `None` at shutdown.
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            permit = Arc::clone(&self.slots).acquire_owned() => permit.ok(),
            () = self.shutdown.cancelled() => None,
        }
    }

    /// One POST with the pusher's client.
    async fn post(&self, url: &PushUrl, keys: Option<&WebPushKeys>) -> Result<Reply, PushError> {
        let http = self.http.as_ref().ok_or(PushError::ClientUnavailable)?;
        post(http, url, keys, &self.cfg).await
    }

    /// Counts a delivery cut short by shutdown.
    fn abandon(&self) {
        PushStats::bump(&self.stats.dropped);
    }

    /// Delivers one wake, with retries. `slot` is the POST slot for the first attempt.
    async fn deliver(&self, device: DeviceId, slot: OwnedSemaphorePermit) {
        let Some(registration) = self.targets.endpoint(&device) else {
            tracing::debug!("push wake skipped: no endpoint registered");
            return;
        };
        let raw = registration.url;
        let keys = registration.keys;
        let url = match PushUrl::parse(&raw) {
            Ok(url) => url,
            Err(error) => {
                PushStats::bump(&self.stats.failed);
                tracing::warn!(%error, "push endpoint rejected");
                return;
            }
        };
        let host = url.host();
        if !url.is_https() && !self.cfg.allow_plain_http {
            PushStats::bump(&self.stats.failed);
            tracing::warn!(%host, error = %PushError::PlainHttpNotAllowed, "push endpoint rejected");
            return;
        }
        let max_attempts = self.cfg.max_attempts.max(1);
        let mut slot = Some(slot);
        let mut attempt = 1;
        loop {
            let permit = match slot.take() {
                Some(permit) => permit,
                None => match self.slot().await {
                    Some(permit) => permit,
                    None => return self.abandon(),
                },
            };
            let result = tokio::select! {
                result = self.post(&url, keys.as_ref()) => result,
                () = self.shutdown.cancelled() => return self.abandon(),
            };
            drop(permit);
            let delay = match result {
                Ok(reply) => match classify(reply) {
                    Verdict::Accepted => {
                        PushStats::bump(&self.stats.sent);
                        tracing::debug!(%host, status = reply.status, "push wake accepted");
                        return;
                    }
                    Verdict::Gone => {
                        PushStats::bump(&self.stats.gone);
                        tracing::info!(%host, status = reply.status, "push endpoint gone");
                        self.targets.endpoint_gone(&device, &raw);
                        return;
                    }
                    Verdict::Refused => {
                        PushStats::bump(&self.stats.failed);
                        tracing::warn!(%host, status = reply.status, "push wake refused");
                        return;
                    }
                    Verdict::Retry(Some(after)) => {
                        tracing::debug!(%host, status = reply.status, "push wake deferred");
                        after.min(MAX_RETRY_AFTER)
                    }
                    Verdict::Retry(None) => {
                        tracing::debug!(%host, status = reply.status, "push wake deferred");
                        backoff(&self.cfg, attempt)
                    }
                },
                Err(error) => {
                    tracing::debug!(%host, %error, "push wake failed");
                    backoff(&self.cfg, attempt)
                }
            };
            if attempt >= max_attempts {
                PushStats::bump(&self.stats.failed);
                tracing::warn!(%host, attempts = attempt, "push wake given up");
                return;
            }
            attempt += 1;
            PushStats::bump(&self.stats.retries);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => return self.abandon(),
            }
        }
    }

    /// Starts queued deliveries as their coalescing delay passes and POST slots free up.
    async fn dispatch(self: Arc<Self>) {
        let tracker = TaskTracker::new();
        loop {
            let next = self.lock().queue.front().map(|&(due, _)| due);
            let Some(due) = next else {
                tokio::select! {
                    () = self.queued.notified() => continue,
                    () = self.shutdown.cancelled() => break,
                }
            };
            if due > Instant::now() {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = self.shutdown.cancelled() => break,
                }
            }
            let Some(slot) = self.slot().await else {
                break;
            };
            let device = {
                let mut state = self.lock();
                let Some((_, device)) = state.queue.pop_front() else {
                    continue;
                };
                state
                    .devices
                    .insert(device, Phase::Running { again: false });
                device
            };
            let shared = Arc::clone(&self);
            tracker.spawn(async move {
                shared.deliver(device, slot).await;
                shared.finish(device);
            });
        }
        {
            let mut state = self.lock();
            state.closed = true;
            let abandoned = state.queue.len();
            state.queue.clear();
            state
                .devices
                .retain(|_, phase| matches!(phase, Phase::Running { .. }));
            self.stats
                .dropped
                .inc_by(u64::try_from(abandoned).unwrap_or(u64::MAX));
            self.publish(&state);
        }
        tracker.close();
        tracker.wait().await;
    }
}

/// Sends push wake-ups in the background. Cheap to clone; all clones feed one queue.
#[derive(Clone)]
pub struct Pusher {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for Pusher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pusher")
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

impl Pusher {
    /// Starts the background task that delivers wakes. It stops when `shutdown` is cancelled:
    /// queued wakes are dropped (and counted), POSTs in flight are abandoned, and the returned
    /// handle completes. Must be called within a Tokio runtime.
    pub fn spawn(
        cfg: PushConfig,
        targets: Arc<dyn PushTargets>,
        stats: Arc<PushStats>,
        shutdown: CancellationToken,
    ) -> (Pusher, JoinHandle<()>) {
        let http = match http_client(&cfg) {
            Ok(client) => Some(client),
            Err(error) => {
                let error = error.without_url();
                tracing::error!(%error, "push client set-up failed: push wake-ups will fail");
                None
            }
        };
        let slots = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
        let shared = Arc::new(Shared {
            cfg,
            targets,
            stats,
            http,
            state: Mutex::new(State::default()),
            queued: Notify::new(),
            waiting: watch::Sender::new(0),
            slots,
            shutdown,
        });
        let task = tokio::spawn(Arc::clone(&shared).dispatch());
        (Pusher { shared }, task)
    }

    /// Asks for `device` to be woken. Never blocks and never fails: while a wake for the device
    /// is pending or in flight, this one is merged into at most one further POST after it; past
    /// [`PushConfig::max_pending`] devices, or after shutdown, it is dropped and counted.
    pub fn wake(&self, device: DeviceId) {
        let shared = &self.shared;
        let mut state = shared.lock();
        if state.closed {
            PushStats::bump(&shared.stats.dropped);
            return;
        }
        let full = state.devices.len() >= shared.cfg.max_pending;
        match state.devices.get_mut(&device) {
            Some(Phase::Queued) => {}
            Some(Phase::Running { again }) => *again = true,
            None if full => PushStats::bump(&shared.stats.dropped),
            None => {
                state.devices.insert(device, Phase::Queued);
                state
                    .queue
                    .push_back((Instant::now() + shared.cfg.coalesce, device));
                shared.publish(&state);
                shared.queued.notify_one();
            }
        }
    }

    /// How many devices have a wake pending or in flight.
    pub fn waiting(&self) -> usize {
        self.shared.lock().devices.len()
    }

    /// Resolves once no wake is pending or in flight (at once if none is).
    pub async fn idle(&self) {
        let mut waiting = self.shared.waiting.subscribe();
        // The sender lives in `self.shared`, so this cannot fail while `self` exists.
        let _ = waiting.wait_for(|&n| n == 0).await;
    }
}
