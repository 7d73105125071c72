//! What the user sends: text with replies, reactions, typing and presence, and the account's
//! contacts to its other devices.

use crate::engine::now_ms;
use crate::error::ClientError;
use hush_core::keys::AccountId;
use hush_proto::app::{self, app_message};
use prost::Message;
use std::sync::atomic::Ordering;

use super::{Conversation, MAX_SYNCED_CONTACTS, MAX_TEXT, MessageId, Messenger};

impl Messenger {
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

    /// Tells the conversation that this user is (or stopped) typing: ephemeral, to connected
    /// devices only.
    pub async fn typing(&self, to: Conversation, typing: bool) -> Result<(), ClientError> {
        self.shared.check_conversation(&to)?;
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
}
