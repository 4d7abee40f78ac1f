//! host-gw: a route to each peer's subnet via the peer's public address,
//! on the interface between nodes. Needs every peer on the same L2
//! segment, and the public address to be the interface's own (no NAT).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netkit::Netlink;
use netkit::link::Link;

use super::{Backend, PeerData, Setup, check_type};
use crate::diff::Set;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::peers::Peer;

#[derive(Debug)]
pub struct HostGw {
    ext_index: u32,
    ext_name: String,
    mtu: u32,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
}

/// Upstream refuses a public address that is not the interface's: the
/// peers' routes go straight to it.
fn not_behind_nat(setup: &Setup<'_>) -> Result<(), String> {
    let ext = setup.ext;
    let v4 = setup.public_ip.is_some_and(|p| ext.ipv4 != Some(p));
    let v6 = setup.public_ipv6.is_some_and(|p| ext.ipv6 != Some(p));
    if v4 || v6 {
        let public = [
            setup.public_ip.map(IpAddr::V4),
            setup.public_ipv6.map(IpAddr::V6),
        ];
        let own = [ext.ipv4.map(IpAddr::V4), ext.ipv6.map(IpAddr::V6)];
        let list = |ips: &[Option<IpAddr>]| {
            let v: Vec<String> = ips.iter().flatten().map(ToString::to_string).collect();
            if v.is_empty() {
                "none".into()
            } else {
                v.join(", ")
            }
        };
        return Err(format!(
            "host-gw needs the public address to be the interface's own ({} has {}, the public address is {}): probably this node is behind NAT; use vxlan or udp",
            ext.name,
            list(&own),
            list(&public)
        ));
    }
    Ok(())
}

impl HostGw {
    pub fn new(setup: &Setup<'_>) -> Result<HostGw, String> {
        not_behind_nat(setup)?;
        Ok(HostGw {
            ext_index: setup.ext.index,
            ext_name: setup.ext.name.clone(),
            mtu: setup.underlay_mtu(),
            public_ip: setup.public_ip,
            public_ipv6: setup.public_ipv6,
        })
    }
}

impl Backend for HostGw {
    fn attrs(&self) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: self.public_ip,
            public_ipv6: self.public_ipv6,
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    fn start(&mut self, _: &mut Netlink, _: &SubnetKey) -> Result<(), String> {
        Ok(())
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn peer_data(&self, lease: &Lease) -> Result<PeerData, String> {
        check_type(lease, "host-gw")?;
        Ok(PeerData::None)
    }

    fn wanted(&self, peer: &Peer, out: &mut Set) {
        let mut push = |subnet: Option<IpNetwork>, via: Option<IpAddr>| {
            if let (Some(sn), Some(gw)) = (subnet, via) {
                let mut r = crate::routes::new(sn.network(), sn.prefix());
                r.gateway = Some(gw);
                r.oif = Some(self.ext_index);
                out.routes.push(r);
            }
        };
        push(peer.key.ipv4, peer.public_ip.map(Into::into));
        push(peer.key.ipv6, peer.public_ipv6.map(Into::into));
    }

    fn owns(&self, _: u32) -> bool {
        false
    }

    fn differs(&self, _: &Link) -> bool {
        false
    }

    fn restore(&mut self, _: &mut Netlink) -> Result<bool, String> {
        Ok(false)
    }

    fn device_name(&self, index: u32) -> Option<String> {
        (index == self.ext_index).then(|| self.ext_name.clone())
    }
}
