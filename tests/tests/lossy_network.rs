//! Network faults: engines reach the relay through a UDP proxy on 127.0.0.1 that drops,
//! duplicates, delays and reorders datagrams in both directions, and that can rebind (as a NAT
//! does, giving the client a new address mid-connection). Through loss, a rebinding and a relay
//! restart with an outage, every message arrives exactly once and in order, and both sides
//! reconnect.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hush_client::{Engine, Event};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::UnboundedReceiver;

const WAIT: Duration = Duration::from_secs(60);
/// How long the relay stays down when it restarts.
const OUTAGE: Duration = Duration::from_millis(1500);

/// What the path does to each datagram, in per mille.
#[derive(Clone, Copy)]
struct Faults {
    drop: u32,
    duplicate: u32,
    /// Held back 1–20 ms, so that later datagrams overtake it.
    delay: u32,
}

#[derive(Default)]
struct Counts {
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
}

/// A faulty UDP path from clients to one relay address.
struct Proxy {
    addr: SocketAddr,
    /// Bumped to make every client appear from a new address (NAT rebinding).
    generation: Arc<AtomicU64>,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `bytes` to `to` through the faults: maybe not at all, maybe twice, maybe late.
fn forward(
    socket: &Arc<UdpSocket>,
    to: SocketAddr,
    bytes: Vec<u8>,
    faults: Faults,
    rng: &Mutex<ChaCha20Rng>,
    counts: &Arc<Counts>,
) {
    let (roll, dup, delay_roll, delay_ms) = {
        let mut r = rng.lock().unwrap();
        (
            r.next_u32() % 1000,
            r.next_u32() % 1000,
            r.next_u32() % 1000,
            1 + u64::from(r.next_u32() % 20),
        )
    };
    if roll < faults.drop {
        counts.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let copies = if dup < faults.duplicate {
        counts.duplicated.fetch_add(1, Ordering::Relaxed);
        2
    } else {
        1
    };
    counts.forwarded.fetch_add(1, Ordering::Relaxed);
    if delay_roll < faults.delay {
        counts.delayed.fetch_add(1, Ordering::Relaxed);
        let socket = Arc::clone(socket);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            for _ in 0..copies {
                let _ = socket.send_to(&bytes, to).await;
            }
        });
    } else {
        let socket = Arc::clone(socket);
        tokio::spawn(async move {
            for _ in 0..copies {
                let _ = socket.send_to(&bytes, to).await;
            }
        });
    }
}

async fn proxy(relay: SocketAddr, faults: Faults, seed: u64) -> Proxy {
    let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = listen.local_addr().unwrap();
    let generation = Arc::new(AtomicU64::new(0));
    let counts = Arc::new(Counts::default());
    let rng = Arc::new(Mutex::new(ChaCha20Rng::seed_from_u64(seed)));
    let task = {
        let (generation, counts) = (Arc::clone(&generation), Arc::clone(&counts));
        tokio::spawn(async move {
            // (client address, generation) → the socket that stands for it towards the relay.
            let mut upstream: HashMap<(SocketAddr, u64), Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, client)) = listen.recv_from(&mut buf).await else {
                    return;
                };
                let g = generation.load(Ordering::SeqCst);
                let up = match upstream.get(&(client, g)) {
                    Some(u) => Arc::clone(u),
                    None => {
                        let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        upstream.insert((client, g), Arc::clone(&u));
                        // The relay's answers, back to the client through the faults.
                        let (u2, back, rng2, counts2) = (
                            Arc::clone(&u),
                            Arc::clone(&listen),
                            Arc::clone(&rng),
                            Arc::clone(&counts),
                        );
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok((n, _)) = u2.recv_from(&mut buf).await {
                                forward(&back, client, buf[..n].to_vec(), faults, &rng2, &counts2);
                            }
                        });
                        u
                    }
                };
                forward(&up, relay, buf[..n].to_vec(), faults, &rng, &counts);
            }
        })
    };
    Proxy {
        addr,
        generation,
        counts,
        task,
    }
}

/// Waits for `n` messages (acknowledging each), skipping other events.
async fn messages(engine: &Engine, rx: &mut UnboundedReceiver<Event>, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let ev = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("no message in time")
            .expect("engine gone");
        if let Event::Message {
            id,
            plaintext,
            ephemeral: false,
            ..
        } = ev
        {
            got.push(String::from_utf8(plaintext.to_vec()).unwrap());
            engine.ack(id).unwrap();
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_reordering_duplicating_path_with_rebinding_and_relay_restart_loses_nothing() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay_addr = free_port();
    let relay = hush_relay::start(relay_config(relay_dir.path(), relay_addr))
        .await
        .unwrap();
    let pin = relay.fingerprint.clone();
    let faults = Faults {
        drop: 50,
        duplicate: 30,
        delay: 100,
    };
    let (pa, pb) = (
        proxy(relay_addr, faults, 1).await,
        proxy(relay_addr, faults, 2).await,
    );
    let (ad, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, mut a_rx) = Engine::create_account(engine_config(ad.path(), pa.addr, &pin))
        .await
        .unwrap();
    let (bob, mut b_rx) = Engine::create_account(engine_config(bd.path(), pb.addr, &pin))
        .await
        .unwrap();
    alice.connected(WAIT).await.unwrap();
    bob.connected(WAIT).await.unwrap();
    let (a, b) = (
        alice.address().unwrap().account,
        bob.address().unwrap().account,
    );
    let alice = Arc::new(alice);
    let bob = Arc::new(bob);

    // Both write at once, 60 each, through the faulty paths.
    let send_all = |from: Arc<Engine>, to, tag: &'static str, range: std::ops::Range<u32>| {
        tokio::spawn(async move {
            for i in range {
                from.send(&to, format!("{tag}{i:03}").as_bytes())
                    .await
                    .unwrap();
            }
        })
    };
    let sa = send_all(Arc::clone(&alice), b, "a", 0..60);
    let sb = send_all(Arc::clone(&bob), a, "b", 0..60);
    let got_b = messages(&bob, &mut b_rx, 60).await;
    let got_a = messages(&alice, &mut a_rx, 60).await;
    sa.await.unwrap();
    sb.await.unwrap();
    assert_eq!(
        got_b,
        (0..60).map(|i| format!("a{i:03}")).collect::<Vec<_>>()
    );
    assert_eq!(
        got_a,
        (0..60).map(|i| format!("b{i:03}")).collect::<Vec<_>>()
    );

    // Both clients' addresses change mid-conversation (the connections migrate).
    pa.generation.fetch_add(1, Ordering::SeqCst);
    pb.generation.fetch_add(1, Ordering::SeqCst);
    let sa = send_all(Arc::clone(&alice), b, "c", 0..40);
    assert_eq!(
        messages(&bob, &mut b_rx, 40).await,
        (0..40).map(|i| format!("c{i:03}")).collect::<Vec<_>>()
    );
    sa.await.unwrap();

    // The relay restarts while Alice writes: both reconnect through the faulty paths.
    let sa = send_all(Arc::clone(&alice), b, "d", 0..40);
    let first = messages(&bob, &mut b_rx, 10).await;
    relay.stop().await;
    // Down for a while: the engines' attempts in between find nothing and back off.
    tokio::time::sleep(OUTAGE).await;
    let relay = hush_relay::start(relay_config(relay_dir.path(), relay_addr))
        .await
        .unwrap();
    let rest = messages(&bob, &mut b_rx, 30).await;
    sa.await.unwrap();
    let all: Vec<String> = first.into_iter().chain(rest).collect();
    assert_eq!(all, (0..40).map(|i| format!("d{i:03}")).collect::<Vec<_>>());
    bob.send(&a, b"after the restart").await.unwrap();
    assert_eq!(
        messages(&alice, &mut a_rx, 1).await,
        vec!["after the restart".to_owned()]
    );
    nothing_more(&mut b_rx).await;
    nothing_more(&mut a_rx).await;

    // The faults really happened.
    for p in [&pa, &pb] {
        let c = &p.counts;
        assert!(c.dropped.load(Ordering::Relaxed) > 0);
        assert!(c.duplicated.load(Ordering::Relaxed) > 0);
        assert!(c.delayed.load(Ordering::Relaxed) > 0);
    }
    for e in [alice, bob] {
        let Ok(e) = Arc::try_unwrap(e) else {
            panic!("engine still shared")
        };
        e.shutdown().await;
    }
    relay.stop().await;
}
