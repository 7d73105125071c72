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

use crate::consts::{MAX_DEVICES_PER_ACCOUNT, SIGNATURE_LEN};
use crate::error::{AuthError, Error, ProtocolError, Result};
use crate::keys::{AccountId, AccountKeyPair, DeviceAddress, DeviceIdentity, array};

/// One device on a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    /// Device id, unique within the account.
    pub device_id: u32,
    /// The device's identity keys.
    pub identity: DeviceIdentity,
    /// When the device was added (ms since the Unix epoch).
    pub added_at: u64,
    /// The device's consent to being listed: its signature over
    /// `"Hush-DeviceConsent-v1" ‖ account ‖ u32be(device_id) ‖ signing key ‖ DH key` (§3.1).
    pub consent: [u8; SIGNATURE_LEN],
}

impl DeviceEntry {
    /// An entry from a device's consent, added at `added_at`.
    pub const fn from_consent(consent: &DeviceConsent, added_at: u64) -> Self {
        Self {
            device_id: consent.device_id,
            identity: consent.identity,
            added_at,
            consent: consent.signature,
        }
    }

    /// Checks the entry's consent for `account`.
    pub fn verify_consent(&self, account: &AccountId) -> Result<()> {
        DeviceConsent {
            device_id: self.device_id,
            identity: self.identity,
            signature: self.consent,
        }
        .verify(account)
    }
}

/// What a device hands to the device holding its account key so that it can be listed: its id,
/// its identity and its consent signature for the account (§3.1). Encoded in 132 bytes as
/// `u32be(device_id) ‖ signing key ‖ DH key ‖ signature`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceConsent {
    /// The device id it agrees to be listed under.
    pub device_id: u32,
    /// Its identity.
    pub identity: DeviceIdentity,
    /// Its signature (see [`DeviceEntry::consent`]).
    pub signature: [u8; SIGNATURE_LEN],
}

impl DeviceConsent {
    /// Length of [`DeviceConsent::to_bytes`].
    pub const LEN: usize = 4 + 64 + SIGNATURE_LEN;

    /// The 132-byte encoding.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let (id, rest) = out.split_at_mut(4);
        let (identity, signature) = rest.split_at_mut(64);
        id.copy_from_slice(&self.device_id.to_be_bytes());
        identity.copy_from_slice(&self.identity.to_bytes());
        signature.copy_from_slice(&self.signature);
        out
    }

    /// Parses the 132-byte encoding (validating the identity keys, not the signature).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != Self::LEN {
            return Err(Error::malformed("device consent", "must be 132 bytes"));
        }
        let (id, rest) = bytes
            .split_at_checked(4)
            .ok_or(Error::malformed("device consent", "must be 132 bytes"))?;
        let (identity, signature) = rest
            .split_at_checked(64)
            .ok_or(Error::malformed("device consent", "must be 132 bytes"))?;
        Ok(Self {
            device_id: u32::from_be_bytes(array(id, "device consent", "bad device id")?),
            identity: DeviceIdentity::from_bytes(identity)?,
            signature: array(signature, "device consent", "bad signature")?,
        })
    }

    /// Checks the signature for `account`: `Auth(BadDeviceConsent)` if it does not verify.
    pub fn verify(&self, account: &AccountId) -> Result<()> {
        hush_verify::device_consent(
            account.as_bytes(),
            self.device_id,
            self.identity.signing_key(),
            self.identity.dh_key(),
            &self.signature,
        )
        .map_err(shared_check)
    }
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
        for d in self.devices.values() {
            d.verify_consent(&self.account)?;
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
                    consent: d.consent.to_vec(),
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
        V::MissingConsent(id) => AuthError::MissingDeviceConsent(id).into(),
        V::BadConsent(id) => AuthError::BadDeviceConsent(id).into(),
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
            // The consent was checked by `hush_verify` above.
            let entry = DeviceEntry {
                device_id: d.device_id,
                identity,
                added_at: d.added_at,
                consent: array(&d.consent, "device list", "consent must be 64 bytes")?,
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
                let keys = DeviceIdentityKeyPair::generate(rng);
                (
                    id,
                    DeviceEntry {
                        device_id: id,
                        identity: keys.public(),
                        added_at: 5,
                        consent: keys.consent(&account.id(), id),
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

    /// Signs `raw` as `acct` would, without the checks of [`DeviceList::sign`].
    fn sign_raw(acct: &AccountKeyPair, raw: &wire::DeviceList) -> Vec<u8> {
        let inner = raw.encode_to_vec();
        wire::SignedDeviceList {
            signature: acct.sign(&[], &transcripts::device_list(&inner)).to_vec(),
            device_list: inner,
        }
        .encode_to_vec()
    }

    #[test]
    fn an_entry_without_a_valid_consent_is_refused() {
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        let acct = AccountKeyPair::generate(&mut rng);
        let other = AccountKeyPair::generate(&mut rng);
        let good = list(&mut rng, &acct, 1, 2).sign(&acct).unwrap();
        let raw = wire::DeviceList::decode(good.list_bytes()).unwrap();
        let refused = |raw: &wire::DeviceList| {
            VerifiedDeviceList::verify(&sign_raw(&acct, raw), &acct.id()).unwrap_err()
        };
        // No consent at all.
        let mut missing = raw.clone();
        missing.devices[1].consent.clear();
        assert!(matches!(
            refused(&missing),
            Error::Auth(AuthError::MissingDeviceConsent(2))
        ));
        // A consent with one bit flipped, one of another device, one cut short.
        let mut flipped = raw.clone();
        flipped.devices[0].consent[10] ^= 1;
        assert!(matches!(
            refused(&flipped),
            Error::Auth(AuthError::BadDeviceConsent(1))
        ));
        let mut swapped = raw.clone();
        swapped.devices[0].consent = raw.devices[1].consent.clone();
        assert!(matches!(
            refused(&swapped),
            Error::Auth(AuthError::BadDeviceConsent(1))
        ));
        let mut short = raw.clone();
        short.devices[1].consent.truncate(63);
        assert!(matches!(
            refused(&short),
            Error::Auth(AuthError::BadDeviceConsent(2))
        ));
        // The device's consent to another id, or to another account, does not carry over.
        let keys = DeviceIdentityKeyPair::generate(&mut rng);
        for consent in [keys.consent(&acct.id(), 4), keys.consent(&other.id(), 3)] {
            let mut moved = raw.clone();
            moved.devices.push(wire::DeviceEntry {
                device_id: 3,
                identity: Some(keys.public().to_proto()),
                added_at: 1,
                consent: consent.to_vec(),
            });
            assert!(matches!(
                refused(&moved),
                Error::Auth(AuthError::BadDeviceConsent(3))
            ));
        }
        // The account cannot sign such a list through `sign` either.
        let mut l = good.list().clone();
        if let Some(e) = l.devices.get_mut(&2) {
            e.consent = [0; 64];
        }
        assert!(matches!(
            l.sign(&acct).unwrap_err(),
            Error::Auth(AuthError::BadDeviceConsent(2))
        ));
        // And the consent round-trips through its 132-byte hand-off encoding.
        let c = DeviceConsent {
            device_id: 3,
            identity: keys.public(),
            signature: keys.consent(&acct.id(), 3),
        };
        let back = DeviceConsent::from_bytes(&c.to_bytes()).unwrap();
        assert_eq!(back, c);
        back.verify(&acct.id()).unwrap();
        assert!(back.verify(&other.id()).is_err());
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
