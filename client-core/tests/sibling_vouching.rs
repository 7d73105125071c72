//! A newly linked device learns its account's groups from a sibling (PROTOCOL.md §17.7). A change
//! whose author device has left its list is accepted only with proof that the device was listed:
//! an earlier list of its account, signed by the account key (§17.6), not because a sibling says
//! so.
#![cfg(test)]
#![allow(missing_docs)]

mod common;
use common::{Shared, bundle, introduce};

use hush_core::device::{Device, DeviceError};
use hush_core::error::{Error, ProtocolError};
use hush_core::store::kv::{Batch, KvStore, Namespace};
use hush_core::store::memory::MemoryKv;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn connect<S: KvStore, T: KvStore>(a: &mut Device<S>, b: &Device<T>, rng: &mut ChaCha20Rng) {
    a.start_session(&bundle(&b.published_pre_keys().unwrap()), rng, 1000)
        .unwrap();
}

/// A new device `id` of `holder`'s account, on its list, asking `holder` for the account's
/// groups; returns it and what `holder` answered.
fn link_and_sync(
    holder: &mut Device<Shared>,
    bob: &Device<MemoryKv>,
    id: u32,
    rng: &mut ChaCha20Rng,
    now: u64,
) -> (Device<MemoryKv>, Vec<u8>) {
    let acct = holder.address().account;
    let mut new = Device::create_linked(MemoryKv::new(), rng, acct, id, now).unwrap();
    holder.add_device(&new.consent(), now).unwrap();
    introduce(&mut new, holder);
    introduce(&mut new, bob);
    connect(&mut new, holder, rng);
    let request = new.request_group_sync(rng, now).unwrap();
    assert_eq!(request.len(), 1);
    let answer = holder
        .decrypt(&new.address(), &request[0].bytes, rng, now + 1)
        .unwrap()
        .outgoing;
    assert_eq!(answer.len(), 1);
    (new, answer[0].bytes.clone())
}

#[test]
fn a_sibling_vouches_for_a_departed_author_only_with_an_earlier_signed_list_that_holds_it() {
    let mut rng = ChaCha20Rng::from_seed([5; 32]);
    let store = Shared::default();
    let mut a1 = Device::create_account(store.clone(), &mut rng, 1000).unwrap();
    let acct = a1.address().account;
    let mut a2 = Device::create_linked(MemoryKv::new(), &mut rng, acct, 2, 1000).unwrap();
    a1.add_device(&a2.consent(), 1001).unwrap();
    let mut bob = Device::create_account(MemoryKv::new(), &mut rng, 1000).unwrap();
    introduce(&mut a2, &a1);
    introduce(&mut a2, &bob);
    introduce(&mut a1, &bob);
    introduce(&mut bob, &a1);
    connect(&mut a2, &a1, &mut rng);
    connect(&mut a2, &bob, &mut rng);
    // Device 2 creates the group; device 1 learns it; then device 2 leaves the list.
    let (g, out) = a2
        .create_group("club", &[bob.address().account], &mut rng, 1002)
        .unwrap();
    let to_a1 = out.iter().find(|o| o.to == a1.address()).unwrap();
    a1.decrypt(&a2.address(), &to_a1.bytes, &mut rng, 1003)
        .unwrap();
    assert!(a1.group(&g).is_some());
    a1.remove_device(2, 1004).unwrap();

    // A new device 3: its sibling's answer carries the list that held device 2.
    let (mut a3, answer) = link_and_sync(&mut a1, &bob, 3, &mut rng, 1010);
    a3.decrypt(&a1.address(), &answer, &mut rng, 1012).unwrap();
    assert!(a3.group(&g).is_some(), "the group was not learned");

    // Without that earlier list (a sibling that kept none), the sibling's word is not enough.
    a1.remove_device(3, 1015).unwrap();
    let former: Vec<Vec<u8>> = store
        .scan(Namespace::DeviceLists)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.len() != 32)
        .collect();
    assert!(!former.is_empty(), "no earlier list kept");
    let mut batch = Batch::new();
    for k in former {
        batch.delete(Namespace::DeviceLists, k);
    }
    store.clone().commit(batch).unwrap();
    let (mut a4, answer) = link_and_sync(&mut a1, &bob, 4, &mut rng, 1020);
    let r = a4.decrypt(&a1.address(), &answer, &mut rng, 1022);
    assert!(
        matches!(
            r,
            Err(DeviceError::Protocol(Error::Protocol(
                ProtocolError::DeviceNotOnList
            )))
        ),
        "{:?}",
        r.err()
    );
    assert!(a4.group(&g).is_none());
}
