//! Relay integration tests on 127.0.0.1:0, each run against the in-memory and the sled store (and
//! one against two relay nodes on the Redis Cluster of `bash scripts/test`).
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use common::*;
use hush_proto::relay_api::{self as api, ErrorCode, blob_response, client_frame, server_frame};
use hush_relay::config::{RateLimit as Rate, StoreKind};
use hush_relay::limits;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client over QUIC, or over TLS on TCP with `HUSH_TEST_TRANSPORT=tcp`.
async fn client(r: &hush_relay::Running) -> Client {
    Client::connect_over(test_transport(), r).await
}

fn ok(k: &server_frame::Kind) {
    assert!(
        matches!(k, server_frame::Kind::Ok(_)),
        "expected Ok, got {k:?}"
    );
}

on_both_stores!(accounts_devices_and_list_rotation);
async fn accounts_devices_and_list_rotation(store: StoreKind, dir: &Path) {
    let r = start_relay(test_config(store, dir)).await;
    let mut alice = TestAccount::new(1);
    let a1 = client(&r).await;
    a1.create(&alice, 1).await;
    // Creating it again is refused.
    let again = a1
        .request(client_frame::Kind::CreateAccount(api::CreateAccount {
            signed_device_list: alice.signed_list(),
        }))
        .await;
    assert_eq!(error_of(&again).0, ErrorCode::AccountExists);

    // Add device 2 (version 2).
    alice.add_device(2);
    ok(&a1
        .request(client_frame::Kind::PublishDeviceList(
            api::PublishDeviceList {
                signed_device_list: alice.signed_list(),
            },
        ))
        .await);
    // The same version again, and a list signed by a device key instead of the account key.
    let stale = a1
        .request(client_frame::Kind::PublishDeviceList(
            api::PublishDeviceList {
                signed_device_list: alice.signed_list(),
            },
        ))
        .await;
    assert_eq!(error_of(&stale).0, ErrorCode::StaleDeviceList);
    alice.version += 1;
    let forged = alice.signed_list_by(alice.device(1));
    alice.version -= 1;
    let bad = a1
        .request(client_frame::Kind::PublishDeviceList(
            api::PublishDeviceList {
                signed_device_list: forged,
            },
        ))
        .await;
    assert_eq!(error_of(&bad).0, ErrorCode::BadSignature);
    // Another account's list cannot be published from this device.
    let mut bob = TestAccount::new(1);
    let b1 = client(&r).await;
    b1.create(&bob, 1).await;
    bob.add_device(2);
    let other = a1
        .request(client_frame::Kind::PublishDeviceList(
            api::PublishDeviceList {
                signed_device_list: bob.signed_list(),
            },
        ))
        .await;
    assert_eq!(error_of(&other).0, ErrorCode::Forbidden);

    // Anyone authenticated fetches the newest list.
    let got = b1
        .request(client_frame::Kind::FetchDeviceList(api::FetchDeviceList {
            account: alice.id().to_vec(),
        }))
        .await;
    let server_frame::Kind::DeviceList(l) = got else {
        panic!("{got:?}")
    };
    assert_eq!(l.signed_device_list, alice.signed_list());

    // Device 2 connects; then device 1 revokes it: it is told and cut off at once.
    let a2 = client(&r).await;
    a2.authenticate(&alice, 2).await;
    assert!(a2.catch_up().await.is_empty());
    let removed_key = alice.device(2).clone();
    alice.remove_device(2);
    ok(&a1
        .request(client_frame::Kind::PublishDeviceList(
            api::PublishDeviceList {
                signed_device_list: alice.signed_list(),
            },
        ))
        .await);
    // Told (unless the close overtakes the frame: then its code says it).
    if let Some(ev) = a2.try_event(WAIT).await {
        assert!(matches!(ev, server_frame::Kind::Revoked(_)), "{ev:?}");
    }
    a2.closed_with(limits::close::REVOKED).await;
    // It can no longer authenticate, and nothing can be sent to it.
    let a2b = client(&r).await;
    let res = a2b.authenticate_with(alice.id(), 2, &removed_key).await;
    assert_eq!(error_of(&res).0, ErrorCode::DeviceRevoked);
    let (code, e) = error_of(&b1.send(random(), alice.id(), &[1, 2], b"x").await);
    assert_eq!(
        (code, e.extra_devices),
        (ErrorCode::DeviceMismatch, vec![2])
    );
    r.stop().await;
}

on_both_stores!(authentication_is_bound_and_checked);
async fn authentication_is_bound_and_checked(store: StoreKind, dir: &Path) {
    let r = start_relay(test_config(store, dir)).await;
    let alice = TestAccount::new(1);
    let c = client(&r).await;
    c.create(&alice, 1).await;
    // Requests that need a device are refused before authentication.
    let anon = client(&r).await;
    let res = anon.send(random(), alice.id(), &[1], b"x").await;
    assert_eq!(error_of(&res).0, ErrorCode::Unauthenticated);
    // Wrong key.
    let wrong = ed25519_dalek::SigningKey::from_bytes(&random());
    let res = anon.authenticate_with(alice.id(), 1, &wrong).await;
    assert_eq!(error_of(&res).0, ErrorCode::AuthFailed);
    // Authenticate without a challenge.
    let res = anon
        .request(client_frame::Kind::Authenticate(api::Authenticate {
            account: alice.id().to_vec(),
            device_id: 1,
            signature: vec![0; 64],
        }))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::AuthFailed);
    // A signature made with another connection's TLS exporter, over this connection's own
    // challenge, does not verify: the exporter binds it to one connection.
    let other = client(&r).await;
    let server_frame::Kind::Challenge(ch) = other
        .request(client_frame::Kind::Hello(api::Hello {}))
        .await
    else {
        panic!()
    };
    let sig_for_other = other.auth_signature(&ch.nonce, alice.id(), 1, alice.device(1));
    let third = client(&r).await;
    let server_frame::Kind::Challenge(ch3) = third
        .request(client_frame::Kind::Hello(api::Hello {}))
        .await
    else {
        panic!()
    };
    let foreign = sign_auth(
        &other.exporter(),
        &ch3.nonce,
        alice.id(),
        1,
        alice.device(1),
    );
    let res = third
        .request(client_frame::Kind::Authenticate(api::Authenticate {
            account: alice.id().to_vec(),
            device_id: 1,
            signature: foreign,
        }))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::AuthFailed);
    // A challenge is good for one attempt: after a failure, the right signature over the same
    // challenge is refused too.
    let right = third.auth_signature(&ch3.nonce, alice.id(), 1, alice.device(1));
    let res = third
        .request(client_frame::Kind::Authenticate(api::Authenticate {
            account: alice.id().to_vec(),
            device_id: 1,
            signature: right,
        }))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::AuthFailed);
    // The rightful connection still works with its own signature once.
    ok(&other
        .request(client_frame::Kind::Authenticate(api::Authenticate {
            account: alice.id().to_vec(),
            device_id: 1,
            signature: sig_for_other.clone(),
        }))
        .await);
    // After too many failures the connection is closed. The error frame goes out first, but the
    // close can overtake it at the client (QUIC drops unread stream data on close): either is
    // the refusal.
    let server_frame::Kind::Challenge(ch) =
        anon.request(client_frame::Kind::Hello(api::Hello {})).await
    else {
        panic!()
    };
    let sig = anon.auth_signature(&ch.nonce, alice.id(), 1, &wrong);
    if let Some(res) = anon
        .try_request(client_frame::Kind::Authenticate(api::Authenticate {
            account: alice.id().to_vec(),
            device_id: 1,
            signature: sig,
        }))
        .await
    {
        assert_eq!(error_of(&res).0, ErrorCode::AuthFailed);
    }
    anon.closed_with(limits::close::PROTOCOL).await;
    r.stop().await;
}

on_both_stores!(one_time_pre_key_claimed_by_50_concurrent_clients_is_handed_out_once);
async fn one_time_pre_key_claimed_by_50_concurrent_clients_is_handed_out_once(
    store: StoreKind,
    dir: &Path,
) {
    let r = start_relay(test_config(store, dir)).await;
    let bob = TestAccount::new(1);
    let b = client(&r).await;
    b.create(&bob, 1).await;
    b.catch_up().await;
    ok(&b
        .request(client_frame::Kind::UploadPreKeys(
            bob.pre_keys(1, 1, 30, 30),
        ))
        .await);
    let mut clients = Vec::new();
    for _ in 0..50 {
        let a = TestAccount::new(1);
        let c = client(&r).await;
        c.create(&a, 1).await;
        clients.push(Arc::new(c));
    }
    let bob_id = bob.id();
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| {
            let c = Arc::clone(c);
            tokio::spawn(async move {
                c.request(client_frame::Kind::FetchBundle(api::FetchBundle {
                    account: bob_id.to_vec(),
                    device_id: 1,
                }))
                .await
            })
        })
        .collect();
    let mut otks = Vec::new();
    let mut kems = Vec::new();
    let mut last_resort = 0;
    for t in tasks {
        let server_frame::Kind::Bundle(b) = t.await.unwrap() else {
            panic!()
        };
        let b = hush_proto::wire::PreKeyBundle::decode(b.bundle.as_slice()).unwrap();
        assert_eq!(b.account_key, bob_id.to_vec());
        if let Some(o) = b.one_time_pre_key {
            otks.push(o.id);
        }
        let k = b.kem_pre_key.unwrap();
        if k.last_resort {
            last_resort += 1;
        } else {
            kems.push(k.id);
        }
    }
    assert_eq!(otks.len(), 30);
    assert_eq!(
        otks.iter().collect::<BTreeSet<_>>().len(),
        30,
        "a one-time key went out twice"
    );
    assert_eq!(kems.iter().collect::<BTreeSet<_>>().len(), 30);
    assert_eq!(last_resort, 20);
    // The owner is told its stock is low, once: when the count went below the threshold.
    loop {
        if let server_frame::Kind::PreKeysLow(l) = b.event().await {
            assert_eq!(l.one_time_left as usize, limits::PRE_KEYS_LOW - 1);
            break;
        }
    }
    r.stop().await;
}

on_both_stores!(send_online_push_offline_queue_ack_and_order);
async fn send_online_push_offline_queue_ack_and_order(store: StoreKind, dir: &Path) {
    let r = start_relay(test_config(store, dir)).await;
    let alice = TestAccount::new(1);
    let bob = TestAccount::new(2);
    let a = client(&r).await;
    a.create(&alice, 1).await;
    let b1 = client(&r).await;
    b1.create(&bob, 1).await;
    assert!(b1.catch_up().await.is_empty());
    // Bob's device 2 is offline. Alice sends 20 messages to both of Bob's devices.
    let mut ids = Vec::new();
    let mut first_received_at = 0;
    for i in 0..20u8 {
        let id = random::<16>();
        ids.push(id);
        let res = a.send(id, bob.id(), &[1, 2], &[i; 100]).await;
        let server_frame::Kind::Sent(sent) = res else {
            panic!("{res:?}")
        };
        if i == 0 {
            first_received_at = sent.received_at;
            // So that a retry's own time would differ from the original's.
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
    }
    // Online: pushed at once, in order.
    let mut seqs = Vec::new();
    for i in 0..20u8 {
        let d = b1.next_delivery().await;
        assert_eq!(d.body, vec![i; 100]);
        assert_eq!(d.client_id, ids[i as usize].to_vec());
        seqs.push(d.seq);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    // A retried send is acknowledged with the original acceptance time and not queued again.
    let again = a.send(ids[0], bob.id(), &[1, 2], &[0; 100]).await;
    let server_frame::Kind::Sent(again) = again else {
        panic!("{again:?}")
    };
    assert_eq!(again.received_at, first_received_at);
    assert!(
        b1.try_event(std::time::Duration::from_millis(300))
            .await
            .is_none()
    );
    // Offline device: everything, in order, then the drained marker.
    let b2 = client(&r).await;
    b2.authenticate(&bob, 2).await;
    let got = b2.catch_up().await;
    assert_eq!(
        got.iter().map(|d| d.body[0]).collect::<Vec<_>>(),
        (0..20).collect::<Vec<u8>>()
    );
    // Ack half; reconnect: only the rest comes again.
    b2.ack(got[..10].iter().map(|d| d.seq).collect()).await;
    drop(b2);
    let b2 = client(&r).await;
    b2.authenticate(&bob, 2).await;
    let rest = b2.catch_up().await;
    assert_eq!(
        rest.iter().map(|d| d.body[0]).collect::<Vec<_>>(),
        (10..20).collect::<Vec<u8>>()
    );
    b2.ack(rest.iter().map(|d| d.seq).collect()).await;
    // Messages to one's own other devices (sync) go without the sending device.
    let res = b2.send(random(), bob.id(), &[1], b"sync").await;
    assert!(matches!(res, server_frame::Kind::Sent(_)), "{res:?}");
    assert_eq!(b1.next_delivery().await.body, b"sync");
    r.stop().await;
}

on_both_stores!(device_set_mismatch_is_reported);
async fn device_set_mismatch_is_reported(store: StoreKind, dir: &Path) {
    let r = start_relay(test_config(store, dir)).await;
    let alice = TestAccount::new(1);
    let bob = TestAccount::new(2);
    let a = client(&r).await;
    a.create(&alice, 1).await;
    let b = client(&r).await;
    b.create(&bob, 1).await;
    let (code, e) = error_of(&a.send(random(), bob.id(), &[1], b"x").await);
    assert_eq!(code, ErrorCode::DeviceMismatch);
    assert_eq!((e.missing_devices, e.extra_devices), (vec![2], vec![]));
    let (code, e) = error_of(&a.send(random(), bob.id(), &[1, 2, 9], b"x").await);
    assert_eq!(code, ErrorCode::DeviceMismatch);
    assert_eq!((e.missing_devices, e.extra_devices), (vec![], vec![9]));
    let (code, _) = error_of(&a.send(random(), [9; 32], &[1], b"x").await);
    assert_eq!(code, ErrorCode::NotFound);
    // Nothing was queued by the refused sends.
    assert!(b.catch_up().await.is_empty());
    // A targeted send (a control message for some devices) may leave devices out, but may
    // not name unlisted ones.
    let targeted = |devices: &[u32]| {
        client_frame::Kind::Send(api::Send {
            client_id: random::<16>().to_vec(),
            recipient_account: bob.id().to_vec(),
            envelopes: devices
                .iter()
                .map(|d| api::OutEnvelope {
                    device_id: *d,
                    body: b"for device 1 only".to_vec(),
                    delivery_token: Vec::new(),
                })
                .collect(),
            targeted: true,
        })
    };
    let res = a.request(targeted(&[1, 9])).await;
    let (code, e) = error_of(&res);
    assert_eq!(code, ErrorCode::DeviceMismatch);
    assert_eq!((e.missing_devices, e.extra_devices), (vec![], vec![9]));
    let res = a.request(targeted(&[1])).await;
    assert!(matches!(res, server_frame::Kind::Sent(_)), "{res:?}");
    assert_eq!(b.next_delivery().await.body, b"for device 1 only");
    r.stop().await;
}

on_both_stores!(ephemeral_envelopes_reach_connected_devices_only_and_never_disk);
async fn ephemeral_envelopes_reach_connected_devices_only_and_never_disk(
    store: StoreKind,
    dir: &Path,
) {
    let r = start_relay(test_config(store, dir)).await;
    let alice = TestAccount::new(1);
    let bob = TestAccount::new(2);
    let a = client(&r).await;
    a.create(&alice, 1).await;
    let b1 = client(&r).await;
    b1.create(&bob, 1).await;
    assert!(b1.catch_up().await.is_empty());
    let marker = b"EPHEMERAL-TYPING-MARKER-0123456789";
    ok(&a
        .request(client_frame::Kind::SendEphemeral(api::SendEphemeral {
            recipient_account: bob.id().to_vec(),
            envelopes: vec![
                api::OutEnvelope {
                    device_id: 1,
                    body: marker.to_vec(),
                    delivery_token: Vec::new(),
                },
                api::OutEnvelope {
                    device_id: 2,
                    body: marker.to_vec(),
                    delivery_token: Vec::new(),
                },
            ],
        }))
        .await);
    let server_frame::Kind::Ephemeral(e) = b1.event().await else {
        panic!()
    };
    assert_eq!(e.body, marker);
    // The offline device finds nothing when it connects.
    let b2 = client(&r).await;
    b2.authenticate(&bob, 2).await;
    assert!(b2.catch_up().await.is_empty());
    r.stop().await;
    assert!(
        !dir_contains(dir, marker),
        "an ephemeral envelope reached the disk"
    );
}

on_both_stores!(push_wake_ups_are_content_free);
async fn push_wake_ups_are_content_free(store: StoreKind, dir: &Path) {
    let r = start_relay(test_config(store, dir)).await;
    // A local webhook endpoint recording every request.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..h]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() >= h + 4 + len {
                            break;
                        }
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                let _ = tx.send(buf);
            });
        }
    });
    let alice = TestAccount::new(1);
    let bob = TestAccount::new(1);
    let a = client(&r).await;
    a.create(&alice, 1).await;
    let b = client(&r).await;
    b.create(&bob, 1).await;
    ok(&b
        .request(client_frame::Kind::RegisterPush(api::RegisterPush {
            url: format!("http://127.0.0.1:{port}/up/abc"),
            ..Default::default()
        }))
        .await);
    // A bad URL is refused.
    let bad = b
        .request(client_frame::Kind::RegisterPush(api::RegisterPush {
            url: "ftp://nowhere".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(error_of(&bad).0, ErrorCode::Malformed);
    b.close();
    // Wait until the relay has seen Bob go (only Alice's connection left).
    for _ in 0..2000 {
        if r.metrics.connections_open.get() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(r.metrics.connections_open.get(), 1);
    let body = b"SECRET-CIPHERTEXT-MARKER";
    let res = a.send(random(), bob.id(), &[1], body).await;
    assert!(matches!(res, server_frame::Kind::Sent(_)), "{res:?}");
    let req = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&req).to_string();
    assert!(text.starts_with("POST /up/abc HTTP/1.1\r\n"), "{text}");
    for secret in [&body[..], &alice.id()[..], &bob.id()[..]] {
        assert!(
            !req.windows(secret.len()).any(|w| w == secret),
            "push leaks content"
        );
    }
    assert!(!text.contains(&hex::encode(alice.id())) && !text.contains(&hex::encode(bob.id())));
    r.stop().await;
}

on_both_stores!(blob_round_trip);
async fn blob_round_trip(store: StoreKind, dir: &Path) {
    let mut cfg = test_config(store, dir);
    cfg.blob_max_bytes = 1 << 20;
    let r = start_relay(cfg).await;
    let alice = TestAccount::new(1);
    let a = client(&r).await;
    a.create(&alice, 1).await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let up = a.upload_blob(&data, data.len() as u64).await;
    let Some(blob_response::Kind::Uploaded(u)) = up.kind else {
        panic!("{up:?}")
    };
    assert_eq!(u.id.len(), 16);
    assert_eq!(u.capability.len(), 32);
    let bob = TestAccount::new(1);
    let b = client(&r).await;
    b.create(&bob, 1).await;
    assert_eq!(b.download_blob(&u.id, &u.capability).await.unwrap(), data);
    // A wrong capability finds nothing (indistinguishable from an unknown id).
    let mut wrong = u.capability.clone();
    wrong[0] ^= 1;
    assert_eq!(
        b.download_blob(&u.id, &wrong).await.unwrap_err().code(),
        ErrorCode::BlobNotFound
    );
    assert_eq!(
        b.download_blob(&[0; 16], &u.capability)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::BlobNotFound
    );
    // Over the cap, and shorter or longer than declared.
    let big = a.upload_blob(b"", (1 << 20) + 1).await;
    let Some(blob_response::Kind::Error(e)) = big.kind else {
        panic!("{big:?}")
    };
    assert_eq!(e.code(), ErrorCode::TooLarge);
    let short = a.upload_blob(&data[..1000], 2000).await;
    let Some(blob_response::Kind::Error(e)) = short.kind else {
        panic!("{short:?}")
    };
    assert_eq!(e.code(), ErrorCode::Malformed);
    let long = a.upload_blob(&data[..3000], 2000).await;
    let Some(blob_response::Kind::Error(e)) = long.kind else {
        panic!("{long:?}")
    };
    assert_eq!(e.code(), ErrorCode::TooLarge);
    // Unauthenticated connections can neither upload nor download.
    let anon = client(&r).await;
    let res = anon.upload_blob(b"abc", 3).await;
    let Some(blob_response::Kind::Error(e)) = res.kind else {
        panic!("{res:?}")
    };
    assert_eq!(e.code(), ErrorCode::Unauthenticated);
    let e = anon.download_blob(&u.id, &u.capability).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthenticated);

    r.stop().await;
}

on_both_stores!(rate_limits_and_caps_refuse_with_their_errors);
async fn rate_limits_and_caps_refuse_with_their_errors(store: StoreKind, dir: &Path) {
    let mut cfg = test_config(store, dir);
    let tight = Rate {
        per_second: 0.001,
        burst: 3,
    };
    cfg.rate.sends = Rate {
        per_second: 0.001,
        burst: 4,
    };
    cfg.rate.prekey_fetches = tight;
    cfg.rate.uploads = tight;
    cfg.rate.blob_uploads = Rate {
        per_second: 0.001,
        burst: 1,
    };
    cfg.rate.account_creations = Rate {
        per_second: 0.001,
        burst: 4,
    };
    cfg.max_envelope_bytes = 1000;
    cfg.max_queue_len = 2;
    cfg.max_devices_per_account = 3;
    cfg.max_frame_bytes = 64 * 1024;
    let r = start_relay(cfg).await;
    let alice = TestAccount::new(1);
    let bob = TestAccount::new(1);
    let a = client(&r).await;
    a.create(&alice, 1).await;
    let b = client(&r).await;
    b.create(&bob, 1).await;
    // Too many devices on a new account.
    let crowd = TestAccount::new(4);
    let res = a
        .request(client_frame::Kind::CreateAccount(api::CreateAccount {
            signed_device_list: crowd.signed_list(),
        }))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::TooManyDevices);
    // Account creation per source address (burst 4): Alice, Bob, the refused crowd, `extra`;
    // the fifth is refused.
    let extra = TestAccount::new(1);
    let _ = a
        .request(client_frame::Kind::CreateAccount(api::CreateAccount {
            signed_device_list: extra.signed_list(),
        }))
        .await;
    let (code, e) = error_of(
        &a.request(client_frame::Kind::CreateAccount(api::CreateAccount {
            signed_device_list: TestAccount::new(1).signed_list(),
        }))
        .await,
    );
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(e.retry_after_ms > 0);
    // Bob goes offline so his queue fills. Envelope over its cap (send 1 of the burst of 4).
    drop(b);
    let b = client(&r).await;
    let (code, _) = error_of(&a.send(random(), bob.id(), &[1], &[0; 1001]).await);
    assert_eq!(code, ErrorCode::TooLarge);
    // Queue cap: Bob's queue holds 2 (sends 2 and 3).
    assert!(matches!(
        a.send(random(), bob.id(), &[1], b"1").await,
        server_frame::Kind::Sent(_)
    ));
    assert!(matches!(
        a.send(random(), bob.id(), &[1], b"2").await,
        server_frame::Kind::Sent(_)
    ));
    let (code, _) = error_of(&a.send(random(), bob.id(), &[1], b"3").await);
    assert_eq!(code, ErrorCode::QueueFull);
    // Sends per device: the burst of 4 is spent.
    let (code, e) = error_of(&a.send(random(), bob.id(), &[1], b"4").await);
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(e.retry_after_ms > 0);
    // Pre-key fetches and uploads per device.
    b.authenticate(&bob, 1).await;
    for _ in 0..3 {
        let _ = b
            .request(client_frame::Kind::FetchDeviceList(api::FetchDeviceList {
                account: alice.id().to_vec(),
            }))
            .await;
    }
    let res = b
        .request(client_frame::Kind::FetchBundle(api::FetchBundle {
            account: alice.id().to_vec(),
            device_id: 1,
        }))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::RateLimited);
    for _ in 0..3 {
        ok(&b
            .request(client_frame::Kind::UploadPreKeys(bob.pre_keys(1, 1, 1, 1)))
            .await);
    }
    let res = b
        .request(client_frame::Kind::UploadPreKeys(bob.pre_keys(1, 10, 1, 1)))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::RateLimited);
    // Blob uploads per device.
    let up = b.upload_blob(b"abc", 3).await;
    assert!(matches!(up.kind, Some(blob_response::Kind::Uploaded(_))));
    let up = b.upload_blob(b"abc", 3).await;
    let Some(blob_response::Kind::Error(e)) = up.kind else {
        panic!("{up:?}")
    };
    assert_eq!(e.code(), ErrorCode::RateLimited);
    // A frame over the cap: an error frame, then the connection is closed.
    let mut huge = (70_000u32).to_be_bytes().to_vec();
    huge.extend(std::iter::repeat_n(0u8, 70_000));
    b.send_raw(huge);
    // The error frame, unless the close overtakes it (then the close code tells).
    while let Some(ev) = b.try_event(WAIT).await {
        match ev {
            server_frame::Kind::Error(e) => {
                assert_eq!(e.code(), ErrorCode::TooLarge);
                break;
            }
            server_frame::Kind::Deliver(_)
            | server_frame::Kind::QueueDrained(_)
            | server_frame::Kind::PreKeysLow(_) => {}
            other => panic!("{other:?}"),
        }
    }
    b.closed_with(limits::close::PROTOCOL).await;
    // The relay keeps serving the others.
    ok(&a.request(client_frame::Kind::Ping(api::Ping {})).await);
    let text = reqwest_metrics(r.metrics_addr.unwrap()).await;
    assert!(
        text.contains("hush_relay_refusals_total{reason=\"rate_limited\"}"),
        "{text}"
    );
    r.stop().await;
}

on_both_stores!(malformed_and_unknown_frames_get_typed_errors);
async fn malformed_and_unknown_frames_get_typed_errors(store: StoreKind, dir: &Path) {
    let r = start_relay(test_config(store, dir)).await;
    let alice = TestAccount::new(1);
    let a = client(&r).await;
    a.create(&alice, 1).await;
    // An empty request (unknown oneof).
    a.send_raw(hush_relay::frame::encode(&api::ClientFrame {
        request_id: 5,
        kind: None,
    }));
    loop {
        match a.event().await {
            server_frame::Kind::Error(e) => {
                assert_eq!(e.code(), ErrorCode::UnknownRequest);
                break;
            }
            server_frame::Kind::QueueDrained(_) | server_frame::Kind::PreKeysLow(_) => {}
            other => panic!("{other:?}"),
        }
    }
    // Garbage protobuf: an error frame, then closed; other clients are unaffected.
    let survivor = client(&r).await;
    survivor.create(&TestAccount::new(1), 1).await;
    a.send_raw(vec![0, 0, 0, 3, 0xff, 0xff, 0xff]);
    a.closed_with(limits::close::PROTOCOL).await;
    ok(&survivor
        .request(client_frame::Kind::Ping(api::Ping {}))
        .await);
    r.stop().await;
}

on_both_stores!(drain_keeps_every_acknowledged_envelope);
async fn drain_keeps_every_acknowledged_envelope(store: StoreKind, dir: &Path) {
    if store == StoreKind::Memory {
        return; // the in-memory store is not persistent by design
    }
    let cfg = test_config(store, dir);
    let r = start_relay(cfg.clone()).await;
    let alice = TestAccount::new(1);
    let bob = TestAccount::new(1);
    let a = Arc::new(client(&r).await);
    a.create(&alice, 1).await;
    let b = client(&r).await;
    b.create(&bob, 1).await;
    drop(b);
    // Sends keep going while the drain starts: every acknowledged one must survive.
    let (half, half_rx) = tokio::sync::oneshot::channel();
    let sender = {
        let a = Arc::clone(&a);
        let to = bob.id();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut half = Some(half);
            for i in 0..100_000u32 {
                match a.try_send(random(), to, &[1], &i.to_be_bytes()).await {
                    Some(server_frame::Kind::Sent(_)) => acked.push(i),
                    _ => break,
                }
                if i == 50 {
                    let _ = half.take().map(|h| h.send(()));
                }
            }
            acked
        })
    };
    half_rx.await.unwrap();
    let stop = tokio::spawn(r.stop());
    let acked = sender.await.unwrap();
    stop.await.unwrap();
    let r = start_relay(cfg).await;
    let b = client(&r).await;
    b.authenticate(&bob, 1).await;
    let got: BTreeSet<u32> = b
        .catch_up()
        .await
        .iter()
        .map(|d| u32::from_be_bytes(d.body[..4].try_into().unwrap()))
        .collect();
    assert!(acked.len() > 50);
    for i in &acked {
        assert!(
            got.contains(i),
            "acknowledged envelope {i} lost in the drain"
        );
    }
    r.stop().await;
}

on_both_stores!(per_account_limits_and_the_connection_cap_refuse);
async fn per_account_limits_and_the_connection_cap_refuse(store: StoreKind, dir: &Path) {
    let mut cfg = test_config(store, dir);
    // Each device may send 3, the account's devices together 4.
    cfg.rate.sends = Rate {
        per_second: 0.001,
        burst: 3,
    };
    cfg.rate.account_sends = Rate {
        per_second: 0.001,
        burst: 4,
    };
    cfg.max_connections = 3;
    let r = start_relay(cfg).await;
    let alice = TestAccount::new(2);
    let bob = TestAccount::new(1);
    let a1 = client(&r).await;
    a1.create(&alice, 1).await;
    let a2 = client(&r).await;
    a2.authenticate(&alice, 2).await;
    let b = client(&r).await;
    b.create(&bob, 1).await;
    for _ in 0..3 {
        assert!(matches!(
            a1.send(random(), bob.id(), &[1], b"m").await,
            server_frame::Kind::Sent(_)
        ));
    }
    // Device 1 has spent its own bucket; device 2 has tokens, but the account has one left.
    assert_eq!(
        error_of(&a1.send(random(), bob.id(), &[1], b"m").await).0,
        ErrorCode::RateLimited
    );
    assert!(matches!(
        a2.send(random(), bob.id(), &[1], b"m").await,
        server_frame::Kind::Sent(_)
    ));
    assert_eq!(
        error_of(&a2.send(random(), bob.id(), &[1], b"m").await).0,
        ErrorCode::RateLimited
    );
    // Bob's own account is unaffected.
    assert!(matches!(
        b.send(random(), alice.id(), &[1, 2], b"m").await,
        server_frame::Kind::Sent(_)
    ));
    // A fourth connection is refused at the cap; the three open ones keep working.
    let tls = hush_relay::tls::pinned_client_config(&r.fingerprint, limits::ALPN).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let refused = ep.connect(r.addr, "localhost").unwrap().await;
    assert!(refused.is_err(), "a connection past the cap was accepted");
    assert_eq!(r.metrics.connections_refused.get(), 1);
    ok(&b.request(client_frame::Kind::Ping(api::Ping {})).await);
    r.stop().await;
}

on_both_stores!(a_device_connecting_again_replaces_its_old_connection);
async fn a_device_connecting_again_replaces_its_old_connection(store: StoreKind, dir: &Path) {
    let r = start_relay(test_config(store, dir)).await;
    let alice = TestAccount::new(1);
    let bob = TestAccount::new(1);
    let a = client(&r).await;
    a.create(&alice, 1).await;
    let old = client(&r).await;
    old.create(&bob, 1).await;
    assert!(old.catch_up().await.is_empty());
    let new = client(&r).await;
    new.authenticate(&bob, 1).await;
    assert!(new.catch_up().await.is_empty());
    // The old connection is closed with "replaced"; its end does not unregister the new one.
    old.closed_with(limits::close::REPLACED).await;
    let res = a.send(random(), bob.id(), &[1], b"to the new one").await;
    assert!(matches!(res, server_frame::Kind::Sent(_)), "{res:?}");
    assert_eq!(new.next_delivery().await.body, b"to the new one");
    r.stop().await;
}

on_both_stores!(mail_committed_during_catch_up_arrives_once_in_order);
async fn mail_committed_during_catch_up_arrives_once_in_order(store: StoreKind, dir: &Path) {
    let r = start_relay(test_config(store, dir)).await;
    let bob = TestAccount::new(1);
    let b = client(&r).await;
    b.create(&bob, 1).await;
    drop(b);
    let senders: Vec<TestAccount> = (0..3).map(|_| TestAccount::new(1)).collect();
    let mut clients = Vec::new();
    for s in &senders {
        let c = client(&r).await;
        c.create(s, 1).await;
        clients.push(Arc::new(c));
    }
    // 300 queued while Bob is away; then Bob connects while 3 senders keep sending.
    // Bodies name their sender (the relay does not: envelopes carry no sender).
    let body = |sender: u8, i: u32| [&[sender][..], &i.to_be_bytes()].concat();
    for i in 0..100u32 {
        for (k, c) in clients.iter().enumerate() {
            let res = c.send(random(), bob.id(), &[1], &body(k as u8, i)).await;
            assert!(matches!(res, server_frame::Kind::Sent(_)));
        }
    }
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let c = Arc::clone(c);
            let to = bob.id();
            tokio::spawn(async move {
                for i in 100..300u32 {
                    let res = c.send(random(), to, &[1], &body(k as u8, i)).await;
                    assert!(matches!(res, server_frame::Kind::Sent(_)));
                }
            })
        })
        .collect();
    let b = client(&r).await;
    b.authenticate(&bob, 1).await;
    for t in tasks {
        t.await.unwrap();
    }
    let mut per_sender: std::collections::HashMap<u8, Vec<u32>> = Default::default();
    let mut last_seq = 0;
    for _ in 0..900 {
        let d = b.next_delivery().await;
        assert!(d.seq > last_seq, "out of queue order");
        last_seq = d.seq;
        per_sender
            .entry(d.body[0])
            .or_default()
            .push(u32::from_be_bytes(d.body[1..5].try_into().unwrap()));
    }
    assert_eq!(per_sender.len(), 3);
    for got in per_sender.values() {
        assert_eq!(
            got,
            &(0..300).collect::<Vec<u32>>(),
            "lost, duplicated or reordered"
        );
    }
    assert!(
        b.try_event(std::time::Duration::from_millis(200))
            .await
            .is_none()
    );
    r.stop().await;
}

/// GET /metrics over plain TCP.
async fn reqwest_metrics(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    // The OpenMetrics exposition ends with its end-of-file marker.
    assert!(body.ends_with("# EOF\n"), "{body}");
    text
}

/// The holder of a looked-up name, checking the proof the way a client does.
fn holder_of(k: &server_frame::Kind, name: &str) -> [u8; 32] {
    let server_frame::Kind::Username(u) = k else {
        panic!("expected a username result, got {k:?}")
    };
    let account: [u8; 32] = u.account.as_slice().try_into().unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&account).unwrap();
    let mut t = b"Hush-Username-v1".to_vec();
    t.push(u8::try_from(name.len()).unwrap());
    t.extend_from_slice(name.as_bytes());
    t.extend_from_slice(&account);
    let sig = ed25519_dalek::Signature::from_slice(&u.proof).unwrap();
    key.verify_strict(&t, &sig).expect("the proof verifies");
    account
}

on_both_stores!(usernames_are_first_come_first_served_and_a_rename_releases_the_old_one);
async fn usernames_are_first_come_first_served_and_a_rename_releases_the_old_one(
    store: StoreKind,
    dir: &Path,
) {
    let r = start_relay(test_config(store, dir)).await;
    let mut alice = TestAccount::new(1);
    let bob = TestAccount::new(1);
    let a = client(&r).await;
    a.create(&alice, 1).await;
    let b = client(&r).await;
    b.create(&bob, 1).await;
    assert_eq!(
        error_of(&b.lookup_username("alice").await).0,
        ErrorCode::NotFound
    );
    // Claimed as typed, normalized by the relay; the proof signs the normalized name.
    ok(&a
        .claim_username("Alice", alice.username_proof("alice"))
        .await);
    assert_eq!(
        holder_of(&b.lookup_username("alice").await, "alice"),
        alice.id()
    );
    assert_eq!(
        holder_of(&b.lookup_username("ALICE").await, "alice"),
        alice.id()
    );
    // Taken: another account's valid claim is refused, and counted.
    let taken = b.claim_username("alice", bob.username_proof("alice")).await;
    assert_eq!(error_of(&taken).0, ErrorCode::UsernameTaken);
    assert_eq!(
        r.metrics
            .refusals
            .get(hush_relay::ops::RefusalReason::UsernameTaken),
        1
    );
    assert_eq!(
        holder_of(&a.lookup_username("alice").await, "alice"),
        alice.id()
    );
    // Claiming one's own name again is accepted.
    ok(&a
        .claim_username("alice", alice.username_proof("alice"))
        .await);
    // Any device of the account may carry the claim: the account key's signature is what counts.
    alice.add_device(2);
    ok(&a
        .request(client_frame::Kind::PublishDeviceList(
            api::PublishDeviceList {
                signed_device_list: alice.signed_list(),
            },
        ))
        .await);
    let a2 = client(&r).await;
    a2.authenticate(&alice, 2).await;
    // A rename releases the old name at once; Bob can take it then.
    ok(&a2
        .claim_username("alicia", alice.username_proof("alicia"))
        .await);
    assert_eq!(
        error_of(&b.lookup_username("alice").await).0,
        ErrorCode::NotFound
    );
    assert_eq!(
        holder_of(&b.lookup_username("alicia").await, "alicia"),
        alice.id()
    );
    ok(&b.claim_username("alice", bob.username_proof("alice")).await);
    assert_eq!(
        holder_of(&a.lookup_username("alice").await, "alice"),
        bob.id()
    );
    // Release: the name is free; releasing again is a no-op.
    for _ in 0..2 {
        ok(&a
            .request(client_frame::Kind::ReleaseUsername(api::ReleaseUsername {}))
            .await);
    }
    assert_eq!(
        error_of(&b.lookup_username("alicia").await).0,
        ErrorCode::NotFound
    );
    // Revoking a device leaves the account's name alone.
    ok(&a
        .claim_username("alicia", alice.username_proof("alicia"))
        .await);
    alice.remove_device(2);
    ok(&a
        .request(client_frame::Kind::PublishDeviceList(
            api::PublishDeviceList {
                signed_device_list: alice.signed_list(),
            },
        ))
        .await);
    assert_eq!(
        holder_of(&b.lookup_username("alicia").await, "alicia"),
        alice.id()
    );
    r.stop().await;
}

on_both_stores!(username_claims_need_the_account_keys_signature);
async fn username_claims_need_the_account_keys_signature(store: StoreKind, dir: &Path) {
    let r = start_relay(test_config(store, dir)).await;
    let alice = TestAccount::new(1);
    let bob = TestAccount::new(1);
    let a = client(&r).await;
    a.create(&alice, 1).await;
    let b = client(&r).await;
    b.create(&bob, 1).await;
    let bad = [
        // By the device key, which the relay (or anyone holding a device) could produce.
        sign_username(alice.device(1), "alice", alice.id()),
        // Over another name.
        alice.username_proof("alicf"),
        // Binding the name to another account (Bob's valid proof, replayed by Alice's device).
        bob.username_proof("alice"),
        // Over the name as typed rather than normalized.
        sign_username(&alice.key, "Alice", alice.id()),
        // Garbage.
        vec![0; 64],
    ];
    for proof in bad {
        let res = a.claim_username("Alice", proof).await;
        assert_eq!(error_of(&res).0, ErrorCode::BadSignature, "{res:?}");
    }
    for len in [0, 63, 65] {
        let res = a.claim_username("alice", vec![1; len]).await;
        assert_eq!(error_of(&res).0, ErrorCode::Malformed);
    }
    // Nothing was bound.
    assert_eq!(
        error_of(&b.lookup_username("alice").await).0,
        ErrorCode::NotFound
    );
    r.stop().await;
}

on_both_stores!(bad_usernames_and_unauthenticated_requests_are_refused);
async fn bad_usernames_and_unauthenticated_requests_are_refused(store: StoreKind, dir: &Path) {
    let mut cfg = test_config(store, dir);
    cfg.rate.prekey_fetches = Rate {
        per_second: 0.001,
        burst: 20,
    };
    let r = start_relay(cfg).await;
    let alice = TestAccount::new(1);
    let a = client(&r).await;
    a.create(&alice, 1).await;
    let long = "a".repeat(33);
    let names = [
        "", "ab", "1abc", "_abc", ".abc", "a b", " abc", "abc\n", "al/ice", "josé", "ΑLICE", &long,
    ];
    for name in names {
        let res = a.claim_username(name, alice.username_proof(name)).await;
        assert_eq!(error_of(&res).0, ErrorCode::Malformed, "claim {name:?}");
        let res = a.lookup_username(name).await;
        assert_eq!(error_of(&res).0, ErrorCode::Malformed, "lookup {name:?}");
    }
    // The longest and shortest names are fine.
    let longest = "z".repeat(32);
    ok(&a
        .claim_username(&longest, alice.username_proof(&longest))
        .await);
    ok(&a.claim_username("abc", alice.username_proof("abc")).await);
    // Lookups share the pre-key fetch bucket (burst 20; the 12 lookups above took 12).
    let mut limited = false;
    for _ in 0..10 {
        let res = a.lookup_username("abc").await;
        if let server_frame::Kind::Error(e) = &res {
            assert_eq!(e.code(), ErrorCode::RateLimited);
            assert!(e.retry_after_ms > 0);
            limited = true;
            break;
        }
        assert_eq!(holder_of(&res, "abc"), alice.id());
    }
    assert!(limited, "lookups are rate limited");
    // Nothing of the directory before authentication.
    let anon = client(&r).await;
    let res = anon
        .claim_username("mallory", alice.username_proof("mallory"))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::Unauthenticated);
    let res = anon.lookup_username("abc").await;
    assert_eq!(error_of(&res).0, ErrorCode::Unauthenticated);
    let res = anon
        .request(client_frame::Kind::ReleaseUsername(api::ReleaseUsername {}))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::Unauthenticated);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_username_survives_a_relay_restart() {
    let dir = tempfile::tempdir().unwrap();
    let alice = TestAccount::new(1);
    let bob = TestAccount::new(1);
    {
        let r = start_relay(test_config(StoreKind::Sled, dir.path())).await;
        let a = client(&r).await;
        a.create(&alice, 1).await;
        let b = client(&r).await;
        b.create(&bob, 1).await;
        ok(&a
            .claim_username("alice", alice.username_proof("alice"))
            .await);
        ok(&b.claim_username("bob", bob.username_proof("bob")).await);
        ok(&b
            .claim_username("robert", bob.username_proof("robert"))
            .await);
        r.stop().await;
    }
    let r = start_relay(test_config(StoreKind::Sled, dir.path())).await;
    let b = client(&r).await;
    b.authenticate(&bob, 1).await;
    assert_eq!(
        holder_of(&b.lookup_username("alice").await, "alice"),
        alice.id()
    );
    assert_eq!(
        holder_of(&b.lookup_username("robert").await, "robert"),
        bob.id()
    );
    assert_eq!(
        error_of(&b.lookup_username("bob").await).0,
        ErrorCode::NotFound
    );
    r.stop().await;
}

/// A send of `body` to `to`'s devices, each envelope with the token given for it.
fn sealed_send(to: [u8; 32], envelopes: &[(u32, &[u8])], body: &[u8]) -> client_frame::Kind {
    client_frame::Kind::Send(api::Send {
        client_id: random::<16>().to_vec(),
        recipient_account: to.to_vec(),
        envelopes: envelopes
            .iter()
            .map(|(d, token)| api::OutEnvelope {
                device_id: *d,
                body: body.to_vec(),
                delivery_token: token.to_vec(),
            })
            .collect(),
        targeted: false,
    })
}

async fn anonymous(r: &hush_relay::Running) -> Client {
    let c = client(r).await;
    ok(&c
        .request(client_frame::Kind::Anonymous(api::Anonymous {}))
        .await);
    c
}

async fn set_token(c: &Client, token: &[u8], anyone: bool) {
    ok(&c
        .request(client_frame::Kind::SetDeliveryToken(
            api::SetDeliveryToken {
                token: token.to_vec(),
                anyone,
            },
        ))
        .await);
}

on_both_stores!(sealed_sends_need_the_recipient_devices_tokens_and_carry_no_sender);
async fn sealed_sends_need_the_recipient_devices_tokens_and_carry_no_sender(
    store: StoreKind,
    dir: &Path,
) {
    let r = start_relay(test_config(store, dir)).await;
    let bob = TestAccount::new(2);
    let b1 = client(&r).await;
    b1.create(&bob, 1).await;
    assert!(b1.catch_up().await.is_empty());
    let b2 = client(&r).await;
    b2.authenticate(&bob, 2).await;
    assert!(b2.catch_up().await.is_empty());
    let carol = TestAccount::new(1);
    let c = client(&r).await;
    c.create(&carol, 1).await;
    let (t1, t2, tc) = (random::<16>(), random::<16>(), random::<16>());
    set_token(&b1, &t1, false).await;
    set_token(&b2, &t2, false).await;
    set_token(&c, &tc, false).await;
    let anon = anonymous(&r).await;

    // Refused, each with UNAUTHORIZED_SEND and nothing queued: no token, a wrong token, device
    // 2's token for device 1, and carol's token (another recipient's).
    let wrong = random::<16>();
    for tokens in [
        [&[][..], &t2[..]],
        [&wrong[..], &t2[..]],
        [&t2[..], &t2[..]],
        [&t1[..], &tc[..]],
    ] {
        let got = anon
            .request(sealed_send(
                bob.id(),
                &[(1, tokens[0]), (2, tokens[1])],
                b"refused",
            ))
            .await;
        assert_eq!(error_of(&got).0, ErrorCode::UnauthorizedSend, "{got:?}");
    }
    // A malformed token is refused as such.
    let got = anon
        .request(sealed_send(bob.id(), &[(1, &t1[..5]), (2, &t2[..])], b"x"))
        .await;
    assert_eq!(error_of(&got).0, ErrorCode::UnauthorizedSend, "{got:?}");

    // With both tokens: queued, delivered with no sender anywhere in the frame.
    let got = anon
        .request(sealed_send(
            bob.id(),
            &[(1, &t1[..]), (2, &t2[..])],
            b"sealed body",
        ))
        .await;
    assert!(matches!(got, server_frame::Kind::Sent(_)), "{got:?}");
    for b in [&b1, &b2] {
        let d = b.next_delivery().await;
        assert_eq!(d.body, b"sealed body", "the refused sends queued nothing");
        let frame = d.encode_to_vec();
        assert!(!frame.windows(32).any(|w| w == carol.id()));
        b.ack(vec![d.seq]).await;
    }
    // Ephemerals too.
    let got = anon
        .request(client_frame::Kind::SendEphemeral(api::SendEphemeral {
            recipient_account: bob.id().to_vec(),
            envelopes: vec![api::OutEnvelope {
                device_id: 1,
                body: b"typing".to_vec(),
                delivery_token: wrong.to_vec(),
            }],
        }))
        .await;
    assert_eq!(error_of(&got).0, ErrorCode::UnauthorizedSend, "{got:?}");
    ok(&anon
        .request(client_frame::Kind::SendEphemeral(api::SendEphemeral {
            recipient_account: bob.id().to_vec(),
            envelopes: vec![api::OutEnvelope {
                device_id: 1,
                body: b"typing".to_vec(),
                delivery_token: t1.to_vec(),
            }],
        }))
        .await);
    let server_frame::Kind::Ephemeral(e) = b1.event().await else {
        panic!("no ephemeral")
    };
    assert_eq!(e.body, b"typing");

    // A device that accepts anyone takes sealed sends without its token; the other still needs its.
    set_token(&b2, &t2, true).await;
    let got = anon
        .request(sealed_send(
            bob.id(),
            &[(1, &t1[..]), (2, &[][..])],
            b"from anyone",
        ))
        .await;
    assert!(matches!(got, server_frame::Kind::Sent(_)), "{got:?}");
    let got = anon
        .request(sealed_send(bob.id(), &[(1, &[][..]), (2, &[][..])], b"no"))
        .await;
    assert_eq!(error_of(&got).0, ErrorCode::UnauthorizedSend, "{got:?}");
    // A rotated token: the old one stops working at once.
    let t1_new = random::<16>();
    set_token(&b1, &t1_new, false).await;
    let got = anon
        .request(sealed_send(bob.id(), &[(1, &t1[..]), (2, &t2[..])], b"old"))
        .await;
    assert_eq!(error_of(&got).0, ErrorCode::UnauthorizedSend, "{got:?}");
    let metrics = &r.metrics;
    assert_eq!(metrics.unauthorized_sends.get(), 8);
    assert_eq!(metrics.anonymous_connections.get(), 1);
    r.stop().await;
}

on_both_stores!(an_anonymous_connection_reads_public_material_and_nothing_of_an_account);
async fn an_anonymous_connection_reads_public_material_and_nothing_of_an_account(
    store: StoreKind,
    dir: &Path,
) {
    let r = start_relay(test_config(store, dir)).await;
    let bob = TestAccount::new(1);
    let b = client(&r).await;
    b.create(&bob, 1).await;
    ok(&b
        .request(client_frame::Kind::UploadPreKeys(bob.pre_keys(1, 1, 2, 2)))
        .await);
    let anon = anonymous(&r).await;
    // Device lists and bundles of anyone, and usernames, as on an authenticated connection.
    let got = anon
        .request(client_frame::Kind::FetchDeviceList(api::FetchDeviceList {
            account: bob.id().to_vec(),
        }))
        .await;
    assert!(matches!(got, server_frame::Kind::DeviceList(_)), "{got:?}");
    let got = anon
        .request(client_frame::Kind::FetchBundle(api::FetchBundle {
            account: bob.id().to_vec(),
            device_id: 1,
        }))
        .await;
    assert!(matches!(got, server_frame::Kind::Bundle(_)), "{got:?}");
    // Nothing that acts for an account or a device.
    for kind in [
        client_frame::Kind::Ack(api::Ack { seqs: vec![1] }),
        client_frame::Kind::UploadPreKeys(bob.pre_keys(1, 10, 1, 1)),
        client_frame::Kind::SetDeliveryToken(api::SetDeliveryToken {
            token: vec![1; 16],
            anyone: true,
        }),
        client_frame::Kind::RegisterPush(api::RegisterPush {
            url: "https://push.example/x".into(),
            ..Default::default()
        }),
    ] {
        let got = anon.request(kind).await;
        assert_eq!(error_of(&got).0, ErrorCode::Unauthenticated, "{got:?}");
    }
    // It never authenticates.
    let got = anon.request(client_frame::Kind::Hello(api::Hello {})).await;
    assert!(matches!(got, server_frame::Kind::Challenge(_)), "{got:?}");
    let got = anon
        .request(client_frame::Kind::Authenticate(api::Authenticate {
            account: bob.id().to_vec(),
            device_id: 1,
            signature: anon.auth_signature(&[0; 32], bob.id(), 1, bob.device(1)),
        }))
        .await;
    assert_eq!(error_of(&got).0, ErrorCode::Forbidden, "{got:?}");
    // An authenticated connection cannot turn anonymous.
    let got = b
        .request(client_frame::Kind::Anonymous(api::Anonymous {}))
        .await;
    assert_eq!(error_of(&got).0, ErrorCode::AlreadyAuthenticated, "{got:?}");
    // Blobs: uploaded by a device, downloaded with the capability alone on the anonymous
    // connection; an anonymous upload is refused.
    let blob_response::Kind::Uploaded(up) =
        b.upload_blob(b"attachment bytes", 16).await.kind.unwrap()
    else {
        panic!("upload refused")
    };
    assert_eq!(
        anon.download_blob(&up.id, &up.capability).await.unwrap(),
        b"attachment bytes"
    );
    let refused = anon.upload_blob(b"nope", 4).await;
    let Some(blob_response::Kind::Error(e)) = refused.kind else {
        panic!("anonymous upload accepted: {refused:?}")
    };
    assert_eq!(e.code, ErrorCode::Unauthenticated as i32);
    r.stop().await;
}

on_both_stores!(an_authenticated_send_without_tokens_is_an_introduction_with_a_capped_share);
async fn an_authenticated_send_without_tokens_is_an_introduction_with_a_capped_share(
    store: StoreKind,
    dir: &Path,
) {
    let mut cfg = test_config(store, dir);
    cfg.max_queue_len_per_sender = 2;
    let r = start_relay(cfg).await;
    let bob = TestAccount::new(1);
    let b = client(&r).await;
    b.create(&bob, 1).await;
    let tb = random::<16>();
    set_token(&b, &tb, false).await;
    let alice = TestAccount::new(1);
    let a = client(&r).await;
    a.create(&alice, 1).await;
    // Introductions (no token, authenticated): at most 2 in bob's queue from all strangers.
    for i in 0..2u8 {
        let got = a
            .request(sealed_send(bob.id(), &[(1, &[][..])], &[i]))
            .await;
        assert!(matches!(got, server_frame::Kind::Sent(_)), "{got:?}");
    }
    let got = a
        .request(sealed_send(bob.id(), &[(1, &[][..])], b"3"))
        .await;
    assert_eq!(error_of(&got).0, ErrorCode::SenderQuota, "{got:?}");
    // A wrong token on an authenticated connection is refused, not taken as an introduction.
    let got = a
        .request(sealed_send(bob.id(), &[(1, &random::<16>()[..])], b"w"))
        .await;
    assert_eq!(error_of(&got).0, ErrorCode::UnauthorizedSend, "{got:?}");
    // Contacts (with the token) are not held to the strangers' share.
    let anon = anonymous(&r).await;
    for i in 0..5u8 {
        let got = anon
            .request(sealed_send(bob.id(), &[(1, &tb[..])], &[i]))
            .await;
        assert!(matches!(got, server_frame::Kind::Sent(_)), "{got:?}");
    }
    for _ in 0..7 {
        b.next_delivery().await;
    }
    r.stop().await;
}

fn log_append(slot: [u8; 32], token: [u8; 32], seq: u64, entry: &[u8]) -> client_frame::Kind {
    client_frame::Kind::GroupLogAppend(api::GroupLogAppend {
        slot: slot.to_vec(),
        write_token: token.to_vec(),
        seq,
        entry: entry.to_vec(),
    })
}

async fn log_read(c: &Client, slot: [u8; 32], from_seq: u64) -> (u64, Vec<(u64, Vec<u8>)>) {
    let got = c
        .request(client_frame::Kind::GroupLogRead(api::GroupLogRead {
            slot: slot.to_vec(),
            from_seq,
            max_entries: 0,
        }))
        .await;
    let server_frame::Kind::GroupLogEntries(e) = got else {
        panic!("not entries: {got:?}")
    };
    (
        e.head,
        e.entries.into_iter().map(|e| (e.seq, e.entry)).collect(),
    )
}

on_both_stores!(group_logs_are_appended_and_read_on_anonymous_connections_one_number_at_a_time);
async fn group_logs_are_appended_and_read_on_anonymous_connections_one_number_at_a_time(
    store: StoreKind,
    dir: &Path,
) {
    let r = start_relay(test_config(store, dir)).await;
    let (slot, token) = (random::<32>(), random::<32>());
    let (a, b) = (anonymous(&r).await, anonymous(&r).await);
    assert_eq!(log_read(&a, slot, 1).await, (0, vec![]));
    let got = a.request(log_append(slot, token, 1, b"create")).await;
    assert!(
        matches!(
            got,
            server_frame::Kind::GroupLogAppended(api::GroupLogAppended { seq: 1 })
        ),
        "{got:?}"
    );
    // Two connections race for entry 2: one wins, the other learns the head.
    let (x, y) = tokio::join!(
        a.request(log_append(slot, token, 2, b"from a")),
        b.request(log_append(slot, token, 2, b"from b")),
    );
    let (winner, loser) = match (&x, &y) {
        (server_frame::Kind::GroupLogAppended(_), _) => (b"from a", &y),
        (_, server_frame::Kind::GroupLogAppended(_)) => (b"from b", &x),
        _ => panic!("no winner: {x:?} {y:?}"),
    };
    let (code, e) = error_of(loser);
    assert_eq!((code, e.log_head), (ErrorCode::LogConflict, 2));
    assert_eq!(
        log_read(&b, slot, 0).await,
        (2, vec![(1, b"create".to_vec()), (2, winner.to_vec())])
    );
    // Another token is refused; an authenticated device may use the log too.
    let got = b.request(log_append(slot, random::<32>(), 3, b"x")).await;
    assert_eq!(error_of(&got).0, ErrorCode::Forbidden);
    let alice = TestAccount::new(1);
    let dev = client(&r).await;
    dev.create(&alice, 1).await;
    let got = dev.request(log_append(slot, token, 3, b"three")).await;
    assert!(
        matches!(got, server_frame::Kind::GroupLogAppended(_)),
        "{got:?}"
    );
    assert_eq!(
        log_read(&a, slot, 3).await,
        (3, vec![(3, b"three".to_vec())])
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_log_and_its_write_check_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (slot, token) = (random::<32>(), random::<32>());
    {
        let r = start_relay(test_config(StoreKind::Sled, dir.path())).await;
        let a = anonymous(&r).await;
        for (seq, entry) in [(1, &b"one"[..]), (2, b"two")] {
            let got = a.request(log_append(slot, token, seq, entry)).await;
            assert!(
                matches!(got, server_frame::Kind::GroupLogAppended(_)),
                "{got:?}"
            );
        }
        r.stop().await;
    }
    let r = start_relay(test_config(StoreKind::Sled, dir.path())).await;
    let a = anonymous(&r).await;
    assert_eq!(
        log_read(&a, slot, 1).await,
        (2, vec![(1, b"one".to_vec()), (2, b"two".to_vec())])
    );
    let got = a.request(log_append(slot, random::<32>(), 3, b"x")).await;
    assert_eq!(error_of(&got).0, ErrorCode::Forbidden);
    let got = a.request(log_append(slot, token, 2, b"x")).await;
    assert_eq!(error_of(&got).1.log_head, 2);
    let got = a.request(log_append(slot, token, 3, b"three")).await;
    assert!(
        matches!(got, server_frame::Kind::GroupLogAppended(_)),
        "{got:?}"
    );
    r.stop().await;
}

/// A relay node on the test Redis Cluster (`HUSH_TEST_REDIS_NODES`, as the store suite), under
/// the key prefix `prefix`.
async fn redis_node(dir: &Path, prefix: &str) -> hush_relay::Running {
    let nodes = std::env::var("HUSH_TEST_REDIS_NODES").expect(
        "HUSH_TEST_REDIS_NODES is not set: run the tests with `bash scripts/test`, which starts \
         a Redis Cluster on loopback for them",
    );
    let replicas = std::env::var("HUSH_TEST_REDIS_REPLICAS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let mut cfg = test_config(StoreKind::Redis, dir);
    cfg.redis_nodes = nodes.split(',').map(str::to_owned).collect();
    cfg.redis_prefix = prefix.to_owned();
    cfg.redis_wait_replicas = replicas;
    start_relay(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_of_one_number_through_two_nodes_on_one_redis_cluster_have_one_winner() {
    let prefix = format!("t{}:", hex::encode(random::<8>()));
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = redis_node(dirs[0].path(), &prefix).await;
    let b = redis_node(dirs[1].path(), &prefix).await;
    let (ca, cb) = (anonymous(&a).await, anonymous(&b).await);
    let (slot, token) = (random::<32>(), random::<32>());
    let mut log = Vec::new();
    for seq in 1..=5u64 {
        let (x, y) = tokio::join!(
            ca.request(log_append(slot, token, seq, &[b'a', seq as u8])),
            cb.request(log_append(slot, token, seq, &[b'b', seq as u8])),
        );
        let (winner, loser) = match (&x, &y) {
            (server_frame::Kind::GroupLogAppended(_), _) => (vec![b'a', seq as u8], &y),
            (_, server_frame::Kind::GroupLogAppended(_)) => (vec![b'b', seq as u8], &x),
            _ => panic!("no winner of {seq}: {x:?} {y:?}"),
        };
        let (code, e) = error_of(loser);
        assert_eq!((code, e.log_head), (ErrorCode::LogConflict, seq), "{seq}");
        log.push((seq, winner));
    }
    // Both nodes read the one log; the write check holds through either.
    assert_eq!(log_read(&ca, slot, 1).await, (5, log.clone()));
    assert_eq!(log_read(&cb, slot, 1).await, (5, log));
    let got = cb.request(log_append(slot, random::<32>(), 6, b"x")).await;
    assert_eq!(error_of(&got).0, ErrorCode::Forbidden);
    a.stop().await;
    b.stop().await;
}

on_both_stores!(a_recovering_device_publishes_its_accounts_list_before_authenticating);
async fn a_recovering_device_publishes_its_accounts_list_before_authenticating(
    store: StoreKind,
    dir: &Path,
) {
    let r = start_relay(test_config(store, dir)).await;
    let mut alice = TestAccount::new(1);
    let a1 = client(&r).await;
    a1.create(&alice, 1).await;
    assert!(a1.catch_up().await.is_empty());
    let recover = |signed: Vec<u8>| {
        client_frame::Kind::RecoverDeviceList(api::RecoverDeviceList {
            signed_device_list: signed,
        })
    };
    // A fresh connection, never authenticated: a list of an unknown account, a stale one and
    // one not signed by the account key are refused.
    let fresh = client(&r).await;
    let stranger = TestAccount::new(1);
    let res = fresh.request(recover(stranger.signed_list())).await;
    assert_eq!(error_of(&res).0, ErrorCode::NotFound);
    let res = fresh.request(recover(alice.signed_list())).await;
    assert_eq!(error_of(&res).0, ErrorCode::StaleDeviceList);
    alice.add_device(5);
    alice.remove_device(1);
    let forged = alice.signed_list_by(alice.device(5));
    let res = fresh.request(recover(forged)).await;
    assert_eq!(error_of(&res).0, ErrorCode::BadSignature);
    // The list of the recovered account, device 1 dropped and device 5 added, signed by the
    // account key: taken; device 1 is cut off, device 5 authenticates.
    ok(&fresh.request(recover(alice.signed_list())).await);
    if let Some(ev) = a1.try_event(WAIT).await {
        assert!(matches!(ev, server_frame::Kind::Revoked(_)), "{ev:?}");
    }
    a1.closed_with(limits::close::REVOKED).await;
    let a5 = client(&r).await;
    a5.authenticate(&alice, 5).await;
    assert!(a5.catch_up().await.is_empty());
    let got = a5
        .request(client_frame::Kind::FetchDeviceList(api::FetchDeviceList {
            account: alice.id().to_vec(),
        }))
        .await;
    let server_frame::Kind::DeviceList(l) = got else {
        panic!("{got:?}")
    };
    assert_eq!(l.signed_device_list, alice.signed_list());
    r.stop().await;
}
