//! Group messages that cannot be read yet (unknown group, sender not a member, sender key
//! missing) are buffered with quotas per sending account, so that no account can fill the buffer
//! for the others (docs/PROTOCOL.md §19.3).
#![cfg(test)]
#![allow(missing_docs)]

use hush_core::consts::{
    BUFFERED_GROUP_MESSAGE_MAX_AGE_MS, MAX_BUFFERED_GROUP_MESSAGES_PER_SENDER,
    MAX_BUFFERED_GROUP_MESSAGES_TOTAL,
};
use hush_core::device::{Device, DeviceError, GroupIncoming};
use hush_core::error::{Error, ProtocolError};
use hush_core::keys::{AccountId, DeviceAddress};
use hush_core::store::memory::MemoryKv;
use hush_proto::wire;
use prost::Message;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn sender(seed: u8) -> DeviceAddress {
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    DeviceAddress {
        account: AccountId::from_bytes(key.verifying_key().as_bytes()).unwrap(),
        device_id: 1,
    }
}

/// A group message from `from` for a group the receiver does not know (unreadable, buffered).
fn unreadable(from: &DeviceAddress, group: u8, iteration: u32) -> Vec<u8> {
    wire::GroupMessage {
        version: 1,
        group_id: vec![group; 32],
        sender_account_key: from.account.as_bytes().to_vec(),
        sender_device_id: from.device_id,
        key_id: 1,
        iteration,
        ciphertext: vec![0; 40],
        signature: vec![0; 64],
        log_seq: 1,
        log_head: vec![0; 32],
    }
    .encode_to_vec()
}

fn bob() -> (Device<MemoryKv>, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    let dev = Device::create_account(MemoryKv::new(), &mut rng, 1000).unwrap();
    (dev, rng)
}

fn buffer(
    dev: &mut Device<MemoryKv>,
    rng: &mut ChaCha20Rng,
    from: &DeviceAddress,
    group: u8,
    i: u32,
    now: u64,
) -> Result<(), DeviceError> {
    match dev.decrypt_group_from(from, &unreadable(from, group, i), rng, now)? {
        GroupIncoming::Buffered { request: None } => Ok(()),
        _ => panic!("not buffered"),
    }
}

fn full(r: Result<(), DeviceError>) -> bool {
    matches!(
        r,
        Err(DeviceError::Protocol(Error::Protocol(
            ProtocolError::BufferFull
        )))
    )
}

#[test]
fn an_account_at_its_quota_is_refused_and_another_account_is_still_buffered() {
    let (mut dev, mut rng) = bob();
    let (mallory, alice) = (sender(1), sender(2));
    // Spread over many group ids: the quota is per sending account, not per group.
    for i in 0..MAX_BUFFERED_GROUP_MESSAGES_PER_SENDER as u32 {
        buffer(&mut dev, &mut rng, &mallory, (i % 200) as u8, i, 2000).unwrap();
    }
    assert!(full(buffer(&mut dev, &mut rng, &mallory, 250, 0, 2000)));
    assert!(full(buffer(&mut dev, &mut rng, &mallory, 0, 9999, 2000)));
    // Alice's messages, even for a group Mallory flooded, are kept.
    buffer(&mut dev, &mut rng, &alice, 0, 1, 2000).unwrap();
    buffer(&mut dev, &mut rng, &alice, 7, 1, 2000).unwrap();
}

#[test]
fn buffered_messages_expire_and_free_their_senders_quota() {
    let (mut dev, mut rng) = bob();
    let mallory = sender(1);
    for i in 0..MAX_BUFFERED_GROUP_MESSAGES_PER_SENDER as u32 {
        buffer(&mut dev, &mut rng, &mallory, 1, i, 2000).unwrap();
    }
    assert!(full(buffer(&mut dev, &mut rng, &mallory, 1, 0, 2000)));
    let later = 2000 + BUFFERED_GROUP_MESSAGE_MAX_AGE_MS + 1;
    buffer(&mut dev, &mut rng, &mallory, 1, 0, later).unwrap();
}

#[test]
fn a_full_buffer_makes_room_at_the_expense_of_the_largest_holder_not_a_new_sender() {
    let (mut dev, mut rng) = bob();
    let flooders = MAX_BUFFERED_GROUP_MESSAGES_TOTAL / MAX_BUFFERED_GROUP_MESSAGES_PER_SENDER;
    for f in 0..flooders {
        let s = sender(10 + f as u8);
        for i in 0..MAX_BUFFERED_GROUP_MESSAGES_PER_SENDER as u32 {
            buffer(&mut dev, &mut rng, &s, f as u8, i, 2000).unwrap();
        }
    }
    // The buffer is full in total; a sender with nothing buffered still gets in, repeatedly.
    let alice = sender(2);
    for i in 0..5 {
        buffer(&mut dev, &mut rng, &alice, 99, i, 2000).unwrap();
    }
    // Flooders still at their quota are refused.
    let refused = (0..flooders)
        .filter(|f| {
            full(buffer(
                &mut dev,
                &mut rng,
                &sender(10 + *f as u8),
                0,
                7777,
                2000,
            ))
        })
        .count();
    assert!(refused > 0);
}

#[test]
fn a_group_message_naming_another_sender_than_the_delivering_device_is_refused() {
    let (mut dev, mut rng) = bob();
    let (mallory, alice) = (sender(1), sender(2));
    let forged = unreadable(&alice, 1, 1);
    let r = dev.decrypt_group_from(&mallory, &forged, &mut rng, 2000);
    assert!(
        matches!(r, Err(DeviceError::Protocol(Error::Malformed { .. }))),
        "{:?}",
        r.err()
    );
}
