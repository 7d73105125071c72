//! Protocol constants of the client ↔ relay protocol. Operator-tunable limits (sizes, rates,
//! caps) are settings in [`crate::config::Config`]; what is fixed by the protocol is here.

pub use hush_net::ALPN;
pub use hush_net::frame::FRAME_HEADER;

/// Length of an account id (Ed25519 public key).
pub const ACCOUNT_LEN: usize = 32;

/// Length of a send's client-chosen id.
pub const CLIENT_ID_LEN: usize = 16;

/// Length of a delivery token (`SetDeliveryToken`, `OutEnvelope.delivery_token`).
pub const DELIVERY_TOKEN_LEN: usize = 16;

/// Length of the relay's authentication challenge.
pub const CHALLENGE_LEN: usize = 32;

/// Length of the TLS exporter value bound into authentication.
pub const EXPORTER_LEN: usize = 32;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Length of a blob id.
pub const BLOB_ID_LEN: usize = 16;

/// Length of a blob capability.
pub const BLOB_CAPABILITY_LEN: usize = 32;

/// Largest first frame (the `BlobRequest`) of a blob stream, in bytes; a longer one is refused
/// with `TOO_LARGE` before any of it is read.
pub const BLOB_REQUEST_MAX: usize = 1024;

/// Codes the relay resets a blob stream with (QUIC `RESET_STREAM` / `STOP_SENDING`).
pub mod blob_reset {
    /// The blob was deleted (or expired) while being downloaded.
    pub const GONE: u32 = 1;
    /// The stream missed a deadline: its request frame did not arrive within
    /// `blob_request_timeout_ms`, or a chunk was not sent or taken within `blob_chunk_timeout_ms`.
    pub const TIMED_OUT: u32 = 2;
}

/// Longest push endpoint URL accepted.
pub const MAX_PUSH_URL_LEN: usize = 2048;

pub use hush_net::MAX_PRE_KEYS_PER_UPLOAD;

/// The rules for usernames (normalization, length, alphabet) live in one place, shared with
/// clients: [`hush_net::username`].
pub use hush_net::username::{MAX_LEN as USERNAME_MAX_LEN, MIN_LEN as USERNAME_MIN_LEN};

/// Most one-time keys (of each kind) a device may have stored on the relay.
pub const MAX_PRE_KEYS_STORED: usize = 1000;

/// Below this many one-time keys left (of either kind) the device is told to upload more: once
/// when a claim takes its count below, and when it connects while below.
pub const PRE_KEYS_LOW: usize = 10;

/// The `retry_after_ms` of a send refused because a mailbox is full (`QUEUE_FULL`,
/// `SENDER_QUOTA`, `MAILBOX_FULL`, `RELAY_FULL`): room comes back as the recipient reads its mail,
/// which nothing on the relay can predict, so this is a hint not to retry at once.
pub const MAILBOX_FULL_RETRY_AFTER_MS: u64 = 60_000;

/// Envelopes sent to a device per page during catch-up.
pub const CATCH_UP_PAGE: usize = 256;

/// Length in bytes of the relay's QUIC connection IDs, all of it random (`server::bind_endpoint`).
pub const CONNECTION_ID_LEN: usize = 8;

/// Bidirectional streams a client may have open at once (the control stream plus blob streams).
pub const MAX_BIDI_STREAMS: u32 = 16;

/// Frames buffered towards one connection before deliveries wait (back-pressure; a connection
/// that does not read is eventually dropped by its write timeout).
pub const CONNECTION_QUEUE: usize = 1024;

/// Bytes of frames buffered towards one connection at most (with [`CONNECTION_QUEUE`]).
pub const CONNECTION_OUT_BYTES: usize = 2 << 20;

/// Events (ephemeral envelopes, control) queued for one connection; ephemeral ones beyond are
/// dropped.
pub const CONNECTION_EVENTS: usize = 64;

/// Time a write to a client may take before the connection is considered stuck (ms).
pub const WRITE_TIMEOUT_MS: u64 = 10_000;

/// On shutdown, the longest the relay waits for its connections to finish what they have read.
pub const DRAIN_TIMEOUT_MS: u64 = 10_000;

/// On shutdown, after closing every connection, the longest the relay waits for the close to
/// reach the peers. A handshake a client abandoned can otherwise hold the endpoint until its idle
/// timeout.
pub const CLOSE_TIMEOUT_MS: u64 = 2_000;

/// Time from connection to successful authentication (ms).
pub const AUTH_TIMEOUT_MS: u64 = 10_000;

/// Failed authentication attempts allowed on one connection before it is closed.
pub const MAX_AUTH_FAILURES: u32 = 3;

/// QUIC application close codes.
pub mod close {
    /// Normal close.
    pub const NORMAL: u32 = 0;
    /// The relay is draining: reconnect.
    pub const DRAINING: u32 = 1;
    /// The device was revoked.
    pub const REVOKED: u32 = 2;
    /// The device connected again elsewhere: this connection is replaced.
    pub const REPLACED: u32 = 3;
    /// Protocol violation (oversized frame, failed authentication, too slow).
    pub const PROTOCOL: u32 = 4;
    /// The source address block of the connection holds as many connections as the relay
    /// allows one block (`max_connections_per_block`): closed right after the handshake.
    pub const TOO_MANY_CONNECTIONS: u32 = 5;
}

/// Largest device-linking message (bytes).
pub const MAX_PROVISION_BYTES: usize = 8 * 1024;

/// How long a device-linking message is kept (ms), at most: it goes earlier when it is taken
/// or when the connection that left it closes. An unauthenticated connection holding one is
/// kept open this long (instead of [`AUTH_TIMEOUT_MS`]).
pub const PROVISION_TTL_MS: u64 = 10 * 60 * 1000;
/// Link offers (`ProvisionOffer`) one account may have open at once; an offer lasts
/// [`PROVISION_TTL_MS`] and is used up by the `ProvisionPut` it admits.
pub const MAX_LINK_OFFERS_PER_ACCOUNT: usize = 16;
/// Link offers the relay holds at once, over all accounts (in memory, 72 bytes each).
pub const MAX_LINK_OFFERS: usize = 100_000;

/// How long (in received time) the relay remembers a send's client id after queueing it, so that
/// a retry is not queued twice (`store::ids`). In memory only; see [`SEND_IDS_MAX`].
pub const SEND_ID_RETENTION_MS: u64 = 60 * 60 * 1000;

/// Most send ids remembered at once (32 bytes each plus the index): past this the oldest are
/// forgotten early, so the window is at least `SEND_IDS_MAX / sends per second`.
pub const SEND_IDS_MAX: usize = 1 << 20;

/// Requests of one connection handled but not yet answered (waiting for the store) at most; the
/// connection stops reading until one is answered (QUIC flow control pushes back on the client).
pub const MAX_IN_FLIGHT: usize = 256;

/// Operations the store writer applies in one batch at most before flushing.
pub const WRITER_BATCH_MAX: usize = 4096;

/// How long a relay node on a shared (Redis) store uses a cached device list without checking
/// the store's version: a list published through another node is seen here within this. A
/// removed device is cut off at once regardless (its node is told), so this bounds only how long
/// a send here may still be checked against the previous list.
pub const LIST_RECHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// On a shared (Redis) store, how long a node waits before telling a device again that its
/// one-time keys run low (it cannot see an upload made through another node end the spell).
pub const PRE_KEYS_LOW_RETELL: std::time::Duration = std::time::Duration::from_secs(60);

/// Length of a group log's slot (`GroupLogAppend.slot`, `GroupLogRead.slot`): derived by clients
/// from a group secret the relay never sees (RELAY_PROTOCOL.md §15).
pub const GROUP_LOG_SLOT_LEN: usize = 32;

/// Length of a group log's write token (`GroupLogAppend.write_token`).
pub const GROUP_LOG_TOKEN_LEN: usize = 32;

/// The label the write check of a group log is derived under:
/// `SHA-256("Hush-GroupLog-Write" ‖ write_token)`. The relay stores only this.
pub const GROUP_LOG_WRITE_LABEL: &[u8] = b"Hush-GroupLog-Write";

/// Largest group log entry, in bytes: the creation of a group of 2000 members is about 72 KiB
/// before the signed device lists it carries. `TOO_LARGE` beyond; an entry is never empty
/// (`MALFORMED`).
pub const GROUP_LOG_ENTRY_MAX: usize = 128 * 1024;

/// Entries in one group log at most; an append beyond gets `TOO_LARGE`.
pub const GROUP_LOG_MAX_ENTRIES: u64 = 100_000;

/// Bytes of the entries of one group log at most; an append beyond gets `TOO_LARGE`.
pub const GROUP_LOG_MAX_BYTES: u64 = 128 * 1024 * 1024;

/// Entries one `GroupLogRead` returns at most (a smaller `max_entries` returns fewer).
pub const GROUP_LOG_READ_MAX_ENTRIES: usize = 256;

/// Bytes of entries one `GroupLogRead` returns at most, unless its first entry alone is larger
/// (at most [`GROUP_LOG_ENTRY_MAX`]): so an answer fits a frame of 1 MiB.
pub const GROUP_LOG_READ_MAX_BYTES: usize = 512 * 1024;

/// The `retry_after_ms` of an append refused because the relay's group log storage is full
/// (`RELAY_FULL`): only the operator can make room.
pub const GROUP_LOGS_FULL_RETRY_AFTER_MS: u64 = 3_600_000;
