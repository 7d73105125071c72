//! What the CLI tests share: the `hush-relay` process they talk to, and running `hush`, plainly or
//! in a pseudo-terminal (`pty`).
#![allow(dead_code)]

pub(crate) mod pty;

use std::path::Path;
use std::process::{Command, Output};

pub(crate) use hush_testkit::RelayProcess;

/// Starts the relay on 127.0.0.1:0 with its data in `dir` and the `extra` settings, and reads
/// its address and pin from what it prints (as an operator would).
pub(crate) fn spawn_relay(dir: &Path, extra: &[&str]) -> RelayProcess {
    RelayProcess::spawn(&hush_testkit::relay_binary(), dir, extra)
}

/// As [`spawn_relay`], listening on `listen` (the address of a relay started before, to start
/// it again where its clients look for it).
pub(crate) fn spawn_relay_at(dir: &Path, listen: &str, extra: &[&str]) -> RelayProcess {
    RelayProcess::spawn_at(&hush_testkit::relay_binary(), dir, listen, extra)
}

pub(crate) fn hush(profile: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hush"))
        .arg("--profile")
        .arg(profile)
        .args(args)
        .output()
        .unwrap()
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `hush` with extra environment (settings such as `HUSH_CONNECT_TIMEOUT`).
pub(crate) fn hush_env(profile: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hush"))
        .arg("--profile")
        .arg(profile)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `hush init` of a new account named `name` in `profile`, which must succeed.
pub(crate) fn init_account(relay: &RelayProcess, profile: &Path, name: &str) {
    let addr = relay.addr.to_string();
    let o = hush(
        profile,
        &[
            "init", "--relay", &addr, "--pin", &relay.pin, "--name", name,
        ],
    );
    assert!(o.status.success(), "init {name}: {}", stderr(&o));
}

/// Runs `hush` and returns what it printed, failing the test if it failed.
pub(crate) fn ok(profile: &Path, args: &[&str]) -> String {
    let o = hush(profile, args);
    assert!(
        o.status.success(),
        "hush {args:?} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Lines of history without their time: `[14:05] bob: hi` → `bob: hi`.
pub(crate) fn untimed(out: &str) -> Vec<String> {
    out.lines()
        .map(
            |l| match l.strip_prefix('[').and_then(|r| r.split_once("] ")) {
                Some((time, rest)) => {
                    assert!(
                        time.len() == 5 || time.len() == 16,
                        "not a time: `{time}` in `{l}`"
                    );
                    rest.to_owned()
                }
                None => l.to_owned(),
            },
        )
        .collect()
}
