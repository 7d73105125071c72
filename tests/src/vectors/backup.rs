//! `backup.json`: recovery keys (their text, checksum, archive key and backup blob names) and
//! archives sealed with the chunked encryption of PROTOCOL.md §22.3 for plaintexts around the
//! chunk size, with every intermediate; and archives `open` refuses (wrong key, altered chunk,
//! truncated) and a mistyped recovery key.
//!
//! Every value is computed twice: by hand here (hkdf, hmac, sha2, chacha20poly1305 and the byte
//! layout written out) and through `hush_core::backup`; the two must agree, or nothing is
//! written.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use hush_core::backup::{self, BackupError, RecoveryKey};
use hush_core::consts::{BACKUP_CHUNK, BACKUP_MAGIC};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{FORMAT_VERSION, GenResult, draw, ensure, hx, seed};

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/// One backup slot's blob name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSlotRecord {
    /// The slot (0 or 1).
    pub slot: u8,
    /// `HKDF(key, "Hush-Backup-Blob-Id-v1" ‖ slot, 16)`.
    pub blob_id: String,
    /// `HKDF(key, "Hush-Backup-Blob-Capability-v1" ‖ slot, 32)`.
    pub capability: String,
}

/// A recovery key and an archive sealed under its archive key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupVector {
    /// Short unique name.
    pub name: String,
    /// What the vector shows.
    pub description: String,
    /// ChaCha20Rng seed (32 bytes).
    pub seed: String,
    /// The recovery key (32 bytes, drawn first).
    pub recovery_key: String,
    /// `SHA-256("Hush-Recovery-Key-Check-v1" ‖ key)[0..3]`.
    pub checksum: String,
    /// The key as written down (Crockford base32 of key ‖ checksum, groups of 4).
    pub recovery_key_text: String,
    /// `HKDF(key, "Hush-Backup-Archive-Key-v1", 32)`.
    pub archive_key: String,
    /// The two backup slots.
    pub slots: Vec<BackupSlotRecord>,
    /// The archive nonce (32 bytes, drawn second).
    pub nonce: String,
    /// `HMAC-SHA256(archive key, "Hush-Backup-Key-Check-v1" ‖ "HUSHBAK1" ‖ nonce)[0..16]`.
    pub key_check: String,
    /// `HKDF(salt = nonce, archive key, "Hush-Backup-Stream-v1", 32)`.
    pub stream_key: String,
    /// The plaintext (drawn third).
    pub plaintext: String,
    /// Number of chunks.
    pub chunks: u32,
    /// The sealed archive: header ‖ chunks.
    pub archive: String,
}

/// An input `open` or `RecoveryKey::parse` must refuse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupNegativeVector {
    /// Short unique name.
    pub name: String,
    /// What is wrong.
    pub description: String,
    /// The vector whose archive is opened (empty for a key text).
    pub archive_of: String,
    /// The vector whose archive key opens it (empty for a key text).
    pub key_of: String,
    /// The archive is cut to this many bytes first (none: whole).
    pub truncate_to: Option<u64>,
    /// The byte at this offset is XORed with 0x01 first (none: unchanged).
    pub flip_at: Option<u64>,
    /// A recovery key text to read (empty for an archive).
    pub recovery_key_text: String,
    /// The `BackupError` variant, by name.
    pub expected_error: String,
}

/// `backup.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupFile {
    /// `"backup"`.
    pub file: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the file holds.
    pub description: String,
    /// Recovery keys and archives.
    pub vectors: Vec<BackupVector>,
    /// Refused inputs.
    pub negative: Vec<BackupNegativeVector>,
}

/// The name of a [`BackupError`] variant, without its payload (`"Tampered"`).
pub fn backup_error_name(e: &BackupError) -> String {
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .unwrap_or_default()
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------------

/// Plaintext lengths: empty, short, exactly one chunk, one chunk and a byte.
const PLAINTEXTS: [(usize, &str); 4] = [
    (0, "an empty plaintext: one empty chunk, marked last"),
    (37, "a short plaintext: one chunk"),
    (
        BACKUP_CHUNK,
        "exactly one full chunk (65536 bytes), marked last",
    ),
    (
        BACKUP_CHUNK + 1,
        "one byte over a chunk: a full middle chunk and a last chunk of one byte",
    ),
];

fn hkdf(salt: Option<&[u8]>, ikm: &[u8], info: &[&[u8]], out: &mut [u8]) -> GenResult<()> {
    Hkdf::<Sha256>::new(salt, ikm)
        .expand_multi_info(info, out)
        .map_err(|_| "hkdf".into())
}

/// An archive sealed by hand: its bytes, key check, stream key and number of chunks.
type Sealed = (Vec<u8>, [u8; 16], [u8; 32], u32);

fn by_hand_seal(archive_key: &[u8; 32], nonce: &[u8; 32], plaintext: &[u8]) -> GenResult<Sealed> {
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(archive_key)?;
    mac.update(b"Hush-Backup-Key-Check-v1");
    mac.update(BACKUP_MAGIC);
    mac.update(nonce);
    let full = mac.finalize().into_bytes();
    let mut key_check = [0u8; 16];
    key_check.copy_from_slice(full.get(..16).ok_or("mac")?);
    let mut stream = [0u8; 32];
    hkdf(
        Some(nonce),
        archive_key,
        &[b"Hush-Backup-Stream-v1"],
        &mut stream,
    )?;
    let mut header = BACKUP_MAGIC.to_vec();
    header.extend_from_slice(nonce);
    header.extend_from_slice(&key_check);
    let chunks: Vec<&[u8]> = if plaintext.is_empty() {
        vec![&[][..]]
    } else {
        plaintext.chunks(BACKUP_CHUNK).collect()
    };
    let count = chunks.len();
    let aead = ChaCha20Poly1305::new(&Key::from(stream));
    let mut out = header.clone();
    for (i, c) in chunks.into_iter().enumerate() {
        let mut n = (i as u64).to_be_bytes().to_vec();
        n.extend_from_slice(&u32::from(i + 1 == count).to_be_bytes());
        let n: [u8; 12] = n.try_into().map_err(|_| "nonce")?;
        let sealed = aead
            .encrypt(
                &Nonce::from(n),
                Payload {
                    msg: c,
                    aad: &header,
                },
            )
            .map_err(|_| "aead")?;
        out.extend_from_slice(&sealed);
    }
    Ok((out, key_check, stream, u32::try_from(count)?))
}

fn backup_vector(index: usize, len: usize, why: &str) -> GenResult<BackupVector> {
    let s = seed("backup.json", index)?;
    let mut rng = ChaCha20Rng::from_seed(s);
    let key: [u8; 32] = draw(&mut rng);
    let nonce: [u8; 32] = draw(&mut rng);
    let mut plaintext = vec![0u8; len];
    rng.fill_bytes(&mut plaintext);

    let digest = Sha256::new()
        .chain_update(b"Hush-Recovery-Key-Check-v1")
        .chain_update(key)
        .finalize();
    let checksum = digest.get(..3).ok_or("digest")?.to_vec();
    let mut archive_key = [0u8; 32];
    hkdf(
        None,
        &key,
        &[b"Hush-Backup-Archive-Key-v1"],
        &mut archive_key,
    )?;
    let mut slots = Vec::new();
    let rk = RecoveryKey::from_bytes(&key);
    for slot in 0..2u8 {
        let mut id = [0u8; 16];
        let mut cap = [0u8; 32];
        hkdf(None, &key, &[b"Hush-Backup-Blob-Id-v1", &[slot]], &mut id)?;
        hkdf(
            None,
            &key,
            &[b"Hush-Backup-Blob-Capability-v1", &[slot]],
            &mut cap,
        )?;
        let core = rk.slot(slot)?;
        ensure(
            core.blob_id == id && *core.capability == cap,
            "slot names agree",
        )?;
        slots.push(BackupSlotRecord {
            slot,
            blob_id: hx(id),
            capability: hx(cap),
        });
    }
    ensure(*rk.archive_key()? == archive_key, "archive keys agree")?;
    let text = rk.to_text();
    ensure(
        RecoveryKey::parse(&text)?.as_bytes() == &key,
        "the key text reads back",
    )?;
    let (archive, key_check, stream, chunks) = by_hand_seal(&archive_key, &nonce, &plaintext)?;
    ensure(
        backup::seal_with_nonce(&archive_key, &nonce, &plaintext)? == archive,
        "archives agree",
    )?;
    ensure(
        *backup::stream_key(&archive_key, &nonce)? == stream,
        "stream keys agree",
    )?;
    ensure(
        backup::open(&archive_key, &archive)?.as_slice() == plaintext.as_slice(),
        "the archive opens",
    )?;
    Ok(BackupVector {
        name: format!("plaintext_{len}"),
        description: why.to_owned(),
        seed: hx(s),
        recovery_key: hx(key),
        checksum: hx(checksum),
        recovery_key_text: text.as_str().to_owned(),
        archive_key: hx(archive_key),
        slots,
        nonce: hx(nonce),
        key_check: hx(key_check),
        stream_key: hx(stream),
        plaintext: hx(&plaintext),
        chunks,
        archive: hx(&archive),
    })
}

fn negative(v: &[BackupVector]) -> GenResult<Vec<BackupNegativeVector>> {
    let find = |name: &str| {
        v.iter()
            .find(|x| x.name == name)
            .ok_or_else(|| format!("no vector {name}"))
    };
    let two = format!("plaintext_{}", BACKUP_CHUNK + 1);
    let first_chunk_end = (backup::HEADER_LEN + BACKUP_CHUNK + 16) as u64;
    let mut out = vec![
        BackupNegativeVector {
            name: "wrong_key".into(),
            description: "an archive opened with another recovery key's archive key: the header's key check tells"
                .into(),
            archive_of: "plaintext_37".into(),
            key_of: "plaintext_0".into(),
            truncate_to: None,
            flip_at: None,
            recovery_key_text: String::new(),
            expected_error: "WrongKey".into(),
        },
        BackupNegativeVector {
            name: "altered_chunk".into(),
            description: "the first byte of chunk 1 altered: that chunk does not authenticate".into(),
            archive_of: two.clone(),
            key_of: two.clone(),
            truncate_to: None,
            flip_at: Some(first_chunk_end),
            recovery_key_text: String::new(),
            expected_error: "Tampered".into(),
        },
        BackupNegativeVector {
            name: "altered_header".into(),
            description: "a byte of the nonce altered: the key check no longer matches".into(),
            archive_of: "plaintext_37".into(),
            key_of: "plaintext_37".into(),
            truncate_to: None,
            flip_at: Some(8),
            recovery_key_text: String::new(),
            expected_error: "WrongKey".into(),
        },
        BackupNegativeVector {
            name: "truncated_at_chunk".into(),
            description: "cut after its first (middle) chunk: the last piece is not marked last".into(),
            archive_of: two.clone(),
            key_of: two,
            truncate_to: Some(first_chunk_end),
            flip_at: None,
            recovery_key_text: String::new(),
            expected_error: "Truncated".into(),
        },
        BackupNegativeVector {
            name: "header_only".into(),
            description: "a header and no chunk".into(),
            archive_of: "plaintext_0".into(),
            key_of: "plaintext_0".into(),
            truncate_to: Some(backup::HEADER_LEN as u64),
            flip_at: None,
            recovery_key_text: String::new(),
            expected_error: "Truncated".into(),
        },
    ];
    // A typo: the last character of a key text changed.
    let mut typo = find("plaintext_37")?.recovery_key_text.clone();
    let last = typo.pop().ok_or("empty key text")?;
    typo.push(if last == '0' { '1' } else { '0' });
    out.push(BackupNegativeVector {
        name: "key_typo".into(),
        description: "a recovery key text with its last character changed: the checksum catches it"
            .into(),
        archive_of: String::new(),
        key_of: String::new(),
        truncate_to: None,
        flip_at: None,
        recovery_key_text: typo,
        expected_error: "KeyChecksum".into(),
    });
    // Every refusal is checked through hush-core before it is written.
    for n in &out {
        let got = if n.archive_of.is_empty() {
            RecoveryKey::parse(&n.recovery_key_text).map(|_| ())
        } else {
            let mut a = hex::decode(&find(&n.archive_of)?.archive)?;
            if let Some(t) = n.truncate_to {
                a.truncate(usize::try_from(t)?);
            }
            if let Some(f) = n.flip_at {
                let b = a.get_mut(usize::try_from(f)?).ok_or("flip offset")?;
                *b ^= 1;
            }
            let k: [u8; 32] = hex::decode(&find(&n.key_of)?.archive_key)?
                .try_into()
                .map_err(|_| "key")?;
            backup::open(&k, &a).map(|_| ())
        };
        match got {
            Err(e) if backup_error_name(&e) == n.expected_error => {}
            other => {
                return Err(
                    format!("{}: expected {}, got {other:?}", n.name, n.expected_error).into(),
                );
            }
        }
    }
    Ok(out)
}

pub(super) fn backup_file() -> GenResult<BackupFile> {
    let mut vectors = Vec::new();
    for (index, (len, why)) in PLAINTEXTS.iter().enumerate() {
        vectors.push(backup_vector(index, *len, why)?);
    }
    let negative = negative(&vectors)?;
    Ok(BackupFile {
        file: "backup".to_owned(),
        format_version: FORMAT_VERSION,
        description: "Recovery keys (text, checksum, archive key, backup blob names) and archives sealed with the \
                      chunked encryption of PROTOCOL.md §22 around the 64 KiB chunk size, with every intermediate; \
                      and archives and a key text that must be refused, with the BackupError variant."
            .to_owned(),
        vectors,
        negative,
    })
}
