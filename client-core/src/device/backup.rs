//! What a device puts in a backup or history-transfer archive, and takes from one
//! (PROTOCOL.md §22.4): the account key (when held), the accepted device lists and the group
//! records, copied verbatim whatever their format, and an opaque application part.

use hush_proto::store as pstore;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::{Device, decode, groups};
use crate::backup::BackupError;
use crate::consts::{BACKUP_VERSION, KEY_LEN};
use crate::device::error::Result;
use crate::device_list::VerifiedDeviceList;
use crate::keys::{AccountId, AccountKeyPair, array};
use crate::store::kv::{Batch, KvStore, Namespace};

/// The namespaces an archive carries, verbatim.
const EXPORTED: [Namespace; 2] = [Namespace::DeviceLists, Namespace::Groups];

/// What [`Device::import_backup`] took in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Device lists of other accounts accepted (new or newer than the ones held).
    pub device_lists: usize,
    /// Group records (and other records of the group namespace) added.
    pub group_records: usize,
    /// Groups this device knows after the import.
    pub groups: usize,
}

impl<S: KvStore> Device<S> {
    /// The archive of this device's account state: the account key and its secret (only with
    /// `with_account_secret`, and only if this device holds it), every record of the
    /// `DeviceLists` and `Groups` namespaces as stored, and `app`, the application's part.
    /// Sessions, sender keys, pre-keys and this device's identity keys are never exported.
    pub fn export_backup(
        &self,
        with_account_secret: bool,
        app: Vec<u8>,
        now: u64,
    ) -> Result<pstore::BackupArchive> {
        let mut records = Vec::new();
        for ns in EXPORTED {
            for (key, value) in self.store.scan(ns)? {
                records.push(pstore::BackupRecord {
                    namespace: u32::from(ns as u8),
                    key,
                    value: value.to_vec(),
                });
            }
        }
        let account_secret = match (&self.account_key, with_account_secret) {
            (Some(k), true) => k.secret_bytes().to_vec(),
            _ => Vec::new(),
        };
        Ok(pstore::BackupArchive {
            version: BACKUP_VERSION,
            created_at: now,
            account_key: self.address.account.as_bytes().to_vec(),
            account_secret,
            device_id: self.address.device_id,
            records,
            app,
        })
    }

    /// Takes in an archive of this device's account: device lists of other accounts are
    /// accepted as if received (verified, never a rollback; a list that conflicts with one held
    /// is skipped), and records of the `Groups` namespace this device does not hold are added
    /// verbatim, then the groups are loaded again from the store. Former lists (kept as proof,
    /// §17.6) are added when missing. Records already held are never replaced. An archive of
    /// another account is [`BackupError::WrongAccount`], one of an unknown version
    /// [`BackupError::Contents`]; either changes nothing.
    pub fn import_backup(
        &mut self,
        archive: &pstore::BackupArchive,
        now: u64,
    ) -> Result<ImportSummary> {
        check_archive(archive)?;
        if archive.account_key != self.address.account.as_bytes() {
            return Err(BackupError::WrongAccount.into());
        }
        let mut summary = ImportSummary::default();
        // The records to add, checked before anything is written.
        let mut adds = Vec::new();
        let mut lists = Vec::new();
        for r in &archive.records {
            match namespace_of(r.namespace) {
                Some(Namespace::DeviceLists) if r.key.len() == KEY_LEN => {
                    let account = AccountId::from_bytes(&r.key)?;
                    if account != self.address.account {
                        lists.push((account, &r.value));
                    }
                }
                Some(ns @ (Namespace::DeviceLists | Namespace::Groups)) => {
                    if self.store.get(ns, &r.key)?.is_none() {
                        if ns == Namespace::Groups {
                            summary.group_records += 1;
                        }
                        adds.push((ns, &r.key, &r.value));
                    }
                }
                _ => {
                    return Err(
                        BackupError::Contents("a record of a namespace not exported").into(),
                    );
                }
            }
        }
        // Group records must load before they are committed.
        let mut probe = crate::store::memory::MemoryKv::new();
        let mut copy = Batch::new();
        for (k, v) in self.store.scan(Namespace::Groups)? {
            copy.put(Namespace::Groups, k, v);
        }
        for (ns, k, v) in &adds {
            copy.put(*ns, k.to_vec(), Zeroizing::new(v.to_vec()));
        }
        probe.commit(copy)?;
        groups::load_groups(&probe)?;
        let mut batch = Batch::new();
        for (ns, k, v) in adds {
            batch.put(ns, k.clone(), Zeroizing::new(v.clone()));
        }
        self.store.commit(batch)?;
        let (loaded, invites) = groups::load_groups(&self.store)?;
        self.groups = loaded;
        self.group_invites = invites;
        summary.groups = self.groups.len();
        for (account, bytes) in lists {
            match self.accept_device_list(bytes, &account, now) {
                Ok(true) => summary.device_lists += 1,
                Ok(false) => {}
                // A list that conflicts with the one held, or no longer verifies: the held one
                // stays.
                Err(e) if e.protocol().is_some() => {
                    tracing::debug!("a device list of the archive was not taken");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(summary)
    }

    /// Recovers the account of `archive` on a fresh store as a NEW device `device_id` (new
    /// identity keys, new pre-keys; nothing of the old device's sessions or keys), holding the
    /// account key from the archive. Its device list is the successor of the newest of
    /// `own_lists` (the archive's own list and any the relay holds; each verified against the
    /// account, unverifiable ones ignored) keeping only the devices in `keep`; it is signed and
    /// accepted here and must then be published. The rest of the archive is taken in as by
    /// [`Device::import_backup`] before the identity record is committed, so a crash leaves a
    /// store that creation can start over in. An archive without the account key is
    /// [`BackupError::NoAccountKey`].
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        store: S,
        rng: &mut impl CryptoRng,
        archive: &pstore::BackupArchive,
        own_lists: &[&[u8]],
        device_id: u32,
        keep: &[u32],
        now: u64,
    ) -> Result<Self> {
        check_archive(archive)?;
        let account = AccountId::from_bytes(&archive.account_key)?;
        if archive.account_secret.is_empty() {
            return Err(BackupError::NoAccountKey.into());
        }
        let secret: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(array(
            &archive.account_secret,
            "archived account key",
            "bad key",
        )?);
        let key = AccountKeyPair::from_secret_bytes(&secret);
        if key.id() != account {
            return Err(BackupError::Contents("the account key does not match the account").into());
        }
        let archived = archive
            .records
            .iter()
            .filter(|r| {
                namespace_of(r.namespace) == Some(Namespace::DeviceLists)
                    && r.key == account.as_bytes()
            })
            .map(|r| r.value.as_slice());
        let base = own_lists
            .iter()
            .copied()
            .chain(archived)
            .filter_map(|b| VerifiedDeviceList::verify(b, &account).ok())
            .max_by_key(|l| l.list().version);
        let (mut device, keys) = Self::create_unfinished(
            store,
            rng,
            account,
            device_id,
            Some(key),
            base.as_ref().map(|b| (b, keep)),
            now,
        )?;
        device.import_backup(archive, now)?;
        device.commit_identity(keys)?;
        Ok(device)
    }
}

fn namespace_of(byte: u32) -> Option<Namespace> {
    let b = u8::try_from(byte).ok()?;
    Namespace::ALL.into_iter().find(|ns| *ns as u8 == b)
}

fn check_archive(archive: &pstore::BackupArchive) -> Result<()> {
    if archive.version != BACKUP_VERSION {
        return Err(BackupError::Contents("unknown archive version").into());
    }
    Ok(())
}

/// Decodes an archive's plaintext (as [`crate::backup::open`] returns it).
pub fn decode_archive(plaintext: &[u8]) -> Result<pstore::BackupArchive> {
    let a: pstore::BackupArchive = decode(plaintext, "backup archive")
        .map_err(|_| BackupError::Contents("the archive does not decode"))?;
    check_archive(&a)?;
    Ok(a)
}
