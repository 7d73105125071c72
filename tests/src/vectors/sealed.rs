//! `sealed.json`: sealed envelopes of several content lengths across the padding buckets (the
//! linear region and the Padmé region), with every key and intermediate, and delivery keys and
//! tokens of two devices at epochs 0 and 1.
//!
//! Every envelope is built twice: by hand here (x25519-dalek, hkdf, chacha20poly1305 and the
//! byte layout of PROTOCOL.md §21 written out) and through `hush_core::sealed`; the two must agree
//! and hush-core must open it, or nothing is written.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use hush_core::consts::KEY_LEN;
use hush_core::sealed::{self, DeliveryKey};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{
    ALICE_DEVICE_ID, BOB_DEVICE_ID, DeviceKeysRecord, DeviceSecrets, FORMAT_VERSION, GenResult,
    Party, draw, ensure, hx, seed, x25519, x25519_public,
};

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/// One sealed envelope from Alice's device to Bob's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// The sending device (Alice, device 1).
    pub sender: DeviceKeysRecord,
    /// The receiving device (Bob, device 2); only its X25519 identity key is used by sealing.
    pub recipient: DeviceKeysRecord,
    /// The sender's delivery key, epoch 0 (32 bytes).
    pub sender_delivery_key: String,
    /// The content (any length up to `MAX_SEALED_CONTENT_LEN`).
    pub content: String,
    /// Ephemeral X25519 secret `e` (32 bytes, unclamped as drawn).
    pub ephemeral_secret: String,
    /// `e.pub` (32 bytes).
    pub ephemeral_public: String,
    /// `ss1 = X25519(e, IK_R)` (32 bytes).
    pub ss1: String,
    /// `ck`, the first 32 bytes of the first HKDF output.
    pub ck: String,
    /// `k1`, the last 32 bytes of the first HKDF output.
    pub k1: String,
    /// Plaintext of `c1`: `account_S ‖ u32be(device_S) ‖ IKsig_S ‖ IK_S` (100 bytes).
    pub sender_block: String,
    /// `c1` (116 bytes).
    pub c1: String,
    /// `ss2 = X25519(IK_S, IK_R)` (32 bytes).
    pub ss2: String,
    /// `k2` (32 bytes).
    pub k2: String,
    /// Plaintext of `c2`: `DK_S ‖ content ‖ 0x80 ‖ 0x00…`.
    pub padded: String,
    /// `c2` (padded plaintext and tag).
    pub c2: String,
    /// The sealed envelope `0x01 ‖ e.pub ‖ c1 ‖ c2`.
    pub envelope: String,
    /// Its length (a bucket).
    pub envelope_len: u32,
}

/// A device's delivery key and token at one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryKeyVector {
    /// Short unique name.
    pub name: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// X25519 identity secret of the device (32 bytes, unclamped as drawn).
    pub identity_dh_secret: String,
    /// Its public key (32 bytes).
    pub identity_dh_public: String,
    /// The epoch.
    pub epoch: u32,
    /// `HKDF(salt = "hush-delivery-key-v1", ikm = identity DH secret, info = u32be(epoch), 32)`.
    pub delivery_key: String,
    /// `HMAC(delivery_key, "hush-delivery-token-v1")[..16]`.
    pub token: String,
}

/// `sealed.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedFile {
    /// `"sealed"`.
    pub file: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the file holds.
    pub description: String,
    /// Sealed envelopes.
    pub vectors: Vec<SealedVector>,
    /// Delivery keys and tokens.
    pub delivery_keys: Vec<DeliveryKeyVector>,
}

// ---------------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------------

/// Content lengths of the vectors and why each is there.
const CONTENTS: [(usize, &str); 8] = [
    (0, "empty content: the smallest bucket, 320 bytes"),
    (
        16,
        "typing-indicator-sized content: the smallest bucket, 320 bytes",
    ),
    (
        122,
        "the largest content of the smallest bucket (122 + 198 = 320)",
    ),
    (123, "one byte more: the next bucket, 480 bytes"),
    (1000, "a 1000-byte content: 1198 bytes rounded up to 1280"),
    (
        3962,
        "the largest content of the linear region (3962 + 198 = 4160)",
    ),
    (
        3963,
        "one byte more: the Padmé region, 4161 rounded up to a multiple of 256 = 4352",
    ),
    (
        5000,
        "a 5000-byte content: 5198, Padmé rounds up to a multiple of 256 = 5376",
    ),
];

/// Everything a hand-built envelope derives.
pub(super) struct HandSealed {
    pub(super) e_pub: [u8; KEY_LEN],
    pub(super) ss1: [u8; KEY_LEN],
    pub(super) ck: [u8; KEY_LEN],
    pub(super) k1: [u8; KEY_LEN],
    pub(super) sender_block: Vec<u8>,
    pub(super) c1: Vec<u8>,
    pub(super) ss2: [u8; KEY_LEN],
    pub(super) k2: [u8; KEY_LEN],
    pub(super) c2: Vec<u8>,
    pub(super) envelope: Vec<u8>,
}

/// Builds an envelope by hand around the given `c2` plaintext (PROTOCOL.md §21.2).
pub(super) fn seal_by_hand(
    sender: &Party,
    recipient_dh: &[u8; KEY_LEN],
    ephemeral: &[u8; KEY_LEN],
    padded: &[u8],
) -> GenResult<HandSealed> {
    let e_pub = x25519_public(ephemeral);
    let ss1 = x25519(ephemeral, recipient_dh);
    let salt = [&b"hush-seal-v1"[..], recipient_dh, &e_pub].concat();
    let mut okm = [0u8; 64];
    Hkdf::<Sha256>::new(Some(&salt), &ss1)
        .expand(b"hush-seal-v1 sender", &mut okm)
        .map_err(|_| "hkdf")?;
    let (ck, k1) = okm.split_at(KEY_LEN);
    let (ck, k1): ([u8; KEY_LEN], [u8; KEY_LEN]) = (ck.try_into()?, k1.try_into()?);
    let sender_block = [
        &sender.account.id().as_bytes()[..],
        &sender.device_id.to_be_bytes(),
        sender.public().signing_key(),
        sender.public().dh_key(),
    ]
    .concat();
    let c1 = ChaCha20Poly1305::new(&Key::from(k1))
        .encrypt(
            &Nonce::from([0u8; 12]),
            Payload {
                msg: &sender_block,
                aad: &[&[1u8][..], &e_pub, recipient_dh].concat(),
            },
        )
        .map_err(|_| "aead")?;
    let ss2 = x25519(&sender.secrets.dh, recipient_dh);
    let mut k2 = [0u8; KEY_LEN];
    Hkdf::<Sha256>::new(Some(&[&ck[..], &c1].concat()), &ss2)
        .expand(b"hush-seal-v1 content", &mut k2)
        .map_err(|_| "hkdf")?;
    let c2 = ChaCha20Poly1305::new(&Key::from(k2))
        .encrypt(
            &Nonce::from([0u8; 12]),
            Payload {
                msg: padded,
                aad: &[&[1u8][..], &e_pub, &c1].concat(),
            },
        )
        .map_err(|_| "aead")?;
    let envelope = [&[1u8][..], &e_pub, &c1, &c2].concat();
    Ok(HandSealed {
        e_pub,
        ss1,
        ck,
        k1,
        sender_block,
        c1,
        ss2,
        k2,
        c2,
        envelope,
    })
}

/// `DK ‖ content ‖ 0x80 ‖ 0x00…`, as long as the bucket of `content` needs.
pub(super) fn pad_by_hand(dk: &[u8], content: &[u8]) -> Vec<u8> {
    let len = content.len() + 198;
    let bucket = if len <= 4160 {
        len.div_ceil(160) * 160
    } else {
        let e = usize::BITS - 1 - len.leading_zeros();
        let s = u32::BITS - e.leading_zeros();
        let step = 1usize << (e - s);
        len.div_ceil(step) * step
    };
    let mut out = [dk, content, &[0x80]].concat();
    out.resize(bucket - 1 - 32 - 116 - 16, 0);
    out
}

/// The sender (Alice, device 1) and recipient (Bob, device 2) of a sealed vector.
pub(super) fn sealed_parties(rng: &mut ChaCha20Rng) -> (Party, Party) {
    let alice = Party::draw(rng, ALICE_DEVICE_ID);
    let bob = Party::draw(rng, BOB_DEVICE_ID);
    (alice, bob)
}

/// Draws Alice's three secrets, Bob's three, the ephemeral secret, then `content_len` content
/// bytes.
fn sealed_vector(index: usize, content_len: usize, why: &str) -> GenResult<SealedVector> {
    let seed = seed("sealed", index)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let (alice, bob) = sealed_parties(&mut rng);
    let ephemeral: [u8; KEY_LEN] = draw(&mut rng);
    let mut content = vec![0u8; content_len];
    rng.fill_bytes(&mut content);
    let dk = DeliveryKey::derive(&alice.identity, 0);
    let padded = pad_by_hand(dk.as_bytes(), &content);
    ensure(
        padded.as_slice() == sealed::pad(&[&dk.as_bytes()[..], &content].concat()).as_slice(),
        "padding by hand and by hush-core agree",
    )?;
    let hand = seal_by_hand(&alice, bob.public().dh_key(), &ephemeral, &padded)?;
    let core = sealed::seal_with_ephemeral(
        &alice.identity,
        &alice.address(),
        &dk,
        &bob.public(),
        &content,
        &ephemeral,
    )?;
    ensure(
        core == hand.envelope,
        "hand-built envelope equals hush-core's",
    )?;
    ensure(
        core.len() == sealed::sealed_len(content_len),
        "envelope length is sealed_len",
    )?;
    let opened = sealed::open(&bob.identity, &core)?;
    ensure(
        opened.from == alice.address()
            && opened.identity == alice.public()
            && opened.delivery_key.ct_eq(&dk)
            && opened.content.as_slice() == content.as_slice(),
        "Bob opens the envelope",
    )?;
    Ok(SealedVector {
        name: format!("sealed-{content_len}"),
        description: format!(
            "Alice's device 1 seals {content_len} bytes for Bob's device 2: {why}."
        ),
        seed: hx(seed),
        sender: alice.record(),
        recipient: bob.record(),
        sender_delivery_key: hx(dk.as_bytes()),
        content: hx(&content),
        ephemeral_secret: hx(ephemeral),
        ephemeral_public: hx(hand.e_pub),
        ss1: hx(hand.ss1),
        ck: hx(hand.ck),
        k1: hx(hand.k1),
        sender_block: hx(&hand.sender_block),
        c1: hx(&hand.c1),
        ss2: hx(hand.ss2),
        k2: hx(hand.k2),
        padded: hx(&padded),
        c2: hx(&hand.c2),
        envelope: hx(&core),
        envelope_len: u32::try_from(core.len())?,
    })
}

/// Draws a device's signing secret, then its DH secret; records epochs 0 and 1.
fn delivery_key_vectors(index: usize) -> GenResult<Vec<DeliveryKeyVector>> {
    let seed = seed("sealed-delivery", index)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let secrets = DeviceSecrets::draw(&mut rng);
    let pair = secrets.pair();
    let mut out = Vec::new();
    for epoch in [0u32, 1] {
        let mut dk = [0u8; 32];
        Hkdf::<Sha256>::new(Some(b"hush-delivery-key-v1"), &secrets.dh)
            .expand(&epoch.to_be_bytes(), &mut dk)
            .map_err(|_| "hkdf")?;
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&dk).map_err(|_| "hmac")?;
        mac.update(b"hush-delivery-token-v1");
        let full = mac.finalize().into_bytes();
        let token = full.get(..16).ok_or("hmac output")?;
        let core = DeliveryKey::derive(&pair, epoch);
        ensure(
            core.as_bytes() == &dk,
            "delivery key by hand and by hush-core",
        )?;
        ensure(
            core.token().as_bytes() == token,
            "delivery token by hand and by hush-core",
        )?;
        out.push(DeliveryKeyVector {
            name: format!("device-{index}-epoch-{epoch}"),
            seed: hx(seed),
            identity_dh_secret: hx(secrets.dh),
            identity_dh_public: hx(pair.public().dh_key()),
            epoch,
            delivery_key: hx(dk),
            token: hx(token),
        });
    }
    Ok(out)
}

pub(super) fn sealed_file() -> GenResult<SealedFile> {
    let mut vectors = Vec::new();
    for (index, (len, why)) in CONTENTS.iter().enumerate() {
        vectors.push(sealed_vector(index, *len, why)?);
    }
    let mut delivery_keys = delivery_key_vectors(0)?;
    delivery_keys.extend(delivery_key_vectors(1)?);
    ensure(
        delivery_keys
            .iter()
            .map(|d| &d.token)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 4,
        "tokens differ per device and per epoch",
    )?;
    Ok(SealedFile {
        file: "sealed".to_owned(),
        format_version: FORMAT_VERSION,
        description: "Sealed envelopes (PROTOCOL.md §21) from Alice's device 1 to Bob's device 2 for content lengths \
                      across the padding buckets, with every secret and intermediate; and delivery keys and tokens \
                      of two devices at epochs 0 and 1."
            .to_owned(),
        vectors,
        delivery_keys,
    })
}
