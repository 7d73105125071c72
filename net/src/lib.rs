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

/// Most one-time keys (of each kind) in one pre-key upload.
pub const MAX_PRE_KEYS_PER_UPLOAD: usize = 200;
