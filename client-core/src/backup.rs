//! Encrypted backups and history-transfer archives (PROTOCOL.md §22).
//!
//! * [`RecoveryKey`]: the 32 random bytes a user writes down, shown as 56 Crockford base32
//!   characters (the key and a 3-byte checksum) in 14 groups of 4; from it come the archive key
//!   and the blob names and capabilities of the backup's slots on the relay.
//! * [`seal`] / [`open`]: the archive's streaming encryption: ChaCha20-Poly1305 over chunks of
//!   [`BACKUP_CHUNK`] bytes, each nonce binding the chunk's index and whether it is the last, so a
//!   reordered, dropped, truncated or extended archive is refused with a typed [`BackupError`].
//!
//! What goes inside (the account key, device lists, group records and the application's part) is
//! built and taken in by `Device::export_backup`, `Device::import_backup` and
//! `Device::restore`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::consts::{
    BACKUP_ARCHIVE_KEY_INFO, BACKUP_BLOB_CAPABILITY_INFO, BACKUP_BLOB_ID_INFO, BACKUP_CHUNK,
    BACKUP_KEY_CHECK_LABEL, BACKUP_MAGIC, BACKUP_SLOTS, BACKUP_STREAM_INFO, KEY_LEN,
    MAX_BACKUP_BYTES, RECOVERY_KEY_CHECK_LABEL, RECOVERY_KEY_CHECK_LEN,
};

/// Why a recovery key or an archive was refused. Nothing is changed by a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    /// The recovery key text has the wrong length or a character outside the alphabet.
    #[error("the recovery key is not 56 characters of its alphabet (0-9, A-Z without I, L, O, U)")]
    KeyFormat,
    /// The recovery key text decodes but its checksum does not match: a typo.
    #[error("the recovery key has a typo (its checksum does not match)")]
    KeyChecksum,
    /// The archive was not made with this key (its header's key check does not match).
    #[error("this key does not open the archive")]
    WrongKey,
    /// The archive does not begin with a valid header, or a chunk is shorter than its tag.
    #[error("not an archive: {0}")]
    Malformed(&'static str),
    /// The archive ends early: its last chunk is not marked as the last one.
    #[error("the archive is truncated")]
    Truncated,
    /// A chunk does not authenticate at its place: altered, reordered or from another archive.
    #[error("the archive was altered (chunk {chunk} does not authenticate)")]
    Tampered {
        /// The index of the first chunk that failed.
        chunk: u64,
    },
    /// The archive is larger than a device reads ([`MAX_BACKUP_BYTES`]).
    #[error("the archive is too large")]
    TooLarge,
    /// The archive's contents are of an unknown version or do not decode.
    #[error("the archive's contents are unreadable: {0}")]
    Contents(&'static str),
    /// The archive belongs to another account than this device's.
    #[error("the archive belongs to another account")]
    WrongAccount,
    /// A recovery needs the account key, which the archive does not hold.
    #[error("the archive does not hold the account key")]
    NoAccountKey,
    /// A key derivation failed (not reachable with these output lengths).
    #[error("key derivation failed")]
    Kdf,
}

/// Crockford's base32 alphabet (no I, L, O, U).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters of an encoded recovery key: (32 + 3) bytes × 8 / 5.
pub const RECOVERY_KEY_CHARS: usize = (KEY_LEN + RECOVERY_KEY_CHECK_LEN) * 8 / 5;
/// Length of an archive header: magic ‖ nonce ‖ key check.
pub const HEADER_LEN: usize = 8 + 32 + 16;
const TAG_LEN: usize = 16;

/// Where one backup slot lives on the relay: a blob id and capability derived from the key.
#[derive(Clone, PartialEq, Eq)]
pub struct BackupSlot {
    /// The slot number (0 or 1).
    pub slot: u8,
    /// The blob's id (16 bytes).
    pub blob_id: [u8; 16],
    /// The blob's capability (32 bytes): who holds it may read and replace the blob.
    pub capability: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for BackupSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupSlot")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

/// The recovery key: 32 random bytes the user keeps (written down), from which everything needed
/// to find and open the account's backup is derived.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(..)")
    }
}

fn hkdf(
    ikm: &[u8],
    salt: Option<&[u8]>,
    info: &[&[u8]],
    out: &mut [u8],
) -> Result<(), BackupError> {
    hkdf::Hkdf::<Sha256>::new(salt, ikm)
        .expand_multi_info(info, out)
        .map_err(|_| BackupError::Kdf)
}

fn checksum(key: &[u8; KEY_LEN]) -> [u8; RECOVERY_KEY_CHECK_LEN] {
    let digest = Sha256::new()
        .chain_update(RECOVERY_KEY_CHECK_LABEL)
        .chain_update(key)
        .finalize();
    let mut out = [0u8; RECOVERY_KEY_CHECK_LEN];
    for (o, d) in out.iter_mut().zip(digest.iter()) {
        *o = *d;
    }
    out
}

impl RecoveryKey {
    /// A new random recovery key.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut k[..]);
        Self(k)
    }

    /// The key of these 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(*bytes))
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key as the user writes it down: 56 characters of Crockford's base32 (the key and its
    /// 3-byte checksum, most significant bit first) in 14 groups of 4 joined by `-`.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN + RECOVERY_KEY_CHECK_LEN]);
        for (r, b) in raw
            .iter_mut()
            .zip(self.0.iter().chain(checksum(&self.0).iter()))
        {
            *r = *b;
        }
        let mut out = Zeroizing::new(String::with_capacity(RECOVERY_KEY_CHARS + 13));
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut n = 0usize;
        for b in raw.iter() {
            acc = ((acc << 8) | u32::from(*b)) & 0xfff;
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                let v = (acc >> bits) & 31;
                if n > 0 && n.is_multiple_of(4) {
                    out.push('-');
                }
                out.push(char::from(
                    ALPHABET.get(v as usize).copied().unwrap_or(b'0'),
                ));
                n += 1;
            }
        }
        out
    }

    /// Reads a written-down key: case is ignored, as are spaces and `-`; `O` reads as `0` and
    /// `I`, `L` as `1` (Crockford). A wrong length or character is [`BackupError::KeyFormat`], a
    /// typo the checksum catches [`BackupError::KeyChecksum`].
    pub fn parse(text: &str) -> Result<Self, BackupError> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN + RECOVERY_KEY_CHECK_LEN]);
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut chars = 0usize;
        let mut out = 0usize;
        for c in text.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            let c = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                other => other,
            };
            let v = ALPHABET
                .iter()
                .position(|a| char::from(*a) == c)
                .ok_or(BackupError::KeyFormat)?;
            chars += 1;
            if chars > RECOVERY_KEY_CHARS {
                return Err(BackupError::KeyFormat);
            }
            acc = ((acc << 5) | u32::try_from(v).map_err(|_| BackupError::KeyFormat)?) & 0x1fff;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                let slot = raw.get_mut(out).ok_or(BackupError::KeyFormat)?;
                *slot = u8::try_from((acc >> bits) & 0xff).map_err(|_| BackupError::KeyFormat)?;
                out += 1;
            }
        }
        if chars != RECOVERY_KEY_CHARS || out != raw.len() {
            return Err(BackupError::KeyFormat);
        }
        let (key, check) = raw.split_at(KEY_LEN);
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(key);
        if checksum(&k).as_slice() != check {
            return Err(BackupError::KeyChecksum);
        }
        Ok(Self(k))
    }

    /// The archive key: `HKDF(salt = none, ikm = key, info = "Hush-Backup-Archive-Key-v1", 32)`.
    pub fn archive_key(&self) -> Result<Zeroizing<[u8; 32]>, BackupError> {
        let mut k = Zeroizing::new([0u8; 32]);
        hkdf(&self.0[..], None, &[BACKUP_ARCHIVE_KEY_INFO], &mut k[..])?;
        Ok(k)
    }

    /// Backup slot `slot` (0 or 1): blob id `HKDF(…, "Hush-Backup-Blob-Id-v1" ‖ slot, 16)` and
    /// capability `HKDF(…, "Hush-Backup-Blob-Capability-v1" ‖ slot, 32)`.
    pub fn slot(&self, slot: u8) -> Result<BackupSlot, BackupError> {
        if slot >= BACKUP_SLOTS {
            return Err(BackupError::Malformed("no such backup slot"));
        }
        let mut blob_id = [0u8; 16];
        let mut capability = Zeroizing::new([0u8; 32]);
        hkdf(
            &self.0[..],
            None,
            &[BACKUP_BLOB_ID_INFO, &[slot]],
            &mut blob_id,
        )?;
        hkdf(
            &self.0[..],
            None,
            &[BACKUP_BLOB_CAPABILITY_INFO, &[slot]],
            &mut capability[..],
        )?;
        Ok(BackupSlot {
            slot,
            blob_id,
            capability,
        })
    }
}

/// The key-check field of a header: `HMAC(archive key, label ‖ magic ‖ nonce)[..16]`.
fn key_check(archive_key: &[u8; 32], nonce: &[u8; 32]) -> Result<[u8; 16], BackupError> {
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(archive_key)
        .map_err(|_| BackupError::Kdf)?;
    mac.update(BACKUP_KEY_CHECK_LABEL);
    mac.update(BACKUP_MAGIC);
    mac.update(nonce);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(full.iter()) {
        *o = *b;
    }
    Ok(out)
}

/// The stream key of an archive: `HKDF(salt = nonce, ikm = archive key, "Hush-Backup-Stream-v1", 32)`.
pub fn stream_key(
    archive_key: &[u8; 32],
    nonce: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, BackupError> {
    let mut k = Zeroizing::new([0u8; 32]);
    hkdf(
        &archive_key[..],
        Some(nonce),
        &[BACKUP_STREAM_INFO],
        &mut k[..],
    )?;
    Ok(k)
}

/// The AEAD nonce of chunk `index`: `u64be(index) ‖ u32be(1 if last else 0)`.
pub fn chunk_nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    for (o, b) in n.iter_mut().zip(
        index
            .to_be_bytes()
            .iter()
            .chain(u32::from(last).to_be_bytes().iter()),
    ) {
        *o = *b;
    }
    n
}

/// Encrypts `plaintext` as an archive under `archive_key` with a fresh random nonce.
pub fn seal(
    archive_key: &[u8; 32],
    plaintext: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, BackupError> {
    let mut nonce = [0u8; 32];
    rng.fill_bytes(&mut nonce);
    seal_with_nonce(archive_key, &nonce, plaintext)
}

/// [`seal`] with a given archive nonce (for test vectors; a nonce must never be used twice under
/// one archive key).
pub fn seal_with_nonce(
    archive_key: &[u8; 32],
    nonce: &[u8; 32],
    plaintext: &[u8],
) -> Result<Vec<u8>, BackupError> {
    if plaintext.len() > MAX_BACKUP_BYTES {
        return Err(BackupError::TooLarge);
    }
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(BACKUP_MAGIC);
    header.extend_from_slice(nonce);
    header.extend_from_slice(&key_check(archive_key, nonce)?);
    let key = stream_key(archive_key, nonce)?;
    let aead = ChaCha20Poly1305::new(&Key::from(*key));
    let chunks: Vec<&[u8]> = if plaintext.is_empty() {
        vec![&[][..]]
    } else {
        plaintext.chunks(BACKUP_CHUNK).collect()
    };
    let count = chunks.len();
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + count * TAG_LEN);
    out.extend_from_slice(&header);
    for (i, chunk) in chunks.into_iter().enumerate() {
        let last = i + 1 == count;
        let sealed = aead
            .encrypt(
                &Nonce::from(chunk_nonce(i as u64, last)),
                Payload {
                    msg: chunk,
                    aad: &header,
                },
            )
            .map_err(|_| BackupError::Kdf)?;
        out.extend_from_slice(&sealed);
    }
    Ok(out)
}

/// Decrypts an archive made by [`seal`] under `archive_key`. Checks, in this order: the header
/// (magic, length), the key check ([`BackupError::WrongKey`]), then every chunk at its index
/// ([`BackupError::Tampered`]); a last chunk that authenticates only as a middle one is
/// [`BackupError::Truncated`].
pub fn open(archive_key: &[u8; 32], archive: &[u8]) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    if archive.len()
        > MAX_BACKUP_BYTES
            .saturating_add(MAX_BACKUP_BYTES / BACKUP_CHUNK * TAG_LEN + HEADER_LEN + TAG_LEN)
    {
        return Err(BackupError::TooLarge);
    }
    let (header, body) = archive
        .split_at_checked(HEADER_LEN)
        .ok_or(BackupError::Malformed("shorter than a header"))?;
    let (magic, rest) = header
        .split_at_checked(BACKUP_MAGIC.len())
        .ok_or(BackupError::Malformed("shorter than a header"))?;
    if magic != BACKUP_MAGIC {
        return Err(BackupError::Malformed("no archive magic"));
    }
    let (nonce, check) = rest
        .split_at_checked(32)
        .ok_or(BackupError::Malformed("shorter than a header"))?;
    let nonce: [u8; 32] = nonce
        .try_into()
        .map_err(|_| BackupError::Malformed("shorter than a header"))?;
    let expected = key_check(archive_key, &nonce)?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], check)) {
        return Err(BackupError::WrongKey);
    }
    if body.is_empty() {
        return Err(BackupError::Truncated);
    }
    let key = stream_key(archive_key, &nonce)?;
    let aead = ChaCha20Poly1305::new(&Key::from(*key));
    let pieces: Vec<&[u8]> = body.chunks(BACKUP_CHUNK + TAG_LEN).collect();
    let count = pieces.len();
    let mut out = Zeroizing::new(Vec::with_capacity(body.len()));
    for (i, piece) in pieces.into_iter().enumerate() {
        if piece.len() < TAG_LEN {
            return Err(BackupError::Malformed("a chunk shorter than its tag"));
        }
        let index = i as u64;
        let last = i + 1 == count;
        let payload = |msg| Payload { msg, aad: header };
        match aead.decrypt(&Nonce::from(chunk_nonce(index, last)), payload(piece)) {
            Ok(p) => out.extend_from_slice(&Zeroizing::new(p)),
            Err(_) => {
                // A last piece that opens as a middle chunk: the archive was cut after it.
                if last
                    && aead
                        .decrypt(&Nonce::from(chunk_nonce(index, false)), payload(piece))
                        .is_ok()
                {
                    return Err(BackupError::Truncated);
                }
                return Err(BackupError::Tampered { chunk: index });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
