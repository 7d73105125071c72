//! Relay storage on a Redis Cluster, so that several relay nodes serve one set of accounts
//! (docs/CLUSTER.md). Every key of an account (its device list, its devices' pre-keys, push
//! endpoints and mailboxes, its username) carries the account's hash tag, so each atomic step
//! is one Lua script on one slot ([`scripts`]); a username's own key carries the name's tag.
//!
//! Across slots nothing is atomic, and the guarantees of [`crate::store`] are kept this way:
//! - a send to one account (what the relay does) is planned and written by one script: the
//!   caps, the idempotent send ids and the sequence numbers are exact; a send to several accounts
//!   is planned first on each and then written account by account (a crash or error in between
//!   keeps what was written, as the store contract allows; the retry finds it by its ids; and an
//!   account filled by another node between the plan and the write can still refuse its part
//!   after earlier accounts were written);
//! - the relay-wide byte total is one counter updated after each change, and the cap is checked
//!   against the value this node saw last: across nodes it is approximate;
//! - a username is bound by one script on the name's slot (of concurrent claims one wins), then
//!   recorded under the account, then the account's previous name is freed.
//!
//! - a group log's keys carry the slot's own hash tag (`{gl:<hex slot>}`), so an append (write
//!   check, number, caps) is one script on one slot: of concurrent appends of one number through
//!   any nodes exactly one wins. The relay-wide total of group log bytes is one counter, checked
//!   as this node last read it (approximate across nodes, as the mailbox total).
//!
//! Durability: with `appendfsync always` a primary has a write on disk before it answers it, and
//! every write the relay may acknowledge is followed by `WAIT` on the same connection to the
//! same node (see [`client`]), so it is on the configured number of replicas before the store
//! call returns; [`MailboxStore::flush`] only sends this node's count of queued bytes.

mod accounts;
mod client;
mod group_log;
mod mailbox;
mod scripts;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use redis::cluster_async::ClusterConnection;
use redis::{Script, Value};

pub use self::client::{Redis, RedisOptions};
use super::{DeviceId, Envelope, Queued, Result, StoreError};

/// Envelopes one script of the TTL sweep looks at, at most (a script holds its shard while it
/// runs).
const SWEEP_PAGE: usize = 256;
/// Buckets of the index of accounts that have mail (for the TTL sweep), spread over slots.
const MAIL_INDEX_BUCKETS: u8 = 16;
/// Length of the decimal sequence number and time at the start of a queued member.
const NUMBER_LEN: usize = 20;
/// Bytes of a member before the body: sequence number, received at, sender, client id.
const MEMBER_HEAD: usize = NUMBER_LEN * 2 + 32 + 4 + 16;

/// A script: its code, and its SHA-1 (what `EVALSHA` names it by).
#[derive(Clone)]
pub(crate) struct Lua {
    code: Arc<str>,
    sha: Arc<str>,
}

impl Lua {
    pub(crate) fn new(code: &str) -> Self {
        Self {
            sha: Script::new(code).get_hash().into(),
            code: code.into(),
        }
    }
}

struct Scripts {
    enqueue: Lua,
    ack: Lua,
    sweep: Lua,
    purge: Lua,
    publish: Lua,
    claim: Lua,
    create_account: Lua,
    put_list: Lua,
    claim_name: Lua,
    drop_name: Lua,
    log_append: Lua,
    log_read: Lua,
}

/// Runs `lua` on the slot of `key` (no `WAIT`): for the router's own scripts.
pub(crate) async fn eval(
    c: &mut ClusterConnection,
    lua: Lua,
    key: String,
    args: Vec<Vec<u8>>,
) -> redis::RedisResult<Value> {
    client::eval_waiting(c, lua, key, args, None).await
}

/// Relay storage on a Redis Cluster.
pub struct RedisStore {
    redis: Arc<Redis>,
    scripts: Arc<Scripts>,
    /// The relay-wide mailbox bytes as last read back from the cluster.
    total: AtomicU64,
    /// Bytes this node added (or removed) since: sent with the next flush.
    pending: AtomicI64,
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Corrupt(what)
}

fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(corrupt("redis number")),
        _ => Err(corrupt("redis number")),
    }
}

pub(crate) fn uint(v: &Value) -> Result<u64> {
    u64::try_from(int(v)?).map_err(|_| corrupt("redis number"))
}

pub(crate) fn bytes(v: Value) -> Result<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        _ => Err(corrupt("redis string")),
    }
}

pub(crate) fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        _ => Err(corrupt("redis array")),
    }
}

fn decimal(n: u64) -> String {
    n.to_string()
}

/// The sorted-set member of a queued envelope, without its sequence number (the script puts it
/// in front): received at ‖ sender account ‖ sender device ‖ client id ‖ body.
fn record(e: &Envelope) -> Vec<u8> {
    let mut r = Vec::with_capacity(MEMBER_HEAD - NUMBER_LEN + e.body.len());
    r.extend_from_slice(format!("{:020}", e.received_at).as_bytes());
    r.extend_from_slice(&e.share.account);
    r.extend_from_slice(&e.share.device.to_be_bytes());
    r.extend_from_slice(&e.client_id);
    r.extend_from_slice(&e.body);
    r
}

fn number(b: &[u8]) -> Result<u64> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(corrupt("queued envelope"))
}

/// A queued member back into an envelope for `recipient`.
fn queued(recipient: DeviceId, m: &[u8]) -> Result<Queued> {
    let bad = || corrupt("queued envelope");
    let (seq, rest) = m.split_at_checked(NUMBER_LEN).ok_or_else(bad)?;
    let (at, rest) = rest.split_at_checked(NUMBER_LEN).ok_or_else(bad)?;
    let (account, rest) = rest.split_at_checked(32).ok_or_else(bad)?;
    let (device, rest) = rest.split_at_checked(4).ok_or_else(bad)?;
    let (client_id, body) = rest.split_at_checked(16).ok_or_else(bad)?;
    Ok(Queued {
        seq: number(seq)?,
        envelope: Envelope {
            recipient,
            share: DeviceId {
                account: account.try_into().map_err(|_| bad())?,
                device: u32::from_be_bytes(device.try_into().map_err(|_| bad())?),
            },
            client_id: client_id.try_into().map_err(|_| bad())?,
            body: body.to_vec(),
            received_at: number(at)?,
        },
    })
}

/// What one account's enqueue script answered.
struct Planned {
    status: String,
    detail: Value,
    entries: Vec<(String, u64, u64, u64)>,
}

fn planned(v: Value) -> Result<Planned> {
    let mut it = array(v)?.into_iter();
    let status = String::from_utf8(bytes(it.next().ok_or(corrupt("enqueue answer"))?)?)
        .map_err(|_| corrupt("enqueue answer"))?;
    let detail = it.next().unwrap_or(Value::Nil);
    let rest: Vec<Value> = it.collect();
    let mut entries = Vec::with_capacity(rest.len() / 4);
    for c in rest.chunks(4) {
        let [kind, seq, at, prev] = c else {
            return Err(corrupt("enqueue answer"));
        };
        let kind = String::from_utf8(bytes(kind.clone())?).map_err(|_| corrupt("enqueue"))?;
        entries.push((kind, uint(seq)?, uint(at)?, uint(prev)?));
    }
    Ok(Planned {
        status,
        detail,
        entries,
    })
}

impl RedisStore {
    /// Connects to the cluster and reads the relay-wide mailbox total.
    pub fn open(options: RedisOptions) -> Result<Self> {
        Self::on(Arc::new(Redis::connect(options)?))
    }

    /// A store on an open connection (shared with the router).
    pub fn on(redis: Arc<Redis>) -> Result<Self> {
        let scripts = Scripts {
            enqueue: Lua::new(scripts::ENQUEUE),
            ack: Lua::new(&scripts::ack()),
            sweep: Lua::new(&scripts::sweep_page()),
            purge: Lua::new(&scripts::purge()),
            publish: Lua::new(scripts::PUBLISH_PRE_KEYS),
            claim: Lua::new(scripts::CLAIM_PRE_KEYS),
            create_account: Lua::new(scripts::CREATE_ACCOUNT),
            put_list: Lua::new(&scripts::put_device_list()),
            claim_name: Lua::new(scripts::CLAIM_NAME),
            drop_name: Lua::new(scripts::DROP_NAME),
            log_append: Lua::new(scripts::GROUP_LOG_APPEND),
            log_read: Lua::new(scripts::GROUP_LOG_READ),
        };
        let store = Self {
            redis,
            scripts: Arc::new(scripts),
            total: AtomicU64::new(0),
            pending: AtomicI64::new(0),
        };
        let total: Option<i64> = store
            .redis
            .read(redis::cmd("GET").arg(store.total_key()).clone())?;
        store.set_total(total.unwrap_or(0));
        Ok(store)
    }

    /// The connection (for the router and the blob store).
    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    fn account_key(&self, account: &[u8; 32]) -> String {
        self.redis.tagged(&format!("a:{}", hex::encode(account)))
    }

    fn name_key(&self, name: &str) -> String {
        self.redis.tagged(&format!("u:{}", hex::encode(name)))
    }

    fn total_key(&self) -> String {
        format!("{}:mb", self.redis.tagged("g"))
    }

    fn index_key(&self, account: &[u8; 32]) -> String {
        let bucket = account.first().copied().unwrap_or(0) % MAIL_INDEX_BUCKETS;
        self.redis.tagged(&format!("qi:{bucket}"))
    }

    fn set_total(&self, total: i64) {
        self.total
            .store(u64::try_from(total).unwrap_or(0), Ordering::Relaxed);
    }
}
