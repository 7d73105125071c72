//! Pending group notices (PROTOCOL.md §17.5): the notices of a device's own change are kept in
//! its store with the change, survive a restart before they are sent, are sealed later for a
//! device it had no session (or no list) with, and leave the store once the relay took them,
//! expired, or are no longer wanted.
#![cfg(test)]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;
use common::{Shared, bundle, introduce};

use hush_core::consts::PENDING_NOTICE_MAX_AGE_MS;
use hush_core::device::{Device, DeviceError, NoticeKey, NoticeTargets};
use hush_core::error::{Error, ProtocolError};
use hush_core::sender_key::GroupId;
use hush_core::store::kv::{KvStore, Namespace};
use hush_core::store::memory::MemoryKv;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Bob, told of a group by `bytes` from `from`, reads its log (`entries`) and is a member.
fn bob_joins(
    bob: &mut Device<MemoryKv>,
    from: &hush_core::keys::DeviceAddress,
    bytes: &[u8],
    g: &GroupId,
    entries: &[(u64, Vec<u8>)],
    rng: &mut ChaCha20Rng,
    now: u64,
) {
    let incoming = bob.decrypt(from, bytes, rng, now).unwrap();
    assert_eq!(incoming.group_logs, vec![*g], "the notice is an invitation");
    let head = entries.last().unwrap().0;
    let update = bob.accept_group_log(g, head, entries, rng, now).unwrap();
    assert!(update.changed);
    let me = bob.address().account;
    assert!(bob.group(g).unwrap().state().is_member(&me));
}

fn pending_in_store<S: KvStore>(d: &Device<S>) -> usize {
    d.store().scan(Namespace::PendingNotices).unwrap().len()
}

#[test]
fn notices_survive_a_restart_before_sending_and_leave_once_the_relay_took_them() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let store = Shared::default();
    let mut alice = Device::create_account(store.clone(), &mut rng, 1).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, 1).unwrap();
    introduce(&mut alice, &bob);
    introduce(&mut bob, &alice);
    let pk = bob.published_pre_keys().unwrap();
    alice.start_session(&bundle(&pk), &mut rng, 10).unwrap();
    let a = alice.address();

    let w = alice
        .create_group("t", &[bob.address().account], &mut rng, 100)
        .unwrap();
    let (g, entry) = (w.group, w.entry.clone());
    let landed = alice.group_write_landed(w, &mut rng, 100).unwrap();
    assert_eq!(landed.outgoing.len(), 1);
    assert!(landed.unreached.is_empty());
    // The process dies before the notice is handed to the relay.
    drop(alice);

    let mut alice = Device::open(store.clone()).unwrap();
    assert_eq!(alice.pending_notice_count(), 1);
    let pending = alice.pending_notices(&mut rng, 200).unwrap();
    assert_eq!(pending.len(), 1);
    let key = NoticeKey {
        group: g,
        seq: 1,
        to: bob.address(),
    };
    assert_eq!(pending[0].key, key);
    // The notice sealed with the change, byte for byte, under one client id every time.
    assert_eq!(pending[0].bytes, landed.outgoing[0].bytes);
    let again = alice.pending_notices(&mut rng, 300).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].client_id, pending[0].client_id);
    assert_eq!(again[0].bytes, pending[0].bytes);

    // Bob gets the secret from it and joins.
    bob_joins(
        &mut bob,
        &a,
        &pending[0].bytes,
        &g,
        &[(1, entry)],
        &mut rng,
        400,
    );
    // A second copy (a resend whose first answer was lost, queued again) is a duplicate.
    let dup = bob.decrypt(&a, &again[0].bytes, &mut rng, 401);
    assert!(matches!(
        dup,
        Err(DeviceError::Protocol(Error::Protocol(
            ProtocolError::Duplicate
        )))
    ));

    // The relay took it: gone, in memory and in the store, and after a restart too.
    alice.notices_sent(&[key]).unwrap();
    assert_eq!(alice.pending_notice_count(), 0);
    assert!(alice.pending_notices(&mut rng, 500).unwrap().is_empty());
    drop(alice);
    let alice = Device::open(store).unwrap();
    assert_eq!(alice.pending_notice_count(), 0);
    assert_eq!(pending_in_store(&alice), 0);
}

#[test]
fn a_notice_for_a_device_without_a_session_is_sealed_once_one_exists_even_after_a_restart() {
    let mut rng = ChaCha20Rng::seed_from_u64(22);
    let store = Shared::default();
    let mut alice = Device::create_account(store.clone(), &mut rng, 1).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, 1).unwrap();
    introduce(&mut alice, &bob);
    introduce(&mut bob, &alice);
    let (a, b) = (alice.address(), bob.address());

    let w = alice
        .create_group("t", &[b.account], &mut rng, 100)
        .unwrap();
    let (g, entry) = (w.group, w.entry.clone());
    let landed = alice.group_write_landed(w, &mut rng, 100).unwrap();
    assert!(landed.outgoing.is_empty());
    assert_eq!(landed.unreached, vec![b]);
    drop(alice);

    let mut alice = Device::open(store.clone()).unwrap();
    // Nothing to send yet: it waits for a session with Bob's device.
    assert!(alice.pending_notices(&mut rng, 200).unwrap().is_empty());
    assert_eq!(
        alice.pending_notice_targets(200).unwrap(),
        NoticeTargets {
            accounts: Vec::new(),
            devices: vec![b],
        }
    );
    let pk = bob.published_pre_keys().unwrap();
    alice.start_session(&bundle(&pk), &mut rng, 300).unwrap();
    assert!(alice.pending_notice_targets(300).unwrap().is_empty());
    let pending = alice.pending_notices(&mut rng, 300).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key.to, b);
    // Sealed once, durably: the same bytes after a restart.
    drop(alice);
    let mut alice = Device::open(store).unwrap();
    let again = alice.pending_notices(&mut rng, 400).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].bytes, pending[0].bytes);
    assert_eq!(again[0].client_id, pending[0].client_id);

    bob_joins(
        &mut bob,
        &a,
        &pending[0].bytes,
        &g,
        &[(1, entry)],
        &mut rng,
        500,
    );
    alice.notices_sent(&[pending[0].key]).unwrap();
    assert_eq!(alice.pending_notice_count(), 0);
}

#[test]
fn a_notice_for_an_account_whose_list_was_not_held_reaches_each_of_its_devices_later() {
    let mut rng = ChaCha20Rng::seed_from_u64(23);
    let mut alice = Device::create_account(MemoryKv::new(), &mut rng, 1).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, 1).unwrap();
    introduce(&mut bob, &alice);
    let (a, b) = (alice.address(), bob.address());

    let w = alice
        .create_group("t", &[b.account], &mut rng, 100)
        .unwrap();
    let (g, entry) = (w.group, w.entry.clone());
    let landed = alice.group_write_landed(w, &mut rng, 100).unwrap();
    assert!(landed.outgoing.is_empty());
    assert_eq!(landed.unreached.len(), 1);
    assert_eq!(landed.unreached[0].account, b.account);
    assert_eq!(
        alice.pending_notice_targets(100).unwrap(),
        NoticeTargets {
            accounts: vec![b.account],
            devices: Vec::new(),
        }
    );
    assert!(alice.pending_notices(&mut rng, 150).unwrap().is_empty());

    introduce(&mut alice, &bob);
    assert_eq!(alice.pending_notice_targets(200).unwrap().devices, vec![b]);
    let pk = bob.published_pre_keys().unwrap();
    alice.start_session(&bundle(&pk), &mut rng, 200).unwrap();
    let pending = alice.pending_notices(&mut rng, 200).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key.to, b);
    assert_eq!(
        alice.pending_notice_count(),
        1,
        "the account's record became one per device"
    );
    bob_joins(
        &mut bob,
        &a,
        &pending[0].bytes,
        &g,
        &[(1, entry)],
        &mut rng,
        300,
    );
}

#[test]
fn pending_notices_expire_and_the_secret_is_not_sent_to_an_account_removed_since() {
    let mut rng = ChaCha20Rng::seed_from_u64(24);
    let mut alice = Device::create_account(MemoryKv::new(), &mut rng, 1).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, 1).unwrap();
    let mut carol = Device::create_account(MemoryKv::new(), &mut rng, 1).unwrap();
    for other in [&bob, &carol] {
        introduce(&mut alice, other);
    }
    introduce(&mut bob, &alice);
    introduce(&mut carol, &alice);
    let (b, c) = (bob.address(), carol.address());

    // Carol gets a session, Bob does not: Bob's notice (with the secret) waits.
    let pk = carol.published_pre_keys().unwrap();
    alice.start_session(&bundle(&pk), &mut rng, 10).unwrap();
    let w = alice
        .create_group("t", &[b.account, c.account], &mut rng, 100)
        .unwrap();
    let g = w.group;
    alice.group_write_landed(w, &mut rng, 100).unwrap();
    assert_eq!(alice.pending_notice_count(), 2);
    let sent: Vec<NoticeKey> = alice
        .pending_notices(&mut rng, 110)
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    alice.notices_sent(&sent).unwrap();
    assert_eq!(alice.pending_notice_count(), 1);

    // Bob is removed before his device ever got a session: the secret is no longer for him.
    let w = alice
        .update_group(&g, &[], &[b.account], None, &mut rng, 200)
        .unwrap();
    alice.group_write_landed(w, &mut rng, 200).unwrap();
    let first = NoticeKey {
        group: g,
        seq: 1,
        to: b,
    };
    let pk = bob.published_pre_keys().unwrap();
    alice.start_session(&bundle(&pk), &mut rng, 210).unwrap();
    let pending = alice.pending_notices(&mut rng, 210).unwrap();
    assert!(pending.iter().all(|p| p.key != first));
    // What remains, the notices of the removal (to Bob, and to Carol), carry no secret; Bob
    // learns of his removal and is not invited.
    assert_eq!(pending.len(), 2);
    for p in &pending {
        assert_eq!(p.key.seq, 2);
    }
    let to_bob = pending.iter().find(|p| p.key.to == b).unwrap();
    let incoming = bob
        .decrypt(&alice.address(), &to_bob.bytes, &mut rng, 220)
        .unwrap();
    assert!(incoming.group_logs.is_empty(), "no secret, no invitation");

    // Left unsent, they expire.
    let later = 210 + PENDING_NOTICE_MAX_AGE_MS + 1;
    let upkeep = alice.upkeep(&mut rng, later).unwrap();
    assert_eq!(upkeep.notices_pruned, 2);
    assert_eq!(alice.pending_notice_count(), 0);
    assert_eq!(pending_in_store(&alice), 0);
}
