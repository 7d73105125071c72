//! The relay's handle on a Redis Cluster: multiplexed cluster connections (one for reads, and
//! [`WRITE_CONNECTIONS`] for writes, taken in turn, so that the `WAIT` that follows a write
//! holds up no read and few other writes) driven by a small tokio runtime of their own, and a
//! blocking bridge for the synchronous store traits.
//!
//! Durable writes: a write the relay may acknowledge is sent as a pipeline of the write and
//! `WAIT <replicas> <timeout>`, routed as one to the primary of the write's slot, on one
//! connection. `WAIT` then covers exactly that write on exactly the node that took it: had that
//! primary died and a replica taken over before the `WAIT` ran, the pipeline fails (or, resent
//! by the client, runs whole on the new primary) instead of a `WAIT` on the new primary
//! confirming a write it never saw.
//!
//! The store traits are synchronous: the writer's threads and the connection tasks call them
//! inline. A call here hands its future to the Redis runtime and waits on a plain channel for the
//! answer (on a runtime worker, inside `block_in_place`, so the worker's other tasks move on), so
//! it works from any thread; the Redis runtime's own tasks use the async API and never call
//! [`Redis::run`].

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Value};
use tokio::runtime::{Handle, Runtime};

use super::Lua;
use crate::store::{Result, StoreError};

/// How long opening a connection to one node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one command may take (above the longest `WAIT`).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for an answer at most, retries by the client included: past it the
/// call fails (and its thread is free again) even if Redis is unreachable.
const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// Connections for writes, taken in turn.
pub(super) const WRITE_CONNECTIONS: usize = 8;

/// Where the cluster is and how writes are made durable. Its `Debug` leaves out the node
/// addresses: they may carry a password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// Seed nodes (`host:port` or `redis://host:port`); the rest of the cluster is discovered.
    pub nodes: Vec<String>,
    /// Put before every key, so that several relays (or tests) can share one cluster.
    pub prefix: String,
    /// Replicas that must have a batch of writes before it is acknowledged (`WAIT n`); 0 for a
    /// cluster without replicas.
    pub wait_replicas: u32,
    /// How long `WAIT` may take before the batch is reported as not durable.
    pub wait_timeout_ms: u64,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("nodes", &self.nodes.len())
            .field("prefix", &self.prefix)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout_ms", &self.wait_timeout_ms)
            .finish()
    }
}

/// A connected cluster.
pub struct Redis {
    runtime: Option<Runtime>,
    handle: Handle,
    read: ClusterConnection,
    writes: Vec<ClusterConnection>,
    next_write: std::sync::atomic::AtomicUsize,
    options: RedisOptions,
}

/// A Redis error as a store error: a full node (`maxmemory` reached) is the relay being full.
pub(crate) fn backend(e: &redis::RedisError) -> StoreError {
    if e.code() == Some("OOM") {
        return StoreError::RelayFull;
    }
    StoreError::Backend(format!("redis: {e}"))
}

fn url(node: &str) -> String {
    if node.contains("://") {
        node.to_owned()
    } else {
        format!("redis://{node}")
    }
}

impl Redis {
    /// Connects to the cluster named by `options` (two connections, each to every primary).
    pub fn connect(options: RedisOptions) -> Result<Self> {
        if options.nodes.is_empty() {
            return Err(StoreError::Backend("no Redis nodes given".into()));
        }
        if options.prefix.contains(['{', '}']) {
            return Err(StoreError::Backend(
                "the Redis key prefix may not hold '{' or '}'".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hush-redis")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("redis runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let client = ClusterClient::builder(options.nodes.iter().map(|n| url(n)))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .build()
            .map_err(|e| backend(&e))?;
        let (read, writes) = wait(&handle, async move {
            let read = client.get_async_connection().await?;
            let mut writes = Vec::with_capacity(WRITE_CONNECTIONS);
            for _ in 0..WRITE_CONNECTIONS {
                writes.push(client.get_async_connection().await?);
            }
            Ok((read, writes))
        })?;
        Ok(Self {
            runtime: Some(runtime),
            handle,
            read,
            writes,
            next_write: std::sync::atomic::AtomicUsize::new(0),
            options,
        })
    }

    /// A client for a subscribing connection (RESP3): what the server pushes goes to `tx`.
    pub fn pubsub_client(
        &self,
        tx: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> redis::RedisResult<ClusterClient> {
        ClusterClient::builder(self.options.nodes.iter().map(|n| url(n)))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            .build()
    }

    /// The options it was opened with.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// The runtime that drives the connections (for tasks of the router).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// A clone of the read connection (cheap: it multiplexes).
    pub fn reader(&self) -> ClusterConnection {
        self.read.clone()
    }

    /// A clone of the next write connection.
    pub fn writer(&self) -> ClusterConnection {
        let i = self
            .next_write
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = self.writes.len().max(1);
        match self.writes.get(i % n) {
            Some(c) => c.clone(),
            None => self.read.clone(),
        }
    }

    /// `WAIT`'s arguments for a durable write, or `None` when no replica must confirm.
    fn wait_for(&self) -> Option<(u32, u64)> {
        (self.options.wait_replicas > 0)
            .then_some((self.options.wait_replicas, self.options.wait_timeout_ms))
    }

    /// Runs a script on the slot of `key`, durably (see the module docs).
    pub(crate) fn eval(&self, lua: &Lua, key: String, args: Vec<Vec<u8>>) -> Result<Value> {
        let (lua, wait) = (lua.clone(), self.wait_for());
        let mut c = self.writer();
        self.run(async move { eval_waiting(&mut c, lua, key, args, wait).await })
    }

    /// Runs a script whose effect may be lost in a failover (an acknowledgement, a sweep: at
    /// worst redone), without waiting for replicas.
    pub(crate) fn eval_plain(&self, lua: &Lua, key: String, args: Vec<Vec<u8>>) -> Result<Value> {
        let lua = lua.clone();
        let mut c = self.writer();
        self.run(async move { eval_waiting(&mut c, lua, key, args, None).await })
    }

    /// Runs a command on the read connection.
    pub fn read<T: FromRedisValue + Send + 'static>(&self, cmd: Cmd) -> Result<T> {
        let mut c = self.reader();
        self.run(async move { cmd.query_async(&mut c).await })
    }

    /// Runs a write command durably (see the module docs).
    pub fn write<T: FromRedisValue + Send + 'static>(&self, cmd: Cmd) -> Result<T> {
        let wait = self.wait_for();
        let mut c = self.writer();
        self.run(async move { waiting(&mut c, cmd, wait).await })
    }

    /// Runs a write command without waiting for replicas (counters, indexes).
    pub fn write_plain<T: FromRedisValue + Send + 'static>(&self, cmd: Cmd) -> Result<T> {
        let mut c = self.writer();
        self.run(async move { cmd.query_async(&mut c).await })
    }

    /// `<prefix>{<tag>}`: the start of every key of one slot.
    pub fn tagged(&self, tag: &str) -> String {
        format!("{}{{{tag}}}", self.options.prefix)
    }

    /// Runs `f` on the Redis runtime and waits for its answer.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        wait(&self.handle, f)
    }
}

fn wait<T, F>(handle: &Handle, f: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = redis::RedisResult<T>> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let task = handle.spawn(async move {
        let _ = tx.send(f.await);
    });
    let answer = || rx.recv_timeout(CALL_DEADLINE);
    // On a worker of a multi-threaded runtime (a connection's task), the wait is announced to
    // the runtime, which moves the worker's other tasks to another thread meanwhile: a slow or
    // unreachable cluster then holds up only the connections that asked it something.
    let answered = match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(answer)
        }
        _ => answer(),
    };
    match answered {
        Ok(r) => r.map_err(|e| backend(&e)),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            task.abort();
            Err(StoreError::Backend(format!(
                "redis: no answer within {} s",
                CALL_DEADLINE.as_secs()
            )))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(StoreError::Backend("redis: the runtime stopped".into()))
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which a tokio worker may not: let it wind down alone.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The error of a write that too few replicas confirmed in time (the client retries it).
fn unconfirmed(got: i64, want: u32, timeout: u64) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "write not confirmed by the replicas",
        format!("{got} of {want} replicas within {timeout} ms"),
    ))
}

/// Sends `cmd` followed by `WAIT` in one pipeline on one connection (so to the node that takes
/// the write), or alone without `wait`.
async fn waiting<T: FromRedisValue>(
    c: &mut ClusterConnection,
    cmd: Cmd,
    wait: Option<(u32, u64)>,
) -> redis::RedisResult<T> {
    let Some((want, timeout)) = wait else {
        return cmd.query_async(c).await;
    };
    let mut p = redis::pipe();
    p.add_command(cmd).add_command({
        let mut w = redis::cmd("WAIT");
        w.arg(want).arg(timeout);
        w
    });
    let (value, got): (T, i64) = p.query_async(c).await?;
    if got < i64::from(want) {
        return Err(unconfirmed(got, want, timeout));
    }
    Ok(value)
}

/// Runs `lua` on the slot of `key` by its SHA-1, and by its code when the node does not know it
/// yet (a fresh node, or a replica promoted since), followed by `WAIT` when asked.
pub(crate) async fn eval_waiting(
    c: &mut ClusterConnection,
    lua: Lua,
    key: String,
    args: Vec<Vec<u8>>,
    wait: Option<(u32, u64)>,
) -> redis::RedisResult<Value> {
    let command = |verb: &str, body: &str| {
        let mut cmd = redis::cmd(verb);
        cmd.arg(body).arg(1).arg(&key);
        for a in &args {
            cmd.arg(a.as_slice());
        }
        cmd
    };
    match waiting(c, command("EVALSHA", &lua.sha), wait).await {
        Err(e) if e.code() == Some("NOSCRIPT") => {
            waiting(c, command("EVAL", &lua.code), wait).await
        }
        r => r,
    }
}
