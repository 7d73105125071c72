//! End to end: two messengers over a real relay on 127.0.0.1 — text with replies, receipts,
//! typing, presence, a 5 MiB attachment, history paging and order.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hush_client::messenger::{MessageStatus, status_of};
use hush_client::{ClientError, Conversation, Messenger, MessengerEvent};
use hush_proto::app::app_message;
use tokio::sync::mpsc::UnboundedReceiver;
use zeroize::Zeroizing;

const WAIT: Duration = Duration::from_secs(30);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_messengers_chat_with_receipts_typing_presence_attachments_and_history() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(relay_config(relay_dir.path(), any_port()))
        .await
        .unwrap();
    let (ad, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, mut a_rx) =
        Messenger::create_account(engine_config(ad.path(), relay.addr, &relay.fingerprint))
            .await
            .unwrap();
    let (bob, mut b_rx) =
        Messenger::create_account(engine_config(bd.path(), relay.addr, &relay.fingerprint))
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
    // On the relay, then delivered (Bob's device confirms by itself): each step once, in order.
    assert_eq!(
        next(&mut a_rx, status_step).await,
        (MessageStatus::Sent, vec![first])
    );
    assert_eq!(
        next(&mut a_rx, status_step).await,
        (MessageStatus::Delivered, vec![first])
    );
    // Read when Bob reads.
    bob.mark_read(to_alice).await.unwrap();
    assert_eq!(
        next(&mut a_rx, status_step).await,
        (MessageStatus::Read, vec![first])
    );
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
    // Progress goes up from 0 to the encrypted size (the file and its 16-byte tag).
    let seen = std::sync::Mutex::new(Vec::new());
    let progress = |done: u64, total: u64| seen.lock().unwrap().push((done, total));
    let plain = bob.download_with_progress(&att, &progress).await.unwrap();
    assert_eq!(plain.as_slice(), &data[..]);
    let seen = seen.into_inner().unwrap();
    let sealed = data.len() as u64 + 16;
    assert_eq!(seen.first(), Some(&(0, sealed)));
    assert_eq!(seen.last(), Some(&(sealed, sealed)));
    assert!(
        seen.windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[1].1 == sealed)
    );
    // Found by the first digits of its id, and as the last file received.
    let id = hex::encode(&got.message.as_ref().unwrap().message_id);
    let found = bob.find_attachments(&id[..8].to_uppercase()).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].2, att);
    assert_eq!(bob.last_received_attachment().unwrap().unwrap().2, att);
    assert!(alice.last_received_attachment().unwrap().is_none());
    // A tampered digest is refused as altered; a capability the relay does not know (as for a
    // file expired or deleted) as gone.
    let mut bad = att.clone();
    bad.digest[0] ^= 1;
    assert!(matches!(
        bob.download(&bad).await,
        Err(ClientError::BlobAltered)
    ));
    let mut gone = att.clone();
    gone.capability[0] ^= 1;
    assert!(matches!(
        bob.download(&gone).await,
        Err(ClientError::BlobGone)
    ));

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
            .filter_map(|m| match m.message.as_ref()?.kind.as_ref()? {
                app_message::Kind::Text(t) => Some(t.body.clone()),
                app_message::Kind::Attachment(a) => Some(a.name.clone()),
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
        Messenger::create_account(engine_config(a1d.path(), relay.addr, &relay.fingerprint))
            .await
            .unwrap();
    let (bob, mut b_rx) =
        Messenger::create_account(engine_config(bd.path(), relay.addr, &relay.fingerprint))
            .await
            .unwrap();
    alice.engine().connected(WAIT).await.unwrap();
    bob.engine().connected(WAIT).await.unwrap();
    let (a, b) = (alice.address().account, bob.address().account);

    // Link a second device of Alice's.
    let offer = alice.engine().offer_link().unwrap();
    alice.engine().open_link(&offer).await.unwrap();
    let (alice2, mut a2_rx) = Messenger::link(
        engine_config(a2d.path(), relay.addr, &relay.fingerprint),
        &offer.code,
    )
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
    let (bob, mut b_rx) =
        Messenger::open(engine_config(bd.path(), relay.addr, &relay.fingerprint)).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 1000 {
        let m = next(&mut b_rx, |e| match e {
            MessengerEvent::Message { message, .. } => Some(message),
            _ => None,
        })
        .await;
        if let Some(app_message::Kind::Text(t)) = m.message.as_ref().and_then(|x| x.kind.as_ref()) {
            seen.push(t.body.clone());
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
        .filter_map(|m| match m.message.as_ref()?.kind.as_ref()? {
            app_message::Kind::Text(t) => Some(t.body.clone()),
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
    let (alice, _a_rx) = Messenger::create_account(engine_config(ad.path(), addr, &pin))
        .await
        .unwrap();
    let (bob, mut b_rx) = Messenger::create_account(engine_config(bd.path(), addr, &pin))
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

    // The relay goes away. Alice writes: the call returns at once, the message waiting; the
    // app is closed before it could leave.
    relay.stop().await;
    let offline = alice
        .send_text(Conversation::Direct(b), "written offline", None)
        .await
        .unwrap();
    assert_eq!(
        status_of(&alice.message(&offline).unwrap().unwrap().1),
        Some(MessageStatus::Waiting)
    );
    assert_eq!(
        alice
            .wait_sent(&offline, Duration::from_millis(300))
            .await
            .unwrap(),
        MessageStatus::Waiting,
        "sent although the relay was down"
    );
    // And one to an account the relay does not know (a mistyped contact), also stored.
    let nobody = hush_core::keys::AccountId::from_bytes(
        ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32])
            .verifying_key()
            .as_bytes(),
    )
    .unwrap();
    let to_nobody = alice
        .send_text(Conversation::Direct(nobody), "to nobody", None)
        .await
        .unwrap();
    assert_eq!(
        status_of(&alice.message(&to_nobody).unwrap().unwrap().1),
        Some(MessageStatus::Waiting)
    );
    alice.shutdown().await;

    // The relay is back; Alice's app starts again, its outbox sends the message, once.
    let relay = hush_relay::start(with_addr(relay_dir.path()))
        .await
        .unwrap();
    let (alice, mut a_rx) = Messenger::open(engine_config(ad.path(), addr, &pin)).unwrap();
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
            MessengerEvent::Status {
                message_ids,
                status: MessageStatus::Sent,
                ..
            } => {
                sent = message_ids.first().copied();
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
    // Retrying by hand puts it back in the outbox; refused the same way, it is failed again.
    alice.retry(&lost_id).await.unwrap();
    next(&mut a_rx, |e| match e {
        MessengerEvent::SendFailed { message_id, .. } if message_id == lost_id => Some(()),
        _ => None,
    })
    .await;
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
    // A send to it while connected is stored, refused, stored as failed, reported.
    let still = alice
        .send_text(Conversation::Direct(nobody), "still nobody", None)
        .await
        .unwrap();
    assert_eq!(
        alice.wait_sent(&still, WAIT).await.unwrap(),
        MessageStatus::Failed
    );
    next(&mut a_rx, |e| match e {
        MessengerEvent::SendFailed { message_id, .. } if message_id == still => Some(()),
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

/// The text of a stored message.
fn body_of(m: &hush_proto::app::StoredMessage) -> String {
    match m.message.as_ref().and_then(|a| a.kind.as_ref()) {
        Some(app_message::Kind::Text(t)) => t.body.clone(),
        _ => String::new(),
    }
}

/// An application text message with every field chosen by the caller (as a modified client
/// could send it).
fn crafted(id: [u8; 16], sent_at: u64, counter: u64, body: &str) -> Vec<u8> {
    use prost::Message;
    hush_proto::app::AppMessage {
        message_id: id.to_vec(),
        group: Vec::new(),
        sent_at,
        counter,
        sender_name: String::new(),
        kind: Some(app_message::Kind::Text(hush_proto::app::Text {
            body: body.to_owned(),
            reply_to: Vec::new(),
        })),
    }
    .encode_to_vec()
}

/// The next message event's text.
async fn next_text(rx: &mut UnboundedReceiver<MessengerEvent>) -> String {
    next(rx, |e| match e {
        MessengerEvent::Message { message, .. } => Some(body_of(&message)),
        _ => None,
    })
    .await
}

async fn three_accounts(
    relay: &hush_relay::Running,
    dirs: &[tempfile::TempDir; 3],
) -> Vec<(Messenger, UnboundedReceiver<MessengerEvent>)> {
    let mut out = Vec::new();
    for d in dirs {
        let m = Messenger::create_account(engine_config(d.path(), relay.addr, &relay.fingerprint))
            .await
            .unwrap();
        m.0.engine().connected(WAIT).await.unwrap();
        out.push(m);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_sent_at_and_counter_or_an_id_taken_by_another_sender_never_overwrites_history()
{
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(relay_config(relay_dir.path(), any_port()))
        .await
        .unwrap();
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let mut all = three_accounts(&relay, &dirs).await;
    let (mallory, _m_rx) = all.pop().unwrap();
    let (bob, mut b_rx) = all.pop().unwrap();
    let (alice, _a_rx) = all.pop().unwrap();
    let (a, b) = (alice.address().account, bob.address().account);

    alice
        .send_text(Conversation::Direct(b), "original", None)
        .await
        .unwrap();
    assert_eq!(next_text(&mut b_rx).await, "original");
    let first = bob.history(Conversation::Direct(a), None, 10).unwrap()[0].clone();
    let (id, sent_at, counter) = {
        let m = first.message.as_ref().unwrap();
        (id_of(&first), m.sent_at, m.counter)
    };

    // The same clock and counter under a new id: a message of its own, the original stays.
    alice
        .engine()
        .send(&b, &crafted([7; 16], sent_at, counter, "replayed clock"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut b_rx).await, "replayed clock");
    // The original id with other content: dropped.
    alice
        .engine()
        .send(&b, &crafted(id, sent_at + 5, counter + 1, "changed"))
        .await
        .unwrap();
    // Mallory takes an id before Alice uses it; Alice's message under it still arrives.
    mallory
        .engine()
        .send(&b, &crafted([8; 16], 1, 1, "squatted"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut b_rx).await, "squatted");
    alice
        .engine()
        .send(&b, &crafted([8; 16], sent_at + 10, counter + 2, "real"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut b_rx).await, "real");

    let with_alice: Vec<String> = bob
        .history(Conversation::Direct(a), None, 10)
        .unwrap()
        .iter()
        .map(body_of)
        .collect();
    assert_eq!(with_alice.len(), 3, "{with_alice:?}");
    assert!(
        with_alice.contains(&"original".to_owned()),
        "{with_alice:?}"
    );
    assert!(with_alice.contains(&"replayed clock".to_owned()));
    assert_eq!(with_alice[2], "real");
    assert!(!with_alice.contains(&"changed".to_owned()));
    let with_mallory = bob
        .history(Conversation::Direct(mallory.address().account), None, 10)
        .unwrap();
    assert_eq!(
        with_mallory.iter().map(body_of).collect::<Vec<_>>(),
        ["squatted"]
    );
    // Looking a message up by id finds it in its conversation.
    let (conv, m) = bob.message(&id).unwrap().unwrap();
    assert_eq!(conv, Conversation::Direct(a));
    assert_eq!(body_of(&m), "original");

    for m in [alice, bob, mallory] {
        m.shutdown().await;
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_from_an_account_the_message_was_not_sent_to_changes_nothing() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(relay_config(relay_dir.path(), any_port()))
        .await
        .unwrap();
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let mut all = three_accounts(&relay, &dirs).await;
    let (mallory, _m_rx) = all.pop().unwrap();
    let (bob, mut b_rx) = all.pop().unwrap();
    let (alice, mut a_rx) = all.pop().unwrap();
    let (a, b, m) = (
        alice.address().account,
        bob.address().account,
        mallory.address().account,
    );

    let id = alice
        .send_text(Conversation::Direct(b), "for bob", None)
        .await
        .unwrap();
    assert_eq!(next_text(&mut b_rx).await, "for bob");
    next(&mut a_rx, |e| match e {
        MessengerEvent::Status {
            status: MessageStatus::Delivered,
            ..
        } => Some(()),
        _ => None,
    })
    .await;

    // Mallory, who never got it, claims to have read it, then writes.
    use prost::Message;
    let receipt = hush_proto::app::AppMessage {
        message_id: vec![3; 16],
        group: Vec::new(),
        sent_at: 1,
        counter: 0,
        sender_name: String::new(),
        kind: Some(app_message::Kind::Receipt(hush_proto::app::Receipt {
            kind: hush_proto::app::receipt::Kind::Read.into(),
            message_ids: vec![id.to_vec()],
        })),
    };
    mallory
        .engine()
        .send(&a, &receipt.encode_to_vec())
        .await
        .unwrap();
    // And claims to be one of Alice's devices, handing her a contact list.
    let forged = hush_proto::app::AppMessage {
        message_id: vec![4; 16],
        group: Vec::new(),
        sent_at: 1,
        counter: 0,
        sender_name: String::new(),
        kind: Some(app_message::Kind::SyncContacts(
            hush_proto::app::SyncContacts {
                name: "mallory".into(),
                contacts: vec![hush_proto::app::SyncedContact {
                    username: "bob".into(),
                    account: m.as_bytes().to_vec(),
                }],
            },
        )),
    };
    mallory
        .engine()
        .send(&a, &forged.encode_to_vec())
        .await
        .unwrap();
    mallory
        .send_text(Conversation::Direct(a), "after the receipt", None)
        .await
        .unwrap();
    next(&mut a_rx, |e| match e {
        MessengerEvent::Status {
            status: MessageStatus::Read,
            ..
        } => panic!("read by way of mallory's receipt"),
        MessengerEvent::ContactsSynced { .. } => panic!("contacts taken from mallory"),
        MessengerEvent::Message { message, .. } => Some(body_of(&message)),
        _ => None,
    })
    .await;
    let (_, stored) = alice.message(&id).unwrap().unwrap();
    assert!(stored.read_by.is_empty(), "read by a non-recipient");
    assert_eq!(stored.delivered_to, vec![b.as_bytes().to_vec()]);
    assert_eq!(stored.recipients, vec![b.as_bytes().to_vec()]);

    for x in [alice, bob, mallory] {
        x.shutdown().await;
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_under_the_older_keys_is_moved_once_and_stays_readable_in_order() {
    use hush_core::store::kv::{Batch, KvStore, Namespace};
    use prost::Message;
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    let relay_dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(relay_config(relay_dir.path(), any_port()))
        .await
        .unwrap();
    let (ad, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, mut a_rx) =
        Messenger::create_account(engine_config(ad.path(), relay.addr, &relay.fingerprint))
            .await
            .unwrap();
    let (bob, mut b_rx) =
        Messenger::create_account(engine_config(bd.path(), relay.addr, &relay.fingerprint))
            .await
            .unwrap();
    alice.engine().connected(WAIT).await.unwrap();
    bob.engine().connected(WAIT).await.unwrap();
    let (a, b) = (alice.address().account, bob.address().account);
    for t in ["one", "two", "three"] {
        alice
            .send_text(Conversation::Direct(b), t, None)
            .await
            .unwrap();
        assert_eq!(next_text(&mut b_rx).await, t);
    }
    bob.send_text(Conversation::Direct(a), "four", None)
        .await
        .unwrap();
    // Everything settled: Bob's message and his three delivery receipts are in.
    let (mut receipts, mut got) = (0, false);
    while receipts < 3 || !got {
        next(&mut a_rx, |e| match e {
            MessengerEvent::Status {
                status: MessageStatus::Delivered,
                message_ids,
                ..
            } => {
                receipts += message_ids.len();
                Some(())
            }
            MessengerEvent::Message { .. } => {
                got = true;
                Some(())
            }
            _ => None,
        })
        .await;
    }
    let before = alice.history(Conversation::Direct(b), None, 10).unwrap();
    assert_eq!(before.len(), 4);
    alice.shutdown().await;

    // Rewrite Alice's history as the previous version stored it: conversation ‖ sent_at ‖
    // sender account ‖ sender device ‖ counter.
    {
        let mut store = hush_store_sled::SledKv::open_labelled(
            &ad.path().join("history"),
            Zeroizing::new(AT_REST_KEY),
            hush_client::messenger::HISTORY_STORE_LABEL,
            Box::new(ChaCha20Rng::from_seed([1; 32])),
        )
        .unwrap();
        let mut batch = Batch::new();
        let mut conv = vec![1u8];
        conv.extend_from_slice(b.as_bytes());
        for (k, v) in store.scan(Namespace::Messages).unwrap() {
            let m = hush_proto::app::StoredMessage::decode(v.as_slice()).unwrap();
            let a = m.message.as_ref().unwrap();
            let mut old = conv.clone();
            old.extend_from_slice(&a.sent_at.to_be_bytes());
            old.extend_from_slice(&m.sender_account);
            old.extend_from_slice(&m.sender_device.to_be_bytes());
            old.extend_from_slice(&a.counter.to_be_bytes());
            batch.delete(Namespace::Messages, k);
            batch.put(Namespace::Messages, old, Zeroizing::new(v.to_vec()));
        }
        store.commit(batch).unwrap();
    }

    let (alice, _a_rx) =
        Messenger::open(engine_config(ad.path(), relay.addr, &relay.fingerprint)).unwrap();
    let after = alice.history(Conversation::Direct(b), None, 10).unwrap();
    assert_eq!(after, before);
    let paged = alice
        .history(Conversation::Direct(b), Some(id_of(&before[2])), 10)
        .unwrap();
    assert_eq!(paged, before[..2].to_vec());
    alice.shutdown().await;
    // Moved once: nothing under the older layout is left.
    let store = hush_store_sled::SledKv::open_labelled(
        &ad.path().join("history"),
        Zeroizing::new(AT_REST_KEY),
        hush_client::messenger::HISTORY_STORE_LABEL,
        Box::new(ChaCha20Rng::from_seed([2; 32])),
    )
    .unwrap();
    let keys: Vec<Vec<u8>> = store
        .scan(Namespace::Messages)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys.len(), 4);
    assert!(keys.iter().all(|k| k[0] == 0x80 && k.len() == 86));
    drop(store);
    bob.shutdown().await;
    relay.stop().await;
}

/// Fills `victim`'s device queue (the victim is offline) until the relay refuses with
/// `QUEUE_FULL`.
async fn fill_queue(sender: &Messenger, victim: &hush_core::keys::AccountId) {
    for _ in 0..64 {
        match sender.engine().send(victim, b"filler").await {
            Ok(()) => {}
            Err(hush_client::ClientError::Refused(r))
                if r.code == hush_proto::relay_api::ErrorCode::QueueFull =>
            {
                return;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the queue never filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_message_reaches_the_other_members_when_one_member_cannot_take_it_and_says_who_missed_it()
 {
    let relay_dir = tempfile::tempdir().unwrap();
    let mut rc = relay_config(relay_dir.path(), any_port());
    rc.max_queue_len = 8;
    let relay = hush_relay::start(rc).await.unwrap();
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let mut all = three_accounts(&relay, &dirs).await;
    let (carol, mut c_rx) = all.pop().unwrap();
    let (bob, mut b_rx) = all.pop().unwrap();
    let (alice, mut a_rx) = all.pop().unwrap();
    let (b, c) = (bob.address().account, carol.address().account);
    let g = alice.engine().create_group("three", &[b, c]).await.unwrap();
    for rx in [&mut b_rx, &mut c_rx] {
        next(rx, |e| {
            matches!(e, MessengerEvent::GroupsChanged).then_some(())
        })
        .await;
    }
    // Carol goes away and her queue fills up.
    carol.shutdown().await;
    fill_queue(&alice, &c).await;

    let id = alice
        .send_text(Conversation::Group(g), "to the group", None)
        .await
        .unwrap();
    assert_eq!(next_text(&mut b_rx).await, "to the group");
    let missed = next(&mut a_rx, |e| match e {
        MessengerEvent::Undelivered {
            message_id,
            accounts,
            ..
        } if message_id == id => Some(accounts),
        _ => None,
    })
    .await;
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0].account, c);
    assert!(!missed[0].permanent && !missed[0].reason.is_empty());
    let (_, stored) = alice.message(&id).unwrap().unwrap();
    assert!(stored.sent);
    assert_eq!(stored.undelivered.len(), 1);
    assert_eq!(stored.undelivered[0].account, c.as_bytes().to_vec());
    let mut recipients = stored.recipients.clone();
    recipients.sort();
    let mut want = vec![b.as_bytes().to_vec(), c.as_bytes().to_vec()];
    want.sort();
    assert_eq!(recipients, want);

    // Carol is back and takes her queue in; sending again reaches her alone.
    let (carol, mut c_rx) = Messenger::open(engine_config(
        dirs[2].path(),
        relay.addr,
        &relay.fingerprint,
    ))
    .unwrap();
    next(&mut c_rx, |e| {
        matches!(e, MessengerEvent::CaughtUp).then_some(())
    })
    .await;
    alice.retry(&id).await.unwrap();
    assert_eq!(next_text(&mut c_rx).await, "to the group");
    next(&mut a_rx, |e| match e {
        MessengerEvent::Undelivered {
            message_id,
            accounts,
            ..
        } if message_id == id && accounts.is_empty() => Some(()),
        _ => None,
    })
    .await;
    assert!(
        alice
            .message(&id)
            .unwrap()
            .unwrap()
            .1
            .undelivered
            .is_empty()
    );
    // Bob got it once.
    assert_eq!(
        bob.history(Conversation::Group(g), None, 10).unwrap().len(),
        1
    );
    for m in [alice, bob, carol] {
        m.shutdown().await;
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_message_that_must_wait_holds_back_only_its_own_conversation() {
    let relay_dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = free_port();
    let with_addr = |dir: &Path| {
        let mut rc = relay_config(dir, addr);
        rc.max_queue_len = 8;
        rc
    };
    let relay = hush_relay::start(with_addr(relay_dir.path()))
        .await
        .unwrap();
    let pin = relay.fingerprint.clone();
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let mut all = three_accounts(&relay, &dirs).await;
    let (carol, _c_rx) = all.pop().unwrap();
    let (bob, mut b_rx) = all.pop().unwrap();
    let (alice, _a_rx) = all.pop().unwrap();
    let (b, c) = (bob.address().account, carol.address().account);
    carol.shutdown().await;
    fill_queue(&alice, &c).await;

    // Offline, Alice writes to Carol first, then to Bob.
    relay.stop().await;
    for (to, text) in [(c, "to carol"), (b, "to bob")] {
        let id = alice
            .send_text(Conversation::Direct(to), text, None)
            .await
            .unwrap();
        assert_eq!(
            alice
                .wait_sent(&id, Duration::from_millis(300))
                .await
                .unwrap(),
            MessageStatus::Waiting,
            "sent although the relay was down"
        );
    }
    alice.shutdown().await;

    // Back online: Carol's queue is still full, so her message waits; Bob's goes.
    let relay = hush_relay::start(with_addr(relay_dir.path()))
        .await
        .unwrap();
    let (alice, _a_rx) = Messenger::open(engine_config(dirs[0].path(), addr, &pin)).unwrap();
    assert_eq!(next_text(&mut b_rx).await, "to bob");
    let waiting = alice.history(Conversation::Direct(c), None, 10).unwrap();
    assert_eq!(waiting.len(), 1);
    assert!(!waiting[0].sent && waiting[0].failed.is_empty());
    alice.shutdown().await;
    bob.shutdown().await;
    relay.stop().await;
}

/// A message read while the relay was away, in an app closed before it came back: the read
/// receipt is stored as owed with the read state, and goes out when the app starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_receipt_owed_when_the_app_closed_is_sent_after_it_starts_again() {
    let relay_dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = free_port();
    let relay = hush_relay::start(relay_config(relay_dir.path(), addr))
        .await
        .unwrap();
    let pin = relay.fingerprint.clone();
    let (ad, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, mut a_rx) = Messenger::create_account(engine_config(ad.path(), addr, &pin))
        .await
        .unwrap();
    let (bob, mut b_rx) = Messenger::create_account(engine_config(bd.path(), addr, &pin))
        .await
        .unwrap();
    alice.engine().connected(WAIT).await.unwrap();
    bob.engine().connected(WAIT).await.unwrap();
    let (a, b) = (alice.address().account, bob.address().account);
    let id = alice
        .send_text(Conversation::Direct(b), "read me later", None)
        .await
        .unwrap();
    next(&mut b_rx, |e| match e {
        MessengerEvent::Message { .. } => Some(()),
        _ => None,
    })
    .await;
    next(&mut a_rx, |e| match e {
        MessengerEvent::Status {
            status: MessageStatus::Delivered,
            ..
        } => Some(()),
        _ => None,
    })
    .await;

    // The relay goes away; Bob reads the message, and his app is closed.
    relay.stop().await;
    next(&mut b_rx, |e| match e {
        MessengerEvent::Connection(false) => Some(()),
        _ => None,
    })
    .await;
    bob.mark_read(Conversation::Direct(a)).await.unwrap();
    let owed = bob.history(Conversation::Direct(a), None, 10).unwrap();
    assert!(owed.iter().any(|m| m.read && m.read_untold));
    bob.shutdown().await;

    // The relay is back and Bob's app starts again: Alice learns her message was read.
    let relay = hush_relay::start(relay_config(relay_dir.path(), addr))
        .await
        .unwrap();
    let (bob, _b_rx) = Messenger::open(engine_config(bd.path(), addr, &pin)).unwrap();
    next(&mut a_rx, |e| match e {
        MessengerEvent::Status {
            message_ids,
            status: MessageStatus::Read,
            ..
        } if message_ids.contains(&id) => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(
        status_of(&alice.message(&id).unwrap().unwrap().1),
        Some(MessageStatus::Read)
    );
    bob.shutdown().await;
    alice.shutdown().await;
    relay.stop().await;
}
