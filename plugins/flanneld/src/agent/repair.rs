//! Repair on the kernel's word: the notifications for links, addresses,
//! routes, neighbours and fdb entries tell the agent at once when someone
//! deleted or altered what it programmed. Each is compared (`diff`) with
//! what is wanted in its place, and only that is put back: a look-up per
//! notification, no dump. Notifications of our own changes come back too
//! and find everything as wanted.
//!
//! What the kernel removes without a word (IPv4 routes and neighbours of a
//! link that went down) is put back when the link's own notification
//! arrives: a device of ours that went down or away is restored by its
//! backend, and everything it held is programmed again. A lost
//! notification (`Overrun`) means a full comparison.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netkit::monitor::Change;
use netkit::neigh::Entry;
use netkit::route::Route;

use super::kernel::Why;
use super::{Agent, names};
use crate::diff::{self, Set};
use crate::routes;

/// What a round of notifications asks for beyond single entries.
#[derive(Debug, Default)]
struct Needs {
    /// A device of the backend needs restoring.
    device: bool,
    /// Everything compared (a lost notification, an underlay link back up).
    full: bool,
}

impl Agent {
    pub(super) fn on_kernel(&mut self, changes: Vec<Change>) {
        let mut needs = Needs::default();
        // A device that went takes its entries along: restoring it
        // programs them all, so single repairs on it would be in vain.
        let lost = |c: &Change| match c {
            Change::LinkGone { index, .. } => self.backend.owns(*index),
            Change::Link(l) => self.backend.differs(l),
            _ => false,
        };
        let device_lost = changes.iter().any(lost);
        for c in changes {
            if device_lost && !matches!(c, Change::Link(_) | Change::LinkGone { .. }) {
                continue;
            }
            self.on_change(c, &mut needs);
        }
        if needs.device {
            self.restore_devices();
        }
        if needs.full {
            self.full_soon();
        }
    }

    fn on_change(&mut self, c: Change, needs: &mut Needs) {
        let is_entry_dev = |i: u32| self.backend.entry_devices().contains(&i);
        match c {
            Change::Overrun => needs.full = true,
            Change::LinkGone { index, .. } if self.backend.owns(index) => needs.device = true,
            Change::Link(l) if self.backend.owns(l.index) => {
                needs.device |= self.backend.differs(&l);
            }
            // The underlay back up: host-gw routes via it went with it.
            Change::Link(l) if l.index == self.ext.index => {
                let up = l.is_up();
                if up && !self.ext_up {
                    needs.full = true;
                }
                self.ext_up = up;
            }
            Change::AddressGone { index, .. } if self.backend.owns(index) => needs.device = true,
            Change::RouteGone(r) if r.table == Some(routes::MAIN_TABLE) && routes::is_ours(&r) => {
                self.route_changed(&r, None);
            }
            Change::Route(r) if r.table == Some(routes::MAIN_TABLE) => {
                let seen = r.clone();
                self.route_changed(&r, Some(seen));
            }
            Change::NeighbourGone(e) if is_entry_dev(e.ifindex) => self.neighbour_changed(&e, None),
            Change::Neighbour(e) if is_entry_dev(e.ifindex) => {
                let seen = e.clone();
                self.neighbour_changed(&e, Some(seen));
            }
            Change::FdbGone(e) if is_entry_dev(e.ifindex) => self.fdb_changed(&e, None),
            Change::Fdb(e) if is_entry_dev(e.ifindex) => {
                let seen = e.clone();
                self.fdb_changed(&e, Some(seen));
            }
            _ => {}
        }
    }

    /// Queues the repairs that take `have` (the notified state of one
    /// place) to `want` (what is wanted there). Nothing is removed on a
    /// notification: that is the full comparison's job.
    fn repair(&mut self, have: Set, want: Set) {
        let changes: Vec<diff::Change> = diff::diff(&have, &want)
            .into_iter()
            .filter(|c| matches!(c, diff::Change::Set { .. }))
            .collect();
        self.kernel
            .queue(changes, Why::Repair, &names(&*self.backend, &self.ext));
    }

    /// What is wanted of the peer whose subnet is `subnet`, and whatever
    /// the peers (the backend's fixed state).
    fn wanted_for(&self, subnet: Option<IpNetwork>) -> Set {
        let mut w = self.wanted(subnet.and_then(|sn| self.peers.by_subnet(&sn)));
        self.backend.fixed(&mut w);
        w
    }

    /// A route of the main table deleted (`seen` is `None`) or added or
    /// replaced.
    fn route_changed(&mut self, r: &Route, seen: Option<Route>) {
        let Ok(sn) = IpNetwork::new(r.dst, r.prefix) else {
            return;
        };
        let mut want = self.wanted_for(Some(sn));
        // A deleted route is put back only if it was the one wanted (not
        // one of ours that was being replaced).
        let gone = seen.is_none();
        want.routes
            .retain(|w| routes::same_place(w, r) && (!gone || routes::same(w, r)));
        want.neigh.clear();
        want.fdb.clear();
        if want.is_empty() {
            return;
        }
        let have = Set {
            routes: seen.into_iter().collect(),
            ..Set::default()
        };
        if have.routes.is_empty() {
            crate::info!(
                "route {} of ours was deleted",
                routes::describe(r, &names(&*self.backend, &self.ext))
            );
        } else if !routes::is_ours(r) {
            crate::warn!(
                "route {} took the place of ours",
                routes::describe(r, &names(&*self.backend, &self.ext))
            );
        }
        self.repair(have, want);
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

    /// A neighbour entry on one of our devices deleted (`seen` is `None`;
    /// a deletion's notification carries no MAC) or changed.
    fn neighbour_changed(&mut self, e: &Entry, seen: Option<Entry>) {
        let mut want = self.wanted_for(self.peers_subnet(e.ip));
        want.routes.clear();
        want.fdb.clear();
        want.neigh
            .retain(|w| w.ifindex == e.ifindex && w.ip == e.ip);
        if want.is_empty() {
            return;
        }
        let have = Set {
            neigh: seen.into_iter().collect(),
            ..Set::default()
        };
        self.repair(have, want);
    }

    /// A forwarding entry on one of our devices deleted (`seen` is `None`)
    /// or changed (`bridge fdb replace`).
    fn fdb_changed(&mut self, e: &Entry, seen: Option<Entry>) {
        let Ok(mac) = <[u8; 6]>::try_from(e.mac.as_slice()) else {
            return;
        };
        let Some(peer) = self.peers.by_mac(&mac).copied() else {
            return;
        };
        let mut want = self.wanted(Some(&peer));
        want.routes.clear();
        want.neigh.clear();
        let gone = seen.is_none();
        want.fdb
            .retain(|w| w.ifindex == e.ifindex && w.mac == e.mac && (!gone || w.ip == e.ip));
        if want.is_empty() {
            return;
        }
        let have = Set {
            fdb: seen.into_iter().collect(),
            ..Set::default()
        };
        self.repair(have, want);
    }

    /// A device of the backend was removed, taken down or changed: made
    /// again as configured, and everything it holds programmed afresh
    /// (the kernel drops a downed link's routes and neighbours without a
    /// notification).
    pub(super) fn restore_devices(&mut self) {
        let anew = match self.backend.restore(self.kernel.nl()) {
            Ok(anew) => anew,
            Err(e) => {
                self.kernel
                    .failed(format!("cannot restore the backend's device: {e}"));
                self.full_soon();
                return;
            }
        };
        // A notification of our own making (the device as we left it):
        // nothing to do.
        if !anew {
            return;
        }
        self.kernel.repaired();
        // Queued changes may name the old device.
        self.kernel.drop_pending();
        let mut all = Set::default();
        self.backend.fixed(&mut all);
        for p in self.peers.iter() {
            self.backend.wanted(p, &mut all);
        }
        let changes = diff::diff(&Set::default(), &all);
        self.kernel
            .queue(changes, Why::Peer, &names(&*self.backend, &self.ext));
        crate::info!(
            "device restored: {} peers programmed on it again",
            self.peers.len()
        );
    }
}
