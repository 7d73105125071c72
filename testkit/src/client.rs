//! A raw client of the relay protocol for tests: QUIC (or TLS over TCP) with a pinned
//! certificate, the control stream with request/response matching, unsolicited frames, blob
//! streams. It sends whatever a test asks, malformed frames included, and panics where a test
//! would fail.

use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use hush_net::client::{self, ConnError, Connection, Options, Transport, Unsolicited};
use hush_net::frame;
use hush_proto::relay_api::{
    self as api, BlobRequest, BlobResponse, ServerFrame, blob_request, blob_response, client_frame,
    server_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::WAIT;
use crate::account::{TestAccount, sign_auth};

/// Keep-alive of test connections.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Longest a test connection's handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame a test client accepts.
const MAX_FRAME: usize = 4 << 20;

/// The transport of the clients of transport-neutral tests: QUIC, or TLS over TCP when
/// `HUSH_TEST_TRANSPORT=tcp` (so a suite runs over either: docs/RELAY_PROTOCOL.md §17).
pub fn test_transport() -> Transport {
    match std::env::var("HUSH_TEST_TRANSPORT").as_deref() {
        Ok("tcp") => Transport::Tcp,
        _ => Transport::Quic,
    }
}

/// The sending half of a blob stream or connection.
pub type BlobWrite = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;
/// The receiving half of a blob stream or connection.
pub type BlobRead = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

/// The connection options of test clients.
fn options() -> Options {
    Options {
        server_name: "localhost".to_owned(),
        handshake_timeout: HANDSHAKE_TIMEOUT,
        max_frame: MAX_FRAME,
        // Tests watch how the relay closes a connection.
        close_when_stream_ends: false,
        tcp_keep_alive: None,
    }
}

/// One connection to the relay.
pub struct Client {
    /// Its QUIC endpoint; `None` over TCP.
    pub endpoint: Option<quinn::Endpoint>,
    net: Connection,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<ServerFrame>>,
}

impl Client {
    /// Connects, or panics.
    pub async fn connect(addr: SocketAddr, pin: &str) -> Self {
        Self::try_connect(addr, pin).await.expect("cannot connect")
    }

    /// As `connect`; `None` if the relay cannot be reached (or stops answering) within 5 s.
    pub async fn try_connect(addr: SocketAddr, pin: &str) -> Option<Self> {
        Self::try_connect_from(crate::relay::any_port(), addr, pin).await
    }

    /// As `try_connect`, from the local address `bind` (any 127.x.y.z is loopback, so tests
    /// can connect from several address blocks).
    pub async fn try_connect_from(bind: SocketAddr, addr: SocketAddr, pin: &str) -> Option<Self> {
        let cc = client::client_config(pin, KEEP_ALIVE, None).unwrap();
        let endpoint = client::endpoint(bind, None, cc).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let events = Unsolicited::Handler(Box::new(move |f| {
            let _ = tx.send(f);
        }));
        let (net, _reader) = Connection::connect(&endpoint, addr, &options(), events)
            .await
            .ok()?;
        Some(Self {
            endpoint: Some(endpoint),
            net,
            events: tokio::sync::Mutex::new(rx),
        })
    }

    /// Connects over TLS on TCP to `addr` (the relay's TCP address), or panics.
    pub async fn connect_tcp(addr: SocketAddr, pin: &str) -> Self {
        Self::try_connect_tcp(addr, pin)
            .await
            .expect("cannot connect over TCP")
    }

    /// As `connect_tcp`; `None` if the relay cannot be reached.
    pub async fn try_connect_tcp(addr: SocketAddr, pin: &str) -> Option<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let events = Unsolicited::Handler(Box::new(move |f| {
            let _ = tx.send(f);
        }));
        let (net, _reader) = Connection::connect_tcp(addr, pin, &options(), events)
            .await
            .ok()?;
        Some(Self {
            endpoint: None,
            net,
            events: tokio::sync::Mutex::new(rx),
        })
    }

    /// Connects over `transport` to the relay (its QUIC or its TCP address), or panics.
    pub async fn connect_over(transport: Transport, relay: &hush_relay::Running) -> Self {
        match transport {
            Transport::Quic => Self::connect(relay.addr, &relay.fingerprint).await,
            Transport::Tcp => {
                let tcp = relay.tcp_addr.expect("the relay listens on TCP");
                Self::connect_tcp(tcp, &relay.fingerprint).await
            }
        }
    }

    /// Connects over `transport` to the relay binary run as `relay`, or panics. It listens for
    /// TLS over TCP at the address and port number of QUIC (`tcp_listen` `same`, its default).
    pub async fn connect_to_process(transport: Transport, relay: &crate::RelayProcess) -> Self {
        match transport {
            Transport::Quic => Self::connect(relay.addr, &relay.pin).await,
            Transport::Tcp => Self::connect_tcp(relay.addr, &relay.pin).await,
        }
    }

    /// Waits until the relay closes this connection, and checks it closed with `code` over QUIC
    /// (TCP carries no close code: there the connection's end is all there is to see).
    pub async fn closed_with(&self, code: u32) {
        let got = self.closed().await;
        if self.transport() == Transport::Quic {
            assert_eq!(got, Some(u64::from(code)), "close code");
        }
    }

    /// Closes the connection from the client's side (code 0 over QUIC).
    pub fn close(&self) {
        self.net.close(b"");
    }

    /// The QUIC connection (panics over TCP).
    pub fn quic(&self) -> &quinn::Connection {
        self.net.quic().expect("a QUIC connection")
    }

    /// What carries this connection.
    pub fn transport(&self) -> Transport {
        self.net.transport()
    }

    /// Whether the connection is still open.
    pub fn is_open(&self) -> bool {
        self.net.is_open()
    }

    /// Sends raw bytes on the control stream.
    pub fn send_raw(&self, bytes: Vec<u8>) {
        let _ = self.net.send_raw(bytes);
    }

    /// Sends a request and waits for its answer.
    pub async fn request(&self, kind: client_frame::Kind) -> server_frame::Kind {
        self.try_request(kind).await.expect("connection closed")
    }

    /// Sends a request and waits for its answer; `None` if the connection closed first.
    pub async fn try_request(&self, kind: client_frame::Kind) -> Option<server_frame::Kind> {
        match self.net.request(kind, WAIT).await {
            Ok(k) => Some(k),
            Err(ConnError::Closed) => None,
            Err(e) => panic!("no answer: {e}"),
        }
    }

    /// The next unsolicited frame.
    pub async fn event(&self) -> server_frame::Kind {
        self.try_event(WAIT).await.expect("no event in time")
    }

    /// The next unsolicited frame, if one comes within `wait`.
    pub async fn try_event(&self, wait: Duration) -> Option<server_frame::Kind> {
        let mut ev = self.events.lock().await;
        tokio::time::timeout(wait, ev.recv())
            .await
            .ok()
            .flatten()
            .and_then(|f| f.kind)
    }

    /// Authenticates as `device` of `account`, signing with `key`; the relay's answer.
    pub async fn authenticate_with(
        &self,
        account: [u8; 32],
        device: u32,
        key: &SigningKey,
    ) -> server_frame::Kind {
        let sign = |exporter: &[u8; 32], challenge: &[u8; 32]| {
            let t = hush_proto::transcripts::relay_auth(exporter, challenge, &account, device);
            key.sign(&t).to_bytes()
        };
        self.net
            .authenticate(account, device, WAIT, sign)
            .await
            .expect("authentication exchange")
    }

    /// This connection's TLS exporter for authentication.
    pub fn exporter(&self) -> [u8; 32] {
        self.net.exporter().unwrap()
    }

    /// A signature of the authentication transcript with `nonce` (of any length).
    pub fn auth_signature(
        &self,
        nonce: &[u8],
        account: [u8; 32],
        device: u32,
        key: &SigningKey,
    ) -> Vec<u8> {
        sign_auth(&self.exporter(), nonce, account, device, key)
    }

    pub async fn authenticate(&self, a: &TestAccount, device: u32) {
        let r = self
            .authenticate_with(a.id(), device, a.device(device))
            .await;
        assert!(matches!(r, server_frame::Kind::Ok(_)), "auth failed: {r:?}");
    }

    /// Creates `a` on the relay and authenticates as its device `device`.
    pub async fn create(&self, a: &TestAccount, device: u32) {
        let r = self
            .request(client_frame::Kind::CreateAccount(api::CreateAccount {
                signed_device_list: a.signed_list(),
            }))
            .await;
        assert!(
            matches!(r, server_frame::Kind::Ok(_)),
            "create failed: {r:?}"
        );
        self.authenticate(a, device).await;
    }

    /// Sends `body` (one envelope per listed device) to `to`'s devices.
    pub async fn send(
        &self,
        client_id: [u8; 16],
        to: [u8; 32],
        devices: &[u32],
        body: &[u8],
    ) -> server_frame::Kind {
        self.try_send(client_id, to, devices, body)
            .await
            .expect("connection closed")
    }

    /// As `send`; `None` if the connection closed first.
    pub async fn try_send(
        &self,
        client_id: [u8; 16],
        to: [u8; 32],
        devices: &[u32],
        body: &[u8],
    ) -> Option<server_frame::Kind> {
        self.try_request(client_frame::Kind::Send(api::Send {
            client_id: client_id.to_vec(),
            targeted: false,
            recipient_account: to.to_vec(),
            envelopes: devices
                .iter()
                .map(|d| api::OutEnvelope {
                    device_id: *d,
                    body: body.to_vec(),
                    delivery_token: Vec::new(),
                })
                .collect(),
        }))
        .await
    }

    pub async fn ack(&self, seqs: Vec<u64>) {
        let r = self
            .request(client_frame::Kind::Ack(api::Ack { seqs }))
            .await;
        assert!(matches!(r, server_frame::Kind::Ok(_)), "{r:?}");
    }

    /// Collects deliveries until the queue-drained marker.
    pub async fn catch_up(&self) -> Vec<api::Deliver> {
        let mut got = Vec::new();
        loop {
            match self.event().await {
                server_frame::Kind::Deliver(d) => got.push(d),
                server_frame::Kind::QueueDrained(_) => return got,
                server_frame::Kind::PreKeysLow(_) => {}
                other => panic!("unexpected during catch-up: {other:?}"),
            }
        }
    }

    /// The next delivery (skipping other unsolicited frames).
    pub async fn next_delivery(&self) -> api::Deliver {
        loop {
            match self.event().await {
                server_frame::Kind::Deliver(d) => return d,
                server_frame::Kind::QueueDrained(_) | server_frame::Kind::PreKeysLow(_) => {}
                other => panic!("unexpected: {other:?}"),
            }
        }
    }

    pub async fn upload_blob(&self, data: &[u8], declared: u64) -> BlobResponse {
        self.upload_named_blob(data, declared, &[], &[]).await
    }

    /// A named upload: the blob gets `id` and `capability` (both empty: random ones).
    pub async fn upload_named_blob(
        &self,
        data: &[u8],
        declared: u64,
        id: &[u8],
        capability: &[u8],
    ) -> BlobResponse {
        let (mut send, mut recv) = self.blob_channel().await;
        frame::write(
            &mut send,
            &BlobRequest {
                kind: Some(blob_request::Kind::Upload(api::BlobUpload {
                    size: declared,
                    id: id.to_vec(),
                    capability: capability.to_vec(),
                })),
            },
        )
        .await
        .unwrap();
        // The relay may refuse before reading everything.
        let _ = send.write_all(data).await;
        let _ = send.shutdown().await;
        tokio::time::timeout(WAIT, frame::read::<BlobResponse, _>(&mut recv, 1 << 16))
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn download_blob(&self, id: &[u8], cap: &[u8]) -> Result<Vec<u8>, api::Error> {
        let (mut send, mut recv) = self.blob_channel().await;
        frame::write(
            &mut send,
            &BlobRequest {
                kind: Some(blob_request::Kind::Download(api::BlobDownload {
                    id: id.to_vec(),
                    capability: cap.to_vec(),
                })),
            },
        )
        .await
        .unwrap();
        let _ = send.shutdown().await;
        let r: BlobResponse = tokio::time::timeout(WAIT, frame::read(&mut recv, 1 << 16))
            .await
            .unwrap()
            .unwrap();
        match r.kind.unwrap() {
            blob_response::Kind::Error(e) => Err(e),
            blob_response::Kind::Found(f) => {
                let mut data = Vec::new();
                tokio::time::timeout(WAIT, recv.read_to_end(&mut data))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(data.len() as u64, f.size);
                Ok(data)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A new blob stream (QUIC) or blob connection (TLS over TCP), as its two halves.
    pub async fn blob_channel(&self) -> (BlobWrite, BlobRead) {
        match self.net.open_tcp_blob().await {
            Some(tls) => {
                let (r, w) = tokio::io::split(tls.expect("a blob connection"));
                (Box::new(w), Box::new(r))
            }
            None => {
                let (w, r) = self.quic().open_bi().await.unwrap();
                (Box::new(w), Box::new(r))
            }
        }
    }

    /// Waits until the relay cuts a blob transfer short (reading whatever came before it), and
    /// checks how: over QUIC the stream is reset with `code` (`limits::blob_reset`); over TCP
    /// the blob connection ends without TLS `close_notify`, which the client reads as an error
    /// (docs/RELAY_PROTOCOL.md §17). Panics if the transfer ends cleanly instead.
    pub async fn blob_cut_short(&self, recv: &mut BlobRead, code: u32) {
        let mut buf = vec![0u8; 64 * 1024];
        let err = tokio::time::timeout(WAIT, async {
            loop {
                match recv.read(&mut buf).await {
                    Ok(0) => panic!("the blob transfer ended cleanly instead of being cut short"),
                    Ok(_) => {}
                    Err(e) => return e,
                }
            }
        })
        .await
        .expect("the blob transfer was not cut short in time");
        if self.transport() == Transport::Quic {
            let reset = err
                .get_ref()
                .and_then(|e| e.downcast_ref::<quinn::ReadError>())
                .cloned();
            match reset {
                Some(quinn::ReadError::Reset(c)) => assert_eq!(c.into_inner(), u64::from(code)),
                other => panic!("expected a reset, got {other:?} ({err})"),
            }
        }
    }

    /// Waits until the relay closes this connection; returns the application close code (`None`
    /// over TCP, which carries none).
    pub async fn closed(&self) -> Option<u64> {
        let Some(conn) = self.net.quic() else {
            tokio::time::timeout(WAIT, self.net.closed()).await.unwrap();
            return None;
        };
        match tokio::time::timeout(WAIT, conn.closed()).await.unwrap() {
            quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
            _ => None,
        }
    }
}

impl Client {
    /// Claims `name` with `proof`; the relay's answer.
    pub async fn claim_username(&self, name: &str, proof: Vec<u8>) -> server_frame::Kind {
        self.request(client_frame::Kind::ClaimUsername(api::ClaimUsername {
            name: name.to_owned(),
            proof,
        }))
        .await
    }

    pub async fn lookup_username(&self, name: &str) -> server_frame::Kind {
        self.request(client_frame::Kind::LookupUsername(api::LookupUsername {
            name: name.to_owned(),
        }))
        .await
    }
}

/// The error code of an answer, or panics if it was not an error.
pub fn error_of(k: &server_frame::Kind) -> (api::ErrorCode, api::Error) {
    match k {
        server_frame::Kind::Error(e) => (e.code(), e.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}
