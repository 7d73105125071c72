//! Blob transfers on 127.0.0.1:0: quotas, download rate limits, deadlines, the errors of odd
//! requests, the files blobs are kept in, and the relay's memory across large uploads. Over QUIC
//! blob streams, or over TLS on TCP blob connections with `HUSH_TEST_TRANSPORT=tcp`
//! (docs/RELAY_PROTOCOL.md §17): where QUIC resets a stream, TCP ends the blob connection
//! without `close_notify`.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::raw::Raw;
use common::*;
use hush_net::client::Transport;
use hush_proto::relay_api::{
    self as api, BlobRequest, BlobResponse, ErrorCode, blob_request, blob_response, client_frame,
    server_frame,
};
use hush_relay::config::{Config, RateLimit as Rate, StoreKind};
use hush_relay::ops::RefusalReason;
use hush_relay::{Running, frame, limits};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn relay_with(store: StoreKind, dir: &Path, f: impl FnOnce(&mut Config)) -> Running {
    relay_on_clock(store, dir, f).await.0
}

/// As [`relay_with`], on a clock the test moves forward.
async fn relay_on_clock(
    store: StoreKind,
    dir: &Path,
    f: impl FnOnce(&mut Config),
) -> (Running, Arc<OffsetClock>) {
    let mut cfg = test_config(store, dir);
    cfg.rate.blob_downloads = Rate::new(10_000.0, 10_000);
    cfg.rate.account_blob_downloads = Rate::new(10_000.0, 10_000);
    cfg.rate.account_blob_download_mib = Rate::new(10_000.0, 100_000);
    f(&mut cfg);
    cfg.validate().unwrap();
    let clock = OffsetClock::new();
    let running = hush_relay::start_with_clock(cfg, Arc::clone(&clock) as _)
        .await
        .unwrap();
    (running, clock)
}

/// A new account on the relay, its device 1 connected and caught up.
async fn account(r: &Running) -> (TestAccount, Client) {
    let acc = TestAccount::new(1);
    let c = test_client(r).await;
    c.create(&acc, 1).await;
    assert!(c.catch_up().await.is_empty());
    (acc, c)
}

fn uploaded(resp: BlobResponse) -> api::BlobUploaded {
    match resp.kind {
        Some(blob_response::Kind::Uploaded(u)) => u,
        other => panic!("expected an upload, got {other:?}"),
    }
}

fn refused(resp: BlobResponse) -> api::Error {
    match resp.kind {
        Some(blob_response::Kind::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// The files in the relay's blob directory.
fn blob_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Waits (bounded) until `f` holds, checking every 20 ms.
async fn until(what: &str, f: impl Fn() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_flood_from_one_account_stops_at_its_quota_while_another_account_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay_with(StoreKind::Sled, dir.path(), |c| {
        c.blob_account_max_bytes = 256 * 1024;
        c.blob_total_max_bytes = 448 * 1024;
    })
    .await;
    let (_a, a) = account(&r).await;
    let (_b, b) = account(&r).await;
    let chunk = body(64 * 1024, 1);
    let mut accepted = 0;
    let quota_error = loop {
        let resp = a.upload_blob(&chunk, chunk.len() as u64).await;
        match resp.kind {
            Some(blob_response::Kind::Uploaded(_)) => accepted += 1,
            Some(blob_response::Kind::Error(e)) => break e,
            other => panic!("{other:?}"),
        }
        assert!(accepted <= 4, "the flood was never stopped");
    };
    assert_eq!(accepted, 4, "256 KiB of 64 KiB blobs");
    assert_eq!(quota_error.code(), ErrorCode::BlobQuotaExceeded);
    assert!(
        quota_error.message.contains("account") && quota_error.message.contains("262144"),
        "{}",
        quota_error.message
    );
    // A different account still uploads, up to the relay's total cap.
    for _ in 0..3 {
        uploaded(b.upload_blob(&chunk, chunk.len() as u64).await);
    }
    let full = refused(b.upload_blob(&chunk, chunk.len() as u64).await);
    assert_eq!(full.code(), ErrorCode::BlobQuotaExceeded);
    assert!(full.message.contains("relay"), "{}", full.message);
    assert_eq!(r.metrics.refusals.get(RefusalReason::BlobQuota), 2);
    assert_eq!(r.metrics.blob_bytes_stored.get(), 7 * 64 * 1024);
    assert!(
        r.metrics
            .render()
            .contains("hush_relay_refusals_total{reason=\"blob_quota\"} 2")
    );
    // A refusal stored nothing.
    assert_eq!(blob_files(dir.path()).len(), 7);
    r.stop().await;

    // The counters are rebuilt from what is stored: still full after a restart.
    let r = relay_with(StoreKind::Sled, dir.path(), |c| {
        c.blob_account_max_bytes = 256 * 1024;
        c.blob_total_max_bytes = 1 << 30;
    })
    .await;
    assert_eq!(r.metrics.blob_bytes_stored.get(), 7 * 64 * 1024);
    let (_b2, b2) = account(&r).await;
    uploaded(b2.upload_blob(&chunk, chunk.len() as u64).await);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_comes_back_when_blobs_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (r, clock) = relay_on_clock(StoreKind::Sled, dir.path(), |c| {
        c.blob_account_max_bytes = 128 * 1024;
        c.sweep_interval_ms = 50;
    })
    .await;
    let (_a, a) = account(&r).await;
    let data = body(128 * 1024, 2);
    let u = uploaded(a.upload_blob(&data, data.len() as u64).await);
    let e = refused(a.upload_blob(b"x", 1).await);
    assert_eq!(e.code(), ErrorCode::BlobQuotaExceeded);
    // A day before its lifetime ends, the blob is still there.
    let ttl = Duration::from_millis(hush_relay::config::Config::default().blob_ttl_ms);
    clock.advance(ttl - Duration::from_secs(86_400));
    assert_eq!(a.download_blob(&u.id, &u.capability).await.unwrap(), data);
    // Past it, nobody gets it, and the sweep deletes it and its file and gives its bytes back.
    clock.advance(Duration::from_secs(86_400 + 60));
    let e = a.download_blob(&u.id, &u.capability).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::BlobNotFound);
    let m = std::sync::Arc::clone(&r.metrics);
    until("the blob to expire", || m.blob_bytes_stored.get() == 0).await;
    assert!(blob_files(dir.path()).is_empty());
    uploaded(a.upload_blob(&data, data.len() as u64).await);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_downloads_are_rate_limited_per_blob_per_account_and_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (r, clock) = relay_on_clock(StoreKind::Memory, dir.path(), |c| {
        c.blob_max_bytes = 1 << 20;
        c.rate.blob_downloads = Rate::new(0.001, 2);
        c.rate.account_blob_downloads = Rate::new(0.001, 4);
        c.rate.account_blob_download_mib = Rate::new(0.001, 1);
    })
    .await;
    let (_a, a) = account(&r).await;
    let small = body(1000, 3);
    let u1 = uploaded(a.upload_blob(&small, small.len() as u64).await);
    let u2 = uploaded(a.upload_blob(&small, small.len() as u64).await);
    let (_b, b) = account(&r).await;
    // Per blob: two downloads, then refused with a time to wait.
    assert_eq!(
        b.download_blob(&u1.id, &u1.capability).await.unwrap(),
        small
    );
    assert_eq!(
        b.download_blob(&u1.id, &u1.capability).await.unwrap(),
        small
    );
    let e = b.download_blob(&u1.id, &u1.capability).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::RateLimited);
    assert!(e.retry_after_ms > 0);
    // The same blob is refused to another account too (the limit is the blob's).
    let (_c, c) = account(&r).await;
    let e = c.download_blob(&u1.id, &u1.capability).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::RateLimited);
    // Per account: b has used 2 of its 4 (the refusal was refunded); two more, then refused.
    assert_eq!(
        b.download_blob(&u2.id, &u2.capability).await.unwrap(),
        small
    );
    let u3 = uploaded(a.upload_blob(&small, small.len() as u64).await);
    assert_eq!(
        b.download_blob(&u3.id, &u3.capability).await.unwrap(),
        small
    );
    let u4 = uploaded(a.upload_blob(&small, small.len() as u64).await);
    let e = b.download_blob(&u4.id, &u4.capability).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::RateLimited);
    assert!(e.retry_after_ms > 0);
    // By bytes: 1 MiB per account; a 700 KiB blob passes once.
    let big = body(700 * 1024, 4);
    let ub = uploaded(a.upload_blob(&big, big.len() as u64).await);
    let (_d, d) = account(&r).await;
    assert_eq!(d.download_blob(&ub.id, &ub.capability).await.unwrap(), big);
    let e = d.download_blob(&ub.id, &ub.capability).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::RateLimited);
    assert!(e.retry_after_ms > 1000, "{}", e.retry_after_ms);
    // Two hours on (past the time it was told to wait, and every bucket refilled), it may
    // download again.
    assert!(e.retry_after_ms < 2 * 3_600_000, "{}", e.retry_after_ms);
    clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(d.download_blob(&ub.id, &ub.capability).await.unwrap(), big);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_reset_after_the_chunk_deadline_and_its_file_removed() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay_with(StoreKind::Sled, dir.path(), |c| {
        c.blob_chunk_timeout_ms = 1_000;
    })
    .await;
    let (_a, a) = account(&r).await;
    let (mut send, mut recv) = a.blob_channel().await;
    let req = BlobRequest {
        kind: Some(blob_request::Kind::Upload(api::BlobUpload {
            size: 300 * 1024,
            ..Default::default()
        })),
    };
    frame::write(&mut send, &req).await.unwrap();
    send.write_all(&body(100 * 1024, 5)).await.unwrap();
    send.flush().await.unwrap();
    // The upload's file exists while it runs...
    let d = dir.path().to_path_buf();
    until("the upload's file", || {
        blob_files(&d).iter().any(|f| f.ends_with(".part"))
    })
    .await;
    // ... then nothing more is sent: the relay cuts the transfer short as timed out.
    a.blob_cut_short(&mut recv, limits::blob_reset::TIMED_OUT)
        .await;
    assert_eq!(r.metrics.blob_streams_timed_out.get(), 1);
    assert!(
        r.metrics
            .render()
            .contains("hush_relay_blob_streams_timed_out_total 1")
    );
    assert!(
        blob_files(dir.path()).is_empty(),
        "the upload's file is gone"
    );
    assert_eq!(r.metrics.blob_bytes_stored.get(), 0);
    // The connection still serves.
    let data = body(1000, 6);
    uploaded(a.upload_blob(&data, data.len() as u64).await);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_blob_request_is_reset_after_the_request_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay_with(StoreKind::Memory, dir.path(), |c| {
        c.blob_request_timeout_ms = 300;
    })
    .await;
    let (_a, a) = account(&r).await;
    // Half a length prefix; and a whole prefix with half the frame.
    let (mut s1, mut r1) = a.blob_channel().await;
    s1.write_all(&[0, 0]).await.unwrap();
    s1.flush().await.unwrap();
    let (mut s2, mut r2) = a.blob_channel().await;
    s2.write_all(&[0, 0, 0, 40, 1, 2, 3]).await.unwrap();
    s2.flush().await.unwrap();
    a.blob_cut_short(&mut r1, limits::blob_reset::TIMED_OUT)
        .await;
    a.blob_cut_short(&mut r2, limits::blob_reset::TIMED_OUT)
        .await;
    assert_eq!(r.metrics.blob_streams_timed_out.get(), 2);
    // Their stream slots (or connections) are free again: the connection still serves blobs.
    let data = body(1000, 7);
    let u = uploaded(a.upload_blob(&data, data.len() as u64).await);
    assert_eq!(a.download_blob(&u.id, &u.capability).await.unwrap(), data);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_the_client_stops_reading_is_reset_after_the_chunk_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay_with(StoreKind::Sled, dir.path(), |c| {
        c.blob_max_bytes = 16 << 20;
        c.blob_chunk_timeout_ms = 300;
    })
    .await;
    let (_a, a) = account(&r).await;
    // Larger than what the client's receive window lets the relay send unread.
    let data = body(12 << 20, 8);
    let u = uploaded(a.upload_blob(&data, data.len() as u64).await);
    // Over TCP, from an anonymous control connection, on a blob connection whose socket takes
    // little unread.
    let mut anonymous = None;
    let (mut send, mut recv) = match test_transport() {
        Transport::Quic => a.blob_channel().await,
        Transport::Tcp => {
            let mut raw = Raw::connect(Transport::Tcp, &r).await;
            let answer = raw
                .request(1, client_frame::Kind::Anonymous(api::Anonymous {}))
                .await;
            assert!(matches!(answer, server_frame::Kind::Ok(_)), "{answer:?}");
            let channel = raw.tcp_blob(Some(64 * 1024)).await;
            anonymous = Some(raw);
            channel
        }
    };
    let req = BlobRequest {
        kind: Some(blob_request::Kind::Download(api::BlobDownload {
            id: u.id.clone(),
            capability: u.capability.clone(),
        })),
    };
    frame::write(&mut send, &req).await.unwrap();
    send.shutdown().await.unwrap();
    let found: BlobResponse = frame::read(&mut recv, 1 << 16).await.unwrap();
    assert!(matches!(found.kind, Some(blob_response::Kind::Found(_))));
    // Not reading: the relay's write stalls, and it gives up.
    let m = std::sync::Arc::clone(&r.metrics);
    until("the download to time out", || {
        m.blob_streams_timed_out.get() == 1
    })
    .await;
    a.blob_cut_short(&mut recv, limits::blob_reset::TIMED_OUT)
        .await;
    drop(anonymous);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_size_blob_is_malformed_and_a_4_gib_request_prefix_is_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay_with(StoreKind::Memory, dir.path(), |_| {}).await;
    let (_a, a) = account(&r).await;
    let e = refused(a.upload_blob(b"", 0).await);
    assert_eq!(e.code(), ErrorCode::Malformed);
    assert!(e.message.contains("empty"), "{}", e.message);
    assert_eq!(r.metrics.refusals.get(RefusalReason::TooLarge), 0);
    // A length prefix of 4 GiB - 1 on a blob stream: too large, as on the control stream.
    let (mut s, mut rcv) = a.blob_channel().await;
    s.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    let resp: BlobResponse = tokio::time::timeout(WAIT, frame::read(&mut rcv, 1 << 16))
        .await
        .unwrap()
        .unwrap();
    let e = refused(resp);
    assert_eq!(e.code(), ErrorCode::TooLarge);
    // One byte over the request cap is too large as well; at the cap it is read.
    let (mut s, mut rcv) = a.blob_channel().await;
    let len = u32::try_from(limits::BLOB_REQUEST_MAX + 1).unwrap();
    s.write_all(&len.to_be_bytes()).await.unwrap();
    let resp: BlobResponse = tokio::time::timeout(WAIT, frame::read(&mut rcv, 1 << 16))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refused(resp).code(), ErrorCode::TooLarge);
    assert_eq!(r.metrics.refusals.get(RefusalReason::TooLarge), 2);
    r.stop().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_files_are_private_and_a_broken_upload_leaves_no_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let r = relay_with(StoreKind::Sled, dir.path(), |_| {}).await;
    let (_a, a) = account(&r).await;
    let data = body(200 * 1024, 9);
    let u = uploaded(a.upload_blob(&data, data.len() as u64).await);
    let name = hex::encode(&u.id);
    assert_eq!(blob_files(dir.path()), vec![name.clone()]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("blobs")), 0o700);
    assert_eq!(mode(&dir.path().join("blobs").join(&name)), 0o600);
    // The file holds the bytes as uploaded (ciphertext, for a real client).
    assert_eq!(
        std::fs::read(dir.path().join("blobs").join(&name)).unwrap(),
        data
    );
    // Shorter than declared: refused, and its file is removed.
    let e = refused(a.upload_blob(&data[..100 * 1024], data.len() as u64).await);
    assert_eq!(e.code(), ErrorCode::Malformed);
    // Longer than declared: refused, and its file is removed.
    let e = refused(a.upload_blob(&data, 1000).await);
    assert_eq!(e.code(), ErrorCode::TooLarge);
    assert_eq!(blob_files(dir.path()), vec![name]);
    assert_eq!(r.metrics.blob_bytes_stored.get(), 200 * 1024);
    assert_eq!(a.download_blob(&u.id, &u.capability).await.unwrap(), data);
    r.stop().await;
}

/// The resident set of this process (the relay runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Uploads `mib` MiB from a reused 64 KiB buffer (so that the client holds no blob either);
/// returns the answer and the SHA-256 of what was sent.
async fn upload_streaming(c: &Client, mib: usize, seed: u8) -> (api::BlobUploaded, [u8; 32]) {
    let size = mib << 20;
    let (mut send, mut recv) = c.blob_channel().await;
    let req = BlobRequest {
        kind: Some(blob_request::Kind::Upload(api::BlobUpload {
            size: size as u64,
            ..Default::default()
        })),
    };
    frame::write(&mut send, &req).await.unwrap();
    let mut piece = body(64 * 1024, seed);
    let mut hash = Sha256::new();
    for i in 0..size / piece.len() {
        piece[0] = i as u8;
        hash.update(&piece);
        send.write_all(&piece).await.unwrap();
    }
    send.shutdown().await.unwrap();
    let resp: BlobResponse = tokio::time::timeout(WAIT * 6, frame::read(&mut recv, 1 << 16))
        .await
        .unwrap()
        .unwrap();
    (uploaded(resp), hash.finalize().into())
}

/// Run small in CI; the full run is `HUSH_BLOB_SOAK_COUNT=20 HUSH_BLOB_SOAK_MIB=100 cargo test -p
/// hush-relay --test blobs relay_memory_stays_flat_across_sequential_blob_uploads -- --nocapture`
/// (figures in BENCHMARKS.md).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_memory_stays_flat_across_sequential_blob_uploads() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let count = env("HUSH_BLOB_SOAK_COUNT", 5).max(2);
    let mib = env("HUSH_BLOB_SOAK_MIB", 8).max(1);
    let dir = tempfile::tempdir().unwrap();
    let r = relay_with(StoreKind::Sled, dir.path(), |c| {
        c.blob_max_bytes = (mib as u64) << 20;
        c.blob_account_max_bytes = u64::MAX;
        c.blob_total_max_bytes = u64::MAX;
        c.rate.account_blob_download_mib = Rate::new(10_000.0, 1 << 20);
    })
    .await;
    let (_a, a) = account(&r).await;
    let mut first = 0;
    let mut last = (None, [0u8; 32]);
    let started = std::time::Instant::now();
    for i in 0..count {
        let (u, digest) = upload_streaming(&a, mib, i as u8).await;
        let rss = rss_kib();
        println!(
            "upload {:>3} of {mib} MiB: relay process RSS {} MiB",
            i + 1,
            rss / 1024
        );
        if i == 0 {
            first = rss;
        }
        last = (Some(u), digest);
    }
    let end = rss_kib();
    let secs = started.elapsed().as_secs_f64();
    // The last blob reads back whole, streamed.
    let (u, digest) = (last.0.unwrap(), last.1);
    let (mut send, mut recv) = a.blob_channel().await;
    let req = BlobRequest {
        kind: Some(blob_request::Kind::Download(api::BlobDownload {
            id: u.id.clone(),
            capability: u.capability.clone(),
        })),
    };
    frame::write(&mut send, &req).await.unwrap();
    send.shutdown().await.unwrap();
    let found: BlobResponse = frame::read(&mut recv, 1 << 16).await.unwrap();
    assert!(matches!(found.kind, Some(blob_response::Kind::Found(_))));
    let mut hash = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(WAIT, recv.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        got += n;
    }
    assert_eq!(got, mib << 20);
    assert_eq!(<[u8; 32]>::from(hash.finalize()), digest);
    let after_download = rss_kib();
    println!(
        "{count} uploads of {mib} MiB in {secs:.1} s: RSS after the first {} MiB, after the last {} MiB, after a download {} MiB",
        first / 1024,
        end / 1024,
        after_download / 1024
    );
    assert!(
        end <= first + 64 * 1024,
        "RSS grew from {first} KiB to {end} KiB over {count} uploads"
    );
    assert!(after_download <= first + 64 * 1024);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_survives_export_and_import_into_a_new_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay_with(StoreKind::Sled, dir.path(), |_| {}).await;
    let (_a, a) = account(&r).await;
    let data = body(3 * 64 * 1024 + 11, 10);
    let u = uploaded(a.upload_blob(&data, data.len() as u64).await);
    r.stop().await;

    let out = dir.path().join("relay.bk");
    {
        let db = hush_relay::store::sled_store::open_db(&dir.path().join("db")).unwrap();
        let blobs = dir.path().join(hush_relay::BLOBS_DIR);
        hush_relay::backup::export_with_blobs(&db, Some(&blobs), &out).unwrap();
    }
    let fresh = tempfile::tempdir().unwrap();
    {
        let db = hush_relay::store::sled_store::open_db(&fresh.path().join("db")).unwrap();
        let blobs = fresh.path().join(hush_relay::BLOBS_DIR);
        hush_relay::backup::import_with_blobs(&out, &db, Some(&blobs)).unwrap();
    }
    let r = relay_with(StoreKind::Sled, fresh.path(), |_| {}).await;
    assert_eq!(r.metrics.blob_bytes_stored.get(), data.len() as i64);
    let (_b, b) = account(&r).await;
    assert_eq!(b.download_blob(&u.id, &u.capability).await.unwrap(), data);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_upload_replaces_its_blob_only_with_the_same_capability() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay_with(StoreKind::Sled, dir.path(), |c| {
        c.blob_account_max_bytes = 200 * 1024;
    })
    .await;
    let (_a, a) = account(&r).await;
    let (_b, b) = account(&r).await;
    let id = [7u8; 16];
    let cap = [9u8; 32];
    let first = body(128 * 1024, 3);
    let u = uploaded(
        a.upload_named_blob(&first, first.len() as u64, &id, &cap)
            .await,
    );
    assert_eq!(
        (u.id.as_slice(), u.capability.as_slice()),
        (&id[..], &cap[..])
    );
    assert_eq!(a.download_blob(&id, &cap).await.unwrap(), first);
    // Replaced in place, by the same capability: the old one's bytes are freed first, so the
    // replacement fits in a quota the two together would not.
    let second = body(100 * 1024, 4);
    uploaded(
        a.upload_named_blob(&second, second.len() as u64, &id, &cap)
            .await,
    );
    assert_eq!(b.download_blob(&id, &cap).await.unwrap(), second);
    assert_eq!(blob_files(dir.path()).len(), 1);
    assert_eq!(r.metrics.blob_bytes_stored.get(), 100 * 1024);
    // Another capability for that id is refused as if the blob did not exist, and changes
    // nothing.
    let e = refused(b.upload_named_blob(b"evil", 4, &id, &[1u8; 32]).await);
    assert_eq!(e.code(), ErrorCode::BlobNotFound);
    assert_eq!(a.download_blob(&id, &cap).await.unwrap(), second);
    // A name of the wrong shape is malformed.
    let e = refused(a.upload_named_blob(b"x", 1, &id[..8], &cap).await);
    assert_eq!(e.code(), ErrorCode::Malformed);
    let e = refused(a.upload_named_blob(b"x", 1, &id, &[]).await);
    assert_eq!(e.code(), ErrorCode::Malformed);
    r.stop().await;
}
