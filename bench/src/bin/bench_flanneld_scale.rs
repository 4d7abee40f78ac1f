//! flanneld at scale, as a black box on a real etcd, in simulated hosts
//! (network namespaces on one bridge; nothing is added to the machine's
//! own namespace).
//!
//! Part 1, one node and N fake peers (N = 100, 1,000, 5,000 by default):
//! N leases loaded into etcd as upstream writes them (one etcd lease each),
//! then one agent started; measured: time until every peer is programmed,
//! memory, steady CPU, the latency of single lease changes, the repair of
//! kernel state deleted behind the agent's back, and whether the kernel
//! equals the store after a burst of lease churn. With `--upstream PATH`
//! the same run measures upstream's flanneld too, side by side.
//!
//! Part 2, a cluster: M agents (50 by default) on one etcd started at
//! once; time until every pair is routed, steady CPU of etcd and of the
//! agents, and how fast a node taken out of service is gone everywhere.
//!
//! usage: bench-flanneld-scale BIN_DIR [--sizes 100,1000,5000] [--agents 50]
//!        [--upstream PATH] [--only single|cluster]

#![allow(clippy::print_stdout)] // the figures are this program's output
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark set-up step that fails ends the run

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bench::cleanup::{self, Scratch};
use bench::etcd::Gateway;
use bench::kernel::{ClusterNet, Kernel, Mac, Peer, Want, format_mac, parse_mac};
use bench::process::{self, CpuSample, Proc};
use bench::stats::{self, percentile};
use conformance::{Etcd, TestNetns, Underlay};
use serde_json::{Value, json};

// ---- the set-up every scenario shares ------------------------------------

const PREFIX: &str = "/coreos.com/network";
const DEVICE: &str = "flannel.1";
/// The cluster network; agents take subnets from 10.1.0.0-10.9.255.0, the
/// fake peers from 10.100.0.0 on, so they never collide.
const NET: ClusterNet = ClusterNet {
    base: Ipv4Addr::new(10, 0, 0, 0),
    prefix: 8,
    subnet_len: 24,
};
const FAKE_SUBNETS: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 0);
/// The underlay: etcd on the switch at .0.1, hosts from .0.10, fake peers'
/// public addresses from .64.1 (nobody is there: vxlan entries only point
/// at them, and no traffic is sent).
const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const UNDERLAY_LEN: u8 = 16;
const FAKE_PUBLIC: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 0);
const LEASE_TTL: u64 = 24 * 3600;

fn config() -> Value {
    json!({"Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": "10.1.0.0",
           "SubnetMax": "10.9.255.0", "Backend": {"Type": "vxlan"}})
}

fn host_ip(h: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 168, 0, 10)) + h as u32)
}

fn started() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("[{:7.1} s] {}", started().elapsed().as_secs_f64(), format!($($arg)*))
    };
}

/// Polls `done` every `every` until it holds (the time since `from`) or
/// `limit` has passed since `from` (None).
fn poll_until(
    from: Instant,
    limit: Duration,
    every: Duration,
    mut done: impl FnMut() -> Result<bool, String>,
) -> Result<Option<Duration>, String> {
    loop {
        if done()? {
            return Ok(Some(from.elapsed()));
        }
        if from.elapsed() > limit {
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}

/// Which flanneld: ours or upstream's.
#[derive(Debug, Clone)]
struct Agent {
    label: &'static str,
    binary: PathBuf,
}

impl Agent {
    /// The flags both take (upstream v0.20's names).
    fn args(&self, etcd: &Etcd, subnet_file: &Path) -> Vec<String> {
        let mut args = vec![
            "--etcd-endpoints".into(),
            etcd.url().into(),
            "--iface".into(),
            "eth0".into(),
            "--subnet-file".into(),
            subnet_file.display().to_string(),
            "--ip-masq=false".into(),
        ];
        // Ours reports what its safety net costs on /metrics.
        if self.label == "ours" {
            args.extend(
                ["--healthz-ip", "127.0.0.1", "--healthz-port", METRICS_PORT].map(String::from),
            );
        }
        args
    }
}

const METRICS_PORT: &str = "18471";

/// The cost of our agent's last full comparison, from its /metrics (read
/// inside the node's namespace, over bash's /dev/tcp).
fn full_pass_ms(host: &TestNetns) -> Option<f64> {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{METRICS_PORT}; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"
    );
    let out = host.exec("bash", &["-c", &script]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("flannel_full_resync_last_microseconds "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|us| us / 1000.0)
}

/// A small deterministic generator (splitmix64): the same seed gives the
/// same leases and the same changes to every agent measured.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn lease_key(subnet: Ipv4Addr) -> String {
    format!("{PREFIX}/subnets/{subnet}-{}", NET.subnet_len)
}

/// A lease value as upstream writes it.
fn lease_value(public: Ipv4Addr, mac: &Mac) -> String {
    format!(
        r#"{{"PublicIP":"{public}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
        format_mac(mac)
    )
}

/// The peers the store holds, but for the one at `own` (a node's own lease).
fn store_peers(gw: &mut Gateway, own: &[Ipv4Addr]) -> Result<Vec<Peer>, String> {
    let mut out = Vec::new();
    for kv in gw.range_prefix(&format!("{PREFIX}/subnets/"))? {
        let Some(subnet) = kv
            .key
            .rsplit('/')
            .next()
            .and_then(|k| k.split_once('-'))
            .and_then(|(ip, _)| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let v: Value = serde_json::from_str(&kv.value)
            .map_err(|e| format!("lease {}: not JSON: {e}", kv.key))?;
        let public = v["PublicIP"].as_str().and_then(|s| s.parse().ok());
        let mac = v["BackendData"]["VtepMAC"].as_str().and_then(parse_mac);
        let (Some(public), Some(mac)) = (public, mac) else {
            continue;
        };
        if !own.contains(&public) {
            out.push(Peer {
                subnet,
                public,
                mac,
            });
        }
    }
    Ok(out)
}

/// The fake peers in the store, as this program wrote them.
#[derive(Debug)]
struct Fakes {
    rng: Rng,
    next_subnet: u32,
    next_ip: u32,
    macs: HashSet<Mac>,
    live: BTreeMap<Ipv4Addr, (i64, Peer)>,
}

impl Fakes {
    fn new(seed: u64) -> Fakes {
        Fakes {
            rng: Rng(seed),
            next_subnet: 0,
            next_ip: 0,
            macs: HashSet::new(),
            live: BTreeMap::new(),
        }
    }

    fn fresh_ip(&mut self) -> Ipv4Addr {
        loop {
            let ip = Ipv4Addr::from(u32::from(FAKE_PUBLIC) + self.next_ip);
            self.next_ip += 1;
            if !matches!(ip.octets()[3], 0 | 255) {
                return ip;
            }
        }
    }

    /// A new peer: the next free subnet, a new address, a random VTEP MAC
    /// (locally administered, unicast, unique).
    fn fresh_peer(&mut self) -> Peer {
        let subnet = Ipv4Addr::from(u32::from(FAKE_SUBNETS) + (self.next_subnet << 8));
        self.next_subnet += 1;
        let public = self.fresh_ip();
        let mac = loop {
            let b = self.rng.next().to_be_bytes();
            let mac = [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]];
            if self.macs.insert(mac) {
                break mac;
            }
        };
        Peer {
            subnet,
            public,
            mac,
        }
    }

    fn peers(&self) -> Vec<Peer> {
        self.live.values().map(|(_, p)| *p).collect()
    }

    fn len(&self) -> usize {
        self.live.len()
    }

    /// Writes `peer` as a new lease: an etcd lease of 24 h, then the key.
    fn write(gw: &mut Gateway, peer: &Peer) -> Result<i64, String> {
        let id = gw.grant(LEASE_TTL)?;
        gw.put(
            &lease_key(peer.subnet),
            &lease_value(peer.public, &peer.mac),
            id,
        )?;
        Ok(id)
    }

    /// Loads `n` new leases over `conns` connections at once.
    fn load(&mut self, etcd: &Etcd, n: usize, conns: usize) -> Result<(), String> {
        let peers: Vec<Peer> = (0..n).map(|_| self.fresh_peer()).collect();
        let mut gws = Vec::new();
        for _ in 0..conns {
            gws.push(bench::etcd::client(etcd)?);
        }
        let chunk = n.div_ceil(conns).max(1);
        let written: Vec<Result<Vec<(i64, Peer)>, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = peers
                .chunks(chunk)
                .zip(gws.iter_mut())
                .map(|(part, gw)| {
                    s.spawn(move || {
                        part.iter()
                            .map(|p| Self::write(gw, p).map(|id| (id, *p)))
                            .collect::<Result<Vec<_>, String>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a loader thread panicked".into()))
                })
                .collect()
        });
        for part in written {
            for (id, p) in part? {
                self.live.insert(p.subnet, (id, p));
            }
        }
        Ok(())
    }

    fn add(&mut self, gw: &mut Gateway) -> Result<Peer, String> {
        let p = self.fresh_peer();
        let id = Self::write(gw, &p)?;
        self.live.insert(p.subnet, (id, p));
        Ok(p)
    }

    fn pick(&mut self) -> Option<Ipv4Addr> {
        let i = self.rng.below(self.live.len());
        self.live.keys().nth(i).copied()
    }

    /// Removes a random peer's lease (revoking it deletes the key).
    fn remove(&mut self, gw: &mut Gateway) -> Result<Option<Peer>, String> {
        let Some(subnet) = self.pick() else {
            return Ok(None);
        };
        let Some((id, p)) = self.live.remove(&subnet) else {
            return Ok(None);
        };
        gw.revoke(id)?;
        Ok(Some(p))
    }

    /// Moves a random peer to a new public address (same lease, same MAC).
    fn modify(&mut self, gw: &mut Gateway) -> Result<Option<Peer>, String> {
        let Some(subnet) = self.pick() else {
            return Ok(None);
        };
        let public = self.fresh_ip();
        let Some((id, p)) = self.live.get_mut(&subnet) else {
            return Ok(None);
        };
        p.public = public;
        let (id, p) = (*id, *p);
        gw.put(&lease_key(p.subnet), &lease_value(p.public, &p.mac), id)?;
        Ok(Some(p))
    }
}

// ---- part 1: one node, N fake peers ---------------------------------------

/// A simulated host with etcd on its segment. Fields drop in order: the
/// agent first, the namespaces and the scratch directory last.
struct Node {
    agent: Option<Proc>,
    kernel: Kernel,
    gw: Gateway,
    etcd: Etcd,
    host: TestNetns,
    _net: Underlay,
    dir: Scratch,
}

/// The underlay with etcd on it and the network config written.
fn underlay(tag: &str) -> Result<(Underlay, Etcd, Gateway, Scratch), String> {
    let dir = Scratch::new(tag)?;
    let net = Underlay::new(tag);
    net.switch.ip(&[
        "addr",
        "add",
        &format!("{SWITCH_IP}/{UNDERLAY_LEN}"),
        "dev",
        "br0",
    ]);
    let etcd = bench::etcd::start(&net.switch, &SWITCH_IP.to_string(), dir.path())?;
    let mut gw = bench::etcd::client(&etcd)?;
    gw.put(&format!("{PREFIX}/config"), &config().to_string(), 0)?;
    Ok((net, etcd, gw, dir))
}

impl Node {
    fn new() -> Result<Node, String> {
        let (mut net, etcd, gw, dir) = underlay("s")?;
        let host = net.add_host("node", &[&format!("{}/{UNDERLAY_LEN}", host_ip(0))]);
        let kernel = Kernel::open(&host, DEVICE, NET)?;
        Ok(Node {
            agent: None,
            kernel,
            gw,
            etcd,
            host,
            _net: net,
            dir,
        })
    }

    fn start(&mut self, agent: &Agent) -> Result<(), String> {
        let args = agent.args(&self.etcd, &self.dir.path().join("subnet.env"));
        let log = self.dir.path().join(format!("{}.log", agent.label));
        self.agent = Some(Proc::spawn(&agent.binary, &args, &self.host, &log)?);
        Ok(())
    }

    fn pid(&self) -> Result<u32, String> {
        self.agent
            .as_ref()
            .map(Proc::pid)
            .ok_or_else(|| "no agent".to_string())
    }

    /// An error with the agent's last words when it is gone.
    fn check_alive(&mut self) -> Result<(), String> {
        let Some(a) = self.agent.as_mut() else {
            return Err("no agent".into());
        };
        if a.alive() {
            Ok(())
        } else {
            Err(format!(
                "the agent exited; its log ends:\n{}",
                a.log_tail(20)
            ))
        }
    }

    fn log_tail(&self) -> String {
        self.agent
            .as_ref()
            .map(|a| a.log_tail(10))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    Route,
    Fdb,
    Neighbour,
    Device,
}

impl Damage {
    fn name(self) -> &'static str {
        match self {
            Damage::Route => "route",
            Damage::Fdb => "fdb entry",
            Damage::Neighbour => "neighbour",
            Damage::Device => "vxlan device",
        }
    }
}

/// Every single-node figure of one agent at one size; None: not measured
/// (an earlier step failed, see `notes`), INFINITY: a deadline passed.
#[derive(Debug, Default)]
struct Single {
    load_s: Option<f64>,
    programmed_ms: Option<f64>,
    rss_mib: Option<f64>,
    peak_rss_mib: Option<f64>,
    threads: Option<u64>,
    steady_cpu: Option<f64>,
    /// Ours only: one full comparison of the kernel with the peers.
    full_pass_ms: Option<f64>,
    change_ms: Vec<f64>,
    repair_ms: Vec<(Damage, f64)>,
    repair_skipped: usize,
    churn_ops: usize,
    churn_rate: Option<f64>,
    churn_cpu: Option<f64>,
    churn_converged_ms: Option<f64>,
    churn_late: Option<String>,
    notes: Vec<String>,
}

const PROGRAM_LIMIT: Duration = Duration::from_secs(60);
const CHANGE_LIMIT: Duration = Duration::from_secs(5);
const REPAIR_LIMIT: Duration = Duration::from_secs(5);
const DEVICE_LIMIT: Duration = Duration::from_secs(10);
const CHANGES: usize = 100;
const DAMAGES: usize = 20;
const CHURN_RATE: usize = 100;
const CHURN_TIME: Duration = Duration::from_secs(30);
const CHURN_SETTLE: Duration = Duration::from_secs(5);
const STEADY: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(2);
const FAST_POLL: Duration = Duration::from_millis(2);
const POLL: Duration = Duration::from_millis(5);

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn cpu_over(pid: u32, d: Duration) -> Result<f64, String> {
    let a = process::cpu_sample(pid)?;
    std::thread::sleep(d);
    let b = process::cpu_sample(pid)?;
    Ok(process::cpu_percent(&a, &b))
}

fn single(agent: &Agent, n: usize) -> Single {
    let mut fig = Single::default();
    let mut node = match Node::new() {
        Ok(node) => node,
        Err(e) => {
            fig.notes.push(format!("set-up failed: {e}"));
            return fig;
        }
    };
    if let Err(e) = single_phases(agent, n, &mut node, &mut fig) {
        progress!("{} N={n}: {e}", agent.label);
        fig.notes.push(e);
        let tail = node.log_tail();
        if !tail.is_empty() {
            fig.notes.push(format!("agent log ends:\n{tail}"));
        }
    }
    if let Some(a) = node.agent.as_mut()
        && !a.stop()
    {
        fig.notes
            .push("the agent did not stop on SIGTERM within 5 s".into());
    }
    fig
}

fn single_phases(agent: &Agent, n: usize, node: &mut Node, fig: &mut Single) -> Result<(), String> {
    let label = agent.label;
    let mut fakes = Fakes::new(0x5eed_0000 + n as u64);
    let t = Instant::now();
    fakes.load(&node.etcd, n, 4)?;
    fig.load_s = Some(t.elapsed().as_secs_f64());
    progress!(
        "{label} N={n}: {n} leases loaded in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // Every peer programmed, from the spawn on.
    let want = Want::of(&fakes.peers());
    let t0 = Instant::now();
    node.start(agent)?;
    let programmed = poll_until(t0, PROGRAM_LIMIT, POLL, || {
        node.check_alive()?;
        Ok(node.kernel.diff(&want, true)?.is_empty())
    })?;
    match programmed {
        Some(d) => {
            fig.programmed_ms = Some(stats::ms(d));
            progress!(
                "{label} N={n}: all peers programmed after {:.0} ms",
                stats::ms(d)
            );
        }
        None => {
            let diff = node.kernel.diff(&want, false)?;
            fig.programmed_ms = Some(f64::INFINITY);
            return Err(format!(
                "not every peer programmed {} s after start: {}",
                PROGRAM_LIMIT.as_secs(),
                diff.summary()
            ));
        }
    }

    // Memory and steady CPU.
    std::thread::sleep(SETTLE);
    node.check_alive()?;
    let pid = node.pid()?;
    fig.rss_mib = Some(mib(process::rss_kib(pid)?));
    fig.peak_rss_mib = Some(mib(process::peak_rss_kib(pid)?));
    fig.threads = Some(process::threads(pid)?);
    fig.steady_cpu = Some(cpu_over(pid, STEADY)?);
    if agent.label == "ours" {
        fig.full_pass_ms = full_pass_ms(&node.host);
    }
    progress!(
        "{label} N={n}: RSS {:.1} MiB, steady CPU {:.3} %",
        fig.rss_mib.unwrap_or(0.0),
        fig.steady_cpu.unwrap_or(0.0)
    );

    // Single lease changes: add one, remove one, ...
    for i in 0..CHANGES {
        node.check_alive()?;
        // Changes come at random moments, not right after the agent acted.
        std::thread::sleep(Duration::from_millis(fakes.rng.below(100) as u64));
        let (peer, present) = if i % 2 == 0 {
            (fakes.add(&mut node.gw)?, true)
        } else {
            match fakes.remove(&mut node.gw)? {
                Some(p) => (p, false),
                None => continue,
            }
        };
        let t = Instant::now();
        let kernel = &mut node.kernel;
        let seen = poll_until(t, CHANGE_LIMIT, FAST_POLL, || {
            Ok(kernel.peer_state(&peer)? == Some(present))
        })?;
        fig.change_ms.push(seen.map_or(f64::INFINITY, stats::ms));
    }
    progress!(
        "{label} N={n}: {CHANGES} lease changes, p99 {}",
        show_ms(percentile(&fig.change_ms, 0.99))
    );

    // Kernel state deleted behind the agent's back.
    let want = Want::of(&fakes.peers());
    let kinds = [
        Damage::Route,
        Damage::Fdb,
        Damage::Neighbour,
        Damage::Device,
    ];
    // Once the state stayed broken, waiting long for it again only costs.
    let mut whole_limit = DEVICE_LIMIT;
    for i in 0..DAMAGES {
        node.check_alive()?;
        let kind = kinds[i % kinds.len()];
        let whole = poll_until(Instant::now(), whole_limit, POLL, || {
            Ok(node.kernel.diff(&want, true)?.is_empty())
        })?;
        if whole.is_none() {
            whole_limit = Duration::from_secs(1);
            let diff = node.kernel.diff(&want, false)?;
            fig.notes.push(format!(
                "before deletion {i} ({}): state not whole: {}",
                kind.name(),
                diff.summary()
            ));
        }
        let Some(subnet) = fakes.pick() else { break };
        let Some((_, peer)) = fakes.live.get(&subnet).copied() else {
            break;
        };
        let k = &mut node.kernel;
        let deleted = match kind {
            Damage::Route => k.delete_route(&peer)?,
            Damage::Fdb => k.delete_fdb(&peer)?,
            Damage::Neighbour => k.delete_neighbour(&peer)?,
            Damage::Device => k.delete_device()?,
        };
        if !deleted {
            fig.repair_skipped += 1;
            continue;
        }
        let t = Instant::now();
        let limit = if kind == Damage::Device {
            DEVICE_LIMIT
        } else {
            REPAIR_LIMIT
        };
        let back = poll_until(t, limit, FAST_POLL, || {
            let Some(dev) = k.device()? else {
                return Ok(false);
            };
            Ok(match kind {
                Damage::Route => k.route_to(dev, peer.subnet)?.is_some(),
                Damage::Fdb => k.fdb_entry(dev, peer.mac)? == Some(peer.public),
                Damage::Neighbour => k.neighbour(dev, peer.subnet)? == Some(peer.mac),
                Damage::Device => k.diff(&want, true)?.is_empty(),
            })
        })?;
        fig.repair_ms
            .push((kind, back.map_or(f64::INFINITY, stats::ms)));
    }
    let repairs: Vec<f64> = fig.repair_ms.iter().map(|(_, m)| *m).collect();
    progress!(
        "{label} N={n}: {} deletions repaired, p99 {}",
        repairs.iter().filter(|m| m.is_finite()).count(),
        show_ms(percentile(&repairs, 0.99))
    );

    // Churn: 100 changes a second for 30 s, then the kernel must equal
    // the store.
    let whole = poll_until(Instant::now(), DEVICE_LIMIT, POLL, || {
        Ok(node.kernel.diff(&want, true)?.is_empty())
    })?;
    if whole.is_none() {
        fig.notes.push("state not whole before the churn".into());
    }
    node.check_alive()?;
    let total = CHURN_RATE * CHURN_TIME.as_secs() as usize;
    let step = Duration::from_secs(1) / CHURN_RATE as u32;
    let cpu0 = process::cpu_sample(pid)?;
    let t0 = Instant::now();
    let mut errors = 0;
    for i in 0..total {
        let due = t0 + step * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let live = fakes.len();
        let op = if live < n * 9 / 10 {
            0
        } else if live > n * 11 / 10 {
            1
        } else {
            fakes.rng.below(3)
        };
        let done = match op {
            0 => fakes.add(&mut node.gw).map(drop),
            1 => fakes.remove(&mut node.gw).map(drop),
            _ => fakes.modify(&mut node.gw).map(drop),
        };
        match done {
            Ok(()) => fig.churn_ops += 1,
            Err(e) => {
                errors += 1;
                if errors > 10 {
                    return Err(format!("churn: too many failed writes, the last: {e}"));
                }
            }
        }
    }
    let t_end = Instant::now();
    let cpu1 = process::cpu_sample(pid)?;
    fig.churn_rate = Some(fig.churn_ops as f64 / t_end.duration_since(t0).as_secs_f64());
    fig.churn_cpu = Some(process::cpu_percent(&cpu0, &cpu1));
    let truth = store_peers(&mut node.gw, &[host_ip(0)])?;
    if truth.len() != fakes.len() {
        fig.notes.push(format!(
            "after the churn the store holds {} peers, this program wrote {}",
            truth.len(),
            fakes.len()
        ));
    }
    let want = Want::of(&truth);
    let k = &mut node.kernel;
    let converged = poll_until(t_end, CHURN_SETTLE, POLL, || {
        Ok(k.diff(&want, true)?.is_empty())
    })?;
    fig.churn_converged_ms = converged.map(stats::ms);
    if converged.is_none() {
        let diff = k.diff(&want, false)?;
        let later = poll_until(
            t_end,
            Duration::from_secs(30),
            Duration::from_millis(50),
            || Ok(k.diff(&want, true)?.is_empty()),
        )?;
        fig.churn_late = Some(match later {
            Some(d) => format!(
                "after {} s: {}; equal after {:.1} s",
                CHURN_SETTLE.as_secs(),
                diff.summary(),
                d.as_secs_f64()
            ),
            None => format!(
                "after {} s: {}; still not equal after 30 s",
                CHURN_SETTLE.as_secs(),
                diff.summary()
            ),
        });
    }
    progress!(
        "{label} N={n}: churn {} ops at {:.0}/s, kernel = store after {}",
        fig.churn_ops,
        fig.churn_rate.unwrap_or(0.0),
        show_ms(fig.churn_converged_ms.or(Some(f64::INFINITY)))
    );
    node.check_alive()
}

// ---- part 2: a cluster ------------------------------------------------------

#[derive(Debug, Default)]
struct ClusterFigs {
    agents: usize,
    spawn_ms: f64,
    routed_ms: Option<f64>,
    routed_p50_ms: Option<f64>,
    etcd_cpu: Option<f64>,
    agent_cpu_max: Option<f64>,
    agent_cpu_mean: Option<f64>,
    agent_rss_max: Option<f64>,
    agent_rss_mean: Option<f64>,
    gone_ms: Option<f64>,
    gone_p50_ms: Option<f64>,
    notes: Vec<String>,
}

/// M hosts on one segment with etcd. Agents stop first.
struct Cluster {
    agents: Vec<Proc>,
    kernels: Vec<Kernel>,
    gw: Gateway,
    etcd: Etcd,
    hosts: Vec<TestNetns>,
    _net: Underlay,
    dir: Scratch,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // All at once, then each reaped (Proc's drop).
        for a in &self.agents {
            a.terminate();
        }
    }
}

fn cluster(agent: &Agent, m: usize) -> ClusterFigs {
    let mut fig = ClusterFigs {
        agents: m,
        ..ClusterFigs::default()
    };
    if let Err(e) = cluster_phases(agent, m, &mut fig) {
        progress!("cluster: {e}");
        fig.notes.push(e);
    }
    fig
}

fn cluster_phases(agent: &Agent, m: usize, fig: &mut ClusterFigs) -> Result<(), String> {
    let (mut net, etcd, gw, dir) = underlay("c")?;
    let mut hosts = Vec::new();
    let mut kernels = Vec::new();
    for h in 0..m {
        let ns = net.add_host(
            &format!("n{h}"),
            &[&format!("{}/{UNDERLAY_LEN}", host_ip(h))],
        );
        kernels.push(Kernel::open(&ns, DEVICE, NET)?);
        hosts.push(ns);
    }
    let mut c = Cluster {
        agents: Vec::new(),
        kernels,
        gw,
        etcd,
        hosts,
        _net: net,
        dir,
    };
    progress!("cluster: {m} hosts up; starting {m} agents at once");
    let ips: Vec<Ipv4Addr> = (0..m).map(host_ip).collect();
    let t0 = Instant::now();
    for h in 0..m {
        let hdir = c.dir.path().join(format!("n{h}"));
        std::fs::create_dir_all(&hdir)
            .map_err(|e| format!("cannot create {}: {e}", hdir.display()))?;
        let args = agent.args(&c.etcd, &hdir.join("subnet.env"));
        c.agents.push(Proc::spawn(
            &agent.binary,
            &args,
            &c.hosts[h],
            &hdir.join("agent.log"),
        )?);
    }
    fig.spawn_ms = stats::ms(t0.elapsed());

    // Every pair routed: each host holds every other host's lease.
    let mut peers: Vec<Peer> = Vec::new();
    let mut wants: Vec<Want> = Vec::new();
    let mut done: Vec<Option<f64>> = vec![None; m];
    let all = poll_until(t0, PROGRAM_LIMIT, Duration::from_millis(10), || {
        for (h, a) in c.agents.iter_mut().enumerate() {
            if !a.alive() {
                return Err(format!(
                    "agent {h} exited; its log ends:\n{}",
                    a.log_tail(10)
                ));
            }
        }
        if peers.len() < m {
            peers = store_peers(&mut c.gw, &[])?;
            if peers.len() < m {
                return Ok(false);
            }
            wants = (0..m)
                .map(|h| Want::of(peers.iter().filter(|p| p.public != ips[h])))
                .collect();
        }
        for h in 0..m {
            if done[h].is_none() && c.kernels[h].diff(&wants[h], true)?.is_empty() {
                done[h] = Some(stats::ms(t0.elapsed()));
            }
        }
        Ok(done.iter().all(Option::is_some))
    })?;
    let times: Vec<f64> = done.iter().flatten().copied().collect();
    fig.routed_p50_ms = percentile(&times, 0.5);
    match all {
        Some(d) => fig.routed_ms = Some(stats::ms(d)),
        None => {
            fig.routed_ms = Some(f64::INFINITY);
            let missing = done.iter().filter(|d| d.is_none()).count();
            return Err(format!(
                "{missing} of {m} hosts not routed to all others {} s after start ({} leases in the store)",
                PROGRAM_LIMIT.as_secs(),
                peers.len()
            ));
        }
    }
    progress!(
        "cluster: every pair routed after {}",
        show_ms(fig.routed_ms)
    );

    // Steady state.
    std::thread::sleep(SETTLE);
    let pids: Vec<u32> = c.agents.iter().map(Proc::pid).collect();
    let etcd_pid = c
        .etcd
        .pid()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or("etcd is not running")?;
    let before_etcd = process::cpu_sample(etcd_pid)?;
    let before: Vec<CpuSample> = pids
        .iter()
        .map(|p| process::cpu_sample(*p))
        .collect::<Result<_, _>>()?;
    std::thread::sleep(STEADY);
    let after_etcd = process::cpu_sample(etcd_pid)?;
    let after: Vec<CpuSample> = pids
        .iter()
        .map(|p| process::cpu_sample(*p))
        .collect::<Result<_, _>>()?;
    fig.etcd_cpu = Some(process::cpu_percent(&before_etcd, &after_etcd));
    let cpus: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(a, b)| process::cpu_percent(a, b))
        .collect();
    fig.agent_cpu_max = cpus.iter().copied().reduce(f64::max);
    fig.agent_cpu_mean = Some(cpus.iter().sum::<f64>() / cpus.len().max(1) as f64);
    let rss: Vec<f64> = pids
        .iter()
        .map(|p| process::rss_kib(*p).map(mib))
        .collect::<Result<_, _>>()?;
    fig.agent_rss_max = rss.iter().copied().reduce(f64::max);
    fig.agent_rss_mean = Some(rss.iter().sum::<f64>() / rss.len().max(1) as f64);
    progress!(
        "cluster: steady etcd {:.2} %, agents max {:.3} %",
        fig.etcd_cpu.unwrap_or(0.0),
        fig.agent_cpu_max.unwrap_or(0.0)
    );

    // A node taken out of service: agent stopped, lease deleted.
    let victim = m - 1;
    let Some(gone) = peers.iter().find(|p| p.public == ips[victim]).copied() else {
        return Err("the last host's lease is not in the store".into());
    };
    if !c.agents[victim].stop() {
        fig.notes.push("the stopped agent needed SIGKILL".into());
    }
    let deleted = c.gw.delete(&lease_key(gone.subnet))?;
    if deleted != 1 {
        return Err(format!(
            "deleting {} removed {deleted} keys",
            lease_key(gone.subnet)
        ));
    }
    let t = Instant::now();
    let mut gone_at: Vec<Option<f64>> = vec![None; victim];
    let kernels = &mut c.kernels;
    let all_gone = poll_until(t, DEVICE_LIMIT, FAST_POLL, || {
        for (h, at) in gone_at.iter_mut().enumerate() {
            if at.is_none() && kernels[h].peer_state(&gone)? == Some(false) {
                *at = Some(stats::ms(t.elapsed()));
            }
        }
        Ok(gone_at.iter().all(Option::is_some))
    })?;
    let times: Vec<f64> = gone_at.iter().flatten().copied().collect();
    fig.gone_p50_ms = percentile(&times, 0.5);
    fig.gone_ms = Some(all_gone.map_or(f64::INFINITY, stats::ms));
    if all_gone.is_none() {
        fig.notes.push(format!(
            "the removed node was still on {} of {victim} hosts after {} s",
            gone_at.iter().filter(|g| g.is_none()).count(),
            DEVICE_LIMIT.as_secs()
        ));
    }
    progress!(
        "cluster: removed node gone everywhere after {}",
        show_ms(fig.gone_ms)
    );
    Ok(())
}

// ---- the report -------------------------------------------------------------

fn show_ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x.is_infinite() => "missed".into(),
        Some(x) if x < 10.0 => format!("{x:.1} ms"),
        Some(x) => format!("{x:.0} ms"),
    }
}

fn show_pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.3} %"))
}

fn show_mib(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1} MiB"))
}

/// One row: figure, target, ours, upstream, and whether ours met the
/// target (None: no target, or not measured).
struct Row {
    figure: String,
    target: String,
    ours: String,
    upstream: String,
    ratio: String,
    met: Option<bool>,
    /// Said after the verdict.
    why: &'static str,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// A row for a value where smaller is better.
fn row(
    figure: &str,
    target: Option<f64>,
    show_target: &str,
    ours: Option<f64>,
    upstream: Option<f64>,
    show: fn(Option<f64>) -> String,
) -> Row {
    Row {
        figure: figure.into(),
        target: show_target.into(),
        ours: show(ours),
        upstream: show(upstream),
        ratio: ratio(ours, upstream),
        met: target.and_then(|t| ours.map(|o| o <= t)),
        why: "",
    }
}

fn print_table(title: &str, rows: &[Row], upstream: bool) {
    println!("\n{title}");
    let mut cells: Vec<Vec<String>> = vec![{
        let mut h = vec!["figure".to_string(), "target".into(), "ours".into()];
        if upstream {
            h.extend(["upstream".into(), "ours/upstream".into()]);
        }
        h.push("verdict".into());
        h
    }];
    for r in rows {
        let mut c = vec![r.figure.clone(), r.target.clone(), r.ours.clone()];
        if upstream {
            c.extend([r.upstream.clone(), r.ratio.clone()]);
        }
        c.push(match r.met {
            Some(true) => format!("PASS{}", r.why),
            Some(false) => format!("FAIL{}", r.why),
            None => String::new(),
        });
        cells.push(c);
    }
    let cols = cells[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, c) in cells.iter().enumerate() {
        let line: Vec<String> = c
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        println!("  {}", line.join(" | ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("  {}", rule.join("-+-"));
        }
    }
}

fn missed(v: &[f64]) -> usize {
    v.iter().filter(|x| x.is_infinite()).count()
}

fn report_single(n: usize, ours: &Single, upstream: Option<&Single>) {
    let up = upstream.is_some();
    let u = |f: fn(&Single) -> Option<f64>| upstream.and_then(f);
    let repairs = |s: &Single| -> Vec<f64> { s.repair_ms.iter().map(|(_, m)| *m).collect() };
    let mut rows = vec![
        row(
            &format!("all {n} peers programmed after start"),
            Some(500.0),
            "<= 500 ms",
            ours.programmed_ms,
            u(|s| s.programmed_ms),
            show_ms,
        ),
        row(
            "RSS after settling",
            Some(10.0),
            "<= 10 MiB",
            ours.rss_mib,
            u(|s| s.rss_mib),
            show_mib,
        ),
        row(
            "peak RSS (VmHWM)",
            None,
            "",
            ours.peak_rss_mib,
            u(|s| s.peak_rss_mib),
            show_mib,
        ),
        row(
            "threads",
            None,
            "",
            ours.threads.map(|t| t as f64),
            u(|s| s.threads.map(|t| t as f64)),
            |v| v.map_or("-".into(), |x| format!("{x:.0}")),
        ),
    ];
    let mut cpu = row(
        "steady CPU over 10 s (% of a core)",
        Some(0.2),
        "<= 0.2 %, <= upstream",
        ours.steady_cpu,
        u(|s| s.steady_cpu),
        show_pct,
    );
    if let (Some(o), Some(Some(x))) = (ours.steady_cpu, upstream.map(|s| s.steady_cpu))
        && o > x
        && cpu.met == Some(true)
    {
        cpu.met = Some(false);
        cpu.why = " (> upstream)";
    }
    rows.push(cpu);
    rows.push(row(
        "full comparison (safety net), one pass",
        None,
        "rare (5 min)",
        ours.full_pass_ms,
        None,
        show_ms,
    ));
    let ch = |s: &Single, p: f64| percentile(&s.change_ms, p);
    rows.push(row(
        &format!(
            "lease change -> kernel, p50 ({} changes)",
            ours.change_ms.len()
        ),
        None,
        "",
        ch(ours, 0.5),
        upstream.and_then(|s| ch(s, 0.5)),
        show_ms,
    ));
    rows.push(row(
        "lease change -> kernel, p99",
        Some(50.0),
        "<= 50 ms",
        ch(ours, 0.99),
        upstream.and_then(|s| ch(s, 0.99)),
        show_ms,
    ));
    rows.push(row(
        "lease change -> kernel, max",
        None,
        "",
        ch(ours, 1.0),
        upstream.and_then(|s| ch(s, 1.0)),
        show_ms,
    ));
    rows.push(row(
        &format!(
            "repair after deletion, p50 ({} deletions)",
            ours.repair_ms.len()
        ),
        None,
        "",
        percentile(&repairs(ours), 0.5),
        upstream.and_then(|s| percentile(&repairs(s), 0.5)),
        show_ms,
    ));
    rows.push(row(
        "repair after deletion, p99",
        Some(1000.0),
        "<= 1000 ms",
        percentile(&repairs(ours), 0.99),
        upstream.and_then(|s| percentile(&repairs(s), 0.99)),
        show_ms,
    ));
    for kind in [
        Damage::Route,
        Damage::Fdb,
        Damage::Neighbour,
        Damage::Device,
    ] {
        let of = |s: &Single| -> Option<f64> {
            let v: Vec<f64> = s
                .repair_ms
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, m)| *m)
                .collect();
            percentile(&v, 1.0)
        };
        rows.push(row(
            &format!("  repair max: {}", kind.name()),
            None,
            "",
            of(ours),
            upstream.and_then(of),
            show_ms,
        ));
    }
    rows.push(row(
        &format!("churn: writes/s achieved ({} s)", CHURN_TIME.as_secs()),
        None,
        "",
        ours.churn_rate,
        u(|s| s.churn_rate),
        |v| v.map_or("-".into(), |x| format!("{x:.0}/s")),
    ));
    rows.push(row(
        "churn: CPU during it (% of a core)",
        None,
        "",
        ours.churn_cpu,
        u(|s| s.churn_cpu),
        show_pct,
    ));
    let conv = |s: &Single| -> Option<f64> {
        if s.churn_ops == 0 {
            None
        } else {
            Some(s.churn_converged_ms.unwrap_or(f64::INFINITY))
        }
    };
    let mut r = row(
        "churn: kernel = store exactly, after",
        Some(f64::MAX),
        &format!("equal (<= {} s)", CHURN_SETTLE.as_secs()),
        conv(ours),
        upstream.and_then(conv),
        show_ms,
    );
    r.met = conv(ours).map(f64::is_finite);
    rows.push(r);
    print_table(
        &format!(
            "== one node, N = {n} peers (vxlan; one etcd lease per subnet; etcd on the simulated underlay) =="
        ),
        &rows,
        up,
    );
    for (label, s) in [("ours", Some(ours)), ("upstream", upstream)] {
        let Some(s) = s else { continue };
        let mut lines = Vec::new();
        if let Some(l) = s.load_s {
            lines.push(format!("{n} leases loaded into etcd in {l:.2} s"));
        }
        let m = missed(&s.change_ms);
        if m > 0 {
            lines.push(format!(
                "{m} of {} lease changes not seen within {} s",
                s.change_ms.len(),
                CHANGE_LIMIT.as_secs()
            ));
        }
        let r = repairs(s);
        let m = missed(&r);
        if m > 0 {
            lines.push(format!(
                "{m} of {} deletions not repaired within {} s ({} s for the device)",
                r.len(),
                REPAIR_LIMIT.as_secs(),
                DEVICE_LIMIT.as_secs()
            ));
        }
        if s.repair_skipped > 0 {
            lines.push(format!(
                "{} deletions skipped: the thing to delete was not there",
                s.repair_skipped
            ));
        }
        if let Some(late) = &s.churn_late {
            lines.push(format!("churn: {late}"));
        }
        lines.extend(s.notes.iter().cloned());
        for l in lines {
            println!("  [{label}] {}", l.replace('\n', "\n      "));
        }
    }
}

fn report_cluster(f: &ClusterFigs) {
    let rows = vec![
        row(
            &format!(
                "every pair routed after start ({} pairs)",
                f.agents * (f.agents - 1)
            ),
            Some(1000.0),
            "<= 1000 ms",
            f.routed_ms,
            None,
            show_ms,
        ),
        row(
            "  a host routed to all others, p50",
            None,
            "",
            f.routed_p50_ms,
            None,
            show_ms,
        ),
        row(
            "steady CPU of etcd over 10 s",
            Some(2.0),
            "<= 2 %",
            f.etcd_cpu,
            None,
            show_pct,
        ),
        row(
            "steady CPU of an agent, max",
            Some(0.2),
            "<= 0.2 % each",
            f.agent_cpu_max,
            None,
            show_pct,
        ),
        row(
            "steady CPU of an agent, mean",
            None,
            "",
            f.agent_cpu_mean,
            None,
            show_pct,
        ),
        row(
            "RSS of an agent, max",
            Some(10.0),
            "<= 10 MiB",
            f.agent_rss_max,
            None,
            show_mib,
        ),
        row(
            "RSS of an agent, mean",
            None,
            "",
            f.agent_rss_mean,
            None,
            show_mib,
        ),
        row(
            "node out of service gone from all others",
            Some(1000.0),
            "<= 1000 ms",
            f.gone_ms,
            None,
            show_ms,
        ),
        row(
            "  gone from a host, p50",
            None,
            "",
            f.gone_p50_ms,
            None,
            show_ms,
        ),
    ];
    print_table(
        &format!(
            "== cluster of {} agents on one etcd, started at once (ours) ==",
            f.agents
        ),
        &rows,
        false,
    );
    println!(
        "  [ours] {} agents spawned in {:.0} ms",
        f.agents, f.spawn_ms
    );
    for n in &f.notes {
        println!("  [ours] {}", n.replace('\n', "\n      "));
    }
}

// ---- main -------------------------------------------------------------------

#[derive(Debug)]
struct Opts {
    bins: PathBuf,
    sizes: Vec<usize>,
    agents: usize,
    upstream: Option<PathBuf>,
    single: bool,
    cluster: bool,
}

const USAGE: &str = "usage: bench-flanneld-scale BIN_DIR [--sizes 100,1000,5000] [--agents 50] [--upstream PATH] [--only single|cluster]";

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mut o = Opts {
        bins: PathBuf::new(),
        sizes: vec![100, 1000, 5000],
        agents: 50,
        upstream: None,
        single: true,
        cluster: true,
    };
    let mut bins = None;
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--sizes" => {
                o.sizes = value("--sizes")?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--sizes: {e}"))?;
                if o.sizes.iter().any(|n| !(1..=20_000).contains(n)) {
                    return Err("--sizes: each size must be 1..=20000".into());
                }
            }
            "--agents" => {
                o.agents = value("--agents")?
                    .parse()
                    .map_err(|e| format!("--agents: {e}"))?;
                if !(2..=200).contains(&o.agents) {
                    return Err("--agents must be 2..=200".into());
                }
            }
            "--upstream" => o.upstream = Some(PathBuf::from(value("--upstream")?)),
            "--only" => match value("--only")?.as_str() {
                "single" => o.cluster = false,
                "cluster" => o.single = false,
                other => return Err(format!("--only single|cluster, not {other}")),
            },
            "-h" | "--help" => return Err(USAGE.into()),
            _ if flag.starts_with('-') => return Err(format!("unknown flag {flag}\n{USAGE}")),
            _ if bins.is_none() => bins = Some(PathBuf::from(&a)),
            _ => return Err(format!("unexpected argument {a}\n{USAGE}")),
        }
    }
    o.bins = bins.ok_or_else(|| USAGE.to_string())?;
    Ok(o)
}

fn main() {
    started();
    if let Err(e) = cleanup::install() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("error: run me as root: I create network namespaces");
        std::process::exit(1);
    }
    let ours = Agent {
        label: "ours",
        binary: opts.bins.join("flanneld"),
    };
    let upstream = opts.upstream.as_ref().map(|p| Agent {
        label: "upstream",
        binary: p.clone(),
    });
    for a in std::iter::once(&ours).chain(upstream.as_ref()) {
        if !a.binary.is_file() {
            eprintln!(
                "error: {} flanneld {} is missing",
                a.label,
                a.binary.display()
            );
            std::process::exit(1);
        }
    }
    if !Path::new(bench::etcd::ETCD_BIN).is_file() {
        eprintln!(
            "error: {} is missing: apt-get install etcd-server",
            bench::etcd::ETCD_BIN
        );
        std::process::exit(1);
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "bench-flanneld-scale: ours {}{}; {cores} cores; kernel {}",
        ours.binary.display(),
        upstream
            .as_ref()
            .map(|u| format!(", upstream {}", u.binary.display()))
            .unwrap_or_default(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "programmed = route <subnet> via <subnet address> dev {DEVICE} + neighbour + fdb entry, per peer (any route protocol); \
         CPU = utime+stime or the threads' run time, % of one core; polls every {} ms ({} ms for single entries)",
        POLL.as_millis(),
        FAST_POLL.as_millis()
    );
    if opts.single {
        for &n in &opts.sizes {
            progress!("one node, N = {n}: ours");
            let mine = single(&ours, n);
            let theirs = upstream.as_ref().map(|u| {
                progress!("one node, N = {n}: upstream");
                single(u, n)
            });
            report_single(n, &mine, theirs.as_ref());
        }
    }
    if opts.cluster {
        progress!("cluster of {} agents: ours", opts.agents);
        let f = cluster(&ours, opts.agents);
        report_cluster(&f);
    }
    cleanup::sweep();
    let left = cleanup::leftovers();
    if !left.is_empty() {
        eprintln!("warning: namespaces left behind: {left:?}");
    }
    println!("\nwall time {:.0} s", started().elapsed().as_secs_f64());
}
