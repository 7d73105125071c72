//! The checks on signed public material that the relay and clients must agree on, written once:
//! signed device lists, pre-key signatures, connection authentication and username proofs. The
//! relay makes them before it stores anything (keeping garbage and forgeries out); client-core
//! makes the same device-list check before it trusts a list, and more of its own on top. The
//! signed bytes are the transcripts of [`hush_proto::transcripts`].

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, VerifyingKey};
use hush_proto::transcripts;
use hush_proto::wire::{DeviceList, KemPreKey, OneTimePreKey, SignedDeviceList, SignedPreKey};
use prost::Message;

/// Length of an account id (its Ed25519 public key).
pub const ACCOUNT_LEN: usize = 32;
/// Length of the relay's authentication challenge.
pub const CHALLENGE_LEN: usize = 32;
/// Length of the TLS exporter value authentication binds to.
pub const EXPORTER_LEN: usize = 32;

/// Length of an X25519 public key.
const X25519_LEN: usize = 32;
/// Length of an ML-KEM-768 encapsulation key.
const MLKEM768_EK_LEN: usize = 1184;

/// Why public material was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// It does not decode or a field has the wrong size.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A key is not a valid, canonical, non-small-order Ed25519 key.
    #[error("invalid key in {0}")]
    InvalidKey(&'static str),
    /// A signature does not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// The list names another account.
    #[error("device list of another account")]
    WrongAccount,
    /// More devices than allowed.
    #[error("{0} devices is over the limit of {1}")]
    TooManyDevices(usize, usize),
    /// A listed device (by id) gave no consent to being listed.
    #[error("device {0} on the list carries no consent")]
    MissingConsent(u32),
    /// A listed device's (by id) consent signature does not verify.
    #[error("bad consent signature of device {0}")]
    BadConsent(u32),
}

/// An Ed25519 public key, canonical and not of small order.
pub fn ed25519_key(bytes: &[u8], what: &'static str) -> Result<VerifyingKey, VerifyError> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| VerifyError::Malformed(what))?;
    let key = VerifyingKey::from_bytes(&arr).map_err(|_| VerifyError::InvalidKey(what))?;
    if key.to_edwards().compress().to_bytes() != arr || key.is_weak() {
        return Err(VerifyError::InvalidKey(what));
    }
    Ok(key)
}

/// Verifies `sig` by `key` over `transcript` (strict: no malleable signatures).
fn verify_sig(
    key: &VerifyingKey,
    transcript: &[u8],
    sig: &[u8],
    what: &'static str,
) -> Result<(), VerifyError> {
    let sig = Signature::from_slice(sig).map_err(|_| VerifyError::Malformed(what))?;
    key.verify_strict(transcript, &sig)
        .map_err(|_| VerifyError::BadSignature(what))
}

/// A device list whose account signature verified.
#[derive(Clone, Debug)]
pub struct CheckedList {
    /// The account.
    pub account: [u8; ACCOUNT_LEN],
    /// Its version.
    pub version: u64,
    /// Device id → that device's Ed25519 signing key.
    pub devices: BTreeMap<u32, [u8; 32]>,
}

impl CheckedList {
    /// Checks a serialized `SignedDeviceList` of `expected` (or of whichever account signed it when
    /// `expected` is `None`, as for account creation).
    pub fn check(
        bytes: &[u8],
        expected: Option<&[u8; ACCOUNT_LEN]>,
        max_devices: usize,
    ) -> Result<Self, VerifyError> {
        let signed = SignedDeviceList::decode(bytes)
            .map_err(|_| VerifyError::Malformed("signed device list"))?;
        let list = DeviceList::decode(signed.device_list.as_slice())
            .map_err(|_| VerifyError::Malformed("device list"))?;
        let account: [u8; ACCOUNT_LEN] = list
            .account_key
            .as_slice()
            .try_into()
            .map_err(|_| VerifyError::Malformed("account key"))?;
        if expected.is_some_and(|e| e != &account) {
            return Err(VerifyError::WrongAccount);
        }
        let key = ed25519_key(&account, "account key")?;
        verify_sig(
            &key,
            &transcripts::device_list(&signed.device_list),
            &signed.signature,
            "device list",
        )?;
        if list.version == 0 {
            return Err(VerifyError::Malformed("device list version"));
        }
        if list.devices.len() > max_devices {
            return Err(VerifyError::TooManyDevices(list.devices.len(), max_devices));
        }
        let mut devices = BTreeMap::new();
        for d in &list.devices {
            let id = d
                .identity
                .as_ref()
                .ok_or(VerifyError::Malformed("device identity"))?;
            ed25519_key(&id.signing_key, "device signing key")?;
            if id.dh_key.len() != X25519_LEN {
                return Err(VerifyError::Malformed("device DH key"));
            }
            let sk: [u8; 32] = id
                .signing_key
                .as_slice()
                .try_into()
                .map_err(|_| VerifyError::Malformed("device signing key"))?;
            if d.consent.is_empty() {
                return Err(VerifyError::MissingConsent(d.device_id));
            }
            device_consent(&account, d.device_id, &sk, &id.dh_key, &d.consent)?;
            if devices.insert(d.device_id, sk).is_some() {
                return Err(VerifyError::Malformed("duplicate device id"));
            }
        }
        if devices.is_empty() {
            return Err(VerifyError::Malformed("empty device list"));
        }
        Ok(Self {
            account,
            version: list.version,
            devices,
        })
    }
}

/// Checks a device's consent to being listed as `device_id` of `account` with the identity
/// `signing_key ‖ dh_key`: `signature` by `signing_key` over
/// [`hush_proto::transcripts::device_consent`]. Any failure (wrong length, invalid key, bad
/// signature) is [`VerifyError::BadConsent`].
pub fn device_consent(
    account: &[u8],
    device_id: u32,
    signing_key: &[u8],
    dh_key: &[u8],
    signature: &[u8],
) -> Result<(), VerifyError> {
    let key = ed25519_key(signing_key, "device signing key")
        .map_err(|_| VerifyError::BadConsent(device_id))?;
    let transcript = transcripts::device_consent(account, device_id, signing_key, dh_key);
    verify_sig(&key, &transcript, signature, "device consent")
        .map_err(|_| VerifyError::BadConsent(device_id))
}

/// Checks a serialized `SignedPreKey` against the device's signing key; returns its id.
pub fn signed_pre_key(bytes: &[u8], device_key: &[u8; 32]) -> Result<u32, VerifyError> {
    let spk = SignedPreKey::decode(bytes).map_err(|_| VerifyError::Malformed("signed pre-key"))?;
    if spk.public_key.len() != X25519_LEN {
        return Err(VerifyError::Malformed("signed pre-key"));
    }
    let key = ed25519_key(device_key, "device signing key")?;
    verify_sig(
        &key,
        &transcripts::signed_pre_key(spk.id, &spk.public_key),
        &spk.signature,
        "signed pre-key",
    )?;
    Ok(spk.id)
}

/// Checks a serialized `KemPreKey` (signature, size, and that `last_resort` is as expected).
pub fn kem_pre_key(
    bytes: &[u8],
    device_key: &[u8; 32],
    last_resort: bool,
) -> Result<u32, VerifyError> {
    let k = KemPreKey::decode(bytes).map_err(|_| VerifyError::Malformed("ML-KEM pre-key"))?;
    if k.public_key.len() != MLKEM768_EK_LEN || k.last_resort != last_resort {
        return Err(VerifyError::Malformed("ML-KEM pre-key"));
    }
    let key = ed25519_key(device_key, "device signing key")?;
    verify_sig(
        &key,
        &transcripts::kem_pre_key(k.id, k.last_resort, &k.public_key),
        &k.signature,
        "ML-KEM pre-key",
    )?;
    Ok(k.id)
}

/// Checks a serialized `OneTimePreKey`'s shape; returns its id.
pub fn one_time_pre_key(bytes: &[u8]) -> Result<u32, VerifyError> {
    let k = OneTimePreKey::decode(bytes).map_err(|_| VerifyError::Malformed("one-time pre-key"))?;
    if k.public_key.len() != X25519_LEN {
        return Err(VerifyError::Malformed("one-time pre-key"));
    }
    Ok(k.id)
}

/// The bytes a device signs to authenticate a connection (see
/// [`hush_proto::transcripts::relay_auth`]).
pub fn auth_transcript(
    exporter: &[u8; EXPORTER_LEN],
    challenge: &[u8; CHALLENGE_LEN],
    account: &[u8; ACCOUNT_LEN],
    device: u32,
) -> Vec<u8> {
    hush_proto::transcripts::relay_auth(exporter, challenge, account, device)
}

/// Verifies a connection authentication signature by `device_key`.
pub fn auth_signature(
    device_key: &[u8; 32],
    transcript: &[u8],
    signature: &[u8],
) -> Result<(), VerifyError> {
    let key = ed25519_key(device_key, "device signing key")?;
    verify_sig(&key, transcript, signature, "authentication")
}

/// Verifies the account key's signature binding the normalized username `name` to `account`
/// (see [`hush_proto::transcripts::username`]).
pub fn username_proof(
    name: &str,
    account: &[u8; ACCOUNT_LEN],
    proof: &[u8],
) -> Result<(), VerifyError> {
    let key = ed25519_key(account, "account key")?;
    let transcript = hush_proto::transcripts::username(name.as_bytes(), account);
    verify_sig(&key, &transcript, proof, "username proof")
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};
    use hush_proto::wire::{DeviceEntry, DeviceIdentityKey};

    use super::*;

    /// A signed list of `account` with one device (id 1, signing key `device`), whose consent
    /// is `consent`.
    fn list(account: &SigningKey, device: &SigningKey, consent: Vec<u8>) -> Vec<u8> {
        let inner = DeviceList {
            account_key: account.verifying_key().to_bytes().to_vec(),
            version: 1,
            issued_at: 0,
            devices: vec![DeviceEntry {
                device_id: 1,
                identity: Some(DeviceIdentityKey {
                    signing_key: device.verifying_key().to_bytes().to_vec(),
                    dh_key: vec![9; 32],
                }),
                added_at: 0,
                consent,
            }],
        }
        .encode_to_vec();
        SignedDeviceList {
            signature: account
                .sign(&transcripts::device_list(&inner))
                .to_bytes()
                .to_vec(),
            device_list: inner,
        }
        .encode_to_vec()
    }

    fn consent(by: &SigningKey, account: &SigningKey, id: u32, device: &SigningKey) -> Vec<u8> {
        by.sign(&transcripts::device_consent(
            &account.verifying_key().to_bytes(),
            id,
            &device.verifying_key().to_bytes(),
            &[9; 32],
        ))
        .to_bytes()
        .to_vec()
    }

    #[test]
    fn a_listed_device_must_consent_to_this_account_and_id() {
        let (account, other, device) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
            SigningKey::from_bytes(&[3; 32]),
        );
        let check = |bytes: Vec<u8>| CheckedList::check(&bytes, None, 32).map(|l| l.version);
        let good = consent(&device, &account, 1, &device);
        assert_eq!(check(list(&account, &device, good.clone())), Ok(1));
        assert_eq!(
            check(list(&account, &device, Vec::new())),
            Err(VerifyError::MissingConsent(1))
        );
        for bad in [
            consent(&device, &account, 2, &device),
            consent(&device, &other, 1, &device),
            consent(&account, &account, 1, &device),
            good.get(..63).map(<[u8]>::to_vec).unwrap_or_default(),
        ] {
            assert_eq!(
                check(list(&account, &device, bad)),
                Err(VerifyError::BadConsent(1))
            );
        }
    }
}
