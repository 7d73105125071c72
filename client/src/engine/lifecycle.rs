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

impl Engine {
    /// Suspends the engine: the connection is closed cleanly (what this device acknowledged is
    /// confirmed by the relay first, at most [`SUSPEND_WAIT`]) and no new one is made until
    /// [`Engine::resume`]. Calls that need the relay wait for it (or time out) meanwhile;
    /// everything local keeps working. For an app going to the background: the relay queues
    /// what arrives and wakes the device through its push endpoint.
    pub async fn suspend(&self) {
        if self.is_closed() {
            return;
        }
        let mut state = self.inner.state.subscribe();
        self.inner.suspended.send_replace(true);
        let _ = tokio::time::timeout(
            SUSPEND_WAIT + Duration::from_secs(1),
            state.wait_for(|s| *s == ConnectionState::Suspended),
        )
        .await;
    }

    /// Ends a suspension: the relay is dialled at once (no backoff left from before).
    pub fn resume(&self) {
        self.inner.suspended.send_replace(false);
    }

    /// Whether the app suspended the engine.
    pub fn is_suspended(&self) -> bool {
        *self.inner.suspended.borrow()
    }

    /// Connects (even while suspended) until the relay has delivered everything queued for this
    /// device and it is processed, at most `wait`; then suspends again if the engine was
    /// suspended. Returns whether the queue was drained in time. Already connected and not
    /// suspended, there is nothing to fetch: deliveries arrive as they come.
    ///
    /// [`crate::Messenger::wake`] builds on this; an app calls that one.
    pub async fn wake(&self, wait: Duration) -> Result<bool, ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let was_suspended = self.is_suspended();
        if !was_suspended && self.state() == ConnectionState::Online {
            return Ok(true);
        }
        let drained = self.fetch_queue(wait).await;
        if was_suspended {
            self.suspend().await;
        }
        Ok(drained)
    }

    /// Resumes, and waits (at most `wait`) until the relay said, on a connection made after
    /// this call, that this device's queue is drained. Returns whether it did.
    pub(crate) async fn fetch_queue(&self, wait: Duration) -> bool {
        let mut caught_up = self.inner.caught_up.subscribe();
        caught_up.borrow_and_update();
        if self.state() == ConnectionState::Online && !self.is_suspended() {
            // Caught up already on this connection: everything queued came when it opened.
            return true;
        }
        self.resume();
        tokio::time::timeout(wait, caught_up.changed())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// How many times the relay said this device's queue was drained since the engine started
    /// (each told as [`super::Event::CaughtUp`] first).
    pub(crate) fn caught_up_count(&self) -> u64 {
        *self.inner.caught_up.borrow()
    }

    /// Tells the engine that the device changed networks (Android's `ConnectivityManager`
    /// callback, iOS's path monitor): `network` names the new one (see
    /// [`crate::conn::set_network`]; empty when unknown). A QUIC connection moves to a new
    /// socket at once and carries on; a TLS-over-TCP connection, or an attempt under way or
    /// waiting out its backoff, is dialled again at once (QUIC first unless TCP is what worked on
    /// this network before).
    pub fn network_changed(&self, network: &str) -> NetworkMove {
        crate::conn::set_network(network);
        if self.is_suspended() {
            return NetworkMove::Suspended;
        }
        let current = self.inner.conn.borrow().clone();
        if let Some(conn) = current
            && conn.transport() == Transport::Quic
        {
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
        if changed && self.inner.conn.borrow().is_some() {
            self.redial();
        }
    }

    /// How often QUIC is tried again while connected over TCP ([`super::QUIC_RETRY`] unless
    /// set; ±25 % jitter). Used from the next retry on.
    pub fn set_quic_retry(&self, every: Duration) {
        if let Ok(mut d) = self.inner.quic_retry.lock() {
            *d = every.max(Duration::from_millis(100));
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
