//! The app's life: suspending and resuming, a push wake-up that takes in what waits and goes
//! back to sleep, network changes and keep-alives (docs/MOBILE.md "Lifecycle").

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::conn::{Liveness, Transport};
use crate::engine::NetworkMove;
use crate::error::ClientError;

use super::Messenger;

/// Longest a wake-up may take (longer ones are cut to it).
const MAX_WAKE: Duration = Duration::from_secs(24 * 60 * 60);

/// What a [`Messenger::wake`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WakeReport {
    /// The relay delivered everything queued for this device, and all of it is stored (with
    /// its delivery receipts sent), within the time given.
    pub caught_up: bool,
    /// Messages from others stored during the wake-up (each is also told as a `Message`
    /// event, once).
    pub messages: u64,
    /// Messages of this device still waiting to leave when the wake-up ended (they leave on
    /// the next connection).
    pub unsent: u64,
}

impl Messenger {
    /// Suspends the connection (the app goes to the background): what this device
    /// acknowledged is confirmed by the relay, then the connection is closed, and none is made
    /// until [`Messenger::resume`] or a [`Messenger::wake`]. Local calls keep working; sends
    /// wait in the outbox. Returns once closed (a few seconds at most).
    pub async fn suspend(&self) {
        self.shared.engine.suspend().await;
    }

    /// Ends a suspension (the app is in the foreground again): the relay is dialled at once.
    pub fn resume(&self) {
        self.shared.engine.resume();
    }

    /// Woken by a push: connects (even while suspended), takes in everything queued at the relay
    /// (stored, told as events, delivery receipts sent), lets the outbox send what waits, and
    /// returns after `wait` at the most (plus the few seconds a clean close may take), suspended
    /// again if the app suspended the messenger and has not resumed it meanwhile. Each queued
    /// message is told once: what was fetched is acknowledged to the relay before the connection
    /// closes (were the relay not to confirm it in time, it delivers it again and the copy is
    /// dropped here, untold). Connected and caught up already, nothing is fetched: deliveries
    /// arrive as they come.
    pub async fn wake(&self, wait: Duration) -> Result<WakeReport, ClientError> {
        let engine = &self.shared.engine;
        if engine.is_closed() {
            return Err(ClientError::Closed);
        }
        let wait = wait.min(MAX_WAKE);
        let deadline = tokio::time::Instant::now()
            .checked_add(wait)
            .unwrap_or_else(tokio::time::Instant::now);
        let received = self.shared.received.load(Ordering::Relaxed);
        let in_background = engine.is_suspended();
        // Connected until the end of this call, suspended or not.
        let lease = engine.wake_lease();
        let caught_up = if engine.fetch_queue(wait).await {
            // The engine's drain, then the messenger's handling of every event before it: the
            // messenger counts the `CaughtUp` events it handled, one for each the engine told.
            let told = engine.caught_up_count();
            let mut handled = self.shared.caught_up.subscribe();
            tokio::time::timeout_at(deadline, handled.wait_for(|n| *n >= told))
                .await
                .is_ok_and(|r| r.is_ok())
        } else {
            false
        };
        // In the background, what the user sent (or answered from a notification) leaves too,
        // while time is left; in the foreground the outbox goes on by itself.
        let mut changed = self.shared.changed.subscribe();
        while in_background && self.outbox_busy() {
            changed.borrow_and_update();
            if !self.outbox_busy() {
                break;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        let unsent = self.unsent();
        lease.release().await;
        Ok(WakeReport {
            caught_up,
            messages: self
                .shared
                .received
                .load(Ordering::Relaxed)
                .wrapping_sub(received),
            unsent,
        })
    }

    /// Tells the messenger that the device changed networks; `network` names the new one (an
    /// identifier the app chooses, never sent anywhere; empty when unknown). See
    /// [`crate::Engine::network_changed`].
    pub fn network_changed(&self, network: &str) -> NetworkMove {
        self.shared.engine.network_changed(network)
    }

    /// How the connection is kept alive (see [`Liveness`]).
    pub fn set_liveness(&self, liveness: Liveness) {
        self.shared.engine.set_liveness(liveness);
    }

    /// What carries the connection now (`None` while not connected).
    pub fn transport(&self) -> Option<Transport> {
        self.shared.engine.transport()
    }

    /// Whether an outbox worker is still at work.
    fn outbox_busy(&self) -> bool {
        self.shared.working.lock().is_ok_and(|w| !w.is_empty())
    }

    /// Messages of this device waiting to leave.
    fn unsent(&self) -> u64 {
        self.shared.lock_history().map_or(0, |h| {
            h.by_key
                .values()
                .filter(|m| self.shared.is_pending(m))
                .count() as u64
        })
    }
}
