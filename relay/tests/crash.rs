//! The relay binary under a steady load of sends and acknowledgements from several clients,
//! killed with SIGKILL at random moments and restarted on the same data directory, again and
//! again. At the end every acknowledged send has reached every recipient device exactly once
//! after deduplication by client id, in per-sender order, and nothing reached a device that its
//! sender was not still trying to send. The receivers also "crash" themselves between receiving
//! and acknowledging, so redelivery and deduplication are exercised too.
//!
//! It prints the counts: sends acknowledged, envelopes delivered, duplicates delivered again and
//! deduplicated, and acknowledged envelopes lost (which must be 0). `HUSH_CRASH_KILLS=N` sets
//! the number of kills (default 100; `.ci/run` runs the default).
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hush_proto::relay_api::{self as api, client_frame, server_frame};
use rand::RngExt;
use tokio::sync::watch;

/// Where the relay is now: (generation, address, pin). A new generation after each restart.
type Where = watch::Receiver<(u64, SocketAddr, String)>;

/// Connects to the current relay and authenticates; `None` if the relay went away meanwhile.
async fn session(at: &mut Where, a: &TestAccount, device: u32) -> Option<(u64, Client)> {
    let (generation, addr, pin) = at.borrow_and_update().clone();
    let c = Client::try_connect(addr, &pin).await?;
    let attempt = async {
        let Some(server_frame::Kind::Challenge(ch)) = c
            .try_request(client_frame::Kind::Hello(api::Hello {}))
            .await
        else {
            return false;
        };
        let signature = c.auth_signature(&ch.nonce, a.id(), device, a.device(device));
        matches!(
            c.try_request(client_frame::Kind::Authenticate(api::Authenticate {
                account: a.id().to_vec(),
                device_id: device,
                signature,
            }))
            .await,
            Some(server_frame::Kind::Ok(_))
        )
    };
    tokio::select! {
        ok = attempt => ok.then_some((generation, c)),
        _ = at.changed() => None,
    }
}

/// After a failed connection attempt: waits for the next incarnation of the relay, or 100 ms at
/// most (a client's reconnect back-off: an attempt can also fail against a live relay, e.g. a
/// handshake that did not complete in time). `false` once the test is stopping.
async fn back_off(at: &mut Where, stop: &tokio_util::sync::CancellationToken) -> bool {
    if at.has_changed().unwrap_or(false) {
        return true;
    }
    tokio::select! {
        _ = at.changed() => true,
        () = tokio::time::sleep(Duration::from_millis(100)) => true,
        () = stop.cancelled() => false,
    }
}

/// Sending accounts, each one send in flight at a time (so that per-sender order is defined).
const SENDERS: usize = 6;

fn client_id(sender: u8, i: u32) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0] = sender;
    id[1..5].copy_from_slice(&i.to_be_bytes());
    id
}

/// What a receiving device has committed: (sender byte, index) in arrival order, duplicates
/// included, and the client ids it has seen (its deduplication state, which survives its own
/// crashes like a store would).
#[derive(Default)]
struct Inbox {
    arrivals: Vec<(u8, u32)>,
    seen: HashSet<[u8; 16]>,
    redelivered: usize,
}

impl Inbox {
    /// Commits an arrival (sender byte, index from the body), counting a redelivery.
    fn commit(&mut self, d: &api::Deliver) {
        let id: [u8; 16] = d.client_id.as_slice().try_into().unwrap();
        self.arrivals.push((
            d.body[0],
            u32::from_be_bytes(d.body[1..5].try_into().unwrap()),
        ));
        if !self.seen.insert(id) {
            self.redelivered += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_relay_loses_nothing_acknowledged_and_delivers_exactly_once_in_order() {
    let kills: u32 = std::env::var("HUSH_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut relay = spawn_relay(dir.path());
    let senders: Vec<TestAccount> = (0..SENDERS).map(|_| TestAccount::new(1)).collect();
    let bob = Arc::new(TestAccount::new(2));
    {
        let c = Client::connect(relay.addr, &relay.pin).await;
        c.create(&bob, 1).await;
        for s in &senders {
            let c = Client::connect(relay.addr, &relay.pin).await;
            c.create(s, 1).await;
        }
    }
    let (at_tx, at_rx) = watch::channel((0u64, relay.addr, relay.pin.clone()));
    let stop = tokio_util::sync::CancellationToken::new();
    let acked_total = Arc::new(std::sync::atomic::AtomicU64::new(0));

    // Senders: one send at a time, each retried with the same client id until acknowledged.
    let mut sender_tasks = Vec::new();
    for (k, s) in senders.into_iter().enumerate() {
        let mut at = at_rx.clone();
        let stop = stop.clone();
        let bob_id = bob.id();
        let acked_total = Arc::clone(&acked_total);
        sender_tasks.push(tokio::spawn(async move {
            let k = u8::try_from(k).unwrap();
            let mut acked: Vec<u32> = Vec::new();
            let mut next = 0u32;
            'outer: while !stop.is_cancelled() {
                let Some((_, c)) = session(&mut at, &s, 1).await else {
                    if back_off(&mut at, &stop).await {
                        continue;
                    }
                    break;
                };
                loop {
                    if stop.is_cancelled() {
                        break 'outer;
                    }
                    let body = [&[k][..], &next.to_be_bytes()].concat();
                    let r = tokio::select! {
                        r = c.try_send(client_id(k, next), bob_id, &[1, 2], &body) => r,
                        _ = at.changed() => None,
                    };
                    match r {
                        // A device with no room for this sender was left out: send the same
                        // message again (the retry queues only what is missing), as a client does.
                        Some(server_frame::Kind::Sent(s)) if !s.full_devices.is_empty() => {
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_millis(20)) => {}
                                _ = at.changed() => break,
                            }
                        }
                        Some(server_frame::Kind::Sent(_)) => {
                            acked.push(next);
                            next += 1;
                            acked_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        // Bob's queues are full (his devices fall behind six senders): back off
                        // as a client does, and send the same message again.
                        Some(server_frame::Kind::Error(e))
                            if e.code == api::ErrorCode::QueueFull as i32
                                || e.code == api::ErrorCode::SenderQuota as i32 =>
                        {
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_millis(20)) => {}
                                _ = at.changed() => break,
                            }
                        }
                        Some(other) => panic!("send refused: {other:?}"),
                        None => break, // the relay went away: reconnect, retry `next`
                    }
                }
            }
            (k, acked, next)
        }));
    }

    // Receivers: Bob's two devices. Each commits what arrives, then acknowledges; now and then
    // it drops its connection after receiving and before acknowledging.
    let inboxes: Vec<Arc<Mutex<Inbox>>> = (0..2).map(|_| Arc::default()).collect();
    let mut receiver_tasks = Vec::new();
    for device in [1u32, 2] {
        let mut at = at_rx.clone();
        let stop = stop.clone();
        let bob = Arc::clone(&bob);
        let inbox = Arc::clone(&inboxes[device as usize - 1]);
        receiver_tasks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let Some((_, c)) = session(&mut at, &bob, device).await else {
                    if back_off(&mut at, &stop).await {
                        continue;
                    }
                    break;
                };
                let mut received = 0u32;
                // Committed but not yet acknowledged (a device acknowledges in batches, as
                // clients do: every 16 envelopes, or when nothing arrived for a moment).
                let mut unacked: Vec<u64> = Vec::new();
                loop {
                    let ev = tokio::select! {
                        ev = c.try_event(Duration::from_millis(20)) => ev,
                        _ = at.changed() => break,
                        () = stop.cancelled() => break,
                    };
                    if let Some(server_frame::Kind::Deliver(d)) = ev {
                        inbox.lock().unwrap().commit(&d);
                        unacked.push(d.seq);
                        received += 1;
                        // The device dies between receiving (and committing) and acknowledging.
                        if received.is_multiple_of(37) && rand::rng().random_bool(0.5) {
                            c.quic().close(0u32.into(), b"crash");
                            break;
                        }
                        if unacked.len() < 16 {
                            continue;
                        }
                    } else if c.quic().close_reason().is_some() {
                        break;
                    }
                    if unacked.is_empty() {
                        continue;
                    }
                    let seqs = std::mem::take(&mut unacked);
                    let r = tokio::select! {
                        r = c.try_request(client_frame::Kind::Ack(api::Ack { seqs })) => r,
                        _ = at.changed() => break,
                    };
                    if r.is_none() {
                        break;
                    }
                }
            }
        }));
    }

    // Kill it at random moments under load, restart on the same directory.
    let mut restarts = 0u32;
    while restarts < kills {
        let before = acked_total.load(std::sync::atomic::Ordering::Relaxed);
        // Wait (bounded) for traffic on this incarnation, then a random moment more.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while acked_total.load(std::sync::atomic::Ordering::Relaxed) < before + 5 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no progress after restart {restarts}: arrivals per device {:?}",
                inboxes
                    .iter()
                    .map(|i| i.lock().unwrap().arrivals.len())
                    .collect::<Vec<_>>()
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ms = rand::rng().random_range(0..150u64);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        drop(relay); // SIGKILL
        relay = spawn_relay(dir.path());
        restarts += 1;
        at_tx
            .send((u64::from(restarts), relay.addr, relay.pin.clone()))
            .unwrap();
    }
    stop.cancel();
    let mut results = Vec::new();
    for t in sender_tasks {
        results.push(t.await.unwrap());
    }
    for t in receiver_tasks {
        t.await.unwrap();
    }
    // One last clean catch-up of both devices on the last incarnation.
    for device in [1u32, 2] {
        let c = Client::connect(relay.addr, &relay.pin).await;
        c.authenticate(&bob, device).await;
        let got = c.catch_up().await;
        let mut ib = inboxes[device as usize - 1].lock().unwrap();
        for d in &got {
            ib.commit(d);
        }
    }
    // The counts first, then the verdict, so a failing run still says how bad it was.
    let acked_sends: usize = results.iter().map(|r| r.1.len()).sum();
    let mut delivered = 0usize;
    let mut redelivered = 0usize;
    let mut lost = 0usize;
    let mut out_of_order = 0usize;
    let mut unsent_extra = 0usize;
    for inbox in &inboxes {
        let ib = inbox.lock().unwrap();
        redelivered += ib.redelivered;
        // Deduplicated, per sender, in first-arrival order.
        let mut per_sender: BTreeMap<u8, Vec<u32>> = BTreeMap::new();
        let mut seen = HashSet::new();
        for (k, i) in &ib.arrivals {
            if seen.insert((*k, *i)) {
                per_sender.entry(*k).or_default().push(*i);
            }
        }
        delivered += seen.len();
        for (k, acked, next) in &results {
            let got = per_sender.remove(k).unwrap_or_default();
            let got_set: HashSet<u32> = got.iter().copied().collect();
            lost += acked.iter().filter(|i| !got_set.contains(i)).count();
            // Every acknowledged send, in order; beyond them at most the one the sender was
            // still trying when it stopped (queued, never acknowledged).
            if got
                .get(..acked.len())
                .is_none_or(|prefix| prefix != &acked[..])
            {
                out_of_order += 1;
            }
            let extra = got.get(acked.len()..).unwrap_or_default();
            if extra.len() > 1 || extra.first().is_some_and(|i| i != next) {
                unsent_extra += extra.len();
            }
        }
        unsent_extra += per_sender.values().map(Vec::len).sum::<usize>();
    }
    println!(
        "{kills} SIGKILLs in {:?}: {acked_sends} sends acknowledged to 2 devices each; \
         {delivered} envelopes delivered (after deduplication), {redelivered} duplicates \
         delivered again and deduplicated, {lost} acknowledged envelopes lost, {out_of_order} \
         per-sender orders broken, {unsent_extra} delivered that were never sent",
        started.elapsed()
    );
    assert_eq!(lost, 0, "acknowledged envelopes were lost");
    assert_eq!(out_of_order, 0, "a sender's order was broken on a device");
    assert_eq!(
        unsent_extra, 0,
        "something was delivered that was never sent"
    );
    assert!(
        delivered >= 2 * acked_sends,
        "{delivered} delivered for {acked_sends} acknowledged sends to 2 devices"
    );
    assert!(redelivered > 0, "no redelivery was exercised");
}
