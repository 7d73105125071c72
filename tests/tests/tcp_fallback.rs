//! A client whose UDP never reaches the relay falls back to TLS over TCP
//! (docs/RELAY_PROTOCOL.md §17): `RelayConnection` races QUIC and TCP, keeps TCP, remembers it,
//! and chats and moves blobs over it with clients on QUIC. Loopback only: "UDP dropped" is a UDP
//! socket that is bound but never answers, standing in for the relay's QUIC port.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use ed25519_dalek::Signer;
use hush_client::conn::{
    RelayAddrs, RelayConnection, Transport, no_progress, remembered_transport,
};
use hush_proto::relay_api::{self as api, client_frame, server_frame};
use hush_relay::config::StoreKind;
use hush_testkit::{Client, TestAccount, TestRelay, random};
use tokio::sync::mpsc;

/// The bound on connecting when UDP is dropped (not a speed assertion: a generous ceiling for
/// a fallback that starts after 250 ms).
const FALLBACK_BOUND: Duration = Duration::from_secs(2);
/// The bound on anything else a test waits for.
const WAIT: Duration = Duration::from_secs(20);

/// The next delivery on `events` (other unsolicited frames are skipped).
async fn next_delivery(events: &mut mpsc::Receiver<server_frame::Kind>) -> api::Deliver {
    loop {
        let f = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("a delivery in time")
            .expect("connection open");
        if let server_frame::Kind::Deliver(d) = f {
            return d;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_dropped_the_client_connects_over_tcp_and_chats() {
    let relay = TestRelay::start(StoreKind::Memory).await;
    // QUIC "reaches" a socket that takes every datagram and answers none.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addrs = RelayAddrs {
        quic: silent.local_addr().unwrap(),
        tcp: Some(relay.tcp_addr()),
    };
    assert_eq!(remembered_transport(addrs.quic), None);
    let (conn, mut events) = tokio::time::timeout(
        FALLBACK_BOUND,
        RelayConnection::connect_to(addrs, relay.pin()),
    )
    .await
    .expect("connected within the bound")
    .expect("connected");
    assert_eq!(conn.transport(), Transport::Tcp);
    assert!(conn.quic().is_none());
    assert_eq!(remembered_transport(addrs.quic), Some(Transport::Tcp));

    // Alice over TCP: account, authentication bound to the TCP connection's exporter.
    let alice = TestAccount::new(1);
    let created = conn
        .request(client_frame::Kind::CreateAccount(api::CreateAccount {
            signed_device_list: alice.signed_list(),
        }))
        .await
        .unwrap();
    assert!(matches!(created, server_frame::Kind::Ok(_)), "{created:?}");
    let (account, key) = (alice.id(), alice.device(1).clone());
    conn.authenticate(account, 1, |exporter, challenge| {
        let t = hush_proto::transcripts::relay_auth(exporter, challenge, &account, 1);
        key.sign(&t).to_bytes()
    })
    .await
    .unwrap();

    // Bob over QUIC.
    let bob = TestAccount::new(1);
    let b = Client::connect(relay.addr(), relay.pin()).await;
    b.create(&bob, 1).await;
    assert!(b.catch_up().await.is_empty());

    // Alice → Bob.
    let sent = conn
        .request(client_frame::Kind::Send(api::Send {
            client_id: random::<16>().to_vec(),
            recipient_account: bob.id().to_vec(),
            envelopes: vec![api::OutEnvelope {
                device_id: 1,
                body: b"over tcp".to_vec(),
                delivery_token: Vec::new(),
            }],
            targeted: false,
        }))
        .await
        .unwrap();
    assert!(matches!(sent, server_frame::Kind::Sent(_)), "{sent:?}");
    let d = b.next_delivery().await;
    assert_eq!(d.body, b"over tcp");
    b.ack(vec![d.seq]).await;

    // Bob → Alice, pushed to her over TCP.
    let sent = b.send(random(), alice.id(), &[1], b"over quic").await;
    assert!(matches!(sent, server_frame::Kind::Sent(_)), "{sent:?}");
    let d = next_delivery(&mut events).await;
    assert_eq!(d.body, b"over quic");
    let acked = conn
        .request(client_frame::Kind::Ack(api::Ack { seqs: vec![d.seq] }))
        .await
        .unwrap();
    assert!(matches!(acked, server_frame::Kind::Ok(_)), "{acked:?}");

    // A blob up over TCP (its own TLS connection), down over QUIC and over TCP.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (id, cap) = conn.upload_blob(&data, &no_progress).await.unwrap();
    assert_eq!(b.download_blob(&id, &cap).await.unwrap(), data);
    let back = conn
        .download_blob(&id, &cap, data.len(), &no_progress)
        .await
        .unwrap();
    assert_eq!(back, data);
    // A wrong capability is a blob the relay does not have, over TCP too.
    let gone = conn
        .download_blob(&id, &[0u8; 32], data.len(), &no_progress)
        .await;
    assert!(
        matches!(gone, Err(hush_client::ClientError::BlobGone)),
        "{gone:?}"
    );

    // The next connection tries TCP first, and gets it.
    drop(conn);
    let (again, _events) = tokio::time::timeout(
        FALLBACK_BOUND,
        RelayConnection::connect_to(addrs, relay.pin()),
    )
    .await
    .expect("connected within the bound")
    .expect("connected");
    assert_eq!(again.transport(), Transport::Tcp);
    drop(again);
    drop(silent);
    relay.stop().await;
}

/// With UDP working, QUIC wins the race, and a relay without TCP is reached over QUIC alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_working_quic_is_used() {
    let relay = TestRelay::start(StoreKind::Memory).await;
    let addrs = RelayAddrs {
        quic: relay.addr(),
        tcp: Some(relay.tcp_addr()),
    };
    let (conn, _events) = RelayConnection::connect_to(addrs, relay.pin())
        .await
        .unwrap();
    // QUIC starts 250 ms ahead on loopback; TCP may still win on a loaded host, and either is
    // a working connection.
    let ping = conn
        .request(client_frame::Kind::Ping(api::Ping {}))
        .await
        .unwrap();
    assert!(matches!(ping, server_frame::Kind::Ok(_)));
    assert_eq!(remembered_transport(addrs.quic), Some(conn.transport()));
    drop(conn);
    let quic_only = RelayAddrs {
        quic: relay.addr(),
        tcp: None,
    };
    let (conn, _events) = RelayConnection::connect_to(quic_only, relay.pin())
        .await
        .unwrap();
    assert_eq!(conn.transport(), Transport::Quic);
    drop(conn);
    relay.stop().await;
}
