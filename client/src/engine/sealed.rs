//! Keeping the sender of each envelope from the relay (docs/RELAY_PROTOCOL.md §14): every
//! envelope body is sealed to its recipient device (PROTOCOL.md §21), carries that device's
//! delivery token when this device holds its delivery key, and goes to other accounts on an
//! anonymous connection that never authenticates. Device lists and bundles of other accounts
//! are fetched there too, so that the relay cannot tie a lookup to the device that made it.

use std::sync::Arc;

use hush_core::device::Device;
use hush_core::keys::{AccountId, DeviceAddress};
use hush_proto::client::{Sealed, sealed};
use hush_proto::relay_api::{self as api, ErrorCode, client_frame, server_frame};
use hush_store_sled::SledKv;
use prost::Message;

use super::{Inner, rng};
use crate::conn::RelayConnection;
use crate::error::ClientError;

impl Inner {
    /// The anonymous connection, opened (and declared anonymous) if there is none open.
    pub(super) async fn anonymous(&self) -> Result<Arc<RelayConnection>, ClientError> {
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
    /// delivery key is not known yet, or the relay refused a token) on `conn` without tokens,
    /// as an introduction, the relay then learning the sender of this one send.
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
            match anon.request(make(envelopes.clone())).await {
                Err(e) if RelayConnection::is_code(&e, ErrorCode::UnauthorizedSend) => {
                    tracing::debug!("a delivery token was refused; sending as an introduction");
                }
                r => return r,
            }
        }
        for e in &mut envelopes {
            e.delivery_token.clear();
        }
        conn.request(make(envelopes)).await
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
