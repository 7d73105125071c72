//! The backend-independent `KvStore` suite on the in-memory store, run from outside the crate as
//! an app's own store (SQLite on a phone, say) would run it: `hush_core::kv_store_suite!` with
//! the feature `store-suite`. The sled backend runs the same suite in `store-sled`.
#![allow(clippy::unwrap_used)]

hush_core::kv_store_suite!(memory, ((), hush_core::store::memory::MemoryKv::new()));
