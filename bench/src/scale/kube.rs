//! Part 3, the kube subnet manager: a real kube-apiserver holding N Node
//! objects (pod CIDRs, flannel's annotations as upstream writes them, and
//! a status as a kubelet reports it), one agent started with
//! `--kube-subnet-mgr`; time until every peer is programmed, memory, idle
//! CPU, the latency of single annotation changes, and every request the
//! agent makes, from the API server's audit log.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use conformance::kube::{FLANNEL_TOKEN, KubeApi};
use conformance::{TestNetns, Underlay};
use serde_json::{Value, json};

use super::setup::{
    Agent, CHANGE_LIMIT, DEVICE, FAST_POLL, Fakes, METRICS_PORT, NET, POLL, PROGRAM_LIMIT, SETTLE,
    SWITCH_IP, UNDERLAY_LEN, config, host_ip, mib, poll_until, segment,
};
use crate::cleanup::Scratch;
use crate::kernel::{Kernel, Peer, Want, format_mac};
use crate::process::{self, Proc};
use crate::stats::{self, percentile};
use crate::table::show_ms;

/// flannel's annotation prefix (upstream's default).
const PREFIX: &str = "flannel.alpha.coreos.com";
/// The user the agent is: flannel's service account, as upstream binds it.
const FLANNEL_USER: &str = "system:serviceaccount:kube-flannel:flannel";
const OWN_NODE: &str = "kbench-self";
const OWN_CIDR: &str = "10.1.0.0/24";
/// Annotation changes timed, and how long the idle agent is watched.
pub(crate) const KUBE_CHANGES: usize = 50;
pub(crate) const IDLE: Duration = Duration::from_secs(30);
/// Node creations in flight at once while the API server is filled.
const PARALLEL: usize = 16;

/// Every figure of one run; None: not measured (see `notes`).
#[derive(Debug, Default)]
pub struct KubeFigs {
    pub(crate) fill_s: Option<f64>,
    pub(crate) node_kib: Option<f64>,
    pub(crate) programmed_ms: Option<f64>,
    pub(crate) rss_mib: Option<f64>,
    pub(crate) anon_rss_mib: Option<f64>,
    pub(crate) peak_rss_mib: Option<f64>,
    pub(crate) threads: Option<u64>,
    pub(crate) idle_cpu: Option<f64>,
    /// Requests until every peer was programmed, by verb and resource.
    pub(crate) startup_requests: Option<BTreeMap<String, usize>>,
    /// Requests begun or ended while idle (the long watch's own start is
    /// before the window).
    pub(crate) idle_requests: Option<BTreeMap<String, usize>>,
    pub(crate) change_ms: Vec<f64>,
    pub(crate) notes: Vec<String>,
}

/// The binaries, or None (said loudly by [`KubeApi::binaries`]).
pub fn available() -> bool {
    KubeApi::binaries().is_some()
}

/// The API server's audit policy: every request of flannel's user, at
/// metadata level, once when it is answered (and once when a watch
/// begins); nothing of anybody else's.
fn audit_policy() -> String {
    format!(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\"]\nrules:\n- level: Metadata\n  users: [\"{FLANNEL_USER}\"]\n- level: None\n"
    )
}

/// The node a fake peer is, as a kubelet registers it and upstream's
/// agent annotates it (a kubelet's status makes each object the size
/// real ones are: the agent must not keep them).
fn fake_node(name: &str, p: &Peer) -> Value {
    let images: Vec<Value> = (0..12)
        .map(|i| {
            json!({
                "names": [
                    format!("registry.example.org/team/image-{i}@sha256:{:064x}", i * 7919 + 1),
                    format!("registry.example.org/team/image-{i}:v1.{i}.0")
                ],
                "sizeBytes": 10_000_000 + i * 1_000_003
            })
        })
        .collect();
    let condition = |kind: &str, status: &str, reason: &str| {
        json!({"type": kind, "status": status, "reason": reason,
               "message": format!("kubelet says {reason}"),
               "lastHeartbeatTime": "2026-12-07T08:00:00Z",
               "lastTransitionTime": "2026-12-07T08:00:00Z"})
    };
    json!({
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "bench"
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                format!("{PREFIX}/backend-data"):
                    format!("{{\"VNI\":1,\"VtepMAC\":\"{}\"}}", format_mac(&p.mac)),
                format!("{PREFIX}/backend-type"): "vxlan",
                format!("{PREFIX}/kube-subnet-manager"): "true",
                format!("{PREFIX}/public-ip"): p.public.to_string()
            }
        },
        "spec": {
            "podCIDR": format!("{}/24", p.subnet),
            "podCIDRs": [format!("{}/24", p.subnet)]
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": p.public.to_string()},
                {"type": "Hostname", "address": name}
            ],
            "capacity": {"cpu": "8", "memory": "32812184Ki", "pods": "110",
                         "ephemeral-storage": "102687672Ki", "hugepages-2Mi": "0"},
            "allocatable": {"cpu": "8", "memory": "32709784Ki", "pods": "110",
                            "ephemeral-storage": "94636958338", "hugepages-2Mi": "0"},
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                condition("Ready", "True", "KubeletReady")
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": format!("{:032x}", u32::from(p.public)),
                "systemUUID": format!("{:032x}", u32::from(p.subnet)),
                "bootID": format!("{:032x}", p.mac.iter().fold(0u64, |a, b| a << 8 | *b as u64)),
                "kernelVersion": "6.1.0-bench", "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.7.24", "kubeletVersion": "v1.30.0",
                "kubeProxyVersion": "v1.30.0", "operatingSystem": "linux", "architecture": "amd64"
            },
            "images": images
        }
    })
}

/// A simulated host beside a kube-apiserver. Fields drop in order: the
/// agent first, then the API server, the namespaces, the scratch last.
struct Site {
    agent: Option<Proc>,
    kernel: Kernel,
    api: KubeApi,
    host: TestNetns,
    _net: Underlay,
    dir: Scratch,
}

impl Site {
    fn new() -> Result<Site, String> {
        let dir = Scratch::new("k")?;
        let mut net = segment("k");
        let host = net.add_host("kn", &[&format!("{}/{UNDERLAY_LEN}", host_ip(0))]);
        let policy = dir.path().join("audit-policy.yaml");
        std::fs::write(&policy, audit_policy()).map_err(|e| format!("audit policy: {e}"))?;
        let audit = [
            format!("--audit-policy-file={}", policy.display()),
            format!("--audit-log-path={}", audit_log(dir.path()).display()),
            "--audit-log-format=json".into(),
        ];
        let api = KubeApi::start_with(
            &net.switch,
            &SWITCH_IP.to_string(),
            &dir.path().join("kube"),
            &audit,
        )
        .ok_or("no Kubernetes binaries")?;
        api.apply_flannel_rbac();
        api.create_node(
            OWN_NODE,
            &[OWN_CIDR],
            &[("node.alpha.kubernetes.io/ttl", "0")],
        );
        std::fs::write(dir.path().join("net-conf.json"), config().to_string())
            .map_err(|e| format!("net-conf.json: {e}"))?;
        let kernel = Kernel::open(&host, DEVICE, NET)?;
        Ok(Site {
            agent: None,
            kernel,
            api,
            host,
            _net: net,
            dir,
        })
    }

    fn start(&mut self, agent: &Agent) -> Result<(), String> {
        let d = self.dir.path();
        let kubeconfig = self.api.kubeconfig("flannel", FLANNEL_TOKEN);
        let args: Vec<String> = [
            "--kube-subnet-mgr".to_string(),
            "--kubeconfig-file".into(),
            kubeconfig.display().to_string(),
            "--net-config-path".into(),
            d.join("net-conf.json").display().to_string(),
            "--iface".into(),
            "eth0".into(),
            "--subnet-file".into(),
            d.join("subnet.env").display().to_string(),
            "--ip-masq=false".into(),
            "--healthz-ip".into(),
            "127.0.0.1".into(),
            "--healthz-port".into(),
            METRICS_PORT.into(),
        ]
        .to_vec();
        let log = d.join(format!("{}.log", agent.label));
        self.agent = Some(Proc::spawn_with_env(
            &agent.binary,
            &args,
            &[("NODE_NAME", OWN_NODE)],
            &self.host,
            &log,
        )?);
        Ok(())
    }

    fn check_alive(&mut self) -> Result<u32, String> {
        let Some(a) = self.agent.as_mut() else {
            return Err("no agent".into());
        };
        if a.alive() {
            Ok(a.pid())
        } else {
            Err(format!(
                "the agent exited; its log ends:\n{}",
                a.log_tail(20)
            ))
        }
    }
}

fn audit_log(dir: &Path) -> std::path::PathBuf {
    dir.join("audit.log")
}

/// The audit events from line `from` on: how many lines there are, and
/// the requests among them by "verb resource[/subresource]" (a watch is
/// counted when it begins and when it ends).
fn audit_since(dir: &Path, from: usize) -> Result<(usize, BTreeMap<String, usize>), String> {
    let text = std::fs::read_to_string(audit_log(dir)).unwrap_or_default();
    let mut seen = BTreeMap::new();
    let mut lines = 0;
    for line in text.lines() {
        lines += 1;
        if lines <= from {
            continue;
        }
        let e: Value =
            serde_json::from_str(line).map_err(|e| format!("audit log line {lines}: {e}"))?;
        let r = &e["objectRef"];
        let mut what = format!(
            "{} {}",
            e["verb"].as_str().unwrap_or("?"),
            r["resource"].as_str().unwrap_or("?")
        );
        if let Some(sub) = r["subresource"].as_str() {
            what = format!("{what}/{sub}");
        }
        if e["stage"] == "ResponseStarted" {
            what.push_str(" (begun)");
        }
        *seen.entry(what).or_insert(0) += 1;
    }
    Ok((lines, seen))
}

pub fn kube(agent: &Agent, n: usize) -> KubeFigs {
    let mut fig = KubeFigs::default();
    let mut site = match Site::new() {
        Ok(s) => s,
        Err(e) => {
            fig.notes.push(format!("set-up failed: {e}"));
            return fig;
        }
    };
    if let Err(e) = phases(agent, n, &mut site, &mut fig) {
        progress!("{} kube N={n}: {e}", agent.label);
        fig.notes.push(e);
    }
    if let Some(a) = site.agent.as_mut()
        && !a.stop()
    {
        fig.notes
            .push("the agent did not stop on SIGTERM within 5 s".into());
    }
    fig
}

fn phases(agent: &Agent, n: usize, site: &mut Site, fig: &mut KubeFigs) -> Result<(), String> {
    let label = agent.label;
    let mut fakes = Fakes::new(0x4b75_0000 + n as u64);
    let peers: Vec<(String, Peer)> = (0..n)
        .map(|i| (format!("kbench-{i}"), fakes.fresh_peer()))
        .collect();
    let objects: Vec<Value> = peers.iter().map(|(name, p)| fake_node(name, p)).collect();
    let t = Instant::now();
    site.api.create_nodes(objects, PARALLEL)?;
    fig.fill_s = Some(t.elapsed().as_secs_f64());
    let sample = site.api.node(&peers[0].0);
    fig.node_kib = Some(sample.to_string().len() as f64 / 1024.0);
    if sample["status"]["images"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        fig.notes
            .push("the API server dropped the fake Nodes' status".into());
    }
    progress!(
        "{label} kube N={n}: {n} Nodes ({:.1} KiB each as JSON) created in {:.1} s",
        fig.node_kib.unwrap_or(0.0),
        t.elapsed().as_secs_f64()
    );

    let (before_start, _) = audit_since(site.dir.path(), 0)?;
    let just: Vec<Peer> = peers.iter().map(|(_, p)| *p).collect();
    let want = Want::of(&just);
    let t0 = Instant::now();
    site.start(agent)?;
    let programmed = poll_until(t0, PROGRAM_LIMIT, POLL, || {
        site.check_alive()?;
        Ok(site.kernel.diff(&want, true)?.is_empty())
    })?;
    let Some(d) = programmed else {
        let diff = site.kernel.diff(&want, false)?;
        fig.programmed_ms = Some(f64::INFINITY);
        return Err(format!(
            "not every peer programmed {} s after start: {}",
            PROGRAM_LIMIT.as_secs(),
            diff.summary()
        ));
    };
    fig.programmed_ms = Some(stats::ms(d));
    progress!(
        "{label} kube N={n}: all peers programmed after {:.0} ms",
        stats::ms(d)
    );

    // Settled (the Node's condition and annotations written), then idle.
    std::thread::sleep(SETTLE);
    let pid = site.check_alive()?;
    let (idle_from, startup) = audit_since(site.dir.path(), before_start)?;
    fig.startup_requests = Some(startup);
    fig.rss_mib = Some(mib(process::rss_kib(pid)?));
    fig.anon_rss_mib = Some(mib(process::anon_rss_kib(pid)?));
    fig.peak_rss_mib = Some(mib(process::peak_rss_kib(pid)?));
    fig.threads = Some(process::threads(pid)?);
    let a = process::cpu_sample(pid)?;
    std::thread::sleep(IDLE);
    let b = process::cpu_sample(pid)?;
    fig.idle_cpu = Some(process::cpu_percent(&a, &b));
    let (_, idle) = audit_since(site.dir.path(), idle_from)?;
    fig.idle_requests = Some(idle);
    progress!(
        "{label} kube N={n}: RSS {:.1} MiB, idle CPU {:.3} %, {} requests while idle",
        fig.rss_mib.unwrap_or(0.0),
        fig.idle_cpu.unwrap_or(0.0),
        fig.idle_requests
            .as_ref()
            .map_or(0, |m| m.values().sum::<usize>())
    );

    // One Node's public address changed at a time: from the PATCH's
    // answer until the kernel sends that VTEP's frames to the new one.
    let mut live = peers;
    for _ in 0..KUBE_CHANGES {
        site.check_alive()?;
        std::thread::sleep(Duration::from_millis(fakes.rng.below(100) as u64));
        let i = fakes.rng.below(live.len());
        let public = fakes.fresh_ip();
        live[i].1.public = public;
        let (name, peer) = &live[i];
        site.api.patch_node(
            name,
            json!({"metadata": {"annotations": {format!("{PREFIX}/public-ip"): public.to_string()}}}),
            false,
        );
        let t = Instant::now();
        let k = &mut site.kernel;
        let seen = poll_until(t, CHANGE_LIMIT, FAST_POLL, || {
            let Some(dev) = k.device()? else {
                return Ok(false);
            };
            Ok(k.fdb_entry(dev, peer.mac)? == Some(public))
        })?;
        fig.change_ms.push(seen.map_or(f64::INFINITY, stats::ms));
    }
    progress!(
        "{label} kube N={n}: {KUBE_CHANGES} annotation changes, max {}",
        show_ms(percentile(&fig.change_ms, 1.0))
    );
    site.check_alive().map(drop)
}
