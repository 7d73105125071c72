//! In-memory relay storage (tests, and single-process setups that accept losing state on restart).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ids::{SendIds, send_key};
use super::usage::{self, Usage, stored_bytes};
use super::{
    AccountStore, Claimed, DeviceId, Enqueued, Envelope, MailboxStore, PreKeyStore, PreKeyUpload,
    PushStore, Queued, Quotas, Result, StoreError, UsernameHolder, UsernameStore,
};

#[derive(Default)]
struct Keys {
    signed_pre_key: Vec<u8>,
    last_resort: Vec<u8>,
    one_time: BTreeMap<u32, Vec<u8>>,
    kem: BTreeMap<u32, Vec<u8>>,
}

#[derive(Default)]
struct Inner {
    lists: BTreeMap<[u8; 32], (u64, Vec<u8>)>,
    keys: BTreeMap<DeviceId, Keys>,
    queues: BTreeMap<DeviceId, BTreeMap<u64, Envelope>>,
    ids: SendIds,
    usage: Usage,
    last_seq: BTreeMap<DeviceId, u64>,
    push: BTreeMap<DeviceId, crate::push::Registration>,
    access: BTreeMap<DeviceId, super::DeliveryAccess>,
    names: BTreeMap<String, UsernameHolder>,
    name_of: BTreeMap<[u8; 32], String>,
    logs: BTreeMap<[u8; 32], GroupLog>,
    log_bytes: u64,
}

/// One group log: its write check, its entries (number `i + 1` at `i`) and their bytes.
struct GroupLog {
    check: [u8; 32],
    entries: Vec<Vec<u8>>,
    bytes: u64,
}

/// Relay storage in memory.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// The total of `inner`'s mailbox usage, stored after every change of it (under the lock),
    /// so that [`MailboxStore::mailbox_bytes`] reads it without the lock.
    mailbox_total: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores the mailbox total for lock-free readers (called with the lock held).
    fn publish_total(&self, g: &Inner) {
        self.mailbox_total.store(g.usage.total(), Ordering::Relaxed);
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Backend("lock poisoned".into()))
    }
}

impl AccountStore for MemoryStore {
    fn device_list(&self, account: &[u8; 32]) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self.lock()?.lists.get(account).cloned())
    }

    fn create_account(&self, account: &[u8; 32], version: u64, signed: &[u8]) -> Result<()> {
        let mut g = self.lock()?;
        if g.lists.contains_key(account) {
            return Err(StoreError::AccountExists);
        }
        g.lists.insert(*account, (version, signed.to_vec()));
        Ok(())
    }

    fn put_device_list(&self, account: &[u8; 32], version: u64, signed: &[u8]) -> Result<()> {
        let mut g = self.lock()?;
        if let Some((stored, _)) = g.lists.get(account)
            && *stored >= version
        {
            return Err(StoreError::StaleDeviceList {
                stored: *stored,
                offered: version,
            });
        }
        g.lists.insert(*account, (version, signed.to_vec()));
        Ok(())
    }
}

impl PreKeyStore for MemoryStore {
    fn publish_pre_keys(&self, device: &DeviceId, upload: PreKeyUpload) -> Result<()> {
        let mut g = self.lock()?;
        let k = g.keys.entry(*device).or_default();
        k.signed_pre_key = upload.signed_pre_key;
        k.last_resort = upload.last_resort_kem_pre_key;
        k.one_time.extend(upload.one_time);
        k.kem.extend(upload.kem);
        Ok(())
    }

    fn claim_pre_keys(&self, device: &DeviceId, one_time: bool) -> Result<Option<Claimed>> {
        let mut g = self.lock()?;
        let Some(k) = g.keys.get_mut(device) else {
            return Ok(None);
        };
        let (one_time, kem) = if one_time {
            (
                k.one_time.pop_first().map(|(_, v)| v),
                k.kem.pop_first().map(|(_, v)| v),
            )
        } else {
            (None, None)
        };
        Ok(Some(Claimed {
            signed_pre_key: k.signed_pre_key.clone(),
            one_time,
            kem_is_last_resort: kem.is_none(),
            kem: kem.unwrap_or_else(|| k.last_resort.clone()),
            one_time_left: k.one_time.len(),
            kem_left: k.kem.len(),
        }))
    }

    fn pre_key_counts(&self, device: &DeviceId) -> Result<(usize, usize)> {
        Ok(self
            .lock()?
            .keys
            .get(device)
            .map_or((0, 0), |k| (k.one_time.len(), k.kem.len())))
    }

    fn remove_pre_keys(&self, device: &DeviceId) -> Result<()> {
        self.lock()?.keys.remove(device);
        Ok(())
    }
}

impl super::LinkStore for MemoryStore {}

impl super::GroupLogStore for MemoryStore {
    fn group_log_append(
        &self,
        slot: &[u8; 32],
        check: &[u8; 32],
        seq: u64,
        entry: &[u8],
        caps: &super::LogCaps,
    ) -> Result<super::LogAppend> {
        use subtle::ConstantTimeEq;
        let mut g = self.lock()?;
        let (head, bytes) = match g.logs.get(slot) {
            Some(log) => {
                if !bool::from(log.check.ct_eq(check)) {
                    return Ok(super::LogAppend::Forbidden);
                }
                (log.entries.len() as u64, log.bytes)
            }
            None => (0, 0),
        };
        if Some(seq) != head.checked_add(1) {
            return Ok(super::LogAppend::Conflict { head });
        }
        let len = entry.len() as u64;
        let bytes = bytes.saturating_add(len);
        if seq > caps.entries || bytes > caps.bytes {
            return Err(StoreError::GroupLogFull);
        }
        if g.log_bytes.saturating_add(len) > caps.total_bytes {
            return Err(StoreError::GroupLogsFull);
        }
        g.log_bytes = g.log_bytes.saturating_add(len);
        let log = g.logs.entry(*slot).or_insert_with(|| GroupLog {
            check: *check,
            entries: Vec::new(),
            bytes: 0,
        });
        log.entries.push(entry.to_vec());
        log.bytes = bytes;
        Ok(super::LogAppend::Appended)
    }

    fn group_log_read(
        &self,
        slot: &[u8; 32],
        from: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<super::LogPage> {
        let g = self.lock()?;
        let Some(log) = g.logs.get(slot) else {
            return Ok(super::LogPage::default());
        };
        let mut page = super::LogPage {
            head: log.entries.len() as u64,
            entries: Vec::new(),
        };
        let skip = usize::try_from(from.max(1) - 1).unwrap_or(usize::MAX);
        let mut used = 0usize;
        for (i, e) in log.entries.iter().enumerate().skip(skip) {
            if page.entries.len() >= max_entries
                || (!page.entries.is_empty() && used.saturating_add(e.len()) > max_bytes)
            {
                break;
            }
            used = used.saturating_add(e.len());
            page.entries.push((i as u64 + 1, e.clone()));
        }
        Ok(page)
    }

    fn group_log_bytes(&self) -> Result<u64> {
        Ok(self.lock()?.log_bytes)
    }
}

impl super::AccessStore for MemoryStore {
    fn set_delivery_access(
        &self,
        device: &DeviceId,
        access: Option<super::DeliveryAccess>,
    ) -> Result<()> {
        let mut g = self.lock()?;
        match access {
            Some(a) => g.access.insert(*device, a),
            None => g.access.remove(device),
        };
        Ok(())
    }

    fn delivery_access(&self, device: &DeviceId) -> Result<Option<super::DeliveryAccess>> {
        Ok(self.lock()?.access.get(device).copied())
    }
}

impl PushStore for MemoryStore {
    fn set_push_endpoint(
        &self,
        device: &DeviceId,
        endpoint: Option<&crate::push::Registration>,
    ) -> Result<()> {
        let mut g = self.lock()?;
        match endpoint {
            Some(e) => g.push.insert(*device, e.clone()),
            None => g.push.remove(device),
        };
        Ok(())
    }

    fn push_endpoint(&self, device: &DeviceId) -> Result<Option<crate::push::Registration>> {
        Ok(self.lock()?.push.get(device).cloned())
    }
}

impl UsernameStore for MemoryStore {
    fn claim_username(&self, name: &str, account: &[u8; 32], proof: &[u8]) -> Result<()> {
        let mut g = self.lock()?;
        if g.names.get(name).is_some_and(|h| &h.account != account) {
            return Err(StoreError::UsernameTaken);
        }
        if let Some(old) = g.name_of.insert(*account, name.to_owned())
            && old != name
        {
            g.names.remove(&old);
        }
        g.names.insert(
            name.to_owned(),
            UsernameHolder {
                account: *account,
                proof: proof.to_vec(),
            },
        );
        Ok(())
    }

    fn release_username(&self, account: &[u8; 32]) -> Result<Option<String>> {
        let mut g = self.lock()?;
        let old = g.name_of.remove(account);
        if let Some(n) = &old {
            g.names.remove(n);
        }
        Ok(old)
    }

    fn lookup_username(&self, name: &str) -> Result<Option<UsernameHolder>> {
        Ok(self.lock()?.names.get(name).cloned())
    }

    fn username_of(&self, account: &[u8; 32]) -> Result<Option<String>> {
        Ok(self.lock()?.name_of.get(account).cloned())
    }
}

impl Inner {
    /// Lowers the counters for removed envelopes.
    fn forget(&mut self, removed: &[Envelope]) {
        for e in removed {
            self.usage
                .remove(e.recipient, &e.share.account, stored_bytes(e));
        }
    }
}

impl MailboxStore for MemoryStore {
    fn enqueue(&self, envelopes: &[Envelope], quotas: &Quotas) -> Result<Vec<Enqueued>> {
        // Each envelope's recent-send key, hashed once and before the lock.
        let keys: Vec<u128> = envelopes.iter().map(send_key).collect();
        let mut g = self.lock()?;
        // Plan first (caps checked against everything queued), write nothing on a refusal.
        let new: Vec<&Envelope> = envelopes
            .iter()
            .zip(&keys)
            .filter(|(_, k)| g.ids.get(**k).is_none())
            .map(|(e, _)| e)
            .collect();
        let known = new.len() < envelopes.len();
        let mut plan = g.usage.plan(&new, !known, quotas)?.into_iter();
        let mut out = Vec::with_capacity(envelopes.len());
        for (e, &id) in envelopes.iter().zip(&keys) {
            if let Some((seq, at)) = g.ids.get(id) {
                out.push(Enqueued {
                    seq,
                    fresh: false,
                    received_at: at,
                    prev: 0,
                    full: None,
                });
                continue;
            }
            if let Some(full) = plan.next().flatten() {
                out.push(Enqueued {
                    seq: 0,
                    fresh: false,
                    received_at: e.received_at,
                    prev: 0,
                    full: Some(full),
                });
                continue;
            }
            let last = g.last_seq.entry(e.recipient).or_insert(0);
            let prev = *last;
            *last = last.saturating_add(1);
            let seq = *last;
            g.ids.insert(id, seq, e.received_at);
            g.usage.add(e.recipient, &e.share.account, stored_bytes(e));
            g.queues
                .entry(e.recipient)
                .or_default()
                .insert(seq, e.clone());
            out.push(Enqueued {
                seq,
                fresh: true,
                received_at: e.received_at,
                prev,
                full: None,
            });
        }
        self.publish_total(&g);
        Ok(out)
    }

    fn fetch(&self, device: &DeviceId, after: u64, limit: usize) -> Result<Vec<Queued>> {
        let g = self.lock()?;
        Ok(g.queues
            .get(device)
            .map(|q| {
                q.range(after.saturating_add(1)..)
                    .take(limit)
                    .map(|(seq, e)| Queued {
                        seq: *seq,
                        envelope: e.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn ack(&self, device: &DeviceId, seqs: &[u64]) -> Result<usize> {
        let mut g = self.lock()?;
        let mut removed = Vec::new();
        if let Some(q) = g.queues.get_mut(device) {
            for s in seqs {
                if let Some(e) = q.remove(s) {
                    removed.push(e);
                }
            }
        }
        g.forget(&removed);
        self.publish_total(&g);
        // The send ids stay in the recent-send index, so a send retried after the ack is still a
        // no-op while it is remembered.
        Ok(removed.len())
    }

    fn sweep(&self, cutoff: u64) -> Result<usize> {
        let mut g = self.lock()?;
        let mut removed = Vec::new();
        for q in g.queues.values_mut() {
            let old: Vec<u64> = q
                .iter()
                .filter(|(_, e)| e.received_at < cutoff)
                .map(|(s, _)| *s)
                .collect();
            for s in old {
                if let Some(e) = q.remove(&s) {
                    removed.push(e);
                }
            }
        }
        g.forget(&removed);
        self.publish_total(&g);
        Ok(removed.len())
    }

    fn queue_len(&self, device: &DeviceId) -> Result<usize> {
        Ok(self.lock()?.queues.get(device).map_or(0, BTreeMap::len))
    }

    fn queue_usage(&self, device: &DeviceId) -> Result<usage::Count> {
        Ok(self.lock()?.usage.queue(device))
    }

    fn share_usage(&self, device: &DeviceId, sender: &[u8; 32]) -> Result<usage::Count> {
        Ok(self.lock()?.usage.sender(device, sender))
    }

    fn account_mailbox_bytes(&self, account: &[u8; 32]) -> Result<u64> {
        Ok(self.lock()?.usage.account(account))
    }

    fn mailbox_bytes(&self) -> Result<u64> {
        // Read on every send and ack (the gauge): no lock.
        Ok(self.mailbox_total.load(Ordering::Relaxed))
    }

    fn purge(&self, device: &DeviceId) -> Result<usize> {
        let mut g = self.lock()?;
        let removed: Vec<Envelope> = g
            .queues
            .remove(device)
            .map(|q| q.into_values().collect())
            .unwrap_or_default();
        g.forget(&removed);
        self.publish_total(&g);
        Ok(removed.len())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    relay_store_suite!(suite, ((), super::super::MemoryStore::new()));
}
