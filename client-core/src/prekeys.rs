//! Pre-keys and pre-key bundles.
//!
//! Per device: a signed X25519 pre-key, a batch of one-time X25519 pre-keys, a batch of signed
//! one-time ML-KEM-768 pre-keys and one signed last-resort ML-KEM-768 pre-key. A bundle fetched from
//! the relay is untrusted until [`PreKeyBundle::verify`] has checked it against the account's signed
//! device list; only that produces a [`VerifiedBundle`], and only a `VerifiedBundle` starts a session.

use std::collections::HashSet;

use hush_proto::{transcripts, wire};
use ml_kem::{DecapsulationKey768, EncapsulationKey768, Key, KeyExport};
use rand_core::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::consts::{
    KEM_PUBLIC_KEY_LEN, KEM_SEED_LEN, KEY_LEN, MAX_LAST_RESORT_BASE_KEYS, SIGNATURE_LEN,
};
use crate::device_list::VerifiedDeviceList;
use crate::error::{AuthError, Error, ProtocolError, Result};
use crate::keys::{
    AccountId, DeviceAddress, DeviceIdentity, DeviceIdentityKeyPair, array, x25519_public,
};

/// A signed X25519 pre-key with its private half.
pub struct SignedPreKeyPair {
    /// Key id.
    pub id: u32,
    pub(crate) secret: Box<StaticSecret>,
    /// Public key.
    pub public: PublicKey,
    /// Signature by the device signing key.
    pub signature: [u8; SIGNATURE_LEN],
    /// Creation time (ms).
    pub created_at: u64,
}

impl SignedPreKeyPair {
    /// A new signed pre-key.
    pub fn generate(
        rng: &mut impl CryptoRng,
        identity: &DeviceIdentityKeyPair,
        id: u32,
        now: u64,
    ) -> Self {
        let secret = StaticSecret::random_from_rng(rng).to_bytes();
        Self::from_secret(identity, id, &secret, now)
    }

    /// Rebuilds (and re-signs deterministically) from a secret.
    pub fn from_secret(
        identity: &DeviceIdentityKeyPair,
        id: u32,
        secret: &[u8; KEY_LEN],
        now: u64,
    ) -> Self {
        let secret = Box::new(StaticSecret::from(*secret));
        let public = PublicKey::from(secret.as_ref());
        let signature = identity.sign(&[], &transcripts::signed_pre_key(id, public.as_bytes()));
        Self {
            id,
            secret,
            public,
            signature,
            created_at: now,
        }
    }

    /// The public part as sent on the wire.
    pub fn to_wire(&self) -> wire::SignedPreKey {
        wire::SignedPreKey {
            id: self.id,
            public_key: self.public.as_bytes().to_vec(),
            signature: self.signature.to_vec(),
        }
    }

    /// Secret bytes (for the encrypted store only).
    pub fn secret_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.secret.to_bytes())
    }
}

/// A one-time X25519 pre-key with its private half.
pub struct OneTimePreKeyPair {
    /// Key id.
    pub id: u32,
    pub(crate) secret: Box<StaticSecret>,
    /// Public key.
    pub public: PublicKey,
}

impl OneTimePreKeyPair {
    /// A new one-time pre-key.
    pub fn generate(rng: &mut impl CryptoRng, id: u32) -> Self {
        Self::from_secret(id, &StaticSecret::random_from_rng(rng).to_bytes())
    }

    /// Rebuilds from a secret.
    pub fn from_secret(id: u32, secret: &[u8; KEY_LEN]) -> Self {
        let secret = Box::new(StaticSecret::from(*secret));
        let public = PublicKey::from(secret.as_ref());
        Self { id, secret, public }
    }

    /// The public part as sent on the wire.
    pub fn to_wire(&self) -> wire::OneTimePreKey {
        wire::OneTimePreKey {
            id: self.id,
            public_key: self.public.as_bytes().to_vec(),
        }
    }

    /// Secret bytes (for the encrypted store only).
    pub fn secret_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.secret.to_bytes())
    }
}

/// A signed ML-KEM-768 pre-key with its private half (one-time or last-resort).
pub struct KemPreKeyPair {
    /// Key id.
    pub id: u32,
    seed: Zeroizing<[u8; KEM_SEED_LEN]>,
    pub(crate) decapsulation: Box<DecapsulationKey768>,
    /// Public encapsulation key bytes.
    pub public: Vec<u8>,
    /// Signature by the device signing key.
    pub signature: [u8; SIGNATURE_LEN],
    /// Whether this is the last-resort key (reusable, but never twice with the same base key).
    pub last_resort: bool,
    /// Creation time (ms).
    pub created_at: u64,
    /// Last-resort only: base keys already used with this key.
    pub(crate) used_base_keys: HashSet<[u8; KEY_LEN]>,
}

impl KemPreKeyPair {
    /// A new ML-KEM pre-key.
    pub fn generate(
        rng: &mut impl CryptoRng,
        identity: &DeviceIdentityKeyPair,
        id: u32,
        last_resort: bool,
        now: u64,
    ) -> Self {
        let mut seed = Zeroizing::new([0u8; KEM_SEED_LEN]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(identity, id, &seed, last_resort, now)
    }

    /// Rebuilds (and re-signs) from the 64-byte FIPS 203 seed `d || z`.
    pub fn from_seed(
        identity: &DeviceIdentityKeyPair,
        id: u32,
        seed: &[u8; KEM_SEED_LEN],
        last_resort: bool,
        now: u64,
    ) -> Self {
        let decapsulation = Box::new(DecapsulationKey768::from_seed((*seed).into()));
        let public = decapsulation.encapsulation_key().to_bytes().to_vec();
        let signature = identity.sign(&[], &transcripts::kem_pre_key(id, last_resort, &public));
        Self {
            id,
            seed: Zeroizing::new(*seed),
            decapsulation,
            public,
            signature,
            last_resort,
            created_at: now,
            used_base_keys: HashSet::new(),
        }
    }

    /// The public part as sent on the wire.
    pub fn to_wire(&self) -> wire::KemPreKey {
        wire::KemPreKey {
            id: self.id,
            public_key: self.public.clone(),
            signature: self.signature.to_vec(),
            last_resort: self.last_resort,
        }
    }

    /// The seed (for the encrypted store only).
    pub fn seed(&self) -> &Zeroizing<[u8; KEM_SEED_LEN]> {
        &self.seed
    }

    /// Checks that `base_key` was never used with this last-resort key (no-op for one-time keys).
    pub(crate) fn check_base_key(&self, base_key: &[u8; KEY_LEN]) -> Result<()> {
        if self.last_resort && self.used_base_keys.contains(base_key) {
            return Err(ProtocolError::LastResortReuse.into());
        }
        if self.last_resort && self.used_base_keys.len() >= MAX_LAST_RESORT_BASE_KEYS {
            return Err(ProtocolError::UnknownPreKey {
                kind: "last-resort ML-KEM (exhausted)",
                id: self.id,
            }
            .into());
        }
        Ok(())
    }

    pub(crate) fn used_base_keys(&self) -> impl Iterator<Item = &[u8; KEY_LEN]> {
        self.used_base_keys.iter()
    }

    /// Records base keys as already used with this (last-resort) key.
    pub fn mark_used_base_keys(&mut self, keys: impl IntoIterator<Item = [u8; KEY_LEN]>) {
        self.used_base_keys.extend(keys);
    }
}

/// Everything a device publishes so others can start sessions with it.
#[derive(Clone, Debug)]
pub struct PublishedPreKeys {
    /// The device.
    pub address: DeviceAddress,
    /// Its identity.
    pub identity: DeviceIdentity,
    /// Current signed pre-key.
    pub signed_pre_key: wire::SignedPreKey,
    /// One-time pre-keys (each handed out once).
    pub one_time_pre_keys: Vec<wire::OneTimePreKey>,
    /// One-time ML-KEM pre-keys (each handed out once).
    pub kem_pre_keys: Vec<wire::KemPreKey>,
    /// The last-resort ML-KEM pre-key (handed out when the one-time ones run out).
    pub last_resort_kem_pre_key: wire::KemPreKey,
}

impl PublishedPreKeys {
    /// The bundle of this device with the one-time X25519 pre-key `one_time` (if any) and the
    /// one-time ML-KEM pre-key `kem`, or the last-resort ML-KEM pre-key without one: what a relay
    /// hands out, for an app that passes bundles by other means (and for tests).
    pub fn bundle(
        &self,
        one_time: Option<wire::OneTimePreKey>,
        kem: Option<wire::KemPreKey>,
    ) -> PreKeyBundle {
        PreKeyBundle(wire::PreKeyBundle {
            account_key: self.address.account.as_bytes().to_vec(),
            device_id: self.address.device_id,
            identity: Some(wire::DeviceIdentityKey {
                signing_key: self.identity.signing_key().to_vec(),
                dh_key: self.identity.dh_key().to_vec(),
            }),
            signed_pre_key: Some(self.signed_pre_key.clone()),
            one_time_pre_key: one_time,
            kem_pre_key: Some(kem.unwrap_or_else(|| self.last_resort_kem_pre_key.clone())),
        })
    }

    /// Hands out a bundle as a relay does: the first one-time X25519 and ML-KEM pre-keys left
    /// are taken out (each is handed out once); when none is left, the bundle has no one-time
    /// X25519 key and carries the last-resort ML-KEM key.
    pub fn claim_bundle(&mut self) -> PreKeyBundle {
        let one_time =
            (!self.one_time_pre_keys.is_empty()).then(|| self.one_time_pre_keys.remove(0));
        let kem = (!self.kem_pre_keys.is_empty()).then(|| self.kem_pre_keys.remove(0));
        self.bundle(one_time, kem)
    }
}

/// An unverified pre-key bundle as received from the relay.
#[derive(Clone, Debug)]
pub struct PreKeyBundle(pub wire::PreKeyBundle);

/// A pre-key bundle whose signatures and identity have been verified against the account's signed
/// device list. The only way to make one is [`PreKeyBundle::verify`].
pub struct VerifiedBundle {
    pub(crate) address: DeviceAddress,
    pub(crate) identity: DeviceIdentity,
    pub(crate) signed_pre_key_id: u32,
    pub(crate) signed_pre_key: PublicKey,
    pub(crate) one_time_pre_key: Option<(u32, PublicKey)>,
    pub(crate) kem_pre_key_id: u32,
    pub(crate) kem_pre_key: Box<EncapsulationKey768>,
}

impl VerifiedBundle {
    /// The device this bundle belongs to.
    pub const fn address(&self) -> DeviceAddress {
        self.address
    }
}

impl PreKeyBundle {
    /// Verifies the bundle: the device is on `device_list` with exactly this identity, and the signed
    /// pre-key and the ML-KEM pre-key carry valid signatures by that identity. All keys are validated
    /// (canonical, not of small order, ML-KEM key well-formed) before anything is derived from them.
    pub fn verify(&self, device_list: &VerifiedDeviceList) -> Result<VerifiedBundle> {
        let b = &self.0;
        let account = AccountId::from_bytes(&b.account_key)?;
        if account != device_list.list().account {
            return Err(ProtocolError::UnknownAccount.into());
        }
        let identity = DeviceIdentity::from_proto(b.identity.as_ref())?;
        if device_list.identity_of(b.device_id)? != identity {
            return Err(AuthError::IdentityMismatch.into());
        }
        let spk = b
            .signed_pre_key
            .as_ref()
            .ok_or(Error::malformed("bundle", "missing signed pre-key"))?;
        let spk_pub: [u8; KEY_LEN] = array(&spk.public_key, "signed pre-key", "must be 32 bytes")?;
        identity.verify(
            &[],
            &transcripts::signed_pre_key(spk.id, &spk_pub),
            &spk.signature,
            "signed pre-key",
        )?;
        let signed_pre_key = x25519_public(&spk_pub)?;
        let one_time_pre_key = match &b.one_time_pre_key {
            Some(o) => Some((o.id, x25519_public(&o.public_key)?)),
            None => None,
        };
        let kem = b
            .kem_pre_key
            .as_ref()
            .ok_or(Error::malformed("bundle", "missing ML-KEM pre-key"))?;
        if kem.public_key.len() != KEM_PUBLIC_KEY_LEN {
            return Err(Error::malformed("ML-KEM pre-key", "wrong length"));
        }
        identity.verify(
            &[],
            &transcripts::kem_pre_key(kem.id, kem.last_resort, &kem.public_key),
            &kem.signature,
            "ML-KEM pre-key",
        )?;
        let key = Key::<EncapsulationKey768>::try_from(kem.public_key.as_slice())
            .map_err(|_| Error::malformed("ML-KEM pre-key", "wrong length"))?;
        let kem_pre_key = Box::new(
            EncapsulationKey768::new(&key)
                .map_err(|_| AuthError::InvalidKey("ML-KEM encapsulation key"))?,
        );
        Ok(VerifiedBundle {
            address: DeviceAddress {
                account,
                device_id: b.device_id,
            },
            identity,
            signed_pre_key_id: spk.id,
            signed_pre_key,
            one_time_pre_key,
            kem_pre_key_id: kem.id,
            kem_pre_key,
        })
    }
}
