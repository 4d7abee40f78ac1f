//! flanneld's data planes against the same paths built by hand, in one run:
//! pod-to-pod TCP throughput (iperf3) across two simulated hosts over our
//! vxlan and host-gw, beside a hand-built kernel vxlan and hand-built
//! routes; plus how long after a new host's lease appears every other host
//! reaches its pods (10 hosts, p50/p99).

#![allow(clippy::print_stdout)] // the figures are this program's output
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark set-up step that fails ends the run

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conformance::util::addresses;
use conformance::{Daemon, Invocation, TempDir, TestNetns, Underlay, wait_for};
use serde_json::{Value, json};

struct Host {
    ns: TestNetns,
    pod: TestNetns,
    ip: String,
    dir: PathBuf,
    agent: Option<Daemon>,
}

struct Net {
    hosts: Vec<Host>,
    _net: Underlay,
    dir: TempDir,
}

fn bins() -> PathBuf {
    PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: bench-flanneld <dir with our binaries>"),
    )
}

impl Net {
    fn new(n: usize) -> Net {
        let mut net = Underlay::new("bsw");
        let dir = TempDir::new("benchfl");
        let hosts = (0..n)
            .map(|h| {
                let ip = format!("192.168.78.{}", 10 + h);
                let ns = net.add_host(&format!("bh{h}"), &[&format!("{ip}/24")]);
                let hdir = dir.path().join(format!("h{h}"));
                std::fs::create_dir_all(&hdir).unwrap();
                Host {
                    ns,
                    pod: TestNetns::new(&format!("bh{h}pod")),
                    ip,
                    dir: hdir,
                    agent: None,
                }
            })
            .collect();
        Net {
            hosts,
            _net: net,
            dir,
        }
    }

    fn start_agent(&mut self, h: usize, config: &Value) {
        let store = self.dir.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(store.join("config"), config.to_string()).unwrap();
        let host = &mut self.hosts[h];
        let args: Vec<String> = [
            "--store-dir",
            store.to_str().unwrap(),
            "--iface",
            "eth0",
            "--subnet-file",
            host.dir.join("subnet.env").to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        host.agent = Some(Daemon::start(
            &bins().join("flanneld"),
            &args,
            &host.ns,
            &host.dir.join("log"),
        ));
        let env = host.dir.join("subnet.env");
        assert!(wait_for(Duration::from_secs(10), || env.exists()));
    }

    /// Wires the host's pod through our CNI chain; returns its address.
    fn add_pod(&self, h: usize) -> String {
        let host = &self.hosts[h];
        let conf = json!({"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
            "subnetFile": host.dir.join("subnet.env"), "dataDir": host.dir.join("cache"),
            "ipam": {"dataDir": host.dir.join("ipam")}, "delegate": {"isDefaultGateway": true}});
        let out = Invocation::new("ADD")
            .container_id(&format!("bench{h}"))
            .netns(&host.pod)
            .env("CNI_PATH", &bins().display().to_string())
            .config(&conf)
            .run(&bins().join("flannel"), &host.ns);
        addresses(&out.success()).remove(0)
    }
}

fn iperf(net: &Net, server: &str) -> f64 {
    let srv = &net.hosts[1].pod;
    let mut daemon = Daemon::start(
        Path::new("/usr/bin/iperf3"),
        &["-s".to_string(), "-1".to_string()],
        srv,
        &net.dir.path().join("iperf-s.log"),
    );
    assert!(wait_for(Duration::from_secs(5), || net.hosts[0]
        .pod
        .exec("ping", &["-c1", "-W1", server])
        .status
        .success()));
    std::thread::sleep(Duration::from_millis(200)); // let the server listen
    let out = net.hosts[0]
        .pod
        .exec("iperf3", &["-c", server, "-t", "4", "-O", "1", "-J"]);
    daemon.stop();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

/// Subnets by hand, as subnet.env would say, for the hand-built paths.
fn write_env(net: &Net, h: usize, mtu: u32) {
    let text = format!(
        "FLANNEL_NETWORK=10.245.0.0/16\nFLANNEL_SUBNET=10.245.{}.1/24\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n",
        h + 1
    );
    std::fs::write(net.hosts[h].dir.join("subnet.env"), text).unwrap();
}

fn ours(backend: &str) -> f64 {
    let mut net = Net::new(2);
    let config = json!({"Network": "10.244.0.0/16", "Backend": {"Type": backend}});
    net.start_agent(0, &config);
    net.start_agent(1, &config);
    net.add_pod(0);
    let b = net.add_pod(1);
    iperf(&net, &b)
}

fn by_hand(vxlan: bool) -> f64 {
    let net = Net::new(2);
    for h in 0..2 {
        write_env(&net, h, if vxlan { 1450 } else { 1500 });
    }
    net.add_pod(0);
    let b = net.add_pod(1);
    for (h, other) in [(0usize, 1usize), (1, 0)] {
        let ns = &net.hosts[h].ns;
        let peer_ip = &net.hosts[other].ip;
        let peer_subnet = format!("10.245.{}.0/24", other + 1);
        if vxlan {
            let mac = format!("02:00:00:00:00:0{}", h + 1);
            let peer_mac = format!("02:00:00:00:00:0{}", other + 1);
            ns.ip(&[
                "link",
                "add",
                "vx0",
                "address",
                &mac,
                "mtu",
                "1450",
                "type",
                "vxlan",
                "id",
                "1",
                "dev",
                "eth0",
                "local",
                &net.hosts[h].ip,
                "dstport",
                "8472",
                "nolearning",
            ]);
            ns.ip(&[
                "addr",
                "add",
                &format!("10.245.{}.0/32", h + 1),
                "dev",
                "vx0",
            ]);
            ns.ip(&["link", "set", "vx0", "up"]);
            let peer_gw = format!("10.245.{}.0", other + 1);
            ns.ip(&[
                "neigh",
                "add",
                &peer_gw,
                "lladdr",
                &peer_mac,
                "dev",
                "vx0",
                "nud",
                "permanent",
            ]);
            let out = ns.exec(
                "bridge",
                &[
                    "fdb",
                    "add",
                    &peer_mac,
                    "dev",
                    "vx0",
                    "dst",
                    peer_ip,
                    "self",
                    "permanent",
                ],
            );
            assert!(out.status.success());
            ns.ip(&[
                "route",
                "add",
                &peer_subnet,
                "via",
                &peer_gw,
                "dev",
                "vx0",
                "onlink",
            ]);
        } else {
            ns.ip(&["route", "add", &peer_subnet, "via", peer_ip, "dev", "eth0"]);
        }
    }
    iperf(&net, &b)
}

/// Times from a new host's agent start until every other host's pod
/// reaches the new host's pod.
fn propagation(hosts: usize) -> Vec<Duration> {
    let mut net = Net::new(hosts);
    let config = json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}});
    for h in 0..hosts - 1 {
        net.start_agent(h, &config);
        net.add_pod(h);
    }
    let start = Instant::now();
    net.start_agent(hosts - 1, &config);
    let target = net.add_pod(hosts - 1);
    let net = &net;
    let target = &target;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..hosts - 1)
            .map(|h| {
                s.spawn(move || {
                    let ok = wait_for(Duration::from_secs(20), || {
                        net.hosts[h]
                            .pod
                            .exec("ping", &["-c1", "-W1", target])
                            .status
                            .success()
                    });
                    assert!(ok, "host {h} never reached the new host");
                    start.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let rank = ((ms.len() as f64) * p).ceil().max(1.0) as usize;
    ms[rank.min(ms.len()) - 1]
}

fn main() {
    println!("pod-to-pod TCP throughput across two simulated hosts (iperf3, 4 s), Gbit/s");
    let mut rows = Vec::new();
    for round in 0..2 {
        let vx_ours = ours("vxlan");
        let vx_hand = by_hand(true);
        let gw_ours = ours("host-gw");
        let gw_hand = by_hand(false);
        println!(
            "  round {round}: vxlan ours {vx_ours:.2}, by hand {vx_hand:.2}; host-gw ours {gw_ours:.2}, by hand {gw_hand:.2}"
        );
        rows.push((vx_ours, vx_hand, gw_ours, gw_hand));
    }
    let best = |f: fn(&(f64, f64, f64, f64)) -> f64| rows.iter().map(f).fold(0.0, f64::max);
    let (vo, vh, go, gh) = (best(|r| r.0), best(|r| r.1), best(|r| r.2), best(|r| r.3));
    println!(
        "best of rounds: vxlan ours/hand {:.3} ({vo:.2}/{vh:.2}), host-gw ours/hand {:.3} ({go:.2}/{gh:.2})",
        vo / vh,
        go / gh
    );
    println!(
        "target >= 0.95: vxlan {}, host-gw {}",
        if vo / vh >= 0.95 { "MET" } else { "NOT MET" },
        if go / gh >= 0.95 { "MET" } else { "NOT MET" }
    );
    let times = propagation(10);
    println!(
        "new host's pods reachable from the 9 others after (agent start -> ping ok): p50 {:.0} ms, p99 {:.0} ms",
        pct(&times, 0.5),
        pct(&times, 0.99)
    );
}
