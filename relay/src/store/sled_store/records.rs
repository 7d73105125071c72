//! The `mail` tree's records: keys, the current layout's fixed head, the earlier protobuf
//! layout, and what the counters charge a record to.

use hush_proto::Message;
use hush_proto::relay::StoredEnvelope;

use crate::store::usage::{self, stored_bytes};
use crate::store::{DeviceId, Envelope, Result, StoreError};

pub(super) fn mail_key(device: &DeviceId, seq: u64) -> [u8; 44] {
    let mut k = [0u8; 44];
    let (d, s) = k.split_at_mut(36);
    d.copy_from_slice(&device.key());
    s.copy_from_slice(&seq.to_be_bytes());
    k
}

/// First byte of a `mail` record in the current layout. A record of the earlier layout (a
/// protobuf `StoredEnvelope`) never starts with it: its first byte is a field tag, and field
/// number 0 does not exist.
pub(super) const RECORD_TAG: u8 = 0;

/// Length of a record's fixed head: tag ‖ sender account (32) ‖ sender device u32 ‖
/// client id (16) ‖ received at u64; the body follows.
pub(super) const RECORD_HEAD: usize = 1 + 32 + 4 + 16 + 8;

/// What a `mail` record holds besides its body.
pub(super) struct Head {
    pub(super) share: DeviceId,
    pub(super) client_id: [u8; 16],
    pub(super) received_at: u64,
}

/// Reads the fixed head of a current-layout record (`None` for any other record).
pub(super) fn record_head(v: &[u8]) -> Option<Head> {
    let (head, _) = v.split_first_chunk::<RECORD_HEAD>()?;
    let (tag, rest) = head.split_first()?;
    if *tag != RECORD_TAG {
        return None;
    }
    let (account, rest) = rest.split_first_chunk::<32>()?;
    let (device, rest) = rest.split_first_chunk::<4>()?;
    let (client_id, rest) = rest.split_first_chunk::<16>()?;
    let received_at = rest.first_chunk::<8>()?;
    Some(Head {
        share: DeviceId {
            account: *account,
            device: u32::from_be_bytes(*device),
        },
        client_id: *client_id,
        received_at: u64::from_be_bytes(*received_at),
    })
}

/// A stored record as an envelope (either layout).
pub(super) fn decode_envelope(recipient: DeviceId, v: &[u8]) -> Result<Envelope> {
    if let Some(h) = record_head(v) {
        return Ok(Envelope {
            recipient,
            share: h.share,
            client_id: h.client_id,
            body: v.get(RECORD_HEAD..).unwrap_or_default().to_vec(),
            received_at: h.received_at,
        });
    }
    decode_legacy(recipient, v)
}

/// A record of the earlier layout (a protobuf `StoredEnvelope`).
pub(super) fn decode_legacy(recipient: DeviceId, v: &[u8]) -> Result<Envelope> {
    let s = StoredEnvelope::decode(v).map_err(|_| StoreError::Corrupt("mail"))?;
    Ok(Envelope {
        recipient,
        share: DeviceId {
            account: s
                .sender_account
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt("mail"))?,
            device: s.sender_device,
        },
        client_id: s
            .client_id
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt("mail"))?,
        body: s.body,
        received_at: s.received_at,
    })
}

/// What the counters charge a record to, read without decoding it: the sending account and the
/// bytes as `usage::stored_bytes` counts them (the body is the rest of the record).
pub(super) fn charged(v: &[u8]) -> Option<([u8; 32], u64)> {
    match record_head(v) {
        Some(h) => Some((
            h.share.account,
            usage::body_stored_bytes(v.len().saturating_sub(RECORD_HEAD)),
        )),
        // An earlier-layout record is decoded (only databases written before this layout hold
        // them).
        None => {
            let nobody = DeviceId {
                account: [0; 32],
                device: 0,
            };
            let e = decode_legacy(nobody, v).ok()?;
            Some((e.share.account, stored_bytes(&e)))
        }
    }
}

/// When a record was received, read without decoding its body.
pub(super) fn received_at(v: &[u8]) -> Result<u64> {
    match record_head(v) {
        Some(h) => Ok(h.received_at),
        None => Ok(StoredEnvelope::decode(v)
            .map_err(|_| StoreError::Corrupt("mail"))?
            .received_at),
    }
}

/// An envelope as a record of the current layout: one allocation, the body copied once.
pub(super) fn encode_envelope(e: &Envelope) -> Vec<u8> {
    let mut v = Vec::with_capacity(RECORD_HEAD.saturating_add(e.body.len()));
    v.push(RECORD_TAG);
    v.extend_from_slice(&e.share.account);
    v.extend_from_slice(&e.share.device.to_be_bytes());
    v.extend_from_slice(&e.client_id);
    v.extend_from_slice(&e.received_at.to_be_bytes());
    v.extend_from_slice(&e.body);
    v
}
