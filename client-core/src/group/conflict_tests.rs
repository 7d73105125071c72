//! Unit tests of conflicting changes: which of two changes of one epoch every member keeps.

use super::*;

use super::test_support::{Person, admin_and_bob as setup, change_at, person};

fn with_unknown_field(signed: &[u8], n: u8) -> Vec<u8> {
    let mut v = signed.to_vec();
    v.extend_from_slice(&[0x78, n & 0x7f]);
    v
}

#[test]
fn a_reencoded_change_keeps_its_hash_and_cannot_roll_back_a_removal() {
    let (mut rng, g, admin, bob, mut log) = setup(31);
    let carol = person(&mut rng);
    // Epoch 2 adds Carol; epoch 3 removes Bob.
    let add = change_at(
        &admin,
        g,
        log.state(),
        &[(carol.addr.account, false)],
        &[],
        1,
    );
    log.offer(add.clone()).unwrap();
    let kick = change_at(&admin, g, log.state(), &[], &[bob.addr.account], 2);
    log.offer(kick).unwrap();
    let after_kick = log.state().clone();
    assert!(!after_kick.is_member(&bob.addr.account));
    // Bob holds the epoch-2 change and re-encodes its unsigned wrapper in every way he likes.
    for n in 0..=127u8 {
        let bytes = with_unknown_field(&add.signed, n);
        let parsed = SignedChange::parse(&bytes).unwrap();
        assert!(parsed.verify(&admin.id.public()).is_ok());
        assert_eq!(
            parsed.hash, add.hash,
            "the hash covers the signed bytes only"
        );
        assert_eq!(parsed.signed, add.signed, "the stored form is canonical");
        assert_eq!(log.offer(parsed).unwrap(), Offered::Ignored);
    }
    assert_eq!(log.state(), &after_kick, "the removal stands");
}

#[test]
fn a_repeated_change_field_is_verified_and_applied_as_one() {
    let (mut rng, g, admin, bob, log) = setup(32);
    let carol = person(&mut rng);
    let real = change_at(
        &admin,
        g,
        log.state(),
        &[(carol.addr.account, false)],
        &[],
        1,
    );
    // A change Bob signs claiming to be the admin, put first in the wrapper.
    let forged = change_at(
        &Person {
            addr: admin.addr,
            id: DeviceIdentityKeyPair::generate(&mut rng),
        },
        g,
        log.state(),
        &[(bob.addr.account, true)],
        &[],
        1,
    );
    let w = wire::SignedGroupChange::decode(real.signed.as_slice()).unwrap();
    let f = wire::SignedGroupChange::decode(forged.signed.as_slice()).unwrap();
    let mut bytes = wire::SignedGroupChange {
        change: f.change,
        signature: Vec::new(),
    }
    .encode_to_vec();
    bytes.extend_from_slice(&real.signed);
    let parsed = SignedChange::parse(&bytes).unwrap();
    // Whatever field wins decoding, the body, the verified bytes and the hash are the same one.
    assert_eq!(parsed.body, real.body);
    assert_eq!(parsed.hash, real.hash);
    assert!(parsed.verify(&admin.id.public()).is_ok());
    let stored = wire::SignedGroupChange::decode(parsed.signed.as_slice()).unwrap();
    assert_eq!(stored.change, w.change);
}

/// Bob's leave for the state `s`, with a hash smaller than `than` (searching `issued_at`).
fn ground_leave(bob: &Person, g: GroupId, s: &GroupState, than: &[u8; 32]) -> SignedChange {
    (0..10_000)
        .map(|t| change_at(bob, g, s, &[], &[bob.addr.account], t))
        .find(|c| c.hash < *than)
        .unwrap()
}

#[test]
fn a_leave_never_replaces_an_admin_change() {
    let (mut rng, g, admin, bob, mut log) = setup(33);
    let carol = person(&mut rng);
    let s1 = log.state().clone();
    let add = change_at(&admin, g, &s1, &[(carol.addr.account, false)], &[], 1);
    log.offer(add.clone()).unwrap();
    let kick = change_at(&admin, g, log.state(), &[], &[carol.addr.account], 2);
    log.offer(kick).unwrap();
    let current = log.state().clone();
    // Bob leaves at epoch 2 with a ground-down hash: it must not roll back epochs 2 and 3.
    let leave = ground_leave(&bob, g, &s1, &add.hash);
    assert!(leave.verify(&bob.id.public()).is_ok());
    assert_eq!(log.offer(leave.clone()).unwrap(), Offered::Ignored);
    assert_eq!(log.state(), &current);

    // A member that saw the leave first switches to the admin's change, whatever the hashes.
    let mut other = GroupLog::create(log.log()[0].clone()).unwrap();
    assert!(matches!(other.offer(leave).unwrap(), Offered::Applied(_)));
    assert_eq!(other.offer(add).unwrap(), Offered::Replaced);
    assert!(other.state().is_member(&bob.addr.account));
    assert!(other.state().is_member(&carol.addr.account));
    assert!(!GroupLog::wins(&s1, &other.log()[1], &log.log()[1]));
}

#[test]
fn pending_changes_apply_once_a_conflict_is_resolved() {
    let (mut rng, g, admin, bob, mut a) = setup(34);
    let (carol, dave) = (person(&mut rng), person(&mut rng));
    let promote = change_at(&admin, g, a.state(), &[(bob.addr.account, true)], &[], 1);
    a.offer(promote).unwrap();
    let s2 = a.state().clone();
    let x = change_at(&admin, g, &s2, &[(carol.addr.account, false)], &[], 2);
    let y = change_at(&bob, g, &s2, &[(dave.addr.account, false)], &[], 2);
    let (win, lose) = if x.hash < y.hash { (x, y) } else { (y, x) };
    let mut b = a.clone();
    a.offer(win.clone()).unwrap();
    let next = change_at(&admin, g, a.state(), &[], &[], 3);
    a.offer(next.clone()).unwrap();
    // B applied the loser, then gets the winner's successor (pending), then the winner.
    assert!(matches!(b.offer(lose).unwrap(), Offered::Applied(_)));
    assert_eq!(b.offer(next).unwrap(), Offered::Buffered);
    assert_eq!(b.offer(win).unwrap(), Offered::Replaced);
    assert_eq!(
        b.state(),
        a.state(),
        "the pending successor applied after the rollback"
    );
    assert_eq!(b.state().epoch, 4);
}
