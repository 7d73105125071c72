//! Session healing (PROTOCOL.md §20) with a simulated clock: a device whose store was restored
//! from an old backup cannot decrypt what its contact sends, asks for it again on a fresh
//! session and gets it; the requests are gathered and rate-limited; answers are bounded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use hush_core::consts::{
    MAX_RETRY_IDS, RETRY_ANSWER_INTERVAL_MS, RETRY_REQUEST_INTERVAL_MS, SENT_LOG_MAX_AGE_MS,
};
use hush_core::device::{Device, pairwise_message_id};
use hush_core::error::{AuthError, Error, ProtocolError};
use hush_core::prekeys::PreKeyBundle;
use hush_core::store::kv::KvStore;
use hush_core::store::memory::MemoryKv;
use hush_proto::wire;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const T0: u64 = 1_000_000;
/// Past the gathering delay before a first request.
const GATHERED: u64 = 2_000;

fn bundle<S: KvStore>(d: &Device<S>) -> PreKeyBundle {
    let p = d.published_pre_keys().unwrap();
    PreKeyBundle(wire::PreKeyBundle {
        account_key: p.address.account.as_bytes().to_vec(),
        device_id: p.address.device_id,
        identity: Some(wire::DeviceIdentityKey {
            signing_key: p.identity.signing_key().to_vec(),
            dh_key: p.identity.dh_key().to_vec(),
        }),
        signed_pre_key: Some(p.signed_pre_key.clone()),
        one_time_pre_key: None,
        kem_pre_key: Some(p.last_resort_kem_pre_key.clone()),
    })
}

fn introduce<S: KvStore, T: KvStore>(a: &mut Device<S>, b: &Device<T>) {
    let acct = b.address().account;
    let list = b.device_list(&acct).unwrap().signed_bytes().to_vec();
    a.accept_device_list(&list, &acct, 0).unwrap();
}

struct Pair {
    rng: ChaCha20Rng,
    alice: Device<MemoryKv>,
    bob: Device<MemoryKv>,
}

impl Pair {
    /// Alice and Bob with a session each way that has seen a few round trips.
    fn talking() -> Self {
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let mut alice = Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap();
        let mut bob = Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap();
        introduce(&mut alice, &bob);
        introduce(&mut bob, &alice);
        alice.start_session(&bundle(&bob), &mut rng, T0).unwrap();
        let mut p = Self { rng, alice, bob };
        p.a_to_b(b"hello", T0);
        p.b_to_a(b"hi", T0 + 1);
        p
    }

    fn a_to_b(&mut self, m: &[u8], now: u64) {
        let bytes = self.alice_sends(m, now);
        let got = self
            .bob
            .decrypt(&self.alice.address(), &bytes, &mut self.rng, now)
            .unwrap();
        assert_eq!(got.received[0].plaintext.as_slice(), m);
    }

    fn b_to_a(&mut self, m: &[u8], now: u64) {
        let bytes = self.bob_sends(m, now);
        let got = self
            .alice
            .decrypt(&self.bob.address(), &bytes, &mut self.rng, now)
            .unwrap();
        assert_eq!(got.received[0].plaintext.as_slice(), m);
    }

    fn alice_sends(&mut self, m: &[u8], now: u64) -> Vec<u8> {
        let b = self.bob.address();
        self.alice.encrypt(&b, m, &mut self.rng, now).unwrap()
    }

    fn bob_sends(&mut self, m: &[u8], now: u64) -> Vec<u8> {
        let a = self.alice.address();
        self.bob.encrypt(&a, m, &mut self.rng, now).unwrap()
    }

    /// Replaces Bob's store by `backup`, as a restore would.
    fn restore_bob(&mut self, backup: MemoryKv) {
        self.bob = Device::open(backup).unwrap();
    }

    fn backup_bob(&mut self) -> MemoryKv {
        let bob = std::mem::replace(
            &mut self.bob,
            Device::create_account(MemoryKv::new(), &mut self.rng, T0).unwrap(),
        );
        let store = bob.into_store();
        let backup = store.clone();
        self.bob = Device::open(store).unwrap();
        backup
    }
}

#[test]
fn a_device_restored_from_an_old_backup_asks_again_and_gets_the_message_on_a_fresh_session() {
    let mut p = Pair::talking();
    let backup = p.backup_bob();
    // The conversation goes on past the backup: both ratchets move on.
    p.a_to_b(b"after the backup", T0 + 10);
    p.b_to_a(b"reply", T0 + 11);
    p.a_to_b(b"and again", T0 + 12);
    p.restore_bob(backup);

    let t = T0 + 100;
    let lost = p.alice_sends(b"sent to the restored device", t);
    let a = p.alice.address();
    let err = p.bob.decrypt(&a, &lost, &mut p.rng, t).err().unwrap();
    assert!(err.calls_for_retry(), "{err}");
    assert!(p.bob.note_undecryptable(&a, &lost, &err, t).unwrap());
    // Gathered for a moment, then due.
    assert!(p.bob.retry_requests_due(t).is_empty());
    assert_eq!(p.bob.next_retry_request_at(), Some(t + GATHERED));
    assert_eq!(p.bob.retry_requests_due(t + GATHERED), vec![a]);

    let t = t + GATHERED;
    let (request, ids) = p
        .bob
        .seal_retry_request(&bundle(&p.alice), &mut p.rng, t)
        .unwrap();
    assert_eq!(ids, vec![pairwise_message_id(&lost)]);
    assert_eq!(request.to, a);
    let answered = p
        .alice
        .decrypt(&p.bob.address(), &request.bytes, &mut p.rng, t)
        .unwrap();
    assert!(answered.received.is_empty());
    assert_eq!(answered.outgoing.len(), 1);
    let resent = &answered.outgoing[0];
    assert_eq!(resent.to, p.bob.address());
    let got = p.bob.decrypt(&a, &resent.bytes, &mut p.rng, t).unwrap();
    assert_eq!(
        got.received[0].plaintext.as_slice(),
        b"sent to the restored device"
    );
    p.bob.retry_request_sent(&a, &ids).unwrap();
    assert_eq!(p.bob.next_retry_request_at(), None);

    // The fresh session carries the conversation on, both ways.
    p.a_to_b(b"healed", t + 1);
    p.b_to_a(b"yes", t + 2);
    p.a_to_b(b"still", t + 3);
}

#[test]
fn a_restored_sender_whose_message_key_was_used_before_is_asked_again() {
    let mut p = Pair::talking();
    let backup = p.backup_bob();
    p.b_to_a(b"before the restore", T0 + 10);
    p.restore_bob(backup);
    // The restored session sends under a message key Alice already used.
    let t = T0 + 100;
    let stale = p.bob_sends(b"from the restored device", t);
    let b = p.bob.address();
    let err = p.alice.decrypt(&b, &stale, &mut p.rng, t).err().unwrap();
    assert!(
        matches!(err, Error::Protocol(ProtocolError::Duplicate)),
        "{err}"
    );
    assert!(p.alice.note_undecryptable(&b, &stale, &err, t).unwrap());
    let t = t + GATHERED;
    assert_eq!(p.alice.retry_requests_due(t), vec![b]);
    let (request, ids) = p
        .alice
        .seal_retry_request(&bundle(&p.bob), &mut p.rng, t)
        .unwrap();
    let answered = p
        .bob
        .decrypt(&p.alice.address(), &request.bytes, &mut p.rng, t)
        .unwrap();
    assert_eq!(answered.outgoing.len(), 1);
    let got = p
        .alice
        .decrypt(&b, &answered.outgoing[0].bytes, &mut p.rng, t)
        .unwrap();
    assert_eq!(
        got.received[0].plaintext.as_slice(),
        b"from the restored device"
    );
    p.alice.retry_request_sent(&b, &ids).unwrap();
    p.b_to_a(b"and on", t + 1);
    p.a_to_b(b"on", t + 2);
}

#[test]
fn failures_within_the_interval_are_gathered_into_the_next_request() {
    let mut p = Pair::talking();
    let backup = p.backup_bob();
    p.a_to_b(b"x", T0 + 10);
    p.b_to_a(b"y", T0 + 11);
    p.restore_bob(backup);
    let a = p.alice.address();
    let t = T0 + 100;
    let first = p.alice_sends(b"one", t);
    let err = p.bob.decrypt(&a, &first, &mut p.rng, t).err().unwrap();
    p.bob.note_undecryptable(&a, &first, &err, t).unwrap();
    assert_eq!(p.bob.retry_requests_due(t + GATHERED), vec![a]);
    // The bundle fetch failed: nothing sealed. Not asked again before the interval.
    let later = t + GATHERED + 1;
    assert!(p.bob.retry_requests_due(later).is_empty());
    // Two more failures meanwhile (and the first one noted again changes nothing).
    let second = p.alice_sends(b"two", later);
    let err2 = p.bob.decrypt(&a, &second, &mut p.rng, later).err().unwrap();
    p.bob.note_undecryptable(&a, &second, &err2, later).unwrap();
    p.bob.note_undecryptable(&a, &first, &err, later).unwrap();
    let due = t + GATHERED + RETRY_REQUEST_INTERVAL_MS;
    assert_eq!(p.bob.next_retry_request_at(), Some(due));
    assert!(p.bob.retry_requests_due(due - 1).is_empty());
    assert_eq!(p.bob.retry_requests_due(due), vec![a]);
    // A restart in between keeps what is pending.
    let bob = std::mem::replace(
        &mut p.bob,
        Device::create_account(MemoryKv::new(), &mut p.rng, T0).unwrap(),
    );
    p.bob = Device::open(bob.into_store()).unwrap();
    let (request, ids) = p
        .bob
        .seal_retry_request(&bundle(&p.alice), &mut p.rng, due)
        .unwrap();
    assert_eq!(
        ids,
        vec![pairwise_message_id(&first), pairwise_message_id(&second)]
    );
    let answered = p
        .alice
        .decrypt(&p.bob.address(), &request.bytes, &mut p.rng, due)
        .unwrap();
    let texts: Vec<Vec<u8>> = answered
        .outgoing
        .iter()
        .map(|o| {
            p.bob
                .decrypt(&a, &o.bytes, &mut p.rng, due)
                .unwrap()
                .received[0]
                .plaintext
                .to_vec()
        })
        .collect();
    assert_eq!(texts, vec![b"one".to_vec(), b"two".to_vec()]);
    p.bob.retry_request_sent(&a, &ids).unwrap();
    assert!(
        p.bob
            .retry_requests_due(due + 10 * RETRY_REQUEST_INTERVAL_MS)
            .is_empty()
    );
}

#[test]
fn errors_that_a_fresh_session_cannot_heal_are_not_asked_for() {
    let mut p = Pair::talking();
    let a = p.alice.address();
    let bytes = p.alice_sends(b"m", T0 + 5);
    for e in [
        Error::Auth(AuthError::IdentityMismatch),
        Error::Protocol(ProtocolError::UnknownAccount),
        Error::Malformed {
            what: "message content",
            reason: "does not decode",
        },
    ] {
        assert!(!p.bob.note_undecryptable(&a, &bytes, &e, T0 + 5).unwrap());
    }
    // Not from a device on a known list.
    let mut rng = ChaCha20Rng::from_seed([9; 32]);
    let stranger = Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap();
    let e = Error::Auth(AuthError::DecryptFailed);
    assert!(
        !p.bob
            .note_undecryptable(&stranger.address(), &bytes, &e, T0 + 5)
            .unwrap()
    );
    assert_eq!(p.bob.next_retry_request_at(), None);
    // Nothing waits: sealing a request is a misuse.
    assert!(matches!(
        p.bob
            .seal_retry_request(&bundle(&p.alice), &mut p.rng, T0 + 5),
        Err(Error::Protocol(ProtocolError::Misuse(_)))
    ));
}

#[test]
fn a_device_answers_one_device_at_most_once_per_interval() {
    let mut p = Pair::talking();
    let backup = p.backup_bob();
    p.a_to_b(b"x", T0 + 10);
    p.b_to_a(b"y", T0 + 11);
    p.restore_bob(backup);
    let a = p.alice.address();
    let b = p.bob.address();
    let t = T0 + 100;
    let lost = p.alice_sends(b"lost", t);
    let err = p.bob.decrypt(&a, &lost, &mut p.rng, t).err().unwrap();
    p.bob.note_undecryptable(&a, &lost, &err, t).unwrap();
    let t = t + GATHERED;
    p.bob.retry_requests_due(t);
    let (request, ids) = p
        .bob
        .seal_retry_request(&bundle(&p.alice), &mut p.rng, t)
        .unwrap();
    // The relay delivers the request twice: the copy is a duplicate, answered once.
    let first = p.alice.decrypt(&b, &request.bytes, &mut p.rng, t).unwrap();
    assert_eq!(first.outgoing.len(), 1);
    assert!(matches!(
        p.alice.decrypt(&b, &request.bytes, &mut p.rng, t),
        Err(Error::Protocol(ProtocolError::Duplicate))
    ));
    let resent = first.outgoing[0].bytes.clone();
    let got = p.bob.decrypt(&a, &resent, &mut p.rng, t).unwrap();
    assert_eq!(got.received[0].plaintext.as_slice(), b"lost");
    p.bob.retry_request_sent(&a, &ids).unwrap();

    // The resent message delivered again is a duplicate, which Bob asks for; a restart lets him
    // ask at once, but Alice answers a device at most once per interval.
    let err = p.bob.decrypt(&a, &resent, &mut p.rng, t + 5).err().unwrap();
    assert!(p.bob.note_undecryptable(&a, &resent, &err, t + 5).unwrap());
    let bob = std::mem::replace(
        &mut p.bob,
        Device::create_account(MemoryKv::new(), &mut p.rng, T0).unwrap(),
    );
    p.bob = Device::open(bob.into_store()).unwrap();
    assert_eq!(p.bob.retry_requests_due(t + 5), vec![a]);
    let (early, _) = p
        .bob
        .seal_retry_request(&bundle(&p.alice), &mut p.rng, t + 5)
        .unwrap();
    let answered = p
        .alice
        .decrypt(&b, &early.bytes, &mut p.rng, t + 5)
        .unwrap();
    assert!(answered.outgoing.is_empty());
    // After the interval the same ids are answered (the app drops the copy by its own id).
    let later = t + 5 + RETRY_REQUEST_INTERVAL_MS.max(RETRY_ANSWER_INTERVAL_MS);
    assert_eq!(p.bob.retry_requests_due(later), vec![a]);
    let (request, _) = p
        .bob
        .seal_retry_request(&bundle(&p.alice), &mut p.rng, later)
        .unwrap();
    let answered = p
        .alice
        .decrypt(&b, &request.bytes, &mut p.rng, later)
        .unwrap();
    assert_eq!(answered.outgoing.len(), 1);
    let got = p
        .bob
        .decrypt(&a, &answered.outgoing[0].bytes, &mut p.rng, later)
        .unwrap();
    assert_eq!(got.received[0].plaintext.as_slice(), b"lost");
}

#[test]
fn at_most_max_retry_ids_are_remembered_per_device_the_newest_kept() {
    let mut p = Pair::talking();
    let a = p.alice.address();
    let e = Error::Auth(AuthError::DecryptFailed);
    let mut all = Vec::new();
    for i in 0..MAX_RETRY_IDS + 3 {
        let bytes = format!("message {i}").into_bytes();
        assert!(p.bob.note_undecryptable(&a, &bytes, &e, T0 + 5).unwrap());
        all.push(pairwise_message_id(&bytes));
    }
    p.bob.retry_requests_due(T0 + 5 + GATHERED);
    let (_, ids) = p
        .bob
        .seal_retry_request(&bundle(&p.alice), &mut p.rng, T0 + 5 + GATHERED)
        .unwrap();
    assert_eq!(ids, all[3..].to_vec());
}

#[test]
fn the_sent_log_forgets_messages_past_its_age() {
    let mut p = Pair::talking();
    let before = p.alice.sent_log_len();
    assert!(before >= 1);
    p.alice_sends(b"kept a while", T0 + 10);
    assert_eq!(p.alice.sent_log_len(), before + 1);
    // The messages of the first exchange (at T0) are past the age; the newer one is not.
    let up = p
        .alice
        .upkeep(&mut p.rng, T0 + 10 + SENT_LOG_MAX_AGE_MS)
        .unwrap();
    assert_eq!(up.sent_pruned, before);
    assert_eq!(p.alice.sent_log_len(), 1);
    let up = p
        .alice
        .upkeep(&mut p.rng, T0 + 11 + SENT_LOG_MAX_AGE_MS)
        .unwrap();
    assert_eq!(up.sent_pruned, 1);
    assert_eq!(p.alice.sent_log_len(), 0);
    // A reopened device has the same log.
    p.alice_sends(b"new", T0 + 12 + SENT_LOG_MAX_AGE_MS);
    let alice = std::mem::replace(
        &mut p.alice,
        Device::create_account(MemoryKv::new(), &mut p.rng, T0).unwrap(),
    );
    p.alice = Device::open(alice.into_store()).unwrap();
    assert_eq!(p.alice.sent_log_len(), 1);
    // Ephemeral payloads (typing, presence) are never kept.
    let b = p.bob.address();
    p.alice
        .encrypt_ephemeral(&b, b"typing", &mut p.rng, T0 + 13 + SENT_LOG_MAX_AGE_MS)
        .unwrap();
    assert_eq!(p.alice.sent_log_len(), 1);
}
