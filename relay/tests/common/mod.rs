//! What the relay's integration tests share: the test kit (relay configuration, test accounts,
//! a raw client of the protocol), and running a test on both stores.
#![allow(unused_imports, unused_macros)]

pub(crate) use hush_testkit::relay::start as start_relay;
pub(crate) use hush_testkit::*;

/// Runs the test function `$name(store_kind, dir)` once per store (the caller imports
/// `StoreKind`).
macro_rules! on_both_stores {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(super::StoreKind::Memory, dir.path()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sled() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(super::StoreKind::Sled, dir.path()).await;
            }
        }
    };
}
