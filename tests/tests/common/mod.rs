//! What the end-to-end tests share: a relay configuration for tests, and free loopback ports.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;

use hush_relay::config::{Config, RateLimit, StoreKind};

/// A sled relay in `dir` on `listen`, with every rate limit out of the way of the tests.
pub(crate) fn relay_config(dir: &Path, listen: SocketAddr) -> Config {
    let lots = RateLimit {
        per_second: 100_000.0,
        burst: 100_000,
    };
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        listen,
        metrics_listen: None,
        store: StoreKind::Sled,
        ..Config::default()
    };
    cfg.rate.sends = lots;
    cfg.rate.account_sends = lots;
    cfg.rate.prekey_fetches = lots;
    cfg.rate.account_prekey_fetches = lots;
    cfg.rate.uploads = lots;
    cfg.rate.account_uploads = lots;
    cfg.rate.account_creations = lots;
    cfg.rate.blob_uploads = lots;
    // Every client of these tests connects from 127.0.0.1: one address block.
    cfg.max_connections_per_block = 100_000;
    cfg
}

/// Any port on 127.0.0.1, for a relay that must come back at the same address after a restart.
pub(crate) fn free_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// 127.0.0.1, port chosen by the system.
pub(crate) fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}
