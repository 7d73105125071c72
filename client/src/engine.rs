//! The engine: one local device (client-core over its encrypted sled store) kept connected to a
//! relay. It authenticates, publishes pre-keys (each one-time key once), reconnects with
//! exponential backoff and jitter, follows the relay's drain, decrypts what is delivered and
//! acknowledges it to the relay only after client-core has committed it, and sends to accounts
//! (fetching device lists and bundles, starting sessions, adapting to device-set changes).
//!
//! client-core stays sans-IO: the engine passes it the clock and the system RNG.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hush_core::device::{Device, GroupIncoming, Outgoing};
use hush_core::keys::{AccountId, DeviceAddress};
use hush_core::prekeys::PreKeyBundle;
use hush_core::sender_key::GroupId;
use hush_core::store::sled_kv::SledKv;
use hush_core::{Error as CoreError, ProtocolError};
use hush_proto::client::{Sealed, sealed};
use hush_proto::relay_api::{self as api, ErrorCode, client_frame, server_frame};
use prost::Message;
use rand::RngExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::conn::{Progress, RelayConnection};
use crate::error::ClientError;

/// First reconnect delay; doubles up to [`MAX_BACKOFF`], with ±50 % jitter.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long an operation waits for a connection before failing with `Disconnected`.
pub(crate) const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// Attempts of one send (device-set changes and transient failures).
const SEND_ATTEMPTS: usize = 4;

/// How long a send waits before offering a message again to recipient devices whose queue was
/// full (`SendResult.full_devices`); after [`SEND_ATTEMPTS`] the send fails as transient, and
/// the messenger's outbox keeps the message waiting.
const FULL_DEVICE_BACKOFF: Duration = Duration::from_secs(2);

/// The engine's link to the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// The first attempt since the engine started is under way.
    Connecting,
    /// Connected and authenticated: sends go out now.
    Online,
    /// The last attempt failed or the connection ended; the engine keeps trying with backoff.
    Offline,
}

/// Whether the relay refused a send because the recipient's queue (or this sender's share of
/// it, or the account's mailbox) is full: nothing was queued.
fn recipient_full(e: &ClientError) -> bool {
    matches!(e, ClientError::Refused(r) if matches!(
        r.code,
        ErrorCode::QueueFull | ErrorCode::SenderQuota | ErrorCode::MailboxFull
    ))
}

/// The devices a send left out because their queue at the relay was full, if any.
fn left_out(answer: &server_frame::Kind) -> Option<Vec<u32>> {
    match answer {
        server_frame::Kind::Sent(r) if !r.full_devices.is_empty() => Some(r.full_devices.clone()),
        _ => None,
    }
}

/// The transient failure of a send that some devices did not take.
fn full_refusal(full: &[u32]) -> ClientError {
    ClientError::Refused(crate::error::Refusal {
        code: ErrorCode::QueueFull,
        message: format!(
            "{} recipient device(s) have a full queue at the relay",
            full.len()
        ),
        retry_after_ms: 0,
        missing_devices: Vec::new(),
        extra_devices: Vec::new(),
    })
}
/// File in the profile directory recording the highest one-time pre-key id uploaded.
const UPLOADED_FILE: &str = "uploaded-pre-keys";
/// The push endpoint this device registered (sent again on every connection).
const PUSH_FILE: &str = "push-endpoint";
/// Present in a linked device's profile until it has asked its siblings for the groups.
const GROUP_SYNC_FILE: &str = "group-sync-pending";
/// Most author device lists fetched to process one received group log.
const MAX_AUTHOR_FETCHES: usize = 64;
/// First wait before a delivery that could not be processed (store error, rate-limited
/// device-list fetch, full group buffer) is tried again; doubles up to [`DELIVERY_RETRY_MAX`].
const DELIVERY_RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest wait between two tries of one delivery.
const DELIVERY_RETRY_MAX: Duration = Duration::from_secs(60);
/// Past this many deliveries waiting to be tried again, the engine reconnects and lets the
/// relay deliver them again, instead of holding them in memory.
const MAX_WAITING_DELIVERIES: usize = 256;
/// How often key upkeep ([`Device::upkeep`]) runs while connected (it also runs on every
/// connection).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Whether a delivered envelope may be acknowledged to the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settlement {
    /// Committed, a duplicate, or rejected for good (and reported): acknowledge it.
    Settled,
    /// Not processed for a transient or local reason: leave it at the relay, try again.
    Retry,
}

/// At-rest subkey label of the device store (`db/`); the history has its own
/// (`hush_core::store::sled_kv` module docs).
pub const DB_STORE_LABEL: &[u8] = b"/db";

/// Where the engine keeps its state and which relay it uses.
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

/// Prefix of a link code.
const LINK_PREFIX: &str = "hush-link:";
/// How long a new device goes on offering its link message under a code no device offers yet
/// (the existing device offers it as it shows it) before saying the code is used or unknown.
const LINK_OFFER_GRACE: Duration = Duration::from_secs(3);
/// How often the existing device asks the relay for the new device's answer (and the new
/// device offers its message again within [`LINK_OFFER_GRACE`]).
const LINK_POLL: Duration = Duration::from_millis(300);
/// How long a new device keeps the connection that left its link message open, at most: as
/// long as the relay keeps the message (docs/RELAY_PROTOCOL.md §13).
const LINK_HOLD: Duration = Duration::from_secs(10 * 60);

/// A device-link offer: the code to show, and the secret this device keeps to finish the link.
pub struct LinkOffer {
    /// `hush-link:` + hex(account id ‖ 32-byte secret). Whoever has it can ask to join the
    /// account until the link completes: show it only to the user.
    pub code: String,
    secret: Zeroizing<[u8; 32]>,
    /// Whether the code was offered at the relay (see [`Engine::open_link`]).
    opened: std::sync::atomic::AtomicBool,
}

/// The relay channel and the AEAD key of a link secret (HKDF-SHA256, distinct labels).
fn link_keys(secret: &[u8; 32]) -> Result<([u8; 32], Zeroizing<[u8; 32]>), ClientError> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, secret);
    let mut channel = [0u8; 32];
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(b"Hush-Link-Channel-v1", &mut channel)
        .and_then(|()| hk.expand(b"Hush-Link-Key-v1", &mut key[..]))
        .map_err(|_| ClientError::Protocol("link key derivation"))?;
    Ok((channel, key))
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
    /// What the app shows of the link to the relay.
    state: watch::Sender<ConnectionState>,
    events: mpsc::UnboundedSender<Event>,
    shutdown: CancellationToken,
    /// Set once the relay said this device was removed from its account.
    revoked: std::sync::atomic::AtomicBool,
}

/// What a group send reached: per member account (this account's own devices not counted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupDelivery {
    /// Member accounts whose devices the relay took the message for.
    pub delivered: Vec<AccountId>,
    /// Member accounts it could not be given to.
    pub failed: Vec<GroupFailure>,
}

/// A member account a group message did not reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupFailure {
    /// The account.
    pub account: AccountId,
    /// Why (for the user).
    pub reason: String,
    /// Refused for good ([`ClientError::is_permanent`]): sending again will not help.
    pub permanent: bool,
}

/// Whether a failure concerns one recipient account only (its list, pre-keys, or the relay's
/// refusal of its envelopes), so that a group send goes on with the others; otherwise (the
/// connection, the local store) it concerns every recipient.
fn is_account_failure(e: &ClientError) -> bool {
    match e {
        ClientError::Refused(r) => !matches!(
            r.code,
            ErrorCode::Draining | ErrorCode::Unauthenticated | ErrorCode::Internal
        ),
        ClientError::Core(CoreError::Store(_)) => false,
        ClientError::Core(_) | ClientError::Protocol(_) => true,
        _ => false,
    }
}

/// A running engine. Dropping it (or [`Engine::shutdown`]) stops its connection task.
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn open_store(profile: &Path, key: &Zeroizing<[u8; 32]>) -> Result<SledKv, ClientError> {
    crate::private_fs::create_dir(profile)
        .map_err(|e| ClientError::Config(format!("profile directory: {e}")))?;
    open_labelled_waiting(&profile.join("db"), key, DB_STORE_LABEL)
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
            r => return r.map_err(|e| ClientError::Core(e.into())),
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
            .map_err(|e| ClientError::Config(format!("profile directory: {e}")))?;
        Ok(Self::start(cfg, device))
    }

    /// Opens an existing profile.
    pub fn open(cfg: EngineConfig) -> Result<(Self, mpsc::UnboundedReceiver<Event>), ClientError> {
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
            state,
            events,
            shutdown: CancellationToken::new(),
            revoked: std::sync::atomic::AtomicBool::new(false),
        });
        // Messages decrypted before the engine last stopped but not yet taken by the app.
        match inner.lock().and_then(|d| Ok(d.pending_messages()?)) {
            Ok(pending) => {
                for r in pending {
                    inner.emit(Event::Message {
                        id: r.id,
                        from: r.from,
                        group: r.group,
                        plaintext: r.plaintext,
                        ephemeral: false,
                    });
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

    /// Sends `plaintext` to every device of `to` (for one's own account: to its other devices).
    /// Returns once the relay has acknowledged it durably.
    pub async fn send(&self, to: &AccountId, plaintext: &[u8]) -> Result<(), ClientError> {
        let r = self.inner.send(to, plaintext, false).await;
        self.inner.after(r)
    }

    /// Sends `plaintext` as an ephemeral envelope (typing, presence): delivered only to devices
    /// connected now, never stored.
    pub async fn send_ephemeral(
        &self,
        to: &AccountId,
        plaintext: &[u8],
    ) -> Result<(), ClientError> {
        self.inner.send(to, plaintext, true).await
    }

    /// Creates a group with this account as admin and `members` (accounts) as members, and tells
    /// every member device. Returns the group id.
    pub async fn create_group(
        &self,
        name: &str,
        members: &[AccountId],
    ) -> Result<GroupId, ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        for m in members {
            self.inner.refresh_list(&conn, m).await?;
        }
        let devices: Vec<DeviceAddress> = {
            let me = self.inner.lock()?.address();
            let d = self.inner.lock()?;
            let mut out = Vec::new();
            for m in members.iter().chain(std::iter::once(&me.account)) {
                if let Some(l) = d.device_list(m) {
                    out.extend(l.addresses().filter(|a| *a != me));
                }
            }
            out
        };
        self.inner.ensure_sessions(&conn, &devices).await?;
        let (g, outgoing) = self
            .inner
            .lock()?
            .create_group(name, members, &mut rng(), now_ms())?;
        self.inner
            .send_outgoing_checked(&conn, outgoing, false)
            .await?;
        Ok(g)
    }

    /// Sends `plaintext` to group `g`: one sender-key encryption, the same bytes to every member
    /// device (sender-key distributions first, where needed). A member account that cannot be
    /// reached (its device list or pre-keys cannot be fetched, the relay refuses its envelopes)
    /// does not stop the others: it is reported in [`GroupDelivery::failed`]. An error means
    /// nobody got it (no connection, unknown group, a local failure).
    pub async fn send_group(
        &self,
        g: &GroupId,
        plaintext: &[u8],
    ) -> Result<GroupDelivery, ClientError> {
        let r = self.group_send(g, plaintext, false, None).await;
        self.inner.after(r)
    }

    /// As [`Self::send_group`], to the member accounts in `only` (a message that some members
    /// did not get yet); accounts no longer members are left out.
    pub async fn send_group_to(
        &self,
        g: &GroupId,
        plaintext: &[u8],
        only: &[AccountId],
    ) -> Result<GroupDelivery, ClientError> {
        self.group_send(g, plaintext, false, Some(only)).await
    }

    /// Sends `plaintext` to the member devices of group `g` that are connected right now (typing,
    /// presence): never stored by the relay. Sender-key distributions it needs are stored.
    pub async fn send_group_ephemeral(
        &self,
        g: &GroupId,
        plaintext: &[u8],
    ) -> Result<(), ClientError> {
        self.group_send(g, plaintext, true, None).await.map(|_| ())
    }

    async fn group_send(
        &self,
        g: &GroupId,
        plaintext: &[u8],
        ephemeral: bool,
        only: Option<&[AccountId]>,
    ) -> Result<GroupDelivery, ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        let me = self.inner.lock()?.address();
        let (members, unknown): (Vec<AccountId>, Vec<AccountId>) = {
            let d = self.inner.lock()?;
            let entry = d.group(g).ok_or(ClientError::Core(CoreError::Protocol(
                ProtocolError::UnknownGroup,
            )))?;
            let members: Vec<AccountId> = entry.state().members.keys().copied().collect();
            let unknown = members
                .iter()
                .filter(|a| d.device_list(a).is_none())
                .copied()
                .collect();
            (members, unknown)
        };
        // Accounts not to send to this time: outside `only`, or failed (with why).
        let mut skip: BTreeSet<AccountId> = members
            .iter()
            .filter(|a| only.is_some_and(|o| !o.contains(a)) && **a != me.account)
            .copied()
            .collect();
        let mut failed: BTreeMap<AccountId, ClientError> = BTreeMap::new();
        // Members whose device list this device has not seen yet (it learned them from the
        // group's log): fetch and verify their lists first.
        let to_fetch: Vec<AccountId> = unknown.into_iter().filter(|a| !skip.contains(a)).collect();
        for a in &to_fetch {
            if let Err(e) = self.inner.refresh_list(&conn, a).await {
                if !is_account_failure(&e) {
                    return Err(e);
                }
                failed.insert(*a, e);
                skip.insert(*a);
            }
        }
        let mut delivered: BTreeSet<AccountId> = BTreeSet::new();
        // Accounts still to reach after a device-set change; `None`: all not skipped.
        let mut remaining: Option<BTreeSet<AccountId>> = None;
        for attempt in 0..SEND_ATTEMPTS {
            // Sessions, per account: one whose bundles cannot be fetched is left out.
            let devices = self.inner.lock()?.group_devices(g)?;
            let accounts: BTreeSet<AccountId> = devices.iter().map(|d| d.account).collect();
            let to_reach: Vec<AccountId> =
                accounts.into_iter().filter(|a| !skip.contains(a)).collect();
            for a in &to_reach {
                let of: Vec<DeviceAddress> = devices
                    .iter()
                    .filter(|d| d.account == *a)
                    .copied()
                    .collect();
                if let Err(e) = self.inner.ensure_sessions(&conn, &of).await {
                    if !is_account_failure(&e) {
                        return Err(e);
                    }
                    failed.insert(*a, e);
                    skip.insert(*a);
                }
            }
            let left_out: Vec<AccountId> = skip.iter().copied().collect();
            let send = self.inner.lock()?.group_encrypt_except(
                g,
                plaintext,
                &left_out,
                &mut rng(),
                now_ms(),
            )?;
            // Distributions, per account: a refused one leaves that account out of the message.
            let dist_accounts: BTreeSet<AccountId> =
                send.distributions.iter().map(|o| o.to.account).collect();
            let mut dists = send.distributions;
            for a in dist_accounts {
                let (mine, rest): (Vec<Outgoing>, Vec<Outgoing>) =
                    dists.into_iter().partition(|o| o.to.account == a);
                dists = rest;
                if let Err(e) = self.inner.send_outgoing_checked(&conn, mine, true).await {
                    if !is_account_failure(&e) {
                        return Err(e);
                    }
                    failed.insert(a, e);
                    skip.insert(a);
                }
            }
            let accounts: BTreeSet<AccountId> = send
                .recipients
                .iter()
                .map(|r| r.account)
                .filter(|a| !skip.contains(a))
                .filter(|a| remaining.as_ref().is_none_or(|r| r.contains(a)))
                .collect();
            let body = Sealed {
                kind: Some(sealed::Kind::Group(send.message)),
            }
            .encode_to_vec();
            let mut again = BTreeSet::new();
            for account in accounts {
                let envelopes: Vec<api::OutEnvelope> = send
                    .recipients
                    .iter()
                    .filter(|r| r.account == account)
                    .map(|r| api::OutEnvelope {
                        device_id: r.device_id,
                        body: body.clone(),
                    })
                    .collect();
                let sent = if ephemeral {
                    conn.request(client_frame::Kind::SendEphemeral(api::SendEphemeral {
                        recipient_account: account.as_bytes().to_vec(),
                        envelopes,
                    }))
                    .await
                    .map(|_| ())
                } else {
                    self.inner
                        .send_envelopes(&conn, *account.as_bytes(), envelopes, false)
                        .await
                };
                match sent {
                    Ok(()) => {
                        delivered.insert(account);
                    }
                    Err(e)
                        if RelayConnection::is_code(&e, ErrorCode::DeviceMismatch)
                            && attempt + 1 < SEND_ATTEMPTS =>
                    {
                        // A member's devices changed: nothing was queued for that account. Learn
                        // its list and encrypt again for it (new devices get the sender key).
                        if let Err(e) = self.inner.refresh_list(&conn, &account).await {
                            if !is_account_failure(&e) {
                                return Err(e);
                            }
                            failed.insert(account, e);
                            skip.insert(account);
                        } else {
                            again.insert(account);
                        }
                    }
                    Err(e) if is_account_failure(&e) => {
                        failed.insert(account, e);
                        skip.insert(account);
                    }
                    Err(e) => return Err(e),
                }
            }
            if again.is_empty() {
                break;
            }
            remaining = Some(again);
        }
        delivered.remove(&me.account);
        if let Some(e) = failed.remove(&me.account) {
            tracing::warn!(error = %e, "a group message did not reach this account's other devices");
        }
        Ok(GroupDelivery {
            delivered: delivered.into_iter().collect(),
            failed: failed
                .into_iter()
                .map(|(account, e)| GroupFailure {
                    account,
                    permanent: e.is_permanent(),
                    reason: e.to_string(),
                })
                .collect(),
        })
    }

    /// Removes one of this account's devices (this device must hold the account key): signs and
    /// publishes the list without it; the relay cuts it off at once.
    pub async fn remove_device(&self, device_id: u32) -> Result<(), ClientError> {
        let signed = {
            let mut d = self.inner.lock()?;
            if device_id == d.address().device_id {
                return Err(ClientError::Config(
                    "a device does not remove itself".into(),
                ));
            }
            if !d.holds_account_key() {
                return Err(ClientError::Config(
                    "only the account's first device (the one that created the account, which \
                     holds its key) can remove devices"
                        .into(),
                ));
            }
            d.remove_device(device_id, now_ms())?
                .signed_bytes()
                .to_vec()
        };
        let conn = self.inner.current(CONNECT_WAIT).await?;
        conn.request(client_frame::Kind::PublishDeviceList(
            api::PublishDeviceList {
                signed_device_list: signed,
            },
        ))
        .await?;
        Ok(())
    }

    /// Changes a group (this device's account must be an admin): adds `add` (accounts, with
    /// whether each is an admin), removes `remove`, and tells every member device.
    pub async fn update_group(
        &self,
        g: &GroupId,
        add: &[(AccountId, bool)],
        remove: &[AccountId],
    ) -> Result<(), ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        // Every member's current devices (and the added accounts'): a change must reach them all.
        let members: Vec<AccountId> = {
            let d = self.inner.lock()?;
            let entry = d.group(g).ok_or(ClientError::Core(CoreError::Protocol(
                ProtocolError::UnknownGroup,
            )))?;
            entry.state().members.keys().copied().collect()
        };
        for a in members.iter().chain(add.iter().map(|(a, _)| a)) {
            self.inner.refresh_list(&conn, a).await?;
        }
        let mut devices = self.inner.lock()?.group_devices(g)?;
        {
            let d = self.inner.lock()?;
            let me = d.address();
            for (a, _) in add {
                if let Some(l) = d.device_list(a) {
                    devices.extend(l.addresses().filter(|x| *x != me));
                }
            }
        }
        self.inner.ensure_sessions(&conn, &devices).await?;
        let outgoing =
            self.inner
                .lock()?
                .update_group(g, add, remove, None, &mut rng(), now_ms())?;
        self.inner
            .send_outgoing_checked(&conn, outgoing, false)
            .await
    }

    /// The groups this device is in: (id, name).
    pub fn groups(&self) -> Result<Vec<(GroupId, String)>, ClientError> {
        let d = self.inner.lock()?;
        let me = d.address().account;
        // A group this account was removed from is kept (its log) but no longer listed.
        Ok(d.group_ids()
            .into_iter()
            .filter_map(|g| {
                d.group(&g)
                    .filter(|e| e.state().members.contains_key(&me))
                    .map(|e| (g, e.state().name.clone()))
            })
            .collect())
    }

    /// The member accounts of group `g` as this device knows them (empty for an unknown group).
    pub fn group_members(&self, g: &GroupId) -> Result<Vec<AccountId>, ClientError> {
        let d = self.inner.lock()?;
        Ok(d.group(g)
            .map(|e| e.state().members.keys().copied().collect())
            .unwrap_or_default())
    }

    /// The device ids on `account`'s list as this device last verified it.
    pub fn devices_of(&self, account: &AccountId) -> Result<Vec<u32>, ClientError> {
        Ok(self
            .inner
            .lock()?
            .device_list(account)
            .map(|l| l.list().devices.keys().copied().collect())
            .unwrap_or_default())
    }

    /// Starts linking a new device to this account (this device must hold the account key):
    /// returns the offer, whose `code` the user carries to the new device (as text or a QR
    /// code). Then call [`Engine::complete_link`].
    pub fn offer_link(&self) -> Result<LinkOffer, ClientError> {
        let d = self.inner.lock()?;
        if !d.holds_account_key() {
            return Err(ClientError::Config(
                "only the account's first device can link new devices".into(),
            ));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        rng().fill(&mut secret[..]);
        let mut raw = d.address().account.as_bytes().to_vec();
        raw.extend_from_slice(&secret[..]);
        Ok(LinkOffer {
            code: format!("{LINK_PREFIX}{}", hex::encode(&raw)),
            secret,
            opened: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Waits (at most `wait`) for the new device of `offer` to answer, adds it to this
    /// account's signed device list and publishes the list. Returns the new device's id.
    pub async fn complete_link(
        &self,
        offer: &LinkOffer,
        wait: Duration,
    ) -> Result<u32, ClientError> {
        let (channel, key) = link_keys(&offer.secret)?;
        let deadline = tokio::time::Instant::now() + wait;
        if !offer.opened.load(std::sync::atomic::Ordering::SeqCst) {
            self.open_link(offer).await?;
        }
        let body = loop {
            let conn = self.inner.current(CONNECT_WAIT).await?;
            match conn
                .request(client_frame::Kind::ProvisionTake(api::ProvisionTake {
                    channel: channel.to_vec(),
                }))
                .await
            {
                Ok(server_frame::Kind::Provision(p)) => break p.body,
                Ok(_) => return Err(ClientError::Protocol("unexpected answer to a link poll")),
                Err(e) if RelayConnection::is_code(&e, ErrorCode::NotFound) || e.is_transient() => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ClientError::Timeout);
                    }
                    tokio::time::sleep(LINK_POLL).await;
                }
                Err(e) => return Err(e),
            }
        };
        let plain = ChaCha20Poly1305::new(&Key::from(*key))
            .decrypt(
                &Nonce::from([0u8; 12]),
                Payload {
                    msg: &body,
                    aad: &channel,
                },
            )
            .map_err(|_| ClientError::Protocol("the link answer does not decrypt"))?;
        let (id, identity) = plain
            .split_at_checked(4)
            .ok_or(ClientError::Protocol("link answer too short"))?;
        let device_id = u32::from_be_bytes(
            id.try_into()
                .map_err(|_| ClientError::Protocol("link answer too short"))?,
        );
        let identity = hush_core::keys::DeviceIdentity::from_bytes(identity)?;
        let signed = {
            let mut d = self.inner.lock()?;
            let me = d.address();
            let taken = d
                .device_list(&me.account)
                .is_some_and(|l| l.list().devices.contains_key(&device_id));
            if taken || device_id == 0 {
                return Err(ClientError::Protocol(
                    "the new device chose a taken device id",
                ));
            }
            d.add_device(device_id, identity, now_ms())?
                .signed_bytes()
                .to_vec()
        };
        let conn = self.inner.current(CONNECT_WAIT).await?;
        conn.request(client_frame::Kind::PublishDeviceList(
            api::PublishDeviceList {
                signed_device_list: signed,
            },
        ))
        .await?;
        Ok(device_id)
    }

    /// Sets up this (new) device from a link `code` shown by an existing device of the account:
    /// creates its keys, answers the offer through the relay, and starts; the engine connects
    /// once the existing device has added it to the account's list.
    pub async fn link(
        cfg: EngineConfig,
        code: &str,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Event>), ClientError> {
        let raw = code
            .trim()
            .strip_prefix(LINK_PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .filter(|r| r.len() == 64)
            .ok_or_else(|| ClientError::Config("not a link code".into()))?;
        let (account, secret) = raw.split_at(32);
        let account = AccountId::from_bytes(account)?;
        let mut s = Zeroizing::new([0u8; 32]);
        s.copy_from_slice(secret);
        let (channel, key) = link_keys(&s)?;
        let store = open_store(&cfg.profile, &cfg.at_rest_key)?;
        // Device ids are chosen by the new device at random (the existing device refuses a
        // taken one); 1 is the first device's.
        let device_id = rng().random_range(2..=u32::MAX / 2);
        let device = Device::create_linked(store, &mut rng(), account, device_id, now_ms())?;
        let mut plain = device_id.to_be_bytes().to_vec();
        plain.extend_from_slice(&device.identity().to_bytes());
        let body = ChaCha20Poly1305::new(&Key::from(*key))
            .encrypt(
                &Nonce::from([0u8; 12]),
                Payload {
                    msg: &plain,
                    aad: &channel,
                },
            )
            .map_err(|_| ClientError::Protocol("link answer encryption failed"))?;
        let (conn, events) = RelayConnection::connect(cfg.relay, &cfg.pin).await?;
        // Not offered: the code was used, has expired or is mistyped — said at once, after a
        // short grace for an existing device that shows the code and offers it a moment later.
        let grace = tokio::time::Instant::now() + LINK_OFFER_GRACE;
        loop {
            match conn
                .request(client_frame::Kind::ProvisionPut(api::ProvisionPut {
                    channel: channel.to_vec(),
                    body: body.clone(),
                }))
                .await
            {
                Ok(_) => break,
                Err(e)
                    if RelayConnection::is_code(&e, ErrorCode::NotFound)
                        && tokio::time::Instant::now() < grace =>
                {
                    tokio::time::sleep(LINK_POLL).await;
                }
                Err(e) if RelayConnection::is_code(&e, ErrorCode::NotFound) => {
                    return Err(ClientError::LinkCodeUnknown);
                }
                Err(e) => return Err(e),
            }
        }
        // Once connected, ask the account's other devices for its groups.
        crate::private_fs::write_atomic(&cfg.profile.join(GROUP_SYNC_FILE), b"")
            .map_err(|e| ClientError::Config(format!("profile directory: {e}")))?;
        let (engine, rx) = Self::start(cfg, device);
        // The relay keeps the link message only while the connection that left it is open: hold
        // it until this device is on the account's list (the engine has authenticated), the
        // message has expired, or the engine stops.
        // (It holds no reference to the engine, whose store must close when the engine stops.)
        let mut session = engine.inner.conn.subscribe();
        let stop = engine.inner.shutdown.clone();
        tokio::spawn(async move {
            let _events = events;
            let linked = session.wait_for(|c| c.as_ref().is_some_and(|c| c.is_open()));
            tokio::select! {
                _ = tokio::time::timeout(LINK_HOLD, linked) => {}
                () = stop.cancelled() => {}
                () = conn.closed() => {}
            }
            conn.close();
        });
        Ok((engine, rx))
    }

    /// Registers the URL the relay wakes this device at when mail is queued while it is offline
    /// (a push distributor or gateway; `https://`). The wake-up carries no content and no
    /// sender. An empty `url` unregisters. Kept in the profile and registered again on every
    /// connection, so a relay that lost it learns it back.
    pub async fn register_push(&self, url: &str) -> Result<(), ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        conn.request(client_frame::Kind::RegisterPush(api::RegisterPush {
            url: url.to_owned(),
        }))
        .await?;
        let path = self.inner.profile.join(PUSH_FILE);
        let saved = if url.is_empty() {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            crate::private_fs::write_atomic(&path, url.as_bytes())
        };
        saved.map_err(|e| ClientError::Config(format!("profile directory: {e}")))
    }

    /// Uploads an (already encrypted) blob; returns its id and capability.
    pub async fn upload_blob(&self, data: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        self.upload_blob_with_progress(data, &crate::conn::no_progress)
            .await
    }

    /// [`Self::upload_blob`], telling `progress` the bytes sent so far and the total.
    pub async fn upload_blob_with_progress(
        &self,
        data: &[u8],
        progress: Progress<'_>,
    ) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        conn.upload_blob(data, progress).await
    }

    /// Downloads a blob of at most `max` bytes; one the relay no longer has is
    /// [`ClientError::BlobGone`].
    pub async fn download_blob(
        &self,
        id: &[u8],
        capability: &[u8],
        max: usize,
    ) -> Result<Vec<u8>, ClientError> {
        self.download_blob_with_progress(id, capability, max, &crate::conn::no_progress)
            .await
    }

    /// [`Self::download_blob`], telling `progress` the bytes received so far and the total.
    pub async fn download_blob_with_progress(
        &self,
        id: &[u8],
        capability: &[u8],
        max: usize,
        progress: Progress<'_>,
    ) -> Result<Vec<u8>, ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        conn.download_blob(id, capability, max, progress).await
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

    /// Offers `offer`'s code at the relay: from now on (for 10 minutes) one new device may
    /// answer it; a used, expired or mistyped code is refused there at once. Call it as the code
    /// is shown; [`Self::complete_link`] calls it if it was not.
    pub async fn open_link(&self, offer: &LinkOffer) -> Result<(), ClientError> {
        let (channel, _) = link_keys(&offer.secret)?;
        self.inner
            .current(CONNECT_WAIT)
            .await?
            .request(client_frame::Kind::ProvisionOffer(api::ProvisionOffer {
                channel: channel.to_vec(),
            }))
            .await?;
        offer
            .opened
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
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

    /// The current connection, waiting up to `wait` for one.
    pub(crate) async fn current(
        &self,
        wait: Duration,
    ) -> Result<Arc<RelayConnection>, ClientError> {
        if self.is_revoked() {
            return Err(ClientError::Revoked);
        }
        let mut rx = self.conn.subscribe();
        // A connection whose stream has just ended stays published until the session loop
        // notices; it is skipped, so that a retry waits for the next one.
        let got = tokio::time::timeout(
            wait,
            rx.wait_for(|c| c.as_ref().is_some_and(|c| c.is_open())),
        )
        .await;
        match got {
            Ok(Ok(c)) => c.as_ref().map(Arc::clone).ok_or(ClientError::Disconnected),
            Ok(Err(_)) if self.is_revoked() => Err(ClientError::Revoked),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Disconnected),
        }
    }

    /// Fetches and accepts `account`'s device list from the relay.
    async fn refresh_list(
        &self,
        conn: &RelayConnection,
        account: &AccountId,
    ) -> Result<(), ClientError> {
        let server_frame::Kind::DeviceList(l) = conn
            .request(client_frame::Kind::FetchDeviceList(api::FetchDeviceList {
                account: account.as_bytes().to_vec(),
            }))
            .await?
        else {
            return Err(ClientError::Protocol(
                "unexpected answer to a device-list fetch",
            ));
        };
        let me = self.lock()?.address();
        let devices = |d: &Device<SledKv>| -> BTreeMap<u32, [u8; 64]> {
            d.device_list(account)
                .map(|l| {
                    l.list()
                        .devices
                        .iter()
                        .map(|(id, e)| (*id, e.identity.to_bytes()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (before, accepted, after) = {
            let mut d = self.lock()?;
            let before = devices(&d);
            let accepted = d.accept_device_list(&l.signed_device_list, account, now_ms());
            (before, accepted, devices(&d))
        };
        match accepted {
            Ok(true) if !before.is_empty() && account != &me.account => {
                let added: Vec<u32> = after
                    .iter()
                    .filter(|(id, k)| before.get(id) != Some(k))
                    .map(|(id, _)| *id)
                    .collect();
                let removed: Vec<u32> = before
                    .keys()
                    .filter(|id| !after.contains_key(id))
                    .copied()
                    .collect();
                if !added.is_empty() || !removed.is_empty() {
                    self.emit(Event::DevicesChanged {
                        account: *account,
                        added,
                        removed,
                    });
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => {
                if matches!(
                    e,
                    CoreError::Protocol(ProtocolError::DeviceListConflict(_)) | CoreError::Auth(_)
                ) {
                    // Two different lists under one version, or a bad signature: someone (the
                    // relay, or whoever holds a key) is lying about this account's devices.
                    self.emit(Event::IdentityWarning { account: *account });
                }
                Err(e.into())
            }
        }
    }

    /// Starts sessions with those of `devices` that have none (fetching their bundles).
    async fn ensure_sessions(
        &self,
        conn: &RelayConnection,
        devices: &[DeviceAddress],
    ) -> Result<(), ClientError> {
        let missing = self.lock()?.missing_sessions(devices, now_ms())?;
        for m in missing {
            let server_frame::Kind::Bundle(b) = conn
                .request(client_frame::Kind::FetchBundle(api::FetchBundle {
                    account: m.account.as_bytes().to_vec(),
                    device_id: m.device_id,
                }))
                .await?
            else {
                return Err(ClientError::Protocol("unexpected answer to a bundle fetch"));
            };
            let bundle = hush_proto::wire::PreKeyBundle::decode(b.bundle.as_slice())
                .map_err(|_| ClientError::Protocol("bundle does not decode"))?;
            self.lock()?
                .start_session(&PreKeyBundle(bundle), &mut rng(), now_ms())?;
        }
        Ok(())
    }

    /// Sends prepared envelopes to one account under a fresh client id, retrying transient
    /// failures with the same id (queued at most once).
    async fn send_envelopes(
        &self,
        conn: &RelayConnection,
        account: [u8; 32],
        envelopes: Vec<api::OutEnvelope>,
        targeted: bool,
    ) -> Result<(), ClientError> {
        let mut id = [0u8; 16];
        rng().fill(&mut id[..]);
        let mut last = ClientError::Disconnected;
        // After the first connection breaks, the next one (the same bytes under the same id).
        let mut next: Option<Arc<RelayConnection>> = None;
        for _ in 0..SEND_ATTEMPTS {
            let c = match &next {
                Some(c) => c.as_ref(),
                None => conn,
            };
            let r = c
                .request(client_frame::Kind::Send(api::Send {
                    client_id: id.to_vec(),
                    recipient_account: account.to_vec(),
                    envelopes: envelopes.clone(),
                    targeted,
                }))
                .await;
            match r {
                Ok(answer) => match left_out(&answer) {
                    // Devices whose queue was full did not get it: send the same bytes again
                    // under the same id (the relay queues only the copies it does not hold).
                    Some(full) => {
                        last = full_refusal(&full);
                        tokio::time::sleep(FULL_DEVICE_BACKOFF).await;
                    }
                    None => return Ok(()),
                },
                // The recipient's queue is full: it clears only when the recipient takes
                // its messages, which no wait here can bring about; the caller (the
                // messenger's outbox) tries again later, and the other recipients of a group
                // message are not held back.
                Err(e) if recipient_full(&e) => return Err(e),
                Err(e) if e.is_transient() => {
                    if let ClientError::Refused(r) = &e
                        && r.retry_after_ms > 0
                    {
                        tokio::time::sleep(Duration::from_millis(r.retry_after_ms.min(10_000)))
                            .await;
                    }
                    if !c.is_open() {
                        next = Some(self.current(CONNECT_WAIT).await?);
                    }
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Sends pairwise messages client-core prepared, one send per recipient account;
    /// `targeted` for control messages meant for some of an account's devices only.
    async fn send_outgoing_checked(
        &self,
        conn: &RelayConnection,
        outgoing: Vec<Outgoing>,
        targeted: bool,
    ) -> Result<(), ClientError> {
        let accounts: BTreeSet<[u8; 32]> =
            outgoing.iter().map(|o| *o.to.account.as_bytes()).collect();
        for account in accounts {
            // A send carries at most one envelope per device: several messages for one device
            // (a sync answer with one log per group) go in successive sends, in order.
            let mut rounds: Vec<Vec<api::OutEnvelope>> = Vec::new();
            let mut per_device: BTreeMap<u32, usize> = BTreeMap::new();
            for o in outgoing
                .iter()
                .filter(|o| o.to.account.as_bytes() == &account)
            {
                let k = per_device.entry(o.to.device_id).or_insert(0);
                if rounds.len() <= *k {
                    rounds.push(Vec::new());
                }
                if let Some(round) = rounds.get_mut(*k) {
                    round.push(api::OutEnvelope {
                        device_id: o.to.device_id,
                        body: Sealed {
                            kind: Some(sealed::Kind::Pairwise(o.bytes.clone())),
                        }
                        .encode_to_vec(),
                    });
                }
                *k += 1;
            }
            for mut envelopes in rounds {
                match self
                    .send_envelopes(conn, account, envelopes.clone(), targeted)
                    .await
                {
                    // A control message for a device that has left its list since: that device
                    // no longer needs it. Learn the list, and send the rest (nothing was queued).
                    Err(ClientError::Refused(r))
                        if targeted
                            && r.code == ErrorCode::DeviceMismatch
                            && !r.extra_devices.is_empty() =>
                    {
                        let _ = self
                            .refresh_list(conn, &AccountId::from_bytes(&account)?)
                            .await;
                        envelopes.retain(|e| !r.extra_devices.contains(&e.device_id));
                        if !envelopes.is_empty() {
                            self.send_envelopes(conn, account, envelopes, targeted)
                                .await?;
                        }
                    }
                    r => r?,
                }
            }
        }
        Ok(())
    }

    /// Encrypts `plaintext` for every listed device of `to` but this one (`ephemeral`: kept out of
    /// the sent log, never sent again).
    async fn seal_for(
        &self,
        conn: &RelayConnection,
        to: &AccountId,
        plaintext: &[u8],
        ephemeral: bool,
    ) -> Result<Vec<api::OutEnvelope>, ClientError> {
        let me = self.lock()?.address();
        let targets: Vec<DeviceAddress> = {
            let d = self.lock()?;
            let list = d
                .device_list(to)
                .ok_or(ClientError::Core(CoreError::Protocol(
                    ProtocolError::UnknownAccount,
                )))?;
            list.addresses().filter(|a| *a != me).collect()
        };
        self.ensure_sessions(conn, &targets).await?;
        let mut out = Vec::with_capacity(targets.len());
        let mut d = self.lock()?;
        for t in targets {
            let bytes = if ephemeral {
                d.encrypt_ephemeral(&t, plaintext, &mut rng(), now_ms())?
            } else {
                d.encrypt(&t, plaintext, &mut rng(), now_ms())?
            };
            out.push(api::OutEnvelope {
                device_id: t.device_id,
                body: Sealed {
                    kind: Some(sealed::Kind::Pairwise(bytes)),
                }
                .encode_to_vec(),
            });
        }
        Ok(out)
    }

    async fn send(
        &self,
        to: &AccountId,
        plaintext: &[u8],
        ephemeral: bool,
    ) -> Result<(), ClientError> {
        let client_id: [u8; 16] = {
            let mut id = [0u8; 16];
            rng().fill(&mut id[..]);
            id
        };
        let mut sealed: Option<Vec<api::OutEnvelope>> = None;
        let mut last = ClientError::Disconnected;
        for attempt in 0..SEND_ATTEMPTS {
            let conn = self.current(CONNECT_WAIT).await?;
            if sealed.is_none() {
                let known = self.lock()?.device_list(to).is_some();
                if !known || attempt > 0 {
                    self.refresh_list(&conn, to).await?;
                }
                let envelopes = self.seal_for(&conn, to, plaintext, ephemeral).await?;
                if envelopes.is_empty() {
                    // One's own account with no other device: nothing to deliver.
                    return Ok(());
                }
                sealed = Some(envelopes);
            }
            let envelopes = sealed.clone().unwrap_or_default();
            let kind = if ephemeral {
                client_frame::Kind::SendEphemeral(api::SendEphemeral {
                    recipient_account: to.as_bytes().to_vec(),
                    envelopes,
                })
            } else {
                client_frame::Kind::Send(api::Send {
                    client_id: client_id.to_vec(),
                    recipient_account: to.as_bytes().to_vec(),
                    envelopes,
                    targeted: false,
                })
            };
            match conn.request(kind).await {
                Ok(answer) => match left_out(&answer) {
                    // Devices whose queue was full did not get it: send the same bytes again
                    // under the same client id (the relay queues only the copies it does not
                    // hold).
                    Some(full) => {
                        last = full_refusal(&full);
                        tokio::time::sleep(FULL_DEVICE_BACKOFF).await;
                    }
                    None => return Ok(()),
                },
                Err(e) if RelayConnection::is_code(&e, ErrorCode::DeviceMismatch) => {
                    // The recipient's devices changed: nothing was queued; fetch the new list
                    // and encrypt again (same client id: nothing of the old try exists).
                    sealed = None;
                    last = e;
                }
                Err(e) if recipient_full(&e) => return Err(e),
                Err(e) if e.is_transient() => {
                    // Maybe queued, maybe not: resend the same bytes under the same client id,
                    // which the relay queues at most once.
                    if let ClientError::Refused(r) = &e
                        && r.retry_after_ms > 0
                    {
                        tokio::time::sleep(Duration::from_millis(r.retry_after_ms.min(10_000)))
                            .await;
                    }
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Uploads the signed pre-key, the last-resort key and the one-time keys never uploaded.
    async fn upload_pre_keys(&self, conn: &RelayConnection) -> Result<(), ClientError> {
        let path = self.profile.join(UPLOADED_FILE);
        let done: u32 = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let published = self.lock()?.published_pre_keys()?;
        let otk: Vec<_> = published
            .one_time_pre_keys
            .iter()
            .filter(|k| k.id > done)
            .take(hush_net::MAX_PRE_KEYS_PER_UPLOAD)
            .collect();
        let kem: Vec<_> = published
            .kem_pre_keys
            .iter()
            .filter(|k| k.id > done)
            .take(hush_net::MAX_PRE_KEYS_PER_UPLOAD)
            .collect();
        let highest = otk
            .iter()
            .map(|k| k.id)
            .chain(kem.iter().map(|k| k.id))
            .max()
            .unwrap_or(done)
            .max(done);
        conn.request(client_frame::Kind::UploadPreKeys(api::UploadPreKeys {
            signed_pre_key: published.signed_pre_key.encode_to_vec(),
            last_resort_kem_pre_key: published.last_resort_kem_pre_key.encode_to_vec(),
            one_time_pre_keys: otk.iter().map(|k| k.encode_to_vec()).collect(),
            kem_pre_keys: kem.iter().map(|k| k.encode_to_vec()).collect(),
        }))
        .await?;
        // Only after the relay stored them: a key is never offered twice.
        crate::private_fs::write_atomic(&path, highest.to_string().as_bytes())
            .map_err(|e| ClientError::Config(format!("profile directory: {e}")))?;
        Ok(())
    }

    /// Handles one delivered envelope and says whether it may be acknowledged to the relay.
    async fn deliver(
        &self,
        conn: &RelayConnection,
        d: &api::Deliver,
        ephemeral: bool,
    ) -> Settlement {
        let Ok(account) = AccountId::from_bytes(&d.sender_account) else {
            // The relay vouches for the sender; garbage here will not improve by waiting.
            tracing::warn!("delivery from a malformed sender address");
            return Settlement::Settled;
        };
        let from = DeviceAddress {
            account,
            device_id: d.sender_device,
        };
        let Ok(sealed) = Sealed::decode(d.body.as_slice()) else {
            tracing::warn!("delivery that is not a sealed envelope");
            self.emit(Event::Undecryptable { from, group: None });
            return Settlement::Settled;
        };
        match sealed.kind {
            Some(sealed::Kind::Pairwise(bytes)) => {
                let mut result = self.decrypt_pairwise(&from, &bytes);
                if matches!(
                    result,
                    Err(ClientError::Core(CoreError::Protocol(
                        ProtocolError::UnknownAccount | ProtocolError::DeviceNotOnList
                    )))
                ) {
                    // A new contact, or a device added since: learn its list, then try again.
                    match self.refresh_list(conn, &account).await {
                        Ok(()) => result = self.decrypt_pairwise(&from, &bytes),
                        // Rate-limited, disconnected, a store error: the list may still come.
                        Err(e) if !e.is_permanent() => result = Err(e),
                        Err(_) => {}
                    }
                }
                // A group log signed by accounts this device has not met yet (a log received on
                // joining, or from a sibling after linking): learn each author's list in turn.
                let mut fetched = BTreeSet::new();
                while let Err(ClientError::Core(CoreError::Protocol(
                    ProtocolError::UnknownAuthor(author),
                ))) = &result
                {
                    let author = *author;
                    if fetched.len() >= MAX_AUTHOR_FETCHES || !fetched.insert(author) {
                        break;
                    }
                    match self.refresh_list(conn, &author).await {
                        Ok(()) => result = self.decrypt_pairwise(&from, &bytes),
                        Err(e) if !e.is_permanent() => result = Err(e),
                        Err(_) => break,
                    }
                }
                match result {
                    Ok((received, outgoing, groups_changed)) => {
                        if groups_changed {
                            self.emit(Event::GroupsChanged);
                        }
                        for r in received {
                            self.emit(Event::Message {
                                id: r.id,
                                from: r.from,
                                group: r.group,
                                plaintext: r.plaintext,
                                ephemeral,
                            });
                        }
                        self.send_outgoing(conn, outgoing).await;
                        Settlement::Settled
                    }
                    Err(e) => match self.settle_error(&e, from, None) {
                        Settlement::Settled => self.heal_later(conn, &from, &bytes, &e).await,
                        Settlement::Retry => Settlement::Retry,
                    },
                }
            }
            Some(sealed::Kind::Group(bytes)) => {
                let r = self.lock().and_then(|mut d| {
                    Ok(d.decrypt_group_from(&from, &bytes, &mut rng(), now_ms())?)
                });
                match r {
                    Ok(GroupIncoming::Decrypted(r)) => {
                        self.emit(Event::Message {
                            id: r.id,
                            from: r.from,
                            group: r.group,
                            plaintext: r.plaintext,
                            ephemeral,
                        });
                        Settlement::Settled
                    }
                    Ok(GroupIncoming::Buffered { request }) => {
                        self.send_outgoing(conn, request.into_iter().collect())
                            .await;
                        Settlement::Settled
                    }
                    Err(e) => {
                        let group = hush_proto::wire::GroupMessage::decode(bytes.as_slice())
                            .ok()
                            .and_then(|m| GroupId::from_bytes(&m.group_id).ok());
                        self.settle_error(&e, from, group)
                    }
                }
            }
            None => {
                tracing::warn!("empty sealed envelope");
                self.emit(Event::Undecryptable { from, group: None });
                Settlement::Settled
            }
        }
    }

    /// A pairwise message that could not be decrypted with the session held (lost or stale,
    /// PROTOCOL.md §20): its sender device is asked to send it again on a fresh session. The
    /// failure is recorded before the envelope is acknowledged; if it cannot be, the envelope
    /// stays at the relay and is tried again.
    async fn heal_later(
        &self,
        conn: &RelayConnection,
        from: &DeviceAddress,
        bytes: &[u8],
        e: &ClientError,
    ) -> Settlement {
        let ClientError::Core(core) = e else {
            return Settlement::Settled;
        };
        let noted = self
            .lock()
            .and_then(|mut d| Ok(d.note_undecryptable(from, bytes, core, now_ms())?));
        match noted {
            Ok(true) => {
                self.heal(conn).await;
                Settlement::Settled
            }
            Ok(false) => Settlement::Settled,
            Err(e) => {
                tracing::warn!(error = %e, "undecryptable message not recorded; kept at the relay");
                self.recover_store();
                Settlement::Retry
            }
        }
    }

    /// Sends the retry requests that are due: for each sender device, a fresh session from its
    /// bundle, with the request as its first message. What fails stays pending for later.
    async fn heal(&self, conn: &RelayConnection) {
        let due = match self.lock() {
            Ok(mut d) => d.retry_requests_due(now_ms(), RETRY_REQUESTS_PER_TURN),
            Err(_) => return,
        };
        for to in due {
            if let Err(e) = self.send_retry_request(conn, &to).await {
                tracing::info!(error = %e, "retry request not sent; tried again later");
                if let ClientError::Core(CoreError::Store(_)) = e {
                    self.recover_store();
                }
            }
        }
    }

    async fn send_retry_request(
        &self,
        conn: &RelayConnection,
        to: &DeviceAddress,
    ) -> Result<(), ClientError> {
        let server_frame::Kind::Bundle(b) = conn
            .request(client_frame::Kind::FetchBundle(api::FetchBundle {
                account: to.account.as_bytes().to_vec(),
                device_id: to.device_id,
            }))
            .await?
        else {
            return Err(ClientError::Protocol("unexpected answer to a bundle fetch"));
        };
        let bundle = hush_proto::wire::PreKeyBundle::decode(b.bundle.as_slice())
            .map_err(|_| ClientError::Protocol("bundle does not decode"))?;
        let (out, ids) =
            self.lock()?
                .seal_retry_request(&PreKeyBundle(bundle), &mut rng(), now_ms())?;
        self.send_outgoing_checked(conn, vec![out], true).await?;
        self.lock()?.retry_request_sent(to, &ids)?;
        tracing::info!("asked a device to send undecryptable messages again");
        Ok(())
    }

    /// What a failed delivery means for its envelope: a duplicate is done; a transient or local
    /// failure (store, network, rate limit, a full group buffer) is tried again; anything else is
    /// a permanent rejection, acknowledged and reported.
    fn settle_error(
        &self,
        e: &ClientError,
        from: DeviceAddress,
        group: Option<GroupId>,
    ) -> Settlement {
        match e {
            ClientError::Core(CoreError::Protocol(ProtocolError::Duplicate)) => Settlement::Settled,
            // The sending account's share of the group buffer is used up (item 10 of PROTOCOL.md
            // §14: bounded per sending account): its message is refused, as the buffer's rule
            // says. Kept at the relay instead, one account's unreadable messages would be offered
            // again on every connection, ahead of everyone else's mail.
            ClientError::Core(CoreError::Protocol(ProtocolError::BufferFull)) => {
                tracing::info!("group buffer share of a sender used up; its message is dropped");
                Settlement::Settled
            }
            e if !e.is_permanent() => {
                tracing::warn!(error = %e, "delivery not processed; kept at the relay");
                self.recover_store();
                Settlement::Retry
            }
            e => {
                tracing::warn!(error = %e, "a delivery could not be decrypted");
                self.emit(Event::Undecryptable { from, group });
                Settlement::Settled
            }
        }
    }

    /// Reopens the device's store if a failed commit poisoned it, and offers again what the
    /// inbox holds (a commit whose outcome was unknown may have stored messages). If it cannot
    /// be reopened the engine stops with [`Event::StoreFailed`].
    /// Passes on the result of an operation, first reopening the store if the operation's
    /// failure poisoned it (so that a failed commit while sending does not fail every later
    /// operation until the next delivery).
    fn after<T>(&self, r: Result<T, ClientError>) -> Result<T, ClientError> {
        if let Err(ClientError::Core(CoreError::Store(_))) = &r {
            self.recover_store();
        }
        r
    }

    fn recover_store(&self) {
        let Ok(mut d) = self.lock() else {
            return;
        };
        if !d.store_poisoned() {
            return;
        }
        tracing::warn!("device store poisoned by a failed commit; reopening it");
        match d.reopen_store().and_then(|()| d.pending_messages()) {
            Ok(pending) => {
                drop(d);
                for r in pending {
                    self.emit(Event::Message {
                        id: r.id,
                        from: r.from,
                        group: r.group,
                        plaintext: r.plaintext,
                        ephemeral: false,
                    });
                }
            }
            Err(e) => {
                drop(d);
                tracing::error!(error = %e, "device store could not be reopened; stopping");
                self.emit(Event::StoreFailed);
                self.shutdown.cancel();
            }
        }
    }

    /// Runs the device's key upkeep (rotations, stale sessions, sender-key retries) and
    /// publishes new pre-keys when it made any (unless `publish` is false: the caller uploads).
    async fn upkeep(&self, conn: &RelayConnection, publish: bool) -> Result<(), ClientError> {
        let done = self.lock()?.upkeep(&mut rng(), now_ms());
        let done = match done {
            Ok(u) => u,
            Err(e) => {
                self.recover_store();
                return Err(e.into());
            }
        };
        if done.publish && publish {
            self.upload_pre_keys(conn).await?;
        }
        self.send_outgoing(conn, done.outgoing).await;
        Ok(())
    }

    /// A newly linked device asks its siblings for the logs of the account's groups (once; the
    /// marker file is removed when the requests are on the relay).
    async fn sync_groups_from_siblings(&self, conn: &RelayConnection) -> Result<(), ClientError> {
        let marker = self.profile.join(GROUP_SYNC_FILE);
        if !marker.exists() {
            return Ok(());
        }
        let siblings: Vec<DeviceAddress> = {
            let d = self.lock()?;
            let me = d.address();
            d.device_list(&me.account)
                .map(|l| l.addresses().filter(|a| *a != me).collect())
                .unwrap_or_default()
        };
        self.ensure_sessions(conn, &siblings).await?;
        let out = self.lock()?.request_group_sync(&mut rng(), now_ms())?;
        self.send_outgoing_checked(conn, out, true).await?;
        std::fs::remove_file(&marker)
            .map_err(|e| ClientError::Config(format!("profile directory: {e}")))?;
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn decrypt_pairwise(
        &self,
        from: &DeviceAddress,
        bytes: &[u8],
    ) -> Result<(Vec<hush_core::device::Received>, Vec<Outgoing>, bool), ClientError> {
        let incoming = self.lock()?.decrypt(from, bytes, &mut rng(), now_ms())?;
        Ok((
            incoming.received,
            incoming.outgoing,
            incoming.groups_changed,
        ))
    }

    /// Sends control messages client-core produced (sender keys, retry requests).
    async fn send_outgoing(&self, conn: &RelayConnection, outgoing: Vec<Outgoing>) {
        if let Err(e) = self.send_outgoing_checked(conn, outgoing, true).await {
            // Control messages heal through client-core's retries (requests, rotation).
            tracing::debug!(error = %e, "a control message was not sent");
        }
    }
}

/// Connects, authenticates, publishes pre-keys; then serves until the connection ends.
async fn session(inner: &Arc<Inner>) -> Result<(), ClientError> {
    let (conn, mut events) = RelayConnection::connect(inner.relay, &inner.pin).await?;
    let conn = Arc::new(conn);
    let (account, device_id) = {
        let d = inner.lock()?;
        (*d.address().account.as_bytes(), d.address().device_id)
    };
    {
        let inner2 = Arc::clone(inner);
        let authenticated = conn
            .authenticate(account, device_id, move |exporter, challenge| {
                inner2
                    .device
                    .lock()
                    .map(|d| d.sign_relay_challenge(exporter, challenge))
                    .unwrap_or([0u8; 64])
            })
            .await;
        match authenticated {
            Err(ClientError::Refused(r))
                if r.code == ErrorCode::DeviceRevoked && inner.was_listed() =>
            {
                tracing::warn!("this device is no longer on its account's list; stopping");
                conn.close();
                inner.revoke();
                return Ok(());
            }
            r => r?,
        }
    }
    // Rotations due since the last connection first, so that one upload publishes them.
    if let Err(e) = inner.upkeep(&conn, false).await {
        tracing::warn!(error = %e, "key upkeep failed; tried again later");
    }
    inner.upload_pre_keys(&conn).await?;
    if let Ok(url) = std::fs::read_to_string(inner.profile.join(PUSH_FILE))
        && !url.is_empty()
        && let Err(e) = conn
            .request(client_frame::Kind::RegisterPush(api::RegisterPush { url }))
            .await
    {
        tracing::warn!(error = %e, "push endpoint not registered again");
    }
    // This account's own list (a linked device learns its siblings here).
    let own = inner.lock()?.address().account;
    if let Err(e) = inner.refresh_list(&conn, &own).await {
        tracing::warn!(error = %e, "own device list not refreshed");
    }
    if let Err(e) = inner.sync_groups_from_siblings(&conn).await {
        tracing::warn!(error = %e, "group logs not requested from the other devices yet");
    }
    inner.conn.send_replace(Some(Arc::clone(&conn)));
    inner.state.send_replace(ConnectionState::Online);
    inner.emit(Event::Connection(true));
    // Retry requests left from before (PROTOCOL.md §20).
    inner.heal(&conn).await;
    // Deliveries not settled yet (kept at the relay), tried again with backoff.
    let mut waiting: Vec<Waiting> = Vec::new();
    let mut upkeep = tokio::time::interval_at(
        tokio::time::Instant::now() + UPKEEP_INTERVAL,
        UPKEEP_INTERVAL,
    );
    let result = loop {
        let next_due = waiting.iter().map(|w| w.due).min();
        let heal_due = inner.lock()?.next_retry_request_at().map(|at| {
            tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()))
        });
        let ev = tokio::select! {
            () = inner.shutdown.cancelled() => break Ok(()),
            () = sleep_until(heal_due) => {
                inner.heal(&conn).await;
                continue;
            }
            () = sleep_until(next_due) => {
                let now = tokio::time::Instant::now();
                let (due, later): (Vec<Waiting>, Vec<Waiting>) =
                    waiting.drain(..).partition(|w| w.due <= now);
                waiting = later;
                for mut w in due {
                    match inner.deliver(&conn, &w.deliver, false).await {
                        Settlement::Settled => ack(&conn, w.deliver.seq),
                        Settlement::Retry => {
                            w.attempt = w.attempt.saturating_add(1);
                            w.due = tokio::time::Instant::now() + retry_delay(w.attempt);
                            waiting.push(w);
                        }
                    }
                }
                continue;
            }
            _ = upkeep.tick() => {
                if let Err(e) = inner.upkeep(&conn, true).await {
                    tracing::warn!(error = %e, "key upkeep failed; tried again later");
                }
                continue;
            }
            ev = events.recv() => ev,
        };
        match ev {
            None => break Err(ClientError::Disconnected),
            Some(server_frame::Kind::Deliver(d)) => {
                match inner.deliver(&conn, &d, false).await {
                    // Committed by client-core, a duplicate, or rejected for good: the relay may
                    // forget it.
                    Settlement::Settled => ack(&conn, d.seq),
                    // Not processed: it stays at the relay and is tried again here.
                    Settlement::Retry => {
                        waiting.push(Waiting {
                            deliver: d,
                            attempt: 0,
                            due: tokio::time::Instant::now() + retry_delay(0),
                        });
                        if waiting.len() > MAX_WAITING_DELIVERIES {
                            // Let the relay hold them: reconnecting delivers them again.
                            tracing::warn!(
                                waiting = waiting.len(),
                                "too many deliveries waiting; reconnecting"
                            );
                            break Err(ClientError::Disconnected);
                        }
                    }
                }
            }
            Some(server_frame::Kind::Ephemeral(e)) => {
                let d = api::Deliver {
                    seq: 0,
                    sender_account: e.sender_account,
                    sender_device: e.sender_device,
                    client_id: Vec::new(),
                    body: e.body,
                    received_at: now_ms(),
                };
                // Never stored by the relay: nothing to acknowledge or to try again.
                let _ = inner.deliver(&conn, &d, true).await;
            }
            Some(server_frame::Kind::QueueDrained(_)) => inner.emit(Event::CaughtUp),
            Some(server_frame::Kind::PreKeysLow(low)) => {
                // The relay tells once per low spell (and again after an upload that ended it),
                // so every notice is acted on.
                // The relay's count, not this device's: keys handed out but never used are
                // still here and would hide the shortage.
                let more = inner.lock().and_then(|mut d| {
                    Ok(d.replenish_pre_keys_for(
                        low.one_time_left,
                        low.kem_left,
                        &mut rng(),
                        now_ms(),
                    )?)
                });
                match more {
                    Ok(true) => {
                        if let Err(e) = inner.upload_pre_keys(&conn).await {
                            tracing::warn!(error = %e, "new one-time pre-keys not uploaded");
                        }
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "one-time pre-keys not replenished");
                        inner.recover_store();
                    }
                }
            }
            Some(server_frame::Kind::Drain(_)) => break Ok(()),
            Some(server_frame::Kind::Revoked(_)) => {
                inner.revoke();
                break Ok(());
            }
            Some(_) => {}
        }
    };
    inner.conn.send_replace(None);
    inner.emit(Event::Connection(false));
    // The relay closes a revoked device's connection with its own code; the `Revoked` frame
    // before it may not have been read.
    if let Some(quinn::ConnectionError::ApplicationClosed(c)) = conn.quic().close_reason()
        && c.error_code == quinn::VarInt::from_u32(REVOKED_CLOSE)
        && !inner.shutdown.is_cancelled()
    {
        inner.revoke();
    }
    conn.close();
    result
}

/// Acknowledges a settled delivery. The answer is not waited for, so the next delivery is not
/// held up by a round trip (a lost ack only means a re-delivery, which client-core rejects as a
/// duplicate).
fn ack(conn: &Arc<RelayConnection>, seq: u64) {
    let c = Arc::clone(conn);
    tokio::spawn(async move {
        let _ = c
            .request(client_frame::Kind::Ack(api::Ack { seqs: vec![seq] }))
            .await;
    });
}

/// A delivery waiting to be tried again.
struct Waiting {
    deliver: api::Deliver,
    attempt: u32,
    due: tokio::time::Instant,
}

/// The wait before trying a delivery again after `attempt` failed tries:
/// [`DELIVERY_RETRY_MIN`] doubling up to [`DELIVERY_RETRY_MAX`].
fn retry_delay(attempt: u32) -> Duration {
    DELIVERY_RETRY_MIN
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(DELIVERY_RETRY_MAX)
}

/// Sleeps until `due`, or forever when there is nothing to wait for.
async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Retry requests made in one turn of the engine's loop (each fetches a bundle); the rest are
/// made in the next turns, so deliveries are not held up behind many.
const RETRY_REQUESTS_PER_TURN: usize = 4;

/// The relay's close code for a revoked device (docs/RELAY_PROTOCOL.md §2).
const REVOKED_CLOSE: u32 = 2;

/// Keeps the engine connected until shutdown.
async fn run(inner: Arc<Inner>) {
    let mut backoff = MIN_BACKOFF;
    while !inner.shutdown.is_cancelled() {
        let started = tokio::time::Instant::now();
        // Shutdown also cuts short a connection attempt to an unreachable relay.
        let ended = tokio::select! {
            r = session(&inner) => r,
            () = inner.shutdown.cancelled() => break,
        };
        let drained = match ended {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "relay session ended");
                false
            }
        };
        if inner.shutdown.is_cancelled() {
            break;
        }
        // Until the next attempt gets through, the app works offline (its sends wait in the
        // outbox).
        inner.state.send_replace(ConnectionState::Offline);
        // A session that lasted a while, or that the relay ended by draining (it asked for the
        // reconnect: nothing failed), resets the backoff.
        if drained || started.elapsed() > Duration::from_secs(10) {
            backoff = MIN_BACKOFF;
        }
        let jitter = rng().random_range(0.5..1.5);
        let wait = backoff.mul_f64(jitter);
        tokio::select! {
            () = inner.shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    inner.conn.send_replace(None);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
