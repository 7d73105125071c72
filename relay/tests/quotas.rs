//! Mailbox quotas and one-time key rationing on 127.0.0.1:0: the attacks of a free account
//! against a victim (filling its queues, its account's mailbox, draining its one-time pre-keys,
//! flooding it with `PreKeysLow`) and that they now stop at their limits while others are still
//! served. Over QUIC, or over TLS on TCP with `HUSH_TEST_TRANSPORT=tcp`.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

#[macro_use]
mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use hush_proto::relay_api::{self as api, ErrorCode, client_frame, server_frame};
use hush_relay::config::{RateLimit as Rate, StoreKind};
use hush_relay::limits;
use hush_relay::ops::{KeyLimit, RefusalReason};
use hush_relay::store::usage::ENVELOPE_OVERHEAD;
use prost::Message;

/// A connected client of a new account of `devices` devices, authenticated as device 1 and
/// caught up.
async fn join(r: &hush_relay::Running, devices: u32) -> (TestAccount, Client) {
    let a = TestAccount::new(devices);
    let c = test_client(r).await;
    c.create(&a, 1).await;
    assert!(c.catch_up().await.is_empty());
    (a, c)
}

fn sent(k: &server_frame::Kind) -> api::SendResult {
    match k {
        server_frame::Kind::Sent(s) => s.clone(),
        other => panic!("expected Sent, got {other:?}"),
    }
}

/// A request that goes through the store writer: once it is answered, every writer operation
/// the same connection submitted before it (acknowledgements) has been applied.
async fn barrier(c: &Client, a: &TestAccount, device: u32) {
    let r = c
        .request(client_frame::Kind::UploadPreKeys(
            a.pre_keys(device, 1, 0, 0),
        ))
        .await;
    assert!(matches!(r, server_frame::Kind::Ok(_)), "{r:?}");
}

on_both_stores!(strangers_filling_a_device_queue_do_not_stop_its_contacts);
async fn strangers_filling_a_device_queue_do_not_stop_its_contacts(store: StoreKind, dir: &Path) {
    let mut cfg = test_config(store, dir);
    cfg.max_queue_len_per_sender = 3;
    let r = start_relay(cfg).await;
    let (bob, b) = join(&r, 1).await;
    let token = random::<16>();
    let set = b
        .request(client_frame::Kind::SetDeliveryToken(
            api::SetDeliveryToken {
                token: token.to_vec(),
                anyone: false,
            },
        ))
        .await;
    assert!(matches!(set, server_frame::Kind::Ok(_)), "{set:?}");
    let (_mallory, m) = join(&r, 1).await;
    let (_alice, a) = join(&r, 1).await;
    drop(b); // offline: his queue fills
    // Mallory's introductions (no token) fill the strangers' share.
    for i in 0..3u8 {
        assert!(
            sent(&m.send([i; 16], bob.id(), &[1], b"flood").await)
                .full_devices
                .is_empty()
        );
    }
    let (code, e) = error_of(&m.send([9; 16], bob.id(), &[1], b"flood").await);
    assert_eq!(code, ErrorCode::SenderQuota);
    assert!(e.retry_after_ms > 0);
    // Another stranger shares it (the relay does not know senders)...
    let (code, _) = error_of(&a.send([11; 16], bob.id(), &[1], b"hello").await);
    assert_eq!(code, ErrorCode::SenderQuota);
    // ...but a contact, with Bob's delivery token, still reaches him.
    let with_token = a
        .request(client_frame::Kind::Send(api::Send {
            client_id: vec![2; 16],
            recipient_account: bob.id().to_vec(),
            envelopes: vec![api::OutEnvelope {
                device_id: 1,
                body: b"hello".to_vec(),
                delivery_token: token.to_vec(),
            }],
            targeted: false,
        }))
        .await;
    assert!(sent(&with_token).full_devices.is_empty());
    assert_eq!(r.metrics.refusals.get(RefusalReason::SenderQuota), 2);
    assert_eq!(
        r.metrics.mailbox_bytes.get(),
        i64::try_from(4 * (5 + ENVELOPE_OVERHEAD)).unwrap()
    );
    // Bob reads and acknowledges everything: the strangers' share is free again and every byte
    // counter is back at zero.
    let b = test_client(&r).await;
    b.authenticate(&bob, 1).await;
    let got = b.catch_up().await;
    assert_eq!(got.len(), 4);
    b.ack(got.iter().map(|d| d.seq).collect()).await;
    barrier(&b, &bob, 1).await;
    assert_eq!(r.metrics.mailbox_bytes.get(), 0);
    assert!(
        sent(&m.send([9; 16], bob.id(), &[1], b"flood").await)
            .full_devices
            .is_empty()
    );
    r.stop().await;
}

on_both_stores!(an_account_at_its_mailbox_byte_cap_is_refused_while_another_still_receives);
async fn an_account_at_its_mailbox_byte_cap_is_refused_while_another_still_receives(
    store: StoreKind,
    dir: &Path,
) {
    let body = [7u8; 100];
    let one = 100 + ENVELOPE_OVERHEAD;
    let mut cfg = test_config(store, dir);
    cfg.max_account_mailbox_bytes = 4 * one;
    let r = start_relay(cfg).await;
    let (bob, b) = join(&r, 2).await;
    let (carol, _c) = join(&r, 1).await;
    let (_mallory, m) = join(&r, 1).await;
    drop(b);
    // One send to Bob's two devices counts twice against his account.
    sent(&m.send(random(), bob.id(), &[1, 2], &body).await);
    sent(&m.send(random(), bob.id(), &[1, 2], &body).await);
    let (code, e) = error_of(&m.send(random(), bob.id(), &[1, 2], &body).await);
    assert_eq!(code, ErrorCode::MailboxFull);
    assert!(e.retry_after_ms > 0);
    // Nothing of the refused send was queued, and Carol still receives.
    assert_eq!(
        r.metrics.mailbox_bytes.get(),
        i64::try_from(4 * one).unwrap()
    );
    sent(&m.send(random(), carol.id(), &[1], &body).await);
    assert_eq!(r.metrics.refusals.get(RefusalReason::MailboxFull), 1);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_wide_mailbox_byte_cap_refuses_with_relay_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(StoreKind::Memory, dir.path());
    cfg.max_mailbox_bytes = 2 * (10 + ENVELOPE_OVERHEAD);
    let r = start_relay(cfg).await;
    let (bob, _b) = join(&r, 1).await;
    let (carol, _c) = join(&r, 1).await;
    let (_alice, a) = join(&r, 1).await;
    sent(&a.send(random(), bob.id(), &[1], &[1; 10]).await);
    sent(&a.send(random(), carol.id(), &[1], &[1; 10]).await);
    let (code, e) = error_of(&a.send(random(), carol.id(), &[1], &[1; 10]).await);
    assert_eq!(code, ErrorCode::RelayFull);
    assert!(e.retry_after_ms > 0);
    assert_eq!(r.metrics.refusals.get(RefusalReason::RelayFull), 1);
    r.stop().await;
}

on_both_stores!(a_full_device_of_two_is_left_out_and_named_while_the_other_gets_the_send);
async fn a_full_device_of_two_is_left_out_and_named_while_the_other_gets_the_send(
    store: StoreKind,
    dir: &Path,
) {
    let mut cfg = test_config(store, dir);
    cfg.max_queue_len = 2;
    let r = start_relay(cfg).await;
    let (bob, b1) = join(&r, 2).await; // device 1 online, device 2 offline
    let (_alice, a) = join(&r, 1).await;
    for i in 0..2u8 {
        assert!(
            sent(&a.send([i; 16], bob.id(), &[1, 2], &[i]).await)
                .full_devices
                .is_empty()
        );
        let d = b1.next_delivery().await;
        b1.ack(vec![d.seq]).await;
    }
    // Device 2 holds two: the third send reaches device 1 and names device 2.
    let third = sent(&a.send([2; 16], bob.id(), &[1, 2], &[2]).await);
    assert_eq!(third.full_devices, vec![2]);
    let d = b1.next_delivery().await;
    assert_eq!(d.body, vec![2]);
    b1.ack(vec![d.seq]).await;
    assert_eq!(r.metrics.envelopes_device_full.get(), 1);
    // A send that reaches no device at all is refused.
    let only_2 = a
        .request(client_frame::Kind::Send(api::Send {
            client_id: random::<16>().to_vec(),
            recipient_account: bob.id().to_vec(),
            targeted: true,
            envelopes: vec![api::OutEnvelope {
                device_id: 2,
                body: vec![3],
                delivery_token: Vec::new(),
            }],
        }))
        .await;
    let (code, e) = error_of(&only_2);
    assert_eq!(code, ErrorCode::QueueFull);
    assert!(e.retry_after_ms > 0);
    // Device 2 reads its queue; the retried third send (same client id) reaches it, and device 1
    // does not get it twice.
    let b2 = test_client(&r).await;
    b2.authenticate(&bob, 2).await;
    let got = b2.catch_up().await;
    assert_eq!(got.len(), 2);
    b2.ack(got.iter().map(|d| d.seq).collect()).await;
    barrier(&b2, &bob, 2).await;
    let again = sent(&a.send([2; 16], bob.id(), &[1, 2], &[2]).await);
    assert!(again.full_devices.is_empty());
    let d = b2.next_delivery().await;
    assert_eq!(d.body, vec![2]);
    b2.ack(vec![d.seq]).await;
    barrier(&b2, &bob, 2).await;
    barrier(&b1, &bob, 1).await;
    assert_eq!(b1.try_event(Duration::ZERO).await, None, "no duplicate");
    assert_eq!(r.metrics.mailbox_bytes.get(), 0);
    r.stop().await;
}

/// Fetches one bundle of `target`'s device 1; whether it carried one-time keys (checking that a
/// bundle without them is complete: signed pre-key and last-resort ML-KEM key).
async fn fetch_bundle(c: &Client, target: &TestAccount) -> bool {
    let k = c
        .request(client_frame::Kind::FetchBundle(api::FetchBundle {
            account: target.id().to_vec(),
            device_id: 1,
        }))
        .await;
    let server_frame::Kind::Bundle(b) = k else {
        panic!("expected a bundle, got {k:?}")
    };
    let b = hush_proto::wire::PreKeyBundle::decode(b.bundle.as_slice()).unwrap();
    assert!(b.signed_pre_key.is_some());
    let kem = b.kem_pre_key.unwrap();
    match b.one_time_pre_key {
        Some(_) => {
            assert!(!kem.last_resort);
            true
        }
        None => {
            assert!(kem.last_resort);
            false
        }
    }
}

/// A victim with `n` one-time keys of each kind; its connection.
async fn victim(r: &hush_relay::Running, n: u32) -> (TestAccount, Client) {
    let (v, c) = join(r, 1).await;
    let up = c
        .request(client_frame::Kind::UploadPreKeys(v.pre_keys(1, 1, n, n)))
        .await;
    assert!(matches!(up, server_frame::Kind::Ok(_)), "{up:?}");
    (v, c)
}

/// A bucket that does not refill during a test.
fn fixed(burst: u32) -> Rate {
    Rate {
        per_second: 0.000_01,
        burst,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_draining_a_victims_one_time_keys_get_only_the_target_burst() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(StoreKind::Memory, dir.path());
    cfg.rate.one_time_keys_per_target = fixed(30);
    let r = start_relay(cfg).await;
    let (v, _vc) = victim(&r, 100).await;
    let (_m1, c1) = join(&r, 1).await;
    let (_m2, c2) = join(&r, 1).await;
    let mut with_keys = 0;
    for _ in 0..40 {
        with_keys += usize::from(fetch_bundle(&c1, &v).await);
        with_keys += usize::from(fetch_bundle(&c2, &v).await);
    }
    assert_eq!(with_keys, 30, "only the per-target burst is handed out");
    // Anyone still gets a complete bundle (without one-time keys): no one is denied a session.
    let (_alice, a) = join(&r, 1).await;
    assert!(!fetch_bundle(&a, &v).await);
    let m = &r.metrics;
    assert_eq!(m.one_time_keys_claimed.get(), 30);
    assert_eq!(m.one_time_keys_withheld.get(KeyLimit::Target), 51);
    let text = m.render();
    assert!(text.contains("hush_relay_one_time_keys_withheld_total{limit=\"target\"} 51"));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_requester_gets_only_the_pair_burst_from_one_account() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(StoreKind::Memory, dir.path());
    cfg.rate.one_time_keys_per_pair = fixed(3);
    let r = start_relay(cfg).await;
    let (v, _vc) = victim(&r, 50).await;
    let (_m, mc) = join(&r, 1).await;
    let mut with_keys = 0;
    for _ in 0..10 {
        with_keys += usize::from(fetch_bundle(&mc, &v).await);
    }
    assert_eq!(with_keys, 3);
    assert_eq!(r.metrics.one_time_keys_withheld.get(KeyLimit::Pair), 7);
    // Another account has a bucket of its own.
    let (_a, ac) = join(&r, 1).await;
    assert!(fetch_bundle(&ac, &v).await);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_requester_gets_only_its_burst_across_many_targets() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(StoreKind::Memory, dir.path());
    cfg.rate.one_time_keys_per_requester = fixed(4);
    let r = start_relay(cfg).await;
    let mut victims = Vec::new();
    for _ in 0..6 {
        victims.push(victim(&r, 5).await);
    }
    let (_m, mc) = join(&r, 1).await;
    let mut with_keys = 0;
    for (v, _) in &victims {
        with_keys += usize::from(fetch_bundle(&mc, v).await);
    }
    assert_eq!(with_keys, 4);
    assert_eq!(r.metrics.one_time_keys_withheld.get(KeyLimit::Requester), 2);
    // Another requester has a bucket of its own.
    let (_a, ac) = join(&r, 1).await;
    assert!(fetch_bundle(&ac, &victims[5].0).await);
    r.stop().await;
}

/// `PreKeysLow` frames received so far by `c` (every frame sent before the answer to a request
/// made now is read by then).
async fn lows_so_far(c: &Client) -> Vec<api::PreKeysLow> {
    let ping = c.request(client_frame::Kind::Ping(api::Ping {})).await;
    assert!(matches!(ping, server_frame::Kind::Ok(_)));
    let mut lows = Vec::new();
    while let Some(k) = c.try_event(Duration::ZERO).await {
        if let server_frame::Kind::PreKeysLow(l) = k {
            lows.push(l);
        }
    }
    lows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_device_is_told_once_per_low_spell_and_again_after_replenishing() {
    let dir = tempfile::tempdir().unwrap();
    let r = start_relay(test_config(StoreKind::Memory, dir.path())).await;
    let (v, vc) = victim(&r, 15).await;
    assert!(lows_so_far(&vc).await.is_empty());
    let (_m1, c1) = join(&r, 1).await;
    let (_m2, c2) = join(&r, 1).await;
    // (Each new device was told on connecting that it has no keys.)
    let told_before = r.metrics.pre_keys_low_sent.get();
    for _ in 0..20 {
        fetch_bundle(&c1, &v).await;
        fetch_bundle(&c2, &v).await;
    }
    let lows = lows_so_far(&vc).await;
    assert_eq!(
        lows.len(),
        1,
        "one notification per low spell, not per fetch"
    );
    assert_eq!(lows[0].one_time_left as usize, limits::PRE_KEYS_LOW - 1);
    assert_eq!(r.metrics.pre_keys_low_sent.get(), told_before + 1);
    // The victim uploads enough to end the spell; the next drain tells it again, once.
    let up = vc
        .request(client_frame::Kind::UploadPreKeys(
            v.pre_keys(1, 100, 20, 20),
        ))
        .await;
    assert!(matches!(up, server_frame::Kind::Ok(_)), "{up:?}");
    for _ in 0..15 {
        fetch_bundle(&c1, &v).await;
    }
    let lows = lows_so_far(&vc).await;
    assert_eq!(lows.len(), 1);
    assert_eq!(r.metrics.pre_keys_low_sent.get(), told_before + 2);
    r.stop().await;
}
