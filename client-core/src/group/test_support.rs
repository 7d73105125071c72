//! What the group unit tests share: test people with signed device lists, changes, and a log of
//! a group an admin created with Bob in it.

use super::*;
use crate::device_list::{DeviceEntry, DeviceList};
use crate::keys::AccountKeyPair;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub(super) struct Person {
    pub(super) addr: DeviceAddress,
    pub(super) id: DeviceIdentityKeyPair,
    pub(super) account: AccountKeyPair,
    /// The current signed list (version 1 unless re-signed).
    pub(super) list: Vec<u8>,
}

impl Person {
    /// Signs a new list of version `version` listing this device.
    pub(super) fn list_version(&self, version: u64) -> Vec<u8> {
        let mut devices = BTreeMap::new();
        devices.insert(
            self.addr.device_id,
            DeviceEntry {
                device_id: self.addr.device_id,
                identity: self.id.public(),
                added_at: 0,
                consent: self.id.consent(&self.addr.account, self.addr.device_id),
            },
        );
        #[allow(clippy::unwrap_used)]
        DeviceList {
            account: self.addr.account,
            version,
            issued_at: 0,
            devices,
        }
        .sign(&self.account)
        .unwrap()
        .signed_bytes()
        .to_vec()
    }
}

pub(super) fn person(rng: &mut ChaCha20Rng) -> Person {
    let account = AccountKeyPair::generate(rng);
    let mut p = Person {
        addr: DeviceAddress {
            account: account.id(),
            device_id: 1,
        },
        id: DeviceIdentityKeyPair::generate(rng),
        account,
        list: Vec::new(),
    };
    p.list = p.list_version(1);
    p
}

/// The change by `p` at the next position of `log`.
pub(super) fn change_at(
    p: &Person,
    log: &GroupLog,
    add: &[(AccountId, bool)],
    remove: &[AccountId],
    issued_at: u64,
) -> SignedChange {
    SignedChange::sign(
        ChangeBody {
            group: log.state().id,
            epoch: log.seq() + 1,
            previous_hash: log.state().head,
            author: p.addr,
            name: None,
            add: add.to_vec(),
            remove: remove.to_vec(),
            issued_at,
            author_list: p.list.clone(),
            slot: None,
        },
        &p.id,
    )
}

/// A creation by `admin` listing `others`, for `secret`.
pub(super) fn creation(admin: &Person, others: &[AccountId], secret: &GroupSecret) -> SignedChange {
    let mut add = vec![(admin.addr.account, true)];
    add.extend(others.iter().map(|a| (*a, false)));
    SignedChange::sign(
        ChangeBody {
            group: GroupId([0; 32]),
            epoch: 1,
            previous_hash: [0; 32],
            author: admin.addr,
            name: Some("g".into()),
            add,
            remove: vec![],
            issued_at: 0,
            author_list: admin.list.clone(),
            slot: Some(secret.slot()),
        },
        &admin.id,
    )
}

/// An admin, Bob (member), a group the admin created with Bob in it, and the relay's copy of
/// its log (the sealed entries, position 1 first), from `seed`.
pub(super) fn admin_and_bob(seed: u8) -> (ChaCha20Rng, Person, Person, GroupLog, Vec<Vec<u8>>) {
    let mut rng = ChaCha20Rng::from_seed([seed; 32]);
    let (admin, bob) = (person(&mut rng), person(&mut rng));
    let secret = GroupSecret::random(&mut rng);
    let genesis = creation(&admin, &[bob.addr.account], &secret);
    #[allow(clippy::unwrap_used)]
    let entry = secret.seal_entry(1, &genesis.signed, &mut rng).unwrap();
    #[allow(clippy::unwrap_used)]
    let log = GroupLog::create(genesis.body.group, secret, &entry).unwrap();
    (rng, admin, bob, log, vec![entry])
}
