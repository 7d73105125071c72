//! Store unpickling: Bob's store (see [`crate::fixture`]) with one record replaced or added by the
//! input, opened as client-core opens it after a restart, and then used, so every record type it
//! reads back is decoded: device keys, signed, one-time and ML-KEM pre-key secrets, used
//! last-resort base keys, known device lists, counters, group logs and buffered group messages
//! (at open); sessions, sender-key records and inbox messages (on first use).
//!
//! Contract: a corrupt or hostile store is refused or tolerated with an error, never a panic.

use hush_core::device::Device;
use hush_core::store::kv::{Batch, KvStore, Namespace};
use hush_core::store::memory::MemoryKv;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use zeroize::Zeroizing;

use crate::fixture::{self, NOW};

/// Every record of the fixture's store, in a fixed order: (namespace, key).
pub fn records() -> Vec<(Namespace, Vec<u8>)> {
    let store = &fixture::get().bob_store;
    Namespace::ALL
        .iter()
        .flat_map(|ns| store.scan(*ns).unwrap().into_iter().map(|(k, _)| (*ns, k)))
        .collect()
}

/// Longest key taken from the input for an added record (a group id and a device address).
const MAX_NEW_KEY: usize = 32 + 36;

/// The target. Byte 0 picks a record of the fixture's store (in [`records`] order), whose value
/// becomes the rest of the input; past the last record it picks a namespace instead, byte 1 is
/// the length of a new key taken from the input and the remainder is that record's value.
pub fn open(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let records = records();
    let mut store: MemoryKv = fixture::get().bob_store.clone();
    let mut batch = Batch::new();
    match records.get(usize::from(sel)) {
        Some((ns, key)) => {
            batch.put(*ns, key.clone(), Zeroizing::new(rest.to_vec()));
        }
        None => {
            let ns = Namespace::ALL[usize::from(sel) % Namespace::ALL.len()];
            let Some((&len, rest)) = rest.split_first() else {
                return;
            };
            let (key, value) = rest.split_at(usize::from(len).min(MAX_NEW_KEY).min(rest.len()));
            batch.put(ns, key.to_vec(), Zeroizing::new(value.to_vec()));
        }
    }
    store.commit(batch).unwrap();
    use_store(store);
}

/// Opens a device on `store` and reads everything back.
fn use_store(store: MemoryKv) {
    let f = fixture::get();
    let Ok(mut dev) = Device::open(store) else {
        return;
    };
    let mut rng = ChaCha20Rng::from_seed([5; 32]);
    let _ = dev.pending_messages();
    let _ = dev.one_time_pre_key_count();
    let _ = dev.published_pre_keys();
    let _ = dev.has_session(&f.alice, NOW);
    let _ = dev.decrypt(&f.alice, &f.pairwise[0], &mut rng, NOW);
    let _ = dev.sender_key_status(&f.group, &f.alice);
    let _ = dev.decrypt_group(&f.group_messages[0], &mut rng, NOW);
    for g in dev.group_ids() {
        let _ = dev.group_devices(&g);
    }
    let _ = dev.group_encrypt(&f.group, b"after", &mut rng, NOW);
    let _ = dev.retry_missing_sender_keys(&mut rng, NOW);
    let _ = dev.retire_stale_sessions(NOW);
    let _ = dev.pending_messages();
}
