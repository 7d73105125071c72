//! Receiving: decrypting pairwise and initial messages, and the inbox that holds plaintexts until
//! the app acknowledges them.

use hush_proto::{store as pstore, wire};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::{Device, Incoming, NEXT_MESSAGE_ID, Received, Tx, decode, encode, id_key, used_key};
use crate::consts::{KEY_LEN, MAX_MESSAGE_LEN};
use crate::device::error::{DeviceError, Result};
use crate::error::{AuthError, Error, ProtocolError};
use crate::keys::{AccountId, DeviceAddress, DeviceIdentity, array};
use crate::pqxdh::{self, InitialMessage};
use crate::ratchet::RatchetMessage;
use crate::sender_key::GroupId;
use crate::session::SessionRecord;
use crate::store::kv::{Batch, KvStore, Namespace};

/// What an initial message consumed, applied in memory after the commit.
enum Consumed {
    Nothing,
    PreKeys {
        one_time: Option<u32>,
        kem: u32,
        last_resort_base_key: Option<[u8; KEY_LEN]>,
    },
}

impl<S: KvStore> Device<S> {
    /// Adds a decrypted application payload to the inbox within `tx`.
    pub(super) fn add_to_inbox(
        &mut self,
        tx: &mut Tx,
        from: DeviceAddress,
        group: Option<GroupId>,
        plaintext: Zeroizing<Vec<u8>>,
        now: u64,
    ) -> Received {
        let id = tx.next_message_id.unwrap_or(self.next_message_id);
        let mut stored = pstore::StoredMessage {
            account_key: from.account.as_bytes().to_vec(),
            device_id: from.device_id,
            plaintext: plaintext.to_vec(),
            received_at: now,
            group_id: group.map(|g| g.0.to_vec()).unwrap_or_default(),
        };
        tx.batch.put(
            Namespace::Messages,
            id.to_be_bytes().to_vec(),
            encode(&stored),
        );
        zeroize::Zeroize::zeroize(&mut stored);
        tx.batch.put(
            Namespace::Meta,
            NEXT_MESSAGE_ID,
            Zeroizing::new((id + 1).to_be_bytes().to_vec()),
        );
        tx.next_message_id = Some(id + 1);
        Received {
            id,
            from,
            group,
            plaintext,
            received_at: now,
        }
    }

    /// Decrypts a pairwise message from `from` (the sender as authenticated by the relay) and
    /// processes its content. Application payloads are committed to the inbox together with the
    /// session change before they are returned; control contents (sender keys, retry requests,
    /// group changes) are applied and may produce messages to send.
    pub fn decrypt(
        &mut self,
        from: &DeviceAddress,
        bytes: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<Incoming> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(DeviceError::malformed("pairwise message", "too large"));
        }
        let msg: wire::PairwiseMessage = decode(bytes, "pairwise message")?;
        let identity = self.known_identity(from)?;
        let mut record = self.take_record(from)?;
        let result = match &msg.body {
            Some(wire::pairwise_message::Body::Initial(m)) => InitialMessage::try_from(m)
                .and_then(|im| self.decrypt_initial(from, identity, &mut record, &im, now)),
            Some(wire::pairwise_message::Body::Ratchet(m)) => {
                RatchetMessage::try_from(m).and_then(|rm| {
                    if record
                        .current()
                        .is_some_and(|s| s.remote_identity() != identity)
                    {
                        return Err(AuthError::IdentityMismatch.into());
                    }
                    record.decrypt(&rm, now).map(|d| (d, Consumed::Nothing))
                })
            }
            None => Err(Error::malformed("pairwise message", "empty")),
        };
        let (decrypted, consumed) = match result {
            Ok(x) => x,
            Err(e) => {
                self.sessions.insert(*from, record);
                return Err(e.into());
            }
        };
        // From here on the record is advanced in memory; any error discards it (reload from store).
        self.sessions.insert(*from, record);
        let mut tx = Tx::default();
        tx.sessions.insert(*from);
        self.note_decrypted(from, bytes, &mut tx);
        let incoming =
            match self.process_content(from, &decrypted.plaintext, rng, now, &mut tx, &consumed) {
                Ok(i) => i,
                Err(e) => {
                    for a in &tx.sessions {
                        self.sessions.remove(a);
                    }
                    self.discard_group_changes(&tx);
                    return Err(e);
                }
            };
        self.finish(tx)?;
        if let Consumed::PreKeys {
            one_time,
            kem,
            last_resort_base_key,
        } = consumed
        {
            if let Some(o) = one_time {
                self.one_time_pre_keys.remove(&o);
            }
            match last_resort_base_key {
                Some(base) => {
                    if let Some(k) = self.kem_pre_keys.get_mut(&kem) {
                        k.mark_used_base_keys([base]);
                    }
                }
                None => {
                    self.kem_pre_keys.remove(&kem);
                }
            }
        }
        Ok(incoming)
    }

    fn process_content(
        &mut self,
        from: &DeviceAddress,
        plaintext: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
        tx: &mut Tx,
        consumed: &Consumed,
    ) -> Result<Incoming> {
        if let Consumed::PreKeys {
            one_time,
            kem,
            last_resort_base_key,
        } = consumed
        {
            if let Some(o) = one_time {
                tx.batch.delete(Namespace::OneTimePreKeys, id_key(*o));
            }
            match last_resort_base_key {
                Some(base) => {
                    tx.batch.put(
                        Namespace::KemPreKeys,
                        used_key(*kem, base),
                        Zeroizing::new(Vec::new()),
                    );
                }
                None => {
                    tx.batch.delete(Namespace::KemPreKeys, id_key(*kem));
                }
            }
        }
        let content: wire::Content = decode(plaintext, "message content")?;
        let mut incoming = Incoming::default();
        match content.body {
            Some(wire::content::Body::App(body)) => {
                incoming.received.push(self.add_to_inbox(
                    tx,
                    *from,
                    None,
                    Zeroizing::new(body),
                    now,
                ));
            }
            Some(wire::content::Body::SenderKey(d)) => {
                incoming.received = self.accept_sender_key(from, &d, now, tx)?;
            }
            Some(wire::content::Body::SenderKeyRequest(r)) => {
                incoming.outgoing = self.answer_sender_key_request(from, &r, rng, now, tx)?;
            }
            Some(wire::content::Body::GroupLog(mut n)) => {
                let accepted = self.accept_group_notice(from, &n, tx);
                // The secret is kept (in the group or the invitation) only in its own type.
                zeroize::Zeroize::zeroize(&mut n.secret);
                incoming.group_logs.extend(accepted?);
            }
            Some(wire::content::Body::GroupSyncRequest(_)) => {
                incoming.outgoing = self.answer_group_sync(from, rng, now, tx)?;
            }
            Some(wire::content::Body::RetryRequest(r)) => {
                incoming.outgoing = self.answer_retry_request(from, &r, rng, now, tx)?;
            }
            None => return Err(DeviceError::malformed("message content", "empty")),
        }
        Ok(incoming)
    }

    fn decrypt_initial(
        &self,
        from: &DeviceAddress,
        identity: DeviceIdentity,
        record: &mut SessionRecord,
        m: &InitialMessage,
        now: u64,
    ) -> crate::Result<(crate::ratchet::Decrypted, Consumed)> {
        if m.sender != *from || m.sender_identity != identity {
            return Err(AuthError::IdentityMismatch.into());
        }
        if record.has_base_key(&m.base_key) {
            return record
                .decrypt_with_base_key(&m.base_key, &m.message, now)
                .map(|d| (d, Consumed::Nothing));
        }
        let spk =
            self.signed_pre_keys
                .get(&m.signed_pre_key_id)
                .ok_or(ProtocolError::UnknownPreKey {
                    kind: "signed",
                    id: m.signed_pre_key_id,
                })?;
        let otk = match m.one_time_pre_key_id {
            Some(id) => Some(self.one_time_pre_keys.get(&id).ok_or(
                ProtocolError::UnknownPreKey {
                    kind: "one-time",
                    id,
                },
            )?),
            None => None,
        };
        let kem = self
            .kem_pre_keys
            .get(&m.kem_pre_key_id)
            .ok_or(ProtocolError::UnknownPreKey {
                kind: "ML-KEM",
                id: m.kem_pre_key_id,
            })?;
        let mut init = pqxdh::respond(self.address, &self.identity, spk, otk, kem, m, now)?;
        let decrypted = init.session.decrypt(&m.message, now)?;
        record.promote_new(init.session);
        let consumed = Consumed::PreKeys {
            one_time: m.one_time_pre_key_id,
            kem: m.kem_pre_key_id,
            last_resort_base_key: kem.last_resort.then_some(m.base_key),
        };
        Ok((decrypted, consumed))
    }

    /// Messages decrypted but not yet acknowledged by the app (e.g. after a crash), oldest first.
    pub fn pending_messages(&self) -> Result<Vec<Received>> {
        let mut out = Vec::new();
        for (k, v) in self.store.scan(Namespace::Messages)? {
            let id = u64::from_be_bytes(array(&k, "stored message key", "must be 8 bytes")?);
            let m: pstore::StoredMessage = decode(&v, "stored message")?;
            out.push(Received {
                id,
                from: DeviceAddress {
                    account: AccountId::from_bytes(&m.account_key)?,
                    device_id: m.device_id,
                },
                group: if m.group_id.is_empty() {
                    None
                } else {
                    Some(GroupId::from_bytes(&m.group_id)?)
                },
                plaintext: Zeroizing::new(m.plaintext.clone()),
                received_at: m.received_at,
            });
        }
        Ok(out)
    }

    /// Removes a message from the inbox once the app has it.
    pub fn ack_message(&mut self, id: u64) -> Result<()> {
        let mut batch = Batch::new();
        batch.delete(Namespace::Messages, id.to_be_bytes().to_vec());
        self.store.commit(batch).map_err(DeviceError::from)
    }
}
