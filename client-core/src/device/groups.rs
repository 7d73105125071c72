//! Group operations of [`Device`]: membership changes, sender-key distribution and rotation,
//! group encryption, and buffering with retry requests when a sender key is missing.

use std::collections::HashMap;

use hush_proto::{Message, store as pstore, wire};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::{Device, Outgoing, Received, Tx, decode, encode};
use crate::consts::{
    BUFFERED_GROUP_MESSAGE_MAX_AGE_MS, MAX_BUFFERED_GROUP_BYTES_PER_SENDER,
    MAX_BUFFERED_GROUP_BYTES_TOTAL, MAX_BUFFERED_GROUP_MESSAGES_PER_SENDER,
    MAX_BUFFERED_GROUP_MESSAGES_TOTAL, MAX_MESSAGE_LEN, MAX_PLAINTEXT_LEN,
    SENDER_KEY_MAX_ITERATIONS, SENDER_KEY_REQUEST_INTERVAL_MS,
};
use crate::device_list::VerifiedDeviceList;
use crate::error::{Error, ProtocolError, Result};
use crate::group::{ChangeBody, GroupLog, GroupState, Offered, SignedChange};
use crate::keys::{AccountId, DeviceAddress, DeviceIdentity};
use crate::sender_key::{GroupId, GroupMessage, SenderKeyRecord, SenderKeyState};
use crate::store::kv::{KvStore, Namespace};

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
        .collect::<Result<Vec<_>>>()?;
    let pending = r
        .pending
        .iter()
        .map(|b| SignedChange::parse(b))
        .collect::<Result<Vec<_>>>()?;
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
    pub(crate) fn serialize_group_changes(&self, tx: &mut Tx) {
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

    pub(crate) fn discard_group_changes(&mut self, tx: &Tx) {
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
    pub(crate) fn mark_rotation_for_member(&mut self, account: &AccountId, tx: &mut Tx) {
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

    /// Encrypts one message for the group: one AEAD encryption and one signature, whatever the
    /// group's size. First rotates this device's sender key if a member was removed, and prepares
    /// sender-key distributions for member devices that do not have the key yet (they need
    /// sessions: see [`Device::missing_sessions`] over [`Device::group_devices`]).
    pub fn group_encrypt(
        &mut self,
        g: &GroupId,
        plaintext: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<GroupSend> {
        self.group_encrypt_except(g, plaintext, &[], rng, now)
    }

    /// As [`Self::group_encrypt`], leaving out the member accounts in `skip` (those that cannot
    /// be reached now: no verified device list, no session): they get neither the message nor a
    /// distribution, and their devices no entitlement, so a later send gives them the key.
    pub fn group_encrypt_except(
        &mut self,
        g: &GroupId,
        plaintext: &[u8],
        skip: &[AccountId],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<GroupSend> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(ProtocolError::TooLarge(plaintext.len()).into());
        }
        let entry = self.groups.get(g).ok_or(ProtocolError::UnknownGroup)?;
        if !entry.log.state().is_member(&self.address.account) {
            return Err(ProtocolError::NotAMember.into());
        }
        let rotate = entry.needs_rotation;
        let recipients = self.devices_of(
            entry
                .log
                .state()
                .members
                .keys()
                .filter(|a| !skip.contains(a))
                .copied(),
        )?;
        let identities = recipients
            .iter()
            .map(|d| Ok((*d, self.known_identity(d)?)))
            .collect::<Result<Vec<_>>>()?;
        let me = self.address;
        let mut tx = Tx::default();
        let record = self.sender_key_record(*g, me)?;
        let must_rotate = rotate
            || record
                .current()
                .is_none_or(|s| s.iteration() >= SENDER_KEY_MAX_ITERATIONS);
        if must_rotate {
            let key_id = record.current().map_or(1, |s| s.key_id().wrapping_add(1));
            record.add(SenderKeyState::generate(rng, key_id, now));
        }
        tx.sender_keys.insert((*g, me));
        // Distributions for devices that do not have the current key yet.
        let mut dists = Vec::new();
        {
            let record = self.sender_key_record(*g, me)?;
            let state = record
                .current_mut()
                .ok_or(ProtocolError::Misuse("no sender key"))?;
            for (d, identity) in &identities {
                if state.entitlement(d, identity).is_none() {
                    dists.push((*d, state.distribution_to(*g, *d, Some(*identity), None)?));
                }
            }
        }
        let result = (|| {
            let mut distributions = Vec::with_capacity(dists.len());
            for (d, dist) in dists {
                let content = wire::Content {
                    body: Some(wire::content::Body::SenderKey(dist)),
                };
                distributions.push(Outgoing {
                    to: d,
                    bytes: self.seal(&d, &content, rng, now, &mut tx)?,
                });
            }
            let record = self.sender_key_record(*g, me)?;
            let state = record
                .current_mut()
                .ok_or(ProtocolError::Misuse("no sender key"))?;
            let msg = state.encrypt(*g, me, plaintext)?;
            Ok::<_, Error>((distributions, msg.to_wire().encode_to_vec()))
        })();
        let (distributions, message) = match result {
            Ok(x) => x,
            Err(e) => {
                self.sender_keys.remove(&(*g, me));
                for a in &tx.sessions {
                    self.sessions.remove(a);
                }
                return Err(e);
            }
        };
        if must_rotate {
            if let Some(e) = self.groups.get_mut(g) {
                e.needs_rotation = false;
            }
            tx.groups.insert(*g);
        }
        self.finish(tx)?;
        Ok(GroupSend {
            message,
            recipients,
            distributions,
        })
    }

    /// Receives a group message fanned out by the relay. Verifies that the group is known, the
    /// sender's account is a member and the sending device is on its list; then verifies the
    /// signature and decrypts. Without the sender key the message is kept and a retry request is
    /// prepared.
    ///
    /// Prefer [`Self::decrypt_group_from`] when the relay's sender label is known.
    pub fn decrypt_group(
        &mut self,
        bytes: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<GroupIncoming> {
        self.decrypt_group_inner(None, bytes, rng, now)
    }

    /// As [`Self::decrypt_group`], for a message the relay delivered from device `from`: a
    /// group message travels from its sender device straight to the members, so one that names
    /// another sender is refused; buffered messages count against `from`'s account.
    pub fn decrypt_group_from(
        &mut self,
        from: &DeviceAddress,
        bytes: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<GroupIncoming> {
        self.decrypt_group_inner(Some(from), bytes, rng, now)
    }

    fn decrypt_group_inner(
        &mut self,
        from: Option<&DeviceAddress>,
        bytes: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<GroupIncoming> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(Error::malformed("group message", "too large"));
        }
        let raw: wire::GroupMessage = decode(bytes, "group message")?;
        let msg = GroupMessage::try_from(&raw)?;
        let g = msg.header.group;
        let sender = msg.header.sender;
        if from.is_some_and(|f| *f != sender) {
            return Err(Error::malformed(
                "group message",
                "its sender is not the device that sent it",
            ));
        }
        if sender == self.address {
            return Err(ProtocolError::Misuse("own group message").into());
        }
        let member = self
            .groups
            .get(&g)
            .map(|e| e.log.state().is_member(&sender.account));
        let removed = self
            .groups
            .get(&g)
            .is_some_and(|e| e.log.was_member(&sender.account));
        if member == Some(false) && removed {
            // Removed from the group: nothing it sends is accepted any more.
            return Err(ProtocolError::NotAMember.into());
        }
        if member != Some(true) {
            // The group or the sender's membership may not have reached this device yet: keep the
            // message until the membership change arrives (or it ages out).
            let mut tx = Tx::default();
            self.buffer_group_message(&g, &sender.account, bytes, now, &mut tx)?;
            self.finish(tx)?;
            return Ok(GroupIncoming::Buffered { request: None });
        }
        let identity = self.known_identity(&sender)?;
        let mut tx = Tx::default();
        let record = self.received_record(g, sender, identity, &mut tx)?;
        if let Some(state) = record.get_mut(msg.header.key_id) {
            let plaintext = state.decrypt(&msg, now)?;
            tx.sender_keys.insert((g, sender));
            let received = self.add_to_inbox(&mut tx, sender, Some(g), plaintext, now);
            self.finish_group(tx)?;
            return Ok(GroupIncoming::Decrypted(received));
        }
        // Missing key: keep the message durably and ask the sender for its key.
        self.buffer_group_message(&g, &sender.account, bytes, now, &mut tx)?;
        let req_key = (g, sender, msg.header.key_id);
        let due = self
            .last_key_requests
            .get(&req_key)
            .is_none_or(|t| t.saturating_add(SENDER_KEY_REQUEST_INTERVAL_MS) <= now);
        let request = if due && self.has_session(&sender, now)? {
            let content = wire::Content {
                body: Some(wire::content::Body::SenderKeyRequest(
                    wire::SenderKeyRequest {
                        group_id: g.0.to_vec(),
                        key_id: msg.header.key_id,
                        from_iteration: 0,
                    },
                )),
            };
            match self.seal(&sender, &content, rng, now, &mut tx) {
                Ok(bytes) => Some(Outgoing { to: sender, bytes }),
                Err(e) => {
                    self.sessions.remove(&sender);
                    return Err(e);
                }
            }
        } else {
            None
        };
        self.finish_group(tx)?;
        if request.is_some() {
            self.last_key_requests.insert(req_key, now);
        }
        Ok(GroupIncoming::Buffered { request })
    }

    /// Buffers a group message from `sender` (the account that sent it) until it can be read.
    ///
    /// Bounded per sending account (count and bytes), so that no account can fill the buffer
    /// for others, and in total: when the total is reached, the oldest message of the account
    /// holding the most is dropped to make room, unless that is `sender` itself, whose message
    /// is then refused (`BufferFull`). Expired messages are dropped first.
    fn buffer_group_message(
        &mut self,
        g: &GroupId,
        sender: &AccountId,
        bytes: &[u8],
        now: u64,
        tx: &mut Tx,
    ) -> Result<()> {
        // Per sending account: its buffered (seq, key, length), and the totals.
        let mut held: HashMap<[u8; 32], Vec<Held>> = HashMap::new();
        let (mut total, mut total_bytes) = (0usize, 0usize);
        for (k, v) in self.store.scan(Namespace::Groups)? {
            if k.len() == 32 {
                continue;
            }
            let Ok(b) = pstore::BufferedGroupMessage::decode(v.as_slice()) else {
                tx.batch.delete(Namespace::Groups, k);
                continue;
            };
            if b.received_at
                .saturating_add(BUFFERED_GROUP_MESSAGE_MAX_AGE_MS)
                < now
            {
                tx.batch.delete(Namespace::Groups, k);
                continue;
            }
            let len = b.message.len();
            let from = buffered_sender(&b);
            let seq = k
                .get(k.len().saturating_sub(8)..)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .map_or(0, u64::from_be_bytes);
            total += 1;
            total_bytes = total_bytes.saturating_add(len);
            held.entry(from).or_default().push((seq, k, len));
        }
        let me = *sender.as_bytes();
        let (mine, mine_bytes) = held.get(&me).map_or((0, 0), |v| {
            (v.len(), v.iter().map(|(_, _, l)| *l).sum::<usize>())
        });
        if mine >= MAX_BUFFERED_GROUP_MESSAGES_PER_SENDER
            || mine_bytes.saturating_add(bytes.len()) > MAX_BUFFERED_GROUP_BYTES_PER_SENDER
        {
            return Err(ProtocolError::BufferFull.into());
        }
        // Full in total: make room at the expense of the largest holder, never of a smaller one.
        while total >= MAX_BUFFERED_GROUP_MESSAGES_TOTAL
            || total_bytes.saturating_add(bytes.len()) > MAX_BUFFERED_GROUP_BYTES_TOTAL
        {
            let largest = held
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .max_by_key(|(a, v)| (v.len(), v.iter().map(|(_, _, l)| *l).sum::<usize>(), **a))
                .map(|(a, v)| (*a, v.len()));
            let Some((victim, count)) = largest else {
                return Err(ProtocolError::BufferFull.into());
            };
            let mine = held.get(&me).map_or(0, Vec::len);
            if victim == me || count <= mine {
                return Err(ProtocolError::BufferFull.into());
            }
            let Some(list) = held.get_mut(&victim) else {
                return Err(ProtocolError::BufferFull.into());
            };
            list.sort_unstable_by_key(|(seq, _, _)| *seq);
            let (_, key, len) = list.remove(0);
            tx.batch.delete(Namespace::Groups, key);
            total -= 1;
            total_bytes = total_bytes.saturating_sub(len);
        }
        let seq = tx.next_message_id.unwrap_or(self.next_message_id);
        tx.next_message_id = Some(seq + 1);
        tx.batch.put(
            Namespace::Meta,
            super::NEXT_MESSAGE_ID,
            Zeroizing::new((seq + 1).to_be_bytes().to_vec()),
        );
        let mut key = buffer_prefix(g);
        key.extend_from_slice(&seq.to_be_bytes());
        let b = pstore::BufferedGroupMessage {
            message: bytes.to_vec(),
            received_at: now,
            sender_account: me.to_vec(),
        };
        tx.batch.put(Namespace::Groups, key, encode(&b));
        Ok(())
    }

    /// Decrypts every buffered message of group `g` that can now be read (its sender is a member
    /// and its sender key is here); drops those that fail. Others stay buffered.
    fn drain_buffer(&mut self, g: &GroupId, now: u64, tx: &mut Tx) -> Result<Vec<Received>> {
        let prefix = buffer_prefix(g);
        let mut out = Vec::new();
        for (k, v) in self.store.scan(Namespace::Groups)? {
            if !k.starts_with(&prefix) {
                continue;
            }
            let b: pstore::BufferedGroupMessage = decode(&v, "buffered group message")?;
            let parsed = wire::GroupMessage::decode(b.message.as_slice())
                .ok()
                .and_then(|raw| GroupMessage::try_from(&raw).ok());
            let Some(msg) = parsed else {
                tx.batch.delete(Namespace::Groups, k);
                continue;
            };
            let sender = msg.header.sender;
            let member = self
                .groups
                .get(g)
                .is_some_and(|e| e.log.state().is_member(&sender.account));
            let Ok(identity) = self.known_identity(&sender) else {
                continue;
            };
            if !member {
                continue;
            }
            let record = self.received_record(*g, sender, identity, tx)?;
            let Some(state) = record.get_mut(msg.header.key_id) else {
                continue;
            };
            let result = state.decrypt(&msg, now);
            tx.sender_keys.insert((*g, sender));
            tx.batch.delete(Namespace::Groups, k);
            if let Ok(plaintext) = result {
                out.push(self.add_to_inbox(tx, sender, Some(*g), plaintext, now));
            }
        }
        Ok(out)
    }

    fn finish_group(&mut self, tx: Tx) -> Result<()> {
        let keys: Vec<_> = tx.sender_keys.iter().copied().collect();
        let r = self.finish(tx);
        if r.is_err() {
            for k in keys {
                self.sender_keys.remove(&k);
            }
        }
        r
    }

    /// Requests a missing sender key again (for example after starting a session with the sender).
    pub fn request_sender_key(
        &mut self,
        g: &GroupId,
        sender: &DeviceAddress,
        key_id: u32,
        from_iteration: u32,
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<Outgoing> {
        let content = wire::Content {
            body: Some(wire::content::Body::SenderKeyRequest(
                wire::SenderKeyRequest {
                    group_id: g.0.to_vec(),
                    key_id,
                    from_iteration,
                },
            )),
        };
        let mut tx = Tx::default();
        let bytes = self.seal(sender, &content, rng, now, &mut tx)?;
        self.finish(tx)?;
        self.last_key_requests.insert((*g, *sender, key_id), now);
        Ok(Outgoing { to: *sender, bytes })
    }

    /// Sends retry requests for every sender key that buffered group messages still wait for (and
    /// that was not requested within [`SENDER_KEY_REQUEST_INTERVAL_MS`]). Call it periodically.
    pub fn retry_missing_sender_keys(
        &mut self,
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<Vec<Outgoing>> {
        let mut wanted: std::collections::BTreeMap<(GroupId, DeviceAddress, u32), u32> =
            std::collections::BTreeMap::new();
        let mut expired = crate::store::kv::Batch::new();
        for (k, v) in self.store.scan(Namespace::Groups)? {
            if k.len() == 32 {
                continue;
            }
            let b: pstore::BufferedGroupMessage = decode(&v, "buffered group message")?;
            if b.received_at
                .saturating_add(BUFFERED_GROUP_MESSAGE_MAX_AGE_MS)
                < now
            {
                expired.delete(Namespace::Groups, k);
                continue;
            }
            let Ok(raw) = wire::GroupMessage::decode(b.message.as_slice()) else {
                continue;
            };
            let Ok(msg) = GroupMessage::try_from(&raw) else {
                continue;
            };
            let h = msg.header;
            wanted.insert((h.group, h.sender, h.key_id), 0);
        }
        if !expired.is_empty() {
            self.store.commit(expired)?;
        }
        let mut out = Vec::new();
        for ((g, sender, key_id), from_iteration) in wanted {
            let due = self
                .last_key_requests
                .get(&(g, sender, key_id))
                .is_none_or(|t| t.saturating_add(SENDER_KEY_REQUEST_INTERVAL_MS) <= now);
            if due && self.has_session(&sender, now).unwrap_or(false) {
                out.push(self.request_sender_key(&g, &sender, key_id, from_iteration, rng, now)?);
            }
        }
        Ok(out)
    }

    fn check_member_device(&self, g: &GroupId, d: &DeviceAddress) -> Result<DeviceIdentity> {
        let entry = self.groups.get(g).ok_or(ProtocolError::UnknownGroup)?;
        if !entry.log.state().is_member(&d.account) {
            return Err(ProtocolError::NotAMember.into());
        }
        self.known_identity(d)
    }

    pub(super) fn accept_sender_key(
        &mut self,
        from: &DeviceAddress,
        d: &wire::SenderKeyDistribution,
        now: u64,
        tx: &mut Tx,
    ) -> Result<Vec<Received>> {
        let g = GroupId::from_bytes(&d.group_id)?;
        let Ok(identity) = self.check_member_device(&g, from) else {
            // A key from a device that is not (or no longer) a member is never used.
            tracing::debug!("sender key from a non-member ignored");
            return Ok(Vec::new());
        };
        let state = SenderKeyState::from_distribution(d, now)?;
        if !self.received_record(g, *from, identity, tx)?.add(state) {
            return Ok(Vec::new());
        }
        tx.sender_keys.insert((g, *from));
        // Messages that waited for this key.
        self.drain_buffer(&g, now, tx)
    }

    pub(super) fn answer_sender_key_request(
        &mut self,
        from: &DeviceAddress,
        r: &wire::SenderKeyRequest,
        rng: &mut impl CryptoRng,
        now: u64,
        tx: &mut Tx,
    ) -> Result<Vec<Outgoing>> {
        let g = GroupId::from_bytes(&r.group_id)?;
        let Ok(identity) = self.check_member_device(&g, from) else {
            // Removed members, and devices that left their account, get nothing.
            tracing::debug!("sender key request from a non-member refused");
            return Ok(Vec::new());
        };
        let me = self.address;
        let record = self.sender_key_record(g, me)?;
        let is_current = record.current().is_some_and(|s| s.key_id() == r.key_id);
        let Some(state) = record.get_mut(r.key_id) else {
            return Ok(Vec::new());
        };
        // An older key goes only to devices that had it; the current one to any member device
        // (from the current iteration for a device that never had it).
        if !is_current && state.entitlement(from, &identity).is_none() {
            return Ok(Vec::new());
        }
        // Always from the requester's entitlement (for its current identity): a device that missed
        // the first distribution must also read the messages still on their way from before its
        // request, and a device re-registered at the address starts at the current iteration.
        let dist = state.distribution_to(g, *from, Some(identity), None)?;
        tx.sender_keys.insert((g, me));
        let content = wire::Content {
            body: Some(wire::content::Body::SenderKey(dist)),
        };
        let bytes = self.seal(from, &content, rng, now, tx)?;
        Ok(vec![Outgoing { to: *from, bytes }])
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
            .collect::<Result<Vec<_>>>()?;
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
                Err(e) => return Err(e),
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
