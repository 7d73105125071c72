//! The device's own pre-keys: ids, rotation of the signed and last-resort keys, one-time key
//! replenishment and the published set.

use hush_proto::store as pstore;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::{Device, KEEP_ROTATED, NEXT_PRE_KEY_ID, encode, id_key, kem_record, used_key};
use crate::consts::ONE_TIME_PRE_KEY_BATCH;
use crate::device::error::Result;
use crate::error::ProtocolError;
use crate::prekeys::{KemPreKeyPair, OneTimePreKeyPair, PublishedPreKeys, SignedPreKeyPair};
use crate::store::kv::{Batch, KvStore, Namespace};

impl<S: KvStore> Device<S> {
    pub(super) fn take_pre_key_ids(&mut self, n: u32, batch: &mut Batch) -> Result<u32> {
        let first = self.next_pre_key_id;
        let next = first
            .checked_add(n)
            .ok_or(ProtocolError::Misuse("pre-key ids exhausted"))?;
        batch.put(
            Namespace::Meta,
            NEXT_PRE_KEY_ID,
            Zeroizing::new(u64::from(next).to_be_bytes().to_vec()),
        );
        Ok(first)
    }

    /// Generates a new signed pre-key; the previous one is kept for messages in flight.
    pub fn rotate_signed_pre_key(&mut self, rng: &mut impl CryptoRng, now: u64) -> Result<()> {
        let mut batch = Batch::new();
        let id = self.take_pre_key_ids(1, &mut batch)?;
        let key = SignedPreKeyPair::generate(rng, &self.identity, id, now);
        let p = pstore::SignedPreKeySecret {
            id,
            secret: key.secret_bytes().to_vec(),
            signature: key.signature.to_vec(),
            created_at: now,
        };
        batch.put(Namespace::SignedPreKeys, id_key(id), encode(&p));
        let stale: Vec<u32> = self
            .signed_pre_keys
            .keys()
            .rev()
            .skip(KEEP_ROTATED - 1)
            .copied()
            .collect();
        for old in &stale {
            batch.delete(Namespace::SignedPreKeys, id_key(*old));
        }
        self.store.commit(batch)?;
        self.next_pre_key_id = id + 1;
        for old in stale {
            self.signed_pre_keys.remove(&old);
        }
        self.signed_pre_keys.insert(id, key);
        Ok(())
    }

    /// Generates a new last-resort ML-KEM pre-key; the previous one is kept for messages in flight.
    pub fn rotate_last_resort_pre_key(&mut self, rng: &mut impl CryptoRng, now: u64) -> Result<()> {
        let mut batch = Batch::new();
        let id = self.take_pre_key_ids(1, &mut batch)?;
        let key = KemPreKeyPair::generate(rng, &self.identity, id, true, now);
        batch.put(Namespace::KemPreKeys, id_key(id), encode(&kem_record(&key)));
        let stale: Vec<u32> = self
            .kem_pre_keys
            .values()
            .filter(|k| k.last_resort)
            .map(|k| k.id)
            .rev()
            .skip(KEEP_ROTATED - 1)
            .collect();
        for old in &stale {
            batch.delete(Namespace::KemPreKeys, id_key(*old));
            if let Some(k) = self.kem_pre_keys.get(old) {
                for base in k.used_base_keys() {
                    batch.delete(Namespace::KemPreKeys, used_key(*old, base));
                }
            }
        }
        self.store.commit(batch)?;
        self.next_pre_key_id = id + 1;
        for old in stale {
            self.kem_pre_keys.remove(&old);
        }
        self.kem_pre_keys.insert(id, key);
        Ok(())
    }

    /// Tops the one-time X25519 and ML-KEM pre-keys up to [`ONE_TIME_PRE_KEY_BATCH`] each once fewer
    /// than half are left. Returns whether new keys were made (then publish again).
    pub fn replenish_pre_keys(&mut self, rng: &mut impl CryptoRng, now: u64) -> Result<bool> {
        let have_otk = u32::try_from(self.one_time_pre_keys.len()).unwrap_or(u32::MAX);
        let have_kem = u32::try_from(
            self.kem_pre_keys
                .values()
                .filter(|k| !k.last_resort)
                .count(),
        )
        .unwrap_or(u32::MAX);
        let low = ONE_TIME_PRE_KEY_BATCH / 2;
        let n_otk = if have_otk < low {
            ONE_TIME_PRE_KEY_BATCH - have_otk
        } else {
            0
        };
        let n_kem = if have_kem < low {
            ONE_TIME_PRE_KEY_BATCH - have_kem
        } else {
            0
        };
        if n_otk == 0 && n_kem == 0 {
            return Ok(false);
        }
        let mut batch = Batch::new();
        let first = self.take_pre_key_ids(n_otk + n_kem, &mut batch)?;
        let mut otks = Vec::new();
        let mut kems = Vec::new();
        for id in first..first + n_otk {
            let k = OneTimePreKeyPair::generate(rng, id);
            let p = pstore::OneTimePreKeySecret {
                id,
                secret: k.secret_bytes().to_vec(),
            };
            batch.put(Namespace::OneTimePreKeys, id_key(id), encode(&p));
            otks.push(k);
        }
        for id in first + n_otk..first + n_otk + n_kem {
            let k = KemPreKeyPair::generate(rng, &self.identity, id, false, now);
            batch.put(Namespace::KemPreKeys, id_key(id), encode(&kem_record(&k)));
            kems.push(k);
        }
        self.store.commit(batch)?;
        self.next_pre_key_id = first + n_otk + n_kem;
        self.one_time_pre_keys
            .extend(otks.into_iter().map(|k| (k.id, k)));
        self.kem_pre_keys
            .extend(kems.into_iter().map(|k| (k.id, k)));
        Ok(true)
    }

    /// Everything to publish on the relay so that others can start sessions with this device.
    pub fn published_pre_keys(&self) -> Result<PublishedPreKeys> {
        let spk = self
            .signed_pre_keys
            .values()
            .next_back()
            .ok_or(ProtocolError::Misuse("no signed pre-key"))?;
        let last_resort = self
            .kem_pre_keys
            .values()
            .rfind(|k| k.last_resort)
            .ok_or(ProtocolError::Misuse("no last-resort pre-key"))?;
        Ok(PublishedPreKeys {
            address: self.address,
            identity: self.identity.public(),
            signed_pre_key: spk.to_wire(),
            one_time_pre_keys: self
                .one_time_pre_keys
                .values()
                .map(OneTimePreKeyPair::to_wire)
                .collect(),
            kem_pre_keys: self
                .kem_pre_keys
                .values()
                .filter(|k| !k.last_resort)
                .map(KemPreKeyPair::to_wire)
                .collect(),
            last_resort_kem_pre_key: last_resort.to_wire(),
        })
    }

    /// Number of unused one-time X25519 pre-keys.
    pub fn one_time_pre_key_count(&self) -> usize {
        self.one_time_pre_keys.len()
    }
}
