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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hush_core::keys::{AccountId, DeviceAddress};
use hush_core::sender_key::GroupId;
use hush_proto::app::{AppMessage, StoredMessage, app_message};
use rand::RngExt;
use tokio::sync::mpsc;

use crate::engine::{Engine, EngineConfig, Event, GroupFailure, now_ms, rng};
use crate::error::ClientError;

mod attachments;
mod backup;
mod compose;
mod history;
mod lifecycle;
mod outbox;
mod receive;
mod status;

pub use attachments::MAX_ATTACHMENT;
pub use backup::{
    AppState, BACKUP_MESSAGES_PER_CONVERSATION, BACKUP_REFRESH_INTERVAL, BackupReport,
    MAX_TRANSFER_PER_CONVERSATION, Restored,
};
use history::{History, conv_part, open_history};
pub use lifecycle::WakeReport;
use receive::pump;
pub use status::{MessageStatus, status_of};

/// At-rest subkey label of the history store (`history/`), distinct from the device store's.
pub const HISTORY_STORE_LABEL: &[u8] = b"/history";

/// First wait before a message whose storing failed (a history store error) is processed
/// again; doubles on every try.
const STORE_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(250);
/// Tries of storing one received message before it is left in the engine's inbox, to be
/// offered again on the next start.
const STORE_ATTEMPTS: u32 = 8;

/// Longest text message, in bytes.
pub const MAX_TEXT: usize = 32 * 1024;
/// Most contacts one [`Messenger::sync_contacts`] carries (and one received is taken from).
pub const MAX_SYNCED_CONTACTS: usize = 5_000;

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
    /// The relay serves this device a group log that disagrees with what a member reported:
    /// behind it (`forked` false: entries withheld from this device) or another history
    /// (`forked` true). Warn the user that the group's membership shown may be out of date.
    GroupLogMismatch {
        /// The group.
        group: GroupId,
        /// Another history, not just a shorter one.
        forked: bool,
    },
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
    /// A history transfer from another device of this account is downloading: bytes done of
    /// the total.
    HistoryProgress {
        /// Bytes received.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// A history transfer from another device of this account was taken in: its messages are
    /// in the history, its groups known; the application keeps its contacts and settings.
    HistoryImported(Box<Restored>),
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
            Self::GroupLogMismatch { group, forked } => f
                .debug_struct("GroupLogMismatch")
                .field("group", group)
                .field("forked", forked)
                .finish(),
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
            Self::HistoryProgress { done, total } => f
                .debug_struct("HistoryProgress")
                .field("done", done)
                .field("total", total)
                .finish(),
            Self::HistoryImported(r) => f
                .debug_struct("HistoryImported")
                .field("messages", &r.messages)
                .field("groups", &r.groups)
                .finish_non_exhaustive(),
        }
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rng().fill(&mut b[..]);
    b
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
    /// One pass over the owed read receipts at a time (so none goes out twice).
    telling: tokio::sync::Mutex<()>,
    /// A background teller of owed read receipts runs (see [`Shared::tell_read_when_connected`]),
    /// and whether more were owed since it started.
    teller: AtomicBool,
    teller_again: AtomicBool,
    /// What backups and history transfers carry besides the history (the application's).
    app_state: Mutex<AppState>,
    /// One backup at a time.
    backing_up: tokio::sync::Mutex<()>,
    /// Bumped once the engine's `CaughtUp` is handled: every message delivered before it is
    /// stored and its delivery receipt sent (or tried).
    caught_up: tokio::sync::watch::Sender<u64>,
    /// Messages from others stored so far (what a wake-up reports).
    received: AtomicU64,
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
        let profile = cfg.profile.clone();
        if crate::profile::has_account(&profile) {
            return Err(ClientError::AccountExists);
        }
        let started = async {
            let history = open_history(&cfg)?;
            let (engine, rx) = Engine::create_account(cfg).await?;
            Self::start(engine, rx, history)
        }
        .await;
        if started.is_err() {
            crate::profile::discard_new(&profile);
        }
        started
    }

    /// Sets up a new device of an existing account from a link code (see
    /// [`Engine::offer_link`]).
    pub async fn link(
        cfg: EngineConfig,
        code: &str,
    ) -> Result<(Self, mpsc::UnboundedReceiver<MessengerEvent>), ClientError> {
        let profile = cfg.profile.clone();
        if crate::profile::has_account(&profile) {
            return Err(ClientError::AccountExists);
        }
        let started = async {
            let history = open_history(&cfg)?;
            let (engine, rx) = Engine::link(cfg, code).await?;
            Self::start(engine, rx, history)
        }
        .await;
        if started.is_err() {
            crate::profile::discard_new(&profile);
        }
        started
    }

    /// Opens an existing profile.
    pub fn open(
        cfg: EngineConfig,
    ) -> Result<(Self, mpsc::UnboundedReceiver<MessengerEvent>), ClientError> {
        if !crate::profile::has_account(&cfg.profile) {
            return Err(ClientError::NoAccount);
        }
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
            telling: tokio::sync::Mutex::new(()),
            teller: AtomicBool::new(false),
            teller_again: AtomicBool::new(false),
            app_state: Mutex::new(AppState::default()),
            backing_up: tokio::sync::Mutex::new(()),
            caught_up: tokio::sync::watch::channel(0).0,
            received: AtomicU64::new(0),
        });
        shared
            .outbox_sends
            .spawn(backup::refresher(Arc::clone(&shared)));
        let task = tokio::spawn(pump(Arc::clone(&shared), rx));
        // What an earlier run left in the outbox waits for the connection in order.
        shared.kick_all();
        Ok((Self { shared, task }, out))
    }

    /// The engine underneath (connection state, groups).
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// Registers a WebPush subscription (a UnifiedPush distributor's endpoint with its `p256dh`
    /// key and `auth` secret) as this device's push endpoint: see
    /// [`Engine::register_web_push`].
    pub async fn register_web_push(
        &self,
        url: &str,
        p256dh: &[u8],
        auth: &[u8],
    ) -> Result<(), ClientError> {
        self.shared
            .engine
            .register_web_push(url, p256dh, auth)
            .await
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

    /// The stored message with id `id`, and its conversation.
    pub fn message(
        &self,
        id: &MessageId,
    ) -> Result<Option<(Conversation, StoredMessage)>, ClientError> {
        Ok(self.shared.lock_history()?.get(id))
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

impl Shared {
    /// Refuses a group this device is not in: a message to it would stay in history, unsendable.
    fn check_conversation(&self, conv: &Conversation) -> Result<(), ClientError> {
        match conv {
            Conversation::Group(g) if !self.engine.groups()?.iter().any(|(id, _)| id == g) => {
                Err(ClientError::NotInGroup)
            }
            _ => Ok(()),
        }
    }

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
}
