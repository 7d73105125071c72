//! Fixtures shared by the Hush benchmarks: pre-key bundles, established 1:1 sessions, sender keys
//! and `Device` pairs, built with a seeded RNG so every run measures the same work.
//!
//! The `bench-report` binary (`src/bin/bench-report.rs`) reads criterion's results and prints the
//! Hush / vodozemac comparison.

use hush_core::device::Device;
use hush_core::device_list::{DeviceEntry, DeviceList, VerifiedDeviceList};
use hush_core::error::{ProtocolError, Result};
use hush_core::keys::{AccountId, AccountKeyPair, DeviceAddress, DeviceIdentityKeyPair};
use hush_core::pqxdh::{self, InitialMessage, InitiatorSecrets};
use hush_core::prekeys::{
    KemPreKeyPair, OneTimePreKeyPair, PreKeyBundle, PublishedPreKeys, SignedPreKeyPair,
};
use hush_core::ratchet::SessionState;
use hush_core::store::kv::KvStore;
use hush_proto::wire;
use rand_chacha::ChaCha20Rng;

/// Everything both sides of one PQXDH handshake need: Bob's published keys (signed device list,
/// unverified bundle with a one-time and an ML-KEM one-time pre-key) and secrets, Alice's identity.
pub struct Handshake {
    /// Bob's signed device list (what Alice fetched and verified).
    pub bob_list: VerifiedDeviceList,
    /// Bob's pre-key bundle as the relay serves it (not verified yet).
    pub bundle: PreKeyBundle,
    /// Bob's address.
    pub bob_addr: DeviceAddress,
    /// Bob's device identity.
    pub bob_id: DeviceIdentityKeyPair,
    /// Bob's signed pre-key.
    pub spk: SignedPreKeyPair,
    /// Bob's one-time pre-key.
    pub otk: OneTimePreKeyPair,
    /// Bob's ML-KEM-768 one-time pre-key.
    pub kem: KemPreKeyPair,
    /// Alice's address.
    pub alice_addr: DeviceAddress,
    /// Alice's device identity.
    pub alice_id: DeviceIdentityKeyPair,
}

/// Makes fresh keys for one handshake.
pub fn handshake(rng: &mut ChaCha20Rng) -> Result<Handshake> {
    let account = AccountKeyPair::generate(rng);
    let bob_id = DeviceIdentityKeyPair::generate(rng);
    let alice_id = DeviceIdentityKeyPair::generate(rng);
    let mut devices = std::collections::BTreeMap::new();
    devices.insert(
        1,
        DeviceEntry {
            device_id: 1,
            identity: bob_id.public(),
            added_at: 0,
            consent: bob_id.consent(&account.id(), 1),
        },
    );
    let bob_list = DeviceList {
        account: account.id(),
        version: 1,
        issued_at: 0,
        devices,
    }
    .sign(&account)?;
    let spk = SignedPreKeyPair::generate(rng, &bob_id, 1, 0);
    let otk = OneTimePreKeyPair::generate(rng, 2);
    let kem = KemPreKeyPair::generate(rng, &bob_id, 3, false, 0);
    let bundle = PreKeyBundle(wire::PreKeyBundle {
        account_key: account.id().as_bytes().to_vec(),
        device_id: 1,
        identity: Some(wire::DeviceIdentityKey {
            signing_key: bob_id.public().signing_key().to_vec(),
            dh_key: bob_id.public().dh_key().to_vec(),
        }),
        signed_pre_key: Some(spk.to_wire()),
        one_time_pre_key: Some(otk.to_wire()),
        kem_pre_key: Some(kem.to_wire()),
    });
    let alice_addr = DeviceAddress {
        account: AccountKeyPair::generate(rng).id(),
        device_id: 1,
    };
    let bob_addr = DeviceAddress {
        account: account.id(),
        device_id: 1,
    };
    Ok(Handshake {
        bob_list,
        bundle,
        bob_addr,
        bob_id,
        spk,
        otk,
        kem,
        alice_addr,
        alice_id,
    })
}

impl Handshake {
    /// Alice's side: verifies the bundle and starts a session, then encrypts the first message;
    /// returns her session and the initial (pre-key) message Bob receives.
    pub fn initiate(
        &self,
        first: &[u8],
        rng: &mut ChaCha20Rng,
    ) -> Result<(SessionState, InitialMessage)> {
        let bundle = self.bundle.verify(&self.bob_list)?;
        let mut alice = pqxdh::initiate(
            self.alice_addr,
            &self.alice_id,
            &bundle,
            InitiatorSecrets::random(rng),
            0,
        )?
        .session;
        let enc = alice.encrypt(first, rng, 0)?;
        let pending = alice.pending().cloned().ok_or(ProtocolError::Misuse(
            "a new session carries its PQXDH header",
        ))?;
        let initial = InitialMessage {
            sender: self.alice_addr,
            sender_identity: self.alice_id.public(),
            base_key: pending.base_key,
            signed_pre_key_id: pending.signed_pre_key_id,
            one_time_pre_key_id: pending.one_time_pre_key_id,
            kem_pre_key_id: pending.kem_pre_key_id,
            kem_ciphertext: pending.kem_ciphertext,
            message: enc.message,
        };
        Ok((alice, initial))
    }

    /// Bob's side: PQXDH responder and the decryption of the first message.
    pub fn respond(&self, initial: &InitialMessage) -> Result<SessionState> {
        let mut bob = pqxdh::respond(
            self.bob_addr,
            &self.bob_id,
            &self.spk,
            Some(&self.otk),
            &self.kem,
            initial,
            0,
        )?
        .session;
        bob.decrypt(&initial.message, 0)?;
        Ok(bob)
    }
}

/// A 1:1 session pair: Alice's state (sending) and Bob's (receiving), after the PQXDH handshake
/// and one message each way, so both have a regular sending chain.
pub struct SessionPair {
    /// The initiator's session.
    pub alice: SessionState,
    /// The responder's session.
    pub bob: SessionState,
}

/// Establishes one session pair with fresh keys.
pub fn session_pair(rng: &mut ChaCha20Rng) -> Result<SessionPair> {
    let h = handshake(rng)?;
    let (mut alice, initial) = h.initiate(b"hello", rng)?;
    let mut bob = h.respond(&initial)?;
    let reply = bob.encrypt(b"hi", rng, 0)?;
    alice.decrypt(&reply.message, 0)?;
    Ok(SessionPair { alice, bob })
}

/// A clone of a session through its stored form (what a device does when it loads one).
pub fn clone_session(s: &SessionState) -> Result<SessionState> {
    SessionState::from_proto(&s.to_proto())
}

/// The bundle a relay would hand out for `p`, taking one one-time and one ML-KEM one-time pre-key.
pub fn bundle_from(p: &mut PublishedPreKeys) -> PreKeyBundle {
    p.claim_bundle()
}

/// Two devices of two accounts that know each other's device lists and have a session with one
/// message each way (so Alice's next message is a regular ratchet message on an existing chain).
/// Bob's inbox is emptied.
pub fn device_pair<S: KvStore>(
    alice_store: S,
    bob_store: S,
    rng: &mut ChaCha20Rng,
) -> hush_core::device::Result<(Device<S>, Device<S>)> {
    let mut alice = Device::create_account(alice_store, rng, 0)?;
    let mut bob = Device::create_account(bob_store, rng, 0)?;
    let (a, b) = (alice.address(), bob.address());
    let list_of = |d: &Device<S>, acct: &AccountId| {
        d.device_list(acct)
            .map(|l| l.signed_bytes().to_vec())
            .unwrap_or_default()
    };
    let bob_list = list_of(&bob, &b.account);
    let alice_list = list_of(&alice, &a.account);
    alice.accept_device_list(&bob_list, &b.account, 0)?;
    bob.accept_device_list(&alice_list, &a.account, 0)?;
    let mut published = bob.published_pre_keys()?;
    alice.start_session(&bundle_from(&mut published), rng, 0)?;
    let first = alice.encrypt(&b, b"hello", rng, 0)?;
    for r in bob.decrypt(&a, &first, rng, 0)?.received {
        bob.ack_message(r.id)?;
    }
    let reply = bob.encrypt(&a, b"hi", rng, 0)?;
    for r in alice.decrypt(&b, &reply, rng, 0)?.received {
        alice.ack_message(r.id)?;
    }
    // Alice's first message on her new chain takes the DH step; the benches start after it.
    let second = alice.encrypt(&b, b"again", rng, 0)?;
    for r in bob.decrypt(&a, &second, rng, 0)?.received {
        bob.ack_message(r.id)?;
    }
    Ok((alice, bob))
}
