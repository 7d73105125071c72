//! The key-value layer every typed store is built on.
//!
//! A [`KvStore`] maps `(Namespace, key bytes)` to value bytes. Reads go straight to the backend;
//! writes are collected in a [`Batch`] and applied with [`KvStore::commit`], which is atomic (all
//! operations of the batch or none of them) and durable (once it returns `Ok` the data survives a
//! crash).
//!
//! Values are treated as secrets: they are carried in [`Zeroizing`] buffers so they are wiped from
//! memory when dropped, and none of the types here implement `Debug`.

use zeroize::Zeroizing;

/// A namespace (a separate key space) in the store.
///
/// The discriminant is the byte used on disk; it must never change for an existing variant.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    /// Store-level metadata (schema version, bookkeeping).
    Meta = 0,
    /// The local identity key pair and device identity.
    Identity = 1,
    /// Signed pre-keys.
    SignedPreKeys = 2,
    /// One-time (X25519) pre-keys.
    OneTimePreKeys = 3,
    /// KEM (ML-KEM) pre-keys.
    KemPreKeys = 4,
    /// Per-device Double Ratchet sessions.
    Sessions = 5,
    /// Known device lists of contacts.
    DeviceLists = 6,
    /// Message history.
    Messages = 7,
    /// Group sender keys.
    SenderKeys = 8,
    /// Group state.
    Groups = 9,
    /// Pairwise messages sent recently, kept to answer retry requests (PROTOCOL.md §20).
    SentLog = 10,
    /// Delivery keys of other devices, learnt from their sealed envelopes (PROTOCOL.md §21.5).
    DeliveryKeys = 11,
    /// Group-log notices sealed (or waiting for a session) and not yet taken by the relay
    /// (PROTOCOL.md §17.5).
    PendingNotices = 12,
    /// Group creations handed (or about to be handed) to the relay whose append has not been
    /// confirmed: the new group's secret, its signed creation and sealed first entry
    /// (PROTOCOL.md §17.5).
    PendingCreations = 13,
}

impl Namespace {
    /// Every namespace, in discriminant order.
    pub const ALL: [Namespace; 14] = [
        Namespace::Meta,
        Namespace::Identity,
        Namespace::SignedPreKeys,
        Namespace::OneTimePreKeys,
        Namespace::KemPreKeys,
        Namespace::Sessions,
        Namespace::DeviceLists,
        Namespace::Messages,
        Namespace::SenderKeys,
        Namespace::Groups,
        Namespace::SentLog,
        Namespace::DeliveryKeys,
        Namespace::PendingNotices,
        Namespace::PendingCreations,
    ];

    /// The byte that identifies this namespace on disk.
    #[must_use]
    pub const fn as_byte(self) -> u8 {
        self as u8
    }

    /// The namespace identified by `byte`, if any.
    #[must_use]
    pub fn from_byte(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|ns| ns.as_byte() == byte)
    }
}

/// One operation of a [`Batch`].
///
/// Deliberately not `Debug`: a put carries a secret value.
pub enum BatchOp {
    /// Insert or replace `key` in `ns` with `value`.
    Put {
        /// The namespace.
        ns: Namespace,
        /// The logical key.
        key: Vec<u8>,
        /// The value (wiped on drop).
        value: Zeroizing<Vec<u8>>,
    },
    /// Remove `key` from `ns` (a no-op if it is absent).
    Delete {
        /// The namespace.
        ns: Namespace,
        /// The logical key.
        key: Vec<u8>,
    },
}

impl BatchOp {
    /// The namespace this operation touches.
    #[must_use]
    pub fn namespace(&self) -> Namespace {
        match self {
            BatchOp::Put { ns, .. } | BatchOp::Delete { ns, .. } => *ns,
        }
    }

    /// The logical key this operation touches.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key, .. } => key,
        }
    }
}

/// An ordered list of puts and deletes, applied atomically by [`KvStore::commit`].
///
/// Operations are applied in order, so when several operations touch the same `(namespace, key)`
/// the last one wins. [`Batch::len`] counts operations as recorded, including ones that a later
/// operation on the same key supersedes.
///
/// Deliberately not `Debug`: it carries secret values.
#[derive(Default)]
pub struct Batch {
    ops: Vec<BatchOp>,
}

impl Batch {
    /// An empty batch.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an insert-or-replace of `key` in `ns`.
    pub fn put(
        &mut self,
        ns: Namespace,
        key: impl Into<Vec<u8>>,
        value: impl Into<Zeroizing<Vec<u8>>>,
    ) -> &mut Self {
        self.ops.push(BatchOp::Put {
            ns,
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Records a removal of `key` from `ns` (a no-op at commit time if the key is absent).
    pub fn delete(&mut self, ns: Namespace, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(BatchOp::Delete {
            ns,
            key: key.into(),
        });
        self
    }

    /// Whether the batch holds no operation.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The number of recorded operations.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Appends every operation of `other` after the operations of `self` (so `other` wins on
    /// conflicting keys).
    pub fn extend(&mut self, other: Batch) -> &mut Self {
        self.ops.extend(other.ops);
        self
    }

    /// The operations, in application order.
    pub fn iter(&self) -> impl Iterator<Item = &BatchOp> {
        self.ops.iter()
    }
}

impl IntoIterator for Batch {
    type Item = BatchOp;
    type IntoIter = std::vec::IntoIter<BatchOp>;

    fn into_iter(self) -> Self::IntoIter {
        self.ops.into_iter()
    }
}

/// One `(logical key, value)` pair returned by [`KvStore::scan`].
pub type KvEntry = (Vec<u8>, Zeroizing<Vec<u8>>);

/// Why a store operation failed. Messages never contain keys or values.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The storage backend failed (I/O error, backend bug, refused write).
    #[error("storage backend failure: {0}")]
    Io(String),
    /// The at-rest key does not open this store.
    #[error("the at-rest key does not open this store")]
    WrongKey,
    /// A record on disk failed authentication or is malformed.
    #[error("corrupt record in namespace {namespace:?}: {reason}")]
    Corrupt {
        /// The namespace the record was read from.
        namespace: Namespace,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// The records on disk are not the ones the store last committed: an older copy of a record
    /// was put back over a newer one, or records were removed or added behind the store's back
    /// (they no longer match its authenticated digest); or the whole store is older than the
    /// commit counter kept outside it (its rollback anchor). Nothing is read from such a store.
    #[error("the store was rolled back or altered: {0}")]
    RolledBack(&'static str),
    /// The store is unusable because an earlier operation failed half-way (a lock holder
    /// panicked, or a commit could not be made durable); drop it and reopen.
    #[error("store poisoned by an earlier failure; reopen it")]
    Poisoned,
}

/// An atomic, durable key-value store partitioned into [`Namespace`]s.
pub trait KvStore: Send {
    /// The value stored under `key` in `ns`, if any.
    ///
    /// # Errors
    /// [`StoreError::Io`] on backend failure, [`StoreError::Corrupt`] if the stored record does not
    /// authenticate, [`StoreError::Poisoned`] if the store is unusable.
    fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError>;

    /// Every `(key, value)` pair of `ns`, sorted by key (bytewise).
    ///
    /// # Errors
    /// As for [`KvStore::get`]; any corrupt record in `ns` fails the whole scan.
    fn scan(&self, ns: Namespace) -> Result<Vec<KvEntry>, StoreError>;

    /// Applies every operation of `batch`, in order, atomically and durably: when this returns
    /// `Ok` the whole batch survives a crash; when it returns `Err` none of it is visible.
    ///
    /// # Errors
    /// [`StoreError::Io`] on backend failure, [`StoreError::Poisoned`] if the store is unusable.
    fn commit(&mut self, batch: Batch) -> Result<(), StoreError>;

    /// Whether an earlier failure left the store unusable until [`KvStore::reopen`].
    fn is_poisoned(&self) -> bool {
        false
    }

    /// Closes and opens the backend again (after it was poisoned); afterwards the store holds
    /// whatever the failed commit left durable, all of it or none. Backends that cannot be
    /// poisoned do nothing.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the backend cannot be opened again (the store stays poisoned).
    fn reopen(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A boxed store is a store, so apps can choose the backend at run time (`Device<Box<dyn KvStore>>`).
impl<T: KvStore + ?Sized> KvStore for Box<T> {
    fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        (**self).get(ns, key)
    }

    fn scan(&self, ns: Namespace) -> Result<Vec<KvEntry>, StoreError> {
        (**self).scan(ns)
    }

    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        (**self).commit(batch)
    }

    fn is_poisoned(&self) -> bool {
        (**self).is_poisoned()
    }

    fn reopen(&mut self) -> Result<(), StoreError> {
        (**self).reopen()
    }
}

/// The backend-independent test-suite: `kv_store_suite!(module_name, make_expr)` where
/// `make_expr` evaluates to `(guard, store)` — a fresh, empty store plus anything that must stay
/// alive as long as it (a temporary directory, or `()`). Every backend runs it from the crate that
/// tests it, as an app's own store would (feature `store-suite`, inside a `#[cfg(test)]` module
/// or an integration test): `MemoryKv` in `client-core/tests/store_suite.rs`, `SledKv` in
/// `store-sled`.
#[cfg(feature = "store-suite")]
#[macro_export]
macro_rules! kv_store_suite {
    ($name:ident, $make:expr) => {
        #[cfg(test)]
        #[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
        mod $name {
            use std::collections::BTreeMap;

            use $crate::__zeroize::Zeroizing;
            use $crate::store::kv::{Batch, KvStore, Namespace};

            fn z(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
                Zeroizing::new(bytes.to_vec())
            }

            fn get(store: &impl KvStore, ns: Namespace, key: &[u8]) -> Option<Vec<u8>> {
                store.get(ns, key).unwrap().map(|v| v.to_vec())
            }

            fn scan(store: &impl KvStore, ns: Namespace) -> Vec<(Vec<u8>, Vec<u8>)> {
                store
                    .scan(ns)
                    .unwrap()
                    .into_iter()
                    .map(|(k, v)| (k, v.to_vec()))
                    .collect()
            }

            #[test]
            fn fresh_store_is_empty() {
                let (_guard, store) = $make;
                for ns in Namespace::ALL {
                    assert!(scan(&store, ns).is_empty(), "{ns:?} not empty");
                    assert_eq!(get(&store, ns, b"anything"), None);
                    assert_eq!(get(&store, ns, b""), None);
                }
            }

            #[test]
            fn put_get_delete() {
                let (_guard, mut store) = $make;
                let mut batch = Batch::new();
                batch.put(Namespace::Sessions, b"alice/1", z(b"session-a"));
                store.commit(batch).unwrap();
                assert_eq!(
                    get(&store, Namespace::Sessions, b"alice/1"),
                    Some(b"session-a".to_vec())
                );
                assert_eq!(get(&store, Namespace::Sessions, b"alice/2"), None);
                // Same key, other namespace: independent.
                assert_eq!(get(&store, Namespace::Messages, b"alice/1"), None);

                let mut batch = Batch::new();
                batch.delete(Namespace::Sessions, b"alice/1");
                store.commit(batch).unwrap();
                assert_eq!(get(&store, Namespace::Sessions, b"alice/1"), None);
                assert!(scan(&store, Namespace::Sessions).is_empty());

                // Deleting an absent key is a no-op.
                let mut batch = Batch::new();
                batch.delete(Namespace::Sessions, b"never-written");
                store.commit(batch).unwrap();
                assert!(scan(&store, Namespace::Sessions).is_empty());
            }

            #[test]
            fn empty_value_is_not_absent() {
                let (_guard, mut store) = $make;
                let mut batch = Batch::new();
                batch.put(Namespace::Meta, b"flag", z(b""));
                store.commit(batch).unwrap();
                assert_eq!(get(&store, Namespace::Meta, b"flag"), Some(Vec::new()));
                assert_eq!(
                    scan(&store, Namespace::Meta),
                    vec![(b"flag".to_vec(), Vec::new())]
                );
            }

            #[test]
            fn overwrite() {
                let (_guard, mut store) = $make;
                let mut batch = Batch::new();
                batch.put(Namespace::Identity, b"self", z(b"first"));
                batch.put(Namespace::Groups, b"self", z(b"group"));
                store.commit(batch).unwrap();
                let mut batch = Batch::new();
                batch.put(Namespace::Identity, b"self", z(b"second, longer value"));
                store.commit(batch).unwrap();
                assert_eq!(
                    get(&store, Namespace::Identity, b"self"),
                    Some(b"second, longer value".to_vec())
                );
                let mut batch = Batch::new();
                batch.put(Namespace::Identity, b"self", z(b"3"));
                store.commit(batch).unwrap();
                assert_eq!(
                    get(&store, Namespace::Identity, b"self"),
                    Some(b"3".to_vec())
                );
                assert_eq!(scan(&store, Namespace::Identity).len(), 1);
                assert_eq!(
                    get(&store, Namespace::Groups, b"self"),
                    Some(b"group".to_vec())
                );
            }

            #[test]
            fn scan_returns_only_that_namespace_sorted() {
                let (_guard, mut store) = $make;
                let keys: [&[u8]; 6] = [b"m", b"b", b"zz", b"a", b"ab", b"z"];
                let mut batch = Batch::new();
                for (i, key) in keys.iter().enumerate() {
                    batch.put(Namespace::Sessions, *key, vec![u8::try_from(i).unwrap(); 3]);
                    batch.put(Namespace::Messages, *key, z(b"message"));
                }
                batch.put(Namespace::DeviceLists, b"only-here", z(b"x"));
                batch.put(Namespace::Meta, b"meta", z(b"y"));
                store.commit(batch).unwrap();

                let mut expected: Vec<(Vec<u8>, Vec<u8>)> = keys
                    .iter()
                    .enumerate()
                    .map(|(i, key)| (key.to_vec(), vec![u8::try_from(i).unwrap(); 3]))
                    .collect();
                expected.sort();
                assert_eq!(scan(&store, Namespace::Sessions), expected);
                assert!(
                    scan(&store, Namespace::Messages)
                        .iter()
                        .all(|(_, v)| v == b"message")
                );
                assert_eq!(scan(&store, Namespace::Messages).len(), keys.len());
                assert_eq!(
                    scan(&store, Namespace::DeviceLists),
                    vec![(b"only-here".to_vec(), b"x".to_vec())]
                );
                assert_eq!(
                    scan(&store, Namespace::Meta),
                    vec![(b"meta".to_vec(), b"y".to_vec())]
                );
                for ns in [
                    Namespace::Identity,
                    Namespace::SignedPreKeys,
                    Namespace::OneTimePreKeys,
                    Namespace::KemPreKeys,
                    Namespace::SenderKeys,
                    Namespace::Groups,
                ] {
                    assert!(scan(&store, ns).is_empty(), "{ns:?} not empty");
                }
            }

            #[test]
            fn batch_later_op_wins() {
                let (_guard, mut store) = $make;
                let mut seed = Batch::new();
                seed.put(Namespace::OneTimePreKeys, b"old", z(b"old-value"));
                store.commit(seed).unwrap();

                let mut batch = Batch::new();
                batch
                    .put(Namespace::SignedPreKeys, b"k", z(b"1"))
                    .put(Namespace::SignedPreKeys, b"k", z(b"2"))
                    .delete(Namespace::SignedPreKeys, b"k")
                    .put(Namespace::SignedPreKeys, b"k", z(b"3"))
                    .put(Namespace::SignedPreKeys, b"gone", z(b"x"))
                    .delete(Namespace::SignedPreKeys, b"gone")
                    .delete(Namespace::OneTimePreKeys, b"old")
                    .put(Namespace::OneTimePreKeys, b"old", z(b"reborn"))
                    .put(Namespace::KemPreKeys, b"kem", z(b"kem-value"));
                assert_eq!(batch.len(), 9);
                assert!(!batch.is_empty());
                store.commit(batch).unwrap();

                assert_eq!(
                    get(&store, Namespace::SignedPreKeys, b"k"),
                    Some(b"3".to_vec())
                );
                assert_eq!(get(&store, Namespace::SignedPreKeys, b"gone"), None);
                assert_eq!(
                    get(&store, Namespace::OneTimePreKeys, b"old"),
                    Some(b"reborn".to_vec())
                );
                assert_eq!(
                    get(&store, Namespace::KemPreKeys, b"kem"),
                    Some(b"kem-value".to_vec())
                );
                assert_eq!(scan(&store, Namespace::SignedPreKeys).len(), 1);
            }

            #[test]
            fn batch_extend_keeps_order() {
                let (_guard, mut store) = $make;
                let mut first = Batch::new();
                first.put(Namespace::SenderKeys, b"a", z(b"first")).put(
                    Namespace::SenderKeys,
                    b"b",
                    z(b"kept"),
                );
                let mut second = Batch::new();
                second
                    .put(Namespace::SenderKeys, b"a", z(b"second"))
                    .delete(Namespace::SenderKeys, b"c");
                first.extend(second);
                assert_eq!(first.len(), 4);
                let touched: Vec<&[u8]> = first.iter().map(|op| op.key()).collect();
                assert_eq!(touched, vec![&b"a"[..], b"b", b"a", b"c"]);
                store.commit(first).unwrap();
                assert_eq!(
                    scan(&store, Namespace::SenderKeys),
                    vec![
                        (b"a".to_vec(), b"second".to_vec()),
                        (b"b".to_vec(), b"kept".to_vec()),
                    ]
                );
            }

            #[test]
            fn empty_batch_is_ok() {
                let (_guard, mut store) = $make;
                let batch = Batch::new();
                assert!(batch.is_empty());
                assert_eq!(batch.len(), 0);
                store.commit(batch).unwrap();
                let mut batch = Batch::new();
                batch.put(Namespace::Groups, b"g", z(b"v"));
                store.commit(batch).unwrap();
                store.commit(Batch::new()).unwrap();
                assert_eq!(
                    scan(&store, Namespace::Groups),
                    vec![(b"g".to_vec(), b"v".to_vec())]
                );
            }

            #[test]
            fn large_values() {
                let (_guard, mut store) = $make;
                let big: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
                let mut batch = Batch::new();
                batch.put(Namespace::Messages, b"big", big.clone());
                batch.put(Namespace::Messages, b"small", z(b"s"));
                store.commit(batch).unwrap();
                assert_eq!(get(&store, Namespace::Messages, b"big"), Some(big.clone()));
                assert_eq!(
                    scan(&store, Namespace::Messages),
                    vec![(b"big".to_vec(), big), (b"small".to_vec(), b"s".to_vec())]
                );
                let mut batch = Batch::new();
                batch.put(Namespace::Messages, b"big", z(b"shrunk"));
                store.commit(batch).unwrap();
                assert_eq!(
                    get(&store, Namespace::Messages, b"big"),
                    Some(b"shrunk".to_vec())
                );
            }

            #[test]
            fn binary_keys_including_empty() {
                let (_guard, mut store) = $make;
                let all_bytes: Vec<u8> = (0..=255u8).collect();
                let keys: Vec<Vec<u8>> = vec![
                    Vec::new(),
                    vec![0],
                    vec![0, 0],
                    vec![0xff],
                    vec![0xff; 64],
                    vec![0, 0xff, 0],
                    all_bytes.clone(),
                    all_bytes.iter().rev().copied().collect(),
                    b"prefix".to_vec(),
                    b"prefix\0".to_vec(),
                    b"prefix-longer".to_vec(),
                ];
                let mut expected = BTreeMap::new();
                let mut batch = Batch::new();
                for (i, key) in keys.iter().enumerate() {
                    let value = format!("value-{i}").into_bytes();
                    batch.put(Namespace::DeviceLists, key.clone(), value.clone());
                    expected.insert(key.clone(), value);
                }
                store.commit(batch).unwrap();
                for (key, value) in &expected {
                    assert_eq!(
                        get(&store, Namespace::DeviceLists, key).as_ref(),
                        Some(value)
                    );
                }
                let expected_scan: Vec<(Vec<u8>, Vec<u8>)> = expected.clone().into_iter().collect();
                assert_eq!(scan(&store, Namespace::DeviceLists), expected_scan);

                let mut batch = Batch::new();
                batch.delete(Namespace::DeviceLists, Vec::new());
                store.commit(batch).unwrap();
                assert_eq!(get(&store, Namespace::DeviceLists, b""), None);
                assert_eq!(
                    get(&store, Namespace::DeviceLists, &[0]),
                    Some(b"value-1".to_vec())
                );
                expected.remove(&Vec::new());
                let expected_scan: Vec<(Vec<u8>, Vec<u8>)> = expected.into_iter().collect();
                assert_eq!(scan(&store, Namespace::DeviceLists), expected_scan);
            }

            #[test]
            fn many_keys_in_one_batch() {
                let (_guard, mut store) = $make;
                let mut batch = Batch::new();
                for i in 0..500u32 {
                    batch.put(
                        Namespace::Messages,
                        i.to_be_bytes(),
                        i.to_le_bytes().to_vec(),
                    );
                }
                store.commit(batch).unwrap();
                let all = scan(&store, Namespace::Messages);
                assert_eq!(all.len(), 500);
                for (i, (key, value)) in (0..500u32).zip(all) {
                    assert_eq!(key, i.to_be_bytes());
                    assert_eq!(value, i.to_le_bytes());
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_bytes_round_trip() {
        for (i, ns) in Namespace::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(ns.as_byte()), i);
            assert_eq!(Namespace::from_byte(ns.as_byte()), Some(ns));
        }
        assert_eq!(Namespace::from_byte(14), None);
        assert_eq!(Namespace::from_byte(0xff), None);
    }

    #[test]
    fn batch_ops_expose_namespace_and_key() {
        let mut batch = Batch::new();
        batch
            .put(Namespace::Sessions, b"k".to_vec(), b"v".to_vec())
            .delete(Namespace::Groups, b"g".to_vec());
        let ops: Vec<(Namespace, Vec<u8>)> = batch
            .into_iter()
            .map(|op| (op.namespace(), op.key().to_vec()))
            .collect();
        assert_eq!(
            ops,
            vec![
                (Namespace::Sessions, b"k".to_vec()),
                (Namespace::Groups, b"g".to_vec())
            ]
        );
    }

    #[test]
    fn error_messages_are_generic() {
        let err = StoreError::Corrupt {
            namespace: Namespace::Sessions,
            reason: "authentication failed",
        };
        assert_eq!(
            err.to_string(),
            "corrupt record in namespace Sessions: authentication failed"
        );
        assert_eq!(
            StoreError::WrongKey.to_string(),
            "the at-rest key does not open this store"
        );
    }
}
