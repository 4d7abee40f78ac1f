//! Pod sandboxes through containerd's CRI, the path kubelet takes: the
//! time of RunPodSandbox, StopPodSandbox (twice, as kubelet does) and
//! RemovePodSandbox with our plugins and with Debian's Go bridge and
//! host-local, measured in one run, rounds interleaved. Four simulated
//! hosts, each with its own containerd:
//!
//! - the kube-flannel conflist (flannel + portmap) over our flannel,
//!   bridge and host-local, and over our flannel delegating to Go's bridge
//!   and host-local (what swapping only those two would give);
//! - a plain bridge + host-local + portmap conflist, ours and Go's.
//!
//! `loopback` and `portmap` are Go's in every case (not part of the suite).

#![allow(clippy::print_stdout, clippy::expect_used)] // the figures are this program's output

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bench::stats::{Summary, summarise};
use conformance::cri::Containerd;
use conformance::{TempDir, TestNetns};
use serde_json::json;

const ROUNDS: usize = 20;

struct Setup {
    label: &'static str,
    // Dropped first: pods and containerd before their host namespace.
    rt: Containerd,
    _ns: TestNetns,
    _dir: TempDir,
    run: Vec<Duration>,
    stop: Vec<Duration>,
    remove: Vec<Duration>,
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", from.display(), to.display()));
}

/// A CNI bin dir holding `ours` from our build and the rest from Go's.
fn bin_dir(dir: &Path, our_bins: &Path, go_bins: &Path, ours: &[&str]) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("cannot make a bin dir");
    for plugin in ["flannel", "bridge", "host-local", "loopback", "portmap"] {
        if ours.contains(&plugin) {
            copy(&our_bins.join(plugin), &bin.join(plugin));
        } else if go_bins.join(plugin).is_file() {
            copy(&go_bins.join(plugin), &bin.join(plugin));
        }
    }
    bin
}

/// The conflist scripts/install.sh puts on a node (kube-flannel's).
fn flannel_conflist() -> serde_json::Value {
    serde_json::from_str(include_str!("../../../dist/10-flannel.conflist"))
        .expect("dist/10-flannel.conflist is JSON")
}

fn bridge_conflist() -> serde_json::Value {
    json!({
        "name": "benchnet", "cniVersion": "1.0.0",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
             "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

fn setup(
    label: &'static str,
    our_bins: &Path,
    go_bins: &Path,
    ours: &[&str],
    conflist: &serde_json::Value,
) -> Setup {
    let dir = TempDir::new("benchcri");
    let bin = bin_dir(dir.path(), our_bins, go_bins, ours);
    let conf = dir.path().join("net.d");
    std::fs::create_dir_all(&conf).expect("cannot make a conf dir");
    std::fs::write(conf.join("10-net.conflist"), conflist.to_string())
        .expect("cannot write the conflist");
    let ns = TestNetns::new("benchcri");
    let rt = Containerd::start(&ns, &bin, &conf);
    // What flanneld would have written.
    let env = rt.run_dir().join("flannel");
    std::fs::create_dir_all(&env).expect("cannot make /run/flannel");
    std::fs::write(
        env.join("subnet.env"),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .expect("cannot write subnet.env");
    Setup {
        label,
        rt,
        _ns: ns,
        _dir: dir,
        run: Vec::new(),
        stop: Vec::new(),
        remove: Vec::new(),
    }
}

/// One sandbox up and down; `measure` false for the warm-up.
fn round(s: &mut Setup, i: usize, measure: bool) -> Result<(), String> {
    let client = s.rt.client();
    let config =
        s.rt.sandbox_config(&format!("bench{i}"), &format!("uid{i}"));
    let t = Instant::now();
    let id = client
        .run_pod_sandbox(config)
        .map_err(|e| format!("{}: RunPodSandbox: {e}", s.label))?;
    let run = t.elapsed();
    let t = Instant::now();
    client
        .stop_pod_sandbox(&id)
        .map_err(|e| format!("{}: StopPodSandbox: {e}", s.label))?;
    let stop = t.elapsed();
    client
        .stop_pod_sandbox(&id)
        .map_err(|e| format!("{}: second StopPodSandbox: {e}", s.label))?;
    let t = Instant::now();
    client
        .remove_pod_sandbox(&id)
        .map_err(|e| format!("{}: RemovePodSandbox: {e}", s.label))?;
    let remove = t.elapsed();
    if measure {
        s.run.push(run);
        s.stop.push(stop);
        s.remove.push(remove);
    }
    Ok(())
}

fn row(label: &str, s: &[Summary; 3]) {
    println!(
        "{label:38} {:>7.1} {:>7.1} {:>7.1} {:>9.1} {:>9.1}",
        s[0].median_ms, s[0].p90_ms, s[0].min_ms, s[1].median_ms, s[2].median_ms
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(ours), Some(go)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bench-cri <dir with our plugins> <dir with Go's (/usr/lib/cni)>");
        std::process::exit(2);
    };
    let (ours, go) = (PathBuf::from(ours), PathBuf::from(go));
    let version = Command::new("containerd")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("{version}; {ROUNDS} sandboxes per setup, rounds interleaved, after one warm-up each");
    let ours_all = ["flannel", "bridge", "host-local"];
    let mut setups = vec![
        setup(
            "flannel conflist, ours",
            &ours,
            &go,
            &ours_all,
            &flannel_conflist(),
        ),
        setup(
            "flannel conflist, Go bridge+host-local",
            &ours,
            &go,
            &["flannel"],
            &flannel_conflist(),
        ),
        setup(
            "bridge conflist, ours",
            &ours,
            &go,
            &ours_all,
            &bridge_conflist(),
        ),
        setup("bridge conflist, Go", &ours, &go, &[], &bridge_conflist()),
    ];
    for i in 0..=ROUNDS {
        for s in &mut setups {
            if let Err(e) = round(s, i, i > 0) {
                eprintln!("FAILED: {e}\n{}", s.rt.log());
                std::process::exit(1);
            }
        }
    }
    println!(
        "{:38} {:>7} {:>7} {:>7} {:>9} {:>9}",
        "ms", "Run p50", "p90", "min", "Stop p50", "Rm p50"
    );
    let mut sums = Vec::new();
    for s in &setups {
        let sum = [
            summarise(&s.run).expect("samples"),
            summarise(&s.stop).expect("samples"),
            summarise(&s.remove).expect("samples"),
        ];
        row(s.label, &sum);
        sums.push(sum);
    }
    let ratio = |a: usize, b: usize, k: usize| sums[a][k].median_ms / sums[b][k].median_ms;
    println!(
        "ours/Go, flannel conflist: Run {:.2}x  Stop {:.2}x  Remove {:.2}x",
        ratio(0, 1, 0),
        ratio(0, 1, 1),
        ratio(0, 1, 2)
    );
    println!(
        "ours/Go, bridge conflist:  Run {:.2}x  Stop {:.2}x  Remove {:.2}x",
        ratio(2, 3, 0),
        ratio(2, 3, 1),
        ratio(2, 3, 2)
    );
}
