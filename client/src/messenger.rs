//! The messenger: conversations on top of the engine. Text with replies, reactions,
//! sent/delivered/read states per message and recipient, typing and presence (ephemeral, presence
//! switchable off), attachments (encrypted here, stored as blobs on the relay), a history kept in
//! an encrypted store with paging, a stable order on every device, deduplication, and sync of
//! this device's sent messages to the account's other devices.
//!
//! Order: every message carries the sender's clock (`sent_at`, never lower than the sender's
//! previous message) and a per-(sender device, conversation) counter. History is sorted by
//! (`sent_at`, sender account, sender device, counter, message id), which every device computes
//! the same way from the same messages; a counter that skips values marks a gap. Deduplication is
//! by (conversation, sender device, message id): the key of a stored record, which nothing
//! replaces (see [`History`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hush_core::keys::{AccountId, DeviceAddress};
use hush_core::sender_key::GroupId;
use hush_core::store::kv::{Batch, KvStore, Namespace};
use hush_core::store::sled_kv::SledKv;
use hush_proto::app::{self, AppMessage, StoredMessage, app_message};
use prost::Message;
use rand::RngExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::engine::{Engine, EngineConfig, Event, GroupDelivery, GroupFailure, now_ms, rng};
use crate::error::ClientError;

/// At-rest subkey label of the history store (`history/`), distinct from the device store's.
pub const HISTORY_STORE_LABEL: &[u8] = b"/history";

/// First wait before a message whose storing failed (a history store error) is processed
/// again; doubles on every try.
const STORE_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(250);
/// Tries of storing one received message before it is left in the engine's inbox, to be
/// offered again on the next start.
const STORE_ATTEMPTS: u32 = 8;

/// Largest attachment (the relay's default blob cap).
pub const MAX_ATTACHMENT: usize = 100 << 20;
/// Longest text message, in bytes.
pub const MAX_TEXT: usize = 32 * 1024;
/// Most contacts one [`Messenger::sync_contacts`] carries (and one received is taken from).
pub const MAX_SYNCED_CONTACTS: usize = 5_000;
/// First wait of an outbox worker before it offers again a message that had to wait while the
/// relay was reachable (a full queue, a rate limit); doubles up to [`OUTBOX_RETRY_MAX`].
const OUTBOX_RETRY_MIN: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest such wait.
const OUTBOX_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5 * 60);
/// How long an outbox worker waits for a connection at a time (then looks again).
const OUTBOX_CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conversation {
    /// With one account (all its devices).
    Direct(AccountId),
    /// A group.
    Group(GroupId),
}

impl Conversation {
    fn key(&self) -> Vec<u8> {
        match self {
            Self::Direct(a) => [&[1u8][..], a.as_bytes()].concat(),
            Self::Group(g) => [&[2u8][..], &g.0[..]].concat(),
        }
    }
}

/// A message id (16 random bytes).
pub type MessageId = [u8; 16];

/// Where a message this account sent stands, as a chat shows it (clock, one tick, two ticks,
/// blue ticks). It moves forward only; `Failed` until the user retries, which puts the message
/// back to `Waiting`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageStatus {
    /// Stored on this device, not yet on the relay (offline, or on its way): the outbox sends
    /// it, in order, as soon as it can. Nothing for the user to do.
    Waiting,
    /// Refused for good (see [`ClientError::is_permanent`]): sent again only by
    /// [`Messenger::retry`].
    Failed,
    /// On the relay, for every recipient device.
    Sent,
    /// A device of every recipient account has it.
    Delivered,
    /// Every recipient account has read it.
    Read,
}

/// The status of a stored message this account sent (`None` for a received one). A group
/// message counts as delivered (read) once every member it was sent to confirmed it.
pub fn status_of(m: &StoredMessage) -> Option<MessageStatus> {
    if !m.outgoing {
        return None;
    }
    if !m.sent {
        return Some(if m.failed.is_empty() {
            MessageStatus::Waiting
        } else {
            MessageStatus::Failed
        });
    }
    let all = |confirmed: &dyn Fn(&Vec<u8>) -> bool, any: bool| {
        if m.recipients.is_empty() {
            any
        } else {
            m.recipients.iter().all(confirmed)
        }
    };
    let read = all(&|r| m.read_by.contains(r), !m.read_by.is_empty());
    let delivered = all(
        &|r| m.read_by.contains(r) || m.delivered_to.contains(r),
        !m.read_by.is_empty() || !m.delivered_to.is_empty(),
    );
    Some(if read {
        MessageStatus::Read
    } else if delivered {
        MessageStatus::Delivered
    } else {
        MessageStatus::Sent
    })
}

/// What the messenger reports.
pub enum MessengerEvent {
    /// A new message in a conversation (text, attachment or reaction), stored in history.
    Message {
        /// Where.
        conversation: Conversation,
        /// The stored record.
        message: Box<StoredMessage>,
    },
    /// Messages this account sent moved to a further [`MessageStatus`]: on the relay,
    /// delivered to every recipient account, read by every one. Reported once per step and
    /// never backwards (a second device's receipt, or a delivery receipt after the read one,
    /// changes nothing); [`status_of`] gives a stored message's status at any time.
    Status {
        /// Where.
        conversation: Conversation,
        /// Which messages (one receipt may move many).
        message_ids: Vec<MessageId>,
        /// Where they stand now.
        status: MessageStatus,
    },
    /// Someone started or stopped typing.
    Typing {
        /// Who.
        from: DeviceAddress,
        /// Where.
        conversation: Conversation,
        /// Started (true) or stopped.
        typing: bool,
    },
    /// A contact's presence.
    Presence {
        /// Who.
        from: AccountId,
        /// Online now.
        online: bool,
        /// Last seen (ms).
        last_seen: u64,
    },
    /// Connected to the relay or not.
    Connection(bool),
    /// This device was removed from its account.
    Revoked,
    /// A contact's devices changed (see [`Event::DevicesChanged`]).
    DevicesChanged {
        /// The contact.
        account: AccountId,
        /// Devices new or re-keyed.
        added: Vec<u32>,
        /// Devices gone.
        removed: Vec<u32>,
    },
    /// A contact's device list did not verify or conflicts with an earlier one: warn the user.
    IdentityWarning {
        /// The contact.
        account: AccountId,
    },
    /// A group was joined or changed (members, name): see [`Engine::groups`].
    GroupsChanged,
    /// Everything the relay held for this device while it was away has been processed (the
    /// events before this one): history and receipts are up to date.
    CaughtUp,
    /// A group message this device sent did not reach some member accounts (or, with an
    /// empty list, has now reached every one it had missed): show "not delivered to ...".
    /// Those not refused for good are tried again by the outbox on each connection;
    /// [`Messenger::retry`] tries all of them again.
    Undelivered {
        /// Where.
        conversation: Conversation,
        /// Which message.
        message_id: MessageId,
        /// The member accounts it has not reached, with why (also in
        /// `StoredMessage::undelivered`).
        accounts: Vec<GroupFailure>,
    },
    /// A message this device stored could not be sent and will not be sent again by itself
    /// (see [`ClientError::is_permanent`]): show it as failed; [`Messenger::retry`] tries again.
    SendFailed {
        /// Where.
        conversation: Conversation,
        /// Which message.
        message_id: MessageId,
        /// Why (for the user).
        reason: String,
    },
    /// A message from `from` could not be decrypted and was dropped (see
    /// [`Event::Undecryptable`]): show that a message was lost.
    Undecryptable {
        /// Where (the sender's direct conversation, or the group).
        conversation: Conversation,
        /// The sending device.
        from: DeviceAddress,
    },
    /// The local store failed and could not be reopened: receiving has stopped (see
    /// [`Event::StoreFailed`]).
    StoreFailed,
    /// Another device of this account sent its username and contacts (see
    /// [`Messenger::sync_contacts`]): keep them, so that this device shows the same names.
    ContactsSynced {
        /// The account's username (empty if it has none).
        name: String,
        /// Usernames and their accounts.
        contacts: Vec<(String, AccountId)>,
    },
}

/// Never shows message content: the kind of event and who it concerns.
impl std::fmt::Debug for MessengerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Message {
                conversation,
                message,
            } => f
                .debug_struct("Message")
                .field("conversation", conversation)
                .field("outgoing", &message.outgoing)
                .finish_non_exhaustive(),
            Self::Status {
                conversation,
                message_ids,
                status,
            } => f
                .debug_struct("Status")
                .field("conversation", conversation)
                .field("count", &message_ids.len())
                .field("status", status)
                .finish(),
            Self::Typing {
                from,
                conversation,
                typing,
            } => f
                .debug_struct("Typing")
                .field("from", from)
                .field("conversation", conversation)
                .field("typing", typing)
                .finish(),
            Self::Presence { from, online, .. } => f
                .debug_struct("Presence")
                .field("from", from)
                .field("online", online)
                .finish_non_exhaustive(),
            Self::Connection(c) => f.debug_tuple("Connection").field(c).finish(),
            Self::Revoked => f.write_str("Revoked"),
            Self::DevicesChanged {
                account,
                added,
                removed,
            } => f
                .debug_struct("DevicesChanged")
                .field("account", account)
                .field("added", added)
                .field("removed", removed)
                .finish(),
            Self::IdentityWarning { account } => f
                .debug_struct("IdentityWarning")
                .field("account", account)
                .finish(),
            Self::GroupsChanged => f.write_str("GroupsChanged"),
            Self::CaughtUp => f.write_str("CaughtUp"),
            Self::Undelivered {
                conversation,
                accounts,
                ..
            } => f
                .debug_struct("Undelivered")
                .field("conversation", conversation)
                .field("accounts", &accounts.len())
                .finish_non_exhaustive(),
            Self::SendFailed {
                conversation,
                reason,
                ..
            } => f
                .debug_struct("SendFailed")
                .field("conversation", conversation)
                .field("reason", reason)
                .finish_non_exhaustive(),
            Self::Undecryptable { conversation, from } => f
                .debug_struct("Undecryptable")
                .field("conversation", conversation)
                .field("from", from)
                .finish(),
            Self::StoreFailed => f.write_str("StoreFailed"),
            Self::ContactsSynced { contacts, .. } => f
                .debug_struct("ContactsSynced")
                .field("contacts", &contacts.len())
                .finish_non_exhaustive(),
        }
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rng().fill(&mut b[..]);
    b
}

/// The history: every stored message, in memory for paging and on disk (encrypted) for
/// durability.
///
/// A record's store key names the message, not its place in the order:
/// `0x80 ‖ conversation (33, see [`Conversation::key`]) ‖ sender account (32) ‖ sender device
/// (u32 BE) ‖ message id (16)`. Nothing the sender chooses besides the id itself can make two
/// messages share a key, and a record is never replaced by a different message: a message that
/// reuses the key of a stored one (a replay, or another message under the same id from the same
/// device) is dropped. The order (`sent_at`, sender, counter, id) is an index in memory.
struct History {
    store: SledKv,
    /// Store key → record.
    by_key: BTreeMap<Vec<u8>, StoredMessage>,
    /// Order key (conversation ‖ sent_at ‖ sender account ‖ sender device ‖ counter ‖ id) →
    /// store key.
    order: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Message id → store keys of the records with that id (ids are chosen by senders, so
    /// several senders may use one).
    by_id: HashMap<Vec<u8>, Vec<Vec<u8>>>,
    /// Highest counter seen per (conversation, sender device).
    counters: HashMap<(Vec<u8>, Vec<u8>), u64>,
}

/// First byte of a history store key (older keys began with the conversation kind, 1 or 2).
const HISTORY_KEY: u8 = 0x80;

/// The store key of `m` in conversation `conv` (see [`History`]).
fn history_key(conv: &[u8], m: &StoredMessage) -> Vec<u8> {
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
fn conv_part(key: &[u8]) -> &[u8] {
    key.get(1..34).unwrap_or_default()
}

fn order_key(conv: &[u8], m: &StoredMessage) -> Vec<u8> {
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

fn sender_key(m: &StoredMessage) -> Vec<u8> {
    let mut k = m.sender_account.clone();
    k.extend_from_slice(&m.sender_device.to_be_bytes());
    k
}

/// Whether a stored message has a usable id (16 bytes) and sender (32-byte account).
fn well_formed(m: &StoredMessage) -> bool {
    m.message.as_ref().is_some_and(|a| a.message_id.len() == 16) && m.sender_account.len() == 32
}

impl History {
    fn open(store: SledKv) -> Result<Self, ClientError> {
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
            .map_err(|e| ClientError::Core(e.into()))?;
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
            h.store
                .commit(migrate)
                .map_err(|e| ClientError::Core(e.into()))?;
            tracing::info!(records = moved, "history moved to message-keyed records");
        }
        Ok(h)
    }

    /// Reopens a store poisoned by a failed commit and rebuilds the index from what the store
    /// holds: a commit reported as failed may still have reached the disk, and a key on disk
    /// that the index missed could otherwise be written over.
    fn reopen(&mut self) -> Result<(), ClientError> {
        self.store
            .reopen()
            .map_err(|e| ClientError::Core(e.into()))?;
        let entries = self
            .store
            .scan(Namespace::Messages)
            .map_err(|e| ClientError::Core(e.into()))?;
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

    fn index(&mut self, key: Vec<u8>, m: StoredMessage) {
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
    fn keys_of(&self, id: &[u8]) -> Vec<Vec<u8>> {
        let mut keys = self.by_id.get(id).cloned().unwrap_or_default();
        keys.sort_by_key(|k| !self.by_key.get(k).is_some_and(|m| m.outgoing));
        keys
    }

    /// A message with id `id` (an outgoing one if there is one) and its conversation.
    fn get(&self, id: &[u8]) -> Option<(Conversation, StoredMessage)> {
        self.keys_of(id).into_iter().find_map(|key| {
            let m = self.by_key.get(&key)?;
            Some((conversation_of(&key)?, m.clone()))
        })
    }

    /// The message with id `id` sent by `sender` (account ‖ u32 BE device), and its
    /// conversation.
    fn get_from(&self, id: &[u8], sender: &[u8]) -> Option<(Conversation, StoredMessage)> {
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
    fn insert(
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

    fn put(&mut self, key: &[u8], m: &StoredMessage) -> Result<(), ClientError> {
        let mut batch = Batch::new();
        batch.put(
            Namespace::Messages,
            key.to_vec(),
            Zeroizing::new(m.encode_to_vec()),
        );
        self.store
            .commit(batch)
            .map_err(|e| ClientError::Core(e.into()))
    }

    /// Applies `f` to the stored messages with id `id` for which `which` holds, and writes
    /// back those it changed; returns how many `which` selected.
    fn update_where(
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
    fn select(
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

    fn page(&self, conv: &Conversation, before: Option<&[u8]>, limit: usize) -> Vec<StoredMessage> {
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

struct Shared {
    engine: Engine,
    me: DeviceAddress,
    history: Mutex<History>,
    /// Next counter per conversation (this device as sender).
    next_counter: Mutex<HashMap<Vec<u8>, u64>>,
    last_sent_at: AtomicU64,
    presence: AtomicBool,
    events: mpsc::UnboundedSender<MessengerEvent>,
    /// The username this account goes by, sent along with messages.
    name: Mutex<String>,
    /// Conversations whose outbox worker runs, each with whether something was added since
    /// the worker last looked (see [`Shared::kick`]).
    working: Mutex<HashMap<Conversation, bool>>,
    /// Bumped on every change a caller may wait for (see [`Messenger::wait_sent`]).
    changed: tokio::sync::watch::Sender<u64>,
    /// The outbox workers, which shutdown stops and waits for (each holds the shared state).
    outbox_sends: tokio_util::task::TaskTracker,
    /// Tells the outbox workers to stop.
    outbox_stop: tokio_util::sync::CancellationToken,
}

/// The messenger of one device.
pub struct Messenger {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Messenger {
    /// Creates a new account in an empty profile.
    pub async fn create_account(
        cfg: EngineConfig,
    ) -> Result<(Self, mpsc::UnboundedReceiver<MessengerEvent>), ClientError> {
        let history = open_history(&cfg)?;
        let (engine, rx) = Engine::create_account(cfg).await?;
        Self::start(engine, rx, history)
    }

    /// Sets up a new device of an existing account from a link code (see
    /// [`Engine::offer_link`]).
    pub async fn link(
        cfg: EngineConfig,
        code: &str,
    ) -> Result<(Self, mpsc::UnboundedReceiver<MessengerEvent>), ClientError> {
        let history = open_history(&cfg)?;
        let (engine, rx) = Engine::link(cfg, code).await?;
        Self::start(engine, rx, history)
    }

    /// Opens an existing profile.
    pub fn open(
        cfg: EngineConfig,
    ) -> Result<(Self, mpsc::UnboundedReceiver<MessengerEvent>), ClientError> {
        let history = open_history(&cfg)?;
        let (engine, rx) = Engine::open(cfg)?;
        Self::start(engine, rx, history)
    }

    fn start(
        engine: Engine,
        rx: mpsc::UnboundedReceiver<Event>,
        history: History,
    ) -> Result<(Self, mpsc::UnboundedReceiver<MessengerEvent>), ClientError> {
        let me = engine.address()?;
        let (events, out) = mpsc::unbounded_channel();
        // Counters continue from what this device already sent in each conversation.
        let mut next_counter = HashMap::new();
        let mine = [
            me.account.as_bytes().to_vec(),
            me.device_id.to_be_bytes().to_vec(),
        ]
        .concat();
        let mut last_sent_at = 0;
        for ((conv, sender), c) in &history.counters {
            if sender == &mine {
                next_counter.insert(conv.clone(), c.saturating_add(1));
            }
        }
        for m in history.by_key.values() {
            if m.outgoing && m.sender_device == me.device_id {
                last_sent_at = last_sent_at.max(m.message.as_ref().map_or(0, |a| a.sent_at));
            }
        }
        let shared = Arc::new(Shared {
            engine,
            me,
            history: Mutex::new(history),
            next_counter: Mutex::new(next_counter),
            last_sent_at: AtomicU64::new(last_sent_at),
            presence: AtomicBool::new(true),
            events,
            name: Mutex::new(String::new()),
            working: Mutex::new(HashMap::new()),
            changed: tokio::sync::watch::channel(0).0,
            outbox_sends: tokio_util::task::TaskTracker::new(),
            outbox_stop: tokio_util::sync::CancellationToken::new(),
        });
        let task = tokio::spawn(pump(Arc::clone(&shared), rx));
        // What an earlier run left in the outbox waits for the connection in order.
        shared.kick_all();
        Ok((Self { shared, task }, out))
    }

    /// The engine underneath (connection state, groups).
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// Sets the username sent along with this account's messages (receivers verify it in the
    /// relay's directory before trusting it).
    pub fn set_name(&self, name: &str) {
        if let Ok(mut n) = self.shared.name.lock() {
            name.clone_into(&mut n);
        }
    }

    /// This device's address.
    pub fn address(&self) -> DeviceAddress {
        self.shared.me
    }

    /// Sends a text (optionally as a reply): stores it and returns its id at once, with the
    /// message [`MessageStatus::Waiting`]; it never waits for the relay. The outbox sends it,
    /// after the conversation's earlier messages, as soon as the relay can be reached
    /// ([`MessengerEvent::Status`] with `Sent`), across restarts. Refused for good
    /// ([`ClientError::is_permanent`]), it is stored as failed and
    /// [`MessengerEvent::SendFailed`] names it. The same holds for reactions and attachments.
    /// Errors only for what cannot be stored as asked (too long, an unknown group).
    pub async fn send_text(
        &self,
        to: Conversation,
        text: &str,
        reply_to: Option<MessageId>,
    ) -> Result<MessageId, ClientError> {
        if text.len() > MAX_TEXT {
            return Err(ClientError::Invalid(format!(
                "the message is too long: {} bytes, at most {MAX_TEXT}",
                text.len()
            )));
        }
        self.shared.send_stored(
            to,
            app_message::Kind::Text(app::Text {
                body: text.to_owned(),
                reply_to: reply_to.map(|r| r.to_vec()).unwrap_or_default(),
            }),
        )
    }

    /// Reacts to a message (an empty `emoji` removes the reaction).
    pub async fn react(
        &self,
        to: Conversation,
        target: MessageId,
        emoji: &str,
    ) -> Result<MessageId, ClientError> {
        self.shared.send_stored(
            to,
            app_message::Kind::Reaction(app::Reaction {
                target: target.to_vec(),
                emoji: emoji.to_owned(),
            }),
        )
    }

    /// Encrypts `data`, uploads it and sends it as an attachment.
    pub async fn send_attachment(
        &self,
        to: Conversation,
        name: &str,
        mime: &str,
        data: &[u8],
    ) -> Result<MessageId, ClientError> {
        self.send_attachment_with_progress(to, name, mime, data, &crate::conn::no_progress)
            .await
    }

    /// Downloads and decrypts an attachment, checking its digest: one the relay no longer has
    /// is [`ClientError::BlobGone`], one whose bytes do not match is [`ClientError::BlobAltered`].
    pub async fn download(&self, a: &app::Attachment) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        self.download_with_progress(a, &crate::conn::no_progress)
            .await
    }

    /// Marks every unread incoming message of a conversation read and tells the senders.
    pub async fn mark_read(&self, conv: Conversation) -> Result<(), ClientError> {
        let unread: Vec<(AccountId, Vec<u8>)> = {
            let mut h = self.shared.lock_history()?;
            let ids: Vec<(Vec<u8>, Vec<u8>)> = h
                .page(&conv, None, usize::MAX)
                .into_iter()
                .filter(|m| !m.outgoing && !m.read)
                .filter_map(|m| {
                    m.message
                        .as_ref()
                        .map(|a| (a.message_id.clone(), m.sender_account.clone()))
                })
                .collect();
            let mut out = Vec::new();
            for (id, sender) in ids {
                h.update_where(
                    &id,
                    |_, m| !m.outgoing && !m.read && m.sender_account == sender,
                    |m| m.read = true,
                )?;
                if let Ok(a) = AccountId::from_bytes(&sender) {
                    out.push((a, id));
                }
            }
            out
        };
        let mut by_sender: BTreeMap<AccountId, Vec<Vec<u8>>> = BTreeMap::new();
        for (a, id) in unread {
            by_sender.entry(a).or_default().push(id);
        }
        if by_sender.is_empty() {
            return Ok(());
        }
        if self.shared.engine.state() == crate::engine::ConnectionState::Online {
            for (a, ids) in by_sender {
                self.shared.send_receipt(&a, true, ids).await?;
            }
            return Ok(());
        }
        // Offline: marked read here at once; the senders are told once the relay is back
        // (while this messenger runs).
        let shared = Arc::clone(&self.shared);
        let stop = self.shared.outbox_stop.clone();
        self.shared.outbox_sends.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = async {
                    for (a, ids) in by_sender {
                        while shared.engine.connected(OUTBOX_CONNECT_WAIT).await.is_err() {
                            if shared.engine.is_closed() {
                                return;
                            }
                        }
                        if let Err(e) = shared.send_receipt(&a, true, ids).await {
                            tracing::debug!(error = %e, "read receipt not sent");
                        }
                    }
                } => {}
            }
        });
        Ok(())
    }

    /// Tells the conversation that this user is (or stopped) typing: ephemeral, to connected
    /// devices only.
    pub async fn typing(&self, to: Conversation, typing: bool) -> Result<(), ClientError> {
        let m = self.shared.wrap(
            &to,
            app_message::Kind::Typing(app::Typing { typing }),
            false,
        );
        self.shared.deliver_ephemeral(to, &m).await
    }

    /// Switches sharing presence on or off; when on, tells `contacts` this device is online.
    pub async fn set_presence(&self, on: bool, contacts: &[AccountId]) -> Result<(), ClientError> {
        self.shared.presence.store(on, Ordering::Relaxed);
        let p = app::Presence {
            online: on,
            last_seen: now_ms(),
        };
        for c in contacts {
            let m = self.shared.wrap(
                &Conversation::Direct(*c),
                app_message::Kind::Presence(p),
                false,
            );
            self.shared
                .deliver_ephemeral(Conversation::Direct(*c), &m)
                .await?;
        }
        Ok(())
    }

    /// The stored message with id `id`, and its conversation.
    pub fn message(
        &self,
        id: &MessageId,
    ) -> Result<Option<(Conversation, StoredMessage)>, ClientError> {
        Ok(self.shared.lock_history()?.get(id))
    }

    /// Puts back in the outbox a message of this device that failed (`StoredMessage::failed`,
    /// [`MessengerEvent::SendFailed`]); for a group message, also the members it missed for
    /// good (`StoredMessage::undelivered`). Returns at once, the message `Waiting`; refused
    /// again, it is failed again. Nothing happens for one sent to everyone or already waiting.
    pub async fn retry(&self, id: &MessageId) -> Result<(), ClientError> {
        self.shared.retry(id)
    }

    /// Waits (at most `wait`) until a message this device sent has left the outbox, and
    /// returns its status: `Sent` or further, `Failed`, or still `Waiting` when `wait` ran out
    /// (it stays in the outbox). For a command-line client that exits after sending.
    pub async fn wait_sent(
        &self,
        id: &MessageId,
        wait: std::time::Duration,
    ) -> Result<MessageStatus, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changed = self.shared.changed.subscribe();
        loop {
            let status = {
                let h = self.shared.lock_history()?;
                h.get_from(id, &self.shared.own_sender())
                    .and_then(|(_, m)| status_of(&m))
                    .ok_or_else(|| ClientError::Invalid("no such message sent here".into()))?
            };
            if status != MessageStatus::Waiting {
                return Ok(status);
            }
            if self.shared.engine.is_revoked() {
                return Err(ClientError::Revoked);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return Ok(status),
            }
        }
    }

    /// The conversations with messages not yet read here, and how many (newest first).
    pub fn unread(&self) -> Result<Vec<(Conversation, usize)>, ClientError> {
        let h = self.shared.lock_history()?;
        let mut counts: HashMap<Conversation, (usize, Vec<u8>)> = HashMap::new();
        for (order, key) in &h.order {
            let Some(m) = h.by_key.get(key) else {
                continue;
            };
            if m.outgoing || m.read {
                continue;
            }
            if let Some(conv) = conversation_of(key) {
                let e = counts.entry(conv).or_insert((0, Vec::new()));
                e.0 += 1;
                e.1.clone_from(order);
            }
        }
        let mut out: Vec<_> = counts.into_iter().collect();
        out.sort_by(|a, b| b.1.1.get(33..).cmp(&a.1.1.get(33..)));
        Ok(out.into_iter().map(|(c, (n, _))| (c, n)).collect())
    }

    /// Gives this account's other devices its username and the contacts this device knows
    /// (a device just linked shows names, not account ids). At most [`MAX_SYNCED_CONTACTS`].
    pub async fn sync_contacts(
        &self,
        name: &str,
        contacts: &[(String, AccountId)],
    ) -> Result<(), ClientError> {
        if contacts.len() > MAX_SYNCED_CONTACTS {
            return Err(ClientError::Invalid(format!(
                "at most {MAX_SYNCED_CONTACTS} contacts are synced at once"
            )));
        }
        let m = self.shared.wrap(
            &Conversation::Direct(self.shared.me.account),
            app_message::Kind::SyncContacts(app::SyncContacts {
                name: name.to_owned(),
                contacts: contacts
                    .iter()
                    .map(|(u, a)| app::SyncedContact {
                        username: u.clone(),
                        account: a.as_bytes().to_vec(),
                    })
                    .collect(),
            }),
            false,
        );
        self.shared
            .engine
            .send(&self.shared.me.account, &m.encode_to_vec())
            .await
    }

    /// Up to `limit` messages of a conversation, oldest first, before message `before` (or the
    /// newest ones).
    pub fn history(
        &self,
        conv: Conversation,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, ClientError> {
        Ok(self
            .shared
            .lock_history()?
            .page(&conv, before.as_ref().map(|b| &b[..]), limit))
    }

    /// Stops the messenger and its engine; once it returns, the profile's stores are closed
    /// (another messenger may open them).
    pub async fn shutdown(self) {
        self.task.abort();
        let _ = self.task.await;
        // The outbox workers: stopped, and waited for, so that none still holds the stores.
        // What they had not sent stays stored and waits for the next start.
        self.shared.outbox_stop.cancel();
        self.shared.outbox_sends.close();
        self.shared.outbox_sends.wait().await;
        match Arc::try_unwrap(self.shared) {
            Ok(shared) => shared.engine.shutdown().await,
            Err(shared) => tracing::warn!(
                holders = Arc::strong_count(&shared),
                "messenger still in use at shutdown; the engine stops when the last user goes"
            ),
        }
    }

    /// [`Self::send_attachment`], telling `progress` the encrypted bytes uploaded so far and
    /// their total (the file's size and 16 bytes of authentication tag).
    pub async fn send_attachment_with_progress(
        &self,
        to: Conversation,
        name: &str,
        mime: &str,
        data: &[u8],
        progress: crate::conn::Progress<'_>,
    ) -> Result<MessageId, ClientError> {
        if data.len() > MAX_ATTACHMENT {
            return Err(ClientError::Invalid(format!(
                "the file is too large: {} bytes, at most {MAX_ATTACHMENT}",
                data.len()
            )));
        }
        let key = Zeroizing::new(random::<32>());
        let cipher = ChaCha20Poly1305::new(&Key::from(*key));
        // A fresh key per attachment, so the all-zero nonce is used once.
        let sealed = cipher
            .encrypt(&Nonce::from([0u8; 12]), data)
            .map_err(|_| ClientError::Protocol("attachment encryption failed"))?;
        let digest = Sha256::digest(&sealed).to_vec();
        let (blob_id, capability) = self
            .shared
            .engine
            .upload_blob_with_progress(&sealed, progress)
            .await?;
        self.shared.send_stored(
            to,
            app_message::Kind::Attachment(app::Attachment {
                blob_id,
                capability,
                key: key.to_vec(),
                digest,
                size: data.len() as u64,
                name: name.to_owned(),
                mime: mime.to_owned(),
                caption: String::new(),
            }),
        )
    }

    /// [`Self::download`], telling `progress` the encrypted bytes received so far and their
    /// total.
    pub async fn download_with_progress(
        &self,
        a: &app::Attachment,
        progress: crate::conn::Progress<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let max = usize::try_from(a.size)
            .unwrap_or(usize::MAX)
            .saturating_add(16);
        let sealed = self
            .shared
            .engine
            .download_blob_with_progress(&a.blob_id, &a.capability, max, progress)
            .await?;
        let digest = Sha256::digest(&sealed);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            digest.as_slice(),
            a.digest.as_slice(),
        )) {
            return Err(ClientError::BlobAltered);
        }
        let key: [u8; 32] = a
            .key
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Protocol("attachment key of the wrong length"))?;
        let cipher = ChaCha20Poly1305::new(&Key::from(key));
        cipher
            .decrypt(&Nonce::from([0u8; 12]), sealed.as_slice())
            .map(Zeroizing::new)
            .map_err(|_| ClientError::Protocol("attachment does not decrypt"))
    }

    /// The attachment messages whose id, in hex, starts with `id_prefix` (any case; all 32
    /// digits name one message), sent or received, with their conversations, newest first.
    /// Several senders may pick one id, and a short prefix may fit several messages: the caller
    /// decides what a prefix must be and what several matches mean.
    pub fn find_attachments(
        &self,
        id_prefix: &str,
    ) -> Result<Vec<(Conversation, StoredMessage, app::Attachment)>, ClientError> {
        let prefix = id_prefix.to_ascii_lowercase();
        let h = self.shared.lock_history()?;
        let mut found: Vec<(Vec<u8>, Conversation, StoredMessage, app::Attachment)> = h
            .by_id
            .iter()
            .filter(|(id, _)| hex::encode(id).starts_with(&prefix))
            .flat_map(|(_, keys)| keys.iter())
            .filter_map(|key| {
                let m = h.by_key.get(key)?;
                let conv = conversation_of(key)?;
                let a = attachment_of(m)?;
                Some((order_key(conv_part(key), m), conv, m.clone(), a))
            })
            .collect();
        found.sort_by(|x, y| y.0.cmp(&x.0));
        Ok(found.into_iter().map(|(_, c, m, a)| (c, m, a)).collect())
    }

    /// The attachment received last (by this device, in any conversation), with its
    /// conversation; `None` if none has been received.
    pub fn last_received_attachment(
        &self,
    ) -> Result<Option<(Conversation, StoredMessage, app::Attachment)>, ClientError> {
        let h = self.shared.lock_history()?;
        Ok(h.by_key
            .iter()
            .filter(|(_, m)| !m.outgoing)
            .filter_map(|(key, m)| Some((key, m, attachment_of(m)?)))
            .max_by_key(|(key, m, _)| (m.received_at, order_key(conv_part(key), m)))
            .and_then(|(key, m, a)| Some((conversation_of(key)?, m.clone(), a))))
    }
}

/// The attachment a stored message carries, if it is one.
fn attachment_of(m: &StoredMessage) -> Option<app::Attachment> {
    match m.message.as_ref()?.kind.as_ref()? {
        app_message::Kind::Attachment(a) => Some(a.clone()),
        _ => None,
    }
}

/// A new history record of `message` from `from` (delivery state empty).
fn record(
    message: AppMessage,
    from: &DeviceAddress,
    peer: Vec<u8>,
    outgoing: bool,
    recipients: Vec<Vec<u8>>,
) -> StoredMessage {
    StoredMessage {
        message: Some(message),
        sender_account: from.account.as_bytes().to_vec(),
        sender_device: from.device_id,
        peer,
        outgoing,
        received_at: now_ms(),
        delivered_to: Vec::new(),
        read_by: Vec::new(),
        read: false,
        gap_before: false,
        sent: false,
        failed: String::new(),
        recipients,
        undelivered: Vec::new(),
    }
}

/// The member accounts a stored group message is still to be sent to: `None` for everyone (it
/// was never sent), else those in `undelivered` (refused for good too, if `with_permanent`).
fn retry_targets(s: &StoredMessage, with_permanent: bool) -> Option<Vec<AccountId>> {
    if !s.sent {
        return None;
    }
    Some(
        s.undelivered
            .iter()
            .filter(|u| with_permanent || !u.permanent)
            .filter_map(|u| AccountId::from_bytes(&u.account).ok())
            .collect(),
    )
}

/// The conversation a history store key belongs to (see [`History`]).
fn conversation_of(key: &[u8]) -> Option<Conversation> {
    conversation_of_conv(conv_part(key))
}

/// The conversation named by 33 bytes of [`Conversation::key`].
fn conversation_of_conv(conv: &[u8]) -> Option<Conversation> {
    let (kind, rest) = conv.split_first()?;
    let id = rest.get(..32)?;
    match kind {
        1 => AccountId::from_bytes(id).ok().map(Conversation::Direct),
        2 => GroupId::from_bytes(id).ok().map(Conversation::Group),
        _ => None,
    }
}

fn open_history(cfg: &EngineConfig) -> Result<History, ClientError> {
    crate::private_fs::create_dir(&cfg.profile)
        .map_err(|e| ClientError::Config(format!("profile directory: {e}")))?;
    let store = crate::engine::open_labelled_waiting(
        &cfg.profile.join("history"),
        &cfg.at_rest_key,
        HISTORY_STORE_LABEL,
    )?;
    History::open(store)
}

impl Shared {
    fn lock_history(&self) -> Result<std::sync::MutexGuard<'_, History>, ClientError> {
        self.history.lock().map_err(|_| ClientError::Closed)
    }

    /// Whether `m` is a message this device sent.
    fn is_own(&self, m: &StoredMessage) -> bool {
        m.outgoing
            && m.sender_device == self.me.device_id
            && m.sender_account == self.me.account.as_bytes()
    }

    /// Applies `f` to the message with id `id` that this device sent, and stores it.
    fn update_own(&self, id: &[u8], f: impl FnMut(&mut StoredMessage)) -> Result<(), ClientError> {
        self.lock_history()?
            .update_where(id, |_, m| self.is_own(m), f)
            .map(|_| ())
    }

    /// Whether `m`, a message of this account in `conv`, went to `account`: one of its
    /// recipients; for a record from before recipients were stored, the direct conversation's
    /// peer or a current member of the group.
    fn was_sent_to(&self, conv: &Conversation, m: &StoredMessage, account: &AccountId) -> bool {
        if !m.recipients.is_empty() {
            return m.recipients.iter().any(|r| r == account.as_bytes());
        }
        match conv {
            Conversation::Direct(p) => p == account,
            Conversation::Group(g) => self
                .engine
                .group_members(g)
                .is_ok_and(|members| members.contains(account)),
        }
    }

    /// The accounts a message of this account in `conv` goes to (for receipts): the peer, or
    /// the group's other member accounts now.
    fn recipients_of(&self, conv: &Conversation) -> Vec<Vec<u8>> {
        match conv {
            Conversation::Direct(p) => vec![p.as_bytes().to_vec()],
            Conversation::Group(g) => self
                .engine
                .group_members(g)
                .unwrap_or_default()
                .into_iter()
                .filter(|a| a != &self.me.account)
                .map(|a| a.as_bytes().to_vec())
                .collect(),
        }
    }

    /// This device as a sender in history (account ‖ u32 BE device).
    fn own_sender(&self) -> Vec<u8> {
        [
            &self.me.account.as_bytes()[..],
            &self.me.device_id.to_be_bytes()[..],
        ]
        .concat()
    }

    fn emit(&self, e: MessengerEvent) {
        let _ = self.events.send(e);
        self.changed.send_modify(|c| *c = c.wrapping_add(1));
    }

    /// A new application message from this device (counter and clock advanced when `counted`).
    fn wrap(&self, conv: &Conversation, kind: app_message::Kind, counted: bool) -> AppMessage {
        let counter = if counted {
            let mut c = self.next_counter.lock().map_or(1, |mut m| {
                let e = m.entry(conv.key()).or_insert(1);
                let v = *e;
                *e = v.saturating_add(1);
                v
            });
            if c == 0 {
                c = 1;
            }
            c
        } else {
            0
        };
        let now = now_ms();
        let prev = self.last_sent_at.fetch_max(now, Ordering::SeqCst);
        let sent_at = if counted && prev >= now {
            let next = prev.saturating_add(1);
            self.last_sent_at.fetch_max(next, Ordering::SeqCst);
            next
        } else {
            now.max(prev)
        };
        AppMessage {
            message_id: random::<16>().to_vec(),
            group: match conv {
                Conversation::Group(g) => g.0.to_vec(),
                Conversation::Direct(_) => Vec::new(),
            },
            sent_at,
            counter,
            sender_name: if counted {
                self.name.lock().map(|n| n.clone()).unwrap_or_default()
            } else {
                String::new()
            },
            kind: Some(kind),
        }
    }

    /// Sends an ephemeral `m` (typing, presence) to the conversation's connected devices.
    async fn deliver_ephemeral(
        &self,
        conv: Conversation,
        m: &AppMessage,
    ) -> Result<(), ClientError> {
        // Ephemeral: worth nothing later, so never waited for.
        if self.engine.state() != crate::engine::ConnectionState::Online {
            return Err(ClientError::Disconnected);
        }
        let bytes = m.encode_to_vec();
        match conv {
            Conversation::Direct(peer) => self.engine.send_ephemeral(&peer, &bytes).await,
            Conversation::Group(g) => self.engine.send_group_ephemeral(&g, &bytes).await,
        }
    }

    /// Sends a stored `m` to the conversation (for a group: to the member accounts in `only`,
    /// or all). For a group, what reached whom.
    async fn deliver(
        &self,
        conv: Conversation,
        m: &AppMessage,
        only: Option<&[AccountId]>,
    ) -> Result<Option<GroupDelivery>, ClientError> {
        let bytes = m.encode_to_vec();
        match conv {
            Conversation::Direct(peer) => self.engine.send(&peer, &bytes).await.map(|()| None),
            Conversation::Group(g) => match only {
                Some(o) => self.engine.send_group_to(&g, &bytes, o).await.map(Some),
                None => self.engine.send_group(&g, &bytes).await.map(Some),
            },
        }
    }

    /// Stores a new message of this device and hands it to its conversation's outbox worker.
    fn send_stored(
        self: &Arc<Self>,
        to: Conversation,
        kind: app_message::Kind,
    ) -> Result<MessageId, ClientError> {
        if let Conversation::Group(g) = &to
            && !self.engine.groups()?.iter().any(|(id, _)| id == g)
        {
            return Err(ClientError::Invalid(
                "this device is not in that group".into(),
            ));
        }
        let m = self.wrap(&to, kind, true);
        let id: MessageId = m
            .message_id
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Protocol("message id"))?;
        let peer = match to {
            Conversation::Direct(p) => p.as_bytes().to_vec(),
            Conversation::Group(_) => Vec::new(),
        };
        let stored = record(m, &self.me, peer, true, self.recipients_of(&to));
        // Stored before it leaves: a crash never loses what the user sent.
        self.lock_history()?.insert(&to, stored)?;
        self.kick(to);
        Ok(id)
    }

    /// Sends a stored message of this device (only its conversation's outbox worker does): on
    /// success it is marked sent and copied to the account's other devices; refused for good,
    /// it is stored as failed (never sent again by the outbox) and the app is told. Otherwise it
    /// stays waiting.
    ///
    /// A group message goes to the member accounts it has not reached yet (all, the first
    /// time); those it does not reach now are stored in `undelivered` (the app is told), and
    /// the outbox tries again those not refused for good.
    async fn send_claimed(
        &self,
        conv: Conversation,
        id: &MessageId,
        m: AppMessage,
        peer: Vec<u8>,
        with_permanent: bool,
    ) -> Result<(), ClientError> {
        let (was_sent, only) = self
            .lock_history()?
            .get_from(id, &self.own_sender())
            .map_or((false, None), |(_, s)| {
                (s.sent, retry_targets(&s, with_permanent))
            });
        if only.as_ref().is_some_and(Vec::is_empty) {
            // Sent, and no member left to reach.
            return Ok(());
        }
        let sent = self.deliver(conv, &m, only.as_deref()).await;
        let delivery = match sent {
            Ok(d) => d,
            Err(e) => {
                if e.is_permanent() {
                    self.fail(conv, id, &e)?;
                }
                return Err(e);
            }
        };
        if let Some(d) = delivery {
            let tried: Option<Vec<Vec<u8>>> = only
                .as_ref()
                .map(|o| o.iter().map(|a| a.as_bytes().to_vec()).collect());
            let now: Vec<app::Undelivered> = d
                .failed
                .iter()
                .map(|f| app::Undelivered {
                    account: f.account.as_bytes().to_vec(),
                    reason: f.reason.clone(),
                    permanent: f.permanent,
                })
                .collect();
            let mut changed = false;
            let mut undelivered = Vec::new();
            self.update_own(id, |s| {
                let before = s.undelivered.clone();
                // Those tried again are replaced by this try's outcome; others stay.
                s.undelivered
                    .retain(|u| tried.as_ref().is_some_and(|t| !t.contains(&u.account)));
                s.undelivered.extend(now.iter().cloned());
                changed = s.undelivered != before;
                undelivered.clone_from(&s.undelivered);
                s.sent = true;
            })?;
            if changed {
                self.emit(MessengerEvent::Undelivered {
                    conversation: conv,
                    message_id: *id,
                    accounts: undelivered
                        .iter()
                        .filter_map(|u| {
                            Some(GroupFailure {
                                account: AccountId::from_bytes(&u.account).ok()?,
                                reason: u.reason.clone(),
                                permanent: u.permanent,
                            })
                        })
                        .collect(),
                });
            }
        } else {
            self.update_own(id, |s| s.sent = true)?;
        }
        if !was_sent {
            self.emit(MessengerEvent::Status {
                conversation: conv,
                message_ids: vec![*id],
                status: MessageStatus::Sent,
            });
            self.sync_sent(peer, m).await;
        }
        Ok(())
    }

    /// Stores a message as failed for good and tells the app.
    fn fail(&self, conv: Conversation, id: &MessageId, e: &ClientError) -> Result<(), ClientError> {
        let reason = e.to_string();
        self.update_own(id, |s| s.failed.clone_from(&reason))?;
        self.emit(MessengerEvent::SendFailed {
            conversation: conv,
            message_id: *id,
            reason,
        });
        Ok(())
    }

    /// Puts a message of this device back in its conversation's outbox (see
    /// [`Messenger::retry`]).
    fn retry(self: &Arc<Self>, id: &MessageId) -> Result<(), ClientError> {
        let conv = {
            let mut h = self.lock_history()?;
            let (conv, stored) = h.get_from(id, &self.own_sender()).ok_or_else(|| {
                ClientError::Invalid("no such message sent from this device".into())
            })?;
            if stored.sent && stored.undelivered.is_empty() {
                return Ok(());
            }
            h.update_where(
                id,
                |_, s| self.is_own(s),
                |s| {
                    s.failed.clear();
                    for u in &mut s.undelivered {
                        u.permanent = false;
                    }
                },
            )?;
            conv
        };
        self.kick(conv);
        Ok(())
    }

    /// Whether a message of this device still waits for the outbox: never sent (and not failed),
    /// or a group message some members of which it is still to reach.
    fn is_pending(&self, m: &StoredMessage) -> bool {
        self.is_own(m)
            && m.failed.is_empty()
            && (!m.sent || m.undelivered.iter().any(|u| !u.permanent))
    }

    /// Starts the outbox worker of every conversation with waiting messages (on start, and on
    /// each connection for group messages that missed members).
    fn kick_all(self: &Arc<Self>) {
        let convs: HashSet<Conversation> = match self.lock_history() {
            Ok(h) => h
                .by_key
                .iter()
                .filter(|(_, m)| self.is_pending(m))
                .filter_map(|(k, _)| conversation_of(k))
                .collect(),
            Err(_) => HashSet::new(),
        };
        for c in convs {
            self.kick(c);
        }
    }

    /// Makes sure the outbox worker of `conv` runs and sees what was just added.
    fn kick(self: &Arc<Self>, conv: Conversation) {
        let Ok(mut working) = self.working.lock() else {
            return;
        };
        if let Some(again) = working.get_mut(&conv) {
            *again = true;
            return;
        }
        working.insert(conv, false);
        drop(working);
        let me = Arc::clone(self);
        let stop = self.outbox_stop.clone();
        self.outbox_sends.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = me.work(conv) => {}
            }
        });
    }

    /// The outbox worker of one conversation: while it has waiting messages, waits for the
    /// relay and sends them in order. A message that must wait (offline again, a full queue, a
    /// rate limit) holds back the later ones of its conversation only, and is tried again
    /// after a backoff (at once after a reconnection). A message that reached the relay before
    /// a crash may thus arrive twice, which receivers drop (same sender, same id).
    async fn work(self: Arc<Self>, conv: Conversation) {
        let mut backoff = OUTBOX_RETRY_MIN;
        loop {
            match self.engine.connected(OUTBOX_CONNECT_WAIT).await {
                Ok(()) => {}
                Err(ClientError::Disconnected | ClientError::Timeout) => continue,
                // Revoked or shut down: nothing will leave.
                Err(_) => {
                    if let Ok(mut w) = self.working.lock() {
                        w.remove(&conv);
                    }
                    return;
                }
            }
            if self.send_pending(conv).await {
                let Ok(mut working) = self.working.lock() else {
                    return;
                };
                match working.get_mut(&conv) {
                    Some(again) if *again => *again = false,
                    _ => {
                        // Done, under the lock a new message's kick takes: it either set
                        // `again` before this, or starts a new worker after.
                        working.remove(&conv);
                        return;
                    }
                }
                backoff = OUTBOX_RETRY_MIN;
                continue;
            }
            if self.engine.state() != crate::engine::ConnectionState::Online {
                // Cut off: the next connection is what to wait for.
                backoff = OUTBOX_RETRY_MIN;
                continue;
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(OUTBOX_RETRY_MAX);
        }
    }

    /// Sends the waiting messages of `conv`, oldest first; true if none is left waiting.
    async fn send_pending(&self, conv: Conversation) -> bool {
        let queue: Vec<StoredMessage> = match self.lock_history() {
            // Only the waiting ones are copied: this runs on every send.
            Ok(h) => h.select(&conv, |m| self.is_pending(m)),
            Err(_) => return false,
        };
        let mut all_done = true;
        for stored in queue {
            let Some(m) = stored.message.clone() else {
                continue;
            };
            let Ok(id) = MessageId::try_from(m.message_id.as_slice()) else {
                continue;
            };
            let r = self
                .send_claimed(conv, &id, m, stored.peer.clone(), false)
                .await;
            match r {
                Ok(()) => {
                    // A group message may still miss members (tried again later).
                    let still = self
                        .lock_history()
                        .ok()
                        .and_then(|h| h.get_from(&id, &self.own_sender()))
                        .is_some_and(|(_, s)| self.is_pending(&s));
                    all_done &= !still;
                }
                // Refused for good (the group is gone, the account too, ...): stored as
                // failed, the app told; the outbox moves on.
                Err(e) if e.is_permanent() => {
                    tracing::debug!(error = %e, "a waiting message was refused");
                }
                // Offline again, or this conversation must wait (a full queue, a rate limit):
                // its later messages wait too, in order.
                Err(e) => {
                    tracing::debug!(error = %e, "a waiting message waits longer");
                    return false;
                }
            }
        }
        all_done
    }

    /// Gives the account's other devices a copy of a sent message, so every device shows the
    /// conversation.
    async fn sync_sent(&self, peer: Vec<u8>, m: AppMessage) {
        let sync = AppMessage {
            message_id: Vec::new(),
            group: Vec::new(),
            sent_at: 0,
            counter: 0,
            sender_name: String::new(),
            kind: Some(app_message::Kind::SyncSent(Box::new(app::SyncSent {
                peer,
                message: Some(Box::new(m)),
            }))),
        };
        if let Err(e) = self
            .engine
            .send(&self.me.account, &sync.encode_to_vec())
            .await
        {
            tracing::warn!(error = %e, "sent message not synced to the other devices");
        }
    }

    async fn send_receipt(
        &self,
        to: &AccountId,
        read: bool,
        ids: Vec<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let kind = if read {
            app::receipt::Kind::Read
        } else {
            app::receipt::Kind::Delivered
        };
        let m = self.wrap(
            &Conversation::Direct(*to),
            app_message::Kind::Receipt(app::Receipt {
                kind: kind.into(),
                message_ids: ids,
            }),
            false,
        );
        self.engine.send(to, &m.encode_to_vec()).await
    }

    /// [`Shared::receive`], tried again with backoff while it fails for a local, transient
    /// reason (the history store; a poisoned one is reopened). Returns whether the message is
    /// done with: processed, or refused for good.
    async fn receive_stored(
        &self,
        from: DeviceAddress,
        group: Option<GroupId>,
        m: AppMessage,
    ) -> bool {
        let mut wait = STORE_RETRY_MIN;
        for attempt in 1..=STORE_ATTEMPTS {
            match self.receive(from, group, m.clone()).await {
                Ok(()) => return true,
                Err(e) if e.is_permanent() => {
                    tracing::warn!(error = %e, "a message could not be processed");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "a message could not be stored yet");
                    if let Ok(mut h) = self.lock_history()
                        && h.store.is_poisoned()
                        && let Err(e) = h.reopen()
                    {
                        tracing::error!(error = %e, "history store could not be reopened");
                    }
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(2);
                }
            }
        }
        false
    }

    /// Handles one decrypted application message.
    async fn receive(
        &self,
        from: DeviceAddress,
        group: Option<GroupId>,
        m: AppMessage,
    ) -> Result<(), ClientError> {
        let conv = match group {
            Some(g) => Conversation::Group(g),
            None => Conversation::Direct(from.account),
        };
        let own = from.account == self.me.account;
        match m.kind.clone() {
            Some(app_message::Kind::Typing(t)) => self.emit(MessengerEvent::Typing {
                from,
                conversation: conv,
                typing: t.typing,
            }),
            // Presence switched off here: others' presence is not shown either.
            Some(app_message::Kind::Presence(p)) if self.presence.load(Ordering::Relaxed) => {
                self.emit(MessengerEvent::Presence {
                    from: from.account,
                    online: p.online,
                    last_seen: p.last_seen,
                });
            }
            Some(app_message::Kind::Receipt(r)) => {
                let read = r.kind() == app::receipt::Kind::Read;
                let who = from.account.as_bytes().to_vec();
                // The messages this receipt moves to a further status, by conversation and
                // status: a receipt only adds to who has a message, so nothing moves back.
                let mut moved: BTreeMap<(Conversation, MessageStatus), Vec<MessageId>> =
                    BTreeMap::new();
                {
                    let mut h = self.lock_history()?;
                    for id in &r.message_ids {
                        let Ok(mid) = MessageId::try_from(id.as_slice()) else {
                            continue;
                        };
                        let conv_of = std::cell::Cell::new(None);
                        let mut step = None;
                        // Only this account's messages, and only those sent to the account
                        // that confirms: anyone else's receipt changes nothing.
                        h.update_where(
                            id,
                            |conv, s| {
                                let ok = s.outgoing
                                    && s.sender_account == self.me.account.as_bytes()
                                    && self.was_sent_to(conv, s, &from.account);
                                if ok {
                                    conv_of.set(Some(*conv));
                                }
                                ok
                            },
                            |s| {
                                let before = status_of(s);
                                let list = if read {
                                    &mut s.read_by
                                } else {
                                    &mut s.delivered_to
                                };
                                if !list.contains(&who) {
                                    list.push(who.clone());
                                }
                                let after = status_of(s);
                                if after > before {
                                    step = after;
                                }
                            },
                        )?;
                        if let (Some(c), Some(st)) = (conv_of.get(), step) {
                            moved.entry((c, st)).or_default().push(mid);
                        }
                    }
                }
                for ((conversation, status), message_ids) in moved {
                    self.emit(MessengerEvent::Status {
                        conversation,
                        message_ids,
                        status,
                    });
                }
            }
            Some(app_message::Kind::SyncContacts(s)) if own => {
                let contacts = s
                    .contacts
                    .iter()
                    .take(MAX_SYNCED_CONTACTS)
                    .filter_map(|c| {
                        hush_net::username::normalize(&c.username)
                            .ok()
                            .zip(AccountId::from_bytes(&c.account).ok())
                    })
                    .collect();
                let name = hush_net::username::normalize(&s.name).unwrap_or_default();
                self.emit(MessengerEvent::ContactsSynced { name, contacts });
            }
            Some(app_message::Kind::SyncSent(mut s)) if own => {
                // A message this account sent from another device.
                let Some(inner) = s.message.take() else {
                    return Ok(());
                };
                let conv = if inner.group.is_empty() {
                    match AccountId::from_bytes(&s.peer) {
                        Ok(p) => Conversation::Direct(p),
                        Err(_) => return Ok(()),
                    }
                } else {
                    match GroupId::from_bytes(&inner.group) {
                        Ok(g) => Conversation::Group(g),
                        Err(_) => return Ok(()),
                    }
                };
                let mut stored = record(
                    *inner,
                    &from,
                    std::mem::take(&mut s.peer),
                    true,
                    self.recipients_of(&conv),
                );
                stored.sent = true;
                if let Some(saved) = self.lock_history()?.insert(&conv, stored)? {
                    self.emit(MessengerEvent::Message {
                        conversation: conv,
                        message: Box::new(saved),
                    });
                }
            }
            Some(
                app_message::Kind::Text(_)
                | app_message::Kind::Reaction(_)
                | app_message::Kind::Attachment(_),
            ) => {
                let id = m.message_id.clone();
                let peer = if group.is_none() {
                    from.account.as_bytes().to_vec()
                } else {
                    Vec::new()
                };
                let recipients = if own {
                    self.recipients_of(&conv)
                } else {
                    Vec::new()
                };
                let stored = record(m, &from, peer, own, recipients);
                let saved = self.lock_history()?.insert(&conv, stored)?;
                if let Some(saved) = saved {
                    self.emit(MessengerEvent::Message {
                        conversation: conv,
                        message: Box::new(saved),
                    });
                    if !own {
                        // The message is stored: a receipt that cannot go now is not a reason
                        // to process it again (which would find it stored and never send it).
                        if let Err(e) = self.send_receipt(&from.account, false, vec![id]).await {
                            tracing::debug!(error = %e, "delivery receipt not sent");
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Takes the engine's events: stores and reports messages, then acknowledges them to the
/// engine's inbox (so a crash before that offers them again).
async fn pump(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Event>) {
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Message {
                id,
                from,
                group,
                plaintext,
                ..
            } => {
                let stored = match AppMessage::decode(plaintext.as_slice()) {
                    Ok(m) => shared.receive_stored(from, group, m).await,
                    Err(_) => {
                        tracing::warn!("a message that is not an application message");
                        true
                    }
                };
                // Only once it is in the history (or can never be): otherwise it stays in the
                // engine's inbox and is offered again on the next start.
                if stored && let Err(e) = shared.engine.ack(id) {
                    tracing::warn!(error = %e, "inbox acknowledgement failed");
                }
            }
            Event::Connection(c) => {
                shared.emit(MessengerEvent::Connection(c));
                if c {
                    shared.kick_all();
                }
            }
            Event::Revoked => shared.emit(MessengerEvent::Revoked),
            Event::DevicesChanged {
                account,
                added,
                removed,
            } => shared.emit(MessengerEvent::DevicesChanged {
                account,
                added,
                removed,
            }),
            Event::IdentityWarning { account } => {
                shared.emit(MessengerEvent::IdentityWarning { account });
            }
            Event::GroupsChanged => shared.emit(MessengerEvent::GroupsChanged),
            Event::CaughtUp => shared.emit(MessengerEvent::CaughtUp),
            Event::Undecryptable { from, group } => shared.emit(MessengerEvent::Undecryptable {
                conversation: group.map_or(Conversation::Direct(from.account), Conversation::Group),
                from,
            }),
            Event::StoreFailed => shared.emit(MessengerEvent::StoreFailed),
        }
    }
}
