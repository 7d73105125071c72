//! [`RedisBlobs`]: blob storage on the relay's Redis Cluster, so that a blob uploaded through one
//! relay node can be downloaded through any other.
//!
//! Blob bytes live in Redis memory, as the chunks the clients send ([`BLOB_CHUNK`] bytes each,
//! the last one shorter; the relay's maximum blob size bounds how many). Operators size the
//! cluster's `maxmemory` for the blob quota (`total_max`) on top of the mail store, and keep
//! `maxmemory-policy noeviction`: a node that reaches `maxmemory` refuses writes with `OOM`,
//! which a [`BlobStore::begin_within`] reports as [`Begin::RelayFull`] (nothing changed) and a
//! chunk or a completion as [`StoreError::RelayFull`] (the client retries later).
//!
//! Keys (`<p>` is the prefix of [`Redis`], `<id>` the blob id and `<acct>` the owner's account,
//! both in lowercase hex):
//!
//! | key | what |
//! |---|---|
//! | `<p>{b:<id>}:m` | hash: `m` the metadata record (as in [`super::FileBlobs`]' sled tree, its flag byte 0), `d` = `1` once complete |
//! | `<p>{b:<id>}:s` | set of the indices of the chunks stored |
//! | `<p>{b:<id>}:c:<index>` | chunk `index` (decimal), its bytes |
//! | `<p>{a:<acct>}:bb` | declared bytes of the account's blobs (the mail store's account tag) |
//! | `<p>{g}:bb` | declared bytes of all blobs |
//! | `<p>{bi:<n>}` | `n` = first id byte mod 16: hash of blob id (16 bytes) → owner account (32) ‖ declared size (u64 BE) |
//!
//! Every step on one blob is one Lua script on the blob's slot, so chunks, completion and
//! deletion are atomic per blob; each counter change is one script on the counter's slot.
//! Every key of a blob carries a Redis expiry a little ([`BACKSTOP_MS`]) after the later of the
//! blob's `expires_at` and the time the key is written: [`BlobStore::sweep`] is what deletes
//! blobs (expired ones and abandoned uploads, whose cutoff only the sweep knows), and the expiry
//! is a backstop so that a blob no sweep reaches does not stay in memory forever.
//!
//! Across slots nothing is atomic:
//! - [`BlobStore::begin_within`] checks that the id is free, reserves the size on the account's
//!   counter and then on the relay's (each a check-and-add, so the caps hold exactly, across
//!   nodes too), creates the blob, and then records it in the index. A refusal or an error takes
//!   back what it had reserved. A crash (or a failed give-back) after a reservation and before
//!   the index entry leaves the counters high by the blob's size: that much of the quota is lost
//!   until an operator resets the counters; the blob itself, if created, goes at its expiry.
//! - The index entry is the claim on the counters: whoever removes it (a delete, or the sweep of
//!   a doomed blob or of one Redis expired) gives the size back, so the bytes come back exactly
//!   once, also for a blob that only the backstop expiry removed. A crash between deleting a
//!   blob and removing its index entry leaves the entry to the next sweep, which gives the bytes
//!   back then; a crash between removing the entry and the counter updates loses the give-back
//!   (the counters stay high by the size). A counter update refused by a full node (`OOM`:
//!   `DECRBY` is a write Redis denies then) is lost the same way.
//!
//! Durability: each script is on the primary's disk when it answers (`appendfsync always`), and
//! [`BlobStore::flush`] waits (`WAIT`) until the configured number of replicas have everything
//! written so far, so a completed blob is durable when the flush after the completion returns.

use std::sync::Arc;

use redis::Value;

use super::record::{decode_meta, encode_meta};
use super::{Begin, BlobMeta, BlobStore, ChunkPut, Quota, check_chunk, doomed};
use crate::shared::now_ms;
use crate::store::redis_store::{Lua, Redis, array, bytes, uint};
use crate::store::{Result, StoreError};

/// How long after a blob's expiry (or after a write, for a blob whose expiry is already past)
/// Redis drops its keys if no sweep did.
const BACKSTOP_MS: u64 = 6 * 3_600_000;
/// Buckets of the blob index, spread over slots.
const INDEX_BUCKETS: u8 = 16;
/// How many index entries one `HSCAN` step asks for.
const SCAN_COUNT: u32 = 256;
/// The latest expiry time Redis is given (year 9999, in ms).
const LATEST_AT: u64 = 253_402_300_799_000;
/// How often a chunk or completion is retried when the blob was replaced meanwhile.
const ATTEMPTS: usize = 3;

/// Checks a counter against a cap and adds to it. KEYS[1]: the counter. ARGV: size, cap (empty
/// for none). Returns `{1, new value}`, or `{0, value}` when the size does not fit.
const RESERVE: &str = r"
local v = redis.call('GET', KEYS[1]) or '0'
if ARGV[2] ~= '' and (tonumber(v) or 0) + tonumber(ARGV[1]) > tonumber(ARGV[2]) then
  return {0, v}
end
return {1, redis.call('INCRBY', KEYS[1], ARGV[1])}
";

/// Takes a size off a counter (dropping it at zero). KEYS[1]: the counter. ARGV: size.
const RELEASE: &str = r"
if redis.call('DECRBY', KEYS[1], ARGV[1]) <= 0 then redis.call('DEL', KEYS[1]) end
return 1
";

/// Deletes whatever chunks a blob key start `B` holds (prelude of the blob scripts).
const BLOB_PRELUDE: &str = r"
local B = KEYS[1]
local function drop_chunks()
  for _, i in ipairs(redis.call('SMEMBERS', B .. ':s')) do
    redis.call('UNLINK', B .. ':c:' .. i)
  end
  redis.call('UNLINK', B .. ':s')
end
";

/// Creates a blob. ARGV: metadata record, expiry (ms). Returns 0 when the id is in use. Chunks
/// left by an earlier blob of the id (whose metadata Redis expired) are dropped first.
fn begin_script() -> String {
    format!(
        "{BLOB_PRELUDE}
local m = B .. ':m'
if redis.call('EXISTS', m) == 1 then return 0 end
drop_chunks()
redis.call('HSET', m, 'm', ARGV[1])
redis.call('PEXPIREAT', m, ARGV[2])
return 1
"
    )
}

/// Stores a chunk. ARGV: the metadata record the caller checked the chunk against, index, bytes,
/// expiry (ms). Returns `S` stored, `U` no such blob, `X` the blob is another one now, `C`
/// complete.
const PUT: &str = r"
local B = KEYS[1]
local m = redis.call('HMGET', B .. ':m', 'm', 'd')
if not m[1] then return 'U' end
if m[1] ~= ARGV[1] then return 'X' end
if m[2] then return 'C' end
redis.call('SET', B .. ':c:' .. ARGV[2], ARGV[3], 'PXAT', ARGV[4])
redis.call('SADD', B .. ':s', ARGV[2])
redis.call('PEXPIREAT', B .. ':s', ARGV[4])
return 'S'
";

/// Marks a blob complete if all its chunks are there. ARGV: the metadata record, chunk count.
/// Returns 1 complete, 0 not (or no such blob), 2 the blob is another one now.
const COMPLETE: &str = r"
local B = KEYS[1]
local m = redis.call('HMGET', B .. ':m', 'm', 'd')
if not m[1] then return 0 end
if m[1] ~= ARGV[1] then return 2 end
if m[2] then return 1 end
if redis.call('SCARD', B .. ':s') ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', B .. ':m', 'd', '1')
return 1
";

/// Deletes a blob; with ARGV (metadata record, `1`/`0` complete) only if it is still that.
/// Returns the deleted metadata record, or nil.
fn delete_script() -> String {
    format!(
        "{BLOB_PRELUDE}
local m = redis.call('HMGET', B .. ':m', 'm', 'd')
if not m[1] then return false end
if #ARGV > 0 and (m[1] ~= ARGV[1] or (m[2] and '1' or '0') ~= ARGV[2]) then return false end
drop_chunks()
redis.call('UNLINK', B .. ':m')
return m[1]
"
    )
}

/// Index entries: (field, value) pairs.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

struct Scripts {
    reserve: Lua,
    release: Lua,
    begin: Lua,
    put: Lua,
    complete: Lua,
    delete: Lua,
}

/// Blob storage on a Redis Cluster (see the module docs for the layout).
pub struct RedisBlobs {
    redis: Arc<Redis>,
    scripts: Scripts,
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Corrupt(what)
}

/// When Redis may drop a key of the blob written now.
fn backstop(meta: &BlobMeta) -> u64 {
    meta.expires_at
        .max(now_ms())
        .saturating_add(BACKSTOP_MS)
        .min(LATEST_AT)
}

/// An index entry: owner account ‖ declared size (u64 BE).
fn index_entry(meta: &BlobMeta) -> Vec<u8> {
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(&meta.account());
    v.extend_from_slice(&meta.size.to_be_bytes());
    v
}

fn parse_index_entry(v: &[u8]) -> Option<([u8; 32], u64)> {
    let (account, size) = v.split_first_chunk::<32>()?;
    let size: [u8; 8] = size.try_into().ok()?;
    Some((*account, u64::from_be_bytes(size)))
}

/// A cap as the reserve script takes it: empty for none (also for caps Lua's numbers cannot
/// hold exactly, which no real quota comes near).
fn cap_arg(cap: u64) -> Vec<u8> {
    if cap >= 1 << 53 {
        Vec::new()
    } else {
        cap.to_string().into_bytes()
    }
}

impl RedisBlobs {
    /// Blob storage on an open connection (shared with the mail store).
    pub fn on(redis: Arc<Redis>) -> Result<Self> {
        Ok(Self {
            redis,
            scripts: Scripts {
                reserve: Lua::new(RESERVE),
                release: Lua::new(RELEASE),
                begin: Lua::new(&begin_script()),
                put: Lua::new(PUT),
                complete: Lua::new(COMPLETE),
                delete: Lua::new(&delete_script()),
            },
        })
    }

    fn blob_key(&self, id: &[u8; 16]) -> String {
        self.redis.tagged(&format!("b:{}", hex::encode(id)))
    }

    fn account_key(&self, account: &[u8; 32]) -> String {
        format!(
            "{}:bb",
            self.redis.tagged(&format!("a:{}", hex::encode(account)))
        )
    }

    fn total_key(&self) -> String {
        format!("{}:bb", self.redis.tagged("g"))
    }

    fn index_key(&self, bucket: u8) -> String {
        self.redis.tagged(&format!("bi:{bucket}"))
    }

    fn index_of(&self, id: &[u8; 16]) -> String {
        self.index_key(id.first().copied().unwrap_or(0) % INDEX_BUCKETS)
    }

    /// Adds `size` to `counter` if it stays within `cap`; otherwise the counter's value.
    fn reserve(
        &self,
        counter: String,
        size: u64,
        cap: u64,
    ) -> Result<std::result::Result<(), u64>> {
        let v = self.redis.eval(
            &self.scripts.reserve,
            counter,
            vec![size.to_string().into_bytes(), cap_arg(cap)],
        )?;
        let a = array(v)?;
        let [ok, value] = a.as_slice() else {
            return Err(corrupt("blob counter"));
        };
        if uint(ok)? == 1 {
            Ok(Ok(()))
        } else {
            Ok(Err(uint(value)?))
        }
    }

    fn release(&self, counter: String, size: u64) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        self.redis.eval(
            &self.scripts.release,
            counter,
            vec![size.to_string().into_bytes()],
        )?;
        Ok(())
    }

    /// Gives a blob's declared size back to its account and to the relay.
    fn give_back(&self, account: &[u8; 32], size: u64) -> Result<()> {
        let a = self.release(self.account_key(account), size);
        let t = self.release(self.total_key(), size);
        a.and(t)
    }

    /// Removes the blob's index entry; whether this call removed it (and so owes the give-back).
    fn unindex(&self, id: &[u8; 16]) -> Result<bool> {
        let removed: i64 = self.redis.write(
            redis::cmd("HDEL")
                .arg(self.index_of(id))
                .arg(id.as_slice())
                .clone(),
        )?;
        Ok(removed == 1)
    }

    /// Deletes the blob (if it is still `expected`, when given) and gives its bytes back;
    /// whether it was deleted.
    fn remove(&self, id: &[u8; 16], expected: Option<(&BlobMeta, bool)>) -> Result<bool> {
        let args = match expected {
            Some((meta, complete)) => vec![
                encode_meta(meta, false),
                if complete {
                    b"1".to_vec()
                } else {
                    b"0".to_vec()
                },
            ],
            None => Vec::new(),
        };
        let gone = self
            .redis
            .eval(&self.scripts.delete, self.blob_key(id), args)?;
        if gone == Value::Nil {
            return Ok(false);
        }
        let record = bytes(gone)?;
        if self.unindex(id)? {
            let (meta, _) = decode_meta(&record)?;
            self.give_back(&meta.account(), meta.size)?;
        }
        Ok(true)
    }

    /// Sweeps the blob of one index entry.
    fn sweep_one(&self, id: [u8; 16], entry: &[u8], now: u64, stale: u64) -> Result<bool> {
        match self.meta(id)? {
            // Gone without a sweep (deleted, or dropped by its Redis expiry): settle the entry.
            None => {
                if self.unindex(&id)?
                    && let Some((account, size)) = parse_index_entry(entry)
                {
                    self.give_back(&account, size)?;
                }
                Ok(false)
            }
            Some((meta, complete)) if doomed(&meta, complete, now, stale) => {
                self.remove(&id, Some((&meta, complete)))
            }
            Some(_) => Ok(false),
        }
    }

    /// One `HSCAN` step of an index bucket: the next cursor and the (id, entry) pairs.
    fn scan(&self, key: &str, cursor: &str) -> Result<(String, Entries)> {
        let v: Value = self.redis.read(
            redis::cmd("HSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .clone(),
        )?;
        let mut it = array(v)?.into_iter();
        let (Some(next), Some(items), None) = (it.next(), it.next(), it.next()) else {
            return Err(corrupt("blob index scan"));
        };
        let next = String::from_utf8(bytes(next)?).map_err(|_| corrupt("blob index scan"))?;
        let mut pairs = Vec::new();
        let mut items = array(items)?.into_iter();
        while let Some(field) = items.next() {
            let value = items.next().ok_or(corrupt("blob index scan"))?;
            pairs.push((bytes(field)?, bytes(value)?));
        }
        Ok((next, pairs))
    }
}

impl BlobStore for RedisBlobs {
    fn begin_within(&self, id: [u8; 16], meta: BlobMeta, quota: Quota) -> Result<Begin> {
        let key = self.blob_key(&id);
        let exists: i64 = self
            .redis
            .read(redis::cmd("EXISTS").arg(format!("{key}:m")).clone())?;
        if exists == 1 {
            return Ok(Begin::IdTaken);
        }
        let account = meta.account();
        // A full node (OOM) refuses like a full relay, with nothing changed.
        let full = |e: StoreError| match e {
            StoreError::RelayFull => Ok(Begin::RelayFull),
            e => Err(e),
        };
        match self.reserve(self.account_key(&account), meta.size, quota.account_max) {
            Ok(Ok(())) => {}
            Ok(Err(stored)) => return Ok(Begin::AccountFull { stored }),
            Err(e) => return full(e),
        }
        match self.reserve(self.total_key(), meta.size, quota.total_max) {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                let _ = self.release(self.account_key(&account), meta.size);
                return Ok(Begin::RelayFull);
            }
            Err(e) => {
                let _ = self.release(self.account_key(&account), meta.size);
                return full(e);
            }
        }
        let created = self
            .redis
            .eval(
                &self.scripts.begin,
                key,
                vec![
                    encode_meta(&meta, false),
                    backstop(&meta).to_string().into_bytes(),
                ],
            )
            .and_then(|v| uint(&v));
        match created {
            Ok(1) => {}
            other => {
                let _ = self.give_back(&account, meta.size);
                return match other {
                    Ok(_) => Ok(Begin::IdTaken),
                    Err(e) => full(e),
                };
            }
        }
        let indexed: Result<i64> = self.redis.write(
            redis::cmd("HSET")
                .arg(self.index_of(&id))
                .arg(id.as_slice())
                .arg(index_entry(&meta))
                .clone(),
        );
        if let Err(e) = indexed {
            // Unindexed, nothing would give the bytes back: undo the blob too.
            let gone = self
                .redis
                .eval(&self.scripts.delete, self.blob_key(&id), Vec::new());
            if gone.is_ok_and(|v| v != Value::Nil) {
                let _ = self.give_back(&account, meta.size);
            }
            return full(e);
        }
        Ok(Begin::Started)
    }

    fn put_chunk(&self, id: [u8; 16], index: u32, chunk: &[u8]) -> Result<ChunkPut> {
        for _ in 0..ATTEMPTS {
            let Some((meta, complete)) = self.meta(id)? else {
                return Ok(ChunkPut::UnknownBlob);
            };
            if let Some(refused) = check_chunk(&meta, complete, index, chunk.len()) {
                return Ok(refused);
            }
            let answer = self.redis.eval(
                &self.scripts.put,
                self.blob_key(&id),
                vec![
                    encode_meta(&meta, false),
                    index.to_string().into_bytes(),
                    chunk.to_vec(),
                    backstop(&meta).to_string().into_bytes(),
                ],
            )?;
            match bytes(answer)?.as_slice() {
                b"S" => return Ok(ChunkPut::Stored),
                b"U" => return Ok(ChunkPut::UnknownBlob),
                b"C" => return Ok(ChunkPut::AlreadyComplete),
                b"X" => continue,
                _ => return Err(corrupt("blob chunk answer")),
            }
        }
        Err(StoreError::Backend(
            "redis: the blob was replaced while a chunk was stored".into(),
        ))
    }

    fn complete(&self, id: [u8; 16]) -> Result<bool> {
        for _ in 0..ATTEMPTS {
            let Some((meta, complete)) = self.meta(id)? else {
                return Ok(false);
            };
            if complete {
                return Ok(true);
            }
            let answer = self.redis.eval(
                &self.scripts.complete,
                self.blob_key(&id),
                vec![
                    encode_meta(&meta, false),
                    meta.chunk_count().to_string().into_bytes(),
                ],
            )?;
            match uint(&answer)? {
                0 => return Ok(false),
                1 => return Ok(true),
                2 => continue,
                _ => return Err(corrupt("blob completion answer")),
            }
        }
        Err(StoreError::Backend(
            "redis: the blob was replaced while it was completed".into(),
        ))
    }

    fn meta(&self, id: [u8; 16]) -> Result<Option<(BlobMeta, bool)>> {
        let key = format!("{}:m", self.blob_key(&id));
        let (record, done): (Option<Vec<u8>>, Option<Vec<u8>>) = self
            .redis
            .read(redis::cmd("HMGET").arg(key).arg("m").arg("d").clone())?;
        let Some(record) = record else {
            return Ok(None);
        };
        let (meta, _) = decode_meta(&record)?;
        let complete = match done.as_deref() {
            None => false,
            Some(b"1") => true,
            Some(_) => return Err(corrupt("blob_meta")),
        };
        Ok(Some((meta, complete)))
    }

    fn chunk(&self, id: [u8; 16], index: u32) -> Result<Option<Vec<u8>>> {
        let key = format!("{}:c:{index}", self.blob_key(&id));
        self.redis.read(redis::cmd("GET").arg(key).clone())
    }

    fn delete(&self, id: [u8; 16]) -> Result<bool> {
        self.remove(&id, None)
    }

    fn sweep(&self, now: u64, stale_incomplete_before: u64) -> Result<usize> {
        let mut swept = 0usize;
        for bucket in 0..INDEX_BUCKETS {
            let key = self.index_key(bucket);
            let mut cursor = String::from("0");
            loop {
                let (next, entries) = self.scan(&key, &cursor)?;
                for (field, entry) in entries {
                    // Not an id: not an entry this store wrote.
                    let Ok(id) = <[u8; 16]>::try_from(field.as_slice()) else {
                        continue;
                    };
                    if self.sweep_one(id, &entry, now, stale_incomplete_before)? {
                        swept = swept.saturating_add(1);
                    }
                }
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        Ok(swept)
    }

    fn total_bytes(&self) -> Result<u64> {
        let v: Option<i64> = self
            .redis
            .read(redis::cmd("GET").arg(self.total_key()).clone())?;
        Ok(u64::try_from(v.unwrap_or(0)).unwrap_or(0))
    }

    fn account_bytes(&self, account: &[u8; 32]) -> Result<u64> {
        let v: Option<i64> = self
            .redis
            .read(redis::cmd("GET").arg(self.account_key(account)).clone())?;
        Ok(u64::try_from(v.unwrap_or(0)).unwrap_or(0))
    }

    fn flush(&self) -> Result<()> {
        // Every write was confirmed by its replicas before it returned.
        Ok(())
    }
}
