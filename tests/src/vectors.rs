//! Published protocol test vectors (`tests/vectors/*.json`): their JSON schema (the types below)
//! and the deterministic generator behind them.
//!
//! Every vector is generated from a recorded 32-byte seed: all randomness comes from
//! `ChaCha20Rng::from_seed(seed)`, drawn with `fill_bytes` in the order documented in
//! `tests/vectors/README.md` (and next to each `draw` call below). Every private key and random
//! input is recorded (lowercase hex) next to what was derived from it, so a reviewer can check each
//! vector from the recorded values alone, without the seed or this code. Times are fixed constants
//! recorded in the vectors. The JSON is deterministic: structs only (fixed field order), no maps.
//!
//! Regenerate with `cargo run -p hush-tests --bin hush-vectors -- tests/vectors`. The test
//! `vectors_regenerate_byte_identical` (tests/tests/vectors.rs) fails when the committed files
//! differ from what [`generate_all`] produces; `vectors_verify_like_a_reviewer` checks every vector
//! from its recorded inputs.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use hush_core::consts::{
    KEM_CIPHERTEXT_LEN, KEM_SEED_LEN, KEY_LEN, MAX_DEVICES_PER_ACCOUNT, MAX_SENDER_KEY_JUMP,
    MAX_SKIP, SENDER_KEY_MESSAGE_INFO,
};
use hush_core::device::{Device, GroupIncoming, GroupSend, Outgoing};
use hush_core::device_list::{DeviceEntry, DeviceList, VerifiedDeviceList};
use hush_core::error::Error;
use hush_core::group::{ChangeBody, GroupLog, Offered, SignedChange};
use hush_core::keys::{
    AccountId, AccountKeyPair, DeviceAddress, DeviceIdentity, DeviceIdentityKeyPair,
};
use hush_core::pqxdh::{self, InitialMessage, Initiated, InitiatorSecrets};
use hush_core::prekeys::{KemPreKeyPair, OneTimePreKeyPair, PreKeyBundle, SignedPreKeyPair};
use hush_core::ratchet::{self, Header, RatchetMessage, SessionState};
use hush_core::safety::{self, SafetyNumber};
use hush_core::sender_key::{GroupId, GroupMessage, SenderKeyState, sender_chain_step};
use hush_core::store::kv::{Batch, KvStore, Namespace};
use hush_core::store::memory::MemoryKv;
use hush_proto::{Message, labels, wire};
use ml_kem::{Decapsulate, DecapsulationKey768};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::sim::{Population, Store};

/// Error of the generator (a failed self-check or a library error).
pub type BoxError = Box<dyn StdError>;

/// Result of the generator.
pub type GenResult<T> = Result<T, BoxError>;

/// Version of the vector format (the JSON schema in `tests/vectors/README.md`).
pub const FORMAT_VERSION: u32 = 1;

/// The fixed "current time" of every vector, ms since the Unix epoch (2026-01-01T00:00:00Z).
pub const NOW_MS: u64 = 1_767_225_600_000;

/// One day in ms: pre-keys and device lists are dated one day before [`NOW_MS`].
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Alice's device id (the initiator).
pub const ALICE_DEVICE_ID: u32 = 1;
/// Bob's device id (the responder).
pub const BOB_DEVICE_ID: u32 = 2;
/// Id of Bob's signed pre-key.
pub const SIGNED_PRE_KEY_ID: u32 = 1;
/// Id of Bob's one-time X25519 pre-key.
pub const ONE_TIME_PRE_KEY_ID: u32 = 2;
/// Id of Bob's one-time ML-KEM pre-key.
pub const KEM_PRE_KEY_ID: u32 = 3;
/// Id of Bob's last-resort ML-KEM pre-key.
pub const LAST_RESORT_KEM_PRE_KEY_ID: u32 = 4;

/// A canonical X25519 point of order 8 (one of the five small-order encodings every Hush peer
/// must reject).
pub const LOW_ORDER_X25519: [u8; KEY_LEN] = [
    0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
    0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00,
];

/// File names, in the order [`generate_all`] returns them.
pub const FILES: [&str; 6] = [
    "pqxdh.json",
    "double_ratchet.json",
    "device_lists.json",
    "safety_numbers.json",
    "sender_keys.json",
    "negative.json",
];

/// Sender name of the initiator in the vectors.
pub const ALICE: &str = "alice";
/// Sender name of the responder in the vectors.
pub const BOB: &str = "bob";

// ---------------------------------------------------------------------------------------------
// Schema: shared records
// ---------------------------------------------------------------------------------------------

/// One device: its account key and identity keys (secrets and publics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceKeysRecord {
    /// Device id within the account.
    pub device_id: u32,
    /// Ed25519 account identity secret (32 bytes).
    pub account_secret: String,
    /// Ed25519 account identity public key (32 bytes).
    pub account_public: String,
    /// Ed25519 device signing secret (32 bytes).
    pub identity_signing_secret: String,
    /// Ed25519 device signing public key (32 bytes).
    pub identity_signing_public: String,
    /// X25519 device identity secret (32 bytes, unclamped as drawn).
    pub identity_dh_secret: String,
    /// X25519 device identity public key (32 bytes).
    pub identity_dh_public: String,
}

/// A signed X25519 pre-key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPreKeyRecord {
    /// Key id.
    pub id: u32,
    /// X25519 secret (32 bytes).
    pub secret: String,
    /// X25519 public key (32 bytes).
    pub public: String,
    /// Ed25519 signature (64 bytes) by the device signing key over
    /// `"Hush-SignedPreKey-v1" || id (u32 BE) || public`.
    pub signature: String,
}

/// A one-time X25519 pre-key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneTimePreKeyRecord {
    /// Key id.
    pub id: u32,
    /// X25519 secret (32 bytes).
    pub secret: String,
    /// X25519 public key (32 bytes).
    pub public: String,
}

/// A signed ML-KEM-768 pre-key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KemPreKeyRecord {
    /// Key id.
    pub id: u32,
    /// FIPS 203 seed `d || z` (64 bytes).
    pub seed: String,
    /// Encapsulation key (1184 bytes).
    pub public: String,
    /// Ed25519 signature (64 bytes) by the device signing key over
    /// `"Hush-KemPreKey-v1" || id (u32 BE) || last_resort (1 byte) || public`.
    pub signature: String,
    /// Whether this is the last-resort key.
    pub last_resort: bool,
}

/// Everything that goes into one PQXDH run (Alice initiates to Bob).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PqxdhInputs {
    /// The initiator's device.
    pub alice: DeviceKeysRecord,
    /// The responder's device.
    pub bob: DeviceKeysRecord,
    /// Bob's account device list (encoded `SignedDeviceList`, version 1, listing Bob's device).
    pub bob_device_list: String,
    /// Bob's signed pre-key.
    pub signed_pre_key: SignedPreKeyRecord,
    /// Bob's one-time pre-key, or null.
    pub one_time_pre_key: Option<OneTimePreKeyRecord>,
    /// Bob's ML-KEM pre-key (one-time or last-resort).
    pub kem_pre_key: KemPreKeyRecord,
    /// The pre-key bundle Alice receives (encoded `PreKeyBundle`).
    pub bundle: String,
    /// Alice's base key EK_A, secret (32 bytes).
    pub base_key_secret: String,
    /// EK_A public (32 bytes).
    pub base_key_public: String,
    /// Alice's first ratchet key, secret (32 bytes).
    pub ratchet_key_secret: String,
    /// Alice's first ratchet key, public (32 bytes).
    pub ratchet_key_public: String,
    /// ML-KEM encapsulation randomness `m` (32 bytes).
    pub kem_encapsulation_randomness: String,
}

/// One encrypted ratchet message, with what was derived for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstMessageRecord {
    /// Plaintext.
    pub plaintext: String,
    /// Header: sender's ratchet public key (32 bytes).
    pub ratchet_key: String,
    /// Header: N.
    pub counter: u32,
    /// Header: PN.
    pub previous_counter: u32,
    /// Message key (32 bytes).
    pub message_key: String,
    /// Associated data (244 bytes).
    pub ad: String,
    /// ChaCha20-Poly1305 ciphertext with tag.
    pub ciphertext: String,
}

/// What a PQXDH run produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PqxdhOutputs {
    /// DH(IK_A, SPK_B) (32 bytes).
    pub dh1: String,
    /// DH(EK_A, IK_B) (32 bytes).
    pub dh2: String,
    /// DH(EK_A, SPK_B) (32 bytes).
    pub dh3: String,
    /// DH(EK_A, OPK_B) (32 bytes), or null without a one-time pre-key.
    pub dh4: Option<String>,
    /// ML-KEM-768 ciphertext (1088 bytes).
    pub kem_ciphertext: String,
    /// ML-KEM-768 shared secret (32 bytes).
    pub kem_shared_secret: String,
    /// SK as computed by the initiator (32 bytes).
    pub shared_secret: String,
    /// SK as computed by the responder (32 bytes, equal to `shared_secret`).
    pub responder_shared_secret: String,
    /// Alice's root key after initialisation (32 bytes).
    pub root_key: String,
    /// Alice's first sending chain key (32 bytes, for N = 0).
    pub sending_chain_key: String,
    /// The first message, inside the initial message.
    pub first_message: FirstMessageRecord,
    /// The encoded `PairwiseMessage` (body `initial`) Alice sends.
    pub initial_message: String,
}

/// One PQXDH vector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PqxdhVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// The time used, ms since the Unix epoch.
    pub now_ms: u64,
    /// Inputs.
    pub inputs: PqxdhInputs,
    /// Outputs.
    pub outputs: PqxdhOutputs,
}

/// `pqxdh.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PqxdhFile {
    /// `"pqxdh"`.
    pub file: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the file holds.
    pub description: String,
    /// The vectors.
    pub vectors: Vec<PqxdhVector>,
}

// ---------------------------------------------------------------------------------------------
// Schema: double ratchet
// ---------------------------------------------------------------------------------------------

/// One sending chain of the conversation (one DH ratchet step on the root chain).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatchetChainRecord {
    /// Position on the root chain (0 = Alice's first chain from PQXDH).
    pub index: u32,
    /// `"alice"` or `"bob"`.
    pub sender: String,
    /// The sender's ratchet secret for this chain (32 bytes).
    pub ratchet_private: String,
    /// Its public key (32 bytes), the header ratchet key of the chain's messages.
    pub ratchet_public: String,
    /// The receiver's ratchet public key it was combined with (32 bytes): the previous chain's
    /// `ratchet_public`, or Bob's signed pre-key for chain 0.
    pub peer_ratchet_public: String,
    /// DH(ratchet_private, peer_ratchet_public) (32 bytes).
    pub dh_output: String,
    /// Root key after this step (32 bytes).
    pub root_key: String,
    /// Chain key for N = 0 (32 bytes).
    pub chain_key: String,
    /// Number of messages sent on this chain.
    pub message_count: u32,
}

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatchetMessageRecord {
    /// Index in send order.
    pub index: u32,
    /// `"alice"` or `"bob"`.
    pub sender: String,
    /// Index of the sending chain in `chains`.
    pub chain: u32,
    /// Plaintext.
    pub plaintext: String,
    /// Header: ratchet key (32 bytes).
    pub ratchet_key: String,
    /// Header: N.
    pub counter: u32,
    /// Header: PN.
    pub previous_counter: u32,
    /// Message key (32 bytes).
    pub message_key: String,
    /// Associated data (244 bytes).
    pub ad: String,
    /// Ciphertext with tag.
    pub ciphertext: String,
    /// The encoded wire `RatchetMessage`.
    pub ratchet_message: String,
    /// Position in delivery order (0-based).
    pub delivery_position: u32,
    /// How the receiver found the key: `"current_chain"`, `"new_ratchet_key"` or `"skipped_key"`.
    pub received_via: String,
    /// Message keys the receiver stored as skipped while decrypting this message.
    pub skipped_keys_stored: u32,
}

/// One step of the conversation script.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatchetEvent {
    /// `"send"` (the sender encrypts it) or `"deliver"` (the receiver decrypts it).
    pub action: String,
    /// Message index.
    pub message: u32,
}

/// The double-ratchet conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatchetVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// The time used for every operation.
    pub now_ms: u64,
    /// The PQXDH run that set up the session.
    pub setup: PqxdhInputs,
    /// SK from that run (32 bytes): the first root key.
    pub shared_secret: String,
    /// The sending chains in root-chain order.
    pub chains: Vec<RatchetChainRecord>,
    /// The messages in send order.
    pub messages: Vec<RatchetMessageRecord>,
    /// Sends and deliveries, in the order they happened.
    pub events: Vec<RatchetEvent>,
}

/// `double_ratchet.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatchetFile {
    /// `"double_ratchet"`.
    pub file: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the file holds.
    pub description: String,
    /// The vectors.
    pub vectors: Vec<RatchetVector>,
}

// ---------------------------------------------------------------------------------------------
// Schema: device lists
// ---------------------------------------------------------------------------------------------

/// One device on a list, with its identity secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListedDeviceRecord {
    /// Device id.
    pub device_id: u32,
    /// Ed25519 signing secret (32 bytes).
    pub identity_signing_secret: String,
    /// Ed25519 signing public key (32 bytes).
    pub identity_signing_public: String,
    /// X25519 secret (32 bytes).
    pub identity_dh_secret: String,
    /// X25519 public key (32 bytes).
    pub identity_dh_public: String,
    /// When it was added (ms).
    pub added_at: u64,
}

/// One signed version of a device list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceListVersionRecord {
    /// Version.
    pub version: u64,
    /// Issue time (ms).
    pub issued_at: u64,
    /// Devices, by ascending id.
    pub devices: Vec<ListedDeviceRecord>,
    /// The encoded `DeviceList` (the signed bytes, after the label).
    pub device_list: String,
    /// Ed25519 signature (64 bytes) by the account key over `"Hush-DeviceList-v1" || device_list`.
    pub signature: String,
    /// The encoded `SignedDeviceList`.
    pub signed_device_list: String,
}

/// An account's device list through successive versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceListVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// Ed25519 account secret (32 bytes).
    pub account_secret: String,
    /// Ed25519 account public key (32 bytes).
    pub account_public: String,
    /// Versions in increasing order; each is a valid successor of the one before.
    pub versions: Vec<DeviceListVersionRecord>,
}

/// `device_lists.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceListFile {
    /// `"device_lists"`.
    pub file: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the file holds.
    pub description: String,
    /// Valid lists.
    pub vectors: Vec<DeviceListVector>,
    /// Lists that must be rejected.
    pub negative_vectors: Vec<NegativeVector>,
}

// ---------------------------------------------------------------------------------------------
// Schema: safety numbers
// ---------------------------------------------------------------------------------------------

/// The safety number of two accounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyNumberVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// Account A secret (32 bytes).
    pub account_a_secret: String,
    /// Account A public key (32 bytes).
    pub account_a_public: String,
    /// Account B secret (32 bytes).
    pub account_b_secret: String,
    /// Account B public key (32 bytes).
    pub account_b_public: String,
    /// fingerprint(A) (30 bytes).
    pub fingerprint_a: String,
    /// fingerprint(B) (30 bytes).
    pub fingerprint_b: String,
    /// The 30 digits of A.
    pub digits_a: String,
    /// The 30 digits of B.
    pub digits_b: String,
    /// The 60-digit safety number (same on both sides).
    pub safety_number: String,
    /// The 60 digits as 12 groups of 5 separated by spaces.
    pub safety_number_display: String,
    /// QR payload shown by A (61 bytes: `01 || fp(A) || fp(B)`).
    pub qr_payload_a: String,
    /// QR payload shown by B (61 bytes: `01 || fp(B) || fp(A)`).
    pub qr_payload_b: String,
}

/// One scan: a device with (local, remote) account keys compares a scanned payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyComparisonVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// The scanning device's own account key (32 bytes).
    pub local_account: String,
    /// The account key it holds for its peer (32 bytes).
    pub remote_account: String,
    /// The scanned payload (any length).
    pub scanned_payload: String,
    /// `"Match"`, `"Mismatch"`, `"Malformed"` or `"UnsupportedVersion"`.
    pub expected: String,
}

/// `safety_numbers.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyFile {
    /// `"safety_numbers"`.
    pub file: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the file holds.
    pub description: String,
    /// Safety numbers of account pairs.
    pub vectors: Vec<SafetyNumberVector>,
    /// Scans and their results.
    pub comparisons: Vec<SafetyComparisonVector>,
}

// ---------------------------------------------------------------------------------------------
// Schema: sender keys and group membership
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

/// One entry of a device's key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreEntryRecord {
    /// The namespace's on-disk byte (`hush_core::store::kv::Namespace::as_byte`).
    pub namespace: u8,
    /// The key.
    pub key: String,
    /// The value (a store protobuf encoding, secrets included).
    pub value: String,
}

// ---------------------------------------------------------------------------------------------
// Schema: negative vectors
// ---------------------------------------------------------------------------------------------

/// The operation of a negative vector and its inputs. Each also carries a control input that the
/// same operation must accept, so the rejection is due to the defect alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
// A schema type, built and read once per vector: variant size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum NegativeInput {
    /// `PreKeyBundle::verify` against the account's device list.
    Bundle {
        /// The account key expected for the device list (32 bytes).
        account: String,
        /// The account's encoded `SignedDeviceList`.
        device_list: String,
        /// The encoded `PreKeyBundle` to reject.
        bundle: String,
        /// An encoded `PreKeyBundle` that verifies.
        control_bundle: String,
    },
    /// Decode a wire `RatchetMessage` and decrypt it with a session.
    RatchetMessage {
        /// The receiver's session (encoded store `SessionState`, secrets included).
        state_before: String,
        /// The encoded wire `RatchetMessage` to reject.
        message: String,
        /// An encoded wire `RatchetMessage` that decrypts after the rejection.
        control_message: String,
        /// Its plaintext.
        control_plaintext: String,
    },
    /// Decode an initial message, run `pqxdh::respond` and decrypt its ratchet message.
    InitialMessage {
        /// The responder's device.
        responder: DeviceKeysRecord,
        /// Its signed pre-key.
        signed_pre_key: SignedPreKeyRecord,
        /// Its one-time pre-key, or null.
        one_time_pre_key: Option<OneTimePreKeyRecord>,
        /// Its ML-KEM pre-key.
        kem_pre_key: KemPreKeyRecord,
        /// Base keys already used with the (last-resort) ML-KEM pre-key (32 bytes each).
        used_base_keys: Vec<String>,
        /// The encoded `PairwiseMessage` (body `initial`) to reject.
        message: String,
        /// An encoded `PairwiseMessage` (body `initial`) that is accepted and decrypts.
        control_message: String,
        /// Its plaintext.
        control_plaintext: String,
    },
    /// `VerifiedDeviceList::verify(signed_device_list, account)`.
    DeviceListVerify {
        /// The expected account key (32 bytes).
        account: String,
        /// The encoded `SignedDeviceList` to reject.
        signed_device_list: String,
        /// An encoded `SignedDeviceList` that verifies for `account`.
        control_signed_device_list: String,
    },
    /// Verify both lists, then `offered.check_successor(Some(&known))`.
    DeviceListSuccessor {
        /// The account key (32 bytes).
        account: String,
        /// The list already accepted (encoded `SignedDeviceList`).
        known_device_list: String,
        /// The list offered next, to reject.
        signed_device_list: String,
        /// A list that is accepted as successor of `known_device_list`.
        control_signed_device_list: String,
    },
    /// Verify the list, then `identity_of(device_id)`.
    DeviceListMember {
        /// The account key (32 bytes).
        account: String,
        /// The encoded `SignedDeviceList`.
        signed_device_list: String,
        /// A device id that is not on the list.
        device_id: u32,
        /// A device id that is on the list.
        control_device_id: u32,
    },
    /// Decode a wire `GroupMessage` and decrypt it with a receiver's copy of the sender key.
    SenderKeyMessage {
        /// The receiver's sender-key state for the sender the message claims (encoded store
        /// `SenderKeyState`, secrets included).
        state_before: String,
        /// The encoded wire `GroupMessage` to reject.
        message: String,
        /// An encoded wire `GroupMessage` that decrypts after the rejection.
        control_message: String,
        /// Its plaintext.
        control_plaintext: String,
    },
    /// Open a device from its key-value store and receive a group message
    /// (`Device::decrypt_group`).
    GroupMessage {
        /// Every entry of the receiving device's store, by namespace then key.
        device_store: Vec<StoreEntryRecord>,
        /// The encoded wire `GroupMessage` to reject.
        message: String,
        /// An encoded wire `GroupMessage` that the device decrypts after the rejection.
        control_message: String,
        /// Its plaintext.
        control_plaintext: String,
    },
}

/// Input that must be rejected with exactly `expected_error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NegativeVector {
    /// Short unique name.
    pub name: String,
    /// What is wrong with the input.
    pub description: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// The time used.
    pub now_ms: u64,
    /// The error variant, as [`error_name`] renders it (e.g. `"Auth(BadSignature)"`).
    pub expected_error: String,
    /// The operation and its inputs.
    pub input: NegativeInput,
}

/// `negative.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NegativeFile {
    /// `"negative"`.
    pub file: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the file holds.
    pub description: String,
    /// The vectors.
    pub vectors: Vec<NegativeVector>,
}

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/// Generates every vector file: `(file name, JSON text)` in the order of [`FILES`].
pub fn generate_all() -> GenResult<Vec<(&'static str, String)>> {
    let [pqxdh, dr, lists, safety, sender_keys, negative] = FILES;
    Ok(vec![
        (pqxdh, to_json(&pqxdh_file()?)?),
        (dr, to_json(&ratchet_file()?)?),
        (lists, to_json(&device_list_file()?)?),
        (safety, to_json(&safety_file()?)?),
        (sender_keys, to_json(&sender_keys_file()?)?),
        (negative, to_json(&negative_file()?)?),
    ])
}

/// Generates every file and writes it into `dir` (created if missing). Returns the paths written.
pub fn write_all(dir: &Path) -> GenResult<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, text) in generate_all()? {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

/// The name of an error variant as recorded in `expected_error`: `"Malformed"`, `"Store"`, or
/// `"Auth(<AuthError variant>)"` / `"Protocol(<ProtocolError variant>)"` without the variant's
/// payload (e.g. `"Protocol(TooFarAhead)"`).
pub fn error_name(e: &Error) -> String {
    fn head(debug: &str) -> &str {
        debug
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or(debug)
    }
    match e {
        Error::Malformed { .. } => "Malformed".to_owned(),
        Error::Auth(a) => {
            let d = format!("{a:?}");
            format!("Auth({})", head(&d))
        }
        Error::Protocol(p) => {
            let d = format!("{p:?}");
            format!("Protocol({})", head(&d))
        }
        Error::Store(_) => "Store".to_owned(),
    }
}

fn to_json<T: Serialize>(value: &T) -> GenResult<String> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn ensure(condition: bool, what: &str) -> GenResult<()> {
    if condition {
        Ok(())
    } else {
        Err(format!("vector self-check failed: {what}").into())
    }
}

/// Checks that `result` is an error named `expected`.
fn check_err<T>(result: Result<T, Error>, expected: &str) -> GenResult<()> {
    match result {
        Ok(_) => Err(format!("expected {expected}, but the operation succeeded").into()),
        Err(e) if error_name(&e) == expected => Ok(()),
        Err(e) => Err(format!("expected {expected}, got {e:?}").into()),
    }
}

/// The seed of vector `index` of `file`: the ASCII bytes of `hush-vectors/<file>/<index>`,
/// zero-padded to 32 bytes. (Any 32 bytes would do; the reviewer check never uses the seed.)
fn seed(file: &str, index: usize) -> GenResult<[u8; 32]> {
    let label = format!("hush-vectors/{file}/{index}");
    ensure(label.len() <= 32, "seed label fits in 32 bytes")?;
    let mut out = [0u8; 32];
    for (dst, src) in out.iter_mut().zip(label.bytes()) {
        *dst = src;
    }
    Ok(out)
}

/// The next `N` bytes of the vector's RNG.
fn draw<const N: usize>(rng: &mut ChaCha20Rng) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill_bytes(&mut out);
    out
}

fn hx(bytes: impl AsRef<[u8]>) -> String {
    hex::encode(bytes)
}

fn x25519_public(secret: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

fn x25519(secret: &[u8; KEY_LEN], public: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    StaticSecret::from(*secret)
        .diffie_hellman(&PublicKey::from(*public))
        .to_bytes()
}

fn ed25519_public(secret: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    SigningKey::from_bytes(secret).verifying_key().to_bytes()
}

/// Ed25519 signature over `label || msg`, the way every Hush signature is made.
fn ed25519_sign(secret: &[u8; KEY_LEN], label: &[u8], msg: &[u8]) -> [u8; 64] {
    SigningKey::from_bytes(secret)
        .sign(&[label, msg].concat())
        .to_bytes()
}

fn kem_decapsulate(seed: &[u8; KEM_SEED_LEN], ciphertext: &[u8]) -> GenResult<[u8; 32]> {
    let dk = DecapsulationKey768::from_seed((*seed).into());
    let ct: [u8; KEM_CIPHERTEXT_LEN] = ciphertext.try_into()?;
    let ct: ml_kem::Ciphertext<ml_kem::MlKem768> = ml_kem::array::Array::from(ct);
    Ok(<[u8; 32]>::from(dk.decapsulate(&ct)))
}

fn key32(bytes: &[u8]) -> GenResult<[u8; KEY_LEN]> {
    Ok(bytes.try_into()?)
}

/// XORs `mask` into byte `index` of `bytes`.
fn flip(bytes: &mut [u8], index: usize, mask: u8) -> GenResult<()> {
    let b = bytes.get_mut(index).ok_or("flip: index out of range")?;
    *b ^= mask;
    Ok(())
}

fn count(n: usize) -> GenResult<u32> {
    Ok(u32::try_from(n)?)
}

fn wire_identity(id: &DeviceIdentity) -> wire::DeviceIdentityKey {
    wire::DeviceIdentityKey {
        signing_key: id.signing_key().to_vec(),
        dh_key: id.dh_key().to_vec(),
    }
}

fn pairwise_initial(m: wire::InitialMessage) -> Vec<u8> {
    wire::PairwiseMessage {
        body: Some(wire::pairwise_message::Body::Initial(m)),
    }
    .encode_to_vec()
}

/// A device's identity secrets.
struct DeviceSecrets {
    signing: [u8; KEY_LEN],
    dh: [u8; KEY_LEN],
}

impl DeviceSecrets {
    /// Draws the signing secret, then the DH secret (2 × 32 bytes).
    fn draw(rng: &mut ChaCha20Rng) -> Self {
        let signing = draw(rng);
        let dh = draw(rng);
        Self { signing, dh }
    }

    fn pair(&self) -> DeviceIdentityKeyPair {
        DeviceIdentityKeyPair::from_secret_bytes(&self.signing, &self.dh)
    }

    fn public(&self) -> DeviceIdentity {
        self.pair().public()
    }

    fn listed(&self, device_id: u32, added_at: u64) -> ListedDeviceRecord {
        ListedDeviceRecord {
            device_id,
            identity_signing_secret: hx(self.signing),
            identity_signing_public: hx(ed25519_public(&self.signing)),
            identity_dh_secret: hx(self.dh),
            identity_dh_public: hx(x25519_public(&self.dh)),
            added_at,
        }
    }
}

/// One device with its own account (the account key is held by this device).
struct Party {
    device_id: u32,
    account_secret: [u8; KEY_LEN],
    account: AccountKeyPair,
    secrets: DeviceSecrets,
    identity: DeviceIdentityKeyPair,
}

impl Party {
    /// Draws the account secret, the signing secret and the DH secret (3 × 32 bytes).
    fn draw(rng: &mut ChaCha20Rng, device_id: u32) -> Self {
        let account_secret = draw(rng);
        let secrets = DeviceSecrets::draw(rng);
        Self {
            device_id,
            account: AccountKeyPair::from_secret_bytes(&account_secret),
            identity: secrets.pair(),
            account_secret,
            secrets,
        }
    }

    fn address(&self) -> DeviceAddress {
        DeviceAddress {
            account: self.account.id(),
            device_id: self.device_id,
        }
    }

    fn public(&self) -> DeviceIdentity {
        self.identity.public()
    }

    /// The device as one end of a session (its address and identity, as bound into the AD).
    fn party(&self) -> ratchet::Party {
        ratchet::Party {
            address: self.address(),
            identity: self.public(),
        }
    }

    fn record(&self) -> DeviceKeysRecord {
        DeviceKeysRecord {
            device_id: self.device_id,
            account_secret: hx(self.account_secret),
            account_public: hx(self.account.id().as_bytes()),
            identity_signing_secret: hx(self.secrets.signing),
            identity_signing_public: hx(self.public().signing_key()),
            identity_dh_secret: hx(self.secrets.dh),
            identity_dh_public: hx(self.public().dh_key()),
        }
    }

    /// Version 1 of the account's device list, listing this device only.
    fn own_device_list(&self, now: u64) -> GenResult<VerifiedDeviceList> {
        let mut devices = BTreeMap::new();
        devices.insert(
            self.device_id,
            DeviceEntry {
                device_id: self.device_id,
                identity: self.public(),
                added_at: now - DAY_MS,
            },
        );
        let list = DeviceList {
            account: self.account.id(),
            version: 1,
            issued_at: now - DAY_MS,
            devices,
        };
        Ok(list.sign(&self.account)?)
    }
}

/// Everything of one PQXDH run, drawn from the vector's RNG.
struct Setup {
    now: u64,
    alice: Party,
    bob: Party,
    bob_list: VerifiedDeviceList,
    spk_secret: [u8; KEY_LEN],
    spk: SignedPreKeyPair,
    opk_secret: [u8; KEY_LEN],
    opk: Option<OneTimePreKeyPair>,
    kem_seed: [u8; KEM_SEED_LEN],
    kem: KemPreKeyPair,
    base_secret: [u8; KEY_LEN],
    ratchet_secret: [u8; KEY_LEN],
    kem_m: [u8; 32],
}

impl Setup {
    /// Draws, in order: Alice's account, signing and DH secrets; Bob's account, signing and DH
    /// secrets; Bob's signed pre-key secret; Bob's one-time pre-key secret (drawn even when unused);
    /// Bob's ML-KEM seed (64 bytes); Alice's base key secret; Alice's first ratchet key secret; the
    /// ML-KEM encapsulation randomness `m`. That is 11 × 32 + 64 = 416 bytes.
    fn draw(
        rng: &mut ChaCha20Rng,
        with_one_time: bool,
        last_resort: bool,
        now: u64,
    ) -> GenResult<Self> {
        let alice = Party::draw(rng, ALICE_DEVICE_ID);
        let bob = Party::draw(rng, BOB_DEVICE_ID);
        let spk_secret = draw(rng);
        let opk_secret = draw(rng);
        let kem_seed = draw(rng);
        let base_secret = draw(rng);
        let ratchet_secret = draw(rng);
        let kem_m = draw(rng);
        let created = now - DAY_MS;
        let spk =
            SignedPreKeyPair::from_secret(&bob.identity, SIGNED_PRE_KEY_ID, &spk_secret, created);
        let opk =
            with_one_time.then(|| OneTimePreKeyPair::from_secret(ONE_TIME_PRE_KEY_ID, &opk_secret));
        let kem_id = if last_resort {
            LAST_RESORT_KEM_PRE_KEY_ID
        } else {
            KEM_PRE_KEY_ID
        };
        let kem = KemPreKeyPair::from_seed(&bob.identity, kem_id, &kem_seed, last_resort, created);
        let bob_list = bob.own_device_list(now)?;
        Ok(Self {
            now,
            alice,
            bob,
            bob_list,
            spk_secret,
            spk,
            opk_secret,
            opk,
            kem_seed,
            kem,
            base_secret,
            ratchet_secret,
            kem_m,
        })
    }

    fn bundle(&self) -> wire::PreKeyBundle {
        wire::PreKeyBundle {
            account_key: self.bob.account.id().as_bytes().to_vec(),
            device_id: self.bob.device_id,
            identity: Some(wire_identity(&self.bob.public())),
            signed_pre_key: Some(self.spk.to_wire()),
            one_time_pre_key: self.opk.as_ref().map(OneTimePreKeyPair::to_wire),
            kem_pre_key: Some(self.kem.to_wire()),
        }
    }

    fn initiate_with(
        &self,
        base: [u8; KEY_LEN],
        ratchet: [u8; KEY_LEN],
        m: [u8; 32],
    ) -> GenResult<Initiated> {
        let verified = PreKeyBundle(self.bundle()).verify(&self.bob_list)?;
        let secrets = InitiatorSecrets::from_bytes(base, ratchet, m);
        Ok(pqxdh::initiate(
            self.alice.address(),
            &self.alice.identity,
            &verified,
            secrets,
            self.now,
        )?)
    }

    fn initiate(&self) -> GenResult<Initiated> {
        self.initiate_with(self.base_secret, self.ratchet_secret, self.kem_m)
    }

    /// Bob's side, with his ML-KEM pre-key marked as already used with `used` base keys.
    fn respond(&self, im: &InitialMessage, used: &[[u8; KEY_LEN]]) -> Result<Initiated, Error> {
        let mut kem = KemPreKeyPair::from_seed(
            &self.bob.identity,
            self.kem.id,
            &self.kem_seed,
            self.kem.last_resort,
            0,
        );
        kem.mark_used_base_keys(used.iter().copied());
        pqxdh::respond(
            self.bob.address(),
            &self.bob.identity,
            &self.spk,
            self.opk.as_ref(),
            &kem,
            im,
            self.now,
        )
    }

    /// Alice's session and the wire initial message around her first message.
    fn first_message(
        &self,
        plaintext: &[u8],
        rng: &mut ChaCha20Rng,
    ) -> GenResult<(Initiated, wire::InitialMessage)> {
        self.first_message_with(
            self.base_secret,
            self.ratchet_secret,
            self.kem_m,
            plaintext,
            rng,
        )
    }

    fn first_message_with(
        &self,
        base: [u8; KEY_LEN],
        ratchet: [u8; KEY_LEN],
        m: [u8; 32],
        plaintext: &[u8],
        rng: &mut ChaCha20Rng,
    ) -> GenResult<(Initiated, wire::InitialMessage)> {
        let mut init = self.initiate_with(base, ratchet, m)?;
        // The first sending chain exists after initiation: this draws nothing from `rng`.
        let enc = init.session.encrypt(plaintext, rng, self.now)?;
        let pending = init
            .session
            .pending()
            .ok_or("initiator session is not pending")?;
        let initial = InitialMessage::wire(pending, self.alice.public(), &enc.message);
        Ok((init, initial))
    }

    fn signed_pre_key_record(&self) -> SignedPreKeyRecord {
        SignedPreKeyRecord {
            id: self.spk.id,
            secret: hx(self.spk_secret),
            public: hx(self.spk.public.as_bytes()),
            signature: hx(self.spk.signature),
        }
    }

    fn one_time_pre_key_record(&self) -> Option<OneTimePreKeyRecord> {
        self.opk.as_ref().map(|o| OneTimePreKeyRecord {
            id: o.id,
            secret: hx(self.opk_secret),
            public: hx(o.public.as_bytes()),
        })
    }

    fn kem_pre_key_record(&self) -> KemPreKeyRecord {
        KemPreKeyRecord {
            id: self.kem.id,
            seed: hx(self.kem_seed),
            public: hx(&self.kem.public),
            signature: hx(self.kem.signature),
            last_resort: self.kem.last_resort,
        }
    }

    fn inputs(&self) -> PqxdhInputs {
        PqxdhInputs {
            alice: self.alice.record(),
            bob: self.bob.record(),
            bob_device_list: hx(self.bob_list.signed_bytes()),
            signed_pre_key: self.signed_pre_key_record(),
            one_time_pre_key: self.one_time_pre_key_record(),
            kem_pre_key: self.kem_pre_key_record(),
            bundle: hx(self.bundle().encode_to_vec()),
            base_key_secret: hx(self.base_secret),
            base_key_public: hx(x25519_public(&self.base_secret)),
            ratchet_key_secret: hx(self.ratchet_secret),
            ratchet_key_public: hx(x25519_public(&self.ratchet_secret)),
            kem_encapsulation_randomness: hx(self.kem_m),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// pqxdh.json
// ---------------------------------------------------------------------------------------------

fn pqxdh_file() -> GenResult<PqxdhFile> {
    let cases: [(&str, &str, bool, bool); 4] = [
        (
            "one-time-pre-key-one-time-kem",
            "The usual case: a one-time X25519 pre-key (DH4 present) and a one-time ML-KEM pre-key.",
            true,
            false,
        ),
        (
            "no-one-time-pre-key-one-time-kem",
            "One-time X25519 pre-keys exhausted: no DH4; a one-time ML-KEM pre-key.",
            false,
            false,
        ),
        (
            "one-time-pre-key-last-resort-kem",
            "A one-time X25519 pre-key with the last-resort ML-KEM pre-key (one-time ML-KEM keys exhausted).",
            true,
            true,
        ),
        (
            "no-one-time-pre-key-last-resort-kem",
            "Everything exhausted: no DH4, and the last-resort ML-KEM pre-key.",
            false,
            true,
        ),
    ];
    let mut vectors = Vec::new();
    for (index, (name, description, with_one_time, last_resort)) in cases.into_iter().enumerate() {
        vectors.push(pqxdh_vector(
            index,
            name,
            description,
            with_one_time,
            last_resort,
        )?);
    }
    Ok(PqxdhFile {
        file: "pqxdh".to_owned(),
        format_version: FORMAT_VERSION,
        description: "PQXDH session setup (X25519, SHA-256, ML-KEM-768): Alice initiates to Bob's pre-key bundle \
                      and sends her first message inside an initial message; Bob derives the same SK."
            .to_owned(),
        vectors,
    })
}

fn pqxdh_vector(
    index: usize,
    name: &str,
    description: &str,
    with_one_time: bool,
    last_resort: bool,
) -> GenResult<PqxdhVector> {
    let seed = seed("pqxdh", index)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let s = Setup::draw(&mut rng, with_one_time, last_resort, NOW_MS)?;
    let plaintext = format!("PQXDH vector {index}: first message from Alice").into_bytes();

    let init = s.initiate()?;
    let root_key = *init.session.root_key();
    let sending_chain_key = *init
        .session
        .sending_chain_key()
        .ok_or("initiator has no sending chain")?;
    let (init, initial) = s.first_message(&plaintext, &mut rng)?;
    ensure(
        *init.session.root_key() == root_key,
        "root key does not change on the first send",
    )?;
    let first = RatchetMessage::try_from(initial.message.as_ref().ok_or("no ratchet message")?)?;
    let header = first.header;
    let (message_key, _) = ratchet::kdf_ck(&sending_chain_key);

    // Bob's side.
    let im = InitialMessage::try_from(&initial)?;
    let mut bob = s.respond(&im, &[])?;
    ensure(
        *bob.shared_secret == *init.shared_secret,
        "both sides derive the same SK",
    )?;
    let opened = bob.session.decrypt(&im.message, s.now)?;
    ensure(
        *opened.plaintext == plaintext,
        "Bob decrypts the first message",
    )?;
    ensure(
        *opened.message_key == *message_key,
        "Bob derives the same message key",
    )?;

    // The DH values and the ML-KEM shared secret, computed independently for the record.
    let spk_pub = s.spk.public.to_bytes();
    let dh1 = x25519(&s.alice.secrets.dh, &spk_pub);
    let dh2 = x25519(&s.base_secret, s.bob.public().dh_key());
    let dh3 = x25519(&s.base_secret, &spk_pub);
    let dh4 = s
        .opk
        .as_ref()
        .map(|o| x25519(&s.base_secret, o.public.as_bytes()));
    let kem_shared = kem_decapsulate(&s.kem_seed, &initial.kem_ciphertext)?;
    let mut dhs = vec![&dh1, &dh2, &dh3];
    if let Some(d) = &dh4 {
        dhs.push(d);
    }
    ensure(
        *pqxdh::derive_shared_secret(&dhs, &kem_shared) == *init.shared_secret,
        "SK = KDF(DH1..DH4 || SS)",
    )?;
    let ad = ratchet::message_ad(&s.alice.party(), &s.bob.party(), &header);
    ensure(
        *ratchet::open(&message_key, &ad, &first.ciphertext)? == plaintext,
        "first message opens",
    )?;

    Ok(PqxdhVector {
        name: name.to_owned(),
        description: description.to_owned(),
        seed: hx(seed),
        now_ms: s.now,
        inputs: s.inputs(),
        outputs: PqxdhOutputs {
            dh1: hx(dh1),
            dh2: hx(dh2),
            dh3: hx(dh3),
            dh4: dh4.map(hx),
            kem_ciphertext: hx(&initial.kem_ciphertext),
            kem_shared_secret: hx(kem_shared),
            shared_secret: hx(*init.shared_secret),
            responder_shared_secret: hx(*bob.shared_secret),
            root_key: hx(root_key),
            sending_chain_key: hx(sending_chain_key),
            first_message: FirstMessageRecord {
                plaintext: hx(&plaintext),
                ratchet_key: hx(header.ratchet_key),
                counter: header.counter,
                previous_counter: header.previous_counter,
                message_key: hx(*message_key),
                ad: hx(&ad),
                ciphertext: hx(&first.ciphertext),
            },
            initial_message: hx(pairwise_initial(initial)),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// double_ratchet.json
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Alice,
    Bob,
}

enum Step {
    Send(Who),
    Deliver(usize),
}

/// The conversation: sends and deliveries in the order they happen. Chains (sending chains on the
/// root chain): A0 = messages 0–3, B0 = 4–6, A1 = 7–8, B1 = 9–10, A2 = 11–13, B2 = 14–15,
/// A3 = 16–17, B3 = 18–21, A4 = 22.
const SCRIPT: &[Step] = {
    use Step::{Deliver as D, Send as S};
    use Who::{Alice as A, Bob as B};
    &[
        S(A),
        S(A),
        S(A),
        S(A),
        D(1), // Bob: first ratchet step; 0 stored as skipped
        D(0), // Bob: skipped key
        S(B),
        S(B),
        S(B),
        D(5), // Alice: ratchet step; 4 stored as skipped
        D(4), // Alice: skipped key
        S(A),
        S(A),
        D(8), // Bob: new ratchet key with PN = 4: 2 and 3 skipped through PN, 7 within the chain
        D(3), // Bob: PN-skipped key of the old chain
        S(B),
        S(B),
        D(10), // Alice: new ratchet key with PN = 3: 6 skipped through PN, 9 within the chain
        D(9),
        D(7),
        D(2), // Bob: the other PN-skipped key, two ratchet steps later
        S(A),
        S(A),
        S(A),
        D(13), // Bob: ratchet step, 11 and 12 skipped
        D(6),  // Alice: PN-skipped key
        D(11),
        S(B),
        S(B),
        D(14),
        D(12),
        D(15),
        S(A),
        S(A),
        D(17),
        D(16),
        S(B),
        S(B),
        S(B),
        S(B),
        D(18),
        D(19),
        D(21),
        D(20),
        S(A),
        D(22),
    ]
};

fn ratchet_file() -> GenResult<RatchetFile> {
    Ok(RatchetFile {
        file: "double_ratchet".to_owned(),
        format_version: FORMAT_VERSION,
        description: "A Double Ratchet conversation between Alice (initiator) and Bob after PQXDH, with every \
                      key derived, out-of-order delivery within chains and across ratchet steps (PN skipping)."
            .to_owned(),
        vectors: vec![ratchet_vector()?],
    })
}

fn classify(before: &hush_proto::store::SessionState, header: &Header) -> &'static str {
    if before
        .skipped
        .iter()
        .any(|k| k.ratchet_key == header.ratchet_key && k.counter == header.counter)
    {
        "skipped_key"
    } else if before.remote_ratchet_key == header.ratchet_key {
        "current_chain"
    } else {
        "new_ratchet_key"
    }
}

struct ChainState {
    record: RatchetChainRecord,
    public: [u8; KEY_LEN],
    next_chain_key: [u8; KEY_LEN],
}

fn ratchet_vector() -> GenResult<RatchetVector> {
    let seed = seed("double_ratchet", 0)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let s = Setup::draw(&mut rng, true, false, NOW_MS)?;
    let init = s.initiate()?;
    let sk = *init.shared_secret;
    let mut alice = init.session;
    let pending = alice
        .pending()
        .ok_or("initiator session is not pending")?
        .clone();
    let mut bob: Option<SessionState> = None;
    let alice_id = s.alice.public();
    let (alice_party, bob_party) = (s.alice.party(), s.bob.party());

    let mut root = sk;
    let mut chains: Vec<ChainState> = Vec::new();
    let mut current: [Option<usize>; 2] = [None, None];
    let mut sent: Vec<RatchetMessage> = Vec::new();
    let mut records: Vec<RatchetMessageRecord> = Vec::new();
    let mut events = Vec::new();
    let mut delivered = 0u32;

    for step in SCRIPT {
        match step {
            Step::Send(who) => {
                let index = count(records.len())?;
                let (sender, session) = match who {
                    Who::Alice => (ALICE, &mut alice),
                    Who::Bob => (
                        BOB,
                        bob.as_mut().ok_or("Bob sends before he has a session")?,
                    ),
                };
                let plaintext = format!("message {index} from {sender}").into_bytes();
                // Draws 32 bytes from `rng` when this send starts a new sending chain.
                let enc = session.encrypt(&plaintext, &mut rng, s.now)?;
                let header = enc.message.header;
                let slot = current
                    .get_mut(usize::from(*who == Who::Bob))
                    .ok_or("slot")?;
                let chain_index = match *slot {
                    Some(c)
                        if chains
                            .get(c)
                            .is_some_and(|ch| ch.public == header.ratchet_key) =>
                    {
                        c
                    }
                    _ => {
                        let state = session.to_proto();
                        let private = key32(&state.sending_ratchet_private)?;
                        let peer = key32(&state.remote_ratchet_key)?;
                        ensure(
                            x25519_public(&private) == header.ratchet_key,
                            "ratchet private matches header",
                        )?;
                        let expected_peer =
                            chains.last().map_or(s.spk.public.to_bytes(), |c| c.public);
                        ensure(peer == expected_peer, "chains alternate on the root chain")?;
                        let dh = x25519(&private, &peer);
                        let (rk, ck) = ratchet::kdf_rk(&root, &dh);
                        ensure(
                            *rk == *session.root_key(),
                            "root key after the ratchet step",
                        )?;
                        root = *rk;
                        let c = chains.len();
                        chains.push(ChainState {
                            record: RatchetChainRecord {
                                index: count(c)?,
                                sender: sender.to_owned(),
                                ratchet_private: hx(private),
                                ratchet_public: hx(header.ratchet_key),
                                peer_ratchet_public: hx(peer),
                                dh_output: hx(dh),
                                root_key: hx(*rk),
                                chain_key: hx(*ck),
                                message_count: 0,
                            },
                            public: header.ratchet_key,
                            next_chain_key: *ck,
                        });
                        *slot = Some(c);
                        c
                    }
                };
                let chain = chains.get_mut(chain_index).ok_or("chain")?;
                ensure(
                    header.counter == chain.record.message_count,
                    "N counts the chain's messages",
                )?;
                let (mk, next) = ratchet::kdf_ck(&chain.next_chain_key);
                ensure(*mk == *enc.message_key, "message key from the chain key")?;
                chain.next_chain_key = *next;
                chain.record.message_count += 1;
                let ad = ratchet::message_ad(&alice_party, &bob_party, &header);
                records.push(RatchetMessageRecord {
                    index,
                    sender: sender.to_owned(),
                    chain: count(chain_index)?,
                    plaintext: hx(&plaintext),
                    ratchet_key: hx(header.ratchet_key),
                    counter: header.counter,
                    previous_counter: header.previous_counter,
                    message_key: hx(*mk),
                    ad: hx(&ad),
                    ciphertext: hx(&enc.message.ciphertext),
                    ratchet_message: hx(enc.message.to_wire().encode_to_vec()),
                    delivery_position: u32::MAX,
                    received_via: String::new(),
                    skipped_keys_stored: 0,
                });
                sent.push(enc.message);
                events.push(RatchetEvent {
                    action: "send".to_owned(),
                    message: index,
                });
            }
            Step::Deliver(i) => {
                let msg = sent.get(*i).ok_or("delivery of an unsent message")?;
                let rec = records.get_mut(*i).ok_or("record")?;
                let receiver = if rec.sender == ALICE {
                    if bob.is_none() {
                        // Bob's session comes from the initial message (its PQXDH header is the
                        // same on every message of chain A0; `respond` does not decrypt).
                        let first = sent.first().ok_or("no first message")?;
                        let im = InitialMessage::try_from(&InitialMessage::wire(
                            &pending, alice_id, first,
                        ))?;
                        bob = Some(s.respond(&im, &[])?.session);
                    }
                    bob.as_mut().ok_or("Bob's session")?
                } else {
                    &mut alice
                };
                let before = receiver.to_proto();
                let via = classify(&before, &msg.header);
                let opened = receiver.decrypt(msg, s.now)?;
                ensure(
                    hx(&*opened.plaintext) == rec.plaintext,
                    "receiver decrypts the plaintext",
                )?;
                ensure(
                    hx(*opened.message_key) == rec.message_key,
                    "receiver derives the same key",
                )?;
                let consumed = usize::from(via == "skipped_key");
                let stored = (receiver.skipped_len() + consumed)
                    .checked_sub(before.skipped.len())
                    .ok_or("skipped keys were evicted")?;
                ensure(
                    rec.delivery_position == u32::MAX,
                    "each message is delivered once",
                )?;
                rec.delivery_position = delivered;
                rec.received_via = via.to_owned();
                rec.skipped_keys_stored = count(stored)?;
                delivered += 1;
                events.push(RatchetEvent {
                    action: "deliver".to_owned(),
                    message: rec.index,
                });
            }
        }
    }
    ensure(
        records.iter().all(|r| r.delivery_position != u32::MAX),
        "every message is delivered",
    )?;
    ensure(
        alice.skipped_len() == 0,
        "Alice holds no skipped keys at the end",
    )?;
    ensure(
        bob.as_ref().is_some_and(|b| b.skipped_len() == 0),
        "Bob holds no skipped keys at the end",
    )?;

    Ok(RatchetVector {
        name: "conversation".to_owned(),
        description: format!(
            "{} messages on {} sending chains ({} DH ratchet steps after PQXDH), delivered out of order within \
             chains and across ratchet steps; see `events` for when each was sent and delivered.",
            records.len(),
            chains.len(),
            chains.len().saturating_sub(1)
        ),
        seed: hx(seed),
        now_ms: s.now,
        setup: s.inputs(),
        shared_secret: hx(sk),
        chains: chains.into_iter().map(|c| c.record).collect(),
        messages: records,
        events,
    })
}

// ---------------------------------------------------------------------------------------------
// device_lists.json
// ---------------------------------------------------------------------------------------------

/// Signs a device list of `devices` (id, secrets, added_at).
fn signed_list(
    account: &AccountKeyPair,
    version: u64,
    issued_at: u64,
    devices: &[(u32, &DeviceSecrets, u64)],
) -> GenResult<VerifiedDeviceList> {
    let devices = devices
        .iter()
        .map(|(id, d, added_at)| {
            (
                *id,
                DeviceEntry {
                    device_id: *id,
                    identity: d.public(),
                    added_at: *added_at,
                },
            )
        })
        .collect();
    Ok(DeviceList {
        account: account.id(),
        version,
        issued_at,
        devices,
    }
    .sign(account)?)
}

fn version_record(
    list: &VerifiedDeviceList,
    devices: &[(u32, &DeviceSecrets, u64)],
) -> GenResult<DeviceListVersionRecord> {
    let signed = wire::SignedDeviceList::decode(list.signed_bytes())?;
    let mut sorted: Vec<&(u32, &DeviceSecrets, u64)> = devices.iter().collect();
    sorted.sort_by_key(|d| d.0);
    Ok(DeviceListVersionRecord {
        version: list.list().version,
        issued_at: list.list().issued_at,
        devices: sorted
            .into_iter()
            .map(|(id, d, added)| d.listed(*id, *added))
            .collect(),
        device_list: hx(&signed.device_list),
        signature: hx(&signed.signature),
        signed_device_list: hx(list.signed_bytes()),
    })
}

fn device_list_file() -> GenResult<DeviceListFile> {
    Ok(DeviceListFile {
        file: "device_lists".to_owned(),
        format_version: FORMAT_VERSION,
        description: "Signed, versioned device lists: valid successive versions, and lists a verifier must reject."
            .to_owned(),
        vectors: vec![device_list_add()?, device_list_replace()?],
        negative_vectors: device_list_negatives()?,
    })
}

/// Draws the account secret, then device 1's identity secrets, then device 2's.
fn device_list_add() -> GenResult<DeviceListVector> {
    let seed = seed("device_lists", 0)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let account_secret = draw(&mut rng);
    let account = AccountKeyPair::from_secret_bytes(&account_secret);
    let d1 = DeviceSecrets::draw(&mut rng);
    let d2 = DeviceSecrets::draw(&mut rng);
    let t1 = NOW_MS - 30 * DAY_MS;
    let t2 = NOW_MS - DAY_MS;
    let v1_devices = [(1, &d1, t1)];
    let v2_devices = [(1, &d1, t1), (2, &d2, t2)];
    let v1 = signed_list(&account, 1, t1, &v1_devices)?;
    let v2 = signed_list(&account, 2, t2, &v2_devices)?;
    ensure(v2.check_successor(Some(&v1))?, "v2 succeeds v1")?;
    Ok(DeviceListVector {
        name: "add-device".to_owned(),
        description: "Version 1 lists the account's first device; version 2 adds a second device."
            .to_owned(),
        seed: hx(seed),
        account_secret: hx(account_secret),
        account_public: hx(account.id().as_bytes()),
        versions: vec![
            version_record(&v1, &v1_devices)?,
            version_record(&v2, &v2_devices)?,
        ],
    })
}

/// Draws the account secret, then the identity secrets of devices 1, 2, 3 and of device 1's new
/// identity.
fn device_list_replace() -> GenResult<DeviceListVector> {
    let seed = seed("device_lists", 1)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let account_secret = draw(&mut rng);
    let account = AccountKeyPair::from_secret_bytes(&account_secret);
    let d1 = DeviceSecrets::draw(&mut rng);
    let d2 = DeviceSecrets::draw(&mut rng);
    let d3 = DeviceSecrets::draw(&mut rng);
    let d1_new = DeviceSecrets::draw(&mut rng);
    let (t1, t2, t3) = (NOW_MS - 60 * DAY_MS, NOW_MS - 10 * DAY_MS, NOW_MS - DAY_MS);
    let v1_devices = [(1, &d1, t1), (2, &d2, t1)];
    let v2_devices = [(1, &d1, t1), (3, &d3, t2)];
    let v3_devices = [(1, &d1_new, t3), (3, &d3, t2)];
    let v1 = signed_list(&account, 1, t1, &v1_devices)?;
    let v2 = signed_list(&account, 2, t2, &v2_devices)?;
    let v3 = signed_list(&account, 3, t3, &v3_devices)?;
    ensure(
        v2.check_successor(Some(&v1))? && v3.check_successor(Some(&v2))?,
        "versions succeed",
    )?;
    Ok(DeviceListVector {
        name: "remove-add-rekey".to_owned(),
        description: "Version 1 lists devices 1 and 2; version 2 removes device 2 and adds device 3; version 3 \
                      replaces device 1's identity keys (the device re-registered)."
            .to_owned(),
        seed: hx(seed),
        account_secret: hx(account_secret),
        account_public: hx(account.id().as_bytes()),
        versions: vec![
            version_record(&v1, &v1_devices)?,
            version_record(&v2, &v2_devices)?,
            version_record(&v3, &v3_devices)?,
        ],
    })
}

/// Builds a `SignedDeviceList` by hand: `devices` entries (all with identity `d`) signed by
/// `signer` (32-byte Ed25519 secret) over the label and the encoded list.
fn hand_signed_list(
    account: &AccountKeyPair,
    signer: &[u8; KEY_LEN],
    version: u64,
    d: &DeviceSecrets,
    device_ids: impl Iterator<Item = u32>,
) -> Vec<u8> {
    let identity = d.public();
    let list = wire::DeviceList {
        account_key: account.id().as_bytes().to_vec(),
        version,
        issued_at: NOW_MS - DAY_MS,
        devices: device_ids
            .map(|device_id| wire::DeviceEntry {
                device_id,
                identity: Some(wire_identity(&identity)),
                added_at: NOW_MS - DAY_MS,
            })
            .collect(),
    }
    .encode_to_vec();
    let signature = ed25519_sign(signer, labels::DEVICE_LIST, &list).to_vec();
    wire::SignedDeviceList {
        device_list: list,
        signature,
    }
    .encode_to_vec()
}

fn verify_case(
    name: &str,
    description: String,
    seed: [u8; 32],
    account: &AccountKeyPair,
    bad: Vec<u8>,
    control: &[u8],
    expected: &str,
) -> GenResult<NegativeVector> {
    VerifiedDeviceList::verify(control, &account.id())?;
    check_err(VerifiedDeviceList::verify(&bad, &account.id()), expected)?;
    Ok(NegativeVector {
        name: name.to_owned(),
        description,
        seed: hx(seed),
        now_ms: NOW_MS,
        expected_error: expected.to_owned(),
        input: NegativeInput::DeviceListVerify {
            account: hx(account.id().as_bytes()),
            signed_device_list: hx(bad),
            control_signed_device_list: hx(control),
        },
    })
}

/// Negative vectors of `device_lists.json`. Each draws an account secret, then device identity
/// secrets, then any further key it names, in that order.
fn device_list_negatives() -> GenResult<Vec<NegativeVector>> {
    let mut out = Vec::new();
    let file = "device_lists";

    // 0: one bit flipped inside the signed bytes.
    {
        let seed = seed(file, 10)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let account = AccountKeyPair::from_secret_bytes(&draw(&mut rng));
        let d1 = DeviceSecrets::draw(&mut rng);
        let good = signed_list(&account, 1, NOW_MS - DAY_MS, &[(1, &d1, NOW_MS - DAY_MS)])?;
        let mut signed = wire::SignedDeviceList::decode(good.signed_bytes())?;
        let dh = d1.public().dh_key().to_vec();
        let at = signed
            .device_list
            .windows(dh.len())
            .position(|w| w == dh.as_slice())
            .ok_or("device key not found in the list")?;
        flip(&mut signed.device_list, at, 0x01)?;
        out.push(verify_case(
            "tampered-device-key",
            format!(
                "One bit (0x01 of byte {at} of device_list, inside device 1's X25519 identity key) flipped after \
                 signing: the account signature no longer verifies."
            ),
            seed,
            &account,
            signed.encode_to_vec(),
            good.signed_bytes(),
            "Auth(BadSignature)",
        )?);
    }

    // 1: verified against another account than the one that signed it.
    {
        let seed = seed(file, 11)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let account = AccountKeyPair::from_secret_bytes(&draw(&mut rng));
        let d1 = DeviceSecrets::draw(&mut rng);
        let other = AccountKeyPair::from_secret_bytes(&draw(&mut rng));
        let others = signed_list(&other, 1, NOW_MS - DAY_MS, &[(1, &d1, NOW_MS - DAY_MS)])?;
        let own = signed_list(&account, 1, NOW_MS - DAY_MS, &[(1, &d1, NOW_MS - DAY_MS)])?;
        out.push(verify_case(
            "wrong-account",
            "A correctly signed list of another account, offered as this account's list (its account_key is not \
             the expected account)."
                .to_owned(),
            seed,
            &account,
            others.signed_bytes().to_vec(),
            own.signed_bytes(),
            "Auth(BadSignature)",
        )?);
    }

    // 2: truncated signature.
    {
        let seed = seed(file, 12)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let account = AccountKeyPair::from_secret_bytes(&draw(&mut rng));
        let d1 = DeviceSecrets::draw(&mut rng);
        let good = signed_list(&account, 1, NOW_MS - DAY_MS, &[(1, &d1, NOW_MS - DAY_MS)])?;
        let mut signed = wire::SignedDeviceList::decode(good.signed_bytes())?;
        signed.signature.pop();
        out.push(verify_case(
            "truncated-signature",
            "The signature is 63 bytes (its last byte removed).".to_owned(),
            seed,
            &account,
            signed.encode_to_vec(),
            good.signed_bytes(),
            "Malformed",
        )?);
    }

    // 3: more devices than allowed, correctly signed.
    {
        let seed = seed(file, 13)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let account_secret = draw(&mut rng);
        let account = AccountKeyPair::from_secret_bytes(&account_secret);
        let d = DeviceSecrets::draw(&mut rng);
        let max = count(MAX_DEVICES_PER_ACCOUNT)?;
        let bad = hand_signed_list(&account, &account_secret, 1, &d, 1..=max + 1);
        let control = hand_signed_list(&account, &account_secret, 1, &d, 1..=max);
        out.push(verify_case(
            "too-many-devices",
            format!(
                "A correctly signed list of {} devices (ids 1..={}, all with the same identity keys); the limit is \
                 {MAX_DEVICES_PER_ACCOUNT}. The control lists exactly {MAX_DEVICES_PER_ACCOUNT}.",
                max + 1,
                max + 1
            ),
            seed,
            &account,
            bad,
            &control,
            "Protocol(TooManyDevices)",
        )?);
    }

    // 4: equivocation: two different lists with the same version.
    {
        let seed = seed(file, 14)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let account = AccountKeyPair::from_secret_bytes(&draw(&mut rng));
        let d1 = DeviceSecrets::draw(&mut rng);
        let d2 = DeviceSecrets::draw(&mut rng);
        let t = NOW_MS - DAY_MS;
        let known = signed_list(&account, 2, t, &[(1, &d1, t)])?;
        let other = signed_list(&account, 2, t, &[(1, &d1, t), (2, &d2, t)])?;
        check_err(
            other.check_successor(Some(&known)),
            "Protocol(DeviceListConflict)",
        )?;
        ensure(
            !known.check_successor(Some(&known))?,
            "the same list again is accepted as not new",
        )?;
        out.push(NegativeVector {
            name: "equivocation".to_owned(),
            description: "Two different, validly signed lists with the same version 2: the second is a conflict. \
                          The control is the known list itself (accepted, not new)."
                .to_owned(),
            seed: hx(seed),
            now_ms: NOW_MS,
            expected_error: "Protocol(DeviceListConflict)".to_owned(),
            input: NegativeInput::DeviceListSuccessor {
                account: hx(account.id().as_bytes()),
                known_device_list: hx(known.signed_bytes()),
                signed_device_list: hx(other.signed_bytes()),
                control_signed_device_list: hx(known.signed_bytes()),
            },
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// safety_numbers.json
// ---------------------------------------------------------------------------------------------

/// Draws account A's secret, then account B's.
fn safety_pair(index: usize) -> GenResult<(SafetyNumberVector, [u8; KEY_LEN], [u8; KEY_LEN])> {
    let seed = seed("safety_numbers", index)?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let a_secret = draw(&mut rng);
    let b_secret = draw(&mut rng);
    let a = *AccountKeyPair::from_secret_bytes(&a_secret).id().as_bytes();
    let b = *AccountKeyPair::from_secret_bytes(&b_secret).id().as_bytes();
    let sa = SafetyNumber::new(&a, &b);
    let sb = SafetyNumber::new(&b, &a);
    ensure(sa.digits() == sb.digits(), "both sides see the same digits")?;
    let (fa, fb) = (safety::fingerprint(&a), safety::fingerprint(&b));
    Ok((
        SafetyNumberVector {
            name: format!("pair-{index}"),
            description: "Safety number of accounts A and B, as both sides compute it.".to_owned(),
            seed: hx(seed),
            account_a_secret: hx(a_secret),
            account_a_public: hx(a),
            account_b_secret: hx(b_secret),
            account_b_public: hx(b),
            fingerprint_a: hx(fa),
            fingerprint_b: hx(fb),
            digits_a: safety::fingerprint_digits(&fa),
            digits_b: safety::fingerprint_digits(&fb),
            safety_number: sa.digits(),
            safety_number_display: sa.display_groups(),
            qr_payload_a: hx(sa.qr_payload()),
            qr_payload_b: hx(sb.qr_payload()),
        },
        a,
        b,
    ))
}

fn comparison(
    name: &str,
    description: &str,
    local: &[u8; KEY_LEN],
    remote: &[u8; KEY_LEN],
    payload: &[u8],
) -> SafetyComparisonVector {
    let expected = match SafetyNumber::new(local, remote).compare_scanned(payload) {
        Ok(safety::Comparison::Match) => "Match",
        Ok(safety::Comparison::Mismatch) => "Mismatch",
        Err(safety::SafetyNumberError::Malformed) => "Malformed",
        Err(safety::SafetyNumberError::UnsupportedVersion(_)) => "UnsupportedVersion",
    };
    SafetyComparisonVector {
        name: name.to_owned(),
        description: description.to_owned(),
        local_account: hx(local),
        remote_account: hx(remote),
        scanned_payload: hx(payload),
        expected: expected.to_owned(),
    }
}

fn safety_file() -> GenResult<SafetyFile> {
    let mut vectors = Vec::new();
    let mut keys = Vec::new();
    for index in 0..3 {
        let (v, a, b) = safety_pair(index)?;
        vectors.push(v);
        keys.push((a, b));
    }
    let [(a, b), (a1, b1), (a2, b2)]: [([u8; 32], [u8; 32]); 3] =
        keys.try_into().map_err(|_| "three pairs")?;
    let mallory = a1;
    let qr = |local: &[u8; 32], remote: &[u8; 32]| SafetyNumber::new(local, remote).qr_payload();
    let mut flipped = qr(&a, &b);
    let last = flipped.len() - 1;
    flip(&mut flipped, last, 0x01)?;
    let mut version2 = qr(&a, &b);
    flip(&mut version2, 0, 0x03)?;
    let truncated = qr(&a, &b).get(..60).ok_or("truncate")?.to_vec();
    let comparisons = vec![
        comparison(
            "pair-0-b-scans-a",
            "Pair 0: B scans A's code.",
            &b,
            &a,
            &qr(&a, &b),
        ),
        comparison(
            "pair-0-a-scans-b",
            "Pair 0: A scans B's code.",
            &a,
            &b,
            &qr(&b, &a),
        ),
        comparison(
            "pair-1-b-scans-a",
            "Pair 1: B scans A's code.",
            &b1,
            &a1,
            &qr(&a1, &b1),
        ),
        comparison(
            "pair-2-a-scans-b",
            "Pair 2: A scans B's code.",
            &a2,
            &b2,
            &qr(&b2, &a2),
        ),
        comparison(
            "own-code",
            "Pair 0: A scans its own code (local and remote swapped): not a match.",
            &a,
            &b,
            &qr(&a, &b),
        ),
        comparison(
            "mitm-b-holds-mallory",
            "Pair 0: B holds Mallory's key (pair 1's account A) instead of A's; A scans B's code.",
            &a,
            &b,
            &qr(&b, &mallory),
        ),
        comparison(
            "mitm-a-holds-mallory",
            "Pair 0: A holds Mallory's key (pair 1's account A) instead of B's; B scans A's code.",
            &b,
            &a,
            &qr(&a, &mallory),
        ),
        comparison(
            "bit-flipped",
            "Pair 0: B scans A's code with the lowest bit of its last byte flipped.",
            &b,
            &a,
            &flipped,
        ),
        comparison(
            "unsupported-version",
            "Pair 0: A's code with version byte 0x02.",
            &b,
            &a,
            &version2,
        ),
        comparison(
            "truncated",
            "Pair 0: A's code without its last byte (60 bytes).",
            &b,
            &a,
            &truncated,
        ),
        comparison("empty", "An empty payload.", &b, &a, &[]),
    ];
    Ok(SafetyFile {
        file: "safety_numbers".to_owned(),
        format_version: FORMAT_VERSION,
        description: "Safety numbers: per-account fingerprints, the 60 digits, the grouped display, the QR payloads, \
                      and the results of comparing scanned payloads."
            .to_owned(),
        vectors,
        comparisons,
    })
}

// ---------------------------------------------------------------------------------------------
// negative.json
// ---------------------------------------------------------------------------------------------

struct Negatives {
    vectors: Vec<NegativeVector>,
}

impl Negatives {
    /// The seed and RNG of the next vector.
    fn next_rng(&self) -> GenResult<([u8; 32], ChaCha20Rng)> {
        let seed = seed("negative", self.vectors.len())?;
        Ok((seed, ChaCha20Rng::from_seed(seed)))
    }

    fn push(
        &mut self,
        seed: [u8; 32],
        name: &str,
        description: String,
        expected: &str,
        input: NegativeInput,
    ) {
        self.vectors.push(NegativeVector {
            name: name.to_owned(),
            description,
            seed: hx(seed),
            now_ms: NOW_MS,
            expected_error: expected.to_owned(),
            input,
        });
    }

    /// A bundle case: draws a [`Setup`] (one-time pre-key and one-time ML-KEM key), then whatever
    /// `tamper` draws.
    fn bundle(
        &mut self,
        name: &str,
        description: &str,
        expected: &str,
        tamper: impl FnOnce(&Setup, &mut ChaCha20Rng, &mut wire::PreKeyBundle) -> GenResult<()>,
    ) -> GenResult<()> {
        let (seed, mut rng) = self.next_rng()?;
        let s = Setup::draw(&mut rng, true, false, NOW_MS)?;
        let control = s.bundle();
        let mut bad = control.clone();
        tamper(&s, &mut rng, &mut bad)?;
        PreKeyBundle(control.clone()).verify(&s.bob_list)?;
        check_err(
            PreKeyBundle(bad.clone()).verify(&s.bob_list).map(|_| ()),
            expected,
        )?;
        let input = NegativeInput::Bundle {
            account: hx(s.bob.account.id().as_bytes()),
            device_list: hx(s.bob_list.signed_bytes()),
            bundle: hx(bad.encode_to_vec()),
            control_bundle: hx(control.encode_to_vec()),
        };
        self.push(seed, name, description.to_owned(), expected, input);
        Ok(())
    }

    /// A ratchet-message case: checks the rejection leaves `state` unchanged and that `control`
    /// decrypts afterwards.
    #[allow(clippy::too_many_arguments)]
    fn ratchet(
        &mut self,
        seed: [u8; 32],
        name: &str,
        description: String,
        expected: &str,
        state: &SessionState,
        bad: &wire::RatchetMessage,
        control: &RatchetMessage,
        control_plaintext: &[u8],
    ) -> GenResult<()> {
        let before = state.to_proto().encode_to_vec();
        let mut s =
            SessionState::from_proto(&hush_proto::store::SessionState::decode(before.as_slice())?)?;
        ensure(
            s.to_proto().encode_to_vec() == before,
            "session state round-trips",
        )?;
        check_err(
            RatchetMessage::try_from(bad).and_then(|m| s.decrypt(&m, NOW_MS)),
            expected,
        )?;
        ensure(
            s.to_proto().encode_to_vec() == before,
            "a rejected message leaves the session unchanged",
        )?;
        ensure(
            *s.decrypt(control, NOW_MS)?.plaintext == control_plaintext,
            "the control message decrypts",
        )?;
        let input = NegativeInput::RatchetMessage {
            state_before: hx(&before),
            message: hx(bad.encode_to_vec()),
            control_message: hx(control.to_wire().encode_to_vec()),
            control_plaintext: hx(control_plaintext),
        };
        self.push(seed, name, description, expected, input);
        Ok(())
    }

    /// An initial-message case.
    #[allow(clippy::too_many_arguments)]
    fn initial(
        &mut self,
        seed: [u8; 32],
        name: &str,
        description: String,
        expected: &str,
        s: &Setup,
        used: &[[u8; KEY_LEN]],
        bad: &wire::InitialMessage,
        control: &wire::InitialMessage,
        control_plaintext: &[u8],
    ) -> GenResult<()> {
        let run = |m: &wire::InitialMessage| -> Result<Vec<u8>, Error> {
            let im = InitialMessage::try_from(m)?;
            let mut init = s.respond(&im, used)?;
            Ok(init.session.decrypt(&im.message, s.now)?.plaintext.to_vec())
        };
        check_err(run(bad), expected)?;
        ensure(
            run(control)? == control_plaintext,
            "the control initial message is accepted",
        )?;
        let input = NegativeInput::InitialMessage {
            responder: s.bob.record(),
            signed_pre_key: s.signed_pre_key_record(),
            one_time_pre_key: s.one_time_pre_key_record(),
            kem_pre_key: s.kem_pre_key_record(),
            used_base_keys: used.iter().map(hx).collect(),
            message: hx(pairwise_initial(bad.clone())),
            control_message: hx(pairwise_initial(control.clone())),
            control_plaintext: hx(control_plaintext),
        };
        self.push(seed, name, description, expected, input);
        Ok(())
    }
}

/// Alice's messages with their plaintexts.
type Sent = Vec<(RatchetMessage, Vec<u8>)>;

/// Alice's and Bob's sessions after PQXDH, and Alice's first `n` messages (none delivered yet).
/// Draws a [`Setup`] (one-time pre-key, one-time ML-KEM key).
fn conversation(rng: &mut ChaCha20Rng, n: usize) -> GenResult<(SessionState, SessionState, Sent)> {
    let s = Setup::draw(rng, true, false, NOW_MS)?;
    let (mut alice, initial) = s.first_message(b"message 0 from alice", rng)?;
    let first = RatchetMessage::try_from(initial.message.as_ref().ok_or("no ratchet message")?)?;
    let bob = s
        .respond(&InitialMessage::try_from(&initial)?, &[])?
        .session;
    let mut msgs = vec![(first, b"message 0 from alice".to_vec())];
    for i in 1..n {
        let plaintext = format!("message {i} from alice").into_bytes();
        msgs.push((
            alice.session.encrypt(&plaintext, rng, NOW_MS)?.message,
            plaintext,
        ));
    }
    Ok((alice.session, bob, msgs))
}

fn get<T>(items: &[T], i: usize) -> GenResult<&T> {
    items.get(i).ok_or_else(|| format!("no item {i}").into())
}

fn negative_file() -> GenResult<NegativeFile> {
    let mut n = Negatives {
        vectors: Vec::new(),
    };
    negative_bundles(&mut n)?;
    negative_ratchet(&mut n)?;
    negative_initial(&mut n)?;
    negative_device_lists(&mut n)?;
    negative_groups(&mut n)?;
    negative_group_devices(&mut n)?;
    Ok(NegativeFile {
        file: "negative".to_owned(),
        format_version: FORMAT_VERSION,
        description: "Inputs that must be rejected, each with the exact error variant, and a control input the same \
                      operation accepts. Rejections must leave protocol state unchanged."
            .to_owned(),
        vectors: n.vectors,
    })
}

fn negative_bundles(n: &mut Negatives) -> GenResult<()> {
    n.bundle(
        "bundle-signed-pre-key-bad-signature",
        "The signed pre-key's signature has one bit flipped (0x01 of byte 0).",
        "Auth(BadSignature)",
        |_, _, b| {
            let spk = b.signed_pre_key.as_mut().ok_or("spk")?;
            flip(&mut spk.signature, 0, 0x01)
        },
    )?;
    n.bundle(
        "bundle-signed-pre-key-wrong-signer",
        "The signed pre-key is signed by another device's identity key (its signing and DH secrets are the next \
         2 × 32 bytes of the RNG), not Bob's.",
        "Auth(BadSignature)",
        |s, rng, b| {
            let other = DeviceSecrets::draw(rng).pair();
            let forged = SignedPreKeyPair::from_secret(&other, s.spk.id, &s.spk_secret, 0);
            b.signed_pre_key = Some(forged.to_wire());
            Ok(())
        },
    )?;
    n.bundle(
        "bundle-kem-pre-key-bad-signature",
        "The ML-KEM pre-key's signature has one bit flipped (0x80 of byte 63).",
        "Auth(BadSignature)",
        |_, _, b| {
            let kem = b.kem_pre_key.as_mut().ok_or("kem")?;
            flip(&mut kem.signature, 63, 0x80)
        },
    )?;
    n.bundle(
        "bundle-kem-pre-key-wrong-signer",
        "The ML-KEM pre-key is signed by another device's identity key (next 2 × 32 bytes of the RNG).",
        "Auth(BadSignature)",
        |s, rng, b| {
            let other = DeviceSecrets::draw(rng).pair();
            let forged = KemPreKeyPair::from_seed(&other, s.kem.id, &s.kem_seed, s.kem.last_resort, 0);
            b.kem_pre_key = Some(forged.to_wire());
            Ok(())
        },
    )?;
    n.bundle(
        "bundle-kem-pre-key-last-resort-flag-flipped",
        "The ML-KEM pre-key's last_resort flag is set on a one-time key; the flag is signed.",
        "Auth(BadSignature)",
        |_, _, b| {
            let kem = b.kem_pre_key.as_mut().ok_or("kem")?;
            kem.last_resort = !kem.last_resort;
            Ok(())
        },
    )?;
    n.bundle(
        "bundle-low-order-one-time-pre-key",
        "The (unsigned) one-time pre-key is an X25519 point of order 8.",
        "Auth(InvalidKey)",
        |_, _, b| {
            let opk = b.one_time_pre_key.as_mut().ok_or("opk")?;
            opk.public_key = LOW_ORDER_X25519.to_vec();
            Ok(())
        },
    )?;
    n.bundle(
        "bundle-low-order-signed-pre-key",
        "The signed pre-key is an X25519 point of order 8, validly signed by Bob's device key: the signature \
         verifies, the key check must still reject it.",
        "Auth(InvalidKey)",
        |s, _, b| {
            let spk = b.signed_pre_key.as_mut().ok_or("spk")?;
            let transcript = [&spk.id.to_be_bytes()[..], &LOW_ORDER_X25519[..]].concat();
            spk.public_key = LOW_ORDER_X25519.to_vec();
            spk.signature = ed25519_sign(&s.bob.secrets.signing, labels::SIGNED_PRE_KEY, &transcript).to_vec();
            Ok(())
        },
    )?;
    n.bundle(
        "bundle-device-not-on-list",
        "The bundle names device 9, which is not on the account's device list (which lists device 2).",
        "Protocol(DeviceNotOnList)",
        |_, _, b| {
            b.device_id = 9;
            Ok(())
        },
    )?;
    n.bundle(
        "bundle-identity-mismatch",
        "The bundle carries identity keys (next 2 × 32 bytes of the RNG) other than those on the device list.",
        "Auth(IdentityMismatch)",
        |_, rng, b| {
            b.identity = Some(wire_identity(&DeviceSecrets::draw(rng).public()));
            Ok(())
        },
    )?;
    Ok(())
}

fn negative_ratchet(n: &mut Negatives) -> GenResult<()> {
    // Tampering: Bob has decrypted message 0; message 1 arrives modified. Control: message 1.
    type Tamper = fn(&mut wire::RatchetMessage) -> GenResult<()>;
    let tampers: [(&str, &str, Tamper); 5] = [
        (
            "ratchet-tampered-ciphertext",
            "One bit of the ciphertext flipped (0x01 of byte 0).",
            |w| flip(&mut w.ciphertext, 0, 0x01),
        ),
        (
            "ratchet-tampered-tag",
            "One bit of the authentication tag flipped (0x80 of the last byte).",
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
            "ratchet-tampered-header-counter",
            "Header N changed from 1 to 2 (the header is authenticated).",
            |w| {
                w.counter = 2;
                Ok(())
            },
        ),
        (
            "ratchet-tampered-header-previous-counter",
            "Header PN changed from 0 to 1 (PN is unused on this chain, but authenticated).",
            |w| {
                w.previous_counter = 1;
                Ok(())
            },
        ),
        (
            "ratchet-tampered-header-ratchet-key",
            "One bit of the header ratchet key flipped (0x02 of byte 0): taken as a new ratchet step, which fails.",
            |w| flip(&mut w.ratchet_key, 0, 0x02),
        ),
    ];
    for (name, what, tamper) in tampers {
        let (seed, mut rng) = n.next_rng()?;
        let (_, mut bob, msgs) = conversation(&mut rng, 2)?;
        let (m0, _) = get(&msgs, 0)?;
        bob.decrypt(m0, NOW_MS)?;
        let (m1, p1) = get(&msgs, 1)?;
        let mut bad = m1.to_wire();
        tamper(&mut bad)?;
        let description =
            format!("Bob has decrypted Alice's message 0; message 1 arrives modified: {what}");
        n.ratchet(
            seed,
            name,
            description,
            "Auth(DecryptFailed)",
            &bob,
            &bad,
            m1,
            p1,
        )?;
    }

    // Replays.
    {
        let (seed, mut rng) = n.next_rng()?;
        let (_, mut bob, msgs) = conversation(&mut rng, 3)?;
        let ((m0, _), (m1, _), (m2, p2)) = (get(&msgs, 0)?, get(&msgs, 1)?, get(&msgs, 2)?);
        bob.decrypt(m0, NOW_MS)?;
        bob.decrypt(m1, NOW_MS)?;
        n.ratchet(
            seed,
            "ratchet-replay",
            "Bob has decrypted messages 0 and 1; message 1 is delivered again.".to_owned(),
            "Protocol(Duplicate)",
            &bob,
            &m1.to_wire(),
            m2,
            p2,
        )?;
    }
    {
        let (seed, mut rng) = n.next_rng()?;
        let (_, mut bob, msgs) = conversation(&mut rng, 3)?;
        let ((m0, _), (m1, _), (m2, p2)) = (get(&msgs, 0)?, get(&msgs, 1)?, get(&msgs, 2)?);
        bob.decrypt(m1, NOW_MS)?;
        bob.decrypt(m0, NOW_MS)?;
        n.ratchet(
            seed,
            "ratchet-replay-skipped-key",
            "Bob decrypted message 1, then message 0 with its stored skipped key (which was then deleted); message 0 \
             is delivered again."
                .to_owned(),
            "Protocol(Duplicate)",
            &bob,
            &m0.to_wire(),
            m2,
            p2,
        )?;
    }
    {
        let (seed, mut rng) = n.next_rng()?;
        let (mut alice, mut bob, msgs) = conversation(&mut rng, 1)?;
        let (m0, _) = get(&msgs, 0)?;
        bob.decrypt(m0, NOW_MS)?;
        // Bob replies (draws his ratchet key), Alice answers on a new chain (draws hers).
        let reply = bob
            .encrypt(b"message 0 from bob", &mut rng, NOW_MS)?
            .message;
        alice.decrypt(&reply, NOW_MS)?;
        let n0 = alice
            .encrypt(b"message 1 from alice", &mut rng, NOW_MS)?
            .message;
        let n1 = alice
            .encrypt(b"message 2 from alice", &mut rng, NOW_MS)?
            .message;
        bob.decrypt(&n0, NOW_MS)?;
        n.ratchet(
            seed,
            "ratchet-replay-old-chain",
            "Bob decrypted Alice's message 0, replied, and decrypted Alice's next message on her new ratchet key; \
             message 0 (from the previous receiving chain) is delivered again. After the setup the RNG yields Bob's \
             reply ratchet key, then Alice's second ratchet key."
                .to_owned(),
            "Protocol(Duplicate)",
            &bob,
            &m0.to_wire(),
            &n1,
            b"message 2 from alice",
        )?;
    }

    // Too far ahead: Alice sent MAX_SKIP + 3 messages; Bob has message 0 (next expected N = 1).
    {
        let (seed, mut rng) = n.next_rng()?;
        let total = usize::try_from(MAX_SKIP)? + 3;
        let (_, mut bob, msgs) = conversation(&mut rng, total)?;
        let (m0, _) = get(&msgs, 0)?;
        bob.decrypt(m0, NOW_MS)?;
        let (far, _) = get(&msgs, total - 1)?;
        let (edge, edge_plaintext) = get(&msgs, total - 2)?;
        n.ratchet(
            seed,
            "ratchet-too-far-ahead",
            format!(
                "Alice sent messages 0..={}; Bob has decrypted message 0 and receives message {} next: {} keys would \
                 have to be skipped, more than MAX_SKIP = {MAX_SKIP}. The control, message {}, skips exactly \
                 MAX_SKIP keys and is accepted.",
                total - 1,
                total - 1,
                total - 2,
                total - 2
            ),
            "Protocol(TooFarAhead)",
            &bob,
            &far.to_wire(),
            edge,
            edge_plaintext,
        )?;
    }

    // Low-order ratchet key in a message.
    {
        let (seed, mut rng) = n.next_rng()?;
        let (_, mut bob, msgs) = conversation(&mut rng, 2)?;
        let ((m0, _), (m1, p1)) = (get(&msgs, 0)?, get(&msgs, 1)?);
        bob.decrypt(m0, NOW_MS)?;
        let mut bad = m1.to_wire();
        bad.ratchet_key = LOW_ORDER_X25519.to_vec();
        n.ratchet(
            seed,
            "ratchet-low-order-ratchet-key",
            "Bob has decrypted message 0; message 1 arrives with its header ratchet key replaced by an X25519 point \
             of order 8 (rejected when the wire message is decoded)."
                .to_owned(),
            "Auth(InvalidKey)",
            &bob,
            &bad,
            m1,
            p1,
        )?;
    }
    Ok(())
}

fn negative_initial(n: &mut Negatives) -> GenResult<()> {
    // Last-resort reuse.
    {
        let (seed, mut rng) = n.next_rng()?;
        let s = Setup::draw(&mut rng, false, true, NOW_MS)?;
        let p1 = b"first session".to_vec();
        let (_, first) = s.first_message(&p1, &mut rng)?;
        // Bob accepts it once (and would record the base key with the last-resort key).
        let im = InitialMessage::try_from(&first)?;
        let mut bob = s.respond(&im, &[])?;
        ensure(
            *bob.session.decrypt(&im.message, NOW_MS)?.plaintext == p1,
            "first use accepted",
        )?;
        // A second session from the same Alice device, with new secrets drawn after the setup:
        // base key, ratchet key, ML-KEM randomness.
        let (base2, ratchet2, m2) = (draw(&mut rng), draw(&mut rng), draw(&mut rng));
        let p2 = b"second session, new base key".to_vec();
        let (_, second) = s.first_message_with(base2, ratchet2, m2, &p2, &mut rng)?;
        n.initial(
            seed,
            "initial-last-resort-reuse",
            "Bob's last-resort ML-KEM pre-key was already used with this base key (listed in used_base_keys) and \
             the session it set up is gone; the same initial message arrives again. The control is a new initial \
             message to the same last-resort key with a fresh base key (base key, ratchet key and ML-KEM \
             randomness are the next 3 × 32 bytes of the RNG after the setup)."
                .to_owned(),
            "Protocol(LastResortReuse)",
            &s,
            &[im.base_key],
            &first,
            &second,
            &p2,
        )?;
    }
    // Low-order base key.
    {
        let (seed, mut rng) = n.next_rng()?;
        let s = Setup::draw(&mut rng, true, false, NOW_MS)?;
        let p = b"initial message".to_vec();
        let (_, good) = s.first_message(&p, &mut rng)?;
        let mut bad = good.clone();
        bad.base_key = LOW_ORDER_X25519.to_vec();
        n.initial(
            seed,
            "initial-low-order-base-key",
            "The initial message's base key EK_A is an X25519 point of order 8.".to_owned(),
            "Auth(InvalidKey)",
            &s,
            &[],
            &bad,
            &good,
            &p,
        )?;
    }
    // Tampered ML-KEM ciphertext: implicit rejection gives another shared secret, so another SK.
    {
        let (seed, mut rng) = n.next_rng()?;
        let s = Setup::draw(&mut rng, true, false, NOW_MS)?;
        let p = b"initial message".to_vec();
        let (_, good) = s.first_message(&p, &mut rng)?;
        let mut bad = good.clone();
        flip(&mut bad.kem_ciphertext, 0, 0x01)?;
        n.initial(
            seed,
            "initial-tampered-kem-ciphertext",
            "One bit of the ML-KEM ciphertext flipped (0x01 of byte 0): decapsulation implicitly rejects, Bob \
             derives a different SK, and the first message does not decrypt."
                .to_owned(),
            "Auth(DecryptFailed)",
            &s,
            &[],
            &bad,
            &good,
            &p,
        )?;
    }
    Ok(())
}

fn negative_device_lists(n: &mut Negatives) -> GenResult<()> {
    // Rollback: draws the account secret, then the identity secrets of devices 1, 2 and 3.
    {
        let (seed, mut rng) = n.next_rng()?;
        let account = AccountKeyPair::from_secret_bytes(&draw(&mut rng));
        let (d1, d2, d3) = (
            DeviceSecrets::draw(&mut rng),
            DeviceSecrets::draw(&mut rng),
            DeviceSecrets::draw(&mut rng),
        );
        let (t1, t2, t3) = (NOW_MS - 3 * DAY_MS, NOW_MS - 2 * DAY_MS, NOW_MS - DAY_MS);
        let v1 = signed_list(&account, 1, t1, &[(1, &d1, t1)])?;
        let v2 = signed_list(&account, 2, t2, &[(1, &d1, t1), (2, &d2, t2)])?;
        let v3 = signed_list(&account, 3, t3, &[(1, &d1, t1), (2, &d2, t2), (3, &d3, t3)])?;
        check_err(
            v1.check_successor(Some(&v2)),
            "Protocol(DeviceListRollback)",
        )?;
        ensure(v3.check_successor(Some(&v2))?, "v3 accepted after v2")?;
        n.push(
            seed,
            "device-list-rollback",
            "Version 2 of the account's list is known; the (validly signed) version 1 is offered again. The \
             control is version 3."
                .to_owned(),
            "Protocol(DeviceListRollback)",
            NegativeInput::DeviceListSuccessor {
                account: hx(account.id().as_bytes()),
                known_device_list: hx(v2.signed_bytes()),
                signed_device_list: hx(v1.signed_bytes()),
                control_signed_device_list: hx(v3.signed_bytes()),
            },
        );
    }
    // Wrong signing key: draws the account secret, device 1's identity secrets, Mallory's account
    // secret.
    {
        let (seed, mut rng) = n.next_rng()?;
        let account_secret = draw(&mut rng);
        let account = AccountKeyPair::from_secret_bytes(&account_secret);
        let d1 = DeviceSecrets::draw(&mut rng);
        let mallory: [u8; KEY_LEN] = draw(&mut rng);
        let bad = hand_signed_list(&account, &mallory, 1, &d1, 1..=1);
        let control = hand_signed_list(&account, &account_secret, 1, &d1, 1..=1);
        let d = verify_case(
            "device-list-wrong-signing-key",
            format!(
                "The list names the account (account_key is the expected account) but is signed by another Ed25519 \
                 key (secret drawn after device 1's identity secrets, public {}).",
                hx(ed25519_public(&mallory))
            ),
            seed,
            &account,
            bad,
            &control,
            "Auth(BadSignature)",
        )?;
        n.vectors.push(d);
    }
    // Device not on the list: draws the account secret, then devices 1 and 2.
    {
        let (seed, mut rng) = n.next_rng()?;
        let account = AccountKeyPair::from_secret_bytes(&draw(&mut rng));
        let (d1, d2) = (DeviceSecrets::draw(&mut rng), DeviceSecrets::draw(&mut rng));
        let t = NOW_MS - DAY_MS;
        let list = signed_list(&account, 1, t, &[(1, &d1, t), (2, &d2, t)])?;
        check_err(list.identity_of(3), "Protocol(DeviceNotOnList)")?;
        list.identity_of(2)?;
        n.push(
            seed,
            "device-not-on-list",
            "The account's list has devices 1 and 2; device 3 is looked up (e.g. a message or bundle claiming to \
             come from it)."
                .to_owned(),
            "Protocol(DeviceNotOnList)",
            NegativeInput::DeviceListMember {
                account: hx(account.id().as_bytes()),
                signed_device_list: hx(list.signed_bytes()),
                device_id: 3,
                control_device_id: 2,
            },
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// sender_keys.json
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
struct Addressed {
    secret: [u8; KEY_LEN],
    account: AccountKeyPair,
    device_id: u32,
}

impl Addressed {
    /// Draws the account secret (32 bytes).
    fn draw(rng: &mut ChaCha20Rng, device_id: u32) -> Self {
        let secret = draw(rng);
        Self {
            secret,
            account: AccountKeyPair::from_secret_bytes(&secret),
            device_id,
        }
    }

    fn address(&self) -> DeviceAddress {
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
fn draw_group_id(rng: &mut ChaCha20Rng) -> GenResult<GroupId> {
    let expected: [u8; 32] = draw(&mut rng.clone());
    let group = GroupId::random(rng);
    ensure(group.0 == expected, "the group id is the next 32 bytes")?;
    Ok(group)
}

/// Draws a sender key with `SenderKeyState::generate` ([`SENDER_KEY_ID`], created now): its
/// Ed25519 signing secret, then its chain key (2 × 32 bytes). Checks the library draws exactly
/// those bytes and returns them with the state.
fn draw_sender_key(
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
fn reparse(m: &GroupMessage) -> GenResult<GroupMessage> {
    let bytes = m.to_wire().encode_to_vec();
    Ok(GroupMessage::try_from(&wire::GroupMessage::decode(
        bytes.as_slice(),
    )?)?)
}

fn sender_keys_file() -> GenResult<SenderKeysFile> {
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

// ---------------------------------------------------------------------------------------------
// negative.json: groups
// ---------------------------------------------------------------------------------------------

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
        let m = self.own.encrypt(self.group, self.sender, &plaintext)?;
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

/// Three accounts with one device each (Alice, Bob, Carol: `Population::new(rng, [1, 1, 1], now)`,
/// so every device holds every account's device list); Alice starts sessions with Bob and Carol
/// and creates a group of the three, and both apply it.
fn device_group(rng: &mut ChaCha20Rng) -> GenResult<(Population, GroupId, [DeviceAddress; 3])> {
    let mut pop = Population::new(rng, &[1, 1, 1], NOW_MS)?;
    let addrs: Vec<DeviceAddress> = pop
        .accounts
        .iter()
        .filter_map(|a| a.first().copied())
        .collect();
    let [alice, bob, carol]: [DeviceAddress; 3] = addrs.try_into().map_err(|_| "three accounts")?;
    pop.ensure_sessions(&alice, &[bob, carol], rng, NOW_MS)?;
    let (g, out) = device_mut(&mut pop, &alice)?.create_group(
        GROUP_NAME,
        &[bob.account, carol.account],
        rng,
        NOW_MS,
    )?;
    deliver_pairwise(&mut pop, &alice, &out, rng)?;
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

fn negative_groups(n: &mut Negatives) -> GenResult<()> {
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
        mallory.encrypt(s.group, s.sender, b"group message 0")?;
        let forged = mallory.encrypt(s.group, s.sender, b"group message 1, forged")?;
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

fn negative_group_devices(n: &mut Negatives) -> GenResult<()> {
    // A removed member's message.
    {
        let (seed, mut rng) = n.next_rng()?;
        let (mut pop, g, [alice, bob, carol]) = device_group(&mut rng)?;
        let c0 = send_group(&mut pop, &carol, &g, b"message 0 from carol", &mut rng)?;
        ensure(
            receive_group(&mut pop, &bob, &c0.message, &mut rng)? == b"message 0 from carol",
            "Bob reads Carol while she is a member",
        )?;
        let out = device_mut(&mut pop, &alice)?.update_group(
            &g,
            &[],
            &[carol.account],
            None,
            &mut rng,
            NOW_MS,
        )?;
        let (to_carol, others): (Vec<Outgoing>, Vec<Outgoing>) =
            out.into_iter().partition(|o| o.to == carol);
        ensure(to_carol.len() == 1, "Carol is told too")?;
        deliver_pairwise(&mut pop, &alice, &others, &mut rng)?;
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
            "Bob's device (its whole store). Alice created a group of Alice, Bob and Carol; Carol sent message 0 \
             under her sender key (key id 1) and Bob decrypted it. Alice then removed Carol; Bob applied the \
             change, Carol's copy of it is still in flight. Carol, unaware, sends her next message (iteration \
             1 of the key Bob holds): Bob must refuse it because Carol is no longer a member. The control is \
             Alice's next message, under the new sender key she made after the removal (key id 2, already \
             distributed to Bob). The RNG drives Population::new(rng, [1, 1, 1], now), then every operation in \
             that order."
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
        let forged = carols.encrypt(g, alice, b"message 1 from alice, forged by carol")?;
        let genuine = GroupMessage::try_from(&wire::GroupMessage::decode(a1.message.as_slice())?)?;
        ensure(
            forged.header == genuine.header,
            "the forged header is Alice's next",
        )?;
        n.group_device(
            seed,
            "group-device-forged-sender",
            "Bob's device (its whole store). Alice created a group of Alice, Bob and Carol; Alice and then Carol \
             sent message 0 and Bob decrypted both (he holds both sender keys, each key id 1). Carol, a member, \
             takes her own sender key from her store and sends a message whose header names Alice's device, key \
             id 1, iteration 1: Bob routes it to Alice's sender key, whose signature check fails. The control is \
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
