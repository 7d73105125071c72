//! Unit tests of the blob stores: the shared suite on both, and the file store's own behaviour.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use super::record::{decode_meta, encode_meta};
use crate::store::StoreError;

blob_store_suite!(in_memory, ((), super::super::MemoryBlobs::new()));

blob_store_suite!(in_files, {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::store::sled_store::open_test_db(&dir.path().join("db"));
    let store = super::super::FileBlobs::open(&db, &dir.path().join("blobs")).unwrap();
    (dir, store)
});

blob_store_suite!(in_redis, ((), super::redis_blobs().0));

/// A blob store on a fresh key prefix of the test cluster, and the options to open another
/// connection to the same keys (another relay node).
fn redis_blobs() -> (RedisBlobs, crate::store::redis_store::RedisOptions) {
    use crate::store::redis_store::Redis;
    let options = crate::store::redis_store::tests::test_options();
    let redis = Redis::connect(options.clone()).unwrap();
    (RedisBlobs::on(std::sync::Arc::new(redis)).unwrap(), options)
}

use super::*;

fn open(dir: &Path) -> (sled::Db, FileBlobs) {
    let db = crate::store::sled_store::open_test_db(&dir.join("db"));
    let s = FileBlobs::open(&db, &dir.join("blobs")).unwrap();
    (db, s)
}

fn meta_of(size: usize) -> BlobMeta {
    BlobMeta {
        size: size as u64,
        capability_hash: Sha256::digest([3u8; 32]).into(),
        owner: [1; 36],
        expires_at: 9_999,
        created_at: 1,
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn a_completed_blob_survives_reopen_in_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..BLOB_CHUNK + 77).map(|i| (i % 13) as u8).collect();
    let m = meta_of(data.len());
    {
        let (_db, s) = open(dir.path());
        s.begin([1; 16], m).unwrap();
        for (i, c) in data.chunks(BLOB_CHUNK).enumerate() {
            s.put_chunk([1; 16], i as u32, c).unwrap();
        }
        assert_eq!(
            files(dir.path()),
            vec![format!("{}.part", hex::encode([1u8; 16]))]
        );
        assert!(s.complete([1; 16]).unwrap());
        s.flush().unwrap();
        // Dropped without any shutdown.
    }
    let name = hex::encode([1u8; 16]);
    assert_eq!(files(dir.path()), vec![name.clone()]);
    assert_eq!(
        std::fs::read(dir.path().join("blobs").join(&name)).unwrap(),
        data
    );
    let (_db, s) = open(dir.path());
    let (back, complete) = s.meta([1; 16]).unwrap().unwrap();
    assert_eq!((back, complete), (m, true));
    assert!(capability_matches(&back, &[3; 32]));
    let mut got = s.chunk([1; 16], 0).unwrap().unwrap();
    got.extend(s.chunk([1; 16], 1).unwrap().unwrap());
    assert_eq!(got, data);
    assert_eq!(
        s.total_bytes().unwrap(),
        data.len() as u64,
        "counters rebuilt"
    );
    assert_eq!(s.account_bytes(&[1; 32]).unwrap(), data.len() as u64);
}

#[cfg(unix)]
#[test]
fn blob_files_are_private_to_the_relay_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = open(dir.path());
    s.begin([1; 16], meta_of(5)).unwrap();
    s.put_chunk([1; 16], 0, b"hello").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let blobs = dir.path().join("blobs");
    assert_eq!(mode(&blobs), 0o700);
    assert_eq!(
        mode(&blobs.join(format!("{}.part", hex::encode([1u8; 16])))),
        0o600
    );
    assert!(s.complete([1; 16]).unwrap());
    assert_eq!(mode(&blobs.join(hex::encode([1u8; 16]))), 0o600);
}

#[test]
fn an_interrupted_upload_and_stray_files_are_gone_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_db, s) = open(dir.path());
        s.begin([1; 16], meta_of(BLOB_CHUNK + 1)).unwrap();
        s.put_chunk([1; 16], 0, &vec![1; BLOB_CHUNK]).unwrap();
        s.begin([2; 16], meta_of(3)).unwrap();
        s.put_chunk([2; 16], 0, b"abc").unwrap();
        assert!(s.complete([2; 16]).unwrap());
        s.flush().unwrap();
        assert_eq!(s.total_bytes().unwrap(), BLOB_CHUNK as u64 + 4);
    }
    // A file nobody knows, and a complete blob whose file went missing.
    std::fs::write(dir.path().join("blobs").join("stray"), b"x").unwrap();
    {
        let db = crate::store::sled_store::open_test_db(&dir.path().join("db"));
        let t = db.open_tree("blob_meta").unwrap();
        t.insert([3u8; 16], encode_meta(&meta_of(7), true)).unwrap();
        db.flush().unwrap();
    }
    let (_db, s) = open(dir.path());
    assert_eq!(files(dir.path()), vec![hex::encode([2u8; 16])]);
    assert_eq!(s.meta([1; 16]).unwrap(), None);
    assert_eq!(s.meta([3; 16]).unwrap(), None);
    assert_eq!(s.total_bytes().unwrap(), 3);
    assert_eq!(s.chunk([2; 16], 0).unwrap().unwrap(), b"abc");
}

#[test]
fn deleting_an_upload_in_progress_removes_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = open(dir.path());
    s.begin([1; 16], meta_of(BLOB_CHUNK + 1)).unwrap();
    s.put_chunk([1; 16], 0, &vec![1; BLOB_CHUNK]).unwrap();
    assert!(s.delete([1; 16]).unwrap());
    assert!(files(dir.path()).is_empty());
    assert_eq!(
        s.put_chunk([1; 16], 1, &[1]).unwrap(),
        ChunkPut::UnknownBlob
    );
    assert!(!s.complete([1; 16]).unwrap());
    assert_eq!(s.total_bytes().unwrap(), 0);
}

#[test]
fn blobs_kept_in_sled_by_an_older_version_move_to_files() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..BLOB_CHUNK + 9).map(|i| (i % 7) as u8).collect();
    {
        let db = crate::store::sled_store::open_test_db(&dir.path().join("db"));
        let meta = db.open_tree("blob_meta").unwrap();
        let chunks = db.open_tree("blob_chunks").unwrap();
        meta.insert([1u8; 16], encode_meta(&meta_of(data.len()), true))
            .unwrap();
        meta.insert([2u8; 16], encode_meta(&meta_of(5), false))
            .unwrap();
        for (i, c) in data.chunks(BLOB_CHUNK).enumerate() {
            let mut k = [1u8; 20];
            k[16..].copy_from_slice(&(i as u32).to_be_bytes());
            chunks.insert(k, c).unwrap();
        }
        db.flush().unwrap();
    }
    let (db, s) = open(dir.path());
    assert!(!db.tree_names().iter().any(|n| n == b"blob_chunks"));
    assert_eq!(files(dir.path()), vec![hex::encode([1u8; 16])]);
    let mut got = s.chunk([1; 16], 0).unwrap().unwrap();
    got.extend(s.chunk([1; 16], 1).unwrap().unwrap());
    assert_eq!(got, data);
    assert_eq!(
        s.meta([2; 16]).unwrap(),
        None,
        "an unfinished upload is dropped"
    );
}

#[test]
fn corrupt_metadata_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let (db, s) = open(dir.path());
    db.open_tree("blob_meta")
        .unwrap()
        .insert([1u8; 16], &b"short"[..])
        .unwrap();
    assert!(matches!(
        s.meta([1; 16]),
        Err(StoreError::Corrupt("blob_meta"))
    ));
    assert!(matches!(s.sweep(0, 0), Err(StoreError::Corrupt(_))));
    let mut bad = encode_meta(&meta_of(1), false);
    *bad.last_mut().unwrap() = 2;
    assert!(decode_meta(&bad).is_err());
}

#[test]
fn chunk_lengths_follow_the_size() {
    let m = |size| BlobMeta {
        size,
        capability_hash: [0; 32],
        owner: [0; 36],
        expires_at: 0,
        created_at: 0,
    };
    assert_eq!(m(0).chunk_count(), 0);
    assert_eq!(m(1).chunk_count(), 1);
    assert_eq!(m(BLOB_CHUNK as u64).chunk_count(), 1);
    assert_eq!(m(BLOB_CHUNK as u64 + 1).chunk_count(), 2);
    assert_eq!(m(BLOB_CHUNK as u64 + 1).chunk_len(1), Some(1));
    assert_eq!(m(BLOB_CHUNK as u64).chunk_len(1), None);
    assert_eq!(m(u64::MAX).chunk_len(u32::MAX), Some(BLOB_CHUNK));
}

#[test]
fn a_blob_uploaded_through_one_redis_node_is_served_by_another() {
    use crate::store::redis_store::Redis;
    let (first, options) = redis_blobs();
    let data: Vec<u8> = (0..2 * BLOB_CHUNK + 123).map(|i| (i % 241) as u8).collect();
    let m = meta_of(data.len());
    assert_eq!(
        first.begin_within([7; 16], m, Quota::UNLIMITED).unwrap(),
        Begin::Started
    );
    for (i, c) in data.chunks(BLOB_CHUNK).enumerate() {
        assert_eq!(
            first.put_chunk([7; 16], i as u32, c).unwrap(),
            ChunkPut::Stored
        );
    }
    assert!(first.complete([7; 16]).unwrap());
    first.flush().unwrap();

    let second = RedisBlobs::on(std::sync::Arc::new(Redis::connect(options).unwrap())).unwrap();
    let (back, complete) = second.meta([7; 16]).unwrap().unwrap();
    assert_eq!((back, complete), (m, true));
    assert!(capability_matches(&back, &[3; 32]));
    let mut got = Vec::new();
    for i in 0..back.chunk_count() as u32 {
        got.extend(second.chunk([7; 16], i).unwrap().unwrap());
    }
    assert_eq!(got, data);
    assert_eq!(second.total_bytes().unwrap(), data.len() as u64);
    assert_eq!(second.account_bytes(&[1; 32]).unwrap(), data.len() as u64);
    assert_eq!(
        second.put_chunk([7; 16], 0, &data[..BLOB_CHUNK]).unwrap(),
        ChunkPut::AlreadyComplete
    );
    // Deleted through the second node, it is gone for the first, its bytes given back once.
    assert!(second.delete([7; 16]).unwrap());
    assert!(!first.delete([7; 16]).unwrap());
    assert_eq!(first.meta([7; 16]).unwrap(), None);
    assert_eq!(first.chunk([7; 16], 0).unwrap(), None);
    assert_eq!(first.total_bytes().unwrap(), 0);
}

#[test]
fn redis_quotas_hold_across_nodes_and_a_blob_redis_dropped_is_settled_by_the_sweep() {
    use crate::store::redis_store::Redis;
    let (first, options) = redis_blobs();
    let second = RedisBlobs::on(std::sync::Arc::new(
        Redis::connect(options.clone()).unwrap(),
    ))
    .unwrap();
    let q = Quota {
        account_max: 10,
        total_max: 1_000,
    };
    assert_eq!(
        first.begin_within([1; 16], meta_of(6), q).unwrap(),
        Begin::Started
    );
    assert_eq!(
        second.begin_within([2; 16], meta_of(6), q).unwrap(),
        Begin::AccountFull { stored: 6 }
    );
    assert_eq!(
        second.begin_within([1; 16], meta_of(1), q).unwrap(),
        Begin::IdTaken
    );
    // Every key of the blob carries an expiry (the backstop).
    let redis = Redis::connect(options).unwrap();
    let meta_key = format!(
        "{}:m",
        redis.tagged(&format!("b:{}", hex::encode([1u8; 16])))
    );
    let mut c = redis.writer();
    let key = meta_key.clone();
    let ttl: i64 = redis
        .run(async move { ::redis::cmd("PTTL").arg(key).query_async(&mut c).await })
        .unwrap();
    assert!(ttl > 0, "expiry {ttl}");
    // Dropped by Redis rather than swept: the next sweep gives the bytes back.
    let mut c = redis.writer();
    let _: i64 = redis
        .run(async move { ::redis::cmd("DEL").arg(meta_key).query_async(&mut c).await })
        .unwrap();
    assert_eq!(second.meta([1; 16]).unwrap(), None);
    assert_eq!(second.account_bytes(&[1; 32]).unwrap(), 6);
    assert_eq!(second.sweep(0, 0).unwrap(), 0);
    assert_eq!(first.account_bytes(&[1; 32]).unwrap(), 0);
    assert_eq!(first.total_bytes().unwrap(), 0);
    assert_eq!(
        second.begin_within([2; 16], meta_of(6), q).unwrap(),
        Begin::Started
    );
}

#[test]
fn corrupt_redis_metadata_is_a_typed_error() {
    use crate::store::redis_store::Redis;
    let (s, options) = redis_blobs();
    let redis = Redis::connect(options).unwrap();
    let key = format!(
        "{}:m",
        redis.tagged(&format!("b:{}", hex::encode([5u8; 16])))
    );
    let mut c = redis.writer();
    let _: i64 = redis
        .run(async move {
            ::redis::cmd("HSET")
                .arg(key)
                .arg("m")
                .arg(&b"short"[..])
                .query_async(&mut c)
                .await
        })
        .unwrap();
    assert!(matches!(s.meta([5; 16]), Err(StoreError::Corrupt(_))));
    assert!(matches!(
        s.put_chunk([5; 16], 0, b"x"),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(s.complete([5; 16]), Err(StoreError::Corrupt(_))));
}
