//! Group messaging cost: one sender-key encryption (one AEAD + one Ed25519 signature) against
//! pairwise fan-out (one Double Ratchet encryption per member device), and sender-key decryption
//! after a forward jump of 1000 iterations.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hush_bench::session_pair;
use hush_core::keys::{AccountKeyPair, DeviceAddress};
use hush_core::sender_key::{GroupId, SenderKeyState};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const MESSAGE: &[u8] = &[0x5a; 256];

fn group_encrypt(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let g = GroupId::random(&mut rng);
    let me = DeviceAddress {
        account: AccountKeyPair::generate(&mut rng).id(),
        device_id: 1,
    };
    let mut group = c.benchmark_group("group_send_256B");
    for members in [10usize, 100, 1000] {
        group.throughput(Throughput::Elements(1));
        // Sender keys: the cost does not depend on the group's size.
        let mut own = SenderKeyState::generate(&mut rng, 1, 0);
        group.bench_with_input(BenchmarkId::new("sender_key", members), &members, |b, _| {
            b.iter(|| own.encrypt(g, me, (1, [0; 32]), MESSAGE).unwrap())
        });
        // Pairwise fan-out: one ratchet encryption per member device.
        let mut sessions: Vec<_> = (0..members)
            .map(|_| session_pair(&mut rng).unwrap().alice)
            .collect();
        group.bench_with_input(
            BenchmarkId::new("pairwise_fanout", members),
            &members,
            |b, _| {
                b.iter(|| {
                    for s in &mut sessions {
                        s.encrypt(MESSAGE, &mut rng, 1).unwrap();
                    }
                })
            },
        );
    }
    group.finish();
}

fn sender_key_skip(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::from_seed([2; 32]);
    let g = GroupId::random(&mut rng);
    let me = DeviceAddress {
        account: AccountKeyPair::generate(&mut rng).id(),
        device_id: 1,
    };
    let them = DeviceAddress {
        account: AccountKeyPair::generate(&mut rng).id(),
        device_id: 1,
    };
    let mut own = SenderKeyState::generate(&mut rng, 1, 0);
    let dist = own.distribution_for(g, them, None).unwrap();
    let receiver = SenderKeyState::from_distribution(&dist, 0)
        .unwrap()
        .to_proto();
    let mut msgs = Vec::new();
    for _ in 0..=1000 {
        msgs.push(own.encrypt(g, me, (1, [0; 32]), MESSAGE).unwrap());
    }
    let last = msgs.pop().unwrap();
    let first = msgs.swap_remove(0);
    let mut group = c.benchmark_group("sender_key_decrypt_256B");
    group.bench_function("in_order", |b| {
        b.iter_batched(
            || SenderKeyState::from_proto(&receiver).unwrap(),
            |mut s| s.decrypt(&first, 1).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("after_skipping_1000", |b| {
        b.iter_batched(
            || SenderKeyState::from_proto(&receiver).unwrap(),
            |mut s| s.decrypt(&last, 1).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, group_encrypt, sender_key_skip);
criterion_main!(benches);
