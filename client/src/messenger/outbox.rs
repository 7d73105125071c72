//! The outbox: a send stores the message and returns; one worker per conversation sends what
//! waits, in order, whenever the relay can be reached, with backoff for a message that must
//! wait, and stores a message refused for good as failed.

use crate::engine::{GroupDelivery, GroupFailure};
use crate::error::ClientError;
use hush_core::keys::AccountId;
use hush_proto::app::{self, AppMessage, StoredMessage, app_message};
use prost::Message;
use std::collections::HashSet;
use std::sync::Arc;

use super::history::History;
use super::receive::record;
use super::status::{MessageStatus, status_of};
use super::{Conversation, MessageId, Messenger, MessengerEvent, Shared, conversation_of};

/// First wait of an outbox worker before it offers again a message that had to wait while the
/// relay was reachable (a full queue, a rate limit); doubles up to [`OUTBOX_RETRY_MAX`].
pub(super) const OUTBOX_RETRY_MIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest such wait.
pub(super) const OUTBOX_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// How long an outbox worker waits for a connection at a time (then looks again).
pub(super) const OUTBOX_CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The member accounts a stored group message is still to be sent to: `None` for everyone (it
/// was never sent), else those in `undelivered` (refused for good too, if `with_permanent`).
pub(super) fn retry_targets(s: &StoredMessage, with_permanent: bool) -> Option<Vec<AccountId>> {
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

impl Messenger {
    /// Puts back in the outbox a message of this device that failed (`StoredMessage::failed`,
    /// [`MessengerEvent::SendFailed`]); for a group message, also the members it missed for
    /// good (`StoredMessage::undelivered`). Returns at once, the message `Waiting`; refused
    /// again, it is failed again. Nothing happens for one sent to everyone or already waiting.
    pub async fn retry(&self, id: &MessageId) -> Result<(), ClientError> {
        self.shared.retry(id)
    }
}

impl Shared {
    /// Sends an ephemeral `m` (typing, presence) to the conversation's connected devices.
    pub(super) async fn deliver_ephemeral(
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
    pub(super) async fn deliver(
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
    pub(super) fn send_stored(
        self: &Arc<Self>,
        to: Conversation,
        kind: app_message::Kind,
    ) -> Result<MessageId, ClientError> {
        self.check_conversation(&to)?;
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
    pub(super) async fn send_claimed(
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
            let mut h = self.lock_history()?;
            h.update_where(
                id,
                |_, s| self.is_own(s),
                |s| {
                    let before = s.undelivered.clone();
                    // Those tried again are replaced by this try's outcome; others stay.
                    s.undelivered
                        .retain(|u| tried.as_ref().is_some_and(|t| !t.contains(&u.account)));
                    s.undelivered.extend(now.iter().cloned());
                    changed = s.undelivered != before;
                    undelivered.clone_from(&s.undelivered);
                    s.sent = true;
                },
            )?;
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
            if !was_sent {
                self.tell_sent(&h, conv, id);
            }
        } else {
            let mut h = self.lock_history()?;
            h.update_where(id, |_, s| self.is_own(s), |s| s.sent = true)?;
            if !was_sent {
                self.tell_sent(&h, conv, id);
            }
        }
        if !was_sent {
            self.sync_sent(peer, m).await;
        }
        Ok(())
    }

    /// Tells the app where a message that has just reached the relay stands. Receipts may have
    /// come before the relay's answer to the send: the status they made is told now (delivered
    /// or read, not only sent). Called with the history lock held since the message was marked
    /// sent, and receipts tell their steps under that lock too: each step is told once, and the
    /// events follow the stored state.
    fn tell_sent(&self, h: &History, conv: Conversation, id: &MessageId) {
        let status = h
            .get_from(id, &self.own_sender())
            .and_then(|(_, s)| status_of(&s))
            .unwrap_or(MessageStatus::Sent);
        self.emit(MessengerEvent::Status {
            conversation: conv,
            message_ids: vec![*id],
            status,
        });
    }

    /// Stores a message as failed for good and tells the app.
    pub(super) fn fail(
        &self,
        conv: Conversation,
        id: &MessageId,
        e: &ClientError,
    ) -> Result<(), ClientError> {
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
    pub(super) fn retry(self: &Arc<Self>, id: &MessageId) -> Result<(), ClientError> {
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
    pub(super) fn is_pending(&self, m: &StoredMessage) -> bool {
        self.is_own(m)
            && m.failed.is_empty()
            && (!m.sent || m.undelivered.iter().any(|u| !u.permanent))
    }

    /// Starts the outbox worker of every conversation with waiting messages (on start, and on
    /// each connection for group messages that missed members).
    pub(super) fn kick_all(self: &Arc<Self>) {
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
    pub(super) fn kick(self: &Arc<Self>, conv: Conversation) {
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
    pub(super) async fn work(self: Arc<Self>, conv: Conversation) {
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
                    self.changed.send_modify(|c| *c = c.wrapping_add(1));
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
                        drop(working);
                        // Waiters for an empty outbox look again.
                        self.changed.send_modify(|c| *c = c.wrapping_add(1));
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
    pub(super) async fn send_pending(&self, conv: Conversation) -> bool {
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
    pub(super) async fn sync_sent(&self, peer: Vec<u8>, m: AppMessage) {
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
}
