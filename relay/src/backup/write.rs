//! Writing a backup: the database's trees, then the blob files, then the counts and the digest.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{
    BLOB_FILES, BLOB_PIECE, BackupError, ExportStats, MAGIC, MAX_FIELD, TAG_COLLECTION, TAG_END,
    TAG_ENTRY, TREE, db_err,
};

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
