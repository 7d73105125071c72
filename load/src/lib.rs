//! `hush-load`: drives a Hush relay over real QUIC on loopback and reports what it sustained.
//!
//! Modes (see `docs/` and `BENCHMARKS.md` for how they are used):
//! * `throughput`: `--devices` single-device accounts, the first `--senders` of them each sending
//!   flat out to another (`recipient = (i + devices/2) % devices`) with at most `--window` sends in
//!   flight; a send counts when its `SendResult` (durable) arrives.
//! * `latency`: the same topology at a fixed total `--rate` (sends per second, spread evenly over
//!   the senders); reports send → receive latency.
//! * `idle`: `--connections` authenticated connections (accounts of `--devices-per-account`
//!   devices) kept open with QUIC keep-alives for `--duration`; reports the relay's RSS per
//!   connection.
//! * `fanout`: group-style sends: `--recipients` accounts of `--fanout-devices` devices each, all
//!   connected; every send of the `--senders` single-device accounts carries one envelope per device
//!   of its recipient account (the relay's fan-out unit: one send, one atomic enqueue of D
//!   envelopes).
//! * `ceiling`: `throughput` against the ceiling server (below).
//!
//! `--target ceiling` runs any mode against the *ceiling server* ([`ceiling`]) instead of the
//! relay: this executable started again as a child process (`hush-load ceiling-server`), on the
//! relay's QUIC transport settings and UDP socket, doing no more per request than bare quinn and
//! sled must (no checks, no limits, one insert per envelope, group-committed flushes).
//! `--vs-ceiling` runs the mode against the ceiling and then against the relay with the same
//! settings and reports both and their ratios ([`compare`]).
//!
//! `--addr` repeated (with one `--pin`, and optionally one `--relay-pid`, per address) drives the
//! nodes of a relay cluster, which share one store: connection i goes to node i mod N (each node
//! has its own `--endpoints` client endpoints), a sender's recipient is shifted so that about one
//! pair in N shares a node, the report splits send → receive latency into same-node and
//! cross-node deliveries ([`NodeSplit`]), and RSS and CPU are summed over the `--relay-pid`s.
//!
//! Every body starts with the send's timestamp (ns since the run started, u64 big-endian), so the
//! receiving reader measures end-to-end latency; receivers acknowledge what they get in batches
//! (every `--ack-interval-ms`). All traffic stays on 127.0.0.1 / ::1 and every run is bounded in
//! time and counts.

// A load generator is an I/O shell: it reads the clock and the system RNG.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod ceiling;
mod conn;
mod options;
mod relay;
mod report;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hush_proto::relay_api as api;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::conn::{Link, Samples, Shared};
pub use crate::options::{LoadTransport, MAX_NODES, Mode, Node, NodeError, Options, Target};
use crate::relay::ServerChild;
pub use crate::report::{Comparison, NodeSplit, Percentiles, Report};
use hush_testkit::TestAccount as Account;

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--addr`, `--pin` and `--relay-pid` do not describe the relay nodes to drive.
    #[error(transparent)]
    Nodes(#[from] NodeError),
    /// Any other reason, in words.
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub(crate) fn new(msg: String) -> Self {
        Self::Other(msg)
    }
}

/// Time given, after the measurement, for answers and deliveries still on their way.
const GRACE: Duration = Duration::from_secs(10);

/// Who is on the relay for this run.
struct Plan {
    accounts: Vec<Account>,
    /// Every connection: (account index, device id).
    devices: Vec<(usize, u32)>,
    /// Every sender: (connection index, recipient account index).
    senders: Vec<(usize, usize)>,
}

/// Who is on the relay when connections are dealt over `nodes` relay nodes.
fn plan(opts: &Options, nodes: usize) -> Plan {
    match opts.workload() {
        Mode::Throughput | Mode::Latency | Mode::Ceiling => {
            let n = opts.devices;
            Plan {
                accounts: (0..n).map(|_| Account::new(1)).collect(),
                devices: (0..n).map(|i| (i, 1)).collect(),
                senders: (0..opts.senders)
                    .map(|i| (i, recipient(i, n, nodes)))
                    .collect(),
            }
        }
        Mode::Fanout => {
            let g = opts.recipients;
            let d = opts.fanout_devices;
            let mut accounts: Vec<Account> = (0..g).map(|_| Account::new(d)).collect();
            let mut devices: Vec<(usize, u32)> = (0..g)
                .flat_map(|a| (1..=d).map(move |dev| (a, dev)))
                .collect();
            let mut senders = Vec::new();
            for j in 0..opts.senders {
                accounts.push(Account::new(1));
                senders.push((devices.len(), j % g));
                devices.push((g + j, 1));
            }
            Plan {
                accounts,
                devices,
                senders,
            }
        }
        Mode::Idle => {
            let per = opts.devices_per_account as usize;
            let k = opts.connections;
            let n_accounts = k.div_ceil(per);
            let accounts: Vec<Account> = (0..n_accounts)
                .map(|a| {
                    let left = k - a * per;
                    Account::new(u32::try_from(left.min(per)).unwrap_or(1))
                })
                .collect();
            let devices = accounts
                .iter()
                .enumerate()
                .flat_map(|(a, acc)| acc.device_ids().into_iter().map(move |d| (a, d)))
                .collect();
            Plan {
                accounts,
                devices,
                senders: Vec::new(),
            }
        }
    }
}

/// The device sender `i` of `n` single-device accounts sends to: the one half-way round. Over
/// several nodes it is shifted on by `(i / nodes) % nodes`, so that about one pair in `nodes`
/// shares a node (a fixed shift puts every pair on one node, or none on one). Never the sender.
fn recipient(i: usize, n: usize, nodes: usize) -> usize {
    let n = n.max(1);
    let shift = if nodes > 1 { (i / nodes) % nodes } else { 0 };
    let r = (i + n / 2 + shift) % n;
    if r == i { (r + 1) % n } else { r }
}

/// Where connection `i` goes: connections are dealt round-robin over the relay nodes (connection
/// i to node i mod `nodes`), and each node's over its client endpoints. (node, endpoint).
fn route(i: usize, nodes: usize, endpoints: usize) -> (usize, usize) {
    let nodes = nodes.max(1);
    (i % nodes, (i / nodes) % endpoints.max(1))
}

/// The client side of one relay node: its address and the client endpoints pinned to its
/// certificate.
struct NodeClient {
    addr: SocketAddr,
    endpoints: Vec<quinn::Endpoint>,
    /// Over TCP: the pin (no endpoints then).
    tcp_pin: Option<String>,
}

/// Where connection `i` goes: (node index, its address), and how it gets there (the QUIC
/// endpoint it leaves from, or TLS over TCP).
fn pick(clients: &[NodeClient], i: usize) -> Result<((usize, SocketAddr), conn::Dial), Error> {
    let per_node = clients.first().map_or(1, |c| c.endpoints.len().max(1));
    let (node, ep) = route(i, clients.len(), per_node);
    let client = clients
        .get(node)
        .ok_or_else(|| Error::new("no such relay node".into()))?;
    if let Some(pin) = &client.tcp_pin {
        return Ok(((node, client.addr), conn::Dial::Tcp(pin.clone())));
    }
    let ep = client
        .endpoints
        .get(ep)
        .cloned()
        .ok_or_else(|| Error::new("no endpoint".into()))?;
    Ok(((node, client.addr), conn::Dial::Quic(ep)))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Runs one measurement against `opts.target()`. Must be called inside a multi-threaded tokio
/// runtime. With `--vs-ceiling`, use [`compare`].
pub async fn run(opts: &Options) -> Result<Report, Error> {
    opts.check()?;
    if opts.vs_ceiling {
        return Err(Error::new(
            "--vs-ceiling runs two measurements: see compare()".into(),
        ));
    }
    run_one(&opts.against(opts.target())).await
}

/// Runs the mode against the ceiling server and then against the relay, with the same settings,
/// one after the other. Must be called inside a multi-threaded tokio runtime.
pub async fn compare(opts: &Options) -> Result<Comparison, Error> {
    opts.check()?;
    let ceiling = run_one(&opts.against(Target::Ceiling)).await?;
    let relay = run_one(&opts.against(Target::Relay)).await?;
    Ok(Comparison { ceiling, relay })
}

/// One measurement; `opts` has a workload mode and names its target.
async fn run_one(opts: &Options) -> Result<Report, Error> {
    // The ceiling server is always a child; a relay is one unless running nodes are given.
    let given = match opts.target {
        Target::Ceiling => Vec::new(),
        Target::Relay => opts.nodes()?,
    };
    let plan = plan(opts, given.len());
    let max_dpa = plan
        .accounts
        .iter()
        .map(|a| a.devices.len())
        .max()
        .unwrap_or(1);
    let (child, nodes) = match opts.target {
        Target::Ceiling => {
            let bin = match &opts.ceiling_bin {
                Some(b) => b.clone(),
                None => relay::default_ceiling_bin()?,
            };
            let c = ServerChild::spawn_ceiling(&bin, &opts.store)?;
            let node = c.node();
            (Some(c), vec![node])
        }
        Target::Relay if !given.is_empty() => (None, given),
        Target::Relay => {
            let bin = match &opts.relay_bin {
                Some(b) => b.clone(),
                None => relay::default_relay_bin()?,
            };
            let flags = opts.relay_flags(
                plan.devices.len(),
                u32::try_from(max_dpa).unwrap_or(u32::MAX),
            );
            let c = ServerChild::spawn(&bin, &flags)?;
            let node = c.node();
            (Some(c), vec![node])
        }
    };
    let pids: Vec<u32> = nodes.iter().filter_map(|n| n.pid).collect();
    let relay_desc = match (&child, opts.target) {
        (Some(c), Target::Ceiling) => format!(
            "ceiling (bare quinn + {}, no relay logic) child pid {} on {}",
            if opts.store == "sled" {
                "sled"
            } else {
                "no store"
            },
            c.pid(),
            c.addr
        ),
        (Some(c), Target::Relay) => format!(
            "hush-relay child pid {} on {} (store {})",
            c.pid(),
            c.addr,
            opts.store
        ),
        (None, _) => match nodes.as_slice() {
            [one] => format!("external relay on {}", one.addr),
            all => format!(
                "{} external relay nodes on {}",
                all.len(),
                all.iter()
                    .map(|n| n.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    // Which transport carried the run (the ceiling server speaks QUIC alone).
    let relay_desc = match opts.transport {
        LoadTransport::Quic => format!("{relay_desc}, over QUIC"),
        LoadTransport::Tcp => format!("{relay_desc}, over TLS 1.3 on TCP"),
    };

    let n_nodes = nodes.len();
    let sender_nodes = if n_nodes > 1 {
        plan.senders
            .iter()
            .map(|(c, _)| route(*c, n_nodes, opts.endpoints).0)
            .collect()
    } else {
        Vec::new()
    };
    let shared = Shared::new(sender_nodes);
    let keep_alive = Duration::from_millis(opts.keep_alive_ms.max(1));
    let mut clients = Vec::with_capacity(n_nodes);
    for node in &nodes {
        if opts.transport == LoadTransport::Tcp {
            clients.push(NodeClient {
                addr: node.addr,
                endpoints: Vec::new(),
                tcp_pin: Some(node.pin.clone()),
            });
            continue;
        }
        let cc = conn::client_config(&node.pin, keep_alive)?;
        clients.push(NodeClient {
            addr: node.addr,
            endpoints: (0..opts.endpoints)
                .map(|_| conn::endpoint(node.addr, cc.clone()))
                .collect::<Result<_, _>>()?,
            tcp_pin: None,
        });
    }
    let ack_interval = Duration::from_millis(opts.ack_interval_ms);
    let accounts = Arc::new(plan.accounts);

    // Accounts, created over a few set-up connections (pipelined).
    let t = tokio::time::Instant::now();
    create_accounts(&clients, &shared, &accounts).await?;
    let account_setup_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = relay::total_rss_kib(&pids);

    // Every device's connection and authentication.
    let t = tokio::time::Instant::now();
    let links = connect_all(
        opts,
        &clients,
        &shared,
        &accounts,
        &plan.devices,
        ack_interval,
    )
    .await?;
    let connect_s = t.elapsed().as_secs_f64();

    let mut report = Report {
        mode: opts.mode,
        target: opts.target,
        relay: relay_desc,
        accounts: accounts.len(),
        account_setup_s,
        connections: links.len(),
        connect_s,
        senders: plan.senders.len(),
        size: opts.size,
        envelopes_per_send: match opts.mode {
            Mode::Fanout => opts.fanout_devices as usize,
            _ => 1,
        },
        window: opts.window,
        rate: (opts.mode == Mode::Latency).then_some(opts.rate),
        measured_s: opts.duration,
        rss_before_kib,
        ..Report::default()
    };

    if opts.mode == Mode::Idle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        report.rss_connected_kib = relay::total_rss_kib(&pids);
        let cpu0 = relay::total_cpu_seconds(&pids);
        tokio::time::sleep(secs(opts.duration)).await;
        report.relay_cpu = cpu0
            .zip(relay::total_cpu_seconds(&pids))
            .map(|(a, b)| (b - a) / opts.duration);
        report.rss_end_kib = relay::total_rss_kib(&pids);
        report.alive = links.iter().filter(|(l, _)| l.is_open()).count();
        if report.alive < links.len() {
            shared.error(format!(
                "{} of {} connections closed while idle",
                links.len() - report.alive,
                links.len()
            ));
        }
    } else {
        traffic(
            opts,
            &shared,
            &accounts,
            &plan.senders,
            &links,
            &pids,
            &mut report,
        )
        .await;
    }

    // Close everything; the readers hand back their samples.
    for (l, _) in &links {
        l.close();
    }
    let mut samples = Samples::default();
    for (_, r) in links {
        if let Ok(s) = r.await {
            samples.extend(s);
        }
    }
    for e in clients.iter().flat_map(|c| &c.endpoints) {
        e.wait_idle().await;
    }
    report.delivery = Percentiles::of(&mut samples.delivery);
    report.durable = Percentiles::of(&mut samples.durable);
    report.by_node = (n_nodes > 1)
        .then(|| NodeSplit::of(n_nodes, &mut samples.same_node, &mut samples.cross_node));
    report.acked = shared.acked.load(Ordering::Relaxed);
    report.acked_in_window = shared.acked_in_window.load(Ordering::Relaxed);
    report.envelopes_acked = shared.envelopes_acked.load(Ordering::Relaxed);
    report.delivered = shared.delivered.load(Ordering::Relaxed);
    report.delivered_in_window = shared.delivered_in_window.load(Ordering::Relaxed);
    report.refusals = shared.refusals();
    report.errors = shared.errors();
    report.error_count = shared.error_count.load(Ordering::Relaxed);
    drop(child);
    Ok(report)
}

/// Creates the accounts over up to 4 set-up connections, dealt over the nodes like the devices'.
async fn create_accounts(
    clients: &[NodeClient],
    shared: &Arc<Shared>,
    accounts: &Arc<Vec<Account>>,
) -> Result<(), Error> {
    // Over TCP a node has no endpoints: one set-up connection each.
    let endpoints: usize = clients.iter().map(|c| c.endpoints.len().max(1)).sum();
    let mut setup = Vec::new();
    for k in 0..endpoints.min(4) {
        let (to, ep) = pick(clients, k)?;
        setup.push(Link::connect(&ep, to, Arc::clone(shared), Duration::from_millis(20)).await?);
    }
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = JoinSet::new();
    for i in 0..accounts.len() {
        let Some((link, _)) = setup.get(i % setup.len().max(1)) else {
            return Err(Error::new("no set-up connection".into()));
        };
        let link = link.clone();
        let accounts = Arc::clone(accounts);
        let gate = Arc::clone(&gate);
        tasks.spawn(async move {
            let _permit = gate
                .acquire()
                .await
                .map_err(|_| Error::new("gate closed".into()))?;
            let list = accounts
                .get(i)
                .map(Account::signed_list)
                .ok_or_else(|| Error::new("no such account".into()))?;
            link.create_account(list).await
        });
    }
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(Error::new(format!("set-up task: {e}"))),
        }
    }
    for (l, r) in setup {
        l.close();
        let _ = r.await;
    }
    result
}

type Connected = Vec<(Link, JoinHandle<Samples>)>;

async fn connect_all(
    opts: &Options,
    clients: &[NodeClient],
    shared: &Arc<Shared>,
    accounts: &Arc<Vec<Account>>,
    devices: &[(usize, u32)],
    ack_interval: Duration,
) -> Result<Connected, Error> {
    let gate = Arc::new(Semaphore::new(opts.connect_concurrency));
    let mut tasks = JoinSet::new();
    for (i, (a, d)) in devices.iter().enumerate() {
        let account = accounts
            .get(*a)
            .ok_or_else(|| Error::new("no such account".into()))?;
        let key = account
            .devices
            .iter()
            .find(|x| x.0 == *d)
            .map(|x| x.1.clone())
            .ok_or_else(|| Error::new("no such device".into()))?;
        let (id, dev) = (account.id(), *d);
        let (to, ep) = pick(clients, i)?;
        let shared = Arc::clone(shared);
        let gate = Arc::clone(&gate);
        tasks.spawn(async move {
            let _permit = gate
                .acquire()
                .await
                .map_err(|_| Error::new("gate closed".into()))?;
            let (link, reader) = Link::connect(&ep, to, shared, ack_interval).await?;
            link.authenticate(id, dev, &key).await?;
            link.set_delivery_token(id, dev).await?;
            Ok::<_, Error>((i, link, reader))
        });
    }
    let mut slots: Vec<Option<(Link, JoinHandle<Samples>)>> =
        (0..devices.len()).map(|_| None).collect();
    let mut first_err = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok((i, link, reader))) => {
                if let Some(s) = slots.get_mut(i) {
                    *s = Some((link, reader));
                }
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(Error::new(format!("connect task: {e}")));
            }
        }
    }
    if let Some(e) = first_err {
        for (l, _) in slots.iter().flatten() {
            l.close();
        }
        return Err(Error::new(format!("connection set-up failed: {e}")));
    }
    Ok(slots.into_iter().flatten().collect())
}

#[allow(clippy::too_many_arguments)]
async fn traffic(
    opts: &Options,
    shared: &Arc<Shared>,
    accounts: &Arc<Vec<Account>>,
    senders: &[(usize, usize)],
    links: &Connected,
    pids: &[u32],
    report: &mut Report,
) {
    let stop = CancellationToken::new();
    let t0 = shared.now_ns();
    let warm = secs(opts.warmup);
    let dur = secs(opts.duration);
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    shared.set_window(t0 + ns(warm), t0 + ns(warm) + ns(dur));
    // Latency mode: each sender sends every `period`, the senders staggered evenly.
    #[allow(clippy::cast_precision_loss)]
    let period = (opts.mode == Mode::Latency)
        .then(|| Duration::from_secs_f64(senders.len() as f64 / opts.rate));
    let mut tasks = JoinSet::new();
    let n_senders = u32::try_from(senders.len()).unwrap_or(u32::MAX).max(1);
    for (j, (conn_ix, to)) in senders.iter().enumerate() {
        let (Some((link, _)), Some(to)) = (links.get(*conn_ix), accounts.get(*to)) else {
            shared.error("sender without a connection".into());
            continue;
        };
        let offset = period
            .map(|p| p * u32::try_from(j).unwrap_or(0) / n_senders)
            .unwrap_or_default();
        let s = Sender {
            link: link.clone(),
            shared: Arc::clone(shared),
            recipient: to.id(),
            devices: to.device_ids(),
            index: u64::try_from(j).unwrap_or(0),
            size: opts.size,
            window: opts.window,
            period,
            offset,
        };
        tasks.spawn(s.run(stop.clone()));
    }
    tokio::time::sleep(warm).await;
    let cpu0 = (relay::total_cpu_seconds(pids), relay::cpu_seconds(None));
    report.rss_connected_kib = relay::total_rss_kib(pids);
    tokio::time::sleep(dur).await;
    let cpu1 = (relay::total_cpu_seconds(pids), relay::cpu_seconds(None));
    report.rss_end_kib = relay::total_rss_kib(pids);
    let d = dur.as_secs_f64();
    report.relay_cpu = cpu0.0.zip(cpu1.0).map(|(a, b)| (b - a) / d);
    report.load_cpu = cpu0.1.zip(cpu1.1).map(|(a, b)| (b - a) / d);
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    // Answers still on their way, then deliveries.
    let deadline = tokio::time::Instant::now() + GRACE;
    while shared.in_flight.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report.unanswered = shared.in_flight.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + GRACE;
    let missing = || {
        shared
            .envelopes_acked
            .load(Ordering::Relaxed)
            .saturating_sub(shared.delivered.load(Ordering::Relaxed))
    };
    while missing() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report.undelivered = missing();
}

struct Sender {
    link: Link,
    shared: Arc<Shared>,
    recipient: [u8; 32],
    devices: Vec<u32>,
    index: u64,
    size: usize,
    window: usize,
    period: Option<Duration>,
    offset: Duration,
}

impl Sender {
    async fn run(self, stop: CancellationToken) {
        let gate = Arc::new(Semaphore::new(self.window));
        let start = tokio::time::Instant::now() + self.offset;
        let period_ns = self
            .period
            .map(|p| u64::try_from(p.as_nanos()).unwrap_or(u64::MAX));
        let mut n: u64 = 0;
        loop {
            if let Some(p) = period_ns {
                let due = start + Duration::from_nanos(p.saturating_mul(n));
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep_until(due) => {}
                }
            }
            let permit = tokio::select! {
                () = stop.cancelled() => break,
                p = Arc::clone(&gate).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            if stop.is_cancelled() {
                break;
            }
            let at = self.shared.now_ns();
            let mut body = vec![0u8; self.size];
            if let Some(b) = body.get_mut(..8) {
                b.copy_from_slice(&at.to_be_bytes());
            }
            if let Some(b) = body.get_mut(8..16) {
                b.copy_from_slice(&self.index.to_be_bytes());
            }
            let mut client_id = self.index.to_be_bytes().to_vec();
            client_id.extend_from_slice(&n.to_be_bytes());
            let send = api::Send {
                client_id,
                targeted: false,
                recipient_account: self.recipient.to_vec(),
                envelopes: self
                    .devices
                    .iter()
                    .map(|d| api::OutEnvelope {
                        device_id: *d,
                        body: body.clone(),
                        delivery_token: conn::delivery_token(&self.recipient, *d).to_vec(),
                    })
                    .collect(),
            };
            if let Err(e) = self.link.send(send, at, permit) {
                self.shared.error(format!("send: {e}"));
                break;
            }
            n += 1;
            if period_ns.is_none() && n.is_multiple_of(16) {
                tokio::task::yield_now().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn options(args: &[&str]) -> Options {
        Options::try_parse_from(["hush-load"].iter().chain(args)).unwrap()
    }

    #[test]
    fn connections_are_dealt_round_robin_over_nodes_then_endpoints() {
        // One node: endpoint i mod E, as over a single relay.
        for i in 0..20 {
            assert_eq!(route(i, 1, 4), (0, i % 4));
            assert_eq!(route(i, 0, 4), (0, i % 4));
        }
        // Three nodes of two endpoints each.
        let got: Vec<(usize, usize)> = (0..8).map(|i| route(i, 3, 2)).collect();
        assert_eq!(
            got,
            [
                (0, 0),
                (1, 0),
                (2, 0),
                (0, 1),
                (1, 1),
                (2, 1),
                (0, 0),
                (1, 0)
            ]
        );
    }

    #[test]
    fn over_one_node_the_recipient_is_half_way_round() {
        let opts = options(&["throughput", "--devices", "10", "--senders", "7"]);
        for nodes in [0, 1] {
            let p = plan(&opts, nodes);
            let want: Vec<(usize, usize)> = (0..7).map(|i| (i, (i + 5) % 10)).collect();
            assert_eq!(p.senders, want);
        }
        assert_eq!(recipient(0, 2, 1), 1);
        assert_eq!(recipient(1, 2, 1), 0);
    }

    /// (same-node pairs, cross-node pairs) of a plan over `nodes` nodes.
    fn pairs(opts: &Options, nodes: usize) -> (usize, usize) {
        let p = plan(opts, nodes);
        let node = |c: usize| route(c, nodes, opts.endpoints).0;
        let same = p
            .senders
            .iter()
            .filter(|(from, to)| node(*from) == node(*to))
            .count();
        (same, p.senders.len() - same)
    }

    #[test]
    fn over_several_nodes_about_one_pair_in_n_shares_a_node() {
        let opts = options(&["throughput"]); // 200 devices, 100 senders
        assert_eq!(pairs(&opts, 1), (100, 0));
        assert_eq!(pairs(&opts, 2), (50, 50));
        let (same, cross) = pairs(&opts, 3);
        assert!((30..=37).contains(&same), "{same} {cross}");
        let (same, cross) = pairs(&opts, 4);
        assert!((22..=28).contains(&same), "{same} {cross}");
        // Odd half-way shifts too.
        let opts = options(&["latency", "--devices", "202", "--senders", "101"]);
        let (same, cross) = pairs(&opts, 2);
        assert!((45..=56).contains(&same), "{same} {cross}");
    }

    #[test]
    fn no_sender_sends_to_itself() {
        for n in 2..40 {
            for nodes in 1..=8 {
                for i in 0..n {
                    let r = recipient(i, n, nodes);
                    assert!(r < n && r != i, "n {n} nodes {nodes} i {i} -> {r}");
                }
            }
        }
    }

    #[test]
    fn fanout_recipients_are_spread_over_the_nodes() {
        let opts = options(&[
            "fanout",
            "--recipients",
            "1",
            "--fanout-devices",
            "4",
            "--senders",
            "2",
        ]);
        let p = plan(&opts, 2);
        assert_eq!(p.devices.len(), 6);
        // The recipient's 4 devices are connections 0..4: two on each node.
        let on = |n: usize| (0..4).filter(|c| route(*c, 2, 4).0 == n).count();
        assert_eq!((on(0), on(1)), (2, 2));
        assert_eq!(p.senders, [(4, 0), (5, 0)]);
    }
}
