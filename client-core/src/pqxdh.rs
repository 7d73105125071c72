//! PQXDH session setup, following Signal's PQXDH specification (revision 3) with X25519,
//! SHA-256 and ML-KEM-768.
//!
//! Initiator A, responder B (device identity keys IK, signed pre-key SPK, optional one-time pre-key
//! OPK, ML-KEM pre-key PQPK):
//!
//! ```text
//! DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   DH4 = DH(EK_A, OPK_B) (if any)
//! (CT, SS) = ML-KEM-768.Encaps(PQPK_B)
//! SK = HKDF-SHA256(salt = 32 zero bytes, ikm = 0xFF×32 ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4] ‖ SS, info = PQXDH_INFO)[0..32]
//! ```
//!
//! The bundle's signatures are verified before any of this runs (only a [`VerifiedBundle`] is
//! accepted). SK then seeds the Double Ratchet: A's first sending chain comes from
//! `KDF_RK(SK, DH(A's first ratchet key, SPK_B))`; B's first ratchet key pair is SPK_B.

use hkdf::Hkdf;
use hush_proto::wire;
use ml_kem::array::Array;
use ml_kem::{Ciphertext, Decapsulate, MlKem768};
use rand_core::CryptoRng;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::chain::Secret;
use crate::consts::{KEM_CIPHERTEXT_LEN, KEY_LEN, PQXDH_INFO, PROTOCOL_VERSION};
use crate::error::{Error, ProtocolError, Result};
use crate::keys::{
    AccountId, DeviceAddress, DeviceIdentity, DeviceIdentityKeyPair, array, dh, x25519_public,
};
use crate::prekeys::{KemPreKeyPair, OneTimePreKeyPair, SignedPreKeyPair, VerifiedBundle};
use crate::ratchet::{Party, PendingInitial, RatchetMessage, SessionState};

/// The initiator's fresh randomness for one session: base key EK_A, first ratchet key, and the
/// 32-byte ML-KEM encapsulation randomness `m`.
pub struct InitiatorSecrets {
    base_key: StaticSecret,
    ratchet_key: StaticSecret,
    kem_randomness: Zeroizing<[u8; 32]>,
}

impl InitiatorSecrets {
    /// Draws all three from `rng`.
    pub fn random(rng: &mut impl CryptoRng) -> Self {
        let base_key = StaticSecret::random_from_rng(&mut *rng);
        let ratchet_key = StaticSecret::random_from_rng(&mut *rng);
        let mut m = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(m.as_mut());
        Self {
            base_key,
            ratchet_key,
            kem_randomness: m,
        }
    }

    /// Explicit values (test vectors).
    pub fn from_bytes(
        base_key: [u8; KEY_LEN],
        ratchet_key: [u8; KEY_LEN],
        kem_randomness: [u8; 32],
    ) -> Self {
        Self {
            base_key: StaticSecret::from(base_key),
            ratchet_key: StaticSecret::from(ratchet_key),
            kem_randomness: Zeroizing::new(kem_randomness),
        }
    }
}

/// `KDF(KM)` of the PQXDH specification.
pub fn derive_shared_secret(dhs: &[&[u8; KEY_LEN]], kem_shared: &[u8; 32]) -> Secret {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * (dhs.len() + 2)));
    ikm.extend_from_slice(&[0xFF; 32]);
    for d in dhs {
        ikm.extend_from_slice(d.as_slice());
    }
    ikm.extend_from_slice(kem_shared);
    let hk = Hkdf::<Sha256>::new(Some(&[0u8; 32]), &ikm);
    let mut sk = Zeroizing::new([0u8; KEY_LEN]);
    // 32 bytes is within HKDF-SHA256's output limit: expand cannot fail.
    let _ = hk.expand(PQXDH_INFO, sk.as_mut());
    sk
}

/// The result of starting a session.
pub struct Initiated {
    /// The new session (its messages carry the PQXDH header until the responder replies).
    pub session: SessionState,
    /// SK, exposed for test vectors.
    pub shared_secret: Secret,
}

/// Starts a session with the device of `bundle` (initiator side).
pub fn initiate(
    local: DeviceAddress,
    identity: &DeviceIdentityKeyPair,
    bundle: &VerifiedBundle,
    secrets: InitiatorSecrets,
    now: u64,
) -> Result<Initiated> {
    let dh1 = dh(identity.dh_secret(), &bundle.signed_pre_key)?;
    let dh2 = dh(&secrets.base_key, &bundle.identity.dh_public())?;
    let dh3 = dh(&secrets.base_key, &bundle.signed_pre_key)?;
    let dh4 = bundle
        .one_time_pre_key
        .as_ref()
        .map(|(_, k)| dh(&secrets.base_key, k))
        .transpose()?;
    let (ct, ss) = bundle
        .kem_pre_key
        .encapsulate_deterministic(&Array::from(*secrets.kem_randomness));
    let ss = Zeroizing::new(<[u8; 32]>::from(ss));
    let mut dhs: Vec<&[u8; KEY_LEN]> = vec![&dh1, &dh2, &dh3];
    if let Some(d) = &dh4 {
        dhs.push(d);
    }
    let sk = derive_shared_secret(&dhs, &ss);
    let base_key = PublicKey::from(&secrets.base_key).to_bytes();
    let pending = PendingInitial {
        base_key,
        signed_pre_key_id: bundle.signed_pre_key_id,
        one_time_pre_key_id: bundle.one_time_pre_key.as_ref().map(|(id, _)| *id),
        kem_pre_key_id: bundle.kem_pre_key_id,
        kem_ciphertext: ct.to_vec(),
        local_account: *local.account.as_bytes(),
        local_device_id: local.device_id,
    };
    let session = SessionState::new_initiator(
        Party {
            address: local,
            identity: identity.public(),
        },
        Party {
            address: bundle.address,
            identity: bundle.identity,
        },
        &sk,
        secrets.ratchet_key,
        &bundle.signed_pre_key,
        pending,
        now,
    )?;
    Ok(Initiated {
        session,
        shared_secret: sk,
    })
}

/// A validated initial (pre-key) message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMessage {
    /// The sending device.
    pub sender: DeviceAddress,
    /// Its identity as claimed (checked against its device list by the receiver).
    pub sender_identity: DeviceIdentity,
    /// EK_A.
    pub base_key: [u8; KEY_LEN],
    /// Which signed pre-key was used.
    pub signed_pre_key_id: u32,
    /// Which one-time pre-key was used, if any.
    pub one_time_pre_key_id: Option<u32>,
    /// Which ML-KEM pre-key was used.
    pub kem_pre_key_id: u32,
    /// The ML-KEM ciphertext.
    pub kem_ciphertext: Vec<u8>,
    /// The first ratchet message.
    pub message: RatchetMessage,
}

impl TryFrom<&wire::InitialMessage> for InitialMessage {
    type Error = Error;
    fn try_from(m: &wire::InitialMessage) -> Result<Self> {
        if m.version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion(m.version).into());
        }
        if m.kem_ciphertext.len() != KEM_CIPHERTEXT_LEN {
            return Err(Error::malformed(
                "initial message",
                "ML-KEM ciphertext must be 1088 bytes",
            ));
        }
        let inner = m.message.as_ref().ok_or(Error::malformed(
            "initial message",
            "missing ratchet message",
        ))?;
        Ok(Self {
            sender: DeviceAddress {
                account: AccountId::from_bytes(&m.sender_account_key)?,
                device_id: m.sender_device_id,
            },
            sender_identity: DeviceIdentity::from_proto(m.sender_identity.as_ref())?,
            base_key: x25519_public(&m.base_key)?.to_bytes(),
            signed_pre_key_id: m.signed_pre_key_id,
            one_time_pre_key_id: m.one_time_pre_key_id,
            kem_pre_key_id: m.kem_pre_key_id,
            kem_ciphertext: m.kem_ciphertext.clone(),
            message: RatchetMessage::try_from(inner)?,
        })
    }
}

impl InitialMessage {
    /// Builds the wire form around a ratchet message from a pending session.
    pub fn wire(
        pending: &PendingInitial,
        identity: DeviceIdentity,
        message: &RatchetMessage,
    ) -> wire::InitialMessage {
        wire::InitialMessage {
            version: PROTOCOL_VERSION,
            sender_account_key: pending.local_account.to_vec(),
            sender_device_id: pending.local_device_id,
            sender_identity: Some(identity.to_proto()),
            base_key: pending.base_key.to_vec(),
            signed_pre_key_id: pending.signed_pre_key_id,
            one_time_pre_key_id: pending.one_time_pre_key_id,
            kem_pre_key_id: pending.kem_pre_key_id,
            kem_ciphertext: pending.kem_ciphertext.clone(),
            message: Some(message.to_wire()),
        }
    }
}

/// Responder side: derives SK and the responder's session from an initial message, given the
/// pre-keys it names (looked up and checked by the caller). Checks last-resort reuse. Does not
/// consume anything: the caller deletes the one-time keys only after the first message decrypted.
pub fn respond(
    local: DeviceAddress,
    identity: &DeviceIdentityKeyPair,
    signed_pre_key: &SignedPreKeyPair,
    one_time_pre_key: Option<&OneTimePreKeyPair>,
    kem_pre_key: &KemPreKeyPair,
    msg: &InitialMessage,
    now: u64,
) -> Result<Initiated> {
    kem_pre_key.check_base_key(&msg.base_key)?;
    let base = PublicKey::from(msg.base_key);
    let dh1 = dh(&signed_pre_key.secret, &msg.sender_identity.dh_public())?;
    let dh2 = dh(identity.dh_secret(), &base)?;
    let dh3 = dh(&signed_pre_key.secret, &base)?;
    let dh4 = one_time_pre_key.map(|k| dh(&k.secret, &base)).transpose()?;
    let ct: [u8; KEM_CIPHERTEXT_LEN] = array(
        &msg.kem_ciphertext,
        "initial message",
        "ML-KEM ciphertext must be 1088 bytes",
    )?;
    let ct: Ciphertext<MlKem768> = Array::from(ct);
    let ss = Zeroizing::new(<[u8; 32]>::from(kem_pre_key.decapsulation.decapsulate(&ct)));
    let mut dhs: Vec<&[u8; KEY_LEN]> = vec![&dh1, &dh2, &dh3];
    if let Some(d) = &dh4 {
        dhs.push(d);
    }
    let sk = derive_shared_secret(&dhs, &ss);
    let session = SessionState::new_responder(
        Party {
            address: local,
            identity: identity.public(),
        },
        Party {
            address: msg.sender,
            identity: msg.sender_identity,
        },
        &sk,
        StaticSecret::from(signed_pre_key.secret.to_bytes()),
        msg.base_key,
        now,
    );
    Ok(Initiated {
        session,
        shared_secret: sk,
    })
}
