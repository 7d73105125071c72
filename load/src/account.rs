//! Test accounts: an account key, device keys, and the signed device list the relay checks.

use ed25519_dalek::{Signer, SigningKey};
use hush_proto::{labels, wire};
use prost::Message;
use rand::RngExt;

pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill(&mut b[..]);
    b
}

/// An account with `devices` devices numbered from 1.
pub(crate) struct Account {
    key: SigningKey,
    pub(crate) devices: Vec<(u32, SigningKey)>,
}

impl Account {
    pub(crate) fn new(devices: u32) -> Self {
        Self {
            key: SigningKey::from_bytes(&random()),
            devices: (1..=devices)
                .map(|i| (i, SigningKey::from_bytes(&random())))
                .collect(),
        }
    }

    pub(crate) fn id(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub(crate) fn device_ids(&self) -> Vec<u32> {
        self.devices.iter().map(|d| d.0).collect()
    }

    /// The serialized `SignedDeviceList` (version 1), signed by the account key.
    pub(crate) fn signed_list(&self) -> Vec<u8> {
        let list = wire::DeviceList {
            account_key: self.id().to_vec(),
            version: 1,
            issued_at: 1,
            devices: self
                .devices
                .iter()
                .map(|(id, k)| wire::DeviceEntry {
                    device_id: *id,
                    identity: Some(wire::DeviceIdentityKey {
                        signing_key: k.verifying_key().to_bytes().to_vec(),
                        dh_key: random::<32>().to_vec(),
                    }),
                    added_at: 1,
                })
                .collect(),
        }
        .encode_to_vec();
        let mut msg = labels::DEVICE_LIST.to_vec();
        msg.extend_from_slice(&list);
        wire::SignedDeviceList {
            signature: self.key.sign(&msg).to_bytes().to_vec(),
            device_list: list,
        }
        .encode_to_vec()
    }
}
