//! The sled record of a blob's metadata (tree `blob_meta`): its layout, encoding and decoding.

use super::BlobMeta;
use crate::store::{Result, StoreError};

const META_LEN: usize = 8 + 32 + 36 + 8 + 8 + 1;

pub(super) fn encode_meta(meta: &BlobMeta, complete: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(META_LEN);
    v.extend_from_slice(&meta.size.to_be_bytes());
    v.extend_from_slice(&meta.capability_hash);
    v.extend_from_slice(&meta.owner);
    v.extend_from_slice(&meta.expires_at.to_be_bytes());
    v.extend_from_slice(&meta.created_at.to_be_bytes());
    v.push(u8::from(complete));
    v
}

fn take<const N: usize>(rest: &mut &[u8]) -> Option<[u8; N]> {
    let (head, tail) = rest.split_first_chunk::<N>()?;
    *rest = tail;
    Some(*head)
}

pub(super) fn decode_meta(v: &[u8]) -> Result<(BlobMeta, bool)> {
    let corrupt = StoreError::Corrupt("blob_meta");
    if v.len() != META_LEN {
        return Err(corrupt);
    }
    let mut r = v;
    let mut field = || -> Option<(BlobMeta, bool)> {
        let size = u64::from_be_bytes(take(&mut r)?);
        let capability_hash = take(&mut r)?;
        let owner = take(&mut r)?;
        let expires_at = u64::from_be_bytes(take(&mut r)?);
        let created_at = u64::from_be_bytes(take(&mut r)?);
        let complete = match take::<1>(&mut r)? {
            [0] => false,
            [1] => true,
            _ => return None,
        };
        Some((
            BlobMeta {
                size,
                capability_hash,
                owner,
                expires_at,
                created_at,
            },
            complete,
        ))
    };
    field().ok_or(corrupt)
}

pub(super) fn id_of(key: &[u8]) -> Result<[u8; 16]> {
    key.try_into().map_err(|_| StoreError::Corrupt("blob_meta"))
}
