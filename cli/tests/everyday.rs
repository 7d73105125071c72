//! The CLI as people use it day to day, with real `hush` processes and a real `hush-relay`
//! process on 127.0.0.1: nothing received goes unseen (one-shot commands show what they took
//! in, `unread` and `history` reach every message, groups by name or id), receipts are shown
//! as the state of a message, and without the relay reading works and a message waits and is
//! delivered once when the relay is back.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

/// The short id `group list` shows for the group named `name` (the `nth` of that name).
fn group_id(list: &str, name: &str, nth: usize) -> String {
    list.lines()
        .filter(|l| l.starts_with(name))
        .nth(nth)
        .and_then(|l| l.split("[id ").nth(1))
        .and_then(|r| r.split(']').next())
        .unwrap_or_else(|| panic!("no group `{name}` #{nth} in:\n{list}"))
        .to_owned()
}

#[test]
fn nothing_received_goes_unseen_and_receipts_are_a_state() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(relay_dir.path(), &[]);
    let dirs = tempfile::tempdir().unwrap();
    let (a, b) = (dirs.path().join("alice"), dirs.path().join("bob"));
    init_account(&relay, &a, "alice");
    init_account(&relay, &b, "bob");

    // Bob is away; Alice writes three lines.
    for t in ["one", "two", "three"] {
        let out = ok(&a, &["send", "bob", t]);
        assert!(out.starts_with("sent "), "{out}");
    }
    // A one-shot command of Bob's takes them in and shows them; they stay unread.
    let who = ok(&b, &["whoami"]);
    for t in ["one", "two", "three"] {
        assert!(who.contains(&format!("message from alice: {t}\n")), "{who}");
    }
    assert_eq!(
        ok(&b, &["unread"]),
        "3 unread messages from alice (`hush history alice`)\n"
    );
    // History shows them with times; read now, nothing is unread.
    assert_eq!(
        untimed(&ok(&b, &["history", "alice"])),
        ["alice: one", "alice: two", "alice: three"]
    );
    assert_eq!(ok(&b, &["unread"]), "");
    // Alice sees each message's state, not a receipt per device and step: all read.
    assert_eq!(
        untimed(&ok(&a, &["history", "bob"])),
        ["me: one (read)", "me: two (read)", "me: three (read)"]
    );

    // Groups: two of the same name are told apart by id; a group created with Bob is listed
    // on his side at once.
    let created = ok(&a, &["group", "create", "friends", "bob"]);
    assert_eq!(created, "created group `friends` with bob\n");
    let list = ok(&b, &["group", "list"]);
    assert!(list.starts_with("friends [id "), "{list}");
    let second = ok(&a, &["group", "create", "friends", "bob"]);
    assert!(second.starts_with("created group `friends ("), "{second}");
    let list = ok(&a, &["group", "list"]);
    let (g1, g2) = (group_id(&list, "friends", 0), group_id(&list, "friends", 1));
    assert_ne!(g1, g2);
    assert!(
        list.contains(&format!("friends ({g1}) [id {g1}]: ")),
        "{list}"
    );
    let shared = hush(&a, &["group", "send", "friends", "which one?"]);
    assert!(!shared.status.success());
    assert!(
        stderr(&shared).contains("several groups are named `friends`: name one by its id"),
        "{}",
        stderr(&shared)
    );
    let out = ok(&a, &["group", "send", &g1, "to the first"]);
    assert!(out.starts_with("sent "), "{out}");
    // Taken in by Bob's one-shot `group send`: shown, and in the group's history.
    let out = ok(&b, &["group", "send", &g2, "to the second"]);
    assert!(
        out.contains(&format!(
            "message from alice in group friends ({g1}): to the first"
        )),
        "{out}"
    );
    assert_eq!(
        untimed(&ok(&b, &["history", "--group", &g1])),
        ["alice: to the first"]
    );
    // Removed from the second group, Bob no longer lists it.
    // Alice's command also shows what it took in: Bob's message to the second group.
    let out = ok(&a, &["group", "remove", &g2, "bob"]);
    assert_eq!(
        out,
        format!(
            "removed bob from group friends ({g2})\n\
             message from bob in group friends ({g2}): to the second\n"
        )
    );
    let list = ok(&b, &["group", "list"]);
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(list.contains(&format!("[id {g1}]")), "{list}");

    // Words: a message over the limit is said to be too long.
    let long = "x".repeat(40_000);
    let o = hush(&a, &["send", "bob", &long]);
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o),
        "hush: the message is too long: 40000 bytes, at most 32768\n"
    );
}

#[test]
fn without_the_relay_reading_works_and_a_message_waits_and_is_delivered_once() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(relay_dir.path(), &[]);
    let listen = relay.addr.to_string();
    let dirs = tempfile::tempdir().unwrap();
    let (a, b) = (dirs.path().join("alice"), dirs.path().join("bob"));
    init_account(&relay, &a, "alice");
    init_account(&relay, &b, "bob");
    ok(&a, &["send", "bob", "before"]);
    ok(&b, &["history", "alice"]);
    drop(relay);

    // Offline: history, whoami, safety numbers and sending all work, and say so.
    let fast = [("HUSH_SYNC_WAIT", "2"), ("HUSH_CONNECT_TIMEOUT", "2")];
    let run = |args: &[&str]| {
        let o = hush_env(&a, &fast, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o)
    };
    let offline =
        format!("offline: the relay at {listen} cannot be reached; showing what this device has\n");
    // (Bob's receipts wait at the relay: this device last saw the message sent.)
    let h = run(&["history", "bob"]);
    assert!(h.starts_with(&offline), "{h}");
    assert_eq!(untimed(&h)[1..], ["me: before (sent)"]);
    let w = run(&["whoami"]);
    assert!(w.contains("alice account "), "{w}");
    let v = run(&["verify", "bob"]);
    assert!(v.starts_with("safety number with bob:\n"), "{v}");
    let s = run(&["send", "bob", "written offline"]);
    assert!(
        s.starts_with("waiting ")
            && s.contains(&format!(
                ": the relay at {listen} cannot be reached now; the message is kept here and \
                 sent the next time hush connects (`hush listen`)"
            )),
        "{s}"
    );
    let h = run(&["history", "bob"]);
    assert_eq!(
        untimed(&h)[1..],
        ["me: before (sent)", "me: written offline (waiting)"]
    );

    // The relay is back where it was: the next `hush` sends it, once.
    let _relay = spawn_relay_at(relay_dir.path(), &listen, &[]);
    let out = ok(&a, &["listen", "--seconds", "5"]);
    assert!(out.contains("sent to bob: \"written offline\""), "{out}");
    assert_eq!(
        untimed(&ok(&b, &["history", "alice"])),
        ["alice: before", "alice: written offline"]
    );
    let h = ok(&a, &["history", "bob"]);
    assert_eq!(
        untimed(&h),
        ["me: before (read)", "me: written offline (read)"]
    );
}

#[test]
fn a_linked_device_gets_the_name_and_contacts_its_contacts_are_warned_and_removal_is_told() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let relay_dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(relay_dir.path(), &[]);
    let addr = relay.addr.to_string();
    let dirs = tempfile::tempdir().unwrap();
    let (a, b, b2) = (
        dirs.path().join("alice"),
        dirs.path().join("bob"),
        dirs.path().join("bob-laptop"),
    );
    init_account(&relay, &a, "alice");
    init_account(&relay, &b, "bob");
    ok(&a, &["send", "bob", "hi bob"]);
    ok(&b, &["history", "alice"]);

    // Bob's first device offers a link; the new device joins with the code it prints.
    let mut offer = Command::new(env!("CARGO_BIN_EXE_hush"))
        .arg("--profile")
        .arg(&b)
        .args(["link", "--wait", "120"])
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
    assert!(offer.wait().unwrap().success());
    assert!(
        rest.iter()
            .any(|l| l == "gave the new device this account's name and 1 contact"),
        "{rest:?}"
    );

    // The code is used up: another device answering it is told at once, and keeps nothing.
    let tablet = dirs.path().join("bob-tablet");
    let again = hush(
        &tablet,
        &[
            "link", "--relay", &addr, "--pin", &relay.pin, "--code", &code,
        ],
    );
    assert!(!again.status.success());
    assert_eq!(
        stderr(&again),
        "hush: no device offers this link code: it was used already, it expired (codes last 10 \
         minutes), or it is mistyped; run `hush link` on the account's first device for a new one\n"
    );
    assert!(!tablet.exists());

    // The new device goes by the account's name and knows Alice by hers.
    let who = ok(&b2, &["whoami"]);
    assert!(who.starts_with("bob account "), "{who}");
    let new_id: u32 = who
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|d| d.parse().ok())
        .unwrap();
    let sent = ok(&b2, &["send", "alice", "from the laptop"]);
    assert!(sent.starts_with("sent "), "{sent}");
    // Alice is warned of Bob's new device, and has the message under his name.
    let h = ok(&a, &["history", "bob"]);
    assert!(
        h.contains(&format!(
            "warning: bob has new or changed devices [{new_id}]; compare safety numbers (`hush verify bob`)"
        )),
        "{h}"
    );
    assert!(
        untimed(&h).contains(&"bob: from the laptop".to_owned()),
        "{h}"
    );

    // Only the first device removes devices, and the words say so.
    let o = hush(&b2, &["remove-device", "1"]);
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o),
        "hush: only the account's first device (the one that created the account, which holds \
         its key) can remove devices: run `hush remove-device 1` on that device\n"
    );
    // Removed, the laptop is told so, not "unreachable".
    ok(&b, &["remove-device", &new_id.to_string()]);
    let who = ok(&b2, &["whoami"]);
    assert!(
        who.contains(
            "this device was removed from the account; link it again (`hush link`) to use it"
        ),
        "{who}"
    );
    assert!(!who.contains("offline"), "{who}");
}
