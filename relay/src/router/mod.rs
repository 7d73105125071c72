//! Routing to connected devices: which devices have a live connection here, and handing them
//! what must reach them now. Behind a small trait so that a clustered backend (devices connected
//! to other relay nodes, found through a shared registry) can sit next to the local one.

pub mod cluster;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use hush_proto::relay_api::server_frame;
use tokio::sync::mpsc;

use crate::conn::Refusal;
use crate::limits;
use crate::store::{DeviceId, Queued};

/// An envelope just written to a device's queue, handed to its connection before it is flushed.
#[derive(Debug)]
pub struct Fresh {
    /// The sequence number given before it in the same queue (0 if none since the store opened):
    /// a connection that has sent exactly up to `prev` can send this one without reading the
    /// store.
    pub prev: u64,
    /// The envelope and its sequence number.
    pub queued: Queued,
}

/// What a connection is told.
#[derive(Debug)]
pub enum Live {
    /// New mail is in the device's queue: read it from the store, in queue order, after what was
    /// already sent (also the fallback when live envelopes could not be queued).
    Mail,
    /// A new envelope (see [`Fresh`]).
    Envelope(Box<Fresh>),
    /// An ephemeral envelope (typing, presence; sealed, so its sender is not known here):
    /// delivered if connected, never stored.
    Ephemeral(Box<Vec<u8>>),
    /// The device's one-time pre-keys are running low: (X25519 left, ML-KEM left).
    PreKeysLow(u32, u32),
    /// The device was removed from its account's list: close.
    Revoked,
    /// The relay is draining: tell the client to reconnect, then close.
    Drain,
    /// Another connection of the same device took over.
    Replaced,
}

/// Everything that reaches a connection's task, in one queue.
#[derive(Debug)]
pub enum ToConn {
    /// An event from the router.
    Live(Live),
    /// The store writer applied the request with this id (requests after it may now be handled).
    Applied(u64),
    /// The answer to the request with this id (durable if it wrote anything).
    Answer(u64, Result<server_frame::Kind, Refusal>),
}

/// What a connection and the routers share about its queue.
#[derive(Debug, Default)]
pub struct Pending {
    /// Lossy events (envelopes, ephemeral, pre-key notices) queued and not yet taken.
    events: AtomicUsize,
    /// A `Live::Mail` wake is queued and not yet taken.
    woken: AtomicBool,
}

impl Pending {
    /// The connection took a lossy event.
    pub fn took_event(&self) {
        self.events.fetch_sub(1, Ordering::AcqRel);
    }

    /// The connection took the mail wake.
    pub fn took_wake(&self) {
        self.woken.store(false, Ordering::Release);
    }
}

/// A connection's inbox, as registered with the router.
#[derive(Clone, Debug)]
pub struct Handle {
    /// Unique per connection, so an old connection's unregister cannot remove a newer one.
    pub conn_id: u64,
    /// The connection's queue.
    pub tx: mpsc::UnboundedSender<ToConn>,
    /// Bounds on what waits in it.
    pub pending: Arc<Pending>,
}

impl Handle {
    /// Hands `event` to the connection. Control events always go; at most
    /// [`limits::CONNECTION_EVENTS`] lossy ones wait at once: past that an envelope turns into a
    /// single mail wake (the connection reads it from the store later) and an ephemeral one is
    /// dropped. False if the connection is gone.
    pub fn send(&self, event: Live) -> bool {
        match event {
            Live::Envelope(_) | Live::Ephemeral(_) | Live::PreKeysLow(..) => {
                if self.pending.events.fetch_add(1, Ordering::AcqRel) >= limits::CONNECTION_EVENTS {
                    self.pending.events.fetch_sub(1, Ordering::AcqRel);
                    return match event {
                        Live::Envelope(_) => self.wake(),
                        _ => false,
                    };
                }
                let sent = self.tx.send(ToConn::Live(event)).is_ok();
                if !sent {
                    self.pending.events.fetch_sub(1, Ordering::AcqRel);
                }
                sent
            }
            Live::Mail => self.wake(),
            Live::Revoked | Live::Drain | Live::Replaced => {
                self.tx.send(ToConn::Live(event)).is_ok()
            }
        }
    }

    fn wake(&self) -> bool {
        if self.pending.woken.swap(true, Ordering::AcqRel) {
            return !self.tx.is_closed();
        }
        self.tx.send(ToConn::Live(Live::Mail)).is_ok()
    }
}

/// Where connected devices are.
pub trait Router: Send + Sync {
    /// Registers a device's connection; returns the connection it replaces, if any.
    fn register(&self, device: DeviceId, handle: Handle) -> Option<Handle>;
    /// Unregisters a device's connection if it is still the registered one.
    fn unregister(&self, device: &DeviceId, conn_id: u64);
    /// Hands `event` to the device's connection; false if the device is not connected here (or
    /// its connection is too far behind to take more — it will catch up from the store).
    fn deliver(&self, device: &DeviceId, event: Live) -> bool;
    /// Whether a device has a connection.
    fn is_connected(&self, device: &DeviceId) -> bool;
    /// Sends `event` to every connection (drain); only control events and mail wakes can be
    /// broadcast.
    fn broadcast(&self, event: Live) -> usize;
    /// Connected devices.
    fn connected(&self) -> usize;
    /// Whether what the router relies on answers (a cluster's shared registry); `/health` says
    /// unhealthy while it does not, so that load balancers send clients to other nodes.
    fn healthy(&self) -> bool {
        true
    }
}

/// The router of a single relay process.
#[derive(Default)]
pub struct LocalRouter {
    devices: RwLock<HashMap<DeviceId, Handle>>,
}

impl LocalRouter {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// The devices connected here, with the id of each one's connection.
    pub fn devices(&self) -> Vec<(DeviceId, u64)> {
        self.devices
            .read()
            .map(|d| d.iter().map(|(k, h)| (*k, h.conn_id)).collect())
            .unwrap_or_default()
    }

    /// Unregisters the device's connection if it is connection `conn_id`, and returns it.
    pub fn take_conn(&self, device: &DeviceId, conn_id: u64) -> Option<Handle> {
        let mut d = self.devices.write().ok()?;
        if d.get(device).is_some_and(|h| h.conn_id == conn_id) {
            return d.remove(device);
        }
        None
    }

    /// Hands `event` to the device's connection only if it is still connection `conn_id`.
    pub fn deliver_to_conn(&self, device: &DeviceId, conn_id: u64, event: Live) -> bool {
        match self.handle(device) {
            Some(h) if h.conn_id == conn_id && !h.tx.is_closed() => h.send(event),
            _ => false,
        }
    }

    fn handle(&self, device: &DeviceId) -> Option<Handle> {
        self.devices.read().ok()?.get(device).cloned()
    }
}

impl Router for LocalRouter {
    fn register(&self, device: DeviceId, handle: Handle) -> Option<Handle> {
        self.devices.write().ok()?.insert(device, handle)
    }

    fn unregister(&self, device: &DeviceId, conn_id: u64) {
        if let Ok(mut d) = self.devices.write()
            && d.get(device).is_some_and(|h| h.conn_id == conn_id)
        {
            d.remove(device);
        }
    }

    fn deliver(&self, device: &DeviceId, event: Live) -> bool {
        let Ok(d) = self.devices.read() else {
            return false;
        };
        match d.get(device) {
            Some(h) if !h.tx.is_closed() => h.send(event),
            _ => false,
        }
    }

    fn is_connected(&self, device: &DeviceId) -> bool {
        self.handle(device).is_some_and(|h| !h.tx.is_closed())
    }

    fn broadcast(&self, event: Live) -> usize {
        let handles: Vec<Handle> = match self.devices.read() {
            Ok(d) => d.values().cloned().collect(),
            Err(_) => return 0,
        };
        handles
            .iter()
            .filter(|h| match &event {
                Live::Drain => h.send(Live::Drain),
                Live::Revoked => h.send(Live::Revoked),
                Live::Replaced => h.send(Live::Replaced),
                Live::Mail => h.send(Live::Mail),
                _ => false,
            })
            .count()
    }

    fn connected(&self) -> usize {
        self.devices.read().map_or(0, |d| d.len())
    }
}
