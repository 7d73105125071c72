//! The records and enums that cross the boundary, and their conversion to and from the
//! messenger's types. Ids cross as lowercase hex and are validated on the way in.

use hush_client::MessengerEvent;
use hush_client::messenger::MessageId;
use hush_core::keys::AccountId;
use hush_core::sender_key::GroupId;
use hush_proto::app::{StoredMessage, app_message};

use crate::error::HushError;

/// Length of an account id in bytes (64 hex digits).
pub(crate) const ACCOUNT_ID_LEN: usize = 32;
/// Length of a group id in bytes (64 hex digits).
pub(crate) const GROUP_ID_LEN: usize = 32;
/// Length of a message id in bytes (32 hex digits).
pub(crate) const MESSAGE_ID_LEN: usize = 16;

fn hex_exact<const N: usize>(s: &str, what: &str) -> Result<[u8; N], HushError> {
    let s = s.trim();
    if s.len() != 2 * N {
        return Err(HushError::invalid(format!(
            "{what} must be {} hex digits, got {} characters",
            2 * N,
            s.len()
        )));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| HushError::invalid(format!("{what} is not hex")))?;
    Ok(out)
}

/// Parses an account id (64 hex digits, a valid account key).
pub(crate) fn parse_account(s: &str) -> Result<AccountId, HushError> {
    let b = hex_exact::<ACCOUNT_ID_LEN>(s, "account id")?;
    AccountId::from_bytes(&b)
        .map_err(|_| HushError::invalid("account id is not a valid account key"))
}

/// Parses a group id (64 hex digits).
pub(crate) fn parse_group(s: &str) -> Result<GroupId, HushError> {
    Ok(GroupId(hex_exact::<GROUP_ID_LEN>(s, "group id")?))
}

/// Parses a message id (32 hex digits).
pub(crate) fn parse_message_id(s: &str) -> Result<MessageId, HushError> {
    hex_exact::<MESSAGE_ID_LEN>(s, "message id")
}

/// Parses a list of account ids.
pub(crate) fn parse_accounts(ids: &[String]) -> Result<Vec<AccountId>, HushError> {
    ids.iter().map(|s| parse_account(s)).collect()
}

/// A conversation: with one account (all its devices), or a group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum Conversation {
    /// With one account.
    Direct {
        /// The contact's account id (hex).
        account_id: String,
    },
    /// A group.
    Group {
        /// The group id (hex).
        group_id: String,
    },
}

impl Conversation {
    pub(crate) fn parse(&self) -> Result<hush_client::Conversation, HushError> {
        Ok(match self {
            Self::Direct { account_id } => {
                hush_client::Conversation::Direct(parse_account(account_id)?)
            }
            Self::Group { group_id } => hush_client::Conversation::Group(parse_group(group_id)?),
        })
    }
}

impl From<hush_client::Conversation> for Conversation {
    fn from(c: hush_client::Conversation) -> Self {
        match c {
            hush_client::Conversation::Direct(a) => Self::Direct {
                account_id: hex::encode(a.as_bytes()),
            },
            hush_client::Conversation::Group(g) => Self::Group {
                group_id: hex::encode(g.0),
            },
        }
    }
}

/// What a message holds.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum MessageContent {
    /// A text, possibly answering another message.
    Text {
        /// The text.
        body: String,
        /// The id of the message answered.
        reply_to: Option<String>,
    },
    /// A reaction to another message (an empty emoji removes it).
    Reaction {
        /// The message reacted to.
        target: String,
        /// The emoji.
        emoji: String,
    },
    /// A file; fetch it with `download_attachment` or `save_attachment`.
    Attachment {
        /// The file name the sender gave.
        name: String,
        /// Its MIME type.
        mime: String,
        /// Its size in bytes.
        size: u64,
        /// A caption.
        caption: String,
    },
    /// A kind of message this version does not show.
    Unsupported,
}

/// Where an outgoing message is, or whether an incoming one was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum MessageStatus {
    /// Outgoing, stored here, not yet on the relay: the outbox sends it, in order, as soon as
    /// the relay can be reached (show a clock; nothing for the user to do).
    Waiting,
    /// Outgoing, on the relay.
    Sent,
    /// Outgoing, a device of every recipient account has it.
    Delivered,
    /// Outgoing, every recipient account has read it.
    Read,
    /// Outgoing, refused for good (see `HushMessage.failure`); `retry_send` tries again.
    Failed,
    /// Incoming, not yet marked read.
    Unread,
    /// Incoming, marked read.
    Seen,
}

impl From<hush_client::messenger::MessageStatus> for MessageStatus {
    fn from(s: hush_client::messenger::MessageStatus) -> Self {
        use hush_client::messenger::MessageStatus as S;
        match s {
            S::Waiting => Self::Waiting,
            S::Failed => Self::Failed,
            S::Sent => Self::Sent,
            S::Delivered => Self::Delivered,
            S::Read => Self::Read,
        }
    }
}

/// A message of a conversation, as stored in history.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct HushMessage {
    /// Its id (hex), the same on every device.
    pub id: String,
    /// The conversation.
    pub conversation: Conversation,
    /// The sender's account id (hex).
    pub sender_account: String,
    /// The sender's device.
    pub sender_device: u32,
    /// The username the sender *claims*, unverified: anyone can claim any name. Never show it as
    /// the sender's name as it is: show it only once `lookup_username` of this name returned
    /// `sender_account` (the relay's directory answer, verified against the account key's
    /// signature), or mark it as unverified.
    pub unverified_sender_name: String,
    /// Sent by this account (from this or another of its devices).
    pub outgoing: bool,
    /// The sender's clock when sent (ms since 1970).
    pub sent_at_ms: u64,
    /// When this device stored it (ms since 1970).
    pub received_at_ms: u64,
    /// What it holds.
    pub content: MessageContent,
    /// Sending, sent, delivered, read (outgoing) or unread, seen (incoming).
    pub status: MessageStatus,
    /// Accounts that confirmed delivery (outgoing only).
    pub delivered_to: Vec<String>,
    /// Accounts that read it (outgoing only).
    pub read_by: Vec<String>,
    /// A message of this sender is missing before this one.
    pub gap_before: bool,
    /// Outgoing and `Failed`: why it was refused, for the user.
    pub failure: Option<String>,
    /// Outgoing group message: the member accounts it has not reached (show "not delivered
    /// to ..."); those not `permanent` are tried again by the client on each connection.
    pub undelivered: Vec<Undelivered>,
}

/// A member account a group message has not reached.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Undelivered {
    /// The account id (hex).
    pub account: String,
    /// Why, for the user.
    pub reason: String,
    /// Refused for good: the client does not try again by itself (`retry_send` does).
    pub permanent: bool,
}

fn opt_hex(b: &[u8]) -> Option<String> {
    (!b.is_empty()).then(|| hex::encode(b))
}

pub(crate) fn message(conversation: Conversation, m: &StoredMessage) -> HushMessage {
    let app = m.message.as_ref();
    let content = match app.and_then(|a| a.kind.as_ref()) {
        Some(app_message::Kind::Text(t)) => MessageContent::Text {
            body: t.body.clone(),
            reply_to: opt_hex(&t.reply_to),
        },
        Some(app_message::Kind::Reaction(r)) => MessageContent::Reaction {
            target: hex::encode(&r.target),
            emoji: r.emoji.clone(),
        },
        Some(app_message::Kind::Attachment(a)) => MessageContent::Attachment {
            name: a.name.clone(),
            mime: a.mime.clone(),
            size: a.size,
            caption: a.caption.clone(),
        },
        _ => MessageContent::Unsupported,
    };
    let status = match hush_client::messenger::status_of(m) {
        Some(s) => s.into(),
        None if m.read => MessageStatus::Seen,
        None => MessageStatus::Unread,
    };
    HushMessage {
        id: app.map(|a| hex::encode(&a.message_id)).unwrap_or_default(),
        conversation,
        sender_account: hex::encode(&m.sender_account),
        sender_device: m.sender_device,
        unverified_sender_name: app.map(|a| a.sender_name.clone()).unwrap_or_default(),
        outgoing: m.outgoing,
        sent_at_ms: app.map_or(0, |a| a.sent_at),
        received_at_ms: m.received_at,
        content,
        status,
        delivered_to: m.delivered_to.iter().map(hex::encode).collect(),
        read_by: m.read_by.iter().map(hex::encode).collect(),
        gap_before: m.gap_before,
        failure: (!m.failed.is_empty()).then(|| m.failed.clone()),
        undelivered: m
            .undelivered
            .iter()
            .map(|u| Undelivered {
                account: hex::encode(&u.account),
                reason: u.reason.clone(),
                permanent: u.permanent,
            })
            .collect(),
    }
}

/// What the client reports to its listener.
// Crosses the FFI by value (a boxed variant would not); one event at a time.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum HushEvent {
    /// A new message (incoming, or sent from another device of this account), already stored.
    Message {
        /// The message.
        message: HushMessage,
    },
    /// Messages this account sent moved to a further status (sent, delivered to every
    /// recipient, read by every recipient): update their ticks. Once per step, never
    /// backwards, however many devices confirm.
    Status {
        /// Where.
        conversation: Conversation,
        /// The messages.
        message_ids: Vec<String>,
        /// Where they stand now.
        status: MessageStatus,
    },
    /// A contact started or stopped typing.
    Typing {
        /// The contact's account id.
        account: String,
        /// The contact's device.
        device: u32,
        /// Where.
        conversation: Conversation,
        /// Started (true) or stopped.
        typing: bool,
    },
    /// A contact's presence.
    Presence {
        /// The contact's account id.
        account: String,
        /// Online now.
        online: bool,
        /// Last seen (ms since 1970).
        last_seen_ms: u64,
    },
    /// Connected to the relay, or the connection was lost (the client reconnects by itself).
    Connection {
        /// Connected now.
        connected: bool,
    },
    /// A message this device stored was refused for good (not a member any more, unknown
    /// account, too large): show it as failed; `retry_send` tries again.
    SendFailed {
        /// Where.
        conversation: Conversation,
        /// Which message.
        message_id: String,
        /// Why, for the user.
        reason: String,
    },
    /// A group message this device sent has not reached some member accounts (or, with an
    /// empty list, has now reached all it had missed): see `HushMessage.undelivered`.
    Undelivered {
        /// Where.
        conversation: Conversation,
        /// Which message.
        message_id: String,
        /// The member accounts it has not reached.
        accounts: Vec<Undelivered>,
    },
    /// A contact's devices changed: new keys may read what is sent to them; offer to compare
    /// safety numbers.
    DevicesChanged {
        /// The contact's account id.
        account: String,
        /// Devices added or re-keyed.
        added: Vec<u32>,
        /// Devices removed.
        removed: Vec<u32>,
    },
    /// A contact's device list did not verify or conflicts with an earlier one: warn the user
    /// and ask them to compare safety numbers.
    IdentityWarning {
        /// The contact's account id.
        account: String,
    },
    /// A group was joined or changed: call `groups()` again.
    GroupsChanged,
    /// The relay serves this device a group log that disagrees with what a member reported
    /// (`forked` false: changes withheld from this device; true: another history): warn that
    /// the group's membership shown may be out of date.
    GroupLogMismatch {
        /// The group id (hex).
        group: String,
        /// Another history, not just a shorter one.
        forked: bool,
    },
    /// Everything the relay held for this device while it was away has been taken in (the
    /// events before this one): history and receipts are up to date. After a push wake-up,
    /// this is when the app may go back to sleep.
    CaughtUp,
    /// This device was removed from its account: it stops; delete the profile.
    Revoked,
    /// A message from a contact could not be decrypted and was dropped: show "a message could
    /// not be decrypted" in the conversation.
    Undecryptable {
        /// Where (the sender's direct conversation, or the group).
        conversation: Conversation,
        /// The sender's account id.
        account: String,
        /// The sender's device.
        device: u32,
    },
    /// The local store failed and could not be reopened: the client stopped receiving. Restart
    /// the app.
    StoreFailed,
    /// Another device of this account sent its username and contacts (`sync_contacts`): keep
    /// them, so that this device shows the same names.
    ContactsSynced {
        /// The account's username (empty if none).
        name: String,
        /// The contacts.
        contacts: Vec<Contact>,
    },
    /// A history transfer from another device of this account is downloading.
    HistoryProgress {
        /// Bytes received.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// A history transfer from another device of this account was taken in.
    HistoryImported {
        /// Messages added to the history.
        messages: u64,
        /// Groups this device is in now.
        groups: u64,
    },
}

/// A contact: a username and the account it names.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Contact {
    /// The username.
    pub username: String,
    /// The account id (hex).
    pub account_id: String,
}

impl From<MessengerEvent> for HushEvent {
    fn from(e: MessengerEvent) -> Self {
        match e {
            MessengerEvent::Message {
                conversation,
                message: m,
            } => Self::Message {
                message: message(conversation.into(), &m),
            },
            MessengerEvent::Status {
                conversation,
                message_ids,
                status,
            } => Self::Status {
                conversation: conversation.into(),
                message_ids: message_ids.iter().map(hex::encode).collect(),
                status: status.into(),
            },
            MessengerEvent::Typing {
                from,
                conversation,
                typing,
            } => Self::Typing {
                account: hex::encode(from.account.as_bytes()),
                device: from.device_id,
                conversation: conversation.into(),
                typing,
            },
            MessengerEvent::Presence {
                from,
                online,
                last_seen,
            } => Self::Presence {
                account: hex::encode(from.as_bytes()),
                online,
                last_seen_ms: last_seen,
            },
            MessengerEvent::Connection(connected) => Self::Connection { connected },
            MessengerEvent::Revoked => Self::Revoked,
            MessengerEvent::DevicesChanged {
                account,
                added,
                removed,
            } => Self::DevicesChanged {
                account: hex::encode(account.as_bytes()),
                added,
                removed,
            },
            MessengerEvent::IdentityWarning { account } => Self::IdentityWarning {
                account: hex::encode(account.as_bytes()),
            },
            MessengerEvent::GroupsChanged => Self::GroupsChanged,
            MessengerEvent::GroupLogMismatch { group, forked } => Self::GroupLogMismatch {
                group: hex::encode(group.0),
                forked,
            },
            MessengerEvent::CaughtUp => Self::CaughtUp,
            MessengerEvent::SendFailed {
                conversation,
                message_id,
                reason,
            } => Self::SendFailed {
                conversation: conversation.into(),
                message_id: hex::encode(message_id),
                reason,
            },
            MessengerEvent::Undecryptable { conversation, from } => Self::Undecryptable {
                conversation: conversation.into(),
                account: hex::encode(from.account.as_bytes()),
                device: from.device_id,
            },
            MessengerEvent::StoreFailed => Self::StoreFailed,
            MessengerEvent::HistoryProgress { done, total } => {
                Self::HistoryProgress { done, total }
            }
            MessengerEvent::HistoryImported(r) => Self::HistoryImported {
                messages: r.messages as u64,
                groups: r.groups as u64,
            },
            MessengerEvent::ContactsSynced { name, contacts } => Self::ContactsSynced {
                name,
                contacts: contacts
                    .into_iter()
                    .map(|(username, a)| Contact {
                        username,
                        account_id: hex::encode(a.as_bytes()),
                    })
                    .collect(),
            },
            MessengerEvent::Undelivered {
                conversation,
                message_id,
                accounts,
            } => Self::Undelivered {
                conversation: conversation.into(),
                message_id: hex::encode(message_id),
                accounts: accounts
                    .into_iter()
                    .map(|f| Undelivered {
                        account: hex::encode(f.account.as_bytes()),
                        reason: f.reason,
                        permanent: f.permanent,
                    })
                    .collect(),
            },
        }
    }
}

/// A group this device is in.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct GroupInfo {
    /// Its id (hex).
    pub id: String,
    /// Its name.
    pub name: String,
}

/// This device and its account.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct AccountInfo {
    /// The account id (hex): what contacts use to reach this account.
    pub account_id: String,
    /// This device's id within the account (1 for the first device).
    pub device_id: u32,
}

/// An account restored from its backup (`restore_account`): this new device, and what came back.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct RestoredAccount {
    /// The account id (hex).
    pub account_id: String,
    /// This new device's id.
    pub device_id: u32,
    /// Messages restored to the history.
    pub messages: u64,
    /// Groups this device is in.
    pub groups: u64,
    /// The account's username in the backup (empty if none): claim nothing, it is still held.
    pub name: String,
    /// The contacts in the backup.
    pub contacts: Vec<Contact>,
}

/// A safety number with a contact: equal on both sides exactly when neither was tampered with.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct SafetyNumber {
    /// 60 digits.
    pub digits: String,
    /// The digits in groups of five, for display.
    pub display: String,
    /// What to show as a QR code for the contact to scan.
    pub qr_payload: Vec<u8>,
}

/// How to reach the relay and where this device keeps its data.
#[derive(uniffi::Record)]
pub struct ClientConfig {
    /// A directory private to the app (created if missing).
    pub profile_dir: String,
    /// 32 random bytes kept in the platform keystore (Android Keystore-wrapped, iOS Keychain);
    /// everything in the profile is encrypted under it.
    pub at_rest_key: Vec<u8>,
    /// The relay's address, `IP:PORT` (UDP).
    pub relay_address: String,
    /// The SHA-256 fingerprint (hex) of the relay's certificate.
    pub relay_pin: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_the_wrong_length_or_not_hex_are_invalid_arguments() {
        for (s, needle) in [
            ("", "64 hex digits"),
            ("abcd", "64 hex digits"),
            (&"zz".repeat(32), "not hex"),
            (&"00".repeat(33), "64 hex digits"),
            ("é".repeat(32).as_str(), "not hex"),
            ("é".repeat(31).as_str(), "64 hex digits"),
        ] {
            let e = parse_account(s).unwrap_err();
            assert!(matches!(e, HushError::InvalidArgument(_)), "{e:?}");
            assert!(e.to_string().contains(needle), "{e}");
        }
        // Right length, but not an account key.
        assert!(matches!(
            parse_account(&"00".repeat(32)),
            Err(HushError::InvalidArgument(_))
        ));
        assert!(parse_group(&"ab".repeat(31)).is_err());
        assert_eq!(parse_group(&"AB".repeat(32)).unwrap().0, [0xab; 32]);
        assert_eq!(parse_message_id(&"01".repeat(16)).unwrap(), [1; 16]);
        assert!(parse_message_id(&"01".repeat(17)).is_err());
    }

    #[test]
    #[allow(clippy::field_reassign_with_default)]
    fn messages_show_their_status_and_content() {
        // (Records wipe themselves when dropped, so they are built field by field.)
        let mut app = hush_proto::app::AppMessage::default();
        app.message_id = vec![7; 16];
        app.sent_at = 42;
        app.sender_name = "alice".into();
        app.kind = Some(app_message::Kind::Text(hush_proto::app::Text {
            body: "hi".into(),
            reply_to: Vec::new(),
        }));
        let mut m = StoredMessage::default();
        m.message = Some(app);
        m.sender_account = vec![1; 32];
        m.sender_device = 3;
        m.outgoing = true;
        let conv = Conversation::Group {
            group_id: "cd".repeat(32),
        };
        let shown = message(conv.clone(), &m);
        assert_eq!(shown.id, "07".repeat(16));
        assert_eq!(shown.status, MessageStatus::Waiting);
        assert_eq!(
            shown.content,
            MessageContent::Text {
                body: "hi".into(),
                reply_to: None
            }
        );
        m.sent = true;
        assert_eq!(message(conv.clone(), &m).status, MessageStatus::Sent);
        assert!(message(conv.clone(), &m).undelivered.is_empty());
        m.undelivered.push(hush_proto::app::Undelivered {
            account: vec![4; 32],
            reason: "queue full".into(),
            permanent: false,
        });
        assert_eq!(
            message(conv.clone(), &m).undelivered,
            vec![Undelivered {
                account: "04".repeat(32),
                reason: "queue full".into(),
                permanent: false,
            }]
        );
        m.delivered_to.push(vec![2; 32]);
        assert_eq!(message(conv.clone(), &m).status, MessageStatus::Delivered);
        m.read_by.push(vec![2; 32]);
        let shown = message(conv.clone(), &m);
        assert_eq!(shown.status, MessageStatus::Read);
        assert_eq!(shown.read_by, vec!["02".repeat(32)]);
        m.outgoing = false;
        assert_eq!(message(conv.clone(), &m).status, MessageStatus::Unread);
        m.read = true;
        assert_eq!(message(conv.clone(), &m).status, MessageStatus::Seen);
        m.message = None;
        let shown = message(conv, &m);
        assert_eq!(shown.content, MessageContent::Unsupported);
        assert!(shown.id.is_empty());
    }
}
