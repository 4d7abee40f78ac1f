//! The full comparison, a safety net: the kernel's routes, neighbours and
//! fdb entries are read and made equal to what the peer table wants (what
//! is missing added, a repair, counted; ours that nothing wants removed).
//! Changes are applied as events report them (`follow`, `repair`); this
//! runs once after the first listing (leftovers of peers that left while
//! the agent was down), rarely after that (`--full-resync-period`,
//! jittered), after lost kernel notifications, and with backoff after a
//! kernel change failed. Every backend goes through the same route repair
//! (`routes` decides which routes are ours).
//!
//! A failed kernel read or change is logged as an error (once while it
//! persists), counted in `flannel_dataplane_errors_total`, and makes
//! `/readyz` fail until a full comparison succeeds (see `health`).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ipnetwork::IpNetwork;
use netkit::batch::Op;
use netkit::neigh::Entry;
use netkit::route::Route;

use crate::agent::State;
use crate::backend::udp;
use crate::follow::reach;
use crate::own::{FIRST_RETRY, MAX_RETRY};
use crate::plan::{self, Wanted};
use crate::routes::{self, Change};

impl State {
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

    pub(crate) fn repaired(&self) {
        self.health.metrics.repairs.fetch_add(1, Ordering::Relaxed);
    }

    /// A kernel read or change failed: logged and counted; this pass fails.
    /// The same failure in the pass before was logged already.
    pub fn failed(&mut self, msg: String) {
        self.error_once(msg);
        self.dataplane_errors += 1;
        self.health
            .metrics
            .dataplane_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A full comparison as soon as the loop gets to it.
    pub fn full_soon(&mut self) {
        self.next_full = Instant::now();
    }

    /// Sends the queued kernel changes in one batch; failures are logged
    /// and counted, and a full comparison follows (with backoff).
    pub fn flush(&mut self) {
        if self.udp_dirty {
            self.udp_dirty = false;
            self.sync_udp_peers();
        }
        if self.pending.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.pending);
        let results = match self.nl.apply(&ops) {
            Ok(r) => r,
            Err(e) => {
                self.failed(format!("cannot send {} kernel changes: {e}", ops.len()));
                self.full_soon();
                return;
            }
        };
        let mut failed = 0;
        for (op, r) in ops.iter().zip(results) {
            match r {
                Ok(()) => {}
                Err(e) if plan::is_removal(op) && e.is_not_found() => {}
                Err(e) => {
                    failed += 1;
                    let hint = match op {
                        Op::ReplaceRoute(r) if r.oif == Some(self.ext.index) => {
                            " (host-gw needs every peer on this host's L2 segment)"
                        }
                        _ => "",
                    };
                    self.failed(format!("cannot apply {}: {e}{hint}", plan::describe(op)));
                }
            }
        }
        if failed > 0 && self.full_backoff.is_none() {
            self.full_backoff = Some(FIRST_RETRY);
            self.next_full = Instant::now() + FIRST_RETRY;
        }
    }

    /// One full comparison; the next is scheduled (sooner after a failure).
    pub fn full_pass(&mut self) {
        let began = Instant::now();
        self.said_before = std::mem::take(&mut self.said);
        self.dataplane_errors = 0;
        self.health.metrics.resyncs.fetch_add(1, Ordering::Relaxed);
        self.sync_traffic();
        if let Some((routes, dev)) = self.sync_devices() {
            // Leftovers of an earlier version: on the first pass that gets here.
            let first = std::mem::replace(&mut self.first_pass, false);
            self.sync_routes(&routes, dev, first);
        }
        self.flush();
        crate::debug!(
            "full comparison: {} peers, {} errors",
            self.peers.len(),
            self.dataplane_errors
        );
        // The dumps and plans of thousands of peers are freed now.
        crate::agent::give_back_memory();
        let now = Instant::now();
        let took = u64::try_from(now.duration_since(began).as_micros()).unwrap_or(u64::MAX);
        self.health
            .metrics
            .full_resync_micros
            .store(took, Ordering::Relaxed);
        if self.dataplane_errors > 0 {
            let backoff = self.full_backoff.unwrap_or(FIRST_RETRY);
            self.next_full = now + backoff;
            self.full_backoff = Some((backoff * 2).min(MAX_RETRY));
        } else {
            self.full_backoff = None;
            self.next_full = now + crate::store::jittered(self.full_every);
        }
    }

    /// The vxlan device as configured (made again if need be): its index
    /// and whether it had to change; `None` when it cannot be made (the
    /// failure is logged and counted).
    pub(crate) fn ensure_vxlan(&mut self) -> Option<(u32, bool)> {
        let v = self.vtep.as_ref()?;
        match v.ensure_device(&mut self.nl, &self.ext) {
            Ok((index, changed)) => {
                self.dev = Some(index);
                Some((index, changed))
            }
            Err(e) => {
                self.dev = None;
                self.failed(format!("cannot restore the vxlan device: {e}"));
                None
            }
        }
    }

    /// What every peer needs on the vxlan device or via the underlay
    /// (`None` when nothing can be reached: no device).
    pub(crate) fn all_wanted(&self) -> Option<Wanted> {
        let reach = reach(&self.vtep, self.dev, &self.ext, false)?;
        let mut all = Wanted::default();
        for p in self.peers.iter() {
            plan::wanted(&reach, p, &mut all);
        }
        Some(all)
    }

    /// The udp forwarders' peer table, from the peer table.
    fn sync_udp_peers(&mut self) {
        let Some(u) = &self.udp else {
            return;
        };
        let entries: Vec<udp::Entry> = self
            .peers
            .iter()
            .map(|p| udp::Entry {
                subnet4: p.key.ipv4,
                subnet6: p.key.ipv6,
                public4: p.public_ip,
                public6: p.public_ipv6,
            })
            .collect();
        // Only a forwarding thread that panicked poisons it.
        if !u.peers.set(entries) {
            self.failed("udp: the peer table is poisoned".into());
        }
    }

    /// Brings the backend's devices and per-peer state in line; returns the
    /// routes wanted and the vxlan device, or `None` when the device is
    /// missing and cannot be made (nothing else can be done this pass).
    fn sync_devices(&mut self) -> Option<(Vec<Route>, Option<u32>)> {
        if let Some(u) = &self.udp {
            let routes = u.routes(&self.config).collect();
            self.sync_udp_peers();
            return Some((routes, None));
        }
        if self.vtep.is_some() {
            self.ensure_vxlan()?;
        }
        let all = self.all_wanted()?;
        if let Some(dev) = self.dev {
            self.sync_entries(dev, &all.neigh, &all.fdb);
        }
        Some((all.routes, self.dev))
    }

    /// Masquerade and forward rules: restored when someone removed them.
    pub fn sync_traffic(&mut self) {
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
        let had: HashSet<(IpAddr, &[u8])> = have.iter().map(|e| (e.ip, &e.mac[..])).collect();
        let wanted: HashSet<IpAddr> = want.iter().map(|e| e.ip).collect();
        let mut ops = Vec::new();
        for e in want.iter().filter(|e| !had.contains(&(e.ip, &e.mac[..]))) {
            crate::info!("neighbour {} was missing: restored", e.ip);
            ops.push(Op::SetNeighbour(e.clone()));
        }
        for e in have
            .iter()
            .filter(|e| self.in_cluster(e.ip) && !wanted.contains(&e.ip))
        {
            crate::info!("neighbour {} of a departed peer removed", e.ip);
            ops.push(Op::DelNeighbour(e.clone()));
        }
        self.queue_repairs(ops);
    }

    fn sync_fdb(&mut self, have: &[Entry], want: &[Entry]) {
        let had: HashSet<(IpAddr, &[u8])> = have.iter().map(|e| (e.ip, &e.mac[..])).collect();
        let wanted: HashSet<(IpAddr, &[u8])> = want.iter().map(|e| (e.ip, &e.mac[..])).collect();
        let mut ops = Vec::new();
        for e in want.iter().filter(|e| !had.contains(&(e.ip, &e.mac[..]))) {
            crate::info!("fdb entry for {} was missing: restored", e.ip);
            ops.push(Op::SetFdb(e.clone()));
        }
        // Only unicast entries, as we make them (a peer's VTEP MAC).
        for e in have.iter().filter(|e| {
            e.mac.len() == 6 && e.mac[0] & 1 == 0 && !wanted.contains(&(e.ip, &e.mac[..]))
        }) {
            crate::info!("fdb entry for {} of a departed peer removed", e.ip);
            ops.push(Op::DelFdb(e.clone()));
        }
        self.queue_repairs(ops);
    }

    /// Changes a full comparison found needed; additions count as repairs.
    fn queue_repairs(&mut self, ops: Vec<Op>) {
        for op in ops {
            if !plan::is_removal(&op) {
                self.repaired();
            }
            self.pending.push(op);
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
                self.apply(change);
            }
        }
    }

    fn apply(&mut self, change: Change) {
        let op = match change {
            Change::Add { want, over } => {
                self.repaired();
                match over {
                    Some(o) if routes::same(&o, &want) => crate::info!(
                        "route {} adopted (it was made as proto {:?}, by an earlier version)",
                        routes::describe(&want),
                        o.protocol
                    ),
                    Some(o) => crate::warn!(
                        "route {} replaces {}, which flanneld did not make",
                        routes::describe(&want),
                        routes::describe(&o)
                    ),
                    None => crate::info!("route {} was missing: restored", routes::describe(&want)),
                }
                Op::ReplaceRoute(want)
            }
            Change::Remove(r) => {
                crate::info!("route {} of a departed peer removed", routes::describe(&r));
                Op::DelRoute(r)
            }
            Change::RemoveLegacy(r) => {
                crate::info!(
                    "route {} left by an earlier version for a departed peer removed",
                    routes::describe(&r)
                );
                Op::DelRoute(r)
            }
        };
        self.pending.push(op);
    }
}
