//! vodozemac (Matrix's Olm and Megolm in Rust) doing the equivalents of the Hush benches in
//! `hush.rs` and `benches/group.rs`, in the same `cargo bench -p hush-bench` run, on the same
//! machine. vodozemac draws its own randomness.
//!
//! Olm sessions use `SessionConfig::version_1()` (what Matrix clients use: AES-256-CBC with
//! HMAC-SHA256 truncated to 8 bytes); Megolm likewise.

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use vodozemac::megolm::{self, GroupSession, InboundGroupSession, MegolmMessage};
use vodozemac::olm::{Account, OlmMessage, Session, SessionConfig};

const SIZES: [usize; 2] = [256, 4096];

fn config() -> SessionConfig {
    SessionConfig::version_1()
}

/// A session copy through its pickle (the form a client stores).
fn clone(s: &Session) -> Session {
    Session::from_pickle(s.pickle())
}

/// Alice's and Bob's sessions after a pre-key message and a reply, so that both directions are
/// established and every further message is a normal (not pre-key) message.
fn olm_pair() -> (Session, Session) {
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let otk = *bob.one_time_keys().values().next().unwrap();
    bob.mark_keys_as_published();
    let mut a = alice
        .create_outbound_session(config(), bob.curve25519_key(), otk)
        .unwrap();
    let OlmMessage::PreKey(first) = a.encrypt(b"hello").unwrap() else {
        panic!("expected a pre-key message");
    };
    let mut b = bob
        .create_inbound_session(config(), alice.curve25519_key(), &first)
        .unwrap()
        .session;
    let reply = b.encrypt(b"hi").unwrap();
    a.decrypt(&reply).unwrap();
    (a, b)
}

pub(crate) fn session_setup(c: &mut Criterion) {
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let otk = *bob.one_time_keys().values().next().unwrap();
    // The fallback key is not consumed by an inbound session, so one account can accept a new
    // session in every iteration (a one-time key would cost the same, minus a map removal).
    let fallback = bob.generate_fallback_key();
    let fallback = fallback
        .or_else(|| bob.fallback_key().values().next().copied())
        .unwrap();
    bob.mark_keys_as_published();
    let bob_identity = bob.curve25519_key();
    let alice_identity = alice.curve25519_key();
    let mut g = c.benchmark_group("vodozemac_olm_session");
    // Base key generation and 3DH.
    g.bench_function("create_outbound", |b| {
        b.iter(|| {
            alice
                .create_outbound_session(config(), bob_identity, otk)
                .unwrap()
        })
    });
    // 3DH and decryption of the pre-key message.
    g.bench_function("create_inbound", |bn| {
        bn.iter_batched(
            || {
                let mut s = alice
                    .create_outbound_session(config(), bob_identity, fallback)
                    .unwrap();
                match s.encrypt(b"hello").unwrap() {
                    OlmMessage::PreKey(m) => m,
                    OlmMessage::Normal(_) => panic!("expected a pre-key message"),
                }
            },
            |m| {
                bob.create_inbound_session(config(), alice_identity, &m)
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

pub(crate) fn olm(c: &mut Criterion) {
    let mut g = c.benchmark_group("vodozemac_olm");
    for size in SIZES {
        let msg = vec![0x5a; size];
        g.throughput(Throughput::Bytes(size as u64));
        let (mut alice, mut bob) = olm_pair();
        // Alice's first message after Bob's reply starts her new chain; the benches run after it.
        let m = alice.encrypt(&msg).unwrap();
        assert!(matches!(m, OlmMessage::Normal(_)));
        bob.decrypt(&m).unwrap();

        let (mut sender, _) = olm_pair();
        sender.encrypt(&msg).unwrap();
        g.bench_with_input(BenchmarkId::new("encrypt", size), &size, |b, _| {
            b.iter(|| sender.encrypt(&msg).unwrap())
        });

        let next = alice.encrypt(&msg).unwrap();
        g.bench_with_input(BenchmarkId::new("decrypt", size), &size, |b, _| {
            b.iter_batched(
                || clone(&bob),
                |mut bob| bob.decrypt(&next).unwrap(),
                BatchSize::SmallInput,
            )
        });
        bob.decrypt(&next).unwrap();

        g.bench_with_input(BenchmarkId::new("round_trip", size), &size, |b, _| {
            b.iter(|| {
                let e = alice.encrypt(&msg).unwrap();
                bob.decrypt(&e).unwrap()
            })
        });
    }
    g.finish();
}

pub(crate) fn olm_new_chain(c: &mut Criterion) {
    let msg = [0x5a; 256];
    // After Bob's reply Alice's next encrypt takes the DH ratchet step, and so does Bob's decrypt.
    let (alice, bob) = olm_pair();
    let first = clone(&alice).encrypt(msg).unwrap();
    let mut g = c.benchmark_group("vodozemac_olm_new_chain_256");
    g.bench_function("encrypt", |b| {
        b.iter_batched(
            || clone(&alice),
            |mut a| a.encrypt(msg).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("decrypt", |b| {
        b.iter_batched(
            || clone(&bob),
            |mut s| s.decrypt(&first).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

pub(crate) fn olm_skipped(c: &mut Criterion) {
    let msg = [0x5a; 256];
    let mut g = c.benchmark_group("vodozemac_olm_decrypt_after_skipping_256");
    for skip in [100u32, 1000] {
        let (mut alice, mut bob) = olm_pair();
        bob.decrypt(&alice.encrypt(msg).unwrap()).unwrap();
        let mut last = None;
        for _ in 0..=skip {
            last = Some(alice.encrypt(msg).unwrap());
        }
        let last = last.unwrap();
        // vodozemac derives every skipped key but keeps only the last 40.
        g.bench_with_input(BenchmarkId::from_parameter(skip), &skip, |b, _| {
            b.iter_batched(
                || clone(&bob),
                |mut s| s.decrypt(&last).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

pub(crate) fn megolm(c: &mut Criterion) {
    let msg = [0x5a; 256];
    let mut outbound = GroupSession::new(megolm::SessionConfig::version_1());
    let key = outbound.session_key();
    let inbound = || InboundGroupSession::new(&key, megolm::SessionConfig::version_1());
    let mut msgs: Vec<MegolmMessage> = (0..=1000).map(|_| outbound.encrypt(msg)).collect();
    let last = msgs.pop().unwrap();
    let first = msgs.swap_remove(0);
    let mut g = c.benchmark_group("vodozemac_megolm_256");
    // AES-256-CBC, HMAC-SHA256, Ed25519 signature, ratchet advance.
    g.bench_function("encrypt", |b| b.iter(|| outbound.encrypt(msg)));
    // Ed25519 verification, MAC check, decryption.
    g.bench_function("decrypt_in_order", |b| {
        b.iter_batched(
            inbound,
            |mut s| s.decrypt(&first).unwrap(),
            BatchSize::SmallInput,
        )
    });
    // Megolm's ratchet can jump ahead in O(log n) steps and stores no skipped keys.
    g.bench_function("decrypt_after_skipping_1000", |b| {
        b.iter_batched(
            inbound,
            |mut s| s.decrypt(&last).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}
