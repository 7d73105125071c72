//! Unit tests of the sled store: the shared suite, and what survives reopening the database.

const Q10: crate::store::Quotas = crate::store::Quotas::queue_len(10);

use super::retry_open as retry;

relay_store_suite!(suite, {
    let dir = tempfile::tempdir().unwrap();
    let store = super::super::SledStore::open(dir.path()).unwrap();
    (dir, store)
});

#[test]
fn acknowledged_envelopes_survive_reopen() {
    use crate::store::{DeviceId, Envelope, MailboxStore};
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceId {
        account: [1; 32],
        device: 1,
    };
    let b = DeviceId {
        account: [2; 32],
        device: 1,
    };
    {
        let s = retry(|| super::SledStore::open(dir.path()));
        let e = Envelope {
            recipient: b,
            share: a,
            client_id: [7; 16],
            body: b"sealed".to_vec(),
            received_at: 5,
        };
        s.enqueue(&[e], &Q10).unwrap();
        s.flush().unwrap();
        // Dropped without any shutdown.
    }
    let s = retry(|| super::SledStore::open(dir.path()));
    let q = s.fetch(&b, 0, 10).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].envelope.body, b"sealed");
}

#[test]
fn mailbox_usage_and_sender_shares_are_rebuilt_at_open() {
    use crate::store::usage::{Count, ENVELOPE_OVERHEAD};
    use crate::store::{DeviceId, Envelope, MailboxStore, Quotas, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let d = |a: u8| DeviceId {
        account: [a; 32],
        device: 1,
    };
    let e = |from: u8, id: u8| Envelope {
        recipient: d(2),
        share: d(from),
        client_id: [id; 16],
        body: vec![id; 100],
        received_at: 1,
    };
    let one = 100 + ENVELOPE_OVERHEAD;
    let q = Quotas {
        share_len: 2,
        ..Quotas::UNLIMITED
    };
    {
        let s = retry(|| super::SledStore::open(dir.path()));
        s.enqueue(&[e(1, 1)], &q).unwrap();
        s.enqueue(&[e(1, 2)], &q).unwrap();
        s.enqueue(&[e(3, 3)], &q).unwrap();
        s.flush().unwrap();
    }
    let s = retry(|| super::SledStore::open(dir.path()));
    assert_eq!(s.mailbox_bytes().unwrap(), 3 * one);
    assert_eq!(s.account_mailbox_bytes(&[2; 32]).unwrap(), 3 * one);
    assert_eq!(
        s.share_usage(&d(2), &[1; 32]).unwrap(),
        Count {
            envelopes: 2,
            bytes: 2 * one
        }
    );
    // The share used before the restart still counts...
    assert!(matches!(
        s.enqueue(&[e(1, 4)], &q),
        Err(StoreError::SenderQuota(_))
    ));
    // ...and is released by acknowledgements after it.
    let seqs: Vec<u64> = s
        .fetch(&d(2), 0, 10)
        .unwrap()
        .iter()
        .map(|x| x.seq)
        .collect();
    assert_eq!(s.ack(&d(2), &seqs).unwrap(), 3);
    assert_eq!(s.mailbox_bytes().unwrap(), 0);
    assert!(s.enqueue(&[e(1, 4)], &q).unwrap()[0].fresh);
}

#[test]
fn records_of_the_earlier_layout_are_read_counted_expired_and_acknowledged() {
    use crate::store::usage::{Count, ENVELOPE_OVERHEAD};
    use crate::store::{DeviceId, Envelope, MailboxStore, Quotas};
    use hush_proto::Message;
    let dir = tempfile::tempdir().unwrap();
    let d = |a: u8| DeviceId {
        account: [a; 32],
        device: 1,
    };
    let legacy = |id: u8, at: u64| {
        hush_proto::relay::StoredEnvelope {
            sender_account: vec![1; 32],
            sender_device: 1,
            client_id: vec![id; 16],
            body: vec![id; 100],
            received_at: at,
        }
        .encode_to_vec()
    };
    {
        // A database written before the current layout: protobuf records.
        let db = retry(|| super::open_db(dir.path()));
        let mail = db.open_tree("mail").unwrap();
        mail.insert(super::records::mail_key(&d(2), 1), legacy(1, 10))
            .unwrap();
        mail.insert(super::records::mail_key(&d(2), 2), legacy(2, 1_000))
            .unwrap();
        mail.insert(super::records::mail_key(&d(3), 1), legacy(3, 1_000))
            .unwrap();
        db.flush().unwrap();
    }
    let s = retry(|| super::SledStore::open(dir.path()));
    let one = 100 + ENVELOPE_OVERHEAD;
    assert_eq!(s.mailbox_bytes().unwrap(), 3 * one);
    assert_eq!(
        s.share_usage(&d(2), &[1; 32]).unwrap(),
        Count {
            envelopes: 2,
            bytes: 2 * one
        }
    );
    let q = s.fetch(&d(2), 0, 10).unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!(q[0].envelope.share, d(1));
    assert_eq!(q[0].envelope.client_id, [1; 16]);
    assert_eq!(q[0].envelope.body, vec![1; 100]);
    assert_eq!(q[0].envelope.received_at, 10);
    // A retry of a queued legacy envelope is recognised.
    let retry_of = Envelope {
        recipient: d(2),
        share: d(1),
        client_id: [2; 16],
        body: vec![2; 100],
        received_at: 2_000,
    };
    let again = s.enqueue(&[retry_of], &Quotas::UNLIMITED).unwrap();
    assert!(!again[0].fresh);
    assert_eq!(again[0].seq, 2);
    // Expiry, acknowledgement and purge give their bytes back; new records mix in.
    assert_eq!(s.sweep(100).unwrap(), 1);
    assert_eq!(s.mailbox_bytes().unwrap(), 2 * one);
    let fresh = Envelope {
        recipient: d(2),
        share: d(4),
        client_id: [4; 16],
        body: vec![4; 10],
        received_at: 2_000,
    };
    assert!(s.enqueue(&[fresh], &Quotas::UNLIMITED).unwrap()[0].fresh);
    assert_eq!(s.mailbox_bytes().unwrap(), 2 * one + 10 + ENVELOPE_OVERHEAD);
    let seqs: Vec<u64> = s
        .fetch(&d(2), 0, 10)
        .unwrap()
        .iter()
        .map(|x| x.seq)
        .collect();
    assert_eq!(seqs.len(), 2);
    assert_eq!(s.ack(&d(2), &seqs).unwrap(), 2);
    assert_eq!(s.purge(&d(3)).unwrap(), 1);
    assert_eq!(s.mailbox_bytes().unwrap(), 0);
    assert_eq!(s.queue_usage(&d(2)).unwrap(), Count::default());
}

#[test]
fn sequence_numbers_never_repeat_after_a_crash_lost_unflushed_envelopes() {
    use crate::store::{DeviceId, Envelope, MailboxStore};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        DeviceId {
            account: [1; 32],
            device: 1,
        },
        DeviceId {
            account: [2; 32],
            device: 1,
        },
    );
    let e = |id: u8| Envelope {
        recipient: b,
        share: a,
        client_id: [id; 16],
        body: vec![id],
        received_at: 1,
    };
    let (kept, delivered) = {
        let s = retry(|| super::SledStore::open(dir.path()));
        let kept = s.enqueue(&[e(1)], &Q10).unwrap()[0].seq;
        s.flush().unwrap();
        // Written and delivered live, but (below) lost in a crash before any flush.
        (kept, s.enqueue(&[e(2)], &Q10).unwrap()[0].seq)
    };
    {
        // Undo the second write as a crash would have: its record is gone.
        let db = retry(|| super::open_db(dir.path()));
        let mail = db.open_tree("mail").unwrap();
        mail.remove(super::records::mail_key(&b, delivered))
            .unwrap();
        db.flush().unwrap();
    }
    let s = retry(|| super::SledStore::open(dir.path()));
    assert_eq!(
        s.queue_len(&b).unwrap(),
        1,
        "counters rebuilt from the records"
    );
    assert_eq!(s.fetch(&b, 0, 10).unwrap()[0].seq, kept);
    let next = s.enqueue(&[e(3)], &Q10).unwrap()[0].seq;
    assert!(next > delivered, "a sequence number was given twice");
    // The recent-send index was rebuilt from what is queued: a retry is still a no-op.
    assert!(!s.enqueue(&[e(1)], &Q10).unwrap()[0].fresh);
}

#[test]
fn a_send_cut_short_by_a_crash_is_completed_by_its_retry_without_duplicates() {
    use crate::store::{DeviceId, Envelope, MailboxStore};
    let dir = tempfile::tempdir().unwrap();
    let sender = DeviceId {
        account: [1; 32],
        device: 1,
    };
    let to = |n: u8| DeviceId {
        account: [n; 32],
        device: 1,
    };
    let send: Vec<Envelope> = (2..5)
        .map(|n| Envelope {
            recipient: to(n),
            share: sender,
            client_id: [7; 16],
            body: vec![n],
            received_at: 1,
        })
        .collect();
    let first = {
        let s = retry(|| super::SledStore::open(dir.path()));
        let out = s.enqueue(&send, &Q10).unwrap();
        assert!(out.iter().all(|e| e.fresh));
        s.flush().unwrap();
        out
    };
    {
        // A crash kept only the first envelope of the (unanswered) send: sled recovers a
        // prefix of its log.
        let db = retry(|| super::open_db(dir.path()));
        let mail = db.open_tree("mail").unwrap();
        for (e, q) in send.iter().zip(&first).skip(1) {
            mail.remove(super::records::mail_key(&e.recipient, q.seq))
                .unwrap();
        }
        db.flush().unwrap();
    }
    let s = retry(|| super::SledStore::open(dir.path()));
    let retried = s.enqueue(&send, &Q10).unwrap();
    assert!(!retried[0].fresh, "the kept envelope is not queued twice");
    assert_eq!(retried[0].seq, first[0].seq);
    assert!(
        retried[1].fresh && retried[2].fresh,
        "the lost ones are queued"
    );
    for n in 2..5 {
        assert_eq!(s.queue_len(&to(n)).unwrap(), 1);
    }
    // A third attempt changes nothing.
    assert!(s.enqueue(&send, &Q10).unwrap().iter().all(|e| !e.fresh));
}
