//! What arrives: app messages decrypted by the engine, stored in the history once (receipts,
//! reactions, typing, presence, syncs of the account's own sends, names and contacts) and told
//! to the app; the engine's inbox is acknowledged only once the history holds them.

use crate::engine::{Event, now_ms};
use crate::error::ClientError;
use hush_core::keys::{AccountId, DeviceAddress};
use hush_core::sender_key::GroupId;
use hush_core::store::kv::KvStore;
use hush_proto::app::{self, AppMessage, StoredMessage, app_message};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

use super::status::{MessageStatus, status_of};
use super::{
    Conversation, MAX_SYNCED_CONTACTS, MessageId, MessengerEvent, STORE_ATTEMPTS, STORE_RETRY_MIN,
    Shared,
};

/// A new history record of `message` from `from` (delivery state empty).
pub(super) fn record(
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
        read_untold: false,
    }
}

/// Takes the engine's events: stores and reports messages, then acknowledges them to the
/// engine's inbox (so a crash before that offers them again).
pub(super) async fn pump(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Event>) {
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
                    // Read receipts owed from before (offline, a failed send, a restart).
                    shared.tell_read_when_connected();
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
            Event::GroupLogWithheld { group, .. } => {
                shared.emit(MessengerEvent::GroupLogMismatch {
                    group,
                    forked: false,
                });
            }
            Event::GroupLogForked { group, .. } => {
                shared.emit(MessengerEvent::GroupLogMismatch {
                    group,
                    forked: true,
                });
            }
            Event::CaughtUp => {
                shared.emit(MessengerEvent::CaughtUp);
                shared.caught_up.send_modify(|n| *n = n.wrapping_add(1));
            }
            Event::Undecryptable { from, group } => shared.emit(MessengerEvent::Undecryptable {
                conversation: group.map_or(Conversation::Direct(from.account), Conversation::Group),
                from,
            }),
            Event::StoreFailed => shared.emit(MessengerEvent::StoreFailed),
        }
    }
}

impl Shared {
    /// [`Shared::receive`], tried again with backoff while it fails for a local, transient
    /// reason (the history store; a poisoned one is reopened). Returns whether the message is
    /// done with: processed, or refused for good.
    pub(super) async fn receive_stored(
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
    pub(super) async fn receive(
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
                    // Told under the history lock, as the outbox tells a message's status
                    // once the relay took it: no step is told twice or out of order.
                    for ((conversation, status), message_ids) in moved {
                        self.emit(MessengerEvent::Status {
                            conversation,
                            message_ids,
                            status,
                        });
                    }
                }
            }
            Some(app_message::Kind::HistoryTransfer(_)) if own => {
                if let Some(t) = super::backup::transfer_for(&m, self.me.device_id) {
                    self.take_history(t).await?;
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
                        self.received.fetch_add(1, Ordering::Relaxed);
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
