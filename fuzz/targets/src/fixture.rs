//! The deterministic state the decrypt and store targets start from, built once per process.
//!
//! Alice and Bob, one device each, know each other's device lists and have a session both ways;
//! Alice created a group with Bob and Bob holds her sender key. Bob is the device under test: its
//! store is snapshotted, and every fuzz input runs against a fresh `Device::open` of that snapshot.
//! Alice's messages that Bob has not received yet are kept, so a target can check after a rejected
//! input that the honest next message still decrypts.

use std::sync::OnceLock;

use hush_core::device::{Device, GroupIncoming, Outgoing};
use hush_core::keys::{DeviceAddress, DeviceIdentity};
use hush_core::prekeys::{PreKeyBundle, PublishedPreKeys};
use hush_core::sender_key::GroupId;
use hush_core::store::kv::{Batch, KvStore, Namespace};
use hush_core::store::memory::MemoryKv;
use hush_proto::{Message, store as pstore, wire};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// The clock of the fixture (ms since the Unix epoch).
pub const T0: u64 = 1_700_000_000_000;
/// The clock the targets run at: a little after the fixture was made.
pub const NOW: u64 = T0 + 60_000;

/// The shared starting state.
pub struct Fixture {
    /// Bob's store: the state of the device under test.
    pub bob_store: MemoryKv,
    /// Alice's device (the known sender).
    pub alice: DeviceAddress,
    /// Alice's device identity.
    pub alice_identity: DeviceIdentity,
    /// Bob's device.
    pub bob: DeviceAddress,
    /// Alice's signed device list.
    pub alice_list: Vec<u8>,
    /// Bob's signed device list.
    pub bob_list: Vec<u8>,
    /// A pre-key bundle of Bob's (encoded `wire::PreKeyBundle`), valid against `bob_list`.
    pub bob_bundle: Vec<u8>,
    /// The initial message that started Alice's session with Bob (already received: a replay).
    pub initial: Vec<u8>,
    /// Pairwise messages from Alice that Bob has not received yet, in sending order; each decrypts
    /// to the application payload `pairwise_plaintexts[i]`.
    pub pairwise: Vec<Vec<u8>>,
    /// The application payloads of `pairwise`.
    pub pairwise_plaintexts: Vec<Vec<u8>>,
    /// The group both are in.
    pub group: GroupId,
    /// Group messages from Alice that Bob has not received yet, in sending order.
    pub group_messages: Vec<Vec<u8>>,
    /// The application payloads of `group_messages`.
    pub group_plaintexts: Vec<Vec<u8>>,
    /// A group message for a group Bob has not heard of (buffered when it arrives).
    pub unknown_group_message: Vec<u8>,
    /// The group's signed changes (encoded `wire::SignedGroupChange`), creation first.
    pub group_changes: Vec<Vec<u8>>,
    /// The group's log as the relay serves it: sealed entries, position 1 first.
    pub group_log: Vec<Vec<u8>>,
    /// The group secret (32 bytes).
    pub group_secret: Vec<u8>,
    /// A sender-key distribution of Alice's (encoded `wire::SenderKeyDistribution`).
    pub distribution: Vec<u8>,
}

/// The fixture, built on first use.
pub fn get() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build)
}

fn bundle(p: &mut PublishedPreKeys) -> PreKeyBundle {
    p.claim_bundle()
}

fn own_list<S: KvStore>(d: &Device<S>) -> Vec<u8> {
    let a = d.address().account;
    d.device_list(&a).unwrap().signed_bytes().to_vec()
}

/// Delivers pairwise messages (and whatever they answer) between the two devices until quiet.
/// Application payloads stay unacknowledged in the inbox, which the store targets want.
fn deliver(
    alice: &mut Device<MemoryKv>,
    bob: &mut Device<MemoryKv>,
    from: DeviceAddress,
    out: Vec<Outgoing>,
    rng: &mut ChaCha20Rng,
) {
    let mut q: Vec<(DeviceAddress, Outgoing)> = out.into_iter().map(|o| (from, o)).collect();
    while let Some((f, o)) = q.pop() {
        let to = if o.to == alice.address() {
            &mut *alice
        } else {
            &mut *bob
        };
        let inc = to.decrypt(&f, &o.bytes, rng, T0).unwrap();
        q.extend(inc.outgoing.into_iter().map(|x| (o.to, x)));
    }
}

fn build() -> Fixture {
    let mut rng = ChaCha20Rng::from_seed([0x5a; 32]);
    let mut alice = Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, T0).unwrap();
    let (a, b) = (alice.address(), bob.address());
    let (alice_list, bob_list) = (own_list(&alice), own_list(&bob));
    alice.accept_device_list(&bob_list, &b.account, T0).unwrap();
    bob.accept_device_list(&alice_list, &a.account, T0).unwrap();

    // A session both ways: Alice's initial message, Bob's answer.
    let mut pk = bob.published_pre_keys().unwrap();
    let bob_bundle = bundle(&mut pk);
    alice.start_session(&bob_bundle, &mut rng, T0).unwrap();
    let initial = alice.encrypt(&b, b"hello bob", &mut rng, T0).unwrap();
    let got = bob.decrypt(&a, &initial, &mut rng, T0).unwrap();
    assert_eq!(got.received.len(), 1);
    let back = bob.encrypt(&a, b"hello alice", &mut rng, T0).unwrap();
    alice.decrypt(&b, &back, &mut rng, T0).unwrap();

    // A group with Bob; Bob receives the first message, so he holds Alice's sender key.
    let w = alice
        .create_group("fuzz", &[b.account], &mut rng, T0)
        .unwrap();
    let group = w.group;
    let group_log = vec![w.entry.clone()];
    let landed = alice.group_write_landed(w, &mut rng, T0).unwrap();
    deliver(&mut alice, &mut bob, a, landed.outgoing, &mut rng);
    // Bob was invited by the notice and reads the log the relay would serve him.
    bob.accept_group_log(&group, 1, &[(1, group_log[0].clone())], &mut rng, T0)
        .unwrap();
    assert!(bob.group(&group).is_some(), "fixture: Bob joined the group");
    let group_secret = bob
        .group(&group)
        .unwrap()
        .log()
        .secret()
        .to_bytes()
        .to_vec();
    let first = alice.group_encrypt(&group, b"g0", &mut rng, T0).unwrap();
    assert!(!first.distributions.is_empty());
    deliver(&mut alice, &mut bob, a, first.distributions, &mut rng);
    match bob.decrypt_group(&first.message, &mut rng, T0).unwrap() {
        GroupIncoming::Decrypted(_) => {}
        GroupIncoming::Buffered { .. } => panic!("fixture: first group message buffered"),
    }

    // A second group whose creation Bob never receives: its message is buffered in his store, and
    // a third message of it stays with the fixture.
    let w = alice
        .create_group("unseen", &[b.account], &mut rng, T0)
        .unwrap();
    let other = w.group;
    // Landed for Alice; its notice never reaches Bob.
    alice.group_write_landed(w, &mut rng, T0).unwrap();
    let unseen = alice.group_encrypt(&other, b"u0", &mut rng, T0).unwrap();
    match bob.decrypt_group(&unseen.message, &mut rng, T0).unwrap() {
        GroupIncoming::Buffered { .. } => {}
        GroupIncoming::Decrypted(_) => panic!("fixture: unknown group decrypted"),
    }
    let unknown_group_message = alice
        .group_encrypt(&other, b"u1", &mut rng, T0)
        .unwrap()
        .message;

    // What Bob has not received yet.
    let pairwise_plaintexts: Vec<Vec<u8>> = vec![b"m1".to_vec(), b"m2".to_vec(), b"m3".to_vec()];
    let pairwise = pairwise_plaintexts
        .iter()
        .map(|p| alice.encrypt(&b, p, &mut rng, T0).unwrap())
        .collect();
    let group_plaintexts: Vec<Vec<u8>> = vec![b"g1".to_vec(), b"g2".to_vec(), b"g3".to_vec()];
    let group_messages = group_plaintexts
        .iter()
        .map(|p| {
            alice
                .group_encrypt(&group, p, &mut rng, T0)
                .unwrap()
                .message
        })
        .collect();
    let group_changes = stored_changes(&bob.store().clone(), &group);

    // The distribution travelled pairwise, encrypted; the fixture wants the plain wire form, so
    // take it from the sender-key record Bob stored and re-wrap it.
    let distribution = plain_distribution(&bob.store().clone(), &group, &a);

    let mut bob_store = bob.store().clone();
    prune_pre_keys(&mut bob_store);
    Fixture {
        bob_store,
        alice: a,
        alice_identity: alice.identity(),
        bob: b,
        alice_list,
        bob_list,
        bob_bundle: bob_bundle.0.encode_to_vec(),
        initial,
        pairwise,
        pairwise_plaintexts,
        group,
        group_messages,
        group_plaintexts,
        unknown_group_message,
        group_changes,
        group_log,
        group_secret,
        distribution,
    }
}

/// The signed changes of group `g` as Bob stored them.
fn stored_changes(store: &MemoryKv, g: &GroupId) -> Vec<Vec<u8>> {
    let raw = store.get(Namespace::Groups, &g.0).unwrap().unwrap();
    pstore::GroupRecord::decode(raw.as_slice())
        .unwrap()
        .entries
        .iter()
        .map(|e| e.change.clone())
        .collect()
}

/// A `wire::SenderKeyDistribution` rebuilt from the sender-key state Bob stored for Alice.
fn plain_distribution(store: &MemoryKv, g: &GroupId, sender: &DeviceAddress) -> Vec<u8> {
    let mut key = g.0.to_vec();
    key.extend_from_slice(sender.account.as_bytes());
    key.extend_from_slice(&sender.device_id.to_be_bytes());
    let raw = store.get(Namespace::SenderKeys, &key).unwrap().unwrap();
    let record = pstore::SenderKeyRecord::decode(raw.as_slice()).unwrap();
    let state = record.states.first().unwrap();
    wire::SenderKeyDistribution {
        group_id: g.0.to_vec(),
        key_id: state.key_id,
        iteration: state.iteration,
        chain_key: state.chain_key.clone(),
        signing_key: state.signing_public.clone(),
    }
    .encode_to_vec()
}

/// Keeps two one-time and two one-time ML-KEM pre-keys (plus the signed and last-resort ones), so
/// that `Device::open` in every fuzz iteration stays cheap. A device that handed out the rest is
/// in exactly this state.
fn prune_pre_keys(store: &mut MemoryKv) {
    let mut batch = Batch::new();
    for (k, _) in store
        .scan(Namespace::OneTimePreKeys)
        .unwrap()
        .into_iter()
        .skip(2)
    {
        batch.delete(Namespace::OneTimePreKeys, k);
    }
    let mut kept = 0;
    for (k, v) in store.scan(Namespace::KemPreKeys).unwrap() {
        if k.len() != 4 {
            continue; // a used last-resort base key, not a pre-key
        }
        let Ok(p) = pstore::KemPreKeySecret::decode(v.as_slice()) else {
            continue;
        };
        if p.last_resort {
            continue;
        }
        kept += 1;
        if kept > 2 {
            batch.delete(Namespace::KemPreKeys, k);
        }
    }
    store.commit(batch).unwrap();
}

/// Every record of every namespace, for before/after comparisons.
pub fn dump<S: KvStore>(store: &S) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
    Namespace::ALL
        .iter()
        .flat_map(|ns| {
            store
                .scan(*ns)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (ns.as_byte(), k, v.to_vec()))
        })
        .collect()
}
