//! The engine's errors, grouped by cause.

use hush_proto::relay_api::{self as api, ErrorCode};

/// A refusal by the relay: its error frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub code: ErrorCode,
    /// The relay's explanation (for logs).
    pub message: String,
    /// For `RATE_LIMITED`: how long to wait (ms).
    pub retry_after_ms: u64,
    /// For `DEVICE_MISMATCH`: devices on the recipient's list that got no envelope.
    pub missing_devices: Vec<u32>,
    /// For `DEVICE_MISMATCH`: devices given an envelope that are not on the list.
    pub extra_devices: Vec<u32>,
    /// For `LOG_CONFLICT`: the number of the group log's last entry.
    pub log_head: u64,
}

impl From<api::Error> for Refusal {
    fn from(e: api::Error) -> Self {
        Self {
            code: e.code(),
            message: e.message,
            retry_after_ms: e.retry_after_ms,
            missing_devices: e.missing_devices,
            extra_devices: e.extra_devices,
            log_head: e.log_head,
        }
    }
}

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The relay cannot be reached (address, network, TLS pin).
    #[error("relay unreachable: {0}")]
    Unreachable(String),
    /// The connection to the relay was lost; the operation may be retried.
    #[error("disconnected from the relay")]
    Disconnected,
    /// The relay did not answer in time.
    #[error("the relay did not answer in time")]
    Timeout,
    /// The relay refused the request.
    #[error("refused by the relay: {} ({:?})", .0.message, .0.code)]
    Refused(Refusal),
    /// The relay answered something the protocol does not allow.
    #[error("relay protocol violation: {0}")]
    Protocol(&'static str),
    /// The protocol core refused (bad signature, unknown account, ...).
    #[error(transparent)]
    Core(#[from] hush_core::Error),
    /// The local store failed (disk, corruption, a commit whose outcome is unknown); what was
    /// asked may succeed once the store is usable again.
    #[error("store: {0}")]
    Store(#[from] hush_core::store::kv::StoreError),
    /// A username that breaks the directory's rules (`hush_net::username`).
    #[error("invalid username: {0}")]
    InvalidUsername(#[from] hush_net::username::UsernameError),
    /// The engine's settings are unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The relay pin is not a certificate fingerprint (64 hex digits).
    #[error("relay pin: {0}")]
    BadPin(String),
    /// The profile directory cannot be created, read or written.
    #[error("profile directory: {0}")]
    Profile(String),
    /// The profile holds no account: create one or link this device first.
    #[error("this profile holds no account")]
    NoAccount,
    /// The profile already holds an account: open it instead.
    #[error("this profile already holds an account")]
    AccountExists,
    /// This device may not do what was asked (e.g. only the account's first device removes
    /// devices); nothing was changed.
    #[error("{0}")]
    NotPermitted(&'static str),
    /// The conversation is a group this device is not in (or does not know).
    #[error("this device is not in that group")]
    NotInGroup,
    /// What the caller asked for cannot be done as asked (a text over the size limit, a
    /// message or group this device does not have); nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// A link code no device offers: used already, expired, or mistyped.
    #[error(
        "no device offers this link code: it was used already, it expired (codes last 10 minutes), or it is mistyped"
    )]
    LinkCodeUnknown,
    /// The engine has been shut down.
    #[error("the engine is shut down")]
    Closed,
    /// The relay at this address presented a certificate other than the pinned one (a wrong
    /// pin, or someone else answering there).
    #[error("the relay's certificate at {0} does not match the pinned fingerprint")]
    PinMismatch(String),
    /// This device was removed from its account (the relay no longer lets it in).
    #[error("this device was removed from its account")]
    Revoked,
    /// The profile's store is held by another process (another app instance, another `hush`).
    #[error("the profile {0} is open in another process")]
    ProfileInUse(String),
    /// The attachment is no longer on the relay: it expired or was deleted (the relay answers
    /// `BLOB_NOT_FOUND` for these and for a wrong capability alike, or resets a download when
    /// the blob goes meanwhile).
    #[error("the file is no longer on the relay (expired or deleted)")]
    BlobGone,
    /// The attachment's bytes are not the ones its sender uploaded: their digest does not match
    /// the one in the message.
    #[error("the file was altered: its digest does not match the one its sender sent")]
    BlobAltered,
    /// A backup, a history transfer or a recovery key was refused: a typo in the key, the wrong
    /// key, an altered or truncated archive (docs/PROTOCOL.md §22); nothing was changed.
    #[error(transparent)]
    Backup(#[from] hush_core::backup::BackupError),
    /// The relay holds no backup for this recovery key (none was made, or it expired).
    #[error("the relay holds no backup for this recovery key (none was made, or it expired)")]
    NoBackup,
    /// A group was created, but whether the relay stored its creation could not be told in
    /// time (the connection was lost around the append). The creation is kept on this device and
    /// completes by itself on a later connection: the group then appears (`GroupsChanged`) under
    /// this id. Do not create it again.
    #[error(
        "the group's creation was not confirmed by the relay yet; it completes by itself once connected"
    )]
    GroupCreationPending(hush_core::sender_key::GroupId),
}

impl From<hush_core::DeviceError> for ClientError {
    fn from(e: hush_core::DeviceError) -> Self {
        match e {
            hush_core::DeviceError::Protocol(e) => Self::Core(e),
            hush_core::DeviceError::Store(e) => Self::Store(e),
            hush_core::DeviceError::Backup(e) => Self::Backup(e),
        }
    }
}

impl ClientError {
    pub(crate) fn unreachable(e: impl std::fmt::Display) -> Self {
        Self::Unreachable(e.to_string())
    }

    /// Whether sending the same thing again can never succeed by itself: the protocol or the
    /// relay refused it for what it is (not a group member, unknown account, too large, a device
    /// list that does not verify), not for the state of the network, the relay or the disk.
    /// An outbox gives up on such a message and tells the user.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Core(_)
            | Self::InvalidUsername(_)
            | Self::Config(_)
            | Self::BadPin(_)
            | Self::NoAccount
            | Self::AccountExists
            | Self::NotPermitted(_)
            | Self::NotInGroup
            | Self::Invalid(_)
            | Self::LinkCodeUnknown
            | Self::Revoked
            | Self::BlobGone
            | Self::BlobAltered
            | Self::Backup(_)
            | Self::NoBackup => true,
            Self::Refused(r) => matches!(
                r.code,
                ErrorCode::Malformed
                    | ErrorCode::Forbidden
                    | ErrorCode::NotFound
                    | ErrorCode::BadSignature
                    | ErrorCode::TooLarge
                    | ErrorCode::TooManyDevices
                    | ErrorCode::UnknownRequest
                    | ErrorCode::BlobQuotaExceeded
                    | ErrorCode::DeviceRevoked
                    // A delivery token refused: the recipient rotated its key (it blocked this
                    // account), and waiting will not bring the new one.
                    | ErrorCode::UnauthorizedSend
            ),
            _ => false,
        }
    }

    /// Whether trying again later (after reconnecting) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) | Self::Disconnected | Self::Timeout => true,
            Self::Refused(r) => matches!(
                r.code,
                ErrorCode::RateLimited
                    | ErrorCode::Draining
                    | ErrorCode::Internal
                    | ErrorCode::QueueFull
                    | ErrorCode::SenderQuota
                    | ErrorCode::MailboxFull
                    | ErrorCode::RelayFull
                    | ErrorCode::LinkTableFull
                    | ErrorCode::TooManyConnections
            ),
            _ => false,
        }
    }
}
