use super::*;
use hush_proto::relay_api::ErrorCode;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const GUARD: Duration = Duration::from_secs(20);

#[test]
fn counters_gauges_histograms() {
    let m = Metrics::new();
    m.sends.inc();
    m.sends.inc_by(4);
    assert_eq!(m.sends.get(), 5);
    m.links_pending.inc();
    m.links_pending.inc();
    m.links_pending.dec();
    m.links_pending.inc_by(-5);
    assert_eq!(m.links_pending.get(), -4);
    m.links_pending.set(7);
    assert_eq!(m.links_pending.get(), 7);
    m.flush_latency.observe(0.5);
    m.flush_latency.observe(0.7);
    m.flush_latency.observe(3.0);
    let text = m.render();
    assert!(text.contains("\nhush_relay_flush_latency_seconds_count 3\n"));
    let sum = text
        .lines()
        .find_map(|l| l.strip_prefix("hush_relay_flush_latency_seconds_sum "))
        .unwrap();
    assert!((sum.parse::<f64>().unwrap() - 4.2).abs() < 1e-9);
    m.refusals.inc(RefusalReason::Draining);
    assert_eq!(m.refusals.get(RefusalReason::Draining), 1);
    assert_eq!(m.refusals.get(RefusalReason::Malformed), 0);
    m.timeouts.inc(Timeout::Write);
    assert_eq!(m.timeouts.get(Timeout::Write), 1);
    m.one_time_keys_withheld.inc(KeyLimit::Target);
    assert_eq!(m.one_time_keys_withheld.get(KeyLimit::Target), 1);
}

#[test]
fn every_error_code_has_a_refusal_label_of_its_own() {
    let mut labels = std::collections::BTreeSet::new();
    let mut codes = 0;
    for i in 0..=64 {
        if let Ok(code) = ErrorCode::try_from(i) {
            codes += 1;
            let reason = RefusalReason::of(code);
            assert!(RefusalReason::ALL.contains(&reason), "{code:?}");
            assert!(labels.insert(reason.as_str()), "{code:?} shares a label");
        }
    }
    assert!(codes >= 26);
    // And the one refusal that has no code.
    assert!(!labels.contains(RefusalReason::ConnectionCap.as_str()));
    assert_eq!(RefusalReason::ALL.len(), codes + 1);
}

#[test]
fn render_shows_updates() {
    let m = Metrics::new();
    m.connections_open.inc();
    m.connections_open.inc();
    m.connections_open.dec();
    m.sends.inc_by(3);
    m.envelopes_stored.set(42);
    m.blob_bytes_uploaded.inc_by(1_000_000);
    m.refusals.inc(RefusalReason::RateLimited);
    m.refusals.inc(RefusalReason::RateLimited);
    m.refusals.inc(RefusalReason::TooManyDevices);
    m.refusals.inc(RefusalReason::SenderQuota);
    m.mailbox_bytes.set(4096);
    m.one_time_keys_withheld.inc(KeyLimit::Pair);
    m.pre_keys_low_sent.inc();
    m.flush_latency.observe(0.0003);
    m.flush_latency.observe(0.002);
    m.flush_latency.observe(2.0);
    m.flush_batch.observe(3.0);
    m.push.sent.inc_by(9);
    m.push.gone.inc();
    let text = m.render();
    let lines: HashSet<&str> = text.lines().collect();
    for want in [
        "# TYPE hush_relay_connections_open gauge",
        "hush_relay_connections_open 1",
        "# TYPE hush_relay_sends counter",
        "hush_relay_sends_total 3",
        "hush_relay_connections_total 0",
        "hush_relay_envelopes_stored 42",
        "hush_relay_blob_bytes_uploaded_total 1000000",
        "hush_relay_auth_failures_total 0",
        "# TYPE hush_relay_refusals counter",
        "hush_relay_refusals_total{reason=\"rate_limited\"} 2",
        "hush_relay_refusals_total{reason=\"too_many_devices\"} 1",
        "hush_relay_refusals_total{reason=\"malformed\"} 0",
        "hush_relay_refusals_total{reason=\"sender_quota\"} 1",
        "hush_relay_refusals_total{reason=\"mailbox_full\"} 0",
        "hush_relay_connection_timeouts_total{kind=\"auth\"} 0",
        "# TYPE hush_relay_mailbox_bytes gauge",
        "hush_relay_mailbox_bytes 4096",
        "hush_relay_envelopes_device_full_total 0",
        "hush_relay_one_time_keys_claimed_total 0",
        "hush_relay_one_time_keys_withheld_total{limit=\"pair\"} 1",
        "hush_relay_one_time_keys_withheld_total{limit=\"target\"} 0",
        "hush_relay_pre_keys_low_sent_total 1",
        "# TYPE hush_relay_flush_latency_seconds histogram",
        "# UNIT hush_relay_flush_latency_seconds seconds",
        "hush_relay_flush_latency_seconds_bucket{le=\"0.0005\"} 1",
        "hush_relay_flush_latency_seconds_bucket{le=\"0.001\"} 1",
        "hush_relay_flush_latency_seconds_bucket{le=\"0.0025\"} 2",
        "hush_relay_flush_latency_seconds_bucket{le=\"1.0\"} 2",
        "hush_relay_flush_latency_seconds_bucket{le=\"+Inf\"} 3",
        "hush_relay_flush_latency_seconds_count 3",
        "hush_relay_flush_batch_size_bucket{le=\"4.0\"} 1",
        "hush_relay_push_sent_total 9",
        "hush_relay_push_gone_total 1",
        "hush_relay_push_retries_total 0",
    ] {
        assert!(lines.contains(want), "missing {want:?} in\n{text}");
    }
    assert_eq!(text.lines().last(), Some("# EOF"));
    let sum = text
        .lines()
        .find_map(|l| l.strip_prefix("hush_relay_flush_latency_seconds_sum "))
        .unwrap();
    assert!((sum.parse::<f64>().unwrap() - 2.0023).abs() < 1e-9);
    for reason in RefusalReason::ALL {
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
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(name.starts_with("hush_relay_"), "{line}");
        let family = ["_bucket", "_sum", "_count", "_total"]
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
    let health: Health = Arc::new(move || flag.load(Ordering::Relaxed));
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

/// Sends raw bytes and returns the status, the head (lower-cased) and the body of the response.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let run = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8(response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_owned())
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
    r.metrics.sends.inc_by(11);
    let (status, head, body) = get(r.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(head.contains(&format!("content-type: {METRICS_CONTENT_TYPE}")));
    assert!(head.contains(&format!("content-length: {}", body.len())));
    assert!(head.contains("cache-control: no-store"));
    assert!(body.lines().any(|l| l == "hush_relay_sends_total 11"));

    let (status, head, body) = get(r.addr, "/health").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(head.contains("cache-control: no-store"));
    r.healthy.store(false, Ordering::Relaxed);
    let (status, _, body) = get(r.addr, "/health?probe=1").await;
    assert_eq!((status, body.as_str()), (503, "unhealthy\n"));

    let (status, head, body) =
        exchange(r.addr, b"HEAD /metrics HTTP/1.1\r\nHost: ops\r\n\r\n").await;
    assert_eq!(status, 200);
    assert!(!head.contains("content-length: 0"));
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
    assert!(head.contains("allow: get,head"), "{head}");
    // A target without its leading slash names no route.
    assert_eq!(
        exchange(r.addr, b"GET metrics HTTP/1.1\r\n\r\n").await.0,
        404
    );
    assert_eq!(
        exchange(r.addr, b"GET /metrics HTTP/9.9\r\n\r\n").await.0,
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
    request.extend(std::iter::repeat_n(b'a', 16 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let (status, _, body) = exchange(r.addr, &request).await;
    assert_eq!(status, 431);
    assert!(!body.contains("hush_relay_"));
    // The server still answers afterwards.
    assert_eq!(get(r.addr, "/health").await.0, 200);
    r.shutdown.cancel();
    tokio::time::timeout(GUARD, r.task).await.unwrap().unwrap();
}
