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
    assert_eq!(entries.len(), 4);
    let check = entries.iter().find(|(k, _)| k.as_slice() == [0u8]).unwrap();
    assert_eq!(
        check.1.len(),
        NONCE_LEN + LEN_PREFIX + KEY_CHECK_LOGICAL.len() + KEY_CHECK_VALUE.len() + TAG_LEN
    );
    // The new store's state is commit 1; the two puts are commits 2 and 3.
    let state = entries
        .iter()
        .find(|(k, _)| k.as_slice() == [0u8, 1])
        .unwrap();
    assert_eq!(
        state.1.len(),
        VERSION_LEN + NONCE_LEN + LEN_PREFIX + STORE_STATE_LOGICAL.len() + MAC_LEN + TAG_LEN
    );
    assert_eq!(state.1[..VERSION_LEN], 3u64.to_be_bytes());
    let session = entries.iter().find(|(k, _)| k.first() == Some(&5)).unwrap();
    assert_eq!(session.0.len(), PHYSICAL_KEY_LEN);
    assert_eq!(
        session.1.len(),
        VERSION_LEN + NONCE_LEN + LEN_PREFIX + 3 + 5 + TAG_LEN
    );
    assert_eq!(session.1[..VERSION_LEN], 2u64.to_be_bytes());
    let group = entries.iter().find(|(k, _)| k.first() == Some(&9)).unwrap();
    assert_eq!(group.0.len(), PHYSICAL_KEY_LEN);
    assert_eq!(
        group.1.len(),
        VERSION_LEN + NONCE_LEN + LEN_PREFIX + TAG_LEN
    );
    assert_eq!(group.1[..VERSION_LEN], 3u64.to_be_bytes());

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
    let open = |physical: &[u8], stored: &[u8]| {
        let (version, rest) = stored.split_at(VERSION_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        chacha20poly1305::aead::Aead::decrypt(
            &cipher,
            &XNonce::try_from(nonce).unwrap(),
            chacha20poly1305::aead::Payload {
                msg: ciphertext,
                aad: &[physical, version].concat(),
            },
        )
        .unwrap()
    };
    assert_eq!(open(&expected_key, &session.1), b"\x00\x00\x00\x03abcvalue");

    // The state record holds the XOR of HMAC(state_key, physical key || u64be(version)) over
    // the two records.
    let mut state_key = [0u8; 32];
    hkdf.expand(b"Hush-Store-State-v1", &mut state_key).unwrap();
    let mut digest = [0u8; MAC_LEN];
    for (physical, stored) in [session, group] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&state_key).unwrap();
        mac.update(physical);
        mac.update(&stored[..VERSION_LEN]);
        for (d, m) in digest.iter_mut().zip(mac.finalize().into_bytes()) {
            *d ^= m;
        }
    }
    let mut expected_state = b"\x00\x00\x00\x0bstore-state".to_vec();
    expected_state.extend_from_slice(&digest);
    assert_eq!(open(&state.0, &state.1), expected_state);
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
        VERSION_LEN,
        VERSION_LEN + 5,
        VERSION_LEN + NONCE_LEN,
        VERSION_LEN + NONCE_LEN + TAG_LEN - 1,
        VERSION_LEN + NONCE_LEN + TAG_LEN,
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
    // Shorter than its version: the store's digest cannot be checked, and the open fails.
    tamper(&dir, |db| {
        let (key, _) = db
            .scan_prefix([Namespace::Messages.as_byte()])
            .next()
            .unwrap()
            .unwrap();
        db.insert(key, vec![0u8; VERSION_LEN - 1]).unwrap();
    });
    assert!(matches!(
        reopen(&dir, 7, 3),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn swapped_values_are_corrupt() {
    // Written in one commit, so both records have the same version and the store's digest does
    // not see the swap: each record's authentication does.
    let (dir, mut store) = fresh();
    let mut batch = Batch::new();
    batch
        .put(Namespace::Sessions, b"alice", b"alice's session".to_vec())
        .put(Namespace::Sessions, b"bob", b"bob's session".to_vec());
    store.commit(batch).unwrap();
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
    // Copied under another namespace behind the handle's back: it does not authenticate there.
    let db = store.db().unwrap().clone();
    let (key, value) = db
        .scan_prefix([Namespace::Sessions.as_byte()])
        .next()
        .unwrap()
        .unwrap();
    let mut moved = key.to_vec();
    moved[0] = Namespace::Groups.as_byte();
    db.insert(moved, value).unwrap();
    db.flush().unwrap();
    drop(db);
    assert!(matches!(
        store.scan(Namespace::Groups),
        Err(StoreError::Corrupt {
            namespace: Namespace::Groups,
            ..
        })
    ));
    assert_eq!(get(&store, Namespace::Sessions, b"k"), Some(b"v".to_vec()));
    // And on the next open the store's digest sees a record that it never wrote.
    drop(store);
    assert!(matches!(reopen(&dir, 7, 2), Err(StoreError::RolledBack(_))));
}

#[test]
fn malformed_physical_key_fails_scan() {
    let (dir, mut store) = fresh();
    put(&mut store, Namespace::Identity, b"k", b"v");
    let db = store.db().unwrap().clone();
    db.insert([Namespace::Identity.as_byte(), 1, 2], vec![0u8; 64])
        .unwrap();
    db.flush().unwrap();
    drop(db);
    assert!(matches!(
        store.scan(Namespace::Identity),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(get(&store, Namespace::Identity, b"k"), Some(b"v".to_vec()));
    drop(store);
    assert!(matches!(reopen(&dir, 7, 2), Err(StoreError::RolledBack(_))));
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
    let nonce = VERSION_LEN..VERSION_LEN + NONCE_LEN;
    assert_ne!(entries[0][nonce.clone()], entries[1][nonce]);
    assert_ne!(
        entries[0][VERSION_LEN + NONCE_LEN..],
        entries[1][VERSION_LEN + NONCE_LEN..]
    );
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
            .open_record(Namespace::Messages, &physical, &sealed, true)
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
    let (dir, store) = legacy_store(&[
        (Namespace::Sessions, b"bob/1", b"ratchet"),
        (Namespace::Identity, b"self", b"identity"),
        (Namespace::Meta, b"counter", b"7"),
    ]);
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
    // Every old physical entry is gone (the key-check record was rewritten); the state record
    // was added.
    let new_entries = raw_entries_of(&store);
    assert_eq!(new_entries.len(), old_entries.len() + 1);
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

/// A store in the format from before versioned records (no version prefix, the physical key
/// alone as AAD, no state record), under the empty label, holding `records`.
fn legacy_store(records: &[(Namespace, &[u8], &[u8])]) -> (TempDir, SledKv) {
    let (dir, mut store) = fresh();
    let db = store.db().unwrap().clone();
    db.remove(STATE_PHYSICAL).unwrap();
    for (ns, logical, value) in records {
        let physical = store.physical_key(*ns, logical).unwrap();
        let record = store.seal(&physical, None, logical, value).unwrap();
        db.insert(physical, record).unwrap();
    }
    db.flush().unwrap();
    (dir, store)
}

#[test]
fn a_store_written_before_versioned_records_is_upgraded_in_place() {
    let (dir, store) = legacy_store(&[
        (Namespace::Sessions, b"bob/1", b"ratchet"),
        (Namespace::Meta, b"counter", b"7"),
    ]);
    drop(store);
    let mut store = reopen(&dir, 7, 2).unwrap();
    assert_eq!(
        get(&store, Namespace::Sessions, b"bob/1"),
        Some(b"ratchet".to_vec())
    );
    assert_eq!(store.counter, 1);
    put(&mut store, Namespace::Sessions, b"bob/1", b"ratchet 2");
    let upgraded = raw_entries_of(&store);
    drop(store);
    // Upgraded once: the next open reads it as it is.
    let store = reopen(&dir, 7, 3).unwrap();
    assert_eq!(raw_entries_of(&store), upgraded);
    assert_eq!(
        get(&store, Namespace::Sessions, b"bob/1"),
        Some(b"ratchet 2".to_vec())
    );
    assert_eq!(
        get(&store, Namespace::Meta, b"counter"),
        Some(b"7".to_vec())
    );
}

/// The stored bytes of the record `(ns, key)`.
fn raw_record(store: &SledKv, ns: Namespace, key: &[u8]) -> Vec<u8> {
    let physical = store.physical_key(ns, key).unwrap();
    store.db().unwrap().get(physical).unwrap().unwrap().to_vec()
}

#[test]
fn a_store_record_rolled_back_on_disk_is_refused() {
    let (dir, mut store) = fresh();
    put(&mut store, Namespace::Sessions, b"bob/1", b"chain key 1");
    let old = raw_record(&store, Namespace::Sessions, b"bob/1");
    let old_state = store
        .db()
        .unwrap()
        .get(STATE_PHYSICAL)
        .unwrap()
        .unwrap()
        .to_vec();
    put(&mut store, Namespace::Groups, b"g", b"bystander");
    put(&mut store, Namespace::Sessions, b"bob/1", b"chain key 2");
    let new_version = raw_record(&store, Namespace::Sessions, b"bob/1")[..VERSION_LEN].to_vec();
    let physical = store.physical_key(Namespace::Sessions, b"bob/1").unwrap();
    let newest = raw_entries_of(&store);
    drop(store);

    // The old record's bytes put back in place (authentic, but older): refused on open.
    tamper(&dir, |db| {
        db.insert(&physical, old.clone()).unwrap();
    });
    assert!(matches!(reopen(&dir, 7, 2), Err(StoreError::RolledBack(_))));
    // Put back with the version of the newer one written over its prefix: it does not open.
    let mut relabelled = old.clone();
    relabelled[..VERSION_LEN].copy_from_slice(&new_version);
    tamper(&dir, |db| {
        db.insert(&physical, relabelled).unwrap();
    });
    let store = reopen(&dir, 7, 3).unwrap();
    assert!(matches!(
        store.get(Namespace::Sessions, b"bob/1"),
        Err(StoreError::Corrupt { .. })
    ));
    drop(store);
    // The old record together with the old state record: the other record, written after that
    // state, gives it away.
    tamper(&dir, |db| {
        db.insert(&physical, old.clone()).unwrap();
        db.insert(STATE_PHYSICAL, old_state.clone()).unwrap();
    });
    assert!(matches!(reopen(&dir, 7, 4), Err(StoreError::RolledBack(_))));
    // A record removed is refused too.
    tamper(&dir, |db| {
        db.clear().unwrap();
        for (k, v) in &newest {
            db.insert(k, v.clone()).unwrap();
        }
        db.remove(&physical).unwrap();
    });
    assert!(matches!(reopen(&dir, 7, 5), Err(StoreError::RolledBack(_))));
    // The newest bytes back in place: the store opens and reads as before.
    tamper(&dir, |db| {
        db.insert(
            &physical,
            newest
                .iter()
                .find(|(k, _)| *k == physical)
                .unwrap()
                .1
                .clone(),
        )
        .unwrap();
    });
    let store = reopen(&dir, 7, 6).unwrap();
    assert_eq!(
        get(&store, Namespace::Sessions, b"bob/1"),
        Some(b"chain key 2".to_vec())
    );
    assert_eq!(
        get(&store, Namespace::Groups, b"g"),
        Some(b"bystander".to_vec())
    );
}

/// Opens `dir` under the empty label with `anchor` (waiting, bounded, for sled's lock).
fn open_anchored(dir: &TempDir, anchor: &FileAnchor, seed: u64) -> Result<SledKv, StoreError> {
    for _ in 0..500 {
        match SledKv::open_anchored(
            dir.path(),
            at_rest_key(7),
            b"",
            rng(seed),
            Box::new(anchor.clone()),
        ) {
            Err(StoreError::Io(e)) if e.contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
    SledKv::open_anchored(
        dir.path(),
        at_rest_key(7),
        b"",
        rng(seed),
        Box::new(anchor.clone()),
    )
}

#[test]
fn a_whole_store_rolled_back_is_refused_by_its_anchor() {
    let dir = TempDir::new().unwrap();
    let outside = TempDir::new().unwrap();
    let anchor = FileAnchor::new(outside.path().join("anchor"));
    let mut store = open_anchored(&dir, &anchor, 1).unwrap();
    put(&mut store, Namespace::Sessions, b"bob/1", b"chain key 1");
    let snapshot = raw_entries_of(&store);
    put(&mut store, Namespace::Sessions, b"bob/1", b"chain key 2");
    assert_eq!(anchor.load().unwrap(), Some(3));
    let newest = raw_entries_of(&store);
    drop(store);
    let restore = |entries: &[(Vec<u8>, Vec<u8>)]| {
        tamper(&dir, |db| {
            db.clear().unwrap();
            for (k, v) in entries {
                db.insert(k, v.clone()).unwrap();
            }
        });
    };

    // The whole older database put back is consistent in itself: only the anchor sees it.
    restore(&snapshot);
    assert!(matches!(
        open_anchored(&dir, &anchor, 2),
        Err(StoreError::RolledBack(_))
    ));
    assert!(
        reopen(&dir, 7, 3).is_ok(),
        "without its anchor it goes unnoticed"
    );
    // Emptied (or its state record lost) under an anchor that holds a counter: refused.
    restore(&[]);
    assert!(matches!(
        open_anchored(&dir, &anchor, 4),
        Err(StoreError::RolledBack(_))
    ));

    // A crash between the commit and the anchor's update leaves the store one commit ahead:
    // accepted, and the anchor catches up.
    restore(&newest);
    let mut behind = anchor.clone();
    behind.advance(2).unwrap();
    let store = open_anchored(&dir, &anchor, 5).unwrap();
    assert_eq!(anchor.load().unwrap(), Some(3));
    assert_eq!(
        get(&store, Namespace::Sessions, b"bob/1"),
        Some(b"chain key 2".to_vec())
    );
}

#[test]
fn a_versioned_store_without_a_label_is_migrated_and_keeps_counting() {
    let (dir, mut store) = fresh();
    put(&mut store, Namespace::Sessions, b"bob/1", b"ratchet");
    put(&mut store, Namespace::Groups, b"g", b"group");
    assert_eq!(store.counter, 3);
    drop(store);
    let mut store = open_labelled_retrying(&dir, b"/db", 2).unwrap();
    assert_eq!(store.counter, 4);
    assert_eq!(
        get(&store, Namespace::Sessions, b"bob/1"),
        Some(b"ratchet".to_vec())
    );
    put(&mut store, Namespace::Groups, b"g", b"group 2");
    drop(store);
    assert!(matches!(reopen(&dir, 7, 3), Err(StoreError::WrongKey)));
    let store = open_labelled_retrying(&dir, b"/db", 4).unwrap();
    assert_eq!(store.counter, 5);
    assert_eq!(
        get(&store, Namespace::Groups, b"g"),
        Some(b"group 2".to_vec())
    );
    drop(store);

    // An unlabelled store with a record rolled back is not migrated.
    let (dir, mut store) = fresh();
    put(&mut store, Namespace::Sessions, b"bob/1", b"ratchet 1");
    let physical = store.physical_key(Namespace::Sessions, b"bob/1").unwrap();
    let old = raw_record(&store, Namespace::Sessions, b"bob/1");
    put(&mut store, Namespace::Sessions, b"bob/1", b"ratchet 2");
    drop(store);
    tamper(&dir, |db| {
        db.insert(&physical, old).unwrap();
    });
    assert!(matches!(
        open_labelled_retrying(&dir, b"/db", 5),
        Err(StoreError::RolledBack(_))
    ));
}
