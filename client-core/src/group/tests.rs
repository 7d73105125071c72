//! Unit tests of the membership log: signatures and roles, future epochs and replays, and
//! concurrent changes.

use super::*;
use rand_chacha::ChaCha20Rng;

use super::test_support::{Person, admin_and_bob, change_at, person};

fn change(
    p: &Person,
    g: GroupId,
    state: &GroupState,
    add: &[(AccountId, bool)],
    remove: &[AccountId],
) -> SignedChange {
    change_at(p, g, state, add, remove, 1)
}

/// An admin, Bob (member), Carol (not yet), and the group of the admin and Bob.
fn setup() -> (ChaCha20Rng, GroupId, Person, Person, Person, GroupLog) {
    let (mut rng, g, admin, bob, log) = admin_and_bob(6);
    let carol = person(&mut rng);
    (rng, g, admin, bob, carol, log)
}

#[test]
fn signatures_and_roles() {
    let (_, g, admin, bob, carol, mut log) = setup();
    let c = change(&admin, g, log.state(), &[(carol.addr.account, false)], &[]);
    assert!(c.verify(&admin.id.public()).is_ok());
    assert!(c.verify(&bob.id.public()).is_err());
    let parsed = SignedChange::parse(&c.signed).unwrap();
    assert_eq!(parsed, c);
    assert_eq!(
        log.offer(c).unwrap(),
        Offered::Applied(vec![Diff {
            added: vec![carol.addr.account],
            removed: vec![]
        }])
    );
    // A non-admin cannot remove others, but can leave.
    let kick = change(&bob, g, log.state(), &[], &[carol.addr.account]);
    assert!(log.offer(kick).is_err());
    let leave = change(&bob, g, log.state(), &[], &[bob.addr.account]);
    assert!(matches!(log.offer(leave).unwrap(), Offered::Applied(_)));
    assert!(!log.state().is_member(&bob.addr.account));
    // Removing a non-member is malformed; the last admin cannot leave an admin-less group behind.
    assert!(
        log.offer(change(&admin, g, log.state(), &[], &[bob.addr.account]))
            .is_err()
    );
    assert!(
        log.offer(change(&admin, g, log.state(), &[], &[admin.addr.account]))
            .is_err()
    );
}

#[test]
fn future_epochs_wait_and_replays_are_ignored() {
    let (_, g, admin, _bob, carol, mut log) = setup();
    let s1 = log.state().clone();
    let c2 = change(&admin, g, &s1, &[(carol.addr.account, false)], &[]);
    let (s2, _) = s1.apply(&c2).unwrap();
    let c3 = change(&admin, g, &s2, &[(carol.addr.account, true)], &[]);
    assert_eq!(log.offer(c3).unwrap(), Offered::Buffered);
    assert_eq!(log.state().epoch, 1);
    assert!(matches!(log.offer(c2.clone()).unwrap(), Offered::Applied(d) if d.len() == 2));
    assert_eq!(log.state().epoch, 3);
    assert!(log.state().is_admin(&carol.addr.account));
    assert_eq!(log.offer(c2).unwrap(), Offered::Ignored);
    let restored = GroupLog::restore(log.log().to_vec(), vec![]).unwrap();
    assert_eq!(restored.state(), log.state());
}

#[test]
fn concurrent_changes_resolve_to_the_smaller_hash_everywhere() {
    let (mut rng, g, admin, bob, carol, log) = setup();
    let dave = person(&mut rng);
    // Make bob an admin, then bob and admin both change epoch 3 concurrently.
    let mut a = log.clone();
    let promote = change(&admin, g, a.state(), &[(bob.addr.account, true)], &[]);
    a.offer(promote).unwrap();
    let mut b = a.clone();
    let x = change(&admin, g, a.state(), &[(carol.addr.account, false)], &[]);
    let y = change(&bob, g, a.state(), &[(dave.addr.account, false)], &[]);
    let (win, lose) = if x.hash < y.hash { (x, y) } else { (y, x) };
    // Member A sees the winner first, member B the loser first.
    assert!(matches!(a.offer(win.clone()).unwrap(), Offered::Applied(_)));
    assert_eq!(a.offer(lose.clone()).unwrap(), Offered::Ignored);
    assert!(matches!(b.offer(lose).unwrap(), Offered::Applied(_)));
    assert_eq!(b.offer(win).unwrap(), Offered::Replaced);
    assert_eq!(a.state(), b.state());
}
