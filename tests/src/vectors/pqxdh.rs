//! `pqxdh.json`: PQXDH session setup, Alice initiating to Bob's pre-key bundle, one vector per
//! pre-key combination (with or without a one-time X25519 pre-key; a one-time or the last-resort
//! ML-KEM pre-key). [`Setup`] draws everything of one run; the double-ratchet conversation and the
//! pairwise negative vectors start from it too.

use hush_core::consts::{KEM_SEED_LEN, KEY_LEN};
use hush_core::device_list::VerifiedDeviceList;
use hush_core::error::Error;
use hush_core::pqxdh::{self, InitialMessage, Initiated, InitiatorSecrets};
use hush_core::prekeys::{KemPreKeyPair, OneTimePreKeyPair, PreKeyBundle, SignedPreKeyPair};
use hush_core::ratchet::{self, RatchetMessage};
use hush_proto::{Message, wire};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{
    ALICE_DEVICE_ID, BOB_DEVICE_ID, DAY_MS, DeviceKeysRecord, FORMAT_VERSION, GenResult,
    KEM_PRE_KEY_ID, KemPreKeyRecord, LAST_RESORT_KEM_PRE_KEY_ID, NOW_MS, ONE_TIME_PRE_KEY_ID,
    OneTimePreKeyRecord, Party, SIGNED_PRE_KEY_ID, SignedPreKeyRecord, draw, ensure, hx,
    kem_decapsulate, pairwise_initial, seed, wire_identity, x25519, x25519_public,
};

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/// Everything that goes into one PQXDH run (Alice initiates to Bob).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PqxdhInputs {
    /// The initiator's device.
    pub alice: DeviceKeysRecord,
    /// The responder's device.
    pub bob: DeviceKeysRecord,
    /// Bob's account device list (encoded `SignedDeviceList`, version 1, listing Bob's device).
    pub bob_device_list: String,
    /// Bob's signed pre-key.
    pub signed_pre_key: SignedPreKeyRecord,
    /// Bob's one-time pre-key, or null.
    pub one_time_pre_key: Option<OneTimePreKeyRecord>,
    /// Bob's ML-KEM pre-key (one-time or last-resort).
    pub kem_pre_key: KemPreKeyRecord,
    /// The pre-key bundle Alice receives (encoded `PreKeyBundle`).
    pub bundle: String,
    /// Alice's base key EK_A, secret (32 bytes).
    pub base_key_secret: String,
    /// EK_A public (32 bytes).
    pub base_key_public: String,
    /// Alice's first ratchet key, secret (32 bytes).
    pub ratchet_key_secret: String,
    /// Alice's first ratchet key, public (32 bytes).
    pub ratchet_key_public: String,
    /// ML-KEM encapsulation randomness `m` (32 bytes).
    pub kem_encapsulation_randomness: String,
}

/// One encrypted ratchet message, with what was derived for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstMessageRecord {
    /// Plaintext.
    pub plaintext: String,
    /// Header: sender's ratchet public key (32 bytes).
    pub ratchet_key: String,
    /// Header: N.
    pub counter: u32,
    /// Header: PN.
    pub previous_counter: u32,
    /// Message key (32 bytes).
    pub message_key: String,
    /// Associated data (244 bytes).
    pub ad: String,
    /// ChaCha20-Poly1305 ciphertext with tag.
    pub ciphertext: String,
}

/// What a PQXDH run produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PqxdhOutputs {
    /// DH(IK_A, SPK_B) (32 bytes).
    pub dh1: String,
    /// DH(EK_A, IK_B) (32 bytes).
    pub dh2: String,
    /// DH(EK_A, SPK_B) (32 bytes).
    pub dh3: String,
    /// DH(EK_A, OPK_B) (32 bytes), or null without a one-time pre-key.
    pub dh4: Option<String>,
    /// ML-KEM-768 ciphertext (1088 bytes).
    pub kem_ciphertext: String,
    /// ML-KEM-768 shared secret (32 bytes).
    pub kem_shared_secret: String,
    /// SK as computed by the initiator (32 bytes).
    pub shared_secret: String,
    /// SK as computed by the responder (32 bytes, equal to `shared_secret`).
    pub responder_shared_secret: String,
    /// Alice's root key after initialisation (32 bytes).
    pub root_key: String,
    /// Alice's first sending chain key (32 bytes, for N = 0).
    pub sending_chain_key: String,
    /// The first message, inside the initial message.
    pub first_message: FirstMessageRecord,
    /// The encoded `PairwiseMessage` (body `initial`) Alice sends.
    pub initial_message: String,
}

/// One PQXDH vector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PqxdhVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// The time used, ms since the Unix epoch.
    pub now_ms: u64,
    /// Inputs.
    pub inputs: PqxdhInputs,
    /// Outputs.
    pub outputs: PqxdhOutputs,
}

/// `pqxdh.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PqxdhFile {
    /// `"pqxdh"`.
    pub file: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the file holds.
    pub description: String,
    /// The vectors.
    pub vectors: Vec<PqxdhVector>,
}

// ---------------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------------

/// Everything of one PQXDH run, drawn from the vector's RNG.
pub(super) struct Setup {
    pub(super) now: u64,
    pub(super) alice: Party,
    pub(super) bob: Party,
    pub(super) bob_list: VerifiedDeviceList,
    pub(super) spk_secret: [u8; KEY_LEN],
    pub(super) spk: SignedPreKeyPair,
    opk_secret: [u8; KEY_LEN],
    opk: Option<OneTimePreKeyPair>,
    pub(super) kem_seed: [u8; KEM_SEED_LEN],
    pub(super) kem: KemPreKeyPair,
    base_secret: [u8; KEY_LEN],
    ratchet_secret: [u8; KEY_LEN],
    kem_m: [u8; 32],
}

impl Setup {
    /// Draws, in order: Alice's account, signing and DH secrets; Bob's account, signing and DH
    /// secrets; Bob's signed pre-key secret; Bob's one-time pre-key secret (drawn even when unused);
    /// Bob's ML-KEM seed (64 bytes); Alice's base key secret; Alice's first ratchet key secret; the
    /// ML-KEM encapsulation randomness `m`. That is 11 × 32 + 64 = 416 bytes.
    pub(super) fn draw(
        rng: &mut ChaCha20Rng,
        with_one_time: bool,
        last_resort: bool,
        now: u64,
    ) -> GenResult<Self> {
        let alice = Party::draw(rng, ALICE_DEVICE_ID);
        let bob = Party::draw(rng, BOB_DEVICE_ID);
        let spk_secret = draw(rng);
        let opk_secret = draw(rng);
        let kem_seed = draw(rng);
        let base_secret = draw(rng);
        let ratchet_secret = draw(rng);
        let kem_m = draw(rng);
        let created = now - DAY_MS;
        let spk =
            SignedPreKeyPair::from_secret(&bob.identity, SIGNED_PRE_KEY_ID, &spk_secret, created);
        let opk =
            with_one_time.then(|| OneTimePreKeyPair::from_secret(ONE_TIME_PRE_KEY_ID, &opk_secret));
        let kem_id = if last_resort {
            LAST_RESORT_KEM_PRE_KEY_ID
        } else {
            KEM_PRE_KEY_ID
        };
        let kem = KemPreKeyPair::from_seed(&bob.identity, kem_id, &kem_seed, last_resort, created);
        let bob_list = bob.own_device_list(now)?;
        Ok(Self {
            now,
            alice,
            bob,
            bob_list,
            spk_secret,
            spk,
            opk_secret,
            opk,
            kem_seed,
            kem,
            base_secret,
            ratchet_secret,
            kem_m,
        })
    }

    pub(super) fn bundle(&self) -> wire::PreKeyBundle {
        wire::PreKeyBundle {
            account_key: self.bob.account.id().as_bytes().to_vec(),
            device_id: self.bob.device_id,
            identity: Some(wire_identity(&self.bob.public())),
            signed_pre_key: Some(self.spk.to_wire()),
            one_time_pre_key: self.opk.as_ref().map(OneTimePreKeyPair::to_wire),
            kem_pre_key: Some(self.kem.to_wire()),
        }
    }

    fn initiate_with(
        &self,
        base: [u8; KEY_LEN],
        ratchet: [u8; KEY_LEN],
        m: [u8; 32],
    ) -> GenResult<Initiated> {
        let verified = PreKeyBundle(self.bundle()).verify(&self.bob_list)?;
        let secrets = InitiatorSecrets::from_bytes(base, ratchet, m);
        Ok(pqxdh::initiate(
            self.alice.address(),
            &self.alice.identity,
            &verified,
            secrets,
            self.now,
        )?)
    }

    pub(super) fn initiate(&self) -> GenResult<Initiated> {
        self.initiate_with(self.base_secret, self.ratchet_secret, self.kem_m)
    }

    /// Bob's side, with his ML-KEM pre-key marked as already used with `used` base keys.
    pub(super) fn respond(
        &self,
        im: &InitialMessage,
        used: &[[u8; KEY_LEN]],
    ) -> Result<Initiated, Error> {
        let mut kem = KemPreKeyPair::from_seed(
            &self.bob.identity,
            self.kem.id,
            &self.kem_seed,
            self.kem.last_resort,
            0,
        );
        kem.mark_used_base_keys(used.iter().copied());
        pqxdh::respond(
            self.bob.address(),
            &self.bob.identity,
            &self.spk,
            self.opk.as_ref(),
            &kem,
            im,
            self.now,
        )
    }

    /// Alice's session and the wire initial message around her first message.
    pub(super) fn first_message(
        &self,
        plaintext: &[u8],
        rng: &mut ChaCha20Rng,
    ) -> GenResult<(Initiated, wire::InitialMessage)> {
        self.first_message_with(
            self.base_secret,
            self.ratchet_secret,
            self.kem_m,
            plaintext,
            rng,
        )
    }

    pub(super) fn first_message_with(
        &self,
        base: [u8; KEY_LEN],
        ratchet: [u8; KEY_LEN],
        m: [u8; 32],
        plaintext: &[u8],
        rng: &mut ChaCha20Rng,
    ) -> GenResult<(Initiated, wire::InitialMessage)> {
        let mut init = self.initiate_with(base, ratchet, m)?;
        // The first sending chain exists after initiation: this draws nothing from `rng`.
        let enc = init.session.encrypt(plaintext, rng, self.now)?;
        let pending = init
            .session
            .pending()
            .ok_or("initiator session is not pending")?;
        let initial = InitialMessage::wire(pending, self.alice.public(), &enc.message);
        Ok((init, initial))
    }

    pub(super) fn signed_pre_key_record(&self) -> SignedPreKeyRecord {
        SignedPreKeyRecord {
            id: self.spk.id,
            secret: hx(self.spk_secret),
            public: hx(self.spk.public.as_bytes()),
            signature: hx(self.spk.signature),
        }
    }

    pub(super) fn one_time_pre_key_record(&self) -> Option<OneTimePreKeyRecord> {
        self.opk.as_ref().map(|o| OneTimePreKeyRecord {
            id: o.id,
            secret: hx(self.opk_secret),
            public: hx(o.public.as_bytes()),
        })
    }

    pub(super) fn kem_pre_key_record(&self) -> KemPreKeyRecord {
        KemPreKeyRecord {
            id: self.kem.id,
            seed: hx(self.kem_seed),
            public: hx(&self.kem.public),
            signature: hx(self.kem.signature),
            last_resort: self.kem.last_resort,
        }
    }

    pub(super) fn inputs(&self) -> PqxdhInputs {
        PqxdhInputs {
            alice: self.alice.record(),
            bob: self.bob.record(),
            bob_device_list: hx(self.bob_list.signed_bytes()),
            signed_pre_key: self.signed_pre_key_record(),
            one_time_pre_key: self.one_time_pre_key_record(),
            kem_pre_key: self.kem_pre_key_record(),
            bundle: hx(self.bundle().encode_to_vec()),
            base_key_secret: hx(self.base_secret),
            base_key_public: hx(x25519_public(&self.base_secret)),
            ratchet_key_secret: hx(self.ratchet_secret),
            ratchet_key_public: hx(x25519_public(&self.ratchet_secret)),
            kem_encapsulation_randomness: hx(self.kem_m),
        }
    }
}

pub(super) fn pqxdh_file() -> GenResult<PqxdhFile> {
    let cases: [(&str, &str, bool, bool); 4] = [
        (
            "one-time-pre-key-one-time-kem",
            "The usual case: a one-time X25519 pre-key (DH4 present) and a one-time ML-KEM pre-key.",
            true,
            false,
        ),
        (
            "no-one-time-pre-key-one-time-kem",
            "One-time X25519 pre-keys exhausted: no DH4; a one-time ML-KEM pre-key.",
            false,
            false,
        ),
        (
            "one-time-pre-key-last-resort-kem",
            "A one-time X25519 pre-key with the last-resort ML-KEM pre-key (one-time ML-KEM keys exhausted).",
            true,
            true,
        ),
        (
            "no-one-time-pre-key-last-resort-kem",
            "Everything exhausted: no DH4, and the last-resort ML-KEM pre-key.",
            false,
            true,
        ),
    ];
    let mut vectors = Vec::new();
    for (index, (name, description, with_one_time, last_resort)) in cases.into_iter().enumerate() {
        vectors.push(pqxdh_vector(
            index,
            name,
            description,
            with_one_time,
            last_resort,
        )?);
    }
    Ok(PqxdhFile {
        file: "pqxdh".to_owned(),
        format_version: FORMAT_VERSION,
        description: "PQXDH session setup (X25519, SHA-256, ML-KEM-768): Alice initiates to Bob's pre-key bundle \
                      and sends her first message inside an initial message; Bob derives the same SK."
            .to_owned(),
        vectors,
    })
}

fn pqxdh_vector(
    index: usize,
    name: &str,
    description: &str,
    with_one_time: bool,
    last_resort: bool,
) -> GenResult<PqxdhVector> {
    let seed = seed("pqxdh", index)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let s = Setup::draw(&mut rng, with_one_time, last_resort, NOW_MS)?;
    let plaintext = format!("PQXDH vector {index}: first message from Alice").into_bytes();

    let init = s.initiate()?;
    let root_key = *init.session.root_key();
    let sending_chain_key = *init
        .session
        .sending_chain_key()
        .ok_or("initiator has no sending chain")?;
    let (init, initial) = s.first_message(&plaintext, &mut rng)?;
    ensure(
        *init.session.root_key() == root_key,
        "root key does not change on the first send",
    )?;
    let first = RatchetMessage::try_from(initial.message.as_ref().ok_or("no ratchet message")?)?;
    let header = first.header;
    let (message_key, _) = ratchet::kdf_ck(&sending_chain_key);

    // Bob's side.
    let im = InitialMessage::try_from(&initial)?;
    let mut bob = s.respond(&im, &[])?;
    ensure(
        *bob.shared_secret == *init.shared_secret,
        "both sides derive the same SK",
    )?;
    let opened = bob.session.decrypt(&im.message, s.now)?;
    ensure(
        *opened.plaintext == plaintext,
        "Bob decrypts the first message",
    )?;
    ensure(
        *opened.message_key == *message_key,
        "Bob derives the same message key",
    )?;

    // The DH values and the ML-KEM shared secret, computed independently for the record.
    let spk_pub = s.spk.public.to_bytes();
    let dh1 = x25519(&s.alice.secrets.dh, &spk_pub);
    let dh2 = x25519(&s.base_secret, s.bob.public().dh_key());
    let dh3 = x25519(&s.base_secret, &spk_pub);
    let dh4 = s
        .opk
        .as_ref()
        .map(|o| x25519(&s.base_secret, o.public.as_bytes()));
    let kem_shared = kem_decapsulate(&s.kem_seed, &initial.kem_ciphertext)?;
    let mut dhs = vec![&dh1, &dh2, &dh3];
    if let Some(d) = &dh4 {
        dhs.push(d);
    }
    ensure(
        *pqxdh::derive_shared_secret(&dhs, &kem_shared) == *init.shared_secret,
        "SK = KDF(DH1..DH4 || SS)",
    )?;
    let ad = ratchet::message_ad(&s.alice.party(), &s.bob.party(), &header);
    ensure(
        *ratchet::open(&message_key, &ad, &first.ciphertext)? == plaintext,
        "first message opens",
    )?;

    Ok(PqxdhVector {
        name: name.to_owned(),
        description: description.to_owned(),
        seed: hx(seed),
        now_ms: s.now,
        inputs: s.inputs(),
        outputs: PqxdhOutputs {
            dh1: hx(dh1),
            dh2: hx(dh2),
            dh3: hx(dh3),
            dh4: dh4.map(hx),
            kem_ciphertext: hx(&initial.kem_ciphertext),
            kem_shared_secret: hx(kem_shared),
            shared_secret: hx(*init.shared_secret),
            responder_shared_secret: hx(*bob.shared_secret),
            root_key: hx(root_key),
            sending_chain_key: hx(sending_chain_key),
            first_message: FirstMessageRecord {
                plaintext: hx(&plaintext),
                ratchet_key: hx(header.ratchet_key),
                counter: header.counter,
                previous_counter: header.previous_counter,
                message_key: hx(*message_key),
                ad: hx(&ad),
                ciphertext: hx(&first.ciphertext),
            },
            initial_message: hx(pairwise_initial(initial)),
        },
    })
}
