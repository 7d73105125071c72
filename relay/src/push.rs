//! Content-free push wake-ups.
//!
//! When an envelope is queued for a device that is not connected, the relay asks the device's
//! push endpoint (UnifiedPush or any webhook-style distributor) to wake it up. The wake-up is an
//! HTTP POST of [`WAKE_BODY`], a short constant that is the same for every wake: it says nothing
//! about the sender, the content, the group, how many envelopes wait, or even which device is
//! meant. The device learns what is waiting only by connecting to the relay.
//!
//! [`Pusher`] owns the delivery machinery: wakes for one device are coalesced, the number of
//! devices waiting is capped, POSTs in flight are bounded, transient failures are retried with
//! exponential backoff and jitter, and endpoints that answer 404 or 410 are reported gone through
//! [`PushTargets::endpoint_gone`].
//!
//! Endpoint URLs can be capability tokens, so only their host is ever logged.

use crate::store::DeviceId;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::RngExt;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The body of every wake-up POST. Identical for every wake, device and message.
pub const WAKE_BODY: &[u8] = b"wake";

/// Longest endpoint URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// Most bytes of a response head (status line and headers) that are read.
const MAX_RESPONSE_HEAD: usize = 4096;

/// Upper bound on a server-requested `Retry-After` delay.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Where the relay finds a device's push endpoint, and tells that it is gone.
///
/// The relay implements this over its store. Both methods are called from async tasks, so they
/// must be quick.
pub trait PushTargets: Send + Sync + 'static {
    /// The push endpoint URL the device registered, if any.
    fn endpoint(&self, device: &DeviceId) -> Option<String>;

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
    /// Bound on each POST (connect, TLS handshake, write and read together).
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
        }
    }
}

/// Counters of push delivery, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct PushStats {
    /// POSTs accepted by the endpoint (2xx).
    pub sent: AtomicU64,
    /// Wakes given up: rejected URL, refused status, or attempts exhausted.
    pub failed: AtomicU64,
    /// Endpoints reported gone (404 or 410).
    pub gone: AtomicU64,
    /// Wakes dropped because too many devices were waiting, or cut short by shutdown.
    pub dropped: AtomicU64,
    /// POSTs retried after a failure or a 429.
    pub retries: AtomicU64,
}

impl PushStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why an endpoint URL was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Longer than [`MAX_URL_LEN`].
    #[error("push URL is longer than {MAX_URL_LEN} bytes")]
    TooLong,
    /// Not `http://` or `https://`.
    #[error("push URL scheme must be http or https")]
    UnsupportedScheme,
    /// Nothing between the scheme and the path.
    #[error("push URL has no host")]
    MissingHost,
    /// Not a DNS name, an IPv4 address or a bracketed IPv6 address.
    #[error("push URL host is invalid")]
    InvalidHost,
    /// Not a decimal number from 1 to 65535.
    #[error("push URL port is invalid")]
    InvalidPort,
    /// `user:password@` before the host.
    #[error("push URL must not carry user information")]
    UserInfo,
    /// A `#fragment`.
    #[error("push URL must not carry a fragment")]
    Fragment,
    /// A path or query with spaces, control or non-ASCII characters.
    #[error("push URL path or query has invalid characters")]
    InvalidPath,
}

/// Why one POST failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The endpoint URL is malformed.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The endpoint is `http://` and plain http is not allowed.
    #[error("plain http push endpoints are not allowed")]
    PlainHttpNotAllowed,
    /// TLS could not be set up at start.
    #[error("TLS is unavailable")]
    TlsUnavailable,
    /// The host is not usable as a TLS server name.
    #[error("host is not a valid TLS server name")]
    ServerName,
    /// A step took longer than the configured timeout.
    #[error("push request timed out")]
    Timeout,
    /// Connecting, the TLS handshake, writing or reading failed.
    #[error("push request I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The response was not a well-formed HTTP/1.x response head.
    #[error("malformed HTTP response")]
    MalformedResponse,
    /// The response head was longer than the few KiB read.
    #[error("HTTP response head too large")]
    ResponseTooLarge,
    /// The host resolves only to addresses that are not public (loopback, private, link-local,
    /// ...), which the relay does not contact unless told to.
    #[error("push endpoint is not a public address")]
    NotPublic,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    Name(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// A parsed push endpoint URL: scheme, host, port, and request target.
///
/// Its `Debug` output leaves out the request target, which may be a capability.
#[derive(Clone, PartialEq, Eq)]
pub struct PushUrl {
    https: bool,
    host: Host,
    port: u16,
    target: String,
}

impl fmt::Debug for PushUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushUrl")
            .field("https", &self.https)
            .field("host", &self.host())
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn parse_port(s: &str) -> Result<u16, UrlError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UrlError::InvalidPort);
    }
    match s.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(UrlError::InvalidPort),
    }
}

fn parse_name(s: &str) -> Result<Host, UrlError> {
    if s.is_empty() {
        return Err(UrlError::MissingHost);
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return s
            .parse::<Ipv4Addr>()
            .map(Host::V4)
            .map_err(|_| UrlError::InvalidHost);
    }
    if s.len() > 253 {
        return Err(UrlError::InvalidHost);
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(UrlError::InvalidHost);
        }
    }
    // A final label of digits only would make this a malformed IPv4 address, not a name.
    if s.rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(UrlError::InvalidHost);
    }
    Ok(Host::Name(s.to_ascii_lowercase()))
}

fn parse_authority(authority: &str, default_port: u16) -> Result<(Host, u16), UrlError> {
    if authority.is_empty() {
        return Err(UrlError::MissingHost);
    }
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(UrlError::InvalidHost)?;
        let ip = inside
            .parse::<Ipv6Addr>()
            .map_err(|_| UrlError::InvalidHost)?;
        let port = if after.is_empty() {
            default_port
        } else {
            parse_port(after.strip_prefix(':').ok_or(UrlError::InvalidHost)?)?
        };
        return Ok((Host::V6(ip), port));
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, parse_port(port)?),
        None => (authority, default_port),
    };
    Ok((parse_name(host)?, port))
}

impl PushUrl {
    /// Parses `http[s]://host[:port][/path][?query]`. The host is a DNS name, an IPv4 address
    /// or a bracketed IPv6 address; user information, fragments, and spaces, control or
    /// non-ASCII characters are rejected.
    pub fn parse(url: &str) -> Result<PushUrl, UrlError> {
        if url.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        let (https, rest) = if let Some(rest) = strip_prefix_ignore_case(url, "https://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(url, "http://") {
            (false, rest)
        } else {
            return Err(UrlError::UnsupportedScheme);
        };
        if rest.contains('#') {
            return Err(UrlError::Fragment);
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at_checked(split).ok_or(UrlError::InvalidPath)?;
        let (host, port) = parse_authority(authority, if https { 443 } else { 80 })?;
        if !tail.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(UrlError::InvalidPath);
        }
        let target = if tail.starts_with('/') {
            tail.to_owned()
        } else {
            format!("/{tail}")
        };
        Ok(PushUrl {
            https,
            host,
            port,
            target,
        })
    }

    /// Whether the scheme is `https`.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The host: a lower-cased DNS name or an IP address (IPv6 without brackets). Safe to log.
    pub fn host(&self) -> String {
        match &self.host {
            Host::Name(name) => name.clone(),
            Host::V4(ip) => ip.to_string(),
            Host::V6(ip) => ip.to_string(),
        }
    }

    /// The TCP port (the scheme's default when the URL names none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Path and query, starting with `/`. May be a capability: never log it.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The `Host` header value: the host (IPv6 in brackets) and the port unless it is the
    /// scheme's default.
    pub fn authority(&self) -> String {
        let host = match &self.host {
            Host::V6(ip) => format!("[{ip}]"),
            _ => self.host(),
        };
        let default_port = if self.https { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    fn request(&self) -> Vec<u8> {
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\nTTL: 86400\r\nUrgency: high\r\nConnection: close\r\n\r\n",
            self.target,
            self.authority(),
            WAKE_BODY.len()
        )
        .into_bytes();
        request.extend_from_slice(WAKE_BODY);
        request
    }
}

/// The part of a response that matters: the status and any `Retry-After` delay in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reply {
    status: u16,
    retry_after: Option<Duration>,
}

fn parse_status_line(line: &[u8]) -> Result<u16, PushError> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))
        .ok_or(PushError::MalformedResponse)?;
    let (code, reason) = rest
        .split_at_checked(3)
        .ok_or(PushError::MalformedResponse)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(PushError::MalformedResponse);
    }
    if !(reason.is_empty() || reason.first() == Some(&b' ')) {
        return Err(PushError::MalformedResponse);
    }
    if reason.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        return Err(PushError::MalformedResponse);
    }
    let status = code
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    if (100..=599).contains(&status) {
        Ok(status)
    } else {
        Err(PushError::MalformedResponse)
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a response head: the bytes up to and including the CRLF that ends the last header.
fn parse_head(head: &[u8]) -> Result<Reply, PushError> {
    let mut lines = head.split_inclusive(|&b| b == b'\n').map(|line| {
        line.strip_suffix(b"\r\n")
            .ok_or(PushError::MalformedResponse)
    });
    let status = parse_status_line(lines.next().ok_or(PushError::MalformedResponse)??)?;
    let mut retry_after = None;
    for line in lines {
        let line = line?;
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(PushError::MalformedResponse)?;
        let (name, value) = line
            .split_at_checked(colon)
            .ok_or(PushError::MalformedResponse)?;
        if name.is_empty() || !name.iter().copied().all(is_token_byte) {
            return Err(PushError::MalformedResponse);
        }
        if name.eq_ignore_ascii_case(b"retry-after") {
            let value = value.get(1..).unwrap_or_default().trim_ascii();
            // Only delta-seconds are used; an HTTP-date falls back to the computed backoff.
            if !value.is_empty() && value.len() <= 10 && value.iter().all(u8::is_ascii_digit) {
                let secs = value
                    .iter()
                    .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
                retry_after = Some(Duration::from_secs(secs));
            }
        }
    }
    Ok(Reply {
        status,
        retry_after,
    })
}

async fn within<F: Future>(deadline: Instant, step: F) -> Result<F::Output, PushError> {
    tokio::time::timeout_at(deadline, step)
        .await
        .map_err(|_| PushError::Timeout)
}

async fn exchange<S>(mut stream: S, request: &[u8], deadline: Instant) -> Result<Reply, PushError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    within(deadline, stream.write_all(request)).await??;
    within(deadline, stream.flush()).await??;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = within(deadline, stream.read(&mut chunk)).await??;
        if n == 0 {
            return Err(PushError::MalformedResponse);
        }
        let room = MAX_RESPONSE_HEAD.saturating_sub(head.len());
        head.extend_from_slice(chunk.get(..n.min(room)).unwrap_or_default());
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = head.get(..end + 2).ok_or(PushError::MalformedResponse)?;
            return parse_head(head);
        }
        if head.len() >= MAX_RESPONSE_HEAD {
            return Err(PushError::ResponseTooLarge);
        }
    }
}

/// Sends one wake-up POST and reads the response head.
async fn post(
    url: &PushUrl,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
    allow_private: bool,
) -> Result<Reply, PushError> {
    let deadline = Instant::now() + timeout;
    let request = url.request();
    // Resolve, keep only addresses the relay may contact, and connect to exactly those (so a
    // name cannot be re-resolved to something else between the check and the connect).
    let resolved: Vec<std::net::SocketAddr> =
        within(deadline, tokio::net::lookup_host((url.host(), url.port)))
            .await??
            .filter(|a| allow_private || is_public(a.ip()))
            .collect();
    if resolved.is_empty() {
        return Err(PushError::NotPublic);
    }
    let tcp = within(deadline, TcpStream::connect(resolved.as_slice())).await??;
    // Only latency is affected if this fails.
    let _ = tcp.set_nodelay(true);
    if url.https {
        let config = tls.ok_or(PushError::TlsUnavailable)?;
        let name = ServerName::try_from(url.host()).map_err(|_| PushError::ServerName)?;
        let connector = TlsConnector::from(Arc::clone(config));
        let stream = within(deadline, connector.connect(name, tcp)).await??;
        exchange(stream, &request, deadline).await
    } else {
        exchange(tcp, &request, deadline).await
    }
}

/// Whether an address is one the relay may send a push to.
///
/// IPv4: not "this network" (0/8), loopback, private (RFC 1918), shared (RFC 6598), link-local,
/// IETF protocol assignments (192.0.0.0/24), documentation, benchmarking, the 6to4 relay anycast
/// (192.88.99.0/24), multicast, reserved or broadcast.
///
/// IPv6: not unspecified, loopback, IPv4-compatible (`::a.b.c.d`, deprecated), NAT64 (64:ff9b::/96
/// and the local-use 64:ff9b:1::/48: they reach IPv4 addresses through a translator, private ones
/// included), discard-only (100::/64), Teredo (2001::/32) and 6to4 (2002::/16) (both carry an IPv4
/// address), documentation (2001:db8::/32), unique-local (fc00::/7), site-local (fec0::/10,
/// deprecated), link-local or multicast. IPv4-mapped addresses are judged as IPv4.
pub fn is_public(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 192 && b == 88 && c == 99)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        std::net::IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(std::net::IpAddr::V4(v4));
            }
            let [s0, s1, s2, s3, s4, s5, ..] = v6.segments();
            let ipv4_compatible = s0 == 0 && s1 == 0 && s2 == 0 && s3 == 0 && s4 == 0 && s5 == 0;
            !(v6.is_loopback()
                || v6.is_unspecified()
                || ipv4_compatible
                || v6.is_multicast()
                || (s0 == 0x0064 && s1 == 0xff9b && s2 == 0 && s3 == 0 && s4 == 0 && s5 == 0)
                || (s0 == 0x0064 && s1 == 0xff9b && s2 == 0x0001)
                || (s0 == 0x0100 && s1 == 0 && s2 == 0 && s3 == 0)
                || (s0 == 0x2001 && s1 == 0)
                || s0 == 0x2002
                || (s0 == 0x2001 && s1 == 0x0db8)
                || (s0 & 0xfe00) == 0xfc00
                || (s0 & 0xffc0) == 0xfec0
                || (s0 & 0xffc0) == 0xfe80)
        }
    }
}

fn tls_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What to do after a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Accepted,
    Gone,
    /// Try again, after the server's delay if it gave one.
    Retry(Option<Duration>),
    Refused,
}

fn classify(reply: Reply) -> Verdict {
    match reply.status {
        200..=299 => Verdict::Accepted,
        404 | 410 => Verdict::Gone,
        408 | 429 | 500..=599 => Verdict::Retry(reply.retry_after),
        _ => Verdict::Refused,
    }
}

/// Exponential backoff before retry number `retry` (1 for the first), with jitter: a random
/// delay between half the nominal one and the nominal one.
fn backoff(cfg: &PushConfig, retry: u32) -> Duration {
    let doublings = retry.saturating_sub(1).min(31);
    let nominal = cfg
        .initial_backoff
        .saturating_mul(1u32 << doublings)
        .min(cfg.max_backoff);
    let low = nominal / 2;
    rand::rng().random_range(low..=nominal)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting in the queue for its coalescing delay and a free slot.
    Queued,
    /// Being delivered; `again` is set when another wake came meanwhile.
    Running { again: bool },
}

#[derive(Debug, Default)]
struct State {
    devices: HashMap<DeviceId, Phase>,
    /// Devices in [`Phase::Queued`], with the time their POST may start. All share one
    /// coalescing delay, so the times only grow from front to back.
    queue: VecDeque<(Instant, DeviceId)>,
    closed: bool,
}

struct Shared {
    cfg: PushConfig,
    targets: Arc<dyn PushTargets>,
    stats: Arc<PushStats>,
    tls: Option<Arc<ClientConfig>>,
    state: Mutex<State>,
    queued: Notify,
    waiting: watch::Sender<usize>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, state: &State) {
        self.waiting.send_replace(state.devices.len());
    }

    /// Ends a delivery: the device is queued once more if a wake came meanwhile.
    fn finish(&self, device: DeviceId) {
        let mut state = self.lock();
        let again = matches!(
            state.devices.get(&device),
            Some(Phase::Running { again: true })
        );
        if again && !state.closed {
            state.devices.insert(device, Phase::Queued);
            state
                .queue
                .push_back((Instant::now() + self.cfg.coalesce, device));
            self.queued.notify_one();
        } else {
            state.devices.remove(&device);
        }
        self.publish(&state);
    }

    /// Waits for a free POST slot, or `None` at shutdown.
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            permit = Arc::clone(&self.slots).acquire_owned() => permit.ok(),
            () = self.shutdown.cancelled() => None,
        }
    }

    /// Counts a delivery cut short by shutdown.
    fn abandon(&self) {
        PushStats::bump(&self.stats.dropped);
    }

    /// Delivers one wake, with retries. `slot` is the POST slot for the first attempt.
    async fn deliver(&self, device: DeviceId, slot: OwnedSemaphorePermit) {
        let Some(raw) = self.targets.endpoint(&device) else {
            tracing::debug!("push wake skipped: no endpoint registered");
            return;
        };
        let url = match PushUrl::parse(&raw) {
            Ok(url) => url,
            Err(error) => {
                PushStats::bump(&self.stats.failed);
                tracing::warn!(%error, "push endpoint rejected");
                return;
            }
        };
        let host = url.host();
        if !url.https && !self.cfg.allow_plain_http {
            PushStats::bump(&self.stats.failed);
            tracing::warn!(%host, error = %PushError::PlainHttpNotAllowed, "push endpoint rejected");
            return;
        }
        let max_attempts = self.cfg.max_attempts.max(1);
        let mut slot = Some(slot);
        let mut attempt = 1;
        loop {
            let permit = match slot.take() {
                Some(permit) => permit,
                None => match self.slot().await {
                    Some(permit) => permit,
                    None => return self.abandon(),
                },
            };
            let result = tokio::select! {
                result = post(
                    &url,
                    self.tls.as_ref(),
                    self.cfg.timeout,
                    self.cfg.allow_private_addresses,
                ) => result,
                () = self.shutdown.cancelled() => return self.abandon(),
            };
            drop(permit);
            let delay = match result {
                Ok(reply) => match classify(reply) {
                    Verdict::Accepted => {
                        PushStats::bump(&self.stats.sent);
                        tracing::debug!(%host, status = reply.status, "push wake accepted");
                        return;
                    }
                    Verdict::Gone => {
                        PushStats::bump(&self.stats.gone);
                        tracing::info!(%host, status = reply.status, "push endpoint gone");
                        self.targets.endpoint_gone(&device, &raw);
                        return;
                    }
                    Verdict::Refused => {
                        PushStats::bump(&self.stats.failed);
                        tracing::warn!(%host, status = reply.status, "push wake refused");
                        return;
                    }
                    Verdict::Retry(Some(after)) => {
                        tracing::debug!(%host, status = reply.status, "push wake deferred");
                        after.min(MAX_RETRY_AFTER)
                    }
                    Verdict::Retry(None) => {
                        tracing::debug!(%host, status = reply.status, "push wake deferred");
                        backoff(&self.cfg, attempt)
                    }
                },
                Err(error) => {
                    tracing::debug!(%host, %error, "push wake failed");
                    backoff(&self.cfg, attempt)
                }
            };
            if attempt >= max_attempts {
                PushStats::bump(&self.stats.failed);
                tracing::warn!(%host, attempts = attempt, "push wake given up");
                return;
            }
            attempt += 1;
            PushStats::bump(&self.stats.retries);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => return self.abandon(),
            }
        }
    }

    /// Starts queued deliveries as their coalescing delay passes and POST slots free up.
    async fn dispatch(self: Arc<Self>) {
        let tracker = TaskTracker::new();
        loop {
            let next = self.lock().queue.front().map(|&(due, _)| due);
            let Some(due) = next else {
                tokio::select! {
                    () = self.queued.notified() => continue,
                    () = self.shutdown.cancelled() => break,
                }
            };
            if due > Instant::now() {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = self.shutdown.cancelled() => break,
                }
            }
            let Some(slot) = self.slot().await else {
                break;
            };
            let device = {
                let mut state = self.lock();
                let Some((_, device)) = state.queue.pop_front() else {
                    continue;
                };
                state
                    .devices
                    .insert(device, Phase::Running { again: false });
                device
            };
            let shared = Arc::clone(&self);
            tracker.spawn(async move {
                shared.deliver(device, slot).await;
                shared.finish(device);
            });
        }
        {
            let mut state = self.lock();
            state.closed = true;
            let abandoned = state.queue.len();
            state.queue.clear();
            state
                .devices
                .retain(|_, phase| matches!(phase, Phase::Running { .. }));
            self.stats.dropped.fetch_add(
                u64::try_from(abandoned).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            self.publish(&state);
        }
        tracker.close();
        tracker.wait().await;
    }
}

/// Sends push wake-ups in the background. Cheap to clone; all clones feed one queue.
#[derive(Clone)]
pub struct Pusher {
    shared: Arc<Shared>,
}

impl fmt::Debug for Pusher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pusher")
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

impl Pusher {
    /// Starts the background task that delivers wakes. It stops when `shutdown` is cancelled:
    /// queued wakes are dropped (and counted), POSTs in flight are abandoned, and the returned
    /// handle completes. Must be called within a Tokio runtime.
    pub fn spawn(
        cfg: PushConfig,
        targets: Arc<dyn PushTargets>,
        stats: Arc<PushStats>,
        shutdown: CancellationToken,
    ) -> (Pusher, JoinHandle<()>) {
        let tls = match tls_config() {
            Ok(config) => Some(config),
            Err(error) => {
                tracing::error!(%error, "TLS set-up failed: https push endpoints will fail");
                None
            }
        };
        let slots = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
        let shared = Arc::new(Shared {
            cfg,
            targets,
            stats,
            tls,
            state: Mutex::new(State::default()),
            queued: Notify::new(),
            waiting: watch::Sender::new(0),
            slots,
            shutdown,
        });
        let task = tokio::spawn(Arc::clone(&shared).dispatch());
        (Pusher { shared }, task)
    }

    /// Asks for `device` to be woken. Never blocks and never fails: while a wake for the device
    /// is pending or in flight, this one is merged into at most one further POST after it; past
    /// [`PushConfig::max_pending`] devices, or after shutdown, it is dropped and counted.
    pub fn wake(&self, device: DeviceId) {
        let shared = &self.shared;
        let mut state = shared.lock();
        if state.closed {
            PushStats::bump(&shared.stats.dropped);
            return;
        }
        let full = state.devices.len() >= shared.cfg.max_pending;
        match state.devices.get_mut(&device) {
            Some(Phase::Queued) => {}
            Some(Phase::Running { again }) => *again = true,
            None if full => PushStats::bump(&shared.stats.dropped),
            None => {
                state.devices.insert(device, Phase::Queued);
                state
                    .queue
                    .push_back((Instant::now() + shared.cfg.coalesce, device));
                shared.publish(&state);
                shared.queued.notify_one();
            }
        }
    }

    /// How many devices have a wake pending or in flight.
    pub fn waiting(&self) -> usize {
        self.shared.lock().devices.len()
    }

    /// Resolves once no wake is pending or in flight (at once if none is).
    pub async fn idle(&self) {
        let mut waiting = self.shared.waiting.subscribe();
        // The sender lives in `self.shared`, so this cannot fail while `self` exists.
        let _ = waiting.wait_for(|&n| n == 0).await;
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::net::TcpListener;
    use tokio::sync::{mpsc, oneshot};

    const GUARD: Duration = Duration::from_secs(20);

    /// One request received by the test server, which answers it once told how.
    struct Received {
        method: String,
        target: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        answer: oneshot::Sender<(u16, Vec<(String, String)>)>,
    }

    impl Received {
        fn respond(self, status: u16) {
            self.answer.send((status, Vec::new())).unwrap();
        }
        fn respond_with(self, status: u16, headers: &[(&str, &str)]) {
            let headers = headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            self.answer.send((status, headers)).unwrap();
        }
    }

    async fn serve_one(
        mut stream: TcpStream,
        requests: mpsc::UnboundedSender<Received>,
    ) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = loop {
            let n = stream.read(&mut chunk).await?;
            assert!(n > 0, "client closed before the request ended");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
        };
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        let mut body = buf[end + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap().split(' ');
        let method = request_line.next().unwrap().to_owned();
        let target = request_line.next().unwrap().to_owned();
        assert_eq!(request_line.next(), Some("HTTP/1.1"));
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (n, v) = line.split_once(':').unwrap();
                (n.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        while body.len() < length {
            let n = stream.read(&mut chunk).await?;
            assert!(n > 0, "client closed before the body ended");
            body.extend_from_slice(&chunk[..n]);
        }
        let (answer, told) = oneshot::channel();
        requests
            .send(Received {
                method,
                target,
                headers,
                body,
                answer,
            })
            .unwrap();
        let Ok((status, extra)) = told.await else {
            return Ok(());
        };
        let mut response = format!("HTTP/1.1 {status} Test\r\n");
        for (n, v) in extra {
            response.push_str(&format!("{n}: {v}\r\n"));
        }
        response.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    }

    /// A loopback HTTP server that hands every request to the test.
    async fn server() -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve_one(stream, tx.clone()));
            }
        });
        (addr, rx)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
        tokio::time::timeout(GUARD, rx.recv())
            .await
            .expect("no request arrived")
            .expect("server stopped")
    }

    async fn settle(pusher: &Pusher) {
        tokio::time::timeout(GUARD, pusher.idle())
            .await
            .expect("pusher never became idle");
    }

    struct Targets {
        url: Mutex<Option<String>>,
        gone: mpsc::UnboundedSender<(DeviceId, String)>,
    }

    impl PushTargets for Targets {
        fn endpoint(&self, _device: &DeviceId) -> Option<String> {
            self.url.lock().unwrap().clone()
        }
        fn endpoint_gone(&self, device: &DeviceId, url: &str) {
            let mut current = self.url.lock().unwrap();
            if current.as_deref() == Some(url) {
                *current = None;
            }
            self.gone.send((*device, url.to_owned())).unwrap();
        }
    }

    fn device(n: u32) -> DeviceId {
        DeviceId {
            account: [0xA5; 32],
            device: n,
        }
    }

    fn test_config() -> PushConfig {
        PushConfig {
            coalesce: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            max_in_flight: 4,
            max_pending: 64,
            allow_plain_http: true,
            allow_private_addresses: true,
        }
    }

    struct Harness {
        pusher: Pusher,
        stats: Arc<PushStats>,
        gone: mpsc::UnboundedReceiver<(DeviceId, String)>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    fn start(cfg: PushConfig, url: Option<String>) -> Harness {
        let (gone_tx, gone) = mpsc::unbounded_channel();
        let targets = Arc::new(Targets {
            url: Mutex::new(url),
            gone: gone_tx,
        });
        let stats = Arc::new(PushStats::default());
        let shutdown = CancellationToken::new();
        let (pusher, task) = Pusher::spawn(cfg, targets, Arc::clone(&stats), shutdown.clone());
        Harness {
            pusher,
            stats,
            gone,
            shutdown,
            task,
        }
    }

    fn count(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn one_wake_is_one_content_free_post() {
        let (addr, mut requests) = server().await;
        let url = format!("http://{addr}/up/abc?token=s3cr3t");
        let h = start(test_config(), Some(url));
        h.pusher.wake(device(7));
        let req = next(&mut requests).await;
        assert_eq!(req.method, "POST");
        assert_eq!(req.target, "/up/abc?token=s3cr3t");
        assert_eq!(req.body, WAKE_BODY);
        let expected: Vec<(String, String)> = [
            ("host", addr.to_string()),
            ("content-type", "application/octet-stream".to_owned()),
            ("content-length", WAKE_BODY.len().to_string()),
            ("ttl", "86400".to_owned()),
            ("urgency", "high".to_owned()),
            ("connection", "close".to_owned()),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect();
        assert_eq!(req.headers, expected);
        let (body, headers) = (req.body.clone(), req.headers.clone());
        req.respond(201);
        settle(&h.pusher).await;
        assert!(requests.try_recv().is_err(), "a second POST was sent");
        assert_eq!(count(&h.stats.sent), 1);
        assert_eq!(count(&h.stats.failed), 0);

        // Another device gets exactly the same bytes.
        h.pusher.wake(DeviceId {
            account: [0x11; 32],
            device: 99,
        });
        let other = next(&mut requests).await;
        assert_eq!(other.body, body);
        assert_eq!(other.headers, headers);
        other.respond(200);
        settle(&h.pusher).await;
        assert_eq!(count(&h.stats.sent), 2);
    }

    #[tokio::test]
    async fn quick_wakes_for_one_device_coalesce() {
        let (addr, mut requests) = server().await;
        let h = start(test_config(), Some(format!("http://{addr}/p")));
        for _ in 0..10 {
            h.pusher.wake(device(1));
        }
        let mut posts = 0;
        loop {
            tokio::select! {
                req = next(&mut requests) => { posts += 1; req.respond(204); }
                () = settle(&h.pusher) => break,
            }
        }
        assert!((1..=2).contains(&posts), "{posts} POSTs");
        assert_eq!(count(&h.stats.sent), posts);
    }

    #[tokio::test]
    async fn wakes_during_a_post_merge_into_one_more() {
        let (addr, mut requests) = server().await;
        let h = start(test_config(), Some(format!("http://{addr}/p")));
        h.pusher.wake(device(1));
        let first = next(&mut requests).await;
        for _ in 0..9 {
            h.pusher.wake(device(1));
        }
        assert_eq!(h.pusher.waiting(), 1);
        first.respond(201);
        next(&mut requests).await.respond(201);
        settle(&h.pusher).await;
        assert!(requests.try_recv().is_err(), "a third POST was sent");
        assert_eq!(count(&h.stats.sent), 2);
    }

    #[tokio::test]
    async fn posts_in_flight_are_bounded() {
        let (addr, mut requests) = server().await;
        let cfg = PushConfig {
            max_in_flight: 2,
            ..test_config()
        };
        let h = start(cfg, Some(format!("http://{addr}/p")));
        for n in 0..3 {
            h.pusher.wake(device(n));
        }
        let first = next(&mut requests).await;
        let second = next(&mut requests).await;
        // The third wake cannot leave the queue until a slot frees up.
        assert_eq!(h.pusher.shared.slots.available_permits(), 0);
        assert_eq!(h.pusher.shared.lock().queue.len(), 1);
        assert_eq!(h.pusher.waiting(), 3);
        first.respond(201);
        let third = next(&mut requests).await;
        second.respond(201);
        third.respond(201);
        settle(&h.pusher).await;
        assert_eq!(count(&h.stats.sent), 3);
    }

    #[tokio::test]
    async fn gone_endpoint_is_reported_and_not_retried() {
        let (addr, mut requests) = server().await;
        let url = format!("http://{addr}/gone-token");
        let mut h = start(test_config(), Some(url.clone()));
        h.pusher.wake(device(3));
        next(&mut requests).await.respond(404);
        let (dev, gone_url) = tokio::time::timeout(GUARD, h.gone.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(dev, device(3));
        assert_eq!(gone_url, url);
        settle(&h.pusher).await;
        assert!(requests.try_recv().is_err());
        assert_eq!(count(&h.stats.gone), 1);
        assert_eq!(count(&h.stats.retries), 0);
        assert_eq!(count(&h.stats.failed), 0);

        // 410 is gone too.
        let mut h = start(test_config(), Some(url));
        h.pusher.wake(device(4));
        next(&mut requests).await.respond(410);
        assert_eq!(h.gone.recv().await.unwrap().0, device(4));
        settle(&h.pusher).await;
        assert_eq!(count(&h.stats.gone), 1);
    }

    #[tokio::test]
    async fn server_error_is_retried_then_succeeds() {
        let (addr, mut requests) = server().await;
        let h = start(test_config(), Some(format!("http://{addr}/p")));
        h.pusher.wake(device(1));
        next(&mut requests).await.respond(500);
        next(&mut requests).await.respond(201);
        settle(&h.pusher).await;
        assert_eq!(count(&h.stats.retries), 1);
        assert_eq!(count(&h.stats.sent), 1);
        assert_eq!(count(&h.stats.failed), 0);
    }

    #[tokio::test]
    async fn attempts_are_bounded() {
        let (addr, mut requests) = server().await;
        let cfg = PushConfig {
            max_attempts: 2,
            ..test_config()
        };
        let h = start(cfg, Some(format!("http://{addr}/p")));
        h.pusher.wake(device(1));
        next(&mut requests).await.respond(503);
        next(&mut requests).await.respond(502);
        settle(&h.pusher).await;
        assert!(requests.try_recv().is_err());
        assert_eq!(count(&h.stats.retries), 1);
        assert_eq!(count(&h.stats.failed), 1);
        assert_eq!(count(&h.stats.sent), 0);
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let (addr, mut requests) = server().await;
        let h = start(test_config(), Some(format!("http://{addr}/p")));
        h.pusher.wake(device(1));
        next(&mut requests).await.respond(400);
        settle(&h.pusher).await;
        assert!(requests.try_recv().is_err());
        assert_eq!(count(&h.stats.failed), 1);
        assert_eq!(count(&h.stats.retries), 0);
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        let (addr, mut requests) = server().await;
        let cfg = PushConfig {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            ..test_config()
        };
        let h = start(cfg, Some(format!("http://{addr}/p")));
        h.pusher.wake(device(1));
        let first = next(&mut requests).await;
        let answered = std::time::Instant::now();
        first.respond_with(429, &[("Retry-After", "1")]);
        let second = next(&mut requests).await;
        let waited = answered.elapsed();
        assert!(
            waited >= Duration::from_millis(950),
            "retried after {waited:?}"
        );
        second.respond(201);
        settle(&h.pusher).await;
        assert_eq!(count(&h.stats.retries), 1);
        assert_eq!(count(&h.stats.sent), 1);
    }

    #[tokio::test]
    async fn bad_or_plain_urls_are_rejected_without_a_request() {
        let (addr, mut requests) = server().await;
        let h = start(test_config(), Some(format!("ftp://{addr}/p")));
        h.pusher.wake(device(1));
        settle(&h.pusher).await;
        assert_eq!(count(&h.stats.failed), 1);

        let cfg = PushConfig {
            allow_plain_http: false,
            ..test_config()
        };
        let h = start(cfg, Some(format!("http://{addr}/p")));
        h.pusher.wake(device(1));
        settle(&h.pusher).await;
        assert_eq!(count(&h.stats.failed), 1);
        assert!(requests.try_recv().is_err());
    }

    #[tokio::test]
    async fn no_endpoint_means_no_request() {
        let h = start(test_config(), None);
        h.pusher.wake(device(1));
        settle(&h.pusher).await;
        assert_eq!(count(&h.stats.failed), 0);
        assert_eq!(count(&h.stats.sent), 0);
    }

    #[tokio::test]
    async fn https_endpoint_starts_a_tls_handshake() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = PushConfig {
            max_attempts: 1,
            allow_plain_http: false,
            ..test_config()
        };
        let h = start(cfg, Some(format!("https://{addr}/p")));
        h.pusher.wake(device(1));
        let (mut stream, _) = tokio::time::timeout(GUARD, listener.accept())
            .await
            .unwrap()
            .unwrap();
        let mut record = [0u8; 3];
        stream.read_exact(&mut record).await.unwrap();
        assert_eq!(record[0], 0x16, "not a TLS handshake record");
        assert_eq!(record[1], 0x03);
        drop(stream);
        settle(&h.pusher).await;
        assert_eq!(count(&h.stats.failed), 1);
        assert_eq!(count(&h.stats.sent), 0);
    }

    #[tokio::test]
    async fn pending_devices_are_capped_and_shutdown_stops() {
        let cfg = PushConfig {
            coalesce: Duration::from_secs(3600),
            max_pending: 2,
            ..test_config()
        };
        let h = start(cfg, None);
        h.pusher.wake(device(1));
        h.pusher.wake(device(2));
        h.pusher.wake(device(2));
        h.pusher.wake(device(3));
        assert_eq!(h.pusher.waiting(), 2);
        assert_eq!(count(&h.stats.dropped), 1);
        h.shutdown.cancel();
        tokio::time::timeout(GUARD, h.task).await.unwrap().unwrap();
        assert_eq!(h.pusher.waiting(), 0);
        assert_eq!(count(&h.stats.dropped), 3);
        h.pusher.wake(device(1));
        assert_eq!(count(&h.stats.dropped), 4);
        settle(&h.pusher).await;
    }

    #[tokio::test(start_paused = true)]
    async fn coalescing_delay_holds_the_first_post() {
        let (gone, _gone_rx) = mpsc::unbounded_channel();
        let targets = Arc::new(Targets {
            url: Mutex::new(None),
            gone,
        });
        let stats = Arc::new(PushStats::default());
        let cfg = PushConfig {
            coalesce: Duration::from_secs(5),
            ..test_config()
        };
        let (pusher, _task) = Pusher::spawn(cfg, targets, stats, CancellationToken::new());
        let start = Instant::now();
        pusher.wake(device(1));
        pusher.idle().await;
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[test]
    fn push_targets_exclude_every_range_that_reaches_a_private_or_translated_address() {
        let public = |s: &str| is_public(s.parse().unwrap());
        for allowed in [
            "93.184.216.34",
            "8.8.8.8",
            "192.0.1.1",
            "192.88.98.1",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "64:ff9c::1",
            "2003::1",
        ] {
            assert!(public(allowed), "{allowed} should be allowed");
        }
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "192.0.0.8",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "0.1.2.3",
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "::8.8.8.8",
            "64:ff9b::a00:1",
            "64:ff9b::808:808",
            "64:ff9b:1::a00:1",
            "100::1",
            "2001:0:4136:e378::1",
            "2002:c0a8:0101::1",
            "2002:0808:0808::1",
            "2001:db8::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "feff::1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(!public(blocked), "{blocked} should be blocked");
        }
    }

    #[test]
    fn parses_https_urls() {
        let url = PushUrl::parse("https://push.example.org/up?token=abc").unwrap();
        assert!(url.is_https());
        assert_eq!(url.host(), "push.example.org");
        assert_eq!(url.port(), 443);
        assert_eq!(url.target(), "/up?token=abc");
        assert_eq!(url.authority(), "push.example.org");

        let url = PushUrl::parse("HTTPS://Push.Example.ORG").unwrap();
        assert_eq!(url.host(), "push.example.org");
        assert_eq!(url.target(), "/");

        let url = PushUrl::parse("https://[2001:db8::1]:8443/p/q").unwrap();
        assert_eq!(url.host(), "2001:db8::1");
        assert_eq!(url.port(), 8443);
        assert_eq!(url.authority(), "[2001:db8::1]:8443");

        let url = PushUrl::parse("https://192.0.2.7?x=1").unwrap();
        assert_eq!(url.host(), "192.0.2.7");
        assert_eq!(url.target(), "/?x=1");

        let url = PushUrl::parse("http://ntfy.sh:80/a_b-c").unwrap();
        assert!(!url.is_https());
        assert_eq!(url.authority(), "ntfy.sh");

        let debug = format!("{:?}", PushUrl::parse("https://h.example/secret").unwrap());
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn rejects_bad_urls() {
        use UrlError::*;
        let cases: &[(&str, UrlError)] = &[
            ("ftp://host/x", UnsupportedScheme),
            ("//host/x", UnsupportedScheme),
            ("host/x", UnsupportedScheme),
            ("https://", MissingHost),
            ("https:///x", MissingHost),
            ("https://user:pw@host/x", UserInfo),
            ("https://host/x#frag", Fragment),
            ("https://host:0/", InvalidPort),
            ("https://host:65536/", InvalidPort),
            ("https://host:/", InvalidPort),
            ("https://host:8a/", InvalidPort),
            ("https://host:+80/", InvalidPort),
            ("https://ho st/", InvalidHost),
            ("https://a..b/", InvalidHost),
            ("https://-a.example/", InvalidHost),
            ("https://1.2.3/", InvalidHost),
            ("https://256.1.1.1/", InvalidHost),
            ("https://exa%6dple.com/", InvalidHost),
            ("https://::1/", InvalidPort),
            ("https://[::1/", InvalidHost),
            ("https://[::1]x/", InvalidHost),
            ("https://[fe80::1%25eth0]/", InvalidHost),
            ("https://h\u{e9}.example/", InvalidHost),
            ("https://host/a b", InvalidPath),
            ("https://host/a\r\nX-Injected: 1", InvalidPath),
            ("https://host/\u{e9}", InvalidPath),
        ];
        for (url, want) in cases {
            assert_eq!(PushUrl::parse(url), Err(*want), "{url}");
        }
        let long = format!("https://host/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(PushUrl::parse(&long), Err(TooLong));
    }

    #[test]
    fn parses_response_heads_strictly() {
        let ok = |head: &str| parse_head(head.as_bytes()).map(|r| (r.status, r.retry_after));
        assert_eq!(ok("HTTP/1.1 201 Created\r\n").unwrap(), (201, None));
        assert_eq!(ok("HTTP/1.0 200\r\n").unwrap(), (200, None));
        assert_eq!(
            ok("HTTP/1.1 429 Too Many\r\nretry-after:  30 \r\nX: y\r\n").unwrap(),
            (429, Some(Duration::from_secs(30)))
        );
        assert_eq!(
            ok("HTTP/1.1 503 Busy\r\nRetry-After: Fri, 07 Nov 2025 10:00:00 GMT\r\n").unwrap(),
            (503, None)
        );
        for bad in [
            "HTTP/2 200 OK\r\n",
            "http/1.1 200 OK\r\n",
            "HTTP/1.1 20 OK\r\n",
            "HTTP/1.1 2000 OK\r\n",
            "HTTP/1.1 2x0 OK\r\n",
            "HTTP/1.1 099 Low\r\n",
            "HTTP/1.1 600 High\r\n",
            "HTTP/1.1  200 OK\r\n",
            "HTTP/1.1 200 OK\n",
            "HTTP/1.1 200 O\x01K\r\n",
            "HTTP/1.1 200 OK\r\nno colon\r\n",
            "HTTP/1.1 200 OK\r\n folded: x\r\n",
            "",
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn classifies_statuses() {
        let reply = |status| Reply {
            status,
            retry_after: None,
        };
        assert_eq!(classify(reply(200)), Verdict::Accepted);
        assert_eq!(classify(reply(202)), Verdict::Accepted);
        assert_eq!(classify(reply(404)), Verdict::Gone);
        assert_eq!(classify(reply(410)), Verdict::Gone);
        assert_eq!(classify(reply(429)), Verdict::Retry(None));
        assert_eq!(classify(reply(500)), Verdict::Retry(None));
        assert_eq!(classify(reply(301)), Verdict::Refused);
        assert_eq!(classify(reply(401)), Verdict::Refused);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let cfg = PushConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..PushConfig::default()
        };
        for _ in 0..50 {
            let first = backoff(&cfg, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&cfg, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(&cfg, 40);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }
}
