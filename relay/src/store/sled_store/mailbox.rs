//! Mailboxes on sled: enqueue (checks, sequence numbers, one insert per envelope), fetch, ack,
//! expiry, purge and the usage counters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use super::records::{charged, decode_envelope, encode_envelope, mail_key, received_at};
use super::{SledStore, backend, be_u64};
use crate::store::ids;
use crate::store::usage::{self, stored_bytes};
use crate::store::{
    DeviceId, Enqueued, Envelope, MailboxStore, Queued, Quotas, Result, StoreError,
};

impl SledStore {
    /// Removes the envelopes at `seqs` of `device`'s queue (each removal on its own: a lost one
    /// only re-delivers) and lowers the queue's counters; returns how many were there.
    fn remove_mail(&self, device: &DeviceId, seqs: impl Iterator<Item = u64>) -> Result<usize> {
        let mut st = self.state()?;
        let mut n = 0usize;
        for seq in seqs {
            if let Some(old) = self.mail.remove(mail_key(device, seq)).map_err(backend)? {
                n += 1;
                // The counters follow what was removed, read from the record's head (no decode);
                // a record that does not decode (never written by this code) was counted by
                // nothing.
                if let Some((sender, bytes)) = charged(&old) {
                    st.usage.remove(*device, &sender, bytes);
                    self.publish_total(&st);
                }
            }
        }
        Ok(n)
    }
}

impl MailboxStore for SledStore {
    fn enqueue(&self, envelopes: &[Envelope], quotas: &Quotas) -> Result<Vec<Enqueued>> {
        let floor = self.seq_floor;
        // Each envelope's recent-send key, hashed once and before the lock.
        let keys: Vec<u128> = envelopes.iter().map(ids::send_key).collect();
        // Only a send of several envelopes can name one key twice or one queue twice; a send of
        // one (the usual) needs none of the per-send maps below, which then stay empty.
        let several = envelopes.len() > 1;
        let mut st = self.state()?;
        let mut out = Vec::with_capacity(envelopes.len());
        // First the plan (duplicates, caps, sequence numbers), touching nothing: a refused send
        // leaves the store as it was.
        let mut planned: HashSet<u128> = HashSet::new();
        let mut new: Vec<&Envelope> = Vec::with_capacity(envelopes.len());
        let mut known = false;
        for (e, &key) in envelopes.iter().zip(&keys) {
            if st.ids.get(key).is_some() {
                known = true;
            } else if !several || planned.insert(key) {
                new.push(e);
            }
        }
        let mut plan = st.usage.plan(&new, !known, quotas)?.into_iter();
        // What this send decided per key (an envelope repeated inside it gets the same answer).
        let mut decided: HashMap<u128, Enqueued> = HashMap::new();
        // The last sequence number this send gave per queue.
        let mut lasts: HashMap<DeviceId, u64> = HashMap::new();
        let mut writes: Vec<(u128, u64, &Envelope)> = Vec::with_capacity(envelopes.len());
        for (e, &key) in envelopes.iter().zip(&keys) {
            if let Some(d) = decided.get(&key) {
                out.push(Enqueued {
                    fresh: false,
                    prev: 0,
                    ..*d
                });
                continue;
            }
            if let Some((seq, received_at)) = st.ids.get(key) {
                out.push(Enqueued {
                    seq,
                    fresh: false,
                    received_at,
                    prev: 0,
                    full: None,
                });
                continue;
            }
            if let Some(full) = plan.next().flatten() {
                let skipped = Enqueued {
                    seq: 0,
                    fresh: false,
                    received_at: e.received_at,
                    prev: 0,
                    full: Some(full),
                };
                if several {
                    decided.insert(key, skipped);
                }
                out.push(skipped);
                continue;
            }
            // Sequence numbers start at 1 (0 means "from the start" in `fetch`) and never repeat
            // across restarts.
            let prev = lasts
                .get(&e.recipient)
                .or_else(|| st.last.get(&e.recipient))
                .copied()
                .unwrap_or_default();
            let seq = prev.saturating_add(1).max(floor);
            writes.push((key, seq, e));
            let queued = Enqueued {
                seq,
                fresh: true,
                received_at: e.received_at,
                prev,
                full: None,
            };
            if several {
                lasts.insert(e.recipient, seq);
                decided.insert(key, queued);
            }
            out.push(queued);
        }
        // Then one plain insert per envelope, each counted as soon as it is written (see the
        // `sled_store` module docs for why not one `Batch`). If a write fails, what was written
        // stays and is counted, like a crash between two envelopes of a send, and the send is
        // refused: its retry finds those envelopes in the index and queues only the rest.
        for (key, seq, e) in writes {
            let value = encode_envelope(e);
            self.mail
                .insert(&mail_key(&e.recipient, seq)[..], value)
                .map_err(backend)?;
            let last = st.last.entry(e.recipient).or_default();
            *last = (*last).max(seq);
            st.usage.add(e.recipient, &e.share.account, stored_bytes(e));
            self.publish_total(&st);
            st.ids.insert(key, seq, e.received_at);
        }
        Ok(out)
    }

    fn fetch(&self, device: &DeviceId, after: u64, limit: usize) -> Result<Vec<Queued>> {
        let start = mail_key(device, after.saturating_add(1));
        let end = mail_key(device, u64::MAX);
        let mut out = Vec::new();
        for item in self.mail.range(start..=end) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(backend)?;
            let seq = be_u64(k.get(36..).ok_or(StoreError::Corrupt("mail"))?, "mail")?;
            out.push(Queued {
                seq,
                envelope: decode_envelope(*device, &v)?,
            });
        }
        Ok(out)
    }

    fn ack(&self, device: &DeviceId, seqs: &[u64]) -> Result<usize> {
        // The send ids stay in the recent-send index, so a send retried after the ack is still a
        // no-op while it is remembered.
        self.remove_mail(device, seqs.iter().copied())
    }

    fn sweep(&self, cutoff: u64) -> Result<usize> {
        // Read without the lock (the writer goes on), then remove per device.
        let mut old: BTreeMap<DeviceId, Vec<u64>> = BTreeMap::new();
        for item in self.mail.iter() {
            let (k, v) = item.map_err(backend)?;
            if received_at(&v)? < cutoff {
                let d = k
                    .get(..36)
                    .and_then(DeviceId::from_key)
                    .ok_or(StoreError::Corrupt("mail"))?;
                let seq = be_u64(k.get(36..).ok_or(StoreError::Corrupt("mail"))?, "mail")?;
                old.entry(d).or_default().push(seq);
            }
        }
        let mut n = 0;
        for (d, seqs) in old {
            n += self.remove_mail(&d, seqs.into_iter())?;
        }
        Ok(n)
    }

    fn queue_len(&self, device: &DeviceId) -> Result<usize> {
        let count = self.state()?.usage.queue(device).envelopes;
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    fn queue_usage(&self, device: &DeviceId) -> Result<usage::Count> {
        Ok(self.state()?.usage.queue(device))
    }

    fn share_usage(&self, device: &DeviceId, sender: &[u8; 32]) -> Result<usage::Count> {
        Ok(self.state()?.usage.sender(device, sender))
    }

    fn account_mailbox_bytes(&self, account: &[u8; 32]) -> Result<u64> {
        Ok(self.state()?.usage.account(account))
    }

    fn mailbox_bytes(&self) -> Result<u64> {
        // Read on every send and ack (the gauge): no lock.
        Ok(self.mailbox_total.load(Ordering::Relaxed))
    }

    fn purge(&self, device: &DeviceId) -> Result<usize> {
        let seqs = self
            .mail
            .scan_prefix(device.key())
            .keys()
            .map(|k| {
                let k = k.map_err(backend)?;
                be_u64(k.get(36..).ok_or(StoreError::Corrupt("mail"))?, "mail")
            })
            .collect::<Result<Vec<_>>>()?;
        self.remove_mail(device, seqs.into_iter())
    }

    fn flush(&self) -> Result<()> {
        self.sync()
    }
}
