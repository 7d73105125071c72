//! Signed, versioned device lists.
//!
//! An account's identity key signs the list of its devices. The signature covers
//! `"Hush-DeviceList-v1" || device_list`, where `device_list` is the exact serialized
//! [`DeviceList`](hush_proto::wire::DeviceList) carried in the [`SignedDeviceList`](hush_proto::wire::SignedDeviceList),
//! so no canonical re-encoding is ever needed. A verifier accepts a list only if the signature
//! verifies under the account key *inside* the list, that key is the account expected, the version is
//! not older than the one already accepted, and an equal version carries identical bytes.

use std::collections::BTreeMap;

use hush_proto::{Message, transcripts, wire};

use crate::consts::MAX_DEVICES_PER_ACCOUNT;
use crate::error::{AuthError, Error, ProtocolError, Result};
use crate::keys::{AccountId, AccountKeyPair, DeviceAddress, DeviceIdentity};

/// One device on a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    /// Device id, unique within the account.
    pub device_id: u32,
    /// The device's identity keys.
    pub identity: DeviceIdentity,
    /// When the device was added (ms since the Unix epoch).
    pub added_at: u64,
}

/// The content of a device list, before signing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceList {
    /// The account.
    pub account: AccountId,
    /// Strictly increasing version.
    pub version: u64,
    /// When it was issued (ms since the Unix epoch).
    pub issued_at: u64,
    /// The devices, by id.
    pub devices: BTreeMap<u32, DeviceEntry>,
}

impl DeviceList {
    /// Signs the list with the account key. The key must be the list's account.
    pub fn sign(&self, account: &AccountKeyPair) -> Result<VerifiedDeviceList> {
        if account.id() != self.account {
            return Err(
                ProtocolError::Misuse("device list signed by another account's key").into(),
            );
        }
        if self.devices.len() > MAX_DEVICES_PER_ACCOUNT {
            return Err(ProtocolError::TooManyDevices(self.devices.len()).into());
        }
        let raw = wire::DeviceList {
            account_key: self.account.as_bytes().to_vec(),
            version: self.version,
            issued_at: self.issued_at,
            devices: self
                .devices
                .values()
                .map(|d| wire::DeviceEntry {
                    device_id: d.device_id,
                    identity: Some(d.identity.to_proto()),
                    added_at: d.added_at,
                })
                .collect(),
        };
        let bytes = raw.encode_to_vec();
        let signature = account
            .sign(&[], &transcripts::device_list(&bytes))
            .to_vec();
        let signed = wire::SignedDeviceList {
            device_list: bytes.clone(),
            signature,
        }
        .encode_to_vec();
        Ok(VerifiedDeviceList {
            list: self.clone(),
            signed,
            list_bytes: bytes,
        })
    }
}

/// A refusal of the checks shared with the relay, as client-core reports it.
fn shared_check(e: hush_verify::VerifyError) -> Error {
    use hush_verify::VerifyError as V;
    match e {
        V::Malformed(what) => Error::malformed(what, "refused by the device-list checks"),
        V::InvalidKey(what) => AuthError::InvalidKey(what).into(),
        V::BadSignature(what) => AuthError::BadSignature(what).into(),
        V::WrongAccount => AuthError::BadSignature("device list (wrong account)").into(),
        V::TooManyDevices(n, _) => ProtocolError::TooManyDevices(n).into(),
    }
}

/// A device list whose signature has been verified. Only [`VerifiedDeviceList::verify`] and
/// [`DeviceList::sign`] produce one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedDeviceList {
    list: DeviceList,
    signed: Vec<u8>,
    /// The signed `DeviceList` bytes inside `signed` (field 1), what the signature covers.
    list_bytes: Vec<u8>,
}

impl VerifiedDeviceList {
    /// Verifies a serialized [`SignedDeviceList`](wire::SignedDeviceList) for `expected` account.
    pub fn verify(bytes: &[u8], expected: &AccountId) -> Result<Self> {
        // The checks the relay makes too (`hush_verify`): decoding, the account, the account
        // key's signature, the number of devices, their signing keys.
        hush_verify::CheckedList::check(bytes, Some(expected.as_bytes()), MAX_DEVICES_PER_ACCOUNT)
            .map_err(shared_check)?;
        let signed = wire::SignedDeviceList::decode(bytes)
            .map_err(|_| Error::malformed("signed device list", "does not decode"))?;
        let raw = wire::DeviceList::decode(signed.device_list.as_slice())
            .map_err(|_| Error::malformed("device list", "does not decode"))?;
        let account = AccountId::from_bytes(&raw.account_key)?;
        let mut devices = BTreeMap::new();
        for d in &raw.devices {
            let identity = DeviceIdentity::from_proto(d.identity.as_ref())?;
            let entry = DeviceEntry {
                device_id: d.device_id,
                identity,
                added_at: d.added_at,
            };
            if devices.insert(d.device_id, entry).is_some() {
                return Err(Error::malformed("device list", "duplicate device id"));
            }
        }
        let list = DeviceList {
            account,
            version: raw.version,
            issued_at: raw.issued_at,
            devices,
        };
        Ok(Self {
            list,
            signed: bytes.to_vec(),
            list_bytes: signed.device_list,
        })
    }

    /// Accepts `self` as the successor of `known` (the list accepted before, if any): rejects a
    /// rollback to an older version and a different list under the same version.
    /// Returns `true` when the list is new, `false` when it carries the same signed list bytes as
    /// `known` (the `SignedDeviceList` wrapper around them may be encoded differently: only the
    /// bytes the account key signed are compared, so a re-encoded copy is not a conflict).
    pub fn check_successor(&self, known: Option<&Self>) -> Result<bool> {
        let Some(known) = known else { return Ok(true) };
        if known.list.account != self.list.account {
            return Err(ProtocolError::Misuse("device lists of different accounts").into());
        }
        match self.list.version.cmp(&known.list.version) {
            std::cmp::Ordering::Less => Err(ProtocolError::DeviceListRollback {
                known: known.list.version,
                got: self.list.version,
            }
            .into()),
            std::cmp::Ordering::Equal if self.list_bytes == known.list_bytes => Ok(false),
            std::cmp::Ordering::Equal => {
                Err(ProtocolError::DeviceListConflict(self.list.version).into())
            }
            std::cmp::Ordering::Greater => Ok(true),
        }
    }

    /// The verified content.
    pub const fn list(&self) -> &DeviceList {
        &self.list
    }

    /// The serialized signed list, exactly as verified (what a relay stores and serves).
    pub fn signed_bytes(&self) -> &[u8] {
        &self.signed
    }

    /// The serialized `DeviceList` the account key signed (field 1 of the signed list).
    pub fn list_bytes(&self) -> &[u8] {
        &self.list_bytes
    }

    /// The identity of a device on the list, or `DeviceNotOnList`.
    pub fn identity_of(&self, device_id: u32) -> Result<DeviceIdentity> {
        self.list
            .devices
            .get(&device_id)
            .map(|d| d.identity)
            .ok_or(ProtocolError::DeviceNotOnList.into())
    }

    /// All device addresses on the list.
    pub fn addresses(&self) -> impl Iterator<Item = DeviceAddress> + '_ {
        let account = self.list.account;
        self.list
            .devices
            .keys()
            .map(move |&device_id| DeviceAddress { account, device_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DeviceIdentityKeyPair;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn list(rng: &mut ChaCha20Rng, account: &AccountKeyPair, version: u64, n: u32) -> DeviceList {
        let devices = (1..=n)
            .map(|id| {
                let identity = DeviceIdentityKeyPair::generate(rng).public();
                (
                    id,
                    DeviceEntry {
                        device_id: id,
                        identity,
                        added_at: 5,
                    },
                )
            })
            .collect();
        DeviceList {
            account: account.id(),
            version,
            issued_at: 10,
            devices,
        }
    }

    #[test]
    fn sign_verify_and_rollback() {
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let acct = AccountKeyPair::generate(&mut rng);
        let v1 = list(&mut rng, &acct, 1, 2).sign(&acct).unwrap();
        let v2 = list(&mut rng, &acct, 2, 3).sign(&acct).unwrap();
        let back = VerifiedDeviceList::verify(v1.signed_bytes(), &acct.id()).unwrap();
        assert_eq!(back, v1);
        assert!(v2.check_successor(Some(&v1)).unwrap());
        assert!(!v2.check_successor(Some(&v2)).unwrap());
        assert!(matches!(
            v1.check_successor(Some(&v2)),
            Err(Error::Protocol(ProtocolError::DeviceListRollback {
                known: 2,
                got: 1
            }))
        ));
        let other_v2 = list(&mut rng, &acct, 2, 1).sign(&acct).unwrap();
        assert!(matches!(
            other_v2.check_successor(Some(&v2)),
            Err(Error::Protocol(ProtocolError::DeviceListConflict(2)))
        ));
        assert!(v2.identity_of(3).is_ok());
        assert!(matches!(
            v2.identity_of(4),
            Err(Error::Protocol(ProtocolError::DeviceNotOnList))
        ));
    }

    #[test]
    fn wrong_signer_and_tampering_rejected() {
        let mut rng = ChaCha20Rng::from_seed([2; 32]);
        let acct = AccountKeyPair::generate(&mut rng);
        let mallory = AccountKeyPair::generate(&mut rng);
        let l = list(&mut rng, &acct, 1, 1);
        assert!(l.sign(&mallory).is_err());
        let good = l.sign(&acct).unwrap();
        assert!(VerifiedDeviceList::verify(good.signed_bytes(), &mallory.id()).is_err());
        // Flip one bit anywhere: decode fails or the signature fails; never a panic.
        let bytes = good.signed_bytes().to_vec();
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x04;
            assert!(
                VerifiedDeviceList::verify(&t, &acct.id()).is_err(),
                "byte {i}"
            );
        }
        // Unsigned list.
        let mut raw = wire::SignedDeviceList::decode(bytes.as_slice()).unwrap();
        raw.signature.clear();
        assert!(VerifiedDeviceList::verify(&raw.encode_to_vec(), &acct.id()).is_err());
    }

    /// Appends an unknown field (number 15, varint) to a protobuf encoding.
    fn with_unknown_field(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes.extend_from_slice(&[15 << 3, 42]);
        bytes
    }

    #[test]
    fn a_reencoded_device_list_is_not_a_conflict() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let acct = AccountKeyPair::generate(&mut rng);
        let v2 = list(&mut rng, &acct, 2, 2).sign(&acct).unwrap();
        let raw = wire::SignedDeviceList::decode(v2.signed_bytes()).unwrap();
        // Three other encodings of the same wrapper: an extra unknown field, the fields in the
        // other order, and field 1 written twice (the last one wins).
        let unknown = with_unknown_field(v2.signed_bytes().to_vec());
        let mut reordered = wire::SignedDeviceList {
            device_list: Vec::new(),
            signature: raw.signature.clone(),
        }
        .encode_to_vec();
        reordered.extend(
            wire::SignedDeviceList {
                device_list: raw.device_list.clone(),
                signature: Vec::new(),
            }
            .encode_to_vec(),
        );
        let mut duplicated = wire::SignedDeviceList {
            device_list: b"overwritten".to_vec(),
            signature: Vec::new(),
        }
        .encode_to_vec();
        duplicated.extend_from_slice(v2.signed_bytes());
        for other in [unknown, reordered, duplicated] {
            assert_ne!(other.as_slice(), v2.signed_bytes());
            let again = VerifiedDeviceList::verify(&other, &acct.id()).unwrap();
            assert_eq!(again.list_bytes(), v2.list_bytes());
            assert!(!again.check_successor(Some(&v2)).unwrap());
            assert!(!v2.check_successor(Some(&again)).unwrap());
        }
    }

    #[test]
    fn different_signed_bytes_at_the_same_version_conflict() {
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let acct = AccountKeyPair::generate(&mut rng);
        let l = list(&mut rng, &acct, 2, 2);
        let v2 = l.sign(&acct).unwrap();
        // Same content, another timestamp: other signed bytes under the same version.
        let mut l2 = l.clone();
        l2.issued_at += 1;
        let other = l2.sign(&acct).unwrap();
        assert!(matches!(
            other.check_successor(Some(&v2)),
            Err(Error::Protocol(ProtocolError::DeviceListConflict(2)))
        ));
        // The signed list re-encoded with an unknown field inside is other signed bytes too.
        let inner = with_unknown_field(v2.list_bytes().to_vec());
        let resigned = wire::SignedDeviceList {
            signature: acct.sign(&[], &transcripts::device_list(&inner)).to_vec(),
            device_list: inner,
        }
        .encode_to_vec();
        let resigned = VerifiedDeviceList::verify(&resigned, &acct.id()).unwrap();
        assert_eq!(resigned.list(), v2.list());
        assert!(matches!(
            resigned.check_successor(Some(&v2)),
            Err(Error::Protocol(ProtocolError::DeviceListConflict(2)))
        ));
    }
}
