//! The path kubelet takes to a pod's network: containerd's CRI
//! `RunPodSandbox`, then libcni over the CNI config directory. Debian's
//! containerd runs inside each of two simulated hosts (see
//! `conformance::cri::Containerd`), pointed at the plugins and the conflist
//! that `scripts/install.sh --root` put in a temporary root; flanneld runs
//! on each host on the embedded store. Driven by our own CRI client exactly
//! as kubelet drives it: run, status, stop twice, remove.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use conformance::bins::bin_dir;
use conformance::cri::Containerd;
use conformance::cri::wire::PodSandboxState;
use conformance::{Daemon, TempDir, TestNetns, Underlay, require_root, start_flanneld, wait_for};

/// The reference plugins an operator has next to ours: the CRI runs
/// `loopback` for every sandbox, and the conflist chains `portmap`.
const REFERENCE_PLUGINS: &[&str] = &["loopback", "portmap"];

struct Node {
    // Dropped in order: pods and containerd, then the agent, then the host.
    runtime: Containerd,
    agent: Daemon,
    ns: TestNetns,
}

struct Cluster {
    nodes: Vec<Node>,
    _net: Underlay,
    _store: TempDir,
    _root: TempDir,
}

/// `scripts/install.sh --root <root>` with the binaries this suite built.
fn install_into(root: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--root")
        .arg(root)
        .arg("--bin-from")
        .arg(bin_dir())
        .output()
        .expect("cannot run scripts/install.sh");
    assert!(
        out.status.success(),
        "install.sh failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cni_bin = root.join("opt/cni/bin");
    for plugin in REFERENCE_PLUGINS {
        let from = Path::new("/usr/lib/cni").join(plugin);
        assert!(
            from.is_file(),
            "{} is missing: apt-get install containernetworking-plugins (scripts/test.sh does)",
            from.display()
        );
        std::fs::copy(&from, cni_bin.join(plugin)).unwrap();
    }
}

impl Cluster {
    fn new(hosts: usize) -> Cluster {
        require_root();
        let root = TempDir::new("cri-root");
        install_into(root.path());
        let store = TempDir::new("cri-store");
        std::fs::write(
            store.path().join("config"),
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#,
        )
        .unwrap();
        let mut net = Underlay::new("crisw");
        let mut nodes = Vec::new();
        for h in 0..hosts {
            let ns = net.add_host(&format!("crih{h}"), &[&format!("192.168.77.{}/24", 10 + h)]);
            let runtime = Containerd::start(
                &ns,
                &root.path().join("opt/cni/bin"),
                &root.path().join("etc/cni/net.d"),
            );
            // flannel reads /run/flannel/subnet.env: the runtime's /run.
            let env = runtime.run_dir().join("flannel/subnet.env");
            std::fs::create_dir_all(env.parent().unwrap()).unwrap();
            let agent = start_flanneld(
                &ns,
                store.path(),
                &env,
                &[],
                &runtime.run_dir().join("flanneld.log"),
            );
            assert!(
                wait_for(Duration::from_secs(10), || env.exists()),
                "host {h}'s flanneld wrote no subnet.env: {}",
                agent.log()
            );
            nodes.push(Node { runtime, agent, ns });
        }
        Cluster {
            nodes,
            _net: net,
            _store: store,
            _root: root,
        }
    }

    fn subnet(&self, h: usize) -> ipnetwork_lite::V4Net {
        let env =
            std::fs::read_to_string(self.nodes[h].runtime.run_dir().join("flannel/subnet.env"))
                .unwrap();
        let line = env
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .expect("subnet.env has FLANNEL_SUBNET");
        ipnetwork_lite::V4Net::parse(line)
    }
}

/// Just enough IPv4 prefix arithmetic to check that an address lies in a
/// host's subnet.
mod ipnetwork_lite {
    use std::net::Ipv4Addr;

    #[derive(Debug, Clone, Copy)]
    pub struct V4Net {
        pub addr: Ipv4Addr,
        pub prefix: u32,
    }

    impl V4Net {
        pub fn parse(s: &str) -> V4Net {
            let (a, p) = s.split_once('/').expect("a CIDR");
            V4Net {
                addr: a.parse().expect("an IPv4 address"),
                prefix: p.parse().expect("a prefix length"),
            }
        }

        pub fn contains(&self, ip: Ipv4Addr) -> bool {
            let mask = u32::MAX.checked_shl(32 - self.prefix).unwrap_or(0);
            u32::from(ip) & mask == u32::from(self.addr) & mask
        }
    }
}

/// The veth host ends in a host namespace.
fn veths(ns: &TestNetns) -> Vec<String> {
    ns.ip(&["-o", "link", "show", "type", "veth"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        // The underlay's own port.
        .filter(|n| n != "eth0")
        .collect()
}

/// Files in a directory that are not the host-local bookkeeping (`lock`,
/// `last_reserved_ip.*`): reservations, or flannel's cached configs.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                .collect()
        })
        .unwrap_or_default()
}

fn ipv4_on_eth0(rt: &Containerd, id: &str) -> Vec<String> {
    let out = rt.exec_in_sandbox(id, "ip", &["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(out.status.success(), "ip addr in the sandbox failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            Some(words.next()?.split('/').next()?.to_string())
        })
        .collect()
}

#[test]
fn pod_sandboxes_on_two_hosts_through_containerds_cri_and_our_chain() {
    let mut cluster = Cluster::new(2);
    let mut pods = Vec::new();
    for (h, node) in cluster.nodes.iter().enumerate() {
        let rt = &node.runtime;
        let version = rt.client().version().unwrap();
        assert_eq!(version.runtime_api_version, "v1", "{version:?}");

        let started = Instant::now();
        let id = rt
            .client()
            .run_pod_sandbox(rt.sandbox_config(&format!("pod{h}"), &format!("uid-{h}")))
            .unwrap_or_else(|e| panic!("RunPodSandbox on host {h}: {e}\n{}", rt.log()));
        eprintln!(
            "host {h}: RunPodSandbox through flannel -> bridge -> host-local took {} ms",
            started.elapsed().as_millis()
        );

        let status = rt
            .client()
            .pod_sandbox_status(&id, false)
            .unwrap()
            .status
            .unwrap();
        assert_eq!(status.state(), PodSandboxState::SandboxReady);
        let ip: std::net::Ipv4Addr = status.network.as_ref().unwrap().ip.parse().unwrap();
        let subnet = cluster.subnet(h);
        assert!(
            subnet.contains(ip),
            "host {h}'s pod got {ip}, outside its subnet {subnet:?}"
        );
        assert_eq!(
            ipv4_on_eth0(rt, &id),
            vec![ip.to_string()],
            "PodSandboxStatus must report the address that is on the pod's eth0"
        );
        assert_eq!(veths(&node.ns).len(), 1, "one veth per pod on host {h}");
        pods.push((id, ip));
    }

    // Pods reach each other across the hosts (vxlan through flanneld).
    for (h, node) in cluster.nodes.iter().enumerate() {
        let (id, _) = &pods[h];
        let (_, peer) = &pods[1 - h];
        let peer = peer.to_string();
        assert!(
            wait_for(Duration::from_secs(10), || {
                node.runtime
                    .exec_in_sandbox(id, "ping", &["-c1", "-W1", &peer])
                    .status
                    .success()
            }),
            "the pod on host {h} cannot reach {peer} on the other host"
        );
    }

    // Take them down as kubelet does: StopPodSandbox twice, then remove.
    for (h, node) in cluster.nodes.iter().enumerate() {
        let rt = &node.runtime;
        let (id, _) = &pods[h];
        rt.client()
            .stop_pod_sandbox(id)
            .unwrap_or_else(|e| panic!("first StopPodSandbox on host {h}: {e}"));
        let status = rt
            .client()
            .pod_sandbox_status(id, false)
            .unwrap()
            .status
            .unwrap();
        assert_eq!(status.state(), PodSandboxState::SandboxNotready);
        rt.client()
            .stop_pod_sandbox(id)
            .unwrap_or_else(|e| panic!("second StopPodSandbox on host {h}: {e}"));
        rt.client()
            .remove_pod_sandbox(id)
            .unwrap_or_else(|e| panic!("RemovePodSandbox on host {h}: {e}"));
        let gone = rt.client().pod_sandbox_status(id, false).unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
        assert!(rt.client().list_pod_sandboxes().unwrap().is_empty());

        let store = rt.var_lib().join("cni/networks/cbr0");
        assert_eq!(
            entries(&store),
            Vec::<String>::new(),
            "host {h}: every address must be released"
        );
        let cache = rt.var_lib().join("cni/flannel");
        assert_eq!(
            entries(&cache),
            Vec::<String>::new(),
            "host {h}: flannel's cache must be empty"
        );
        assert_eq!(
            veths(&node.ns),
            Vec::<String>::new(),
            "host {h}: no veth may be left"
        );
    }
    for (h, node) in cluster.nodes.iter_mut().enumerate() {
        assert!(
            node.agent.alive(),
            "host {h}'s flanneld died: {}",
            node.agent.log()
        );
    }
}
