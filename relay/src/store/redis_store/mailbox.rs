//! Mailboxes on Redis: per device a sorted set of envelopes scored by sequence number, with the
//! counters behind the caps beside it (see [`super::scripts`]).

use std::sync::atomic::Ordering;

use redis::Value;

use super::{Planned, RedisStore, array, decimal, int, planned, queued, record, uint};
use crate::limits;
use crate::store::ids::send_key;
use crate::store::{
    DeviceId, Enqueued, Envelope, Full, MailboxStore, Queued, Quotas, Result, StoreError, usage,
};

/// A cap no total reaches (the relay cap of a write already checked by its plan).
const NO_CAP: &str = "1e300";

fn device_of(v: &Value, account: [u8; 32]) -> Result<DeviceId> {
    Ok(DeviceId {
        account,
        device: u32::try_from(uint(v)?).map_err(|_| StoreError::Corrupt("enqueue answer"))?,
    })
}

impl RedisStore {
    /// Runs the enqueue script for the envelopes `at` of `envelopes` (all to `account`).
    fn enqueue_account(
        &self,
        account: [u8; 32],
        envelopes: &[&Envelope],
        write: bool,
        refuse_all: bool,
        quotas: &Quotas,
        relay_cap: String,
    ) -> Result<Planned> {
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(10 + 4 * envelopes.len());
        args.push(if write { b"w".to_vec() } else { b"d".to_vec() });
        args.push(if refuse_all {
            b"1".to_vec()
        } else {
            b"0".to_vec()
        });
        for cap in [
            quotas.queue_len,
            quotas.queue_bytes,
            quotas.share_len,
            quotas.share_bytes,
            quotas.account_bytes,
        ] {
            args.push(decimal(cap).into_bytes());
        }
        args.push(decimal(self.mailbox_bytes()?).into_bytes());
        args.push(relay_cap.into_bytes());
        args.push(decimal(limits::SEND_ID_RETENTION_MS).into_bytes());
        for e in envelopes {
            args.push(e.recipient.device.to_string().into_bytes());
            args.push(format!("{:032x}", send_key(e)).into_bytes());
            args.push(record(e));
            args.push(decimal(e.received_at).into_bytes());
        }
        let p = planned(self.redis.eval(
            &self.scripts.enqueue,
            self.account_key(&account),
            args,
        )?)?;
        let done = p.status == "ok" || p.status == "new";
        if done && p.entries.len() != envelopes.len() {
            return Err(StoreError::Corrupt("enqueue answer"));
        }
        match p.status.as_str() {
            "ok" | "new" => Ok(p),
            "QF" => Err(StoreError::QueueFull(device_of(&p.detail, account)?)),
            "SQ" => Err(StoreError::SenderQuota(device_of(&p.detail, account)?)),
            "MF" => Err(StoreError::MailboxFull),
            "RF" => Err(StoreError::RelayFull),
            _ => Err(StoreError::Corrupt("enqueue answer")),
        }
    }

    /// Counts `delta` bytes into the relay-wide total (sent to Redis with the next flush) and,
    /// for an account that had no mail before, adds it to the index the TTL sweep walks.
    fn count_total(&self, delta: i64, new_account: Option<[u8; 32]>) -> Result<()> {
        self.pending.fetch_add(delta, Ordering::Relaxed);
        if let Some(a) = new_account {
            let _: i64 = self.redis.write_plain(
                redis::cmd("SADD")
                    .arg(self.index_key(&a))
                    .arg(hex::encode(a))
                    .clone(),
            )?;
        }
        Ok(())
    }

    /// Sends the bytes counted since the last call to the relay-wide total, and reads it back.
    fn push_total(&self) -> Result<()> {
        let delta = self.pending.swap(0, Ordering::Relaxed);
        if delta == 0 {
            return Ok(());
        }
        let total: Result<i64> = self.redis.write_plain(
            redis::cmd("INCRBY")
                .arg(self.total_key())
                .arg(delta)
                .clone(),
        );
        match total {
            Ok(t) => {
                self.set_total(t);
                Ok(())
            }
            Err(e) => {
                // Counted again with the next flush.
                self.pending.fetch_add(delta, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Sweeps every queue of `account`, a page (one short script) at a time.
    fn sweep_account(&self, account: &[u8; 32], cutoff: u64) -> Result<usize> {
        let key = self.account_key(account);
        let devices: Vec<String> = self
            .redis
            .read(redis::cmd("SMEMBERS").arg(format!("{key}:qd")).clone())?;
        let mut swept = 0usize;
        for dev in devices {
            let mut from = 0u64;
            loop {
                let answer = array(self.redis.eval_plain(
                    &self.scripts.sweep,
                    key.clone(),
                    vec![
                        dev.clone().into_bytes(),
                        decimal(cutoff).into_bytes(),
                        decimal(from).into_bytes(),
                        super::SWEEP_PAGE.to_string().into_bytes(),
                    ],
                )?)?;
                let [count, freed, next] = answer.as_slice() else {
                    return Err(StoreError::Corrupt("sweep answer"));
                };
                self.count_total(int(freed)?.saturating_neg(), None)?;
                swept = swept.saturating_add(
                    usize::try_from(uint(count)?)
                        .map_err(|_| StoreError::Corrupt("sweep answer"))?,
                );
                from = uint(next)?;
                if from == 0 {
                    break;
                }
            }
        }
        Ok(swept)
    }

    /// Takes `{count, bytes}` removed by a script off the relay-wide total; returns the count.
    fn removed(&self, answer: Value) -> Result<usize> {
        let a = array(answer)?;
        let [count, freed] = a.as_slice() else {
            return Err(StoreError::Corrupt("removal answer"));
        };
        self.count_total(int(freed)?.saturating_neg(), None)?;
        usize::try_from(uint(count)?).map_err(|_| StoreError::Corrupt("removal answer"))
    }
}

fn answer(kind: &str, seq: u64, at: u64, prev: u64, e: &Envelope) -> Result<Enqueued> {
    let left_out = |full| Enqueued {
        seq: 0,
        fresh: false,
        received_at: e.received_at,
        prev: 0,
        full: Some(full),
    };
    Ok(match kind {
        "k" => Enqueued {
            seq,
            fresh: false,
            received_at: at,
            prev: 0,
            full: None,
        },
        "f" => Enqueued {
            seq,
            fresh: true,
            received_at: at,
            prev,
            full: None,
        },
        "q" => left_out(Full::Queue),
        "s" => left_out(Full::Share),
        _ => return Err(StoreError::Corrupt("enqueue answer")),
    })
}

impl MailboxStore for RedisStore {
    fn enqueue(&self, envelopes: &[Envelope], quotas: &Quotas) -> Result<Vec<Enqueued>> {
        // The send's envelopes by recipient account, in their order.
        let mut groups: Vec<([u8; 32], Vec<usize>)> = Vec::new();
        for (i, e) in envelopes.iter().enumerate() {
            match groups.iter_mut().find(|(a, _)| *a == e.recipient.account) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((e.recipient.account, vec![i])),
            }
        }
        let pick = |idx: &[usize]| -> Vec<&Envelope> {
            idx.iter().filter_map(|i| envelopes.get(*i)).collect()
        };
        let mut out: Vec<Option<Enqueued>> = vec![None; envelopes.len()];
        if let [(account, idx)] = groups.as_slice() {
            // One account, the relay's case: planned and written by one script.
            let group = pick(idx);
            let p = self.enqueue_account(
                *account,
                &group,
                true,
                true,
                quotas,
                decimal(quotas.total_bytes),
            )?;
            // A retry (known entries) indexes again too: the first attempt may have stopped between
            // its script and the index.
            let new =
                (p.status == "new" || p.entries.iter().any(|e| e.0 == "k")).then_some(*account);
            self.count_total(int(&p.detail)?, new)?;
            for ((kind, seq, at, prev), (i, e)) in p.entries.iter().zip(idx.iter().zip(&group)) {
                if let Some(slot) = out.get_mut(*i) {
                    *slot = Some(answer(kind, *seq, *at, *prev, e)?);
                }
            }
        } else {
            // Several accounts: plan on each first, refuse as one send would, then write.
            let mut known = false;
            let mut adding = 0u64;
            let mut queue_full = None;
            let mut sender_full = None;
            let mut fits = false;
            for (account, idx) in &groups {
                let p = self.enqueue_account(
                    *account,
                    &pick(idx),
                    false,
                    false,
                    quotas,
                    NO_CAP.into(),
                )?;
                adding = adding.saturating_add(uint(&p.detail)?);
                for ((kind, ..), i) in p.entries.iter().zip(idx) {
                    let to = envelopes.get(*i).map(|e| e.recipient);
                    match kind.as_str() {
                        "k" => known = true,
                        "f" => fits = true,
                        "q" => queue_full = queue_full.or(to),
                        _ => sender_full = sender_full.or(to),
                    }
                }
            }
            if !known && !fits && !envelopes.is_empty() {
                return Err(match (queue_full, sender_full) {
                    (Some(d), _) => StoreError::QueueFull(d),
                    (None, Some(d)) => StoreError::SenderQuota(d),
                    (None, None) => StoreError::Corrupt("enqueue plan"),
                });
            }
            if self.mailbox_bytes()?.saturating_add(adding) > quotas.total_bytes {
                return Err(StoreError::RelayFull);
            }
            for (account, idx) in &groups {
                let group = pick(idx);
                let p =
                    self.enqueue_account(*account, &group, true, false, quotas, NO_CAP.into())?;
                // A retry (known entries) indexes again too: the first attempt may have stopped between
                // its script and the index.
                let new =
                    (p.status == "new" || p.entries.iter().any(|e| e.0 == "k")).then_some(*account);
                self.count_total(int(&p.detail)?, new)?;
                for ((kind, seq, at, prev), (i, e)) in p.entries.iter().zip(idx.iter().zip(&group))
                {
                    if let Some(slot) = out.get_mut(*i) {
                        *slot = Some(answer(kind, *seq, *at, *prev, e)?);
                    }
                }
            }
        }
        out.into_iter()
            .map(|o| o.ok_or(StoreError::Corrupt("enqueue answer")))
            .collect()
    }

    fn fetch(&self, device: &DeviceId, after: u64, limit: usize) -> Result<Vec<Queued>> {
        let key = format!("{}:q:{}", self.account_key(&device.account), device.device);
        let members: Vec<Vec<u8>> = self.redis.read(
            redis::cmd("ZRANGEBYSCORE")
                .arg(key)
                .arg(format!("({after}"))
                .arg("+inf")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .clone(),
        )?;
        members.iter().map(|m| queued(*device, m)).collect()
    }

    fn ack(&self, device: &DeviceId, seqs: &[u64]) -> Result<usize> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let mut args = Vec::with_capacity(seqs.len() + 1);
        args.push(device.device.to_string().into_bytes());
        args.extend(seqs.iter().map(|s| decimal(*s).into_bytes()));
        let a =
            self.redis
                .eval_plain(&self.scripts.ack, self.account_key(&device.account), args)?;
        self.removed(a)
    }

    fn sweep(&self, cutoff: u64) -> Result<usize> {
        let mut swept = 0usize;
        for bucket in 0..super::MAIL_INDEX_BUCKETS {
            let index = self.redis.tagged(&format!("qi:{bucket}"));
            let accounts: Vec<String> = self
                .redis
                .read(redis::cmd("SMEMBERS").arg(&index).clone())?;
            for a in accounts {
                let Some(account) = hex::decode(&a)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                else {
                    continue;
                };
                swept = swept.saturating_add(self.sweep_account(&account, cutoff)?);
                // An account left without mail leaves the index (a send racing this re-adds it).
                if self.account_mailbox_bytes(&account)? == 0 {
                    let _: i64 = self
                        .redis
                        .write_plain(redis::cmd("SREM").arg(&index).arg(&a).clone())?;
                    if self.account_mailbox_bytes(&account)? > 0 {
                        let _: i64 = self
                            .redis
                            .write_plain(redis::cmd("SADD").arg(&index).arg(&a).clone())?;
                    }
                }
            }
        }
        Ok(swept)
    }

    fn queue_len(&self, device: &DeviceId) -> Result<usize> {
        let key = format!("{}:q:{}", self.account_key(&device.account), device.device);
        self.redis.read(redis::cmd("ZCARD").arg(key).clone())
    }

    fn queue_usage(&self, device: &DeviceId) -> Result<usage::Count> {
        let key = format!("{}:m:{}", self.account_key(&device.account), device.device);
        let (n, b): (Option<u64>, Option<u64>) = self
            .redis
            .read(redis::cmd("HMGET").arg(key).arg("n").arg("b").clone())?;
        Ok(usage::Count {
            envelopes: n.unwrap_or(0),
            bytes: b.unwrap_or(0),
        })
    }

    fn share_usage(&self, device: &DeviceId, sender: &[u8; 32]) -> Result<usage::Count> {
        let key = format!("{}:m:{}", self.account_key(&device.account), device.device);
        let mut n = b"sn".to_vec();
        n.extend_from_slice(sender);
        let mut b = b"sb".to_vec();
        b.extend_from_slice(sender);
        let (n, b): (Option<u64>, Option<u64>) = self
            .redis
            .read(redis::cmd("HMGET").arg(key).arg(n).arg(b).clone())?;
        Ok(usage::Count {
            envelopes: n.unwrap_or(0),
            bytes: b.unwrap_or(0),
        })
    }

    fn account_mailbox_bytes(&self, account: &[u8; 32]) -> Result<u64> {
        let key = format!("{}:mb", self.account_key(account));
        let b: Option<u64> = self.redis.read(redis::cmd("GET").arg(key).clone())?;
        Ok(b.unwrap_or(0))
    }

    fn mailbox_bytes(&self) -> Result<u64> {
        let seen = i64::try_from(self.total.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let mine = self.pending.load(Ordering::Relaxed);
        Ok(u64::try_from(seen.saturating_add(mine)).unwrap_or(0))
    }

    fn purge(&self, device: &DeviceId) -> Result<usize> {
        let r = self.redis.eval(
            &self.scripts.purge,
            self.account_key(&device.account),
            vec![device.device.to_string().into_bytes()],
        )?;
        self.removed(r)
    }

    fn flush(&self) -> Result<()> {
        // Every write was confirmed by its replicas before it returned; what is left is the
        // relay-wide count, which must not hold up acknowledgements when its slot is failing
        // over: it is sent again with the next flush.
        if let Err(e) = self.push_total() {
            tracing::warn!(error = %e, "relay-wide mailbox count not sent yet");
        }
        Ok(())
    }
}
