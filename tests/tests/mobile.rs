//! End to end, what a phone's life does to the connection (docs/MOBILE.md "Lifecycle"): UDP
//! blocked and unblocked under a running engine, a network change that moves a QUIC connection
//! to a new socket, and suspension with push wake-ups. Loopback only: "UDP blocked" is a UDP
//! forwarder in front of the relay's QUIC port that the test opens and closes, with the relay's
//! TLS-over-TCP listener on the same port number.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hush_client::conn::Transport;
use hush_client::{ConnectionState, Engine, Event, NetworkMove};
use hush_core::keys::AccountId;
use hush_relay::config::{StoreKind, TcpListen};
use hush_testkit::TestRelay;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::UnboundedReceiver;

/// The bound on falling back to TCP when UDP is blocked (not a speed assertion: a generous
/// ceiling for a fallback that starts 250 ms after QUIC).
const FALLBACK_BOUND: Duration = Duration::from_secs(2);
/// The bound on anything else a test waits for.
const WAIT: Duration = Duration::from_secs(30);

/// A UDP forwarder in front of the relay's QUIC port: each client address gets its own socket
/// towards the relay (so a client that moves to a new socket is a new address to the relay, as
/// on a real network). While closed it drops every datagram both ways.
struct UdpGate {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpGate {
    /// Forwards what reaches `front` to `target`.
    fn start(front: std::net::UdpSocket, target: SocketAddr, open: bool) -> Self {
        front.set_nonblocking(true).unwrap();
        let front = Arc::new(UdpSocket::from_std(front).unwrap());
        let addr = front.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(open));
        let dropped = Arc::new(AtomicU64::new(0));
        let (o, d) = (Arc::clone(&open), Arc::clone(&dropped));
        let task = tokio::spawn(async move {
            let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            let mut readers = Vec::new();
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                if !o.load(Ordering::SeqCst) {
                    d.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let back = if let Some(b) = backs.get(&from) {
                    Arc::clone(b)
                } else {
                    let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    b.connect(target).await.unwrap();
                    backs.insert(from, Arc::clone(&b));
                    let (front, b2, o, d) = (
                        Arc::clone(&front),
                        Arc::clone(&b),
                        Arc::clone(&o),
                        Arc::clone(&d),
                    );
                    readers.push(tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok(n) = b2.recv(&mut buf).await {
                            if o.load(Ordering::SeqCst) {
                                let _ = front.send_to(&buf[..n], from).await;
                            } else {
                                d.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }));
                    b
                };
                let _ = back.send(&buf[..n]).await;
            }
            for r in readers {
                r.abort();
            }
        });
        Self {
            addr,
            open,
            dropped,
            task,
        }
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }
}

impl Drop for UdpGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A relay whose QUIC port is behind a [`UdpGate`] (closed or open) and whose TLS-over-TCP
/// listener has the gate's port number: a client given the gate's address sees one relay at
/// one port, as in production, and the test decides whether UDP gets through.
async fn gated_relay(open: bool) -> (TestRelay, UdpGate) {
    // A UDP port whose number is free over TCP too (other tests' connections take TCP ports).
    let (front, port) = (0..64)
        .find_map(|_| {
            let front = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = front.local_addr().unwrap();
            let free = std::net::TcpListener::bind(port).is_ok();
            free.then_some((front, port))
        })
        .expect("a UDP port whose number is free over TCP");
    let relay = TestRelay::start_with(StoreKind::Memory, |c| {
        c.tcp_listen = TcpListen::At(port);
    })
    .await;
    assert_eq!(relay.tcp_addr(), port);
    let gate = UdpGate::start(front, relay.addr(), open);
    (relay, gate)
}

/// The next event: a message is acknowledged to the inbox and kept in `got`; a lost connection
/// fails the test when `steady` is set.
async fn take(
    engine: &Engine,
    rx: &mut UnboundedReceiver<Event>,
    got: &mut Vec<Vec<u8>>,
    steady: bool,
) -> Event {
    let ev = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an event in time")
        .expect("engine running");
    match &ev {
        Event::Message {
            id,
            plaintext,
            ephemeral: false,
            ..
        } => {
            got.push(plaintext.to_vec());
            engine.ack(*id).unwrap();
        }
        Event::Connection(false) if steady => panic!("the connection was lost"),
        _ => {}
    }
    ev
}

/// The next event that `pick` accepts; events on the way are [`take`]n.
async fn until<T>(
    engine: &Engine,
    rx: &mut UnboundedReceiver<Event>,
    got: &mut Vec<Vec<u8>>,
    steady: bool,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    loop {
        let ev = take(engine, rx, got, steady).await;
        if let Some(t) = pick(&ev) {
            return t;
        }
    }
}

/// Waits until `got` holds `n` messages.
async fn receive_into(
    engine: &Engine,
    rx: &mut UnboundedReceiver<Event>,
    got: &mut Vec<Vec<u8>>,
    n: usize,
    steady: bool,
) {
    while got.len() < n {
        take(engine, rx, got, steady).await;
    }
}

fn numbered(prefix: &str, range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range.map(|i| format!("{prefix}{i}").into_bytes()).collect()
}

async fn send_numbered(from: &Engine, to: &AccountId, prefix: &str, range: std::ops::Range<u32>) {
    for m in numbered(prefix, range) {
        from.send(to, &m).await.unwrap();
    }
}

/// A relay and two engines on it: Alice through `alice_addr`, Bob straight to the relay.
async fn two_engines(
    relay: &TestRelay,
    alice_addr: SocketAddr,
    dirs: &(tempfile::TempDir, tempfile::TempDir),
) -> (
    (Engine, UnboundedReceiver<Event>),
    (Engine, UnboundedReceiver<Event>),
) {
    let alice = Engine::create_account(engine_config(dirs.0.path(), alice_addr, relay.pin()))
        .await
        .unwrap();
    let bob = Engine::create_account(engine_config(dirs.1.path(), relay.addr(), relay.pin()))
        .await
        .unwrap();
    alice.0.connected(WAIT).await.unwrap();
    bob.0.connected(WAIT).await.unwrap();
    (alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_the_engine_falls_back_to_tcp_chats_and_returns_to_quic_once_udp_works() {
    let (relay, gate) = gated_relay(true).await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ((alice, a_rx), (bob, mut b_rx)) = two_engines(&relay, gate.addr, &dirs).await;
    let a_id = alice.address().unwrap().account;
    let b_id = bob.address().unwrap().account;
    assert_eq!(bob.transport(), Some(Transport::Quic));

    // UDP to the relay is blocked; Alice starts again (an app opened on such a network).
    alice.shutdown().await;
    drop(a_rx);
    gate.set_open(false);
    let started = Instant::now();
    let (alice, mut a_rx) =
        Engine::open(engine_config(dirs.0.path(), gate.addr, relay.pin())).unwrap();
    alice.set_quic_retry(Duration::from_millis(300));
    alice.connected(WAIT).await.unwrap();
    let fell_back = started.elapsed();
    println!(
        "connected over TCP {} ms after opening, UDP blocked",
        fell_back.as_millis()
    );
    assert!(fell_back < FALLBACK_BOUND, "fallback took {fell_back:?}");
    assert_eq!(alice.transport(), Some(Transport::Tcp));
    assert!(gate.dropped.load(Ordering::Relaxed) > 0, "QUIC was tried");

    // Chat both ways over TCP; QUIC retries keep failing meanwhile and change nothing.
    send_numbered(&alice, &b_id, "t", 0..5).await;
    let mut bob_got = Vec::new();
    receive_into(&bob, &mut b_rx, &mut bob_got, 5, true).await;
    assert_eq!(bob_got, numbered("t", 0..5));
    send_numbered(&bob, &a_id, "u", 0..5).await;
    let mut alice_got = Vec::new();
    receive_into(&alice, &mut a_rx, &mut alice_got, 5, false).await;
    assert_eq!(alice_got, numbered("u", 0..5));
    assert_eq!(alice.transport(), Some(Transport::Tcp));

    // Bob keeps writing while UDP comes back: Alice moves to QUIC by herself, and gets every
    // message once, in order.
    send_numbered(&bob, &a_id, "v", 0..10).await;
    gate.set_open(true);
    send_numbered(&bob, &a_id, "v", 10..20).await;
    until(&alice, &mut a_rx, &mut alice_got, false, |e| {
        matches!(e, Event::Connection(true)).then_some(())
    })
    .await;
    assert_eq!(alice.transport(), Some(Transport::Quic));
    receive_into(&alice, &mut a_rx, &mut alice_got, 25, false).await;
    let mut want = numbered("u", 0..5);
    want.extend(numbered("v", 0..20));
    assert_eq!(alice_got, want);

    // Chat on over QUIC.
    send_numbered(&alice, &b_id, "w", 0..5).await;
    receive_into(&bob, &mut b_rx, &mut bob_got, 10, true).await;
    let mut want = numbered("t", 0..5);
    want.extend(numbered("w", 0..5));
    assert_eq!(bob_got, want);
    assert_eq!(alice.transport(), Some(Transport::Quic));

    alice.shutdown().await;
    bob.shutdown().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_change_moves_the_quic_connection_to_a_new_socket_and_nothing_is_lost() {
    let (relay, gate) = gated_relay(true).await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ((alice, mut a_rx), (bob, mut b_rx)) = two_engines(&relay, gate.addr, &dirs).await;
    let a_id = alice.address().unwrap().account;
    let b_id = bob.address().unwrap().account;
    assert_eq!(alice.transport(), Some(Transport::Quic));

    let (mut alice_got, mut bob_got) = (Vec::new(), Vec::new());
    send_numbered(&bob, &a_id, "a", 0..10).await;
    send_numbered(&alice, &b_id, "b", 0..10).await;
    receive_into(&alice, &mut a_rx, &mut alice_got, 5, true).await;

    // Mid-conversation, with messages in flight both ways, Alice's phone changes networks:
    // her connection moves to a new UDP socket, which the relay sees as a new address.
    let before = alice.local_quic_addr().unwrap();
    assert_eq!(alice.network_changed("cellular"), NetworkMove::Migrated);
    let after = alice.local_quic_addr().unwrap();
    assert_ne!(before.port(), after.port());
    send_numbered(&bob, &a_id, "a", 10..20).await;
    send_numbered(&alice, &b_id, "b", 10..20).await;

    // Everything arrives once, in order, and Alice never lost her connection.
    receive_into(&alice, &mut a_rx, &mut alice_got, 20, true).await;
    receive_into(&bob, &mut b_rx, &mut bob_got, 20, true).await;
    assert_eq!(alice_got, numbered("a", 0..20));
    assert_eq!(bob_got, numbered("b", 0..20));
    assert_eq!(alice.state(), ConnectionState::Online);
    assert_eq!(alice.local_quic_addr(), Some(after));

    // Twice more, back and forth: still the same connection.
    for (i, net) in ["wifi-home", "cellular"].into_iter().enumerate() {
        assert_eq!(alice.network_changed(net), NetworkMove::Migrated);
        let n = u32::try_from(i).unwrap();
        send_numbered(&alice, &b_id, "c", n..n + 1).await;
        send_numbered(&bob, &a_id, "d", n..n + 1).await;
    }
    receive_into(&alice, &mut a_rx, &mut alice_got, 22, true).await;
    receive_into(&bob, &mut b_rx, &mut bob_got, 22, true).await;
    assert_eq!(alice_got[20..], numbered("d", 0..2)[..]);
    assert_eq!(bob_got[20..], numbered("c", 0..2)[..]);

    alice.shutdown().await;
    bob.shutdown().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tcp_a_network_change_dials_again_at_once() {
    let (relay, gate) = gated_relay(false).await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ((alice, mut a_rx), (bob, _b_rx)) = two_engines(&relay, gate.addr, &dirs).await;
    let a_id = alice.address().unwrap().account;
    assert_eq!(alice.transport(), Some(Transport::Tcp));
    let mut got = Vec::new();
    assert_eq!(alice.network_changed("wifi-office"), NetworkMove::Redialled);
    until(&alice, &mut a_rx, &mut got, false, |e| {
        matches!(e, Event::Connection(false)).then_some(())
    })
    .await;
    until(&alice, &mut a_rx, &mut got, false, |e| {
        matches!(e, Event::Connection(true)).then_some(())
    })
    .await;
    // Still blocked: TCP again, and it works.
    assert_eq!(alice.transport(), Some(Transport::Tcp));
    send_numbered(&bob, &a_id, "x", 0..3).await;
    receive_into(&alice, &mut a_rx, &mut got, 3, true).await;
    assert_eq!(got, numbered("x", 0..3));
    alice.shutdown().await;
    bob.shutdown().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_engine_is_woken_takes_its_queue_once_and_sleeps_again() {
    let relay = TestRelay::start(StoreKind::Memory).await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ((alice, mut a_rx), (bob, _b_rx)) = two_engines(&relay, relay.addr(), &dirs).await;
    let a_id = alice.address().unwrap().account;
    let mut got = Vec::new();

    alice.suspend().await;
    assert!(alice.is_suspended());
    assert_eq!(alice.state(), ConnectionState::Suspended);
    assert_eq!(alice.transport(), None);
    until(&alice, &mut a_rx, &mut got, false, |e| {
        matches!(e, Event::Connection(false)).then_some(())
    })
    .await;

    // Queued while suspended; a push would wake the app now.
    send_numbered(&bob, &a_id, "q", 0..12).await;
    assert!(alice.wake(WAIT).await.unwrap(), "drained in time");
    // Everything queued was told before the wake returned, and the engine sleeps again.
    assert_eq!(alice.state(), ConnectionState::Suspended);
    while let Ok(ev) = a_rx.try_recv() {
        if let Event::Message { id, plaintext, .. } = ev {
            got.push(plaintext.to_vec());
            alice.ack(id).unwrap();
        }
    }
    assert_eq!(got, numbered("q", 0..12));
    // And acknowledged to the relay before the connection closed: it holds nothing more, so
    // nothing is delivered twice.
    assert_eq!(relay.running.metrics.envelopes_stored.get(), 0);

    // A second wake finds nothing; resuming delivers nothing twice.
    assert!(alice.wake(WAIT).await.unwrap());
    while let Ok(ev) = a_rx.try_recv() {
        assert!(
            !matches!(ev, Event::Message { .. }),
            "nothing new was queued"
        );
    }
    send_numbered(&bob, &a_id, "r", 0..3).await;
    alice.resume();
    until(&alice, &mut a_rx, &mut got, false, |e| {
        matches!(e, Event::CaughtUp).then_some(())
    })
    .await;
    receive_into(&alice, &mut a_rx, &mut got, 15, true).await;
    let mut want = numbered("q", 0..12);
    want.extend(numbered("r", 0..3));
    assert_eq!(got, want);
    assert!(!alice.is_suspended());
    assert_eq!(alice.state(), ConnectionState::Online);

    // The user opens the app while a wake-up runs: the wake-up does not put it to sleep.
    alice.suspend().await;
    let (woken, ()) = tokio::join!(alice.wake(WAIT), async { alice.resume() });
    assert!(woken.unwrap());
    assert!(!alice.is_suspended());
    assert_ne!(alice.state(), ConnectionState::Suspended);
    alice.connected(WAIT).await.unwrap();
    // Two wake-ups at once: the first to end leaves the engine connected for the other.
    alice.suspend().await;
    let (a, b) = tokio::join!(alice.wake(WAIT), alice.wake(WAIT));
    assert!(a.unwrap() && b.unwrap());
    assert_eq!(alice.state(), ConnectionState::Suspended);
    alice.shutdown().await;
    bob.shutdown().await;
    relay.stop().await;
}
