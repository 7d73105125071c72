//! Blob streams: encrypted attachments uploaded and downloaded on bidirectional streams of their
//! own, next to the control stream. Uploads need an authenticated device (they count against
//! its account's quota); a download needs only the blob's id and capability, and may come on an
//! anonymous connection, so the relay does not learn which device fetched an attachment (rate
//! limits then apply to the connection's address block).
//!
//! A blob is never held in memory: an upload is written to the store one chunk
//! ([`BLOB_CHUNK`]) at a time as it arrives, and a download read from it one chunk at a time as
//! the client takes it. Every stage has a deadline: the request frame
//! (`blob_request_timeout_ms`), and each chunk of an upload or a download
//! (`blob_chunk_timeout_ms`); a stream that misses one is reset with
//! [`limits::blob_reset::TIMED_OUT`] (an upload is deleted).
//!
//! The same code serves QUIC blob streams and blob connections over TCP
//! (docs/RELAY_PROTOCOL.md §17), through [`BlobSend`] and [`BlobRecv`]: over TCP a reset is the
//! end of the connection without TLS `close_notify`, and finishing is `close_notify`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hush_net::frame::FrameError;
use hush_proto::relay_api::{
    self as api, BlobRequest, BlobResponse, ErrorCode, blob_request, blob_response,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conn::Refusal;
use crate::frame;
use crate::limits::{self, blob_reset};
use crate::shared::{Relay, random};
use crate::store::DeviceId;
use crate::store::blobs::{self, BLOB_CHUNK, Begin, BlobMeta, Quota};

/// The sending half of a blob stream.
pub(crate) trait BlobSend: AsyncWrite + Unpin + Send {
    /// Abandons the stream with `code` (what was not yet delivered may be lost).
    fn reset(&mut self, code: u32);
    /// Ends the stream cleanly once what was written is delivered.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

/// The receiving half of a blob stream.
pub(crate) trait BlobRecv: AsyncRead + Unpin + Send {
    /// Tells the peer to stop sending, with `code`.
    fn stop(&mut self, code: u32);
}

impl BlobSend for quinn::SendStream {
    fn reset(&mut self, code: u32) {
        let _ = quinn::SendStream::reset(self, code.into());
    }

    async fn finish(&mut self) {
        let _ = quinn::SendStream::finish(self);
    }
}

impl BlobRecv for quinn::RecvStream {
    fn stop(&mut self, code: u32) {
        let _ = quinn::RecvStream::stop(self, code.into());
    }
}

/// The sending half of a blob connection over TCP. A reset ends it without `close_notify` (the
/// client sees the stream cut short; TCP carries no code); `reset` tells the connection so once
/// the transfer is over.
pub(crate) struct TcpBlobSend<W> {
    inner: W,
    reset: Arc<AtomicBool>,
}

impl<W> TcpBlobSend<W> {
    pub(crate) fn new(inner: W, reset: Arc<AtomicBool>) -> Self {
        Self { inner, reset }
    }

    fn is_reset(&self) -> bool {
        self.reset.load(Ordering::Relaxed)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for TcpBlobSend<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.is_reset() {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<W: AsyncWrite + Unpin + Send> BlobSend for TcpBlobSend<W> {
    fn reset(&mut self, _code: u32) {
        self.reset.store(true, Ordering::Relaxed);
    }

    async fn finish(&mut self) {
        if !self.is_reset() {
            let _ = tokio::time::timeout(
                Duration::from_millis(limits::WRITE_TIMEOUT_MS),
                self.inner.shutdown(),
            )
            .await;
        }
    }
}

/// The receiving half of a blob connection over TCP.
pub(crate) struct TcpBlobRecv<R>(pub(crate) R);

impl<R: AsyncRead + Unpin> AsyncRead for TcpBlobRecv<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: AsyncRead + Unpin + Send> BlobRecv for TcpBlobRecv<R> {
    // The connection ends with the blob task; nothing to tell before.
    fn stop(&mut self, _code: u32) {}
}

/// Serves one blob stream; errors end the stream only.
pub(crate) async fn stream<S: BlobSend, R: BlobRecv>(
    relay: Arc<Relay>,
    who: Option<(DeviceId, bool)>,
    send: S,
    recv: R,
) {
    if let Err(e) = blob_stream(relay, who, send, recv).await {
        tracing::debug!(error = %e, "blob stream ended with an error");
    }
}

/// Why an upload did not end in a stored blob.
enum Failed {
    /// Answer with this error.
    Refused(Refusal),
    /// A chunk missed its deadline: reset the stream.
    TimedOut,
}

impl From<Refusal> for Failed {
    fn from(r: Refusal) -> Self {
        Self::Refused(r)
    }
}

impl From<crate::store::StoreError> for Failed {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Refused(e.into())
    }
}

fn chunk_deadline(relay: &Relay) -> Duration {
    Duration::from_millis(relay.cfg.blob_chunk_timeout_ms)
}

/// Writes a response frame, within the chunk deadline.
async fn blob_reply<S: BlobSend>(
    relay: &Relay,
    send: &mut S,
    kind: blob_response::Kind,
) -> std::io::Result<()> {
    let response = BlobResponse { kind: Some(kind) };
    relay.tap_output(&prost::Message::encode_to_vec(&response));
    let write = frame::write(send, &response);
    match tokio::time::timeout(chunk_deadline(relay), write).await {
        Ok(r) => r,
        Err(_) => {
            timed_out::<S, quinn::RecvStream>(relay, send, None);
            Ok(())
        }
    }
}

async fn blob_refuse<S: BlobSend>(relay: &Relay, send: &mut S, r: Refusal) -> std::io::Result<()> {
    relay.refuse_count(&r);
    blob_reply(relay, send, blob_response::Kind::Error(r.to_frame())).await?;
    send.finish().await;
    Ok(())
}

/// Resets a stream that missed a deadline, in both directions.
fn timed_out<S: BlobSend, R: BlobRecv>(relay: &Relay, send: &mut S, recv: Option<&mut R>) {
    relay.metrics.blob_streams_timed_out.inc();
    tracing::info!("blob stream timed out; reset");
    send.reset(blob_reset::TIMED_OUT);
    if let Some(r) = recv {
        r.stop(blob_reset::TIMED_OUT);
    }
}

/// Shows the stored blob bytes in the metrics.
fn note_stored(relay: &Relay) {
    if let Ok(total) = relay.blobs.total_bytes() {
        relay
            .metrics
            .blob_bytes_stored
            .set(i64::try_from(total).unwrap_or(i64::MAX));
    }
}

async fn blob_stream<S: BlobSend, R: BlobRecv>(
    relay: Arc<Relay>,
    who: Option<(DeviceId, bool)>,
    mut send: S,
    mut recv: R,
) -> std::io::Result<()> {
    let read = frame::read::<BlobRequest, _>(&mut recv, limits::BLOB_REQUEST_MAX);
    let deadline = Duration::from_millis(relay.cfg.blob_request_timeout_ms);
    let req = match tokio::time::timeout(deadline, read).await {
        Ok(Ok(r)) => r,
        Ok(Err(FrameError::TooLarge { len, cap })) => {
            let r = Refusal::new(
                ErrorCode::TooLarge,
                format!("blob request of {len} bytes is over the cap of {cap}"),
            );
            return blob_refuse(&relay, &mut send, r).await;
        }
        Ok(Err(e)) => {
            let r = Refusal::new(ErrorCode::Malformed, e.to_string());
            return blob_refuse(&relay, &mut send, r).await;
        }
        Err(_) => {
            timed_out(&relay, &mut send, Some(&mut recv));
            return Ok(());
        }
    };
    let Some((me, authenticated)) = who else {
        let r = Refusal::new(
            ErrorCode::Unauthenticated,
            "authenticate (or declare the connection anonymous) on the control stream first",
        );
        return blob_refuse(&relay, &mut send, r).await;
    };
    match req.kind {
        Some(blob_request::Kind::Upload(_)) if !authenticated => {
            let r = Refusal::new(
                ErrorCode::Unauthenticated,
                "uploads count against an account: authenticate first",
            );
            blob_refuse(&relay, &mut send, r).await
        }
        Some(blob_request::Kind::Upload(u)) => upload(&relay, &me, &u, send, recv).await,
        Some(blob_request::Kind::Download(d)) => download(&relay, &me, &d, send).await,
        None => {
            let r = Refusal::new(ErrorCode::UnknownRequest, "unknown blob request");
            blob_refuse(&relay, &mut send, r).await
        }
    }
}

/// The id and capability a named upload asks for (both given), or `None` for random ones (both
/// empty); anything else is malformed.
type Named = Option<([u8; limits::BLOB_ID_LEN], [u8; limits::BLOB_CAPABILITY_LEN])>;

fn named(u: &api::BlobUpload) -> Result<Named, Refusal> {
    if u.id.is_empty() && u.capability.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Refusal::new(
            ErrorCode::Malformed,
            "a named upload gives an id of 16 bytes and a capability of 32",
        )
    };
    let id = <[u8; limits::BLOB_ID_LEN]>::try_from(u.id.as_slice()).map_err(|_| bad())?;
    let cap = <[u8; limits::BLOB_CAPABILITY_LEN]>::try_from(u.capability.as_slice())
        .map_err(|_| bad())?;
    Ok(Some((id, cap)))
}

/// Makes room for a named upload: a blob of that id with the same capability is deleted (the
/// upload replaces it); one with another capability refuses the upload as `BLOB_NOT_FOUND`, so
/// the answer tells nothing of blobs whose capability the uploader does not hold.
fn replace_named(relay: &Relay, id: [u8; limits::BLOB_ID_LEN], cap: &[u8]) -> Result<(), Refusal> {
    match relay.blobs.meta(id)? {
        None => Ok(()),
        Some((meta, _)) if blobs::capability_matches(&meta, cap) => {
            relay.blobs.delete(id)?;
            note_stored(relay);
            tracing::debug!("named blob replaced");
            Ok(())
        }
        Some(_) => Err(Refusal::new(ErrorCode::BlobNotFound, "no such blob")),
    }
}

async fn upload<S: BlobSend, R: BlobRecv>(
    relay: &Relay,
    me: &DeviceId,
    u: &api::BlobUpload,
    mut send: S,
    mut recv: R,
) -> std::io::Result<()> {
    let size = u.size;
    let name = match named(u) {
        Ok(n) => n,
        Err(r) => return blob_refuse(relay, &mut send, r).await,
    };
    if size == 0 {
        let r = Refusal::new(ErrorCode::Malformed, "a blob must not be empty");
        return blob_refuse(relay, &mut send, r).await;
    }
    if size > relay.cfg.blob_max_bytes {
        let r = Refusal::new(
            ErrorCode::TooLarge,
            format!("blob size must be 1..={} bytes", relay.cfg.blob_max_bytes),
        );
        return blob_refuse(relay, &mut send, r).await;
    }
    if let Err(wait) = relay
        .rate_limiters
        .blob_uploads
        .check(me, 1, relay.clock.instant())
    {
        return blob_refuse(relay, &mut send, Refusal::rate(wait)).await;
    }
    if let Some((id, cap)) = &name
        && let Err(r) = replace_named(relay, *id, cap)
    {
        return blob_refuse(relay, &mut send, r).await;
    }
    match receive_blob(relay, me, size, name, &mut recv).await {
        Ok(up) => {
            relay.metrics.blobs_uploaded.inc();
            relay.metrics.blob_bytes_uploaded.inc_by(size);
            blob_reply(relay, &mut send, blob_response::Kind::Uploaded(up)).await?;
            send.finish().await;
            Ok(())
        }
        Err(Failed::Refused(r)) => blob_refuse(relay, &mut send, r).await,
        Err(Failed::TimedOut) => {
            timed_out(relay, &mut send, Some(&mut recv));
            Ok(())
        }
    }
}

async fn receive_blob<R: BlobRecv>(
    relay: &Relay,
    me: &DeviceId,
    size: u64,
    name: Named,
    recv: &mut R,
) -> Result<api::BlobUploaded, Failed> {
    let (id, capability) = name.unwrap_or_else(|| {
        (
            random::<{ limits::BLOB_ID_LEN }>(),
            random::<{ limits::BLOB_CAPABILITY_LEN }>(),
        )
    });
    let now = relay.clock.wall_ms();
    let expires_at = now.saturating_add(relay.cfg.blob_ttl_ms);
    let meta = BlobMeta {
        size,
        capability_hash: Sha256::digest(capability).into(),
        owner: me.key(),
        expires_at,
        created_at: now,
    };
    let quota = Quota {
        account_max: relay.cfg.blob_account_max_bytes,
        total_max: relay.cfg.blob_total_max_bytes,
    };
    match relay.blobs.begin_within(id, meta, quota)? {
        Begin::Started => note_stored(relay),
        // A named upload of the same id under way on another stream.
        Begin::IdTaken if name.is_some() => {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                "an upload of this blob is under way; retry",
            )
            .into());
        }
        // 128 random bits collided: astronomically unlikely, but never overwrite a blob.
        Begin::IdTaken => {
            return Err(Refusal::new(ErrorCode::Internal, "blob id taken, retry").into());
        }
        Begin::AccountFull { stored } => {
            return Err(Refusal::new(
                ErrorCode::BlobQuotaExceeded,
                format!(
                    "this account's blob storage is at its cap: {stored} of {} bytes in use; \
                     space comes back as its blobs expire",
                    quota.account_max
                ),
            )
            .into());
        }
        Begin::RelayFull => {
            return Err(Refusal::new(
                ErrorCode::BlobQuotaExceeded,
                "the relay's blob storage is full; retry later",
            )
            .into());
        }
    }
    let result = store_chunks(relay, id, size, recv).await;
    if result.is_err() {
        // The upload's file goes with it.
        let _ = relay.blobs.delete(id);
        note_stored(relay);
    }
    result?;
    Ok(api::BlobUploaded {
        id: id.to_vec(),
        capability: capability.to_vec(),
        expires_at,
    })
}

/// Reads the blob's bytes from the stream into the store, one chunk at a time, each within the
/// chunk deadline; then completes it durably.
async fn store_chunks<R: BlobRecv>(
    relay: &Relay,
    id: [u8; limits::BLOB_ID_LEN],
    size: u64,
    recv: &mut R,
) -> Result<(), Failed> {
    let deadline = chunk_deadline(relay);
    let mut left = size;
    let mut index = 0u32;
    let mut buf = vec![0u8; BLOB_CHUNK];
    while left > 0 {
        let want = usize::try_from(left.min(BLOB_CHUNK as u64)).unwrap_or(BLOB_CHUNK);
        let chunk = buf
            .get_mut(..want)
            .ok_or_else(|| Refusal::new(ErrorCode::Internal, "buffer"))?;
        match tokio::time::timeout(deadline, recv.read_exact(chunk)).await {
            Err(_) => return Err(Failed::TimedOut),
            Ok(Err(_)) => {
                return Err(Refusal::new(
                    ErrorCode::Malformed,
                    "blob stream ended before its size",
                )
                .into());
            }
            Ok(Ok(_)) => {}
        }
        // The disk write runs off the async workers; the buffer goes there and comes back.
        let store = Arc::clone(&relay.blobs);
        let (back, put) = tokio::task::spawn_blocking(move || {
            let put = match buf.get(..want) {
                Some(chunk) => store.put_chunk(id, index, chunk),
                None => Ok(blobs::ChunkPut::OutOfRange),
            };
            (buf, put)
        })
        .await
        .map_err(|_| Refusal::new(ErrorCode::Internal, "blob write task failed"))?;
        buf = back;
        match put? {
            blobs::ChunkPut::Stored => {}
            other => {
                tracing::error!(?other, "blob chunk refused by the store");
                return Err(Refusal::new(ErrorCode::Internal, "blob store refused a chunk").into());
            }
        }
        left -= want as u64;
        index = index.saturating_add(1);
    }
    // Nothing may follow the declared size.
    let mut one = [0u8; 1];
    match tokio::time::timeout(deadline, recv.read(&mut one)).await {
        Err(_) => return Err(Failed::TimedOut),
        Ok(Ok(0)) => {}
        Ok(_) => {
            return Err(
                Refusal::new(ErrorCode::TooLarge, "blob longer than its declared size").into(),
            );
        }
    }
    let blobs = Arc::clone(&relay.blobs);
    // The file is synced and renamed, then the metadata flushed: durable before the answer.
    match tokio::task::spawn_blocking(move || {
        let done = blobs.complete(id)?;
        blobs.flush()?;
        Ok::<_, crate::store::StoreError>(done)
    })
    .await
    {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(Refusal::new(ErrorCode::Internal, "blob incomplete").into()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(Refusal::new(ErrorCode::Internal, "flush task failed").into()),
    }
}

/// KiB a download of `size` bytes costs in the per-account byte limit.
fn kib_cost(size: u64) -> u32 {
    u32::try_from(size.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

async fn download<S: BlobSend>(
    relay: &Relay,
    me: &DeviceId,
    d: &api::BlobDownload,
    mut send: S,
) -> std::io::Result<()> {
    let now = relay.clock.instant();
    let limits = &relay.rate_limiters;
    // Counted before the lookup, so probing for blobs costs as much as fetching them.
    if let Err(wait) = limits.account_blob_downloads.check(&me.account, 1, now) {
        return blob_refuse(relay, &mut send, Refusal::rate(wait)).await;
    }
    let not_found = || Refusal::new(ErrorCode::BlobNotFound, "no such blob");
    let Ok(id) = <[u8; limits::BLOB_ID_LEN]>::try_from(d.id.as_slice()) else {
        return blob_refuse(relay, &mut send, not_found()).await;
    };
    let meta = match relay.blobs.meta(id) {
        Ok(Some((m, true))) if blobs::capability_matches(&m, &d.capability) => m,
        Ok(_) => return blob_refuse(relay, &mut send, not_found()).await,
        Err(e) => return blob_refuse(relay, &mut send, e.into()).await,
    };
    if meta.expires_at <= relay.clock.wall_ms() {
        return blob_refuse(relay, &mut send, not_found()).await;
    }
    if let Err(wait) = limits.blob_downloads.check(&id, 1, now) {
        limits.account_blob_downloads.refund(&me.account, 1);
        return blob_refuse(relay, &mut send, Refusal::rate(wait)).await;
    }
    if let Err(wait) = limits
        .account_blob_kib
        .check(&me.account, kib_cost(meta.size), now)
    {
        limits.account_blob_downloads.refund(&me.account, 1);
        limits.blob_downloads.refund(&id, 1);
        return blob_refuse(relay, &mut send, Refusal::rate(wait)).await;
    }
    blob_reply(
        relay,
        &mut send,
        blob_response::Kind::Found(api::BlobFound { size: meta.size }),
    )
    .await?;
    let deadline = chunk_deadline(relay);
    for i in 0..meta.chunk_count() {
        let index = u32::try_from(i).map_err(std::io::Error::other)?;
        let store = Arc::clone(&relay.blobs);
        let read = tokio::task::spawn_blocking(move || store.chunk(id, index)).await;
        let Ok(Ok(Some(c))) = read else {
            // Deleted under us: end the stream short; the digest check fails client-side.
            send.reset(blob_reset::GONE);
            return Ok(());
        };
        match tokio::time::timeout(deadline, send.write_all(&c)).await {
            Ok(r) => r?,
            Err(_) => {
                timed_out::<S, quinn::RecvStream>(relay, &mut send, None);
                return Ok(());
            }
        }
    }
    relay.metrics.blobs_downloaded.inc();
    send.finish().await;
    Ok(())
}
