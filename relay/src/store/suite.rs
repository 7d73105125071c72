//! The test-suite every relay storage implementation must pass:
//! `relay_store_suite!(module_name, make_expr)` where `make_expr` gives `(guard, store)`.

macro_rules! relay_store_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            #![allow(
                clippy::unwrap_used,
                clippy::expect_used,
                clippy::panic,
                clippy::indexing_slicing
            )]
            use crate::store::*;
            use std::collections::BTreeSet;
            use std::sync::Arc;

            fn dev(a: u8, d: u32) -> DeviceId {
                DeviceId {
                    account: [a; 32],
                    device: d,
                }
            }

            fn env(to: DeviceId, from: DeviceId, id: u8, at: u64) -> Envelope {
                Envelope {
                    recipient: to,
                    share: from,
                    client_id: [id; 16],
                    body: vec![id; 40],
                    received_at: at,
                }
            }

            #[test]
            fn device_lists_only_move_forward() {
                let (_g, s) = $make;
                assert_eq!(s.device_list(&[1; 32]).unwrap(), None);
                s.put_device_list(&[1; 32], 1, b"v1").unwrap();
                s.put_device_list(&[1; 32], 3, b"v3").unwrap();
                assert!(matches!(
                    s.put_device_list(&[1; 32], 2, b"v2"),
                    Err(StoreError::StaleDeviceList {
                        stored: 3,
                        offered: 2
                    })
                ));
                assert!(s.put_device_list(&[1; 32], 3, b"other v3").is_err());
                assert_eq!(s.device_list(&[1; 32]).unwrap(), Some((3, b"v3".to_vec())));
            }

            #[test]
            fn pre_keys_are_handed_out_once_then_last_resort() {
                let (_g, s) = $make;
                let d = dev(1, 1);
                assert_eq!(s.claim_pre_keys(&d, true).unwrap(), None);
                let up = PreKeyUpload {
                    signed_pre_key: b"spk".to_vec(),
                    last_resort_kem_pre_key: b"lr".to_vec(),
                    one_time: vec![(1, b"o1".to_vec()), (2, b"o2".to_vec())],
                    kem: vec![(3, b"k3".to_vec())],
                };
                s.publish_pre_keys(&d, up).unwrap();
                let c1 = s.claim_pre_keys(&d, true).unwrap().unwrap();
                assert_eq!(
                    (
                        c1.one_time.as_deref(),
                        c1.kem.as_slice(),
                        c1.kem_is_last_resort
                    ),
                    (Some(&b"o1"[..]), &b"k3"[..], false)
                );
                assert_eq!((c1.one_time_left, c1.kem_left), (1, 0));
                let c2 = s.claim_pre_keys(&d, true).unwrap().unwrap();
                assert_eq!(
                    (
                        c2.one_time.as_deref(),
                        c2.kem.as_slice(),
                        c2.kem_is_last_resort
                    ),
                    (Some(&b"o2"[..]), &b"lr"[..], true)
                );
                let c3 = s.claim_pre_keys(&d, true).unwrap().unwrap();
                assert_eq!(c3.one_time, None);
                assert_eq!(c3.signed_pre_key, b"spk");
            }

            #[test]
            fn fifty_concurrent_claims_never_share_a_key() {
                let (_g, s) = $make;
                let s = Arc::new(s);
                let d = dev(2, 1);
                let up = PreKeyUpload {
                    signed_pre_key: b"spk".to_vec(),
                    last_resort_kem_pre_key: b"lr".to_vec(),
                    one_time: (0..30u32).map(|i| (i, i.to_be_bytes().to_vec())).collect(),
                    kem: (100..130u32)
                        .map(|i| (i, i.to_be_bytes().to_vec()))
                        .collect(),
                };
                s.publish_pre_keys(&d, up).unwrap();
                let handles: Vec<_> = (0..50)
                    .map(|_| {
                        let s = Arc::clone(&s);
                        std::thread::spawn(move || s.claim_pre_keys(&d, true).unwrap().unwrap())
                    })
                    .collect();
                let claims: Vec<Claimed> = handles.into_iter().map(|h| h.join().unwrap()).collect();
                let otks: Vec<_> = claims.iter().filter_map(|c| c.one_time.clone()).collect();
                let distinct: BTreeSet<_> = otks.iter().cloned().collect();
                assert_eq!(otks.len(), 30, "every one-time key handed out");
                assert_eq!(distinct.len(), 30, "no one-time key handed out twice");
                let kems: Vec<_> = claims
                    .iter()
                    .filter(|c| !c.kem_is_last_resort)
                    .map(|c| c.kem.clone())
                    .collect();
                assert_eq!(kems.iter().cloned().collect::<BTreeSet<_>>().len(), 30);
                assert_eq!(claims.iter().filter(|c| c.kem_is_last_resort).count(), 20);
            }

            #[test]
            fn queues_keep_order_and_dedupe_retries() {
                let (_g, s) = $make;
                let (a, b, c) = (dev(1, 1), dev(2, 1), dev(2, 2));
                let seqs = s
                    .enqueue(
                        &[env(b, a, 1, 10), env(c, a, 1, 10), env(b, a, 2, 11)],
                        &Quotas::queue_len(1000),
                    )
                    .unwrap();
                assert_eq!(seqs.len(), 3);
                assert!(seqs.iter().all(|e| e.fresh));
                // Each queue has its own sequence, gapless.
                assert!(seqs[0].seq >= 1);
                assert_eq!(seqs[1].seq, seqs[0].seq);
                assert_eq!(seqs[2].seq, seqs[0].seq + 1);
                // A retried send is a no-op and reports the same sequence number and first
                // acceptance time.
                let again = Enqueued {
                    seq: seqs[0].seq,
                    fresh: false,
                    received_at: 10,
                    prev: 0,
                    full: None,
                };
                // Each fresh envelope names the one before it in its queue.
                assert_eq!(seqs[2].prev, seqs[0].seq);
                assert_eq!(seqs[1].prev, seqs[0].prev);
                let big = Quotas::queue_len(1000);
                assert_eq!(s.enqueue(&[env(b, a, 1, 12)], &big).unwrap(), vec![again]);
                let q = s.fetch(&b, 0, 10).unwrap();
                assert_eq!(
                    q.iter()
                        .map(|x| x.envelope.client_id[0])
                        .collect::<Vec<_>>(),
                    vec![1, 2]
                );
                assert!(q[0].seq < q[1].seq);
                assert_eq!(s.fetch(&b, q[0].seq, 10).unwrap().len(), 1);
                assert_eq!(s.fetch(&b, 0, 1).unwrap().len(), 1);
                assert_eq!(s.queue_len(&c).unwrap(), 1);
                assert_eq!(s.ack(&b, &[q[0].seq, 999]).unwrap(), 1);
                assert_eq!(s.queue_len(&b).unwrap(), 1);
                // Still a no-op after the ack: the send id is remembered (`store::ids`).
                assert_eq!(s.enqueue(&[env(b, a, 1, 13)], &big).unwrap(), vec![again]);
                assert_eq!(s.queue_len(&b).unwrap(), 1);
                assert_eq!(s.purge(&b).unwrap(), 1);
                assert_eq!(s.queue_len(&b).unwrap(), 0);
                s.flush().unwrap();
            }

            #[test]
            fn concurrent_enqueues_give_each_queue_a_gapless_sequence() {
                let (_g, s) = $make;
                let s = Arc::new(s);
                let b = dev(2, 1);
                let handles: Vec<_> = (0..4u8)
                    .map(|t| {
                        let s = Arc::clone(&s);
                        std::thread::spawn(move || {
                            for i in 0..25u8 {
                                let mut e = env(b, dev(10 + t, 1), i, 1);
                                e.client_id[1] = t;
                                s.enqueue(&[e], &Quotas::queue_len(1000)).unwrap();
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().unwrap();
                }
                let q = s.fetch(&b, 0, 1000).unwrap();
                let first = q[0].seq;
                assert_eq!(
                    q.iter().map(|x| x.seq).collect::<Vec<_>>(),
                    (first..first + 100).collect::<Vec<u64>>()
                );
                assert_eq!(s.queue_len(&b).unwrap(), 100);
            }

            #[test]
            fn the_queue_cap_is_exact_leaves_a_full_device_out_and_spares_retries() {
                let (_g, s) = $make;
                let (a, b, c) = (dev(1, 1), dev(2, 1), dev(2, 2));
                let cap = Quotas::queue_len(3);
                let q = s
                    .enqueue(&[env(b, a, 1, 1), env(b, a, 2, 1), env(b, a, 3, 1)], &cap)
                    .unwrap();
                // Acking one in the middle frees exactly one place.
                assert_eq!(s.ack(&b, &[q[1].seq]).unwrap(), 1);
                assert_eq!(s.queue_len(&b).unwrap(), 2);
                s.enqueue(&[env(b, a, 4, 1)], &cap).unwrap();
                // b is full: a send to b and c reaches c and names b.
                let out = s.enqueue(&[env(c, a, 5, 1), env(b, a, 5, 1)], &cap).unwrap();
                assert!(out[0].fresh && out[0].full.is_none());
                assert_eq!(out[1].full, Some(Full::Queue));
                assert!(!out[1].fresh);
                assert_eq!(s.queue_len(&c).unwrap(), 1);
                assert_eq!(s.queue_len(&b).unwrap(), 3);
                // A send that reaches no device at all is refused and writes nothing.
                assert!(matches!(
                    s.enqueue(&[env(b, a, 6, 1)], &cap),
                    Err(StoreError::QueueFull(d)) if d == b
                ));
                // Its retry once there is room queues the left-out envelope (and only it).
                let first = s.fetch(&b, 0, 1).unwrap()[0].seq;
                s.ack(&b, &[first]).unwrap();
                let again = s.enqueue(&[env(c, a, 5, 1), env(b, a, 5, 1)], &cap).unwrap();
                assert!(!again[0].fresh && again[1].fresh);
                assert_eq!(s.queue_len(&c).unwrap(), 1);
                // A retry of something queued is not refused.
                assert!(!s.enqueue(&[env(b, a, 1, 1)], &cap).unwrap()[0].fresh);
                assert_eq!(s.queue_len(&b).unwrap(), 3);
                // The sweep and a purge keep the count right.
                assert_eq!(s.sweep(2).unwrap(), 4);
                assert_eq!(s.queue_len(&b).unwrap(), 0);
                s.enqueue(&[env(b, a, 7, 5)], &cap).unwrap();
                assert_eq!(s.purge(&b).unwrap(), 1);
                assert_eq!(s.queue_len(&b).unwrap(), 0);
                assert_eq!(s.mailbox_bytes().unwrap(), 0);
            }

            /// Bytes one `env` counts for (40-byte body).
            const ENV_BYTES: u64 = 40 + usage::ENVELOPE_OVERHEAD;

            #[test]
            fn one_sender_filling_its_share_of_a_queue_does_not_stop_another() {
                let (_g, s) = $make;
                let (a, a2, x, b) = (dev(1, 1), dev(1, 2), dev(3, 1), dev(2, 1));
                let q = Quotas {
                    share_len: 2,
                    ..Quotas::queue_len(100)
                };
                s.enqueue(&[env(b, a, 1, 1)], &q).unwrap();
                // The share is per label: another envelope under it counts against it too.
                s.enqueue(&[env(b, a2, 2, 1)], &q).unwrap();
                assert!(matches!(
                    s.enqueue(&[env(b, a, 3, 1)], &q),
                    Err(StoreError::SenderQuota(d)) if d == b
                ));
                // Another share still gets through.
                assert!(s.enqueue(&[env(b, x, 4, 1)], &q).unwrap()[0].fresh);
                assert_eq!(
                    s.share_usage(&b, &a.account).unwrap(),
                    usage::Count { envelopes: 2, bytes: 2 * ENV_BYTES }
                );
                // Acknowledging frees the share.
                let first = s.fetch(&b, 0, 1).unwrap()[0].seq;
                s.ack(&b, &[first]).unwrap();
                assert!(s.enqueue(&[env(b, a, 3, 1)], &q).unwrap()[0].fresh);
                // The byte share is checked too.
                let q = Quotas {
                    share_bytes: 3 * ENV_BYTES,
                    ..Quotas::queue_len(100)
                };
                assert!(s.enqueue(&[env(b, a, 5, 1)], &q).unwrap()[0].fresh);
                assert!(matches!(
                    s.enqueue(&[env(b, a, 6, 1)], &q),
                    Err(StoreError::SenderQuota(_))
                ));
            }

            #[test]
            fn byte_caps_per_queue_per_account_and_in_total_refuse_before_writing() {
                let (_g, s) = $make;
                let (a, b1, b2, c) = (dev(1, 1), dev(2, 1), dev(2, 2), dev(3, 1));
                // Queue bytes: two envelopes fit, the third does not.
                let q = Quotas {
                    queue_bytes: 2 * ENV_BYTES,
                    ..Quotas::UNLIMITED
                };
                s.enqueue(&[env(b1, a, 1, 1), env(b1, a, 2, 1)], &q).unwrap();
                assert!(matches!(
                    s.enqueue(&[env(b1, a, 3, 1)], &q),
                    Err(StoreError::QueueFull(_))
                ));
                assert_eq!(
                    s.queue_usage(&b1).unwrap(),
                    usage::Count { envelopes: 2, bytes: 2 * ENV_BYTES }
                );
                // Account bytes: over all of account 2's devices.
                let q = Quotas {
                    account_bytes: 3 * ENV_BYTES,
                    ..Quotas::UNLIMITED
                };
                assert!(matches!(
                    s.enqueue(&[env(b1, a, 4, 1), env(b2, a, 4, 1)], &q),
                    Err(StoreError::MailboxFull)
                ));
                assert_eq!(s.queue_len(&b1).unwrap(), 2, "nothing written");
                assert_eq!(s.queue_len(&b2).unwrap(), 0, "nothing written");
                s.enqueue(&[env(b2, a, 5, 1)], &q).unwrap();
                assert_eq!(s.account_mailbox_bytes(&[2; 32]).unwrap(), 3 * ENV_BYTES);
                // Another account still receives.
                s.enqueue(&[env(c, a, 6, 1)], &q).unwrap();
                // Total bytes.
                let q = Quotas {
                    total_bytes: 5 * ENV_BYTES,
                    ..Quotas::UNLIMITED
                };
                assert_eq!(s.mailbox_bytes().unwrap(), 4 * ENV_BYTES);
                s.enqueue(&[env(c, a, 7, 1)], &q).unwrap();
                assert!(matches!(
                    s.enqueue(&[env(c, a, 8, 1)], &q),
                    Err(StoreError::RelayFull)
                ));
                assert_eq!(s.mailbox_bytes().unwrap(), 5 * ENV_BYTES);
            }

            #[test]
            fn mailbox_counters_return_to_zero_after_acks_sweep_and_purge() {
                let (_g, s) = $make;
                let (a, x, b1, b2) = (dev(1, 1), dev(3, 1), dev(2, 1), dev(2, 2));
                let all = Quotas::UNLIMITED;
                let mut big = env(b1, a, 9, 100);
                big.body = vec![9; 1000];
                s.enqueue(&[env(b1, a, 1, 10), env(b2, a, 1, 10)], &all).unwrap();
                s.enqueue(&[env(b1, x, 2, 10), big], &all).unwrap();
                s.enqueue(&[env(b2, x, 3, 50)], &all).unwrap();
                assert_eq!(
                    s.mailbox_bytes().unwrap(),
                    4 * ENV_BYTES + 1000 + usage::ENVELOPE_OVERHEAD
                );
                // Acks (with unknown and repeated sequence numbers counted once).
                let seqs: Vec<u64> = s.fetch(&b1, 0, 10).unwrap().iter().map(|q| q.seq).collect();
                assert_eq!(s.ack(&b1, &[seqs[0], seqs[0], 999_999]).unwrap(), 1);
                assert_eq!(s.ack(&b1, &seqs).unwrap(), 2);
                assert_eq!(s.queue_usage(&b1).unwrap(), usage::Count::default());
                assert_eq!(s.share_usage(&b1, &x.account).unwrap(), usage::Count::default());
                // The sweep takes the old one of b2, a purge the rest.
                assert_eq!(s.sweep(20).unwrap(), 1);
                assert_eq!(s.account_mailbox_bytes(&[2; 32]).unwrap(), ENV_BYTES);
                assert_eq!(s.purge(&b2).unwrap(), 1);
                assert_eq!(s.mailbox_bytes().unwrap(), 0);
                assert_eq!(s.account_mailbox_bytes(&[2; 32]).unwrap(), 0);
                assert_eq!(s.share_usage(&b2, &x.account).unwrap(), usage::Count::default());
            }

            #[test]
            fn a_bundle_without_one_time_keys_takes_none() {
                let (_g, s) = $make;
                let d = dev(4, 1);
                s.publish_pre_keys(
                    &d,
                    PreKeyUpload {
                        signed_pre_key: b"spk".to_vec(),
                        last_resort_kem_pre_key: b"lr".to_vec(),
                        one_time: vec![(1, b"o1".to_vec())],
                        kem: vec![(2, b"k2".to_vec())],
                    },
                )
                .unwrap();
                let c = s.claim_pre_keys(&d, false).unwrap().unwrap();
                assert_eq!(c.one_time, None);
                assert!(c.kem_is_last_resort);
                assert_eq!(c.kem, b"lr");
                assert_eq!(c.signed_pre_key, b"spk");
                assert_eq!((c.one_time_left, c.kem_left), (1, 1));
                assert_eq!(s.pre_key_counts(&d).unwrap(), (1, 1));
                let c = s.claim_pre_keys(&d, true).unwrap().unwrap();
                assert_eq!(c.one_time.as_deref(), Some(&b"o1"[..]));
            }

            #[test]
            fn accounts_are_created_once() {
                let (_g, s) = $make;
                s.create_account(&[5; 32], 1, b"v1").unwrap();
                assert!(matches!(
                    s.create_account(&[5; 32], 1, b"again"),
                    Err(StoreError::AccountExists)
                ));
                assert_eq!(s.device_list(&[5; 32]).unwrap(), Some((1, b"v1".to_vec())));
            }

            #[test]
            fn forgetting_a_device_removes_its_keys_endpoint_and_queue() {
                let (_g, s) = $make;
                let (a, b) = (dev(1, 1), dev(2, 1));
                s.publish_pre_keys(
                    &b,
                    PreKeyUpload {
                        signed_pre_key: b"spk".to_vec(),
                        last_resort_kem_pre_key: b"lr".to_vec(),
                        one_time: vec![(1, b"o1".to_vec())],
                        kem: vec![(2, b"k2".to_vec())],
                    },
                )
                .unwrap();
                assert_eq!(s.pre_key_counts(&b).unwrap(), (1, 1));
                let plain = crate::push::Registration::webhook("https://push.example/x");
                s.set_push_endpoint(&b, Some(&plain)).unwrap();
                assert_eq!(s.push_endpoint(&b).unwrap(), Some(plain));
                // A WebPush subscription keeps its keys; registering again replaces it whole.
                let web_push = crate::push::Registration {
                    url: "https://up.example/wp/abc".into(),
                    keys: Some(crate::push::webpush::tests::sample_keys()),
                };
                s.set_push_endpoint(&b, Some(&web_push)).unwrap();
                assert_eq!(s.push_endpoint(&b).unwrap(), Some(web_push));
                let access = DeliveryAccess {
                    token: Some([7; 16]),
                    anyone: false,
                };
                s.set_delivery_access(&b, Some(access)).unwrap();
                s.enqueue(&[env(b, a, 1, 1)], &Quotas::queue_len(1000)).unwrap();
                assert_eq!(s.forget_device(&b).unwrap(), 1);
                assert_eq!(s.delivery_access(&b).unwrap(), None);
                assert_eq!(s.pre_key_counts(&b).unwrap(), (0, 0));
                assert_eq!(s.claim_pre_keys(&b, true).unwrap(), None);
                assert_eq!(s.push_endpoint(&b).unwrap(), None);
                assert_eq!(s.fetch(&b, 0, 10).unwrap().len(), 0);
            }

            #[test]
            fn delivery_access_is_per_device_and_replaced_whole() {
                let (_g, s) = $make;
                let (b1, b2) = (dev(2, 1), dev(2, 2));
                assert_eq!(s.delivery_access(&b1).unwrap(), None);
                let token = DeliveryAccess {
                    token: Some([9; 16]),
                    anyone: false,
                };
                s.set_delivery_access(&b1, Some(token)).unwrap();
                assert_eq!(s.delivery_access(&b1).unwrap(), Some(token));
                assert_eq!(s.delivery_access(&b2).unwrap(), None);
                let open = DeliveryAccess {
                    token: None,
                    anyone: true,
                };
                s.set_delivery_access(&b1, Some(open)).unwrap();
                assert_eq!(s.delivery_access(&b1).unwrap(), Some(open));
                s.set_delivery_access(&b1, None).unwrap();
                assert_eq!(s.delivery_access(&b1).unwrap(), None);
            }

            fn holder(a: u8) -> Option<UsernameHolder> {
                Some(UsernameHolder {
                    account: [a; 32],
                    proof: vec![a; 64],
                })
            }

            #[test]
            fn usernames_are_first_come_first_served_and_a_rename_releases_the_old_one() {
                let (_g, s) = $make;
                assert_eq!(s.lookup_username("alice").unwrap(), None);
                s.claim_username("alice", &[1; 32], &[1; 64]).unwrap();
                assert_eq!(s.lookup_username("alice").unwrap(), holder(1));
                assert_eq!(s.username_of(&[1; 32]).unwrap().as_deref(), Some("alice"));
                // Taken: nothing of the refused claim is written.
                assert!(matches!(
                    s.claim_username("alice", &[2; 32], &[2; 64]),
                    Err(StoreError::UsernameTaken)
                ));
                assert_eq!(s.lookup_username("alice").unwrap(), holder(1));
                assert_eq!(s.username_of(&[2; 32]).unwrap(), None);
                // Claiming one's own name again is fine.
                s.claim_username("alice", &[1; 32], &[1; 64]).unwrap();
                // A refused claim does not release the claimant's current name.
                s.claim_username("bob", &[2; 32], &[2; 64]).unwrap();
                assert!(s.claim_username("alice", &[2; 32], &[2; 64]).is_err());
                assert_eq!(s.lookup_username("bob").unwrap(), holder(2));
                // A rename releases the old name, which another account can then take.
                s.claim_username("alicia", &[1; 32], &[1; 64]).unwrap();
                assert_eq!(s.lookup_username("alice").unwrap(), None);
                assert_eq!(s.lookup_username("alicia").unwrap(), holder(1));
                assert_eq!(s.username_of(&[1; 32]).unwrap().as_deref(), Some("alicia"));
                s.claim_username("alice", &[3; 32], &[3; 64]).unwrap();
                assert_eq!(s.lookup_username("alice").unwrap(), holder(3));
                // Release.
                assert_eq!(
                    s.release_username(&[1; 32]).unwrap().as_deref(),
                    Some("alicia")
                );
                assert_eq!(s.release_username(&[1; 32]).unwrap(), None);
                assert_eq!(s.lookup_username("alicia").unwrap(), None);
                assert_eq!(s.username_of(&[1; 32]).unwrap(), None);
                // Forgetting a device leaves its account's name alone.
                s.forget_device(&dev(3, 1)).unwrap();
                assert_eq!(s.lookup_username("alice").unwrap(), holder(3));
                s.flush().unwrap();
            }

            #[test]
            fn one_name_claimed_by_many_threads_at_once_has_exactly_one_winner() {
                let (_g, s) = $make;
                let s = Arc::new(s);
                let barrier = Arc::new(std::sync::Barrier::new(32));
                let handles: Vec<_> = (0..32u8)
                    .map(|a| {
                        let s = Arc::clone(&s);
                        let barrier = Arc::clone(&barrier);
                        std::thread::spawn(move || {
                            // Each account holds a name of its own first: the claim also
                            // releases it, in the same step.
                            s.claim_username(&format!("own{a}"), &[a; 32], &[a; 64])
                                .unwrap();
                            barrier.wait();
                            match s.claim_username("prize", &[a; 32], &[a; 64]) {
                                Ok(()) => Some(a),
                                Err(StoreError::UsernameTaken) => None,
                                Err(e) => panic!("{e}"),
                            }
                        })
                    })
                    .collect();
                let winners: Vec<u8> = handles
                    .into_iter()
                    .filter_map(|h| h.join().unwrap())
                    .collect();
                assert_eq!(winners.len(), 1, "winners: {winners:?}");
                let w = winners[0];
                assert_eq!(s.lookup_username("prize").unwrap(), holder(w));
                for a in 0..32u8 {
                    let own = format!("own{a}");
                    if a == w {
                        assert_eq!(s.lookup_username(&own).unwrap(), None);
                        assert_eq!(s.username_of(&[a; 32]).unwrap().as_deref(), Some("prize"));
                    } else {
                        assert_eq!(s.lookup_username(&own).unwrap(), holder(a));
                        assert_eq!(s.username_of(&[a; 32]).unwrap(), Some(own));
                    }
                }
            }

            #[test]
            fn concurrent_renames_keep_names_and_their_reverse_index_in_agreement() {
                let (_g, s) = $make;
                let s = Arc::new(s);
                let pool = ["n0", "n1", "n2", "n3", "n4"];
                let handles: Vec<_> = (0..8u8)
                    .map(|a| {
                        let s = Arc::clone(&s);
                        std::thread::spawn(move || {
                            for i in 0..60usize {
                                let name = pool[(i + usize::from(a)) % pool.len()];
                                match s.claim_username(name, &[a; 32], &[a; 64]) {
                                    Ok(()) | Err(StoreError::UsernameTaken) => {}
                                    Err(e) => panic!("{e}"),
                                }
                                if i % 7 == 3 {
                                    s.release_username(&[a; 32]).unwrap();
                                }
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().unwrap();
                }
                let mut held = BTreeSet::new();
                for a in 0..8u8 {
                    if let Some(n) = s.username_of(&[a; 32]).unwrap() {
                        assert_eq!(s.lookup_username(&n).unwrap(), holder(a));
                        assert!(held.insert(n), "two accounts hold one name");
                    }
                }
                for n in pool {
                    if let Some(h) = s.lookup_username(n).unwrap() {
                        assert_eq!(s.username_of(&h.account).unwrap().as_deref(), Some(n));
                    }
                }
            }

            #[test]
            fn sweep_deletes_what_is_older_than_the_ttl() {
                let (_g, s) = $make;
                let (a, b) = (dev(1, 1), dev(2, 1));
                let three = [env(b, a, 1, 10), env(b, a, 2, 20), env(b, a, 3, 30)];
                s.enqueue(&three, &Quotas::queue_len(1000))
                    .unwrap();
                assert_eq!(s.sweep(25).unwrap(), 2);
                let q = s.fetch(&b, 0, 10).unwrap();
                assert_eq!(q.len(), 1);
                assert_eq!(q[0].envelope.client_id[0], 3);
            }

            fn numbers(p: &LogPage) -> Vec<u64> {
                p.entries.iter().map(|(n, _)| *n).collect()
            }

            #[test]
            fn a_group_log_is_created_by_entry_one_and_guarded_by_its_write_check() {
                let (_g, s) = $make;
                let (slot, other) = ([7u8; 32], [8u8; 32]);
                let (check, wrong) = ([1u8; 32], [2u8; 32]);
                let caps = LogCaps::UNLIMITED;
                assert_eq!(s.group_log_read(&slot, 1, 10, 1 << 20).unwrap(), LogPage::default());
                assert_eq!(
                    s.group_log_append(&slot, &check, 2, b"two", &caps).unwrap(),
                    LogAppend::Conflict { head: 0 }
                );
                assert_eq!(
                    s.group_log_append(&slot, &check, 0, b"zero", &caps).unwrap(),
                    LogAppend::Conflict { head: 0 }
                );
                assert_eq!(
                    s.group_log_append(&slot, &check, 1, b"one", &caps).unwrap(),
                    LogAppend::Appended
                );
                assert_eq!(
                    s.group_log_append(&slot, &wrong, 2, b"forged", &caps).unwrap(),
                    LogAppend::Forbidden
                );
                assert_eq!(
                    s.group_log_append(&slot, &check, 1, b"again", &caps).unwrap(),
                    LogAppend::Conflict { head: 1 }
                );
                assert_eq!(
                    s.group_log_append(&slot, &check, 3, b"three", &caps).unwrap(),
                    LogAppend::Conflict { head: 1 }
                );
                assert_eq!(
                    s.group_log_append(&slot, &check, 2, b"\x00two\xff", &caps).unwrap(),
                    LogAppend::Appended
                );
                // Another slot is another log, with a check of its own.
                assert_eq!(
                    s.group_log_append(&other, &wrong, 1, b"x", &caps).unwrap(),
                    LogAppend::Appended
                );
                let page = s.group_log_read(&slot, 1, 10, 1 << 20).unwrap();
                assert_eq!(page.head, 2);
                assert_eq!(
                    page.entries,
                    vec![(1, b"one".to_vec()), (2, b"\x00two\xff".to_vec())]
                );
                let from_two = s.group_log_read(&slot, 2, 10, 1 << 20).unwrap();
                assert_eq!((from_two.head, numbers(&from_two)), (2, vec![2]));
                let from_zero = s.group_log_read(&slot, 0, 10, 1 << 20).unwrap();
                assert_eq!(numbers(&from_zero), vec![1, 2]);
                let beyond = s.group_log_read(&slot, 3, 10, 1 << 20).unwrap();
                assert_eq!((beyond.head, beyond.entries.len()), (2, 0));
                assert_eq!(s.group_log_bytes().unwrap(), 3 + 5 + 1);
            }

            #[test]
            fn group_log_reads_are_bounded_by_count_and_bytes() {
                let (_g, s) = $make;
                let (slot, check) = ([3u8; 32], [4u8; 32]);
                for n in 1..=5u64 {
                    let entry = vec![n as u8; 100];
                    assert_eq!(
                        s.group_log_append(&slot, &check, n, &entry, &LogCaps::UNLIMITED)
                            .unwrap(),
                        LogAppend::Appended
                    );
                }
                let two = s.group_log_read(&slot, 1, 2, 1 << 20).unwrap();
                assert_eq!((two.head, numbers(&two)), (5, vec![1, 2]));
                let by_bytes = s.group_log_read(&slot, 2, 10, 250).unwrap();
                assert_eq!(numbers(&by_bytes), vec![2, 3]);
                assert_eq!(by_bytes.entries[1].1, vec![3u8; 100]);
                // The first entry comes even when it alone is over the byte bound.
                let one = s.group_log_read(&slot, 4, 10, 10).unwrap();
                assert_eq!(numbers(&one), vec![4]);
                let rest = s.group_log_read(&slot, 4, 10, 1 << 20).unwrap();
                assert_eq!(numbers(&rest), vec![4, 5]);
            }

            #[test]
            fn group_log_caps_refuse_before_writing() {
                let (_g, s) = $make;
                let check = [9u8; 32];
                let caps = LogCaps {
                    entries: 2,
                    bytes: 25,
                    total_bytes: 40,
                };
                let a = [1u8; 32];
                assert_eq!(s.group_log_append(&a, &check, 1, &[1; 10], &caps).unwrap(), LogAppend::Appended);
                // Over the bytes of one log.
                assert!(matches!(
                    s.group_log_append(&a, &check, 2, &[2; 16], &caps),
                    Err(StoreError::GroupLogFull)
                ));
                assert_eq!(s.group_log_append(&a, &check, 2, &[2; 15], &caps).unwrap(), LogAppend::Appended);
                // Over the entries of one log.
                assert!(matches!(
                    s.group_log_append(&a, &check, 3, &[3; 1], &caps),
                    Err(StoreError::GroupLogFull)
                ));
                assert_eq!(s.group_log_read(&a, 1, 10, 1 << 20).unwrap().head, 2);
                // Over the relay's bytes (25 held), with a log of its own.
                let b = [2u8; 32];
                assert!(matches!(
                    s.group_log_append(&b, &check, 1, &[4; 16], &caps),
                    Err(StoreError::GroupLogsFull)
                ));
                assert_eq!(s.group_log_read(&b, 1, 10, 1 << 20).unwrap(), LogPage::default());
                assert_eq!(s.group_log_append(&b, &check, 1, &[4; 15], &caps).unwrap(), LogAppend::Appended);
                assert_eq!(s.group_log_bytes().unwrap(), 40);
            }

            #[test]
            fn concurrent_appends_of_one_number_have_exactly_one_winner() {
                let (_g, s) = $make;
                let s = Arc::new(s);
                let (slot, check) = ([5u8; 32], [6u8; 32]);
                for seq in 1..=3u64 {
                    let handles: Vec<_> = (0..16u8)
                        .map(|i| {
                            let s = Arc::clone(&s);
                            std::thread::spawn(move || {
                                let entry = vec![i; 20];
                                (
                                    i,
                                    s.group_log_append(
                                        &slot,
                                        &check,
                                        seq,
                                        &entry,
                                        &LogCaps::UNLIMITED,
                                    )
                                    .unwrap(),
                                )
                            })
                        })
                        .collect();
                    let outcomes: Vec<(u8, LogAppend)> =
                        handles.into_iter().map(|h| h.join().unwrap()).collect();
                    let winners: Vec<u8> = outcomes
                        .iter()
                        .filter(|(_, o)| *o == LogAppend::Appended)
                        .map(|(i, _)| *i)
                        .collect();
                    assert_eq!(winners.len(), 1, "one append of entry {seq} wins");
                    for (_, o) in &outcomes {
                        assert!(
                            *o == LogAppend::Appended || *o == LogAppend::Conflict { head: seq },
                            "{o:?}"
                        );
                    }
                    let page = s.group_log_read(&slot, seq, 1, 1 << 20).unwrap();
                    assert_eq!(page.head, seq);
                    assert_eq!(page.entries, vec![(seq, vec![winners[0]; 20])]);
                }
                // Racing creators with different checks: one log, one check.
                let fresh = [15u8; 32];
                let handles: Vec<_> = (0..16u8)
                    .map(|i| {
                        let s = Arc::clone(&s);
                        std::thread::spawn(move || {
                            s.group_log_append(&fresh, &[i; 32], 1, &[i], &LogCaps::UNLIMITED)
                                .unwrap()
                        })
                    })
                    .collect();
                let outcomes: Vec<LogAppend> = handles.into_iter().map(|h| h.join().unwrap()).collect();
                assert_eq!(outcomes.iter().filter(|o| **o == LogAppend::Appended).count(), 1);
                let page = s.group_log_read(&fresh, 1, 10, 1 << 20).unwrap();
                let winner = page.entries[0].1[0];
                assert_eq!(
                    s.group_log_append(&fresh, &[winner; 32], 2, b"next", &LogCaps::UNLIMITED)
                        .unwrap(),
                    LogAppend::Appended
                );
            }
        }
    };
}
