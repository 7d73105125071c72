//! Settings of a run: what to measure ([`Mode`]), against which server ([`Target`]) and which
//! relay nodes ([`Node`]), and the options with their bounds and the relay flags they imply.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::Error;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Flat out, pipelined sends (a bounded window per sender): durable sends per second.
    Throughput,
    /// A fixed total rate (`--rate`): end-to-end latency.
    Latency,
    /// Idle authenticated connections with keep-alive: relay RSS per connection.
    Idle,
    /// One send to an account of many devices (one envelope each).
    Fanout,
    /// `throughput` against the ceiling server (`throughput --target ceiling`).
    Ceiling,
}

/// What carries the devices' connections to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LoadTransport {
    /// QUIC (UDP).
    #[default]
    Quic,
    /// TLS 1.3 over TCP, on the relay's address and port number (docs/RELAY_PROTOCOL.md §17).
    Tcp,
}

/// Which server a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Target {
    /// `hush-relay` (a child process, or the nodes given by `--addr`).
    #[default]
    Relay,
    /// The ceiling server: bare quinn + sled with the relay's transport settings (a child process).
    Ceiling,
}

/// Hard bounds on what one run may ask for.
const MAX_DEVICES: usize = 20_000;
const MAX_DURATION_S: f64 = 600.0;
/// Most relay nodes one run drives.
pub const MAX_NODES: usize = 64;

/// A running relay node to drive: `--addr` with the `--pin` (and `--relay-pid`, if any) in the
/// same place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its loopback address.
    pub addr: SocketAddr,
    /// Its certificate fingerprint.
    pub pin: String,
    /// Its process id, to read its RSS and CPU time.
    pub pid: Option<u32>,
}

/// Why `--addr`, `--pin` and `--relay-pid` do not describe the relay nodes to drive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// `--pin` or `--relay-pid` without any `--addr`.
    #[error("--pin and --relay-pid describe the relays given by --addr, and no --addr is given")]
    NoAddr,
    /// Not one `--pin` per `--addr`.
    #[error(
        "--pin must be given once per --addr, in the same order ({addrs} --addr, {pins} --pin)"
    )]
    PinCount {
        /// `--addr` given.
        addrs: usize,
        /// `--pin` given.
        pins: usize,
    },
    /// `--relay-pid` given, but not once per `--addr`.
    #[error(
        "--relay-pid must be given once per --addr, in the same order, or not at all ({addrs} --addr, {pids} --relay-pid)"
    )]
    PidCount {
        /// `--addr` given.
        addrs: usize,
        /// `--relay-pid` given.
        pids: usize,
    },
    /// An address off loopback.
    #[error("--addr must be a loopback address (127.0.0.1 or ::1), not {0}")]
    NotLoopback(SocketAddr),
    /// The same address twice.
    #[error("--addr {0} is given twice")]
    Repeated(SocketAddr),
    /// More nodes than one run drives.
    #[error("--addr may be given at most {MAX_NODES} times ({0} given)")]
    TooMany(usize),
    /// `--addr` for a run against the ceiling server.
    #[error("--addr names a running relay; the ceiling server is always started here")]
    Ceiling,
}

/// Settings of a run.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "hush-load",
    version,
    about = "Drives a Hush relay over QUIC or TLS over TCP on loopback"
)]
pub struct Options {
    /// throughput | latency | idle | fanout | ceiling
    #[arg(value_enum)]
    pub mode: Mode,
    /// The server to drive: relay, or ceiling (bare quinn + sled, started as a child process).
    #[arg(long, value_enum, default_value_t = Target::Relay)]
    pub target: Target,
    /// Transport of every connection: quic, or tcp (TLS over TCP on the relay's port number;
    /// the relay only: the ceiling server speaks QUIC alone).
    #[arg(long, value_enum, default_value_t = LoadTransport::Quic)]
    pub transport: LoadTransport,
    /// Run the mode against the ceiling server, then against the relay with the same settings,
    /// and report both and their ratios.
    #[arg(long, conflicts_with = "target")]
    pub vs_ceiling: bool,
    /// The executable that serves as the ceiling server [default: this one].
    #[arg(long)]
    pub ceiling_bin: Option<PathBuf>,
    /// A running relay to drive (loopback only) instead of starting one; repeat it for the nodes
    /// of a cluster (device i connects to node i mod N).
    #[arg(long, requires = "pin")]
    pub addr: Vec<SocketAddr>,
    /// Certificate fingerprint of the relay given by --addr (one per --addr, in the same order).
    #[arg(long)]
    pub pin: Vec<String>,
    /// Process id of the relay given by --addr, to read its RSS and CPU time (one per --addr, in
    /// the same order, or none; several are summed).
    #[arg(long)]
    pub relay_pid: Vec<u32>,
    /// The hush-relay binary to start [default: next to this executable].
    #[arg(long)]
    pub relay_bin: Option<PathBuf>,
    /// Extra flag for the relay this tool starts (repeatable, e.g. --relay-arg=--flush-batch-max=4096).
    #[arg(long = "relay-arg", allow_hyphen_values = true)]
    pub relay_args: Vec<String>,
    /// Store of the server this tool starts: sled (on disk, durable) or memory.
    #[arg(long, default_value = "sled")]
    pub store: String,
    /// Devices (throughput, latency): one single-device account each, one connection each.
    #[arg(long, default_value_t = 200)]
    pub devices: usize,
    /// Sending devices (throughput, latency, fanout).
    #[arg(long, default_value_t = 100)]
    pub senders: usize,
    /// Envelope body size in bytes (at least 16: timestamp and sender).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Measured time in seconds (idle: how long the connections are held).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Traffic before the measurement starts, in seconds (not counted).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Total sends per second (latency mode).
    #[arg(long, default_value_t = 25_000.0)]
    pub rate: f64,
    /// Sends in flight per sender at most (unanswered).
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Client UDP endpoints the connections are spread over (per relay node).
    #[arg(long, default_value_t = 4)]
    pub endpoints: usize,
    /// Connections to hold (idle mode).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Devices per account in idle mode.
    #[arg(long, default_value_t = 16)]
    pub devices_per_account: u32,
    /// Devices of each recipient account (fanout mode).
    #[arg(long, default_value_t = 64)]
    pub fanout_devices: u32,
    /// Recipient accounts (fanout mode).
    #[arg(long, default_value_t = 2)]
    pub recipients: usize,
    /// Receivers acknowledge what arrived at most this often (ms).
    #[arg(long, default_value_t = 20)]
    pub ack_interval_ms: u64,
    /// QUIC keep-alive interval of every connection (ms); the relay closes idle ones after 60 s.
    #[arg(long, default_value_t = 20_000)]
    pub keep_alive_ms: u64,
    /// Connection set-ups (handshake + authentication) in flight at once.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Worker threads of this tool's runtime (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl Options {
    pub(crate) fn check(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::new(m.to_string()));
        if !(self.duration > 0.0 && self.duration <= MAX_DURATION_S) {
            return bad("--duration must be in (0, 600] seconds");
        }
        if !(self.warmup >= 0.0 && self.warmup <= 60.0) {
            return bad("--warmup must be in [0, 60] seconds");
        }
        if !(16..=65_536).contains(&self.size) {
            return bad("--size must be in 16..=65536");
        }
        if !(1..=65_536).contains(&self.window) {
            return bad("--window must be in 1..=65536");
        }
        if !(1..=64).contains(&self.endpoints) {
            return bad("--endpoints must be in 1..=64");
        }
        if self.transport == LoadTransport::Tcp
            && (self.vs_ceiling || self.target() == Target::Ceiling)
        {
            return bad("--transport tcp drives the relay only (the ceiling server speaks QUIC)");
        }
        if !(1..=4096).contains(&self.connect_concurrency) {
            return bad("--connect-concurrency must be in 1..=4096");
        }
        if self.store != "sled" && self.store != "memory" {
            return bad("--store must be sled or memory");
        }
        if self.vs_ceiling && self.mode == Mode::Ceiling {
            return bad("--vs-ceiling takes a workload: throughput, latency, idle or fanout");
        }
        self.nodes()?;
        match self.mode {
            Mode::Throughput | Mode::Latency | Mode::Ceiling => {
                if !(2..=MAX_DEVICES).contains(&self.devices) {
                    return bad("--devices must be in 2..=20000");
                }
                if !(1..=self.devices).contains(&self.senders) {
                    return bad("--senders must be in 1..=devices");
                }
                if self.mode == Mode::Latency && !(self.rate > 0.0 && self.rate <= 10_000_000.0) {
                    return bad("--rate must be in (0, 10000000]");
                }
            }
            Mode::Idle => {
                if !(1..=MAX_DEVICES).contains(&self.connections) {
                    return bad("--connections must be in 1..=20000");
                }
                if !(1..=1000).contains(&self.devices_per_account) {
                    return bad("--devices-per-account must be in 1..=1000");
                }
            }
            Mode::Fanout => {
                if !(1..=1200).contains(&self.fanout_devices) {
                    return bad("--fanout-devices must be in 1..=1200");
                }
                if self.recipients == 0 || self.senders == 0 {
                    return bad("--recipients and --senders must be at least 1");
                }
                let total =
                    self.recipients.saturating_mul(self.fanout_devices as usize) + self.senders;
                if total > MAX_DEVICES {
                    return bad("recipients × fanout-devices + senders must be at most 20000");
                }
            }
        }
        Ok(())
    }

    /// The running relay nodes given by `--addr`, `--pin` and `--relay-pid`, in the order given;
    /// empty when this tool starts the server itself.
    pub fn nodes(&self) -> Result<Vec<Node>, NodeError> {
        let (addrs, pins, pids) = (self.addr.len(), self.pin.len(), self.relay_pid.len());
        if addrs == 0 {
            return if pins == 0 && pids == 0 {
                Ok(Vec::new())
            } else {
                Err(NodeError::NoAddr)
            };
        }
        if self.target() == Target::Ceiling {
            return Err(NodeError::Ceiling);
        }
        if addrs > MAX_NODES {
            return Err(NodeError::TooMany(addrs));
        }
        if pins != addrs {
            return Err(NodeError::PinCount { addrs, pins });
        }
        if pids != 0 && pids != addrs {
            return Err(NodeError::PidCount { addrs, pids });
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(addrs);
        for (i, (addr, pin)) in self.addr.iter().zip(&self.pin).enumerate() {
            if !addr.ip().is_loopback() {
                return Err(NodeError::NotLoopback(*addr));
            }
            if nodes.iter().any(|n| n.addr == *addr) {
                return Err(NodeError::Repeated(*addr));
            }
            nodes.push(Node {
                addr: *addr,
                pin: pin.clone(),
                pid: self.relay_pid.get(i).copied(),
            });
        }
        Ok(nodes)
    }

    /// The server this run drives (`ceiling` is the throughput workload against the ceiling).
    pub fn target(&self) -> Target {
        if self.mode == Mode::Ceiling {
            Target::Ceiling
        } else {
            self.target
        }
    }

    /// The workload (`ceiling` is `throughput`).
    pub fn workload(&self) -> Mode {
        if self.mode == Mode::Ceiling {
            Mode::Throughput
        } else {
            self.mode
        }
    }

    /// These settings, for one run against `target`.
    pub(crate) fn against(&self, target: Target) -> Self {
        Self {
            mode: self.workload(),
            target,
            vs_ceiling: false,
            ..self.clone()
        }
    }

    /// The flags given to a relay this tool starts: limits out of the way of the measurement.
    pub(crate) fn relay_flags(&self, connections: usize, devices_per_account: u32) -> Vec<String> {
        let lots = "1000000/1000000".to_string();
        let mut f = vec![
            "--store".into(),
            self.store.clone(),
            "--rate-sends".into(),
            lots.clone(),
            "--rate-account-sends".into(),
            lots.clone(),
            "--rate-account-creations".into(),
            lots,
            "--max-connections".into(),
            (connections + 1000).to_string(),
            // Every simulated device connects from 127.0.0.1: one address block.
            "--max-connections-per-block".into(),
            (connections + 1000).to_string(),
            "--max-connections-per-account".into(),
            (connections + 1000).to_string(),
            "--max-devices-per-account".into(),
            devices_per_account.max(16).to_string(),
        ];
        f.extend(self.relay_args.iter().cloned());
        f
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Options {
        Options::try_parse_from(["hush-load"].iter().chain(args)).unwrap()
    }

    #[test]
    fn tcp_is_a_transport_of_the_relay_only() {
        let quic = parse(&["throughput"]);
        assert_eq!(quic.transport, LoadTransport::Quic);
        assert!(quic.check().is_ok());
        let tcp = parse(&["throughput", "--transport", "tcp"]);
        assert_eq!(tcp.transport, LoadTransport::Tcp);
        assert!(tcp.check().is_ok());
        assert!(parse(&["ceiling", "--transport", "tcp"]).check().is_err());
        assert!(
            parse(&["throughput", "--transport", "tcp", "--vs-ceiling"])
                .check()
                .is_err()
        );
    }

    fn node(addr: &str, pin: &str, pid: Option<u32>) -> Node {
        Node {
            addr: addr.parse().unwrap(),
            pin: pin.to_string(),
            pid,
        }
    }

    #[test]
    fn one_addr_is_one_node() {
        let o = parse(&[
            "throughput",
            "--addr",
            "127.0.0.1:4433",
            "--pin",
            "aa",
            "--relay-pid",
            "42",
        ]);
        assert_eq!(o.nodes(), Ok(vec![node("127.0.0.1:4433", "aa", Some(42))]));
        assert!(o.check().is_ok());
        let o = parse(&["idle", "--addr", "[::1]:4433", "--pin", "aa"]);
        assert_eq!(o.nodes(), Ok(vec![node("[::1]:4433", "aa", None)]));
    }

    #[test]
    fn no_addr_is_no_node() {
        let o = parse(&["throughput"]);
        assert_eq!(o.nodes(), Ok(Vec::new()));
        assert!(o.check().is_ok());
    }

    #[test]
    fn repeated_addrs_pair_with_pins_and_pids_in_order() {
        let o = parse(&[
            "latency",
            "--addr",
            "127.0.0.1:4433",
            "--addr",
            "127.0.0.1:4434",
            "--pin",
            "aa",
            "--addr",
            "127.0.0.2:4435",
            "--pin",
            "bb",
            "--pin",
            "cc",
            "--relay-pid",
            "1",
            "--relay-pid",
            "2",
            "--relay-pid",
            "3",
        ]);
        assert_eq!(
            o.nodes(),
            Ok(vec![
                node("127.0.0.1:4433", "aa", Some(1)),
                node("127.0.0.1:4434", "bb", Some(2)),
                node("127.0.0.2:4435", "cc", Some(3)),
            ])
        );
        assert!(o.check().is_ok());
        // Process ids are optional.
        let o = parse(&[
            "throughput",
            "--addr",
            "127.0.0.1:1",
            "--pin",
            "aa",
            "--addr",
            "127.0.0.1:2",
            "--pin",
            "bb",
        ]);
        assert_eq!(
            o.nodes(),
            Ok(vec![
                node("127.0.0.1:1", "aa", None),
                node("127.0.0.1:2", "bb", None)
            ])
        );
    }

    #[test]
    fn counts_must_match() {
        let o = parse(&[
            "throughput",
            "--addr",
            "127.0.0.1:1",
            "--addr",
            "127.0.0.1:2",
            "--pin",
            "aa",
        ]);
        assert_eq!(o.nodes(), Err(NodeError::PinCount { addrs: 2, pins: 1 }));
        let e = o.check().unwrap_err();
        assert!(
            matches!(e, Error::Nodes(NodeError::PinCount { addrs: 2, pins: 1 })),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "--pin must be given once per --addr, in the same order (2 --addr, 1 --pin)"
        );
        let o = parse(&[
            "throughput",
            "--addr",
            "127.0.0.1:1",
            "--pin",
            "aa",
            "--pin",
            "bb",
        ]);
        assert_eq!(o.nodes(), Err(NodeError::PinCount { addrs: 1, pins: 2 }));
        let o = parse(&[
            "throughput",
            "--addr",
            "127.0.0.1:1",
            "--pin",
            "aa",
            "--addr",
            "127.0.0.1:2",
            "--pin",
            "bb",
            "--relay-pid",
            "7",
        ]);
        assert_eq!(o.nodes(), Err(NodeError::PidCount { addrs: 2, pids: 1 }));
        let o = parse(&["throughput", "--pin", "aa"]);
        assert_eq!(o.nodes(), Err(NodeError::NoAddr));
        let o = parse(&["throughput", "--relay-pid", "7"]);
        assert_eq!(o.nodes(), Err(NodeError::NoAddr));
        assert!(matches!(o.check(), Err(Error::Nodes(NodeError::NoAddr))));
    }

    #[test]
    fn an_addr_without_any_pin_is_refused_by_the_parser() {
        let r = Options::try_parse_from(["hush-load", "throughput", "--addr", "127.0.0.1:1"]);
        assert!(r.is_err());
    }

    #[test]
    fn every_addr_is_loopback_and_given_once() {
        let o = parse(&[
            "throughput",
            "--addr",
            "127.0.0.1:1",
            "--pin",
            "aa",
            "--addr",
            "10.0.0.1:2",
            "--pin",
            "bb",
        ]);
        let e = o.nodes().unwrap_err();
        assert_eq!(e, NodeError::NotLoopback("10.0.0.1:2".parse().unwrap()));
        assert_eq!(
            e.to_string(),
            "--addr must be a loopback address (127.0.0.1 or ::1), not 10.0.0.1:2"
        );
        let o = parse(&["throughput", "--addr", "[2001:db8::1]:1", "--pin", "aa"]);
        assert!(matches!(o.nodes(), Err(NodeError::NotLoopback(_))));
        let o = parse(&[
            "throughput",
            "--addr",
            "127.0.0.1:1",
            "--pin",
            "aa",
            "--addr",
            "127.0.0.1:1",
            "--pin",
            "bb",
        ]);
        assert_eq!(
            o.nodes(),
            Err(NodeError::Repeated("127.0.0.1:1".parse().unwrap()))
        );
    }

    #[test]
    fn at_most_max_nodes() {
        let mut args = vec!["throughput".to_string()];
        for port in 1..=MAX_NODES + 1 {
            args.extend(["--addr".into(), format!("127.0.0.1:{port}")]);
            args.extend(["--pin".into(), "aa".into()]);
        }
        let o = Options::try_parse_from(["hush-load".to_string()].into_iter().chain(args)).unwrap();
        assert_eq!(o.nodes(), Err(NodeError::TooMany(MAX_NODES + 1)));
    }

    #[test]
    fn addr_is_refused_against_the_ceiling() {
        let o = parse(&["ceiling", "--addr", "127.0.0.1:1", "--pin", "aa"]);
        assert_eq!(o.nodes(), Err(NodeError::Ceiling));
        assert!(matches!(o.check(), Err(Error::Nodes(NodeError::Ceiling))));
        // --vs-ceiling drives the given relay nodes in its relay run.
        let o = parse(&[
            "throughput",
            "--vs-ceiling",
            "--addr",
            "127.0.0.1:1",
            "--pin",
            "aa",
            "--addr",
            "127.0.0.1:2",
            "--pin",
            "bb",
        ]);
        assert!(o.check().is_ok());
        assert_eq!(o.nodes().map(|n| n.len()), Ok(2));
    }
}
