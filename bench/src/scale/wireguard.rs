//! Part 4, the wireguard backend at scale: one node on `wireguard` and N
//! fake peers (leases with their own keys, nobody at their addresses).
//! Time until the agent holds every peer; memory and idle CPU while no
//! peer was talked to (no Noise state made); then one packet to every
//! peer: memory with every peer's Noise state, CPU while the handshakes go
//! unanswered (WireGuard retries each every 5 s for 90 s), and idle CPU
//! after it has given up (the timers look at each such peer 4 times a
//! second).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::json;

use super::setup::{
    Agent, FAKE_PUBLIC, FAKE_SUBNETS, LEASE_TTL, NET, POLL, PREFIX, PROGRAM_LIMIT, Rng, STEADY,
    UNDERLAY_LEN, cpu_over, host_ip, lease_key, metric_of, mib, poll_until, underlay,
};
use crate::process::{self, Proc};
use crate::stats;

/// WireGuard gives up a handshake nobody answers after this long.
const REKEY_ATTEMPT: Duration = Duration::from_secs(90);

#[derive(Debug, Default)]
pub struct WgFigs {
    pub(crate) load_s: Option<f64>,
    pub(crate) programmed_ms: Option<f64>,
    pub(crate) rss_mib: Option<f64>,
    pub(crate) fresh_cpu: Option<f64>,
    pub(crate) made_rss_mib: Option<f64>,
    pub(crate) peak_rss_mib: Option<f64>,
    pub(crate) threads: Option<u64>,
    pub(crate) retrying_cpu: Option<f64>,
    pub(crate) idle_cpu: Option<f64>,
    pub(crate) notes: Vec<String>,
}

fn config() -> String {
    json!({"Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": "10.1.0.0",
           "SubnetMax": "10.9.255.0", "Backend": {"Type": "wireguard"}})
    .to_string()
}

/// Fake peer `i`'s lease as upstream's wireguard backend writes it.
fn lease(i: u32, rng: &mut Rng) -> (String, String) {
    let subnet = Ipv4Addr::from(u32::from(FAKE_SUBNETS) + (i << (32 - NET.subnet_len)));
    let public = Ipv4Addr::from(u32::from(FAKE_PUBLIC) + 1 + i);
    let mut key = [0u8; 32];
    for c in key.chunks_mut(8) {
        c.copy_from_slice(&rng.next().to_le_bytes());
    }
    let key = flanneld::backend::wireguard::key::encode(&key);
    let value = format!(
        r#"{{"PublicIP":"{public}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{key}","Port":51820}}}}"#
    );
    (lease_key(subnet), value)
}

pub fn wireguard(agent: &Agent, n: usize) -> WgFigs {
    let mut fig = WgFigs::default();
    if let Err(e) = phases(agent, n, &mut fig) {
        progress!("wireguard N={n}: {e}");
        fig.notes.push(e);
    }
    fig
}

fn phases(agent: &Agent, n: usize, fig: &mut WgFigs) -> Result<(), String> {
    let (mut net, etcd, mut gw, dir) = underlay("w")?;
    gw.put(&format!("{PREFIX}/config"), &config(), 0)?;
    let host = net.add_host("node", &[&format!("{}/{UNDERLAY_LEN}", host_ip(0))]);
    let t = Instant::now();
    let id = gw.grant(LEASE_TTL)?;
    let mut rng = Rng(0x3e11_0000 + n as u64);
    for i in 0..n as u32 {
        let (k, v) = lease(i, &mut rng);
        gw.put(&k, &v, id)?;
    }
    fig.load_s = Some(t.elapsed().as_secs_f64());
    progress!(
        "wireguard N={n}: {n} leases loaded in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    let args = agent.args(&etcd, &dir.path().join("subnet.env"));
    let key = dir.path().join("wgkey");
    let key = key.display().to_string();
    let t0 = Instant::now();
    let mut proc = Proc::spawn_with_env(
        &agent.binary,
        &args,
        &[("WIREGUARD_KEY_FILE", &key)],
        &host,
        &dir.path().join("agent.log"),
    )?;
    let result = measure(n, &host, &mut proc, t0, fig);
    if result.is_err() {
        fig.notes
            .push(format!("agent log ends:\n{}", proc.log_tail(10)));
    }
    if !proc.stop() {
        fig.notes
            .push("the agent did not stop on SIGTERM within 5 s".into());
    }
    result
}

fn measure(
    n: usize,
    host: &conformance::TestNetns,
    proc: &mut Proc,
    t0: Instant,
    fig: &mut WgFigs,
) -> Result<(), String> {
    let held = poll_until(t0, PROGRAM_LIMIT, POLL, || {
        if !proc.alive() {
            return Err("the agent exited".into());
        }
        Ok(metric_of(host, "flannel_peers") == Some(n as f64))
    })?;
    let Some(d) = held else {
        fig.programmed_ms = Some(f64::INFINITY);
        return Err(format!(
            "the agent held {:?} peers of {n} after {} s",
            metric_of(host, "flannel_peers"),
            PROGRAM_LIMIT.as_secs()
        ));
    };
    fig.programmed_ms = Some(stats::ms(d));
    let pid = proc.pid();
    fig.fresh_cpu = Some(cpu_over(pid, STEADY)?);
    fig.rss_mib = Some(mib(process::rss_kib(pid)?));
    fig.threads = Some(process::threads(pid)?);
    progress!(
        "wireguard N={n}: all peers held after {:.0} ms, RSS {:.1} MiB, idle CPU {:.3} %",
        stats::ms(d),
        fig.rss_mib.unwrap_or(0.0),
        fig.fresh_cpu.unwrap_or(0.0)
    );
    // A datagram into every peer's subnet: each gets its Noise state and
    // a handshake initiation nobody answers. The device's queue drops
    // what the agent cannot take at once: sent again every second (a
    // peer talked to already only queues it) until every peer has one.
    let touched = Instant::now();
    let send_all = || {
        host.run(|| -> Result<(), String> {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            for i in 0..n as u32 {
                let net = u32::from(FAKE_SUBNETS) + (i << (32 - NET.subnet_len));
                let to = (Ipv4Addr::from(net + 1), 9);
                sock.send_to(b"hello", to)
                    .map_err(|e| format!("send to {to:?}: {e}"))?;
            }
            Ok(())
        })
    };
    let made = poll_until(touched, PROGRAM_LIMIT, Duration::from_secs(1), || {
        if metric_of(host, "flannel_wireguard_peers_active") == Some(n as f64) {
            return Ok(true);
        }
        send_all()?;
        Ok(false)
    })?;
    if made.is_none() {
        return Err(format!(
            "not every peer talked to within {} s: {:?} of {n}",
            PROGRAM_LIMIT.as_secs(),
            metric_of(host, "flannel_wireguard_peers_active")
        ));
    }
    fig.retrying_cpu = Some(cpu_over(pid, STEADY)?);
    fig.made_rss_mib = Some(mib(process::rss_kib(pid)?));
    progress!(
        "wireguard N={n}: a packet to every peer: RSS {:.1} MiB, CPU {:.2} % while handshakes go unanswered",
        fig.made_rss_mib.unwrap_or(0.0),
        fig.retrying_cpu.unwrap_or(0.0)
    );
    // Past WireGuard's 90 s of retries, with a margin for the last one.
    let quiet = touched + REKEY_ATTEMPT + Duration::from_secs(10);
    if let Some(wait) = quiet.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    if !proc.alive() {
        return Err("the agent exited".into());
    }
    fig.idle_cpu = Some(cpu_over(pid, STEADY)?);
    fig.peak_rss_mib = Some(mib(process::peak_rss_kib(pid)?));
    progress!(
        "wireguard N={n}: idle CPU {:.3} %",
        fig.idle_cpu.unwrap_or(0.0)
    );
    Ok(())
}
