//! Sealed envelopes on a device: sealing for, and opening from, devices on verified device
//! lists; this device's delivery key and the delivery keys of others (PROTOCOL.md §21).

use std::collections::HashMap;

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::{Device, Tx};
use crate::consts::{DELIVERY_KEY_LEN, KEY_LEN};
use crate::device::error::Result;
use crate::device_list::VerifiedDeviceList;
use crate::error::{AuthError, ProtocolError};
use crate::keys::{AccountId, DeviceAddress, array};
use crate::sealed::{self, DeliveryKey, DeliveryToken, Opened};
use crate::store::kv::{KvStore, Namespace};

/// Meta key of this device's delivery-key epoch (u32 BE), written only once rotated: a store
/// without it is at epoch 0.
const DELIVERY_EPOCH: &[u8] = b"delivery-key-epoch";

/// The delivery-key epoch and the known delivery keys of other devices, from `store`.
pub(super) fn load<S: KvStore>(store: &S) -> Result<(u32, HashMap<DeviceAddress, DeliveryKey>)> {
    let epoch = match store.get(Namespace::Meta, DELIVERY_EPOCH)? {
        Some(v) => u32::from_be_bytes(array(&v, "stored delivery-key epoch", "must be 4 bytes")?),
        None => 0,
    };
    let mut keys = HashMap::new();
    for (k, v) in store.scan(Namespace::DeliveryKeys)? {
        let (account, device) = k.split_at_checked(KEY_LEN).ok_or(crate::Error::malformed(
            "stored delivery key",
            "bad address",
        ))?;
        let address = DeviceAddress {
            account: AccountId::from_bytes(account)?,
            device_id: u32::from_be_bytes(array(device, "stored delivery key", "bad address")?),
        };
        let key: Zeroizing<[u8; DELIVERY_KEY_LEN]> =
            Zeroizing::new(array(&v, "stored delivery key", "must be 32 bytes")?);
        keys.insert(address, DeliveryKey::from_bytes(&key));
    }
    Ok((epoch, keys))
}

impl<S: KvStore> Device<S> {
    /// Seals `content` for device `to`, whose identity must be known from its account's verified
    /// device list (`ProtocolError::UnknownAccount` / `DeviceNotOnList` otherwise). The envelope
    /// carries this device's address, identity and current delivery key. Changes no state.
    ///
    /// # Errors
    /// As above; `TooLarge` for content over
    /// [`MAX_SEALED_CONTENT_LEN`](crate::consts::MAX_SEALED_CONTENT_LEN).
    pub fn seal_for(
        &self,
        to: &DeviceAddress,
        content: &[u8],
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<u8>> {
        let identity = self.known_identity(to)?;
        Ok(sealed::seal(
            &self.identity,
            &self.address,
            &self.delivery_key(),
            &identity,
            content,
            rng,
        )?)
    }

    /// Opens a sealed envelope addressed to this device and authenticates the inner sender
    /// against its account's verified device list held here. Opening changes no state.
    ///
    /// # Errors
    /// Everything [`sealed::open`] refuses; then `ProtocolError::UnknownAccount` (the sender's
    /// list is not known yet: fetch it, accept it and open again), `ProtocolError::DeviceNotOnList`,
    /// or `AuthError::SealedSenderMismatch` when the identity keys inside are not the ones listed
    /// for the device the sender claims to be.
    pub fn open_sealed(&self, bytes: &[u8]) -> Result<Opened> {
        let opened = sealed::open(&self.identity, bytes)?;
        let listed = self.known_identity(&opened.from)?;
        if listed != opened.identity {
            return Err(AuthError::SealedSenderMismatch.into());
        }
        Ok(opened)
    }

    /// The sender a sealed envelope addressed to this device claims to be, authenticated only as
    /// the holder of the X25519 identity key inside, not yet against a device list: the account
    /// whose list to fetch when [`Device::open_sealed`] answers `UnknownAccount` or
    /// `DeviceNotOnList`. Changes no state.
    ///
    /// # Errors
    /// Everything [`sealed::open`] refuses.
    pub fn sealed_sender(&self, bytes: &[u8]) -> Result<DeviceAddress> {
        Ok(sealed::open(&self.identity, bytes)?.from)
    }

    /// This device's current delivery key (sent inside every envelope it seals).
    pub fn delivery_key(&self) -> DeliveryKey {
        DeliveryKey::derive(&self.identity, self.delivery_epoch)
    }

    /// The token this device publishes to the relay: senders must present it.
    pub fn delivery_token(&self) -> DeliveryToken {
        self.delivery_key().token()
    }

    /// Records the delivery key a peer device sent inside a sealed envelope (committed; a no-op
    /// when unchanged). Only call after [`Device::open_sealed`] succeeded for `from`.
    ///
    /// # Errors
    /// `UnknownAccount` / `DeviceNotOnList` when `from` is not on a known list; a store failure.
    pub fn note_delivery_key(&mut self, from: &DeviceAddress, key: &DeliveryKey) -> Result<()> {
        self.known_identity(from)?;
        if self.delivery_keys.get(from).is_some_and(|k| k.ct_eq(key)) {
            return Ok(());
        }
        let mut tx = Tx::default();
        tx.batch.put(
            Namespace::DeliveryKeys,
            from.to_key().to_vec(),
            Zeroizing::new(key.as_bytes().to_vec()),
        );
        self.finish(tx)?;
        self.delivery_keys.insert(*from, key.clone());
        Ok(())
    }

    /// The token to present when sending to `to`, if its delivery key is known.
    pub fn delivery_token_for(&self, to: &DeviceAddress) -> Option<DeliveryToken> {
        self.delivery_keys.get(to).map(DeliveryKey::token)
    }

    /// Rotates this device's delivery key (after blocking someone): the old token stops working
    /// once the new one ([`Device::delivery_token`]) is published. Committed.
    ///
    /// # Errors
    /// `Misuse` once 2^32 − 1 rotations are used up; a store failure.
    pub fn rotate_delivery_key(&mut self) -> Result<()> {
        let epoch = self
            .delivery_epoch
            .checked_add(1)
            .ok_or(ProtocolError::Misuse("delivery key epochs exhausted"))?;
        let mut tx = Tx::default();
        tx.batch.put(
            Namespace::Meta,
            DELIVERY_EPOCH,
            Zeroizing::new(epoch.to_be_bytes().to_vec()),
        );
        self.finish(tx)?;
        self.delivery_epoch = epoch;
        Ok(())
    }

    /// Devices of `account` whose delivery keys go when `list` replaces the accepted one: those
    /// that left the list or whose identity changed.
    pub(super) fn delivery_keys_to_forget(
        &self,
        account: &AccountId,
        list: &VerifiedDeviceList,
    ) -> Vec<DeviceAddress> {
        let old = self.device_lists.get(account);
        self.delivery_keys
            .keys()
            .filter(|a| a.account == *account)
            .filter(|a| {
                let now = list.identity_of(a.device_id).ok();
                now.is_none() || old.and_then(|o| o.identity_of(a.device_id).ok()) != now
            })
            .copied()
            .collect()
    }
}
