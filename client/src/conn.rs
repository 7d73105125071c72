//! One connection to a relay: the pinned TLS handshake, the control stream with
//! request/response matching, unsolicited frames as a stream of events, and blob streams.
//!
//! **Transports.** QUIC first; TLS 1.3 over TCP (docs/RELAY_PROTOCOL.md §17) for networks that
//! block UDP. [`RelayConnection::connect`] races them happy-eyeballs style: the transport that
//! last worked for this relay address (QUIC the first time) starts at once, the other after
//! [`FALLBACK_DELAY`] (or as soon as the first fails), and the first to complete its handshake
//! is kept, the other dropped. What worked is remembered per relay address and network (see
//! [`set_network`]) for the life of the process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

pub use hush_net::client::Transport;
use hush_net::client::{self, ConnError, Connection, Options, Unsolicited};
use hush_net::frame;
use hush_proto::relay_api::{
    self as api, BlobRequest, BlobResponse, ErrorCode, blob_request, blob_response, client_frame,
    server_frame,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::error::{ClientError, Refusal};

/// How long a request may wait for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive interval: a PING after this long without sending anything, so that the relay's
/// answers keep proving it is alive (docs/MOBILE.md weighs this against the radio's battery).
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// A connection that has heard nothing from the relay for this long is dead (a relay killed, a
/// network gone), counted from the later of the last packet received and the first keep-alive
/// sent after it: a dead relay is noticed within `KEEP_ALIVE + IDLE_TIMEOUT` (8 s), and the
/// engine reconnects. Negotiated down to the relay's own idle timeout if that is shorter.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(6);
/// Longest a QUIC handshake may take. A handshake whose first packets went to a relay that was
/// down backs its retransmissions off (1 s, 2 s, 4 s, ...); a fresh attempt after this long
/// reaches a relay that is back sooner than waiting out the idle timeout.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame accepted from the relay.
const MAX_SERVER_FRAME: usize = 8 << 20;
/// Unsolicited frames buffered before the reader waits for the engine.
const EVENT_QUEUE: usize = 4096;

/// How long the preferred transport has alone before the other one is tried too.
pub const FALLBACK_DELAY: Duration = Duration::from_millis(250);
/// Keep-alive interval of [`Liveness::Background`]: under the 30 s after which many NATs and
/// firewalls forget an idle UDP flow, and rare enough that the radio sleeps in between.
pub const BACKGROUND_KEEP_ALIVE: Duration = Duration::from_secs(25);
/// Idle timeout of [`Liveness::Background`]: two keep-alives lost in a row, below the relay's
/// default idle timeout (60 s).
pub const BACKGROUND_IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// Longest a QUIC reachability probe (made while connected over TCP) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How eagerly a connection proves that the relay is still there: noticing a dead link fast
/// costs radio time, which a phone pays in battery (docs/MOBILE.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Liveness {
    /// In the foreground, or on a desktop: a keep-alive after [`KEEP_ALIVE`] without traffic,
    /// and a link silent for [`IDLE_TIMEOUT`] is dead (noticed within about 8 s).
    #[default]
    Interactive,
    /// Kept connected in the background (an app without a push service): a keep-alive every
    /// [`BACKGROUND_KEEP_ALIVE`], dead after [`BACKGROUND_IDLE_TIMEOUT`] of silence.
    Background,
}

impl Liveness {
    /// The keep-alive interval (QUIC PING; over TCP a `Ping` request).
    pub fn keep_alive(self) -> Duration {
        match self {
            Self::Interactive => KEEP_ALIVE,
            Self::Background => BACKGROUND_KEEP_ALIVE,
        }
    }

    /// How long a silent link is given before it is declared dead.
    pub fn idle_timeout(self) -> Duration {
        match self {
            Self::Interactive => IDLE_TIMEOUT,
            Self::Background => BACKGROUND_IDLE_TIMEOUT,
        }
    }

    /// Over TCP, which has no keep-alive of its own: a `Ping` after this long, and the
    /// connection is dead if its answer does not come within as long again.
    fn tcp_ping(self) -> Duration {
        match self {
            Self::Interactive => KEEP_ALIVE.max(IDLE_TIMEOUT),
            Self::Background => BACKGROUND_KEEP_ALIVE,
        }
    }
}

/// Where a relay listens: QUIC (UDP) and TLS over TCP, usually on the same port number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RelayAddrs {
    /// The QUIC address.
    pub quic: SocketAddr,
    /// The TLS-over-TCP address, if the relay offers it.
    pub tcp: Option<SocketAddr>,
}

impl RelayAddrs {
    /// Both transports at `addr`'s address and port number (the relay's default).
    pub fn same(addr: SocketAddr) -> Self {
        Self {
            quic: addr,
            tcp: Some(addr),
        }
    }
}

/// The transport that last worked, per relay (QUIC address) and network.
fn preferred() -> &'static Mutex<HashMap<(SocketAddr, String), Transport>> {
    static PREFERRED: OnceLock<Mutex<HashMap<(SocketAddr, String), Transport>>> = OnceLock::new();
    PREFERRED.get_or_init(Mutex::default)
}

/// The network the device is on now, as the app names it (see [`set_network`]).
fn network() -> &'static Mutex<String> {
    static NETWORK: OnceLock<Mutex<String>> = OnceLock::new();
    NETWORK.get_or_init(Mutex::default)
}

/// Tells which network the device is on now: an identifier the app chooses (a hash of the
/// Wi-Fi network's name, "cellular", ...; empty when unknown). The transport that worked is
/// remembered per relay and per network, so a phone that moves from a network blocking UDP to
/// one that does not starts with QUIC there again. Names are never sent anywhere.
pub fn set_network(id: &str) {
    let mut n = network().lock().unwrap_or_else(PoisonError::into_inner);
    if *n != id {
        id.clone_into(&mut n);
    }
}

fn current_network() -> String {
    network()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// The transport that last worked for the relay at `quic` on the current network in this
/// process, if any.
pub fn remembered_transport(quic: SocketAddr) -> Option<Transport> {
    preferred()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&(quic, current_network()))
        .copied()
}

/// Remembers `transport` as the one that works for the relay at `quic` on the current network.
pub fn remember_transport(quic: SocketAddr, transport: Transport) {
    preferred()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert((quic, current_network()), transport);
}

/// Whether a QUIC handshake with the relay at `addr` completes within [`PROBE_TIMEOUT`]
/// (nothing is sent on the connection; it is closed at once). A client on TLS over TCP asks
/// this now and then to move back to QUIC once UDP gets through again.
pub async fn quic_answers(addr: SocketAddr, pin: &str) -> bool {
    let options = Options {
        handshake_timeout: PROBE_TIMEOUT,
        max_frame: MAX_SERVER_FRAME,
        ..Options::default()
    };
    match connect_quic(addr, pin, &options, Liveness::Interactive).await {
        Ok((conn, _endpoint, _events)) => {
            conn.close(b"probe");
            true
        }
        Err(_) => false,
    }
}

/// Progress of a blob transfer: told (bytes done, bytes in all) as it goes, from 0 to the total.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// A [`Progress`] that ignores what it is told.
pub fn no_progress(_done: u64, _total: u64) {}

/// Bytes of a blob written or read at a time (the relay's chunk: docs/RELAY_PROTOCOL.md §8).
pub const BLOB_CHUNK: usize = 64 * 1024;
/// Reset code of a blob stream whose blob was deleted or expired during the download.
const BLOB_GONE: u32 = 1;
/// Reset code of a blob stream that missed one of the relay's deadlines.
const BLOB_TIMED_OUT: u32 = 2;

/// What a group log append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupLogAppend {
    /// The entry is stored under the number asked for.
    Appended,
    /// The number was not the head + 1; nothing was written.
    Conflict {
        /// The number of the log's last entry now.
        head: u64,
    },
}

/// A connection to the relay: [`hush_net::client::Connection`] with the engine's transport
/// settings and errors.
pub struct RelayConnection {
    /// The QUIC endpoint (kept for the connection's life); `None` over TCP.
    endpoint: Option<quinn::Endpoint>,
    inner: Connection,
}

/// A connection made, with its endpoint and its stream of unsolicited frames.
type Made = (
    Connection,
    Option<quinn::Endpoint>,
    mpsc::Receiver<server_frame::Kind>,
);

impl From<ConnError> for ClientError {
    fn from(e: ConnError) -> Self {
        match e {
            ConnError::BadPin(s) => Self::BadPin(s),
            ConnError::Config(s) => Self::Config(s),
            ConnError::PinMismatch(addr) => Self::PinMismatch(addr.to_string()),
            ConnError::Unreachable(s) => Self::Unreachable(s),
            ConnError::Timeout => Self::Timeout,
            ConnError::Closed => Self::Disconnected,
            ConnError::Protocol(s) => Self::Protocol(s),
        }
    }
}

impl RelayConnection {
    /// Connects to the relay at `addr` (QUIC, and TLS over TCP on the same port number),
    /// accepting only the certificate whose SHA-256 is `pin` (hex); returns the connection and the
    /// stream of unsolicited frames (deliveries, drain, ...). See the module documentation for
    /// how the transport is chosen.
    pub async fn connect(
        addr: SocketAddr,
        pin: &str,
    ) -> Result<(Self, mpsc::Receiver<server_frame::Kind>), ClientError> {
        Self::connect_to(RelayAddrs::same(addr), pin).await
    }

    /// As [`Self::connect`], with the transports' addresses given apart.
    pub async fn connect_to(
        addrs: RelayAddrs,
        pin: &str,
    ) -> Result<(Self, mpsc::Receiver<server_frame::Kind>), ClientError> {
        Self::connect_with(addrs, pin, Liveness::Interactive).await
    }

    /// As [`Self::connect_to`], keeping the link alive as `liveness` says.
    pub async fn connect_with(
        addrs: RelayAddrs,
        pin: &str,
        liveness: Liveness,
    ) -> Result<(Self, mpsc::Receiver<server_frame::Kind>), ClientError> {
        let options = Options {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_frame: MAX_SERVER_FRAME,
            tcp_keep_alive: Some(liveness.tcp_ping()),
            ..Options::default()
        };
        let Some(tcp) = addrs.tcp else {
            let (inner, endpoint, events) =
                connect_quic(addrs.quic, pin, &options, liveness).await?;
            return Ok((Self::made(addrs.quic, inner, endpoint), events));
        };
        let first = remembered_transport(addrs.quic).unwrap_or(Transport::Quic);
        let quic = connect_quic(addrs.quic, pin, &options, liveness);
        let tcp = connect_tcp(tcp, pin, &options);
        let won = match first {
            Transport::Quic => race(quic, tcp).await,
            Transport::Tcp => race(tcp, quic).await,
        };
        let (inner, endpoint, events) = won?;
        Ok((Self::made(addrs.quic, inner, endpoint), events))
    }

    fn made(quic: SocketAddr, inner: Connection, endpoint: Option<quinn::Endpoint>) -> Self {
        let transport = inner.transport();
        remember_transport(quic, transport);
        tracing::info!(transport = %transport, "connected to the relay");
        Self { endpoint, inner }
    }

    /// Moves a QUIC connection to a fresh UDP socket (connection migration: the relay follows
    /// the new address after validating it, and nothing in flight is lost). Called when the
    /// device changed networks, whose old address may be gone. Returns the new local address;
    /// `None` over TCP, which cannot migrate (its caller dials again instead).
    pub fn rebind(&self) -> Result<Option<SocketAddr>, ClientError> {
        let (Some(endpoint), Some(quic)) = (&self.endpoint, self.inner.quic()) else {
            return Ok(None);
        };
        let socket = std::net::UdpSocket::bind(client::any_local(quic.remote_address()))
            .map_err(ClientError::unreachable)?;
        endpoint.rebind(socket).map_err(ClientError::unreachable)?;
        let local = endpoint.local_addr().map_err(ClientError::unreachable)?;
        tracing::info!("connection moved to a new local address");
        Ok(Some(local))
    }

    /// This side's address of a QUIC connection (`None` over TCP).
    pub fn local_quic_addr(&self) -> Option<SocketAddr> {
        self.endpoint.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// Acknowledges deliveries without waiting for the answer: the frame is queued on the
    /// control stream before this returns, so a later request's answer proves the relay
    /// processed it (requests are processed in order).
    pub fn ack_now(&self, seqs: Vec<u64>) -> Result<(), ClientError> {
        self.inner
            .request_with(client_frame::Kind::Ack(api::Ack { seqs }), Box::new(|_| {}))
            .map(|_| ())
            .map_err(ClientError::from)
    }

    /// The QUIC connection; `None` over TCP.
    pub fn quic(&self) -> Option<&quinn::Connection> {
        self.inner.quic()
    }

    /// What carries this connection.
    pub fn transport(&self) -> Transport {
        self.inner.transport()
    }

    /// Sends a request and waits for its answer; an `Error` frame becomes
    /// [`ClientError::Refused`].
    pub async fn request(
        &self,
        kind: client_frame::Kind,
    ) -> Result<server_frame::Kind, ClientError> {
        match self.inner.request(kind, REQUEST_TIMEOUT).await {
            Ok(server_frame::Kind::Error(e)) => Err(ClientError::Refused(Refusal::from(e))),
            Ok(other) => Ok(other),
            Err(ConnError::Closed) => {
                self.close();
                Err(ClientError::Disconnected)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Appends `entry` as number `seq` of the group log in `slot` (docs/RELAY_PROTOCOL.md §15):
    /// [`GroupLogAppend::Conflict`] with the log's head if `seq` is not the head + 1.
    pub async fn group_log_append(
        &self,
        slot: [u8; 32],
        write_token: &[u8; 32],
        seq: u64,
        entry: Vec<u8>,
    ) -> Result<GroupLogAppend, ClientError> {
        let kind = client_frame::Kind::GroupLogAppend(api::GroupLogAppend {
            slot: slot.to_vec(),
            write_token: write_token.to_vec(),
            seq,
            entry,
        });
        match self.request(kind).await {
            Ok(server_frame::Kind::GroupLogAppended(a)) if a.seq == seq => {
                Ok(GroupLogAppend::Appended)
            }
            Ok(_) => Err(ClientError::Protocol(
                "unexpected answer to a group log append",
            )),
            Err(ClientError::Refused(r)) if r.code == ErrorCode::LogConflict => {
                Ok(GroupLogAppend::Conflict { head: r.log_head })
            }
            Err(e) => Err(e),
        }
    }

    /// The head of the group log in `slot` and its entries from number `from` on, as many as
    /// the relay gives in one page (ascending, without gaps; checked here).
    pub async fn group_log_read(
        &self,
        slot: [u8; 32],
        from: u64,
    ) -> Result<(u64, Vec<(u64, Vec<u8>)>), ClientError> {
        let from = from.max(1);
        let kind = client_frame::Kind::GroupLogRead(api::GroupLogRead {
            slot: slot.to_vec(),
            from_seq: from,
            max_entries: 0,
        });
        let server_frame::Kind::GroupLogEntries(page) = self.request(kind).await? else {
            return Err(ClientError::Protocol(
                "unexpected answer to a group log read",
            ));
        };
        let mut expected = from;
        let mut entries = Vec::with_capacity(page.entries.len());
        for e in page.entries {
            if e.seq != expected || e.seq > page.head {
                return Err(ClientError::Protocol("a group log page out of order"));
            }
            expected = expected.saturating_add(1);
            entries.push((e.seq, e.entry));
        }
        Ok((page.head, entries))
    }

    /// Authenticates with a signature made by `sign(exporter, challenge)`.
    pub async fn authenticate(
        &self,
        account: [u8; 32],
        device_id: u32,
        sign: impl FnOnce(&[u8; 32], &[u8; 32]) -> [u8; 64],
    ) -> Result<(), ClientError> {
        match self
            .inner
            .authenticate(account, device_id, REQUEST_TIMEOUT, sign)
            .await?
        {
            server_frame::Kind::Ok(_) => Ok(()),
            server_frame::Kind::Error(e) => Err(ClientError::Refused(Refusal::from(e))),
            _ => Err(ClientError::Protocol("unexpected answer to authentication")),
        }
    }

    /// Uploads a blob (already encrypted by the caller) in chunks of [`BLOB_CHUNK`] bytes,
    /// telling `progress` the bytes handed to the connection after each; returns (id,
    /// capability).
    pub async fn upload_blob(
        &self,
        data: &[u8],
        progress: Progress<'_>,
    ) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        self.upload_named_blob(data, None, progress).await
    }

    /// As [`Self::upload_blob`], under a chosen id and capability when `name` is given (a
    /// named upload: it replaces a blob of that id and capability; RELAY_PROTOCOL.md §16).
    pub async fn upload_named_blob(
        &self,
        data: &[u8],
        name: Option<(&[u8], &[u8])>,
        progress: Progress<'_>,
    ) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        match self.blob_channel().await? {
            BlobChannel::Quic(send, recv) => upload_on(send, recv, data, name, progress).await,
            BlobChannel::Tcp(tls) => {
                let (recv, send) = tokio::io::split(*tls);
                upload_on(send, recv, data, name, progress).await
            }
        }
    }

    /// Downloads a blob by id and capability, at most `max` bytes, in chunks, telling `progress`
    /// the bytes received after each. A blob the relay does not have (expired, deleted, or a
    /// wrong capability: the relay answers these alike), or that goes while it is being sent
    /// over QUIC, is [`ClientError::BlobGone`] (over TCP, a blob that goes mid-transfer cuts the
    /// connection short: [`ClientError::Disconnected`]).
    pub async fn download_blob(
        &self,
        id: &[u8],
        capability: &[u8],
        max: usize,
        progress: Progress<'_>,
    ) -> Result<Vec<u8>, ClientError> {
        match self.blob_channel().await? {
            BlobChannel::Quic(send, recv) => {
                download_on(send, recv, id, capability, max, progress).await
            }
            BlobChannel::Tcp(tls) => {
                let (recv, send) = tokio::io::split(*tls);
                download_on(send, recv, id, capability, max, progress).await
            }
        }
    }

    /// A fresh blob stream (QUIC) or blob connection (TLS over TCP).
    async fn blob_channel(&self) -> Result<BlobChannel, ClientError> {
        if let Some(opened) = self.inner.open_tcp_blob().await {
            return Ok(BlobChannel::Tcp(Box::new(opened?)));
        }
        let quic = self
            .inner
            .quic()
            .ok_or(ClientError::Protocol("no transport for blobs"))?;
        let (send, recv) = quic.open_bi().await.map_err(ClientError::unreachable)?;
        Ok(BlobChannel::Quic(send, recv))
    }

    /// Whether the connection is still usable (not closed by either side, its stream alive).
    pub fn is_open(&self) -> bool {
        self.inner.is_open()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.inner.close(b"bye");
    }

    /// Waits until the connection is closed (by either side).
    pub async fn closed(&self) {
        self.inner.closed().await;
    }

    /// Whether the relay refused with `code`.
    pub fn is_code(e: &ClientError, code: ErrorCode) -> bool {
        matches!(e, ClientError::Refused(r) if r.code == code)
    }
}

impl Drop for RelayConnection {
    fn drop(&mut self) {
        self.inner.close(b"bye");
        let ep = self.endpoint.take();
        drop(ep);
    }
}

/// Where a blob transfer runs.
enum BlobChannel {
    Quic(quinn::SendStream, quinn::RecvStream),
    Tcp(Box<client::TcpBlobStream>),
}

/// The reset code of a QUIC blob stream behind a read error, if that is what it is.
fn reset_code(e: &std::io::Error) -> Option<u64> {
    match e.get_ref()?.downcast_ref::<quinn::ReadError>()? {
        quinn::ReadError::Reset(code) => Some(code.into_inner()),
        _ => None,
    }
}

/// Uploads `data` on a blob stream or connection: the request frame, the bytes, the end of the
/// client's side, then the relay's answer.
async fn upload_on<W, R>(
    mut send: W,
    mut recv: R,
    data: &[u8],
    name: Option<(&[u8], &[u8])>,
    progress: Progress<'_>,
) -> Result<(Vec<u8>, Vec<u8>), ClientError>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let (id, capability) = name.unwrap_or((&[], &[]));
    let total = data.len() as u64;
    let req = BlobRequest {
        kind: Some(blob_request::Kind::Upload(api::BlobUpload {
            size: total,
            id: id.to_vec(),
            capability: capability.to_vec(),
        })),
    };
    frame::write(&mut send, &req)
        .await
        .map_err(|_| ClientError::Disconnected)?;
    progress(0, total);
    let mut done = 0u64;
    for chunk in data.chunks(BLOB_CHUNK) {
        // The relay may refuse before reading everything: the answer tells.
        match tokio::time::timeout(REQUEST_TIMEOUT, send.write_all(chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => return Err(ClientError::Timeout),
        }
        done += chunk.len() as u64;
        progress(done, total);
    }
    // Finishes a QUIC stream; over TCP, `close_notify` ends the client's side.
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, send.shutdown()).await;
    let r: BlobResponse =
        tokio::time::timeout(REQUEST_TIMEOUT * 4, frame::read(&mut recv, 1 << 16))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|_| ClientError::Disconnected)?;
    match r.kind {
        Some(blob_response::Kind::Uploaded(u)) => Ok((u.id, u.capability)),
        Some(blob_response::Kind::Error(e)) => Err(ClientError::Refused(Refusal::from(e))),
        _ => Err(ClientError::Protocol("unexpected answer to a blob upload")),
    }
}

/// Downloads a blob on a blob stream or connection.
async fn download_on<W, R>(
    mut send: W,
    mut recv: R,
    id: &[u8],
    capability: &[u8],
    max: usize,
    progress: Progress<'_>,
) -> Result<Vec<u8>, ClientError>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let req = BlobRequest {
        kind: Some(blob_request::Kind::Download(api::BlobDownload {
            id: id.to_vec(),
            capability: capability.to_vec(),
        })),
    };
    frame::write(&mut send, &req)
        .await
        .map_err(|_| ClientError::Disconnected)?;
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, send.shutdown()).await;
    let r: BlobResponse = tokio::time::timeout(REQUEST_TIMEOUT, frame::read(&mut recv, 1 << 16))
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|_| ClientError::Disconnected)?;
    let total = match r.kind {
        Some(blob_response::Kind::Found(f)) => f.size,
        Some(blob_response::Kind::Error(e)) if e.code() == ErrorCode::BlobNotFound => {
            return Err(ClientError::BlobGone);
        }
        Some(blob_response::Kind::Error(e)) => {
            return Err(ClientError::Refused(Refusal::from(e)));
        }
        _ => {
            return Err(ClientError::Protocol(
                "unexpected answer to a blob download",
            ));
        }
    };
    let size = usize::try_from(total).unwrap_or(usize::MAX);
    if size > max {
        return Err(ClientError::Protocol("blob larger than expected"));
    }
    progress(0, total);
    let mut data = Vec::with_capacity(size);
    let mut buf = vec![0u8; BLOB_CHUNK];
    while data.len() < size {
        let want = (size - data.len()).min(BLOB_CHUNK);
        let into = buf.get_mut(..want).unwrap_or_default();
        let n = match tokio::time::timeout(REQUEST_TIMEOUT, recv.read(into)).await {
            Err(_) => return Err(ClientError::Timeout),
            Ok(Ok(0)) => return Err(ClientError::Protocol("blob shorter than announced")),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                return Err(match reset_code(&e) {
                    Some(code) if code == u64::from(BLOB_GONE) => ClientError::BlobGone,
                    Some(code) if code == u64::from(BLOB_TIMED_OUT) => ClientError::Timeout,
                    _ => ClientError::Disconnected,
                });
            }
        };
        data.extend_from_slice(into.get(..n).unwrap_or_default());
        progress(data.len() as u64, total);
    }
    Ok(data)
}

/// A QUIC connection to `addr`.
async fn connect_quic(
    addr: SocketAddr,
    pin: &str,
    options: &Options,
    liveness: Liveness,
) -> Result<Made, ClientError> {
    let cc = client::client_config(pin, liveness.keep_alive(), Some(liveness.idle_timeout()))?;
    let endpoint = client::endpoint(client::any_local(addr), None, cc)?;
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let (inner, _reader) =
        Connection::connect(&endpoint, addr, options, Unsolicited::Queue(ev_tx)).await?;
    Ok((inner, Some(endpoint), ev_rx))
}

/// A TLS-over-TCP connection to `addr`.
async fn connect_tcp(addr: SocketAddr, pin: &str, options: &Options) -> Result<Made, ClientError> {
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let (inner, _reader) =
        Connection::connect_tcp(addr, pin, options, Unsolicited::Queue(ev_tx)).await?;
    Ok((inner, None, ev_rx))
}

/// Happy eyeballs: `first` at once, `second` after [`FALLBACK_DELAY`] or as soon as `first`
/// fails; the first connection made wins (the other attempt is dropped, closing what it made).
/// When both fail: a pin mismatch if either saw one, otherwise `first`'s error.
async fn race(
    first: impl Future<Output = Result<Made, ClientError>>,
    second: impl Future<Output = Result<Made, ClientError>>,
) -> Result<Made, ClientError> {
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
    let first = async move {
        let r = first.await;
        if r.is_err() {
            let _ = failed_tx.send(());
        }
        r
    };
    let second = async move {
        tokio::select! {
            () = tokio::time::sleep(FALLBACK_DELAY) => {}
            _ = failed_rx => {}
        }
        second.await
    };
    tokio::pin!(first, second);
    let mut first_err: Option<ClientError> = None;
    let mut second_err: Option<ClientError> = None;
    loop {
        tokio::select! {
            r = &mut first, if first_err.is_none() => match r {
                Ok(made) => return Ok(made),
                Err(e) => first_err = Some(e),
            },
            r = &mut second, if second_err.is_none() => match r {
                Ok(made) => return Ok(made),
                Err(e) => second_err = Some(e),
            },
        }
        if first_err.is_some()
            && second_err.is_some()
            && let (Some(a), Some(b)) = (first_err.take(), second_err.take())
        {
            let pin = matches!(b, ClientError::PinMismatch(_))
                && !matches!(a, ClientError::PinMismatch(_));
            return Err(if pin { b } else { a });
        }
    }
}
