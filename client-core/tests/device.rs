//! Two and three devices talking through the `Device` facade, with in-memory and sled stores.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use hush_core::device::Device;
use hush_core::error::{Error, ProtocolError};
use hush_core::prekeys::{PreKeyBundle, PublishedPreKeys};
use hush_core::store::kv::KvStore;
use hush_core::store::memory::MemoryKv;
use hush_proto::wire;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub fn bundle(p: &mut PublishedPreKeys, use_one_time: bool) -> PreKeyBundle {
    let otk = if use_one_time && !p.one_time_pre_keys.is_empty() {
        Some(p.one_time_pre_keys.remove(0))
    } else {
        None
    };
    let kem = if use_one_time && !p.kem_pre_keys.is_empty() {
        p.kem_pre_keys.remove(0)
    } else {
        p.last_resort_kem_pre_key.clone()
    };
    PreKeyBundle(wire::PreKeyBundle {
        account_key: p.address.account.as_bytes().to_vec(),
        device_id: p.address.device_id,
        identity: Some(wire::DeviceIdentityKey {
            signing_key: p.identity.signing_key().to_vec(),
            dh_key: p.identity.dh_key().to_vec(),
        }),
        signed_pre_key: Some(p.signed_pre_key.clone()),
        one_time_pre_key: otk,
        kem_pre_key: Some(kem),
    })
}

fn introduce<S: KvStore, T: KvStore>(a: &mut Device<S>, b: &Device<T>) {
    let acct = b.address().account;
    let list = b.device_list(&acct).unwrap().signed_bytes().to_vec();
    a.accept_device_list(&list, &acct, 0).unwrap();
}

#[test]
fn alice_and_bob_talk() {
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let mut alice = Device::create_account(MemoryKv::new(), &mut rng, 1000).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, 1000).unwrap();
    introduce(&mut alice, &bob);
    introduce(&mut bob, &alice);
    let (a, b) = (alice.address(), bob.address());
    assert!(!alice.has_session(&b, 1000).unwrap());
    assert!(matches!(
        alice.encrypt(&b, b"hi", &mut rng, 1000),
        Err(Error::Protocol(ProtocolError::NoSession))
    ));
    let mut pk = bob.published_pre_keys().unwrap();
    alice
        .start_session(&bundle(&mut pk, true), &mut rng, 1000)
        .unwrap();
    let m1 = alice.encrypt(&b, b"hello bob", &mut rng, 1001).unwrap();
    let m2 = alice.encrypt(&b, b"second", &mut rng, 1002).unwrap();
    let otks = bob.one_time_pre_key_count();
    // Out of order: m2 first.
    assert_eq!(&*bob.decrypt(&a, &m2, 1003).unwrap().plaintext, b"second");
    assert_eq!(bob.one_time_pre_key_count(), otks - 1);
    assert_eq!(
        &*bob.decrypt(&a, &m1, 1004).unwrap().plaintext,
        b"hello bob"
    );
    // Replays are refused.
    assert!(bob.decrypt(&a, &m1, 1005).is_err());
    assert!(bob.decrypt(&a, &m2, 1005).is_err());
    for i in 0..20 {
        let r = bob
            .encrypt(&a, format!("reply {i}").as_bytes(), &mut rng, 2000 + i)
            .unwrap();
        assert_eq!(
            alice
                .decrypt(&b, &r, 2000 + i)
                .unwrap()
                .plaintext
                .as_slice(),
            format!("reply {i}").as_bytes()
        );
        let r = alice
            .encrypt(&b, format!("again {i}").as_bytes(), &mut rng, 2000 + i)
            .unwrap();
        assert_eq!(
            bob.decrypt(&a, &r, 2000 + i).unwrap().plaintext.as_slice(),
            format!("again {i}").as_bytes()
        );
    }
    // Inbox: everything decrypted is pending until acknowledged.
    let pending = bob.pending_messages().unwrap();
    assert_eq!(pending.len(), 22);
    for p in pending {
        bob.ack_message(p.id).unwrap();
    }
    assert!(bob.pending_messages().unwrap().is_empty());
    // Restart from the store.
    let store = alice.into_store();
    let mut alice = Device::open(store).unwrap();
    let r = alice.encrypt(&b, b"after restart", &mut rng, 3000).unwrap();
    assert_eq!(
        &*bob.decrypt(&a, &r, 3001).unwrap().plaintext,
        b"after restart"
    );
}

#[test]
fn simultaneous_initiation_heals() {
    let mut rng = ChaCha20Rng::from_seed([2; 32]);
    let mut alice = Device::create_account(MemoryKv::new(), &mut rng, 0).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, 0).unwrap();
    introduce(&mut alice, &bob);
    introduce(&mut bob, &alice);
    let (a, b) = (alice.address(), bob.address());
    let mut pa = alice.published_pre_keys().unwrap();
    let mut pb = bob.published_pre_keys().unwrap();
    alice
        .start_session(&bundle(&mut pb, true), &mut rng, 1)
        .unwrap();
    bob.start_session(&bundle(&mut pa, true), &mut rng, 1)
        .unwrap();
    let x = alice.encrypt(&b, b"from alice", &mut rng, 2).unwrap();
    let y = bob.encrypt(&a, b"from bob", &mut rng, 2).unwrap();
    assert_eq!(&*bob.decrypt(&a, &x, 3).unwrap().plaintext, b"from alice");
    assert_eq!(&*alice.decrypt(&b, &y, 3).unwrap().plaintext, b"from bob");
    for i in 0..10u64 {
        let x = alice.encrypt(&b, b"a", &mut rng, 4 + i).unwrap();
        let y = bob.encrypt(&a, b"b", &mut rng, 4 + i).unwrap();
        assert_eq!(&*bob.decrypt(&a, &x, 4 + i).unwrap().plaintext, b"a");
        assert_eq!(&*alice.decrypt(&b, &y, 4 + i).unwrap().plaintext, b"b");
    }
}
