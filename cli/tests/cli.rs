//! The `hush` CLI, as a person uses it: two users, each a `hush` process with its own profile,
//! chat through a `hush-relay` process on 127.0.0.1; the test reads what they print.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The profile directory is 0700 and every file directly in it (configuration, contacts, the
/// at-rest key, state files) is 0600.
fn assert_private(profile: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(profile), 0o700, "{}", profile.display());
    let mut files = 0;
    for entry in std::fs::read_dir(profile).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            files += 1;
        }
    }
    assert!(files >= 3, "config, contacts and key at least");
}

#[test]
fn two_hush_processes_chat_through_a_relay() {
    let relay_dir = tempfile::tempdir().unwrap();
    // Three account creations from this address, then refusals (checked below).
    let mut relay = spawn_relay(relay_dir.path(), &["--rate-account-creations", "0.001/3"]);
    let addr = relay.addr.to_string();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path().join("alice"), b.path().join("bob"));

    let init = |dir: &Path, name: &str| {
        hush(
            dir,
            &[
                "init", "--relay", &addr, "--pin", &relay.pin, "--name", name,
            ],
        )
    };
    let ia = init(&a, "alice");
    assert!(ia.status.success(), "{}", stderr(&ia));
    let ib = init(&b, "bob");
    assert!(ib.status.success(), "{}", stderr(&ib));
    assert!(stdout(&ib).contains("as `bob`"));
    // The name is taken now.
    let c = tempfile::tempdir().unwrap();
    let taken = init(&c.path().join("x"), "bob");
    assert!(!taken.status.success());
    assert!(stderr(&taken).contains("taken"), "{}", stderr(&taken));

    // Bob listens in a process of his own; Alice sends.
    let mut listener = Command::new(env!("CARGO_BIN_EXE_hush"))
        .arg("--profile")
        .arg(&b)
        .args(["listen", "--seconds", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let out = listener.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    let wait_for = |want: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("nothing printed in time");
        if line.contains(want) {
            return line;
        }
    };
    wait_for("connected");
    let sent = hush(&a, &["send", "bob", "hello from alice"]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert!(stdout(&sent).starts_with("sent "));
    let line = wait_for("message from");
    assert_eq!(line, "message from alice: hello from alice");

    // Alice's history shows it delivered (Bob's device confirmed it). Bob's listener keeps
    // running meanwhile: it sends the receipt after it has shown the message, so stopping it at
    // once would race the receipt.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let h = hush(&a, &["history", "bob"]);
        assert!(h.status.success(), "{}", stderr(&h));
        if stdout(&h).contains("me: hello from alice (delivered)") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery receipt: {}",
            stdout(&h)
        );
    }
    listener.kill().unwrap();
    let _ = listener.wait();
    // Bob's history has it too.
    let h = hush(&b, &["history", "alice"]);
    assert_eq!(untimed(&stdout(&h)), ["alice: hello from alice"]);

    // Everything either profile holds outside its encrypted stores is the owner's alone.
    for profile in [&a, &b] {
        assert_private(profile);
    }

    // Safety numbers agree on both sides.
    let va = stdout(&hush(&a, &["verify", "bob"]));
    let vb = stdout(&hush(&b, &["verify", "alice"]));
    let digits = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("");
    assert_eq!(digits(&va), digits(&vb));
    assert!(!digits(&va).is_empty());

    // Clear errors: an unknown user, a profile that does not exist.
    let unknown = hush(&a, &["send", "nobody", "hi"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("unknown user `nobody`"),
        "{}",
        stderr(&unknown)
    );
    let none = hush(&c.path().join("empty"), &["send", "bob", "hi"]);
    assert!(stderr(&none).contains("no profile"), "{}", stderr(&none));

    // A group: Alice creates it with Bob, Bob (listening) reads her group message.
    let created = hush(&a, &["group", "create", "friends", "bob"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let mut listener = Command::new(env!("CARGO_BIN_EXE_hush"))
        .arg("--profile")
        .arg(&b)
        .args(["listen", "--seconds", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx2) = mpsc::channel::<String>();
    let out = listener.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    let wait2 = |want: &str| loop {
        let line = rx2
            .recv_timeout(Duration::from_secs(30))
            .expect("nothing printed in time");
        if line.contains(want) {
            return line;
        }
    };
    wait2("connected");
    let sent = hush(&a, &["group", "send", "friends", "hello group"]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert_eq!(
        wait2("in group friends"),
        "message from alice in group friends: hello group"
    );
    listener.kill().unwrap();
    let _ = listener.wait();
    let list = hush(&b, &["group", "list"]);
    assert!(
        stdout(&list).starts_with("friends [id "),
        "{}",
        stdout(&list)
    );
    assert!(stdout(&list).ends_with("]: alice, me\n") || stdout(&list).ends_with("]: me, alice\n"));

    // A fourth account from this address is over the relay's creation limit.
    let limited = init(&c.path().join("y"), "dave");
    assert!(!limited.status.success());
    assert!(
        stderr(&limited).contains("rate limited by the relay"),
        "{}",
        stderr(&limited)
    );

    // The relay is gone: the message is kept and said to wait, after the (shortened) wait.
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
    let down = hush(&a, &["--connect-timeout", "2", "send", "bob", "anyone?"]);
    assert!(down.status.success(), "{}", stderr(&down));
    assert!(stdout(&down).starts_with("waiting "), "{}", stdout(&down));
}
