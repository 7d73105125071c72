//! Every protocol limit and label, in one place.
//!
//! Changing a value here changes the protocol; docs/PROTOCOL.md §Limits lists the same values.

/// Wire-format version carried in every [`RatchetMessage`](hush_proto::wire::RatchetMessage) and
/// [`InitialMessage`](hush_proto::wire::InitialMessage). Anything else is rejected.
pub const PROTOCOL_VERSION: u32 = 1;

/// Version of the persisted session state format.
pub const SESSION_STATE_VERSION: u32 = 1;

/// Largest forward jump accepted within one receiving chain (message keys derived and stored as
/// skipped in a single step). A message further ahead is rejected with `TooFarAhead`.
pub const MAX_SKIP: u32 = 1000;

/// Most skipped message keys kept for one receiving chain; the oldest are evicted first.
pub const MAX_SKIPPED_KEYS_PER_CHAIN: usize = 1000;

/// Most skipped message keys kept per session across all chains; the oldest are evicted first.
pub const MAX_SKIPPED_KEYS: usize = 2000;

/// A skipped message key older than this is deleted (milliseconds): 30 days.
pub const SKIPPED_KEY_MAX_AGE_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Ratchet public keys of previous receiving chains remembered per session, so that a late
/// duplicate from an old chain is reported as a duplicate rather than tried as a new ratchet step.
pub const MAX_OLD_RECEIVING_CHAINS: usize = 16;

/// Archived (non-current) sessions kept per remote device.
pub const MAX_ARCHIVED_SESSIONS: usize = 10;

/// A session unused for this long is retired (milliseconds): 90 days. A retired session is deleted,
/// so the next message to that device starts a new session.
pub const SESSION_MAX_IDLE_MS: u64 = 90 * 24 * 60 * 60 * 1000;

/// Largest plaintext of one pairwise message, in bytes (attachments travel as encrypted blobs).
pub const MAX_PLAINTEXT_LEN: usize = 256 * 1024;

/// Authentication tag length of ChaCha20-Poly1305.
pub const AEAD_TAG_LEN: usize = 16;

/// Length of a ChaCha20-Poly1305 nonce.
pub const AEAD_NONCE_LEN: usize = 12;

/// Largest encoded pairwise message accepted from the network, in bytes.
pub const MAX_MESSAGE_LEN: usize = MAX_PLAINTEXT_LEN + 4096;

/// Most devices on one account's device list.
pub const MAX_DEVICES_PER_ACCOUNT: usize = 32;

/// Base keys remembered per last-resort ML-KEM pre-key to refuse a replayed initial message.
/// When full, the device must rotate its last-resort key (it refuses further use of this one).
pub const MAX_LAST_RESORT_BASE_KEYS: usize = 100_000;

/// One-time X25519 and ML-KEM pre-keys a device keeps published.
pub const ONE_TIME_PRE_KEY_BATCH: u32 = 100;

/// Length of an X25519 or Ed25519 public key.
pub const KEY_LEN: usize = 32;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Length of an ML-KEM-768 encapsulation key.
pub const KEM_PUBLIC_KEY_LEN: usize = 1184;

/// Length of an ML-KEM-768 ciphertext.
pub const KEM_CIPHERTEXT_LEN: usize = 1088;

/// Length of an ML-KEM seed (d || z, FIPS 203).
pub const KEM_SEED_LEN: usize = 64;

/// HKDF info for the PQXDH shared secret (format of Signal's PQXDH specification §2.2).
pub const PQXDH_INFO: &[u8] = b"Hush_PQXDH_CURVE25519_SHA-256_ML-KEM-768";

/// HKDF info for the root-key KDF of the Double Ratchet.
pub const ROOT_KDF_INFO: &[u8] = b"Hush_Ratchet_Root_v1";

/// HKDF info expanding a message key into an AEAD key and nonce.
pub const MESSAGE_KEY_INFO: &[u8] = b"Hush_Message_Keys_v1";

/// HMAC input deriving a message key from a chain key.
pub const MESSAGE_KEY_SEED: u8 = 0x01;

/// HMAC input deriving the next chain key from a chain key.
pub const CHAIN_KEY_SEED: u8 = 0x02;

/// Length of a group id.
pub const GROUP_ID_LEN: usize = 32;

/// Most members (accounts) of one group.
pub const MAX_GROUP_MEMBERS: usize = 2000;

/// Largest length of a group name, in bytes.
pub const MAX_GROUP_NAME_LEN: usize = 256;

/// Largest forward jump accepted in one sender-key chain.
pub const MAX_SENDER_KEY_JUMP: u32 = 2000;

/// Most skipped message keys kept per sender-key state; the oldest (lowest iteration) go first.
pub const MAX_SENDER_KEY_SKIPPED: usize = 2000;

/// A skipped sender-key message key older than this is deleted (milliseconds): 30 days, as for
/// pairwise skipped keys ([`SKIPPED_KEY_MAX_AGE_MS`]).
pub const SENDER_KEY_SKIPPED_MAX_AGE_MS: u64 = SKIPPED_KEY_MAX_AGE_MS;

/// Sender-key states kept per (group, sender device): the current one and older ones, so that
/// messages in flight across a rotation still decrypt.
pub const MAX_SENDER_KEY_STATES: usize = 5;

/// A device rotates its own sender key after this many messages (bounds how far back a retry can
/// reach and how long the iteration-0 chain key is kept).
pub const SENDER_KEY_MAX_ITERATIONS: u32 = 10_000;

/// Group messages buffered per sending account (across all groups) while their sender key, their
/// group or the sender's membership is missing. Past it, that account's next message is refused
/// (`BufferFull`); nobody else's is.
pub const MAX_BUFFERED_GROUP_MESSAGES_PER_SENDER: usize = 500;

/// Bytes of group messages buffered per sending account (across all groups): 4 MiB.
pub const MAX_BUFFERED_GROUP_BYTES_PER_SENDER: usize = 4 << 20;

/// Group messages buffered in total. When the buffer is full, the oldest message of the account
/// holding the most is dropped to make room, unless that account is the sender itself, whose
/// message is then refused: no set of accounts can keep another sender's first messages out.
pub const MAX_BUFFERED_GROUP_MESSAGES_TOTAL: usize = 4000;

/// Bytes of group messages buffered in total (the same rule as for the count): 32 MiB.
pub const MAX_BUFFERED_GROUP_BYTES_TOTAL: usize = 32 << 20;

/// Length of a group secret, the key that names, unlocks and authorizes writes to a group's
/// log on the relay (PROTOCOL.md §17.1).
pub const GROUP_SECRET_LEN: usize = 32;

/// Prefix hashed with a group's signed creation to give its id:
/// `id = SHA-256("Hush-GroupId-v1" ‖ creation change bytes)`.
pub const GROUP_ID_LABEL: &[u8] = b"Hush-GroupId-v1";

/// HKDF salt of every value derived from a group secret (§17.1).
pub const GROUP_SECRET_SALT: &[u8] = b"Hush-GroupSecret-v1";

/// HKDF info deriving the relay slot that names a group's log.
pub const GROUP_LOG_SLOT_INFO: &[u8] = b"Hush_GroupLog_Slot_v1";

/// HKDF info deriving the token that authorizes appends to a group's log.
pub const GROUP_LOG_WRITE_INFO: &[u8] = b"Hush_GroupLog_Write_v1";

/// HKDF info deriving the AEAD key of a group's log entries.
pub const GROUP_LOG_KEY_INFO: &[u8] = b"Hush_GroupLog_Key_v1";

/// Prefix of the associated data of a log entry: `label ‖ slot ‖ u64be(position)`.
pub const GROUP_LOG_ENTRY_LABEL: &[u8] = b"Hush-GroupLogEntry-v1";

/// Version byte that starts every group log entry.
pub const GROUP_LOG_ENTRY_VERSION: u8 = 1;

/// Largest group log entry (version, nonce, sealed signed change), in bytes. A creation listing
/// 2000 members with its author's 32-device list is about 80 KiB.
pub const MAX_GROUP_LOG_ENTRY_LEN: usize = 128 * 1024;

/// Most invitations to groups not yet read from the relay that a device keeps at once; further
/// ones are ignored until some are followed.
pub const MAX_PENDING_GROUP_INVITES: usize = 64;

/// Pending group invitations kept from one inviting account: a contact cannot fill the cap on
/// invitations ([`MAX_PENDING_GROUP_INVITES`]) on its own.
pub const MAX_PENDING_GROUP_INVITES_PER_INVITER: usize = 8;

/// HKDF info expanding a sender-key message key into an AEAD key and nonce.
pub const SENDER_KEY_MESSAGE_INFO: &[u8] = b"Hush_SenderKey_Message_v1";

/// A retry request for the same missing sender key is sent at most this often (ms).
pub const SENDER_KEY_REQUEST_INTERVAL_MS: u64 = 10_000;

/// A group message still waiting for its sender key or its sender's membership after this long
/// is deleted (milliseconds): 14 days.
pub const BUFFERED_GROUP_MESSAGE_MAX_AGE_MS: u64 = 14 * 24 * 60 * 60 * 1000;

/// A signed pre-key is replaced once the newest one is this old (milliseconds): 7 days
/// ([`Device::upkeep`](crate::device::Device::upkeep)).
pub const SIGNED_PRE_KEY_ROTATION_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// The last-resort ML-KEM pre-key is replaced once the newest one is this old (milliseconds):
/// 7 days.
pub const LAST_RESORT_PRE_KEY_ROTATION_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// The last-resort ML-KEM pre-key is replaced, whatever its age, once this many base keys have
/// been used with it: half of [`MAX_LAST_RESORT_BASE_KEYS`], at which it would refuse new
/// sessions.
pub const LAST_RESORT_ROTATE_AT_BASE_KEYS: usize = MAX_LAST_RESORT_BASE_KEYS / 2;

/// Signed and last-resort pre-keys kept (the newest included) after a rotation, so initial
/// messages in flight, or built from a bundle fetched before the rotation, still decrypt: five
/// rotation periods (about five weeks).
pub const ROTATED_PRE_KEYS_KEPT: usize = 5;

/// Unused one-time pre-keys (of each kind) a device keeps at most. Keys the relay handed out but
/// nobody used are never deleted by use; past this count the oldest are deleted when new ones
/// are made.
pub const ONE_TIME_PRE_KEYS_KEPT: usize = 500;

/// Stale sessions ([`SESSION_MAX_IDLE_MS`]) are swept at most this often (milliseconds): a day.
pub const SESSION_SWEEP_INTERVAL_MS: u64 = 24 * 60 * 60 * 1000;

/// A device asks a sender device to send undecryptable messages again (a retry request, which
/// starts a fresh session) at most this often per sender device (milliseconds): a minute.
/// Failures in between are gathered and asked for together.
pub const RETRY_REQUEST_INTERVAL_MS: u64 = 60_000;

/// Undecryptable messages from a device are gathered this long (milliseconds) before the first
/// request to it goes out, so that a burst (a reconnect after a restore) is asked for at once.
pub const RETRY_GATHER_MS: u64 = 2_000;

/// Message ids in one retry request, and undecryptable messages remembered per sender device
/// (past it the oldest is forgotten).
pub const MAX_RETRY_IDS: usize = 32;

/// Sender devices with undecryptable messages waiting to be asked for; past it, failures from
/// further devices are reported but not asked for.
pub const MAX_RETRY_PENDING_DEVICES: usize = 256;

/// A sent pairwise message is kept for answering retry requests this long (milliseconds): the
/// relay's default mailbox lifetime, 30 days, past which the original could not arrive anyway.
pub const SENT_LOG_MAX_AGE_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Sent pairwise messages kept at most (the oldest are dropped first).
pub const SENT_LOG_MAX_ENTRIES: usize = 20_000;

/// Bytes of sent contents kept at most: 32 MiB (the oldest are dropped first).
pub const SENT_LOG_MAX_BYTES: usize = 32 << 20;

/// A group notice not yet handed to the relay (PROTOCOL.md §17.5, the pending notices) is given
/// up after this long (milliseconds): 30 days, the relay's default mailbox lifetime. A device
/// that got no session in that time (it never published pre-keys again) is unlikely to; its
/// account's other devices, or a removal and a new addition, are the way back.
pub const PENDING_NOTICE_MAX_AGE_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Domain label of the client id under which the notices of one group change to one account are
/// handed to the relay: `HKDF-SHA-256(IKM = the device's identity DH secret, info = label ‖ group
/// id ‖ u64be(position) ‖ account key)`, 16 bytes (PROTOCOL.md §17.5). Derived, not drawn, so
/// that keeping a notice draws nothing from the RNG; keyed, so that nobody else can send first
/// under it; a notice sealed again for a re-registered device gets a random one.
pub const PENDING_NOTICE_CLIENT_ID_LABEL: &[u8] = b"Hush_NoticeClientId_v1";

/// Pending group notices kept at most: one creation of a group of [`MAX_GROUP_MEMBERS`]
/// accounts with a few devices each. Past it, the oldest notices that carry no group secret are
/// dropped first (members catch up by reading the log), then the oldest that do; never those of
/// the change being committed.
pub const PENDING_NOTICES_MAX_ENTRIES: usize = 20_000;

/// Bytes of sealed pending group notices kept at most: 32 MiB (dropped in the same order as past
/// [`PENDING_NOTICES_MAX_ENTRIES`]).
pub const PENDING_NOTICES_MAX_BYTES: usize = 32 << 20;

/// Group creations whose append the relay has not confirmed kept at most (PROTOCOL.md §17.5):
/// a creation past it is refused (`Misuse`) until one of them is resolved. Each is resolved at
/// the next connection (it landed, or it is appended again), so more than a few means the relay
/// has been unreachable for a while.
pub const MAX_PENDING_CREATIONS: usize = 16;

/// A pending group creation not resolved in this long (milliseconds) is given up: 30 days, as
/// the pending notices. A device that reached the relay in that time has resolved it; one that
/// has not starts the group again (a new id), and an orphaned log stays within the relay's caps.
pub const PENDING_CREATION_MAX_AGE_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// A sent message is sent again at most this often, however often it is asked for.
pub const MAX_RESENDS_PER_MESSAGE: u32 = 2;

/// Ids of the last pairwise messages decrypted from each device, kept so that a redelivery of
/// one of them (an ack lost on the way) is not asked for again.
pub const RECENT_IDS_KEPT: usize = 32;

/// Domain label of a pairwise message id: `SHA-256(label ‖ encoded PairwiseMessage)`.
pub const PAIRWISE_MESSAGE_ID_LABEL: &[u8] = b"Hush_PairwiseMessageId_v1";

/// Version byte that opens every sealed envelope (PROTOCOL.md §21). Anything else is rejected
/// with `UnsupportedVersion`.
pub const SEALED_VERSION: u8 = 1;

/// Plaintext of the sealed sender block `c1`: account key (32) ‖ u32be(device id) ‖ signing key
/// (32) ‖ DH key (32).
pub const SEALED_SENDER_LEN: usize = KEY_LEN + 4 + 2 * KEY_LEN;

/// Length of the encrypted sender block `c1` (its plaintext and the AEAD tag): 116 bytes.
pub const SEALED_SENDER_CT_LEN: usize = SEALED_SENDER_LEN + AEAD_TAG_LEN;

/// Bytes of a sealed envelope before `c2`: version (1) ‖ ephemeral key (32) ‖ `c1` (116) = 149.
pub const SEALED_HEADER_LEN: usize = 1 + KEY_LEN + SEALED_SENDER_CT_LEN;

/// Length of a delivery key.
pub const DELIVERY_KEY_LEN: usize = 32;

/// Length of a delivery token (the truncated HMAC the relay stores).
pub const DELIVERY_TOKEN_LEN: usize = 16;

/// Least overhead of a sealed envelope over its content: the header (149), the delivery key
/// (32), the padding marker `0x80` (1) and the tag of `c2` (16) = 198 bytes.
pub const SEALED_OVERHEAD: usize = SEALED_HEADER_LEN + DELIVERY_KEY_LEN + 1 + AEAD_TAG_LEN;

/// Up to [`SEALED_LINEAR_MAX`], sealed envelope lengths are multiples of this (bytes).
pub const SEALED_BUCKET_STEP: usize = 160;

/// The largest envelope length padded to a multiple of [`SEALED_BUCKET_STEP`]; longer envelopes
/// are padded to their Padmé length (PROTOCOL.md §21.3).
pub const SEALED_LINEAR_MAX: usize = 26 * SEALED_BUCKET_STEP;

/// The largest sealed envelope: 64 KiB, the relay's default `max_envelope_bytes` (the largest
/// envelope body it accepts). 65 536 is itself a Padmé length.
pub const MAX_SEALED_LEN: usize = 64 * 1024;

/// The largest content one sealed envelope carries: [`MAX_SEALED_LEN`] − [`SEALED_OVERHEAD`] =
/// 65 338 bytes. Larger content is refused with `TooLarge`.
pub const MAX_SEALED_CONTENT_LEN: usize = MAX_SEALED_LEN - SEALED_OVERHEAD;

/// Label of the sealed layer: the prefix of the first HKDF salt.
pub const SEAL_LABEL: &[u8] = b"hush-seal-v1";

/// HKDF info deriving the sender-block key `k1` and the chaining key `ck`.
pub const SEAL_SENDER_INFO: &[u8] = b"hush-seal-v1 sender";

/// HKDF info deriving the content key `k2`.
pub const SEAL_CONTENT_INFO: &[u8] = b"hush-seal-v1 content";

/// HKDF salt deriving a device's delivery key from its identity DH secret.
pub const DELIVERY_KEY_SALT: &[u8] = b"hush-delivery-key-v1";

/// HMAC message deriving a delivery token from a delivery key.
pub const DELIVERY_TOKEN_LABEL: &[u8] = b"hush-delivery-token-v1";

/// Signature label of a device's consent to be listed on an account's device list (§3.1):
/// the device signs `"Hush-DeviceConsent-v1" ‖ account key ‖ u32be(device id) ‖ signing key ‖
/// DH key` with its identity signing key.
pub const DEVICE_CONSENT_LABEL: &[u8] = hush_proto::labels::DEVICE_CONSENT;

/// HKDF info (followed by the store's label) of the encrypted store's state key, which keys the
/// digest of every record's physical key and version (§10.2).
pub const STORE_STATE_INFO: &[u8] = b"Hush-Store-State-v1";

/// Logical key embedded in the encrypted store's state record (commit counter and digest, §10.2).
pub const STORE_STATE_LOGICAL: &[u8] = b"store-state";

// ---- Backups and history transfer (PROTOCOL.md §22) ----

/// Domain-separation prefix of the recovery-key checksum (§22.1).
pub const RECOVERY_KEY_CHECK_LABEL: &[u8] = b"Hush-Recovery-Key-Check-v1";

/// Bytes of checksum appended to the 32-byte recovery key before encoding (§22.1).
pub const RECOVERY_KEY_CHECK_LEN: usize = 3;

/// HKDF info deriving the archive key from a recovery key (§22.2).
pub const BACKUP_ARCHIVE_KEY_INFO: &[u8] = b"Hush-Backup-Archive-Key-v1";

/// HKDF info prefix (then one byte: the slot) deriving a backup slot's blob id (§22.2).
pub const BACKUP_BLOB_ID_INFO: &[u8] = b"Hush-Backup-Blob-Id-v1";

/// HKDF info prefix (then one byte: the slot) deriving a backup slot's blob capability (§22.2).
pub const BACKUP_BLOB_CAPABILITY_INFO: &[u8] = b"Hush-Backup-Blob-Capability-v1";

/// HKDF info deriving an archive's stream key from the archive key, salted with the archive's
/// nonce (§22.3).
pub const BACKUP_STREAM_INFO: &[u8] = b"Hush-Backup-Stream-v1";

/// HMAC label of an archive header's key check (§22.3).
pub const BACKUP_KEY_CHECK_LABEL: &[u8] = b"Hush-Backup-Key-Check-v1";

/// The first 8 bytes of every archive (§22.3).
pub const BACKUP_MAGIC: &[u8; 8] = b"HUSHBAK1";

/// Plaintext bytes in every archive chunk but the last (§22.3).
pub const BACKUP_CHUNK: usize = 64 * 1024;

/// Largest archive a device reads, in bytes (a bound on memory, not a format limit).
pub const MAX_BACKUP_BYTES: usize = 512 * 1024 * 1024;

/// How many backup slots a recovery key names; backups alternate between them, so that a failed
/// upload never destroys the last complete backup (§22.2).
pub const BACKUP_SLOTS: u8 = 2;

/// The archive format version (`BackupArchive.version`).
pub const BACKUP_VERSION: u32 = 1;
