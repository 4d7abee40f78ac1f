//! Keeping the kernel equal to the store: each resync lists the leases,
//! works out what the data plane should hold, adds what is missing (a
//! repair, counted), removes what belongs to peers that left, and leaves
//! everything as is when the store cannot be read. It also restores the
//! masquerade and forward rules (see `traffic`). Every backend goes through
//! the same route repair (`routes` decides which routes are ours).
//!
//! A failed kernel read or change is logged as an error (once while it
//! persists), counted in `flannel_dataplane_errors_total`, and makes the
//! pass a failure for `/readyz` and `/healthz` (see `health`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use ipnetwork::IpNetwork;
use netkit::neigh::Entry;
use netkit::route::Route;

use crate::agent::State;
use crate::backend::{hostgw, udp};
use crate::health::Pass;
use crate::lease::Lease;
use crate::routes::{self, Change};

impl State {
    fn in_cluster(&self, dst: IpAddr) -> bool {
        [&self.config.ipv4, &self.config.ipv6]
            .into_iter()
            .flatten()
            .any(|f| f.network.contains(dst))
    }

    /// The cluster networks and their node subnet lengths.
    fn networks(&self) -> Vec<(IpNetwork, u8)> {
        [&self.config.ipv4, &self.config.ipv6]
            .into_iter()
            .flatten()
            .map(|f| (f.network, f.subnet_len))
            .collect()
    }

    fn repaired(&self) {
        self.health.metrics.repairs.fetch_add(1, Ordering::Relaxed);
    }

    /// A kernel read or change failed: logged and counted; this pass fails.
    /// The same failure in the pass before was logged already.
    fn failed(&mut self, msg: String) {
        self.error_once(msg);
        self.dataplane_errors += 1;
        self.health
            .metrics
            .dataplane_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    fn store_failed(&mut self, msg: String) {
        self.error_once(msg);
        self.health
            .metrics
            .store_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// One resync. `renewed`: the lease renewal before it did not fail.
    pub fn reconcile(&mut self, renewed: bool) -> Pass {
        self.dataplane_errors = 0;
        // The rules depend on the config and our lease only: kept whatever the store says.
        self.sync_traffic();
        let leases = match self.store.leases() {
            Ok(l) => l,
            Err(e) => {
                // The store being away is no reason for pods to lose each other.
                self.store_failed(format!("cannot read leases (data plane kept as is): {e}"));
                return Pass {
                    store_ok: false,
                    dataplane_errors: self.dataplane_errors,
                };
            }
        };
        let store_ok = self.check_own_lease(&leases) && renewed;
        let metrics = &self.health.metrics;
        metrics.leases.store(leases.len() as u64, Ordering::Relaxed);
        let peers: Vec<&Lease> = leases.iter().filter(|l| l.key != self.lease.key).collect();
        metrics.peers.store(peers.len() as u64, Ordering::Relaxed);
        if let Some((routes, dev)) = self.sync_devices(&peers) {
            // Leftovers of an earlier version: on the first pass that gets here.
            let first = std::mem::replace(&mut self.first_pass, false);
            self.sync_routes(&routes, dev, first);
        }
        crate::debug!(
            "resync: {} peers, {} errors",
            peers.len(),
            self.dataplane_errors
        );
        Pass {
            store_ok,
            dataplane_errors: self.dataplane_errors,
        }
    }

    /// Our lease is in the store and names us; re-created when it is gone.
    /// `false` when the store does not hold it as ours after this.
    fn check_own_lease(&mut self, leases: &[Lease]) -> bool {
        match leases.iter().find(|l| l.key == self.lease.key) {
            Some(l)
                if l.attrs.public_ip == self.attrs.public_ip
                    && l.attrs.public_ipv6 == self.attrs.public_ipv6 =>
            {
                true
            }
            Some(l) => {
                let msg = format!(
                    "lease {} now names another node (PublicIP {:?}, PublicIPv6 {:?}): pods of both would clash; restart this agent to get another subnet",
                    self.lease.key, l.attrs.public_ip, l.attrs.public_ipv6
                );
                self.error_once(msg);
                false
            }
            None => {
                crate::warn!(
                    "lease {} is gone from the store; re-creating it",
                    self.lease.key
                );
                match self
                    .store
                    .create(&self.lease.key, &self.attrs, Some(self.lease_ttl))
                {
                    Ok(true) => {
                        self.lease.expires = Some(std::time::SystemTime::now() + self.lease_ttl);
                        crate::info!("lease {} re-created", self.lease.key);
                        true
                    }
                    Ok(false) => {
                        self.error_once(format!(
                            "cannot re-create lease {}: another node took it meanwhile",
                            self.lease.key
                        ));
                        false
                    }
                    Err(e) => {
                        self.store_failed(format!(
                            "cannot re-create lease {} (tried again next resync): {e}",
                            self.lease.key
                        ));
                        false
                    }
                }
            }
        }
    }

    /// Brings the backend's devices and per-peer state in line; returns the
    /// routes wanted and the vxlan device, or `None` when the device is
    /// missing and cannot be made (nothing else can be done this pass).
    fn sync_devices(&mut self, peers: &[&Lease]) -> Option<(Vec<Route>, Option<u32>)> {
        if let Some(u) = &self.udp {
            let port = self.config.backend.port;
            let entries = peers
                .iter()
                .filter_map(|p| {
                    Some((
                        p.key.ipv4?,
                        SocketAddr::new(p.attrs.public_ip?.into(), port),
                    ))
                })
                .collect();
            let cluster = self.config.ipv4.as_ref().map(|f| f.network);
            let routes = cluster
                .map(|net| udp::cluster_route(net, u.tun_index))
                .into_iter()
                .collect();
            // Written only when it changed: the forwarding threads read it
            // for every packet, and a write makes them wait.
            let unchanged = u.peers.read().is_ok_and(|t| *t == entries);
            let poisoned = !unchanged
                && match u.peers.write() {
                    Ok(mut t) => {
                        *t = entries;
                        false
                    }
                    Err(_) => true,
                };
            // Only a forwarding thread that panicked poisons it.
            if poisoned {
                self.failed("udp: the peer table is poisoned".into());
            }
            return Some((routes, None));
        }
        let Some(v) = &self.vtep else {
            let routes = peers
                .iter()
                .flat_map(|p| hostgw::routes(&self.ext, p))
                .collect();
            return Some((routes, None));
        };
        let index = match v.ensure_device(&mut self.nl, &self.ext) {
            Ok(index) => index,
            Err(e) => {
                self.failed(format!("cannot restore the vxlan device: {e}"));
                return None;
            }
        };
        let (mut routes, mut neigh, mut fdb) = (Vec::new(), Vec::new(), Vec::new());
        for p in peers {
            let (n, f, r) = v.desired(index, &self.ext, p);
            neigh.extend(n);
            fdb.extend(f);
            routes.extend(r);
        }
        self.sync_entries(index, &neigh, &fdb);
        Some((routes, Some(index)))
    }

    /// Masquerade and forward rules: restored when someone removed them.
    fn sync_traffic(&mut self) {
        match self.traffic.ensure(&self.config, &self.lease.key) {
            Ok(done) => {
                for d in done {
                    self.repaired();
                    crate::info!("nftables: repaired: {d}");
                }
            }
            Err(e) => self.failed(e.to_string()),
        }
    }

    /// Neighbour and forwarding entries on the vxlan device (all of it is
    /// ours). A dump that fails skips that kind of entry for this pass:
    /// an empty list would look like everything missing.
    fn sync_entries(&mut self, dev: u32, neigh: &[Entry], fdb: &[Entry]) {
        match self.nl.neighbours(dev) {
            Ok(have) => self.sync_neighbours(&have, neigh),
            Err(e) => self.failed(format!(
                "cannot list the neighbours of the vxlan device: {e}"
            )),
        }
        match self.nl.fdb(dev) {
            Ok(have) => self.sync_fdb(&have, fdb),
            Err(e) => self.failed(format!(
                "cannot list the forwarding entries of the vxlan device: {e}"
            )),
        }
    }

    fn sync_neighbours(&mut self, have: &[Entry], want: &[Entry]) {
        for e in want.iter().filter(|e| !have.contains(e)) {
            match self.nl.set_neighbour(e) {
                Ok(()) => self.repaired(),
                Err(err) => self.failed(format!(
                    "cannot set neighbour {} on the vxlan device: {err}",
                    e.ip
                )),
            }
        }
        let stale: Vec<&Entry> = have
            .iter()
            .filter(|e| self.in_cluster(e.ip) && !want.iter().any(|n| n.ip == e.ip))
            .collect();
        for e in stale {
            match self.nl.del_neighbour(e) {
                Ok(()) => crate::info!("neighbour {} of a departed peer removed", e.ip),
                Err(err) if err.is_not_found() => {}
                Err(err) => {
                    self.failed(format!("cannot remove the stale neighbour {}: {err}", e.ip))
                }
            }
        }
    }

    fn sync_fdb(&mut self, have: &[Entry], want: &[Entry]) {
        for e in want.iter().filter(|e| !have.contains(e)) {
            match self.nl.set_fdb(e) {
                Ok(()) => self.repaired(),
                Err(err) => self.failed(format!("cannot set the fdb entry for {}: {err}", e.ip)),
            }
        }
        // Only unicast entries, as we make them (a peer's VTEP MAC).
        for e in have
            .iter()
            .filter(|e| e.mac.len() == 6 && e.mac[0] & 1 == 0 && !want.contains(e))
        {
            match self.nl.del_fdb(e) {
                Ok(()) => crate::info!("fdb entry for {} of a departed peer removed", e.ip),
                Err(err) if err.is_not_found() => {}
                Err(err) => self.failed(format!(
                    "cannot remove the stale fdb entry for {}: {err}",
                    e.ip
                )),
            }
        }
    }

    /// Routes: `desired` made ours, ours that nothing wants removed. On the
    /// `first` pass, an earlier version's leftovers are dealt with too.
    fn sync_routes(&mut self, desired: &[Route], dev: Option<u32>, first: bool) {
        let networks = self.networks();
        let ext = self.ext.index;
        for v4 in [true, false] {
            // The kernel sends the main table only (the agent writes
            // nowhere else), not the local table and the others as well.
            let main = netkit::route::RouteFilter {
                table: Some(routes::MAIN_TABLE),
                ..Default::default()
            };
            let current = match self.nl.routes_filtered(v4, &main) {
                Ok(r) => r,
                Err(e) => {
                    self.failed(format!("cannot list routes: {e}"));
                    continue;
                }
            };
            let want: Vec<Route> = desired
                .iter()
                .filter(|r| r.dst.is_ipv4() == v4)
                .cloned()
                .collect();
            let is_legacy = |r: &Route| dev.is_some_and(|d| routes::legacy_vxlan(r, d, &networks));
            let legacy: Option<&dyn Fn(&Route) -> bool> = first.then_some(&is_legacy);
            if first {
                let oifs = [Some(ext), dev];
                for r in routes::suspects(&current, &want, &oifs, |ip| self.in_cluster(ip))
                    .into_iter()
                    .filter(|r| !is_legacy(r))
                {
                    crate::warn!(
                        "route {} is in the cluster network but was not made by this flanneld: left alone (delete it by hand if an earlier version left it)",
                        routes::describe(r)
                    );
                }
            }
            for change in routes::plan(&current, &want, legacy) {
                self.apply(change, ext);
            }
        }
    }

    fn apply(&mut self, change: Change, ext: u32) {
        match change {
            Change::Add { want, over } => match self.nl.replace_route(&want) {
                Ok(()) => {
                    self.repaired();
                    match over {
                        Some(o) if routes::same(&o, &want) => crate::info!(
                            "route {} adopted (it was made as proto {:?}, by an earlier version)",
                            routes::describe(&want),
                            o.protocol
                        ),
                        Some(o) => crate::warn!(
                            "route {} replaced {}, which flanneld did not make",
                            routes::describe(&want),
                            routes::describe(&o)
                        ),
                        None => crate::info!("route {} programmed", routes::describe(&want)),
                    }
                }
                Err(e) => {
                    let hint = if want.oif == Some(ext) && want.gateway.is_some() {
                        " (host-gw needs every peer on this host's L2 segment)"
                    } else {
                        ""
                    };
                    self.failed(format!(
                        "cannot route {}: {e}{hint}",
                        routes::describe(&want)
                    ));
                }
            },
            Change::Remove(r) => match self.nl.del_route(&r) {
                Ok(()) => crate::info!("route {} of a departed peer removed", routes::describe(&r)),
                Err(e) if e.is_not_found() => {}
                Err(e) => self.failed(format!("cannot remove route {}: {e}", routes::describe(&r))),
            },
            Change::RemoveLegacy(r) => match self.nl.del_route(&r) {
                Ok(()) => crate::info!(
                    "route {} left by an earlier version for a departed peer removed",
                    routes::describe(&r)
                ),
                Err(e) if e.is_not_found() => {}
                Err(e) => self.failed(format!("cannot remove route {}: {e}", routes::describe(&r))),
            },
        }
    }
}
