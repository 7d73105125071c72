//! Unit tests of the connection state machine over frames and a fake clock (no sockets): the
//! tests play the shell, applying the writer operations themselves in the order they choose.
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use hush_proto::relay_api::{
    self as api, ClientFrame, ErrorCode, ServerFrame, client_frame, server_frame,
};
use hush_proto::{labels, wire};
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ConnState, Now};
use crate::config::{Config, RateLimit};
use crate::limits::{self, close};
use crate::ops::Metrics;
use crate::router::{Live, LocalRouter, ToConn};
use crate::shared::{Relay, random};
use crate::store::blobs::MemoryBlobs;
use crate::store::memory::MemoryStore;
use crate::store::{DeviceId, Envelope};
use crate::writer::Settle;

const EXPORTER: [u8; 32] = [9; 32];

fn relay_with(tune: impl FnOnce(&mut Config)) -> Arc<Relay> {
    let mut cfg = Config::default();
    let lots = RateLimit {
        per_second: 1_000_000.0,
        burst: 1_000_000,
    };
    cfg.rate.sends = lots;
    cfg.rate.account_sends = lots;
    cfg.rate.account_creations = lots;
    cfg.rate.group_log_appends = lots;
    cfg.rate.group_log_reads = lots;
    tune(&mut cfg);
    let (relay, _bg) = Relay::new(
        cfg,
        None,
        Arc::new(MemoryStore::new()),
        Arc::new(MemoryBlobs::new()),
        Arc::new(LocalRouter::new()),
        Arc::new(Metrics::new()),
        CancellationToken::new(),
        Arc::new(crate::clock::SystemClock),
    )
    .unwrap();
    relay
}

/// One account of `n` devices with its keys.
struct Account {
    key: SigningKey,
    devices: Vec<SigningKey>,
}

impl Account {
    fn new(n: usize) -> Self {
        Self {
            key: SigningKey::from_bytes(&random()),
            devices: (0..n).map(|_| SigningKey::from_bytes(&random())).collect(),
        }
    }

    fn id(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    fn device(&self, d: u32) -> DeviceId {
        DeviceId {
            account: self.id(),
            device: d,
        }
    }

    fn signed_list(&self) -> Vec<u8> {
        let list = wire::DeviceList {
            account_key: self.id().to_vec(),
            version: 1,
            issued_at: 1,
            devices: self
                .devices
                .iter()
                .zip(1u32..)
                .map(|(k, id)| {
                    let signing_key = k.verifying_key().to_bytes();
                    let dh_key = random::<32>();
                    let consent = hush_proto::transcripts::device_consent(
                        &self.id(),
                        id,
                        &signing_key,
                        &dh_key,
                    );
                    wire::DeviceEntry {
                        device_id: id,
                        identity: Some(wire::DeviceIdentityKey {
                            signing_key: signing_key.to_vec(),
                            dh_key: dh_key.to_vec(),
                        }),
                        added_at: 1,
                        consent: k.sign(&consent).to_bytes().to_vec(),
                    }
                })
                .collect(),
        }
        .encode_to_vec();
        let mut msg = labels::DEVICE_LIST.to_vec();
        msg.extend_from_slice(&list);
        wire::SignedDeviceList {
            signature: self.key.sign(&msg).to_bytes().to_vec(),
            device_list: list,
        }
        .encode_to_vec()
    }

    fn auth(&self, d: u32, nonce: &[u8]) -> client_frame::Kind {
        let nonce: [u8; 32] = nonce.try_into().unwrap();
        let t = crate::verify::auth_transcript(&EXPORTER, &nonce, &self.id(), d);
        client_frame::Kind::Authenticate(api::Authenticate {
            account: self.id().to_vec(),
            device_id: d,
            signature: self.devices[(d - 1) as usize].sign(&t).to_bytes().to_vec(),
        })
    }
}

/// The test's side of one connection: the state, its queue, and a fake clock.
struct Side {
    st: ConnState,
    rx: mpsc::UnboundedReceiver<ToConn>,
    relay: Arc<Relay>,
    t0: Instant,
    ms: u64,
}

impl Side {
    fn new(relay: &Arc<Relay>) -> Self {
        Self::from(relay, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// A connection from `remote`.
    fn from(relay: &Arc<Relay>, remote: IpAddr) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let t0 = Instant::now();
        let (st, rx) = ConnState::new(
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            remote,
            EXPORTER,
            Now {
                at: t0,
                wall_ms: 1_000,
            },
        );
        Self {
            st,
            rx,
            relay: Arc::clone(relay),
            t0,
            ms: 0,
        }
    }

    fn now(&self) -> Now {
        Now {
            at: self.t0 + Duration::from_millis(self.ms),
            wall_ms: 1_000 + self.ms,
        }
    }

    fn bytes(&mut self, b: &[u8]) {
        let now = self.now();
        self.st.receive(&self.relay, b, now);
    }

    fn request(&mut self, rid: u64, kind: client_frame::Kind) {
        let f = ClientFrame {
            request_id: rid,
            kind: Some(kind),
        };
        self.bytes(&crate::frame::encode(&f));
    }

    /// Applies the writer operations in order; returns their settles.
    fn apply(&mut self) -> Vec<Settle> {
        self.st
            .take_ops()
            .into_iter()
            .filter_map(|op| op())
            .collect()
    }

    /// Applies and settles everything, then takes in the queue.
    fn settle_all(&mut self) {
        for s in self.apply() {
            s(Ok(()));
        }
        self.take_in();
    }

    /// Hands everything queued for the connection to the state.
    fn take_in(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            let now = self.now();
            self.st.handle_message(&self.relay, m, now);
        }
    }

    /// The frames written so far.
    fn frames(&mut self) -> Vec<ServerFrame> {
        let mut buf = Vec::new();
        self.st.take_output(&mut buf);
        let mut out = Vec::new();
        let mut rest = buf.as_slice();
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            out.push(ServerFrame::decode(&rest[4..4 + len]).unwrap());
            rest = &rest[4 + len..];
        }
        out
    }

    /// Runs Hello + Authenticate for device `d` of `a`; returns the frames after the `Ok`.
    fn login(&mut self, a: &Account, d: u32) -> Vec<ServerFrame> {
        self.request(1, client_frame::Kind::Hello(api::Hello {}));
        let f = self.frames();
        let Some(server_frame::Kind::Challenge(c)) = &f[0].kind else {
            panic!("{f:?}")
        };
        let nonce = c.nonce.clone();
        self.request(2, a.auth(d, &nonce));
        let f = self.frames();
        assert!(
            matches!(f[0].kind, Some(server_frame::Kind::Ok(_))),
            "{f:?}"
        );
        f[1..].to_vec()
    }
}

fn create(relay: &Arc<Relay>, a: &Account) {
    let mut s = Side::new(relay);
    s.request(
        1,
        client_frame::Kind::CreateAccount(api::CreateAccount {
            signed_device_list: a.signed_list(),
        }),
    );
    s.settle_all();
    assert!(matches!(
        s.frames()[0].kind,
        Some(server_frame::Kind::Ok(_))
    ));
}

fn send_to(to: &Account, id: u8, body: &[u8]) -> client_frame::Kind {
    client_frame::Kind::Send(api::Send {
        client_id: vec![id; 16],
        recipient_account: to.id().to_vec(),
        envelopes: (1..=to.devices.len() as u32)
            .map(|d| api::OutEnvelope {
                device_id: d,
                body: body.to_vec(),
                delivery_token: Vec::new(),
            })
            .collect(),
        ..Default::default()
    })
}

fn error_code(f: &ServerFrame) -> ErrorCode {
    match &f.kind {
        Some(server_frame::Kind::Error(e)) => e.code(),
        other => panic!("not an error: {other:?}"),
    }
}

#[tokio::test]
async fn authentication_takes_a_fresh_challenge_and_a_listed_device_signature() {
    let relay = relay_with(|_| {});
    let alice = Account::new(2);
    create(&relay, &alice);
    let mut s = Side::new(&relay);
    // No challenge yet.
    s.request(5, alice.auth(1, &[0; 32]));
    let f = s.frames();
    assert_eq!(
        (f[0].request_id, error_code(&f[0])),
        (5, ErrorCode::AuthFailed)
    );
    // A signature over another nonce; then the challenge is used up.
    s.request(6, client_frame::Kind::Hello(api::Hello {}));
    s.frames();
    s.request(7, alice.auth(1, &[1; 32]));
    assert_eq!(error_code(&s.frames()[0]), ErrorCode::AuthFailed);
    assert!(s.st.finished().is_none());
    // Third failure: closed.
    s.request(8, alice.auth(1, &[1; 32]));
    assert_eq!(error_code(&s.frames()[0]), ErrorCode::AuthFailed);
    assert_eq!(
        s.st.finished(),
        Some((close::PROTOCOL, &b"authentication failed"[..]))
    );

    // Another connection: device 2 logs in and is told its queue is drained (and its keys low).
    let mut s = Side::new(&relay);
    let after = s.login(&alice, 2);
    assert!(
        after
            .iter()
            .any(|f| matches!(f.kind, Some(server_frame::Kind::QueueDrained(_))))
    );
    assert!(
        after
            .iter()
            .any(|f| matches!(f.kind, Some(server_frame::Kind::PreKeysLow(_))))
    );
    assert_eq!(s.st.device(), Some(alice.device(2)));
    // Once authenticated, not again.
    s.request(9, client_frame::Kind::Hello(api::Hello {}));
    s.frames();
    s.request(10, alice.auth(2, &[0; 32]));
    assert_eq!(error_code(&s.frames()[0]), ErrorCode::AlreadyAuthenticated);
}

#[tokio::test]
async fn the_authentication_deadline_closes_on_the_fake_clock() {
    let relay = relay_with(|_| {});
    let mut s = Side::new(&relay);
    let deadline = s.st.poll_timeout().unwrap();
    assert_eq!(
        deadline,
        s.t0 + Duration::from_millis(limits::AUTH_TIMEOUT_MS)
    );
    s.ms = limits::AUTH_TIMEOUT_MS - 1;
    s.st.handle_timeout(&s.relay, s.now());
    assert!(s.st.finished().is_none());
    s.ms = limits::AUTH_TIMEOUT_MS;
    s.st.handle_timeout(&s.relay, s.now());
    assert_eq!(
        s.st.finished(),
        Some((close::PROTOCOL, &b"authentication timed out"[..]))
    );
    assert!(!s.st.wants_read(1 << 20));
}

#[tokio::test]
async fn requests_are_pipelined_and_answered_out_of_order() {
    let relay = relay_with(|_| {});
    let (alice, bob) = (Account::new(1), Account::new(1));
    create(&relay, &alice);
    create(&relay, &bob);
    let mut a = Side::new(&relay);
    a.login(&alice, 1);
    let mut b = Side::new(&relay);
    b.login(&bob, 1);

    // Three sends and a ping in one read: the sends wait for the writer, the ping does not.
    let mut bytes = Vec::new();
    for (rid, id) in [(11u64, 1u8), (12, 2), (13, 3)] {
        bytes.extend(crate::frame::encode(&ClientFrame {
            request_id: rid,
            kind: Some(send_to(&bob, id, &[id; 40])),
        }));
    }
    bytes.extend(crate::frame::encode(&ClientFrame {
        request_id: 14,
        kind: Some(client_frame::Kind::Ping(api::Ping {})),
    }));
    a.bytes(&bytes);
    let f = a.frames();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].request_id, 14);
    assert_eq!(a.st.in_flight(), 3);
    assert!(a.st.wants_read(1 << 20));

    // The writer applies them in order; the flushes answer them in reverse.
    let settles = a.apply();
    assert_eq!(settles.len(), 3);
    for s in settles.into_iter().rev() {
        s(Ok(()));
        a.take_in();
    }
    let f = a.frames();
    assert_eq!(
        f.iter().map(|f| f.request_id).collect::<Vec<_>>(),
        vec![13, 12, 11]
    );
    assert!(
        f.iter()
            .all(|f| matches!(f.kind, Some(server_frame::Kind::Sent(_))))
    );
    assert_eq!(a.st.in_flight(), 0);

    // Bob got them live, in queue order, before any flush could matter.
    b.take_in();
    let got: Vec<u8> = b
        .frames()
        .iter()
        .filter_map(|f| match &f.kind {
            Some(server_frame::Kind::Deliver(d)) => Some(d.body[0]),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![1, 2, 3]);

    // A retried send (same client id) is answered and not delivered again.
    a.request(15, send_to(&bob, 2, &[2; 40]));
    a.settle_all();
    assert!(matches!(
        a.frames()[0].kind,
        Some(server_frame::Kind::Sent(_))
    ));
    b.take_in();
    assert!(b.frames().is_empty());
}

#[tokio::test]
async fn a_failed_flush_answers_internal_and_the_in_flight_cap_stops_reading() {
    let relay = relay_with(|_| {});
    let (alice, bob) = (Account::new(1), Account::new(1));
    create(&relay, &alice);
    create(&relay, &bob);
    let mut a = Side::new(&relay);
    a.login(&alice, 1);
    let mut bytes = Vec::new();
    for i in 0..=limits::MAX_IN_FLIGHT as u64 {
        bytes.extend(crate::frame::encode(&ClientFrame {
            request_id: 100 + i,
            kind: Some(send_to(&bob, (i % 250) as u8, &i.to_be_bytes())),
        }));
    }
    a.bytes(&bytes);
    // One frame past the cap stays unread.
    assert_eq!(a.st.in_flight(), limits::MAX_IN_FLIGHT);
    assert!(!a.st.wants_read(1 << 20));
    let mut settles = a.apply();
    let first = settles.remove(0);
    first(Err(crate::store::StoreError::Backend("disk gone".into())));
    a.take_in();
    // The answer frees a place: the last frame is taken.
    assert_eq!(a.st.in_flight(), limits::MAX_IN_FLIGHT);
    let f = a.frames();
    assert_eq!(
        (f[0].request_id, error_code(&f[0])),
        (100, ErrorCode::Internal)
    );
    drop(settles);
}

#[tokio::test]
async fn an_account_state_write_holds_later_requests_until_applied() {
    let relay = relay_with(|_| {});
    let alice = Account::new(1);
    let mut s = Side::new(&relay);
    let mut bytes = crate::frame::encode(&ClientFrame {
        request_id: 1,
        kind: Some(client_frame::Kind::CreateAccount(api::CreateAccount {
            signed_device_list: alice.signed_list(),
        })),
    });
    bytes.extend(crate::frame::encode(&ClientFrame {
        request_id: 2,
        kind: Some(client_frame::Kind::Hello(api::Hello {})),
    }));
    s.bytes(&bytes);
    assert!(s.frames().is_empty(), "the Hello waits for the creation");
    assert!(!s.st.wants_read(1 << 20));
    let settles = s.apply();
    s.take_in();
    // Applied, not yet durable: the Hello is answered, the creation not yet.
    let f = s.frames();
    assert_eq!(f.len(), 1);
    assert!(matches!(f[0].kind, Some(server_frame::Kind::Challenge(_))));
    for st in settles {
        st(Ok(()));
    }
    s.take_in();
    let f = s.frames();
    assert_eq!(f[0].request_id, 1);
    assert!(matches!(f[0].kind, Some(server_frame::Kind::Ok(_))));
}

#[tokio::test]
async fn a_live_envelope_after_a_gap_is_read_from_the_store_in_order() {
    let relay = relay_with(|_| {});
    let (alice, bob) = (Account::new(1), Account::new(1));
    create(&relay, &alice);
    create(&relay, &bob);
    let mut b = Side::new(&relay);
    b.login(&bob, 1);
    let env = |id: u8| Envelope {
        recipient: bob.device(1),
        share: alice.device(1),
        client_id: [id; 16],
        body: vec![id],
        received_at: 1,
    };
    // Two envelopes written behind the connection's back; only the second is announced.
    let done = relay
        .store
        .enqueue(&[env(1), env(2)], &crate::store::Quotas::queue_len(100))
        .unwrap();
    let fresh = crate::router::Fresh {
        prev: done[1].prev,
        queued: crate::store::Queued {
            seq: done[1].seq,
            envelope: env(2),
        },
    };
    relay
        .router
        .deliver(&bob.device(1), Live::Envelope(Box::new(fresh)));
    b.take_in();
    let seqs: Vec<u64> = b
        .frames()
        .iter()
        .filter_map(|f| match &f.kind {
            Some(server_frame::Kind::Deliver(d)) => Some(d.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![done[0].seq, done[1].seq]);
}

#[tokio::test]
async fn control_events_revoke_replace_and_drain() {
    let relay = relay_with(|_| {});
    let alice = Account::new(1);
    create(&relay, &alice);
    let mut s = Side::new(&relay);
    s.login(&alice, 1);
    // A second connection of the same device replaces the first.
    let mut s2 = Side::new(&relay);
    s2.login(&alice, 1);
    s.take_in();
    assert_eq!(
        s.st.finished(),
        Some((close::REPLACED, &b"connected elsewhere"[..]))
    );
    relay.router.deliver(&alice.device(1), Live::Revoked);
    s2.take_in();
    assert!(matches!(
        s2.frames().last().unwrap().kind,
        Some(server_frame::Kind::Revoked(_))
    ));
    assert_eq!(
        s2.st.finished(),
        Some((close::REVOKED, &b"device revoked"[..]))
    );
    let mut s3 = Side::new(&relay);
    s3.st.drain();
    assert!(matches!(
        s3.frames()[0].kind,
        Some(server_frame::Kind::Drain(_))
    ));
    assert_eq!(
        s3.st.finished(),
        Some((close::DRAINING, &b"relay draining"[..]))
    );
}

/// Every refusal a request can get on the connection, each with its typed error, the request id
/// it answers, and the connection left open (unless the frame itself was bad).
#[tokio::test]
async fn every_refusal_is_typed_and_leaves_the_connection_usable() {
    let relay = relay_with(|c| {
        c.max_envelopes_per_send = 2;
        c.max_envelope_bytes = 100;
        c.max_queue_len = 1;
    });
    let (alice, bob) = (Account::new(1), Account::new(2));
    create(&relay, &alice);
    create(&relay, &bob);

    // Before authentication.
    let mut s = Side::new(&relay);
    for (rid, kind) in [
        (1, send_to(&bob, 1, b"x")),
        (2, client_frame::Kind::Ack(api::Ack { seqs: vec![1] })),
        (
            3,
            client_frame::Kind::FetchDeviceList(api::FetchDeviceList {
                account: bob.id().to_vec(),
            }),
        ),
        (
            4,
            client_frame::Kind::FetchBundle(api::FetchBundle {
                account: bob.id().to_vec(),
                device_id: 1,
            }),
        ),
        (
            5,
            client_frame::Kind::ProvisionTake(api::ProvisionTake {
                channel: vec![0; 32],
            }),
        ),
    ] {
        s.request(rid, kind);
        let f = s.frames();
        assert_eq!(
            (f[0].request_id, error_code(&f[0])),
            (rid, ErrorCode::Unauthenticated)
        );
    }
    s.bytes(&crate::frame::encode(&ClientFrame {
        request_id: 6,
        kind: None,
    }));
    assert_eq!(error_code(&s.frames()[0]), ErrorCode::UnknownRequest);
    assert!(s.st.finished().is_none());

    let mut s = Side::new(&relay);
    s.login(&alice, 1);
    let mut wrong_devices = send_to(&bob, 1, b"x");
    if let client_frame::Kind::Send(x) = &mut wrong_devices {
        x.envelopes.truncate(1);
    }
    let mut twice = send_to(&bob, 2, b"x");
    if let client_frame::Kind::Send(x) = &mut twice {
        x.envelopes[1].device_id = 1;
    }
    let mut short_id = send_to(&bob, 3, b"x");
    if let client_frame::Kind::Send(x) = &mut short_id {
        x.client_id.truncate(3);
    }
    let cases: Vec<(client_frame::Kind, ErrorCode)> = vec![
        (send_to(&Account::new(1), 1, b"x"), ErrorCode::NotFound),
        (wrong_devices, ErrorCode::DeviceMismatch),
        (twice, ErrorCode::Malformed),
        (short_id, ErrorCode::Malformed),
        (send_to(&bob, 4, &[1; 101]), ErrorCode::TooLarge),
        (send_to(&bob, 5, b""), ErrorCode::Malformed),
        (
            client_frame::Kind::Ack(api::Ack {
                seqs: vec![1; limits::CATCH_UP_PAGE * 16 + 1],
            }),
            ErrorCode::TooLarge,
        ),
        (
            client_frame::Kind::FetchDeviceList(api::FetchDeviceList {
                account: vec![1; 31],
            }),
            ErrorCode::Malformed,
        ),
        (
            client_frame::Kind::FetchBundle(api::FetchBundle {
                account: bob.id().to_vec(),
                device_id: 9,
            }),
            ErrorCode::NotFound,
        ),
        (
            client_frame::Kind::RegisterPush(api::RegisterPush {
                url: "ftp://x".into(),
                ..Default::default()
            }),
            ErrorCode::Malformed,
        ),
        (
            client_frame::Kind::RegisterPush(api::RegisterPush {
                url: format!("https://x/{}", "a".repeat(limits::MAX_PUSH_URL_LEN)),
                ..Default::default()
            }),
            ErrorCode::TooLarge,
        ),
        (
            // Not a point on P-256.
            client_frame::Kind::RegisterPush(api::RegisterPush {
                url: "https://push.example/x".into(),
                p256dh: [&[4u8][..], &[7; 64]].concat(),
                auth: vec![1; 16],
            }),
            ErrorCode::Malformed,
        ),
        (
            client_frame::Kind::RegisterPush(api::RegisterPush {
                url: "https://push.example/x".into(),
                p256dh: Vec::new(),
                auth: vec![1; 16],
            }),
            ErrorCode::Malformed,
        ),
        (
            // This relay has no VAPID key.
            client_frame::Kind::PushServerKey(api::PushServerKey {}),
            ErrorCode::NotFound,
        ),
        (
            client_frame::Kind::ClaimUsername(api::ClaimUsername {
                name: "?".into(),
                proof: vec![0; 64],
            }),
            ErrorCode::Malformed,
        ),
        (
            client_frame::Kind::LookupUsername(api::LookupUsername {
                name: "nobody_here".into(),
            }),
            ErrorCode::NotFound,
        ),
        (
            client_frame::Kind::ProvisionPut(api::ProvisionPut {
                channel: vec![0; 32],
                body: vec![0; limits::MAX_PROVISION_BYTES + 1],
            }),
            ErrorCode::TooLarge,
        ),
        (
            client_frame::Kind::ProvisionTake(api::ProvisionTake {
                channel: vec![0; 32],
            }),
            ErrorCode::NotFound,
        ),
        (
            client_frame::Kind::SendEphemeral(api::SendEphemeral {
                recipient_account: bob.id().to_vec(),
                envelopes: vec![
                    api::OutEnvelope {
                        device_id: 1,
                        body: vec![1],
                        delivery_token: Vec::new(),
                    };
                    3
                ],
            }),
            ErrorCode::TooLarge,
        ),
    ];
    for (i, (kind, code)) in cases.into_iter().enumerate() {
        let rid = 100 + i as u64;
        s.request(rid, kind);
        s.settle_all();
        let f = s.frames();
        assert_eq!(
            (f[0].request_id, error_code(&f[0])),
            (rid, code),
            "case {i}"
        );
        assert!(s.st.finished().is_none(), "case {i} closed the connection");
    }

    // The writer refuses a send to a full queue (answered without waiting for a flush).
    s.request(200, send_to(&bob, 6, b"x"));
    s.settle_all();
    assert!(matches!(
        s.frames()[0].kind,
        Some(server_frame::Kind::Sent(_))
    ));
    s.request(201, send_to(&bob, 7, b"x"));
    let settles = s.apply();
    assert!(settles.is_empty());
    s.take_in();
    assert_eq!(error_code(&s.frames()[0]), ErrorCode::QueueFull);

    // Draining: sends are refused.
    relay
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    s.request(202, send_to(&bob, 8, b"x"));
    assert_eq!(error_code(&s.frames()[0]), ErrorCode::Draining);
}

#[tokio::test]
async fn rate_limits_refuse_with_a_retry_time() {
    let relay = relay_with(|c| {
        c.rate.sends = RateLimit {
            per_second: 1.0,
            burst: 1,
        };
    });
    let (alice, bob) = (Account::new(1), Account::new(1));
    create(&relay, &alice);
    create(&relay, &bob);
    let mut s = Side::new(&relay);
    s.login(&alice, 1);
    s.request(1, send_to(&bob, 1, b"x"));
    s.settle_all();
    assert!(matches!(
        s.frames()[0].kind,
        Some(server_frame::Kind::Sent(_))
    ));
    s.request(2, send_to(&bob, 2, b"x"));
    let f = s.frames();
    assert_eq!(error_code(&f[0]), ErrorCode::RateLimited);
    let Some(server_frame::Kind::Error(e)) = &f[0].kind else {
        unreachable!()
    };
    assert!(e.retry_after_ms > 0);
}

#[tokio::test]
async fn bad_frames_are_refused_and_close_the_connection() {
    let relay = relay_with(|_| {});
    // A header over the cap: refused from the header alone.
    let mut s = Side::new(&relay);
    s.bytes(&u32::MAX.to_be_bytes());
    assert_eq!(error_code(&s.frames()[0]), ErrorCode::TooLarge);
    assert_eq!(s.st.finished(), Some((close::PROTOCOL, &b"bad frame"[..])));
    // Bytes that are not a frame.
    let mut s = Side::new(&relay);
    s.bytes(&[0, 0, 0, 2, 0xff, 0xff]);
    assert_eq!(error_code(&s.frames()[0]), ErrorCode::Malformed);
    assert_eq!(s.st.finished(), Some((close::PROTOCOL, &b"bad frame"[..])));
    // A frame split across reads is taken whole; the stream ending inside one is refused.
    let mut s = Side::new(&relay);
    let hello = crate::frame::encode(&ClientFrame {
        request_id: 3,
        kind: Some(client_frame::Kind::Hello(api::Hello {})),
    });
    let (x, y) = hello.split_at(3);
    s.bytes(x);
    assert!(s.frames().is_empty());
    s.bytes(y);
    assert_eq!(s.frames()[0].request_id, 3);
    s.bytes(&[0, 0]);
    let relay2 = Arc::clone(&relay);
    s.st.peer_finished(&relay2);
    assert_eq!(error_code(&s.frames()[0]), ErrorCode::Malformed);
    assert_eq!(s.st.finished(), Some((close::PROTOCOL, &b"bad frame"[..])));
}

#[tokio::test]
async fn account_list_and_name_refusals_are_typed_and_change_nothing() {
    let relay = relay_with(|c| c.max_devices_per_account = 2);
    let (alice, bob) = (Account::new(1), Account::new(1));
    create(&relay, &alice);
    create(&relay, &bob);
    let code_of = |s: &mut Side, rid: u64, kind: client_frame::Kind| {
        s.request(rid, kind);
        s.settle_all();
        let f = s.frames();
        assert_eq!(f[0].request_id, rid);
        error_code(&f[0])
    };
    let create_with = |list: Vec<u8>| {
        client_frame::Kind::CreateAccount(api::CreateAccount {
            signed_device_list: list,
        })
    };

    let mut s = Side::new(&relay);
    // An account that exists; a list whose signature does not verify; more devices than allowed.
    assert_eq!(
        code_of(&mut s, 1, create_with(alice.signed_list())),
        ErrorCode::AccountExists
    );
    let carol = Account::new(1);
    let mut forged = wire::SignedDeviceList::decode(carol.signed_list().as_slice()).unwrap();
    forged.signature[0] ^= 1;
    assert_eq!(
        code_of(&mut s, 2, create_with(forged.encode_to_vec())),
        ErrorCode::BadSignature
    );
    assert_eq!(
        code_of(&mut s, 3, create_with(Account::new(3).signed_list())),
        ErrorCode::TooManyDevices
    );
    // None of them created anything: Carol can still be created.
    assert!(matches!(
        {
            s.request(4, create_with(carol.signed_list()));
            s.settle_all();
            s.frames()[0].kind.clone()
        },
        Some(server_frame::Kind::Ok(_))
    ));

    let mut s = Side::new(&relay);
    s.login(&alice, 1);
    let publish = |list: Vec<u8>| {
        client_frame::Kind::PublishDeviceList(api::PublishDeviceList {
            signed_device_list: list,
        })
    };
    // Another account's list; a list no newer than the stored one.
    assert_eq!(
        code_of(&mut s, 10, publish(bob.signed_list())),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code_of(&mut s, 11, publish(alice.signed_list())),
        ErrorCode::StaleDeviceList
    );
    // A name another account holds.
    let claim = |a: &Account, name: &str| {
        let t = hush_proto::transcripts::username(name.as_bytes(), &a.id());
        client_frame::Kind::ClaimUsername(api::ClaimUsername {
            name: name.into(),
            proof: a.key.sign(&t).to_bytes().to_vec(),
        })
    };
    let mut b = Side::new(&relay);
    b.login(&bob, 1);
    b.request(20, claim(&bob, "bobby"));
    b.settle_all();
    assert!(matches!(
        b.frames()[0].kind,
        Some(server_frame::Kind::Ok(_))
    ));
    assert_eq!(
        code_of(&mut s, 12, claim(&alice, "bobby")),
        ErrorCode::UsernameTaken
    );
    assert_eq!(
        relay
            .store
            .lookup_username("bobby")
            .unwrap()
            .unwrap()
            .account,
        bob.id()
    );
    assert!(s.st.finished().is_none());
}

/// Offers `channels` as an existing device would (`ProvisionOffer`), for the puts of a test.
fn offered(relay: &Arc<Relay>, channels: &[[u8; 32]]) {
    for c in channels {
        relay
            .admission
            .offer_link([9; 32], *c, 0, u64::MAX)
            .unwrap();
    }
}

fn put(channel: [u8; 32]) -> client_frame::Kind {
    client_frame::Kind::ProvisionPut(api::ProvisionPut {
        channel: channel.to_vec(),
        body: vec![7; 100],
    })
}

fn take(channel: [u8; 32]) -> client_frame::Kind {
    client_frame::Kind::ProvisionTake(api::ProvisionTake {
        channel: channel.to_vec(),
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The one frame answering the last request.
fn answer(s: &mut Side) -> ServerFrame {
    let f = s.frames();
    assert_eq!(f.len(), 1, "{f:?}");
    f[0].clone()
}

#[tokio::test]
async fn a_pending_link_lives_as_long_as_the_connection_that_left_it() {
    let relay = relay_with(|_| {});
    let alice = Account::new(1);
    create(&relay, &alice);
    let mut old = Side::new(&relay);
    old.login(&alice, 1);
    // A code no device offers is refused at once.
    let mut early = Side::from(&relay, ip("192.0.2.9"));
    early.request(1, put([1; 32]));
    assert_eq!(error_code(&answer(&mut early)), ErrorCode::NotFound);
    // The existing device offers its code.
    old.request(
        2,
        client_frame::Kind::ProvisionOffer(api::ProvisionOffer {
            channel: vec![1; 32],
        }),
    );
    assert!(matches!(
        answer(&mut old).kind,
        Some(server_frame::Kind::Ok(_))
    ));
    offered(&relay, &[[2; 32]]);

    // The new device leaves its message; its connection is kept open (unauthenticated) as long
    // as the message may wait, not just the authentication timeout.
    let mut new = Side::from(&relay, ip("192.0.2.1"));
    new.request(1, put([1; 32]));
    assert!(matches!(
        answer(&mut new).kind,
        Some(server_frame::Kind::Ok(_))
    ));
    assert_eq!(
        new.st.poll_timeout(),
        Some(new.t0 + Duration::from_millis(limits::PROVISION_TTL_MS))
    );
    assert_eq!(relay.metrics.links_pending.get(), 1);
    // The code is used: another device cannot answer it.
    let mut late = Side::from(&relay, ip("192.0.2.8"));
    late.request(1, put([1; 32]));
    assert_eq!(error_code(&answer(&mut late)), ErrorCode::NotFound);
    old.request(3, take([1; 32]));
    assert!(matches!(
        answer(&mut old).kind,
        Some(server_frame::Kind::Provision(_))
    ));
    assert_eq!(relay.metrics.links_pending.get(), 0);

    // A new device that goes away takes its message with it.
    let mut gone = Side::from(&relay, ip("192.0.2.2"));
    gone.request(1, put([2; 32]));
    answer(&mut gone);
    assert_eq!(relay.metrics.links_pending.get(), 1);
    drop(gone);
    assert_eq!(relay.metrics.links_pending.get(), 0);
    old.request(4, take([2; 32]));
    assert_eq!(error_code(&answer(&mut old)), ErrorCode::NotFound);
}

#[tokio::test]
async fn pending_links_stop_at_the_block_cap_and_the_table_cap_with_their_own_errors() {
    let relay = relay_with(|c| {
        c.max_pending_links_per_block = 2;
        c.max_pending_links = 3;
    });
    offered(&relay, &[[1; 32], [2; 32], [3; 32], [4; 32], [5; 32]]);
    let mut sides: Vec<Side> = Vec::new();
    for (i, from) in ["10.1.1.1", "10.1.1.2"].into_iter().enumerate() {
        let mut s = Side::from(&relay, ip(from));
        s.request(1, put([i as u8 + 1; 32]));
        assert!(matches!(
            answer(&mut s).kind,
            Some(server_frame::Kind::Ok(_))
        ));
        sides.push(s);
    }
    // A third from the same /24: rate limited until one of the block's links goes.
    let mut third = Side::from(&relay, ip("10.1.1.3"));
    third.request(1, put([3; 32]));
    let f = answer(&mut third);
    let Some(server_frame::Kind::Error(e)) = &f.kind else {
        panic!("{f:?}")
    };
    assert_eq!(e.code(), ErrorCode::RateLimited);
    assert!(e.retry_after_ms > 0 && e.retry_after_ms <= limits::PROVISION_TTL_MS);
    assert!(third.st.finished().is_none());
    // Another block links.
    let mut other = Side::from(&relay, ip("10.1.2.1"));
    other.request(1, put([4; 32]));
    assert!(matches!(
        answer(&mut other).kind,
        Some(server_frame::Kind::Ok(_))
    ));
    // The table is full: its own error, for everyone.
    let mut fourth = Side::from(&relay, ip("10.1.3.1"));
    fourth.request(1, put([5; 32]));
    assert_eq!(error_code(&answer(&mut fourth)), ErrorCode::LinkTableFull);
    assert_eq!(relay.metrics.links_pending.get(), 3);
    assert_eq!(
        relay
            .metrics
            .refusals
            .get(crate::ops::RefusalReason::LinkTableFull),
        1
    );
    // One block link closes: the third gets its place.
    drop(sides.remove(0));
    third.request(2, put([3; 32]));
    assert!(matches!(
        answer(&mut third).kind,
        Some(server_frame::Kind::Ok(_))
    ));
}

#[tokio::test]
async fn an_account_at_its_connection_cap_is_refused_without_counting_as_a_failure() {
    let relay = relay_with(|c| c.max_connections_per_account = 1);
    let alice = Account::new(2);
    create(&relay, &alice);
    let mut first = Side::new(&relay);
    first.login(&alice, 1);
    let mut second = Side::new(&relay);
    for round in 0..limits::MAX_AUTH_FAILURES as u64 {
        second.request(10 + 2 * round, client_frame::Kind::Hello(api::Hello {}));
        let Some(server_frame::Kind::Challenge(c)) = answer(&mut second).kind else {
            panic!("no challenge")
        };
        second.request(11 + 2 * round, alice.auth(2, &c.nonce));
        assert_eq!(
            error_code(&answer(&mut second)),
            ErrorCode::TooManyConnections
        );
    }
    assert!(second.st.finished().is_none());
    assert_eq!(second.st.device(), None);
    assert_eq!(relay.metrics.auth_failures.get(), 0);
    // The first connection ends: the second gets its place.
    drop(first);
    second.login(&alice, 2);
    assert_eq!(second.st.device(), Some(alice.device(2)));
}

#[tokio::test]
async fn authenticating_again_is_refused_as_such_and_never_closes_the_connection() {
    let relay = relay_with(|_| {});
    let alice = Account::new(1);
    create(&relay, &alice);
    let mut s = Side::new(&relay);
    s.login(&alice, 1);
    for round in 0..=limits::MAX_AUTH_FAILURES as u64 {
        s.request(10 + 2 * round, client_frame::Kind::Hello(api::Hello {}));
        let Some(server_frame::Kind::Challenge(c)) = answer(&mut s).kind else {
            panic!("no challenge")
        };
        s.request(11 + 2 * round, alice.auth(1, &c.nonce));
        assert_eq!(error_code(&answer(&mut s)), ErrorCode::AlreadyAuthenticated);
    }
    assert!(s.st.finished().is_none());
    assert_eq!(relay.metrics.auth_failures.get(), 0);
    assert_eq!(s.st.device(), Some(alice.device(1)));
}

#[tokio::test]
async fn request_id_zero_is_malformed_and_closes() {
    let relay = relay_with(|_| {});
    let mut s = Side::new(&relay);
    s.request(0, client_frame::Kind::Ping(api::Ping {}));
    let f = answer(&mut s);
    assert_eq!((f.request_id, error_code(&f)), (0, ErrorCode::Malformed));
    assert_eq!(s.st.finished(), Some((close::PROTOCOL, &b"bad frame"[..])));
}

#[tokio::test]
async fn a_request_id_still_in_flight_is_malformed_and_closes_and_a_settled_one_may_return() {
    let relay = relay_with(|_| {});
    let (alice, bob) = (Account::new(1), Account::new(1));
    create(&relay, &alice);
    create(&relay, &bob);
    let mut a = Side::new(&relay);
    a.login(&alice, 1);
    // Answered at once: the id may be used again.
    a.request(5, client_frame::Kind::Ping(api::Ping {}));
    a.request(5, client_frame::Kind::Ping(api::Ping {}));
    assert_eq!(a.frames().len(), 2);
    // A send waits for the writer; its id again while it waits is a protocol violation.
    a.request(7, send_to(&bob, 1, b"x"));
    assert_eq!(a.st.in_flight(), 1);
    a.request(7, client_frame::Kind::Ping(api::Ping {}));
    let f = a.frames();
    assert_eq!(
        (f[0].request_id, error_code(&f[0])),
        (0, ErrorCode::Malformed)
    );
    // The send is still answered under its id before the close.
    a.settle_all();
    let f = a.frames();
    assert_eq!(f[0].request_id, 7);
    assert!(matches!(f[0].kind, Some(server_frame::Kind::Sent(_))));
    assert_eq!(a.st.finished(), Some((close::PROTOCOL, &b"bad frame"[..])));
}

#[tokio::test]
async fn a_username_that_is_not_utf8_is_refused_and_the_connection_stays() {
    let relay = relay_with(|_| {});
    let alice = Account::new(1);
    create(&relay, &alice);
    let mut s = Side::new(&relay);
    s.login(&alice, 1);
    for (rid, kind) in [
        (
            20u64,
            client_frame::Kind::LookupUsername(api::LookupUsername {
                name: "alice".into(),
            }),
        ),
        (
            21,
            client_frame::Kind::ClaimUsername(api::ClaimUsername {
                name: "alice".into(),
                proof: vec![0; 64],
            }),
        ),
    ] {
        let mut bytes = crate::frame::encode(&ClientFrame {
            request_id: rid,
            kind: Some(kind),
        });
        let at = bytes.windows(5).position(|w| w == b"alice").unwrap();
        bytes[at] = 0xff;
        s.bytes(&bytes);
        let f = answer(&mut s);
        assert_eq!((f.request_id, error_code(&f)), (rid, ErrorCode::Malformed));
        assert!(s.st.finished().is_none());
    }
    s.request(22, client_frame::Kind::Ping(api::Ping {}));
    assert!(matches!(
        answer(&mut s).kind,
        Some(server_frame::Kind::Ok(_))
    ));
}

#[tokio::test]
async fn a_frame_that_does_not_arrive_whole_in_time_closes_the_connection() {
    let relay = relay_with(|c| {
        c.frame_read_timeout_ms = 1_000;
        c.frame_read_min_bytes_per_sec = 100;
    });
    let alice = Account::new(1);
    create(&relay, &alice);
    let mut s = Side::new(&relay);
    s.login(&alice, 1);
    s.settle_all();
    s.frames();
    assert_eq!(s.st.poll_timeout(), None, "nothing awaited, no deadline");
    let ping = crate::frame::encode(&ClientFrame {
        request_id: 30,
        kind: Some(client_frame::Kind::Ping(api::Ping {})),
    });
    // A whole frame in pieces, within its deadline: answered, and the deadline is gone.
    s.ms = 100;
    s.bytes(&ping[..2]);
    assert_eq!(
        s.st.poll_timeout(),
        Some(s.t0 + Duration::from_millis(1_100))
    );
    s.ms = 900;
    s.bytes(&ping[2..]);
    assert!(matches!(
        answer(&mut s).kind,
        Some(server_frame::Kind::Ok(_))
    ));
    assert_eq!(s.st.poll_timeout(), None);

    // A frame declaring 200 bytes (2 s at 100 B/s, plus 1 s) that stops one byte short.
    let mut body = ClientFrame {
        request_id: 31,
        kind: Some(client_frame::Kind::LookupUsername(api::LookupUsername {
            name: "a".repeat(190),
        })),
    }
    .encode_to_vec();
    body.truncate(200);
    let mut short = 200u32.to_be_bytes().to_vec();
    short.extend_from_slice(&body[..199]);
    s.ms = 1_000;
    for (i, b) in short.iter().enumerate() {
        // A byte now and then keeps nothing alive.
        s.ms = 1_000 + i as u64;
        s.bytes(&[*b]);
    }
    let deadline = s.t0 + Duration::from_millis(1_000 + 1_000 + 2_000);
    assert_eq!(s.st.poll_timeout(), Some(deadline));
    s.ms = 3_999;
    s.st.handle_timeout(&s.relay, s.now());
    assert!(s.st.finished().is_none());
    s.ms = 4_000;
    s.st.handle_timeout(&s.relay, s.now());
    assert_eq!(
        s.st.finished(),
        Some((close::PROTOCOL, &b"frame timed out"[..]))
    );
    assert_eq!(relay.metrics.timeouts.get(crate::ops::Timeout::Frame), 1);
    assert!(!s.st.wants_read(1 << 20));
}

#[tokio::test]
async fn the_frame_deadline_waits_while_the_connection_holds_reading_back() {
    let relay = relay_with(|c| {
        c.frame_read_timeout_ms = 1_000;
    });
    let alice = Account::new(1);
    let mut s = Side::new(&relay);
    // An account creation (a barrier) and half of the next frame: the relay holds reading back
    // until the creation is applied, so the half frame is not the client's delay.
    let mut bytes = crate::frame::encode(&ClientFrame {
        request_id: 1,
        kind: Some(client_frame::Kind::CreateAccount(api::CreateAccount {
            signed_device_list: alice.signed_list(),
        })),
    });
    let hello = crate::frame::encode(&ClientFrame {
        request_id: 2,
        kind: Some(client_frame::Kind::Hello(api::Hello {})),
    });
    bytes.extend_from_slice(&hello[..3]);
    s.bytes(&bytes);
    assert!(!s.st.wants_read(1 << 20));
    // Only the authentication deadline runs.
    assert_eq!(
        s.st.poll_timeout(),
        Some(s.t0 + Duration::from_millis(limits::AUTH_TIMEOUT_MS))
    );
    s.ms = 5_000;
    s.settle_all();
    // Reading resumes: the half frame's deadline starts now.
    assert_eq!(
        s.st.poll_timeout(),
        Some(s.t0 + Duration::from_millis(6_000))
    );
    s.bytes(&hello[3..]);
    let f = s.frames();
    assert!(
        f.iter()
            .any(|f| matches!(f.kind, Some(server_frame::Kind::Challenge(_))))
    );
    assert!(s.st.finished().is_none());
}

#[tokio::test]
async fn the_mailbox_bytes_gauge_follows_sends_acks_and_the_expiry_sweep() {
    use crate::store::usage::ENVELOPE_OVERHEAD;
    let relay = relay_with(|c| c.mailbox_ttl_ms = 60_000);
    let (alice, bob) = (Account::new(1), Account::new(2));
    create(&relay, &alice);
    create(&relay, &bob);
    let mut a = Side::new(&relay);
    a.login(&alice, 1);
    // Two sends to Bob's two devices: four envelopes of 40 bytes each.
    a.request(11, send_to(&bob, 1, &[1; 40]));
    a.request(12, send_to(&bob, 2, &[2; 40]));
    a.settle_all();
    let one = i64::try_from(40 + ENVELOPE_OVERHEAD).unwrap();
    let gauge = || relay.metrics.mailbox_bytes.get();
    assert_eq!(gauge(), 4 * one);
    // Device 1 reads and acknowledges its two.
    let mut b = Side::new(&relay);
    let seqs: Vec<u64> = b
        .login(&bob, 1)
        .iter()
        .filter_map(|f| match &f.kind {
            Some(server_frame::Kind::Deliver(d)) => Some(d.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs.len(), 2);
    b.request(3, client_frame::Kind::Ack(api::Ack { seqs }));
    b.settle_all();
    assert_eq!(gauge(), 2 * one);
    // Device 2's two expire: the sweep takes them and the gauge follows.
    assert_eq!(
        crate::server::sweep_once(&relay, 1_000 + 59_999).unwrap().0,
        0
    );
    assert_eq!(gauge(), 2 * one);
    assert_eq!(
        crate::server::sweep_once(&relay, 1_000 + 60_001).unwrap().0,
        2
    );
    assert_eq!(gauge(), 0);
    assert_eq!(relay.metrics.envelopes_expired.get(), 2);
    assert_eq!(relay.store.mailbox_bytes().unwrap(), 0);
}

#[tokio::test]
async fn a_send_names_the_device_left_out_and_the_refusal_has_its_own_reason() {
    let relay = relay_with(|c| c.max_queue_len_per_sender = 1);
    let (alice, bob) = (Account::new(1), Account::new(2));
    create(&relay, &alice);
    create(&relay, &bob);
    let mut a = Side::new(&relay);
    a.login(&alice, 1);
    // Device 2 already holds one from Alice (a targeted send); the full send reaches device 1.
    a.request(
        11,
        client_frame::Kind::Send(api::Send {
            client_id: vec![1; 16],
            recipient_account: bob.id().to_vec(),
            targeted: true,
            envelopes: vec![api::OutEnvelope {
                device_id: 2,
                body: vec![1],
                delivery_token: Vec::new(),
            }],
        }),
    );
    a.request(12, send_to(&bob, 2, &[2]));
    a.settle_all();
    let f = a.frames();
    let Some(server_frame::Kind::Sent(s)) = &f[1].kind else {
        panic!("{f:?}")
    };
    assert_eq!(s.full_devices, vec![2]);
    assert_eq!(relay.metrics.envelopes_device_full.get(), 1);
    // Now both are full for Alice: refused, with its own reason and a retry hint.
    a.request(13, send_to(&bob, 3, &[3]));
    a.settle_all();
    let f = a.frames();
    assert_eq!(error_code(&f[0]), ErrorCode::SenderQuota);
    assert_eq!(
        relay
            .metrics
            .refusals
            .get(crate::ops::RefusalReason::SenderQuota),
        1
    );
}

// ---- group logs ----

const SLOT: [u8; 32] = [0x51; 32];
const TOKEN: [u8; 32] = [0x70; 32];

fn log_append(slot: &[u8], token: &[u8], seq: u64, entry: &[u8]) -> client_frame::Kind {
    client_frame::Kind::GroupLogAppend(api::GroupLogAppend {
        slot: slot.to_vec(),
        write_token: token.to_vec(),
        seq,
        entry: entry.to_vec(),
    })
}

fn log_read(slot: &[u8], from_seq: u64, max_entries: u32) -> client_frame::Kind {
    client_frame::Kind::GroupLogRead(api::GroupLogRead {
        slot: slot.to_vec(),
        from_seq,
        max_entries,
    })
}

/// A connection from `remote` declared anonymous.
fn anonymous_from(relay: &Arc<Relay>, remote: IpAddr) -> Side {
    let mut s = Side::from(relay, remote);
    s.request(1, client_frame::Kind::Anonymous(api::Anonymous {}));
    assert!(matches!(
        answer(&mut s).kind,
        Some(server_frame::Kind::Ok(_))
    ));
    s
}

/// Sends an append, lets the writer apply it and returns its one answer.
fn append_now(s: &mut Side, rid: u64, kind: client_frame::Kind) -> ServerFrame {
    s.request(rid, kind);
    s.settle_all();
    let f = answer(s);
    assert_eq!(f.request_id, rid);
    f
}

fn appended(f: &ServerFrame) -> u64 {
    match &f.kind {
        Some(server_frame::Kind::GroupLogAppended(a)) => a.seq,
        other => panic!("not appended: {other:?}"),
    }
}

fn refused(f: &ServerFrame) -> api::Error {
    match &f.kind {
        Some(server_frame::Kind::Error(e)) => e.clone(),
        other => panic!("not an error: {other:?}"),
    }
}

/// Reads and returns (head, [(seq, entry)]).
fn read_now(
    s: &mut Side,
    rid: u64,
    slot: &[u8],
    from: u64,
    max: u32,
) -> (u64, Vec<(u64, Vec<u8>)>) {
    s.request(rid, log_read(slot, from, max));
    let f = answer(s);
    assert_eq!(f.request_id, rid);
    match f.kind {
        Some(server_frame::Kind::GroupLogEntries(e)) => (
            e.head,
            e.entries.into_iter().map(|e| (e.seq, e.entry)).collect(),
        ),
        other => panic!("not entries: {other:?}"),
    }
}

#[tokio::test]
async fn a_group_log_is_created_by_entry_one_and_guarded_by_its_token_and_number() {
    let relay = relay_with(|_| {});
    let alice = Account::new(1);
    create(&relay, &alice);
    let mut s = Side::new(&relay);
    s.login(&alice, 1);
    // No log yet: head 0, no entries; a first append of another number than 1 conflicts.
    assert_eq!(read_now(&mut s, 10, &SLOT, 1, 0), (0, vec![]));
    let e = refused(&append_now(
        &mut s,
        11,
        log_append(&SLOT, &TOKEN, 2, b"two"),
    ));
    assert_eq!((e.code(), e.log_head), (ErrorCode::LogConflict, 0));
    // Entry 1 creates the log under the token's write check.
    assert_eq!(
        appended(&append_now(
            &mut s,
            12,
            log_append(&SLOT, &TOKEN, 1, b"one")
        )),
        1
    );
    // Another token is forbidden, whatever the number.
    for (rid, seq) in [(13, 2), (14, 1), (15, 9)] {
        let e = refused(&append_now(
            &mut s,
            rid,
            log_append(&SLOT, &[0x71; 32], seq, b"x"),
        ));
        assert_eq!(e.code(), ErrorCode::Forbidden, "{e:?}");
    }
    // The token with a number that is not head + 1: LOG_CONFLICT naming the head.
    for (rid, seq) in [(16, 1), (17, 3), (18, u64::MAX)] {
        let e = refused(&append_now(
            &mut s,
            rid,
            log_append(&SLOT, &TOKEN, seq, b"x"),
        ));
        assert_eq!((e.code(), e.log_head), (ErrorCode::LogConflict, 1), "{seq}");
    }
    assert_eq!(
        appended(&append_now(
            &mut s,
            19,
            log_append(&SLOT, &TOKEN, 2, b"two")
        )),
        2
    );
    assert_eq!(
        read_now(&mut s, 20, &SLOT, 1, 0),
        (2, vec![(1, b"one".to_vec()), (2, b"two".to_vec())])
    );
    // The relay keeps only the write check, never the token.
    let check = super::group_log::write_check(&TOKEN);
    assert_ne!(check, TOKEN);
    assert_eq!(
        relay
            .store
            .group_log_append(
                &SLOT,
                &check,
                3,
                b"three",
                &crate::store::LogCaps::UNLIMITED
            )
            .unwrap(),
        crate::store::LogAppend::Appended
    );
    assert_eq!(relay.metrics.group_log_appends.get(), 2);
    assert_eq!(relay.metrics.group_log_conflicts.get(), 4);
    assert_eq!(relay.metrics.group_log_reads.get(), 2);
    assert_eq!(relay.metrics.group_log_bytes.get(), 6);
}

#[tokio::test]
async fn group_log_reads_page_by_count_and_bytes() {
    let relay = relay_with(|_| {});
    let mut s = anonymous_from(&relay, ip("192.0.2.1"));
    // Entries of 120 KiB: the byte bound of a read (512 KiB) holds four of them.
    let big = |n: u8| vec![n; 120 * 1024];
    for n in 1..=5u8 {
        assert_eq!(
            appended(&append_now(
                &mut s,
                10 + u64::from(n),
                log_append(&SLOT, &TOKEN, u64::from(n), &big(n))
            )),
            u64::from(n)
        );
    }
    let small = 6..=300u64;
    for seq in small.clone() {
        assert_eq!(
            appended(&append_now(
                &mut s,
                100 + seq,
                log_append(&SLOT, &TOKEN, seq, &seq.to_be_bytes())
            )),
            seq
        );
    }
    // From 0 (as 1): four big entries, then the bound; the head says there is more.
    let (head, page) = read_now(&mut s, 1000, &SLOT, 0, 0);
    assert_eq!(head, 300);
    assert_eq!(
        page.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(page[3].1, big(4));
    // Read on from after the last one given: the fifth big one and small ones up to the page.
    let (_, page) = read_now(&mut s, 1001, &SLOT, 5, 0);
    assert_eq!(page.len(), limits::GROUP_LOG_READ_MAX_ENTRIES);
    assert_eq!(page.first().unwrap().0, 5);
    assert_eq!(page.last().unwrap(), &(260, 260u64.to_be_bytes().to_vec()));
    // More than the page is the page; fewer is fewer.
    let (_, page) = read_now(&mut s, 1002, &SLOT, 261, u32::MAX);
    assert_eq!(
        page.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        (261..=300).collect::<Vec<_>>()
    );
    let (_, page) = read_now(&mut s, 1003, &SLOT, 10, 3);
    assert_eq!(
        page.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![10, 11, 12]
    );
    // Past the head, and far past it: the head alone.
    assert_eq!(read_now(&mut s, 1004, &SLOT, 301, 0), (300, vec![]));
    assert_eq!(read_now(&mut s, 1005, &SLOT, u64::MAX, 0), (300, vec![]));
    // Every answer fits a frame of the relay's own cap.
    s.request(1006, log_read(&SLOT, 1, 0));
    let mut out = Vec::new();
    s.st.take_output(&mut out);
    assert!(out.len() <= relay.cfg.max_frame_bytes, "{}", out.len());
}

#[tokio::test]
async fn an_anonymous_connection_appends_and_reads_and_an_undeclared_one_does_neither() {
    let relay = relay_with(|_| {});
    let mut anon = anonymous_from(&relay, ip("192.0.2.1"));
    assert_eq!(
        appended(&append_now(
            &mut anon,
            2,
            log_append(&SLOT, &TOKEN, 1, b"one")
        )),
        1
    );
    assert_eq!(
        read_now(&mut anon, 3, &SLOT, 1, 0),
        (1, vec![(1, b"one".to_vec())])
    );
    // An authenticated device reads and appends the same log with the same token.
    let alice = Account::new(1);
    create(&relay, &alice);
    let mut dev = Side::new(&relay);
    dev.login(&alice, 1);
    assert_eq!(
        appended(&append_now(
            &mut dev,
            3,
            log_append(&SLOT, &TOKEN, 2, b"two")
        )),
        2
    );
    assert_eq!(
        read_now(&mut anon, 4, &SLOT, 2, 0),
        (2, vec![(2, b"two".to_vec())])
    );
    // Neither authenticated nor anonymous: refused, nothing written.
    let mut open = Side::from(&relay, ip("192.0.2.2"));
    let f = append_now(&mut open, 1, log_append(&SLOT, &TOKEN, 3, b"three"));
    assert_eq!(error_code(&f), ErrorCode::Unauthenticated);
    open.request(2, log_read(&SLOT, 1, 0));
    assert_eq!(error_code(&answer(&mut open)), ErrorCode::Unauthenticated);
    assert_eq!(read_now(&mut anon, 5, &SLOT, 1, 0).0, 2);
}

#[tokio::test]
async fn bad_group_log_requests_are_typed_refusals_that_change_nothing() {
    let relay = relay_with(|_| {});
    let mut s = anonymous_from(&relay, ip("192.0.2.1"));
    assert_eq!(
        appended(&append_now(&mut s, 2, log_append(&SLOT, &TOKEN, 1, b"one"))),
        1
    );
    let too_big = vec![1u8; limits::GROUP_LOG_ENTRY_MAX + 1];
    let cases: Vec<(client_frame::Kind, ErrorCode)> = vec![
        (log_append(&[1; 31], &TOKEN, 2, b"x"), ErrorCode::Malformed),
        (log_append(&[1; 33], &TOKEN, 2, b"x"), ErrorCode::Malformed),
        (log_append(&[], &TOKEN, 2, b"x"), ErrorCode::Malformed),
        (log_append(&SLOT, &[1; 31], 2, b"x"), ErrorCode::Malformed),
        (log_append(&SLOT, &[], 2, b"x"), ErrorCode::Malformed),
        (log_append(&SLOT, &TOKEN, 0, b"x"), ErrorCode::Malformed),
        (log_append(&SLOT, &TOKEN, 2, b""), ErrorCode::Malformed),
        (log_append(&SLOT, &TOKEN, 2, &too_big), ErrorCode::TooLarge),
        (log_read(&[1; 31], 1, 0), ErrorCode::Malformed),
        (log_read(&[], 1, 0), ErrorCode::Malformed),
    ];
    for (i, (kind, code)) in cases.into_iter().enumerate() {
        let rid = 10 + i as u64;
        s.request(rid, kind);
        assert!(s.st.take_ops().is_empty(), "case {i} reached the writer");
        let f = answer(&mut s);
        assert_eq!((f.request_id, error_code(&f)), (rid, code), "case {i}");
    }
    // The connection is still usable and the log as it was.
    assert_eq!(
        read_now(&mut s, 100, &SLOT, 1, 0),
        (1, vec![(1, b"one".to_vec())])
    );
    // The largest entry is taken.
    let largest = vec![2u8; limits::GROUP_LOG_ENTRY_MAX];
    assert_eq!(
        appended(&append_now(
            &mut s,
            101,
            log_append(&SLOT, &TOKEN, 2, &largest)
        )),
        2
    );
}

#[tokio::test]
async fn group_log_caps_refuse_with_their_own_codes() {
    let relay = relay_with(|c| c.group_log_total_max_bytes = 10);
    let mut s = anonymous_from(&relay, ip("192.0.2.1"));
    assert_eq!(
        appended(&append_now(
            &mut s,
            2,
            log_append(&SLOT, &TOKEN, 1, &[1; 8])
        )),
        1
    );
    let e = refused(&append_now(
        &mut s,
        3,
        log_append(&[2; 32], &TOKEN, 1, &[1; 3]),
    ));
    assert_eq!(e.code(), ErrorCode::RelayFull);
    assert_eq!(e.retry_after_ms, limits::GROUP_LOGS_FULL_RETRY_AFTER_MS);
    assert_eq!(read_now(&mut s, 4, &[2; 32], 1, 0), (0, vec![]));
    assert_eq!(
        appended(&append_now(
            &mut s,
            5,
            log_append(&[2; 32], &TOKEN, 1, &[1; 2])
        )),
        1
    );
}

#[tokio::test]
async fn group_log_requests_are_rate_limited_per_anonymous_address_block() {
    let relay = relay_with(|c| {
        c.rate.group_log_appends = RateLimit {
            per_second: 0.001,
            burst: 2,
        };
        c.rate.group_log_reads = RateLimit {
            per_second: 0.001,
            burst: 1,
        };
    });
    // Two connections from one address share the block's buckets.
    let mut a = anonymous_from(&relay, ip("192.0.2.1"));
    let mut b = anonymous_from(&relay, ip("192.0.2.1"));
    assert_eq!(
        appended(&append_now(&mut a, 2, log_append(&SLOT, &TOKEN, 1, b"1"))),
        1
    );
    assert_eq!(
        appended(&append_now(&mut b, 2, log_append(&SLOT, &TOKEN, 2, b"2"))),
        2
    );
    let e = refused(&append_now(&mut a, 3, log_append(&SLOT, &TOKEN, 3, b"3")));
    assert_eq!(e.code(), ErrorCode::RateLimited);
    assert!(e.retry_after_ms > 0);
    assert_eq!(read_now(&mut a, 4, &SLOT, 1, 0).0, 2);
    b.request(3, log_read(&SLOT, 1, 0));
    assert_eq!(error_code(&answer(&mut b)), ErrorCode::RateLimited);
    // Another block has buckets of its own.
    let mut c = anonymous_from(&relay, ip("198.51.100.1"));
    assert_eq!(
        appended(&append_now(&mut c, 2, log_append(&SLOT, &TOKEN, 3, b"3"))),
        3
    );
    assert_eq!(
        read_now(&mut c, 3, &SLOT, 3, 0),
        (3, vec![(3, b"3".to_vec())])
    );
}

#[tokio::test]
async fn concurrent_appends_of_one_number_through_many_connections_have_one_winner() {
    let relay = relay_with(|_| {});
    let mut sides: Vec<Side> = (0..8u8)
        .map(|i| anonymous_from(&relay, ip(&format!("192.0.2.{}", i + 1))))
        .collect();
    for seq in 1..=3u64 {
        // Every connection asks for the same number; the writes run on threads of their own.
        let ops: Vec<_> = sides
            .iter_mut()
            .enumerate()
            .map(|(i, s)| {
                s.request(10 + seq, log_append(&SLOT, &TOKEN, seq, &[i as u8; 16]));
                s.st.take_ops()
            })
            .collect();
        let threads: Vec<_> = ops
            .into_iter()
            .map(|ops| {
                std::thread::spawn(move || {
                    ops.into_iter().filter_map(|op| op()).collect::<Vec<_>>()
                })
            })
            .collect();
        for (s, t) in sides.iter_mut().zip(threads) {
            for settle in t.join().unwrap() {
                settle(Ok(()));
            }
            s.take_in();
        }
        let answers: Vec<ServerFrame> = sides.iter_mut().map(answer).collect();
        let winners: Vec<usize> = answers
            .iter()
            .enumerate()
            .filter(|(_, f)| matches!(f.kind, Some(server_frame::Kind::GroupLogAppended(_))))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(winners.len(), 1, "{answers:?}");
        for (i, f) in answers.iter().enumerate() {
            if i != winners[0] {
                let e = refused(f);
                assert_eq!((e.code(), e.log_head), (ErrorCode::LogConflict, seq));
            }
        }
        let (head, page) = read_now(&mut sides[0], 100 + seq, &SLOT, seq, 1);
        assert_eq!((head, page), (seq, vec![(seq, vec![winners[0] as u8; 16])]));
    }
}
