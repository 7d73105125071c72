//! The relay under load: a child `hush-relay` process this tool starts (with a temporary data
//! directory and generous limits), or one given by address; and what `/proc` says about it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::Error;

/// A relay process started by this tool; killed when dropped.
pub(crate) struct RelayChild {
    child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) pin: String,
    _dir: tempfile::TempDir,
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RelayChild {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `bin` on 127.0.0.1 (a free port) with `args` after the defaults (later flags win),
    /// and reads its address and certificate fingerprint from what it prints.
    pub(crate) fn spawn(bin: &PathBuf, args: &[String]) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("hush-load-")
            .tempdir()
            .map_err(|e| Error::new(format!("temporary data directory: {e}")))?;
        let mut child = Command::new(bin)
            .arg("run")
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--log",
                "warn",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::new(format!("cannot start {}: {e}", bin.display())))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err(Error::new("relay has no stdout".into()));
        };
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        let mut pin = None;
        while addr.is_none() || pin.is_none() {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::new(
                    "the relay exited before it was listening".into(),
                ));
            };
            if let Some(rest) = line.strip_prefix("listening on ") {
                addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            } else if let Some(rest) = line.strip_prefix("certificate fingerprint (pin this): ") {
                pin = Some(rest.trim().to_string());
            }
        }
        // Keep reading its output so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        match (addr, pin) {
            (Some(addr), Some(pin)) => Ok(Self {
                child,
                addr,
                pin,
                _dir: dir,
            }),
            _ => Err(Error::new("could not read the relay's address".into())),
        }
    }
}

/// `hush-relay` next to this executable (both are built into the same `target/<profile>`).
pub(crate) fn default_relay_bin() -> Result<PathBuf, Error> {
    let exe =
        std::env::current_exe().map_err(|e| Error::new(format!("current executable: {e}")))?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error::new("executable has no directory".into()))?;
    let bin = dir.join("hush-relay");
    if bin.is_file() {
        return Ok(bin);
    }
    // Integration tests run from target/<profile>/deps.
    if let Some(up) = dir.parent().map(|d| d.join("hush-relay"))
        && up.is_file()
    {
        return Ok(up);
    }
    Err(Error::new(format!(
        "no hush-relay next to {} (build it: cargo build --release -p hush-relay, or give --relay-bin)",
        exe.display()
    )))
}

/// Resident set size of a process (KiB), from `/proc/<pid>/status`.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time (user + system) of a process, in seconds, from `/proc/<pid>/stat` (assumes the
/// usual 100 clock ticks per second).
pub(crate) fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let s = std::fs::read_to_string(path).ok()?;
    let after = s.rsplit_once(')')?.1;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    #[allow(clippy::cast_precision_loss)]
    Some((utime + stime) as f64 / 100.0)
}
