//! What a mobile app's life asks of the connection: suspending and resuming it, a short wake-up
//! to take in what waits at the relay, network changes (QUIC migration, TCP dialled again) and
//! how often the link is kept alive (docs/MOBILE.md).

use std::time::Duration;

use crate::conn::{Liveness, Transport};
use crate::error::ClientError;

use super::{ConnectionState, Engine, SUSPEND_WAIT};

/// What [`Engine::network_changed`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkMove {
    /// The QUIC connection moved to a new local socket (connection migration): nothing was
    /// interrupted.
    Migrated,
    /// The connection (TLS over TCP, which cannot migrate) or the attempt under way was ended and
    /// the relay is dialled again at once.
    Redialled,
    /// Suspended: nothing to move; the next connection uses the new network.
    Suspended,
}

/// What decides whether the engine is suspended.
#[derive(Debug, Default)]
pub(super) struct Suspension {
    /// The app suspended the engine and has not resumed it.
    by_app: bool,
    /// Wake-ups running: each keeps the engine connected until it ends.
    wakes: u32,
}

/// Longest a wake-up may wait (longer ones are cut to it).
const MAX_WAKE: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest period of the QUIC retries [`Engine::set_quic_retry`] takes.
const MAX_QUIC_RETRY: Duration = Duration::from_secs(24 * 60 * 60);

impl Engine {
    /// Suspends the engine: the connection is closed cleanly (what this device acknowledged is
    /// confirmed by the relay first, at most [`SUSPEND_WAIT`]) and no new one is made until
    /// [`Engine::resume`]; a wake-up running meanwhile keeps it connected until it ends. Calls
    /// that need the relay wait for it (or time out) meanwhile; everything local keeps working.
    /// For an app going to the background: the relay queues what arrives and wakes the device
    /// through its push endpoint. Returns once the connection is closed, or after
    /// [`SUSPEND_WAIT`] and a second more at the most.
    pub async fn suspend(&self) {
        if self.is_closed() {
            return;
        }
        self.suspension(|s| s.by_app = true);
        self.settle_suspended().await;
    }

    /// Ends a suspension: the relay is dialled at once (no backoff left from before, even
    /// when the engine was only waiting to try again).
    pub fn resume(&self) {
        self.suspension(|s| s.by_app = false);
        self.dial_now();
    }

    /// Whether the app suspended the engine (and has not resumed it).
    pub fn is_suspended(&self) -> bool {
        self.inner.suspension.lock().is_ok_and(|s| s.by_app)
    }

    /// Connects (even while suspended) until the relay has delivered everything queued for this
    /// device and it is processed, at most `wait`; then, if the app suspended the engine and has
    /// not resumed it since, and no other wake-up runs, suspends it again. Returns whether the
    /// queue was drained in time. Connected and caught up already, it returns at once:
    /// deliveries arrive as they come.
    ///
    /// [`crate::Messenger::wake`] builds on this; an app calls that one.
    pub async fn wake(&self, wait: Duration) -> Result<bool, ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let lease = self.wake_lease();
        let drained = self.fetch_queue(wait).await;
        lease.release().await;
        Ok(drained)
    }

    /// Keeps the engine connected (suspended or not) until the lease is released.
    pub(crate) fn wake_lease(&self) -> WakeLease<'_> {
        self.suspension(|s| s.wakes = s.wakes.saturating_add(1));
        self.dial_now();
        WakeLease { engine: self }
    }

    /// Waits (at most `wait`) until everything the relay had queued for this device is
    /// processed: at once when the current connection is there already, otherwise on the next
    /// connection. Returns whether it happened in time. The caller keeps the engine connected
    /// (a [`WakeLease`]).
    pub(crate) async fn fetch_queue(&self, wait: Duration) -> bool {
        let mut caught_up = self.inner.caught_up.subscribe();
        caught_up.borrow_and_update();
        if self.state() == ConnectionState::Online
            && self
                .inner
                .drained
                .load(std::sync::atomic::Ordering::Acquire)
        {
            return true;
        }
        tokio::time::timeout(wait.min(MAX_WAKE), caught_up.changed())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// How many times the relay said this device's queue was drained since the engine started
    /// (each told as [`super::Event::CaughtUp`] first).
    pub(crate) fn caught_up_count(&self) -> u64 {
        *self.inner.caught_up.borrow()
    }

    /// Changes what decides the suspension and makes the engine follow it.
    fn suspension(&self, change: impl FnOnce(&mut Suspension)) {
        if let Ok(mut s) = self.inner.suspension.lock() {
            change(&mut s);
            // Under the lock: the flag always follows the latest change.
            self.inner.suspended.send_replace(s.by_app && s.wakes == 0);
        }
    }

    /// Once the engine is to be suspended, waits (bounded) until its connection is closed.
    async fn settle_suspended(&self) {
        if !*self.inner.suspended.borrow() {
            return;
        }
        let mut state = self.inner.state.subscribe();
        let _ = tokio::time::timeout(
            SUSPEND_WAIT + Duration::from_secs(1),
            state.wait_for(|s| *s == ConnectionState::Suspended),
        )
        .await;
    }

    /// Cuts short a wait for the next attempt (a backoff), if the engine is waiting.
    fn dial_now(&self) {
        if self.state() == ConnectionState::Offline {
            self.redial();
        }
    }

    /// Tells the engine that the device changed networks (Android's `ConnectivityManager`
    /// callback, iOS's path monitor): `network` names the new one (see
    /// [`crate::conn::set_network`]; empty when unknown). A QUIC connection moves to a new
    /// socket at once and carries on; a TLS-over-TCP connection, or an attempt under way or
    /// waiting out its backoff, is dialled again at once (QUIC first unless TCP is what worked on
    /// this network before).
    pub fn network_changed(&self, network: &str) -> NetworkMove {
        crate::conn::set_network(network);
        if *self.inner.suspended.borrow() {
            return NetworkMove::Suspended;
        }
        let current = self.inner.conn.borrow().clone();
        if let Some(conn) = current
            && conn.transport() == Transport::Quic
        {
            // The new socket is registered with the engine's runtime, whatever thread asks.
            let _in_runtime = self.inner.runtime.enter();
            match conn.rebind() {
                Ok(Some(_)) => return NetworkMove::Migrated,
                Ok(None) => {}
                Err(e) => tracing::info!(error = %e, "could not move the connection; dialling"),
            }
        }
        self.redial();
        NetworkMove::Redialled
    }

    /// Sets how the connection is kept alive: [`Liveness::Interactive`] in the foreground,
    /// [`Liveness::Background`] for an app that keeps its connection while in the background.
    /// A connection made with another liveness is replaced at once.
    pub fn set_liveness(&self, liveness: Liveness) {
        let changed = self
            .inner
            .liveness
            .lock()
            .map(|mut l| std::mem::replace(&mut *l, liveness) != liveness)
            .unwrap_or(false);
        if changed {
            // A connection made (or being made) with the old liveness is replaced.
            self.redial();
        }
    }

    /// How often QUIC is tried again while connected over TCP ([`super::QUIC_RETRY`] unless
    /// set; ±25 % jitter). Used from the next retry on.
    pub fn set_quic_retry(&self, every: Duration) {
        if let Ok(mut d) = self.inner.quic_retry.lock() {
            *d = every.clamp(Duration::from_millis(100), MAX_QUIC_RETRY);
        }
    }

    /// What carries the connection now (`None` while not connected).
    pub fn transport(&self) -> Option<Transport> {
        self.inner.conn.borrow().as_ref().map(|c| c.transport())
    }

    /// This side's address of the QUIC connection (`None` over TCP or while not connected).
    pub fn local_quic_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner
            .conn
            .borrow()
            .as_ref()
            .and_then(|c| c.local_quic_addr())
    }

    fn redial(&self) {
        self.inner.redial.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Keeps the engine connected while a wake-up runs (see [`Engine::wake_lease`]).
pub(crate) struct WakeLease<'a> {
    engine: &'a Engine,
}

impl WakeLease<'_> {
    /// Ends the wake-up: suspended again if the app suspended the engine, has not resumed it,
    /// and no other wake-up runs; returns once the connection is closed then (bounded).
    pub(crate) async fn release(self) {
        let engine = self.engine;
        std::mem::forget(self);
        engine.suspension(|s| s.wakes = s.wakes.saturating_sub(1));
        engine.settle_suspended().await;
    }
}

impl Drop for WakeLease<'_> {
    /// A wake-up dropped before its end (its caller gave up) still lets the engine sleep.
    fn drop(&mut self) {
        self.engine
            .suspension(|s| s.wakes = s.wakes.saturating_sub(1));
    }
}
