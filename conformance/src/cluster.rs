//! A flannel cluster of simulated hosts: network namespaces joined by a
//! bridge in their own "switch" namespace ([`Underlay`]), one flanneld per
//! host on the embedded store or on a real etcd in the switch namespace,
//! and pods made through the real CNI chain (flannel -> bridge ->
//! host-local).
//!
//! Everything is removed on drop, also when the test panics: agents stop
//! first, then etcd, then the namespaces and the scratch directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::kube::{FLANNEL_TOKEN, KubeApi};
use crate::util::addresses;
use crate::{Daemon, Etcd, Invocation, TempDir, TestNetns, Underlay, plugin_binary, wait_for};

/// Where the test etcd listens: the switch's address on the underlay.
pub const ETCD: &str = "http://192.168.77.1:2379";

/// One simulated node.
#[derive(Debug)]
pub struct Host {
    // Dropped first: the agent stops before its namespaces go.
    pub agent: Option<Daemon>,
    pub pods: Vec<TestNetns>,
    pub ns: TestNetns,
    /// subnet.env, the agent's log, the CNI cache and IPAM store.
    pub dir: PathBuf,
    pub underlay_ip: String,
}

#[derive(Debug)]
pub struct Cluster {
    // Dropped in order: agents stop before their namespaces and the store go.
    pub hosts: Vec<Host>,
    /// The Kubernetes API, when it is the store (`--kube-subnet-mgr`).
    pub kube: Option<KubeApi>,
    pub etcd: Option<Etcd>,
    pub net: Underlay,
    pub dir: TempDir,
}

/// etcd in the switch namespace, at [`ETCD`] on the underlay, its data in
/// `dir/etcd`; the network config written.
pub fn start_etcd(switch: &TestNetns, dir: &Path, config: &Value) -> Etcd {
    switch.ip(&["addr", "add", "192.168.77.1/24", "dev", "br0"]);
    let etcd = Etcd::start(switch, ETCD, dir);
    etcd.ctl(&["put", CONFIG_KEY, &config.to_string()]);
    etcd
}

/// Where the network config is in etcd.
const CONFIG_KEY: &str = "/coreos.com/network/config";
const SUBNETS: &str = "/coreos.com/network/subnets/";

impl Cluster {
    pub fn new(hosts: usize, pods_per_host: usize, config: &Value) -> Cluster {
        Self::with_store(hosts, pods_per_host, config, false)
    }

    pub fn with_store(
        hosts: usize,
        pods_per_host: usize,
        config: &Value,
        use_etcd: bool,
    ) -> Cluster {
        Self::build(hosts, pods_per_host, config, use_etcd, &[])
    }

    /// On the embedded store, every agent started with `extra` flags.
    pub fn with_args(
        hosts: usize,
        pods_per_host: usize,
        config: &Value,
        extra: &[&str],
    ) -> Cluster {
        Self::build(hosts, pods_per_host, config, false, extra)
    }

    /// The hosts, their pods' namespaces and the store (etcd with
    /// `use_etcd`, else the embedded one), every agent started with
    /// `extra` flags (and waited for: each has written its subnet.env).
    pub fn build(
        hosts: usize,
        pods_per_host: usize,
        config: &Value,
        use_etcd: bool,
        extra: &[&str],
    ) -> Cluster {
        let mut c = Self::prepare(hosts, pods_per_host, config, use_etcd);
        for h in 0..hosts {
            c.start_with(h, extra);
        }
        c
    }

    /// As [`Cluster::build`], but no agent is started.
    pub fn prepare(hosts: usize, pods_per_host: usize, config: &Value, use_etcd: bool) -> Cluster {
        let mut net = Underlay::new("switch");
        let dir = TempDir::new("flanneld");
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        std::fs::write(dir.path().join("store/config"), config.to_string()).unwrap();
        let etcd = use_etcd.then(|| start_etcd(&net.switch, dir.path(), config));
        let mut list = Vec::new();
        for h in 0..hosts {
            let underlay_ip = format!("192.168.77.{}", 10 + h);
            // An IPv6 underlay too, for the dual-stack tests.
            let ns = net.add_host(
                &format!("h{h}"),
                &[
                    &format!("{underlay_ip}/24"),
                    &format!("fd00:77::{}/64", 10 + h),
                ],
            );
            let pods = (0..pods_per_host)
                .map(|p| TestNetns::new(&format!("h{h}p{p}")))
                .collect();
            let hdir = dir.path().join(format!("host{h}"));
            std::fs::create_dir_all(&hdir).unwrap();
            list.push(Host {
                agent: None,
                pods,
                ns,
                dir: hdir,
                underlay_ip,
            });
        }
        Cluster {
            hosts: list,
            kube: None,
            etcd,
            net,
            dir,
        }
    }

    /// As [`Cluster::prepare`], with a real Kubernetes API server in the
    /// switch namespace (at 192.168.77.1:6443) as the store: upstream's
    /// RBAC for flannel applied, `config` as net-conf.json, and a Node
    /// `node-h<h>` per host with the pod CIDRs `cidrs(h)` (none: not
    /// assigned yet). `None` where the Kubernetes binaries are absent (said
    /// loudly): the caller skips.
    pub fn prepare_kube(
        hosts: usize,
        pods_per_host: usize,
        config: &Value,
        cidrs: impl Fn(usize) -> Vec<String>,
    ) -> Option<Cluster> {
        KubeApi::binaries()?;
        let mut c = Self::prepare(hosts, pods_per_host, config, false);
        c.net
            .switch
            .ip(&["addr", "add", "192.168.77.1/24", "dev", "br0"]);
        let api = KubeApi::start(&c.net.switch, "192.168.77.1", &c.dir.path().join("kube"))?;
        api.apply_flannel_rbac();
        for h in 0..hosts {
            let cidrs = cidrs(h);
            let cidrs: Vec<&str> = cidrs.iter().map(String::as_str).collect();
            // A kubelet-registered Node always has annotations.
            api.create_node(
                &Self::node_name(h),
                &cidrs,
                &[("node.alpha.kubernetes.io/ttl", "0")],
            );
        }
        std::fs::write(c.dir.path().join("net-conf.json"), config.to_string()).unwrap();
        c.kube = Some(api);
        Some(c)
    }

    /// Host `h`'s Node name in kube mode.
    pub fn node_name(h: usize) -> String {
        format!("node-h{h}")
    }

    pub fn kube(&self) -> &KubeApi {
        self.kube
            .as_ref()
            .expect("this cluster has no Kubernetes API")
    }

    pub fn kube_mut(&mut self) -> &mut KubeApi {
        self.kube
            .as_mut()
            .expect("this cluster has no Kubernetes API")
    }

    /// The embedded store's directory (unused on etcd).
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn start(&mut self, h: usize) {
        self.start_with(h, &[]);
    }

    /// The agent's own flags for host `h`: its store, `eth0`, its
    /// subnet.env; then `extra`.
    pub fn agent_args(&self, h: usize, extra: &[&str]) -> Vec<String> {
        let store = self.store();
        let kubeconfig = self
            .kube
            .as_ref()
            .map(|k| k.kubeconfig("flannel", FLANNEL_TOKEN));
        let net_conf = self.dir.path().join("net-conf.json");
        let store_args: Vec<&str> = match &kubeconfig {
            Some(k) => vec![
                "--kube-subnet-mgr",
                "--kubeconfig-file",
                k.to_str().unwrap(),
                "--net-config-path",
                net_conf.to_str().unwrap(),
            ],
            None if self.etcd.is_some() => vec!["--etcd-endpoints", ETCD],
            None => vec!["--store-dir", store.to_str().unwrap()],
        };
        store_args
            .iter()
            .chain(&[
                "--iface",
                "eth0",
                "--subnet-file",
                self.hosts[h].dir.join("subnet.env").to_str().unwrap(),
            ])
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    }

    /// Starts host `h`'s agent with `extra` flags after the harness's own.
    pub fn start_with(&mut self, h: usize, extra: &[&str]) {
        let args = self.agent_args(h, extra);
        self.launch(h, &plugin_binary("flanneld"), &args);
    }

    /// Starts `binary args` as host `h`'s agent (its stderr is the agent's
    /// log) and waits for its subnet.env.
    pub fn launch(&mut self, h: usize, binary: &Path, args: &[String]) {
        self.spawn_binary(h, binary, args);
        let env = self.hosts[h].dir.join("subnet.env");
        assert!(
            wait_for(Duration::from_secs(10), || env.exists()),
            "host {h} wrote no subnet.env: {}",
            self.log(h)
        );
    }

    /// Starts `binary args` as host `h`'s agent; does not wait.
    pub fn spawn_binary(&mut self, h: usize, binary: &Path, args: &[String]) {
        // In kube mode the agent learns its Node's name as in a DaemonSet.
        let name = Self::node_name(h);
        // The simulated hosts share one filesystem: each agent keeps its
        // WireGuard key in its host's directory, not in /run/flannel.
        let key = self.wg_key_file(h).display().to_string();
        let mut env: Vec<(&str, &str)> = vec![("WIREGUARD_KEY_FILE", &key)];
        if self.kube.is_some() {
            env.push(("NODE_NAME", &name));
        }
        let host = &mut self.hosts[h];
        let log = host.dir.join("flanneld.log");
        host.agent = Some(Daemon::start_with_env(binary, args, &host.ns, &log, &env));
    }

    /// Where host `h`'s agent keeps its WireGuard private key
    /// (`WIREGUARD_KEY_FILE`).
    pub fn wg_key_file(&self, h: usize) -> PathBuf {
        self.hosts[h].dir.join("wgkey")
    }

    /// Starts host `h`'s agent with `extra` flags; does not wait (e.g. for
    /// an agent that cannot get a lease yet).
    pub fn spawn(&mut self, h: usize, extra: &[&str]) {
        let args = self.agent_args(h, extra);
        self.spawn_binary(h, &plugin_binary("flanneld"), &args);
    }

    /// Starts host `h`'s agent as [`Cluster::start_with`] does, but
    /// without the subnet.env of an earlier run: the agent starts without
    /// that hint, and the wait is for the file it writes itself.
    pub fn start_afresh(&mut self, h: usize, extra: &[&str]) {
        let _ = std::fs::remove_file(self.hosts[h].dir.join("subnet.env"));
        self.start_with(h, extra);
    }

    /// Stops host `h`'s agent (SIGTERM) and fails the test unless it ended
    /// cleanly (exit code 0).
    pub fn stop(&mut self, h: usize) {
        if let Some(mut a) = self.hosts[h].agent.take() {
            let code = a.stop();
            assert_eq!(code, Some(0), "host {h}'s agent: {}", self.log(h));
        }
    }

    /// Writes the network config into the store (etcd, or the embedded
    /// store's file, replaced at once as an operator's tools do).
    pub fn set_config(&self, config: &Value) {
        match &self.etcd {
            Some(etcd) => {
                etcd.ctl(&["put", CONFIG_KEY, &config.to_string()]);
            }
            None => {
                let path = self.store().join("config");
                let tmp = self.store().join(".config.test-tmp");
                std::fs::write(&tmp, config.to_string()).unwrap();
                std::fs::rename(&tmp, path).unwrap();
            }
        }
    }

    /// The embedded store's lease file that names `ip` (as its public
    /// address, or anywhere in the record).
    pub fn lease_file_of(&self, ip: &str) -> Option<PathBuf> {
        std::fs::read_dir(self.store().join("subnets"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .contains(&format!("\"{ip}\""))
            })
    }

    pub fn subnet_env(&self, h: usize) -> String {
        std::fs::read_to_string(self.hosts[h].dir.join("subnet.env")).unwrap()
    }

    pub fn conf(&self, h: usize) -> Value {
        let dir = &self.hosts[h].dir;
        json!({
            "cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
            "subnetFile": dir.join("subnet.env"), "dataDir": dir.join("cache"),
            "ipam": {"dataDir": dir.join("ipam")}, "delegate": {"isDefaultGateway": true}
        })
    }

    /// Adds pod `p` of host `h` through the CNI chain; returns its IPv4 address.
    pub fn add_pod(&self, h: usize, p: usize) -> String {
        self.add_pod_all(h, p).remove(0)
    }

    /// Adds the pod; returns every address it got (IPv4 first).
    pub fn add_pod_all(&self, h: usize, p: usize) -> Vec<String> {
        let host = &self.hosts[h];
        let out = Invocation::new("ADD")
            .container_id(&format!("h{h}p{p}"))
            .netns(&host.pods[p])
            .config(&self.conf(h))
            .run(&plugin_binary("flannel"), &host.ns);
        addresses(&out.success())
    }

    pub fn reaches(&self, h: usize, p: usize, target: &str) -> bool {
        self.hosts[h].pods[p]
            .exec("ping", &["-c1", "-W1", target])
            .status
            .success()
    }
}

/// The command that runs an agent in a mount namespace of its own:
/// `unshare` makes the namespace (mounts private, so nothing made in it
/// reaches the machine's), a shell notes its pid in `pidfile` and becomes
/// the agent (same pid), so [`Daemon::stop`] signals the agent itself.
pub fn in_own_mount_ns(pidfile: &Path, binary: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
    let mut all: Vec<String> = [
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        r#"echo $$ > "$0" && exec "$@""#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.push(pidfile.display().to_string());
    all.push(binary.display().to_string());
    all.extend(args.iter().cloned());
    (PathBuf::from("/usr/bin/unshare"), all)
}

/// `program` to be run in the mount namespace of process `pid`, with that
/// process's root and working directory: entering a mount namespace
/// otherwise resets the root to the namespace's own, which is not ours when
/// the tests run under chroot.
pub fn nsenter_mount(pid: i32, program: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("nsenter");
    cmd.args([
        "--target",
        &pid.to_string(),
        "--mount",
        "--root",
        "--wd",
        "--",
        program,
    ]);
    cmd
}

/// Runs `program args` inside the mount namespace of process `pid` (and
/// nowhere else: the network namespace stays the caller's); fails the test
/// if it fails.
pub fn in_mount_ns_of(pid: i32, program: &str, args: &[&str]) -> String {
    let out = nsenter_mount(pid, program)
        .args(args)
        .output()
        .expect("failed to run nsenter (util-linux)");
    assert!(
        out.status.success(),
        "nsenter -t {pid} -m {program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Cluster {
    pub fn agent(&self, h: usize) -> &Daemon {
        self.hosts[h]
            .agent
            .as_ref()
            .unwrap_or_else(|| panic!("host {h} runs no agent"))
    }

    /// Host `h`'s agent log (also after the agent stopped).
    pub fn log(&self, h: usize) -> String {
        std::fs::read_to_string(self.hosts[h].dir.join("flanneld.log")).unwrap_or_default()
    }

    /// Starts host `h`'s agent (with `extra` flags) in a mount namespace of
    /// its own (see [`in_own_mount_ns`]); waits for its subnet.env and
    /// returns its pid, for [`in_mount_ns_of`].
    pub fn start_in_own_mount_ns(&mut self, h: usize, extra: &[&str]) -> i32 {
        let pidfile = self.hosts[h].dir.join("agent.pid");
        let _ = std::fs::remove_file(&pidfile);
        let args = self.agent_args(h, extra);
        let (binary, args) = in_own_mount_ns(&pidfile, &plugin_binary("flanneld"), &args);
        self.launch(h, &binary, &args);
        let mut pid = None;
        assert!(
            wait_for(Duration::from_secs(5), || {
                pid = std::fs::read_to_string(&pidfile)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                pid.is_some()
            }),
            "the agent of host {h} noted no pid: {}",
            self.log(h)
        );
        pid.unwrap()
    }

    /// This host's subnet from its subnet.env, e.g. `10.244.7.0/24`.
    pub fn subnet(&self, h: usize) -> String {
        let env = self.subnet_env(h);
        let cidr = env
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .unwrap_or_else(|| panic!("no FLANNEL_SUBNET in {env}"));
        let (ip, len) = cidr.split_once('/').unwrap();
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        let len: u32 = len.parse().unwrap();
        let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
        format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(ip) & mask))
    }

    /// The store's key of this host's lease, e.g. `10.244.7.0-24`.
    pub fn key(&self, h: usize) -> String {
        self.subnet(h).replace('/', "-")
    }

    /// The cluster's etcd; fails the test on the embedded store.
    pub fn etcd(&self) -> &Etcd {
        self.etcd
            .as_ref()
            .unwrap_or_else(|| panic!("this cluster runs on the embedded store"))
    }

    pub fn etcd_mut(&mut self) -> &mut Etcd {
        self.etcd
            .as_mut()
            .unwrap_or_else(|| panic!("this cluster runs on the embedded store"))
    }

    /// Starts the stopped etcd again (on its data, or empty after
    /// [`Etcd::wipe`]) and writes `config` as an operator would.
    pub fn restart_etcd(&mut self, config: &Value) {
        let etcd = self.etcd_mut();
        etcd.start_again();
        etcd.ctl(&["put", CONFIG_KEY, &config.to_string()]);
    }

    /// `etcdctl <args>` against the cluster's etcd; its stdout, or the
    /// test fails.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        self.etcd().ctl(args)
    }

    /// The lease keys under `/coreos.com/network/subnets/`, without it.
    pub fn etcd_keys(&self) -> Vec<String> {
        self.etcd().keys(SUBNETS)
    }

    /// The ids (hex, as etcdctl prints them) of `etcdctl lease list`.
    pub fn etcd_leases(&self) -> Vec<String> {
        self.etcd().lease_ids()
    }
}

/// The lease ids of `etcdctl lease list`'s output (`found N leases`, then
/// one hex id a line); checks that N is the number of ids.
pub fn parse_lease_list(text: &str) -> Vec<String> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let n: usize = header
        .strip_prefix("found ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected `etcdctl lease list` output: {text}"));
    let ids: Vec<String> = lines
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    assert!(
        ids.len() == n && ids.iter().all(|i| i.chars().all(|c| c.is_ascii_hexdigit())),
        "unexpected `etcdctl lease list` output: {text}"
    );
    ids
}

/// The agent's log lines of `level` (`E`, `W`, `I`, `D`: the word after
/// the timestamp) that contain `needle`.
pub fn log_lines<'a>(log: &'a str, level: char, needle: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            words.next();
            words.next() == Some(level.encode_utf8(&mut [0; 4]))
        })
        .filter(|l| l.contains(needle))
        .collect()
}

/// GET `path` from `addr:port` with a socket made inside `ns`: the status
/// code and the body (0 and why when there is no answer within 2 s).
pub fn http_get(ns: &TestNetns, addr: &str, port: u16, path: &str) -> (u16, String) {
    let target: std::net::SocketAddr = format!("{addr}:{port}").parse().unwrap();
    match ns.run(|| std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))) {
        Ok(s) => http_request(s, path),
        Err(e) => (0, format!("cannot connect to {target}: {e}")),
    }
}

/// GET `path` over a connection made already: the status code and the
/// body (0 and why when there is no answer within 2 s).
pub fn http_request(mut s: std::net::TcpStream, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    if let Err(e) = s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()) {
        return (0, e.to_string());
    }
    let mut out = String::new();
    if let Err(e) = s.read_to_string(&mut out) {
        return (0, e.to_string());
    }
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

/// The value of the sample `name` (no labels) in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `ping -i 0.2 target` from a namespace, in the background until
/// [`Pinger::stop`] (SIGINT, as a person ends it) or drop (killed).
#[derive(Debug)]
pub struct Pinger {
    child: Option<std::process::Child>,
    out: PathBuf,
    pub from: String,
    pub target: String,
}

/// How a [`Pinger`] went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingReport {
    /// From ping's summary line.
    pub transmitted: u64,
    pub received: u64,
    /// Sequence numbers without a reply, up to the last one answered.
    pub missing: Vec<u64>,
    /// The highest sequence number answered.
    pub last_answered: u64,
    pub output: String,
}

impl PingReport {
    /// Echo requests lost: the unanswered ones before the last reply, and
    /// those sent after it except the one that may have been in flight
    /// when ping was stopped.
    pub fn lost(&self) -> u64 {
        self.missing.len() as u64
            + self
                .transmitted
                .saturating_sub(self.last_answered)
                .saturating_sub(1)
    }

    pub fn parse(output: &str) -> PingReport {
        let mut seqs = std::collections::BTreeSet::new();
        for l in output.lines().filter(|l| l.contains(" bytes from ")) {
            if let Some(seq) = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq="))
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.insert(seq);
            }
        }
        let last_answered = seqs.iter().next_back().copied().unwrap_or(0);
        let missing = (1..=last_answered).filter(|s| !seqs.contains(s)).collect();
        // "25 packets transmitted, 25 received, 0% packet loss, time 4806ms"
        let summary = output
            .lines()
            .find(|l| l.contains(" packets transmitted, "))
            .unwrap_or_default();
        let count = |what: &str| {
            summary
                .split(", ")
                .find_map(|part| part.strip_suffix(what))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        PingReport {
            transmitted: count(" packets transmitted"),
            received: count(" received"),
            missing,
            last_answered,
            output: output.to_string(),
        }
    }
}

impl Pinger {
    /// Starts pinging `target` from `ns` every 0.2 s; its output goes to
    /// `out`.
    pub fn start(ns: &TestNetns, target: &str, out: &Path) -> Pinger {
        let file = std::fs::File::create(out).expect("cannot create the ping log");
        let err = file.try_clone().expect("cannot dup the ping log");
        let mut cmd = std::process::Command::new("ping");
        cmd.args(["-n", "-i", "0.2", target])
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(err);
        let child = crate::netns::spawn_in(&mut cmd, ns).expect("cannot start ping");
        Pinger {
            child: Some(child),
            out: out.to_path_buf(),
            from: ns.name().to_string(),
            target: target.to_string(),
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Replies so far.
    pub fn replies(&self) -> usize {
        self.output()
            .lines()
            .filter(|l| l.contains(" bytes from "))
            .count()
    }

    /// Waits until `n` more replies came (up to `timeout`).
    pub fn wait_for_more(&self, n: usize, timeout: Duration) -> bool {
        let now = self.replies();
        wait_for(timeout, || self.replies() >= now + n)
    }

    /// Stops ping as a person does (SIGINT: it prints its summary).
    pub fn stop(&mut self) -> PingReport {
        if let Some(mut child) = self.child.take() {
            crate::daemon::end_child(
                &mut child,
                nix::sys::signal::Signal::SIGINT,
                Duration::from_secs(5),
            );
        }
        PingReport::parse(&self.output())
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_reports_count_gaps_and_forgive_the_packet_in_flight() {
        let out = "PING 10.244.1.2 (10.244.1.2) 56(84) bytes of data.\n\
64 bytes from 10.244.1.2: icmp_seq=1 ttl=62 time=0.1 ms\n\
64 bytes from 10.244.1.2: icmp_seq=2 ttl=62 time=0.1 ms\n\
64 bytes from 10.244.1.2: icmp_seq=5 ttl=62 time=0.1 ms\n\
\n--- 10.244.1.2 ping statistics ---\n\
6 packets transmitted, 3 received, 50% packet loss, time 1000ms\n";
        let r = PingReport::parse(out);
        assert_eq!((r.transmitted, r.received), (6, 3));
        assert_eq!(r.missing, vec![3, 4]);
        assert_eq!(r.last_answered, 5);
        assert_eq!(r.lost(), 2, "seq 6 was in flight");
        // 1-4 answered, 5 and 6 not: 6 may have been in flight, 5 is lost.
        let tail = out.replace("icmp_seq=5", "icmp_seq=3").replace(
            "icmp_seq=3 ttl=62 time=0.1 ms\n\n",
            "icmp_seq=3 ttl=62 time=0.1 ms\n64 bytes from 10.244.1.2: icmp_seq=4 ttl=62 time=0.1 ms\n\n",
        );
        let r = PingReport::parse(&tail);
        assert!(r.missing.is_empty() && r.last_answered == 4, "{r:?}");
        assert_eq!(r.lost(), 1, "seq 5 lost, 6 in flight: {r:?}");
    }

    #[test]
    fn lease_list_and_metrics_and_log_lines() {
        let ids = parse_lease_list("found 2 leases\n694d9b1c2a3e4f05\n694d9b1c2a3e4f0a\n");
        assert_eq!(ids, vec!["694d9b1c2a3e4f05", "694d9b1c2a3e4f0a"]);
        assert!(parse_lease_list("found 0 leases\n").is_empty());
        let page = "# HELP flannel_leases x\n# TYPE flannel_leases gauge\nflannel_leases 3\nflannel_leases_invalid 2\n";
        assert_eq!(metric(page, "flannel_leases"), Some(3.0));
        assert_eq!(metric(page, "flannel_leases_invalid"), Some(2.0));
        assert_eq!(metric(page, "flannel_peers"), None);
        let log = "2025-06-01T12:00:00.123Z E lease held by another node\n\
2025-06-01T12:00:01.123Z W ignoring lease 10.244.0.0-16: too big\n\
2025-06-01T12:00:02.123Z I E is not a level here\n";
        assert_eq!(log_lines(log, 'E', "held").len(), 1);
        assert_eq!(log_lines(log, 'W', "ignoring lease").len(), 1);
        assert!(log_lines(log, 'E', "level").is_empty());
    }
}
