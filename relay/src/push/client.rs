//! One wake-up POST: the HTTP client (reqwest over rustls with the ring provider and the
//! webpki roots), the request, and what its answer means.
//!
//! The client follows no redirects, uses no proxy (whatever the environment says), resolves
//! through [`PublicResolver`], and reads at most [`MAX_RESPONSE_BODY`] bytes of an answer: only
//! its status and `Retry-After` matter.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use tokio::time::Instant;

use super::filter::{NotPublic, PublicResolver, is_public};
use super::url::{PushUrl, UrlError};
use super::webpush::{SealError, WebPushKeys, seal};
use super::{PushConfig, WAKE_BODY};

/// Most bytes of a response body read (and then thrown away) so that the connection can be
/// used again; a longer body closes the connection instead.
pub const MAX_RESPONSE_BODY: usize = 4096;

/// Upper bound on a server-requested `Retry-After` delay.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long an idle connection to a push endpoint is kept for the next wake.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Most idle connections kept per endpoint host.
const POOL_IDLE_PER_HOST: usize = 4;

/// Why one POST failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The endpoint URL is malformed.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The endpoint is `http://` and plain http is not allowed.
    #[error("plain http push endpoints are not allowed")]
    PlainHttpNotAllowed,
    /// The HTTP client could not be set up at start.
    #[error("the push client is unavailable")]
    ClientUnavailable,
    /// The POST took longer than the configured timeout.
    #[error("push request timed out")]
    Timeout,
    /// The host resolves only to addresses that are not public (loopback, private, link-local,
    /// ...), or is such an address, which the relay does not contact unless told to.
    #[error("push endpoint is not a public address")]
    NotPublic,
    /// Connecting, the TLS handshake, or the HTTP exchange failed. The error carries no URL.
    #[error("push request failed: {0}")]
    Http(reqwest::Error),
    /// Encrypting a WebPush wake or signing its VAPID token failed.
    #[error("push message could not be sealed")]
    Seal,
}

impl From<SealError> for PushError {
    fn from(_: SealError) -> Self {
        PushError::Seal
    }
}

impl From<reqwest::Error> for PushError {
    fn from(error: reqwest::Error) -> Self {
        if error.is_timeout() {
            return PushError::Timeout;
        }
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            if cause.is::<NotPublic>() {
                return PushError::NotPublic;
            }
            source = cause.source();
        }
        // The URL may hold a capability: it never reaches a log.
        PushError::Http(error.without_url())
    }
}

/// The HTTP client of the pusher.
pub(super) fn http_client(cfg: &PushConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .retry(reqwest::retry::never())
        .referer(false)
        .connect_timeout(cfg.timeout)
        .timeout(cfg.timeout)
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
        .dns_resolver(Arc::new(PublicResolver {
            allow_private: cfg.allow_private_addresses,
        }))
        .build()
}

/// The part of a response that matters: the status and any `Retry-After` delay in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) retry_after: Option<Duration>,
}

/// A `Retry-After` value in delta-seconds; an HTTP-date (or anything else) gives `None`, and
/// the computed backoff is used instead.
pub(super) fn retry_after(value: &HeaderValue) -> Option<Duration> {
    let value = value.as_bytes().trim_ascii();
    if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = value
        .iter()
        .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
    Some(Duration::from_secs(secs))
}

/// How long a push service should keep a wake for a device it cannot reach (`TTL`, seconds).
const WAKE_TTL: &str = "86400";

/// The origin of an endpoint (`https://host[:port]`, the port only when not the scheme's):
/// the audience of its VAPID tokens.
pub(super) fn origin(url: &PushUrl) -> String {
    let scheme = if url.is_https() { "https" } else { "http" };
    format!("{scheme}://{}", url.authority())
}

/// Sends one wake-up POST and reads its status (and up to [`MAX_RESPONSE_BODY`] bytes of body,
/// thrown away). With WebPush `keys`, the wake is sealed anew for this POST (fresh ephemeral key
/// and salt) and, when the relay has a VAPID key, signed for the endpoint's origin.
pub(super) async fn post(
    http: &reqwest::Client,
    url: &PushUrl,
    keys: Option<&WebPushKeys>,
    cfg: &PushConfig,
) -> Result<Reply, PushError> {
    if let Some(ip) = url.ip() {
        // An address in the URL is connected to without resolving: check it here.
        if !cfg.allow_private_addresses && !is_public(ip) {
            return Err(PushError::NotPublic);
        }
    }
    let deadline = Instant::now() + cfg.timeout;
    let mut request = http
        .post(url.to_request_url()?)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header("TTL", WAKE_TTL)
        .header("Urgency", "high");
    request = match keys {
        None => request.body(WAKE_BODY),
        Some(keys) => {
            let body = seal(keys, WAKE_BODY)?;
            let mut request = request.header(CONTENT_ENCODING, "aes128gcm").body(body);
            if let Some(vapid) = &cfg.vapid {
                let now_secs = crate::shared::now_ms() / 1000;
                let value = vapid
                    .authorization(&origin(url), now_secs)
                    .map_err(|_| PushError::Seal)?;
                request = request.header(AUTHORIZATION, value);
            }
            request
        }
    };
    let mut response = request.send().await?;
    let reply = Reply {
        status: response.status().as_u16(),
        retry_after: response.headers().get(RETRY_AFTER).and_then(retry_after),
    };
    // Reading a short body to its end lets the connection serve the next wake; a long or slow
    // one is cut off, which only costs that connection.
    let _ = tokio::time::timeout_at(deadline, async {
        let mut read = 0usize;
        while let Ok(Some(chunk)) = response.chunk().await {
            read = read.saturating_add(chunk.len());
            if read > MAX_RESPONSE_BODY {
                break;
            }
        }
    })
    .await;
    Ok(reply)
}

/// What to do after a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Accepted,
    Gone,
    /// Try again, after the server's delay if it gave one.
    Retry(Option<Duration>),
    Refused,
}

pub(super) fn classify(reply: Reply) -> Verdict {
    match reply.status {
        200..=299 => Verdict::Accepted,
        404 | 410 => Verdict::Gone,
        408 | 429 | 500..=599 => Verdict::Retry(reply.retry_after),
        _ => Verdict::Refused,
    }
}

/// Exponential backoff before retry number `retry` (1 for the first), with jitter: a random
/// delay between half the nominal one and the nominal one.
pub(super) fn backoff(cfg: &PushConfig, retry: u32) -> Duration {
    let doublings = retry.saturating_sub(1).min(31);
    let nominal = cfg
        .initial_backoff
        .saturating_mul(1u32 << doublings)
        .min(cfg.max_backoff);
    let low = nominal / 2;
    rand::rng().random_range(low..=nominal)
}
