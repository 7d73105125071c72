//! Key upkeep: what a device does by itself as time passes (pre-key rotation, stale sessions,
//! missing sender keys), and one-time pre-keys replenished from the relay's count.
//!
//! Everything takes the current time as an argument, so it is deterministic and testable with a
//! simulated clock; the client engine calls [`Device::upkeep`] on every connection and then
//! periodically, and [`Device::replenish_pre_keys_for`] when the relay says the device's
//! one-time keys run low.

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::{Device, Outgoing, id_key};
use crate::consts::{
    LAST_RESORT_PRE_KEY_ROTATION_MS, LAST_RESORT_ROTATE_AT_BASE_KEYS, ONE_TIME_PRE_KEY_BATCH,
    ONE_TIME_PRE_KEYS_KEPT, SESSION_SWEEP_INTERVAL_MS, SIGNED_PRE_KEY_ROTATION_MS,
};
use crate::device::error::Result;
use crate::prekeys::{KemPreKeyPair, OneTimePreKeyPair};
use crate::store::kv::{Batch, KvStore, Namespace};
use hush_proto::store as pstore;

/// When stale sessions were last swept (ms, big-endian u64).
const SESSIONS_SWEPT_AT: &[u8] = b"sessions-swept-at";

/// What one [`Device::upkeep`] did.
#[derive(Debug, Default)]
pub struct Upkeep {
    /// A new signed or last-resort pre-key was made: publish the pre-keys again.
    pub publish: bool,
    /// The signed pre-key was rotated.
    pub rotated_signed: bool,
    /// The last-resort ML-KEM pre-key was rotated.
    pub rotated_last_resort: bool,
    /// Sessions retired for being idle too long (when the sweep was due).
    pub sessions_retired: usize,
    /// Sender-key retry requests to send (buffered group messages still waiting).
    pub outgoing: Vec<Outgoing>,
    /// Sent messages dropped from the sent log for their age.
    pub sent_pruned: usize,
    /// Pending group notices dropped (expired, or no longer wanted).
    pub notices_pruned: usize,
}

impl<S: KvStore> Device<S> {
    /// Runs whatever key upkeep is due at `now` (ms):
    ///
    /// * the signed pre-key is rotated once the newest is [`SIGNED_PRE_KEY_ROTATION_MS`] old;
    /// * the last-resort ML-KEM pre-key once the newest is [`LAST_RESORT_PRE_KEY_ROTATION_MS`]
    ///   old, or once [`LAST_RESORT_ROTATE_AT_BASE_KEYS`] base keys have been used with it;
    /// * sessions idle for [`crate::consts::SESSION_MAX_IDLE_MS`] are retired, at most once per
    ///   [`SESSION_SWEEP_INTERVAL_MS`];
    /// * buffered group messages past their age limit are deleted and the sender keys the others
    ///   wait for are requested again ([`Device::retry_missing_sender_keys`]);
    /// * sent messages older than [`crate::consts::SENT_LOG_MAX_AGE_MS`] leave the sent log
    ///   ([`Device::prune_sent_log`]);
    /// * pending group notices older than [`crate::consts::PENDING_NOTICE_MAX_AGE_MS`], or no
    ///   longer wanted, are dropped ([`Device::prune_pending_notices`]).
    ///
    /// Rotated keys stay usable for [`crate::consts::ROTATED_PRE_KEYS_KEPT`] rotations. Calling
    /// it again at the same time does nothing more.
    ///
    /// # Errors
    /// [`DeviceError::Store`](crate::DeviceError::Store) if a commit fails; what was committed before stays done.
    pub fn upkeep(&mut self, rng: &mut impl CryptoRng, now: u64) -> Result<Upkeep> {
        let mut out = Upkeep::default();
        let spk_due = self
            .signed_pre_keys
            .values()
            .next_back()
            .is_none_or(|k| k.created_at.saturating_add(SIGNED_PRE_KEY_ROTATION_MS) <= now);
        if spk_due {
            self.rotate_signed_pre_key(rng, now)?;
            out.rotated_signed = true;
        }
        let last_resort_due = self
            .kem_pre_keys
            .values()
            .rfind(|k| k.last_resort)
            .is_none_or(|k| {
                k.created_at.saturating_add(LAST_RESORT_PRE_KEY_ROTATION_MS) <= now
                    || k.used_base_keys.len() >= LAST_RESORT_ROTATE_AT_BASE_KEYS
            });
        if last_resort_due {
            self.rotate_last_resort_pre_key(rng, now)?;
            out.rotated_last_resort = true;
        }
        out.publish = out.rotated_signed || out.rotated_last_resort;
        let swept_at = self
            .store
            .get(Namespace::Meta, SESSIONS_SWEPT_AT)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes);
        if swept_at.is_none_or(|t| t.saturating_add(SESSION_SWEEP_INTERVAL_MS) <= now || t > now) {
            out.sessions_retired = self.retire_stale_sessions(now)?;
            let mut batch = Batch::new();
            batch.put(
                Namespace::Meta,
                SESSIONS_SWEPT_AT,
                Zeroizing::new(now.to_be_bytes().to_vec()),
            );
            self.store.commit(batch)?;
        }
        out.sent_pruned = self.prune_sent_log(now)?;
        out.notices_pruned = self.prune_pending_notices(rng, now)?;
        out.outgoing = self.retry_missing_sender_keys(rng, now)?;
        Ok(out)
    }

    /// Tops the one-time pre-keys up from the relay's count of those it still holds
    /// (`one_time_left` X25519, `kem_left` ML-KEM, as in its `PreKeysLow`): each kind below
    /// [`ONE_TIME_PRE_KEY_BATCH`] gets enough new keys to reach it. The device's own count is not
    /// used: keys the relay handed out but nobody used are still here and would hide the
    /// shortage. Beyond [`ONE_TIME_PRE_KEYS_KEPT`] unused keys of a kind, the oldest are deleted.
    /// Returns whether new keys were made (then publish again).
    ///
    /// # Errors
    /// [`DeviceError::Store`](crate::DeviceError::Store) if the commit fails (nothing changes).
    pub fn replenish_pre_keys_for(
        &mut self,
        one_time_left: u32,
        kem_left: u32,
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<bool> {
        let n_otk = ONE_TIME_PRE_KEY_BATCH.saturating_sub(one_time_left);
        let n_kem = ONE_TIME_PRE_KEY_BATCH.saturating_sub(kem_left);
        if n_otk == 0 && n_kem == 0 {
            return Ok(false);
        }
        let mut batch = Batch::new();
        let first = self.take_pre_key_ids(n_otk.saturating_add(n_kem), &mut batch)?;
        let mut otks = Vec::new();
        let mut kems = Vec::new();
        for id in first..first.saturating_add(n_otk) {
            let k = OneTimePreKeyPair::generate(rng, id);
            let p = pstore::OneTimePreKeySecret {
                id,
                secret: k.secret_bytes().to_vec(),
            };
            batch.put(Namespace::OneTimePreKeys, id_key(id), super::encode(&p));
            otks.push(k);
        }
        let kem_first = first.saturating_add(n_otk);
        for id in kem_first..kem_first.saturating_add(n_kem) {
            let k = KemPreKeyPair::generate(rng, &self.identity, id, false, now);
            batch.put(
                Namespace::KemPreKeys,
                id_key(id),
                super::encode(&super::kem_record(&k)),
            );
            kems.push(k);
        }
        // The oldest unused keys beyond the cap (lowest ids: the relay hands out the oldest first).
        let otk_total = self.one_time_pre_keys.len().saturating_add(otks.len());
        let stale_otk: Vec<u32> = self
            .one_time_pre_keys
            .keys()
            .take(otk_total.saturating_sub(ONE_TIME_PRE_KEYS_KEPT))
            .copied()
            .collect();
        let kem_unused: Vec<u32> = self
            .kem_pre_keys
            .values()
            .filter(|k| !k.last_resort)
            .map(|k| k.id)
            .collect();
        let kem_total = kem_unused.len().saturating_add(kems.len());
        let stale_kem: Vec<u32> = kem_unused
            .into_iter()
            .take(kem_total.saturating_sub(ONE_TIME_PRE_KEYS_KEPT))
            .collect();
        for id in &stale_otk {
            batch.delete(Namespace::OneTimePreKeys, id_key(*id));
        }
        for id in &stale_kem {
            batch.delete(Namespace::KemPreKeys, id_key(*id));
        }
        self.store.commit(batch)?;
        self.next_pre_key_id = first.saturating_add(n_otk).saturating_add(n_kem);
        for id in stale_otk {
            self.one_time_pre_keys.remove(&id);
        }
        for id in stale_kem {
            self.kem_pre_keys.remove(&id);
        }
        self.one_time_pre_keys
            .extend(otks.into_iter().map(|k| (k.id, k)));
        self.kem_pre_keys
            .extend(kems.into_iter().map(|k| (k.id, k)));
        Ok(true)
    }

    /// Unused one-time ML-KEM pre-keys this device holds.
    pub fn kem_pre_key_count(&self) -> usize {
        self.kem_pre_keys
            .values()
            .filter(|k| !k.last_resort)
            .count()
    }

    /// Ids of the signed pre-keys this device still accepts, oldest first.
    pub fn signed_pre_key_ids(&self) -> Vec<u32> {
        self.signed_pre_keys.keys().copied().collect()
    }

    /// Ids of the last-resort ML-KEM pre-keys this device still accepts, oldest first.
    pub fn last_resort_pre_key_ids(&self) -> Vec<u32> {
        self.kem_pre_keys
            .values()
            .filter(|k| k.last_resort)
            .map(|k| k.id)
            .collect()
    }
}

#[cfg(test)]
mod tests {

    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::store::memory::MemoryKv;

    /// Marks `n` made-up base keys as used with the newest last-resort key.
    fn use_base_keys(d: &mut Device<MemoryKv>, n: usize) {
        let k = d
            .kem_pre_keys
            .values_mut()
            .rfind(|k| k.last_resort)
            .unwrap();
        k.mark_used_base_keys((0..n).map(|i| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(i as u64).to_be_bytes());
            b
        }));
    }

    #[test]
    fn the_last_resort_key_is_rotated_before_it_nears_its_base_key_limit() {
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        let mut d = Device::create_account(MemoryKv::new(), &mut rng, 1000).unwrap();
        let first = d.last_resort_pre_key_ids();
        use_base_keys(&mut d, LAST_RESORT_ROTATE_AT_BASE_KEYS - 1);
        let u = d.upkeep(&mut rng, 2000).unwrap();
        assert!(!u.rotated_last_resort);
        use_base_keys(&mut d, LAST_RESORT_ROTATE_AT_BASE_KEYS);
        let u = d.upkeep(&mut rng, 3000).unwrap();
        assert!(u.rotated_last_resort && u.publish && !u.rotated_signed);
        let now = d.last_resort_pre_key_ids();
        assert_eq!(now.len(), first.len() + 1);
        assert_ne!(now.last(), first.last());
    }
}
