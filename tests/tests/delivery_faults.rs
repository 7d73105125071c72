//! Delivery under local faults, over a real relay on 127.0.0.1: an envelope is acknowledged to
//! the relay only once it is settled (committed, a duplicate, or rejected for good), so a store
//! error, a poisoned store or a process stopped between receiving and committing never loses a
//! message, and a message that can never be decrypted is acknowledged and reported.
//!
//! Faults are injected with `hush_store_sled::faults`, per store directory. The
//! "process kill" of the soak is in-process: the receiving messenger is shut down while its
//! store refuses every write (so what it was processing is received but not committed), then its
//! profile is opened again.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hush_client::conn::RelayConnection;
use hush_client::{ClientError, Conversation, Messenger, MessengerEvent};
use hush_core::device::Device;
use hush_proto::app::app_message;
use hush_proto::client::{Sealed, sealed};
use hush_proto::relay_api::{self as api, client_frame};
use hush_store_sled::{SledKv, faults};
use prost::Message;
use rand_core::SeedableRng;
use tokio::sync::mpsc::UnboundedReceiver;
use zeroize::Zeroizing;

const WAIT: Duration = Duration::from_secs(60);

fn db_of(dir: &Path) -> PathBuf {
    dir.join("db")
}

fn history_of(dir: &Path) -> PathBuf {
    dir.join("history")
}

/// The text of a message event.
fn text(ev: MessengerEvent) -> Option<String> {
    match ev {
        MessengerEvent::Message { message, .. } if !message.outgoing => {
            match message.message.as_ref()?.kind.as_ref()? {
                app_message::Kind::Text(t) => Some(t.body.clone()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Opens a profile, waiting (bounded) for a just-stopped messenger to release its stores.
fn open(dir: &Path, addr: SocketAddr, pin: &str) -> (Messenger, UnboundedReceiver<MessengerEvent>) {
    for _ in 0..500 {
        match Messenger::open(engine_config(dir, addr, pin)) {
            Ok(m) => return m,
            Err(ClientError::Store(e)) if e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("profile does not open: {e}"),
        }
    }
    panic!("profile still locked");
}

/// Texts in `conv` of `m`'s history, with how often each occurs.
fn history_counts(m: &Messenger, conv: Conversation) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in m.history(conv, None, 100_000).unwrap() {
        if s.outgoing {
            continue;
        }
        if let Some(app_message::Kind::Text(t)) = s.message.as_ref().and_then(|a| a.kind.as_ref()) {
            *out.entry(t.body.clone()).or_insert(0) += 1;
        }
    }
    out
}

/// Waits (bounded) until the store at `path` has hit more than `before` injected faults.
async fn wait_for_fault(path: &Path, before: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while faults::hits(path) <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no fault hit in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Pair {
    relay: hush_relay::Running,
    _relay_dir: tempfile::TempDir,
    ad: tempfile::TempDir,
    bd: tempfile::TempDir,
    alice: Messenger,
    a_rx: UnboundedReceiver<MessengerEvent>,
    bob: Messenger,
    b_rx: UnboundedReceiver<MessengerEvent>,
}

/// A relay and two connected messengers that have exchanged one message each way.
async fn pair() -> Pair {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(relay_config(relay_dir.path(), any_port()))
        .await
        .unwrap();
    let (ad, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, mut a_rx) =
        Messenger::create_account(engine_config(ad.path(), relay.addr, &relay.fingerprint))
            .await
            .unwrap();
    let (bob, mut b_rx) =
        Messenger::create_account(engine_config(bd.path(), relay.addr, &relay.fingerprint))
            .await
            .unwrap();
    alice.engine().connected(WAIT).await.unwrap();
    bob.engine().connected(WAIT).await.unwrap();
    let (a, b) = (alice.address().account, bob.address().account);
    alice
        .send_text(Conversation::Direct(b), "hello", None)
        .await
        .unwrap();
    assert_eq!(next(&mut b_rx, text).await, "hello");
    bob.send_text(Conversation::Direct(a), "hi", None)
        .await
        .unwrap();
    assert_eq!(next(&mut a_rx, text).await, "hi");
    Pair {
        relay,
        _relay_dir: relay_dir,
        ad,
        bd,
        alice,
        a_rx,
        bob,
        b_rx,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_hit_by_a_transient_store_error_is_delivered_again_and_ends_in_history_once() {
    let mut p = pair().await;
    let (a, b) = (p.alice.address().account, p.bob.address().account);
    let db = db_of(p.bd.path());

    // The next three commits of Bob's device store fail: the envelope is not acknowledged, and
    // is processed again (with backoff) until it commits.
    faults::fail_writes(&db, 3);
    p.alice
        .send_text(Conversation::Direct(b), "through a failing disk", None)
        .await
        .unwrap();
    assert_eq!(next(&mut p.b_rx, text).await, "through a failing disk");
    assert_eq!(faults::hits(&db), 3);

    // The same for the history store: the message stays in the device's inbox until stored.
    let history = history_of(p.bd.path());
    faults::fail_writes(&history, 2);
    p.alice
        .send_text(Conversation::Direct(b), "through a failing history", None)
        .await
        .unwrap();
    assert_eq!(next(&mut p.b_rx, text).await, "through a failing history");
    assert_eq!(faults::hits(&history), 2);

    let counts = history_counts(&p.bob, Conversation::Direct(a));
    assert_eq!(counts.get("through a failing disk"), Some(&1));
    assert_eq!(counts.get("through a failing history"), Some(&1));
    // Nothing is left at the relay to come back after a restart.
    p.bob.shutdown().await;
    let (bob, mut b_rx) = open(p.bd.path(), p.relay.addr, &p.relay.fingerprint);
    next(&mut b_rx, |e| {
        matches!(e, MessengerEvent::CaughtUp).then_some(())
    })
    .await;
    assert_eq!(history_counts(&bob, Conversation::Direct(a)), counts);
    bob.shutdown().await;
    p.alice.shutdown().await;
    p.relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_poisoned_by_a_failed_flush_is_reopened_and_later_messages_still_arrive() {
    let mut p = pair().await;
    let (a, b) = (p.alice.address().account, p.bob.address().account);
    let db = db_of(p.bd.path());

    // The batch is applied but its flush fails: the handle is poisoned and the outcome unknown.
    faults::fail_flushes(&db, 1);
    p.alice
        .send_text(Conversation::Direct(b), "one", None)
        .await
        .unwrap();
    assert_eq!(next(&mut p.b_rx, text).await, "one");
    assert_eq!(faults::hits(&db), 1);
    // Later messages are not refused by a store left poisoned.
    for t in ["two", "three"] {
        p.alice
            .send_text(Conversation::Direct(b), t, None)
            .await
            .unwrap();
        assert_eq!(next(&mut p.b_rx, text).await, t);
    }
    let counts = history_counts(&p.bob, Conversation::Direct(a));
    for t in ["one", "two", "three"] {
        assert_eq!(counts.get(t), Some(&1), "{t}");
    }
    p.bob.shutdown().await;
    p.alice.shutdown().await;
    p.relay.stop().await;
}

/// Copies the directory tree `from` into `to` (a closed profile: a backup, or its restore).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_restored_from_an_old_backup_gets_what_its_stale_session_could_not_decrypt() {
    let mut p = pair().await;
    let (a, b) = (p.alice.address().account, p.bob.address().account);

    // Bob's whole profile is backed up while the app is closed.
    p.bob.shutdown().await;
    let backup = tempfile::tempdir().unwrap();
    copy_tree(p.bd.path(), backup.path());
    let (bob, mut b_rx) = open(p.bd.path(), p.relay.addr, &p.relay.fingerprint);
    // The conversation goes on past the backup: both ratchets move on.
    p.alice
        .send_text(Conversation::Direct(b), "after the backup", None)
        .await
        .unwrap();
    assert_eq!(next(&mut b_rx, text).await, "after the backup");
    bob.send_text(Conversation::Direct(a), "reply", None)
        .await
        .unwrap();
    assert_eq!(next(&mut p.a_rx, text).await, "reply");
    p.alice
        .send_text(Conversation::Direct(b), "and again", None)
        .await
        .unwrap();
    assert_eq!(next(&mut b_rx, text).await, "and again");

    // Bob's profile is restored from the backup: his session with Alice is stale.
    bob.shutdown().await;
    std::fs::remove_dir_all(p.bd.path()).unwrap();
    copy_tree(backup.path(), p.bd.path());
    let (bob, mut b_rx) = open(p.bd.path(), p.relay.addr, &p.relay.fingerprint);
    bob.engine().connected(WAIT).await.unwrap();

    // Alice's next message cannot be decrypted with it: Bob's device says so, asks Alice's
    // device for it on a fresh session, and the message arrives after all.
    p.alice
        .send_text(Conversation::Direct(b), "to the restored device", None)
        .await
        .unwrap();
    let mut reported = false;
    let got = next(&mut b_rx, |e| match e {
        MessengerEvent::Undecryptable { .. } => {
            reported = true;
            None
        }
        e => text(e),
    })
    .await;
    assert_eq!(got, "to the restored device");
    assert!(reported, "the failed decryption was not reported");

    // The fresh session carries the conversation on, both ways.
    bob.send_text(Conversation::Direct(a), "from the restored device", None)
        .await
        .unwrap();
    assert_eq!(next(&mut p.a_rx, text).await, "from the restored device");
    p.alice
        .send_text(Conversation::Direct(b), "healed", None)
        .await
        .unwrap();
    assert_eq!(next(&mut b_rx, text).await, "healed");
    let counts = history_counts(&bob, Conversation::Direct(a));
    assert_eq!(counts.get("to the restored device"), Some(&1));
    assert_eq!(counts.get("healed"), Some(&1));
    // What the backup did not hold is not in history; nothing arrived twice.
    assert_eq!(counts.get("after the backup"), None);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    bob.shutdown().await;
    p.alice.shutdown().await;
    p.relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_undecryptable_envelope_is_acknowledged_and_reported() {
    let mut p = pair().await;
    let (a, b) = (p.alice.address().account, p.bob.address().account);
    let bob_device = p.bob.address();

    // Alice's device, driven by hand: an envelope no session can ever decrypt.
    p.alice.shutdown().await;
    let device = {
        let mut tries = 0;
        let store = loop {
            match SledKv::open_labelled(
                &db_of(p.ad.path()),
                Zeroizing::new(AT_REST_KEY),
                hush_client::engine::DB_STORE_LABEL,
                // Only read and signed with here: nothing is stored under this generator.
                Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(1)),
            ) {
                Ok(s) => break s,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 500, "store does not open: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        Device::open(store).unwrap()
    };
    let me = device.address();
    let (conn, _events) = RelayConnection::connect(p.relay.addr, &p.relay.fingerprint)
        .await
        .unwrap();
    conn.authenticate(*me.account.as_bytes(), me.device_id, |x, c| {
        device.sign_relay_challenge(x, c)
    })
    .await
    .unwrap();
    // A garbage pairwise message, in a valid sealed envelope: it opens, names Alice, and no
    // session decrypts it.
    let garbage = Sealed {
        kind: Some(sealed::Kind::Pairwise(vec![0xA5; 80])),
    };
    let body = device
        .seal_for(
            &bob_device,
            &garbage.encode_to_vec(),
            &mut rand_chacha::ChaCha20Rng::seed_from_u64(2),
        )
        .unwrap();
    conn.request(client_frame::Kind::Send(api::Send {
        client_id: vec![7; 16],
        recipient_account: b.as_bytes().to_vec(),
        envelopes: vec![api::OutEnvelope {
            device_id: bob_device.device_id,
            body,
            delivery_token: Vec::new(),
        }],
        targeted: false,
    }))
    .await
    .unwrap();
    conn.close();
    drop(device);

    let (conv, from) = next(&mut p.b_rx, |e| match e {
        MessengerEvent::Undecryptable { conversation, from } => Some((conversation, from)),
        _ => None,
    })
    .await;
    assert_eq!(conv, Conversation::Direct(a));
    assert_eq!(from, me);

    // Acknowledged: after a restart Bob catches up without it coming back.
    p.bob.shutdown().await;
    let (bob, mut b_rx) = open(p.bd.path(), p.relay.addr, &p.relay.fingerprint);
    let again = next(&mut b_rx, |e| match e {
        MessengerEvent::Undecryptable { .. } => Some(true),
        MessengerEvent::CaughtUp => Some(false),
        _ => None,
    })
    .await;
    assert!(!again, "the undecryptable envelope was delivered again");
    // And the conversation goes on.
    let (alice, _a_rx) = open(p.ad.path(), p.relay.addr, &p.relay.fingerprint);
    alice
        .send_text(Conversation::Direct(b), "still here", None)
        .await
        .unwrap();
    assert_eq!(next(&mut b_rx, text).await, "still here");
    bob.shutdown().await;
    alice.shutdown().await;
    let _ = p.a_rx;
    p.relay.stop().await;
}

/// Bounded soak: 300 messages from Alice to Bob while Bob's stores fail writes and flushes, and
/// Bob is stopped six times between receiving an envelope and committing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_every_message_ends_in_history_exactly_once_despite_store_faults_and_kills() {
    const ROUNDS: usize = 6;
    const PER_ROUND: usize = 50;
    let p = pair().await;
    let Pair {
        relay,
        _relay_dir,
        ad: _ad,
        bd,
        alice,
        a_rx: _a_rx,
        mut bob,
        mut b_rx,
    } = p;
    let (a, b) = (alice.address().account, bob.address().account);
    let (db, history) = (db_of(bd.path()), history_of(bd.path()));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..ROUNDS {
        let target = match round % 3 {
            0 => {
                faults::fail_writes(&db, 3);
                &db
            }
            1 => {
                faults::fail_flushes(&db, 1);
                &db
            }
            _ => {
                faults::fail_writes(&history, 3);
                &history
            }
        };
        let planned_before = faults::hits(target);
        for i in 0..PER_ROUND - 5 {
            alice
                .send_text(Conversation::Direct(b), &format!("r{round}-{i:02}"), None)
                .await
                .unwrap();
        }
        // The round's planned fault is met before the kill, however slowly Bob catches up.
        wait_for_fault(target, planned_before).await;
        // "Kill": from now on nothing Bob's device store writes commits; once it has tried
        // (received, not committed), Bob is stopped and his profile opened again.
        let before = faults::hits(&db);
        faults::fail_writes(&db, u64::MAX);
        for i in PER_ROUND - 5..PER_ROUND {
            alice
                .send_text(Conversation::Direct(b), &format!("r{round}-{i:02}"), None)
                .await
                .unwrap();
        }
        wait_for_fault(&db, before).await;
        bob.shutdown().await;
        while let Ok(ev) = b_rx.try_recv() {
            if let Some(t) = text(ev) {
                *seen.entry(t).or_insert(0) += 1;
            }
        }
        faults::clear(&db);
        faults::clear(&history);
        (bob, b_rx) = open(bd.path(), relay.addr, &relay.fingerprint);
    }
    // The faults were really met: at least one per kill, and by the history store.
    assert!(faults::hits(&db) >= ROUNDS as u64);
    assert!(faults::hits(&history) >= 1);
    let total = ROUNDS * PER_ROUND;
    while seen.len() < total {
        let t = next(&mut b_rx, text).await;
        *seen.entry(t).or_insert(0) += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "a message was reported twice"
    );
    let mut counts = history_counts(&bob, Conversation::Direct(a));
    assert_eq!(counts.remove("hello"), Some(1));
    assert_eq!(counts.len(), total);
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            assert_eq!(counts.get(&format!("r{round}-{i:02}")), Some(&1));
        }
    }
    bob.shutdown().await;
    alice.shutdown().await;
    relay.stop().await;
}
