//! What the group unit tests share: test people, changes, and a group of an admin and Bob.

use super::*;
use crate::keys::AccountKeyPair;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub(super) struct Person {
    pub(super) addr: DeviceAddress,
    pub(super) id: DeviceIdentityKeyPair,
}

pub(super) fn person(rng: &mut ChaCha20Rng) -> Person {
    Person {
        addr: DeviceAddress {
            account: AccountKeyPair::generate(rng).id(),
            device_id: 1,
        },
        id: DeviceIdentityKeyPair::generate(rng),
    }
}

/// The change by `p` that follows `state`, issued at `issued_at`.
pub(super) fn change_at(
    p: &Person,
    g: GroupId,
    state: &GroupState,
    add: &[(AccountId, bool)],
    remove: &[AccountId],
    issued_at: u64,
) -> SignedChange {
    SignedChange::sign(
        ChangeBody {
            group: g,
            epoch: state.epoch + 1,
            previous_hash: state.head,
            author: p.addr,
            name: None,
            add: add.to_vec(),
            remove: remove.to_vec(),
            issued_at,
        },
        &p.id,
    )
}

/// An admin, Bob (member) and a group the admin created with Bob in it, from `seed`.
pub(super) fn admin_and_bob(seed: u8) -> (ChaCha20Rng, GroupId, Person, Person, GroupLog) {
    let mut rng = ChaCha20Rng::from_seed([seed; 32]);
    let (admin, bob) = (person(&mut rng), person(&mut rng));
    let g = GroupId::random(&mut rng);
    let genesis = SignedChange::sign(
        ChangeBody {
            group: g,
            epoch: 1,
            previous_hash: [0; 32],
            author: admin.addr,
            name: Some("g".into()),
            add: vec![(admin.addr.account, true), (bob.addr.account, false)],
            remove: vec![],
            issued_at: 0,
        },
        &admin.id,
    );
    #[allow(clippy::unwrap_used)]
    let log = GroupLog::create(genesis).unwrap();
    (rng, g, admin, bob, log)
}
