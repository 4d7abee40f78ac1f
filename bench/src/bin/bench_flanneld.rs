//! flanneld's data planes against the same paths built by hand, in one run:
//! pod-to-pod TCP throughput (iperf3) across two simulated hosts over our
//! vxlan and host-gw, beside a hand-built kernel vxlan and hand-built
//! routes; plus how long after a new host's lease appears every other host
//! reaches its pods (10 hosts, p50/p99).
//!
//! Rows: flanneld's udp backend with offloads on and off
//! (`--udp-offload=false`), our vxlan and host-gw, and the two paths by
//! hand, each on a fresh pair of hosts per round; columns, pod to pod: TCP
//! 1 and 4 streams (Gbit/s), 64-byte UDP datagrams/s received, machine-wide
//! busy CPU seconds per GB for each, and TCP relative to hand-built vxlan.

#![allow(clippy::print_stdout)] // the figures are this program's output
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark set-up step that fails ends the run

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bench::cleanup::Scratch;
use bench::process::machine_busy_seconds;
use bench::stats::{self, percentile};
use conformance::util::addresses;
use conformance::{Daemon, Invocation, TestNetns, Underlay, wait_for};
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
    dir: Scratch,
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
        let dir = Scratch::new("benchfl").unwrap();
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

    fn start_agent(&mut self, h: usize, config: &Value, extra: &[&str]) {
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
        .chain(extra)
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

/// One iperf3 test from host 0's pod to `server` in host 1's pod: starts a
/// one-shot server, waits until a ping crosses, runs the client with `args`
/// (plus `-J`) and returns its JSON report and the machine-wide busy CPU
/// seconds while the client ran; `None` (and a note) if the test failed.
fn iperf3(net: &Net, server: &str, args: &[&str]) -> Option<(Value, f64)> {
    let srv = &net.hosts[1].pod;
    let mut daemon = Daemon::start(
        Path::new("/usr/bin/iperf3"),
        &["-s".to_string(), "-1".to_string()],
        srv,
        &net.dir.path().join("iperf-s.log"),
    );
    assert!(
        wait_for(Duration::from_secs(10), || net.hosts[0]
            .pod
            .exec("ping", &["-c1", "-W1", server])
            .status
            .success()),
        "host 0's pod never reached {server}"
    );
    std::thread::sleep(Duration::from_millis(200)); // let the server listen
    // `timeout`: a test whose control connection is lost must not hang the run.
    let mut client = vec!["30", "iperf3", "-c", server, "-J"];
    client.extend_from_slice(args);
    let before = machine_busy_seconds().unwrap();
    let out = net.hosts[0].pod.exec("timeout", &client);
    let cpu = machine_busy_seconds().unwrap() - before;
    daemon.stop();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() || v["end"]["sum_received"].is_null() {
        eprintln!(
            "iperf3 {} failed ({}): {}",
            args.join(" "),
            out.status,
            v["error"].as_str().unwrap_or("no report")
        );
        return None;
    }
    Some((v, cpu))
}

/// TCP with `streams` streams: Gbit/s the receiver got, and busy CPU
/// seconds per GB (10^9 bytes) moved over the whole client run.
fn tcp(net: &Net, server: &str, streams: &str) -> (f64, f64) {
    let Some((v, cpu)) = iperf3(net, server, &["-t", "4", "-O", "1", "-P", streams]) else {
        return (f64::NAN, f64::NAN);
    };
    let got = &v["end"]["sum_received"];
    // The CPU time covers the omitted first second too: count its bytes
    // (as sent; with TCP the receiver got them within a window).
    let omitted: f64 = v["intervals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["sum"]["omitted"].as_bool() == Some(true))
        .filter_map(|i| i["sum"]["bytes"].as_f64())
        .sum();
    let gb = (got["bytes"].as_f64().unwrap_or(0.0) + omitted) / 1e9;
    (
        got["bits_per_second"].as_f64().unwrap_or(f64::NAN) / 1e9,
        cpu / gb,
    )
}

/// 64-byte UDP payloads as fast as the client can send (`-b 0`): datagrams
/// per second the server received, and busy CPU seconds per GB of payload
/// received. No `-O` here: with it, iperf3 3.12's UDP loss count still
/// includes the omitted second and no longer matches the bytes received.
fn udp64(net: &Net, server: &str) -> (f64, f64) {
    let Some((v, cpu)) = iperf3(net, server, &["-u", "-l", "64", "-b", "0", "-t", "4"]) else {
        return (f64::NAN, f64::NAN);
    };
    // The server's view: its highest sequence number seen, less the gaps.
    let got = &v["end"]["sum_received"];
    let field = |k: &str| got[k].as_f64().unwrap_or(f64::NAN);
    let received = field("packets") - field("lost_packets");
    (received / field("seconds"), cpu / (field("bytes") / 1e9))
}

/// One path's figures (NaN where a test failed).
#[derive(Clone, Copy, Debug)]
struct Row {
    tcp1: f64,
    tcp1_cpu: f64,
    tcp4: f64,
    tcp4_cpu: f64,
    udp_pps: f64,
    udp_cpu: f64,
}

impl Row {
    const NONE: Row = Row {
        tcp1: f64::NAN,
        tcp1_cpu: f64::NAN,
        tcp4: f64::NAN,
        tcp4_cpu: f64::NAN,
        udp_pps: f64::NAN,
        udp_cpu: f64::NAN,
    };

    /// The better of each figure: more throughput, less CPU per GB
    /// (`f64::max`/`min` skip a NaN).
    fn best(self, o: Row) -> Row {
        Row {
            tcp1: self.tcp1.max(o.tcp1),
            tcp1_cpu: self.tcp1_cpu.min(o.tcp1_cpu),
            tcp4: self.tcp4.max(o.tcp4),
            tcp4_cpu: self.tcp4_cpu.min(o.tcp4_cpu),
            udp_pps: self.udp_pps.max(o.udp_pps),
            udp_cpu: self.udp_cpu.min(o.udp_cpu),
        }
    }
}

/// Everything measured pod to pod, client in host 0's pod, server in host
/// 1's pod at `server`.
fn measure(net: &Net, server: &str) -> Row {
    let (tcp1, tcp1_cpu) = tcp(net, server, "1");
    let (tcp4, tcp4_cpu) = tcp(net, server, "4");
    let (udp_pps, udp_cpu) = udp64(net, server);
    Row {
        tcp1,
        tcp1_cpu,
        tcp4,
        tcp4_cpu,
        udp_pps,
        udp_cpu,
    }
}

/// Subnets by hand, as subnet.env would say, for the hand-built paths.
fn write_env(net: &Net, h: usize, mtu: u32) {
    let text = format!(
        "FLANNEL_NETWORK=10.245.0.0/16\nFLANNEL_SUBNET=10.245.{}.1/24\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n",
        h + 1
    );
    std::fs::write(net.hosts[h].dir.join("subnet.env"), text).unwrap();
}

/// A fresh pair of hosts running flanneld with `backend` (and the agents'
/// `extra` flags), a pod on each.
fn ours(backend: &str, extra: &[&str]) -> Row {
    let mut net = Net::new(2);
    let config = json!({"Network": "10.244.0.0/16", "Backend": {"Type": backend}});
    net.start_agent(0, &config, extra);
    net.start_agent(1, &config, extra);
    net.add_pod(0);
    let b = net.add_pod(1);
    measure(&net, &b)
}

fn by_hand(vxlan: bool) -> Row {
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
    measure(&net, &b)
}

/// Times from a new host's agent start until every other host's pod
/// reaches the new host's pod.
fn propagation(hosts: usize) -> Vec<Duration> {
    let mut net = Net::new(hosts);
    let config = json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}});
    for h in 0..hosts - 1 {
        net.start_agent(h, &config, &[]);
        net.add_pod(h);
    }
    let start = Instant::now();
    net.start_agent(hosts - 1, &config, &[]);
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

/// How a row's path is built.
#[derive(Clone, Copy, Debug)]
enum Build {
    /// flanneld with this backend, its agents given these extra flags.
    Ours(&'static str, &'static [&'static str]),
    /// Kernel vxlan (`true`) or plain routes (`false`), set up with `ip`.
    ByHand(bool),
}

const PATHS: [(&str, Build); 6] = [
    ("udp (offload)", Build::Ours("udp", &[])),
    (
        "udp (no offload)",
        Build::Ours("udp", &["--udp-offload=false"]),
    ),
    ("vxlan (ours)", Build::Ours("vxlan", &[])),
    ("vxlan (by hand)", Build::ByHand(true)),
    ("host-gw (ours)", Build::Ours("host-gw", &[])),
    ("host-gw (by hand)", Build::ByHand(false)),
];
// Rows of PATHS the targets compare.
const UDP_OFFLOAD: usize = 0;
const VXLAN_OURS: usize = 2;
const VXLAN_HAND: usize = 3;
const HOSTGW_OURS: usize = 4;
const HOSTGW_HAND: usize = 5;

/// A figure, or "-" when its test failed.
fn cell(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".to_string()
    }
}

/// One table: a row per path, ratios against `vxlan (by hand)`'s row.
fn print_table(title: &str, rows: &[Row]) {
    let hand = rows[VXLAN_HAND];
    println!("{title}");
    println!(
        "  {:<18} {:>8} {:>8} {:>8} {:>8} {:>11} {:>8} {:>8} {:>8} {:>8}",
        "path",
        "TCP x1",
        "CPU s/GB",
        "TCP x4",
        "CPU s/GB",
        "UDP64 pps",
        "CPU s/GB",
        "x1/hand",
        "x4/hand",
        "pps/hand"
    );
    for ((name, _), r) in PATHS.iter().zip(rows) {
        println!(
            "  {name:<18} {:>8} {:>8} {:>8} {:>8} {:>11} {:>8} {:>8} {:>8} {:>8}",
            cell(r.tcp1, 2),
            cell(r.tcp1_cpu, 1),
            cell(r.tcp4, 2),
            cell(r.tcp4_cpu, 1),
            cell(r.udp_pps, 0),
            cell(r.udp_cpu, 1),
            cell(r.tcp1 / hand.tcp1, 3),
            cell(r.tcp4 / hand.tcp4, 3),
            cell(r.udp_pps / hand.udp_pps, 3),
        );
    }
}

fn met(ratio: f64, target: f64) -> &'static str {
    if ratio >= target { "MET" } else { "NOT MET" }
}

fn main() {
    // Release builds abort on a panic, so no Drop would remove what the
    // run made: sweep our namespaces (and what runs in them) and scratch
    // directories first. (Not `cleanup::install`: the daemons here are
    // not started through `process::Proc`, so they would inherit the
    // signals it blocks.)
    bench::cleanup::install_panic_hook();

    println!(
        "pod to pod across two simulated hosts (client in host 0's pod, server in host 1's), iperf3:"
    );
    println!("  TCP x1 / x4: 1 / 4 streams, Gbit/s received (-t 4 -O 1)");
    println!(
        "  UDP64 pps: 64-byte payloads at -b 0 (unlimited), datagrams/s the server received (-t 4)"
    );
    println!(
        "  CPU s/GB: machine-wide busy CPU seconds (/proc/stat: user+nice+system+irq+softirq+steal,"
    );
    println!(
        "    all processes and all cores, because softirq work lands anywhere; other load counts too)"
    );
    println!("    over the client's run, per 10^9 bytes received");
    println!(
        "  x1/hand, x4/hand, pps/hand: TCP throughput, UDP64 rate / vxlan (by hand)'s in the same round"
    );
    let mut rounds: Vec<Vec<Row>> = Vec::new();
    for round in 0..2 {
        let rows: Vec<Row> = PATHS
            .iter()
            .map(|(_, build)| match *build {
                Build::Ours(backend, extra) => ours(backend, extra),
                Build::ByHand(vxlan) => by_hand(vxlan),
            })
            .collect();
        print_table(&format!("round {round}:"), &rows);
        rounds.push(rows);
    }
    let best: Vec<Row> = (0..PATHS.len())
        .map(|p| rounds.iter().fold(Row::NONE, |b, r| b.best(r[p])))
        .collect();
    print_table(
        "best of rounds (each figure on its own; ratios of the bests):",
        &best,
    );
    let (vo, vh) = (best[VXLAN_OURS].tcp1, best[VXLAN_HAND].tcp1);
    let (go, gh) = (best[HOSTGW_OURS].tcp1, best[HOSTGW_HAND].tcp1);
    println!(
        "best of rounds: vxlan ours/hand {:.3} ({vo:.2}/{vh:.2}), host-gw ours/hand {:.3} ({go:.2}/{gh:.2})",
        vo / vh,
        go / gh
    );
    println!(
        "target >= 0.95: vxlan {}, host-gw {}",
        met(vo / vh, 0.95),
        met(go / gh, 0.95)
    );
    let udp = best[UDP_OFFLOAD].tcp1 / vh;
    println!(
        "target: udp (offload) TCP >= 0.5 of hand-built VXLAN: {} (ratio {udp:.3})",
        met(udp, 0.5)
    );
    let times: Vec<f64> = propagation(10).into_iter().map(stats::ms).collect();
    let pct = |p: f64| percentile(&times, p).expect("no propagation times");
    println!(
        "new host's pods reachable from the 9 others after (agent start -> ping ok): p50 {:.0} ms, p99 {:.0} ms",
        pct(0.5),
        pct(0.99)
    );
}
