//! What a run measured, and how it is printed.

use std::collections::BTreeMap;
use std::fmt;

use crate::{Mode, Target};

/// Percentiles of a set of latencies (µs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median (µs).
    pub p50: u32,
    /// 90th percentile (µs).
    pub p90: u32,
    /// 99th percentile (µs).
    pub p99: u32,
    /// Largest (µs).
    pub max: u32,
}

impl Percentiles {
    /// Sorts `v` and takes its percentiles; `None` when empty.
    pub fn of(v: &mut [u32]) -> Option<Self> {
        v.sort_unstable();
        let last = v.len().checked_sub(1)?;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let at = |q: f64| {
            v.get(((last as f64) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        Some(Self {
            count: v.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: v.last().copied().unwrap_or(0),
        })
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |us: u32| f64::from(us) / 1000.0;
        write!(
            f,
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max),
            self.count
        )
    }
}

/// Send → receive latency over several relay nodes, split by whether the sender and the
/// recipient were connected to the same node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeSplit {
    /// Relay nodes driven.
    pub nodes: usize,
    /// Deliveries (of envelopes sent during the measurement) between devices on the same node.
    pub same_node: Option<Percentiles>,
    /// Deliveries (of envelopes sent during the measurement) between devices on different nodes.
    pub cross_node: Option<Percentiles>,
}

impl NodeSplit {
    /// The split of `nodes` nodes from its two sets of samples (µs; sorted in place).
    pub fn of(nodes: usize, same_node: &mut [u32], cross_node: &mut [u32]) -> Self {
        Self {
            nodes,
            same_node: Percentiles::of(same_node),
            cross_node: Percentiles::of(cross_node),
        }
    }
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The mode.
    pub mode: Mode,
    /// Which server was driven.
    pub target: Target,
    /// That server, in words (process, address, store).
    pub relay: String,
    /// Accounts created.
    pub accounts: usize,
    /// Time taken to create them (s).
    pub account_setup_s: f64,
    /// Authenticated connections.
    pub connections: usize,
    /// Time taken to connect and authenticate them all (s).
    pub connect_s: f64,
    /// Sending devices.
    pub senders: usize,
    /// Envelope body size (bytes).
    pub size: usize,
    /// Envelopes per send.
    pub envelopes_per_send: usize,
    /// Sends in flight per sender at most.
    pub window: usize,
    /// Target total rate (latency mode).
    pub rate: Option<f64>,
    /// Length of the measurement (s).
    pub measured_s: f64,
    /// Sends answered with `SendResult`, in all.
    pub acked: u64,
    /// Sends answered with `SendResult` during the measurement.
    pub acked_in_window: u64,
    /// Envelopes of acknowledged sends.
    pub envelopes_acked: u64,
    /// Envelopes delivered to recipients, in all.
    pub delivered: u64,
    /// Deliveries of envelopes sent during the measurement.
    pub delivered_in_window: u64,
    /// Envelopes of acknowledged sends never delivered (after the grace time).
    pub undelivered: u64,
    /// Sends never answered (after the grace time).
    pub unanswered: u64,
    /// Send → delivery latency of envelopes sent during the measurement.
    pub delivery: Option<Percentiles>,
    /// Send → `SendResult` latency of sends made during the measurement.
    pub durable: Option<Percentiles>,
    /// `delivery` split into same-node and cross-node deliveries (runs over several relay nodes).
    pub by_node: Option<NodeSplit>,
    /// Refused requests by error code.
    pub refusals: BTreeMap<String, u64>,
    /// The first errors seen.
    pub errors: Vec<String>,
    /// Errors seen in all.
    pub error_count: u64,
    /// Relay RSS after the accounts were made, before the connections (KiB).
    pub rss_before_kib: Option<u64>,
    /// Relay RSS once connected (idle) or at the start of the measurement (KiB).
    pub rss_connected_kib: Option<u64>,
    /// Relay RSS at the end (KiB).
    pub rss_end_kib: Option<u64>,
    /// Relay CPU during the measurement (cores).
    pub relay_cpu: Option<f64>,
    /// This tool's CPU during the measurement (cores).
    pub load_cpu: Option<f64>,
    /// Connections still open at the end (idle mode).
    pub alive: usize,
}

impl Default for Report {
    fn default() -> Self {
        Self {
            mode: Mode::Throughput,
            target: Target::Relay,
            relay: String::new(),
            accounts: 0,
            account_setup_s: 0.0,
            connections: 0,
            connect_s: 0.0,
            senders: 0,
            size: 0,
            envelopes_per_send: 1,
            window: 0,
            rate: None,
            measured_s: 0.0,
            acked: 0,
            acked_in_window: 0,
            envelopes_acked: 0,
            delivered: 0,
            delivered_in_window: 0,
            undelivered: 0,
            unanswered: 0,
            delivery: None,
            durable: None,
            by_node: None,
            refusals: BTreeMap::new(),
            errors: Vec::new(),
            error_count: 0,
            rss_before_kib: None,
            rss_connected_kib: None,
            rss_end_kib: None,
            relay_cpu: None,
            load_cpu: None,
            alive: 0,
        }
    }
}

impl Report {
    /// Durable sends per second during the measurement.
    #[allow(clippy::cast_precision_loss)]
    pub fn sends_per_s(&self) -> f64 {
        self.acked_in_window as f64 / self.measured_s.max(f64::MIN_POSITIVE)
    }

    /// Envelopes per second during the measurement.
    #[allow(clippy::cast_precision_loss)]
    pub fn envelopes_per_s(&self) -> f64 {
        self.sends_per_s() * self.envelopes_per_send as f64
    }

    /// Connections set up (handshake and authentication) per second.
    #[allow(clippy::cast_precision_loss)]
    pub fn connections_per_s(&self) -> f64 {
        self.connections as f64 / self.connect_s.max(f64::MIN_POSITIVE)
    }

    /// Server CPU time per durable send (µs), during the measurement.
    pub fn cpu_us_per_send(&self) -> Option<f64> {
        let sends = self.sends_per_s();
        (self.mode != Mode::Idle && sends > 0.0)
            .then_some(self.relay_cpu?)
            .map(|cores| cores / sends * 1e6)
    }

    /// Server RSS growth per connection (bytes), from before the connections to `at`.
    #[allow(clippy::cast_precision_loss)]
    pub fn rss_per_connection(&self, at: Option<u64>) -> Option<f64> {
        let (b, a) = (self.rss_before_kib?, at?);
        (self.connections > 0).then(|| (a as f64 - b as f64) * 1024.0 / self.connections as f64)
    }

    /// Whether the run went cleanly: no error, no refusal, nothing lost.
    pub fn ok(&self) -> bool {
        self.error_count == 0
            && self.refusals.is_empty()
            && self.undelivered == 0
            && self.unanswered == 0
            && (self.mode != Mode::Idle || self.alive == self.connections)
    }
}

impl fmt::Display for Report {
    #[allow(clippy::cast_precision_loss)]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::Throughput => "throughput",
            Mode::Latency => "latency",
            Mode::Idle => "idle",
            Mode::Fanout => "fanout",
            Mode::Ceiling => "ceiling",
        };
        let target = match self.target {
            Target::Relay => "relay",
            Target::Ceiling => "ceiling server",
        };
        let per_s = |n: usize, s: f64| n as f64 / s.max(f64::MIN_POSITIVE);
        writeln!(f, "hush-load {mode} against the {target}")?;
        writeln!(f, "  server:               {}", self.relay)?;
        writeln!(
            f,
            "  accounts:             {} created in {:.2} s ({:.0}/s)",
            self.accounts,
            self.account_setup_s,
            per_s(self.accounts, self.account_setup_s)
        )?;
        writeln!(
            f,
            "  connections:          {} connected + authenticated in {:.2} s ({:.0}/s)",
            self.connections,
            self.connect_s,
            per_s(self.connections, self.connect_s)
        )?;
        if self.mode != Mode::Idle {
            writeln!(
                f,
                "  traffic:              {} senders, {} B bodies, {} envelope(s) per send, window {}{}",
                self.senders,
                self.size,
                self.envelopes_per_send,
                self.window,
                self.rate
                    .map(|r| format!(", target {r:.0} sends/s"))
                    .unwrap_or_default()
            )?;
            writeln!(
                f,
                "  durable sends:        {} in {:.1} s = {:.0} sends/s ({:.0} envelopes/s)",
                self.acked_in_window,
                self.measured_s,
                self.sends_per_s(),
                self.envelopes_per_s()
            )?;
            writeln!(
                f,
                "  totals:               {} sends acknowledged, {} envelopes, {} delivered, {} undelivered, {} unanswered",
                self.acked, self.envelopes_acked, self.delivered, self.undelivered, self.unanswered
            )?;
            match &self.delivery {
                Some(p) => writeln!(f, "  send -> receive:      {p}")?,
                None => writeln!(f, "  send -> receive:      no samples")?,
            }
            match &self.durable {
                Some(p) => writeln!(f, "  send -> SendResult:   {p}")?,
                None => writeln!(f, "  send -> SendResult:   no samples")?,
            }
            if let Some(split) = &self.by_node {
                write!(f, "{split}")?;
            }
        } else {
            writeln!(
                f,
                "  held:                 {:.1} s; {} of {} still open",
                self.measured_s, self.alive, self.connections
            )?;
        }
        let kib = |v: Option<u64>| {
            v.map_or("n/a".to_string(), |k| {
                format!("{:.1} MiB", k as f64 / 1024.0)
            })
        };
        writeln!(
            f,
            "  server RSS:           before connections {}, {} {}, end {}",
            kib(self.rss_before_kib),
            if self.mode == Mode::Idle {
                "connected"
            } else {
                "measurement start"
            },
            kib(self.rss_connected_kib),
            kib(self.rss_end_kib)
        )?;
        let per =
            |v: Option<f64>| v.map_or("n/a".to_string(), |b| format!("{:.1} KiB", b / 1024.0));
        writeln!(
            f,
            "  server RSS/connection: {} (connected), {} (end)",
            per(self.rss_per_connection(self.rss_connected_kib)),
            per(self.rss_per_connection(self.rss_end_kib))
        )?;
        let cores = |v: Option<f64>| v.map_or("n/a".to_string(), |c| format!("{c:.2} cores"));
        writeln!(
            f,
            "  CPU (measurement):    server {}{}, hush-load {}",
            cores(self.relay_cpu),
            self.cpu_us_per_send()
                .map(|us| format!(" ({us:.1} µs per durable send)"))
                .unwrap_or_default(),
            cores(self.load_cpu)
        )?;
        if self.refusals.is_empty() {
            writeln!(f, "  refusals:             none")?;
        } else {
            let r: Vec<String> = self
                .refusals
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(f, "  refusals:             {}", r.join(", "))?;
        }
        writeln!(f, "  errors:               {}", self.error_count)?;
        for e in &self.errors {
            writeln!(f, "    {e}")?;
        }
        Ok(())
    }
}

impl fmt::Display for NodeSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  relay nodes:          {} (device i on node i mod {}); send -> receive by node:",
            self.nodes, self.nodes
        )?;
        for (name, p) in [
            ("same node", &self.same_node),
            ("cross node", &self.cross_node),
        ] {
            match p {
                Some(p) => writeln!(f, "    {name:<19} {p}")?,
                None => writeln!(f, "    {name:<19} no samples")?,
            }
        }
        Ok(())
    }
}

/// The same workload against the ceiling server and against the relay.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The run against the ceiling server (first).
    pub ceiling: Report,
    /// The run against the relay (second).
    pub relay: Report,
}

impl Comparison {
    /// Whether both runs went cleanly.
    pub fn ok(&self) -> bool {
        self.ceiling.ok() && self.relay.ok()
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (c, r) = (&self.ceiling, &self.relay);
        write!(f, "{c}\n{r}\n")?;
        writeln!(
            f,
            "relay against the ceiling (same settings, one after the other; relay ÷ ceiling):"
        )?;
        writeln!(
            f,
            "  {:<34} {:>12} {:>12} {:>9}",
            "", "ceiling", "relay", "ratio"
        )?;
        let row = |f: &mut fmt::Formatter<'_>,
                   name: &str,
                   a: Option<f64>,
                   b: Option<f64>,
                   digits: usize| {
            let show = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.digits$}"));
            let ratio = a
                .zip(b)
                .filter(|(a, _)| *a > 0.0)
                .map_or("n/a".to_string(), |(a, b)| format!("{:.3}", b / a));
            writeln!(f, "  {name:<34} {:>12} {:>12} {ratio:>9}", show(a), show(b))
        };
        let traffic = c.mode != Mode::Idle;
        let when = |v: f64| traffic.then_some(v);
        let ms = |p: Option<Percentiles>, q: fn(&Percentiles) -> u32| {
            p.map(|p| f64::from(q(&p)) / 1000.0)
        };
        row(
            f,
            "durable sends/s",
            when(c.sends_per_s()),
            when(r.sends_per_s()),
            0,
        )?;
        row(
            f,
            "envelopes/s",
            when(c.envelopes_per_s()),
            when(r.envelopes_per_s()),
            0,
        )?;
        row(
            f,
            "send -> receive p50 (ms)",
            ms(c.delivery, |p| p.p50),
            ms(r.delivery, |p| p.p50),
            2,
        )?;
        row(
            f,
            "send -> receive p99 (ms)",
            ms(c.delivery, |p| p.p99),
            ms(r.delivery, |p| p.p99),
            2,
        )?;
        let kib = |rep: &Report| {
            rep.rss_per_connection(rep.rss_connected_kib)
                .map(|b| b / 1024.0)
        };
        row(
            f,
            if traffic {
                "RSS per connection (KiB)"
            } else {
                "RSS per idle connection (KiB)"
            },
            kib(c),
            kib(r),
            1,
        )?;
        row(
            f,
            "connection set-up (per s)",
            Some(c.connections_per_s()),
            Some(r.connections_per_s()),
            0,
        )?;
        row(
            f,
            "server CPU per durable send (µs)",
            c.cpu_us_per_send(),
            r.cpu_us_per_send(),
            1,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_split_takes_percentiles_of_each_side() {
        let mut same: Vec<u32> = (1..=100).rev().collect();
        let mut cross: Vec<u32> = (1..=10).map(|x| x * 1000).collect();
        let split = NodeSplit::of(3, &mut same, &mut cross);
        assert_eq!(split.nodes, 3);
        let s = split.same_node.unwrap();
        assert_eq!((s.count, s.p50, s.p99, s.max), (100, 51, 99, 100));
        let c = split.cross_node.unwrap();
        assert_eq!((c.count, c.p50, c.p99, c.max), (10, 6000, 10_000, 10_000));
        let none = NodeSplit::of(2, &mut [], &mut []);
        assert_eq!((none.same_node, none.cross_node), (None, None));
    }

    #[test]
    fn the_split_is_printed_only_over_several_nodes() {
        let mut one = Report {
            delivery: Percentiles::of(&mut [1000, 2000]),
            ..Report::default()
        };
        let text = one.to_string();
        assert!(!text.contains("relay nodes"), "{text}");
        assert!(!text.contains("cross node"), "{text}");

        one.by_node = Some(NodeSplit::of(2, &mut [1000], &mut []));
        let text = one.to_string();
        assert!(
            text.contains("relay nodes:          2 (device i on node i mod 2)"),
            "{text}"
        );
        assert!(
            text.contains("    same node           p50 1.00 ms, p90 1.00 ms, p99 1.00 ms, max 1.00 ms (1 samples)"),
            "{text}"
        );
        assert!(
            text.contains("    cross node          no samples"),
            "{text}"
        );
        // The existing lines are unchanged, the split comes after them.
        let receive = text.find("  send -> receive:").unwrap();
        let durable = text.find("  send -> SendResult:").unwrap();
        let split = text.find("  relay nodes:").unwrap();
        assert!(receive < durable && durable < split, "{text}");
    }
}
