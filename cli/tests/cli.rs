//! The `hush` CLI, as a person uses it: two users, each a `hush` process with its own profile,
//! chat through a relay on 127.0.0.1; the test reads what they print.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hush_relay::config::{Config, RateLimit, StoreKind};

fn hush(profile: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hush"))
        .arg("--profile")
        .arg(profile)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn two_hush_processes_chat_through_a_relay() {
    // The relay runs on a runtime of its own; this thread drives the `hush` processes.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let relay_dir = tempfile::tempdir().unwrap();
    let lots = RateLimit {
        per_second: 10_000.0,
        burst: 10_000,
    };
    let mut cfg = Config {
        data_dir: relay_dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: None,
        store: StoreKind::Sled,
        ..Config::default()
    };
    cfg.rate.account_creations = lots;
    let relay = rt.block_on(hush_relay::start(cfg)).unwrap();
    let addr = relay.addr.to_string();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path().join("alice"), b.path().join("bob"));

    let init = |dir: &Path, name: &str| {
        hush(
            dir,
            &[
                "init",
                "--relay",
                &addr,
                "--pin",
                &relay.fingerprint,
                "--name",
                name,
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
    listener.kill().unwrap();
    let _ = listener.wait();

    // Alice's history shows it delivered (Bob's device confirmed it).
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
    // Bob's history has it too.
    let h = hush(&b, &["history", "alice"]);
    assert_eq!(stdout(&h), "alice: hello from alice\n");

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
        wait2("group message"),
        "group message from alice: hello group"
    );
    listener.kill().unwrap();
    let _ = listener.wait();
    let list = hush(&b, &["group", "list"]);
    assert_eq!(stdout(&list), "friends\n");

    rt.block_on(relay.stop());
}
