//! The server under load: a child `hush-relay` process this tool starts (with a temporary data
//! directory and generous limits), or the nodes given by address, or a child ceiling server (this
//! executable again, `ceiling-server`); and what `/proc` says about them.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hush_testkit::RelayProcess;

use crate::{Error, Node};

/// A server process (relay or ceiling) started by this tool, with its temporary data directory;
/// killed when dropped.
pub(crate) struct ServerChild {
    process: RelayProcess,
    pub(crate) addr: SocketAddr,
    pub(crate) pin: String,
    _dir: tempfile::TempDir,
}

impl ServerChild {
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// This server as the one node of a run.
    pub(crate) fn node(&self) -> Node {
        Node {
            addr: self.addr,
            pin: self.pin.clone(),
            pid: Some(self.pid()),
        }
    }

    /// Starts `bin` on 127.0.0.1 (a free port) with `args` after the defaults, and reads its
    /// address and certificate fingerprint from what it prints.
    pub(crate) fn spawn(bin: &Path, args: &[String]) -> Result<Self, Error> {
        Self::start(bin, |dir| {
            let mut a: Vec<OsString> = vec!["run".into(), "--data-dir".into(), dir.into()];
            a.extend(["--listen", "127.0.0.1:0", "--metrics-listen", "off"].map(OsString::from));
            // Quiet unless an extra flag asks for more.
            if !args.iter().any(|x| x == "--log" || x.starts_with("--log=")) {
                a.extend(["--log", "warn"].map(OsString::from));
            }
            a.extend(args.iter().map(OsString::from));
            a
        })
    }

    /// Starts the ceiling server (`bin ceiling-server`) on 127.0.0.1 with the given store.
    pub(crate) fn spawn_ceiling(bin: &Path, store: &str) -> Result<Self, Error> {
        Self::start(bin, |dir| {
            vec![
                crate::ceiling::SUBCOMMAND.into(),
                "--data-dir".into(),
                dir.into(),
                "--store".into(),
                store.into(),
            ]
        })
    }

    fn start(bin: &Path, args: impl FnOnce(&Path) -> Vec<OsString>) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("hush-load-")
            .tempdir()
            .map_err(|e| Error::new(format!("temporary data directory: {e}")))?;
        let mut cmd = Command::new(bin);
        cmd.args(args(dir.path())).stderr(Stdio::inherit());
        let process = RelayProcess::start(cmd).map_err(|e| Error::new(e.to_string()))?;
        Ok(Self {
            addr: process.addr,
            pin: process.pin.clone(),
            process,
            _dir: dir,
        })
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

/// This executable, for the ceiling server: `hush-load` itself, or (when this is a test binary in
/// `target/<profile>/deps`) the `hush-load` built beside it.
pub(crate) fn default_ceiling_bin() -> Result<PathBuf, Error> {
    let exe =
        std::env::current_exe().map_err(|e| Error::new(format!("current executable: {e}")))?;
    if exe.file_stem().is_some_and(|n| n == "hush-load") {
        return Ok(exe);
    }
    let dir = exe
        .parent()
        .ok_or_else(|| Error::new("executable has no directory".into()))?;
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let bin = d.join("hush-load");
        if bin.is_file() {
            return Ok(bin);
        }
    }
    Err(Error::new(format!(
        "no hush-load next to {} (give --ceiling-bin)",
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

/// Resident set size of the processes together (KiB); `None` without any, or if one cannot be
/// read (a part of the sum would pass for the whole).
pub(crate) fn total_rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| rss_kib(*p)).sum()
}

/// CPU time of the processes together, in seconds; `None` without any, or if one cannot be read.
pub(crate) fn total_cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| cpu_seconds(Some(*p))).sum()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_over_processes() {
        let me = std::process::id();
        let one = total_rss_kib(&[me]).unwrap();
        let two = total_rss_kib(&[me, me]).unwrap();
        // The same process read twice, a moment apart: about twice as much.
        assert!(two >= one && two <= 3 * one, "{one} {two}");
        assert!(total_cpu_seconds(&[me, me]).is_some());
    }

    #[test]
    fn totals_need_every_process() {
        assert_eq!(total_rss_kib(&[]), None);
        assert_eq!(total_cpu_seconds(&[]), None);
        // No such process: pid_max is at most 2^22.
        assert_eq!(total_rss_kib(&[std::process::id(), u32::MAX]), None);
        assert_eq!(total_cpu_seconds(&[u32::MAX]), None);
    }
}
