//! What every scenario shares: the addresses, the agents and their flags,
//! the fake peers written into etcd as upstream writes leases, the
//! underlay with etcd on it, and how long each step may take.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use conformance::{Etcd, TestNetns, Underlay};
use serde_json::{Value, json};

use crate::cleanup::Scratch;
use crate::etcd::Gateway;
use crate::kernel::{ClusterNet, Mac, Peer, format_mac, parse_mac};
use crate::process;

pub(crate) const PREFIX: &str = "/coreos.com/network";
pub const DEVICE: &str = "flannel.1";
/// The cluster network; agents take subnets from 10.1.0.0-10.9.255.0, the
/// fake peers from 10.100.0.0 on, so they never collide.
pub(crate) const NET: ClusterNet = ClusterNet {
    base: Ipv4Addr::new(10, 0, 0, 0),
    prefix: 8,
    subnet_len: 24,
};
pub(crate) const FAKE_SUBNETS: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 0);
/// The underlay: etcd on the switch at .0.1, hosts from .0.10, fake peers'
/// public addresses from .64.1 (nobody is there: vxlan entries only point
/// at them, and no traffic is sent).
pub(crate) const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
pub(crate) const UNDERLAY_LEN: u8 = 16;
pub(crate) const FAKE_PUBLIC: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 0);
pub(crate) const LEASE_TTL: u64 = 24 * 3600;

pub(crate) fn config() -> Value {
    json!({"Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": "10.1.0.0",
           "SubnetMax": "10.9.255.0", "Backend": {"Type": "vxlan"}})
}

pub(crate) fn host_ip(h: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 168, 0, 10)) + h as u32)
}

pub fn started() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

/// A progress line on stderr, stamped with the time since the start.
pub fn progress(msg: std::fmt::Arguments<'_>) {
    eprintln!("[{:7.1} s] {msg}", started().elapsed().as_secs_f64());
}

/// Polls `done` every `every` until it holds (the time since `from`) or
/// `limit` has passed since `from` (None).
pub(crate) fn poll_until(
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
pub struct Agent {
    pub label: &'static str,
    pub binary: PathBuf,
}

impl Agent {
    /// The flags both take (upstream v0.20's names).
    pub(crate) fn args(&self, etcd: &Etcd, subnet_file: &Path) -> Vec<String> {
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

pub(crate) const METRICS_PORT: &str = "18471";

/// The cost of our agent's last full comparison, from its /metrics (read
/// inside the node's namespace, over bash's /dev/tcp).
pub(crate) fn full_pass_ms(host: &TestNetns) -> Option<f64> {
    metric_of(host, "flannel_full_resync_last_microseconds").map(|us| us / 1000.0)
}

/// One unlabelled sample from our agent's /metrics.
pub(crate) fn metric_of(host: &TestNetns, name: &str) -> Option<f64> {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{METRICS_PORT}; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"
    );
    let out = host.exec("bash", &["-c", &script]);
    let prefix = format!("{name} ");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

/// Idle connections held open while `/healthz` is timed: more than the
/// agent keeps (at its limit it drops the oldest for a newcomer).
pub(crate) const HEALTH_IDLE: usize = flanneld::health::http::MAX_CONNECTIONS + 10;
pub(crate) const HEALTH_PROBES: usize = 20;

/// How long our agent takes to answer `/healthz` (connect, request, the
/// whole answer), in ms, while [`HEALTH_IDLE`] idle clients and one slow
/// one (half a request line sent) hold connections; INFINITY for a probe
/// without a 200 within 2 s. Made inside the node's namespace.
pub(crate) fn health_answers(host: &TestNetns) -> Result<Vec<f64>, String> {
    let addr: SocketAddr = format!("127.0.0.1:{METRICS_PORT}")
        .parse()
        .map_err(|e| format!("health address: {e}"))?;
    let connect = move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("cannot connect to {addr}: {e}"))
    };
    host.run(move || {
        let mut held = (0..HEALTH_IDLE)
            .map(|_| connect())
            .collect::<Result<Vec<_>, _>>()?;
        let mut slow = connect()?;
        slow.write_all(b"GET /healthz HTTP/1.1\r\n")
            .map_err(|e| format!("slow client: {e}"))?;
        held.push(slow);
        let probe = || -> Result<bool, std::io::Error> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out.starts_with("HTTP/1.1 200"))
        };
        let times = (0..HEALTH_PROBES)
            .map(|_| {
                let t = Instant::now();
                match probe() {
                    Ok(true) => crate::stats::ms(t.elapsed()),
                    _ => f64::INFINITY,
                }
            })
            .collect();
        drop(held);
        Ok(times)
    })
}

/// A small deterministic generator (splitmix64): the same seed gives the
/// same leases and the same changes to every agent measured.
#[derive(Debug)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

pub(crate) fn lease_key(subnet: Ipv4Addr) -> String {
    format!("{PREFIX}/subnets/{subnet}-{}", NET.subnet_len)
}

/// A lease value as upstream writes it.
pub(crate) fn lease_value(public: Ipv4Addr, mac: &Mac) -> String {
    format!(
        r#"{{"PublicIP":"{public}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
        format_mac(mac)
    )
}

/// The peers the store holds, but for the one at `own` (a node's own lease).
pub(crate) fn store_peers(gw: &mut Gateway, own: &[Ipv4Addr]) -> Result<Vec<Peer>, String> {
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
pub(crate) struct Fakes {
    pub(crate) rng: Rng,
    next_subnet: u32,
    next_ip: u32,
    macs: HashSet<Mac>,
    pub(crate) live: BTreeMap<Ipv4Addr, (i64, Peer)>,
}

impl Fakes {
    pub(crate) fn new(seed: u64) -> Fakes {
        Fakes {
            rng: Rng(seed),
            next_subnet: 0,
            next_ip: 0,
            macs: HashSet::new(),
            live: BTreeMap::new(),
        }
    }

    pub(crate) fn fresh_ip(&mut self) -> Ipv4Addr {
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
    pub(crate) fn fresh_peer(&mut self) -> Peer {
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

    pub(crate) fn peers(&self) -> Vec<Peer> {
        self.live.values().map(|(_, p)| *p).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    /// Writes `peer` as a new lease: an etcd lease of 24 h, then the key.
    pub(crate) fn write(gw: &mut Gateway, peer: &Peer) -> Result<i64, String> {
        let id = gw.grant(LEASE_TTL)?;
        gw.put(
            &lease_key(peer.subnet),
            &lease_value(peer.public, &peer.mac),
            id,
        )?;
        Ok(id)
    }

    /// Loads `n` new leases over `conns` connections at once.
    pub(crate) fn load(&mut self, etcd: &Etcd, n: usize, conns: usize) -> Result<(), String> {
        let peers: Vec<Peer> = (0..n).map(|_| self.fresh_peer()).collect();
        let mut gws = Vec::new();
        for _ in 0..conns {
            gws.push(crate::etcd::client(etcd)?);
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

    pub(crate) fn add(&mut self, gw: &mut Gateway) -> Result<Peer, String> {
        let p = self.fresh_peer();
        let id = Self::write(gw, &p)?;
        self.live.insert(p.subnet, (id, p));
        Ok(p)
    }

    pub(crate) fn pick(&mut self) -> Option<Ipv4Addr> {
        let i = self.rng.below(self.live.len());
        self.live.keys().nth(i).copied()
    }

    /// Removes a random peer's lease (revoking it deletes the key).
    pub(crate) fn remove(&mut self, gw: &mut Gateway) -> Result<Option<Peer>, String> {
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
    pub(crate) fn modify(&mut self, gw: &mut Gateway) -> Result<Option<Peer>, String> {
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

/// The underlay segment, the switch holding [`SWITCH_IP`] on it.
pub(crate) fn segment(tag: &str) -> Underlay {
    let net = Underlay::new(tag);
    net.switch.ip(&[
        "addr",
        "add",
        &format!("{SWITCH_IP}/{UNDERLAY_LEN}"),
        "dev",
        "br0",
    ]);
    net
}

/// The underlay with etcd on it and the network config written.
pub(crate) fn underlay(tag: &str) -> Result<(Underlay, Etcd, Gateway, Scratch), String> {
    let dir = Scratch::new(tag)?;
    let net = segment(tag);
    let etcd = crate::etcd::start(&net.switch, &SWITCH_IP.to_string(), dir.path())?;
    let mut gw = crate::etcd::client(&etcd)?;
    gw.put(&format!("{PREFIX}/config"), &config().to_string(), 0)?;
    Ok((net, etcd, gw, dir))
}

/// How long each step may take, how many of each are made, how long
/// steady state is watched, and how often the kernel is polled.
pub(crate) const PROGRAM_LIMIT: Duration = Duration::from_secs(60);
pub(crate) const CHANGE_LIMIT: Duration = Duration::from_secs(5);
pub(crate) const REPAIR_LIMIT: Duration = Duration::from_secs(5);
pub(crate) const DEVICE_LIMIT: Duration = Duration::from_secs(10);
pub(crate) const CHANGES: usize = 100;
pub(crate) const DAMAGES: usize = 20;
pub(crate) const CHURN_RATE: usize = 100;
pub(crate) const CHURN_TIME: Duration = Duration::from_secs(30);
pub(crate) const CHURN_SETTLE: Duration = Duration::from_secs(5);
pub(crate) const STEADY: Duration = Duration::from_secs(10);
pub(crate) const SETTLE: Duration = Duration::from_secs(2);
pub const FAST_POLL: Duration = Duration::from_millis(2);
pub const POLL: Duration = Duration::from_millis(5);

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub(crate) fn cpu_over(pid: u32, d: Duration) -> Result<f64, String> {
    let a = process::cpu_sample(pid)?;
    std::thread::sleep(d);
    let b = process::cpu_sample(pid)?;
    Ok(process::cpu_percent(&a, &b))
}
