//! Reading a backup: the structure, the bounds and the digest, item by item.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{BackupError, ImportStats, MAGIC, MAX_FIELD, TAG_COLLECTION, TAG_END, TAG_ENTRY, TREE};

/// One thing read from a backup.
pub(super) enum Item {
    Tree(Vec<u8>),
    Entry(Vec<u8>, Vec<u8>),
}

/// Parses and checks the whole file, handing each item to `sink` as it is read.
pub(super) fn read_backup(
    path: &Path,
    sink: &mut dyn FnMut(Item) -> Result<(), BackupError>,
) -> Result<ImportStats, BackupError> {
    let file = File::open(path).map_err(|source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut r = HashingReader {
        inner: BufReader::new(file),
        hasher: Sha256::new(),
        path,
    };
    let mut magic = [0u8; 12];
    r.exact(&mut magic).map_err(|e| match e {
        BackupError::Truncated => BackupError::NotABackup,
        other => other,
    })?;
    if &magic != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let mut names = BTreeSet::new();
    let mut last_key: Option<Vec<u8>> = None;
    let mut in_tree = false;
    let (mut trees, mut entries) = (0u64, 0u64);
    loop {
        match r.byte()? {
            TAG_COLLECTION => {
                if r.field()? != TREE {
                    return Err(BackupError::Malformed("unknown collection type"));
                }
                let name = r.field()?;
                if !names.insert(name.clone()) {
                    return Err(BackupError::Malformed("collection appears twice"));
                }
                in_tree = true;
                last_key = None;
                trees += 1;
                sink(Item::Tree(name))?;
            }
            TAG_ENTRY => {
                if !in_tree {
                    return Err(BackupError::Malformed("entry before any collection"));
                }
                let key = r.field()?;
                let value = r.field()?;
                if last_key.as_ref().is_some_and(|prev| *prev >= key) {
                    return Err(BackupError::Malformed("keys out of order"));
                }
                last_key = Some(key.clone());
                entries += 1;
                sink(Item::Entry(key, value))?;
            }
            TAG_END => break,
            _ => return Err(BackupError::Malformed("unknown record tag")),
        }
    }
    if r.u64()? != trees || r.u64()? != entries {
        return Err(BackupError::Malformed("record counts do not match"));
    }
    let computed = std::mem::take(&mut r.hasher).finalize();
    let mut stored = [0u8; 32];
    r.exact(&mut stored)?;
    if computed.as_slice() != stored {
        return Err(BackupError::DigestMismatch);
    }
    let mut extra = [0u8; 1];
    if r.raw_read(&mut extra)? != 0 {
        return Err(BackupError::Malformed("data after the digest"));
    }
    Ok(ImportStats { trees, entries })
}

struct HashingReader<'p, R> {
    inner: R,
    hasher: Sha256,
    path: &'p Path,
}

impl<R: Read> HashingReader<'_, R> {
    fn io(&self, source: io::Error) -> BackupError {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            BackupError::Truncated
        } else {
            BackupError::Io {
                path: self.path.to_path_buf(),
                source,
            }
        }
    }

    fn raw_read(&mut self, buf: &mut [u8]) -> Result<usize, BackupError> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.inner.read_exact(buf).map_err(|e| self.io(e))?;
        self.hasher.update(&*buf);
        Ok(())
    }

    fn byte(&mut self) -> Result<u8, BackupError> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        let [b] = b;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, BackupError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    /// A length-prefixed field; memory grows only as bytes actually arrive.
    fn field(&mut self) -> Result<Vec<u8>, BackupError> {
        let mut len = [0u8; 4];
        self.exact(&mut len)?;
        let len = u32::from_be_bytes(len);
        if len > MAX_FIELD {
            return Err(BackupError::TooLarge {
                len: u64::from(len),
                max: MAX_FIELD,
            });
        }
        let mut buf = Vec::new();
        let got = (&mut self.inner)
            .take(u64::from(len))
            .read_to_end(&mut buf)
            .map_err(|e| self.io(e))?;
        if got as u64 != u64::from(len) {
            return Err(BackupError::Truncated);
        }
        self.hasher.update(&buf);
        Ok(buf)
    }
}
