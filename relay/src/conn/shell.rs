//! The async task of one connection: the only place a connection touches its socket. One task
//! per connection: it reads the control stream, writes the coalesced output, takes the
//! connection's queue (router events, writer answers), accepts blob streams (each transfer gets a
//! task of its own while it runs, since it streams megabytes), and runs the timers — all in one
//! `select!` around [`ConnState`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::ConnState;
use crate::limits::{self, close};
use crate::ops::Timeout;
use crate::shared::Relay;

/// Largest chunk taken from the control stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// Output buffers above this are released once written.
const KEEP_OUTPUT: usize = 64 * 1024;

/// Serves one established connection until it ends.
pub(crate) async fn serve(relay: Arc<Relay>, quic: quinn::Connection, shutdown: CancellationToken) {
    relay.metrics.connections_total.inc();
    let id = relay
        .next_conn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let remote: IpAddr = quic.remote_address().ip();
    tracing::debug!(conn = id, "connection open");
    // The first bidirectional stream is the control stream.
    let accepted = tokio::time::timeout(
        Duration::from_millis(limits::AUTH_TIMEOUT_MS),
        quic.accept_bi(),
    )
    .await;
    let Ok(Ok((mut send, mut recv))) = accepted else {
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
    let (mut st, mut rx) = ConnState::new(id, remote, exporter, relay.now());
    let max_frame = relay.cfg.max_frame_bytes;
    // What is being written: taken whole from the state, written from `written` on.
    let mut wbuf: Vec<u8> = Vec::new();
    let mut written = 0usize;
    // When the write of `wbuf` last made progress (a client that stops reading is dropped).
    let mut write_progress = relay.clock.instant();
    let mut stream_open = true;
    let close_reason = loop {
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
        let deadline = match (st.poll_timeout(), write_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
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
            w = send.write(pending), if !pending.is_empty() => match w {
                Ok(n) => {
                    written += n;
                    write_progress = relay.clock.instant();
                }
                Err(_) => break (close::NORMAL, b""),
            },
            chunk = recv.read_chunk(READ_CHUNK, true), if stream_open && st.wants_read(max_frame) => {
                match chunk {
                    Ok(Some(c)) => st.receive(&relay, &c.bytes, relay.now()),
                    Ok(None) => {
                        stream_open = false;
                        st.peer_finished(&relay);
                    }
                    Err(_) => break (close::NORMAL, b""),
                }
            }
            bi = quic.accept_bi() => match bi {
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
                st.handle_timeout(&relay, now);
            }
        }
    };
    if let Some(d) = st.device() {
        relay.router.unregister(&d, id);
    }
    let _ = send.finish();
    // Give the peer a moment to take the last frames (a dead peer never will).
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    quic.close(close_reason.0.into(), close_reason.1);
    tracing::debug!(conn = id, "connection closed");
}

/// Sleeps until `deadline` on the relay's clock (as the time left from now, so that a clock a
/// test moved ahead of the system's is slept on correctly), or forever without one.
async fn sleep_until(relay: &Relay, deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep(d.saturating_duration_since(relay.clock.instant())).await,
        None => std::future::pending().await,
    }
}
