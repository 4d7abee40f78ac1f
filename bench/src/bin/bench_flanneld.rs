//! flanneld's data planes against the same paths built by hand, in one run:
//! pod-to-pod TCP throughput (iperf3) across two simulated hosts over our
//! vxlan and host-gw, beside a hand-built kernel vxlan and hand-built
//! routes; our wireguard beside Debian's wireguard-go set up with `wg`;
//! plus how long after a new host's lease appears every other host reaches
//! its pods (10 hosts, p50/p99).
//!
//! Rows: flanneld's udp backend with offloads on and off
//! (`--udp-offload=false`), our wireguard, Debian's wireguard-go
//! (0.0.20220316, no TUN offloads) configured by hand, our vxlan and
//! host-gw, and the two kernel paths by hand, each on a fresh pair of hosts
//! per round; columns, pod to pod: TCP 1 and 4 streams (Gbit/s), 64-byte
//! UDP datagrams/s received, machine-wide busy CPU seconds per GB for each,
//! and each relative to hand-built vxlan (the ceiling).
//!
//!     bench-flanneld BIN_DIR [--only ROW,...]
//!
//! `--only` runs just the rows named (keys: see [`PATHS`]; `propagation`
//! for the 10-host test), e.g. `--only wireguard,wireguard-go,udp,vxlan-hand`;
//! without it every row and the propagation test run.

#![allow(clippy::print_stdout)] // the figures are this program's output
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark set-up step that fails ends the run

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bench::cleanup::Scratch;
use bench::process::machine_busy_seconds;
use bench::stats::{self, percentile};
use conformance::util::addresses;
use conformance::{Daemon, DaemonOptions, Invocation, TestNetns, Underlay, wait_for};
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

    /// Starts host `h`'s flanneld and waits for its subnet.env; on failure,
    /// says why with the end of the agent's log.
    fn start_agent(&mut self, h: usize, config: &Value, extra: &[&str]) -> Result<(), String> {
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
        // The simulated hosts share one filesystem: each agent its own
        // wireguard key (the other backends never read it).
        let key = host.dir.join("wgkey");
        let agent = host.agent.insert(Daemon::start_with_env(
            &bins().join("flanneld"),
            &args,
            &host.ns,
            &host.dir.join("log"),
            &[("WIREGUARD_KEY_FILE", key.to_str().unwrap())],
        ));
        let env = host.dir.join("subnet.env");
        if wait_for(Duration::from_secs(10), || env.exists()) {
            return Ok(());
        }
        let log = agent.log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!(
            "host {h}'s flanneld wrote no subnet.env within 10 s (still running: {}); the end of its log:\n{}",
            agent.alive(),
            tail.join("\n")
        ))
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
/// 1's pod at `server`; nothing (and a note) when no ping crosses.
fn measure(net: &Net, server: &str) -> Row {
    let crosses = wait_for(Duration::from_secs(10), || {
        net.hosts[0]
            .pod
            .exec("ping", &["-c1", "-W1", server])
            .status
            .success()
    });
    if !crosses {
        eprintln!("host 0's pod never reached {server}: no figures for this path");
        return Row::NONE;
    }
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
    for h in 0..2 {
        if let Err(e) = net.start_agent(h, &config, extra) {
            eprintln!("{backend}: {e}\nno figures for this path");
            return Row::NONE;
        }
    }
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

/// Runs `program args` (on the machine: `wg genkey`/`pubkey` need no
/// namespace) with `input` on its stdin; its stdout, trimmed.
fn output_of(program: &str, args: &[&str], input: &str) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .map_err(|e| format!("{program}: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The directory where wireguard-go puts its UAPI sockets (`IFNAME.sock`),
/// on the one filesystem all simulated hosts share.
const WG_SOCKETS: &str = "/var/run/wireguard";

/// The UAPI sockets of the wireguard-go processes running now, for the
/// panic hook to remove (a release build aborts without any `Drop`).
static WG_SOCKETS_LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Chains onto the panic hook (after the sweep, which kills what runs in
/// our namespaces): removes the sockets of [`WG_SOCKETS_LIVE`].
fn install_socket_sweep() {
    let sweep = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        sweep(info);
        // Not waiting: the panicking thread may hold the lock.
        let live = match WG_SOCKETS_LIVE.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        for s in live.iter() {
            let _ = std::fs::remove_file(s);
        }
    }));
}

/// One host's wireguard-go: stopped, and its UAPI socket removed, on drop.
struct WgGo {
    daemon: Daemon,
    socket: PathBuf,
}

impl WgGo {
    fn new(daemon: Daemon, socket: PathBuf) -> WgGo {
        WG_SOCKETS_LIVE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(socket.clone());
        WgGo { daemon, socket }
    }
}

impl Drop for WgGo {
    fn drop(&mut self) {
        self.daemon.stop();
        let _ = std::fs::remove_file(&self.socket);
        WG_SOCKETS_LIVE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| *s != self.socket);
    }
}

/// A device name no other run uses: wireguard-go's sockets are named by it
/// in one directory for every namespace. At most 15 bytes (IFNAMSIZ).
fn wg_ifname(h: usize) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 100;
    format!("wg{}r{n}h{h}", std::process::id() % 10_000_000)
}

/// Debian's wireguard-go (0.0.20220316: userspace, no TUN offloads) on
/// each host, configured by hand with `wg` and `ip` as flanneld would: a
/// peer per other host whose allowed IPs are its pod subnet, MTU 80 below
/// the underlay's, the peer's subnet routed into the device. Nothing (and
/// a note) when wireguard-go or `wg` is missing or fails.
fn wireguard_go() -> Row {
    match wireguard_go_path() {
        Ok(row) => row,
        Err(e) => {
            eprintln!("wireguard-go (Debian): {e}\nno figures for this path");
            Row::NONE
        }
    }
}

fn wireguard_go_path() -> Result<Row, String> {
    const PORT: &str = "51820";
    let net = Net::new(2);
    for h in 0..2 {
        write_env(&net, h, 1420);
    }
    net.add_pod(0);
    let b = net.add_pod(1);
    let mut keys = Vec::new();
    for h in 0..2 {
        let private = output_of("wg", &["genkey"], "")?;
        let public = output_of("wg", &["pubkey"], &private)?;
        let file = net.hosts[h].dir.join("wg-go.key");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .and_then(|mut f| f.write_all(format!("{private}\n").as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        keys.push((file, public));
    }
    let mut devices = Vec::new();
    for h in 0..2 {
        let host = &net.hosts[h];
        let ifname = wg_ifname(h);
        let socket = Path::new(WG_SOCKETS).join(format!("{ifname}.sock"));
        let opts = DaemonOptions {
            env: vec![("WG_PROCESS_FOREGROUND".into(), "1".into())],
            die_with_parent: true,
        };
        let daemon = Daemon::try_start(
            Path::new("/usr/bin/wireguard-go"),
            &["-f".to_string(), ifname.clone()],
            &host.ns,
            &host.dir.join("wireguard-go.log"),
            &opts,
        )?;
        let mut dev = WgGo::new(daemon, socket);
        if !wait_for(Duration::from_secs(10), || dev.socket.exists()) {
            return Err(format!(
                "wireguard-go -f {ifname} made no {} within 10 s (running: {}): {}",
                dev.socket.display(),
                dev.daemon.alive(),
                dev.daemon.log().trim()
            ));
        }
        devices.push((ifname, dev));
    }
    for (h, other) in [(0usize, 1usize), (1, 0)] {
        let ns = &net.hosts[h].ns;
        let ifname = &devices[h].0;
        let peer_subnet = format!("10.245.{}.0/24", other + 1);
        let endpoint = format!("{}:{PORT}", net.hosts[other].ip);
        let out = ns.exec(
            "wg",
            &[
                "set",
                ifname,
                "private-key",
                keys[h].0.to_str().unwrap(),
                "listen-port",
                PORT,
                "peer",
                &keys[other].1,
                "endpoint",
                &endpoint,
                "allowed-ips",
                &peer_subnet,
            ],
        );
        if !out.status.success() {
            return Err(format!(
                "wg set {ifname} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        ns.ip(&[
            "addr",
            "add",
            &format!("10.245.{}.0/32", h + 1),
            "dev",
            ifname,
        ]);
        ns.ip(&["link", "set", ifname, "mtu", "1420", "up"]);
        ns.ip(&["route", "add", &peer_subnet, "dev", ifname]);
    }
    let row = measure(&net, &b);
    // The devices (and their sockets) before the hosts they live in.
    drop(devices);
    Ok(row)
}

/// Times from a new host's agent start until every other host's pod
/// reaches the new host's pod.
fn propagation(hosts: usize) -> Vec<Duration> {
    let mut net = Net::new(hosts);
    let config = json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}});
    for h in 0..hosts - 1 {
        net.start_agent(h, &config, &[])
            .unwrap_or_else(|e| panic!("{e}"));
        net.add_pod(h);
    }
    let start = Instant::now();
    net.start_agent(hosts - 1, &config, &[])
        .unwrap_or_else(|e| panic!("{e}"));
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
    /// Debian's wireguard-go, set up with `wg` and `ip`.
    WireguardGo,
}

/// One row of the tables: its key for `--only`, its name, its path.
#[derive(Debug)]
struct PathSpec {
    key: &'static str,
    name: &'static str,
    build: Build,
}

const PATHS: [PathSpec; 8] = [
    PathSpec {
        key: "udp",
        name: "udp (offload)",
        build: Build::Ours("udp", &[]),
    },
    PathSpec {
        key: "udp-no-offload",
        name: "udp (no offload)",
        build: Build::Ours("udp", &["--udp-offload=false"]),
    },
    PathSpec {
        key: "wireguard",
        name: "wireguard (ours)",
        build: Build::Ours("wireguard", &[]),
    },
    PathSpec {
        key: "wireguard-go",
        name: "wireguard-go (Debian)",
        build: Build::WireguardGo,
    },
    PathSpec {
        key: "vxlan",
        name: "vxlan (ours)",
        build: Build::Ours("vxlan", &[]),
    },
    PathSpec {
        key: "vxlan-hand",
        name: "vxlan (by hand)",
        build: Build::ByHand(true),
    },
    PathSpec {
        key: "host-gw",
        name: "host-gw (ours)",
        build: Build::Ours("host-gw", &[]),
    },
    PathSpec {
        key: "host-gw-hand",
        name: "host-gw (by hand)",
        build: Build::ByHand(false),
    },
];
/// The `--only` key of the 10-host propagation test.
const PROPAGATION: &str = "propagation";

fn usage() -> String {
    let keys: Vec<&str> = PATHS.iter().map(|p| p.key).collect();
    format!(
        "usage: bench-flanneld BIN_DIR [--only ROW,...]\n  rows: {}, {PROPAGATION} (default: all)",
        keys.join(", ")
    )
}

/// What to run: the rows (in table order) and whether the propagation test.
fn parse_args() -> Result<(Vec<&'static PathSpec>, bool), String> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None | Some("-h" | "--help") => return Err(usage()),
        Some(_) => {} // the binaries' directory: see bins()
    }
    let mut only: Option<Vec<String>> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--only" => {
                let list = args.next().ok_or_else(usage)?;
                only = Some(list.split(',').map(|k| k.trim().to_string()).collect());
            }
            _ => return Err(format!("unknown argument {a}\n{}", usage())),
        }
    }
    let Some(only) = only else {
        return Ok((PATHS.iter().collect(), true));
    };
    for k in &only {
        if k != PROPAGATION && !PATHS.iter().any(|p| p.key == k) {
            return Err(format!("unknown row {k}\n{}", usage()));
        }
    }
    let rows = PATHS
        .iter()
        .filter(|p| only.iter().any(|k| k == p.key))
        .collect();
    Ok((rows, only.iter().any(|k| k == PROPAGATION)))
}

/// One round's figures (or the bests), row by row beside the paths run.
struct Table<'a> {
    paths: &'a [&'static PathSpec],
    rows: Vec<Row>,
}

impl Table<'_> {
    /// The row `key`, when it was run.
    fn get(&self, key: &str) -> Option<Row> {
        self.paths
            .iter()
            .position(|p| p.key == key)
            .map(|i| self.rows[i])
    }

    fn name(key: &str) -> &'static str {
        PATHS.iter().find(|p| p.key == key).map_or("?", |p| p.name)
    }

    /// A row per path, ratios against `vxlan (by hand)`'s row ("-" when
    /// that was not run).
    fn print(&self, title: &str) {
        let hand = self.get("vxlan-hand").unwrap_or(Row::NONE);
        println!("{title}");
        println!(
            "  {:<22} {:>8} {:>8} {:>8} {:>8} {:>11} {:>8} {:>8} {:>8} {:>8}",
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
        for (p, r) in self.paths.iter().zip(&self.rows) {
            println!(
                "  {:<22} {:>8} {:>8} {:>8} {:>8} {:>11} {:>8} {:>8} {:>8} {:>8}",
                p.name,
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

    /// `ours`'s TCP (1 and 4 streams) against `base`'s, as a target of
    /// `target` times, when both rows were run.
    fn target(&self, ours: &str, base: &str, target: f64, streams: &[usize]) {
        let (Some(o), Some(b)) = (self.get(ours), self.get(base)) else {
            return;
        };
        for &s in streams {
            let (x, y) = if s == 1 {
                (o.tcp1, b.tcp1)
            } else {
                (o.tcp4, b.tcp4)
            };
            println!(
                "  target: {} TCP {s} stream{} >= {target}x {}: {} (ratio {}: {}/{} Gbit/s)",
                Self::name(ours),
                if s == 1 { "" } else { "s" },
                Self::name(base),
                met(x / y, target),
                cell(x / y, 3),
                cell(x, 2),
                cell(y, 2),
            );
        }
    }

    /// Every target whose rows were run, and wireguard against the ceiling.
    fn print_targets(&self) {
        self.target("vxlan", "vxlan-hand", 0.95, &[1]);
        self.target("host-gw", "host-gw-hand", 0.95, &[1]);
        self.target("udp", "vxlan-hand", 0.5, &[1]);
        self.target("wireguard", "wireguard-go", 4.0, &[1, 4]);
        self.target("wireguard", "udp", 0.5, &[1, 4]);
        if let (Some(o), Some(h)) = (self.get("wireguard"), self.get("vxlan-hand")) {
            println!(
                "  wireguard (ours) / vxlan (by hand), no target: TCP 1 stream {}, 4 streams {}, UDP64 pps {}",
                cell(o.tcp1 / h.tcp1, 3),
                cell(o.tcp4 / h.tcp4, 3),
                cell(o.udp_pps / h.udp_pps, 3),
            );
        }
        if let (Some(o), Some(g)) = (self.get("wireguard"), self.get("wireguard-go")) {
            println!(
                "  wireguard (ours) / wireguard-go (Debian), UDP64 pps: {}",
                cell(o.udp_pps / g.udp_pps, 3),
            );
        }
    }
}

/// A figure, or "-" when its test failed.
fn cell(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".to_string()
    }
}

fn met(ratio: f64, target: f64) -> &'static str {
    if !ratio.is_finite() {
        "NOT MEASURED"
    } else if ratio >= target {
        "MET"
    } else {
        "NOT MET"
    }
}

fn main() {
    // Release builds abort on a panic, so no Drop would remove what the
    // run made: sweep our namespaces (and what runs in them) and scratch
    // directories first. (Not `cleanup::install`: the daemons here are
    // not started through `process::Proc`, so they would inherit the
    // signals it blocks.)
    bench::cleanup::install_panic_hook();
    install_socket_sweep();
    let (paths, propagate) = match parse_args() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };

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
    if paths.iter().any(|p| matches!(p.build, Build::WireguardGo)) {
        println!(
            "  wireguard-go (Debian): wireguard-go -f with `wg set` by hand, MTU 1420, peer subnet routed into the device"
        );
    }
    let mut rounds: Vec<Table> = Vec::new();
    let round_count = if paths.is_empty() { 0 } else { 2 };
    for round in 0..round_count {
        let rows: Vec<Row> = paths
            .iter()
            .map(|p| match p.build {
                Build::Ours(backend, extra) => ours(backend, extra),
                Build::ByHand(vxlan) => by_hand(vxlan),
                Build::WireguardGo => wireguard_go(),
            })
            .collect();
        let table = Table {
            paths: &paths,
            rows,
        };
        table.print(&format!("round {round}:"));
        table.print_targets();
        rounds.push(table);
    }
    if round_count > 0 {
        let best = Table {
            paths: &paths,
            rows: (0..paths.len())
                .map(|p| rounds.iter().fold(Row::NONE, |b, r| b.best(r.rows[p])))
                .collect(),
        };
        best.print("best of rounds (each figure on its own; ratios of the bests):");
        best.print_targets();
    }
    if !propagate {
        return;
    }
    let times: Vec<f64> = propagation(10).into_iter().map(stats::ms).collect();
    let pct = |p: f64| percentile(&times, p).expect("no propagation times");
    println!(
        "new host's pods reachable from the 9 others after (agent start -> ping ok): p50 {:.0} ms, p99 {:.0} ms",
        pct(0.5),
        pct(0.99)
    );
}
