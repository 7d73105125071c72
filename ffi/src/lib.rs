//! Hush for mobile apps: UniFFI bindings (Kotlin, Swift, Python) of the messenger.
//!
//! [`HushClient`] wraps one device's `hush_client::Messenger`; [`HushListener`] is implemented
//! by the app and receives [`HushEvent`]s; every call fails with a [`HushError`], never a panic.
//! This crate only converts and delegates: the protocol lives in `hush-core` and `hush-client`.
//! Generating the bindings: see docs/MOBILE.md.

mod client;
mod error;
mod types;

pub use client::{
    HushClient, HushListener, LinkInfo, LinkState, Liveness, MAX_HISTORY_PAGE, MAX_WAIT_MS,
    NetworkMove, Transport, WakeReport,
};
pub use error::{HushError, ListenerError};
pub use types::{
    AccountInfo, ClientConfig, Contact, Conversation, GroupInfo, HushEvent, HushMessage,
    MessageContent, MessageStatus, SafetyNumber,
};

uniffi::setup_scaffolding!();
