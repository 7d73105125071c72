//! What a person sees when things around the chat go wrong, with real `hush` processes and a
//! real `hush-relay` process on 127.0.0.1: a relay killed under a listener is noticed within
//! seconds; a profile already open in another process says so; a failed `init` leaves nothing
//! behind, so the next `init` in the same place works.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `hush listen` process and the lines it prints.
struct Listener {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Listener {
    fn start(profile: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hush"))
            .arg("--profile")
            .arg(profile)
            .args(["listen", "--seconds", "120"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel::<String>();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// The first printed line that is `want`, waiting at most `within`.
    fn wait_for(&self, want: &str, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("`{want}` not printed within {within:?}"));
            if line == want {
                return Instant::now();
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn init(profile: &Path, relay: &RelayProcess, name: &str, extra: &[&str]) -> Output {
    let addr = relay.addr.to_string();
    let mut args: Vec<&str> = extra.to_vec();
    args.extend([
        "init", "--relay", &addr, "--pin", &relay.pin, "--name", name,
    ]);
    hush(profile, &args)
}

#[test]
fn a_relay_killed_under_a_listener_is_reported_within_ten_seconds() {
    let relay_dir = tempfile::tempdir().unwrap();
    let mut relay = spawn_relay(relay_dir.path(), &[]);
    let home = tempfile::tempdir().unwrap();
    let alice = home.path().join("alice");
    let made = init(&alice, &relay, "alice", &[]);
    assert!(made.status.success(), "{}", stderr(&made));

    let listener = Listener::start(&alice);
    listener.wait_for("connected", Duration::from_secs(30));
    // SIGKILL: no goodbye reaches the client; only the missing answers to its keep-alives tell.
    relay.child.kill().unwrap();
    let killed = Instant::now();
    relay.child.wait().unwrap();
    let noticed = listener.wait_for("disconnected; reconnecting", Duration::from_secs(20));
    let after = noticed.duration_since(killed);
    // Keep-alives every 2 s and a 6 s idle timeout: noticed within 8 s of the last keep-alive;
    // the rest of the 10 s is room for a loaded machine.
    eprintln!("relay death noticed after {after:?}");
    assert!(after < Duration::from_secs(10), "noticed after {after:?}");
}

#[test]
fn a_profile_open_in_another_process_says_so() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(relay_dir.path(), &[]);
    let home = tempfile::tempdir().unwrap();
    let alice = home.path().join("alice");
    let made = init(&alice, &relay, "alice", &[]);
    assert!(made.status.success(), "{}", stderr(&made));
    let listener = Listener::start(&alice);
    listener.wait_for("connected", Duration::from_secs(30));

    let second = hush(&alice, &["whoami"]);
    assert!(!second.status.success());
    assert_eq!(
        stderr(&second).trim(),
        format!(
            "hush: the profile {} is open in another hush process; close that one first",
            alice.display()
        )
    );
    drop(listener);
}

#[test]
fn a_failed_init_leaves_nothing_behind_and_the_next_init_works() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(relay_dir.path(), &[]);
    let home = tempfile::tempdir().unwrap();
    let alice = home.path().join("alice");

    // A wrong pin: the relay's certificate does not match, nothing is created.
    let wrong = RelayProcess {
        child: Command::new("true").spawn().unwrap(),
        addr: relay.addr,
        pin: "00".repeat(32),
    };
    let failed = init(&alice, &wrong, "alice", &["--connect-timeout", "5"]);
    assert!(!failed.status.success());
    assert_eq!(
        stderr(&failed).trim(),
        format!(
            "hush: the relay's certificate at {} does not match the pinned fingerprint: check \
             --pin against the fingerprint hush-relay prints",
            relay.addr
        )
    );
    assert!(!alice.exists(), "a failed init left {}", alice.display());

    // An existing empty directory is left empty.
    std::fs::create_dir(&alice).unwrap();
    let failed = init(&alice, &wrong, "alice", &["--connect-timeout", "5"]);
    assert!(!failed.status.success());
    assert_eq!(std::fs::read_dir(&alice).unwrap().count(), 0);

    // A host name is accepted for the relay.
    let by_name = RelayProcess {
        child: Command::new("true").spawn().unwrap(),
        addr: relay.addr,
        pin: relay.pin.clone(),
    };
    let addr = format!("localhost:{}", by_name.addr.port());
    let made = hush(
        &alice,
        &[
            "init",
            "--relay",
            &addr,
            "--pin",
            &by_name.pin,
            "--name",
            "alice",
        ],
    );
    assert!(made.status.success(), "{}", stderr(&made));
    assert!(String::from_utf8_lossy(&made.stdout).contains("as `alice`"));

    // The relay gone: what needs it (linking a device) fails with words that name the address
    // it tried (reading commands go on offline).
    drop(relay);
    let down = hush(&alice, &["--connect-timeout", "2", "link"]);
    assert!(!down.status.success());
    assert_eq!(
        stderr(&down).trim(),
        format!(
            "hush: relay unreachable: no connection to {} within 2 s; is hush-relay running there?",
            by_name.addr
        )
    );
}

#[test]
fn the_relay_log_has_no_colour_codes_when_not_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(hush_testkit::relay_binary())
        .arg("run")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("HUSH_RELAY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .find(|l| l.contains("relay listening"));
    let _ = child.kill();
    let _ = child.wait();
    let line = first.expect("the relay logged that it listens");
    assert!(line.contains("INFO"), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "colour codes in a log file: {line:?}"
    );
}
