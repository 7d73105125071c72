//! End to end, the whole product at once: three accounts with two devices each, over a real relay
//! on 127.0.0.1. The second devices are linked after a group exists (and learn it from their
//! siblings); 1:1 and group chat reach every device of every member, with delivered and read
//! receipts; typing reaches connected devices and is never queued for offline ones; presence can
//! be switched off; a 5 MiB attachment goes through the group; own messages show on the other
//! device; contacts are warned of new devices; a device offline for 1000 messages catches up in
//! order; the relay drains and restarts in the middle of a conversation, and nothing is lost or
//! duplicated.
#![cfg(test)]
#![allow(clippy::disallowed_methods, clippy::too_many_lines)]

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use hush_client::messenger::{MessageStatus, status_of};
use hush_client::{Conversation, Messenger, MessengerEvent};
use hush_core::keys::AccountId;
use hush_proto::app::{StoredMessage, app_message};
use tokio::sync::mpsc::UnboundedReceiver;

const WAIT: Duration = Duration::from_secs(60);

type Rx = UnboundedReceiver<MessengerEvent>;

/// The next event that `pick` accepts; the events skipped on the way are returned too.
async fn next_with_skipped<T>(
    rx: &mut Rx,
    mut pick: impl FnMut(&MessengerEvent) -> Option<T>,
) -> (T, Vec<MessengerEvent>) {
    let mut skipped = Vec::new();
    loop {
        let ev = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("nothing in time")
            .expect("messenger gone");
        if let Some(t) = pick(&ev) {
            return (t, skipped);
        }
        skipped.push(ev);
    }
}

async fn next<T>(rx: &mut Rx, pick: impl FnMut(&MessengerEvent) -> Option<T>) -> T {
    next_with_skipped(rx, pick).await.0
}

fn text_of(m: &StoredMessage) -> Option<String> {
    match m.message.as_ref()?.kind.as_ref()? {
        app_message::Kind::Text(t) => Some(t.body.clone()),
        _ => None,
    }
}

/// The next text message (incoming or synced) with its conversation.
async fn next_text(rx: &mut Rx) -> (Conversation, String, StoredMessage) {
    next(rx, |e| match e {
        MessengerEvent::Message {
            conversation,
            message,
        } => text_of(message).map(|t| (*conversation, t, (**message).clone())),
        _ => None,
    })
    .await
}

/// The next message with text `want` (other messages are skipped).
async fn until_text(rx: &mut Rx, want: &str) -> (Conversation, StoredMessage) {
    loop {
        let (conv, text, m) = next_text(rx).await;
        if text == want {
            return (conv, m);
        }
    }
}

/// Texts of a conversation's history, in its order.
fn texts(m: &Messenger, conv: Conversation) -> Vec<String> {
    m.history(conv, None, 10_000)
        .unwrap()
        .iter()
        .filter_map(text_of)
        .collect()
}

struct Person {
    one: Messenger,
    one_rx: Rx,
    two: Option<Messenger>,
    two_rx: Option<Rx>,
}

impl Person {
    fn id(&self) -> AccountId {
        self.one.address().account
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_accounts_with_two_devices_each_chat_in_groups_and_one_to_one() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(relay_config(relay_dir.path(), any_port()))
        .await
        .unwrap();
    let (addr, pin) = (relay.addr, relay.fingerprint.clone());
    let dirs: Vec<tempfile::TempDir> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut people = Vec::new();
    for i in 0..3 {
        let (one, one_rx) =
            Messenger::create_account(engine_config(dirs[2 * i].path(), addr, &pin))
                .await
                .unwrap();
        one.engine().connected(WAIT).await.unwrap();
        people.push(Person {
            one,
            one_rx,
            two: None,
            two_rx: None,
        });
    }
    let [mut alice, mut bob, mut carol]: [Person; 3] = people.try_into().ok().unwrap();
    let (a, b, c) = (alice.id(), bob.id(), carol.id());

    // Alice creates a group with Bob and Carol, and they exchange a first 1:1 message, before
    // anyone has a second device.
    let g = alice
        .one
        .engine()
        .create_group("team", &[b, c])
        .await
        .unwrap();
    let group = Conversation::Group(g);
    for p in [&mut bob, &mut carol] {
        next(&mut p.one_rx, |e| {
            matches!(e, MessengerEvent::GroupsChanged).then_some(())
        })
        .await;
        assert_eq!(p.one.engine().groups().unwrap(), vec![(g, "team".into())]);
    }
    // And a second group, Alice and Bob only: a linked device learns every group of its account.
    let g2 = alice.one.engine().create_group("pair", &[b]).await.unwrap();
    next(&mut bob.one_rx, |e| {
        matches!(e, MessengerEvent::GroupsChanged).then_some(())
    })
    .await;
    bob.one
        .send_text(Conversation::Direct(a), "hello alice", None)
        .await
        .unwrap();
    until_text(&mut alice.one_rx, "hello alice").await;

    // Each links a second device. It learns the account's groups from its sibling.
    for (i, p) in [&mut alice, &mut bob, &mut carol].into_iter().enumerate() {
        let offer = p.one.engine().offer_link().unwrap();
        p.one.engine().open_link(&offer).await.unwrap();
        let (two, mut two_rx) = Messenger::link(
            engine_config(dirs[2 * i + 1].path(), addr, &pin),
            &offer.code,
        )
        .await
        .unwrap();
        p.one.engine().complete_link(&offer, WAIT).await.unwrap();
        two.engine().connected(WAIT).await.unwrap();
        let mut want = vec![(g.0, "team".to_owned())];
        if i < 2 {
            want.push((g2.0, "pair".to_owned()));
        }
        want.sort();
        loop {
            next(&mut two_rx, |e| {
                matches!(e, MessengerEvent::GroupsChanged).then_some(())
            })
            .await;
            let mut have: Vec<_> = two
                .engine()
                .groups()
                .unwrap()
                .into_iter()
                .map(|(id, name)| (id.0, name))
                .collect();
            have.sort();
            if have == want {
                break;
            }
        }
        p.two = Some(two);
        p.two_rx = Some(two_rx);
    }

    // Bob, who knew Alice's devices before she linked, is warned of her new device when he
    // next writes to her; the message reaches both of her devices.
    bob.one
        .send_text(Conversation::Direct(a), "still there?", None)
        .await
        .unwrap();
    let added = next(&mut bob.one_rx, |e| match e {
        MessengerEvent::DevicesChanged { account, added, .. } if *account == a => {
            Some(added.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(added, vec![alice.two.as_ref().unwrap().address().device_id]);
    for rx in [&mut alice.one_rx, alice.two_rx.as_mut().unwrap()] {
        until_text(rx, "still there?").await;
    }

    // A group message from Alice's first device reaches all five other devices; Bob's and
    // Carol's devices confirm delivery; Bob reads it on his second device.
    let hi = alice
        .one
        .send_text(group, "hello team", None)
        .await
        .unwrap();
    for rx in [
        alice.two_rx.as_mut().unwrap(),
        &mut bob.one_rx,
        bob.two_rx.as_mut().unwrap(),
        &mut carol.one_rx,
        carol.two_rx.as_mut().unwrap(),
    ] {
        assert_eq!(until_text(rx, "hello team").await.0, group);
    }
    // Status, not receipts: "delivered" once both member accounts have it (each with two
    // devices confirming), "read" once both read it; never twice, never backwards.
    let status = |want: MessageStatus| {
        move |e: &MessengerEvent| match e {
            MessengerEvent::Status {
                message_ids,
                status,
                ..
            } if message_ids == &vec![hi] => {
                assert!(*status <= want, "{status:?} before {want:?}");
                (*status == want).then_some(())
            }
            _ => None,
        }
    };
    next(&mut alice.one_rx, status(MessageStatus::Delivered)).await;
    bob.two.as_ref().unwrap().mark_read(group).await.unwrap();
    bob.one.mark_read(group).await.unwrap();
    carol.one.mark_read(group).await.unwrap();
    next(&mut alice.one_rx, status(MessageStatus::Read)).await;
    let stored = alice.one.history(group, None, 10).unwrap();
    let mine = stored.iter().find(|m| text_of(m).is_some()).unwrap();
    assert!(mine.sent && mine.outgoing);
    assert!(mine.read_by.contains(&b.as_bytes().to_vec()));
    assert!(mine.read_by.contains(&c.as_bytes().to_vec()));
    assert_eq!(status_of(mine), Some(MessageStatus::Read));

    // The linked devices write to the group too: their sender keys reach everyone.
    bob.two
        .as_ref()
        .unwrap()
        .send_text(group, "from bob's second device", None)
        .await
        .unwrap();
    carol
        .two
        .as_ref()
        .unwrap()
        .send_text(group, "from carol's second device", None)
        .await
        .unwrap();
    for rx in [
        &mut alice.one_rx,
        alice.two_rx.as_mut().unwrap(),
        &mut carol.one_rx,
    ] {
        let mut want = vec!["from bob's second device", "from carol's second device"];
        while !want.is_empty() {
            let (conv, text, _) = next_text(rx).await;
            if want.contains(&text.as_str()) {
                assert_eq!(conv, group);
                want.retain(|w| *w != text);
            }
        }
    }
    until_text(&mut bob.one_rx, "from bob's second device").await;

    // 1:1 from Alice's second device to Carol: both of Carol's devices, and Alice's first
    // device shows it as sent by her.
    alice
        .two
        .as_ref()
        .unwrap()
        .send_text(Conversation::Direct(c), "just for carol", None)
        .await
        .unwrap();
    for rx in [&mut carol.one_rx, carol.two_rx.as_mut().unwrap()] {
        let (conv, m) = until_text(rx, "just for carol").await;
        assert_eq!((conv, m.outgoing), (Conversation::Direct(a), false));
    }
    let (conv, m) = until_text(&mut alice.one_rx, "just for carol").await;
    assert_eq!((conv, m.outgoing), (Conversation::Direct(c), true));

    // Typing reaches connected devices only: Carol's second device is offline while Alice
    // types, and after it comes back the next message arrives with no typing before it.
    carol.two.take().unwrap().shutdown().await;
    carol.two_rx = None;
    alice.one.typing(group, true).await.unwrap();
    let (who, typing) = next(&mut carol.one_rx, |e| match e {
        MessengerEvent::Typing {
            from,
            typing,
            conversation,
        } if *conversation == group => Some((from.account, *typing)),
        _ => None,
    })
    .await;
    assert_eq!((who, typing), (a, true));
    alice
        .one
        .send_text(group, "after typing", None)
        .await
        .unwrap();
    let (c2, mut c2_rx) = Messenger::open(engine_config(dirs[5].path(), addr, &pin)).unwrap();
    let ((_, text, _), skipped) = next_with_skipped(&mut c2_rx, |e| match e {
        MessengerEvent::Message {
            conversation,
            message,
        } => text_of(message).map(|t| (*conversation, t, ())),
        _ => None,
    })
    .await;
    assert_eq!(text, "after typing");
    assert!(
        !skipped
            .iter()
            .any(|e| matches!(e, MessengerEvent::Typing { .. })),
        "a typing indicator was queued for an offline device"
    );
    carol.two = Some(c2);
    carol.two_rx = Some(c2_rx);

    // Presence: shown while on; once Alice switches it off, she sees nobody's.
    carol.one.set_presence(true, &[a]).await.unwrap();
    let (who, online) = next(&mut alice.one_rx, |e| match e {
        MessengerEvent::Presence { from, online, .. } => Some((*from, *online)),
        _ => None,
    })
    .await;
    assert_eq!((who, online), (c, true));
    alice.one.set_presence(false, &[c]).await.unwrap();
    let offline = next(&mut carol.one_rx, |e| match e {
        MessengerEvent::Presence { from, online, .. } => Some((*from, *online)),
        _ => None,
    })
    .await;
    assert_eq!(offline, (a, false));
    carol.one.set_presence(true, &[a]).await.unwrap();
    carol
        .one
        .send_text(Conversation::Direct(a), "presence sent before this", None)
        .await
        .unwrap();
    let (_, skipped) = next_with_skipped(&mut alice.one_rx, |e| match e {
        MessengerEvent::Message { message, .. } if !message.outgoing => text_of(message),
        _ => None,
    })
    .await;
    assert!(
        !skipped
            .iter()
            .any(|e| matches!(e, MessengerEvent::Presence { .. })),
        "presence shown although switched off"
    );

    // A 5 MiB attachment through the group, downloaded and checked on a linked device.
    let photo: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    bob.one
        .send_attachment(group, "photo.jpg", "image/jpeg", &photo)
        .await
        .unwrap();
    let att = next(carol.two_rx.as_mut().unwrap(), |e| match e {
        MessengerEvent::Message { message, .. } => match message.message.as_ref()?.kind.as_ref()? {
            app_message::Kind::Attachment(a) => Some(a.clone()),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(att.size, photo.len() as u64);
    assert_eq!(
        carol
            .two
            .as_ref()
            .unwrap()
            .download(&att)
            .await
            .unwrap()
            .as_slice(),
        &photo[..]
    );

    // Bob's second device is offline for 1000 messages from Alice, then catches up in order.
    bob.two.take().unwrap().shutdown().await;
    bob.two_rx = None;
    for i in 0..1000 {
        alice
            .one
            .send_text(Conversation::Direct(b), &format!("n{i:04}"), None)
            .await
            .unwrap();
    }
    let (b2, mut b2_rx) = Messenger::open(engine_config(dirs[3].path(), addr, &pin)).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 1000 {
        let (conv, text, _) = next_text(&mut b2_rx).await;
        if text.starts_with('n') {
            assert_eq!(conv, Conversation::Direct(a));
            seen.push(text);
        }
    }
    assert_eq!(
        seen,
        (0..1000).map(|i| format!("n{i:04}")).collect::<Vec<_>>()
    );
    bob.two = Some(b2);
    bob.two_rx = Some(b2_rx);

    // Mid-conversation, the relay drains (every client is told to reconnect), stops and starts
    // again on the same address and data. Carol keeps writing to the group throughout; every
    // message reaches every device once, in her order.
    let writer = Arc::new(carol.one);
    let sender = {
        let w = Arc::clone(&writer);
        tokio::spawn(async move {
            for i in 0..40 {
                // A send caught by the restart fails after its retries, or not; either way the
                // message is stored, and the outbox sends it once the relay is back.
                let _ = w.send_text(group, &format!("r{i:02}"), None).await;
            }
        })
    };
    let mut first = Vec::new();
    while first.len() < 10 {
        let (_, text, _) = next_text(&mut alice.one_rx).await;
        if text.starts_with('r') {
            first.push(text);
        }
    }
    relay.stop().await;
    let relay = hush_relay::start(relay_config(relay_dir.path(), addr))
        .await
        .unwrap();
    sender.await.unwrap();
    let expected: Vec<String> = (0..40).map(|i| format!("r{i:02}")).collect();
    let Ok(writer) = Arc::try_unwrap(writer) else {
        panic!("writer still shared")
    };
    carol.one = writer;
    for (name, m, rx) in [
        ("alice 1", &alice.one, &mut alice.one_rx),
        (
            "alice 2",
            alice.two.as_ref().unwrap(),
            alice.two_rx.as_mut().unwrap(),
        ),
        ("bob 1", &bob.one, &mut bob.one_rx),
        (
            "bob 2",
            bob.two.as_ref().unwrap(),
            bob.two_rx.as_mut().unwrap(),
        ),
        (
            "carol 2",
            carol.two.as_ref().unwrap(),
            carol.two_rx.as_mut().unwrap(),
        ),
    ] {
        let have = |m: &Messenger| {
            texts(m, group)
                .into_iter()
                .filter(|t| t.starts_with('r'))
                .collect::<Vec<_>>()
        };
        while have(m).len() < 40 {
            next_text(rx).await;
        }
        assert_eq!(
            have(m),
            expected,
            "{name}: lost, duplicated or out of order"
        );
    }
    // Carol's own view: every message sent (her outbox marks each once the relay's answer is
    // in, which may come after the others got it).
    let mine = carol.one.history(group, None, 10_000).unwrap();
    for m in mine
        .iter()
        .filter(|m| text_of(m).is_some_and(|t| t.starts_with('r')))
    {
        let id: [u8; 16] = m
            .message
            .as_ref()
            .unwrap()
            .message_id
            .as_slice()
            .try_into()
            .unwrap();
        assert!(carol.one.wait_sent(&id, WAIT).await.unwrap() >= MessageStatus::Sent);
    }
    // And the conversation goes on after the restart.
    bob.one.send_text(group, "back again", None).await.unwrap();
    loop {
        if next_text(&mut carol.one_rx).await.1 == "back again" {
            break;
        }
    }

    for p in [alice, bob, carol] {
        p.one.shutdown().await;
        if let Some(two) = p.two {
            two.shutdown().await;
        }
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_device_learns_a_group_whose_creator_device_has_left() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(relay_config(relay_dir.path(), any_port()))
        .await
        .unwrap();
    let (addr, pin) = (relay.addr, relay.fingerprint.clone());
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (alice, mut a_rx) = Messenger::create_account(engine_config(dirs[0].path(), addr, &pin))
        .await
        .unwrap();
    let (bob, mut b_rx) = Messenger::create_account(engine_config(dirs[1].path(), addr, &pin))
        .await
        .unwrap();
    for m in [&alice, &bob] {
        m.engine().connected(WAIT).await.unwrap();
    }
    let b = bob.address().account;
    let offer = alice.engine().offer_link().unwrap();
    alice.engine().open_link(&offer).await.unwrap();
    let (alice2, _a2_rx) = Messenger::link(engine_config(dirs[2].path(), addr, &pin), &offer.code)
        .await
        .unwrap();
    let a2 = alice.engine().complete_link(&offer, WAIT).await.unwrap();
    alice2.engine().connected(WAIT).await.unwrap();

    // Alice's second device creates the group; then she removes that device.
    let g = alice2
        .engine()
        .create_group("book club", &[b])
        .await
        .unwrap();
    for rx in [&mut a_rx, &mut b_rx] {
        next(rx, |e| {
            matches!(e, MessengerEvent::GroupsChanged).then_some(())
        })
        .await;
    }
    alice.engine().remove_device(a2).await.unwrap();
    alice2.shutdown().await;

    // Bob links a second device. The log it gets from Bob's first device starts with a change
    // whose author device is no longer on Alice's list: Bob's own device vouches for it.
    let offer = bob.engine().offer_link().unwrap();
    bob.engine().open_link(&offer).await.unwrap();
    let (bob2, mut b2_rx) = Messenger::link(engine_config(dirs[3].path(), addr, &pin), &offer.code)
        .await
        .unwrap();
    bob.engine().complete_link(&offer, WAIT).await.unwrap();
    next(&mut b2_rx, |e| {
        matches!(e, MessengerEvent::GroupsChanged).then_some(())
    })
    .await;
    assert_eq!(
        bob2.engine().groups().unwrap(),
        vec![(g, "book club".into())]
    );
    alice
        .send_text(Conversation::Group(g), "hello both bobs", None)
        .await
        .unwrap();
    for rx in [&mut b_rx, &mut b2_rx] {
        let (conv, _) = until_text(rx, "hello both bobs").await;
        assert_eq!(conv, Conversation::Group(g));
    }
    bob2.send_text(Conversation::Group(g), "hi from the new one", None)
        .await
        .unwrap();
    until_text(&mut a_rx, "hi from the new one").await;
    for m in [alice, bob, bob2] {
        m.shutdown().await;
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_send_goes_on_when_a_member_removed_a_device_the_sender_still_lists() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(relay_config(relay_dir.path(), any_port()))
        .await
        .unwrap();
    let (addr, pin) = (relay.addr, relay.fingerprint.clone());
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (alice, mut a_rx) = Messenger::create_account(engine_config(dirs[0].path(), addr, &pin))
        .await
        .unwrap();
    let (bob, mut b_rx) = Messenger::create_account(engine_config(dirs[1].path(), addr, &pin))
        .await
        .unwrap();
    for m in [&alice, &bob] {
        m.engine().connected(WAIT).await.unwrap();
    }
    let (a, b) = (alice.address().account, bob.address().account);
    let g = alice.engine().create_group("two", &[b]).await.unwrap();
    let group = Conversation::Group(g);
    alice.send_text(group, "first", None).await.unwrap();
    until_text(&mut b_rx, "first").await;

    // Bob links a second device, which writes to Alice: she now lists it.
    let offer = bob.engine().offer_link().unwrap();
    bob.engine().open_link(&offer).await.unwrap();
    let (bob2, _b2_rx) = Messenger::link(engine_config(dirs[2].path(), addr, &pin), &offer.code)
        .await
        .unwrap();
    let b2 = bob.engine().complete_link(&offer, WAIT).await.unwrap();
    bob2.engine().connected(WAIT).await.unwrap();
    bob2.send_text(Conversation::Direct(a), "new device here", None)
        .await
        .unwrap();
    until_text(&mut a_rx, "new device here").await;
    assert!(alice.engine().devices_of(&b).unwrap().contains(&b2));

    // Bob removes it again before Alice's next group message, which would give it her sender
    // key: the relay refuses the envelope for the unlisted device, and the send goes on.
    bob.engine().remove_device(b2).await.unwrap();
    bob2.shutdown().await;
    let second = alice.send_text(group, "second", None).await.unwrap();
    // On the relay; the recipient is online, so its delivery receipt may come first.
    assert!(matches!(
        alice.wait_sent(&second, WAIT).await.unwrap(),
        MessageStatus::Sent | MessageStatus::Delivered
    ));
    until_text(&mut b_rx, "second").await;
    assert!(!alice.engine().devices_of(&b).unwrap().contains(&b2));
    for m in [alice, bob] {
        m.shutdown().await;
    }
    relay.stop().await;
}

use hush_core::sealed::is_bucket;

/// The frames in bytes a tap saw: each a u32 length and a `ServerFrame` (or, on blob streams,
/// a `BlobResponse` without the length).
fn server_frames(chunks: &[Vec<u8>]) -> Vec<hush_proto::relay_api::ServerFrame> {
    use prost::Message;
    let mut out = Vec::new();
    for chunk in chunks {
        let mut rest = chunk.as_slice();
        while rest.len() >= 4 {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let Some(frame) = rest.get(4..4 + len) else {
                break;
            };
            if let Ok(f) = hush_proto::relay_api::ServerFrame::decode(frame) {
                out.push(f);
            }
            rest = &rest[4 + len..];
        }
    }
    out
}

/// What the relay learns (THREAT_MODEL.md §4): once three people know each other (each holds
/// the others' delivery keys), 1:1 and group messages, a read receipt, typing and a message
/// queued for an offline device leave no sender account, device address or identity key, and no
/// group id, in any frame the relay writes or in the envelopes it stores; every envelope body on
/// the wire and in the store has a bucket size; and the group id is nowhere in the relay's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_learns_no_sender_and_no_group() {
    use hush_proto::relay_api::server_frame;
    use hush_proto::wire::{DeviceList, SignedDeviceList};
    use prost::Message;

    let relay_dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(relay_config(relay_dir.path(), any_port()))
        .await
        .unwrap();
    let (addr, pin) = (relay.addr, relay.fingerprint.clone());
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut people = Vec::new();
    for d in &dirs {
        let (m, rx) = Messenger::create_account(engine_config(d.path(), addr, &pin))
            .await
            .unwrap();
        m.engine().connected(WAIT).await.unwrap();
        people.push((m, rx));
    }
    let [(alice, mut a_rx), (bob, mut b_rx), (carol, mut c_rx)]: [(Messenger, Rx); 3] =
        people.try_into().ok().unwrap();
    let (a, b, c) = (
        alice.address().account,
        bob.address().account,
        carol.address().account,
    );

    // They get to know each other: every pair exchanges a message (the first of each is an
    // introduction; the answer carries the delivery key), and Alice makes a group of the three.
    for (from, to, text) in [
        (0, 1, "hi bob"),
        (1, 0, "hi alice"),
        (0, 2, "hi carol"),
        (2, 0, "hi alice, carol here"),
        (1, 2, "bob to carol"),
        (2, 1, "carol to bob"),
    ] {
        [&alice, &bob, &carol][from]
            .send_text(Conversation::Direct([a, b, c][to]), text, None)
            .await
            .unwrap();
        let to_rx = match to {
            0 => &mut a_rx,
            1 => &mut b_rx,
            _ => &mut c_rx,
        };
        until_text(to_rx, text).await;
    }
    let g = alice
        .engine()
        .create_group("private", &[b, c])
        .await
        .unwrap();
    for rx in [&mut b_rx, &mut c_rx] {
        next(rx, |e| {
            matches!(e, MessengerEvent::GroupsChanged).then_some(())
        })
        .await;
    }

    // From here on, every frame the relay writes is kept, and every send to another account
    // goes sealed with delivery tokens (no introduction).
    let introductions = relay.metrics.introductions.get();
    let sealed = relay.metrics.sealed_sends.get();
    assert!(introductions >= 3, "the first messages were introductions");
    let seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
    let tap = Arc::clone(&seen);
    relay.tap_frames(Some(Arc::new(move |bytes: &[u8]| {
        tap.lock().unwrap().push(bytes.to_vec());
    })));
    alice
        .send_text(Conversation::Direct(b), "a sealed 1:1 message", None)
        .await
        .unwrap();
    until_text(&mut b_rx, "a sealed 1:1 message").await;
    alice
        .send_text(Conversation::Group(g), "a sealed group message", None)
        .await
        .unwrap();
    until_text(&mut b_rx, "a sealed group message").await;
    until_text(&mut c_rx, "a sealed group message").await;
    carol
        .send_text(Conversation::Group(g), "carol to the group", None)
        .await
        .unwrap();
    until_text(&mut a_rx, "carol to the group").await;
    until_text(&mut b_rx, "carol to the group").await;
    // Bob reads: Alice's 1:1 message turns read.
    bob.mark_read(Conversation::Direct(a)).await.unwrap();
    next(&mut a_rx, |e| {
        matches!(
            e,
            MessengerEvent::Status {
                status: MessageStatus::Read,
                conversation: Conversation::Direct(_),
                ..
            }
        )
        .then_some(())
    })
    .await;
    bob.typing(Conversation::Direct(a), true).await.unwrap();
    next(&mut a_rx, |e| {
        matches!(e, MessengerEvent::Typing { typing: true, .. }).then_some(())
    })
    .await;
    // Carol goes offline; what Alice sends her waits in the relay's store.
    let carol_device = carol.address();
    carol.shutdown().await;
    let id = alice
        .send_text(Conversation::Direct(c), "queued for carol", None)
        .await
        .unwrap();
    assert_eq!(
        alice.wait_sent(&id, WAIT).await.unwrap(),
        MessageStatus::Sent
    );
    relay.tap_frames(None);
    assert_eq!(relay.metrics.introductions.get(), introductions);
    assert!(relay.metrics.sealed_sends.get() >= sealed + 7);
    assert!(relay.metrics.anonymous_connections.get() >= 3);
    let queued = relay
        .store
        .fetch(
            &hush_relay::store::DeviceId {
                account: *carol_device.account.as_bytes(),
                device: carol_device.device_id,
            },
            0,
            1000,
        )
        .unwrap();
    assert!(!queued.is_empty(), "nothing queued for carol");

    // What must not be there: each account id, each device address (account ‖ device id), each
    // device's identity keys (from the lists the relay serves), and the group id.
    let mut needles: Vec<(String, Vec<u8>)> = vec![("group id".into(), g.0.to_vec())];
    for (name, address) in [
        ("alice", alice.address()),
        ("bob", bob.address()),
        ("carol", carol_device),
    ] {
        let account = *address.account.as_bytes();
        needles.push((format!("{name}'s account"), account.to_vec()));
        let mut at = account.to_vec();
        at.extend_from_slice(&address.device_id.to_be_bytes());
        needles.push((format!("{name}'s device address"), at));
        let (_, signed) = relay.store.device_list(&account).unwrap().unwrap();
        let list = DeviceList::decode(
            SignedDeviceList::decode(signed.as_slice())
                .unwrap()
                .device_list
                .as_slice(),
        )
        .unwrap();
        for d in list.devices {
            let id = d.identity.unwrap();
            needles.push((format!("{name}'s identity signing key"), id.signing_key));
            needles.push((format!("{name}'s identity DH key"), id.dh_key));
        }
    }
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);

    let chunks = seen.lock().unwrap().clone();
    let frames = server_frames(&chunks);
    let mut bodies = 0;
    for f in &frames {
        match &f.kind {
            Some(server_frame::Kind::Deliver(d)) => {
                assert!(
                    is_bucket(d.body.len()),
                    "a delivered body of {} bytes",
                    d.body.len()
                );
                bodies += 1;
            }
            Some(server_frame::Kind::Ephemeral(e)) => {
                assert!(
                    is_bucket(e.body.len()),
                    "an ephemeral body of {} bytes",
                    e.body.len()
                );
                bodies += 1;
            }
            _ => {}
        }
    }
    // 1:1, its sync to nobody (one device each), the group message to two, the sender key
    // distributions, carol's group message, the receipt, typing: at least 7.
    assert!(bodies >= 7, "only {bodies} envelopes seen");
    for (what, needle) in &needles {
        for chunk in &chunks {
            assert!(
                !contains(chunk, needle),
                "{what} in a frame the relay wrote"
            );
        }
        for q in &queued {
            let e = &q.envelope;
            for part in [&e.share.key()[..], &e.client_id[..], &e.body[..]] {
                assert!(!contains(part, needle), "{what} in a stored envelope");
            }
        }
    }
    for q in &queued {
        assert!(is_bucket(q.envelope.body.len()));
    }
    alice.shutdown().await;
    bob.shutdown().await;
    relay.stop().await;
    assert!(
        !hush_testkit::dir_contains(relay_dir.path(), &g.0),
        "the group id is in the relay's data"
    );
}

/// A refused delivery token never turns into an introduction (the relay could otherwise unmask
/// any sender by refusing tokens): after Bob rotates his delivery key, Alice's message with the
/// old token fails for good and the relay saw no introduction from her; once Bob writes to her
/// (bringing the new key), her messages go sealed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_fails_the_send_instead_of_unmasking_the_sender() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(relay_config(relay_dir.path(), any_port()))
        .await
        .unwrap();
    let (addr, pin) = (relay.addr, relay.fingerprint.clone());
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (alice, mut a_rx) = Messenger::create_account(engine_config(dirs[0].path(), addr, &pin))
        .await
        .unwrap();
    let (bob, mut b_rx) = Messenger::create_account(engine_config(dirs[1].path(), addr, &pin))
        .await
        .unwrap();
    for m in [&alice, &bob] {
        m.engine().connected(WAIT).await.unwrap();
    }
    let (a, b) = (alice.address().account, bob.address().account);
    alice
        .send_text(Conversation::Direct(b), "hi bob", None)
        .await
        .unwrap();
    until_text(&mut b_rx, "hi bob").await;
    bob.send_text(Conversation::Direct(a), "hi alice", None)
        .await
        .unwrap();
    until_text(&mut a_rx, "hi alice").await;
    let sealed = relay.metrics.sealed_sends.get();
    let sent = alice
        .send_text(Conversation::Direct(b), "sealed", None)
        .await
        .unwrap();
    // On the relay; the recipient is online, so its delivery receipt may come first.
    assert!(matches!(
        alice.wait_sent(&sent, WAIT).await.unwrap(),
        MessageStatus::Sent | MessageStatus::Delivered
    ));
    until_text(&mut b_rx, "sealed").await;
    assert!(relay.metrics.sealed_sends.get() > sealed, "not sent sealed");
    // Bob's delivery receipt has reached Alice: nothing from him is on its way with a key.
    next(&mut a_rx, |e| {
        matches!(
            e,
            MessengerEvent::Status {
                status: MessageStatus::Delivered,
                message_ids,
                ..
            } if message_ids.contains(&sent)
        )
        .then_some(())
    })
    .await;

    // Bob rotates his key: Alice's old token is refused, and nothing is sent in the clear.
    bob.engine().rotate_delivery_key().await.unwrap();
    let introductions = relay.metrics.introductions.get();
    let refused = alice
        .send_text(Conversation::Direct(b), "with the old token", None)
        .await
        .unwrap();
    assert_eq!(
        alice.wait_sent(&refused, WAIT).await.unwrap(),
        MessageStatus::Failed
    );
    assert!(relay.metrics.unauthorized_sends.get() >= 1);
    assert_eq!(relay.metrics.introductions.get(), introductions);

    // Bob writes to her: his envelope carries the new key, and her next message goes sealed.
    bob.send_text(Conversation::Direct(a), "still here", None)
        .await
        .unwrap();
    until_text(&mut a_rx, "still here").await;
    let sealed = relay.metrics.sealed_sends.get();
    let again = alice
        .send_text(Conversation::Direct(b), "with the new token", None)
        .await
        .unwrap();
    // On the relay; the recipient is online, so its delivery receipt may come first.
    assert!(matches!(
        alice.wait_sent(&again, WAIT).await.unwrap(),
        MessageStatus::Sent | MessageStatus::Delivered
    ));
    until_text(&mut b_rx, "with the new token").await;
    assert!(relay.metrics.sealed_sends.get() > sealed);
    assert_eq!(relay.metrics.introductions.get(), introductions);
    for m in [alice, bob] {
        m.shutdown().await;
    }
    relay.stop().await;
}
