//! What the user reads: events, messages and errors in words.

use std::path::Path;
use std::sync::OnceLock;

use hush_client::messenger::{MessageId, MessageStatus, status_of};
use hush_client::{ClientError, Conversation, Messenger, MessengerEvent};
use hush_proto::app::{StoredMessage, app_message};
use hush_proto::relay_api::ErrorCode;

use crate::contacts::name_of;
use crate::files::{human_size, safe_name, short_id};
use crate::groups::group_label;

/// A user-facing explanation of an engine error.
pub(crate) fn explain(e: &ClientError) -> String {
    match e {
        ClientError::Unreachable(why) => format!("relay unreachable ({why})"),
        ClientError::Revoked => {
            "this device was removed from the account; link it again (`hush link`) to use it".into()
        }
        ClientError::PinMismatch(addr) => format!(
            "the relay's certificate at {addr} does not match the pinned fingerprint: check --pin \
             against the fingerprint hush-relay prints"
        ),
        ClientError::ProfileInUse(dir) => {
            format!("the profile {dir} is open in another hush process; close that one first")
        }
        ClientError::Disconnected | ClientError::Timeout => {
            "relay unreachable: no connection, try again".into()
        }
        ClientError::Refused(r) => match r.code {
            ErrorCode::RateLimited => format!(
                "rate limited by the relay: try again in {} ms",
                r.retry_after_ms
            ),
            ErrorCode::NotFound => "unknown user".into(),
            ErrorCode::AccountExists => "this account already exists on the relay".into(),
            _ => format!("the relay refused: {}", r.message),
        },
        ClientError::Core(hush_core::Error::Protocol(hush_core::ProtocolError::DeviceListConflict(_))) => {
            "identity changed: the contact's device list conflicts with the one seen before; verify them (`hush verify`)".into()
        }
        ClientError::Invalid(why) => why.clone(),
        ClientError::LinkCodeUnknown => "no device offers this link code: it was used already, it \
             expired (codes last 10 minutes), or it is mistyped; run `hush link` on the account's \
             first device for a new one"
            .into(),
        other => other.to_string(),
    }
}

pub(crate) fn text_of(m: &StoredMessage) -> String {
    match m.message.as_ref().and_then(|a| a.kind.clone()) {
        Some(app_message::Kind::Text(t)) => t.body.clone(),
        Some(app_message::Kind::Attachment(a)) => format!(
            "[file {} ({}): hush save {}]",
            safe_name(&a.name),
            human_size(a.size),
            m.message
                .as_ref()
                .map(|am| short_id(&am.message_id))
                .unwrap_or_default()
        ),
        Some(app_message::Kind::Reaction(r)) => format!("[reaction {}]", r.emoji),
        _ => String::new(),
    }
}

/// A message's text cut to fit in a status line, quoted.
fn quoted(m: &StoredMessage) -> String {
    const MAX: usize = 40;
    let t = text_of(m);
    if t.chars().count() <= MAX {
        format!("\"{t}\"")
    } else {
        format!("\"{}…\"", t.chars().take(MAX).collect::<String>())
    }
}

/// The local time zone's offset, learned once at start (before any thread exists).
static LOCAL_OFFSET: OnceLock<time::UtcOffset> = OnceLock::new();

/// Learns the local time zone's offset; called from `main` before the runtime starts.
pub(crate) fn learn_local_offset() {
    let offset = time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC);
    let _ = LOCAL_OFFSET.set(offset);
}

/// A time (ms since 1970) as people read it: `14:05` today, `2026-12-05 14:05` otherwise.
pub(crate) fn when(ms: u64) -> String {
    let offset = LOCAL_OFFSET.get().copied().unwrap_or(time::UtcOffset::UTC);
    let nanos = i128::from(ms).saturating_mul(1_000_000);
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp_nanos(nanos) else {
        return "?".into();
    };
    let at = at.to_offset(offset);
    let today = time::OffsetDateTime::now_utc().to_offset(offset).date();
    if at.date() == today {
        format!("{:02}:{:02}", at.hour(), at.minute())
    } else {
        format!(
            "{}-{:02}-{:02} {:02}:{:02}",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute()
        )
    }
}

/// The words for a conversation: the contact's name, or `group NAME`.
pub(crate) fn conversation_label(m: &Messenger, dir: &Path, conv: &Conversation) -> String {
    match conv {
        Conversation::Direct(a) => name_of(dir, a.as_bytes()),
        Conversation::Group(g) => format!("group {}", group_label(m, g)),
    }
}

/// How a message this account sent stands, in words.
pub(crate) fn status_words(s: MessageStatus) -> &'static str {
    match s {
        MessageStatus::Waiting => "waiting",
        MessageStatus::Failed => "not sent",
        MessageStatus::Sent => "sent",
        MessageStatus::Delivered => "delivered",
        MessageStatus::Read => "read",
    }
}

/// One stored message as a line of history: `[14:05] bob: hi`, `[14:06] me: hello (read)`.
pub(crate) fn history_line(dir: &Path, msg: &StoredMessage) -> String {
    let at = msg.message.as_ref().map_or(msg.received_at, |a| a.sent_at);
    let who = if msg.outgoing {
        "me".to_owned()
    } else {
        name_of(dir, &msg.sender_account)
    };
    let state = match status_of(msg) {
        Some(MessageStatus::Failed) => format!(" (not sent: {})", msg.failed),
        Some(s) => format!(" ({})", status_words(s)),
        None => String::new(),
    };
    format!("[{}] {who}: {}{state}", when(at), text_of(msg))
}

/// Where a status line puts the messages it is about: `to bob`, `in group friends`.
fn status_line(
    m: &Messenger,
    dir: &Path,
    conv: &Conversation,
    ids: &[MessageId],
    s: MessageStatus,
) -> Option<String> {
    let last = ids
        .last()
        .and_then(|id| m.message(id).ok().flatten())
        .map(|(_, s)| s)?;
    let whom = match (conv, s) {
        (Conversation::Direct(a), MessageStatus::Read) => {
            format!("read by {}", name_of(dir, a.as_bytes()))
        }
        (Conversation::Direct(a), _) => {
            format!("{} to {}", status_words(s), name_of(dir, a.as_bytes()))
        }
        (Conversation::Group(g), MessageStatus::Read) => {
            format!("read by everyone in group {}", group_label(m, g))
        }
        (Conversation::Group(g), MessageStatus::Delivered) => {
            format!("delivered to everyone in group {}", group_label(m, g))
        }
        (Conversation::Group(g), _) => {
            format!("{} to group {}", status_words(s), group_label(m, g))
        }
    };
    Some(if ids.len() == 1 {
        format!("{whom}: {}", quoted(&last))
    } else {
        format!("{whom}: {} messages, the last {}", ids.len(), quoted(&last))
    })
}

/// What an event says to the user, as lines (none for what is not worth a line).
pub(crate) fn describe(m: &Messenger, dir: &Path, ev: &MessengerEvent) -> Vec<String> {
    let one = |s: String| vec![s];
    match ev {
        MessengerEvent::Message {
            message,
            conversation: Conversation::Group(g),
        } if !message.outgoing => one(format!(
            "message from {} in group {}: {}",
            name_of(dir, &message.sender_account),
            group_label(m, g),
            text_of(message)
        )),
        MessengerEvent::Message { message, .. } if !message.outgoing => one(format!(
            "message from {}: {}",
            name_of(dir, &message.sender_account),
            text_of(message)
        )),
        MessengerEvent::Message {
            message,
            conversation,
        } => one(format!(
            "sent from another device to {}: {}",
            conversation_label(m, dir, conversation),
            text_of(message)
        )),
        MessengerEvent::Status {
            conversation,
            message_ids,
            status,
        } => status_line(m, dir, conversation, message_ids, *status)
            .into_iter()
            .collect(),
        MessengerEvent::Typing {
            from,
            typing: true,
            conversation: Conversation::Group(g),
        } => one(format!(
            "{} is typing in group {}…",
            name_of(dir, from.account.as_bytes()),
            group_label(m, g)
        )),
        MessengerEvent::Typing {
            from, typing: true, ..
        } => one(format!(
            "{} is typing…",
            name_of(dir, from.account.as_bytes())
        )),
        MessengerEvent::Typing { .. } => Vec::new(),
        MessengerEvent::Presence {
            from, online: true, ..
        } => one(format!("{} is online", name_of(dir, from.as_bytes()))),
        MessengerEvent::Presence {
            from, last_seen, ..
        } => one(format!(
            "{} went offline (last seen {})",
            name_of(dir, from.as_bytes()),
            when(*last_seen)
        )),
        MessengerEvent::Connection(true) => one("connected".into()),
        MessengerEvent::Connection(false) => one("disconnected; reconnecting".into()),
        MessengerEvent::Revoked => one(
            "this device was removed from the account; link it again (`hush link`) to use it"
                .into(),
        ),
        MessengerEvent::DevicesChanged { account, added, .. } if !added.is_empty() => one(format!(
            "warning: {} has new or changed devices {:?}; compare safety numbers (`hush verify {}`)",
            name_of(dir, account.as_bytes()),
            added,
            name_of(dir, account.as_bytes()),
        )),
        MessengerEvent::DevicesChanged {
            account, removed, ..
        } => one(format!(
            "{} removed devices {:?}",
            name_of(dir, account.as_bytes()),
            removed
        )),
        MessengerEvent::GroupsChanged => one("your groups changed (`hush group list`)".into()),
        MessengerEvent::GroupLogMismatch { group, forked } => one(format!(
            "warning: the relay {} group {}: its members shown may be out of date",
            if *forked {
                "shows this device another history of"
            } else {
                "withholds changes of"
            },
            hex::encode(&group.0[..4])
        )),
        MessengerEvent::CaughtUp => Vec::new(),
        MessengerEvent::SendFailed {
            message_id,
            reason,
            conversation,
        } => {
            let what = m
                .message(message_id)
                .ok()
                .flatten()
                .map_or_else(String::new, |(_, s)| format!(" {}", quoted(&s)));
            one(format!(
                "not sent to {}:{what} ({reason})",
                conversation_label(m, dir, conversation)
            ))
        }
        MessengerEvent::Undecryptable { from, .. } => one(format!(
            "a message from {} could not be decrypted; it was asked for again",
            name_of(dir, from.account.as_bytes())
        )),
        MessengerEvent::StoreFailed => one("the local store failed; restart `hush`".into()),
        MessengerEvent::Undelivered {
            message_id,
            accounts,
            conversation,
        } => {
            let what = m
                .message(message_id)
                .ok()
                .flatten()
                .map_or_else(String::new, |(_, s)| quoted(&s));
            accounts
                .iter()
                .map(|f| {
                    format!(
                        "not delivered to {} in {}: {what} ({}{})",
                        name_of(dir, f.account.as_bytes()),
                        conversation_label(m, dir, conversation),
                        f.reason,
                        if f.permanent { "" } else { "; will try again" }
                    )
                })
                .collect()
        }
        MessengerEvent::ContactsSynced { contacts, .. } => one(format!(
            "took this account's name and {} contact{} from its other device",
            contacts.len(),
            if contacts.len() == 1 { "" } else { "s" }
        )),
        MessengerEvent::HistoryProgress { done, total } => history_progress(*done, *total),
        MessengerEvent::HistoryImported(r) => one(format!(
            "took {} message{} of history and {} group{} from this account's other device",
            r.messages,
            if r.messages == 1 { "" } else { "s" },
            r.groups,
            if r.groups == 1 { "" } else { "s" }
        )),
        MessengerEvent::IdentityWarning { account } => one(format!(
            "WARNING: the identity of {} could not be verified (conflicting or forged device list); do not trust new messages until you compare safety numbers",
            name_of(dir, account.as_bytes())
        )),
    }
}

/// The quarters of the history transfer under way already told (0 to 4): each is told once.
static HISTORY_TOLD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A history transfer's progress: its start with its size, then each quarter once.
fn history_progress(done: u64, total: u64) -> Vec<String> {
    use std::sync::atomic::Ordering::Relaxed;
    if done == 0 {
        HISTORY_TOLD.store(0, Relaxed);
        return vec![format!(
            "receiving history from this account's other device ({})",
            human_size(total)
        )];
    }
    let quarters = if total == 0 {
        4
    } else {
        (u128::from(done) * 4 / u128::from(total)).min(4) as u64
    };
    if HISTORY_TOLD.fetch_max(quarters, Relaxed) < quarters {
        vec![format!("history received: {}%", quarters * 25)]
    } else {
        Vec::new()
    }
}

/// Prints what an event says.
pub(crate) fn print_event(m: &Messenger, dir: &Path, ev: &MessengerEvent) {
    for line in describe(m, dir, ev) {
        say!("{line}");
    }
}
