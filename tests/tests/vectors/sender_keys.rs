//! Checks `sender_keys.json`: the sender-key chain, AEAD keys, ciphertexts and signatures
//! recomputed with `hmac`, `hkdf`, `chacha20poly1305` and `ed25519-dalek`, the deliveries replayed
//! through hush-core; and the membership log's signatures, hashes and memberships.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signer, SigningKey};
use hush_core::consts::{PROTOCOL_VERSION, SENDER_KEY_MESSAGE_INFO};
use hush_core::group::{ChangeBody, GroupLog, Offered, SignedChange};
use hush_core::keys::{AccountId, AccountKeyPair, DeviceAddress};
use hush_core::sender_key::{
    GroupHeader, GroupId, GroupMessage, SenderKeyState, sender_chain_step,
};
use hush_proto::{Message, labels, wire};
use hush_tests::vectors::{
    AddressRecord, GroupMemberRecord, MembershipVector, SenderKeyVector, SenderKeysFile, error_name,
};
use sha2::{Digest, Sha256};

use super::{Device, ScriptedRng, check_header, ed_pub, ed_verify, h, h32, hn};

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

fn aead_open(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
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

/// The 80 header bytes of a group message, built by hand from the wire fields: version ‖ group id ‖
/// sender account ‖ sender device (u32 BE) ‖ key id (u32 BE) ‖ iteration (u32 BE).
fn group_header_bytes(w: &wire::GroupMessage) -> Vec<u8> {
    [
        &w.version.to_be_bytes()[..],
        &w.group_id,
        &w.sender_account_key,
        &w.sender_device_id.to_be_bytes(),
        &w.key_id.to_be_bytes(),
        &w.iteration.to_be_bytes(),
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
    assert!(
        !f.membership_logs.is_empty(),
        "sender_keys: no membership log"
    );
    let mut messages = 0;
    for v in &f.vectors {
        messages += check_sender_key_vector(v);
    }
    for m in &f.membership_logs {
        check_membership_log(m);
    }
    (f.vectors.len(), messages, f.membership_logs.len())
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
    for (i, m) in v.messages.iter().enumerate() {
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
        };
        assert_eq!(header.len(), 80);
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
        let enc = own.encrypt(gid, sender, &h(&m.plaintext)).unwrap();
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

fn check_membership_log(v: &MembershipVector) {
    assert_eq!(labels::GROUP_CHANGE, b"Hush-GroupChange-v1");
    let group = h32(&v.group_id);
    let gid = GroupId::from_bytes(&group).unwrap();
    let parts: Vec<(&str, Device)> = v
        .participants
        .iter()
        .map(|p| (p.name.as_str(), Device::from_record(&p.device)))
        .collect();
    let mut log: Option<GroupLog> = None;
    let mut previous = [0u8; 32];
    // The membership kept by hand, by the rules of `hush_core::group`.
    let mut members: BTreeMap<[u8; 32], bool> = BTreeMap::new();
    let mut name = String::new();
    let (mut adds, mut removals, mut leaves) = (0, 0, 0);
    for (i, c) in v.changes.iter().enumerate() {
        assert_eq!(c.epoch, i as u64 + 1, "{}: epochs", v.name);
        let author = &parts
            .iter()
            .find(|(n, _)| *n == c.author)
            .unwrap_or_else(|| panic!("unknown author {}", c.author))
            .1;
        assert_eq!(author.account.as_bytes(), &h32(&c.author_account));
        assert_eq!(author.device_id, c.author_device_id);
        assert_eq!(h32(&c.previous_hash), previous, "{}: previous hash", v.name);

        // The exact bytes, rebuilt by hand; the signature and the hash, independently.
        let raw = wire::GroupChange {
            group_id: group.to_vec(),
            epoch: c.epoch,
            previous_hash: previous.to_vec(),
            author_account_key: h(&c.author_account),
            author_device_id: c.author_device_id,
            name: c.name.clone().unwrap_or_default(),
            add: c
                .add
                .iter()
                .map(|m| wire::GroupMember {
                    account_key: h(&m.account),
                    admin: m.admin,
                })
                .collect(),
            remove: c.remove.iter().map(|a| h(a)).collect(),
            issued_at: c.issued_at,
        };
        assert_eq!(
            hex::encode(raw.encode_to_vec()),
            c.change,
            "{}: change {}",
            v.name,
            c.epoch
        );
        assert!(ed_verify(
            *author.identity.signing_key(),
            b"Hush-GroupChange-v1",
            &h(&c.change),
            &h(&c.signature)
        ));
        let signed = wire::SignedGroupChange {
            change: h(&c.change),
            signature: h(&c.signature),
        }
        .encode_to_vec();
        assert_eq!(hex::encode(&signed), c.signed_group_change);
        // The hash covers the signed `GroupChange` bytes only, not the wrapper.
        let hash: [u8; 32] = Sha256::digest(h(&c.change)).as_slice().try_into().unwrap();
        assert_eq!(hash, h32(&c.hash), "{}: hash of change {}", v.name, c.epoch);

        // The rules, by hand.
        let author_account = h32(&c.author_account);
        let leaving = c.add.is_empty()
            && c.name.is_none()
            && c.remove == [c.author_account.clone()]
            && members.contains_key(&author_account);
        if c.epoch == 1 {
            assert!(c.remove.is_empty());
            assert!(
                c.add
                    .iter()
                    .any(|m| m.account == c.author_account && m.admin)
            );
        } else {
            assert!(
                members.get(&author_account) == Some(&true) || leaving,
                "{}: change {} by an admin, or a member leaving",
                v.name,
                c.epoch
            );
        }
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for a in &c.remove {
            assert!(members.remove(&h32(a)).is_some(), "removes a member");
            removed.push(a.clone());
        }
        for m in &c.add {
            if members.insert(h32(&m.account), m.admin).is_none() {
                added.push(m.account.clone());
            }
        }
        if let Some(n) = &c.name {
            name.clone_from(n);
        }
        assert!(members.values().any(|admin| *admin));
        assert_eq!(
            (&added, &removed),
            (&c.added, &c.removed),
            "{}: diff {}",
            v.name,
            c.epoch
        );
        assert_eq!(member_records(members.clone()), c.members_after);
        assert_eq!(name, c.name_after);
        if c.epoch > 1 {
            adds += usize::from(!added.is_empty());
            leaves += usize::from(leaving);
            removals += usize::from(!removed.is_empty() && !leaving);
        }

        // Through hush-core: parse, verify, re-sign, apply.
        let parsed = SignedChange::parse(&signed).unwrap();
        assert_eq!(
            (parsed.signed.as_slice(), parsed.hash),
            (signed.as_slice(), hash)
        );
        let body = ChangeBody {
            group: gid,
            epoch: c.epoch,
            previous_hash: previous,
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
        };
        assert_eq!(parsed.body, body);
        parsed.verify(&author.identity).unwrap();
        for (other, d) in &parts {
            if *other != c.author {
                assert_eq!(
                    error_name(&parsed.verify(&d.identity).unwrap_err()),
                    "Auth(BadSignature)"
                );
            }
        }
        assert_eq!(SignedChange::sign(body, &author.pair).signed, signed);
        match log.as_mut() {
            None => log = Some(GroupLog::create(parsed).unwrap()),
            Some(l) => match l.offer(parsed).unwrap() {
                Offered::Applied(diffs) => {
                    assert_eq!(diffs.len(), 1);
                    let hexes = |a: &[AccountId]| -> Vec<String> {
                        a.iter().map(|x| hex::encode(x.as_bytes())).collect()
                    };
                    assert_eq!(hexes(&diffs[0].added), c.added);
                    assert_eq!(hexes(&diffs[0].removed), c.removed);
                }
                other => panic!("{}: change {} not applied: {other:?}", v.name, c.epoch),
            },
        }
        let state = log.as_ref().unwrap().state();
        assert_eq!((state.id, state.epoch, state.head), (gid, c.epoch, hash));
        assert_eq!(state.name, c.name_after);
        assert_eq!(
            member_records(
                state
                    .members
                    .iter()
                    .map(|(a, admin)| (*a.as_bytes(), *admin))
            ),
            c.members_after
        );
        previous = hash;
    }
    let mut log = log.unwrap();
    assert_eq!(
        GroupLog::restore(log.log().to_vec(), Vec::new())
            .unwrap()
            .state(),
        log.state()
    );
    // A change offered again is ignored.
    let first = SignedChange::parse(&h(&v.changes[0].signed_group_change)).unwrap();
    assert_eq!(log.offer(first).unwrap(), Offered::Ignored);
    assert!(
        adds > 0 && removals > 0 && leaves > 0,
        "{}: an add, a removal and a leave after creation",
        v.name
    );
}
