//! The published protocol test vectors (`tests/vectors/*.json`):
//!
//! - `vectors_regenerate_byte_identical`: regenerating from the recorded seeds gives exactly the
//!   committed files.
//! - `vectors_verify_like_a_reviewer`: every vector checks out from its recorded inputs alone (never
//!   from the seed). Wherever possible a value is recomputed twice: independently (x25519-dalek,
//!   ed25519-dalek, ml-kem and the documented formulas) and through hush-core's API.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::path::PathBuf;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hush_core::consts::{MAX_SENDER_KEY_JUMP, MAX_SKIP, PROTOCOL_VERSION, SENDER_KEY_MESSAGE_INFO};
use hush_core::device::{Device as CoreDevice, GroupIncoming};
use hush_core::device_list::{DeviceEntry, DeviceList, VerifiedDeviceList};
use hush_core::group::{ChangeBody, GroupLog, Offered, SignedChange};
use hush_core::keys::{
    AccountId, AccountKeyPair, DeviceAddress, DeviceIdentity, DeviceIdentityKeyPair,
};
use hush_core::pqxdh::{self, InitialMessage, InitiatorSecrets};
use hush_core::prekeys::{KemPreKeyPair, OneTimePreKeyPair, PreKeyBundle, SignedPreKeyPair};
use hush_core::ratchet::{self, Header, RatchetMessage, SessionState};
use hush_core::safety::{self, Comparison, SafetyNumber, SafetyNumberError};
use hush_core::sender_key::{
    GroupHeader, GroupId, GroupMessage, SenderKeyState, sender_chain_step,
};
use hush_core::store::kv::{Batch, KvStore, Namespace};
use hush_core::store::memory::MemoryKv;
use hush_proto::{Message, labels, store, wire};
use hush_tests::vectors::{
    self, AddressRecord, DeviceKeysRecord, DeviceListFile, FILES, GroupMemberRecord,
    KemPreKeyRecord, MembershipVector, NegativeFile, NegativeInput, NegativeVector,
    OneTimePreKeyRecord, PqxdhFile, PqxdhInputs, RatchetFile, RatchetVector, SafetyFile,
    SenderKeyVector, SenderKeysFile, SignedPreKeyRecord, StoreEntryRecord, error_name,
};
use ml_kem::{Decapsulate, DecapsulationKey768, EncapsulationKey768, KeyExport};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

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

/// Checks a PQXDH setup from its recorded inputs.
struct Pqxdh {
    now: u64,
    alice: Device,
    bob: Device,
    bob_list: VerifiedDeviceList,
    bundle: wire::PreKeyBundle,
    spk_secret: [u8; 32],
    spk_public: [u8; 32],
    spk: SignedPreKeyPair,
    opk_secret: Option<[u8; 32]>,
    opk: Option<OneTimePreKeyPair>,
    kem_seed: [u8; 64],
    kem_public: Vec<u8>,
    kem: KemPreKeyPair,
    base_secret: [u8; 32],
    base_public: [u8; 32],
    ratchet_secret: [u8; 32],
    ratchet_public: [u8; 32],
    m: [u8; 32],
}

impl Pqxdh {
    fn check(inp: &PqxdhInputs, now: u64) -> Self {
        let alice = Device::from_record(&inp.alice);
        let bob = Device::from_record(&inp.bob);

        // Bob's device list lists his device with his identity.
        let signed = wire::SignedDeviceList::decode(h(&inp.bob_device_list).as_slice()).unwrap();
        assert!(ed_verify(
            *bob.account.as_bytes(),
            labels::DEVICE_LIST,
            &signed.device_list,
            &signed.signature
        ));
        let bob_list = VerifiedDeviceList::verify(&h(&inp.bob_device_list), &bob.account).unwrap();
        assert_eq!(bob_list.identity_of(bob.device_id).unwrap(), bob.identity);

        let spk = signed_pre_key(&inp.signed_pre_key, &bob, 0);
        let opk = inp.one_time_pre_key.as_ref().map(one_time_pre_key);
        let kem = kem_pre_key(&inp.kem_pre_key, &bob, 0);

        // The bundle carries exactly these public values.
        let bundle = wire::PreKeyBundle::decode(h(&inp.bundle).as_slice()).unwrap();
        assert_eq!(bundle.account_key, bob.account.as_bytes().to_vec());
        assert_eq!(bundle.device_id, bob.device_id);
        assert_eq!(bundle.identity, Some(bob.wire_identity()));
        assert_eq!(
            bundle.signed_pre_key,
            Some(wire::SignedPreKey {
                id: inp.signed_pre_key.id,
                public_key: h(&inp.signed_pre_key.public),
                signature: h(&inp.signed_pre_key.signature),
            })
        );
        assert_eq!(
            bundle.one_time_pre_key,
            inp.one_time_pre_key.as_ref().map(|o| wire::OneTimePreKey {
                id: o.id,
                public_key: h(&o.public)
            })
        );
        assert_eq!(
            bundle.kem_pre_key,
            Some(wire::KemPreKey {
                id: inp.kem_pre_key.id,
                public_key: h(&inp.kem_pre_key.public),
                signature: h(&inp.kem_pre_key.signature),
                last_resort: inp.kem_pre_key.last_resort,
            })
        );
        PreKeyBundle(bundle.clone())
            .verify(&bob_list)
            .expect("the bundle verifies");

        let base_secret = h32(&inp.base_key_secret);
        let ratchet_secret = h32(&inp.ratchet_key_secret);
        assert_eq!(x_pub(base_secret), h32(&inp.base_key_public));
        assert_eq!(x_pub(ratchet_secret), h32(&inp.ratchet_key_public));
        Self {
            now,
            bundle,
            bob_list,
            spk_secret: h32(&inp.signed_pre_key.secret),
            spk_public: h32(&inp.signed_pre_key.public),
            spk,
            opk_secret: inp.one_time_pre_key.as_ref().map(|o| h32(&o.secret)),
            opk,
            kem_seed: hn::<64>(&inp.kem_pre_key.seed),
            kem_public: h(&inp.kem_pre_key.public),
            kem,
            base_secret,
            base_public: x_pub(base_secret),
            ratchet_secret,
            ratchet_public: x_pub(ratchet_secret),
            m: hn::<32>(&inp.kem_encapsulation_randomness),
            alice,
            bob,
        }
    }

    /// Alice's side through the library.
    fn initiate(&self) -> pqxdh::Initiated {
        let verified = PreKeyBundle(self.bundle.clone())
            .verify(&self.bob_list)
            .unwrap();
        let secrets = InitiatorSecrets::from_bytes(self.base_secret, self.ratchet_secret, self.m);
        pqxdh::initiate(
            self.alice.address(),
            &self.alice.pair,
            &verified,
            secrets,
            self.now,
        )
        .unwrap()
    }

    /// Bob's side through the library.
    fn respond(&self, im: &InitialMessage) -> pqxdh::Initiated {
        pqxdh::respond(
            self.bob.address(),
            &self.bob.pair,
            &self.spk,
            self.opk.as_ref(),
            &self.kem,
            im,
            self.now,
        )
        .unwrap()
    }
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
    let (sender_keys, group_messages, membership_logs) =
        check_sender_keys_file(&load("sender_keys.json"));
    let (negatives, group_negatives) = check_negative_file(&load("negative.json"));
    println!(
        "checked {pqxdh} PQXDH, {ratchet} double-ratchet, {lists} device-list (+{list_negatives} negative), \
         {pairs} safety-number (+{comparisons} comparisons), {sender_keys} sender-key ({group_messages} \
         group messages), {membership_logs} membership-log and {negatives} negative ({group_negatives} group) \
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
    assert!(sender_keys > 0 && group_messages >= 10 && membership_logs > 0);
    assert!(negatives > 0 && group_negatives > 0);
}

fn check_header<T>(file: &str, name: &str, format_version: u32, vectors: &[T]) {
    assert_eq!(name, file);
    assert_eq!(format_version, vectors::FORMAT_VERSION);
    assert!(!vectors.is_empty(), "{file}: no vectors");
}

fn check_pqxdh_file(f: &PqxdhFile) -> usize {
    check_header("pqxdh", &f.file, f.format_version, &f.vectors);
    let mut with_opk = BTreeSet::new();
    let mut last_resort = BTreeSet::new();
    for v in &f.vectors {
        check_pqxdh(v);
        with_opk.insert(v.inputs.one_time_pre_key.is_some());
        last_resort.insert(v.inputs.kem_pre_key.last_resort);
    }
    assert_eq!(
        with_opk.len(),
        2,
        "cases with and without a one-time pre-key"
    );
    assert_eq!(
        last_resort.len(),
        2,
        "cases with a one-time and with the last-resort ML-KEM pre-key"
    );
    f.vectors.len()
}

fn check_pqxdh(v: &vectors::PqxdhVector) {
    let p = Pqxdh::check(&v.inputs, v.now_ms);
    let o = &v.outputs;

    // DH values, from both sides.
    let dh1 = x_dh(p.alice.dh_secret, p.spk_public);
    assert_eq!(dh1, x_dh(p.spk_secret, *p.alice.identity.dh_key()));
    let dh2 = x_dh(p.base_secret, *p.bob.identity.dh_key());
    assert_eq!(dh2, x_dh(p.bob.dh_secret, p.base_public));
    let dh3 = x_dh(p.base_secret, p.spk_public);
    assert_eq!(dh3, x_dh(p.spk_secret, p.base_public));
    let dh4 = p
        .opk
        .as_ref()
        .map(|k| x_dh(p.base_secret, k.public.to_bytes()));
    assert_eq!(dh4, p.opk_secret.map(|s| x_dh(s, p.base_public)));
    assert_eq!(
        (dh1, dh2, dh3),
        (h32(&o.dh1), h32(&o.dh2), h32(&o.dh3)),
        "{}: DH1..DH3",
        v.name
    );
    assert_eq!(dh4, o.dh4.as_deref().map(h32), "{}: DH4", v.name);

    // ML-KEM: encapsulate to the recorded public key with m, decapsulate with the seed.
    let (ct, ss) = kem_encapsulate(&p.kem_public, p.m);
    assert_eq!(
        hex::encode(&ct),
        o.kem_ciphertext,
        "{}: ML-KEM ciphertext",
        v.name
    );
    assert_eq!(
        ss,
        h32(&o.kem_shared_secret),
        "{}: ML-KEM shared secret",
        v.name
    );
    assert_eq!(
        kem_decapsulate(p.kem_seed, &ct),
        ss,
        "{}: decapsulation",
        v.name
    );

    // SK = KDF(0xFF * 32 || DH1 || DH2 || DH3 [|| DH4] || SS).
    let mut dhs = vec![&dh1, &dh2, &dh3];
    if let Some(d) = &dh4 {
        dhs.push(d);
    }
    let sk = *pqxdh::derive_shared_secret(&dhs, &ss);
    assert_eq!(sk, h32(&o.shared_secret), "{}: SK", v.name);
    assert_eq!(
        sk,
        h32(&o.responder_shared_secret),
        "{}: responder SK",
        v.name
    );

    // First ratchet step: KDF_RK(SK, DH(first ratchet key, SPK_B)).
    let dh_r = x_dh(p.ratchet_secret, p.spk_public);
    assert_eq!(dh_r, x_dh(p.spk_secret, p.ratchet_public));
    let (rk, ck) = ratchet::kdf_rk(&sk, &dh_r);
    assert_eq!(*rk, h32(&o.root_key), "{}: root key", v.name);
    assert_eq!(
        *ck,
        h32(&o.sending_chain_key),
        "{}: sending chain key",
        v.name
    );

    // The first message.
    let m = &o.first_message;
    assert_eq!(
        (h32(&m.ratchet_key), m.counter, m.previous_counter),
        (p.ratchet_public, 0, 0)
    );
    let (mk, _) = ratchet::kdf_ck(&ck);
    assert_eq!(*mk, h32(&m.message_key), "{}: message key", v.name);
    let header = Header {
        ratchet_key: p.ratchet_public,
        counter: 0,
        previous_counter: 0,
    };
    let ad = ratchet::message_ad(&p.alice.party(), &p.bob.party(), &header);
    assert_eq!(ad, h(&m.ad), "{}: AD", v.name);
    assert_eq!(ad, expected_ad(&p.alice, &p.bob, &p.ratchet_public, 0, 0));
    let plaintext = h(&m.plaintext);
    assert_eq!(
        *ratchet::open(&mk, &ad, &h(&m.ciphertext)).unwrap(),
        plaintext,
        "{}: decrypt",
        v.name
    );
    assert_eq!(
        ratchet::seal(&mk, &ad, &plaintext).unwrap(),
        h(&m.ciphertext)
    );

    // The initial message on the wire.
    let pm = wire::PairwiseMessage::decode(h(&o.initial_message).as_slice()).unwrap();
    let Some(wire::pairwise_message::Body::Initial(initial)) = pm.body.clone() else {
        panic!("{}: not an initial message", v.name)
    };
    let expected = wire::InitialMessage {
        version: PROTOCOL_VERSION,
        sender_account_key: p.alice.account.as_bytes().to_vec(),
        sender_device_id: p.alice.device_id,
        sender_identity: Some(p.alice.wire_identity()),
        base_key: p.base_public.to_vec(),
        signed_pre_key_id: v.inputs.signed_pre_key.id,
        one_time_pre_key_id: v.inputs.one_time_pre_key.as_ref().map(|k| k.id),
        kem_pre_key_id: v.inputs.kem_pre_key.id,
        kem_ciphertext: ct.clone(),
        message: Some(wire::RatchetMessage {
            version: PROTOCOL_VERSION,
            ratchet_key: p.ratchet_public.to_vec(),
            counter: 0,
            previous_counter: 0,
            ciphertext: h(&m.ciphertext),
        }),
    };
    assert_eq!(initial, expected, "{}: initial message fields", v.name);

    // The library, from the same inputs: Alice ...
    let mut alice = p.initiate();
    assert_eq!(*alice.shared_secret, sk);
    assert_eq!(alice.session.root_key(), &*rk);
    assert_eq!(alice.session.sending_chain_key(), Some(&*ck));
    let mut no_randomness = ScriptedRng::new([]);
    let enc = alice
        .session
        .encrypt(&plaintext, &mut no_randomness, p.now)
        .unwrap();
    assert_eq!(*enc.message_key, *mk);
    let rebuilt = InitialMessage::wire(
        alice.session.pending().unwrap(),
        p.alice.identity,
        &enc.message,
    );
    assert_eq!(
        hex::encode(
            wire::PairwiseMessage {
                body: Some(wire::pairwise_message::Body::Initial(rebuilt))
            }
            .encode_to_vec()
        ),
        o.initial_message,
        "{}: the library builds the same initial message",
        v.name
    );
    // ... and Bob.
    let im = InitialMessage::try_from(&initial).unwrap();
    let mut bob = p.respond(&im);
    assert_eq!(*bob.shared_secret, sk);
    let opened = bob.session.decrypt(&im.message, p.now).unwrap();
    assert_eq!(*opened.plaintext, plaintext);
    assert_eq!(*opened.message_key, *mk);
}

fn check_ratchet_file(f: &RatchetFile) -> usize {
    check_header("double_ratchet", &f.file, f.format_version, &f.vectors);
    for v in &f.vectors {
        check_ratchet_derivations(v);
        check_ratchet_replay(v);
    }
    f.vectors.len()
}

/// Re-derives every chain and message key from SK and the recorded ratchet secrets, and opens every
/// ciphertext.
fn check_ratchet_derivations(v: &RatchetVector) {
    let p = Pqxdh::check(&v.setup, v.now_ms);
    let sk = h32(&v.shared_secret);
    assert_eq!(*p.initiate().shared_secret, sk, "SK of the setup");

    // The root chain.
    let mut root = sk;
    let mut privates = Vec::new();
    for (i, c) in v.chains.iter().enumerate() {
        assert_eq!(c.index as usize, i);
        assert_eq!(
            c.sender,
            if i % 2 == 0 { "alice" } else { "bob" },
            "chains alternate"
        );
        let private = h32(&c.ratchet_private);
        let public = x_pub(private);
        assert_eq!(public, h32(&c.ratchet_public), "chain {i}: ratchet public");
        // Chain 0 is Alice's first ratchet key against Bob's signed pre-key; then each chain's key
        // meets the other side's previous one.
        let (peer_private, peer_public) = match i {
            0 => {
                assert_eq!(
                    private, p.ratchet_secret,
                    "chain 0 uses the PQXDH ratchet key"
                );
                (p.spk_secret, p.spk_public)
            }
            _ => (privates[i - 1], x_pub(privates[i - 1])),
        };
        assert_eq!(
            h32(&c.peer_ratchet_public),
            peer_public,
            "chain {i}: peer key"
        );
        let dh = x_dh(private, peer_public);
        assert_eq!(
            dh,
            x_dh(peer_private, public),
            "chain {i}: DH from the receiver's side"
        );
        assert_eq!(dh, h32(&c.dh_output), "chain {i}: DH output");
        let (rk, ck) = ratchet::kdf_rk(&root, &dh);
        assert_eq!(*rk, h32(&c.root_key), "chain {i}: root key");
        assert_eq!(*ck, h32(&c.chain_key), "chain {i}: chain key");
        root = *rk;
        privates.push(private);
    }

    // Every message key from its chain key; every ciphertext opens.
    let mut per_chain = vec![0u32; v.chains.len()];
    for (i, m) in v.messages.iter().enumerate() {
        assert_eq!(m.index as usize, i);
        let c = &v.chains[m.chain as usize];
        assert_eq!(m.sender, c.sender, "message {i}: sender");
        assert_eq!(
            h32(&m.ratchet_key),
            h32(&c.ratchet_public),
            "message {i}: header ratchet key"
        );
        assert_eq!(m.counter, per_chain[m.chain as usize], "message {i}: N");
        per_chain[m.chain as usize] += 1;
        // PN is the length of the sender's previous sending chain.
        let pn = match m.chain {
            0 | 1 => 0,
            c => v.chains[c as usize - 2].message_count,
        };
        assert_eq!(m.previous_counter, pn, "message {i}: PN");
        let mut ck = h32(&c.chain_key);
        let mut mk = [0u8; 32];
        for _ in 0..=m.counter {
            let (k, next) = ratchet::kdf_ck(&ck);
            mk = *k;
            ck = *next;
        }
        assert_eq!(mk, h32(&m.message_key), "message {i}: message key");
        let header = Header {
            ratchet_key: h32(&m.ratchet_key),
            counter: m.counter,
            previous_counter: m.previous_counter,
        };
        let ad = ratchet::message_ad(&p.alice.party(), &p.bob.party(), &header);
        assert_eq!(ad, h(&m.ad), "message {i}: AD");
        assert_eq!(
            ad,
            expected_ad(
                &p.alice,
                &p.bob,
                &header.ratchet_key,
                m.counter,
                m.previous_counter
            )
        );
        let ct = h(&m.ciphertext);
        assert_eq!(
            *ratchet::open(&mk, &ad, &ct).unwrap(),
            h(&m.plaintext),
            "message {i}: decrypt"
        );
        let w = wire::RatchetMessage::decode(h(&m.ratchet_message).as_slice()).unwrap();
        assert_eq!(
            w,
            wire::RatchetMessage {
                version: PROTOCOL_VERSION,
                ratchet_key: header.ratchet_key.to_vec(),
                counter: m.counter,
                previous_counter: m.previous_counter,
                ciphertext: ct,
            },
            "message {i}: wire encoding"
        );
    }
    for (c, n) in v.chains.iter().zip(&per_chain) {
        assert_eq!(c.message_count, *n, "chain {}: message count", c.index);
    }

    // The script: each message sent once, then delivered once, at its recorded position.
    let mut sent = vec![false; v.messages.len()];
    let mut position = vec![None; v.messages.len()];
    let mut deliveries = 0u32;
    for e in &v.events {
        let i = e.message as usize;
        match e.action.as_str() {
            "send" => {
                assert!(!sent[i], "message {i} sent twice");
                assert!(
                    v.messages[..i].iter().enumerate().all(|(j, _)| sent[j]),
                    "sends in index order"
                );
                sent[i] = true;
            }
            "deliver" => {
                assert!(
                    sent[i] && position[i].is_none(),
                    "message {i}: deliver after send, once"
                );
                position[i] = Some(deliveries);
                deliveries += 1;
            }
            other => panic!("unknown action {other}"),
        }
    }
    for (i, m) in v.messages.iter().enumerate() {
        assert_eq!(
            position[i],
            Some(m.delivery_position),
            "message {i}: delivery position"
        );
    }

    // What the vector claims to cover.
    assert!(v.messages.len() >= 20, "at least 20 messages");
    assert!(
        v.chains.len() >= 4,
        "at least 3 DH ratchet steps after the first chain"
    );
    let out_of_order_in_chain = v.messages.iter().any(|a| {
        v.messages.iter().any(|b| {
            a.chain == b.chain && a.counter < b.counter && a.delivery_position > b.delivery_position
        })
    });
    assert!(
        out_of_order_in_chain,
        "out-of-order delivery within a chain"
    );
    let pn_skip = v
        .messages
        .iter()
        .any(|m| m.received_via == "new_ratchet_key" && m.skipped_keys_stored > m.counter);
    assert!(
        pn_skip,
        "a ratchet step that skips keys of the previous chain through PN"
    );
    let late_after_step = v.messages.iter().any(|m| {
        m.received_via == "skipped_key"
            && v.messages.iter().any(|n| {
                n.sender == m.sender
                    && n.chain > m.chain
                    && n.delivery_position < m.delivery_position
            })
    });
    assert!(
        late_after_step,
        "a message delivered after a later chain of its sender"
    );
}

/// Replays the conversation through the library, from the recorded inputs: the scripted RNGs hand
/// each side exactly its recorded ratchet secrets, in chain order.
fn check_ratchet_replay(v: &RatchetVector) {
    let p = Pqxdh::check(&v.setup, v.now_ms);
    let init = p.initiate();
    let mut alice = init.session;
    let pending = alice.pending().unwrap().clone();
    let first = RatchetMessage::try_from(
        &wire::RatchetMessage::decode(h(&v.messages[0].ratchet_message).as_slice()).unwrap(),
    )
    .unwrap();
    let im = InitialMessage::try_from(&InitialMessage::wire(&pending, p.alice.identity, &first))
        .unwrap();
    let mut bob = p.respond(&im).session;
    let chain_secrets = |who: &str| {
        v.chains
            .iter()
            .skip(1)
            .filter(|c| c.sender == who)
            .map(|c| h32(&c.ratchet_private))
            .collect::<Vec<_>>()
    };
    let mut alice_rng = ScriptedRng::new(chain_secrets("alice"));
    let mut bob_rng = ScriptedRng::new(chain_secrets("bob"));

    for e in &v.events {
        let m = &v.messages[e.message as usize];
        let from_alice = m.sender == "alice";
        match e.action.as_str() {
            "send" => {
                let (session, rng) = if from_alice {
                    (&mut alice, &mut alice_rng)
                } else {
                    (&mut bob, &mut bob_rng)
                };
                let enc = session.encrypt(&h(&m.plaintext), rng, v.now_ms).unwrap();
                assert_eq!(
                    hex::encode(enc.message.to_wire().encode_to_vec()),
                    m.ratchet_message,
                    "message {}: sent",
                    m.index
                );
                assert_eq!(*enc.message_key, h32(&m.message_key));
            }
            "deliver" => {
                let session = if from_alice { &mut bob } else { &mut alice };
                let before: store::SessionState = session.to_proto();
                let key = h32(&m.ratchet_key);
                let via = if before
                    .skipped
                    .iter()
                    .any(|s| s.ratchet_key == key && s.counter == m.counter)
                {
                    "skipped_key"
                } else if before.remote_ratchet_key == key {
                    "current_chain"
                } else {
                    "new_ratchet_key"
                };
                assert_eq!(
                    via, m.received_via,
                    "message {}: how the key is found",
                    m.index
                );
                let msg = RatchetMessage::try_from(
                    &wire::RatchetMessage::decode(h(&m.ratchet_message).as_slice()).unwrap(),
                )
                .unwrap();
                let opened = session.decrypt(&msg, v.now_ms).unwrap();
                assert_eq!(
                    *opened.plaintext,
                    h(&m.plaintext),
                    "message {}: delivered",
                    m.index
                );
                assert_eq!(*opened.message_key, h32(&m.message_key));
                let consumed = usize::from(via == "skipped_key");
                assert_eq!(
                    session.skipped_len() + consumed - before.skipped.len(),
                    m.skipped_keys_stored as usize,
                    "message {}: skipped keys stored",
                    m.index
                );
            }
            other => panic!("unknown action {other}"),
        }
    }
    alice_rng.assert_exhausted("Alice's ratchet secrets");
    bob_rng.assert_exhausted("Bob's ratchet secrets");
    assert_eq!(alice.skipped_len() + bob.skipped_len(), 0);
}

fn check_device_list_file(f: &DeviceListFile) -> (usize, usize) {
    check_header("device_lists", &f.file, f.format_version, &f.vectors);
    for v in &f.vectors {
        let secret = h32(&v.account_secret);
        assert_eq!(ed_pub(secret), h32(&v.account_public));
        let account_key = AccountKeyPair::from_secret_bytes(&secret);
        let account = AccountId::from_bytes(&h(&v.account_public)).unwrap();
        assert_eq!(account_key.id(), account);
        let mut previous: Option<VerifiedDeviceList> = None;
        assert!(v.versions.len() >= 2, "{}: at least two versions", v.name);
        for r in &v.versions {
            // The exact signed bytes, rebuilt by hand from the record.
            let mut entries = Vec::new();
            let mut devices = std::collections::BTreeMap::new();
            for d in &r.devices {
                let s = h32(&d.identity_signing_secret);
                let x = h32(&d.identity_dh_secret);
                assert_eq!(ed_pub(s), h32(&d.identity_signing_public));
                assert_eq!(x_pub(x), h32(&d.identity_dh_public));
                let identity = DeviceIdentityKeyPair::from_secret_bytes(&s, &x).public();
                entries.push(wire::DeviceEntry {
                    device_id: d.device_id,
                    identity: Some(wire::DeviceIdentityKey {
                        signing_key: h(&d.identity_signing_public),
                        dh_key: h(&d.identity_dh_public),
                    }),
                    added_at: d.added_at,
                });
                devices.insert(
                    d.device_id,
                    DeviceEntry {
                        device_id: d.device_id,
                        identity,
                        added_at: d.added_at,
                    },
                );
            }
            let raw = wire::DeviceList {
                account_key: account.as_bytes().to_vec(),
                version: r.version,
                issued_at: r.issued_at,
                devices: entries,
            };
            assert_eq!(
                hex::encode(raw.encode_to_vec()),
                r.device_list,
                "{} v{}: device_list bytes",
                v.name,
                r.version
            );
            assert!(ed_verify(
                *account.as_bytes(),
                labels::DEVICE_LIST,
                &h(&r.device_list),
                &h(&r.signature)
            ));
            let signed = wire::SignedDeviceList {
                device_list: h(&r.device_list),
                signature: h(&r.signature),
            };
            assert_eq!(hex::encode(signed.encode_to_vec()), r.signed_device_list);

            // The library verifies it, reads the same content, and signs the same bytes.
            let list = VerifiedDeviceList::verify(&h(&r.signed_device_list), &account).unwrap();
            let content = DeviceList {
                account,
                version: r.version,
                issued_at: r.issued_at,
                devices,
            };
            assert_eq!(list.list(), &content);
            for (id, entry) in &content.devices {
                assert_eq!(list.identity_of(*id).unwrap(), entry.identity);
            }
            assert_eq!(
                hex::encode(content.sign(&account_key).unwrap().signed_bytes()),
                r.signed_device_list
            );

            assert!(
                !list.check_successor(Some(&list)).unwrap(),
                "the same list again is not new"
            );
            if let Some(prev) = &previous {
                assert!(
                    list.check_successor(Some(prev)).unwrap(),
                    "{} v{}: a valid successor",
                    v.name,
                    r.version
                );
                assert_eq!(
                    error_name(&prev.check_successor(Some(&list)).unwrap_err()),
                    "Protocol(DeviceListRollback)"
                );
            }
            previous = Some(list);
        }
    }
    assert!(!f.negative_vectors.is_empty());
    for n in &f.negative_vectors {
        check_negative(n);
    }
    (f.vectors.len(), f.negative_vectors.len())
}

fn digits_by_hand(fingerprint: &[u8]) -> String {
    fingerprint
        .chunks(5)
        .map(|c| {
            format!(
                "{:05}",
                c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)) % 100_000
            )
        })
        .collect()
}

fn check_safety_file(f: &SafetyFile) -> (usize, usize) {
    check_header("safety_numbers", &f.file, f.format_version, &f.vectors);
    for v in &f.vectors {
        let (sa, sb) = (h32(&v.account_a_secret), h32(&v.account_b_secret));
        let (a, b) = (h32(&v.account_a_public), h32(&v.account_b_public));
        assert_eq!((ed_pub(sa), ed_pub(sb)), (a, b));
        let (fa, fb) = (hn::<30>(&v.fingerprint_a), hn::<30>(&v.fingerprint_b));
        assert_eq!(
            (safety::fingerprint(&a), safety::fingerprint(&b)),
            (fa, fb),
            "{}: fingerprints",
            v.name
        );
        assert_eq!(digits_by_hand(&fa), v.digits_a);
        assert_eq!(digits_by_hand(&fb), v.digits_b);
        assert_eq!(safety::fingerprint_digits(&fa), v.digits_a);
        let (lo, hi) = if v.digits_a <= v.digits_b {
            (&v.digits_a, &v.digits_b)
        } else {
            (&v.digits_b, &v.digits_a)
        };
        assert_eq!(format!("{lo}{hi}"), v.safety_number);
        let grouped: Vec<String> = v
            .safety_number
            .as_bytes()
            .chunks(5)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        assert_eq!(grouped.len(), 12);
        assert_eq!(grouped.join(" "), v.safety_number_display);
        assert_eq!(h(&v.qr_payload_a), [&[1u8][..], &fa, &fb].concat());
        assert_eq!(h(&v.qr_payload_b), [&[1u8][..], &fb, &fa].concat());

        let (na, nb) = (SafetyNumber::new(&a, &b), SafetyNumber::new(&b, &a));
        assert_eq!(
            (na.digits(), nb.digits()),
            (v.safety_number.clone(), v.safety_number.clone())
        );
        assert_eq!(
            (na.display_groups(), nb.to_string()),
            (
                v.safety_number_display.clone(),
                v.safety_number_display.clone()
            )
        );
        assert_eq!(
            (na.qr_payload(), nb.qr_payload()),
            (h(&v.qr_payload_a), h(&v.qr_payload_b))
        );
        assert_eq!(
            nb.compare_scanned(&h(&v.qr_payload_a)),
            Ok(Comparison::Match)
        );
        assert_eq!(
            na.compare_scanned(&h(&v.qr_payload_b)),
            Ok(Comparison::Match)
        );
    }
    let mut outcomes = BTreeSet::new();
    for c in &f.comparisons {
        let sn = SafetyNumber::new(&h32(&c.local_account), &h32(&c.remote_account));
        let got = match sn.compare_scanned(&h(&c.scanned_payload)) {
            Ok(Comparison::Match) => "Match",
            Ok(Comparison::Mismatch) => "Mismatch",
            Err(SafetyNumberError::Malformed) => "Malformed",
            Err(SafetyNumberError::UnsupportedVersion(_)) => "UnsupportedVersion",
        };
        assert_eq!(got, c.expected, "comparison {}", c.name);
        outcomes.insert(got);
    }
    assert_eq!(outcomes.len(), 4, "every comparison outcome is covered");
    (f.vectors.len(), f.comparisons.len())
}

// ------------------------------------------------------------------------------------------------
// sender_keys.json
// ------------------------------------------------------------------------------------------------

/// HMAC-SHA256(key, [byte]), with the `hmac` crate.
fn hmac_byte(key: &[u8; 32], byte: u8) -> [u8; 32] {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(&[byte]);
    mac.finalize().into_bytes().as_slice().try_into().unwrap()
}

/// The AEAD key and nonce of a sender-key message key, with the `hkdf` crate: HKDF-SHA256(salt =
/// 32 zero bytes, ikm = mk, info = "Hush_SenderKey_Message_v1"), 44 bytes.
fn sender_aead(mk: &[u8; 32]) -> ([u8; 32], [u8; 12]) {
    let mut okm = [0u8; 44];
    hkdf::Hkdf::<Sha256>::new(Some(&[0u8; 32]), mk)
        .expand(b"Hush_SenderKey_Message_v1", &mut okm)
        .unwrap();
    (okm[..32].try_into().unwrap(), okm[32..].try_into().unwrap())
}

fn chacha(key: &[u8; 32]) -> chacha20poly1305::ChaCha20Poly1305 {
    use chacha20poly1305::aead::KeyInit;
    chacha20poly1305::ChaCha20Poly1305::new(&chacha20poly1305::Key::from(*key))
}

fn aead_open(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    use chacha20poly1305::aead::{Aead, Payload};
    chacha(key)
        .decrypt(
            &chacha20poly1305::Nonce::from(*nonce),
            Payload { msg: ct, aad },
        )
        .ok()
}

fn aead_seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    use chacha20poly1305::aead::{Aead, Payload};
    chacha(key)
        .encrypt(
            &chacha20poly1305::Nonce::from(*nonce),
            Payload { msg: pt, aad },
        )
        .unwrap()
}

/// The 80 header bytes of a group message, built by hand from the wire fields: version ‖ group id ‖
/// sender account ‖ sender device (u32 BE) ‖ key id (u32 BE) ‖ iteration (u32 BE).
fn group_header_bytes(w: &wire::GroupMessage) -> Vec<u8> {
    [
        &w.version.to_be_bytes()[..],
        &w.group_id,
        &w.sender_account_key,
        &w.sender_device_id.to_be_bytes(),
        &w.key_id.to_be_bytes(),
        &w.iteration.to_be_bytes(),
    ]
    .concat()
}

/// Strict Ed25519 verification of a wire group message's signature with `signing_public`.
fn group_signature_ok(signing_public: [u8; 32], w: &wire::GroupMessage) -> bool {
    w.signature.len() == 64
        && ed_verify(
            signing_public,
            b"Hush-GroupMessage-v1",
            &[group_header_bytes(w), w.ciphertext.clone()].concat(),
            &w.signature,
        )
}

/// Checks an address record (public from secret) and returns the address.
fn address_of(r: &AddressRecord) -> DeviceAddress {
    let secret = h32(&r.account_secret);
    assert_eq!(ed_pub(secret), h32(&r.account_public), "account public key");
    let account = AccountKeyPair::from_secret_bytes(&secret).id();
    assert_eq!(
        account,
        AccountId::from_bytes(&h(&r.account_public)).unwrap()
    );
    DeviceAddress {
        account,
        device_id: r.device_id,
    }
}

fn check_sender_keys_file(f: &SenderKeysFile) -> (usize, usize, usize) {
    check_header("sender_keys", &f.file, f.format_version, &f.vectors);
    assert!(
        !f.membership_logs.is_empty(),
        "sender_keys: no membership log"
    );
    let mut messages = 0;
    for v in &f.vectors {
        messages += check_sender_key_vector(v);
    }
    for m in &f.membership_logs {
        check_membership_log(m);
    }
    (f.vectors.len(), messages, f.membership_logs.len())
}

/// Checks one sender key; returns the number of messages.
fn check_sender_key_vector(v: &SenderKeyVector) -> usize {
    assert_eq!(SENDER_KEY_MESSAGE_INFO, b"Hush_SenderKey_Message_v1");
    assert_eq!(labels::GROUP_MESSAGE, b"Hush-GroupMessage-v1");
    let group = h32(&v.group_id);
    let gid = GroupId::from_bytes(&group).unwrap();
    let sender = address_of(&v.sender);
    let signing_secret = h32(&v.signing_secret);
    let signing_public = h32(&v.signing_public);
    assert_eq!(
        ed_pub(signing_secret),
        signing_public,
        "{}: signing public",
        v.name
    );
    let initial_chain_key = h32(&v.initial_chain_key);

    // The chain, by hand (hmac, hkdf) and through hush-core.
    assert!(v.chain.len() >= 12, "{}: at least 12 chain steps", v.name);
    let mut ck = initial_chain_key;
    for (i, step) in v.chain.iter().enumerate() {
        assert_eq!(step.iteration as usize, i, "{}: chain order", v.name);
        assert_eq!(h32(&step.chain_key), ck, "{}: ck_{i}", v.name);
        let (mk, next) = (hmac_byte(&ck, 0x01), hmac_byte(&ck, 0x02));
        let (lib_mk, lib_next) = sender_chain_step(&ck);
        assert_eq!((*lib_mk, *lib_next), (mk, next), "{}: step {i}", v.name);
        assert_eq!(h32(&step.message_key), mk, "{}: mk_{i}", v.name);
        let (key, nonce) = sender_aead(&mk);
        assert_eq!(h32(&step.aead_key), key, "{}: AEAD key {i}", v.name);
        assert_eq!(hn::<12>(&step.aead_nonce), nonce, "{}: nonce {i}", v.name);
        ck = next;
    }

    // The messages, independently of hush-core, then parsed by it.
    assert!(v.messages.len() >= 10, "{}: at least 10 messages", v.name);
    assert!(v.messages.len() <= v.chain.len());
    let mut wires = Vec::new();
    for (i, m) in v.messages.iter().enumerate() {
        assert_eq!(m.iteration as usize, i, "{}: send order", v.name);
        let step = &v.chain[i];
        let (key, nonce) = (h32(&step.aead_key), hn::<12>(&step.aead_nonce));
        let header = h(&m.header);
        let (pt, ct, sig) = (h(&m.plaintext), h(&m.ciphertext), h(&m.signature));
        let expected = wire::GroupMessage {
            version: PROTOCOL_VERSION,
            group_id: group.to_vec(),
            sender_account_key: sender.account.as_bytes().to_vec(),
            sender_device_id: sender.device_id,
            key_id: v.key_id,
            iteration: m.iteration,
            ciphertext: ct.clone(),
            signature: sig.clone(),
        };
        assert_eq!(header.len(), 80);
        assert_eq!(
            header,
            group_header_bytes(&expected),
            "{}: header {i}",
            v.name
        );
        let lib_header = GroupHeader {
            group: gid,
            sender,
            key_id: v.key_id,
            iteration: m.iteration,
        };
        assert_eq!(lib_header.to_bytes(), header);
        assert_eq!(ct.len(), pt.len() + 16);
        assert_eq!(
            aead_open(&key, &nonce, &header, &ct),
            Some(pt.clone()),
            "{}: message {i} decrypts",
            v.name
        );
        assert_eq!(aead_seal(&key, &nonce, &header, &pt), ct);
        assert!(
            group_signature_ok(signing_public, &expected),
            "{}: signature {i}",
            v.name
        );
        let signed = [&b"Hush-GroupMessage-v1"[..], &header, &ct].concat();
        assert_eq!(
            SigningKey::from_bytes(&signing_secret)
                .sign(&signed)
                .to_bytes()
                .to_vec(),
            sig,
            "Ed25519 is deterministic"
        );
        let w = wire::GroupMessage::decode(h(&m.group_message).as_slice()).unwrap();
        assert_eq!(w, expected, "{}: wire message {i}", v.name);
        assert_eq!(hex::encode(w.encode_to_vec()), m.group_message);
        let parsed = GroupMessage::try_from(&w).unwrap();
        assert_eq!(parsed.header, lib_header);
        wires.push(parsed);
    }

    // Distributions: what each receiver was given.
    let mut receivers = Vec::new();
    for r in &v.receivers {
        let addr = address_of(&r.address);
        let d = wire::SenderKeyDistribution::decode(h(&r.distribution).as_slice()).unwrap();
        assert_eq!(hex::encode(d.encode_to_vec()), r.distribution);
        assert_eq!(d.group_id, group.to_vec(), "{}: distribution group", r.name);
        assert_eq!(d.key_id, v.key_id);
        assert_eq!(d.signing_key, signing_public.to_vec());
        assert!((d.iteration as usize) < v.messages.len());
        assert_eq!(
            d.chain_key,
            h(&v.chain[d.iteration as usize].chain_key),
            "{}: the distribution carries the chain key of its iteration",
            r.name
        );
        receivers.push((addr, d));
    }
    assert!(
        receivers.iter().any(|(_, d)| d.iteration == 0)
            && receivers.iter().any(|(_, d)| d.iteration > 0),
        "{}: a receiver from iteration 0 and a later one",
        v.name
    );

    // The sender through hush-core, from the recorded randomness only.
    let mut rng = ScriptedRng::new([group]);
    assert_eq!(GroupId::random(&mut rng), gid);
    rng.assert_exhausted("group id");
    let mut rng = ScriptedRng::new([signing_secret, initial_chain_key]);
    let mut own = SenderKeyState::generate(&mut rng, v.key_id, v.now_ms);
    rng.assert_exhausted("sender key");
    let p = own.to_proto();
    assert_eq!(
        (
            p.signing_private.as_slice(),
            p.signing_public.as_slice(),
            p.initial_chain_key.as_slice()
        ),
        (
            &signing_secret[..],
            &signing_public[..],
            &initial_chain_key[..]
        )
    );
    for (i, m) in v.messages.iter().enumerate() {
        for (addr, d) in receivers.iter().filter(|(_, d)| d.iteration as usize == i) {
            assert_eq!(
                own.distribution_for(gid, *addr, None).unwrap(),
                *d,
                "{}: the library makes the same distribution",
                v.name
            );
        }
        let enc = own.encrypt(gid, sender, &h(&m.plaintext)).unwrap();
        assert_eq!(
            hex::encode(enc.to_wire().encode_to_vec()),
            m.group_message,
            "{}: the library encrypts message {i} identically",
            v.name
        );
    }
    if v.messages.len() == v.chain.len() {
        assert_eq!(own.to_proto().chain_key, ck.to_vec(), "final chain key");
    }

    // Every receiver, in its recorded delivery order, against a hand-kept model of its skipped keys.
    let (mut jumps, mut late_keys, mut out_of_order) = (0, 0, 0);
    for (r, (_, d)) in v.receivers.iter().zip(&receivers) {
        let mut state = SenderKeyState::from_distribution(d, v.now_ms).unwrap();
        assert_eq!(state.iteration(), d.iteration);
        // A receiver never reads what was sent before it got the key.
        if d.iteration > 0 {
            let before = state.to_proto().encode_to_vec();
            let err = state
                .decrypt(&wires[d.iteration as usize - 1], v.now_ms)
                .unwrap_err();
            assert_eq!(error_name(&err), "Protocol(Duplicate)");
            assert_eq!(state.to_proto().encode_to_vec(), before);
        }
        let mut next = d.iteration;
        let mut held = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut highest = None;
        for del in &r.deliveries {
            let i = del.message;
            assert!(seen.insert(i), "{}: {i} delivered twice", r.name);
            if highest.is_some_and(|hi| i < hi) {
                out_of_order += 1;
            }
            highest = highest.max(Some(i));
            let (via, stored) = match i.cmp(&next) {
                std::cmp::Ordering::Equal => ("next_iteration", 0),
                std::cmp::Ordering::Greater => ("forward_jump", i - next),
                std::cmp::Ordering::Less => ("skipped_key", 0),
            };
            if i >= next {
                held.extend(next..i);
                next = i + 1;
            } else {
                assert!(held.remove(&i), "{}: key of {i} is held", r.name);
                late_keys += 1;
            }
            if stored >= 2 {
                jumps += 1;
            }
            assert_eq!(del.received_via, via, "{}: message {i}", r.name);
            assert_eq!(del.skipped_keys_stored, stored, "{}: message {i}", r.name);
            assert_eq!(del.skipped_keys_held as usize, held.len());

            let opened = state.decrypt(&wires[i as usize], v.now_ms).unwrap();
            assert_eq!(*opened, h(&v.messages[i as usize].plaintext));
            assert_eq!(state.iteration(), next);
            assert_eq!(state.skipped_len(), held.len());
            // The same message again is refused and changes nothing.
            let after = state.to_proto().encode_to_vec();
            assert_eq!(
                error_name(&state.decrypt(&wires[i as usize], v.now_ms).unwrap_err()),
                "Protocol(Duplicate)"
            );
            assert_eq!(state.to_proto().encode_to_vec(), after);
        }
        assert_eq!(
            seen,
            (d.iteration..v.messages.len() as u32).collect(),
            "{}: every message from its entitlement on, once",
            r.name
        );
        assert!(held.is_empty() && state.skipped_len() == 0);
    }
    assert!(
        jumps > 0 && late_keys > 0 && out_of_order > 0,
        "{}: forward jumps, skipped keys and out-of-order delivery",
        v.name
    );
    v.messages.len()
}

fn member_records(members: impl IntoIterator<Item = ([u8; 32], bool)>) -> Vec<GroupMemberRecord> {
    members
        .into_iter()
        .map(|(a, admin)| GroupMemberRecord {
            account: hex::encode(a),
            admin,
        })
        .collect()
}

fn check_membership_log(v: &MembershipVector) {
    assert_eq!(labels::GROUP_CHANGE, b"Hush-GroupChange-v1");
    let group = h32(&v.group_id);
    let gid = GroupId::from_bytes(&group).unwrap();
    let parts: Vec<(&str, Device)> = v
        .participants
        .iter()
        .map(|p| (p.name.as_str(), Device::from_record(&p.device)))
        .collect();
    let mut log: Option<GroupLog> = None;
    let mut previous = [0u8; 32];
    // The membership kept by hand, by the rules of `hush_core::group`.
    let mut members: BTreeMap<[u8; 32], bool> = BTreeMap::new();
    let mut name = String::new();
    let (mut adds, mut removals, mut leaves) = (0, 0, 0);
    for (i, c) in v.changes.iter().enumerate() {
        assert_eq!(c.epoch, i as u64 + 1, "{}: epochs", v.name);
        let author = &parts
            .iter()
            .find(|(n, _)| *n == c.author)
            .unwrap_or_else(|| panic!("unknown author {}", c.author))
            .1;
        assert_eq!(author.account.as_bytes(), &h32(&c.author_account));
        assert_eq!(author.device_id, c.author_device_id);
        assert_eq!(h32(&c.previous_hash), previous, "{}: previous hash", v.name);

        // The exact bytes, rebuilt by hand; the signature and the hash, independently.
        let raw = wire::GroupChange {
            group_id: group.to_vec(),
            epoch: c.epoch,
            previous_hash: previous.to_vec(),
            author_account_key: h(&c.author_account),
            author_device_id: c.author_device_id,
            name: c.name.clone().unwrap_or_default(),
            add: c
                .add
                .iter()
                .map(|m| wire::GroupMember {
                    account_key: h(&m.account),
                    admin: m.admin,
                })
                .collect(),
            remove: c.remove.iter().map(|a| h(a)).collect(),
            issued_at: c.issued_at,
        };
        assert_eq!(
            hex::encode(raw.encode_to_vec()),
            c.change,
            "{}: change {}",
            v.name,
            c.epoch
        );
        assert!(ed_verify(
            *author.identity.signing_key(),
            b"Hush-GroupChange-v1",
            &h(&c.change),
            &h(&c.signature)
        ));
        let signed = wire::SignedGroupChange {
            change: h(&c.change),
            signature: h(&c.signature),
        }
        .encode_to_vec();
        assert_eq!(hex::encode(&signed), c.signed_group_change);
        // The hash covers the signed `GroupChange` bytes only, not the wrapper.
        let hash: [u8; 32] = Sha256::digest(h(&c.change)).as_slice().try_into().unwrap();
        assert_eq!(hash, h32(&c.hash), "{}: hash of change {}", v.name, c.epoch);

        // The rules, by hand.
        let author_account = h32(&c.author_account);
        let leaving = c.add.is_empty()
            && c.name.is_none()
            && c.remove == [c.author_account.clone()]
            && members.contains_key(&author_account);
        if c.epoch == 1 {
            assert!(c.remove.is_empty());
            assert!(
                c.add
                    .iter()
                    .any(|m| m.account == c.author_account && m.admin)
            );
        } else {
            assert!(
                members.get(&author_account) == Some(&true) || leaving,
                "{}: change {} by an admin, or a member leaving",
                v.name,
                c.epoch
            );
        }
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for a in &c.remove {
            assert!(members.remove(&h32(a)).is_some(), "removes a member");
            removed.push(a.clone());
        }
        for m in &c.add {
            if members.insert(h32(&m.account), m.admin).is_none() {
                added.push(m.account.clone());
            }
        }
        if let Some(n) = &c.name {
            name.clone_from(n);
        }
        assert!(members.values().any(|admin| *admin));
        assert_eq!(
            (&added, &removed),
            (&c.added, &c.removed),
            "{}: diff {}",
            v.name,
            c.epoch
        );
        assert_eq!(member_records(members.clone()), c.members_after);
        assert_eq!(name, c.name_after);
        if c.epoch > 1 {
            adds += usize::from(!added.is_empty());
            leaves += usize::from(leaving);
            removals += usize::from(!removed.is_empty() && !leaving);
        }

        // Through hush-core: parse, verify, re-sign, apply.
        let parsed = SignedChange::parse(&signed).unwrap();
        assert_eq!(
            (parsed.signed.as_slice(), parsed.hash),
            (signed.as_slice(), hash)
        );
        let body = ChangeBody {
            group: gid,
            epoch: c.epoch,
            previous_hash: previous,
            author: author.address(),
            name: c.name.clone(),
            add: c
                .add
                .iter()
                .map(|m| (AccountId::from_bytes(&h(&m.account)).unwrap(), m.admin))
                .collect(),
            remove: c
                .remove
                .iter()
                .map(|a| AccountId::from_bytes(&h(a)).unwrap())
                .collect(),
            issued_at: c.issued_at,
        };
        assert_eq!(parsed.body, body);
        parsed.verify(&author.identity).unwrap();
        for (other, d) in &parts {
            if *other != c.author {
                assert_eq!(
                    error_name(&parsed.verify(&d.identity).unwrap_err()),
                    "Auth(BadSignature)"
                );
            }
        }
        assert_eq!(SignedChange::sign(body, &author.pair).signed, signed);
        match log.as_mut() {
            None => log = Some(GroupLog::create(parsed).unwrap()),
            Some(l) => match l.offer(parsed).unwrap() {
                Offered::Applied(diffs) => {
                    assert_eq!(diffs.len(), 1);
                    let hexes = |a: &[AccountId]| -> Vec<String> {
                        a.iter().map(|x| hex::encode(x.as_bytes())).collect()
                    };
                    assert_eq!(hexes(&diffs[0].added), c.added);
                    assert_eq!(hexes(&diffs[0].removed), c.removed);
                }
                other => panic!("{}: change {} not applied: {other:?}", v.name, c.epoch),
            },
        }
        let state = log.as_ref().unwrap().state();
        assert_eq!((state.id, state.epoch, state.head), (gid, c.epoch, hash));
        assert_eq!(state.name, c.name_after);
        assert_eq!(
            member_records(
                state
                    .members
                    .iter()
                    .map(|(a, admin)| (*a.as_bytes(), *admin))
            ),
            c.members_after
        );
        previous = hash;
    }
    let mut log = log.unwrap();
    assert_eq!(
        GroupLog::restore(log.log().to_vec(), Vec::new())
            .unwrap()
            .state(),
        log.state()
    );
    // A change offered again is ignored.
    let first = SignedChange::parse(&h(&v.changes[0].signed_group_change)).unwrap();
    assert_eq!(log.offer(first).unwrap(), Offered::Ignored);
    assert!(
        adds > 0 && removals > 0 && leaves > 0,
        "{}: an add, a removal and a leave after creation",
        v.name
    );
}

/// Every entry of a store, as recorded in `device_store`.
fn dump_store(store: &impl KvStore) -> Vec<StoreEntryRecord> {
    let mut out = Vec::new();
    for ns in Namespace::ALL {
        for (key, value) in store.scan(ns).unwrap() {
            out.push(StoreEntryRecord {
                namespace: ns.as_byte(),
                key: hex::encode(key),
                value: hex::encode(&*value),
            });
        }
    }
    out
}

/// A memory store holding exactly the recorded entries.
fn memory_store(entries: &[StoreEntryRecord]) -> MemoryKv {
    let mut batch = Batch::new();
    for e in entries {
        batch.put(
            Namespace::from_byte(e.namespace).unwrap(),
            h(&e.key),
            h(&e.value),
        );
    }
    let mut store = MemoryKv::new();
    store.commit(batch).unwrap();
    store
}

/// Checks `negative.json`; returns the number of vectors and how many of them are group vectors.
fn check_negative_file(f: &NegativeFile) -> (usize, usize) {
    check_header("negative", &f.file, f.format_version, &f.vectors);
    let mut names = BTreeSet::new();
    for v in &f.vectors {
        assert!(names.insert(v.name.clone()), "duplicate name {}", v.name);
        check_negative(v);
    }
    let errors: BTreeSet<&str> = f
        .vectors
        .iter()
        .map(|v| v.expected_error.as_str())
        .collect();
    for required in [
        "Auth(BadSignature)",
        "Auth(DecryptFailed)",
        "Auth(InvalidKey)",
        "Protocol(Duplicate)",
        "Protocol(TooFarAhead)",
        "Protocol(LastResortReuse)",
        "Protocol(DeviceListRollback)",
        "Protocol(DeviceNotOnList)",
        "Protocol(NotAMember)",
    ] {
        assert!(
            errors.contains(required),
            "no negative vector expects {required}"
        );
    }
    // Group vectors: each group error through the sender-key state, and through a device.
    let group: Vec<&NegativeVector> = f
        .vectors
        .iter()
        .filter(|v| {
            matches!(
                v.input,
                NegativeInput::SenderKeyMessage { .. } | NegativeInput::GroupMessage { .. }
            )
        })
        .collect();
    for (kind_is_device, required) in [
        (false, "Auth(BadSignature)"),
        (false, "Protocol(Duplicate)"),
        (false, "Protocol(TooFarAhead)"),
        (true, "Protocol(NotAMember)"),
        (true, "Auth(BadSignature)"),
    ] {
        assert!(
            group.iter().any(|v| v.expected_error == required
                && matches!(v.input, NegativeInput::GroupMessage { .. }) == kind_is_device),
            "no group negative vector expects {required} (device: {kind_is_device})"
        );
    }
    (f.vectors.len(), group.len())
}

#[track_caller]
fn assert_rejected<T>(v: &NegativeVector, result: Result<T, hush_core::Error>) {
    match result {
        Ok(_) => panic!(
            "{}: accepted, but must fail with {}",
            v.name, v.expected_error
        ),
        Err(e) => assert_eq!(
            error_name(&e),
            v.expected_error,
            "{}: wrong error ({e:?})",
            v.name
        ),
    }
}

fn account(hex_key: &str) -> AccountId {
    AccountId::from_bytes(&h(hex_key)).unwrap()
}

fn check_negative(v: &NegativeVector) {
    match &v.input {
        NegativeInput::Bundle {
            account: acct,
            device_list,
            bundle,
            control_bundle,
        } => {
            let list = VerifiedDeviceList::verify(&h(device_list), &account(acct)).unwrap();
            let bad = wire::PreKeyBundle::decode(h(bundle).as_slice()).unwrap();
            assert_rejected(v, PreKeyBundle(bad).verify(&list).map(|_| ()));
            let control = wire::PreKeyBundle::decode(h(control_bundle).as_slice()).unwrap();
            PreKeyBundle(control)
                .verify(&list)
                .unwrap_or_else(|e| panic!("{}: control rejected: {e}", v.name));
        }
        NegativeInput::RatchetMessage {
            state_before,
            message,
            control_message,
            control_plaintext,
        } => {
            let before = h(state_before);
            let mut session =
                SessionState::from_proto(&store::SessionState::decode(before.as_slice()).unwrap())
                    .unwrap();
            let bad = wire::RatchetMessage::decode(h(message).as_slice()).unwrap();
            assert_rejected(
                v,
                RatchetMessage::try_from(&bad).and_then(|m| session.decrypt(&m, v.now_ms)),
            );
            assert_eq!(
                hex::encode(session.to_proto().encode_to_vec()),
                *state_before,
                "{}: the session changed",
                v.name
            );
            // Rejected again, the same way: nothing was consumed or advanced.
            assert_rejected(
                v,
                RatchetMessage::try_from(&bad).and_then(|m| session.decrypt(&m, v.now_ms)),
            );
            let control = wire::RatchetMessage::decode(h(control_message).as_slice()).unwrap();
            let opened = session
                .decrypt(&RatchetMessage::try_from(&control).unwrap(), v.now_ms)
                .unwrap();
            assert_eq!(
                *opened.plaintext,
                h(control_plaintext),
                "{}: control",
                v.name
            );
        }
        NegativeInput::InitialMessage {
            responder,
            signed_pre_key: spk,
            one_time_pre_key: opk,
            kem_pre_key: kem,
            used_base_keys,
            message,
            control_message,
            control_plaintext,
        } => {
            let bob = Device::from_record(responder);
            let spk = signed_pre_key(spk, &bob, 0);
            let opk = opk.as_ref().map(one_time_pre_key);
            let mut kem = kem_pre_key(kem, &bob, 0);
            kem.mark_used_base_keys(used_base_keys.iter().map(|k| h32(k)));
            let run = |bytes: &str| -> Result<Vec<u8>, hush_core::Error> {
                let pm = wire::PairwiseMessage::decode(h(bytes).as_slice()).unwrap();
                let Some(wire::pairwise_message::Body::Initial(m)) = pm.body else {
                    panic!("{}: not initial", v.name)
                };
                let im = InitialMessage::try_from(&m)?;
                let mut init = pqxdh::respond(
                    bob.address(),
                    &bob.pair,
                    &spk,
                    opk.as_ref(),
                    &kem,
                    &im,
                    v.now_ms,
                )?;
                Ok(init
                    .session
                    .decrypt(&im.message, v.now_ms)?
                    .plaintext
                    .to_vec())
            };
            assert_rejected(v, run(message));
            assert_rejected(v, run(message));
            assert_eq!(
                run(control_message).unwrap(),
                h(control_plaintext),
                "{}: control",
                v.name
            );
        }
        NegativeInput::DeviceListVerify {
            account: acct,
            signed_device_list,
            control_signed_device_list,
        } => {
            assert_rejected(
                v,
                VerifiedDeviceList::verify(&h(signed_device_list), &account(acct)),
            );
            VerifiedDeviceList::verify(&h(control_signed_device_list), &account(acct)).unwrap();
        }
        NegativeInput::DeviceListSuccessor {
            account: acct,
            known_device_list,
            signed_device_list,
            control_signed_device_list,
        } => {
            let acct = account(acct);
            let known = VerifiedDeviceList::verify(&h(known_device_list), &acct).unwrap();
            let offer = |bytes: &str| {
                VerifiedDeviceList::verify(&h(bytes), &acct)?.check_successor(Some(&known))
            };
            assert_rejected(v, offer(signed_device_list));
            offer(control_signed_device_list).unwrap();
        }
        NegativeInput::DeviceListMember {
            account: acct,
            signed_device_list,
            device_id,
            control_device_id,
        } => {
            let list = VerifiedDeviceList::verify(&h(signed_device_list), &account(acct)).unwrap();
            assert_rejected(v, list.identity_of(*device_id));
            list.identity_of(*control_device_id).unwrap();
        }
        NegativeInput::SenderKeyMessage {
            state_before,
            message,
            control_message,
            control_plaintext,
        } => {
            let proto = store::SenderKeyState::decode(h(state_before).as_slice()).unwrap();
            assert!(
                proto.signing_private.is_empty() && proto.initial_chain_key.is_empty(),
                "{}: a receiver's copy of a sender key",
                v.name
            );
            let mut state = SenderKeyState::from_proto(&proto).unwrap();
            assert_eq!(hex::encode(state.to_proto().encode_to_vec()), *state_before);
            let bad = wire::GroupMessage::decode(h(message).as_slice()).unwrap();
            let control = wire::GroupMessage::decode(h(control_message).as_slice()).unwrap();
            // Independently: the control's signature verifies with the held signing key, and the
            // rejected message's does exactly when the expected error is not a bad signature.
            let signing: [u8; 32] = proto.signing_public.as_slice().try_into().unwrap();
            assert!(
                group_signature_ok(signing, &control),
                "{}: control signature",
                v.name
            );
            assert_eq!(
                group_signature_ok(signing, &bad),
                v.expected_error != "Auth(BadSignature)",
                "{}: signature of the rejected message",
                v.name
            );
            let mut offer = |w: &wire::GroupMessage| {
                GroupMessage::try_from(w).and_then(|m| state.decrypt(&m, v.now_ms))
            };
            assert_rejected(v, offer(&bad));
            assert_rejected(v, offer(&bad));
            assert_eq!(
                *offer(&control).unwrap(),
                h(control_plaintext),
                "{}: control",
                v.name
            );
            // The state after the control is the state before it, advanced by the control alone:
            // the rejections changed nothing.
            let mut fresh = SenderKeyState::from_proto(&proto).unwrap();
            fresh
                .decrypt(&GroupMessage::try_from(&control).unwrap(), v.now_ms)
                .unwrap();
            assert_eq!(
                fresh.to_proto().encode_to_vec(),
                state.to_proto().encode_to_vec(),
                "{}: the sender-key state changed",
                v.name
            );
        }
        NegativeInput::GroupMessage {
            device_store,
            message,
            control_message,
            control_plaintext,
        } => {
            let mut device = CoreDevice::open(memory_store(device_store)).unwrap();
            assert_eq!(dump_store(device.store()), *device_store);
            let bad = h(message);
            let header =
                GroupMessage::try_from(&wire::GroupMessage::decode(bad.as_slice()).unwrap())
                    .unwrap()
                    .header;
            // Not for want of a key: the device holds the sender key the message names.
            assert!(
                device
                    .sender_key_status(&header.group, &header.sender)
                    .unwrap()
                    .iter()
                    .any(|(id, _, _)| *id == header.key_id),
                "{}: the device holds the named sender key",
                v.name
            );
            let group = device
                .group(&header.group)
                .expect("the device knows the group");
            assert_eq!(
                group.state().is_member(&header.sender.account),
                v.expected_error != "Protocol(NotAMember)",
                "{}: membership of the claimed sender",
                v.name
            );
            // No randomness may be drawn.
            let mut no_rng = ScriptedRng::new([]);
            assert_rejected(
                v,
                device
                    .decrypt_group(&bad, &mut no_rng, v.now_ms)
                    .map(|_| ()),
            );
            assert_eq!(
                dump_store(device.store()),
                *device_store,
                "{}: the device's store changed",
                v.name
            );
            assert_rejected(
                v,
                device
                    .decrypt_group(&bad, &mut no_rng, v.now_ms)
                    .map(|_| ()),
            );
            match device
                .decrypt_group(&h(control_message), &mut no_rng, v.now_ms)
                .unwrap()
            {
                GroupIncoming::Decrypted(r) => {
                    assert_eq!(*r.plaintext, h(control_plaintext), "{}: control", v.name);
                    assert_eq!(r.group, Some(header.group));
                }
                GroupIncoming::Buffered { .. } => panic!("{}: control buffered", v.name),
            }
        }
    }
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
