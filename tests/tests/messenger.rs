//! End to end: two messengers over a real relay on 127.0.0.1 — text with replies, receipts,
//! typing, presence, a 5 MiB attachment, history paging and order.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hush_client::{Conversation, EngineConfig, Messenger, MessengerEvent};
use hush_proto::app::app_message;
use tokio::sync::mpsc::UnboundedReceiver;
use zeroize::Zeroizing;

const WAIT: Duration = Duration::from_secs(30);

fn cfg(dir: &Path, addr: SocketAddr, pin: &str) -> EngineConfig {
    EngineConfig {
        profile: dir.to_path_buf(),
        at_rest_key: Zeroizing::new([9; 32]),
        relay: addr,
        pin: pin.to_owned(),
    }
}

/// A stored message's id.
fn id_of(m: &hush_proto::app::StoredMessage) -> [u8; 16] {
    m.message
        .as_ref()
        .unwrap()
        .message_id
        .as_slice()
        .try_into()
        .unwrap()
}

/// The next event that `pick` accepts (others are skipped).
async fn next<T>(
    rx: &mut UnboundedReceiver<MessengerEvent>,
    mut pick: impl FnMut(MessengerEvent) -> Option<T>,
) -> T {
    loop {
        let ev = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("nothing in time")
            .expect("messenger gone");
        if let Some(t) = pick(ev) {
            return t;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_messengers_chat_with_receipts_typing_presence_attachments_and_history() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(relay_config(relay_dir.path(), any_port()))
        .await
        .unwrap();
    let (ad, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, mut a_rx) =
        Messenger::create_account(cfg(ad.path(), relay.addr, &relay.fingerprint))
            .await
            .unwrap();
    let (bob, mut b_rx) = Messenger::create_account(cfg(bd.path(), relay.addr, &relay.fingerprint))
        .await
        .unwrap();
    alice.engine().connected(WAIT).await.unwrap();
    bob.engine().connected(WAIT).await.unwrap();
    let (a, b) = (alice.address().account, bob.address().account);
    let to_bob = Conversation::Direct(b);
    let to_alice = Conversation::Direct(a);

    // Text, and a reply.
    let first = alice.send_text(to_bob, "hi bob", None).await.unwrap();
    let got = next(&mut b_rx, |e| match e {
        MessengerEvent::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    let Some(app_message::Kind::Text(t)) = got.message.as_ref().unwrap().kind.clone() else {
        panic!()
    };
    assert_eq!(t.body, "hi bob");
    assert!(!got.outgoing);
    // Delivered receipt, automatically.
    let (read, ids) = next(&mut a_rx, |e| match e {
        MessengerEvent::Receipt {
            read, message_ids, ..
        } => Some((read, message_ids)),
        _ => None,
    })
    .await;
    assert!(!read);
    assert_eq!(ids, vec![first]);
    // Read receipt when Bob reads.
    bob.mark_read(to_alice).await.unwrap();
    let (read, ids) = next(&mut a_rx, |e| match e {
        MessengerEvent::Receipt {
            read, message_ids, ..
        } => Some((read, message_ids)),
        _ => None,
    })
    .await;
    assert!(read);
    assert_eq!(ids, vec![first]);
    let mine = alice.history(to_bob, None, 10).unwrap();
    assert_eq!(mine.len(), 1);
    assert!(mine[0].sent && mine[0].outgoing);
    assert_eq!(mine[0].delivered_to, vec![b.as_bytes().to_vec()]);
    assert_eq!(mine[0].read_by, vec![b.as_bytes().to_vec()]);
    let reply = bob
        .send_text(to_alice, "hi alice", Some(first))
        .await
        .unwrap();
    let got = next(&mut a_rx, |e| match e {
        MessengerEvent::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    let Some(app_message::Kind::Text(t)) = got.message.as_ref().unwrap().kind.clone() else {
        panic!()
    };
    assert_eq!(
        (t.body.as_str(), t.reply_to.as_slice()),
        ("hi alice", &first[..])
    );

    // Typing and presence (ephemeral).
    alice.typing(to_bob, true).await.unwrap();
    let typing = next(&mut b_rx, |e| match e {
        MessengerEvent::Typing { typing, from, .. } => Some((typing, from.account)),
        _ => None,
    })
    .await;
    assert_eq!(typing, (true, a));
    alice.set_presence(true, &[b]).await.unwrap();
    let online = next(&mut b_rx, |e| match e {
        MessengerEvent::Presence { online, from, .. } => Some((online, from)),
        _ => None,
    })
    .await;
    assert_eq!(online, (true, a));

    // A 5 MiB attachment, encrypted by the sender, digest checked by the receiver.
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    alice
        .send_attachment(to_bob, "photo.jpg", "image/jpeg", &data)
        .await
        .unwrap();
    let got = next(&mut b_rx, |e| match e {
        MessengerEvent::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    let Some(app_message::Kind::Attachment(att)) = got.message.as_ref().unwrap().kind.clone()
    else {
        panic!()
    };
    assert_eq!(
        (att.name.as_str(), att.size),
        ("photo.jpg", data.len() as u64)
    );
    assert_eq!(bob.download(&att).await.unwrap().as_slice(), &data[..]);
    // A tampered digest is refused.
    let mut bad = att.clone();
    bad.digest[0] ^= 1;
    assert!(bob.download(&bad).await.is_err());

    // History: 30 more, paged 10 at a time, the same order on both sides.
    for i in 0..30 {
        alice
            .send_text(to_bob, &format!("m{i}"), None)
            .await
            .unwrap();
    }
    for _ in 0..30 {
        next(&mut b_rx, |e| match e {
            MessengerEvent::Message { .. } => Some(()),
            _ => None,
        })
        .await;
    }
    let texts = |v: Vec<hush_proto::app::StoredMessage>| -> Vec<String> {
        v.into_iter()
            .filter_map(|m| match m.message?.kind? {
                app_message::Kind::Text(t) => Some(t.body),
                app_message::Kind::Attachment(a) => Some(a.name),
                _ => None,
            })
            .collect()
    };
    let newest = bob.history(to_alice, None, 10).unwrap();
    assert_eq!(
        texts(newest.clone()),
        (20..30).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    let before: [u8; 16] = id_of(&newest[0]);
    let older = bob.history(to_alice, Some(before), 10).unwrap();
    assert_eq!(
        texts(older),
        (10..20).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    let all_bob = texts(bob.history(to_alice, None, 100).unwrap());
    let all_alice = texts(alice.history(to_bob, None, 100).unwrap());
    assert_eq!(all_bob, all_alice, "the two sides disagree on the order");
    assert_eq!(all_bob.len(), 1 + 1 + 1 + 30);
    assert!(
        bob.history(to_alice, None, 100)
            .unwrap()
            .iter()
            .all(|m| !m.gap_before)
    );
    let _ = reply;

    alice.shutdown().await;
    bob.shutdown().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_device_sees_sent_messages_and_an_offline_device_catches_up_1000_in_order() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(relay_config(relay_dir.path(), any_port()))
        .await
        .unwrap();
    let (a1d, a2d, bd) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (alice, mut a_rx) =
        Messenger::create_account(cfg(a1d.path(), relay.addr, &relay.fingerprint))
            .await
            .unwrap();
    let (bob, mut b_rx) = Messenger::create_account(cfg(bd.path(), relay.addr, &relay.fingerprint))
        .await
        .unwrap();
    alice.engine().connected(WAIT).await.unwrap();
    bob.engine().connected(WAIT).await.unwrap();
    let (a, b) = (alice.address().account, bob.address().account);

    // Link a second device of Alice's.
    let offer = alice.engine().offer_link().unwrap();
    let (alice2, mut a2_rx) =
        Messenger::link(cfg(a2d.path(), relay.addr, &relay.fingerprint), &offer.code)
            .await
            .unwrap();
    alice.engine().complete_link(&offer, WAIT).await.unwrap();
    alice2.engine().connected(WAIT).await.unwrap();

    // What Alice sends from her first device shows on her second one, as hers.
    alice
        .send_text(Conversation::Direct(b), "sent from device one", None)
        .await
        .unwrap();
    let synced = next(&mut a2_rx, |e| match e {
        MessengerEvent::Message {
            message,
            conversation,
        } => Some((message, conversation)),
        _ => None,
    })
    .await;
    assert!(synced.0.outgoing);
    assert_eq!(synced.1, Conversation::Direct(b));
    let got = next(&mut b_rx, |e| match e {
        MessengerEvent::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    assert_eq!(got.sender_account, a.as_bytes().to_vec());

    // Bob goes offline; Alice's second device sends 1000; Bob catches up, in order, once.
    bob.shutdown().await;
    for i in 0..1000 {
        alice2
            .send_text(Conversation::Direct(b), &format!("n{i:04}"), None)
            .await
            .unwrap();
    }
    let (bob, mut b_rx) = Messenger::open(cfg(bd.path(), relay.addr, &relay.fingerprint)).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 1000 {
        let m = next(&mut b_rx, |e| match e {
            MessengerEvent::Message { message, .. } => Some(message),
            _ => None,
        })
        .await;
        if let Some(app_message::Kind::Text(t)) = m.message.and_then(|x| x.kind) {
            seen.push(t.body);
        }
    }
    assert_eq!(
        seen,
        (0..1000).map(|i| format!("n{i:04}")).collect::<Vec<_>>()
    );
    let history: Vec<String> = bob
        .history(Conversation::Direct(a), None, 2000)
        .unwrap()
        .into_iter()
        .filter_map(|m| match m.message?.kind? {
            app_message::Kind::Text(t) => Some(t.body),
            _ => None,
        })
        .collect();
    assert_eq!(history.len(), 1001);
    assert_eq!(history[1..], seen[..]);
    // Alice's first device saw all 1000 as sent by her account (own-message sync).
    let mut mine = 0;
    while mine < 1000 {
        next(&mut a_rx, |e| match e {
            MessengerEvent::Message { message, .. } if message.outgoing => Some(()),
            _ => None,
        })
        .await;
        mine += 1;
    }
    alice.shutdown().await;
    alice2.shutdown().await;
    bob.shutdown().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_written_while_the_relay_was_down_is_sent_after_the_app_restarts_and_one_refused_for_good_is_reported()
 {
    let relay_dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = free_port();
    let with_addr = |dir: &Path| relay_config(dir, addr);
    let relay = hush_relay::start(with_addr(relay_dir.path()))
        .await
        .unwrap();
    let pin = relay.fingerprint.clone();
    let (ad, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, _a_rx) = Messenger::create_account(cfg(ad.path(), addr, &pin))
        .await
        .unwrap();
    let (bob, mut b_rx) = Messenger::create_account(cfg(bd.path(), addr, &pin))
        .await
        .unwrap();
    alice.engine().connected(WAIT).await.unwrap();
    bob.engine().connected(WAIT).await.unwrap();
    let b = bob.address().account;
    alice
        .send_text(Conversation::Direct(b), "first", None)
        .await
        .unwrap();
    next(&mut b_rx, |e| match e {
        MessengerEvent::Message { .. } => Some(()),
        _ => None,
    })
    .await;

    // The relay goes away. Alice writes; the app is closed before the message could leave.
    relay.stop().await;
    let pending = tokio::time::timeout(
        Duration::from_millis(300),
        alice.send_text(Conversation::Direct(b), "written offline", None),
    )
    .await;
    assert!(pending.is_err(), "sent although the relay was down");
    // And one to an account the relay does not know (a mistyped contact), also stored.
    let nobody = hush_core::keys::AccountId::from_bytes(
        ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32])
            .verifying_key()
            .as_bytes(),
    )
    .unwrap();
    let pending = tokio::time::timeout(
        Duration::from_millis(300),
        alice.send_text(Conversation::Direct(nobody), "to nobody", None),
    )
    .await;
    assert!(pending.is_err(), "sent although the relay was down");
    alice.shutdown().await;

    // The relay is back; Alice's app starts again, its outbox sends the message, once.
    let relay = hush_relay::start(with_addr(relay_dir.path()))
        .await
        .unwrap();
    let (alice, mut a_rx) = Messenger::open(cfg(ad.path(), addr, &pin)).unwrap();
    let history = alice.history(Conversation::Direct(b), None, 10).unwrap();
    let waiting = history.last().unwrap();
    assert!(waiting.outgoing && !waiting.sent);
    let id: [u8; 16] = id_of(waiting);
    let lost = alice
        .history(Conversation::Direct(nobody), None, 10)
        .unwrap();
    let lost_id: [u8; 16] = id_of(&lost[0]);
    // The outbox sends the first; the second is refused for good, reported, and not retried.
    let (mut sent, mut failed) = (None, None);
    while sent.is_none() || failed.is_none() {
        next(&mut a_rx, |e| match e {
            MessengerEvent::Sent { message_id, .. } => {
                sent = Some(message_id);
                Some(())
            }
            MessengerEvent::SendFailed {
                conversation,
                message_id,
                reason,
            } => {
                assert_eq!(conversation, Conversation::Direct(nobody));
                assert!(!reason.is_empty());
                failed = Some(message_id);
                Some(())
            }
            _ => None,
        })
        .await;
    }
    assert_eq!(sent, Some(id));
    assert_eq!(failed, Some(lost_id));
    let (conv, stored) = alice.message(&lost_id).unwrap().unwrap();
    assert_eq!(conv, Conversation::Direct(nobody));
    assert!(
        !stored.sent && !stored.failed.is_empty(),
        "not stored as failed"
    );
    // Retrying by hand is refused the same way and leaves it failed.
    let again = alice.retry(&lost_id).await.unwrap_err();
    assert!(again.is_permanent(), "{again}");
    assert!(
        !alice
            .message(&lost_id)
            .unwrap()
            .unwrap()
            .1
            .failed
            .is_empty()
    );
    // A message already sent: retry does nothing.
    alice.retry(&id).await.unwrap();
    // A send to it while connected fails at once, stored as failed, reported.
    let err = alice
        .send_text(Conversation::Direct(nobody), "still nobody", None)
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err}");
    next(&mut a_rx, |e| match e {
        MessengerEvent::SendFailed { message_id, .. } if message_id != lost_id => Some(()),
        _ => None,
    })
    .await;
    let lost = alice
        .history(Conversation::Direct(nobody), None, 10)
        .unwrap();
    assert_eq!(lost.len(), 2);
    assert!(lost.iter().all(|m| !m.sent && !m.failed.is_empty()));
    assert!(
        alice.history(Conversation::Direct(b), None, 10).unwrap()[1].sent,
        "not marked sent"
    );
    let got = next(&mut b_rx, |e| match e {
        MessengerEvent::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    let Some(app_message::Kind::Text(t)) = got.message.as_ref().unwrap().kind.clone() else {
        panic!()
    };
    assert_eq!(t.body, "written offline");
    assert_eq!(
        bob.history(Conversation::Direct(alice.address().account), None, 10)
            .unwrap()
            .len(),
        2
    );
    alice.shutdown().await;
    bob.shutdown().await;
    relay.stop().await;
}
