//! Profiles on disk: one written before the device and history stores had their own at-rest
//! subkey labels still opens, and is migrated to them once.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

use hush_client::engine::DB_STORE_LABEL;
use hush_client::messenger::HISTORY_STORE_LABEL;
use hush_client::{EngineConfig, Messenger};
use hush_core::device::Device;
use hush_core::store::kv::StoreError;
use hush_store_sled::SledKv;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use zeroize::Zeroizing;

const KEY: [u8; 32] = [3; 32];

fn rng(seed: u64) -> Box<ChaCha20Rng> {
    Box::new(ChaCha20Rng::seed_from_u64(seed))
}

/// Opens a store, waiting (bounded) for a just-closed handle to release sled's lock.
fn open_store(path: &Path, label: Option<&[u8]>, seed: u64) -> Result<SledKv, StoreError> {
    for _ in 0..500 {
        let r = match label {
            Some(l) => SledKv::open_labelled(path, Zeroizing::new(KEY), l, rng(seed)),
            None => SledKv::open(path, Zeroizing::new(KEY), rng(seed)),
        };
        match r {
            Err(StoreError::Io(e)) if e.contains("lock") => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
    panic!("store still locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_written_before_store_labels_still_opens_and_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    // The old layout: both stores under the unlabelled subkeys of the same at-rest key.
    let address = {
        let store = open_store(&dir.path().join("db"), None, 1).unwrap();
        let mut r = ChaCha20Rng::seed_from_u64(2);
        let device = Device::create_account(store, &mut r, 1_000).unwrap();
        device.address()
    };
    drop(open_store(&dir.path().join("history"), None, 3).unwrap());

    // Nothing listens there: the profile only has to open.
    let (messenger, _rx) = Messenger::open(EngineConfig {
        profile: dir.path().to_path_buf(),
        at_rest_key: Zeroizing::new(KEY),
        relay: free_port(),
        pin: "00".repeat(32),
    })
    .unwrap();
    assert_eq!(messenger.address(), address);
    messenger.shutdown().await;

    // Both stores now open under their own labels only.
    for (name, label) in [("db", DB_STORE_LABEL), ("history", HISTORY_STORE_LABEL)] {
        let path = dir.path().join(name);
        assert!(
            matches!(open_store(&path, None, 4), Err(StoreError::WrongKey)),
            "{name} still opens unlabelled"
        );
        let store = open_store(&path, Some(label), 5).unwrap();
        if name == "db" {
            assert_eq!(Device::open(store).unwrap().address(), address);
        }
    }
    // And the two labels differ: neither store opens under the other's.
    assert!(matches!(
        open_store(&dir.path().join("db"), Some(HISTORY_STORE_LABEL), 6),
        Err(StoreError::WrongKey)
    ));
}
