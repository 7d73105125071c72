//! Hush 1:1 cost: PQXDH session setup (initiator and responder, with ML-KEM-768), Double Ratchet
//! encryption and decryption on an existing chain, the first message of a new chain (DH ratchet
//! step), decryption after skipped messages, the sealed-envelope layer (seal and open), and the
//! whole `Device` path with its store commit.
//!
//! vodozemac's equivalents are in `peer.rs`; `cargo run -p hush-bench --bin bench-report` prints
//! both side by side.

use std::cell::{Cell, RefCell};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use hush_bench::{device_pair, handshake, session_pair};
use hush_core::device::Device;
use hush_core::keys::{AccountKeyPair, DeviceAddress, DeviceIdentityKeyPair};
use hush_core::pqxdh::{self, InitiatorSecrets};
use hush_core::ratchet::{RatchetMessage, SessionState};
use hush_core::sealed::{self, DeliveryKey};
use hush_core::store::kv::KvStore;
use hush_core::store::memory::MemoryKv;
use hush_store_sled::SledKv;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use zeroize::Zeroizing;

const SIZES: [usize; 2] = [256, 4096];

pub(crate) fn session_setup(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::from_seed([10; 32]);
    let h = handshake(&mut rng).unwrap();
    let verified = h.bundle.verify(&h.bob_list).unwrap();
    let mut g = c.benchmark_group("hush_pqxdh");
    // X25519 base and ratchet keys, 4 DH + the first chain's DH, ML-KEM-768 encapsulation, KDFs.
    g.bench_function("initiate", |b| {
        b.iter(|| {
            pqxdh::initiate(
                h.alice_addr,
                &h.alice_id,
                &verified,
                InitiatorSecrets::random(&mut rng),
                0,
            )
            .unwrap()
        })
    });
    // The same, plus what an app also pays: verifying the bundle (two Ed25519 signatures,
    // key validation, ML-KEM key decoding).
    g.bench_function("verify_bundle_and_initiate", |b| {
        b.iter(|| {
            let v = h.bundle.verify(&h.bob_list).unwrap();
            pqxdh::initiate(
                h.alice_addr,
                &h.alice_id,
                &v,
                InitiatorSecrets::random(&mut rng),
                0,
            )
            .unwrap()
        })
    });
    // 4 DH, ML-KEM-768 decapsulation, KDFs, then decrypting the first message (as vodozemac's
    // `create_inbound_session` does).
    g.bench_function("respond", |b| {
        b.iter_batched(
            || h.initiate(b"hello", &mut rng).unwrap().1,
            |initial| h.respond(&initial).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

pub(crate) fn ratchet(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::from_seed([11; 32]);
    let mut g = c.benchmark_group("hush_ratchet");
    for size in SIZES {
        let msg = vec![0x5a; size];
        g.throughput(Throughput::Bytes(size as u64));
        // Alice's first message after Bob's reply starts her new chain (DH step); from then on
        // every message is on that existing chain.
        let mut pair = session_pair(&mut rng).unwrap();
        let m = pair.alice.encrypt(&msg, &mut rng, 1).unwrap();
        pair.bob.decrypt(&m.message, 1).unwrap();

        // A second pair for encryption alone: Bob never reads these.
        let mut sender = session_pair(&mut rng).unwrap().alice;
        sender.encrypt(&msg, &mut rng, 1).unwrap();
        g.bench_with_input(BenchmarkId::new("encrypt", size), &size, |b, _| {
            b.iter(|| sender.encrypt(&msg, &mut rng, 1).unwrap())
        });

        // Decryption of Alice's next message, each time on a fresh copy of Bob's state.
        let next = pair.alice.encrypt(&msg, &mut rng, 1).unwrap().message;
        let bob_proto = pair.bob.to_proto();
        g.bench_with_input(BenchmarkId::new("decrypt", size), &size, |b, _| {
            b.iter_batched(
                || SessionState::from_proto(&bob_proto).unwrap(),
                |mut bob| bob.decrypt(&next, 1).unwrap(),
                BatchSize::SmallInput,
            )
        });
        pair.bob.decrypt(&next, 1).unwrap();

        g.bench_with_input(BenchmarkId::new("round_trip", size), &size, |b, _| {
            b.iter(|| {
                let e = pair.alice.encrypt(&msg, &mut rng, 1).unwrap();
                pair.bob.decrypt(&e.message, 1).unwrap()
            })
        });
    }
    g.finish();
}

/// The sealed layer on its own: sealing (an ephemeral key, two X25519, two HKDF, two AEAD over the
/// padded envelope) and opening (key validation, the same DH and AEAD work, unpadding), for a
/// 100-byte content (a 320-byte envelope) and a 1 KiB content (1280 bytes).
pub(crate) fn sealed(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::from_seed([16; 32]);
    let alice = DeviceIdentityKeyPair::generate(&mut rng);
    let bob = DeviceIdentityKeyPair::generate(&mut rng);
    let from = DeviceAddress {
        account: AccountKeyPair::generate(&mut rng).id(),
        device_id: 1,
    };
    let dk = DeliveryKey::derive(&alice, 0);
    let to = bob.public();
    let mut g = c.benchmark_group("hush_sealed");
    for size in [100usize, 1024] {
        let content = vec![0x5a; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
            b.iter(|| sealed::seal(&alice, &from, &dk, &to, &content, &mut rng).unwrap())
        });
        let envelope = sealed::seal(&alice, &from, &dk, &to, &content, &mut rng).unwrap();
        g.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
            b.iter(|| sealed::open(&bob, &envelope).unwrap())
        });
    }
    g.finish();
}

pub(crate) fn new_chain(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::from_seed([12; 32]);
    let msg = [0x5a; 256];
    // After Bob's reply Alice has no sending chain: her next encrypt takes the DH ratchet step
    // (fresh X25519 key pair, one DH, KDF_RK), and Bob's decrypt of it takes his (DH, KDF_RK).
    let mut pair = session_pair(&mut rng).unwrap();
    let alice_proto = pair.alice.to_proto();
    let bob_proto = pair.bob.to_proto();
    let first = pair.alice.encrypt(&msg, &mut rng, 1).unwrap().message;
    let mut g = c.benchmark_group("hush_new_chain_256");
    g.bench_function("encrypt", |b| {
        b.iter_batched(
            || SessionState::from_proto(&alice_proto).unwrap(),
            |mut alice| alice.encrypt(&msg, &mut rng, 1).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("decrypt", |b| {
        b.iter_batched(
            || SessionState::from_proto(&bob_proto).unwrap(),
            |mut bob| bob.decrypt(&first, 1).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

pub(crate) fn skipped(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::from_seed([13; 32]);
    let msg = [0x5a; 256];
    let mut g = c.benchmark_group("hush_decrypt_after_skipping_256");
    for skip in [100u32, 1000] {
        let mut pair = session_pair(&mut rng).unwrap();
        let m = pair.alice.encrypt(&msg, &mut rng, 1).unwrap();
        pair.bob.decrypt(&m.message, 1).unwrap();
        let bob_proto = pair.bob.to_proto();
        let mut last: Option<RatchetMessage> = None;
        for _ in 0..=skip {
            last = Some(pair.alice.encrypt(&msg, &mut rng, 1).unwrap().message);
        }
        let last = last.unwrap();
        // Derives `skip` message keys and stores them as skipped, then opens the message.
        g.bench_with_input(BenchmarkId::from_parameter(skip), &skip, |b, _| {
            b.iter_batched(
                || SessionState::from_proto(&bob_proto).unwrap(),
                |mut bob| bob.decrypt(&last, 1).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// `Device::encrypt` and `Device::decrypt` against a store: every call commits one batch (the
/// advanced session; on receipt also the inbox entry) before it returns. One device pair for
/// each bench, so that the decrypting side is never more than one message behind.
fn device_with<S: KvStore>(c: &mut Criterion, name: &str, mut store: impl FnMut(&str) -> S) {
    let mut rng = ChaCha20Rng::from_seed([14; 32]);
    let msg = [0x5a; 256];
    let mut g = c.benchmark_group(name);

    let (mut alice, bob) = device_pair(store("a1"), store("b1"), &mut rng).unwrap();
    let to = bob.address();
    g.bench_function("encrypt_256", |bn| {
        bn.iter(|| alice.encrypt(&to, &msg, &mut rng, 1).unwrap())
    });

    let (alice, bob) = device_pair(store("a2"), store("b2"), &mut rng).unwrap();
    let (a, b) = (alice.address(), bob.address());
    let alice = RefCell::new(alice);
    let bob: RefCell<Device<S>> = RefCell::new(bob);
    let rng = RefCell::new(rng);
    let unacked = Cell::new(None::<u64>);
    g.bench_function("decrypt_256", |bn| {
        bn.iter_batched(
            || {
                // Untimed: acknowledge the previous message, and produce Alice's next one.
                if let Some(id) = unacked.take() {
                    bob.borrow_mut().ack_message(id).unwrap();
                }
                alice
                    .borrow_mut()
                    .encrypt(&b, &msg, &mut *rng.borrow_mut(), 1)
                    .unwrap()
            },
            |wire| {
                let inc = bob
                    .borrow_mut()
                    .decrypt(&a, &wire, &mut *rng.borrow_mut(), 1)
                    .unwrap();
                unacked.set(inc.received.first().map(|r| r.id));
                inc
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

pub(crate) fn device(c: &mut Criterion) {
    device_with(c, "hush_device_memory", |_| MemoryKv::new());
    // On the build disk (not a tmpfs): `SledKv::commit` flushes (fsyncs) every batch.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut n = 0u8;
    device_with(c, "hush_device_sled", |sub| {
        n += 1;
        // A seeded nonce generator is safe here only because each store is opened once, fresh.
        SledKv::open(
            &dir.path().join(sub),
            Zeroizing::new([7; 32]),
            Box::new(ChaCha20Rng::from_seed([n; 32])),
        )
        .unwrap()
    });
}
