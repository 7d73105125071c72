//! `sender_keys.json`: one sender key's chain, its group messages and their out-of-order delivery
//! to two member devices; and a signed membership log. [`Addressed`], [`draw_group_id`] and
//! [`draw_sender_key`] also draw the groups of the sender-key cases of `negative.json`.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey};
use hush_core::consts::{KEY_LEN, SENDER_KEY_MESSAGE_INFO};
use hush_core::group::{ChangeBody, GroupLog, Offered, SignedChange};
use hush_core::keys::{AccountId, AccountKeyPair, DeviceAddress};
use hush_core::sender_key::{GroupId, GroupMessage, SenderKeyState, sender_chain_step};
use hush_proto::{Message, labels, wire};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{
    ALICE, ALICE_DEVICE_ID, BOB, BOB_DEVICE_ID, DeviceKeysRecord, FORMAT_VERSION, GenResult,
    NOW_MS, Party, count, draw, ed25519_public, ensure, get, hx, seed,
};

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/// A device address, with the account secret it comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressRecord {
    /// Ed25519 account identity secret (32 bytes).
    pub account_secret: String,
    /// Ed25519 account identity public key (32 bytes): the address's account.
    pub account_public: String,
    /// Device id within the account.
    pub device_id: u32,
}

/// One step of a sender-key chain: the keys of one iteration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderChainStepRecord {
    /// The iteration i.
    pub iteration: u32,
    /// Chain key ck_i (32 bytes); ck_0 is the initial chain key.
    pub chain_key: String,
    /// Message key mk_i = HMAC-SHA256(ck_i, 0x01) (32 bytes).
    pub message_key: String,
    /// ChaCha20-Poly1305 key: bytes 0..32 of HKDF-SHA256(salt = 0x00×32, ikm = mk_i,
    /// info = "Hush_SenderKey_Message_v1").
    pub aead_key: String,
    /// ChaCha20-Poly1305 nonce: bytes 32..44 of the same expansion.
    pub aead_nonce: String,
}

/// One group message, encrypted once for every member device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderKeyMessageRecord {
    /// Its iteration (position in the chain); messages are recorded in send order.
    pub iteration: u32,
    /// Plaintext.
    pub plaintext: String,
    /// The 80 header bytes: version u32 BE ‖ group id (32) ‖ sender account (32) ‖ sender device
    /// u32 BE ‖ key id u32 BE ‖ iteration u32 BE. The AEAD's associated data.
    pub header: String,
    /// ChaCha20-Poly1305 ciphertext with tag (`len(plaintext) + 16`).
    pub ciphertext: String,
    /// Ed25519 signature (64 bytes) by the sender key's signing key over
    /// `"Hush-GroupMessage-v1" ‖ header ‖ ciphertext`.
    pub signature: String,
    /// The encoded wire `GroupMessage`: the same bytes go to every member device.
    pub group_message: String,
}

/// One delivery of a group message to a receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderKeyDeliveryRecord {
    /// The iteration of the message delivered.
    pub message: u32,
    /// `"next_iteration"` (the receiver's next iteration), `"forward_jump"` (further ahead: the
    /// keys in between are stored as skipped) or `"skipped_key"` (a key stored earlier).
    pub received_via: String,
    /// Message keys the receiver stored as skipped while decrypting it.
    pub skipped_keys_stored: u32,
    /// Skipped message keys the receiver holds afterwards.
    pub skipped_keys_held: u32,
}

/// A member device that receives the sender key and then the messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderKeyReceiverRecord {
    /// `"bob"` or `"carol"`.
    pub name: String,
    /// The receiving device.
    pub address: AddressRecord,
    /// The encoded `SenderKeyDistribution` the sender made for it (sent inside a pairwise
    /// message). Its `iteration` is the sender's next iteration when it was made: the receiver can
    /// read that message and later ones only.
    pub distribution: String,
    /// Its deliveries, in the order they happened.
    pub deliveries: Vec<SenderKeyDeliveryRecord>,
}

/// One sender key: its chain, its messages, and their delivery to two member devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderKeyVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// The time used for every operation.
    pub now_ms: u64,
    /// The group id (32 bytes).
    pub group_id: String,
    /// The sending device.
    pub sender: AddressRecord,
    /// The sender key's id.
    pub key_id: u32,
    /// Ed25519 signing secret of the sender key (32 bytes).
    pub signing_secret: String,
    /// Its public key (32 bytes).
    pub signing_public: String,
    /// The chain key of iteration 0 (32 bytes).
    pub initial_chain_key: String,
    /// The chain, one step per iteration from 0.
    pub chain: Vec<SenderChainStepRecord>,
    /// The messages, in send order (iteration 0, 1, …).
    pub messages: Vec<SenderKeyMessageRecord>,
    /// The receiving devices.
    pub receivers: Vec<SenderKeyReceiverRecord>,
}

/// A named device taking part in a membership log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantRecord {
    /// `"alice"`, `"bob"`, `"carol"` or `"dave"`.
    pub name: String,
    /// Its account and device keys.
    pub device: DeviceKeysRecord,
}

/// A group member and its admin flag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMemberRecord {
    /// Account key (32 bytes).
    pub account: String,
    /// Whether it is an admin.
    pub admin: bool,
}

/// One signed membership change and the membership it leads to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupChangeRecord {
    /// The epoch (1 = creation).
    pub epoch: u64,
    /// Name of the authoring participant.
    pub author: String,
    /// The author's account key (32 bytes).
    pub author_account: String,
    /// The author's device id.
    pub author_device_id: u32,
    /// The new group name (creation, rename), or null.
    pub name: Option<String>,
    /// Members added, or whose admin flag changes.
    pub add: Vec<GroupMemberRecord>,
    /// Account keys removed (32 bytes each).
    pub remove: Vec<String>,
    /// Issue time (ms).
    pub issued_at: u64,
    /// SHA-256 of the previous change's `change` (32 zero bytes for epoch 1).
    pub previous_hash: String,
    /// The encoded `GroupChange`: the bytes that are signed.
    pub change: String,
    /// Ed25519 signature (64 bytes) by the author device's identity signing key over
    /// `"Hush-GroupChange-v1" ‖ change`.
    pub signature: String,
    /// The encoded `SignedGroupChange` `{change, signature}`: what members exchange.
    pub signed_group_change: String,
    /// SHA-256 of `change`, the signed bytes (32 bytes): the next change's `previous_hash`.
    pub hash: String,
    /// Accounts that joined with this change (32 bytes each).
    pub added: Vec<String>,
    /// Accounts that left with this change.
    pub removed: Vec<String>,
    /// The members afterwards, by ascending account key.
    pub members_after: Vec<GroupMemberRecord>,
    /// The group name afterwards.
    pub name_after: String,
}

/// A group's membership log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// The group id (32 bytes).
    pub group_id: String,
    /// The devices that author changes or are members.
    pub participants: Vec<ParticipantRecord>,
    /// The changes, epoch 1 first.
    pub changes: Vec<GroupChangeRecord>,
}

/// `sender_keys.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderKeysFile {
    /// `"sender_keys"`.
    pub file: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the file holds.
    pub description: String,
    /// Sender-key chains with their messages and deliveries.
    pub vectors: Vec<SenderKeyVector>,
    /// Signed membership logs.
    pub membership_logs: Vec<MembershipVector>,
}

// ---------------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------------

/// Id of every sender key in the vectors (the first key a device makes for a group).
pub const SENDER_KEY_ID: u32 = 1;
/// Carol's device id.
pub const CAROL_DEVICE_ID: u32 = 3;
/// Dave's device id.
pub const DAVE_DEVICE_ID: u32 = 4;
/// Name of the third device in the group vectors.
pub const CAROL: &str = "carol";
/// Name of the fourth device in the membership log.
pub const DAVE: &str = "dave";
/// The name groups are created with.
pub const GROUP_NAME: &str = "Hush vector group";

/// One hour in ms.
const HOUR_MS: u64 = 60 * 60 * 1000;

/// Messages sent under the sender key of `sender_keys.json` (iterations 0..16).
const GROUP_MESSAGES: u32 = 16;

/// Bob gets the sender key before message 0. His deliveries: jumps of 1 (0 → 2), 5 (3 → 9) and
/// 4 (10 → 15), and every skipped key used later, some long after.
const BOB_DELIVERIES: [u32; 16] = [0, 2, 1, 3, 9, 5, 4, 10, 15, 6, 14, 11, 8, 12, 7, 13];

/// Carol gets the sender key after message 4 was sent: her distribution starts at iteration 5.
const CAROL_FROM: u32 = 5;

/// Carol's deliveries (iterations 5..16 only).
const CAROL_DELIVERIES: [u32; 11] = [6, 5, 7, 11, 8, 9, 10, 13, 12, 15, 14];

/// An account (its secret drawn from the RNG) and a device id on it.
pub(super) struct Addressed {
    secret: [u8; KEY_LEN],
    account: AccountKeyPair,
    device_id: u32,
}

impl Addressed {
    /// Draws the account secret (32 bytes).
    pub(super) fn draw(rng: &mut ChaCha20Rng, device_id: u32) -> Self {
        let secret = draw(rng);
        Self {
            secret,
            account: AccountKeyPair::from_secret_bytes(&secret),
            device_id,
        }
    }

    pub(super) fn address(&self) -> DeviceAddress {
        DeviceAddress {
            account: self.account.id(),
            device_id: self.device_id,
        }
    }

    fn record(&self) -> AddressRecord {
        AddressRecord {
            account_secret: hx(self.secret),
            account_public: hx(self.account.id().as_bytes()),
            device_id: self.device_id,
        }
    }
}

/// Draws a group id with `GroupId::random` (32 bytes), checking it is exactly the next 32 bytes.
pub(super) fn draw_group_id(rng: &mut ChaCha20Rng) -> GenResult<GroupId> {
    let expected: [u8; 32] = draw(&mut rng.clone());
    let group = GroupId::random(rng);
    ensure(group.0 == expected, "the group id is the next 32 bytes")?;
    Ok(group)
}

/// Draws a sender key with `SenderKeyState::generate` ([`SENDER_KEY_ID`], created now): its
/// Ed25519 signing secret, then its chain key (2 × 32 bytes). Checks the library draws exactly
/// those bytes and returns them with the state.
pub(super) fn draw_sender_key(
    rng: &mut ChaCha20Rng,
) -> GenResult<(SenderKeyState, [u8; KEY_LEN], [u8; KEY_LEN])> {
    let mut peek = rng.clone();
    let signing: [u8; KEY_LEN] = draw(&mut peek);
    let chain: [u8; KEY_LEN] = draw(&mut peek);
    let state = SenderKeyState::generate(rng, SENDER_KEY_ID, NOW_MS);
    ensure(
        rng.get_word_pos() == peek.get_word_pos(),
        "a sender key draws 64 bytes",
    )?;
    let p = state.to_proto();
    ensure(
        p.signing_private == signing
            && p.initial_chain_key == chain
            && p.chain_key == chain
            && p.iteration == 0
            && p.signing_public == ed25519_public(&signing),
        "the sender key is the signing secret, then the chain key",
    )?;
    Ok((state, signing, chain))
}

/// The ChaCha20-Poly1305 key and nonce of a sender-key message key: HKDF-SHA256 with a zero salt,
/// expanded to 44 bytes (documented in `hush_core::sender_key`).
fn sender_aead(mk: &[u8; KEY_LEN]) -> GenResult<([u8; KEY_LEN], [u8; 12])> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&[0u8; KEY_LEN]), mk);
    let mut okm = [0u8; KEY_LEN + 12];
    hk.expand(SENDER_KEY_MESSAGE_INFO, &mut okm)
        .map_err(|_| "HKDF expansion")?;
    let (key, nonce) = okm.split_at(KEY_LEN);
    Ok((key.try_into()?, nonce.try_into()?))
}

/// Opens a group ciphertext with an AEAD key and nonce, the header as associated data.
fn sender_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; 12],
    header: &[u8],
    ciphertext: &[u8],
) -> GenResult<Vec<u8>> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let cipher = chacha20poly1305::ChaCha20Poly1305::new(&chacha20poly1305::Key::from(*key));
    Ok(cipher
        .decrypt(
            &chacha20poly1305::Nonce::from(*nonce),
            Payload {
                msg: ciphertext,
                aad: header,
            },
        )
        .map_err(|_| "group ciphertext does not open")?)
}

/// How a receiver whose next iteration is `next` finds the key of message `iteration`.
fn sender_via(next: u32, iteration: u32) -> &'static str {
    match iteration.cmp(&next) {
        std::cmp::Ordering::Equal => "next_iteration",
        std::cmp::Ordering::Greater => "forward_jump",
        std::cmp::Ordering::Less => "skipped_key",
    }
}

/// A group message as a receiver parses it from the wire.
pub(super) fn reparse(m: &GroupMessage) -> GenResult<GroupMessage> {
    let bytes = m.to_wire().encode_to_vec();
    Ok(GroupMessage::try_from(&wire::GroupMessage::decode(
        bytes.as_slice(),
    )?)?)
}

pub(super) fn sender_keys_file() -> GenResult<SenderKeysFile> {
    Ok(SenderKeysFile {
        file: "sender_keys".to_owned(),
        format_version: FORMAT_VERSION,
        description: "Group messaging: a sender key's chain (chain keys, message keys, AEAD keys and nonces), its \
                      signed group messages, their distribution to two member devices and out-of-order delivery; \
                      and a signed membership log (creation, add, remove, leave)."
            .to_owned(),
        vectors: vec![sender_key_vector()?],
        membership_logs: vec![membership_vector()?],
    })
}

/// Draws Alice's, Bob's and Carol's account secrets, the group id, then Alice's sender key
/// (signing secret, chain key): 6 × 32 bytes.
fn sender_key_vector() -> GenResult<SenderKeyVector> {
    let seed = seed("sender_keys", 0)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let alice = Addressed::draw(&mut rng, ALICE_DEVICE_ID);
    let bob = Addressed::draw(&mut rng, BOB_DEVICE_ID);
    let carol = Addressed::draw(&mut rng, CAROL_DEVICE_ID);
    let group = draw_group_id(&mut rng)?;
    let (mut own, signing_secret, initial_chain_key) = draw_sender_key(&mut rng)?;

    let receivers: [(&str, &Addressed, u32, &[u32]); 2] = [
        (BOB, &bob, 0, &BOB_DELIVERIES),
        (CAROL, &carol, CAROL_FROM, &CAROL_DELIVERIES),
    ];
    let mut distributions: [Option<wire::SenderKeyDistribution>; 2] = [None, None];
    let mut chain = Vec::new();
    let mut messages = Vec::new();
    let mut sent = Vec::new();
    let mut ck = initial_chain_key;
    for i in 0..GROUP_MESSAGES {
        // Distributions made before message i carry ck_i.
        for ((_, who, from, _), slot) in receivers.iter().zip(distributions.iter_mut()) {
            if *from == i {
                let d = own.distribution_for(group, who.address(), None)?;
                ensure(
                    d.iteration == i && d.chain_key == ck && d.key_id == SENDER_KEY_ID,
                    "a distribution carries the current chain key",
                )?;
                *slot = Some(d);
            }
        }
        let (mk, next) = sender_chain_step(&ck);
        let (aead_key, aead_nonce) = sender_aead(&mk)?;
        chain.push(SenderChainStepRecord {
            iteration: i,
            chain_key: hx(ck),
            message_key: hx(*mk),
            aead_key: hx(aead_key),
            aead_nonce: hx(aead_nonce),
        });
        let plaintext = format!("group message {i} from alice").into_bytes();
        let m = own.encrypt(group, alice.address(), &plaintext)?;
        ensure(
            m.header.iteration == i && m.header.key_id == SENDER_KEY_ID,
            "header names the key and iteration",
        )?;
        let header = m.header.to_bytes();
        ensure(
            sender_open(&aead_key, &aead_nonce, &header, &m.ciphertext)? == plaintext,
            "the documented AEAD key and nonce open the ciphertext",
        )?;
        let signed = [labels::GROUP_MESSAGE, &header, &m.ciphertext].concat();
        ensure(
            SigningKey::from_bytes(&signing_secret)
                .sign(&signed)
                .to_bytes()
                == m.signature,
            "the signature is over label || header || ciphertext",
        )?;
        messages.push(SenderKeyMessageRecord {
            iteration: i,
            plaintext: hx(&plaintext),
            header: hx(&header),
            ciphertext: hx(&m.ciphertext),
            signature: hx(m.signature),
            group_message: hx(m.to_wire().encode_to_vec()),
        });
        sent.push((m, plaintext));
        ck = *next;
    }
    ensure(
        own.to_proto().chain_key == ck,
        "the sender's chain ends at ck_16",
    )?;

    let mut receiver_records = Vec::new();
    for ((name, who, from, order), dist) in receivers.iter().zip(distributions) {
        let dist = dist.ok_or("distribution not made")?;
        let mut state = SenderKeyState::from_distribution(&dist, NOW_MS)?;
        let mut deliveries = Vec::new();
        for &i in order.iter() {
            let (m, plaintext) = get(&sent, usize::try_from(i)?)?;
            let (next, held) = (state.iteration(), state.skipped_len());
            let via = sender_via(next, i);
            let opened = state.decrypt(&reparse(m)?, NOW_MS)?;
            ensure(*opened == *plaintext, "the receiver decrypts the plaintext")?;
            let consumed = usize::from(via == "skipped_key");
            let stored = (state.skipped_len() + consumed)
                .checked_sub(held)
                .ok_or("skipped keys were evicted")?;
            deliveries.push(SenderKeyDeliveryRecord {
                message: i,
                received_via: via.to_owned(),
                skipped_keys_stored: count(stored)?,
                skipped_keys_held: count(state.skipped_len())?,
            });
        }
        let mut delivered: Vec<u32> = order.to_vec();
        delivered.sort_unstable();
        ensure(
            delivered == (*from..GROUP_MESSAGES).collect::<Vec<_>>(),
            "every message from the entitlement on is delivered once",
        )?;
        ensure(
            state.skipped_len() == 0,
            "no skipped keys are left at the end",
        )?;
        receiver_records.push(SenderKeyReceiverRecord {
            name: (*name).to_owned(),
            address: who.record(),
            distribution: hx(dist.encode_to_vec()),
            deliveries,
        });
    }

    Ok(SenderKeyVector {
        name: "sender-key-chain".to_owned(),
        description: format!(
            "Alice's sender key for a group: {GROUP_MESSAGES} messages (iterations 0 to {}). Bob gets \
             the key before message 0 and Carol after message {} (from iteration {CAROL_FROM}); each receives \
             the messages out of order, with forward jumps and late use of skipped keys.",
            GROUP_MESSAGES - 1,
            CAROL_FROM - 1
        ),
        seed: hx(seed),
        now_ms: NOW_MS,
        group_id: hx(group.0),
        sender: alice.record(),
        key_id: SENDER_KEY_ID,
        signing_secret: hx(signing_secret),
        signing_public: hx(ed25519_public(&signing_secret)),
        initial_chain_key: hx(initial_chain_key),
        chain,
        messages,
        receivers: receiver_records,
    })
}

fn member_records(members: &BTreeMap<AccountId, bool>) -> Vec<GroupMemberRecord> {
    members
        .iter()
        .map(|(a, admin)| GroupMemberRecord {
            account: hx(a.as_bytes()),
            admin: *admin,
        })
        .collect()
}

/// Draws Alice's, Bob's, Carol's and Dave's account, signing and DH secrets (4 × 3 × 32 bytes),
/// then the group id.
fn membership_vector() -> GenResult<MembershipVector> {
    let seed = seed("sender_keys", 1)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let alice = Party::draw(&mut rng, ALICE_DEVICE_ID);
    let bob = Party::draw(&mut rng, BOB_DEVICE_ID);
    let carol = Party::draw(&mut rng, CAROL_DEVICE_ID);
    let dave = Party::draw(&mut rng, DAVE_DEVICE_ID);
    let group = draw_group_id(&mut rng)?;
    let (a, b, c, d) = (
        alice.account.id(),
        bob.account.id(),
        carol.account.id(),
        dave.account.id(),
    );
    type Step<'a> = (
        &'a str,
        &'a Party,
        Option<&'a str>,
        Vec<(AccountId, bool)>,
        Vec<AccountId>,
        u64,
    );
    let steps: [Step<'_>; 4] = [
        // Alice creates the group with Bob and Carol.
        (
            ALICE,
            &alice,
            Some(GROUP_NAME),
            vec![(a, true), (b, false), (c, false)],
            vec![],
            NOW_MS - 3 * HOUR_MS,
        ),
        // Alice adds Dave and makes Bob an admin.
        (
            ALICE,
            &alice,
            None,
            vec![(d, false), (b, true)],
            vec![],
            NOW_MS - 2 * HOUR_MS,
        ),
        // Bob, now an admin, removes Carol.
        (BOB, &bob, None, vec![], vec![c], NOW_MS - HOUR_MS),
        // Dave (not an admin) leaves.
        (DAVE, &dave, None, vec![], vec![d], NOW_MS),
    ];
    let mut log: Option<GroupLog> = None;
    let mut changes = Vec::new();
    for (epoch, (author, party, name, add, remove, issued_at)) in (1u64..).zip(steps) {
        let previous_hash = log.as_ref().map_or([0u8; 32], |l| l.state().head);
        let body = ChangeBody {
            group,
            epoch,
            previous_hash,
            author: party.address(),
            name: name.map(str::to_owned),
            add: add.clone(),
            remove: remove.clone(),
            issued_at,
        };
        let change = SignedChange::sign(body, &party.identity);
        change.verify(&party.public())?;
        ensure(
            SignedChange::parse(&change.signed)? == change,
            "a signed change parses back",
        )?;
        let (added, removed) = match log.as_mut() {
            None => {
                let created = GroupLog::create(change.clone())?;
                // Every account of the creation joins, in the order listed.
                let added: Vec<AccountId> = add.iter().map(|(acct, _)| *acct).collect();
                ensure(
                    created.state().members.len() == added.len(),
                    "the creation lists distinct accounts",
                )?;
                log = Some(created);
                (added, Vec::new())
            }
            Some(l) => match l.offer(change.clone())? {
                Offered::Applied(diffs) => match diffs.as_slice() {
                    [diff] => (diff.added.clone(), diff.removed.clone()),
                    _ => return Err("one change, one diff".into()),
                },
                _ => return Err("the change is applied".into()),
            },
        };
        let state = log.as_ref().ok_or("log")?.state();
        ensure(
            state.epoch == epoch && state.head == change.hash,
            "the head is the new change",
        )?;
        let signed = wire::SignedGroupChange::decode(change.signed.as_slice())?;
        changes.push(GroupChangeRecord {
            epoch,
            author: author.to_owned(),
            author_account: hx(party.account.id().as_bytes()),
            author_device_id: party.device_id,
            name: name.map(str::to_owned),
            add: add
                .iter()
                .map(|(acct, admin)| GroupMemberRecord {
                    account: hx(acct.as_bytes()),
                    admin: *admin,
                })
                .collect(),
            remove: remove.iter().map(|acct| hx(acct.as_bytes())).collect(),
            issued_at,
            previous_hash: hx(previous_hash),
            change: hx(&signed.change),
            signature: hx(&signed.signature),
            signed_group_change: hx(&change.signed),
            hash: hx(change.hash),
            added: added.iter().map(|acct| hx(acct.as_bytes())).collect(),
            removed: removed.iter().map(|acct| hx(acct.as_bytes())).collect(),
            members_after: member_records(&state.members),
            name_after: state.name.clone(),
        });
    }
    let log = log.ok_or("no log")?;
    ensure(
        GroupLog::restore(log.log().to_vec(), Vec::new())?.state() == log.state(),
        "the log restores to the same state",
    )?;

    Ok(MembershipVector {
        name: "create-add-remove-leave".to_owned(),
        description: "Alice creates the group with Bob and Carol (epoch 1); adds Dave and makes Bob an admin (2); \
                      Bob removes Carol (3); Dave, not an admin, leaves (4)."
            .to_owned(),
        seed: hx(seed),
        group_id: hx(group.0),
        participants: [
            (ALICE, &alice),
            (BOB, &bob),
            (CAROL, &carol),
            (DAVE, &dave),
        ]
        .into_iter()
        .map(|(name, p)| ParticipantRecord {
            name: name.to_owned(),
            device: p.record(),
        })
        .collect(),
        changes,
    })
}
