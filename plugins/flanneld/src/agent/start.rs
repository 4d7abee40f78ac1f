//! Start-up, in upstream's order: health endpoints, the store, the network
//! config, the interface, the backend, the lease, the devices, the
//! nftables rules, subnet.env; then the threads (the store's feed and
//! task, the kernel's notifications) and the loop.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use netkit::Netlink;
use netkit::monitor::Monitor;

use super::kernel::Kernel;
use super::own::Own;
use super::{Agent, Event, Feed, TICK, TRAFFIC_CHECK, Timers};
use crate::backend::{self, Setup};
use crate::flags::Options;
use crate::health::{self, Health};
use crate::iface;
use crate::lease::Lease;
use crate::log::escape;
use crate::netconfig::NetConfig;
use crate::peers::Table;
use crate::store::alloc::AllocError;
use crate::store::etcd::EtcdStore;
use crate::store::file::FileStore;
use crate::store::kube::KubeStore;
use crate::store::task::{Request, Task};
use crate::store::{Acquire, Backoff, Hints, Store};
use crate::subnet_env;
use crate::traffic::Traffic;

/// One malloc arena for all threads: the feed and notification threads
/// make records the main thread frees, and per-thread arenas would each
/// keep their own high-water mark. Nothing here contends for the heap.
/// Buffers of 128 KiB and more (a page of a Node listing is megabytes)
/// always get their own mapping, returned whole when freed: glibc would
/// otherwise raise that threshold after the first such free and put the
/// next ones on the heap, where the records that outlive them pin it.
fn one_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes a malloc setting; called before any
    // thread but the main one exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Sleeps up to `d`, waking early when asked to stop.
fn pause(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Why an attempt at start-up did not answer.
enum NotYet {
    /// It failed: tried again after a pause (with backoff).
    Failed(String),
    /// It waited a while itself for what it needs: tried again at once.
    Waited(String),
}

/// Tries `attempt` until it answers, logging each new reason once (and
/// saying it on `/readyz`); `None` when asked to stop meanwhile.
fn until_it_answers<T>(
    what: &str,
    stop: &AtomicBool,
    health: &Health,
    mut attempt: impl FnMut() -> Result<T, NotYet>,
) -> Option<T> {
    let mut backoff = Backoff::new();
    let mut said = String::new();
    loop {
        let (why, wait) = match attempt() {
            Ok(v) => {
                health.starting(None);
                return Some(v);
            }
            Err(NotYet::Failed(e)) => (e, backoff.next_wait()),
            Err(NotYet::Waited(e)) => (e, Duration::ZERO),
        };
        if why != said {
            crate::warn!("{what}: {why} (trying again)");
            health.starting(Some(format!("{what}: {why}")));
            said = why;
        } else {
            crate::debug!("{what}: {why}");
        }
        pause(wait, stop);
        if stop.load(Ordering::Relaxed) {
            return None;
        }
    }
}

fn failed(e: impl ToString) -> NotYet {
    NotYet::Failed(escape(&e.to_string()))
}

/// The store the flags name: the Kubernetes API with
/// `--kube-subnet-mgr`, the embedded store with `--store-dir`, else etcd;
/// retried until it answers, as upstream does.
fn open_store(
    opts: &Options,
    stop: &AtomicBool,
    health: &Health,
) -> Result<Option<Box<dyn Store>>, String> {
    if opts.kube_subnet_mgr {
        let mut kube = KubeStore::new(opts).map_err(|e| e.to_string())?;
        let found = until_it_answers("cannot learn this node's name", stop, health, || {
            kube.find_node().map(drop).map_err(failed)
        });
        return Ok(found.map(|()| Box::new(kube) as Box<dyn Store>));
    }
    if let Some(dir) = &opts.store_dir {
        return Ok(Some(Box::new(
            FileStore::open(dir).map_err(|e| e.to_string())?,
        )));
    }
    Ok(until_it_answers("waiting for etcd", stop, health, || {
        EtcdStore::connect(opts)
            .map(|s| Box::new(s) as Box<dyn Store>)
            .map_err(failed)
    }))
}

/// The lease, retried while the store fails or waits; a config that
/// leaves no subnet free is an error for a person to act on.
fn acquire(
    store: &mut dyn Store,
    want: &Acquire<'_>,
    stop: &AtomicBool,
    health: &Health,
) -> Result<Option<Lease>, String> {
    let mut fatal = None;
    let lease = until_it_answers("cannot acquire a lease", stop, health, || {
        match store.acquire(want) {
            Ok(l) => Ok(Some(l)),
            Err(e @ AllocError::Exhausted(_)) => {
                fatal = Some(e.to_string());
                Ok(None)
            }
            Err(AllocError::Waiting(why)) => Err(NotYet::Waited(escape(&why))),
            Err(e) => Err(failed(e)),
        }
    });
    match (fatal, lease) {
        (Some(e), _) => Err(e),
        (None, lease) => Ok(lease.flatten()),
    }
}

/// The flags with what a person set on this node in the store (its
/// `node-public-ip` annotations, as upstream): they stand for
/// `--public-ip`, and with no `--iface` they pick the interface.
fn with_hints(opts: &Options, hints: &Hints) -> Options {
    let mut o = opts.clone();
    let given = opts.ifaces.is_empty() && opts.iface_regex.is_empty();
    if let Some(ip) = hints.public_ip {
        o.public_ip = Some(ip);
        if given {
            o.ifaces.push(ip.to_string());
        }
    }
    if let Some(ip) = hints.public_ipv6 {
        o.public_ipv6 = Some(ip);
        if given && hints.public_ip.is_none() {
            o.ifaces.push(ip.to_string());
        }
    }
    o
}

/// A thread that passes the kernel's notifications on.
fn start_kernel_events(tx: Sender<Event>) -> Result<(), String> {
    // Opened here, in the agent's namespace; read on the thread.
    let mut monitor =
        Monitor::new().map_err(|e| format!("cannot listen to the kernel's notifications: {e}"))?;
    std::thread::Builder::new()
        .name("kernel-events".into())
        .spawn(move || {
            loop {
                let ev = match monitor.next() {
                    Ok(changes) if changes.is_empty() => continue,
                    Ok(changes) => Event::Kernel(changes),
                    Err(e) => {
                        // Not a busy loop on a socket that keeps failing.
                        std::thread::sleep(Duration::from_secs(1));
                        Event::KernelTrouble(e.to_string())
                    }
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the kernel notification thread: {e}"))
}

/// `203.0.113.2 (from 10.0.0.2)`: a public address, and the local one
/// when they differ (NAT).
fn reached_at(public: Option<IpAddr>, local: Option<IpAddr>) -> Option<String> {
    let public = public?;
    Some(match local {
        Some(l) if l != public => format!("{public} (sent from {l})"),
        _ => public.to_string(),
    })
}

pub fn run(opts: &Options, stop: &AtomicBool) -> Result<(), String> {
    let renew_margin = Duration::from_secs(opts.renew_margin_minutes * 60);
    let lease_ttl = Duration::from_secs(opts.lease_ttl_seconds);
    if lease_ttl <= renew_margin {
        return Err(format!(
            "--subnet-lease-ttl ({} s) must be longer than --subnet-lease-renew-margin ({} min)",
            opts.lease_ttl_seconds, opts.renew_margin_minutes
        ));
    }
    // From the start, as upstream: /healthz answers while we wait for the store.
    one_arena();
    let health = Arc::new(Health::new(TICK));
    if opts.healthz_port > 0 {
        let addr = format!("{}:{}", opts.healthz_ip, opts.healthz_port);
        health::http::serve(&addr, health.clone())
            .map_err(|e| format!("cannot serve health on {addr}: {e}"))?;
    }
    let Some(mut store) = open_store(opts, stop, &health)? else {
        return Ok(());
    };
    let Some(text) = until_it_answers("waiting for the network config", stop, &health, || {
        store.network_config().map_err(failed)
    }) else {
        return Ok(());
    };
    let config = NetConfig::parse(&text).map_err(|e| escape(&e))?;
    let Some(hints) = until_it_answers("cannot read this node", stop, &health, || {
        store.hints().map_err(failed)
    }) else {
        return Ok(());
    };
    let mut nl = Netlink::new().map_err(|e| format!("cannot open netlink: {e}"))?;
    let opts = &with_hints(opts, &hints);
    let ext = iface::choose(&mut nl, opts)?;
    // What the lease publishes: --public-ip(v6), else the interface's own.
    let public_ip = config.ipv4.as_ref().and(opts.public_ip.or(ext.ipv4));
    let public_ipv6 = config.ipv6.as_ref().and(opts.public_ipv6.or(ext.ipv6));
    if config.ipv4.is_some() && public_ip.is_none() {
        return Err(format!(
            "{} has no IPv4 address and --public-ip is not set",
            ext.name
        ));
    }
    if config.ipv6.is_some() && public_ipv6.is_none() {
        return Err(format!(
            "{} has no IPv6 address and --public-ipv6 is not set",
            ext.name
        ));
    }
    let mut backend = backend::new(Setup {
        config: &config,
        ext: &ext,
        public_ip,
        public_ipv6,
        udp_offload: opts.udp_offload,
        macs: (hints.mac, hints.mac6),
        health: health.clone(),
    })?;
    let attrs = backend.attrs();
    let want = Acquire {
        config: &config,
        attrs: &attrs,
        previous: subnet_env::previous(&opts.subnet_file),
        ttl: lease_ttl,
    };
    let Some(lease) = acquire(store.as_mut(), &want, stop, &health)? else {
        return Ok(());
    };
    let at: Vec<String> = [
        reached_at(public_ip.map(IpAddr::V4), ext.ipv4.map(IpAddr::V4)),
        reached_at(public_ipv6.map(IpAddr::V6), ext.ipv6.map(IpAddr::V6)),
    ]
    .into_iter()
    .flatten()
    .collect();
    crate::info!(
        "acquired lease {} on {}, reached at {}",
        lease.key,
        ext.name,
        at.join(" and ")
    );
    backend.start(&mut nl, &lease.key)?;
    // Before subnet.env, as upstream: pods made from it get their NAT.
    let mut traffic = Traffic::new(opts.ip_masq, opts.iptables_forward_rules);
    match traffic.setup(&config, &lease.key) {
        Ok(done) => {
            for d in done {
                crate::info!("nftables: {d}");
            }
        }
        // Upstream stops when it cannot masquerade, and only logs forward rules.
        Err(e) if opts.ip_masq => return Err(e.to_string()),
        Err(e) => crate::error!("{e} (tried again every resync)"),
    }
    subnet_env::write(
        &opts.subnet_file,
        &subnet_env::render(&config, &lease.key, backend.mtu(), opts.ip_masq),
    )
    .map_err(|e| format!("cannot write {}: {e}", opts.subnet_file.display()))?;
    health.subnet_env_written();
    let (tx, rx) = mpsc::channel();
    start_kernel_events(tx.clone())?;
    let full_every = Duration::from_secs(opts.full_resync_seconds);
    let sink = tx.clone();
    store
        .feed(
            Box::new(move |ev| sink.send(Event::Store(ev)).is_ok()),
            full_every,
        )
        .map_err(|e| format!("cannot follow the lease store: {e}"))?;
    let own_in_feed = store.feeds_own_lease();
    let replies = tx.clone();
    let task = Task::spawn(store, move |r| {
        replies.send(Event::Reply(Box::new(r))).is_ok()
    })?;
    drop(tx);
    // The data plane is up: said where the store has a place for it (the
    // Node's NetworkUnavailable condition).
    task.send(Request::Complete {
        lease: lease.clone(),
    })?;
    let now = Instant::now();
    let mut agent = Agent {
        config,
        ext,
        backend,
        kernel: Kernel::new(nl, health.clone()),
        own: Own::new(lease, lease_ttl, renew_margin, health.clone()),
        own_in_feed,
        store: task,
        feed: Feed::default(),
        peers: Table::default(),
        grace: Duration::from_secs(opts.peer_grace_seconds),
        peers_dirty: false,
        traffic,
        health,
        timers: Timers {
            full_every,
            // The first full comparison follows the first listing.
            next_full: now + full_every,
            full_backoff: None,
            next_traffic: now + TRAFFIC_CHECK,
            complete_again: None,
        },
        ext_up: true,
        first_pass: true,
    };
    agent.health.loop_started();
    agent.run(&rx, stop);
    // The data plane stays: pods keep working while the agent restarts.
    crate::info!("stopping; the data plane is left in place");
    Ok(())
}
