//! A deterministic simulated network for Hush devices: a pre-key directory standing in for the
//! relay, and a lossy mailbox network that drops, duplicates and reorders envelopes, driven by a
//! seeded RNG. Same seed, same run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use hush_core::device::Result;
use hush_core::device::{Device, GroupLogUpdate, Outgoing};
use hush_core::error::{Error, ProtocolError};
use hush_core::keys::{AccountId, DeviceAddress};
use hush_core::prekeys::{PreKeyBundle, PublishedPreKeys};
use hush_core::sender_key::GroupId;
use hush_core::store::kv::KvStore;
use hush_core::store::memory::MemoryKv;
use hush_proto::wire;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// What the relay would store of one device: its published pre-keys, handing each one-time key
/// out at most once.
struct DirectoryEntry {
    published: PublishedPreKeys,
    one_time: VecDeque<wire::OneTimePreKey>,
    kem: VecDeque<wire::KemPreKey>,
    handed_out: BTreeSet<u32>,
}

/// Signed device lists and pre-keys of every device, as a relay would serve them.
#[derive(Default)]
pub struct Directory {
    lists: BTreeMap<AccountId, Vec<u8>>,
    devices: BTreeMap<DeviceAddress, DirectoryEntry>,
}

impl Directory {
    /// Stores an account's newest signed device list.
    pub fn publish_list(&mut self, account: AccountId, signed: Vec<u8>) {
        self.lists.insert(account, signed);
    }

    /// The signed device list of an account.
    pub fn list(&self, account: &AccountId) -> Option<&[u8]> {
        self.lists.get(account).map(Vec::as_slice)
    }

    /// All accounts with a list.
    pub fn accounts(&self) -> Vec<AccountId> {
        self.lists.keys().copied().collect()
    }

    /// Publishes (or re-publishes) a device's pre-keys; keys handed out before are never offered again.
    pub fn publish_pre_keys(&mut self, p: PublishedPreKeys) {
        let entry = self
            .devices
            .entry(p.address)
            .or_insert_with(|| DirectoryEntry {
                published: p.clone(),
                one_time: VecDeque::new(),
                kem: VecDeque::new(),
                handed_out: BTreeSet::new(),
            });
        let queued: BTreeSet<u32> = entry
            .one_time
            .iter()
            .map(|k| k.id)
            .chain(entry.kem.iter().map(|k| k.id))
            .collect();
        for k in &p.one_time_pre_keys {
            if !entry.handed_out.contains(&k.id) && !queued.contains(&k.id) {
                entry.one_time.push_back(k.clone());
            }
        }
        for k in &p.kem_pre_keys {
            if !entry.handed_out.contains(&k.id) && !queued.contains(&k.id) {
                entry.kem.push_back(k.clone());
            }
        }
        entry.published = p;
    }

    /// Forgets everything published for a device (it re-registers at the same address).
    pub fn forget_device(&mut self, addr: &DeviceAddress) {
        self.devices.remove(addr);
    }

    /// Hands out a bundle for `addr`, consuming one one-time X25519 and one one-time ML-KEM key if
    /// any are left (otherwise the bundle carries no one-time key and the last-resort ML-KEM key).
    pub fn claim_bundle(&mut self, addr: &DeviceAddress) -> Option<PreKeyBundle> {
        let e = self.devices.get_mut(addr)?;
        let otk = e.one_time.pop_front();
        let kem = e.kem.pop_front();
        for id in otk.iter().map(|k| k.id).chain(kem.iter().map(|k| k.id)) {
            e.handed_out.insert(id);
        }
        Some(e.published.bundle(otk, kem))
    }
}

/// One envelope in flight.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Sender, as the relay authenticates it.
    pub from: DeviceAddress,
    /// Recipient device.
    pub to: DeviceAddress,
    /// The encrypted pairwise message.
    pub bytes: Vec<u8>,
    /// The test's own id of the message (never seen by devices).
    pub tag: u64,
    /// A group message (fanned out by the relay) rather than a pairwise one.
    pub group: bool,
}

/// Fault settings, in parts per thousand.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Chance an envelope is lost when sent.
    pub drop_per_mille: u32,
    /// Chance a delivered envelope is delivered again later.
    pub duplicate_per_mille: u32,
}

/// A network that delivers envelopes in random order, dropping and duplicating some.
pub struct Network {
    rng: ChaCha20Rng,
    faults: Faults,
    in_flight: Vec<Envelope>,
    /// Tags of envelopes that were dropped on send.
    pub dropped: BTreeSet<u64>,
    /// Number of duplicate deliveries injected.
    pub duplicates: u64,
}

impl Network {
    /// A network whose decisions come from `seed`.
    pub fn new(seed: u64, faults: Faults) -> Self {
        let mut s = [0u8; 32];
        for (dst, src) in s.iter_mut().zip(seed.to_le_bytes()) {
            *dst = src;
        }
        Self {
            rng: ChaCha20Rng::from_seed(s),
            faults,
            in_flight: Vec::new(),
            dropped: BTreeSet::new(),
            duplicates: 0,
        }
    }

    fn chance(&mut self, per_mille: u32) -> bool {
        self.rng.next_u32() % 1000 < per_mille
    }

    /// Sends an envelope (it may be dropped).
    pub fn send(&mut self, e: Envelope) {
        if self.chance(self.faults.drop_per_mille) {
            self.dropped.insert(e.tag);
        } else {
            self.in_flight.push(e);
        }
    }

    /// Sends an envelope that is never dropped (it may still be duplicated and reordered): a
    /// message the relay keeps until the device acknowledges it.
    pub fn send_reliable(&mut self, e: Envelope) {
        self.in_flight.push(e);
    }

    /// Envelopes still in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Takes a random envelope out of the network (reordering), sometimes leaving a copy behind
    /// to be delivered again later (duplication).
    pub fn deliver(&mut self) -> Option<Envelope> {
        if self.in_flight.is_empty() {
            return None;
        }
        let len = u32::try_from(self.in_flight.len()).unwrap_or(u32::MAX);
        let i = usize::try_from(self.rng.next_u32() % len).unwrap_or(0);
        let e = self
            .in_flight
            .swap_remove(i.min(self.in_flight.len().saturating_sub(1)));
        if self.chance(self.faults.duplicate_per_mille) {
            self.duplicates += 1;
            self.in_flight.push(e.clone());
        }
        Some(e)
    }

    /// A random number below `n` from the network's RNG (for the test's own choices).
    pub fn below(&mut self, n: u32) -> u32 {
        if n == 0 { 0 } else { self.rng.next_u32() % n }
    }
}

/// A store chosen at run time.
pub type Store = Box<dyn KvStore>;

/// Accounts with several devices each, their directory entries, and helpers to wire them up.
pub struct Population {
    /// Every device.
    pub devices: BTreeMap<DeviceAddress, Device<Store>>,
    /// Device addresses per account, first device (holding the account key) first.
    pub accounts: Vec<Vec<DeviceAddress>>,
    /// The directory (pre-keys and device lists).
    pub dir: Directory,
    /// The relay's group logs.
    pub logs: GroupLogs,
}

/// What appending to a group log did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Append {
    /// Appended at the position asked for.
    Appended,
    /// The position is not the next one: the log's head is `head`.
    Conflict {
        /// The last position of the log.
        head: u64,
    },
    /// The write token does not match the slot's.
    Refused,
}

/// A slot's write token and entries.
type SlotLog = ([u8; 32], Vec<Vec<u8>>);

/// The relay's group logs: per slot, a write token and entries numbered from 1, appended only at
/// the next position (the compare-and-swap of docs/RELAY_PROTOCOL.md). It can withhold entries
/// from chosen readers, as a misbehaving relay would.
#[derive(Default)]
pub struct GroupLogs {
    logs: BTreeMap<[u8; 32], SlotLog>,
    /// (slot, reader) → the last position served to that reader.
    withheld: BTreeMap<([u8; 32], DeviceAddress), u64>,
    /// (slot, reader, position) → other bytes served to that reader there.
    forged: BTreeMap<([u8; 32], DeviceAddress, u64), Vec<u8>>,
    /// Appends that lost the race for their position.
    pub conflicts: u64,
}

impl GroupLogs {
    /// Appends `entry` at position `seq` of `slot`.
    pub fn append(&mut self, slot: [u8; 32], token: &[u8; 32], seq: u64, entry: Vec<u8>) -> Append {
        let (stored, entries) = self
            .logs
            .entry(slot)
            .or_insert_with(|| (*token, Vec::new()));
        if stored != token {
            return Append::Refused;
        }
        let head = entries.len() as u64;
        if seq != head + 1 {
            self.conflicts += 1;
            return Append::Conflict { head };
        }
        entries.push(entry);
        Append::Appended
    }

    /// The head and the entries from position `from` on, as served to `reader`.
    pub fn read(
        &self,
        slot: &[u8; 32],
        from: u64,
        reader: &DeviceAddress,
    ) -> (u64, Vec<(u64, Vec<u8>)>) {
        let Some((_, entries)) = self.logs.get(slot) else {
            return (0, Vec::new());
        };
        let served = self
            .withheld
            .get(&(*slot, *reader))
            .copied()
            .unwrap_or(u64::MAX)
            .min(entries.len() as u64);
        let out = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let seq = i as u64 + 1;
                let bytes = self.forged.get(&(*slot, *reader, seq)).unwrap_or(e).clone();
                (seq, bytes)
            })
            .filter(|(seq, _)| *seq >= from && *seq <= served)
            .collect();
        (served, out)
    }

    /// From now on, serves `reader` the log of `slot` only up to position `up_to`.
    pub fn withhold(&mut self, slot: [u8; 32], reader: DeviceAddress, up_to: u64) {
        self.withheld.insert((slot, reader), up_to);
    }

    /// From now on, serves `reader` `bytes` instead of the entry at `seq` of `slot`.
    pub fn forge(&mut self, slot: [u8; 32], reader: DeviceAddress, seq: u64, bytes: Vec<u8>) {
        self.forged.insert((slot, reader, seq), bytes);
    }

    /// Serves `reader` the whole log of `slot` again.
    pub fn release(&mut self, slot: [u8; 32], reader: DeviceAddress) {
        self.withheld.remove(&(slot, reader));
    }

    /// The number of entries of `slot`.
    pub fn len(&self, slot: &[u8; 32]) -> u64 {
        self.logs.get(slot).map_or(0, |(_, e)| e.len() as u64)
    }
}

impl Population {
    /// Creates one account per entry of `devices_per_account`, with that many devices (in-memory
    /// stores), publishes everything and gives every device every account's device list.
    pub fn new(rng: &mut ChaCha20Rng, devices_per_account: &[u32], now: u64) -> Result<Self> {
        let mut p = Self {
            devices: BTreeMap::new(),
            accounts: Vec::new(),
            dir: Directory::default(),
            logs: GroupLogs::default(),
        };
        for &n in devices_per_account {
            let mut primary = Device::create_account(Box::new(MemoryKv::new()) as Store, rng, now)?;
            let account = primary.address().account;
            let mut addrs = vec![primary.address()];
            for id in 2..=n {
                let d = Device::create_linked(
                    Box::new(MemoryKv::new()) as Store,
                    rng,
                    account,
                    id,
                    now,
                )?;
                primary.add_device(&d.consent(), now)?;
                addrs.push(d.address());
                p.devices.insert(d.address(), d);
            }
            if let Some(list) = primary.device_list(&account) {
                p.dir.publish_list(account, list.signed_bytes().to_vec());
            }
            p.devices.insert(primary.address(), primary);
            p.accounts.push(addrs);
        }
        for d in p.devices.values() {
            p.dir.publish_pre_keys(d.published_pre_keys()?);
        }
        p.sync_lists(now)?;
        Ok(p)
    }

    /// Gives every device every account's current device list.
    pub fn sync_lists(&mut self, now: u64) -> Result<()> {
        let lists: Vec<(AccountId, Vec<u8>)> = self
            .dir
            .accounts()
            .into_iter()
            .filter_map(|a| self.dir.list(&a).map(|l| (a, l.to_vec())))
            .collect();
        for d in self.devices.values_mut() {
            for (a, l) in &lists {
                d.accept_device_list(l, a, now)?;
            }
        }
        Ok(())
    }

    /// The account ids, in creation order.
    pub fn account_ids(&self) -> Vec<AccountId> {
        self.accounts
            .iter()
            .filter_map(|a| a.first().map(|d| d.account))
            .collect()
    }

    /// Starts sessions from `from` to every device of `targets` that has none (claiming bundles
    /// from the directory). Returns how many were started.
    pub fn ensure_sessions(
        &mut self,
        from: &DeviceAddress,
        targets: &[DeviceAddress],
        rng: &mut ChaCha20Rng,
        now: u64,
    ) -> Result<usize> {
        let Some(device) = self.devices.get_mut(from) else {
            return Ok(0);
        };
        let missing = device.missing_sessions(targets, now)?;
        for t in &missing {
            if let Some(bundle) = self.dir.claim_bundle(t) {
                device.start_session(&bundle, rng, now)?;
            }
        }
        Ok(missing.len())
    }

    /// Re-publishes a device's pre-keys if it made new ones.
    pub fn replenish(&mut self, a: &DeviceAddress, rng: &mut ChaCha20Rng, now: u64) -> Result<()> {
        if let Some(d) = self.devices.get_mut(a)
            && d.replenish_pre_keys(rng, now)?
        {
            self.dir.publish_pre_keys(d.published_pre_keys()?);
        }
        Ok(())
    }

    fn device(&mut self, a: &DeviceAddress) -> Result<&mut Device<Store>> {
        self.devices
            .get_mut(a)
            .ok_or(ProtocolError::Misuse("no such device").into())
    }

    /// `by` creates a group of `members`, appended to the relay's logs; returns the id and the
    /// notices to deliver.
    pub fn create_group(
        &mut self,
        by: DeviceAddress,
        name: &str,
        members: &[AccountId],
        rng: &mut ChaCha20Rng,
        now: u64,
    ) -> Result<(GroupId, Vec<Outgoing>)> {
        let w = self.device(&by)?.create_group(name, members, rng, now)?;
        let g = w.group;
        match self
            .logs
            .append(w.slot(), &w.write_token(), w.seq, w.entry.clone())
        {
            Append::Appended => {}
            _ => return Err(ProtocolError::Misuse("a new group's slot is taken").into()),
        }
        let update = self.device(&by)?.group_write_landed(w, rng, now)?;
        Ok((g, update.outgoing))
    }

    /// `by` changes group `g`, as a client does: appends at the next position, and on a conflict
    /// reads the log and builds the change again on the new head (an error if it no longer
    /// applies). Returns the notices to deliver and how many conflicts it went through.
    #[allow(clippy::too_many_arguments)]
    pub fn update_group(
        &mut self,
        by: DeviceAddress,
        g: &GroupId,
        add: &[(AccountId, bool)],
        remove: &[AccountId],
        rng: &mut ChaCha20Rng,
        now: u64,
    ) -> Result<(Vec<Outgoing>, u32)> {
        let mut conflicts = 0;
        loop {
            let w = self
                .device(&by)?
                .update_group(g, add, remove, None, rng, now)?;
            match self
                .logs
                .append(w.slot(), &w.write_token(), w.seq, w.entry.clone())
            {
                Append::Appended => {
                    let update = self.device(&by)?.group_write_landed(w, rng, now)?;
                    return Ok((update.outgoing, conflicts));
                }
                Append::Conflict { .. } if conflicts < 8 => {
                    conflicts += 1;
                    self.sync_group(by, g, rng, now)?;
                }
                _ => return Err(ProtocolError::Misuse("the group log refused the change").into()),
            }
        }
    }

    /// `dev` reads group `g`'s log from the relay's logs (as served to it) and processes it.
    pub fn sync_group(
        &mut self,
        dev: DeviceAddress,
        g: &GroupId,
        rng: &mut ChaCha20Rng,
        now: u64,
    ) -> Result<GroupLogUpdate> {
        let cursor = self
            .device(&dev)?
            .group_log_cursor(g)
            .ok_or(Error::Protocol(ProtocolError::UnknownGroup))?;
        let (head, entries) = self.logs.read(&cursor.slot, cursor.next, &dev);
        self.device(&dev)?
            .accept_group_log(g, head, &entries, rng, now)
    }
}
