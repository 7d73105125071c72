use super::read::{Item, read_backup};
use super::restore::is_empty;
use super::*;
use std::fs;
use std::path::Path;

fn open(dir: &Path) -> sled::Db {
    crate::store::sled_store::open_test_db(dir)
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
    // One handle for both imports: sled releases its file lock only after
    // its background flusher has stopped, so reopening at once may race it.
    let target = open(dst.path());
    assert!(matches!(
        import(&path, &target),
        Err(BackupError::TooLarge { .. })
    ));
    assert!(is_empty(&target).unwrap());
    fs::write(&path, b"SOMETHINGELSE and more").unwrap();
    assert!(matches!(
        import(&path, &target),
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
