#![cfg(test)]

use super::{RedisOptions, RedisStore};

/// The cluster the tests use: `HUSH_TEST_REDIS_NODES` (comma-separated primaries), which
/// `scripts/test` sets after starting a loopback cluster. Each store gets a key prefix of its
/// own, so tests share the cluster without seeing each other's keys.
pub(crate) fn test_options() -> RedisOptions {
    let nodes = std::env::var("HUSH_TEST_REDIS_NODES").unwrap_or_else(|_| {
        panic!(
            "HUSH_TEST_REDIS_NODES is not set: run the tests with `bash scripts/test`, which \
             starts a Redis Cluster on loopback for them"
        )
    });
    let replicas = std::env::var("HUSH_TEST_REDIS_REPLICAS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    RedisOptions {
        nodes: nodes.split(',').map(str::to_owned).collect(),
        prefix: format!("t{:016x}:", rand::random::<u64>()),
        wait_replicas: replicas,
        wait_timeout_ms: 2000,
    }
}

pub(crate) fn test_store() -> RedisStore {
    RedisStore::open(test_options()).unwrap()
}

relay_store_suite!(suite, ((), super::test_store()));

use crate::store::*;

fn dev(a: u8, d: u32) -> DeviceId {
    DeviceId {
        account: [a; 32],
        device: d,
    }
}

#[test]
fn a_flush_waits_for_the_replicas_and_envelopes_survive_a_new_connection() {
    let options = test_options();
    let s = RedisStore::open(options.clone()).unwrap();
    let e = Envelope {
        recipient: dev(1, 1),
        share: dev(2, 7),
        client_id: [9; 16],
        body: b"\x00binary\xffbody".to_vec(),
        received_at: 1_700_000_000_123,
    };
    let q = s
        .enqueue(std::slice::from_ref(&e), &Quotas::UNLIMITED)
        .unwrap();
    assert!(q[0].fresh);
    s.flush().unwrap();
    drop(s);
    let again = RedisStore::open(options).unwrap();
    let got = again.fetch(&dev(1, 1), 0, 10).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope, e);
    assert_eq!(again.mailbox_bytes().unwrap(), usage::stored_bytes(&e));
    // A retry through another node's connection is still recognised.
    let retry = again.enqueue(&[e], &Quotas::UNLIMITED).unwrap();
    assert!(!retry[0].fresh);
    assert_eq!(retry[0].seq, got[0].seq);
}

#[test]
fn a_send_to_two_accounts_is_refused_whole_when_every_device_is_full() {
    let s = test_store();
    let cap = Quotas::queue_len(1);
    let mk = |to: DeviceId, id: u8| Envelope {
        recipient: to,
        share: dev(9, 1),
        client_id: [id; 16],
        body: vec![id; 10],
        received_at: 5,
    };
    s.enqueue(&[mk(dev(1, 1), 1), mk(dev(2, 1), 2)], &cap)
        .unwrap();
    assert!(matches!(
        s.enqueue(&[mk(dev(1, 1), 3), mk(dev(2, 1), 4)], &cap),
        Err(StoreError::QueueFull(_))
    ));
    let mixed = s
        .enqueue(&[mk(dev(1, 1), 5), mk(dev(2, 2), 6)], &cap)
        .unwrap();
    assert_eq!(mixed[0].full, Some(Full::Queue));
    assert!(mixed[1].fresh);
    assert_eq!(s.queue_len(&dev(2, 2)).unwrap(), 1);
}

#[test]
fn the_sweep_pages_through_a_long_queue_and_keeps_the_counters_exact() {
    let s = test_store();
    // 600 envelopes (more than two sweep pages), every third one recent.
    let envelopes: Vec<Envelope> = (0..600u32)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            Envelope {
                recipient: dev(4, 1),
                share: dev(5, 1),
                client_id: id,
                body: vec![7; 10],
                received_at: if i % 3 == 0 { 5_000 } else { 10 },
            }
        })
        .collect();
    for chunk in envelopes.chunks(100) {
        s.enqueue(chunk, &Quotas::UNLIMITED).unwrap();
    }
    assert_eq!(s.sweep(1_000).unwrap(), 400);
    assert_eq!(s.queue_len(&dev(4, 1)).unwrap(), 200);
    let per = usage::stored_bytes(&envelopes[0]);
    assert_eq!(s.queue_usage(&dev(4, 1)).unwrap().bytes, 200 * per);
    assert_eq!(s.account_mailbox_bytes(&[4; 32]).unwrap(), 200 * per);
    assert_eq!(s.mailbox_bytes().unwrap(), 200 * per);
    let left = s.fetch(&dev(4, 1), 0, 1000).unwrap();
    assert!(left.iter().all(|q| q.envelope.received_at == 5_000));
    assert_eq!(s.sweep(10_000).unwrap(), 200);
    assert_eq!(s.mailbox_bytes().unwrap(), 0);
    assert_eq!(s.queue_usage(&dev(4, 1)).unwrap(), usage::Count::default());
}

#[test]
fn a_replaced_device_list_is_kept_for_a_retried_publication() {
    let s = test_store();
    assert_eq!(s.previous_device_list(&[6; 32]).unwrap(), None);
    s.create_account(&[6; 32], 1, b"v1").unwrap();
    assert_eq!(s.previous_device_list(&[6; 32]).unwrap(), None);
    s.put_device_list(&[6; 32], 2, b"v2").unwrap();
    assert_eq!(
        s.previous_device_list(&[6; 32]).unwrap(),
        Some(b"v1".to_vec())
    );
    // A refused (stale) publication changes nothing.
    assert!(s.put_device_list(&[6; 32], 2, b"v2").is_err());
    assert_eq!(
        s.previous_device_list(&[6; 32]).unwrap(),
        Some(b"v1".to_vec())
    );
    assert_eq!(s.device_list(&[6; 32]).unwrap(), Some((2, b"v2".to_vec())));
}
