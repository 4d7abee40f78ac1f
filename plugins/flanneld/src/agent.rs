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
use crate::health::{self, Metrics};
use crate::iface::{self, ExtIface};
use crate::lease::{Lease, LeaseAttrs};
use crate::netconfig::{BackendType, NetConfig};
use crate::store::Store;
use crate::store::etcd::EtcdStore;
use crate::store::file::FileStore;
use crate::subnet_env;
use crate::traffic::Traffic;

/// How often the data plane is compared with the store (and repaired).
const RESYNC: Duration = Duration::from_secs(1);

pub fn log(msg: impl AsRef<str>) {
    eprintln!("flanneld: {}", msg.as_ref());
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
            Err(e) => log(format!("waiting for etcd: {e}")),
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
    /// The udp backend's peer table, shared with its forwarding threads.
    pub udp: Option<udp::Peers>,
    /// Masquerade and forward rules (nftables).
    pub traffic: Traffic,
    pub metrics: Arc<Metrics>,
    renew_margin: Duration,
    pub lease_ttl: Duration,
}

fn wait_for_config(store: &mut dyn Store, stop: &AtomicBool) -> Result<Option<NetConfig>, String> {
    loop {
        match store.network_config() {
            Ok(text) => return NetConfig::parse(&text).map(Some),
            Err(e) => {
                log(format!("waiting for the network config: {e}"));
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
) -> Result<udp::Peers, String> {
    let (Some(local), Some(net), Some(own)) = (public_ip, config.ipv4.as_ref(), lease.key.ipv4)
    else {
        return Err("the udp backend carries IPv4 only: set Network".into());
    };
    let peers = udp::Peers::default();
    udp::start(local, config.backend.port, peers.clone())?;
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
    let mut route = netkit::route::Route::new(net.network.network(), net.network.prefix());
    route.oif = Some(tun.index);
    nl.replace_route(&route)
        .map_err(|e| err("cannot route the cluster network through", e))?;
    Ok(peers)
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
    log(format!(
        "acquired lease {} on {} via {:?}",
        lease.key, ext.name, local
    ));
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
                log(format!("nftables: {d}"));
            }
        }
        // Upstream stops when it cannot masquerade, and only logs forward rules.
        Err(e) if opts.ip_masq => return Err(e.to_string()),
        Err(e) => log(format!("{e} (tried again every resync)")),
    }
    let udp = match config.backend.kind {
        BackendType::Udp => Some(start_udp(
            &mut nl,
            &config,
            &lease,
            public_ip,
            underlay_mtu,
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
    let metrics = Arc::new(Metrics::default());
    metrics.ready.store(true, Ordering::Relaxed);
    if opts.healthz_port > 0 {
        let addr = format!("{}:{}", opts.healthz_ip, opts.healthz_port);
        health::serve(&addr, metrics.clone())
            .map_err(|e| format!("cannot serve health on {addr}: {e}"))?;
    }
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
        metrics,
        renew_margin,
        lease_ttl,
    };
    while !stop.load(Ordering::Relaxed) {
        state.renew();
        state.reconcile();
        state.wait_for_change(RESYNC, stop);
    }
    // The data plane stays: pods keep working while the agent restarts.
    log("stopping; the data plane is left in place");
    Ok(())
}

impl State {
    /// Sleeps until the next tick, or less when the store reports a change.
    fn wait_for_change(&mut self, d: Duration, stop: &AtomicBool) {
        let end = Instant::now() + d;
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
            if self.store.changed() {
                return;
            }
        }
    }

    fn renew(&mut self) {
        let Some(expires) = self.lease.expires else {
            return;
        };
        if expires > SystemTime::now() + self.renew_margin {
            return;
        }
        match self
            .store
            .update(&self.lease.key, &self.attrs, Some(self.lease_ttl))
        {
            Ok(()) => {
                self.lease.expires = Some(SystemTime::now() + self.lease_ttl);
                log(format!("renewed lease {}", self.lease.key));
            }
            Err(e) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                log(format!("cannot renew lease {}: {e}", self.lease.key));
            }
        }
    }
}
