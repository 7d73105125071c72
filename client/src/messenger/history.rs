//! The history store: one encrypted record per (conversation, sender device, message id), never
//! replaced by another message, and an in-memory index in the order every device computes the
//! same way (sender's clock, sender, counter, id).

use crate::engine::EngineConfig;
use crate::error::ClientError;
use hush_core::store::kv::{Batch, KvStore, Namespace};
use hush_proto::app::StoredMessage;
use hush_store_sled::SledKv;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use zeroize::Zeroizing;

use super::{Conversation, HISTORY_STORE_LABEL, conversation_of, conversation_of_conv};

/// The history: every stored message, in memory for paging and on disk (encrypted) for
/// durability.
///
/// A record's store key names the message, not its place in the order:
/// `0x80 ‖ conversation (33, see [`Conversation::key`]) ‖ sender account (32) ‖ sender device
/// (u32 BE) ‖ message id (16)`. Nothing the sender chooses besides the id itself can make two
/// messages share a key, and a record is never replaced by a different message: a message that
/// reuses the key of a stored one (a replay, or another message under the same id from the same
/// device) is dropped. The order (`sent_at`, sender, counter, id) is an index in memory.
pub(super) struct History {
    pub(super) store: SledKv,
    /// Store key → record.
    pub(super) by_key: BTreeMap<Vec<u8>, StoredMessage>,
    /// Order key (conversation ‖ sent_at ‖ sender account ‖ sender device ‖ counter ‖ id) →
    /// store key.
    pub(super) order: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Message id → store keys of the records with that id (ids are chosen by senders, so
    /// several senders may use one).
    pub(super) by_id: HashMap<Vec<u8>, Vec<Vec<u8>>>,
    /// Highest counter seen per (conversation, sender device).
    pub(super) counters: HashMap<(Vec<u8>, Vec<u8>), u64>,
}

/// First byte of a history store key (older keys began with the conversation kind, 1 or 2).
pub(super) const HISTORY_KEY: u8 = 0x80;

/// The store key of `m` in conversation `conv` (see [`History`]).
pub(super) fn history_key(conv: &[u8], m: &StoredMessage) -> Vec<u8> {
    let id = m
        .message
        .as_ref()
        .map_or(&[][..], |a| a.message_id.as_slice());
    let mut k = Vec::with_capacity(1 + conv.len() + 32 + 4 + 16);
    k.push(HISTORY_KEY);
    k.extend_from_slice(conv);
    k.extend_from_slice(&m.sender_account);
    k.extend_from_slice(&m.sender_device.to_be_bytes());
    k.extend_from_slice(id);
    k
}

/// The conversation part of a store key.
pub(super) fn conv_part(key: &[u8]) -> &[u8] {
    key.get(1..34).unwrap_or_default()
}

pub(super) fn order_key(conv: &[u8], m: &StoredMessage) -> Vec<u8> {
    let (sent_at, counter, id) = m.message.as_ref().map_or((0, 0, &[][..]), |a| {
        (a.sent_at, a.counter, a.message_id.as_slice())
    });
    let mut k = conv.to_vec();
    k.extend_from_slice(&sent_at.to_be_bytes());
    k.extend_from_slice(&m.sender_account);
    k.extend_from_slice(&m.sender_device.to_be_bytes());
    k.extend_from_slice(&counter.to_be_bytes());
    k.extend_from_slice(id);
    k
}

pub(super) fn sender_key(m: &StoredMessage) -> Vec<u8> {
    let mut k = m.sender_account.clone();
    k.extend_from_slice(&m.sender_device.to_be_bytes());
    k
}

/// Whether a stored message has a usable id (16 bytes) and sender (32-byte account).
pub(super) fn well_formed(m: &StoredMessage) -> bool {
    m.message.as_ref().is_some_and(|a| a.message_id.len() == 16) && m.sender_account.len() == 32
}

pub(super) fn open_history(cfg: &EngineConfig) -> Result<History, ClientError> {
    crate::private_fs::create_dir(&cfg.profile).map_err(|e| ClientError::Profile(e.to_string()))?;
    let store = crate::engine::open_labelled_waiting(
        &cfg.profile.join(crate::profile::HISTORY_DIR),
        &cfg.at_rest_key,
        HISTORY_STORE_LABEL,
    )?;
    History::open(store)
}

impl History {
    pub(super) fn open(store: SledKv) -> Result<Self, ClientError> {
        let mut h = Self {
            store,
            by_key: BTreeMap::new(),
            by_id: HashMap::new(),
            order: BTreeMap::new(),
            counters: HashMap::new(),
        };
        let entries = h
            .store
            .scan(Namespace::Messages)
            .map_err(ClientError::Store)?;
        // Records under the older layout (conversation ‖ sent_at ‖ sender ‖ counter) move to
        // their message's key, in one batch; a second record for a key already taken is dropped.
        let mut migrate = Batch::new();
        let mut moved = 0usize;
        for (k, v) in entries {
            let Ok(m) = StoredMessage::decode(v.as_slice()) else {
                continue;
            };
            if k.first() == Some(&HISTORY_KEY) {
                h.index(k, m);
                continue;
            }
            migrate.delete(Namespace::Messages, k.clone());
            moved += 1;
            let conv = k.get(..33).unwrap_or_default();
            if conversation_of_conv(conv).is_none() || !well_formed(&m) {
                continue;
            }
            let key = history_key(conv, &m);
            if h.by_key.contains_key(&key) {
                continue;
            }
            migrate.put(
                Namespace::Messages,
                key.clone(),
                Zeroizing::new(m.encode_to_vec()),
            );
            h.index(key, m);
        }
        if moved > 0 {
            h.store.commit(migrate).map_err(ClientError::Store)?;
            tracing::info!(records = moved, "history moved to message-keyed records");
        }
        Ok(h)
    }

    /// Reopens a store poisoned by a failed commit and rebuilds the index from what the store
    /// holds: a commit reported as failed may still have reached the disk, and a key on disk
    /// that the index missed could otherwise be written over.
    pub(super) fn reopen(&mut self) -> Result<(), ClientError> {
        self.store.reopen().map_err(ClientError::Store)?;
        let entries = self
            .store
            .scan(Namespace::Messages)
            .map_err(ClientError::Store)?;
        self.by_key.clear();
        self.order.clear();
        self.by_id.clear();
        self.counters.clear();
        for (k, v) in entries {
            if k.first() != Some(&HISTORY_KEY) {
                continue;
            }
            if let Ok(m) = StoredMessage::decode(v.as_slice()) {
                self.index(k, m);
            }
        }
        Ok(())
    }

    pub(super) fn index(&mut self, key: Vec<u8>, m: StoredMessage) {
        let conv = conv_part(&key).to_vec();
        if let Some(a) = &m.message {
            let keys = self.by_id.entry(a.message_id.clone()).or_default();
            if !keys.contains(&key) {
                keys.push(key.clone());
            }
            let c = self
                .counters
                .entry((conv.clone(), sender_key(&m)))
                .or_insert(0);
            *c = (*c).max(a.counter);
        }
        self.order.insert(order_key(&conv, &m), key.clone());
        self.by_key.insert(key, m);
    }

    /// The store keys of the records with message id `id`, this device's own first.
    pub(super) fn keys_of(&self, id: &[u8]) -> Vec<Vec<u8>> {
        let mut keys = self.by_id.get(id).cloned().unwrap_or_default();
        keys.sort_by_key(|k| !self.by_key.get(k).is_some_and(|m| m.outgoing));
        keys
    }

    /// A message with id `id` (an outgoing one if there is one) and its conversation.
    pub(super) fn get(&self, id: &[u8]) -> Option<(Conversation, StoredMessage)> {
        self.keys_of(id).into_iter().find_map(|key| {
            let m = self.by_key.get(&key)?;
            Some((conversation_of(&key)?, m.clone()))
        })
    }

    /// The message with id `id` sent by `sender` (account ‖ u32 BE device), and its
    /// conversation.
    pub(super) fn get_from(
        &self,
        id: &[u8],
        sender: &[u8],
    ) -> Option<(Conversation, StoredMessage)> {
        self.keys_of(id).into_iter().find_map(|key| {
            let m = self.by_key.get(&key)?;
            if sender_key(m) != sender {
                return None;
            }
            Some((conversation_of(&key)?, m.clone()))
        })
    }

    /// Stores a new message; returns it (with its gap flag set) or `None` if it adds nothing:
    /// the same message again (a duplicate), or a different one under the key of a stored
    /// message, which never replaces it.
    pub(super) fn insert(
        &mut self,
        conv: &Conversation,
        mut m: StoredMessage,
    ) -> Result<Option<StoredMessage>, ClientError> {
        if !well_formed(&m) {
            return Ok(None);
        }
        let ck = conv.key();
        let key = history_key(&ck, &m);
        if let Some(old) = self.by_key.get(&key) {
            if old.message != m.message {
                tracing::warn!("a message reusing the id of a stored one was dropped");
            }
            return Ok(None);
        }
        let counter = m.message.as_ref().map_or(0, |a| a.counter);
        let last = self
            .counters
            .get(&(ck.clone(), sender_key(&m)))
            .copied()
            .unwrap_or(0);
        m.gap_before = counter > last.saturating_add(1);
        self.put(&key, &m)?;
        self.index(key, m.clone());
        Ok(Some(m))
    }

    pub(super) fn put(&mut self, key: &[u8], m: &StoredMessage) -> Result<(), ClientError> {
        let mut batch = Batch::new();
        batch.put(
            Namespace::Messages,
            key.to_vec(),
            Zeroizing::new(m.encode_to_vec()),
        );
        self.store.commit(batch).map_err(ClientError::Store)
    }

    /// Applies `f` to the stored messages with id `id` for which `which` holds, and writes
    /// back those it changed; returns how many `which` selected.
    pub(super) fn update_where(
        &mut self,
        id: &[u8],
        which: impl Fn(&Conversation, &StoredMessage) -> bool,
        mut f: impl FnMut(&mut StoredMessage),
    ) -> Result<usize, ClientError> {
        let mut selected = 0;
        for key in self.keys_of(id) {
            let Some(conv) = conversation_of(&key) else {
                continue;
            };
            let Some(mut m) = self.by_key.get(&key).filter(|m| which(&conv, m)).cloned() else {
                continue;
            };
            selected += 1;
            f(&mut m);
            if self.by_key.get(&key) == Some(&m) {
                continue;
            }
            self.put(&key, &m)?;
            self.by_key.insert(key, m);
        }
        Ok(selected)
    }

    /// The messages of a conversation for which `keep` holds, oldest first (only those are
    /// copied).
    pub(super) fn select(
        &self,
        conv: &Conversation,
        keep: impl Fn(&StoredMessage) -> bool,
    ) -> Vec<StoredMessage> {
        let ck = conv.key();
        let mut upper = ck.clone();
        upper.push(0xff);
        self.order
            .range(ck.clone()..upper)
            .filter(|(k, _)| k.starts_with(&ck))
            .filter_map(|(_, key)| self.by_key.get(key))
            .filter(|m| keep(m))
            .cloned()
            .collect()
    }

    pub(super) fn page(
        &self,
        conv: &Conversation,
        before: Option<&[u8]>,
        limit: usize,
    ) -> Vec<StoredMessage> {
        let ck = conv.key();
        let upper = before
            .and_then(|id| {
                self.keys_of(id).into_iter().find_map(|k| {
                    let m = self.by_key.get(&k)?;
                    (conv_part(&k) == ck.as_slice()).then(|| order_key(&ck, m))
                })
            })
            .unwrap_or_else(|| {
                let mut k = ck.clone();
                k.push(0xff);
                k
            });
        let mut out: Vec<StoredMessage> = self
            .order
            .range(ck.clone()..upper)
            .rev()
            .filter(|(k, _)| k.starts_with(&ck))
            .take(limit)
            .filter_map(|(_, key)| self.by_key.get(key).cloned())
            .collect();
        out.reverse();
        out
    }
}
