//! Encrypted attachments ("blobs"): opaque bytes uploaded in chunks and fetched by anyone holding
//! the blob's capability. The relay never sees attachment keys.
//!
//! Life of a blob: [`BlobStore::begin_within`] records its metadata (declared size, the SHA-256 of
//! its download capability, owner, expiry) if the owner's account and the relay have room for its
//! declared size under a [`Quota`]; [`BlobStore::put_chunk`] stores chunk `i` (every chunk is
//! [`BLOB_CHUNK`] bytes except the last, which holds the rest; re-sending a chunk replaces it);
//! [`BlobStore::complete`] marks it downloadable once every chunk is there, and is durable when it
//! returns (with the [`BlobStore::flush`] after it). A complete blob is immutable.
//! [`BlobStore::sweep`] deletes expired blobs and uploads abandoned before a cutoff. Deleting a
//! blob (or sweeping it) gives its bytes back to the quota.
//!
//! The store does not gate reads: [`BlobStore::chunk`] returns what is stored, and the caller
//! serves a download only when [`BlobStore::meta`] says complete and [`capability_matches`] holds.
//!
//! [`FileBlobs`] keeps each blob's bytes in a file of its own and only the metadata in sled, so
//! that neither an upload nor a download ever holds a blob in memory (sled keeps the values it
//! writes in its cache):
//!
//! | where | what |
//! |---|---|
//! | `<blobs dir>/<id as 32 hex digits>.part` | an upload in progress (0600), written chunk by chunk at its offset |
//! | `<blobs dir>/<id as 32 hex digits>` | a complete blob (0600): the `.part` file, synced and renamed |
//! | sled tree `blob_meta`, key id (16) | size u64 ‖ capability hash (32) ‖ owner (36) ‖ expires_at u64 ‖ created_at u64 ‖ complete u8 (integers big-endian) |
//!
//! At open, uploads that were in progress are deleted (their metadata and `.part` files), as are
//! files without metadata and metadata of a complete blob whose file is missing or has the wrong
//! size; the quota counters are rebuilt from the metadata that remains.
//!
//! [`RedisBlobs`] keeps metadata and bytes on the relay's Redis Cluster, so that every relay node
//! serves every blob (its module docs give the key layout and what is not atomic across slots).

mod files;
mod memory;
mod record;
mod redis;
#[cfg(test)]
#[macro_use]
mod suite;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Result;

pub use self::files::FileBlobs;
pub use self::memory::MemoryBlobs;
pub use self::redis::RedisBlobs;

/// Size of every chunk of a blob but the last.
pub const BLOB_CHUNK: usize = 64 * 1024;

/// Length of a download capability (its SHA-256 is what the relay stores).
pub const CAPABILITY_LEN: usize = 32;

/// A blob's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobMeta {
    /// Declared size in bytes.
    pub size: u64,
    /// SHA-256 of the download capability.
    pub capability_hash: [u8; 32],
    /// Uploading device (account key ‖ device id, big-endian).
    pub owner: [u8; 36],
    /// When the blob expires (ms).
    pub expires_at: u64,
    /// When the upload began (ms).
    pub created_at: u64,
}

impl BlobMeta {
    /// Number of chunks a blob of this size has.
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(BLOB_CHUNK as u64)
    }

    /// The length chunk `index` must have, or `None` when the blob has no such chunk.
    pub fn chunk_len(&self, index: u32) -> Option<usize> {
        let start = u64::from(index).checked_mul(BLOB_CHUNK as u64)?;
        if start >= self.size {
            return None;
        }
        let len = (self.size - start).min(BLOB_CHUNK as u64);
        usize::try_from(len).ok()
    }

    /// The account that owns the blob (the first 32 bytes of `owner`).
    pub fn account(&self) -> [u8; 32] {
        let mut a = [0u8; 32];
        if let Some(head) = self.owner.get(..32) {
            a.copy_from_slice(head);
        }
        a
    }
}

/// Whether `capability` is the one whose SHA-256 the blob's metadata holds (constant time; a
/// capability of the wrong length never matches).
pub fn capability_matches(meta: &BlobMeta, capability: &[u8]) -> bool {
    if capability.len() != CAPABILITY_LEN {
        return false;
    }
    let digest = Sha256::digest(capability);
    bool::from(digest.as_slice().ct_eq(&meta.capability_hash))
}

/// What became of a chunk offered with [`BlobStore::put_chunk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkPut {
    /// Stored (replacing an earlier copy of the same chunk).
    Stored,
    /// No such blob.
    UnknownBlob,
    /// The blob is complete and can no longer change.
    AlreadyComplete,
    /// The index is past the blob's last chunk.
    OutOfRange,
    /// The chunk does not have the length its index requires.
    WrongLength {
        /// The length it must have.
        expected: usize,
    },
}

/// Byte caps on stored blobs (declared sizes, uploads in progress included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Bytes one account may have stored.
    pub account_max: u64,
    /// Bytes stored by all accounts together.
    pub total_max: u64,
}

impl Quota {
    /// No caps.
    pub const UNLIMITED: Quota = Quota {
        account_max: u64::MAX,
        total_max: u64::MAX,
    };
}

/// What became of a [`BlobStore::begin_within`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begin {
    /// Recorded: chunks may follow.
    Started,
    /// The id is in use; nothing changed.
    IdTaken,
    /// The owner's account would go over its cap; nothing changed.
    AccountFull {
        /// Bytes the account has stored now.
        stored: u64,
    },
    /// The relay would go over its total cap; nothing changed.
    RelayFull,
}

/// Storage of encrypted attachments.
pub trait BlobStore: Send + Sync {
    /// Records a new blob if its declared size fits `quota` (for its owner's account and for
    /// the relay); otherwise nothing changes.
    fn begin_within(&self, id: [u8; 16], meta: BlobMeta, quota: Quota) -> Result<Begin>;
    /// Records a new blob with no quota; `false` (and nothing changes) when `id` is in use.
    fn begin(&self, id: [u8; 16], meta: BlobMeta) -> Result<bool> {
        Ok(self.begin_within(id, meta, Quota::UNLIMITED)? == Begin::Started)
    }
    /// Stores chunk `index` of an incomplete blob.
    fn put_chunk(&self, id: [u8; 16], index: u32, bytes: &[u8]) -> Result<ChunkPut>;
    /// Marks the blob downloadable if every chunk is present, its bytes durably; returns whether
    /// it is complete now (`false` for a missing chunk or an unknown blob). Completing twice is
    /// fine. The metadata is durable after the next [`BlobStore::flush`].
    fn complete(&self, id: [u8; 16]) -> Result<bool>;
    /// The blob's metadata and whether it is complete.
    fn meta(&self, id: [u8; 16]) -> Result<Option<(BlobMeta, bool)>>;
    /// The stored bytes of chunk `index`.
    fn chunk(&self, id: [u8; 16], index: u32) -> Result<Option<Vec<u8>>>;
    /// Deletes a blob and its bytes; returns whether it existed.
    fn delete(&self, id: [u8; 16]) -> Result<bool>;
    /// Deletes blobs that expired at or before `now` and incomplete uploads begun before
    /// `stale_incomplete_before`; returns how many blobs.
    fn sweep(&self, now: u64, stale_incomplete_before: u64) -> Result<usize>;
    /// Sum of the declared sizes of all blobs, complete or not.
    fn total_bytes(&self) -> Result<u64>;
    /// Sum of the declared sizes of the blobs owned by `account`, complete or not.
    fn account_bytes(&self, account: &[u8; 32]) -> Result<u64>;
    /// Makes everything written so far durable (call after [`BlobStore::complete`] before
    /// telling the uploader).
    fn flush(&self) -> Result<()>;
}

fn doomed(meta: &BlobMeta, complete: bool, now: u64, stale_before: u64) -> bool {
    meta.expires_at <= now || (!complete && meta.created_at < stale_before)
}

fn check_chunk(meta: &BlobMeta, complete: bool, index: u32, len: usize) -> Option<ChunkPut> {
    if complete {
        return Some(ChunkPut::AlreadyComplete);
    }
    match meta.chunk_len(index) {
        None => Some(ChunkPut::OutOfRange),
        Some(expected) if expected != len => Some(ChunkPut::WrongLength { expected }),
        Some(_) => None,
    }
}

/// Declared bytes stored, per account and in total.
#[derive(Default)]
struct Usage {
    total: u64,
    by_account: HashMap<[u8; 32], u64>,
}

impl Usage {
    fn account(&self, account: &[u8; 32]) -> u64 {
        self.by_account.get(account).copied().unwrap_or(0)
    }

    /// The refusal, if `meta` does not fit `quota`.
    fn refuse(&self, meta: &BlobMeta, quota: Quota) -> Option<Begin> {
        let stored = self.account(&meta.account());
        if stored.saturating_add(meta.size) > quota.account_max {
            return Some(Begin::AccountFull { stored });
        }
        if self.total.saturating_add(meta.size) > quota.total_max {
            return Some(Begin::RelayFull);
        }
        None
    }

    fn add(&mut self, meta: &BlobMeta) {
        self.total = self.total.saturating_add(meta.size);
        let a = self.by_account.entry(meta.account()).or_insert(0);
        *a = a.saturating_add(meta.size);
    }

    fn sub(&mut self, meta: &BlobMeta) {
        self.total = self.total.saturating_sub(meta.size);
        let account = meta.account();
        if let Some(a) = self.by_account.get_mut(&account) {
            *a = a.saturating_sub(meta.size);
            if *a == 0 {
                self.by_account.remove(&account);
            }
        }
    }
}
