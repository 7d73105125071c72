//! Checks `sealed.json`: every envelope rebuilt by hand from its recorded inputs (X25519, HKDF,
//! ChaCha20-Poly1305 and the byte layout of PROTOCOL.md §21, without hush-core) and through
//! hush-core's public API; every delivery key and token recomputed both ways.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use hush_core::keys::DeviceIdentityKeyPair;
use hush_core::sealed::{self, DeliveryKey};
use hush_tests::vectors::SealedFile;
use sha2::Sha256;

use super::{Device, check_header, h, h32, x_dh, x_pub};

/// The envelope length for `content_len` bytes of content, by the rule of §21.3.
fn bucket_by_hand(content_len: usize) -> usize {
    let min = 1 + 32 + 116 + 32 + content_len + 1 + 16;
    if min <= 4160 {
        min.div_ceil(160) * 160
    } else {
        let e = min.ilog2();
        let s = e.ilog2() + 1;
        let step = 1usize << (e - s);
        min.div_ceil(step) * step
    }
}

fn aead(key: &[u8; 32], aad: &[u8], msg: &[u8]) -> Vec<u8> {
    ChaCha20Poly1305::new(&Key::from(*key))
        .encrypt(&Nonce::from([0u8; 12]), Payload { msg, aad })
        .unwrap()
}

fn aead_open(key: &[u8; 32], aad: &[u8], ct: &[u8]) -> Vec<u8> {
    ChaCha20Poly1305::new(&Key::from(*key))
        .decrypt(&Nonce::from([0u8; 12]), Payload { msg: ct, aad })
        .unwrap()
}

/// Returns (envelopes, delivery-key vectors) checked.
pub(super) fn check_sealed_file(f: &SealedFile) -> (usize, usize) {
    check_header("sealed", &f.file, f.format_version, &f.vectors);
    assert!(!f.delivery_keys.is_empty());
    let mut lengths = std::collections::BTreeSet::new();
    for v in &f.vectors {
        let sender = Device::from_record(&v.sender);
        let recipient = Device::from_record(&v.recipient);
        let ik_r = *recipient.identity.dh_key();
        let ik_s = *sender.identity.dh_key();
        let content = h(&v.content);

        // The delivery key, epoch 0.
        let mut dk = [0u8; 32];
        Hkdf::<Sha256>::new(Some(b"hush-delivery-key-v1"), &sender.dh_secret)
            .expand(&0u32.to_be_bytes(), &mut dk)
            .unwrap();
        assert_eq!(h32(&v.sender_delivery_key), dk, "{}: delivery key", v.name);
        assert_eq!(DeliveryKey::derive(&sender.pair, 0).as_bytes(), &dk);

        // By hand.
        let e = h32(&v.ephemeral_secret);
        let e_pub = x_pub(e);
        assert_eq!(h32(&v.ephemeral_public), e_pub);
        let ss1 = x_dh(e, ik_r);
        assert_eq!(h32(&v.ss1), ss1, "{}: ss1", v.name);
        assert_eq!(
            x_dh(recipient.dh_secret, e_pub),
            ss1,
            "{}: ss1 (receiver)",
            v.name
        );
        let mut okm = [0u8; 64];
        Hkdf::<Sha256>::new(Some(&[&b"hush-seal-v1"[..], &ik_r, &e_pub].concat()), &ss1)
            .expand(b"hush-seal-v1 sender", &mut okm)
            .unwrap();
        let ck: [u8; 32] = okm[..32].try_into().unwrap();
        let k1: [u8; 32] = okm[32..].try_into().unwrap();
        assert_eq!((h32(&v.ck), h32(&v.k1)), (ck, k1), "{}: ck, k1", v.name);
        let block = [
            &sender.account.as_bytes()[..],
            &sender.device_id.to_be_bytes(),
            sender.identity.signing_key(),
            &ik_s,
        ]
        .concat();
        assert_eq!(block.len(), 100);
        assert_eq!(h(&v.sender_block), block, "{}: sender block", v.name);
        let c1 = aead(&k1, &[&[1u8][..], &e_pub, &ik_r].concat(), &block);
        assert_eq!(c1.len(), 116);
        assert_eq!(h(&v.c1), c1, "{}: c1", v.name);
        let ss2 = x_dh(sender.dh_secret, ik_r);
        assert_eq!(x_dh(recipient.dh_secret, ik_s), ss2);
        assert_eq!(h32(&v.ss2), ss2, "{}: ss2", v.name);
        let mut k2 = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&[&ck[..], &c1].concat()), &ss2)
            .expand(b"hush-seal-v1 content", &mut k2)
            .unwrap();
        assert_eq!(h32(&v.k2), k2, "{}: k2", v.name);
        let len = bucket_by_hand(content.len());
        assert_eq!(
            usize::try_from(v.envelope_len).unwrap(),
            len,
            "{}: length",
            v.name
        );
        let mut padded = [&dk[..], &content, &[0x80]].concat();
        assert!(padded.len() <= len - 165);
        padded.resize(len - 165, 0);
        assert_eq!(h(&v.padded), padded, "{}: padded", v.name);
        let c2 = aead(&k2, &[&[1u8][..], &e_pub, &c1].concat(), &padded);
        assert_eq!(h(&v.c2), c2, "{}: c2", v.name);
        assert_eq!(
            aead_open(&k2, &[&[1u8][..], &e_pub, &c1].concat(), &c2),
            padded
        );
        let envelope = [&[1u8][..], &e_pub, &c1, &c2].concat();
        assert_eq!(envelope.len(), len);
        assert_eq!(h(&v.envelope), envelope, "{}: envelope", v.name);

        // Through hush-core.
        assert_eq!(sealed::sealed_len(content.len()), len);
        assert!(sealed::is_bucket(len));
        assert_eq!(*sealed::pad(&[&dk[..], &content].concat()), padded);
        assert_eq!(
            sealed::unpad(&padded).unwrap(),
            &[&dk[..], &content].concat()[..]
        );
        let core = sealed::seal_with_ephemeral(
            &sender.pair,
            &sender.address(),
            &DeliveryKey::from_bytes(&dk),
            &recipient.identity,
            &content,
            &e,
        )
        .unwrap();
        assert_eq!(core, envelope, "{}: hush-core seal", v.name);
        let opened = sealed::open(&recipient.pair, &envelope).unwrap();
        assert_eq!(opened.from, sender.address());
        assert_eq!(opened.identity, sender.identity);
        assert_eq!(opened.delivery_key.as_bytes(), &dk);
        assert_eq!(*opened.content, content);
        // Only the recipient opens it.
        assert!(sealed::open(&sender.pair, &envelope).is_err());
        lengths.insert(len);
    }
    // Several buckets, the smallest one and the Padmé region among them.
    assert!(lengths.len() >= 5 && lengths.contains(&320) && lengths.iter().any(|l| *l > 4160));

    let mut tokens = std::collections::BTreeSet::new();
    for d in &f.delivery_keys {
        let dh = h32(&d.identity_dh_secret);
        assert_eq!(x_pub(dh), h32(&d.identity_dh_public));
        let mut dk = [0u8; 32];
        Hkdf::<Sha256>::new(Some(b"hush-delivery-key-v1"), &dh)
            .expand(&d.epoch.to_be_bytes(), &mut dk)
            .unwrap();
        assert_eq!(h32(&d.delivery_key), dk, "{}: delivery key", d.name);
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&dk).unwrap();
        mac.update(b"hush-delivery-token-v1");
        let token = mac.finalize().into_bytes();
        assert_eq!(h(&d.token), token[..16], "{}: token", d.name);
        // Through hush-core (the delivery key depends on the DH secret only; the signing secret
        // is not recorded, any will do).
        let pair = DeviceIdentityKeyPair::from_secret_bytes(&[7u8; 32], &dh);
        let core = DeliveryKey::derive(&pair, d.epoch);
        assert_eq!(core.as_bytes(), &dk);
        assert_eq!(core.token().as_bytes()[..], token[..16]);
        assert!(tokens.insert(d.token.clone()), "{}: token repeated", d.name);
    }
    (f.vectors.len(), f.delivery_keys.len())
}
