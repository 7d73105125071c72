//! What several device tests share: a pre-key bundle built from what a device publishes, and
//! one device learning another's account list.
#![allow(dead_code, clippy::unwrap_used)]

use hush_core::device::Device;
use hush_core::prekeys::{PreKeyBundle, PublishedPreKeys};
use hush_core::store::kv::KvStore;
use hush_proto::wire;

/// A bundle from what `p` publishes, using the last-resort ML-KEM key and no one-time key.
pub(crate) fn bundle(p: &PublishedPreKeys) -> PreKeyBundle {
    PreKeyBundle(wire::PreKeyBundle {
        account_key: p.address.account.as_bytes().to_vec(),
        device_id: p.address.device_id,
        identity: Some(wire::DeviceIdentityKey {
            signing_key: p.identity.signing_key().to_vec(),
            dh_key: p.identity.dh_key().to_vec(),
        }),
        signed_pre_key: Some(p.signed_pre_key.clone()),
        one_time_pre_key: None,
        kem_pre_key: Some(p.last_resort_kem_pre_key.clone()),
    })
}

/// `a` accepts the current device list of `b`'s account.
pub(crate) fn introduce<S: KvStore, T: KvStore>(a: &mut Device<S>, b: &Device<T>) {
    let acct = b.address().account;
    let list = b.device_list(&acct).unwrap().signed_bytes().to_vec();
    a.accept_device_list(&list, &acct, 0).unwrap();
}
