//! Group messaging over the simulated network: 5 accounts × 2 devices, drops, duplicates and
//! reordering; removal (the removed account reads nothing sent afterwards), a late joiner (reads
//! nothing sent before it joined), and missed sender-key distributions healing through retry
//! requests.
#![cfg(test)]
#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

use hush_core::device::{DeviceError, GroupIncoming, Incoming, Outgoing};
use hush_core::error::{AuthError, Error, ProtocolError};
use hush_core::keys::{AccountId, DeviceAddress};
use hush_core::sender_key::GroupId;
use hush_tests::sim::{Envelope, Faults, Network, Population};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Who may legitimately read a group message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Audience {
    /// A member device the message was sent to: must decrypt it exactly once unless dropped.
    Recipient,
    /// A device outside the group at sending time that got a copy anyway: must never decrypt it.
    Outsider,
}

struct World {
    pop: Population,
    net: Network,
    rng: ChaCha20Rng,
    now: u64,
    next_tag: u64,
    group: Option<GroupId>,
    /// tag of a group envelope → (message id, device, audience)
    group_envelopes: BTreeMap<u64, (u64, DeviceAddress, Audience)>,
    /// (message id, device) → times decrypted
    decrypted: BTreeMap<(u64, DeviceAddress), u32>,
    /// tags of pairwise envelopes already processed
    pairwise_done: BTreeSet<u64>,
    next_message: u64,
    /// Leaked copies, delivered to outsiders later (the late joiner gets them after joining).
    stash: Vec<Envelope>,
    healed_from_buffer: u64,
    requests_sent: u64,
}

impl World {
    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    fn send_pairwise(&mut self, from: DeviceAddress, out: Vec<Outgoing>, reliable: bool) {
        for o in out {
            let tag = self.tag();
            let e = Envelope {
                from,
                to: o.to,
                bytes: o.bytes,
                tag,
                group: false,
            };
            if reliable {
                self.net.send_reliable(e)
            } else {
                self.net.send(e)
            }
        }
    }

    fn members(&self) -> BTreeSet<AccountId> {
        let g = self.group.unwrap();
        let creator = self.pop.accounts[0][0];
        self.pop.devices[&creator]
            .group(&g)
            .unwrap()
            .state()
            .members
            .keys()
            .copied()
            .collect()
    }

    /// One group message from `from`, fanned out to the member devices; copies go to the devices
    /// of `outsiders` too.
    fn group_send(&mut self, from: DeviceAddress, outsiders: &[AccountId]) {
        self.now += 7;
        let now = self.now;
        let g = self.group.unwrap();
        let mut rng = ChaCha20Rng::from_seed(self.seed());
        let targets = self.pop.devices[&from].group_devices(&g).unwrap();
        self.pop
            .ensure_sessions(&from, &targets, &mut rng, now)
            .unwrap();
        self.next_message += 1;
        let id = self.next_message;
        let send = self
            .pop
            .devices
            .get_mut(&from)
            .unwrap()
            .group_encrypt(&g, format!("gm{id}").as_bytes(), &mut rng, now)
            .unwrap();
        // Distributions may be lost: the recipients heal through retry requests.
        self.send_pairwise(from, send.distributions, false);
        for r in send.recipients {
            let tag = self.tag();
            self.group_envelopes
                .insert(tag, (id, r, Audience::Recipient));
            self.net.send(Envelope {
                from,
                to: r,
                bytes: send.message.clone(),
                tag,
                group: true,
            });
        }
        // A sample of the messages also reaches outsiders (as if the relay leaked them).
        if id.is_multiple_of(5) {
            for acct in outsiders {
                let devices = self
                    .pop
                    .accounts
                    .iter()
                    .find(|a| a[0].account == *acct)
                    .unwrap()
                    .clone();
                for r in devices {
                    let tag = self.tag();
                    self.group_envelopes
                        .insert(tag, (id, r, Audience::Outsider));
                    self.stash.push(Envelope {
                        from,
                        to: r,
                        bytes: send.message.clone(),
                        tag,
                        group: true,
                    });
                }
            }
        }
    }

    fn count(
        &mut self,
        who: DeviceAddress,
        plaintexts: impl IntoIterator<Item = Vec<u8>>,
        from_buffer: bool,
    ) {
        for p in plaintexts {
            let text = String::from_utf8(p).unwrap();
            let id: u64 = text.strip_prefix("gm").unwrap().parse().unwrap();
            *self.decrypted.entry((id, who)).or_default() += 1;
            if from_buffer {
                self.healed_from_buffer += 1;
            }
        }
    }

    fn seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        rand_core::Rng::fill_bytes(&mut self.rng, &mut s);
        s
    }

    fn handle_incoming(&mut self, to: DeviceAddress, inc: Incoming) {
        let texts: Vec<Vec<u8>> = inc.received.iter().map(|r| r.plaintext.to_vec()).collect();
        for r in &inc.received {
            self.pop
                .devices
                .get_mut(&to)
                .unwrap()
                .ack_message(r.id)
                .unwrap();
        }
        self.count(to, texts, true);
        self.send_pairwise(to, inc.outgoing, false);
    }

    fn deliver_one(&mut self) -> bool {
        let Some(e) = self.net.deliver() else {
            return false;
        };
        self.now += 3;
        let now = self.now;
        let mut rng = ChaCha20Rng::from_seed(self.seed());
        if e.group {
            let result = self
                .pop
                .devices
                .get_mut(&e.to)
                .unwrap()
                .decrypt_group(&e.bytes, &mut rng, now);
            let (id, _, _) = self.group_envelopes[&e.tag];
            match result {
                Ok(GroupIncoming::Decrypted(r)) => {
                    self.pop
                        .devices
                        .get_mut(&e.to)
                        .unwrap()
                        .ack_message(r.id)
                        .unwrap();
                    self.count(e.to, [r.plaintext.to_vec()], false);
                }
                Ok(GroupIncoming::Buffered { request }) => {
                    if let Some(req) = request {
                        self.requests_sent += 1;
                        self.send_pairwise(e.to, vec![req], false);
                    }
                }
                // Outsiders are refused, whatever the reason (no key, not entitled, buffer full).
                Err(_) if self.group_envelopes[&e.tag].2 == Audience::Outsider => {}
                Err(DeviceError::Protocol(Error::Protocol(ProtocolError::Duplicate))) => {
                    if self.decrypted.get(&(id, e.to)).copied().unwrap_or(0) == 0 {
                        use prost::Message;
                        let m = hush_proto::wire::GroupMessage::decode(e.bytes.as_slice()).unwrap();
                        let aud = self.group_envelopes[&e.tag].2;
                        panic!(
                            "duplicate of unread message {id} ({aud:?}) at {:?} from {:?}: key {} iteration {}",
                            e.to, e.from, m.key_id, m.iteration
                        );
                    }
                }
                Err(err) => panic!("group message {id} to {:?}: {err}", e.to),
            }
        } else {
            let result = self
                .pop
                .devices
                .get_mut(&e.to)
                .unwrap()
                .decrypt(&e.from, &e.bytes, &mut rng, now);
            match result {
                Ok(inc) => {
                    assert!(
                        self.pairwise_done.insert(e.tag),
                        "pairwise message decrypted twice"
                    );
                    self.handle_incoming(e.to, inc);
                    self.pop.replenish(&e.to, &mut rng, now).unwrap();
                }
                Err(DeviceError::Protocol(
                    Error::Protocol(ProtocolError::Duplicate)
                    | Error::Auth(AuthError::DecryptFailed),
                )) if self.pairwise_done.contains(&e.tag) => {}
                Err(err) => panic!("pairwise message to {:?}: {err}", e.to),
            }
        }
        true
    }

    /// Delivers everything, then lets every device retry missing sender keys until the network is quiet.
    fn drain(&mut self) {
        for _ in 0..20 {
            while self.deliver_one() {}
            self.now += hush_core::consts::SENDER_KEY_REQUEST_INTERVAL_MS + 1;
            let now = self.now;
            let addrs: Vec<_> = self.pop.devices.keys().copied().collect();
            for a in addrs {
                let mut rng = ChaCha20Rng::from_seed(self.seed());
                let out = self
                    .pop
                    .devices
                    .get_mut(&a)
                    .unwrap()
                    .retry_missing_sender_keys(&mut rng, now)
                    .unwrap();
                self.requests_sent += out.len() as u64;
                self.send_pairwise(a, out, false);
            }
        }
        while self.deliver_one() {}
    }

    fn change_group(&mut self, admin: DeviceAddress, add: &[AccountId], remove: &[AccountId]) {
        self.now += 5;
        let now = self.now;
        let g = self.group.unwrap();
        let mut rng = ChaCha20Rng::from_seed(self.seed());
        // Everyone affected must be reachable.
        let mut targets = self.pop.devices[&admin].group_devices(&g).unwrap();
        for a in add {
            targets.extend(
                self.pop
                    .accounts
                    .iter()
                    .find(|x| x[0].account == *a)
                    .unwrap()
                    .iter()
                    .copied(),
            );
        }
        self.pop
            .ensure_sessions(&admin, &targets, &mut rng, now)
            .unwrap();
        let add: Vec<(AccountId, bool)> = add.iter().map(|a| (*a, false)).collect();
        let out = self
            .pop
            .devices
            .get_mut(&admin)
            .unwrap()
            .update_group(&g, &add, remove, None, &mut rng, now)
            .unwrap();
        // Membership changes are kept by the relay until acknowledged: never lost.
        self.send_pairwise(admin, out, true);
    }
}

#[test]
fn five_accounts_two_devices_lossy_with_removal_late_join_and_heal() {
    let seed = 11u64;
    let mut rng = ChaCha20Rng::from_seed([seed as u8; 32]);
    let pop = Population::new(&mut rng, &[2, 2, 2, 2, 2], 0).unwrap();
    let mut w = World {
        pop,
        net: Network::new(
            seed,
            Faults {
                drop_per_mille: 40,
                duplicate_per_mille: 60,
            },
        ),
        rng,
        now: 10,
        next_tag: 0,
        group: None,
        group_envelopes: BTreeMap::new(),
        decrypted: BTreeMap::new(),
        pairwise_done: BTreeSet::new(),
        next_message: 0,
        stash: Vec::new(),
        healed_from_buffer: 0,
        requests_sent: 0,
    };
    let accounts = w.pop.account_ids();
    let creator = w.pop.accounts[0][0];
    let late = accounts[4];
    let removed = accounts[3];

    // The creator makes a group of the first four accounts.
    let mut rng = ChaCha20Rng::from_seed(w.seed());
    let targets: Vec<DeviceAddress> = w.pop.accounts[..4]
        .iter()
        .flatten()
        .copied()
        .filter(|d| *d != creator)
        .collect();
    w.pop
        .ensure_sessions(&creator, &targets, &mut rng, w.now)
        .unwrap();
    let (g, out) = w
        .pop
        .devices
        .get_mut(&creator)
        .unwrap()
        .create_group("friends", &accounts[..4], &mut rng, w.now)
        .unwrap();
    w.group = Some(g);
    w.send_pairwise(creator, out, true);

    let mut removal_at = None;
    let mut join_at = None;
    for round in 0..1500u64 {
        let members = w.members();
        // Any member device that already knows the group (in its own view) may send.
        let senders: Vec<DeviceAddress> = w
            .pop
            .accounts
            .iter()
            .flatten()
            .copied()
            .filter(|d| members.contains(&d.account))
            .filter(|d| {
                w.pop.devices[d]
                    .group(&g)
                    .is_some_and(|e| e.state().is_member(&d.account))
            })
            .collect();
        let from = senders[w.net.below(senders.len() as u32) as usize];
        // Copies to non-members: before the join, to the late joiner; after the removal, to the removed account.
        let mut outsiders = Vec::new();
        if !members.contains(&late) {
            outsiders.push(late);
        }
        if removal_at.is_some() && !members.contains(&removed) {
            outsiders.push(removed);
        }
        // The sender must have applied the removal before its messages count as "after".
        let sender_view = w.pop.devices[&from]
            .group(&g)
            .unwrap()
            .state()
            .members
            .clone();
        if sender_view.contains_key(&removed) && removal_at.is_some() {
            outsiders.retain(|a| *a != removed);
        }
        w.group_send(from, &outsiders);
        for _ in 0..w.net.below(12) {
            w.deliver_one();
        }
        if round == 500 {
            // Settle, then remove account 3.
            w.drain();
            w.change_group(creator, &[], &[removed]);
            w.drain();
            removal_at = Some(w.next_message);
        }
        if round == 1000 {
            w.drain();
            w.change_group(creator, &[late], &[]);
            w.drain();
            join_at = Some(w.next_message);
            // The joiner now gets the copies of what was sent before it joined.
            for e in std::mem::take(&mut w.stash) {
                w.net.send_reliable(e);
            }
        }
    }
    for e in std::mem::take(&mut w.stash) {
        w.net.send_reliable(e);
    }
    w.drain();
    let (removal_at, join_at) = (removal_at.unwrap(), join_at.unwrap());

    let mut expected = 0;
    let mut dropped = 0;
    for (tag, (id, dev, audience)) in &w.group_envelopes {
        let n = w.decrypted.get(&(*id, *dev)).copied().unwrap_or(0);
        match audience {
            Audience::Recipient if w.net.dropped.contains(tag) => {
                dropped += 1;
                assert!(n <= 1);
            }
            Audience::Recipient => {
                expected += 1;
                assert_eq!(n, 1, "group message {id} decrypted {n} times by {dev:?}");
            }
            Audience::Outsider => assert_eq!(n, 0, "outsider {dev:?} read group message {id}"),
        }
    }
    // The removed account reads nothing sent after the removal; the late joiner nothing before it joined.
    for ((id, dev), n) in &w.decrypted {
        if dev.account == removed {
            assert!(
                *id <= removal_at || *n == 0,
                "removed account read message {id}"
            );
        }
        if dev.account == late {
            assert!(
                *id > join_at,
                "late joiner read message {id} sent before it joined"
            );
        }
    }
    // The remaining members and the joiner still read after the changes.
    assert!(
        w.decrypted
            .keys()
            .any(|(id, d)| *id > join_at && d.account == late)
    );
    assert!(
        w.decrypted
            .keys()
            .any(|(id, d)| *id > removal_at && d.account == accounts[1])
    );
    assert!(
        w.healed_from_buffer > 0,
        "no message healed through a retry request"
    );
    assert!(w.requests_sent > 0);
    assert!(expected > 5000, "only {expected} group deliveries");
    println!(
        "group messages {}, deliveries expected {expected}, dropped {dropped}, healed via retry {}, requests {}",
        w.next_message, w.healed_from_buffer, w.requests_sent
    );
}

/// Delivers pairwise messages directly (no loss) and returns what they produced.
fn deliver_all(
    pop: &mut Population,
    from: DeviceAddress,
    out: Vec<Outgoing>,
    rng: &mut ChaCha20Rng,
    now: u64,
) {
    let mut queue: Vec<(DeviceAddress, Outgoing)> = out.into_iter().map(|o| (from, o)).collect();
    while let Some((f, o)) = queue.pop() {
        let inc = pop
            .devices
            .get_mut(&o.to)
            .unwrap()
            .decrypt(&f, &o.bytes, rng, now)
            .unwrap();
        queue.extend(inc.outgoing.into_iter().map(|x| (o.to, x)));
    }
}

#[test]
fn removing_one_device_of_a_member_rotates_every_senders_key() {
    let mut rng = ChaCha20Rng::from_seed([21; 32]);
    let mut pop = Population::new(&mut rng, &[2, 2, 1], 0).unwrap();
    let accounts = pop.account_ids();
    let (alice, bob1, bob2, carol) = (
        pop.accounts[0][0],
        pop.accounts[1][0],
        pop.accounts[1][1],
        pop.accounts[2][0],
    );
    let everyone: Vec<DeviceAddress> = pop.accounts.iter().flatten().copied().collect();
    for d in &everyone {
        let others: Vec<_> = everyone.iter().copied().filter(|x| x != d).collect();
        pop.ensure_sessions(d, &others, &mut rng, 1).unwrap();
    }
    let (g, out) = pop
        .devices
        .get_mut(&alice)
        .unwrap()
        .create_group("team", &accounts, &mut rng, 2)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 3);

    let send = |pop: &mut Population,
                rng: &mut ChaCha20Rng,
                from: DeviceAddress,
                text: &[u8],
                now: u64| {
        let s = pop
            .devices
            .get_mut(&from)
            .unwrap()
            .group_encrypt(&g, text, rng, now)
            .unwrap();
        deliver_all(pop, from, s.distributions.clone(), rng, now);
        s
    };
    let before = send(&mut pop, &mut rng, carol, b"before", 4);
    for r in &before.recipients {
        let got = pop
            .devices
            .get_mut(r)
            .unwrap()
            .decrypt_group(&before.message, &mut rng, 5)
            .unwrap();
        assert!(matches!(got, GroupIncoming::Decrypted(m) if &*m.plaintext == b"before"));
    }
    let carol_key = pop
        .devices
        .get_mut(&alice)
        .unwrap()
        .sender_key_status(&g, &carol)
        .unwrap()[0]
        .0;

    // Bob removes his second device; everyone learns the new list.
    let list = pop
        .devices
        .get_mut(&bob1)
        .unwrap()
        .remove_device(2, 6)
        .unwrap();
    pop.dir
        .publish_list(accounts[1], list.signed_bytes().to_vec());
    pop.sync_lists(7).unwrap();
    assert!(pop.devices[&carol].group(&g).unwrap().needs_rotation());

    let after = send(&mut pop, &mut rng, carol, b"after", 8);
    assert!(
        !after.recipients.contains(&bob2),
        "the removed device is no longer a recipient"
    );
    let new_key = pop
        .devices
        .get_mut(&alice)
        .unwrap()
        .sender_key_status(&g, &carol)
        .unwrap()[0]
        .0;
    assert_ne!(new_key, carol_key, "carol rotated her sender key");
    assert!(!pop.devices[&carol].group(&g).unwrap().needs_rotation());
    for r in &after.recipients {
        let got = pop
            .devices
            .get_mut(r)
            .unwrap()
            .decrypt_group(&after.message, &mut rng, 9)
            .unwrap();
        assert!(matches!(got, GroupIncoming::Decrypted(m) if &*m.plaintext == b"after"));
    }
    // The removed device, given the message anyway, cannot read it.
    let got = pop
        .devices
        .get_mut(&bob2)
        .unwrap()
        .decrypt_group(&after.message, &mut rng, 9);
    assert!(!matches!(got, Ok(GroupIncoming::Decrypted(_))));
}

#[test]
fn a_re_registered_device_replaces_the_old_ones_sender_keys_and_entitlements() {
    let mut rng = ChaCha20Rng::from_seed([22; 32]);
    let mut pop = Population::new(&mut rng, &[1, 2], 0).unwrap();
    let accounts = pop.account_ids();
    let (alice, bob1, bob2) = (pop.accounts[0][0], pop.accounts[1][0], pop.accounts[1][1]);
    let everyone = [alice, bob1, bob2];
    for d in &everyone {
        let others: Vec<_> = everyone.iter().copied().filter(|x| x != d).collect();
        pop.ensure_sessions(d, &others, &mut rng, 1).unwrap();
    }
    let (g, out) = pop
        .devices
        .get_mut(&alice)
        .unwrap()
        .create_group("team", &accounts, &mut rng, 2)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 3);
    let send = |pop: &mut Population, rng: &mut ChaCha20Rng, from: DeviceAddress, text: &[u8]| {
        let targets = pop.devices[&from].group_devices(&g).unwrap();
        pop.ensure_sessions(&from, &targets, rng, 4).unwrap();
        let s = pop
            .devices
            .get_mut(&from)
            .unwrap()
            .group_encrypt(&g, text, rng, 4)
            .unwrap();
        deliver_all(pop, from, s.distributions.clone(), rng, 4);
        s.message
    };
    let early: Vec<_> = (0..3)
        .map(|i| send(&mut pop, &mut rng, alice, format!("early{i}").as_bytes()))
        .collect();
    let old1 = send(&mut pop, &mut rng, bob2, b"old-1");
    let got = pop
        .devices
        .get_mut(&alice)
        .unwrap()
        .decrypt_group(&old1, &mut rng, 5)
        .unwrap();
    assert!(matches!(got, GroupIncoming::Decrypted(m) if &*m.plaintext == b"old-1"));

    // Bob's second device re-registers at the same address with a new identity.
    let mut old_bob2 = pop.devices.remove(&bob2).unwrap();
    let new_bob2 = hush_core::device::Device::create_linked(
        Box::new(hush_core::store::memory::MemoryKv::new()) as hush_tests::sim::Store,
        &mut rng,
        accounts[1],
        2,
        6,
    )
    .unwrap();
    let list = pop
        .devices
        .get_mut(&bob1)
        .unwrap()
        .add_device(&new_bob2.consent(), 6)
        .unwrap();
    pop.dir
        .publish_list(accounts[1], list.signed_bytes().to_vec());
    pop.dir.forget_device(&bob2);
    pop.dir
        .publish_pre_keys(new_bob2.published_pre_keys().unwrap());
    pop.devices.insert(bob2, new_bob2);
    pop.sync_lists(7).unwrap();

    // The old device keeps its store and sends under its old sender key: not accepted any more.
    let old2 = old_bob2
        .group_encrypt(&g, b"old-2", &mut rng, 8)
        .unwrap()
        .message;
    let got = pop
        .devices
        .get_mut(&alice)
        .unwrap()
        .decrypt_group(&old2, &mut rng, 8);
    assert!(
        !matches!(got, Ok(GroupIncoming::Decrypted(_))),
        "a message under the replaced device's sender key was accepted"
    );

    // The new device learns the group (Bob's account removed and added again in one change).
    let targets = pop.devices[&alice].group_devices(&g).unwrap();
    pop.ensure_sessions(&alice, &targets, &mut rng, 9).unwrap();
    let out = pop
        .devices
        .get_mut(&alice)
        .unwrap()
        .update_group(
            &g,
            &[(accounts[1], false)],
            &[accounts[1]],
            None,
            &mut rng,
            9,
        )
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 9);
    assert!(pop.devices[&bob2].group(&g).is_some());

    // Asking for Alice's current key, it gets it from the current iteration, not from the old
    // device's entitlement: it cannot read what Alice sent before it existed.
    pop.ensure_sessions(&bob2, &[alice], &mut rng, 10).unwrap();
    let req = pop
        .devices
        .get_mut(&bob2)
        .unwrap()
        .request_sender_key(&g, &alice, 1, 0, &mut rng, 10)
        .unwrap();
    deliver_all(&mut pop, bob2, vec![req], &mut rng, 10);
    let status = pop
        .devices
        .get_mut(&bob2)
        .unwrap()
        .sender_key_status(&g, &alice)
        .unwrap();
    assert_eq!(status, vec![(1, 3, 0)], "entitled from iteration 3");
    for m in &early {
        let got = pop
            .devices
            .get_mut(&bob2)
            .unwrap()
            .decrypt_group(m, &mut rng, 11);
        assert!(
            matches!(
                got,
                Err(DeviceError::Protocol(Error::Protocol(
                    ProtocolError::Duplicate
                )))
            ),
            "the re-registered device read a message sent before it existed"
        );
    }

    // Its own first key (key id 1 again) replaces the old device's key id 1 at the receivers.
    let new1 = send(&mut pop, &mut rng, bob2, b"new-1");
    let got = pop
        .devices
        .get_mut(&alice)
        .unwrap()
        .decrypt_group(&new1, &mut rng, 12)
        .unwrap();
    assert!(matches!(got, GroupIncoming::Decrypted(m) if &*m.plaintext == b"new-1"));
}

#[test]
fn a_failed_update_group_leaves_no_advanced_session_behind() {
    use hush_core::consts::SESSION_MAX_IDLE_MS;
    use hush_proto::{Message, wire};
    const DAY: u64 = 24 * 60 * 60 * 1000;
    let mut rng = ChaCha20Rng::from_seed([23; 32]);
    let mut pop = Population::new(&mut rng, &[1, 1, 1], 0).unwrap();
    let accounts = pop.account_ids();
    let (alice, bob, carol) = (pop.accounts[0][0], pop.accounts[1][0], pop.accounts[2][0]);
    pop.ensure_sessions(&alice, &[bob, carol], &mut rng, 1)
        .unwrap();
    let (g, out) = pop
        .devices
        .get_mut(&alice)
        .unwrap()
        .create_group("team", &accounts, &mut rng, 2)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 3);
    // Bob replies pairwise, so Alice's session with him stays fresh; the one with Carol goes idle.
    let reply = pop
        .devices
        .get_mut(&bob)
        .unwrap()
        .encrypt(&alice, b"hi", &mut rng, 60 * DAY)
        .unwrap();
    pop.devices
        .get_mut(&alice)
        .unwrap()
        .decrypt(&bob, &reply, &mut rng, 60 * DAY)
        .unwrap();
    let now = SESSION_MAX_IDLE_MS + 10 * DAY;
    // Removing Carol seals for Bob first, then fails for Carol (no usable session).
    let err = pop.devices.get_mut(&alice).unwrap().update_group(
        &g,
        &[],
        &[accounts[2]],
        None,
        &mut rng,
        now,
    );
    assert!(matches!(
        err,
        Err(DeviceError::Protocol(Error::Protocol(
            ProtocolError::NoSession
        )))
    ));
    // The next message to Bob is the first of Alice's new sending chain: the failed call left no
    // advanced session in memory.
    let bytes = pop
        .devices
        .get_mut(&alice)
        .unwrap()
        .encrypt(&bob, b"next", &mut rng, now)
        .unwrap();
    let msg = wire::PairwiseMessage::decode(bytes.as_slice()).unwrap();
    let Some(wire::pairwise_message::Body::Ratchet(r)) = msg.body else {
        panic!("expected a ratchet message");
    };
    assert_eq!(r.counter, 0);
}
