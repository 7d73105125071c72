//! The group log on a device: writing changes (to be appended by the relay at the next
//! position), reading the entries the relay serves, invitations and notices between member
//! devices, and detecting a relay that withholds entries (PROTOCOL.md §17).

use std::collections::BTreeSet;

use hush_proto::wire;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::notices::NoticeKey;
use super::{GroupEntry, GroupInvite};
use crate::consts::{MAX_PENDING_GROUP_INVITES, MAX_PENDING_GROUP_INVITES_PER_INVITER};
use crate::device::error::{DeviceError, Result};
use crate::device::{Device, Outgoing, Received, Tx};
use crate::error::{Error, ProtocolError};
use crate::group::{ChangeBody, GroupLog, GroupSecret, Processed, SignedChange};
use crate::keys::{AccountId, DeviceAddress, array};
use crate::sender_key::GroupId;
use crate::store::kv::{KvStore, Namespace};

/// A change to append to a group's log on the relay, at position `seq`. Hand it to the relay
/// (`slot`, `write_token`, `seq`, `entry`); once the relay has appended it, give it back with
/// [`Device::group_write_landed`]. If the relay answers that the position is taken, read the
/// log ([`Device::accept_group_log`]) and build the change again on the new head (or drop it).
pub struct GroupLogWrite {
    /// The group.
    pub group: GroupId,
    /// The position to write.
    pub seq: u64,
    /// The sealed entry.
    pub entry: Vec<u8>,
    pub(super) secret: GroupSecret,
    pub(super) creation: Option<SignedChange>,
}

impl GroupLogWrite {
    /// The relay slot of the group's log.
    pub fn slot(&self) -> [u8; 32] {
        self.secret.slot()
    }

    /// The token authorizing the append.
    pub fn write_token(&self) -> Zeroizing<[u8; 32]> {
        self.secret.write_token()
    }
}

/// Where to read a group's log on the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupLogCursor {
    /// The relay slot.
    pub slot: [u8; 32],
    /// The first position not read yet.
    pub next: u64,
}

/// Whether the log the relay serves agrees with what member devices said they had reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogCheck {
    /// Nothing is missing.
    Consistent,
    /// A member device said it had reached position `claimed`, but the relay serves the log only
    /// up to `served`: the relay is withholding entries from this device (or that member lied).
    Withheld {
        /// The position claimed.
        claimed: u64,
        /// The relay's head.
        served: u64,
    },
    /// A member device reached position `seq` with another head hash than the log served here:
    /// the relay served different logs to different members.
    Forked {
        /// The position.
        seq: u64,
    },
}

/// What reading a group's log did.
pub struct GroupLogUpdate {
    /// Group messages buffered until now and decrypted with this update (durable in the inbox).
    pub received: Vec<Received>,
    /// Notices of this device's own changes to send to the member devices. They are also kept
    /// as pending notices ([`Device::pending_notices`]) until confirmed with
    /// [`Device::notices_sent`]: an app may send these now, or send the pending notices.
    pub outgoing: Vec<Outgoing>,
    /// Member devices a notice could not be sealed for (no session; device id 0: the account's
    /// list is not held). Their notices are pending: fetch the lists and start the sessions
    /// ([`Device::pending_notice_targets`]), then [`Device::pending_notices`] seals them.
    pub unreached: Vec<DeviceAddress>,
    /// Whether the group was joined or its state changed.
    pub changed: bool,
    /// The result of checking the log against what members claimed.
    pub check: LogCheck,
}

impl GroupLogUpdate {
    /// An update that did nothing: no messages, no notices, no change, nothing missing.
    fn nothing() -> Self {
        GroupLogUpdate {
            received: Vec::new(),
            outgoing: Vec::new(),
            unreached: Vec::new(),
            changed: false,
            check: LogCheck::Consistent,
        }
    }
}

impl<S: KvStore> Device<S> {
    fn own_list_bytes(&self) -> Result<Vec<u8>> {
        Ok(self
            .device_lists
            .get(&self.address.account)
            .ok_or(ProtocolError::UnknownAccount)?
            .signed_bytes()
            .to_vec())
    }

    /// Prepares the creation of a group with this device's account as admin and `members` as
    /// members: a new group secret, and the creation as the log's first entry. The creation is
    /// committed as a pending creation (its secret, the signed creation and the sealed entry)
    /// before it is returned, so that a lost answer or a crash cannot lose the secret of a log
    /// the relay may hold; the group itself is stored once the relay has appended it
    /// ([`Self::group_write_landed`]), and until then [`Self::pending_creations`] returns it.
    ///
    /// # Errors
    /// As the rules of the creation (§17.4); `Misuse` past
    /// [`MAX_PENDING_CREATIONS`](crate::consts::MAX_PENDING_CREATIONS) pending creations;
    /// [`DeviceError::Store`] if the commit fails (nothing is to be handed to the relay then).
    pub fn create_group(
        &mut self,
        name: &str,
        members: &[AccountId],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<GroupLogWrite> {
        let secret = GroupSecret::random(rng);
        let mut add = vec![(self.address.account, true)];
        add.extend(
            members
                .iter()
                .filter(|a| **a != self.address.account)
                .map(|a| (*a, false)),
        );
        let body = ChangeBody {
            group: GroupId([0; 32]),
            epoch: 1,
            previous_hash: [0; 32],
            author: self.address,
            name: Some(name.to_owned()),
            add,
            remove: Vec::new(),
            issued_at: now,
            author_list: self.own_list_bytes()?,
            slot: Some(secret.slot()),
        };
        let change = SignedChange::sign(body, &self.identity);
        let id = change.body.group;
        // Checks the rules (size, admin) before anything leaves the device.
        let log = GroupLog::from_creation(id, secret.clone(), change.clone())?;
        let entry = log.seal(&change, rng)?;
        let w = GroupLogWrite {
            group: id,
            seq: 1,
            entry,
            secret,
            creation: Some(change),
        };
        self.keep_creation(&w, now)?;
        Ok(w)
    }

    /// Prepares a change of group `g` at the next log position: adds members or changes their
    /// admin flag, removes members, renames (this device's account must be an admin, or be
    /// removing only itself). With nothing to add, remove or rename, it records this account's
    /// current device list in the log (any member may). Checked against the current state;
    /// nothing changes here until the relay has appended it.
    pub fn update_group(
        &mut self,
        g: &GroupId,
        add: &[(AccountId, bool)],
        remove: &[AccountId],
        name: Option<&str>,
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<GroupLogWrite> {
        let author_list = self.own_list_bytes()?;
        let entry = self.groups.get(g).ok_or(ProtocolError::UnknownGroup)?;
        let log = &entry.log;
        let seq = log.seq().saturating_add(1);
        let body = ChangeBody {
            group: *g,
            epoch: seq,
            previous_hash: log.state().head,
            author: self.address,
            name: name.map(str::to_owned),
            add: add.to_vec(),
            remove: remove.to_vec(),
            issued_at: now,
            author_list,
            slot: None,
        };
        let change = SignedChange::sign(body, &self.identity);
        let version = change.verify()?;
        log.state().apply(seq, &change, version)?;
        Ok(GroupLogWrite {
            group: *g,
            seq,
            entry: log.seal(&change, rng)?,
            secret: log.secret().clone(),
            creation: None,
        })
    }

    /// The relay appended `w`: applies it, stores the group, and returns the notices to send to
    /// the member devices (added accounts' devices get the group secret). When other entries
    /// were appended before it that this device has not read, this fails with `Misuse`: read
    /// the log instead ([`Self::accept_group_log`]), which applies `w` too.
    ///
    /// For a creation, its pending creation leaves the store in the transaction that stores the
    /// group and its pending notices. A creation of a group already stored (landed before)
    /// changes nothing but dropping a pending creation still held.
    pub fn group_write_landed(
        &mut self,
        w: GroupLogWrite,
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<GroupLogUpdate> {
        if let Some(creation) = w.creation {
            if self.groups.contains_key(&w.group) {
                let mut tx = Tx::default();
                tx.batch
                    .delete(Namespace::PendingCreations, w.group.0.to_vec());
                self.finish(tx)?;
                return Ok(GroupLogUpdate::nothing());
            }
            let log = GroupLog::from_creation(w.group, w.secret, creation.clone())?;
            self.groups.insert(
                w.group,
                GroupEntry {
                    log,
                    needs_rotation: false,
                    claim: None,
                },
            );
            let mut tx = Tx::default();
            tx.groups.insert(w.group);
            // Landed: the group record replaces the pending creation, in one commit.
            tx.batch
                .delete(Namespace::PendingCreations, w.group.0.to_vec());
            let mut update = GroupLogUpdate {
                changed: true,
                ..GroupLogUpdate::nothing()
            };
            let diff = crate::group::Diff {
                added: creation.body.add.iter().map(|(a, _)| *a).collect(),
                removed: Vec::new(),
            };
            let result = self.notify_change(&w.group, 1, &diff, rng, now, &mut tx, &mut update);
            return self.close_log_tx(tx, result.map(|()| update));
        }
        let seq = self
            .groups
            .get(&w.group)
            .ok_or(ProtocolError::UnknownGroup)?
            .log
            .seq();
        if seq >= w.seq {
            // Already read from the relay (and applied there).
            return Ok(GroupLogUpdate::nothing());
        }
        if seq.saturating_add(1) != w.seq {
            return Err(ProtocolError::Misuse("read the group log first").into());
        }
        self.accept_group_log(&w.group, w.seq, &[(w.seq, w.entry)], rng, now)
    }

    /// Where to read group `g`'s log (a known group, or one this device was invited to).
    pub fn group_log_cursor(&self, g: &GroupId) -> Option<GroupLogCursor> {
        if let Some(e) = self.groups.get(g) {
            return Some(GroupLogCursor {
                slot: e.log.secret().slot(),
                next: e.log.seq().saturating_add(1),
            });
        }
        self.group_invites.get(g).map(|i| GroupLogCursor {
            slot: i.secret.slot(),
            next: 1,
        })
    }

    /// Groups whose logs should be read from the relay now: invitations, groups a member said
    /// were further along, and groups a message from a not-yet-known member arrived for.
    pub fn groups_to_fetch(&self) -> Vec<GroupId> {
        let mut out: BTreeSet<GroupId> = self
            .group_invites
            .iter()
            .filter(|(_, i)| !i.unread_log)
            .map(|(g, _)| *g)
            .collect();
        out.extend(
            self.groups
                .iter()
                .filter(|(_, e)| e.claim.is_some())
                .map(|(g, _)| *g),
        );
        out.extend(self.group_hints.iter().copied());
        out.into_iter().collect()
    }

    /// Every group and invitation (to read all their logs, for example after reconnecting).
    pub fn group_logs(&self) -> Vec<GroupId> {
        let mut out: BTreeSet<GroupId> = self.groups.keys().copied().collect();
        out.extend(self.group_invites.keys().copied());
        out.into_iter().collect()
    }

    /// Processes entries of group `g`'s log as the relay served them: `head` is the relay's last
    /// position, `entries` (position, entry) from the cursor on, in order (entries already read
    /// are ignored; a gap stops processing). Invalid entries are skipped, as by every member.
    /// For an invitation, the first entry must be a valid creation of this group id and slot
    /// (else `InvalidGroupLog`, and the invitation is dropped); a joined group is kept only if
    /// this account is a member at the end.
    pub fn accept_group_log(
        &mut self,
        g: &GroupId,
        head: u64,
        entries: &[(u64, Vec<u8>)],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<GroupLogUpdate> {
        let mut tx = Tx::default();
        let mut update = GroupLogUpdate::nothing();
        self.group_hints.remove(g);
        let mut joined = false;
        let mut kept_invite = None;
        if !self.groups.contains_key(g) {
            let invite = self
                .group_invites
                .remove(g)
                .ok_or(ProtocolError::UnknownGroup)?;
            tx.groups.insert(*g);
            let first = entries.iter().find(|(s, _)| *s == 1);
            let Some((_, first)) = first else {
                if head == 0 {
                    // The relay has no log under the slot the invitation names: withheld (or an
                    // invitation to nothing). It is kept, to be read again later, within the cap
                    // on pending invitations.
                    update.check = LogCheck::Withheld {
                        claimed: invite.claim.0.max(1),
                        served: 0,
                    };
                    self.group_invites.insert(
                        *g,
                        GroupInvite {
                            unread_log: true,
                            ..invite
                        },
                    );
                    return self.close_log_tx(tx, Ok(update));
                }
                self.group_invites.insert(*g, invite);
                tx.groups.remove(g);
                return Err(ProtocolError::Misuse("read the log from its first entry").into());
            };
            if invite.secret.open_entry(1, first).is_err() {
                // Not sealed under the secret at all: only the relay (or someone holding the
                // write token but not the entry key) could have put it there. The invitation is
                // kept, to be read again; the check reports another history.
                update.check = LogCheck::Forked { seq: 1 };
                self.group_invites.insert(
                    *g,
                    GroupInvite {
                        unread_log: true,
                        ..invite
                    },
                );
                return self.close_log_tx(tx, Ok(update));
            }
            kept_invite = Some(invite.clone());
            let log = match GroupLog::create(*g, invite.secret.clone(), first) {
                Ok(l) => l,
                Err(e) => {
                    // Sealed under the secret, but not a creation of this group id and slot:
                    // the secret does not belong to that group, and the invitation is dropped.
                    self.close_log_tx(tx, Ok(()))?;
                    return Err(e.into());
                }
            };
            self.groups.insert(
                *g,
                GroupEntry {
                    log,
                    needs_rotation: false,
                    claim: (invite.claim.0 > 1).then_some(invite.claim),
                },
            );
            joined = true;
            update.changed = true;
        }
        let result = self.process_entries(g, entries, rng, now, &mut tx, &mut update);
        if let Err(e) = result {
            return self.close_log_tx(tx, Err(e));
        }
        if joined
            && let Some(e) = self.groups.get(g)
            && !e.log.state().is_member(&self.address.account)
        {
            // A log that does not include this account is not kept: nobody can make a device
            // store groups it is not in. If the relay served less than the inviter said the log
            // had reached, the invitation is kept to be read again, and the withholding reported.
            let read = e.log.seq();
            self.groups.remove(g);
            update.changed = false;
            if let Some(invite) = kept_invite
                && read < invite.claim.0
            {
                update.check = LogCheck::Withheld {
                    claimed: invite.claim.0,
                    served: head,
                };
                self.group_invites.insert(
                    *g,
                    GroupInvite {
                        unread_log: true,
                        ..invite
                    },
                );
            }
            return self.close_log_tx(tx, Ok(update));
        }
        if let Some(e) = self.groups.get_mut(g)
            && let Some((claimed, claimed_head)) = e.claim
        {
            if e.log.seq() >= claimed {
                if e.log.head_at(claimed) != claimed_head {
                    update.check = LogCheck::Forked { seq: claimed };
                }
                e.claim = None;
                tx.groups.insert(*g);
            } else if head <= e.log.seq() {
                update.check = LogCheck::Withheld {
                    claimed,
                    served: head,
                };
                // Reported once per claim: a member that claims a position nobody reaches does
                // not keep the group in `groups_to_fetch` (the next claim is checked again).
                e.claim = None;
                tx.groups.insert(*g);
            }
        }
        if update.changed {
            match self.drain_buffer(g, now, &mut tx) {
                Ok(r) => update.received = r,
                Err(e) => return self.close_log_tx(tx, Err(e)),
            }
        }
        self.close_log_tx(tx, Ok(update))
    }

    fn process_entries(
        &mut self,
        g: &GroupId,
        entries: &[(u64, Vec<u8>)],
        rng: &mut impl CryptoRng,
        now: u64,
        tx: &mut Tx,
        update: &mut GroupLogUpdate,
    ) -> Result<()> {
        for (seq, entry) in entries {
            let Some(e) = self.groups.get_mut(g) else {
                return Ok(());
            };
            if *seq <= e.log.seq() {
                continue;
            }
            if *seq != e.log.seq().saturating_add(1) {
                break;
            }
            tx.groups.insert(*g);
            match e.log.process(*seq, entry)? {
                Processed::Applied { change, diff } => {
                    update.changed = true;
                    if !diff.removed.is_empty() {
                        e.needs_rotation = true;
                    }
                    if change.body.author == self.address {
                        self.notify_change(g, *seq, &diff, rng, now, tx, update)?;
                    }
                }
                Processed::Skipped(_) => {}
            }
        }
        Ok(())
    }

    /// Seals the notices of this device's change at position `seq` to every device of the
    /// members after it and of the accounts it removed; the devices of added accounts get the
    /// group secret. Every notice is also kept in `tx` as a pending notice (sealed, or waiting
    /// for a session or a list), until the relay has taken it.
    #[allow(clippy::too_many_arguments)]
    fn notify_change(
        &mut self,
        g: &GroupId,
        seq: u64,
        diff: &crate::group::Diff,
        rng: &mut impl CryptoRng,
        now: u64,
        tx: &mut Tx,
        update: &mut GroupLogUpdate,
    ) -> Result<()> {
        let entry = self.groups.get(g).ok_or(ProtocolError::UnknownGroup)?;
        let head = entry.log.head_at(seq);
        let secret = Zeroizing::new(entry.log.secret().to_bytes());
        let mut accounts: Vec<AccountId> = entry.log.state().members.keys().copied().collect();
        accounts.extend(diff.removed.iter().copied());
        for account in accounts {
            let with_secret = diff.added.contains(&account);
            // One client id per account: each of its devices gets one envelope under it.
            let client_id = self.change_client_id(g, seq, &account);
            let Some(list) = self.device_lists.get(&account) else {
                let whole = DeviceAddress {
                    account,
                    device_id: 0,
                };
                update.unreached.push(whole);
                let key = NoticeKey {
                    group: *g,
                    seq,
                    to: whole,
                };
                self.keep_notice(key, with_secret, client_id, now, None, tx);
                continue;
            };
            let devices: Vec<DeviceAddress> =
                list.addresses().filter(|d| *d != self.address).collect();
            let mut content = wire::Content {
                body: Some(wire::content::Body::GroupLog(wire::GroupLogNotice {
                    group_id: g.0.to_vec(),
                    secret: if with_secret {
                        secret.to_vec()
                    } else {
                        Vec::new()
                    },
                    seq,
                    head: head.to_vec(),
                })),
            };
            // Every notice is kept until the relay has taken it (§17.5, pending notices): the
            // sealed ones with their bytes, the others to be sealed once a session exists.
            let sealed: Result<()> = devices.into_iter().try_for_each(|d| {
                let key = NoticeKey {
                    group: *g,
                    seq,
                    to: d,
                };
                match self.seal(&d, &content, rng, now, tx) {
                    Ok(bytes) => {
                        let identity = self.known_identity(&d)?;
                        self.keep_notice(
                            key,
                            with_secret,
                            client_id,
                            now,
                            Some((identity, &bytes)),
                            tx,
                        );
                        update.outgoing.push(Outgoing { to: d, bytes });
                    }
                    Err(DeviceError::Protocol(Error::Protocol(
                        ProtocolError::NoSession | ProtocolError::UnknownAccount,
                    ))) => {
                        self.keep_notice(key, with_secret, client_id, now, None, tx);
                        update.unreached.push(d);
                    }
                    Err(e) => return Err(e),
                }
                Ok(())
            });
            wipe_notice(&mut content);
            sealed?;
        }
        Ok(())
    }

    /// Commits `tx` when `result` is a success; otherwise discards what it changed in memory
    /// (groups, invitations, sessions advanced while sealing) and returns the error.
    pub(super) fn close_log_tx<T>(&mut self, tx: Tx, result: Result<T>) -> Result<T> {
        match result {
            Ok(v) => {
                let sessions: Vec<_> = tx.sessions.iter().copied().collect();
                let groups: Vec<_> = tx.groups.iter().copied().collect();
                match self.finish(tx) {
                    Ok(()) => Ok(v),
                    Err(e) => {
                        for a in sessions {
                            self.sessions.remove(&a);
                        }
                        let undo = Tx {
                            groups: groups.into_iter().collect(),
                            ..Tx::default()
                        };
                        self.discard_group_changes(&undo);
                        Err(e)
                    }
                }
            }
            Err(e) => {
                for a in &tx.sessions {
                    self.sessions.remove(a);
                }
                self.discard_group_changes(&tx);
                Err(e)
            }
        }
    }

    /// A `GroupLogNotice` from `from` (in the transaction of its pairwise message): for a known
    /// group, a member device's position is recorded as a claim to check the relay against;
    /// for an unknown group, a notice carrying the secret is kept as an invitation. Returns the
    /// group if its log should be read now.
    pub(in crate::device) fn accept_group_notice(
        &mut self,
        from: &DeviceAddress,
        n: &wire::GroupLogNotice,
        tx: &mut Tx,
    ) -> Result<Option<GroupId>> {
        let g = GroupId::from_bytes(&n.group_id)?;
        let head: [u8; 32] = array(&n.head, "group log notice", "head must be 32 bytes")?;
        if let Some(e) = self.groups.get(&g) {
            // Only a member (as far as this device has read) is believed about the log: a former
            // member still holds the secret, but its word no longer counts.
            let member = e.log.state().is_member(&from.account)
                && self
                    .device_lists
                    .get(&from.account)
                    .is_some_and(|l| l.addresses().any(|d| d == *from));
            let behind = n.seq > e.log.seq();
            if !member {
                if behind {
                    self.group_hints.insert(g);
                    return Ok(Some(g));
                }
                return Ok(None);
            }
            // A position this device has read, with another head: checked at the next read.
            let disagrees = !behind && e.log.head_at(n.seq) != head;
            if !behind && !disagrees {
                return Ok(None);
            }
            self.record_claim(&g, n.seq, head, tx);
            return Ok(Some(g));
        }
        if let Some(i) = self.group_invites.get_mut(&g) {
            if n.seq > i.claim.0 {
                i.claim = (n.seq, head);
                tx.groups.insert(g);
            }
            // An invitation whose log could not be found under its secret takes the secret of
            // a later notice instead (a first notice may have named a wrong one).
            if i.unread_log
                && !n.secret.is_empty()
                && let Ok(secret) = GroupSecret::from_bytes(&n.secret)
            {
                i.secret = secret;
                i.inviter = from.account;
                i.unread_log = false;
                tx.groups.insert(g);
            }
            return Ok(Some(g));
        }
        let from_inviter = self
            .group_invites
            .values()
            .filter(|i| i.inviter == from.account)
            .count();
        if n.secret.is_empty()
            || self.group_invites.len() >= MAX_PENDING_GROUP_INVITES
            || from_inviter >= MAX_PENDING_GROUP_INVITES_PER_INVITER
        {
            return Ok(None);
        }
        let secret = GroupSecret::from_bytes(&n.secret)?;
        self.group_invites.insert(
            g,
            GroupInvite {
                secret,
                inviter: from.account,
                claim: (n.seq, head),
                unread_log: false,
            },
        );
        tx.groups.insert(g);
        Ok(Some(g))
    }

    /// Records that group messages of `g` from a member say its log reached `seq` with head
    /// `head` (the header of an authenticated group message).
    pub(in crate::device) fn note_log_position(
        &mut self,
        g: &GroupId,
        seq: u64,
        head: [u8; 32],
        tx: &mut Tx,
    ) {
        let Some(e) = self.groups.get(g) else {
            return;
        };
        if seq > e.log.seq() || e.log.head_at(seq) != head {
            self.record_claim(g, seq, head, tx);
        }
    }

    /// Records `(seq, head)`, said by a member device, as group `g`'s claim: a position beyond
    /// this device's replaces a lower claim; a position it has read whose head differs from its
    /// own is kept when no claim is pending. Checked at the next read of the log (§17.8).
    fn record_claim(&mut self, g: &GroupId, seq: u64, head: [u8; 32], tx: &mut Tx) {
        if let Some(e) = self.groups.get_mut(g) {
            let ahead = seq > e.log.seq();
            let take = match e.claim {
                None => true,
                Some((s, _)) => ahead && s < seq,
            };
            if take {
                e.claim = Some((seq, head));
                tx.groups.insert(*g);
            }
        }
    }

    /// Marks group `g` as worth reading from the relay (a message arrived from a sender this
    /// device does not know as a member yet).
    pub(in crate::device) fn hint_group_log(&mut self, g: &GroupId) {
        self.group_hints.insert(*g);
    }

    /// Asks the other devices of this account for the groups the account is in: a newly linked
    /// device calls this once it has sessions with its siblings (see
    /// [`Device::missing_sessions`] over its own account's devices). Returns one message per
    /// other device; each answers with a notice carrying the secret of every group (§17.7).
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
        self.close_log_tx(tx, out)
    }

    /// Answers a `GroupSyncRequest` from `from`: only a listed device of this device's own
    /// account gets an answer — a notice with the secret of every group the account is a member
    /// of. Requests from other accounts are ignored.
    pub(in crate::device) fn answer_group_sync(
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
            let mut content = wire::Content {
                body: Some(wire::content::Body::GroupLog(wire::GroupLogNotice {
                    group_id: g.0.to_vec(),
                    secret: Zeroizing::new(entry.log.secret().to_bytes()).to_vec(),
                    seq: entry.log.seq(),
                    head: entry.log.state().head.to_vec(),
                })),
            };
            let sealed = self.seal(from, &content, rng, now, tx);
            wipe_notice(&mut content);
            out.push(Outgoing {
                to: *from,
                bytes: sealed?,
            });
        }
        Ok(out)
    }
}

/// Wipes the group secret a notice carried, once it is sealed or read.
pub(super) fn wipe_notice(content: &mut wire::Content) {
    if let Some(wire::content::Body::GroupLog(n)) = content.body.as_mut() {
        zeroize::Zeroize::zeroize(&mut n.secret);
    }
}
