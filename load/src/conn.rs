//! One device's connection to the relay, on `hush_net::client` (QUIC with the pinned
//! certificate, the control stream, request ids, a coalescing writer): answers to sends are
//! counted as they arrive, deliveries timestamped (and, over several relay nodes, told apart by
//! whether they crossed nodes) and their sequence numbers handed to an acknowledger.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use hush_net::client::{self, ConnError, Connection, Options, Unsolicited};
use hush_net::frame::FrameError;
use hush_proto::relay_api::{self as api, ServerFrame, client_frame, server_frame};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinHandle;

use crate::Error;

/// Time allowed for one set-up request (create, hello, authenticate).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest frame accepted from the relay.
const MAX_SERVER_FRAME: usize = 4 << 20;
/// Receive and send buffers asked for each client socket.
const SOCKET_BUFFERS: usize = 4 << 20;
/// Errors kept word for word (the rest are only counted).
const ERRORS_KEPT: usize = 20;

/// What every connection of a run shares: the clock base, the measurement window, counters.
pub(crate) struct Shared {
    base: Instant,
    window_start: AtomicU64,
    window_end: AtomicU64,
    /// Sends answered with `SendResult`.
    pub(crate) acked: AtomicU64,
    /// Sends answered with `SendResult` inside the measurement window.
    pub(crate) acked_in_window: AtomicU64,
    /// Envelopes in sends answered with `SendResult`.
    pub(crate) envelopes_acked: AtomicU64,
    /// Sends written and not yet answered.
    pub(crate) in_flight: AtomicU64,
    /// `Deliver` frames received.
    pub(crate) delivered: AtomicU64,
    /// `Deliver` frames received inside the measurement window.
    pub(crate) delivered_in_window: AtomicU64,
    refusals: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<Vec<String>>,
    pub(crate) error_count: AtomicU64,
    /// The relay node of every sender (by sender index); empty over one node.
    sender_nodes: Vec<usize>,
}

impl Shared {
    /// `sender_nodes`: the relay node of every sender, by sender index (empty over one node).
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn new(sender_nodes: Vec<usize>) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            acked: AtomicU64::new(0),
            acked_in_window: AtomicU64::new(0),
            envelopes_acked: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_in_window: AtomicU64::new(0),
            refusals: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(Vec::new()),
            error_count: AtomicU64::new(0),
            sender_nodes,
        })
    }

    /// Whether an envelope of sender `sender` delivered to a device on relay node `node` crossed
    /// nodes; `None` over one node, or for a sender not in this run.
    pub(crate) fn crosses(&self, sender: u64, node: usize) -> Option<bool> {
        let s = usize::try_from(sender).ok()?;
        self.sender_nodes.get(s).map(|n| *n != node)
    }

    /// Nanoseconds since the run started (monotonic).
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Sets the measurement window, in nanoseconds since the run started.
    pub(crate) fn set_window(&self, start: u64, end: u64) {
        self.window_start.store(start, Ordering::Relaxed);
        self.window_end.store(end, Ordering::Relaxed);
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.window_start.load(Ordering::Relaxed)
            && t < self.window_end.load(Ordering::Relaxed)
    }

    pub(crate) fn refuse(&self, code: i32) {
        let name = api::ErrorCode::try_from(code)
            .map(|c| c.as_str_name().to_string())
            .unwrap_or_else(|_| format!("code {code}"));
        if let Ok(mut r) = self.refusals.lock() {
            *r.entry(name).or_insert(0) += 1;
        }
    }

    pub(crate) fn error(&self, what: String) {
        self.error_count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.errors.lock()
            && e.len() < ERRORS_KEPT
        {
            e.push(what);
        }
    }

    pub(crate) fn refusals(&self) -> BTreeMap<String, u64> {
        self.refusals.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub(crate) fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// Latencies seen by one connection, in microseconds.
#[derive(Default)]
pub(crate) struct Samples {
    /// Send (timestamp in the body) → the recipient's reader decoded the `Deliver`.
    pub(crate) delivery: Vec<u32>,
    /// Send written → its `SendResult` decoded (the durability wait included).
    pub(crate) durable: Vec<u32>,
    /// The `delivery` samples between devices on the same relay node (several nodes only).
    pub(crate) same_node: Vec<u32>,
    /// The `delivery` samples between devices on different relay nodes (several nodes only).
    pub(crate) cross_node: Vec<u32>,
}

impl Samples {
    /// Takes in another connection's samples.
    pub(crate) fn extend(&mut self, other: Self) {
        self.delivery.extend(other.delivery);
        self.durable.extend(other.durable);
        self.same_node.extend(other.same_node);
        self.cross_node.extend(other.cross_node);
    }

    /// Keeps a delivery's latency (µs); `crossed` tells whether it crossed relay nodes (`None`:
    /// one node, or not known).
    fn delivered(&mut self, us: u32, crossed: Option<bool>) {
        if self.delivery.len() >= MAX_SAMPLES {
            return;
        }
        self.delivery.push(us);
        match crossed {
            Some(true) => self.cross_node.push(us),
            Some(false) => self.same_node.push(us),
            None => {}
        }
    }
}

/// Most samples one connection keeps of each kind (a bound on memory).
const MAX_SAMPLES: usize = 4_000_000;

struct Inner {
    net: Connection,
    shared: Arc<Shared>,
    samples: Arc<Mutex<Samples>>,
}

/// A connection (cheap to clone).
#[derive(Clone)]
pub(crate) struct Link(Arc<Inner>);

/// The client endpoints' transport: keep-alive (the relay sends none), otherwise quinn's defaults.
pub(crate) fn client_config(pin: &str, keep_alive: Duration) -> Result<quinn::ClientConfig, Error> {
    client::client_config(pin, keep_alive, None).map_err(|e| Error::new(e.to_string()))
}

/// A client endpoint (one UDP socket, with large buffers) on the loopback address of the relay's
/// family.
pub(crate) fn endpoint(
    relay: SocketAddr,
    cc: quinn::ClientConfig,
) -> Result<quinn::Endpoint, Error> {
    let local: SocketAddr = if relay.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0))
    };
    client::endpoint(local, Some(SOCKET_BUFFERS), cc).map_err(|e| Error::new(e.to_string()))
}

/// How a link reaches its relay node.
pub(crate) enum Dial {
    /// QUIC from this endpoint.
    Quic(quinn::Endpoint),
    /// TLS over TCP, pinned to this certificate fingerprint.
    Tcp(String),
}

impl Link {
    /// Connects to relay node `node` at `addr` and opens the control stream; starts the writer,
    /// the reader and the acknowledger (which acknowledges what arrived every `ack_interval`).
    /// The returned handle yields the connection's samples once the connection is closed.
    pub(crate) async fn connect(
        dial: &Dial,
        (node, addr): (usize, SocketAddr),
        shared: Arc<Shared>,
        ack_interval: Duration,
    ) -> Result<(Self, JoinHandle<Samples>), Error> {
        let samples = Arc::new(Mutex::new(Samples::default()));
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<u64>();
        let on_frame = unsolicited(Arc::clone(&shared), Arc::clone(&samples), ack_tx, node);
        let options = Options {
            server_name: "localhost".to_owned(),
            handshake_timeout: REQUEST_TIMEOUT,
            max_frame: MAX_SERVER_FRAME,
            close_when_stream_ends: false,
            // Within the relay's idle timeout (60 s) for idle runs over TCP.
            tcp_keep_alive: Some(Duration::from_secs(20)),
        };
        let connected = match dial {
            Dial::Quic(endpoint) => Connection::connect(endpoint, addr, &options, on_frame).await,
            Dial::Tcp(pin) => Connection::connect_tcp(addr, pin, &options, on_frame).await,
        };
        let (net, reader) = connected.map_err(|e| Error::new(format!("connect: {e}")))?;
        let link = Self(Arc::new(Inner {
            net,
            shared: Arc::clone(&shared),
            samples: Arc::clone(&samples),
        }));
        tokio::spawn(link.clone().acknowledger(ack_rx, ack_interval));
        let conn = link.conn().cloned();
        let done = tokio::spawn(async move {
            match reader.await {
                Ok(FrameError::Finished) => {}
                // A connection we closed ourselves ends here too.
                Ok(_) | Err(_)
                    if matches!(
                        conn.as_ref().and_then(quinn::Connection::close_reason),
                        Some(quinn::ConnectionError::LocallyClosed)
                    ) => {}
                Ok(e) => shared.error(format!("connection lost: {e}")),
                Err(e) => shared.error(format!("connection reader: {e}")),
            }
            samples
                .lock()
                .map(|mut s| std::mem::take(&mut *s))
                .unwrap_or_default()
        });
        Ok((link, done))
    }

    /// The QUIC connection; `None` over TCP.
    pub(crate) fn conn(&self) -> Option<&quinn::Connection> {
        self.0.net.quic()
    }

    /// Whether the connection is still open.
    pub(crate) fn is_open(&self) -> bool {
        self.0.net.is_open()
    }

    pub(crate) fn close(&self) {
        self.0.net.close(b"done");
    }

    /// Sends a request and waits for its answer.
    pub(crate) async fn request(
        &self,
        kind: client_frame::Kind,
    ) -> Result<server_frame::Kind, Error> {
        self.0
            .net
            .request(kind, REQUEST_TIMEOUT)
            .await
            .map_err(|e| match e {
                ConnError::Closed => Error::new(format!(
                    "connection closed before an answer: {:?}",
                    self.conn().and_then(quinn::Connection::close_reason)
                )),
                other => Error::new(other.to_string()),
            })
    }

    /// Creates an account (allowed before authentication).
    pub(crate) async fn create_account(&self, signed_list: Vec<u8>) -> Result<(), Error> {
        match self
            .request(client_frame::Kind::CreateAccount(api::CreateAccount {
                signed_device_list: signed_list,
            }))
            .await?
        {
            server_frame::Kind::Ok(_) => Ok(()),
            other => Err(Error::new(format!("create account: {other:?}"))),
        }
    }

    /// Sets this device's delivery token ([`delivery_token`]), so that sends to it are checked
    /// against it as a contact's sealed sends are.
    pub(crate) async fn set_delivery_token(
        &self,
        account: [u8; 32],
        device: u32,
    ) -> Result<(), Error> {
        match self
            .request(client_frame::Kind::SetDeliveryToken(
                api::SetDeliveryToken {
                    token: delivery_token(&account, device).to_vec(),
                    anyone: false,
                },
            ))
            .await?
        {
            server_frame::Kind::Ok(_) => Ok(()),
            other => Err(Error::new(format!("set delivery token: {other:?}"))),
        }
    }

    /// Authenticates as `device` of `account`: the signature over the TLS exporter and the
    /// relay's challenge.
    pub(crate) async fn authenticate(
        &self,
        account: [u8; 32],
        device: u32,
        key: &SigningKey,
    ) -> Result<(), Error> {
        let sign = |exporter: &[u8; 32], challenge: &[u8; 32]| {
            let t = hush_proto::transcripts::relay_auth(exporter, challenge, &account, device);
            key.sign(&t).to_bytes()
        };
        match self
            .0
            .net
            .authenticate(account, device, REQUEST_TIMEOUT, sign)
            .await
            .map_err(|e| Error::new(format!("authenticate: {e}")))?
        {
            server_frame::Kind::Ok(_) => Ok(()),
            other => Err(Error::new(format!("authenticate: {other:?}"))),
        }
    }

    /// Writes one send; its answer is counted on the reader's task, which also releases
    /// `permit`.
    pub(crate) fn send(
        &self,
        send: api::Send,
        at: u64,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), Error> {
        let envelopes = u64::try_from(send.envelopes.len()).unwrap_or(u64::MAX);
        let shared = Arc::clone(&self.0.shared);
        let samples = Arc::clone(&self.0.samples);
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let on_answer = Box::new(move |answer: Option<server_frame::Kind>| {
            let _permit = permit;
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            match answer {
                // Never answered: the connection ended.
                None => {}
                Some(server_frame::Kind::Sent(sent)) => {
                    sent_answer(&shared, &samples, &sent, at, envelopes);
                }
                Some(server_frame::Kind::Error(e)) => shared.refuse(e.code),
                Some(other) => shared.error(format!("unexpected answer to a send: {other:?}")),
            }
        });
        self.0
            .net
            .request_with(client_frame::Kind::Send(send), on_answer)
            .map(|_| ())
            .map_err(|_| Error::new("connection writer stopped".into()))
    }

    async fn acknowledger(self, mut rx: mpsc::UnboundedReceiver<u64>, every: Duration) {
        let mut seqs = Vec::with_capacity(1024);
        loop {
            if rx.recv_many(&mut seqs, 4096).await == 0 {
                return;
            }
            let batch = std::mem::take(&mut seqs);
            let shared = Arc::clone(&self.0.shared);
            let on_answer = Box::new(move |answer: Option<server_frame::Kind>| {
                if let Some(server_frame::Kind::Error(e)) = answer {
                    shared.refuse(e.code);
                }
            });
            if self
                .0
                .net
                .request_with(client_frame::Kind::Ack(api::Ack { seqs: batch }), on_answer)
                .is_err()
            {
                return;
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// Counts a `SendResult` and samples its durability latency.
fn sent_answer(
    shared: &Shared,
    samples: &Mutex<Samples>,
    sent: &api::SendResult,
    at: u64,
    envelopes: u64,
) {
    let now = shared.now_ns();
    shared.acked.fetch_add(1, Ordering::Relaxed);
    // Devices left out for lack of room got nothing: not expected to arrive, counted as
    // refusals (of their own name).
    let left_out = sent.full_devices.len();
    if left_out > 0
        && let Ok(mut r) = shared.refusals.lock()
    {
        *r.entry("DEVICE_FULL".to_string()).or_insert(0) += left_out as u64;
    }
    shared
        .envelopes_acked
        .fetch_add(envelopes.saturating_sub(left_out as u64), Ordering::Relaxed);
    if shared.in_window(now) {
        shared.acked_in_window.fetch_add(1, Ordering::Relaxed);
    }
    if shared.in_window(at)
        && let Ok(mut s) = samples.lock()
        && s.durable.len() < MAX_SAMPLES
    {
        s.durable.push(micros(now.saturating_sub(at)));
    }
}

/// What the reader of a connection to relay node `node` does with frames no request waits for:
/// deliveries are timestamped, sampled and handed to the acknowledger; the rest is counted as
/// errors.
fn unsolicited(
    shared: Arc<Shared>,
    samples: Arc<Mutex<Samples>>,
    acks: mpsc::UnboundedSender<u64>,
    node: usize,
) -> Unsolicited {
    Unsolicited::Handler(Box::new(move |f: ServerFrame| {
        if f.request_id != 0 {
            shared.error(format!("answer to unknown request {}", f.request_id));
            return;
        }
        match f.kind {
            Some(server_frame::Kind::Deliver(d)) => {
                let now = shared.now_ns();
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(at) = d
                    .body
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    && shared.in_window(at)
                {
                    shared.delivered_in_window.fetch_add(1, Ordering::Relaxed);
                    let crossed = d
                        .body
                        .get(8..16)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                        .and_then(|sender| shared.crosses(sender, node));
                    if let Ok(mut s) = samples.lock() {
                        s.delivered(micros(now.saturating_sub(at)), crossed);
                    }
                }
                let _ = acks.send(d.seq);
            }
            Some(server_frame::Kind::Drain(_)) => shared.error("relay draining".into()),
            Some(server_frame::Kind::Revoked(_)) => shared.error("device revoked".into()),
            _ => {}
        }
    }))
}

fn micros(ns: u64) -> u32 {
    u32::try_from(ns / 1000).unwrap_or(u32::MAX)
}

/// The delivery token the load generator gives `device` of `account` (any 16 bytes do: the
/// relay only compares them): the account's first 12 bytes and the device id.
pub(crate) fn delivery_token(account: &[u8; 32], device: u32) -> [u8; 16] {
    let mut t = [0u8; 16];
    for (to, from) in t
        .iter_mut()
        .zip(account.iter().take(12).chain(&device.to_be_bytes()))
    {
        *to = *from;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_crosses_nodes_when_its_sender_is_on_another() {
        // Senders 0 and 2 on node 0, sender 1 on node 1.
        let shared = Shared::new(vec![0, 1, 0]);
        assert_eq!(shared.crosses(0, 0), Some(false));
        assert_eq!(shared.crosses(0, 1), Some(true));
        assert_eq!(shared.crosses(1, 0), Some(true));
        assert_eq!(shared.crosses(1, 1), Some(false));
        assert_eq!(shared.crosses(2, 1), Some(true));
        assert_eq!(shared.crosses(3, 0), None, "no such sender");
        assert_eq!(shared.crosses(u64::MAX, 0), None);
    }

    #[test]
    fn over_one_node_nothing_crosses() {
        let shared = Shared::new(Vec::new());
        assert_eq!(shared.crosses(0, 0), None);
    }

    #[test]
    fn samples_are_split_by_node_and_all_kept_together() {
        let mut s = Samples::default();
        s.delivered(10, Some(false));
        s.delivered(20, Some(true));
        s.delivered(30, Some(true));
        s.delivered(40, None);
        assert_eq!(s.delivery, [10, 20, 30, 40]);
        assert_eq!(s.same_node, [10]);
        assert_eq!(s.cross_node, [20, 30]);
        let mut other = Samples::default();
        other.delivered(50, Some(false));
        other.durable.push(7);
        s.extend(other);
        assert_eq!(s.delivery, [10, 20, 30, 40, 50]);
        assert_eq!(s.same_node, [10, 50]);
        assert_eq!(s.durable, [7]);
    }
}
