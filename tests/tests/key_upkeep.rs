//! Key upkeep over a real relay on 127.0.0.1: when others drain a device's one-time pre-keys
//! (without ever using them), the relay's `PreKeysLow` makes the device upload new ones, although
//! it still holds every key it made.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

use hush_client::Engine;
use hush_client::conn::RelayConnection;
use hush_core::device::Device;
use hush_proto::relay_api::{self as api, client_frame, server_frame};
use hush_store_sled::SledKv;
use prost::Message;
use rand_core::SeedableRng;
use zeroize::Zeroizing;

const WAIT: Duration = Duration::from_secs(30);

/// The device of a stopped engine's profile (for driving the relay by hand).
fn device_of(profile: &Path) -> Device<SledKv> {
    for _ in 0..500 {
        match SledKv::open_labelled(
            &profile.join("db"),
            Zeroizing::new(AT_REST_KEY),
            hush_client::engine::DB_STORE_LABEL,
            // Only read and signed with here: nothing is sealed under this generator.
            Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(1)),
        ) {
            Ok(s) => return Device::open(s).unwrap(),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    panic!("store does not open");
}

/// One bundle of `target` (device 1); the id of the one-time key it carries, if any.
async fn claim(conn: &RelayConnection, target: &hush_core::keys::AccountId) -> Option<u32> {
    let server_frame::Kind::Bundle(b) = conn
        .request(client_frame::Kind::FetchBundle(api::FetchBundle {
            account: target.as_bytes().to_vec(),
            device_id: 1,
        }))
        .await
        .unwrap()
    else {
        panic!("not a bundle");
    };
    let bundle = hush_proto::wire::PreKeyBundle::decode(b.bundle.as_slice()).unwrap();
    bundle.one_time_pre_key.map(|k| k.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_keys_low_from_the_relay_makes_the_device_upload_new_one_time_keys() {
    let relay_dir = tempfile::tempdir().unwrap();
    // One requester drains the keys here: the relay's rationing of one-time keys is not what
    // this test is about.
    let mut config = relay_config(relay_dir.path(), any_port());
    let lots = hush_relay::config::RateLimit {
        per_second: 100_000.0,
        burst: 100_000,
    };
    config.rate.one_time_keys_per_target = lots;
    config.rate.one_time_keys_per_pair = lots;
    config.rate.one_time_keys_per_requester = lots;
    let relay = hush_relay::start(config).await.unwrap();
    let (bd, md) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (bob, _b_rx) =
        Engine::create_account(engine_config(bd.path(), relay.addr, &relay.fingerprint))
            .await
            .unwrap();
    bob.connected(WAIT).await.unwrap();
    let b = bob.address().unwrap().account;
    let (mallory, _m_rx) =
        Engine::create_account(engine_config(md.path(), relay.addr, &relay.fingerprint))
            .await
            .unwrap();
    mallory.connected(WAIT).await.unwrap();
    mallory.shutdown().await;
    let m = device_of(md.path());
    let me = m.address();
    let (conn, _events) = RelayConnection::connect(relay.addr, &relay.fingerprint)
        .await
        .unwrap();
    conn.authenticate(*me.account.as_bytes(), me.device_id, |x, c| {
        m.sign_relay_challenge(x, c)
    })
    .await
    .unwrap();

    // Take Bob's one-time keys and never use them. He made ONE_TIME_PRE_KEY_BATCH of them;
    // more can only come from uploads he makes by himself when the relay tells him he runs low.
    let made = usize::try_from(hush_core::consts::ONE_TIME_PRE_KEY_BATCH).unwrap();
    let mut claimed = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while claimed.len() <= made {
        match claim(&conn, &b).await {
            Some(id) => assert!(claimed.insert(id), "a one-time key handed out twice"),
            None => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no new one-time keys uploaded"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    conn.close();
    bob.shutdown().await;
    relay.stop().await;
}
