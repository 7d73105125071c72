use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::keys::AccountKeyPair;

struct Party {
    keys: DeviceIdentityKeyPair,
    address: DeviceAddress,
    dk: DeliveryKey,
}

fn party(rng: &mut ChaCha20Rng, device_id: u32) -> Party {
    let account = AccountKeyPair::generate(rng).id();
    let keys = DeviceIdentityKeyPair::generate(rng);
    let dk = DeliveryKey::derive(&keys, 0);
    Party {
        keys,
        address: DeviceAddress { account, device_id },
        dk,
    }
}

fn pair() -> (Party, Party, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::from_seed([21; 32]);
    let a = party(&mut rng, 1);
    let b = party(&mut rng, 2);
    (a, b, rng)
}

fn seal_to(a: &Party, b: &Party, content: &[u8], rng: &mut ChaCha20Rng) -> Vec<u8> {
    seal(&a.keys, &a.address, &a.dk, &b.keys.public(), content, rng).unwrap()
}

/// Builds an envelope around an arbitrary `c2` plaintext (for padding tests).
fn seal_raw(a: &Party, to: &DeviceIdentity, padded: &[u8], eph: &[u8; 32]) -> Vec<u8> {
    let e = StaticSecret::from(*eph);
    let e_pub = PublicKey::from(&e).to_bytes();
    let ss1 = dh(&e, &to.dh_public()).unwrap();
    let (ck, k1) = sender_keys(&ss1, to.dh_key(), &e_pub);
    let mut block = a.address.account.as_bytes().to_vec();
    block.extend_from_slice(&a.address.device_id.to_be_bytes());
    block.extend_from_slice(&a.keys.public().to_bytes());
    let c1 = cipher(&k1)
        .encrypt(
            &zero_nonce(),
            Payload {
                msg: &block,
                aad: &aad(&e_pub, to.dh_key()),
            },
        )
        .unwrap();
    let ss2 = dh(a.keys.dh_secret(), &to.dh_public()).unwrap();
    let k2 = content_key(&ss2, &ck, &c1);
    let c2 = cipher(&k2)
        .encrypt(
            &zero_nonce(),
            Payload {
                msg: padded,
                aad: &aad(&e_pub, &c1),
            },
        )
        .unwrap();
    let mut out = vec![SEALED_VERSION];
    out.extend_from_slice(&e_pub);
    out.extend_from_slice(&c1);
    out.extend_from_slice(&c2);
    out
}

fn malformed(e: Error) -> &'static str {
    match e {
        Error::Malformed { reason, .. } => reason,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn round_trip() {
    let (a, b, mut rng) = pair();
    for content in [
        &b""[..],
        b"hi",
        &[7u8; 1000],
        &vec![9u8; MAX_SEALED_CONTENT_LEN],
    ] {
        let env = seal_to(&a, &b, content, &mut rng);
        assert_eq!(env.len(), sealed_len(content.len()));
        assert!(is_bucket(env.len()));
        let o = open(&b.keys, &env).unwrap();
        assert_eq!(o.from, a.address);
        assert_eq!(o.identity, a.keys.public());
        assert!(o.delivery_key.ct_eq(&a.dk));
        assert_eq!(&o.content[..], content);
        // Nothing of the key or content shows in Debug.
        let dbg = format!("{o:?}");
        assert!(!dbg.contains("content:"));
    }
    // Two seals of the same content differ (fresh ephemeral key).
    assert_ne!(
        seal_to(&a, &b, b"x", &mut rng),
        seal_to(&a, &b, b"x", &mut rng)
    );
}

#[test]
fn too_large_content_refused() {
    let (a, b, mut rng) = pair();
    let big = vec![0u8; MAX_SEALED_CONTENT_LEN + 1];
    let e = seal(&a.keys, &a.address, &a.dk, &b.keys.public(), &big, &mut rng).unwrap_err();
    assert!(matches!(
        e,
        Error::Protocol(ProtocolError::TooLarge(n)) if n == MAX_SEALED_CONTENT_LEN + 1
    ));
}

#[test]
fn bucket_lengths() {
    // The smallest bucket holds typing, presence and receipts (tens of bytes) and short texts.
    assert_eq!(SEALED_OVERHEAD, 198);
    assert_eq!(sealed_len(0), 320);
    assert_eq!(sealed_len(16), 320);
    assert_eq!(sealed_len(50), 320);
    assert_eq!(sealed_len(122), 320);
    assert_eq!(sealed_len(123), 480);
    assert_eq!(sealed_len(200), 480);
    assert_eq!(sealed_len(282), 480);
    assert_eq!(sealed_len(283), 640);
    assert_eq!(sealed_len(1000), 1280);
    // Every linear bucket boundary: the last content that fits and the first that does not.
    for k in 2..=26usize {
        let top = k * SEALED_BUCKET_STEP;
        assert_eq!(sealed_len(top - SEALED_OVERHEAD), top);
        if k > 2 {
            assert_eq!(
                sealed_len(top - SEALED_OVERHEAD - SEALED_BUCKET_STEP + 1),
                top
            );
            assert_eq!(
                sealed_len(top - SEALED_OVERHEAD - SEALED_BUCKET_STEP),
                top - 160
            );
        }
    }
    assert_eq!(sealed_len(SEALED_LINEAR_MAX - SEALED_OVERHEAD), 4160);
    // Above 4160: Padmé (multiples of 256 up to 8191, 512 up to 16383, 1024 up to 32767, 2048).
    assert_eq!(sealed_len(SEALED_LINEAR_MAX - SEALED_OVERHEAD + 1), 4352);
    assert_eq!(sealed_len(5000), 5376);
    assert_eq!(sealed_len(8192 - SEALED_OVERHEAD), 8192);
    assert_eq!(sealed_len(8192 - SEALED_OVERHEAD + 1), 8704);
    assert_eq!(sealed_len(20000), 20480);
    assert_eq!(sealed_len(MAX_SEALED_CONTENT_LEN), MAX_SEALED_LEN);
    assert_eq!(sealed_len(MAX_SEALED_CONTENT_LEN - 2048), 63488);
    assert_eq!(sealed_len(usize::MAX), usize::MAX);
}

#[test]
fn buckets_are_what_sealing_produces() {
    // Every length sealing produces is a bucket, lengths only grow, and the overhead above the
    // linear region stays under 12.5 %.
    let mut last = 0;
    for c in 0..=MAX_SEALED_CONTENT_LEN {
        let l = sealed_len(c);
        assert!(is_bucket(l), "{c} -> {l}");
        assert!(l >= c + SEALED_OVERHEAD && l >= last);
        if l > SEALED_LINEAR_MAX {
            assert!((l - c - SEALED_OVERHEAD) * 8 < c + SEALED_OVERHEAD);
        }
        last = l;
    }
    // And every bucket is produced by some content length.
    let produced: std::collections::BTreeSet<usize> =
        (0..=MAX_SEALED_CONTENT_LEN).map(sealed_len).collect();
    let buckets: std::collections::BTreeSet<usize> = (0..=MAX_SEALED_LEN + 10)
        .filter(|l| is_bucket(*l))
        .collect();
    assert_eq!(produced, buckets);
    assert!(
        !is_bucket(160) && !is_bucket(321) && !is_bucket(4224) && !is_bucket(MAX_SEALED_LEN + 2048)
    );
}

#[test]
fn padding_is_iso_7816_4() {
    let p = pad(&[1, 2, 3]);
    assert_eq!(p.len(), 320 - SEALED_HEADER_LEN - AEAD_TAG_LEN);
    assert_eq!(&p[..4], &[1, 2, 3, 0x80]);
    assert!(p[4..].iter().all(|b| *b == 0));
    assert_eq!(unpad(&p).unwrap(), &[1, 2, 3]);
    // Data ending in 0x80 or zeros survives.
    let tricky = [0x80, 0, 0x80, 0];
    assert_eq!(unpad(&pad(&tricky)).unwrap(), &tricky);
    assert_eq!(
        malformed(unpad(&[1, 2, 0, 0]).unwrap_err()),
        "padding has no marker"
    );
    assert_eq!(
        malformed(unpad(&[0, 0]).unwrap_err()),
        "padding has no marker"
    );
    assert_eq!(malformed(unpad(&[]).unwrap_err()), "padding has no marker");
}

#[test]
fn wrong_recipient_fails() {
    let (a, b, mut rng) = pair();
    let c = party(&mut rng, 3);
    let env = seal_to(&a, &b, b"for bob", &mut rng);
    assert!(matches!(
        open(&c.keys, &env).unwrap_err(),
        Error::Auth(AuthError::SealedDecryptFailed)
    ));
}

#[test]
fn flipped_bytes_fail() {
    let (a, b, mut rng) = pair();
    let env = seal_to(&a, &b, b"hello", &mut rng);
    // e.pub (byte 1, low bit: still canonical), c1 (first, last), c2 (first, middle, tag).
    for i in [1, 33, 33 + 115, 149, 200, env.len() - 1] {
        let mut bad = env.clone();
        bad[i] ^= 0x01;
        assert!(
            matches!(
                open(&b.keys, &bad).unwrap_err(),
                Error::Auth(AuthError::SealedDecryptFailed)
            ),
            "byte {i}"
        );
    }
    // The top bit of e.pub makes it non-canonical.
    let mut bad = env.clone();
    bad[32] ^= 0x80;
    assert!(matches!(
        open(&b.keys, &bad).unwrap_err(),
        Error::Auth(AuthError::InvalidKey("non-canonical X25519 encoding"))
    ));
}

#[test]
fn truncated_bad_version_and_lengths() {
    let (a, b, mut rng) = pair();
    let env = seal_to(&a, &b, b"hello", &mut rng);
    assert_eq!(malformed(open(&b.keys, &[]).unwrap_err()), "empty");
    for cut in [1, 33, 149, 160, 319] {
        assert_eq!(
            malformed(open(&b.keys, &env[..cut]).unwrap_err()),
            "length is not a bucket",
            "{cut}"
        );
    }
    let mut longer = env.clone();
    longer.push(0);
    assert_eq!(
        malformed(open(&b.keys, &longer).unwrap_err()),
        "length is not a bucket"
    );
    let mut v2 = env.clone();
    v2[0] = 2;
    assert!(matches!(
        open(&b.keys, &v2).unwrap_err(),
        Error::Protocol(ProtocolError::UnsupportedVersion(2))
    ));
    let mut huge = vec![SEALED_VERSION; MAX_SEALED_LEN + 2048];
    huge[0] = SEALED_VERSION;
    assert_eq!(malformed(open(&b.keys, &huge).unwrap_err()), "too long");
}

#[test]
fn low_order_ephemeral_rejected() {
    let (a, b, mut rng) = pair();
    let env = seal_to(&a, &b, b"hello", &mut rng);
    for p in [[0u8; 32], {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }] {
        let mut bad = env.clone();
        bad[1..33].copy_from_slice(&p);
        assert!(matches!(
            open(&b.keys, &bad).unwrap_err(),
            Error::Auth(AuthError::InvalidKey("X25519 key of small order"))
        ));
    }
}

#[test]
fn non_canonical_padding_rejected() {
    let (a, b, _) = pair();
    let to = b.keys.public();
    let body = 320 - SEALED_HEADER_LEN - AEAD_TAG_LEN;
    // No marker: delivery key and content followed by zeros only.
    let mut padded = vec![0u8; body];
    padded[..32].copy_from_slice(a.dk.as_bytes());
    padded[32] = b'x';
    let env = seal_raw(&a, &to, &padded, &[5; 32]);
    assert_eq!(env.len(), 320);
    assert_eq!(
        malformed(open(&b.keys, &env).unwrap_err()),
        "padding has no marker"
    );
    // A marker that is not 0x80.
    padded[33] = 0x01;
    let env = seal_raw(&a, &to, &padded, &[5; 32]);
    assert_eq!(
        malformed(open(&b.keys, &env).unwrap_err()),
        "padding has no marker"
    );
    // Over-padded: 1 byte of content in the 480 bucket.
    let mut over = a.dk.as_bytes().to_vec();
    over.push(b'x');
    over.push(0x80);
    over.resize(480 - SEALED_HEADER_LEN - AEAD_TAG_LEN, 0);
    let env = seal_raw(&a, &to, &over, &[6; 32]);
    assert_eq!(env.len(), 480);
    assert_eq!(
        malformed(open(&b.keys, &env).unwrap_err()),
        "padding is not canonical"
    );
    // Too short to hold a delivery key.
    let mut short = vec![1u8; 10];
    short.push(0x80);
    short.resize(body, 0);
    let env = seal_raw(&a, &to, &short, &[7; 32]);
    assert_eq!(
        malformed(open(&b.keys, &env).unwrap_err()),
        "no delivery key"
    );
    // The well-formed version opens.
    let mut ok = a.dk.as_bytes().to_vec();
    ok.push(b'x');
    let env = seal_raw(&a, &to, &pad(&ok), &[8; 32]);
    assert_eq!(&open(&b.keys, &env).unwrap().content[..], b"x");
}

#[test]
fn delivery_key_is_wiped_on_drop() {
    const fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<DeliveryKey>();
}

#[test]
fn delivery_tokens() {
    let mut rng = ChaCha20Rng::from_seed([4; 32]);
    let a = DeviceIdentityKeyPair::generate(&mut rng);
    let b = DeviceIdentityKeyPair::generate(&mut rng);
    let a0 = DeliveryKey::derive(&a, 0);
    let a1 = DeliveryKey::derive(&a, 1);
    let b0 = DeliveryKey::derive(&b, 0);
    assert!(a0.ct_eq(&DeliveryKey::derive(&a, 0)));
    assert!(!a0.ct_eq(&a1) && !a0.ct_eq(&b0));
    assert_eq!(a0.token(), DeliveryKey::derive(&a, 0).token());
    assert_ne!(a0.token(), a1.token());
    assert_ne!(a0.token(), b0.token());
    let t = a0.token();
    let mut other = *t.as_bytes();
    other[15] ^= 1;
    assert!(!t.ct_eq(&DeliveryToken::from_bytes(other)));
    assert!(t.ct_eq(&DeliveryToken::from_bytes(*t.as_bytes())));
    assert_eq!(format!("{t:?}"), "DeliveryToken(…)");
}
