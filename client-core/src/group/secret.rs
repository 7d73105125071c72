//! The group secret and what derives from it: the relay slot naming the group's log, the token
//! authorizing appends to it, and the key sealing its entries (PROTOCOL.md §17.1).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::consts::{
    GROUP_LOG_ENTRY_LABEL, GROUP_LOG_ENTRY_VERSION, GROUP_LOG_KEY_INFO, GROUP_LOG_SLOT_INFO,
    GROUP_LOG_WRITE_INFO, GROUP_SECRET_LEN, GROUP_SECRET_SALT, MAX_GROUP_LOG_ENTRY_LEN, AEAD_NONCE_LEN,
};
use crate::error::{AuthError, Error, Result};
use crate::keys::array;

/// The 32-byte secret shared by a group's member devices. It never reaches the relay: the relay
/// sees only the slot and the write token derived from it.
#[derive(Clone)]
pub struct GroupSecret(Zeroizing<[u8; GROUP_SECRET_LEN]>);

impl GroupSecret {
    /// A new random secret (a group's creation).
    pub fn random(rng: &mut impl CryptoRng) -> Self {
        let mut s = Zeroizing::new([0u8; GROUP_SECRET_LEN]);
        rng.fill_bytes(s.as_mut());
        Self(s)
    }

    /// Parses 32 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        Ok(Self(Zeroizing::new(array(
            b,
            "group secret",
            "must be 32 bytes",
        )?)))
    }

    /// The secret's bytes (to store it, or to hand it to a new member device).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_vec())
    }

    fn derive(&self, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let hk = Hkdf::<Sha256>::new(Some(GROUP_SECRET_SALT), self.0.as_ref());
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA-256's output limit.
        if hk.expand(info, out.as_mut()).is_err() {
            out.fill(0);
        }
        out
    }

    /// The relay slot naming the group's log.
    pub fn slot(&self) -> [u8; 32] {
        *self.derive(GROUP_LOG_SLOT_INFO)
    }

    /// The token the relay asks for before it appends to the log.
    pub fn write_token(&self) -> Zeroizing<[u8; 32]> {
        self.derive(GROUP_LOG_WRITE_INFO)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&Key::from(*self.derive(GROUP_LOG_KEY_INFO)))
    }

    fn associated_data(&self, seq: u64) -> Vec<u8> {
        let mut ad = Vec::with_capacity(GROUP_LOG_ENTRY_LABEL.len() + 40);
        ad.extend_from_slice(GROUP_LOG_ENTRY_LABEL);
        ad.extend_from_slice(&self.slot());
        ad.extend_from_slice(&seq.to_be_bytes());
        ad
    }

    /// Seals a signed change as the log entry at position `seq`:
    /// `0x01 ‖ nonce (12) ‖ ChaCha20-Poly1305(log key, nonce, ad = label ‖ slot ‖ u64be(seq))`.
    pub fn seal_entry(
        &self,
        seq: u64,
        signed_change: &[u8],
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<u8>> {
        let mut nonce = [0u8; AEAD_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let ad = self.associated_data(seq);
        let ct = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: signed_change,
                    aad: &ad,
                },
            )
            .map_err(|_| Error::malformed("group log entry", "cannot be sealed"))?;
        let mut out = Vec::with_capacity(1 + AEAD_NONCE_LEN + ct.len());
        out.push(GROUP_LOG_ENTRY_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        if out.len() > MAX_GROUP_LOG_ENTRY_LEN {
            return Err(crate::error::ProtocolError::TooLarge(out.len()).into());
        }
        Ok(out)
    }

    /// Opens the log entry at position `seq`, giving the signed change bytes.
    pub fn open_entry(&self, seq: u64, entry: &[u8]) -> Result<Vec<u8>> {
        if entry.len() > MAX_GROUP_LOG_ENTRY_LEN {
            return Err(Error::malformed("group log entry", "too long"));
        }
        let (version, rest) = entry
            .split_first()
            .ok_or(Error::malformed("group log entry", "empty"))?;
        if *version != GROUP_LOG_ENTRY_VERSION {
            return Err(Error::malformed("group log entry", "unknown version"));
        }
        let (nonce, ct) = rest
            .split_at_checked(AEAD_NONCE_LEN)
            .ok_or(Error::malformed("group log entry", "too short"))?;
        let nonce: [u8; AEAD_NONCE_LEN] = array(nonce, "group log entry", "nonce")?;
        let ad = self.associated_data(seq);
        self.cipher()
            .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad: &ad })
            .map_err(|_| AuthError::DecryptFailed.into())
    }
}
