//! Sealed envelopes through the `Device` facade: sender authentication against device lists,
//! replays, and delivery keys.
#![cfg(test)]
#![allow(missing_docs)]

mod common;
use common::{bundle, introduce};

use hush_core::device::{Device, DeviceError};
use hush_core::error::{AuthError, Error, ProtocolError};
use hush_core::keys::{AccountKeyPair, DeviceAddress, DeviceIdentityKeyPair};
use hush_core::sealed::{self, DeliveryKey};
use hush_core::store::kv::{KvStore, Namespace};
use hush_core::store::memory::MemoryKv;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

type Snapshot = Vec<(Namespace, Vec<u8>, Vec<u8>)>;

fn snapshot<S: KvStore>(d: &Device<S>) -> Snapshot {
    let mut out = Vec::new();
    for ns in Namespace::ALL {
        for (k, v) in d.store().scan(ns).unwrap() {
            out.push((ns, k, v.to_vec()));
        }
    }
    out
}

fn protocol(e: DeviceError) -> Error {
    match e {
        DeviceError::Protocol(e) => e,
        DeviceError::Store(s) => panic!("store error {s}"),
        DeviceError::Backup(b) => panic!("backup error {b}"),
    }
}

fn two() -> (Device<MemoryKv>, Device<MemoryKv>, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::from_seed([31; 32]);
    let mut alice = Device::create_account(MemoryKv::new(), &mut rng, 1000).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, 1000).unwrap();
    introduce(&mut alice, &bob);
    introduce(&mut bob, &alice);
    (alice, bob, rng)
}

#[test]
fn seal_and_open_between_devices() {
    let (alice, bob, mut rng) = two();
    let env = alice.seal_for(&bob.address(), b"hello", &mut rng).unwrap();
    assert_eq!(env.len(), sealed::sealed_len(5));
    let before = snapshot(&bob);
    let o = bob.open_sealed(&env).unwrap();
    assert_eq!(o.from, alice.address());
    assert_eq!(o.identity, alice.identity());
    assert_eq!(&o.content[..], b"hello");
    assert!(o.delivery_key.ct_eq(&alice.delivery_key()));
    assert_eq!(snapshot(&bob), before);
    // Only Bob opens it: not Alice herself.
    assert!(matches!(
        protocol(alice.open_sealed(&env).unwrap_err()),
        Error::Auth(AuthError::SealedDecryptFailed)
    ));
}

#[test]
fn seal_for_unknown_devices_refused() {
    let (alice, bob, mut rng) = two();
    let stranger = Device::create_account(MemoryKv::new(), &mut rng, 1000).unwrap();
    assert!(matches!(
        protocol(
            alice
                .seal_for(&stranger.address(), b"x", &mut rng)
                .unwrap_err()
        ),
        Error::Protocol(ProtocolError::UnknownAccount)
    ));
    let ghost = DeviceAddress {
        account: bob.address().account,
        device_id: 9,
    };
    assert!(matches!(
        protocol(alice.seal_for(&ghost, b"x", &mut rng).unwrap_err()),
        Error::Protocol(ProtocolError::DeviceNotOnList)
    ));
    let big = vec![0u8; hush_core::consts::MAX_SEALED_CONTENT_LEN + 1];
    assert!(matches!(
        protocol(alice.seal_for(&bob.address(), &big, &mut rng).unwrap_err()),
        Error::Protocol(ProtocolError::TooLarge(_))
    ));
}

#[test]
fn forged_inner_sender_refused() {
    let (alice, bob, mut rng) = two();
    let before = snapshot(&bob);
    // Mallory builds a valid envelope with her own identity keys, claiming Alice's address.
    let mallory = DeviceIdentityKeyPair::generate(&mut rng);
    let dk = DeliveryKey::derive(&mallory, 0);
    let env = sealed::seal(
        &mallory,
        &alice.address(),
        &dk,
        &bob.identity(),
        b"it is me, alice",
        &mut rng,
    )
    .unwrap();
    // The envelope is well built (Bob's identity key opens both layers), but the identity
    // inside is not the one Alice's list names for her device 1.
    assert!(matches!(
        protocol(bob.open_sealed(&env).unwrap_err()),
        Error::Auth(AuthError::SealedSenderMismatch)
    ));
    // Claiming a device id that is not on Alice's list.
    let ghost = DeviceAddress {
        account: alice.address().account,
        device_id: 7,
    };
    let env = sealed::seal(&mallory, &ghost, &dk, &bob.identity(), b"x", &mut rng).unwrap();
    assert!(matches!(
        protocol(bob.open_sealed(&env).unwrap_err()),
        Error::Protocol(ProtocolError::DeviceNotOnList)
    ));
    // An account whose list Bob does not have.
    let other = DeviceAddress {
        account: AccountKeyPair::generate(&mut rng).id(),
        device_id: 1,
    };
    let env = sealed::seal(&mallory, &other, &dk, &bob.identity(), b"x", &mut rng).unwrap();
    assert!(matches!(
        protocol(bob.open_sealed(&env).unwrap_err()),
        Error::Protocol(ProtocolError::UnknownAccount)
    ));
    assert_eq!(snapshot(&bob), before);
}

#[test]
fn unknown_sender_list_then_fetched() {
    let mut rng = ChaCha20Rng::from_seed([32; 32]);
    let mut alice = Device::create_account(MemoryKv::new(), &mut rng, 1000).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, 1000).unwrap();
    introduce(&mut alice, &bob);
    let env = alice.seal_for(&bob.address(), b"hi", &mut rng).unwrap();
    assert!(matches!(
        protocol(bob.open_sealed(&env).unwrap_err()),
        Error::Protocol(ProtocolError::UnknownAccount)
    ));
    // The account whose list to fetch.
    assert_eq!(bob.sealed_sender(&env).unwrap(), alice.address());
    introduce(&mut bob, &alice);
    assert_eq!(&bob.open_sealed(&env).unwrap().content[..], b"hi");
}

#[test]
fn replayed_envelope_opens_but_inner_message_is_a_duplicate() {
    let (mut alice, mut bob, mut rng) = two();
    let (a, b) = (alice.address(), bob.address());
    let pk = bob.published_pre_keys().unwrap();
    alice.start_session(&bundle(&pk), &mut rng, 1000).unwrap();
    // An initial message, then (after Bob's reply) a ratchet message.
    let m1 = alice.encrypt(&b, b"first", &mut rng, 1001).unwrap();
    let s1 = alice.seal_for(&b, &m1, &mut rng).unwrap();
    let o = bob.open_sealed(&s1).unwrap();
    let got = bob.decrypt(&o.from, &o.content, &mut rng, 1002).unwrap();
    bob.ack_message(got.single().unwrap().id).unwrap();
    let r = bob.encrypt(&a, b"reply", &mut rng, 1003).unwrap();
    let sr = bob.seal_for(&a, &r, &mut rng).unwrap();
    let o = alice.open_sealed(&sr).unwrap();
    let got = alice.decrypt(&o.from, &o.content, &mut rng, 1004).unwrap();
    alice.ack_message(got.single().unwrap().id).unwrap();
    let m2 = alice.encrypt(&b, b"second", &mut rng, 1005).unwrap();
    let s2 = alice.seal_for(&b, &m2, &mut rng).unwrap();
    let o = bob.open_sealed(&s2).unwrap();
    let got = bob.decrypt(&o.from, &o.content, &mut rng, 1006).unwrap();
    bob.ack_message(got.single().unwrap().id).unwrap();

    for replay in [&s1, &s2] {
        let before = snapshot(&bob);
        let o = bob.open_sealed(replay).unwrap();
        assert_eq!(o.from, a);
        let Err(e) = bob.decrypt(&o.from, &o.content, &mut rng, 1007) else {
            panic!("replay accepted");
        };
        assert!(
            matches!(protocol(e), Error::Protocol(ProtocolError::Duplicate)),
            "replay not refused as a duplicate"
        );
        assert_eq!(snapshot(&bob), before);
    }
}

#[test]
fn delivery_keys_are_noted_persisted_rotated_and_forgotten() {
    let (mut alice, mut bob, mut rng) = two();
    let a = alice.address();
    assert_eq!(alice.delivery_token(), alice.delivery_key().token());
    assert!(bob.delivery_token_for(&a).is_none());
    let o = bob
        .open_sealed(&alice.seal_for(&bob.address(), b"x", &mut rng).unwrap())
        .unwrap();
    bob.note_delivery_key(&o.from, &o.delivery_key).unwrap();
    assert_eq!(bob.delivery_token_for(&a), Some(alice.delivery_token()));
    // Unchanged: nothing is written.
    let before = snapshot(&bob);
    bob.note_delivery_key(&o.from, &o.delivery_key).unwrap();
    assert_eq!(snapshot(&bob), before);
    // A key for a device not on a known list is refused.
    let ghost = DeviceAddress {
        account: a.account,
        device_id: 5,
    };
    assert!(matches!(
        protocol(bob.note_delivery_key(&ghost, &o.delivery_key).unwrap_err()),
        Error::Protocol(ProtocolError::DeviceNotOnList)
    ));
    // Persisted.
    let mut bob = Device::open(bob.into_store()).unwrap();
    assert_eq!(bob.delivery_token_for(&a), Some(alice.delivery_token()));

    // Rotation: a new token, persisted; the next envelope carries the new key.
    let old = alice.delivery_token();
    alice.rotate_delivery_key().unwrap();
    let new = alice.delivery_token();
    assert_ne!(old, new);
    let mut alice = Device::open(alice.into_store()).unwrap();
    assert_eq!(alice.delivery_token(), new);
    let o = bob
        .open_sealed(&alice.seal_for(&bob.address(), b"y", &mut rng).unwrap())
        .unwrap();
    bob.note_delivery_key(&o.from, &o.delivery_key).unwrap();
    assert_eq!(bob.delivery_token_for(&a), Some(new));

    // A second device of Alice's; its key goes when it leaves the list.
    let mut alice2 = Device::create_linked(MemoryKv::new(), &mut rng, a.account, 2, 1000).unwrap();
    alice.add_device(&alice2.consent(), 1001).unwrap();
    introduce(&mut alice2, &alice);
    introduce(&mut alice2, &bob);
    introduce(&mut bob, &alice);
    let a2 = alice2.address();
    assert_ne!(alice2.delivery_token(), alice.delivery_token());
    let o = bob
        .open_sealed(&alice2.seal_for(&bob.address(), b"z", &mut rng).unwrap())
        .unwrap();
    assert_eq!(o.from, a2);
    bob.note_delivery_key(&o.from, &o.delivery_key).unwrap();
    assert_eq!(bob.delivery_token_for(&a2), Some(alice2.delivery_token()));
    alice.remove_device(2, 1002).unwrap();
    introduce(&mut bob, &alice);
    assert!(bob.delivery_token_for(&a2).is_none());
    assert_eq!(bob.delivery_token_for(&a), Some(new));
    let bob = Device::open(bob.into_store()).unwrap();
    assert!(bob.delivery_token_for(&a2).is_none());
    assert_eq!(bob.delivery_token_for(&a), Some(new));
}
