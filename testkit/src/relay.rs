//! A relay in this process: loopback, port 0, a temporary data directory, limits out of the way.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hush_relay::config::{Config, RateLimit, StoreKind, TcpListen};

/// A relay configuration for tests: `127.0.0.1:0` (QUIC, and TLS over TCP on a port of its own), metrics on `127.0.0.1:0`, every rate limit
/// far above what a test does, plain-HTTP push allowed, and one address block allowed as many
/// connections as tests make (every test client connects from 127.0.0.1).
pub fn test_config(store: StoreKind, dir: &Path) -> Config {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        listen: any_port(),
        // A port of its own: the UDP port's number may be taken over TCP on a busy host.
        tcp_listen: TcpListen::At(any_port()),
        metrics_listen: Some(any_port()),
        store,
        ..Config::default()
    };
    let lots = RateLimit {
        per_second: 100_000.0,
        burst: 100_000,
    };
    let r = &mut cfg.rate;
    for rate in [
        &mut r.sends,
        &mut r.prekey_fetches,
        &mut r.account_creations,
        &mut r.uploads,
        &mut r.blob_uploads,
        &mut r.account_sends,
        &mut r.account_prekey_fetches,
        &mut r.account_uploads,
        &mut r.one_time_keys_per_target,
        &mut r.one_time_keys_per_pair,
        &mut r.one_time_keys_per_requester,
        &mut r.group_log_appends,
        &mut r.group_log_reads,
    ] {
        *rate = lots;
    }
    cfg.push.allow_plain_http = true;
    cfg.max_connections_per_block = 100_000;
    cfg
}

/// 127.0.0.1, port chosen by the system.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A free port on 127.0.0.1, for a relay that must come back at the same address after a
/// restart.
pub fn free_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind(any_port()).unwrap();
    s.local_addr().unwrap()
}

/// A relay running in this process, with the temporary directory that holds its data (removed
/// when this is dropped).
pub struct TestRelay {
    /// The running relay (address, fingerprint, metrics, shutdown).
    pub running: hush_relay::Running,
    /// Its data directory.
    pub dir: tempfile::TempDir,
    /// The clock it reads: the system's time until a test moves it ahead.
    pub clock: Arc<crate::OffsetClock>,
}

impl TestRelay {
    /// Starts a relay on `store` with [`test_config`] in a new temporary directory.
    pub async fn start(store: StoreKind) -> Self {
        Self::start_with(store, |_| {}).await
    }

    /// As [`TestRelay::start`], with `adjust` applied to the configuration first.
    pub async fn start_with(store: StoreKind, adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(store, dir.path());
        adjust(&mut cfg);
        let clock = crate::OffsetClock::new();
        let running = hush_relay::start_with_clock(cfg, Arc::clone(&clock) as _)
            .await
            .unwrap();
        Self {
            running,
            dir,
            clock,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// Where it listens for TLS over TCP.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.running
            .tcp_addr
            .expect("the test relay listens on TCP")
    }

    /// The certificate fingerprint clients pin.
    pub fn pin(&self) -> &str {
        &self.running.fingerprint
    }

    /// Drains and stops it; its directory stays until `self.dir` is dropped.
    pub async fn stop(self) -> tempfile::TempDir {
        self.running.stop().await;
        self.dir
    }
}

/// Starts a relay with `cfg`.
pub async fn start(cfg: Config) -> hush_relay::Running {
    hush_relay::start(cfg).await.unwrap()
}
