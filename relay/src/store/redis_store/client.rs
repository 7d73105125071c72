//! The relay's handle on a Redis Cluster: two multiplexed cluster connections (one for reads,
//! one for writes, so that a `WAIT` after a batch of writes holds up no read) driven by a small
//! tokio runtime of their own, and a blocking bridge for the synchronous store traits.
//!
//! The store traits are synchronous: the writer's threads and the connection tasks call them
//! inline. A call here hands its future to the Redis runtime and waits on a plain channel for the
//! answer, so it works from any thread (a tokio worker of the relay's runtime included) except a
//! thread of the Redis runtime itself, which only runs futures and never calls [`Redis::run`].

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::runtime::{Handle, Runtime};

use crate::store::{Result, StoreError};

/// How long opening a connection to one node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one command may take (above the longest `WAIT`).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the cluster is and how writes are made durable.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// A connected cluster.
pub struct Redis {
    runtime: Option<Runtime>,
    handle: Handle,
    read: ClusterConnection,
    write: ClusterConnection,
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
        let (read, write) = wait(&handle, async move {
            let read = client.get_async_connection().await?;
            let write = client.get_async_connection().await?;
            Ok((read, write))
        })?;
        Ok(Self {
            runtime: Some(runtime),
            handle,
            read,
            write,
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

    /// A clone of the write connection.
    pub fn writer(&self) -> ClusterConnection {
        self.write.clone()
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

    /// Makes every write sent so far on the write connection durable on `wait_replicas`
    /// replicas of each primary (nothing to do without replicas: with `appendfsync always` a
    /// primary has a write on disk before it answers it).
    pub fn sync_replicas(&self) -> Result<()> {
        let want = self.options.wait_replicas;
        if want == 0 {
            return Ok(());
        }
        let mut c = self.writer();
        let timeout = self.options.wait_timeout_ms;
        let got: i64 = self.run(async move {
            redis::cmd("WAIT")
                .arg(want)
                .arg(timeout)
                .query_async(&mut c)
                .await
        })?;
        if got < i64::from(want) {
            return Err(StoreError::Backend(format!(
                "redis: {got} of {want} replicas confirmed the writes within {timeout} ms"
            )));
        }
        Ok(())
    }
}

fn wait<T, F>(handle: &Handle, f: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = redis::RedisResult<T>> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(f.await);
    });
    match rx.recv() {
        Ok(r) => r.map_err(|e| backend(&e)),
        Err(_) => Err(StoreError::Backend("redis: the runtime stopped".into())),
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
