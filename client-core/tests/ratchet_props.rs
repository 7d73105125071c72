//! Property tests of the Double Ratchet (`ratchet::SessionState`) driven directly, below the
//! `Device` facade: arbitrary delivery orders with drops and late messages, tampered messages,
//! the skip limit, the skipped-key caps and expiry, and serialization at any point.
//!
//! Every proptest runs with a fixed seed and no failure persistence, so the run is deterministic
//! and writes nothing into the repository.
#![cfg(test)]
#![allow(missing_docs)]

use std::collections::{BTreeMap, HashMap, VecDeque};

use hush_core::consts::{
    MAX_SKIP, MAX_SKIPPED_KEYS, MAX_SKIPPED_KEYS_PER_CHAIN, SKIPPED_KEY_MAX_AGE_MS,
};
use hush_core::device_list::{DeviceEntry, DeviceList};
use hush_core::error::{AuthError, Error, ProtocolError};
use hush_core::keys::{AccountKeyPair, DeviceAddress, DeviceIdentityKeyPair};
use hush_core::pqxdh::{self, InitialMessage, InitiatorSecrets};
use hush_core::prekeys::{KemPreKeyPair, OneTimePreKeyPair, PreKeyBundle, SignedPreKeyPair};
use hush_core::ratchet::{RatchetMessage, SessionState};
use hush_proto::{Message, store as pstore, wire};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{RngAlgorithm, RngSeed, TestCaseResult, TestRunner};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Start of simulated time (ms since the Unix epoch).
const T0: u64 = 1_700_000_000_000;

/// Deterministic proptest configuration: fixed seed, ChaCha, no regression files, no fork or
/// timeout. Every field the `PROPTEST_*` environment variables could set is set here, and the
/// runner is built directly (not through the `proptest!` macro, which re-applies the environment),
/// so the cases run are the same on every machine.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        max_local_rejects: 65_536,
        max_global_rejects: 1024,
        max_flat_map_regens: 1_000_000,
        failure_persistence: None,
        fork: false,
        timeout: 0,
        max_shrink_time: 0,
        max_shrink_iters: 256,
        max_default_size_range: 100,
        verbose: 0,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(0x4875_7368_5261_7463),
        ..ProptestConfig::default()
    }
}

/// Runs `test` on `cases` values of `strategy` with [`config`]; panics with the (shrunk) failing
/// input.
fn check<S: Strategy>(cases: u32, strategy: &S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(config(cases));
    if let Err(e) = runner.run(strategy, test) {
        panic!("{e}");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Side {
    Alice,
    Bob,
}

impl Side {
    const fn other(self) -> Self {
        match self {
            Self::Alice => Self::Bob,
            Self::Bob => Self::Alice,
        }
    }
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Alice), Just(Side::Bob)]
}

/// Alice and Bob with an established session (Bob has decrypted Alice's first message), each with
/// its own RNG for encryption, and a clock.
struct Convo {
    alice: SessionState,
    bob: SessionState,
    rng_alice: ChaCha20Rng,
    rng_bob: ChaCha20Rng,
    now: u64,
}

/// Full set-up from scratch: account and device keys, Bob's signed device list and pre-key bundle,
/// bundle verification, PQXDH on both sides, and Bob decrypting Alice's first message (counter 0).
fn establish(seed: u64) -> Convo {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let alice_account = AccountKeyPair::generate(&mut rng);
    let alice_device = DeviceIdentityKeyPair::generate(&mut rng);
    let bob_account = AccountKeyPair::generate(&mut rng);
    let bob_device = DeviceIdentityKeyPair::generate(&mut rng);

    let mut devices = BTreeMap::new();
    devices.insert(
        7,
        DeviceEntry {
            device_id: 7,
            identity: bob_device.public(),
            added_at: T0,
            consent: bob_device.consent(&bob_account.id(), 7),
        },
    );
    let bob_list = DeviceList {
        account: bob_account.id(),
        version: 1,
        issued_at: T0,
        devices,
    }
    .sign(&bob_account)
    .unwrap();

    let spk = SignedPreKeyPair::generate(&mut rng, &bob_device, 11, T0);
    let otk = OneTimePreKeyPair::generate(&mut rng, 22);
    let kem = KemPreKeyPair::generate(&mut rng, &bob_device, 33, false, T0);
    let bundle = PreKeyBundle(wire::PreKeyBundle {
        account_key: bob_account.id().as_bytes().to_vec(),
        device_id: 7,
        identity: Some(wire::DeviceIdentityKey {
            signing_key: bob_device.public().signing_key().to_vec(),
            dh_key: bob_device.public().dh_key().to_vec(),
        }),
        signed_pre_key: Some(spk.to_wire()),
        one_time_pre_key: Some(otk.to_wire()),
        kem_pre_key: Some(kem.to_wire()),
    });
    let verified = bundle.verify(&bob_list).unwrap();

    let alice_address = DeviceAddress {
        account: alice_account.id(),
        device_id: 1,
    };
    let mut alice = pqxdh::initiate(
        alice_address,
        &alice_device,
        &verified,
        InitiatorSecrets::random(&mut rng),
        T0,
    )
    .unwrap()
    .session;
    let first = alice.encrypt(b"hello", &mut rng, T0).unwrap().message;
    let pending = alice.pending().cloned().unwrap();
    let wire_initial = InitialMessage::wire(&pending, alice_device.public(), &first);
    let bytes = wire_initial.encode_to_vec();
    let initial =
        InitialMessage::try_from(&wire::InitialMessage::decode(bytes.as_slice()).unwrap()).unwrap();
    let bob_address = verified.address();
    let mut bob = pqxdh::respond(
        bob_address,
        &bob_device,
        &spk,
        Some(&otk),
        &kem,
        &initial,
        T0,
    )
    .unwrap()
    .session;
    assert_eq!(
        bob.decrypt(&initial.message, T0)
            .unwrap()
            .plaintext
            .as_slice(),
        b"hello"
    );
    assert!(alice.is_initiator() && !bob.is_initiator());
    assert_eq!(alice.base_key(), bob.base_key());

    Convo {
        alice,
        bob,
        rng_alice: ChaCha20Rng::seed_from_u64(seed.wrapping_add(0xA11CE)),
        rng_bob: ChaCha20Rng::seed_from_u64(seed.wrapping_add(0xB0B)),
        now: T0 + 1,
    }
}

/// A message as it arrives from the network: encoded, decoded and validated.
fn over_the_wire(w: &wire::RatchetMessage) -> Result<RatchetMessage, Error> {
    let bytes = w.encode_to_vec();
    RatchetMessage::try_from(&wire::RatchetMessage::decode(bytes.as_slice()).unwrap())
}

/// The state's persisted encoding: "the state" for all before/after comparisons.
fn encoded(s: &SessionState) -> Vec<u8> {
    s.to_proto().encode_to_vec()
}

/// Serializes to bytes and back, checking the round trip is byte-exact.
fn reload(s: &SessionState) -> SessionState {
    let bytes = encoded(s);
    let back =
        SessionState::from_proto(&pstore::SessionState::decode(bytes.as_slice()).unwrap()).unwrap();
    assert_eq!(
        encoded(&back),
        bytes,
        "from_proto(to_proto(s)) is not byte-identical"
    );
    back
}

impl Convo {
    fn state(&self, who: Side) -> &SessionState {
        match who {
            Side::Alice => &self.alice,
            Side::Bob => &self.bob,
        }
    }

    fn state_mut(&mut self, who: Side) -> &mut SessionState {
        match who {
            Side::Alice => &mut self.alice,
            Side::Bob => &mut self.bob,
        }
    }

    fn send(&mut self, from: Side, plaintext: &[u8]) -> RatchetMessage {
        self.now += 1;
        let now = self.now;
        let (s, rng) = match from {
            Side::Alice => (&mut self.alice, &mut self.rng_alice),
            Side::Bob => (&mut self.bob, &mut self.rng_bob),
        };
        let m = s.encrypt(plaintext, rng, now).unwrap().message;
        over_the_wire(&m.to_wire()).unwrap()
    }

    fn recv_at(&mut self, to: Side, m: &RatchetMessage, now: u64) -> Result<Vec<u8>, Error> {
        self.now = self.now.max(now);
        self.state_mut(to)
            .decrypt(m, now)
            .map(|d| d.plaintext.to_vec())
    }

    fn recv(&mut self, to: Side, m: &RatchetMessage) -> Result<Vec<u8>, Error> {
        let now = self.now + 1;
        self.recv_at(to, m, now)
    }

    /// Delivers a message that must decrypt to `expected`.
    fn deliver(&mut self, to: Side, m: &RatchetMessage, expected: &[u8]) {
        match self.recv(to, m) {
            Ok(p) => assert_eq!(p, expected, "wrong plaintext for {:?}", m.header),
            Err(e) => panic!("{to:?} failed to decrypt {:?}: {e:?}", m.header),
        }
    }

    /// Delivers a message that must be refused without any change to the receiver's state.
    fn refused(&mut self, to: Side, m: &RatchetMessage) -> Error {
        let before = encoded(self.state(to));
        let r = self.recv(to, m);
        assert_eq!(
            encoded(self.state(to)),
            before,
            "a refused message changed the state ({r:?})"
        );
        match r {
            Ok(p) => panic!(
                "{to:?} accepted {:?} ({} bytes) but should have refused it",
                m.header,
                p.len()
            ),
            Err(e) => e,
        }
    }

    /// Alice sends one message to Bob and back: both directions still work.
    fn ping_pong(&mut self) {
        let m = self.send(Side::Alice, b"ping");
        self.deliver(Side::Bob, &m, b"ping");
        let m = self.send(Side::Bob, b"pong");
        self.deliver(Side::Alice, &m, b"pong");
    }
}

fn is_duplicate_or_auth(e: &Error) -> bool {
    matches!(
        e,
        Error::Protocol(ProtocolError::Duplicate) | Error::Auth(AuthError::DecryptFailed)
    )
}

/// Fisher–Yates with a seeded RNG (for permutations too large to shrink usefully).
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut r = ChaCha20Rng::seed_from_u64(seed);
    for i in (1..v.len()).rev() {
        let j = usize::try_from(r.next_u64() % (i as u64 + 1)).unwrap();
        v.swap(i, j);
    }
}

fn plaintext(from: Side, turn: usize, i: usize) -> Vec<u8> {
    let mut p = format!("{from:?} turn {turn} message {i}").into_bytes();
    p.resize(p.len() + (turn * 7 + i * 13) % 50, b'.');
    p
}

// ---------------------------------------------------------------------------------------------
// Conversations in turns with arbitrary delivery
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Delivered during its turn, in the turn's permuted order.
    Deliver,
    /// Never delivered.
    Drop,
    /// Delivered after the whole conversation.
    Late,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![6 => Just(Fate::Deliver), 1 => Just(Fate::Drop), 1 => Just(Fate::Late)]
}

/// One turn: a permutation of its messages (delivery order) and each message's fate.
type Turn = (Vec<usize>, Vec<Fate>);

fn turns(max_turns: usize, max_len: usize) -> impl Strategy<Value = Vec<Turn>> {
    prop::collection::vec(1..=max_len, 1..=max_turns).prop_flat_map(|lens| {
        lens.into_iter()
            .map(|l| {
                (
                    Just((0..l).collect::<Vec<usize>>()).prop_shuffle(),
                    prop::collection::vec(fate(), l),
                )
            })
            .collect::<Vec<_>>()
    })
}

struct Sent {
    to: Side,
    msg: RatchetMessage,
    plaintext: Vec<u8>,
    fate: Fate,
    decrypted: bool,
}

/// Plays the turns (alternating senders); after each turn re-delivers one already decrypted message
/// (chosen by `replays`), which must be refused without a state change.
fn play(c: &mut Convo, alice_first: bool, turns: &[Turn], replays: &[Index]) -> Vec<Sent> {
    let mut log: Vec<Sent> = Vec::new();
    for (t, (perm, fates)) in turns.iter().enumerate() {
        let from = if (t % 2 == 0) == alice_first {
            Side::Alice
        } else {
            Side::Bob
        };
        let first = log.len();
        for (i, fate) in fates.iter().enumerate() {
            let plaintext = plaintext(from, t, i);
            let msg = c.send(from, &plaintext);
            log.push(Sent {
                to: from.other(),
                msg,
                plaintext,
                fate: *fate,
                decrypted: false,
            });
        }
        for &p in perm {
            let s = &mut log[first + p];
            if s.fate == Fate::Deliver {
                let (to, msg, pt) = (s.to, s.msg.clone(), s.plaintext.clone());
                s.decrypted = true;
                c.deliver(to, &msg, &pt);
            }
        }
        let done: Vec<usize> = (0..log.len()).filter(|&i| log[i].decrypted).collect();
        if let Some(r) = replays.get(t).filter(|_| !done.is_empty()) {
            let s = &log[done[r.index(done.len())]];
            let e = c.refused(s.to, &s.msg.clone());
            assert!(
                is_duplicate_or_auth(&e),
                "replay refused with unexpected error {e:?}"
            );
        }
    }
    log
}

fn deliver_late(c: &mut Convo, log: &mut [Sent], newest_first: bool) {
    let mut late: Vec<usize> = (0..log.len())
        .filter(|&i| log[i].fate == Fate::Late)
        .collect();
    if newest_first {
        late.reverse();
    }
    for i in late {
        let (to, msg, pt) = (log[i].to, log[i].msg.clone(), log[i].plaintext.clone());
        c.deliver(to, &msg, &pt);
        log[i].decrypted = true;
    }
}

/// Property 1: up to 12 alternating turns of 1..=10 messages each (so up to 60 from Alice),
/// each turn delivered in an arbitrary permutation, some messages dropped and some delivered
/// only at the very end. Every delivered message decrypts exactly once to its plaintext; every
/// re-delivery is refused (Duplicate or DecryptFailed) and leaves the state byte-identical.
#[test]
fn prop_any_delivery_order_decrypts_exactly_once() {
    let strategy = (
        any::<u64>(),
        any::<bool>(),
        turns(12, 10),
        prop::collection::vec(any::<Index>(), 12),
        any::<bool>(),
    );
    check(
        256,
        &strategy,
        |(seed, alice_first, turns, replays, newest_first)| {
            let mut c = establish(seed);
            let mut log = play(&mut c, alice_first, &turns, &replays);
            deliver_late(&mut c, &mut log, newest_first);
            let alice_sent = log.iter().filter(|s| s.to == Side::Bob).count();
            prop_assert!(alice_sent <= 60);
            for (i, s) in log.iter().enumerate() {
                prop_assert_eq!(s.decrypted, s.fate != Fate::Drop, "message {}", i);
            }
            // Every decrypted message, re-delivered once more at the end: refused, state unchanged.
            for s in log.iter().filter(|s| s.decrypted) {
                let e = c.refused(s.to, &s.msg);
                prop_assert!(is_duplicate_or_auth(&e), "unexpected error {:?}", e);
            }
            c.ping_pong();
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Tampering
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Tamper {
    FlipBit(Index),
    Counter(u32),
    PreviousCounter(u32),
    /// Another valid ratchet key: one seen in the conversation (either side's) or a fresh one.
    RatchetKey(Index),
    Truncate(Index),
    Append(u8),
}

fn delta() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..=4, (1u32..=4).prop_map(u32::wrapping_neg), 5u32..]
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        4 => any::<Index>().prop_map(Tamper::FlipBit),
        2 => delta().prop_map(Tamper::Counter),
        2 => delta().prop_map(Tamper::PreviousCounter),
        2 => any::<Index>().prop_map(Tamper::RatchetKey),
        1 => any::<Index>().prop_map(Tamper::Truncate),
        1 => any::<u8>().prop_map(Tamper::Append),
    ]
}

fn apply(t: &Tamper, m: &RatchetMessage, other_keys: &[[u8; 32]]) -> RatchetMessage {
    let mut w = m.to_wire();
    match t {
        Tamper::FlipBit(i) => {
            let bit = i.index(w.ciphertext.len() * 8);
            w.ciphertext[bit / 8] ^= 1 << (bit % 8);
        }
        Tamper::Counter(d) => w.counter = w.counter.wrapping_add(*d),
        Tamper::PreviousCounter(d) => w.previous_counter = w.previous_counter.wrapping_add(*d),
        Tamper::RatchetKey(i) => w.ratchet_key = other_keys[i.index(other_keys.len())].to_vec(),
        Tamper::Truncate(i) => {
            // Keep at least a tag's worth so it passes the edge validation and reaches decrypt.
            let len = 16 + i.index(w.ciphertext.len() - 16);
            w.ciphertext.truncate(len);
        }
        Tamper::Append(b) => w.ciphertext.push(*b),
    }
    let t = over_the_wire(&w).unwrap();
    assert_ne!(&t, m);
    t
}

/// Property 2: after a random conversation prefix, a batch of 1..=6 messages is sent, some of
/// them delivered out of order first; then one of the rest is tampered with (ciphertext bit,
/// length, counter, previous counter, or ratchet key replaced by another valid key). Decryption
/// fails, the receiver's encoded state is byte-identical, and the original message and the rest
/// of the batch still decrypt.
#[test]
fn prop_authentication_failure_leaves_state_unchanged() {
    let strategy = (
        any::<u64>(),
        any::<bool>(),
        turns(6, 5),
        any::<bool>(),
        side(),
        (1usize..=6).prop_flat_map(|k| Just((0..k).collect::<Vec<usize>>()).prop_shuffle()),
        any::<Index>(),
        tamper(),
    );
    check(
        256,
        &strategy,
        |(seed, alice_first, prefix, newest_first, from, batch, delivered_first, how)| {
            let mut c = establish(seed);
            let mut log = play(&mut c, alice_first, &prefix, &[]);
            deliver_late(&mut c, &mut log, newest_first);

            let to = from.other();
            let msgs: Vec<(RatchetMessage, Vec<u8>)> = (0..batch.len())
                .map(|i| {
                    let p = plaintext(from, 99, i);
                    (c.send(from, &p), p)
                })
                .collect();
            // `batch` is a delivery order; the first few are delivered, the next one is the target.
            let before_target = delivered_first.index(batch.len());
            for &i in &batch[..before_target] {
                c.deliver(to, &msgs[i].0, &msgs[i].1);
            }
            let target = batch[before_target];

            let mut keys: Vec<[u8; 32]> = log
                .iter()
                .map(|s| s.msg.header.ratchet_key)
                .chain(msgs.iter().map(|m| m.0.header.ratchet_key))
                .collect();
            let mut fresh = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
            keys.push(
                *DeviceIdentityKeyPair::generate(&mut fresh)
                    .public()
                    .dh_key(),
            );
            keys.sort_unstable();
            keys.dedup();
            keys.retain(|k| *k != msgs[target].0.header.ratchet_key);

            let bad = apply(&how, &msgs[target].0, &keys);
            let e = c.refused(to, &bad);
            prop_assert!(
                !matches!(e, Error::Malformed { .. }),
                "unexpected error {:?}",
                e
            );

            for &i in &batch[before_target..] {
                c.deliver(to, &msgs[i].0, &msgs[i].1);
            }
            // The tampered copy stays refused after the original went through.
            c.refused(to, &bad);
            c.ping_pong();
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Skip limit
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum SkipWhere {
    /// The jump happens in Bob's current receiving chain.
    CurrentChain,
    /// The jump is the first message of Alice's next chain (after `pn_gap` undelivered messages
    /// at the end of her previous chain).
    NewChain,
}

/// Alice and Bob exchange one round trip so that Alice's next message starts a new chain.
fn turn_around(c: &mut Convo) {
    let m = c.send(Side::Bob, b"turn");
    c.deliver(Side::Alice, &m, b"turn");
}

/// Property 3: a message more than MAX_SKIP ahead of its receiving chain is refused with
/// TooFarAhead { skip, limit: MAX_SKIP } and the state is unchanged; exactly MAX_SKIP ahead is
/// accepted, stores exactly the skipped keys, and every skipped message then decrypts (in any
/// order), as do the messages that were too far ahead before.
#[test]
fn prop_skip_limit() {
    let strategy = (
        any::<u64>(),
        prop_oneof![Just(SkipWhere::CurrentChain), Just(SkipWhere::NewChain)],
        0u32..4,
        0u32..4,
        1u32..=12,
        prop::collection::vec(any::<Index>(), 1..4),
        any::<u64>(),
    );
    check(
        32,
        &strategy,
        |(seed, place, prefix, pn_gap, extra, too_far, order_seed)| {
            let mut c = establish(seed);
            for i in 0..prefix {
                let p = plaintext(Side::Alice, 0, i as usize);
                let m = c.send(Side::Alice, &p);
                c.deliver(Side::Bob, &m, &p);
            }
            let mut old: Vec<(RatchetMessage, Vec<u8>)> = Vec::new();
            let base = match place {
                SkipWhere::CurrentChain => 1 + prefix,
                SkipWhere::NewChain => {
                    for i in 0..pn_gap {
                        let p = plaintext(Side::Alice, 1, i as usize);
                        old.push((c.send(Side::Alice, &p), p));
                    }
                    turn_around(&mut c);
                    0
                }
            };
            prop_assert_eq!(c.bob.skipped_len(), 0);
            let n = MAX_SKIP + 1 + extra;
            let batch: Vec<(RatchetMessage, Vec<u8>)> = (0..n)
                .map(|k| {
                    let p = plaintext(Side::Alice, 2, k as usize);
                    (c.send(Side::Alice, &p), p)
                })
                .collect();
            for (k, m) in batch.iter().enumerate() {
                prop_assert_eq!(m.0.header.counter, base + k as u32);
            }

            // More than MAX_SKIP ahead: refused, unchanged.
            let far: Vec<u32> = (MAX_SKIP + 1..n).collect();
            for i in &too_far {
                let k = far[i.index(far.len())];
                let e = c.refused(Side::Bob, &batch[k as usize].0);
                let ok = matches!(e, Error::Protocol(ProtocolError::TooFarAhead { skip, limit })
                if skip == u64::from(k) && limit == MAX_SKIP);
                prop_assert!(
                    ok,
                    "offset {}: expected TooFarAhead {{ skip: {}, limit: {} }}, got {:?}",
                    k,
                    k,
                    MAX_SKIP,
                    e
                );
            }

            // Exactly MAX_SKIP ahead: accepted.
            let k = MAX_SKIP as usize;
            c.deliver(Side::Bob, &batch[k].0, &batch[k].1);
            prop_assert_eq!(c.bob.skipped_len(), MAX_SKIP as usize + old.len());

            // Every skipped message decrypts, in a random order.
            let mut rest: Vec<(RatchetMessage, Vec<u8>)> = batch[..k].to_vec();
            rest.extend(old.iter().cloned());
            shuffle(&mut rest, order_seed);
            for (m, p) in &rest {
                c.deliver(Side::Bob, m, p);
            }
            prop_assert_eq!(c.bob.skipped_len(), 0);
            // The formerly too-far messages are now next in line.
            for (m, p) in &batch[k + 1..] {
                c.deliver(Side::Bob, m, p);
            }
            c.ping_pong();
            Ok(())
        },
    );
}

/// The previous-counter boundary that the spec accepts: PN exactly MAX_SKIP beyond Bob's receiving
/// index. Accepted, and every one of the MAX_SKIP skipped messages of the old chain still decrypts.
#[test]
fn previous_counter_gap_of_max_skip_is_accepted() {
    let mut c = establish(41);
    let old: Vec<(RatchetMessage, Vec<u8>)> = (0..MAX_SKIP as usize)
        .map(|i| {
            let p = plaintext(Side::Alice, 1, i);
            (c.send(Side::Alice, &p), p)
        })
        .collect();
    turn_around(&mut c);
    let m = c.send(Side::Alice, b"new chain");
    assert_eq!(m.header.previous_counter, 1 + MAX_SKIP);
    c.deliver(Side::Bob, &m, b"new chain");
    assert_eq!(c.bob.skipped_len(), MAX_SKIP as usize);
    for (m, p) in old.iter().rev() {
        c.deliver(Side::Bob, m, p);
    }
    c.ping_pong();
}

/// BUG (see the report): a new-chain message whose previous counter PN is MAX_SKIP + 1 beyond Bob's
/// receiving index is accepted, although that requires MAX_SKIP + 1 keys of the old chain to be
/// derived and stored in one step (the current-chain and new-chain paths refuse the equivalent jump
/// with TooFarAhead). The per-chain cap then immediately evicts the oldest of those keys, so an
/// honest, merely delayed message is lost.
#[test]
fn previous_counter_gap_beyond_max_skip_is_refused() {
    let mut c = establish(42);
    // Bob's receiving index in Alice's chain is 1; Alice sends MAX_SKIP + 1 more, none delivered.
    let old: Vec<(RatchetMessage, Vec<u8>)> = (0..=MAX_SKIP as usize)
        .map(|i| {
            let p = plaintext(Side::Alice, 1, i);
            (c.send(Side::Alice, &p), p)
        })
        .collect();
    turn_around(&mut c);
    let m = c.send(Side::Alice, b"new chain");
    assert_eq!(m.header.previous_counter, 1 + MAX_SKIP + 1);
    let before = encoded(&c.bob);
    match c.recv(Side::Bob, &m) {
        Err(Error::Protocol(ProtocolError::TooFarAhead { limit, .. })) => {
            assert_eq!(limit, MAX_SKIP);
            assert_eq!(encoded(&c.bob), before);
        }
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(_) => {
            let stored = c.bob.skipped_len();
            let lost: Vec<u32> = old
                .iter()
                .filter(|(m, p)| c.recv(Side::Bob, m).ok().as_ref() != Some(p))
                .map(|(m, _)| m.header.counter)
                .collect();
            panic!(
                "a previous-counter gap of {} keys (> MAX_SKIP = {MAX_SKIP}) was accepted; {stored} skipped keys \
                 kept, and the delayed message(s) with counter {lost:?} can no longer be decrypted",
                MAX_SKIP + 1
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Skipped-key caps and expiry
// ---------------------------------------------------------------------------------------------

/// Reference model of one receiver's skipped keys: insertion order, per-chain cap (oldest of the
/// chain evicted), then total cap (oldest overall evicted).
#[derive(Default)]
struct SkippedModel {
    keys: VecDeque<([u8; 32], u32)>,
    per_chain: HashMap<[u8; 32], usize>,
}

impl SkippedModel {
    fn push(&mut self, k: ([u8; 32], u32)) {
        self.keys.push_back(k);
        let n = self.per_chain.entry(k.0).or_default();
        *n += 1;
        if *n > MAX_SKIPPED_KEYS_PER_CHAIN {
            let pos = self.keys.iter().position(|e| e.0 == k.0).unwrap();
            self.keys.remove(pos);
            *self.per_chain.get_mut(&k.0).unwrap() -= 1;
        }
        while self.keys.len() > MAX_SKIPPED_KEYS {
            let (rk, _) = self.keys.pop_front().unwrap();
            *self.per_chain.get_mut(&rk).unwrap() -= 1;
        }
    }

    fn remove(&mut self, k: ([u8; 32], u32)) {
        let pos = self.keys.iter().position(|e| *e == k).unwrap();
        self.keys.remove(pos);
        *self.per_chain.get_mut(&k.0).unwrap() -= 1;
    }

    fn contains(&self, k: ([u8; 32], u32)) -> bool {
        self.keys.contains(&k)
    }
}

fn id(m: &RatchetMessage) -> ([u8; 32], u32) {
    (m.header.ratchet_key, m.header.counter)
}

/// The session's skipped keys in order, checked against the caps and against the model.
fn check_skipped(s: &SessionState, model: &SkippedModel) {
    let p = s.to_proto();
    let stored: Vec<([u8; 32], u32)> = p
        .skipped
        .iter()
        .map(|k| {
            (
                <[u8; 32]>::try_from(k.ratchet_key.as_slice()).unwrap(),
                k.counter,
            )
        })
        .collect();
    assert_eq!(s.skipped_len(), stored.len());
    assert!(
        s.skipped_len() <= MAX_SKIPPED_KEYS,
        "{} skipped keys > MAX_SKIPPED_KEYS",
        s.skipped_len()
    );
    let mut per_chain: HashMap<[u8; 32], usize> = HashMap::new();
    for (rk, _) in &stored {
        *per_chain.entry(*rk).or_default() += 1;
    }
    assert!(
        per_chain.values().all(|&n| n <= MAX_SKIPPED_KEYS_PER_CHAIN),
        "per-chain cap exceeded"
    );
    assert!(
        stored.iter().eq(model.keys.iter()),
        "stored skipped keys differ from the model (eviction order)"
    );
}

#[derive(Clone, Debug)]
struct GapStep {
    from: Side,
    gap: u32,
    /// Skipped messages delivered right after the step (chosen among the still-stored ones).
    early: Vec<Index>,
}

fn gap_step() -> impl Strategy<Value = GapStep> {
    (
        side(),
        prop_oneof![1 => 0u32..=20, 3 => (MAX_SKIP - 150)..=MAX_SKIP],
        prop::collection::vec(any::<Index>(), 0..4),
    )
        .prop_map(|(from, gap, early)| GapStep { from, gap, early })
}

struct Pending {
    to: Side,
    msg: RatchetMessage,
    plaintext: Vec<u8>,
}

/// Property 4: a sequence of steps in which one side sends `gap + 1` messages of which only the
/// last is delivered (large gaps, same chain or after a ratchet step). After every decryption the
/// receiver's skipped keys never exceed MAX_SKIPPED_KEYS in total nor MAX_SKIPPED_KEYS_PER_CHAIN
/// per chain, and equal a reference model (oldest evicted first). Stored keys decrypt their
/// message; evicted ones are refused without a state change.
#[test]
fn prop_skipped_key_caps_hold() {
    let strategy = (
        any::<u64>(),
        prop::collection::vec(gap_step(), 3..=7),
        prop::collection::vec(any::<Index>(), 8),
    );
    check(24, &strategy, |(seed, steps, evicted_sample)| {
        let mut c = establish(seed);
        let mut model: HashMap<Side, SkippedModel> = HashMap::new();
        model.insert(Side::Alice, SkippedModel::default());
        model.insert(Side::Bob, SkippedModel::default());
        let mut pending: Vec<Pending> = Vec::new();
        for (t, step) in steps.iter().enumerate() {
            let to = step.from.other();
            let mut sent: Vec<Pending> = (0..=step.gap as usize)
                .map(|i| {
                    let plaintext = plaintext(step.from, t, i);
                    Pending {
                        to,
                        msg: c.send(step.from, &plaintext),
                        plaintext,
                    }
                })
                .collect();
            let last = sent.pop().unwrap();
            c.deliver(to, &last.msg, &last.plaintext);
            let m = model.get_mut(&to).unwrap();
            for p in &sent {
                m.push(id(&p.msg));
            }
            pending.extend(sent);
            check_skipped(c.state(to), &model[&to]);

            for e in &step.early {
                let stored: Vec<usize> = (0..pending.len())
                    .filter(|&i| pending[i].to == to && model[&to].contains(id(&pending[i].msg)))
                    .collect();
                if stored.is_empty() {
                    break;
                }
                let p = pending.swap_remove(stored[e.index(stored.len())]);
                c.deliver(to, &p.msg, &p.plaintext);
                model.get_mut(&to).unwrap().remove(id(&p.msg));
                check_skipped(c.state(to), &model[&to]);
            }
        }
        // Evicted messages are refused, state unchanged.
        let evicted: Vec<usize> = (0..pending.len())
            .filter(|&i| !model[&pending[i].to].contains(id(&pending[i].msg)))
            .collect();
        if !evicted.is_empty() {
            for e in &evicted_sample {
                let p = &pending[evicted[e.index(evicted.len())]];
                let (to, msg) = (p.to, p.msg.clone());
                c.refused(to, &msg);
            }
        }
        // Every stored key still opens its message (newest first); afterwards nothing is left.
        for p in pending.iter().rev() {
            if model[&p.to].contains(id(&p.msg)) {
                c.deliver(p.to, &p.msg, &p.plaintext);
            }
        }
        prop_assert_eq!(c.alice.skipped_len(), 0);
        prop_assert_eq!(c.bob.skipped_len(), 0);
        c.ping_pong();
        Ok(())
    });
}

/// Property 4 (expiry): keys skipped at time t are still usable at t + SKIPPED_KEY_MAX_AGE_MS
/// (inclusive), and once another message has been decrypted later than that, the old message
/// is refused (state unchanged), whether the later message was in the same chain or after a
/// ratchet step.
#[test]
fn prop_skipped_keys_expire_after_max_age() {
    let strategy = (
        any::<u64>(),
        2u32..=30,
        any::<Index>(),
        prop_oneof![Just(1u64), 1u64..=1_000_000_000_000],
        any::<bool>(),
    );
    check(
        64,
        &strategy,
        |(seed, skipped, probe, late_by, after_ratchet_step)| {
            let mut c = establish(seed);
            let msgs: Vec<(RatchetMessage, Vec<u8>)> = (0..=skipped as usize)
                .map(|i| {
                    let p = plaintext(Side::Alice, 1, i);
                    (c.send(Side::Alice, &p), p)
                })
                .collect();
            let t = T0 + 10_000;
            // Bob gets only the last: `skipped` keys stored at t.
            let (last, pl) = msgs.last().unwrap();
            prop_assert_eq!(&c.recv_at(Side::Bob, last, t).unwrap(), pl);
            prop_assert_eq!(c.bob.skipped_len(), skipped as usize);

            // At exactly the maximum age the keys are still there.
            let edge = t + SKIPPED_KEY_MAX_AGE_MS;
            let (m0, p0) = &msgs[0];
            prop_assert_eq!(&c.recv_at(Side::Bob, m0, edge).unwrap(), p0);
            prop_assert_eq!(c.bob.skipped_len(), skipped as usize - 1);

            // Later than that, some other message is decrypted first.
            let later = edge + late_by;
            if after_ratchet_step {
                let m = c
                    .bob
                    .encrypt(b"reply", &mut c.rng_bob, later)
                    .unwrap()
                    .message;
                prop_assert_eq!(
                    c.recv_at(Side::Alice, &m, later).unwrap(),
                    b"reply".to_vec()
                );
                let m = c
                    .alice
                    .encrypt(b"next chain", &mut c.rng_alice, later)
                    .unwrap()
                    .message;
                prop_assert_eq!(
                    c.recv_at(Side::Bob, &m, later).unwrap(),
                    b"next chain".to_vec()
                );
            } else {
                let m = c
                    .alice
                    .encrypt(b"same chain", &mut c.rng_alice, later)
                    .unwrap()
                    .message;
                prop_assert_eq!(
                    c.recv_at(Side::Bob, &m, later).unwrap(),
                    b"same chain".to_vec()
                );
            }
            prop_assert_eq!(c.bob.skipped_len(), 0);
            let (old, _) = &msgs[1 + probe.index(skipped as usize - 1)];
            c.now = later;
            let e = c.refused(Side::Bob, old);
            prop_assert!(
                matches!(e, Error::Protocol(ProtocolError::Duplicate)),
                "got {:?}",
                e
            );
            c.ping_pong();
            Ok(())
        },
    );
}

/// BUG (see the report): a skipped key past SKIPPED_KEY_MAX_AGE_MS still decrypts its message when
/// that message is the next thing the session decrypts. Expiry only runs after a *successful*
/// decryption, and the skipped-key lookup does not look at the key's age.
#[test]
fn expired_skipped_key_is_refused_even_as_the_next_message() {
    let mut c = establish(43);
    let m1 = c.send(Side::Alice, b"one");
    let m2 = c.send(Side::Alice, b"two");
    let t = T0 + 10_000;
    assert_eq!(c.recv_at(Side::Bob, &m2, t).unwrap(), b"two");
    assert_eq!(c.bob.skipped_len(), 1);
    let before = encoded(&c.bob);
    let r = c.recv_at(Side::Bob, &m1, t + SKIPPED_KEY_MAX_AGE_MS + 1);
    assert!(
        r.is_err(),
        "a message key skipped at {t} decrypted at {} (more than SKIPPED_KEY_MAX_AGE_MS later)",
        t + SKIPPED_KEY_MAX_AGE_MS + 1
    );
    assert_eq!(encoded(&c.bob), before);
}

// ---------------------------------------------------------------------------------------------
// Serialization at any point
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Event {
    Send(Side, u8),
    /// Deliver one of the undelivered messages (any order, either direction).
    Deliver(Index),
    /// Persist and restore one side (only in the second run).
    Reload(Side),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (side(), any::<u8>()).prop_map(|(s, n)| Event::Send(s, n)),
        4 => any::<Index>().prop_map(Event::Deliver),
        2 => side().prop_map(Event::Reload),
    ]
}

/// Everything the accessors show, plus the encoded state.
fn observe(s: &SessionState) -> Vec<u8> {
    let mut out = format!(
        "{:?} {:?} {:?} {:?} {} {} {} {} {:?} {:?}",
        s.pending(),
        s.root_key(),
        s.sending_chain_key(),
        s.receiving_chain_key(),
        s.skipped_len(),
        s.last_used_at(),
        s.created_at(),
        s.is_initiator(),
        s.base_key(),
        s.remote_identity().to_bytes(),
    )
    .into_bytes();
    out.extend_from_slice(&encoded(s));
    out
}

/// Runs the script; returns everything observable (wire bytes of every message sent, the result of
/// every delivery, both sides' accessors and encoded states after every event) and both final
/// encoded states.
fn run_script(
    seed: u64,
    events: &[Event],
    reload_states: bool,
) -> (Vec<Vec<u8>>, Vec<u8>, Vec<u8>) {
    let mut c = establish(seed);
    let mut transcript = Vec::new();
    let mut undelivered: Vec<(Side, RatchetMessage, Vec<u8>)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Send(from, n) => {
                let mut p = format!("{from:?} {i} ").into_bytes();
                p.resize(p.len() + usize::from(*n), *n);
                let m = c.send(*from, &p);
                transcript.push(m.to_wire().encode_to_vec());
                undelivered.push((from.other(), m, p));
            }
            Event::Deliver(ix) if !undelivered.is_empty() => {
                let (to, m, p) = undelivered.remove(ix.index(undelivered.len()));
                let got = c.recv(to, &m).unwrap();
                assert_eq!(got, p);
                transcript.push(got);
            }
            Event::Deliver(_) => {}
            Event::Reload(who) => {
                if reload_states {
                    let back = reload(c.state(*who));
                    *c.state_mut(*who) = back;
                }
            }
        }
        for who in [Side::Alice, Side::Bob] {
            transcript.push(observe(c.state(who)));
        }
    }
    for (to, m, p) in undelivered.iter().rev() {
        let got = c.recv(*to, m).unwrap();
        assert_eq!(&got, p);
        transcript.push(got);
    }
    c.ping_pong();
    for who in [Side::Alice, Side::Bob] {
        let m = c.send(who, b"last");
        transcript.push(m.to_wire().encode_to_vec());
    }
    let (a, b) = (encoded(&c.alice), encoded(&c.bob));
    (transcript, a, b)
}

/// Property 5: persisting and restoring either side at any point (SessionState::from_proto of
/// the decoded to_proto bytes, checked byte-exact) does not change the conversation: the same
/// ciphertexts for the same RNG draws, the same plaintexts, the same final states.
#[test]
fn prop_state_survives_serialization_anywhere() {
    let strategy = (any::<u64>(), prop::collection::vec(event(), 1..=60));
    check(192, &strategy, |(seed, events)| {
        let plain = run_script(seed, &events, false);
        let reloaded = run_script(seed, &events, true);
        prop_assert!(plain.0 == reloaded.0, "transcripts differ");
        prop_assert!(plain.1 == reloaded.1, "Alice's final states differ");
        prop_assert!(plain.2 == reloaded.2, "Bob's final states differ");
        Ok(())
    });
}
