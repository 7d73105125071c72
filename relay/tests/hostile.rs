//! What a hostile client showed, reproduced on 127.0.0.1 and shown to fail now: filling the table
//! of pending device links from one address block, holding connections per block and per
//! account, feeding frames too slowly or never finishing them, request ids that make answers
//! ambiguous, text that is not UTF-8, authenticating again, and metrics that miscounted.
//!
//! Over QUIC, or over TLS on TCP with `HUSH_TEST_TRANSPORT=tcp` (docs/RELAY_PROTOCOL.md §17);
//! tests named `..._over_tcp` always run over TCP.
//!
//! Address blocks on loopback: every 127.x.y.z is a loopback address, so clients bound to
//! 127.0.0.1 and 127.0.1.1 come from two /24 blocks. A test client over TCP cannot choose its
//! address (it connects from 127.0.0.1, in block A): clients of the other blocks connect over
//! QUIC, and the caps count connections of both transports alike.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::raw::{Raw, ended, server_name, tcp_from, tls_connector, tls_refused};
use common::*;
use hush_net::client::Transport;
use hush_proto::relay_api::{self as api, ClientFrame, ErrorCode, client_frame, server_frame};
use hush_relay::config::{Config, StoreKind};
use hush_relay::ops::{RefusalReason, Timeout};
use hush_relay::{Running, frame, limits};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Outer bound of every wait on the relay.
const BOUND: Duration = Duration::from_secs(30);

fn from(a: &str) -> SocketAddr {
    format!("{a}:0").parse().unwrap()
}

/// The first /24 block of the tests, and a second one.
const BLOCK_A: &str = "127.0.0.1";
const BLOCK_B: &str = "127.0.1.1";

struct Relay {
    r: Running,
    _dir: tempfile::TempDir,
}

async fn relay(tune: impl FnOnce(&mut Config)) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(StoreKind::Memory, dir.path());
    tune(&mut cfg);
    let r = hush_relay::start(cfg).await.unwrap();
    Relay { r, _dir: dir }
}

impl Relay {
    /// A client from `bind`: over the test's transport from block A, over QUIC from the others
    /// (a test client over TCP always connects from 127.0.0.1).
    async fn client_from(&self, bind: &str) -> Client {
        if test_transport() == Transport::Tcp && bind.starts_with("127.0.0.") {
            return Client::connect_over(Transport::Tcp, &self.r).await;
        }
        Client::try_connect_from(from(bind), self.r.addr, &self.r.fingerprint)
            .await
            .expect("cannot connect")
    }

    /// A new account of `devices` devices, created, with its device 1 connected from block A.
    async fn account(&self, devices: u32) -> (TestAccount, Client) {
        let acc = TestAccount::new(devices);
        let c = self.client_from(BLOCK_A).await;
        c.create(&acc, 1).await;
        assert!(c.catch_up().await.is_empty());
        (acc, c)
    }

    /// Waits (bounded) until `cond` holds of the relay's metrics.
    async fn until(&self, what: &str, cond: impl Fn(&hush_relay::ops::Metrics) -> bool) {
        let m = Arc::clone(&self.r.metrics);
        tokio::time::timeout(BOUND, async {
            while !cond(&m) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("not in time: {what}"));
    }

    async fn stop(self) {
        self.r.stop().await;
    }
}

fn put(channel: [u8; 32], body: &[u8]) -> client_frame::Kind {
    client_frame::Kind::ProvisionPut(api::ProvisionPut {
        channel: channel.to_vec(),
        body: body.to_vec(),
    })
}

fn offer(channel: [u8; 32]) -> client_frame::Kind {
    client_frame::Kind::ProvisionOffer(api::ProvisionOffer {
        channel: channel.to_vec(),
    })
}

fn take(channel: [u8; 32]) -> client_frame::Kind {
    client_frame::Kind::ProvisionTake(api::ProvisionTake {
        channel: channel.to_vec(),
    })
}

fn ok(k: &server_frame::Kind) {
    assert!(
        matches!(k, server_frame::Kind::Ok(_)),
        "expected Ok, got {k:?}"
    );
}

/// The application close code a connection ends with (bounded).
async fn close_code(conn: &quinn::Connection) -> Option<u64> {
    match tokio::time::timeout(BOUND, conn.closed())
        .await
        .expect("not closed in time")
    {
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_links_from_one_block_stop_at_its_cap_while_another_block_still_links() {
    let cap = 4;
    let h = relay(|c| c.max_pending_links_per_block = cap).await;
    let (_alice, old) = h.account(1).await;
    // The existing device offers the codes the new devices answer.
    for c in (0..cap).map(|i| [i as u8; 32]).chain([[99; 32], [200; 32]]) {
        ok(&old.request(offer(c)).await);
    }
    // One block fills its share of the link table, one link per connection.
    let mut filling = Vec::new();
    for i in 0..cap {
        let c = h.client_from(BLOCK_A).await;
        ok(&c.request(put([i as u8; 32], b"flood")).await);
        filling.push(c);
    }
    let more = h.client_from(BLOCK_A).await;
    let (code, e) = error_of(&more.request(put([99; 32], b"flood")).await);
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(e.retry_after_ms > 0 && e.retry_after_ms <= limits::PROVISION_TTL_MS);
    // A new device elsewhere links: its message reaches the existing device.
    let new = h.client_from(BLOCK_B).await;
    ok(&new
        .request(put([200; 32], b"hello from the new device"))
        .await);
    match old.request(take([200; 32])).await {
        server_frame::Kind::Provision(p) => assert_eq!(p.body, b"hello from the new device"),
        other => panic!("{other:?}"),
    }
    // A flooding connection goes: its link goes with it, and the block has room again.
    let gone = filling.remove(0);
    gone.close();
    h.until("the closed connection's link removed", |m| {
        m.links_pending.get() == i64::from(cap) - 1
    })
    .await;
    assert_eq!(
        error_of(&old.request(take([0; 32])).await).0,
        ErrorCode::NotFound
    );
    ok(&more.request(put([99; 32], b"flood")).await);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_link_table_refuses_with_its_own_error() {
    let h = relay(|c| c.max_pending_links = 3).await;
    let (_alice, old) = h.account(1).await;
    for c in [[0; 32], [1; 32], [2; 32], [9; 32]] {
        ok(&old.request(offer(c)).await);
    }
    let mut holders = Vec::new();
    for (i, block) in ["127.0.1.1", "127.0.2.1", "127.0.3.1"].iter().enumerate() {
        let c = h.client_from(block).await;
        ok(&c.request(put([i as u8; 32], b"x")).await);
        holders.push(c);
    }
    let late = h.client_from("127.0.4.1").await;
    let (code, e) = error_of(&late.request(put([9; 32], b"x")).await);
    assert_eq!(code, ErrorCode::LinkTableFull);
    assert!(e.retry_after_ms > 0);
    assert_eq!(h.r.metrics.links_pending.get(), 3);
    assert_eq!(h.r.metrics.refusals.get(RefusalReason::LinkTableFull), 1);
    assert!(
        h.r.metrics
            .render()
            .contains("hush_relay_links_pending 3\n")
    );
    h.stop().await;
}

/// Connects from `bind` and expects the relay to close right after the handshake with
/// `TOO_MANY_CONNECTIONS` (over TCP, which has no close codes: right after the TCP handshake,
/// so that the TLS handshake fails).
async fn refused_for_its_block(h: &Relay, bind: &str) {
    if test_transport() == Transport::Tcp {
        assert!(
            tls_refused(from(bind), &h.r, hush_net::TCP_ALPN).await,
            "a connection past the block's cap was accepted"
        );
        return;
    }
    let tls = hush_relay::tls::pinned_client_config(&h.r.fingerprint, limits::ALPN).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client(from(bind)).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let code = match tokio::time::timeout(BOUND, ep.connect(h.r.addr, "localhost").unwrap())
        .await
        .expect("handshake hung")
    {
        Ok(conn) => close_code(&conn).await,
        Err(quinn::ConnectionError::ApplicationClosed(c)) => Some(c.error_code.into_inner()),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(code, Some(u64::from(limits::close::TOO_MANY_CONNECTIONS)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_block_stop_at_its_cap_with_their_close_code() {
    let h = relay(|c| c.max_connections_per_block = 3).await;
    let (alice, a) = h.account(2).await;
    let b1 = h.client_from("127.0.0.2").await;
    let b2 = h.client_from("127.0.0.3").await;
    ok(&b1.request(client_frame::Kind::Ping(api::Ping {})).await);
    ok(&b2.request(client_frame::Kind::Ping(api::Ping {})).await);
    // A fourth from the same /24 is closed with the code that says why.
    refused_for_its_block(&h, "127.0.0.4").await;
    assert_eq!(
        h.r.metrics.refusals.get(RefusalReason::TooManyConnections),
        1
    );
    // Another block connects and authenticates as usual.
    let other = h.client_from(BLOCK_B).await;
    other.authenticate(&alice, 2).await;
    // The block's connections are served throughout.
    ok(&a.request(client_frame::Kind::Ping(api::Ping {})).await);
    // One of them goes: the block has room again. (Counted out of four: the refused handshake
    // may still be counted as open for a moment.)
    h.until("four connections open", |m| m.connections_open.get() == 4)
        .await;
    b1.close();
    h.until("the closed connection counted out", |m| {
        m.connections_open.get() == 3
    })
    .await;
    let again = h.client_from("127.0.0.4").await;
    ok(&again.request(client_frame::Kind::Ping(api::Ping {})).await);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_at_its_connection_cap_is_refused_and_may_retry_once_one_closes() {
    let h = relay(|c| c.max_connections_per_account = 2).await;
    let (alice, d1) = h.account(3).await;
    let d2 = h.client_from(BLOCK_A).await;
    d2.authenticate(&alice, 2).await;
    let d3 = h.client_from(BLOCK_B).await;
    let refused = d3.authenticate_with(alice.id(), 3, alice.device(3)).await;
    assert_eq!(error_of(&refused).0, ErrorCode::TooManyConnections);
    // Not an authentication failure: the connection is still there.
    ok(&d3.request(client_frame::Kind::Ping(api::Ping {})).await);
    assert_eq!(h.r.metrics.auth_failures.get(), 0);
    // Another account is not affected.
    let (_bob, _b) = h.account(1).await;
    let open = h.r.metrics.connections_open.get();
    d1.close();
    h.until("the closed connection counted out", |m| {
        m.connections_open.get() == open - 1
    })
    .await;
    d3.authenticate(&alice, 3).await;
    h.stop().await;
}

/// A Ping frame of exactly `len` bytes (padded with an unknown field), with its header.
fn padded_ping(request_id: u64, len: usize) -> Vec<u8> {
    let mut body = ClientFrame {
        request_id,
        kind: Some(client_frame::Kind::Ping(api::Ping {})),
    }
    .encode_to_vec();
    // Field 100, length-delimited: two bytes of tag, then the length (one or three bytes).
    let pad = len - body.len() - 2;
    body.extend_from_slice(&[0xa2, 0x06]);
    if pad - 1 < 128 {
        body.push(u8::try_from(pad - 1).unwrap());
        body.resize(len, 0);
    } else {
        let n = pad - 3;
        body.extend_from_slice(&[
            (n & 0x7f) as u8 | 0x80,
            ((n >> 7) & 0x7f) as u8 | 0x80,
            (n >> 14) as u8,
        ]);
        body.resize(len, 0);
    }
    assert!(ClientFrame::decode(body.as_slice()).is_ok());
    let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_fed_one_byte_a_second_is_cut_off_at_its_deadline() {
    let h = relay(|c| {
        c.frame_read_timeout_ms = 1_000;
        c.frame_read_min_bytes_per_sec = 1024;
    })
    .await;
    let raw = Raw::authenticated(test_transport(), &h.r).await;
    // 64 bytes at one byte a second would take over a minute; the frame's deadline is 1 s plus
    // 64 B at 1 KiB/s.
    let whole = padded_ping(9, 64);
    let Raw {
        quic,
        mut send,
        mut recv,
        ..
    } = raw;
    let feeder = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for b in whole {
            tick.tick().await;
            if send.write_all(&[b]).await.is_err() || send.flush().await.is_err() {
                return false;
            }
        }
        true
    });
    let code = ended(quic.as_ref().map(|q| &q.1), &mut recv).await;
    if quic.is_some() {
        assert_eq!(code, Some(u64::from(limits::close::PROTOCOL)));
    }
    assert!(!feeder.await.unwrap(), "the whole frame got through");
    assert_eq!(h.r.metrics.timeouts.get(Timeout::Frame), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_left_one_byte_short_are_cut_off_at_their_deadline() {
    let h = relay(|c| {
        c.frame_read_timeout_ms = 500;
        c.frame_read_min_bytes_per_sec = 1 << 20;
    })
    .await;
    let (_alice, honest) = h.account(1).await;
    // Eight connections each send all but the last byte of a 1 MiB frame.
    let mut pinned = Vec::new();
    for _ in 0..8 {
        let mut raw = Raw::authenticated(test_transport(), &h.r).await;
        let whole = padded_ping(9, 1 << 20);
        raw.write(&whole[..whole.len() - 1]).await;
        pinned.push(raw);
    }
    for raw in &mut pinned {
        raw.closed_with(limits::close::PROTOCOL).await;
    }
    assert_eq!(h.r.metrics.timeouts.get(Timeout::Frame), 8);
    // Nobody else noticed.
    ok(&honest.request(client_frame::Kind::Ping(api::Ping {})).await);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_zero_and_an_id_in_flight_are_malformed_and_close() {
    let h = relay(|_| {}).await;
    let (bob, _b) = h.account(1).await;
    // Id 0: an answer to it would look unsolicited.
    let mut raw = Raw::authenticated(test_transport(), &h.r).await;
    raw.write(&frame::encode(&ClientFrame {
        request_id: 0,
        kind: Some(client_frame::Kind::Ping(api::Ping {})),
    }))
    .await;
    assert_eq!(raw.errors_until_closed().await, vec![ErrorCode::Malformed]);
    raw.closed_with(limits::close::PROTOCOL).await;
    // A send and, in the same write, a ping under the send's id while the send waits for its
    // flush: two answers with one id would be ambiguous.
    let mut raw = Raw::authenticated(test_transport(), &h.r).await;
    let mut bytes = frame::encode(&ClientFrame {
        request_id: 50,
        kind: Some(client_frame::Kind::Send(api::Send {
            client_id: random::<16>().to_vec(),
            recipient_account: bob.id().to_vec(),
            envelopes: vec![api::OutEnvelope {
                device_id: 1,
                body: vec![1; 10],
                delivery_token: Vec::new(),
            }],
            ..Default::default()
        })),
    });
    bytes.extend(frame::encode(&ClientFrame {
        request_id: 50,
        kind: Some(client_frame::Kind::Ping(api::Ping {})),
    }));
    raw.write(&bytes).await;
    assert_eq!(raw.errors_until_closed().await, vec![ErrorCode::Malformed]);
    raw.closed_with(limits::close::PROTOCOL).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_username_that_is_not_utf8_is_refused_and_the_connection_stays_open() {
    let h = relay(|_| {}).await;
    let mut raw = Raw::authenticated(test_transport(), &h.r).await;
    let mut bytes = frame::encode(&ClientFrame {
        request_id: 20,
        kind: Some(client_frame::Kind::LookupUsername(api::LookupUsername {
            name: "alice".into(),
        })),
    });
    let at = bytes.windows(5).position(|w| w == b"alice").unwrap();
    bytes[at + 1] = 0xc3; // a two-byte sequence cut short
    bytes[at + 2] = b'(';
    raw.write(&bytes).await;
    let f = loop {
        let f = raw.read().await.expect("closed");
        if f.request_id != 0 {
            break f;
        }
    };
    assert_eq!(f.request_id, 20);
    match f.kind {
        Some(server_frame::Kind::Error(e)) => assert_eq!(e.code(), ErrorCode::Malformed),
        other => panic!("{other:?}"),
    }
    ok(&raw
        .request(21, client_frame::Kind::Ping(api::Ping {}))
        .await);
    assert!(raw.is_open().await);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticating_again_is_refused_as_such_and_never_closes_the_connection() {
    let h = relay(|_| {}).await;
    let (alice, a) = h.account(1).await;
    for _ in 0..=limits::MAX_AUTH_FAILURES {
        let again = a.authenticate_with(alice.id(), 1, alice.device(1)).await;
        assert_eq!(error_of(&again).0, ErrorCode::AlreadyAuthenticated);
    }
    ok(&a.request(client_frame::Kind::Ping(api::Ping {})).await);
    assert_eq!(h.r.metrics.auth_failures.get(), 0);
    assert_eq!(
        h.r.metrics
            .refusals
            .get(RefusalReason::AlreadyAuthenticated),
        4
    );
    assert_eq!(h.r.metrics.refusals.get(RefusalReason::AuthFailed), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_under_their_own_code_and_closing_is_no_refusal() {
    let h = relay(|_| {}).await;
    let (alice, a) = h.account(1).await;
    // Three refusals, three codes that used to be counted as "other".
    let unknown = TestAccount::new(1);
    let r = a
        .request(client_frame::Kind::FetchDeviceList(api::FetchDeviceList {
            account: unknown.id().to_vec(),
        }))
        .await;
    assert_eq!(error_of(&r).0, ErrorCode::NotFound);
    let r = a
        .request(client_frame::Kind::PublishDeviceList(
            api::PublishDeviceList {
                signed_device_list: alice.signed_list(),
            },
        ))
        .await;
    assert_eq!(error_of(&r).0, ErrorCode::StaleDeviceList);
    let mut next = TestAccount::new(1);
    next.key = alice.key.clone();
    next.devices = alice.devices.clone();
    next.version = 2;
    let r = a
        .request(client_frame::Kind::PublishDeviceList(
            api::PublishDeviceList {
                signed_device_list: next.signed_list_by(&unknown.key),
            },
        ))
        .await;
    assert_eq!(error_of(&r).0, ErrorCode::BadSignature);
    // Clients closing in every ordinary way: closing the connection, finishing the session
    // stream, and going away without a word.
    let open = h.r.metrics.connections_open.get();
    a.close();
    let b = h.client_from(BLOCK_A).await;
    b.authenticate(&alice, 1).await;
    let mut c = Raw::connect(test_transport(), &h.r).await;
    ok(&c.request(1, client_frame::Kind::Ping(api::Ping {})).await);
    c.finish().await;
    let d = h.client_from(BLOCK_B).await;
    ok(&d.request(client_frame::Kind::Ping(api::Ping {})).await);
    drop(b);
    drop(d);
    h.until("every connection counted out", |m| {
        m.connections_open.get() == open - 1
    })
    .await;
    let m = &h.r.metrics;
    for reason in RefusalReason::ALL {
        let want = u64::from(matches!(
            reason,
            RefusalReason::NotFound | RefusalReason::StaleDeviceList | RefusalReason::BadSignature
        ));
        assert_eq!(m.refusals.get(reason), want, "{}", reason.as_str());
    }
    let text = m.render();
    assert!(text.contains("hush_relay_refusals_total{reason=\"not_found\"} 1\n"));
    assert!(text.contains("hush_relay_refusals_total{reason=\"malformed\"} 0\n"));
    assert!(!text.contains("reason=\"other\""));
    h.stop().await;
}

/// Over TCP a blob transfer opens a connection of its own that must send its control
/// connection's blob key first, within the request deadline (docs/RELAY_PROTOCOL.md §17): blob
/// connections that send nothing after the TLS handshake, or half a key, are closed at that
/// deadline and counted out, and the control connection is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_connections_that_never_send_their_key_are_closed_at_the_deadline_over_tcp() {
    let h = relay(|c| c.blob_request_timeout_ms = 300).await;
    let c = Client::connect_over(Transport::Tcp, &h.r).await;
    ok(&c.request(client_frame::Kind::Ping(api::Ping {})).await);
    let open = h.r.metrics.connections_open.get();
    let tcp = h.r.tcp_addr.unwrap();
    let mut stalled = Vec::new();
    for half in [0usize, 16] {
        let stream = tcp_from(from(BLOCK_A), tcp, None).await.unwrap();
        let connector = tls_connector(&h.r.fingerprint, hush_net::TCP_BLOB_ALPN);
        let mut tls = tokio::time::timeout(BOUND, connector.connect(server_name(), stream))
            .await
            .expect("TLS handshake hung")
            .unwrap();
        tls.write_all(&[7u8; 32][..half]).await.unwrap();
        tls.flush().await.unwrap();
        stalled.push(tls);
    }
    for mut tls in stalled {
        let mut buf = [0u8; 64];
        // Nothing comes on it before its end.
        let end = tokio::time::timeout(BOUND, tls.read(&mut buf));
        match end
            .await
            .expect("a blob connection without its key was never closed")
        {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("{n} bytes on a blob connection without its key"),
        }
    }
    h.until("the blob connections counted out", |m| {
        m.connections_open.get() == open
    })
    .await;
    ok(&c.request(client_frame::Kind::Ping(api::Ping {})).await);
    h.stop().await;
}
