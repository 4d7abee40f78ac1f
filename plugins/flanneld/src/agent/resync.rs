//! The full comparison, a safety net: the kernel's routes, neighbours and
//! fdb entries are read and compared (`diff`, as every other path) with
//! what the backend wants for every peer: what is missing is added (a
//! repair, counted), ours that nothing wants is removed. Changes are
//! applied as events report them (`follow`, `repair`); this runs once
//! after the first listing (leftovers of peers that left while the agent
//! was down), rarely after that (`--full-resync-period`, jittered), after
//! lost kernel notifications, and with backoff after a kernel change
//! failed.
//!
//! A failed kernel read or change is logged as an error (once while it
//! persists), counted in `flannel_dataplane_errors_total`, and makes
//! `/readyz` fail until a full comparison succeeds (see `health`).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ipnetwork::IpNetwork;
use netkit::route::{Route, RouteFilter};

use super::kernel::Why;
use super::own::{FIRST_RETRY, MAX_RETRY};
use super::{Agent, give_back_memory, names};
use crate::diff::{self, Set};
use crate::routes;

impl Agent {
    fn in_cluster(&self, dst: IpAddr) -> bool {
        self.config.families().any(|f| f.network.contains(dst))
    }

    /// The cluster networks and their node subnet lengths.
    fn networks(&self) -> Vec<(IpNetwork, u8)> {
        self.config
            .families()
            .map(|f| (f.network, f.subnet_len))
            .collect()
    }

    /// A full comparison as soon as the loop gets to it.
    pub(super) fn full_soon(&mut self) {
        self.timers.next_full = Instant::now();
    }

    /// Masquerade and forward rules: restored when someone removed them.
    pub(super) fn sync_traffic(&mut self) {
        let key = self.own.key();
        match self.traffic.ensure(&self.config, &key) {
            Ok(done) => {
                for d in done {
                    self.kernel.repaired();
                    crate::info!("nftables: repaired: {d}");
                }
            }
            Err(e) => self.kernel.failed(e.to_string()),
        }
    }

    /// One full comparison; the next is scheduled (sooner after a failure).
    pub(super) fn full_pass(&mut self) {
        let began = Instant::now();
        self.kernel.new_round();
        self.health.metrics.resyncs.fetch_add(1, Ordering::Relaxed);
        self.sync_traffic();
        match self.backend.restore(self.kernel.nl()) {
            Ok(anew) => {
                if anew {
                    self.kernel.repaired();
                    // Queued changes may name the old device.
                    self.kernel.drop_pending();
                }
                self.peers_dirty = true;
                self.compare();
            }
            Err(e) => self
                .kernel
                .failed(format!("cannot restore the backend's device: {e}")),
        }
        self.flush();
        crate::debug!(
            "full comparison: {} peers, {} errors",
            self.peers.len(),
            self.kernel.errors()
        );
        // The dumps and plans of thousands of peers are freed now.
        give_back_memory();
        let now = Instant::now();
        let took = u64::try_from(now.duration_since(began).as_micros()).unwrap_or(u64::MAX);
        self.health
            .metrics
            .full_resync_micros
            .store(took, Ordering::Relaxed);
        let t = &mut self.timers;
        if self.kernel.errors() > 0 {
            let backoff = t.full_backoff.unwrap_or(FIRST_RETRY);
            t.next_full = now + backoff;
            t.full_backoff = Some((backoff * 2).min(MAX_RETRY));
        } else {
            t.full_backoff = None;
            t.next_full = now + crate::store::jittered(t.full_every);
        }
    }

    /// What the kernel holds of what could be ours, against what every
    /// peer wants. A dump that fails leaves its part out on both sides
    /// (an empty dump would look like everything missing).
    fn compare(&mut self) {
        let mut want = Set::default();
        self.backend.fixed(&mut want);
        for p in self.peers.iter() {
            self.backend.wanted(p, &mut want);
        }
        let mut have = Set::default();
        for v4 in [true, false] {
            // The kernel sends the main table only (the agent writes
            // nowhere else), not the local table and the others as well.
            let main = RouteFilter {
                table: Some(routes::MAIN_TABLE),
                ..Default::default()
            };
            match self.kernel.nl().routes_filtered(v4, &main) {
                Ok(r) => have.routes.extend(r),
                Err(e) => {
                    self.kernel.failed(format!("cannot list routes: {e}"));
                    want.routes.retain(|r| r.dst.is_ipv4() != v4);
                }
            }
        }
        for dev in self.backend.entry_devices() {
            match self.kernel.nl().neighbours(dev) {
                // Ours: on our device, for an address in the cluster.
                Ok(n) => have
                    .neigh
                    .extend(n.into_iter().filter(|e| self.in_cluster(e.ip))),
                Err(e) => {
                    self.kernel
                        .failed(format!("cannot list the neighbours of a vxlan device: {e}"));
                    want.neigh.retain(|e| e.ifindex != dev);
                }
            }
            match self.kernel.nl().fdb(dev) {
                // Only unicast entries, as we make them (a peer's VTEP MAC).
                Ok(f) => have.fdb.extend(
                    f.into_iter()
                        .filter(|e| e.mac.len() == 6 && e.mac[0] & 1 == 0),
                ),
                Err(e) => {
                    self.kernel.failed(format!(
                        "cannot list the forwarding entries of a vxlan device: {e}"
                    ));
                    want.fdb.retain(|e| e.ifindex != dev);
                }
            }
        }
        if std::mem::replace(&mut self.first_pass, false) {
            self.earlier_versions(&have.routes, &want.routes);
        }
        let changes = diff::diff(&have, &want);
        self.kernel
            .queue(changes, Why::Resync, &names(&*self.backend, &self.ext));
    }

    /// At start: routes an earlier version left in the old vxlan pattern
    /// for peers that are gone are removed; other `boot` routes that look
    /// like a peer's are named, never touched.
    fn earlier_versions(&mut self, have: &[Route], want: &[Route]) {
        let networks = self.networks();
        let devices = self.backend.entry_devices();
        let is_legacy = |r: &Route| {
            devices
                .iter()
                .any(|d| routes::legacy_vxlan(r, *d, &networks))
        };
        let name = names(&*self.backend, &self.ext);
        let mut oifs: Vec<Option<u32>> = devices.iter().copied().map(Some).collect();
        oifs.push(Some(self.ext.index));
        for r in routes::suspects(have, want, &oifs, |ip| self.in_cluster(ip))
            .into_iter()
            .filter(|r| !is_legacy(r))
        {
            crate::warn!(
                "route {} is in the cluster network but was not made by this flanneld: left alone (delete it by hand if an earlier version left it)",
                routes::describe(r, &name)
            );
        }
        let old: Vec<Route> = routes::legacy(have, want, is_legacy)
            .into_iter()
            .cloned()
            .collect();
        let changes = old
            .into_iter()
            .map(|r| {
                crate::info!(
                    "route {} left by an earlier version for a departed peer removed",
                    routes::describe(&r, &name)
                );
                diff::Change::Remove(diff::Item::Route(r))
            })
            .collect();
        drop(name);
        self.kernel
            .queue(changes, Why::Peer, &names(&*self.backend, &self.ext));
    }
}
