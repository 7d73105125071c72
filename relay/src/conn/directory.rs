//! The account's public directory entries: its username (claimed with the account key's
//! signature, released, looked up) and the device's push endpoint.

use std::sync::Arc;

use hush_proto::relay_api::{self as api, ErrorCode, server_frame};

use super::{ConnState, Now, Refusal, Reply};
use crate::limits;
use crate::push::{Registration, WebPushKeys};
use crate::shared::Relay;
use crate::verify;

/// A username as the directory keeps it (normalized), or `MALFORMED`.
fn username(name: &str) -> Result<String, Refusal> {
    hush_net::username::normalize(name)
        .map_err(|e| Refusal::new(ErrorCode::Malformed, format!("username: {e}")))
}

impl ConnState {
    pub(super) fn register_push(
        &mut self,
        relay: &Arc<Relay>,
        rid: u64,
        p: api::RegisterPush,
        now: Now,
    ) -> Result<Reply, Refusal> {
        let me = self.me()?;
        relay.rate_limiters.upload(&me, now.at)?;
        let keys = WebPushKeys::parse_optional(&p.p256dh, &p.auth)
            .map_err(|e| Refusal::new(ErrorCode::Malformed, format!("push keys: {e}")))?;
        let endpoint = if p.url.is_empty() {
            if keys.is_some() {
                return Err(Refusal::new(
                    ErrorCode::Malformed,
                    "push keys without a push URL",
                ));
            }
            None
        } else {
            if p.url.len() > limits::MAX_PUSH_URL_LEN {
                return Err(Refusal::new(ErrorCode::TooLarge, "push URL too long"));
            }
            let parsed = crate::push::PushUrl::parse(&p.url)
                .map_err(|e| Refusal::new(ErrorCode::Malformed, format!("push URL: {e}")))?;
            if !parsed.is_https() && !relay.cfg.push.allow_plain_http {
                return Err(Refusal::new(ErrorCode::Malformed, "push URL must be https"));
            }
            Some(Registration { url: p.url, keys })
        };
        self.submit(relay, rid, true, move |r| {
            r.store.set_push_endpoint(&me, endpoint.as_ref())?;
            Ok(server_frame::Kind::Ok(api::Ok {}))
        });
        Ok(Reply::Later)
    }

    /// The relay's VAPID public key, to any connection (it is public, and an app needs it to
    /// subscribe before it has an endpoint to register), or `NOT_FOUND` without one.
    pub(super) fn push_server_key(relay: &Relay) -> Result<server_frame::Kind, Refusal> {
        let key = relay.vapid_public.clone().ok_or_else(|| {
            Refusal::new(
                ErrorCode::NotFound,
                "this relay signs no WebPush wake-ups (it has no VAPID key)",
            )
        })?;
        Ok(server_frame::Kind::PushServerKey(
            api::PushServerKeyResult {
                vapid_public_key: key,
            },
        ))
    }

    /// Binds a name to the device's account once the account key's signature over it verifies
    /// (any device of the account may send the claim; only the account key can make it).
    pub(super) fn claim_username(
        &mut self,
        relay: &Arc<Relay>,
        rid: u64,
        u: &api::ClaimUsername,
        now: Now,
    ) -> Result<Reply, Refusal> {
        let me = self.me()?;
        relay.rate_limiters.upload(&me, now.at)?;
        let name = username(&u.name)?;
        if u.proof.len() != limits::SIGNATURE_LEN {
            return Err(Refusal::new(
                ErrorCode::Malformed,
                format!("username proof must be {} bytes", limits::SIGNATURE_LEN),
            ));
        }
        verify::username_proof(&name, &me.account, &u.proof)?;
        let proof = u.proof.clone();
        let id = self.id;
        self.submit(relay, rid, true, move |r| {
            r.store.claim_username(&name, &me.account, &proof)?;
            tracing::debug!(conn = id, "username claimed");
            Ok(server_frame::Kind::Ok(api::Ok {}))
        });
        Ok(Reply::Later)
    }

    /// Releases the account's name (a no-op if it holds none).
    pub(super) fn release_username(
        &mut self,
        relay: &Arc<Relay>,
        rid: u64,
        now: Now,
    ) -> Result<Reply, Refusal> {
        let me = self.me()?;
        relay.rate_limiters.upload(&me, now.at)?;
        self.submit(relay, rid, true, move |r| {
            r.store.release_username(&me.account)?;
            Ok(server_frame::Kind::Ok(api::Ok {}))
        });
        Ok(Reply::Later)
    }

    /// Who holds a name, with the proof for the client to check.
    pub(super) fn lookup_username(
        &mut self,
        relay: &Relay,
        q: &api::LookupUsername,
        now: Now,
    ) -> Result<server_frame::Kind, Refusal> {
        let me = self.caller(relay)?;
        relay.rate_limiters.fetch(&me, now.at)?;
        let name = username(&q.name)?;
        let holder = relay
            .store
            .lookup_username(&name)?
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "no such username"))?;
        Ok(server_frame::Kind::Username(api::UsernameResult {
            account: holder.account.to_vec(),
            proof: holder.proof,
        }))
    }
}
