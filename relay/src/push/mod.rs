//! Content-free push wake-ups.
//!
//! When an envelope is queued for a device that is not connected, the relay asks the device's
//! push endpoint (UnifiedPush or any webhook-style distributor) to wake it up. The wake-up is an
//! HTTP POST of [`WAKE_BODY`], a short constant that is the same for every wake: it says nothing
//! about the sender, the content, the group, how many envelopes wait, or even which device is
//! meant. The device learns what is waiting only by connecting to the relay.
//!
//! A device that registered a WebPush subscription (its endpoint with the keys `p256dh` and
//! `auth`, as UnifiedPush distributors hand them out) gets the same constant sealed for it
//! ([`webpush`], RFC 8291), with a VAPID token ([`vapid`], RFC 8292): every such POST has the
//! same length and a fresh ciphertext.
//!
//! [`Pusher`] owns the delivery machinery: wakes for one device are coalesced, the number of
//! devices waiting is capped, POSTs in flight are bounded, transient failures are retried with
//! exponential backoff and jitter, and endpoints that answer 404 or 410 are reported gone through
//! [`PushTargets::endpoint_gone`].
//!
//! Endpoint URLs can be capability tokens, so only their host is ever logged.
//!
//! Layout: [`url`] (the endpoint URL parser), [`filter`] (which addresses may be contacted),
//! `client` (one POST through reqwest, and what its answer means), `queue` (coalescing, bounds,
//! retries and [`Pusher`]), [`webpush`] (the message encryption) and [`vapid`] (the relay's
//! identity towards push services).

mod client;
pub mod filter;
mod queue;
pub mod url;
pub mod vapid;
pub mod webpush;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::ops::Counter;
use crate::store::DeviceId;

pub use client::{MAX_RESPONSE_BODY, PushError};
pub use filter::is_public;
pub use queue::Pusher;
pub use url::{PushUrl, UrlError};
pub use vapid::{Vapid, VapidError};
pub use webpush::{KeyError, WebPushKeys};

/// The body of every wake-up POST. Identical for every wake, device and message.
pub const WAKE_BODY: &[u8] = b"wake";

/// Longest endpoint URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// What a device registered: the endpoint URL and, for a WebPush subscription, its keys (a
/// plain webhook has none).
///
/// Its `Debug` shows neither the URL (which may be a capability) nor the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Registration {
    /// The endpoint URL, as registered.
    pub url: String,
    /// The subscription's keys: wakes are then encrypted (RFC 8291) and VAPID-signed.
    pub keys: Option<WebPushKeys>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("web_push", &self.keys.is_some())
            .finish_non_exhaustive()
    }
}

/// Marks a stored registration that carries WebPush keys. A plain registration is stored as
/// its URL alone (as before keys existed), and a URL never starts with this byte.
const WEB_PUSH_RECORD: u8 = 0x01;

impl Registration {
    /// A plain webhook registration.
    pub fn webhook(url: impl Into<String>) -> Registration {
        Registration {
            url: url.into(),
            keys: None,
        }
    }

    /// The stored form: the URL's bytes for a plain webhook; `0x01 | p256dh (65) | auth (16) |
    /// URL` for a WebPush subscription.
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.keys {
            None => self.url.as_bytes().to_vec(),
            Some(keys) => {
                let mut out = Vec::with_capacity(
                    1 + webpush::P256DH_LEN + webpush::AUTH_LEN + self.url.len(),
                );
                out.push(WEB_PUSH_RECORD);
                out.extend_from_slice(keys.p256dh());
                out.extend_from_slice(keys.auth());
                out.extend_from_slice(self.url.as_bytes());
                out
            }
        }
    }

    /// Reads [`Registration::to_bytes`]; `None` if the bytes are not such a record.
    pub fn from_bytes(bytes: &[u8]) -> Option<Registration> {
        match bytes.split_first() {
            Some((&WEB_PUSH_RECORD, rest)) => {
                let (p256dh, rest) = rest.split_at_checked(webpush::P256DH_LEN)?;
                let (auth, url) = rest.split_at_checked(webpush::AUTH_LEN)?;
                Some(Registration {
                    url: String::from_utf8(url.to_vec()).ok()?,
                    keys: Some(WebPushKeys::parse(p256dh, auth).ok()?),
                })
            }
            _ => Some(Registration::webhook(
                String::from_utf8(bytes.to_vec()).ok()?,
            )),
        }
    }
}

/// Where the relay finds a device's push endpoint, and tells that it is gone.
///
/// The relay implements this over its store. Both methods are called from async tasks, so they
/// must be quick.
pub trait PushTargets: Send + Sync + 'static {
    /// The push endpoint the device registered, if any.
    fn endpoint(&self, device: &DeviceId) -> Option<Registration>;

    /// The endpoint `url` answered 404 or 410: the registration should be dropped (if it is still
    /// `url`; the device may have registered a new one meanwhile).
    fn endpoint_gone(&self, device: &DeviceId, url: &str);
}

/// Tuning of [`Pusher`].
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// How long a first wake waits before its POST, so that a burst of wakes for one device
    /// becomes one POST.
    pub coalesce: Duration,
    /// Bound on each POST (resolving, connecting, the TLS handshake, writing and reading
    /// together).
    pub timeout: Duration,
    /// Most POSTs tried for one wake, the first included (0 is treated as 1).
    pub max_attempts: u32,
    /// Backoff before the first retry; it doubles for each further retry.
    pub initial_backoff: Duration,
    /// Cap on the backoff between retries.
    pub max_backoff: Duration,
    /// Most POSTs in flight at once (0 is treated as 1).
    pub max_in_flight: usize,
    /// Most devices with a wake pending or in flight; wakes for further devices are dropped
    /// and counted in [`PushStats::dropped`].
    pub max_pending: usize,
    /// Whether `http://` endpoints are allowed (off by default: only `https://`).
    pub allow_plain_http: bool,
    /// Whether endpoints may resolve to non-public addresses (loopback, private, link-local,
    /// unique-local, ...). Off by default, so a device cannot make the relay probe or call its
    /// internal network; tests on loopback turn it on.
    pub allow_private_addresses: bool,
    /// The relay's VAPID key: WebPush POSTs carry its `Authorization` header. Without one they
    /// go unsigned (push services that require VAPID then refuse them).
    pub vapid: Option<Arc<Vapid>>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            coalesce: Duration::from_millis(200),
            timeout: Duration::from_secs(10),
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_in_flight: 32,
            max_pending: 100_000,
            allow_plain_http: false,
            allow_private_addresses: false,
            vapid: None,
        }
    }
}

/// Counters of push delivery, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct PushStats {
    /// POSTs accepted by the endpoint (2xx).
    pub sent: Counter,
    /// Wakes given up: rejected URL, refused status, or attempts exhausted.
    pub failed: Counter,
    /// Endpoints reported gone (404 or 410).
    pub gone: Counter,
    /// Wakes dropped because too many devices were waiting, or cut short by shutdown.
    pub dropped: Counter,
    /// POSTs retried after a failure or a 429.
    pub retries: Counter,
}

impl PushStats {
    fn bump(counter: &Counter) {
        counter.inc();
    }
}

#[cfg(test)]
mod tests;
