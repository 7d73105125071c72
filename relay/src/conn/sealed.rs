//! What keeps the sender of an envelope from the relay (RELAY_PROTOCOL.md §14): anonymous
//! connections, which never authenticate and carry sealed sends, reads of public material and
//! group logs (`group_log.rs`), and delivery tokens, which let a sealed send into a device's queue without saying who sent
//! it. The envelopes themselves are sealed end to end (PROTOCOL.md §21): the relay stores and
//! delivers them without a sender.

use std::net::IpAddr;
use std::sync::Arc;

use hush_proto::relay_api::{self as api, ErrorCode, server_frame};
use subtle::ConstantTimeEq;

use super::{ConnState, Now, Phase, Refusal, Reply, arr};
use crate::limits;
use crate::shared::Relay;
use crate::store::{DeliveryAccess, DeviceId, Share};

impl ConnState {
    /// `Anonymous`: from now on this connection never authenticates.
    pub(super) fn go_anonymous(&mut self, relay: &Relay) -> Result<server_frame::Kind, Refusal> {
        match self.phase {
            Phase::Open | Phase::Challenged(_) => {
                self.phase = Phase::Anonymous;
                relay.metrics.anonymous_connections.inc();
                Ok(server_frame::Kind::Ok(api::Ok {}))
            }
            Phase::Anonymous => Ok(server_frame::Kind::Ok(api::Ok {})),
            Phase::Device(_) => Err(Refusal::new(
                ErrorCode::AlreadyAuthenticated,
                "an authenticated connection cannot become anonymous",
            )),
        }
    }

    /// Whom a request counts against in the rate limits: the authenticated device, or the
    /// address block of an anonymous connection.
    pub(super) fn caller(&self, relay: &Relay) -> Result<DeviceId, Refusal> {
        match self.phase {
            Phase::Device(d) => Ok(d),
            Phase::Anonymous => Ok(block_caller(relay.admission.block(self.remote))),
            Phase::Open | Phase::Challenged(_) => Err(Refusal::new(
                ErrorCode::Unauthenticated,
                "authenticate first (or declare the connection anonymous)",
            )),
        }
    }

    /// Whom a blob stream counts against, and whether it may upload (only an authenticated
    /// device may; anyone who holds a blob's capability may download it, anonymously too).
    pub fn blob_caller(&self, relay: &Relay) -> Option<(DeviceId, bool)> {
        self.caller(relay)
            .ok()
            .map(|c| (c, matches!(self.phase, Phase::Device(_))))
    }

    /// `SetDeliveryToken`: what lets sealed sends into this device's queue.
    pub(super) fn set_delivery_token(
        &mut self,
        relay: &Arc<Relay>,
        rid: u64,
        t: &api::SetDeliveryToken,
        now: Now,
    ) -> Result<Reply, Refusal> {
        let me = self.me()?;
        relay.rate_limiters.upload(&me, now.at)?;
        let token = if t.token.is_empty() {
            None
        } else {
            Some(arr::<{ limits::DELIVERY_TOKEN_LEN }>(
                &t.token,
                "a delivery token",
            )?)
        };
        let access = DeliveryAccess {
            token,
            anyone: t.anyone,
        };
        self.submit(relay, rid, true, move |r| {
            r.store.set_delivery_access(&me, Some(access))?;
            r.forget_access(&me);
            Ok(server_frame::Kind::Ok(api::Ok {}))
        });
        Ok(Reply::Later)
    }

    /// Which share of the recipient's queues a send counts against, checking delivery tokens:
    /// a device writing to its own account needs none; an authenticated send to another account
    /// without any token is an introduction; everything else (every send on an anonymous
    /// connection) needs each device's token, or a device that accepts anyone. A send with a
    /// missing or wrong token for a device that does not accept anyone is refused whole.
    pub(super) fn share_of(
        &self,
        relay: &Relay,
        recipient: &[u8; 32],
        envelopes: &[api::OutEnvelope],
    ) -> Result<Share, Refusal> {
        if let Phase::Device(me) = self.phase {
            if &me.account == recipient {
                return Ok(Share::Own);
            }
            if envelopes.iter().all(|e| e.delivery_token.is_empty()) {
                relay.metrics.introductions.inc();
                return Ok(Share::Introduction);
            }
        }
        let share = self.check_tokens(relay, recipient, envelopes)?;
        if matches!(self.phase, Phase::Anonymous) {
            relay.metrics.sealed_sends.inc();
        }
        Ok(share)
    }

    /// The delivery tokens of a sealed send (see [`ConnState::share_of`]).
    fn check_tokens(
        &self,
        relay: &Relay,
        recipient: &[u8; 32],
        envelopes: &[api::OutEnvelope],
    ) -> Result<Share, Refusal> {
        let mut share = Share::Contact;
        for e in envelopes {
            let device = DeviceId {
                account: *recipient,
                device: e.device_id,
            };
            let admits = |access: Option<DeliveryAccess>| {
                let by_token = access
                    .and_then(|a| a.token)
                    .is_some_and(|t| bool::from(t.as_slice().ct_eq(&e.delivery_token)));
                (by_token, access.is_some_and(|a| a.anyone))
            };
            let mut found = admits(relay.delivery_access(&device)?);
            if found == (false, false) && relay.shared_store() {
                // The cached copy may predate a token set through another node: a refusal is
                // final for the sender, so it is made on what the store holds now.
                found = admits(relay.reload_access(&device)?);
            }
            match found {
                (true, _) => continue,
                (false, true) => {
                    share = Share::Anyone;
                    continue;
                }
                (false, false) => {}
            }
            relay.metrics.unauthorized_sends.inc();
            return Err(Refusal::new(
                ErrorCode::UnauthorizedSend,
                format!(
                    "no valid delivery token for device {} of the recipient",
                    e.device_id
                ),
            ));
        }
        Ok(share)
    }
}

/// The rate-limit key of an anonymous connection from address block `block`: the block's
/// address in bytes that no account key is expected to equal, under device id `u32::MAX`.
fn block_caller(block: IpAddr) -> DeviceId {
    let mut account = [0xa5u8; 32];
    match block {
        IpAddr::V4(v4) => {
            if let Some(head) = account.get_mut(..4) {
                head.copy_from_slice(&v4.octets());
            }
        }
        IpAddr::V6(v6) => {
            if let Some(head) = account.get_mut(..16) {
                head.copy_from_slice(&v6.octets());
            }
        }
    }
    DeviceId {
        account,
        device: u32::MAX,
    }
}
