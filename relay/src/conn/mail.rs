//! Mail: sends (checked here, queued by the writer, answered once durable), acknowledgements,
//! ephemeral envelopes, and delivery to this connection (live from the writer, or from the
//! store).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hush_proto::relay_api::{self as api, ErrorCode, server_frame};

use super::{ConnState, Now, Refusal, Reply, arr};
use crate::limits::{self, close};
use crate::router::{Fresh, Live};
use crate::shared::{AccountDevices, Relay};
use crate::store::{DeviceId, Envelope, Queued, Quotas, Share};

impl ConnState {
    /// Checks a send here; the writer queues it (idempotently by client id, within the mailbox
    /// caps: `store::usage`), hands each new envelope to its connected recipient or wakes it by
    /// push, and the answer waits for the flush. A device with no room for this sender is left
    /// out and named in `SendResult.full_devices`; the send is refused only if no device has
    /// room, or for the account and relay byte caps.
    pub(super) fn send(
        &mut self,
        relay: &Arc<Relay>,
        rid: u64,
        s: api::Send,
        now: Now,
    ) -> Result<Reply, Refusal> {
        let caller = self.caller(relay)?;
        if relay.draining.load(Ordering::Relaxed) {
            return Err(Refusal::new(
                ErrorCode::Draining,
                "relay draining, reconnect",
            ));
        }
        relay.rate_limiters.send(&caller, now.at)?;
        let client_id: [u8; limits::CLIENT_ID_LEN] = arr(&s.client_id, "client id")?;
        let recipient: [u8; 32] = arr(&s.recipient_account, "recipient account")?;
        let cfg = &relay.cfg;
        if s.envelopes.len() > cfg.max_envelopes_per_send {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                "too many envelopes in one send",
            ));
        }
        if let Some(big) = s
            .envelopes
            .iter()
            .find(|e| e.body.len() > cfg.max_envelope_bytes)
        {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!(
                    "envelope of {} bytes is over the cap of {}",
                    big.body.len(),
                    cfg.max_envelope_bytes
                ),
            ));
        }
        if s.envelopes.iter().any(|e| e.body.is_empty()) {
            return Err(Refusal::new(ErrorCode::Malformed, "empty envelope"));
        }
        let devices = relay
            .devices_of(&recipient)?
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "unknown recipient account"))?;
        mismatch(
            &devices,
            &s.envelopes,
            self.device(),
            &recipient,
            s.targeted,
        )?;
        let share = self.share_of(relay, &recipient, &s.envelopes)?;
        let envelopes: Vec<Envelope> = s
            .envelopes
            .into_iter()
            .map(|e| Envelope {
                recipient: DeviceId {
                    account: recipient,
                    device: e.device_id,
                },
                share: share.label(),
                client_id,
                body: e.body,
                received_at: now.wall_ms,
            })
            .collect();
        let quotas = quotas(cfg, share);
        self.submit(relay, rid, false, move |r| {
            let done = r.store.enqueue(&envelopes, &quotas)?;
            r.metrics.sends.inc();
            let mut received_at = now.wall_ms;
            let mut full_devices = Vec::new();
            for (e, q) in envelopes.into_iter().zip(done) {
                if q.full.is_some() {
                    r.metrics.envelopes_device_full.inc();
                    full_devices.push(e.recipient.device);
                    continue;
                }
                received_at = q.received_at;
                if !q.fresh {
                    continue;
                }
                r.metrics.envelopes_queued.inc();
                r.metrics.envelopes_stored.inc();
                let to = e.recipient;
                // Online devices get it now (before the flush); offline ones get a wake-up.
                let fresh = Fresh {
                    prev: q.prev,
                    queued: Queued {
                        seq: q.seq,
                        envelope: e,
                    },
                };
                if !r.router.deliver(&to, Live::Envelope(Box::new(fresh))) {
                    r.pusher.wake(to);
                }
            }
            r.update_mailbox_gauge();
            Ok(server_frame::Kind::Sent(api::SendResult {
                received_at,
                full_devices,
            }))
        });
        Ok(Reply::Later)
    }

    /// Acknowledged envelopes are deleted by the writer; the answer does not wait (a lost
    /// acknowledgement only re-delivers, and the client deduplicates).
    pub(super) fn ack(
        &mut self,
        relay: &Arc<Relay>,
        a: api::Ack,
    ) -> Result<server_frame::Kind, Refusal> {
        let me = self.me()?;
        if a.seqs.len() > limits::CATCH_UP_PAGE * 16 {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                "too many sequence numbers",
            ));
        }
        let r = Arc::clone(relay);
        self.ops.push(Box::new(move || {
            match r.store.ack(&me, &a.seqs) {
                Ok(n) => {
                    r.update_mailbox_gauge();
                    r.metrics.envelopes_acked.inc_by(n as u64);
                    r.metrics
                        .envelopes_stored
                        .inc_by(-i64::try_from(n).unwrap_or(0));
                }
                Err(e) => tracing::error!(error = %e, "acknowledgement not applied"),
            }
            None
        }));
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }

    pub(super) fn ephemeral(
        &mut self,
        relay: &Relay,
        e: api::SendEphemeral,
        now: Now,
    ) -> Result<server_frame::Kind, Refusal> {
        let caller = self.caller(relay)?;
        relay.rate_limiters.send(&caller, now.at)?;
        let recipient: [u8; 32] = arr(&e.recipient_account, "recipient account")?;
        let cfg = &relay.cfg;
        if e.envelopes.len() > cfg.max_envelopes_per_send
            || e.envelopes
                .iter()
                .any(|x| x.body.len() > cfg.max_envelope_bytes)
        {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                "ephemeral send over its cap",
            ));
        }
        let devices = relay
            .devices_of(&recipient)?
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "unknown recipient account"))?;
        self.share_of(relay, &recipient, &e.envelopes)?;
        // Never stored: handed to the connected devices among those listed, dropped otherwise.
        for x in e.envelopes {
            if !devices.devices.contains_key(&x.device_id) {
                continue;
            }
            let to = DeviceId {
                account: recipient,
                device: x.device_id,
            };
            relay.router.deliver(&to, Live::Ephemeral(Box::new(x.body)));
        }
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }

    /// A new envelope from the writer: sent from memory if it directly follows what this
    /// connection has sent, otherwise read from the store in order.
    pub(super) fn offer(&mut self, relay: &Relay, fresh: Fresh) {
        if self.device().is_none() || fresh.queued.seq <= self.last_sent {
            return;
        }
        if self.need_fetch
            || fresh.prev != self.last_sent
            || self.out.len() >= limits::CONNECTION_OUT_BYTES
            || self.close.is_some()
        {
            self.need_fetch = true;
            return;
        }
        self.deliver(relay, fresh.queued);
    }

    fn deliver(&mut self, relay: &Relay, q: Queued) {
        self.last_sent = q.seq;
        relay.metrics.envelopes_delivered.inc();
        self.push(
            0,
            server_frame::Kind::Deliver(api::Deliver {
                seq: q.seq,
                client_id: q.envelope.client_id.to_vec(),
                body: q.envelope.body,
                received_at: q.envelope.received_at,
            }),
        );
    }

    /// Sends what the store holds after `last_sent`, page by page, while the output has room;
    /// after the first complete pass, tells the client its queue is drained.
    pub(super) fn fetch_mail(&mut self, relay: &Relay) {
        let Some(device) = self.device() else {
            self.need_fetch = false;
            return;
        };
        while self.need_fetch && self.out.len() < limits::CONNECTION_OUT_BYTES {
            let page = match relay
                .store
                .fetch(&device, self.last_sent, limits::CATCH_UP_PAGE)
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "fetch failed");
                    self.finish(close::PROTOCOL, b"storage failure");
                    return;
                }
            };
            let n = page.len();
            for q in page {
                self.deliver(relay, q);
            }
            if n < limits::CATCH_UP_PAGE {
                self.need_fetch = false;
                if !self.caught_up {
                    self.caught_up = true;
                    self.push(0, server_frame::Kind::QueueDrained(api::QueueDrained {}));
                }
            }
        }
    }
}

/// The mailbox caps of the settings for a send in `share`: strangers (introductions, sealed
/// sends let in by "anyone") share `max_queue_len_per_sender` / `max_queue_bytes_per_sender` of
/// each queue; contacts and one's own devices may fill it.
pub(crate) fn quotas(cfg: &crate::config::Config, share: Share) -> Quotas {
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    let (share_len, share_bytes) = if share.capped() {
        (
            n(cfg.max_queue_len_per_sender),
            cfg.max_queue_bytes_per_sender,
        )
    } else {
        (u64::MAX, u64::MAX)
    };
    Quotas {
        queue_len: n(cfg.max_queue_len),
        queue_bytes: cfg.max_queue_bytes,
        share_len,
        share_bytes,
        account_bytes: cfg.max_account_mailbox_bytes,
        total_bytes: cfg.max_mailbox_bytes,
    }
}

/// Refuses a send whose device set is not exactly the recipient's current list (less the sending
/// device when an authenticated device writes to its own account), naming what is missing and
/// what is extra.
fn mismatch(
    devices: &AccountDevices,
    envelopes: &[api::OutEnvelope],
    me: Option<DeviceId>,
    recipient: &[u8; 32],
    targeted: bool,
) -> Result<(), Refusal> {
    let mut expected: BTreeSet<u32> = devices.devices.keys().copied().collect();
    if let Some(me) = me
        && recipient == &me.account
    {
        expected.remove(&me.device);
    }
    let mut given = BTreeSet::new();
    for e in envelopes {
        if !given.insert(e.device_id) {
            return Err(Refusal::new(
                ErrorCode::Malformed,
                "two envelopes for one device",
            ));
        }
    }
    let complete = if targeted {
        given.is_subset(&expected)
    } else {
        expected == given
    };
    if complete && !given.is_empty() {
        return Ok(());
    }
    let mut r = Refusal::new(
        ErrorCode::DeviceMismatch,
        "the envelopes do not match the recipient's devices",
    );
    if !targeted {
        r.missing = expected.difference(&given).copied().collect();
    }
    r.extra = given.difference(&expected).copied().collect();
    Err(r)
}
