//! Relay storage on sled.
//!
//! Trees (all keys big-endian so that sled's order is the logical order):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `lists` | account (32) | version u64 ‖ signed device list |
//! | `prekeys` | device (36) | `StoredPreKeys` |
//! | `otk` | device (36) ‖ id u32 | serialized `OneTimePreKey` |
//! | `kem` | device (36) ‖ id u32 | serialized one-time `KemPreKey` |
//! | `mail` | recipient (36) ‖ seq u64 | `StoredEnvelope` |
//! | `mail_ids` | recipient (36) ‖ sender (36) ‖ client id (16) | seq u64 ‖ received_at u64 |
//! | `mail_seq` | recipient (36) | last sequence number given u64 ‖ envelopes queued u64 |
//! | `meta` | `"boot"` | number of times the database was opened u64 |
//! | `push` | device (36) | endpoint URL (UTF-8) |
//! | `names` | normalized username (UTF-8) | account (32) ‖ account-key signature (64) |
//! | `name_of` | account (32) | its username |
//!
//! A one-time key is claimed with `remove` on its exact key: sled returns the old value to exactly
//! one caller, so concurrent claims never hand out the same key (a loser moves on to the next key).
//! An enqueue writes `mail`, `mail_ids` and `mail_seq` for all its envelopes in one serializable
//! transaction, so each queue's sequence numbers are given in commit order; the caller makes it
//! durable with [`SledStore::flush`] (the relay's group commit) before acknowledging the send.
//! Nothing else flushes by itself either: the relay makes every operation it answers durable
//! through the same group commit (acks need not be: a lost ack only re-delivers).
//!
//! Sequence numbers never repeat, even after a crash that lost unflushed envelopes which were
//! already delivered: each open of the database increments a boot counter (flushed at once), and
//! a queue's next number is at least `boot << 32`. The per-queue count is exact (kept in the same
//! transactions), and the queue cap is checked inside the enqueue transaction for new envelopes
//! only, so a retried send is never refused as full.
//!
//! A username claim reads and writes `names` and `name_of` in one serializable transaction (check
//! the name is free or the account's, remove the account's old name, bind the new one), so two
//! concurrent claims of one name cannot both win and the two trees always agree.

use std::path::Path;

use hush_proto::Message;
use hush_proto::relay::{StoredEnvelope, StoredPreKeys};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{
    AccountStore, Claimed, DeviceId, Enqueued, Envelope, MailboxStore, PreKeyStore, PreKeyUpload,
    PushStore, Queued, Result, StoreError, UsernameHolder, UsernameStore,
};

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Relay storage in a sled database directory.
pub struct SledStore {
    db: sled::Db,
    lists: sled::Tree,
    prekeys: sled::Tree,
    otk: sled::Tree,
    kem: sled::Tree,
    mail: sled::Tree,
    mail_ids: sled::Tree,
    mail_seq: sled::Tree,
    push: sled::Tree,
    names: sled::Tree,
    name_of: sled::Tree,
    /// `boot << 32`: the least sequence number this process gives.
    seq_floor: u64,
}

impl SledStore {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = sled::Config::new().path(path).open().map_err(backend)?;
        let tree = |n: &str| db.open_tree(n).map_err(backend);
        Self {
            lists: tree("lists")?,
            prekeys: tree("prekeys")?,
            otk: tree("otk")?,
            kem: tree("kem")?,
            mail: tree("mail")?,
            mail_ids: tree("mail_ids")?,
            mail_seq: tree("mail_seq")?,
            push: tree("push")?,
            names: tree("names")?,
            name_of: tree("name_of")?,
            seq_floor: 0,
            db,
        }
        .booted()
    }

    fn booted(mut self) -> Result<Self> {
        let meta = self.db.open_tree("meta").map_err(backend)?;
        let boot = match meta.get(b"boot").map_err(backend)? {
            Some(v) => be_u64(&v, "meta")?.saturating_add(1),
            None => 1,
        };
        meta.insert(b"boot", &boot.to_be_bytes()).map_err(backend)?;
        self.sync()?;
        self.seq_floor = boot.checked_shl(32).unwrap_or(u64::MAX);
        Ok(self)
    }

    /// The database (for backups and the blob store, which shares it).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    fn sync(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(backend)
    }

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

fn with_id(device: &DeviceId, id: u32) -> Vec<u8> {
    let mut k = device.key().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn be_u64(b: &[u8], what: &'static str) -> Result<u64> {
    Ok(u64::from_be_bytes(
        b.try_into().map_err(|_| StoreError::Corrupt(what))?,
    ))
}

impl AccountStore for SledStore {
    fn create_account(&self, account: &[u8; 32], version: u64, signed: &[u8]) -> Result<()> {
        let mut value = version.to_be_bytes().to_vec();
        value.extend_from_slice(signed);
        match self
            .lists
            .compare_and_swap(account, None::<&[u8]>, Some(value.as_slice()))
            .map_err(backend)?
        {
            Ok(()) => Ok(()),
            Err(_) => Err(StoreError::AccountExists),
        }
    }

    fn device_list(&self, account: &[u8; 32]) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(v) = self.lists.get(account).map_err(backend)? else {
            return Ok(None);
        };
        let (ver, list) = v.split_at_checked(8).ok_or(StoreError::Corrupt("lists"))?;
        Ok(Some((be_u64(ver, "lists")?, list.to_vec())))
    }

    fn put_device_list(&self, account: &[u8; 32], version: u64, signed: &[u8]) -> Result<()> {
        let mut value = version.to_be_bytes().to_vec();
        value.extend_from_slice(signed);
        // Compare-and-swap loop: only a strictly newer version replaces the stored one.
        loop {
            let current = self.lists.get(account).map_err(backend)?;
            if let Some(cur) = &current {
                let stored = be_u64(cur.get(..8).ok_or(StoreError::Corrupt("lists"))?, "lists")?;
                if stored >= version {
                    return Err(StoreError::StaleDeviceList {
                        stored,
                        offered: version,
                    });
                }
            }
            let swapped = self
                .lists
                .compare_and_swap(account, current, Some(value.as_slice()))
                .map_err(backend)?;
            if swapped.is_ok() {
                return Ok(());
            }
        }
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
        (&self.prekeys, &self.otk, &self.kem)
            .transaction(|(p, o, k)| {
                p.insert(&device.key()[..], record.as_slice())?;
                o.apply_batch(&otk)?;
                k.apply_batch(&kem)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|err| match err {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => backend(e),
            })?;
        Ok(())
    }

    fn claim_pre_keys(&self, device: &DeviceId) -> Result<Option<Claimed>> {
        let Some(raw) = self.prekeys.get(device.key()).map_err(backend)? else {
            return Ok(None);
        };
        let record =
            StoredPreKeys::decode(raw.as_ref()).map_err(|_| StoreError::Corrupt("prekeys"))?;
        let prefix = device.key();
        let one_time = Self::take_first(&self.otk, &prefix)?;
        let kem = Self::take_first(&self.kem, &prefix)?;
        // A claimed key must not come back after a crash: the relay flushes (group commit)
        // before handing the bundle out.
        Ok(Some(Claimed {
            signed_pre_key: record.signed_pre_key,
            one_time,
            kem_is_last_resort: kem.is_none(),
            kem: kem.unwrap_or(record.last_resort_kem_pre_key),
            one_time_left: Self::count(&self.otk, &prefix),
            kem_left: Self::count(&self.kem, &prefix),
        }))
    }

    fn pre_key_counts(&self, device: &DeviceId) -> Result<(usize, usize)> {
        let prefix = device.key();
        Ok((
            Self::count(&self.otk, &prefix),
            Self::count(&self.kem, &prefix),
        ))
    }

    fn remove_pre_keys(&self, device: &DeviceId) -> Result<()> {
        let prefix = device.key();
        self.prekeys.remove(prefix).map_err(backend)?;
        for tree in [&self.otk, &self.kem] {
            for k in tree.scan_prefix(prefix).keys() {
                tree.remove(k.map_err(backend)?).map_err(backend)?;
            }
        }
        Ok(())
    }
}

impl PushStore for SledStore {
    fn set_push_endpoint(&self, device: &DeviceId, url: Option<&str>) -> Result<()> {
        match url {
            Some(u) => self
                .push
                .insert(device.key(), u.as_bytes())
                .map_err(backend)?,
            None => self.push.remove(device.key()).map_err(backend)?,
        };
        Ok(())
    }

    fn push_endpoint(&self, device: &DeviceId) -> Result<Option<String>> {
        self.push
            .get(device.key())
            .map_err(backend)?
            .map(|v| String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt("push")))
            .transpose()
    }
}

fn transaction_error(err: TransactionError<StoreError>) -> StoreError {
    match err {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    }
}

fn holder_account(v: &[u8]) -> Result<[u8; 32]> {
    v.get(..32)
        .and_then(|a| a.try_into().ok())
        .ok_or(StoreError::Corrupt("names"))
}

impl UsernameStore for SledStore {
    fn claim_username(&self, name: &str, account: &[u8; 32], proof: &[u8]) -> Result<()> {
        let mut value = account.to_vec();
        value.extend_from_slice(proof);
        (&self.names, &self.name_of)
            .transaction(|(names, name_of)| {
                if let Some(v) = names.get(name.as_bytes())? {
                    let holder = holder_account(&v).map_err(ConflictableTransactionError::Abort)?;
                    if &holder != account {
                        return Err(ConflictableTransactionError::Abort(
                            StoreError::UsernameTaken,
                        ));
                    }
                }
                if let Some(old) = name_of.insert(&account[..], name.as_bytes())?
                    && old.as_ref() != name.as_bytes()
                {
                    names.remove(old)?;
                }
                names.insert(name.as_bytes(), value.as_slice())?;
                Ok(())
            })
            .map_err(transaction_error)
    }

    fn release_username(&self, account: &[u8; 32]) -> Result<Option<String>> {
        let old = (&self.names, &self.name_of)
            .transaction(|(names, name_of)| {
                let old = name_of.remove(&account[..])?;
                if let Some(n) = &old {
                    names.remove(n)?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(old)
            })
            .map_err(transaction_error)?;
        old.map(|n| String::from_utf8(n.to_vec()).map_err(|_| StoreError::Corrupt("name_of")))
            .transpose()
    }

    fn lookup_username(&self, name: &str) -> Result<Option<UsernameHolder>> {
        let Some(v) = self.names.get(name.as_bytes()).map_err(backend)? else {
            return Ok(None);
        };
        Ok(Some(UsernameHolder {
            account: holder_account(&v)?,
            proof: v.get(32..).unwrap_or_default().to_vec(),
        }))
    }

    fn username_of(&self, account: &[u8; 32]) -> Result<Option<String>> {
        self.name_of
            .get(account)
            .map_err(backend)?
            .map(|v| String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt("name_of")))
            .transpose()
    }
}

/// `mail_seq` value: last sequence number ‖ envelopes queued.
fn encode_counter(last: u64, count: u64) -> Vec<u8> {
    let mut v = last.to_be_bytes().to_vec();
    v.extend_from_slice(&count.to_be_bytes());
    v
}

fn decode_counter(v: &[u8]) -> Result<(u64, u64)> {
    let (last, count) = v
        .split_at_checked(8)
        .ok_or(StoreError::Corrupt("mail_seq"))?;
    Ok((be_u64(last, "mail_seq")?, be_u64(count, "mail_seq")?))
}

impl SledStore {
    /// Removes `keys` (all of `device`'s queue) and lowers its count, in one transaction.
    fn remove_mail(&self, device: &DeviceId, keys: Vec<Vec<u8>>) -> Result<usize> {
        let rk = device.key();
        (&self.mail, &self.mail_seq)
            .transaction(|(mail, seqs)| {
                let mut n = 0u64;
                for k in &keys {
                    if mail.remove(k.as_slice())?.is_some() {
                        n += 1;
                    }
                }
                if n > 0
                    && let Some(v) = seqs.get(rk)?
                {
                    let (last, count) =
                        decode_counter(&v).map_err(ConflictableTransactionError::Abort)?;
                    seqs.insert(&rk[..], encode_counter(last, count.saturating_sub(n)))?;
                }
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            })
            .map_err(|err| match err {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => backend(e),
            })
    }
}

fn id_key(e: &Envelope) -> Vec<u8> {
    let mut k = e.recipient.key().to_vec();
    k.extend_from_slice(&e.sender.key());
    k.extend_from_slice(&e.client_id);
    k
}

fn mail_key(device: &DeviceId, seq: u64) -> Vec<u8> {
    let mut k = device.key().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn decode_envelope(recipient: DeviceId, v: &[u8]) -> Result<Envelope> {
    let s = StoredEnvelope::decode(v).map_err(|_| StoreError::Corrupt("mail"))?;
    Ok(Envelope {
        recipient,
        sender: DeviceId {
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

impl MailboxStore for SledStore {
    fn enqueue(&self, envelopes: &[Envelope], cap: usize) -> Result<Vec<Enqueued>> {
        let floor = self.seq_floor;
        let prepared: Vec<(Vec<u8>, Vec<u8>)> = envelopes
            .iter()
            .map(|e| {
                let stored = StoredEnvelope {
                    sender_account: e.sender.account.to_vec(),
                    sender_device: e.sender.device,
                    client_id: e.client_id.to_vec(),
                    body: e.body.clone(),
                    received_at: e.received_at,
                }
                .encode_to_vec();
                (id_key(e), stored)
            })
            .collect();
        (&self.mail, &self.mail_ids, &self.mail_seq)
            .transaction(|(mail, ids, seqs)| {
                let mut out = Vec::with_capacity(envelopes.len());
                for (e, (ik, stored)) in envelopes.iter().zip(&prepared) {
                    if let Some(existing) = ids.get(ik)? {
                        let seq = existing.get(..8).and_then(|b| b.try_into().ok());
                        let at = existing.get(8..16).and_then(|b| b.try_into().ok());
                        let (Some(seq), Some(at)) = (seq, at) else {
                            return Err(ConflictableTransactionError::Abort(StoreError::Corrupt(
                                "mail_ids",
                            )));
                        };
                        out.push(Enqueued {
                            seq: u64::from_be_bytes(seq),
                            fresh: false,
                            received_at: u64::from_be_bytes(at),
                        });
                        continue;
                    }
                    let rk = e.recipient.key();
                    let (last, count) = match seqs.get(rk)? {
                        Some(v) => {
                            decode_counter(&v).map_err(ConflictableTransactionError::Abort)?
                        }
                        None => (0, 0),
                    };
                    if usize::try_from(count).unwrap_or(usize::MAX) >= cap {
                        return Err(ConflictableTransactionError::Abort(StoreError::QueueFull(
                            e.recipient,
                        )));
                    }
                    // Sequence numbers start at 1 (0 means "from the start" in `fetch`) and never
                    // repeat across restarts.
                    let seq = last.saturating_add(1).max(floor);
                    seqs.insert(&rk[..], encode_counter(seq, count.saturating_add(1)))?;
                    let mut idv = seq.to_be_bytes().to_vec();
                    idv.extend_from_slice(&e.received_at.to_be_bytes());
                    ids.insert(ik.as_slice(), idv)?;
                    mail.insert(mail_key(&e.recipient, seq), stored.as_slice())?;
                    out.push(Enqueued {
                        seq,
                        fresh: true,
                        received_at: e.received_at,
                    });
                }
                Ok(out)
            })
            .map_err(|err| match err {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => backend(e),
            })
    }

    fn fetch(&self, device: &DeviceId, after: u64, limit: usize) -> Result<Vec<Queued>> {
        let start = mail_key(device, after.saturating_add(1));
        let prefix = device.key();
        let mut out = Vec::new();
        for item in self.mail.range(start..) {
            let (k, v) = item.map_err(backend)?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let seq = be_u64(k.get(36..).ok_or(StoreError::Corrupt("mail"))?, "mail")?;
            out.push(Queued {
                seq,
                envelope: decode_envelope(*device, &v)?,
            });
        }
        Ok(out)
    }

    fn ack(&self, device: &DeviceId, seqs: &[u64]) -> Result<usize> {
        // Client ids stay until the TTL sweep, so a send retried after the ack is still a no-op.
        self.remove_mail(device, seqs.iter().map(|s| mail_key(device, *s)).collect())
    }

    fn sweep(&self, cutoff: u64) -> Result<usize> {
        let mut old: std::collections::BTreeMap<DeviceId, Vec<Vec<u8>>> = Default::default();
        for item in self.mail.iter() {
            let (k, v) = item.map_err(backend)?;
            let s = StoredEnvelope::decode(v.as_ref()).map_err(|_| StoreError::Corrupt("mail"))?;
            if s.received_at < cutoff {
                let d = k
                    .get(..36)
                    .and_then(DeviceId::from_key)
                    .ok_or(StoreError::Corrupt("mail"))?;
                old.entry(d).or_default().push(k.to_vec());
            }
        }
        let mut n = 0;
        for (d, keys) in old {
            n += self.remove_mail(&d, keys)?;
        }
        for item in self.mail_ids.iter() {
            let (k, v) = item.map_err(backend)?;
            let at = be_u64(
                v.get(8..16).ok_or(StoreError::Corrupt("mail_ids"))?,
                "mail_ids",
            )?;
            if at < cutoff {
                self.mail_ids.remove(&k).map_err(backend)?;
            }
        }
        Ok(n)
    }

    fn queue_len(&self, device: &DeviceId) -> Result<usize> {
        let count = match self.mail_seq.get(device.key()).map_err(backend)? {
            Some(v) => decode_counter(&v)?.1,
            None => 0,
        };
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    fn purge(&self, device: &DeviceId) -> Result<usize> {
        let keys = self
            .mail
            .scan_prefix(device.key())
            .keys()
            .map(|k| k.map(|k| k.to_vec()).map_err(backend))
            .collect::<Result<Vec<_>>>()?;
        self.remove_mail(device, keys)
    }

    fn flush(&self) -> Result<()> {
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    /// Opens `path` with `open`, waiting (bounded) for a store dropped a moment ago to release
    /// sled's file lock (its background flusher may still be winding down).
    fn retry<T, E>(mut open: impl FnMut() -> Result<T, E>) -> T
    where
        E: std::fmt::Debug,
    {
        for _ in 0..500 {
            if let Ok(t) = open() {
                return t;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        open().unwrap()
    }

    relay_store_suite!(suite, {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::SledStore::open(dir.path()).unwrap();
        (dir, store)
    });

    #[test]
    fn acknowledged_envelopes_survive_reopen() {
        use crate::store::{DeviceId, Envelope, MailboxStore};
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceId {
            account: [1; 32],
            device: 1,
        };
        let b = DeviceId {
            account: [2; 32],
            device: 1,
        };
        {
            let s = retry(|| super::SledStore::open(dir.path()));
            let e = Envelope {
                recipient: b,
                sender: a,
                client_id: [7; 16],
                body: b"sealed".to_vec(),
                received_at: 5,
            };
            s.enqueue(&[e], 10).unwrap();
            s.flush().unwrap();
            // Dropped without any shutdown.
        }
        let s = retry(|| super::SledStore::open(dir.path()));
        let q = s.fetch(&b, 0, 10).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].envelope.body, b"sealed");
    }

    #[test]
    fn sequence_numbers_never_repeat_after_a_crash_lost_unflushed_envelopes() {
        use crate::store::{DeviceId, Envelope, MailboxStore};
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            DeviceId {
                account: [1; 32],
                device: 1,
            },
            DeviceId {
                account: [2; 32],
                device: 1,
            },
        );
        let e = |id: u8| Envelope {
            recipient: b,
            sender: a,
            client_id: [id; 16],
            body: vec![id],
            received_at: 1,
        };
        let (kept, delivered) = {
            let s = retry(|| super::SledStore::open(dir.path()));
            let kept = s.enqueue(&[e(1)], 10).unwrap()[0].seq;
            s.flush().unwrap();
            // Written and delivered live, but (below) lost in a crash before any flush.
            (kept, s.enqueue(&[e(2)], 10).unwrap()[0].seq)
        };
        {
            // Undo the second write as a crash would have: its record and the counter.
            let db = retry(|| sled::open(dir.path()));
            let mail = db.open_tree("mail").unwrap();
            mail.remove(super::mail_key(&b, delivered)).unwrap();
            db.open_tree("mail_seq")
                .unwrap()
                .insert(b.key(), super::encode_counter(kept, 1))
                .unwrap();
            db.flush().unwrap();
        }
        let s = retry(|| super::SledStore::open(dir.path()));
        let next = s.enqueue(&[e(3)], 10).unwrap()[0].seq;
        assert!(next > delivered, "a sequence number was given twice");
    }
}
