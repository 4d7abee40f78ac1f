//! Keeping the kernel equal to the store: each resync lists the leases and
//! adds what is missing (a repair, counted), removes what belongs to peers
//! that left, and leaves everything as is when the store cannot be read.
//! It also restores the masquerade and forward rules (see `traffic`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use ipnetwork::IpNetwork;
use netkit::neigh::Entry;
use netkit::route::Route;

use crate::agent::{State, log};
use crate::backend::hostgw;
use crate::lease::Lease;

impl State {
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

    fn repaired(&self) {
        self.metrics.repairs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reconcile(&mut self) {
        // The rules depend on the config and our lease only: kept whatever the store says.
        self.sync_traffic();
        let leases = match self.store.leases() {
            Ok(l) => l,
            Err(e) => {
                // The store being away is no reason for pods to lose each other.
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                log(format!("cannot read leases (data plane kept as is): {e}"));
                return;
            }
        };
        self.metrics
            .leases
            .store(leases.len() as u64, Ordering::Relaxed);
        if !leases.iter().any(|l| l.key == self.lease.key) {
            log(format!(
                "lease {} is gone from the store; re-creating it",
                self.lease.key
            ));
            let _ = self
                .store
                .create(&self.lease.key, &self.attrs, Some(self.lease_ttl));
        }
        let peers: Vec<&Lease> = leases.iter().filter(|l| l.key != self.lease.key).collect();
        self.metrics
            .peers
            .store(peers.len() as u64, Ordering::Relaxed);

        if let Some(table) = &self.udp {
            let port = if self.config.backend.port == 0 {
                8285
            } else {
                self.config.backend.port
            };
            let entries = peers
                .iter()
                .filter_map(|p| {
                    Some((
                        p.key.ipv4?,
                        SocketAddr::new(p.attrs.public_ip?.into(), port),
                    ))
                })
                .collect();
            if let Ok(mut t) = table.write() {
                *t = entries;
            }
            return;
        }
        let (mut routes, mut neigh, mut fdb) = (Vec::new(), Vec::new(), Vec::new());
        let mut dev = None;
        match &self.vtep {
            None => {
                routes = peers
                    .iter()
                    .flat_map(|p| hostgw::routes(&self.ext, p))
                    .collect()
            }
            Some(v) => match v.ensure_device(&mut self.nl, &self.ext) {
                Ok(index) => {
                    dev = Some(index);
                    for p in &peers {
                        let (n, f, r) = v.desired(index, &self.ext, p);
                        neigh.extend(n);
                        fdb.extend(f);
                        routes.extend(r);
                    }
                }
                Err(e) => {
                    log(format!("cannot restore the vxlan device: {e}"));
                    return;
                }
            },
        }
        if let Some(index) = dev {
            self.sync_entries(index, &neigh, &fdb);
        }
        self.sync_routes(&routes, dev);
    }

    /// Masquerade and forward rules: restored when someone removed them.
    fn sync_traffic(&mut self) {
        match self.traffic.ensure(&self.config, &self.lease.key) {
            Ok(done) => {
                for d in done {
                    self.repaired();
                    log(format!("nftables: repaired: {d}"));
                }
            }
            Err(e) => log(e.to_string()),
        }
    }

    /// Neighbour and forwarding entries on the vxlan device.
    fn sync_entries(&mut self, dev: u32, neigh: &[Entry], fdb: &[Entry]) {
        let have_n = self.nl.neighbours(dev).unwrap_or_default();
        let have_f = self.nl.fdb(dev).unwrap_or_default();
        for e in neigh.iter().filter(|e| !have_n.contains(e)) {
            match self.nl.set_neighbour(e) {
                Ok(()) => self.repaired(),
                Err(err) => log(format!(
                    "cannot set neighbour {} on the vxlan device: {err}",
                    e.ip
                )),
            }
        }
        for e in fdb.iter().filter(|e| !have_f.contains(e)) {
            match self.nl.set_fdb(e) {
                Ok(()) => self.repaired(),
                Err(err) => log(format!("cannot set the fdb entry for {}: {err}", e.ip)),
            }
        }
        let stale_n: Vec<&Entry> = have_n
            .iter()
            .filter(|e| self.in_cluster(e.ip) && !neigh.iter().any(|n| n.ip == e.ip))
            .collect();
        for e in stale_n {
            let _ = self.nl.del_neighbour(e);
        }
        // Only unicast entries, as we make them (a peer's VTEP MAC).
        for e in have_f
            .iter()
            .filter(|e| e.mac.len() == 6 && e.mac[0] & 1 == 0 && !fdb.contains(e))
        {
            let _ = self.nl.del_fdb(e);
        }
    }

    fn sync_routes(&mut self, desired: &[Route], dev: Option<u32>) {
        for v4 in [true, false] {
            let current = match self.nl.routes(v4) {
                Ok(r) => r,
                Err(e) => {
                    log(format!("cannot list routes: {e}"));
                    continue;
                }
            };
            let ext = self.ext.index;
            let ours: Vec<&Route> = current
                .iter()
                .filter(|r| {
                    r.table == Some(254)
                        && r.gateway.is_some()
                        && self.in_cluster(r.dst)
                        && !self.own(r.dst)
                        && (r.oif == Some(ext) || (dev.is_some() && r.oif == dev))
                })
                .collect();
            let same = |a: &Route, b: &Route| {
                a.dst == b.dst && a.prefix == b.prefix && a.gateway == b.gateway && a.oif == b.oif
            };
            for want in desired.iter().filter(|r| r.dst.is_ipv4() == v4) {
                if ours.iter().any(|r| same(r, want)) {
                    continue;
                }
                match self.nl.replace_route(want) {
                    Ok(()) => {
                        self.repaired();
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
            for stale in ours.iter().filter(|r| !desired.iter().any(|d| same(d, r))) {
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
