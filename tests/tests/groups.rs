//! Group messaging over the simulated network: 5 accounts × 2 devices, drops, duplicates and
//! reordering; membership through the relay-sequenced group log, with two admins changing the
//! group at the same position, a relay withholding the log from one member for a while, a
//! removal (the removed account reads nothing sent afterwards), a late joiner (reads nothing sent
//! before it joined), and missed sender-key distributions healing through retry requests. Every
//! seed ends with every member device holding the same log.
#![cfg(test)]
#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

use hush_core::device::{DeviceError, GroupIncoming, GroupLogUpdate, Incoming, LogCheck, Outgoing};
use hush_core::error::{AuthError, Error, ProtocolError};
use hush_core::keys::{AccountId, DeviceAddress};
use hush_core::sender_key::GroupId;
use hush_tests::sim::{Append, Envelope, Faults, Network, Population};
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
    /// Devices that found the relay serving them less of the log than a member had reached.
    withheld_seen: BTreeSet<DeviceAddress>,
    forks_seen: u64,
    log_reads: u64,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::from_seed([seed as u8; 32]);
        let pop = Population::new(&mut rng, &[2, 2, 2, 2, 2], 0).unwrap();
        Self {
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
            withheld_seen: BTreeSet::new(),
            forks_seen: 0,
            log_reads: 0,
        }
    }

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

    fn slot(&self) -> [u8; 32] {
        let creator = self.pop.accounts[0][0];
        self.pop.devices[&creator]
            .group(&self.group.unwrap())
            .unwrap()
            .log()
            .secret()
            .slot()
    }

    /// The members after the whole log as the relay holds it (read by an observer device that
    /// is never withheld from: the creator).
    fn members(&mut self) -> BTreeSet<AccountId> {
        let g = self.group.unwrap();
        let creator = self.pop.accounts[0][0];
        self.sync(creator, g);
        self.pop.devices[&creator]
            .group(&g)
            .unwrap()
            .state()
            .members
            .keys()
            .copied()
            .collect()
    }

    /// `dev` reads the group's log from the relay, as the engine does when told to.
    fn sync(&mut self, dev: DeviceAddress, g: GroupId) {
        self.now += 1;
        let now = self.now;
        let mut rng = ChaCha20Rng::from_seed(self.seed());
        self.log_reads += 1;
        let update = self.pop.sync_group(dev, &g, &mut rng, now).unwrap();
        self.take_update(dev, update);
    }

    fn take_update(&mut self, dev: DeviceAddress, update: GroupLogUpdate) {
        for r in &update.received {
            self.pop
                .devices
                .get_mut(&dev)
                .unwrap()
                .ack_message(r.id)
                .unwrap();
        }
        let texts: Vec<Vec<u8>> = update
            .received
            .iter()
            .map(|r| r.plaintext.to_vec())
            .collect();
        self.count(dev, texts, true);
        match update.check {
            LogCheck::Consistent => {}
            LogCheck::Withheld { claimed, served } => {
                assert!(claimed > served);
                self.withheld_seen.insert(dev);
            }
            LogCheck::Forked { .. } => self.forks_seen += 1,
        }
        // Notices of one's own changes are kept by the relay until acknowledged: never lost.
        self.send_pairwise(dev, update.outgoing, true);
    }

    /// Reads the logs `dev` has reason to read now (a member's position ahead of its own, an
    /// unknown sender), as the engine does after group messages.
    fn sync_pending(&mut self, dev: DeviceAddress) {
        let groups = self.pop.devices[&dev].groups_to_fetch();
        for g in groups {
            self.sync(dev, g);
        }
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
        for g in inc.group_logs {
            self.sync(to, g);
        }
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
            // A message from a member further along the log, or from a sender not known as a
            // member yet: read the log.
            if self.pop.devices[&e.to]
                .group(&self.group.unwrap())
                .is_some()
            {
                self.sync_pending(e.to);
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

    /// Makes sure `admin` has sessions with every device the change concerns.
    fn reach(&mut self, admin: DeviceAddress, add: &[(AccountId, bool)]) {
        let now = self.now;
        let g = self.group.unwrap();
        let mut rng = ChaCha20Rng::from_seed(self.seed());
        let mut targets = self.pop.devices[&admin].group_devices(&g).unwrap();
        for (a, _) in add {
            targets.extend(
                self.pop
                    .accounts
                    .iter()
                    .find(|x| x[0].account == *a)
                    .unwrap()
                    .iter()
                    .copied()
                    .filter(|d| *d != admin),
            );
        }
        self.pop
            .ensure_sessions(&admin, &targets, &mut rng, now)
            .unwrap();
    }

    fn change_group(
        &mut self,
        admin: DeviceAddress,
        add: &[(AccountId, bool)],
        remove: &[AccountId],
    ) {
        self.now += 5;
        self.reach(admin, add);
        let now = self.now;
        let g = self.group.unwrap();
        let mut rng = ChaCha20Rng::from_seed(self.seed());
        let (out, _) = self
            .pop
            .update_group(admin, &g, add, remove, &mut rng, now)
            .unwrap();
        // The notices are kept by the relay until acknowledged: never lost.
        self.send_pairwise(admin, out, true);
    }

    /// Two admins prepare a change for the same log position; the first lands, the second is
    /// refused by the relay, and its author reads the log and lands it rebuilt at the next one.
    fn concurrent_changes(
        &mut self,
        (a, add_a): (DeviceAddress, &[(AccountId, bool)]),
        (b, add_b): (DeviceAddress, &[(AccountId, bool)]),
    ) {
        self.now += 5;
        self.reach(a, add_a);
        self.reach(b, add_b);
        let now = self.now;
        let g = self.group.unwrap();
        let mut rng = ChaCha20Rng::from_seed(self.seed());
        self.sync(a, g);
        self.sync(b, g);
        let wa = self.pop.devices.get_mut(&a).unwrap();
        let wa = wa
            .update_group(&g, add_a, &[], None, &mut rng, now)
            .unwrap();
        let wb = self.pop.devices.get_mut(&b).unwrap();
        let wb = wb
            .update_group(&g, add_b, &[], None, &mut rng, now)
            .unwrap();
        assert_eq!(wa.seq, wb.seq, "both changes are for the same position");
        let seq = wa.seq;
        assert_eq!(
            self.pop
                .logs
                .append(wa.slot(), &wa.write_token(), wa.seq, wa.entry.clone()),
            Append::Appended
        );
        let landed = self
            .pop
            .devices
            .get_mut(&a)
            .unwrap()
            .group_write_landed(wa, &mut rng, now)
            .unwrap();
        self.take_update(a, landed);
        // The loser is told at once that its change did not land.
        assert_eq!(
            self.pop
                .logs
                .append(wb.slot(), &wb.write_token(), wb.seq, wb.entry.clone()),
            Append::Conflict { head: seq }
        );
        drop(wb);
        // It reads the log and builds its change again on the new head.
        self.sync(b, g);
        let (out, conflicts) = self
            .pop
            .update_group(b, &g, add_b, &[], &mut rng, now)
            .unwrap();
        assert_eq!(conflicts, 0);
        self.send_pairwise(b, out, true);
        let entries = self.pop.devices[&b].group(&g).unwrap().log().entries();
        let tail: Vec<_> = entries
            .iter()
            .rev()
            .take(2)
            .map(|(s, c)| (*s, c.body.author))
            .collect();
        assert_eq!(tail, vec![(seq + 1, b), (seq, a)], "both landed, in order");
    }
}

/// Runs the group simulation with `seed`: 1500 rounds of group messages over a lossy,
/// duplicating, reordering network, with membership changes between them.
fn run_group_simulation(seed: u64) {
    let mut w = World::new(seed);
    let accounts = w.pop.account_ids();
    let creator = w.pop.accounts[0][0];
    let second_admin = w.pop.accounts[1][1];
    let withheld = w.pop.accounts[2][1];
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
        .create_group(creator, "friends", &accounts[..4], &mut rng, w.now)
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
        if round == 200 {
            // A second admin, on another account.
            w.change_group(creator, &[(accounts[1], true)], &[]);
        }
        if round == 300 {
            // The relay starts withholding the log from one member device.
            let slot = w.slot();
            let len = w.pop.logs.len(&slot);
            w.pop.logs.withhold(slot, withheld, len);
        }
        if round == 400 {
            // Both admins change the group at once (in the middle of traffic, not settled).
            w.concurrent_changes(
                (creator, &[(accounts[2], true)]),
                (second_admin, &[(accounts[2], false), (accounts[1], true)]),
            );
        }
        if round == 500 {
            // Settle, then remove account 3.
            w.drain();
            w.change_group(creator, &[], &[removed]);
            w.drain();
            removal_at = Some(w.next_message);
        }
        if round == 480 {
            let slot = w.slot();
            w.pop.logs.release(slot, withheld);
        }
        if round == 1000 {
            w.drain();
            w.change_group(second_admin, &[(late, false)], &[]);
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

    // The withheld device noticed, and nobody saw a fork (the relay served one history).
    assert!(
        w.withheld_seen.contains(&withheld),
        "the member the relay withheld the log from did not notice"
    );
    assert_eq!(w.forks_seen, 0);
    assert_eq!(w.pop.logs.conflicts, 1, "exactly one change lost its race");

    // Every member device holds the same log, all of the relay's.
    let slot = w.slot();
    let head = w.pop.logs.len(&slot);
    let final_members = w.members();
    assert_eq!(final_members.len(), 4);
    let reference = w.pop.devices[&creator].group(&g).unwrap().log().clone();
    assert_eq!(reference.seq(), head);
    for d in w.pop.accounts.iter().flatten() {
        if !final_members.contains(&d.account) {
            continue;
        }
        let e = w.pop.devices[d]
            .group(&g)
            .unwrap_or_else(|| panic!("{d:?} does not know the group"));
        assert_eq!(e.log().seq(), head, "{d:?} read the whole log");
        assert_eq!(e.state(), reference.state(), "{d:?} agrees on the state");
        let hashes = |l: &hush_core::group::GroupLog| -> Vec<(u64, [u8; 32])> {
            l.entries().iter().map(|(s, c)| (*s, c.hash)).collect()
        };
        assert_eq!(
            hashes(e.log()),
            hashes(&reference),
            "{d:?} agrees on the log"
        );
    }
    println!(
        "seed {seed}: group messages {}, deliveries expected {expected}, dropped {dropped}, healed via retry {}, requests {}, log reads {}, log entries {head}",
        w.next_message, w.healed_from_buffer, w.requests_sent, w.log_reads
    );
}

#[test]
fn five_accounts_two_devices_lossy_with_concurrent_changes_withholding_removal_late_join_and_heal()
{
    for seed in [11, 12, 13] {
        run_group_simulation(seed);
    }
}

/// Delivers pairwise messages directly (no loss), reading the group logs they point to, and
/// delivering what that produced in turn.
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
        for g in inc.group_logs {
            let update = pop.sync_group(o.to, &g, rng, now).unwrap();
            queue.extend(update.outgoing.into_iter().map(|x| (o.to, x)));
        }
    }
}

/// Sessions between every pair of devices.
fn mesh(pop: &mut Population, rng: &mut ChaCha20Rng, now: u64) {
    let everyone: Vec<DeviceAddress> = pop.accounts.iter().flatten().copied().collect();
    for d in &everyone {
        let others: Vec<_> = everyone.iter().copied().filter(|x| x != d).collect();
        pop.ensure_sessions(d, &others, rng, now).unwrap();
    }
}

/// Every device of `accounts` holds group `g` with exactly the relay's log.
fn assert_same_log(pop: &Population, g: &GroupId, accounts: &[AccountId]) {
    let devices: Vec<DeviceAddress> = pop
        .accounts
        .iter()
        .flatten()
        .copied()
        .filter(|d| accounts.contains(&d.account))
        .collect();
    let first = pop.devices[&devices[0]].group(g).unwrap().log().clone();
    let slot = first.secret().slot();
    assert_eq!(first.seq(), pop.logs.len(&slot));
    for d in &devices {
        let log = pop.devices[d].group(g).unwrap().log();
        assert_eq!(log.seq(), first.seq(), "{d:?} read the whole log");
        assert_eq!(log.state(), first.state(), "{d:?} agrees on the state");
        let hashes: Vec<_> = log.entries().iter().map(|(s, c)| (*s, c.hash)).collect();
        let expected: Vec<_> = first.entries().iter().map(|(s, c)| (*s, c.hash)).collect();
        assert_eq!(hashes, expected, "{d:?} agrees on the log");
    }
}

#[test]
fn two_admins_changing_at_once_one_lands_the_other_rebases_and_every_member_agrees() {
    let mut rng = ChaCha20Rng::from_seed([31; 32]);
    let mut pop = Population::new(&mut rng, &[1, 1, 1, 1, 1], 0).unwrap();
    let accounts = pop.account_ids();
    let [alice, bob, carol, dave, erin] = [0, 1, 2, 3, 4].map(|i| pop.accounts[i][0]);
    mesh(&mut pop, &mut rng, 1);
    let (g, out) = pop
        .create_group(alice, "team", &accounts[..3], &mut rng, 2)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 2);
    let (out, _) = pop
        .update_group(alice, &g, &[(bob.account, true)], &[], &mut rng, 3)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 3);
    assert!(
        pop.devices[&bob]
            .group(&g)
            .unwrap()
            .state()
            .is_admin(&bob.account)
    );

    // Alice adds Dave while Bob adds Erin: both built on entry 2, for position 3.
    let wa = pop
        .devices
        .get_mut(&alice)
        .unwrap()
        .update_group(&g, &[(dave.account, false)], &[], None, &mut rng, 4)
        .unwrap();
    let wb = pop
        .devices
        .get_mut(&bob)
        .unwrap()
        .update_group(&g, &[(erin.account, false)], &[], None, &mut rng, 4)
        .unwrap();
    assert_eq!((wa.seq, wb.seq), (3, 3));
    assert_eq!(
        pop.logs
            .append(wa.slot(), &wa.write_token(), 3, wa.entry.clone()),
        Append::Appended
    );
    // Exactly one lands: Bob's append is refused at once, with the head.
    assert_eq!(
        pop.logs
            .append(wb.slot(), &wb.write_token(), 3, wb.entry.clone()),
        Append::Conflict { head: 3 }
    );
    drop(wb);
    let landed = pop
        .devices
        .get_mut(&alice)
        .unwrap()
        .group_write_landed(wa, &mut rng, 5)
        .unwrap();
    deliver_all(&mut pop, alice, landed.outgoing, &mut rng, 5);
    // Bob rebuilds on the new head (through the conflict, as a client does): it lands next.
    let (out, conflicts) = pop
        .update_group(bob, &g, &[(erin.account, false)], &[], &mut rng, 6)
        .unwrap();
    assert_eq!(conflicts, 0, "Bob read the log when told of Alice's change");
    deliver_all(&mut pop, bob, out, &mut rng, 6);
    let log = pop.devices[&carol].group(&g).unwrap().log().clone();
    let authors: Vec<(u64, DeviceAddress)> = log
        .entries()
        .iter()
        .map(|(s, c)| (*s, c.body.author))
        .collect();
    assert_eq!(authors, vec![(1, alice), (2, alice), (3, alice), (4, bob)]);
    assert_eq!(log.state().members.len(), 5);
    assert_same_log(&pop, &g, &accounts);
}

#[test]
fn a_change_that_lost_its_race_is_rebuilt_on_the_new_head_by_the_client_loop() {
    let mut rng = ChaCha20Rng::from_seed([32; 32]);
    let mut pop = Population::new(&mut rng, &[1, 1, 1, 1, 1], 0).unwrap();
    let accounts = pop.account_ids();
    let [alice, bob, _carol, dave, erin] = [0, 1, 2, 3, 4].map(|i| pop.accounts[i][0]);
    mesh(&mut pop, &mut rng, 1);
    let (g, out) = pop
        .create_group(alice, "team", &accounts[..3], &mut rng, 2)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 2);
    let (out, _) = pop
        .update_group(alice, &g, &[(bob.account, true)], &[], &mut rng, 3)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 3);
    // Alice's change lands; Bob is not told before he writes his own.
    let (alice_out, conflicts) = pop
        .update_group(alice, &g, &[(dave.account, false)], &[], &mut rng, 4)
        .unwrap();
    assert_eq!(conflicts, 0);
    let (bob_out, conflicts) = pop
        .update_group(bob, &g, &[(erin.account, false)], &[], &mut rng, 4)
        .unwrap();
    assert_eq!(
        conflicts, 1,
        "Bob's first write lost, his rebuilt one landed"
    );
    assert_eq!(pop.logs.conflicts, 1);
    deliver_all(&mut pop, alice, alice_out, &mut rng, 5);
    deliver_all(&mut pop, bob, bob_out, &mut rng, 5);
    assert_eq!(pop.devices[&dave].group(&g).unwrap().log().seq(), 4);
    assert_eq!(
        pop.devices[&erin].group(&g).unwrap().state().members.len(),
        5
    );
    assert_same_log(&pop, &g, &accounts);
}

#[test]
fn a_removed_admins_change_signed_for_an_old_position_is_skipped_by_every_member() {
    let mut rng = ChaCha20Rng::from_seed([33; 32]);
    let mut pop = Population::new(&mut rng, &[1, 1, 1, 1], 0).unwrap();
    let accounts = pop.account_ids();
    let [alice, bob, carol, dave] = [0, 1, 2, 3].map(|i| pop.accounts[i][0]);
    mesh(&mut pop, &mut rng, 1);
    let (g, out) = pop
        .create_group(alice, "team", &accounts[..3], &mut rng, 2)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 2);
    let (out, _) = pop
        .update_group(alice, &g, &[(bob.account, true)], &[], &mut rng, 3)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 3);
    // Bob, still an admin, signs a change for position 3 (adding Dave) but holds it back.
    let held = pop
        .devices
        .get_mut(&bob)
        .unwrap()
        .update_group(&g, &[(dave.account, false)], &[], None, &mut rng, 4)
        .unwrap();
    assert_eq!(held.seq, 3);
    // Alice removes Bob at position 3.
    let (out, _) = pop
        .update_group(alice, &g, &[], &[bob.account], &mut rng, 5)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 5);
    assert!(
        !pop.devices[&carol]
            .group(&g)
            .unwrap()
            .state()
            .is_member(&bob.account)
    );
    // Its position is taken: the relay refuses it there.
    assert_eq!(
        pop.logs
            .append(held.slot(), &held.write_token(), 3, held.entry.clone()),
        Append::Conflict { head: 3 }
    );
    // Bob (who still has the write token) appends it at the head instead: it is sealed for
    // position 3 and signed for the state before his removal, so every member skips it.
    assert_eq!(
        pop.logs
            .append(held.slot(), &held.write_token(), 4, held.entry.clone()),
        Append::Appended
    );
    // And a fresh change he builds as a non-member for position 5 is refused before it leaves.
    pop.sync_group(bob, &g, &mut rng, 6).unwrap();
    assert!(
        pop.devices
            .get_mut(&bob)
            .unwrap()
            .update_group(&g, &[(dave.account, false)], &[], None, &mut rng, 6)
            .is_err()
    );
    for d in [alice, carol] {
        let update = pop.sync_group(d, &g, &mut rng, 7).unwrap();
        assert!(!update.changed, "the junk entry changed nothing for {d:?}");
        let log = pop.devices[&d].group(&g).unwrap().log();
        assert_eq!(log.seq(), 4, "the entry was read (and skipped)");
        assert!(!log.state().is_member(&dave.account));
        assert_eq!(log.entries().len(), 3);
    }
    assert!(pop.devices[&dave].group(&g).is_none());
    // The log goes on: Alice's next change lands at 5.
    let (out, _) = pop
        .update_group(alice, &g, &[(dave.account, false)], &[], &mut rng, 8)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 8);
    assert_eq!(pop.devices[&dave].group(&g).unwrap().log().seq(), 5);
    assert_same_log(&pop, &g, &[accounts[0], accounts[2], accounts[3]]);
}

#[test]
fn a_member_joining_after_the_creator_device_left_its_list_verifies_the_whole_log() {
    let mut rng = ChaCha20Rng::from_seed([34; 32]);
    let mut pop = Population::new(&mut rng, &[2, 1, 1], 0).unwrap();
    let accounts = pop.account_ids();
    let (alice1, alice2, bob, carol) = (
        pop.accounts[0][0],
        pop.accounts[0][1],
        pop.accounts[1][0],
        pop.accounts[2][0],
    );
    mesh(&mut pop, &mut rng, 1);
    // Alice's second device creates the group and makes Bob an admin.
    let (g, out) = pop
        .create_group(alice2, "team", &accounts[..2], &mut rng, 2)
        .unwrap();
    deliver_all(&mut pop, alice2, out, &mut rng, 2);
    let (out, _) = pop
        .update_group(alice2, &g, &[(bob.account, true)], &[], &mut rng, 3)
        .unwrap();
    deliver_all(&mut pop, alice2, out, &mut rng, 3);
    // Then Alice removes that device from her account; everyone takes the new list.
    let list = pop
        .devices
        .get_mut(&alice1)
        .unwrap()
        .remove_device(alice2.device_id, 4)
        .unwrap();
    pop.dir
        .publish_list(accounts[0], list.signed_bytes().to_vec());
    pop.devices.remove(&alice2);
    pop.accounts[0].retain(|d| *d != alice2);
    pop.sync_lists(5).unwrap();
    // Bob adds Carol, who never saw a list naming Alice's second device.
    let (out, _) = pop
        .update_group(bob, &g, &[(carol.account, false)], &[], &mut rng, 6)
        .unwrap();
    deliver_all(&mut pop, bob, out, &mut rng, 6);
    let log = pop.devices[&carol]
        .group(&g)
        .expect("Carol joined: every entry verified against the list its author signed with")
        .log();
    assert_eq!(log.seq(), 3);
    assert_eq!(log.entries().len(), 3);
    assert_eq!(log.entries()[0].1.body.author, alice2);
    assert_eq!(log.state().members.len(), 3);
    assert_same_log(&pop, &g, &accounts);
}

#[test]
fn a_member_detects_a_relay_withholding_log_entries_from_it() {
    let mut rng = ChaCha20Rng::from_seed([35; 32]);
    let mut pop = Population::new(&mut rng, &[1, 1, 1, 1], 0).unwrap();
    let accounts = pop.account_ids();
    let [alice, bob, carol, dave] = [0, 1, 2, 3].map(|i| pop.accounts[i][0]);
    mesh(&mut pop, &mut rng, 1);
    let (g, out) = pop
        .create_group(alice, "team", &accounts[..3], &mut rng, 2)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 2);
    let slot = pop.devices[&alice].group(&g).unwrap().log().secret().slot();
    // From now on the relay serves Carol only the creation.
    pop.logs.withhold(slot, carol, 1);
    let (out, _) = pop
        .update_group(alice, &g, &[(dave.account, false)], &[], &mut rng, 3)
        .unwrap();
    // Carol is told of the change (a pairwise notice the relay cannot read) and reads the log.
    let (notice, others): (Vec<Outgoing>, Vec<Outgoing>) =
        out.into_iter().partition(|o| o.to == carol);
    assert_eq!(notice.len(), 1);
    deliver_all(&mut pop, alice, others, &mut rng, 3);
    let inc = pop
        .devices
        .get_mut(&carol)
        .unwrap()
        .decrypt(&alice, &notice[0].bytes, &mut rng, 4)
        .unwrap();
    assert_eq!(inc.group_logs, vec![g]);
    let update = pop.sync_group(carol, &g, &mut rng, 4).unwrap();
    assert_eq!(
        update.check,
        LogCheck::Withheld {
            claimed: 2,
            served: 1
        }
    );
    // A group message from Bob, who read entry 2, says the same.
    pop.sync_group(bob, &g, &mut rng, 5).unwrap();
    let targets = pop.devices[&bob].group_devices(&g).unwrap();
    pop.ensure_sessions(&bob, &targets, &mut rng, 5).unwrap();
    let send = pop
        .devices
        .get_mut(&bob)
        .unwrap()
        .group_encrypt(&g, b"hello", &mut rng, 5)
        .unwrap();
    deliver_all(&mut pop, bob, send.distributions, &mut rng, 5);
    pop.devices
        .get_mut(&carol)
        .unwrap()
        .decrypt_group(&send.message, &mut rng, 6)
        .unwrap();
    assert_eq!(pop.devices[&carol].groups_to_fetch(), vec![g]);
    let update = pop.sync_group(carol, &g, &mut rng, 6).unwrap();
    assert!(matches!(update.check, LogCheck::Withheld { served: 1, .. }));
    // Once the relay serves the whole log, Carol catches up and the warning clears.
    pop.logs.release(slot, carol);
    let update = pop.sync_group(carol, &g, &mut rng, 7).unwrap();
    assert_eq!(update.check, LogCheck::Consistent);
    assert!(update.changed);
    assert!(pop.devices[&carol].groups_to_fetch().is_empty());
    assert_same_log(&pop, &g, &accounts);
}

#[test]
fn a_member_served_garbage_for_one_entry_detects_the_fork_from_the_others_positions() {
    let mut rng = ChaCha20Rng::from_seed([37; 32]);
    let mut pop = Population::new(&mut rng, &[1, 1, 1, 1], 0).unwrap();
    let accounts = pop.account_ids();
    let [alice, bob, carol, dave] = [0, 1, 2, 3].map(|i| pop.accounts[i][0]);
    mesh(&mut pop, &mut rng, 1);
    let (g, out) = pop
        .create_group(alice, "team", &accounts, &mut rng, 2)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 2);
    let slot = pop.devices[&alice].group(&g).unwrap().log().secret().slot();
    // Entry 2 removes Dave; the relay serves Carol garbage there instead, which does not open:
    // on her own, Carol can only skip it, and keeps Dave as a member.
    pop.logs.forge(slot, carol, 2, vec![1; 64]);
    let (out, _) = pop
        .update_group(alice, &g, &[], &[dave.account], &mut rng, 3)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 3);
    let carols = pop.devices[&carol].group(&g).unwrap().log();
    assert_eq!(carols.seq(), 2);
    assert!(carols.state().is_member(&dave.account));
    // Bob's next group message names position 2 with the real head: Carol, at the same position
    // with another head, reads the log again and finds the fork.
    let targets = pop.devices[&bob].group_devices(&g).unwrap();
    pop.ensure_sessions(&bob, &targets, &mut rng, 4).unwrap();
    let send = pop
        .devices
        .get_mut(&bob)
        .unwrap()
        .group_encrypt(&g, b"hello", &mut rng, 4)
        .unwrap();
    deliver_all(&mut pop, bob, send.distributions, &mut rng, 4);
    pop.devices
        .get_mut(&carol)
        .unwrap()
        .decrypt_group(&send.message, &mut rng, 5)
        .unwrap();
    assert_eq!(pop.devices[&carol].groups_to_fetch(), vec![g]);
    let update = pop.sync_group(carol, &g, &mut rng, 5).unwrap();
    assert_eq!(update.check, LogCheck::Forked { seq: 2 });
    assert!(pop.devices[&carol].groups_to_fetch().is_empty());
}

#[test]
fn an_invitation_survives_a_relay_that_does_not_serve_its_log() {
    let mut rng = ChaCha20Rng::from_seed([38; 32]);
    let mut pop = Population::new(&mut rng, &[1, 1, 1], 0).unwrap();
    let accounts = pop.account_ids();
    let [alice, bob, carol] = [0, 1, 2].map(|i| pop.accounts[i][0]);
    mesh(&mut pop, &mut rng, 1);
    let w = pop
        .devices
        .get_mut(&alice)
        .unwrap()
        .create_group("team", &accounts[..2], &mut rng, 2)
        .unwrap();
    let g = w.group;
    let slot = w.slot();
    // The relay hides the new log from Bob entirely.
    pop.logs.withhold(slot, bob, 0);
    assert_eq!(
        pop.logs.append(slot, &w.write_token(), 1, w.entry.clone()),
        Append::Appended
    );
    let landed = pop
        .devices
        .get_mut(&alice)
        .unwrap()
        .group_write_landed(w, &mut rng, 2)
        .unwrap();
    let (to_bob, _): (Vec<Outgoing>, Vec<Outgoing>) =
        landed.outgoing.into_iter().partition(|o| o.to == bob);
    let inc = pop
        .devices
        .get_mut(&bob)
        .unwrap()
        .decrypt(&alice, &to_bob[0].bytes, &mut rng, 3)
        .unwrap();
    assert_eq!(inc.group_logs, vec![g]);
    let update = pop.sync_group(bob, &g, &mut rng, 3).unwrap();
    assert_eq!(
        update.check,
        LogCheck::Withheld {
            claimed: 1,
            served: 0
        }
    );
    assert!(pop.devices[&bob].group(&g).is_none());
    // Not read again after every message, but kept: once the relay serves it, Bob joins.
    assert!(pop.devices[&bob].groups_to_fetch().is_empty());
    assert_eq!(pop.devices[&bob].group_logs(), vec![g]);
    pop.logs.release(slot, bob);
    let update = pop.sync_group(bob, &g, &mut rng, 4).unwrap();
    assert!(update.changed);
    assert!(pop.devices[&bob].group(&g).is_some());
    let _ = carol;
}

#[test]
fn a_group_id_is_bound_to_its_creation_and_cannot_be_claimed_by_another() {
    use hush_core::group::{GroupLog, GroupSecret};
    let mut rng = ChaCha20Rng::from_seed([36; 32]);
    let mut pop = Population::new(&mut rng, &[1, 1, 1], 0).unwrap();
    let accounts = pop.account_ids();
    let [alice, _bob, mallory] = [0, 1, 2].map(|i| pop.accounts[i][0]);
    mesh(&mut pop, &mut rng, 1);
    let (g, out) = pop
        .create_group(alice, "team", &accounts[..2], &mut rng, 2)
        .unwrap();
    deliver_all(&mut pop, alice, out, &mut rng, 2);
    let alice_secret = pop.devices[&alice]
        .group(&g)
        .unwrap()
        .log()
        .secret()
        .clone();
    // Mallory creates a group with the same name and members at the same time: its id is the
    // hash of her own signed creation, never Alice's.
    let w = pop
        .devices
        .get_mut(&mallory)
        .unwrap()
        .create_group("team", &accounts[..2], &mut rng, 2)
        .unwrap();
    assert_ne!(w.group, g);
    // Her creation cannot take the place of Alice's: the slot's first position is taken, and
    // without the group secret she has no write token for it anyway.
    assert_eq!(
        pop.logs.append(
            alice_secret.slot(),
            &alice_secret.write_token(),
            1,
            w.entry.clone()
        ),
        Append::Conflict { head: 1 }
    );
    assert_eq!(
        pop.logs
            .append(alice_secret.slot(), &w.write_token(), 2, w.entry.clone()),
        Append::Refused
    );
    // A log whose creation is hers, offered as group `g` (an invitation naming Alice's id with
    // Mallory's secret), is refused by whoever reads it.
    let mg = w.group;
    let entry = w.entry.clone();
    assert_eq!(
        pop.logs
            .append(w.slot(), &w.write_token(), 1, w.entry.clone()),
        Append::Appended
    );
    pop.devices
        .get_mut(&mallory)
        .unwrap()
        .group_write_landed(w, &mut rng, 3)
        .unwrap();
    let mallory_secret = pop.devices[&mallory]
        .group(&mg)
        .unwrap()
        .log()
        .secret()
        .to_bytes();
    let mallory_secret = GroupSecret::from_bytes(&mallory_secret).unwrap();
    assert!(
        GroupLog::create(g, mallory_secret, &entry)
            .is_err_and(|e| matches!(e, Error::Protocol(ProtocolError::InvalidGroupLog(_))))
    );
    // And Alice's creation read under her own secret is group `g` and nothing else.
    let (_, entries) = pop.logs.read(&alice_secret.slot(), 1, &alice);
    assert!(GroupLog::create(g, alice_secret.clone(), &entries[0].1).is_ok());
    assert!(GroupLog::create(mg, alice_secret, &entries[0].1).is_err());
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
    mesh(&mut pop, &mut rng, 1);
    let (g, out) = pop
        .create_group(alice, "team", &accounts, &mut rng, 2)
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
        .create_group(alice, "team", &accounts, &mut rng, 2)
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
    let (out, _) = pop
        .update_group(
            alice,
            &g,
            &[(accounts[1], false)],
            &[accounts[1]],
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
        .request_sender_key(&g, &alice, 1, &mut rng, 10)
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
