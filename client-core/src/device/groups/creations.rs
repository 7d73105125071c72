//! Pending group creations: a new group's secret, kept durably from before its creation is
//! handed to the relay until the append is confirmed (PROTOCOL.md §17.5, §14 item 22).
//!
//! [`Device::create_group`] commits a record — the group secret, the signed creation and the
//! sealed first entry (nonce included), under the group id — before returning the write. A lost
//! answer, a crash or a killed process therefore cannot lose the secret of a log that may exist
//! on the relay. [`Device::group_write_landed`] removes the record in the transaction that
//! stores the group (and its pending notices). Until then, [`Device::pending_creations`] returns
//! it, with the write to hand to the relay again or to check against the log:
//!
//! * entry 1 of the slot's log is byte-identical to the record's entry: it landed — hand the
//!   write to [`Device::group_write_landed`];
//! * the log is empty: append the same entry at position 1 again;
//! * entry 1 is another one: the slot is taken (never the case for a fresh random secret) —
//!   [`Device::drop_pending_creation`].
//!
//! At most [`MAX_PENDING_CREATIONS`] are kept (a creation past it is refused); one older than
//! [`PENDING_CREATION_MAX_AGE_MS`] is dropped. The record is versioned:
//! `0x01 ‖ u64be(created_at) ‖ secret (32) ‖ u32be(len) ‖ signed creation ‖ sealed entry`.

use zeroize::Zeroizing;

use super::GroupLogWrite;
use crate::consts::{MAX_PENDING_CREATIONS, PENDING_CREATION_MAX_AGE_MS};
use crate::device::Device;
use crate::device::error::{DeviceError, Result};
use crate::error::ProtocolError;
use crate::group::{GroupSecret, SignedChange};
use crate::keys::array;
use crate::sender_key::GroupId;
use crate::store::kv::{Batch, KvStore, Namespace};

/// Version byte of a stored pending creation.
const RECORD_VERSION: u8 = 1;
/// The length of the group secret in a record.
const SECRET_LEN: usize = 32;
const WHAT: &str = "stored pending group creation";

/// A group creation whose append the relay has not confirmed (see the module documentation).
/// Deliberately not `Debug`: the write carries the group secret.
pub struct PendingCreation {
    /// The new group's id.
    pub group: GroupId,
    /// Its name.
    pub name: String,
    /// When it was created (milliseconds since the epoch, as given to `create_group`).
    pub created_at: u64,
    /// The creation: append `write.entry` at position 1 of `write.slot()` (again), or hand it to
    /// [`Device::group_write_landed`] once the log shows it.
    pub write: GroupLogWrite,
}

/// Why a pending creation is given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreationDropped {
    /// The slot's log starts with another entry (or the relay refused the write token): the
    /// slot is taken, and this creation can never land.
    SlotTaken,
    /// The relay refused the append for what it is: nothing was stored.
    Refused,
    /// Not resolved within [`PENDING_CREATION_MAX_AGE_MS`].
    Expired,
    /// The stored record does not decode or does not check (a damaged store).
    Unreadable,
}

fn encode_record(
    created_at: u64,
    secret: &GroupSecret,
    creation: &SignedChange,
    entry: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let len = u32::try_from(creation.signed.len())
        .map_err(|_| ProtocolError::TooLarge(creation.signed.len()))?;
    let mut v = Zeroizing::new(Vec::with_capacity(
        1 + 8 + SECRET_LEN + 4 + creation.signed.len() + entry.len(),
    ));
    v.push(RECORD_VERSION);
    v.extend_from_slice(&created_at.to_be_bytes());
    v.extend_from_slice(&secret.to_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&creation.signed);
    v.extend_from_slice(entry);
    Ok(v)
}

/// Decodes and checks a record stored under `key`: the creation parses, is a creation of the
/// group id it is stored under naming the secret's slot, and the entry opens at position 1 to
/// exactly the signed creation.
fn decode_record(key: &[u8], v: &[u8]) -> Result<PendingCreation> {
    let group = GroupId(array(key, WHAT, "bad key")?);
    let (version, rest) = v
        .split_first()
        .ok_or(DeviceError::malformed(WHAT, "too short"))?;
    if *version != RECORD_VERSION {
        return Err(DeviceError::malformed(WHAT, "unknown version"));
    }
    let (created_at, rest) = rest
        .split_at_checked(8)
        .ok_or(DeviceError::malformed(WHAT, "too short"))?;
    let (secret, rest) = rest
        .split_at_checked(SECRET_LEN)
        .ok_or(DeviceError::malformed(WHAT, "too short"))?;
    let (len, rest) = rest
        .split_at_checked(4)
        .ok_or(DeviceError::malformed(WHAT, "too short"))?;
    let len = usize::try_from(u32::from_be_bytes(array(len, WHAT, "bad length")?))
        .map_err(|_| DeviceError::malformed(WHAT, "bad length"))?;
    let (signed, entry) = rest
        .split_at_checked(len)
        .ok_or(DeviceError::malformed(WHAT, "too short"))?;
    let secret = GroupSecret::from_bytes(secret)?;
    let creation = SignedChange::parse(signed)?;
    if creation.body.epoch != 1
        || creation.body.group != group
        || creation.body.slot != Some(secret.slot())
    {
        return Err(DeviceError::malformed(
            WHAT,
            "not the creation of its group",
        ));
    }
    let opened = Zeroizing::new(secret.open_entry(1, entry)?);
    if opened.as_slice() != creation.signed.as_slice() {
        return Err(DeviceError::malformed(
            WHAT,
            "the entry is another creation",
        ));
    }
    Ok(PendingCreation {
        group,
        name: creation.body.name.clone().unwrap_or_default(),
        created_at: u64::from_be_bytes(array(created_at, WHAT, "bad time")?),
        write: GroupLogWrite {
            group,
            seq: 1,
            entry: entry.to_vec(),
            secret,
            creation: Some(creation),
        },
    })
}

impl<S: KvStore> Device<S> {
    /// Commits the pending creation of `w` (a creation from [`Device::create_group`]) before it
    /// leaves the device. Refused past [`MAX_PENDING_CREATIONS`].
    pub(super) fn keep_creation(&mut self, w: &GroupLogWrite, now: u64) -> Result<()> {
        let Some(creation) = w.creation.as_ref() else {
            return Err(ProtocolError::Misuse("not a creation").into());
        };
        let held = self.store.scan(Namespace::PendingCreations)?;
        if held.len() >= MAX_PENDING_CREATIONS && !held.iter().any(|(k, _)| k == &w.group.0) {
            return Err(ProtocolError::Misuse(
                "too many group creations wait for the relay; try again once connected",
            )
            .into());
        }
        let mut batch = Batch::new();
        batch.put(
            Namespace::PendingCreations,
            w.group.0.to_vec(),
            encode_record(now, &w.secret, creation, &w.entry)?,
        );
        self.store.commit(batch)?;
        Ok(())
    }

    /// The number of pending group creations held.
    ///
    /// # Errors
    /// [`DeviceError::Store`] if the store cannot be read.
    pub fn pending_creation_count(&self) -> Result<usize> {
        Ok(self.store.scan(Namespace::PendingCreations)?.len())
    }

    /// The pending group creation of group `g`, if one is held (an unreadable record reads as
    /// none; [`Self::pending_creations`] drops it).
    ///
    /// # Errors
    /// [`DeviceError::Store`] if the store cannot be read.
    pub fn pending_creation(&self, g: &GroupId) -> Result<Option<PendingCreation>> {
        let Some(v) = self.store.get(Namespace::PendingCreations, &g.0)? else {
            return Ok(None);
        };
        Ok(decode_record(&g.0, &v).ok())
    }

    /// The group creations whose append the relay has not confirmed, oldest first, each with
    /// the write to append again or to check against the slot's log. Drops (in one commit)
    /// those older than [`PENDING_CREATION_MAX_AGE_MS`] and those whose record is unreadable.
    ///
    /// # Errors
    /// [`DeviceError::Store`] if the store cannot be read or the commit fails (nothing is
    /// dropped then).
    pub fn pending_creations(&mut self, now: u64) -> Result<Vec<PendingCreation>> {
        let cutoff = now.saturating_sub(PENDING_CREATION_MAX_AGE_MS);
        let mut out = Vec::new();
        let mut batch = Batch::new();
        for (k, v) in self.store.scan(Namespace::PendingCreations)? {
            match decode_record(&k, &v) {
                Ok(p) if p.created_at < cutoff => {
                    tracing::warn!(
                        reason = ?CreationDropped::Expired,
                        "a group creation the relay never confirmed is given up"
                    );
                    batch.delete(Namespace::PendingCreations, k);
                }
                Ok(p) => out.push(p),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        reason = ?CreationDropped::Unreadable,
                        "a stored group creation is unreadable; dropped"
                    );
                    batch.delete(Namespace::PendingCreations, k);
                }
            }
        }
        if !batch.is_empty() {
            self.store.commit(batch)?;
        }
        out.sort_by_key(|p| (p.created_at, p.group.0));
        Ok(out)
    }

    /// Gives up the pending creation of group `g` (`reason` is logged). Returns whether one was
    /// held. Its secret is gone afterwards: if its entry is on the relay, the log is orphaned.
    ///
    /// # Errors
    /// [`DeviceError::Store`] if the commit fails (it stays pending).
    pub fn drop_pending_creation(&mut self, g: &GroupId, reason: CreationDropped) -> Result<bool> {
        if self.store.get(Namespace::PendingCreations, &g.0)?.is_none() {
            return Ok(false);
        }
        tracing::warn!(?reason, "a pending group creation is given up");
        let mut batch = Batch::new();
        batch.delete(Namespace::PendingCreations, g.0.to_vec());
        self.store.commit(batch)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_record_does_not_decode() {
        let key = [7u8; 32];
        assert!(decode_record(&key, &[]).is_err());
        assert!(decode_record(&key, &[2; 80]).is_err());
        let mut v = vec![RECORD_VERSION];
        v.extend_from_slice(&[0; 8 + SECRET_LEN]);
        v.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_record(&key, &v).is_err(), "a length past the end");
        assert!(decode_record(&key[1..], &v).is_err(), "a bad key");
    }
}
