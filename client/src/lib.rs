//! The Hush client engine: drives client-core (the sans-IO protocol) over a QUIC connection to
//! a relay. [`engine::Engine`] is what a messenger (or the FFI) holds; [`conn::RelayConnection`]
//! is one connection.

#![deny(missing_docs)]

pub mod conn;
mod directory;
pub mod engine;
pub mod error;
pub mod messenger;
pub use hush_net::private_fs;
pub mod profile;

pub use engine::{
    ConnectionState, Engine, EngineConfig, Event, GroupDelivery, GroupFailure, LinkOffer,
    NetworkMove,
};
pub use error::{ClientError, Refusal};
pub use messenger::{Conversation, Messenger, MessengerEvent};
