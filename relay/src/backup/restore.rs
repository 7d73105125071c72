//! Restoring a backup: check the whole file, then write it into an empty database and the blob
//! directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::read::{Item, read_backup};
use super::{BATCH_ENTRIES, BLOB_FILES, BackupError, ImportStats, db_err};

/// structure, bounds, digest) without writing; flushes before returning.
pub fn import(from: &Path, db: &sled::Db) -> Result<ImportStats, BackupError> {
    import_with_blobs(from, db, None)
}

/// As [`import`], writing the blob files the backup holds into `blobs` (created 0700 if missing);
/// without it they are skipped.
pub fn import_with_blobs(
    from: &Path,
    db: &sled::Db,
    blobs: Option<&Path>,
) -> Result<ImportStats, BackupError> {
    let counted = read_backup(from, &mut |_| Ok(()))?;
    if !is_empty(db)? {
        return Err(BackupError::TargetNotEmpty);
    }
    if let Some(dir) = blobs {
        crate::create_private_dir(dir).map_err(|source| BackupError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut writer = DbWriter {
        db,
        tree: None,
        batch: sled::Batch::default(),
        pending: 0,
        blobs,
        in_blob_files: false,
        blob_file: None,
    };
    let written = read_backup(from, &mut |item| writer.push(item)).map_err(|e| match e {
        BackupError::DigestMismatch
        | BackupError::Truncated
        | BackupError::Malformed(_)
        | BackupError::NotABackup
        | BackupError::TooLarge { .. } => BackupError::ChangedDuringImport,
        other => other,
    })?;
    writer.finish()?;
    if let Some(dir) = blobs {
        #[cfg(unix)]
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| BackupError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    if written != counted {
        return Err(BackupError::ChangedDuringImport);
    }
    db.flush().map_err(db_err)?;
    Ok(written)
}

pub(super) fn is_empty(db: &sled::Db) -> Result<bool, BackupError> {
    for name in db.tree_names() {
        if db
            .open_tree(&name)
            .map_err(db_err)?
            .first()
            .map_err(db_err)?
            .is_some()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

struct DbWriter<'a> {
    db: &'a sled::Db,
    tree: Option<sled::Tree>,
    batch: sled::Batch,
    pending: usize,
    /// Where blob files go (`None`: skipped).
    blobs: Option<&'a Path>,
    /// The current collection is [`BLOB_FILES`].
    in_blob_files: bool,
    /// The blob file being written: its id, path and handle.
    blob_file: Option<([u8; 16], PathBuf, File)>,
}

impl DbWriter<'_> {
    fn push(&mut self, item: Item) -> Result<(), BackupError> {
        match item {
            Item::Tree(name) => {
                self.finish()?;
                self.in_blob_files = name == BLOB_FILES;
                if !self.in_blob_files {
                    self.tree = Some(self.db.open_tree(name).map_err(db_err)?);
                }
            }
            Item::Entry(k, v) if self.in_blob_files => self.blob_piece(&k, &v)?,
            Item::Entry(k, v) => {
                self.batch.insert(k, v);
                self.pending += 1;
                if self.pending >= BATCH_ENTRIES {
                    self.apply()?;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self) -> Result<(), BackupError> {
        let batch = std::mem::take(&mut self.batch);
        self.pending = 0;
        match &self.tree {
            Some(t) => t.apply_batch(batch).map_err(db_err),
            None => Err(BackupError::Malformed("entry before any collection")),
        }
    }

    fn finish(&mut self) -> Result<(), BackupError> {
        if self.pending > 0 {
            self.apply()?;
        }
        self.close_blob_file()
    }

    /// Appends one piece of a blob file (pieces come in key order: by id, then index).
    fn blob_piece(&mut self, key: &[u8], value: &[u8]) -> Result<(), BackupError> {
        let Some(dir) = self.blobs else {
            return Ok(());
        };
        let id = key
            .get(..16)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .filter(|_| key.len() == 20)
            .ok_or(BackupError::Malformed("blob file entry key"))?;
        if self.blob_file.as_ref().is_none_or(|(cur, _, _)| *cur != id) {
            self.close_blob_file()?;
            let path = dir.join(hex::encode(id));
            let mut opts = OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let file = opts.open(&path).map_err(|source| BackupError::Io {
                path: path.clone(),
                source,
            })?;
            self.blob_file = Some((id, path, file));
        }
        if let Some((_, path, file)) = self.blob_file.as_mut() {
            file.write_all(value).map_err(|source| BackupError::Io {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn close_blob_file(&mut self) -> Result<(), BackupError> {
        if let Some((_, path, file)) = self.blob_file.take() {
            file.sync_all()
                .map_err(|source| BackupError::Io { path, source })?;
        }
        Ok(())
    }
}
