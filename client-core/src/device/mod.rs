//! The local device: its keys, pre-keys, known device lists and sessions, kept in a [`KvStore`].
//!
//! [`Device`] is the facade apps (through the client engine or FFI) drive. Each operation computes
//! its changes, commits them to the store in one atomic batch, and only then returns ciphertext or
//! plaintext. So a crash at any point can neither reuse a message key (the advanced ratchet is durable
//! before the ciphertext exists outside) nor lose a message (the plaintext is durable in the store's
//! inbox before the app sees it; the app removes it with [`Device::ack_message`] once it has it).
//! If a commit fails, the in-memory copy is discarded and reloaded from the store, which still holds
//! the state from before the call.
//!
//! This module holds the facade type, its creation and opening, and the commit of a transaction.
//! The operations follow in submodules: `pre_keys` (own pre-keys), `lists` (device lists),
//! `sessions` (pairwise sessions and encryption), `inbox` (decryption and the inbox), `groups`
//! (group membership, with sending and receiving below it), `healing` and `upkeep`.

use std::collections::{BTreeMap, HashMap};

use hush_proto::{Message, store as pstore};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::consts::KEY_LEN;
use crate::device_list::{DeviceEntry, DeviceList, VerifiedDeviceList};
use crate::error::ProtocolError;
use crate::keys::{
    AccountId, AccountKeyPair, DeviceAddress, DeviceIdentity, DeviceIdentityKeyPair, array,
};
use crate::prekeys::{KemPreKeyPair, OneTimePreKeyPair, SignedPreKeyPair};
use crate::sender_key::{GroupId, SenderKeyRecord};
use crate::session::SessionRecord;
use crate::store::kv::{Batch, KvStore, Namespace};

mod backup;
mod error;
mod groups;
mod healing;
mod inbox;
mod lists;
mod pre_keys;
mod sealed;
mod sessions;
mod upkeep;
pub use backup::{ImportSummary, decode_archive};
pub use error::{DeviceError, Result};
pub use groups::{
    CreationDropped, GroupEntry, GroupIncoming, GroupLogCursor, GroupLogUpdate, GroupLogWrite,
    GroupSend, LogCheck, NoticeKey, NoticeTargets, PendingCreation, PendingNotice,
};
pub use healing::{MessageId, pairwise_message_id};
pub use upkeep::Upkeep;

const IDENTITY_KEY: &[u8] = b"device";
const NEXT_PRE_KEY_ID: &[u8] = b"next-pre-key-id";
const NEXT_MESSAGE_ID: &[u8] = b"next-message-id";
/// Signed and last-resort pre-keys kept after rotation, so messages in flight still decrypt.
const KEEP_ROTATED: usize = crate::consts::ROTATED_PRE_KEYS_KEPT;

/// A message decrypted and durably stored in the device's inbox.
pub struct Received {
    /// Inbox id; pass to [`Device::ack_message`] once the app has stored the message itself.
    pub id: u64,
    /// The sending device.
    pub from: DeviceAddress,
    /// The group it was sent to, for group messages.
    pub group: Option<GroupId>,
    /// The plaintext.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// When it was decrypted (ms).
    pub received_at: u64,
}

/// A pairwise message to send to one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The recipient device.
    pub to: DeviceAddress,
    /// The encoded [`PairwiseMessage`](wire::PairwiseMessage).
    pub bytes: Vec<u8>,
}

/// What processing one incoming message produced.
#[derive(Default)]
pub struct Incoming {
    /// Application payloads, durable in the inbox (acknowledge with [`Device::ack_message`]).
    pub received: Vec<Received>,
    /// Messages to send (for example a sender key answering a retry request).
    pub outgoing: Vec<Outgoing>,
    /// Groups whose logs to read from the relay now ([`Device::group_log_cursor`], then
    /// [`Device::accept_group_log`]): an invitation, or a member's notice of a change.
    pub group_logs: Vec<GroupId>,
}

impl Incoming {
    /// The single application payload, when exactly one was received.
    pub fn single(self) -> Option<Received> {
        let mut it = self.received.into_iter();
        match (it.next(), it.next()) {
            (Some(r), None) => Some(r),
            _ => None,
        }
    }
}

/// The changes of one operation, committed in one batch by [`Device::finish`].
#[derive(Default)]
pub(crate) struct Tx {
    pub(crate) batch: Batch,
    pub(crate) sessions: std::collections::BTreeSet<DeviceAddress>,
    pub(crate) sender_keys: std::collections::BTreeSet<(GroupId, DeviceAddress)>,
    pub(crate) groups: std::collections::BTreeSet<GroupId>,
    pub(crate) next_message_id: Option<u64>,
    /// Sealed messages to add to the sent log, and sequence numbers to drop from it.
    pub(crate) sent: Vec<healing::PendingSent>,
    pub(crate) sent_removed: Vec<u64>,
    /// Pending group notices kept or dropped (§17.5).
    pub(crate) notices: groups::NoticeTx,
    /// What this transaction seals is not kept in the sent log (ephemeral payloads).
    pub(crate) unlogged: bool,
    /// The recent ids of the device a message was decrypted from.
    pub(crate) recent: Option<(
        DeviceAddress,
        std::collections::VecDeque<healing::MessageId>,
    )>,
}

/// One local device.
pub struct Device<S: KvStore> {
    store: S,
    address: DeviceAddress,
    identity: DeviceIdentityKeyPair,
    account_key: Option<AccountKeyPair>,
    signed_pre_keys: BTreeMap<u32, SignedPreKeyPair>,
    one_time_pre_keys: BTreeMap<u32, OneTimePreKeyPair>,
    kem_pre_keys: BTreeMap<u32, KemPreKeyPair>,
    device_lists: HashMap<AccountId, VerifiedDeviceList>,
    sessions: HashMap<DeviceAddress, SessionRecord>,
    groups: HashMap<GroupId, GroupEntry>,
    group_invites: HashMap<GroupId, groups::GroupInvite>,
    /// Groups worth reading from the relay (kept in memory only).
    group_hints: std::collections::BTreeSet<GroupId>,
    sender_keys: HashMap<(GroupId, DeviceAddress), SenderKeyRecord>,
    last_key_requests: HashMap<(GroupId, DeviceAddress, u32), u64>,
    next_pre_key_id: u32,
    next_message_id: u64,
    sent_log: healing::SentLog,
    retry: healing::RetryState,
    /// Group notices not yet taken by the relay (an index; the messages stay in the store).
    pending_notices: groups::PendingNotices,
    /// Rotation epoch of this device's delivery key (0 until first rotated).
    delivery_epoch: u32,
    /// Delivery keys of other devices, from their sealed envelopes.
    delivery_keys: HashMap<DeviceAddress, crate::sealed::DeliveryKey>,
}

fn decode<M: Message + Default>(bytes: &[u8], what: &'static str) -> Result<M> {
    M::decode(bytes).map_err(|_| DeviceError::malformed(what, "does not decode"))
}

fn encode<M: Message>(m: &M) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(m.encode_to_vec())
}

fn id_key(id: u32) -> [u8; 4] {
    id.to_be_bytes()
}

impl<S: KvStore> Device<S> {
    /// Creates the first device (id 1) of a new account: account key, device identity, pre-keys and a
    /// device list signed by the new account key, all committed to `store`.
    pub fn create_account(store: S, rng: &mut impl CryptoRng, now: u64) -> Result<Self> {
        let account = AccountKeyPair::generate(rng);
        Self::create(store, rng, account.id(), 1, Some(account), now)
    }

    /// Creates an additional device `device_id` of an existing account. It becomes usable once the
    /// account's device holding the account key has added it ([`Device::add_device`]) and this device
    /// has accepted that list ([`Device::accept_device_list`]).
    pub fn create_linked(
        store: S,
        rng: &mut impl CryptoRng,
        account: AccountId,
        device_id: u32,
        now: u64,
    ) -> Result<Self> {
        Self::create(store, rng, account, device_id, None, now)
    }

    fn create(
        store: S,
        rng: &mut impl CryptoRng,
        account: AccountId,
        device_id: u32,
        account_key: Option<AccountKeyPair>,
        now: u64,
    ) -> Result<Self> {
        let (mut device, keys) =
            Self::create_unfinished(store, rng, account, device_id, account_key, None, now)?;
        device.commit_identity(keys)?;
        Ok(device)
    }

    /// Commits the identity record, last of a creation: a crash before it leaves a store that
    /// `open` refuses ("holds no device") and that creation can start over in.
    fn commit_identity(&mut self, keys: pstore::DeviceKeys) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(Namespace::Identity, IDENTITY_KEY, encode(&keys));
        drop(keys);
        self.store.commit(batch)?;
        Ok(())
    }

    /// Everything of a creation but the identity record. With an account key, the device list
    /// is the one of version 1 listing this device alone, or (`base`, for a recovery) `base`'s
    /// successor: its devices in `keep`, and this one.
    fn create_unfinished(
        store: S,
        rng: &mut impl CryptoRng,
        account: AccountId,
        device_id: u32,
        account_key: Option<AccountKeyPair>,
        base: Option<(&VerifiedDeviceList, &[u32])>,
        now: u64,
    ) -> Result<(Self, pstore::DeviceKeys)> {
        if store.get(Namespace::Identity, IDENTITY_KEY)?.is_some() {
            return Err(ProtocolError::Misuse("store already holds a device").into());
        }
        let identity = DeviceIdentityKeyPair::generate(rng);
        let (sig, dh) = identity.secret_bytes();
        let keys = pstore::DeviceKeys {
            account_key: account.as_bytes().to_vec(),
            account_secret: account_key
                .as_ref()
                .map(|k| k.secret_bytes().to_vec())
                .unwrap_or_default(),
            device_id,
            identity_signing_secret: sig.to_vec(),
            identity_dh_secret: dh.to_vec(),
        };
        let mut device = Self {
            store,
            address: DeviceAddress { account, device_id },
            identity,
            account_key,
            signed_pre_keys: BTreeMap::new(),
            one_time_pre_keys: BTreeMap::new(),
            kem_pre_keys: BTreeMap::new(),
            device_lists: HashMap::new(),
            sessions: HashMap::new(),
            groups: HashMap::new(),
            group_invites: HashMap::new(),
            group_hints: std::collections::BTreeSet::new(),
            sender_keys: HashMap::new(),
            last_key_requests: HashMap::new(),
            next_pre_key_id: 1,
            next_message_id: 1,
            sent_log: healing::SentLog::default(),
            retry: healing::RetryState::default(),
            pending_notices: groups::PendingNotices::default(),
            delivery_epoch: 0,
            delivery_keys: HashMap::new(),
        };
        device.rotate_signed_pre_key(rng, now)?;
        device.rotate_last_resort_pre_key(rng, now)?;
        device.replenish_pre_keys(rng, now)?;
        if let Some(k) = &device.account_key {
            let mut devices = BTreeMap::new();
            let mut version = 1;
            if let Some((base, keep)) = base {
                for (id, entry) in &base.list().devices {
                    if keep.contains(id) && *id != device_id {
                        devices.insert(*id, *entry);
                    }
                }
                version = base
                    .list()
                    .version
                    .checked_add(1)
                    .ok_or(ProtocolError::Misuse("device list version exhausted"))?;
            }
            let identity = device.identity.public();
            devices.insert(
                device_id,
                DeviceEntry {
                    device_id,
                    identity,
                    added_at: now,
                    consent: device.identity.consent(&account, device_id),
                },
            );
            let list = DeviceList {
                account,
                version,
                issued_at: now,
                devices,
            }
            .sign(k)?;
            device.accept_device_list(list.signed_bytes(), &account, now)?;
        }
        Ok((device, keys))
    }

    /// Opens the device kept in `store` (after a restart or a crash).
    pub fn open(store: S) -> Result<Self> {
        let raw = store
            .get(Namespace::Identity, IDENTITY_KEY)?
            .ok_or(ProtocolError::Misuse("store holds no device"))?;
        let keys: pstore::DeviceKeys = decode(&raw, "stored device keys")?;
        let account = AccountId::from_bytes(&keys.account_key)?;
        let sig: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(array(
            &keys.identity_signing_secret,
            "stored device keys",
            "bad key",
        )?);
        let dh: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(array(
            &keys.identity_dh_secret,
            "stored device keys",
            "bad key",
        )?);
        let identity = DeviceIdentityKeyPair::from_secret_bytes(&sig, &dh);
        let account_key = if keys.account_secret.is_empty() {
            None
        } else {
            let s: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(array(
                &keys.account_secret,
                "stored device keys",
                "bad key",
            )?);
            let k = AccountKeyPair::from_secret_bytes(&s);
            if k.id() != account {
                return Err(DeviceError::malformed(
                    "stored device keys",
                    "account key does not match",
                ));
            }
            Some(k)
        };
        let mut signed_pre_keys = BTreeMap::new();
        for (_, v) in store.scan(Namespace::SignedPreKeys)? {
            let p: pstore::SignedPreKeySecret = decode(&v, "stored signed pre-key")?;
            let s: Zeroizing<[u8; KEY_LEN]> =
                Zeroizing::new(array(&p.secret, "stored signed pre-key", "bad key")?);
            signed_pre_keys.insert(
                p.id,
                SignedPreKeyPair::from_secret(&identity, p.id, &s, p.created_at),
            );
        }
        let mut one_time_pre_keys = BTreeMap::new();
        for (_, v) in store.scan(Namespace::OneTimePreKeys)? {
            let p: pstore::OneTimePreKeySecret = decode(&v, "stored one-time pre-key")?;
            let s: Zeroizing<[u8; KEY_LEN]> =
                Zeroizing::new(array(&p.secret, "stored one-time pre-key", "bad key")?);
            one_time_pre_keys.insert(p.id, OneTimePreKeyPair::from_secret(p.id, &s));
        }
        let mut kem_pre_keys = BTreeMap::new();
        let mut used: Vec<(u32, [u8; KEY_LEN])> = Vec::new();
        for (k, v) in store.scan(Namespace::KemPreKeys)? {
            if let Some((id, base)) = k.split_at_checked(4).filter(|(_, b)| b.len() == KEY_LEN) {
                used.push((
                    u32::from_be_bytes(array(id, "stored ML-KEM pre-key", "bad id")?),
                    array(base, "stored ML-KEM pre-key", "bad base key")?,
                ));
                continue;
            }
            let p: pstore::KemPreKeySecret = decode(&v, "stored ML-KEM pre-key")?;
            let seed: Zeroizing<[u8; 64]> =
                Zeroizing::new(array(&p.seed, "stored ML-KEM pre-key", "bad seed")?);
            kem_pre_keys.insert(
                p.id,
                KemPreKeyPair::from_seed(&identity, p.id, &seed, p.last_resort, p.created_at),
            );
        }
        for (id, base) in used {
            if let Some(k) = kem_pre_keys.get_mut(&id) {
                k.mark_used_base_keys([base]);
            }
        }
        let mut device_lists = HashMap::new();
        for (k, v) in store.scan(Namespace::DeviceLists)? {
            if k.len() != KEY_LEN {
                // An earlier list that stores of an older version kept (account ‖ version): group
                // changes now carry their author's list, so it is no longer read.
                continue;
            }
            let account = AccountId::from_bytes(&k)?;
            device_lists.insert(account, VerifiedDeviceList::verify(&v, &account)?);
        }
        let counter = |key: &[u8]| -> Result<Option<u64>> {
            Ok(match store.get(Namespace::Meta, key)? {
                Some(v) => Some(u64::from_be_bytes(array(
                    &v,
                    "stored counter",
                    "must be 8 bytes",
                )?)),
                None => None,
            })
        };
        let next_pre_key_id =
            u32::try_from(counter(NEXT_PRE_KEY_ID)?.unwrap_or(1)).unwrap_or(u32::MAX);
        let next_message_id = counter(NEXT_MESSAGE_ID)?.unwrap_or(1);
        let (groups, group_invites) = groups::load_groups(&store)?;
        let (sent_log, retry) = healing::load(&store)?;
        let pending_notices = groups::load_pending_notices(&store)?;
        let (delivery_epoch, delivery_keys) = sealed::load(&store)?;
        Ok(Self {
            address: DeviceAddress {
                account,
                device_id: keys.device_id,
            },
            store,
            identity,
            account_key,
            signed_pre_keys,
            one_time_pre_keys,
            kem_pre_keys,
            device_lists,
            sessions: HashMap::new(),
            groups,
            group_invites,
            group_hints: std::collections::BTreeSet::new(),
            sender_keys: HashMap::new(),
            last_key_requests: HashMap::new(),
            next_pre_key_id,
            next_message_id,
            sent_log,
            retry,
            pending_notices,
            delivery_epoch,
            delivery_keys,
        })
    }

    /// This device's address.
    pub const fn address(&self) -> DeviceAddress {
        self.address
    }

    /// This device's public identity.
    pub const fn identity(&self) -> DeviceIdentity {
        self.identity.public()
    }

    /// Signs the relay's authentication challenge for this device's connection, whose TLS
    /// exporter is `exporter` (see docs/RELAY_PROTOCOL.md §4). The transcript names this device,
    /// so the signature is good for this connection and challenge only.
    pub fn sign_relay_challenge(&self, exporter: &[u8; 32], challenge: &[u8; 32]) -> [u8; 64] {
        let t = hush_proto::transcripts::relay_auth(
            exporter,
            challenge,
            self.address.account.as_bytes(),
            self.address.device_id,
        );
        let (label, body) = t.split_at(hush_proto::labels::RELAY_AUTH.len());
        self.identity.sign(label, body)
    }

    /// Signs, with the account key, the binding of the username `name` (already normalized:
    /// `hush_net::username::normalize`) to this account, for a claim in the relay's directory
    /// (docs/RELAY_PROTOCOL.md §12). Others check it with [`crate::username::verify_username`].
    /// Only the device holding the account key can ([`ProtocolError::Misuse`] otherwise).
    pub fn sign_username(&self, name: &str) -> Result<[u8; 64]> {
        let key = self.account_key.as_ref().ok_or(ProtocolError::Misuse(
            "this device does not hold the account key",
        ))?;
        let (label, body) = crate::username::transcript(name, &self.address.account);
        Ok(key.sign(&label, &body))
    }

    /// Whether this device holds its account's identity key.
    pub const fn holds_account_key(&self) -> bool {
        self.account_key.is_some()
    }

    /// The store (for inspection).
    pub const fn store(&self) -> &S {
        &self.store
    }

    /// Consumes the device, returning its store (a clean shutdown: everything is already committed).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Commits a transaction: every touched session, sender-key and group record is serialized
    /// into the batch, which is committed atomically. On failure every touched in-memory copy is
    /// discarded, so the next use reloads the state from before the transaction.
    fn finish(&mut self, mut tx: Tx) -> Result<()> {
        for addr in &tx.sessions {
            match self.sessions.get(addr) {
                Some(r) if !r.is_empty() => {
                    let mut p = r.to_proto();
                    tx.batch
                        .put(Namespace::Sessions, addr.to_key().to_vec(), encode(&p));
                    zeroize::Zeroize::zeroize(&mut p);
                }
                _ => {
                    tx.batch.delete(Namespace::Sessions, addr.to_key().to_vec());
                }
            }
        }
        self.serialize_group_changes(&mut tx);
        self.bound_sent_log(&mut tx);
        self.bound_pending_notices(&mut tx);
        let batch = std::mem::take(&mut tx.batch);
        if let Err(e) = self.store.commit(batch) {
            for addr in &tx.sessions {
                self.sessions.remove(addr);
            }
            self.discard_group_changes(&tx);
            return Err(e.into());
        }
        if let Some(id) = tx.next_message_id {
            self.next_message_id = id;
        }
        self.apply_sent_log(&mut tx);
        self.apply_pending_notices(&mut tx);
        Ok(())
    }

    /// Whether the store was left unusable by a commit whose outcome is unknown (a failed
    /// flush); [`Device::reopen_store`] recovers.
    pub fn store_poisoned(&self) -> bool {
        self.store.is_poisoned()
    }

    /// Reopens a poisoned store and reloads this device from it: the failed commit is then
    /// either entirely durable or entirely absent, and the in-memory state matches the disk
    /// again. Messages it left in the inbox show in [`Device::pending_messages`].
    ///
    /// # Errors
    /// [`DeviceError::Store`] if the store cannot be reopened (the device stays unusable); a store
    /// that no longer holds a valid device is refused as by [`Device::open`].
    pub fn reopen_store(&mut self) -> Result<()> {
        self.store.reopen()?;
        // Load a copy through `open`, so the reload is exactly what a restart would see.
        let mut copy = crate::store::memory::MemoryKv::new();
        let mut batch = Batch::new();
        for ns in Namespace::ALL {
            for (k, v) in self.store.scan(ns)? {
                batch.put(ns, k, v);
            }
        }
        copy.commit(batch)?;
        let Device {
            store: _,
            address,
            identity,
            account_key,
            signed_pre_keys,
            one_time_pre_keys,
            kem_pre_keys,
            device_lists,
            sessions,
            groups,
            group_invites,
            group_hints: _,
            sender_keys,
            last_key_requests: _,
            next_pre_key_id,
            next_message_id,
            sent_log,
            retry: _,
            pending_notices,
            delivery_epoch,
            delivery_keys,
        } = Device::open(copy)?;
        self.address = address;
        self.identity = identity;
        self.account_key = account_key;
        self.signed_pre_keys = signed_pre_keys;
        self.one_time_pre_keys = one_time_pre_keys;
        self.kem_pre_keys = kem_pre_keys;
        self.device_lists = device_lists;
        self.sessions = sessions;
        self.groups = groups;
        self.group_invites = group_invites;
        self.sender_keys = sender_keys;
        self.next_pre_key_id = next_pre_key_id;
        self.next_message_id = next_message_id;
        self.sent_log = sent_log;
        self.pending_notices = pending_notices;
        self.delivery_epoch = delivery_epoch;
        self.delivery_keys = delivery_keys;
        // The pending ids as committed; the request and answer times are kept.
        let (_, retry) = healing::load(&self.store)?;
        self.retry.replace_pending(retry);
        Ok(())
    }
}

fn kem_record(k: &KemPreKeyPair) -> pstore::KemPreKeySecret {
    pstore::KemPreKeySecret {
        id: k.id,
        seed: k.seed().to_vec(),
        signature: k.signature.to_vec(),
        last_resort: k.last_resort,
        created_at: k.created_at,
    }
}

fn used_key(id: u32, base: &[u8; KEY_LEN]) -> Vec<u8> {
    let mut k = id_key(id).to_vec();
    k.extend_from_slice(base);
    k
}
