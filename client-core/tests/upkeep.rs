//! Key upkeep with a simulated clock: rotations happen when due and not before, rotated keys stay
//! usable for sessions started before the rotation, idle sessions are retired, and one-time
//! pre-keys are replenished from the relay's count.
#![cfg(test)]
#![allow(missing_docs)]

use hush_core::consts::{
    LAST_RESORT_PRE_KEY_ROTATION_MS, ONE_TIME_PRE_KEY_BATCH, ONE_TIME_PRE_KEYS_KEPT,
    ROTATED_PRE_KEYS_KEPT, SESSION_MAX_IDLE_MS, SIGNED_PRE_KEY_ROTATION_MS,
};
mod common;
use common::{bundle, introduce};

use hush_core::device::{Device, DeviceError};
use hush_core::error::{Error, ProtocolError};
use hush_core::store::memory::MemoryKv;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const DAY: u64 = 24 * 60 * 60 * 1000;
const T0: u64 = 1_000_000;

#[test]
fn pre_keys_rotate_when_due_and_not_before() {
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap();
    let spk = bob.published_pre_keys().unwrap().signed_pre_key.id;
    let lr = bob.published_pre_keys().unwrap().last_resort_kem_pre_key.id;

    // A day later: nothing is due (and running it twice changes nothing).
    for _ in 0..2 {
        let u = bob.upkeep(&mut rng, T0 + DAY).unwrap();
        assert!(!u.publish && !u.rotated_signed && !u.rotated_last_resort);
        let p = bob.published_pre_keys().unwrap();
        assert_eq!(p.signed_pre_key.id, spk);
        assert_eq!(p.last_resort_kem_pre_key.id, lr);
    }
    // One millisecond before the period: still nothing.
    let u = bob
        .upkeep(&mut rng, T0 + SIGNED_PRE_KEY_ROTATION_MS - 1)
        .unwrap();
    assert!(!u.rotated_signed && !u.rotated_last_resort);

    // When the period has passed: both rotate, to be published.
    let at = T0 + SIGNED_PRE_KEY_ROTATION_MS.max(LAST_RESORT_PRE_KEY_ROTATION_MS);
    let u = bob.upkeep(&mut rng, at).unwrap();
    assert!(u.publish && u.rotated_signed && u.rotated_last_resort);
    let p = bob.published_pre_keys().unwrap();
    assert_ne!(p.signed_pre_key.id, spk);
    assert_ne!(p.last_resort_kem_pre_key.id, lr);
    // The old ones are still accepted.
    assert!(bob.signed_pre_key_ids().contains(&spk));
    assert!(bob.last_resort_pre_key_ids().contains(&lr));
    // And the rotation is not repeated right after.
    let u = bob.upkeep(&mut rng, at + DAY).unwrap();
    assert!(!u.publish);
}

#[test]
fn a_session_started_before_rotations_still_decrypts_until_the_kept_keys_run_out() {
    let mut rng = ChaCha20Rng::from_seed([2; 32]);
    let mut alice = Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap();
    introduce(&mut alice, &bob);
    introduce(&mut bob, &alice);
    let (a, b) = (alice.address(), bob.address());
    // Alice fetched Bob's bundle at T0 (and a second device of hers, later, fetches nothing).
    let old = bundle(&bob.published_pre_keys().unwrap());
    alice.start_session(&old, &mut rng, T0).unwrap();

    // Bob rotates ROTATED_PRE_KEYS_KEPT - 1 times: the key Alice used is still kept.
    let mut now = T0;
    for _ in 0..ROTATED_PRE_KEYS_KEPT - 1 {
        now += SIGNED_PRE_KEY_ROTATION_MS.max(LAST_RESORT_PRE_KEY_ROTATION_MS);
        assert!(bob.upkeep(&mut rng, now).unwrap().publish);
    }
    let m = alice.encrypt(&b, b"in flight", &mut rng, now).unwrap();
    let got = bob
        .decrypt(&a, &m, &mut rng, now)
        .unwrap()
        .single()
        .unwrap();
    assert_eq!(got.plaintext.as_slice(), b"in flight");

    // One more rotation drops it: a new initiator with the old bundle is refused.
    let mut carol = Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap();
    introduce(&mut carol, &bob);
    introduce(&mut bob, &carol);
    carol.start_session(&old, &mut rng, T0).unwrap();
    now += SIGNED_PRE_KEY_ROTATION_MS.max(LAST_RESORT_PRE_KEY_ROTATION_MS);
    assert!(bob.upkeep(&mut rng, now).unwrap().publish);
    let m = carol.encrypt(&b, b"too late", &mut rng, now).unwrap();
    assert!(matches!(
        bob.decrypt(&carol.address(), &m, &mut rng, now),
        Err(DeviceError::Protocol(Error::Protocol(
            ProtocolError::UnknownPreKey { .. }
        )))
    ));
}

#[test]
fn idle_sessions_are_retired_by_upkeep_once_the_sweep_is_due() {
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    let mut alice = Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap();
    let bob = Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap();
    introduce(&mut alice, &bob);
    let b = bob.address();
    alice
        .start_session(&bundle(&bob.published_pre_keys().unwrap()), &mut rng, T0)
        .unwrap();
    // The first upkeep sweeps (nothing idle yet).
    assert_eq!(
        alice.upkeep(&mut rng, T0 + DAY).unwrap().sessions_retired,
        0
    );
    assert!(alice.has_session(&b, T0 + DAY).unwrap());
    // Idle for longer than the limit: retired.
    let later = T0 + SESSION_MAX_IDLE_MS + 2 * DAY;
    assert_eq!(alice.upkeep(&mut rng, later).unwrap().sessions_retired, 1);
    assert!(!alice.has_session(&b, later).unwrap());
}

#[test]
fn one_time_pre_keys_are_replenished_from_the_relays_count_not_the_devices() {
    let mut rng = ChaCha20Rng::from_seed([4; 32]);
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap();
    let batch = usize::try_from(ONE_TIME_PRE_KEY_BATCH).unwrap();
    assert_eq!(bob.one_time_pre_key_count(), batch);
    // The relay handed out all but 5 of each, to requesters who never used them: Bob still
    // holds all 100, and his own count sees no shortage.
    assert!(!bob.replenish_pre_keys(&mut rng, T0).unwrap());
    let before = bob.published_pre_keys().unwrap();
    let highest = before.one_time_pre_keys.iter().map(|k| k.id).max().unwrap();
    assert!(bob.replenish_pre_keys_for(5, 7, &mut rng, T0).unwrap());
    assert_eq!(bob.one_time_pre_key_count(), batch + batch - 5);
    assert_eq!(bob.kem_pre_key_count(), batch + batch - 7);
    let after = bob.published_pre_keys().unwrap();
    let new = after
        .one_time_pre_keys
        .iter()
        .filter(|k| k.id > highest)
        .count();
    assert_eq!(new, batch - 5);
    // Enough on the relay: nothing to do.
    assert!(
        !bob.replenish_pre_keys_for(ONE_TIME_PRE_KEY_BATCH, ONE_TIME_PRE_KEY_BATCH, &mut rng, T0)
            .unwrap()
    );
    // Keys never used pile up only to the cap; the newest are the ones kept.
    for _ in 0..10 {
        assert!(bob.replenish_pre_keys_for(0, 0, &mut rng, T0).unwrap());
    }
    assert_eq!(bob.one_time_pre_key_count(), ONE_TIME_PRE_KEYS_KEPT);
    assert_eq!(bob.kem_pre_key_count(), ONE_TIME_PRE_KEYS_KEPT);
    let kept = bob.published_pre_keys().unwrap();
    assert!(kept.one_time_pre_keys.iter().all(|k| k.id > highest));
}
