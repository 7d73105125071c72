//! Checks `sender_keys.json`: the sender-key chain, AEAD keys, ciphertexts and signatures
//! recomputed with `hmac`, `hkdf`, `chacha20poly1305` and `ed25519-dalek`, the deliveries replayed
//! through hush-core; and the group log: the values derived from the group secret, every sealed
//! entry, signed change, author device list and hash rebuilt by hand, the membership rules
//! applied by hand, and the whole log processed again through hush-core.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signer, SigningKey};
use hush_core::consts::{
    GROUP_ID_LABEL, GROUP_LOG_ENTRY_LABEL, GROUP_LOG_KEY_INFO, GROUP_LOG_SLOT_INFO,
    GROUP_LOG_WRITE_INFO, GROUP_SECRET_SALT, PROTOCOL_VERSION, SENDER_KEY_MESSAGE_INFO,
};
use hush_core::device_list::VerifiedDeviceList;
use hush_core::group::{ChangeBody, GroupLog, GroupSecret, Processed, SignedChange};
use hush_core::keys::{AccountId, AccountKeyPair, DeviceAddress};
use hush_core::sender_key::{
    GroupHeader, GroupId, GroupMessage, SenderKeyState, sender_chain_step,
};
use hush_proto::{Message, labels, wire};
use hush_tests::vectors::{
    AddressRecord, DeviceListVersionRecord, GroupLogVector, GroupMemberRecord, ListVersionRecord,
    SenderKeyVector, SenderKeysFile, error_name,
};
use sha2::{Digest, Sha256};

use super::{Device, ScriptedRng, check_header, ed_pub, ed_verify, h, h32, hn, x_pub};

/// HMAC-SHA256(key, [byte]), with the `hmac` crate.
fn hmac_byte(key: &[u8; 32], byte: u8) -> [u8; 32] {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(&[byte]);
    mac.finalize().into_bytes().as_slice().try_into().unwrap()
}

/// The AEAD key and nonce of a sender-key message key, with the `hkdf` crate: HKDF-SHA256(salt =
/// 32 zero bytes, ikm = mk, info = "Hush_SenderKey_Message_v1"), 44 bytes.
fn sender_aead(mk: &[u8; 32]) -> ([u8; 32], [u8; 12]) {
    let mut okm = [0u8; 44];
    hkdf::Hkdf::<Sha256>::new(Some(&[0u8; 32]), mk)
        .expand(b"Hush_SenderKey_Message_v1", &mut okm)
        .unwrap();
    (okm[..32].try_into().unwrap(), okm[32..].try_into().unwrap())
}

fn chacha(key: &[u8; 32]) -> chacha20poly1305::ChaCha20Poly1305 {
    use chacha20poly1305::aead::KeyInit;
    chacha20poly1305::ChaCha20Poly1305::new(&chacha20poly1305::Key::from(*key))
}

pub(super) fn aead_open(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    ct: &[u8],
) -> Option<Vec<u8>> {
    use chacha20poly1305::aead::{Aead, Payload};
    chacha(key)
        .decrypt(
            &chacha20poly1305::Nonce::from(*nonce),
            Payload { msg: ct, aad },
        )
        .ok()
}

fn aead_seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    use chacha20poly1305::aead::{Aead, Payload};
    chacha(key)
        .encrypt(
            &chacha20poly1305::Nonce::from(*nonce),
            Payload { msg: pt, aad },
        )
        .unwrap()
}

/// The 120 header bytes of a group message, built by hand from the wire fields: version ‖ group
/// id ‖ sender account ‖ sender device (u32 BE) ‖ key id (u32 BE) ‖ iteration (u32 BE) ‖ log
/// position (u64 BE) ‖ log head (32).
fn group_header_bytes(w: &wire::GroupMessage) -> Vec<u8> {
    [
        &w.version.to_be_bytes()[..],
        &w.group_id,
        &w.sender_account_key,
        &w.sender_device_id.to_be_bytes(),
        &w.key_id.to_be_bytes(),
        &w.iteration.to_be_bytes(),
        &w.log_seq.to_be_bytes(),
        &w.log_head,
    ]
    .concat()
}

/// Strict Ed25519 verification of a wire group message's signature with `signing_public`.
pub(super) fn group_signature_ok(signing_public: [u8; 32], w: &wire::GroupMessage) -> bool {
    w.signature.len() == 64
        && ed_verify(
            signing_public,
            b"Hush-GroupMessage-v1",
            &[group_header_bytes(w), w.ciphertext.clone()].concat(),
            &w.signature,
        )
}

/// Checks an address record (public from secret) and returns the address.
fn address_of(r: &AddressRecord) -> DeviceAddress {
    let secret = h32(&r.account_secret);
    assert_eq!(ed_pub(secret), h32(&r.account_public), "account public key");
    let account = AccountKeyPair::from_secret_bytes(&secret).id();
    assert_eq!(
        account,
        AccountId::from_bytes(&h(&r.account_public)).unwrap()
    );
    DeviceAddress {
        account,
        device_id: r.device_id,
    }
}

pub(super) fn check_sender_keys_file(f: &SenderKeysFile) -> (usize, usize, usize) {
    check_header("sender_keys", &f.file, f.format_version, &f.vectors);
    assert!(!f.group_logs.is_empty(), "sender_keys: no group log");
    let mut messages = 0;
    for v in &f.vectors {
        messages += check_sender_key_vector(v);
    }
    for g in &f.group_logs {
        check_group_log(g);
    }
    (f.vectors.len(), messages, f.group_logs.len())
}

/// Checks one sender key; returns the number of messages.
fn check_sender_key_vector(v: &SenderKeyVector) -> usize {
    assert_eq!(SENDER_KEY_MESSAGE_INFO, b"Hush_SenderKey_Message_v1");
    assert_eq!(labels::GROUP_MESSAGE, b"Hush-GroupMessage-v1");
    let group = h32(&v.group_id);
    let gid = GroupId::from_bytes(&group).unwrap();
    let sender = address_of(&v.sender);
    let signing_secret = h32(&v.signing_secret);
    let signing_public = h32(&v.signing_public);
    assert_eq!(
        ed_pub(signing_secret),
        signing_public,
        "{}: signing public",
        v.name
    );
    let initial_chain_key = h32(&v.initial_chain_key);

    // The chain, by hand (hmac, hkdf) and through hush-core.
    assert!(v.chain.len() >= 12, "{}: at least 12 chain steps", v.name);
    let mut ck = initial_chain_key;
    for (i, step) in v.chain.iter().enumerate() {
        assert_eq!(step.iteration as usize, i, "{}: chain order", v.name);
        assert_eq!(h32(&step.chain_key), ck, "{}: ck_{i}", v.name);
        let (mk, next) = (hmac_byte(&ck, 0x01), hmac_byte(&ck, 0x02));
        let (lib_mk, lib_next) = sender_chain_step(&ck);
        assert_eq!((*lib_mk, *lib_next), (mk, next), "{}: step {i}", v.name);
        assert_eq!(h32(&step.message_key), mk, "{}: mk_{i}", v.name);
        let (key, nonce) = sender_aead(&mk);
        assert_eq!(h32(&step.aead_key), key, "{}: AEAD key {i}", v.name);
        assert_eq!(hn::<12>(&step.aead_nonce), nonce, "{}: nonce {i}", v.name);
        ck = next;
    }

    // The messages, independently of hush-core, then parsed by it.
    assert!(v.messages.len() >= 10, "{}: at least 10 messages", v.name);
    assert!(v.messages.len() <= v.chain.len());
    let mut wires = Vec::new();
    let mut positions = BTreeSet::new();
    for (i, m) in v.messages.iter().enumerate() {
        positions.insert((m.log_seq, m.log_head.clone()));
        assert_eq!(m.iteration as usize, i, "{}: send order", v.name);
        let step = &v.chain[i];
        let (key, nonce) = (h32(&step.aead_key), hn::<12>(&step.aead_nonce));
        let header = h(&m.header);
        let (pt, ct, sig) = (h(&m.plaintext), h(&m.ciphertext), h(&m.signature));
        let expected = wire::GroupMessage {
            version: PROTOCOL_VERSION,
            group_id: group.to_vec(),
            sender_account_key: sender.account.as_bytes().to_vec(),
            sender_device_id: sender.device_id,
            key_id: v.key_id,
            iteration: m.iteration,
            ciphertext: ct.clone(),
            signature: sig.clone(),
            log_seq: m.log_seq,
            log_head: h32(&m.log_head).to_vec(),
        };
        assert_eq!(header.len(), 120);
        assert_eq!(
            header,
            group_header_bytes(&expected),
            "{}: header {i}",
            v.name
        );
        let lib_header = GroupHeader {
            group: gid,
            sender,
            key_id: v.key_id,
            iteration: m.iteration,
            log_seq: m.log_seq,
            log_head: h32(&m.log_head),
        };
        assert_eq!(lib_header.to_bytes(), header);
        assert_eq!(ct.len(), pt.len() + 16);
        assert_eq!(
            aead_open(&key, &nonce, &header, &ct),
            Some(pt.clone()),
            "{}: message {i} decrypts",
            v.name
        );
        assert_eq!(aead_seal(&key, &nonce, &header, &pt), ct);
        assert!(
            group_signature_ok(signing_public, &expected),
            "{}: signature {i}",
            v.name
        );
        let signed = [&b"Hush-GroupMessage-v1"[..], &header, &ct].concat();
        assert_eq!(
            SigningKey::from_bytes(&signing_secret)
                .sign(&signed)
                .to_bytes()
                .to_vec(),
            sig,
            "Ed25519 is deterministic"
        );
        let w = wire::GroupMessage::decode(h(&m.group_message).as_slice()).unwrap();
        assert_eq!(w, expected, "{}: wire message {i}", v.name);
        assert_eq!(hex::encode(w.encode_to_vec()), m.group_message);
        let parsed = GroupMessage::try_from(&w).unwrap();
        assert_eq!(parsed.header, lib_header);
        wires.push(parsed);
    }

    assert!(
        positions.len() >= 2,
        "{}: the messages name more than one log position",
        v.name
    );

    // Distributions: what each receiver was given.
    let mut receivers = Vec::new();
    for r in &v.receivers {
        let addr = address_of(&r.address);
        let d = wire::SenderKeyDistribution::decode(h(&r.distribution).as_slice()).unwrap();
        assert_eq!(hex::encode(d.encode_to_vec()), r.distribution);
        assert_eq!(d.group_id, group.to_vec(), "{}: distribution group", r.name);
        assert_eq!(d.key_id, v.key_id);
        assert_eq!(d.signing_key, signing_public.to_vec());
        assert!((d.iteration as usize) < v.messages.len());
        assert_eq!(
            d.chain_key,
            h(&v.chain[d.iteration as usize].chain_key),
            "{}: the distribution carries the chain key of its iteration",
            r.name
        );
        receivers.push((addr, d));
    }
    assert!(
        receivers.iter().any(|(_, d)| d.iteration == 0)
            && receivers.iter().any(|(_, d)| d.iteration > 0),
        "{}: a receiver from iteration 0 and a later one",
        v.name
    );

    // The sender through hush-core, from the recorded randomness only.
    let mut rng = ScriptedRng::new([group]);
    assert_eq!(GroupId::random(&mut rng), gid);
    rng.assert_exhausted("group id");
    let mut rng = ScriptedRng::new([signing_secret, initial_chain_key]);
    let mut own = SenderKeyState::generate(&mut rng, v.key_id, v.now_ms);
    rng.assert_exhausted("sender key");
    let p = own.to_proto();
    assert_eq!(
        (
            p.signing_private.as_slice(),
            p.signing_public.as_slice(),
            p.initial_chain_key.as_slice()
        ),
        (
            &signing_secret[..],
            &signing_public[..],
            &initial_chain_key[..]
        )
    );
    for (i, m) in v.messages.iter().enumerate() {
        for (addr, d) in receivers.iter().filter(|(_, d)| d.iteration as usize == i) {
            assert_eq!(
                own.distribution_for(gid, *addr, None).unwrap(),
                *d,
                "{}: the library makes the same distribution",
                v.name
            );
        }
        let enc = own
            .encrypt(gid, sender, (m.log_seq, h32(&m.log_head)), &h(&m.plaintext))
            .unwrap();
        assert_eq!(
            hex::encode(enc.to_wire().encode_to_vec()),
            m.group_message,
            "{}: the library encrypts message {i} identically",
            v.name
        );
    }
    if v.messages.len() == v.chain.len() {
        assert_eq!(own.to_proto().chain_key, ck.to_vec(), "final chain key");
    }

    // Every receiver, in its recorded delivery order, against a hand-kept model of its skipped keys.
    let (mut jumps, mut late_keys, mut out_of_order) = (0, 0, 0);
    for (r, (_, d)) in v.receivers.iter().zip(&receivers) {
        let mut state = SenderKeyState::from_distribution(d, v.now_ms).unwrap();
        assert_eq!(state.iteration(), d.iteration);
        // A receiver never reads what was sent before it got the key.
        if d.iteration > 0 {
            let before = state.to_proto().encode_to_vec();
            let err = state
                .decrypt(&wires[d.iteration as usize - 1], v.now_ms)
                .unwrap_err();
            assert_eq!(error_name(&err), "Protocol(Duplicate)");
            assert_eq!(state.to_proto().encode_to_vec(), before);
        }
        let mut next = d.iteration;
        let mut held = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut highest = None;
        for del in &r.deliveries {
            let i = del.message;
            assert!(seen.insert(i), "{}: {i} delivered twice", r.name);
            if highest.is_some_and(|hi| i < hi) {
                out_of_order += 1;
            }
            highest = highest.max(Some(i));
            let (via, stored) = match i.cmp(&next) {
                std::cmp::Ordering::Equal => ("next_iteration", 0),
                std::cmp::Ordering::Greater => ("forward_jump", i - next),
                std::cmp::Ordering::Less => ("skipped_key", 0),
            };
            if i >= next {
                held.extend(next..i);
                next = i + 1;
            } else {
                assert!(held.remove(&i), "{}: key of {i} is held", r.name);
                late_keys += 1;
            }
            if stored >= 2 {
                jumps += 1;
            }
            assert_eq!(del.received_via, via, "{}: message {i}", r.name);
            assert_eq!(del.skipped_keys_stored, stored, "{}: message {i}", r.name);
            assert_eq!(del.skipped_keys_held as usize, held.len());

            let opened = state.decrypt(&wires[i as usize], v.now_ms).unwrap();
            assert_eq!(*opened, h(&v.messages[i as usize].plaintext));
            assert_eq!(state.iteration(), next);
            assert_eq!(state.skipped_len(), held.len());
            // The same message again is refused and changes nothing.
            let after = state.to_proto().encode_to_vec();
            assert_eq!(
                error_name(&state.decrypt(&wires[i as usize], v.now_ms).unwrap_err()),
                "Protocol(Duplicate)"
            );
            assert_eq!(state.to_proto().encode_to_vec(), after);
        }
        assert_eq!(
            seen,
            (d.iteration..v.messages.len() as u32).collect(),
            "{}: every message from its entitlement on, once",
            r.name
        );
        assert!(held.is_empty() && state.skipped_len() == 0);
    }
    assert!(
        jumps > 0 && late_keys > 0 && out_of_order > 0,
        "{}: forward jumps, skipped keys and out-of-order delivery",
        v.name
    );
    v.messages.len()
}

fn member_records(members: impl IntoIterator<Item = ([u8; 32], bool)>) -> Vec<GroupMemberRecord> {
    members
        .into_iter()
        .map(|(a, admin)| GroupMemberRecord {
            account: hex::encode(a),
            admin,
        })
        .collect()
}

fn version_records(versions: impl IntoIterator<Item = ([u8; 32], u64)>) -> Vec<ListVersionRecord> {
    versions
        .into_iter()
        .map(|(a, version)| ListVersionRecord {
            account: hex::encode(a),
            version,
        })
        .collect()
}

/// SHA-256 of the concatenation of `parts`, with the `sha2` crate.
fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for p in parts {
        hasher.update(p);
    }
    hasher.finalize().into()
}

/// HKDF-SHA256(salt = "Hush-GroupSecret-v1", ikm = secret, info, L = 32), with the `hkdf` crate.
pub(super) fn group_derive(secret: &[u8; 32], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(b"Hush-GroupSecret-v1"), secret)
        .expand(info, &mut out)
        .unwrap();
    out
}

/// Checks a signed device list record of `account` by hand (the `DeviceList` bytes rebuilt, the
/// account's signature, the wrapper) and through hush-core; returns its version and the signing
/// key of each listed device.
fn check_author_list(
    r: &DeviceListVersionRecord,
    account: &AccountId,
) -> (u64, BTreeMap<u32, [u8; 32]>) {
    let mut entries = Vec::new();
    let mut keys = BTreeMap::new();
    for d in &r.devices {
        assert_eq!(
            ed_pub(h32(&d.identity_signing_secret)),
            h32(&d.identity_signing_public)
        );
        assert_eq!(
            x_pub(h32(&d.identity_dh_secret)),
            h32(&d.identity_dh_public)
        );
        // The listed device's consent (§3.1), checked by hand.
        let consent_transcript = [
            account.as_bytes().as_slice(),
            &d.device_id.to_be_bytes(),
            &h(&d.identity_signing_public),
            &h(&d.identity_dh_public),
        ]
        .concat();
        assert!(ed_verify(
            h32(&d.identity_signing_public),
            b"Hush-DeviceConsent-v1",
            &consent_transcript,
            &h(&d.consent)
        ));
        entries.push(wire::DeviceEntry {
            device_id: d.device_id,
            identity: Some(wire::DeviceIdentityKey {
                signing_key: h(&d.identity_signing_public),
                dh_key: h(&d.identity_dh_public),
            }),
            added_at: d.added_at,
            consent: h(&d.consent),
        });
        keys.insert(d.device_id, h32(&d.identity_signing_public));
    }
    let raw = wire::DeviceList {
        account_key: account.as_bytes().to_vec(),
        version: r.version,
        issued_at: r.issued_at,
        devices: entries,
    };
    assert_eq!(
        hex::encode(raw.encode_to_vec()),
        r.device_list,
        "device list bytes"
    );
    assert!(ed_verify(
        *account.as_bytes(),
        b"Hush-DeviceList-v1",
        &h(&r.device_list),
        &h(&r.signature)
    ));
    let signed = wire::SignedDeviceList {
        device_list: h(&r.device_list),
        signature: h(&r.signature),
    };
    assert_eq!(hex::encode(signed.encode_to_vec()), r.signed_device_list);
    let list = VerifiedDeviceList::verify(&h(&r.signed_device_list), account).unwrap();
    assert_eq!(list.list().version, r.version);
    for (id, key) in &keys {
        assert_eq!(list.identity_of(*id).unwrap().signing_key(), key);
    }
    (r.version, keys)
}

/// The membership after the valid changes so far, kept by hand by the rules of PROTOCOL.md §17.
#[derive(Clone, Default)]
struct Membership {
    epoch: u64,
    head: [u8; 32],
    name: String,
    members: BTreeMap<[u8; 32], bool>,
    versions: BTreeMap<[u8; 32], u64>,
}

/// A change as the hand-kept rules see it.
struct HandChange {
    group: [u8; 32],
    epoch: u64,
    previous_hash: [u8; 32],
    author: [u8; 32],
    list_version: u64,
    name: Option<String>,
    add: Vec<([u8; 32], bool)>,
    remove: Vec<[u8; 32]>,
    hash: [u8; 32],
}

impl Membership {
    /// Applies `c` written at position `seq`: the next membership and (added, removed), or the
    /// error every member skips it with.
    #[allow(clippy::type_complexity)]
    fn apply(
        &self,
        id: [u8; 32],
        seq: u64,
        c: &HandChange,
    ) -> Result<(Self, Vec<[u8; 32]>, Vec<[u8; 32]>), &'static str> {
        if c.group != id {
            return Err("Protocol(Misuse)");
        }
        if c.epoch != seq || c.previous_hash != self.head {
            return Err("Protocol(Misuse)");
        }
        if self
            .versions
            .get(&c.author)
            .is_some_and(|v| *v > c.list_version)
        {
            return Err("Protocol(DeviceListRollback)");
        }
        let refresh = c.add.is_empty() && c.name.is_none() && c.remove.is_empty();
        let leaving = c.add.is_empty() && c.name.is_none() && c.remove == [c.author];
        let member = self.members.contains_key(&c.author);
        let admin = self.members.get(&c.author) == Some(&true);
        if c.epoch == 1 {
            if !c.remove.is_empty() || !c.add.contains(&(c.author, true)) {
                return Err("Protocol(NotPermitted)");
            }
        } else if !admin && !((leaving || refresh) && member) {
            return Err("Protocol(NotPermitted)");
        }
        let mut next = self.clone();
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for a in &c.remove {
            if next.members.remove(a).is_none() {
                return Err("Malformed");
            }
            removed.push(*a);
        }
        for (a, flag) in &c.add {
            if next.members.insert(*a, *flag).is_none() {
                added.push(*a);
            }
        }
        if next.members.len() > 2000 {
            return Err("Protocol(TooManyDevices)");
        }
        if !next.members.is_empty() && !next.members.values().any(|f| *f) {
            return Err("Protocol(Misuse)");
        }
        if let Some(n) = &c.name {
            next.name.clone_from(n);
        }
        next.versions.insert(c.author, c.list_version);
        next.epoch = c.epoch;
        next.head = c.hash;
        Ok((next, added, removed))
    }
}

fn check_group_log(v: &GroupLogVector) {
    // The strings the library uses are the documented ones.
    assert_eq!(labels::GROUP_CHANGE, b"Hush-GroupChange-v1");
    assert_eq!(GROUP_SECRET_SALT, b"Hush-GroupSecret-v1");
    assert_eq!(GROUP_LOG_SLOT_INFO, b"Hush_GroupLog_Slot_v1");
    assert_eq!(GROUP_LOG_WRITE_INFO, b"Hush_GroupLog_Write_v1");
    assert_eq!(GROUP_LOG_KEY_INFO, b"Hush_GroupLog_Key_v1");
    assert_eq!(GROUP_LOG_ENTRY_LABEL, b"Hush-GroupLogEntry-v1");
    assert_eq!(GROUP_ID_LABEL, b"Hush-GroupId-v1");

    // The secret and what derives from it, by hand, then through hush-core.
    let secret = h32(&v.group_secret);
    let slot = group_derive(&secret, b"Hush_GroupLog_Slot_v1");
    let token = group_derive(&secret, b"Hush_GroupLog_Write_v1");
    let key = group_derive(&secret, b"Hush_GroupLog_Key_v1");
    assert_eq!(h32(&v.slot), slot, "{}: slot", v.name);
    assert_eq!(h32(&v.write_token), token, "{}: write token", v.name);
    assert_eq!(h32(&v.entry_key), key, "{}: entry key", v.name);
    assert_eq!(
        h32(&v.write_check),
        sha256(&[b"Hush-GroupLog-Write", &token]),
        "{}: the relay's write check",
        v.name
    );
    let gs = GroupSecret::from_bytes(&secret).unwrap();
    assert_eq!(gs.slot(), slot);
    assert_eq!(*gs.write_token(), token);
    let mut rng = ScriptedRng::new([secret]);
    assert_eq!(GroupSecret::random(&mut rng).to_bytes(), gs.to_bytes());
    rng.assert_exhausted("group secret");

    let parts: Vec<(&str, Device)> = v
        .participants
        .iter()
        .map(|p| (p.name.as_str(), Device::from_record(&p.device)))
        .collect();
    let group = h32(&v.group_id);
    let gid = GroupId::from_bytes(&group).unwrap();

    let mut hand = Membership::default();
    let mut log: Option<GroupLog> = None;
    let mut skipped = BTreeSet::new();
    let (mut adds, mut removals, mut non_admin_refreshes, mut leaves) = (0, 0, 0, 0);
    // (account, list version) of every applied change, in order.
    let mut applied_versions: Vec<([u8; 32], u64)> = Vec::new();
    for (i, e) in v.entries.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(e.seq, seq, "{}: positions", v.name);
        let c = &e.change;
        let what = format!("{} entry {seq}", v.name);

        // The author device and its account's list, by hand.
        let author = &parts
            .iter()
            .find(|(n, _)| *n == e.author)
            .unwrap_or_else(|| panic!("{what}: unknown author {}", e.author))
            .1;
        let author_account = h32(&c.author_account);
        assert_eq!(author.account.as_bytes(), &author_account, "{what}");
        assert_eq!(author.device_id, c.author_device_id, "{what}");
        let (list_version, listed) = check_author_list(&c.author_device_list, &author.account);
        assert_eq!(
            listed.get(&c.author_device_id),
            Some(author.identity.signing_key()),
            "{what}: the list carried names the author device with its signing key"
        );

        // The signed bytes, rebuilt by hand; the signature, the wrapper and the hash.
        let creation = c.epoch == 1;
        assert_eq!(c.group_id.is_empty(), creation, "{what}: group id field");
        assert_eq!(c.log_slot.is_empty(), !creation, "{what}: slot field");
        let raw = wire::GroupChange {
            group_id: h(&c.group_id),
            epoch: c.epoch,
            previous_hash: h32(&c.previous_hash).to_vec(),
            author_account_key: author_account.to_vec(),
            author_device_id: c.author_device_id,
            name: c.name.clone().unwrap_or_default(),
            add: c
                .add
                .iter()
                .map(|m| wire::GroupMember {
                    account_key: h32(&m.account).to_vec(),
                    admin: m.admin,
                })
                .collect(),
            remove: c.remove.iter().map(|a| h32(a).to_vec()).collect(),
            issued_at: c.issued_at,
            author_device_list: h(&c.author_device_list.signed_device_list),
            log_slot: h(&c.log_slot),
        };
        let change = h(&c.change);
        assert_eq!(raw.encode_to_vec(), change, "{what}: change bytes");
        assert!(
            ed_verify(
                *author.identity.signing_key(),
                b"Hush-GroupChange-v1",
                &change,
                &h(&c.signature)
            ),
            "{what}: signature"
        );
        let signed = wire::SignedGroupChange {
            change: change.clone(),
            signature: h(&c.signature),
        }
        .encode_to_vec();
        assert_eq!(hex::encode(&signed), c.signed_group_change, "{what}");
        let hash = sha256(&[&change]);
        assert_eq!(h32(&c.hash), hash, "{what}: hash");
        if creation {
            assert_eq!(seq, 1, "{what}: the creation is the first entry");
            assert_eq!(
                h32(&c.log_slot),
                slot,
                "{what}: the creation names the slot"
            );
            assert_eq!(
                sha256(&[b"Hush-GroupId-v1", &change]),
                group,
                "{what}: the group id is the hash of the creation"
            );
        }
        let change_group = if creation { group } else { h32(&c.group_id) };

        // The sealed entry, by hand.
        let nonce = hn::<12>(&e.nonce);
        let ad = [
            &b"Hush-GroupLogEntry-v1"[..],
            &slot,
            &e.sealed_for.to_be_bytes(),
        ]
        .concat();
        assert_eq!(h(&e.associated_data), ad, "{what}: associated data");
        let entry = h(&e.entry);
        assert_eq!(
            entry,
            [&[1u8][..], &nonce, &aead_seal(&key, &nonce, &ad, &signed)].concat(),
            "{what}: the sealed entry"
        );
        let at_seq = [&b"Hush-GroupLogEntry-v1"[..], &slot, &seq.to_be_bytes()].concat();
        let opens = aead_open(&key, &nonce, &at_seq, &entry[13..]);
        assert_eq!(
            opens.is_some(),
            e.sealed_for == seq,
            "{what}: opens at its position"
        );

        // What every member makes of it, by hand.
        let expected = if opens.is_none() {
            Err("Auth(DecryptFailed)")
        } else {
            hand.apply(
                group,
                seq,
                &HandChange {
                    group: change_group,
                    epoch: c.epoch,
                    previous_hash: h32(&c.previous_hash),
                    author: author_account,
                    list_version,
                    name: c.name.clone(),
                    add: c.add.iter().map(|m| (h32(&m.account), m.admin)).collect(),
                    remove: c.remove.iter().map(|a| h32(a)).collect(),
                    hash,
                },
            )
        };
        match expected {
            Ok((next, added, removed)) => {
                assert_eq!(e.outcome, "applied", "{what}");
                assert_eq!(e.skip_error, None, "{what}");
                let hexes = |a: &[[u8; 32]]| a.iter().map(hex::encode).collect::<Vec<_>>();
                assert_eq!(
                    (hexes(&added), hexes(&removed)),
                    (e.added.clone(), e.removed.clone()),
                    "{what}"
                );
                let was_admin = hand.members.get(&author_account) == Some(&true);
                if seq > 1 {
                    adds += usize::from(!added.is_empty());
                    let leave = c.remove == [c.author_account.clone()] && c.add.is_empty();
                    leaves += usize::from(leave && !was_admin);
                    removals += usize::from(!removed.is_empty() && !leave);
                    non_admin_refreshes += usize::from(
                        !was_admin && c.add.is_empty() && c.remove.is_empty() && c.name.is_none(),
                    );
                }
                applied_versions.push((author_account, list_version));
                hand = next;
            }
            Err(reason) => {
                assert_eq!(e.outcome, "skipped", "{what}");
                assert_eq!(e.skip_error.as_deref(), Some(reason), "{what}: skip reason");
                assert!(e.added.is_empty() && e.removed.is_empty(), "{what}");
                skipped.insert(reason);
            }
        }
        assert_eq!(e.epoch_after, hand.epoch, "{what}: epoch after");
        assert_eq!(h32(&e.head_after), hand.head, "{what}: head after");
        assert_eq!(e.name_after, hand.name, "{what}: name after");
        assert_eq!(
            member_records(hand.members.clone()),
            e.members_after,
            "{what}: members after"
        );
        assert_eq!(
            version_records(hand.versions.clone()),
            e.list_versions_after,
            "{what}: list versions after"
        );

        // Through hush-core: seal from the recorded nonce, open, parse, verify, re-sign, process.
        let mut rng = ScriptedRng(nonce.into_iter().collect());
        assert_eq!(
            gs.seal_entry(e.sealed_for, &signed, &mut rng).unwrap(),
            entry,
            "{what}"
        );
        rng.assert_exhausted("entry nonce");
        assert_eq!(gs.open_entry(e.sealed_for, &entry).unwrap(), signed);
        let parsed = SignedChange::parse(&signed).unwrap();
        assert_eq!(
            (parsed.signed.as_slice(), parsed.hash),
            (signed.as_slice(), hash)
        );
        assert_eq!(parsed.verify().unwrap(), list_version, "{what}");
        let body = ChangeBody {
            group: GroupId(change_group),
            epoch: c.epoch,
            previous_hash: h32(&c.previous_hash),
            author: author.address(),
            name: c.name.clone(),
            add: c
                .add
                .iter()
                .map(|m| (AccountId::from_bytes(&h(&m.account)).unwrap(), m.admin))
                .collect(),
            remove: c
                .remove
                .iter()
                .map(|a| AccountId::from_bytes(&h(a)).unwrap())
                .collect(),
            issued_at: c.issued_at,
            author_list: h(&c.author_device_list.signed_device_list),
            slot: creation.then_some(slot),
        };
        assert_eq!(parsed.body, body, "{what}");
        assert_eq!(
            SignedChange::sign(body, &author.pair).signed,
            signed,
            "{what}"
        );
        match log.as_mut() {
            None => {
                assert_eq!(e.outcome, "applied", "{what}: the creation applies");
                log = Some(GroupLog::create(gid, gs.clone(), &entry).unwrap());
            }
            Some(l) => {
                let before = l.state().clone();
                match l.process(seq, &entry).unwrap() {
                    Processed::Applied { change, diff } => {
                        assert_eq!(e.outcome, "applied", "{what}");
                        assert_eq!(change.hash, hash);
                        let hexes = |a: &[AccountId]| -> Vec<String> {
                            a.iter().map(|x| hex::encode(x.as_bytes())).collect()
                        };
                        assert_eq!(hexes(&diff.added), e.added, "{what}");
                        assert_eq!(hexes(&diff.removed), e.removed, "{what}");
                    }
                    Processed::Skipped(err) => {
                        assert_eq!(e.skip_error, Some(error_name(&err)), "{what}");
                        assert_eq!(
                            l.state(),
                            &before,
                            "{what}: a skipped entry changes nothing"
                        );
                    }
                }
            }
        }
        let l = log.as_ref().unwrap();
        assert_eq!(l.seq(), seq);
        let state = l.state();
        assert_eq!(
            (state.id, state.epoch, state.head),
            (gid, hand.epoch, hand.head),
            "{what}"
        );
        assert_eq!(state.name, hand.name, "{what}");
        assert_eq!(
            member_records(state.members.iter().map(|(a, f)| (*a.as_bytes(), *f))),
            e.members_after,
            "{what}"
        );
        assert_eq!(
            version_records(state.list_versions.iter().map(|(a, n)| (*a.as_bytes(), *n))),
            e.list_versions_after,
            "{what}"
        );
    }

    // The valid changes restore to the same state; the head at every position is the one recorded.
    let log = log.expect("a log");
    let restored = GroupLog::restore(gid, gs.clone(), log.entries().to_vec(), log.seq()).unwrap();
    assert_eq!(restored.state(), log.state());
    for e in &v.entries {
        assert_eq!(
            log.head_at(e.seq),
            h32(&e.head_after),
            "{}: head at {}",
            v.name,
            e.seq
        );
    }
    // A creation under another secret (another slot) is not this group's log.
    let other = GroupSecret::from_bytes(&token).unwrap();
    let first = SignedChange::parse(&h(&v.entries[0].change.signed_group_change)).unwrap();
    assert_eq!(
        error_name(&GroupLog::from_creation(gid, other, first).unwrap_err()),
        "Protocol(InvalidGroupLog)"
    );

    assert!(
        adds > 0 && removals > 0 && leaves > 0 && non_admin_refreshes > 0,
        "{}: an add, a removal, a non-admin's refresh and a leave after creation",
        v.name
    );
    assert!(
        skipped.len() >= 3,
        "{}: entries skipped for at least three reasons",
        v.name
    );
    assert!(
        applied_versions
            .iter()
            .any(|(a, v1)| applied_versions.iter().any(|(b, v2)| a == b && v2 > v1)),
        "{}: an author's list version increases between its changes",
        v.name
    );
}
