//! Hostile clients against the relay on 127.0.0.1:0. Each test is named for what it attacks; each
//! attack must be answered with a typed error frame (or, where the protocol says so, a close with
//! its code) while an honest pair of clients keeps sending and receiving through the same relay.
//! What `relay.rs` already covers (a wrong key, a signature made for another connection, a reused
//! challenge, stale, forged and foreign device lists, the per-device rate limits, a frame over the
//! cap, garbage protobuf, an empty request, the connection cap) is not repeated here.
//!
//! The attacks in the protocol's own frames and blob requests run over QUIC, or over TLS on TCP
//! with `HUSH_TEST_TRANSPORT=tcp` (docs/RELAY_PROTOCOL.md §17). Those on QUIC itself (streams,
//! handshakes, address validation) always run over QUIC, and their counterparts on TCP (blob
//! connections, TCP and TLS handshakes), named `..._over_tcp`, always over TCP.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::raw::{Raw, quic_endpoint, server_name, tcp_from, tls_connector, tls_refused};
use common::*;
use hush_net::client::Transport;
use hush_proto::relay_api::{
    self as api, BlobRequest, BlobResponse, ClientFrame, ErrorCode, blob_request, blob_response,
    client_frame, server_frame,
};
use hush_relay::config::{Config, RateLimit as Rate, StoreKind};
use hush_relay::ops::{RefusalReason, Timeout};
use hush_relay::{Running, frame, limits};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A relay with two honest clients, Alice and Bob, connected and authenticated.
struct Honest {
    r: Running,
    alice: TestAccount,
    bob: TestAccount,
    a: Client,
    b: Client,
    _dir: tempfile::TempDir,
}

async fn honest_with(f: impl FnOnce(&mut Config)) -> Honest {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(StoreKind::Memory, dir.path());
    f(&mut cfg);
    let r = hush_relay::start(cfg).await.unwrap();
    let alice = TestAccount::new(1);
    let bob = TestAccount::new(1);
    let a = test_client(&r).await;
    a.create(&alice, 1).await;
    assert!(a.catch_up().await.is_empty());
    let b = test_client(&r).await;
    b.create(&bob, 1).await;
    assert!(b.catch_up().await.is_empty());
    Honest {
        r,
        alice,
        bob,
        a,
        b,
        _dir: dir,
    }
}

async fn honest() -> Honest {
    honest_with(|_| {}).await
}

impl Honest {
    async fn client(&self) -> Client {
        test_client(&self.r).await
    }

    /// A new account with `devices` devices, created on the relay; its first device connected.
    async fn account(&self, devices: u32) -> (TestAccount, Client) {
        self.account_over(test_transport(), devices).await
    }

    /// As `account`, its device connected over `transport`.
    async fn account_over(&self, transport: Transport, devices: u32) -> (TestAccount, Client) {
        let acc = TestAccount::new(devices);
        let c = Client::connect_over(transport, &self.r).await;
        c.create(&acc, 1).await;
        assert!(c.catch_up().await.is_empty());
        (acc, c)
    }

    /// The honest pair still works: Alice sends, Bob receives and acknowledges, and back.
    async fn still_serving(&self) {
        let body = random::<24>();
        let res = self.a.send(random(), self.bob.id(), &[1], &body).await;
        assert!(matches!(res, server_frame::Kind::Sent(_)), "{res:?}");
        let d = self.b.next_delivery().await;
        assert_eq!(d.body, body);
        self.b.ack(vec![d.seq]).await;
        let res = self.b.send(random(), self.alice.id(), &[1], &body).await;
        assert!(matches!(res, server_frame::Kind::Sent(_)), "{res:?}");
        let d = self.a.next_delivery().await;
        assert_eq!(d.body, body);
        self.a.ack(vec![d.seq]).await;
    }

    async fn stop(self) {
        self.r.stop().await;
    }
}

fn ok(k: &server_frame::Kind) {
    assert!(
        matches!(k, server_frame::Kind::Ok(_)),
        "expected Ok, got {k:?}"
    );
}

/// A QUIC client endpoint on 127.0.0.1 pinned to the relay.
fn endpoint(pin: &str, window: Option<u32>) -> quinn::Endpoint {
    quic_endpoint(hush_testkit::relay::any_port(), pin, window)
}

/// Waits until the relay closes the QUIC connection `conn`; its application close code.
async fn close_code(conn: &quinn::Connection) -> Option<u64> {
    match tokio::time::timeout(Duration::from_secs(30), conn.closed())
        .await
        .expect("not closed in time")
    {
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn authenticate_frame(account: [u8; 32], device: u32, signature: Vec<u8>) -> client_frame::Kind {
    client_frame::Kind::Authenticate(api::Authenticate {
        account: account.to_vec(),
        device_id: device,
        signature,
    })
}

async fn challenge(c: &Client) -> Vec<u8> {
    match c.request(client_frame::Kind::Hello(api::Hello {})).await {
        server_frame::Kind::Challenge(ch) => ch.nonce,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_authentication_and_impersonation_are_refused() {
    let h = honest().await;
    let carol = TestAccount::new(1);
    let c1 = h.client().await;
    let created = c1
        .request(client_frame::Kind::CreateAccount(api::CreateAccount {
            signed_device_list: carol.signed_list(),
        }))
        .await;
    ok(&created);
    // Carol authenticates; an observer records her Authenticate frame.
    let nonce = challenge(&c1).await;
    let sig = c1.auth_signature(&nonce, carol.id(), 1, carol.device(1));
    ok(&c1
        .request(authenticate_frame(carol.id(), 1, sig.clone()))
        .await);
    // Replayed on another connection: with no challenge there, and after asking for one (the
    // exporter and the nonce differ).
    let m = h.client().await;
    let res = m
        .request(authenticate_frame(carol.id(), 1, sig.clone()))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::AuthFailed);
    challenge(&m).await;
    let res = m
        .request(authenticate_frame(carol.id(), 1, sig.clone()))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::AuthFailed);
    // Replayed on Carol's own connection: already authenticated.
    let res = c1.request(authenticate_frame(carol.id(), 1, sig)).await;
    assert_eq!(error_of(&res).0, ErrorCode::AlreadyAuthenticated);
    ok(&c1.request(client_frame::Kind::Ping(api::Ping {})).await);
    // Mallory, with a device of her own, claims to be Carol's device, signing with her own
    // device key over the right transcript; and her own account with Carol's device id signed
    // by her account key.
    let (mallory, mc) = h.account(1).await;
    let m2 = h.client().await;
    let nonce = challenge(&m2).await;
    let forged = m2.auth_signature(&nonce, carol.id(), 1, mallory.device(1));
    let res = m2.request(authenticate_frame(carol.id(), 1, forged)).await;
    assert_eq!(error_of(&res).0, ErrorCode::AuthFailed);
    let nonce = challenge(&m2).await;
    let forged = m2.auth_signature(&nonce, mallory.id(), 7, &mallory.key);
    let res = m2
        .request(authenticate_frame(mallory.id(), 7, forged))
        .await;
    // Device 7 is on no list: told as such (lists are public), and counted as a failure.
    assert_eq!(error_of(&res).0, ErrorCode::DeviceRevoked);
    // A signature of the wrong length and an account id of the wrong length.
    let m3 = h.client().await;
    challenge(&m3).await;
    let res = m3
        .request(authenticate_frame(carol.id(), 1, vec![7; 63]))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::AuthFailed);
    challenge(&m3).await;
    let res = m3
        .request(client_frame::Kind::Authenticate(api::Authenticate {
            account: vec![1; 31],
            device_id: 1,
            signature: vec![0; 64],
        }))
        .await;
    assert!(
        matches!(
            error_of(&res).0,
            ErrorCode::Malformed | ErrorCode::AuthFailed
        ),
        "{res:?}"
    );
    // Carol's connection was not replaced by any of this: mail still reaches her there.
    let res = h.a.send(random(), carol.id(), &[1], b"for carol").await;
    assert!(matches!(res, server_frame::Kind::Sent(_)), "{res:?}");
    assert_eq!(c1.next_delivery().await.body, b"for carol");
    ok(&mc.request(client_frame::Kind::Ping(api::Ping {})).await);
    h.still_serving().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_devices_mailbox_can_be_neither_read_nor_acknowledged() {
    let h = honest().await;
    let dave = TestAccount::new(2);
    let d1 = h.client().await;
    d1.create(&dave, 1).await;
    assert!(d1.catch_up().await.is_empty());
    for i in 0..5u8 {
        let res = h.a.send(random(), dave.id(), &[1, 2], &[b'm', i]).await;
        assert!(matches!(res, server_frame::Kind::Sent(_)), "{res:?}");
    }
    let mut seqs = Vec::new();
    for _ in 0..5 {
        seqs.push(d1.next_delivery().await.seq);
    }
    // Mallory acknowledges every sequence number Dave's devices could have (and more): the relay
    // applies an Ack to the authenticated device's own queue only, so nothing of Dave's goes.
    let (mallory, mc) = h.account(1).await;
    let max = *seqs.iter().max().unwrap();
    ok(&mc
        .request(client_frame::Kind::Ack(api::Ack {
            seqs: (0..=max + 100).collect(),
        }))
        .await);
    // An Ack too long to process is refused; before authentication, it is refused too.
    let res = mc
        .request(client_frame::Kind::Ack(api::Ack {
            seqs: (0..5000).collect(),
        }))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::TooLarge);
    let anon = h.client().await;
    let res = anon
        .request(client_frame::Kind::Ack(api::Ack { seqs: seqs.clone() }))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::Unauthenticated);
    // Reading: Mallory cannot authenticate as Dave's offline device with her key.
    let nonce = challenge(&anon).await;
    let forged = anon.auth_signature(&nonce, dave.id(), 2, mallory.device(1));
    let res = anon.request(authenticate_frame(dave.id(), 2, forged)).await;
    assert_eq!(error_of(&res).0, ErrorCode::AuthFailed);
    // Mallory's own connection never saw Dave's mail.
    assert!(
        mc.try_event(Duration::from_millis(200)).await.is_none(),
        "Mallory got something"
    );
    // Dave's second device finds all five, in order.
    let d2 = h.client().await;
    d2.authenticate(&dave, 2).await;
    let got: Vec<Vec<u8>> = d2.catch_up().await.into_iter().map(|d| d.body).collect();
    assert_eq!(
        got,
        (0..5u8).map(|i| vec![b'm', i]).collect::<Vec<_>>(),
        "device 2"
    );
    // And device 1, reconnecting without having acknowledged, gets them again.
    drop(d1);
    let d1 = h.client().await;
    d1.authenticate(&dave, 1).await;
    assert_eq!(d1.catch_up().await.len(), 5);
    h.still_serving().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_keys_signed_by_another_device_or_key_are_refused() {
    let h = honest().await;
    let upload = h.bob.pre_keys(1, 1, 20, 20);
    ok(&h
        .b
        .request(client_frame::Kind::UploadPreKeys(upload.clone()))
        .await);
    let (mallory, mc) = h.account(1).await;
    // Mallory replays Bob's upload (signed by Bob's device key) as her own: it does not verify
    // under her device key.
    let res = mc
        .request(client_frame::Kind::UploadPreKeys(upload.clone()))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::BadSignature);
    // Keys signed with her account key instead of her device key.
    let as_account = TestAccount {
        key: mallory.key.clone(),
        devices: vec![(1, mallory.key.clone(), random())],
        version: 1,
    };
    let res = mc
        .request(client_frame::Kind::UploadPreKeys(
            as_account.pre_keys(1, 1, 2, 2),
        ))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::BadSignature);
    // Her own signed pre-key with Bob's last-resort ML-KEM key.
    let mut mixed = mallory.pre_keys(1, 1, 2, 2);
    mixed.last_resort_kem_pre_key = upload.last_resort_kem_pre_key.clone();
    let res = mc.request(client_frame::Kind::UploadPreKeys(mixed)).await;
    assert_eq!(error_of(&res).0, ErrorCode::BadSignature);
    // One of Bob's one-time ML-KEM keys in her upload.
    let mut mixed = mallory.pre_keys(1, 1, 2, 2);
    mixed.kem_pre_keys.push(upload.kem_pre_keys[0].clone());
    let res = mc.request(client_frame::Kind::UploadPreKeys(mixed)).await;
    assert_eq!(error_of(&res).0, ErrorCode::BadSignature);
    // Wrong sizes, a missing signed pre-key, and before authentication.
    let mut bad = mallory.pre_keys(1, 1, 1, 1);
    bad.one_time_pre_keys = vec![
        hush_proto::wire::OneTimePreKey {
            id: 5,
            public_key: vec![1; 31],
        }
        .encode_to_vec(),
    ];
    let res = mc.request(client_frame::Kind::UploadPreKeys(bad)).await;
    assert_eq!(error_of(&res).0, ErrorCode::Malformed);
    let mut bad = mallory.pre_keys(1, 1, 1, 1);
    bad.signed_pre_key.clear();
    let res = mc.request(client_frame::Kind::UploadPreKeys(bad)).await;
    assert!(
        matches!(
            error_of(&res).0,
            ErrorCode::Malformed | ErrorCode::BadSignature
        ),
        "{res:?}"
    );
    let anon = h.client().await;
    let res = anon
        .request(client_frame::Kind::UploadPreKeys(upload.clone()))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::Unauthenticated);
    // Mallory has no pre-keys on the relay; Bob's bundle is still Bob's own.
    let res =
        h.a.request(client_frame::Kind::FetchBundle(api::FetchBundle {
            account: mallory.id().to_vec(),
            device_id: 1,
        }))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::NotFound);
    let server_frame::Kind::Bundle(b) =
        h.a.request(client_frame::Kind::FetchBundle(api::FetchBundle {
            account: h.bob.id().to_vec(),
            device_id: 1,
        }))
        .await
    else {
        panic!()
    };
    let b = hush_proto::wire::PreKeyBundle::decode(b.bundle.as_slice()).unwrap();
    assert_eq!(
        b.signed_pre_key.unwrap().encode_to_vec(),
        upload.signed_pre_key
    );
    assert_eq!(b.one_time_pre_key.unwrap().id, 1);
    h.still_serving().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_lists_rolled_back_forged_or_for_another_account_are_refused() {
    let h = honest().await;
    let (mut mallory, mc) = h.account(1).await;
    let publish = |bytes: Vec<u8>| {
        client_frame::Kind::PublishDeviceList(api::PublishDeviceList {
            signed_device_list: bytes,
        })
    };
    mallory.add_device(2);
    let v2 = mallory.signed_list();
    ok(&mc.request(publish(v2.clone())).await);
    mallory.add_device(3);
    let v3 = mallory.signed_list();
    ok(&mc.request(publish(v3.clone())).await);
    // A lower version (the relay never goes back), and version 0.
    let res = mc.request(publish(v2)).await;
    assert_eq!(error_of(&res).0, ErrorCode::StaleDeviceList);
    let v = mallory.version;
    mallory.version = 0;
    let zero = mallory.signed_list();
    mallory.version = v;
    let res = mc.request(publish(zero)).await;
    assert_eq!(error_of(&res).0, ErrorCode::Malformed);
    // A higher version with one bit of the signature flipped, and with the list bytes changed.
    mallory.version += 1;
    let good = mallory.signed_list();
    let mut signed = hush_proto::wire::SignedDeviceList::decode(good.as_slice()).unwrap();
    signed.signature[5] ^= 0x10;
    let res = mc.request(publish(signed.encode_to_vec())).await;
    assert_eq!(error_of(&res).0, ErrorCode::BadSignature);
    let mut signed = hush_proto::wire::SignedDeviceList::decode(good.as_slice()).unwrap();
    let last = signed.device_list.len() - 1;
    signed.device_list[last] ^= 1;
    let res = mc.request(publish(signed.encode_to_vec())).await;
    assert!(
        matches!(
            error_of(&res).0,
            ErrorCode::BadSignature | ErrorCode::Malformed
        ),
        "{res:?}"
    );
    // Bob's account: a list naming his account signed by Mallory, as a publication and as a
    // creation; and Bob's own creation replayed.
    let mut bob = TestAccount {
        key: h.bob.key.clone(),
        devices: h.bob.devices.clone(),
        version: 2,
    };
    bob.add_device(9);
    let res = mc.request(publish(bob.signed_list_by(&mallory.key))).await;
    assert_eq!(error_of(&res).0, ErrorCode::Forbidden);
    let res = mc
        .request(client_frame::Kind::CreateAccount(api::CreateAccount {
            signed_device_list: bob.signed_list_by(&mallory.key),
        }))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::BadSignature);
    let res = mc
        .request(client_frame::Kind::CreateAccount(api::CreateAccount {
            signed_device_list: h.bob.signed_list(),
        }))
        .await;
    assert_eq!(error_of(&res).0, ErrorCode::AccountExists);
    // Garbage in place of a list.
    let res = mc.request(publish(vec![0xff; 40])).await;
    assert_eq!(error_of(&res).0, ErrorCode::Malformed);
    // The relay still holds v3 for Mallory and Bob's original list.
    let fetch = |acc: [u8; 32]| {
        client_frame::Kind::FetchDeviceList(api::FetchDeviceList {
            account: acc.to_vec(),
        })
    };
    let server_frame::Kind::DeviceList(l) = h.a.request(fetch(mallory.id())).await else {
        panic!()
    };
    assert_eq!(l.signed_device_list, v3);
    let server_frame::Kind::DeviceList(l) = h.a.request(fetch(h.bob.id())).await else {
        panic!()
    };
    assert_eq!(l.signed_device_list, h.bob.signed_list());
    // Bob's device 9 does not exist: a send naming it is refused.
    let (code, e) = error_of(&h.a.send(random(), h.bob.id(), &[1, 9], b"x").await);
    assert_eq!(
        (code, e.extra_devices),
        (ErrorCode::DeviceMismatch, vec![9])
    );
    h.still_serving().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_key_claims_beyond_the_rate_limits_are_refused_and_spare_the_rest() {
    let h = honest_with(|cfg| {
        cfg.rate.prekey_fetches = Rate {
            per_second: 0.001,
            burst: 5,
        };
        cfg.rate.account_prekey_fetches = Rate {
            per_second: 0.001,
            burst: 8,
        };
    })
    .await;
    ok(&h
        .b
        .request(client_frame::Kind::UploadPreKeys(
            h.bob.pre_keys(1, 1, 20, 20),
        ))
        .await);
    let claim = || {
        client_frame::Kind::FetchBundle(api::FetchBundle {
            account: h.bob.id().to_vec(),
            device_id: 1,
        })
    };
    // Mallory drains Bob's one-time keys from two devices of her account.
    let mallory = TestAccount::new(2);
    let m1 = h.client().await;
    m1.create(&mallory, 1).await;
    let m2 = h.client().await;
    m2.authenticate(&mallory, 2).await;
    for _ in 0..5 {
        assert!(matches!(
            m1.request(claim()).await,
            server_frame::Kind::Bundle(_)
        ));
    }
    let (code, e) = error_of(&m1.request(claim()).await);
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(e.retry_after_ms > 0);
    // Her second device has its own bucket, but the account's is nearly spent.
    for _ in 0..3 {
        assert!(matches!(
            m2.request(claim()).await,
            server_frame::Kind::Bundle(_)
        ));
    }
    let (code, e) = error_of(&m2.request(claim()).await);
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(e.retry_after_ms > 0);
    // Refusals took nothing: 8 of Bob's 20 one-time keys are gone, the next goes to Alice.
    let server_frame::Kind::Bundle(b) = h.a.request(claim()).await else {
        panic!()
    };
    let b = hush_proto::wire::PreKeyBundle::decode(b.bundle.as_slice()).unwrap();
    assert_eq!(b.one_time_pre_key.unwrap().id, 9);
    assert!(!b.kem_pre_key.unwrap().last_resort);
    h.still_serving().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_truncated_and_malformed_frames_get_typed_errors_and_a_close() {
    let h = honest().await;
    let send = ClientFrame {
        request_id: 9,
        kind: Some(client_frame::Kind::Send(api::Send {
            client_id: random::<16>().to_vec(),
            recipient_account: h.bob.id().to_vec(),
            envelopes: vec![api::OutEnvelope {
                device_id: 1,
                body: vec![7; 300],
                delivery_token: Vec::new(),
            }],
            ..Default::default()
        })),
    }
    .encode_to_vec();
    let cases: Vec<(&str, Vec<u8>, bool, ErrorCode)> = vec![
        // A header announcing 4 GiB, nothing after it: refused from the header alone.
        (
            "4 GiB header",
            u32::MAX.to_be_bytes().to_vec(),
            false,
            ErrorCode::TooLarge,
        ),
        // Just over the cap.
        (
            "cap + 1",
            ((1 << 20) + 1u32).to_be_bytes().to_vec(),
            false,
            ErrorCode::TooLarge,
        ),
        // A Send cut in the middle of its envelope, framed with the cut length.
        (
            "truncated protobuf",
            framed(&send[..send.len() / 2]),
            false,
            ErrorCode::Malformed,
        ),
        // A frame whose body stops early, then the stream ends.
        (
            "truncated frame",
            {
                let mut f = framed(&send);
                f.truncate(40);
                f
            },
            true,
            ErrorCode::Malformed,
        ),
        // A header cut in two, then the end of the stream.
        ("truncated header", vec![0, 0], true, ErrorCode::Malformed),
        // A varint that never ends (11 continuation bytes).
        (
            "endless varint",
            framed(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ]),
            false,
            ErrorCode::Malformed,
        ),
        // Field 2 (Hello, a message) with the varint wire type.
        (
            "wrong wire type",
            framed(&[0x10, 0x01]),
            false,
            ErrorCode::Malformed,
        ),
        // A nested message whose length runs past the end of the frame.
        (
            "nested overrun",
            framed(&[0x4a, 0x7f, 0x0a, 0x01]),
            false,
            ErrorCode::Malformed,
        ),
        // Wire types 6 and 7 do not exist.
        (
            "invalid wire type",
            framed(&[0x0e, 0x00]),
            false,
            ErrorCode::Malformed,
        ),
    ];
    for (name, bytes, finish, code) in cases {
        let mut raw = Raw::connect(test_transport(), &h.r).await;
        // Half of them after authenticating, half before.
        if name.len() % 2 == 0 {
            let acc = TestAccount::new(1);
            raw.request(
                100,
                client_frame::Kind::CreateAccount(api::CreateAccount {
                    signed_device_list: acc.signed_list(),
                }),
            )
            .await;
            raw.authenticate(&acc, 1).await;
        }
        raw.write(&bytes).await;
        if finish {
            raw.finish().await;
        }
        raw.refused_and_closed(code).await;
        h.still_serving().await;
        eprintln!("{name}: {code:?}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_types_are_refused_and_the_connection_stays_usable() {
    let h = honest().await;
    let (_m, mc) = h.account(1).await;
    // A ClientFrame with request id 7 and only a field this protocol version does not define
    // (field 99): the request is unknown, the connection stays.
    mc.send_raw(framed(&[0x08, 0x07, 0x98, 0x06, 0x01]));
    // Unknown fields of every wire type inside a known request are ignored (forward
    // compatibility): this Ping with extra fields is answered.
    mc.send_raw(framed(&[
        0x08, 0x08, 0x6a, 0x0e, 0x98, 0x06, 0x01, 0xa2, 0x06, 0x02, 0xaa, 0xbb, 0xad, 0x06, 1, 2,
        3, 4,
    ]));
    let mut unknown = false;
    let mut ping = false;
    while !(unknown && ping) {
        // Answers to hand-made request ids arrive as events (no waiter registered).
        match mc.event().await {
            server_frame::Kind::Error(e) => {
                assert_eq!(e.code(), ErrorCode::UnknownRequest);
                unknown = true;
            }
            server_frame::Kind::Ok(_) => ping = true,
            other => panic!("{other:?}"),
        }
    }
    ok(&mc.request(client_frame::Kind::Ping(api::Ping {})).await);
    // A blob stream whose request names no kind.
    let (mut s, mut r) = mc.blob_channel().await;
    frame::write(&mut s, &BlobRequest { kind: None })
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let resp: BlobResponse = frame::read(&mut r, 1 << 16).await.unwrap();
    let Some(blob_response::Kind::Error(e)) = resp.kind else {
        panic!("{resp:?}")
    };
    assert_eq!(e.code(), ErrorCode::UnknownRequest);
    if mc.transport() == Transport::Quic {
        // Unidirectional streams are not part of the protocol: the relay grants none.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), mc.quic().open_uni())
                .await
                .is_err(),
            "a unidirectional stream was granted"
        );
        // Nor datagrams.
        assert!(mc.quic().send_datagram(vec![1, 2, 3].into()).is_err());
    }
    ok(&mc.request(client_frame::Kind::Ping(api::Ping {})).await);
    h.still_serving().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_streams_are_capped_and_answered_one_by_one() {
    let h = honest().await;
    let (_m, mc) = h.account_over(Transport::Quic, 1).await;
    // Fill every stream the relay grants (the control stream is one) with a request that never
    // completes: the next stream is not granted, and the control stream still works.
    let mut stalled = Vec::new();
    for _ in 1..limits::MAX_BIDI_STREAMS {
        let (mut s, r) = mc.quic().open_bi().await.unwrap();
        s.write_all(&[0, 0]).await.unwrap();
        stalled.push((s, r));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), mc.quic().open_bi())
            .await
            .is_err(),
        "a stream past the cap was granted"
    );
    ok(&mc.request(client_frame::Kind::Ping(api::Ping {})).await);
    h.still_serving().await;
    // Abandon them; the relay frees their slots.
    for (mut s, mut r) in stalled {
        let _ = s.reset(0u32.into());
        let _ = r.stop(0u32.into());
    }
    // Then 2000 streams, 15 at a time, each with a garbage request: every one gets its typed
    // answer.
    let total = 2000usize;
    let mut answered = 0usize;
    let conn = mc.quic().clone();
    while answered < total {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..(limits::MAX_BIDI_STREAMS as usize - 1).min(total - answered) {
            let conn = conn.clone();
            set.spawn(async move {
                let (mut s, mut r) = tokio::time::timeout(WAIT, conn.open_bi())
                    .await
                    .expect("no stream granted")
                    .unwrap();
                s.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
                let _ = s.finish();
                let resp: BlobResponse = tokio::time::timeout(WAIT, frame::read(&mut r, 1 << 16))
                    .await
                    .unwrap()
                    .unwrap();
                match resp.kind {
                    Some(blob_response::Kind::Error(e)) => e.code(),
                    other => panic!("{other:?}"),
                }
            });
        }
        while let Some(code) = set.join_next().await {
            assert_eq!(code.unwrap(), ErrorCode::Malformed);
            answered += 1;
        }
    }
    ok(&mc.request(client_frame::Kind::Ping(api::Ping {})).await);
    h.still_serving().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_cut_off_without_losing_its_mail_or_stalling_others() {
    let h = honest_with(|cfg| {
        cfg.max_frame_bytes = 64 * 1024;
        cfg.max_envelope_bytes = 60 * 1024;
    })
    .await;
    let (sloth, sc) = h.account(1).await;
    drop(sc);
    // 5 MB of mail waits for it: more than its receive window plus the relay's per-connection
    // buffer. Over TCP 12 MB: the relay's socket takes a few megabytes of its own.
    let n = match test_transport() {
        Transport::Quic => 85u32,
        Transport::Tcp => 200,
    };
    for i in 0..n {
        let mut body = vec![0u8; 60 * 1024];
        body[..4].copy_from_slice(&i.to_be_bytes());
        let res = h.a.send(random(), sloth.id(), &[1], &body).await;
        assert!(matches!(res, server_frame::Kind::Sent(_)), "{res:?}");
    }
    // It authenticates with a 16 KiB window (over TCP: socket receive buffer) and then never
    // reads.
    let mut raw = {
        let any = hush_testkit::relay::any_port();
        let mut raw = Raw::connect_from(test_transport(), &h.r, any, Some(16 * 1024)).await;
        raw.authenticate(&sloth, 1).await;
        raw
    };
    // Meanwhile the others are served.
    for _ in 0..3 {
        h.still_serving().await;
    }
    // The relay gives up on the stuck writer (write timeout) with a protocol close. (Over TCP
    // the client sees the end only by reading, which would unstick the writer: it reads once
    // the relay has given up.)
    let m = Arc::clone(&h.r.metrics);
    tokio::time::timeout(Duration::from_secs(30), async {
        while m.timeouts.get(Timeout::Write) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the relay never gave up on the stuck writer");
    raw.closed_with(limits::close::PROTOCOL).await;
    assert_eq!(m.timeouts.get(Timeout::Write), 1);
    // Nothing was lost: everything is still queued, in order.
    let c = h.client().await;
    c.authenticate(&sloth, 1).await;
    let got: Vec<u32> = c
        .catch_up()
        .await
        .iter()
        .map(|d| u32::from_be_bytes(d.body[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
    h.still_serving().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_is_capped_and_idle_ones_are_closed() {
    let cap = 30u32;
    let h = honest_with(|cfg| {
        cfg.max_connections = cap;
        cfg.retry_under_load_connections = 8;
    })
    .await;
    // 60 handshakes at once from one host; none of them ever opens a control stream.
    let ep = endpoint(&h.r.fingerprint, None);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..60 {
        let connecting = ep.connect(h.r.addr, "localhost").unwrap();
        set.spawn(async move { tokio::time::timeout(WAIT, connecting).await });
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap().expect("handshake hung") {
            Ok(c) => accepted.push(c),
            Err(_) => refused += 1,
        }
    }
    // The two honest connections count: at most cap - 2 of the flood get in.
    assert!(
        accepted.len() <= (cap - 2) as usize,
        "{} accepted past a cap of {cap}",
        accepted.len()
    );
    assert!(refused >= 60 - (cap as usize - 2));
    assert!(h.r.metrics.connections_refused.get() >= refused as u64);
    // The honest ones are served throughout.
    h.still_serving().await;
    // Connections that never authenticate are closed (authentication timeout)...
    for c in &accepted {
        assert_eq!(
            close_code(c).await,
            Some(u64::from(limits::close::PROTOCOL))
        );
    }
    // ...and the slots are free again for new clients.
    let (_carol, cc) = h.account(1).await;
    ok(&cc.request(client_frame::Kind::Ping(api::Ping {})).await);
    h.still_serving().await;
    h.stop().await;
}

/// Above the Retry threshold every new connection must prove its address first. 3,000
/// connections from one client endpoint, all held open (so thousands of connection IDs are in use
/// while Retries are issued), every one of them must complete its handshake. With quinn's default
/// connection IDs (24 random bits) a Retry could name an ID already in use and that handshake
/// stalled until it timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_connections_from_one_endpoint_all_pass_address_validation() {
    const N: usize = 3000;
    const AT_ONCE: usize = 64;
    let h = honest_with(|cfg| {
        cfg.max_connections = 10_000;
        // The two honest connections are open: everything after them is retried.
        cfg.retry_under_load_connections = 2;
    })
    .await;
    let ep = endpoint(&h.r.fingerprint, None);
    let mut held = Vec::with_capacity(N);
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while held.len() < N {
        while started < N && set.len() < AT_ONCE {
            let connecting = ep.connect(h.r.addr, "localhost").unwrap();
            set.spawn(async move { tokio::time::timeout(WAIT, connecting).await });
            started += 1;
        }
        let r = set.join_next().await.unwrap().unwrap();
        let conn = r
            .unwrap_or_else(|_| panic!("handshake {} of {N} hung", held.len() + 1))
            .unwrap_or_else(|e| panic!("handshake {} of {N} failed: {e}", held.len() + 1));
        held.push(conn);
    }
    assert!(
        h.r.metrics.connections_retried.get() >= N as u64,
        "only {} Retries for {N} connections",
        h.r.metrics.connections_retried.get()
    );
    h.still_serving().await;
    for c in &held {
        c.close(0u32.into(), b"");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_requests_beyond_the_caps_are_refused_and_store_nothing() {
    let h = honest_with(|cfg| cfg.blob_max_bytes = 64 * 1024).await;
    let refused = |resp: BlobResponse| match resp.kind {
        Some(blob_response::Kind::Error(e)) => e.code(),
        other => panic!("{other:?}"),
    };
    // Declared sizes: 0 (malformed: a blob is never empty), over the cap, u64::MAX.
    assert_eq!(
        refused(h.a.upload_blob(b"abc", 0).await),
        ErrorCode::Malformed
    );
    for size in [64 * 1024 + 1, u64::MAX] {
        let code = refused(h.a.upload_blob(b"abc", size).await);
        assert_eq!(code, ErrorCode::TooLarge, "size {size}");
    }
    // Declared at the cap, then 1 byte more than declared.
    let over = vec![5u8; 64 * 1024 + 1];
    assert_eq!(
        refused(h.a.upload_blob(&over, 64 * 1024).await),
        ErrorCode::TooLarge
    );
    // A request frame over its own cap (1 KiB): refused before anything is read after it.
    let (mut s, mut r) = h.a.blob_channel().await;
    let big = BlobRequest {
        kind: Some(blob_request::Kind::Download(api::BlobDownload {
            id: vec![0; 2000],
            capability: vec![],
        })),
    };
    frame::write(&mut s, &big).await.unwrap();
    s.shutdown().await.unwrap();
    let resp: BlobResponse = tokio::time::timeout(WAIT, frame::read(&mut r, 1 << 16))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refused(resp), ErrorCode::TooLarge);
    // Nothing was stored by the refusals; a blob at the cap is accepted and reads back.
    assert_eq!(h.r.metrics.blobs_uploaded.get(), 0);
    let data = vec![9u8; 64 * 1024];
    let up = h.a.upload_blob(&data, data.len() as u64).await;
    let Some(blob_response::Kind::Uploaded(u)) = up.kind else {
        panic!("{up:?}")
    };
    assert_eq!(h.b.download_blob(&u.id, &u.capability).await.unwrap(), data);
    assert_eq!(h.r.metrics.blobs_uploaded.get(), 1);
    h.still_serving().await;
    h.stop().await;
}

/// Waits (bounded) until the relay counts `n` connections open.
async fn until_open(r: &Running, n: i64) {
    let m = Arc::clone(&r.metrics);
    tokio::time::timeout(WAIT, async {
        while m.connections_open.get() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} connections open, not {n}", m.connections_open.get()));
}

/// The counterpart over TCP of `thousands_of_streams_are_capped_and_answered_one_by_one`: there
/// each blob transfer is a connection of its own (docs/RELAY_PROTOCOL.md §17), so blob
/// connections whose request never completes count against their address block's cap like any
/// connection; past it the next is refused, the control connection is served throughout, and
/// hundreds of blob connections with a garbage request each get their typed answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_connections_stop_at_the_block_cap_and_are_answered_one_by_one_over_tcp() {
    let cap = 20u32;
    let h = honest_with(|cfg| {
        cfg.max_connections_per_block = cap;
        // Long enough that none of the stalled ones is cut off while the block fills.
        cfg.blob_request_timeout_ms = 120_000;
    })
    .await;
    let (_m, mc) = h.account_over(Transport::Tcp, 1).await;
    let mc = Arc::new(mc);
    // Alice, Bob and this control connection hold 3 of the block's connections; blob
    // connections with half a request length prefix take the rest.
    let mut stalled = Vec::new();
    for _ in 3..cap {
        let (mut s, r) = mc.blob_channel().await;
        s.write_all(&[0, 0]).await.unwrap();
        s.flush().await.unwrap();
        stalled.push((s, r));
    }
    until_open(&h.r, i64::from(cap)).await;
    assert!(
        tls_refused(
            hush_testkit::relay::any_port(),
            &h.r,
            hush_net::TCP_BLOB_ALPN
        )
        .await,
        "a blob connection past the block's cap was accepted"
    );
    let refusals = &h.r.metrics.refusals;
    assert_eq!(refusals.get(RefusalReason::TooManyConnections), 1);
    ok(&mc.request(client_frame::Kind::Ping(api::Ping {})).await);
    h.still_serving().await;
    // Abandoned, they are counted out.
    drop(stalled);
    until_open(&h.r, 3).await;
    // Then 200 blob connections, 15 at a time (as many as the streams of a QUIC connection),
    // each with a garbage request: every one gets its typed answer.
    let total = 200usize;
    let mut answered = 0usize;
    while answered < total {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..(limits::MAX_BIDI_STREAMS as usize - 1).min(total - answered) {
            let mc = Arc::clone(&mc);
            set.spawn(async move {
                let (mut s, mut r) = mc.blob_channel().await;
                s.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
                s.shutdown().await.unwrap();
                let resp: BlobResponse = tokio::time::timeout(WAIT, frame::read(&mut r, 1 << 16))
                    .await
                    .unwrap()
                    .unwrap();
                match resp.kind {
                    Some(blob_response::Kind::Error(e)) => e.code(),
                    other => panic!("{other:?}"),
                }
            });
        }
        while let Some(code) = set.join_next().await {
            assert_eq!(code.unwrap(), ErrorCode::Malformed);
            answered += 1;
        }
        // Every one of them has ended before the next 15 come.
        until_open(&h.r, 3).await;
    }
    assert_eq!(refusals.get(RefusalReason::TooManyConnections), 1);
    ok(&mc.request(client_frame::Kind::Ping(api::Ping {})).await);
    h.still_serving().await;
    h.stop().await;
}

/// The counterpart over TCP of `a_flood_of_connections_is_capped_and_idle_ones_are_closed`: TCP
/// connections that never start or never finish their TLS handshake (a slowloris on the
/// handshake) and TLS connections that never send a frame count against the connection cap,
/// the rest of a flood is refused, the honest clients are served throughout, and the relay
/// closes the stalled ones at their deadlines (the TLS handshake's, then authentication's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stalled_handshakes_and_silent_connections_is_capped_and_closed_over_tcp() {
    let cap = 30u32;
    let h = honest_with(|cfg| cfg.max_connections = cap).await;
    let tcp = h.r.tcp_addr.unwrap();
    let any = hush_testkit::relay::any_port;
    // 14 TCP connections that never finish a TLS handshake: half send nothing, half the first
    // bytes of a handshake record.
    let mut stalled = Vec::new();
    for i in 0..14 {
        let mut s = tcp_from(any(), tcp, None).await.unwrap();
        if i % 2 == 1 {
            s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        }
        stalled.push(s);
    }
    until_open(&h.r, 16).await;
    // Then 30 TLS handshakes at once: 14 find room under the cap; those never send a frame.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let connector = tls_connector(&h.r.fingerprint, hush_net::TCP_ALPN);
        set.spawn(async move {
            let stream = tcp_from(any(), tcp, None).await.ok()?;
            tokio::time::timeout(WAIT, connector.connect(server_name(), stream))
                .await
                .expect("TLS handshake hung")
                .ok()
        });
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Some(tls) => accepted.push(tls),
            None => refused += 1,
        }
    }
    assert_eq!((accepted.len(), refused), (14, 16));
    assert_eq!(h.r.metrics.connections_refused.get(), 16);
    h.still_serving().await;
    // The relay ends every stalled handshake and every silent connection (within the bound of
    // each wait: the deadlines are 10 s).
    let mut ends = tokio::task::JoinSet::new();
    for mut s in stalled {
        ends.spawn(async move {
            let mut buf = [0u8; 1024];
            let end = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
            end.await.expect("a stalled TLS handshake was never closed");
        });
    }
    for mut tls in accepted {
        ends.spawn(async move {
            let mut buf = [0u8; 1024];
            let end = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
            end.await
                .expect("a connection that never authenticated was never closed");
        });
    }
    while let Some(r) = ends.join_next().await {
        r.unwrap();
    }
    // ...and the slots are free again for new clients.
    until_open(&h.r, 2).await;
    let (_carol, cc) = h.account_over(Transport::Tcp, 1).await;
    ok(&cc.request(client_frame::Kind::Ping(api::Ping {})).await);
    h.still_serving().await;
    h.stop().await;
}
