//! Long-term keys: the account identity key, device identity keys, and key validation.
//!
//! Private keys are boxed, zeroized on drop (the dalek types zeroize themselves) and have no `Debug`.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::consts::{KEY_LEN, SIGNATURE_LEN};
use crate::error::{AuthError, Error, Result};

/// The identity of an account: its Ed25519 account identity public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId([u8; KEY_LEN]);

impl AccountId {
    /// Validates 32 bytes as an account key (canonical, not of small order).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let key = ed25519_public(bytes, "account key")?;
        Ok(Self(key.to_bytes()))
    }

    /// The key bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub(crate) fn verifying_key(&self) -> Result<VerifyingKey> {
        ed25519_public(&self.0, "account key")
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId(")?;
        for b in self.0.iter().take(6) {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// The address of one device: its account and its device id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceAddress {
    /// The account.
    pub account: AccountId,
    /// The device id, unique within the account.
    pub device_id: u32,
}

impl DeviceAddress {
    /// Storage key: account key (32) || device id (u32 BE).
    pub(crate) fn to_key(self) -> [u8; KEY_LEN + 4] {
        let mut out = [0u8; KEY_LEN + 4];
        let (a, d) = out.split_at_mut(KEY_LEN);
        a.copy_from_slice(&self.account.0);
        d.copy_from_slice(&self.device_id.to_be_bytes());
        out
    }
}

/// The private account identity key. It signs the account's device list; typically only the
/// account's first device holds it.
pub struct AccountKeyPair {
    secret: Box<SigningKey>,
    id: AccountId,
}

impl AccountKeyPair {
    /// A new random account key.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        Self::from_secret_bytes(&SigningKey::generate(rng).to_bytes())
    }

    /// Rebuilds the key pair from its 32-byte secret.
    pub fn from_secret_bytes(secret: &[u8; KEY_LEN]) -> Self {
        let secret = Box::new(SigningKey::from_bytes(secret));
        let id = AccountId(secret.verifying_key().to_bytes());
        Self { secret, id }
    }

    /// The secret bytes (for the encrypted store only).
    pub fn secret_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The public account id.
    pub const fn id(&self) -> AccountId {
        self.id
    }

    pub(crate) fn sign(&self, label: &[u8], msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut data = Vec::with_capacity(label.len() + msg.len());
        data.extend_from_slice(label);
        data.extend_from_slice(msg);
        self.secret.sign(&data).to_bytes()
    }
}

/// A device's public identity: an Ed25519 key that signs its pre-keys and an X25519 key used in PQXDH.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceIdentity {
    signing: [u8; KEY_LEN],
    dh: [u8; KEY_LEN],
}

impl DeviceIdentity {
    /// Validates both keys.
    pub fn new(signing: &[u8], dh: &[u8]) -> Result<Self> {
        let signing = ed25519_public(signing, "device signing key")?.to_bytes();
        let dh = x25519_public(dh)?.to_bytes();
        Ok(Self { signing, dh })
    }

    /// Parses the 64-byte encoding `signing || dh`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (s, d) = bytes
            .split_at_checked(KEY_LEN)
            .filter(|(_, d)| d.len() == KEY_LEN)
            .ok_or(Error::malformed("device identity", "must be 64 bytes"))?;
        Self::new(s, d)
    }

    /// The 64-byte encoding `signing || dh` (used in the associated data of every message).
    pub fn to_bytes(&self) -> [u8; 2 * KEY_LEN] {
        let mut out = [0u8; 2 * KEY_LEN];
        let (a, b) = out.split_at_mut(KEY_LEN);
        a.copy_from_slice(&self.signing);
        b.copy_from_slice(&self.dh);
        out
    }

    /// The Ed25519 signing key bytes.
    pub const fn signing_key(&self) -> &[u8; KEY_LEN] {
        &self.signing
    }

    /// The X25519 key bytes.
    pub const fn dh_key(&self) -> &[u8; KEY_LEN] {
        &self.dh
    }

    pub(crate) fn dh_public(&self) -> PublicKey {
        PublicKey::from(self.dh)
    }

    /// Verifies `signature` over `label || msg` by this device's signing key.
    pub(crate) fn verify(
        &self,
        label: &[u8],
        msg: &[u8],
        signature: &[u8],
        what: &'static str,
    ) -> Result<()> {
        let key = ed25519_public(&self.signing, what)?;
        verify_signature(&key, label, msg, signature, what)
    }

    pub(crate) fn to_proto(self) -> hush_proto::wire::DeviceIdentityKey {
        hush_proto::wire::DeviceIdentityKey {
            signing_key: self.signing.to_vec(),
            dh_key: self.dh.to_vec(),
        }
    }

    pub(crate) fn from_proto(p: Option<&hush_proto::wire::DeviceIdentityKey>) -> Result<Self> {
        let p = p.ok_or(Error::malformed("device identity", "missing"))?;
        Self::new(&p.signing_key, &p.dh_key)
    }
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceIdentity(")?;
        for b in self.signing.iter().take(6) {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// A device's private identity keys.
pub struct DeviceIdentityKeyPair {
    signing: Box<SigningKey>,
    dh: Box<StaticSecret>,
    public: DeviceIdentity,
}

impl DeviceIdentityKeyPair {
    /// New random identity keys.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let signing = SigningKey::generate(rng).to_bytes();
        let dh = StaticSecret::random_from_rng(rng).to_bytes();
        Self::from_secret_bytes(&signing, &dh)
    }

    /// Rebuilds the identity from its two 32-byte secrets.
    pub fn from_secret_bytes(signing: &[u8; KEY_LEN], dh: &[u8; KEY_LEN]) -> Self {
        let signing = Box::new(SigningKey::from_bytes(signing));
        let dh = Box::new(StaticSecret::from(*dh));
        let public = DeviceIdentity {
            signing: signing.verifying_key().to_bytes(),
            dh: PublicKey::from(dh.as_ref()).to_bytes(),
        };
        Self {
            signing,
            dh,
            public,
        }
    }

    /// The public identity.
    pub const fn public(&self) -> DeviceIdentity {
        self.public
    }

    /// Secret bytes (signing, dh) for the encrypted store only.
    pub fn secret_bytes(&self) -> (Zeroizing<[u8; KEY_LEN]>, Zeroizing<[u8; KEY_LEN]>) {
        (
            Zeroizing::new(self.signing.to_bytes()),
            Zeroizing::new(self.dh.to_bytes()),
        )
    }

    pub(crate) fn sign(&self, label: &[u8], msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut data = Vec::with_capacity(label.len() + msg.len());
        data.extend_from_slice(label);
        data.extend_from_slice(msg);
        self.signing.sign(&data).to_bytes()
    }

    /// This device's consent to being listed as `device_id` of `account` (§3.1): the signature
    /// by its signing key over `"Hush-DeviceConsent-v1" ‖ account ‖ u32be(device_id) ‖
    /// signing key ‖ DH key`.
    pub fn consent(&self, account: &AccountId, device_id: u32) -> [u8; SIGNATURE_LEN] {
        let p = self.public;
        self.sign(
            &[],
            &hush_proto::transcripts::device_consent(
                account.as_bytes(),
                device_id,
                p.signing_key(),
                p.dh_key(),
            ),
        )
    }

    pub(crate) fn dh_secret(&self) -> &StaticSecret {
        &self.dh
    }
}

/// Verifies an Ed25519 signature over `label || msg` with strict rules (no malleable signatures,
/// no small-order keys).
pub(crate) fn verify_signature(
    key: &VerifyingKey,
    label: &[u8],
    msg: &[u8],
    signature: &[u8],
    what: &'static str,
) -> Result<()> {
    let sig: [u8; SIGNATURE_LEN] = signature
        .try_into()
        .map_err(|_| Error::malformed("signature", "must be 64 bytes"))?;
    let sig = Signature::from_bytes(&sig);
    let mut data = Vec::with_capacity(label.len() + msg.len());
    data.extend_from_slice(label);
    data.extend_from_slice(msg);
    key.verify_strict(&data, &sig)
        .map_err(|_| AuthError::BadSignature(what).into())
}

/// Parses an Ed25519 public key: exactly 32 bytes, a canonical encoding of a point that is not of
/// small order.
pub(crate) fn ed25519_public(bytes: &[u8], what: &'static str) -> Result<VerifyingKey> {
    let arr: [u8; KEY_LEN] = bytes
        .try_into()
        .map_err(|_| Error::malformed(what, "must be 32 bytes"))?;
    let key =
        VerifyingKey::from_bytes(&arr).map_err(|_| AuthError::InvalidKey("not a curve point"))?;
    // `from_bytes` accepts non-canonical encodings (y ≥ p) and keeps the input bytes; re-compressing
    // the decoded point gives the canonical encoding.
    if key.to_edwards().compress().to_bytes() != arr {
        return Err(AuthError::InvalidKey("non-canonical Ed25519 encoding").into());
    }
    if key.is_weak() {
        return Err(AuthError::InvalidKey("Ed25519 key of small order").into());
    }
    Ok(key)
}

/// The canonical encodings of the X25519 points of small order (u = 0, 1, p − 1 and the two points
/// of order 8). Non-canonical encodings (u ≥ p or the top bit set) are rejected separately.
const X25519_SMALL_ORDER: [[u8; KEY_LEN]; 5] = [
    [0; KEY_LEN],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
];

/// Parses an X25519 public key: exactly 32 bytes, canonical (top bit clear, u < 2^255 − 19) and not
/// of small order.
pub(crate) fn x25519_public(bytes: &[u8]) -> Result<PublicKey> {
    let arr: [u8; KEY_LEN] = bytes
        .try_into()
        .map_err(|_| Error::malformed("X25519 key", "must be 32 bytes"))?;
    if !is_canonical_u(&arr) {
        return Err(AuthError::InvalidKey("non-canonical X25519 encoding").into());
    }
    if X25519_SMALL_ORDER.iter().any(|k| k == &arr) {
        return Err(AuthError::InvalidKey("X25519 key of small order").into());
    }
    Ok(PublicKey::from(arr))
}

/// True when the little-endian value is below p = 2^255 − 19 and the top bit is clear.
fn is_canonical_u(u: &[u8; KEY_LEN]) -> bool {
    let (last, rest) = match u.split_last() {
        Some(x) => x,
        None => return false,
    };
    if *last > 0x7f {
        return false;
    }
    if *last < 0x7f {
        return true;
    }
    // Top byte is 0x7f: value ≥ p exactly when bytes 1..31 are all 0xff and byte 0 ≥ 0xed.
    let (first, middle) = match rest.split_first() {
        Some(x) => x,
        None => return false,
    };
    !(middle.iter().all(|b| *b == 0xff) && *first >= 0xed)
}

/// X25519 with a contributory check: an all-zero shared secret (the peer used a small-order point
/// that slipped through) is rejected.
pub(crate) fn dh(secret: &StaticSecret, public: &PublicKey) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let shared = secret.diffie_hellman(public);
    if !shared.was_contributory() {
        return Err(AuthError::InvalidKey("non-contributory X25519 result").into());
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// Reads a fixed-size array from a byte slice with a typed error.
pub(crate) fn array<const N: usize>(
    bytes: &[u8],
    what: &'static str,
    reason: &'static str,
) -> Result<[u8; N]> {
    bytes.try_into().map_err(|_| Error::malformed(what, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    /// Compiles only for types that wipe their memory when dropped.
    const fn wiped_on_drop<T: zeroize::ZeroizeOnDrop + ?Sized>() {}

    /// Every type that holds secret key material in client-core's state wipes it on drop:
    /// X25519 private keys (identity DH, pre-keys, ratchet keys), Ed25519 signing keys (account,
    /// device identity, sender-key signing), ML-KEM decapsulation keys, and the `Zeroizing`
    /// buffers used for root, chain, message and skipped keys, KEM seeds, stored values and
    /// plaintexts.
    #[test]
    fn secret_key_types_are_wiped_on_drop() {
        wiped_on_drop::<StaticSecret>();
        wiped_on_drop::<ed25519_dalek::SigningKey>();
        wiped_on_drop::<ml_kem::DecapsulationKey768>();
        wiped_on_drop::<Zeroizing<[u8; KEY_LEN]>>();
        wiped_on_drop::<Zeroizing<Vec<u8>>>();
        wiped_on_drop::<crate::chain::Secret>();
        // A wiped buffer really is zero after `zeroize` (what `Drop` calls).
        let mut k = Zeroizing::new([0xa5u8; KEY_LEN]);
        zeroize::Zeroize::zeroize(&mut *k);
        assert_eq!(*k, [0u8; KEY_LEN]);
    }

    #[test]
    fn small_order_points_give_zero_and_are_rejected() {
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let s = StaticSecret::random_from_rng(&mut rng);
        for p in X25519_SMALL_ORDER {
            assert!(x25519_public(&p).is_err());
            // The list really is the small-order set: the raw DH with any scalar is zero.
            assert!(!s.diffie_hellman(&PublicKey::from(p)).was_contributory());
        }
    }

    #[test]
    fn non_canonical_x25519_rejected() {
        let mut p = [0xffu8; 32];
        p[31] = 0x7f;
        p[0] = 0xed; // exactly p
        assert!(x25519_public(&p).is_err());
        p[0] = 0xee; // p + 1 (≡ 1)
        assert!(x25519_public(&p).is_err());
        let mut hi = [9u8; 32];
        hi[31] = 0x80;
        assert!(x25519_public(&hi).is_err());
        let mut ok = [9u8; 32];
        ok[31] = 0x00;
        assert!(x25519_public(&ok).is_ok());
        assert!(x25519_public(&[9u8; 31]).is_err());
    }

    #[test]
    fn ed25519_non_canonical_rejected() {
        // y = p + k for small k is the non-canonical encoding of y = k (when that is on the curve).
        let mut rng = ChaCha20Rng::from_seed([10; 32]);
        let good = AccountKeyPair::generate(&mut rng).id();
        assert!(ed25519_public(good.as_bytes(), "k").is_ok());
        let mut found = 0;
        for low in 0u8..19 {
            // y = p + low, with p = 2^255 - 19: bytes ed+low, ff.., 7f
            let mut y = [0xffu8; 32];
            y[31] = 0x7f;
            y[0] = 0xed + low;
            if VerifyingKey::from_bytes(&y).is_ok() {
                found += 1;
                assert!(
                    ed25519_public(&y, "k").is_err(),
                    "non-canonical y = p + {low} accepted"
                );
            }
        }
        assert!(found > 0, "no decodable non-canonical encoding found");
    }

    #[test]
    fn ed25519_small_order_rejected() {
        // The identity point (y = 1) is of small order.
        let mut id = [0u8; 32];
        id[0] = 1;
        assert!(ed25519_public(&id, "k").is_err());
        let mut rng = ChaCha20Rng::from_seed([8; 32]);
        let k = AccountKeyPair::generate(&mut rng);
        assert!(AccountId::from_bytes(k.id().as_bytes()).is_ok());
    }

    #[test]
    fn signatures_are_domain_separated() {
        let mut rng = ChaCha20Rng::from_seed([9; 32]);
        let d = DeviceIdentityKeyPair::generate(&mut rng);
        let sig = d.sign(b"A", b"msg");
        assert!(d.public().verify(b"A", b"msg", &sig, "t").is_ok());
        assert!(d.public().verify(b"B", b"msg", &sig, "t").is_err());
        assert!(d.public().verify(b"A", b"msh", &sig, "t").is_err());
        assert!(d.public().verify(b"A", b"msg", &sig[..63], "t").is_err());
    }
}
