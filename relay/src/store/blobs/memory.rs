//! [`MemoryBlobs`]: blob storage in memory.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::{Begin, BlobMeta, BlobStore, ChunkPut, Quota, Usage, check_chunk, doomed};
use crate::store::{Result, StoreError};

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
