//! The client side of a connection to the relay, written once for every client: the app's
//! engine, the load generator and the tests. QUIC with the pinned certificate, the control
//! stream with request ids (any number of requests in flight, answered in any order), a writer
//! that sends whatever is queued at a wake-up in one write, a reader that hands each answer to
//! whoever waits for it and unsolicited frames to one sink, and the authentication exchange
//! (docs/RELAY_PROTOCOL.md §4). Over QUIC ([`Connection::connect`]) or TLS 1.3 on TCP
//! ([`Connection::connect_tcp`], §17), with the same API. Reconnecting is the caller's: a
//! [`Connection`] is one connection and is dead once [`Connection::is_open`] says so.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hush_proto::relay_api::{self as api, ClientFrame, ServerFrame, client_frame, server_frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::frame::{self, FrameError};

/// Bytes the reader buffers from the control stream.
const READ_BUFFER: usize = 64 * 1024;
/// Most frames the writer takes from its queue for one write.
const WRITE_BATCH: usize = 256;
/// Length of the TLS exporter value and of the relay's challenge.
const AUTH_LEN: usize = 32;

/// Why a connection could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The relay pin is not a certificate fingerprint (64 hex digits).
    #[error("relay pin: {0}")]
    BadPin(String),
    /// The client's settings are unusable (a bad transport setting).
    #[error("configuration: {0}")]
    Config(String),
    /// The relay at this address presented a certificate other than the pinned one.
    #[error("the certificate of {0} does not match the pin")]
    PinMismatch(SocketAddr),
    /// The relay could not be reached (no answer, a refused handshake, a local socket error).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer in time.
    #[error("no answer in time")]
    Timeout,
    /// The connection closed (or its control stream ended) before an answer.
    #[error("connection closed")]
    Closed,
    /// The relay answered what the protocol does not allow here.
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

/// The transport of client connections: a keep-alive (the relay sends none) and, if given, an
/// idle timeout (negotiated down to the relay's own if that is shorter).
pub fn client_config(
    pin: &str,
    keep_alive: Duration,
    idle_timeout: Option<Duration>,
) -> Result<quinn::ClientConfig, ConnError> {
    let tls = crate::pin::pinned_client_config(pin, crate::ALPN)
        .map_err(|e| ConnError::BadPin(e.to_string()))?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ConnError::Config(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(keep_alive));
    if let Some(idle) = idle_timeout {
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(idle).map_err(|e| ConnError::Config(e.to_string()))?,
        ));
    }
    cc.transport_config(Arc::new(transport));
    Ok(cc)
}

/// A client endpoint on `bind` using `cc`; with `buffers`, its UDP socket asks for receive and
/// send buffers of that many bytes (many connections on one socket drop datagrams with the
/// system's default).
pub fn endpoint(
    bind: SocketAddr,
    buffers: Option<usize>,
    cc: quinn::ClientConfig,
) -> Result<quinn::Endpoint, ConnError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let io = |e: std::io::Error| ConnError::Unreachable(format!("client socket: {e}"));
    let socket =
        Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP)).map_err(io)?;
    if let Some(bytes) = buffers {
        // Best effort: the system may cap them.
        let _ = socket.set_recv_buffer_size(bytes);
        let _ = socket.set_send_buffer_size(bytes);
    }
    socket.bind(&bind.into()).map_err(io)?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| ConnError::Config("no async runtime".to_owned()))?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        runtime,
    )
    .map_err(io)?;
    ep.set_default_client_config(cc);
    Ok(ep)
}

/// The unspecified address of `addr`'s family, port 0: where a client binds to reach `addr`.
pub fn any_local(addr: SocketAddr) -> SocketAddr {
    if addr.is_ipv6() {
        SocketAddr::from(([0u16; 8], 0))
    } else {
        SocketAddr::from(([0u8; 4], 0))
    }
}

/// Where the reader puts frames that answer no waiting request.
pub enum Unsolicited {
    /// Into a bounded queue: the reader waits while it is full (so a slow consumer slows the
    /// relay down instead of growing memory). Frames with a request id are dropped; the reader
    /// stops once the queue's receiver is gone.
    Queue(mpsc::Sender<server_frame::Kind>),
    /// To a function called on the reader's task with each frame (answers to unknown request
    /// ids included).
    Handler(Box<dyn FnMut(ServerFrame) + Send>),
}

/// Called with the answer to a request, or with `None` if the connection ended first.
pub type OnAnswer = Box<dyn FnOnce(Option<server_frame::Kind>) + Send>;

enum Waiter {
    Reply(oneshot::Sender<server_frame::Kind>),
    Call(OnAnswer),
}

type Waiters = Arc<Mutex<HashMap<u64, Waiter>>>;

/// What carries a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC (UDP), ALPN [`crate::ALPN`].
    Quic,
    /// TLS 1.3 over TCP, ALPN [`crate::TCP_ALPN`] (docs/RELAY_PROTOCOL.md §17).
    Tcp,
}

impl Transport {
    /// `"quic"` or `"tcp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a connection is made.
#[derive(Clone, Debug)]
pub struct Options {
    /// The name the relay's certificate is asked for (the pin is what is checked).
    pub server_name: String,
    /// Longest the QUIC handshake may take.
    pub handshake_timeout: Duration,
    /// Largest frame accepted from the relay.
    pub max_frame: usize,
    /// Close the connection when its control stream ends or cannot be written (so that nobody
    /// takes it for a live one). Off for tests that watch how the relay closes it.
    pub close_when_stream_ends: bool,
    /// Over TCP (which has no keep-alive or idle timeout of its own): a `Ping` after this long,
    /// and the connection is closed if its answer does not come within as long again. `None`
    /// sends none.
    pub tcp_keep_alive: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            server_name: "hush-relay".to_owned(),
            handshake_timeout: Duration::from_secs(10),
            max_frame: 8 << 20,
            close_when_stream_ends: true,
            tcp_keep_alive: None,
        }
    }
}

/// The connection under the control stream.
enum Link {
    Quic(quinn::Connection),
    Tcp(TcpLink),
}

/// A TLS connection over TCP: its exporter (taken at the handshake), whether it is closed (by
/// either side; set once), and how its blob connections are made.
struct TcpLink {
    exporter: [u8; AUTH_LEN],
    closed: Arc<watch::Sender<bool>>,
    blobs: BlobDialer,
}

/// How blob connections over TCP are made (docs/RELAY_PROTOCOL.md §17).
struct BlobDialer {
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    handshake_timeout: Duration,
    key: [u8; crate::TCP_BLOB_KEY_LEN],
}

/// A blob connection over TLS on TCP: one blob transfer, as on a QUIC blob stream.
pub type TcpBlobStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Waits until `closed` holds `true`.
async fn wait_closed(closed: &watch::Sender<bool>) {
    let mut rx = closed.subscribe();
    let _ = rx.wait_for(|c| *c).await;
}

/// One connection to the relay and its control stream.
pub struct Connection {
    link: Link,
    out: mpsc::UnboundedSender<Vec<u8>>,
    waiters: Waiters,
    next: Arc<AtomicU64>,
}

impl Connection {
    /// Connects from `endpoint` to `addr`, opens the control stream and starts its writer and
    /// reader. The reader's handle yields why the stream ended.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        options: &Options,
        unsolicited: Unsolicited,
    ) -> Result<(Self, JoinHandle<FrameError>), ConnError> {
        let connecting = endpoint
            .connect(addr, &options.server_name)
            .map_err(|e| ConnError::Unreachable(format!("{addr}: {e}")))?;
        let conn = tokio::time::timeout(options.handshake_timeout, connecting)
            .await
            .map_err(|_| ConnError::Unreachable(format!("no answer from {addr}")))?
            .map_err(|e| {
                // The pin check's own error, carried through rustls and quinn as text.
                if format!("{e:?}").contains("PinMismatch") {
                    ConnError::PinMismatch(addr)
                } else {
                    ConnError::Unreachable(format!("{addr}: {e}"))
                }
            })?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ConnError::Unreachable(format!("{addr}: {e}")))?;
        let close = options.close_when_stream_ends.then(|| conn.clone());
        let out = spawn_writer(send, close.clone());
        let waiters: Waiters = Arc::default();
        let on_end: Option<OnEnd> =
            close.map(|c| Box::new(move || c.close(0u8.into(), b"stream ended")) as OnEnd);
        let reader = tokio::spawn(read(
            recv,
            options.max_frame,
            Arc::clone(&waiters),
            unsolicited,
            on_end,
            None,
        ));
        Ok((
            Self {
                link: Link::Quic(conn),
                out,
                waiters,
                next: Arc::new(AtomicU64::new(1)),
            },
            reader,
        ))
    }

    /// Connects to `addr` over TLS 1.3 on TCP (ALPN [`crate::TCP_ALPN`], the certificate pinned
    /// to `pin`): the TLS connection is the control stream (docs/RELAY_PROTOCOL.md §17). The
    /// same requests, answers and unsolicited frames as over QUIC; the reader's handle yields
    /// why the stream ended.
    pub async fn connect_tcp(
        addr: SocketAddr,
        pin: &str,
        options: &Options,
        unsolicited: Unsolicited,
    ) -> Result<(Self, JoinHandle<FrameError>), ConnError> {
        let tls = crate::pin::pinned_client_config(pin, crate::TCP_ALPN)
            .map_err(|e| ConnError::BadPin(e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let blob_tls = crate::pin::pinned_client_config(pin, crate::TCP_BLOB_ALPN)
            .map_err(|e| ConnError::BadPin(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(options.server_name.clone())
            .map_err(|e| ConnError::Config(format!("server name: {e}")))?;
        let tls = dial_tls(
            addr,
            &connector,
            name.clone(),
            options.handshake_timeout,
            crate::TCP_ALPN,
        )
        .await?;
        let session = tls.get_ref().1;
        let mut blob_key = [0u8; crate::TCP_BLOB_KEY_LEN];
        session
            .export_keying_material(&mut blob_key, crate::TCP_BLOB_KEY_LABEL, Some(b""))
            .map_err(|_| ConnError::Protocol("no TLS exporter"))?;
        let blobs = BlobDialer {
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(blob_tls)),
            name,
            handshake_timeout: options.handshake_timeout,
            key: blob_key,
        };
        let mut exporter = [0u8; AUTH_LEN];
        session
            .export_keying_material(
                &mut exporter,
                hush_proto::labels::RELAY_AUTH_EXPORTER,
                Some(b""),
            )
            .map_err(|_| ConnError::Protocol("no TLS exporter"))?;
        let (rd, wr) = tokio::io::split(tls);
        let closed = Arc::new(watch::Sender::new(false));
        let out = spawn_tcp_writer(wr, Arc::clone(&closed));
        let waiters: Waiters = Arc::default();
        // Over TCP the connection is the stream: once it ends the connection is closed,
        // whatever `close_when_stream_ends` says.
        let on_end: OnEnd = {
            let closed = Arc::clone(&closed);
            Box::new(move || {
                closed.send_replace(true);
            })
        };
        let reader = tokio::spawn(read(
            rd,
            options.max_frame,
            Arc::clone(&waiters),
            unsolicited,
            Some(on_end),
            Some(Arc::clone(&closed)),
        ));
        let next = Arc::new(AtomicU64::new(1));
        if let Some(every) = options.tcp_keep_alive {
            tokio::spawn(keep_alive(
                out.downgrade(),
                Arc::clone(&waiters),
                Arc::clone(&next),
                Arc::clone(&closed),
                every,
            ));
        }
        Ok((
            Self {
                link: Link::Tcp(TcpLink {
                    exporter,
                    closed,
                    blobs,
                }),
                out,
                waiters,
                next,
            },
            reader,
        ))
    }

    /// Over TCP: opens a blob connection for this control connection (docs/RELAY_PROTOCOL.md
    /// §17): a TLS connection with ALPN [`crate::TCP_BLOB_ALPN`] that has sent this connection's
    /// blob key; the blob request frame and the transfer follow as on a QUIC blob stream, and
    /// the client ends its side with `shutdown` where it would finish a stream. `None` over QUIC
    /// (open a stream on [`Connection::quic`]).
    pub async fn open_tcp_blob(&self) -> Option<Result<TcpBlobStream, ConnError>> {
        let Link::Tcp(t) = &self.link else {
            return None;
        };
        let b = &t.blobs;
        let opened = async {
            let mut tls = dial_tls(
                b.addr,
                &b.connector,
                b.name.clone(),
                b.handshake_timeout,
                crate::TCP_BLOB_ALPN,
            )
            .await?;
            tls.write_all(&b.key).await.map_err(|_| ConnError::Closed)?;
            Ok(tls)
        };
        Some(opened.await)
    }

    /// The QUIC connection (for blob streams, close reasons, statistics); `None` over TCP.
    pub fn quic(&self) -> Option<&quinn::Connection> {
        match &self.link {
            Link::Quic(c) => Some(c),
            Link::Tcp(_) => None,
        }
    }

    /// What carries this connection.
    pub fn transport(&self) -> Transport {
        match self.link {
            Link::Quic(_) => Transport::Quic,
            Link::Tcp(_) => Transport::Tcp,
        }
    }

    /// Waits until the connection is closed (by either side).
    pub async fn closed(&self) {
        match &self.link {
            Link::Quic(c) => {
                let _ = c.closed().await;
            }
            Link::Tcp(t) => wait_closed(&t.closed).await,
        }
    }

    /// Queues bytes for the control stream as they are (a test's malformed frames).
    pub fn send_raw(&self, bytes: Vec<u8>) -> Result<(), ConnError> {
        self.out.send(bytes).map_err(|_| ConnError::Closed)
    }

    fn register(&self, waiter: Waiter) -> Result<u64, ConnError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, waiter);
        Ok(id)
    }

    fn write(&self, id: u64, kind: client_frame::Kind) -> Result<(), ConnError> {
        let sent = self.send_raw(frame::encode(&ClientFrame {
            request_id: id,
            kind: Some(kind),
        }));
        if sent.is_err() {
            self.waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        }
        sent
    }

    /// Sends a request; `on_answer` is called on the reader's task with its answer (or `None`
    /// if the connection ends first). Returns the request id.
    pub fn request_with(
        &self,
        kind: client_frame::Kind,
        on_answer: OnAnswer,
    ) -> Result<u64, ConnError> {
        let id = self.register(Waiter::Call(on_answer))?;
        self.write(id, kind)?;
        Ok(id)
    }

    /// Sends a request and waits at most `timeout` for its answer (an `Error` frame included).
    pub async fn request(
        &self,
        kind: client_frame::Kind,
        timeout: Duration,
    ) -> Result<server_frame::Kind, ConnError> {
        let (tx, rx) = oneshot::channel();
        let id = self.register(Waiter::Reply(tx))?;
        self.write(id, kind)?;
        tokio::select! {
            r = tokio::time::timeout(timeout, rx) => match r {
                Ok(Ok(k)) => Ok(k),
                Ok(Err(_)) => Err(ConnError::Closed),
                Err(_) => {
                    self.waiters.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
                    Err(ConnError::Timeout)
                }
            },
            () = self.closed() => Err(ConnError::Closed),
        }
    }

    /// This connection's TLS exporter for relay authentication (the same label, empty context
    /// and length over either transport).
    pub fn exporter(&self) -> Result<[u8; AUTH_LEN], ConnError> {
        match &self.link {
            Link::Quic(conn) => {
                let mut exporter = [0u8; AUTH_LEN];
                conn.export_keying_material(
                    &mut exporter,
                    hush_proto::labels::RELAY_AUTH_EXPORTER,
                    b"",
                )
                .map_err(|_| ConnError::Protocol("no TLS exporter"))?;
                Ok(exporter)
            }
            Link::Tcp(t) => Ok(t.exporter),
        }
    }

    /// Authenticates as `device_id` of `account`: asks for a challenge and answers with
    /// `sign(exporter, challenge)`, the device's signature over
    /// [`hush_proto::transcripts::relay_auth`] of this connection's exporter and the challenge.
    /// Returns the relay's answer (`Ok` or an error).
    pub async fn authenticate(
        &self,
        account: [u8; 32],
        device_id: u32,
        timeout: Duration,
        sign: impl FnOnce(&[u8; AUTH_LEN], &[u8; AUTH_LEN]) -> [u8; 64],
    ) -> Result<server_frame::Kind, ConnError> {
        let server_frame::Kind::Challenge(ch) = self
            .request(client_frame::Kind::Hello(api::Hello {}), timeout)
            .await?
        else {
            return Err(ConnError::Protocol("no challenge from the relay"));
        };
        let challenge: [u8; AUTH_LEN] = ch
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| ConnError::Protocol("challenge of the wrong length"))?;
        let signature = sign(&self.exporter()?, &challenge);
        self.request(
            client_frame::Kind::Authenticate(api::Authenticate {
                account: account.to_vec(),
                device_id,
                signature: signature.to_vec(),
            }),
            timeout,
        )
        .await
    }

    /// Whether the connection is still usable (not closed by either side).
    pub fn is_open(&self) -> bool {
        match &self.link {
            Link::Quic(c) => c.close_reason().is_none(),
            Link::Tcp(t) => !*t.closed.borrow(),
        }
    }

    /// Closes the connection with code 0 (over TCP, which has no close codes, the TLS
    /// connection just ends).
    pub fn close(&self, reason: &[u8]) {
        match &self.link {
            Link::Quic(c) => c.close(0u8.into(), reason),
            Link::Tcp(t) => {
                t.closed.send_replace(true);
            }
        }
    }
}

/// A TLS connection over TCP to `addr` that agreed on `alpn`, within `timeout`.
async fn dial_tls(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    timeout: Duration,
    alpn: &[u8],
) -> Result<TcpBlobStream, ConnError> {
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| ConnError::Unreachable(format!("{addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        connector.connect(name, tcp).await.map_err(|e| {
            // The pin check's own error, carried through rustls as text.
            if format!("{e:?}").contains("PinMismatch") {
                ConnError::PinMismatch(addr)
            } else {
                ConnError::Unreachable(format!("{addr}: {e}"))
            }
        })
    };
    let tls = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| ConnError::Unreachable(format!("no answer from {addr}")))??;
    if tls.get_ref().1.alpn_protocol() != Some(alpn) {
        return Err(ConnError::Protocol("the relay did not agree on the ALPN"));
    }
    Ok(tls)
}

/// Sends a `Ping` after every `every` while the connection is open, and closes it when an
/// answer does not come within `every` (TCP has no keep-alive or idle timeout of its own).
async fn keep_alive(
    out: mpsc::WeakUnboundedSender<Vec<u8>>,
    waiters: Waiters,
    next: Arc<AtomicU64>,
    closed: Arc<watch::Sender<bool>>,
    every: Duration,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = wait_closed(&closed) => return,
        }
        let Some(tx) = out.upgrade() else { return };
        let (answer_tx, answer) = oneshot::channel();
        let id = next.fetch_add(1, Ordering::Relaxed);
        waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Waiter::Reply(answer_tx));
        let ping = frame::encode(&ClientFrame {
            request_id: id,
            kind: Some(client_frame::Kind::Ping(api::Ping {})),
        });
        let sent = tx.send(ping).is_ok();
        drop(tx);
        let answered = sent && matches!(tokio::time::timeout(every, answer).await, Ok(Ok(_)));
        if !answered {
            waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            closed.send_replace(true);
            return;
        }
    }
}

/// The writer of a TLS connection over TCP: as [`spawn_writer`], flushing each batch; once every
/// sender is dropped, or the connection is closed, it ends the TLS stream (`close_notify`).
fn spawn_tcp_writer<W: AsyncWrite + Unpin + Send + 'static>(
    mut wr: W,
    closed: Arc<watch::Sender<bool>>,
) -> mpsc::UnboundedSender<Vec<u8>> {
    let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut frames = Vec::with_capacity(WRITE_BATCH);
        let mut buf = Vec::new();
        loop {
            let n = tokio::select! {
                n = out_rx.recv_many(&mut frames, WRITE_BATCH) => n,
                () = wait_closed(&closed) => 0,
            };
            if n == 0 {
                break;
            }
            buf.clear();
            for f in frames.drain(..) {
                buf.extend_from_slice(&f);
            }
            let wrote = async {
                wr.write_all(&buf).await?;
                wr.flush().await
            };
            if wrote.await.is_err() {
                closed.send_replace(true);
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    out
}

/// Starts the writer of a stream: whatever frames are queued at a wake-up go out in one write;
/// the stream is finished once every sender is dropped. A failed write closes `close`, if given.
pub fn spawn_writer(
    mut send: quinn::SendStream,
    close: Option<quinn::Connection>,
) -> mpsc::UnboundedSender<Vec<u8>> {
    let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut frames = Vec::with_capacity(WRITE_BATCH);
        let mut buf = Vec::new();
        while out_rx.recv_many(&mut frames, WRITE_BATCH).await > 0 {
            buf.clear();
            for f in frames.drain(..) {
                buf.extend_from_slice(&f);
            }
            if send.write_all(&buf).await.is_err() {
                if let Some(c) = close {
                    c.close(0u8.into(), b"stream ended");
                }
                return;
            }
        }
        let _ = send.finish();
    });
    out
}

/// Called once when the reader stops.
type OnEnd = Box<dyn FnOnce() + Send>;

async fn read<R: AsyncRead + Unpin>(
    recv: R,
    max_frame: usize,
    waiters: Waiters,
    mut unsolicited: Unsolicited,
    on_end: Option<OnEnd>,
    stop: Option<Arc<watch::Sender<bool>>>,
) -> FrameError {
    let mut recv = BufReader::with_capacity(READ_BUFFER, recv);
    let end = loop {
        let next = frame::read::<ServerFrame, _>(&mut recv, max_frame);
        let got = match &stop {
            Some(stop) => tokio::select! {
                r = next => r,
                () = wait_closed(stop) => Err(FrameError::Finished),
            },
            None => next.await,
        };
        let f = match got {
            Ok(f) => f,
            Err(e) => break e,
        };
        let waiter = if f.request_id == 0 {
            None
        } else {
            waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&f.request_id)
        };
        match (waiter, &mut unsolicited) {
            (Some(Waiter::Reply(tx)), _) => {
                if let Some(kind) = f.kind {
                    let _ = tx.send(kind);
                }
            }
            (Some(Waiter::Call(call)), _) => call(f.kind),
            (None, Unsolicited::Handler(h)) => h(f),
            (None, Unsolicited::Queue(q)) => {
                if f.request_id == 0
                    && let Some(kind) = f.kind
                    && q.send(kind).await.is_err()
                {
                    break FrameError::Finished;
                }
            }
        }
    };
    if let Some(end) = on_end {
        end();
    }
    // Wake every waiter: no answer will come.
    let left: Vec<Waiter> = waiters
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain()
        .map(|(_, w)| w)
        .collect();
    for w in left {
        if let Waiter::Call(call) = w {
            call(None);
        }
        // A `Reply` waiter's sender is dropped here: its request sees the connection closed.
    }
    end
}
