//! flanneld's lease stores at scale, driven through the agent's own store
//! library (no agent): N leases (5,000 by default) in the embedded store
//! (files on tmpfs) and in a real etcd (one member on 127.0.0.1 in a
//! namespace of its own, data on tmpfs). Per store: how long after
//! `feed()` the listing of all N arrives, how long a write among them
//! takes to come out as its event (another handle writes, as another
//! node would), and the feed threads' CPU while nothing changes for 10 s.
//! These are the figures the store tests used to assert; the tests keep
//! only what the feed must do.
//!
//! usage: bench-flanneld-store [--leases 5000]

#![allow(clippy::print_stdout)] // the figures are this program's output

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use bench::cleanup::{self, Scratch};
use bench::process;
use bench::stats::{self, percentile};
use bench::table::{Row, print_table, row, show_ms, show_pct};
use conformance::netns::in_netns;
use conformance::{Etcd, EtcdOptions, TestNetns};
use flanneld::flags::Options;
use flanneld::lease::{Lease, LeaseAttrs, SubnetKey};
use flanneld::store::etcd::EtcdStore;
use flanneld::store::file::FileStore;
use flanneld::store::probe::channel;
use flanneld::store::{Records, Store, StoreEvent, Written};

const USAGE: &str = "usage: bench-flanneld-store [--leases 5000]";
const HOUR: Duration = Duration::from_secs(3600);
/// Writes timed, each waited for before the next.
const WRITES: usize = 20;
const IDLE: Duration = Duration::from_secs(10);
const LIST_LIMIT: Duration = Duration::from_secs(60);
const EVENT_LIMIT: Duration = Duration::from_secs(5);
// The targets, where the tests had them as assertions.
const LIST_TARGET_MS: f64 = 10_000.0;
const EVENT_TARGET_MS: f64 = 500.0;
const IDLE_TARGET_PCT: f64 = 0.2;

/// One store's figures; None: not measured (see `notes`), INFINITY: a
/// deadline passed.
#[derive(Debug, Default)]
struct Figures {
    load_s: Option<f64>,
    listed_ms: Option<f64>,
    event_ms: Vec<f64>,
    idle_cpu: Option<f64>,
    notes: Vec<String>,
}

fn attrs(ip: &str) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: ip.parse().ok(),
        public_ipv6: None,
        backend_type: "host-gw".into(),
        backend_data: None,
        backend_v6_data: None,
    }
}

fn key(i: u32) -> Result<SubnetKey, String> {
    let text = format!("10.{}.{}.0-24", 100 + i / 256, i % 256);
    SubnetKey::parse(&text).ok_or_else(|| format!("bad key {text}"))
}

fn made(w: Result<Written, flanneld::store::StoreError>, what: &str) -> Result<Lease, String> {
    match w {
        Ok(Written::Ours(l)) => Ok(l),
        Ok(Written::NotOurs(now)) => Err(format!("{what}: not written, the store holds {now:?}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// The first event that passes `want` within `limit` (None: none came).
fn wait_event(
    rx: &Receiver<StoreEvent>,
    limit: Duration,
    want: impl Fn(&StoreEvent) -> bool,
) -> Result<Option<StoreEvent>, String> {
    let end = Instant::now() + limit;
    loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(ev) if want(&ev) => return Ok(Some(ev)),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => return Ok(None),
            Err(RecvTimeoutError::Disconnected) => return Err("the feed ended".into()),
        }
    }
}

/// Loads `n` leases through `writer`, starts `store`'s feed, times the
/// listing, `WRITES` writes by `writer` and the feed threads (`thread`)
/// while nothing changes.
fn measure<S: Store + Records, W: Records>(
    store: &mut S,
    writer: &mut W,
    n: u32,
    thread: &str,
    fig: &mut Figures,
) -> Result<(), String> {
    let t = Instant::now();
    for i in 0..n {
        let ip = format!("192.0.{}.{}", 2 + i / 250, 1 + i % 250);
        made(writer.create(&key(i)?, &attrs(&ip), Some(HOUR)), "load")?;
    }
    fig.load_s = Some(t.elapsed().as_secs_f64());

    let (sink, rx) = channel();
    let t = Instant::now();
    store.feed(sink, HOUR).map_err(|e| format!("feed: {e}"))?;
    let listed = wait_event(&rx, LIST_LIMIT, |ev| {
        matches!(ev, StoreEvent::Listed { .. })
    })?;
    let Some(StoreEvent::Listed { leases, .. }) = listed else {
        fig.listed_ms = Some(f64::INFINITY);
        return Err(format!("no listing within {} s", LIST_LIMIT.as_secs()));
    };
    fig.listed_ms = Some(stats::ms(t.elapsed()));
    if leases.len() != n as usize {
        fig.notes
            .push(format!("listed {} leases, not {n}", leases.len()));
    }

    let target = key(n / 2)?;
    let mut lease = writer
        .list()
        .map_err(|e| format!("list: {e}"))?
        .leases
        .into_iter()
        .find(|l| l.key == target)
        .ok_or_else(|| format!("{target:?} is not in the store"))?;
    for i in 0..WRITES {
        let want = attrs(&format!("198.51.100.{}", 1 + i));
        let t = Instant::now();
        lease = made(writer.replace(&lease, &want, Some(HOUR)), "write")?;
        let seen = wait_event(
            &rx,
            EVENT_LIMIT,
            |ev| matches!(ev, StoreEvent::Put(l) if l.attrs == want),
        )?;
        fig.event_ms
            .push(seen.map_or(f64::INFINITY, |_| stats::ms(t.elapsed())));
    }

    let me = std::process::id();
    let before = process::threads_run_ns(me, thread)?;
    let t = Instant::now();
    let quiet = rx.recv_timeout(IDLE);
    let used = process::threads_run_ns(me, thread)?.saturating_sub(before);
    let wall = t.elapsed();
    if let Ok(ev) = quiet {
        fig.notes
            .push(format!("an event while nothing changed: {ev:?}"));
    } else {
        fig.idle_cpu = Some(100.0 * used as f64 / 1e9 / wall.as_secs_f64());
    }
    Ok(())
}

fn file_store(n: u32) -> Figures {
    let mut fig = Figures::default();
    let run = |fig: &mut Figures| -> Result<(), String> {
        let dir = Scratch::new("store-file")?;
        let open = || FileStore::open(dir.path()).map_err(|e| format!("file store: {e}"));
        let (mut store, mut writer) = (open()?, open()?);
        measure(&mut store, &mut writer, n, "store-feed", fig)
    };
    if let Err(e) = run(&mut fig) {
        fig.notes.push(e);
    }
    fig
}

fn etcd_store(n: u32) -> Figures {
    let mut fig = Figures::default();
    let run = |fig: &mut Figures| -> Result<(), String> {
        let ns = TestNetns::new("bstore");
        let dir = Scratch::new("store-etcd")?;
        let opts = EtcdOptions {
            die_with_parent: true,
            ..EtcdOptions::default()
        };
        let etcd = Etcd::try_start(&ns, "http://127.0.0.1:2379", dir.path(), opts)?;
        let options = Options {
            etcd_endpoints: vec![etcd.url().to_string()],
            ..Options::default()
        };
        // The store's threads (the feed's too) are made in etcd's
        // namespace: the client's sockets are.
        in_netns(&etcd.ns().path(), || {
            let connect = || EtcdStore::connect(&options).map_err(|e| format!("etcd: {e}"));
            let (mut store, mut writer) = (connect()?, connect()?);
            measure(&mut store, &mut writer, n, "etcd-feed", fig)
        })
    };
    if let Err(e) = run(&mut fig) {
        fig.notes.push(e);
    }
    fig
}

fn report(title: &str, n: u32, f: &Figures) {
    let rows: Vec<Row> = vec![
        row(
            &format!("Listed (all {n}) after feed()"),
            Some(LIST_TARGET_MS),
            "<= 10 s",
            f.listed_ms,
            None,
            show_ms,
        ),
        row(
            &format!("write -> its event, p50 ({} writes)", f.event_ms.len()),
            None,
            "",
            percentile(&f.event_ms, 0.5),
            None,
            show_ms,
        ),
        row(
            "write -> its event, max",
            Some(EVENT_TARGET_MS),
            "<= 500 ms",
            percentile(&f.event_ms, 1.0),
            None,
            show_ms,
        ),
        row(
            &format!(
                "feed threads' CPU while nothing changes for {} s (% of a core)",
                IDLE.as_secs()
            ),
            Some(IDLE_TARGET_PCT),
            "<= 0.2 %",
            f.idle_cpu,
            None,
            show_pct,
        ),
    ];
    print_table(title, &rows, false);
    if let Some(l) = f.load_s {
        println!("  [ours] {n} leases written one by one in {l:.2} s");
    }
    for note in &f.notes {
        println!("  [ours] {}", note.replace('\n', "\n      "));
    }
}

fn parse_args() -> Result<u32, String> {
    let mut args = std::env::args().skip(1);
    let mut n = 5000;
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        match flag.as_str() {
            "--leases" => {
                let v = inline
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("--leases needs a value\n{USAGE}"))?;
                n = v.parse().map_err(|e| format!("--leases: {e}"))?;
                if !(1..=20_000).contains(&n) {
                    return Err("--leases must be 1..=20000".into());
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unexpected argument {a}\n{USAGE}")),
        }
    }
    Ok(n)
}

fn main() {
    let started = Instant::now();
    if let Err(e) = cleanup::install() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let n = match parse_args() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("error: run me as root: I create network namespaces");
        std::process::exit(1);
    }
    if !std::path::Path::new(bench::etcd::ETCD_BIN).is_file() {
        eprintln!(
            "error: {} is missing: apt-get install etcd-server",
            bench::etcd::ETCD_BIN
        );
        std::process::exit(1);
    }
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    println!(
        "bench-flanneld-store: {n} leases; {cores} cores; kernel {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "the stores driven through flanneld's library (no agent); writes by a second handle; \
         CPU = the feed threads' run time, % of one core"
    );
    eprintln!("embedded store: {n} leases");
    let f = file_store(n);
    report(
        &format!("== the embedded store (files on tmpfs), {n} leases =="),
        n,
        &f,
    );
    eprintln!("etcd: {n} leases");
    let f = etcd_store(n);
    report(
        &format!(
            "== etcd (one member on 127.0.0.1 in a namespace of its own, data on tmpfs), {n} leases =="
        ),
        n,
        &f,
    );
    cleanup::sweep();
    let left = cleanup::leftovers();
    if !left.is_empty() {
        eprintln!("warning: namespaces left behind: {left:?}");
    }
    println!("\nwall time {:.0} s", started.elapsed().as_secs_f64());
}
