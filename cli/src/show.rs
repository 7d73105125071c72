//! What the user reads: events, messages and errors in words.

use std::io::Write;
use std::path::Path;

use hush_client::{ClientError, Conversation, MessengerEvent};
use hush_proto::app::{StoredMessage, app_message};
use hush_proto::relay_api::ErrorCode;

use crate::contacts::name_of;
use crate::files::{human_size, safe_name, short_id};

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

pub(crate) fn print_event(dir: &Path, ev: &MessengerEvent) {
    match ev {
        MessengerEvent::Message {
            message,
            conversation: Conversation::Group(_),
        } if !message.outgoing => {
            say!(
                "group message from {}: {}",
                name_of(dir, &message.sender_account),
                text_of(message)
            );
        }
        MessengerEvent::Message { message, .. } if !message.outgoing => {
            say!(
                "message from {}: {}",
                name_of(dir, &message.sender_account),
                text_of(message)
            );
        }
        MessengerEvent::Message { message, .. } => {
            say!("sent from another device: {}", text_of(message));
        }
        MessengerEvent::Receipt {
            from,
            read,
            message_ids,
        } => {
            for id in message_ids {
                say!(
                    "{} by {}: {}",
                    if *read { "read" } else { "delivered" },
                    name_of(dir, from.as_bytes()),
                    hex::encode(id)
                );
            }
        }
        MessengerEvent::Typing { from, typing, .. } => {
            let who = name_of(dir, from.account.as_bytes());
            if *typing {
                say!("{who} is typing");
            } else {
                say!("{who} stopped typing");
            }
        }
        MessengerEvent::Presence { from, online, .. } => {
            say!(
                "{} is {}",
                name_of(dir, from.as_bytes()),
                if *online { "online" } else { "offline" }
            );
        }
        MessengerEvent::Connection(true) => say!("connected"),
        MessengerEvent::Connection(false) => say!("disconnected; reconnecting"),
        MessengerEvent::Revoked => say!("this device was removed from its account"),
        MessengerEvent::DevicesChanged { account, added, .. } if !added.is_empty() => say!(
            "warning: {} has new or changed devices {:?}; compare safety numbers (`hush verify`)",
            name_of(dir, account.as_bytes()),
            added
        ),
        MessengerEvent::DevicesChanged {
            account, removed, ..
        } => say!(
            "{} removed devices {:?}",
            name_of(dir, account.as_bytes()),
            removed
        ),
        MessengerEvent::GroupsChanged => say!("your groups changed (`hush group list`)"),
        MessengerEvent::CaughtUp => {}
        MessengerEvent::Sent { message_id, .. } => {
            say!("sent (after reconnecting): {}", hex::encode(message_id));
        }
        MessengerEvent::SendFailed {
            message_id, reason, ..
        } => {
            say!("not sent: {} ({reason})", hex::encode(message_id));
        }
        MessengerEvent::Undecryptable { from, .. } => say!(
            "a message from {} could not be decrypted",
            name_of(dir, from.account.as_bytes())
        ),
        MessengerEvent::StoreFailed => say!("the local store failed; restart `hush`"),
        MessengerEvent::Undelivered {
            message_id,
            accounts,
            ..
        } => {
            for f in accounts {
                say!(
                    "{} not delivered to {} ({}{})",
                    hex::encode(message_id),
                    name_of(dir, f.account.as_bytes()),
                    f.reason,
                    if f.permanent { "" } else { "; will try again" }
                );
            }
        }
        MessengerEvent::IdentityWarning { account } => say!(
            "WARNING: the identity of {} could not be verified (conflicting or forged device list); do not trust new messages until you compare safety numbers",
            name_of(dir, account.as_bytes())
        ),
    }
    let _ = std::io::stdout().flush();
}
