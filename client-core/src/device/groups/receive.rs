//! Receiving group messages: verifying and decrypting them, buffering those whose sender key is
//! missing, asking for that key, and accepting or answering sender-key distributions.

use std::collections::HashMap;

use hush_proto::{Message, store as pstore, wire};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::{GroupIncoming, Held, buffer_prefix, buffered_sender};
use crate::consts::{
    BUFFERED_GROUP_MESSAGE_MAX_AGE_MS, MAX_BUFFERED_GROUP_BYTES_PER_SENDER,
    MAX_BUFFERED_GROUP_BYTES_TOTAL, MAX_BUFFERED_GROUP_MESSAGES_PER_SENDER,
    MAX_BUFFERED_GROUP_MESSAGES_TOTAL, MAX_MESSAGE_LEN, SENDER_KEY_REQUEST_INTERVAL_MS,
};
use crate::device::error::{DeviceError, Result};
use crate::device::{Device, Outgoing, Received, Tx, decode, encode};
use crate::error::ProtocolError;
use crate::keys::{AccountId, DeviceAddress, DeviceIdentity};
use crate::sender_key::{GroupId, GroupMessage, SenderKeyState};
use crate::store::kv::{KvStore, Namespace};

impl<S: KvStore> Device<S> {
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
            return Err(DeviceError::malformed("group message", "too large"));
        }
        let raw: wire::GroupMessage = decode(bytes, "group message")?;
        let msg = GroupMessage::try_from(&raw)?;
        let g = msg.header.group;
        let sender = msg.header.sender;
        if from.is_some_and(|f| *f != sender) {
            return Err(DeviceError::malformed(
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
        // A former member whose message names no log position beyond this device's: removed, as
        // far as the log says. (One naming a later position may have been added back: it is
        // kept until the log is read, within the buffer's quotas.)
        let removed = self.groups.get(&g).is_some_and(|e| {
            e.log.was_member(&sender.account) && msg.header.log_seq <= e.log.seq()
        });
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
            if member.is_some() {
                self.hint_group_log(&g);
            }
            return Ok(GroupIncoming::Buffered { request: None });
        }
        let identity = self.known_identity(&sender)?;
        let mut tx = Tx::default();
        let record = self.received_record(g, sender, identity, &mut tx)?;
        if let Some(state) = record.get_mut(msg.header.key_id) {
            let plaintext = state.decrypt(&msg, now)?;
            tx.sender_keys.insert((g, sender));
            self.note_log_position(&g, msg.header.log_seq, msg.header.log_head, &mut tx);
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
            crate::device::NEXT_MESSAGE_ID,
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
    pub(super) fn drain_buffer(
        &mut self,
        g: &GroupId,
        now: u64,
        tx: &mut Tx,
    ) -> Result<Vec<Received>> {
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
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<Outgoing> {
        let content = wire::Content {
            body: Some(wire::content::Body::SenderKeyRequest(
                wire::SenderKeyRequest {
                    group_id: g.0.to_vec(),
                    key_id,
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
        let mut wanted: std::collections::BTreeSet<(GroupId, DeviceAddress, u32)> =
            std::collections::BTreeSet::new();
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
            wanted.insert((h.group, h.sender, h.key_id));
        }
        if !expired.is_empty() {
            self.store.commit(expired)?;
        }
        let mut out = Vec::new();
        for (g, sender, key_id) in wanted {
            let due = self
                .last_key_requests
                .get(&(g, sender, key_id))
                .is_none_or(|t| t.saturating_add(SENDER_KEY_REQUEST_INTERVAL_MS) <= now);
            if due && self.has_session(&sender, now).unwrap_or(false) {
                out.push(self.request_sender_key(&g, &sender, key_id, rng, now)?);
            }
        }
        Ok(out)
    }

    fn check_member_device(&self, g: &GroupId, d: &DeviceAddress) -> crate::Result<DeviceIdentity> {
        let entry = self.groups.get(g).ok_or(ProtocolError::UnknownGroup)?;
        if !entry.log.state().is_member(&d.account) {
            return Err(ProtocolError::NotAMember.into());
        }
        self.known_identity(d)
    }

    pub(in crate::device) fn accept_sender_key(
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

    pub(in crate::device) fn answer_sender_key_request(
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
}
