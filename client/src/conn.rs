//! One QUIC connection to a relay: the pinned TLS handshake, the session stream with
//! request/response matching, unsolicited frames as a stream of events, and blob streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hush_net::{ALPN, frame};
use hush_proto::relay_api::{
    self as api, BlobRequest, BlobResponse, ClientFrame, ErrorCode, ServerFrame, blob_request,
    blob_response, client_frame, server_frame,
};
use tokio::sync::{mpsc, oneshot};

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

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<server_frame::Kind>>>>;

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

/// A connection to the relay.
pub struct RelayConnection {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    next: AtomicU64,
}

impl RelayConnection {
    /// Connects to `addr`, accepting only the certificate whose SHA-256 is `pin` (hex); returns
    /// the connection and the stream of unsolicited frames (deliveries, drain, ...).
    pub async fn connect(
        addr: SocketAddr,
        pin: &str,
    ) -> Result<(Self, mpsc::Receiver<server_frame::Kind>), ClientError> {
        let tls = hush_net::pin::pinned_client_config(pin, ALPN)
            .map_err(|e| ClientError::BadPin(e.to_string()))?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(KEEP_ALIVE));
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
                .map_err(|e| ClientError::Config(e.to_string()))?,
        ));
        cc.transport_config(Arc::new(transport));
        let bind: SocketAddr = if addr.is_ipv6() {
            SocketAddr::from(([0u16; 8], 0))
        } else {
            SocketAddr::from(([0u8; 4], 0))
        };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(ClientError::unreachable)?;
        endpoint.set_default_client_config(cc);
        let connecting = endpoint
            .connect(addr, "hush-relay")
            .map_err(|e| ClientError::Unreachable(format!("{addr}: {e}")))?;
        let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
            .await
            .map_err(|_| ClientError::Unreachable(format!("no answer from {addr}")))?
            .map_err(|e| {
                // The pin check's own error, carried through rustls and quinn as text.
                if format!("{e:?}").contains("PinMismatch") {
                    ClientError::PinMismatch(addr.to_string())
                } else {
                    ClientError::Unreachable(format!("{addr}: {e}"))
                }
            })?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(ClientError::unreachable)?;
        let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let quic = conn.clone();
        tokio::spawn(async move {
            while let Some(b) = out_rx.recv().await {
                if send.write_all(&b).await.is_err() {
                    quic.close(0u8.into(), b"stream ended");
                    return;
                }
            }
            let _ = send.finish();
        });
        let pending: Pending = Arc::default();
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let p = Arc::clone(&pending);
        let quic = conn.clone();
        tokio::spawn(async move {
            while let Ok(f) = frame::read::<ServerFrame, _>(&mut recv, MAX_SERVER_FRAME).await {
                let Some(kind) = f.kind else { continue };
                let waiter = if f.request_id == 0 {
                    None
                } else {
                    p.lock().ok().and_then(|mut m| m.remove(&f.request_id))
                };
                match waiter {
                    Some(w) => {
                        let _ = w.send(kind);
                    }
                    None => {
                        if ev_tx.send(kind).await.is_err() {
                            return;
                        }
                    }
                }
            }
            // The stream is gone, so is the connection: close it (so that nobody takes it for a
            // live one) and wake every waiter.
            quic.close(0u8.into(), b"stream ended");
            if let Ok(mut m) = p.lock() {
                m.clear();
            }
        });
        Ok((
            Self {
                endpoint,
                conn,
                out,
                pending,
                next: AtomicU64::new(1),
            },
            ev_rx,
        ))
    }

    /// The QUIC connection.
    pub fn quic(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Sends a request and waits for its answer; an `Error` frame becomes
    /// [`ClientError::Refused`].
    pub async fn request(
        &self,
        kind: client_frame::Kind,
    ) -> Result<server_frame::Kind, ClientError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| ClientError::Disconnected)?
            .insert(id, tx);
        let bytes = frame::encode(&ClientFrame {
            request_id: id,
            kind: Some(kind),
        });
        if self.out.send(bytes).is_err() {
            self.close();
            return Err(ClientError::Disconnected);
        }
        let answer = tokio::select! {
            r = tokio::time::timeout(REQUEST_TIMEOUT, rx) => match r {
                Ok(Ok(k)) => k,
                Ok(Err(_)) => {
                    self.close();
                    return Err(ClientError::Disconnected);
                }
                Err(_) => return Err(ClientError::Timeout),
            },
            _ = self.conn.closed() => return Err(ClientError::Disconnected),
        };
        match answer {
            server_frame::Kind::Error(e) => Err(ClientError::Refused(Refusal::from(e))),
            other => Ok(other),
        }
    }

    /// Authenticates with a signature made by `sign(exporter, challenge)`.
    pub async fn authenticate(
        &self,
        account: [u8; 32],
        device_id: u32,
        sign: impl FnOnce(&[u8; 32], &[u8; 32]) -> [u8; 64],
    ) -> Result<(), ClientError> {
        let server_frame::Kind::Challenge(ch) = self
            .request(client_frame::Kind::Hello(api::Hello {}))
            .await?
        else {
            return Err(ClientError::Protocol("no challenge from the relay"));
        };
        let challenge: [u8; 32] = ch
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Protocol("challenge of the wrong length"))?;
        let mut exporter = [0u8; 32];
        self.conn
            .export_keying_material(&mut exporter, hush_proto::labels::RELAY_AUTH_EXPORTER, b"")
            .map_err(|_| ClientError::Protocol("no TLS exporter"))?;
        let signature = sign(&exporter, &challenge);
        match self
            .request(client_frame::Kind::Authenticate(api::Authenticate {
                account: account.to_vec(),
                device_id,
                signature: signature.to_vec(),
            }))
            .await?
        {
            server_frame::Kind::Ok(_) => Ok(()),
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
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(ClientError::unreachable)?;
        let total = data.len() as u64;
        let req = BlobRequest {
            kind: Some(blob_request::Kind::Upload(api::BlobUpload { size: total })),
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
        let _ = send.finish();
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

    /// Downloads a blob by id and capability, at most `max` bytes, in chunks, telling `progress`
    /// the bytes received after each. A blob the relay does not have (expired, deleted, or a
    /// wrong capability: the relay answers these alike), or that goes while it is being sent, is
    /// [`ClientError::BlobGone`].
    pub async fn download_blob(
        &self,
        id: &[u8],
        capability: &[u8],
        max: usize,
        progress: Progress<'_>,
    ) -> Result<Vec<u8>, ClientError> {
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(ClientError::unreachable)?;
        let req = BlobRequest {
            kind: Some(blob_request::Kind::Download(api::BlobDownload {
                id: id.to_vec(),
                capability: capability.to_vec(),
            })),
        };
        frame::write(&mut send, &req)
            .await
            .map_err(|_| ClientError::Disconnected)?;
        let _ = send.finish();
        let r: BlobResponse =
            tokio::time::timeout(REQUEST_TIMEOUT, frame::read(&mut recv, 1 << 16))
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
                Ok(Ok(Some(n))) => n,
                Ok(Ok(None)) => return Err(ClientError::Protocol("blob shorter than announced")),
                Ok(Err(quinn::ReadError::Reset(code))) if code == BLOB_GONE.into() => {
                    return Err(ClientError::BlobGone);
                }
                Ok(Err(quinn::ReadError::Reset(code))) if code == BLOB_TIMED_OUT.into() => {
                    return Err(ClientError::Timeout);
                }
                Ok(Err(_)) => return Err(ClientError::Disconnected),
            };
            data.extend_from_slice(into.get(..n).unwrap_or_default());
            progress(data.len() as u64, total);
        }
        Ok(data)
    }

    /// Whether the connection is still usable (not closed by either side, its stream alive).
    pub fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(0u8.into(), b"bye");
    }

    /// Waits until the connection is closed (by either side).
    pub async fn closed(&self) {
        let _ = self.conn.closed().await;
    }

    /// Whether the relay refused with `code`.
    pub fn is_code(e: &ClientError, code: ErrorCode) -> bool {
        matches!(e, ClientError::Refused(r) if r.code == code)
    }
}

impl Drop for RelayConnection {
    fn drop(&mut self) {
        self.conn.close(0u8.into(), b"bye");
        let ep = self.endpoint.clone();
        drop(ep);
    }
}
