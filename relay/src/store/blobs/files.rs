//! [`FileBlobs`]: each blob's bytes in a file of its own, the metadata in sled; cleanup and
//! quota counters at open, and the move of blobs once kept in sled.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::record::{decode_meta, encode_meta, id_of};
use super::{BLOB_CHUNK, Begin, BlobMeta, BlobStore, ChunkPut, Quota, Usage, check_chunk, doomed};
use crate::store::{Result, StoreError};

/// Suffix of the file of an upload in progress.
const PART_SUFFIX: &str = ".part";

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
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
/// database (see the [`blobs`](super) module docs).
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
