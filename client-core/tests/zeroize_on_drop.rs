//! Decoded records that hold secrets (device keys, pre-key secrets, sessions, sender keys, inbox
//! plaintext) and the messenger's history records wipe themselves when dropped.
#![cfg(test)]
#![allow(clippy::field_reassign_with_default)]

use hush_proto::{app, store};
use zeroize::{Zeroize, ZeroizeOnDrop};

fn wiped_on_drop<T: ZeroizeOnDrop>() {}

#[test]
fn decoded_store_records_with_secrets_are_wiped_on_drop() {
    wiped_on_drop::<store::DeviceKeys>();
    wiped_on_drop::<store::SignedPreKeySecret>();
    wiped_on_drop::<store::OneTimePreKeySecret>();
    wiped_on_drop::<store::KemPreKeySecret>();
    wiped_on_drop::<store::SessionState>();
    wiped_on_drop::<store::SessionRecord>();
    wiped_on_drop::<store::ChainState>();
    wiped_on_drop::<store::SkippedKey>();
    wiped_on_drop::<store::SenderKeyState>();
    wiped_on_drop::<store::SenderKeyRecord>();
    wiped_on_drop::<store::SenderKeySkipped>();
    wiped_on_drop::<store::StoredMessage>();
    wiped_on_drop::<store::BufferedGroupMessage>();
}

#[test]
fn history_records_held_in_memory_are_wiped_on_drop() {
    wiped_on_drop::<app::StoredMessage>();
    wiped_on_drop::<app::AppMessage>();
    wiped_on_drop::<app::Text>();
    wiped_on_drop::<app::Attachment>();
    wiped_on_drop::<app::Reaction>();
    wiped_on_drop::<app::SyncSent>();
}

#[test]
fn zeroize_clears_every_secret_field() {
    let mut keys = store::DeviceKeys::default();
    keys.account_secret = vec![1; 32];
    keys.identity_signing_secret = vec![2; 32];
    keys.identity_dh_secret = vec![3; 32];
    keys.device_id = 7;
    keys.zeroize();
    assert!(keys.account_secret.is_empty());
    assert!(keys.identity_signing_secret.is_empty());
    assert!(keys.identity_dh_secret.is_empty());
    assert_eq!(keys.device_id, 0);

    let mut chain = store::ChainState::default();
    chain.chain_key = vec![4; 32];
    chain.index = 3;
    let mut skipped = store::SkippedKey::default();
    skipped.message_key = vec![5; 32];
    let mut session = store::SessionState::default();
    session.root_key = vec![6; 32];
    session.sending_ratchet_private = vec![7; 32];
    session.sending_chain = Some(chain);
    session.skipped = vec![skipped];
    session.zeroize();
    assert!(session.root_key.is_empty() && session.sending_ratchet_private.is_empty());
    assert!(session.sending_chain.is_none() && session.skipped.is_empty());

    let mut sender = store::SenderKeyState::default();
    sender.chain_key = vec![8; 32];
    sender.signing_private = vec![9; 32];
    sender.initial_chain_key = vec![10; 32];
    sender.zeroize();
    assert!(sender.chain_key.is_empty() && sender.signing_private.is_empty());
    assert!(sender.initial_chain_key.is_empty());

    let mut inbox = store::StoredMessage::default();
    inbox.plaintext = b"hello".to_vec();
    inbox.zeroize();
    assert!(inbox.plaintext.is_empty());

    let mut text = app::Text::default();
    text.body = "hello".into();
    let mut m = app::StoredMessage::default();
    m.sender_account = vec![1; 32];
    m.undelivered = vec![app::Undelivered {
        account: vec![2; 32],
        reason: "x".into(),
        permanent: true,
    }];
    m.zeroize();
    assert!(m.sender_account.is_empty() && m.undelivered.is_empty());
    text.zeroize();
    assert!(text.body.is_empty());
}
