//! A control connection driven by hand, over either transport: the control stream of a QUIC
//! connection, or the TLS stream of a connection over TCP (docs/RELAY_PROTOCOL.md §17), written
//! and read directly, so that a test can send whatever bytes it likes and watch how the relay
//! ends the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hush_net::client::Transport;
use hush_proto::relay_api::{
    self as api, ClientFrame, ErrorCode, ServerFrame, client_frame, server_frame,
};
use hush_relay::{Running, frame, limits};
use hush_testkit::client::{BlobRead, BlobWrite};
use hush_testkit::{TestAccount, WAIT, sign_auth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest a hand-driven connection waits for the relay.
const BOUND: Duration = Duration::from_secs(30);

/// A TLS client configuration for the relay over TCP: its certificate pinned, ALPN `alpn`.
pub(crate) fn tls_connector(pin: &str, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let tls = hush_net::pin::pinned_client_config(pin, alpn).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(tls))
}

/// A TCP connection from `bind` to `to`, its receive buffer at most `window` bytes when given.
pub(crate) async fn tcp_from(
    bind: SocketAddr,
    to: SocketAddr,
    window: Option<u32>,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(w) = window {
        socket.set_recv_buffer_size(w)?;
    }
    socket.bind(bind)?;
    let stream = tokio::time::timeout(BOUND, socket.connect(to))
        .await
        .expect("TCP connect hung")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The relay's TLS server name for tests.
pub(crate) fn server_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("localhost").unwrap()
}

/// A QUIC client endpoint bound to `bind`, pinned to `pin`, with an optional small receive
/// window (so that a client that reads slowly fills it quickly).
pub(crate) fn quic_endpoint(bind: SocketAddr, pin: &str, window: Option<u32>) -> quinn::Endpoint {
    let tls = hush_relay::tls::pinned_client_config(pin, limits::ALPN).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    if let Some(w) = window {
        transport.stream_receive_window(w.into());
        transport.receive_window((2 * w).into());
    }
    cc.transport_config(Arc::new(transport));
    let mut ep = quinn::Endpoint::client(bind).unwrap();
    ep.set_default_client_config(cc);
    ep
}

/// A control connection driven by hand.
pub(crate) struct Raw {
    /// The QUIC connection and its endpoint; `None` over TCP.
    pub(crate) quic: Option<(quinn::Endpoint, quinn::Connection)>,
    /// The control stream's sending half (over TCP: the TLS stream's).
    pub(crate) send: BlobWrite,
    /// Its receiving half.
    pub(crate) recv: BlobRead,
    exporter: [u8; 32],
    /// Over TCP: the blob key its blob connections send first.
    blob_key: Option<[u8; hush_net::TCP_BLOB_KEY_LEN]>,
    /// Over TCP: where the relay listens and its pin, for blob connections.
    tcp: Option<(SocketAddr, String)>,
}

impl Raw {
    /// Connects over `transport` from 127.0.0.1.
    pub(crate) async fn connect(transport: Transport, r: &Running) -> Self {
        Self::connect_from(transport, r, hush_testkit::relay::any_port(), None).await
    }

    /// Connects over `transport` from `bind`; with `window`, the client's receive window (QUIC)
    /// or socket receive buffer (TCP) is that small.
    pub(crate) async fn connect_from(
        transport: Transport,
        r: &Running,
        bind: SocketAddr,
        window: Option<u32>,
    ) -> Self {
        match transport {
            Transport::Quic => {
                let ep = quic_endpoint(bind, &r.fingerprint, window);
                let conn = tokio::time::timeout(BOUND, ep.connect(r.addr, "localhost").unwrap())
                    .await
                    .expect("handshake hung")
                    .unwrap();
                let (send, recv) = conn.open_bi().await.unwrap();
                let mut exporter = [0u8; 32];
                conn.export_keying_material(
                    &mut exporter,
                    hush_proto::labels::RELAY_AUTH_EXPORTER,
                    b"",
                )
                .unwrap();
                Self {
                    quic: Some((ep, conn)),
                    send: Box::new(send),
                    recv: Box::new(recv),
                    exporter,
                    blob_key: None,
                    tcp: None,
                }
            }
            Transport::Tcp => {
                let to = r.tcp_addr.expect("the relay listens on TCP");
                let stream = tcp_from(bind, to, window).await.unwrap();
                let tls = tokio::time::timeout(
                    BOUND,
                    tls_connector(&r.fingerprint, hush_net::TCP_ALPN)
                        .connect(server_name(), stream),
                )
                .await
                .expect("TLS handshake hung")
                .unwrap();
                let mut exporter = [0u8; 32];
                tls.get_ref()
                    .1
                    .export_keying_material(
                        &mut exporter,
                        hush_proto::labels::RELAY_AUTH_EXPORTER,
                        Some(b""),
                    )
                    .unwrap();
                let mut blob_key = [0u8; hush_net::TCP_BLOB_KEY_LEN];
                tls.get_ref()
                    .1
                    .export_keying_material(&mut blob_key, hush_net::TCP_BLOB_KEY_LABEL, Some(b""))
                    .unwrap();
                let (rd, wr) = tokio::io::split(tls);
                Self {
                    quic: None,
                    send: Box::new(wr),
                    recv: Box::new(rd),
                    exporter,
                    blob_key: Some(blob_key),
                    tcp: Some((to, r.fingerprint.clone())),
                }
            }
        }
    }

    /// Connects, creates an account of one device and authenticates as it.
    pub(crate) async fn authenticated(transport: Transport, r: &Running) -> Self {
        let mut raw = Self::connect(transport, r).await;
        let acc = TestAccount::new(1);
        let created = raw
            .request(
                100,
                client_frame::Kind::CreateAccount(api::CreateAccount {
                    signed_device_list: acc.signed_list(),
                }),
            )
            .await;
        assert!(matches!(created, server_frame::Kind::Ok(_)), "{created:?}");
        raw.authenticate(&acc, 1).await;
        raw
    }

    /// Over TCP: a blob connection for this control connection that has sent its blob key, its
    /// socket's receive buffer at most `window` bytes when given (the kernel would otherwise
    /// take megabytes the client never reads).
    pub(crate) async fn tcp_blob(&self, window: Option<u32>) -> (BlobWrite, BlobRead) {
        let (to, pin) = self.tcp.as_ref().expect("a connection over TCP");
        let stream = tcp_from(hush_testkit::relay::any_port(), *to, window)
            .await
            .unwrap();
        let mut tls = tokio::time::timeout(
            BOUND,
            tls_connector(pin, hush_net::TCP_BLOB_ALPN).connect(server_name(), stream),
        )
        .await
        .expect("TLS handshake hung")
        .unwrap();
        tls.write_all(&self.blob_key.unwrap()).await.unwrap();
        let (rd, wr) = tokio::io::split(tls);
        (Box::new(wr), Box::new(rd))
    }

    /// What carries it.
    pub(crate) fn transport(&self) -> Transport {
        if self.quic.is_some() {
            Transport::Quic
        } else {
            Transport::Tcp
        }
    }

    /// The QUIC connection (panics over TCP).
    pub(crate) fn conn(&self) -> &quinn::Connection {
        &self.quic.as_ref().expect("a QUIC connection").1
    }

    pub(crate) async fn write(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
        self.send.flush().await.unwrap();
    }

    /// Ends the client's side of the control stream (QUIC: finishes the stream; TCP: TLS
    /// `close_notify` and the end of the socket's sending side).
    pub(crate) async fn finish(&mut self) {
        self.send.shutdown().await.unwrap();
    }

    /// The next frame, or `None` once the stream ends (or breaks).
    pub(crate) async fn read(&mut self) -> Option<ServerFrame> {
        tokio::time::timeout(
            BOUND,
            frame::read::<ServerFrame, _>(&mut self.recv, 4 << 20),
        )
        .await
        .expect("nothing from the relay in time")
        .ok()
    }

    pub(crate) async fn request(
        &mut self,
        request_id: u64,
        kind: client_frame::Kind,
    ) -> server_frame::Kind {
        self.write(&frame::encode(&ClientFrame {
            request_id,
            kind: Some(kind),
        }))
        .await;
        loop {
            let f = self.read().await.expect("connection closed");
            if f.request_id == request_id {
                return f.kind.unwrap();
            }
        }
    }

    pub(crate) async fn authenticate(&mut self, a: &TestAccount, device: u32) {
        let server_frame::Kind::Challenge(ch) = self
            .request(1, client_frame::Kind::Hello(api::Hello {}))
            .await
        else {
            panic!("no challenge")
        };
        let signature = sign_auth(&self.exporter, &ch.nonce, a.id(), device, a.device(device));
        let answer = self
            .request(
                2,
                client_frame::Kind::Authenticate(api::Authenticate {
                    account: a.id().to_vec(),
                    device_id: device,
                    signature,
                }),
            )
            .await;
        assert!(matches!(answer, server_frame::Kind::Ok(_)), "{answer:?}");
    }

    /// After a bad frame: the error frame with `code` (unless the close overtakes it, which QUIC
    /// allows: unread stream data is dropped on close), then the protocol-violation close (over
    /// TCP, which has no close codes, the end of the connection).
    pub(crate) async fn refused_and_closed(&mut self, code: ErrorCode) {
        while let Some(f) = self.read().await {
            match f.kind {
                Some(server_frame::Kind::Error(e)) => {
                    assert_eq!(e.code(), code, "{e:?}");
                    assert_eq!(f.request_id, 0);
                    break;
                }
                Some(
                    server_frame::Kind::Deliver(_)
                    | server_frame::Kind::QueueDrained(_)
                    | server_frame::Kind::PreKeysLow(_),
                ) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        self.closed_with(limits::close::PROTOCOL).await;
    }

    /// Reads until the stream ends; returns the error frames sent with request id 0.
    pub(crate) async fn errors_until_closed(&mut self) -> Vec<ErrorCode> {
        let mut codes = Vec::new();
        while let Some(f) = self.read().await {
            if let (0, Some(server_frame::Kind::Error(e))) = (f.request_id, &f.kind) {
                codes.push(e.code());
            }
        }
        codes
    }

    /// Waits until the relay ends the connection; its application close code over QUIC, `None`
    /// over TCP (where the end of the stream is all there is to see).
    pub(crate) async fn closed(&mut self) -> Option<u64> {
        ended(self.quic.as_ref().map(|q| &q.1), &mut self.recv).await
    }

    /// As `closed`, and checks the close code `code` over QUIC.
    pub(crate) async fn closed_with(&mut self, code: u32) {
        let got = self.closed().await;
        if self.transport() == Transport::Quic {
            assert_eq!(got, Some(u64::from(code)), "close code");
        }
    }

    /// Whether the relay has not closed it (over TCP: nothing arrives and the stream has not
    /// ended within 100 ms).
    pub(crate) async fn is_open(&mut self) -> bool {
        match &self.quic {
            Some((_, c)) => c.close_reason().is_none(),
            None => {
                let mut b = [0u8; 1];
                tokio::time::timeout(Duration::from_millis(100), self.recv.read(&mut b))
                    .await
                    .is_err()
            }
        }
    }
}

/// Waits (bounded) until the connection ends: over QUIC its close (the application close code,
/// if any), over TCP the end or break of its stream, whatever arrives before it read and
/// dropped.
pub(crate) async fn ended(quic: Option<&quinn::Connection>, recv: &mut BlobRead) -> Option<u64> {
    match quic {
        Some(conn) => match tokio::time::timeout(BOUND, conn.closed())
            .await
            .expect("not closed in time")
        {
            quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
            _ => None,
        },
        None => {
            let mut buf = vec![0u8; 64 * 1024];
            tokio::time::timeout(BOUND, async {
                loop {
                    match recv.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await
            .expect("not closed in time");
            None
        }
    }
}

/// Waits until the relay has not accepted a TCP connection: it ends it right after the TCP
/// handshake (a cap), or never completes the TLS handshake. `true` if the TLS handshake failed.
pub(crate) async fn tls_refused(bind: SocketAddr, r: &Running, alpn: &[u8]) -> bool {
    let to = r.tcp_addr.expect("the relay listens on TCP");
    let Ok(stream) = tcp_from(bind, to, None).await else {
        return true;
    };
    let attempt = tokio::time::timeout(
        WAIT,
        tls_connector(&r.fingerprint, alpn).connect(server_name(), stream),
    )
    .await
    .expect("the TLS handshake hung");
    attempt.is_err()
}
