//! The store's tests: the backend-independent suite of `hush-core`, and what is particular to
//! the encrypted sled format (keys, tampering, migration, reopening).

use std::path::PathBuf;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tempfile::TempDir;

use super::*;

fn at_rest_key(byte: u8) -> Zeroizing<[u8; 32]> {
    Zeroizing::new([byte; 32])
}

fn rng(seed: u64) -> Box<dyn CryptoRng + Send> {
    Box::new(ChaCha20Rng::seed_from_u64(seed))
}

fn fresh() -> (TempDir, SledKv) {
    let dir = TempDir::new().unwrap();
    let store = SledKv::open(dir.path(), at_rest_key(7), rng(1)).unwrap();
    (dir, store)
}

fn reopen(dir: &TempDir, key: u8, seed: u64) -> Result<SledKv, StoreError> {
    // As in `open_raw`: wait (bounded) for a just-dropped store to release sled's lock.
    for _ in 0..500 {
        match SledKv::open(dir.path(), at_rest_key(key), rng(seed)) {
            Err(StoreError::Io(e)) if e.contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
    SledKv::open(dir.path(), at_rest_key(key), rng(seed))
}

fn put(store: &mut SledKv, ns: Namespace, key: &[u8], value: &[u8]) {
    let mut batch = Batch::new();
    batch.put(ns, key, value.to_vec());
    store.commit(batch).unwrap();
}

fn get(store: &SledKv, ns: Namespace, key: &[u8]) -> Option<Vec<u8>> {
    store.get(ns, key).unwrap().map(|v| v.to_vec())
}

/// Opens the database in `dir` raw. A store dropped a moment ago may still hold sled's file
/// lock while its background flusher winds down, so the lock is waited for (bounded).
fn open_raw(dir: &TempDir) -> sled::Db {
    for _ in 0..500 {
        match sled::open(dir.path()) {
            Ok(db) => return db,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    sled::open(dir.path()).unwrap()
}

/// All raw `(physical key, physical value)` pairs of the database in `dir`.
fn raw_entries(dir: &TempDir) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = open_raw(dir);
    db.iter()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

/// Opens the database in `dir` raw, lets `f` mutate it, flushes and closes it.
fn tamper(dir: &TempDir, f: impl FnOnce(&sled::Db)) {
    let db = open_raw(dir);
    f(&db);
    db.flush().unwrap();
}

fn files_under(path: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

hush_core::kv_store_suite!(suite, super::fresh());

#[test]
fn reopen_after_drop_keeps_data() {
    let (dir, mut store) = fresh();
    let mut batch = Batch::new();
    batch
        .put(Namespace::Sessions, b"bob/1", b"ratchet".to_vec())
        .put(Namespace::Identity, b"self", b"identity".to_vec())
        .put(Namespace::Messages, b"m1", vec![9u8; 70_000]);
    store.commit(batch).unwrap();
    // No explicit flush or close: commit returning Ok must be enough.
    drop(store);

    let mut store = reopen(&dir, 7, 2).unwrap();
    assert_eq!(
        get(&store, Namespace::Sessions, b"bob/1"),
        Some(b"ratchet".to_vec())
    );
    assert_eq!(
        get(&store, Namespace::Identity, b"self"),
        Some(b"identity".to_vec())
    );
    assert_eq!(
        get(&store, Namespace::Messages, b"m1"),
        Some(vec![9u8; 70_000])
    );
    assert!(store.scan(Namespace::Meta).unwrap().is_empty());

    let mut batch = Batch::new();
    batch.delete(Namespace::Sessions, b"bob/1");
    store.commit(batch).unwrap();
    drop(store);
    let store = reopen(&dir, 7, 3).unwrap();
    assert_eq!(get(&store, Namespace::Sessions, b"bob/1"), None);
    assert_eq!(
        get(&store, Namespace::Identity, b"self"),
        Some(b"identity".to_vec())
    );
}

#[test]
fn reopen_with_wrong_key_fails() {
    let (dir, mut store) = fresh();
    put(&mut store, Namespace::Sessions, b"k", b"v");
    drop(store);

    assert_eq!(reopen(&dir, 8, 2).err(), Some(StoreError::WrongKey));
    // The failed open changed nothing: the right key still works.
    let store = reopen(&dir, 7, 3).unwrap();
    assert_eq!(get(&store, Namespace::Sessions, b"k"), Some(b"v".to_vec()));
}

#[test]
fn wrong_key_detected_on_store_without_records() {
    let (dir, store) = fresh();
    drop(store);
    assert_eq!(reopen(&dir, 0, 2).err(), Some(StoreError::WrongKey));
}

#[test]
fn missing_key_check_is_corrupt() {
    let (dir, mut store) = fresh();
    put(&mut store, Namespace::Groups, b"g", b"v");
    drop(store);
    tamper(&dir, |db| {
        db.remove(KEY_CHECK_PHYSICAL).unwrap();
    });
    assert!(matches!(
        reopen(&dir, 7, 2),
        Err(StoreError::Corrupt {
            namespace: Namespace::Meta,
            ..
        })
    ));
}

#[test]
fn on_disk_layout() {
    let (dir, mut store) = fresh();
    put(&mut store, Namespace::Sessions, b"abc", b"value");
    put(&mut store, Namespace::Groups, b"", b"");
    drop(store);

    let entries = raw_entries(&dir);
    assert_eq!(entries.len(), 3);
    let check = entries.iter().find(|(k, _)| k.as_slice() == [0u8]).unwrap();
    assert_eq!(
        check.1.len(),
        NONCE_LEN + LEN_PREFIX + KEY_CHECK_LOGICAL.len() + KEY_CHECK_VALUE.len() + TAG_LEN
    );
    let session = entries.iter().find(|(k, _)| k.first() == Some(&5)).unwrap();
    assert_eq!(session.0.len(), PHYSICAL_KEY_LEN);
    assert_eq!(session.1.len(), NONCE_LEN + LEN_PREFIX + 3 + 5 + TAG_LEN);
    let group = entries.iter().find(|(k, _)| k.first() == Some(&9)).unwrap();
    assert_eq!(group.0.len(), PHYSICAL_KEY_LEN);
    assert_eq!(group.1.len(), NONCE_LEN + LEN_PREFIX + TAG_LEN);

    // Recompute the record independently from the documented derivation.
    let hkdf = Hkdf::<Sha256>::new(None, &[7u8; 32]);
    let mut index_key = [0u8; 32];
    let mut value_key = [0u8; 32];
    hkdf.expand(b"Hush-Store-Index-v1", &mut index_key).unwrap();
    hkdf.expand(b"Hush-Store-Value-v1", &mut value_key).unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&index_key).unwrap();
    mac.update(&[5u8]);
    mac.update(b"abc");
    let mut expected_key = vec![5u8];
    expected_key.extend_from_slice(&mac.finalize().into_bytes());
    assert_eq!(session.0, expected_key);

    let cipher = XChaCha20Poly1305::new(&value_key.into());
    let (nonce, ciphertext) = session.1.split_at(NONCE_LEN);
    let plaintext = chacha20poly1305::aead::Aead::decrypt(
        &cipher,
        &XNonce::try_from(nonce).unwrap(),
        chacha20poly1305::aead::Payload {
            msg: ciphertext,
            aad: &expected_key,
        },
    )
    .unwrap();
    assert_eq!(plaintext, b"\x00\x00\x00\x03abcvalue");
}

#[test]
fn tampered_value_is_corrupt() {
    // Flip one bit in the nonce, in the ciphertext body, then in the tag.
    for index_from_end in [TAG_LEN + 20 + NONCE_LEN, TAG_LEN + 3, 1] {
        let (dir, mut store) = fresh();
        put(
            &mut store,
            Namespace::Sessions,
            b"victim",
            b"a secret session state",
        );
        put(&mut store, Namespace::Groups, b"bystander", b"fine");
        drop(store);
        tamper(&dir, |db| {
            let (key, value) = db
                .scan_prefix([Namespace::Sessions.as_byte()])
                .next()
                .unwrap()
                .unwrap();
            let mut value = value.to_vec();
            let at = value.len() - index_from_end;
            value[at] ^= 0x01;
            db.insert(key, value).unwrap();
        });
        let store = reopen(&dir, 7, 2).unwrap();
        assert!(matches!(
            store.get(Namespace::Sessions, b"victim"),
            Err(StoreError::Corrupt {
                namespace: Namespace::Sessions,
                ..
            })
        ));
        assert!(matches!(
            store.scan(Namespace::Sessions),
            Err(StoreError::Corrupt {
                namespace: Namespace::Sessions,
                ..
            })
        ));
        // Other records are unaffected.
        assert_eq!(
            get(&store, Namespace::Groups, b"bystander"),
            Some(b"fine".to_vec())
        );
    }
}

#[test]
fn truncated_value_is_corrupt() {
    let (dir, mut store) = fresh();
    put(&mut store, Namespace::Messages, b"m", b"hello");
    drop(store);
    for keep in [
        0,
        5,
        NONCE_LEN,
        NONCE_LEN + TAG_LEN - 1,
        NONCE_LEN + TAG_LEN,
    ] {
        tamper(&dir, |db| {
            let (key, value) = db
                .scan_prefix([Namespace::Messages.as_byte()])
                .next()
                .unwrap()
                .unwrap();
            let mut value = value.to_vec();
            value.truncate(keep);
            db.insert(key, value).unwrap();
        });
        let store = reopen(&dir, 7, 2).unwrap();
        assert!(matches!(
            store.get(Namespace::Messages, b"m"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.scan(Namespace::Messages),
            Err(StoreError::Corrupt { .. })
        ));
    }
}

#[test]
fn swapped_values_are_corrupt() {
    let (dir, mut store) = fresh();
    put(
        &mut store,
        Namespace::Sessions,
        b"alice",
        b"alice's session",
    );
    put(&mut store, Namespace::Sessions, b"bob", b"bob's session");
    drop(store);
    tamper(&dir, |db| {
        let entries: Vec<(sled::IVec, sled::IVec)> = db
            .scan_prefix([Namespace::Sessions.as_byte()])
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(entries.len(), 2);
        db.insert(&entries[0].0, entries[1].1.clone()).unwrap();
        db.insert(&entries[1].0, entries[0].1.clone()).unwrap();
    });
    let store = reopen(&dir, 7, 2).unwrap();
    for key in [&b"alice"[..], b"bob"] {
        assert!(matches!(
            store.get(Namespace::Sessions, key),
            Err(StoreError::Corrupt {
                namespace: Namespace::Sessions,
                ..
            })
        ));
    }
    assert!(matches!(
        store.scan(Namespace::Sessions),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn value_moved_to_other_namespace_is_corrupt() {
    let (dir, mut store) = fresh();
    put(&mut store, Namespace::Sessions, b"k", b"v");
    drop(store);
    tamper(&dir, |db| {
        let (key, value) = db
            .scan_prefix([Namespace::Sessions.as_byte()])
            .next()
            .unwrap()
            .unwrap();
        let mut moved = key.to_vec();
        moved[0] = Namespace::Groups.as_byte();
        db.insert(moved, value).unwrap();
    });
    let store = reopen(&dir, 7, 2).unwrap();
    assert!(matches!(
        store.scan(Namespace::Groups),
        Err(StoreError::Corrupt {
            namespace: Namespace::Groups,
            ..
        })
    ));
    assert_eq!(get(&store, Namespace::Sessions, b"k"), Some(b"v".to_vec()));
}

#[test]
fn malformed_physical_key_fails_scan() {
    let (dir, mut store) = fresh();
    put(&mut store, Namespace::Identity, b"k", b"v");
    drop(store);
    tamper(&dir, |db| {
        db.insert([Namespace::Identity.as_byte(), 1, 2], vec![0u8; 64])
            .unwrap();
    });
    let store = reopen(&dir, 7, 2).unwrap();
    assert!(matches!(
        store.scan(Namespace::Identity),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(get(&store, Namespace::Identity, b"k"), Some(b"v".to_vec()));
}

#[test]
fn same_value_encrypts_differently() {
    let (dir, mut store) = fresh();
    put(&mut store, Namespace::Messages, b"a", b"identical");
    put(&mut store, Namespace::Messages, b"b", b"identical");
    drop(store);
    let entries: Vec<Vec<u8>> = raw_entries(&dir)
        .into_iter()
        .filter(|(k, _)| k.first() == Some(&Namespace::Messages.as_byte()))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(entries.len(), 2);
    assert_ne!(entries[0][..NONCE_LEN], entries[1][..NONCE_LEN]);
    assert_ne!(entries[0][NONCE_LEN..], entries[1][NONCE_LEN..]);
}

#[test]
fn disk_holds_no_plaintext() {
    let key_marker = b"MARKER-KEY-carol@example.org-device-42";
    let value_marker = b"MARKER-VALUE-the-quick-brown-fox-jumps";
    let (dir, mut store) = fresh();
    let mut value = value_marker.to_vec();
    value.extend_from_slice(&[0u8; 100]);
    let mut batch = Batch::new();
    batch
        .put(Namespace::DeviceLists, key_marker, value.clone())
        .put(Namespace::Meta, key_marker, value);
    store.commit(batch).unwrap();
    drop(store);

    let files = files_under(dir.path());
    assert!(!files.is_empty());
    let mut total = 0;
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        total += bytes.len();
        for needle in [&key_marker[..], &value_marker[..], b"MARKER", b"key-check"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} leaks {}",
                file.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    assert!(total > 0);
    // The data really is there.
    let store = reopen(&dir, 7, 2).unwrap();
    assert!(
        get(&store, Namespace::DeviceLists, key_marker)
            .unwrap()
            .starts_with(value_marker)
    );
    drop(store);

    // Control: the same search does find a marker that sled stores in clear.
    tamper(&dir, |db| {
        db.insert(b"raw", &value_marker[..]).unwrap();
    });
    let found = files_under(dir.path()).into_iter().any(|file| {
        std::fs::read(file)
            .unwrap()
            .windows(value_marker.len())
            .any(|w| w == value_marker)
    });
    assert!(found, "the plaintext search cannot see sled's files");
}

#[test]
fn second_handle_on_same_directory_is_refused() {
    let (dir, _store) = fresh();
    assert!(matches!(reopen(&dir, 7, 2), Err(StoreError::Io(_))));
}

/// Opens `dir` with label `label` (waiting, bounded, for a just-dropped handle's lock).
fn open_labelled_retrying(dir: &TempDir, label: &[u8], seed: u64) -> Result<SledKv, StoreError> {
    for _ in 0..500 {
        match SledKv::open_labelled(dir.path(), at_rest_key(7), label, rng(seed)) {
            Err(StoreError::Io(e)) if e.contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
    SledKv::open_labelled(dir.path(), at_rest_key(7), label, rng(seed))
}

#[test]
fn stores_with_different_labels_do_not_share_subkeys() {
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let mut db = SledKv::open_labelled(a.path(), at_rest_key(7), b"/db", rng(1)).unwrap();
    let history = SledKv::open_labelled(b.path(), at_rest_key(7), b"/history", rng(2)).unwrap();
    put(&mut db, Namespace::Messages, b"k", b"secret");
    // Same logical key, other store: another physical key and another value key.
    assert_ne!(
        db.physical_key(Namespace::Messages, b"k").unwrap(),
        history.physical_key(Namespace::Messages, b"k").unwrap()
    );
    let physical = db.physical_key(Namespace::Messages, b"k").unwrap();
    let sealed = db.db().unwrap().get(&physical).unwrap().unwrap();
    assert!(
        history
            .open_record(Namespace::Messages, &physical, &sealed)
            .is_err()
    );
    // And a store is refused under another store's label.
    drop(history);
    drop(db);
    assert!(matches!(
        open_labelled_retrying(&a, b"/history", 3),
        Err(StoreError::WrongKey)
    ));
}

#[test]
fn a_store_written_before_labels_is_migrated_once_and_keeps_its_records() {
    let (dir, mut store) = fresh();
    let mut batch = Batch::new();
    batch
        .put(Namespace::Sessions, b"bob/1", b"ratchet".to_vec())
        .put(Namespace::Identity, b"self", b"identity".to_vec())
        .put(Namespace::Meta, b"counter", b"7".to_vec());
    store.commit(batch).unwrap();
    let old_entries = raw_entries_of(&store);
    drop(store);

    let store = open_labelled_retrying(&dir, b"/db", 2).unwrap();
    assert_eq!(
        get(&store, Namespace::Sessions, b"bob/1"),
        Some(b"ratchet".to_vec())
    );
    assert_eq!(
        get(&store, Namespace::Identity, b"self"),
        Some(b"identity".to_vec())
    );
    assert_eq!(
        get(&store, Namespace::Meta, b"counter"),
        Some(b"7".to_vec())
    );
    // Every old physical entry is gone (the key-check record was rewritten).
    let new_entries = raw_entries_of(&store);
    assert_eq!(new_entries.len(), old_entries.len());
    for (k, v) in &old_entries {
        assert!(!new_entries.iter().any(|(k2, v2)| k2 == k && v2 == v));
    }
    drop(store);
    // Migrated: the unlabelled keys no longer open it; the label does, without migrating.
    assert!(matches!(reopen(&dir, 7, 3), Err(StoreError::WrongKey)));
    let store = open_labelled_retrying(&dir, b"/db", 4).unwrap();
    assert_eq!(raw_entries_of(&store), new_entries);
    drop(store);
    // A wrong key is still a wrong key, not a migration.
    for _ in 0..500 {
        match SledKv::open_labelled(dir.path(), at_rest_key(8), b"/db", rng(5)) {
            Err(StoreError::Io(e)) if e.contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => {
                assert!(matches!(other, Err(StoreError::WrongKey)));
                break;
            }
        }
    }
}

fn raw_entries_of(store: &SledKv) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .db()
        .unwrap()
        .iter()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}
