//! A real Kubernetes cluster in simulated hosts, from the binaries
//! `../shared/bin/kube-unpack` provides: a control host (etcd,
//! kube-apiserver, kube-controller-manager allocating pod CIDRs and
//! running the workload controllers, kube-scheduler) and node hosts, each
//! with its own containerd (in a private mount namespace, see
//! [`Containerd`]) and, in that same mount namespace, a kubelet and a
//! kube-proxy (iptables mode). All on one [`Underlay`] segment.
//!
//! On a node, the paths a DaemonSet's hostPath volumes name
//! (`/opt/cni/bin`, `/etc/cni/net.d`, `/run/...`, `/var/log`) are
//! directories of that node's scratch directory, and the sysctls kubelet
//! would "correct" machine-wide read as already corrected: nothing of the
//! machine is written. The CRI's `loopback` and the conflist's `portmap`
//! are on every node beforehand (Debian's), as on any kubeadm node.
//!
//! Dropped in order, also when a test fails: kube-proxy and kubelet, then
//! each node's containerd (its pods stopped and removed, cgroups and
//! mounts gone), the controllers, the API server and etcd, the namespaces,
//! the scratch directory.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::cri::image::PAUSE_IMAGE;
use crate::cri::wire::PodSandboxState;
use crate::cri::{Containerd, ContainerdOptions};
use crate::kube::{ADMIN_TOKEN, KubeApi};
use crate::{Daemon, TempDir, TestNetns, Underlay, wait_for};

/// The control host's address on the underlay.
pub const CONTROL_IP: &str = "192.168.77.2";
/// The controller-manager's `--cluster-cidr` (dist/kube-flannel.yml's
/// "Network").
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// The reference plugins a node has before flannel is installed.
const NODE_PLUGINS: &[&str] = &["loopback", "portmap"];

/// What kubelet sets machine-wide unless they already hold these values
/// (`--protect-kernel-defaults=false`): read as such on the nodes.
const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// One node: containerd, kubelet and kube-proxy in a host namespace.
#[derive(Debug)]
pub struct KubeNode {
    // Dropped first: nothing restarts pods while containerd removes them.
    proxy: Option<Daemon>,
    kubelet: Option<Daemon>,
    pub runtime: Containerd,
    pub ns: TestNetns,
    /// The Node's name (kubelet's `--hostname-override`).
    pub name: String,
    /// Its underlay address (`--node-ip`).
    pub ip: String,
    dir: PathBuf,
}

impl KubeNode {
    /// `/run` of this node as the machine sees it (subnet.env is under
    /// `flannel/`).
    pub fn run_dir(&self) -> PathBuf {
        self.runtime.run_dir()
    }

    /// Whether kubelet and kube-proxy still run (the same processes).
    pub fn alive(&mut self) -> bool {
        self.kubelet.as_mut().is_some_and(Daemon::alive)
            && self.proxy.as_mut().is_some_and(Daemon::alive)
    }

    pub fn kubelet_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kubelet.log")).unwrap_or_default()
    }

    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kube-proxy.log")).unwrap_or_default()
    }

    /// The pid of the running sandbox of pod `name` (its pause process),
    /// through this node's CRI.
    pub fn pod_pid(&self, name: &str) -> Option<u32> {
        let pods = self.runtime.client().list_pod_sandboxes().ok()?;
        let pod = pods.iter().find(|p| {
            p.state == PodSandboxState::SandboxReady as i32
                && p.metadata.as_ref().is_some_and(|m| m.name == name)
        })?;
        self.runtime.sandbox_pid(&pod.id)
    }
}

#[derive(Debug)]
pub struct KubeCluster {
    // Dropped in order: nodes, controllers, API server, namespaces, files.
    pub nodes: Vec<KubeNode>,
    controllers: Vec<Daemon>,
    pub api: KubeApi,
    pub control: TestNetns,
    pub net: Underlay,
    pub dir: TempDir,
    kubeconfig: PathBuf,
}

impl KubeCluster {
    /// The control host and `nodes` nodes (`node-0`, ...), every image
    /// archive of `images` imported into each node's containerd (the
    /// local pause image always is); returns once every Node is
    /// registered and has its pod CIDR. `None`, said loudly, where the
    /// Kubernetes binaries are absent.
    pub fn start(nodes: usize, images: &[PathBuf]) -> Option<KubeCluster> {
        let bin = KubeApi::binaries()?;
        let dir = TempDir::new("kcluster");
        let mut net = Underlay::new("ksw");
        let control = net.add_host("kctl", &[&format!("{CONTROL_IP}/24")]);
        let api = KubeApi::start(&control, CONTROL_IP, &dir.path().join("kube"))?;
        let kubeconfig = api.kubeconfig("admin", ADMIN_TOKEN);
        let kc = kubeconfig.display().to_string();
        let kube_dir = dir.path().join("kube");
        let cm_args: Vec<String> = vec![
            format!("--kubeconfig={kc}"),
            "--leader-elect=false".into(),
            "--controllers=daemonset,deployment,replicaset,endpoint,endpointslice,nodeipam,nodelifecycle,serviceaccount-token,serviceaccount,root-ca-cert-publisher,garbagecollector,namespace".into(),
            "--allocate-node-cidrs=true".into(),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
            "--node-cidr-mask-size=24".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            format!("--service-account-private-key-file={}", kube_dir.join("sa.key").display()),
            format!("--root-ca-file={}", api.ca().display()),
            "--use-service-account-credentials=false".into(),
            "--bind-address=127.0.0.1".into(),
        ];
        let cm = Daemon::start(
            &bin.join("kube-controller-manager"),
            &cm_args,
            &control,
            &dir.path().join("kube-controller-manager.log"),
        );
        let sched = Daemon::start(
            &bin.join("kube-scheduler"),
            &[
                format!("--kubeconfig={kc}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
            ],
            &control,
            &dir.path().join("kube-scheduler.log"),
        );
        let mut cluster = KubeCluster {
            nodes: Vec::new(),
            controllers: vec![cm, sched],
            api,
            control,
            net,
            dir,
            kubeconfig,
        };
        for n in 0..nodes {
            let node = cluster.add_node(&bin, n, images);
            cluster.nodes.push(node);
        }
        let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        let registered = wait_for(Duration::from_secs(90), || {
            names.iter().all(|n| !cluster.pod_cidr(n).is_empty())
        });
        if !registered {
            // What the first node's mount namespace shows of the kubeconfig.
            let pid = cluster.nodes[0].runtime.pid().to_string();
            let seen = std::process::Command::new("nsenter")
                .args(["--target", &pid, "--mount", "--root", "--wd"])
                .args(["--", "sh", "-c"])
                .arg(format!(
                    "ls -la {}; grep -E ' / | /tmp | /etc | /opt ' /proc/self/mountinfo",
                    cluster
                        .kubeconfig
                        .parent()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ))
                .output()
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_default();
            panic!(
                "the nodes did not register with a pod CIDR: {}\nkubelet: {}\nin the node's mount namespace: {seen}",
                cluster.kubectl_text(&["get", "nodes", "-o", "wide"]),
                cluster.nodes[0].kubelet_log()
            );
        }
        Some(cluster)
    }

    fn add_node(&mut self, bin: &Path, n: usize, images: &[PathBuf]) -> KubeNode {
        let ip = format!("192.168.77.{}", 10 + n);
        let name = format!("node-{n}");
        let ns = self.net.add_host(&format!("kn{n}"), &[&format!("{ip}/24")]);
        // flanneld finds its interface by the default route.
        ns.ip(&["route", "add", "default", "via", CONTROL_IP]);
        let opts = ContainerdOptions {
            binds: vec![
                ("cni-bin".into(), "/opt/cni/bin".into()),
                ("cni-conf".into(), "/etc/cni/net.d".into()),
                ("varlog".into(), "/var/log".into()),
            ],
            sysctls: KUBELET_SYSCTLS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            no_network_yet: true,
        };
        let runtime = Containerd::start_with(
            &ns,
            Path::new("/opt/cni/bin"),
            Path::new("/etc/cni/net.d"),
            &opts,
        );
        for plugin in NODE_PLUGINS {
            let from = Path::new("/usr/lib/cni").join(plugin);
            assert!(
                from.is_file(),
                "{} is missing: apt-get install containernetworking-plugins (scripts/test.sh does)",
                from.display()
            );
            std::fs::copy(&from, runtime.dir().join("cni-bin").join(plugin)).unwrap();
        }
        for image in images {
            runtime.import(image);
        }
        make_cgroup(&runtime.cgroup_root());
        let dir = runtime.dir().join("node");
        std::fs::create_dir_all(dir.join("kubelet/pki")).unwrap();
        let d = |p: &str| dir.join(p).display().to_string();
        let kc = self.kubeconfig.display().to_string();
        // containerd's mount namespace, with its root and working
        // directory: entering a mount namespace alone resets the root to
        // the namespace's own, not ours when the tests run under chroot.
        let mnt: Vec<String> = [
            "--target".to_string(),
            runtime.pid().to_string(),
            "--mount".into(),
            "--root".into(),
            "--wd".into(),
            "--".into(),
        ]
        .to_vec();
        let kubelet_bin = bin.join("kubelet").display().to_string();
        let kubelet_args: Vec<String> = mnt
            .iter()
            .cloned()
            .chain([
                kubelet_bin,
                format!("--kubeconfig={kc}"),
                "--container-runtime=remote".into(),
                format!(
                    "--container-runtime-endpoint=unix://{}",
                    runtime.socket().display()
                ),
                format!("--root-dir={}", d("kubelet")),
                format!("--cert-dir={}", d("kubelet/pki")),
                format!("--volume-plugin-dir={}", d("kubelet/volume-plugins")),
                "--fail-swap-on=false".into(),
                "--cgroup-driver=cgroupfs".into(),
                // Pods under kubepods/ of our cgroup root: without QoS cgroups
                // kubelet gives the CRI no parent at all, and containerd puts
                // them in the machine's /k8s.io.
                "--cgroups-per-qos=true".into(),
                "--enforce-node-allocatable=".into(),
                format!("--cgroup-root={}", runtime.cgroup_root()),
                format!("--hostname-override={name}"),
                format!("--node-ip={ip}"),
                format!("--pod-infra-container-image={PAUSE_IMAGE}"),
                "--read-only-port=0".into(),
                "--authentication-token-webhook=false".into(),
                "--authorization-mode=AlwaysAllow".into(),
                "--node-status-update-frequency=4s".into(),
                "--oom-score-adj=0".into(),
            ])
            .collect();
        let kubelet = Daemon::start(
            Path::new("nsenter"),
            &kubelet_args,
            &ns,
            &dir.join("kubelet.log"),
        );
        let proxy_args: Vec<String> = mnt
            .into_iter()
            .chain([
                bin.join("kube-proxy").display().to_string(),
                format!("--kubeconfig={kc}"),
                format!("--hostname-override={name}"),
                "--proxy-mode=iptables".into(),
                format!("--cluster-cidr={CLUSTER_CIDR}"),
                // Machine-wide conntrack limits are left alone.
                "--conntrack-max-per-core=0".into(),
                "--conntrack-tcp-timeout-established=0".into(),
                "--conntrack-tcp-timeout-close-wait=0".into(),
                "--oom-score-adj=0".into(),
                "--healthz-bind-address=127.0.0.1:10256".into(),
                "--metrics-bind-address=127.0.0.1:10249".into(),
            ])
            .collect();
        let proxy = Daemon::start(
            Path::new("nsenter"),
            &proxy_args,
            &ns,
            &dir.join("kube-proxy.log"),
        );
        KubeNode {
            proxy: Some(proxy),
            kubelet: Some(kubelet),
            runtime,
            ns,
            name,
            ip,
            dir,
        }
    }

    /// The admin's kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `kubectl args` as the admin, in the control host's namespace.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let cache = self.dir.path().join("kubectl-cache");
        let kc = self.kubeconfig.display().to_string();
        let cache = cache.display().to_string();
        let mut all = vec!["--kubeconfig", &kc, "--cache-dir", &cache];
        all.extend_from_slice(args);
        self.control.exec("kubectl", &all)
    }

    /// `kubectl args`, which must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl args`' stdout and stderr, whatever its status (for
    /// messages).
    pub fn kubectl_text(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `kubectl get args -o json`, `None` when it fails.
    pub fn get(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl(&all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Node `name`'s `spec.podCIDR` ("" while it has none).
    pub fn pod_cidr(&self, name: &str) -> String {
        self.get(&["node", name])
            .and_then(|n| n["spec"]["podCIDR"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub fn log(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }

    /// The node whose Node is `name`.
    pub fn node(&self, name: &str) -> &KubeNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Whether the controllers still run (the same processes).
    pub fn controllers_alive(&mut self) -> bool {
        self.controllers.iter_mut().all(Daemon::alive)
    }
}

/// Where the machine mounts its cgroup hierarchies.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Makes cgroup `path` (`/name`) in every hierarchy, as kubelet's
/// `--cgroup-root` must exist (removed with the node's containerd, whose
/// pod parent it is). On cgroup v1 its cpuset gets its parent's CPUs and
/// memory nodes, without which nothing can join it.
fn make_cgroup(path: &str) {
    let root = Path::new(CGROUP_ROOT);
    let name = path.trim_start_matches('/');
    if root.join("cgroup.controllers").is_file() {
        std::fs::create_dir_all(root.join(name)).unwrap();
        return;
    }
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let hierarchy = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || !hierarchy.join("cgroup.procs").is_file()
        {
            continue;
        }
        let dir = hierarchy.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                std::fs::write(dir.join(file), value.trim()).unwrap();
            }
        }
    }
}
