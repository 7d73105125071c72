//! Group operations of [`Device`]: membership through the relay-sequenced group log,
//! sender-key distribution and rotation, group encryption, and buffering with retry requests
//! when a sender key is missing.
//!
//! This module holds the group records; `log` writes and reads the group logs (creation,
//! changes, invitations, sync between own devices); `send` encrypts for a group and `receive`
//! decrypts, buffers and handles sender-key distributions and requests.

use std::collections::HashMap;

use hush_proto::{Message, store as pstore, wire};

use super::{Device, Received, Tx, decode, encode};
use crate::device::error::Result;
use crate::error::ProtocolError;
use crate::group::{GroupLog, GroupSecret, GroupState, SignedChange};
use crate::keys::{AccountId, DeviceAddress, DeviceIdentity, array};
use crate::sender_key::{GroupId, SenderKeyRecord};
use crate::store::kv::{KvStore, Namespace};

mod creations;
mod log;
mod notices;
mod receive;
mod send;

pub use creations::{CreationDropped, PendingCreation};
pub use log::{GroupLogCursor, GroupLogUpdate, GroupLogWrite, LogCheck};
pub(super) use notices::load_pending_notices;
pub use notices::{NoticeKey, NoticeTargets, PendingNotice};
pub(crate) use notices::{NoticeTx, PendingNotices};

/// One group this device knows.
#[derive(Clone, Debug)]
pub struct GroupEntry {
    pub(crate) log: GroupLog,
    pub(crate) needs_rotation: bool,
    /// The furthest log position (and its head hash) a member device said it had reached,
    /// while this device has not read that far.
    pub(crate) claim: Option<(u64, [u8; 32])>,
}

impl GroupEntry {
    /// The current membership.
    pub const fn state(&self) -> &GroupState {
        self.log.state()
    }

    /// The group's log as read so far.
    pub const fn log(&self) -> &GroupLog {
        &self.log
    }

    /// Whether this device's sender key must be replaced before its next message.
    pub const fn needs_rotation(&self) -> bool {
        self.needs_rotation
    }
}

/// An invitation to a group whose log this device has not read yet: the group secret from a
/// pairwise message, who sent it, and the position it said the log had reached.
#[derive(Clone)]
pub(crate) struct GroupInvite {
    pub(crate) secret: GroupSecret,
    pub(crate) inviter: AccountId,
    pub(crate) claim: (u64, [u8; 32]),
    /// Its log was read and not found (or not sealed under the secret): read again only when
    /// all logs are (after reconnecting), not after every group message. Not stored.
    pub(crate) unread_log: bool,
}

/// The result of encrypting one group message.
pub struct GroupSend {
    /// The encoded [`wire::GroupMessage`], the same bytes for every recipient.
    pub message: Vec<u8>,
    /// Every device that should receive it (all member devices except this one).
    pub recipients: Vec<DeviceAddress>,
    /// Sender-key distributions to send (pairwise) before or with the message.
    pub distributions: Vec<super::Outgoing>,
}

/// The result of receiving one group message.
pub enum GroupIncoming {
    /// Decrypted and durable in the inbox.
    Decrypted(Received),
    /// The sender key is missing: the message is kept, and a retry request may need sending.
    Buffered {
        /// A request for the sender key to send to the sender device (none if one was sent recently
        /// or no session with the sender exists yet).
        request: Option<super::Outgoing>,
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

/// A stored group record: a group, or an invitation not yet followed.
enum Loaded {
    Group(GroupEntry),
    Invite(GroupInvite),
    /// A record from before group logs were sequenced by the relay (no secret): it cannot be
    /// continued, and is ignored.
    Legacy,
}

fn load_record(g: GroupId, bytes: &[u8]) -> Result<Loaded> {
    let mut r: pstore::GroupRecord = decode(bytes, "stored group")?;
    if r.secret.is_empty() {
        return Ok(Loaded::Legacy);
    }
    let secret = GroupSecret::from_bytes(&r.secret);
    zeroize::Zeroize::zeroize(&mut r.secret);
    let secret = secret?;
    let claim = if r.claimed_seq == 0 {
        None
    } else {
        Some((
            r.claimed_seq,
            array(
                &r.claimed_head,
                "stored group",
                "claimed head must be 32 bytes",
            )?,
        ))
    };
    if !r.inviter.is_empty() {
        return Ok(Loaded::Invite(GroupInvite {
            secret,
            inviter: AccountId::from_bytes(&r.inviter)?,
            claim: claim.unwrap_or((0, [0; 32])),
            unread_log: false,
        }));
    }
    let entries = r
        .entries
        .iter()
        .map(|e| Ok((e.seq, SignedChange::parse(&e.change)?)))
        .collect::<crate::Result<Vec<_>>>()?;
    Ok(Loaded::Group(GroupEntry {
        log: GroupLog::restore(g, secret, entries, r.seq)?,
        needs_rotation: r.needs_rotation,
        claim,
    }))
}

/// The groups and invitations held in a store.
pub(super) type LoadedGroups = (HashMap<GroupId, GroupEntry>, HashMap<GroupId, GroupInvite>);

/// Loads every group record of the store.
pub(super) fn load_groups<S: KvStore>(store: &S) -> Result<LoadedGroups> {
    let mut groups = HashMap::new();
    let mut invites = HashMap::new();
    for (k, v) in store.scan(Namespace::Groups)? {
        if k.len() == 32 {
            let g = GroupId::from_bytes(&k)?;
            match load_record(g, &v)? {
                Loaded::Group(e) => {
                    groups.insert(g, e);
                }
                Loaded::Invite(i) => {
                    invites.insert(g, i);
                }
                Loaded::Legacy => {}
            }
        }
    }
    Ok((groups, invites))
}

impl<S: KvStore> Device<S> {
    pub(super) fn serialize_group_changes(&self, tx: &mut Tx) {
        for g in &tx.groups {
            if let Some(e) = self.groups.get(g) {
                let (claimed_seq, claimed_head) =
                    e.claim.map_or((0, Vec::new()), |(s, h)| (s, h.to_vec()));
                let mut r = pstore::GroupRecord {
                    needs_rotation: e.needs_rotation,
                    secret: e.log.secret().to_bytes().to_vec(),
                    entries: e
                        .log
                        .entries()
                        .iter()
                        .map(|(seq, c)| pstore::GroupLogEntry {
                            seq: *seq,
                            change: c.signed.clone(),
                        })
                        .collect(),
                    seq: e.log.seq(),
                    claimed_seq,
                    claimed_head,
                    inviter: Vec::new(),
                };
                tx.batch.put(Namespace::Groups, g.0.to_vec(), encode(&r));
                zeroize::Zeroize::zeroize(&mut r.secret);
            } else if let Some(i) = self.group_invites.get(g) {
                let mut r = pstore::GroupRecord {
                    secret: i.secret.to_bytes().to_vec(),
                    claimed_seq: i.claim.0,
                    claimed_head: i.claim.1.to_vec(),
                    inviter: i.inviter.as_bytes().to_vec(),
                    needs_rotation: false,
                    entries: Vec::new(),
                    seq: 0,
                };
                tx.batch.put(Namespace::Groups, g.0.to_vec(), encode(&r));
                zeroize::Zeroize::zeroize(&mut r.secret);
            } else {
                tx.batch.delete(Namespace::Groups, g.0.to_vec());
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
            self.groups.remove(g);
            self.group_invites.remove(g);
            let stored = self.store.get(Namespace::Groups, &g.0).ok().flatten();
            match stored.map(|v| load_record(*g, &v)) {
                Some(Ok(Loaded::Group(e))) => {
                    self.groups.insert(*g, e);
                }
                Some(Ok(Loaded::Invite(i))) => {
                    self.group_invites.insert(*g, i);
                }
                _ => {}
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
}
