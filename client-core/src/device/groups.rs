//! Group operations of [`Device`]: membership changes, sender-key distribution and rotation,
//! group encryption, and buffering with retry requests when a sender key is missing.
//!
//! This module holds the group records and membership (creation, updates, sync
//! between own devices); `send` encrypts for a group and `receive` decrypts, buffers and handles
//! sender-key distributions and requests.

use std::collections::HashMap;

use hush_proto::{Message, store as pstore, wire};
use rand_core::CryptoRng;

use super::{Device, Outgoing, Received, Tx, decode, encode};
use crate::device::error::Result;
use crate::device_list::VerifiedDeviceList;
use crate::error::{Error, ProtocolError};
use crate::group::{ChangeBody, GroupLog, GroupState, Offered, SignedChange};
use crate::keys::{AccountId, DeviceAddress, DeviceIdentity};
use crate::sender_key::{GroupId, SenderKeyRecord};
use crate::store::kv::{KvStore, Namespace};

mod receive;
mod send;

/// One group this device knows.
#[derive(Clone, Debug)]
pub struct GroupEntry {
    pub(crate) log: GroupLog,
    pub(crate) needs_rotation: bool,
}

impl GroupEntry {
    /// The current membership.
    pub const fn state(&self) -> &GroupState {
        self.log.state()
    }

    /// Whether this device's sender key must be replaced before its next message.
    pub const fn needs_rotation(&self) -> bool {
        self.needs_rotation
    }
}

/// The result of encrypting one group message.
pub struct GroupSend {
    /// The encoded [`wire::GroupMessage`], the same bytes for every recipient.
    pub message: Vec<u8>,
    /// Every device that should receive it (all member devices except this one).
    pub recipients: Vec<DeviceAddress>,
    /// Sender-key distributions to send (pairwise) before or with the message.
    pub distributions: Vec<Outgoing>,
}

/// The result of receiving one group message.
pub enum GroupIncoming {
    /// Decrypted and durable in the inbox.
    Decrypted(Received),
    /// The sender key is missing: the message is kept, and a retry request may need sending.
    Buffered {
        /// A request for the sender key to send to the sender device (none if one was sent recently
        /// or no session with the sender exists yet).
        request: Option<Outgoing>,
    },
}

fn sender_key_key(g: &GroupId, a: &DeviceAddress) -> Vec<u8> {
    let mut k = g.0.to_vec();
    k.extend_from_slice(&a.to_key());
    k
}

fn buffer_prefix(g: &GroupId) -> Vec<u8> {
    let mut k = g.0.to_vec();
    k.push(1);
    k
}

/// A buffered message as the quotas see it: (seq, store key, length).
type Held = (u64, Vec<u8>, usize);

/// The account a buffered message counts against: the one recorded with it, or (records from
/// before that was stored) the sender its header names.
fn buffered_sender(b: &pstore::BufferedGroupMessage) -> [u8; 32] {
    if let Ok(a) = <[u8; 32]>::try_from(b.sender_account.as_slice()) {
        return a;
    }
    wire::GroupMessage::decode(b.message.as_slice())
        .ok()
        .and_then(|m| <[u8; 32]>::try_from(m.sender_account_key.as_slice()).ok())
        .unwrap_or([0; 32])
}

fn load_entry(bytes: &[u8]) -> Result<GroupEntry> {
    let r: pstore::GroupRecord = decode(bytes, "stored group")?;
    let log = r
        .log
        .iter()
        .map(|b| SignedChange::parse(b))
        .collect::<crate::Result<Vec<_>>>()?;
    let pending = r
        .pending
        .iter()
        .map(|b| SignedChange::parse(b))
        .collect::<crate::Result<Vec<_>>>()?;
    Ok(GroupEntry {
        log: GroupLog::restore(log, pending)?,
        needs_rotation: r.needs_rotation,
    })
}

/// Loads every group record of the store.
pub(super) fn load_groups<S: KvStore>(store: &S) -> Result<HashMap<GroupId, GroupEntry>> {
    let mut out = HashMap::new();
    for (k, v) in store.scan(Namespace::Groups)? {
        if k.len() == 32 {
            out.insert(GroupId::from_bytes(&k)?, load_entry(&v)?);
        }
    }
    Ok(out)
}

impl<S: KvStore> Device<S> {
    pub(super) fn serialize_group_changes(&self, tx: &mut Tx) {
        for g in &tx.groups {
            match self.groups.get(g) {
                Some(e) => {
                    let r = pstore::GroupRecord {
                        log: e.log.log().iter().map(|c| c.signed.clone()).collect(),
                        needs_rotation: e.needs_rotation,
                        pending: e.log.pending().map(|c| c.signed.clone()).collect(),
                    };
                    tx.batch.put(Namespace::Groups, g.0.to_vec(), encode(&r));
                }
                None => {
                    tx.batch.delete(Namespace::Groups, g.0.to_vec());
                }
            }
        }
        for (g, a) in &tx.sender_keys {
            if let Some(r) = self.sender_keys.get(&(*g, *a)) {
                let mut p = r.to_proto();
                tx.batch
                    .put(Namespace::SenderKeys, sender_key_key(g, a), encode(&p));
                zeroize::Zeroize::zeroize(&mut p);
            }
        }
    }

    pub(super) fn discard_group_changes(&mut self, tx: &Tx) {
        for k in &tx.sender_keys {
            self.sender_keys.remove(k);
        }
        for g in &tx.groups {
            match self
                .store
                .get(Namespace::Groups, &g.0)
                .ok()
                .flatten()
                .map(|v| load_entry(&v))
            {
                Some(Ok(e)) => {
                    self.groups.insert(*g, e);
                }
                _ => {
                    self.groups.remove(g);
                }
            }
        }
    }

    /// Marks every group with `account` as a member for sender-key rotation.
    pub(super) fn mark_rotation_for_member(&mut self, account: &AccountId, tx: &mut Tx) {
        for (g, e) in &mut self.groups {
            if e.log.state().is_member(account) {
                e.needs_rotation = true;
                tx.groups.insert(*g);
            }
        }
    }

    fn sender_key_record(&mut self, g: GroupId, a: DeviceAddress) -> Result<&mut SenderKeyRecord> {
        if !self.sender_keys.contains_key(&(g, a)) {
            let r = match self
                .store
                .get(Namespace::SenderKeys, &sender_key_key(&g, &a))?
            {
                Some(v) => SenderKeyRecord::from_proto(&decode(&v, "stored sender key")?)?,
                None => SenderKeyRecord::default(),
            };
            self.sender_keys.insert((g, a), r);
        }
        self.sender_keys
            .get_mut(&(g, a))
            .ok_or(ProtocolError::UnknownGroup.into())
    }

    /// The record of keys received from `sender` in group `g`, bound to the sender device's
    /// current `identity`: keys received from an earlier device at the same address are dropped
    /// (and the drop is recorded in `tx`).
    fn received_record(
        &mut self,
        g: GroupId,
        sender: DeviceAddress,
        identity: DeviceIdentity,
        tx: &mut Tx,
    ) -> Result<&mut SenderKeyRecord> {
        if self.sender_key_record(g, sender)?.bind_sender(identity) {
            tx.sender_keys.insert((g, sender));
        }
        self.sender_key_record(g, sender)
    }

    /// The sender keys held for `sender` in group `g`: (key id, next iteration, stored skipped keys),
    /// newest first. For diagnostics and tests; reveals no key material.
    pub fn sender_key_status(
        &mut self,
        g: &GroupId,
        sender: &DeviceAddress,
    ) -> Result<Vec<(u32, u32, usize)>> {
        let r = self.sender_key_record(*g, *sender)?;
        Ok(r.states()
            .map(|s| (s.key_id(), s.iteration(), s.skipped_len()))
            .collect())
    }

    /// A group this device knows.
    pub fn group(&self, g: &GroupId) -> Option<&GroupEntry> {
        self.groups.get(g)
    }

    /// The ids of the groups this device knows.
    pub fn group_ids(&self) -> Vec<GroupId> {
        self.groups.keys().copied().collect()
    }

    fn devices_of(
        &self,
        accounts: impl IntoIterator<Item = AccountId>,
    ) -> Result<Vec<DeviceAddress>> {
        let mut out = Vec::new();
        for a in accounts {
            let list = self
                .device_lists
                .get(&a)
                .ok_or(ProtocolError::UnknownAccount)?;
            out.extend(list.addresses().filter(|d| *d != self.address));
        }
        Ok(out)
    }

    /// Every device of the group's members (from their device lists), except this one.
    pub fn group_devices(&self, g: &GroupId) -> Result<Vec<DeviceAddress>> {
        let entry = self.groups.get(g).ok_or(ProtocolError::UnknownGroup)?;
        self.devices_of(entry.log.state().members.keys().copied())
    }

    /// `GroupChanges` carrying `changes`; with `proofs` (a sync answer to a sibling), also the
    /// lists that show their author devices were listed (§17.6): the list this device holds
    /// when it lists the author (the receiver may know a newer one without it), or else an
    /// earlier list it kept.
    fn changes_content(&self, changes: &[SignedChange], proofs_for: bool) -> wire::Content {
        let mut proofs: Vec<Vec<u8>> = Vec::new();
        for c in changes.iter().filter(|_| proofs_for) {
            let author = c.body.author;
            if self
                .known_identity(&author)
                .is_ok_and(|id| c.verify(&id).is_ok())
            {
                if let Some(l) = self.device_lists.get(&author.account) {
                    let bytes = l.signed_bytes().to_vec();
                    if !proofs.contains(&bytes) {
                        proofs.push(bytes);
                    }
                }
                continue;
            }
            let Ok(former) = self.former_lists(&author.account) else {
                continue;
            };
            let proof = former.iter().rev().find(|l| {
                l.identity_of(author.device_id)
                    .is_ok_and(|id| c.verify(&id).is_ok())
            });
            if let Some(l) = proof {
                let bytes = l.signed_bytes().to_vec();
                if !proofs.contains(&bytes) {
                    proofs.push(bytes);
                }
            }
        }
        wire::Content {
            body: Some(wire::content::Body::GroupChanges(wire::GroupChanges {
                changes: changes.iter().map(|c| c.signed.clone()).collect(),
                device_lists: proofs,
            })),
        }
    }

    /// Whether `change`, whose author device is not on its account's current list, is signed
    /// by that device as an earlier list of the account (signed by the account key, older than
    /// the current one) lists it: one of `proofs` or one this device kept.
    fn signed_by_former_device(&self, change: &SignedChange, proofs: &[Vec<u8>]) -> Result<bool> {
        let author = change.body.author;
        let Some(current) = self.device_lists.get(&author.account) else {
            return Ok(false);
        };
        let current_version = current.list().version;
        let mut lists = self.former_lists(&author.account)?;
        for p in proofs {
            // A proof that does not verify for this account is no proof; others may be.
            if let Ok(l) = VerifiedDeviceList::verify(p, &author.account) {
                lists.push(l);
            }
        }
        Ok(lists.iter().any(|l| {
            l.list().version < current_version
                && l.identity_of(author.device_id)
                    .is_ok_and(|id| change.verify(&id).is_ok())
        }))
    }

    /// Creates a group with this device's account as admin and `members` as members. Returns the
    /// group id and the messages that tell every member device. Needs sessions with all of them
    /// ([`Device::missing_sessions`] over the member accounts' devices).
    pub fn create_group(
        &mut self,
        name: &str,
        members: &[AccountId],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<(GroupId, Vec<Outgoing>)> {
        let id = GroupId::random(rng);
        let mut add = vec![(self.address.account, true)];
        add.extend(
            members
                .iter()
                .filter(|a| **a != self.address.account)
                .map(|a| (*a, false)),
        );
        let body = ChangeBody {
            group: id,
            epoch: 1,
            previous_hash: [0; 32],
            author: self.address,
            name: Some(name.to_owned()),
            add,
            remove: Vec::new(),
            issued_at: now,
        };
        let change = SignedChange::sign(body, &self.identity);
        let log = GroupLog::create(change)?;
        let content = self.changes_content(log.log(), false);
        self.groups.insert(
            id,
            GroupEntry {
                log,
                needs_rotation: false,
            },
        );
        let mut tx = Tx::default();
        tx.groups.insert(id);
        let out = self.group_devices(&id).and_then(|devices| {
            devices
                .iter()
                .map(|d| {
                    Ok(Outgoing {
                        to: *d,
                        bytes: self.seal(d, &content, rng, now, &mut tx)?,
                    })
                })
                .collect()
        });
        match out {
            Ok(out) => {
                self.finish(tx)?;
                Ok((id, out))
            }
            Err(e) => {
                self.groups.remove(&id);
                for a in &tx.sessions {
                    self.sessions.remove(a);
                }
                Err(e)
            }
        }
    }

    /// Changes a group (this device's account must be an admin, or be removing only itself):
    /// adds members or changes their admin flag, removes members, renames. Returns the messages
    /// that tell every device of the members before and after the change (new members receive
    /// the whole log). Removing a member makes every remaining member rotate its sender key.
    pub fn update_group(
        &mut self,
        g: &GroupId,
        add: &[(AccountId, bool)],
        remove: &[AccountId],
        name: Option<&str>,
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<Vec<Outgoing>> {
        let entry = self.groups.get(g).ok_or(ProtocolError::UnknownGroup)?;
        let before = entry.log.state().clone();
        let body = ChangeBody {
            group: *g,
            epoch: before.epoch.saturating_add(1),
            previous_hash: before.head,
            author: self.address,
            name: name.map(str::to_owned),
            add: add.to_vec(),
            remove: remove.to_vec(),
            issued_at: now,
        };
        let change = SignedChange::sign(body, &self.identity);
        let (after, diff) = before.apply(&change)?;
        let mut log = entry.log.clone();
        log.offer(change.clone())?;
        let full = self.changes_content(log.log(), false);
        let single = self.changes_content(std::slice::from_ref(&change), false);
        let old_entry = self.groups.insert(
            *g,
            GroupEntry {
                log,
                needs_rotation: entry.needs_rotation || !diff.removed.is_empty(),
            },
        );
        let mut tx = Tx::default();
        tx.groups.insert(*g);
        let mut accounts: Vec<AccountId> = after.members.keys().copied().collect();
        accounts.extend(diff.removed.iter().copied());
        let out = self.devices_of(accounts).and_then(|devices| {
            devices
                .iter()
                .map(|d| {
                    let content = if diff.added.contains(&d.account) {
                        &full
                    } else {
                        &single
                    };
                    Ok(Outgoing {
                        to: *d,
                        bytes: self.seal(d, content, rng, now, &mut tx)?,
                    })
                })
                .collect::<Result<Vec<_>>>()
        });
        let out = match out {
            Ok(o) => self.finish_or_err(tx, o),
            Err(e) => {
                // Sessions advanced for recipients sealed before the failure: reload them from
                // the store (nothing was output).
                for a in &tx.sessions {
                    self.sessions.remove(a);
                }
                Err(e)
            }
        };
        match out {
            Ok(o) => Ok(o),
            Err(e) => {
                if let Some(old) = old_entry {
                    self.groups.insert(*g, old);
                }
                Err(e)
            }
        }
    }

    fn finish_or_err<T>(&mut self, tx: Tx, value: T) -> Result<T> {
        let sessions: Vec<_> = tx.sessions.iter().copied().collect();
        match self.finish(tx) {
            Ok(()) => Ok(value),
            Err(e) => {
                for a in sessions {
                    self.sessions.remove(&a);
                }
                Err(e)
            }
        }
    }

    /// Asks the other devices of this account for the logs of the groups the account is in: a
    /// newly linked device calls this once it has sessions with its siblings (see
    /// [`Device::missing_sessions`] over its own account's devices). Returns one message per
    /// other device; each answers with a `GroupChanges` per group (§17.7).
    pub fn request_group_sync(
        &mut self,
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<Vec<Outgoing>> {
        let siblings = self.devices_of([self.address.account])?;
        let content = wire::Content {
            body: Some(wire::content::Body::GroupSyncRequest(
                wire::GroupSyncRequest {},
            )),
        };
        let mut tx = Tx::default();
        let out = siblings
            .iter()
            .map(|d| {
                Ok(Outgoing {
                    to: *d,
                    bytes: self.seal(d, &content, rng, now, &mut tx)?,
                })
            })
            .collect::<Result<Vec<_>>>();
        match out {
            Ok(o) => self.finish_or_err(tx, o),
            Err(e) => {
                for a in &tx.sessions {
                    self.sessions.remove(a);
                }
                Err(e)
            }
        }
    }

    /// Answers a `GroupSyncRequest` from `from`: only a listed device of this device's own
    /// account gets an answer — the whole log of every group the account is a member of, one
    /// `GroupChanges` per group. Requests from other accounts are ignored.
    pub(super) fn answer_group_sync(
        &mut self,
        from: &DeviceAddress,
        rng: &mut impl CryptoRng,
        now: u64,
        tx: &mut Tx,
    ) -> Result<Vec<Outgoing>> {
        if from.account != self.address.account || *from == self.address {
            return Ok(Vec::new());
        }
        self.known_identity(from)?;
        let mut ids: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, e)| e.log.state().is_member(&self.address.account))
            .map(|(g, _)| *g)
            .collect();
        ids.sort_unstable_by_key(|g| g.0);
        let mut out = Vec::with_capacity(ids.len());
        for g in ids {
            let Some(entry) = self.groups.get(&g) else {
                continue;
            };
            let content = self.changes_content(entry.log.log(), true);
            out.push(Outgoing {
                to: *from,
                bytes: self.seal(from, &content, rng, now, tx)?,
            });
        }
        Ok(out)
    }

    pub(super) fn accept_group_changes(
        &mut self,
        from: &DeviceAddress,
        c: &wire::GroupChanges,
        now: u64,
        tx: &mut Tx,
    ) -> Result<(Vec<Received>, bool)> {
        let mut created = Vec::new();
        // Groups whose state this message changed (joined, applied, replaced).
        let mut changed = std::collections::HashSet::new();
        let parsed = c
            .changes
            .iter()
            .map(|b| SignedChange::parse(b))
            .collect::<crate::Result<Vec<_>>>()?;
        let sibling = from.account == self.address.account;
        for change in parsed {
            let g = change.body.group;
            let known = self.groups.get(&g);
            // Changes that cannot matter are skipped before anything is verified (or any author
            // list is asked for): a later change of a group this device does not know, and a
            // change already in the log (a sibling's sync answer repeating history).
            if known.is_none() && change.body.epoch != 1 {
                continue;
            }
            if known.is_some_and(|e| e.log.log().iter().any(|c| c.hash == change.hash)) {
                continue;
            }
            // The log of a group being joined may hold changes whose author device has left
            // its list since: its signature can no longer be checked against a current list.
            // Such a change is accepted only from another device of this account (a sibling
            // answering a group sync, §17.7), and only if an earlier list of the author's
            // account, signed by the account key, lists the author device with the identity
            // that signed it (sent along, or kept here); from anyone else it fails the message
            // (§14 item 8). A bad signature is never accepted.
            let vouched = sibling && (known.is_none() || created.contains(&g));
            let checked = match self.known_identity(&change.body.author) {
                Ok(author) => change.verify(&author),
                Err(Error::Protocol(ProtocolError::UnknownAccount)) => {
                    return Err(ProtocolError::UnknownAuthor(change.body.author.account).into());
                }
                Err(e) => Err(e),
            };
            match checked {
                Ok(()) => {}
                Err(Error::Protocol(ProtocolError::DeviceNotOnList))
                    if vouched && self.signed_by_former_device(&change, &c.device_lists)? => {}
                Err(e) => return Err(e.into()),
            }
            match self.groups.get_mut(&g) {
                None if change.body.epoch == 1 => {
                    created.push(g);
                    changed.insert(g);
                    let log = GroupLog::create(change)?;
                    self.groups.insert(
                        g,
                        GroupEntry {
                            log,
                            needs_rotation: false,
                        },
                    );
                }
                None => continue,
                Some(e) => match e.log.offer(change)? {
                    Offered::Applied(diffs) => {
                        changed.insert(g);
                        if diffs.iter().any(|d| !d.removed.is_empty()) {
                            e.needs_rotation = true;
                        }
                    }
                    Offered::Replaced => {
                        changed.insert(g);
                        e.needs_rotation = true;
                    }
                    Offered::Buffered | Offered::Ignored => {}
                },
            }
            tx.groups.insert(g);
        }
        // A group is only kept by its members: a log that does not (yet) include this account is
        // not stored, so nobody can make a device keep groups it is not in.
        for g in created {
            if self
                .groups
                .get(&g)
                .is_some_and(|e| !e.log.state().is_member(&self.address.account))
            {
                self.groups.remove(&g);
                tx.groups.remove(&g);
                changed.remove(&g);
            }
        }
        let mut out = Vec::new();
        for g in tx.groups.clone() {
            out.extend(self.drain_buffer(&g, now, tx)?);
        }
        Ok((out, !changed.is_empty()))
    }
}
