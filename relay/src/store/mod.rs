//! Relay storage: one trait per concern, each implemented in memory ([`memory::MemoryStore`]) and
//! on sled ([`sled_store::SledStore`]); one test-suite runs against both.
//!
//! Guarantees every implementation gives:
//! - a device list is replaced only by one with a higher version;
//! - a one-time pre-key is handed out at most once, even under concurrent claims (one atomic take);
//! - an enqueue is idempotent per (sender device, client id) and durable when it returns;
//! - a device's queue is read in the order envelopes were accepted (increasing sequence numbers).

#[cfg(test)]
#[macro_use]
mod suite;

pub mod memory;
pub mod sled_store;

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
    /// Stores a list (already verified by the caller) if its version is higher than the stored one.
    fn put_device_list(&self, account: &[u8; 32], version: u64, signed: &[u8]) -> Result<()>;
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
    /// Takes a bundle's worth of keys: each one-time key is returned to at most one caller.
    fn claim_pre_keys(&self, device: &DeviceId) -> Result<Option<Claimed>>;
}

/// One envelope to queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Recipient device.
    pub recipient: DeviceId,
    /// Sending device (as authenticated by the relay).
    pub sender: DeviceId,
    /// The sender's id for the send: a retried send with the same id is not queued twice.
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

/// Per-device queues of encrypted envelopes.
pub trait MailboxStore: Send + Sync {
    /// Queues envelopes atomically and durably; returns each one's sequence number (the existing
    /// one for a retried send).
    fn enqueue(&self, envelopes: &[Envelope]) -> Result<Vec<u64>>;
    /// Up to `limit` envelopes of `device` with a sequence number above `after`, in order.
    fn fetch(&self, device: &DeviceId, after: u64, limit: usize) -> Result<Vec<Queued>>;
    /// Deletes acknowledged envelopes; returns how many were there.
    fn ack(&self, device: &DeviceId, seqs: &[u64]) -> Result<usize>;
    /// Deletes envelopes received before `cutoff` (TTL); returns how many.
    fn sweep(&self, cutoff: u64) -> Result<usize>;
    /// Envelopes queued for `device`.
    fn queue_len(&self, device: &DeviceId) -> Result<usize>;
}

/// Everything the relay stores.
pub trait RelayStore: AccountStore + PreKeyStore + MailboxStore {}
impl<T: AccountStore + PreKeyStore + MailboxStore> RelayStore for T {}
