//! What several device tests share: a pre-key bundle built from what a device publishes, one
//! device learning another's account list, and a memory store a test can look into.
#![cfg(test)]
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use hush_core::device::Device;
use hush_core::prekeys::{PreKeyBundle, PublishedPreKeys};
use hush_core::store::kv::{Batch, KvEntry, KvStore, Namespace, StoreError};
use hush_core::store::memory::MemoryKv;
use zeroize::Zeroizing;

/// A bundle from what `p` publishes, using the last-resort ML-KEM key and no one-time key.
pub(crate) fn bundle(p: &PublishedPreKeys) -> PreKeyBundle {
    p.bundle(None, None)
}

/// `a` accepts the current device list of `b`'s account.
pub(crate) fn introduce<S: KvStore, T: KvStore>(a: &mut Device<S>, b: &Device<T>) {
    let acct = b.address().account;
    let list = b.device_list(&acct).unwrap().signed_bytes().to_vec();
    a.accept_device_list(&list, &acct, 0).unwrap();
}

/// A memory store the test can read and change while a device uses it (a clone shares it).
#[derive(Clone, Default)]
pub(crate) struct Shared(pub(crate) Arc<Mutex<MemoryKv>>);

impl KvStore for Shared {
    fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        self.0.lock().unwrap().get(ns, key)
    }
    fn scan(&self, ns: Namespace) -> Result<Vec<KvEntry>, StoreError> {
        self.0.lock().unwrap().scan(ns)
    }
    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        self.0.lock().unwrap().commit(batch)
    }
}
