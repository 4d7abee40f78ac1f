//! Part 2, a cluster: M agents on one etcd started at once; time until
//! every pair is routed, steady CPU of etcd and of the agents, and how
//! fast a node taken out of service is gone everywhere.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use conformance::{Etcd, TestNetns, Underlay};

use super::setup::{
    Agent, DEVICE, DEVICE_LIMIT, FAST_POLL, NET, PROGRAM_LIMIT, SETTLE, STEADY, UNDERLAY_LEN,
    host_ip, lease_key, mib, poll_until, store_peers, underlay,
};
use crate::cleanup::Scratch;
use crate::etcd::Gateway;
use crate::kernel::{Kernel, Peer, Want};
use crate::process::{self, CpuSample, Proc};
use crate::stats::{self, percentile};
use crate::table::show_ms;

#[derive(Debug, Default)]
pub struct ClusterFigs {
    pub(crate) agents: usize,
    pub(crate) spawn_ms: f64,
    pub(crate) routed_ms: Option<f64>,
    pub(crate) routed_p50_ms: Option<f64>,
    pub(crate) etcd_cpu: Option<f64>,
    pub(crate) agent_cpu_max: Option<f64>,
    pub(crate) agent_cpu_mean: Option<f64>,
    pub(crate) agent_rss_max: Option<f64>,
    pub(crate) agent_rss_mean: Option<f64>,
    pub(crate) gone_ms: Option<f64>,
    pub(crate) gone_p50_ms: Option<f64>,
    pub(crate) notes: Vec<String>,
}

/// M hosts on one segment with etcd. Agents stop first.
pub(crate) struct Cluster {
    pub(crate) agents: Vec<Proc>,
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

pub fn cluster(agent: &Agent, m: usize) -> ClusterFigs {
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

pub(crate) fn cluster_phases(agent: &Agent, m: usize, fig: &mut ClusterFigs) -> Result<(), String> {
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
