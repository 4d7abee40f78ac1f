//! Part 1, one node and N fake peers: N leases loaded into etcd, then
//! one agent started; time until every peer is programmed, memory, steady
//! CPU, single lease changes, repairs of deleted kernel state, and churn.

use std::time::{Duration, Instant};

use conformance::{Etcd, TestNetns, Underlay};

use super::setup::{
    Agent, CHANGE_LIMIT, CHANGES, CHURN_RATE, CHURN_SETTLE, CHURN_TIME, DAMAGES, DEVICE,
    DEVICE_LIMIT, FAST_POLL, Fakes, HEALTH_IDLE, NET, POLL, PROGRAM_LIMIT, REPAIR_LIMIT, SETTLE,
    STEADY, UNDERLAY_LEN, cpu_over, full_pass_ms, health_answers, host_ip, mib, poll_until,
    store_peers, underlay,
};
use crate::cleanup::Scratch;
use crate::etcd::Gateway;
use crate::kernel::{Kernel, Want};
use crate::process::{self, Proc};
use crate::stats::{self, percentile};
use crate::table::show_ms;

/// A simulated host with etcd on its segment. Fields drop in order: the
/// agent first, the namespaces and the scratch directory last.
pub(crate) struct Node {
    agent: Option<Proc>,
    kernel: Kernel,
    gw: Gateway,
    etcd: Etcd,
    host: TestNetns,
    _net: Underlay,
    dir: Scratch,
}

impl Node {
    pub(crate) fn new() -> Result<Node, String> {
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

    pub(crate) fn start(&mut self, agent: &Agent) -> Result<(), String> {
        let args = agent.args(&self.etcd, &self.dir.path().join("subnet.env"));
        let log = self.dir.path().join(format!("{}.log", agent.label));
        self.agent = Some(Proc::spawn(&agent.binary, &args, &self.host, &log)?);
        Ok(())
    }

    pub(crate) fn pid(&self) -> Result<u32, String> {
        self.agent
            .as_ref()
            .map(Proc::pid)
            .ok_or_else(|| "no agent".to_string())
    }

    /// An error with the agent's last words when it is gone.
    pub(crate) fn check_alive(&mut self) -> Result<(), String> {
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

    pub(crate) fn log_tail(&self) -> String {
        self.agent
            .as_ref()
            .map(|a| a.log_tail(10))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Damage {
    Route,
    Fdb,
    Neighbour,
    Device,
}

impl Damage {
    pub(crate) fn name(self) -> &'static str {
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
pub struct Single {
    pub(crate) load_s: Option<f64>,
    pub(crate) programmed_ms: Option<f64>,
    pub(crate) rss_mib: Option<f64>,
    pub(crate) peak_rss_mib: Option<f64>,
    pub(crate) threads: Option<u64>,
    pub(crate) steady_cpu: Option<f64>,
    /// Ours only: one full comparison of the kernel with the peers.
    pub(crate) full_pass_ms: Option<f64>,
    /// Ours only: `/healthz` answer times while idle clients hold
    /// connections.
    pub(crate) health_ms: Vec<f64>,
    pub(crate) change_ms: Vec<f64>,
    pub(crate) repair_ms: Vec<(Damage, f64)>,
    pub(crate) repair_skipped: usize,
    pub(crate) churn_ops: usize,
    pub(crate) churn_rate: Option<f64>,
    pub(crate) churn_cpu: Option<f64>,
    pub(crate) churn_converged_ms: Option<f64>,
    pub(crate) churn_late: Option<String>,
    pub(crate) notes: Vec<String>,
}

pub fn single(agent: &Agent, n: usize) -> Single {
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

pub(crate) fn single_phases(
    agent: &Agent,
    n: usize,
    node: &mut Node,
    fig: &mut Single,
) -> Result<(), String> {
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
        fig.health_ms = health_answers(&node.host)?;
        progress!(
            "{label} N={n}: /healthz answered within {} with {HEALTH_IDLE} idle clients",
            show_ms(percentile(&fig.health_ms, 1.0))
        );
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
