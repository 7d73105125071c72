//! Operations: metrics and health over HTTP on a separate port.
//!
//! [`Metrics`] holds the relay's counters, gauges, histograms and labelled families
//! (prometheus-client's own types, cheap to update from any task) and renders them in the
//! OpenMetrics text format. [`serve`] answers `GET /metrics` and `GET /health` on a listener of
//! its own, meant for an operator's network only: it carries no message data, but it does show
//! traffic volumes.
//!
//! Layout: [`labels`] (the closed label sets: refusal reasons, timeout kinds, one-time key
//! limits), [`metrics`] (what is counted, and its names), [`server`] (the HTTP side).

pub mod labels;
pub mod metrics;
pub mod server;

pub use labels::{
    ByTransport, KeyLimit, RefusalReason, Refusals, Timeout, Timeouts, Transport, Withheld,
};
pub use metrics::{FLUSH_BATCH_BUCKETS, FLUSH_LATENCY_BUCKETS, Metrics};
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use server::{Health, METRICS_CONTENT_TYPE, serve};

#[cfg(test)]
mod tests;
