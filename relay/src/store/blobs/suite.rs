//! The test-suite every [`BlobStore`](super::BlobStore) implementation runs:
//! `blob_store_suite!(module_name, make_expr)` where `make_expr` gives `(guard, store)`.

macro_rules! blob_store_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            #![allow(
                clippy::unwrap_used,
                clippy::expect_used,
                clippy::panic,
                clippy::indexing_slicing
            )]
            use crate::store::blobs::*;
            use sha2::{Digest, Sha256};

            fn meta(size: u64, cap: &[u8; 32], created_at: u64, expires_at: u64) -> BlobMeta {
                BlobMeta {
                    size,
                    capability_hash: Sha256::digest(cap).into(),
                    owner: [9; 36],
                    expires_at,
                    created_at,
                }
            }

            fn body(len: usize) -> Vec<u8> {
                (0..len).map(|i| (i % 251) as u8).collect()
            }

            fn upload(s: &dyn BlobStore, id: [u8; 16], data: &[u8]) {
                for (i, c) in data.chunks(BLOB_CHUNK).enumerate() {
                    assert_eq!(s.put_chunk(id, i as u32, c).unwrap(), ChunkPut::Stored);
                }
            }

            #[test]
            fn a_200_kib_blob_round_trips() {
                let (_g, s) = $make;
                let data = body(200 * 1024);
                let m = meta(data.len() as u64, &[1; 32], 10, 1_000);
                assert_eq!(m.chunk_count(), 4);
                assert!(s.begin([1; 16], m).unwrap());
                assert!(!s.begin([1; 16], m).unwrap(), "an id is used once");
                // In reverse order, with one chunk sent twice.
                let chunks: Vec<&[u8]> = data.chunks(BLOB_CHUNK).collect();
                for (i, c) in chunks.iter().enumerate().rev() {
                    assert_eq!(s.put_chunk([1; 16], i as u32, c).unwrap(), ChunkPut::Stored);
                }
                assert_eq!(
                    s.put_chunk([1; 16], 1, chunks[1]).unwrap(),
                    ChunkPut::Stored
                );
                assert!(s.complete([1; 16]).unwrap());
                assert!(s.complete([1; 16]).unwrap(), "completing twice is fine");
                assert_eq!(s.meta([1; 16]).unwrap(), Some((m, true)));
                let mut back = Vec::new();
                for i in 0..m.chunk_count() as u32 {
                    back.extend(s.chunk([1; 16], i).unwrap().unwrap());
                }
                assert_eq!(back, data);
                assert_eq!(s.chunk([1; 16], 4).unwrap(), None);
                assert_eq!(s.total_bytes().unwrap(), 200 * 1024);
                assert_eq!(
                    s.put_chunk([1; 16], 0, chunks[0]).unwrap(),
                    ChunkPut::AlreadyComplete
                );
            }

            #[test]
            fn chunks_must_fit_the_declared_size() {
                let (_g, s) = $make;
                let m = meta(BLOB_CHUNK as u64 + 10, &[1; 32], 10, 1_000);
                assert!(s.begin([2; 16], m).unwrap());
                assert_eq!(
                    s.put_chunk([2; 16], 0, &[0; 10]).unwrap(),
                    ChunkPut::WrongLength {
                        expected: BLOB_CHUNK
                    }
                );
                assert_eq!(
                    s.put_chunk([2; 16], 1, &[0; 11]).unwrap(),
                    ChunkPut::WrongLength { expected: 10 }
                );
                assert_eq!(
                    s.put_chunk([2; 16], 2, &[0; 10]).unwrap(),
                    ChunkPut::OutOfRange
                );
                assert_eq!(
                    s.put_chunk([2; 16], u32::MAX, &[0; 10]).unwrap(),
                    ChunkPut::OutOfRange
                );
                assert_eq!(
                    s.put_chunk([3; 16], 0, &[0; 10]).unwrap(),
                    ChunkPut::UnknownBlob
                );
                assert!(!s.complete([3; 16]).unwrap());
                assert_eq!(s.meta([3; 16]).unwrap(), None);
            }

            #[test]
            fn an_incomplete_blob_is_not_complete() {
                let (_g, s) = $make;
                let data = body(3 * BLOB_CHUNK + 1);
                let m = meta(data.len() as u64, &[1; 32], 10, 1_000);
                s.begin([4; 16], m).unwrap();
                let chunks: Vec<&[u8]> = data.chunks(BLOB_CHUNK).collect();
                for i in [0usize, 1, 3] {
                    s.put_chunk([4; 16], i as u32, chunks[i]).unwrap();
                }
                assert!(!s.complete([4; 16]).unwrap());
                assert_eq!(s.meta([4; 16]).unwrap(), Some((m, false)));
                s.put_chunk([4; 16], 2, chunks[2]).unwrap();
                assert!(s.complete([4; 16]).unwrap());
                assert_eq!(s.meta([4; 16]).unwrap(), Some((m, true)));
            }

            #[test]
            fn an_empty_blob_completes_at_once() {
                let (_g, s) = $make;
                let m = meta(0, &[1; 32], 10, 1_000);
                s.begin([5; 16], m).unwrap();
                assert_eq!(s.put_chunk([5; 16], 0, &[]).unwrap(), ChunkPut::OutOfRange);
                assert!(s.complete([5; 16]).unwrap());
            }

            #[test]
            fn only_the_right_capability_matches() {
                let (_g, s) = $make;
                let m = meta(1, &[7; 32], 10, 1_000);
                s.begin([6; 16], m).unwrap();
                let (stored, _) = s.meta([6; 16]).unwrap().unwrap();
                assert!(capability_matches(&stored, &[7; 32]));
                assert!(!capability_matches(&stored, &[8; 32]));
                let mut near = [7u8; 32];
                near[31] ^= 1;
                assert!(!capability_matches(&stored, &near));
                assert!(!capability_matches(&stored, &[7; 31]));
                assert!(!capability_matches(&stored, &[7; 33]));
                assert!(!capability_matches(&stored, &[]));
            }

            #[test]
            fn sweep_removes_expired_and_stale_incomplete_only() {
                let (_g, s) = $make;
                let data = body(BLOB_CHUNK + 5);
                // (id, created_at, expires_at, complete)
                let cases = [
                    ([10; 16], 10, 90, true),   // expired
                    ([11; 16], 10, 500, true),  // old but complete and live: kept
                    ([12; 16], 10, 500, false), // stale incomplete
                    ([13; 16], 60, 500, false), // recent incomplete: kept
                    ([14; 16], 60, 100, false), // expired (exactly now)
                ];
                for (id, created, expires, complete) in cases {
                    s.begin(id, meta(data.len() as u64, &[1; 32], created, expires))
                        .unwrap();
                    upload(
                        &s,
                        id,
                        &data[..if complete { data.len() } else { BLOB_CHUNK }],
                    );
                    if complete {
                        assert!(s.complete(id).unwrap());
                    }
                }
                assert_eq!(s.sweep(100, 50).unwrap(), 3);
                for (id, _, _, _) in cases {
                    let kept = id == [11; 16] || id == [13; 16];
                    assert_eq!(s.meta(id).unwrap().is_some(), kept, "{id:?}");
                    assert_eq!(s.chunk(id, 0).unwrap().is_some(), kept, "{id:?}");
                }
                assert_eq!(s.total_bytes().unwrap(), 2 * data.len() as u64);
                assert_eq!(s.sweep(100, 50).unwrap(), 0);
            }

            #[test]
            fn delete_removes_the_blob_and_its_chunks() {
                let (_g, s) = $make;
                let data = body(2 * BLOB_CHUNK);
                s.begin([20; 16], meta(data.len() as u64, &[1; 32], 10, 1_000))
                    .unwrap();
                upload(&s, [20; 16], &data);
                assert!(s.complete([20; 16]).unwrap());
                s.begin([21; 16], meta(3, &[1; 32], 10, 1_000)).unwrap();
                assert!(s.delete([20; 16]).unwrap());
                assert!(!s.delete([20; 16]).unwrap());
                assert_eq!(s.meta([20; 16]).unwrap(), None);
                assert_eq!(s.chunk([20; 16], 0).unwrap(), None);
                assert_eq!(s.chunk([20; 16], 1).unwrap(), None);
                assert_eq!(s.total_bytes().unwrap(), 3);
                // The id can be used again, afresh.
                assert!(s.begin([20; 16], meta(3, &[1; 32], 10, 1_000)).unwrap());
                assert!(!s.complete([20; 16]).unwrap());
            }

            #[test]
            fn quotas_refuse_past_the_caps_and_deletion_gives_the_bytes_back() {
                let (_g, s) = $make;
                let q = Quota {
                    account_max: 100,
                    total_max: 150,
                };
                let mut a = meta(60, &[1; 32], 10, 1_000);
                a.owner = [1; 36];
                let mut b = meta(60, &[1; 32], 10, 1_000);
                b.owner = [2; 36];
                assert_eq!(s.begin_within([30; 16], a, q).unwrap(), Begin::Started);
                // A second blob of account 1 would make 120 > 100.
                assert_eq!(
                    s.begin_within([31; 16], a, q).unwrap(),
                    Begin::AccountFull { stored: 60 }
                );
                assert_eq!(s.meta([31; 16]).unwrap(), None, "nothing recorded");
                // Account 2 still fits; then the relay is at 120 and 60 more do not fit.
                assert_eq!(s.begin_within([32; 16], b, q).unwrap(), Begin::Started);
                b.size = 40;
                assert_eq!(s.begin_within([33; 16], b, q).unwrap(), Begin::RelayFull);
                assert_eq!(s.begin_within([30; 16], a, q).unwrap(), Begin::IdTaken);
                assert_eq!(s.account_bytes(&[1; 32]).unwrap(), 60);
                assert_eq!(s.account_bytes(&[2; 32]).unwrap(), 60);
                assert_eq!(s.total_bytes().unwrap(), 120);
                // Deleting (or expiring) gives the bytes back.
                assert!(s.delete([30; 16]).unwrap());
                assert_eq!(s.account_bytes(&[1; 32]).unwrap(), 0);
                assert_eq!(s.begin_within([31; 16], a, q).unwrap(), Begin::Started);
                assert_eq!(s.sweep(1_000, 0).unwrap(), 2);
                assert_eq!(s.total_bytes().unwrap(), 0);
                assert_eq!(s.account_bytes(&[2; 32]).unwrap(), 0);
                assert_eq!(s.begin_within([33; 16], b, q).unwrap(), Begin::Started);
            }
        }
    };
}
