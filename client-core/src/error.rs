//! Errors, grouped by cause.
//!
//! - [`Error::Malformed`]: the bytes do not decode or do not satisfy the format (peer or storage sent garbage).
//! - [`Error::Auth`]: a signature, MAC or key check failed (peer misbehaved or the data was tampered with).
//! - [`Error::Protocol`]: well-formed and authentic, but against the protocol's rules or limits
//!   (duplicate, replay, rollback, too far ahead, unknown pre-key, no session).
//!
//! Every error leaves the protocol state exactly as it was before the call. The protocol modules do
//! not know the store: the [`Device`](crate::device::Device) facade, which also reads and commits
//! it, returns a [`DeviceError`](crate::device::DeviceError) composing this error and the store's.

/// Result type of client-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error of client-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that does not decode or validate.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A cryptographic check failed.
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    /// Authentic input rejected by the protocol's rules.
    #[error("protocol rule: {0}")]
    Protocol(#[from] ProtocolError),
}

/// Cryptographic checks that can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// An Ed25519 signature did not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// An AEAD tag did not verify: wrong key, tampered ciphertext or header.
    #[error("message could not be decrypted")]
    DecryptFailed,
    /// A public key is not canonical, is of low order, or produced an all-zero shared secret.
    #[error("invalid public key: {0}")]
    InvalidKey(&'static str),
    /// A device's identity key does not match the one on its account's device list.
    #[error("identity key does not match the device list")]
    IdentityMismatch,
    /// A device-list entry carries no consent signature of the listed device (§3.1).
    #[error("device {0} on the list has not consented to being listed")]
    MissingDeviceConsent(u32),
    /// A device-list entry's consent signature does not verify under the listed device's
    /// signing key for this account, device id and identity (§3.1).
    #[error("bad consent signature of device {0} on the list")]
    BadDeviceConsent(u32),
    /// A sealed envelope's sender block or content did not decrypt (not addressed to this
    /// device, or tampered with). The sender is unknown, so there is nobody to ask for a retry.
    #[error("sealed envelope could not be opened")]
    SealedDecryptFailed,
    /// A sealed envelope opened, but the identity keys inside are not the ones the sender's
    /// account lists for the device it claims to be.
    #[error("sealed sender does not match the device list")]
    SealedSenderMismatch,
}

/// Rules of the protocol that authentic input can still break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The message was already decrypted (or its key was evicted).
    #[error("duplicate message")]
    Duplicate,
    /// The message is further ahead in its chain than the skip limit allows.
    #[error("message too far ahead: {skip} keys to skip, limit {limit}")]
    TooFarAhead {
        /// Keys that would have to be skipped.
        skip: u64,
        /// The limit.
        limit: u32,
    },
    /// An initial message names a pre-key this device does not have (used up, or never existed).
    #[error("unknown {kind} pre-key {id}")]
    UnknownPreKey {
        /// Which kind of pre-key.
        kind: &'static str,
        /// Its id.
        id: u32,
    },
    /// A last-resort ML-KEM pre-key was used again with a base key already seen: a replay.
    #[error("last-resort pre-key reused with the same base key")]
    LastResortReuse,
    /// A device list older than the one already accepted.
    #[error("device list version {got} is older than known version {known}")]
    DeviceListRollback {
        /// Version already accepted.
        known: u64,
        /// Version offered.
        got: u64,
    },
    /// Two different device lists with the same version (equivocation).
    #[error("conflicting device lists with version {0}")]
    DeviceListConflict(u64),
    /// The device is not on its account's current device list.
    #[error("device is not on the account's device list")]
    DeviceNotOnList,
    /// The account's device list is not known yet.
    #[error("no device list known for the account")]
    UnknownAccount,
    /// No usable session with the device: fetch its pre-key bundle and start one.
    #[error("no session with the device")]
    NoSession,
    /// An unsupported protocol or format version.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u32),
    /// The plaintext exceeds `MAX_PLAINTEXT_LEN`.
    #[error("plaintext of {0} bytes is too large")]
    TooLarge(usize),
    /// Too many devices on a device list.
    #[error("too many devices: {0}")]
    TooManyDevices(usize),
    /// A group this device does not know.
    #[error("unknown group")]
    UnknownGroup,
    /// The sender (or this device) is not a member of the group.
    #[error("not a member of the group")]
    NotAMember,
    /// Too many group messages from this sender's account are waiting (for their sender key,
    /// group or membership); others' messages are still buffered.
    #[error("too many group messages from this sender waiting to be read")]
    BufferFull,
    /// A group's log, as read from the relay, cannot be this group's: its first entry is not a
    /// valid creation of this group id and slot.
    #[error("invalid group log: {0}")]
    InvalidGroupLog(&'static str),
    /// The API was called in a way its contract forbids.
    #[error("invalid use: {0}")]
    Misuse(&'static str),
    /// An authentic change that its author has no right to make (a group change by a member
    /// who is not an admin, a creation that does not make its author an admin).
    #[error("not permitted: {0}")]
    NotPermitted(&'static str),
}

impl Error {
    pub(crate) const fn malformed(what: &'static str, reason: &'static str) -> Self {
        Self::Malformed { what, reason }
    }
}
