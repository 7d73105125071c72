//! Group notices that did not go out when a change landed (PROTOCOL.md §17.5, §14 item 21), over
//! a real relay on 127.0.0.1: the author's notices are kept in its store with the change, so an
//! added account whose notice was lost with the author's process (or that the author had no
//! session with) still gets the group secret once the author's client connects again, joins,
//! and reads the group's messages.
//!
//! The author's device is driven by hand between the append and the sends (its engine is shut
//! down, its store opened as a `Device`): the change lands on the relay and is committed with its
//! notices, and the process "dies" before handing them over. Its engine is then opened again.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hush_client::conn::{GroupLogAppend, RelayConnection};
use hush_client::{Engine, Event};
use hush_core::device::Device;
use hush_core::keys::AccountId;
use hush_core::sender_key::GroupId;
use hush_proto::client::{Sealed, sealed};
use hush_proto::relay_api::{self as api, client_frame, server_frame};
use hush_store_sled::SledKv;
use prost::Message;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::mpsc::UnboundedReceiver;
use zeroize::Zeroizing;

const WAIT: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// The device of a shut-down engine's profile, opened by hand (waiting, bounded, for the engine
/// to have released its store).
async fn open_device(dir: &Path) -> Device<SledKv> {
    let mut tries = 0;
    let store = loop {
        match SledKv::open_labelled(
            &dir.join("db"),
            Zeroizing::new(AT_REST_KEY),
            hush_client::engine::DB_STORE_LABEL,
            Box::new(ChaCha20Rng::seed_from_u64(tries)),
        ) {
            Ok(s) => break s,
            Err(e) => {
                tries += 1;
                assert!(tries < 500, "store does not open: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    Device::open(store).unwrap()
}

/// An anonymous connection to the relay (group logs, other accounts' lists).
async fn anonymous(addr: std::net::SocketAddr, pin: &str) -> Arc<RelayConnection> {
    let (conn, mut events) = RelayConnection::connect(addr, pin).await.unwrap();
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    conn.request(client_frame::Kind::Anonymous(api::Anonymous {}))
        .await
        .unwrap();
    Arc::new(conn)
}

/// Waits until `engine` is a member of `g` (it emits `GroupsChanged` when it joins).
async fn joined(engine: &Engine, rx: &mut UnboundedReceiver<Event>, g: &GroupId) {
    tokio::time::timeout(WAIT, async {
        while !engine.groups().unwrap().iter().any(|(id, _)| id == g) {
            match rx.recv().await {
                Some(Event::Message { id, .. }) => engine.ack(id).unwrap(),
                Some(_) => {}
                None => panic!("engine gone"),
            }
        }
    })
    .await
    .expect("the added member did not join in time");
}

/// The author, by hand: creates a group with `member`, has the relay append it, and commits it
/// with its notices, then stops without sending them. Returns the group and the landed update's
/// (sealed, unreached) counts.
async fn create_and_die(
    dir: &Path,
    addr: std::net::SocketAddr,
    pin: &str,
    member: AccountId,
    learn_list: bool,
) -> (GroupId, usize, usize) {
    let mut rng = ChaCha20Rng::seed_from_u64(now_ms());
    let mut device = open_device(dir).await;
    let conn = anonymous(addr, pin).await;
    if learn_list {
        let server_frame::Kind::DeviceList(l) = conn
            .request(client_frame::Kind::FetchDeviceList(api::FetchDeviceList {
                account: member.as_bytes().to_vec(),
            }))
            .await
            .unwrap()
        else {
            panic!("no device list");
        };
        device
            .accept_device_list(&l.signed_device_list, &member, now_ms())
            .unwrap();
    }
    let w = device
        .create_group("after a crash", &[member], &mut rng, now_ms())
        .unwrap();
    let g = w.group;
    let appended = conn
        .group_log_append(w.slot(), &w.write_token(), w.seq, w.entry.clone())
        .await
        .unwrap();
    assert!(matches!(appended, GroupLogAppend::Appended));
    let landed = device.group_write_landed(w, &mut rng, now_ms()).unwrap();
    assert_eq!(device.pending_notice_count(), 1, "the notice is kept");
    conn.close();
    // The process dies here: the notice never reaches the relay.
    drop(device);
    (g, landed.outgoing.len(), landed.unreached.len())
}

/// The author's notice to the added account is lost with its process; its engine, opened again,
/// sends it on connecting: the member joins and reads the group. The notice leaves the store.
async fn run(learn_list_only: bool) {
    let relay_dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let relay = hush_relay::start(relay_config(relay_dir.path(), addr))
        .await
        .unwrap();
    let pin = relay.fingerprint.clone();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, _a_rx) = Engine::create_account(engine_config(a_dir.path(), addr, &pin))
        .await
        .unwrap();
    let (bob, mut b_rx) = Engine::create_account(engine_config(b_dir.path(), addr, &pin))
        .await
        .unwrap();
    alice.connected(WAIT).await.unwrap();
    bob.connected(WAIT).await.unwrap();
    let b = bob.address().unwrap();
    if !learn_list_only {
        // A session with Bob's device: the notice is sealed with the change.
        alice.send(&b.account, b"hi").await.unwrap();
        assert_eq!(messages(&bob, &mut b_rx, 1).await, vec![b"hi".to_vec()]);
    }
    alice.shutdown().await;

    let (g, sealed, unreached) =
        create_and_die(a_dir.path(), addr, &pin, b.account, learn_list_only).await;
    if learn_list_only {
        // No session with Bob's device: nothing could be sealed for it then.
        assert_eq!((sealed, unreached), (0, 1));
    } else {
        assert_eq!((sealed, unreached), (1, 0));
    }
    assert!(bob.groups().unwrap().is_empty(), "nothing reached Bob yet");

    // The author's client starts again: on connecting, the pending notice goes out.
    let (alice, _a_rx) = Engine::open(engine_config(a_dir.path(), addr, &pin)).unwrap();
    alice.connected(WAIT).await.unwrap();
    joined(&bob, &mut b_rx, &g).await;
    assert_eq!(
        bob.group_members(&g).unwrap().len(),
        2,
        "Bob reads the whole log"
    );
    let delivery = alice.send_group(&g, b"welcome").await.unwrap();
    assert_eq!(delivery.delivered, vec![b.account]);
    assert_eq!(
        messages(&bob, &mut b_rx, 1).await,
        vec![b"welcome".to_vec()]
    );
    bob.send_group(&g, b"thanks").await.unwrap();

    // Taken by the relay: the notice left the author's store.
    alice.shutdown().await;
    let device = open_device(a_dir.path()).await;
    assert_eq!(device.pending_notice_count(), 0);
    drop(device);
    bob.shutdown().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_lost_between_the_append_and_the_send_goes_out_when_the_author_reconnects() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_device_the_author_had_no_session_with_gets_its_notice_after_reconnection() {
    run(true).await;
}

/// The author hands its notice to the relay, which queues it, but the answer is lost (the
/// process dies before confirming it): the engine, opened again, sends the same bytes under the
/// same client id, which the relay recognises and does not queue again; the notice then leaves
/// the author's store, and the member has joined from the one copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_whose_answer_was_lost_is_sent_again_and_queued_once() {
    let relay_dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let relay = hush_relay::start(relay_config(relay_dir.path(), addr))
        .await
        .unwrap();
    let pin = relay.fingerprint.clone();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, _a_rx) = Engine::create_account(engine_config(a_dir.path(), addr, &pin))
        .await
        .unwrap();
    let (bob, mut b_rx) = Engine::create_account(engine_config(b_dir.path(), addr, &pin))
        .await
        .unwrap();
    alice.connected(WAIT).await.unwrap();
    bob.connected(WAIT).await.unwrap();
    let b = bob.address().unwrap();
    alice.send(&b.account, b"hi").await.unwrap();
    assert_eq!(messages(&bob, &mut b_rx, 1).await, vec![b"hi".to_vec()]);
    alice.shutdown().await;

    let mut rng = ChaCha20Rng::seed_from_u64(now_ms());
    let mut device = open_device(a_dir.path()).await;
    let me = device.address();
    let anon = anonymous(addr, &pin).await;
    let w = device
        .create_group("lost answer", &[b.account], &mut rng, now_ms())
        .unwrap();
    let g = w.group;
    let appended = anon
        .group_log_append(w.slot(), &w.write_token(), w.seq, w.entry.clone())
        .await
        .unwrap();
    assert!(matches!(appended, GroupLogAppend::Appended));
    device.group_write_landed(w, &mut rng, now_ms()).unwrap();
    anon.close();
    let pending = device.pending_notices(&mut rng, now_ms()).unwrap();
    assert_eq!(pending.len(), 1);
    let notice = &pending[0];
    // Sent as the engine sends it, on the author's own connection.
    let (conn, mut events) = RelayConnection::connect(addr, &pin).await.unwrap();
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    conn.authenticate(*me.account.as_bytes(), me.device_id, |x, c| {
        device.sign_relay_challenge(x, c)
    })
    .await
    .unwrap();
    let sealed = Sealed {
        kind: Some(sealed::Kind::Pairwise(notice.bytes.clone())),
    }
    .encode_to_vec();
    let envelope = api::OutEnvelope {
        device_id: notice.key.to.device_id,
        body: device.seal_for(&notice.key.to, &sealed, &mut rng).unwrap(),
        delivery_token: device
            .delivery_token_for(&notice.key.to)
            .map(|t| t.as_bytes().to_vec())
            .unwrap_or_default(),
    };
    let answer = conn
        .request(client_frame::Kind::Send(api::Send {
            client_id: notice.client_id.to_vec(),
            recipient_account: b.account.as_bytes().to_vec(),
            envelopes: vec![envelope],
            targeted: true,
        }))
        .await
        .unwrap();
    assert!(matches!(answer, server_frame::Kind::Sent(_)));
    conn.close();
    // The answer never reaches the store: the notice is still pending.
    drop(device);
    joined(&bob, &mut b_rx, &g).await;
    let queued = relay.metrics.envelopes_queued.get();

    let (alice, _a_rx) = Engine::open(engine_config(a_dir.path(), addr, &pin)).unwrap();
    alice.connected(WAIT).await.unwrap();
    // Connecting sends it again (a pass beside serving the connection; this one waits for it and
    // makes sure): it is confirmed now, and the relay did not queue a copy.
    assert_eq!(alice.send_group_notices().await.unwrap(), 0);
    alice.shutdown().await;
    let device = open_device(a_dir.path()).await;
    assert_eq!(device.pending_notice_count(), 0, "sent again and confirmed");
    drop(device);
    assert_eq!(
        relay.metrics.envelopes_queued.get(),
        queued,
        "queued a second copy"
    );
    bob.shutdown().await;
    relay.stop().await;
}

/// Waits until `engine` announces (`GroupsChanged`) that it holds group `g`.
async fn announced(engine: &Engine, rx: &mut UnboundedReceiver<Event>, g: &GroupId) {
    tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Some(Event::GroupsChanged)
                    if engine.groups().unwrap().iter().any(|(id, _)| id == g) =>
                {
                    return;
                }
                Some(Event::Message { id, .. }) => engine.ack(id).unwrap(),
                Some(_) => {}
                None => panic!("engine gone"),
            }
        }
    })
    .await
    .expect("the created group was not announced in time");
}

/// The creator, by hand: learns `member`'s list, creates a group with it (committing the
/// pending creation), hands the creation to the relay when `append` is set, and dies before
/// the answer is processed. Returns the group and its sealed entry.
async fn create_without_landing(
    dir: &Path,
    addr: std::net::SocketAddr,
    pin: &str,
    member: AccountId,
    append: bool,
) -> (GroupId, Vec<u8>, [u8; 32]) {
    let mut rng = ChaCha20Rng::seed_from_u64(now_ms());
    let mut device = open_device(dir).await;
    let conn = anonymous(addr, pin).await;
    let server_frame::Kind::DeviceList(l) = conn
        .request(client_frame::Kind::FetchDeviceList(api::FetchDeviceList {
            account: member.as_bytes().to_vec(),
        }))
        .await
        .unwrap()
    else {
        panic!("no device list");
    };
    device
        .accept_device_list(&l.signed_device_list, &member, now_ms())
        .unwrap();
    let w = device
        .create_group("answer lost", &[member], &mut rng, now_ms())
        .unwrap();
    let (g, entry, slot) = (w.group, w.entry.clone(), w.slot());
    assert_eq!(device.pending_creation_count().unwrap(), 1);
    if append {
        let appended = conn
            .group_log_append(w.slot(), &w.write_token(), w.seq, w.entry.clone())
            .await
            .unwrap();
        assert!(matches!(appended, GroupLogAppend::Appended));
    }
    conn.close();
    // The process dies here: the answer (if any) is never processed, the group never stored.
    drop(w);
    drop(device);
    (g, entry, slot)
}

/// A creation whose append answer was lost with the process (`appended`), or that never reached
/// the relay: the creator's engine, opened again, resolves the pending creation on connecting —
/// finds it as entry 1, or appends it — stores the group and announces it, and the member joins
/// and reads a group message.
async fn lost_creation(appended: bool) {
    let relay_dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let relay = hush_relay::start(relay_config(relay_dir.path(), addr))
        .await
        .unwrap();
    let pin = relay.fingerprint.clone();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, _a_rx) = Engine::create_account(engine_config(a_dir.path(), addr, &pin))
        .await
        .unwrap();
    let (bob, mut b_rx) = Engine::create_account(engine_config(b_dir.path(), addr, &pin))
        .await
        .unwrap();
    alice.connected(WAIT).await.unwrap();
    bob.connected(WAIT).await.unwrap();
    let b = bob.address().unwrap();
    alice.shutdown().await;

    let (g, entry, slot) =
        create_without_landing(a_dir.path(), addr, &pin, b.account, appended).await;
    let anon = anonymous(addr, &pin).await;
    let (head, _) = anon.group_log_read(slot, 1).await.unwrap();
    assert_eq!(
        head,
        u64::from(appended),
        "the relay's log before reopening"
    );

    let (alice, mut a_rx) = Engine::open(engine_config(a_dir.path(), addr, &pin)).unwrap();
    assert!(
        alice.groups().unwrap().is_empty(),
        "not stored before it is resolved"
    );
    announced(&alice, &mut a_rx, &g).await;
    let names: Vec<String> = alice
        .groups()
        .unwrap()
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names, vec!["answer lost".to_owned()]);
    // Entry 1 of the log is the creation, byte for byte, appended once.
    let (head, entries) = anon.group_log_read(slot, 1).await.unwrap();
    assert_eq!(head, 1);
    assert_eq!(entries, vec![(1, entry)]);
    anon.close();

    joined(&bob, &mut b_rx, &g).await;
    let delivery = alice.send_group(&g, b"created after all").await.unwrap();
    assert_eq!(delivery.delivered, vec![b.account]);
    assert_eq!(
        messages(&bob, &mut b_rx, 1).await,
        vec![b"created after all".to_vec()]
    );

    alice.shutdown().await;
    let device = open_device(a_dir.path()).await;
    assert_eq!(device.pending_creation_count().unwrap(), 0, "resolved");
    assert_eq!(device.pending_notice_count(), 0, "the notice was taken");
    drop(device);
    bob.shutdown().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_whose_append_answer_was_lost_is_found_in_the_log_after_a_restart() {
    lost_creation(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_that_never_reached_the_relay_is_appended_after_a_restart() {
    lost_creation(false).await;
}
