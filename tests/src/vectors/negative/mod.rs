//! `negative.json`: inputs that must be rejected with an exact error, each with a control input
//! the same operation accepts. This module holds the schema and [`Negatives`], which collects the
//! vectors; the cases are in `pairwise` (pre-key bundles, ratchet messages, initial messages,
//! device lists) and `groups` (sender-key messages, then whole devices receiving group messages).
//! Vector `i` is generated from seed `hush-vectors/negative/<i>`, so [`negative_file`] runs the
//! cases in the order of the file.

mod groups;
mod pairwise;
mod sealed;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use self::groups::{negative_group_devices, negative_group_logs, negative_groups};
use self::pairwise::{negative_bundles, negative_device_lists, negative_initial, negative_ratchet};
use self::sealed::negative_sealed;

use super::{
    DeviceKeysRecord, FORMAT_VERSION, GenResult, KemPreKeyRecord, NOW_MS, OneTimePreKeyRecord,
    SignedPreKeyRecord, hx, seed,
};

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

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
    /// Start a group's log from the entry at position 1 of its slot, as a device does for an
    /// invitation (`GroupLog::create(group_id, group_secret, entry)`): the entry must open at
    /// position 1, and be a valid creation of exactly that group id naming the secret's slot.
    GroupLogStart {
        /// The group id the invitation names (32 bytes).
        group_id: String,
        /// The group secret the invitation carries (32 bytes).
        group_secret: String,
        /// The entry at position 1, to reject.
        entry: String,
        /// A group id (32 bytes) whose log the same secret starts.
        control_group_id: String,
        /// Its entry at position 1, accepted.
        control_entry: String,
    },
    /// `hush_core::sealed::open` by the recipient device.
    SealedOpen {
        /// The recipient device (only its X25519 identity secret is used).
        recipient: DeviceKeysRecord,
        /// The envelope to reject.
        envelope: String,
        /// An envelope the recipient opens.
        control_envelope: String,
        /// The content of the control envelope.
        control_content: String,
    },
    /// `hush_core::sealed::open`, then the claimed sender checked against its account's
    /// device list (what `Device::open_sealed` does): the list must be the claimed account's
    /// (`Protocol(UnknownAccount)` otherwise), list the claimed device
    /// (`Protocol(DeviceNotOnList)`) with exactly the identity keys inside
    /// (`Auth(SealedSenderMismatch)`).
    SealedSender {
        /// The recipient device.
        recipient: DeviceKeysRecord,
        /// The sender's account key (32 bytes).
        account: String,
        /// The sender account's encoded `SignedDeviceList`.
        signed_device_list: String,
        /// The envelope to reject.
        envelope: String,
        /// An envelope from a listed device that is accepted.
        control_envelope: String,
        /// The content of the control envelope.
        control_content: String,
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
    /// The error variant, as [`error_name`](super::error_name) renders it (e.g.
    /// `"Auth(BadSignature)"`).
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
// Generator
// ---------------------------------------------------------------------------------------------

/// The vectors of `negative.json`, in the order they are generated.
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
}

pub(super) fn negative_file() -> GenResult<NegativeFile> {
    let mut n = Negatives {
        vectors: Vec::new(),
    };
    negative_bundles(&mut n)?;
    negative_ratchet(&mut n)?;
    negative_initial(&mut n)?;
    negative_device_lists(&mut n)?;
    negative_groups(&mut n)?;
    negative_group_devices(&mut n)?;
    negative_sealed(&mut n)?;
    negative_group_logs(&mut n)?;
    Ok(NegativeFile {
        file: "negative".to_owned(),
        format_version: FORMAT_VERSION,
        description: "Inputs that must be rejected, each with the exact error variant, and a control input the same \
                      operation accepts. Rejections must leave protocol state unchanged."
            .to_owned(),
        vectors: n.vectors,
    })
}
