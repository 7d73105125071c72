use super::*;
use crate::device::{Device, DeviceError, decode_archive};
use crate::store::memory::MemoryKv;
use hush_proto::Message;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

fn rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

#[test]
fn a_recovery_key_reads_back_from_its_text_however_it_is_typed() {
    let key = RecoveryKey::generate(&mut rng(1));
    let text = key.to_text();
    assert_eq!(text.len(), RECOVERY_KEY_CHARS + 13);
    assert_eq!(text.split('-').count(), 14);
    assert!(text.split('-').all(|g| g.len() == 4));
    assert_eq!(RecoveryKey::parse(&text).unwrap(), key);
    let sloppy = text.to_lowercase().replace('-', " ").replace('0', "o");
    assert_eq!(RecoveryKey::parse(&sloppy).unwrap(), key);
    let compact: String = text.chars().filter(|c| *c != '-').collect();
    assert_eq!(RecoveryKey::parse(&compact).unwrap(), key);
}

#[test]
fn a_typo_in_a_recovery_key_is_caught_by_its_checksum() {
    let key = RecoveryKey::generate(&mut rng(2));
    let text = key.to_text();
    let mut caught = 0;
    // Every single-character substitution anywhere in the key.
    for (i, c) in text.char_indices().filter(|(_, c)| *c != '-') {
        let other = if c == 'A' { 'B' } else { 'A' };
        let mut typo = text.to_string();
        typo.replace_range(i..=i, &other.to_string());
        match RecoveryKey::parse(&typo) {
            Err(BackupError::KeyChecksum) => caught += 1,
            other => panic!("typo at {i} not caught: {other:?}"),
        }
    }
    assert_eq!(caught, RECOVERY_KEY_CHARS);
    // Two neighbours swapped.
    let chars: Vec<char> = text.chars().collect();
    let mut swapped = chars.clone();
    let (a, b) = (0, 1);
    assert_ne!(
        chars[a], chars[b],
        "pick a key whose first two characters differ"
    );
    swapped.swap(a, b);
    let swapped: String = swapped.into_iter().collect();
    assert_eq!(RecoveryKey::parse(&swapped), Err(BackupError::KeyChecksum));
}

#[test]
fn a_recovery_key_of_the_wrong_length_or_alphabet_is_refused() {
    let text = RecoveryKey::generate(&mut rng(3)).to_text();
    assert_eq!(
        RecoveryKey::parse(&text[..text.len() - 1]),
        Err(BackupError::KeyFormat)
    );
    assert_eq!(
        RecoveryKey::parse(&format!("{}A", &*text)),
        Err(BackupError::KeyFormat)
    );
    assert_eq!(
        RecoveryKey::parse(&text.replacen(|c: char| c.is_ascii_alphanumeric(), "U", 1)),
        Err(BackupError::KeyFormat)
    );
    assert_eq!(RecoveryKey::parse(""), Err(BackupError::KeyFormat));
}

#[test]
fn slots_and_archive_key_are_distinct_and_deterministic() {
    let key = RecoveryKey::from_bytes(&[7; 32]);
    let s0 = key.slot(0).unwrap();
    let s1 = key.slot(1).unwrap();
    assert_ne!(s0.blob_id, s1.blob_id);
    assert_ne!(*s0.capability, *s1.capability);
    assert_ne!(s0.capability[..16], s0.blob_id[..]);
    assert_eq!(key.slot(0).unwrap(), s0);
    assert!(key.slot(2).is_err());
    assert_ne!(
        *key.archive_key().unwrap(),
        *RecoveryKey::from_bytes(&[8; 32]).archive_key().unwrap()
    );
}

#[test]
fn archives_of_every_size_open_to_their_plaintext() {
    let k = [9u8; 32];
    for len in [
        0,
        1,
        BACKUP_CHUNK - 1,
        BACKUP_CHUNK,
        BACKUP_CHUNK + 1,
        3 * BACKUP_CHUNK,
    ] {
        let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let sealed = seal(&k, &plain, &mut rng(4)).unwrap();
        let chunks = len.div_ceil(BACKUP_CHUNK).max(1);
        assert_eq!(sealed.len(), HEADER_LEN + len + 16 * chunks, "len {len}");
        assert_eq!(&*open(&k, &sealed).unwrap(), &plain, "len {len}");
    }
}

#[test]
fn a_wrong_key_is_told_apart_from_tampering() {
    let sealed = seal(&[1; 32], b"history", &mut rng(5)).unwrap();
    assert_eq!(open(&[2; 32], &sealed).unwrap_err(), BackupError::WrongKey);
    let other = RecoveryKey::from_bytes(&[3; 32]).archive_key().unwrap();
    assert_eq!(open(&other, &sealed).unwrap_err(), BackupError::WrongKey);
}

#[test]
fn truncated_reordered_and_altered_archives_are_refused() {
    let k = [4u8; 32];
    let plain = vec![0x5a; 3 * BACKUP_CHUNK + 10];
    let sealed = seal(&k, &plain, &mut rng(6)).unwrap();
    let piece = BACKUP_CHUNK + 16;
    // Cut at a chunk boundary: the last chunk left is not marked last.
    assert_eq!(
        open(&k, &sealed[..HEADER_LEN + 2 * piece]).unwrap_err(),
        BackupError::Truncated
    );
    // Cut inside a chunk.
    assert_eq!(
        open(&k, &sealed[..HEADER_LEN + piece + 100]).unwrap_err(),
        BackupError::Tampered { chunk: 1 }
    );
    // Nothing but the header.
    assert_eq!(
        open(&k, &sealed[..HEADER_LEN]).unwrap_err(),
        BackupError::Truncated
    );
    // Two chunks swapped.
    let mut swapped = sealed[..HEADER_LEN].to_vec();
    swapped.extend_from_slice(&sealed[HEADER_LEN + piece..HEADER_LEN + 2 * piece]);
    swapped.extend_from_slice(&sealed[HEADER_LEN..HEADER_LEN + piece]);
    swapped.extend_from_slice(&sealed[HEADER_LEN + 2 * piece..]);
    assert_eq!(
        open(&k, &swapped).unwrap_err(),
        BackupError::Tampered { chunk: 0 }
    );
    // A chunk dropped from the middle.
    let mut dropped = sealed[..HEADER_LEN + piece].to_vec();
    dropped.extend_from_slice(&sealed[HEADER_LEN + 2 * piece..]);
    assert_eq!(
        open(&k, &dropped).unwrap_err(),
        BackupError::Tampered { chunk: 1 }
    );
    // One bit flipped in the last chunk, and in the header's nonce.
    let mut flipped = sealed.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 1;
    assert_eq!(
        open(&k, &flipped).unwrap_err(),
        BackupError::Tampered { chunk: 3 }
    );
    let mut nonce = sealed.clone();
    nonce[10] ^= 1;
    assert_eq!(open(&k, &nonce).unwrap_err(), BackupError::WrongKey);
    // A chunk of another archive under the same key.
    let other = seal(&k, &plain, &mut rng(7)).unwrap();
    let mut mixed = sealed[..HEADER_LEN + piece].to_vec();
    mixed.extend_from_slice(&other[HEADER_LEN + piece..]);
    assert_eq!(
        open(&k, &mixed).unwrap_err(),
        BackupError::Tampered { chunk: 1 }
    );
    let mut magic = sealed;
    magic[0] ^= 1;
    assert!(matches!(
        open(&k, &magic).unwrap_err(),
        BackupError::Malformed(_)
    ));
}

fn everything(s: &MemoryKv) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
    use crate::store::kv::{KvStore, Namespace};
    let mut out = Vec::new();
    for ns in Namespace::ALL {
        for (k, v) in s.scan(ns).unwrap() {
            out.push((ns as u8, k, v.to_vec()));
        }
    }
    out
}

#[test]
fn an_account_comes_back_as_a_new_device_with_its_contacts_lists() {
    let mut r = rng(8);
    let mut alice = Device::create_account(MemoryKv::new(), &mut r, 1_000).unwrap();
    let bob = Device::create_account(MemoryKv::new(), &mut r, 1_000).unwrap();
    let bob_list = bob
        .device_list(&bob.address().account)
        .unwrap()
        .signed_bytes()
        .to_vec();
    alice
        .accept_device_list(&bob_list, &bob.address().account, 1_000)
        .unwrap();
    // A second device of Alice's, which she will say is gone, and one she keeps.
    let gone =
        Device::create_linked(MemoryKv::new(), &mut r, alice.address().account, 5, 1_000).unwrap();
    let kept =
        Device::create_linked(MemoryKv::new(), &mut r, alice.address().account, 6, 1_000).unwrap();
    alice.add_device(&gone.consent(), 1_100).unwrap();
    alice.add_device(&kept.consent(), 1_100).unwrap();
    let archive = alice
        .export_backup(true, b"app part".to_vec(), 2_000)
        .unwrap();
    let bytes = archive.encode_to_vec();
    let key = RecoveryKey::generate(&mut r);
    let sealed = seal(&key.archive_key().unwrap(), &bytes, &mut r).unwrap();

    let opened = open(&key.archive_key().unwrap(), &sealed).unwrap();
    let archive = decode_archive(&opened).unwrap();
    assert_eq!(archive.app, b"app part");
    let restored =
        Device::restore(MemoryKv::new(), &mut r, &archive, &[], 77, &[6], 3_000).unwrap();
    let me = restored.address();
    assert_eq!(me.account, alice.address().account);
    assert_eq!(me.device_id, 77);
    assert!(restored.holds_account_key());
    assert_ne!(restored.identity(), alice.identity());
    let list = restored.device_list(&me.account).unwrap().list().clone();
    assert_eq!(
        list.devices.keys().copied().collect::<Vec<_>>(),
        vec![6, 77]
    );
    let alice_list = alice.device_list(&me.account).unwrap().list().version;
    assert_eq!(list.version, alice_list + 1);
    assert!(restored.device_list(&bob.address().account).is_some());
    // It opens again from its store as that new device.
    let reopened = Device::open(restored.into_store()).unwrap();
    assert_eq!(reopened.address(), me);
    assert!(reopened.holds_account_key());
}

#[test]
fn a_newer_list_from_the_relay_is_the_base_of_the_recovered_list() {
    let mut r = rng(9);
    let mut alice = Device::create_account(MemoryKv::new(), &mut r, 1_000).unwrap();
    let archive = alice.export_backup(true, Vec::new(), 2_000).unwrap();
    let other =
        Device::create_linked(MemoryKv::new(), &mut r, alice.address().account, 3, 1_000).unwrap();
    let newer = alice.add_device(&other.consent(), 2_500).unwrap();
    let restored = Device::restore(
        MemoryKv::new(),
        &mut r,
        &archive,
        &[newer.signed_bytes()],
        9,
        &[3],
        3_000,
    )
    .unwrap();
    let list = restored
        .device_list(&alice.address().account)
        .unwrap()
        .list()
        .clone();
    assert_eq!(list.version, newer.list().version + 1);
    assert_eq!(list.devices.keys().copied().collect::<Vec<_>>(), vec![3, 9]);
}

#[test]
fn archives_of_another_account_or_without_the_key_change_nothing() {
    let mut r = rng(10);
    let mut alice = Device::create_account(MemoryKv::new(), &mut r, 1_000).unwrap();
    let bob = Device::create_account(MemoryKv::new(), &mut r, 1_000).unwrap();
    let before = everything(alice.store());
    let bobs = bob.export_backup(true, Vec::new(), 2_000).unwrap();
    assert!(matches!(
        alice.import_backup(&bobs, 2_000),
        Err(DeviceError::Backup(BackupError::WrongAccount))
    ));
    let mut unknown = alice.export_backup(true, Vec::new(), 2_000).unwrap();
    unknown.version = 99;
    assert!(matches!(
        alice.import_backup(&unknown, 2_000),
        Err(DeviceError::Backup(BackupError::Contents(_)))
    ));
    assert_eq!(everything(alice.store()), before);
    let keyless = alice.export_backup(false, Vec::new(), 2_000).unwrap();
    assert!(keyless.account_secret.is_empty());
    assert!(matches!(
        Device::restore(MemoryKv::new(), &mut r, &keyless, &[], 4, &[], 3_000),
        Err(DeviceError::Backup(BackupError::NoAccountKey))
    ));
    assert!(matches!(
        decode_archive(b"\xff\xff not an archive"),
        Err(DeviceError::Backup(BackupError::Contents(_)))
    ));
}
