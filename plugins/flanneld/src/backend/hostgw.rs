//! host-gw: a route to each peer's subnet via the peer's public address.
//! Needs every peer on the same L2 segment.

use ipnetwork::IpNetwork;
use netkit::route::Route;

use crate::iface::ExtIface;
use crate::lease::Lease;

/// The routes a peer's lease needs.
pub fn routes(ext: &ExtIface, peer: &Lease) -> Vec<Route> {
    let mut out = Vec::new();
    let mut push = |subnet: Option<IpNetwork>, via: Option<std::net::IpAddr>| {
        if let (Some(sn), Some(gw)) = (subnet, via) {
            let mut r = crate::routes::new(sn.network(), sn.prefix());
            r.gateway = Some(gw);
            r.oif = Some(ext.index);
            out.push(r);
        }
    };
    push(peer.key.ipv4, peer.attrs.public_ip.map(Into::into));
    push(peer.key.ipv6, peer.attrs.public_ipv6.map(Into::into));
    out
}
