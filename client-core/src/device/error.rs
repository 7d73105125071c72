//! The error of the [`Device`](super::Device) facade: a protocol refusal or a store failure.
//!
//! The protocol modules know nothing of the store; their [`Error`] says why input or a call was
//! refused. The facade also reads and commits the store, so its error composes both, and a caller
//! tells a local storage failure from a refusal by the variant alone.

use crate::error::{AuthError, Error, ProtocolError};
use crate::store::kv::StoreError;

/// Result type of the [`Device`](super::Device) facade.
pub type Result<T, E = DeviceError> = std::result::Result<T, E>;

/// Any error of the [`Device`](super::Device) facade.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The protocol refused the input or the call: malformed, not authentic, or against its rules.
    #[error(transparent)]
    Protocol(#[from] Error),
    /// The local store failed; the device's state is as it was before the call.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A backup or its recovery key was refused (PROTOCOL.md §22); nothing was changed.
    #[error("backup: {0}")]
    Backup(#[from] crate::backup::BackupError),
}

impl DeviceError {
    pub(crate) const fn malformed(what: &'static str, reason: &'static str) -> Self {
        Self::Protocol(Error::malformed(what, reason))
    }

    /// The protocol error, if the protocol refused (`None` for a store failure).
    #[must_use]
    pub const fn protocol(&self) -> Option<&Error> {
        match self {
            Self::Protocol(e) => Some(e),
            Self::Store(_) | Self::Backup(_) => None,
        }
    }

    /// Whether a pairwise message that failed with this error may be healed by asking its sender
    /// to send it again (see [`Error::calls_for_retry`]); never for a store failure.
    #[must_use]
    pub const fn calls_for_retry(&self) -> bool {
        match self {
            Self::Protocol(e) => e.calls_for_retry(),
            Self::Store(_) | Self::Backup(_) => false,
        }
    }
}

impl From<AuthError> for DeviceError {
    fn from(e: AuthError) -> Self {
        Self::Protocol(e.into())
    }
}

impl From<ProtocolError> for DeviceError {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e.into())
    }
}
