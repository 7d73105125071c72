//! The QUIC server: endpoint set-up, the accept loop (connection cap, address validation under
//! load), the TTL sweeper and graceful drain. Each connection is served by [`crate::conn`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::limits::{self, close};
use crate::ops::RefusalReason;
use crate::router::Live;
pub use crate::shared::{Background, Relay, now_ms};
use crate::store::StoreError;

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
    // Address validation is by Retry only (see `run`): no NEW_TOKEN frames. A NEW_TOKEN is only
    // useful with a log of spent tokens (to refuse replays), which this relay does not keep; the
    // `sent` default depends on a quinn feature, so it is set here.
    let mut tokens = quinn::ValidationTokenConfig::default();
    tokens.sent(0);
    server.validation_token_config(tokens);
    Ok(server)
}

/// Connection IDs of eight random bytes.
///
/// quinn's default generator puts only 24 random bits in a connection ID (the rest is a keyed
/// hash), and it does not check the source connection ID of a Retry against the IDs in use. With
/// a few thousand connections (each holding several IDs) a Retry then now and again names an ID
/// that an established connection owns, the client's next Initial is routed to that connection
/// and dropped, and the handshake times out: about one connection in a thousand when every
/// connection is retried. With 64 random bits a clash is out of reach.
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut id = [0u8; limits::CONNECTION_ID_LEN];
        rand::RngExt::fill(&mut rand::rng(), &mut id[..]);
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        limits::CONNECTION_ID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
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
    endpoint_cfg.cid_generator(|| Box::new(RandomCids));
    quinn::Endpoint::new(
        endpoint_cfg,
        Some(server),
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )
}

/// The TLS-over-TCP side of the relay (docs/RELAY_PROTOCOL.md §17): its listener and the TLS
/// configuration it accepts with (ALPN [`hush_net::TCP_ALPN`]).
pub struct TcpSide {
    /// The bound listener.
    pub listener: tokio::net::TcpListener,
    /// TLS 1.3 with the relay's certificate.
    pub acceptor: tokio_rustls::TlsAcceptor,
}

/// Binds the TCP listener on `addr` (dual-stack on `[::]`, as the QUIC socket) for `tls`.
pub fn bind_tcp(addr: SocketAddr, tls: rustls::ServerConfig) -> std::io::Result<TcpSide> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    // A restarted relay binds again while the previous one's connections linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(socket.into())?;
    Ok(TcpSide {
        listener,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
    })
}

/// First pause of TCP accepts after one failed.
const TCP_ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(20);
/// Longest pause of TCP accepts while they keep failing.
const TCP_ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits out the TCP accept pause, if there is one (forever otherwise).
async fn paused(pause: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match pause {
        Some(p) => p.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Accepts the next TCP connection; never resolves without a listener.
async fn accept_tcp(tcp: Option<&TcpSide>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match tcp {
        Some(t) => t.listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves `endpoint` (and `tcp`, if given) until `shutdown` is cancelled, then drains: stops
/// accepting, tells every client to reconnect, lets connections finish what they are doing,
/// flushes, closes.
pub async fn run(
    endpoint: quinn::Endpoint,
    tcp: Option<TcpSide>,
    relay: Arc<Relay>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let sweeper = tracker.spawn(sweep_loop(Arc::clone(&relay), shutdown.clone()));
    let mut tcp = tcp;
    // After a failed TCP accept (out of file descriptors, say), TCP pauses before the next one,
    // doubling while they keep failing, so the loop neither spins nor floods the log; QUIC goes
    // on meanwhile.
    let mut tcp_pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut tcp_backoff = TCP_ACCEPT_BACKOFF_MIN;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = paused(&mut tcp_pause), if tcp_pause.is_some() => {
                tcp_pause = None;
                continue;
            }
            accepted = accept_tcp(tcp.as_ref()), if tcp_pause.is_none() => {
                let (stream, peer) = match accepted {
                    Ok(a) => {
                        tcp_backoff = TCP_ACCEPT_BACKOFF_MIN;
                        a
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, pause_ms = tcp_backoff.as_millis() as u64, "TCP accept failed");
                        tcp_pause = Some(Box::pin(tokio::time::sleep(tcp_backoff)));
                        tcp_backoff = (tcp_backoff * 2).min(TCP_ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                };
                let Some(acceptor) = tcp.as_ref().map(|t| t.acceptor.clone()) else { continue };
                let open = usize::try_from(relay.metrics.connections_open.get()).unwrap_or(0);
                if open >= relay.cfg.max_connections as usize {
                    relay.metrics.connections_refused.inc();
                    relay.metrics.refusals.inc(RefusalReason::ConnectionCap);
                    drop(stream);
                    continue;
                }
                relay.metrics.connections_open.inc();
                let slot = relay.admission.connection(peer.ip());
                let r = Arc::clone(&relay);
                let stop = shutdown.clone();
                tracker.spawn(async move {
                    match slot {
                        Some(slot) => {
                            serve_tcp(Arc::clone(&r), acceptor, stream, peer, stop).await;
                            drop(slot);
                        }
                        None => {
                            // No close code over TCP: the connection just ends.
                            r.metrics.connections_refused.inc();
                            r.metrics.refusals.inc(RefusalReason::TooManyConnections);
                            tracing::debug!("connection refused: its address block holds its cap");
                            drop(stream);
                        }
                    }
                    r.metrics.connections_open.dec();
                });
            }
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let open = usize::try_from(relay.metrics.connections_open.get()).unwrap_or(0);
                if open >= relay.cfg.max_connections as usize {
                    relay.metrics.connections_refused.inc();
                    relay.metrics.refusals.inc(RefusalReason::ConnectionCap);
                    incoming.refuse();
                    continue;
                }
                if open >= relay.cfg.retry_under_load_connections as usize && !incoming.remote_address_validated() {
                    // Under load, make the client prove its address before any state is kept.
                    relay.metrics.connections_retried.inc();
                    let _ = incoming.retry();
                    continue;
                }
                // Counted as open from here, handshake included: a burst of handshakes must not
                // get past the cap before any of them completes.
                relay.metrics.connections_open.inc();
                // Counted against its address block until its task ends.
                let slot = relay.admission.connection(incoming.remote_address().ip());
                let r = Arc::clone(&relay);
                let stop = shutdown.clone();
                tracker.spawn(async move {
                    match slot {
                        Some(slot) => {
                            match incoming.await {
                                Ok(conn) => crate::conn::serve(Arc::clone(&r), conn, stop).await,
                                Err(e) => tracing::debug!(error = %e, "handshake failed"),
                            }
                            drop(slot);
                        }
                        None => refuse_block(&r, incoming).await,
                    }
                    r.metrics.connections_open.dec();
                });
            }
        }
    }
    // Drain.
    relay.draining.store(true, Ordering::Relaxed);
    endpoint.set_server_config(None);
    // No new TCP connections either.
    tcp = None;
    drop(tcp);
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

/// The TLS handshake of a TCP connection (within the authentication timeout, ALPN
/// [`hush_net::TCP_ALPN`] required), then the connection.
async fn serve_tcp(
    relay: Arc<Relay>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let handshake = tokio::time::timeout(
        Duration::from_millis(limits::AUTH_TIMEOUT_MS),
        acceptor.accept(stream),
    )
    .await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    match tls.get_ref().1.alpn_protocol() {
        Some(hush_net::TCP_ALPN) => crate::conn::serve_tcp(relay, tls, peer.ip(), shutdown).await,
        Some(hush_net::TCP_BLOB_ALPN) => blob_connection(relay, tls, shutdown).await,
        _ => tracing::debug!("TLS connection without the protocol's ALPN; closed"),
    }
}

/// A blob connection over TCP: the blob key of its control connection, then one blob transfer
/// for whoever that connection is (an unknown key is refused as `UNAUTHENTICATED` by the
/// transfer itself).
async fn blob_connection(
    relay: Arc<Relay>,
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    shutdown: CancellationToken,
) {
    use tokio::io::AsyncReadExt;
    relay.metrics.connections_total.inc();
    relay
        .metrics
        .connections_by_transport
        .inc(crate::ops::Transport::Tcp);
    let (mut rd, mut wr) = tokio::io::split(tls);
    let mut key = [0u8; hush_net::TCP_BLOB_KEY_LEN];
    let deadline = Duration::from_millis(relay.cfg.blob_request_timeout_ms);
    match tokio::time::timeout(deadline, rd.read_exact(&mut key)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) | Err(_) => {
            tracing::debug!("blob connection without its key; closed");
            return;
        }
    }
    let who = relay.blob_keys.caller(&key);
    let reset = Arc::new(std::sync::atomic::AtomicBool::new(false));
    crate::blob::stream(
        Arc::clone(&relay),
        who,
        crate::blob::TcpBlobSend::new(&mut wr, Arc::clone(&reset)),
        crate::blob::TcpBlobRecv(&mut rd),
    )
    .await;
    if reset.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    // The transfer ended cleanly: what the client still sends (its `close_notify` after a
    // download request, the rest of an upload that was refused) is read and dropped until it
    // ends its side, within a chunk deadline, before the socket is closed. A TCP socket closed
    // with data unread resets the connection, and the reset throws away the end of the answer
    // still on its way to the client. A relay that drains does not wait for it.
    let drain = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = rd.read(&mut buf).await
            && n > 0
        {}
    };
    let deadline = Duration::from_millis(relay.cfg.blob_chunk_timeout_ms);
    tokio::select! {
        _ = tokio::time::timeout(deadline, drain) => {}
        () = shutdown.cancelled() => {}
    }
}

/// A connection from an address block that holds its cap: completes the handshake only to
/// close with [`close::TOO_MANY_CONNECTIONS`], so the client learns why (a refusal during the
/// handshake carries no application code).
async fn refuse_block(relay: &Relay, incoming: quinn::Incoming) {
    relay.metrics.connections_refused.inc();
    relay
        .metrics
        .refusals
        .inc(RefusalReason::TooManyConnections);
    tracing::debug!("connection refused: its address block holds its cap");
    if let Ok(conn) = incoming.await {
        conn.close(
            close::TOO_MANY_CONNECTIONS.into(),
            b"too many connections from this address block",
        );
    }
}

/// One pass of the expiry sweep at wall time `now` (ms): deletes expired envelopes and blobs
/// (and uploads left incomplete for an hour) and updates the metrics; returns how many
/// envelopes and blobs went.
pub(crate) fn sweep_once(relay: &Relay, now: u64) -> Result<(usize, usize), StoreError> {
    let mail = relay
        .store
        .sweep(now.saturating_sub(relay.cfg.mailbox_ttl_ms))?;
    let blobs = relay.blobs.sweep(now, now.saturating_sub(3_600_000))?;
    relay.metrics.envelopes_expired.inc_by(mail as u64);
    relay
        .metrics
        .envelopes_stored
        .inc_by(-i64::try_from(mail).unwrap_or(0));
    relay.update_mailbox_gauge();
    if let Ok(total) = relay.blobs.total_bytes() {
        relay
            .metrics
            .blob_bytes_stored
            .set(i64::try_from(total).unwrap_or(i64::MAX));
    }
    Ok((mail, blobs))
}

async fn sweep_loop(relay: Arc<Relay>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(relay.cfg.sweep_interval_ms.max(1)));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let r = Arc::clone(&relay);
        let done = tokio::task::spawn_blocking(move || sweep_once(&r, r.clock.wall_ms())).await;
        match done {
            Ok(Ok((mail, blobs))) => {
                if mail > 0 || blobs > 0 {
                    tracing::info!(envelopes = mail, blobs, "swept expired items");
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "sweep failed"),
            Err(e) => tracing::error!(error = %e, "sweep task failed"),
        }
    }
}
