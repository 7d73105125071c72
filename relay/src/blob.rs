//! Blob streams: encrypted attachments uploaded and downloaded on bidirectional streams of their
//! own, next to the session stream (which must have authenticated the device first).

use std::sync::Arc;

use hush_proto::relay_api::{
    self as api, BlobRequest, BlobResponse, ErrorCode, blob_request, blob_response,
};
use sha2::{Digest, Sha256};

use crate::conn::Refused;
use crate::frame;
use crate::limits;
use crate::shared::{Relay, instant, now_ms, random};
use crate::store::DeviceId;
use crate::store::blobs::{self, BLOB_CHUNK, BlobMeta};

/// Serves one blob stream; errors end the stream only.
pub(crate) async fn stream(
    relay: Arc<Relay>,
    who: Option<DeviceId>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    if let Err(e) = blob_stream(relay, who, send, recv).await {
        tracing::debug!(error = %e, "blob stream ended with an error");
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
