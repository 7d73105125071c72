//! Message states: what a stored message's recipients confirmed (sent, delivered, read), the
//! receipts this device sends for what it read, and waiting for a message to leave.

use crate::error::ClientError;
use hush_core::keys::AccountId;
use hush_proto::app::{self, StoredMessage, app_message};
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::outbox::{OUTBOX_CONNECT_WAIT, OUTBOX_RETRY_MAX, OUTBOX_RETRY_MIN};
use super::{Conversation, MessageId, Messenger, Shared, conversation_of};

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

/// Message ids in one read receipt at the most (16 bytes each: far below the largest message), so
/// that a long backlog read at once is told in several receipts.
const RECEIPT_IDS_PER_MESSAGE: usize = 1000;

impl Messenger {
    /// Marks every unread incoming message of a conversation read and tells the senders. The
    /// read state is stored at once, with the receipts it owes: they are sent now when the relay
    /// can be reached (this returns once they are), and otherwise, or if a send fails, whenever
    /// this messenger is connected again, after a restart too.
    pub async fn mark_read(&self, conv: Conversation) -> Result<(), ClientError> {
        self.shared.check_conversation(&conv)?;
        let owed = {
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
            for (id, sender) in &ids {
                h.update_where(
                    id,
                    |_, m| !m.outgoing && !m.read && m.sender_account == *sender,
                    |m| {
                        m.read = true;
                        m.read_untold = true;
                    },
                )?;
            }
            let mut by_sender: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
            for (id, sender) in ids {
                by_sender.entry(sender).or_default().push(id);
            }
            by_sender
        };
        if owed.is_empty() {
            return Ok(());
        }
        // Only what this call marked: receipts owed from before go with the background teller.
        if self.shared.engine.state() == crate::engine::ConnectionState::Online
            && self.shared.tell(owed).await
        {
            return Ok(());
        }
        // Offline, or a send failed: the receipts stay owed, and go once connected.
        self.shared.tell_read_when_connected();
        Ok(())
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
}

impl Shared {
    /// Sends the read receipts this device owes (messages read here whose senders were not told
    /// yet), one per sender, and records each as told once the relay took it. Returns whether
    /// nothing is owed any more.
    pub(super) async fn tell_read(&self) -> bool {
        let owed: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = match self.lock_history() {
            Ok(h) => {
                let mut by_sender: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
                for m in h.by_key.values().filter(|m| !m.outgoing && m.read_untold) {
                    if let Some(a) = &m.message {
                        by_sender
                            .entry(m.sender_account.clone())
                            .or_default()
                            .push(a.message_id.clone());
                    }
                }
                by_sender
            }
            Err(_) => return false,
        };
        self.tell(owed).await
    }

    /// Sends the read receipts of `owed` (sender account → message ids) that are still owed
    /// once no other pass runs, and records each as told once the relay took it. Returns whether
    /// all of them are told.
    async fn tell(&self, owed: BTreeMap<Vec<u8>, Vec<Vec<u8>>>) -> bool {
        let _one_pass = self.telling.lock().await;
        // Another pass may have told some while this one waited.
        let owed: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = match self.lock_history() {
            Ok(h) => owed
                .into_iter()
                .map(|(sender, ids)| {
                    let still: Vec<Vec<u8>> = ids
                        .into_iter()
                        .filter(|id| {
                            h.by_id.get(id).is_some_and(|keys| {
                                keys.iter().any(|k| {
                                    h.by_key.get(k).is_some_and(|m| {
                                        !m.outgoing && m.read_untold && m.sender_account == sender
                                    })
                                })
                            })
                        })
                        .collect();
                    (sender, still)
                })
                .filter(|(_, ids)| !ids.is_empty())
                .collect(),
            Err(_) => return false,
        };
        let mut all_told = true;
        let batches = owed.into_iter().flat_map(|(sender, ids)| {
            ids.chunks(RECEIPT_IDS_PER_MESSAGE)
                .map(|c| (sender.clone(), c.to_vec()))
                .collect::<Vec<_>>()
        });
        for (sender, ids) in batches {
            // A record with a malformed sender owes nothing anyone can be told; a receipt the
            // relay refuses for good (the sender's account is gone) is not owed any more either.
            let told = match AccountId::from_bytes(&sender) {
                Ok(a) => match self.send_receipt(&a, true, ids.clone()).await {
                    Ok(()) => true,
                    Err(e) if e.is_permanent() => {
                        tracing::info!(error = %e, "read receipt refused for good; not sent");
                        true
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "read receipt not sent yet");
                        all_told = false;
                        false
                    }
                },
                Err(_) => true,
            };
            if told {
                let Ok(mut h) = self.lock_history() else {
                    return false;
                };
                for id in &ids {
                    if h.update_where(
                        id,
                        |_, m| !m.outgoing && m.read_untold && m.sender_account == sender,
                        |m| m.read_untold = false,
                    )
                    .is_err()
                    {
                        all_told = false;
                    }
                }
            }
        }
        all_told
    }

    /// Sends the owed read receipts in the background once connected (and again after a failure,
    /// with backoff), while this messenger runs. One such teller runs at a time: asked while it
    /// runs, it makes one more pass before it ends.
    pub(super) fn tell_read_when_connected(self: &Arc<Self>) {
        if self.teller.swap(true, Ordering::SeqCst) {
            self.teller_again.store(true, Ordering::SeqCst);
            return;
        }
        let shared = Arc::clone(self);
        let stop = self.outbox_stop.clone();
        self.outbox_sends.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = async {
                    let mut wait = OUTBOX_RETRY_MIN;
                    loop {
                        while shared.engine.connected(OUTBOX_CONNECT_WAIT).await.is_err() {
                            if shared.engine.is_closed() {
                                shared.teller.store(false, Ordering::SeqCst);
                                return;
                            }
                        }
                        if shared.tell_read().await {
                            shared.teller.store(false, Ordering::SeqCst);
                            // Asked again meanwhile: one more pass, unless another teller
                            // started in between.
                            if !shared.teller_again.swap(false, Ordering::SeqCst)
                                || shared.teller.swap(true, Ordering::SeqCst)
                            {
                                return;
                            }
                            wait = OUTBOX_RETRY_MIN;
                            continue;
                        }
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(OUTBOX_RETRY_MAX);
                    }
                } => {}
            }
        });
    }

    pub(super) async fn send_receipt(
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
}
