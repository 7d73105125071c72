//! One device's connection to the relay: QUIC with the pinned certificate, the session stream, a
//! writer that coalesces frames, a reader that matches answers, timestamps deliveries and hands
//! their sequence numbers to an acknowledger.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use hush_proto::relay_api::{self as api, ClientFrame, ServerFrame, client_frame, server_frame};
use hush_relay::{frame, limits};
use tokio::io::BufReader;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::Error;

/// Time allowed for one set-up request (create, hello, authenticate).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Errors kept word for word (the rest are only counted).
const ERRORS_KEPT: usize = 20;

/// What every connection of a run shares: the clock base, the measurement window, counters.
pub(crate) struct Shared {
    base: Instant,
    window_start: AtomicU64,
    window_end: AtomicU64,
    /// Sends answered with `SendResult`.
    pub(crate) acked: AtomicU64,
    /// Sends answered with `SendResult` inside the measurement window.
    pub(crate) acked_in_window: AtomicU64,
    /// Envelopes in sends answered with `SendResult`.
    pub(crate) envelopes_acked: AtomicU64,
    /// Sends written and not yet answered.
    pub(crate) in_flight: AtomicU64,
    /// `Deliver` frames received.
    pub(crate) delivered: AtomicU64,
    /// `Deliver` frames received inside the measurement window.
    pub(crate) delivered_in_window: AtomicU64,
    refusals: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<Vec<String>>,
    pub(crate) error_count: AtomicU64,
}

impl Shared {
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            acked: AtomicU64::new(0),
            acked_in_window: AtomicU64::new(0),
            envelopes_acked: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_in_window: AtomicU64::new(0),
            refusals: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(Vec::new()),
            error_count: AtomicU64::new(0),
        })
    }

    /// Nanoseconds since the run started (monotonic).
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Sets the measurement window, in nanoseconds since the run started.
    pub(crate) fn set_window(&self, start: u64, end: u64) {
        self.window_start.store(start, Ordering::Relaxed);
        self.window_end.store(end, Ordering::Relaxed);
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.window_start.load(Ordering::Relaxed)
            && t < self.window_end.load(Ordering::Relaxed)
    }

    pub(crate) fn refuse(&self, code: i32) {
        let name = api::ErrorCode::try_from(code)
            .map(|c| c.as_str_name().to_string())
            .unwrap_or_else(|_| format!("code {code}"));
        if let Ok(mut r) = self.refusals.lock() {
            *r.entry(name).or_insert(0) += 1;
        }
    }

    pub(crate) fn error(&self, what: String) {
        self.error_count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.errors.lock()
            && e.len() < ERRORS_KEPT
        {
            e.push(what);
        }
    }

    pub(crate) fn refusals(&self) -> BTreeMap<String, u64> {
        self.refusals.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub(crate) fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// Latencies seen by one connection, in microseconds.
#[derive(Default)]
pub(crate) struct Samples {
    /// Send (timestamp in the body) → the recipient's reader decoded the `Deliver`.
    pub(crate) delivery: Vec<u32>,
    /// Send written → its `SendResult` decoded (the durability wait included).
    pub(crate) durable: Vec<u32>,
}

/// Most samples one connection keeps of each kind (a bound on memory).
const MAX_SAMPLES: usize = 4_000_000;

enum Waiter {
    Control(oneshot::Sender<server_frame::Kind>),
    Send {
        at: u64,
        envelopes: u64,
        _permit: OwnedSemaphorePermit,
    },
    Ack,
}

struct Inner {
    conn: quinn::Connection,
    out: mpsc::UnboundedSender<Vec<u8>>,
    waiters: Mutex<HashMap<u64, Waiter>>,
    next: AtomicU64,
    shared: Arc<Shared>,
}

/// A connection (cheap to clone).
#[derive(Clone)]
pub(crate) struct Link(Arc<Inner>);

/// The client endpoints' transport: keep-alive (the relay sends none), otherwise quinn's defaults.
pub(crate) fn client_config(pin: &str, keep_alive: Duration) -> Result<quinn::ClientConfig, Error> {
    let tls = hush_relay::tls::pinned_client_config(pin, limits::ALPN)
        .map_err(|e| Error::new(format!("pin: {e}")))?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::new(format!("TLS: {e}")))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(keep_alive));
    cc.transport_config(Arc::new(transport));
    Ok(cc)
}

/// A client endpoint (one UDP socket, with large buffers) on the loopback address of the relay's
/// family.
pub(crate) fn endpoint(
    relay: SocketAddr,
    cc: quinn::ClientConfig,
) -> Result<quinn::Endpoint, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let local: SocketAddr = if relay.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0))
    };
    let io = |e: std::io::Error| Error::new(format!("client socket: {e}"));
    let socket =
        Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP)).map_err(io)?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&local.into()).map_err(io)?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(io)?;
    ep.set_default_client_config(cc);
    Ok(ep)
}

impl Link {
    /// Connects and opens the session stream; starts the writer, the reader and the acknowledger
    /// (which acknowledges what arrived every `ack_interval`). The reader's handle yields its
    /// samples once the connection is closed.
    pub(crate) async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        shared: Arc<Shared>,
        ack_interval: Duration,
    ) -> Result<(Self, JoinHandle<Samples>), Error> {
        let conn = endpoint
            .connect(addr, "localhost")
            .map_err(|e| Error::new(format!("connect: {e}")))?
            .await
            .map_err(|e| Error::new(format!("handshake: {e}")))?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| Error::new(format!("session stream: {e}")))?;
        let out = spawn_writer(send);
        let link = Self(Arc::new(Inner {
            conn,
            out,
            waiters: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            shared,
        }));
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<u64>();
        tokio::spawn(link.clone().acknowledger(ack_rx, ack_interval));
        let reader = tokio::spawn(link.clone().reader(recv, ack_tx));
        Ok((link, reader))
    }

    pub(crate) fn conn(&self) -> &quinn::Connection {
        &self.0.conn
    }

    pub(crate) fn close(&self) {
        self.0.conn.close(0u32.into(), b"done");
    }

    fn write(&self, id: u64, kind: client_frame::Kind) -> Result<(), Error> {
        self.0
            .out
            .send(frame::encode(&ClientFrame {
                request_id: id,
                kind: Some(kind),
            }))
            .map_err(|_| Error::new("connection writer stopped".into()))
    }

    fn register(&self, w: Waiter) -> u64 {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.0.waiters.lock() {
            m.insert(id, w);
        }
        id
    }

    /// Sends a request and waits for its answer.
    pub(crate) async fn request(
        &self,
        kind: client_frame::Kind,
    ) -> Result<server_frame::Kind, Error> {
        let (tx, rx) = oneshot::channel();
        let id = self.register(Waiter::Control(tx));
        self.write(id, kind)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(k)) => Ok(k),
            Ok(Err(_)) => Err(Error::new(format!(
                "connection closed before an answer: {:?}",
                self.0.conn.close_reason()
            ))),
            Err(_) => Err(Error::new("no answer in time".into())),
        }
    }

    /// Creates an account (allowed before authentication).
    pub(crate) async fn create_account(&self, signed_list: Vec<u8>) -> Result<(), Error> {
        match self
            .request(client_frame::Kind::CreateAccount(api::CreateAccount {
                signed_device_list: signed_list,
            }))
            .await?
        {
            server_frame::Kind::Ok(_) => Ok(()),
            other => Err(Error::new(format!("create account: {other:?}"))),
        }
    }

    /// Authenticates as `device` of `account`: the signature over the TLS exporter and the
    /// relay's challenge.
    pub(crate) async fn authenticate(
        &self,
        account: [u8; 32],
        device: u32,
        key: &SigningKey,
    ) -> Result<(), Error> {
        let server_frame::Kind::Challenge(ch) = self
            .request(client_frame::Kind::Hello(api::Hello {}))
            .await?
        else {
            return Err(Error::new("no challenge".into()));
        };
        let nonce: [u8; 32] = ch
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| Error::new("challenge is not 32 bytes".into()))?;
        let mut exporter = [0u8; 32];
        self.0
            .conn
            .export_keying_material(&mut exporter, hush_proto::labels::RELAY_AUTH_EXPORTER, b"")
            .map_err(|_| Error::new("no TLS exporter".into()))?;
        let t = hush_proto::transcripts::relay_auth(&exporter, &nonce, &account, device);
        match self
            .request(client_frame::Kind::Authenticate(api::Authenticate {
                account: account.to_vec(),
                device_id: device,
                signature: key.sign(&t).to_bytes().to_vec(),
            }))
            .await?
        {
            server_frame::Kind::Ok(_) => Ok(()),
            other => Err(Error::new(format!("authenticate: {other:?}"))),
        }
    }

    /// Writes one send; its answer is counted by the reader, which also releases `permit`.
    pub(crate) fn send(
        &self,
        send: api::Send,
        at: u64,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), Error> {
        let envelopes = u64::try_from(send.envelopes.len()).unwrap_or(u64::MAX);
        self.0.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let id = self.register(Waiter::Send {
            at,
            envelopes,
            _permit: permit,
        });
        self.write(id, client_frame::Kind::Send(send))
    }

    fn take(&self, id: u64) -> Option<Waiter> {
        self.0.waiters.lock().ok()?.remove(&id)
    }

    async fn acknowledger(self, mut rx: mpsc::UnboundedReceiver<u64>, every: Duration) {
        let mut seqs = Vec::with_capacity(1024);
        loop {
            if rx.recv_many(&mut seqs, 4096).await == 0 {
                return;
            }
            let id = self.register(Waiter::Ack);
            let batch = std::mem::take(&mut seqs);
            if self
                .write(id, client_frame::Kind::Ack(api::Ack { seqs: batch }))
                .is_err()
            {
                return;
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn reader(self, recv: quinn::RecvStream, acks: mpsc::UnboundedSender<u64>) -> Samples {
        let shared = Arc::clone(&self.0.shared);
        let mut samples = Samples::default();
        let mut recv = BufReader::with_capacity(64 << 10, recv);
        loop {
            let f = match frame::read::<ServerFrame, _>(&mut recv, 4 << 20).await {
                Ok(f) => f,
                Err(frame::FrameError::Finished) => break,
                Err(e) => {
                    // A connection we closed ourselves ends here too.
                    if !matches!(
                        self.0.conn.close_reason(),
                        Some(quinn::ConnectionError::LocallyClosed)
                    ) {
                        shared.error(format!("connection lost: {e}"));
                    }
                    break;
                }
            };
            let Some(kind) = f.kind else { continue };
            if f.request_id == 0 {
                match kind {
                    server_frame::Kind::Deliver(d) => {
                        let now = shared.now_ns();
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                        if let Some(at) = d
                            .body
                            .get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_be_bytes)
                            && shared.in_window(at)
                        {
                            shared.delivered_in_window.fetch_add(1, Ordering::Relaxed);
                            if samples.delivery.len() < MAX_SAMPLES {
                                samples.delivery.push(micros(now.saturating_sub(at)));
                            }
                        }
                        let _ = acks.send(d.seq);
                    }
                    server_frame::Kind::Drain(_) => shared.error("relay draining".into()),
                    server_frame::Kind::Revoked(_) => shared.error("device revoked".into()),
                    _ => {}
                }
                continue;
            }
            match self.take(f.request_id) {
                Some(Waiter::Control(tx)) => {
                    let _ = tx.send(kind);
                }
                Some(Waiter::Send { at, envelopes, .. }) => {
                    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                    match kind {
                        server_frame::Kind::Sent(sent) => {
                            let now = shared.now_ns();
                            shared.acked.fetch_add(1, Ordering::Relaxed);
                            // Devices left out for lack of room got nothing: not expected to
                            // arrive, counted as refusals (of their own name).
                            let left_out = sent.full_devices.len();
                            if left_out > 0
                                && let Ok(mut r) = shared.refusals.lock()
                            {
                                *r.entry("DEVICE_FULL".to_string()).or_insert(0) += left_out as u64;
                            }
                            shared.envelopes_acked.fetch_add(
                                envelopes.saturating_sub(left_out as u64),
                                Ordering::Relaxed,
                            );
                            if shared.in_window(now) {
                                shared.acked_in_window.fetch_add(1, Ordering::Relaxed);
                            }
                            if shared.in_window(at) && samples.durable.len() < MAX_SAMPLES {
                                samples.durable.push(micros(now.saturating_sub(at)));
                            }
                        }
                        server_frame::Kind::Error(e) => shared.refuse(e.code),
                        other => shared.error(format!("unexpected answer to a send: {other:?}")),
                    }
                }
                Some(Waiter::Ack) => {
                    if let server_frame::Kind::Error(e) = kind {
                        shared.refuse(e.code);
                    }
                }
                None => shared.error(format!("answer to unknown request {}", f.request_id)),
            }
        }
        // Sends that will never be answered.
        if let Ok(mut m) = self.0.waiters.lock() {
            let lost = m
                .values()
                .filter(|w| matches!(w, Waiter::Send { .. }))
                .count();
            shared
                .in_flight
                .fetch_sub(u64::try_from(lost).unwrap_or(0), Ordering::Relaxed);
            m.clear();
        }
        samples
    }
}

fn micros(ns: u64) -> u32 {
    u32::try_from(ns / 1000).unwrap_or(u32::MAX)
}

/// Starts the writer of a stream: whatever frames are queued at a wake-up go out in one write;
/// the stream is finished once every sender is dropped.
pub(crate) fn spawn_writer(mut send: quinn::SendStream) -> mpsc::UnboundedSender<Vec<u8>> {
    let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut frames = Vec::with_capacity(256);
        let mut buf = Vec::new();
        while out_rx.recv_many(&mut frames, 256).await > 0 {
            buf.clear();
            for f in frames.drain(..) {
                buf.extend_from_slice(&f);
            }
            if send.write_all(&buf).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });
    out
}
