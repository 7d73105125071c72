//! A raw client of the relay protocol for tests: QUIC with a pinned certificate, the session
//! stream with request/response matching, unsolicited frames, blob streams. It sends whatever a
//! test asks, malformed frames included, and panics where a test would fail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use hush_net::{ALPN, frame};
use hush_proto::labels;
use hush_proto::relay_api::{
    self as api, BlobRequest, BlobResponse, ClientFrame, ServerFrame, blob_request, blob_response,
    client_frame, server_frame,
};
use tokio::sync::{mpsc, oneshot};

use crate::WAIT;
use crate::account::{TestAccount, sign_auth};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<ServerFrame>>>>;

/// One connection to the relay.
pub struct Client {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<ServerFrame>>,
    next: AtomicU64,
}

impl Client {
    pub async fn connect(addr: SocketAddr, pin: &str) -> Self {
        Self::try_connect(addr, pin).await.expect("cannot connect")
    }

    /// As `connect`; `None` if the relay cannot be reached (or stops answering) within 5 s.
    pub async fn try_connect(addr: SocketAddr, pin: &str) -> Option<Self> {
        Self::try_connect_from("127.0.0.1:0".parse().unwrap(), addr, pin).await
    }

    /// As `try_connect`, from the local address `bind` (any 127.x.y.z is loopback, so tests
    /// can connect from several address blocks).
    pub async fn try_connect_from(bind: SocketAddr, addr: SocketAddr, pin: &str) -> Option<Self> {
        let tls = hush_net::pin::pinned_client_config(pin, ALPN).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(5)));
        cc.transport_config(Arc::new(transport));
        let mut endpoint = quinn::Endpoint::client(bind).unwrap();
        endpoint.set_default_client_config(cc);
        let connecting = endpoint.connect(addr, "localhost").ok()?;
        let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .ok()?
            .ok()?;
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(b) = out_rx.recv().await {
                if send.write_all(&b).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
        });
        let pending: Pending = Arc::default();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let p = Arc::clone(&pending);
        tokio::spawn(async move {
            while let Ok(f) = frame::read::<ServerFrame, _>(&mut recv, 4 << 20).await {
                let waiter = if f.request_id == 0 {
                    None
                } else {
                    p.lock().unwrap().remove(&f.request_id)
                };
                match waiter {
                    Some(w) => {
                        let _ = w.send(f);
                    }
                    None => {
                        let _ = ev_tx.send(f);
                    }
                }
            }
        });
        Some(Self {
            endpoint,
            conn,
            out,
            pending,
            events: tokio::sync::Mutex::new(ev_rx),
            next: AtomicU64::new(1),
        })
    }

    /// Sends raw bytes on the session stream.
    pub fn send_raw(&self, bytes: Vec<u8>) {
        let _ = self.out.send(bytes);
    }

    /// Sends a request and waits for its answer.
    pub async fn request(&self, kind: client_frame::Kind) -> server_frame::Kind {
        self.try_request(kind).await.expect("connection closed")
    }

    /// Sends a request and waits for its answer; `None` if the connection closed first.
    pub async fn try_request(&self, kind: client_frame::Kind) -> Option<server_frame::Kind> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.send_raw(frame::encode(&ClientFrame {
            request_id: id,
            kind: Some(kind),
        }));
        let conn = self.conn.clone();
        tokio::select! {
            r = tokio::time::timeout(WAIT, rx) => {
                Some(r.expect("no answer in time").ok()?.kind.expect("empty answer"))
            }
            _ = conn.closed() => None,
        }
    }

    /// The next unsolicited frame.
    pub async fn event(&self) -> server_frame::Kind {
        self.try_event(WAIT).await.expect("no event in time")
    }

    pub async fn try_event(&self, wait: Duration) -> Option<server_frame::Kind> {
        let mut ev = self.events.lock().await;
        tokio::time::timeout(wait, ev.recv())
            .await
            .ok()
            .flatten()
            .and_then(|f| f.kind)
    }

    /// Authenticates as `device` of `account`, signing with `key`.
    pub async fn authenticate_with(
        &self,
        account: [u8; 32],
        device: u32,
        key: &SigningKey,
    ) -> server_frame::Kind {
        let server_frame::Kind::Challenge(ch) =
            self.request(client_frame::Kind::Hello(api::Hello {})).await
        else {
            panic!("no challenge")
        };
        let sig = self.auth_signature(&ch.nonce, account, device, key);
        self.request(client_frame::Kind::Authenticate(api::Authenticate {
            account: account.to_vec(),
            device_id: device,
            signature: sig,
        }))
        .await
    }

    /// This connection's TLS exporter for authentication.
    pub fn exporter(&self) -> [u8; 32] {
        let mut exporter = [0u8; 32];
        self.conn
            .export_keying_material(&mut exporter, labels::RELAY_AUTH_EXPORTER, b"")
            .unwrap();
        exporter
    }

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
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        frame::write(
            &mut send,
            &BlobRequest {
                kind: Some(blob_request::Kind::Upload(api::BlobUpload {
                    size: declared,
                })),
            },
        )
        .await
        .unwrap();
        // The relay may refuse before reading everything.
        let _ = send.write_all(data).await;
        let _ = send.finish();
        tokio::time::timeout(WAIT, frame::read::<BlobResponse, _>(&mut recv, 1 << 16))
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn download_blob(&self, id: &[u8], cap: &[u8]) -> Result<Vec<u8>, api::Error> {
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
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
        let _ = send.finish();
        let r: BlobResponse = tokio::time::timeout(WAIT, frame::read(&mut recv, 1 << 16))
            .await
            .unwrap()
            .unwrap();
        match r.kind.unwrap() {
            blob_response::Kind::Error(e) => Err(e),
            blob_response::Kind::Found(f) => {
                let data = recv.read_to_end(200 << 20).await.unwrap();
                assert_eq!(data.len() as u64, f.size);
                Ok(data)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Waits until the relay closes this connection; returns the application close code.
    pub async fn closed(&self) -> Option<u64> {
        match tokio::time::timeout(WAIT, self.conn.closed())
            .await
            .unwrap()
        {
            quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
            _ => None,
        }
    }
}

impl Client {
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
