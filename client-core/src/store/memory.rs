//! An in-memory [`KvStore`], for tests and ephemeral sessions.
//!
//! Nothing is persisted: "durable" means "visible to later reads of this value". `Clone` takes an
//! independent snapshot, which tests use to model a crash (keep the snapshot, drop the original).

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::kv::{Batch, BatchOp, KvEntry, KvStore, Namespace, StoreError};

/// A [`KvStore`] backed by ordered in-memory maps. Values are wiped when overwritten, deleted or
/// dropped.
///
/// Deliberately not `Debug`: it holds secret values.
#[derive(Clone, Default)]
pub struct MemoryKv {
    namespaces: BTreeMap<Namespace, BTreeMap<Vec<u8>, Zeroizing<Vec<u8>>>>,
}

impl MemoryKv {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl KvStore for MemoryKv {
    fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        Ok(self
            .namespaces
            .get(&ns)
            .and_then(|entries| entries.get(key))
            .cloned())
    }

    fn scan(&self, ns: Namespace) -> Result<Vec<KvEntry>, StoreError> {
        Ok(self
            .namespaces
            .get(&ns)
            .map(|entries| {
                entries
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        // Nothing below can fail, so applying the operations one by one is atomic.
        for op in batch {
            match op {
                BatchOp::Put { ns, key, value } => {
                    self.namespaces.entry(ns).or_default().insert(key, value);
                }
                BatchOp::Delete { ns, key } => {
                    if let Some(entries) = self.namespaces.get_mut(&ns) {
                        entries.remove(&key);
                        if entries.is_empty() {
                            self.namespaces.remove(&ns);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_is_an_independent_snapshot() {
        let mut store = MemoryKv::new();
        let mut batch = Batch::new();
        batch.put(Namespace::Sessions, b"k", b"before".to_vec());
        store.commit(batch).unwrap();

        let snapshot = store.clone();
        let mut batch = Batch::new();
        batch.put(Namespace::Sessions, b"k", b"after".to_vec()).put(
            Namespace::Groups,
            b"g",
            b"new".to_vec(),
        );
        store.commit(batch).unwrap();

        assert_eq!(
            snapshot
                .get(Namespace::Sessions, b"k")
                .unwrap()
                .map(|v| v.to_vec()),
            Some(b"before".to_vec())
        );
        assert!(snapshot.scan(Namespace::Groups).unwrap().is_empty());
        assert_eq!(
            store
                .get(Namespace::Sessions, b"k")
                .unwrap()
                .map(|v| v.to_vec()),
            Some(b"after".to_vec())
        );
    }

    #[test]
    fn usable_as_trait_object() {
        let mut store: Box<dyn KvStore> = Box::new(MemoryKv::new());
        let mut batch = Batch::new();
        batch.put(Namespace::Meta, b"v", b"1".to_vec());
        store.commit(batch).unwrap();
        assert_eq!(store.scan(Namespace::Meta).unwrap().len(), 1);
    }
}
