//! Operations: metrics and health over plain HTTP on a separate port.
//!
//! [`Metrics`] holds the relay's counters, gauges and histograms as atomics, cheap to update
//! from any task, and renders them in the Prometheus text exposition format (version 0.0.4).
//! [`serve`] answers `GET /metrics` and `GET /health` on a listener of its own, meant for an
//! operator's network only: it carries no message data, but it does show traffic volumes.
//!
//! The server is deliberately small: one request per connection, a bounded request head, a read
//! and a write timeout, and a cap on connections served at once.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use hush_proto::relay_api::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::push::PushStats;

/// Prefix of every metric name.
const PREFIX: &str = "hush_relay_";

/// Most bytes of a request head read before it is refused with 431.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// How long a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client has to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// After the response, how long unread input is drained so that closing does not reset the
/// connection before the client has read the response.
const LINGER: Duration = Duration::from_secs(1);

/// Most bytes drained after the response.
const LINGER_BYTES: usize = 64 * 1024;

/// Most connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 64;

/// How long connections still being served get once shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Buckets of [`Metrics::flush_latency`], in seconds.
pub const FLUSH_LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Buckets of [`Metrics::flush_batch`], in items per flush.
pub const FLUSH_BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// A gauge at zero.
    pub const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.add(-1);
    }

    /// Adds `n` (which may be negative).
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution over fixed buckets, with a count and a sum.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, finite and strictly increasing.
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative); one more than `bounds`, for `+Inf`.
    buckets: Vec<AtomicU64>,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with the given bucket upper bounds (in seconds for durations). Bounds that
    /// are not finite are left out; the rest are sorted and deduplicated. A `+Inf` bucket is
    /// always added.
    pub fn new(bounds: &[f64]) -> Self {
        let mut bounds: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds,
            buckets,
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records a duration, in seconds.
    pub fn observe(&self, elapsed: Duration) {
        self.observe_value(elapsed.as_secs_f64());
    }

    /// Records a plain value (such as a batch size). Values that are not finite are ignored.
    pub fn observe_value(&self, value: f64) {
        if !value.is_finite() {
            return;
        }
        let index = self.bounds.partition_point(|&bound| bound < value);
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        // `fetch_update` retries on contention; the closure never returns `None`, so it cannot fail.
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// The bucket upper bounds (without `+Inf`).
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .fold(0u64, u64::saturating_add)
    }

    /// The sum of all observations.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }
}

/// Why the relay refused a request or a connection: the `reason` label of `refusals_total`.
/// Each error code has a reason of its own ([`Refusal::of`] matches every code, so a new code
/// cannot be added without one); [`Refusal::ConnectionCap`] is the relay-wide connection cap,
/// which refuses before any code can be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// `MALFORMED`: the request could not be decoded or a field is out of range.
    Malformed,
    /// `UNAUTHENTICATED`: the request needs an authenticated connection.
    Unauthenticated,
    /// `AUTH_FAILED`: authentication was tried and failed.
    AuthFailed,
    /// `FORBIDDEN`: the authenticated device may not do this.
    Forbidden,
    /// `NOT_FOUND`: unknown account, device, pre-keys, username or link message.
    NotFound,
    /// `ACCOUNT_EXISTS`.
    AccountExists,
    /// `STALE_DEVICE_LIST`: a device list not newer than the stored one.
    StaleDeviceList,
    /// `BAD_SIGNATURE`: a signed item does not verify.
    BadSignature,
    /// `DEVICE_MISMATCH`: a send's devices differ from the recipient's list.
    DeviceMismatch,
    /// `RATE_LIMITED`: a rate limit or a per-block cap was hit.
    RateLimited,
    /// `TOO_LARGE`: the request or its payload was too large.
    TooLarge,
    /// `QUEUE_FULL`: the recipient's queue is full.
    QueueFull,
    /// `TOO_MANY_DEVICES`: the account has too many devices.
    TooManyDevices,
    /// `UNKNOWN_REQUEST`: an empty or unknown request.
    UnknownRequest,
    /// `DRAINING`: the relay is draining for shutdown.
    Draining,
    /// `INTERNAL`: a storage failure.
    Internal,
    /// `BLOB_NOT_FOUND`.
    BlobNotFound,
    /// `USERNAME_TAKEN`: a username claim for a name another account holds.
    UsernameTaken,
    /// `SENDER_QUOTA`: the sender's share of a device queue is used up.
    SenderQuota,
    /// `MAILBOX_FULL`: the recipient account's mailbox is at its byte cap.
    MailboxFull,
    /// `RELAY_FULL`: the relay's mailbox storage is at its cap.
    RelayFull,
    /// `BLOB_QUOTA_EXCEEDED`: blob storage of the account or the relay is at its cap.
    BlobQuota,
    /// `LINK_TABLE_FULL`: the relay's table of pending device links is full.
    LinkTableFull,
    /// `ALREADY_AUTHENTICATED`: authentication on an authenticated connection.
    AlreadyAuthenticated,
    /// `TOO_MANY_CONNECTIONS`: the address block's or the account's connection cap (a
    /// connection closed with the close code of that name counts here too).
    TooManyConnections,
    /// `DEVICE_REVOKED`: authentication by a device that is not on its account's list.
    DeviceRevoked,
    /// The relay-wide connection cap was reached (refused during the handshake).
    ConnectionCap,
    /// An error frame without a code (never sent by this relay).
    Unspecified,
}

impl Refusal {
    /// Every reason, in rendering order.
    pub const ALL: [Refusal; 28] = [
        Refusal::Malformed,
        Refusal::Unauthenticated,
        Refusal::AuthFailed,
        Refusal::Forbidden,
        Refusal::NotFound,
        Refusal::AccountExists,
        Refusal::StaleDeviceList,
        Refusal::BadSignature,
        Refusal::DeviceMismatch,
        Refusal::RateLimited,
        Refusal::TooLarge,
        Refusal::QueueFull,
        Refusal::TooManyDevices,
        Refusal::UnknownRequest,
        Refusal::Draining,
        Refusal::Internal,
        Refusal::BlobNotFound,
        Refusal::UsernameTaken,
        Refusal::SenderQuota,
        Refusal::MailboxFull,
        Refusal::RelayFull,
        Refusal::BlobQuota,
        Refusal::LinkTableFull,
        Refusal::AlreadyAuthenticated,
        Refusal::TooManyConnections,
        Refusal::DeviceRevoked,
        Refusal::ConnectionCap,
        Refusal::Unspecified,
    ];

    /// The reason of a refusal with `code`.
    pub fn of(code: ErrorCode) -> Self {
        match code {
            ErrorCode::Malformed => Refusal::Malformed,
            ErrorCode::Unauthenticated => Refusal::Unauthenticated,
            ErrorCode::AuthFailed => Refusal::AuthFailed,
            ErrorCode::Forbidden => Refusal::Forbidden,
            ErrorCode::NotFound => Refusal::NotFound,
            ErrorCode::AccountExists => Refusal::AccountExists,
            ErrorCode::StaleDeviceList => Refusal::StaleDeviceList,
            ErrorCode::BadSignature => Refusal::BadSignature,
            ErrorCode::DeviceMismatch => Refusal::DeviceMismatch,
            ErrorCode::RateLimited => Refusal::RateLimited,
            ErrorCode::TooLarge => Refusal::TooLarge,
            ErrorCode::QueueFull => Refusal::QueueFull,
            ErrorCode::TooManyDevices => Refusal::TooManyDevices,
            ErrorCode::UnknownRequest => Refusal::UnknownRequest,
            ErrorCode::Draining => Refusal::Draining,
            ErrorCode::Internal => Refusal::Internal,
            ErrorCode::BlobNotFound => Refusal::BlobNotFound,
            ErrorCode::UsernameTaken => Refusal::UsernameTaken,
            ErrorCode::SenderQuota => Refusal::SenderQuota,
            ErrorCode::MailboxFull => Refusal::MailboxFull,
            ErrorCode::RelayFull => Refusal::RelayFull,
            ErrorCode::BlobQuotaExceeded => Refusal::BlobQuota,
            ErrorCode::LinkTableFull => Refusal::LinkTableFull,
            ErrorCode::AlreadyAuthenticated => Refusal::AlreadyAuthenticated,
            ErrorCode::TooManyConnections => Refusal::TooManyConnections,
            ErrorCode::DeviceRevoked => Refusal::DeviceRevoked,
            ErrorCode::Unspecified => Refusal::Unspecified,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::AuthFailed => "auth_failed",
            Refusal::Forbidden => "forbidden",
            Refusal::NotFound => "not_found",
            Refusal::AccountExists => "account_exists",
            Refusal::StaleDeviceList => "stale_device_list",
            Refusal::BadSignature => "bad_signature",
            Refusal::DeviceMismatch => "device_mismatch",
            Refusal::RateLimited => "rate_limited",
            Refusal::TooLarge => "too_large",
            Refusal::QueueFull => "queue_full",
            Refusal::TooManyDevices => "too_many_devices",
            Refusal::UnknownRequest => "unknown_request",
            Refusal::Draining => "draining",
            Refusal::Internal => "internal",
            Refusal::BlobNotFound => "blob_not_found",
            Refusal::UsernameTaken => "username_taken",
            Refusal::SenderQuota => "sender_quota",
            Refusal::MailboxFull => "mailbox_full",
            Refusal::RelayFull => "relay_full",
            Refusal::BlobQuota => "blob_quota",
            Refusal::LinkTableFull => "link_table_full",
            Refusal::AlreadyAuthenticated => "already_authenticated",
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::DeviceRevoked => "device_revoked",
            Refusal::ConnectionCap => "connection_cap",
            Refusal::Unspecified => "unspecified",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why the relay closed a connection on a deadline: the `kind` label of
/// `connection_timeouts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timeout {
    /// The connection did not authenticate in time (and held no pending link).
    Auth,
    /// A frame on the session stream did not arrive whole within its deadline.
    Frame,
    /// The client did not take what the relay wrote on the session stream.
    Write,
}

impl Timeout {
    /// Every kind, in rendering order.
    pub const ALL: [Timeout; 3] = [Timeout::Auth, Timeout::Frame, Timeout::Write];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Timeout::Auth => "auth",
            Timeout::Frame => "frame",
            Timeout::Write => "write",
        }
    }
}

/// Connections closed on a deadline, by kind.
#[derive(Debug, Default)]
pub struct Timeouts {
    counts: [Counter; Timeout::ALL.len()],
}

impl Timeouts {
    /// Counts one timeout of `kind`.
    pub fn inc(&self, kind: Timeout) {
        if let Some(counter) = self.counts.get(kind as usize) {
            counter.inc();
        }
    }

    /// How many timeouts of `kind` were counted.
    pub fn get(&self, kind: Timeout) -> u64 {
        self.counts.get(kind as usize).map_or(0, Counter::get)
    }
}

/// Refusals counted by reason.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [Counter; Refusal::ALL.len()],
}

impl Refusals {
    /// Counts one refusal for `reason`.
    pub fn inc(&self, reason: Refusal) {
        if let Some(counter) = self.counts.get(reason.index()) {
            counter.inc();
        }
    }

    /// How many refusals were counted for `reason`.
    pub fn get(&self, reason: Refusal) -> u64 {
        self.counts.get(reason.index()).map_or(0, Counter::get)
    }
}

/// Which one-time key limit kept one-time keys out of a bundle: the `limit` label of
/// `one_time_keys_withheld_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyLimit {
    /// Per target device.
    Target,
    /// Per (requesting account, target account).
    Pair,
    /// Per requesting account.
    Requester,
}

impl KeyLimit {
    /// Every limit, in rendering order.
    pub const ALL: [KeyLimit; 3] = [KeyLimit::Target, KeyLimit::Pair, KeyLimit::Requester];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyLimit::Target => "target",
            KeyLimit::Pair => "pair",
            KeyLimit::Requester => "requester",
        }
    }
}

/// Bundles served without one-time keys, by the limit that withheld them.
#[derive(Debug, Default)]
pub struct Withheld {
    counts: [Counter; KeyLimit::ALL.len()],
}

impl Withheld {
    /// Counts one bundle withheld by `limit`.
    pub fn inc(&self, limit: KeyLimit) {
        if let Some(c) = self.counts.get(limit as usize) {
            c.inc();
        }
    }

    /// How many bundles `limit` withheld.
    pub fn get(&self, limit: KeyLimit) -> u64 {
        self.counts.get(limit as usize).map_or(0, Counter::get)
    }
}

/// The relay's metrics. Every field is updated in place by the code it describes.
#[derive(Debug)]
pub struct Metrics {
    /// Client connections open now.
    pub connections_open: Gauge,
    /// Client connections accepted since start.
    pub connections_total: Counter,
    /// Client connections refused (cap, draining, handshake failure).
    pub connections_refused: Counter,
    /// Connection attempts answered with a QUIC Retry (address validation under load).
    pub connections_retried: Counter,
    /// Failed authentication attempts.
    pub auth_failures: Counter,
    /// Send requests handled.
    pub sends: Counter,
    /// Envelopes put in a mailbox.
    pub envelopes_queued: Counter,
    /// Envelopes handed to a connected device.
    pub envelopes_delivered: Counter,
    /// Envelopes acknowledged and removed.
    pub envelopes_acked: Counter,
    /// Envelopes currently queued in mailboxes.
    pub envelopes_stored: Gauge,
    /// Envelopes removed unacknowledged because they expired.
    pub envelopes_expired: Counter,
    /// Bytes queued in all mailboxes (as the mailbox caps count them), set from the store after
    /// every change.
    pub mailbox_bytes: Gauge,
    /// Envelopes of accepted sends left out because their device's queue (or the sender's share
    /// of it) was full.
    pub envelopes_device_full: Counter,
    /// Bundles handed out with one-time keys.
    pub one_time_keys_claimed: Counter,
    /// Bundles handed out without one-time keys because a limit was reached, by limit.
    pub one_time_keys_withheld: Withheld,
    /// `PreKeysLow` notifications sent.
    pub pre_keys_low_sent: Counter,
    /// Ephemeral (never stored) messages delivered to an online device.
    pub ephemeral_delivered: Counter,
    /// Pre-key bundles handed out.
    pub prekey_bundles: Counter,
    /// Blobs uploaded.
    pub blobs_uploaded: Counter,
    /// Bytes of blobs uploaded.
    pub blob_bytes_uploaded: Counter,
    /// Blobs downloaded.
    pub blobs_downloaded: Counter,
    /// Declared bytes of the blobs stored now (uploads in progress included).
    pub blob_bytes_stored: Gauge,
    /// Blob streams reset because they missed a deadline.
    pub blob_streams_timed_out: Counter,
    /// Time to flush the store, in seconds ([`FLUSH_LATENCY_BUCKETS`]).
    pub flush_latency: Histogram,
    /// Writes per store flush ([`FLUSH_BATCH_BUCKETS`]).
    pub flush_batch: Histogram,
    /// Refusals by reason.
    pub refusals: Refusals,
    /// Connections closed on a deadline, by kind.
    pub timeouts: Timeouts,
    /// Device links waiting to be taken.
    pub links_pending: Gauge,
    /// Push wake-up counters, shared with the [`crate::push::Pusher`].
    pub push: Arc<PushStats>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}{name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{PREFIX}{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: i64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{PREFIX}{name} {value}");
}

/// Formats a float as the exposition format expects.
fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        value.to_string()
    }
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    header(out, name, "histogram", help);
    let mut cumulative = 0u64;
    let uppers = h
        .bounds
        .iter()
        .map(|&b| float(b))
        .chain(["+Inf".to_owned()]);
    for (le, bucket) in uppers.zip(&h.buckets) {
        cumulative = cumulative.saturating_add(bucket.load(Ordering::Relaxed));
        let _ = writeln!(out, "{PREFIX}{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{PREFIX}{name}_sum {}", float(h.sum()));
    let _ = writeln!(out, "{PREFIX}{name}_count {cumulative}");
}

impl Metrics {
    /// All metrics at zero, with fresh push counters.
    pub fn new() -> Self {
        Metrics {
            connections_open: Gauge::new(),
            connections_total: Counter::new(),
            connections_refused: Counter::new(),
            connections_retried: Counter::new(),
            auth_failures: Counter::new(),
            sends: Counter::new(),
            envelopes_queued: Counter::new(),
            envelopes_delivered: Counter::new(),
            envelopes_acked: Counter::new(),
            envelopes_stored: Gauge::new(),
            envelopes_expired: Counter::new(),
            mailbox_bytes: Gauge::new(),
            envelopes_device_full: Counter::new(),
            one_time_keys_claimed: Counter::new(),
            one_time_keys_withheld: Withheld::default(),
            pre_keys_low_sent: Counter::new(),
            ephemeral_delivered: Counter::new(),
            prekey_bundles: Counter::new(),
            blobs_uploaded: Counter::new(),
            blob_bytes_uploaded: Counter::new(),
            blobs_downloaded: Counter::new(),
            blob_bytes_stored: Gauge::new(),
            blob_streams_timed_out: Counter::new(),
            flush_latency: Histogram::new(FLUSH_LATENCY_BUCKETS),
            flush_batch: Histogram::new(FLUSH_BATCH_BUCKETS),
            refusals: Refusals::default(),
            timeouts: Timeouts::default(),
            links_pending: Gauge::new(),
            push: Arc::new(PushStats::default()),
        }
    }

    /// Every metric in the Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let o = &mut out;
        gauge(
            o,
            "connections_open",
            "Client connections open now.",
            self.connections_open.get(),
        );
        counter(
            o,
            "connections_total",
            "Client connections accepted.",
            self.connections_total.get(),
        );
        counter(
            o,
            "connections_refused_total",
            "Client connections refused.",
            self.connections_refused.get(),
        );
        counter(
            o,
            "connections_retried_total",
            "Connection attempts answered with a QUIC Retry (address validation under load).",
            self.connections_retried.get(),
        );
        counter(
            o,
            "auth_failures_total",
            "Failed authentication attempts.",
            self.auth_failures.get(),
        );
        counter(o, "sends_total", "Send requests handled.", self.sends.get());
        counter(
            o,
            "envelopes_queued_total",
            "Envelopes put in a mailbox.",
            self.envelopes_queued.get(),
        );
        counter(
            o,
            "envelopes_delivered_total",
            "Envelopes handed to a connected device.",
            self.envelopes_delivered.get(),
        );
        counter(
            o,
            "envelopes_acked_total",
            "Envelopes acknowledged and removed.",
            self.envelopes_acked.get(),
        );
        gauge(
            o,
            "envelopes_stored",
            "Envelopes currently queued in mailboxes.",
            self.envelopes_stored.get(),
        );
        counter(
            o,
            "envelopes_expired_total",
            "Envelopes removed because they expired.",
            self.envelopes_expired.get(),
        );
        gauge(
            o,
            "mailbox_bytes",
            "Bytes queued in all mailboxes (bodies plus 128 per envelope).",
            self.mailbox_bytes.get(),
        );
        counter(
            o,
            "envelopes_device_full_total",
            "Envelopes of accepted sends left out because their device had no room.",
            self.envelopes_device_full.get(),
        );
        counter(
            o,
            "ephemeral_delivered_total",
            "Ephemeral messages delivered to an online device.",
            self.ephemeral_delivered.get(),
        );
        counter(
            o,
            "prekey_bundles_total",
            "Pre-key bundles handed out.",
            self.prekey_bundles.get(),
        );
        counter(
            o,
            "one_time_keys_claimed_total",
            "Pre-key bundles handed out with one-time keys.",
            self.one_time_keys_claimed.get(),
        );
        header(
            o,
            "one_time_keys_withheld_total",
            "counter",
            "Pre-key bundles handed out without one-time keys because a limit was reached, by limit.",
        );
        for limit in KeyLimit::ALL {
            let _ = writeln!(
                o,
                "{PREFIX}one_time_keys_withheld_total{{limit=\"{}\"}} {}",
                limit.as_str(),
                self.one_time_keys_withheld.get(limit)
            );
        }
        counter(
            o,
            "pre_keys_low_sent_total",
            "PreKeysLow notifications sent to devices.",
            self.pre_keys_low_sent.get(),
        );
        counter(
            o,
            "blobs_uploaded_total",
            "Blobs uploaded.",
            self.blobs_uploaded.get(),
        );
        counter(
            o,
            "blob_bytes_uploaded_total",
            "Bytes of blobs uploaded.",
            self.blob_bytes_uploaded.get(),
        );
        counter(
            o,
            "blobs_downloaded_total",
            "Blobs downloaded.",
            self.blobs_downloaded.get(),
        );
        gauge(
            o,
            "blob_bytes_stored",
            "Declared bytes of the blobs stored now, uploads in progress included.",
            self.blob_bytes_stored.get(),
        );
        counter(
            o,
            "blob_streams_timed_out_total",
            "Blob streams reset because a request frame or a chunk missed its deadline.",
            self.blob_streams_timed_out.get(),
        );
        histogram(
            o,
            "flush_latency_seconds",
            "Time to flush the store.",
            &self.flush_latency,
        );
        histogram(
            o,
            "flush_batch_size",
            "Writes per store flush.",
            &self.flush_batch,
        );
        header(
            o,
            "refusals_total",
            "counter",
            "Refused requests by reason.",
        );
        for reason in Refusal::ALL {
            let _ = writeln!(
                o,
                "{PREFIX}refusals_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.refusals.get(reason)
            );
        }
        header(
            o,
            "connection_timeouts_total",
            "counter",
            "Connections closed on a deadline, by kind.",
        );
        for kind in Timeout::ALL {
            let _ = writeln!(
                o,
                "{PREFIX}connection_timeouts_total{{kind=\"{}\"}} {}",
                kind.as_str(),
                self.timeouts.get(kind)
            );
        }
        gauge(
            o,
            "links_pending",
            "Device links waiting to be taken.",
            self.links_pending.get(),
        );
        let push = &self.push;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            o,
            "push_sent_total",
            "Push wake-ups accepted by the endpoint.",
            load(&push.sent),
        );
        counter(
            o,
            "push_failed_total",
            "Push wake-ups given up.",
            load(&push.failed),
        );
        counter(
            o,
            "push_gone_total",
            "Push endpoints reported gone.",
            load(&push.gone),
        );
        counter(
            o,
            "push_dropped_total",
            "Push wake-ups dropped (too many waiting, or shutdown).",
            load(&push.dropped),
        );
        counter(
            o,
            "push_retries_total",
            "Push wake-up POSTs retried.",
            load(&push.retries),
        );
        out
    }
}

/// One response of the operations server.
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            allow: false,
        }
    }

    fn bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        if !head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

enum Head {
    /// The request head, without its final blank line.
    Complete(Vec<u8>),
    TooLarge,
    Closed,
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if end + 4 > MAX_REQUEST_HEAD {
                return Ok(Head::TooLarge);
            }
            head.truncate(end);
            return Ok(Head::Complete(head));
        }
        if head.len() >= MAX_REQUEST_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// The method and path of a request line, if it is well formed.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return None;
    }
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(method) || !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

fn route(
    method: &str,
    path: &str,
    metrics: &Metrics,
    health: &(dyn Fn() -> bool + Send + Sync),
    shutdown: &CancellationToken,
) -> Response {
    if !matches!(method, "GET" | "HEAD") {
        return Response {
            allow: true,
            ..Response::text(405, "Method Not Allowed", "method not allowed")
        };
    }
    match path {
        "/metrics" => Response {
            status: 200,
            reason: "OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics.render(),
            allow: false,
        },
        "/health" if shutdown.is_cancelled() => {
            Response::text(503, "Service Unavailable", "draining")
        }
        "/health" if health() => Response::text(200, "OK", "ok"),
        "/health" => Response::text(503, "Service Unavailable", "unhealthy"),
        _ => Response::text(404, "Not Found", "not found"),
    }
}

async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    health: &(dyn Fn() -> bool + Send + Sync),
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let (response, head_only) =
        match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
            Err(_) => (
                Response::text(408, "Request Timeout", "request timeout"),
                false,
            ),
            Ok(Err(error)) => return Err(error),
            Ok(Ok(Head::Closed)) => return Ok(()),
            Ok(Ok(Head::TooLarge)) => (
                Response::text(431, "Request Header Fields Too Large", "request too large"),
                false,
            ),
            Ok(Ok(Head::Complete(head))) => match parse_request_line(&head) {
                Some((method, path)) => (
                    route(method, path, metrics, health, shutdown),
                    method == "HEAD",
                ),
                None => (Response::text(400, "Bad Request", "bad request"), false),
            },
        };
    let bytes = response.bytes(head_only);
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    // Drain what the client may still send, so that closing with unread input does not reset
    // the connection before the response is read.
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 1024];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    Ok(())
}

/// Serves `GET /metrics` (200, Prometheus text format) and `GET /health` (200 `ok` while
/// `health()` is true, else 503 `unhealthy`; 503 `draining` once shutdown is asked for) on
/// `listener`. Other paths get 404 and other methods 405; `HEAD` is answered like `GET`
/// without a body. Each connection carries one request, with a bounded head and read and write
/// timeouts; at most a fixed number are served at once, and further ones are closed unanswered.
///
/// Returns once `shutdown` is cancelled, after giving connections being served a short grace.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<dyn Fn() -> bool + Send + Sync>,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        tracing::debug!("operations connection refused: too many open");
                        drop(stream);
                        continue;
                    }
                    let (metrics, health, shutdown) =
                        (Arc::clone(&metrics), Arc::clone(&health), shutdown.clone());
                    connections.spawn(async move {
                        if let Err(error) = answer(stream, &metrics, &*health, &shutdown).await {
                            tracing::debug!(%error, "operations connection failed");
                        }
                    });
                }
                Err(error) => {
                    // Typically out of file descriptors: pause instead of spinning.
                    tracing::warn!(%error, "operations accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            },
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
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
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicBool;
    use tokio::task::JoinHandle;

    const GUARD: Duration = Duration::from_secs(20);

    #[test]
    fn counters_gauges_histograms() {
        let c = Counter::new();
        c.inc();
        c.add(4);
        assert_eq!(c.get(), 5);
        let g = Gauge::new();
        g.inc();
        g.inc();
        g.dec();
        g.add(-5);
        assert_eq!(g.get(), -4);
        g.set(7);
        assert_eq!(g.get(), 7);
        let h = Histogram::new(&[1.0, f64::NAN, 0.5, 1.0]);
        assert_eq!(h.bounds(), &[0.5, 1.0]);
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_millis(700));
        h.observe(Duration::from_secs(3));
        h.observe_value(f64::INFINITY);
        assert_eq!(h.count(), 3);
        assert!((h.sum() - 4.2).abs() < 1e-9);
    }

    #[test]
    fn every_error_code_has_a_refusal_label_of_its_own() {
        let mut labels = std::collections::BTreeSet::new();
        let mut codes = 0;
        for i in 0..=64 {
            if let Ok(code) = ErrorCode::try_from(i) {
                codes += 1;
                let reason = Refusal::of(code);
                assert!(Refusal::ALL.contains(&reason), "{code:?}");
                assert!(labels.insert(reason.as_str()), "{code:?} shares a label");
            }
        }
        assert!(codes >= 26);
        // And the one refusal that has no code.
        assert!(!labels.contains(Refusal::ConnectionCap.as_str()));
        assert_eq!(Refusal::ALL.len(), codes + 1);
    }

    #[test]
    fn render_shows_updates() {
        let m = Metrics::new();
        m.connections_open.inc();
        m.connections_open.inc();
        m.connections_open.dec();
        m.sends.add(3);
        m.envelopes_stored.set(42);
        m.blob_bytes_uploaded.add(1_000_000);
        m.refusals.inc(Refusal::RateLimited);
        m.refusals.inc(Refusal::RateLimited);
        m.refusals.inc(Refusal::TooManyDevices);
        m.refusals.inc(Refusal::SenderQuota);
        m.mailbox_bytes.set(4096);
        m.one_time_keys_withheld.inc(KeyLimit::Pair);
        m.pre_keys_low_sent.inc();
        m.flush_latency.observe(Duration::from_micros(300));
        m.flush_latency.observe(Duration::from_millis(2));
        m.flush_latency.observe(Duration::from_secs(2));
        m.flush_batch.observe_value(3.0);
        m.push.sent.fetch_add(9, Ordering::Relaxed);
        m.push.gone.fetch_add(1, Ordering::Relaxed);
        let text = m.render();
        let lines: HashSet<&str> = text.lines().collect();
        for want in [
            "# TYPE hush_relay_connections_open gauge",
            "hush_relay_connections_open 1",
            "# TYPE hush_relay_sends_total counter",
            "hush_relay_sends_total 3",
            "hush_relay_envelopes_stored 42",
            "hush_relay_blob_bytes_uploaded_total 1000000",
            "hush_relay_auth_failures_total 0",
            "# TYPE hush_relay_refusals_total counter",
            "hush_relay_refusals_total{reason=\"rate_limited\"} 2",
            "hush_relay_refusals_total{reason=\"too_many_devices\"} 1",
            "hush_relay_refusals_total{reason=\"malformed\"} 0",
            "hush_relay_refusals_total{reason=\"sender_quota\"} 1",
            "hush_relay_refusals_total{reason=\"mailbox_full\"} 0",
            "# TYPE hush_relay_mailbox_bytes gauge",
            "hush_relay_mailbox_bytes 4096",
            "hush_relay_envelopes_device_full_total 0",
            "hush_relay_one_time_keys_claimed_total 0",
            "hush_relay_one_time_keys_withheld_total{limit=\"pair\"} 1",
            "hush_relay_one_time_keys_withheld_total{limit=\"target\"} 0",
            "hush_relay_pre_keys_low_sent_total 1",
            "# TYPE hush_relay_flush_latency_seconds histogram",
            "hush_relay_flush_latency_seconds_bucket{le=\"0.0005\"} 1",
            "hush_relay_flush_latency_seconds_bucket{le=\"0.001\"} 1",
            "hush_relay_flush_latency_seconds_bucket{le=\"0.0025\"} 2",
            "hush_relay_flush_latency_seconds_bucket{le=\"1\"} 2",
            "hush_relay_flush_latency_seconds_bucket{le=\"+Inf\"} 3",
            "hush_relay_flush_latency_seconds_count 3",
            "hush_relay_flush_batch_size_bucket{le=\"4\"} 1",
            "hush_relay_push_sent_total 9",
            "hush_relay_push_gone_total 1",
            "hush_relay_push_retries_total 0",
        ] {
            assert!(lines.contains(want), "missing {want:?} in\n{text}");
        }
        let sum = text
            .lines()
            .find_map(|l| l.strip_prefix("hush_relay_flush_latency_seconds_sum "))
            .unwrap();
        assert!((sum.parse::<f64>().unwrap() - 2.0023).abs() < 1e-9);
        for reason in Refusal::ALL {
            let prefix = format!(
                "hush_relay_refusals_total{{reason=\"{}\"}} ",
                reason.as_str()
            );
            assert_eq!(text.lines().filter(|l| l.starts_with(&prefix)).count(), 1);
        }
    }

    #[test]
    fn every_sample_has_help_and_type() {
        let text = Metrics::new().render();
        let mut typed = HashSet::new();
        let mut helped = HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind));
                assert!(typed.insert(name.to_owned()), "{name} typed twice");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split_once(' ').unwrap().0.to_owned());
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.starts_with(PREFIX), "{line}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "{name} has no TYPE line");
            assert!(helped.contains(family), "{name} has no HELP line");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    struct Running {
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        healthy: Arc<AtomicBool>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    async fn start() -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&healthy);
        let health: Arc<dyn Fn() -> bool + Send + Sync> =
            Arc::new(move || flag.load(Ordering::Relaxed));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            Arc::clone(&metrics),
            health,
            shutdown.clone(),
        ));
        Running {
            addr,
            metrics,
            healthy,
            shutdown,
            task,
        }
    }

    /// Sends raw bytes and returns the status, the head and the body of the response.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
        let run = async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request).await.unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.unwrap();
            let response = String::from_utf8(response).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            let status = head[9..12].parse().unwrap();
            (status, head.to_owned(), body.to_owned())
        };
        tokio::time::timeout(GUARD, run).await.unwrap()
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: ops\r\n\r\n");
        exchange(addr, request.as_bytes()).await
    }

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let r = start().await;
        r.metrics.sends.add(11);
        let (status, head, body) = get(r.addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(body.lines().any(|l| l == "hush_relay_sends_total 11"));

        let (status, _, body) = get(r.addr, "/health").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        r.healthy.store(false, Ordering::Relaxed);
        let (status, _, body) = get(r.addr, "/health?probe=1").await;
        assert_eq!((status, body.as_str()), (503, "unhealthy\n"));

        let (status, head, body) =
            exchange(r.addr, b"HEAD /metrics HTTP/1.1\r\nHost: ops\r\n\r\n").await;
        assert_eq!(status, 200);
        assert!(!head.contains("Content-Length: 0"));
        assert!(body.is_empty());

        r.shutdown.cancel();
        tokio::time::timeout(GUARD, r.task).await.unwrap().unwrap();
        assert!(TcpStream::connect(r.addr).await.is_err());
    }

    #[tokio::test]
    async fn unknown_paths_methods_and_garbage() {
        let r = start().await;
        assert_eq!(get(r.addr, "/").await.0, 404);
        assert_eq!(get(r.addr, "/metrics/extra").await.0, 404);
        let (status, head, _) = exchange(
            r.addr,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(status, 405);
        assert!(head.contains("Allow: GET, HEAD"));
        assert_eq!(exchange(r.addr, b"GET /metrics\r\n\r\n").await.0, 400);
        assert_eq!(
            exchange(r.addr, b"GET metrics HTTP/1.1\r\n\r\n").await.0,
            400
        );
        assert_eq!(exchange(r.addr, b"\x16\x03\x01\x00\r\n\r\n").await.0, 400);
        r.shutdown.cancel();
        tokio::time::timeout(GUARD, r.task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn oversized_request_is_refused() {
        let r = start().await;
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', 2 * MAX_REQUEST_HEAD));
        request.extend_from_slice(b"\r\n\r\n");
        let (status, _, body) = exchange(r.addr, &request).await;
        assert_eq!(status, 431);
        assert!(!body.contains("hush_relay_"));
        // The server still answers afterwards.
        assert_eq!(get(r.addr, "/health").await.0, 200);
        r.shutdown.cancel();
        tokio::time::timeout(GUARD, r.task).await.unwrap().unwrap();
    }
}
