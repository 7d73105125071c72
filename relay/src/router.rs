//! Routing to connected devices: which devices have a live connection here, and handing them
//! what must reach them now. Behind a small trait so that a clustered backend (devices connected
//! to other relay nodes, found through a shared registry) can sit next to the local one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use crate::store::DeviceId;

/// What a connection is told.
#[derive(Clone, Debug)]
pub enum Live {
    /// New mail was committed to the device's queue (the connection reads it from the store, in
    /// queue order, after what it has already sent).
    Mail,
    /// An ephemeral envelope (typing, presence): delivered if connected, never stored.
    Ephemeral {
        /// The sending device.
        from: DeviceId,
        /// Opaque ciphertext.
        body: Vec<u8>,
    },
    /// The device's one-time pre-keys are running low.
    PreKeysLow {
        /// One-time X25519 keys left.
        one_time: u32,
        /// One-time ML-KEM keys left.
        kem: u32,
    },
    /// The device was removed from its account's list: close.
    Revoked,
    /// The relay is draining: tell the client to reconnect, then close.
    Drain,
    /// Another connection of the same device took over.
    Replaced,
}

/// A connection's inbox, as registered with the router.
#[derive(Clone, Debug)]
pub struct Handle {
    /// Unique per connection, so an old connection's unregister cannot remove a newer one.
    pub conn_id: u64,
    /// Where the connection's writer picks up events other than mail. Bounded: an ephemeral
    /// envelope that does not fit is dropped; a control event that does not fit closes the
    /// connection.
    pub tx: mpsc::Sender<Live>,
    /// Wakes the connection's writer for new mail. A wake is never lost (a permit is stored).
    pub mail: Arc<Notify>,
    /// The connection itself, to close it when a control event cannot be queued.
    pub conn: quinn::Connection,
}

impl Handle {
    /// Hands `event` to the connection: mail as a wake, control events through the queue (or by
    /// closing the connection when the queue is full), ephemeral ones if they fit.
    pub fn send(&self, event: Live) -> bool {
        match event {
            Live::Mail => {
                self.mail.notify_one();
                true
            }
            Live::Ephemeral { .. } | Live::PreKeysLow { .. } => self.tx.try_send(event).is_ok(),
            Live::Revoked | Live::Drain | Live::Replaced => {
                let code = match event {
                    Live::Revoked => crate::limits::close::REVOKED,
                    Live::Drain => crate::limits::close::DRAINING,
                    _ => crate::limits::close::REPLACED,
                };
                if self.tx.try_send(event).is_err() {
                    self.conn.close(code.into(), b"");
                }
                true
            }
        }
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
    /// Sends `event` to every connection (drain).
    fn broadcast(&self, event: Live) -> usize;
    /// Connected devices.
    fn connected(&self) -> usize;
}

/// The router of a single relay process.
#[derive(Default)]
pub struct LocalRouter {
    devices: Mutex<HashMap<DeviceId, Handle>>,
}

impl LocalRouter {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    fn handle(&self, device: &DeviceId) -> Option<Handle> {
        self.devices.lock().ok()?.get(device).cloned()
    }
}

impl Router for LocalRouter {
    fn register(&self, device: DeviceId, handle: Handle) -> Option<Handle> {
        self.devices.lock().ok()?.insert(device, handle)
    }

    fn unregister(&self, device: &DeviceId, conn_id: u64) {
        if let Ok(mut d) = self.devices.lock()
            && d.get(device).is_some_and(|h| h.conn_id == conn_id)
        {
            d.remove(device);
        }
    }

    fn deliver(&self, device: &DeviceId, event: Live) -> bool {
        match self.handle(device) {
            Some(h) if !h.tx.is_closed() => h.send(event),
            _ => false,
        }
    }

    fn is_connected(&self, device: &DeviceId) -> bool {
        self.handle(device).is_some_and(|h| !h.tx.is_closed())
    }

    fn broadcast(&self, event: Live) -> usize {
        let handles: Vec<Handle> = match self.devices.lock() {
            Ok(d) => d.values().cloned().collect(),
            Err(_) => return 0,
        };
        handles.iter().filter(|h| h.send(event.clone())).count()
    }

    fn connected(&self) -> usize {
        self.devices.lock().map_or(0, |d| d.len())
    }
}
