//! `sender_keys.json`: one sender key's chain, its group messages and their out-of-order delivery
//! to two member devices; and a group's membership log as the relay holds it. [`Addressed`],
//! [`draw_group_id`] and [`draw_sender_key`] also draw the groups of the sender-key cases of
//! `negative.json`.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey};
use hush_core::consts::{
    GROUP_ID_LABEL, GROUP_LOG_ENTRY_LABEL, GROUP_LOG_ENTRY_VERSION, GROUP_LOG_KEY_INFO,
    GROUP_LOG_SLOT_INFO, GROUP_LOG_WRITE_INFO, GROUP_SECRET_SALT, KEY_LEN, SENDER_KEY_MESSAGE_INFO,
};
use hush_core::device_list::VerifiedDeviceList;
use hush_core::group::{ChangeBody, GroupLog, GroupSecret, Processed, SignedChange};
use hush_core::keys::{AccountId, AccountKeyPair, DeviceAddress};
use hush_core::sender_key::{GroupId, GroupMessage, SenderKeyState, sender_chain_step};
use hush_proto::{Message, labels, wire};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::device_lists::{signed_list, version_record};
use super::{
    ALICE, ALICE_DEVICE_ID, BOB, BOB_DEVICE_ID, DAY_MS, DeviceKeysRecord, DeviceListVersionRecord,
    DeviceSecrets, FORMAT_VERSION, GenResult, NOW_MS, Party, count, draw, ed25519_public, ensure,
    error_name, get, hx, seed,
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
    /// The sender's group log position when it sent: the last log entry it had processed.
    pub log_seq: u64,
    /// The head at `log_seq`: the hash of the last valid change at or before it (32 bytes).
    pub log_head: String,
    /// The 120 header bytes: version u32 BE ‖ group id (32) ‖ sender account (32) ‖ sender
    /// device u32 BE ‖ key id u32 BE ‖ iteration u32 BE ‖ log_seq u64 BE ‖ log_head (32). The
    /// AEAD's associated data.
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

/// A named device taking part in a group log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantRecord {
    /// `"alice"`, `"alice-2"` (Alice's second device), `"bob"`, `"carol"` or `"dave"`.
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

/// The highest device-list version an account showed in the log's valid changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListVersionRecord {
    /// Account key (32 bytes).
    pub account: String,
    /// The version.
    pub version: u64,
}

/// One signed membership change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupChangeRecord {
    /// The log position it was written for (`GroupChange.epoch`; 1 = creation).
    pub epoch: u64,
    /// The group id field: empty for the creation (its id is derived from it), else 32 bytes.
    pub group_id: String,
    /// The author's account key (32 bytes).
    pub author_account: String,
    /// The author's device id.
    pub author_device_id: u32,
    /// The author account's signed device list carried in the change (`author_device_list`),
    /// with the devices it lists and their secrets.
    pub author_device_list: DeviceListVersionRecord,
    /// The creation's `log_slot` (32 bytes); empty for every other change.
    pub log_slot: String,
    /// The new group name (creation, rename), or null.
    pub name: Option<String>,
    /// Members added, or whose admin flag changes.
    pub add: Vec<GroupMemberRecord>,
    /// Account keys removed (32 bytes each).
    pub remove: Vec<String>,
    /// Issue time (ms).
    pub issued_at: u64,
    /// The hash of the last valid change the author saw (32 zero bytes for the creation).
    pub previous_hash: String,
    /// The encoded `GroupChange`: the bytes that are signed.
    pub change: String,
    /// Ed25519 signature (64 bytes) by the author device's identity signing key over
    /// `"Hush-GroupChange-v1" ‖ change`.
    pub signature: String,
    /// The encoded `SignedGroupChange` `{change, signature}`: the plaintext of the log entry.
    pub signed_group_change: String,
    /// SHA-256 of `change` (32 bytes).
    pub hash: String,
}

/// One entry of a group's log on the relay, and what every member makes of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupLogEntryRecord {
    /// Its position in the log (1, 2, 3, …), as the relay numbers it.
    pub seq: u64,
    /// What the entry is.
    pub description: String,
    /// Name of the participant that signed the change inside.
    pub author: String,
    /// The signed change sealed in the entry.
    pub change: GroupChangeRecord,
    /// The position the entry was sealed for (the `u64be` in its associated data); equal to
    /// `seq` unless the entry was copied to another position.
    pub sealed_for: u64,
    /// The ChaCha20-Poly1305 nonce (12 bytes, drawn from the RNG).
    pub nonce: String,
    /// The associated data: `"Hush-GroupLogEntry-v1" ‖ slot ‖ u64be(sealed_for)`.
    pub associated_data: String,
    /// The entry: `0x01 ‖ nonce ‖ ChaCha20-Poly1305(entry_key, nonce, associated_data,
    /// signed_group_change)`.
    pub entry: String,
    /// `"applied"` or `"skipped"` (by every member alike).
    pub outcome: String,
    /// For a skipped entry, the error it is skipped with (as `negative.json` names errors);
    /// null when applied.
    pub skip_error: Option<String>,
    /// Accounts that joined with this entry, in `add` order (32 bytes each).
    pub added: Vec<String>,
    /// Accounts that left with this entry, in `remove` order.
    pub removed: Vec<String>,
    /// The position of the last valid change afterwards.
    pub epoch_after: u64,
    /// The hash of the last valid change afterwards (the head).
    pub head_after: String,
    /// The members afterwards, by ascending account key.
    pub members_after: Vec<GroupMemberRecord>,
    /// The group name afterwards.
    pub name_after: String,
    /// The highest list version of each author account afterwards, by ascending account key.
    pub list_versions_after: Vec<ListVersionRecord>,
}

/// A group's log: the group secret and what derives from it, and the sealed entries in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupLogVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// The group secret (32 bytes, drawn from the RNG).
    pub group_secret: String,
    /// The relay slot: HKDF-SHA256(salt = "Hush-GroupSecret-v1", ikm = secret,
    /// info = "Hush_GroupLog_Slot_v1", L = 32).
    pub slot: String,
    /// The write token: the same with info = "Hush_GroupLog_Write_v1".
    pub write_token: String,
    /// What the relay keeps to check appends: SHA-256("Hush-GroupLog-Write" ‖ write_token).
    pub write_check: String,
    /// The entry key: the same HKDF with info = "Hush_GroupLog_Key_v1".
    pub entry_key: String,
    /// The group id: SHA-256("Hush-GroupId-v1" ‖ the creation's `change` bytes).
    pub group_id: String,
    /// The devices that sign changes or are members.
    pub participants: Vec<ParticipantRecord>,
    /// The log's entries, position 1 first.
    pub entries: Vec<GroupLogEntryRecord>,
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
    /// Group membership logs.
    pub group_logs: Vec<GroupLogVector>,
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

/// Alice's group log position while she sends messages 0..[`LOG_MOVES_AT`]; from then on she has
/// read one more valid change.
const FIRST_LOG_SEQ: u64 = 2;

/// The first message sent after Alice's log position moved on.
const LOG_MOVES_AT: u32 = 10;

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
                      signed group messages (each naming the sender's group log position), their distribution to \
                      two member devices and out-of-order delivery; and a group's membership log on the relay: the \
                      group secret and what derives from it, each sealed entry, the signed change inside with its \
                      author's device list, and the membership after it, entries every member skips included."
            .to_owned(),
        vectors: vec![sender_key_vector()?],
        group_logs: vec![group_log_vector()?],
    })
}

/// Draws Alice's, Bob's and Carol's account secrets, the group id, Alice's sender key (signing
/// secret, chain key), then the two log heads Alice's messages name (at positions 2 and 3):
/// 8 × 32 bytes.
fn sender_key_vector() -> GenResult<SenderKeyVector> {
    let seed = seed("sender_keys", 0)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let alice = Addressed::draw(&mut rng, ALICE_DEVICE_ID);
    let bob = Addressed::draw(&mut rng, BOB_DEVICE_ID);
    let carol = Addressed::draw(&mut rng, CAROL_DEVICE_ID);
    let group = draw_group_id(&mut rng)?;
    let (mut own, signing_secret, initial_chain_key) = draw_sender_key(&mut rng)?;
    let heads: [[u8; 32]; 2] = [draw(&mut rng), draw(&mut rng)];

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
        let log = if i < LOG_MOVES_AT {
            (FIRST_LOG_SEQ, heads[0])
        } else {
            (FIRST_LOG_SEQ + 1, heads[1])
        };
        let m = own.encrypt(group, alice.address(), log, &plaintext)?;
        ensure(
            m.header.iteration == i
                && m.header.key_id == SENDER_KEY_ID
                && (m.header.log_seq, m.header.log_head) == log,
            "header names the key, the iteration and the log position",
        )?;
        let header = m.header.to_bytes();
        ensure(header.len() == 120, "the header is 120 bytes")?;
        ensure(
            header.get(80..88) == Some(&log.0.to_be_bytes()[..])
                && header.get(88..) == Some(&log.1[..]),
            "the header ends with u64be(log_seq) || log_head",
        )?;
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
            log_seq: log.0,
            log_head: hx(log.1),
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
             the messages out of order, with forward jumps and late use of skipped keys. Messages 0 to {} name \
             Alice's group log position {FIRST_LOG_SEQ}, the later ones position {} (she read one more change \
             in between); the log heads are drawn from the RNG after the sender key.",
            GROUP_MESSAGES - 1,
            CAROL_FROM - 1,
            LOG_MOVES_AT - 1,
            FIRST_LOG_SEQ + 1
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

fn list_version_records(versions: &BTreeMap<AccountId, u64>) -> Vec<ListVersionRecord> {
    versions
        .iter()
        .map(|(a, version)| ListVersionRecord {
            account: hx(a.as_bytes()),
            version: *version,
        })
        .collect()
}

/// Alice's second device (on her device list from version 2).
pub const ALICE_SECOND_DEVICE_ID: u32 = 5;

/// Name of Alice's second device in the group log vector.
const ALICE_2: &str = "alice-2";

/// An author account's signed device list and the devices on it.
struct AuthorList<'a> {
    list: VerifiedDeviceList,
    devices: Vec<(u32, &'a DeviceSecrets, u64)>,
}

impl<'a> AuthorList<'a> {
    fn new(
        party: &Party,
        version: u64,
        issued_at: u64,
        devices: Vec<(u32, &'a DeviceSecrets, u64)>,
    ) -> GenResult<Self> {
        Ok(Self {
            list: signed_list(&party.account, version, issued_at, &devices)?,
            devices,
        })
    }

    /// Version 1, issued a day before [`NOW_MS`], listing only `party`'s device.
    fn only(party: &'a Party) -> GenResult<Self> {
        Self::new(
            party,
            1,
            NOW_MS - DAY_MS,
            vec![(party.device_id, &party.secrets, NOW_MS - DAY_MS)],
        )
    }
}

/// One entry of the group log vector.
enum LogStep<'a> {
    /// A change signed by `party` for position `epoch` on the log's head, sealed for the entry's
    /// own position. `skip` is the error every member skips it with, if any.
    Change {
        author: &'a str,
        party: &'a Party,
        list: &'a AuthorList<'a>,
        epoch: u64,
        name: Option<&'a str>,
        add: Vec<(AccountId, bool)>,
        remove: Vec<AccountId>,
        skip: Option<&'a str>,
        description: &'a str,
    },
    /// The bytes of the entry at position `of`, appended again.
    Copy {
        of: u64,
        skip: &'a str,
        description: &'a str,
    },
}

/// The HKDF-SHA256 output (32 bytes) of a group secret for `info`, salt "Hush-GroupSecret-v1".
fn group_secret_derive(secret: &[u8], info: &[u8]) -> GenResult<[u8; 32]> {
    let mut out = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(GROUP_SECRET_SALT), secret)
        .expand(info, &mut out)
        .map_err(|_| "HKDF expansion")?;
    Ok(out)
}

/// Draws Alice's, Bob's, Carol's and Dave's account, signing and DH secrets (4 × 3 × 32 bytes),
/// the signing and DH secrets of Alice's second device (2 × 32), the group secret (32), then one
/// 12-byte nonce per sealed entry, in log order (the copied entry draws none).
fn group_log_vector() -> GenResult<GroupLogVector> {
    let seed = seed("sender_keys", 1)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let alice = Party::draw(&mut rng, ALICE_DEVICE_ID);
    let bob = Party::draw(&mut rng, BOB_DEVICE_ID);
    let carol = Party::draw(&mut rng, CAROL_DEVICE_ID);
    let dave = Party::draw(&mut rng, DAVE_DEVICE_ID);
    let alice_2 = DeviceSecrets::draw(&mut rng);
    let secret_bytes: [u8; 32] = draw(&mut rng.clone());
    let secret = GroupSecret::random(&mut rng);
    ensure(
        *secret.to_bytes() == secret_bytes,
        "the group secret is the next 32 bytes",
    )?;
    let (a, b, c, d) = (
        alice.account.id(),
        bob.account.id(),
        carol.account.id(),
        dave.account.id(),
    );

    // Alice's list: version 1 with her first device, version 2 once she linked a second one.
    let alice_since = NOW_MS - 30 * DAY_MS;
    let linked = NOW_MS - 2 * DAY_MS;
    let alice_v1 = AuthorList::new(
        &alice,
        1,
        alice_since,
        vec![(ALICE_DEVICE_ID, &alice.secrets, alice_since)],
    )?;
    let alice_v2 = AuthorList::new(
        &alice,
        2,
        linked,
        vec![
            (ALICE_DEVICE_ID, &alice.secrets, alice_since),
            (ALICE_SECOND_DEVICE_ID, &alice_2, linked),
        ],
    )?;
    ensure(
        alice_v2.list.check_successor(Some(&alice_v1.list))?,
        "Alice's version 2 succeeds version 1",
    )?;
    let (bob_v1, carol_v1, dave_v1) = (
        AuthorList::only(&bob)?,
        AuthorList::only(&carol)?,
        AuthorList::only(&dave)?,
    );

    let renamed = "Hush vector group, renamed";
    let steps = [
        LogStep::Change {
            author: ALICE,
            party: &alice,
            list: &alice_v1,
            epoch: 1,
            name: Some(GROUP_NAME),
            add: vec![(a, true), (b, false), (c, false)],
            remove: vec![],
            skip: None,
            description: "Alice creates the group with Bob and Carol, naming the slot; her device list is \
                          version 1.",
        },
        LogStep::Change {
            author: ALICE,
            party: &alice,
            list: &alice_v2,
            epoch: 2,
            name: None,
            add: vec![(d, false), (b, true)],
            remove: vec![],
            skip: None,
            description: "Alice adds Dave and makes Bob an admin; she has linked a second device since, and \
                          her change carries her list version 2.",
        },
        LogStep::Change {
            author: BOB,
            party: &bob,
            list: &bob_v1,
            epoch: 3,
            name: Some(renamed),
            add: vec![],
            remove: vec![c],
            skip: None,
            description: "Bob, now an admin, removes Carol and renames the group.",
        },
        LogStep::Change {
            author: CAROL,
            party: &carol,
            list: &carol_v1,
            epoch: 4,
            name: None,
            add: vec![(c, false)],
            remove: vec![],
            skip: Some("Protocol(NotPermitted)"),
            description: "Carol, removed but still holding the group secret, appends a change adding herself \
                          back, correctly built on the head: she is neither an admin nor a member, so every \
                          member skips it.",
        },
        LogStep::Change {
            author: ALICE,
            party: &alice,
            list: &alice_v1,
            epoch: 5,
            name: Some("Hush vector group, renamed again"),
            add: vec![],
            remove: vec![],
            skip: Some("Protocol(DeviceListRollback)"),
            description: "Alice renames the group with a change carrying her list version 1, although the log \
                          already showed her version 2: a list version never goes back, so it is skipped.",
        },
        LogStep::Change {
            author: BOB,
            party: &bob,
            list: &bob_v1,
            epoch: 5,
            name: None,
            add: vec![(c, false)],
            remove: vec![],
            skip: Some("Protocol(Misuse)"),
            description: "Bob adds Carol back with a change signed for position 5 on the current head, but it \
                          is appended at position 6: it names another position, so it is skipped.",
        },
        LogStep::Copy {
            of: 6,
            skip: "Auth(DecryptFailed)",
            description: "The bytes of entry 6 appended again at position 7: the entry is sealed for position \
                          6, so it does not open here.",
        },
        LogStep::Change {
            author: DAVE,
            party: &dave,
            list: &dave_v1,
            epoch: 8,
            name: None,
            add: vec![],
            remove: vec![],
            skip: None,
            description: "Dave (not an admin) appends a refresh: no name, no adds, no removals; it only brings \
                          his account's device list into the log.",
        },
        LogStep::Change {
            author: DAVE,
            party: &dave,
            list: &dave_v1,
            epoch: 9,
            name: None,
            add: vec![],
            remove: vec![d],
            skip: None,
            description: "Dave (not an admin) leaves.",
        },
    ];

    let slot = secret.slot();
    let write_token = *secret.write_token();
    let entry_key = group_secret_derive(&secret_bytes, GROUP_LOG_KEY_INFO)?;
    ensure(
        slot == group_secret_derive(&secret_bytes, GROUP_LOG_SLOT_INFO)?
            && write_token == group_secret_derive(&secret_bytes, GROUP_LOG_WRITE_INFO)?,
        "slot and write token are HKDF outputs of the secret",
    )?;
    let write_check: [u8; 32] = Sha256::new()
        .chain_update(b"Hush-GroupLog-Write")
        .chain_update(write_token)
        .finalize()
        .into();

    let mut log: Option<GroupLog> = None;
    let mut sealed: Vec<(SignedChange, u64, [u8; 12], Vec<u8>)> = Vec::new();
    let mut entries = Vec::new();
    let mut group_id = None;
    for (seq, step) in (1u64..).zip(&steps) {
        let (author, list, change, sealed_for, nonce, entry, skip, description) = match step {
            LogStep::Change {
                author,
                party,
                list,
                epoch,
                name,
                add,
                remove,
                skip,
                description,
            } => {
                let body = ChangeBody {
                    group: log.as_ref().map_or(GroupId([0; 32]), |l| l.state().id),
                    epoch: *epoch,
                    previous_hash: log.as_ref().map_or([0; 32], |l| l.state().head),
                    author: party.address(),
                    name: name.map(str::to_owned),
                    add: add.clone(),
                    remove: remove.clone(),
                    issued_at: NOW_MS - (10 - seq) * HOUR_MS,
                    author_list: list.list.signed_bytes().to_vec(),
                    slot: (*epoch == 1).then_some(slot),
                };
                let change = SignedChange::sign(body, &party.identity);
                ensure(
                    SignedChange::parse(&change.signed)? == change,
                    "a signed change parses back",
                )?;
                let nonce: [u8; 12] = draw(&mut rng.clone());
                let entry = secret.seal_entry(seq, &change.signed, &mut rng)?;
                ensure(
                    entry.get(1..13) == Some(&nonce[..]),
                    "the entry's nonce is the next 12 bytes",
                )?;
                (
                    *author,
                    *list,
                    change,
                    seq,
                    nonce,
                    entry,
                    *skip,
                    *description,
                )
            }
            LogStep::Copy {
                of,
                skip,
                description,
            } => {
                let (change, sealed_for, nonce, entry) = get(&sealed, usize::try_from(*of - 1)?)?;
                let (author, list) = match get(&steps, usize::try_from(*of - 1)?)? {
                    LogStep::Change { author, list, .. } => (*author, *list),
                    LogStep::Copy { .. } => return Err("a copy of a copy".into()),
                };
                (
                    author,
                    list,
                    change.clone(),
                    *sealed_for,
                    *nonce,
                    entry.clone(),
                    Some(*skip),
                    *description,
                )
            }
        };
        let ad = [GROUP_LOG_ENTRY_LABEL, &slot[..], &sealed_for.to_be_bytes()].concat();
        ensure(
            entry.first() == Some(&GROUP_LOG_ENTRY_VERSION)
                && sender_open(&entry_key, &nonce, &ad, entry.get(13..).unwrap_or_default())?
                    == change.signed,
            "the entry opens with the derived key under its associated data",
        )?;

        let before = log.as_ref().map(|l| l.state().clone());
        let (added, removed, skip_error) = match log.as_mut() {
            None => {
                let id = change.body.group;
                let w = wire::SignedGroupChange::decode(change.signed.as_slice())?;
                let by_hand: [u8; 32] = Sha256::new()
                    .chain_update(GROUP_ID_LABEL)
                    .chain_update(&w.change)
                    .finalize()
                    .into();
                ensure(id.0 == by_hand, "the group id is the hash of the creation")?;
                log = Some(GroupLog::create(id, secret.clone(), &entry)?);
                group_id = Some(id);
                let added: Vec<AccountId> = change.body.add.iter().map(|(x, _)| *x).collect();
                (added, Vec::new(), None)
            }
            Some(l) => match l.process(seq, &entry)? {
                Processed::Applied { diff, .. } => (diff.added, diff.removed, None),
                Processed::Skipped(e) => (Vec::new(), Vec::new(), Some(error_name(&e))),
            },
        };
        ensure(
            skip_error.as_deref() == skip,
            &format!("entry {seq}: {skip:?}, got {skip_error:?}"),
        )?;
        let state = log.as_ref().ok_or("log")?.state();
        if skip.is_some() {
            ensure(
                before.as_ref() == Some(state),
                "a skipped entry changes nothing",
            )?;
        } else {
            ensure(
                state.epoch == seq && state.head == change.hash,
                "the head is the new change",
            )?;
        }
        let w = wire::SignedGroupChange::decode(change.signed.as_slice())?;
        entries.push(GroupLogEntryRecord {
            seq,
            description: description.to_owned(),
            author: author.to_owned(),
            change: GroupChangeRecord {
                epoch: change.body.epoch,
                group_id: if change.body.epoch == 1 {
                    String::new()
                } else {
                    hx(change.body.group.0)
                },
                author_account: hx(change.body.author.account.as_bytes()),
                author_device_id: change.body.author.device_id,
                author_device_list: version_record(&list.list, &list.devices)?,
                log_slot: change.body.slot.map(hx).unwrap_or_default(),
                name: change.body.name.clone(),
                add: change
                    .body
                    .add
                    .iter()
                    .map(|(acct, admin)| GroupMemberRecord {
                        account: hx(acct.as_bytes()),
                        admin: *admin,
                    })
                    .collect(),
                remove: change
                    .body
                    .remove
                    .iter()
                    .map(|acct| hx(acct.as_bytes()))
                    .collect(),
                issued_at: change.body.issued_at,
                previous_hash: hx(change.body.previous_hash),
                change: hx(&w.change),
                signature: hx(&w.signature),
                signed_group_change: hx(&change.signed),
                hash: hx(change.hash),
            },
            sealed_for,
            nonce: hx(nonce),
            associated_data: hx(&ad),
            entry: hx(&entry),
            outcome: if skip.is_some() { "skipped" } else { "applied" }.to_owned(),
            skip_error,
            added: added.iter().map(|x| hx(x.as_bytes())).collect(),
            removed: removed.iter().map(|x| hx(x.as_bytes())).collect(),
            epoch_after: state.epoch,
            head_after: hx(state.head),
            members_after: member_records(&state.members),
            name_after: state.name.clone(),
            list_versions_after: list_version_records(&state.list_versions),
        });
        sealed.push((change, sealed_for, nonce, entry));
    }
    let log = log.ok_or("no log")?;
    let group = group_id.ok_or("no creation")?;
    ensure(
        GroupLog::restore(group, secret.clone(), log.entries().to_vec(), log.seq())?.state()
            == log.state(),
        "the log restores to the same state",
    )?;
    ensure(
        log.state().list_versions.get(&a) == Some(&2),
        "Alice's list version 2 is in the log",
    )?;

    let alice_2_record = DeviceKeysRecord {
        device_id: ALICE_SECOND_DEVICE_ID,
        identity_signing_secret: hx(alice_2.signing),
        identity_signing_public: hx(alice_2.public().signing_key()),
        identity_dh_secret: hx(alice_2.dh),
        identity_dh_public: hx(alice_2.public().dh_key()),
        ..alice.record()
    };
    let mut participants: Vec<ParticipantRecord> =
        [(ALICE, &alice), (BOB, &bob), (CAROL, &carol), (DAVE, &dave)]
            .into_iter()
            .map(|(name, p)| ParticipantRecord {
                name: name.to_owned(),
                device: p.record(),
            })
            .collect();
    participants.insert(
        1,
        ParticipantRecord {
            name: ALICE_2.to_owned(),
            device: alice_2_record,
        },
    );

    Ok(GroupLogVector {
        name: "create-add-remove-skip-refresh-leave".to_owned(),
        description: format!(
            "The log of a group on the relay: {} entries, of which 4 are skipped by every member (a removed \
             member's change, a change carrying an older device list of its author's account, a change \
             signed for another position, an entry copied to another position). Each applied change moves \
             the head; a skipped one changes nothing.",
            steps.len()
        ),
        seed: hx(seed),
        group_secret: hx(secret_bytes),
        slot: hx(slot),
        write_token: hx(write_token),
        write_check: hx(write_check),
        entry_key: hx(entry_key),
        group_id: hx(group.0),
        participants,
        entries,
    })
}
