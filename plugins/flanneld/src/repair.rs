//! Repair on the kernel's word: the notifications for links, addresses,
//! routes, neighbours and fdb entries tell the agent at once when someone
//! deleted or altered what it programmed, and only that is put back (a
//! look-up per notification, no dump). Notifications of our own changes
//! come back too and find everything as wanted.
//!
//! What the kernel removes without a word (IPv4 routes and neighbours of a
//! link that went down) is put back when the link's own notification
//! arrives; a lost notification (`Overrun`) means a full comparison.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netkit::batch::Op;
use netkit::monitor::Change;
use netkit::route::Route;

use crate::agent::State;
use crate::follow::reach;
use crate::peers::Peer;
use crate::plan::{self, Wanted};
use crate::routes;

/// What a round of notifications asks for beyond single entries.
#[derive(Debug, Default)]
struct Needs {
    /// The vxlan device (or its address) may need restoring.
    device: bool,
    /// Everything compared (a lost notification, an underlay link back up).
    full: bool,
}

impl State {
    pub fn on_kernel(&mut self, changes: Vec<Change>) {
        let mut needs = Needs::default();
        // A device that went takes its entries along: restoring it
        // programs them all, so single repairs on it would be in vain.
        let dev = self.dev;
        let device_lost = changes.iter().any(|c| {
            matches!(c, Change::LinkGone { index, .. } if Some(*index) == dev)
                || matches!(c, Change::Link(l) if Some(l.index) == dev && !l.is_up())
        });
        for c in changes {
            if device_lost && !matches!(c, Change::Link(_) | Change::LinkGone { .. }) {
                continue;
            }
            self.on_change(c, &mut needs);
        }
        if needs.device {
            self.restore_device();
        }
        if needs.full {
            self.full_soon();
        }
    }

    /// What the peer owning `subnet` needs (empty when no peer does).
    fn wanted_for(&self, subnet: Option<IpNetwork>) -> Wanted {
        subnet
            .and_then(|sn| self.peers.by_subnet(&sn))
            .map(|p| self.wanted_of(p))
            .unwrap_or_default()
    }

    fn wanted_of(&self, p: &Peer) -> Wanted {
        reach(&self.vtep, self.dev, &self.ext, self.udp.is_some())
            .map(|reach| plan::of(&reach, p))
            .unwrap_or_default()
    }

    fn repair(&mut self, op: Op) {
        self.repaired();
        crate::info!("repairing: {}", plan::describe(&op));
        self.pending.push(op);
    }

    fn on_change(&mut self, c: Change, needs: &mut Needs) {
        let dev = self.dev;
        match c {
            Change::Overrun => needs.full = true,
            Change::LinkGone { index, .. } if Some(index) == dev => {
                needs.device = true;
            }
            Change::Link(l) if Some(l.index) == dev => {
                let changed = self
                    .vtep
                    .as_ref()
                    .is_some_and(|v| !v.matches(&l, &self.ext));
                if !l.is_up() || changed {
                    needs.device = true;
                }
            }
            // The underlay back up: host-gw routes via it went with it.
            Change::Link(l) if l.index == self.ext.index && l.is_up() => {
                if !self.ext_up {
                    needs.full = true;
                }
                self.ext_up = true;
            }
            Change::Link(l) if l.index == self.ext.index => self.ext_up = false,
            Change::AddressGone { index, .. } if Some(index) == dev => needs.device = true,
            Change::RouteGone(r) if r.table == Some(routes::MAIN_TABLE) => self.route_gone(&r),
            Change::Route(r) if r.table == Some(routes::MAIN_TABLE) => self.route_seen(&r),
            Change::NeighbourGone(e) if Some(e.ifindex) == dev => self.neighbour(&e, true),
            Change::Neighbour(e) if Some(e.ifindex) == dev => self.neighbour(&e, false),
            Change::FdbGone(e) if Some(e.ifindex) == dev => {
                let want = e
                    .mac
                    .as_slice()
                    .try_into()
                    .ok()
                    .and_then(|m: [u8; 6]| self.peers.by_mac(&m).map(|p| self.wanted_of(p)));
                if let Some(w) = want.and_then(|w| w.fdb.into_iter().find(|w| *w == e)) {
                    self.repair(Op::SetFdb(w));
                }
            }
            _ => {}
        }
    }

    /// A neighbour entry on the device deleted (`gone`) or changed.
    fn neighbour(&mut self, e: &netkit::neigh::Entry, gone: bool) {
        let want = self.wanted_for(self.peers_subnet(e.ip));
        // A deletion's notification carries no MAC.
        if let Some(w) = want
            .neigh
            .into_iter()
            .find(|w| w.ip == e.ip && (gone || w.mac != e.mac))
        {
            self.repair(Op::SetNeighbour(w));
        }
    }

    /// The peer subnet a neighbour entry's address names (it is the
    /// subnet's network address).
    fn peers_subnet(&self, ip: IpAddr) -> Option<IpNetwork> {
        let len = match ip {
            IpAddr::V4(_) => self.config.ipv4.as_ref()?.subnet_len,
            IpAddr::V6(_) => self.config.ipv6.as_ref()?.subnet_len,
        };
        IpNetwork::new(ip, len).ok()
    }

    /// The route a deleted one was, if we want it.
    fn wanted_route(&self, r: &Route) -> Option<Route> {
        if let Some(u) = &self.udp {
            return u
                .routes(&self.config)
                .find(|want| want.dst == r.dst && want.prefix == r.prefix);
        }
        let sn = IpNetwork::new(r.dst, r.prefix).ok()?;
        self.wanted_for(Some(sn))
            .routes
            .into_iter()
            .find(|w| routes::same_destination(r, w))
    }

    fn route_gone(&mut self, r: &Route) {
        // Only ours: a route someone else made and removed is theirs.
        if r.protocol != Some(routes::PROTOCOL) {
            return;
        }
        if let Some(want) = self.wanted_route(r).filter(|w| routes::same(w, r)) {
            self.repair(Op::ReplaceRoute(want));
        }
    }

    /// A route added or replaced: ours altered, or another put in its place.
    fn route_seen(&mut self, r: &Route) {
        let altered = self
            .wanted_route(r)
            .filter(|w| !(routes::is_ours(r) && plan::same_route(r, w)));
        if let Some(want) = altered {
            crate::warn!(
                "route {} replaced ours ({}): restored",
                routes::describe(r),
                routes::describe(&want)
            );
            self.repair(Op::ReplaceRoute(want));
        }
    }

    /// The vxlan device was removed, taken down or changed: made again as
    /// configured, and every peer programmed on it afresh (the kernel drops
    /// a downed link's routes and neighbours without a notification).
    fn restore_device(&mut self) {
        if self.vtep.is_none() {
            return;
        }
        let before = self.dev;
        let Some((index, changed)) = self.ensure_vxlan() else {
            self.full_soon();
            return;
        };
        let remade = before != Some(index);
        // A notification of our own making (the device as we left it):
        // nothing to do.
        if !(changed || remade) {
            return;
        }
        self.repaired();
        if remade {
            // Queued changes may name the old device.
            self.pending.clear();
        }
        let Some(all) = self.all_wanted() else {
            return;
        };
        plan::add(&all, &mut self.pending);
        crate::info!(
            "vxlan device restored: {} peers programmed on it again",
            self.peers.len()
        );
    }
}
