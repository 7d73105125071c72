//! The blind Hush relay.
//!
//! It stores only public pre-keys, signed device lists and opaque encrypted envelopes, and never
//! sees plaintext or private keys. This crate never depends on client-core.
//!
//! Present so far: the storage layer ([`store`]): one trait per concern (accounts, pre-keys,
//! mailboxes), an in-memory and a sled implementation, and one test-suite run against both. The
//! QUIC transport, authentication, push, blobs and operations come next.

#![deny(missing_docs)]

pub mod store;
