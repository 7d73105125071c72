//! Test accounts: an account key and device keys, and the device lists and pre-keys they sign
//! with the transcripts of `hush_proto::transcripts`, the ones client-core signs with.

use ed25519_dalek::{Signer, SigningKey};
use hush_proto::relay_api as api;
use hush_proto::{transcripts, wire};
use prost::Message;
use rand::RngExt;

/// Length of an ML-KEM-768 encapsulation key.
const KEM_PUBLIC_LEN: usize = 1184;
/// Id of the last-resort ML-KEM pre-key of [`TestAccount::pre_keys`].
const LAST_RESORT_ID: u32 = 999_999;

/// `N` random bytes.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill(&mut b[..]);
    b
}

/// An account with its account key and its devices: (id, signing key, X25519 public key).
pub struct TestAccount {
    /// The account key.
    pub key: SigningKey,
    /// Its devices.
    pub devices: Vec<(u32, SigningKey, [u8; 32])>,
    /// The version of its next signed list.
    pub version: u64,
}

impl TestAccount {
    /// An account with `devices` devices numbered from 1.
    pub fn new(devices: u32) -> Self {
        Self {
            key: SigningKey::from_bytes(&random()),
            devices: (1..=devices)
                .map(|i| (i, SigningKey::from_bytes(&random()), random()))
                .collect(),
            version: 1,
        }
    }

    /// The account id (its public key).
    pub fn id(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The signing key of device `id`.
    pub fn device(&self, id: u32) -> &SigningKey {
        &self.devices.iter().find(|d| d.0 == id).unwrap().1
    }

    /// The ids of its devices.
    pub fn device_ids(&self) -> Vec<u32> {
        self.devices.iter().map(|d| d.0).collect()
    }

    /// Adds device `id` (the list's version goes up).
    pub fn add_device(&mut self, id: u32) {
        self.devices
            .push((id, SigningKey::from_bytes(&random()), random()));
        self.version += 1;
    }

    /// Removes device `id` (the list's version goes up).
    pub fn remove_device(&mut self, id: u32) {
        self.devices.retain(|d| d.0 != id);
        self.version += 1;
    }

    /// The serialized `SignedDeviceList`, signed by `signer` (normally the account key).
    pub fn signed_list_by(&self, signer: &SigningKey) -> Vec<u8> {
        let list = wire::DeviceList {
            account_key: self.id().to_vec(),
            version: self.version,
            issued_at: 1,
            devices: self
                .devices
                .iter()
                .map(|(id, k, dh)| {
                    let signing_key = k.verifying_key().to_bytes();
                    let consent = transcripts::device_consent(&self.id(), *id, &signing_key, dh);
                    wire::DeviceEntry {
                        device_id: *id,
                        identity: Some(wire::DeviceIdentityKey {
                            signing_key: signing_key.to_vec(),
                            dh_key: dh.to_vec(),
                        }),
                        added_at: 1,
                        consent: k.sign(&consent).to_bytes().to_vec(),
                    }
                })
                .collect(),
        }
        .encode_to_vec();
        wire::SignedDeviceList {
            signature: signer
                .sign(&transcripts::device_list(&list))
                .to_bytes()
                .to_vec(),
            device_list: list,
        }
        .encode_to_vec()
    }

    /// The serialized `SignedDeviceList`, signed by the account key.
    pub fn signed_list(&self) -> Vec<u8> {
        self.signed_list_by(&self.key)
    }

    /// A pre-key upload for `device` with `otk` one-time X25519 keys and `kem` one-time ML-KEM
    /// keys (random bytes of the right sizes, signed); one-time key ids start at `first_id`.
    pub fn pre_keys(&self, device: u32, first_id: u32, otk: u32, kem: u32) -> api::UploadPreKeys {
        let k = self.device(device);
        let spk_pub = random::<32>();
        let spk = wire::SignedPreKey {
            id: 1,
            public_key: spk_pub.to_vec(),
            signature: k
                .sign(&transcripts::signed_pre_key(1, &spk_pub))
                .to_bytes()
                .to_vec(),
        };
        let kem_key = |id: u32, last_resort: bool| {
            let public: Vec<u8> = (0..KEM_PUBLIC_LEN).map(|_| rand::rng().random()).collect();
            let signature = k.sign(&transcripts::kem_pre_key(id, last_resort, &public));
            wire::KemPreKey {
                id,
                public_key: public,
                signature: signature.to_bytes().to_vec(),
                last_resort,
            }
            .encode_to_vec()
        };
        api::UploadPreKeys {
            signed_pre_key: spk.encode_to_vec(),
            last_resort_kem_pre_key: kem_key(LAST_RESORT_ID, true),
            one_time_pre_keys: (first_id..first_id + otk)
                .map(|id| {
                    wire::OneTimePreKey {
                        id,
                        public_key: random::<32>().to_vec(),
                    }
                    .encode_to_vec()
                })
                .collect(),
            kem_pre_keys: (first_id..first_id + kem)
                .map(|id| kem_key(id, false))
                .collect(),
        }
    }

    /// The account key's proof for `name` (normalized).
    pub fn username_proof(&self, name: &str) -> Vec<u8> {
        sign_username(&self.key, name, self.id())
    }
}

/// Signs the relay authentication transcript (docs/RELAY_PROTOCOL.md §4).
pub fn sign_auth(
    exporter: &[u8; 32],
    nonce: &[u8],
    account: [u8; 32],
    device: u32,
    key: &SigningKey,
) -> Vec<u8> {
    // A nonce of the wrong length is signed as given (tests of the relay's refusals use them).
    let mut t = hush_proto::labels::RELAY_AUTH.to_vec();
    t.extend_from_slice(exporter);
    t.extend_from_slice(nonce);
    t.extend_from_slice(&account);
    t.extend_from_slice(&device.to_be_bytes());
    key.sign(&t).to_bytes().to_vec()
}

/// Signs the username transcript (docs/RELAY_PROTOCOL.md §12) with `key` (normally the account
/// key).
pub fn sign_username(key: &SigningKey, name: &str, account: [u8; 32]) -> Vec<u8> {
    key.sign(&transcripts::username(name.as_bytes(), &account))
        .to_bytes()
        .to_vec()
}
