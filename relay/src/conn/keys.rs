//! Public key material: device lists (publication with revocation, fetch) and pre-keys (upload,
//! bundle claims). Signatures are checked on the connection; the writes go to the store writer.

use std::collections::BTreeSet;
use std::sync::Arc;

use hush_proto::relay_api::{self as api, ErrorCode, server_frame};
use hush_proto::wire::{KemPreKey, OneTimePreKey, PreKeyBundle, SignedPreKey};
use prost::Message;

use super::{ConnState, Now, Refusal, Reply, arr};
use crate::limits;
use crate::router::Live;
use crate::shared::{AccountDevices, Relay};
use crate::store::{DeviceId, PreKeyUpload, StoreError};
use crate::verify::{self, VerifyError};

impl ConnState {
    pub(super) fn publish_list(
        &mut self,
        relay: &Arc<Relay>,
        rid: u64,
        p: api::PublishDeviceList,
    ) -> Result<Reply, Refusal> {
        let me = self.me()?;
        relay.rate_limiters.upload(&me, self.now)?;
        self.replace_list(relay, rid, me.account, p.signed_device_list)
    }

    /// A new device recovering its account from a backup publishes the account's list before
    /// it can authenticate (it is on no list the relay holds yet): the account key's signature
    /// is the whole authority, as for any publication; the account is the list's own, and the
    /// request is limited per address block.
    pub(super) fn recover_list(
        &mut self,
        relay: &Arc<Relay>,
        rid: u64,
        p: api::RecoverDeviceList,
        now: super::Now,
    ) -> Result<Reply, Refusal> {
        relay
            .rate_limiters
            .accounts
            .check(&crate::shared::address_block(self.remote), 1, now.at)
            .map_err(Refusal::rate)?;
        let max = relay.cfg.max_devices_per_account as usize;
        let checked = verify::CheckedList::check(&p.signed_device_list, None, max)?;
        if relay.store.device_list(&checked.account)?.is_none() {
            return Err(Refusal::new(ErrorCode::NotFound, "unknown account"));
        }
        tracing::info!("device list published by a recovering device");
        self.replace_list(relay, rid, checked.account, p.signed_device_list)
    }

    /// Replaces `account`'s list by `signed` (verified here) and cuts off the devices it drops.
    fn replace_list(
        &mut self,
        relay: &Arc<Relay>,
        rid: u64,
        account: [u8; 32],
        signed: Vec<u8>,
    ) -> Result<Reply, Refusal> {
        let me = DeviceId { account, device: 0 };
        let max = relay.cfg.max_devices_per_account as usize;
        let devices =
            AccountDevices::from_signed(&signed, Some(&me.account), max).map_err(|e| match e {
                VerifyError::WrongAccount => Refusal::new(
                    ErrorCode::Forbidden,
                    "a device may only publish its own account's list",
                ),
                other => Refusal::from(other),
            })?;
        // A connection's publications are applied in order on its writer lane, and the store
        // takes only a newer version, so the old list read here is the one the new list
        // replaces (on a cluster, a list published meanwhile through another node makes this
        // one stale and refused).
        self.submit(relay, rid, true, move |r| {
            let mut old = r.devices_of_within(&me.account, std::time::Duration::ZERO)?;
            match r
                .store
                .put_device_list(&me.account, devices.version, &signed)
            {
                Ok(()) => {}
                // This very list is stored already: a retry of a publication whose clean-up
                // below failed half-way. Where the store kept the list it replaced, the
                // clean-up is done again (it is idempotent); elsewhere the refusal stands.
                Err(StoreError::StaleDeviceList { stored, offered })
                    if stored == offered
                        && r.store.device_list(&me.account)?.map(|(_, s)| s).as_deref()
                            == Some(signed.as_slice()) =>
                {
                    let Some(previous) = r.store.previous_device_list(&me.account)? else {
                        return Err(StoreError::StaleDeviceList { stored, offered }.into());
                    };
                    old = Some(std::sync::Arc::new(
                        AccountDevices::from_signed(&previous, Some(&me.account), usize::MAX)
                            .map_err(|_| StoreError::Corrupt("lists"))?,
                    ));
                }
                Err(e) => return Err(e.into()),
            }
            let kept: BTreeSet<u32> = devices.devices.keys().copied().collect();
            let replaced: Vec<u32> = old
                .map(|o| {
                    o.devices
                        .iter()
                        .filter(|(id, d)| {
                            !kept.contains(id)
                                || devices
                                    .devices
                                    .get(id)
                                    .is_some_and(|n| n.signing_key != d.signing_key)
                        })
                        .map(|(id, _)| *id)
                        .collect()
                })
                .unwrap_or_default();
            r.cache_list(me.account, devices);
            // Revoked (or re-keyed) devices are cut off at once and forgotten.
            for id in replaced {
                let d = DeviceId {
                    account: me.account,
                    device: id,
                };
                r.router.deliver(&d, Live::Revoked);
                let purged = r.store.forget_device(&d)?;
                r.rearm_low(&d);
                r.forget_access(&d);
                r.update_mailbox_gauge();
                r.metrics
                    .envelopes_stored
                    .inc_by(-i64::try_from(purged).unwrap_or(0));
                tracing::info!("device revoked");
            }
            Ok(server_frame::Kind::Ok(api::Ok {}))
        });
        Ok(Reply::Later)
    }

    pub(super) fn fetch_list(
        &mut self,
        relay: &Relay,
        q: &api::FetchDeviceList,
        now: Now,
    ) -> Result<server_frame::Kind, Refusal> {
        let me = self.caller(relay)?;
        relay.rate_limiters.fetch(&me, now.at)?;
        let account: [u8; 32] = arr(&q.account, "account")?;
        let (_, bytes) = relay
            .store
            .device_list(&account)?
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "unknown account"))?;
        Ok(server_frame::Kind::DeviceList(api::DeviceListResult {
            signed_device_list: bytes,
        }))
    }

    pub(super) fn upload_pre_keys(
        &mut self,
        relay: &Arc<Relay>,
        rid: u64,
        u: api::UploadPreKeys,
        now: Now,
    ) -> Result<Reply, Refusal> {
        let me = self.me()?;
        relay.rate_limiters.upload(&me, now.at)?;
        if u.one_time_pre_keys.len() > limits::MAX_PRE_KEYS_PER_UPLOAD
            || u.kem_pre_keys.len() > limits::MAX_PRE_KEYS_PER_UPLOAD
        {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                "too many pre-keys in one upload",
            ));
        }
        let (otk_have, kem_have) = relay.store.pre_key_counts(&me)?;
        if otk_have + u.one_time_pre_keys.len() > limits::MAX_PRE_KEYS_STORED
            || kem_have + u.kem_pre_keys.len() > limits::MAX_PRE_KEYS_STORED
        {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                "too many pre-keys stored",
            ));
        }
        let devices = relay
            .devices_of(&me.account)?
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "unknown account"))?;
        let key = devices
            .devices
            .get(&me.device)
            .map(|d| d.signing_key)
            .ok_or_else(|| Refusal::new(ErrorCode::Forbidden, "device not on the list"))?;
        verify::signed_pre_key(&u.signed_pre_key, &key)?;
        verify::kem_pre_key(&u.last_resort_kem_pre_key, &key, true)?;
        let mut one_time = Vec::with_capacity(u.one_time_pre_keys.len());
        for k in u.one_time_pre_keys {
            one_time.push((verify::one_time_pre_key(&k)?, k));
        }
        let mut kem = Vec::with_capacity(u.kem_pre_keys.len());
        for k in u.kem_pre_keys {
            kem.push((verify::kem_pre_key(&k, &key, false)?, k));
        }
        let upload = PreKeyUpload {
            signed_pre_key: u.signed_pre_key,
            last_resort_kem_pre_key: u.last_resort_kem_pre_key,
            one_time,
            kem,
        };
        self.submit(relay, rid, true, move |r| {
            r.store.publish_pre_keys(&me, upload)?;
            let (otk, kem) = r.store.pre_key_counts(&me)?;
            if otk >= limits::PRE_KEYS_LOW && kem >= limits::PRE_KEYS_LOW {
                r.rearm_low(&me);
            }
            Ok(server_frame::Kind::Ok(api::Ok {}))
        });
        Ok(Reply::Later)
    }

    /// Claims a bundle's worth of keys on the writer; the bundle leaves only once the claim is
    /// durable, so a claimed one-time key never comes back after a crash.
    ///
    /// One-time keys are rationed (per target device, per pair of accounts, per requesting
    /// account: `RateLimiters::one_time_keys`): past a limit the bundle is still served, with the
    /// signed pre-key and the last-resort ML-KEM key only, as when none are left (PROTOCOL.md
    /// §4.3), so nobody is denied a session while draining a device's keys becomes slow. The
    /// device is told its keys run low once per low spell (`Relay::first_low`).
    pub(super) fn fetch_bundle(
        &mut self,
        relay: &Arc<Relay>,
        rid: u64,
        b: &api::FetchBundle,
        now: Now,
    ) -> Result<Reply, Refusal> {
        let me = self.caller(relay)?;
        relay.rate_limiters.fetch(&me, now.at)?;
        let account: [u8; 32] = arr(&b.account, "account")?;
        let devices = relay
            .devices_of(&account)?
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "unknown account"))?;
        let identity = devices
            .devices
            .get(&b.device_id)
            .map(|l| l.identity.clone())
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "no such device"))?;
        let target = DeviceId {
            account,
            device: b.device_id,
        };
        let grant = relay
            .rate_limiters
            .one_time_keys(&me.account, &target, now.at);
        self.submit(relay, rid, false, move |r| {
            let claimed = r.store.claim_pre_keys(&target, grant.is_ok());
            let claimed = match claimed {
                Ok(Some(c)) => c,
                other => {
                    if let Ok(g) = &grant {
                        r.rate_limiters.refund_one_time_keys(g);
                    }
                    return Err(match other {
                        Err(e) => Refusal::from(e),
                        _ => Refusal::new(ErrorCode::NotFound, "the device has no pre-keys"),
                    });
                }
            };
            match &grant {
                Err(limit) => r.metrics.one_time_keys_withheld.inc(*limit),
                Ok(_) if claimed.one_time.is_some() || !claimed.kem_is_last_resort => {
                    r.metrics.one_time_keys_claimed.inc();
                }
                // None were left: the grant took nothing.
                Ok(g) => r.rate_limiters.refund_one_time_keys(g),
            }
            let bad = |_| StoreError::Corrupt("prekeys");
            let bundle = PreKeyBundle {
                account_key: account.to_vec(),
                device_id: target.device,
                identity: Some(identity),
                signed_pre_key: Some(
                    SignedPreKey::decode(claimed.signed_pre_key.as_slice()).map_err(bad)?,
                ),
                one_time_pre_key: claimed
                    .one_time
                    .as_deref()
                    .map(OneTimePreKey::decode)
                    .transpose()
                    .map_err(bad)?,
                kem_pre_key: Some(KemPreKey::decode(claimed.kem.as_slice()).map_err(bad)?),
            };
            r.metrics.prekey_bundles.inc();
            if (claimed.one_time_left < limits::PRE_KEYS_LOW
                || claimed.kem_left < limits::PRE_KEYS_LOW)
                && r.first_low(&target)
            {
                r.router.deliver(
                    &target,
                    Live::PreKeysLow(
                        u32::try_from(claimed.one_time_left).unwrap_or(u32::MAX),
                        u32::try_from(claimed.kem_left).unwrap_or(u32::MAX),
                    ),
                );
            }
            Ok(server_frame::Kind::Bundle(api::BundleResult {
                bundle: bundle.encode_to_vec(),
            }))
        });
        Ok(Reply::Later)
    }
}
