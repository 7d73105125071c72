//! Published protocol test vectors (`tests/vectors/*.json`): their JSON schema (the types below)
//! and the deterministic generator behind them.
//!
//! The code follows the files: the modules `pqxdh`, `double_ratchet`, `device_lists`,
//! `safety_numbers`, `sender_keys`, `sealed`, `negative` and `backup` each hold the schema types of the file of that
//! name (re-exported here) and its generator. This module holds what they share: the entry points
//! ([`generate_all`], [`write_all`], [`error_name`]), the fixed time and key ids, the records of
//! device and pre-keys several files use, and the helpers every generator draws and checks with
//! (`seed`, `draw`, `hx`, `ensure`, `check_err`).
//!
//! Every vector is generated from a recorded 32-byte seed: all randomness comes from
//! `ChaCha20Rng::from_seed(seed)`, drawn with `fill_bytes` in the order documented in
//! `tests/vectors/README.md` (and next to each `draw` call in the generators). Every private key
//! and random input is recorded (lowercase hex) next to what was derived from it, so a reviewer can
//! check each vector from the recorded values alone, without the seed or this code. Times are fixed
//! constants recorded in the vectors. The JSON is deterministic: structs only (fixed field order),
//! no maps.
//!
//! Regenerate with `cargo run -p hush-tests --bin hush-vectors -- tests/vectors`. The test
//! `vectors_regenerate_byte_identical` (tests/tests/vectors/main.rs) fails when the committed
//! files differ from what [`generate_all`] produces; `vectors_verify_like_a_reviewer` checks every
//! vector from its recorded inputs, one checking module per file next to it.

mod backup;
mod device_lists;
mod double_ratchet;
mod negative;
mod pqxdh;
mod safety_numbers;
mod sealed;
mod sender_keys;

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use hush_core::consts::{KEM_CIPHERTEXT_LEN, KEM_SEED_LEN, KEY_LEN};
use hush_core::device::DeviceError;
use hush_core::device_list::{DeviceEntry, DeviceList, VerifiedDeviceList};
use hush_core::error::Error;
use hush_core::keys::{
    AccountId, AccountKeyPair, DeviceAddress, DeviceIdentity, DeviceIdentityKeyPair,
};
use hush_core::ratchet;
use hush_proto::{Message, labels, wire};
use ml_kem::{Decapsulate, DecapsulationKey768};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use self::backup::backup_file;
use self::device_lists::device_list_file;
use self::double_ratchet::ratchet_file;
use self::negative::negative_file;
use self::pqxdh::pqxdh_file;
use self::safety_numbers::safety_file;
use self::sealed::sealed_file;
use self::sender_keys::sender_keys_file;

pub use self::backup::{
    BackupFile, BackupNegativeVector, BackupSlotRecord, BackupVector, backup_error_name,
};
pub use self::device_lists::{
    DeviceListFile, DeviceListVector, DeviceListVersionRecord, ListedDeviceRecord,
};
pub use self::double_ratchet::{
    RatchetChainRecord, RatchetEvent, RatchetFile, RatchetMessageRecord, RatchetVector,
};
pub use self::negative::{NegativeFile, NegativeInput, NegativeVector, StoreEntryRecord};
pub use self::pqxdh::{FirstMessageRecord, PqxdhFile, PqxdhInputs, PqxdhOutputs, PqxdhVector};
pub use self::safety_numbers::{SafetyComparisonVector, SafetyFile, SafetyNumberVector};
pub use self::sealed::{DeliveryKeyVector, SealedFile, SealedVector};
pub use self::sender_keys::{
    ALICE_SECOND_DEVICE_ID, AddressRecord, CAROL, CAROL_DEVICE_ID, DAVE, DAVE_DEVICE_ID,
    GROUP_NAME, GroupChangeRecord, GroupLogEntryRecord, GroupLogVector, GroupMemberRecord,
    ListVersionRecord, ParticipantRecord, SENDER_KEY_ID, SenderChainStepRecord,
    SenderKeyDeliveryRecord, SenderKeyMessageRecord, SenderKeyReceiverRecord, SenderKeyVector,
    SenderKeysFile,
};

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
pub const FILES: [&str; 8] = [
    "pqxdh.json",
    "double_ratchet.json",
    "device_lists.json",
    "safety_numbers.json",
    "sender_keys.json",
    "sealed.json",
    "negative.json",
    "backup.json",
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

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/// Generates every vector file: `(file name, JSON text)` in the order of [`FILES`].
pub fn generate_all() -> GenResult<Vec<(&'static str, String)>> {
    let [
        pqxdh,
        dr,
        lists,
        safety,
        sender_keys,
        sealed,
        negative,
        backup,
    ] = FILES;
    Ok(vec![
        (pqxdh, to_json(&pqxdh_file()?)?),
        (dr, to_json(&ratchet_file()?)?),
        (lists, to_json(&device_list_file()?)?),
        (safety, to_json(&safety_file()?)?),
        (sender_keys, to_json(&sender_keys_file()?)?),
        (sealed, to_json(&sealed_file()?)?),
        (negative, to_json(&negative_file()?)?),
        (backup, to_json(&backup_file()?)?),
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

/// An error whose variant the vectors record by name: the protocol's [`Error`] and the device
/// facade's [`DeviceError`].
pub trait NamedError: std::fmt::Debug {
    /// The name, as [`error_name`] renders it.
    fn name(&self) -> String;
}

impl NamedError for Error {
    fn name(&self) -> String {
        protocol_error_name(self)
    }
}

impl NamedError for DeviceError {
    fn name(&self) -> String {
        match self {
            DeviceError::Protocol(e) => protocol_error_name(e),
            DeviceError::Store(_) => "Store".to_owned(),
            DeviceError::Backup(e) => format!("Backup({})", {
                let d = format!("{e:?}");
                d.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            }),
        }
    }
}

/// The name of an error variant as recorded in `expected_error`: `"Malformed"`, `"Store"` (a
/// store failure of the device facade), or `"Auth(<AuthError variant>)"` /
/// `"Protocol(<ProtocolError variant>)"` without the variant's payload (e.g.
/// `"Protocol(TooFarAhead)"`).
pub fn error_name(e: &impl NamedError) -> String {
    e.name()
}

fn protocol_error_name(e: &Error) -> String {
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
fn check_err<T>(result: Result<T, impl NamedError>, expected: &str) -> GenResult<()> {
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

fn get<T>(items: &[T], i: usize) -> GenResult<&T> {
    items.get(i).ok_or_else(|| format!("no item {i}").into())
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

    /// The consent to being listed as `device_id` of `account`, signed from the raw secret over
    /// the transcript written out here (not through the core).
    fn consent(&self, account: &AccountId, device_id: u32) -> [u8; 64] {
        let transcript = [
            account.as_bytes().as_slice(),
            &device_id.to_be_bytes(),
            &ed25519_public(&self.signing),
            &x25519_public(&self.dh),
        ]
        .concat();
        ed25519_sign(&self.signing, labels::DEVICE_CONSENT, &transcript)
    }

    fn listed(&self, account: &AccountId, device_id: u32, added_at: u64) -> ListedDeviceRecord {
        ListedDeviceRecord {
            device_id,
            identity_signing_secret: hx(self.signing),
            identity_signing_public: hx(ed25519_public(&self.signing)),
            identity_dh_secret: hx(self.dh),
            identity_dh_public: hx(x25519_public(&self.dh)),
            added_at,
            consent: hx(self.consent(account, device_id)),
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
                consent: self.identity.consent(&self.account.id(), self.device_id),
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
