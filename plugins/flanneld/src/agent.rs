//! The agent: lease this node's subnet, write subnet.env, then keep the data
//! plane equal to the store's leases, repairing what goes missing. A store
//! that cannot be reached never tears down what is programmed.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ipnetwork::IpNetwork;
use netkit::Netlink;
use netkit::route::Route;

use crate::alloc::{self, LEASE_TTL};
use crate::backend::hostgw;
use crate::flags::Options;
use crate::health::{self, Metrics};
use crate::iface::{self, ExtIface};
use crate::lease::{Lease, LeaseAttrs};
use crate::netconfig::{BackendType, NetConfig};
use crate::store::Store;
use crate::store::file::FileStore;
use crate::subnet_env;

/// How often the data plane is compared with the store (and repaired).
const RESYNC: Duration = Duration::from_secs(1);

fn log(msg: impl AsRef<str>) {
    eprintln!("flanneld: {}", msg.as_ref());
}

fn open_store(opts: &Options) -> Result<Box<dyn Store>, String> {
    match &opts.store_dir {
        Some(dir) => Ok(Box::new(FileStore::open(dir).map_err(|e| e.to_string())?)),
        None => Err(format!(
            "the etcd store ({}) is not built yet: run with --store-dir DIR for the embedded store",
            opts.etcd_endpoints.join(",")
        )),
    }
}

/// Sleeps up to `d`, waking early when asked to stop.
fn pause(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct State {
    store: Box<dyn Store>,
    config: NetConfig,
    ext: ExtIface,
    nl: Netlink,
    lease: Lease,
    attrs: LeaseAttrs,
    metrics: Arc<Metrics>,
    renew_margin: Duration,
}

pub fn run(opts: &Options, stop: &AtomicBool) -> Result<(), String> {
    let mut store = open_store(opts)?;
    let config = loop {
        match store.network_config() {
            Ok(text) => break NetConfig::parse(&text)?,
            Err(e) => {
                log(format!("waiting for the network config: {e}"));
                pause(Duration::from_secs(1), stop);
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
        }
    };
    if config.backend.kind != BackendType::HostGw {
        return Err(format!(
            "backend {} is not built yet: use {{\"Backend\":{{\"Type\":\"host-gw\"}}}}",
            config.backend.kind.as_str()
        ));
    }
    let mut nl = Netlink::new().map_err(|e| format!("cannot open netlink: {e}"))?;
    let ext = iface::choose(&mut nl, opts)?;
    let public_ip = if config.ipv4.is_some() {
        opts.public_ip.or(ext.ipv4)
    } else {
        None
    };
    let public_ipv6 = if config.ipv6.is_some() {
        opts.public_ipv6.or(ext.ipv6)
    } else {
        None
    };
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
    if public_ip.is_some() && ext.ipv4.is_some() && public_ip != ext.ipv4 {
        return Err(format!(
            "host-gw needs the public IP to be the interface's address ({} has {:?}, --public-ip is {:?}): probably you are behind NAT",
            ext.name, ext.ipv4, public_ip
        ));
    }
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6,
        backend_type: config.backend.kind.as_str().into(),
        backend_data: None,
        backend_v6_data: None,
    };
    let previous = subnet_env::previous(&opts.subnet_file);
    let lease =
        alloc::acquire(store.as_mut(), &config, &attrs, previous).map_err(|e| e.to_string())?;
    log(format!(
        "acquired lease {} on {} ({})",
        lease.key,
        ext.name,
        public_ip.map_or(String::new(), |i| i.to_string())
    ));
    let mtu = if config.backend.mtu > 0 {
        config.backend.mtu
    } else {
        ext.mtu
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
        metrics,
        renew_margin: Duration::from_secs(opts.renew_margin_minutes * 60),
    };
    while !stop.load(Ordering::Relaxed) {
        state.renew();
        state.reconcile();
        pause(RESYNC, stop);
    }
    // The data plane stays: pods keep working while the agent restarts.
    log("stopping; routes are left in place");
    Ok(())
}

impl State {
    fn renew(&mut self) {
        let Some(expires) = self.lease.expires else {
            return;
        };
        if expires > SystemTime::now() + self.renew_margin {
            return;
        }
        match self
            .store
            .update(&self.lease.key, &self.attrs, Some(LEASE_TTL))
        {
            Ok(()) => self.lease.expires = Some(SystemTime::now() + LEASE_TTL),
            Err(e) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                log(format!("cannot renew lease {}: {e}", self.lease.key));
            }
        }
    }

    fn in_cluster(&self, dst: IpAddr) -> bool {
        [&self.config.ipv4, &self.config.ipv6]
            .into_iter()
            .flatten()
            .any(|f| f.network.contains(dst))
    }

    fn own(&self, dst: IpAddr) -> bool {
        [self.lease.key.ipv4, self.lease.key.ipv6]
            .into_iter()
            .flatten()
            .any(|n: IpNetwork| n.network() == dst)
    }

    fn reconcile(&mut self) {
        let leases = match self.store.leases() {
            Ok(l) => l,
            Err(e) => {
                // Keep what is programmed: the store being away is no reason
                // for pods to lose each other.
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                log(format!("cannot read leases (data plane kept as is): {e}"));
                return;
            }
        };
        self.metrics
            .leases
            .store(leases.len() as u64, Ordering::Relaxed);
        if !leases.iter().any(|l| l.key == self.lease.key) {
            // Our lease vanished (deleted or expired while away): take it back.
            log(format!(
                "lease {} is gone from the store; re-creating it",
                self.lease.key
            ));
            let _ = self
                .store
                .create(&self.lease.key, &self.attrs, Some(LEASE_TTL));
        }
        let peers: Vec<&Lease> = leases.iter().filter(|l| l.key != self.lease.key).collect();
        self.metrics
            .peers
            .store(peers.len() as u64, Ordering::Relaxed);
        let desired: Vec<Route> = peers
            .iter()
            .flat_map(|p| hostgw::routes(&self.ext, p))
            .collect();
        for v4 in [true, false] {
            let current = match self.nl.routes(v4) {
                Ok(r) => r,
                Err(e) => {
                    log(format!("cannot list routes: {e}"));
                    continue;
                }
            };
            let ours: Vec<&netkit::route::Route> = current
                .iter()
                .filter(|r| {
                    r.table == Some(254)
                        && r.gateway.is_some()
                        && self.in_cluster(r.dst)
                        && !self.own(r.dst)
                })
                .collect();
            for want in desired.iter().filter(|r| r.dst.is_ipv4() == v4) {
                let present = ours.iter().any(|r| {
                    r.dst == want.dst
                        && r.prefix == want.prefix
                        && r.gateway == want.gateway
                        && r.oif == want.oif
                });
                if present {
                    continue;
                }
                match self.nl.replace_route(want) {
                    Ok(()) => {
                        self.metrics.repairs.fetch_add(1, Ordering::Relaxed);
                        log(format!(
                            "route {}/{} via {:?} programmed",
                            want.dst, want.prefix, want.gateway
                        ));
                    }
                    Err(e) => log(format!(
                        "cannot route {}/{} via {:?}: {e} (host-gw needs every peer on this host's L2 segment)",
                        want.dst, want.prefix, want.gateway
                    )),
                }
            }
            for stale in ours.iter().filter(|r| {
                !desired
                    .iter()
                    .any(|d| d.dst == r.dst && d.prefix == r.prefix)
            }) {
                match self.nl.del_route(stale) {
                    Ok(()) => log(format!(
                        "route {}/{} of a departed peer removed",
                        stale.dst, stale.prefix
                    )),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => log(format!(
                        "cannot remove route {}/{}: {e}",
                        stale.dst, stale.prefix
                    )),
                }
            }
        }
    }
}
