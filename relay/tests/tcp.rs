//! TLS 1.3 over TCP (docs/RELAY_PROTOCOL.md §17): the same protocol as over QUIC, on loopback.
//! Clients pin the relay's certificate, authenticate with a signature bound to the TLS exporter
//! of their own TCP connection, and talk to clients on QUIC through the same relay.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

#[macro_use]
mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use hush_net::client::Transport;
use hush_proto::relay_api::{self as api, ErrorCode, client_frame, server_frame};
use hush_relay::config::{StoreKind, TcpListen};
use hush_relay::ops::Transport as Label;

fn ok(k: &server_frame::Kind) {
    assert!(
        matches!(k, server_frame::Kind::Ok(_)),
        "expected Ok, got {k:?}"
    );
}

/// Alice on `a`, Bob on `b`: accounts, authentication, a message each way, acknowledged.
async fn chat(r: &hush_relay::Running, a: Transport, b: Transport) {
    let alice = TestAccount::new(1);
    let bob = TestAccount::new(1);
    let ca = Client::connect_over(a, r).await;
    let cb = Client::connect_over(b, r).await;
    assert_eq!((ca.transport(), cb.transport()), (a, b));
    ca.create(&alice, 1).await;
    cb.create(&bob, 1).await;
    assert!(ca.catch_up().await.is_empty());
    assert!(cb.catch_up().await.is_empty());

    let sent = ca.send(random(), bob.id(), &[1], b"hello bob").await;
    assert!(matches!(sent, server_frame::Kind::Sent(_)), "{sent:?}");
    let d = cb.next_delivery().await;
    assert_eq!(d.body, b"hello bob");
    cb.ack(vec![d.seq]).await;

    let sent = cb.send(random(), alice.id(), &[1], b"hello alice").await;
    assert!(matches!(sent, server_frame::Kind::Sent(_)), "{sent:?}");
    let d = ca.next_delivery().await;
    assert_eq!(d.body, b"hello alice");
    ca.ack(vec![d.seq]).await;
}

on_both_stores!(tcp_clients_authenticate_and_chat);
async fn tcp_clients_authenticate_and_chat(store: StoreKind, dir: &Path) {
    let r = start_relay(test_config(store, dir)).await;
    chat(&r, Transport::Tcp, Transport::Tcp).await;
    chat(&r, Transport::Tcp, Transport::Quic).await;
    chat(&r, Transport::Quic, Transport::Tcp).await;
    let by = &r.metrics.connections_by_transport;
    assert_eq!(by.get(Label::Tcp), 4);
    assert_eq!(by.get(Label::Quic), 2);
    r.stop().await;
}

// Mail queued while a device was away comes over TCP on its next connection, in order.
on_both_stores!(queued_mail_is_delivered_over_tcp);
async fn queued_mail_is_delivered_over_tcp(store: StoreKind, dir: &Path) {
    let r = start_relay(test_config(store, dir)).await;
    let alice = TestAccount::new(1);
    let bob = TestAccount::new(1);
    let ca = Client::connect_over(Transport::Quic, &r).await;
    ca.create(&alice, 1).await;
    let cb = Client::connect_over(Transport::Tcp, &r).await;
    ok(&cb
        .request(client_frame::Kind::CreateAccount(api::CreateAccount {
            signed_device_list: bob.signed_list(),
        }))
        .await);
    drop(cb);
    for i in 0..20u8 {
        let sent = ca.send(random(), bob.id(), &[1], &[i; 100]).await;
        assert!(matches!(sent, server_frame::Kind::Sent(_)), "{sent:?}");
    }
    let cb = Client::connect_over(Transport::Tcp, &r).await;
    cb.authenticate(&bob, 1).await;
    let got = cb.catch_up().await;
    let bodies: Vec<Vec<u8>> = got.iter().map(|d| d.body.clone()).collect();
    let want: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 100]).collect();
    assert_eq!(bodies, want);
    r.stop().await;
}

/// The signature is bound to the TLS session it was made for: a signature made with another
/// TCP connection's exporter (or a QUIC connection's) fails on this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signature_is_bound_to_the_tcp_connection() {
    let r = TestRelay::start(StoreKind::Memory).await;
    let alice = TestAccount::new(1);
    let first = Client::connect_over(Transport::Tcp, &r.running).await;
    first.create(&alice, 1).await;
    let other_tcp = Client::connect_over(Transport::Tcp, &r.running).await;
    let other_quic = Client::connect_over(Transport::Quic, &r.running).await;
    let target = Client::connect_over(Transport::Tcp, &r.running).await;
    let exporters = [
        first.exporter(),
        other_tcp.exporter(),
        other_quic.exporter(),
        target.exporter(),
    ];
    for (i, a) in exporters.iter().enumerate() {
        for b in exporters.iter().skip(i + 1) {
            assert_ne!(a, b, "every connection has its own exporter");
        }
    }
    for stolen in [&other_tcp, &other_quic] {
        let server_frame::Kind::Challenge(ch) = target
            .request(client_frame::Kind::Hello(api::Hello {}))
            .await
        else {
            panic!("no challenge")
        };
        let signature = stolen.auth_signature(&ch.nonce, alice.id(), 1, alice.device(1));
        let answer = target
            .request(client_frame::Kind::Authenticate(api::Authenticate {
                account: alice.id().to_vec(),
                device_id: 1,
                signature,
            }))
            .await;
        assert_eq!(error_of(&answer).0, ErrorCode::AuthFailed);
    }
    // With its own exporter it succeeds (and replaces the first connection of the device).
    target.authenticate(&alice, 1).await;
    r.stop().await;
}

/// Only the pinned certificate and the TCP protocol's ALPN are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_or_alpn_gets_no_connection() {
    let r = TestRelay::start(StoreKind::Memory).await;
    let tcp = r.tcp_addr();
    let mut wrong = r.pin().to_owned().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let options = hush_net::client::Options::default();
    let refused = hush_net::client::Connection::connect_tcp(
        tcp,
        &wrong,
        &options,
        hush_net::client::Unsolicited::Handler(Box::new(|_| {})),
    )
    .await;
    assert!(
        matches!(refused, Err(hush_net::client::ConnError::PinMismatch(a)) if a == tcp),
        "{:?}",
        refused.err()
    );
    // The QUIC ALPN over TCP: no protocol in common, no connection.
    let tls = hush_net::pin::pinned_client_config(r.pin(), hush_net::ALPN).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let stream = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let attempt = tokio::time::timeout(WAIT, connector.connect(name, stream))
        .await
        .expect("the handshake ends");
    assert!(attempt.is_err(), "a handshake without the TCP ALPN fails");
    // The right pin and ALPN work.
    let c = Client::connect_tcp(tcp, r.pin()).await;
    ok(&c.request(client_frame::Kind::Ping(api::Ping {})).await);
    r.stop().await;
}

/// A frame over the cap is refused from its length prefix, and the connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_over_tcp_ends_the_connection() {
    let r = TestRelay::start(StoreKind::Memory).await;
    let c = Client::connect_tcp(r.tcp_addr(), r.pin()).await;
    let too_long =
        u32::try_from(hush_relay::config::Config::default().max_frame_bytes + 1).unwrap();
    c.send_raw(too_long.to_be_bytes().to_vec());
    match c.event().await {
        server_frame::Kind::Error(e) => assert_eq!(e.code(), ErrorCode::TooLarge),
        other => panic!("expected TOO_LARGE, got {other:?}"),
    }
    assert_eq!(c.closed().await, None, "TCP carries no close code");
    assert!(!c.is_open());
    r.stop().await;
}

/// Draining tells TCP clients to reconnect, then ends their connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_reaches_tcp_clients() {
    let r = TestRelay::start(StoreKind::Memory).await;
    let alice = TestAccount::new(1);
    let c = Client::connect_tcp(r.tcp_addr(), r.pin()).await;
    c.create(&alice, 1).await;
    assert!(c.catch_up().await.is_empty());
    let waiting = Client::connect_tcp(r.tcp_addr(), r.pin()).await;
    let stop = tokio::spawn(r.stop());
    for client in [&c, &waiting] {
        assert!(matches!(client.event().await, server_frame::Kind::Drain(_)));
        client.closed().await;
    }
    tokio::time::timeout(WAIT, stop).await.unwrap().unwrap();
}

/// By default TCP takes the port number of QUIC; it can be put elsewhere or turned off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listens_on_the_quic_port_number_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(StoreKind::Memory, dir.path());
    cfg.tcp_listen = TcpListen::Same;
    let r = start_relay(cfg).await;
    let tcp = r.tcp_addr.expect("listening on TCP");
    assert_eq!(tcp, r.addr, "the same address and port number");
    let c = Client::connect_tcp(tcp, &r.fingerprint).await;
    ok(&c.request(client_frame::Kind::Ping(api::Ping {})).await);
    r.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(StoreKind::Memory, dir.path());
    cfg.tcp_listen = TcpListen::Off;
    let r = start_relay(cfg).await;
    assert_eq!(r.tcp_addr, None);
    r.stop().await;
}

// Blobs over TCP travel on blob connections of their own: up over TCP, down over QUIC and TCP,
// and the control connection keeps answering while an upload is half done.
on_both_stores!(blobs_move_on_blob_connections_over_tcp);
async fn blobs_move_on_blob_connections_over_tcp(store: StoreKind, dir: &Path) {
    use tokio::io::AsyncWriteExt;
    let r = start_relay(test_config(store, dir)).await;
    let alice = TestAccount::new(1);
    let a = Client::connect_over(Transport::Tcp, &r).await;
    a.create(&alice, 1).await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let up = a.upload_blob(&data, data.len() as u64).await;
    let Some(api::blob_response::Kind::Uploaded(u)) = up.kind else {
        panic!("not uploaded: {up:?}")
    };
    let quic = Client::connect_over(Transport::Quic, &r).await;
    ok(&quic
        .request(client_frame::Kind::Anonymous(api::Anonymous {}))
        .await);
    assert_eq!(
        quic.download_blob(&u.id, &u.capability).await.unwrap(),
        data
    );
    assert_eq!(a.download_blob(&u.id, &u.capability).await.unwrap(), data);
    let wrong = a.download_blob(&u.id, &[7u8; 32]).await.unwrap_err();
    assert_eq!(wrong.code(), ErrorCode::BlobNotFound);

    // An upload half sent does not hold the control connection up.
    let (mut send, mut recv) = a.blob_channel().await;
    hush_net::frame::write(
        &mut send,
        &api::BlobRequest {
            kind: Some(api::blob_request::Kind::Upload(api::BlobUpload {
                size: data.len() as u64,
                id: Vec::new(),
                capability: Vec::new(),
            })),
        },
    )
    .await
    .unwrap();
    send.write_all(&data[..data.len() / 2]).await.unwrap();
    send.flush().await.unwrap();
    ok(&a.request(client_frame::Kind::Ping(api::Ping {})).await);
    send.write_all(&data[data.len() / 2..]).await.unwrap();
    send.shutdown().await.unwrap();
    let done: api::BlobResponse =
        tokio::time::timeout(WAIT, hush_net::frame::read(&mut recv, 1 << 16))
            .await
            .unwrap()
            .unwrap();
    assert!(
        matches!(done.kind, Some(api::blob_response::Kind::Uploaded(_))),
        "{done:?}"
    );
    r.stop().await;
}

/// A blob connection acts for its control connection as it is: nothing before authentication
/// (or `Anonymous`), downloads only when anonymous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_connection_acts_for_its_control_connection_only() {
    let r = TestRelay::start(StoreKind::Memory).await;
    let alice = TestAccount::new(1);
    let a = Client::connect_tcp(r.tcp_addr(), r.pin()).await;
    a.create(&alice, 1).await;
    let data = vec![5u8; 1000];
    let Some(api::blob_response::Kind::Uploaded(u)) =
        a.upload_blob(&data, data.len() as u64).await.kind
    else {
        panic!("not uploaded")
    };

    let fresh = Client::connect_tcp(r.tcp_addr(), r.pin()).await;
    let refused = fresh.download_blob(&u.id, &u.capability).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Unauthenticated);
    ok(&fresh
        .request(client_frame::Kind::Anonymous(api::Anonymous {}))
        .await);
    assert_eq!(
        fresh.download_blob(&u.id, &u.capability).await.unwrap(),
        data
    );
    let up = fresh.upload_blob(&data, data.len() as u64).await;
    let Some(api::blob_response::Kind::Error(e)) = up.kind else {
        panic!("an anonymous upload: {up:?}")
    };
    assert_eq!(e.code(), ErrorCode::Unauthenticated);

    // A blob connection whose key names no control connection.
    let tls = hush_net::pin::pinned_client_config(r.pin(), hush_net::TCP_BLOB_ALPN).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let stream = tokio::net::TcpStream::connect(r.tcp_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, stream).await.unwrap();
    use tokio::io::AsyncWriteExt;
    tls.write_all(&[9u8; 32]).await.unwrap();
    hush_net::frame::write(
        &mut tls,
        &api::BlobRequest {
            kind: Some(api::blob_request::Kind::Download(api::BlobDownload {
                id: u.id.clone(),
                capability: u.capability.clone(),
            })),
        },
    )
    .await
    .unwrap();
    let answer: api::BlobResponse =
        tokio::time::timeout(WAIT, hush_net::frame::read(&mut tls, 1 << 16))
            .await
            .unwrap()
            .unwrap();
    let Some(api::blob_response::Kind::Error(e)) = answer.kind else {
        panic!("{answer:?}")
    };
    assert_eq!(e.code(), ErrorCode::Unauthenticated);
    r.stop().await;
}

/// TCP has no idle timeout of its own: the relay closes a connection over TCP that sends nothing
/// for `idle_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tcp_connection_is_closed_after_the_idle_timeout() {
    let r = TestRelay::start_with(StoreKind::Memory, |c| c.idle_timeout_ms = 300).await;
    let silent = Client::connect_tcp(r.tcp_addr(), r.pin()).await;
    ok(&silent.request(client_frame::Kind::Ping(api::Ping {})).await);
    // Anonymous: no authentication deadline, so only the idle timeout can close it.
    ok(&silent
        .request(client_frame::Kind::Anonymous(api::Anonymous {}))
        .await);
    silent.closed().await;
    assert!(!silent.is_open());
    assert_eq!(
        r.running
            .metrics
            .timeouts
            .get(hush_relay::ops::Timeout::Idle),
        1
    );
    r.stop().await;
}

/// A large download on a blob connection arrives whole and ends with `close_notify` when the
/// client ends its side (`close_notify`) while the relay is still sending: the relay reads the
/// client's `close_notify` before it closes the socket (a socket closed with data unread resets
/// the connection, and the reset throws away the end of the answer still on its way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_whose_client_ended_its_side_early_arrives_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = TestRelay::start_with(StoreKind::Memory, |c| c.blob_max_bytes = 8 << 20).await;
    let a = Client::connect_tcp(r.tcp_addr(), r.pin()).await;
    a.create(&TestAccount::new(1), 1).await;
    let data: Vec<u8> = (0..(6u32 << 20)).map(|i| (i % 249) as u8).collect();
    let Some(api::blob_response::Kind::Uploaded(u)) =
        a.upload_blob(&data, data.len() as u64).await.kind
    else {
        panic!("not uploaded")
    };
    for _ in 0..3 {
        let (mut send, mut recv) = a.blob_channel().await;
        hush_net::frame::write(
            &mut send,
            &api::BlobRequest {
                kind: Some(api::blob_request::Kind::Download(api::BlobDownload {
                    id: u.id.clone(),
                    capability: u.capability.clone(),
                })),
            },
        )
        .await
        .unwrap();
        // The relay has read the request: the client's `close_notify` comes after it.
        let found: api::BlobResponse =
            tokio::time::timeout(WAIT, hush_net::frame::read(&mut recv, 1 << 16))
                .await
                .unwrap()
                .unwrap();
        assert!(
            matches!(found.kind, Some(api::blob_response::Kind::Found(_))),
            "{found:?}"
        );
        send.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, recv.read_to_end(&mut got))
            .await
            .unwrap()
            .expect("the download ends with close_notify");
        assert!(got == data, "{} of {} bytes", got.len(), data.len());
    }
    r.stop().await;
}
