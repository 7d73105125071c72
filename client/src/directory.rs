//! The relay's username directory (docs/RELAY_PROTOCOL.md §12): claim a name for this account,
//! and find the account behind a name. A lookup is checked here, not trusted: the relay must
//! return the account key's signature binding the name to the account
//! ([`hush_core::username::verify_username`]), which it cannot forge.

use hush_core::keys::AccountId;
use hush_core::username::verify_username;
use hush_net::username::normalize;
use hush_proto::relay_api::{self as api, client_frame, server_frame};

use crate::engine::{CONNECT_WAIT, Engine};
use crate::error::ClientError;

impl Engine {
    /// Claims `name` (normalized: ASCII lowercase; 3–32 of `a-z0-9_.-`, starting with a letter)
    /// for this account, first come first served; a name held before is released. Only the
    /// device holding the account key can sign the claim (`Core(Protocol(Misuse))` otherwise);
    /// `Refused` with `USERNAME_TAKEN` if another account holds the name.
    pub async fn claim_username(&self, name: &str) -> Result<(), ClientError> {
        let name = normalize(name)?;
        let proof = self.inner.lock()?.sign_username(&name)?;
        let conn = self.inner.current(CONNECT_WAIT).await?;
        match conn
            .request(client_frame::Kind::ClaimUsername(api::ClaimUsername {
                name,
                proof: proof.to_vec(),
            }))
            .await?
        {
            server_frame::Kind::Ok(_) => Ok(()),
            _ => Err(ClientError::Protocol(
                "unexpected answer to a username claim",
            )),
        }
    }

    /// Releases this account's username, if it holds one.
    pub async fn release_username(&self) -> Result<(), ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        match conn
            .request(client_frame::Kind::ReleaseUsername(api::ReleaseUsername {}))
            .await?
        {
            server_frame::Kind::Ok(_) => Ok(()),
            _ => Err(ClientError::Protocol(
                "unexpected answer to a username release",
            )),
        }
    }

    /// The account holding `name`, verified: the relay's answer is used only if the account
    /// key's signature binds the normalized name to that account (`Core(Auth(BadSignature))`
    /// otherwise). `Refused` with `NOT_FOUND` if nobody holds it.
    pub async fn lookup_username(&self, name: &str) -> Result<AccountId, ClientError> {
        let name = normalize(name)?;
        // On the anonymous connection: the relay does not learn who looked the name up.
        self.inner.current(CONNECT_WAIT).await?;
        let conn = self.inner.anonymous().await?;
        let server_frame::Kind::Username(found) = conn
            .request(client_frame::Kind::LookupUsername(api::LookupUsername {
                name: name.clone(),
            }))
            .await?
        else {
            return Err(ClientError::Protocol(
                "unexpected answer to a username lookup",
            ));
        };
        let account = AccountId::from_bytes(&found.account)?;
        verify_username(&name, &account, &found.proof)?;
        Ok(account)
    }
}
