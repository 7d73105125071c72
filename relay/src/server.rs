//! The QUIC server: endpoint set-up, the accept loop, one task per connection, request handling,
//! delivery, blobs, the sweeper and graceful drain.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hush_proto::relay_api::{
    self as api, BlobRequest, BlobResponse, ClientFrame, ErrorCode, ServerFrame, blob_request,
    blob_response, client_frame, server_frame,
};
use hush_proto::wire::{DeviceIdentityKey, KemPreKey, OneTimePreKey, PreKeyBundle, SignedPreKey};
use prost::Message;
use rand::RngExt;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::commit::{GroupCommit, StoreFlush};
use crate::config::Config;
use crate::frame::{self, FrameError};
use crate::limits::{self, close};
use crate::ops::{Metrics, Refusal};
use crate::push::{PushConfig, PushTargets, Pusher};
use crate::ratelimit::Limiter;
use crate::router::{Handle, Live, Router};
use crate::store::blobs::{self, BLOB_CHUNK, BlobMeta, BlobStore};
use crate::store::{DeviceId, Envelope, PreKeyUpload, RelayStore, StoreError};
use crate::verify::{self, CheckedList, VerifyError};

/// Milliseconds since the Unix epoch. The relay is an I/O shell: it reads the clock.
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[allow(clippy::disallowed_methods)]
fn instant() -> Instant {
    Instant::now()
}

#[allow(clippy::disallowed_methods)]
fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill(&mut b[..]);
    b
}

/// A device-linking message waiting for its device: (body, expiry in ms).
type Provision = (Vec<u8>, u64);

/// One device's entry in the cached device list of its account.
#[derive(Clone, Debug)]
struct ListedDevice {
    signing_key: [u8; 32],
    identity: DeviceIdentityKey,
}

/// The relay's view of an account's current list.
#[derive(Clone, Debug)]
struct AccountDevices {
    version: u64,
    devices: BTreeMap<u32, ListedDevice>,
}

impl AccountDevices {
    fn from_signed(
        bytes: &[u8],
        account: Option<&[u8; 32]>,
        max: usize,
    ) -> Result<Self, VerifyError> {
        let checked = CheckedList::check(bytes, account, max)?;
        // The identities (with their DH keys) as listed, for building bundles.
        let signed = hush_proto::wire::SignedDeviceList::decode(bytes)
            .map_err(|_| VerifyError::Malformed("signed device list"))?;
        let list = hush_proto::wire::DeviceList::decode(signed.device_list.as_slice())
            .map_err(|_| VerifyError::Malformed("device list"))?;
        let mut devices = BTreeMap::new();
        for d in list.devices {
            let (Some(identity), Some(sk)) = (d.identity, checked.devices.get(&d.device_id)) else {
                return Err(VerifyError::Malformed("device identity"));
            };
            devices.insert(
                d.device_id,
                ListedDevice {
                    signing_key: *sk,
                    identity,
                },
            );
        }
        Ok(Self {
            version: checked.version,
            devices,
        })
    }
}

/// The per-kind rate limiters.
struct Limits {
    sends: Limiter<DeviceId>,
    prekey_fetches: Limiter<DeviceId>,
    uploads: Limiter<DeviceId>,
    accounts: Limiter<IpAddr>,
    blob_uploads: Limiter<DeviceId>,
    account_sends: Limiter<[u8; 32]>,
    account_prekey_fetches: Limiter<[u8; 32]>,
    account_uploads: Limiter<[u8; 32]>,
}

impl Limits {
    /// Takes a token from the device's bucket and from its account's.
    fn take(
        device: &Limiter<DeviceId>,
        account: &Limiter<[u8; 32]>,
        who: &DeviceId,
    ) -> Result<(), Refused> {
        let now = instant();
        device.check(who, 1, now).map_err(Refused::rate)?;
        account.check(&who.account, 1, now).map_err(|wait| {
            // Refused: the device keeps its token.
            device.refund(who, 1);
            Refused::rate(wait)
        })
    }

    fn send(&self, who: &DeviceId) -> Result<(), Refused> {
        Self::take(&self.sends, &self.account_sends, who)
    }

    fn fetch(&self, who: &DeviceId) -> Result<(), Refused> {
        Self::take(&self.prekey_fetches, &self.account_prekey_fetches, who)
    }

    fn upload(&self, who: &DeviceId) -> Result<(), Refused> {
        Self::take(&self.uploads, &self.account_uploads, who)
    }
}

/// Everything the connection tasks share.
pub struct Relay {
    cfg: Config,
    store: Arc<dyn RelayStore>,
    blobs: Arc<dyn BlobStore>,
    router: Arc<dyn Router>,
    commit: GroupCommit,
    pusher: Pusher,
    metrics: Arc<Metrics>,
    limits: Limits,
    lists: Mutex<HashMap<[u8; 32], Arc<AccountDevices>>>,
    /// Device-linking messages: channel → (body, expiry ms). In memory only, bounded.
    provisions: Mutex<HashMap<[u8; 32], Provision>>,
    /// Serializes device-list publications (read old list, store new, revoke), so two concurrent
    /// ones never revoke from a stale view.
    publish: Mutex<()>,
    draining: AtomicBool,
    next_conn: AtomicU64,
}

fn push_config(cfg: &Config) -> PushConfig {
    PushConfig {
        timeout: Duration::from_millis(cfg.push.timeout_ms),
        allow_plain_http: cfg.push.allow_plain_http,
        // The same test switch: plain http and loopback endpoints go together.
        allow_private_addresses: cfg.push.allow_plain_http,
        ..PushConfig::default()
    }
}

/// Push endpoints as stored, for the pusher.
struct StoreTargets(Arc<dyn RelayStore>);

impl PushTargets for StoreTargets {
    fn endpoint(&self, device: &DeviceId) -> Option<String> {
        self.0.push_endpoint(device).ok().flatten()
    }

    fn endpoint_gone(&self, device: &DeviceId, url: &str) {
        if self.0.push_endpoint(device).ok().flatten().as_deref() == Some(url) {
            let _ = self.0.set_push_endpoint(device, None);
        }
    }
}

/// The background tasks of a relay (flusher, pusher), to await after shutdown.
pub struct Background {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Waits for the background tasks.
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

impl Relay {
    /// Assembles a relay over its stores. Starts the group-commit flusher and the pusher (must be
    /// called inside a tokio runtime); they stop when `shutdown` is cancelled and the relay dropped.
    pub fn new(
        cfg: Config,
        store: Arc<dyn RelayStore>,
        blobs: Arc<dyn BlobStore>,
        router: Arc<dyn Router>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> (Arc<Self>, Background) {
        let (commit, flusher) = GroupCommit::spawn(
            Arc::new(StoreFlush(Arc::clone(&store))),
            Arc::clone(&metrics),
            cfg.flush_batch_max,
        );
        let (pusher, push_task) = Pusher::spawn(
            push_config(&cfg),
            Arc::new(StoreTargets(Arc::clone(&store))),
            Arc::clone(&metrics.push),
            shutdown,
        );
        let limits = Limits {
            sends: Limiter::new(cfg.rate.sends),
            prekey_fetches: Limiter::new(cfg.rate.prekey_fetches),
            uploads: Limiter::new(cfg.rate.uploads),
            accounts: Limiter::new(cfg.rate.account_creations),
            blob_uploads: Limiter::new(cfg.rate.blob_uploads),
            account_sends: Limiter::new(cfg.rate.account_sends),
            account_prekey_fetches: Limiter::new(cfg.rate.account_prekey_fetches),
            account_uploads: Limiter::new(cfg.rate.account_uploads),
        };
        let relay = Arc::new(Self {
            cfg,
            store,
            blobs,
            router,
            commit,
            pusher,
            metrics,
            limits,
            lists: Mutex::new(HashMap::new()),
            publish: Mutex::new(()),
            provisions: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
        });
        (
            relay,
            Background {
                tasks: vec![flusher, push_task],
            },
        )
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether the relay is serving (false once draining started).
    pub fn healthy(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }

    fn devices_of(&self, account: &[u8; 32]) -> Result<Option<Arc<AccountDevices>>, Refused> {
        if let Some(d) = self.lists.lock().ok().and_then(|l| l.get(account).cloned()) {
            return Ok(Some(d));
        }
        let Some((_, bytes)) = self.store.device_list(account)? else {
            return Ok(None);
        };
        let devices = Arc::new(
            AccountDevices::from_signed(&bytes, Some(account), usize::MAX)
                .map_err(|_| StoreError::Corrupt("lists"))?,
        );
        if let Ok(mut l) = self.lists.lock() {
            // A newer list may have been cached meanwhile (a publish): never replace it.
            let cached = l
                .entry(*account)
                .and_modify(|d| {
                    if d.version < devices.version {
                        *d = Arc::clone(&devices);
                    }
                })
                .or_insert_with(|| Arc::clone(&devices));
            return Ok(Some(Arc::clone(cached)));
        }
        Ok(Some(devices))
    }

    fn cache_list(&self, account: [u8; 32], devices: AccountDevices) {
        if let Ok(mut l) = self.lists.lock() {
            let newer = l.get(&account).is_none_or(|d| d.version < devices.version);
            if newer {
                l.insert(account, Arc::new(devices));
            }
        }
    }

    fn refuse_count(&self, r: &Refused) {
        let reason = match r.code {
            ErrorCode::Malformed | ErrorCode::UnknownRequest => Refusal::Malformed,
            ErrorCode::Unauthenticated => Refusal::Unauthenticated,
            ErrorCode::AuthFailed => Refusal::AuthFailed,
            ErrorCode::Forbidden => Refusal::Forbidden,
            ErrorCode::RateLimited => Refusal::RateLimited,
            ErrorCode::TooLarge => Refusal::TooLarge,
            ErrorCode::QueueFull => Refusal::QueueFull,
            ErrorCode::DeviceMismatch => Refusal::DeviceMismatch,
            ErrorCode::TooManyDevices => Refusal::TooManyDevices,
            ErrorCode::Draining => Refusal::Draining,
            ErrorCode::UsernameTaken => Refusal::UsernameTaken,
            _ => Refusal::Other,
        };
        self.metrics.refusals.inc(reason);
    }
}

/// A refused request: the error frame it gets.
#[derive(Debug)]
struct Refused {
    code: ErrorCode,
    message: String,
    retry_after_ms: u64,
    missing: Vec<u32>,
    extra: Vec<u32>,
}

impl Refused {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: 0,
            missing: Vec::new(),
            extra: Vec::new(),
        }
    }

    fn rate(wait: Duration) -> Self {
        let mut r = Self::new(ErrorCode::RateLimited, "rate limited");
        r.retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        r
    }

    fn to_frame(&self) -> api::Error {
        api::Error {
            code: self.code.into(),
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms,
            missing_devices: self.missing.clone(),
            extra_devices: self.extra.clone(),
        }
    }
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AccountExists => Self::new(ErrorCode::AccountExists, "account exists"),
            StoreError::QueueFull(d) => Self::new(
                ErrorCode::QueueFull,
                format!("the queue of device {} is full", d.device),
            ),
            StoreError::UsernameTaken => Self::new(
                ErrorCode::UsernameTaken,
                "the username is held by another account",
            ),
            StoreError::StaleDeviceList { stored, offered } => Self::new(
                ErrorCode::StaleDeviceList,
                format!("device list version {offered} is not newer than {stored}"),
            ),
            other => {
                tracing::error!(error = %other, "storage failure");
                Self::new(ErrorCode::Internal, "storage failure, retry later")
            }
        }
    }
}

impl From<VerifyError> for Refused {
    fn from(e: VerifyError) -> Self {
        let code = match e {
            VerifyError::BadSignature(_) => ErrorCode::BadSignature,
            VerifyError::WrongAccount => ErrorCode::Forbidden,
            VerifyError::TooManyDevices(..) => ErrorCode::TooManyDevices,
            VerifyError::Malformed(_) | VerifyError::InvalidKey(_) => ErrorCode::Malformed,
        };
        Self::new(code, e.to_string())
    }
}

/// The unit account creation is limited by: an IPv4 address, or an IPv6 /64 (what one host
/// or customer usually gets, so that rotating addresses inside it does not help).
fn address_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

fn arr<const N: usize>(b: &[u8], what: &str) -> Result<[u8; N], Refused> {
    b.try_into()
        .map_err(|_| Refused::new(ErrorCode::Malformed, format!("{what} must be {N} bytes")))
}

fn frame(request_id: u64, kind: server_frame::Kind) -> ServerFrame {
    ServerFrame {
        request_id,
        kind: Some(kind),
    }
}

/// Builds the server-side QUIC endpoint configuration: transport tuned for many idle mobile
/// clients (idle timeout, few streams, small windows; keep-alive is the client's job), migration
/// on, TLS 1.3 with ALPN `hush/1`.
pub fn server_config(
    cfg: &Config,
    tls: rustls::ServerConfig,
) -> Result<quinn::ServerConfig, Box<dyn std::error::Error + Send + Sync>> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(cfg.idle_timeout_ms))?;
    let frame_window = u32::try_from(cfg.max_frame_bytes.saturating_mul(2)).unwrap_or(u32::MAX);
    transport
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(limits::MAX_BIDI_STREAMS.into())
        .max_concurrent_uni_streams(0u8.into())
        // Datagrams are not part of the protocol: refuse them rather than buffer them.
        .datagram_receive_buffer_size(None)
        .stream_receive_window(frame_window.into())
        .receive_window(frame_window.saturating_mul(2).into())
        .send_window(u64::from(frame_window).saturating_mul(2))
        .keep_alive_interval(None);
    server.transport_config(Arc::new(transport));
    server.migration(true);
    Ok(server)
}

/// Binds a UDP socket with large buffers (so bursts are not dropped) and makes the endpoint.
pub fn bind_endpoint(
    addr: SocketAddr,
    server: quinn::ServerConfig,
    reset_key: &[u8; 32],
) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4 too on [::].
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    let mut endpoint_cfg = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        reset_key,
    )));
    endpoint_cfg.max_udp_payload_size(1452).ok();
    quinn::Endpoint::new(
        endpoint_cfg,
        Some(server),
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )
}

/// Serves `endpoint` until `shutdown` is cancelled, then drains: stops accepting, tells every
/// client to reconnect, lets connections finish what they are doing, flushes, closes.
pub async fn run(endpoint: quinn::Endpoint, relay: Arc<Relay>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let sweeper = tracker.spawn(sweep_loop(Arc::clone(&relay), shutdown.clone()));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let open = usize::try_from(relay.metrics.connections_open.get()).unwrap_or(0);
                if open >= relay.cfg.max_connections as usize {
                    relay.metrics.connections_refused.inc();
                    relay.metrics.refusals.inc(Refusal::ConnectionCap);
                    incoming.refuse();
                    continue;
                }
                if open >= relay.cfg.retry_under_load_connections as usize && !incoming.remote_address_validated() {
                    // Under load, make the client prove its address before any state is kept.
                    let _ = incoming.retry();
                    continue;
                }
                // Counted as open from here, handshake included: a burst of handshakes must not
                // get past the cap before any of them completes.
                relay.metrics.connections_open.inc();
                let r = Arc::clone(&relay);
                let stop = shutdown.clone();
                tracker.spawn(async move {
                    match incoming.await {
                        Ok(conn) => connection(Arc::clone(&r), conn, stop).await,
                        Err(e) => tracing::debug!(error = %e, "handshake failed"),
                    }
                    r.metrics.connections_open.dec();
                });
            }
        }
    }
    // Drain.
    relay.draining.store(true, Ordering::Relaxed);
    endpoint.set_server_config(None);
    let told = relay.router.broadcast(Live::Drain);
    tracing::info!(connections = told, "draining");
    tracker.close();
    if tokio::time::timeout(
        Duration::from_millis(limits::DRAIN_TIMEOUT_MS),
        tracker.wait(),
    )
    .await
    .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
    sweeper.abort();
    let s = Arc::clone(&relay.store);
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.flush()).await {
        tracing::error!(error = %e, "final flush failed");
    }
    endpoint.close(close::DRAINING.into(), b"relay shutting down");
    if tokio::time::timeout(
        Duration::from_millis(limits::CLOSE_TIMEOUT_MS),
        endpoint.wait_idle(),
    )
    .await
    .is_err()
    {
        tracing::debug!("closes not all confirmed; stopping anyway");
    }
}

async fn sweep_loop(relay: Arc<Relay>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(relay.cfg.sweep_interval_ms.max(1)));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let r = Arc::clone(&relay);
        let done = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            let mail = r.store.sweep(now.saturating_sub(r.cfg.mailbox_ttl_ms))?;
            // Uploads left incomplete for an hour are abandoned.
            let blobs = r.blobs.sweep(now, now.saturating_sub(3_600_000))?;
            Ok::<_, StoreError>((mail, blobs))
        })
        .await;
        match done {
            Ok(Ok((mail, blobs))) => {
                relay.metrics.envelopes_expired.add(mail as u64);
                relay
                    .metrics
                    .envelopes_stored
                    .add(-i64::try_from(mail).unwrap_or(0));
                if mail > 0 || blobs > 0 {
                    tracing::info!(envelopes = mail, blobs, "swept expired items");
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "sweep failed"),
            Err(e) => tracing::error!(error = %e, "sweep task failed"),
        }
    }
}

/// A connection's outgoing frames, bounded in count and in bytes: a client that reads slowly
/// holds at most [`limits::CONNECTION_OUT_BYTES`] of the relay's memory (deliveries wait, and
/// mail stays in the store meanwhile; ephemeral envelopes that do not fit are dropped).
#[derive(Clone)]
struct Out {
    tx: mpsc::Sender<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)>,
    budget: Arc<tokio::sync::Semaphore>,
}

impl Out {
    fn permits(len: usize) -> u32 {
        u32::try_from(len.clamp(1, limits::CONNECTION_OUT_BYTES)).unwrap_or(u32::MAX)
    }

    /// Queues a frame, waiting for room. `Err` once the writer is gone.
    async fn send(&self, bytes: Vec<u8>) -> Result<(), ()> {
        let permit = Arc::clone(&self.budget)
            .acquire_many_owned(Self::permits(bytes.len()))
            .await
            .map_err(|_| ())?;
        self.tx.send((bytes, permit)).await.map_err(|_| ())
    }

    /// Queues a frame if there is room now.
    fn try_send(&self, bytes: Vec<u8>) -> bool {
        match Arc::clone(&self.budget).try_acquire_many_owned(Self::permits(bytes.len())) {
            Ok(permit) => self.tx.try_send((bytes, permit)).is_ok(),
            Err(_) => false,
        }
    }
}

/// The state of one connection.
struct Conn {
    relay: Arc<Relay>,
    quic: quinn::Connection,
    id: u64,
    remote: IpAddr,
    challenge: Option<[u8; limits::CHALLENGE_LEN]>,
    auth_failures: u32,
    device: Option<DeviceId>,
    out: Out,
    mail: Arc<Notify>,
    events: Option<mpsc::Receiver<Live>>,
    /// Highest sequence number delivered on this connection.
    last_sent: u64,
    caught_up: bool,
    authed: Arc<std::sync::OnceLock<DeviceId>>,
    close: Option<(u32, &'static [u8])>,
}

async fn connection(relay: Arc<Relay>, quic: quinn::Connection, shutdown: CancellationToken) {
    relay.metrics.connections_total.inc();
    let id = relay.next_conn.fetch_add(1, Ordering::Relaxed);
    let remote = quic.remote_address().ip();
    tracing::debug!(conn = id, "connection open");
    // The first bidirectional stream is the session stream.
    let accepted = tokio::time::timeout(
        Duration::from_millis(limits::AUTH_TIMEOUT_MS),
        quic.accept_bi(),
    )
    .await;
    if let Ok(Ok((send, recv))) = accepted {
        session(
            Arc::clone(&relay),
            quic.clone(),
            id,
            remote,
            send,
            recv,
            shutdown,
        )
        .await;
    } else {
        quic.close(close::PROTOCOL.into(), b"no session stream");
    }
    tracing::debug!(conn = id, "connection closed");
}

async fn session(
    relay: Arc<Relay>,
    quic: quinn::Connection,
    id: u64,
    remote: IpAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shutdown: CancellationToken,
) {
    let (out_tx, mut out_rx) = mpsc::channel(limits::CONNECTION_QUEUE);
    let out = Out {
        tx: out_tx,
        budget: Arc::new(tokio::sync::Semaphore::new(limits::CONNECTION_OUT_BYTES)),
    };
    let (ev_tx, ev_rx) = mpsc::channel::<Live>(limits::CONNECTION_EVENTS);
    let mail = Arc::new(Notify::new());
    let authed = Arc::new(std::sync::OnceLock::new());

    // Writer: frames out, each write bounded in time (a client that stops reading is dropped).
    let writer_conn = quic.clone();
    let writer = tokio::spawn(async move {
        while let Some((bytes, _room)) = out_rx.recv().await {
            let w = tokio::time::timeout(
                Duration::from_millis(limits::WRITE_TIMEOUT_MS),
                send.write_all(&bytes),
            )
            .await;
            if !matches!(w, Ok(Ok(()))) {
                writer_conn.close(close::PROTOCOL.into(), b"write timed out");
                return;
            }
        }
        let _ = send.finish();
        // Give the peer a moment to take the last frames (a dead peer never will).
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    });

    // Reader: frames in (cancel-safe for the select below).
    // Two decoded frames at most wait here (each up to the frame cap).
    let (in_tx, mut in_rx) = mpsc::channel::<Result<ClientFrame, FrameError>>(2);
    let cap = relay.cfg.max_frame_bytes;
    let reader = tokio::spawn(async move {
        loop {
            let f = frame::read::<ClientFrame, _>(&mut recv, cap).await;
            let end = f.is_err();
            if in_tx.send(f).await.is_err() || end {
                return;
            }
        }
    });

    // Blob streams.
    let blob_task = tokio::spawn(blob_streams(
        Arc::clone(&relay),
        quic.clone(),
        Arc::clone(&authed),
    ));

    let mut c = Conn {
        relay: Arc::clone(&relay),
        quic: quic.clone(),
        id,
        remote,
        challenge: None,
        auth_failures: 0,
        device: None,
        out,
        mail: Arc::clone(&mail),
        events: None,
        last_sent: 0,
        caught_up: false,
        authed,
        close: None,
    };
    let mut ev_rx = Some(ev_rx);
    let mut ev_tx = Some(ev_tx);
    let auth_deadline = tokio::time::sleep(Duration::from_millis(limits::AUTH_TIMEOUT_MS));
    tokio::pin!(auth_deadline);
    let mut draining = false;

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                if c.device.is_none() {
                    c.send_frame(frame(0, server_frame::Kind::Drain(api::Drain {}))).await;
                    break;
                }
            }
            () = &mut auth_deadline, if c.device.is_none() => {
                c.finish(close::PROTOCOL, b"authentication timed out");
                break;
            }
            ev = recv_event(&mut c.events) => {
                match ev {
                    Some(Live::Mail) => {}
                    Some(Live::Ephemeral { from, body }) => {
                        let f = frame(0, server_frame::Kind::Ephemeral(api::EphemeralDeliver {
                            sender_account: from.account.to_vec(),
                            sender_device: from.device,
                            body,
                        }));
                        // Lossy by nature: dropped when the client is not keeping up.
                        if c.out.try_send(frame::encode(&f)) {
                            c.relay.metrics.ephemeral_delivered.inc();
                        }
                    }
                    Some(Live::PreKeysLow { one_time, kem }) => {
                        c.send_frame(frame(0, server_frame::Kind::PreKeysLow(api::PreKeysLow {
                            one_time_left: one_time,
                            kem_left: kem,
                        }))).await;
                    }
                    Some(Live::Revoked) => {
                        c.send_frame(frame(0, server_frame::Kind::Revoked(api::Revoked {}))).await;
                        c.finish(close::REVOKED, b"device revoked");
                        break;
                    }
                    Some(Live::Replaced) => {
                        c.finish(close::REPLACED, b"connected elsewhere");
                        break;
                    }
                    Some(Live::Drain) => {
                        draining = true;
                    }
                    None => break,
                }
                if draining {
                    c.send_frame(frame(0, server_frame::Kind::Drain(api::Drain {}))).await;
                    c.finish(close::DRAINING, b"relay draining");
                    break;
                }
            }
            () = mail.notified(), if c.device.is_some() => {
                if c.deliver_mail().await.is_err() {
                    break;
                }
            }
            req = in_rx.recv() => {
                match req {
                    Some(Ok(f)) => {
                        let was_authed = c.device.is_some();
                        if c.handle(f, &mut ev_tx).await.is_err() {
                            break;
                        }
                        if !was_authed && c.device.is_some() {
                            c.events = ev_rx.take();
                            c.tell_if_pre_keys_low().await;
                            // Catch up with what was queued while away.
                            if c.deliver_mail().await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(Err(FrameError::Finished)) | None => break,
                    Some(Err(e)) => {
                        let code = match e {
                            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                            _ => ErrorCode::Malformed,
                        };
                        let r = Refused::new(code, e.to_string());
                        c.relay.refuse_count(&r);
                        c.send_frame(frame(0, server_frame::Kind::Error(r.to_frame()))).await;
                        c.finish(close::PROTOCOL, b"bad frame");
                        break;
                    }
                }
                if draining && c.device.is_some() {
                    c.send_frame(frame(0, server_frame::Kind::Drain(api::Drain {}))).await;
                    c.finish(close::DRAINING, b"relay draining");
                    break;
                }
            }
        }
    }
    if let Some(d) = c.device {
        relay.router.unregister(&d, id);
    }
    let (code, reason) = c.close.unwrap_or((close::NORMAL, b""));
    drop(c);
    reader.abort();
    blob_task.abort();
    // The writer ends once every sender is gone (acknowledgements still waiting for a flush hold
    // one), after sending everything queued.
    let _ = tokio::time::timeout(Duration::from_millis(limits::WRITE_TIMEOUT_MS), writer).await;
    quic.close(code.into(), reason);
}

async fn recv_event(rx: &mut Option<mpsc::Receiver<Live>>) -> Option<Live> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

impl Conn {
    async fn send_frame(&self, f: ServerFrame) {
        let _ = self.out.send(frame::encode(&f)).await;
    }

    /// Ends the connection with `code` once the writer has sent what is queued.
    fn finish(&mut self, code: u32, reason: &'static [u8]) {
        self.close.get_or_insert((code, reason));
    }

    /// Delivers everything queued after `last_sent`, in order; after the first full pass, tells
    /// the client its queue is drained.
    async fn deliver_mail(&mut self) -> Result<(), ()> {
        let Some(device) = self.device else {
            return Ok(());
        };
        loop {
            let page = self
                .relay
                .store
                .fetch(&device, self.last_sent, limits::CATCH_UP_PAGE)
                .map_err(|e| tracing::error!(error = %e, "fetch failed"))?;
            let n = page.len();
            for q in page {
                self.last_sent = q.seq;
                self.relay.metrics.envelopes_delivered.inc();
                let f = frame(
                    0,
                    server_frame::Kind::Deliver(api::Deliver {
                        seq: q.seq,
                        sender_account: q.envelope.sender.account.to_vec(),
                        sender_device: q.envelope.sender.device,
                        client_id: q.envelope.client_id.to_vec(),
                        body: q.envelope.body,
                        received_at: q.envelope.received_at,
                    }),
                );
                if self.out.send(frame::encode(&f)).await.is_err() {
                    return Err(());
                }
            }
            if n < limits::CATCH_UP_PAGE {
                break;
            }
        }
        if !self.caught_up {
            self.caught_up = true;
            self.send_frame(frame(
                0,
                server_frame::Kind::QueueDrained(api::QueueDrained {}),
            ))
            .await;
        }
        Ok(())
    }

    /// Runs `op` and, if it succeeded, waits until what it wrote is durable (group commit) before
    /// its answer may leave.
    async fn durably(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<server_frame::Kind, Refused>,
    ) -> Result<server_frame::Kind, Refused> {
        let answer = op(self)?;
        self.relay.commit.durable().await?;
        Ok(answer)
    }

    /// Tells a device whose stock of one-time keys runs low (right after authentication).
    async fn tell_if_pre_keys_low(&self) {
        let Some(device) = self.device else { return };
        if let Ok((otk, kem)) = self.relay.store.pre_key_counts(&device)
            && (otk < limits::PRE_KEYS_LOW || kem < limits::PRE_KEYS_LOW)
        {
            self.send_frame(frame(
                0,
                server_frame::Kind::PreKeysLow(api::PreKeysLow {
                    one_time_left: u32::try_from(otk).unwrap_or(u32::MAX),
                    kem_left: u32::try_from(kem).unwrap_or(u32::MAX),
                }),
            ))
            .await;
        }
    }

    fn device(&self) -> Result<DeviceId, Refused> {
        self.device
            .ok_or_else(|| Refused::new(ErrorCode::Unauthenticated, "authenticate first"))
    }

    /// Handles one request. `Err` closes the connection.
    async fn handle(
        &mut self,
        f: ClientFrame,
        ev_tx: &mut Option<mpsc::Sender<Live>>,
    ) -> Result<(), ()> {
        let rid = f.request_id;
        let result = match f.kind {
            None => Err(Refused::new(
                ErrorCode::UnknownRequest,
                "unknown or empty request",
            )),
            Some(client_frame::Kind::Hello(_)) => {
                let nonce = random::<{ limits::CHALLENGE_LEN }>();
                self.challenge = Some(nonce);
                Ok(server_frame::Kind::Challenge(api::Challenge {
                    nonce: nonce.to_vec(),
                }))
            }
            Some(client_frame::Kind::Authenticate(a)) => {
                let r = self.authenticate(&a, ev_tx);
                if r.is_err() {
                    self.relay.metrics.auth_failures.inc();
                    self.auth_failures += 1;
                }
                r
            }
            Some(client_frame::Kind::CreateAccount(c)) => {
                self.durably(|c2| c2.create_account(&c)).await
            }
            Some(client_frame::Kind::PublishDeviceList(p)) => {
                self.durably(|c2| c2.publish_list(&p)).await
            }
            Some(client_frame::Kind::FetchDeviceList(q)) => self.fetch_list(&q),
            Some(client_frame::Kind::UploadPreKeys(u)) => {
                self.durably(|c2| c2.upload_pre_keys(u)).await
            }
            // A claimed one-time key must not come back after a crash: durable before it leaves.
            Some(client_frame::Kind::FetchBundle(b)) => {
                self.durably(|c2| c2.fetch_bundle(&b)).await
            }
            Some(client_frame::Kind::Send(s)) => match self.send(s) {
                // The acknowledgement waits for durability, without holding up this connection.
                Ok(received_at) => {
                    let commit = self.relay.commit.clone();
                    let out = self.out.clone();
                    let relay = Arc::clone(&self.relay);
                    tokio::spawn(async move {
                        let kind = match commit.durable().await {
                            Ok(()) => server_frame::Kind::Sent(api::SendResult { received_at }),
                            Err(e) => {
                                let r = Refused::from(e);
                                relay.refuse_count(&r);
                                server_frame::Kind::Error(r.to_frame())
                            }
                        };
                        let _ = out.send(frame::encode(&frame(rid, kind))).await;
                    });
                    return Ok(());
                }
                Err(e) => Err(e),
            },
            Some(client_frame::Kind::Ack(a)) => self.ack(&a),
            Some(client_frame::Kind::SendEphemeral(e)) => self.ephemeral(e),
            Some(client_frame::Kind::RegisterPush(p)) => {
                self.durably(|c2| c2.register_push(&p)).await
            }
            Some(client_frame::Kind::Ping(_)) => Ok(server_frame::Kind::Ok(api::Ok {})),
            Some(client_frame::Kind::ProvisionPut(p)) => self.provision_put(p),
            Some(client_frame::Kind::ProvisionTake(t)) => self.provision_take(&t),
            Some(client_frame::Kind::ClaimUsername(u)) => {
                self.durably(|c2| c2.claim_username(&u)).await
            }
            Some(client_frame::Kind::ReleaseUsername(_)) => {
                self.durably(Self::release_username).await
            }
            Some(client_frame::Kind::LookupUsername(q)) => self.lookup_username(&q),
        };
        let kind = match result {
            Ok(k) => k,
            Err(r) => {
                self.relay.refuse_count(&r);
                tracing::debug!(conn = self.id, code = ?r.code, "request refused");
                server_frame::Kind::Error(r.to_frame())
            }
        };
        self.send_frame(frame(rid, kind)).await;
        if self.auth_failures >= limits::MAX_AUTH_FAILURES {
            self.finish(close::PROTOCOL, b"authentication failed");
            return Err(());
        }
        Ok(())
    }

    fn authenticate(
        &mut self,
        a: &api::Authenticate,
        ev_tx: &mut Option<mpsc::Sender<Live>>,
    ) -> Result<server_frame::Kind, Refused> {
        if self.device.is_some() {
            return Err(Refused::new(ErrorCode::AuthFailed, "already authenticated"));
        }
        // A challenge is good for one attempt.
        let challenge = self
            .challenge
            .take()
            .ok_or_else(|| Refused::new(ErrorCode::AuthFailed, "no challenge outstanding"))?;
        let account: [u8; 32] = arr(&a.account, "account")?;
        let devices = self
            .relay
            .devices_of(&account)?
            .ok_or_else(|| Refused::new(ErrorCode::AuthFailed, "unknown account"))?;
        let listed = devices.devices.get(&a.device_id).ok_or_else(|| {
            Refused::new(ErrorCode::AuthFailed, "device not on the account's list")
        })?;
        let mut exporter = [0u8; limits::EXPORTER_LEN];
        self.quic
            .export_keying_material(&mut exporter, hush_proto::labels::RELAY_AUTH_EXPORTER, b"")
            .map_err(|_| Refused::new(ErrorCode::Internal, "no TLS exporter"))?;
        let transcript = verify::auth_transcript(&exporter, &challenge, &account, a.device_id);
        verify::auth_signature(&listed.signing_key, &transcript, &a.signature)
            .map_err(|_| Refused::new(ErrorCode::AuthFailed, "bad authentication signature"))?;
        let device = DeviceId {
            account,
            device: a.device_id,
        };
        let tx = ev_tx
            .take()
            .ok_or_else(|| Refused::new(ErrorCode::Internal, "connection state"))?;
        let handle = Handle {
            conn_id: self.id,
            tx,
            mail: Arc::clone(&self.mail),
            conn: self.quic.clone(),
        };
        if let Some(old) = self.relay.router.register(device, handle)
            && old.conn_id != self.id
        {
            old.send(Live::Replaced);
        }
        // A list published between the check above and the registration could not reach this
        // connection with its revocation: check again now that it is registered.
        let still = self
            .relay
            .devices_of(&account)?
            .and_then(|d| d.devices.get(&a.device_id).map(|l| l.signing_key));
        if still != Some(listed.signing_key) {
            self.relay.router.unregister(&device, self.id);
            return Err(Refused::new(
                ErrorCode::AuthFailed,
                "device not on the account's list",
            ));
        }
        self.device = Some(device);
        let _ = self.authed.set(device);
        tracing::debug!(conn = self.id, "device authenticated");
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }

    fn create_account(&mut self, c: &api::CreateAccount) -> Result<server_frame::Kind, Refused> {
        self.relay
            .limits
            .accounts
            .check(&address_block(self.remote), 1, instant())
            .map_err(Refused::rate)?;
        let max = self.relay.cfg.max_devices_per_account as usize;
        let checked = CheckedList::check(&c.signed_device_list, None, max)?;
        let devices =
            AccountDevices::from_signed(&c.signed_device_list, Some(&checked.account), max)?;
        self.relay.store.create_account(
            &checked.account,
            checked.version,
            &c.signed_device_list,
        )?;
        self.relay.cache_list(checked.account, devices);
        tracing::info!("account created");
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }

    fn publish_list(&mut self, p: &api::PublishDeviceList) -> Result<server_frame::Kind, Refused> {
        let me = self.device()?;
        self.relay.limits.upload(&me)?;
        let max = self.relay.cfg.max_devices_per_account as usize;
        let devices = AccountDevices::from_signed(&p.signed_device_list, Some(&me.account), max)
            .map_err(|e| match e {
                VerifyError::WrongAccount => Refused::new(
                    ErrorCode::Forbidden,
                    "a device may only publish its own account's list",
                ),
                other => Refused::from(other),
            })?;
        let relay = Arc::clone(&self.relay);
        let _serial = relay
            .publish
            .lock()
            .map_err(|_| Refused::new(ErrorCode::Internal, "publication lock"))?;
        let old = self.relay.devices_of(&me.account)?;
        self.relay
            .store
            .put_device_list(&me.account, devices.version, &p.signed_device_list)?;
        let kept: BTreeSet<u32> = devices.devices.keys().copied().collect();
        let replaced: Vec<u32> = old
            .map(|o| {
                o.devices
                    .iter()
                    .filter(|(id, d)| {
                        !kept.contains(id)
                            || devices
                                .devices
                                .get(id)
                                .is_some_and(|n| n.signing_key != d.signing_key)
                    })
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default();
        self.relay.cache_list(me.account, devices);
        // Revoked (or re-keyed) devices are cut off at once and forgotten.
        for id in replaced {
            let d = DeviceId {
                account: me.account,
                device: id,
            };
            self.relay.router.deliver(&d, Live::Revoked);
            let purged = self.relay.store.forget_device(&d)?;
            self.relay
                .metrics
                .envelopes_stored
                .add(-i64::try_from(purged).unwrap_or(0));
            tracing::info!("device revoked");
        }
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }

    fn fetch_list(&mut self, q: &api::FetchDeviceList) -> Result<server_frame::Kind, Refused> {
        let me = self.device()?;
        self.relay.limits.fetch(&me)?;
        let account: [u8; 32] = arr(&q.account, "account")?;
        let (_, bytes) = self
            .relay
            .store
            .device_list(&account)?
            .ok_or_else(|| Refused::new(ErrorCode::NotFound, "unknown account"))?;
        Ok(server_frame::Kind::DeviceList(api::DeviceListResult {
            signed_device_list: bytes,
        }))
    }

    fn upload_pre_keys(&mut self, u: api::UploadPreKeys) -> Result<server_frame::Kind, Refused> {
        let me = self.device()?;
        self.relay.limits.upload(&me)?;
        if u.one_time_pre_keys.len() > limits::MAX_PRE_KEYS_PER_UPLOAD
            || u.kem_pre_keys.len() > limits::MAX_PRE_KEYS_PER_UPLOAD
        {
            return Err(Refused::new(
                ErrorCode::TooLarge,
                "too many pre-keys in one upload",
            ));
        }
        let (otk_have, kem_have) = self.relay.store.pre_key_counts(&me)?;
        if otk_have + u.one_time_pre_keys.len() > limits::MAX_PRE_KEYS_STORED
            || kem_have + u.kem_pre_keys.len() > limits::MAX_PRE_KEYS_STORED
        {
            return Err(Refused::new(
                ErrorCode::TooLarge,
                "too many pre-keys stored",
            ));
        }
        let devices = self
            .relay
            .devices_of(&me.account)?
            .ok_or_else(|| Refused::new(ErrorCode::NotFound, "unknown account"))?;
        let key = devices
            .devices
            .get(&me.device)
            .map(|d| d.signing_key)
            .ok_or_else(|| Refused::new(ErrorCode::Forbidden, "device not on the list"))?;
        verify::signed_pre_key(&u.signed_pre_key, &key)?;
        verify::kem_pre_key(&u.last_resort_kem_pre_key, &key, true)?;
        let mut one_time = Vec::with_capacity(u.one_time_pre_keys.len());
        for k in u.one_time_pre_keys {
            one_time.push((verify::one_time_pre_key(&k)?, k));
        }
        let mut kem = Vec::with_capacity(u.kem_pre_keys.len());
        for k in u.kem_pre_keys {
            kem.push((verify::kem_pre_key(&k, &key, false)?, k));
        }
        self.relay.store.publish_pre_keys(
            &me,
            PreKeyUpload {
                signed_pre_key: u.signed_pre_key,
                last_resort_kem_pre_key: u.last_resort_kem_pre_key,
                one_time,
                kem,
            },
        )?;
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }

    fn fetch_bundle(&mut self, b: &api::FetchBundle) -> Result<server_frame::Kind, Refused> {
        let me = self.device()?;
        self.relay.limits.fetch(&me)?;
        let account: [u8; 32] = arr(&b.account, "account")?;
        let devices = self
            .relay
            .devices_of(&account)?
            .ok_or_else(|| Refused::new(ErrorCode::NotFound, "unknown account"))?;
        let listed = devices
            .devices
            .get(&b.device_id)
            .ok_or_else(|| Refused::new(ErrorCode::NotFound, "no such device"))?;
        let target = DeviceId {
            account,
            device: b.device_id,
        };
        let claimed = self
            .relay
            .store
            .claim_pre_keys(&target)?
            .ok_or_else(|| Refused::new(ErrorCode::NotFound, "the device has no pre-keys"))?;
        let bad = |_| StoreError::Corrupt("prekeys");
        let bundle = PreKeyBundle {
            account_key: account.to_vec(),
            device_id: b.device_id,
            identity: Some(listed.identity.clone()),
            signed_pre_key: Some(
                SignedPreKey::decode(claimed.signed_pre_key.as_slice()).map_err(bad)?,
            ),
            one_time_pre_key: claimed
                .one_time
                .as_deref()
                .map(OneTimePreKey::decode)
                .transpose()
                .map_err(bad)?,
            kem_pre_key: Some(KemPreKey::decode(claimed.kem.as_slice()).map_err(bad)?),
        };
        self.relay.metrics.prekey_bundles.inc();
        if claimed.one_time_left < limits::PRE_KEYS_LOW || claimed.kem_left < limits::PRE_KEYS_LOW {
            self.relay.router.deliver(
                &target,
                Live::PreKeysLow {
                    one_time: u32::try_from(claimed.one_time_left).unwrap_or(u32::MAX),
                    kem: u32::try_from(claimed.kem_left).unwrap_or(u32::MAX),
                },
            );
        }
        Ok(server_frame::Kind::Bundle(api::BundleResult {
            bundle: bundle.encode_to_vec(),
        }))
    }

    /// Checks and queues a send; returns its acceptance time. The caller acknowledges it once
    /// durable.
    fn send(&mut self, s: api::Send) -> Result<u64, Refused> {
        let me = self.device()?;
        if self.relay.draining.load(Ordering::Relaxed) {
            return Err(Refused::new(
                ErrorCode::Draining,
                "relay draining, reconnect",
            ));
        }
        self.relay.limits.send(&me)?;
        let client_id: [u8; limits::CLIENT_ID_LEN] = arr(&s.client_id, "client id")?;
        let recipient: [u8; 32] = arr(&s.recipient_account, "recipient account")?;
        let cfg = &self.relay.cfg;
        if s.envelopes.len() > cfg.max_envelopes_per_send {
            return Err(Refused::new(
                ErrorCode::TooLarge,
                "too many envelopes in one send",
            ));
        }
        if let Some(big) = s
            .envelopes
            .iter()
            .find(|e| e.body.len() > cfg.max_envelope_bytes)
        {
            return Err(Refused::new(
                ErrorCode::TooLarge,
                format!(
                    "envelope of {} bytes is over the cap of {}",
                    big.body.len(),
                    cfg.max_envelope_bytes
                ),
            ));
        }
        if s.envelopes.iter().any(|e| e.body.is_empty()) {
            return Err(Refused::new(ErrorCode::Malformed, "empty envelope"));
        }
        let devices = self
            .relay
            .devices_of(&recipient)?
            .ok_or_else(|| Refused::new(ErrorCode::NotFound, "unknown recipient account"))?;
        mismatch(&devices, &s.envelopes, &me, &recipient, s.targeted)?;
        let now = now_ms();
        let mut envelopes = Vec::with_capacity(s.envelopes.len());
        for e in s.envelopes {
            let to = DeviceId {
                account: recipient,
                device: e.device_id,
            };
            envelopes.push(Envelope {
                recipient: to,
                sender: me,
                client_id,
                body: e.body,
                received_at: now,
            });
        }
        let done = self.relay.store.enqueue(&envelopes, cfg.max_queue_len)?;
        self.relay.metrics.sends.inc();
        let mut received_at = now;
        for (e, q) in envelopes.iter().zip(&done) {
            received_at = q.received_at;
            if !q.fresh {
                continue;
            }
            self.relay.metrics.envelopes_queued.inc();
            self.relay.metrics.envelopes_stored.inc();
            // Online devices get it now (before the flush); offline ones get a wake-up.
            if !self.relay.router.deliver(&e.recipient, Live::Mail) {
                self.relay.pusher.wake(e.recipient);
            }
        }
        Ok(received_at)
    }

    fn ack(&mut self, a: &api::Ack) -> Result<server_frame::Kind, Refused> {
        let me = self.device()?;
        if a.seqs.len() > limits::CATCH_UP_PAGE * 16 {
            return Err(Refused::new(
                ErrorCode::TooLarge,
                "too many sequence numbers",
            ));
        }
        let n = self.relay.store.ack(&me, &a.seqs)?;
        self.relay.metrics.envelopes_acked.add(n as u64);
        self.relay
            .metrics
            .envelopes_stored
            .add(-i64::try_from(n).unwrap_or(0));
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }

    fn ephemeral(&mut self, e: api::SendEphemeral) -> Result<server_frame::Kind, Refused> {
        let me = self.device()?;
        self.relay.limits.send(&me)?;
        let recipient: [u8; 32] = arr(&e.recipient_account, "recipient account")?;
        let cfg = &self.relay.cfg;
        if e.envelopes.len() > cfg.max_envelopes_per_send
            || e.envelopes
                .iter()
                .any(|x| x.body.len() > cfg.max_envelope_bytes)
        {
            return Err(Refused::new(
                ErrorCode::TooLarge,
                "ephemeral send over its cap",
            ));
        }
        let devices = self
            .relay
            .devices_of(&recipient)?
            .ok_or_else(|| Refused::new(ErrorCode::NotFound, "unknown recipient account"))?;
        // Never stored: handed to the connected devices among those listed, dropped otherwise.
        for x in e.envelopes {
            if !devices.devices.contains_key(&x.device_id) {
                continue;
            }
            let to = DeviceId {
                account: recipient,
                device: x.device_id,
            };
            self.relay.router.deliver(
                &to,
                Live::Ephemeral {
                    from: me,
                    body: x.body,
                },
            );
        }
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }

    fn register_push(&mut self, p: &api::RegisterPush) -> Result<server_frame::Kind, Refused> {
        let me = self.device()?;
        self.relay.limits.upload(&me)?;
        if p.url.is_empty() {
            self.relay.store.set_push_endpoint(&me, None)?;
            return Ok(server_frame::Kind::Ok(api::Ok {}));
        }
        if p.url.len() > limits::MAX_PUSH_URL_LEN {
            return Err(Refused::new(ErrorCode::TooLarge, "push URL too long"));
        }
        let url = crate::push::PushUrl::parse(&p.url)
            .map_err(|e| Refused::new(ErrorCode::Malformed, format!("push URL: {e}")))?;
        if !url.is_https() && !self.relay.cfg.push.allow_plain_http {
            return Err(Refused::new(ErrorCode::Malformed, "push URL must be https"));
        }
        self.relay.store.set_push_endpoint(&me, Some(&p.url))?;
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }
}

/// A username as the directory keeps it (normalized), or `MALFORMED`.
fn username(name: &str) -> Result<String, Refused> {
    hush_net::username::normalize(name)
        .map_err(|e| Refused::new(ErrorCode::Malformed, format!("username: {e}")))
}

impl Conn {
    /// Binds a name to the device's account once the account key's signature over it verifies
    /// (any device of the account may send the claim; only the account key can make it).
    fn claim_username(&mut self, u: &api::ClaimUsername) -> Result<server_frame::Kind, Refused> {
        let me = self.device()?;
        self.relay.limits.upload(&me)?;
        let name = username(&u.name)?;
        if u.proof.len() != limits::SIGNATURE_LEN {
            return Err(Refused::new(
                ErrorCode::Malformed,
                format!("username proof must be {} bytes", limits::SIGNATURE_LEN),
            ));
        }
        verify::username_proof(&name, &me.account, &u.proof)?;
        self.relay
            .store
            .claim_username(&name, &me.account, &u.proof)?;
        tracing::debug!(conn = self.id, "username claimed");
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }

    /// Releases the account's name (a no-op if it holds none).
    fn release_username(&mut self) -> Result<server_frame::Kind, Refused> {
        let me = self.device()?;
        self.relay.limits.upload(&me)?;
        self.relay.store.release_username(&me.account)?;
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }

    /// Who holds a name, with the proof for the client to check.
    fn lookup_username(&mut self, q: &api::LookupUsername) -> Result<server_frame::Kind, Refused> {
        let me = self.device()?;
        self.relay.limits.fetch(&me)?;
        let name = username(&q.name)?;
        let holder = self
            .relay
            .store
            .lookup_username(&name)?
            .ok_or_else(|| Refused::new(ErrorCode::NotFound, "no such username"))?;
        Ok(server_frame::Kind::Username(api::UsernameResult {
            account: holder.account.to_vec(),
            proof: holder.proof,
        }))
    }
}

impl Conn {
    fn provision_put(&mut self, p: api::ProvisionPut) -> Result<server_frame::Kind, Refused> {
        self.relay
            .limits
            .accounts
            .check(&address_block(self.remote), 1, instant())
            .map_err(Refused::rate)?;
        let channel: [u8; 32] = arr(&p.channel, "channel")?;
        if p.body.is_empty() || p.body.len() > limits::MAX_PROVISION_BYTES {
            return Err(Refused::new(ErrorCode::TooLarge, "link message size"));
        }
        let now = now_ms();
        let mut m = self
            .relay
            .provisions
            .lock()
            .map_err(|_| Refused::new(ErrorCode::Internal, "provisioning lock"))?;
        m.retain(|_, (_, exp)| *exp > now);
        if m.len() >= limits::MAX_PROVISIONS && !m.contains_key(&channel) {
            return Err(Refused::new(
                ErrorCode::RateLimited,
                "too many pending links",
            ));
        }
        m.insert(
            channel,
            (p.body, now.saturating_add(limits::PROVISION_TTL_MS)),
        );
        Ok(server_frame::Kind::Ok(api::Ok {}))
    }

    fn provision_take(&mut self, t: &api::ProvisionTake) -> Result<server_frame::Kind, Refused> {
        self.device()?;
        let channel: [u8; 32] = arr(&t.channel, "channel")?;
        let now = now_ms();
        let mut m = self
            .relay
            .provisions
            .lock()
            .map_err(|_| Refused::new(ErrorCode::Internal, "provisioning lock"))?;
        match m.remove(&channel) {
            Some((body, exp)) if exp > now => {
                Ok(server_frame::Kind::Provision(api::ProvisionResult { body }))
            }
            _ => Err(Refused::new(ErrorCode::NotFound, "no link message yet")),
        }
    }
}

/// Refuses a send whose device set is not exactly the recipient's current list (less the sending
/// device when writing to one's own account), naming what is missing and what is extra.
fn mismatch(
    devices: &AccountDevices,
    envelopes: &[api::OutEnvelope],
    me: &DeviceId,
    recipient: &[u8; 32],
    targeted: bool,
) -> Result<(), Refused> {
    let mut expected: BTreeSet<u32> = devices.devices.keys().copied().collect();
    if recipient == &me.account {
        expected.remove(&me.device);
    }
    let mut given = BTreeSet::new();
    for e in envelopes {
        if !given.insert(e.device_id) {
            return Err(Refused::new(
                ErrorCode::Malformed,
                "two envelopes for one device",
            ));
        }
    }
    let complete = if targeted {
        given.is_subset(&expected)
    } else {
        expected == given
    };
    if complete && !given.is_empty() {
        return Ok(());
    }
    let mut r = Refused::new(
        ErrorCode::DeviceMismatch,
        "the envelopes do not match the recipient's devices",
    );
    if !targeted {
        r.missing = expected.difference(&given).copied().collect();
    }
    r.extra = given.difference(&expected).copied().collect();
    Err(r)
}

async fn blob_streams(
    relay: Arc<Relay>,
    quic: quinn::Connection,
    authed: Arc<std::sync::OnceLock<DeviceId>>,
) {
    while let Ok((send, recv)) = quic.accept_bi().await {
        let r = Arc::clone(&relay);
        let who = authed.get().copied();
        tokio::spawn(async move {
            if let Err(e) = blob_stream(r, who, send, recv).await {
                tracing::debug!(error = %e, "blob stream ended with an error");
            }
        });
    }
}

async fn blob_reply(
    send: &mut quinn::SendStream,
    kind: blob_response::Kind,
) -> std::io::Result<()> {
    frame::write(send, &BlobResponse { kind: Some(kind) }).await
}

async fn blob_refuse(
    relay: &Relay,
    send: &mut quinn::SendStream,
    r: Refused,
) -> std::io::Result<()> {
    relay.refuse_count(&r);
    blob_reply(send, blob_response::Kind::Error(r.to_frame())).await?;
    let _ = send.finish();
    Ok(())
}

async fn blob_stream(
    relay: Arc<Relay>,
    who: Option<DeviceId>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> std::io::Result<()> {
    let req: BlobRequest = match frame::read(&mut recv, 1024).await {
        Ok(r) => r,
        Err(e) => {
            let r = Refused::new(ErrorCode::Malformed, e.to_string());
            return blob_refuse(&relay, &mut send, r).await;
        }
    };
    let Some(me) = who else {
        let r = Refused::new(
            ErrorCode::Unauthenticated,
            "authenticate on the session stream first",
        );
        return blob_refuse(&relay, &mut send, r).await;
    };
    match req.kind {
        Some(blob_request::Kind::Upload(u)) => {
            if u.size == 0 || u.size > relay.cfg.blob_max_bytes {
                let r = Refused::new(
                    ErrorCode::TooLarge,
                    format!("blob size must be 1..={} bytes", relay.cfg.blob_max_bytes),
                );
                return blob_refuse(&relay, &mut send, r).await;
            }
            if let Err(wait) = relay.limits.blob_uploads.check(&me, 1, instant()) {
                return blob_refuse(&relay, &mut send, Refused::rate(wait)).await;
            }
            match receive_blob(&relay, &me, u.size, &mut recv).await {
                Ok(up) => {
                    relay.metrics.blobs_uploaded.inc();
                    relay.metrics.blob_bytes_uploaded.add(u.size);
                    blob_reply(&mut send, blob_response::Kind::Uploaded(up)).await?;
                    let _ = send.finish();
                    Ok(())
                }
                Err(r) => blob_refuse(&relay, &mut send, r).await,
            }
        }
        Some(blob_request::Kind::Download(d)) => {
            let not_found = || Refused::new(ErrorCode::BlobNotFound, "no such blob");
            let Ok(id) = <[u8; limits::BLOB_ID_LEN]>::try_from(d.id.as_slice()) else {
                return blob_refuse(&relay, &mut send, not_found()).await;
            };
            let meta = match relay.blobs.meta(id) {
                Ok(Some((m, true))) if blobs::capability_matches(&m, &d.capability) => m,
                Ok(_) => return blob_refuse(&relay, &mut send, not_found()).await,
                Err(e) => return blob_refuse(&relay, &mut send, e.into()).await,
            };
            if meta.expires_at <= now_ms() {
                return blob_refuse(&relay, &mut send, not_found()).await;
            }
            blob_reply(
                &mut send,
                blob_response::Kind::Found(api::BlobFound { size: meta.size }),
            )
            .await?;
            let chunks = meta.size.div_ceil(BLOB_CHUNK as u64);
            for i in 0..chunks {
                let index = u32::try_from(i).map_err(std::io::Error::other)?;
                let Ok(Some(c)) = relay.blobs.chunk(id, index) else {
                    // Deleted under us: end the stream short; the digest check fails client-side.
                    let _ = send.reset(1u8.into());
                    return Ok(());
                };
                send.write_all(&c).await?;
            }
            relay.metrics.blobs_downloaded.inc();
            let _ = send.finish();
            Ok(())
        }
        None => {
            let r = Refused::new(ErrorCode::UnknownRequest, "unknown blob request");
            blob_refuse(&relay, &mut send, r).await
        }
    }
}

async fn receive_blob(
    relay: &Relay,
    me: &DeviceId,
    size: u64,
    recv: &mut quinn::RecvStream,
) -> Result<api::BlobUploaded, Refused> {
    let id = random::<{ limits::BLOB_ID_LEN }>();
    let capability = random::<{ limits::BLOB_CAPABILITY_LEN }>();
    let now = now_ms();
    let expires_at = now.saturating_add(relay.cfg.blob_ttl_ms);
    let meta = BlobMeta {
        size,
        capability_hash: Sha256::digest(capability).into(),
        owner: me.key(),
        expires_at,
        created_at: now,
    };
    if !relay.blobs.begin(id, meta)? {
        // 128 random bits collided: astronomically unlikely, but never overwrite a blob.
        return Err(Refused::new(ErrorCode::Internal, "blob id taken, retry"));
    }
    let result = async {
        let mut left = size;
        let mut index = 0u32;
        let mut buf = vec![0u8; BLOB_CHUNK];
        while left > 0 {
            let want = usize::try_from(left.min(BLOB_CHUNK as u64)).unwrap_or(BLOB_CHUNK);
            let chunk = buf
                .get_mut(..want)
                .ok_or_else(|| Refused::new(ErrorCode::Internal, "buffer"))?;
            recv.read_exact(chunk).await.map_err(|_| {
                Refused::new(ErrorCode::Malformed, "blob stream ended before its size")
            })?;
            match relay.blobs.put_chunk(id, index, chunk)? {
                blobs::ChunkPut::Stored => {}
                other => {
                    tracing::error!(?other, "blob chunk refused by the store");
                    return Err(Refused::new(
                        ErrorCode::Internal,
                        "blob store refused a chunk",
                    ));
                }
            }
            left -= want as u64;
            index = index.saturating_add(1);
        }
        // Nothing may follow the declared size.
        let mut one = [0u8; 1];
        match recv.read(&mut one).await {
            Ok(None) => {}
            _ => {
                return Err(Refused::new(
                    ErrorCode::TooLarge,
                    "blob longer than its declared size",
                ));
            }
        }
        if !relay.blobs.complete(id)? {
            return Err(Refused::new(ErrorCode::Internal, "blob incomplete"));
        }
        let blobs = Arc::clone(&relay.blobs);
        match tokio::task::spawn_blocking(move || blobs.flush()).await {
            Ok(r) => r?,
            Err(_) => return Err(Refused::new(ErrorCode::Internal, "flush task failed")),
        }
        Ok(())
    }
    .await;
    if let Err(r) = result {
        let _ = relay.blobs.delete(id);
        return Err(r);
    }
    Ok(api::BlobUploaded {
        id: id.to_vec(),
        capability: capability.to_vec(),
        expires_at,
    })
}
