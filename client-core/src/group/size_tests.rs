//! Unit tests of the size limits of groups and their changes.

use super::*;
use crate::keys::AccountKeyPair;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

#[test]
fn a_group_holds_max_members_and_refuses_one_more() {
    let mut rng = ChaCha20Rng::from_seed([8; 32]);
    let id = DeviceIdentityKeyPair::generate(&mut rng);
    let admin = DeviceAddress {
        account: AccountKeyPair::generate(&mut rng).id(),
        device_id: 1,
    };
    let mut add = vec![(admin.account, true)];
    while add.len() < MAX_GROUP_MEMBERS {
        add.push((AccountKeyPair::generate(&mut rng).id(), false));
    }
    let g = GroupId::random(&mut rng);
    let body = ChangeBody {
        group: g,
        epoch: 1,
        previous_hash: [0; 32],
        author: admin,
        name: Some("big".into()),
        add,
        remove: vec![],
        issued_at: 0,
    };
    let genesis = SignedChange::sign(body, &id);
    // The creation of a full group fits in one pairwise message.
    assert!(genesis.signed.len() < crate::consts::MAX_PLAINTEXT_LEN);
    let parsed = SignedChange::parse(&genesis.signed).unwrap();
    let mut log = GroupLog::create(parsed).unwrap();
    assert_eq!(log.state().members.len(), MAX_GROUP_MEMBERS);
    let one_more = SignedChange::sign(
        ChangeBody {
            group: g,
            epoch: 2,
            previous_hash: log.state().head,
            author: admin,
            name: None,
            add: vec![(AccountKeyPair::generate(&mut rng).id(), false)],
            remove: vec![],
            issued_at: 1,
        },
        &id,
    );
    assert!(log.offer(one_more).is_err());
    assert_eq!(log.state().members.len(), MAX_GROUP_MEMBERS);
}
