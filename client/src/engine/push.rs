//! The push endpoint this device asks the relay to wake it at: a plain webhook URL, or a
//! WebPush subscription (URL, P-256 key and authentication secret, as a UnifiedPush
//! distributor hands them out) whose wake-ups the relay encrypts (docs/RELAY_PROTOCOL.md §9).
//!
//! The registration is kept in the profile (`push-endpoint`) and sent again on every connection.
//! The file's first line is the URL (all that a plain registration ever wrote, so older profiles
//! read as they are); a WebPush registration adds a second line `webpush <p256dh hex> <auth
//! hex>`.

use std::path::Path;

use hush_proto::relay_api::{self as api, client_frame, server_frame};
use zeroize::Zeroizing;

use super::{CONNECT_WAIT, Engine};
use crate::error::ClientError;
use crate::profile::PUSH_FILE;

/// Length of a WebPush subscription's public key (an uncompressed P-256 point).
pub(super) const WEB_PUSH_KEY_LEN: usize = 65;
/// Length of a WebPush subscription's authentication secret.
pub(super) const WEB_PUSH_AUTH_LEN: usize = 16;

/// Tag of the profile line holding a subscription's keys.
const KEYS_TAG: &str = "webpush";

/// The registration as the relay takes it, from what the profile holds (`None` when nothing
/// is registered or the file is unreadable).
pub(super) fn saved_registration(profile: &Path) -> Option<api::RegisterPush> {
    let text = Zeroizing::new(std::fs::read_to_string(profile.join(PUSH_FILE)).ok()?);
    let mut lines = text.lines();
    let url = lines.next()?.trim().to_owned();
    if url.is_empty() {
        return None;
    }
    let mut request = api::RegisterPush {
        url,
        ..Default::default()
    };
    if let Some(line) = lines.next() {
        let mut words = line.split_whitespace();
        if words.next() == Some(KEYS_TAG)
            && let (Some(p256dh), Some(auth)) = (words.next(), words.next())
            && let (Ok(p256dh), Ok(auth)) = (hex::decode(p256dh), hex::decode(auth))
        {
            request.p256dh = p256dh;
            request.auth = auth;
        }
    }
    Some(request)
}

/// The profile file's contents for a registration.
fn saved_form(request: &api::RegisterPush) -> Zeroizing<String> {
    if request.p256dh.is_empty() {
        Zeroizing::new(request.url.clone())
    } else {
        Zeroizing::new(format!(
            "{}\n{KEYS_TAG} {} {}\n",
            request.url,
            hex::encode(&request.p256dh),
            hex::encode(&*Zeroizing::new(request.auth.clone()))
        ))
    }
}

impl Engine {
    /// The relay's VAPID public key (RFC 8292): the "application server key" a UnifiedPush
    /// distributor or push service may ask for when the app subscribes, before there is an
    /// endpoint to register with [`Engine::register_web_push`]. An uncompressed P-256 point,
    /// 65 bytes (push APIs mostly take it base64url-encoded without padding). A relay without
    /// one answers `Refused` (`NOT_FOUND`).
    pub async fn push_server_key(&self) -> Result<[u8; WEB_PUSH_KEY_LEN], ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        let kind = client_frame::Kind::PushServerKey(api::PushServerKey {});
        let server_frame::Kind::PushServerKey(r) = conn.request(kind).await? else {
            return Err(ClientError::Protocol(
                "unexpected answer to a push server key request",
            ));
        };
        match <[u8; WEB_PUSH_KEY_LEN]>::try_from(r.vapid_public_key.as_slice()) {
            Ok(key) if key.first() == Some(&0x04) => Ok(key),
            _ => Err(ClientError::Protocol(
                "the relay's VAPID key is not an uncompressed P-256 point",
            )),
        }
    }

    /// Registers a WebPush subscription as this device's push endpoint: the endpoint `url`
    /// (`https://`), the subscription's public key `p256dh` (an uncompressed P-256 point, 65
    /// bytes) and its authentication secret `auth` (16 bytes) — what a UnifiedPush distributor
    /// (or a browser-style push service) hands the app. The relay then encrypts every wake-up
    /// for the subscription (RFC 8291) and signs it with its VAPID key; the wake-up still
    /// carries nothing but a constant. Kept in the profile and registered again on every
    /// connection. A key the relay finds malformed is refused (`Refused`, `MALFORMED`).
    pub async fn register_web_push(
        &self,
        url: &str,
        p256dh: &[u8],
        auth: &[u8],
    ) -> Result<(), ClientError> {
        if url.is_empty() {
            return Err(ClientError::Invalid(
                "a WebPush subscription needs its endpoint URL".into(),
            ));
        }
        if p256dh.len() != WEB_PUSH_KEY_LEN || auth.len() != WEB_PUSH_AUTH_LEN {
            return Err(ClientError::Invalid(format!(
                "a WebPush subscription's key is {WEB_PUSH_KEY_LEN} bytes and its auth secret \
                 {WEB_PUSH_AUTH_LEN}"
            )));
        }
        self.register_endpoint(api::RegisterPush {
            url: url.to_owned(),
            p256dh: p256dh.to_vec(),
            auth: auth.to_vec(),
        })
        .await
    }

    /// Sends `request` to the relay and, once it is accepted, keeps it in the profile (an
    /// empty URL unregisters and removes it).
    pub(super) async fn register_endpoint(
        &self,
        request: api::RegisterPush,
    ) -> Result<(), ClientError> {
        let conn = self.inner.current(CONNECT_WAIT).await?;
        let saved = saved_form(&request);
        let unregister = request.url.is_empty();
        conn.request(client_frame::Kind::RegisterPush(request))
            .await?;
        let path = self.inner.profile.join(PUSH_FILE);
        let written = if unregister {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            crate::private_fs::write_atomic(&path, saved.as_bytes())
        };
        written.map_err(|e| ClientError::Profile(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_web_push_registrations_round_trip_through_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        // A profile written before subscriptions had keys: the URL alone.
        std::fs::write(dir.path().join(PUSH_FILE), "https://push.example/up/1").unwrap();
        let old = saved_registration(dir.path()).unwrap();
        assert_eq!(old.url, "https://push.example/up/1");
        assert!(old.p256dh.is_empty() && old.auth.is_empty());
        assert_eq!(&*saved_form(&old), "https://push.example/up/1");

        let web = api::RegisterPush {
            url: "https://up.example/wp/abc".into(),
            p256dh: vec![4; 65],
            auth: vec![9; 16],
        };
        std::fs::write(dir.path().join(PUSH_FILE), saved_form(&web).as_bytes()).unwrap();
        assert_eq!(saved_registration(dir.path()), Some(web));

        std::fs::write(dir.path().join(PUSH_FILE), "").unwrap();
        assert_eq!(saved_registration(dir.path()), None);
    }
}
