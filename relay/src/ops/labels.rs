//! The labels of the relay's labelled metrics: why a request was refused, why a connection
//! timed out, which one-time key limit withheld keys. Each is a closed set, rendered in full
//! (zeros included) so that a dashboard sees every series from the first scrape.

use hush_proto::relay_api::ErrorCode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Why the relay refused a request or a connection: the `reason` label of `refusals_total`.
/// Each error code has a reason of its own ([`RefusalReason::of`] matches every code, so a new code
/// cannot be added without one); [`RefusalReason::ConnectionCap`] is the relay-wide connection cap,
/// which refuses before any code can be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// `MALFORMED`: the request could not be decoded or a field is out of range.
    Malformed,
    /// `UNAUTHENTICATED`: the request needs an authenticated connection.
    Unauthenticated,
    /// `AUTH_FAILED`: authentication was tried and failed.
    AuthFailed,
    /// `FORBIDDEN`: the authenticated device may not do this.
    Forbidden,
    /// `NOT_FOUND`: unknown account, device, pre-keys, username or link message.
    NotFound,
    /// `ACCOUNT_EXISTS`.
    AccountExists,
    /// `STALE_DEVICE_LIST`: a device list not newer than the stored one.
    StaleDeviceList,
    /// `BAD_SIGNATURE`: a signed item does not verify.
    BadSignature,
    /// `DEVICE_MISMATCH`: a send's devices differ from the recipient's list.
    DeviceMismatch,
    /// `RATE_LIMITED`: a rate limit or a per-block cap was hit.
    RateLimited,
    /// `TOO_LARGE`: the request or its payload was too large.
    TooLarge,
    /// `QUEUE_FULL`: the recipient's queue is full.
    QueueFull,
    /// `TOO_MANY_DEVICES`: the account has too many devices.
    TooManyDevices,
    /// `UNKNOWN_REQUEST`: an empty or unknown request.
    UnknownRequest,
    /// `DRAINING`: the relay is draining for shutdown.
    Draining,
    /// `INTERNAL`: a storage failure.
    Internal,
    /// `BLOB_NOT_FOUND`.
    BlobNotFound,
    /// `USERNAME_TAKEN`: a username claim for a name another account holds.
    UsernameTaken,
    /// `SENDER_QUOTA`: the sender's share of a device queue is used up.
    SenderQuota,
    /// `MAILBOX_FULL`: the recipient account's mailbox is at its byte cap.
    MailboxFull,
    /// `RELAY_FULL`: the relay's mailbox storage is at its cap.
    RelayFull,
    /// `BLOB_QUOTA_EXCEEDED`: blob storage of the account or the relay is at its cap.
    BlobQuota,
    /// `LINK_TABLE_FULL`: the relay's table of pending device links is full.
    LinkTableFull,
    /// `ALREADY_AUTHENTICATED`: authentication on an authenticated connection.
    AlreadyAuthenticated,
    /// `TOO_MANY_CONNECTIONS`: the address block's or the account's connection cap (a
    /// connection closed with the close code of that name counts here too).
    TooManyConnections,
    /// `DEVICE_REVOKED`: authentication by a device that is not on its account's list.
    DeviceRevoked,
    /// `UNAUTHORIZED_SEND`: a sealed send without the recipient device's delivery token.
    UnauthorizedSend,
    /// `LOG_CONFLICT`: a group log append whose number is not the head + 1.
    LogConflict,
    /// The relay-wide connection cap was reached (refused during the handshake).
    ConnectionCap,
    /// An error frame without a code (never sent by this relay).
    Unspecified,
}

impl RefusalReason {
    /// Every reason, in rendering order.
    pub const ALL: [RefusalReason; 30] = [
        RefusalReason::Malformed,
        RefusalReason::Unauthenticated,
        RefusalReason::AuthFailed,
        RefusalReason::Forbidden,
        RefusalReason::NotFound,
        RefusalReason::AccountExists,
        RefusalReason::StaleDeviceList,
        RefusalReason::BadSignature,
        RefusalReason::DeviceMismatch,
        RefusalReason::RateLimited,
        RefusalReason::TooLarge,
        RefusalReason::QueueFull,
        RefusalReason::TooManyDevices,
        RefusalReason::UnknownRequest,
        RefusalReason::Draining,
        RefusalReason::Internal,
        RefusalReason::BlobNotFound,
        RefusalReason::UsernameTaken,
        RefusalReason::SenderQuota,
        RefusalReason::MailboxFull,
        RefusalReason::RelayFull,
        RefusalReason::BlobQuota,
        RefusalReason::LinkTableFull,
        RefusalReason::AlreadyAuthenticated,
        RefusalReason::TooManyConnections,
        RefusalReason::DeviceRevoked,
        RefusalReason::UnauthorizedSend,
        RefusalReason::LogConflict,
        RefusalReason::ConnectionCap,
        RefusalReason::Unspecified,
    ];

    /// The reason of a refusal with `code`.
    pub fn of(code: ErrorCode) -> Self {
        match code {
            ErrorCode::Malformed => RefusalReason::Malformed,
            ErrorCode::Unauthenticated => RefusalReason::Unauthenticated,
            ErrorCode::AuthFailed => RefusalReason::AuthFailed,
            ErrorCode::Forbidden => RefusalReason::Forbidden,
            ErrorCode::NotFound => RefusalReason::NotFound,
            ErrorCode::AccountExists => RefusalReason::AccountExists,
            ErrorCode::StaleDeviceList => RefusalReason::StaleDeviceList,
            ErrorCode::BadSignature => RefusalReason::BadSignature,
            ErrorCode::DeviceMismatch => RefusalReason::DeviceMismatch,
            ErrorCode::RateLimited => RefusalReason::RateLimited,
            ErrorCode::TooLarge => RefusalReason::TooLarge,
            ErrorCode::QueueFull => RefusalReason::QueueFull,
            ErrorCode::TooManyDevices => RefusalReason::TooManyDevices,
            ErrorCode::UnknownRequest => RefusalReason::UnknownRequest,
            ErrorCode::Draining => RefusalReason::Draining,
            ErrorCode::Internal => RefusalReason::Internal,
            ErrorCode::BlobNotFound => RefusalReason::BlobNotFound,
            ErrorCode::UsernameTaken => RefusalReason::UsernameTaken,
            ErrorCode::SenderQuota => RefusalReason::SenderQuota,
            ErrorCode::MailboxFull => RefusalReason::MailboxFull,
            ErrorCode::RelayFull => RefusalReason::RelayFull,
            ErrorCode::BlobQuotaExceeded => RefusalReason::BlobQuota,
            ErrorCode::LinkTableFull => RefusalReason::LinkTableFull,
            ErrorCode::AlreadyAuthenticated => RefusalReason::AlreadyAuthenticated,
            ErrorCode::TooManyConnections => RefusalReason::TooManyConnections,
            ErrorCode::DeviceRevoked => RefusalReason::DeviceRevoked,
            ErrorCode::UnauthorizedSend => RefusalReason::UnauthorizedSend,
            ErrorCode::LogConflict => RefusalReason::LogConflict,
            ErrorCode::Unspecified => RefusalReason::Unspecified,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Malformed => "malformed",
            RefusalReason::Unauthenticated => "unauthenticated",
            RefusalReason::AuthFailed => "auth_failed",
            RefusalReason::Forbidden => "forbidden",
            RefusalReason::NotFound => "not_found",
            RefusalReason::AccountExists => "account_exists",
            RefusalReason::StaleDeviceList => "stale_device_list",
            RefusalReason::BadSignature => "bad_signature",
            RefusalReason::DeviceMismatch => "device_mismatch",
            RefusalReason::RateLimited => "rate_limited",
            RefusalReason::TooLarge => "too_large",
            RefusalReason::QueueFull => "queue_full",
            RefusalReason::TooManyDevices => "too_many_devices",
            RefusalReason::UnknownRequest => "unknown_request",
            RefusalReason::Draining => "draining",
            RefusalReason::Internal => "internal",
            RefusalReason::BlobNotFound => "blob_not_found",
            RefusalReason::UsernameTaken => "username_taken",
            RefusalReason::SenderQuota => "sender_quota",
            RefusalReason::MailboxFull => "mailbox_full",
            RefusalReason::RelayFull => "relay_full",
            RefusalReason::BlobQuota => "blob_quota",
            RefusalReason::LinkTableFull => "link_table_full",
            RefusalReason::AlreadyAuthenticated => "already_authenticated",
            RefusalReason::TooManyConnections => "too_many_connections",
            RefusalReason::DeviceRevoked => "device_revoked",
            RefusalReason::UnauthorizedSend => "unauthorized_send",
            RefusalReason::LogConflict => "log_conflict",
            RefusalReason::ConnectionCap => "connection_cap",
            RefusalReason::Unspecified => "unspecified",
        }
    }
}

/// Why the relay closed a connection on a deadline: the `kind` label of
/// `connection_timeouts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timeout {
    /// The connection did not authenticate in time (and held no pending link).
    Auth,
    /// A frame on the control stream did not arrive whole within its deadline.
    Frame,
    /// The client did not take what the relay wrote on the control stream.
    Write,
    /// A connection over TLS on TCP sent nothing for the idle timeout.
    Idle,
}

impl Timeout {
    /// Every kind, in rendering order.
    pub const ALL: [Timeout; 4] = [Timeout::Auth, Timeout::Frame, Timeout::Write, Timeout::Idle];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Timeout::Auth => "auth",
            Timeout::Frame => "frame",
            Timeout::Write => "write",
            Timeout::Idle => "idle",
        }
    }
}

/// Which transport carries a connection: the `transport` label of
/// `connections_by_transport_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// QUIC (UDP).
    Quic,
    /// TLS 1.3 over TCP.
    Tcp,
}

impl Transport {
    /// Every transport, in rendering order.
    pub const ALL: [Transport; 2] = [Transport::Quic, Transport::Tcp];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

/// Which one-time key limit kept one-time keys out of a bundle: the `limit` label of
/// `one_time_keys_withheld_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyLimit {
    /// Per target device.
    Target,
    /// Per (requesting account, target account).
    Pair,
    /// Per requesting account.
    Requester,
}

impl KeyLimit {
    /// Every limit, in rendering order.
    pub const ALL: [KeyLimit; 3] = [KeyLimit::Target, KeyLimit::Pair, KeyLimit::Requester];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyLimit::Target => "target",
            KeyLimit::Pair => "pair",
            KeyLimit::Requester => "requester",
        }
    }
}

/// Label values written as their `as_str` form.
macro_rules! label_value {
    ($($ty:ty),*) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )*};
}

label_value!(RefusalReason, Timeout, KeyLimit, Transport);

/// The label set of `refusals_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: RefusalReason,
}

/// The label set of `connection_timeouts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Which deadline.
    pub kind: Timeout,
}

/// The label set of `connections_by_transport_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// Which transport.
    pub transport: Transport,
}

/// The label set of `one_time_keys_withheld_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// Which limit.
    pub limit: KeyLimit,
}

/// A family of counters over a closed set of labels, every one present from the start.
macro_rules! closed_family {
    ($(#[$doc:meta])* $name:ident, $key:ty, $label:ident, $field:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name(Family<$label, Counter>);

        impl Default for $name {
            fn default() -> Self {
                let family = Family::default();
                for $field in <$key>::ALL {
                    // Created now so that the series is rendered at zero.
                    let _ = family.get_or_create(&$label { $field });
                }
                $name(family)
            }
        }

        impl $name {
            /// Counts one for `key`.
            pub fn inc(&self, $field: $key) {
                self.0.get_or_create(&$label { $field }).inc();
            }

            /// How many were counted for `key`.
            pub fn get(&self, $field: $key) -> u64 {
                self.0.get_or_create(&$label { $field }).get()
            }

            /// The family, for registering.
            pub(crate) fn family(&self) -> Family<$label, Counter> {
                self.0.clone()
            }
        }
    };
}

closed_family!(
    /// Refusals counted by reason.
    Refusals,
    RefusalReason,
    ReasonLabel,
    reason
);

closed_family!(
    /// Connections closed on a deadline, by kind.
    Timeouts,
    Timeout,
    KindLabel,
    kind
);

closed_family!(
    /// Connections accepted, by transport.
    ByTransport,
    Transport,
    TransportLabel,
    transport
);

closed_family!(
    /// Bundles served without one-time keys, by the limit that withheld them.
    Withheld,
    KeyLimit,
    LimitLabel,
    limit
);
