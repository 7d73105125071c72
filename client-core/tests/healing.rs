//! Session healing (PROTOCOL.md §20) with a simulated clock: a device whose store was restored
//! from an old backup cannot decrypt what its contact sends, asks for it again on a fresh
//! session and gets it; the requests are gathered and rate-limited; answers are bounded.
#![cfg(test)]
#![allow(missing_docs)]

mod common;
use common::introduce;

use hush_core::consts::{
    MAX_RESENDS_PER_MESSAGE, MAX_RETRY_IDS, RETRY_REQUEST_INTERVAL_MS, SENT_LOG_MAX_AGE_MS,
};
use hush_core::device::{Device, DeviceError, pairwise_message_id};
use hush_core::error::{AuthError, Error, ProtocolError};
use hush_core::prekeys::PreKeyBundle;
use hush_core::store::kv::KvStore;
use hush_core::store::memory::MemoryKv;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const T0: u64 = 1_000_000;
/// Past the gathering delay before a first request.
const GATHERED: u64 = 2_000;

fn bundle<S: KvStore>(d: &Device<S>) -> PreKeyBundle {
    common::bundle(&d.published_pre_keys().unwrap())
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
    let err = refused(p.bob.decrypt(&a, &lost, &mut p.rng, t));
    assert!(err.calls_for_retry(), "{err}");
    assert!(p.bob.note_undecryptable(&a, &lost, &err, t).unwrap());
    // Gathered for a moment, then due.
    assert!(p.bob.retry_requests_due(t, 8).is_empty());
    assert_eq!(p.bob.next_retry_request_at(), Some(t + GATHERED));
    assert_eq!(p.bob.retry_requests_due(t + GATHERED, 8), vec![a]);

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
    let err = refused(p.alice.decrypt(&b, &stale, &mut p.rng, t));
    assert!(
        matches!(err, Error::Protocol(ProtocolError::Duplicate)),
        "{err}"
    );
    assert!(p.alice.note_undecryptable(&b, &stale, &err, t).unwrap());
    let t = t + GATHERED;
    assert_eq!(p.alice.retry_requests_due(t, 8), vec![b]);
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
    let err = refused(p.bob.decrypt(&a, &first, &mut p.rng, t));
    p.bob.note_undecryptable(&a, &first, &err, t).unwrap();
    assert_eq!(p.bob.retry_requests_due(t + GATHERED, 8), vec![a]);
    // The bundle fetch failed: nothing sealed. Not asked again before the interval.
    let later = t + GATHERED + 1;
    assert!(p.bob.retry_requests_due(later, 8).is_empty());
    // Two more failures meanwhile (and the first one noted again changes nothing).
    let second = p.alice_sends(b"two", later);
    let err2 = refused(p.bob.decrypt(&a, &second, &mut p.rng, later));
    p.bob.note_undecryptable(&a, &second, &err2, later).unwrap();
    p.bob.note_undecryptable(&a, &first, &err, later).unwrap();
    let due = t + GATHERED + RETRY_REQUEST_INTERVAL_MS;
    assert_eq!(p.bob.next_retry_request_at(), Some(due));
    assert!(p.bob.retry_requests_due(due - 1, 8).is_empty());
    assert_eq!(p.bob.retry_requests_due(due, 8), vec![a]);
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
            .retry_requests_due(due + 10 * RETRY_REQUEST_INTERVAL_MS, 8)
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
        Err(DeviceError::Protocol(Error::Protocol(
            ProtocolError::Misuse(_)
        )))
    ));
}

#[test]
fn a_redelivery_is_not_asked_for_and_a_message_is_sent_again_a_bounded_number_of_times() {
    let mut p = Pair::talking();
    let a = p.alice.address();
    let b = p.bob.address();
    // A message Alice did decrypt, delivered again (its ack was lost): a duplicate, not asked
    // for.
    let seen = p.bob_sends(b"seen", T0 + 5);
    p.alice.decrypt(&b, &seen, &mut p.rng, T0 + 5).unwrap();
    let err = refused(p.alice.decrypt(&b, &seen, &mut p.rng, T0 + 6));
    assert!(matches!(err, Error::Protocol(ProtocolError::Duplicate)));
    assert!(!p.alice.note_undecryptable(&b, &seen, &err, T0 + 6).unwrap());
    assert_eq!(p.alice.next_retry_request_at(), None);

    let backup = p.backup_bob();
    p.a_to_b(b"x", T0 + 10);
    p.b_to_a(b"y", T0 + 11);
    p.restore_bob(backup);
    let t = T0 + 100;

    // Bob keeps failing what Alice resends (as a device that asks again and again would): each
    // original goes out again at most MAX_RESENDS_PER_MESSAGE times.
    let mut failing = p.alice_sends(b"lost", t);
    let mut now = t;
    let e = Error::Auth(AuthError::DecryptFailed);
    let mut resent = Vec::new();
    for _ in 0..=MAX_RESENDS_PER_MESSAGE {
        assert!(p.bob.note_undecryptable(&a, &failing, &e, now).unwrap());
        now += GATHERED + RETRY_REQUEST_INTERVAL_MS;
        assert_eq!(p.bob.retry_requests_due(now, 8), vec![a]);
        let (request, ids) = p
            .bob
            .seal_retry_request(&bundle(&p.alice), &mut p.rng, now)
            .unwrap();
        // The relay delivers the request twice: the copy is a duplicate, answered once.
        let answered = p
            .alice
            .decrypt(&b, &request.bytes, &mut p.rng, now)
            .unwrap();
        assert!(
            p.alice
                .decrypt(&b, &request.bytes, &mut p.rng, now)
                .is_err()
        );
        p.bob.retry_request_sent(&a, &ids).unwrap();
        match answered.outgoing.as_slice() {
            [o] => {
                failing = o.bytes.clone();
                resent.push(o.bytes.clone());
            }
            [] => break,
            more => panic!("{} answers", more.len()),
        }
    }
    assert_eq!(resent.len(), MAX_RESENDS_PER_MESSAGE as usize);
    // The last copy does decrypt on the session it was sealed on.
    let got = p.bob.decrypt(&a, &failing, &mut p.rng, now).unwrap();
    assert_eq!(got.received[0].plaintext.as_slice(), b"lost");
}

#[test]
fn a_device_re_registered_at_the_same_address_gets_nothing_sent_to_its_predecessor() {
    let mut rng = ChaCha20Rng::from_seed([11; 32]);
    let mut alice = Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap();
    let account = bob.address().account;
    let mut old = Device::create_linked(MemoryKv::new(), &mut rng, account, 2, T0).unwrap();
    bob.add_device(&old.consent(), T0 + 1).unwrap();
    introduce(&mut alice, &bob);
    introduce(&mut old, &alice);
    introduce(&mut old, &bob);
    let at = old.address();
    alice
        .start_session(&bundle(&old), &mut rng, T0 + 2)
        .unwrap();
    let secret = alice
        .encrypt(&at, b"for the old device", &mut rng, T0 + 2)
        .unwrap();
    old.decrypt(&alice.address(), &secret, &mut rng, T0 + 2)
        .unwrap();

    // The account puts a new device (new keys) at the same address, and Alice learns the list.
    let mut new = Device::create_linked(MemoryKv::new(), &mut rng, account, 2, T0).unwrap();
    bob.add_device(&new.consent(), T0 + 3).unwrap();
    introduce(&mut alice, &bob);
    introduce(&mut new, &alice);
    introduce(&mut new, &bob);
    // The new device names the old message (its id is no secret to whoever relayed it).
    let e = Error::Auth(AuthError::DecryptFailed);
    let t = T0 + 10;
    assert!(
        new.note_undecryptable(&alice.address(), &secret, &e, t)
            .unwrap()
    );
    assert_eq!(
        new.retry_requests_due(t + GATHERED, 8),
        vec![alice.address()]
    );
    let (request, _) = new
        .seal_retry_request(&bundle(&alice), &mut rng, t + GATHERED)
        .unwrap();
    let answered = alice
        .decrypt(&at, &request.bytes, &mut rng, t + GATHERED)
        .unwrap();
    assert!(answered.outgoing.is_empty(), "sent to the wrong identity");
}

#[test]
fn a_device_that_left_its_list_is_no_longer_asked() {
    let mut p = Pair::talking();
    let mut rng = ChaCha20Rng::from_seed([12; 32]);
    let account = p.alice.address().account;
    let mut second = Device::create_linked(MemoryKv::new(), &mut rng, account, 2, T0).unwrap();
    p.alice.add_device(&second.consent(), T0 + 1).unwrap();
    introduce(&mut p.bob, &p.alice);
    introduce(&mut second, &p.alice);
    let gone = second.address();
    let e = Error::Auth(AuthError::DecryptFailed);
    assert!(
        p.bob
            .note_undecryptable(&gone, b"garbage", &e, T0 + 5)
            .unwrap()
    );
    p.alice.remove_device(2, T0 + 6).unwrap();
    introduce(&mut p.bob, &p.alice);
    assert!(p.bob.retry_requests_due(T0 + 5 + GATHERED, 8).is_empty());
    assert_eq!(p.bob.next_retry_request_at(), None);
    // Forgotten for good, also after a restart.
    let bob = std::mem::replace(
        &mut p.bob,
        Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap(),
    );
    p.bob = Device::open(bob.into_store()).unwrap();
    assert_eq!(p.bob.next_retry_request_at(), None);
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
    p.bob.retry_requests_due(T0 + 5 + GATHERED, 8);
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

/// The protocol's refusal of a call that must fail (not with a store failure).
fn refused<T>(r: Result<T, DeviceError>) -> Error {
    match r {
        Ok(_) => panic!("accepted"),
        Err(DeviceError::Protocol(e)) => e,
        Err(e) => panic!("store failed: {e}"),
    }
}
