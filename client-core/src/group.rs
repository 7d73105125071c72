//! Group membership: a chain of membership changes, each signed by an admin's device.
//!
//! A group is defined by its log of [`SignedChange`]s. Change `e` (its *epoch*) names the SHA-256
//! hash of change `e − 1`'s signed bytes (`previous_hash`; 32 zero bytes for the creation, epoch 1),
//! so every member applies the same changes in the same order. Rules, checked by every member:
//!
//! - the signature is by the author device's identity signing key, and that device is on its
//!   account's verified device list (the caller supplies the identity from that list);
//! - the author's account is an admin of the group before the change — except a member removing
//!   only itself (leaving);
//! - creation (epoch 1) lists its author as an admin; every later change removes only members;
//! - afterwards the group has at most [`MAX_GROUP_MEMBERS`] members and at least one admin, unless it is empty;
//! - a change for a future epoch is kept until the ones before it arrive;
//! - two different changes for the same epoch (concurrent admins): the one whose hash is smaller
//!   wins everywhere. A member that applied the other rolls back to the epoch before (within the last
//!   [`GROUP_CHANGE_HISTORY`] changes) and applies the winner; changes built on the loser are dropped
//!   and their authors must issue them again.

use std::collections::BTreeMap;

use hush_proto::{Message, labels, wire};
use sha2::{Digest, Sha256};

use crate::consts::{GROUP_CHANGE_HISTORY, MAX_GROUP_MEMBERS, MAX_GROUP_NAME_LEN};
use crate::error::{AuthError, Error, ProtocolError, Result};
use crate::keys::{AccountId, DeviceAddress, DeviceIdentity, DeviceIdentityKeyPair, array};
use crate::sender_key::GroupId;

/// The content of one membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeBody {
    /// The group.
    pub group: GroupId,
    /// Its position in the log (creation = 1).
    pub epoch: u64,
    /// Hash of the previous change (zeros for the creation).
    pub previous_hash: [u8; 32],
    /// The authoring device.
    pub author: DeviceAddress,
    /// New name (creation, rename), if any.
    pub name: Option<String>,
    /// Members added, or whose admin flag changes.
    pub add: Vec<(AccountId, bool)>,
    /// Members removed.
    pub remove: Vec<AccountId>,
    /// When it was issued (ms).
    pub issued_at: u64,
}

/// A parsed, signed change (signature checked by [`SignedChange::verify`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedChange {
    /// The content.
    pub body: ChangeBody,
    /// The serialized [`wire::SignedGroupChange`].
    pub signed: Vec<u8>,
    /// SHA-256 of `signed`.
    pub hash: [u8; 32],
    change_bytes: Vec<u8>,
    signature: Vec<u8>,
}

impl SignedChange {
    /// Signs a change with the author device's identity.
    pub fn sign(body: ChangeBody, identity: &DeviceIdentityKeyPair) -> Self {
        let raw = wire::GroupChange {
            group_id: body.group.0.to_vec(),
            epoch: body.epoch,
            previous_hash: body.previous_hash.to_vec(),
            author_account_key: body.author.account.as_bytes().to_vec(),
            author_device_id: body.author.device_id,
            name: body.name.clone().unwrap_or_default(),
            add: body
                .add
                .iter()
                .map(|(a, admin)| wire::GroupMember {
                    account_key: a.as_bytes().to_vec(),
                    admin: *admin,
                })
                .collect(),
            remove: body.remove.iter().map(|a| a.as_bytes().to_vec()).collect(),
            issued_at: body.issued_at,
        };
        let change_bytes = raw.encode_to_vec();
        let signature = identity.sign(labels::GROUP_CHANGE, &change_bytes).to_vec();
        let signed = wire::SignedGroupChange {
            change: change_bytes.clone(),
            signature: signature.clone(),
        }
        .encode_to_vec();
        let hash = Sha256::digest(&signed).into();
        Self {
            body,
            signed,
            hash,
            change_bytes,
            signature,
        }
    }

    /// Parses a serialized [`wire::SignedGroupChange`] (no signature check yet).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let s = wire::SignedGroupChange::decode(bytes)
            .map_err(|_| Error::malformed("group change", "does not decode"))?;
        let c = wire::GroupChange::decode(s.change.as_slice())
            .map_err(|_| Error::malformed("group change", "does not decode"))?;
        if c.name.len() > MAX_GROUP_NAME_LEN {
            return Err(Error::malformed("group change", "name too long"));
        }
        if c.add.len() > MAX_GROUP_MEMBERS || c.remove.len() > MAX_GROUP_MEMBERS {
            return Err(ProtocolError::TooManyDevices(c.add.len().max(c.remove.len())).into());
        }
        let body = ChangeBody {
            group: GroupId::from_bytes(&c.group_id)?,
            epoch: c.epoch,
            previous_hash: array(
                &c.previous_hash,
                "group change",
                "previous hash must be 32 bytes",
            )?,
            author: DeviceAddress {
                account: AccountId::from_bytes(&c.author_account_key)?,
                device_id: c.author_device_id,
            },
            name: if c.name.is_empty() {
                None
            } else {
                Some(c.name)
            },
            add: c
                .add
                .iter()
                .map(|m| Ok((AccountId::from_bytes(&m.account_key)?, m.admin)))
                .collect::<Result<_>>()?,
            remove: c
                .remove
                .iter()
                .map(|a| AccountId::from_bytes(a))
                .collect::<Result<_>>()?,
            issued_at: c.issued_at,
        };
        Ok(Self {
            body,
            signed: bytes.to_vec(),
            hash: Sha256::digest(bytes).into(),
            change_bytes: s.change,
            signature: s.signature,
        })
    }

    /// Verifies the signature against the author device's identity (from its device list).
    pub fn verify(&self, author_identity: &DeviceIdentity) -> Result<()> {
        author_identity.verify(
            labels::GROUP_CHANGE,
            &self.change_bytes,
            &self.signature,
            "group change",
        )
    }
}

/// The membership of a group at one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupState {
    /// The group.
    pub id: GroupId,
    /// Its name.
    pub name: String,
    /// The epoch of the last applied change.
    pub epoch: u64,
    /// Hash of the last applied change.
    pub head: [u8; 32],
    /// Members and whether each is an admin.
    pub members: BTreeMap<AccountId, bool>,
}

/// Who joined and who left with one change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// New members.
    pub added: Vec<AccountId>,
    /// Removed members.
    pub removed: Vec<AccountId>,
}

impl GroupState {
    fn empty(id: GroupId) -> Self {
        Self {
            id,
            name: String::new(),
            epoch: 0,
            head: [0; 32],
            members: BTreeMap::new(),
        }
    }

    /// Whether `account` is a member.
    pub fn is_member(&self, account: &AccountId) -> bool {
        self.members.contains_key(account)
    }

    /// Whether `account` is an admin.
    pub fn is_admin(&self, account: &AccountId) -> bool {
        self.members.get(account).copied().unwrap_or(false)
    }

    /// Applies a (signature-checked) change, returning the next state. Pure: `self` is unchanged.
    pub fn apply(&self, c: &SignedChange) -> Result<(Self, Diff)> {
        let b = &c.body;
        if b.group != self.id {
            return Err(ProtocolError::Misuse("change for another group").into());
        }
        if b.epoch != self.epoch.saturating_add(1) || b.previous_hash != self.head {
            return Err(ProtocolError::Misuse("change does not follow the current epoch").into());
        }
        let author = b.author.account;
        let leaving =
            b.add.is_empty() && b.name.is_none() && b.remove == [author] && self.is_member(&author);
        if b.epoch == 1 {
            if !b.remove.is_empty() || !b.add.contains(&(author, true)) {
                return Err(AuthError::BadSignature(
                    "group creation must list its author as admin",
                )
                .into());
            }
        } else if !self.is_admin(&author) && !leaving {
            return Err(AuthError::BadSignature("group change by a non-admin").into());
        }
        let mut next = self.clone();
        let mut diff = Diff::default();
        for a in &b.remove {
            if next.members.remove(a).is_none() {
                return Err(Error::malformed("group change", "removes a non-member"));
            }
            diff.removed.push(*a);
        }
        for (a, admin) in &b.add {
            if next.members.insert(*a, *admin).is_none() {
                diff.added.push(*a);
            }
        }
        if next.members.len() > MAX_GROUP_MEMBERS {
            return Err(ProtocolError::TooManyDevices(next.members.len()).into());
        }
        if !next.members.is_empty() && !next.members.values().any(|admin| *admin) {
            return Err(ProtocolError::Misuse("a group needs an admin").into());
        }
        if let Some(n) = &b.name {
            next.name.clone_from(n);
        }
        next.epoch = b.epoch;
        next.head = c.hash;
        Ok((next, diff))
    }
}

/// What offering a change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offered {
    /// Applied (with any buffered changes that then became applicable), in order.
    Applied(Vec<Diff>),
    /// A future epoch: kept until the changes before it arrive.
    Buffered,
    /// Already in the log, or lost a same-epoch conflict.
    Ignored,
    /// Won a same-epoch conflict: the log was rolled back and this change applied. The caller must
    /// treat the membership as changed arbitrarily (rotate its sender key).
    Replaced,
}

/// A group's verified log and the state it leads to.
#[derive(Clone, Debug)]
pub struct GroupLog {
    log: Vec<SignedChange>,
    state: GroupState,
    pending: BTreeMap<u64, SignedChange>,
}

impl GroupLog {
    /// A log holding only the creation change.
    pub fn create(change: SignedChange) -> Result<Self> {
        let state = GroupState::empty(change.body.group).apply(&change)?.0;
        Ok(Self {
            log: vec![change],
            state,
            pending: BTreeMap::new(),
        })
    }

    /// Rebuilds from stored, previously verified changes (no signature checks).
    pub fn restore(log: Vec<SignedChange>, pending: Vec<SignedChange>) -> Result<Self> {
        let mut it = log.into_iter();
        let first = it
            .next()
            .ok_or(Error::malformed("stored group", "empty log"))?;
        let mut g = Self::create(first)?;
        for c in it {
            g.state = g.state.apply(&c)?.0;
            g.log.push(c);
        }
        g.pending = pending.into_iter().map(|c| (c.body.epoch, c)).collect();
        Ok(g)
    }

    /// The current state.
    pub const fn state(&self) -> &GroupState {
        &self.state
    }

    /// The log, creation first.
    pub fn log(&self) -> &[SignedChange] {
        &self.log
    }

    /// Whether `account` was ever added to the group by a change in the log.
    pub fn was_member(&self, account: &AccountId) -> bool {
        self.log
            .iter()
            .any(|c| c.body.add.iter().any(|(a, _)| a == account))
    }

    /// Buffered future changes.
    pub fn pending(&self) -> impl Iterator<Item = &SignedChange> {
        self.pending.values()
    }

    fn state_before(&self, epoch: u64) -> Result<GroupState> {
        let mut s = GroupState::empty(self.state.id);
        for c in self.log.iter().take_while(|c| c.body.epoch < epoch) {
            s = s.apply(c)?.0;
        }
        Ok(s)
    }

    /// Offers a change whose signature the caller has verified.
    pub fn offer(&mut self, c: SignedChange) -> Result<Offered> {
        let epoch = c.body.epoch;
        if epoch > self.state.epoch.saturating_add(1) {
            if self.pending.len() < GROUP_CHANGE_HISTORY * 4 {
                self.pending.entry(epoch).or_insert(c);
            }
            return Ok(Offered::Buffered);
        }
        if epoch <= self.state.epoch {
            let idx = usize::try_from(epoch.saturating_sub(1)).unwrap_or(usize::MAX);
            let Some(applied) = self.log.get(idx) else {
                return Ok(Offered::Ignored);
            };
            if applied.hash == c.hash || c.hash >= applied.hash || epoch == 1 {
                return Ok(Offered::Ignored);
            }
            if self.state.epoch - epoch >= GROUP_CHANGE_HISTORY as u64 {
                return Ok(Offered::Ignored);
            }
            // Same-epoch conflict that `c` wins: roll back and apply it.
            let before = self.state_before(epoch)?;
            let (next, _) = before.apply(&c)?;
            self.log.truncate(idx);
            self.log.push(c);
            self.state = next;
            self.pending.retain(|e, _| *e > epoch);
            return Ok(Offered::Replaced);
        }
        let (next, diff) = self.state.apply(&c)?;
        self.state = next;
        self.log.push(c);
        let mut diffs = vec![diff];
        while let Some(c) = self.pending.remove(&self.state.epoch.saturating_add(1)) {
            match self.state.apply(&c) {
                Ok((next, diff)) => {
                    self.state = next;
                    self.log.push(c);
                    diffs.push(diff);
                }
                Err(_) => break,
            }
        }
        self.pending.retain(|e, _| *e > self.state.epoch);
        Ok(Offered::Applied(diffs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::AccountKeyPair;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    struct Person {
        addr: DeviceAddress,
        id: DeviceIdentityKeyPair,
    }

    fn person(rng: &mut ChaCha20Rng) -> Person {
        let addr = DeviceAddress {
            account: AccountKeyPair::generate(rng).id(),
            device_id: 1,
        };
        Person {
            addr,
            id: DeviceIdentityKeyPair::generate(rng),
        }
    }

    fn change(
        p: &Person,
        g: GroupId,
        state: &GroupState,
        add: &[(AccountId, bool)],
        remove: &[AccountId],
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
                issued_at: 1,
            },
            &p.id,
        )
    }

    fn setup() -> (ChaCha20Rng, GroupId, Person, Person, Person, GroupLog) {
        let mut rng = ChaCha20Rng::from_seed([6; 32]);
        let (admin, bob, carol) = (person(&mut rng), person(&mut rng), person(&mut rng));
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
        let log = GroupLog::create(genesis).unwrap();
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
}

#[cfg(test)]
mod size_tests {
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
}
