//! Deliveries: decrypting what the relay delivers, settling each one (acknowledged only once
//! committed, a duplicate or rejected for good), trying transient failures again, recovering a
//! failed store, and asking for messages a lost or stale session could not decrypt.

use crate::conn::RelayConnection;
use crate::error::ClientError;
use hush_core::device::{GroupIncoming, Outgoing};
use hush_core::keys::DeviceAddress;
use hush_core::prekeys::PreKeyBundle;
use hush_core::sealed::DeliveryKey;
use hush_core::sender_key::GroupId;
use hush_core::{Error as CoreError, ProtocolError};
use hush_proto::client::{Sealed, sealed};
use hush_proto::relay_api::{self as api, client_frame, server_frame};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

use super::{Event, Inner, now_ms, rng};

/// First wait before a delivery that could not be processed (store error, rate-limited
/// device-list fetch, full group buffer) is tried again; doubles up to [`DELIVERY_RETRY_MAX`].
pub(super) const DELIVERY_RETRY_MIN: Duration = Duration::from_millis(250);

/// Longest wait between two tries of one delivery.
pub(super) const DELIVERY_RETRY_MAX: Duration = Duration::from_secs(60);

/// Past this many deliveries waiting to be tried again, the engine reconnects and lets the
/// relay deliver them again, instead of holding them in memory.
pub(super) const MAX_WAITING_DELIVERIES: usize = 256;

/// Whether a delivered envelope may be acknowledged to the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Settlement {
    /// Committed, a duplicate, or rejected for good (and reported): acknowledge it.
    Settled,
    /// Not processed for a transient or local reason: leave it at the relay, try again.
    Retry,
}

/// A delivery waiting to be tried again.
pub(super) struct Waiting {
    pub(super) deliver: api::Deliver,
    pub(super) attempt: u32,
    pub(super) due: tokio::time::Instant,
}

/// The wait before trying a delivery again after `attempt` failed tries:
/// [`DELIVERY_RETRY_MIN`] doubling up to [`DELIVERY_RETRY_MAX`].
pub(super) fn retry_delay(attempt: u32) -> Duration {
    DELIVERY_RETRY_MIN
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(DELIVERY_RETRY_MAX)
}

/// Retry requests made in one turn of the engine's loop (each fetches a bundle); the rest are
/// made in the next turns, so deliveries are not held up behind many.
pub(super) const RETRY_REQUESTS_PER_TURN: usize = 4;

impl Inner {
    /// Handles one delivered envelope and says whether it may be acknowledged to the relay.
    pub(super) async fn deliver(
        &self,
        conn: &Arc<RelayConnection>,
        d: &api::Deliver,
        ephemeral: bool,
    ) -> Settlement {
        let (from, content, key) = match self.open(conn, &d.body).await {
            Ok(opened) => opened,
            Err(settlement) => return settlement,
        };
        let account = from.account;
        let Ok(sealed) = Sealed::decode(content.as_slice()) else {
            tracing::warn!("delivery that is not a sealed envelope");
            self.emit(Event::Undecryptable { from, group: None });
            return Settlement::Settled;
        };
        match sealed.kind {
            Some(sealed::Kind::Pairwise(bytes)) => {
                let mut result = self.decrypt_pairwise(&from, &bytes);
                if matches!(
                    result,
                    Err(ClientError::Core(CoreError::Protocol(
                        ProtocolError::UnknownAccount | ProtocolError::DeviceNotOnList
                    )))
                ) {
                    // A new contact, or a device added since: learn its list, then try again.
                    match self.refresh_list(conn, &account).await {
                        Ok(()) => result = self.decrypt_pairwise(&from, &bytes),
                        // Rate-limited, disconnected, a store error: the list may still come.
                        Err(e) if !e.is_permanent() => result = Err(e),
                        Err(_) => {}
                    }
                }
                match result {
                    Ok((received, outgoing, group_logs)) => {
                        self.keep_delivery_key(&from, &key);
                        for r in received {
                            self.emit(Event::message(r, ephemeral));
                        }
                        self.send_outgoing(conn, outgoing).await;
                        // A member's notice of a change, or an invitation: read the log.
                        self.sync_group_logs(conn, group_logs).await;
                        Settlement::Settled
                    }
                    Err(e) => match self.settle_error(&e, from, None) {
                        Settlement::Settled => self.heal_later(conn, &from, &bytes, &e).await,
                        Settlement::Retry => Settlement::Retry,
                    },
                }
            }
            Some(sealed::Kind::Group(bytes)) => {
                let r = self.lock().and_then(|mut d| {
                    Ok(d.decrypt_group_from(&from, &bytes, &mut rng(), now_ms())?)
                });
                if matches!(r, Ok(GroupIncoming::Decrypted(_))) {
                    self.keep_delivery_key(&from, &key);
                }
                match r {
                    Ok(GroupIncoming::Decrypted(r)) => {
                        self.emit(Event::Message {
                            id: r.id,
                            from: r.from,
                            group: r.group,
                            plaintext: r.plaintext,
                            ephemeral,
                        });
                        // The sender's log was further along: read it (and check the relay).
                        self.sync_pending_group_logs(conn).await;
                        Settlement::Settled
                    }
                    Ok(GroupIncoming::Buffered { request }) => {
                        self.send_outgoing(conn, request.into_iter().collect())
                            .await;
                        self.sync_pending_group_logs(conn).await;
                        Settlement::Settled
                    }
                    Err(e) => {
                        let group = hush_proto::wire::GroupMessage::decode(bytes.as_slice())
                            .ok()
                            .and_then(|m| GroupId::from_bytes(&m.group_id).ok());
                        self.settle_error(&e, from, group)
                    }
                }
            }
            None => {
                tracing::warn!("empty sealed envelope");
                self.emit(Event::Undecryptable { from, group: None });
                Settlement::Settled
            }
        }
    }

    /// Opens a delivered sealed envelope (PROTOCOL.md §21): the sender it names, authenticated
    /// against that account's device list (learnt from the relay first if this device does not
    /// hold it, or holds one without the sender on it), the content, and the sender's delivery
    /// key (kept once the content is taken, so that replies can go sealed). An envelope that does
    /// not open is dropped (acknowledged): no wait will make it open; its sender is unknown, so
    /// it is only logged.
    async fn open(
        &self,
        conn: &Arc<RelayConnection>,
        body: &[u8],
    ) -> Result<(DeviceAddress, Zeroizing<Vec<u8>>, DeliveryKey), Settlement> {
        let open = || self.lock().and_then(|d| Ok(d.open_sealed(body)?));
        let mut opened = open();
        if let Err(ClientError::Core(CoreError::Protocol(
            ProtocolError::UnknownAccount | ProtocolError::DeviceNotOnList,
        ))) = &opened
        {
            // A new contact, or a device added since: learn its list, then open again.
            let claimed = self.lock().and_then(|d| Ok(d.sealed_sender(body)?));
            if let Ok(claimed) = claimed {
                match self.refresh_list(conn, &claimed.account).await {
                    Ok(()) => opened = open(),
                    Err(e) if !e.is_permanent() => {
                        tracing::info!(error = %e, "a sender's device list could not be fetched yet");
                        return Err(Settlement::Retry);
                    }
                    Err(_) => {}
                }
            }
        }
        let opened = match opened {
            Ok(o) => o,
            Err(e) if !e.is_permanent() => {
                tracing::warn!(error = %e, "sealed envelope not opened; kept at the relay");
                self.recover_store();
                return Err(Settlement::Retry);
            }
            Err(e) => {
                tracing::warn!(error = %e, "a sealed envelope did not open; dropped");
                return Err(Settlement::Settled);
            }
        };
        Ok((opened.from, opened.content, opened.delivery_key))
    }

    /// A pairwise message that could not be decrypted with the session held (lost or stale,
    /// PROTOCOL.md §20): its sender device is asked to send it again on a fresh session. The
    /// failure is recorded before the envelope is acknowledged; if it cannot be, the envelope
    /// stays at the relay and is tried again.
    pub(super) async fn heal_later(
        &self,
        conn: &Arc<RelayConnection>,
        from: &DeviceAddress,
        bytes: &[u8],
        e: &ClientError,
    ) -> Settlement {
        let ClientError::Core(core) = e else {
            return Settlement::Settled;
        };
        let noted = self
            .lock()
            .and_then(|mut d| Ok(d.note_undecryptable(from, bytes, core, now_ms())?));
        match noted {
            Ok(true) => {
                self.heal(conn).await;
                Settlement::Settled
            }
            Ok(false) => Settlement::Settled,
            Err(e) => {
                tracing::warn!(error = %e, "undecryptable message not recorded; kept at the relay");
                self.recover_store();
                Settlement::Retry
            }
        }
    }

    /// Sends the retry requests that are due: for each sender device, a fresh session from its
    /// bundle, with the request as its first message. What fails stays pending for later.
    pub(super) async fn heal(&self, conn: &Arc<RelayConnection>) {
        let due = match self.lock() {
            Ok(mut d) => d.retry_requests_due(now_ms(), RETRY_REQUESTS_PER_TURN),
            Err(_) => return,
        };
        for to in due {
            if let Err(e) = self.send_retry_request(conn, &to).await {
                tracing::info!(error = %e, "retry request not sent; tried again later");
                if let ClientError::Store(_) = e {
                    self.recover_store();
                }
            }
        }
    }

    pub(super) async fn send_retry_request(
        &self,
        conn: &Arc<RelayConnection>,
        to: &DeviceAddress,
    ) -> Result<(), ClientError> {
        let reader = self.reader_for(conn, &to.account).await?;
        let server_frame::Kind::Bundle(b) = reader
            .request(client_frame::Kind::FetchBundle(api::FetchBundle {
                account: to.account.as_bytes().to_vec(),
                device_id: to.device_id,
            }))
            .await?
        else {
            return Err(ClientError::Protocol("unexpected answer to a bundle fetch"));
        };
        let bundle = hush_proto::wire::PreKeyBundle::decode(b.bundle.as_slice())
            .map_err(|_| ClientError::Protocol("bundle does not decode"))?;
        let (out, ids) =
            self.lock()?
                .seal_retry_request(&PreKeyBundle(bundle), &mut rng(), now_ms())?;
        self.send_outgoing_checked(conn, vec![out], true).await?;
        self.lock()?.retry_request_sent(to, &ids)?;
        tracing::info!("asked a device to send undecryptable messages again");
        Ok(())
    }

    /// What a failed delivery means for its envelope: a duplicate is done; a transient or local
    /// failure (store, network, rate limit, a full group buffer) is tried again; anything else is
    /// a permanent rejection, acknowledged and reported.
    pub(super) fn settle_error(
        &self,
        e: &ClientError,
        from: DeviceAddress,
        group: Option<GroupId>,
    ) -> Settlement {
        match e {
            ClientError::Core(CoreError::Protocol(ProtocolError::Duplicate)) => Settlement::Settled,
            // The sending account's share of the group buffer is used up (item 10 of PROTOCOL.md
            // §14: bounded per sending account): its message is refused, as the buffer's rule
            // says. Kept at the relay instead, one account's unreadable messages would be offered
            // again on every connection, ahead of everyone else's mail.
            ClientError::Core(CoreError::Protocol(ProtocolError::BufferFull)) => {
                tracing::info!("group buffer share of a sender used up; its message is dropped");
                Settlement::Settled
            }
            e if !e.is_permanent() => {
                tracing::warn!(error = %e, "delivery not processed; kept at the relay");
                self.recover_store();
                Settlement::Retry
            }
            e => {
                tracing::warn!(error = %e, "a delivery could not be decrypted");
                self.emit(Event::Undecryptable { from, group });
                Settlement::Settled
            }
        }
    }

    /// Reopens the device's store if a failed commit poisoned it, and offers again what the
    /// inbox holds (a commit whose outcome was unknown may have stored messages). If it cannot
    /// be reopened the engine stops with [`Event::StoreFailed`].
    /// Passes on the result of an operation, first reopening the store if the operation's
    /// failure poisoned it (so that a failed commit while sending does not fail every later
    /// operation until the next delivery).
    pub(super) fn after<T>(&self, r: Result<T, ClientError>) -> Result<T, ClientError> {
        if let Err(ClientError::Store(_)) = &r {
            self.recover_store();
        }
        r
    }

    pub(super) fn recover_store(&self) {
        let Ok(mut d) = self.lock() else {
            return;
        };
        if !d.store_poisoned() {
            return;
        }
        tracing::warn!("device store poisoned by a failed commit; reopening it");
        match d.reopen_store().and_then(|()| d.pending_messages()) {
            Ok(pending) => {
                drop(d);
                for r in pending {
                    self.emit(Event::message(r, false));
                }
            }
            Err(e) => {
                drop(d);
                tracing::error!(error = %e, "device store could not be reopened; stopping");
                self.emit(Event::StoreFailed);
                self.shutdown.cancel();
            }
        }
    }

    #[allow(clippy::type_complexity)]
    pub(super) fn decrypt_pairwise(
        &self,
        from: &DeviceAddress,
        bytes: &[u8],
    ) -> Result<(Vec<hush_core::device::Received>, Vec<Outgoing>, Vec<GroupId>), ClientError>
    {
        let incoming = self.lock()?.decrypt(from, bytes, &mut rng(), now_ms())?;
        Ok((incoming.received, incoming.outgoing, incoming.group_logs))
    }

    /// Reads the logs the device wants read now (a member's message showed a later position, or
    /// came from a sender not yet known as a member).
    pub(super) async fn sync_pending_group_logs(&self, conn: &Arc<RelayConnection>) {
        let groups = match self.lock() {
            Ok(d) => d.groups_to_fetch(),
            Err(_) => return,
        };
        self.sync_group_logs(conn, groups).await;
    }
}
