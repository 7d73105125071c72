//! Accounts' device lists, push endpoints and usernames on sled.

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::{SledStore, backend, be_u64, transaction_error};
use crate::store::{
    AccountStore, DeviceId, PushStore, Result, StoreError, UsernameHolder, UsernameStore,
};

impl AccountStore for SledStore {
    fn create_account(&self, account: &[u8; 32], version: u64, signed: &[u8]) -> Result<()> {
        let mut value = version.to_be_bytes().to_vec();
        value.extend_from_slice(signed);
        match self
            .lists
            .compare_and_swap(account, None::<&[u8]>, Some(value.as_slice()))
            .map_err(backend)?
        {
            Ok(()) => Ok(()),
            Err(_) => Err(StoreError::AccountExists),
        }
    }

    fn device_list(&self, account: &[u8; 32]) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(v) = self.lists.get(account).map_err(backend)? else {
            return Ok(None);
        };
        let (ver, list) = v.split_at_checked(8).ok_or(StoreError::Corrupt("lists"))?;
        Ok(Some((be_u64(ver, "lists")?, list.to_vec())))
    }

    fn put_device_list(&self, account: &[u8; 32], version: u64, signed: &[u8]) -> Result<()> {
        let mut value = version.to_be_bytes().to_vec();
        value.extend_from_slice(signed);
        // Compare-and-swap loop: only a strictly newer version replaces the stored one.
        loop {
            let current = self.lists.get(account).map_err(backend)?;
            if let Some(cur) = &current {
                let stored = be_u64(cur.get(..8).ok_or(StoreError::Corrupt("lists"))?, "lists")?;
                if stored >= version {
                    return Err(StoreError::StaleDeviceList {
                        stored,
                        offered: version,
                    });
                }
            }
            let swapped = self
                .lists
                .compare_and_swap(account, current, Some(value.as_slice()))
                .map_err(backend)?;
            if swapped.is_ok() {
                return Ok(());
            }
        }
    }
}

impl crate::store::LinkStore for SledStore {}

impl crate::store::AccessStore for SledStore {
    fn set_delivery_access(
        &self,
        device: &DeviceId,
        access: Option<crate::store::DeliveryAccess>,
    ) -> Result<()> {
        match access {
            Some(a) => self
                .access
                .insert(device.key(), a.to_bytes())
                .map_err(backend)?,
            None => self.access.remove(device.key()).map_err(backend)?,
        };
        Ok(())
    }

    fn delivery_access(&self, device: &DeviceId) -> Result<Option<crate::store::DeliveryAccess>> {
        self.access
            .get(device.key())
            .map_err(backend)?
            .map(|v| crate::store::DeliveryAccess::from_bytes(&v))
            .transpose()
    }
}

impl PushStore for SledStore {
    fn set_push_endpoint(
        &self,
        device: &DeviceId,
        endpoint: Option<&crate::push::Registration>,
    ) -> Result<()> {
        match endpoint {
            Some(e) => self
                .push
                .insert(device.key(), e.to_bytes())
                .map_err(backend)?,
            None => self.push.remove(device.key()).map_err(backend)?,
        };
        Ok(())
    }

    fn push_endpoint(&self, device: &DeviceId) -> Result<Option<crate::push::Registration>> {
        self.push
            .get(device.key())
            .map_err(backend)?
            .map(|v| crate::push::Registration::from_bytes(&v).ok_or(StoreError::Corrupt("push")))
            .transpose()
    }
}

fn holder_account(v: &[u8]) -> Result<[u8; 32]> {
    v.get(..32)
        .and_then(|a| a.try_into().ok())
        .ok_or(StoreError::Corrupt("names"))
}

impl UsernameStore for SledStore {
    fn claim_username(&self, name: &str, account: &[u8; 32], proof: &[u8]) -> Result<()> {
        let mut value = account.to_vec();
        value.extend_from_slice(proof);
        (&self.names, &self.name_of)
            .transaction(|(names, name_of)| {
                if let Some(v) = names.get(name.as_bytes())? {
                    let holder = holder_account(&v).map_err(ConflictableTransactionError::Abort)?;
                    if &holder != account {
                        return Err(ConflictableTransactionError::Abort(
                            StoreError::UsernameTaken,
                        ));
                    }
                }
                if let Some(old) = name_of.insert(&account[..], name.as_bytes())?
                    && old.as_ref() != name.as_bytes()
                {
                    names.remove(old)?;
                }
                names.insert(name.as_bytes(), value.as_slice())?;
                Ok(())
            })
            .map_err(transaction_error)
    }

    fn release_username(&self, account: &[u8; 32]) -> Result<Option<String>> {
        let old = (&self.names, &self.name_of)
            .transaction(|(names, name_of)| {
                let old = name_of.remove(&account[..])?;
                if let Some(n) = &old {
                    names.remove(n)?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(old)
            })
            .map_err(transaction_error)?;
        old.map(|n| String::from_utf8(n.to_vec()).map_err(|_| StoreError::Corrupt("name_of")))
            .transpose()
    }

    fn lookup_username(&self, name: &str) -> Result<Option<UsernameHolder>> {
        let Some(v) = self.names.get(name.as_bytes()).map_err(backend)? else {
            return Ok(None);
        };
        Ok(Some(UsernameHolder {
            account: holder_account(&v)?,
            proof: v.get(32..).unwrap_or_default().to_vec(),
        }))
    }

    fn username_of(&self, account: &[u8; 32]) -> Result<Option<String>> {
        self.name_of
            .get(account)
            .map_err(backend)?
            .map(|v| String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt("name_of")))
            .transpose()
    }
}
