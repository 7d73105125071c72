//! The one error type every call returns, with variants an app can act on.

use hush_client::{ClientError, Refusal};
use hush_core::store::kv::StoreError;
use hush_core::{AuthError, ProtocolError};
use hush_proto::relay_api::ErrorCode;

/// Why a call failed. Kotlin and Swift see it as `HushException`/`HushError` with one case per
/// variant; the message says what happened and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum HushError {
    /// An argument is unusable: an id of the wrong length or not hex, an empty text, a bad
    /// relay address or pin, a username that breaks the rules. Fix the call.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The profile holds no account yet: call `create_account` or `link_device` first.
    #[error("no account: {0}")]
    NoAccount(String),
    /// The profile already holds an account, or the client is already running.
    #[error("already set up: {0}")]
    AlreadySetUp(String),
    /// Not connected to the relay right now; the call may be retried once connected.
    #[error("not connected: {0}")]
    NotConnected(String),
    /// The relay cannot be reached (address, network, or its certificate does not match the pin).
    #[error("relay unreachable: {0}")]
    RelayUnreachable(String),
    /// The relay did not answer in time; try again.
    #[error("timed out: {0}")]
    Timeout(String),
    /// No account goes by this name or id.
    #[error("unknown user: {0}")]
    UnknownUser(String),
    /// The username is held by another account.
    #[error("username taken: {0}")]
    UsernameTaken(String),
    /// A contact's identity changed or could not be verified: compare safety numbers before
    /// trusting the conversation again.
    #[error("identity changed: {0}")]
    IdentityChanged(String),
    /// The relay asks to slow down; the message says how long to wait.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// The thing asked for does not exist (group, message, attachment).
    #[error("not found: {0}")]
    NotFound(String),
    /// This device may not do this (only the account's first device links or removes devices;
    /// only admins change a group; a removed device is refused).
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// A text, file or request over its size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// This account's attachment storage on the relay (or the relay's) is full: space comes back
    /// as older attachments expire; retrying at once does not help.
    #[error("storage quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The relay refused the request for another reason.
    #[error("refused by the relay: {0}")]
    Refused(String),
    /// The at-rest key does not open this profile (a different key from the keystore?).
    #[error("wrong key: {0}")]
    WrongKey(String),
    /// The local storage failed (disk full, permissions, a damaged file).
    #[error("storage: {0}")]
    Storage(String),
    /// The relay or a peer broke the protocol, or data failed its integrity check.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The client has been shut down: make a new one.
    #[error("closed: {0}")]
    Closed(String),
    /// A bug in this library; please report it.
    #[error("internal error: {0}")]
    Internal(String),
}

impl HushError {
    pub(crate) fn invalid(why: impl Into<String>) -> Self {
        Self::InvalidArgument(why.into())
    }

    pub(crate) fn closed() -> Self {
        Self::Closed("the client has been shut down".into())
    }
}

fn refusal(r: &Refusal) -> HushError {
    match r.code {
        ErrorCode::RateLimited => HushError::RateLimited(format!(
            "the relay asks to wait {} ms before trying again",
            r.retry_after_ms
        )),
        ErrorCode::NotFound => HushError::UnknownUser("the relay knows no such account".into()),
        ErrorCode::UsernameTaken => {
            HushError::UsernameTaken("another account holds this name".into())
        }
        ErrorCode::AccountExists => {
            HushError::AlreadySetUp("this account already exists on the relay".into())
        }
        ErrorCode::TooLarge | ErrorCode::QueueFull => HushError::TooLarge(r.message.clone()),
        ErrorCode::BlobQuotaExceeded => HushError::QuotaExceeded(r.message.clone()),
        ErrorCode::SenderQuota | ErrorCode::MailboxFull | ErrorCode::RelayFull => {
            HushError::RateLimited(format!(
                "the recipient's mailbox on the relay is full ({}); the message waits and is sent \
                 again later",
                r.message
            ))
        }
        ErrorCode::LinkTableFull => HushError::RateLimited(
            "the relay has too many device links pending; try linking again shortly".into(),
        ),
        ErrorCode::TooManyConnections => HushError::NotConnected(
            "the relay holds too many connections from this network or account; close other \
             clients or try again shortly"
                .into(),
        ),
        ErrorCode::BlobNotFound => HushError::NotFound(
            "the attachment is no longer on the relay (expired or deleted)".into(),
        ),
        ErrorCode::Draining => {
            HushError::NotConnected("the relay is restarting; try again shortly".into())
        }
        ErrorCode::Unauthenticated | ErrorCode::AuthFailed | ErrorCode::Forbidden => {
            HushError::NotPermitted(format!(
                "the relay refused this device ({}); was it removed from its account?",
                r.message
            ))
        }
        ErrorCode::BadSignature | ErrorCode::StaleDeviceList => {
            HushError::Protocol(format!("the relay rejected a signed item: {}", r.message))
        }
        _ => HushError::Refused(format!("{} ({:?})", r.message, r.code)),
    }
}

fn core(e: &hush_core::Error) -> HushError {
    use hush_core::Error as E;
    match e {
        E::Protocol(
            p @ (ProtocolError::DeviceListConflict(_) | ProtocolError::DeviceListRollback { .. }),
        ) => HushError::IdentityChanged(format!(
            "the contact's device list conflicts with the one seen before ({p}); compare safety numbers"
        )),
        E::Auth(AuthError::IdentityMismatch) => HushError::IdentityChanged(
            "a device's identity key does not match its account's list; compare safety numbers"
                .into(),
        ),
        E::Protocol(ProtocolError::UnknownAccount) => {
            HushError::UnknownUser("no device list is known for this account".into())
        }
        E::Protocol(ProtocolError::UnknownGroup) => {
            HushError::NotFound("this device is not in that group".into())
        }
        E::Protocol(ProtocolError::NotAMember) => {
            HushError::NotPermitted("not a member of the group".into())
        }
        E::Protocol(ProtocolError::Misuse(why) | ProtocolError::NotPermitted(why)) => {
            HushError::NotPermitted((*why).to_owned())
        }
        E::Protocol(p @ (ProtocolError::TooLarge(_) | ProtocolError::TooManyDevices(_))) => {
            HushError::TooLarge(p.to_string())
        }
        other => HushError::Protocol(other.to_string()),
    }
}

fn store(e: &StoreError) -> HushError {
    match e {
        StoreError::WrongKey => {
            HushError::WrongKey("the at-rest key does not open this profile".into())
        }
        s => HushError::Storage(s.to_string()),
    }
}

impl From<ClientError> for HushError {
    fn from(e: ClientError) -> Self {
        match &e {
            ClientError::Unreachable(why) => Self::RelayUnreachable(why.clone()),
            ClientError::Disconnected => {
                Self::NotConnected("the connection to the relay was lost; try again".into())
            }
            ClientError::Timeout => Self::Timeout("the relay did not answer in time".into()),
            ClientError::Refused(r) => refusal(r),
            ClientError::Protocol(why) => Self::Protocol((*why).to_owned()),
            ClientError::Core(c) => core(c),
            ClientError::Store(s) => store(s),
            ClientError::InvalidUsername(u) => Self::InvalidArgument(format!("username: {u}")),
            ClientError::Profile(_) => Self::Storage(e.to_string()),
            ClientError::BadPin(_) => Self::InvalidArgument(e.to_string()),
            ClientError::NoAccount => Self::NoAccount(
                "this profile holds no account: call create_account or link_device".into(),
            ),
            ClientError::AccountExists => {
                Self::AlreadySetUp("this profile already holds an account: call open".into())
            }
            ClientError::NotPermitted(why) => Self::NotPermitted((*why).to_owned()),
            ClientError::NotInGroup => Self::NotFound(e.to_string()),
            ClientError::LinkCodeUnknown => Self::NotFound(e.to_string()),
            ClientError::Config(why) | ClientError::Invalid(why) => {
                Self::InvalidArgument(why.clone())
            }
            ClientError::Closed => Self::closed(),
            ClientError::PinMismatch(addr) => Self::RelayUnreachable(format!(
                "the relay's certificate at {addr} does not match the pinned fingerprint"
            )),
            ClientError::Revoked => Self::NotPermitted(
                "this device was removed from its account; link it again to use it".into(),
            ),
            ClientError::ProfileInUse(dir) => Self::NotPermitted(format!(
                "the profile {dir} is open in another process; close that one first"
            )),
            ClientError::BlobGone => Self::NotFound(
                "the attachment is no longer on the relay (expired or deleted)".into(),
            ),
            ClientError::BlobAltered => Self::Protocol(
                "the attachment was altered: its digest does not match the one its sender sent"
                    .into(),
            ),
            ClientError::Backup(_) => Self::InvalidArgument(e.to_string()),
            ClientError::NoBackup => Self::NotFound(e.to_string()),
            // Not to be retried: the creation completes by itself once connected, and the group
            // then appears (GroupsChanged).
            ClientError::GroupCreationPending(g) => Self::NotConnected(format!(
                "{e}; group {} appears when it does (do not create it again)",
                hex::encode(g.0)
            )),
            // A variant added to the engine later: its own message says what it is.
            #[allow(unreachable_patterns)]
            _ => Self::Protocol(e.to_string()),
        }
    }
}

/// What a listener may answer when handling an event failed; the library logs it and goes on.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum ListenerError {
    /// The listener failed.
    #[error("the listener failed: {reason}")]
    Failed {
        /// Why.
        reason: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for ListenerError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Failed { reason: e.reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: ErrorCode) -> ClientError {
        ClientError::Refused(Refusal {
            code,
            message: "no".into(),
            retry_after_ms: 1500,
            missing_devices: Vec::new(),
            extra_devices: Vec::new(),
            log_head: 0,
        })
    }

    #[test]
    fn engine_errors_map_to_what_an_app_can_act_on() {
        let e = HushError::from(refused(ErrorCode::RateLimited));
        assert!(matches!(e, HushError::RateLimited(_)));
        assert!(matches!(
            HushError::from(refused(ErrorCode::BlobQuotaExceeded)),
            HushError::QuotaExceeded(_)
        ));
        for code in [
            ErrorCode::SenderQuota,
            ErrorCode::MailboxFull,
            ErrorCode::RelayFull,
        ] {
            assert!(matches!(
                HushError::from(refused(code)),
                HushError::RateLimited(_)
            ));
            assert!(refused(code).is_transient() && !refused(code).is_permanent());
        }
        assert!(refused(ErrorCode::BlobQuotaExceeded).is_permanent());
        assert!(matches!(
            HushError::from(refused(ErrorCode::TooManyConnections)),
            HushError::NotConnected(_)
        ));
        assert!(e.to_string().contains("1500 ms"), "{e}");
        assert!(matches!(
            HushError::from(refused(ErrorCode::UsernameTaken)),
            HushError::UsernameTaken(_)
        ));
        assert!(matches!(
            HushError::from(refused(ErrorCode::NotFound)),
            HushError::UnknownUser(_)
        ));
        assert!(matches!(
            HushError::from(ClientError::Disconnected),
            HushError::NotConnected(_)
        ));
        assert!(matches!(
            HushError::from(ClientError::Core(hush_core::Error::Protocol(
                ProtocolError::NotPermitted("group change by a non-admin")
            ))),
            HushError::NotPermitted(_)
        ));
        assert!(matches!(
            HushError::from(ClientError::Unreachable("pin".into())),
            HushError::RelayUnreachable(_)
        ));
        assert!(matches!(
            HushError::from(ClientError::Closed),
            HushError::Closed(_)
        ));
        assert!(matches!(
            HushError::from(ClientError::Core(hush_core::Error::Protocol(
                ProtocolError::DeviceListConflict(3)
            ))),
            HushError::IdentityChanged(_)
        ));
        assert!(matches!(
            HushError::from(ClientError::Store(StoreError::WrongKey)),
            HushError::WrongKey(_)
        ));
        assert!(matches!(
            HushError::from(ClientError::Profile("denied".into())),
            HushError::Storage(_)
        ));
        assert!(matches!(
            HushError::from(ClientError::BlobGone),
            HushError::NotFound(_)
        ));
        assert!(matches!(
            HushError::from(ClientError::BlobAltered),
            HushError::Protocol(_)
        ));
        // A pending creation names its group, so that the app can show it once it appears.
        let pending = HushError::from(ClientError::GroupCreationPending(
            hush_core::sender_key::GroupId([0xab; 32]),
        ));
        assert!(matches!(&pending, HushError::NotConnected(m) if m.contains(&"ab".repeat(32))));
    }

    #[test]
    fn a_failing_foreign_listener_becomes_an_error_not_a_panic() {
        let e = ListenerError::from(uniffi::UnexpectedUniFFICallbackError {
            reason: "boom".into(),
        });
        assert!(e.to_string().contains("boom"));
    }
}
