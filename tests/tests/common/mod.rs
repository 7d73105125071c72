//! What the end-to-end tests share: the test kit's relay configuration, and loopback addresses.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::path::Path;

use hush_relay::config::{Config, StoreKind};
pub(crate) use hush_testkit::relay::{any_port, free_port};

/// A sled relay in `dir` on `listen`, without metrics, with the test kit's limits.
pub(crate) fn relay_config(dir: &Path, listen: SocketAddr) -> Config {
    Config {
        listen,
        metrics_listen: None,
        ..hush_testkit::test_config(StoreKind::Sled, dir)
    }
}
