//! `safety_numbers.json`: the safety numbers of three account pairs, and the results of comparing
//! scanned QR payloads.

use hush_core::consts::KEY_LEN;
use hush_core::keys::AccountKeyPair;
use hush_core::safety::{self, SafetyNumber};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{FORMAT_VERSION, GenResult, draw, ensure, flip, hx, seed};

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/// The safety number of two accounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyNumberVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// Account A secret (32 bytes).
    pub account_a_secret: String,
    /// Account A public key (32 bytes).
    pub account_a_public: String,
    /// Account B secret (32 bytes).
    pub account_b_secret: String,
    /// Account B public key (32 bytes).
    pub account_b_public: String,
    /// fingerprint(A) (30 bytes).
    pub fingerprint_a: String,
    /// fingerprint(B) (30 bytes).
    pub fingerprint_b: String,
    /// The 30 digits of A.
    pub digits_a: String,
    /// The 30 digits of B.
    pub digits_b: String,
    /// The 60-digit safety number (same on both sides).
    pub safety_number: String,
    /// The 60 digits as 12 groups of 5 separated by spaces.
    pub safety_number_display: String,
    /// QR payload shown by A (61 bytes: `01 || fp(A) || fp(B)`).
    pub qr_payload_a: String,
    /// QR payload shown by B (61 bytes: `01 || fp(B) || fp(A)`).
    pub qr_payload_b: String,
}

/// One scan: a device with (local, remote) account keys compares a scanned payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyComparisonVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// The scanning device's own account key (32 bytes).
    pub local_account: String,
    /// The account key it holds for its peer (32 bytes).
    pub remote_account: String,
    /// The scanned payload (any length).
    pub scanned_payload: String,
    /// `"Match"`, `"Mismatch"`, `"Malformed"` or `"UnsupportedVersion"`.
    pub expected: String,
}

/// `safety_numbers.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyFile {
    /// `"safety_numbers"`.
    pub file: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the file holds.
    pub description: String,
    /// Safety numbers of account pairs.
    pub vectors: Vec<SafetyNumberVector>,
    /// Scans and their results.
    pub comparisons: Vec<SafetyComparisonVector>,
}

// ---------------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------------

/// Draws account A's secret, then account B's.
fn safety_pair(index: usize) -> GenResult<(SafetyNumberVector, [u8; KEY_LEN], [u8; KEY_LEN])> {
    let seed = seed("safety_numbers", index)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let a_secret = draw(&mut rng);
    let b_secret = draw(&mut rng);
    let a = *AccountKeyPair::from_secret_bytes(&a_secret).id().as_bytes();
    let b = *AccountKeyPair::from_secret_bytes(&b_secret).id().as_bytes();
    let sa = SafetyNumber::new(&a, &b);
    let sb = SafetyNumber::new(&b, &a);
    ensure(sa.digits() == sb.digits(), "both sides see the same digits")?;
    let (fa, fb) = (safety::fingerprint(&a), safety::fingerprint(&b));
    Ok((
        SafetyNumberVector {
            name: format!("pair-{index}"),
            description: "Safety number of accounts A and B, as both sides compute it.".to_owned(),
            seed: hx(seed),
            account_a_secret: hx(a_secret),
            account_a_public: hx(a),
            account_b_secret: hx(b_secret),
            account_b_public: hx(b),
            fingerprint_a: hx(fa),
            fingerprint_b: hx(fb),
            digits_a: safety::fingerprint_digits(&fa),
            digits_b: safety::fingerprint_digits(&fb),
            safety_number: sa.digits(),
            safety_number_display: sa.display_groups(),
            qr_payload_a: hx(sa.qr_payload()),
            qr_payload_b: hx(sb.qr_payload()),
        },
        a,
        b,
    ))
}

fn comparison(
    name: &str,
    description: &str,
    local: &[u8; KEY_LEN],
    remote: &[u8; KEY_LEN],
    payload: &[u8],
) -> SafetyComparisonVector {
    let expected = match SafetyNumber::new(local, remote).compare_scanned(payload) {
        Ok(safety::Comparison::Match) => "Match",
        Ok(safety::Comparison::Mismatch) => "Mismatch",
        Err(safety::SafetyNumberError::Malformed) => "Malformed",
        Err(safety::SafetyNumberError::UnsupportedVersion(_)) => "UnsupportedVersion",
    };
    SafetyComparisonVector {
        name: name.to_owned(),
        description: description.to_owned(),
        local_account: hx(local),
        remote_account: hx(remote),
        scanned_payload: hx(payload),
        expected: expected.to_owned(),
    }
}

pub(super) fn safety_file() -> GenResult<SafetyFile> {
    let mut vectors = Vec::new();
    let mut keys = Vec::new();
    for index in 0..3 {
        let (v, a, b) = safety_pair(index)?;
        vectors.push(v);
        keys.push((a, b));
    }
    let [(a, b), (a1, b1), (a2, b2)]: [([u8; 32], [u8; 32]); 3] =
        keys.try_into().map_err(|_| "three pairs")?;
    let mallory = a1;
    let qr = |local: &[u8; 32], remote: &[u8; 32]| SafetyNumber::new(local, remote).qr_payload();
    let mut flipped = qr(&a, &b);
    let last = flipped.len() - 1;
    flip(&mut flipped, last, 0x01)?;
    let mut version2 = qr(&a, &b);
    flip(&mut version2, 0, 0x03)?;
    let truncated = qr(&a, &b).get(..60).ok_or("truncate")?.to_vec();
    let comparisons = vec![
        comparison(
            "pair-0-b-scans-a",
            "Pair 0: B scans A's code.",
            &b,
            &a,
            &qr(&a, &b),
        ),
        comparison(
            "pair-0-a-scans-b",
            "Pair 0: A scans B's code.",
            &a,
            &b,
            &qr(&b, &a),
        ),
        comparison(
            "pair-1-b-scans-a",
            "Pair 1: B scans A's code.",
            &b1,
            &a1,
            &qr(&a1, &b1),
        ),
        comparison(
            "pair-2-a-scans-b",
            "Pair 2: A scans B's code.",
            &a2,
            &b2,
            &qr(&b2, &a2),
        ),
        comparison(
            "own-code",
            "Pair 0: A scans its own code (local and remote swapped): not a match.",
            &a,
            &b,
            &qr(&a, &b),
        ),
        comparison(
            "mitm-b-holds-mallory",
            "Pair 0: B holds Mallory's key (pair 1's account A) instead of A's; A scans B's code.",
            &a,
            &b,
            &qr(&b, &mallory),
        ),
        comparison(
            "mitm-a-holds-mallory",
            "Pair 0: A holds Mallory's key (pair 1's account A) instead of B's; B scans A's code.",
            &b,
            &a,
            &qr(&a, &mallory),
        ),
        comparison(
            "bit-flipped",
            "Pair 0: B scans A's code with the lowest bit of its last byte flipped.",
            &b,
            &a,
            &flipped,
        ),
        comparison(
            "unsupported-version",
            "Pair 0: A's code with version byte 0x02.",
            &b,
            &a,
            &version2,
        ),
        comparison(
            "truncated",
            "Pair 0: A's code without its last byte (60 bytes).",
            &b,
            &a,
            &truncated,
        ),
        comparison("empty", "An empty payload.", &b, &a, &[]),
    ];
    Ok(SafetyFile {
        file: "safety_numbers".to_owned(),
        format_version: FORMAT_VERSION,
        description: "Safety numbers: per-account fingerprints, the 60 digits, the grouped display, the QR payloads, \
                      and the results of comparing scanned payloads."
            .to_owned(),
        vectors,
        comparisons,
    })
}
