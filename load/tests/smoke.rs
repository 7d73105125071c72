//! `hush-load throughput` for about a second against an in-process relay, and `ceiling` against
//! the ceiling server (a child process): sends are acknowledged and received (no timing
//! assertions).
#![cfg(test)]

use clap::Parser;
use hush_load::{Options, Target, compare, run};
use hush_relay::config::{Config, StoreKind};

/// An in-process relay for the smoke runs: memory store, and queue caps out of the way (on a busy
/// machine a receiver's acknowledgements can fall behind a sender by more than the per-sender
/// share of a queue, and a refusal fails the run; the caps have tests of their own).
fn config(dir: &std::path::Path) -> Config {
    Config {
        metrics_listen: None,
        max_queue_len: 1_000_000,
        max_queue_len_per_sender: 1_000_000,
        max_queue_bytes_per_sender: 1 << 30,
        max_queue_bytes: 1 << 30,
        ..hush_testkit::test_config(StoreKind::Memory, dir)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_mode_sends_and_receives() {
    let dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(config(dir.path())).await.unwrap();
    let addr = relay.addr.to_string();
    let opts = Options::parse_from([
        "hush-load",
        "throughput",
        "--addr",
        addr.as_str(),
        "--pin",
        relay.fingerprint.as_str(),
        "--devices",
        "6",
        "--senders",
        "3",
        "--window",
        "8",
        "--endpoints",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0.2",
    ]);
    let report = run(&opts).await.unwrap();
    println!("{report}");
    assert_eq!(report.connections, 6);
    assert!(report.acked_in_window > 0, "no send acknowledged: {report}");
    assert!(report.delivered >= report.envelopes_acked, "{report}");
    assert!(report.delivery.is_some_and(|p| p.count > 0), "{report}");
    assert!(report.ok(), "{report}");
    relay.stop().await;
}

/// The same run over TLS on TCP (the relay's TCP listener on its QUIC port number).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_mode_over_tcp_sends_and_receives() {
    let dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(Config {
        tcp_listen: hush_relay::config::TcpListen::Same,
        ..config(dir.path())
    })
    .await
    .unwrap();
    assert_eq!(relay.tcp_addr, Some(relay.addr));
    let addr = relay.addr.to_string();
    let opts = Options::parse_from([
        "hush-load",
        "throughput",
        "--transport",
        "tcp",
        "--addr",
        addr.as_str(),
        "--pin",
        relay.fingerprint.as_str(),
        "--devices",
        "6",
        "--senders",
        "3",
        "--window",
        "8",
        "--duration",
        "1",
        "--warmup",
        "0.2",
    ]);
    let report = run(&opts).await.unwrap();
    println!("{report}");
    assert_eq!(report.connections, 6);
    assert!(report.relay.ends_with("over TLS 1.3 on TCP"), "{report}");
    assert!(report.acked_in_window > 0, "no send acknowledged: {report}");
    assert!(report.delivered >= report.envelopes_acked, "{report}");
    assert!(report.ok(), "{report}");
    assert_eq!(
        relay
            .metrics
            .connections_by_transport
            .get(hush_relay::ops::Transport::Quic),
        0
    );
    relay.stop().await;
}

/// Connections made one after another from one endpoint while the relay asks every new client
/// for a Retry (as it does under load): each completes its handshake and authenticates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_connections_complete_under_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retry_under_load_connections = 0;
    let relay = hush_relay::start(cfg).await.unwrap();
    let addr = relay.addr.to_string();
    let opts = Options::parse_from([
        "hush-load",
        "idle",
        "--addr",
        addr.as_str(),
        "--pin",
        relay.fingerprint.as_str(),
        "--connections",
        "100",
        "--endpoints",
        "1",
        "--connect-concurrency",
        "1",
        "--duration",
        "0.2",
    ]);
    let report = tokio::time::timeout(std::time::Duration::from_secs(60), run(&opts))
        .await
        .expect("connections did not complete")
        .unwrap();
    assert_eq!(report.connections, 100, "{report}");
    assert_eq!(report.alive, 100, "{report}");
    assert!(report.ok(), "{report}");
    relay.stop().await;
}

/// The `hush-load` binary built for these tests: the ceiling server.
const LOAD_BIN: &str = env!("CARGO_BIN_EXE_hush-load");

/// A short, small throughput workload.
const SMALL: [&str; 14] = [
    "--devices",
    "6",
    "--senders",
    "3",
    "--window",
    "8",
    "--endpoints",
    "2",
    "--duration",
    "1",
    "--warmup",
    "0.2",
    "--ceiling-bin",
    LOAD_BIN,
];

fn check_traffic(report: &hush_load::Report) {
    assert_eq!(report.connections, 6, "{report}");
    assert!(report.acked_in_window > 0, "no send acknowledged: {report}");
    assert!(report.delivered >= report.envelopes_acked, "{report}");
    assert!(report.delivery.is_some_and(|p| p.count > 0), "{report}");
    assert!(report.ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceiling_mode_sends_and_receives() {
    let opts = Options::parse_from(["hush-load", "ceiling"].into_iter().chain(SMALL));
    let report = run(&opts).await.unwrap();
    println!("{report}");
    assert_eq!(report.target, Target::Ceiling);
    assert!(report.relay.starts_with("ceiling"), "{report}");
    assert!(report.rss_connected_kib.is_some(), "{report}");
    check_traffic(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_against_the_ceiling_holds_connections() {
    let opts = Options::parse_from([
        "hush-load",
        "idle",
        "--target",
        "ceiling",
        "--connections",
        "40",
        "--duration",
        "0.2",
        "--store",
        "memory",
        "--ceiling-bin",
        LOAD_BIN,
    ]);
    let report = run(&opts).await.unwrap();
    println!("{report}");
    assert_eq!(report.target, Target::Ceiling);
    assert_eq!(report.alive, 40, "{report}");
    assert!(
        report
            .rss_per_connection(report.rss_connected_kib)
            .is_some()
    );
    assert!(report.ok(), "{report}");
}

/// `--vs-ceiling`: the ceiling server, then the (in-process) relay, with the same settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vs_ceiling_runs_both() {
    let dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(config(dir.path())).await.unwrap();
    let addr = relay.addr.to_string();
    let opts = Options::parse_from(
        [
            "hush-load",
            "throughput",
            "--vs-ceiling",
            "--store",
            "memory",
            "--addr",
            addr.as_str(),
            "--pin",
            relay.fingerprint.as_str(),
        ]
        .into_iter()
        .chain(SMALL),
    );
    assert!(run(&opts).await.is_err(), "run() takes one target");
    let both = compare(&opts).await.unwrap();
    println!("{both}");
    assert_eq!(both.ceiling.target, Target::Ceiling);
    assert_eq!(both.relay.target, Target::Relay);
    check_traffic(&both.ceiling);
    check_traffic(&both.relay);
    assert!(both.ok());
    assert!(both.to_string().contains("relay ÷ ceiling"));
    relay.stop().await;
}
