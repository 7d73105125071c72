//! Hush protocol core.
//!
//! A deterministic, sans-IO state machine: bytes, time (`now`, milliseconds since the Unix epoch) and
//! randomness (`&mut impl CryptoRng`) go in; bytes and events come out. Nothing in the protocol modules
//! opens a socket, reads a clock or calls a global RNG.
//!
//! The specification lives in `docs/PROTOCOL.md`; every protocol limit is in [`consts`].

#![deny(missing_docs)]

pub mod safety;
pub mod sender_key;
pub mod store;

pub mod backup;
pub mod chain;
pub mod consts;
pub mod device;
pub mod device_list;
pub mod error;
pub mod group;
pub mod keys;
pub mod pqxdh;
pub mod prekeys;
pub mod ratchet;
pub mod sealed;
pub mod session;
pub mod username;

pub use device::DeviceError;

pub use error::{AuthError, Error, ProtocolError, Result};
/// For [`kv_store_suite!`] expanded in other crates.
#[cfg(feature = "store-suite")]
#[doc(hidden)]
pub use zeroize as __zeroize;
