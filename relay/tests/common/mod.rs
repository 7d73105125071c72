//! What the relay's integration tests share: the test kit (relay configuration, test accounts,
//! a raw client of the protocol), and running a test on both stores.
#![allow(unused_imports, unused_macros, dead_code)]

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

/// Starts this build's `hush-relay` binary on 127.0.0.1:0 with its data in `dir` (generous rate
/// limits: the crash and restart tests send fast).
pub(crate) fn spawn_relay(dir: &std::path::Path) -> RelayProcess {
    RelayProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_hush-relay")),
        dir,
        hush_testkit::process::GENEROUS_RATES,
    )
}

pub(crate) mod raw;

/// A client over QUIC, or over TLS on TCP with `HUSH_TEST_TRANSPORT=tcp`.
pub(crate) async fn test_client(r: &hush_relay::Running) -> Client {
    Client::connect_over(test_transport(), r).await
}
