//! Checks `pqxdh.json`. [`Pqxdh`] rebuilds a run from its recorded inputs (the double-ratchet check
//! starts from it too); each vector's DH outputs, ML-KEM values, SK and first message are then
//! recomputed by hand and through hush-core.

use std::collections::BTreeSet;

use hush_core::consts::PROTOCOL_VERSION;
use hush_core::device_list::VerifiedDeviceList;
use hush_core::pqxdh::{self, InitialMessage, InitiatorSecrets};
use hush_core::prekeys::{KemPreKeyPair, OneTimePreKeyPair, PreKeyBundle, SignedPreKeyPair};
use hush_core::ratchet::{self, Header};
use hush_proto::{Message, labels, wire};
use hush_tests::vectors::{self, PqxdhFile, PqxdhInputs};

use super::{
    Device, ScriptedRng, check_header, ed_verify, expected_ad, h, h32, hn, kem_decapsulate,
    kem_encapsulate, kem_pre_key, one_time_pre_key, signed_pre_key, x_dh, x_pub,
};

/// Checks a PQXDH setup from its recorded inputs.
pub(super) struct Pqxdh {
    now: u64,
    pub(super) alice: Device,
    pub(super) bob: Device,
    bob_list: VerifiedDeviceList,
    bundle: wire::PreKeyBundle,
    pub(super) spk_secret: [u8; 32],
    pub(super) spk_public: [u8; 32],
    spk: SignedPreKeyPair,
    opk_secret: Option<[u8; 32]>,
    opk: Option<OneTimePreKeyPair>,
    kem_seed: [u8; 64],
    kem_public: Vec<u8>,
    kem: KemPreKeyPair,
    base_secret: [u8; 32],
    base_public: [u8; 32],
    pub(super) ratchet_secret: [u8; 32],
    ratchet_public: [u8; 32],
    m: [u8; 32],
}

impl Pqxdh {
    pub(super) fn check(inp: &PqxdhInputs, now: u64) -> Self {
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
    pub(super) fn initiate(&self) -> pqxdh::Initiated {
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
    pub(super) fn respond(&self, im: &InitialMessage) -> pqxdh::Initiated {
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

pub(super) fn check_pqxdh_file(f: &PqxdhFile) -> usize {
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
