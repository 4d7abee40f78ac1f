//! bench-flanneld-scale: flanneld at scale, as a black box on a real etcd, in simulated hosts
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
//! Part 3, the kube subnet manager: a real kube-apiserver holding N Node
//! objects as kubelets and upstream's agents leave them, one agent started
//! with `--kube-subnet-mgr`; time until every peer is programmed, memory,
//! idle CPU, annotation change latency, and the agent's requests while
//! idle (from the API server's audit log). Skipped, loudly, without the
//! Kubernetes binaries of this workspace.
//!
//! Part 4, the wireguard backend: one node on `wireguard` and N fake peers
//! with keys in their leases; time until the agent holds them all, memory,
//! CPU while the handshakes it starts with each go unanswered, and idle
//! CPU once WireGuard has given up on them (100 s on).
//!
//! usage: bench-flanneld-scale BIN_DIR [--sizes 100,1000,5000] [--agents 50]
//!        [--upstream PATH] [--only single|cluster|kube|wireguard]

// The figures are this program's output.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};

use setup::{Agent, DEVICE, FAST_POLL, POLL};

/// A progress line on stderr, stamped with the time since the start
/// (defined before the modules that use it).
macro_rules! progress {
    ($($arg:tt)*) => {
        $crate::scale::setup::progress(format_args!($($arg)*))
    };
}

pub mod cluster;
pub mod kube;
pub mod report;
pub mod setup;
pub mod single;
pub mod wireguard;

/// The command line.
#[derive(Debug)]
pub struct Opts {
    pub bins: PathBuf,
    pub sizes: Vec<usize>,
    pub agents: usize,
    pub upstream: Option<PathBuf>,
    pub single: bool,
    pub cluster: bool,
    pub kube: bool,
    pub wireguard: bool,
}

pub const USAGE: &str = "usage: bench-flanneld-scale BIN_DIR [--sizes 100,1000,5000] [--agents 50] [--upstream PATH] [--only single|cluster|kube|wireguard]";

impl Opts {
    /// The options from the program's arguments (without its name); the
    /// usage, or what is wrong, as the error.
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Opts, String> {
        let mut o = Opts {
            bins: PathBuf::new(),
            sizes: vec![100, 1000, 5000],
            agents: 50,
            upstream: None,
            single: true,
            cluster: true,
            kube: true,
            wireguard: true,
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
                "--only" => {
                    let only = value("--only")?;
                    if !["single", "cluster", "kube", "wireguard"].contains(&only.as_str()) {
                        return Err(format!("--only single|cluster|kube|wireguard, not {only}"));
                    }
                    o.single = only == "single";
                    o.cluster = only == "cluster";
                    o.kube = only == "kube";
                    o.wireguard = only == "wireguard";
                }
                "-h" | "--help" => return Err(USAGE.into()),
                _ if flag.starts_with('-') => return Err(format!("unknown flag {flag}\n{USAGE}")),
                _ if bins.is_none() => bins = Some(PathBuf::from(&a)),
                _ => return Err(format!("unexpected argument {a}\n{USAGE}")),
            }
        }
        o.bins = bins.ok_or_else(|| USAGE.to_string())?;
        Ok(o)
    }
}

/// Both parts as `opts` say, each one's report printed when it is done.
pub fn run(opts: &Opts) -> Result<(), String> {
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
            return Err(format!(
                "{} flanneld {} is missing",
                a.label,
                a.binary.display()
            ));
        }
    }
    if !Path::new(crate::etcd::ETCD_BIN).is_file() {
        return Err(format!(
            "{} is missing: apt-get install etcd-server",
            crate::etcd::ETCD_BIN
        ));
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
            let mine = single::single(&ours, n);
            let theirs = upstream.as_ref().map(|u| {
                progress!("one node, N = {n}: upstream");
                single::single(u, n)
            });
            report::report_single(n, &mine, theirs.as_ref());
        }
    }
    if opts.cluster {
        progress!("cluster of {} agents: ours", opts.agents);
        let f = cluster::cluster(&ours, opts.agents);
        report::report_cluster(&f);
    }
    if opts.wireguard {
        for &n in &opts.sizes {
            progress!("wireguard, N = {n}: ours");
            let f = wireguard::wireguard(&ours, n);
            report::report_wireguard(n, &f);
        }
    }
    if opts.kube && kube::available() {
        for &n in &opts.sizes {
            progress!("kube subnet manager, N = {n}: ours");
            let f = kube::kube(&ours, n);
            report::report_kube(n, &f);
        }
    }
    Ok(())
}
