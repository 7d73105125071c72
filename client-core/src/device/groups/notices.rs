//! Pending group notices: a durable outbox for the notices of this device's own group changes
//! (PROTOCOL.md §17.5).
//!
//! An added account learns the group secret only from the notices of the change that added it.
//! They are therefore kept in the store, in the transaction that applies the change, until the
//! relay has taken them ([`Device::notices_sent`]):
//!
//! * a notice sealed in that transaction is kept with its bytes and a 16-byte client id (one per
//!   change and recipient account, derived from them), so that sending it again after a lost answer is the same
//!   send: the relay queues a (recipient device, sender device, client id) once, and a copy it
//!   queued again after forgetting the id arrives as the same pairwise message, which the
//!   receiving device refuses as a duplicate (already-used message key) and drops;
//! * a notice for a device this device had no session with is kept unsealed, and one for an
//!   account whose device list it did not hold is kept for the whole account (device id 0);
//!   once the app has fetched the list and started sessions ([`Device::pending_notice_targets`]),
//!   [`Device::pending_notices`] seals them from the group record (the secret, the position and
//!   its head), in one commit.
//!
//! A pending notice is dropped when the relay has taken it, after
//! [`PENDING_NOTICE_MAX_AGE_MS`], when its group is no longer known, when its device is no
//! longer on its account's list, or when it carries the secret and its account is no longer a
//! member; past [`PENDING_NOTICES_MAX_ENTRIES`] or [`PENDING_NOTICES_MAX_BYTES`], the oldest
//! without the secret go first, then the oldest with it. A device re-registered under the same
//! address (another identity) gets the notice sealed again, under a new client id.

use std::collections::{BTreeMap, BTreeSet};

use hush_proto::wire;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use hkdf::Hkdf;
use sha2::Sha256;

use crate::consts::{
    KEY_LEN, PENDING_NOTICE_CLIENT_ID_LABEL, PENDING_NOTICE_MAX_AGE_MS, PENDING_NOTICES_MAX_BYTES,
    PENDING_NOTICES_MAX_ENTRIES,
};
use crate::device::error::{DeviceError, Result};
use crate::device::{Device, Tx};
use crate::error::{Error, ProtocolError};
use crate::keys::{AccountId, DeviceAddress, DeviceIdentity, array};
use crate::sender_key::GroupId;
use crate::store::kv::{KvStore, Namespace};

/// Version byte of a stored pending notice.
const RECORD_VERSION: u8 = 1;
/// Flag: the notice carries the group secret.
const FLAG_SECRET: u8 = 1;
/// Flag: the notice is sealed (the recipient's identity and the message follow).
const FLAG_SEALED: u8 = 2;
/// Version, flags, creation time, client id.
const HEADER_LEN: usize = 1 + 1 + 8 + 16;
/// Group id, position, recipient address.
const KEY_BYTES: usize = 32 + 8 + KEY_LEN + 4;
/// The length of a recipient identity (signing ‖ DH key).
const IDENTITY_LEN: usize = 2 * KEY_LEN;

/// Which pending notice: the group, the log position of the change it announces, and the
/// recipient device (device id 0 stands for every device of an account whose device list this
/// device did not hold when the change was applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NoticeKey {
    /// The group.
    pub group: GroupId,
    /// The position of the change the notice announces.
    pub seq: u64,
    /// The recipient.
    pub to: DeviceAddress,
}

impl NoticeKey {
    fn to_bytes(self) -> Vec<u8> {
        let mut k = Vec::with_capacity(KEY_BYTES);
        k.extend_from_slice(&self.group.0);
        k.extend_from_slice(&self.seq.to_be_bytes());
        k.extend_from_slice(&self.to.to_key());
        k
    }

    fn from_bytes(k: &[u8]) -> Result<Self> {
        const WHAT: &str = "stored pending notice";
        if k.len() != KEY_BYTES {
            return Err(DeviceError::malformed(WHAT, "bad key"));
        }
        let (group, rest) = k
            .split_at_checked(32)
            .ok_or(DeviceError::malformed(WHAT, "bad key"))?;
        let (seq, rest) = rest
            .split_at_checked(8)
            .ok_or(DeviceError::malformed(WHAT, "bad key"))?;
        let (account, device) = rest
            .split_at_checked(KEY_LEN)
            .ok_or(DeviceError::malformed(WHAT, "bad key"))?;
        Ok(Self {
            group: GroupId(array(group, WHAT, "bad key")?),
            seq: u64::from_be_bytes(array(seq, WHAT, "bad key")?),
            to: DeviceAddress {
                account: AccountId::from_bytes(account)?,
                device_id: u32::from_be_bytes(array(device, WHAT, "bad key")?),
            },
        })
    }

    /// Whether the notice is for every device of an account (its list was not held).
    const fn whole_account(&self) -> bool {
        self.to.device_id == 0
    }
}

/// What is known of a pending notice in memory (its message stays in the store).
#[derive(Clone, Copy)]
pub(crate) struct NoticeMeta {
    created_at: u64,
    secret: bool,
    client_id: [u8; 16],
    /// The identity the notice is sealed to, once it is.
    sealed_to: Option<DeviceIdentity>,
    /// The length of the sealed message (0 before sealing).
    size: usize,
}

/// The pending notices of a device (an index; the sealed messages stay in the store).
#[derive(Default)]
pub(crate) struct PendingNotices {
    map: BTreeMap<NoticeKey, NoticeMeta>,
    bytes: usize,
}

impl PendingNotices {
    fn insert(&mut self, k: NoticeKey, m: NoticeMeta) {
        if let Some(old) = self.map.insert(k, m) {
            self.bytes = self.bytes.saturating_sub(old.size);
        }
        self.bytes = self.bytes.saturating_add(m.size);
    }

    fn remove(&mut self, k: &NoticeKey) {
        if let Some(old) = self.map.remove(k) {
            self.bytes = self.bytes.saturating_sub(old.size);
        }
    }
}

/// The pending-notice changes of one transaction, applied to the index once it commits.
#[derive(Default)]
pub(crate) struct NoticeTx {
    put: BTreeMap<NoticeKey, NoticeMeta>,
    removed: BTreeSet<NoticeKey>,
}

/// A sealed group notice to hand to the relay: the pairwise message for `key.to`, under
/// `client_id` (the same on every attempt). Once the relay has taken it, confirm it with
/// [`Device::notices_sent`].
pub struct PendingNotice {
    /// Which notice.
    pub key: NoticeKey,
    /// The client id to send it under.
    pub client_id: [u8; 16],
    /// The encoded [`PairwiseMessage`](wire::PairwiseMessage).
    pub bytes: Vec<u8>,
}

/// What pending notices wait for before they can be sealed: the device lists of `accounts`,
/// and sessions with `devices` (fetch their bundles, [`Device::start_session`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NoticeTargets {
    /// Accounts whose device list is not held.
    pub accounts: Vec<AccountId>,
    /// Devices a notice waits for a session with.
    pub devices: Vec<DeviceAddress>,
}

impl NoticeTargets {
    /// Whether nothing waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.devices.is_empty()
    }
}

fn encode_record(m: &NoticeMeta, bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(HEADER_LEN + IDENTITY_LEN + bytes.len()));
    let mut flags = 0;
    if m.secret {
        flags |= FLAG_SECRET;
    }
    if m.sealed_to.is_some() {
        flags |= FLAG_SEALED;
    }
    v.push(RECORD_VERSION);
    v.push(flags);
    v.extend_from_slice(&m.created_at.to_be_bytes());
    v.extend_from_slice(&m.client_id);
    if let Some(id) = &m.sealed_to {
        v.extend_from_slice(&id.to_bytes());
        v.extend_from_slice(bytes);
    }
    v
}

/// Decodes a stored record: its index entry and, if sealed, the message.
fn decode_record(v: &[u8]) -> Result<(NoticeMeta, &[u8])> {
    const WHAT: &str = "stored pending notice";
    let (header, rest) = v
        .split_at_checked(HEADER_LEN)
        .ok_or(DeviceError::malformed(WHAT, "too short"))?;
    let (version, header) = header
        .split_first()
        .ok_or(DeviceError::malformed(WHAT, "too short"))?;
    if *version != RECORD_VERSION {
        return Err(DeviceError::malformed(WHAT, "unknown version"));
    }
    let (flags, header) = header
        .split_first()
        .ok_or(DeviceError::malformed(WHAT, "too short"))?;
    let (created_at, client_id) = header
        .split_at_checked(8)
        .ok_or(DeviceError::malformed(WHAT, "too short"))?;
    let mut m = NoticeMeta {
        created_at: u64::from_be_bytes(array(created_at, WHAT, "bad time")?),
        secret: flags & FLAG_SECRET != 0,
        client_id: array(client_id, WHAT, "bad client id")?,
        sealed_to: None,
        size: 0,
    };
    if flags & FLAG_SEALED == 0 {
        return Ok((m, &[]));
    }
    let (identity, bytes) = rest
        .split_at_checked(IDENTITY_LEN)
        .ok_or(DeviceError::malformed(WHAT, "too short"))?;
    if bytes.is_empty() {
        return Err(DeviceError::malformed(WHAT, "sealed without a message"));
    }
    m.sealed_to = Some(DeviceIdentity::from_bytes(identity)?);
    m.size = bytes.len();
    Ok((m, bytes))
}

/// Loads the index of the pending notices held in a store.
pub(in crate::device) fn load_pending_notices<S: KvStore>(store: &S) -> Result<PendingNotices> {
    let mut out = PendingNotices::default();
    for (k, v) in store.scan(Namespace::PendingNotices)? {
        let key = NoticeKey::from_bytes(&k)?;
        let (m, _) = decode_record(&v)?;
        out.insert(key, m);
    }
    Ok(out)
}

impl<S: KvStore> Device<S> {
    /// The client id of the notices of the change at `seq` of group `g` to the devices of
    /// `account` ([`PENDING_NOTICE_CLIENT_ID_LABEL`]): HKDF-SHA-256 keyed with this device's
    /// identity DH secret, so that nobody else can compute it (the relay queues a (recipient,
    /// sender class, client id) once: an id others could compute, they could take first and so
    /// have this device's notice dropped as a copy).
    pub(in crate::device) fn change_client_id(
        &self,
        g: &GroupId,
        seq: u64,
        account: &AccountId,
    ) -> [u8; 16] {
        let (_, dh) = self.identity.secret_bytes();
        let prk = Hkdf::<Sha256>::new(None, &dh[..]);
        let mut info = Vec::with_capacity(PENDING_NOTICE_CLIENT_ID_LABEL.len() + 32 + 8 + 32);
        info.extend_from_slice(PENDING_NOTICE_CLIENT_ID_LABEL);
        info.extend_from_slice(&g.0);
        info.extend_from_slice(&seq.to_be_bytes());
        info.extend_from_slice(account.as_bytes());
        let mut id = [0u8; 16];
        // 16 bytes are within what HKDF-SHA-256 gives (255 × 32): the expansion cannot fail.
        if prk.expand(&info, &mut id).is_err() {
            tracing::error!("client id expansion failed");
        }
        id
    }
}

/// A fresh client id (a notice sealed again for another device at the same address).
fn random_client_id(rng: &mut impl CryptoRng) -> [u8; 16] {
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    id
}

impl<S: KvStore> Device<S> {
    /// Keeps a notice within `tx`: sealed (`sealed`: the identity it was sealed to and the
    /// message) or waiting for a session or a list.
    pub(in crate::device) fn keep_notice(
        &self,
        key: NoticeKey,
        secret: bool,
        client_id: [u8; 16],
        created_at: u64,
        sealed: Option<(DeviceIdentity, &[u8])>,
        tx: &mut Tx,
    ) {
        let m = NoticeMeta {
            created_at,
            secret,
            client_id,
            sealed_to: sealed.map(|(i, _)| i),
            size: sealed.map_or(0, |(_, b)| b.len()),
        };
        let bytes = sealed.map_or(&[][..], |(_, b)| b);
        tx.batch.put(
            Namespace::PendingNotices,
            key.to_bytes(),
            encode_record(&m, bytes),
        );
        tx.notices.removed.remove(&key);
        tx.notices.put.insert(key, m);
    }

    fn drop_notice(key: NoticeKey, tx: &mut Tx) {
        tx.batch.delete(Namespace::PendingNotices, key.to_bytes());
        tx.notices.put.remove(&key);
        tx.notices.removed.insert(key);
    }

    /// The pending notices as they would be with `tx`'s changes.
    fn notices_with(&self, tx: &Tx) -> BTreeMap<NoticeKey, NoticeMeta> {
        let mut view = self.pending_notices.map.clone();
        for k in &tx.notices.removed {
            view.remove(k);
        }
        view.extend(tx.notices.put.iter().map(|(k, m)| (*k, *m)));
        view
    }

    /// Before a commit: drops pending notices while the index with `tx`'s changes would exceed
    /// its bounds — the oldest without the secret first, then the oldest with it — but none that
    /// `tx` itself keeps.
    pub(in crate::device) fn bound_pending_notices(&self, tx: &mut Tx) {
        if tx.notices.put.is_empty() {
            return;
        }
        let view = self.notices_with(tx);
        let mut entries = view.len();
        let mut bytes: usize = view.values().map(|m| m.size).sum();
        if entries <= PENDING_NOTICES_MAX_ENTRIES && bytes <= PENDING_NOTICES_MAX_BYTES {
            return;
        }
        let mut order: Vec<(&NoticeKey, &NoticeMeta)> = view.iter().collect();
        order.sort_by_key(|(k, m)| (m.secret, m.created_at, **k));
        let mut victims = Vec::new();
        for (k, m) in order {
            if entries <= PENDING_NOTICES_MAX_ENTRIES && bytes <= PENDING_NOTICES_MAX_BYTES {
                break;
            }
            // What this transaction keeps is never dropped by it: a change's own notices go out
            // at least once, even one over the bound by itself.
            if tx.notices.put.contains_key(k) {
                continue;
            }
            victims.push(*k);
            entries = entries.saturating_sub(1);
            bytes = bytes.saturating_sub(m.size);
        }
        tracing::warn!(
            dropped = victims.len(),
            "pending group notices over their bound; the oldest are dropped"
        );
        for k in victims {
            Self::drop_notice(k, tx);
        }
    }

    /// After a commit: applies `tx`'s pending-notice changes to the index.
    pub(in crate::device) fn apply_pending_notices(&mut self, tx: &mut Tx) {
        let changes = std::mem::take(&mut tx.notices);
        for k in &changes.removed {
            self.pending_notices.remove(k);
        }
        for (k, m) in changes.put {
            self.pending_notices.insert(k, m);
        }
    }

    /// The number of pending notices (sealed or not).
    #[must_use]
    pub fn pending_notice_count(&self) -> usize {
        self.pending_notices.map.len()
    }

    /// What the pending notices wait for: device lists to fetch, and devices to start sessions
    /// with (those with no usable session). Nothing is committed.
    ///
    /// # Errors
    /// [`DeviceError::Store`] if a session cannot be read.
    pub fn pending_notice_targets(&mut self, now: u64) -> Result<NoticeTargets> {
        let mut accounts = BTreeSet::new();
        let mut devices = BTreeSet::new();
        let keys: Vec<(NoticeKey, bool)> = self
            .pending_notices
            .map
            .iter()
            .map(|(k, m)| (*k, m.sealed_to.is_none()))
            .collect();
        for (k, unsealed) in keys {
            if !unsealed || !self.groups.contains_key(&k.group) {
                continue;
            }
            let Some(list) = self.device_lists.get(&k.to.account) else {
                accounts.insert(k.to.account);
                continue;
            };
            let of: Vec<DeviceAddress> = if k.whole_account() {
                list.addresses().filter(|d| *d != self.address).collect()
            } else if list.identity_of(k.to.device_id).is_ok() {
                vec![k.to]
            } else {
                Vec::new()
            };
            for d in of {
                if !devices.contains(&d) && !self.has_session(&d, now)? {
                    devices.insert(d);
                }
            }
        }
        Ok(NoticeTargets {
            accounts: accounts.into_iter().collect(),
            devices: devices.into_iter().collect(),
        })
    }

    /// Prunes the pending notices within `tx` (expired; group gone; device no longer listed;
    /// the secret for an account no longer a member), turns whole-account notices into
    /// per-device ones once the list is held, and makes notices sealed to an identity the list
    /// no longer shows wait to be sealed again. Returns how many were dropped.
    fn prune_notices_in(&self, rng: &mut impl CryptoRng, now: u64, tx: &mut Tx) -> usize {
        let cutoff = now.saturating_sub(PENDING_NOTICE_MAX_AGE_MS);
        let view = self.notices_with(tx);
        let mut dropped = 0;
        for (k, m) in &view {
            let group = self.groups.get(&k.group);
            let expired = m.created_at < cutoff;
            let member = group.is_some_and(|g| g.log.state().is_member(&k.to.account));
            if expired || group.is_none() || (m.secret && !member) {
                Self::drop_notice(*k, tx);
                dropped += 1;
                continue;
            }
            let Some(list) = self.device_lists.get(&k.to.account) else {
                continue;
            };
            if k.whole_account() {
                for d in list.addresses().filter(|d| *d != self.address) {
                    let per_device = NoticeKey { to: d, ..*k };
                    if !view.contains_key(&per_device) {
                        self.keep_notice(per_device, m.secret, m.client_id, m.created_at, None, tx);
                    }
                }
                Self::drop_notice(*k, tx);
                continue;
            }
            match list.identity_of(k.to.device_id) {
                Err(_) => {
                    Self::drop_notice(*k, tx);
                    dropped += 1;
                }
                Ok(listed) => {
                    if m.sealed_to.is_some_and(|s| s != listed) {
                        // Another device at that address: sealed again, as a new send.
                        let id = random_client_id(rng);
                        self.keep_notice(*k, m.secret, id, m.created_at, None, tx);
                    }
                }
            }
        }
        dropped
    }

    /// Drops pending notices that expired or are no longer wanted (run by
    /// [`Device::upkeep`]). Returns how many were dropped.
    ///
    /// # Errors
    /// [`DeviceError::Store`] if the commit fails (nothing changes).
    pub fn prune_pending_notices(&mut self, rng: &mut impl CryptoRng, now: u64) -> Result<usize> {
        let mut tx = Tx::default();
        let n = self.prune_notices_in(rng, now, &mut tx);
        if !tx.notices.put.is_empty() || !tx.notices.removed.is_empty() {
            self.finish(tx)?;
        }
        Ok(n)
    }

    /// The pending notices to hand to the relay now. First prunes them (as
    /// [`Self::prune_pending_notices`]), and seals those that waited for a session or a list
    /// and can now be sealed (in one commit, with the sessions it advances); notices still
    /// waiting are left out (see [`Self::pending_notice_targets`]). Send each under its client
    /// id, and confirm with [`Self::notices_sent`] once the relay has taken it; until then it is
    /// returned again, the same bytes under the same id.
    ///
    /// # Errors
    /// [`DeviceError::Store`] if the commit or a read fails (nothing changes); an error sealing
    /// a notice other than a missing session or list.
    pub fn pending_notices(
        &mut self,
        rng: &mut impl CryptoRng,
        now: u64,
    ) -> Result<Vec<PendingNotice>> {
        let mut tx = Tx::default();
        self.prune_notices_in(rng, now, &mut tx);
        let view = self.notices_with(&tx);
        let sealed = self.seal_waiting_notices(&view, rng, now, &mut tx);
        let changed = !tx.notices.put.is_empty() || !tx.notices.removed.is_empty();
        if changed || sealed.is_err() {
            // On an error, nothing is kept and the sessions it advanced are discarded.
            self.close_log_tx(tx, sealed)?;
        }
        let mut out = Vec::new();
        let keys: Vec<(NoticeKey, [u8; 16])> = self
            .pending_notices
            .map
            .iter()
            .filter(|(_, m)| m.sealed_to.is_some())
            .map(|(k, m)| (*k, m.client_id))
            .collect();
        for (key, client_id) in keys {
            let Some(v) = self.store.get(Namespace::PendingNotices, &key.to_bytes())? else {
                continue;
            };
            let (_, bytes) = decode_record(&v)?;
            out.push(PendingNotice {
                key,
                client_id,
                bytes: bytes.to_vec(),
            });
        }
        Ok(out)
    }

    /// Seals, within `tx`, the notices of `view` that wait for a session this device now has.
    fn seal_waiting_notices(
        &mut self,
        view: &BTreeMap<NoticeKey, NoticeMeta>,
        rng: &mut impl CryptoRng,
        now: u64,
        tx: &mut Tx,
    ) -> Result<()> {
        for (k, m) in view {
            if m.sealed_to.is_some() || k.whole_account() {
                continue;
            }
            let Some(entry) = self.groups.get(&k.group) else {
                continue;
            };
            let Ok(identity) = self.known_identity(&k.to) else {
                continue;
            };
            let mut content = wire::Content {
                body: Some(wire::content::Body::GroupLog(wire::GroupLogNotice {
                    group_id: k.group.0.to_vec(),
                    secret: if m.secret {
                        Zeroizing::new(entry.log.secret().to_bytes()).to_vec()
                    } else {
                        Vec::new()
                    },
                    seq: k.seq,
                    head: entry.log.head_at(k.seq).to_vec(),
                })),
            };
            let sealed = self.seal(&k.to, &content, rng, now, tx);
            super::log::wipe_notice(&mut content);
            match sealed {
                Ok(bytes) => {
                    self.keep_notice(
                        *k,
                        m.secret,
                        m.client_id,
                        m.created_at,
                        Some((identity, &bytes)),
                        tx,
                    );
                }
                Err(DeviceError::Protocol(Error::Protocol(
                    ProtocolError::NoSession | ProtocolError::UnknownAccount,
                ))) => {}
                // One device's session that cannot seal (an exhausted chain, a bad record) holds
                // back no other notice: this one stays pending, tried again on the next pass.
                Err(DeviceError::Protocol(e)) => {
                    tracing::warn!(error = %e, "a pending group notice could not be sealed");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The relay has taken these notices: they leave the pending notices.
    ///
    /// # Errors
    /// [`DeviceError::Store`] if the commit fails (they stay pending).
    pub fn notices_sent(&mut self, keys: &[NoticeKey]) -> Result<()> {
        let mut tx = Tx::default();
        for k in keys {
            if self.pending_notices.map.contains_key(k) {
                Self::drop_notice(*k, &mut tx);
            }
        }
        if tx.notices.removed.is_empty() {
            return Ok(());
        }
        self.finish(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryKv;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn key(i: u32) -> NoticeKey {
        let mut g = [0u8; 32];
        g[..4].copy_from_slice(&i.to_be_bytes());
        NoticeKey {
            group: GroupId(g),
            seq: 1,
            to: DeviceAddress {
                account: AccountId::from_bytes(&[9; 32]).unwrap(),
                device_id: 1,
            },
        }
    }

    #[test]
    fn past_the_bound_the_oldest_without_the_secret_go_first() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut d = Device::create_account(MemoryKv::new(), &mut rng, 1).unwrap();
        let cap = u32::try_from(PENDING_NOTICES_MAX_ENTRIES).unwrap();
        let mut tx = Tx::default();
        // Ten old notices with the secret, then plain ones up to the cap; then five newer plain
        // ones, in a transaction of their own.
        for i in 0..10 {
            d.keep_notice(key(i), true, [0; 16], u64::from(i), None, &mut tx);
        }
        for i in 10..cap {
            d.keep_notice(key(i), false, [0; 16], 100 + u64::from(i), None, &mut tx);
        }
        d.finish(tx).unwrap();
        assert_eq!(d.pending_notice_count(), PENDING_NOTICES_MAX_ENTRIES);
        let mut tx = Tx::default();
        for i in cap..cap + 5 {
            d.keep_notice(key(i), false, [0; 16], 100 + u64::from(i), None, &mut tx);
        }
        d.finish(tx).unwrap();
        assert_eq!(d.pending_notice_count(), PENDING_NOTICES_MAX_ENTRIES);
        let stored = d.store.scan(Namespace::PendingNotices).unwrap();
        assert_eq!(stored.len(), PENDING_NOTICES_MAX_ENTRIES);
        let kept: BTreeSet<NoticeKey> = d.pending_notices.map.keys().copied().collect();
        for i in 0..10 {
            assert!(
                kept.contains(&key(i)),
                "a notice with the secret was dropped"
            );
        }
        for i in 10..15 {
            assert!(!kept.contains(&key(i)), "not the oldest plain ones dropped");
        }
        assert!(kept.contains(&key(15)));

        // With only notices carrying the secret over the cap, the oldest of them go.
        let mut tx = Tx::default();
        for i in 10..cap + 5 {
            d.keep_notice(key(i), true, [0; 16], 100 + u64::from(i), None, &mut tx);
        }
        d.finish(tx).unwrap();
        let kept: BTreeSet<NoticeKey> = d.pending_notices.map.keys().copied().collect();
        assert_eq!(kept.len(), PENDING_NOTICES_MAX_ENTRIES);
        for i in 0..5 {
            assert!(!kept.contains(&key(i)));
        }
        assert!(kept.contains(&key(5)));

        // A transaction over the bound by itself keeps all it keeps (a change's notices go out
        // at least once): the older ones make room, as far as they can.
        let mut tx = Tx::default();
        for i in cap + 5..2 * cap + 6 {
            d.keep_notice(
                key(i),
                false,
                [0; 16],
                1_000_000 + u64::from(i),
                None,
                &mut tx,
            );
        }
        d.finish(tx).unwrap();
        assert_eq!(d.pending_notice_count(), PENDING_NOTICES_MAX_ENTRIES + 1);
        assert!(!d.pending_notices.map.contains_key(&key(cap + 4)));
        assert!(d.pending_notices.map.contains_key(&key(2 * cap + 5)));
    }

    #[test]
    fn a_stored_record_decodes_to_what_was_kept() {
        let m = NoticeMeta {
            created_at: 77,
            secret: true,
            client_id: [3; 16],
            sealed_to: None,
            size: 0,
        };
        let v = encode_record(&m, &[]);
        let (back, bytes) = decode_record(&v).unwrap();
        assert!(bytes.is_empty());
        assert_eq!(
            (back.created_at, back.secret, back.client_id, back.size),
            (77, true, [3; 16], 0)
        );
        assert!(back.sealed_to.is_none());
        assert!(decode_record(&v[..HEADER_LEN - 1]).is_err());
        let mut bad = v.to_vec();
        bad[0] = 2;
        assert!(decode_record(&bad).is_err());
        let k = key(7);
        assert_eq!(NoticeKey::from_bytes(&k.to_bytes()).unwrap(), k);
        assert!(NoticeKey::from_bytes(&k.to_bytes()[1..]).is_err());
    }
}
