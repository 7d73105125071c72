//! A device registers a WebPush subscription through the client API (as an Android app does
//! with what its UnifiedPush distributor handed it), goes offline, and is woken by a wake-up only
//! its subscription key opens; the registration, keys included, survives the relay forgetting it
//! because the engine sends it again on its next connection.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

use std::time::Duration;

use hush_client::Engine;
use hush_testkit::web_push::{Subscriber, endpoint, verify_vapid};

const WAIT: Duration = Duration::from_secs(30);

async fn until_only(relay: &hush_relay::Running, connected: i64) {
    tokio::time::timeout(WAIT, async {
        while relay.metrics.connections_authenticated.get() > connected {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the relay still sees the device connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_push_subscription_registered_through_the_engine_wakes_the_offline_device() {
    let (gateway, mut posts) = endpoint().await;
    let url = format!("http://{gateway}/up/bob-device");
    let subscription = Subscriber::new(9);

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
    let (bob, b_rx) = Engine::create_account(engine_config(b_dir.path(), addr, &relay.fingerprint))
        .await
        .unwrap();
    alice.connected(WAIT).await.unwrap();
    bob.connected(WAIT).await.unwrap();
    let b_id = bob.address().unwrap().account;
    let b_device = hush_relay::store::DeviceId {
        account: *b_id.as_bytes(),
        device: bob.address().unwrap().device_id,
    };

    // The app first asks for the relay's VAPID key (to subscribe with it).
    let server_key = bob.push_server_key().await.unwrap();

    // Keys of the wrong size never leave the device; a key off the curve is the relay's to refuse.
    let p256dh = subscription.p256dh();
    assert!(
        bob.register_web_push(&url, &p256dh[..64], &subscription.auth)
            .await
            .is_err()
    );
    let mut off_curve = p256dh.clone();
    off_curve[64] ^= 1;
    let refused = bob
        .register_web_push(&url, &off_curve, &subscription.auth)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("p256dh"), "{refused}");
    bob.register_web_push(&url, &p256dh, &subscription.auth)
        .await
        .unwrap();

    // Offline, Bob is woken through the subscription: the POST opens to the constant wake.
    bob.shutdown().await;
    until_only(&relay, 1).await;
    alice.send(&b_id, b"secret words").await.unwrap();
    let post = tokio::time::timeout(WAIT, posts.recv())
        .await
        .expect("no wake-up in time")
        .unwrap();
    assert_eq!(post.target, "/up/bob-device");
    assert_eq!(post.header("content-encoding"), Some("aes128gcm"));
    let (content, _) = subscription.open(&post.body);
    assert_eq!(content, hush_relay::push::WAKE_BODY);
    let token = verify_vapid(post.header("authorization").unwrap());
    assert_eq!(token.aud, format!("http://{gateway}"));
    assert_eq!(
        token.key, server_key,
        "signed with the key the relay served"
    );
    drop(b_rx);

    // The relay loses the registration; Bob's next connection sends it again, keys included.
    relay.store.set_push_endpoint(&b_device, None).unwrap();
    let (bob, mut b_rx) =
        Engine::open(engine_config(b_dir.path(), addr, &relay.fingerprint)).unwrap();
    assert_eq!(
        messages(&bob, &mut b_rx, 1).await,
        vec![b"secret words".to_vec()]
    );
    let again = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(r) = relay.store.push_endpoint(&b_device).unwrap() {
                return r;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the registration was not sent again");
    assert_eq!(again.url, url);
    assert_eq!(again.keys.unwrap().p256dh().to_vec(), p256dh);

    alice.shutdown().await;
    bob.shutdown().await;
    relay.stop().await;
}
