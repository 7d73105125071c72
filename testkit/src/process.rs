//! A server binary (normally `hush-relay`) run as a child process: started on loopback, its
//! address and certificate fingerprint read from what it prints, killed (SIGKILL) when dropped.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::SystemTime;

/// What the relay prints before its address.
const LISTENING: &str = "listening on ";
/// What the relay prints before its certificate fingerprint.
const FINGERPRINT: &str = "certificate fingerprint (pin this): ";

/// Rate limits far above what a test does, as flags of `hush-relay run`.
pub const GENEROUS_RATES: &[&str] = &[
    "--rate-sends",
    "100000/100000",
    "--rate-account-creations",
    "1000/1000",
];

/// Why a server process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The binary could not be run.
    #[error("cannot start {0}: {1}")]
    Start(String, std::io::Error),
    /// It exited (or closed its output) before it printed its address and fingerprint.
    #[error("the server exited before it was listening")]
    ExitedEarly,
}

/// A server process; killed (SIGKILL) and reaped when dropped.
pub struct RelayProcess {
    /// The child.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate fingerprint (what clients pin).
    pub pin: String,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RelayProcess {
    /// Starts `hush-relay` (`bin`) with its data in `dir`, listening on 127.0.0.1:0 with metrics
    /// on 127.0.0.1:0 and `extra` flags after those; its log at `warn` on this process's stderr.
    pub fn spawn(bin: &Path, dir: &Path, extra: &[&str]) -> Self {
        Self::spawn_at(bin, dir, "127.0.0.1:0", extra)
    }

    /// As [`RelayProcess::spawn`], listening on `listen` (the address of a relay started before,
    /// to start it again where its clients look for it).
    pub fn spawn_at(bin: &Path, dir: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", listen, "--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .env("HUSH_RELAY_LOG", "warn")
            .stderr(Stdio::inherit());
        Self::start(cmd).unwrap()
    }

    /// Runs `cmd` (its stdout is taken) and reads the server's address and fingerprint from what
    /// it prints; keeps reading its output afterwards so that it never blocks on a full pipe.
    pub fn start(mut cmd: Command) -> Result<Self, SpawnError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| SpawnError::Start(program, e))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SpawnError::ExitedEarly);
        };
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut pin) = (None, None);
        while addr.is_none() || pin.is_none() {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SpawnError::ExitedEarly);
            };
            if let Some(rest) = line.strip_prefix(LISTENING) {
                addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            } else if let Some(rest) = line.strip_prefix(FINGERPRINT) {
                pin = Some(rest.trim().to_owned());
            }
        }
        std::thread::spawn(move || for _ in lines {});
        match (addr, pin) {
            (Some(addr), Some(pin)) => Ok(Self { child, addr, pin }),
            _ => Err(SpawnError::ExitedEarly),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The `hush-relay` binary of the build this test binary belongs to (`<target>/<profile>/`,
/// beside `deps/`), built first with cargo when it is missing or older than its sources (when
/// only one package's tests were built).
pub fn relay_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let profile_dir = if deps.ends_with("deps") {
        deps.parent().unwrap()
    } else {
        deps
    };
    let bin = profile_dir.join(format!("hush-relay{}", std::env::consts::EXE_SUFFIX));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // What the binary is built from (not the crates' tests, which do not relink it).
    let sources = ["relay/src", "net/src", "proto/src", "proto/proto"]
        .iter()
        .map(|c| newest_source(&root.join(c)))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    if built.is_none_or(|b| b < sources) {
        let target_dir = profile_dir.parent().unwrap();
        // `cargo test` builds with the `test` profile into `debug/`; other profiles use their name.
        let profile = match profile_dir.file_name().and_then(OsStr::to_str) {
            Some("debug") | None => "test",
            Some(other) => other,
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-p",
                "hush-relay",
                "--bin",
                "hush-relay",
                "--profile",
            ])
            .arg(profile)
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(root)
            .status()
            .expect("run cargo to build hush-relay");
        assert!(status.success(), "building hush-relay failed");
    }
    assert!(bin.exists(), "no hush-relay binary at {}", bin.display());
    bin
}

fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return newest;
    };
    for e in entries.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_source(&p)
        } else {
            e.metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        newest = newest.max(t);
    }
    newest
}
