//! host-gw: a route to each peer's subnet via the peer's public address.
//! Needs every peer on the same L2 segment.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netkit::route::Route;

use crate::iface::ExtIface;
use crate::peers::Peer;

/// The routes a peer needs, added to `out`.
pub fn routes(ext: &ExtIface, peer: &Peer, out: &mut Vec<Route>) {
    let mut push = |subnet: Option<IpNetwork>, via: Option<IpAddr>| {
        if let (Some(sn), Some(gw)) = (subnet, via) {
            let mut r = crate::routes::new(sn.network(), sn.prefix());
            r.gateway = Some(gw);
            r.oif = Some(ext.index);
            out.push(r);
        }
    };
    push(peer.key.ipv4, peer.public_ip.map(Into::into));
    push(peer.key.ipv6, peer.public_ipv6.map(Into::into));
}
