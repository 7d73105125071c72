//! End to end: client engines (client-core over sled, QUIC to a real relay on 127.0.0.1) talk
//! through a relay that is restarted, drained and left behind by offline devices.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

use std::time::Duration;

use hush_client::{Engine, Event};
use hush_core::keys::AccountId;

const WAIT: Duration = Duration::from_secs(30);

/// Waits until the relay's mailboxes hold `n` envelopes in all. A device acknowledges what it
/// received without waiting for the answer, so a queue has room only once those
/// acknowledgements have reached the relay: a test that needs the room waits for it here.
async fn relay_holds(relay: &hush_relay::Running, n: i64) {
    let stored = &relay.metrics.envelopes_stored;
    tokio::time::timeout(WAIT, async {
        while stored.get() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the relay holds {} envelopes, not {n}", stored.get()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_chat_through_offline_periods_a_relay_restart_and_a_drain() {
    let relay_dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let relay = hush_relay::start(relay_config(relay_dir.path(), addr))
        .await
        .unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, mut a_rx) =
        Engine::create_account(engine_config(a_dir.path(), addr, &relay.fingerprint))
            .await
            .unwrap();
    let (bob, mut b_rx) =
        Engine::create_account(engine_config(b_dir.path(), addr, &relay.fingerprint))
            .await
            .unwrap();
    alice.connected(WAIT).await.unwrap();
    bob.connected(WAIT).await.unwrap();
    let a_id: AccountId = alice.address().unwrap().account;
    let b_id: AccountId = bob.address().unwrap().account;

    // 1:1 both ways, first contact included (lists and bundles fetched, sessions started).
    for i in 0..20u32 {
        alice.send(&b_id, format!("a{i}").as_bytes()).await.unwrap();
    }
    let got = messages(&bob, &mut b_rx, 20).await;
    assert_eq!(
        got,
        (0..20)
            .map(|i| format!("a{i}").into_bytes())
            .collect::<Vec<_>>()
    );
    bob.send(&a_id, b"hello back").await.unwrap();
    assert_eq!(
        messages(&alice, &mut a_rx, 1).await,
        vec![b"hello back".to_vec()]
    );

    // Ephemeral (typing): reaches a connected device.
    bob.send_ephemeral(&a_id, b"typing").await.unwrap();
    loop {
        let ev = tokio::time::timeout(WAIT, a_rx.recv())
            .await
            .unwrap()
            .unwrap();
        if let Event::Message {
            id,
            plaintext,
            ephemeral,
            ..
        } = ev
        {
            assert!(ephemeral);
            assert_eq!(plaintext.as_slice(), b"typing");
            alice.ack(id).unwrap();
            break;
        }
    }

    // Bob goes offline; Alice sends 300; Bob comes back and gets them all, in order, once.
    bob.shutdown().await;
    for i in 0..300u32 {
        alice.send(&b_id, format!("b{i}").as_bytes()).await.unwrap();
    }
    let (bob, mut b_rx) =
        Engine::open(engine_config(b_dir.path(), addr, &relay.fingerprint)).unwrap();
    let got = messages(&bob, &mut b_rx, 300).await;
    assert_eq!(
        got,
        (0..300)
            .map(|i| format!("b{i}").into_bytes())
            .collect::<Vec<_>>()
    );

    // The relay restarts mid-conversation: nothing acknowledged is lost, nothing duplicated.
    for i in 0..10u32 {
        alice.send(&b_id, format!("c{i}").as_bytes()).await.unwrap();
    }
    relay.stop().await;
    let relay = hush_relay::start(relay_config(relay_dir.path(), addr))
        .await
        .unwrap();
    for i in 10..20u32 {
        alice.send(&b_id, format!("c{i}").as_bytes()).await.unwrap();
    }
    let got = messages(&bob, &mut b_rx, 20).await;
    assert_eq!(
        got,
        (0..20)
            .map(|i| format!("c{i}").into_bytes())
            .collect::<Vec<_>>()
    );
    // Nothing more arrives (no duplicates).
    nothing_more(&mut b_rx).await;

    // Bob's app is killed after the message reached the engine but before the app stored it:
    // the engine offers it again when it starts (and the relay, already acknowledged, does not).
    alice.send(&b_id, b"not yet stored").await.unwrap();
    loop {
        let ev = tokio::time::timeout(WAIT, b_rx.recv())
            .await
            .unwrap()
            .unwrap();
        if let Event::Message { plaintext, .. } = ev {
            assert_eq!(plaintext.as_slice(), b"not yet stored");
            break; // no ack
        }
    }
    bob.shutdown().await;
    let (bob, mut b_rx) =
        Engine::open(engine_config(b_dir.path(), addr, &relay.fingerprint)).unwrap();
    assert_eq!(
        messages(&bob, &mut b_rx, 1).await,
        vec![b"not yet stored".to_vec()]
    );
    bob.connected(WAIT).await.unwrap();
    let again = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Some(Event::Message { plaintext, .. }) = b_rx.recv().await {
                return plaintext.to_vec();
            }
        }
    })
    .await;
    assert!(again.is_err(), "offered twice: {again:?}");

    alice.shutdown().await;
    bob.shutdown().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_three_engines_exchanges_messages_through_the_relay() {
    let relay_dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let relay = hush_relay::start(relay_config(relay_dir.path(), addr))
        .await
        .unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut engines = Vec::new();
    for d in &dirs {
        let (e, rx) = Engine::create_account(engine_config(d.path(), addr, &relay.fingerprint))
            .await
            .unwrap();
        e.connected(WAIT).await.unwrap();
        engines.push((e, rx));
    }
    let ids: Vec<AccountId> = engines
        .iter()
        .map(|(e, _)| e.address().unwrap().account)
        .collect();
    let g = engines[0]
        .0
        .create_group("friends", &[ids[1], ids[2]])
        .await
        .unwrap();
    for i in 0..10u32 {
        engines[0]
            .0
            .send_group(&g, format!("g{i}").as_bytes())
            .await
            .unwrap();
    }
    let want: Vec<Vec<u8>> = (0..10).map(|i| format!("g{i}").into_bytes()).collect();
    for k in [1, 2] {
        let (e, rx) = &mut engines[k];
        assert_eq!(messages(e, rx, 10).await, want, "member {k}");
    }
    // A member answers in the group; the others (the admin included) read it.
    engines[1].0.send_group(&g, b"reply").await.unwrap();
    for k in [0, 2] {
        let (e, rx) = &mut engines[k];
        assert_eq!(
            messages(e, rx, 1).await,
            vec![b"reply".to_vec()],
            "member {k}"
        );
    }
    for (e, _) in engines {
        e.shutdown().await;
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_change_a_group_at_once_and_every_member_ends_with_the_same_log() {
    let relay_dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let relay = hush_relay::start(relay_config(relay_dir.path(), addr))
        .await
        .unwrap();
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut engines = Vec::new();
    for d in &dirs {
        let (e, rx) = Engine::create_account(engine_config(d.path(), addr, &relay.fingerprint))
            .await
            .unwrap();
        e.connected(WAIT).await.unwrap();
        engines.push((e, rx));
    }
    let ids: Vec<AccountId> = engines
        .iter()
        .map(|(e, _)| e.address().unwrap().account)
        .collect();
    let g = engines[0]
        .0
        .create_group("friends", &[ids[1], ids[2]])
        .await
        .unwrap();
    engines[0]
        .0
        .update_group(&g, &[(ids[1], true)], &[])
        .await
        .unwrap();
    // Both admins add someone at the same moment; each change is built on the log as its author
    // read it, so the one that loses its position is rebuilt on the other and lands next.
    let (a, b) = (&engines[0].0, &engines[1].0);
    let (add_a, add_b) = ([(ids[3], false)], [(ids[4], false)]);
    let (ra, rb) = tokio::join!(
        a.update_group(&g, &add_a, &[]),
        b.update_group(&g, &add_b, &[]),
    );
    ra.unwrap();
    rb.unwrap();
    let everyone: std::collections::BTreeSet<AccountId> = ids.iter().copied().collect();
    for (k, (e, rx)) in engines.iter_mut().enumerate() {
        // Every member reads the log to its end; the two added ones once told of the group.
        loop {
            e.sync_groups().await.unwrap();
            let members: std::collections::BTreeSet<AccountId> =
                e.group_members(&g).unwrap().into_iter().collect();
            if members == everyone {
                break;
            }
            let ev = tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap_or_else(|_| panic!("member {k} sees {} members", members.len()))
                .unwrap();
            assert!(!matches!(ev, Event::Message { .. }), "no message yet");
        }
    }
    // Four entries (creation, promotion, two additions), one appended per change: a change that
    // lost its position was not appended twice.
    assert_eq!(relay.metrics.group_log_appends.get(), 4);
    println!(
        "appends {}, conflicts {}",
        relay.metrics.group_log_appends.get(),
        relay.metrics.group_log_conflicts.get()
    );
    // And the group works for the newcomers.
    engines[3].0.send_group(&g, b"hello from 3").await.unwrap();
    for k in [0, 1, 2, 4] {
        let (e, rx) = &mut engines[k];
        assert_eq!(
            messages(e, rx, 1).await,
            vec![b"hello from 3".to_vec()],
            "member {k}"
        );
    }
    for (e, _) in engines {
        e.shutdown().await;
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_to_a_log_longer_than_one_relay_page_joins() {
    let relay_dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let relay = hush_relay::start(relay_config(relay_dir.path(), addr))
        .await
        .unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut engines = Vec::new();
    for d in &dirs {
        let (e, rx) = Engine::create_account(engine_config(d.path(), addr, &relay.fingerprint))
            .await
            .unwrap();
        e.connected(WAIT).await.unwrap();
        engines.push((e, rx));
    }
    let ids: Vec<AccountId> = engines
        .iter()
        .map(|(e, _)| e.address().unwrap().account)
        .collect();
    let g = engines[0].0.create_group("long", &[ids[1]]).await.unwrap();
    // Refreshes (changes that change nothing) until the log is longer than a relay page.
    let page = hush_relay::limits::GROUP_LOG_READ_MAX_ENTRIES;
    for _ in 0..page + 10 {
        engines[0].0.update_group(&g, &[], &[]).await.unwrap();
    }
    engines[0]
        .0
        .update_group(&g, &[(ids[2], false)], &[])
        .await
        .unwrap();
    // The newcomer reads every page before judging whether it is a member, and joins.
    let (e, rx) = &mut engines[2];
    loop {
        if e.group_members(&g).unwrap().len() == 3 {
            break;
        }
        let ev = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the newcomer did not join")
            .unwrap();
        assert!(!matches!(ev, Event::Message { .. }));
    }
    assert!(relay.metrics.group_log_appends.get() > page as u64);
    engines[2].0.send_group(&g, b"made it").await.unwrap();
    let (e0, rx0) = &mut engines[0];
    assert_eq!(messages(e0, rx0, 1).await, vec![b"made it".to_vec()]);
    for (e, _) in engines {
        e.shutdown().await;
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_finds_another_by_username_and_writes_to_it() {
    use hush_client::ClientError;
    use hush_proto::relay_api::ErrorCode;
    fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>, code: ErrorCode) {
        match r {
            Err(ClientError::Refused(e)) => assert_eq!(e.code, code),
            other => panic!("expected {code:?}, got {other:?}"),
        }
    }
    let relay_dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let relay = hush_relay::start(relay_config(relay_dir.path(), addr))
        .await
        .unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, mut a_rx) =
        Engine::create_account(engine_config(a_dir.path(), addr, &relay.fingerprint))
            .await
            .unwrap();
    let (bob, _b_rx) =
        Engine::create_account(engine_config(b_dir.path(), addr, &relay.fingerprint))
            .await
            .unwrap();
    alice.connected(WAIT).await.unwrap();
    bob.connected(WAIT).await.unwrap();
    let a_id = alice.address().unwrap().account;

    alice.claim_username("Alice").await.unwrap();
    // Found (and its proof checked) under any case; the name is Alice's, first come first served.
    assert_eq!(bob.lookup_username("alice").await.unwrap(), a_id);
    assert_eq!(bob.lookup_username("ALICE").await.unwrap(), a_id);
    refused(bob.claim_username("alice").await, ErrorCode::UsernameTaken);
    refused(bob.lookup_username("nobody").await, ErrorCode::NotFound);
    assert!(matches!(
        bob.lookup_username("x").await,
        Err(ClientError::InvalidUsername(_))
    ));

    // Bob writes to the account he found.
    let found = bob.lookup_username("alice").await.unwrap();
    bob.send(&found, b"hi alice").await.unwrap();
    assert_eq!(
        messages(&alice, &mut a_rx, 1).await,
        vec![b"hi alice".to_vec()]
    );

    // Alice renames: the old name is free, and Bob takes it.
    alice.claim_username("alicia").await.unwrap();
    refused(bob.lookup_username("alice").await, ErrorCode::NotFound);
    bob.claim_username("alice").await.unwrap();
    assert_eq!(
        bob.lookup_username("alice").await.unwrap(),
        bob.address().unwrap().account
    );
    assert_eq!(alice.lookup_username("alicia").await.unwrap(), a_id);
    alice.release_username().await.unwrap();
    refused(bob.lookup_username("alicia").await, ErrorCode::NotFound);

    alice.shutdown().await;
    bob.shutdown().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_device_joins_the_account_and_contacts_are_warned() {
    let relay_dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let relay = hush_relay::start(relay_config(relay_dir.path(), addr))
        .await
        .unwrap();
    let (a1d, a2d, bd) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (alice, mut a_rx) =
        Engine::create_account(engine_config(a1d.path(), addr, &relay.fingerprint))
            .await
            .unwrap();
    let (bob, mut b_rx) =
        Engine::create_account(engine_config(bd.path(), addr, &relay.fingerprint))
            .await
            .unwrap();
    alice.connected(WAIT).await.unwrap();
    bob.connected(WAIT).await.unwrap();
    let a_id = alice.address().unwrap().account;
    let b_id = bob.address().unwrap().account;
    bob.send(&a_id, b"before").await.unwrap();
    assert_eq!(
        messages(&alice, &mut a_rx, 1).await,
        vec![b"before".to_vec()]
    );

    // Alice shows a code; her new device uses it; her first device adds it.
    let offer = alice.offer_link().unwrap();
    alice.open_link(&offer).await.unwrap();
    let (alice2, mut a2_rx) = Engine::link(
        engine_config(a2d.path(), addr, &relay.fingerprint),
        &offer.code,
    )
    .await
    .unwrap();
    let id = alice.complete_link(&offer, WAIT).await.unwrap();
    assert_eq!(alice2.address().unwrap().device_id, id);
    alice2.connected(WAIT).await.unwrap();
    // A code is good once: a second device cannot use it.
    assert!(
        alice
            .complete_link(&offer, Duration::from_millis(700))
            .await
            .is_err()
    );

    // Bob's next message reaches both of Alice's devices; Bob is told her devices changed.
    bob.send(&a_id, b"to both").await.unwrap();
    assert_eq!(
        messages(&alice, &mut a_rx, 1).await,
        vec![b"to both".to_vec()]
    );
    assert_eq!(
        messages(&alice2, &mut a2_rx, 1).await,
        vec![b"to both".to_vec()]
    );
    loop {
        let ev = tokio::time::timeout(WAIT, b_rx.recv())
            .await
            .unwrap()
            .unwrap();
        if let Event::DevicesChanged { account, added, .. } = ev {
            assert_eq!((account, added), (a_id, vec![id]));
            break;
        }
    }
    // The new device writes too.
    alice2.send(&b_id, b"from the new device").await.unwrap();
    assert_eq!(
        messages(&bob, &mut b_rx, 1).await,
        vec![b"from the new device".to_vec()]
    );
    // Alice removes it again: it is told and stops; Bob's next message goes to device 1 only.
    alice.remove_device(id).await.unwrap();
    loop {
        let ev = tokio::time::timeout(WAIT, a2_rx.recv()).await.unwrap();
        match ev {
            Some(Event::Revoked) => break,
            Some(_) => {}
            None => panic!("the removed device was not told"),
        }
    }
    bob.send(&a_id, b"after removal").await.unwrap();
    assert_eq!(
        messages(&alice, &mut a_rx, 1).await,
        vec![b"after removal".to_vec()]
    );
    // Started again later, the removed device is told at once that it was removed, not that the
    // relay is unreachable, and stops trying.
    alice2.shutdown().await;
    let (again, mut again_rx) =
        Engine::open(engine_config(a2d.path(), addr, &relay.fingerprint)).unwrap();
    loop {
        match tokio::time::timeout(WAIT, again_rx.recv()).await.unwrap() {
            Some(Event::Revoked) => break,
            Some(_) => {}
            None => panic!("the removed device was not told on connecting"),
        }
    }
    assert!(matches!(
        again.connected(WAIT).await,
        Err(hush_client::ClientError::Revoked)
    ));
    again.shutdown().await;
    alice.shutdown().await;
    bob.shutdown().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_is_woken_through_the_push_endpoint_it_registered() {
    use std::io::{Read, Write};
    // A push gateway on 127.0.0.1: answers 200 and reports each request it got.
    let gateway = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/wake/bob", gateway.local_addr().unwrap());
    let (tx, mut wakeups) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for stream in gateway.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).unwrap_or(0);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    let relay_dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let mut cfg = relay_config(relay_dir.path(), addr);
    cfg.push.allow_plain_http = true;
    let relay = hush_relay::start(cfg).await.unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, _a_rx) =
        Engine::create_account(engine_config(a_dir.path(), addr, &relay.fingerprint))
            .await
            .unwrap();
    let (bob, mut b_rx) =
        Engine::create_account(engine_config(b_dir.path(), addr, &relay.fingerprint))
            .await
            .unwrap();
    alice.connected(WAIT).await.unwrap();
    bob.connected(WAIT).await.unwrap();
    let b_id = bob.address().unwrap().account;
    alice.send(&b_id, b"while online").await.unwrap();
    assert_eq!(
        messages(&bob, &mut b_rx, 1).await,
        vec![b"while online".to_vec()]
    );
    // A bad endpoint is refused with a clear error; the real one is accepted.
    assert!(bob.register_push("not a url").await.is_err());
    bob.register_push(&url).await.unwrap();

    // Bob goes offline; mail for him makes the relay call his endpoint, with nothing in it.
    bob.shutdown().await;
    tokio::time::timeout(WAIT, async {
        while relay.metrics.connections_authenticated.get() > 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the relay still sees Bob connected");
    alice.send(&b_id, b"secret words").await.unwrap();
    let request = tokio::time::timeout(WAIT, wakeups.recv())
        .await
        .expect("no wake-up in time")
        .unwrap();
    assert!(request.starts_with("POST /wake/bob "), "{request}");
    assert!(!request.contains("secret words"));
    // Woken, Bob's app opens the profile and gets the message.
    let (bob, mut b_rx) =
        Engine::open(engine_config(b_dir.path(), addr, &relay.fingerprint)).unwrap();
    assert_eq!(
        messages(&bob, &mut b_rx, 1).await,
        vec![b"secret words".to_vec()]
    );
    alice.shutdown().await;
    bob.shutdown().await;
    relay.stop().await;
}

/// A device whose queue at the relay is full is left out of a send (the account's other device
/// still gets it); the send then fails as transient instead of reporting success, and once the
/// device has drained its queue the same message reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_left_out_for_a_full_queue_gets_the_message_once_it_has_room() {
    let relay_dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let mut cfg = relay_config(relay_dir.path(), addr);
    cfg.max_queue_len = 3;
    let relay = hush_relay::start(cfg).await.unwrap();
    let (ad, b1d, b2d) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (bob, mut b_rx) =
        Engine::create_account(engine_config(b1d.path(), addr, &relay.fingerprint))
            .await
            .unwrap();
    bob.connected(WAIT).await.unwrap();
    let offer = bob.offer_link().unwrap();
    bob.open_link(&offer).await.unwrap();
    let (bob2, mut b2_rx) = Engine::link(
        engine_config(b2d.path(), addr, &relay.fingerprint),
        &offer.code,
    )
    .await
    .unwrap();
    bob.complete_link(&offer, WAIT).await.unwrap();
    bob2.connected(WAIT).await.unwrap();
    let (alice, _a_rx) = Engine::create_account(engine_config(ad.path(), addr, &relay.fingerprint))
        .await
        .unwrap();
    alice.connected(WAIT).await.unwrap();
    let b_id = bob.address().unwrap().account;

    alice.send(&b_id, b"m0").await.unwrap();
    assert_eq!(messages(&bob, &mut b_rx, 1).await, vec![b"m0".to_vec()]);
    assert_eq!(messages(&bob2, &mut b2_rx, 1).await, vec![b"m0".to_vec()]);
    // Both devices' acknowledgements of m0 (and of everything linking sent) have landed: both
    // queues are empty.
    relay_holds(&relay, 0).await;

    // Bob's second device goes offline; three messages fill its queue.
    bob2.shutdown().await;
    drop(b2_rx);
    for m in [&b"m1"[..], b"m2", b"m3"] {
        alice.send(&b_id, m).await.unwrap();
    }
    assert_eq!(messages(&bob, &mut b_rx, 3).await.len(), 3);
    // The first device has acknowledged them: only the second device's full queue is left.
    relay_holds(&relay, 3).await;

    // The fourth reaches the first device, and the send says it is not done.
    let e = alice.send(&b_id, b"m4").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(messages(&bob, &mut b_rx, 1).await, vec![b"m4".to_vec()]);

    // Back online, the second device drains its queue; sent again, the message reaches it.
    let (bob2, mut b2_rx) =
        Engine::open(engine_config(b2d.path(), addr, &relay.fingerprint)).unwrap();
    bob2.connected(WAIT).await.unwrap();
    assert_eq!(
        messages(&bob2, &mut b2_rx, 3).await,
        vec![b"m1".to_vec(), b"m2".to_vec(), b"m3".to_vec()]
    );
    // Its acknowledgements (and the first device's of m4) have landed: the queue has room.
    relay_holds(&relay, 0).await;
    alice.send(&b_id, b"m4").await.unwrap();
    assert_eq!(messages(&bob2, &mut b2_rx, 1).await, vec![b"m4".to_vec()]);

    alice.shutdown().await;
    bob.shutdown().await;
    bob2.shutdown().await;
    relay.stop().await;
}
