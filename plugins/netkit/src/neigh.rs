//! Neighbour (ARP/NDP) and bridge forwarding database entries, as a VXLAN
//! data plane programs them per peer.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink::{Netlink, NetlinkError};

/// A permanent entry: `ip` -> `mac` (neighbour) or `mac` -> `ip` (fdb).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: Vec<u8>,
}

fn address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn ip_of(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // An fdb entry's destination: the parser does not know which
        // family a bridge-family message's address is, so go by its size.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn message(family: AddressFamily, e: &Entry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.ifindex = e.ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::Destination(address(e.ip)));
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.clone()));
    msg
}

fn ip_family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The request that sets `e` as a permanent neighbour entry (replacing
/// one for the same address).
pub(crate) fn set_neighbour_request(e: &Entry) -> (RouteNetlinkMessage, u16) {
    let msg = message(ip_family(e.ip), e);
    (
        RouteNetlinkMessage::NewNeighbour(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

pub(crate) fn del_neighbour_request(e: &Entry) -> (RouteNetlinkMessage, u16) {
    let msg = message(ip_family(e.ip), e);
    (RouteNetlinkMessage::DelNeighbour(msg), 0)
}

/// A forwarding entry as a VXLAN device takes it: owned by the device
/// (`NTF_SELF`), not by a bridge above it.
fn fdb_message(e: &Entry) -> NeighbourMessage {
    let mut msg = message(AddressFamily::Bridge, e);
    msg.header.flags = NeighbourFlags::Own;
    msg
}

pub(crate) fn set_fdb_request(e: &Entry) -> (RouteNetlinkMessage, u16) {
    (
        RouteNetlinkMessage::NewNeighbour(fdb_message(e)),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

pub(crate) fn del_fdb_request(e: &Entry) -> (RouteNetlinkMessage, u16) {
    (RouteNetlinkMessage::DelNeighbour(fdb_message(e)), 0)
}

fn destination(n: &NeighbourMessage) -> Option<IpAddr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(d) => ip_of(d),
        _ => None,
    })
}

fn lladdr(n: &NeighbourMessage) -> Option<Vec<u8>> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(m) => Some(m.clone()),
        _ => None,
    })
}

/// A neighbour or forwarding entry, dumped or notified, as an [`Entry`]:
/// `None` without both an IP address and a link-layer address (an
/// unresolved neighbour, a bridge's own fdb entry).
pub(crate) fn entry(n: &NeighbourMessage) -> Option<Entry> {
    Some(Entry {
        ifindex: n.header.ifindex,
        ip: destination(n)?,
        mac: lladdr(n)?,
    })
}

/// A deleted neighbour as an [`Entry`]: the kernel marks a neighbour
/// failed before it deletes it, which drops its link-layer address, so the
/// announcement of the deletion has none and `mac` is empty.
pub(crate) fn gone_entry(n: &NeighbourMessage) -> Option<Entry> {
    Some(Entry {
        ifindex: n.header.ifindex,
        ip: destination(n)?,
        mac: lladdr(n).unwrap_or_default(),
    })
}

impl Netlink {
    /// A permanent neighbour entry: `ip` is at `mac` on the link.
    pub fn set_neighbour(&mut self, e: &Entry) -> Result<(), NetlinkError> {
        let (msg, flags) = set_neighbour_request(e);
        self.request(msg, flags).map(drop)
    }

    pub fn del_neighbour(&mut self, e: &Entry) -> Result<(), NetlinkError> {
        let (msg, flags) = del_neighbour_request(e);
        self.request(msg, flags).map(drop)
    }

    /// A forwarding entry on a VXLAN device: frames for `mac` go to `ip`.
    pub fn set_fdb(&mut self, e: &Entry) -> Result<(), NetlinkError> {
        let (msg, flags) = set_fdb_request(e);
        self.request(msg, flags).map(drop)
    }

    pub fn del_fdb(&mut self, e: &Entry) -> Result<(), NetlinkError> {
        let (msg, flags) = del_fdb_request(e);
        self.request(msg, flags).map(drop)
    }

    fn dump_neigh(
        &mut self,
        family: AddressFamily,
        ifindex: u32,
    ) -> Result<Vec<Entry>, NetlinkError> {
        let mut req = NeighbourMessage::default();
        req.header.family = family;
        // The kernel sends only the link's entries when it checks dumps
        // strictly; without that it reads the request differently (as a
        // link message, for fdb dumps), so the filter is left out.
        if self.filters_dumps() {
            req.attributes.push(NeighbourAttribute::IfIndex(ifindex));
        }
        let msgs = self.dump(RouteNetlinkMessage::GetNeighbour(req))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == ifindex => entry(n),
                _ => None,
            })
            .collect())
    }

    /// Neighbour entries of one link, both families.
    pub fn neighbours(&mut self, ifindex: u32) -> Result<Vec<Entry>, NetlinkError> {
        let mut all = self.dump_neigh(AddressFamily::Inet, ifindex)?;
        all.extend(self.dump_neigh(AddressFamily::Inet6, ifindex)?);
        Ok(all)
    }

    /// Forwarding entries of one VXLAN link that have a destination.
    pub fn fdb(&mut self, ifindex: u32) -> Result<Vec<Entry>, NetlinkError> {
        self.dump_neigh(AddressFamily::Bridge, ifindex)
    }
}
