//! The router of a relay node in a cluster: devices connected here are served by the local
//! router; the others are found through a presence registry in Redis and reached over sharded
//! pub/sub (docs/CLUSTER.md).
//!
//! - **Presence.** A device connected here has `<prefix>{a:<account>}:at:<device>` = this node's
//!   id, set when it registers (atomically reading the node it was on: that node is told to
//!   close its connection) with a time to live, renewed by a heartbeat while it stays, and
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

/// Sets presence to ARGV[1] for ARGV[2] ms if it is unset or already ours; returns 1, or 0 when
/// another node holds it.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Deletes presence if it still names ARGV[1].
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
        Live::Replaced => REPLACED,
        // Draining is a node's own business.
        Live::Drain => return None,
    };
    out.push(kind);
    out.extend_from_slice(&device.key());
    match event {
        Live::Ephemeral(e) => {
            out.extend_from_slice(&e.0.key());
            out.extend_from_slice(&e.1);
        }
        Live::PreKeysLow(x, k) => {
            out.extend_from_slice(&x.to_be_bytes());
            out.extend_from_slice(&k.to_be_bytes());
        }
        // prev ‖ seq ‖ sender (36) ‖ client id (16) ‖ received at ‖ body: the receiving node
        // sends it from memory when it directly follows what its connection sent.
        Live::Envelope(f) => {
            let e = &f.queued.envelope;
            out.extend_from_slice(&f.prev.to_be_bytes());
            out.extend_from_slice(&f.queued.seq.to_be_bytes());
            out.extend_from_slice(&e.sender.key());
            out.extend_from_slice(&e.client_id);
            out.extend_from_slice(&e.received_at.to_be_bytes());
            out.extend_from_slice(&e.body);
        }
        _ => {}
    }
    Some(out)
}

/// A published event back (`None` for anything malformed: dropped).
fn decode(bytes: &[u8]) -> Option<(DeviceId, Live)> {
    let (&kind, rest) = bytes.split_first()?;
    let (device, rest) = rest.split_at_checked(36)?;
    let device = DeviceId::from_key(device)?;
    let event = match kind {
        MAIL => Live::Mail,
        EPHEMERAL => {
            let (sender, body) = rest.split_at_checked(36)?;
            Live::Ephemeral(Box::new((DeviceId::from_key(sender)?, body.to_vec())))
        }
        PRE_KEYS_LOW => {
            let (x, k) = rest.split_at_checked(4)?;
            Live::PreKeysLow(
                u32::from_be_bytes(x.try_into().ok()?),
                u32::from_be_bytes(k.try_into().ok()?),
            )
        }
        REVOKED => Live::Revoked,
        REPLACED => Live::Replaced,
        ENVELOPE => {
            let (prev, rest) = rest.split_at_checked(8)?;
            let (seq, rest) = rest.split_at_checked(8)?;
            let (sender, rest) = rest.split_at_checked(36)?;
            let (client_id, rest) = rest.split_at_checked(16)?;
            let (at, body) = rest.split_at_checked(8)?;
            Live::Envelope(Box::new(super::Fresh {
                prev: u64::from_be_bytes(prev.try_into().ok()?),
                queued: crate::store::Queued {
                    seq: u64::from_be_bytes(seq.try_into().ok()?),
                    envelope: crate::store::Envelope {
                        recipient: device,
                        sender: DeviceId::from_key(sender)?,
                        client_id: client_id.try_into().ok()?,
                        body: body.to_vec(),
                        received_at: u64::from_be_bytes(at.try_into().ok()?),
                    },
                },
            }))
        }
        _ => return None,
    };
    Some((device, event))
}

/// The router of one node of a cluster.
pub struct RedisRouter {
    local: Arc<LocalRouter>,
    redis: Arc<Redis>,
    node: String,
    renew: crate::store::redis_store::Lua,
    leave: crate::store::redis_store::Lua,
}

impl RedisRouter {
    /// Joins the cluster as a new node: subscribes to this node's channel and starts the
    /// presence heartbeat (both on the Redis runtime, until `shutdown`).
    pub fn start(redis: Arc<Redis>, shutdown: CancellationToken) -> Result<Arc<Self>, String> {
        let node = hex::encode(rand::random::<[u8; 8]>());
        let router = Arc::new(Self {
            local: Arc::new(LocalRouter::new()),
            redis: Arc::clone(&redis),
            node,
            renew: crate::store::redis_store::Lua::new(RENEW),
            leave: crate::store::redis_store::Lua::new(LEAVE),
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
                        Some((device, event)) => {
                            self.local.deliver(&device, event);
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

    /// Renews the presence of every device connected here; a device another node has taken
    /// over (a takeover notice that did not arrive) is closed here.
    async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut c = self.redis.writer();
            for device in self.local.devices() {
                let ttl = PRESENCE_TTL.as_millis().to_string();
                let args = vec![self.node.clone().into_bytes(), ttl.into_bytes()];
                match crate::store::redis_store::eval(
                    &mut c,
                    self.renew.clone(),
                    self.presence_key(&device),
                    args,
                )
                .await
                {
                    Ok(Value::Int(0)) => {
                        self.local.deliver(&device, Live::Replaced);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
                }
            }
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
        let mut c = self.redis.reader();
        let sent = self.redis.run(async move {
            let at: Option<String> = redis::cmd("GET").arg(key).query_async(&mut c).await?;
            let Some(node) = at.filter(|n| *n != me) else {
                return Ok(0i64);
            };
            let channel = format!("{prefix}{{n:{node}}}");
            redis::cmd("SPUBLISH")
                .arg(channel)
                .arg(body)
                .query_async(&mut c)
                .await
        });
        match sent {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::warn!(error = %e, "cluster event not published");
                false
            }
        }
    }
}

impl Router for RedisRouter {
    fn register(&self, device: DeviceId, handle: Handle) -> Option<Handle> {
        let old = self.local.register(device, handle);
        let key = self.presence_key(&device);
        let node = self.node.clone();
        let ttl = PRESENCE_TTL.as_millis() as u64;
        let mut c = self.redis.writer();
        let before: Result<Option<String>, _> = self.redis.run(async move {
            redis::cmd("SET")
                .arg(key)
                .arg(node)
                .arg("PX")
                .arg(ttl)
                .arg("GET")
                .query_async(&mut c)
                .await
        });
        match before {
            Ok(Some(other)) if other != self.node => {
                // The device was on another node: that node closes its connection.
                let channel = self.channel(&other);
                if let Some(body) = encode(&device, &Live::Replaced) {
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
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "presence not recorded"),
        }
        old
    }

    fn unregister(&self, device: &DeviceId, conn_id: u64) {
        self.local.unregister(device, conn_id);
        if self.local.is_connected(device) {
            return;
        }
        let mut c = self.redis.writer();
        let lua = self.leave.clone();
        let key = self.presence_key(device);
        let args = vec![self.node.clone().into_bytes()];
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
                    sender: s,
                    client_id: [5; 16],
                    body: b"sealed".to_vec(),
                    received_at: 1_700_000_000_000,
                },
            },
        };
        for e in [
            Live::Mail,
            Live::Envelope(Box::new(fresh)),
            Live::Ephemeral(Box::new((s, b"typing".to_vec()))),
            Live::PreKeysLow(3, 70_000),
            Live::Revoked,
            Live::Replaced,
        ] {
            let bytes = encode(&d, &e).unwrap();
            let (got, back) = decode(&bytes).unwrap();
            assert_eq!(got, d);
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }
        assert!(encode(&d, &Live::Drain).is_none());
        assert!(decode(&[]).is_none());
        assert!(decode(&[EPHEMERAL; 40]).is_none());
        assert!(decode(&[99; 37]).is_none());
    }
}
