//! What Hush clients and the relay must agree on below the protocol messages: the frame codec
//! and the pinned-certificate TLS configuration of clients, plus the protocol's ALPN and close
//! codes and the rules for usernames ([`username`]); and the one client side of a relay
//! connection ([`client`]) that the engine, the load generator and the tests all use. Small and free of storage or server code, so
//! mobile clients can link it.

#![deny(missing_docs)]

pub mod client;
pub mod frame;
pub mod pin;
pub mod private_fs;
pub mod username;

/// ALPN of the client ↔ relay protocol, version 1.
pub const ALPN: &[u8] = b"hush/1";

/// ALPN of the same protocol over TLS 1.3 on TCP, for networks that block UDP
/// (docs/RELAY_PROTOCOL.md §17): the TLS connection is the control stream.
pub const TCP_ALPN: &[u8] = b"hush-tcp/1";

/// ALPN of a blob connection over TLS on TCP: it starts with the blob key of its control
/// connection, then carries one blob transfer as a QUIC blob stream does
/// (docs/RELAY_PROTOCOL.md §17).
pub const TCP_BLOB_ALPN: &[u8] = b"hush-tcp-blob/1";

/// Label of the TLS exporter (RFC 8446 §7.5, empty context, [`TCP_BLOB_KEY_LEN`] bytes) of a
/// control connection over TCP that its blob connections present.
pub const TCP_BLOB_KEY_LABEL: &[u8] = b"EXPORTER-hush-tcp-blob-v1";

/// Length of a blob key.
pub const TCP_BLOB_KEY_LEN: usize = 32;

/// Most one-time keys (of each kind) in one pre-key upload.
pub const MAX_PRE_KEYS_PER_UPLOAD: usize = 200;
