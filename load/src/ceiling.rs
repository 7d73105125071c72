//! The ceiling server: the least a relay must do for `hush-load`'s workloads, built on the relay's
//! own QUIC transport settings and UDP socket, so that a relay figure can be read against what
//! bare quinn + sled reach on the same machine.
//!
//! It speaks just enough of the relay protocol for the load client:
//! * `CreateAccount` → `Ok` (nothing kept); `Hello` → `Challenge` (32 random bytes);
//!   `Authenticate` → `Ok` without any check: the claimed account and device become this
//!   connection's identity for routing.
//! * `Send`: per envelope one sled insert (key: recipient account ‖ device ‖ seq, value: sender ‖
//!   client id ‖ body), in the connection's task; then a `Deliver` to the recipient's connection,
//!   if it has one, at once; then the send joins the group commit: one flusher thread takes every
//!   send waiting at that moment, calls `flush()` once and answers them all with `SendResult`. The
//!   connection goes on reading meanwhile.
//! * `Ack` → one sled remove per acknowledged key, `Ok`.
//! * Anything else → `Error` (`UNKNOWN_REQUEST`).
//!
//! Deliberately left out: signature checks, device lists, rate limits, idempotency of retried
//! sends, queue caps, catch-up of stored mail, the authentication deadline, Retry under load,
//! blob streams, push, metrics. Sequence numbers come from one counter for the whole server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hush_proto::relay_api::{
    self as api, ClientFrame, ErrorCode, ServerFrame, client_frame, server_frame,
};
use hush_relay::config::Config;
use hush_relay::{frame, limits, server, tls};
use tokio::sync::mpsc;

use crate::Error;

/// The first argument that makes `hush-load` run the ceiling server instead of a workload.
pub const SUBCOMMAND: &str = "ceiling-server";

/// Largest frame read (the relay's default frame cap).
const MAX_FRAME: usize = 1 << 20;
/// A device: account id ‖ device id (big-endian).
type DeviceKey = [u8; 36];
/// A stored envelope's key: recipient device ‖ seq (big-endian).
type MailKey = [u8; 44];
/// A connection's outgoing frames (encoded), to its writer.
type Out = mpsc::UnboundedSender<Vec<u8>>;

/// Settings of the ceiling server (`hush-load ceiling-server …`, started by `hush-load` itself).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "hush-load ceiling-server",
    about = "The ceiling server hush-load compares the relay with"
)]
pub struct ServerOptions {
    /// Directory of the certificate and the sled database.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// sled (on disk: one insert per envelope, group-committed flushes) or memory (no store).
    #[arg(long, default_value = "sled")]
    pub store: String,
    /// UDP address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

enum Store {
    Sled(sled::Db),
    Memory,
}

impl Store {
    fn insert(&self, key: &MailKey, value: Vec<u8>) -> Result<(), String> {
        match self {
            Self::Sled(db) => db.insert(key, value).map(drop).map_err(|e| e.to_string()),
            Self::Memory => Ok(()),
        }
    }

    fn remove(&self, mut keys: impl Iterator<Item = MailKey>) -> Result<(), String> {
        match self {
            // One plain remove per key: a sled `Batch` writes the log buffer out twice and takes
            // sled's global write lock, which would make this a floor rather than a ceiling.
            Self::Sled(db) => keys
                .try_for_each(|k| db.remove(k).map(drop))
                .map_err(|e| e.to_string()),
            Self::Memory => Ok(()),
        }
    }

    fn flush(&self) -> Result<(), String> {
        match self {
            Self::Sled(db) => db.flush().map(drop).map_err(|e| e.to_string()),
            Self::Memory => Ok(()),
        }
    }
}

/// A send waiting for the next flush.
struct Pending {
    out: Out,
    request_id: u64,
    received_at: u64,
}

struct Server {
    store: Arc<Store>,
    /// Authenticated devices: their connection's id and outgoing frames.
    router: Mutex<HashMap<DeviceKey, (u64, Out)>>,
    next_seq: AtomicU64,
    next_conn: AtomicU64,
    commit: std_mpsc::Sender<Pending>,
}

/// Runs the ceiling server until the process is killed: prints `listening on ADDR (udp)` and
/// `certificate fingerprint (pin this): HEX` (as the relay does) once it accepts connections.
pub async fn serve(opts: &ServerOptions) -> Result<(), Error> {
    if !opts.listen.ip().is_loopback() {
        return Err(Error::new("--listen must be a loopback address".into()));
    }
    let store = match opts.store.as_str() {
        "sled" => Store::Sled(
            sled::Config::new()
                .path(opts.data_dir.join("db"))
                .open()
                .map_err(|e| Error::new(format!("sled: {e}")))?,
        ),
        "memory" => Store::Memory,
        _ => return Err(Error::new("--store must be sled or memory".into())),
    };
    let id = tls::load_or_create(&opts.data_dir, &["localhost".to_string()])
        .map_err(|e| Error::new(format!("certificate: {e}")))?;
    let tls_cfg =
        tls::server_config(&id, limits::ALPN).map_err(|e| Error::new(format!("TLS: {e}")))?;
    let quic_cfg = server::server_config(&Config::default(), tls_cfg)
        .map_err(|e| Error::new(format!("QUIC: {e}")))?;
    let endpoint = server::bind_endpoint(opts.listen, quic_cfg, &hush_testkit::random())
        .map_err(|e| Error::new(format!("cannot listen on {}: {e}", opts.listen)))?;
    let addr = endpoint
        .local_addr()
        .map_err(|e| Error::new(format!("local address: {e}")))?;

    let store = Arc::new(store);
    let (commit, pending) = std_mpsc::channel();
    let flusher_store = Arc::clone(&store);
    std::thread::Builder::new()
        .name("ceiling-flush".into())
        .spawn(move || flusher(&flusher_store, &pending))
        .map_err(|e| Error::new(format!("flusher thread: {e}")))?;
    let server = Arc::new(Server {
        store,
        router: Mutex::new(HashMap::new()),
        next_seq: AtomicU64::new(1),
        next_conn: AtomicU64::new(1),
        commit,
    });

    println!("listening on {addr} (udp)");
    println!("certificate fingerprint (pin this): {}", id.fingerprint());
    use std::io::Write;
    let _ = std::io::stdout().flush();

    while let Some(incoming) = endpoint.accept().await {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            if let Ok(conn) = incoming.await {
                server.connection(conn).await;
            }
        });
    }
    Ok(())
}

/// Group commit: every send queued when a flush starts is answered when it ends.
fn flusher(store: &Store, pending: &std_mpsc::Receiver<Pending>) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());
        let flushed = store.flush();
        for p in batch {
            let kind = match &flushed {
                Ok(()) => server_frame::Kind::Sent(api::SendResult {
                    received_at: p.received_at,
                    full_devices: Vec::new(),
                }),
                Err(e) => refusal(ErrorCode::Internal, e),
            };
            let _ = p.out.send(encode(p.request_id, kind));
        }
    }
}

fn encode(request_id: u64, kind: server_frame::Kind) -> Vec<u8> {
    frame::encode(&ServerFrame {
        request_id,
        kind: Some(kind),
    })
}

fn refusal(code: ErrorCode, message: &str) -> server_frame::Kind {
    server_frame::Kind::Error(api::Error {
        code: code.into(),
        message: message.to_string(),
        ..api::Error::default()
    })
}

fn device_key(account: &[u8; 32], device: u32) -> DeviceKey {
    let mut k = [0u8; 36];
    let (a, d) = k.split_at_mut(32);
    a.copy_from_slice(account);
    d.copy_from_slice(&device.to_be_bytes());
    k
}

fn mail_key(device: &DeviceKey, seq: u64) -> MailKey {
    let mut k = [0u8; 44];
    let (d, s) = k.split_at_mut(36);
    d.copy_from_slice(device);
    s.copy_from_slice(&seq.to_be_bytes());
    k
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Server {
    async fn connection(self: Arc<Self>, conn: quinn::Connection) {
        let Ok(Ok((send, mut recv))) = tokio::time::timeout(
            Duration::from_millis(limits::AUTH_TIMEOUT_MS),
            conn.accept_bi(),
        )
        .await
        else {
            conn.close(limits::close::PROTOCOL.into(), b"no control stream");
            return;
        };
        // Writer: whatever frames are queued go out in one write.
        let out = hush_net::client::spawn_writer(send, None);
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut me: Option<DeviceKey> = None;
        loop {
            let f = match frame::read::<ClientFrame, _>(&mut recv, MAX_FRAME).await {
                Ok(f) => f,
                Err(frame::FrameError::Finished) => break,
                Err(_) => {
                    conn.close(limits::close::PROTOCOL.into(), b"bad frame");
                    break;
                }
            };
            let rid = f.request_id;
            if let Some(answer) = self.handle(rid, f.kind, conn_id, &out, &mut me) {
                let _ = out.send(encode(rid, answer));
            }
        }
        if let Some(d) = me
            && let Ok(mut r) = self.router.lock()
            && r.get(&d).is_some_and(|(c, _)| *c == conn_id)
        {
            r.remove(&d);
        }
    }

    /// Handles one request; `None` when the answer comes later (a send, after its flush).
    fn handle(
        &self,
        request_id: u64,
        kind: Option<client_frame::Kind>,
        conn_id: u64,
        out: &Out,
        me: &mut Option<DeviceKey>,
    ) -> Option<server_frame::Kind> {
        let ok = || Some(server_frame::Kind::Ok(api::Ok {}));
        match kind {
            Some(client_frame::Kind::CreateAccount(_)) => ok(),
            Some(client_frame::Kind::Hello(_)) => {
                Some(server_frame::Kind::Challenge(api::Challenge {
                    nonce: hush_testkit::random::<32>().to_vec(),
                }))
            }
            Some(client_frame::Kind::Authenticate(a)) => {
                let Ok(account) = <[u8; 32]>::try_from(a.account.as_slice()) else {
                    return Some(refusal(ErrorCode::Malformed, "account is not 32 bytes"));
                };
                let d = device_key(&account, a.device_id);
                if let Ok(mut r) = self.router.lock() {
                    // Authenticating again as another device leaves the first one.
                    if let Some(old) = me.replace(d)
                        && r.get(&old).is_some_and(|(c, _)| *c == conn_id)
                    {
                        r.remove(&old);
                    }
                    r.insert(d, (conn_id, out.clone()));
                }
                ok()
            }
            Some(client_frame::Kind::Send(s)) => match me {
                Some(from) => self.send(s, from, out, request_id),
                None => Some(refusal(ErrorCode::Unauthenticated, "not authenticated")),
            },
            // The ceiling checks no tokens (nor signatures): it only answers.
            Some(client_frame::Kind::SetDeliveryToken(_)) => ok(),
            Some(client_frame::Kind::Ack(a)) => match me {
                Some(d) => match self.store.remove(a.seqs.iter().map(|s| mail_key(d, *s))) {
                    Ok(()) => ok(),
                    Err(e) => Some(refusal(ErrorCode::Internal, &e)),
                },
                None => Some(refusal(ErrorCode::Unauthenticated, "not authenticated")),
            },
            _ => Some(refusal(
                ErrorCode::UnknownRequest,
                "not served by the ceiling server",
            )),
        }
    }

    /// Stores every envelope (one insert each), delivers them to connected recipients, and
    /// queues the answer behind the next flush.
    fn send(
        &self,
        s: api::Send,
        from: &DeviceKey,
        out: &Out,
        request_id: u64,
    ) -> Option<server_frame::Kind> {
        let Ok(recipient) = <[u8; 32]>::try_from(s.recipient_account.as_slice()) else {
            return Some(refusal(ErrorCode::Malformed, "recipient is not 32 bytes"));
        };
        if s.client_id.len() != limits::CLIENT_ID_LEN {
            return Some(refusal(ErrorCode::Malformed, "client id is not 16 bytes"));
        }
        let received_at = now_ms();
        let mut stored = Vec::with_capacity(s.envelopes.len());
        for e in s.envelopes {
            let to = device_key(&recipient, e.device_id);
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            let mut value = Vec::with_capacity(from.len() + s.client_id.len() + e.body.len());
            value.extend_from_slice(from);
            value.extend_from_slice(&s.client_id);
            value.extend_from_slice(&e.body);
            if let Err(e) = self.store.insert(&mail_key(&to, seq), value) {
                return Some(refusal(ErrorCode::Internal, &e));
            }
            stored.push((to, seq, e.body));
        }
        let routes: Vec<Option<Out>> = match self.router.lock() {
            Ok(r) => stored
                .iter()
                .map(|(to, _, _)| r.get(to).map(|(_, o)| o.clone()))
                .collect(),
            Err(_) => Vec::new(),
        };
        for ((_, seq, body), route) in stored.into_iter().zip(routes) {
            if let Some(o) = route {
                let _ = o.send(encode(
                    0,
                    server_frame::Kind::Deliver(api::Deliver {
                        seq,
                        client_id: s.client_id.clone(),
                        body,
                        received_at,
                    }),
                ));
            }
        }
        let _ = self.commit.send(Pending {
            out: out.clone(),
            request_id,
            received_at,
        });
        None
    }
}
