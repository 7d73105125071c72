//! Relay nodes on a Redis Cluster under a steady load of sends, with faults: a relay node killed
//! (SIGKILL), whose clients move to the other node; and a Redis primary killed, whose replica
//! takes over. Each test counts the sends acknowledged, the envelopes delivered after
//! deduplication by client id, and the acknowledged envelopes lost, which must be 0: an
//! envelope is acknowledged only once the primary has it on disk (`appendfsync always`) and a
//! replica has it (`WAIT 1`).
//!
//! Each test starts a cluster of its own (`scripts/redis-cluster`, 3 primaries with 2 replicas
//! each, on free loopback ports), so that killing its nodes disturbs no other test. Two replicas,
//! because after a failover the promoted replica must itself have a replica for `WAIT 1` to be
//! answered: with one replica per primary, writes to that shard wait until the killed node is
//! back (as its replica), which is what the relay's durability promise requires.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use hush_proto::relay_api::{self as api, client_frame, server_frame};
use tokio::sync::Notify;

/// Sends per sender.
const SENDS: u32 = 60;
/// Sending accounts, one send in flight each.
const SENDERS: u8 = 4;

/// A Redis Cluster of this test's own, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    nodes: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("scripts/redis-cluster")
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .args(["3", "2"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot start a Redis Cluster (needs redis-server; `bash scripts/test` installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let nodes = std::fs::read_to_string(dir.path().join("nodes"))
            .unwrap()
            .trim()
            .to_owned();
        Self { dir, nodes }
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A node that answers (any node knows the cluster's layout).
    fn live_port(&self) -> u16 {
        let ports = std::fs::read_to_string(self.dir.path().join("ports")).unwrap();
        ports
            .lines()
            .filter_map(|p| p.trim().parse().ok())
            .find(|p| self.cli(*p, &["ping"]).trim() == "PONG")
            .expect("no Redis node answers")
    }

    /// The port of the primary serving `key` now.
    fn primary_of(&self, key: &str) -> u16 {
        let any = self.live_port();
        let slot: u32 = self
            .cli(any, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap();
        for line in self.cli(any, &["cluster", "nodes"]).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|r| {
                let (lo, hi) = r.split_once('-').unwrap_or((r, r));
                match (lo.parse::<u32>(), hi.parse::<u32>()) {
                    (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let addr = f[1].split('@').next().unwrap();
                return addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        }
        panic!("no primary serves slot {slot}");
    }

    /// SIGKILLs the node on `port`.
    fn kill(&self, port: u16) {
        let pid =
            std::fs::read_to_string(self.dir.path().join(port.to_string()).join("pid")).unwrap();
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// A relay node process on the cluster.
fn spawn_node(cluster: &Cluster, dir: &Path, prefix: &str) -> RelayProcess {
    let mut args: Vec<&str> = hush_testkit::process::GENEROUS_RATES.to_vec();
    args.extend([
        "--store",
        "redis",
        "--redis-nodes",
        &cluster.nodes,
        "--redis-prefix",
        prefix,
        "--redis-wait-replicas",
        "1",
    ]);
    RelayProcess::spawn(Path::new(env!("CARGO_BIN_EXE_hush-relay")), dir, &args)
}

fn client_id(sender: u8, i: u32) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0] = sender;
    id[1..5].copy_from_slice(&i.to_be_bytes());
    id
}

/// Connects and authenticates at the first node of `nodes` that answers, trying each in turn.
async fn session(nodes: &[(SocketAddr, String)], a: &TestAccount, device: u32) -> Client {
    loop {
        for (addr, pin) in nodes {
            let Some(c) = Client::try_connect(*addr, pin).await else {
                continue;
            };
            let Some(server_frame::Kind::Challenge(ch)) = c
                .try_request(client_frame::Kind::Hello(api::Hello {}))
                .await
            else {
                continue;
            };
            let signature = c.auth_signature(&ch.nonce, a.id(), device, a.device(device));
            if let Some(server_frame::Kind::Ok(_)) = c
                .try_request(client_frame::Kind::Authenticate(api::Authenticate {
                    account: a.id().to_vec(),
                    device_id: device,
                    signature,
                }))
                .await
            {
                return c;
            }
        }
        // Every node refused or was down: try again in a moment (a client's back-off).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a load run saw.
struct Counts {
    acked: BTreeSet<[u8; 16]>,
    delivered: HashSet<[u8; 16]>,
    duplicates: usize,
    retried: u64,
}

impl Counts {
    /// Acknowledged sends never delivered.
    fn lost(&self) -> usize {
        self.acked
            .iter()
            .filter(|id| !self.delivered.contains(*id))
            .count()
    }
}

/// Runs `SENDERS` senders of `SENDS` sends each to Bob (one device) through `nodes` (each
/// client moves to the next node when its node goes away), calls `fault` once half the sends
/// are acknowledged, and then lets Bob read everything through `read_at`.
async fn load(
    nodes: Vec<(SocketAddr, String)>,
    read_at: Vec<(SocketAddr, String)>,
    bob: Arc<TestAccount>,
    senders: Vec<TestAccount>,
    fault: impl FnOnce(),
) -> Counts {
    let acked_total = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let half = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for (k, s) in senders.into_iter().enumerate() {
        let nodes = nodes.clone();
        let bob_id = bob.id();
        let acked_total = Arc::clone(&acked_total);
        let retried = Arc::clone(&retried);
        let half = Arc::clone(&half);
        tasks.push(tokio::spawn(async move {
            let k = u8::try_from(k).unwrap();
            let mut acked = Vec::new();
            let mut next = 0u32;
            while next < SENDS {
                let c = session(&nodes, &s, 1).await;
                while next < SENDS {
                    let body = [&[k][..], &next.to_be_bytes()].concat();
                    // A node killed mid-request never answers nor closes: give up on it after
                    // a while, as a client does, and send again elsewhere.
                    let sent = tokio::time::timeout(
                        Duration::from_secs(5),
                        c.try_send(client_id(k, next), bob_id, &[1], &body),
                    )
                    .await
                    .unwrap_or(None);
                    match sent {
                        Some(server_frame::Kind::Sent(_)) => {
                            acked.push(client_id(k, next));
                            next += 1;
                            let n = acked_total.fetch_add(1, Ordering::SeqCst) + 1;
                            if n == u64::from(SENDS) * u64::from(SENDERS) / 2 {
                                half.notify_one();
                            }
                        }
                        // Not stored (the store is failing over): the same send again.
                        Some(server_frame::Kind::Error(_)) => {
                            retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Some(other) => panic!("unexpected answer: {other:?}"),
                        // The node went away: reconnect (elsewhere) and send it again.
                        None => {
                            retried.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
            acked
        }));
    }
    tokio::time::timeout(Duration::from_secs(120), half.notified())
        .await
        .expect("half the sends were never acknowledged");
    fault();
    let mut acked = BTreeSet::new();
    for t in tasks {
        let got = tokio::time::timeout(Duration::from_secs(180), t)
            .await
            .expect("senders never finished")
            .unwrap();
        acked.extend(got);
    }
    // Bob reads everything, acknowledging as he goes; what comes twice is counted and dropped.
    let mut delivered = HashSet::new();
    let mut duplicates = 0;
    let c = session(&read_at, &bob, 1).await;
    while delivered.len() < acked.len() {
        let d = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match c.event().await {
                    server_frame::Kind::Deliver(d) => return d,
                    server_frame::Kind::QueueDrained(_) | server_frame::Kind::PreKeysLow(_) => {}
                    other => panic!("unexpected: {other:?}"),
                }
            }
        })
        .await;
        let Ok(d) = d else {
            break; // nothing more comes: the rest is lost
        };
        c.ack(vec![d.seq]).await;
        let id: [u8; 16] = d.client_id.as_slice().try_into().unwrap();
        if !delivered.insert(id) {
            duplicates += 1;
        }
    }
    Counts {
        acked,
        delivered,
        duplicates,
        retried: retried.load(Ordering::Relaxed),
    }
}

async fn accounts(at: &(SocketAddr, String)) -> (Arc<TestAccount>, Vec<TestAccount>) {
    let bob = Arc::new(TestAccount::new(1));
    let c = Client::connect(at.0, &at.1).await;
    c.create(&bob, 1).await;
    let senders: Vec<TestAccount> = (0..SENDERS).map(|_| TestAccount::new(1)).collect();
    for s in &senders {
        let c = Client::connect(at.0, &at.1).await;
        c.create(s, 1).await;
    }
    (bob, senders)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_node_killed_under_load_loses_nothing_acknowledged() {
    let cluster = Cluster::start();
    let prefix = format!("f{}:", hex::encode(random::<8>()));
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = spawn_node(&cluster, da.path(), &prefix);
    let b = spawn_node(&cluster, db.path(), &prefix);
    let node_a = (a.addr, a.pin.clone());
    let node_b = (b.addr, b.pin.clone());
    let (bob, senders) = accounts(&node_a).await;
    let a = std::sync::Mutex::new(Some(a));
    let counts = load(
        vec![node_a.clone(), node_b.clone()],
        vec![node_b.clone()],
        bob,
        senders,
        || drop(a.lock().unwrap().take()), // SIGKILL node A
    )
    .await;
    println!(
        "relay node killed: {} sends acknowledged, {} delivered, {} delivered twice (dropped by \
         client id), {} sends retried, {} acknowledged and lost",
        counts.acked.len(),
        counts.delivered.len(),
        counts.duplicates,
        counts.retried,
        counts.lost()
    );
    assert_eq!(counts.acked.len(), usize::from(SENDERS) * SENDS as usize);
    assert_eq!(counts.lost(), 0, "acknowledged envelopes lost");
    assert!(counts.delivered.iter().all(|id| counts.acked.contains(id)));
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_primary_killed_under_load_fails_over_without_losing_anything_acknowledged() {
    let cluster = Cluster::start();
    let prefix = format!("f{}:", hex::encode(random::<8>()));
    let dir = tempfile::tempdir().unwrap();
    let relay = spawn_node(&cluster, dir.path(), &prefix);
    let node = (relay.addr, relay.pin.clone());
    let (bob, senders) = accounts(&node).await;
    let bob_id = bob.id();
    // The primary that holds Bob's mailbox.
    let victim = cluster.primary_of(&format!("{prefix}{{a:{}}}", hex::encode(bob.id())));
    let counts = load(vec![node.clone()], vec![node.clone()], bob, senders, || {
        cluster.kill(victim)
    })
    .await;
    println!(
        "redis primary {victim} killed: {} sends acknowledged, {} delivered, {} delivered twice \
         (dropped by client id), {} sends retried during the failover, {} acknowledged and lost",
        counts.acked.len(),
        counts.delivered.len(),
        counts.duplicates,
        counts.retried,
        counts.lost()
    );
    // The replica took over: Bob's slot has another primary now.
    let now = cluster.primary_of(&format!("{prefix}{{a:{}}}", hex::encode(bob_id)));
    assert_ne!(now, victim, "no failover happened");
    assert_eq!(counts.acked.len(), usize::from(SENDERS) * SENDS as usize);
    assert_eq!(counts.lost(), 0, "acknowledged envelopes lost");
    drop(relay);
}
