//! Encrypted attachments ("blobs"): opaque bytes uploaded in chunks and fetched by anyone holding
//! the blob's capability. The relay never sees attachment keys.
//!
//! Life of a blob: [`BlobStore::begin`] records its metadata (declared size, the SHA-256 of its
//! download capability, owner, expiry); [`BlobStore::put_chunk`] stores chunk `i` (every chunk is
//! [`BLOB_CHUNK`] bytes except the last, which holds the rest; re-sending a chunk replaces it);
//! [`BlobStore::complete`] marks it downloadable once every chunk is there, and is durable when it
//! returns. A complete blob is immutable. [`BlobStore::sweep`] deletes expired blobs and uploads
//! abandoned before a cutoff.
//!
//! The store does not gate reads: [`BlobStore::chunk`] returns what is stored, and the caller
//! serves a download only when [`BlobStore::meta`] says complete and [`capability_matches`] holds.
//!
//! On sled (all keys big-endian, so a blob's chunks are contiguous and in order):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `blob_meta` | id (16) | size u64 ‖ capability hash (32) ‖ owner (36) ‖ expires_at u64 ‖ created_at u64 ‖ complete u8 |
//! | `blob_chunks` | id (16) ‖ index u32 | chunk bytes |
//!
//! A chunk is written in one transaction with a read of its blob's metadata, and a blob (metadata
//! and every chunk index it can have) is deleted in one transaction, so no chunk outlives its
//! metadata and none is added to a complete blob.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use subtle::ConstantTimeEq;

use super::{Result, StoreError};

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

/// Storage of encrypted attachments.
pub trait BlobStore: Send + Sync {
    /// Records a new blob; `false` (and nothing changes) when `id` is already in use.
    fn begin(&self, id: [u8; 16], meta: BlobMeta) -> Result<bool>;
    /// Stores chunk `index` of an incomplete blob.
    fn put_chunk(&self, id: [u8; 16], index: u32, bytes: &[u8]) -> Result<ChunkPut>;
    /// Marks the blob downloadable if every chunk is present, durably; returns whether it is
    /// complete now (`false` for a missing chunk or an unknown blob). Completing twice is fine.
    fn complete(&self, id: [u8; 16]) -> Result<bool>;
    /// The blob's metadata and whether it is complete.
    fn meta(&self, id: [u8; 16]) -> Result<Option<(BlobMeta, bool)>>;
    /// The stored bytes of chunk `index`.
    fn chunk(&self, id: [u8; 16], index: u32) -> Result<Option<Vec<u8>>>;
    /// Deletes a blob and its chunks; returns whether it existed.
    fn delete(&self, id: [u8; 16]) -> Result<bool>;
    /// Deletes blobs that expired at or before `now` and incomplete uploads begun before
    /// `stale_incomplete_before`; returns how many blobs.
    fn sweep(&self, now: u64, stale_incomplete_before: u64) -> Result<usize>;
    /// Sum of the declared sizes of all blobs, complete or not.
    fn total_bytes(&self) -> Result<u64>;
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

struct MemBlob {
    meta: BlobMeta,
    complete: bool,
    chunks: BTreeMap<u32, Vec<u8>>,
}

/// Blob storage in memory (tests, and setups that accept losing attachments on restart).
#[derive(Default)]
pub struct MemoryBlobs {
    blobs: Mutex<BTreeMap<[u8; 16], MemBlob>>,
}

impl MemoryBlobs {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, BTreeMap<[u8; 16], MemBlob>>> {
        self.blobs
            .lock()
            .map_err(|_| StoreError::Backend("lock poisoned".into()))
    }
}

impl BlobStore for MemoryBlobs {
    fn begin(&self, id: [u8; 16], meta: BlobMeta) -> Result<bool> {
        let mut g = self.lock()?;
        if g.contains_key(&id) {
            return Ok(false);
        }
        g.insert(
            id,
            MemBlob {
                meta,
                complete: false,
                chunks: BTreeMap::new(),
            },
        );
        Ok(true)
    }

    fn put_chunk(&self, id: [u8; 16], index: u32, bytes: &[u8]) -> Result<ChunkPut> {
        let mut g = self.lock()?;
        let Some(b) = g.get_mut(&id) else {
            return Ok(ChunkPut::UnknownBlob);
        };
        if let Some(refused) = check_chunk(&b.meta, b.complete, index, bytes.len()) {
            return Ok(refused);
        }
        b.chunks.insert(index, bytes.to_vec());
        Ok(ChunkPut::Stored)
    }

    fn complete(&self, id: [u8; 16]) -> Result<bool> {
        let mut g = self.lock()?;
        let Some(b) = g.get_mut(&id) else {
            return Ok(false);
        };
        // Chunks exist only at indices below the chunk count: counting them is enough.
        if !b.complete && b.chunks.len() as u64 == b.meta.chunk_count() {
            b.complete = true;
        }
        Ok(b.complete)
    }

    fn meta(&self, id: [u8; 16]) -> Result<Option<(BlobMeta, bool)>> {
        Ok(self.lock()?.get(&id).map(|b| (b.meta, b.complete)))
    }

    fn chunk(&self, id: [u8; 16], index: u32) -> Result<Option<Vec<u8>>> {
        Ok(self
            .lock()?
            .get(&id)
            .and_then(|b| b.chunks.get(&index).cloned()))
    }

    fn delete(&self, id: [u8; 16]) -> Result<bool> {
        Ok(self.lock()?.remove(&id).is_some())
    }

    fn sweep(&self, now: u64, stale_incomplete_before: u64) -> Result<usize> {
        let mut g = self.lock()?;
        let before = g.len();
        g.retain(|_, b| !doomed(&b.meta, b.complete, now, stale_incomplete_before));
        Ok(before - g.len())
    }

    fn total_bytes(&self) -> Result<u64> {
        Ok(self
            .lock()?
            .values()
            .fold(0u64, |sum, b| sum.saturating_add(b.meta.size)))
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    }
}

const META_LEN: usize = 8 + 32 + 36 + 8 + 8 + 1;

fn encode_meta(meta: &BlobMeta, complete: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(META_LEN);
    v.extend_from_slice(&meta.size.to_be_bytes());
    v.extend_from_slice(&meta.capability_hash);
    v.extend_from_slice(&meta.owner);
    v.extend_from_slice(&meta.expires_at.to_be_bytes());
    v.extend_from_slice(&meta.created_at.to_be_bytes());
    v.push(u8::from(complete));
    v
}

fn take<const N: usize>(rest: &mut &[u8]) -> Option<[u8; N]> {
    let (head, tail) = rest.split_first_chunk::<N>()?;
    *rest = tail;
    Some(*head)
}

fn decode_meta(v: &[u8]) -> Result<(BlobMeta, bool)> {
    let corrupt = StoreError::Corrupt("blob_meta");
    if v.len() != META_LEN {
        return Err(corrupt);
    }
    let mut r = v;
    let mut field = || -> Option<(BlobMeta, bool)> {
        let size = u64::from_be_bytes(take(&mut r)?);
        let capability_hash = take(&mut r)?;
        let owner = take(&mut r)?;
        let expires_at = u64::from_be_bytes(take(&mut r)?);
        let created_at = u64::from_be_bytes(take(&mut r)?);
        let complete = match take::<1>(&mut r)? {
            [0] => false,
            [1] => true,
            _ => return None,
        };
        Some((
            BlobMeta {
                size,
                capability_hash,
                owner,
                expires_at,
                created_at,
            },
            complete,
        ))
    };
    field().ok_or(corrupt)
}

fn chunk_key(id: &[u8; 16], index: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    let (a, b) = k.split_at_mut(16);
    a.copy_from_slice(id);
    b.copy_from_slice(&index.to_be_bytes());
    k
}

/// Blob storage in the relay's sled database (trees `blob_meta` and `blob_chunks`).
pub struct SledBlobs {
    db: sled::Db,
    meta: sled::Tree,
    chunks: sled::Tree,
}

impl SledBlobs {
    /// Opens (or creates) the blob trees of `db`.
    pub fn open(db: &sled::Db) -> Result<Self> {
        Ok(Self {
            meta: db.open_tree("blob_meta").map_err(backend)?,
            chunks: db.open_tree("blob_chunks").map_err(backend)?,
            db: db.clone(),
        })
    }

    /// Deletes the blob if `pred` holds for its current metadata: the metadata and the chunks
    /// found under its id go in one transaction. A chunk stored by a racing upload between the scan
    /// and the transaction is removed right after (none can be stored once the metadata is gone).
    fn delete_if(&self, id: [u8; 16], pred: impl Fn(&BlobMeta, bool) -> bool) -> Result<bool> {
        let keys = self.chunk_keys(id)?;
        let deleted = (&self.meta, &self.chunks)
            .transaction(|(m, c)| {
                let Some(raw) = m.get(id)? else {
                    return Ok(false);
                };
                let (meta, complete) =
                    decode_meta(&raw).map_err(ConflictableTransactionError::Abort)?;
                if !pred(&meta, complete) {
                    return Ok(false);
                }
                m.remove(&id[..])?;
                for k in &keys {
                    c.remove(k.as_ref())?;
                }
                Ok(true)
            })
            .map_err(tx_err)?;
        if deleted {
            for k in self.chunk_keys(id)? {
                self.chunks.remove(k).map_err(backend)?;
            }
        }
        Ok(deleted)
    }

    fn chunk_keys(&self, id: [u8; 16]) -> Result<Vec<sled::IVec>> {
        self.chunks
            .scan_prefix(id)
            .keys()
            .collect::<std::result::Result<_, _>>()
            .map_err(backend)
    }
}

impl BlobStore for SledBlobs {
    fn begin(&self, id: [u8; 16], meta: BlobMeta) -> Result<bool> {
        let swapped = self
            .meta
            .compare_and_swap(id, None as Option<&[u8]>, Some(encode_meta(&meta, false)))
            .map_err(backend)?;
        Ok(swapped.is_ok())
    }

    fn put_chunk(&self, id: [u8; 16], index: u32, bytes: &[u8]) -> Result<ChunkPut> {
        (&self.meta, &self.chunks)
            .transaction(|(m, c)| {
                let Some(raw) = m.get(id)? else {
                    return Ok(ChunkPut::UnknownBlob);
                };
                let (meta, complete) =
                    decode_meta(&raw).map_err(ConflictableTransactionError::Abort)?;
                if let Some(refused) = check_chunk(&meta, complete, index, bytes.len()) {
                    return Ok(refused);
                }
                c.insert(&chunk_key(&id, index)[..], bytes)?;
                Ok(ChunkPut::Stored)
            })
            .map_err(tx_err)
    }

    fn complete(&self, id: [u8; 16]) -> Result<bool> {
        let Some((meta, complete)) = self.meta(id)? else {
            return Ok(false);
        };
        if complete {
            return Ok(true);
        }
        // Chunks are only ever stored at indices below the chunk count, so counting them is
        // enough to know that none is missing.
        let mut present = 0u64;
        for k in self.chunks.scan_prefix(id).keys() {
            k.map_err(backend)?;
            present += 1;
        }
        if present != meta.chunk_count() {
            return Ok(false);
        }
        let done = self
            .meta
            .transaction(|m| {
                let Some(raw) = m.get(id)? else {
                    return Ok(false);
                };
                let (meta, _) = decode_meta(&raw).map_err(ConflictableTransactionError::Abort)?;
                m.insert(&id[..], encode_meta(&meta, true))?;
                Ok(true)
            })
            .map_err(tx_err)?;
        // Durable after the next flush of the database, which the relay awaits (group commit)
        // before answering the upload.
        Ok(done)
    }

    fn meta(&self, id: [u8; 16]) -> Result<Option<(BlobMeta, bool)>> {
        self.meta
            .get(id)
            .map_err(backend)?
            .map(|v| decode_meta(&v))
            .transpose()
    }

    fn chunk(&self, id: [u8; 16], index: u32) -> Result<Option<Vec<u8>>> {
        Ok(self
            .chunks
            .get(chunk_key(&id, index))
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn delete(&self, id: [u8; 16]) -> Result<bool> {
        self.delete_if(id, |_, _| true)
    }

    fn sweep(&self, now: u64, stale_incomplete_before: u64) -> Result<usize> {
        let mut candidates = Vec::new();
        for kv in self.meta.iter() {
            let (k, v) = kv.map_err(backend)?;
            let (meta, complete) = decode_meta(&v)?;
            if doomed(&meta, complete, now, stale_incomplete_before) {
                let id: [u8; 16] = k
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("blob_meta"))?;
                candidates.push(id);
            }
        }
        let mut deleted = 0;
        for id in candidates {
            // Checked again inside the transaction: the upload may have completed meanwhile.
            if self.delete_if(id, |m, c| doomed(m, c, now, stale_incomplete_before))? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    fn total_bytes(&self) -> Result<u64> {
        let mut sum = 0u64;
        for v in self.meta.iter().values() {
            let (meta, _) = decode_meta(&v.map_err(backend)?)?;
            sum = sum.saturating_add(meta.size);
        }
        Ok(sum)
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(backend)
    }
}

/// The test-suite every blob store must pass: `blob_store_suite!(module_name, make_expr)` where
/// `make_expr` gives `(guard, store)`.
#[cfg(test)]
macro_rules! blob_store_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            #![allow(
                clippy::unwrap_used,
                clippy::expect_used,
                clippy::panic,
                clippy::indexing_slicing
            )]
            use crate::store::blobs::*;
            use sha2::{Digest, Sha256};

            fn meta(size: u64, cap: &[u8; 32], created_at: u64, expires_at: u64) -> BlobMeta {
                BlobMeta {
                    size,
                    capability_hash: Sha256::digest(cap).into(),
                    owner: [9; 36],
                    expires_at,
                    created_at,
                }
            }

            fn body(len: usize) -> Vec<u8> {
                (0..len).map(|i| (i % 251) as u8).collect()
            }

            fn upload(s: &dyn BlobStore, id: [u8; 16], data: &[u8]) {
                for (i, c) in data.chunks(BLOB_CHUNK).enumerate() {
                    assert_eq!(s.put_chunk(id, i as u32, c).unwrap(), ChunkPut::Stored);
                }
            }

            #[test]
            fn a_200_kib_blob_round_trips() {
                let (_g, s) = $make;
                let data = body(200 * 1024);
                let m = meta(data.len() as u64, &[1; 32], 10, 1_000);
                assert_eq!(m.chunk_count(), 4);
                assert!(s.begin([1; 16], m).unwrap());
                assert!(!s.begin([1; 16], m).unwrap(), "an id is used once");
                // In reverse order, with one chunk sent twice.
                let chunks: Vec<&[u8]> = data.chunks(BLOB_CHUNK).collect();
                for (i, c) in chunks.iter().enumerate().rev() {
                    assert_eq!(s.put_chunk([1; 16], i as u32, c).unwrap(), ChunkPut::Stored);
                }
                assert_eq!(
                    s.put_chunk([1; 16], 1, chunks[1]).unwrap(),
                    ChunkPut::Stored
                );
                assert!(s.complete([1; 16]).unwrap());
                assert!(s.complete([1; 16]).unwrap(), "completing twice is fine");
                assert_eq!(s.meta([1; 16]).unwrap(), Some((m, true)));
                let mut back = Vec::new();
                for i in 0..m.chunk_count() as u32 {
                    back.extend(s.chunk([1; 16], i).unwrap().unwrap());
                }
                assert_eq!(back, data);
                assert_eq!(s.chunk([1; 16], 4).unwrap(), None);
                assert_eq!(s.total_bytes().unwrap(), 200 * 1024);
                assert_eq!(
                    s.put_chunk([1; 16], 0, chunks[0]).unwrap(),
                    ChunkPut::AlreadyComplete
                );
            }

            #[test]
            fn chunks_must_fit_the_declared_size() {
                let (_g, s) = $make;
                let m = meta(BLOB_CHUNK as u64 + 10, &[1; 32], 10, 1_000);
                assert!(s.begin([2; 16], m).unwrap());
                assert_eq!(
                    s.put_chunk([2; 16], 0, &[0; 10]).unwrap(),
                    ChunkPut::WrongLength {
                        expected: BLOB_CHUNK
                    }
                );
                assert_eq!(
                    s.put_chunk([2; 16], 1, &[0; 11]).unwrap(),
                    ChunkPut::WrongLength { expected: 10 }
                );
                assert_eq!(
                    s.put_chunk([2; 16], 2, &[0; 10]).unwrap(),
                    ChunkPut::OutOfRange
                );
                assert_eq!(
                    s.put_chunk([2; 16], u32::MAX, &[0; 10]).unwrap(),
                    ChunkPut::OutOfRange
                );
                assert_eq!(
                    s.put_chunk([3; 16], 0, &[0; 10]).unwrap(),
                    ChunkPut::UnknownBlob
                );
                assert!(!s.complete([3; 16]).unwrap());
                assert_eq!(s.meta([3; 16]).unwrap(), None);
            }

            #[test]
            fn an_incomplete_blob_is_not_complete() {
                let (_g, s) = $make;
                let data = body(3 * BLOB_CHUNK + 1);
                let m = meta(data.len() as u64, &[1; 32], 10, 1_000);
                s.begin([4; 16], m).unwrap();
                let chunks: Vec<&[u8]> = data.chunks(BLOB_CHUNK).collect();
                for i in [0usize, 1, 3] {
                    s.put_chunk([4; 16], i as u32, chunks[i]).unwrap();
                }
                assert!(!s.complete([4; 16]).unwrap());
                assert_eq!(s.meta([4; 16]).unwrap(), Some((m, false)));
                s.put_chunk([4; 16], 2, chunks[2]).unwrap();
                assert!(s.complete([4; 16]).unwrap());
                assert_eq!(s.meta([4; 16]).unwrap(), Some((m, true)));
            }

            #[test]
            fn an_empty_blob_completes_at_once() {
                let (_g, s) = $make;
                let m = meta(0, &[1; 32], 10, 1_000);
                s.begin([5; 16], m).unwrap();
                assert_eq!(s.put_chunk([5; 16], 0, &[]).unwrap(), ChunkPut::OutOfRange);
                assert!(s.complete([5; 16]).unwrap());
            }

            #[test]
            fn only_the_right_capability_matches() {
                let (_g, s) = $make;
                let m = meta(1, &[7; 32], 10, 1_000);
                s.begin([6; 16], m).unwrap();
                let (stored, _) = s.meta([6; 16]).unwrap().unwrap();
                assert!(capability_matches(&stored, &[7; 32]));
                assert!(!capability_matches(&stored, &[8; 32]));
                let mut near = [7u8; 32];
                near[31] ^= 1;
                assert!(!capability_matches(&stored, &near));
                assert!(!capability_matches(&stored, &[7; 31]));
                assert!(!capability_matches(&stored, &[7; 33]));
                assert!(!capability_matches(&stored, &[]));
            }

            #[test]
            fn sweep_removes_expired_and_stale_incomplete_only() {
                let (_g, s) = $make;
                let data = body(BLOB_CHUNK + 5);
                // (id, created_at, expires_at, complete)
                let cases = [
                    ([10; 16], 10, 90, true),   // expired
                    ([11; 16], 10, 500, true),  // old but complete and live: kept
                    ([12; 16], 10, 500, false), // stale incomplete
                    ([13; 16], 60, 500, false), // recent incomplete: kept
                    ([14; 16], 60, 100, false), // expired (exactly now)
                ];
                for (id, created, expires, complete) in cases {
                    s.begin(id, meta(data.len() as u64, &[1; 32], created, expires))
                        .unwrap();
                    upload(
                        &s,
                        id,
                        &data[..if complete { data.len() } else { BLOB_CHUNK }],
                    );
                    if complete {
                        assert!(s.complete(id).unwrap());
                    }
                }
                assert_eq!(s.sweep(100, 50).unwrap(), 3);
                for (id, _, _, _) in cases {
                    let kept = id == [11; 16] || id == [13; 16];
                    assert_eq!(s.meta(id).unwrap().is_some(), kept, "{id:?}");
                    assert_eq!(s.chunk(id, 0).unwrap().is_some(), kept, "{id:?}");
                }
                assert_eq!(s.total_bytes().unwrap(), 2 * data.len() as u64);
                assert_eq!(s.sweep(100, 50).unwrap(), 0);
            }

            #[test]
            fn delete_removes_the_blob_and_its_chunks() {
                let (_g, s) = $make;
                let data = body(2 * BLOB_CHUNK);
                s.begin([20; 16], meta(data.len() as u64, &[1; 32], 10, 1_000))
                    .unwrap();
                upload(&s, [20; 16], &data);
                assert!(s.complete([20; 16]).unwrap());
                s.begin([21; 16], meta(3, &[1; 32], 10, 1_000)).unwrap();
                assert!(s.delete([20; 16]).unwrap());
                assert!(!s.delete([20; 16]).unwrap());
                assert_eq!(s.meta([20; 16]).unwrap(), None);
                assert_eq!(s.chunk([20; 16], 0).unwrap(), None);
                assert_eq!(s.chunk([20; 16], 1).unwrap(), None);
                assert_eq!(s.total_bytes().unwrap(), 3);
                // The id can be used again, afresh.
                assert!(s.begin([20; 16], meta(3, &[1; 32], 10, 1_000)).unwrap());
                assert!(!s.complete([20; 16]).unwrap());
            }
        }
    };
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    blob_store_suite!(in_memory, ((), super::super::MemoryBlobs::new()));

    blob_store_suite!(on_sled, {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let store = super::super::SledBlobs::open(&db).unwrap();
        (dir, store)
    });

    use super::*;

    #[test]
    fn a_completed_blob_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..BLOB_CHUNK + 77).map(|i| (i % 13) as u8).collect();
        let m = BlobMeta {
            size: data.len() as u64,
            capability_hash: Sha256::digest([3u8; 32]).into(),
            owner: [1; 36],
            expires_at: 9_999,
            created_at: 1,
        };
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let s = SledBlobs::open(&db).unwrap();
            s.begin([1; 16], m).unwrap();
            for (i, c) in data.chunks(BLOB_CHUNK).enumerate() {
                s.put_chunk([1; 16], i as u32, c).unwrap();
            }
            assert!(s.complete([1; 16]).unwrap());
            // Dropped without any shutdown.
        }
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let s = SledBlobs::open(&db).unwrap();
        let (back, complete) = s.meta([1; 16]).unwrap().unwrap();
        assert_eq!((back, complete), (m, true));
        assert!(capability_matches(&back, &[3; 32]));
        let mut got = s.chunk([1; 16], 0).unwrap().unwrap();
        got.extend(s.chunk([1; 16], 1).unwrap().unwrap());
        assert_eq!(got, data);
    }

    #[test]
    fn corrupt_metadata_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let s = SledBlobs::open(&db).unwrap();
        db.open_tree("blob_meta")
            .unwrap()
            .insert([1u8; 16], &b"short"[..])
            .unwrap();
        assert!(matches!(
            s.meta([1; 16]),
            Err(StoreError::Corrupt("blob_meta"))
        ));
        assert!(matches!(s.sweep(0, 0), Err(StoreError::Corrupt(_))));
        let mut bad = encode_meta(
            &BlobMeta {
                size: 1,
                capability_hash: [0; 32],
                owner: [0; 36],
                expires_at: 1,
                created_at: 1,
            },
            false,
        );
        *bad.last_mut().unwrap() = 2;
        assert!(decode_meta(&bad).is_err());
    }

    #[test]
    fn chunk_lengths_follow_the_size() {
        let m = |size| BlobMeta {
            size,
            capability_hash: [0; 32],
            owner: [0; 36],
            expires_at: 0,
            created_at: 0,
        };
        assert_eq!(m(0).chunk_count(), 0);
        assert_eq!(m(1).chunk_count(), 1);
        assert_eq!(m(BLOB_CHUNK as u64).chunk_count(), 1);
        assert_eq!(m(BLOB_CHUNK as u64 + 1).chunk_count(), 2);
        assert_eq!(m(BLOB_CHUNK as u64 + 1).chunk_len(1), Some(1));
        assert_eq!(m(BLOB_CHUNK as u64).chunk_len(1), None);
        assert_eq!(m(u64::MAX).chunk_len(u32::MAX), Some(BLOB_CHUNK));
    }
}
