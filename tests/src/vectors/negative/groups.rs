//! The group cases of `negative.json`: sender-key messages offered to a receiver's copy of the
//! sender key, then group messages received by a whole device opened from its store.

use hush_core::consts::MAX_SENDER_KEY_JUMP;
use hush_core::device::{Device, GroupIncoming, GroupSend, LogCheck, Outgoing};
use hush_core::group::{ChangeBody, GroupLog, GroupSecret, SignedChange};
use hush_core::keys::DeviceAddress;
use hush_core::sender_key::{GroupId, GroupMessage, SenderKeyState};
use hush_core::store::kv::{Batch, KvStore, Namespace};
use hush_core::store::memory::MemoryKv;
use hush_proto::{Message, wire};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::sim::{Population, Store};
use crate::vectors::sender_keys::{Addressed, draw_group_id, draw_sender_key, reparse};
use crate::vectors::{
    ALICE_DEVICE_ID, BOB_DEVICE_ID, GROUP_NAME, GenResult, NOW_MS, NegativeInput, Party,
    StoreEntryRecord, check_err, ensure, flip, get, hx,
};

use super::Negatives;

/// The group log position the sender-key cases' messages name: position 1 with a zero head (a
/// sender-key state does not look at it; a device notes it only after a message verifies).
const SETUP_LOG: (u64, [u8; 32]) = (1, [0; 32]);

/// One sender and one receiver of a group, as the sender-key negative vectors use them.
struct GroupSetup {
    group: GroupId,
    sender: DeviceAddress,
    receiver: DeviceAddress,
    own: SenderKeyState,
}

impl GroupSetup {
    /// Draws the sender's account secret (device 1), the receiver's account secret (device 2),
    /// the group id, then the sender key (signing secret, chain key): 5 × 32 bytes.
    fn draw(rng: &mut ChaCha20Rng) -> GenResult<Self> {
        let sender = Addressed::draw(rng, ALICE_DEVICE_ID).address();
        let receiver = Addressed::draw(rng, BOB_DEVICE_ID).address();
        let group = draw_group_id(rng)?;
        let (own, _, _) = draw_sender_key(rng)?;
        Ok(Self {
            group,
            sender,
            receiver,
            own,
        })
    }

    /// The sender's next message, with plaintext `group message <iteration>`.
    fn send(&mut self) -> GenResult<(GroupMessage, Vec<u8>)> {
        let plaintext = format!("group message {}", self.own.iteration()).into_bytes();
        let m = self
            .own
            .encrypt(self.group, self.sender, SETUP_LOG, &plaintext)?;
        Ok((m, plaintext))
    }

    fn send_n(&mut self, n: usize) -> GenResult<Vec<(GroupMessage, Vec<u8>)>> {
        (0..n).map(|_| self.send()).collect()
    }

    /// The receiver's copy of the sender key, from a distribution made now.
    fn receiver_state(&mut self) -> GenResult<SenderKeyState> {
        let d = self.own.distribution_for(self.group, self.receiver, None)?;
        Ok(SenderKeyState::from_distribution(&d, NOW_MS)?)
    }
}

impl Negatives {
    /// A sender-key case: checks the rejection leaves the receiver's state unchanged and that
    /// `control` decrypts afterwards.
    #[allow(clippy::too_many_arguments)]
    fn sender_key(
        &mut self,
        seed: [u8; 32],
        name: &str,
        description: String,
        expected: &str,
        state: &SenderKeyState,
        bad: &wire::GroupMessage,
        control: &GroupMessage,
        control_plaintext: &[u8],
    ) -> GenResult<()> {
        let before = state.to_proto().encode_to_vec();
        let mut s = SenderKeyState::from_proto(&hush_proto::store::SenderKeyState::decode(
            before.as_slice(),
        )?)?;
        ensure(
            s.to_proto().encode_to_vec() == before,
            "sender-key state round-trips",
        )?;
        check_err(
            GroupMessage::try_from(bad).and_then(|m| s.decrypt(&m, NOW_MS)),
            expected,
        )?;
        ensure(
            s.to_proto().encode_to_vec() == before,
            "a rejected group message leaves the sender-key state unchanged",
        )?;
        ensure(
            *s.decrypt(&reparse(control)?, NOW_MS)? == *control_plaintext,
            "the control group message decrypts",
        )?;
        let input = NegativeInput::SenderKeyMessage {
            state_before: hx(&before),
            message: hx(bad.encode_to_vec()),
            control_message: hx(control.to_wire().encode_to_vec()),
            control_plaintext: hx(control_plaintext),
        };
        self.push(seed, name, description, expected, input);
        Ok(())
    }

    /// A device case: the receiving device is reopened from a copy of `store`; the rejection must
    /// leave the store unchanged, draw no randomness, and `control` must decrypt afterwards.
    #[allow(clippy::too_many_arguments)]
    fn group_device(
        &mut self,
        seed: [u8; 32],
        name: &str,
        description: String,
        expected: &str,
        store: &impl KvStore,
        bad: &[u8],
        control: &[u8],
        control_plaintext: &[u8],
    ) -> GenResult<()> {
        let entries = dump_store(store)?;
        let mut device = Device::open(restore_store(&entries)?)?;
        let header = GroupMessage::try_from(&wire::GroupMessage::decode(bad)?)?.header;
        ensure(
            device
                .sender_key_status(&header.group, &header.sender)?
                .iter()
                .any(|(id, _, _)| *id == header.key_id),
            "the device holds the sender key the rejected message names",
        )?;
        let mut no_rng = ChaCha20Rng::from_seed([0; 32]);
        check_err(
            device.decrypt_group(bad, &mut no_rng, NOW_MS).map(|_| ()),
            expected,
        )?;
        ensure(
            dump_store(device.store())? == entries,
            "a rejected group message leaves the device's store unchanged",
        )?;
        match device.decrypt_group(control, &mut no_rng, NOW_MS)? {
            GroupIncoming::Decrypted(r) => ensure(
                *r.plaintext == *control_plaintext,
                "the control group message decrypts",
            )?,
            GroupIncoming::Buffered { .. } => {
                return Err("the control group message was buffered".into());
            }
        }
        ensure(no_rng.get_word_pos() == 0, "receiving draws no randomness")?;
        let input = NegativeInput::GroupMessage {
            device_store: entries
                .iter()
                .map(|(ns, key, value)| StoreEntryRecord {
                    namespace: *ns,
                    key: hx(key),
                    value: hx(value),
                })
                .collect(),
            message: hx(bad),
            control_message: hx(control),
            control_plaintext: hx(control_plaintext),
        };
        self.push(seed, name, description, expected, input);
        Ok(())
    }
}

/// One store entry: namespace byte, key, value.
type StoreEntry = (u8, Vec<u8>, Vec<u8>);

/// Every entry of a store, by namespace then key.
fn dump_store(store: &impl KvStore) -> GenResult<Vec<StoreEntry>> {
    let mut out = Vec::new();
    for ns in Namespace::ALL {
        for (key, value) in store.scan(ns)? {
            out.push((ns.as_byte(), key, value.to_vec()));
        }
    }
    Ok(out)
}

/// A memory store holding exactly `entries`.
fn restore_store(entries: &[StoreEntry]) -> GenResult<MemoryKv> {
    let mut batch = Batch::new();
    for (ns, key, value) in entries {
        let ns = Namespace::from_byte(*ns).ok_or("unknown namespace")?;
        batch.put(ns, key.clone(), value.clone());
    }
    let mut store = MemoryKv::new();
    store.commit(batch)?;
    Ok(store)
}

fn device_mut<'a>(
    pop: &'a mut Population,
    addr: &DeviceAddress,
) -> GenResult<&'a mut Device<Store>> {
    pop.devices
        .get_mut(addr)
        .ok_or_else(|| format!("no device {addr:?}").into())
}

/// Delivers pairwise messages sent by `from`, acknowledging any payload they carry.
fn deliver_pairwise(
    pop: &mut Population,
    from: &DeviceAddress,
    out: &[Outgoing],
    rng: &mut ChaCha20Rng,
) -> GenResult<()> {
    for o in out {
        let device = device_mut(pop, &o.to)?;
        let incoming = device.decrypt(from, &o.bytes, rng, NOW_MS)?;
        ensure(incoming.outgoing.is_empty(), "nothing to answer")?;
        for r in incoming.received {
            device.ack_message(r.id)?;
        }
    }
    Ok(())
}

/// `to` receives a group message; returns its plaintext.
fn receive_group(
    pop: &mut Population,
    to: &DeviceAddress,
    bytes: &[u8],
    rng: &mut ChaCha20Rng,
) -> GenResult<Vec<u8>> {
    let device = device_mut(pop, to)?;
    match device.decrypt_group(bytes, rng, NOW_MS)? {
        GroupIncoming::Decrypted(r) => {
            device.ack_message(r.id)?;
            Ok(r.plaintext.to_vec())
        }
        GroupIncoming::Buffered { .. } => Err("group message buffered".into()),
    }
}

/// `from` sends a group message (starting any missing sessions first) and its sender-key
/// distributions are delivered.
fn send_group(
    pop: &mut Population,
    from: &DeviceAddress,
    g: &GroupId,
    plaintext: &[u8],
    rng: &mut ChaCha20Rng,
) -> GenResult<GroupSend> {
    let targets = device_mut(pop, from)?.group_devices(g)?;
    pop.ensure_sessions(from, &targets, rng, NOW_MS)?;
    let send = device_mut(pop, from)?.group_encrypt(g, plaintext, rng, NOW_MS)?;
    deliver_pairwise(pop, from, &send.distributions, rng)?;
    Ok(send)
}

/// `dev` reads group `g`'s log from the simulated relay and processes it; the log must agree with
/// what members told it.
fn sync(
    pop: &mut Population,
    dev: DeviceAddress,
    g: &GroupId,
    rng: &mut ChaCha20Rng,
) -> GenResult<()> {
    let update = pop.sync_group(dev, g, rng, NOW_MS)?;
    ensure(
        update.check == LogCheck::Consistent && update.outgoing.is_empty(),
        "the log is consistent and there is nothing to send",
    )
}

/// Three accounts with one device each (Alice, Bob, Carol: `Population::new(rng, [1, 1, 1], now)`,
/// so every device holds every account's device list); Alice starts sessions with Bob and Carol
/// and creates a group of the three (its creation appended to the group's log on the simulated
/// relay); Bob and Carol receive her notices and read the log.
fn device_group(rng: &mut ChaCha20Rng) -> GenResult<(Population, GroupId, [DeviceAddress; 3])> {
    let mut pop = Population::new(rng, &[1, 1, 1], NOW_MS)?;
    let addrs: Vec<DeviceAddress> = pop
        .accounts
        .iter()
        .filter_map(|a| a.first().copied())
        .collect();
    let [alice, bob, carol]: [DeviceAddress; 3] = addrs.try_into().map_err(|_| "three accounts")?;
    pop.ensure_sessions(&alice, &[bob, carol], rng, NOW_MS)?;
    let (g, out) = pop.create_group(
        alice,
        GROUP_NAME,
        &[bob.account, carol.account],
        rng,
        NOW_MS,
    )?;
    deliver_pairwise(&mut pop, &alice, &out, rng)?;
    sync(&mut pop, bob, &g, rng)?;
    sync(&mut pop, carol, &g, rng)?;
    ensure(
        [bob, carol].iter().all(|d| {
            pop.devices
                .get(d)
                .and_then(|dev| dev.group(&g))
                .is_some_and(|e| e.state().members.len() == 3)
        }),
        "Bob and Carol joined the group",
    )?;
    Ok((pop, g, [alice, bob, carol]))
}

/// A device's own current sender key for group `g`, read from its store.
fn own_sender_key(store: &impl KvStore) -> GenResult<SenderKeyState> {
    let mut own = Vec::new();
    for (_, value) in store.scan(Namespace::SenderKeys)? {
        let record = hush_proto::store::SenderKeyRecord::decode(value.as_slice())?;
        for p in record
            .states
            .iter()
            .filter(|p| !p.signing_private.is_empty())
        {
            own.push(SenderKeyState::from_proto(p)?);
        }
    }
    match <[SenderKeyState; 1]>::try_from(own) {
        Ok([state]) => Ok(state),
        Err(_) => Err("expected exactly one own sender key".into()),
    }
}

pub(super) fn negative_groups(n: &mut Negatives) -> GenResult<()> {
    // Tampering: the receiver has decrypted message 0; message 1 arrives modified. Control:
    // message 1.
    type Tamper = fn(&mut wire::GroupMessage) -> GenResult<()>;
    let tampers: [(&str, &str, Tamper); 4] = [
        (
            "group-bad-signature",
            "One bit of the signature flipped (0x01 of byte 32, the lowest bit of S).",
            |w| flip(&mut w.signature, 32, 0x01),
        ),
        (
            "group-tampered-ciphertext",
            "One bit of the ciphertext flipped (0x01 of byte 0). The signature covers the ciphertext and is \
             checked first, so this is a bad signature, not a failed decryption.",
            |w| flip(&mut w.ciphertext, 0, 0x01),
        ),
        (
            "group-tampered-tag",
            "One bit of the authentication tag flipped (0x80 of the last byte): caught by the signature.",
            |w| {
                let last = w
                    .ciphertext
                    .len()
                    .checked_sub(1)
                    .ok_or("empty ciphertext")?;
                flip(&mut w.ciphertext, last, 0x80)
            },
        ),
        (
            "group-tampered-header-iteration",
            "Header iteration changed from 1 to 2 (the header is signed).",
            |w| {
                w.iteration = 2;
                Ok(())
            },
        ),
    ];
    for (name, what, tamper) in tampers {
        let (seed, mut rng) = n.next_rng()?;
        let mut s = GroupSetup::draw(&mut rng)?;
        let mut receiver = s.receiver_state()?;
        let msgs = s.send_n(2)?;
        let ((m0, _), (m1, p1)) = (get(&msgs, 0)?, get(&msgs, 1)?);
        receiver.decrypt(&reparse(m0)?, NOW_MS)?;
        let mut bad = m1.to_wire();
        tamper(&mut bad)?;
        n.sender_key(
            seed,
            name,
            format!(
                "The receiver got the sender key before message 0 and has decrypted message 0; message 1 \
                 arrives modified: {what}"
            ),
            "Auth(BadSignature)",
            &receiver,
            &bad,
            m1,
            p1,
        )?;
    }

    // Forged sender: another member's device signs a message whose header names the sender.
    {
        let (seed, mut rng) = n.next_rng()?;
        let mut s = GroupSetup::draw(&mut rng)?;
        let mut receiver = s.receiver_state()?;
        let msgs = s.send_n(2)?;
        let ((m0, _), (m1, p1)) = (get(&msgs, 0)?, get(&msgs, 1)?);
        receiver.decrypt(&reparse(m0)?, NOW_MS)?;
        let (mut mallory, _, _) = draw_sender_key(&mut rng)?;
        mallory.encrypt(s.group, s.sender, SETUP_LOG, b"group message 0")?;
        let forged = mallory.encrypt(s.group, s.sender, SETUP_LOG, b"group message 1, forged")?;
        ensure(
            forged.header == m1.header,
            "the forged header is the genuine one",
        )?;
        n.sender_key(
            seed,
            "group-forged-sender",
            "The receiver holds the sender's key and has decrypted message 0. Another member device (Mallory, \
             whose own sender key, also key id 1, is the next 2 × 32 bytes of the RNG: signing secret, chain \
             key) sends her second message with a header naming the sender's device, key id 1, iteration 1: a \
             well-formed message, signed and encrypted with Mallory's key, not the sender's."
                .to_owned(),
            "Auth(BadSignature)",
            &receiver,
            &forged.to_wire(),
            m1,
            p1,
        )?;
    }

    // Replays.
    {
        let (seed, mut rng) = n.next_rng()?;
        let mut s = GroupSetup::draw(&mut rng)?;
        let mut receiver = s.receiver_state()?;
        let msgs = s.send_n(3)?;
        let ((m0, _), (m1, _), (m2, p2)) = (get(&msgs, 0)?, get(&msgs, 1)?, get(&msgs, 2)?);
        receiver.decrypt(&reparse(m0)?, NOW_MS)?;
        receiver.decrypt(&reparse(m1)?, NOW_MS)?;
        n.sender_key(
            seed,
            "group-replay",
            "The receiver has decrypted messages 0 and 1; message 1 is delivered again.".to_owned(),
            "Protocol(Duplicate)",
            &receiver,
            &m1.to_wire(),
            m2,
            p2,
        )?;
    }
    {
        let (seed, mut rng) = n.next_rng()?;
        let mut s = GroupSetup::draw(&mut rng)?;
        let mut receiver = s.receiver_state()?;
        let msgs = s.send_n(3)?;
        let ((m0, _), (m1, _), (m2, p2)) = (get(&msgs, 0)?, get(&msgs, 1)?, get(&msgs, 2)?);
        receiver.decrypt(&reparse(m1)?, NOW_MS)?;
        receiver.decrypt(&reparse(m0)?, NOW_MS)?;
        n.sender_key(
            seed,
            "group-replay-skipped-key",
            "The receiver decrypted message 1 (storing the key of 0 as skipped), then message 0 with that key \
             (which was then deleted); message 0 is delivered again."
                .to_owned(),
            "Protocol(Duplicate)",
            &receiver,
            &m0.to_wire(),
            m2,
            p2,
        )?;
    }
    // Before the entitlement: the key was given after message 2.
    {
        let (seed, mut rng) = n.next_rng()?;
        let mut s = GroupSetup::draw(&mut rng)?;
        let msgs = s.send_n(3)?;
        let receiver = s.receiver_state()?;
        let (m3, p3) = s.send()?;
        let (m1, _) = get(&msgs, 1)?;
        n.sender_key(
            seed,
            "group-before-entitlement",
            "The sender sent messages 0 to 2, then gave the receiver its key (a distribution from iteration 3: \
             a device never gets the keys of messages sent before it was given the key). Message 1 arrives: \
             its key was never held, so it is refused like a replay. The control is message 3."
                .to_owned(),
            "Protocol(Duplicate)",
            &receiver,
            &m1.to_wire(),
            &m3,
            &p3,
        )?;
    }
    // Too far ahead.
    {
        let (seed, mut rng) = n.next_rng()?;
        let mut s = GroupSetup::draw(&mut rng)?;
        let mut receiver = s.receiver_state()?;
        let (m0, _) = s.send()?;
        receiver.decrypt(&reparse(&m0)?, NOW_MS)?;
        let edge_iteration = MAX_SENDER_KEY_JUMP + 1;
        while s.own.iteration() < edge_iteration {
            s.send()?;
        }
        let (edge, edge_plaintext) = s.send()?;
        let (far, _) = s.send()?;
        ensure(far.header.iteration == edge_iteration + 1, "far iteration")?;
        n.sender_key(
            seed,
            "group-too-far-ahead",
            format!(
                "The sender sent messages 0..={}; the receiver has decrypted message 0 (next iteration 1) and \
                 receives message {} next: {} keys would have to be derived and stored as skipped, more than \
                 MAX_SENDER_KEY_JUMP = {MAX_SENDER_KEY_JUMP}. The control, message {}, jumps exactly \
                 MAX_SENDER_KEY_JUMP and is accepted.",
                far.header.iteration,
                far.header.iteration,
                far.header.iteration - 1,
                edge_iteration
            ),
            "Protocol(TooFarAhead)",
            &receiver,
            &far.to_wire(),
            &edge,
            &edge_plaintext,
        )?;
    }
    Ok(())
}

pub(super) fn negative_group_devices(n: &mut Negatives) -> GenResult<()> {
    // A removed member's message.
    {
        let (seed, mut rng) = n.next_rng()?;
        let (mut pop, g, [alice, bob, carol]) = device_group(&mut rng)?;
        let c0 = send_group(&mut pop, &carol, &g, b"message 0 from carol", &mut rng)?;
        ensure(
            receive_group(&mut pop, &bob, &c0.message, &mut rng)? == b"message 0 from carol",
            "Bob reads Carol while she is a member",
        )?;
        let (out, conflicts) =
            pop.update_group(alice, &g, &[], &[carol.account], &mut rng, NOW_MS)?;
        ensure(conflicts == 0, "nobody else wrote to the log")?;
        let (to_carol, others): (Vec<Outgoing>, Vec<Outgoing>) =
            out.into_iter().partition(|o| o.to == carol);
        ensure(to_carol.len() == 1, "Carol is told too")?;
        deliver_pairwise(&mut pop, &alice, &others, &mut rng)?;
        sync(&mut pop, bob, &g, &mut rng)?;
        ensure(
            device_mut(&mut pop, &bob)?
                .group(&g)
                .is_some_and(|e| !e.state().is_member(&carol.account)),
            "Bob applied the removal",
        )?;
        let c1 = send_group(
            &mut pop,
            &carol,
            &g,
            b"message 1 from carol, after her removal",
            &mut rng,
        )?;
        ensure(
            c1.distributions.is_empty(),
            "Carol's key is already distributed",
        )?;
        let control = b"message 0 from alice, after removing carol";
        let a0 = send_group(&mut pop, &alice, &g, control, &mut rng)?;
        ensure(
            a0.recipients == [bob] && a0.distributions.len() == 1,
            "Alice's rotated key goes to Bob only",
        )?;
        n.group_device(
            seed,
            "group-removed-member",
            "Bob's device (its whole store). Alice created a group of Alice, Bob and Carol (its log on the \
             relay holds the creation at position 1, which Bob and Carol read); Carol sent message 0 under her \
             sender key (key id 1) and Bob decrypted it. Alice then removed Carol (the change at log position \
             2); Bob got Alice's notice and read the log, Carol's notice is still in flight and she has not read \
             it. Carol, unaware, sends her next message (iteration 1 of the key Bob holds, naming log position \
             1): Bob must refuse it because Carol is no longer a member. The control is Alice's next message, \
             under the new sender key she made after the removal (key id 2, already distributed to Bob). The RNG \
             drives Population::new(rng, [1, 1, 1], now), then every operation in that order."
                .to_owned(),
            "Protocol(NotAMember)",
            device_mut(&mut pop, &bob)?.store(),
            &c1.message,
            &a0.message,
            control,
        )?;
    }
    // A member forging another member's messages.
    {
        let (seed, mut rng) = n.next_rng()?;
        let (mut pop, g, [alice, bob, carol]) = device_group(&mut rng)?;
        let a0 = send_group(&mut pop, &alice, &g, b"message 0 from alice", &mut rng)?;
        receive_group(&mut pop, &bob, &a0.message, &mut rng)?;
        let c0 = send_group(&mut pop, &carol, &g, b"message 0 from carol", &mut rng)?;
        receive_group(&mut pop, &bob, &c0.message, &mut rng)?;
        let control = b"message 1 from alice";
        let a1 = send_group(&mut pop, &alice, &g, control, &mut rng)?;
        let mut carols = own_sender_key(device_mut(&mut pop, &carol)?.store())?;
        let genuine = GroupMessage::try_from(&wire::GroupMessage::decode(a1.message.as_slice())?)?;
        let forged = carols.encrypt(
            g,
            alice,
            (genuine.header.log_seq, genuine.header.log_head),
            b"message 1 from alice, forged by carol",
        )?;
        ensure(
            forged.header == genuine.header,
            "the forged header is Alice's next",
        )?;
        n.group_device(
            seed,
            "group-device-forged-sender",
            "Bob's device (its whole store). Alice created a group of Alice, Bob and Carol (Bob and Carol read \
             its log from the relay); Alice and then Carol sent message 0 and Bob decrypted both (he holds both sender keys, each key id 1). Carol, a member, \
             takes her own sender key from her store and sends a message whose header names Alice's device, key \
             id 1, iteration 1 and Alice's log position: Bob routes it to Alice's sender key, whose signature check fails. The control is \
             Alice's genuine message 1."
                .to_owned(),
            "Auth(BadSignature)",
            device_mut(&mut pop, &bob)?.store(),
            &forged.to_wire().encode_to_vec(),
            &a1.message,
            control,
        )?;
    }
    Ok(())
}

/// A creation by `alice` (her version-1 device list) of a group of herself only, named `name`,
/// for the log in `slot`.
fn creation(alice: &Party, name: &str, slot: [u8; 32]) -> GenResult<SignedChange> {
    Ok(SignedChange::sign(
        ChangeBody {
            group: GroupId([0; 32]),
            epoch: 1,
            previous_hash: [0; 32],
            author: alice.address(),
            name: Some(name.to_owned()),
            add: vec![(alice.account.id(), true)],
            remove: vec![],
            issued_at: NOW_MS,
            author_list: alice.own_device_list(NOW_MS)?.signed_bytes().to_vec(),
            slot: Some(slot),
        },
        &alice.identity,
    ))
}

pub(super) fn negative_group_logs(n: &mut Negatives) -> GenResult<()> {
    type Case = fn(&Party, &GroupSecret, &mut ChaCha20Rng) -> GenResult<(SignedChange, Vec<u8>)>;
    // (name, what, whether the invitation names the rejected creation's own id, the entry)
    let cases: [(&str, &str, bool, Case); 3] = [
        (
            "group-log-creation-for-another-id",
            "Entry 1 under the invitation's slot is a valid creation by Alice, sealed under the group secret \
             and naming its slot, but of another group: its name differs (\"Hush vector group, another\"), so \
             its hash, the group id, is not the one the invitation names. Nobody can make a creation for \
             an existing group id. Drawn after the control's nonce: this entry's nonce (12 bytes).",
            false,
            |alice, secret, rng| {
                let c = creation(alice, "Hush vector group, another", secret.slot())?;
                let entry = secret.seal_entry(1, &c.signed, rng)?;
                Ok((c, entry))
            },
        ),
        (
            "group-log-creation-names-another-slot",
            "Entry 1 is a valid creation by Alice sealed under the group secret, and the group id is its \
             hash, but it names the slot of another secret (drawn after the control's nonce: 32 bytes, then \
             this entry's nonce, 12 bytes).",
            true,
            |alice, secret, rng| {
                let other = GroupSecret::random(rng);
                let c = creation(alice, GROUP_NAME, other.slot())?;
                let entry = secret.seal_entry(1, &c.signed, rng)?;
                Ok((c, entry))
            },
        ),
        (
            "group-log-creation-sealed-for-position-2",
            "The control's creation, sealed again under the group secret for position 2 (the nonce drawn \
             after the control's, 12 bytes): the position is in the associated data, so it does not open \
             at position 1.",
            false,
            |alice, secret, rng| {
                let c = creation(alice, GROUP_NAME, secret.slot())?;
                let entry = secret.seal_entry(2, &c.signed, rng)?;
                Ok((c, entry))
            },
        ),
    ];
    for (name, what, own_id, case) in cases {
        let (seed, mut rng) = n.next_rng()?;
        let alice = Party::draw(&mut rng, ALICE_DEVICE_ID);
        let secret = GroupSecret::random(&mut rng);
        let genuine = creation(&alice, GROUP_NAME, secret.slot())?;
        let control_entry = secret.seal_entry(1, &genuine.signed, &mut rng)?;
        let control_id = genuine.body.group;
        let (bad, entry) = case(&alice, &secret, &mut rng)?;
        let id = if own_id { bad.body.group } else { control_id };
        check_err(
            GroupLog::create(id, secret.clone(), &entry),
            "Protocol(InvalidGroupLog)",
        )?;
        ensure(
            GroupLog::create(control_id, secret.clone(), &control_entry)?
                .state()
                .id
                == control_id,
            "the control starts the group's log",
        )?;
        n.push(
            seed,
            name,
            format!(
                "An invitation gives group id {} and a group secret; the device reads the log under the \
                 secret's slot and must refuse its first entry. {what} The control is the genuine creation: \
                 Alice (her version-1 device list) creates the group \"{GROUP_NAME}\" of herself, naming the \
                 secret's slot, sealed for position 1. The RNG draws Alice's account, signing and DH secrets \
                 (3 × 32 bytes), the group secret (32), the control's nonce (12), then what this entry \
                 needs.",
                if own_id {
                    "G' (the hash of the rejected creation)"
                } else {
                    "G (the control's)"
                }
            ),
            "Protocol(InvalidGroupLog)",
            NegativeInput::GroupLogStart {
                group_id: hx(id.0),
                group_secret: hx(&*secret.to_bytes()),
                entry: hx(&entry),
                control_group_id: hx(control_id.0),
                control_entry: hx(&control_entry),
            },
        );
    }
    Ok(())
}
