//! Offline backup and restore of the relay's sled database as one self-checking file.
//!
//! Run these with the relay stopped: an export of a database that is being written is not a
//! snapshot. Blob bytes live in files of their own beside the database (`blobs/`); an export
//! given that directory ([`export_with_blobs`]) writes them too, as the entries of one more
//! collection named [`BLOB_FILES`] (key: blob id (16) ‖ piece index (u32), value: up to
//! [`BLOB_PIECE`] bytes of the file, in order), and an import given it
//! ([`import_with_blobs`]) writes them back as files (0600). The TLS identity (`cert.der`, `key.der`) lives beside the database, not in it, and
//! must be copied separately to keep the fingerprint clients pin.
//!
//! # File format
//!
//! ```text
//! file   = magic record* end digest
//! magic  = "HUSHRELAYBK1"                      12 bytes
//! record = 0x01 field(type) field(name)        starts a collection ("tree"); the pairs that
//!                                              follow, up to the next collection, belong to it
//!        | 0x02 field(key) field(value)        one entry, keys strictly increasing per tree
//! end    = 0x00 u64(collections) u64(entries)  counts of the records before it
//! digest = SHA-256 of every byte before it     32 bytes, then the file ends
//! field  = u32(len) len bytes                  len at most MAX_FIELD
//! ```
//!
//! All integers are big-endian. The content is what sled's `Db::export` yields (every tree, the
//! default one included, with its entries in order); it is read and written here with sled's tree
//! API so that an I/O failure is an error rather than a panic inside sled.
//!
//! An import reads the file twice: first to check its structure, bounds and digest, writing
//! nothing; then to write it. If the file changes between the two reads the second digest check
//! fails; the target was empty, and is then left partly written and must be discarded.

use std::io;
use std::path::PathBuf;

mod read;
mod restore;
mod write;

#[cfg(test)]
mod tests;

pub use restore::{import, import_with_blobs};
pub use write::{export, export_with_blobs};

/// First bytes of every backup file.
pub const MAGIC: &[u8; 12] = b"HUSHRELAYBK1";

/// Largest key, value or name a backup may hold (larger records are refused on export and import).
pub const MAX_FIELD: u32 = 64 * 1024 * 1024;

const TAG_END: u8 = 0;
const TAG_COLLECTION: u8 = 1;
const TAG_ENTRY: u8 = 2;

/// The only collection type sled exports.
const TREE: &[u8] = b"tree";

/// Name of the collection that holds the blob files (not a sled tree).
pub const BLOB_FILES: &[u8] = b"\0blob_files";

/// Bytes of a blob file per backup entry.
pub const BLOB_PIECE: usize = 1 << 20;

/// Entries written to sled per batch on import.
const BATCH_ENTRIES: usize = 1024;

/// Errors of backup and restore.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The database failed.
    #[error("database: {0}")]
    Db(String),
    /// The file does not start with the backup magic.
    #[error("not a hush relay backup")]
    NotABackup,
    /// The file ends early.
    #[error("backup file is truncated")]
    Truncated,
    /// The digest at the end does not match the content.
    #[error("backup file is damaged (digest mismatch)")]
    DigestMismatch,
    /// The file's structure is invalid.
    #[error("backup file is malformed: {0}")]
    Malformed(&'static str),
    /// A field longer than [`MAX_FIELD`].
    #[error("record field of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its length.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// The target database already holds data.
    #[error("the target database is not empty")]
    TargetNotEmpty,
    /// The file changed between the check and the import (the target is now partly written).
    #[error("backup file changed during the import; discard the target database")]
    ChangedDuringImport,
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportStats {
    /// Trees written (the default tree included).
    pub trees: u64,
    /// Entries written.
    pub entries: u64,
    /// Size of the file.
    pub bytes: u64,
    /// Lowercase hex of the file's SHA-256 trailer.
    pub digest: String,
}

/// What an import read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportStats {
    /// Trees imported.
    pub trees: u64,
    /// Entries imported.
    pub entries: u64,
}

fn db_err(e: sled::Error) -> BackupError {
    BackupError::Db(e.to_string())
}
