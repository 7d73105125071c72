//! Checks `negative.json` (and the negative vectors of `device_lists.json`): each input is rejected
//! with exactly the recorded error, the rejection changes no state, and the control is accepted.

use std::collections::BTreeSet;

use hush_core::device::{Device as CoreDevice, GroupIncoming};
use hush_core::device_list::VerifiedDeviceList;
use hush_core::error::{AuthError, ProtocolError};
use hush_core::group::{GroupLog, GroupSecret};
use hush_core::keys::{AccountId, DeviceIdentityKeyPair};
use hush_core::pqxdh::{self, InitialMessage};
use hush_core::prekeys::PreKeyBundle;
use hush_core::ratchet::{RatchetMessage, SessionState};
use hush_core::sealed;
use hush_core::sender_key::{GroupId, GroupMessage, SenderKeyState};
use hush_core::store::kv::{Batch, KvStore, Namespace};
use hush_core::store::memory::MemoryKv;
use hush_proto::{Message, store, wire};
use hush_tests::vectors::{
    NamedError, NegativeFile, NegativeInput, NegativeVector, StoreEntryRecord, error_name,
};
use sha2::Digest;

use super::sender_keys::{aead_open, group_derive, group_signature_ok};
use super::{
    Device, ScriptedRng, check_header, h, h32, kem_pre_key, one_time_pre_key, signed_pre_key,
};

/// Every entry of a store, as recorded in `device_store`.
fn dump_store(store: &impl KvStore) -> Vec<StoreEntryRecord> {
    let mut out = Vec::new();
    for ns in Namespace::ALL {
        for (key, value) in store.scan(ns).unwrap() {
            out.push(StoreEntryRecord {
                namespace: ns.as_byte(),
                key: hex::encode(key),
                value: hex::encode(&*value),
            });
        }
    }
    out
}

/// A memory store holding exactly the recorded entries.
fn memory_store(entries: &[StoreEntryRecord]) -> MemoryKv {
    let mut batch = Batch::new();
    for e in entries {
        batch.put(
            Namespace::from_byte(e.namespace).unwrap(),
            h(&e.key),
            h(&e.value),
        );
    }
    let mut store = MemoryKv::new();
    store.commit(batch).unwrap();
    store
}

/// Checks `negative.json`; returns the number of vectors and how many of them are group vectors.
pub(super) fn check_negative_file(f: &NegativeFile) -> (usize, usize) {
    check_header("negative", &f.file, f.format_version, &f.vectors);
    let mut names = BTreeSet::new();
    for v in &f.vectors {
        assert!(names.insert(v.name.clone()), "duplicate name {}", v.name);
        check_negative(v);
    }
    let errors: BTreeSet<&str> = f
        .vectors
        .iter()
        .map(|v| v.expected_error.as_str())
        .collect();
    for required in [
        "Auth(BadSignature)",
        "Auth(DecryptFailed)",
        "Auth(InvalidKey)",
        "Protocol(Duplicate)",
        "Protocol(TooFarAhead)",
        "Protocol(LastResortReuse)",
        "Protocol(DeviceListRollback)",
        "Protocol(DeviceNotOnList)",
        "Protocol(NotAMember)",
        "Auth(SealedDecryptFailed)",
        "Auth(SealedSenderMismatch)",
        "Protocol(UnsupportedVersion)",
        "Protocol(InvalidGroupLog)",
    ] {
        assert!(
            errors.contains(required),
            "no negative vector expects {required}"
        );
    }
    // Group vectors: each group error through the sender-key state, and through a device.
    let group: Vec<&NegativeVector> = f
        .vectors
        .iter()
        .filter(|v| {
            matches!(
                v.input,
                NegativeInput::SenderKeyMessage { .. } | NegativeInput::GroupMessage { .. }
            )
        })
        .collect();
    for (kind_is_device, required) in [
        (false, "Auth(BadSignature)"),
        (false, "Protocol(Duplicate)"),
        (false, "Protocol(TooFarAhead)"),
        (true, "Protocol(NotAMember)"),
        (true, "Auth(BadSignature)"),
    ] {
        assert!(
            group.iter().any(|v| v.expected_error == required
                && matches!(v.input, NegativeInput::GroupMessage { .. }) == kind_is_device),
            "no group negative vector expects {required} (device: {kind_is_device})"
        );
    }
    (f.vectors.len(), group.len())
}

#[track_caller]
fn assert_rejected<T>(v: &NegativeVector, result: Result<T, impl NamedError>) {
    match result {
        Ok(_) => panic!(
            "{}: accepted, but must fail with {}",
            v.name, v.expected_error
        ),
        Err(e) => assert_eq!(
            error_name(&e),
            v.expected_error,
            "{}: wrong error ({e:?})",
            v.name
        ),
    }
}

fn account(hex_key: &str) -> AccountId {
    AccountId::from_bytes(&h(hex_key)).unwrap()
}

pub(super) fn check_negative(v: &NegativeVector) {
    match &v.input {
        NegativeInput::Bundle {
            account: acct,
            device_list,
            bundle,
            control_bundle,
        } => {
            let list = VerifiedDeviceList::verify(&h(device_list), &account(acct)).unwrap();
            let bad = wire::PreKeyBundle::decode(h(bundle).as_slice()).unwrap();
            assert_rejected(v, PreKeyBundle(bad).verify(&list).map(|_| ()));
            let control = wire::PreKeyBundle::decode(h(control_bundle).as_slice()).unwrap();
            PreKeyBundle(control)
                .verify(&list)
                .unwrap_or_else(|e| panic!("{}: control rejected: {e}", v.name));
        }
        NegativeInput::RatchetMessage {
            state_before,
            message,
            control_message,
            control_plaintext,
        } => {
            let before = h(state_before);
            let mut session =
                SessionState::from_proto(&store::SessionState::decode(before.as_slice()).unwrap())
                    .unwrap();
            let bad = wire::RatchetMessage::decode(h(message).as_slice()).unwrap();
            assert_rejected(
                v,
                RatchetMessage::try_from(&bad).and_then(|m| session.decrypt(&m, v.now_ms)),
            );
            assert_eq!(
                hex::encode(session.to_proto().encode_to_vec()),
                *state_before,
                "{}: the session changed",
                v.name
            );
            // Rejected again, the same way: nothing was consumed or advanced.
            assert_rejected(
                v,
                RatchetMessage::try_from(&bad).and_then(|m| session.decrypt(&m, v.now_ms)),
            );
            let control = wire::RatchetMessage::decode(h(control_message).as_slice()).unwrap();
            let opened = session
                .decrypt(&RatchetMessage::try_from(&control).unwrap(), v.now_ms)
                .unwrap();
            assert_eq!(
                *opened.plaintext,
                h(control_plaintext),
                "{}: control",
                v.name
            );
        }
        NegativeInput::InitialMessage {
            responder,
            signed_pre_key: spk,
            one_time_pre_key: opk,
            kem_pre_key: kem,
            used_base_keys,
            message,
            control_message,
            control_plaintext,
        } => {
            let bob = Device::from_record(responder);
            let spk = signed_pre_key(spk, &bob, 0);
            let opk = opk.as_ref().map(one_time_pre_key);
            let mut kem = kem_pre_key(kem, &bob, 0);
            kem.mark_used_base_keys(used_base_keys.iter().map(|k| h32(k)));
            let run = |bytes: &str| -> Result<Vec<u8>, hush_core::Error> {
                let pm = wire::PairwiseMessage::decode(h(bytes).as_slice()).unwrap();
                let Some(wire::pairwise_message::Body::Initial(m)) = pm.body else {
                    panic!("{}: not initial", v.name)
                };
                let im = InitialMessage::try_from(&m)?;
                let mut init = pqxdh::respond(
                    bob.address(),
                    &bob.pair,
                    &spk,
                    opk.as_ref(),
                    &kem,
                    &im,
                    v.now_ms,
                )?;
                Ok(init
                    .session
                    .decrypt(&im.message, v.now_ms)?
                    .plaintext
                    .to_vec())
            };
            assert_rejected(v, run(message));
            assert_rejected(v, run(message));
            assert_eq!(
                run(control_message).unwrap(),
                h(control_plaintext),
                "{}: control",
                v.name
            );
        }
        NegativeInput::DeviceListVerify {
            account: acct,
            signed_device_list,
            control_signed_device_list,
        } => {
            assert_rejected(
                v,
                VerifiedDeviceList::verify(&h(signed_device_list), &account(acct)),
            );
            VerifiedDeviceList::verify(&h(control_signed_device_list), &account(acct)).unwrap();
        }
        NegativeInput::DeviceListSuccessor {
            account: acct,
            known_device_list,
            signed_device_list,
            control_signed_device_list,
        } => {
            let acct = account(acct);
            let known = VerifiedDeviceList::verify(&h(known_device_list), &acct).unwrap();
            let offer = |bytes: &str| {
                VerifiedDeviceList::verify(&h(bytes), &acct)?.check_successor(Some(&known))
            };
            assert_rejected(v, offer(signed_device_list));
            offer(control_signed_device_list).unwrap();
        }
        NegativeInput::DeviceListMember {
            account: acct,
            signed_device_list,
            device_id,
            control_device_id,
        } => {
            let list = VerifiedDeviceList::verify(&h(signed_device_list), &account(acct)).unwrap();
            assert_rejected(v, list.identity_of(*device_id));
            list.identity_of(*control_device_id).unwrap();
        }
        NegativeInput::SenderKeyMessage {
            state_before,
            message,
            control_message,
            control_plaintext,
        } => {
            let proto = store::SenderKeyState::decode(h(state_before).as_slice()).unwrap();
            assert!(
                proto.signing_private.is_empty() && proto.initial_chain_key.is_empty(),
                "{}: a receiver's copy of a sender key",
                v.name
            );
            let mut state = SenderKeyState::from_proto(&proto).unwrap();
            assert_eq!(hex::encode(state.to_proto().encode_to_vec()), *state_before);
            let bad = wire::GroupMessage::decode(h(message).as_slice()).unwrap();
            let control = wire::GroupMessage::decode(h(control_message).as_slice()).unwrap();
            // Independently: the control's signature verifies with the held signing key, and the
            // rejected message's does exactly when the expected error is not a bad signature.
            let signing: [u8; 32] = proto.signing_public.as_slice().try_into().unwrap();
            assert!(
                group_signature_ok(signing, &control),
                "{}: control signature",
                v.name
            );
            assert_eq!(
                group_signature_ok(signing, &bad),
                v.expected_error != "Auth(BadSignature)",
                "{}: signature of the rejected message",
                v.name
            );
            let mut offer = |w: &wire::GroupMessage| {
                GroupMessage::try_from(w).and_then(|m| state.decrypt(&m, v.now_ms))
            };
            assert_rejected(v, offer(&bad));
            assert_rejected(v, offer(&bad));
            assert_eq!(
                *offer(&control).unwrap(),
                h(control_plaintext),
                "{}: control",
                v.name
            );
            // The state after the control is the state before it, advanced by the control alone:
            // the rejections changed nothing.
            let mut fresh = SenderKeyState::from_proto(&proto).unwrap();
            fresh
                .decrypt(&GroupMessage::try_from(&control).unwrap(), v.now_ms)
                .unwrap();
            assert_eq!(
                fresh.to_proto().encode_to_vec(),
                state.to_proto().encode_to_vec(),
                "{}: the sender-key state changed",
                v.name
            );
        }
        NegativeInput::GroupMessage {
            device_store,
            message,
            control_message,
            control_plaintext,
        } => {
            let mut device = CoreDevice::open(memory_store(device_store)).unwrap();
            assert_eq!(dump_store(device.store()), *device_store);
            let bad = h(message);
            let header =
                GroupMessage::try_from(&wire::GroupMessage::decode(bad.as_slice()).unwrap())
                    .unwrap()
                    .header;
            // Not for want of a key: the device holds the sender key the message names.
            assert!(
                device
                    .sender_key_status(&header.group, &header.sender)
                    .unwrap()
                    .iter()
                    .any(|(id, _, _)| *id == header.key_id),
                "{}: the device holds the named sender key",
                v.name
            );
            let group = device
                .group(&header.group)
                .expect("the device knows the group");
            assert_eq!(
                group.state().is_member(&header.sender.account),
                v.expected_error != "Protocol(NotAMember)",
                "{}: membership of the claimed sender",
                v.name
            );
            // No randomness may be drawn.
            let mut no_rng = ScriptedRng::new([]);
            assert_rejected(
                v,
                device
                    .decrypt_group(&bad, &mut no_rng, v.now_ms)
                    .map(|_| ()),
            );
            assert_eq!(
                dump_store(device.store()),
                *device_store,
                "{}: the device's store changed",
                v.name
            );
            assert_rejected(
                v,
                device
                    .decrypt_group(&bad, &mut no_rng, v.now_ms)
                    .map(|_| ()),
            );
            match device
                .decrypt_group(&h(control_message), &mut no_rng, v.now_ms)
                .unwrap()
            {
                GroupIncoming::Decrypted(r) => {
                    assert_eq!(*r.plaintext, h(control_plaintext), "{}: control", v.name);
                    assert_eq!(r.group, Some(header.group));
                }
                GroupIncoming::Buffered { .. } => panic!("{}: control buffered", v.name),
            }
        }
        NegativeInput::GroupLogStart {
            group_id,
            group_secret,
            entry,
            control_group_id,
            control_entry,
        } => {
            // By hand: the entry opens at position 1 under the key derived from the secret, and
            // is a creation whose hash is the group id and which names the secret's slot.
            let secret = h32(group_secret);
            let (slot, key) = (
                group_derive(&secret, b"Hush_GroupLog_Slot_v1"),
                group_derive(&secret, b"Hush_GroupLog_Key_v1"),
            );
            let valid_start = |id: &[u8; 32], entry: &[u8]| -> bool {
                let ad = [&b"Hush-GroupLogEntry-v1"[..], &slot, &1u64.to_be_bytes()].concat();
                let (Some(1), Some(nonce), Some(ct)) =
                    (entry.first().copied(), entry.get(1..13), entry.get(13..))
                else {
                    return false;
                };
                let Some(signed) = aead_open(&key, nonce.try_into().unwrap(), &ad, ct) else {
                    return false;
                };
                let signed = wire::SignedGroupChange::decode(signed.as_slice()).unwrap();
                let change = wire::GroupChange::decode(signed.change.as_slice()).unwrap();
                let hash = sha2::Sha256::new()
                    .chain_update(b"Hush-GroupId-v1")
                    .chain_update(&signed.change)
                    .finalize();
                change.epoch == 1
                    && change.group_id.is_empty()
                    && hash.as_slice() == id
                    && change.log_slot == slot
            };
            assert!(!valid_start(&h32(group_id), &h(entry)), "{}", v.name);
            assert!(
                valid_start(&h32(control_group_id), &h(control_entry)),
                "{}",
                v.name
            );
            // Through hush-core.
            let gs = GroupSecret::from_bytes(&secret).unwrap();
            assert_rejected(
                v,
                GroupLog::create(GroupId(h32(group_id)), gs.clone(), &h(entry)),
            );
            let log = GroupLog::create(GroupId(h32(control_group_id)), gs, &h(control_entry))
                .unwrap_or_else(|e| panic!("{}: control refused: {e:?}", v.name));
            assert_eq!(log.state().id.0, h32(control_group_id));
            assert_eq!(log.seq(), 1);
        }
        NegativeInput::SealedOpen {
            recipient,
            envelope,
            control_envelope,
            control_content,
        } => {
            let r = Device::from_record(recipient);
            let bad = h(envelope);
            assert_rejected(v, sealed::open(&r.pair, &bad).map(|_| ()));
            let opened = sealed::open(&r.pair, &h(control_envelope)).unwrap();
            assert_eq!(*opened.content, h(control_content), "{}: control", v.name);
        }
        NegativeInput::SealedSender {
            recipient,
            account: acct,
            signed_device_list,
            envelope,
            control_envelope,
            control_content,
        } => {
            let r = Device::from_record(recipient);
            let list = VerifiedDeviceList::verify(&h(signed_device_list), &account(acct)).unwrap();
            assert_rejected(
                v,
                open_from_listed(&r.pair, &list, &h(envelope)).map(|_| ()),
            );
            let opened = open_from_listed(&r.pair, &list, &h(control_envelope)).unwrap();
            assert_eq!(*opened.content, h(control_content), "{}: control", v.name);
        }
    }
}

/// Opens a sealed envelope and checks its inner sender against the device list of the sender's
/// account, as `Device::open_sealed` does (PROTOCOL.md §21.4).
fn open_from_listed(
    recipient: &DeviceIdentityKeyPair,
    list: &VerifiedDeviceList,
    bytes: &[u8],
) -> Result<sealed::Opened, hush_core::Error> {
    let opened = sealed::open(recipient, bytes)?;
    if opened.from.account != list.list().account {
        return Err(ProtocolError::UnknownAccount.into());
    }
    if list.identity_of(opened.from.device_id)? != opened.identity {
        return Err(AuthError::SealedSenderMismatch.into());
    }
    Ok(opened)
}
