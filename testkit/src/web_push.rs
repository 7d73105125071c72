//! The receiving side of WebPush, for tests: a subscription (a P-256 key pair and an auth
//! secret), a loopback HTTP endpoint that hands every POST to the test, decryption of what
//! arrives (RFC 8291 and RFC 8188, written here from the RFCs independently of the relay's
//! sealing code), and the check of its VAPID token (RFC 8292).

use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hkdf::Hkdf;
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A WebPush subscription's private side.
pub struct Subscriber {
    secret: p256::SecretKey,
    /// The authentication secret shared with the application server.
    pub auth: [u8; 16],
}

impl Subscriber {
    /// A subscription whose private key and auth secret follow from `seed` (1 to 200).
    pub fn new(seed: u8) -> Self {
        let mut scalar = [seed; 32];
        scalar[0] = 0x11;
        Self {
            secret: p256::SecretKey::from_slice(&scalar).unwrap(),
            auth: [seed.wrapping_mul(7); 16],
        }
    }

    /// The subscription's public key as registered: the uncompressed point (65 bytes).
    pub fn p256dh(&self) -> Vec<u8> {
        self.secret.public_key().to_sec1_bytes().to_vec()
    }

    /// Decrypts an `aes128gcm` message of one record sent to this subscription; returns the
    /// content (padding and delimiter removed) and the record size of its header. Panics if
    /// the message does not decrypt.
    pub fn open(&self, body: &[u8]) -> (Vec<u8>, u32) {
        assert!(body.len() > 86 + 16, "message shorter than its header");
        let salt = &body[..16];
        let rs = u32::from_be_bytes(body[16..20].try_into().unwrap());
        assert_eq!(body[20], 65, "key id is the sender's public key");
        let as_public = &body[21..86];
        let sender = p256::PublicKey::from_sec1_bytes(as_public).unwrap();
        let shared = self.secret.diffie_hellman(&sender);
        let mut info = b"WebPush: info\0".to_vec();
        info.extend_from_slice(&self.p256dh());
        info.extend_from_slice(as_public);
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&self.auth), shared.raw_secret_bytes())
            .expand(&info, &mut ikm)
            .unwrap();
        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let mut cek = [0u8; 16];
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
            .unwrap();
        let mut nonce = [0u8; 12];
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
            .unwrap();
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).unwrap());
        let mut record = body[86..].to_vec();
        assert!(
            record.len() <= rs as usize,
            "one record of at most rs bytes"
        );
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut record,
            )
            .expect("the message does not decrypt for this subscription");
        let end = plain
            .iter()
            .rposition(|&b| b != 0)
            .expect("no padding delimiter");
        assert_eq!(plain[end], 2, "the delimiter of a last record");
        (plain[..end].to_vec(), rs)
    }
}

/// The claims of a checked VAPID token, and the key that signed it.
#[derive(Debug)]
pub struct VapidToken {
    /// `aud`.
    pub aud: String,
    /// `exp` (Unix seconds).
    pub exp: u64,
    /// `sub`, if present.
    pub sub: Option<String>,
    /// `k`: the signer's public key (65 bytes).
    pub key: Vec<u8>,
}

/// Parses `Authorization: vapid t=<JWT>, k=<key>`, checks the JWT's ES256 signature against
/// `k` and its header, and returns the claims. Panics on anything malformed or a bad signature.
pub fn verify_vapid(authorization: &str) -> VapidToken {
    let rest = authorization
        .strip_prefix("vapid ")
        .expect("vapid authorization scheme");
    let mut token = None;
    let mut key = None;
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=').unwrap();
        match name {
            "t" => token = Some(value.to_owned()),
            "k" => key = Some(B64.decode(value).unwrap()),
            other => panic!("unexpected vapid parameter {other}"),
        }
    }
    let (token, key) = (token.unwrap(), key.unwrap());
    assert_eq!(key.len(), 65);
    let (input, signature) = token.rsplit_once('.').unwrap();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key)
        .verify(input.as_bytes(), &B64.decode(signature).unwrap())
        .expect("VAPID signature does not verify against k");
    let (header, claims) = input.split_once('.').unwrap();
    let header: serde_json::Value = serde_json::from_slice(&B64.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    let claims: serde_json::Value = serde_json::from_slice(&B64.decode(claims).unwrap()).unwrap();
    VapidToken {
        aud: claims["aud"].as_str().unwrap().to_owned(),
        exp: claims["exp"].as_u64().unwrap(),
        sub: claims.get("sub").map(|s| s.as_str().unwrap().to_owned()),
        key,
    }
}

/// One POST the endpoint received.
#[derive(Debug)]
pub struct Post {
    /// Method, as sent.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Header fields, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Post {
    /// The value of header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 endpoint on 127.0.0.1 answering every request `201 Created` and handing it to
/// the test. Ends when the receiver is dropped.
pub async fn endpoint() -> (SocketAddr, mpsc::UnboundedReceiver<Post>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                let (head_end, length) = loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        break (end, length);
                    }
                };
                while buf.len() < head_end + 4 + length {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
                let mut lines = head.split("\r\n");
                let mut request_line = lines.next().unwrap().split(' ');
                let method = request_line.next().unwrap().to_owned();
                let target = request_line.next().unwrap().to_owned();
                let headers = lines
                    .map(|l| {
                        let (n, v) = l.split_once(':').unwrap();
                        (n.to_ascii_lowercase(), v.trim().to_owned())
                    })
                    .collect();
                let body = buf[head_end + 4..head_end + 4 + length].to_vec();
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                let _ = stream.shutdown().await;
                let _ = tx.send(Post {
                    method,
                    target,
                    headers,
                    body,
                });
            });
        }
    });
    (addr, rx)
}
