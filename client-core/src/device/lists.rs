//! Device lists: accepting other accounts' signed lists, keeping former ones, and editing the
//! own account's list.

use tracing::debug;
use zeroize::Zeroizing;

use super::{Device, Tx, decode};
use crate::consts::KEY_LEN;
use crate::device::error::Result;
use crate::device_list::{DeviceConsent, DeviceEntry, DeviceList, VerifiedDeviceList};
use crate::error::ProtocolError;
use crate::keys::{AccountId, DeviceAddress, array};
use crate::session::SessionRecord;
use crate::store::kv::{KvStore, Namespace};

impl<S: KvStore> Device<S> {
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
        let forget = self.delivery_keys_to_forget(account, &list);
        for a in &forget {
            tx.batch
                .delete(Namespace::DeliveryKeys, a.to_key().to_vec());
        }
        if lost {
            self.mark_rotation_for_member(account, &mut tx);
        }
        self.finish(tx)?;
        for a in dropped {
            debug!(
                device_id = a.device_id,
                "session dropped: device left the list or changed identity"
            );
            self.sessions.remove(&a);
        }
        for a in forget {
            self.delivery_keys.remove(&a);
        }
        self.device_lists.insert(*account, list);
        Ok(true)
    }

    /// This device's consent to being listed on its account's list under its id (§3.1): what a
    /// new device hands to the device holding the account key, which passes it to
    /// [`Self::add_device`].
    pub fn consent(&self) -> DeviceConsent {
        DeviceConsent {
            device_id: self.address.device_id,
            identity: self.identity.public(),
            signature: self
                .identity
                .consent(&self.address.account, self.address.device_id),
        }
    }

    /// Adds (or replaces) a device on this account's list, from the device's consent, and signs
    /// the new version. Only the device holding the account key can do this; a consent that does
    /// not verify for this account is refused (`Auth(BadDeviceConsent)`). Returns the new signed
    /// list to publish.
    pub fn add_device(&mut self, consent: &DeviceConsent, now: u64) -> Result<VerifiedDeviceList> {
        consent.verify(&self.address.account)?;
        self.edit_own_list(now, |l| {
            l.devices
                .insert(consent.device_id, DeviceEntry::from_consent(consent, now));
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
}
