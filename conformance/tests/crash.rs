//! The chain under SIGKILL: many concurrent flannel ADDs (flannel ->
//! bridge -> host-local, masquerade on) while a killer thread SIGKILLs
//! flannel, bridge and host-local processes of this test at random moments.
//! Afterwards the runtime's clean-up, DEL for every pod (or GC for the
//! rest), must leave nothing behind: no reservation, no saved delegate
//! config, no veth, no masquerade rule.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use conformance::util::reservations;
use conformance::{Invocation, TempDir, TestHost, plugin_binary};
use serde_json::{Value, json};

const PODS: usize = 24;

/// Deterministic pseudo-random numbers (xorshift64*): the moments vary
/// with scheduling anyway, the choices need not.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Node {
    host: TestHost,
    dir: TempDir,
    tag: String,
}

impl Node {
    fn new(tag: &str) -> Node {
        let node = Node {
            host: TestHost::new(PODS),
            dir: TempDir::new("crash"),
            tag: format!("crash{}{tag}", std::process::id()),
        };
        // FLANNEL_IPMASQ=false: the bridge masquerades, so rules are made too.
        std::fs::write(
            node.dir.path().join("subnet.env"),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.9.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        node
    }

    fn conf(&self) -> Value {
        json!({
            "cniVersion": "1.1.0", "name": "crashnet", "type": "flannel",
            "subnetFile": self.dir.path().join("subnet.env"),
            "dataDir": self.cache(),
            "ipam": {"dataDir": self.dir.path().join("ipam")},
            "delegate": {"isDefaultGateway": true}
        })
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn id(&self, pod: usize) -> String {
        format!("{}-{pod}", self.tag)
    }

    fn call(&self, verb: &str, pod: usize) -> Invocation {
        Invocation::new(verb)
            .container_id(&self.id(pod))
            .netns(self.host.pod(pod))
            .config(&self.conf())
    }

    fn run(&self, inv: Invocation) -> conformance::PluginOutput {
        inv.run(&plugin_binary("flannel"), &self.host.host)
    }

    /// Every file in flannel's cache directory, temporary ones included.
    fn saved(&self) -> Vec<String> {
        std::fs::read_dir(self.cache()).map_or(Vec::new(), |d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
    }

    fn veths(&self) -> usize {
        self.host
            .host
            .ip(&["-o", "link", "show", "type", "veth"])
            .lines()
            .count()
    }

    /// nftables rules that name one of this test's containers.
    fn rules(&self) -> usize {
        let out = self.host.host.exec("nft", &["list", "ruleset"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&self.tag))
            .count()
    }
}

/// Processes of this test's plugins: their environment names one of its
/// containers, so nothing else on the machine is ever hit.
fn victims(tag: &str) -> Vec<i32> {
    let marker = format!("CNI_CONTAINERID={tag}-");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            matches!(comm.trim(), "flannel" | "bridge" | "host-local")
                && std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    env.split(|b| *b == 0)
                        .any(|kv| kv.starts_with(marker.as_bytes()))
                })
        })
        .collect()
}

/// Runs every pod's ADD at once while SIGKILLs fall; answers how many
/// processes were killed.
fn adds_under_fire(node: &Node, seed: u64) -> usize {
    let done = AtomicBool::new(false);
    let killed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut rng = Rng(seed);
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_micros(rng.below(15_000)));
                let pids = victims(&node.tag);
                if pids.is_empty() {
                    continue;
                }
                let pid = pids[usize::try_from(rng.below(pids.len() as u64)).unwrap()];
                if nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .is_ok()
                {
                    killed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let adds: Vec<_> = (0..PODS)
            .map(|p| s.spawn(move || node.run(node.call("ADD", p))))
            .collect();
        for add in adds {
            // Success, a CNI error or a killed plugin: all are fine here.
            let _outcome = add.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
    });
    killed.load(Ordering::Relaxed)
}

fn assert_clean(node: &Node, how: &str) {
    assert_eq!(
        reservations(&node.dir.path().join("ipam/crashnet")),
        0,
        "{how}: addresses left reserved"
    );
    assert_eq!(
        node.saved(),
        Vec::<String>::new(),
        "{how}: saved delegate configs left"
    );
    assert_eq!(node.veths(), 0, "{how}: veths left");
    assert_eq!(node.rules(), 0, "{how}: masquerade rules left");
}

#[test]
fn del_after_sigkills_during_concurrent_adds_leaves_nothing() {
    let node = Node::new("del");
    let killed = adds_under_fire(&node, 0x5eed_0001);
    eprintln!("{killed} plugin processes killed during {PODS} ADDs");
    // Whatever state the kills left, the runtime's DEL must clean it up,
    // and a second DEL must still succeed.
    for p in 0..PODS {
        node.run(node.call("DEL", p)).silent_success();
        node.run(node.call("DEL", p)).silent_success();
    }
    assert_clean(&node, "after DEL");
    for p in 0..PODS {
        assert_eq!(
            conformance::util::link_names(node.host.pod(p)),
            ["lo"],
            "pod {p} keeps an interface after DEL"
        );
    }
}

#[test]
fn gc_after_sigkills_during_concurrent_adds_leaves_nothing() {
    let node = Node::new("gc");
    let killed = adds_under_fire(&node, 0x5eed_0002);
    eprintln!("{killed} plugin processes killed during {PODS} ADDs");
    // The runtime lost track: the pods go away with their namespaces, and
    // GC with no valid attachment releases the rest.
    let conf = node.conf();
    let Node { host, .. } = &node;
    for pod in &host.pods {
        // Not every pod got as far as having one.
        let _gone = pod.exec("ip", &["link", "delete", "eth0"]);
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    Invocation::new("GC")
        .without("CNI_CONTAINERID")
        .without("CNI_IFNAME")
        .config(&gc)
        .run(&plugin_binary("flannel"), &node.host.host)
        .silent_success();
    assert_clean(&node, "after GC");
}
