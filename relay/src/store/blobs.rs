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

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Result, StoreError};

/// Size of every chunk of a blob but the last.
pub const BLOB_CHUNK: usize = 64 * 1024;

/// Length of a download capability (its SHA-256 is what the relay stores).
pub const CAPABILITY_LEN: usize = 32;

/// Suffix of the file of an upload in progress.
const PART_SUFFIX: &str = ".part";

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

struct MemBlob {
    meta: BlobMeta,
    complete: bool,
    chunks: BTreeMap<u32, Vec<u8>>,
}

#[derive(Default)]
struct MemInner {
    blobs: BTreeMap<[u8; 16], MemBlob>,
    usage: Usage,
}

/// Blob storage in memory (tests, and setups that accept losing attachments on restart).
#[derive(Default)]
pub struct MemoryBlobs {
    inner: Mutex<MemInner>,
}

impl MemoryBlobs {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, MemInner>> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Backend("lock poisoned".into()))
    }
}

impl BlobStore for MemoryBlobs {
    fn begin_within(&self, id: [u8; 16], meta: BlobMeta, quota: Quota) -> Result<Begin> {
        let mut g = self.lock()?;
        if g.blobs.contains_key(&id) {
            return Ok(Begin::IdTaken);
        }
        if let Some(refused) = g.usage.refuse(&meta, quota) {
            return Ok(refused);
        }
        g.usage.add(&meta);
        g.blobs.insert(
            id,
            MemBlob {
                meta,
                complete: false,
                chunks: BTreeMap::new(),
            },
        );
        Ok(Begin::Started)
    }

    fn put_chunk(&self, id: [u8; 16], index: u32, bytes: &[u8]) -> Result<ChunkPut> {
        let mut g = self.lock()?;
        let Some(b) = g.blobs.get_mut(&id) else {
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
        let Some(b) = g.blobs.get_mut(&id) else {
            return Ok(false);
        };
        // Chunks exist only at indices below the chunk count: counting them is enough.
        if !b.complete && b.chunks.len() as u64 == b.meta.chunk_count() {
            b.complete = true;
        }
        Ok(b.complete)
    }

    fn meta(&self, id: [u8; 16]) -> Result<Option<(BlobMeta, bool)>> {
        Ok(self.lock()?.blobs.get(&id).map(|b| (b.meta, b.complete)))
    }

    fn chunk(&self, id: [u8; 16], index: u32) -> Result<Option<Vec<u8>>> {
        Ok(self
            .lock()?
            .blobs
            .get(&id)
            .and_then(|b| b.chunks.get(&index).cloned()))
    }

    fn delete(&self, id: [u8; 16]) -> Result<bool> {
        let mut g = self.lock()?;
        let Some(b) = g.blobs.remove(&id) else {
            return Ok(false);
        };
        g.usage.sub(&b.meta);
        Ok(true)
    }

    fn sweep(&self, now: u64, stale_incomplete_before: u64) -> Result<usize> {
        let mut g = self.lock()?;
        let doomed_ids: Vec<[u8; 16]> = g
            .blobs
            .iter()
            .filter(|(_, b)| doomed(&b.meta, b.complete, now, stale_incomplete_before))
            .map(|(id, _)| *id)
            .collect();
        for id in &doomed_ids {
            if let Some(b) = g.blobs.remove(id) {
                g.usage.sub(&b.meta);
            }
        }
        Ok(doomed_ids.len())
    }

    fn total_bytes(&self) -> Result<u64> {
        Ok(self.lock()?.usage.total)
    }

    fn account_bytes(&self, account: &[u8; 32]) -> Result<u64> {
        Ok(self.lock()?.usage.account(account))
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
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

fn id_of(key: &[u8]) -> Result<[u8; 16]> {
    key.try_into().map_err(|_| StoreError::Corrupt("blob_meta"))
}

/// Creates a file only the relay's user can read (0600), failing if it exists.
fn create_private_file(path: &Path) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
}

#[cfg(unix)]
fn write_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn write_at(mut file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn read_at(mut file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Syncs a directory, so that a rename or removal in it is durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(backend(e)),
    }
}

/// An upload in progress.
struct Partial {
    meta: BlobMeta,
    file: Arc<File>,
    /// Which chunks were written (by index).
    received: Vec<bool>,
    /// How many of `received` are set.
    count: u64,
    /// [`BlobStore::complete`] is syncing it: no more chunks.
    completing: bool,
}

#[derive(Default)]
struct FileState {
    usage: Usage,
    partial: HashMap<[u8; 16], Partial>,
}

/// Blob storage in files of their own, one per blob, with the metadata in the relay's sled
/// database (see the module docs).
pub struct FileBlobs {
    db: sled::Db,
    meta: sled::Tree,
    dir: PathBuf,
    /// Serializes the changes of a blob's state (begin, complete, delete) and holds the quota
    /// counters and the uploads in progress.
    state: Mutex<FileState>,
}

impl FileBlobs {
    /// Opens the blob metadata of `db` and the blob files in `dir` (created 0700 if missing),
    /// cleans up what an interrupted run left, and rebuilds the quota counters. A database whose
    /// blobs were kept in sled (tree `blob_chunks`) has its complete blobs moved to files.
    pub fn open(db: &sled::Db, dir: &Path) -> Result<Self> {
        crate::create_private_dir(dir).map_err(backend)?;
        let store = Self {
            meta: db.open_tree("blob_meta").map_err(backend)?,
            db: db.clone(),
            dir: dir.to_path_buf(),
            state: Mutex::new(FileState::default()),
        };
        store.migrate_from_sled()?;
        store.recover()?;
        Ok(store)
    }

    /// The directory of the blob files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &[u8; 16]) -> PathBuf {
        self.dir.join(hex::encode(id))
    }

    fn part_path(&self, id: &[u8; 16]) -> PathBuf {
        self.dir.join(format!("{}{PART_SUFFIX}", hex::encode(id)))
    }

    fn lock(&self) -> Result<MutexGuard<'_, FileState>> {
        self.state
            .lock()
            .map_err(|_| StoreError::Backend("lock poisoned".into()))
    }

    /// Moves the complete blobs of the former `blob_chunks` tree into files, then drops it.
    fn migrate_from_sled(&self) -> Result<()> {
        if !self.db.tree_names().iter().any(|n| n == b"blob_chunks") {
            return Ok(());
        }
        let chunks = self.db.open_tree("blob_chunks").map_err(backend)?;
        for kv in self.meta.iter() {
            let (k, v) = kv.map_err(backend)?;
            let id = id_of(&k)?;
            let (meta, complete) = decode_meta(&v)?;
            if !complete {
                continue;
            }
            let part = self.part_path(&id);
            remove_if_present(&part)?;
            let file = create_private_file(&part).map_err(backend)?;
            let mut written = 0u64;
            for c in chunks.scan_prefix(id).values() {
                let c = c.map_err(backend)?;
                write_at(&file, &c, written).map_err(backend)?;
                written += c.len() as u64;
            }
            file.sync_all().map_err(backend)?;
            if written == meta.size {
                std::fs::rename(&part, self.path(&id)).map_err(backend)?;
            }
        }
        sync_dir(&self.dir).map_err(backend)?;
        drop(chunks);
        self.db.drop_tree("blob_chunks").map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    /// Deletes interrupted uploads, files without metadata and metadata without its file;
    /// rebuilds the quota counters.
    fn recover(&self) -> Result<()> {
        let mut keep = std::collections::HashSet::new();
        let mut usage = Usage::default();
        for kv in self.meta.iter() {
            let (k, v) = kv.map_err(backend)?;
            let id = id_of(&k)?;
            let (meta, complete) = decode_meta(&v)?;
            let whole = complete
                && std::fs::metadata(self.path(&id))
                    .is_ok_and(|m| m.is_file() && m.len() == meta.size);
            if whole {
                keep.insert(hex::encode(id));
                usage.add(&meta);
            } else {
                self.meta.remove(k).map_err(backend)?;
            }
        }
        for entry in std::fs::read_dir(&self.dir).map_err(backend)? {
            let entry = entry.map_err(backend)?;
            let name = entry.file_name();
            let known = name.to_str().is_some_and(|n| keep.contains(n));
            if !known && entry.file_type().map_err(backend)?.is_file() {
                remove_if_present(&entry.path())?;
            }
        }
        sync_dir(&self.dir).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        self.lock()?.usage = usage;
        Ok(())
    }

    /// Deletes the blob if `pred` holds for its current metadata.
    fn delete_if(&self, id: [u8; 16], pred: impl Fn(&BlobMeta, bool) -> bool) -> Result<bool> {
        let mut g = self.lock()?;
        let Some(raw) = self.meta.get(id).map_err(backend)? else {
            return Ok(false);
        };
        let (meta, complete) = decode_meta(&raw)?;
        if !pred(&meta, complete) {
            return Ok(false);
        }
        self.meta.remove(id).map_err(backend)?;
        if g.partial.remove(&id).is_some() {
            remove_if_present(&self.part_path(&id))?;
        }
        remove_if_present(&self.path(&id))?;
        g.usage.sub(&meta);
        Ok(true)
    }
}

impl BlobStore for FileBlobs {
    fn begin_within(&self, id: [u8; 16], meta: BlobMeta, quota: Quota) -> Result<Begin> {
        let mut g = self.lock()?;
        if g.partial.contains_key(&id) || self.meta.contains_key(id).map_err(backend)? {
            return Ok(Begin::IdTaken);
        }
        if let Some(refused) = g.usage.refuse(&meta, quota) {
            return Ok(refused);
        }
        let part = self.part_path(&id);
        // A leftover of a deleted upload of the same id (ids are random: practically never).
        remove_if_present(&part)?;
        let file = create_private_file(&part).map_err(backend)?;
        if let Err(e) = self.meta.insert(id, encode_meta(&meta, false)) {
            let _ = std::fs::remove_file(&part);
            return Err(backend(e));
        }
        let chunks = usize::try_from(meta.chunk_count()).unwrap_or(usize::MAX);
        g.usage.add(&meta);
        g.partial.insert(
            id,
            Partial {
                meta,
                file: Arc::new(file),
                received: vec![false; chunks],
                count: 0,
                completing: false,
            },
        );
        Ok(Begin::Started)
    }

    fn put_chunk(&self, id: [u8; 16], index: u32, bytes: &[u8]) -> Result<ChunkPut> {
        let file = {
            let g = self.lock()?;
            let Some(p) = g.partial.get(&id) else {
                drop(g);
                return Ok(match self.meta(id)? {
                    Some((_, true)) => ChunkPut::AlreadyComplete,
                    _ => ChunkPut::UnknownBlob,
                });
            };
            if let Some(refused) = check_chunk(&p.meta, p.completing, index, bytes.len()) {
                return Ok(refused);
            }
            Arc::clone(&p.file)
        };
        let offset = u64::from(index) * BLOB_CHUNK as u64;
        // Written without the lock: uploads do not wait for each other's disk writes.
        write_at(&file, bytes, offset).map_err(backend)?;
        let mut g = self.lock()?;
        let Some(p) = g.partial.get_mut(&id) else {
            return Ok(ChunkPut::UnknownBlob);
        };
        if let Some(seen) = usize::try_from(index)
            .ok()
            .and_then(|i| p.received.get_mut(i))
            && !*seen
        {
            *seen = true;
            p.count += 1;
        }
        Ok(ChunkPut::Stored)
    }

    fn complete(&self, id: [u8; 16]) -> Result<bool> {
        let file = {
            let mut g = self.lock()?;
            let Some(p) = g.partial.get_mut(&id) else {
                drop(g);
                return Ok(matches!(self.meta(id)?, Some((_, true))));
            };
            if p.count != p.meta.chunk_count() {
                return Ok(false);
            }
            p.completing = true;
            Arc::clone(&p.file)
        };
        // Synced without the lock; a delete meanwhile removes the upload, seen below.
        file.sync_all().map_err(backend)?;
        let mut g = self.lock()?;
        let Some(p) = g.partial.remove(&id) else {
            return Ok(false);
        };
        let done = std::fs::rename(self.part_path(&id), self.path(&id))
            .and_then(|()| sync_dir(&self.dir))
            .map_err(backend)
            .and_then(|()| {
                self.meta
                    .insert(id, encode_meta(&p.meta, true))
                    .map_err(backend)
            });
        if let Err(e) = done {
            // Left as it was: still uploading, as far as anyone can tell.
            let mut p = p;
            p.completing = false;
            let _ = std::fs::rename(self.path(&id), self.part_path(&id));
            g.partial.insert(id, p);
            return Err(e);
        }
        Ok(true)
    }

    fn meta(&self, id: [u8; 16]) -> Result<Option<(BlobMeta, bool)>> {
        self.meta
            .get(id)
            .map_err(backend)?
            .map(|v| decode_meta(&v))
            .transpose()
    }

    fn chunk(&self, id: [u8; 16], index: u32) -> Result<Option<Vec<u8>>> {
        let (file, meta) = {
            let g = self.lock()?;
            match g.partial.get(&id) {
                Some(p) => {
                    let written = usize::try_from(index)
                        .ok()
                        .and_then(|i| p.received.get(i))
                        .is_some_and(|r| *r);
                    if !written {
                        return Ok(None);
                    }
                    (Arc::clone(&p.file), p.meta)
                }
                None => {
                    drop(g);
                    let Some((meta, true)) = self.meta(id)? else {
                        return Ok(None);
                    };
                    match File::open(self.path(&id)) {
                        Ok(f) => (Arc::new(f), meta),
                        // Deleted meanwhile.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(backend(e)),
                    }
                }
            }
        };
        let Some(len) = meta.chunk_len(index) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; len];
        read_at(&file, &mut buf, u64::from(index) * BLOB_CHUNK as u64).map_err(backend)?;
        Ok(Some(buf))
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
                candidates.push(id_of(&k)?);
            }
        }
        let mut deleted = 0;
        for id in candidates {
            // Checked again under the lock: the upload may have completed meanwhile.
            if self.delete_if(id, |m, c| doomed(m, c, now, stale_incomplete_before))? {
                deleted += 1;
            }
        }
        if deleted > 0 {
            sync_dir(&self.dir).map_err(backend)?;
        }
        Ok(deleted)
    }

    fn total_bytes(&self) -> Result<u64> {
        Ok(self.lock()?.usage.total)
    }

    fn account_bytes(&self, account: &[u8; 32]) -> Result<u64> {
        Ok(self.lock()?.usage.account(account))
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(backend)
    }
}

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

            #[test]
            fn quotas_refuse_past_the_caps_and_deletion_gives_the_bytes_back() {
                let (_g, s) = $make;
                let q = Quota {
                    account_max: 100,
                    total_max: 150,
                };
                let mut a = meta(60, &[1; 32], 10, 1_000);
                a.owner = [1; 36];
                let mut b = meta(60, &[1; 32], 10, 1_000);
                b.owner = [2; 36];
                assert_eq!(s.begin_within([30; 16], a, q).unwrap(), Begin::Started);
                // A second blob of account 1 would make 120 > 100.
                assert_eq!(
                    s.begin_within([31; 16], a, q).unwrap(),
                    Begin::AccountFull { stored: 60 }
                );
                assert_eq!(s.meta([31; 16]).unwrap(), None, "nothing recorded");
                // Account 2 still fits; then the relay is at 120 and 60 more do not fit.
                assert_eq!(s.begin_within([32; 16], b, q).unwrap(), Begin::Started);
                b.size = 40;
                assert_eq!(s.begin_within([33; 16], b, q).unwrap(), Begin::RelayFull);
                assert_eq!(s.begin_within([30; 16], a, q).unwrap(), Begin::IdTaken);
                assert_eq!(s.account_bytes(&[1; 32]).unwrap(), 60);
                assert_eq!(s.account_bytes(&[2; 32]).unwrap(), 60);
                assert_eq!(s.total_bytes().unwrap(), 120);
                // Deleting (or expiring) gives the bytes back.
                assert!(s.delete([30; 16]).unwrap());
                assert_eq!(s.account_bytes(&[1; 32]).unwrap(), 0);
                assert_eq!(s.begin_within([31; 16], a, q).unwrap(), Begin::Started);
                assert_eq!(s.sweep(1_000, 0).unwrap(), 2);
                assert_eq!(s.total_bytes().unwrap(), 0);
                assert_eq!(s.account_bytes(&[2; 32]).unwrap(), 0);
                assert_eq!(s.begin_within([33; 16], b, q).unwrap(), Begin::Started);
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

    blob_store_suite!(in_files, {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        let store = super::super::FileBlobs::open(&db, &dir.path().join("blobs")).unwrap();
        (dir, store)
    });

    use super::*;

    fn open(dir: &Path) -> (sled::Db, FileBlobs) {
        let db = sled::Config::new().path(dir.join("db")).open().unwrap();
        let s = FileBlobs::open(&db, &dir.join("blobs")).unwrap();
        (db, s)
    }

    fn meta_of(size: usize) -> BlobMeta {
        BlobMeta {
            size: size as u64,
            capability_hash: Sha256::digest([3u8; 32]).into(),
            owner: [1; 36],
            expires_at: 9_999,
            created_at: 1,
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_completed_blob_survives_reopen_in_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..BLOB_CHUNK + 77).map(|i| (i % 13) as u8).collect();
        let m = meta_of(data.len());
        {
            let (_db, s) = open(dir.path());
            s.begin([1; 16], m).unwrap();
            for (i, c) in data.chunks(BLOB_CHUNK).enumerate() {
                s.put_chunk([1; 16], i as u32, c).unwrap();
            }
            assert_eq!(
                files(dir.path()),
                vec![format!("{}.part", hex::encode([1u8; 16]))]
            );
            assert!(s.complete([1; 16]).unwrap());
            s.flush().unwrap();
            // Dropped without any shutdown.
        }
        let name = hex::encode([1u8; 16]);
        assert_eq!(files(dir.path()), vec![name.clone()]);
        assert_eq!(
            std::fs::read(dir.path().join("blobs").join(&name)).unwrap(),
            data
        );
        let (_db, s) = open(dir.path());
        let (back, complete) = s.meta([1; 16]).unwrap().unwrap();
        assert_eq!((back, complete), (m, true));
        assert!(capability_matches(&back, &[3; 32]));
        let mut got = s.chunk([1; 16], 0).unwrap().unwrap();
        got.extend(s.chunk([1; 16], 1).unwrap().unwrap());
        assert_eq!(got, data);
        assert_eq!(
            s.total_bytes().unwrap(),
            data.len() as u64,
            "counters rebuilt"
        );
        assert_eq!(s.account_bytes(&[1; 32]).unwrap(), data.len() as u64);
    }

    #[cfg(unix)]
    #[test]
    fn blob_files_are_private_to_the_relay_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (_db, s) = open(dir.path());
        s.begin([1; 16], meta_of(5)).unwrap();
        s.put_chunk([1; 16], 0, b"hello").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let blobs = dir.path().join("blobs");
        assert_eq!(mode(&blobs), 0o700);
        assert_eq!(
            mode(&blobs.join(format!("{}.part", hex::encode([1u8; 16])))),
            0o600
        );
        assert!(s.complete([1; 16]).unwrap());
        assert_eq!(mode(&blobs.join(hex::encode([1u8; 16]))), 0o600);
    }

    #[test]
    fn an_interrupted_upload_and_stray_files_are_gone_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_db, s) = open(dir.path());
            s.begin([1; 16], meta_of(BLOB_CHUNK + 1)).unwrap();
            s.put_chunk([1; 16], 0, &vec![1; BLOB_CHUNK]).unwrap();
            s.begin([2; 16], meta_of(3)).unwrap();
            s.put_chunk([2; 16], 0, b"abc").unwrap();
            assert!(s.complete([2; 16]).unwrap());
            s.flush().unwrap();
            assert_eq!(s.total_bytes().unwrap(), BLOB_CHUNK as u64 + 4);
        }
        // A file nobody knows, and a complete blob whose file went missing.
        std::fs::write(dir.path().join("blobs").join("stray"), b"x").unwrap();
        {
            let db = sled::Config::new()
                .path(dir.path().join("db"))
                .open()
                .unwrap();
            let t = db.open_tree("blob_meta").unwrap();
            t.insert([3u8; 16], encode_meta(&meta_of(7), true)).unwrap();
            db.flush().unwrap();
        }
        let (_db, s) = open(dir.path());
        assert_eq!(files(dir.path()), vec![hex::encode([2u8; 16])]);
        assert_eq!(s.meta([1; 16]).unwrap(), None);
        assert_eq!(s.meta([3; 16]).unwrap(), None);
        assert_eq!(s.total_bytes().unwrap(), 3);
        assert_eq!(s.chunk([2; 16], 0).unwrap().unwrap(), b"abc");
    }

    #[test]
    fn deleting_an_upload_in_progress_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, s) = open(dir.path());
        s.begin([1; 16], meta_of(BLOB_CHUNK + 1)).unwrap();
        s.put_chunk([1; 16], 0, &vec![1; BLOB_CHUNK]).unwrap();
        assert!(s.delete([1; 16]).unwrap());
        assert!(files(dir.path()).is_empty());
        assert_eq!(
            s.put_chunk([1; 16], 1, &[1]).unwrap(),
            ChunkPut::UnknownBlob
        );
        assert!(!s.complete([1; 16]).unwrap());
        assert_eq!(s.total_bytes().unwrap(), 0);
    }

    #[test]
    fn blobs_kept_in_sled_by_an_older_version_move_to_files() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..BLOB_CHUNK + 9).map(|i| (i % 7) as u8).collect();
        {
            let db = sled::Config::new()
                .path(dir.path().join("db"))
                .open()
                .unwrap();
            let meta = db.open_tree("blob_meta").unwrap();
            let chunks = db.open_tree("blob_chunks").unwrap();
            meta.insert([1u8; 16], encode_meta(&meta_of(data.len()), true))
                .unwrap();
            meta.insert([2u8; 16], encode_meta(&meta_of(5), false))
                .unwrap();
            for (i, c) in data.chunks(BLOB_CHUNK).enumerate() {
                let mut k = [1u8; 20];
                k[16..].copy_from_slice(&(i as u32).to_be_bytes());
                chunks.insert(k, c).unwrap();
            }
            db.flush().unwrap();
        }
        let (db, s) = open(dir.path());
        assert!(!db.tree_names().iter().any(|n| n == b"blob_chunks"));
        assert_eq!(files(dir.path()), vec![hex::encode([1u8; 16])]);
        let mut got = s.chunk([1; 16], 0).unwrap().unwrap();
        got.extend(s.chunk([1; 16], 1).unwrap().unwrap());
        assert_eq!(got, data);
        assert_eq!(
            s.meta([2; 16]).unwrap(),
            None,
            "an unfinished upload is dropped"
        );
    }

    #[test]
    fn corrupt_metadata_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let (db, s) = open(dir.path());
        db.open_tree("blob_meta")
            .unwrap()
            .insert([1u8; 16], &b"short"[..])
            .unwrap();
        assert!(matches!(
            s.meta([1; 16]),
            Err(StoreError::Corrupt("blob_meta"))
        ));
        assert!(matches!(s.sweep(0, 0), Err(StoreError::Corrupt(_))));
        let mut bad = encode_meta(&meta_of(1), false);
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
