//! What the end-to-end tests share: the test kit's relay configuration, loopback addresses, the
//! engine configuration of a test profile, and waiting for events.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hush_client::{EngineConfig, Event, MessengerEvent};
use hush_relay::config::{Config, StoreKind};
pub(crate) use hush_testkit::relay::{any_port, free_port};
use tokio::sync::mpsc::UnboundedReceiver;
use zeroize::Zeroizing;

/// The at-rest key of every test profile (tests that open a profile's stores themselves use it).
pub(crate) const AT_REST_KEY: [u8; 32] = [7; 32];

/// How long [`next`] waits for an event before the test fails.
const EVENT_WAIT: Duration = Duration::from_secs(60);

/// The engine configuration of the profile in `dir`, reaching the relay at `addr` pinned to
/// `pin`.
pub(crate) fn engine_config(dir: &Path, addr: SocketAddr, pin: &str) -> EngineConfig {
    EngineConfig {
        profile: dir.to_path_buf(),
        at_rest_key: Zeroizing::new(AT_REST_KEY),
        relay: addr,
        pin: pin.to_owned(),
    }
}

/// The next messenger event that `pick` accepts (others are skipped).
pub(crate) async fn next<T>(
    rx: &mut UnboundedReceiver<MessengerEvent>,
    mut pick: impl FnMut(MessengerEvent) -> Option<T>,
) -> T {
    loop {
        let ev = tokio::time::timeout(EVENT_WAIT, rx.recv())
            .await
            .expect("nothing in time")
            .expect("messenger gone");
        if let Some(t) = pick(ev) {
            return t;
        }
    }
}

/// Waits for `n` messages (acknowledging each to the engine), skipping other events.
pub(crate) async fn messages(
    engine: &hush_client::Engine,
    rx: &mut UnboundedReceiver<Event>,
    n: usize,
) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while got.len() < n {
        let ev = tokio::time::timeout(EVENT_WAIT, rx.recv())
            .await
            .expect("no message in time")
            .expect("engine gone");
        if let Event::Message { id, plaintext, .. } = ev {
            got.push(plaintext.to_vec());
            engine.ack(id).unwrap();
        }
    }
    got
}

/// A status change of sent messages, for [`next`]: (status, message ids).
pub(crate) fn status_step(
    e: MessengerEvent,
) -> Option<(hush_client::messenger::MessageStatus, Vec<[u8; 16]>)> {
    match e {
        MessengerEvent::Status {
            message_ids,
            status,
            ..
        } => Some((status, message_ids)),
        _ => None,
    }
}

/// Nothing more reaches an engine within a short while (no message twice).
pub(crate) async fn nothing_more(rx: &mut UnboundedReceiver<Event>) {
    let extra = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match rx.recv().await {
                Some(Event::Message { plaintext, .. }) => return plaintext.to_vec(),
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    assert!(extra.is_err(), "a message was delivered twice: {extra:?}");
}

/// A sled relay in `dir` on `listen`, without metrics, with the test kit's limits.
pub(crate) fn relay_config(dir: &Path, listen: SocketAddr) -> Config {
    Config {
        listen,
        metrics_listen: None,
        ..hush_testkit::test_config(StoreKind::Sled, dir)
    }
}

/// The Redis Cluster the tests use (`bash scripts/test` starts one and names it here).
pub(crate) fn redis_nodes() -> Vec<String> {
    std::env::var("HUSH_TEST_REDIS_NODES")
        .expect(
            "HUSH_TEST_REDIS_NODES is not set: run the tests with `bash scripts/test`, which \
             starts a Redis Cluster on loopback for them",
        )
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// A relay node on the test cluster: data (certificate) in `dir`, keys under `prefix` (the
/// nodes of one deployment share it; each test has its own), with the test kit's limits.
pub(crate) fn cluster_node_config(dir: &Path, prefix: &str) -> Config {
    let replicas = std::env::var("HUSH_TEST_REDIS_REPLICAS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    Config {
        metrics_listen: None,
        redis_nodes: redis_nodes(),
        redis_prefix: prefix.to_owned(),
        redis_wait_replicas: replicas,
        ..hush_testkit::test_config(StoreKind::Redis, dir)
    }
}

/// A key prefix no other test uses.
pub(crate) fn fresh_prefix() -> String {
    format!("t{}:", hex::encode(hush_testkit::account::random::<8>()))
}
