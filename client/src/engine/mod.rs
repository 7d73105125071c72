//! The engine: one local device (client-core over its encrypted sled store) kept connected to a
//! relay. It authenticates, publishes pre-keys (each one-time key once), reconnects with
//! exponential backoff and jitter, follows the relay's drain, decrypts what is delivered and
//! acknowledges it to the relay only after client-core has committed it, and sends to accounts
//! (fetching device lists and bundles, starting sessions, adapting to device-set changes).
//!
//! client-core stays sans-IO: the engine passes it the clock and the system RNG.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hush_core::device::Device;
use hush_core::keys::{AccountId, DeviceAddress};
use hush_core::sender_key::GroupId;
use hush_proto::relay_api::{self as api, client_frame};
use hush_store_sled::SledKv;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::conn::{Liveness, RelayConnection};
use crate::error::ClientError;

mod backup;
mod blobs;
mod connection;
mod groups;
mod lifecycle;
mod link;
mod push;
mod receive;
mod sealed;
mod send;

use crate::profile::{DB_DIR, GROUP_SYNC_FILE};
pub use backup::{MAX_ARCHIVE_BLOB, Recovered, open_archive, seal_archive};
use connection::run;
pub use groups::{GroupDelivery, GroupFailure};
pub use lifecycle::NetworkMove;
pub use link::LinkOffer;

/// First reconnect delay; doubles up to [`MAX_BACKOFF`], with ±50 % jitter.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long an operation waits for a connection before failing with `Disconnected`.
pub(crate) const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// How often QUIC is tried again while connected over TCP (±25 % jitter), so that a client
/// that fell back moves back once UDP gets through. A network change tries at once.
pub const QUIC_RETRY: Duration = Duration::from_secs(5 * 60);
/// Longest [`Engine::suspend`] waits for the connection to close cleanly (its acknowledgements
/// confirmed by the relay) before it is cut.
pub const SUSPEND_WAIT: Duration = Duration::from_secs(3);

/// The engine's link to the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// The first attempt since the engine started is under way.
    Connecting,
    /// Connected and authenticated: sends go out now.
    Online,
    /// The last attempt failed or the connection ended; the engine keeps trying with backoff.
    Offline,
    /// Suspended by the app ([`Engine::suspend`]): no connection and no attempt until
    /// [`Engine::resume`] (or a [`Engine::wake`]).
    Suspended,
}

/// At-rest subkey label of the device store (`db/`); the history has its own
/// (`hush_store_sled` module docs).
pub const DB_STORE_LABEL: &[u8] = b"/db";

/// Where the engine keeps its state and which relay it uses.
#[derive(Clone)]
pub struct EngineConfig {
    /// Profile directory (the encrypted store lives in `db/` inside).
    pub profile: PathBuf,
    /// The key the store is encrypted with (keep it in the platform keystore).
    pub at_rest_key: Zeroizing<[u8; 32]>,
    /// The relay's address.
    pub relay: SocketAddr,
    /// The relay certificate's SHA-256 (hex).
    pub pin: String,
}

/// What the engine reports.
pub enum Event {
    /// A message, decrypted and durable in the device's inbox: acknowledge it with
    /// [`Engine::ack`] once the app has stored it (it is offered again after a restart until
    /// then).
    Message {
        /// Inbox id.
        id: u64,
        /// The sending device (authenticated end to end).
        from: DeviceAddress,
        /// The group, for group messages.
        group: Option<GroupId>,
        /// The plaintext.
        plaintext: Zeroizing<Vec<u8>>,
        /// Whether it came as an ephemeral envelope (typing, presence: never stored by the relay).
        ephemeral: bool,
    },
    /// Connected (and authenticated) to the relay, or not.
    Connection(bool),
    /// Everything queued on the relay while away has been delivered.
    CaughtUp,
    /// This device was removed from its account: the engine stops.
    Revoked,
    /// A contact's devices changed (a device added, re-registered with new keys, or removed):
    /// new keys the user has not verified may now read what is sent to that contact.
    DevicesChanged {
        /// The contact.
        account: AccountId,
        /// Devices new or with new identity keys.
        added: Vec<u32>,
        /// Devices gone.
        removed: Vec<u32>,
    },
    /// A contact's device list failed verification or conflicts with one seen before: the
    /// contact's identity cannot be trusted until verified (safety numbers).
    IdentityWarning {
        /// The contact.
        account: AccountId,
    },
    /// A group was joined, or its membership or name changed (see [`Engine::groups`]).
    GroupsChanged,
    /// A member device said group `group`'s log had reached position `claimed`, but the relay
    /// serves it only up to `served`: the relay is withholding membership changes from this
    /// device (or that member misreported). Show the user that the group may be out of date.
    GroupLogWithheld {
        /// The group.
        group: GroupId,
        /// The position a member reached.
        claimed: u64,
        /// The relay's head for this device.
        served: u64,
    },
    /// A member device reached position `seq` of group `group`'s log with another history than
    /// the relay serves this device: the relay showed members different logs.
    GroupLogForked {
        /// The group.
        group: GroupId,
        /// The position.
        seq: u64,
    },
    /// A message from `from` could not be decrypted and never will be (a broken or unknown
    /// session, a bad signature, garbage): it was dropped. Show the user that a message was
    /// lost.
    Undecryptable {
        /// The sending device (as the relay authenticated it).
        from: DeviceAddress,
        /// The group, when the envelope names one.
        group: Option<GroupId>,
    },
    /// The device's store failed and could not be reopened: the engine has stopped (nothing
    /// more is received; deliveries stay at the relay). Restart the app.
    StoreFailed,
}

/// Never shows plaintext: only what kind of event it is and who it concerns.
impl Event {
    /// The event of a message client-core decrypted and holds in its inbox.
    fn message(r: hush_core::device::Received, ephemeral: bool) -> Self {
        Self::Message {
            id: r.id,
            from: r.from,
            group: r.group,
            plaintext: r.plaintext,
            ephemeral,
        }
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Message {
                id,
                from,
                ephemeral,
                ..
            } => f
                .debug_struct("Message")
                .field("id", id)
                .field("from", from)
                .field("ephemeral", ephemeral)
                .finish_non_exhaustive(),
            Self::Connection(c) => f.debug_tuple("Connection").field(c).finish(),
            Self::CaughtUp => f.write_str("CaughtUp"),
            Self::Revoked => f.write_str("Revoked"),
            Self::DevicesChanged {
                account,
                added,
                removed,
            } => f
                .debug_struct("DevicesChanged")
                .field("account", account)
                .field("added", added)
                .field("removed", removed)
                .finish(),
            Self::IdentityWarning { account } => f
                .debug_struct("IdentityWarning")
                .field("account", account)
                .finish(),
            Self::GroupsChanged => f.write_str("GroupsChanged"),
            Self::GroupLogWithheld {
                group,
                claimed,
                served,
            } => f
                .debug_struct("GroupLogWithheld")
                .field("group", group)
                .field("claimed", claimed)
                .field("served", served)
                .finish(),
            Self::GroupLogForked { group, seq } => f
                .debug_struct("GroupLogForked")
                .field("group", group)
                .field("seq", seq)
                .finish(),
            Self::Undecryptable { from, group } => f
                .debug_struct("Undecryptable")
                .field("from", from)
                .field("group", &group.is_some())
                .finish(),
            Self::StoreFailed => f.write_str("StoreFailed"),
        }
    }
}

#[allow(clippy::disallowed_methods)]
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The system RNG, as the infallible `CryptoRng` client-core takes.
pub(crate) fn rng() -> rand_core::UnwrapErr<rand::rngs::SysRng> {
    rand_core::UnwrapErr(rand::rngs::SysRng)
}

pub(crate) struct Inner {
    relay: SocketAddr,
    pin: String,
    profile: PathBuf,
    device: Mutex<Device<SledKv>>,
    conn: watch::Sender<Option<Arc<RelayConnection>>>,
    /// The anonymous connection (sealed sends to others, reads of public material), opened when
    /// first needed (`sealed.rs`).
    anon: tokio::sync::Mutex<Option<Arc<RelayConnection>>>,
    /// What the app shows of the link to the relay.
    state: watch::Sender<ConnectionState>,
    events: mpsc::UnboundedSender<Event>,
    shutdown: CancellationToken,
    /// Set once the relay said this device was removed from its account.
    revoked: std::sync::atomic::AtomicBool,
    /// Whether the engine is suspended now: the app suspended it and no wake-up is running
    /// (see [`Engine::suspend`], [`Engine::wake`]).
    suspended: watch::Sender<bool>,
    /// What decides `suspended`: whether the app suspended the engine, and how many wake-ups
    /// run.
    suspension: Mutex<lifecycle::Suspension>,
    /// The relay said the queue was drained on the current connection, and all of it is
    /// processed.
    drained: std::sync::atomic::AtomicBool,
    /// The next connection is made over QUIC alone (a QUIC probe just answered while on TCP).
    quic_only_next: std::sync::atomic::AtomicBool,
    /// Held while the pending group notices are being sent: one pass at a time.
    notices_sending: tokio::sync::Mutex<()>,
    /// Another pass over the pending group notices is wanted (new ones were kept meanwhile).
    notices_again: std::sync::atomic::AtomicBool,
    /// The runtime the engine runs on (moving a QUIC connection to a new socket registers the
    /// socket with it, whichever thread asks).
    runtime: tokio::runtime::Handle,
    /// Bumped to end the current connection (or attempt, or wait) and dial again at once: the
    /// network changed, the liveness changed, or QUIC answers again while on TCP.
    redial: watch::Sender<u64>,
    /// Bumped each time the relay said the queue of this device is drained (`QueueDrained`),
    /// after every delivery before it was processed.
    caught_up: watch::Sender<u64>,
    /// How the connection is kept alive (used from the next connection on).
    liveness: Mutex<Liveness>,
    /// How often QUIC is tried again while connected over TCP.
    quic_retry: Mutex<Duration>,
}

/// A running engine. Dropping it (or [`Engine::shutdown`]) stops its connection task.
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn open_store(profile: &Path, key: &Zeroizing<[u8; 32]>) -> Result<SledKv, ClientError> {
    crate::private_fs::create_dir(profile).map_err(|e| ClientError::Profile(e.to_string()))?;
    open_labelled_waiting(&profile.join(DB_DIR), key, DB_STORE_LABEL)
}

/// Attempts to take a store's file lock when opening it, [`STORE_LOCK_WAIT`] apart: a store
/// closed a moment ago (an engine just shut down in this process) releases its lock only once
/// sled's background flusher has wound down.
const STORE_LOCK_ATTEMPTS: u32 = 100;
/// Pause between two attempts to take a store's file lock.
const STORE_LOCK_WAIT: Duration = Duration::from_millis(20);

/// Opens the encrypted store at `path` under `label`, waiting (bounded) for a lock still held by
/// a handle being closed.
pub(crate) fn open_labelled_waiting(
    path: &Path,
    key: &Zeroizing<[u8; 32]>,
    label: &[u8],
) -> Result<SledKv, ClientError> {
    let mut attempt = 0;
    loop {
        match SledKv::open_labelled(path, Zeroizing::new(**key), label, Box::new(rng())) {
            Err(hush_core::store::kv::StoreError::Io(e))
                if e.contains("could not acquire lock") =>
            {
                if attempt >= STORE_LOCK_ATTEMPTS {
                    let profile = path.parent().unwrap_or(path);
                    return Err(ClientError::ProfileInUse(profile.display().to_string()));
                }
                attempt += 1;
                std::thread::sleep(STORE_LOCK_WAIT);
            }
            r => return r.map_err(ClientError::Store),
        }
    }
}

impl Engine {
    /// Creates a new account (its first device) in an empty profile and registers it on the
    /// relay; returns the engine and its events.
    pub async fn create_account(
        cfg: EngineConfig,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Event>), ClientError> {
        let store = open_store(&cfg.profile, &cfg.at_rest_key)?;
        let device = Device::create_account(store, &mut rng(), now_ms())?;
        let list = device
            .device_list(&device.address().account)
            .map(|l| l.signed_bytes().to_vec())
            .ok_or(ClientError::Protocol("a new account has no device list"))?;
        let (conn, _events) = RelayConnection::connect(cfg.relay, &cfg.pin).await?;
        conn.request(client_frame::Kind::CreateAccount(api::CreateAccount {
            signed_device_list: list,
        }))
        .await?;
        conn.close();
        // Once connected, ask the account's other devices for its groups.
        crate::private_fs::write_atomic(&cfg.profile.join(GROUP_SYNC_FILE), b"")
            .map_err(|e| ClientError::Profile(e.to_string()))?;
        Ok(Self::start(cfg, device))
    }

    /// Opens an existing profile.
    pub fn open(cfg: EngineConfig) -> Result<(Self, mpsc::UnboundedReceiver<Event>), ClientError> {
        if !crate::profile::has_account(&cfg.profile) {
            return Err(ClientError::NoAccount);
        }
        let store = open_store(&cfg.profile, &cfg.at_rest_key)?;
        let device = Device::open(store)?;
        Ok(Self::start(cfg, device))
    }

    fn start(cfg: EngineConfig, device: Device<SledKv>) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let (conn, _) = watch::channel(None);
        let (state, _) = watch::channel(ConnectionState::Connecting);
        let inner = Arc::new(Inner {
            relay: cfg.relay,
            pin: cfg.pin,
            profile: cfg.profile,
            device: Mutex::new(device),
            conn,
            anon: tokio::sync::Mutex::new(None),
            state,
            events,
            shutdown: CancellationToken::new(),
            revoked: std::sync::atomic::AtomicBool::new(false),
            suspended: watch::channel(false).0,
            suspension: Mutex::new(lifecycle::Suspension::default()),
            drained: std::sync::atomic::AtomicBool::new(false),
            quic_only_next: std::sync::atomic::AtomicBool::new(false),
            notices_sending: tokio::sync::Mutex::new(()),
            notices_again: std::sync::atomic::AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            redial: watch::channel(0).0,
            caught_up: watch::channel(0).0,
            liveness: Mutex::new(Liveness::default()),
            quic_retry: Mutex::new(QUIC_RETRY),
        });
        // Messages decrypted before the engine last stopped but not yet taken by the app.
        match inner.lock().and_then(|d| Ok(d.pending_messages()?)) {
            Ok(pending) => {
                for r in pending {
                    inner.emit(Event::message(r, false));
                }
            }
            Err(e) => tracing::error!(error = %e, "the inbox could not be read"),
        }
        let task = tokio::spawn(run(Arc::clone(&inner)));
        (
            Self {
                inner,
                task: Some(task),
            },
            rx,
        )
    }

    /// This device's address.
    pub fn address(&self) -> Result<DeviceAddress, ClientError> {
        Ok(self.inner.lock()?.address())
    }

    /// Marks an inbox message as stored by the app.
    pub fn ack(&self, id: u64) -> Result<(), ClientError> {
        let r = self
            .inner
            .lock()?
            .ack_message(id)
            .map_err(ClientError::from);
        self.inner.after(r)
    }

    /// Whether this device was removed from its account (the relay no longer lets it in).
    pub fn is_revoked(&self) -> bool {
        self.inner.is_revoked()
    }

    /// Whether the engine was shut down or this device revoked (nothing will be sent again).
    pub fn is_closed(&self) -> bool {
        self.inner.shutdown.is_cancelled() || self.inner.is_revoked()
    }

    /// The link to the relay now.
    pub fn state(&self) -> ConnectionState {
        *self.inner.state.borrow()
    }

    /// Waits until the first connection attempt has ended (at most `wait`): `Online`, or
    /// `Offline` once an attempt failed. An app that opens without the relay shows what it has
    /// without waiting longer than that; one that reaches the relay takes in what waits there.
    pub async fn settled(&self, wait: Duration) -> ConnectionState {
        let mut rx = self.inner.state.subscribe();
        let _ =
            tokio::time::timeout(wait, rx.wait_for(|s| *s != ConnectionState::Connecting)).await;
        *rx.borrow()
    }

    /// Waits until the engine is connected (at most `wait`).
    pub async fn connected(&self, wait: Duration) -> Result<(), ClientError> {
        self.inner.current(wait).await.map(|_| ())
    }

    /// Stops the engine (its store stays consistent: every change is already committed).
    pub async fn shutdown(mut self) {
        self.inner.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
    }
}

impl Inner {
    fn is_revoked(&self) -> bool {
        self.revoked.load(std::sync::atomic::Ordering::Acquire)
    }

    /// This device was removed from its account: say so once, and stop.
    fn revoke(&self) {
        if !self.revoked.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.emit(Event::Revoked);
        }
        self.shutdown.cancel();
    }

    /// Whether this device's own account list, as this device last accepted it, lists it: a
    /// device being linked is not listed yet, and is not "removed" when the relay refuses it.
    fn was_listed(&self) -> bool {
        self.lock().is_ok_and(|d| {
            let me = d.address();
            d.device_list(&me.account)
                .is_some_and(|l| l.addresses().any(|a| a == me))
        })
    }

    pub(crate) fn lock(&self) -> Result<std::sync::MutexGuard<'_, Device<SledKv>>, ClientError> {
        self.device.lock().map_err(|_| ClientError::Closed)
    }

    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_plaintext() {
        let d = Device::create_account(hush_core::store::memory::MemoryKv::new(), &mut rng(), 1)
            .unwrap();
        let e = Event::Message {
            id: 7,
            from: d.address(),
            group: None,
            plaintext: Zeroizing::new(b"SECRET-PLAINTEXT".to_vec()),
            ephemeral: false,
        };
        let shown = format!("{e:?}");
        assert!(shown.contains("Message"));
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
