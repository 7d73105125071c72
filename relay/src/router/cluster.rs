//! The router of a relay node in a cluster: devices connected here are served by the local
//! router; the others are found through a presence registry in Redis and reached over sharded
//! pub/sub (docs/CLUSTER.md).
//!
//! - **Presence.** A device connected here has `<prefix>{a:<account>}:at:<device>` = this node's
//!   id and its connection's (`<node>/<connection>`), set when it registers (atomically reading
//!   the entry it replaces: the node named there is told to close that connection, and only
//!   that one) with a time to live, renewed by a heartbeat while it stays, and
//!   deleted when it leaves if it still names this node. A node that dies leaves entries that
//!   expire; its devices reconnect elsewhere and catch up from their mailboxes.
//! - **Events.** Each node subscribes to its own sharded channel `<prefix>{n:<node id>}`. An
//!   event for a device connected elsewhere is published there: a new envelope (sent from
//!   memory there when it directly follows what that connection sent, else read from the shared
//!   store in queue order), ephemerals, pre-keys low, revocation and takeover. A publish that reaches no subscriber (the node is gone) counts as
//!   not delivered, so the sender's side falls back to a push wake-up.
//!
//! Presence is set before a connection's first read of its mailbox, so mail queued after that
//! read is announced to the node it is on; an announcement lost anyway (a node's subscription
//! being re-established) costs latency only: the device reads its mailbox when it reconnects
//! and whenever it is woken.

use std::sync::Arc;
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Handle, Live, LocalRouter, Router};
use crate::store::DeviceId;
use crate::store::redis_store::Redis;

/// How long a presence entry lives without a heartbeat.
const PRESENCE_TTL: Duration = Duration::from_secs(30);
/// How often the entries of the devices connected here are renewed.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Renewals in flight at once during a heartbeat.
const HEARTBEAT_IN_FLIGHT: usize = 64;

/// Sets presence to ARGV[1] (`node/connection`) for ARGV[2] ms if it is unset or already that;
/// returns 1, or 0 when another connection holds it.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Deletes presence if it still names ARGV[1] (`node/connection`).
const LEAVE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
";

const MAIL: u8 = 1;
const EPHEMERAL: u8 = 2;
const PRE_KEYS_LOW: u8 = 3;
const REVOKED: u8 = 4;
const REPLACED: u8 = 5;
const ENVELOPE: u8 = 6;

/// An event as published: kind ‖ device (36) ‖ what the kind carries.
fn encode(device: &DeviceId, event: &Live) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(1 + 36 + 64);
    let kind = match event {
        Live::Mail => MAIL,
        Live::Envelope(_) => ENVELOPE,
        Live::Ephemeral(_) => EPHEMERAL,
        Live::PreKeysLow(..) => PRE_KEYS_LOW,
        Live::Revoked => REVOKED,
        // Draining is a node's own business; a takeover names the connection it replaces
        // (`replaced`).
        Live::Drain | Live::Replaced => return None,
    };
    out.push(kind);
    out.extend_from_slice(&device.key());
    match event {
        Live::Ephemeral(body) => out.extend_from_slice(body),
        Live::PreKeysLow(x, k) => {
            out.extend_from_slice(&x.to_be_bytes());
            out.extend_from_slice(&k.to_be_bytes());
        }
        // prev ‖ seq ‖ share label (36) ‖ client id (16) ‖ received at ‖ body: the receiving node
        // sends it from memory when it directly follows what its connection sent.
        Live::Envelope(f) => {
            let e = &f.queued.envelope;
            out.extend_from_slice(&f.prev.to_be_bytes());
            out.extend_from_slice(&f.queued.seq.to_be_bytes());
            out.extend_from_slice(&e.share.key());
            out.extend_from_slice(&e.client_id);
            out.extend_from_slice(&e.received_at.to_be_bytes());
            out.extend_from_slice(&e.body);
        }
        _ => {}
    }
    Some(out)
}

/// The takeover notice for connection `conn_id` of `device` (a node's own id for it).
fn replaced(device: &DeviceId, conn_id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 36 + 8);
    out.push(REPLACED);
    out.extend_from_slice(&device.key());
    out.extend_from_slice(&conn_id.to_be_bytes());
    out
}

/// What arrives on a node's channel.
#[derive(Debug)]
enum Incoming {
    /// An event for the device's connection here.
    Event(DeviceId, Live),
    /// The device connected elsewhere: its connection here (this id) closes.
    Replaced(DeviceId, u64),
}

/// A published event back (`None` for anything malformed: dropped).
fn decode(bytes: &[u8]) -> Option<Incoming> {
    let (&kind, rest) = bytes.split_first()?;
    let (device, rest) = rest.split_at_checked(36)?;
    let device = DeviceId::from_key(device)?;
    let event = match kind {
        MAIL => Live::Mail,
        EPHEMERAL => Live::Ephemeral(Box::new(rest.to_vec())),
        PRE_KEYS_LOW => {
            let (x, k) = rest.split_at_checked(4)?;
            Live::PreKeysLow(
                u32::from_be_bytes(x.try_into().ok()?),
                u32::from_be_bytes(k.try_into().ok()?),
            )
        }
        REVOKED => Live::Revoked,
        REPLACED => {
            return Some(Incoming::Replaced(
                device,
                u64::from_be_bytes(rest.try_into().ok()?),
            ));
        }
        ENVELOPE => {
            let (prev, rest) = rest.split_at_checked(8)?;
            let (seq, rest) = rest.split_at_checked(8)?;
            let (share, rest) = rest.split_at_checked(36)?;
            let (client_id, rest) = rest.split_at_checked(16)?;
            let (at, body) = rest.split_at_checked(8)?;
            Live::Envelope(Box::new(super::Fresh {
                prev: u64::from_be_bytes(prev.try_into().ok()?),
                queued: crate::store::Queued {
                    seq: u64::from_be_bytes(seq.try_into().ok()?),
                    envelope: crate::store::Envelope {
                        recipient: device,
                        share: DeviceId::from_key(share)?,
                        client_id: client_id.try_into().ok()?,
                        body: body.to_vec(),
                        received_at: u64::from_be_bytes(at.try_into().ok()?),
                    },
                },
            }))
        }
        _ => return None,
    };
    Some(Incoming::Event(device, event))
}

/// The count in an answer to `PUBSUB SHARDNUMSUB <one channel>` (a channel-count pair, as an
/// array or a map).
fn subscriber_count(v: &Value) -> Option<i64> {
    match v {
        Value::Array(a) => match a.as_slice() {
            [_, Value::Int(n)] => Some(*n),
            _ => None,
        },
        Value::Map(m) => match m.as_slice() {
            [(_, Value::Int(n))] => Some(*n),
            _ => None,
        },
        _ => None,
    }
}

/// A presence entry: `<node id>/<connection id>`.
fn presence(node: &str, conn_id: u64) -> String {
    format!("{node}/{conn_id}")
}

/// The node and connection of a presence entry.
fn parse_presence(v: &str) -> Option<(&str, u64)> {
    let (node, conn) = v.split_once('/')?;
    Some((node, conn.parse().ok()?))
}

/// Publishes `body` to the node the presence entry `key` names, unless that is `me` or none;
/// returns how many subscribers took it.
async fn publish_to_presence(
    mut c: redis::cluster_async::ClusterConnection,
    key: String,
    me: String,
    prefix: String,
    body: Vec<u8>,
) -> redis::RedisResult<i64> {
    let at: Option<String> = redis::cmd("GET").arg(key).query_async(&mut c).await?;
    let Some((node, _)) = at.as_deref().and_then(parse_presence) else {
        return Ok(0);
    };
    if node == me {
        return Ok(0);
    }
    redis::cmd("SPUBLISH")
        .arg(format!("{prefix}{{n:{node}}}"))
        .arg(body)
        .query_async(&mut c)
        .await
}

/// The router of one node of a cluster.
pub struct RedisRouter {
    local: Arc<LocalRouter>,
    redis: Arc<Redis>,
    node: String,
    renew: crate::store::redis_store::Lua,
    leave: crate::store::redis_store::Lua,
    /// Set by the heartbeat when this node's channel has no subscriber: subscribe again.
    resubscribe: tokio::sync::Notify,
    /// What wakes a device whose mail arrived here after its connection left (a push).
    wake: std::sync::OnceLock<Box<dyn Fn(DeviceId) + Send + Sync>>,
    /// Whether the cluster answered the last heartbeat.
    reachable: std::sync::atomic::AtomicBool,
    metrics: Arc<crate::ops::Metrics>,
}

impl RedisRouter {
    /// Joins the cluster as a new node: subscribes to this node's channel and starts the
    /// presence heartbeat (both on the Redis runtime, until `shutdown`).
    pub fn start(
        redis: Arc<Redis>,
        metrics: Arc<crate::ops::Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, String> {
        let node = hex::encode(rand::random::<[u8; 8]>());
        let router = Arc::new(Self {
            local: Arc::new(LocalRouter::new()),
            redis: Arc::clone(&redis),
            node,
            renew: crate::store::redis_store::Lua::new(RENEW),
            leave: crate::store::redis_store::Lua::new(LEAVE),
            resubscribe: tokio::sync::Notify::new(),
            wake: std::sync::OnceLock::new(),
            reachable: std::sync::atomic::AtomicBool::new(true),
            metrics,
        });
        let (tx, rx) = mpsc::unbounded_channel::<PushInfo>();
        let client = redis
            .pubsub_client(tx)
            .map_err(|e| format!("redis pub/sub: {e}"))?;
        let channel = router.channel(&router.node);
        let conn = redis
            .run(async move {
                let mut c = client.get_async_connection().await?;
                c.ssubscribe(&channel).await?;
                Ok(c)
            })
            .map_err(|e| format!("redis subscribe: {e}"))?;
        let me = Arc::clone(&router);
        let stop = shutdown.clone();
        redis
            .handle()
            .spawn(async move { me.listen(conn, rx, stop).await });
        let me = Arc::clone(&router);
        redis
            .handle()
            .spawn(async move { me.heartbeat(shutdown).await });
        tracing::info!(node = %router.node, "joined the cluster");
        Ok(router)
    }

    /// Sets what wakes a device (a push) when mail announced to this node finds its connection
    /// gone. Set once; later calls change nothing.
    pub fn on_undelivered(&self, wake: impl Fn(DeviceId) + Send + Sync + 'static) {
        let _ = self.wake.set(Box::new(wake));
    }

    /// Closes the connection `conn_id` of `device` here, which another node took over, and
    /// wakes the device where it is now: mail handed to the closing connection meanwhile is
    /// read there from the store.
    async fn replaced_here(&self, device: DeviceId, conn_id: u64) {
        let Some(old) = self.local.take_conn(&device, conn_id) else {
            return;
        };
        self.metrics.cluster_takeovers.inc();
        old.send(Live::Replaced);
        if let Some(body) = encode(&device, &Live::Mail) {
            let c = self.redis.reader();
            let key = self.presence_key(&device);
            let prefix = self.redis.options().prefix.clone();
            if let Err(e) = publish_to_presence(c, key, self.node.clone(), prefix, body).await {
                tracing::warn!(error = %e, "moved device not woken");
            }
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn channel(&self, node: &str) -> String {
        self.redis.tagged(&format!("n:{node}"))
    }

    fn presence_key(&self, device: &DeviceId) -> String {
        format!(
            "{}:at:{}",
            self.redis
                .tagged(&format!("a:{}", hex::encode(device.account))),
            device.device
        )
    }

    /// Hands what arrives on this node's channel to the local connections.
    async fn listen(
        self: Arc<Self>,
        mut conn: redis::cluster_async::ClusterConnection,
        mut rx: mpsc::UnboundedReceiver<PushInfo>,
        stop: CancellationToken,
    ) {
        let channel = self.channel(&self.node);
        loop {
            let push = tokio::select! {
                () = stop.cancelled() => return,
                () = self.resubscribe.notified() => {
                    if let Err(e) = conn.ssubscribe(&channel).await {
                        tracing::error!(error = %e, "cannot subscribe again to this node's channel");
                    }
                    continue;
                }
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
            };
            match push.kind {
                PushKind::SMessage => {
                    let Some(Value::BulkString(body)) = push.data.get(1) else {
                        continue;
                    };
                    match decode(body) {
                        Some(Incoming::Event(device, event)) => {
                            let mail = matches!(event, Live::Mail | Live::Envelope(_));
                            if !self.local.deliver(&device, event)
                                && mail
                                && let Some(wake) = self.wake.get()
                            {
                                // The device left this node since: a push wakes it.
                                wake(device);
                            }
                        }
                        Some(Incoming::Replaced(device, conn_id)) => {
                            self.replaced_here(device, conn_id).await;
                        }
                        None => tracing::warn!("malformed cluster event dropped"),
                    }
                }
                // The slot of this node's channel moved: subscribe again where it is now.
                PushKind::SUnsubscribe => {
                    if let Err(e) = conn.ssubscribe(&channel).await {
                        tracing::error!(error = %e, "cannot subscribe again to this node's channel");
                    }
                }
                _ => {}
            }
        }
    }

    /// Renews the presence of every device connected here (a device another node has taken
    /// over, whose takeover notice did not arrive, is closed here), and checks that this node's
    /// channel still has its subscriber (a subscription lost without a notice is made again) and
    /// that the cluster answers (else the node reports itself unhealthy).
    async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut renewals = tokio::task::JoinSet::new();
            for (device, conn_id) in self.local.devices() {
                while renewals.len() >= HEARTBEAT_IN_FLIGHT {
                    renewals.join_next().await;
                }
                let me = Arc::clone(&self);
                renewals.spawn(async move { me.renew(device, conn_id).await });
            }
            while renewals.join_next().await.is_some() {}
            let mut c = self.redis.reader();
            // Asked of every node and summed by the client.
            let subscribers: redis::RedisResult<Value> = redis::cmd("PUBSUB")
                .arg("SHARDNUMSUB")
                .arg(self.channel(&self.node))
                .query_async(&mut c)
                .await;
            self.reachable
                .store(subscribers.is_ok(), std::sync::atomic::Ordering::Relaxed);
            match subscribers.as_ref().map(subscriber_count) {
                Ok(Some(0)) => {
                    tracing::warn!("this node's channel lost its subscription: subscribing again");
                    self.resubscribe.notify_one();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "the cluster does not answer"),
            }
        }
    }

    async fn renew(&self, device: DeviceId, conn_id: u64) {
        let mut c = self.redis.writer();
        let args = vec![
            presence(&self.node, conn_id).into_bytes(),
            PRESENCE_TTL.as_millis().to_string().into_bytes(),
        ];
        let renewed = crate::store::redis_store::eval(
            &mut c,
            self.renew.clone(),
            self.presence_key(&device),
            args,
        )
        .await;
        match renewed {
            Ok(Value::Int(0)) => {
                self.local.deliver_to_conn(&device, conn_id, Live::Replaced);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
        }
    }

    /// Publishes `event` to the node `device` is on; false if it is on none (or on a node that
    /// is gone).
    fn publish(&self, device: &DeviceId, event: &Live) -> bool {
        let Some(body) = encode(device, event) else {
            return false;
        };
        let key = self.presence_key(device);
        let me = self.node.clone();
        let prefix = self.redis.options().prefix.clone();
        let c = self.redis.reader();
        let sent = self
            .redis
            .run(async move { publish_to_presence(c, key, me, prefix, body).await });
        match sent {
            Ok(n) if n > 0 => {
                self.metrics.cluster_events_published.inc();
                true
            }
            Ok(_) => {
                self.metrics.cluster_events_unrouted.inc();
                false
            }
            Err(e) => {
                self.metrics.cluster_events_unrouted.inc();
                tracing::warn!(error = %e, "cluster event not published");
                false
            }
        }
    }
}

impl Router for RedisRouter {
    fn register(&self, device: DeviceId, handle: Handle) -> Option<Handle> {
        let conn_id = handle.conn_id;
        let key = self.presence_key(&device);
        let value = presence(&self.node, conn_id);
        let ttl = PRESENCE_TTL.as_millis() as u64;
        let mut c = self.redis.writer();
        let before: Result<Option<String>, _> = self.redis.run(async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl)
                .arg("GET")
                .query_async(&mut c)
                .await
        });
        // Registered here only once presence names it, so that a heartbeat running meanwhile
        // cannot take the entry it replaces for a takeover of this connection; and before the
        // other node is told of the takeover, so that what it sends the device on hearing of it
        // (a wake-up for mail its closing connection left unread) finds the device here.
        let local = self.local.register(device, handle);
        match before {
            Ok(Some(prev)) => {
                if let Some((node, prev_conn)) = parse_presence(&prev)
                    && node != self.node
                {
                    // The device was on another node: that node closes that connection (and
                    // only that one, should the device have come back to it since).
                    let channel = self.channel(node);
                    let body = replaced(&device, prev_conn);
                    let mut c = self.redis.writer();
                    let _ = self.redis.run(async move {
                        redis::cmd("SPUBLISH")
                            .arg(channel)
                            .arg(body)
                            .query_async::<i64>(&mut c)
                            .await
                    });
                }
            }
            Ok(None) => {}
            // Unrecorded, an entry of another node may stand: the next heartbeat then closes
            // this connection, and the device's reconnection tries again.
            Err(e) => tracing::warn!(error = %e, "presence not recorded"),
        }
        local
    }

    fn unregister(&self, device: &DeviceId, conn_id: u64) {
        self.local.unregister(device, conn_id);
        // Cleared only if it still names this connection.
        let mut c = self.redis.writer();
        let lua = self.leave.clone();
        let key = self.presence_key(device);
        let args = vec![presence(&self.node, conn_id).into_bytes()];
        if let Err(e) = self
            .redis
            .run(async move { crate::store::redis_store::eval(&mut c, lua, key, args).await })
        {
            tracing::warn!(error = %e, "presence not cleared");
        }
    }

    fn deliver(&self, device: &DeviceId, event: Live) -> bool {
        if self.local.is_connected(device) {
            return self.local.deliver(device, event);
        }
        self.publish(device, &event)
    }

    fn is_connected(&self, device: &DeviceId) -> bool {
        self.local.is_connected(device)
    }

    fn broadcast(&self, event: Live) -> usize {
        self.local.broadcast(event)
    }

    fn connected(&self) -> usize {
        self.local.connected()
    }

    fn healthy(&self) -> bool {
        self.reachable.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_garbage_is_dropped() {
        let d = DeviceId {
            account: [3; 32],
            device: 9,
        };
        let s = DeviceId {
            account: [4; 32],
            device: 1,
        };
        let fresh = super::super::Fresh {
            prev: 41,
            queued: crate::store::Queued {
                seq: 42,
                envelope: crate::store::Envelope {
                    recipient: d,
                    share: s,
                    client_id: [5; 16],
                    body: b"sealed".to_vec(),
                    received_at: 1_700_000_000_000,
                },
            },
        };
        for e in [
            Live::Mail,
            Live::Envelope(Box::new(fresh)),
            Live::Ephemeral(Box::new(b"typing".to_vec())),
            Live::PreKeysLow(3, 70_000),
            Live::Revoked,
        ] {
            let bytes = encode(&d, &e).unwrap();
            let Some(Incoming::Event(got, back)) = decode(&bytes) else {
                panic!("not an event")
            };
            assert_eq!(got, d);
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }
        let Some(Incoming::Replaced(got, conn)) = decode(&replaced(&d, 77)) else {
            panic!("not a takeover")
        };
        assert_eq!((got, conn), (d, 77));
        assert!(encode(&d, &Live::Drain).is_none());
        assert!(encode(&d, &Live::Replaced).is_none());
        assert_eq!(parse_presence(&presence("ab12", 9)), Some(("ab12", 9)));
        assert_eq!(parse_presence("ab12"), None);
        let pair = |n| Value::Array(vec![Value::BulkString(b"ch".to_vec()), Value::Int(n)]);
        assert_eq!(subscriber_count(&pair(0)), Some(0));
        assert_eq!(
            subscriber_count(&Value::Map(vec![(
                Value::BulkString(b"ch".to_vec()),
                Value::Int(2)
            )])),
            Some(2)
        );
        assert_eq!(subscriber_count(&Value::Nil), None);
        assert!(decode(&[]).is_none());
        assert!(decode(&[EPHEMERAL; 30]).is_none());
        assert!(decode(&[99; 37]).is_none());
    }

    /// Two nodes on the test cluster (one key prefix): an event published for a device on the
    /// other node arrives there, a takeover closes exactly the replaced connection, and each
    /// node's channel has its subscriber.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_reach_each_others_devices_and_a_takeover_closes_the_old_connection() {
        use crate::router::{Handle, Pending, ToConn};
        use std::time::Duration;
        let options = crate::store::redis_store::tests::test_options();
        let stop = CancellationToken::new();
        let metrics = Arc::new(crate::ops::Metrics::new());
        let a = RedisRouter::start(
            Arc::new(Redis::connect(options.clone()).unwrap()),
            Arc::clone(&metrics),
            stop.clone(),
        )
        .unwrap();
        let b = RedisRouter::start(
            Arc::new(Redis::connect(options).unwrap()),
            Arc::clone(&metrics),
            stop.clone(),
        )
        .unwrap();
        let d = DeviceId {
            account: [8; 32],
            device: 1,
        };
        let handle = |conn_id| {
            let (tx, rx) = mpsc::unbounded_channel();
            let h = Handle {
                conn_id,
                tx,
                pending: Arc::new(Pending::default()),
            };
            (h, rx)
        };
        let next = |rx: &mut mpsc::UnboundedReceiver<ToConn>| {
            let got = rx.try_recv();
            got.ok()
        };
        let (h, mut on_a) = handle(1);
        assert!(a.register(d, h).is_none());
        // Published through B, arrives at A's connection.
        assert!(b.deliver(&d, Live::PreKeysLow(1, 2)));
        let got = tokio::time::timeout(Duration::from_secs(10), on_a.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(got, ToConn::Live(Live::PreKeysLow(1, 2))),
            "{got:?}"
        );
        // A device nowhere: not delivered (the caller falls back to a push wake-up).
        let nowhere = DeviceId {
            account: [9; 32],
            device: 1,
        };
        assert!(!b.deliver(&nowhere, Live::Mail));
        assert_eq!(metrics.cluster_events_published.get(), 1);
        assert_eq!(metrics.cluster_events_unrouted.get(), 1);
        // The device moves to B: A's connection is told to close.
        let (h, mut on_b) = handle(2);
        assert!(b.register(d, h).is_none());
        let got = tokio::time::timeout(Duration::from_secs(10), on_a.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(got, ToConn::Live(Live::Replaced)), "{got:?}");
        assert_eq!(metrics.cluster_takeovers.get(), 1);
        a.unregister(&d, 1);
        // A wakes the device where it is now (mail handed to the closing connection is read
        // there), and its old connection leaving does not clear the new presence: A reaches
        // it on B.
        let got = tokio::time::timeout(Duration::from_secs(10), on_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(got, ToConn::Live(Live::Mail)), "{got:?}");
        assert!(a.deliver(&d, Live::Revoked));
        let got = tokio::time::timeout(Duration::from_secs(10), on_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(got, ToConn::Live(Live::Revoked)), "{got:?}");
        assert!(next(&mut on_b).is_none());
        // Both channels have their subscriber.
        for r in [&a, &b] {
            let mut c = r.redis.reader();
            let channel = r.channel(r.node());
            let n = r
                .redis
                .run(async move {
                    redis::cmd("PUBSUB")
                        .arg("SHARDNUMSUB")
                        .arg(channel)
                        .query_async::<Value>(&mut c)
                        .await
                })
                .unwrap();
            assert_eq!(subscriber_count(&n), Some(1));
        }
        stop.cancel();
    }
}
