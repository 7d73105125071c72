//! Group membership: a log of membership changes sequenced by the relay, each signed by its
//! author device and carrying the proof that the device was listed when it signed.
//!
//! The relay numbers the entries of a group's log (1, 2, 3, …) and appends only with a
//! compare-and-swap on the next number, so every member reads the same entries in the same order;
//! it cannot read them (they are sealed under a key derived from the [`GroupSecret`]) and cannot
//! forge or reorder them (each change is signed and names its own position). Every member
//! processes entry after entry with the same pure rules ([`GroupLog::process`]):
//!
//! - an entry that does not open, parse or verify, names another position, does not follow the
//!   last valid change, or breaks the membership rules is **skipped** — by every member alike,
//!   since its validity depends only on the log before it;
//! - the author device is checked against the signed device list the change carries (the
//!   author account's list when it signed), never against today's lists, so a member that joins
//!   later verifies the whole log even after author devices left their accounts; an account's
//!   lists in the log never go back in version;
//! - the creation (entry 1) names the slot, and the group id is the hash of the signed creation,
//!   so no creation for someone else's id can exist.
//!
//! There is no fork to choose between: a change that lost the race for a position is refused by
//! the relay, and its author rebuilds it on the new head or drops it.

use std::collections::BTreeMap;

use hush_proto::{Message, labels, wire};
use sha2::{Digest, Sha256};

use crate::consts::{GROUP_ID_LABEL, MAX_GROUP_MEMBERS, MAX_GROUP_NAME_LEN};
use crate::device_list::VerifiedDeviceList;
use crate::error::{Error, ProtocolError, Result};
use crate::keys::{AccountId, DeviceAddress, DeviceIdentityKeyPair, array};
use crate::sender_key::GroupId;

mod secret;

pub use secret::GroupSecret;

/// The content of one membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeBody {
    /// The group (for the creation: derived from the signed creation by [`SignedChange::sign`]
    /// and [`SignedChange::parse`]; what is given to `sign` is ignored).
    pub group: GroupId,
    /// The log position it is written for (creation = 1).
    pub epoch: u64,
    /// Hash of the last valid change before it (zeros for the creation).
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
    /// The author account's signed device list (the `SignedDeviceList` bytes) when it signed.
    pub author_list: Vec<u8>,
    /// Creation only: the relay slot of the log.
    pub slot: Option<[u8; 32]>,
}

/// A parsed, signed change (signature checked by [`SignedChange::verify`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedChange {
    /// The content.
    pub body: ChangeBody,
    /// The serialized [`wire::SignedGroupChange`], in its canonical encoding (re-encoded on
    /// parsing, so unknown or repeated wrapper fields are not kept).
    pub signed: Vec<u8>,
    /// SHA-256 of the signed `GroupChange` bytes (what the signature covers; not the wrapper).
    pub hash: [u8; 32],
    change_bytes: Vec<u8>,
    signature: Vec<u8>,
}

/// The id of the group a signed creation makes: `SHA-256("Hush-GroupId-v1" ‖ change bytes)`.
fn id_of_creation(change_bytes: &[u8]) -> GroupId {
    let mut h = Sha256::new();
    h.update(GROUP_ID_LABEL);
    h.update(change_bytes);
    GroupId(h.finalize().into())
}

impl SignedChange {
    /// Signs a change with the author device's identity. A creation (epoch 1) carries no group
    /// id: its id is derived from the signed bytes and set in the returned body.
    pub fn sign(mut body: ChangeBody, identity: &DeviceIdentityKeyPair) -> Self {
        let creation = body.epoch == 1;
        let raw = wire::GroupChange {
            group_id: if creation {
                Vec::new()
            } else {
                body.group.0.to_vec()
            },
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
            author_device_list: body.author_list.clone(),
            log_slot: body.slot.map(|s| s.to_vec()).unwrap_or_default(),
        };
        let change_bytes = raw.encode_to_vec();
        if creation {
            body.group = id_of_creation(&change_bytes);
        }
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
        let creation = c.epoch == 1;
        let group = match (creation, c.group_id.is_empty()) {
            (true, true) => id_of_creation(&s.change),
            (false, false) => GroupId::from_bytes(&c.group_id)?,
            (true, false) => {
                return Err(Error::malformed(
                    "group change",
                    "a creation names no group id",
                ));
            }
            (false, true) => return Err(Error::malformed("group change", "no group id")),
        };
        let slot = match (creation, c.log_slot.is_empty()) {
            (true, false) => Some(array(&c.log_slot, "group change", "slot must be 32 bytes")?),
            (false, true) => None,
            (true, true) => {
                return Err(Error::malformed("group change", "a creation names a slot"));
            }
            (false, false) => {
                return Err(Error::malformed(
                    "group change",
                    "only a creation names a slot",
                ));
            }
        };
        let body = ChangeBody {
            group,
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
            author_list: c.author_device_list,
            slot,
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

    /// Verifies the change on its own: the device list it carries verifies under the author's
    /// account key and lists the author device, whose identity signed the change. Returns the
    /// version of that list.
    pub fn verify(&self) -> Result<u64> {
        let author = self.body.author;
        let list = VerifiedDeviceList::verify(&self.body.author_list, &author.account)?;
        let identity = list.identity_of(author.device_id)?;
        identity.verify(
            labels::GROUP_CHANGE,
            &self.change_bytes,
            &self.signature,
            "group change",
        )?;
        Ok(list.list().version)
    }
}

/// The membership of a group after the valid changes of its log up to one position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupState {
    /// The group.
    pub id: GroupId,
    /// Its name.
    pub name: String,
    /// The position of the last valid change.
    pub epoch: u64,
    /// Hash of the last valid change.
    pub head: [u8; 32],
    /// Members and whether each is an admin.
    pub members: BTreeMap<AccountId, bool>,
    /// The highest device-list version each author account showed in the log.
    pub list_versions: BTreeMap<AccountId, u64>,
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
            list_versions: BTreeMap::new(),
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

    /// Applies a change written at log position `seq` whose author list has version
    /// `list_version` (from [`SignedChange::verify`]), returning the next state. Pure.
    pub fn apply(&self, seq: u64, c: &SignedChange, list_version: u64) -> Result<(Self, Diff)> {
        let b = &c.body;
        if b.group != self.id {
            return Err(ProtocolError::Misuse("change for another group").into());
        }
        if b.epoch != seq || b.previous_hash != self.head {
            return Err(ProtocolError::Misuse("change does not follow the log").into());
        }
        let author = b.author.account;
        if self
            .list_versions
            .get(&author)
            .is_some_and(|v| *v > list_version)
        {
            return Err(ProtocolError::DeviceListRollback {
                known: self.list_versions.get(&author).copied().unwrap_or(0),
                got: list_version,
            }
            .into());
        }
        let refresh = b.add.is_empty() && b.name.is_none() && b.remove.is_empty();
        let leaving = b.add.is_empty() && b.name.is_none() && b.remove == [author];
        if b.epoch == 1 {
            if !b.remove.is_empty() || !b.add.contains(&(author, true)) {
                return Err(ProtocolError::NotPermitted(
                    "group creation must list its author as admin",
                )
                .into());
            }
        } else if !self.is_admin(&author) && !((leaving || refresh) && self.is_member(&author)) {
            return Err(ProtocolError::NotPermitted("group change by a non-admin").into());
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
        next.list_versions.insert(author, list_version);
        next.epoch = b.epoch;
        next.head = c.hash;
        Ok((next, diff))
    }
}

/// What processing one log entry did.
#[derive(Debug)]
pub enum Processed {
    /// A valid change, applied.
    Applied {
        /// The change.
        change: Box<SignedChange>,
        /// Who joined and left.
        diff: Diff,
    },
    /// Not a valid change at this position: skipped by every member alike.
    Skipped(Error),
}

/// A group's log as far as this device has read it, and the state it leads to.
#[derive(Clone)]
pub struct GroupLog {
    secret: GroupSecret,
    /// The valid changes with their positions, creation first.
    entries: Vec<(u64, SignedChange)>,
    /// The last position processed (valid or skipped).
    seq: u64,
    state: GroupState,
}

impl std::fmt::Debug for GroupLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupLog")
            .field("seq", &self.seq)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl GroupLog {
    /// Starts the log of group `id` from its first entry (position 1), which must be a valid
    /// creation of exactly that id, naming the slot of `secret`.
    pub fn create(id: GroupId, secret: GroupSecret, first_entry: &[u8]) -> Result<Self> {
        let bytes = secret
            .open_entry(1, first_entry)
            .map_err(|_| ProtocolError::InvalidGroupLog("the creation does not open"))?;
        let c = SignedChange::parse(&bytes)?;
        Self::from_creation(id, secret, c)
    }

    /// Starts a log from a parsed creation (checked as by [`Self::create`]).
    pub fn from_creation(id: GroupId, secret: GroupSecret, c: SignedChange) -> Result<Self> {
        if c.body.epoch != 1 || c.body.group != id {
            return Err(
                ProtocolError::InvalidGroupLog("the creation is for another group id").into(),
            );
        }
        if c.body.slot != Some(secret.slot()) {
            return Err(ProtocolError::InvalidGroupLog("the creation names another slot").into());
        }
        let version = c.verify()?;
        let (state, _) = GroupState::empty(id).apply(1, &c, version)?;
        Ok(Self {
            secret,
            entries: vec![(1, c)],
            seq: 1,
            state,
        })
    }

    /// Rebuilds from stored, previously verified changes and the last position processed.
    pub fn restore(
        id: GroupId,
        secret: GroupSecret,
        entries: Vec<(u64, SignedChange)>,
        seq: u64,
    ) -> Result<Self> {
        let mut state = GroupState::empty(id);
        for (at, c) in &entries {
            let version = VerifiedDeviceList::verify(&c.body.author_list, &c.body.author.account)?
                .list()
                .version;
            state = state.apply(*at, c, version)?.0;
        }
        if entries.first().is_none_or(|(at, _)| *at != 1) || seq < state.epoch {
            return Err(Error::malformed(
                "stored group",
                "log does not start with its creation",
            ));
        }
        if entries
            .first()
            .is_some_and(|(_, c)| c.body.slot != Some(secret.slot()))
        {
            return Err(Error::malformed(
                "stored group",
                "secret does not match the log",
            ));
        }
        Ok(Self {
            secret,
            entries,
            seq,
            state,
        })
    }

    /// The current state.
    pub const fn state(&self) -> &GroupState {
        &self.state
    }

    /// The group secret.
    pub const fn secret(&self) -> &GroupSecret {
        &self.secret
    }

    /// The valid changes with their positions, creation first.
    pub fn entries(&self) -> &[(u64, SignedChange)] {
        &self.entries
    }

    /// The last position processed.
    pub const fn seq(&self) -> u64 {
        self.seq
    }

    /// The head hash at position `seq`: the hash of the last valid change at or before it.
    pub fn head_at(&self, seq: u64) -> [u8; 32] {
        self.entries
            .iter()
            .rev()
            .find(|(at, _)| *at <= seq)
            .map_or([0; 32], |(_, c)| c.hash)
    }

    /// Whether `account` was ever added to the group by a change in the log.
    pub fn was_member(&self, account: &AccountId) -> bool {
        self.entries
            .iter()
            .any(|(_, c)| c.body.add.iter().any(|(a, _)| a == account))
    }

    /// Processes the entry at the next position (`seq() + 1`); an entry for another position is
    /// a misuse. Invalid entries are skipped, as by every other member.
    pub fn process(&mut self, seq: u64, entry: &[u8]) -> Result<Processed> {
        if seq != self.seq.saturating_add(1) {
            return Err(ProtocolError::Misuse("log entries must be processed in order").into());
        }
        let outcome = self.validate(seq, entry);
        self.seq = seq;
        Ok(match outcome {
            Ok((change, state, diff)) => {
                self.state = state;
                self.entries.push((seq, change.clone()));
                Processed::Applied {
                    change: Box::new(change),
                    diff,
                }
            }
            Err(e) => Processed::Skipped(e),
        })
    }

    fn validate(&self, seq: u64, entry: &[u8]) -> Result<(SignedChange, GroupState, Diff)> {
        let bytes = self.secret.open_entry(seq, entry)?;
        let c = SignedChange::parse(&bytes)?;
        let version = c.verify()?;
        let (state, diff) = self.state.apply(seq, &c, version)?;
        Ok((c, state, diff))
    }

    /// Seals `change` (built on this log's head for position `seq() + 1`) as a log entry.
    pub fn seal(
        &self,
        change: &SignedChange,
        rng: &mut impl rand_core::CryptoRng,
    ) -> Result<Vec<u8>> {
        self.secret
            .seal_entry(change.body.epoch, &change.signed, rng)
    }
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests;
