//! Two and three devices talking through the `Device` facade, with in-memory and sled stores.
#![cfg(test)]
#![allow(missing_docs)]

mod common;
use common::introduce;

use hush_core::device::{Device, DeviceError};
use hush_core::error::{Error, ProtocolError};
use hush_core::prekeys::{PreKeyBundle, PublishedPreKeys};
use hush_core::store::kv::KvStore;
use hush_core::store::memory::MemoryKv;
use hush_proto::wire;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// A bundle of what `p` publishes: with one-time keys taken out (as a relay hands them out), or
/// with none and the last-resort ML-KEM key.
pub fn bundle(p: &mut PublishedPreKeys, use_one_time: bool) -> PreKeyBundle {
    if use_one_time {
        p.claim_bundle()
    } else {
        p.bundle(None, None)
    }
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
        Err(DeviceError::Protocol(Error::Protocol(
            ProtocolError::NoSession
        )))
    ));
    let mut pk = bob.published_pre_keys().unwrap();
    alice
        .start_session(&bundle(&mut pk, true), &mut rng, 1000)
        .unwrap();
    let m1 = alice.encrypt(&b, b"hello bob", &mut rng, 1001).unwrap();
    let m2 = alice.encrypt(&b, b"second", &mut rng, 1002).unwrap();
    let otks = bob.one_time_pre_key_count();
    // Out of order: m2 first.
    assert_eq!(
        &*bob
            .decrypt(&a, &m2, &mut rng, 1003)
            .unwrap()
            .single()
            .unwrap()
            .plaintext,
        b"second"
    );
    assert_eq!(bob.one_time_pre_key_count(), otks - 1);
    assert_eq!(
        &*bob
            .decrypt(&a, &m1, &mut rng, 1004)
            .unwrap()
            .single()
            .unwrap()
            .plaintext,
        b"hello bob"
    );
    // Replays are refused.
    assert!(bob.decrypt(&a, &m1, &mut rng, 1005).is_err());
    assert!(bob.decrypt(&a, &m2, &mut rng, 1005).is_err());
    for i in 0..20 {
        let r = bob
            .encrypt(&a, format!("reply {i}").as_bytes(), &mut rng, 2000 + i)
            .unwrap();
        assert_eq!(
            alice
                .decrypt(&b, &r, &mut rng, 2000 + i)
                .unwrap()
                .single()
                .unwrap()
                .plaintext
                .as_slice(),
            format!("reply {i}").as_bytes()
        );
        let r = alice
            .encrypt(&b, format!("again {i}").as_bytes(), &mut rng, 2000 + i)
            .unwrap();
        assert_eq!(
            bob.decrypt(&a, &r, &mut rng, 2000 + i)
                .unwrap()
                .single()
                .unwrap()
                .plaintext
                .as_slice(),
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
        &*bob
            .decrypt(&a, &r, &mut rng, 3001)
            .unwrap()
            .single()
            .unwrap()
            .plaintext,
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
    assert_eq!(
        &*bob
            .decrypt(&a, &x, &mut rng, 3)
            .unwrap()
            .single()
            .unwrap()
            .plaintext,
        b"from alice"
    );
    assert_eq!(
        &*alice
            .decrypt(&b, &y, &mut rng, 3)
            .unwrap()
            .single()
            .unwrap()
            .plaintext,
        b"from bob"
    );
    for i in 0..10u64 {
        let x = alice.encrypt(&b, b"a", &mut rng, 4 + i).unwrap();
        let y = bob.encrypt(&a, b"b", &mut rng, 4 + i).unwrap();
        assert_eq!(
            &*bob
                .decrypt(&a, &x, &mut rng, 4 + i)
                .unwrap()
                .single()
                .unwrap()
                .plaintext,
            b"a"
        );
        assert_eq!(
            &*alice
                .decrypt(&b, &y, &mut rng, 4 + i)
                .unwrap()
                .single()
                .unwrap()
                .plaintext,
            b"b"
        );
    }
}

mod crash {
    //! A store that "crashes": after a budget of commits, every commit fails without applying
    //! anything, as if the process died at that instant. The device is then reopened from what was
    //! durably committed, and the conversation goes on.
    use super::*;
    use hush_core::store::kv::{Batch, KvEntry, Namespace, StoreError};
    use std::collections::{BTreeSet, HashSet};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use zeroize::Zeroizing;

    #[derive(Clone)]
    struct CrashKv {
        inner: MemoryKv,
        budget: Arc<AtomicU32>,
    }

    impl KvStore for CrashKv {
        fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
            self.inner.get(ns, key)
        }
        fn scan(&self, ns: Namespace) -> Result<Vec<KvEntry>, StoreError> {
            self.inner.scan(ns)
        }
        fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
            let left = self.budget.load(Ordering::SeqCst);
            if left == 0 {
                return Err(StoreError::Io("simulated crash".into()));
            }
            self.budget.store(left - 1, Ordering::SeqCst);
            self.inner.commit(batch)
        }
    }

    fn header_of(bytes: &[u8]) -> (Vec<u8>, u32) {
        use prost::Message;
        let m = wire::PairwiseMessage::decode(bytes).unwrap();
        let r = match m.body.unwrap() {
            wire::pairwise_message::Body::Initial(i) => i.message.unwrap(),
            wire::pairwise_message::Body::Ratchet(r) => r,
        };
        (r.ratchet_key, r.counter)
    }

    /// Runs a 40-step conversation in which Alice's store crashes at her `crash_at`-th commit.
    fn run(crash_at: u32) -> bool {
        let mut rng = ChaCha20Rng::from_seed([crash_at as u8; 32]);
        let budget = Arc::new(AtomicU32::new(u32::MAX));
        let store = CrashKv {
            inner: MemoryKv::new(),
            budget: budget.clone(),
        };
        let mut alice = Device::create_account(store, &mut rng, 0).unwrap();
        let mut bob = Device::create_account(MemoryKv::new(), &mut rng, 0).unwrap();
        introduce(&mut alice, &bob);
        introduce(&mut bob, &alice);
        let (a, b) = (alice.address(), bob.address());
        let mut pk = bob.published_pre_keys().unwrap();
        alice
            .start_session(&bundle(&mut pk, true), &mut rng, 1)
            .unwrap();
        budget.store(crash_at, Ordering::SeqCst);

        let mut crashed = false;
        let mut released = HashSet::new(); // (ratchet key, counter) of every ciphertext Alice let out
        let mut sent_to_alice = BTreeSet::new();
        let mut alice_has = BTreeSet::new(); // what Alice's app has (acked)
        let reopen = |alice: Device<CrashKv>, crashed: &mut bool| {
            *crashed = true;
            let store = alice.into_store();
            store.budget.store(u32::MAX, Ordering::SeqCst);
            // Only committed state survives: reopen from the store as it is.
            Device::open(store).unwrap()
        };
        for step in 0..40u64 {
            let now = 10 + step;
            if step % 3 != 2 {
                let text = format!("a{step}");
                let bytes = loop {
                    match alice.encrypt(&b, text.as_bytes(), &mut rng, now) {
                        Ok(bytes) => break bytes,
                        Err(DeviceError::Store(_)) => alice = reopen(alice, &mut crashed),
                        Err(e) => panic!("{e}"),
                    }
                };
                assert!(
                    released.insert(header_of(&bytes)),
                    "message key reused after a crash"
                );
                assert_eq!(
                    &*bob
                        .decrypt(&a, &bytes, &mut rng, now)
                        .unwrap()
                        .single()
                        .unwrap()
                        .plaintext,
                    text.as_bytes()
                );
            } else {
                let text = format!("b{step}");
                let bytes = bob.encrypt(&a, text.as_bytes(), &mut rng, now).unwrap();
                sent_to_alice.insert(text.clone());
                // The relay redelivers until the device has taken the message.
                let got = loop {
                    match alice.decrypt(&b, &bytes, &mut rng, now) {
                        Ok(r) => break r.single().unwrap(),
                        Err(DeviceError::Store(_)) => alice = reopen(alice, &mut crashed),
                        Err(e) => panic!("{e}"),
                    }
                };
                // The app stores it, then acknowledges; a crash before the ack leaves it pending.
                alice_has.insert(String::from_utf8(got.plaintext.to_vec()).unwrap());
                if alice.ack_message(got.id).is_err() {
                    alice = reopen(alice, &mut crashed);
                }
            }
        }
        // After one more restart, the inbox holds at most what the app already has (acks lost in a
        // crash re-deliver); nothing Bob sent is missing.
        let alice = reopen(alice, &mut false);
        for p in alice.pending_messages().unwrap() {
            alice_has.insert(String::from_utf8(p.plaintext.to_vec()).unwrap());
        }
        assert_eq!(alice_has, sent_to_alice);
        crashed
    }

    #[test]
    fn crash_at_every_commit_loses_nothing_and_reuses_no_key() {
        let mut crashes = 0;
        for crash_at in 0..45 {
            if run(crash_at) {
                crashes += 1;
            }
        }
        // Alice commits once per step (plus acks): every budget below that crashed somewhere.
        assert!(crashes >= 40, "only {crashes} runs crashed");
    }
}

#[test]
fn reregistered_device_gets_a_fresh_session() {
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    let mut alice = Device::create_account(MemoryKv::new(), &mut rng, 0).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, 0).unwrap();
    introduce(&mut alice, &bob);
    introduce(&mut bob, &alice);
    let b = bob.address();
    let mut pk = bob.published_pre_keys().unwrap();
    alice
        .start_session(&bundle(&mut pk, true), &mut rng, 1)
        .unwrap();
    let m = alice.encrypt(&b, b"one", &mut rng, 2).unwrap();
    bob.decrypt(&alice.address(), &m, &mut rng, 3).unwrap();
    assert!(alice.has_session(&b, 4).unwrap());

    // Bob's account registers a new device 2, then replaces it (reinstall: new identity, same id).
    let old2 = Device::create_linked(MemoryKv::new(), &mut rng, b.account, 2, 5).unwrap();
    bob.add_device(&old2.consent(), 5).unwrap();
    introduce(&mut alice, &bob);
    let d2 = old2.address();
    let mut pk2 = old2.published_pre_keys().unwrap();
    alice
        .start_session(&bundle(&mut pk2, true), &mut rng, 6)
        .unwrap();
    assert!(alice.has_session(&d2, 6).unwrap());

    let new2 = Device::create_linked(MemoryKv::new(), &mut rng, b.account, 2, 7).unwrap();
    bob.add_device(&new2.consent(), 7).unwrap();
    introduce(&mut alice, &bob);
    // The old session with device 2 is gone; the one with device 1 is untouched.
    assert!(!alice.has_session(&d2, 8).unwrap());
    assert!(alice.has_session(&b, 8).unwrap());
    // A message from the old identity is refused.
    let mut old2 = old2;
    introduce(&mut old2, &alice);
    let mut pa = alice.published_pre_keys().unwrap();
    old2.start_session(&bundle(&mut pa, true), &mut rng, 9)
        .unwrap();
    let forged = old2
        .encrypt(&alice.address(), b"stale", &mut rng, 9)
        .unwrap();
    assert!(matches!(
        alice.decrypt(&d2, &forged, &mut rng, 10),
        Err(DeviceError::Protocol(Error::Auth(
            hush_core::error::AuthError::IdentityMismatch
        )))
    ));
    // Removing a device also ends its sessions.
    bob.remove_device(2, 11).unwrap();
    introduce(&mut alice, &bob);
    assert!(matches!(
        alice.has_session(&d2, 12),
        Err(DeviceError::Protocol(Error::Protocol(
            ProtocolError::DeviceNotOnList
        )))
    ));
    // An older list is refused.
    let old_list = bob.device_list(&b.account).unwrap().clone();
    bob.add_device(&new2.consent(), 13).unwrap();
    introduce(&mut alice, &bob);
    assert!(matches!(
        alice.accept_device_list(old_list.signed_bytes(), &b.account, 14),
        Err(DeviceError::Protocol(Error::Protocol(
            ProtocolError::DeviceListRollback { .. }
        )))
    ));
}

#[test]
fn idle_sessions_are_retired() {
    use hush_core::consts::SESSION_MAX_IDLE_MS;
    let mut rng = ChaCha20Rng::from_seed([4; 32]);
    let mut alice = Device::create_account(MemoryKv::new(), &mut rng, 0).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, 0).unwrap();
    introduce(&mut alice, &bob);
    introduce(&mut bob, &alice);
    let b = bob.address();
    let mut pk = bob.published_pre_keys().unwrap();
    alice
        .start_session(&bundle(&mut pk, true), &mut rng, 1)
        .unwrap();
    let m = alice.encrypt(&b, b"one", &mut rng, 2).unwrap();
    bob.decrypt(&alice.address(), &m, &mut rng, 3).unwrap();
    let later = 2 + SESSION_MAX_IDLE_MS + 1;
    // A stale session is not used for sending, and the sweep deletes it.
    assert!(!alice.has_session(&b, later).unwrap());
    assert_eq!(alice.retire_stale_sessions(later).unwrap(), 1);
    assert_eq!(alice.retire_stale_sessions(later).unwrap(), 0);
    // A fresh session works again (the last-resort path: no one-time keys in this bundle).
    alice
        .start_session(&bundle(&mut pk, false), &mut rng, later)
        .unwrap();
    let m = alice.encrypt(&b, b"two", &mut rng, later).unwrap();
    assert_eq!(
        &*bob
            .decrypt(&alice.address(), &m, &mut rng, later)
            .unwrap()
            .single()
            .unwrap()
            .plaintext,
        b"two"
    );
}

#[test]
fn a_crash_during_creation_leaves_a_store_that_can_start_over() {
    use hush_core::store::kv::{Batch, KvEntry, Namespace, StoreError};
    use std::sync::{Arc, Mutex};
    use zeroize::Zeroizing;
    /// Shares its contents with the test and fails every commit after the first `ok` ones.
    struct Failing {
        inner: Arc<Mutex<MemoryKv>>,
        ok: u32,
    }
    impl KvStore for Failing {
        fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
            self.inner.lock().unwrap().get(ns, key)
        }
        fn scan(&self, ns: Namespace) -> Result<Vec<KvEntry>, StoreError> {
            self.inner.lock().unwrap().scan(ns)
        }
        fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
            if self.ok == 0 {
                return Err(StoreError::Io("simulated crash".into()));
            }
            self.ok -= 1;
            self.inner.lock().unwrap().commit(batch)
        }
    }
    let mut rng = ChaCha20Rng::from_seed([9; 32]);
    for ok in 0..10u32 {
        let inner = Arc::new(Mutex::new(MemoryKv::new()));
        let store = Failing {
            inner: inner.clone(),
            ok,
        };
        if Device::create_account(store, &mut rng, 0).is_ok() {
            assert!(
                ok > 0,
                "creation must take several commits for this test to mean anything"
            );
            return;
        }
        // What the crash left is not a device, and creation can start over in it.
        let left = inner.lock().unwrap().clone();
        assert!(Device::open(left.clone()).is_err());
        let d = Device::create_account(left, &mut rng, 1).unwrap();
        let reopened = Device::open(d.into_store()).unwrap();
        assert!(reopened.holds_account_key());
        assert!(reopened.device_list(&reopened.address().account).is_some());
        assert!(reopened.one_time_pre_key_count() > 0);
    }
    panic!("creation never succeeded");
}
