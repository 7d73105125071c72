//! What the CLI tests share: the `hush-relay` process they talk to, and running `hush`, plainly or
//! in a pseudo-terminal (`pty`).
#![allow(dead_code)]

pub(crate) mod pty;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The `hush-relay` binary of this build. `cargo test --workspace` builds it (the relay's own
/// tests need it); when only this package's tests are built, it is built here, once.
pub(crate) fn relay_binary() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_hush")).parent().unwrap();
    let bin = dir.join(format!("hush-relay{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "hush-relay", "--bin", "hush-relay"]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo could not be run");
        assert!(status.success(), "building hush-relay failed");
    }
    assert!(bin.exists(), "no hush-relay binary at {}", bin.display());
    bin
}

pub(crate) struct RelayProcess {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) pin: String,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the relay on 127.0.0.1:0 with its data in `dir` and the `extra` settings, and reads
/// its address and pin from what it prints (as an operator would).
pub(crate) fn spawn_relay(dir: &Path, extra: &[&str]) -> RelayProcess {
    spawn_relay_at(dir, "127.0.0.1:0", extra)
}

/// As [`spawn_relay`], listening on `listen` (the address of a relay started before, to start
/// it again where its clients look for it).
pub(crate) fn spawn_relay_at(dir: &Path, listen: &str, extra: &[&str]) -> RelayProcess {
    let mut child = Command::new(relay_binary())
        .arg("run")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", listen, "--metrics-listen", "127.0.0.1:0"])
        .args(extra)
        .env("HUSH_RELAY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut addr, mut pin) = (None, None);
    while addr.is_none() || pin.is_none() {
        let line = lines.next().expect("relay exited early").unwrap();
        if let Some(rest) = line.strip_prefix("listening on ") {
            addr = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
        } else if let Some(rest) = line.strip_prefix("certificate fingerprint (pin this): ") {
            pin = Some(rest.trim().to_string());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    RelayProcess {
        child,
        addr: addr.unwrap(),
        pin: pin.unwrap(),
    }
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
