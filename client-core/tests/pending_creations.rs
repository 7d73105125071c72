//! Pending group creations (PROTOCOL.md §17.5, §14 item 22): a new group's secret, signed
//! creation and sealed entry are committed by `create_group`, before the creation can reach the
//! relay; they survive a restart, leave the store in the commit that stores the group, stay when
//! that commit fails, and are given up when dropped, expired or unreadable.
#![cfg(test)]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;
use common::{Shared, bundle, introduce};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hush_core::consts::{MAX_PENDING_CREATIONS, PENDING_CREATION_MAX_AGE_MS};
use hush_core::device::{CreationDropped, Device, DeviceError};
use hush_core::error::{Error, ProtocolError};
use hush_core::store::kv::{Batch, KvEntry, KvStore, Namespace, StoreError};
use hush_core::store::memory::MemoryKv;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use zeroize::Zeroizing;

/// A shared store whose commits fail while `fail` is set.
#[derive(Clone, Default)]
struct Flaky {
    inner: Shared,
    fail: Arc<AtomicBool>,
}

impl KvStore for Flaky {
    fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        self.inner.get(ns, key)
    }
    fn scan(&self, ns: Namespace) -> Result<Vec<KvEntry>, StoreError> {
        self.inner.scan(ns)
    }
    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Io("commit refused by the test".into()));
        }
        self.inner.commit(batch)
    }
}

fn in_store<S: KvStore>(d: &Device<S>) -> usize {
    d.store().scan(Namespace::PendingCreations).unwrap().len()
}

#[test]
fn a_pending_creation_survives_a_restart_and_lands_with_its_group() {
    let mut rng = ChaCha20Rng::seed_from_u64(31);
    let store = Shared::default();
    let mut alice = Device::create_account(store.clone(), &mut rng, 1).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, 1).unwrap();
    introduce(&mut alice, &bob);
    introduce(&mut bob, &alice);
    let pk = bob.published_pre_keys().unwrap();
    alice.start_session(&bundle(&pk), &mut rng, 10).unwrap();

    let w = alice
        .create_group("kept", &[bob.address().account], &mut rng, 100)
        .unwrap();
    let (g, entry, slot) = (w.group, w.entry.clone(), w.slot());
    // Committed before the write is handed to the relay.
    assert_eq!(in_store(&alice), 1);
    // The process dies with the write in flight (its answer never comes).
    drop(w);
    drop(alice);

    let mut alice = Device::open(store.clone()).unwrap();
    assert!(alice.group(&g).is_none(), "not a group before it landed");
    assert_eq!(alice.pending_creation_count().unwrap(), 1);
    let mut pending = alice.pending_creations(200).unwrap();
    assert_eq!(pending.len(), 1);
    let p = pending.pop().unwrap();
    assert_eq!((p.group, p.name.as_str(), p.created_at), (g, "kept", 100));
    // The same entry, byte for byte, under the same slot and token: what was (or was not)
    // appended, to compare with entry 1 of the log or to append again.
    assert_eq!(p.write.entry, entry);
    assert_eq!((p.write.group, p.write.seq, p.write.slot()), (g, 1, slot));
    assert!(alice.pending_creation(&g).unwrap().is_some());

    // The log shows it: the group is stored with its notice, the pending creation leaves.
    let landed = alice.group_write_landed(p.write, &mut rng, 300).unwrap();
    assert!(landed.changed);
    assert_eq!(landed.outgoing.len(), 1);
    assert!(alice.group(&g).is_some());
    assert_eq!(in_store(&alice), 0);
    assert!(alice.pending_creations(400).unwrap().is_empty());
    assert_eq!(alice.pending_notice_count(), 1);

    // Bob joins from the notice and the entry the record kept.
    let incoming = bob
        .decrypt(&alice.address(), &landed.outgoing[0].bytes, &mut rng, 500)
        .unwrap();
    assert_eq!(incoming.group_logs, vec![g]);
    let update = bob
        .accept_group_log(&g, 1, &[(1, entry)], &mut rng, 500)
        .unwrap();
    assert!(update.changed);
    assert!(
        bob.group(&g)
            .unwrap()
            .state()
            .is_member(&bob.address().account)
    );

    drop(alice);
    let alice = Device::open(store).unwrap();
    assert!(alice.group(&g).is_some());
    assert_eq!(alice.pending_creation_count().unwrap(), 0);
}

#[test]
fn a_failed_landing_keeps_the_creation_pending_and_landing_twice_changes_nothing() {
    let mut rng = ChaCha20Rng::seed_from_u64(32);
    let store = Flaky::default();
    let mut alice = Device::create_account(store.clone(), &mut rng, 1).unwrap();
    let w = alice.create_group("flaky", &[], &mut rng, 100).unwrap();
    let g = w.group;
    store.fail.store(true, Ordering::SeqCst);
    assert!(matches!(
        alice.group_write_landed(w, &mut rng, 200),
        Err(DeviceError::Store(_))
    ));
    store.fail.store(false, Ordering::SeqCst);
    assert!(alice.group(&g).is_none());
    drop(alice);

    let mut alice = Device::open(store.clone()).unwrap();
    let p = alice.pending_creations(300).unwrap().pop().unwrap();
    let again = alice.pending_creation(&g).unwrap().unwrap();
    alice.group_write_landed(p.write, &mut rng, 300).unwrap();
    assert!(alice.group(&g).is_some());
    // A second resolution of the same creation (two connections checking it at once).
    let update = alice
        .group_write_landed(again.write, &mut rng, 301)
        .unwrap();
    assert!(!update.changed);
    assert!(update.outgoing.is_empty());
    assert_eq!(in_store(&alice), 0);
}

#[test]
fn pending_creations_expire_and_can_be_dropped() {
    let mut rng = ChaCha20Rng::seed_from_u64(33);
    let store = Shared::default();
    let mut alice = Device::create_account(store.clone(), &mut rng, 1).unwrap();
    let old = alice.create_group("old", &[], &mut rng, 100).unwrap().group;
    let later = alice
        .create_group("later", &[], &mut rng, 200)
        .unwrap()
        .group;
    let other = alice
        .create_group("other", &[], &mut rng, 300)
        .unwrap()
        .group;
    assert_eq!(alice.pending_creation_count().unwrap(), 3);

    // Not yet expired at exactly the age limit; oldest first.
    let at_limit = 100 + PENDING_CREATION_MAX_AGE_MS;
    let groups: Vec<_> = alice
        .pending_creations(at_limit)
        .unwrap()
        .into_iter()
        .map(|p| p.group)
        .collect();
    assert_eq!(groups, vec![old, later, other]);
    // Past it: dropped, from the store too.
    let left: Vec<_> = alice
        .pending_creations(at_limit + 1)
        .unwrap()
        .into_iter()
        .map(|p| p.group)
        .collect();
    assert_eq!(left, vec![later, other]);
    assert_eq!(in_store(&alice), 2);

    assert!(
        alice
            .drop_pending_creation(&other, CreationDropped::SlotTaken)
            .unwrap()
    );
    assert!(
        !alice
            .drop_pending_creation(&other, CreationDropped::SlotTaken)
            .unwrap()
    );
    drop(alice);
    let mut alice = Device::open(store.clone()).unwrap();
    let left: Vec<_> = alice
        .pending_creations(at_limit + 1)
        .unwrap()
        .into_iter()
        .map(|p| p.group)
        .collect();
    assert_eq!(left, vec![later]);

    // A damaged record is dropped, not returned.
    let mut batch = Batch::new();
    batch.put(
        Namespace::PendingCreations,
        later.0.to_vec(),
        Zeroizing::new(vec![1, 2, 3]),
    );
    store.clone().commit(batch).unwrap();
    assert!(alice.pending_creation(&later).unwrap().is_none());
    assert!(alice.pending_creations(at_limit + 2).unwrap().is_empty());
    assert_eq!(in_store(&alice), 0);
}

#[test]
fn creations_past_the_bound_are_refused_until_one_is_resolved() {
    let mut rng = ChaCha20Rng::seed_from_u64(34);
    let mut alice = Device::create_account(MemoryKv::new(), &mut rng, 1).unwrap();
    let mut first = None;
    for i in 0..MAX_PENDING_CREATIONS {
        let w = alice
            .create_group("g", &[], &mut rng, 100 + i as u64)
            .unwrap();
        first.get_or_insert(w.group);
    }
    let refused = alice.create_group("one too many", &[], &mut rng, 500);
    assert!(matches!(
        refused,
        Err(DeviceError::Protocol(Error::Protocol(
            ProtocolError::Misuse(_)
        )))
    ));
    assert_eq!(in_store(&alice), MAX_PENDING_CREATIONS);
    let p = alice.pending_creation(&first.unwrap()).unwrap().unwrap();
    alice.group_write_landed(p.write, &mut rng, 600).unwrap();
    alice.create_group("now", &[], &mut rng, 700).unwrap();
    assert_eq!(in_store(&alice), MAX_PENDING_CREATIONS);
}
