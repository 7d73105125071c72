//! WebPush message encryption (RFC 8291 over the `aes128gcm` content coding of RFC 8188), for
//! devices that registered a WebPush subscription (a UnifiedPush distributor, a browser-style
//! push service) instead of a plain webhook.
//!
//! Each wake is sealed for the subscription's P-256 key (`p256dh`) and authentication secret
//! (`auth`) with a fresh ephemeral key pair and a fresh 16-byte salt, as one record of
//! [`RECORD_SIZE`], padded so that every encrypted wake is [`BODY_LEN`] bytes long:
//!
//! ```text
//! salt (16) | rs = 4096 (u32, big-endian) | idlen = 65 (u8) | ephemeral public key (65)
//! | AES-128-GCM( "wake" | 0x02 | zeros ) with its 16-byte tag
//! ```
//!
//! The key schedule is RFC 8291 §3.3–3.4: `IKM = HKDF(salt = auth, ikm = ECDH secret,
//! info = "WebPush: info" 0x00 | ua_public | as_public, 32)`, then `CEK = HKDF(salt, IKM,
//! "Content-Encoding: aes128gcm" 0x00, 16)` and `NONCE = HKDF(salt, IKM, "Content-Encoding:
//! nonce" 0x00, 12)` (the record's sequence number is 0, so the nonce is used as derived).
//!
//! The primitives are ring's (ECDH P-256, AES-128-GCM) and the workspace's HKDF-SHA-256.

use std::fmt;

use hkdf::Hkdf;
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{self, ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// Length of a subscription's public key: an uncompressed P-256 point (`0x04 | x | y`).
pub const P256DH_LEN: usize = 65;
/// Length of a subscription's authentication secret.
pub const AUTH_LEN: usize = 16;
/// Length of the salt at the head of every message.
pub const SALT_LEN: usize = 16;
/// The record size written in the header (RFC 8188 §2.1). One record carries the whole wake.
pub const RECORD_SIZE: u32 = 4096;
/// Length of the header: salt, record size, key id length and the ephemeral public key.
pub const HEADER_LEN: usize = SALT_LEN + 4 + 1 + P256DH_LEN;
/// Length of the AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of every encrypted wake body: header, padded record and tag.
pub const BODY_LEN: usize = 256;
/// Length of the record's plaintext: the content, the `0x02` delimiter of a last record, and
/// zero padding up to [`BODY_LEN`].
pub const PADDED_LEN: usize = BODY_LEN - HEADER_LEN - TAG_LEN;

const KEY_INFO: &[u8] = b"WebPush: info\0";
const CEK_INFO: &[u8] = b"Content-Encoding: aes128gcm\0";
const NONCE_INFO: &[u8] = b"Content-Encoding: nonce\0";
/// Padding delimiter of the last (here: only) record (RFC 8188 §2).
const LAST_RECORD: u8 = 0x02;

/// Why a subscription's keys were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// `p256dh` is not 65 bytes.
    #[error("p256dh must be {P256DH_LEN} bytes (an uncompressed P-256 point)")]
    P256dhLength,
    /// `p256dh` does not start with `0x04` (compressed or other encodings are not taken).
    #[error("p256dh must be an uncompressed point (0x04 | x | y)")]
    NotUncompressed,
    /// `p256dh` is not a point on P-256 (or is the point at infinity).
    #[error("p256dh is not a point on P-256")]
    NotOnCurve,
    /// `auth` is not 16 bytes.
    #[error("auth must be {AUTH_LEN} bytes")]
    AuthLength,
    /// Only one of `p256dh` and `auth` was given.
    #[error("p256dh and auth must be given together")]
    Incomplete,
}

/// Why a wake could not be sealed (the system's random source or ring failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("sealing the push message failed")]
pub struct SealError;

impl From<ring::error::Unspecified> for SealError {
    fn from(_: ring::error::Unspecified) -> Self {
        SealError
    }
}

/// A WebPush subscription's keys, checked: the device's P-256 public key and its authentication
/// secret.
///
/// `Debug` shows neither (the secret is zeroized when dropped).
#[derive(Clone, PartialEq, Eq)]
pub struct WebPushKeys {
    p256dh: [u8; P256DH_LEN],
    auth: Zeroizing<[u8; AUTH_LEN]>,
}

impl fmt::Debug for WebPushKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebPushKeys").finish_non_exhaustive()
    }
}

impl WebPushKeys {
    /// Checks a subscription's keys: `p256dh` a 65-byte uncompressed point on P-256, `auth` 16
    /// bytes.
    pub fn parse(p256dh: &[u8], auth: &[u8]) -> Result<WebPushKeys, KeyError> {
        let p256dh: [u8; P256DH_LEN] = p256dh.try_into().map_err(|_| KeyError::P256dhLength)?;
        if p256dh.first() != Some(&0x04) {
            return Err(KeyError::NotUncompressed);
        }
        let auth: [u8; AUTH_LEN] = auth.try_into().map_err(|_| KeyError::AuthLength)?;
        let auth = Zeroizing::new(auth);
        if !on_curve(&p256dh) {
            return Err(KeyError::NotOnCurve);
        }
        Ok(WebPushKeys { p256dh, auth })
    }

    /// Reads the optional keys of a registration: both empty is no keys (a plain webhook),
    /// one of them empty is [`KeyError::Incomplete`].
    pub fn parse_optional(p256dh: &[u8], auth: &[u8]) -> Result<Option<WebPushKeys>, KeyError> {
        match (p256dh.is_empty(), auth.is_empty()) {
            (true, true) => Ok(None),
            (false, false) => WebPushKeys::parse(p256dh, auth).map(Some),
            _ => Err(KeyError::Incomplete),
        }
    }

    /// The subscription's public key.
    pub fn p256dh(&self) -> &[u8; P256DH_LEN] {
        &self.p256dh
    }

    /// The subscription's authentication secret.
    pub fn auth(&self) -> &[u8; AUTH_LEN] {
        &self.auth
    }
}

/// Whether `point` is a valid P-256 public key, as ring's ECDH judges it: an agreement with a
/// throw-away key succeeds only for a point on the curve.
fn on_curve(point: &[u8; P256DH_LEN]) -> bool {
    let rng = SystemRandom::new();
    let Ok(mine) = EphemeralPrivateKey::generate(&ECDH_P256, &rng) else {
        return false;
    };
    agreement::agree_ephemeral(mine, &UnparsedPublicKey::new(&ECDH_P256, point), |_| ()).is_ok()
}

/// Seals `content` for the subscription `keys`: a fresh ephemeral key pair and salt, one record
/// padded to [`BODY_LEN`] bytes in all. `content` must fit (`content.len() < PADDED_LEN`).
pub fn seal(keys: &WebPushKeys, content: &[u8]) -> Result<Vec<u8>, SealError> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    rng.fill(&mut salt)?;
    let ephemeral = EphemeralPrivateKey::generate(&ECDH_P256, &rng)?;
    let public = ephemeral.compute_public_key()?;
    let as_public: &[u8; P256DH_LEN] = public.as_ref().try_into().map_err(|_| SealError)?;
    let peer = UnparsedPublicKey::new(&ECDH_P256, &keys.p256dh);
    agreement::agree_ephemeral(ephemeral, &peer, |secret| {
        seal_with(secret, as_public, keys, &salt, content, PADDED_LEN)
    })?
}

/// The deterministic part of [`seal`]: given the ECDH secret, the sender's (ephemeral) public
/// key and the salt, derives the key and nonce and writes the message, its record padded to
/// `padded_len` bytes (content, delimiter and zeros).
pub(crate) fn seal_with(
    ecdh_secret: &[u8],
    as_public: &[u8; P256DH_LEN],
    keys: &WebPushKeys,
    salt: &[u8; SALT_LEN],
    content: &[u8],
    padded_len: usize,
) -> Result<Vec<u8>, SealError> {
    if content.len() >= padded_len || padded_len + TAG_LEN > RECORD_SIZE as usize {
        return Err(SealError);
    }
    let mut key_info = Vec::with_capacity(KEY_INFO.len() + 2 * P256DH_LEN);
    key_info.extend_from_slice(KEY_INFO);
    key_info.extend_from_slice(&keys.p256dh);
    key_info.extend_from_slice(as_public);
    let mut ikm = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(&keys.auth[..]), ecdh_secret)
        .expand(&key_info, &mut ikm[..])
        .map_err(|_| SealError)?;
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm[..]);
    let mut cek = Zeroizing::new([0u8; 16]);
    prk.expand(CEK_INFO, &mut cek[..]).map_err(|_| SealError)?;
    let mut nonce = [0u8; 12];
    prk.expand(NONCE_INFO, &mut nonce).map_err(|_| SealError)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek[..])?);

    let mut body = Vec::with_capacity(HEADER_LEN + padded_len + TAG_LEN);
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(P256DH_LEN as u8);
    body.extend_from_slice(as_public);
    let mut record = Zeroizing::new(Vec::with_capacity(padded_len + TAG_LEN));
    record.extend_from_slice(content);
    record.push(LAST_RECORD);
    record.resize(padded_len, 0);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut *record,
    )?;
    nonce.zeroize();
    body.extend_from_slice(&record);
    Ok(body)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    fn b64(s: &str) -> Vec<u8> {
        B64.decode(s).unwrap()
    }

    // RFC 8291 ("Message Encryption for Web Push"), Appendix A: the published example's inputs
    // and its encrypted message, base64url as printed there.
    const RFC_PLAINTEXT: &[u8] = b"When I grow up, I want to be a watermelon";
    const RFC_AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
    const RFC_AS_PUBLIC: &str =
        "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
    const RFC_UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
    const RFC_UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const RFC_SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    const RFC_AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const RFC_BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";

    /// Valid keys for tests elsewhere (the RFC example's subscription).
    pub(crate) fn sample_keys() -> WebPushKeys {
        rfc_keys()
    }

    fn rfc_keys() -> WebPushKeys {
        WebPushKeys::parse(&b64(RFC_UA_PUBLIC), &b64(RFC_AUTH)).unwrap()
    }

    /// ECDH of the RFC's sender private key and receiver public key (ring takes no fixed
    /// private key, so the test computes this one with the p256 crate).
    fn rfc_ecdh_secret() -> Vec<u8> {
        let sender = p256::SecretKey::from_slice(&b64(RFC_AS_PRIVATE)).unwrap();
        let receiver = p256::PublicKey::from_sec1_bytes(&b64(RFC_UA_PUBLIC)).unwrap();
        sender.diffie_hellman(&receiver).raw_secret_bytes().to_vec()
    }

    #[test]
    fn rfc_8291_appendix_a_example_is_reproduced_byte_for_byte() {
        let sender = p256::SecretKey::from_slice(&b64(RFC_AS_PRIVATE)).unwrap();
        assert_eq!(
            sender.public_key().to_sec1_bytes().to_vec(),
            b64(RFC_AS_PUBLIC)
        );
        let receiver = p256::SecretKey::from_slice(&b64(RFC_UA_PRIVATE)).unwrap();
        assert_eq!(
            receiver.public_key().to_sec1_bytes().to_vec(),
            b64(RFC_UA_PUBLIC)
        );
        let as_public: [u8; P256DH_LEN] = b64(RFC_AS_PUBLIC).try_into().unwrap();
        let salt: [u8; SALT_LEN] = b64(RFC_SALT).try_into().unwrap();
        // The example pads nothing: the record is the plaintext and its delimiter.
        let body = seal_with(
            &rfc_ecdh_secret(),
            &as_public,
            &rfc_keys(),
            &salt,
            RFC_PLAINTEXT,
            RFC_PLAINTEXT.len() + 1,
        )
        .unwrap();
        assert_eq!(B64.encode(&body), RFC_BODY);
    }

    /// The receiving side, written from RFC 8291 §3.4 and RFC 8188 §2 for the tests.
    pub(crate) fn open(body: &[u8], ua_private: &p256::SecretKey, auth: &[u8; 16]) -> Vec<u8> {
        let salt = &body[..16];
        assert_eq!(u32::from_be_bytes(body[16..20].try_into().unwrap()), 4096);
        assert_eq!(body[20], 65);
        let as_public = &body[21..86];
        let sender = p256::PublicKey::from_sec1_bytes(as_public).unwrap();
        let secret = ua_private.diffie_hellman(&sender);
        let ua_public = ua_private.public_key().to_sec1_bytes();
        let mut info = b"WebPush: info\0".to_vec();
        info.extend_from_slice(&ua_public);
        info.extend_from_slice(as_public);
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(auth), secret.raw_secret_bytes())
            .expand(&info, &mut ikm)
            .unwrap();
        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let mut cek = [0u8; 16];
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
            .unwrap();
        let mut nonce = [0u8; 12];
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
            .unwrap();
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).unwrap());
        let mut record = body[86..].to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut record,
            )
            .unwrap();
        let end = plain.iter().rposition(|&b| b != 0).unwrap();
        assert_eq!(plain[end], 0x02, "last-record delimiter");
        plain[..end].to_vec()
    }

    #[test]
    fn rfc_example_opens_with_the_receiver_key() {
        let receiver = p256::SecretKey::from_slice(&b64(RFC_UA_PRIVATE)).unwrap();
        let auth: [u8; 16] = b64(RFC_AUTH).try_into().unwrap();
        assert_eq!(open(&b64(RFC_BODY), &receiver, &auth), RFC_PLAINTEXT);
    }

    #[test]
    fn every_sealed_wake_is_fresh_and_the_same_length() {
        let receiver = p256::SecretKey::from_slice(&b64(RFC_UA_PRIVATE)).unwrap();
        let auth: [u8; 16] = b64(RFC_AUTH).try_into().unwrap();
        let keys = rfc_keys();
        let a = seal(&keys, super::super::WAKE_BODY).unwrap();
        let b = seal(&keys, super::super::WAKE_BODY).unwrap();
        assert_eq!(a.len(), BODY_LEN);
        assert_eq!(b.len(), BODY_LEN);
        assert_ne!(a[..16], b[..16], "fresh salt");
        assert_ne!(a[21..86], b[21..86], "fresh ephemeral key");
        assert_ne!(a[86..], b[86..]);
        assert_eq!(open(&a, &receiver, &auth), b"wake");
        assert_eq!(open(&b, &receiver, &auth), b"wake");
    }

    #[test]
    fn malformed_keys_are_refused_with_their_reason() {
        let good = b64(RFC_UA_PUBLIC);
        let auth = b64(RFC_AUTH);
        assert!(WebPushKeys::parse(&good, &auth).is_ok());
        assert_eq!(
            WebPushKeys::parse(&good[..64], &auth),
            Err(KeyError::P256dhLength)
        );
        let mut compressed = good[..33].to_vec();
        compressed[0] = 0x02;
        assert_eq!(
            WebPushKeys::parse(&compressed, &auth),
            Err(KeyError::P256dhLength)
        );
        let mut tagged = good.clone();
        tagged[0] = 0x06;
        assert_eq!(
            WebPushKeys::parse(&tagged, &auth),
            Err(KeyError::NotUncompressed)
        );
        let mut off = good.clone();
        off[64] ^= 1;
        assert_eq!(WebPushKeys::parse(&off, &auth), Err(KeyError::NotOnCurve));
        let mut zero = vec![0u8; 65];
        zero[0] = 4;
        assert_eq!(WebPushKeys::parse(&zero, &auth), Err(KeyError::NotOnCurve));
        assert_eq!(
            WebPushKeys::parse(&good, &auth[..15]),
            Err(KeyError::AuthLength)
        );
        assert_eq!(
            WebPushKeys::parse(&good, &[auth.clone(), vec![0]].concat()),
            Err(KeyError::AuthLength)
        );
        assert_eq!(WebPushKeys::parse_optional(&[], &[]), Ok(None));
        assert_eq!(
            WebPushKeys::parse_optional(&good, &[]),
            Err(KeyError::Incomplete)
        );
        assert_eq!(
            WebPushKeys::parse_optional(&[], &auth),
            Err(KeyError::Incomplete)
        );
    }

    #[test]
    fn debug_shows_no_key_material() {
        let keys = rfc_keys();
        let shown = format!("{keys:?}");
        assert_eq!(shown, "WebPushKeys { .. }");
    }
}
