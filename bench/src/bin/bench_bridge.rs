//! bridge + host-local, ours against Debian's Go chain, through the same
//! driver in one run: ADD and DEL of fresh pod namespaces with `ipMasq`,
//! each call a process run inside a throwaway host namespace, as a runtime
//! runs it. Prints p50/p99 per verb and the ratios ours/Go.

#![allow(clippy::print_stdout)] // the figures are this program's output

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bench::stats::summarise;
use conformance::{Invocation, TempDir, TestNetns};
use serde_json::json;

const PODS: usize = 60;

struct Chain {
    label: &'static str,
    dir: PathBuf,
}

fn percentile(samples: &[Duration], p: f64) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let rank = ((ms.len() as f64) * p).ceil().max(1.0) as usize;
    ms[rank.min(ms.len()) - 1]
}

/// Runs ADD then DEL for `PODS` fresh pods of one chain; returns the timings.
fn measure(
    chain: &Chain,
    host: &TestNetns,
    pods: &[TestNetns],
    data: &Path,
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let conf = json!({
        "cniVersion": "1.0.0", "name": "benchnet", "type": "bridge", "bridge": "cni0",
        "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "10.66.0.0/16"}]]}
    });
    let bridge = chain.dir.join("bridge");
    let call = |verb: &str, i: usize, ns: &TestNetns| {
        Invocation::new(verb)
            .container_id(&format!("bench-{i}"))
            .netns(ns)
            .env("CNI_PATH", &chain.dir.display().to_string())
            .config(&conf)
    };
    let mut adds = Vec::new();
    let mut dels = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let start = Instant::now();
        let out = call("ADD", i, pod).run(&bridge, host);
        adds.push(start.elapsed());
        if !out.status.success() {
            return Err(format!(
                "{} ADD failed: {}",
                chain.label,
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
    for (i, pod) in pods.iter().enumerate() {
        let start = Instant::now();
        let out = call("DEL", i, pod).run(&bridge, host);
        dels.push(start.elapsed());
        if !out.status.success() {
            return Err(format!(
                "{} DEL failed: {}",
                chain.label,
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
    Ok((adds, dels))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(ours), Some(go)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bench-bridge <dir with our bridge and host-local> <dir with Go's>");
        std::process::exit(2);
    };
    let chains = [
        Chain {
            label: "ours",
            dir: PathBuf::from(ours),
        },
        Chain {
            label: "go",
            dir: PathBuf::from(go),
        },
    ];
    println!(
        "bridge + host-local, ipMasq on, {PODS} fresh pods each, ADD then DEL, one process per call"
    );
    let mut rows = Vec::new();
    for chain in &chains {
        let host = TestNetns::new("benchhost");
        let pods: Vec<TestNetns> = (0..PODS)
            .map(|i| TestNetns::new(&format!("bp{i}")))
            .collect();
        let data = TempDir::new("benchbr");
        // One unmeasured round trip so both start with the bridge made.
        let warm = TestNetns::new("warm");
        if let Err(e) = measure(chain, &host, std::slice::from_ref(&warm), data.path()) {
            eprintln!("FAILED: {e}");
            std::process::exit(1);
        }
        match measure(chain, &host, &pods, data.path()) {
            Ok(t) => rows.push((chain.label, t)),
            Err(e) => {
                eprintln!("FAILED: {e}");
                std::process::exit(1);
            }
        }
    }
    println!(
        "{:8} {:>10} {:>10} {:>10} {:>10}",
        "", "ADD p50", "ADD p99", "DEL p50", "DEL p99"
    );
    for (label, (adds, dels)) in &rows {
        println!(
            "{label:8} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms",
            percentile(adds, 0.5),
            percentile(adds, 0.99),
            percentile(dels, 0.5),
            percentile(dels, 0.99)
        );
    }
    if let [(_, (oa, od)), (_, (ga, gd))] = rows.as_slice() {
        let ratio = |a: &[Duration], b: &[Duration], p: f64| percentile(a, p) / percentile(b, p);
        println!(
            "ours/go  {:>9.2}x {:>9.2}x {:>9.2}x {:>9.2}x",
            ratio(oa, ga, 0.5),
            ratio(oa, ga, 0.99),
            ratio(od, gd, 0.5),
            ratio(od, gd, 0.99)
        );
        println!(
            "targets: ADD <= 0.3x ({}), DEL <= 0.2x ({}) at p50",
            if ratio(oa, ga, 0.5) <= 0.3 {
                "MET"
            } else {
                "NOT MET"
            },
            if ratio(od, gd, 0.5) <= 0.2 {
                "MET"
            } else {
                "NOT MET"
            }
        );
        let _ = summarise(oa);
    }
}
