//! The relay's metrics: prometheus-client counters, gauges, histograms and label families, held
//! in one [`Metrics`] that every task updates in place and that renders itself in the
//! OpenMetrics text format for `/metrics`.

use std::sync::Arc;

use prometheus_client::registry::{Registry, Unit};

use super::labels::{ByTransport, Refusals, Timeouts, Withheld};
use super::{Counter, Gauge, Histogram};
use crate::push::PushStats;

/// Prefix of every metric name (joined to the name with `_`).
const PREFIX: &str = "hush_relay";

/// Buckets of [`Metrics::flush_latency`], in seconds.
pub const FLUSH_LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Buckets of [`Metrics::flush_batch`], in items per flush.
pub const FLUSH_BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The relay's metrics. Every field is updated in place by the code it describes; each is a
/// handle shared with the registry that [`Metrics::render`] encodes.
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
    /// Connections that declared themselves anonymous (sealed sends, public reads).
    pub anonymous_connections: Counter,
    /// Sealed sends refused for a missing or wrong delivery token.
    pub unauthorized_sends: Counter,
    /// Sends (and ephemeral sends) on anonymous connections, let in by delivery tokens or by a
    /// recipient that accepts anyone: the relay does not know their sender.
    pub sealed_sends: Counter,
    /// Sends (and ephemeral sends) to another account on an authenticated connection without
    /// tokens (first messages): the relay sees their sender.
    pub introductions: Counter,
    /// Group log entries appended.
    pub group_log_appends: Counter,
    /// Group log appends refused because their number was not the head + 1 (another writer
    /// was first).
    pub group_log_conflicts: Counter,
    /// Group log reads answered.
    pub group_log_reads: Counter,
    /// Bytes of the entries of all group logs (what `group_log_total_max_bytes` caps), set from
    /// the store at start and after every append.
    pub group_log_bytes: Gauge,
    /// Events (new mail, ephemerals, revocations, …) handed to another relay node of a cluster.
    pub cluster_events_published: Counter,
    /// Events for a device connected to no live node of the cluster (a push wakes it instead).
    pub cluster_events_unrouted: Counter,
    /// Connections closed here because their device connected to another node.
    pub cluster_takeovers: Counter,
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
    /// Connections accepted, by transport (QUIC or TLS over TCP).
    pub connections_by_transport: ByTransport,
    /// Device links waiting to be taken.
    pub links_pending: Gauge,
    /// Connections authenticated as a device now (the others are anonymous or not yet
    /// authenticated).
    pub connections_authenticated: Gauge,
    /// Push wake-up counters, shared with the [`crate::push::Pusher`].
    pub push: Arc<PushStats>,
    /// Every metric above, by name, for rendering.
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics at zero, with fresh push counters.
    pub fn new() -> Self {
        let mut metrics = Metrics {
            connections_open: Gauge::default(),
            connections_total: Counter::default(),
            connections_refused: Counter::default(),
            connections_retried: Counter::default(),
            cluster_events_published: Counter::default(),
            cluster_events_unrouted: Counter::default(),
            cluster_takeovers: Counter::default(),
            auth_failures: Counter::default(),
            anonymous_connections: Counter::default(),
            unauthorized_sends: Counter::default(),
            sealed_sends: Counter::default(),
            introductions: Counter::default(),
            group_log_appends: Counter::default(),
            group_log_conflicts: Counter::default(),
            group_log_reads: Counter::default(),
            group_log_bytes: Gauge::default(),
            sends: Counter::default(),
            envelopes_queued: Counter::default(),
            envelopes_delivered: Counter::default(),
            envelopes_acked: Counter::default(),
            envelopes_stored: Gauge::default(),
            envelopes_expired: Counter::default(),
            mailbox_bytes: Gauge::default(),
            envelopes_device_full: Counter::default(),
            one_time_keys_claimed: Counter::default(),
            one_time_keys_withheld: Withheld::default(),
            pre_keys_low_sent: Counter::default(),
            ephemeral_delivered: Counter::default(),
            prekey_bundles: Counter::default(),
            blobs_uploaded: Counter::default(),
            blob_bytes_uploaded: Counter::default(),
            blobs_downloaded: Counter::default(),
            blob_bytes_stored: Gauge::default(),
            blob_streams_timed_out: Counter::default(),
            flush_latency: Histogram::new(FLUSH_LATENCY_BUCKETS.iter().copied()),
            flush_batch: Histogram::new(FLUSH_BATCH_BUCKETS.iter().copied()),
            refusals: Refusals::default(),
            timeouts: Timeouts::default(),
            connections_by_transport: ByTransport::default(),
            links_pending: Gauge::default(),
            connections_authenticated: Gauge::default(),
            push: Arc::new(PushStats::default()),
            registry: Registry::default(),
        };
        metrics.registry = metrics.registry();
        metrics
    }

    /// A registry holding a handle on every metric. Counters are registered without their
    /// `_total` suffix, which the exposition adds to each sample.
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix(PREFIX);
        r.register(
            "connections_open",
            "Client connections open now.",
            self.connections_open.clone(),
        );
        r.register(
            "connections",
            "Client connections accepted.",
            self.connections_total.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections refused.",
            self.connections_refused.clone(),
        );
        r.register(
            "connections_retried",
            "Connection attempts answered with a QUIC Retry (address validation under load).",
            self.connections_retried.clone(),
        );
        r.register(
            "auth_failures",
            "Failed authentication attempts.",
            self.auth_failures.clone(),
        );
        r.register(
            "anonymous_connections",
            "Connections that declared themselves anonymous (sealed sends, public reads).",
            self.anonymous_connections.clone(),
        );
        r.register(
            "unauthorized_sends",
            "Sealed sends refused for a missing or wrong delivery token.",
            self.unauthorized_sends.clone(),
        );
        r.register(
            "group_log_appends",
            "Group log entries appended.",
            self.group_log_appends.clone(),
        );
        r.register(
            "group_log_conflicts",
            "Group log appends refused because another writer took the number first (LOG_CONFLICT).",
            self.group_log_conflicts.clone(),
        );
        r.register(
            "group_log_reads",
            "Group log reads answered.",
            self.group_log_reads.clone(),
        );
        r.register(
            "group_log_bytes",
            "Bytes of the entries of all group logs.",
            self.group_log_bytes.clone(),
        );
        r.register(
            "sealed_sends",
            "Sends on anonymous connections, let in by delivery tokens or a recipient accepting anyone.",
            self.sealed_sends.clone(),
        );
        r.register(
            "introductions",
            "Sends to another account on an authenticated connection without tokens (first messages).",
            self.introductions.clone(),
        );
        r.register(
            "cluster_events_published",
            "Events handed to another relay node of the cluster.",
            self.cluster_events_published.clone(),
        );
        r.register(
            "cluster_events_unrouted",
            "Events for a device on no live node of the cluster (a push wakes it instead).",
            self.cluster_events_unrouted.clone(),
        );
        r.register(
            "cluster_takeovers",
            "Connections closed because their device connected to another node.",
            self.cluster_takeovers.clone(),
        );
        r.register("sends", "Send requests handled.", self.sends.clone());
        r.register(
            "envelopes_queued",
            "Envelopes put in a mailbox.",
            self.envelopes_queued.clone(),
        );
        r.register(
            "envelopes_delivered",
            "Envelopes handed to a connected device.",
            self.envelopes_delivered.clone(),
        );
        r.register(
            "envelopes_acked",
            "Envelopes acknowledged and removed.",
            self.envelopes_acked.clone(),
        );
        r.register(
            "envelopes_stored",
            "Envelopes currently queued in mailboxes.",
            self.envelopes_stored.clone(),
        );
        r.register(
            "envelopes_expired",
            "Envelopes removed because they expired.",
            self.envelopes_expired.clone(),
        );
        r.register(
            "mailbox_bytes",
            "Bytes queued in all mailboxes (bodies plus 128 per envelope).",
            self.mailbox_bytes.clone(),
        );
        r.register(
            "envelopes_device_full",
            "Envelopes of accepted sends left out because their device had no room.",
            self.envelopes_device_full.clone(),
        );
        r.register(
            "ephemeral_delivered",
            "Ephemeral messages delivered to an online device.",
            self.ephemeral_delivered.clone(),
        );
        r.register(
            "prekey_bundles",
            "Pre-key bundles handed out.",
            self.prekey_bundles.clone(),
        );
        r.register(
            "one_time_keys_claimed",
            "Pre-key bundles handed out with one-time keys.",
            self.one_time_keys_claimed.clone(),
        );
        r.register(
            "one_time_keys_withheld",
            "Pre-key bundles handed out without one-time keys because a limit was reached, by limit.",
            self.one_time_keys_withheld.family(),
        );
        r.register(
            "pre_keys_low_sent",
            "PreKeysLow notifications sent to devices.",
            self.pre_keys_low_sent.clone(),
        );
        r.register(
            "blobs_uploaded",
            "Blobs uploaded.",
            self.blobs_uploaded.clone(),
        );
        r.register(
            "blob_bytes_uploaded",
            "Bytes of blobs uploaded.",
            self.blob_bytes_uploaded.clone(),
        );
        r.register(
            "blobs_downloaded",
            "Blobs downloaded.",
            self.blobs_downloaded.clone(),
        );
        r.register(
            "blob_bytes_stored",
            "Declared bytes of the blobs stored now, uploads in progress included.",
            self.blob_bytes_stored.clone(),
        );
        r.register(
            "blob_streams_timed_out",
            "Blob streams reset because a request frame or a chunk missed its deadline.",
            self.blob_streams_timed_out.clone(),
        );
        r.register_with_unit(
            "flush_latency",
            "Time to flush the store.",
            Unit::Seconds,
            self.flush_latency.clone(),
        );
        r.register(
            "flush_batch_size",
            "Writes per store flush.",
            self.flush_batch.clone(),
        );
        r.register(
            "refusals",
            "Refused requests by reason.",
            self.refusals.family(),
        );
        r.register(
            "connection_timeouts",
            "Connections closed on a deadline, by kind.",
            self.timeouts.family(),
        );
        r.register(
            "connections_by_transport",
            "Client connections accepted, by transport.",
            self.connections_by_transport.family(),
        );
        r.register(
            "links_pending",
            "Device links waiting to be taken.",
            self.links_pending.clone(),
        );
        r.register(
            "connections_authenticated",
            "Connections authenticated as a device now.",
            self.connections_authenticated.clone(),
        );
        let push = &self.push;
        r.register(
            "push_sent",
            "Push wake-ups accepted by the endpoint.",
            push.sent.clone(),
        );
        r.register(
            "push_failed",
            "Push wake-ups given up.",
            push.failed.clone(),
        );
        r.register(
            "push_gone",
            "Push endpoints reported gone.",
            push.gone.clone(),
        );
        r.register(
            "push_dropped",
            "Push wake-ups dropped (too many waiting, or shutdown).",
            push.dropped.clone(),
        );
        r.register(
            "push_retries",
            "Push wake-up POSTs retried.",
            push.retries.clone(),
        );
        r
    }

    /// Every metric in the OpenMetrics text format (which Prometheus reads), ending in `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a `String` cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
