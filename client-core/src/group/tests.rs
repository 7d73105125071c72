//! Unit tests of the membership log: ids bound to the creation, signatures and roles checked
//! against the lists the changes carry, skipped entries, positions, withholding evidence.

use super::test_support::{Person, admin_and_bob, change_at, creation, person};
use super::*;
use rand_chacha::ChaCha20Rng;

/// Seals `c` for the next position of `relay` and processes it into `log`.
fn append(
    log: &mut GroupLog,
    relay: &mut Vec<Vec<u8>>,
    c: &SignedChange,
    rng: &mut ChaCha20Rng,
) -> Processed {
    let seq = relay.len() as u64 + 1;
    let entry = log.secret().seal_entry(seq, &c.signed, rng).unwrap();
    relay.push(entry.clone());
    log.process(seq, &entry).unwrap()
}

fn applied(p: &Processed) -> bool {
    matches!(p, Processed::Applied { .. })
}

#[test]
fn the_group_id_is_the_hash_of_its_signed_creation() {
    let (mut rng, admin, bob, log, relay) = admin_and_bob(1);
    let g = log.state().id;
    // A creation of the same group id by anyone else (or even by the admin, for another slot)
    // is a different signed creation, hence a different id: refused for this id.
    let other_secret = GroupSecret::random(&mut rng);
    let squat = creation(&bob, &[admin.addr.account], &other_secret);
    assert_ne!(squat.body.group, g);
    let entry = other_secret.seal_entry(1, &squat.signed, &mut rng).unwrap();
    assert!(matches!(
        GroupLog::create(g, other_secret.clone(), &entry),
        Err(Error::Protocol(ProtocolError::InvalidGroupLog(_)))
    ));
    // The real log under a secret that does not name its slot: refused too.
    assert!(GroupLog::create(g, other_secret, &relay[0]).is_err());
    // A creation claiming an id in its group_id field does not parse.
    let mut raw = wire::GroupChange::decode(
        wire::SignedGroupChange::decode(log.entries()[0].1.signed.as_slice())
            .unwrap()
            .change
            .as_slice(),
    )
    .unwrap();
    raw.group_id = g.0.to_vec();
    let forged = wire::SignedGroupChange {
        change: raw.encode_to_vec(),
        signature: vec![0; 64],
    }
    .encode_to_vec();
    assert!(matches!(
        SignedChange::parse(&forged),
        Err(Error::Malformed { .. })
    ));
}

#[test]
fn changes_apply_in_log_order_and_invalid_entries_are_skipped_by_everyone() {
    let (mut rng, admin, bob, mut log, mut relay) = admin_and_bob(2);
    let carol = person(&mut rng);
    let add = change_at(&admin, &log, &[(carol.addr.account, false)], &[], 1);
    assert!(applied(&append(&mut log, &mut relay, &add, &mut rng)));
    assert!(log.state().is_member(&carol.addr.account));
    // Bob is no admin: his change is written to the relay but skipped.
    let by_bob = change_at(&bob, &log, &[], &[carol.addr.account], 2);
    assert!(!applied(&append(&mut log, &mut relay, &by_bob, &mut rng)));
    assert_eq!(log.seq(), 3);
    assert_eq!(log.state().epoch, 2, "the last valid change is still at position 2");
    // Junk at position 4: skipped.
    relay.push(b"junk".to_vec());
    assert!(!applied(&log.process(4, b"junk").unwrap()));
    // The next admin change names position 5 and follows the head of position 2.
    let rm = change_at(&admin, &log, &[], &[carol.addr.account], 3);
    assert_eq!(rm.body.epoch, 5);
    assert!(applied(&append(&mut log, &mut relay, &rm, &mut rng)));
    // A member reading the same relay log from scratch ends in the same state.
    let mut other = GroupLog::create(log.state().id, log.secret().clone(), &relay[0]).unwrap();
    for (i, e) in relay.iter().enumerate().skip(1) {
        other.process(i as u64 + 1, e).unwrap();
    }
    assert_eq!(other.state(), log.state());
    assert_eq!(other.seq(), log.seq());
    // Out-of-order processing is a misuse.
    assert!(log.process(9, &relay[0]).is_err());
}

#[test]
fn a_removed_admins_change_for_an_old_position_is_refused() {
    let (mut rng, admin, bob, mut log, mut relay) = admin_and_bob(3);
    let carol = person(&mut rng);
    let promote = change_at(&admin, &log, &[(bob.addr.account, true)], &[], 1);
    assert!(applied(&append(&mut log, &mut relay, &promote, &mut rng)));
    // Bob, an admin now, signs a change for position 3 but does not get to write it...
    let stale = change_at(&bob, &log, &[(carol.addr.account, true)], &[], 2);
    // ...the admin removes him at position 3...
    let remove_bob = change_at(&admin, &log, &[], &[bob.addr.account], 3);
    assert!(applied(&append(&mut log, &mut relay, &remove_bob, &mut rng)));
    // ...and his change written later, at any position, is refused: at position 4 it names
    // position 3, and re-signed for position 4 it is by a non-member.
    assert!(!applied(&append(&mut log, &mut relay, &stale, &mut rng)));
    let resigned = change_at(&bob, &log, &[(carol.addr.account, true)], &[], 4);
    assert!(!applied(&append(&mut log, &mut relay, &resigned, &mut rng)));
    assert!(!log.state().is_member(&carol.addr.account));
    assert!(!log.state().is_member(&bob.addr.account));
}

#[test]
fn authors_are_checked_against_the_list_they_carry_and_lists_never_go_back() {
    let (mut rng, mut admin, _bob, mut log, mut relay) = admin_and_bob(4);
    let carol = person(&mut rng);
    // A change by the admin device carrying version 2 of its account's list.
    admin.list = admin.list_version(2);
    let c = change_at(&admin, &log, &[(carol.addr.account, false)], &[], 1);
    assert!(applied(&append(&mut log, &mut relay, &c, &mut rng)));
    // A change carrying the older version 1 is skipped (a device removed by version 2 could
    // otherwise keep signing with the old list).
    admin.list = admin.list_version(1);
    let old = change_at(&admin, &log, &[], &[carol.addr.account], 2);
    assert!(!applied(&append(&mut log, &mut relay, &old, &mut rng)));
    // A list of another account, or one not listing the author device, is no proof.
    let mut impostor = person(&mut rng);
    impostor.addr.account = admin.addr.account;
    impostor.list = admin.list_version(2);
    let forged = change_at(&impostor, &log, &[], &[carol.addr.account], 3);
    assert!(!applied(&append(&mut log, &mut relay, &forged, &mut rng)));
    assert!(log.state().is_member(&carol.addr.account));
}

#[test]
fn a_member_may_leave_or_refresh_its_list_but_not_change_others() {
    let (mut rng, admin, bob, mut log, mut relay) = admin_and_bob(5);
    let refresh = change_at(&bob, &log, &[], &[], 1);
    assert!(applied(&append(&mut log, &mut relay, &refresh, &mut rng)));
    let rename = SignedChange::sign(
        ChangeBody {
            name: Some("mine".into()),
            ..change_at(&bob, &log, &[], &[], 2).body
        },
        &bob.id,
    );
    assert!(!applied(&append(&mut log, &mut relay, &rename, &mut rng)));
    let leave = change_at(&bob, &log, &[], &[bob.addr.account], 3);
    assert!(applied(&append(&mut log, &mut relay, &leave, &mut rng)));
    assert!(!log.state().is_member(&bob.addr.account));
    assert!(log.was_member(&bob.addr.account));
    let _ = admin;
}

#[test]
fn head_at_gives_the_hash_members_compare() {
    let (mut rng, admin, _bob, mut log, mut relay) = admin_and_bob(6);
    let first = log.state().head;
    let carol: Person = person(&mut rng);
    relay.push(b"junk".to_vec());
    log.process(2, b"junk").unwrap();
    let c = change_at(&admin, &log, &[(carol.addr.account, false)], &[], 1);
    append(&mut log, &mut relay, &c, &mut rng);
    assert_eq!(log.head_at(1), first);
    assert_eq!(log.head_at(2), first);
    assert_eq!(log.head_at(3), c.hash);
}

#[test]
fn entries_are_bound_to_their_slot_and_position() {
    let (mut rng, admin, _bob, log, _relay) = admin_and_bob(7);
    let carol = person(&mut rng);
    let c = change_at(&admin, &log, &[(carol.addr.account, false)], &[], 1);
    let entry = log.secret().seal_entry(2, &c.signed, &mut rng).unwrap();
    assert!(log.secret().open_entry(2, &entry).is_ok());
    assert!(log.secret().open_entry(3, &entry).is_err());
    let other = GroupSecret::random(&mut rng);
    assert!(other.open_entry(2, &entry).is_err());
    let mut tampered = entry.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(log.secret().open_entry(2, &tampered).is_err());
}

#[test]
fn a_group_holds_max_members_and_refuses_one_more() {
    let (mut rng, admin, _bob, mut log, mut relay) = admin_and_bob(8);
    let mut add = Vec::new();
    while log.state().members.len() + add.len() < MAX_GROUP_MEMBERS {
        add.push((
            crate::keys::AccountKeyPair::generate(&mut rng).id(),
            false,
        ));
    }
    let fill = change_at(&admin, &log, &add, &[], 1);
    // The largest change still fits one log entry.
    let entry = log.secret().seal_entry(2, &fill.signed, &mut rng).unwrap();
    assert!(entry.len() <= crate::consts::MAX_GROUP_LOG_ENTRY_LEN);
    assert!(applied(&append(&mut log, &mut relay, &fill, &mut rng)));
    assert_eq!(log.state().members.len(), MAX_GROUP_MEMBERS);
    let one_more = change_at(
        &admin,
        &log,
        &[(crate::keys::AccountKeyPair::generate(&mut rng).id(), false)],
        &[],
        2,
    );
    assert!(!applied(&append(&mut log, &mut relay, &one_more, &mut rng)));
    assert_eq!(log.state().members.len(), MAX_GROUP_MEMBERS);
}

#[test]
fn restore_rebuilds_the_same_state() {
    let (mut rng, admin, _bob, mut log, mut relay) = admin_and_bob(9);
    let carol = person(&mut rng);
    let c = change_at(&admin, &log, &[(carol.addr.account, false)], &[], 1);
    append(&mut log, &mut relay, &c, &mut rng);
    log.process(3, b"junk").unwrap();
    let back = GroupLog::restore(
        log.state().id,
        log.secret().clone(),
        log.entries().to_vec(),
        log.seq(),
    )
    .unwrap();
    assert_eq!(back.state(), log.state());
    assert_eq!(back.seq(), 3);
}
