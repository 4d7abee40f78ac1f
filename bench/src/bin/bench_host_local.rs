//! Our host-local against the Go reference binary, side by side in one run:
//!
//! 1. 200 ADDs at once as separate processes on one network, then 200 DELs:
//!    every address unique, the store empty afterwards; wall times and ratio.
//! 2. One ADD and one DEL in an empty /16 and in one holding 60,000
//!    reservations: ours must cost at most twice as much when full.
//!
//! Usage: bench-host-local <our host-local> <Go host-local>

// A benchmark's figures are its output.
#![allow(clippy::print_stdout)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use bench::concurrent;
use bench::plugin::Plugin;
use bench::pool::{self, Case, Pool};
use bench::stats::{Summary, ms, summarise};
use bench::subnet::Subnet;

const CONCURRENT_CALLS: usize = 200;
const CONCURRENT_ROUNDS: usize = 5;
const FILL: u32 = 60_000;
/// Runs per case; Go in the full pool takes ~0.5 s per call, hence fewer.
const RUNS: usize = 30;
const RUNS_GO_FULL: usize = 8;
/// The target: full-pool cost at most this many times the empty-pool cost.
const MAX_SLOWDOWN: f64 = 2.0;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-host-local: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ours, go] = args.as_slice() else {
        return Err("usage: bench-host-local <our host-local> <Go host-local>".into());
    };
    let ours = Plugin::new("ours", Path::new(ours))?;
    let go = Plugin::new("go", Path::new(go))?;
    let started = Instant::now();

    println!("machine: {}", machine_info());
    println!("ours: {}", ours.path().display());
    println!("go:   {}", go.path().display());

    concurrency(&ours, &go)?;
    pool_fill(&ours, &go)?;

    println!();
    println!(
        "all checks passed; total {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn concurrency(ours: &Plugin, go: &Plugin) -> Result<(), String> {
    let subnet = subnet(Ipv4Addr::new(10, 20, 0, 0), 16)?;
    println!();
    println!(
        "== 1. {CONCURRENT_CALLS} ADDs at once, then {CONCURRENT_CALLS} DELs at once \
         (separate processes, one network, {subnet}) =="
    );
    eprintln!("  (running scenario 1)");
    // One round swings by 2-3x with the scheduler (200 processes on a few
    // CPUs); alternating rounds and taking medians keeps the ratio honest.
    let (mut ours_rounds, mut go_rounds) = (Vec::new(), Vec::new());
    for _ in 0..CONCURRENT_ROUNDS {
        ours_rounds.push(concurrent::run(ours, subnet, CONCURRENT_CALLS)?);
        go_rounds.push(concurrent::run(go, subnet, CONCURRENT_CALLS)?);
    }
    let walls = |rounds: &[concurrent::Outcome]| -> Result<(Summary, Summary), String> {
        let add: Vec<_> = rounds.iter().map(|r| r.add).collect();
        let del: Vec<_> = rounds.iter().map(|r| r.del).collect();
        Ok((summarise(&add)?, summarise(&del)?))
    };
    let (ours_add, ours_del) = walls(&ours_rounds)?;
    let (go_add, go_del) = walls(&go_rounds)?;
    println!(
        "wall time from the first spawn to the last exit, median (min-max) of \
         {CONCURRENT_ROUNDS} alternating rounds, in ms"
    );
    println!("{:<9} {:>22} {:>22}", "", "ADD wall", "DEL wall");
    for (label, add, del) in [("ours", ours_add, ours_del), ("go", go_add, go_del)] {
        println!("{label:<9} {:>22} {:>22}", range_cell(add), range_cell(del));
    }
    println!(
        "{:<9} {:>21.2}x {:>21.2}x",
        "ours/go",
        ratio(ours_add.median_ms, go_add.median_ms),
        ratio(ours_del.median_ms, go_del.median_ms)
    );
    println!(
        "checks (both, every round): every call exited 0, {CONCURRENT_CALLS} distinct addresses, \
         the store held exactly those, and nothing after the DELs"
    );
    Ok(())
}

fn pool_fill(ours: &Plugin, go: &Plugin) -> Result<(), String> {
    let subnet = subnet(Ipv4Addr::new(10, 30, 0, 0), 16)?;
    println!();
    println!("== 2. one ADD, one DEL: empty pool vs {FILL} reservations ({subnet}) ==");
    eprintln!("  (running scenario 2)");
    // Both full stores are written before any timing and removed after the
    // last: 60,000 files written or unlinked meanwhile would skew the figures.
    let ours_pool = Pool::new(ours.label, subnet, FILL)?;
    let go_pool = Pool::new(go.label, subnet, FILL)?;
    let ours_empty = pool::measure(ours, &Pool::new(ours.label, subnet, 0)?, RUNS)?;
    let go_empty = pool::measure(go, &Pool::new(go.label, subnet, 0)?, RUNS)?;
    let ours_full = pool::measure(ours, &ours_pool, RUNS)?;
    let go_full = pool::measure(go, &go_pool, RUNS_GO_FULL)?;
    eprintln!("  (removing the filled stores)");
    drop((ours_pool, go_pool));

    println!(
        "per process run, median (p90) in ms; runs: empty {RUNS} each, full {RUNS} ours, \
         {RUNS_GO_FULL} go"
    );
    println!(
        "{:<9} {:>16} {:>16} {:>16} {:>16} {:>15} {:>15}",
        "", "empty ADD", "empty DEL", "full ADD", "full DEL", "full/empty ADD", "full/empty DEL"
    );
    for (label, empty, full) in [
        ("ours", &ours_empty, &ours_full),
        ("go", &go_empty, &go_full),
    ] {
        println!(
            "{label:<9} {:>16} {:>16} {:>16} {:>16} {:>14.2}x {:>14.2}x",
            cell(empty.add),
            cell(empty.del),
            cell(full.add),
            cell(full.del),
            ratio(full.add.median_ms, empty.add.median_ms),
            ratio(full.del.median_ms, empty.del.median_ms)
        );
    }
    let vs_go = |o: Summary, g: Summary| format!("{:.3}x", ratio(o.median_ms, g.median_ms));
    println!(
        "{:<9} {:>16} {:>16} {:>16} {:>16}",
        "ours/go",
        vs_go(ours_empty.add, go_empty.add),
        vs_go(ours_empty.del, go_empty.del),
        vs_go(ours_full.add, go_full.add),
        vs_go(ours_full.del, go_full.del)
    );
    println!(
        "first call after a foreign change (index rebuild), ours: ADD {:.1} ms, DEL {:.1} ms \
         (go, which has no index, first call: ADD {:.1} ms, DEL {:.1} ms)",
        ms(ours_full.first.add),
        ms(ours_full.first.del),
        ms(go_full.first.add),
        ms(go_full.first.del)
    );
    println!("{}", verdict(&ours_empty, &ours_full));
    Ok(())
}

/// Whether ours met the target, with the figures that decide it.
fn verdict(empty: &Case, full: &Case) -> String {
    let add = ratio(full.add.median_ms, empty.add.median_ms);
    let del = ratio(full.del.median_ms, empty.del.median_ms);
    let met = add <= MAX_SLOWDOWN && del <= MAX_SLOWDOWN;
    format!(
        "target \"full <= {MAX_SLOWDOWN}x empty for ours\" (medians): {} (ADD {add:.2}x, DEL {del:.2}x)",
        if met { "MET" } else { "NOT MET" }
    )
}

fn range_cell(s: Summary) -> String {
    format!("{:.1} ({:.1}-{:.1})", s.median_ms, s.min_ms, s.max_ms)
}

fn cell(s: Summary) -> String {
    format!("{:.2} ({:.2})", s.median_ms, s.p90_ms)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

fn subnet(base: Ipv4Addr, prefix: u8) -> Result<Subnet, String> {
    Subnet::new(base, prefix).ok_or_else(|| format!("bad subnet {base}/{prefix}"))
}

/// CPUs, CPU model and kernel, so figures from different runs can be told apart.
fn machine_info() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
    format!("nproc {cpus} ({model}), kernel {kernel}")
}
