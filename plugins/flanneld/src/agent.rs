//! The agent: lease this node's subnet, write subnet.env, then keep the data
//! plane equal to the store's leases (see `reconcile`).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use netkit::Netlink;

use crate::alloc;
use crate::backend::udp;
use crate::backend::vxlan::{self, Vxlan};
use crate::flags::Options;
use crate::health::{self, Health};
use crate::iface::{self, ExtIface};
use crate::lease::{Lease, LeaseAttrs};
use crate::netconfig::{BackendType, NetConfig};
use crate::store::Store;
use crate::store::etcd::EtcdStore;
use crate::store::file::FileStore;
use crate::subnet_env;
use crate::traffic::Traffic;

/// How often the data plane is compared with the store (and repaired).
pub const RESYNC: Duration = Duration::from_secs(1);

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
    pub config: NetConfig,
    pub ext: ExtIface,
    pub nl: Netlink,
    pub lease: Lease,
    pub attrs: LeaseAttrs,
    pub vtep: Option<Vxlan>,
    /// The udp backend: its peer table and device.
    pub udp: Option<udp::Plane>,
    /// Masquerade and forward rules (nftables).
    pub traffic: Traffic,
    pub health: Arc<Health>,
    renew_margin: Duration,
    pub lease_ttl: Duration,
    /// The first resync after start: an earlier version's routes are
    /// dealt with then.
    pub first_pass: bool,
    /// Kernel errors in the current resync.
    pub dataplane_errors: usize,
    /// Errors logged in the current resync, and in the one before: one
    /// that persists is logged as an error once, then at debug level.
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

/// The udp backend: TUN device with this node's address, the route for the
/// whole cluster network through it, and the forwarding threads.
fn start_udp(
    nl: &mut Netlink,
    config: &NetConfig,
    lease: &Lease,
    public_ip: Option<std::net::Ipv4Addr>,
    underlay_mtu: u32,
    health: Arc<Health>,
) -> Result<udp::Plane, String> {
    let (Some(local), Some(net), Some(own)) = (public_ip, config.ipv4.as_ref(), lease.key.ipv4)
    else {
        return Err("the udp backend carries IPv4 only: set Network".into());
    };
    let peers = udp::Peers::default();
    udp::start(local, config.backend.port, peers.clone(), health)?;
    let err = |what: &str, e: netkit::NetlinkError| format!("{what} {}: {e}", udp::TUN_NAME);
    let tun = nl
        .link_by_name(udp::TUN_NAME)
        .map_err(|e| err("cannot look up", e))?
        .ok_or_else(|| format!("{} vanished right after it was made", udp::TUN_NAME))?;
    nl.set_mtu(tun.index, underlay_mtu.saturating_sub(udp::OVERHEAD))
        .map_err(|e| err("cannot set the MTU of", e))?;
    match nl.add_address(tun.index, own.network(), 32) {
        Err(e) if !e.is_exists() => return Err(err("cannot address", e)),
        _ => {}
    }
    nl.set_up(tun.index)
        .map_err(|e| err("cannot bring up", e))?;
    // Before subnet.env, as for the other backends; the resync keeps it.
    nl.replace_route(&udp::cluster_route(net.network, tun.index))
        .map_err(|e| err("cannot route the cluster network through", e))?;
    Ok(udp::Plane {
        peers,
        tun_index: tun.index,
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
    let health = Arc::new(Health::new(RESYNC));
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
    if let Some(v) = vtep.as_mut() {
        v.own = [lease.key.ipv4, lease.key.ipv6]
            .into_iter()
            .flatten()
            .collect();
        v.ensure_device(&mut nl, &ext)?;
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
            public_ip,
            underlay_mtu,
            health.clone(),
        )?),
        _ => None,
    };
    let mtu = match (&vtep, &udp) {
        (Some(v), _) => v.mtu,
        (None, Some(_)) => underlay_mtu.saturating_sub(udp::OVERHEAD),
        (None, None) => underlay_mtu,
    };
    subnet_env::write(
        &opts.subnet_file,
        &subnet_env::render(&config, &lease.key, mtu, opts.ip_masq),
    )
    .map_err(|e| format!("cannot write {}: {e}", opts.subnet_file.display()))?;
    health.subnet_env_written();
    let mut state = State {
        store,
        config,
        ext,
        nl,
        lease,
        attrs,
        vtep,
        udp,
        traffic,
        health,
        renew_margin,
        lease_ttl,
        first_pass: true,
        dataplane_errors: 0,
        said: Vec::new(),
        said_before: Vec::new(),
    };
    state.health.loop_started();
    while !stop.load(Ordering::Relaxed) {
        state.said_before = std::mem::take(&mut state.said);
        let renewed = state.renew();
        let pass = state.reconcile(renewed);
        state.health.record(pass);
        state.wait_for_change(RESYNC, stop);
    }
    // The data plane stays: pods keep working while the agent restarts.
    crate::info!("stopping; the data plane is left in place");
    Ok(())
}

impl State {
    /// Sleeps until the next tick, or less when the store reports a change.
    fn wait_for_change(&mut self, d: Duration, stop: &AtomicBool) {
        let end = Instant::now() + d;
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Logs an error, once while it persists from one resync to the next.
    pub fn error_once(&mut self, msg: String) {
        if self.said_before.contains(&msg) {
            crate::debug!("still: {msg}");
        } else {
            crate::error!("{msg}");
        }
        self.said.push(msg);
    }

    /// Renews the lease when it is due; `false` when that failed.
    fn renew(&mut self) -> bool {
        let Some(expires) = self.lease.expires else {
            return true;
        };
        if expires > SystemTime::now() + self.renew_margin {
            return true;
        }
        match self
            .store
            .update(&self.lease.key, &self.attrs, Some(self.lease_ttl))
        {
            Ok(()) => {
                self.lease.expires = Some(SystemTime::now() + self.lease_ttl);
                crate::info!("renewed lease {}", self.lease.key);
                true
            }
            Err(e) => {
                self.health
                    .metrics
                    .store_errors
                    .fetch_add(1, Ordering::Relaxed);
                self.error_once(format!(
                    "cannot renew lease {} (tried again every resync): {e}",
                    self.lease.key
                ));
                false
            }
        }
    }
}
