//! `hush chat` in a terminal, as a person sees it: two `hush chat` processes, each in a
//! pseudo-terminal of its own, through a real `hush-relay` process on 127.0.0.1. The chat opens
//! with the last messages, shows the peer typing and online, shows read state once, and a line
//! typed while the relay is down returns at once and is delivered once when it is back.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::pty::Pty;
use common::*;

use std::path::Path;
use std::time::Duration;

/// Long enough for a process to start, connect and take in what waits, on a busy machine.
const WAIT: Duration = Duration::from_secs(30);

fn chat(profile: &Path, with: &str) -> Pty {
    Pty::hush(
        &["--profile", profile.to_str().unwrap(), "chat", with],
        &[("HUSH_SYNC_WAIT", "2")],
    )
}

#[test]
fn two_chats_in_terminals_show_typing_presence_read_state_and_survive_the_relay_going_away() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(relay_dir.path(), &[]);
    let listen = relay.addr.to_string();
    let dirs = tempfile::tempdir().unwrap();
    let (a, b) = (dirs.path().join("alice"), dirs.path().join("bob"));
    init_account(&relay, &a, "alice");
    init_account(&relay, &b, "bob");
    for t in ["first", "second"] {
        ok(&b, &["send", "alice", t]);
    }

    // Alice opens the chat: it starts with the conversation so far, the unread marked.
    let mut alice = chat(&a, "bob");
    alice
        .expect(
            "chatting with bob; type a line and press enter (Ctrl-D to leave)",
            WAIT,
        )
        .unwrap();
    alice.expect("-- 2 unread --", WAIT).unwrap();
    alice.expect("bob: first", WAIT).unwrap();
    alice.expect("bob: second", WAIT).unwrap();

    // Bob opens his: Alice's chat says he is online; his sees the two read (once).
    let mut bob = chat(&b, "alice");
    bob.expect("chatting with alice", WAIT).unwrap();
    alice.expect("bob is online", WAIT).unwrap();
    bob.expect("alice is online", WAIT).unwrap();

    // Bob types: Alice sees it before the line is sent.
    bob.send("hel");
    alice.expect("bob is typing…", WAIT).unwrap();
    bob.send("lo alice\r");
    alice.expect("bob: hello alice", WAIT).unwrap();
    bob.expect("read by alice: \"hello alice\"", WAIT).unwrap();

    // The relay goes away; a line Alice types returns at once and waits.
    drop(relay);
    alice.expect("disconnected; reconnecting", WAIT).unwrap();
    alice.send("while you were away\r");
    alice
        .expect(
            "(waiting: sent when the relay is back)",
            Duration::from_secs(5),
        )
        .unwrap();

    // The relay is back where it was: the line leaves, once.
    let _relay = spawn_relay_at(relay_dir.path(), &listen, &[]);
    alice
        .expect("sent to bob: \"while you were away\"", WAIT)
        .unwrap();
    bob.expect("alice: while you were away", WAIT).unwrap();
    alice.send("\x04");
    bob.send("\x04");
    assert_eq!(alice.wait(WAIT).unwrap(), 0);
    assert_eq!(bob.wait(WAIT).unwrap(), 0);
    let h = ok(&b, &["history", "alice"]);
    assert_eq!(h.matches("alice: while you were away").count(), 1, "{h}");
}
