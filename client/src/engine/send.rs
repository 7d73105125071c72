//! Sending to accounts: the recipient's device list and bundles as needed, a session per device,
//! one sealed envelope per device, and the relay's answers (device-set changes, full queues,
//! transient failures retried with the same bytes and client id).

use crate::conn::RelayConnection;
use crate::error::ClientError;
use hush_core::device::{Device, DeviceError, Outgoing};
use hush_core::keys::{AccountId, DeviceAddress};
use hush_core::prekeys::PreKeyBundle;
use hush_core::{Error as CoreError, ProtocolError};
use hush_proto::client::sealed;
use hush_proto::relay_api::{self as api, ErrorCode, client_frame, server_frame};
use hush_store_sled::SledKv;
use prost::Message;
use rand::RngExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::{CONNECT_WAIT, Engine, Event, Inner, now_ms, rng};

/// Attempts of one send (device-set changes and transient failures).
pub(super) const SEND_ATTEMPTS: usize = 4;

/// How long a send waits before offering a message again to recipient devices whose queue was
/// full (`SendResult.full_devices`); after [`SEND_ATTEMPTS`] the send fails as transient, and
/// the messenger's outbox keeps the message waiting.
pub(super) const FULL_DEVICE_BACKOFF: Duration = Duration::from_secs(2);

/// Whether the relay refused a send because the recipient's queue (or this sender's share of
/// it, or the account's mailbox) is full: nothing was queued.
pub(super) fn recipient_full(e: &ClientError) -> bool {
    matches!(e, ClientError::Refused(r) if matches!(
        r.code,
        ErrorCode::QueueFull | ErrorCode::SenderQuota | ErrorCode::MailboxFull
    ))
}

/// The devices a send left out because their queue at the relay was full, if any.
pub(super) fn left_out(answer: &server_frame::Kind) -> Option<Vec<u32>> {
    match answer {
        server_frame::Kind::Sent(r) if !r.full_devices.is_empty() => Some(r.full_devices.clone()),
        _ => None,
    }
}

/// The transient failure of a send that some devices did not take.
pub(super) fn full_refusal(full: &[u32]) -> ClientError {
    ClientError::Refused(crate::error::Refusal {
        code: ErrorCode::QueueFull,
        message: format!(
            "{} recipient device(s) have a full queue at the relay",
            full.len()
        ),
        retry_after_ms: 0,
        missing_devices: Vec::new(),
        extra_devices: Vec::new(),
        log_head: 0,
    })
}

impl Engine {
    /// Sends `plaintext` to every device of `to` (for one's own account: to its other devices).
    /// Returns once the relay has acknowledged it durably.
    pub async fn send(&self, to: &AccountId, plaintext: &[u8]) -> Result<(), ClientError> {
        let r = self.inner.send(to, plaintext, false).await;
        self.inner.after(r)
    }

    /// Sends `plaintext` as an ephemeral envelope (typing, presence): delivered only to devices
    /// connected now, never stored.
    pub async fn send_ephemeral(
        &self,
        to: &AccountId,
        plaintext: &[u8],
    ) -> Result<(), ClientError> {
        self.inner.send(to, plaintext, true).await
    }
}

impl Inner {
    /// The current connection, waiting up to `wait` for one.
    pub(crate) async fn current(
        &self,
        wait: Duration,
    ) -> Result<Arc<RelayConnection>, ClientError> {
        if self.is_revoked() {
            return Err(ClientError::Revoked);
        }
        let mut rx = self.conn.subscribe();
        // A connection whose stream has just ended stays published until the session loop
        // notices; it is skipped, so that a retry waits for the next one.
        let got = tokio::time::timeout(
            wait,
            rx.wait_for(|c| c.as_ref().is_some_and(|c| c.is_open())),
        )
        .await;
        match got {
            Ok(Ok(c)) => c.as_ref().map(Arc::clone).ok_or(ClientError::Disconnected),
            Ok(Err(_)) if self.is_revoked() => Err(ClientError::Revoked),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Disconnected),
        }
    }

    /// Fetches and accepts `account`'s device list from the relay (another account's on the
    /// anonymous connection).
    pub(super) async fn refresh_list(
        &self,
        conn: &Arc<RelayConnection>,
        account: &AccountId,
    ) -> Result<(), ClientError> {
        let reader = self.reader_for(conn, account).await?;
        let server_frame::Kind::DeviceList(l) = reader
            .request(client_frame::Kind::FetchDeviceList(api::FetchDeviceList {
                account: account.as_bytes().to_vec(),
            }))
            .await?
        else {
            return Err(ClientError::Protocol(
                "unexpected answer to a device-list fetch",
            ));
        };
        let me = self.lock()?.address();
        let devices = |d: &Device<SledKv>| -> BTreeMap<u32, [u8; 64]> {
            d.device_list(account)
                .map(|l| {
                    l.list()
                        .devices
                        .iter()
                        .map(|(id, e)| (*id, e.identity.to_bytes()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (before, accepted, after) = {
            let mut d = self.lock()?;
            let before = devices(&d);
            let accepted = d.accept_device_list(&l.signed_device_list, account, now_ms());
            (before, accepted, devices(&d))
        };
        match accepted {
            Ok(true) if !before.is_empty() && account != &me.account => {
                let added: Vec<u32> = after
                    .iter()
                    .filter(|(id, k)| before.get(id) != Some(k))
                    .map(|(id, _)| *id)
                    .collect();
                let removed: Vec<u32> = before
                    .keys()
                    .filter(|id| !after.contains_key(id))
                    .copied()
                    .collect();
                if !added.is_empty() || !removed.is_empty() {
                    self.emit(Event::DevicesChanged {
                        account: *account,
                        added,
                        removed,
                    });
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => {
                if matches!(
                    e,
                    DeviceError::Protocol(
                        CoreError::Protocol(ProtocolError::DeviceListConflict(_))
                            | CoreError::Auth(_)
                    )
                ) {
                    // Two different lists under one version, or a bad signature: someone (the
                    // relay, or whoever holds a key) is lying about this account's devices.
                    self.emit(Event::IdentityWarning { account: *account });
                }
                Err(e.into())
            }
        }
    }

    /// Starts sessions with those of `devices` that have none (fetching their bundles; another
    /// account's on the anonymous connection).
    pub(super) async fn ensure_sessions(
        &self,
        conn: &Arc<RelayConnection>,
        devices: &[DeviceAddress],
    ) -> Result<(), ClientError> {
        let missing = self.lock()?.missing_sessions(devices, now_ms())?;
        for m in missing {
            let reader = self.reader_for(conn, &m.account).await?;
            let server_frame::Kind::Bundle(b) = reader
                .request(client_frame::Kind::FetchBundle(api::FetchBundle {
                    account: m.account.as_bytes().to_vec(),
                    device_id: m.device_id,
                }))
                .await?
            else {
                return Err(ClientError::Protocol("unexpected answer to a bundle fetch"));
            };
            let bundle = hush_proto::wire::PreKeyBundle::decode(b.bundle.as_slice())
                .map_err(|_| ClientError::Protocol("bundle does not decode"))?;
            self.lock()?
                .start_session(&PreKeyBundle(bundle), &mut rng(), now_ms())?;
        }
        Ok(())
    }

    /// Sends prepared envelopes to one account under a fresh client id, retrying transient
    /// failures with the same id (queued at most once).
    pub(super) async fn send_envelopes(
        &self,
        conn: &Arc<RelayConnection>,
        account: [u8; 32],
        envelopes: Vec<api::OutEnvelope>,
        targeted: bool,
    ) -> Result<(), ClientError> {
        let mut id = [0u8; 16];
        rng().fill(&mut id[..]);
        self.send_envelopes_as(conn, account, envelopes, targeted, id)
            .await
    }

    /// As [`Self::send_envelopes`], under the client id `id` (the same one on every attempt,
    /// also across calls: the relay queues each device's copy at most once).
    pub(super) async fn send_envelopes_as(
        &self,
        conn: &Arc<RelayConnection>,
        account: [u8; 32],
        envelopes: Vec<api::OutEnvelope>,
        targeted: bool,
        id: [u8; 16],
    ) -> Result<(), ClientError> {
        let mut last = ClientError::Disconnected;
        // After the first connection breaks, the next one (the same bytes under the same id).
        let mut next: Option<Arc<RelayConnection>> = None;
        for _ in 0..SEND_ATTEMPTS {
            let c = match &next {
                Some(c) => c,
                None => conn,
            };
            let r = self
                .send_request(c, &account, envelopes.clone(), |envelopes| {
                    client_frame::Kind::Send(api::Send {
                        client_id: id.to_vec(),
                        recipient_account: account.to_vec(),
                        envelopes,
                        targeted,
                    })
                })
                .await;
            match r {
                Ok(answer) => match left_out(&answer) {
                    // Devices whose queue was full did not get it: send the same bytes again
                    // under the same id (the relay queues only the copies it does not hold).
                    Some(full) => {
                        last = full_refusal(&full);
                        tokio::time::sleep(FULL_DEVICE_BACKOFF).await;
                    }
                    None => return Ok(()),
                },
                // The recipient's queue is full: it clears only when the recipient takes
                // its messages, which no wait here can bring about; the caller (the
                // messenger's outbox) tries again later, and the other recipients of a group
                // message are not held back.
                Err(e) if recipient_full(&e) => return Err(e),
                Err(e) if e.is_transient() => {
                    if let ClientError::Refused(r) = &e
                        && r.retry_after_ms > 0
                    {
                        tokio::time::sleep(Duration::from_millis(r.retry_after_ms.min(10_000)))
                            .await;
                    }
                    if !c.is_open() {
                        next = Some(self.current(CONNECT_WAIT).await?);
                    }
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Sends pairwise messages client-core prepared, one send per recipient account;
    /// `targeted` for control messages meant for some of an account's devices only.
    pub(super) async fn send_outgoing_checked(
        &self,
        conn: &Arc<RelayConnection>,
        outgoing: Vec<Outgoing>,
        targeted: bool,
    ) -> Result<(), ClientError> {
        let accounts: BTreeSet<[u8; 32]> =
            outgoing.iter().map(|o| *o.to.account.as_bytes()).collect();
        for account in accounts {
            // A send carries at most one envelope per device: several messages for one device
            // (a sync answer with one log per group) go in successive sends, in order.
            let mut rounds: Vec<Vec<api::OutEnvelope>> = Vec::new();
            let mut per_device: BTreeMap<u32, usize> = BTreeMap::new();
            for o in outgoing
                .iter()
                .filter(|o| o.to.account.as_bytes() == &account)
            {
                let k = per_device.entry(o.to.device_id).or_insert(0);
                if rounds.len() <= *k {
                    rounds.push(Vec::new());
                }
                // A device removed from the list since the message was prepared is left out.
                if let Some(round) = rounds.get_mut(*k) {
                    round.extend(super::sealed::envelope_if_listed(
                        &*self.lock()?,
                        &o.to,
                        sealed::Kind::Pairwise(o.bytes.clone()),
                    )?);
                }
                *k += 1;
            }
            for mut envelopes in rounds.into_iter().filter(|r| !r.is_empty()) {
                match self
                    .send_envelopes(conn, account, envelopes.clone(), targeted)
                    .await
                {
                    // A control message for a device that has left its list since: that device
                    // no longer needs it. Learn the list, and send the rest (nothing was queued).
                    Err(ClientError::Refused(r))
                        if targeted
                            && r.code == ErrorCode::DeviceMismatch
                            && !r.extra_devices.is_empty() =>
                    {
                        let _ = self
                            .refresh_list(conn, &AccountId::from_bytes(&account)?)
                            .await;
                        envelopes.retain(|e| !r.extra_devices.contains(&e.device_id));
                        if !envelopes.is_empty() {
                            self.send_envelopes(conn, account, envelopes, targeted)
                                .await?;
                        }
                    }
                    r => r?,
                }
            }
        }
        Ok(())
    }

    /// Encrypts `plaintext` for every listed device of `to` but this one (`ephemeral`: kept out of
    /// the sent log, never sent again).
    pub(super) async fn seal_for(
        &self,
        conn: &Arc<RelayConnection>,
        to: &AccountId,
        plaintext: &[u8],
        ephemeral: bool,
    ) -> Result<Vec<api::OutEnvelope>, ClientError> {
        let me = self.lock()?.address();
        let targets: Vec<DeviceAddress> = {
            let d = self.lock()?;
            let list = d
                .device_list(to)
                .ok_or(ClientError::Core(CoreError::Protocol(
                    ProtocolError::UnknownAccount,
                )))?;
            list.addresses().filter(|a| *a != me).collect()
        };
        self.ensure_sessions(conn, &targets).await?;
        let mut out = Vec::with_capacity(targets.len());
        let mut d = self.lock()?;
        for t in targets {
            let bytes = if ephemeral {
                d.encrypt_ephemeral(&t, plaintext, &mut rng(), now_ms())?
            } else {
                d.encrypt(&t, plaintext, &mut rng(), now_ms())?
            };
            out.push(super::sealed::envelope(
                &d,
                &t,
                sealed::Kind::Pairwise(bytes),
            )?);
        }
        Ok(out)
    }

    pub(super) async fn send(
        &self,
        to: &AccountId,
        plaintext: &[u8],
        ephemeral: bool,
    ) -> Result<(), ClientError> {
        let client_id: [u8; 16] = {
            let mut id = [0u8; 16];
            rng().fill(&mut id[..]);
            id
        };
        let mut sealed: Option<Vec<api::OutEnvelope>> = None;
        let mut last = ClientError::Disconnected;
        for attempt in 0..SEND_ATTEMPTS {
            let conn = self.current(CONNECT_WAIT).await?;
            if sealed.is_none() {
                let known = self.lock()?.device_list(to).is_some();
                if !known || attempt > 0 {
                    self.refresh_list(&conn, to).await?;
                }
                let envelopes = self.seal_for(&conn, to, plaintext, ephemeral).await?;
                if envelopes.is_empty() {
                    // One's own account with no other device: nothing to deliver.
                    return Ok(());
                }
                sealed = Some(envelopes);
            }
            let envelopes = sealed.clone().unwrap_or_default();
            let make = |envelopes| {
                if ephemeral {
                    client_frame::Kind::SendEphemeral(api::SendEphemeral {
                        recipient_account: to.as_bytes().to_vec(),
                        envelopes,
                    })
                } else {
                    client_frame::Kind::Send(api::Send {
                        client_id: client_id.to_vec(),
                        recipient_account: to.as_bytes().to_vec(),
                        envelopes,
                        targeted: false,
                    })
                }
            };
            match self
                .send_request(&conn, to.as_bytes(), envelopes, make)
                .await
            {
                Ok(answer) => match left_out(&answer) {
                    // Devices whose queue was full did not get it: send the same bytes again
                    // under the same client id (the relay queues only the copies it does not
                    // hold).
                    Some(full) => {
                        last = full_refusal(&full);
                        tokio::time::sleep(FULL_DEVICE_BACKOFF).await;
                    }
                    None => return Ok(()),
                },
                Err(e) if RelayConnection::is_code(&e, ErrorCode::DeviceMismatch) => {
                    // The recipient's devices changed: nothing was queued; fetch the new list
                    // and encrypt again (same client id: nothing of the old try exists).
                    sealed = None;
                    last = e;
                }
                Err(e) if recipient_full(&e) => return Err(e),
                Err(e) if e.is_transient() => {
                    // Maybe queued, maybe not: resend the same bytes under the same client id,
                    // which the relay queues at most once.
                    if let ClientError::Refused(r) = &e
                        && r.retry_after_ms > 0
                    {
                        tokio::time::sleep(Duration::from_millis(r.retry_after_ms.min(10_000)))
                            .await;
                    }
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Sends control messages client-core produced (sender keys, retry requests).
    pub(super) async fn send_outgoing(&self, conn: &Arc<RelayConnection>, outgoing: Vec<Outgoing>) {
        if let Err(e) = self.send_outgoing_checked(conn, outgoing, true).await {
            // Control messages heal through client-core's retries (requests, rotation).
            tracing::debug!(error = %e, "a control message was not sent");
        }
    }
}
