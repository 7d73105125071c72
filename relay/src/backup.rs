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

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

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

/// Writes every tree of `db` to `out` (through a temporary file beside it, synced and renamed;
/// mode 0600 on unix, as it holds who-messages-whom metadata).
pub fn export(db: &sled::Db, out: &Path) -> Result<ExportStats, BackupError> {
    export_with_blobs(db, None, out)
}

/// As [`export`], also writing the blob files found in `blobs` (complete blobs only: the files
/// named by 32 hex digits).
pub fn export_with_blobs(
    db: &sled::Db,
    blobs: Option<&Path>,
    out: &Path,
) -> Result<ExportStats, BackupError> {
    let mut tmp_name = out.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = out.with_file_name(tmp_name);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Io { path, source }
    };
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts.open(&tmp).map_err(io(&tmp))?;
    let result = write_all(db, blobs, file, &tmp).and_then(|stats| {
        fs::rename(&tmp, out).map_err(io(out))?;
        #[cfg(unix)]
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(stats)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_all(
    db: &sled::Db,
    blobs: Option<&Path>,
    file: File,
    path: &Path,
) -> Result<ExportStats, BackupError> {
    let io = |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut w = HashingWriter {
        inner: BufWriter::new(file),
        hasher: Sha256::new(),
        written: 0,
    };
    let (mut trees, mut entries) = (0u64, 0u64);
    w.write_all(MAGIC).map_err(io)?;
    for name in db.tree_names() {
        let tree = db.open_tree(&name).map_err(db_err)?;
        w.write_all(&[TAG_COLLECTION]).map_err(io)?;
        write_field(&mut w, TREE, path)?;
        write_field(&mut w, &name, path)?;
        trees += 1;
        for kv in tree.iter() {
            let (k, v) = kv.map_err(db_err)?;
            w.write_all(&[TAG_ENTRY]).map_err(io)?;
            write_field(&mut w, &k, path)?;
            write_field(&mut w, &v, path)?;
            entries += 1;
        }
    }
    if let Some(dir) = blobs {
        w.write_all(&[TAG_COLLECTION]).map_err(io)?;
        write_field(&mut w, TREE, path)?;
        write_field(&mut w, BLOB_FILES, path)?;
        trees += 1;
        entries += write_blob_files(&mut w, dir, path)?;
    }
    w.write_all(&[TAG_END]).map_err(io)?;
    w.write_all(&trees.to_be_bytes()).map_err(io)?;
    w.write_all(&entries.to_be_bytes()).map_err(io)?;
    let HashingWriter {
        mut inner,
        hasher,
        written,
    } = w;
    let digest = hasher.finalize();
    inner.write_all(&digest).map_err(io)?;
    let file = inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(ExportStats {
        trees,
        entries,
        bytes: written + digest.len() as u64,
        digest: hex::encode(digest),
    })
}

/// The ids of the complete blob files in `dir`, in order.
fn blob_ids(dir: &Path) -> Result<Vec<[u8; 16]>, BackupError> {
    let io = |source| BackupError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut ids = Vec::new();
    let listing = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(io(e)),
    };
    for entry in listing {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let id = name
            .to_str()
            .and_then(|n| hex::decode(n).ok())
            .and_then(|b| <[u8; 16]>::try_from(b).ok());
        if let Some(id) = id
            && entry.file_type().map_err(io)?.is_file()
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Writes every complete blob file of `dir` as entries; returns how many.
fn write_blob_files(w: &mut impl Write, dir: &Path, path: &Path) -> Result<u64, BackupError> {
    let mut entries = 0u64;
    let mut piece = vec![0u8; BLOB_PIECE];
    for id in blob_ids(dir)? {
        let file_path = dir.join(hex::encode(id));
        let read_err = |source| BackupError::Io {
            path: file_path.clone(),
            source,
        };
        let mut f = File::open(&file_path).map_err(read_err)?;
        let mut index = 0u32;
        loop {
            let mut got = 0;
            while got < piece.len() {
                let rest = piece.get_mut(got..).unwrap_or_default();
                match f.read(rest) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(read_err(e)),
                }
            }
            if got == 0 {
                break;
            }
            let mut key = id.to_vec();
            key.extend_from_slice(&index.to_be_bytes());
            w.write_all(&[TAG_ENTRY])
                .map_err(|source| BackupError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
            write_field(w, &key, path)?;
            write_field(w, piece.get(..got).unwrap_or_default(), path)?;
            entries += 1;
            index = index
                .checked_add(1)
                .ok_or(BackupError::Malformed("blob file too large"))?;
        }
    }
    Ok(entries)
}

/// Writes a length-prefixed field, refusing one over [`MAX_FIELD`].
fn write_field(w: &mut impl Write, bytes: &[u8], path: &Path) -> Result<(), BackupError> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|len| *len <= MAX_FIELD)
        .ok_or(BackupError::TooLarge {
            len: bytes.len() as u64,
            max: MAX_FIELD,
        })?;
    w.write_all(&len.to_be_bytes())
        .and_then(|()| w.write_all(bytes))
        .map_err(|source| BackupError::Io {
            path: path.to_path_buf(),
            source,
        })
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let done = buf.get(..n).unwrap_or(buf);
        self.hasher.update(done);
        self.written += done.len() as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Restores a backup into the empty database `db`, after checking the whole file (magic,
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

fn is_empty(db: &sled::Db) -> Result<bool, BackupError> {
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

/// One thing read from a backup.
enum Item {
    Tree(Vec<u8>),
    Entry(Vec<u8>, Vec<u8>),
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

/// Parses and checks the whole file, handing each item to `sink` as it is read.
fn read_backup(
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

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;

    fn open(dir: &Path) -> sled::Db {
        sled::Config::new().path(dir).open().unwrap()
    }

    fn filled(dir: &Path) -> sled::Db {
        let db = open(dir);
        db.insert(b"default-key", b"default-value").unwrap();
        let mail = db.open_tree("mail").unwrap();
        for i in 0u32..3000 {
            mail.insert(i.to_be_bytes(), vec![(i % 256) as u8; (i % 300) as usize])
                .unwrap();
        }
        db.open_tree("lists")
            .unwrap()
            .insert([1u8; 32], &b"v1"[..])
            .unwrap();
        db.open_tree("empty").unwrap();
        db.open_tree("big")
            .unwrap()
            .insert(b"chunk", vec![7u8; 200 * 1024])
            .unwrap();
        db
    }

    type Collection = (Vec<u8>, Vec<u8>, Vec<Vec<Vec<u8>>>);
    type Dump = Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>;

    fn dump(db: &sled::Db) -> Dump {
        let mut names = db.tree_names();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let t = db.open_tree(&n).unwrap();
                let kvs = t
                    .iter()
                    .map(|kv| {
                        let (k, v) = kv.unwrap();
                        (k.to_vec(), v.to_vec())
                    })
                    .collect();
                (n.to_vec(), kvs)
            })
            .collect()
    }

    #[test]
    fn export_then_import_gives_identical_trees() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let out = files.path().join("relay.bk");
        let db = filled(src.path());
        let stats = export(&db, &out).unwrap();
        assert_eq!(stats.trees, 5, "default, mail, lists, empty, big");
        assert_eq!(stats.entries, 3003);
        assert_eq!(stats.bytes, fs::metadata(&out).unwrap().len());
        assert_eq!(stats.digest.len(), 64);
        assert!(!files.path().join("relay.bk.tmp").exists());
        let raw = fs::read(&out).unwrap();
        assert!(raw.starts_with(MAGIC));
        assert_eq!(hex::encode(&raw[raw.len() - 32..]), stats.digest);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&out).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }

        let target = open(dst.path());
        let got = import(&out, &target).unwrap();
        assert_eq!((got.trees, got.entries), (stats.trees, stats.entries));
        assert_eq!(dump(&target), dump(&db));
        drop(target);
        // Durable: still there after reopening.
        assert_eq!(dump(&open(dst.path())), dump(&db));
    }

    #[test]
    fn the_file_holds_what_sled_exports() {
        let src = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let out = files.path().join("relay.bk");
        let db = filled(src.path());
        export(&db, &out).unwrap();
        let mut from_sled: Vec<Collection> = db
            .export()
            .into_iter()
            .map(|(ty, name, items)| (ty, name, items.collect()))
            .collect();
        from_sled.sort();
        let mut from_file: Vec<Collection> = Vec::new();
        read_backup(&out, &mut |item| {
            match item {
                Item::Tree(name) => from_file.push((TREE.to_vec(), name, Vec::new())),
                Item::Entry(k, v) => from_file.last_mut().unwrap().2.push(vec![k, v]),
            }
            Ok(())
        })
        .unwrap();
        from_file.sort();
        assert_eq!(from_file, from_sled);
    }

    #[test]
    fn a_flipped_byte_is_rejected_and_nothing_is_written() {
        let src = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let out = files.path().join("relay.bk");
        let db = filled(src.path());
        export(&db, &out).unwrap();
        let good = fs::read(&out).unwrap();
        let bad_path = files.path().join("bad.bk");
        let dst = tempfile::tempdir().unwrap();
        let target = open(dst.path());
        // Every position in the header and trailer, and a stride through the middle.
        let positions: Vec<usize> = (0..64)
            .chain((64..good.len()).step_by(997))
            .chain(good.len() - 64..good.len())
            .collect();
        for i in positions {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            fs::write(&bad_path, &bad).unwrap();
            assert!(import(&bad_path, &target).is_err(), "flip at {i}");
        }
        // A flip inside a value is caught by the digest.
        let mut bad = good.clone();
        let at = good
            .windows(13)
            .position(|w| w == b"default-value")
            .unwrap()
            + 3;
        bad[at] ^= 0x01;
        fs::write(&bad_path, &bad).unwrap();
        assert!(matches!(
            import(&bad_path, &target),
            Err(BackupError::DigestMismatch)
        ));
        assert!(is_empty(&target).unwrap(), "nothing written");
    }

    #[test]
    fn a_truncated_file_is_rejected() {
        let src = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let out = files.path().join("relay.bk");
        export(&filled(src.path()), &out).unwrap();
        let good = fs::read(&out).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let target = open(dst.path());
        let cut = files.path().join("cut.bk");
        for len in [
            0,
            5,
            12,
            13,
            100,
            good.len() / 2,
            good.len() - 33,
            good.len() - 1,
        ] {
            fs::write(&cut, &good[..len]).unwrap();
            let err = import(&cut, &target).unwrap_err();
            assert!(
                matches!(err, BackupError::Truncated | BackupError::NotABackup),
                "cut at {len}: {err:?}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        fs::write(&cut, &longer).unwrap();
        assert!(matches!(
            import(&cut, &target),
            Err(BackupError::Malformed(_))
        ));
        assert!(is_empty(&target).unwrap());
    }

    #[test]
    fn oversized_lengths_are_typed_errors() {
        let files = tempfile::tempdir().unwrap();
        let path = files.path().join("huge.bk");
        let mut f = MAGIC.to_vec();
        f.push(TAG_COLLECTION);
        f.extend_from_slice(&u32::MAX.to_be_bytes());
        fs::write(&path, &f).unwrap();
        let dst = tempfile::tempdir().unwrap();
        assert!(matches!(
            import(&path, &open(dst.path())),
            Err(BackupError::TooLarge { .. })
        ));
        fs::write(&path, b"SOMETHINGELSE and more").unwrap();
        assert!(matches!(
            import(&path, &open(dst.path())),
            Err(BackupError::NotABackup)
        ));
    }

    #[test]
    fn blob_files_travel_with_the_backup() {
        let src = tempfile::tempdir().unwrap();
        let blobs = src.path().join("blobs");
        fs::create_dir(&blobs).unwrap();
        let big: Vec<u8> = (0..BLOB_PIECE * 2 + 5).map(|i| (i % 251) as u8).collect();
        fs::write(blobs.join(hex::encode([2u8; 16])), &big).unwrap();
        fs::write(blobs.join(hex::encode([1u8; 16])), b"small").unwrap();
        // An upload in progress and a stray file are not part of it.
        fs::write(blobs.join(format!("{}.part", hex::encode([3u8; 16]))), b"x").unwrap();
        fs::write(blobs.join("stray"), b"y").unwrap();
        let db = filled(&src.path().join("db"));
        let files = tempfile::tempdir().unwrap();
        let out = files.path().join("relay.bk");
        let stats = export_with_blobs(&db, Some(&blobs), &out).unwrap();
        assert_eq!(stats.trees, 6);
        assert_eq!(stats.entries, 3003 + 1 + 3);

        let dst = tempfile::tempdir().unwrap();
        let target = open(&dst.path().join("db"));
        let back = dst.path().join("blobs");
        let got = import_with_blobs(&out, &target, Some(&back)).unwrap();
        assert_eq!((got.trees, got.entries), (stats.trees, stats.entries));
        assert_eq!(
            dump(&target),
            dump(&db),
            "no tree is made for the blob files"
        );
        let mut names: Vec<String> = fs::read_dir(&back)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec![hex::encode([1u8; 16]), hex::encode([2u8; 16])]);
        assert_eq!(fs::read(back.join(hex::encode([2u8; 16]))).unwrap(), big);
        assert_eq!(
            fs::read(back.join(hex::encode([1u8; 16]))).unwrap(),
            b"small"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(back.join(hex::encode([2u8; 16])))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn import_into_a_non_empty_db_is_refused() {
        let src = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let out = files.path().join("relay.bk");
        export(&filled(src.path()), &out).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let target = open(dst.path());
        target
            .open_tree("other")
            .unwrap()
            .insert(b"k", b"v")
            .unwrap();
        assert!(matches!(
            import(&out, &target),
            Err(BackupError::TargetNotEmpty)
        ));
        assert_eq!(target.open_tree("mail").unwrap().len(), 0);
        // Empty trees alone do not count as data.
        let dst2 = tempfile::tempdir().unwrap();
        let target2 = open(dst2.path());
        target2.open_tree("mail").unwrap();
        assert!(import(&out, &target2).is_ok());
    }
}
