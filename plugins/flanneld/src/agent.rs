//! The agent: lease this node's subnet, write subnet.env, then keep the data
//! plane equal to the store's leases.
//!
//! After start-up everything is driven by events on one channel: the
//! store's feed (leases put or gone, the config, full listings; see
//! `store`), and the kernel's own notifications (a route, neighbour, fdb
//! entry or device of ours deleted or altered: repaired at once; see
//! `repair`). Each batch of events becomes one batch of kernel changes
//! (`plan` says what, `netkit::batch` sends them). Ticks: the lease renewal,
//! the retry of a failed write, the end of an absent peer's grace period,
//! the nftables check, and a rare full comparison with the kernel
//! (`reconcile`) as a safety net.

use std::net::IpAddr;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use netkit::Netlink;
use netkit::batch::Op;
use netkit::monitor::{Change, Monitor};

use crate::alloc;
use crate::backend::udp;
use crate::backend::vxlan::{self, Vxlan};
use crate::flags::Options;
use crate::health::{self, Health};
use crate::iface::{self, ExtIface};
use crate::lease::{Lease, LeaseAttrs};
use crate::netconfig::{BackendType, NetConfig};
use crate::own::Own;
use crate::peers::Table;
use crate::store::etcd::EtcdStore;
use crate::store::file::FileStore;
use crate::store::{Store, StoreEvent};
use crate::subnet_env;
use crate::traffic::Traffic;

/// The loop goes round at least this often (it records its health then,
/// and notices a request to stop).
pub const TICK: Duration = Duration::from_millis(250);
/// How often the masquerade and forward rules are checked (a cheap look
/// at the ruleset generation when nothing changed).
pub const TRAFFIC_CHECK: Duration = Duration::from_secs(2);

/// A batch this large (a listing, a restored device) leaves the heap
/// grown by megabytes of transient records: handed back afterwards.
const BIG_BATCH: usize = 1000;

/// One malloc arena for all threads: the feed and notification threads
/// make records the main thread frees, and per-thread arenas would each
/// keep their own high-water mark. Nothing here contends for the heap.
fn one_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes a malloc setting; called before any
    // thread but the main one exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

/// Returns freed heap memory to the system (glibc keeps it otherwise, per
/// thread arena), so the resident size stays that of the peer table.
pub fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it has no
    // preconditions.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// What wakes the agent.
#[derive(Debug)]
pub enum Event {
    Store(StoreEvent),
    Kernel(Vec<Change>),
    /// The kernel notification socket failed (a full comparison follows).
    KernelTrouble(String),
}

/// The embedded store with `--store-dir`, else etcd (retried until it
/// answers, as upstream does).
fn open_store(opts: &Options, stop: &AtomicBool) -> Result<Option<Box<dyn Store>>, String> {
    if let Some(dir) = &opts.store_dir {
        return Ok(Some(Box::new(
            FileStore::open(dir).map_err(|e| e.to_string())?,
        )));
    }
    loop {
        match EtcdStore::connect(opts) {
            Ok(s) => return Ok(Some(Box::new(s))),
            Err(e) => crate::warn!("waiting for etcd: {e}"),
        }
        pause(Duration::from_secs(1), stop);
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
    }
}

/// Sleeps up to `d`, waking early when asked to stop.
fn pause(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Everything the running agent holds.
#[derive(Debug)]
pub struct State {
    pub store: Box<dyn Store>,
    /// The config this agent runs (read at start; a change needs a restart).
    pub config: NetConfig,
    pub ext: ExtIface,
    pub nl: Netlink,
    pub lease: Lease,
    pub attrs: LeaseAttrs,
    pub vtep: Option<Vxlan>,
    /// The vxlan device's index, once it exists.
    pub dev: Option<u32>,
    /// The udp backend: its peer table and device.
    pub udp: Option<udp::Plane>,
    /// Masquerade and forward rules (nftables).
    pub traffic: Traffic,
    pub health: Arc<Health>,
    renew_margin: Duration,
    pub lease_ttl: Duration,
    /// How long a peer missing from a listing is kept.
    pub grace: Duration,
    /// Between full comparisons.
    pub full_every: Duration,
    pub peers: Table,
    /// Whether our lease in the store is ours.
    pub own: Own,
    /// Kernel changes to send at the end of this round of events.
    pub pending: Vec<Op>,
    /// The underlay link is up (routes via it vanish when it goes down).
    pub ext_up: bool,
    /// The udp peer table must be rebuilt from `peers`.
    pub udp_dirty: bool,
    /// The store's feed: listed at least once, and what troubles it.
    pub listed: bool,
    pub store_trouble: Option<String>,
    /// What differs in the store's network config, while it does.
    pub config_drift: Option<String>,
    /// The first full comparison after start: an earlier version's
    /// routes are dealt with then.
    pub first_pass: bool,
    /// When the next full comparison runs, and the wait after a failed one.
    pub next_full: Instant,
    pub full_backoff: Option<Duration>,
    next_traffic: Instant,
    /// Kernel changes that failed since the last successful full pass.
    pub dataplane_errors: usize,
    /// Errors logged lately: one that persists is logged as an error
    /// once, then at debug level (cleared by each full comparison).
    pub said: Vec<String>,
    pub said_before: Vec<String>,
}

fn wait_for_config(store: &mut dyn Store, stop: &AtomicBool) -> Result<Option<NetConfig>, String> {
    loop {
        match store.network_config() {
            Ok(text) => return NetConfig::parse(&text).map(Some),
            Err(e) => {
                crate::warn!("waiting for the network config: {e}");
                pause(Duration::from_secs(1), stop);
                if stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
            }
        }
    }
}

/// The udp backend: TUN device with this node's addresses, the routes for
/// the cluster networks through it, and the forwarding threads.
fn start_udp(
    nl: &mut Netlink,
    config: &NetConfig,
    lease: &Lease,
    local: udp::Local,
    mtu: u32,
    health: Arc<Health>,
) -> Result<udp::Plane, String> {
    let peers = Arc::new(udp::Table::new(
        local.port,
        local.v4.is_some(),
        local.v6.is_some(),
        [lease.key.ipv4, lease.key.ipv6].into_iter().flatten(),
    ));
    udp::start(local, peers.clone(), health)?;
    let err = |what: &str, e: netkit::NetlinkError| format!("{what} {}: {e}", udp::TUN_NAME);
    let tun = nl
        .link_by_name(udp::TUN_NAME)
        .map_err(|e| err("cannot look up", e))?
        .ok_or_else(|| format!("{} vanished right after it was made", udp::TUN_NAME))?;
    nl.set_mtu(tun.index, mtu)
        .map_err(|e| err("cannot set the MTU of", e))?;
    for own in [lease.key.ipv4, lease.key.ipv6].into_iter().flatten() {
        let host = if own.is_ipv4() { 32 } else { 128 };
        match nl.add_address(tun.index, own.network(), host) {
            Err(e) if !e.is_exists() => return Err(err("cannot address", e)),
            _ => {}
        }
    }
    nl.set_up(tun.index)
        .map_err(|e| err("cannot bring up", e))?;
    let plane = udp::Plane {
        peers,
        tun_index: tun.index,
    };
    // Before subnet.env, as for the other backends; the resync keeps them.
    for r in plane.routes(config) {
        nl.replace_route(&r)
            .map_err(|e| err("cannot route the cluster network through", e))?;
    }
    Ok(plane)
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
    let Some(mut store) = open_store(opts, stop)? else {
        return Ok(());
    };
    let Some(config) = wait_for_config(store.as_mut(), stop)? else {
        return Ok(());
    };
    let mut nl = Netlink::new().map_err(|e| format!("cannot open netlink: {e}"))?;
    let ext = iface::choose(&mut nl, opts)?;
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
    if config.backend.kind == BackendType::HostGw
        && public_ip.is_some()
        && ext.ipv4.is_some()
        && public_ip != ext.ipv4
    {
        return Err(format!(
            "host-gw needs the public IP to be the interface's address ({} has {:?}, --public-ip is {:?}): probably you are behind NAT",
            ext.name, ext.ipv4, public_ip
        ));
    }
    let underlay_mtu = if config.backend.mtu > 0 {
        config.backend.mtu
    } else {
        ext.mtu
    };
    let local: Option<IpAddr> = public_ip.map(IpAddr::V4).or(public_ipv6.map(IpAddr::V6));
    let mut vtep = match (&config.backend.kind, local) {
        (BackendType::Vxlan, Some(local)) => Some(Vxlan {
            vni: config.backend.vni,
            port: config.backend.port,
            mtu: underlay_mtu.saturating_sub(vxlan::overhead(local)),
            mac: vxlan::stable_mac(local, config.backend.vni),
            local,
            direct_routing: config.backend.direct_routing,
            own: Vec::new(),
        }),
        _ => None,
    };
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6,
        backend_type: config.backend.kind.as_str().into(),
        backend_data: vtep.as_ref().map(|v| vxlan::backend_data(v.vni, &v.mac)),
        backend_v6_data: None,
    };
    let previous = subnet_env::previous(&opts.subnet_file);
    let lease = alloc::acquire(store.as_mut(), &config, &attrs, previous, lease_ttl)
        .map_err(|e| e.to_string())?;
    crate::info!(
        "acquired lease {} on {} via {:?}",
        lease.key,
        ext.name,
        local
    );
    let mut dev = None;
    if let Some(v) = vtep.as_mut() {
        v.own = [lease.key.ipv4, lease.key.ipv6]
            .into_iter()
            .flatten()
            .collect();
        dev = Some(v.ensure_device(&mut nl, &ext)?.0);
    }
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
    let udp = match config.backend.kind {
        BackendType::Udp => Some(start_udp(
            &mut nl,
            &config,
            &lease,
            udp::Local {
                v4: public_ip,
                v6: public_ipv6,
                port: config.backend.port,
                offload: opts.udp_offload,
            },
            underlay_mtu.saturating_sub(udp::overhead(public_ipv6.is_some())),
            health.clone(),
        )?),
        _ => None,
    };
    let mtu = match (&vtep, &udp) {
        (Some(v), _) => v.mtu,
        (None, Some(_)) => underlay_mtu.saturating_sub(udp::overhead(public_ipv6.is_some())),
        (None, None) => underlay_mtu,
    };
    subnet_env::write(
        &opts.subnet_file,
        &subnet_env::render(&config, &lease.key, mtu, opts.ip_masq),
    )
    .map_err(|e| format!("cannot write {}: {e}", opts.subnet_file.display()))?;
    health.subnet_env_written();
    let (tx, rx) = mpsc::channel();
    start_kernel_events(tx.clone())?;
    let full_every = Duration::from_secs(opts.full_resync_seconds);
    let now = Instant::now();
    let mut state = State {
        store,
        config,
        ext,
        nl,
        lease,
        attrs,
        vtep,
        dev,
        udp,
        traffic,
        health,
        renew_margin,
        lease_ttl,
        grace: Duration::from_secs(opts.peer_grace_seconds),
        full_every,
        peers: Table::default(),
        own: Own::Held,
        pending: Vec::new(),
        ext_up: true,
        udp_dirty: false,
        listed: false,
        store_trouble: None,
        config_drift: None,
        first_pass: true,
        // The first full comparison follows the first listing.
        next_full: now + full_every,
        full_backoff: None,
        next_traffic: now + TRAFFIC_CHECK,
        dataplane_errors: 0,
        said: Vec::new(),
        said_before: Vec::new(),
    };
    let sink = tx.clone();
    state
        .store
        .feed(
            Box::new(move |ev| sink.send(Event::Store(ev)).is_ok()),
            full_every,
        )
        .map_err(|e| format!("cannot follow the lease store: {e}"))?;
    drop(tx);
    state.health.loop_started();
    state.run(&rx, stop);
    // The data plane stays: pods keep working while the agent restarts.
    crate::info!("stopping; the data plane is left in place");
    Ok(())
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

impl State {
    /// The loop: handle what arrives, in batches; run what is due.
    fn run(&mut self, rx: &Receiver<Event>, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.due(now);
            let wait = self.next_deadline(now).saturating_duration_since(now);
            match rx.recv_timeout(wait.min(TICK)) {
                Ok(ev) => {
                    let mut records = self.handle(ev);
                    // Everything queued meanwhile joins the same batch.
                    while let Ok(ev) = rx.try_recv() {
                        records += self.handle(ev);
                    }
                    let big = records.max(self.pending.len()) >= BIG_BATCH;
                    self.flush();
                    if big {
                        give_back_memory();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.store_trouble = Some("the store's feed stopped".into());
                    std::thread::sleep(TICK);
                }
            }
            self.health.record(self.pass());
        }
    }

    /// The soonest of the timers.
    fn next_deadline(&self, now: Instant) -> Instant {
        let mut next = self.next_full.min(self.next_traffic);
        if let Some(t) = self.own.retry_at() {
            next = next.min(t);
        }
        if let Some(t) = self.peers.next_expiry(self.grace) {
            next = next.min(t);
        }
        if let Some(t) = self.renew_at(now) {
            next = next.min(t);
        }
        next.max(now)
    }

    /// Runs the timers that are due.
    fn due(&mut self, now: Instant) {
        if self.renew_at(now).is_some_and(|t| t <= now) {
            self.renew();
        }
        if self.own.retry_at().is_some_and(|t| t <= now) {
            self.retake_own();
        }
        let expired = self.peers.expired(self.grace, now);
        if !expired.is_empty() {
            for key in expired {
                crate::info!(
                    "lease {key} has been missing from the store for {} s: its peer is removed",
                    self.grace.as_secs()
                );
                self.peer_gone(&key);
            }
            self.flush();
        }
        if now >= self.next_traffic {
            self.sync_traffic();
            self.next_traffic = now + TRAFFIC_CHECK;
        }
        if now >= self.next_full && self.listed {
            self.full_pass();
        }
    }

    /// Where the agent stands, for `/healthz` and `/readyz`.
    fn pass(&self) -> crate::health::Pass {
        crate::health::Pass {
            store_ok: self.listed && self.store_trouble.is_none() && self.own.is_settled(),
            dataplane_errors: self.dataplane_errors,
            conflict: self.own.is_conflict(),
            config_changed: self.config_drift.is_some(),
        }
    }

    /// Handles one event; returns how many records it carried.
    fn handle(&mut self, ev: Event) -> usize {
        match ev {
            Event::Store(ev) => {
                let n = match &ev {
                    StoreEvent::Listed { leases, .. } => leases.len(),
                    _ => 1,
                };
                self.on_store(ev);
                n
            }
            Event::Kernel(changes) => {
                let n = changes.len();
                self.on_kernel(changes);
                n
            }
            Event::KernelTrouble(e) => {
                self.error_once(format!(
                    "kernel notifications failed ({e}): comparing everything instead"
                ));
                self.full_soon();
                1
            }
        }
    }

    /// Logs an error, once while it persists between full comparisons.
    /// A store call failed: logged once while it persists, and counted.
    pub fn store_failed(&mut self, msg: String) {
        self.health
            .metrics
            .store_errors
            .fetch_add(1, Ordering::Relaxed);
        self.error_once(msg);
    }

    pub fn error_once(&mut self, msg: String) {
        if self.said_before.contains(&msg) || self.said.contains(&msg) {
            crate::debug!("still: {msg}");
        } else {
            crate::error!("{msg}");
        }
        if !self.said.contains(&msg) {
            self.said.push(msg);
        }
    }

    /// When the lease is due for renewal (`None`: never, or not ours now).
    fn renew_at(&self, now: Instant) -> Option<Instant> {
        if !matches!(self.own, Own::Held) {
            return None;
        }
        let expires = self.lease.expires?;
        let left = expires
            .checked_sub(self.renew_margin)
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::ZERO);
        Some(now + left)
    }

    /// Renews the lease (the store keeps the same grant alive).
    fn renew(&mut self) {
        match self
            .store
            .update(&self.lease.key, &self.attrs, Some(self.lease_ttl))
        {
            Ok(()) => {
                self.lease.expires = Some(SystemTime::now() + self.lease_ttl);
                crate::info!("renewed lease {}", self.lease.key);
            }
            Err(e) => {
                self.store_failed(format!("cannot renew lease {}: {e}", self.lease.key));
                // Tried again in a while, not in a loop.
                self.own = Own::later(crate::own::FIRST_RETRY, true);
            }
        }
    }
}
