//! Group membership: a chain of membership changes, each signed by an admin's device.
//!
//! A group is defined by its log of [`SignedChange`]s. Change `e` (its *epoch*) names the SHA-256
//! hash of change `e − 1`'s signed bytes — the encoded `GroupChange`, not the unsigned
//! `SignedGroupChange` wrapper (`previous_hash`; 32 zero bytes for the creation, epoch 1), so every
//! member applies the same changes in the same order and nobody but the author can make a change
//! with another hash. Rules, checked by every member:
//!
//! - the signature is by the author device's identity signing key, and that device is on its
//!   account's verified device list (the caller supplies the identity from that list);
//! - the author's account is an admin of the group before the change — except a member removing
//!   only itself (leaving);
//! - creation (epoch 1) lists its author as an admin; every later change removes only members;
//! - afterwards the group has at most [`MAX_GROUP_MEMBERS`] members and at least one admin, unless it is empty;
//! - a change for a future epoch is kept until the ones before it arrive;
//! - two different changes for the same epoch (concurrent admins): the one of higher [`Authority`]
//!   in the state before that epoch wins everywhere (an admin's change beats a non-admin's leave),
//!   and between equals the one whose hash is smaller. A member that applied the other rolls back to
//!   the epoch before (within the last [`GROUP_CHANGE_HISTORY`] changes) and applies the winner;
//!   changes built on the loser are dropped and their authors must issue them again.

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
    /// The serialized [`wire::SignedGroupChange`], in its canonical encoding (re-encoded on
    /// parsing, so unknown or repeated wrapper fields are not kept or forwarded).
    pub signed: Vec<u8>,
    /// SHA-256 of the signed `GroupChange` bytes (what the signature covers; not the wrapper).
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
        let hash = Sha256::digest(&change_bytes).into();
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
        // The hash and the stored form depend only on the signed bytes and the signature, never on
        // how the wrapper happened to be encoded.
        let signed = wire::SignedGroupChange {
            change: s.change.clone(),
            signature: s.signature.clone(),
        }
        .encode_to_vec();
        Ok(Self {
            body,
            signed,
            hash: Sha256::digest(&s.change).into(),
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

/// The weight of a change in a same-epoch conflict: its author's role in the state it applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Authority {
    /// A member that is not an admin (the only change it may make is leaving).
    Member,
    /// An admin.
    Admin,
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

    /// The authority of `c`'s author in this state (for conflicts, see [`GroupLog::wins`]).
    pub fn authority(&self, c: &SignedChange) -> Authority {
        if self.is_admin(&c.body.author.account) {
            Authority::Admin
        } else {
            Authority::Member
        }
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
    /// Changes not applicable yet, by (epoch, hash).
    pending: BTreeMap<(u64, [u8; 32]), SignedChange>,
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
        g.pending = pending
            .into_iter()
            .map(|c| ((c.body.epoch, c.hash), c))
            .collect();
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
    ///
    /// A change for an epoch already applied (a same-epoch conflict) replaces the applied change
    /// only if it [`wins`](Self::wins) against it, it applies to the state before that epoch, and
    /// that epoch is one of the last [`GROUP_CHANGE_HISTORY`]; otherwise it is ignored. A change
    /// built on a branch this log does not hold (its `previous_hash` is not the head before its
    /// epoch) is ignored too.
    pub fn offer(&mut self, c: SignedChange) -> Result<Offered> {
        let epoch = c.body.epoch;
        if epoch > self.state.epoch.saturating_add(1) {
            self.keep_pending(c);
            return Ok(Offered::Buffered);
        }
        if epoch == self.state.epoch.saturating_add(1)
            && c.body.previous_hash != self.state.head
            && self.state.epoch >= 2
        {
            // It may follow a change for the current epoch that has not arrived yet and wins
            // against the one applied here: keep it until then.
            self.keep_pending(c);
            return Ok(Offered::Buffered);
        }
        if epoch <= self.state.epoch {
            let idx = usize::try_from(epoch.saturating_sub(1)).unwrap_or(usize::MAX);
            let Some(applied) = self.log.get(idx) else {
                return Ok(Offered::Ignored);
            };
            if applied.hash == c.hash || epoch == 1 {
                return Ok(Offered::Ignored);
            }
            if self.state.epoch - epoch >= GROUP_CHANGE_HISTORY as u64 {
                return Ok(Offered::Ignored);
            }
            let before = self.state_before(epoch)?;
            if c.body.previous_hash != before.head {
                return Ok(Offered::Ignored);
            }
            let (next, _) = before.apply(&c)?;
            if !Self::wins(&before, &c, applied) {
                return Ok(Offered::Ignored);
            }
            // Same-epoch conflict that `c` wins: roll back and apply it, then any pending changes
            // that now follow.
            self.log.truncate(idx);
            self.log.push(c);
            self.state = next;
            self.apply_pending();
            return Ok(Offered::Replaced);
        }
        let (next, diff) = self.state.apply(&c)?;
        self.state = next;
        self.log.push(c);
        let mut diffs = vec![diff];
        diffs.extend(self.apply_pending());
        Ok(Offered::Applied(diffs))
    }

    /// Whether `challenger` beats `applied`, two different changes for the same epoch that both
    /// apply to `before`: the higher [`Authority`] of its author in `before` wins; between equal
    /// authorities, the smaller hash (as 32-byte big-endian numbers). A total order on the changes
    /// of one epoch, so every member keeps the same one whatever the order they arrive in.
    pub fn wins(before: &GroupState, challenger: &SignedChange, applied: &SignedChange) -> bool {
        let (a, b) = (before.authority(challenger), before.authority(applied));
        a > b || (a == b && challenger.hash < applied.hash)
    }

    fn keep_pending(&mut self, c: SignedChange) {
        if self.pending.len() < GROUP_CHANGE_HISTORY * 4 {
            self.pending.entry((c.body.epoch, c.hash)).or_insert(c);
        }
    }

    /// Applies pending changes of the next epoch that follow the head, while there are any: of
    /// several, the one that [`wins`](Self::wins) first; one that does not apply is dropped. Then
    /// drops the pending changes of epochs the log has reached.
    fn apply_pending(&mut self) -> Vec<Diff> {
        let mut diffs = Vec::new();
        loop {
            let next_epoch = self.state.epoch.saturating_add(1);
            let mut best: Option<&SignedChange> = None;
            for c in self
                .pending
                .range((next_epoch, [0; 32])..=(next_epoch, [0xff; 32]))
                .map(|(_, c)| c)
                .filter(|c| c.body.previous_hash == self.state.head)
            {
                if best.is_none_or(|b| Self::wins(&self.state, c, b)) {
                    best = Some(c);
                }
            }
            let Some(key) = best.map(|c| (c.body.epoch, c.hash)) else {
                break;
            };
            let Some(c) = self.pending.remove(&key) else {
                break;
            };
            if let Ok((next, diff)) = self.state.apply(&c) {
                self.state = next;
                self.log.push(c);
                diffs.push(diff);
            }
        }
        let epoch = self.state.epoch;
        self.pending.retain(|(e, _), _| *e > epoch);
        diffs
    }
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod conflict_tests;

#[cfg(test)]
mod size_tests;
