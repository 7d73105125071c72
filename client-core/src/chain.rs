//! The symmetric-key chain shared by the Double Ratchet's sending and receiving chains and by
//! sender keys.
//!
//! ```text
//! message key  mk_i   = HMAC-SHA256(ck_i, 0x01)      MESSAGE_KEY_SEED
//! chain key    ck_i+1 = HMAC-SHA256(ck_i, 0x02)      CHAIN_KEY_SEED
//! AEAD key ‖ nonce    = HKDF-SHA256(salt = 32 zero bytes, ikm = mk_i, info)[0..44]
//! ```
//!
//! Only the HKDF info differs between the two users (`MESSAGE_KEY_INFO` for pairwise messages,
//! `SENDER_KEY_MESSAGE_INFO` for group messages), so a message key of one kind never opens a
//! message of the other. Every secret here is zeroized on drop and has no `Debug`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::consts::{CHAIN_KEY_SEED, KEY_LEN, MESSAGE_KEY_SEED};
use crate::error::{AuthError, ProtocolError, Result};

/// A 32-byte secret, zeroized on drop, without `Debug`.
pub(crate) type Secret = Zeroizing<[u8; KEY_LEN]>;

/// Length of the ChaCha20-Poly1305 nonce taken from the expansion.
const NONCE_LEN: usize = 12;

/// One step of a chain: `(message key, next chain key)`. The HMAC key schedule is computed once
/// and used for both outputs.
pub fn step(chain_key: &[u8; KEY_LEN]) -> (Secret, Secret) {
    let mut mk = Zeroizing::new([0u8; KEY_LEN]);
    let mut next = Zeroizing::new([0u8; KEY_LEN]);
    // HMAC accepts keys of any length, so construction cannot fail.
    if let Ok(base) = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(chain_key) {
        let mut a = base.clone();
        a.update(&[MESSAGE_KEY_SEED]);
        mk.copy_from_slice(&a.finalize().into_bytes());
        let mut b = base;
        b.update(&[CHAIN_KEY_SEED]);
        next.copy_from_slice(&b.finalize().into_bytes());
    }
    (mk, next)
}

/// The chain key `steps` positions after `chain_key`.
pub(crate) fn skip(chain_key: &[u8; KEY_LEN], steps: u32) -> Secret {
    let mut ck = Zeroizing::new(*chain_key);
    for _ in 0..steps {
        ck = step(&ck).1;
    }
    ck
}

/// Message keys of a chain whose key at index `from` is `chain_key`, up to and including index
/// `to`: (keys for `from..to`, key for `to`, chain key for `to + 1`). A jump of more than `limit`
/// positions is refused before anything is derived.
#[allow(clippy::type_complexity)]
pub(crate) fn advance(
    chain_key: &[u8; KEY_LEN],
    from: u32,
    to: u32,
    limit: u32,
) -> Result<(Vec<(u32, Secret)>, Secret, Secret)> {
    let jump = u64::from(to).saturating_sub(u64::from(from));
    if jump > u64::from(limit) {
        return Err(ProtocolError::TooFarAhead { skip: jump, limit }.into());
    }
    let mut skipped = Vec::with_capacity(usize::try_from(jump).unwrap_or(0));
    let mut ck = Zeroizing::new(*chain_key);
    let mut i = from;
    loop {
        let (mk, next) = step(&ck);
        ck = next;
        if i >= to {
            return Ok((skipped, mk, ck));
        }
        skipped.push((i, mk));
        i += 1;
    }
}

/// Expands a message key into the AEAD key and nonce, under HKDF `info`.
fn message_cipher(mk: &[u8; KEY_LEN], info: &[u8]) -> (ChaCha20Poly1305, Nonce) {
    let hk = Hkdf::<Sha256>::new(Some(&[0u8; KEY_LEN]), mk);
    let mut okm = Zeroizing::new([0u8; KEY_LEN + NONCE_LEN]);
    // 44 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand(info, okm.as_mut());
    let (k, n) = okm.split_at(KEY_LEN);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(k);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(n);
    (ChaCha20Poly1305::new(&Key::from(*key)), Nonce::from(nonce))
}

/// Seals `plaintext` under message key `mk` (expanded with `info`) with associated data `ad`.
pub(crate) fn seal(
    mk: &[u8; KEY_LEN],
    info: &[u8],
    ad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let (cipher, nonce) = message_cipher(mk, info);
    cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: ad,
            },
        )
        .map_err(|_| ProtocolError::TooLarge(plaintext.len()).into())
}

/// Opens `ciphertext` under message key `mk` (expanded with `info`) with associated data `ad`.
pub(crate) fn open(
    mk: &[u8; KEY_LEN],
    info: &[u8],
    ad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let (cipher, nonce) = message_cipher(mk, info);
    cipher
        .decrypt(
            &nonce,
            Payload {
                msg: ciphertext,
                aad: ad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| AuthError::DecryptFailed.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hmac_one(key: &[u8; KEY_LEN], input: u8) -> [u8; KEY_LEN] {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).unwrap();
        mac.update(&[input]);
        mac.finalize().into_bytes().into()
    }

    #[test]
    fn step_is_two_separate_hmacs() {
        let ck = [7u8; KEY_LEN];
        let (mk, next) = step(&ck);
        assert_eq!(*mk, hmac_one(&ck, MESSAGE_KEY_SEED));
        assert_eq!(*next, hmac_one(&ck, CHAIN_KEY_SEED));
    }

    #[test]
    fn advance_matches_single_steps_and_enforces_the_limit() {
        let ck = [3u8; KEY_LEN];
        let (skipped, mk, next) = advance(&ck, 5, 8, 3).unwrap();
        let mut c = Zeroizing::new(ck);
        for (i, (index, key)) in skipped.iter().enumerate() {
            let (m, n) = step(&c);
            assert_eq!(*index, 5 + i as u32);
            assert_eq!(**key, *m);
            c = n;
        }
        let (m, n) = step(&c);
        assert_eq!(*mk, *m);
        assert_eq!(*next, *n);
        assert_eq!(*skip(&ck, 4), *next);
        assert!(matches!(
            advance(&ck, 5, 9, 3),
            Err(crate::Error::Protocol(ProtocolError::TooFarAhead {
                skip: 4,
                limit: 3
            }))
        ));
    }

    #[test]
    fn the_info_separates_message_kinds() {
        let mk = [9u8; KEY_LEN];
        let ct = seal(&mk, b"one", b"ad", b"hello").unwrap();
        assert_eq!(&*open(&mk, b"one", b"ad", &ct).unwrap(), b"hello");
        assert!(open(&mk, b"two", b"ad", &ct).is_err());
        assert!(open(&mk, b"one", b"da", &ct).is_err());
    }
}
