use super::client::{Reply, Verdict, backoff, classify, retry_after};
use super::*;
use reqwest::header::HeaderValue;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
    keys: Option<WebPushKeys>,
    gone: mpsc::UnboundedSender<(DeviceId, String)>,
}

impl PushTargets for Targets {
    fn endpoint(&self, _device: &DeviceId) -> Option<Registration> {
        let url = self.url.lock().unwrap().clone()?;
        Some(Registration {
            url,
            keys: self.keys.clone(),
        })
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
        vapid: None,
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
    start_with_keys(cfg, url, None)
}

fn start_with_keys(cfg: PushConfig, url: Option<String>, keys: Option<WebPushKeys>) -> Harness {
    let (gone_tx, gone) = mpsc::unbounded_channel();
    let targets = Arc::new(Targets {
        url: Mutex::new(url),
        keys,
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

fn count(c: &Counter) -> u64 {
    c.get()
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
    let mut expected: Vec<(String, String)> = [
        ("accept", "*/*".to_owned()),
        ("content-length", WAKE_BODY.len().to_string()),
        ("content-type", "application/octet-stream".to_owned()),
        ("host", addr.to_string()),
        ("ttl", "86400".to_owned()),
        ("urgency", "high".to_owned()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect();
    let mut headers = req.headers.clone();
    headers.sort();
    expected.sort();
    // Nothing else: no user agent, no referrer, nothing about the device or the message.
    assert_eq!(headers, expected);
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

#[test]
fn registrations_are_stored_readably_and_old_records_are_plain_webhooks() {
    // What relays stored before subscriptions had keys: the URL's bytes.
    let old = Registration::from_bytes(b"https://push.example/up?x=1").unwrap();
    assert_eq!(old, Registration::webhook("https://push.example/up?x=1"));
    assert_eq!(old.to_bytes(), b"https://push.example/up?x=1");
    let keyed = Registration {
        url: "https://push.example/wp".into(),
        keys: Some(webpush::tests::sample_keys()),
    };
    let bytes = keyed.to_bytes();
    assert_eq!(bytes.len(), 1 + 65 + 16 + "https://push.example/wp".len());
    assert_eq!(Registration::from_bytes(&bytes), Some(keyed.clone()));
    // Damaged keys or a cut record do not read.
    assert_eq!(Registration::from_bytes(&bytes[..40]), None);
    let mut bad = bytes.clone();
    bad[2] ^= 0xff;
    assert_eq!(Registration::from_bytes(&bad), None);
    assert_eq!(Registration::from_bytes(&[0xff, 0xfe]), None);
    // Debug shows neither the URL nor the keys.
    let shown = format!("{keyed:?}");
    assert!(!shown.contains("push.example"), "{shown}");
}

#[tokio::test]
async fn a_web_push_wake_is_sealed_for_the_subscription_and_signed() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let (addr, mut requests) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let vapid = Arc::new(Vapid::load_or_create(&dir.path().join("vapid.key"), "").unwrap());
    let receiver = p256::SecretKey::from_slice(&[0x42; 32]).unwrap();
    let auth = [0x17u8; 16];
    let keys = WebPushKeys::parse(&receiver.public_key().to_sec1_bytes(), &auth).unwrap();
    let cfg = PushConfig {
        vapid: Some(Arc::clone(&vapid)),
        ..test_config()
    };
    let h = start_with_keys(cfg, Some(format!("http://{addr}/wp/1")), Some(keys));
    let mut bodies = Vec::new();
    for _ in 0..2 {
        h.pusher.wake(device(3));
        let req = next(&mut requests).await;
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(header("content-encoding"), "aes128gcm");
        assert_eq!(header("ttl"), "86400");
        assert_eq!(header("urgency"), "high");
        assert_eq!(header("content-length"), webpush::BODY_LEN.to_string());
        let auth_header = header("authorization");
        let k = auth_header.rsplit_once(", k=").unwrap().1;
        assert_eq!(k, vapid.public_key());
        let token = auth_header
            .strip_prefix("vapid t=")
            .unwrap()
            .split_once(',')
            .unwrap()
            .0;
        let claims = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(claims).unwrap()).unwrap();
        assert_eq!(claims["aud"], format!("http://{addr}"));
        assert_eq!(req.body.len(), webpush::BODY_LEN);
        assert_eq!(webpush::tests::open(&req.body, &receiver, &auth), WAKE_BODY);
        bodies.push(req.body.clone());
        req.respond(201);
        settle(&h.pusher).await;
    }
    assert_ne!(bodies[0], bodies[1]);
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
        keys: None,
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
fn retry_after_takes_delta_seconds_only() {
    let parse = |v: &str| retry_after(&HeaderValue::from_str(v).unwrap());
    assert_eq!(parse("30"), Some(Duration::from_secs(30)));
    assert_eq!(parse("  7 "), Some(Duration::from_secs(7)));
    assert_eq!(parse("0"), Some(Duration::ZERO));
    for ignored in [
        "",
        "-1",
        "1.5",
        "12345678901",
        "Fri, 07 Nov 2025 10:00:00 GMT",
        "3 0",
    ] {
        assert_eq!(parse(ignored), None, "{ignored:?}");
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

#[tokio::test]
async fn non_public_endpoints_get_no_request() {
    let (addr, mut requests) = server().await;
    let cfg = PushConfig {
        max_attempts: 1,
        allow_private_addresses: false,
        ..test_config()
    };
    // An address in the URL, and a name that resolves to loopback only.
    for url in [
        format!("http://{addr}/p"),
        format!("http://localhost:{}/p", addr.port()),
    ] {
        let h = start(cfg.clone(), Some(url));
        h.pusher.wake(device(1));
        settle(&h.pusher).await;
        assert_eq!(count(&h.stats.failed), 1);
        assert_eq!(count(&h.stats.sent), 0);
    }
    assert!(
        requests.try_recv().is_err(),
        "a non-public endpoint was called"
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (addr, mut requests) = server().await;
    let h = start(test_config(), Some(format!("http://{addr}/p")));
    h.pusher.wake(device(1));
    next(&mut requests)
        .await
        .respond_with(307, &[("Location", &format!("http://{addr}/elsewhere"))]);
    settle(&h.pusher).await;
    assert!(requests.try_recv().is_err(), "the redirect was followed");
    assert_eq!(count(&h.stats.failed), 1);
    assert_eq!(count(&h.stats.retries), 0);
}
