//! The blind Hush relay.
//!
//! It stores only public pre-keys, signed device lists, opaque encrypted envelopes and encrypted
//! blobs, and never sees plaintext or private keys. This crate never depends on client-core.
//!
//! Layout: [`store`] (one trait per concern, in memory and on sled, one test-suite for both),
//! [`writer`] (the one thread that writes the store, in batches, with one flush per batch),
//! [`server`] (QUIC endpoint, accept loop, sweeper, drain), [`conn`] (a connection: the sans-IO
//! [`conn::ConnState`] with its request handlers by flow, and the thin async task around it),
//! [`shared`] (what connections share), [`admit`] (connections and pending device links counted
//! per address block and per account), [`router`] (connected devices, behind a trait for a
//! clustered backend), [`push`] (content-free wake-ups), [`ratelimit`], [`verify`] (checks on
//! signed public material), [`frame`], [`config`], [`tls`], [`ops`] (metrics and health),
//! [`backup`]. The binary (`main.rs`) only parses its settings and signals and calls [`start`].

#![deny(missing_docs)]
// The relay is an I/O shell: it reads the clock and the system RNG (client-core may not).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod admit;
pub mod backup;
mod blob;
pub mod clock;
pub mod config;
pub mod conn;
pub use hush_net::frame;
pub mod limits;
pub mod ops;
pub mod push;
pub mod ratelimit;
pub mod router;
pub mod server;
pub mod shared;
pub mod store;
pub mod tls;
pub mod verify;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreKind};
use crate::ops::Metrics;
use crate::router::LocalRouter;
use crate::router::cluster::RedisRouter;
use crate::store::RelayStore;
use crate::store::blobs::{BlobStore, FileBlobs, MemoryBlobs, RedisBlobs};
use crate::store::memory::MemoryStore;
use crate::store::redis_store::{Redis, RedisOptions, RedisStore};
use crate::store::sled_store::SledStore;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory or database could not be opened.
    #[error("storage: {0}")]
    Store(#[from] store::StoreError),
    /// The certificate could not be loaded or made.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// A socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Anything else while setting up.
    #[error("{0}")]
    Other(String),
}

/// A running relay.
pub struct Running {
    /// Where it listens for QUIC (UDP).
    pub addr: SocketAddr,
    /// Where it listens for TLS over TCP, if enabled (`tcp_listen`).
    pub tcp_addr: Option<SocketAddr>,
    /// Where it serves `/metrics` and `/health` (TCP), if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// SHA-256 of its certificate, lowercase hex: what clients pin.
    pub fingerprint: String,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Cancel to drain and stop.
    pub shutdown: CancellationToken,
    /// Its store (the mailboxes, device lists, …), for tests that look at what it keeps.
    pub store: Arc<dyn RelayStore>,
    tap: Arc<std::sync::RwLock<Option<shared::FrameTap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Drains and waits until the relay has stopped.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Sets (or with `None` removes) a function that sees the bytes of every frame the relay
    /// writes on any control stream from now on: tests check with it what clients are told.
    pub fn tap_frames(&self, tap: Option<shared::FrameTap>) {
        if let Ok(mut t) = self.tap.write() {
            *t = tap;
        }
    }

    /// Waits until the relay has stopped (after `shutdown` is cancelled).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Directory of the blob files, inside the data directory.
pub const BLOBS_DIR: &str = "blobs";

/// UDP ports tried, when listening on port 0 with TLS over TCP on the `same` number, for one
/// whose number is free over TCP too.
const PORT_PAIR_ATTEMPTS: u32 = 16;

/// The relay's stores: everything but blobs, and blobs.
pub type Stores = (Arc<dyn RelayStore>, Arc<dyn BlobStore>);

/// The stores named by a configuration, and the cluster connection behind them (with
/// `store = redis`).
pub struct Backend {
    /// Everything but blobs.
    pub store: Arc<dyn RelayStore>,
    /// Blobs.
    pub blobs: Arc<dyn BlobStore>,
    /// The Redis Cluster, shared with the router.
    pub redis: Option<Arc<Redis>>,
}

/// Opens the stores named by `cfg`.
pub fn open_stores(cfg: &Config) -> Result<Stores, StartError> {
    open_backend(cfg).map(|b| (b.store, b.blobs))
}

/// Opens the stores named by `cfg`, keeping the cluster connection (if any) for the router.
pub fn open_backend(cfg: &Config) -> Result<Backend, StartError> {
    match cfg.store {
        StoreKind::Memory => Ok(Backend {
            store: Arc::new(MemoryStore::new()),
            blobs: Arc::new(MemoryBlobs::new()),
            redis: None,
        }),
        StoreKind::Sled => {
            create_private_dir(&cfg.data_dir)
                .map_err(|e| StartError::Other(format!("data directory: {e}")))?;
            let store = SledStore::open_with_cache(&cfg.data_dir.join("db"), cfg.sled_cache_bytes)?;
            let blobs = FileBlobs::open(store.db(), &cfg.data_dir.join(BLOBS_DIR))?;
            Ok(Backend {
                store: Arc::new(store),
                blobs: Arc::new(blobs),
                redis: None,
            })
        }
        StoreKind::Redis => {
            if cfg.redis_nodes.is_empty() {
                return Err(StartError::Other(
                    "store = redis needs redis_nodes (--redis-nodes host:port,…)".into(),
                ));
            }
            let redis = Arc::new(Redis::connect(RedisOptions {
                nodes: cfg.redis_nodes.clone(),
                prefix: cfg.redis_prefix.clone(),
                wait_replicas: cfg.redis_wait_replicas,
                wait_timeout_ms: cfg.redis_wait_timeout_ms,
            })?);
            let store = RedisStore::on(Arc::clone(&redis))?;
            // Blobs live in the cluster too, so any node serves what another received.
            let blobs = RedisBlobs::on(Arc::clone(&redis))?;
            Ok(Backend {
                store: Arc::new(store),
                blobs: Arc::new(blobs),
                redis: Some(redis),
            })
        }
    }
}

/// Creates the data directory (and missing parents) as 0700 and narrows an existing one to 0700:
/// it holds the database, the TLS key and the reset key, none of which another local user may
/// read.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    hush_net::private_fs::create_dir(dir)
}

/// The QUIC stateless-reset key, kept across restarts (`reset.key` in the data directory) so
/// that clients of the previous process get a valid reset instead of waiting for a timeout.
fn load_or_create_reset_key(dir: &std::path::Path) -> Result<[u8; 32], StartError> {
    let path = dir.join("reset.key");
    match std::fs::read(&path) {
        Ok(bytes) => bytes
            .as_slice()
            .try_into()
            .map_err(|_| StartError::Other(format!("{} is not 32 bytes", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::RngExt::fill(&mut rand::rng(), &mut key[..]);
            hush_net::private_fs::write_atomic(&path, &key)
                .map_err(|e| StartError::Other(format!("{}: {e}", path.display())))?;
            Ok(key)
        }
        Err(e) => Err(StartError::Other(format!("{}: {e}", path.display()))),
    }
}

/// The VAPID key that signs WebPush wake-ups (`push.vapid_key`, under the data directory unless
/// absolute), made on first start.
fn load_or_create_vapid(cfg: &Config) -> Result<Arc<push::Vapid>, StartError> {
    let path = cfg.data_dir.join(&cfg.push.vapid_key);
    let vapid = push::Vapid::load_or_create(&path, cfg.push.vapid_subject.as_str())
        .map_err(|e| StartError::Other(format!("VAPID key: {e}")))?;
    tracing::info!(public_key = vapid.public_key(), "VAPID key ready");
    Ok(Arc::new(vapid))
}

/// Starts a relay: opens its stores, loads (or makes) its certificate, binds its sockets, and
/// serves until [`Running::shutdown`] is cancelled. Must be called inside a tokio runtime.
pub async fn start(cfg: Config) -> Result<Running, StartError> {
    start_with_clock(cfg, Arc::new(clock::SystemClock)).await
}

/// As [`start`], reading the time from `clock` (a test's clock; [`start`] reads the system's).
pub async fn start_with_clock(
    cfg: Config,
    clock: Arc<dyn clock::Clock>,
) -> Result<Running, StartError> {
    let backend = open_backend(&cfg)?;
    create_private_dir(&cfg.data_dir)
        .map_err(|e| StartError::Other(format!("data directory: {e}")))?;
    let identity = tls::load_or_create(&cfg.data_dir, &cfg.cert_names)?;
    let fingerprint = tls::fingerprint(&identity.cert);
    let reset_key = load_or_create_reset_key(&cfg.data_dir)?;
    let vapid = load_or_create_vapid(&cfg)?;
    let tls_cfg = tls::server_config(&identity, limits::ALPN)?;
    let server_cfg =
        server::server_config(&cfg, tls_cfg).map_err(|e| StartError::Other(e.to_string()))?;
    let mut tcp_tls = tls::server_config(&identity, hush_net::TCP_ALPN)?;
    tcp_tls
        .alpn_protocols
        .push(hush_net::TCP_BLOB_ALPN.to_vec());
    // With port 0 and `same`, the TCP port of the number the UDP socket got may be taken by
    // something else: another UDP port is tried then (a few times).
    let pairs_port_zero =
        cfg.listen.port() == 0 && matches!(cfg.tcp_listen, config::TcpListen::Same);
    let mut attempt = 0;
    let (endpoint, addr, tcp) = loop {
        attempt += 1;
        let endpoint = server::bind_endpoint(cfg.listen, server_cfg.clone(), &reset_key).map_err(
            |source| StartError::Bind {
                addr: cfg.listen,
                source,
            },
        )?;
        let addr = endpoint.local_addr().map_err(|source| StartError::Bind {
            addr: cfg.listen,
            source,
        })?;
        // `same` takes the port the UDP socket got (which matters with port 0).
        let Some(at) = cfg.tcp_listen.resolve(addr) else {
            break (endpoint, addr, None);
        };
        match server::bind_tcp(at, tcp_tls.clone()) {
            Ok(side) => break (endpoint, addr, Some(side)),
            Err(e)
                if pairs_port_zero
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < PORT_PAIR_ATTEMPTS =>
            {
                endpoint.close(0u8.into(), b"");
            }
            Err(source) => return Err(StartError::Bind { addr: at, source }),
        }
    };
    let tcp_addr = tcp.as_ref().and_then(|t| t.listener.local_addr().ok());
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let cluster = match &backend.redis {
        Some(redis) => Some(
            RedisRouter::start(Arc::clone(redis), Arc::clone(&metrics), shutdown.clone())
                .map_err(StartError::Other)?,
        ),
        None => None,
    };
    let router: Arc<dyn router::Router> = match &cluster {
        Some(c) => Arc::clone(c) as Arc<dyn router::Router>,
        None => Arc::new(LocalRouter::new()),
    };
    let metrics_listener = match cfg.metrics_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|source| StartError::Bind { addr: a, source })?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let (relay, background) = shared::Relay::new(
        cfg,
        Some(vapid),
        backend.store,
        backend.blobs,
        router,
        Arc::clone(&metrics),
        shutdown.clone(),
        clock,
    )
    .map_err(|e| StartError::Other(format!("store writer: {e}")))?;
    if let Some(c) = cluster {
        // Mail announced to this node for a device that just left it: a push wakes the device.
        let weak = Arc::downgrade(&relay);
        c.on_undelivered(move |device| {
            if let Some(r) = weak.upgrade() {
                r.pusher.wake(device);
            }
        });
    }
    let tap = Arc::clone(&relay.tap);
    let store = Arc::clone(&relay.store);
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        // The metrics endpoint outlives the drain, so /health answers 503 while it runs.
        let ops_stop = CancellationToken::new();
        let ops_task = metrics_listener.map(|l| {
            // A weak reference: the endpoint must not keep the relay (and its stores) alive.
            let r = Arc::downgrade(&relay);
            let health: Arc<dyn Fn() -> bool + Send + Sync> =
                Arc::new(move || r.upgrade().is_some_and(|r| r.healthy()));
            tokio::spawn(ops::serve(
                l,
                Arc::clone(relay.metrics()),
                health,
                ops_stop.clone(),
            ))
        });
        server::run(endpoint, tcp, Arc::clone(&relay), stop).await;
        drop(relay);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), background.join()).await;
        ops_stop.cancel();
        if let Some(t) = ops_task {
            let _ = t.await;
        }
    });
    tracing::info!(%addr, tcp = ?tcp_addr, fingerprint = %fingerprint, "relay listening");
    Ok(Running {
        addr,
        tcp_addr,
        metrics_addr,
        fingerprint,
        metrics,
        shutdown,
        store,
        tap,
        task,
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_data_directory_is_private_to_the_relay_user() {
        let tmp = tempfile::tempdir().unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

        let fresh = tmp.path().join("fresh/data");
        let cfg = Config {
            store: StoreKind::Sled,
            data_dir: fresh.clone(),
            ..Config::default()
        };
        drop(open_stores(&cfg).unwrap());
        assert_eq!(mode(&fresh), 0o700);

        let loose = tmp.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = Config {
            store: StoreKind::Sled,
            data_dir: loose.clone(),
            ..Config::default()
        };
        drop(open_stores(&cfg).unwrap());
        assert_eq!(mode(&loose), 0o700);
    }
}
