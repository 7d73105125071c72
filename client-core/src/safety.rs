//! Safety numbers.
//!
//! A safety number lets two Hush users check, out of band, that each of them holds the other's
//! genuine account identity key (the Ed25519 account identity public key, 32 bytes). It is
//! computed from public keys only; nothing in this module is secret.
//!
//! # Per-account fingerprint (version 0)
//!
//! For one 32-byte account identity public key `K` (the raw Ed25519 public key encoding):
//!
//! ```text
//! h_0     = SHA-512( 0x00 0x00 || K || "Hush-SafetyNumber-v1" )
//! h_(i+1) = SHA-512( h_i || K )                for i = 0, 1, ..., 5198
//! fingerprint(K) = first 30 bytes of h_5199
//! ```
//!
//! * `0x00 0x00` is the fingerprint version, [`FINGERPRINT_VERSION`] = 0, as a big-endian
//!   `u16`.
//! * `"Hush-SafetyNumber-v1"` is the 20 ASCII bytes of [`FINGERPRINT_LABEL`], with no length
//!   prefix and no terminator.
//! * SHA-512 is applied [`ITERATIONS`] = 5200 times in total: once to produce `h_0`, then 5199
//!   more times, so the result is `h_5199`. Every input of the chain after `h_0` is exactly
//!   96 bytes (64-byte digest followed by the 32-byte key).
//!
//! # Rendering a fingerprint as 30 digits
//!
//! The 30-byte fingerprint is split into 6 consecutive chunks of 5 bytes. Each chunk is read as
//! an unsigned 40-bit big-endian integer `n`, reduced as `n mod 100000`, and written as exactly
//! 5 decimal ASCII digits, zero-padded on the left. The 6 groups are concatenated in order,
//! giving 30 digits.
//!
//! # The safety number (60 digits)
//!
//! Given the two 30-digit strings of the local and the remote account, the displayed safety
//! number is the lexicographically smaller string (equivalently: the numerically smaller one;
//! both have 30 digits) followed by the larger one. If both are equal the order is irrelevant.
//! Both users therefore see the same 60 digits. For display the 60 digits are shown as 12
//! groups of 5 digits separated by single ASCII spaces.
//!
//! # QR payload (version 1)
//!
//! The QR code shown by a device encodes 61 bytes:
//!
//! ```text
//! 0x01 || fingerprint(local account key) || fingerprint(remote account key)
//! ```
//!
//! where "local" is the account of the device showing the code. The device scanning it
//! compares the payload's local part with its own *remote* fingerprint and the payload's remote
//! part with its own *local* fingerprint (in constant time); both must be equal for a
//! [`Comparison::Match`]. A payload whose first byte is not [`QR_VERSION`] is rejected with
//! [`SafetyNumberError::UnsupportedVersion`]; an empty payload, or a version-1 payload that is
//! not exactly [`QR_PAYLOAD_LEN`] bytes long, with [`SafetyNumberError::Malformed`].

use core::fmt;

use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Version of the fingerprint derivation, hashed as a big-endian `u16` into `h_0`.
pub const FINGERPRINT_VERSION: u16 = 0;

/// Domain-separation label hashed into `h_0` (20 ASCII bytes).
pub const FINGERPRINT_LABEL: &[u8] = b"Hush-SafetyNumber-v1";

/// Total number of SHA-512 invocations in the fingerprint chain (including `h_0`).
pub const ITERATIONS: u32 = 5200;

/// Length in bytes of a per-account fingerprint.
pub const FINGERPRINT_LEN: usize = 30;

/// Number of decimal digits rendered for one fingerprint.
pub const FINGERPRINT_DIGITS: usize = 30;

/// Number of decimal digits in a safety number.
pub const SAFETY_NUMBER_DIGITS: usize = 2 * FINGERPRINT_DIGITS;

/// Version byte that starts a QR payload.
pub const QR_VERSION: u8 = 0x01;

/// Length in bytes of a QR payload: version byte plus two fingerprints.
pub const QR_PAYLOAD_LEN: usize = 1 + 2 * FINGERPRINT_LEN;

/// Bytes per rendered chunk of a fingerprint.
const CHUNK_BYTES: usize = 5;

/// Each chunk is reduced modulo this value and rendered as 5 digits.
const CHUNK_MODULUS: u64 = 100_000;

/// Digits per displayed group.
const GROUP_DIGITS: usize = 5;

/// Errors from interpreting a scanned QR payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SafetyNumberError {
    /// The payload is empty or does not have the length its version requires.
    #[error("malformed safety number payload")]
    Malformed,
    /// The payload starts with a version byte this implementation does not know.
    #[error("unsupported safety number payload version {0}")]
    UnsupportedVersion(u8),
}

/// Result of comparing a scanned QR payload with our own safety number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// The other device holds exactly the keys we hold: the identities are verified.
    Match,
    /// At least one of the two account keys differs between the devices.
    Mismatch,
}

/// A 30-byte per-account fingerprint (see the [module documentation](self)).
pub type Fingerprint = [u8; FINGERPRINT_LEN];

/// Computes the 30-byte fingerprint of one account identity public key.
#[must_use]
pub fn fingerprint(account_key: &[u8; 32]) -> Fingerprint {
    let mut hash = Sha512::new()
        .chain_update(FINGERPRINT_VERSION.to_be_bytes())
        .chain_update(account_key)
        .chain_update(FINGERPRINT_LABEL)
        .finalize();
    for _ in 1..ITERATIONS {
        hash = Sha512::new()
            .chain_update(hash)
            .chain_update(account_key)
            .finalize();
    }
    let mut out = [0u8; FINGERPRINT_LEN];
    for (dst, src) in out.iter_mut().zip(hash.iter()) {
        *dst = *src;
    }
    out
}

/// Renders a fingerprint as its 30 decimal digits.
#[must_use]
pub fn fingerprint_digits(fingerprint: &Fingerprint) -> String {
    let mut out = String::with_capacity(FINGERPRINT_DIGITS);
    for chunk in fingerprint.chunks_exact(CHUNK_BYTES) {
        let value = chunk
            .iter()
            .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
        out.push_str(&format!("{:05}", value % CHUNK_MODULUS));
    }
    out
}

/// The safety number of a conversation between a local and a remote account.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SafetyNumber {
    local: Fingerprint,
    remote: Fingerprint,
}

impl SafetyNumber {
    /// Computes the safety number between our account key and the peer's account key.
    #[must_use]
    pub fn new(local_key: &[u8; 32], remote_key: &[u8; 32]) -> Self {
        Self {
            local: fingerprint(local_key),
            remote: fingerprint(remote_key),
        }
    }

    /// Our account's fingerprint.
    #[must_use]
    pub fn local_fingerprint(&self) -> &Fingerprint {
        &self.local
    }

    /// The peer account's fingerprint.
    #[must_use]
    pub fn remote_fingerprint(&self) -> &Fingerprint {
        &self.remote
    }

    /// The 60-digit safety number; identical on both sides of the conversation.
    #[must_use]
    pub fn digits(&self) -> String {
        let local = fingerprint_digits(&self.local);
        let remote = fingerprint_digits(&self.remote);
        let (first, second) = if local <= remote {
            (local, remote)
        } else {
            (remote, local)
        };
        let mut out = first;
        out.push_str(&second);
        out
    }

    /// The 60 digits as 12 groups of 5 separated by single spaces.
    #[must_use]
    pub fn display_groups(&self) -> String {
        let digits = self.digits();
        let groups = SAFETY_NUMBER_DIGITS / GROUP_DIGITS;
        let mut out = String::with_capacity(SAFETY_NUMBER_DIGITS + groups.saturating_sub(1));
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && i % GROUP_DIGITS == 0 {
                out.push(' ');
            }
            out.push(c);
        }
        out
    }

    /// The bytes to encode in the QR code this device shows:
    /// `0x01 || local fingerprint || remote fingerprint`.
    #[must_use]
    pub fn qr_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(QR_PAYLOAD_LEN);
        out.push(QR_VERSION);
        out.extend_from_slice(&self.local);
        out.extend_from_slice(&self.remote);
        out
    }

    /// Compares a QR payload scanned from the other device with this safety number.
    ///
    /// The payload is the other device's [`qr_payload`](Self::qr_payload), so its local part
    /// must equal our remote fingerprint and its remote part our local fingerprint. The
    /// comparison is constant-time.
    ///
    /// # Errors
    ///
    /// [`SafetyNumberError::UnsupportedVersion`] if the first byte is not [`QR_VERSION`];
    /// [`SafetyNumberError::Malformed`] if the payload is empty or not [`QR_PAYLOAD_LEN`]
    /// bytes long.
    pub fn compare_scanned(&self, scanned: &[u8]) -> Result<Comparison, SafetyNumberError> {
        let (version, body) = scanned.split_first().ok_or(SafetyNumberError::Malformed)?;
        if *version != QR_VERSION {
            return Err(SafetyNumberError::UnsupportedVersion(*version));
        }
        if body.len() != 2 * FINGERPRINT_LEN {
            return Err(SafetyNumberError::Malformed);
        }
        let (their_local, their_remote) = body
            .split_at_checked(FINGERPRINT_LEN)
            .ok_or(SafetyNumberError::Malformed)?;
        let equal = their_local.ct_eq(&self.remote) & their_remote.ct_eq(&self.local);
        if bool::from(equal) {
            Ok(Comparison::Match)
        } else {
            Ok(Comparison::Mismatch)
        }
    }
}

impl fmt::Display for SafetyNumber {
    /// Formats as [`display_groups`](Self::display_groups).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_groups())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 §7.1 TEST 1 public key.
    const KEY_A: [u8; 32] = [
        0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07,
        0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07,
        0x51, 0x1a,
    ];
    /// RFC 8032 §7.1 TEST 2 public key.
    const KEY_B: [u8; 32] = [
        0x3d, 0x40, 0x17, 0xc3, 0xe8, 0x43, 0x89, 0x5a, 0x92, 0xb7, 0x0a, 0xa7, 0x4d, 0x1b, 0x7e,
        0xbc, 0x9c, 0x98, 0x2c, 0xcf, 0x2e, 0xc4, 0x96, 0x8c, 0xc0, 0xcd, 0x55, 0xf1, 0x2a, 0xf4,
        0x66, 0x0c,
    ];
    const KEY_C: [u8; 32] = [0x42; 32];

    // Pinned values, cross-checked with an independent implementation of the documented
    // algorithm (Python `hashlib`).
    const FP_A: [u8; 30] = [
        0xa3, 0x31, 0x96, 0xee, 0xd2, 0x4b, 0x75, 0x2a, 0xb2, 0x78, 0xd3, 0x1c, 0x14, 0x07, 0x14,
        0x86, 0xbd, 0x30, 0xa9, 0xbe, 0x0b, 0xec, 0x70, 0x61, 0x24, 0x5a, 0x77, 0x0a, 0xfb, 0x66,
    ];
    const DIGITS_A: &str = "443707967274036006702813265062";
    const DIGITS_B: &str = "443493611414448204499168955210";
    const DIGITS_AB: &str = "443493611414448204499168955210443707967274036006702813265062";

    #[test]
    fn fingerprint_is_pinned() {
        assert_eq!(fingerprint(&KEY_A), FP_A);
        assert_eq!(fingerprint_digits(&fingerprint(&KEY_A)), DIGITS_A);
        assert_eq!(fingerprint_digits(&fingerprint(&KEY_B)), DIGITS_B);
    }

    #[test]
    fn stability() {
        let sn = SafetyNumber::new(&KEY_A, &KEY_B);
        assert_eq!(sn.digits(), DIGITS_AB);
        assert_eq!(
            sn.display_groups(),
            "44349 36114 14448 20449 91689 55210 44370 79672 74036 00670 28132 65062"
        );
        assert_eq!(sn.to_string(), sn.display_groups());
    }

    #[test]
    fn symmetry() {
        let ab = SafetyNumber::new(&KEY_A, &KEY_B);
        let ba = SafetyNumber::new(&KEY_B, &KEY_A);
        assert_eq!(ab.digits(), ba.digits());
        assert_eq!(ab.display_groups(), ba.display_groups());
        let ac = SafetyNumber::new(&KEY_A, &KEY_C);
        let ca = SafetyNumber::new(&KEY_C, &KEY_A);
        assert_eq!(ac.digits(), ca.digits());
        assert_ne!(ab.digits(), ac.digits());
    }

    #[test]
    fn digits_format() {
        for (l, r) in [(&KEY_A, &KEY_B), (&KEY_A, &KEY_C), (&KEY_C, &KEY_C)] {
            let sn = SafetyNumber::new(l, r);
            let digits = sn.digits();
            assert_eq!(digits.len(), SAFETY_NUMBER_DIGITS);
            assert!(digits.bytes().all(|b| b.is_ascii_digit()));
            let groups = sn.display_groups();
            let parts: Vec<&str> = groups.split(' ').collect();
            assert_eq!(parts.len(), 12);
            assert!(parts.iter().all(|p| p.len() == 5));
            assert_eq!(parts.concat(), digits);
        }
    }

    #[test]
    fn chunk_rendering_is_zero_padded_mod_100000() {
        let mut fp = [0u8; 30];
        // First chunk: 0x00_0000_0001 -> "00001"; second: 2^40 - 1 = 1099511627775 -> "27775".
        fp[4] = 1;
        fp[5..10].copy_from_slice(&[0xff; 5]);
        // Third chunk: 100000 -> "00000".
        fp[10..15].copy_from_slice(&[0x00, 0x00, 0x01, 0x86, 0xa0]);
        assert_eq!(fingerprint_digits(&fp), "000012777500000000000000000000");
    }

    #[test]
    fn qr_round_trip_matches() {
        let alice = SafetyNumber::new(&KEY_A, &KEY_B);
        let bob = SafetyNumber::new(&KEY_B, &KEY_A);
        let payload = alice.qr_payload();
        assert_eq!(payload.len(), QR_PAYLOAD_LEN);
        assert_eq!(payload[0], QR_VERSION);
        assert_eq!(&payload[1..31], &FP_A);
        assert_eq!(bob.compare_scanned(&payload), Ok(Comparison::Match));
        assert_eq!(
            alice.compare_scanned(&bob.qr_payload()),
            Ok(Comparison::Match)
        );
    }

    #[test]
    fn own_payload_does_not_match_itself() {
        // Scanning one's own code (local/remote swapped) must not verify for distinct keys.
        let alice = SafetyNumber::new(&KEY_A, &KEY_B);
        assert_eq!(
            alice.compare_scanned(&alice.qr_payload()),
            Ok(Comparison::Mismatch)
        );
    }

    #[test]
    fn mismatch_when_a_key_differs() {
        let alice = SafetyNumber::new(&KEY_A, &KEY_B);
        // Bob sees a MITM key instead of Alice's.
        let bob_mitm = SafetyNumber::new(&KEY_B, &KEY_C);
        assert_eq!(
            alice.compare_scanned(&bob_mitm.qr_payload()),
            Ok(Comparison::Mismatch)
        );
        assert_eq!(
            bob_mitm.compare_scanned(&alice.qr_payload()),
            Ok(Comparison::Mismatch)
        );
        // Alice sees a MITM key instead of Bob's.
        let alice_mitm = SafetyNumber::new(&KEY_A, &KEY_C);
        let bob = SafetyNumber::new(&KEY_B, &KEY_A);
        assert_eq!(
            bob.compare_scanned(&alice_mitm.qr_payload()),
            Ok(Comparison::Mismatch)
        );
        assert_ne!(alice_mitm.digits(), bob.digits());
        // A single flipped bit anywhere in either fingerprint is a mismatch.
        let good = alice.qr_payload();
        for i in 1..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert_eq!(bob.compare_scanned(&bad), Ok(Comparison::Mismatch));
        }
    }

    #[test]
    fn malformed_and_unsupported_payloads() {
        let sn = SafetyNumber::new(&KEY_A, &KEY_B);
        let good = SafetyNumber::new(&KEY_B, &KEY_A).qr_payload();

        assert_eq!(sn.compare_scanned(&[]), Err(SafetyNumberError::Malformed));
        assert_eq!(
            sn.compare_scanned(&[QR_VERSION]),
            Err(SafetyNumberError::Malformed)
        );
        assert_eq!(
            sn.compare_scanned(&good[..good.len() - 1]),
            Err(SafetyNumberError::Malformed)
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(sn.compare_scanned(&long), Err(SafetyNumberError::Malformed));

        for version in [0x00, 0x02, 0xff] {
            let mut other = good.clone();
            other[0] = version;
            assert_eq!(
                sn.compare_scanned(&other),
                Err(SafetyNumberError::UnsupportedVersion(version))
            );
        }
        assert_eq!(
            sn.compare_scanned(&[0x07]),
            Err(SafetyNumberError::UnsupportedVersion(0x07))
        );
        // Every length of a version-1 payload except the right one is malformed.
        for len in 1..=2 * QR_PAYLOAD_LEN {
            let payload = vec![QR_VERSION; len];
            let result = sn.compare_scanned(&payload);
            if len == QR_PAYLOAD_LEN {
                assert_eq!(result, Ok(Comparison::Mismatch));
            } else {
                assert_eq!(result, Err(SafetyNumberError::Malformed));
            }
        }
    }
}
