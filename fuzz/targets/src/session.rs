//! Decrypting untrusted bytes on Bob's device (see [`crate::fixture`]): pairwise messages claimed
//! to come from Alice's device (as the relay authenticates the sender), and group messages.
//!
//! Contract: no panic; a refused message leaves every store record as it was, and Alice's honest
//! next message still decrypts to its payload afterwards.

use hush_core::device::{Device, GroupIncoming};
use hush_core::store::memory::MemoryKv;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::fixture::{self, NOW, dump};

/// The device under test, opened from the fixture's snapshot.
pub fn bob() -> Device<MemoryKv> {
    Device::open(fixture::get().bob_store.clone()).expect("the fixture opens")
}

/// The target: the input is a `PairwiseMessage` from Alice.
pub fn pairwise(data: &[u8]) {
    let f = fixture::get();
    let mut dev = bob();
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    let before = dump(dev.store());
    if dev.decrypt(&f.alice, data, &mut rng, NOW).is_ok() {
        return;
    }
    assert!(
        dump(dev.store()) == before,
        "a refused message changed the store"
    );
    // The honest next message still decrypts (the in-memory session was not advanced either).
    let got = dev
        .decrypt(&f.alice, &f.pairwise[0], &mut rng, NOW)
        .expect("the honest message decrypts after a refused one");
    let got = got.single().expect("one payload");
    assert_eq!(
        got.plaintext.as_slice(),
        f.pairwise_plaintexts[0].as_slice()
    );
}

/// The target: the input is a `GroupMessage` as the relay fans it out.
pub fn group(data: &[u8]) {
    let f = fixture::get();
    let mut dev = bob();
    let mut rng = ChaCha20Rng::from_seed([4; 32]);
    let before = dump(dev.store());
    if dev.decrypt_group(data, &mut rng, NOW).is_ok() {
        return;
    }
    assert!(
        dump(dev.store()) == before,
        "a refused group message changed the store"
    );
    match dev.decrypt_group(&f.group_messages[0], &mut rng, NOW) {
        Ok(GroupIncoming::Decrypted(m)) => {
            assert_eq!(m.plaintext.as_slice(), f.group_plaintexts[0].as_slice());
        }
        Ok(GroupIncoming::Buffered { .. }) => panic!("the honest group message was buffered"),
        Err(e) => panic!("the honest group message fails after a refused one: {e}"),
    }
}
