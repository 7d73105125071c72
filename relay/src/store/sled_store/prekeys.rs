//! Signed and one-time pre-keys on sled: uploads, claims (one atomic take) and counts.

use hush_proto::Message;
use hush_proto::relay::StoredPreKeys;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::{SledStore, backend, transaction_error};
use crate::store::{Claimed, DeviceId, PreKeyStore, PreKeyUpload, Result, StoreError};

fn with_id(device: &DeviceId, id: u32) -> Vec<u8> {
    let mut k = device.key().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl SledStore {
    /// Takes the first key under `prefix` that no other caller takes first.
    fn take_first(tree: &sled::Tree, prefix: &[u8]) -> Result<Option<Vec<u8>>> {
        loop {
            let Some(first) = tree.scan_prefix(prefix).keys().next() else {
                return Ok(None);
            };
            let key = first.map_err(backend)?;
            if let Some(v) = tree.remove(&key).map_err(backend)? {
                return Ok(Some(v.to_vec()));
            }
            // Someone else took it between the scan and the remove: try the next one.
        }
    }

    fn count(tree: &sled::Tree, prefix: &[u8]) -> usize {
        tree.scan_prefix(prefix).count()
    }
}

impl PreKeyStore for SledStore {
    fn publish_pre_keys(&self, device: &DeviceId, upload: PreKeyUpload) -> Result<()> {
        let record = StoredPreKeys {
            signed_pre_key: upload.signed_pre_key,
            last_resort_kem_pre_key: upload.last_resort_kem_pre_key,
        };
        let mut otk = sled::Batch::default();
        for (id, v) in upload.one_time {
            otk.insert(with_id(device, id), v);
        }
        let mut kem = sled::Batch::default();
        for (id, v) in upload.kem {
            kem.insert(with_id(device, id), v);
        }
        let record = record.encode_to_vec();
        let mut counts = self.counts()?;
        (&self.prekeys, &self.otk, &self.kem)
            .transaction(|(p, o, k)| {
                p.insert(&device.key()[..], record.as_slice())?;
                o.apply_batch(&otk)?;
                k.apply_batch(&kem)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(transaction_error)?;
        // Re-uploaded ids replace keys rather than add: count what is there (rare operation).
        let prefix = device.key();
        let c = (
            Self::count(&self.otk, &prefix),
            Self::count(&self.kem, &prefix),
        );
        counts.insert(*device, c);
        Ok(())
    }

    fn claim_pre_keys(&self, device: &DeviceId, one_time: bool) -> Result<Option<Claimed>> {
        let Some(raw) = self.prekeys.get(device.key()).map_err(backend)? else {
            return Ok(None);
        };
        let record =
            StoredPreKeys::decode(raw.as_ref()).map_err(|_| StoreError::Corrupt("prekeys"))?;
        let prefix = device.key();
        let mut counts = self.counts()?;
        let (one_time, kem) = if one_time {
            (
                Self::take_first(&self.otk, &prefix)?,
                Self::take_first(&self.kem, &prefix)?,
            )
        } else {
            (None, None)
        };
        let c = counts.entry(*device).or_default();
        if one_time.is_some() {
            c.0 = c.0.saturating_sub(1);
        }
        if kem.is_some() {
            c.1 = c.1.saturating_sub(1);
        }
        // A claimed key must not come back after a crash: the relay flushes (group commit)
        // before handing the bundle out.
        Ok(Some(Claimed {
            signed_pre_key: record.signed_pre_key,
            one_time,
            kem_is_last_resort: kem.is_none(),
            kem: kem.unwrap_or(record.last_resort_kem_pre_key),
            one_time_left: c.0,
            kem_left: c.1,
        }))
    }

    fn pre_key_counts(&self, device: &DeviceId) -> Result<(usize, usize)> {
        Ok(self.counts()?.get(device).copied().unwrap_or_default())
    }

    fn remove_pre_keys(&self, device: &DeviceId) -> Result<()> {
        let prefix = device.key();
        let mut counts = self.counts()?;
        self.prekeys.remove(prefix).map_err(backend)?;
        for tree in [&self.otk, &self.kem] {
            for k in tree.scan_prefix(prefix).keys() {
                tree.remove(k.map_err(backend)?).map_err(backend)?;
            }
        }
        counts.remove(device);
        Ok(())
    }
}
