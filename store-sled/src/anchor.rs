//! Rollback anchors: a commit counter kept outside the database, so that putting back a whole
//! older copy of the database (which is consistent in itself) is detected on open.
//!
//! The store records its commit counter in the anchor after every durable commit (database
//! first, anchor second, so a crash between the two leaves the database one commit ahead of the
//! anchor, which is accepted). On open, a database whose counter is below the anchor's is
//! refused with [`StoreError::RolledBack`]. An anchor protects only as far as its own storage
//! cannot be rolled back together with the database: a platform keystore or a monotonic
//! hardware counter is what an app should use; [`FileAnchor`] (a file next to the database) only
//! catches a database restored on its own; [`NoAnchor`] catches nothing of the kind.

use std::io::Write;
use std::path::PathBuf;

use hush_core::store::kv::StoreError;

/// Where a store keeps its commit counter outside the database. Implemented by the platform.
pub trait RollbackAnchor: Send {
    /// The last counter recorded, or `None` if none was ever recorded.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the anchor cannot be read.
    fn load(&self) -> Result<Option<u64>, StoreError>;

    /// Records `counter`, durably, before returning `Ok`. Counters passed are increasing.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the counter could not be recorded durably.
    fn advance(&mut self, counter: u64) -> Result<(), StoreError>;
}

/// No anchor: a whole-database rollback goes unnoticed (single records put back are still
/// detected, by the store's digest). Weaker; for stores whose platform offers nothing better.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoAnchor;

impl RollbackAnchor for NoAnchor {
    fn load(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    fn advance(&mut self, _counter: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The counter as 8 big-endian bytes in a file, replaced atomically (written to `<file>.tmp`,
/// synced, renamed over the file, directory synced). Keep the file outside the database
/// directory; delete it together with the database when the store is deleted on purpose.
#[derive(Debug, Clone)]
pub struct FileAnchor {
    path: PathBuf,
}

impl FileAnchor {
    /// An anchor kept in the file at `path` (created on the first commit).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

fn io(what: &str, e: &std::io::Error) -> StoreError {
    StoreError::Io(format!("rollback anchor: {what}: {e}"))
}

impl RollbackAnchor for FileAnchor {
    fn load(&self) -> Result<Option<u64>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let raw: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    StoreError::Io("rollback anchor: the file is not 8 bytes".to_owned())
                })?;
                Ok(Some(u64::from_be_bytes(raw)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &e)),
        }
    }

    fn advance(&mut self, counter: u64) -> Result<(), StoreError> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = std::fs::File::create(&tmp).map_err(|e| io("create", &e))?;
            f.write_all(&counter.to_be_bytes())
                .map_err(|e| io("write", &e))?;
            f.sync_all().map_err(|e| io("sync", &e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| io("rename", &e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Makes the rename durable where the platform allows syncing a directory.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}
