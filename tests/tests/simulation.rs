//! Deterministic simulation: two users with several devices each exchange thousands of messages
//! over a network that drops, duplicates and reorders, with simultaneous session initiation and
//! crash-restarts of a device from its persistent (sled) store. Every message that was not dropped
//! must be decrypted exactly once, by the right device, from the right sender.
#![cfg(test)]
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use hush_core::device::{Device, DeviceError};
use hush_core::error::{AuthError, Error, ProtocolError};
use hush_core::keys::DeviceAddress;
use hush_core::store::kv::KvStore;
use hush_core::store::memory::MemoryKv;
use hush_store_sled::SledKv;
use hush_tests::sim::{Directory, Envelope, Faults, Network};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use zeroize::Zeroizing;

type Store = Box<dyn KvStore>;

struct Node {
    device: Option<Device<Store>>,
    /// Set for the devices kept on sled, which crash and restart.
    sled_path: Option<PathBuf>,
}

/// Opens a device's sled store. A store just dropped (a simulated crash) releases its file lock
/// only once sled's background flusher has wound down, so a lock still held is waited for
/// (bounded), as the client engine does.
fn open_sled(path: &std::path::Path, seed: u8) -> Store {
    for _ in 0..500 {
        let rng = Box::new(ChaCha20Rng::from_seed([seed; 32]));
        match SledKv::open(path, Zeroizing::new([0x42; 32]), rng) {
            Ok(s) => return Box::new(s),
            Err(hush_core::store::kv::StoreError::Io(e))
                if e.contains("could not acquire lock") =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("store does not open: {e}"),
        }
    }
    panic!("store still locked after 5 s");
}

struct World {
    nodes: BTreeMap<DeviceAddress, Node>,
    dir: Directory,
    net: Network,
    rng: ChaCha20Rng,
    now: u64,
    next_tag: u64,
    /// tag → (from, to)
    sent: BTreeMap<u64, (DeviceAddress, DeviceAddress)>,
    /// tag → times decrypted
    decrypted: BTreeMap<u64, u32>,
    rejected_duplicates: u64,
    restarts: u32,
    sessions_started: u32,
    trace: Vec<(u64, DeviceAddress, DeviceAddress, String)>,
}

impl World {
    fn device(&mut self, a: &DeviceAddress) -> &mut Device<Store> {
        self.nodes.get_mut(a).unwrap().device.as_mut().unwrap()
    }

    fn publish(&mut self, a: &DeviceAddress) {
        let p = self.device(a).published_pre_keys().unwrap();
        self.dir.publish_pre_keys(p);
    }

    fn sync_lists(&mut self) {
        let now = self.now;
        let lists: Vec<_> = self
            .dir
            .accounts()
            .into_iter()
            .map(|a| (a, self.dir.list(&a).unwrap().to_vec()))
            .collect();
        for addr in self.nodes.keys().copied().collect::<Vec<_>>() {
            for (acct, list) in &lists {
                self.device(&addr)
                    .accept_device_list(list, acct, now)
                    .unwrap();
            }
        }
    }

    fn send(&mut self, from: DeviceAddress, to: DeviceAddress) {
        self.now += 1;
        let now = self.now;
        let tag = self.next_tag;
        self.next_tag += 1;
        let mut rng = ChaCha20Rng::from_seed(self.rng_seed());
        if !self.device(&from).has_session(&to, now).unwrap() {
            let bundle = self.dir.claim_bundle(&to).unwrap();
            self.device(&from)
                .start_session(&bundle, &mut rng, now)
                .unwrap();
            self.sessions_started += 1;
        }
        let body = format!("{tag}|{from:?}|{to:?}");
        let bytes = self
            .device(&from)
            .encrypt(&to, body.as_bytes(), &mut rng, now)
            .unwrap();
        self.sent.insert(tag, (from, to));
        {
            use prost::Message;
            let m = hush_proto::wire::PairwiseMessage::decode(bytes.as_slice()).unwrap();
            let d = match m.body.unwrap() {
                hush_proto::wire::pairwise_message::Body::Initial(i) => {
                    let r = i.message.unwrap();
                    format!(
                        "send INIT base {:02x?} key {:02x?} n {} pn {}",
                        &i.base_key[..3],
                        &r.ratchet_key[..3],
                        r.counter,
                        r.previous_counter
                    )
                }
                hush_proto::wire::pairwise_message::Body::Ratchet(r) => format!(
                    "send key {:02x?} n {} pn {}",
                    &r.ratchet_key[..3],
                    r.counter,
                    r.previous_counter
                ),
            };
            self.trace.push((tag, from, to, d));
        }
        self.net.send(Envelope {
            from,
            to,
            bytes,
            tag,
            group: false,
        });
    }

    fn rng_seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        rand_core::Rng::fill_bytes(&mut self.rng, &mut s);
        s
    }

    fn deliver_one(&mut self) -> bool {
        let Some(e) = self.net.deliver() else {
            return false;
        };
        self.now += 1;
        let now = self.now;
        let mut rng = ChaCha20Rng::from_seed(self.rng_seed());
        let result = self
            .device(&e.to)
            .decrypt(&e.from, &e.bytes, &mut rng, now)
            .map(|i| i.single().unwrap());
        {
            use prost::Message;
            let m = hush_proto::wire::PairwiseMessage::decode(e.bytes.as_slice()).unwrap();
            let d = match m.body.unwrap() {
                hush_proto::wire::pairwise_message::Body::Initial(i) => {
                    let r = i.message.unwrap();
                    format!(
                        "recv INIT base {:02x?} key {:02x?} n {} pn {} -> {}",
                        &i.base_key[..3],
                        &r.ratchet_key[..3],
                        r.counter,
                        r.previous_counter,
                        result.is_ok()
                    )
                }
                hush_proto::wire::pairwise_message::Body::Ratchet(r) => format!(
                    "recv key {:02x?} n {} pn {} -> {}",
                    &r.ratchet_key[..3],
                    r.counter,
                    r.previous_counter,
                    result
                        .as_ref()
                        .map(|_| "ok".to_string())
                        .unwrap_or_else(|e| e.to_string())
                ),
            };
            self.trace.push((e.tag, e.from, e.to, d));
        }
        match result {
            Ok(r) => {
                let text = String::from_utf8(r.plaintext.to_vec()).unwrap();
                let tag: u64 = text.split('|').next().unwrap().parse().unwrap();
                assert_eq!(tag, e.tag, "decrypted a different message than was sent");
                assert_eq!(
                    text,
                    format!("{tag}|{:?}|{:?}", e.from, e.to),
                    "wrong sender or recipient"
                );
                assert_eq!(r.from, e.from);
                *self.decrypted.entry(tag).or_default() += 1;
                self.device(&e.to).ack_message(r.id).unwrap();
                let mut rng = ChaCha20Rng::from_seed(self.rng_seed());
                if self
                    .device(&e.to)
                    .replenish_pre_keys(&mut rng, now)
                    .unwrap()
                {
                    self.publish(&e.to);
                }
            }
            // A replayed message is refused: as a duplicate while its chain is remembered, otherwise
            // it fails authentication as an unknown ratchet step. Either way it is never decrypted twice.
            Err(DeviceError::Protocol(
                Error::Protocol(ProtocolError::Duplicate) | Error::Auth(AuthError::DecryptFailed),
            )) if self.decrypted.get(&e.tag).copied().unwrap_or(0) > 0 => {
                self.rejected_duplicates += 1;
            }
            Err(err) => {
                use prost::Message;
                let m = hush_proto::wire::PairwiseMessage::decode(e.bytes.as_slice()).unwrap();
                let (kind, r) = match m.body.unwrap() {
                    hush_proto::wire::pairwise_message::Body::Initial(i) => {
                        ("initial", i.message.unwrap())
                    }
                    hush_proto::wire::pairwise_message::Body::Ratchet(r) => ("ratchet", r),
                };
                let history: Vec<_> = self
                    .trace
                    .iter()
                    .filter(|(_, f, t, _)| {
                        (*f == e.from && *t == e.to) || (*f == e.to && *t == e.from)
                    })
                    .collect();
                for h in history {
                    eprintln!("{h:?}");
                }
                panic!(
                    "message {} ({kind} key {:02x?} n {} pn {}) from {:?} to {:?} failed: {err}",
                    e.tag,
                    &r.ratchet_key[..4],
                    r.counter,
                    r.previous_counter,
                    e.from,
                    e.to
                )
            }
        }
        true
    }

    fn crash_restart(&mut self, a: &DeviceAddress) {
        let node = self.nodes.get_mut(a).unwrap();
        // A crash: the device is dropped without any shutdown; only what it committed survives.
        let device = node.device.take().unwrap();
        let store = match &node.sled_path {
            Some(path) => {
                drop(device);
                open_sled(path, 0x55)
            }
            None => device.into_store(),
        };
        node.device = Some(Device::open(store).unwrap());
        assert!(self.device(a).pending_messages().unwrap().is_empty());
        self.restarts += 1;
    }
}

fn setup(seed: u64, faults: Faults, tmp: &tempfile::TempDir) -> (World, Vec<Vec<DeviceAddress>>) {
    let mut rng = ChaCha20Rng::from_seed([seed as u8; 32]);
    let mut nodes = BTreeMap::new();
    let mut dir = Directory::default();
    let mut users = Vec::new();
    // Alice has three devices, Bob two. Alice's second device keeps its store on sled.
    for (u, n_devices) in [3u32, 2].into_iter().enumerate() {
        let mut primary =
            Device::create_account(Box::new(MemoryKv::new()) as Store, &mut rng, 0).unwrap();
        let account = primary.address().account;
        let mut addrs = vec![primary.address()];
        let mut linked = Vec::new();
        for id in 2..=n_devices {
            let sled = u == 0 && id == 2;
            let (store, sled_path) = if sled {
                let p = tmp.path().join(format!("u{u}d{id}"));
                (open_sled(&p, 0x33), Some(p))
            } else {
                (Box::new(MemoryKv::new()) as Store, None)
            };
            let d = Device::create_linked(store, &mut rng, account, id, 0).unwrap();
            primary.add_device(&d.consent(), 0).unwrap();
            addrs.push(d.address());
            linked.push((d, sled_path));
        }
        dir.publish_list(
            account,
            primary
                .device_list(&account)
                .unwrap()
                .signed_bytes()
                .to_vec(),
        );
        nodes.insert(
            primary.address(),
            Node {
                device: Some(primary),
                sled_path: None,
            },
        );
        for (d, sled_path) in linked {
            nodes.insert(
                d.address(),
                Node {
                    device: Some(d),
                    sled_path,
                },
            );
        }
        users.push(addrs);
    }
    let world = World {
        nodes,
        dir,
        net: Network::new(seed, faults),
        rng,
        now: 1,
        next_tag: 0,
        sent: BTreeMap::new(),
        decrypted: BTreeMap::new(),
        rejected_duplicates: 0,
        restarts: 0,
        sessions_started: 0,
        trace: Vec::new(),
    };
    (world, users)
}

fn run(seed: u64, rounds: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let faults = Faults {
        drop_per_mille: 50,
        duplicate_per_mille: 80,
    };
    let (mut w, users) = setup(seed, faults, &tmp);
    for a in w.nodes.keys().copied().collect::<Vec<_>>() {
        w.publish(&a);
    }
    w.sync_lists();
    let all: Vec<DeviceAddress> = users.iter().flatten().copied().collect();
    let sled_device = users[0][1];

    // Simultaneous initiation: Alice's and Bob's first devices start sessions with each other
    // and send before anything is delivered.
    let (a1, b1) = (users[0][0], users[1][0]);
    w.send(a1, b1);
    w.send(b1, a1);
    w.send(a1, b1);
    w.send(b1, a1);

    for round in 0..rounds {
        // A user's device sends to every device of the other user and to its own other devices,
        // as a messenger does for one chat message.
        let from = all[w.net.below(all.len() as u32) as usize];
        for to in all
            .iter()
            .copied()
            .filter(|t| *t != from)
            .collect::<Vec<_>>()
        {
            w.send(from, to);
        }
        for _ in 0..w.net.below(8) {
            w.deliver_one();
        }
        if round % (rounds / 4) == rounds / 4 - 1 {
            w.crash_restart(&sled_device);
        }
        if round == rounds / 2 {
            w.crash_restart(&users[1][1]);
        }
    }
    while w.deliver_one() {}

    // Every message that was not dropped was decrypted exactly once.
    let mut delivered = 0;
    for tag in w.sent.keys() {
        let n = w.decrypted.get(tag).copied().unwrap_or(0);
        if w.net.dropped.contains(tag) {
            assert_eq!(n, 0, "dropped message {tag} was decrypted");
        } else {
            assert_eq!(n, 1, "message {tag} decrypted {n} times");
            delivered += 1;
        }
    }
    assert!(
        delivered >= 3 * w.sent.len() / 4,
        "too few deliveries for a meaningful run"
    );
    assert!(
        w.net.duplicates > 100,
        "duplicates were injected: {}",
        w.net.duplicates
    );
    assert_eq!(
        w.rejected_duplicates, w.net.duplicates,
        "every duplicate was rejected"
    );
    assert!(w.restarts >= 3);
    println!(
        "seed {seed}: sent {}, dropped {}, decrypted {delivered}, duplicates rejected {}, sessions {}, restarts {}",
        w.sent.len(),
        w.net.dropped.len(),
        w.rejected_duplicates,
        w.sessions_started,
        w.restarts
    );
}

#[test]
fn lossy_network_multi_device_with_restarts() {
    run(7, 1200);
}

#[test]
fn lossy_network_second_seed() {
    run(99, 600);
}
