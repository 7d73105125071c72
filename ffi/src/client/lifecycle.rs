//! The app's life: suspend and resume, push wake-ups, network changes, keep-alives, and what
//! carries the connection (docs/MOBILE.md "Lifecycle").

use hush_client::conn::Transport as CoreTransport;
use hush_client::{ConnectionState, NetworkMove as CoreMove};

use crate::error::HushError;

use super::{HushClient, limit_wait};

/// The link to the relay now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum LinkState {
    /// The first attempt (since opening or resuming) is under way.
    Connecting,
    /// Connected and authenticated.
    Online,
    /// Not connected; the client keeps trying with backoff.
    Offline,
    /// Suspended by the app: no connection until `resume` (or a `wake`).
    Suspended,
}

/// What carries the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP (UDP is blocked or failing on this network).
    Tcp,
}

/// The link to the relay and its transport.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct LinkInfo {
    /// Whether connected, and if not why.
    pub state: LinkState,
    /// What carries the connection while `Online`.
    pub transport: Option<Transport>,
}

/// How eagerly the connection proves the relay is still there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Liveness {
    /// Foreground: a keep-alive after 2 s without traffic, a dead link noticed within ~8 s.
    Interactive,
    /// Kept connected in the background: a keep-alive every 25 s, dead after 55 s of silence.
    Background,
}

/// What `network_changed` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum NetworkMove {
    /// The QUIC connection moved to the new network without interruption.
    Migrated,
    /// The connection was dialled again at once (TLS over TCP, or no connection).
    Redialled,
    /// Suspended: the next connection uses the new network.
    Suspended,
}

/// What a `wake` did.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct WakeReport {
    /// Everything queued at the relay was fetched and stored in time.
    pub caught_up: bool,
    /// Messages from others stored during the wake (each also told once as a `Message` event).
    pub messages: u64,
    /// Messages of this device still waiting to leave (they go on the next connection).
    pub unsent: u64,
}

fn transport(t: CoreTransport) -> Transport {
    match t {
        CoreTransport::Quic => Transport::Quic,
        CoreTransport::Tcp => Transport::Tcp,
    }
}

#[uniffi::export]
impl HushClient {
    /// The app goes to the background: what this device received is confirmed to the relay,
    /// the connection closes, and none is made until `resume` or `wake`. Local calls keep
    /// working and sends wait in the outbox. Returns once closed (a few seconds at most).
    pub async fn suspend(&self) -> Result<(), HushError> {
        self.with(|m| async move {
            m.suspend().await;
            Ok(())
        })
        .await
    }

    /// The app is in the foreground again: the relay is dialled at once.
    pub fn resume(&self) -> Result<(), HushError> {
        self.inner.messenger()?.resume();
        Ok(())
    }

    /// Woken by a push: fetches everything queued at the relay (told as events, once), lets
    /// waiting sends leave, and returns within `timeout_ms`, suspended again if it was. Call it
    /// from the push handler (Android: a WorkManager job; iOS: the notification service
    /// extension) and build notifications from the `Message` events.
    pub async fn wake(&self, timeout_ms: u64) -> Result<WakeReport, HushError> {
        let wait = limit_wait(timeout_ms)?;
        self.with(move |m| async move {
            let r = m.wake(wait).await?;
            Ok(WakeReport {
                caught_up: r.caught_up,
                messages: r.messages,
                unsent: r.unsent,
            })
        })
        .await
    }

    /// The device changed networks (Android `ConnectivityManager.NetworkCallback`, iOS
    /// `NWPathMonitor`). `network` is a name the app chooses for the new one (a hash of the
    /// Wi-Fi name, "cellular"; empty when unknown), never sent anywhere: the transport that
    /// worked is remembered per network.
    pub fn network_changed(&self, network: String) -> Result<NetworkMove, HushError> {
        let m = self.inner.messenger()?;
        // Moving a QUIC connection registers its new socket with the client's runtime.
        let _in_runtime = self.rt()?.enter();
        Ok(match m.network_changed(&network) {
            CoreMove::Migrated => NetworkMove::Migrated,
            CoreMove::Redialled => NetworkMove::Redialled,
            CoreMove::Suspended => NetworkMove::Suspended,
        })
    }

    /// How the connection is kept alive: `Interactive` in the foreground, `Background` for an
    /// app that stays connected in the background (without a push service).
    pub fn set_liveness(&self, liveness: Liveness) -> Result<(), HushError> {
        self.inner.messenger()?.set_liveness(match liveness {
            Liveness::Interactive => hush_client::conn::Liveness::Interactive,
            Liveness::Background => hush_client::conn::Liveness::Background,
        });
        Ok(())
    }

    /// The link to the relay now, and what carries it.
    pub fn link(&self) -> Result<LinkInfo, HushError> {
        let m = self.inner.messenger()?;
        let state = match m.engine().state() {
            ConnectionState::Connecting => LinkState::Connecting,
            ConnectionState::Online => LinkState::Online,
            ConnectionState::Offline => LinkState::Offline,
            ConnectionState::Suspended => LinkState::Suspended,
        };
        Ok(LinkInfo {
            state,
            transport: m.transport().map(transport),
        })
    }
}
