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

use crate::util::addresses;
use crate::{Daemon, Invocation, TempDir, TestNetns, Underlay, plugin_binary, wait_for};

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
    pub etcd: Option<Daemon>,
    pub net: Underlay,
    pub dir: TempDir,
}

/// etcd in the switch namespace, on the underlay (Debian's etcd-server).
pub fn start_etcd(switch: &TestNetns, dir: &Path, config: &Value) -> Daemon {
    assert!(
        Path::new("/usr/bin/etcd").is_file(),
        "apt-get install etcd-server etcd-client (scripts/test.sh does)"
    );
    switch.ip(&["addr", "add", "192.168.77.1/24", "dev", "br0"]);
    restart_etcd(switch, dir, config)
}

/// etcd on the underlay at `url`, its data in `dir/etcd`, with `extra` flags.
pub fn etcd_daemon(switch: &TestNetns, dir: &Path, url: &str, extra: &[&str]) -> Daemon {
    let data = dir.join("etcd");
    let mut args: Vec<&str> = vec![
        "--name",
        "test",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen-client-urls",
        url,
        "--advertise-client-urls",
        url,
        "--listen-peer-urls",
        "http://192.168.77.1:2380",
        "--initial-advertise-peer-urls",
        "http://192.168.77.1:2380",
        "--initial-cluster",
        "test=http://192.168.77.1:2380",
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    Daemon::start(
        Path::new("/usr/bin/etcd"),
        &args,
        switch,
        &dir.join("etcd.log"),
    )
}

/// Starts etcd on its data directory (kept across restarts) and makes sure
/// the network config is there.
pub fn restart_etcd(switch: &TestNetns, dir: &Path, config: &Value) -> Daemon {
    let etcd = etcd_daemon(switch, dir, ETCD, &[]);
    let put = || {
        switch
            .exec(
                "etcdctl",
                &[
                    "--endpoints",
                    ETCD,
                    "put",
                    "/coreos.com/network/config",
                    &config.to_string(),
                ],
            )
            .status
            .success()
    };
    assert!(
        wait_for(Duration::from_secs(20), put),
        "etcd did not come up: {}",
        etcd.log()
    );
    etcd
}

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
            etcd,
            net,
            dir,
        }
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
        let store_args = if self.etcd.is_some() {
            ["--etcd-endpoints", ETCD]
        } else {
            ["--store-dir", store.to_str().unwrap()]
        };
        [
            store_args[0],
            store_args[1],
            "--iface",
            "eth0",
            "--subnet-file",
            self.hosts[h].dir.join("subnet.env").to_str().unwrap(),
        ]
        .iter()
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
        let host = &mut self.hosts[h];
        let log = host.dir.join("flanneld.log");
        host.agent = Some(Daemon::start(binary, args, &host.ns, &log));
        let env = host.dir.join("subnet.env");
        assert!(
            wait_for(Duration::from_secs(10), || env.exists()),
            "host {h} wrote no subnet.env: {}",
            host.agent.as_ref().unwrap().log()
        );
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
