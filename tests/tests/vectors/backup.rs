//! Checks `backup.json`: every recovery key's checksum, text, archive key and slot names, and
//! every archive, recomputed by hand from the recorded inputs (SHA-256, HKDF, HMAC,
//! ChaCha20-Poly1305 and the layout of PROTOCOL.md §22, without hush-core) and through
//! hush-core's public API; every refused input refused with the recorded error.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use hush_core::backup::{self, RecoveryKey};
use hush_tests::vectors::{BackupFile, backup_error_name};
use sha2::{Digest, Sha256};

use super::{check_header, h, h32};

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Decodes a key text by hand: dashes dropped, 5 bits per character, most significant first.
fn base32_by_hand(text: &str) -> Vec<u8> {
    let mut bits: Vec<u8> = Vec::new();
    for c in text.bytes().filter(|c| *c != b'-') {
        let v = CROCKFORD.iter().position(|a| *a == c).unwrap() as u8;
        for i in (0..5).rev() {
            bits.push((v >> i) & 1);
        }
    }
    assert_eq!(bits.len() % 8, 0);
    bits.chunks(8)
        .map(|b| b.iter().fold(0u8, |acc, bit| (acc << 1) | bit))
        .collect()
}

fn hkdf(salt: Option<&[u8]>, ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, &mut out)
        .unwrap();
    out
}

/// Returns (vectors, negative vectors) checked.
pub(super) fn check_backup_file(f: &BackupFile) -> (usize, usize) {
    check_header("backup", &f.file, f.format_version, &f.vectors);
    for v in &f.vectors {
        let key = h32(&v.recovery_key);
        // The checksum and the text.
        let digest = Sha256::new()
            .chain_update(b"Hush-Recovery-Key-Check-v1")
            .chain_update(key)
            .finalize();
        assert_eq!(h(&v.checksum), digest[..3], "{}", v.name);
        let text = &v.recovery_key_text;
        assert_eq!(text.len(), 56 + 13, "{}", v.name);
        assert!(
            text.split('-').all(|g| g.len() == 4),
            "{}: groups of 4",
            v.name
        );
        assert_eq!(
            base32_by_hand(text),
            [&key[..], &h(&v.checksum)[..]].concat(),
            "{}",
            v.name
        );
        let rk = RecoveryKey::parse(text).unwrap();
        assert_eq!(rk.as_bytes(), &key);
        assert_eq!(rk.to_text().as_str(), text.as_str());
        assert_eq!(
            RecoveryKey::parse(&text.to_lowercase().replace('-', " ")).unwrap(),
            rk
        );
        // Derived keys and names.
        let ak = hkdf(None, &key, b"Hush-Backup-Archive-Key-v1", 32);
        assert_eq!(ak, h(&v.archive_key), "{}", v.name);
        assert_eq!(&rk.archive_key().unwrap()[..], &ak[..]);
        assert_eq!(v.slots.len(), 2);
        for s in &v.slots {
            let id = hkdf(
                None,
                &key,
                &[&b"Hush-Backup-Blob-Id-v1"[..], &[s.slot]].concat(),
                16,
            );
            let cap = hkdf(
                None,
                &key,
                &[&b"Hush-Backup-Blob-Capability-v1"[..], &[s.slot]].concat(),
                32,
            );
            assert_eq!((id.clone(), cap.clone()), (h(&s.blob_id), h(&s.capability)));
            let core = rk.slot(s.slot).unwrap();
            assert_eq!((core.blob_id.to_vec(), core.capability.to_vec()), (id, cap));
        }
        // The header.
        let ak: [u8; 32] = ak.try_into().unwrap();
        let nonce = h32(&v.nonce);
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&ak).unwrap();
        mac.update(b"Hush-Backup-Key-Check-v1");
        mac.update(b"HUSHBAK1");
        mac.update(&nonce);
        assert_eq!(
            h(&v.key_check),
            mac.finalize().into_bytes()[..16],
            "{}",
            v.name
        );
        let stream = hkdf(Some(&nonce), &ak, b"Hush-Backup-Stream-v1", 32);
        assert_eq!(stream, h(&v.stream_key), "{}", v.name);
        let archive = h(&v.archive);
        let header = [&b"HUSHBAK1"[..], &nonce[..], &h(&v.key_check)[..]].concat();
        assert_eq!(&archive[..56], &header[..], "{}", v.name);
        // Every chunk opened by hand at its index, the last one marked.
        let aead = ChaCha20Poly1305::new(&Key::from(h32(&v.stream_key)));
        let pieces: Vec<&[u8]> = archive[56..].chunks(65536 + 16).collect();
        assert_eq!(pieces.len(), v.chunks as usize, "{}", v.name);
        let mut plain = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            let mut n = [0u8; 12];
            n[..8].copy_from_slice(&(i as u64).to_be_bytes());
            n[8..].copy_from_slice(&u32::from(last).to_be_bytes());
            plain.extend(
                aead.decrypt(
                    &Nonce::from(n),
                    Payload {
                        msg: p,
                        aad: &header,
                    },
                )
                .unwrap(),
            );
        }
        assert_eq!(plain, h(&v.plaintext), "{}", v.name);
        // And through hush-core, both ways.
        assert_eq!(backup::open(&ak, &archive).unwrap().as_slice(), &plain[..]);
        assert_eq!(
            backup::seal_with_nonce(&ak, &nonce, &plain).unwrap(),
            archive,
            "{}",
            v.name
        );
    }
    let find = |name: &str| f.vectors.iter().find(|v| v.name == name).unwrap();
    for n in &f.negative {
        let err = if n.archive_of.is_empty() {
            RecoveryKey::parse(&n.recovery_key_text).unwrap_err()
        } else {
            let mut a = h(&find(&n.archive_of).archive);
            if let Some(t) = n.truncate_to {
                a.truncate(t as usize);
            }
            if let Some(at) = n.flip_at {
                a[at as usize] ^= 1;
            }
            backup::open(&h32(&find(&n.key_of).archive_key), &a).unwrap_err()
        };
        assert_eq!(backup_error_name(&err), n.expected_error, "{}", n.name);
    }
    (f.vectors.len(), f.negative.len())
}
