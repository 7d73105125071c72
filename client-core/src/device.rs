//! The local device: its keys, pre-keys, known device lists and sessions, kept in a [`KvStore`].
//!
//! [`Device`] is the facade apps (through the client engine or FFI) drive. Each operation computes
//! its changes, commits them to the store in one atomic batch, and only then returns ciphertext or
//! plaintext. So a crash at any point can neither reuse a message key (the advanced ratchet is durable
//! before the ciphertext exists outside) nor lose a message (the plaintext is durable in the store's
//! inbox before the app sees it; the app removes it with [`Device::ack_message`] once it has it).
//! If a commit fails, the in-memory copy is discarded and reloaded from the store, which still holds
//! the state from before the call.

use std::collections::{BTreeMap, HashMap};

use hush_proto::{Message, store as pstore, wire};
use rand_core::CryptoRng;
use tracing::debug;
use zeroize::Zeroizing;

use crate::consts::{
    KEY_LEN, MAX_FORMER_DEVICE_LISTS, MAX_MESSAGE_LEN, MAX_PLAINTEXT_LEN, ONE_TIME_PRE_KEY_BATCH,
};
use crate::device_list::{DeviceEntry, DeviceList, VerifiedDeviceList};
use crate::error::{AuthError, Error, ProtocolError, Result};
use crate::keys::{
    AccountId, AccountKeyPair, DeviceAddress, DeviceIdentity, DeviceIdentityKeyPair, array,
};
use crate::pqxdh::{self, InitialMessage, InitiatorSecrets};
use crate::prekeys::{
    KemPreKeyPair, OneTimePreKeyPair, PreKeyBundle, PublishedPreKeys, SignedPreKeyPair,
};
use crate::ratchet::RatchetMessage;
use crate::sender_key::{GroupId, SenderKeyRecord};
use crate::session::SessionRecord;
use crate::store::kv::{Batch, KvStore, Namespace};

mod groups;
mod healing;
mod upkeep;
pub use groups::{GroupEntry, GroupIncoming, GroupSend};
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
    /// Whether a group was joined or its state changed (membership, name).
    pub groups_changed: bool,
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
    sender_keys: HashMap<(GroupId, DeviceAddress), SenderKeyRecord>,
    last_key_requests: HashMap<(GroupId, DeviceAddress, u32), u64>,
    next_pre_key_id: u32,
    next_message_id: u64,
    sent_log: healing::SentLog,
    retry: healing::RetryState,
}

/// What an initial message consumed, applied in memory after the commit.
enum Consumed {
    Nothing,
    PreKeys {
        one_time: Option<u32>,
        kem: u32,
        last_resort_base_key: Option<[u8; KEY_LEN]>,
    },
}

fn decode<M: Message + Default>(bytes: &[u8], what: &'static str) -> Result<M> {
    M::decode(bytes).map_err(|_| Error::malformed(what, "does not decode"))
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
            sender_keys: HashMap::new(),
            last_key_requests: HashMap::new(),
            next_pre_key_id: 1,
            next_message_id: 1,
            sent_log: healing::SentLog::default(),
            retry: healing::RetryState::default(),
        };
        device.rotate_signed_pre_key(rng, now)?;
        device.rotate_last_resort_pre_key(rng, now)?;
        device.replenish_pre_keys(rng, now)?;
        if let Some(k) = &device.account_key {
            let mut devices = BTreeMap::new();
            let identity = device.identity.public();
            devices.insert(
                device_id,
                DeviceEntry {
                    device_id,
                    identity,
                    added_at: now,
                },
            );
            let list = DeviceList {
                account,
                version: 1,
                issued_at: now,
                devices,
            }
            .sign(k)?;
            device.accept_device_list(list.signed_bytes(), &account, now)?;
        }
        // The identity record goes last: a crash during creation leaves a store that `open`
        // refuses ("holds no device") and that `create` can start over in.
        let mut batch = Batch::new();
        batch.put(Namespace::Identity, IDENTITY_KEY, encode(&keys));
        drop(keys);
        device.store.commit(batch)?;
        Ok(device)
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
                return Err(Error::malformed(
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
                // An earlier list kept as proof (account ‖ version), read when needed.
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
        let groups = groups::load_groups(&store)?;
        let (sent_log, retry) = healing::load(&store)?;
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
            sender_keys: HashMap::new(),
            last_key_requests: HashMap::new(),
            next_pre_key_id,
            next_message_id,
            sent_log,
            retry,
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

    fn take_pre_key_ids(&mut self, n: u32, batch: &mut Batch) -> Result<u32> {
        let first = self.next_pre_key_id;
        let next = first
            .checked_add(n)
            .ok_or(ProtocolError::Misuse("pre-key ids exhausted"))?;
        batch.put(
            Namespace::Meta,
            NEXT_PRE_KEY_ID,
            Zeroizing::new(u64::from(next).to_be_bytes().to_vec()),
        );
        Ok(first)
    }

    /// Generates a new signed pre-key; the previous one is kept for messages in flight.
    pub fn rotate_signed_pre_key(&mut self, rng: &mut impl CryptoRng, now: u64) -> Result<()> {
        let mut batch = Batch::new();
        let id = self.take_pre_key_ids(1, &mut batch)?;
        let key = SignedPreKeyPair::generate(rng, &self.identity, id, now);
        let p = pstore::SignedPreKeySecret {
            id,
            secret: key.secret_bytes().to_vec(),
            signature: key.signature.to_vec(),
            created_at: now,
        };
        batch.put(Namespace::SignedPreKeys, id_key(id), encode(&p));
        let stale: Vec<u32> = self
            .signed_pre_keys
            .keys()
            .rev()
            .skip(KEEP_ROTATED - 1)
            .copied()
            .collect();
        for old in &stale {
            batch.delete(Namespace::SignedPreKeys, id_key(*old));
        }
        self.store.commit(batch)?;
        self.next_pre_key_id = id + 1;
        for old in stale {
            self.signed_pre_keys.remove(&old);
        }
        self.signed_pre_keys.insert(id, key);
        Ok(())
    }

    /// Generates a new last-resort ML-KEM pre-key; the previous one is kept for messages in flight.
    pub fn rotate_last_resort_pre_key(&mut self, rng: &mut impl CryptoRng, now: u64) -> Result<()> {
        let mut batch = Batch::new();
        let id = self.take_pre_key_ids(1, &mut batch)?;
        let key = KemPreKeyPair::generate(rng, &self.identity, id, true, now);
        batch.put(Namespace::KemPreKeys, id_key(id), encode(&kem_record(&key)));
        let stale: Vec<u32> = self
            .kem_pre_keys
            .values()
            .filter(|k| k.last_resort)
            .map(|k| k.id)
            .rev()
            .skip(KEEP_ROTATED - 1)
            .collect();
        for old in &stale {
            batch.delete(Namespace::KemPreKeys, id_key(*old));
            if let Some(k) = self.kem_pre_keys.get(old) {
                for base in k.used_base_keys() {
                    batch.delete(Namespace::KemPreKeys, used_key(*old, base));
                }
            }
        }
        self.store.commit(batch)?;
        self.next_pre_key_id = id + 1;
        for old in stale {
            self.kem_pre_keys.remove(&old);
        }
        self.kem_pre_keys.insert(id, key);
        Ok(())
    }

    /// Tops the one-time X25519 and ML-KEM pre-keys up to [`ONE_TIME_PRE_KEY_BATCH`] each once fewer
    /// than half are left. Returns whether new keys were made (then publish again).
    pub fn replenish_pre_keys(&mut self, rng: &mut impl CryptoRng, now: u64) -> Result<bool> {
        let have_otk = u32::try_from(self.one_time_pre_keys.len()).unwrap_or(u32::MAX);
        let have_kem = u32::try_from(
            self.kem_pre_keys
                .values()
                .filter(|k| !k.last_resort)
                .count(),
        )
        .unwrap_or(u32::MAX);
        let low = ONE_TIME_PRE_KEY_BATCH / 2;
        let n_otk = if have_otk < low {
            ONE_TIME_PRE_KEY_BATCH - have_otk
        } else {
            0
        };
        let n_kem = if have_kem < low {
            ONE_TIME_PRE_KEY_BATCH - have_kem
        } else {
            0
        };
        if n_otk == 0 && n_kem == 0 {
            return Ok(false);
        }
        let mut batch = Batch::new();
        let first = self.take_pre_key_ids(n_otk + n_kem, &mut batch)?;
        let mut otks = Vec::new();
        let mut kems = Vec::new();
        for id in first..first + n_otk {
            let k = OneTimePreKeyPair::generate(rng, id);
            let p = pstore::OneTimePreKeySecret {
                id,
                secret: k.secret_bytes().to_vec(),
            };
            batch.put(Namespace::OneTimePreKeys, id_key(id), encode(&p));
            otks.push(k);
        }
        for id in first + n_otk..first + n_otk + n_kem {
            let k = KemPreKeyPair::generate(rng, &self.identity, id, false, now);
            batch.put(Namespace::KemPreKeys, id_key(id), encode(&kem_record(&k)));
            kems.push(k);
        }
        self.store.commit(batch)?;
        self.next_pre_key_id = first + n_otk + n_kem;
        self.one_time_pre_keys
            .extend(otks.into_iter().map(|k| (k.id, k)));
        self.kem_pre_keys
            .extend(kems.into_iter().map(|k| (k.id, k)));
        Ok(true)
    }

    /// Everything to publish on the relay so that others can start sessions with this device.
    pub fn published_pre_keys(&self) -> Result<PublishedPreKeys> {
        let spk = self
            .signed_pre_keys
            .values()
            .next_back()
            .ok_or(ProtocolError::Misuse("no signed pre-key"))?;
        let last_resort = self
            .kem_pre_keys
            .values()
            .rfind(|k| k.last_resort)
            .ok_or(ProtocolError::Misuse("no last-resort pre-key"))?;
        Ok(PublishedPreKeys {
            address: self.address,
            identity: self.identity.public(),
            signed_pre_key: spk.to_wire(),
            one_time_pre_keys: self
                .one_time_pre_keys
                .values()
                .map(OneTimePreKeyPair::to_wire)
                .collect(),
            kem_pre_keys: self
                .kem_pre_keys
                .values()
                .filter(|k| !k.last_resort)
                .map(KemPreKeyPair::to_wire)
                .collect(),
            last_resort_kem_pre_key: last_resort.to_wire(),
        })
    }

    /// Number of unused one-time X25519 pre-keys.
    pub fn one_time_pre_key_count(&self) -> usize {
        self.one_time_pre_keys.len()
    }

    /// The device list accepted for `account`, if any.
    pub fn device_list(&self, account: &AccountId) -> Option<&VerifiedDeviceList> {
        self.device_lists.get(account)
    }

    /// Verifies and accepts a signed device list for `account` (rejecting rollbacks and conflicts).
    /// Sessions with devices that left the list or whose identity changed are deleted, so a device
    /// that re-registered gets a fresh session. Returns whether the list was new.
    pub fn accept_device_list(
        &mut self,
        signed: &[u8],
        account: &AccountId,
        _now: u64,
    ) -> Result<bool> {
        let list = VerifiedDeviceList::verify(signed, account)?;
        if !list.check_successor(self.device_lists.get(account))? {
            return Ok(false);
        }
        let mut tx = Tx::default();
        tx.batch.put(
            Namespace::DeviceLists,
            account.as_bytes().to_vec(),
            Zeroizing::new(signed.to_vec()),
        );
        let mut dropped = Vec::new();
        for (k, v) in self.store.scan(Namespace::Sessions)? {
            let Some((acct, dev)) = k.split_at_checked(KEY_LEN) else {
                continue;
            };
            if acct != account.as_bytes() {
                continue;
            }
            let device_id = u32::from_be_bytes(array(dev, "stored session key", "bad device id")?);
            let record = SessionRecord::from_proto(&decode(&v, "stored session record")?)?;
            let on_list = list.identity_of(device_id).ok();
            let keep = record
                .current()
                .map(|s| Some(s.remote_identity()) == on_list)
                .unwrap_or(on_list.is_some());
            if !keep {
                tx.batch.delete(Namespace::Sessions, k.clone());
                dropped.push(DeviceAddress {
                    account: *account,
                    device_id,
                });
            }
        }
        // A device that left the list (or changed identity) must not read what groups send next.
        let lost = self.device_lists.get(account).is_some_and(|old| {
            old.list()
                .devices
                .values()
                .any(|d| list.identity_of(d.device_id).ok() != Some(d.identity))
        });
        if lost {
            self.mark_rotation_for_member(account, &mut tx);
            if let Some(old) = self.device_lists.get(account) {
                self.keep_former_list(old.clone(), &mut tx)?;
            }
        }
        self.finish(tx)?;
        for a in dropped {
            debug!(
                device_id = a.device_id,
                "session dropped: device left the list or changed identity"
            );
            self.sessions.remove(&a);
        }
        self.device_lists.insert(*account, list);
        Ok(true)
    }

    /// Keeps `old`, a list being replaced by one without some of its devices, under
    /// `account ‖ u64be(version)` in `DeviceLists`: the proof that those devices were listed
    /// (for group changes they signed, §17.6). At most [`MAX_FORMER_DEVICE_LISTS`] per account,
    /// the newest.
    fn keep_former_list(&self, old: VerifiedDeviceList, tx: &mut Tx) -> Result<()> {
        let account = old.list().account;
        let mut key = account.as_bytes().to_vec();
        key.extend_from_slice(&old.list().version.to_be_bytes());
        let mut kept: Vec<Vec<u8>> = self
            .store
            .scan(Namespace::DeviceLists)?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.len() == KEY_LEN + 8 && k.starts_with(account.as_bytes()) && *k != key)
            .collect();
        kept.sort();
        while kept.len() >= MAX_FORMER_DEVICE_LISTS {
            let oldest = kept.remove(0);
            tx.batch.delete(Namespace::DeviceLists, oldest);
        }
        tx.batch.put(
            Namespace::DeviceLists,
            key,
            Zeroizing::new(old.signed_bytes().to_vec()),
        );
        Ok(())
    }

    /// The earlier lists of `account` this device kept (see [`Self::keep_former_list`]), oldest
    /// first.
    pub(crate) fn former_lists(&self, account: &AccountId) -> Result<Vec<VerifiedDeviceList>> {
        let mut out = Vec::new();
        for (k, v) in self.store.scan(Namespace::DeviceLists)? {
            if k.len() == KEY_LEN + 8 && k.starts_with(account.as_bytes()) {
                out.push(VerifiedDeviceList::verify(&v, account)?);
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) a device on this account's list and signs the new version. Only the device
    /// holding the account key can do this. Returns the new signed list to publish.
    pub fn add_device(
        &mut self,
        device_id: u32,
        identity: DeviceIdentity,
        now: u64,
    ) -> Result<VerifiedDeviceList> {
        self.edit_own_list(now, |l| {
            l.devices.insert(
                device_id,
                DeviceEntry {
                    device_id,
                    identity,
                    added_at: now,
                },
            );
        })
    }

    /// Removes a device from this account's list and signs the new version.
    pub fn remove_device(&mut self, device_id: u32, now: u64) -> Result<VerifiedDeviceList> {
        self.edit_own_list(now, |l| {
            l.devices.remove(&device_id);
        })
    }

    fn edit_own_list(
        &mut self,
        now: u64,
        edit: impl FnOnce(&mut DeviceList),
    ) -> Result<VerifiedDeviceList> {
        let account = self.address.account;
        let key = self.account_key.as_ref().ok_or(ProtocolError::Misuse(
            "this device does not hold the account key",
        ))?;
        let mut list = self
            .device_lists
            .get(&account)
            .ok_or(ProtocolError::UnknownAccount)?
            .list()
            .clone();
        list.version = list
            .version
            .checked_add(1)
            .ok_or(ProtocolError::Misuse("device list version exhausted"))?;
        list.issued_at = now;
        edit(&mut list);
        let signed = list.sign(key)?;
        self.accept_device_list(signed.signed_bytes(), &account, now)?;
        Ok(signed)
    }

    fn known_identity(&self, addr: &DeviceAddress) -> Result<DeviceIdentity> {
        self.device_lists
            .get(&addr.account)
            .ok_or(ProtocolError::UnknownAccount)?
            .identity_of(addr.device_id)
    }

    fn take_record(&mut self, addr: &DeviceAddress) -> Result<SessionRecord> {
        if let Some(r) = self.sessions.remove(addr) {
            return Ok(r);
        }
        match self.store.get(Namespace::Sessions, &addr.to_key())? {
            Some(v) => SessionRecord::from_proto(&decode(&v, "stored session record")?),
            None => Ok(SessionRecord::new()),
        }
    }

    /// Commits a transaction: every touched session, sender-key and group record is serialized
    /// into the batch, which is committed atomically. On failure every touched in-memory copy is
    /// discarded, so the next use reloads the state from before the transaction.
    pub(crate) fn finish(&mut self, mut tx: Tx) -> Result<()> {
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
        Ok(())
    }

    /// Whether a session usable for sending to `to` exists (otherwise fetch its bundle and call
    /// [`Device::start_session`]).
    pub fn has_session(&mut self, to: &DeviceAddress, now: u64) -> Result<bool> {
        let identity = self.known_identity(to)?;
        let mut record = self.take_record(to)?;
        let usable = record.sending_session(&identity, now).is_ok();
        self.sessions.insert(*to, record);
        Ok(usable)
    }

    /// The devices among `addrs` with no usable session: fetch their bundles and call
    /// [`Device::start_session`] before sending to them.
    pub fn missing_sessions(
        &mut self,
        addrs: &[DeviceAddress],
        now: u64,
    ) -> Result<Vec<DeviceAddress>> {
        let mut out = Vec::new();
        for a in addrs {
            if !self.has_session(a, now)? {
                out.push(*a);
            }
        }
        Ok(out)
    }

    /// Starts a session from a pre-key bundle (verified here against the known device list).
    pub fn start_session(
        &mut self,
        bundle: &PreKeyBundle,
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<()> {
        let mut tx = Tx::default();
        self.start_session_in(bundle, rng, now, &mut tx)?;
        self.finish(tx)
    }

    /// Starts a session from a pre-key bundle within `tx`, and returns the remote address.
    pub(crate) fn start_session_in(
        &mut self,
        bundle: &PreKeyBundle,
        rng: &mut impl CryptoRng,
        now: u64,
        tx: &mut Tx,
    ) -> Result<DeviceAddress> {
        let account = AccountId::from_bytes(&bundle.0.account_key)?;
        let list = self
            .device_lists
            .get(&account)
            .ok_or(ProtocolError::UnknownAccount)?;
        let verified = bundle.verify(list)?;
        let to = verified.address();
        if to == self.address {
            return Err(
                ProtocolError::Misuse("a device does not start a session with itself").into(),
            );
        }
        let init = pqxdh::initiate(
            self.address,
            &self.identity,
            &verified,
            InitiatorSecrets::random(rng),
            now,
        )?;
        let mut record = self.take_record(&to)?;
        record.promote_new(init.session);
        self.sessions.insert(to, record);
        tx.sessions.insert(to);
        Ok(to)
    }

    /// Encrypts `content` for `to` inside transaction `tx` (committed later by the caller).
    pub(crate) fn seal(
        &mut self,
        to: &DeviceAddress,
        content: &wire::Content,
        rng: &mut impl CryptoRng,
        now: u64,
        tx: &mut Tx,
    ) -> Result<Vec<u8>> {
        let identity = self.known_identity(to)?;
        let local_identity = self.identity.public();
        let mut record = self.take_record(to)?;
        let plaintext = Zeroizing::new(content.encode_to_vec());
        let out = (|| {
            let session = record.sending_session(&identity, now)?;
            let enc = session.encrypt(&plaintext, rng, now)?;
            let body = match session.pending() {
                Some(p) => wire::pairwise_message::Body::Initial(InitialMessage::wire(
                    p,
                    local_identity,
                    &enc.message,
                )),
                None => wire::pairwise_message::Body::Ratchet(enc.message.to_wire()),
            };
            Ok::<_, Error>(wire::PairwiseMessage { body: Some(body) }.encode_to_vec())
        })();
        self.sessions.insert(*to, record);
        if let Ok(bytes) = &out {
            tx.sessions.insert(*to);
            // Sender keys are not kept: they are secrets, and a member that misses one asks
            // for it (§18.3).
            let secret = matches!(content.body, Some(wire::content::Body::SenderKey(_)));
            if !tx.unlogged && !secret {
                self.log_sent(to, &identity, bytes, &plaintext, now, 0, tx);
            }
        }
        out
    }

    /// Encrypts an application payload for device `to`. The advanced session is committed before
    /// the bytes (an encoded [`PairwiseMessage`](wire::PairwiseMessage)) are returned.
    pub fn encrypt(
        &mut self,
        to: &DeviceAddress,
        plaintext: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<Vec<u8>> {
        self.encrypt_app(to, plaintext, rng, now, false)
    }

    /// As [`Device::encrypt`], for a payload that is worth nothing later (typing, presence):
    /// it is not kept in the sent log, so a retry request never sends it again (PROTOCOL.md §20).
    pub fn encrypt_ephemeral(
        &mut self,
        to: &DeviceAddress,
        plaintext: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<Vec<u8>> {
        self.encrypt_app(to, plaintext, rng, now, true)
    }

    fn encrypt_app(
        &mut self,
        to: &DeviceAddress,
        plaintext: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
        unlogged: bool,
    ) -> Result<Vec<u8>> {
        if plaintext.len() > MAX_PLAINTEXT_LEN - 16 {
            return Err(ProtocolError::TooLarge(plaintext.len()).into());
        }
        let content = wire::Content {
            body: Some(wire::content::Body::App(plaintext.to_vec())),
        };
        let mut tx = Tx {
            unlogged,
            ..Tx::default()
        };
        let bytes = self.seal(to, &content, rng, now, &mut tx)?;
        self.finish(tx)?;
        Ok(bytes)
    }

    /// Adds a decrypted application payload to the inbox within `tx`.
    pub(crate) fn add_to_inbox(
        &mut self,
        tx: &mut Tx,
        from: DeviceAddress,
        group: Option<GroupId>,
        plaintext: Zeroizing<Vec<u8>>,
        now: u64,
    ) -> Received {
        let id = tx.next_message_id.unwrap_or(self.next_message_id);
        let mut stored = pstore::StoredMessage {
            account_key: from.account.as_bytes().to_vec(),
            device_id: from.device_id,
            plaintext: plaintext.to_vec(),
            received_at: now,
            group_id: group.map(|g| g.0.to_vec()).unwrap_or_default(),
        };
        tx.batch.put(
            Namespace::Messages,
            id.to_be_bytes().to_vec(),
            encode(&stored),
        );
        zeroize::Zeroize::zeroize(&mut stored);
        tx.batch.put(
            Namespace::Meta,
            NEXT_MESSAGE_ID,
            Zeroizing::new((id + 1).to_be_bytes().to_vec()),
        );
        tx.next_message_id = Some(id + 1);
        Received {
            id,
            from,
            group,
            plaintext,
            received_at: now,
        }
    }

    /// Decrypts a pairwise message from `from` (the sender as authenticated by the relay) and
    /// processes its content. Application payloads are committed to the inbox together with the
    /// session change before they are returned; control contents (sender keys, retry requests,
    /// group changes) are applied and may produce messages to send.
    pub fn decrypt(
        &mut self,
        from: &DeviceAddress,
        bytes: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<Incoming> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(Error::malformed("pairwise message", "too large"));
        }
        let msg: wire::PairwiseMessage = decode(bytes, "pairwise message")?;
        let identity = self.known_identity(from)?;
        let mut record = self.take_record(from)?;
        let result = match &msg.body {
            Some(wire::pairwise_message::Body::Initial(m)) => InitialMessage::try_from(m)
                .and_then(|im| self.decrypt_initial(from, identity, &mut record, &im, now)),
            Some(wire::pairwise_message::Body::Ratchet(m)) => {
                RatchetMessage::try_from(m).and_then(|rm| {
                    if record
                        .current()
                        .is_some_and(|s| s.remote_identity() != identity)
                    {
                        return Err(AuthError::IdentityMismatch.into());
                    }
                    record.decrypt(&rm, now).map(|d| (d, Consumed::Nothing))
                })
            }
            None => Err(Error::malformed("pairwise message", "empty")),
        };
        let (decrypted, consumed) = match result {
            Ok(x) => x,
            Err(e) => {
                self.sessions.insert(*from, record);
                return Err(e);
            }
        };
        // From here on the record is advanced in memory; any error discards it (reload from store).
        self.sessions.insert(*from, record);
        let mut tx = Tx::default();
        tx.sessions.insert(*from);
        self.note_decrypted(from, bytes, &mut tx);
        let incoming =
            match self.process_content(from, &decrypted.plaintext, rng, now, &mut tx, &consumed) {
                Ok(i) => i,
                Err(e) => {
                    for a in &tx.sessions {
                        self.sessions.remove(a);
                    }
                    self.discard_group_changes(&tx);
                    return Err(e);
                }
            };
        self.finish(tx)?;
        if let Consumed::PreKeys {
            one_time,
            kem,
            last_resort_base_key,
        } = consumed
        {
            if let Some(o) = one_time {
                self.one_time_pre_keys.remove(&o);
            }
            match last_resort_base_key {
                Some(base) => {
                    if let Some(k) = self.kem_pre_keys.get_mut(&kem) {
                        k.mark_used_base_keys([base]);
                    }
                }
                None => {
                    self.kem_pre_keys.remove(&kem);
                }
            }
        }
        Ok(incoming)
    }

    fn process_content(
        &mut self,
        from: &DeviceAddress,
        plaintext: &[u8],
        rng: &mut impl CryptoRng,
        now: u64,
        tx: &mut Tx,
        consumed: &Consumed,
    ) -> Result<Incoming> {
        if let Consumed::PreKeys {
            one_time,
            kem,
            last_resort_base_key,
        } = consumed
        {
            if let Some(o) = one_time {
                tx.batch.delete(Namespace::OneTimePreKeys, id_key(*o));
            }
            match last_resort_base_key {
                Some(base) => {
                    tx.batch.put(
                        Namespace::KemPreKeys,
                        used_key(*kem, base),
                        Zeroizing::new(Vec::new()),
                    );
                }
                None => {
                    tx.batch.delete(Namespace::KemPreKeys, id_key(*kem));
                }
            }
        }
        let content: wire::Content = decode(plaintext, "message content")?;
        let mut incoming = Incoming::default();
        match content.body {
            Some(wire::content::Body::App(body)) => {
                incoming.received.push(self.add_to_inbox(
                    tx,
                    *from,
                    None,
                    Zeroizing::new(body),
                    now,
                ));
            }
            Some(wire::content::Body::SenderKey(d)) => {
                incoming.received = self.accept_sender_key(from, &d, now, tx)?;
            }
            Some(wire::content::Body::SenderKeyRequest(r)) => {
                incoming.outgoing = self.answer_sender_key_request(from, &r, rng, now, tx)?;
            }
            Some(wire::content::Body::GroupChanges(c)) => {
                (incoming.received, incoming.groups_changed) =
                    self.accept_group_changes(from, &c, now, tx)?;
            }
            Some(wire::content::Body::GroupSyncRequest(_)) => {
                incoming.outgoing = self.answer_group_sync(from, rng, now, tx)?;
            }
            Some(wire::content::Body::RetryRequest(r)) => {
                incoming.outgoing = self.answer_retry_request(from, &r, rng, now, tx)?;
            }
            None => return Err(Error::malformed("message content", "empty")),
        }
        Ok(incoming)
    }

    fn decrypt_initial(
        &self,
        from: &DeviceAddress,
        identity: DeviceIdentity,
        record: &mut SessionRecord,
        m: &InitialMessage,
        now: u64,
    ) -> Result<(crate::ratchet::Decrypted, Consumed)> {
        if m.sender != *from || m.sender_identity != identity {
            return Err(AuthError::IdentityMismatch.into());
        }
        if record.has_base_key(&m.base_key) {
            return record
                .decrypt_with_base_key(&m.base_key, &m.message, now)
                .map(|d| (d, Consumed::Nothing));
        }
        let spk =
            self.signed_pre_keys
                .get(&m.signed_pre_key_id)
                .ok_or(ProtocolError::UnknownPreKey {
                    kind: "signed",
                    id: m.signed_pre_key_id,
                })?;
        let otk = match m.one_time_pre_key_id {
            Some(id) => Some(self.one_time_pre_keys.get(&id).ok_or(
                ProtocolError::UnknownPreKey {
                    kind: "one-time",
                    id,
                },
            )?),
            None => None,
        };
        let kem = self
            .kem_pre_keys
            .get(&m.kem_pre_key_id)
            .ok_or(ProtocolError::UnknownPreKey {
                kind: "ML-KEM",
                id: m.kem_pre_key_id,
            })?;
        let mut init = pqxdh::respond(self.address, &self.identity, spk, otk, kem, m, now)?;
        let decrypted = init.session.decrypt(&m.message, now)?;
        record.promote_new(init.session);
        let consumed = Consumed::PreKeys {
            one_time: m.one_time_pre_key_id,
            kem: m.kem_pre_key_id,
            last_resort_base_key: kem.last_resort.then_some(m.base_key),
        };
        Ok((decrypted, consumed))
    }

    /// Messages decrypted but not yet acknowledged by the app (e.g. after a crash), oldest first.
    pub fn pending_messages(&self) -> Result<Vec<Received>> {
        let mut out = Vec::new();
        for (k, v) in self.store.scan(Namespace::Messages)? {
            let id = u64::from_be_bytes(array(&k, "stored message key", "must be 8 bytes")?);
            let m: pstore::StoredMessage = decode(&v, "stored message")?;
            out.push(Received {
                id,
                from: DeviceAddress {
                    account: AccountId::from_bytes(&m.account_key)?,
                    device_id: m.device_id,
                },
                group: if m.group_id.is_empty() {
                    None
                } else {
                    Some(GroupId::from_bytes(&m.group_id)?)
                },
                plaintext: Zeroizing::new(m.plaintext.clone()),
                received_at: m.received_at,
            });
        }
        Ok(out)
    }

    /// Removes a message from the inbox once the app has it.
    pub fn ack_message(&mut self, id: u64) -> Result<()> {
        let mut batch = Batch::new();
        batch.delete(Namespace::Messages, id.to_be_bytes().to_vec());
        self.store.commit(batch).map_err(Error::from)
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
    /// [`Error::Store`] if the store cannot be reopened (the device stays unusable); a store
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
            sender_keys,
            last_key_requests: _,
            next_pre_key_id,
            next_message_id,
            sent_log,
            retry: _,
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
        self.sender_keys = sender_keys;
        self.next_pre_key_id = next_pre_key_id;
        self.next_message_id = next_message_id;
        self.sent_log = sent_log;
        // The pending ids as committed; the request and answer times are kept.
        let (_, retry) = healing::load(&self.store)?;
        self.retry.replace_pending(retry);
        Ok(())
    }

    /// Deletes sessions unused for too long (see [`crate::consts::SESSION_MAX_IDLE_MS`]).
    pub fn retire_stale_sessions(&mut self, now: u64) -> Result<usize> {
        let mut batch = Batch::new();
        let mut changed = Vec::new();
        for (k, v) in self.store.scan(Namespace::Sessions)? {
            let mut record = SessionRecord::from_proto(&decode(&v, "stored session record")?)?;
            if record.retire_stale(now) {
                if record.is_empty() {
                    batch.delete(Namespace::Sessions, k.clone());
                } else {
                    batch.put(Namespace::Sessions, k.clone(), encode(&record.to_proto()));
                }
                changed.push(k);
            }
        }
        let n = changed.len();
        self.store.commit(batch)?;
        // Cached records are reloaded from the store on next use.
        self.sessions.clear();
        Ok(n)
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
