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
//! | `mail` | recipient (36) ‖ seq u64 | record: 0 ‖ sender account (32) ‖ sender device u32 ‖ client id (16) ‖ received at u64 ‖ body |
//! | `meta` | `"boot"` | number of times the database was opened u64 |
//! | `push` | device (36) | endpoint URL (UTF-8) |
//! | `names` | normalized username (UTF-8) | account (32) ‖ account-key signature (64) |
//! | `name_of` | account (32) | its username |
//!
//! **The hot path writes one record per envelope and scans nothing.** What a transaction over
//! three trees used to keep (each queue's last sequence number, its count and bytes, and the
//! recent-send index) lives in memory, behind one mutex, and is rebuilt from the `mail` tree when
//! the database opens (one pass over the queued envelopes), together with the mailbox usage per
//! device, per (device, sending account), per account and in total (`store::usage`). A removal
//! lowers them by the record it removed without decoding it: the sender is at a fixed place in
//! the record's head and the size follows from its length, so an acknowledgement copies and
//! allocates nothing; the expiry sweep and the rebuild at open read the same head. The head is
//! part of the one value each envelope is written as, so it can never disagree with the
//! envelope, whatever a crash keeps. The relay-wide total is also published in an atomic, which
//! the mailbox gauge reads without the lock after every send and ack. An enqueue holds that mutex
//! while it checks the index and the caps and gives the sequence numbers (a refused send writes
//! nothing), then writes each envelope with one plain `insert` and counts it; so a retried send
//! is not queued twice (while its id is remembered: `store::ids`), a queue cap is exact, and each
//! queue's sequence numbers are increasing and in commit order.
//!
//! A send is deliberately not one sled `Batch`: in sled 0.34 every `apply_batch` writes the
//! current log buffer out before and after itself (two `pwrite`s and `sync_file_range`s per
//! send) and takes sled's global write lock, which cost the relay two thirds of its throughput.
//! Plain inserts are atomic one by one, and sled recovers a prefix of its log, so a crash in the
//! middle of a multi-envelope send keeps its first envelopes and loses the rest; that send was
//! never answered (answers wait for the flush after it), its retry is recognised for the
//! envelopes that were kept (they are in the index, rebuilt at open) and queues the others. The relay calls every mutating
//! method from its one writer thread (`crate::writer`), so the mutex is uncontended there; it
//! still makes the store safe for any caller. Acknowledgements remove records one by one (a lost
//! removal only re-delivers). Nothing here flushes by itself: the writer makes each batch of
//! operations durable with one [`SledStore::flush`] before any of them is answered.
//!
//! Sequence numbers never repeat, even after a crash that lost unflushed envelopes which were
//! already delivered: each open of the database increments a boot counter (flushed at once), and
//! a queue's next number is at least `boot << 32`.
//!
//! One-time pre-keys: a key is claimed with `remove` on its exact key, so concurrent claims never
//! hand out the same key; the number left per device is kept in memory (rebuilt at open), so a
//! claim does not count by scanning. Rare operations (pre-key uploads, username claims) keep
//! their multi-tree transactions.
//!
//! Databases written by earlier versions also hold `mail_ids` and `mail_seq` trees; they are no
//! longer read and are dropped at open. Their `mail` records may be protobuf `StoredEnvelope`s
//! (sender, client id, body, received at), which never start with the 0 of the current layout:
//! they are still read (and decoded where the current layout needs none) until acknowledged or
//! expired.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use hush_proto::Message;
use hush_proto::relay::{StoredEnvelope, StoredPreKeys};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::ids::{self, SendIds};
use super::usage::{self, Usage, stored_bytes};
use super::{
    AccountStore, Claimed, DeviceId, Enqueued, Envelope, MailboxStore, PreKeyStore, PreKeyUpload,
    PushStore, Queued, Quotas, Result, StoreError, UsernameHolder, UsernameStore,
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
    push: sled::Tree,
    names: sled::Tree,
    name_of: sled::Tree,
    /// `boot << 32`: the least sequence number this process gives.
    seq_floor: u64,
    /// Queue counters and the recent-send index (rebuilt at open).
    state: Mutex<MailState>,
    /// The total of `state`'s mailbox usage, stored after every change of it (under the lock),
    /// so that [`MailboxStore::mailbox_bytes`] reads it without the lock.
    mailbox_total: AtomicU64,
    /// One-time keys left per device: (X25519, ML-KEM) (rebuilt at open).
    key_counts: Mutex<HashMap<DeviceId, (usize, usize)>>,
}

#[derive(Default)]
struct MailState {
    /// Last sequence number given, per queue.
    last: HashMap<DeviceId, u64>,
    usage: Usage,
    ids: SendIds,
}

/// Opens (or creates) the relay's sled database in `path` with the settings every opener must
/// use (the relay, backup export and import): a new database gets [`SEGMENT_SIZE`], an existing
/// one the segment size it was made with.
pub fn open_db(path: &Path) -> sled::Result<sled::Db> {
    open_db_with_cache(path, DEFAULT_CACHE_BYTES)
}

/// Memory sled may use for its cache unless told otherwise (the `sled_cache_bytes` setting's
/// default; sled's own default is 1 GiB).
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// As [`open_db`], with a cache of at most `cache_bytes`.
pub fn open_db_with_cache(path: &Path, cache_bytes: u64) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(path)
        .segment_size(segment_size(path))
        .cache_capacity(cache_bytes)
        .open()
}

impl SledStore {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// As [`SledStore::open`], with a sled cache of at most `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self> {
        let db = open_db_with_cache(path, cache_bytes).map_err(backend)?;
        let tree = |n: &str| db.open_tree(n).map_err(backend);
        Self {
            lists: tree("lists")?,
            prekeys: tree("prekeys")?,
            otk: tree("otk")?,
            kem: tree("kem")?,
            mail: tree("mail")?,
            push: tree("push")?,
            names: tree("names")?,
            name_of: tree("name_of")?,
            seq_floor: 0,
            state: Mutex::new(MailState::default()),
            mailbox_total: AtomicU64::new(0),
            key_counts: Mutex::new(HashMap::new()),
            db,
        }
        .booted()?
        .rebuilt()
    }

    /// Rebuilds what lives in memory from the trees: queue counters and the recent-send index
    /// from `mail`, one-time key counts from `otk` and `kem`.
    fn rebuilt(self) -> Result<Self> {
        for old in ["mail_ids", "mail_seq"] {
            self.db.drop_tree(old).map_err(backend)?;
        }
        let mut st = MailState::default();
        let mut recent: Vec<(u64, u128, u64)> = Vec::new();
        for item in self.mail.iter() {
            let (k, v) = item.map_err(backend)?;
            let d = k
                .get(..36)
                .and_then(DeviceId::from_key)
                .ok_or(StoreError::Corrupt("mail"))?;
            let seq = be_u64(k.get(36..).ok_or(StoreError::Corrupt("mail"))?, "mail")?;
            // The head is all it takes (the body is not copied), but for earlier-layout records.
            let (head, bytes) = match record_head(&v) {
                Some(h) => (
                    h,
                    usage::body_stored_bytes(v.len().saturating_sub(RECORD_HEAD)),
                ),
                None => {
                    let e = decode_legacy(d, &v)?;
                    let bytes = stored_bytes(&e);
                    let head = Head {
                        sender: e.sender,
                        client_id: e.client_id,
                        received_at: e.received_at,
                    };
                    (head, bytes)
                }
            };
            let last = st.last.entry(d).or_default();
            *last = (*last).max(seq);
            st.usage.add(d, &head.sender.account, bytes);
            let key = ids::key_of(&d, &head.sender, &head.client_id);
            recent.push((head.received_at, key, seq));
        }
        recent.sort_unstable();
        for (at, key, seq) in recent {
            st.ids.insert(key, seq, at);
        }
        let mut counts: HashMap<DeviceId, (usize, usize)> = HashMap::new();
        for (tree, kem) in [(&self.otk, false), (&self.kem, true)] {
            for k in tree.iter().keys() {
                let k = k.map_err(backend)?;
                let d = k
                    .get(..36)
                    .and_then(DeviceId::from_key)
                    .ok_or(StoreError::Corrupt("prekeys"))?;
                let c = counts.entry(d).or_default();
                if kem {
                    c.1 += 1;
                } else {
                    c.0 += 1;
                }
            }
        }
        let mut state = self.state()?;
        *state = st;
        self.publish_total(&state);
        drop(state);
        *self.counts()? = counts;
        Ok(self)
    }

    /// Stores the mailbox total for lock-free readers (called with the state lock held).
    fn publish_total(&self, st: &MailState) {
        self.mailbox_total
            .store(st.usage.total(), Ordering::Relaxed);
    }

    fn state(&self) -> Result<MutexGuard<'_, MailState>> {
        self.state
            .lock()
            .map_err(|_| StoreError::Backend("mail state lock poisoned".into()))
    }

    fn counts(&self) -> Result<MutexGuard<'_, HashMap<DeviceId, (usize, usize)>>> {
        self.key_counts
            .lock()
            .map_err(|_| StoreError::Backend("pre-key count lock poisoned".into()))
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

/// Log segment size of a new database: sled's largest, 16 MiB (its default is 512 KiB).
///
/// sled 0.34 can deadlock when a segment at the end of its file is freed and truncated (on its
/// I/O thread pool) while the writer needs a new segment and every pool thread waits for the
/// writer's lock (sled issue 1412). A relay deletes as much as it writes, so it frees tail
/// segments all the time; with 32× larger segments that happens 32× less often, and was not
/// seen again in the load runs of BENCHMARKS.md. An existing database keeps the size it was
/// made with (sled refuses to open it with another).
pub const SEGMENT_SIZE: usize = 16 << 20;

fn segment_size(path: &Path) -> usize {
    std::fs::read_to_string(path.join("conf"))
        .ok()
        .and_then(|conf| {
            conf.lines()
                .find_map(|l| l.strip_prefix("segment_size: ")?.trim().parse().ok())
        })
        .unwrap_or(SEGMENT_SIZE)
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

fn mail_key(device: &DeviceId, seq: u64) -> [u8; 44] {
    let mut k = [0u8; 44];
    let (d, s) = k.split_at_mut(36);
    d.copy_from_slice(&device.key());
    s.copy_from_slice(&seq.to_be_bytes());
    k
}

/// First byte of a `mail` record in the current layout. A record of the earlier layout (a
/// protobuf `StoredEnvelope`) never starts with it: its first byte is a field tag, and field
/// number 0 does not exist.
const RECORD_TAG: u8 = 0;

/// Length of a record's fixed head: tag ‖ sender account (32) ‖ sender device u32 ‖
/// client id (16) ‖ received at u64; the body follows.
const RECORD_HEAD: usize = 1 + 32 + 4 + 16 + 8;

/// What a `mail` record holds besides its body.
struct Head {
    sender: DeviceId,
    client_id: [u8; 16],
    received_at: u64,
}

/// Reads the fixed head of a current-layout record (`None` for any other record).
fn record_head(v: &[u8]) -> Option<Head> {
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
        sender: DeviceId {
            account: *account,
            device: u32::from_be_bytes(*device),
        },
        client_id: *client_id,
        received_at: u64::from_be_bytes(*received_at),
    })
}

/// A stored record as an envelope (either layout).
fn decode_envelope(recipient: DeviceId, v: &[u8]) -> Result<Envelope> {
    if let Some(h) = record_head(v) {
        return Ok(Envelope {
            recipient,
            sender: h.sender,
            client_id: h.client_id,
            body: v.get(RECORD_HEAD..).unwrap_or_default().to_vec(),
            received_at: h.received_at,
        });
    }
    decode_legacy(recipient, v)
}

/// A record of the earlier layout (a protobuf `StoredEnvelope`).
fn decode_legacy(recipient: DeviceId, v: &[u8]) -> Result<Envelope> {
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

/// What the counters charge a record to, read without decoding it: the sending account and the
/// bytes as `usage::stored_bytes` counts them (the body is the rest of the record).
fn charged(v: &[u8]) -> Option<([u8; 32], u64)> {
    match record_head(v) {
        Some(h) => Some((
            h.sender.account,
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
            Some((e.sender.account, stored_bytes(&e)))
        }
    }
}

/// When a record was received, read without decoding its body.
fn received_at(v: &[u8]) -> Result<u64> {
    match record_head(v) {
        Some(h) => Ok(h.received_at),
        None => Ok(StoredEnvelope::decode(v)
            .map_err(|_| StoreError::Corrupt("mail"))?
            .received_at),
    }
}

/// An envelope as a record of the current layout: one allocation, the body copied once.
fn encode_envelope(e: &Envelope) -> Vec<u8> {
    let mut v = Vec::with_capacity(RECORD_HEAD.saturating_add(e.body.len()));
    v.push(RECORD_TAG);
    v.extend_from_slice(&e.sender.account);
    v.extend_from_slice(&e.sender.device.to_be_bytes());
    v.extend_from_slice(&e.client_id);
    v.extend_from_slice(&e.received_at.to_be_bytes());
    v.extend_from_slice(&e.body);
    v
}

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
        // module docs for why not one `Batch`). If a write fails, what was written stays and is
        // counted, like a crash between two envelopes of a send, and the send is refused: its
        // retry finds those envelopes in the index and queues only the rest.
        for (key, seq, e) in writes {
            let value = encode_envelope(e);
            self.mail
                .insert(&mail_key(&e.recipient, seq)[..], value)
                .map_err(backend)?;
            let last = st.last.entry(e.recipient).or_default();
            *last = (*last).max(seq);
            st.usage
                .add(e.recipient, &e.sender.account, stored_bytes(e));
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

    fn sender_usage(&self, device: &DeviceId, sender: &[u8; 32]) -> Result<usage::Count> {
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

#[cfg(test)]
mod tests {
    const Q10: crate::store::Quotas = crate::store::Quotas::queue_len(10);

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
            s.enqueue(&[e], &Q10).unwrap();
            s.flush().unwrap();
            // Dropped without any shutdown.
        }
        let s = retry(|| super::SledStore::open(dir.path()));
        let q = s.fetch(&b, 0, 10).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].envelope.body, b"sealed");
    }

    #[test]
    fn mailbox_usage_and_sender_shares_are_rebuilt_at_open() {
        use crate::store::usage::{Count, ENVELOPE_OVERHEAD};
        use crate::store::{DeviceId, Envelope, MailboxStore, Quotas, StoreError};
        let dir = tempfile::tempdir().unwrap();
        let d = |a: u8| DeviceId {
            account: [a; 32],
            device: 1,
        };
        let e = |from: u8, id: u8| Envelope {
            recipient: d(2),
            sender: d(from),
            client_id: [id; 16],
            body: vec![id; 100],
            received_at: 1,
        };
        let one = 100 + ENVELOPE_OVERHEAD;
        let q = Quotas {
            sender_len: 2,
            ..Quotas::UNLIMITED
        };
        {
            let s = retry(|| super::SledStore::open(dir.path()));
            s.enqueue(&[e(1, 1)], &q).unwrap();
            s.enqueue(&[e(1, 2)], &q).unwrap();
            s.enqueue(&[e(3, 3)], &q).unwrap();
            s.flush().unwrap();
        }
        let s = retry(|| super::SledStore::open(dir.path()));
        assert_eq!(s.mailbox_bytes().unwrap(), 3 * one);
        assert_eq!(s.account_mailbox_bytes(&[2; 32]).unwrap(), 3 * one);
        assert_eq!(
            s.sender_usage(&d(2), &[1; 32]).unwrap(),
            Count {
                envelopes: 2,
                bytes: 2 * one
            }
        );
        // The share used before the restart still counts...
        assert!(matches!(
            s.enqueue(&[e(1, 4)], &q),
            Err(StoreError::SenderQuota(_))
        ));
        // ...and is released by acknowledgements after it.
        let seqs: Vec<u64> = s
            .fetch(&d(2), 0, 10)
            .unwrap()
            .iter()
            .map(|x| x.seq)
            .collect();
        assert_eq!(s.ack(&d(2), &seqs).unwrap(), 3);
        assert_eq!(s.mailbox_bytes().unwrap(), 0);
        assert!(s.enqueue(&[e(1, 4)], &q).unwrap()[0].fresh);
    }

    #[test]
    fn records_of_the_earlier_layout_are_read_counted_expired_and_acknowledged() {
        use crate::store::usage::{Count, ENVELOPE_OVERHEAD};
        use crate::store::{DeviceId, Envelope, MailboxStore, Quotas};
        use hush_proto::Message;
        let dir = tempfile::tempdir().unwrap();
        let d = |a: u8| DeviceId {
            account: [a; 32],
            device: 1,
        };
        let legacy = |id: u8, at: u64| {
            hush_proto::relay::StoredEnvelope {
                sender_account: vec![1; 32],
                sender_device: 1,
                client_id: vec![id; 16],
                body: vec![id; 100],
                received_at: at,
            }
            .encode_to_vec()
        };
        {
            // A database written before the current layout: protobuf records.
            let db = retry(|| super::open_db(dir.path()));
            let mail = db.open_tree("mail").unwrap();
            mail.insert(super::mail_key(&d(2), 1), legacy(1, 10))
                .unwrap();
            mail.insert(super::mail_key(&d(2), 2), legacy(2, 1_000))
                .unwrap();
            mail.insert(super::mail_key(&d(3), 1), legacy(3, 1_000))
                .unwrap();
            db.flush().unwrap();
        }
        let s = retry(|| super::SledStore::open(dir.path()));
        let one = 100 + ENVELOPE_OVERHEAD;
        assert_eq!(s.mailbox_bytes().unwrap(), 3 * one);
        assert_eq!(
            s.sender_usage(&d(2), &[1; 32]).unwrap(),
            Count {
                envelopes: 2,
                bytes: 2 * one
            }
        );
        let q = s.fetch(&d(2), 0, 10).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].envelope.sender, d(1));
        assert_eq!(q[0].envelope.client_id, [1; 16]);
        assert_eq!(q[0].envelope.body, vec![1; 100]);
        assert_eq!(q[0].envelope.received_at, 10);
        // A retry of a queued legacy envelope is recognised.
        let retry_of = Envelope {
            recipient: d(2),
            sender: d(1),
            client_id: [2; 16],
            body: vec![2; 100],
            received_at: 2_000,
        };
        let again = s.enqueue(&[retry_of], &Quotas::UNLIMITED).unwrap();
        assert!(!again[0].fresh);
        assert_eq!(again[0].seq, 2);
        // Expiry, acknowledgement and purge give their bytes back; new records mix in.
        assert_eq!(s.sweep(100).unwrap(), 1);
        assert_eq!(s.mailbox_bytes().unwrap(), 2 * one);
        let fresh = Envelope {
            recipient: d(2),
            sender: d(4),
            client_id: [4; 16],
            body: vec![4; 10],
            received_at: 2_000,
        };
        assert!(s.enqueue(&[fresh], &Quotas::UNLIMITED).unwrap()[0].fresh);
        assert_eq!(s.mailbox_bytes().unwrap(), 2 * one + 10 + ENVELOPE_OVERHEAD);
        let seqs: Vec<u64> = s
            .fetch(&d(2), 0, 10)
            .unwrap()
            .iter()
            .map(|x| x.seq)
            .collect();
        assert_eq!(seqs.len(), 2);
        assert_eq!(s.ack(&d(2), &seqs).unwrap(), 2);
        assert_eq!(s.purge(&d(3)).unwrap(), 1);
        assert_eq!(s.mailbox_bytes().unwrap(), 0);
        assert_eq!(s.queue_usage(&d(2)).unwrap(), Count::default());
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
            let kept = s.enqueue(&[e(1)], &Q10).unwrap()[0].seq;
            s.flush().unwrap();
            // Written and delivered live, but (below) lost in a crash before any flush.
            (kept, s.enqueue(&[e(2)], &Q10).unwrap()[0].seq)
        };
        {
            // Undo the second write as a crash would have: its record is gone.
            let db = retry(|| super::open_db(dir.path()));
            let mail = db.open_tree("mail").unwrap();
            mail.remove(super::mail_key(&b, delivered)).unwrap();
            db.flush().unwrap();
        }
        let s = retry(|| super::SledStore::open(dir.path()));
        assert_eq!(
            s.queue_len(&b).unwrap(),
            1,
            "counters rebuilt from the records"
        );
        assert_eq!(s.fetch(&b, 0, 10).unwrap()[0].seq, kept);
        let next = s.enqueue(&[e(3)], &Q10).unwrap()[0].seq;
        assert!(next > delivered, "a sequence number was given twice");
        // The recent-send index was rebuilt from what is queued: a retry is still a no-op.
        assert!(!s.enqueue(&[e(1)], &Q10).unwrap()[0].fresh);
    }

    #[test]
    fn a_send_cut_short_by_a_crash_is_completed_by_its_retry_without_duplicates() {
        use crate::store::{DeviceId, Envelope, MailboxStore};
        let dir = tempfile::tempdir().unwrap();
        let sender = DeviceId {
            account: [1; 32],
            device: 1,
        };
        let to = |n: u8| DeviceId {
            account: [n; 32],
            device: 1,
        };
        let send: Vec<Envelope> = (2..5)
            .map(|n| Envelope {
                recipient: to(n),
                sender,
                client_id: [7; 16],
                body: vec![n],
                received_at: 1,
            })
            .collect();
        let first = {
            let s = retry(|| super::SledStore::open(dir.path()));
            let out = s.enqueue(&send, &Q10).unwrap();
            assert!(out.iter().all(|e| e.fresh));
            s.flush().unwrap();
            out
        };
        {
            // A crash kept only the first envelope of the (unanswered) send: sled recovers a
            // prefix of its log.
            let db = retry(|| super::open_db(dir.path()));
            let mail = db.open_tree("mail").unwrap();
            for (e, q) in send.iter().zip(&first).skip(1) {
                mail.remove(super::mail_key(&e.recipient, q.seq)).unwrap();
            }
            db.flush().unwrap();
        }
        let s = retry(|| super::SledStore::open(dir.path()));
        let retried = s.enqueue(&send, &Q10).unwrap();
        assert!(!retried[0].fresh, "the kept envelope is not queued twice");
        assert_eq!(retried[0].seq, first[0].seq);
        assert!(
            retried[1].fresh && retried[2].fresh,
            "the lost ones are queued"
        );
        for n in 2..5 {
            assert_eq!(s.queue_len(&to(n)).unwrap(), 1);
        }
        // A third attempt changes nothing.
        assert!(s.enqueue(&send, &Q10).unwrap().iter().all(|e| !e.fresh));
    }
}
