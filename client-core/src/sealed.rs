//! Sealed envelopes: the layer that wraps every envelope body for one recipient device, so that
//! only that device can open it and learn — and authenticate — the sending device; padding of
//! envelopes into a few length buckets; and delivery keys, whose tokens let the relay accept a
//! send without learning who sent it.
//!
//! The construction, byte for byte, is in docs/PROTOCOL.md §21. In short, for sender `S` and
//! recipient `R`:
//!
//! ```text
//! e            fresh X25519 key pair
//! ss1          = X25519(e, IK_R)
//! ck ‖ k1      = HKDF(salt = "hush-seal-v1" ‖ IK_R ‖ e.pub, ikm = ss1, info = "hush-seal-v1 sender", 64)
//! c1           = AEAD(k1, 0^12, 0x01 ‖ e.pub ‖ IK_R, account_S ‖ u32be(device_S) ‖ IKsig_S ‖ IK_S)
//! ss2          = X25519(IK_S, IK_R)
//! k2           = HKDF(salt = ck ‖ c1, ikm = ss2, info = "hush-seal-v1 content", 32)
//! c2           = AEAD(k2, 0^12, 0x01 ‖ e.pub ‖ c1, pad(DK_S ‖ content))
//! envelope     = 0x01 ‖ e.pub ‖ c1 ‖ c2
//! ```
//!
//! The functions here are pure: [`open`] proves that the sender holds the X25519 identity key it
//! names, nothing more. Whether that key is the one listed for the address it claims is checked
//! by [`Device::open_sealed`](crate::device::Device::open_sealed) against the verified device
//! list.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::consts::{
    AEAD_TAG_LEN, DELIVERY_KEY_LEN, DELIVERY_KEY_SALT, DELIVERY_TOKEN_LABEL, DELIVERY_TOKEN_LEN,
    KEY_LEN, MAX_SEALED_CONTENT_LEN, MAX_SEALED_LEN, SEAL_CONTENT_INFO, SEAL_LABEL,
    SEAL_SENDER_INFO, SEALED_BUCKET_STEP, SEALED_HEADER_LEN, SEALED_LINEAR_MAX, SEALED_OVERHEAD,
    SEALED_SENDER_CT_LEN, SEALED_SENDER_LEN, SEALED_VERSION,
};
use crate::error::{AuthError, Error, ProtocolError, Result};
use crate::keys::{
    AccountId, DeviceAddress, DeviceIdentity, DeviceIdentityKeyPair, array, dh, x25519_public,
};

/// The ISO/IEC 7816-4 padding marker that ends the padded plaintext's data.
const PAD_MARKER: u8 = 0x80;

/// What the error messages call the envelope.
const WHAT: &str = "sealed envelope";

/// A device's delivery key (32 bytes). The device sends it inside every sealed envelope, so its
/// correspondents can compute the [`DeliveryToken`] the relay asks of anyone sending to it.
///
/// Wiped on drop; no `Debug`.
#[derive(Clone)]
pub struct DeliveryKey(Zeroizing<[u8; DELIVERY_KEY_LEN]>);

/// The key lives in a [`Zeroizing`] buffer, wiped when dropped.
impl zeroize::ZeroizeOnDrop for DeliveryKey {}

impl DeliveryKey {
    /// Wraps 32 bytes (as received in a sealed envelope, or from a test vector).
    pub fn from_bytes(bytes: &[u8; DELIVERY_KEY_LEN]) -> Self {
        Self(Zeroizing::new(*bytes))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; DELIVERY_KEY_LEN] {
        &self.0
    }

    /// The delivery key of the device holding `identity`, at rotation `epoch`:
    /// `HKDF(salt = "hush-delivery-key-v1", ikm = identity DH secret, info = u32be(epoch), 32)`.
    pub fn derive(identity: &DeviceIdentityKeyPair, epoch: u32) -> Self {
        let secret = Zeroizing::new(identity.dh_secret().to_bytes());
        let hk = Hkdf::<Sha256>::new(Some(DELIVERY_KEY_SALT), secret.as_ref());
        let mut out = Zeroizing::new([0u8; DELIVERY_KEY_LEN]);
        // 32 bytes is far below HKDF-SHA256's limit, so expand cannot fail.
        let _ = hk.expand(&epoch.to_be_bytes(), out.as_mut());
        Self(out)
    }

    /// The token derived from this key: `HMAC(DK, "hush-delivery-token-v1")[..16]`.
    pub fn token(&self) -> DeliveryToken {
        let mut token = [0u8; DELIVERY_TOKEN_LEN];
        // HMAC accepts keys of any length, so construction cannot fail.
        if let Ok(mut mac) = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(self.0.as_ref()) {
            mac.update(DELIVERY_TOKEN_LABEL);
            let full = mac.finalize().into_bytes();
            for (t, b) in token.iter_mut().zip(full.iter()) {
                *t = *b;
            }
        }
        DeliveryToken(token)
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.as_ref().ct_eq(other.0.as_ref()).into()
    }
}

/// The 16-byte token a device publishes to the relay; a sender presents it to show it knows the
/// recipient device's [`DeliveryKey`]. Compared in constant time.
#[derive(Clone, Copy, Eq)]
pub struct DeliveryToken([u8; DELIVERY_TOKEN_LEN]);

impl DeliveryToken {
    /// Wraps 16 bytes.
    pub const fn from_bytes(bytes: [u8; DELIVERY_TOKEN_LEN]) -> Self {
        Self(bytes)
    }

    /// The token bytes.
    pub const fn as_bytes(&self) -> &[u8; DELIVERY_TOKEN_LEN] {
        &self.0
    }

    /// Constant-time equality (what `==` uses).
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl PartialEq for DeliveryToken {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}

impl fmt::Debug for DeliveryToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A token lets its holder send to the device: never printed.
        f.write_str("DeliveryToken(…)")
    }
}

/// An opened sealed envelope.
pub struct Opened {
    /// The address the sender claims (authenticated by [`Device::open_sealed`] against the
    /// device list; by [`open`] alone only as far as the sender holds `identity`'s DH key).
    ///
    /// [`Device::open_sealed`]: crate::device::Device::open_sealed
    pub from: DeviceAddress,
    /// The sender's device identity as carried in the envelope.
    pub identity: DeviceIdentity,
    /// The sender device's current delivery key.
    pub delivery_key: DeliveryKey,
    /// The content.
    pub content: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("from", &self.from)
            .field("identity", &self.identity)
            .field("delivery_key", &"…")
            .field("content_len", &self.content.len())
            .finish()
    }
}

/// Padmé length of `len` (len ≥ 2): with `E = ⌊log2 len⌋`, `S = ⌊log2 E⌋ + 1` and `z = E − S`,
/// `len` rounded up to a multiple of `2^z`. Saturates instead of overflowing. Sealed envelopes
/// above the linear buckets use it, and so do attachments (padded before they are encrypted).
pub fn padme(len: usize) -> usize {
    if len < 2 {
        return len;
    }
    let e = usize::BITS - 1 - len.leading_zeros();
    let s = u32::BITS - e.leading_zeros(); // ⌊log2 E⌋ + 1 for E ≥ 1
    let z = e.saturating_sub(s);
    let mask = (1usize << z) - 1;
    len.checked_add(mask).map_or(usize::MAX, |l| l & !mask)
}

/// The bucket of an envelope whose unpadded length (content plus [`SEALED_OVERHEAD`]) is `len`:
/// the next multiple of [`SEALED_BUCKET_STEP`] up to [`SEALED_LINEAR_MAX`], the Padmé length
/// above it.
fn bucket(len: usize) -> usize {
    if len <= SEALED_LINEAR_MAX {
        len.div_ceil(SEALED_BUCKET_STEP) * SEALED_BUCKET_STEP
    } else {
        padme(len)
    }
}

/// The exact length of the sealed envelope of `content_len` content bytes (whether or not it is
/// within [`MAX_SEALED_CONTENT_LEN`]; saturates at `usize::MAX`).
pub fn sealed_len(content_len: usize) -> usize {
    content_len
        .checked_add(SEALED_OVERHEAD)
        .map_or(usize::MAX, bucket)
}

/// Whether `len` is a length a sealed envelope can have: a multiple of
/// [`SEALED_BUCKET_STEP`] from 320 to [`SEALED_LINEAR_MAX`], or a Padmé length above that up to
/// [`MAX_SEALED_LEN`].
pub fn is_bucket(len: usize) -> bool {
    if !(sealed_len(0)..=MAX_SEALED_LEN).contains(&len) {
        return false;
    }
    if len <= SEALED_LINEAR_MAX {
        len.is_multiple_of(SEALED_BUCKET_STEP)
    } else {
        padme(len) == len
    }
}

/// Pads `inner` (the delivery key and the content) into the plaintext of `c2`:
/// `inner ‖ 0x80 ‖ 0x00…`, as long as makes the whole envelope [`sealed_len`] bytes.
pub fn pad(inner: &[u8]) -> Zeroizing<Vec<u8>> {
    let content_len = inner.len().saturating_sub(DELIVERY_KEY_LEN);
    let target = sealed_len(content_len)
        .saturating_sub(SEALED_HEADER_LEN + AEAD_TAG_LEN)
        .max(inner.len().saturating_add(1));
    let mut out = Zeroizing::new(Vec::with_capacity(target));
    out.extend_from_slice(inner);
    out.push(PAD_MARKER);
    out.resize(target, 0);
    out
}

/// Strips the padding of a decrypted `c2` plaintext: the last non-zero byte must be `0x80`;
/// what precedes it is returned (delivery key and content).
pub fn unpad(padded: &[u8]) -> Result<&[u8]> {
    let end = padded
        .iter()
        .rposition(|b| *b != 0)
        .ok_or(Error::malformed(WHAT, "padding has no marker"))?;
    let (inner, rest) = padded.split_at(end);
    if rest.first() != Some(&PAD_MARKER) {
        return Err(Error::malformed(WHAT, "padding has no marker"));
    }
    Ok(inner)
}

/// The key schedule of one envelope: `ck`, `k1` from the ephemeral DH.
fn sender_keys(
    ss1: &[u8; KEY_LEN],
    recipient: &[u8; KEY_LEN],
    ephemeral: &[u8; KEY_LEN],
) -> (Zeroizing<[u8; KEY_LEN]>, Zeroizing<[u8; KEY_LEN]>) {
    let mut salt = Vec::with_capacity(SEAL_LABEL.len() + 2 * KEY_LEN);
    salt.extend_from_slice(SEAL_LABEL);
    salt.extend_from_slice(recipient);
    salt.extend_from_slice(ephemeral);
    let hk = Hkdf::<Sha256>::new(Some(&salt), ss1);
    let mut okm = Zeroizing::new([0u8; 2 * KEY_LEN]);
    // 64 bytes is far below HKDF-SHA256's limit, so expand cannot fail.
    let _ = hk.expand(SEAL_SENDER_INFO, okm.as_mut());
    let mut ck = Zeroizing::new([0u8; KEY_LEN]);
    let mut k1 = Zeroizing::new([0u8; KEY_LEN]);
    let (a, b) = okm.split_at(KEY_LEN);
    ck.copy_from_slice(a);
    k1.copy_from_slice(b);
    (ck, k1)
}

/// `k2` from the static-static DH, chained on `ck` and `c1`.
fn content_key(ss2: &[u8; KEY_LEN], ck: &[u8; KEY_LEN], c1: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    let mut salt = Zeroizing::new(Vec::with_capacity(KEY_LEN + c1.len()));
    salt.extend_from_slice(ck);
    salt.extend_from_slice(c1);
    let hk = Hkdf::<Sha256>::new(Some(&salt), ss2);
    let mut k2 = Zeroizing::new([0u8; KEY_LEN]);
    let _ = hk.expand(SEAL_CONTENT_INFO, k2.as_mut());
    k2
}

fn cipher(key: &[u8; KEY_LEN]) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(&Key::from(*key))
}

/// Each key seals exactly one message, so the nonce is fixed at zero.
fn zero_nonce() -> Nonce {
    Nonce::from([0u8; 12])
}

fn aad(first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(1 + first.len() + second.len());
    ad.push(SEALED_VERSION);
    ad.extend_from_slice(first);
    ad.extend_from_slice(second);
    ad
}

/// Seals `content` for the device whose identity is `to`, from the device `from` holding
/// `sender` and the delivery key `delivery_key`.
///
/// # Errors
/// `TooLarge` for content over [`MAX_SEALED_CONTENT_LEN`]; `InvalidKey` if a DH is
/// non-contributory (a validated `to` never is).
pub fn seal(
    sender: &DeviceIdentityKeyPair,
    from: &DeviceAddress,
    delivery_key: &DeliveryKey,
    to: &DeviceIdentity,
    content: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>> {
    let mut ephemeral = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(ephemeral.as_mut());
    seal_with_ephemeral(sender, from, delivery_key, to, content, &ephemeral)
}

/// [`seal`] with the ephemeral X25519 secret given (32 bytes, unclamped), for test vectors.
/// Never reuse an ephemeral secret.
///
/// # Errors
/// As [`seal`].
pub fn seal_with_ephemeral(
    sender: &DeviceIdentityKeyPair,
    from: &DeviceAddress,
    delivery_key: &DeliveryKey,
    to: &DeviceIdentity,
    content: &[u8],
    ephemeral: &[u8; KEY_LEN],
) -> Result<Vec<u8>> {
    if content.len() > MAX_SEALED_CONTENT_LEN {
        return Err(ProtocolError::TooLarge(content.len()).into());
    }
    let e = StaticSecret::from(*ephemeral);
    let e_pub = PublicKey::from(&e).to_bytes();
    let ik_r = to.dh_public();
    let ss1 = dh(&e, &ik_r)?;
    let (ck, k1) = sender_keys(&ss1, to.dh_key(), &e_pub);

    let identity = sender.public();
    let mut sender_block = Zeroizing::new(Vec::with_capacity(SEALED_SENDER_LEN));
    sender_block.extend_from_slice(from.account.as_bytes());
    sender_block.extend_from_slice(&from.device_id.to_be_bytes());
    sender_block.extend_from_slice(&identity.to_bytes());
    let c1 = cipher(&k1)
        .encrypt(
            &zero_nonce(),
            Payload {
                msg: &sender_block,
                aad: &aad(&e_pub, to.dh_key()),
            },
        )
        .map_err(|_| ProtocolError::TooLarge(SEALED_SENDER_LEN))?;

    let ss2 = dh(sender.dh_secret(), &ik_r)?;
    let k2 = content_key(&ss2, &ck, &c1);
    let mut inner = Zeroizing::new(Vec::with_capacity(DELIVERY_KEY_LEN + content.len()));
    inner.extend_from_slice(delivery_key.as_bytes());
    inner.extend_from_slice(content);
    let padded = pad(&inner);
    let c2 = cipher(&k2)
        .encrypt(
            &zero_nonce(),
            Payload {
                msg: &padded,
                aad: &aad(&e_pub, &c1),
            },
        )
        .map_err(|_| ProtocolError::TooLarge(content.len()))?;

    let mut out = Vec::with_capacity(SEALED_HEADER_LEN + c2.len());
    out.push(SEALED_VERSION);
    out.extend_from_slice(&e_pub);
    out.extend_from_slice(&c1);
    out.extend_from_slice(&c2);
    Ok(out)
}

/// Opens a sealed envelope addressed to the device holding `recipient`.
///
/// Checks, in order: the version byte (`UnsupportedVersion`), the length (a bucket,
/// `Malformed`), the ephemeral key (`InvalidKey`), `c1` (`SealedDecryptFailed`), the sender's
/// keys (`InvalidKey`, or `Malformed` for a bad length), `c2` (`SealedDecryptFailed`), the
/// padding (`Malformed`, also when the envelope is longer than its content's bucket).
///
/// The sender is authenticated as the holder of `identity`'s DH key; whether that identity is
/// the one listed for `from` is for the caller to check
/// ([`Device::open_sealed`](crate::device::Device::open_sealed) does).
pub fn open(recipient: &DeviceIdentityKeyPair, bytes: &[u8]) -> Result<Opened> {
    let (version, rest) = bytes.split_first().ok_or(Error::malformed(WHAT, "empty"))?;
    if *version != SEALED_VERSION {
        return Err(ProtocolError::UnsupportedVersion(u32::from(*version)).into());
    }
    if bytes.len() > MAX_SEALED_LEN {
        return Err(Error::malformed(WHAT, "too long"));
    }
    if !is_bucket(bytes.len()) {
        return Err(Error::malformed(WHAT, "length is not a bucket"));
    }
    let (e_pub, rest) = rest
        .split_at_checked(KEY_LEN)
        .ok_or(Error::malformed(WHAT, "too short"))?;
    let (c1, c2) = rest
        .split_at_checked(SEALED_SENDER_CT_LEN)
        .ok_or(Error::malformed(WHAT, "too short"))?;
    let e_pub: [u8; KEY_LEN] = array(e_pub, WHAT, "too short")?;
    let e = x25519_public(&e_pub)?;
    let own = recipient.public();
    let ss1 = dh(recipient.dh_secret(), &e)?;
    let (ck, k1) = sender_keys(&ss1, own.dh_key(), &e_pub);
    let sender_block = Zeroizing::new(
        cipher(&k1)
            .decrypt(
                &zero_nonce(),
                Payload {
                    msg: c1,
                    aad: &aad(&e_pub, own.dh_key()),
                },
            )
            .map_err(|_| AuthError::SealedDecryptFailed)?,
    );
    let (account, rest) = sender_block
        .split_at_checked(KEY_LEN)
        .ok_or(Error::malformed(WHAT, "sender block too short"))?;
    let (device_id, identity) = rest
        .split_at_checked(4)
        .ok_or(Error::malformed(WHAT, "sender block too short"))?;
    let account = AccountId::from_bytes(account)?;
    let device_id = u32::from_be_bytes(array(device_id, WHAT, "sender block too short")?);
    let identity = DeviceIdentity::from_bytes(identity)?;

    let ss2 = dh(recipient.dh_secret(), &identity.dh_public())?;
    let k2 = content_key(&ss2, &ck, c1);
    let padded = Zeroizing::new(
        cipher(&k2)
            .decrypt(
                &zero_nonce(),
                Payload {
                    msg: c2,
                    aad: &aad(&e_pub, c1),
                },
            )
            .map_err(|_| AuthError::SealedDecryptFailed)?,
    );
    let inner = unpad(&padded)?;
    let (delivery_key, content) = inner
        .split_at_checked(DELIVERY_KEY_LEN)
        .ok_or(Error::malformed(WHAT, "no delivery key"))?;
    if sealed_len(content.len()) != bytes.len() {
        return Err(Error::malformed(WHAT, "padding is not canonical"));
    }
    Ok(Opened {
        from: DeviceAddress { account, device_id },
        identity,
        delivery_key: DeliveryKey::from_bytes(&array(delivery_key, WHAT, "no delivery key")?),
        content: Zeroizing::new(content.to_vec()),
    })
}

#[cfg(test)]
mod tests;
