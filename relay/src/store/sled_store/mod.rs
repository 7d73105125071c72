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
//! | `access` | device (36) | delivery access: `anyone` (1) ‖ token (16, if set) |
//! | `names` | normalized username (UTF-8) | account (32) ‖ account-key signature (64) |
//! | `name_of` | account (32) | its username |
//! | `glog` | slot (32) ‖ entry number u64 | the group log entry |
//! | `glog_meta` | slot (32) | write check (32) ‖ head u64 ‖ bytes of its entries u64 |
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
//! operations durable with one [`SledStore::flush`](super::MailboxStore::flush) before any of
//! them is answered.
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
//! Group logs: an append takes the group-log lock, checks the slot's `glog_meta` record, inserts
//! the entry and then the new record (so a crash between them leaves an entry beyond the head,
//! which the next append of that number overwrites), and flushes before the lock is released.
//! Reads take the same lock, so nobody reads an entry that a crash could still take back. The
//! bytes of all logs are counted in memory (rebuilt at open from `glog_meta`).
//!
//! Databases written by earlier versions also hold `mail_ids` and `mail_seq` trees; they are no
//! longer read and are dropped at open. Their `mail` records may be protobuf `StoredEnvelope`s
//! (sender, client id, body, received at), which never start with the 0 of the current layout:
//! they are still read (and decoded where the current layout needs none) until acknowledged or
//! expired.

mod accounts;
mod group_log;
mod mailbox;
mod prekeys;
mod records;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use sled::transaction::TransactionError;

use self::records::{Head, RECORD_HEAD, decode_legacy, record_head};
use super::ids::{self, SendIds};
use super::usage::{self, Usage, stored_bytes};
use super::{DeviceId, Result, StoreError};

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn transaction_error(err: TransactionError<StoreError>) -> StoreError {
    match err {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    }
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
    access: sled::Tree,
    names: sled::Tree,
    name_of: sled::Tree,
    glog: sled::Tree,
    glog_meta: sled::Tree,
    /// Held while a group log is appended to or read; holds the bytes of all group logs.
    glog_lock: Mutex<u64>,
    /// `boot << 32`: the least sequence number this process gives.
    seq_floor: u64,
    /// Queue counters and the recent-send index (rebuilt at open).
    state: Mutex<MailState>,
    /// The total of `state`'s mailbox usage, stored after every change of it (under the lock),
    /// so that [`MailboxStore::mailbox_bytes`](super::MailboxStore::mailbox_bytes) reads it
    /// without the lock.
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

/// Test-only: opens with `open`, waiting (bounded) for a handle dropped a moment ago to release
/// sled's file lock, which happens only once sled's background threads let go of it.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn retry_open<T, E: std::fmt::Debug>(
    mut open: impl FnMut() -> std::result::Result<T, E>,
) -> T {
    for _ in 0..500 {
        if let Ok(t) = open() {
            return t;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    open().unwrap()
}

/// Test-only: opens a plain sled database in `path` ([`retry_open`]).
#[cfg(test)]
pub(crate) fn open_test_db(path: &Path) -> sled::Db {
    retry_open(|| sled::Config::new().path(path).open())
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
            access: tree("access")?,
            names: tree("names")?,
            name_of: tree("name_of")?,
            glog: tree("glog")?,
            glog_meta: tree("glog_meta")?,
            glog_lock: Mutex::new(0),
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
                        share: e.share,
                        client_id: e.client_id,
                        received_at: e.received_at,
                    };
                    (head, bytes)
                }
            };
            let last = st.last.entry(d).or_default();
            *last = (*last).max(seq);
            st.usage.add(d, &head.share.account, bytes);
            let key = ids::key_of(&d, &head.share, &head.client_id);
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
        let mut log_bytes = 0u64;
        for v in self.glog_meta.iter().values() {
            let v = v.map_err(backend)?;
            log_bytes = log_bytes.saturating_add(group_log::Meta::decode(&v)?.bytes);
        }
        *self.log_lock()? = log_bytes;
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

    fn log_lock(&self) -> Result<MutexGuard<'_, u64>> {
        self.glog_lock
            .lock()
            .map_err(|_| StoreError::Backend("group log lock poisoned".into()))
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

fn be_u64(b: &[u8], what: &'static str) -> Result<u64> {
    Ok(u64::from_be_bytes(
        b.try_into().map_err(|_| StoreError::Corrupt(what))?,
    ))
}
