//! The async task of one connection: the only place a connection touches its socket. One task
//! per connection: it reads the control stream, writes the coalesced output, takes the
//! connection's queue (router events, writer answers), accepts blob streams (each transfer gets a
//! task of its own while it runs, since it streams megabytes), and runs the timers — all in one
//! `select!` around [`ConnState`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::ConnState;
use crate::limits::{self, close};
use crate::ops::{Timeout, Transport};
use crate::shared::Relay;

/// Largest chunk taken from the control stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// Read buffer of a TLS connection over TCP: one TLS record's plaintext.
const TCP_READ_BUFFER: usize = 16 * 1024;

/// Output buffers above this are released once written.
const KEEP_OUTPUT: usize = 64 * 1024;

/// The reading side of a control stream.
enum Inbound<'a> {
    /// A QUIC control stream; the chunk last read is kept until handed in.
    Quic(&'a mut quinn::RecvStream, Option<quinn::Chunk>),
    /// The read half of a TLS connection over TCP, with its buffer.
    Tcp(&'a mut ReadHalf<TlsStream<TcpStream>>, Vec<u8>),
}

impl Inbound<'_> {
    /// Reads what has arrived: `Ok(None)` when the peer finished its side.
    async fn read(&mut self) -> std::io::Result<Option<&[u8]>> {
        match self {
            Inbound::Quic(recv, last) => match recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(c)) => {
                    let c = last.insert(c);
                    Ok(Some(c.bytes.as_ref()))
                }
                Ok(None) => Ok(None),
                Err(e) => Err(std::io::Error::other(e)),
            },
            Inbound::Tcp(rd, buf) => {
                let n = rd.read(buf).await?;
                if n == 0 { Ok(None) } else { Ok(buf.get(..n)) }
            }
        }
    }
}

/// The writing side of a control stream.
enum Outbound<'a> {
    Quic(&'a mut quinn::SendStream),
    Tcp(&'a mut WriteHalf<TlsStream<TcpStream>>),
}

impl Outbound<'_> {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Outbound::Quic(send) => send.write(bytes).await.map_err(std::io::Error::other),
            Outbound::Tcp(wr) => {
                let n = wr.write(bytes).await?;
                // TLS records are sealed as they are written; flush them to the socket.
                wr.flush().await?;
                Ok(n)
            }
        }
    }
}

/// Serves one established QUIC connection until it ends.
pub(crate) async fn serve(relay: Arc<Relay>, quic: quinn::Connection, shutdown: CancellationToken) {
    relay.metrics.connections_total.inc();
    relay.metrics.connections_by_transport.inc(Transport::Quic);
    let id = relay
        .next_conn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let remote: IpAddr = quic.remote_address().ip();
    tracing::debug!(conn = id, transport = "quic", "connection open");
    // The first bidirectional stream is the control stream (a client's stream reaches the relay
    // with its first bytes). A drain does not wait for one.
    let accepted = tokio::select! {
        a = tokio::time::timeout(
            Duration::from_millis(limits::AUTH_TIMEOUT_MS),
            quic.accept_bi(),
        ) => a.ok(),
        () = shutdown.cancelled() => {
            quic.close(close::DRAINING.into(), b"relay draining");
            return;
        }
    };
    let Some(Ok((mut send, mut recv))) = accepted else {
        quic.close(close::PROTOCOL.into(), b"no control stream");
        return;
    };
    let mut exporter = [0u8; limits::EXPORTER_LEN];
    if quic
        .export_keying_material(&mut exporter, hush_proto::labels::RELAY_AUTH_EXPORTER, b"")
        .is_err()
    {
        quic.close(close::PROTOCOL.into(), b"no TLS exporter");
        return;
    }
    let close_reason = drive(
        &relay,
        Link {
            id,
            remote,
            exporter,
            quic: Some(&quic),
            idle: None,
            blob_key: None,
        },
        Inbound::Quic(&mut recv, None),
        Outbound::Quic(&mut send),
        &shutdown,
    )
    .await;
    let _ = send.finish();
    // Give the peer a moment to take the last frames (a dead peer never will).
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    quic.close(close_reason.0.into(), close_reason.1);
    tracing::debug!(conn = id, "connection closed");
}

/// Serves one established TLS connection over TCP (docs/RELAY_PROTOCOL.md §17) until it ends:
/// the connection is the control stream. TCP carries no close code: the relay ends the stream
/// (TLS `close_notify`, then FIN) once the frames it owes are written.
pub(crate) async fn serve_tcp(
    relay: Arc<Relay>,
    tls: TlsStream<TcpStream>,
    remote: IpAddr,
    shutdown: CancellationToken,
) {
    relay.metrics.connections_total.inc();
    relay.metrics.connections_by_transport.inc(Transport::Tcp);
    let id = relay
        .next_conn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(conn = id, transport = "tcp", "connection open");
    let mut exporter = [0u8; limits::EXPORTER_LEN];
    if tls
        .get_ref()
        .1
        .export_keying_material(
            &mut exporter,
            hush_proto::labels::RELAY_AUTH_EXPORTER,
            Some(b""),
        )
        .is_err()
    {
        tracing::debug!(conn = id, "no TLS exporter; closing");
        return;
    }
    let mut blob_key = [0u8; hush_net::TCP_BLOB_KEY_LEN];
    if tls
        .get_ref()
        .1
        .export_keying_material(&mut blob_key, hush_net::TCP_BLOB_KEY_LABEL, Some(b""))
        .is_err()
    {
        tracing::debug!(conn = id, "no TLS exporter; closing");
        return;
    }
    let (mut rd, mut wr) = tokio::io::split(tls);
    let idle = Duration::from_millis(relay.cfg.idle_timeout_ms.max(1));
    let close_reason = drive(
        &relay,
        Link {
            id,
            remote,
            exporter,
            quic: None,
            idle: Some(idle),
            blob_key: Some(blob_key),
        },
        Inbound::Tcp(&mut rd, vec![0u8; TCP_READ_BUFFER]),
        Outbound::Tcp(&mut wr),
        &shutdown,
    )
    .await;
    // Give the peer a moment to take the last frames (a dead peer never will).
    let _ = tokio::time::timeout(Duration::from_secs(2), wr.shutdown()).await;
    tracing::debug!(conn = id, code = close_reason.0, "connection closed");
}

/// What the loop needs to know of its connection.
struct Link<'a> {
    id: u64,
    remote: IpAddr,
    exporter: [u8; limits::EXPORTER_LEN],
    /// The QUIC connection, whose further streams are blob streams.
    quic: Option<&'a quinn::Connection>,
    /// Close after this long without a byte from the client (TLS over TCP has no transport
    /// idle timeout of its own).
    idle: Option<Duration>,
    /// Over TCP: the key its blob connections present.
    blob_key: Option<[u8; hush_net::TCP_BLOB_KEY_LEN]>,
}

/// Accepts the next blob stream of a QUIC connection; never resolves without one.
async fn accept_blob(
    quic: Option<&quinn::Connection>,
) -> Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError> {
    match quic {
        Some(q) => q.accept_bi().await,
        None => std::future::pending().await,
    }
}

/// Runs [`ConnState`] over a control stream until the connection is done; returns the close code
/// and reason.
async fn drive(
    relay: &Arc<Relay>,
    link: Link<'_>,
    mut inbound: Inbound<'_>,
    mut outbound: Outbound<'_>,
    shutdown: &CancellationToken,
) -> (u32, &'static [u8]) {
    let Link {
        id,
        remote,
        exporter,
        quic,
        idle,
        blob_key,
    } = link;
    let relay = Arc::clone(relay);
    let (mut st, mut rx) = ConnState::new(id, remote, exporter, relay.now());
    // Who this connection's blob connections (over TCP) act for, kept current below.
    let (who_tx, who_rx) = tokio::sync::watch::channel(None);
    if let Some(key) = blob_key {
        relay.blob_keys.insert(key, who_rx);
    }
    let max_frame = relay.cfg.max_frame_bytes;
    // What is being written: taken whole from the state, written from `written` on.
    let mut wbuf: Vec<u8> = Vec::new();
    let mut written = 0usize;
    // When the write of `wbuf` last made progress (a client that stops reading is dropped).
    let mut write_progress = relay.clock.instant();
    // When the client was last heard from (for the idle timeout).
    let mut last_heard = relay.clock.instant();
    let mut stream_open = true;
    let close_reason = loop {
        if blob_key.is_some() {
            let who = st.blob_caller(&relay);
            who_tx.send_if_modified(|w| {
                let changed = *w != who;
                *w = who;
                changed
            });
        }
        for op in st.take_ops() {
            // Fails only once the relay is stopping; the connection then ends by its deadline.
            let _ = relay.writer.submit_on(id, op);
        }
        if written >= wbuf.len() {
            wbuf.clear();
            written = 0;
            if wbuf.capacity() > KEEP_OUTPUT {
                wbuf = Vec::new();
            }
            if st.has_output() {
                st.take_output(&mut wbuf);
                relay.tap_output(&wbuf);
                write_progress = relay.clock.instant();
            }
        }
        if wbuf.is_empty()
            && let Some(reason) = st.finished()
        {
            break reason;
        }
        let write_deadline = (!wbuf.is_empty())
            .then(|| write_progress + Duration::from_millis(limits::WRITE_TIMEOUT_MS));
        if !st.wants_read(max_frame) {
            // Reading is held back: what the client sent waits unread, so it is not idle.
            last_heard = relay.clock.instant();
        }
        let idle_deadline = idle.map(|d| last_heard + d);
        let deadline = [st.poll_timeout(), write_deadline, idle_deadline]
            .into_iter()
            .flatten()
            .min();
        let pending = wbuf.get(written..).unwrap_or_default();
        tokio::select! {
            biased;
            () = shutdown.cancelled(), if !st.draining => st.drain(),
            msg = rx.recv() => {
                let Some(msg) = msg else { break (close::NORMAL, b"") };
                let now = relay.now();
                st.handle_message(&relay, msg, now);
                // Everything queued now, handled before the next write: one write per wake-up.
                while let Ok(more) = rx.try_recv() {
                    st.handle_message(&relay, more, now);
                }
            }
            w = outbound.write(pending), if !pending.is_empty() => match w {
                Ok(n) => {
                    written += n;
                    write_progress = relay.clock.instant();
                }
                Err(_) => break (close::NORMAL, b""),
            },
            chunk = inbound.read(), if stream_open && st.wants_read(max_frame) => {
                match chunk {
                    Ok(Some(c)) => {
                        last_heard = relay.clock.instant();
                        st.receive(&relay, c, relay.now());
                    }
                    Ok(None) => {
                        stream_open = false;
                        st.peer_finished(&relay);
                    }
                    Err(_) => break (close::NORMAL, b""),
                }
            }
            bi = accept_blob(quic) => match bi {
                Ok((s, r)) => {
                    let who = st.blob_caller(&relay);
                    tokio::spawn(crate::blob::stream(Arc::clone(&relay), who, s, r));
                }
                Err(_) => break (close::NORMAL, b""),
            },
            () = sleep_until(&relay, deadline), if deadline.is_some() => {
                let now = relay.now();
                if write_deadline.is_some_and(|d| now.at >= d) {
                    relay.metrics.timeouts.inc(Timeout::Write);
                    tracing::info!("connection closed: the client stopped taking what was written");
                    break (close::PROTOCOL, b"write timed out");
                }
                if idle_deadline.is_some_and(|d| now.at >= d) {
                    relay.metrics.timeouts.inc(Timeout::Idle);
                    tracing::debug!(conn = id, "connection closed: idle");
                    break (close::NORMAL, b"idle");
                }
                st.handle_timeout(&relay, now);
            }
        }
    };
    if let Some(key) = blob_key {
        relay.blob_keys.remove(&key);
    }
    if let Some(d) = st.device() {
        relay.router.unregister(&d, id);
    }
    close_reason
}

/// Sleeps until `deadline` on the relay's clock (as the time left from now, so that a clock a
/// test moved ahead of the system's is slept on correctly), or forever without one.
async fn sleep_until(relay: &Relay, deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep(d.saturating_duration_since(relay.clock.instant())).await,
        None => std::future::pending().await,
    }
}
