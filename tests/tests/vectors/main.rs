//! The published protocol test vectors (`tests/vectors/*.json`):
//!
//! - `vectors_regenerate_byte_identical`: regenerating from the recorded seeds gives exactly the
//!   committed files.
//! - `vectors_verify_like_a_reviewer`: every vector checks out from its recorded inputs alone (never
//!   from the seed). Wherever possible a value is recomputed twice: independently (x25519-dalek,
//!   ed25519-dalek, ml-kem and the documented formulas) and through hush-core's API.
//!
//! One module per vector file checks that file (`pqxdh`, `double_ratchet`, `device_lists`,
//! `safety_numbers`, `sender_keys`, `sealed`, `negative`, `backup`); this file holds the tests and what the checks
//! share: hex decoding, keys recomputed from their secrets, the scripted RNG, and devices and
//! pre-keys rebuilt from their records. The reviewer checks use only the schema types and
//! `error_name` of `hush_tests::vectors`, never its generator, so they stay independent of the code
//! that wrote the vectors.
#![cfg(test)]
#![allow(missing_docs)]

mod backup;
mod device_lists;
mod double_ratchet;
mod negative;
mod pqxdh;
mod safety_numbers;
mod sealed;
mod sender_keys;

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::path::PathBuf;

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use hush_core::consts::{MAX_SENDER_KEY_JUMP, MAX_SKIP, PROTOCOL_VERSION};
use hush_core::keys::{
    AccountId, AccountKeyPair, DeviceAddress, DeviceIdentity, DeviceIdentityKeyPair,
};
use hush_core::prekeys::{KemPreKeyPair, OneTimePreKeyPair, SignedPreKeyPair};
use hush_core::ratchet;
use hush_proto::{labels, wire};
use hush_tests::vectors::{
    self, DeviceKeysRecord, FILES, KemPreKeyRecord, NegativeFile, NegativeInput,
    OneTimePreKeyRecord, SignedPreKeyRecord,
};
use ml_kem::{Decapsulate, DecapsulationKey768, EncapsulationKey768, KeyExport};
use serde::de::DeserializeOwned;

use self::backup::check_backup_file;
use self::device_lists::check_device_list_file;
use self::double_ratchet::check_ratchet_file;
use self::negative::check_negative_file;
use self::pqxdh::check_pqxdh_file;
use self::safety_numbers::check_safety_file;
use self::sealed::check_sealed_file;
use self::sender_keys::check_sender_keys_file;

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn load<T: DeserializeOwned>(name: &str) -> T {
    let path = vectors_dir().join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Decodes lowercase hex.
fn h(s: &str) -> Vec<u8> {
    assert!(
        !s.bytes().any(|b| b.is_ascii_uppercase()),
        "hex must be lowercase: {s}"
    );
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex {s}: {e}"))
}

/// Decodes lowercase hex of exactly `N` bytes.
fn hn<const N: usize>(s: &str) -> [u8; N] {
    let v = h(s);
    let len = v.len();
    v.try_into()
        .unwrap_or_else(|_| panic!("expected {N} bytes, got {len}: {s}"))
}

fn h32(s: &str) -> [u8; 32] {
    hn::<32>(s)
}

fn x_pub(secret: [u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(secret, x25519_dalek::X25519_BASEPOINT_BYTES)
}

fn x_dh(secret: [u8; 32], public: [u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(secret, public)
}

fn ed_pub(secret: [u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(&secret).verifying_key().to_bytes()
}

/// Strict Ed25519 verification of `signature` over `label || msg`.
fn ed_verify(public: [u8; 32], label: &[u8], msg: &[u8], signature: &[u8]) -> bool {
    let key = VerifyingKey::from_bytes(&public).unwrap();
    let sig = Signature::from_bytes(&signature.try_into().unwrap());
    key.verify_strict(&[label, msg].concat(), &sig).is_ok()
}

/// An RNG that returns recorded bytes and nothing else: proves the library draws exactly the
/// randomness a vector records.
struct ScriptedRng(VecDeque<u8>);

impl ScriptedRng {
    fn new(chunks: impl IntoIterator<Item = [u8; 32]>) -> Self {
        Self(chunks.into_iter().flatten().collect())
    }

    fn assert_exhausted(&self, what: &str) {
        assert!(
            self.0.is_empty(),
            "{what}: {} recorded random bytes were not used",
            self.0.len()
        );
    }
}

impl rand_core::TryRng for ScriptedRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for d in dst {
            *d = self
                .0
                .pop_front()
                .expect("the library drew more randomness than the vector records");
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for ScriptedRng {}

/// A device checked from its record: every public key recomputed from its secret.
struct Device {
    device_id: u32,
    account: AccountId,
    dh_secret: [u8; 32],
    identity: DeviceIdentity,
    pair: DeviceIdentityKeyPair,
}

impl Device {
    fn from_record(r: &DeviceKeysRecord) -> Self {
        let account_secret = h32(&r.account_secret);
        let signing_secret = h32(&r.identity_signing_secret);
        let dh_secret = h32(&r.identity_dh_secret);
        assert_eq!(
            ed_pub(account_secret),
            h32(&r.account_public),
            "account public key"
        );
        assert_eq!(
            ed_pub(signing_secret),
            h32(&r.identity_signing_public),
            "signing public key"
        );
        assert_eq!(
            x_pub(dh_secret),
            h32(&r.identity_dh_public),
            "DH public key"
        );
        let account = AccountKeyPair::from_secret_bytes(&account_secret).id();
        assert_eq!(account.as_bytes(), &h32(&r.account_public));
        let pair = DeviceIdentityKeyPair::from_secret_bytes(&signing_secret, &dh_secret);
        let identity =
            DeviceIdentity::new(&h(&r.identity_signing_public), &h(&r.identity_dh_public)).unwrap();
        assert_eq!(pair.public(), identity);
        Self {
            device_id: r.device_id,
            account,
            dh_secret,
            identity,
            pair,
        }
    }

    fn address(&self) -> DeviceAddress {
        DeviceAddress {
            account: self.account,
            device_id: self.device_id,
        }
    }

    /// The device as one end of a session.
    fn party(&self) -> ratchet::Party {
        ratchet::Party {
            address: self.address(),
            identity: self.identity,
        }
    }

    fn wire_identity(&self) -> wire::DeviceIdentityKey {
        wire::DeviceIdentityKey {
            signing_key: self.identity.signing_key().to_vec(),
            dh_key: self.identity.dh_key().to_vec(),
        }
    }
}

fn spk_transcript(id: u32, public: &[u8]) -> Vec<u8> {
    [&id.to_be_bytes()[..], public].concat()
}

fn kem_transcript(id: u32, last_resort: bool, public: &[u8]) -> Vec<u8> {
    [&id.to_be_bytes()[..], &[u8::from(last_resort)], public].concat()
}

/// Checks a signed pre-key record against its owner and rebuilds the library key pair.
fn signed_pre_key(r: &SignedPreKeyRecord, owner: &Device, now: u64) -> SignedPreKeyPair {
    let secret = h32(&r.secret);
    assert_eq!(x_pub(secret), h32(&r.public), "signed pre-key public");
    let sig = h(&r.signature);
    assert_eq!(sig.len(), 64);
    assert!(
        ed_verify(
            *owner.identity.signing_key(),
            labels::SIGNED_PRE_KEY,
            &spk_transcript(r.id, &h(&r.public)),
            &sig
        ),
        "signed pre-key signature"
    );
    let pair = SignedPreKeyPair::from_secret(&owner.pair, r.id, &secret, now);
    assert_eq!(pair.public.to_bytes(), h32(&r.public));
    assert_eq!(
        pair.signature.to_vec(),
        sig,
        "Ed25519 is deterministic: the library re-signs identically"
    );
    pair
}

fn one_time_pre_key(r: &OneTimePreKeyRecord) -> OneTimePreKeyPair {
    let secret = h32(&r.secret);
    assert_eq!(x_pub(secret), h32(&r.public), "one-time pre-key public");
    let pair = OneTimePreKeyPair::from_secret(r.id, &secret);
    assert_eq!(pair.public.to_bytes(), h32(&r.public));
    pair
}

/// Checks an ML-KEM pre-key record (public key from the seed, signature) and rebuilds it.
fn kem_pre_key(r: &KemPreKeyRecord, owner: &Device, now: u64) -> KemPreKeyPair {
    let seed = hn::<64>(&r.seed);
    let public = h(&r.public);
    assert_eq!(public.len(), 1184);
    let dk = DecapsulationKey768::from_seed(seed.into());
    assert_eq!(
        dk.encapsulation_key().to_bytes().to_vec(),
        public,
        "ML-KEM public key from the seed"
    );
    let sig = h(&r.signature);
    assert!(
        ed_verify(
            *owner.identity.signing_key(),
            labels::KEM_PRE_KEY,
            &kem_transcript(r.id, r.last_resort, &public),
            &sig
        ),
        "ML-KEM pre-key signature"
    );
    let pair = KemPreKeyPair::from_seed(&owner.pair, r.id, &seed, r.last_resort, now);
    assert_eq!(pair.public, public);
    assert_eq!(pair.signature.to_vec(), sig);
    pair
}

fn kem_encapsulate(public: &[u8], m: [u8; 32]) -> (Vec<u8>, [u8; 32]) {
    let key = ml_kem::Key::<EncapsulationKey768>::try_from(public).unwrap();
    let ek = EncapsulationKey768::new(&key).unwrap();
    let (ct, ss) = ek.encapsulate_deterministic(&m.into());
    (ct.to_vec(), ss.into())
}

fn kem_decapsulate(seed: [u8; 64], ct: &[u8]) -> [u8; 32] {
    let dk = DecapsulationKey768::from_seed(seed.into());
    let ct: [u8; 1088] = ct.try_into().unwrap();
    let ct: ml_kem::Ciphertext<ml_kem::MlKem768> = ct.into();
    dk.decapsulate(&ct).into()
}

/// The AD layout of the specification, built by hand: for the initiator, then the responder,
/// account key (32) || device id (u32 BE) || signing key (32) || dh key (32); then the header:
/// version || ratchet key || N || PN.
fn expected_ad(initiator: &Device, responder: &Device, key: &[u8; 32], n: u32, pn: u32) -> Vec<u8> {
    [
        &initiator.account.as_bytes()[..],
        &initiator.device_id.to_be_bytes(),
        initiator.identity.signing_key(),
        initiator.identity.dh_key(),
        responder.account.as_bytes(),
        &responder.device_id.to_be_bytes(),
        responder.identity.signing_key(),
        responder.identity.dh_key(),
        &PROTOCOL_VERSION.to_be_bytes(),
        key,
        &n.to_be_bytes(),
        &pn.to_be_bytes(),
    ]
    .concat()
}

// ------------------------------------------------------------------------------------------------
// Regeneration
// ------------------------------------------------------------------------------------------------

#[test]
fn vectors_regenerate_byte_identical() {
    let generated = vectors::generate_all().expect("generate the vectors");
    assert_eq!(
        generated.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        FILES.to_vec()
    );
    let dir = vectors_dir();
    let mut problems = Vec::new();
    for (name, text) in &generated {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(committed) if committed == text.as_bytes() => {}
            Ok(committed) => {
                let at = committed
                    .iter()
                    .zip(text.as_bytes())
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                let line = text
                    .as_bytes()
                    .get(..at)
                    .map_or(0, |p| p.iter().filter(|b| **b == b'\n').count() + 1);
                problems.push(format!(
                    "{name}: differs from the generator (first difference at byte {at}, line {line}; committed {} \
                     bytes, generated {} bytes)",
                    committed.len(),
                    text.len()
                ));
            }
            Err(e) => problems.push(format!("{name}: cannot read {}: {e}", path.display())),
        }
    }
    // No stale vector files either.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !FILES.contains(&name.as_str()) {
            problems.push(format!("{name}: not produced by the generator"));
        }
    }
    assert!(
        problems.is_empty(),
        "test vectors are out of date; regenerate with `cargo run -p hush-tests --bin hush-vectors -- tests/vectors` \
         and review the diff:\n  {}",
        problems.join("\n  ")
    );
}

// ------------------------------------------------------------------------------------------------
// Reviewer checks
// ------------------------------------------------------------------------------------------------

#[test]
fn vectors_verify_like_a_reviewer() {
    let pqxdh = check_pqxdh_file(&load("pqxdh.json"));
    let ratchet = check_ratchet_file(&load("double_ratchet.json"));
    let (lists, list_negatives) = check_device_list_file(&load("device_lists.json"));
    let (pairs, comparisons) = check_safety_file(&load("safety_numbers.json"));
    let (sender_keys, group_messages, group_logs) =
        check_sender_keys_file(&load("sender_keys.json"));
    let (envelopes, delivery_keys) = check_sealed_file(&load("sealed.json"));
    let (negatives, group_negatives) = check_negative_file(&load("negative.json"));
    let (backups, backup_negatives) = check_backup_file(&load("backup.json"));
    println!("checked {backups} backup-archive and {backup_negatives} refused-archive vectors");
    assert!(backups >= 4 && backup_negatives >= 5);
    println!("checked {envelopes} sealed-envelope and {delivery_keys} delivery-key vectors");
    println!(
        "checked {pqxdh} PQXDH, {ratchet} double-ratchet, {lists} device-list (+{list_negatives} negative), \
         {pairs} safety-number (+{comparisons} comparisons), {sender_keys} sender-key ({group_messages} \
         group messages), {group_logs} group-log and {negatives} negative ({group_negatives} group) \
         vectors"
    );
    assert!(
        pqxdh >= 4
            && ratchet >= 1
            && lists >= 2
            && list_negatives > 0
            && pairs >= 3
            && comparisons > 0
    );
    assert!(sender_keys > 0 && group_messages >= 10 && group_logs > 0);
    assert!(negatives > 0 && group_negatives > 0);
    assert!(envelopes >= 5 && delivery_keys >= 4);
}

fn check_header<T>(file: &str, name: &str, format_version: u32, vectors: &[T]) {
    assert_eq!(name, file);
    assert_eq!(format_version, vectors::FORMAT_VERSION);
    assert!(!vectors.is_empty(), "{file}: no vectors");
}

/// Sanity check on the checker itself: the limits named in the vector text match the library's.
#[test]
fn negative_too_far_ahead_names_the_limit() {
    let f: NegativeFile = load("negative.json");
    let mut seen = BTreeSet::new();
    for v in f
        .vectors
        .iter()
        .filter(|v| v.expected_error == "Protocol(TooFarAhead)")
    {
        match v.input {
            NegativeInput::RatchetMessage { .. } => {
                assert!(v.description.contains(&format!("MAX_SKIP = {MAX_SKIP}")));
                seen.insert("ratchet");
            }
            NegativeInput::SenderKeyMessage { .. } => {
                assert!(
                    v.description
                        .contains(&format!("MAX_SENDER_KEY_JUMP = {MAX_SENDER_KEY_JUMP}"))
                );
                seen.insert("sender key");
            }
            _ => panic!("{}: unexpected kind", v.name),
        }
    }
    assert_eq!(seen.len(), 2);
}
