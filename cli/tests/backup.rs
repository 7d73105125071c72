//! History on a new device and recovery with no device left, with real `hush` processes and a
//! real `hush-relay` process on 127.0.0.1: a linked device gets the newest messages of every
//! conversation; a profile wiped and restored from its backup with the recovery key has its
//! history, contacts and groups back and goes on chatting, 1:1 and in the same group.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The lines of `history` that are messages (not the events a command also shows), without
/// their times and states.
fn said(out: &str) -> Vec<String> {
    let lines: String = out
        .lines()
        .filter(|l| l.starts_with('['))
        .map(|l| format!("{l}\n"))
        .collect();
    untimed(&lines)
        .into_iter()
        .map(|l| match l.rsplit_once(" (") {
            Some((text, _)) => text.to_owned(),
            None => l,
        })
        .collect()
}

#[test]
fn a_linked_device_gets_the_newest_messages_of_every_conversation() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(relay_dir.path(), &[]);
    let addr = relay.addr.to_string();
    let dirs = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dirs.path().join("alice"),
        dirs.path().join("bob"),
        dirs.path().join("carol"),
    );
    let b2 = dirs.path().join("bob-laptop");
    init_account(&relay, &a, "alice");
    init_account(&relay, &b, "bob");
    init_account(&relay, &c, "carol");
    for t in ["a1", "a2", "a3"] {
        ok(&a, &["send", "bob", t]);
    }
    ok(&c, &["send", "bob", "c1"]);
    ok(&b, &["history", "alice"]);
    ok(&b, &["send", "alice", "b1"]);
    ok(&b, &["send", "carol", "b2"]);
    ok(&a, &["group", "create", "team", "bob", "carol"]);
    ok(&a, &["group", "send", "team", "g1"]);
    ok(&a, &["group", "send", "team", "g2"]);
    ok(&a, &["group", "send", "team", "g3"]);
    assert_eq!(
        said(&ok(&b, &["history", "--group", "team"])),
        ["alice: g1", "alice: g2", "alice: g3"]
    );

    // Bob links a laptop, giving it the newest 2 messages of every conversation.
    let mut offer = Command::new(env!("CARGO_BIN_EXE_hush"))
        .arg("--profile")
        .arg(&b)
        .args(["link", "--wait", "120", "--history", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(offer.stdout.take().unwrap()).lines();
    let code = lines
        .by_ref()
        .map(Result::unwrap)
        .find_map(|l| l.split("--code ").nth(1).map(str::to_owned))
        .expect("a link code");
    let joined = ok(
        &b2,
        &[
            "link", "--relay", &addr, "--pin", &relay.pin, "--code", &code,
        ],
    );
    assert!(joined.contains("linked as device "), "{joined}");
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(offer.wait().unwrap().success(), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l == "gave the new device 6 messages of history (at most 2 per conversation)"),
        "{rest:?}"
    );

    // The laptop has them, in every conversation, under the contacts' names; taking them in
    // was told with its progress.
    let first = ok(&b2, &["history", "alice"]);
    let told: Vec<&str> = first.lines().collect();
    let start = told
        .iter()
        .position(|l| l.starts_with("receiving history from this account's other device ("))
        .expect("the transfer's start told");
    let done = told
        .iter()
        .position(|l| *l == "history received: 100%")
        .expect("the transfer's end told");
    assert!(start < done, "{first}");
    assert_eq!(
        told.iter()
            .filter(|l| l.starts_with("history received:"))
            .count(),
        told.iter()
            .filter(|l| l.starts_with("history received:"))
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        "each quarter told once: {first}"
    );
    assert_eq!(said(&first), ["alice: a3", "me: b1"]);
    assert_eq!(
        said(&ok(&b2, &["history", "carol"])),
        ["carol: c1", "me: b2"]
    );
    assert_eq!(
        said(&ok(&b2, &["history", "--group", "team"])),
        ["alice: g2", "alice: g3"]
    );
    // And it chats on.
    ok(&b2, &["group", "send", "team", "from the laptop"]);
    let h = said(&ok(&a, &["history", "--group", "team"]));
    assert!(h.contains(&"bob: from the laptop".to_owned()), "{h:?}");
}

#[test]
fn a_wiped_profile_comes_back_from_its_backup_and_chats_on() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(relay_dir.path(), &[]);
    let addr = relay.addr.to_string();
    let dirs = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dirs.path().join("alice"),
        dirs.path().join("bob"),
        dirs.path().join("carol"),
    );
    init_account(&relay, &a, "alice");
    init_account(&relay, &b, "bob");
    init_account(&relay, &c, "carol");

    // Backups on: the recovery key is shown once.
    let enabled = ok(&a, &["backup", "enable"]);
    let key = enabled
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 69 && l.matches('-').count() == 13)
        .unwrap_or_else(|| panic!("no recovery key in:\n{enabled}"))
        .to_owned();
    let again = hush(&a, &["backup", "enable"]);
    assert!(!again.status.success());
    // Only the first device makes backups; a profile without backups says how to start.
    let none = hush(&b, &["backup", "now"]);
    assert!(
        stderr(&none).contains("hush backup enable"),
        "{}",
        stderr(&none)
    );

    ok(&a, &["send", "bob", "hello bob"]);
    ok(&b, &["send", "alice", "hello alice"]);
    ok(&a, &["history", "bob"]);
    ok(&a, &["group", "create", "team", "bob", "carol"]);
    ok(&a, &["group", "send", "team", "before"]);
    ok(&c, &["group", "send", "team", "carol before"]);
    ok(&a, &["history", "--group", "team"]);
    let now = ok(&a, &["backup", "now"]);
    assert!(now.starts_with("backed up "), "{now}");

    // Alice's only device is gone.
    std::fs::remove_dir_all(&a).unwrap();
    // A typo in the key is caught, and leaves no profile.
    let mut typo = key.clone();
    let last = typo.pop().unwrap();
    typo.push(if last == '0' { '1' } else { '0' });
    let a2 = dirs.path().join("alice-new");
    let bad = hush(
        &a2,
        &[
            "restore",
            "--relay",
            &addr,
            "--pin",
            &relay.pin,
            "--recovery-key",
            &typo,
        ],
    );
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("typo"), "{}", stderr(&bad));
    assert!(!a2.exists());

    let restored = ok(
        &a2,
        &[
            "restore",
            "--relay",
            &addr,
            "--pin",
            &relay.pin,
            "--recovery-key",
            &key,
        ],
    );
    assert!(restored.contains("restored account "), "{restored}");
    assert!(restored.contains("(`alice`)"), "{restored}");
    assert!(restored.contains("1 group"), "{restored}");
    assert!(ok(&a2, &["whoami"]).starts_with("alice account "));
    assert_eq!(
        said(&ok(&a2, &["history", "bob"])),
        ["me: hello bob", "bob: hello alice"]
    );
    assert_eq!(
        said(&ok(&a2, &["history", "--group", "team"])),
        ["me: before", "carol: carol before"]
    );

    // 1:1, both ways.
    ok(&b, &["send", "alice", "welcome back"]);
    let h = said(&ok(&a2, &["history", "bob"]));
    assert_eq!(
        h.last().map(String::as_str),
        Some("bob: welcome back"),
        "{h:?}"
    );
    ok(&a2, &["send", "bob", "thanks"]);
    let h = said(&ok(&b, &["history", "alice"]));
    assert_eq!(h.last().map(String::as_str), Some("alice: thanks"), "{h:?}");

    // The same group, nobody re-adding her: she writes to it and reads it.
    ok(&a2, &["group", "send", "team", "after"]);
    for member in [&b, &c] {
        let h = said(&ok(member, &["history", "--group", "team"]));
        assert_eq!(h.last().map(String::as_str), Some("alice: after"), "{h:?}");
    }
    ok(&c, &["group", "send", "team", "carol after"]);
    let h = said(&ok(&a2, &["history", "--group", "team"]));
    assert_eq!(
        h.last().map(String::as_str),
        Some("carol: carol after"),
        "{h:?}"
    );
}
