//! Relay storage: one trait per concern, each implemented in memory ([`memory::MemoryStore`]) and
//! on sled ([`sled_store::SledStore`]); one test-suite runs against both.
//!
//! Guarantees every implementation gives:
//! - a device list is replaced only by one with a higher version;
//! - a one-time pre-key is handed out at most once, even under concurrent claims (one atomic take);
//! - an enqueue is checked against the mailbox caps ([`Quotas`]) before anything is written: a
//!   device whose queue (or the envelope's [`Share`] of it) is full is left out and reported
//!   ([`Enqueued::full`]) while the others get their envelopes; an enqueue that would queue
//!   nothing because every device is full, or that would take the recipient account or the relay
//!   over its byte cap, is refused and writes nothing. The counters behind the caps
//!   ([`usage`]) are exact across acks, expiry, purges and reopening. An enqueue is idempotent
//!   per (recipient device, share, client id); it is durable once [`MailboxStore::flush`] has returned
//!   after it (the relay batches many enqueues into one flush: group commit); nothing else is
//!   durable before a flush either. A crash (or a write error) in the middle of an unanswered
//!   multi-envelope enqueue may keep some of its envelopes: the retry of that send finds them by
//!   their ids and queues only the others, so the recipients still get each envelope once;
//! - each device's queue has its own sequence numbers, strictly increasing in the order the
//!   envelopes were committed, so a reader that has seen `n` has seen everything up to `n`;
//! - a username belongs to at most one account and an account holds at most one username: a
//!   claim checks that the name is free (or already the account's), binds it and releases the
//!   account's previous name in one atomic step, so of concurrent claims of one free name exactly
//!   one wins;
//! - a group log's entries are numbered 1, 2, 3, … without gaps; an append writes entry
//!   `head + 1` only, after checking the write check, the caps and the number in one atomic
//!   step, so of concurrent appends of one number (through any node) exactly one wins, and an
//!   entry once written is never replaced or removed. An append is durable when it returns
//!   (sled flushes it under the log lock, and its readers take that lock too, so nobody reads an
//!   entry a crash could still lose; Redis as every write, `redis_store`).

#[cfg(test)]
#[macro_use]
mod suite;

pub mod blobs;
mod ids;
pub mod memory;
pub mod redis_store;
pub mod sled_store;
pub mod usage;

use crate::push::Registration;

/// A device as the relay knows it: account key and device id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    /// The account's identity public key.
    pub account: [u8; 32],
    /// The device id within the account.
    pub device: u32,
}

impl DeviceId {
    /// account (32) ‖ device id (u32 BE).
    pub fn key(&self) -> [u8; 36] {
        let mut k = [0u8; 36];
        let (a, d) = k.split_at_mut(32);
        a.copy_from_slice(&self.account);
        d.copy_from_slice(&self.device.to_be_bytes());
        k
    }

    /// Parses `key()` bytes.
    pub fn from_key(k: &[u8]) -> Option<Self> {
        let (a, d) = k.split_at_checked(32)?;
        Some(Self {
            account: a.try_into().ok()?,
            device: u32::from_be_bytes(d.try_into().ok()?),
        })
    }
}

/// Errors of the relay's storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed.
    #[error("storage backend: {0}")]
    Backend(String),
    /// A stored record does not decode.
    #[error("corrupt record in {0}")]
    Corrupt(&'static str),
    /// An account that already exists was created again.
    #[error("account exists")]
    AccountExists,
    /// A recipient's queue is at its cap (nothing of the enqueue was written).
    #[error("the queue of a recipient device is full")]
    QueueFull(DeviceId),
    /// The envelope's share of a recipient's queue is used up (nothing was written).
    #[error("this kind of sender's share of a recipient device's queue is used up")]
    SenderQuota(DeviceId),
    /// The recipient account's mailbox is at its byte cap (nothing was written).
    #[error("the recipient account's mailbox is full")]
    MailboxFull,
    /// The relay's mailbox storage is at its byte cap (nothing was written).
    #[error("the relay's mailbox storage is full")]
    RelayFull,
    /// A username claimed while another account holds it (nothing was written).
    #[error("the username is held by another account")]
    UsernameTaken,
    /// A group log append over the log's caps (entries or bytes per slot); nothing was written.
    #[error("the group log is full")]
    GroupLogFull,
    /// A group log append over the relay's cap on all group logs together; nothing was written.
    #[error("the relay's group log storage is full")]
    GroupLogsFull,
    /// A device list whose version is not higher than the stored one.
    #[error("device list version {offered} is not newer than {stored}")]
    StaleDeviceList {
        /// Version already stored.
        stored: u64,
        /// Version offered.
        offered: u64,
    },
}

/// Result of the relay's storage.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Signed device lists, by account.
pub trait AccountStore: Send + Sync {
    /// The newest (version, signed list bytes) of an account.
    fn device_list(&self, account: &[u8; 32]) -> Result<Option<(u64, Vec<u8>)>>;
    /// The version of the newest list of an account (what a node checks its cached copy
    /// against when other nodes may publish lists).
    fn device_list_version(&self, account: &[u8; 32]) -> Result<Option<u64>> {
        Ok(self.device_list(account)?.map(|(v, _)| v))
    }
    /// Stores the first list of a new account; [`StoreError::AccountExists`] if it has one.
    fn create_account(&self, account: &[u8; 32], version: u64, signed: &[u8]) -> Result<()>;
    /// Stores a list (already verified by the caller) if its version is higher than the stored one.
    fn put_device_list(&self, account: &[u8; 32], version: u64, signed: &[u8]) -> Result<()>;
    /// The list the newest one replaced, where the store keeps it (a cluster's store does, so
    /// that a publication retried after its clean-up failed half-way can finish it): `None`
    /// otherwise.
    fn previous_device_list(&self, _account: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// What a device uploads: its current signed pre-key and last-resort ML-KEM pre-key (replacing the
/// previous ones) and more one-time keys (added to those left), each as serialized wire messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreKeyUpload {
    /// Serialized `SignedPreKey`.
    pub signed_pre_key: Vec<u8>,
    /// Serialized last-resort `KemPreKey`.
    pub last_resort_kem_pre_key: Vec<u8>,
    /// (id, serialized `OneTimePreKey`).
    pub one_time: Vec<(u32, Vec<u8>)>,
    /// (id, serialized one-time `KemPreKey`).
    pub kem: Vec<(u32, Vec<u8>)>,
}

/// What one bundle fetch took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    /// Serialized `SignedPreKey`.
    pub signed_pre_key: Vec<u8>,
    /// A one-time X25519 key, if any was left.
    pub one_time: Option<Vec<u8>>,
    /// A one-time ML-KEM key, or the last-resort one when none was left.
    pub kem: Vec<u8>,
    /// Whether `kem` is the last-resort key.
    pub kem_is_last_resort: bool,
    /// One-time X25519 keys left after this claim.
    pub one_time_left: usize,
    /// One-time ML-KEM keys left after this claim.
    pub kem_left: usize,
}

/// Public pre-keys, by device.
pub trait PreKeyStore: Send + Sync {
    /// Stores an upload.
    fn publish_pre_keys(&self, device: &DeviceId, upload: PreKeyUpload) -> Result<()>;
    /// Takes a bundle's worth of keys: each one-time key is returned to at most one caller. With
    /// `one_time` false no one-time key is taken: the bundle has the signed pre-key and the
    /// last-resort ML-KEM key only (as when none are left).
    fn claim_pre_keys(&self, device: &DeviceId, one_time: bool) -> Result<Option<Claimed>>;
    /// (one-time X25519 keys left, one-time ML-KEM keys left).
    fn pre_key_counts(&self, device: &DeviceId) -> Result<(usize, usize)>;
    /// Deletes everything a device published.
    fn remove_pre_keys(&self, device: &DeviceId) -> Result<()>;
}

/// How a send was let into a queue, which is all the relay knows of its sender: each kind has
/// its share of a recipient device's queue ([`Quotas::share_len`]). Stored in an envelope's
/// record as a fixed label in place of a sender address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    /// A device writing to its own account (authenticated).
    Own,
    /// A sealed send presenting the recipient device's delivery token: a contact.
    Contact,
    /// A sealed send without the token, to a device that accepts anyone.
    Anyone,
    /// An authenticated send to another account without tokens: the first message to someone.
    Introduction,
}

impl Share {
    /// The label stored in place of a sender: all-zero but for the last byte of the account.
    pub const fn label(self) -> DeviceId {
        let mut account = [0u8; 32];
        account[31] = match self {
            Self::Own => 1,
            Self::Contact => 2,
            Self::Anyone => 3,
            Self::Introduction => 4,
        };
        DeviceId { account, device: 0 }
    }

    /// Whether this share is held to the strangers' cap (`max_queue_len_per_sender`); the
    /// others may fill the whole queue.
    pub const fn capped(self) -> bool {
        matches!(self, Self::Anyone | Self::Introduction)
    }
}

/// What lets a sealed send into a device's queue (`SetDeliveryToken`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeliveryAccess {
    /// The token contacts present (derived end to end from the device's delivery key), if any.
    pub token: Option<[u8; 16]>,
    /// Whether sealed sends without the token are let in too.
    pub anyone: bool,
}

impl DeliveryAccess {
    /// The stored form: `anyone` (one byte, 0 or 1) ‖ the token (16 bytes) if any.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = vec![u8::from(self.anyone)];
        if let Some(t) = &self.token {
            v.extend_from_slice(t);
        }
        v
    }

    /// Reads [`DeliveryAccess::to_bytes`].
    pub fn from_bytes(v: &[u8]) -> Result<Self> {
        let corrupt = || StoreError::Corrupt("delivery access");
        let (flag, token) = v.split_first().ok_or_else(corrupt)?;
        let anyone = match flag {
            0 => false,
            1 => true,
            _ => return Err(corrupt()),
        };
        let token = if token.is_empty() {
            None
        } else {
            Some(token.try_into().map_err(|_| corrupt())?)
        };
        Ok(Self { token, anyone })
    }
}

impl std::fmt::Debug for DeliveryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryAccess")
            .field("token", &self.token.map(|_| "<set>"))
            .field("anyone", &self.anyone)
            .finish()
    }
}

/// One envelope to queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Recipient device.
    pub recipient: DeviceId,
    /// The share of the recipient's queue it counts against: [`Share::label`], never the
    /// sending device (the relay does not know it: envelopes are sealed).
    pub share: DeviceId,
    /// The sender's id for the send: a retried send with the same id (and share) is not queued
    /// twice.
    pub client_id: [u8; 16],
    /// The opaque encrypted body.
    pub body: Vec<u8>,
    /// When the relay accepted it (ms).
    pub received_at: u64,
}

/// A queued envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    /// Position in the recipient's queue (increasing).
    pub seq: u64,
    /// The envelope.
    pub envelope: Envelope,
}

/// What an enqueue did with one envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// Its sequence number in the recipient's queue.
    pub seq: u64,
    /// False when this was a retried send, already queued (or delivered and acknowledged).
    pub fresh: bool,
    /// When the relay first accepted it.
    pub received_at: u64,
    /// For a fresh envelope, the sequence number given before it in the same queue (0 if none
    /// was given since the store opened): a connection that has sent exactly up to `prev` can
    /// send this envelope without reading the store. 0 for a retried send.
    pub prev: u64,
    /// Set when the envelope was left out because its device had no room (then `seq` is 0 and
    /// `fresh` false): nothing of it was written.
    pub full: Option<Full>,
}

/// Why an envelope's device had no room for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// The device's queue is at its envelope or byte cap.
    Queue,
    /// The envelope's share of the device's queue is used up.
    Share,
}

/// The mailbox caps an enqueue is checked against (bytes as counted by [`usage::stored_bytes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Envelopes per device queue.
    pub queue_len: u64,
    /// Bytes per device queue.
    pub queue_bytes: u64,
    /// Envelopes per device queue in one share.
    pub share_len: u64,
    /// Bytes per device queue in one share.
    pub share_bytes: u64,
    /// Bytes over all device queues of one account.
    pub account_bytes: u64,
    /// Bytes over all queues.
    pub total_bytes: u64,
}

impl Quotas {
    /// No cap at all.
    pub const UNLIMITED: Self = Self {
        queue_len: u64::MAX,
        queue_bytes: u64::MAX,
        share_len: u64::MAX,
        share_bytes: u64::MAX,
        account_bytes: u64::MAX,
        total_bytes: u64::MAX,
    };

    /// Only a cap on envelopes per device queue.
    pub const fn queue_len(n: u64) -> Self {
        Self {
            queue_len: n,
            ..Self::UNLIMITED
        }
    }
}

/// Delivery tokens (RELAY_PROTOCOL.md §14): what a device lets in from sealed sends.
pub trait AccessStore: Send + Sync {
    /// Sets (or, with `None`, removes) `device`'s delivery access.
    fn set_delivery_access(&self, device: &DeviceId, access: Option<DeliveryAccess>) -> Result<()>;
    /// `device`'s delivery access; `None` refuses every sealed send.
    fn delivery_access(&self, device: &DeviceId) -> Result<Option<DeliveryAccess>>;
}

/// What the append of a group log entry did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogAppend {
    /// The entry is stored under the number asked for.
    Appended,
    /// The number was not the head + 1 (nothing was written): the head now.
    Conflict {
        /// The number of the log's last entry (0: the slot holds no log).
        head: u64,
    },
    /// The slot's log exists and its write check is another (nothing was written).
    Forbidden,
}

/// The caps a group log append is checked against (bytes are entry bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogCaps {
    /// Entries in one log.
    pub entries: u64,
    /// Bytes of the entries of one log.
    pub bytes: u64,
    /// Bytes of all group logs of the relay.
    pub total_bytes: u64,
}

impl LogCaps {
    /// No cap at all.
    pub const UNLIMITED: Self = Self {
        entries: u64::MAX,
        bytes: u64::MAX,
        total_bytes: u64::MAX,
    };
}

/// The entries of a group log a read returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogPage {
    /// The number of the log's last entry (0: the slot holds no log).
    pub head: u64,
    /// (number, entry), ascending and without gaps from the number asked for.
    pub entries: Vec<(u64, Vec<u8>)>,
}

/// Group logs (RELAY_PROTOCOL.md §15): per 32-byte slot, opaque entries numbered from 1, written
/// by compare-and-swap on the number and guarded by a write check (the SHA-256 of the write
/// token, computed by the caller; the relay keeps no token). Logs are kept for good (within the
/// caps): nothing expires or removes them.
pub trait GroupLogStore: Send + Sync {
    /// Appends `entry` as number `seq` of `slot`'s log, atomically checking, in this order: the
    /// write check (a slot without a log takes `check` as its own), that `seq` is the head + 1
    /// ([`LogAppend::Conflict`]), the log's caps ([`StoreError::GroupLogFull`]) and the relay's
    /// ([`StoreError::GroupLogsFull`]). Writes nothing unless it answers
    /// [`LogAppend::Appended`]; durable when it returns.
    fn group_log_append(
        &self,
        slot: &[u8; 32],
        check: &[u8; 32],
        seq: u64,
        entry: &[u8],
        caps: &LogCaps,
    ) -> Result<LogAppend>;
    /// The head of `slot`'s log and its entries from number `from` (at least 1) on: at most
    /// `max_entries`, and no more than `max_bytes` of entries unless the first alone is larger.
    /// A slot without a log reads as head 0 and no entries.
    fn group_log_read(
        &self,
        slot: &[u8; 32],
        from: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<LogPage>;
    /// Bytes of the entries of all group logs (where the store counts them: across relay nodes
    /// sharing a Redis Cluster, as this node last read the count).
    fn group_log_bytes(&self) -> Result<u64>;
}

/// Per-device queues of encrypted envelopes.
pub trait MailboxStore: Send + Sync {
    /// Queues envelopes (see the module docs for atomicity and the caps); returns, per envelope,
    /// its sequence number (the existing one for a retried send), or that its device was full.
    /// Refuses, writing nothing, with [`StoreError::QueueFull`] or [`StoreError::SenderQuota`]
    /// when every envelope's device is full, [`StoreError::MailboxFull`] or
    /// [`StoreError::RelayFull`] for the byte caps. Durable after the next [`MailboxStore::flush`].
    fn enqueue(&self, envelopes: &[Envelope], quotas: &Quotas) -> Result<Vec<Enqueued>>;
    /// Up to `limit` envelopes of `device` with a sequence number above `after`, in order.
    fn fetch(&self, device: &DeviceId, after: u64, limit: usize) -> Result<Vec<Queued>>;
    /// Deletes acknowledged envelopes; returns how many were there.
    fn ack(&self, device: &DeviceId, seqs: &[u64]) -> Result<usize>;
    /// Deletes envelopes received before `cutoff` (TTL); returns how many.
    fn sweep(&self, cutoff: u64) -> Result<usize>;
    /// Envelopes queued for `device`.
    fn queue_len(&self, device: &DeviceId) -> Result<usize>;
    /// What `device`'s queue holds (envelopes, bytes).
    fn queue_usage(&self, device: &DeviceId) -> Result<usage::Count>;
    /// What `device`'s queue holds in the share labelled `share` (the label's account bytes).
    fn share_usage(&self, device: &DeviceId, share: &[u8; 32]) -> Result<usage::Count>;
    /// Bytes queued for all devices of `account`.
    fn account_mailbox_bytes(&self, account: &[u8; 32]) -> Result<u64>;
    /// Bytes queued in all mailboxes.
    fn mailbox_bytes(&self) -> Result<u64>;
    /// Deletes a device's whole queue; returns how many envelopes it held.
    fn purge(&self, device: &DeviceId) -> Result<usize>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<()>;
}

/// Push endpoints registered by devices (URLs the relay POSTs content-free wake-ups to, with
/// the keys of a WebPush subscription). Stored as [`Registration::to_bytes`], which keeps a
/// plain endpoint the bare URL it always was, so older records read as plain webhooks.
pub trait PushStore: Send + Sync {
    /// Registers (`Some`) or removes (`None`) a device's endpoint.
    fn set_push_endpoint(&self, device: &DeviceId, endpoint: Option<&Registration>) -> Result<()>;
    /// A device's endpoint.
    fn push_endpoint(&self, device: &DeviceId) -> Result<Option<Registration>>;
}

/// Who holds a username: the account and its account key's signature binding the name to it
/// (`hush_proto::transcripts::username`), which the relay checked before storing and hands out
/// with every lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsernameHolder {
    /// The account.
    pub account: [u8; 32],
    /// The account key's signature (64 bytes).
    pub proof: Vec<u8>,
}

/// The username directory: name → account (with its proof), and account → name (the reverse
/// index, so that a new claim releases the old name). Names are stored as given: the caller
/// normalizes them (`hush_net::username::normalize`) and checks the proof.
pub trait UsernameStore: Send + Sync {
    /// Binds `name` to `account` if it is free or already `account`'s (the proof is replaced),
    /// and releases the name `account` held before, atomically. [`StoreError::UsernameTaken`]
    /// (writing nothing) if another account holds it.
    fn claim_username(&self, name: &str, account: &[u8; 32], proof: &[u8]) -> Result<()>;
    /// Releases `account`'s name; returns it (`None` if it held none).
    fn release_username(&self, account: &[u8; 32]) -> Result<Option<String>>;
    /// Who holds `name`.
    fn lookup_username(&self, name: &str) -> Result<Option<UsernameHolder>>;
    /// The name `account` holds.
    fn username_of(&self, account: &[u8; 32]) -> Result<Option<String>>;
}

/// Device-link offers and messages shared between the nodes of a cluster, so that a new device
/// and the existing one may link through different nodes. A single relay keeps them in memory
/// only (`admit::Admission`, which also enforces their caps): these default to sharing nothing.
pub trait LinkStore: Send + Sync {
    /// Whether other relay nodes read and write this store too (a cluster): the relay then
    /// checks what it caches against the store, and shares device links through it.
    fn shared(&self) -> bool {
        false
    }
    /// Records that a device of `account` offers `channel` for `ttl_ms`.
    fn share_offer(&self, _channel: &[u8; 32], _account: &[u8; 32], _ttl_ms: u64) -> Result<()> {
        Ok(())
    }
    /// Takes (uses up) the shared offer of `channel`: true if there was one. Of concurrent takes
    /// on any nodes, one gets true.
    fn take_shared_offer(&self, _channel: &[u8; 32]) -> Result<bool> {
        Ok(false)
    }
    /// Leaves a link message under `channel` for `ttl_ms`.
    fn share_link(&self, _channel: &[u8; 32], _body: &[u8], _ttl_ms: u64) -> Result<()> {
        Ok(())
    }
    /// Takes (removes) the shared link message under `channel`.
    fn take_shared_link(&self, _channel: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// Everything the relay stores (blobs live in a `blobs::BlobStore` of their own).
pub trait RelayStore:
    AccountStore
    + PreKeyStore
    + MailboxStore
    + PushStore
    + AccessStore
    + UsernameStore
    + LinkStore
    + GroupLogStore
{
    /// Forgets a device removed from its account: its pre-keys, push endpoint and queue (the
    /// account's username stays: it belongs to the account, not to a device).
    fn forget_device(&self, device: &DeviceId) -> Result<usize> {
        self.remove_pre_keys(device)?;
        self.set_push_endpoint(device, None)?;
        self.set_delivery_access(device, None)?;
        self.purge(device)
    }
}
impl<
    T: AccountStore
        + PreKeyStore
        + MailboxStore
        + PushStore
        + AccessStore
        + UsernameStore
        + LinkStore
        + GroupLogStore,
> RelayStore for T
{
}
