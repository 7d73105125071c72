//! Fixtures shared by the Hush benchmarks: established 1:1 sessions and sender keys, built with a
//! seeded RNG so every run measures the same work.

use hush_core::device_list::{DeviceEntry, DeviceList};
use hush_core::error::Result;
use hush_core::keys::{AccountKeyPair, DeviceAddress, DeviceIdentityKeyPair};
use hush_core::pqxdh::{self, InitiatorSecrets};
use hush_core::prekeys::{KemPreKeyPair, OneTimePreKeyPair, PreKeyBundle, SignedPreKeyPair};
use hush_core::ratchet::SessionState;
use hush_proto::wire;
use rand_chacha::ChaCha20Rng;

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
        },
    );
    let list = DeviceList {
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
    })
    .verify(&list)?;
    let alice_addr = DeviceAddress {
        account: AccountKeyPair::generate(rng).id(),
        device_id: 1,
    };
    let mut alice = pqxdh::initiate(
        alice_addr,
        &alice_id,
        &bundle,
        InitiatorSecrets::random(rng),
        0,
    )?
    .session;
    let first = alice.encrypt(b"hello", rng, 0)?;
    let initial = pqxdh::InitialMessage {
        sender: alice_addr,
        sender_identity: alice_id.public(),
        base_key: *alice.base_key(),
        signed_pre_key_id: 1,
        one_time_pre_key_id: Some(2),
        kem_pre_key_id: 3,
        kem_ciphertext: alice
            .pending()
            .map(|p| p.kem_ciphertext.clone())
            .unwrap_or_default(),
        message: first.message,
    };
    let bob_addr = DeviceAddress {
        account: account.id(),
        device_id: 1,
    };
    let mut bob = pqxdh::respond(bob_addr, &bob_id, &spk, Some(&otk), &kem, &initial, 0)?.session;
    bob.decrypt(&initial.message, 0)?;
    let reply = bob.encrypt(b"hi", rng, 0)?;
    alice.decrypt(&reply.message, 0)?;
    Ok(SessionPair { alice, bob })
}
