//! WebPush wake-ups end to end over the protocol: a device registers a subscription (endpoint on
//! a loopback HTTP server, its P-256 key and auth secret), goes offline, and mail for it makes the
//! relay POST a wake that only the subscription's private key opens, signed with the relay's VAPID
//! key for the endpoint's origin. Malformed keys are refused like a malformed URL.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

#[macro_use]
mod common;

use std::path::Path;

use common::*;
use hush_proto::relay_api::{self as api, ErrorCode, client_frame, server_frame};
use hush_relay::config::{StoreKind, VapidSubject};
use hush_relay::push::{Vapid, WAKE_BODY};
use hush_testkit::web_push::{Subscriber, endpoint, verify_vapid};

/// A client over QUIC, or over TLS on TCP with `HUSH_TEST_TRANSPORT=tcp`.
async fn client(r: &hush_relay::Running) -> Client {
    Client::connect_over(test_transport(), r).await
}

fn register(url: &str, p256dh: Vec<u8>, auth: Vec<u8>) -> client_frame::Kind {
    client_frame::Kind::RegisterPush(api::RegisterPush {
        url: url.to_owned(),
        p256dh,
        auth,
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

on_both_stores!(web_push_wakes_are_sealed_for_the_subscription_and_signed);
async fn web_push_wakes_are_sealed_for_the_subscription_and_signed(store: StoreKind, dir: &Path) {
    let mut cfg = test_config(store, dir);
    cfg.push.vapid_subject = VapidSubject::new("mailto:ops@relay.example").unwrap();
    let r = start_relay(cfg).await;
    let (addr, mut posts) = endpoint().await;
    let url = format!("http://{addr}/wp/bob-1");
    let subscription = Subscriber::new(5);

    // The VAPID key, asked for before authenticating (an app subscribes before it registers).
    let anon = client(&r).await;
    let got = anon
        .request(client_frame::Kind::PushServerKey(api::PushServerKey {}))
        .await;
    let server_frame::Kind::PushServerKey(served) = got else {
        panic!("no VAPID key served: {got:?}")
    };
    assert_eq!(served.vapid_public_key.len(), 65);
    assert_eq!(served.vapid_public_key[0], 0x04);
    anon.close();

    let alice = TestAccount::new(1);
    let bob = TestAccount::new(1);
    let a = client(&r).await;
    a.create(&alice, 1).await;
    let b = client(&r).await;
    b.create(&bob, 1).await;

    // Malformed keys are refused, with the URL itself fine.
    let good = subscription.p256dh();
    let mut off_curve = good.clone();
    off_curve[64] ^= 1;
    let mut compressed = good[..33].to_vec();
    compressed[0] = 0x02;
    let mut not_uncompressed = good.clone();
    not_uncompressed[0] = 0x05;
    let auth = subscription.auth.to_vec();
    for (p256dh, auth, why) in [
        (off_curve, auth.clone(), "not on the curve"),
        (compressed, auth.clone(), "compressed"),
        (not_uncompressed, auth.clone(), "not 0x04"),
        (good[..64].to_vec(), auth.clone(), "short key"),
        (good.clone(), auth[..15].to_vec(), "short auth"),
        (good.clone(), vec![1; 17], "long auth"),
        (good.clone(), Vec::new(), "key without auth"),
        (Vec::new(), auth.clone(), "auth without key"),
    ] {
        let got = b.request(register(&url, p256dh, auth)).await;
        assert_eq!(error_of(&got).0, ErrorCode::Malformed, "{why}: {got:?}");
    }
    let got = b.request(register("", good.clone(), auth.clone())).await;
    assert_eq!(error_of(&got).0, ErrorCode::Malformed, "keys without a URL");
    assert_eq!(r.store.push_endpoint(&bob_device(&bob)).unwrap(), None);

    let got = b.request(register(&url, good.clone(), auth.clone())).await;
    assert!(matches!(got, server_frame::Kind::Ok(_)), "{got:?}");
    let stored = r.store.push_endpoint(&bob_device(&bob)).unwrap().unwrap();
    assert_eq!(stored.url, url);
    assert_eq!(stored.keys.unwrap().p256dh().to_vec(), good);

    // Bob goes offline: wait (bounded) until the relay sees only Alice.
    b.close();
    tokio::time::timeout(WAIT, async {
        while r.metrics.connections_authenticated.get() > 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the relay still sees Bob connected");

    let vapid = Vapid::load_or_create(&dir.join("vapid.key"), "").unwrap();
    let marker = b"SECRET-CIPHERTEXT-MARKER";
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let sent = a.send(random(), bob.id(), &[1], marker).await;
        assert!(matches!(sent, server_frame::Kind::Sent(_)), "{sent:?}");
        let post = tokio::time::timeout(WAIT, posts.recv())
            .await
            .expect("no wake-up in time")
            .unwrap();
        assert_eq!(post.method, "POST");
        assert_eq!(post.target, "/wp/bob-1");
        assert_eq!(post.header("content-encoding"), Some("aes128gcm"));
        assert_eq!(post.header("ttl"), Some("86400"));
        assert_eq!(post.header("urgency"), Some("high"));
        assert_eq!(
            post.header("content-length"),
            Some(post.body.len().to_string().as_str())
        );
        let (content, rs) = subscription.open(&post.body);
        assert_eq!(content, WAKE_BODY);
        assert_eq!(rs, 4096);
        let token = verify_vapid(post.header("authorization").expect("VAPID authorization"));
        assert_eq!(
            base64_url(&token.key),
            vapid.public_key(),
            "signed with the relay's VAPID key"
        );
        assert_eq!(
            token.key, served.vapid_public_key,
            "the key the relay serves"
        );
        assert_eq!(token.aud, format!("http://{addr}"));
        assert_eq!(token.sub.as_deref(), Some("mailto:ops@relay.example"));
        let now = unix_now();
        assert!(
            token.exp > now && token.exp <= now + 24 * 3600,
            "exp within a day"
        );
        // Nothing of the message, the sender or the recipient.
        for secret in [&marker[..], &alice.id()[..], &bob.id()[..]] {
            assert!(!post.body.windows(secret.len()).any(|w| w == secret));
        }
        bodies.push(post.body);
    }
    assert_ne!(bodies[0], bodies[1], "every wake is sealed anew");
    assert_eq!(
        bodies[0].len(),
        bodies[1].len(),
        "every wake has one length"
    );
    r.stop().await;
}

fn bob_device(bob: &TestAccount) -> hush_relay::store::DeviceId {
    hush_relay::store::DeviceId {
        account: bob.id(),
        device: 1,
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

// A registration without keys is still the plain webhook, byte for byte as before.
on_both_stores!(a_registration_without_keys_stays_a_plain_webhook);
async fn a_registration_without_keys_stays_a_plain_webhook(store: StoreKind, dir: &Path) {
    let r = start_relay(test_config(store, dir)).await;
    let (addr, mut posts) = endpoint().await;
    let alice = TestAccount::new(1);
    let bob = TestAccount::new(1);
    let a = client(&r).await;
    a.create(&alice, 1).await;
    let b = client(&r).await;
    b.create(&bob, 1).await;
    let got = b
        .request(register(
            &format!("http://{addr}/plain"),
            Vec::new(),
            Vec::new(),
        ))
        .await;
    assert!(matches!(got, server_frame::Kind::Ok(_)), "{got:?}");
    b.close();
    tokio::time::timeout(WAIT, async {
        while r.metrics.connections_authenticated.get() > 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the relay still sees Bob connected");
    let sent = a.send(random(), bob.id(), &[1], b"hello").await;
    assert!(matches!(sent, server_frame::Kind::Sent(_)), "{sent:?}");
    let post = tokio::time::timeout(WAIT, posts.recv())
        .await
        .expect("no wake-up in time")
        .unwrap();
    assert_eq!(post.body, WAKE_BODY);
    assert_eq!(post.header("content-encoding"), None);
    assert_eq!(post.header("authorization"), None);
    r.stop().await;
}
