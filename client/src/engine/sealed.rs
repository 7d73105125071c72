//! Keeping the sender of each envelope from the relay (docs/RELAY_PROTOCOL.md §14): every
//! envelope body is sealed to its recipient device (PROTOCOL.md §21), carries that device's
//! delivery token when this device holds its delivery key, and goes to other accounts on an
//! anonymous connection that never authenticates. Device lists and bundles of other accounts
//! are fetched there too, so that the relay cannot tie a lookup to the device that made it.

use std::sync::Arc;

use hush_core::device::Device;
use hush_core::keys::{AccountId, DeviceAddress};
use hush_core::sealed::DeliveryKey;
use hush_core::{Error as CoreError, ProtocolError};
use hush_proto::client::{Sealed, sealed};
use hush_proto::relay_api::{self as api, ErrorCode, client_frame, server_frame};
use hush_store_sled::SledKv;
use prost::Message;

use super::{Inner, rng};
use crate::conn::RelayConnection;
use crate::error::ClientError;

impl Inner {
    /// The anonymous connection, opened (and declared anonymous) if there is none open.
    pub(crate) async fn anonymous(&self) -> Result<Arc<RelayConnection>, ClientError> {
        let mut slot = self.anon.lock().await;
        if let Some(c) = slot.as_ref()
            && c.is_open()
        {
            return Ok(Arc::clone(c));
        }
        let (conn, mut events) = RelayConnection::connect(self.relay, &self.pin).await?;
        // Nothing is delivered on this connection; its frames (a drain notice) are dropped.
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        conn.request(client_frame::Kind::Anonymous(api::Anonymous {}))
            .await?;
        let conn = Arc::new(conn);
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Closes the anonymous connection (the engine is stopping or suspending).
    pub(super) async fn close_anonymous(&self) {
        if let Some(c) = self.anon.lock().await.take() {
            c.close();
        }
    }

    /// The connection for reading another account's public material (its device list, a
    /// bundle): the anonymous one; this account's own through `conn`.
    pub(super) async fn reader_for(
        &self,
        conn: &Arc<RelayConnection>,
        account: &AccountId,
    ) -> Result<Arc<RelayConnection>, ClientError> {
        if self.lock()?.address().account == *account {
            Ok(Arc::clone(conn))
        } else {
            self.anonymous().await
        }
    }

    /// Tells the relay this device's delivery token (who may send it sealed envelopes: its
    /// contacts, who learned its delivery key inside envelopes from it; or anyone, by choice).
    pub(super) async fn publish_delivery_token(
        &self,
        conn: &RelayConnection,
    ) -> Result<(), ClientError> {
        let token = self.lock()?.delivery_token();
        let anyone = self.sealed_from_anyone();
        conn.request(client_frame::Kind::SetDeliveryToken(
            api::SetDeliveryToken {
                token: token.as_bytes().to_vec(),
                anyone,
            },
        ))
        .await?;
        Ok(())
    }

    /// Whether this profile lets sealed envelopes in from anyone (not only from contacts).
    pub(super) fn sealed_from_anyone(&self) -> bool {
        std::fs::read_to_string(self.profile.join(crate::profile::ANYONE_FILE))
            .is_ok_and(|s| s.trim() == "1")
    }

    /// Sends a `Send` or `SendEphemeral` (`make` builds it from the envelopes) to `account`:
    /// to this account's own devices on `conn` without tokens; to another account on the
    /// anonymous connection when every envelope carries its device's token; otherwise (some
    /// device has not written to this one yet, so its delivery key is not known) on `conn`
    /// without tokens, as an introduction, the relay then learning the sender of this send.
    ///
    /// A refused token is never followed by an introduction: the relay decides refusals, and
    /// falling back would let it unmask any sender by refusing. The send fails with
    /// `UNAUTHORIZED_SEND` (permanent: the recipient rotated its key, which it does to block).
    pub(super) async fn send_request(
        &self,
        conn: &RelayConnection,
        account: &[u8; 32],
        mut envelopes: Vec<api::OutEnvelope>,
        make: impl Fn(Vec<api::OutEnvelope>) -> client_frame::Kind,
    ) -> Result<server_frame::Kind, ClientError> {
        let own = self.lock()?.address().account.as_bytes() == account;
        if !own && envelopes.iter().all(|e| !e.delivery_token.is_empty()) {
            let anon = self.anonymous().await?;
            let r = anon.request(make(envelopes)).await;
            if matches!(&r, Err(e) if RelayConnection::is_code(e, ErrorCode::UnauthorizedSend)) {
                tracing::warn!("the relay refused a delivery token; the message is not sent");
            }
            return r;
        }
        for e in &mut envelopes {
            e.delivery_token.clear();
        }
        conn.request(make(envelopes)).await
    }
}

impl Inner {
    /// Keeps the delivery key a sender's envelope carried, once its content was taken (not
    /// before: a replayed old envelope, refused as a duplicate inside, must not bring back an
    /// old key). A failure to keep it costs nothing but a later introduction: the next envelope
    /// from that device carries the key again.
    pub(super) fn keep_delivery_key(&self, from: &DeviceAddress, key: &DeliveryKey) {
        let kept = self
            .lock()
            .and_then(|mut d| Ok(d.note_delivery_key(from, key)?));
        if let Err(e) = kept {
            tracing::warn!(error = %e, "a sender's delivery key was not kept");
            self.recover_store();
        }
    }
}

/// [`envelope`], or `None` when `to` is no longer on its account's list as this device holds it
/// (it was removed since the message was prepared: the relay would refuse its envelope anyway).
pub(super) fn envelope_if_listed(
    d: &Device<SledKv>,
    to: &DeviceAddress,
    inner: sealed::Kind,
) -> Result<Option<api::OutEnvelope>, ClientError> {
    match envelope(d, to, inner) {
        Ok(e) => Ok(Some(e)),
        Err(ClientError::Core(CoreError::Protocol(ProtocolError::DeviceNotOnList))) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Seals `inner` for device `to` and attaches its delivery token if this device holds its key.
pub(super) fn envelope(
    d: &Device<SledKv>,
    to: &DeviceAddress,
    inner: sealed::Kind,
) -> Result<api::OutEnvelope, ClientError> {
    let bytes = Sealed { kind: Some(inner) }.encode_to_vec();
    let body = d.seal_for(to, &bytes, &mut rng())?;
    Ok(api::OutEnvelope {
        device_id: to.device_id,
        body,
        delivery_token: d
            .delivery_token_for(to)
            .map(|t| t.as_bytes().to_vec())
            .unwrap_or_default(),
    })
}
