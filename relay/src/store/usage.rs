//! Mailbox usage: what is queued per device, per (device, sending account), per account and in
//! total, in envelopes and bytes, and the enqueue plan that checks a send against the caps
//! ([`Quotas`]) before anything is written.
//!
//! Both stores keep one [`Usage`] in memory, changed with every envelope written or removed and
//! rebuilt from the queued envelopes when a store opens, so the counters are exact after acks,
//! expiry, purges and restarts, and a check costs a few map lookups. An entry is dropped when it
//! reaches zero, so the maps hold no more than the queued envelopes' keys.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::{DeviceId, Envelope, Full, Quotas, Result, StoreError};

/// Bytes one envelope counts for: its body and a fixed charge for what is stored with it
/// (queue key, sender, client id, time).
pub fn stored_bytes(e: &Envelope) -> u64 {
    body_stored_bytes(e.body.len())
}

/// [`stored_bytes`] of an envelope whose body is `body_len` bytes long.
pub fn body_stored_bytes(body_len: usize) -> u64 {
    (body_len as u64).saturating_add(ENVELOPE_OVERHEAD)
}

/// The fixed per-envelope charge of [`stored_bytes`].
pub const ENVELOPE_OVERHEAD: u64 = 128;

/// Envelopes and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// Envelopes.
    pub envelopes: u64,
    /// Bytes, as counted by [`stored_bytes`].
    pub bytes: u64,
}

impl Count {
    fn plus(self, bytes: u64) -> Self {
        Self {
            envelopes: self.envelopes.saturating_add(1),
            bytes: self.bytes.saturating_add(bytes),
        }
    }

    fn minus(self, bytes: u64) -> Self {
        Self {
            envelopes: self.envelopes.saturating_sub(1),
            bytes: self.bytes.saturating_sub(bytes),
        }
    }

    fn is_zero(self) -> bool {
        self.envelopes == 0 && self.bytes == 0
    }
}

/// The mailbox counters of a store.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    queues: HashMap<DeviceId, Count>,
    senders: HashMap<(DeviceId, [u8; 32]), Count>,
    accounts: HashMap<[u8; 32], u64>,
    total: u64,
}

/// Applies `f` to `key`'s count (zero if absent), dropping the entry if the result is zero; one
/// hash of the key.
fn change<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Count>,
    key: K,
    f: impl Fn(Count) -> Count,
) {
    match map.entry(key) {
        Entry::Occupied(mut o) => {
            let c = f(*o.get());
            if c.is_zero() {
                o.remove();
            } else {
                o.insert(c);
            }
        }
        Entry::Vacant(v) => {
            let c = f(Count::default());
            if !c.is_zero() {
                v.insert(c);
            }
        }
    }
}

/// Whether a queue holding `queue` (this sender's share: `share`) after adding an envelope
/// goes over a cap, and which.
fn over(queue: Count, share: Count, quotas: &Quotas) -> Option<Full> {
    if queue.envelopes > quotas.queue_len || queue.bytes > quotas.queue_bytes {
        Some(Full::Queue)
    } else if share.envelopes > quotas.share_len || share.bytes > quotas.share_bytes {
        Some(Full::Share)
    } else {
        None
    }
}

impl Usage {
    /// Counts an envelope written.
    pub(crate) fn add(&mut self, recipient: DeviceId, sender: &[u8; 32], bytes: u64) {
        change(&mut self.queues, recipient, |c| c.plus(bytes));
        change(&mut self.senders, (recipient, *sender), |c| c.plus(bytes));
        let a = self.accounts.entry(recipient.account).or_default();
        *a = a.saturating_add(bytes);
        self.total = self.total.saturating_add(bytes);
    }

    /// Counts an envelope removed.
    pub(crate) fn remove(&mut self, recipient: DeviceId, sender: &[u8; 32], bytes: u64) {
        change(&mut self.queues, recipient, |c| c.minus(bytes));
        change(&mut self.senders, (recipient, *sender), |c| c.minus(bytes));
        if let Entry::Occupied(mut a) = self.accounts.entry(recipient.account) {
            let left = a.get().saturating_sub(bytes);
            if left == 0 {
                a.remove();
            } else {
                a.insert(left);
            }
        }
        self.total = self.total.saturating_sub(bytes);
    }

    /// What `device`'s queue holds.
    pub(crate) fn queue(&self, device: &DeviceId) -> Count {
        self.queues.get(device).copied().unwrap_or_default()
    }

    /// What `device`'s queue holds from devices of `sender`.
    pub(crate) fn sender(&self, device: &DeviceId, sender: &[u8; 32]) -> Count {
        self.senders
            .get(&(*device, *sender))
            .copied()
            .unwrap_or_default()
    }

    /// Bytes queued for all devices of `account`.
    pub(crate) fn account(&self, account: &[u8; 32]) -> u64 {
        self.accounts.get(account).copied().unwrap_or_default()
    }

    /// Bytes queued in total.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Checks the new envelopes of a send (`new`: those not already queued) against `quotas`:
    /// per envelope, `None` if it fits or why its device has no room. A device whose queue (or
    /// this sender's share of it) is full is left out; the send is refused only if it would
    /// queue nothing at all and `all_full_refuses` (the caller's: none of the send's envelopes
    /// was queued before), or if what it would queue goes over the recipient account's or the
    /// relay's byte cap.
    pub(crate) fn plan(
        &self,
        new: &[&Envelope],
        all_full_refuses: bool,
        quotas: &Quotas,
    ) -> Result<Vec<Option<Full>>> {
        // One new envelope (the usual send): checked against the counters as they are, without
        // the tallies below of what the send itself adds; the same answers as the loop.
        if let [e] = new {
            let bytes = stored_bytes(e);
            let full = over(
                self.queue(&e.recipient).plus(bytes),
                self.sender(&e.recipient, &e.share.account).plus(bytes),
                quotas,
            );
            match full {
                Some(Full::Queue) if all_full_refuses => {
                    return Err(StoreError::QueueFull(e.recipient));
                }
                Some(Full::Share) if all_full_refuses => {
                    return Err(StoreError::SenderQuota(e.recipient));
                }
                // Nothing added: only the relay's cap, as below.
                Some(_) => self.check_bytes(None, 0, quotas)?,
                None => self.check_bytes(Some(e.recipient.account), bytes, quotas)?,
            }
            return Ok(vec![full]);
        }
        let mut queues: HashMap<DeviceId, Count> = HashMap::new();
        let mut senders: HashMap<(DeviceId, [u8; 32]), Count> = HashMap::new();
        let mut accounts: HashMap<[u8; 32], u64> = HashMap::new();
        let mut total = 0u64;
        let mut out = Vec::with_capacity(new.len());
        for e in new {
            let bytes = stored_bytes(e);
            let key = (e.recipient, e.share.account);
            let q = *queues
                .entry(e.recipient)
                .or_insert_with(|| self.queue(&e.recipient));
            let s = *senders
                .entry(key)
                .or_insert_with(|| self.sender(&e.recipient, &e.share.account));
            let (q2, s2) = (q.plus(bytes), s.plus(bytes));
            let full = over(q2, s2, quotas);
            if full.is_none() {
                queues.insert(e.recipient, q2);
                senders.insert(key, s2);
                let a = accounts.entry(e.recipient.account).or_default();
                *a = a.saturating_add(bytes);
                total = total.saturating_add(bytes);
            }
            out.push(full);
        }
        if all_full_refuses {
            let mut pairs = new.iter().zip(&out);
            if pairs.clone().all(|(_, f)| f.is_some()) {
                let queue = pairs.clone().find(|(_, f)| **f == Some(Full::Queue));
                if let Some((e, _)) = queue {
                    return Err(StoreError::QueueFull(e.recipient));
                }
                if let Some((e, _)) = pairs.next() {
                    return Err(StoreError::SenderQuota(e.recipient));
                }
            }
        }
        for (account, adding) in &accounts {
            if self.account(account).saturating_add(*adding) > quotas.account_bytes {
                return Err(StoreError::MailboxFull);
            }
        }
        if self.total.saturating_add(total) > quotas.total_bytes {
            return Err(StoreError::RelayFull);
        }
        Ok(out)
    }

    /// The byte caps when `adding` more bytes are queued, all for `account` (if any).
    fn check_bytes(&self, account: Option<[u8; 32]>, adding: u64, quotas: &Quotas) -> Result<()> {
        if let Some(a) = account
            && self.account(&a).saturating_add(adding) > quotas.account_bytes
        {
            return Err(StoreError::MailboxFull);
        }
        if self.total.saturating_add(adding) > quotas.total_bytes {
            return Err(StoreError::RelayFull);
        }
        Ok(())
    }
}
