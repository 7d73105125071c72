//! End to end over two relay nodes on one Redis Cluster (loopback): chat, groups, typing and
//! presence cross nodes; an attachment uploaded through one node downloads through the other; a
//! device moving between nodes loses nothing; a device links through another node than the
//! account's existing device; a list published through one node cuts off a revoked device
//! connected to the other.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

use std::time::Duration;

use hush_client::messenger::MessageStatus;
use hush_client::{Conversation, Engine, Event, Messenger, MessengerEvent};
use hush_proto::app::app_message;

const WAIT: Duration = Duration::from_secs(30);

/// Two relay nodes of one deployment (one key prefix) on the test cluster.
struct Nodes {
    a: hush_relay::Running,
    b: hush_relay::Running,
    _dirs: [tempfile::TempDir; 2],
}

async fn two_nodes() -> Nodes {
    let prefix = fresh_prefix();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = hush_relay::start(cluster_node_config(dirs[0].path(), &prefix))
        .await
        .unwrap();
    let b = hush_relay::start(cluster_node_config(dirs[1].path(), &prefix))
        .await
        .unwrap();
    Nodes { a, b, _dirs: dirs }
}

impl Nodes {
    async fn stop(self) {
        self.a.stop().await;
        self.b.stop().await;
    }
}

fn on(dir: &std::path::Path, node: &hush_relay::Running) -> hush_client::EngineConfig {
    engine_config(dir, node.addr, &node.fingerprint)
}

fn text_of(m: &hush_proto::app::StoredMessage) -> String {
    match m.message.as_ref().and_then(|m| m.kind.as_ref()) {
        Some(app_message::Kind::Text(t)) => t.body.clone(),
        other => panic!("not a text: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_on_one_node_and_bob_on_the_other_chat_with_receipts_typing_and_presence() {
    let nodes = two_nodes().await;
    let (ad, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, mut a_rx) = Messenger::create_account(on(ad.path(), &nodes.a))
        .await
        .unwrap();
    let (bob, mut b_rx) = Messenger::create_account(on(bd.path(), &nodes.b))
        .await
        .unwrap();
    alice.engine().connected(WAIT).await.unwrap();
    bob.engine().connected(WAIT).await.unwrap();
    let (a, b) = (alice.address().account, bob.address().account);
    let (to_bob, to_alice) = (Conversation::Direct(b), Conversation::Direct(a));

    let first = alice.send_text(to_bob, "hi bob", None).await.unwrap();
    let got = next(&mut b_rx, |e| match e {
        MessengerEvent::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    assert_eq!(text_of(&got), "hi bob");
    assert_eq!(
        next(&mut a_rx, status_step).await,
        (MessageStatus::Sent, vec![first])
    );
    assert_eq!(
        next(&mut a_rx, status_step).await,
        (MessageStatus::Delivered, vec![first])
    );
    bob.mark_read(to_alice).await.unwrap();
    assert_eq!(
        next(&mut a_rx, status_step).await,
        (MessageStatus::Read, vec![first])
    );
    bob.send_text(to_alice, "hi alice", Some(first))
        .await
        .unwrap();
    let got = next(&mut a_rx, |e| match e {
        MessengerEvent::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    assert_eq!(text_of(&got), "hi alice");

    // Typing and presence are never stored: they cross nodes live.
    alice.typing(to_bob, true).await.unwrap();
    let typing = next(&mut b_rx, |e| match e {
        MessengerEvent::Typing { typing, from, .. } => Some((typing, from.account)),
        _ => None,
    })
    .await;
    assert_eq!(typing, (true, a));
    bob.set_presence(true, &[a]).await.unwrap();
    let online = next(&mut a_rx, |e| match e {
        MessengerEvent::Presence { online, from, .. } => Some((online, from)),
        _ => None,
    })
    .await;
    assert_eq!(online, (true, b));

    // An attachment uploaded through one node is downloaded through the other.
    let data: Vec<u8> = (0..300 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    alice
        .send_attachment(to_bob, "scan.pdf", "application/pdf", &data)
        .await
        .unwrap();
    let got = next(&mut b_rx, |e| match e {
        MessengerEvent::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    let Some(app_message::Kind::Attachment(att)) = got.message.as_ref().unwrap().kind.clone()
    else {
        panic!("not an attachment")
    };
    assert_eq!(bob.download(&att).await.unwrap().as_slice(), &data[..]);

    alice.shutdown().await;
    bob.shutdown().await;
    nodes.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_members_on_both_nodes_and_a_device_moving_between_them_loses_nothing() {
    let nodes = two_nodes().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Alice and Carol on node A, Bob on node B.
    let mut engines = Vec::new();
    for (d, node) in dirs.iter().zip([&nodes.a, &nodes.b, &nodes.a]) {
        let (e, rx) = Engine::create_account(on(d.path(), node)).await.unwrap();
        e.connected(WAIT).await.unwrap();
        engines.push((e, rx));
    }
    let ids: Vec<_> = engines
        .iter()
        .map(|(e, _)| e.address().unwrap().account)
        .collect();
    let g = engines[0]
        .0
        .create_group("both nodes", &[ids[1], ids[2]])
        .await
        .unwrap();
    for i in 0..5 {
        engines[0]
            .0
            .send_group(&g, format!("g{i}").as_bytes())
            .await
            .unwrap();
    }
    let want: Vec<Vec<u8>> = (0..5).map(|i| format!("g{i}").into_bytes()).collect();
    for k in [1, 2] {
        let (e, rx) = &mut engines[k];
        assert_eq!(messages(e, rx, 5).await, want, "member {k}");
    }
    engines[1].0.send_group(&g, b"from node b").await.unwrap();
    for k in [0, 2] {
        let (e, rx) = &mut engines[k];
        assert_eq!(messages(e, rx, 1).await, vec![b"from node b".to_vec()]);
    }

    // Bob moves from node B to node A while Alice keeps writing to him.
    let (bob, mut bob_rx) = engines.remove(1);
    let alice = &engines[0].0;
    for i in 0..10 {
        alice
            .send(&ids[1], format!("m{i}").as_bytes())
            .await
            .unwrap();
    }
    let mut got = messages(&bob, &mut bob_rx, 3).await;
    bob.shutdown().await;
    for i in 10..20 {
        alice
            .send(&ids[1], format!("m{i}").as_bytes())
            .await
            .unwrap();
    }
    let (bob, mut bob_rx) = Engine::open(on(dirs[1].path(), &nodes.a)).unwrap();
    bob.connected(WAIT).await.unwrap();
    for i in 20..25 {
        alice
            .send(&ids[1], format!("m{i}").as_bytes())
            .await
            .unwrap();
    }
    // What Bob's first connection took but did not acknowledge comes again: the engine drops
    // the copies, so each message arrives once, in order.
    got.extend(messages(&bob, &mut bob_rx, 25 - got.len()).await);
    let want: Vec<Vec<u8>> = (0..25).map(|i| format!("m{i}").into_bytes()).collect();
    assert_eq!(got, want);
    common::nothing_more(&mut bob_rx).await;
    bob.shutdown().await;
    for (e, _) in engines {
        e.shutdown().await;
    }
    nodes.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_one_node_is_cut_off_by_a_list_published_through_the_other() {
    let nodes = two_nodes().await;
    let (a1d, a2d, bd) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (alice, _a_rx) = Engine::create_account(on(a1d.path(), &nodes.a))
        .await
        .unwrap();
    let (bob, mut b_rx) = Engine::create_account(on(bd.path(), &nodes.b))
        .await
        .unwrap();
    alice.connected(WAIT).await.unwrap();
    bob.connected(WAIT).await.unwrap();
    // Alice, on node A, links a second device that reaches node B.
    let offer = alice.offer_link().unwrap();
    alice.open_link(&offer).await.unwrap();
    let (alice2, mut a2_rx) = Engine::link(on(a2d.path(), &nodes.b), &offer.code)
        .await
        .unwrap();
    let id = alice.complete_link(&offer, WAIT).await.unwrap();
    alice2.connected(WAIT).await.unwrap();
    // A code is good once, on every node.
    assert!(
        alice
            .complete_link(&offer, Duration::from_millis(700))
            .await
            .is_err()
    );
    alice2
        .send(&bob.address().unwrap().account, b"from b")
        .await
        .unwrap();
    assert_eq!(messages(&bob, &mut b_rx, 1).await, vec![b"from b".to_vec()]);

    // Removed through node A: node B closes its connection and refuses it from then on.
    alice.remove_device(id).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, a2_rx.recv()).await.unwrap() {
            Some(Event::Revoked) => break,
            Some(_) => {}
            None => panic!("the removed device was not told"),
        }
    }
    alice2.shutdown().await;
    let (again, mut again_rx) = Engine::open(on(a2d.path(), &nodes.b)).unwrap();
    loop {
        match tokio::time::timeout(WAIT, again_rx.recv()).await.unwrap() {
            Some(Event::Revoked) => break,
            Some(_) => {}
            None => panic!("the removed device was let in again"),
        }
    }
    again.shutdown().await;
    alice.shutdown().await;
    bob.shutdown().await;
    nodes.stop().await;
}

/// A token set through one node counts at once on the other, even where that node had read the
/// device's old token a moment before (its copy is fresh for half a second): a refused token is
/// final for the sender, so the relay checks the cluster before refusing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_set_through_one_node_is_honoured_at_once_by_the_other() {
    use hush_proto::relay_api::{self as api, ErrorCode, client_frame, server_frame};
    use hush_testkit::{Client, TestAccount, account::random, error_of};

    let nodes = two_nodes().await;
    let bob = TestAccount::new(1);
    let on_a = Client::connect(nodes.a.addr, &nodes.a.fingerprint).await;
    on_a.create(&bob, 1).await;
    let set = |token: [u8; 16]| {
        client_frame::Kind::SetDeliveryToken(api::SetDeliveryToken {
            token: token.to_vec(),
            anyone: false,
        })
    };
    let send = |token: [u8; 16]| {
        client_frame::Kind::Send(api::Send {
            client_id: random::<16>().to_vec(),
            recipient_account: bob.id().to_vec(),
            envelopes: vec![api::OutEnvelope {
                device_id: 1,
                body: vec![7; 320],
                delivery_token: token.to_vec(),
            }],
            targeted: false,
        })
    };
    let (old, new) = (random::<16>(), random::<16>());
    assert!(matches!(
        on_a.request(set(old)).await,
        server_frame::Kind::Ok(_)
    ));
    let anon_b = Client::connect(nodes.b.addr, &nodes.b.fingerprint).await;
    let r = anon_b
        .request(client_frame::Kind::Anonymous(api::Anonymous {}))
        .await;
    assert!(matches!(r, server_frame::Kind::Ok(_)), "{r:?}");
    // Node B reads (and keeps) the old token.
    let r = anon_b.request(send(old)).await;
    assert!(matches!(r, server_frame::Kind::Sent(_)), "{r:?}");
    // Rotated through node A: at once the new token is let in through B, the old one refused.
    assert!(matches!(
        on_a.request(set(new)).await,
        server_frame::Kind::Ok(_)
    ));
    let r = anon_b.request(send(new)).await;
    assert!(matches!(r, server_frame::Kind::Sent(_)), "{r:?}");
    let r = anon_b.request(send(old)).await;
    assert_eq!(error_of(&r).0, ErrorCode::UnauthorizedSend, "{r:?}");
    nodes.stop().await;
}
