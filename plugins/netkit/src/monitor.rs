//! Listening to what changes in a namespace: the kernel's rtnetlink
//! notifications (links, addresses, routes, neighbours, forwarding
//! entries) as they happen, so an agent repairs what was changed under it
//! without dumping everything again and again.
//!
//! A [`Monitor`] is a netlink socket joined to the multicast groups; it
//! stays bound to the namespace it was made in (make it inside one, see
//! [`crate::NetNs::monitor`], and use it from any thread). Notifications
//! queue in the socket's receive buffer, raised large so that a burst
//! (an agent programming thousands of peers) fits; should the kernel drop
//! some anyway, [`Change::Overrun`] says so and the monitor carries on.
//!
//! Messages are parsed by the same code that reads dumps, so a notified
//! route compares equal to a dumped one.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use netlink_packet_core::ParseableParametrized;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::RouteFlags;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use nix::libc;

use crate::addr;
use crate::link::Link;
use crate::neigh::{self, Entry};
use crate::netlink::NetlinkError;
use crate::nlsock::{Frame, NlSocket, Notice};
use crate::route::{self, Route};

/// The groups a monitor joins.
const GROUPS: [libc::c_uint; 6] = [
    libc::RTNLGRP_LINK,
    libc::RTNLGRP_IPV4_IFADDR,
    libc::RTNLGRP_IPV6_IFADDR,
    libc::RTNLGRP_IPV4_ROUTE,
    libc::RTNLGRP_IPV6_ROUTE,
    libc::RTNLGRP_NEIGH,
];

/// Receive buffer asked for: room for tens of thousands of notifications
/// (one takes about 0.5-1 KiB of it), a start-up burst of 5,000 peers
/// (a route, a neighbour and an fdb entry each) included. Memory is used
/// only while notifications wait to be read.
const RCVBUF: usize = 32 << 20;

/// Something that changed in the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A link was added or changed: its state now.
    Link(Link),
    /// A link was deleted (or left the namespace).
    LinkGone {
        index: u32,
        name: String,
    },
    Address {
        index: u32,
        addr: IpAddr,
        prefix: u8,
    },
    AddressGone {
        index: u32,
        addr: IpAddr,
        prefix: u8,
    },
    /// A unicast route was added or replaced.
    Route(Route),
    /// A unicast route was deleted. IPv4 routes that go because their
    /// link went down or away are not announced (the kernel flushes them
    /// silently; IPv6 ones are): watch [`Change::Link`] and
    /// [`Change::LinkGone`] too.
    RouteGone(Route),
    /// An IPv4 or IPv6 neighbour entry with a link-layer address was added
    /// or changed.
    Neighbour(Entry),
    /// A neighbour entry was deleted. The kernel marks an entry failed
    /// before deleting it, which drops its link-layer address: `mac` is
    /// empty (match on the link and the IP address).
    NeighbourGone(Entry),
    /// A forwarding entry with a destination IP (a VXLAN device's) was
    /// added or changed.
    Fdb(Entry),
    FdbGone(Entry),
    /// The kernel dropped notifications (`ENOBUFS` on the socket): the
    /// listener must compare everything itself; the monitor keeps working
    /// after this.
    Overrun,
}

/// A socket that hears about changes in its namespace.
#[derive(Debug)]
pub struct Monitor {
    sock: NlSocket,
}

impl Monitor {
    /// Subscribed, in the calling thread's network namespace, to links,
    /// IPv4 and IPv6 addresses and routes, and neighbours (forwarding
    /// entries included), with a receive buffer for bursts
    /// (`SO_RCVBUFFORCE` as root, else as far as `net.core.rmem_max` lets
    /// `SO_RCVBUF` go).
    pub fn new() -> Result<Monitor, NetlinkError> {
        Monitor::with_rcvbuf(RCVBUF)
    }

    /// With a receive buffer of `rcvbuf` bytes at least.
    fn with_rcvbuf(rcvbuf: usize) -> Result<Monitor, NetlinkError> {
        let mut sock = NlSocket::open(NETLINK_ROUTE, false)?;
        sock.subscribe(&GROUPS, rcvbuf)?;
        Ok(Monitor { sock })
    }

    /// Blocks until at least one change arrives, then returns everything
    /// queued without waiting more (a burst comes back as one Vec).
    /// Messages it does not understand are skipped, never an error.
    // The name the callers know; not an Iterator, as it blocks and fails.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Vec<Change>, NetlinkError> {
        let mut out = Vec::new();
        while out.is_empty() {
            self.sock.notifications(None, |n| collect(n, &mut out))?;
        }
        Ok(out)
    }

    /// Like [`Monitor::next`] but gives up after `timeout` with an empty Vec.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Vec<Change>, NetlinkError> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let any = self
                .sock
                .notifications(Some(left), |n| collect(n, &mut out))?;
            // Notifications that were all skipped do not end the wait.
            if !out.is_empty() || (!any && left.is_zero()) {
                return Ok(out);
            }
        }
    }
}

fn collect(n: Notice<'_>, out: &mut Vec<Change>) {
    match n {
        Notice::Message(f) => out.extend(change(&f)),
        // One Overrun per batch says it all.
        Notice::Lost if out.last() == Some(&Change::Overrun) => {}
        Notice::Lost => out.push(Change::Overrun),
    }
}

/// The change a notification announces; `None` for what is not followed
/// or not understood.
fn change(f: &Frame<'_>) -> Option<Change> {
    // Only the kinds followed are parsed at all.
    if !matches!(
        f.ty,
        libc::RTM_NEWLINK
            | libc::RTM_DELLINK
            | libc::RTM_NEWADDR
            | libc::RTM_DELADDR
            | libc::RTM_NEWROUTE
            | libc::RTM_DELROUTE
            | libc::RTM_NEWNEIGH
            | libc::RTM_DELNEIGH
    ) {
        return None;
    }
    let msg = RouteNetlinkMessage::parse_with_param(f.payload(), f.ty).ok()?;
    match msg {
        // A bridge announces its ports' bridge state as AF_BRIDGE link
        // messages (RTM_DELLINK when a port leaves, the link staying):
        // not the link itself.
        RouteNetlinkMessage::NewLink(l) if l.header.interface_family == AddressFamily::Unspec => {
            Some(Change::Link(Link::from_message(l)))
        }
        RouteNetlinkMessage::DelLink(l) if l.header.interface_family == AddressFamily::Unspec => {
            let index = l.header.index;
            let name = l
                .attributes
                .into_iter()
                .find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                })
                .unwrap_or_default();
            Some(Change::LinkGone { index, name })
        }
        RouteNetlinkMessage::NewAddress(a) => addr::parse(&a).map(|a| Change::Address {
            index: a.index,
            addr: a.addr,
            prefix: a.prefix,
        }),
        RouteNetlinkMessage::DelAddress(a) => addr::parse(&a).map(|a| Change::AddressGone {
            index: a.index,
            addr: a.addr,
            prefix: a.prefix,
        }),
        // Cached clones (IPv6 exceptions) are not routes anyone programmed.
        RouteNetlinkMessage::NewRoute(r) if !r.header.flags.contains(RouteFlags::Cloned) => {
            route::parse(&r).map(Change::Route)
        }
        RouteNetlinkMessage::DelRoute(r) if !r.header.flags.contains(RouteFlags::Cloned) => {
            route::parse(&r).map(Change::RouteGone)
        }
        RouteNetlinkMessage::NewNeighbour(n) => {
            let e = neigh::entry(&n)?;
            match n.header.family {
                AddressFamily::Inet | AddressFamily::Inet6 => Some(Change::Neighbour(e)),
                AddressFamily::Bridge => Some(Change::Fdb(e)),
                _ => None,
            }
        }
        RouteNetlinkMessage::DelNeighbour(n) => match n.header.family {
            AddressFamily::Inet | AddressFamily::Inet6 => {
                neigh::gone_entry(&n).map(Change::NeighbourGone)
            }
            AddressFamily::Bridge => neigh::entry(&n).map(Change::FdbGone),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NetNs, Op};

    #[test]
    fn dropped_notifications_are_an_overrun_and_the_monitor_carries_on() {
        let ns = NetNs::create().expect("this test needs root (CAP_SYS_ADMIN)");
        // The default buffer (net.core.rmem_default, about 200 KiB) holds
        // a few hundred notifications.
        let mut mon = ns.run(|| Monitor::with_rcvbuf(0)).unwrap().unwrap();
        let mut nl = ns.socket().unwrap();
        let ops: Vec<Op> = (0..3000u32)
            .map(|i| {
                let [_, _, hi, lo] = i.to_be_bytes();
                let mut r = Route::new(IpAddr::from([10, 100 + hi, lo, 0]), 24);
                r.table = Some(100);
                r.oif = Some(1); // lo
                Op::ReplaceRoute(r)
            })
            .collect();
        nl.set_up(1).unwrap();
        assert!(nl.apply(&ops).unwrap().iter().all(Result::is_ok));
        let mut heard = Vec::new();
        loop {
            let batch = mon.next_timeout(Duration::from_millis(200)).unwrap();
            if batch.is_empty() {
                break;
            }
            heard.extend(batch);
        }
        let routes = heard
            .iter()
            .filter(|c| matches!(c, Change::Route(_)))
            .count();
        assert!(heard.contains(&Change::Overrun), "{routes} routes heard");
        assert!(routes > 0 && routes < ops.len(), "{routes}");

        // Still listening.
        nl.add_bridge("after", None, false).unwrap();
        let next = mon.next_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            next.iter()
                .any(|c| matches!(c, Change::Link(l) if l.name == "after")),
            "{next:?}"
        );
    }
}
