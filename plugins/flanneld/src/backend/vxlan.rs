//! vxlan: a kernel VTEP `flannel.<VNI>` with learning off; per peer a
//! permanent neighbour entry (the peer subnet's address -> its VTEP MAC), a
//! forwarding entry (that MAC -> the peer's public address) and an onlink
//! route. With DirectRouting, a peer on this host's L2 segment gets a plain
//! route instead, as host-gw would.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netkit::Netlink;
use netkit::link::{VxlanSpec, format_mac};
use netkit::neigh::Entry;
use serde_json::{Value, json};

use crate::iface::ExtIface;
use crate::peers::Peer;
use crate::plan::Wanted;
use crate::routes;

/// What encapsulation adds: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner
/// Ethernet (14).
pub const OVERHEAD: u32 = 50;
/// The same over an IPv6 underlay (a 40-byte outer header).
pub const OVERHEAD_V6: u32 = 70;

/// The overhead for a VTEP at `local`.
pub fn overhead(local: IpAddr) -> u32 {
    if local.is_ipv4() {
        OVERHEAD
    } else {
        OVERHEAD_V6
    }
}

pub fn device_name(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// A MAC that is the same for this node and VNI across restarts (locally
/// administered, unicast), so peers' entries stay right when we come back.
pub fn stable_mac(public_ip: IpAddr, vni: u32) -> [u8; 6] {
    let seed = format!("{public_ip}/{vni}");
    let h = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let b = h.to_be_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

pub fn backend_data(vni: u32, mac: &[u8; 6]) -> Value {
    json!({"VNI": vni, "VtepMAC": format_mac(mac)})
}

#[derive(Debug)]
pub struct Vxlan {
    pub vni: u32,
    pub port: u16,
    pub mtu: u32,
    pub mac: [u8; 6],
    pub local: IpAddr,
    pub direct_routing: bool,
    /// This node's subnets: the device's addresses.
    pub own: Vec<IpNetwork>,
}

impl Vxlan {
    /// Makes sure the device exists as configured, up, with our addresses;
    /// recreates it when it is gone or differs in anything but its MTU
    /// (changed in place). A new device has no peers: the resync that
    /// follows programs them again.
    fn spec<'a>(&self, name: &'a str, ext: &ExtIface) -> VxlanSpec<'a> {
        VxlanSpec {
            name,
            vni: self.vni,
            underlay: ext.index,
            local: self.local,
            port: self.port,
            mtu: self.mtu,
            mac: self.mac,
        }
    }

    /// The device as the kernel reports it is as configured (and up).
    pub fn matches(&self, dev: &netkit::link::Link, ext: &ExtIface) -> bool {
        let name = device_name(self.vni);
        dev.mtu == self.mtu && self.spec(&name, ext).differences(dev).is_empty()
    }

    /// Returns the index, and whether the device was made or brought up
    /// (what it held is gone then).
    pub fn ensure_device(&self, nl: &mut Netlink, ext: &ExtIface) -> Result<(u32, bool), String> {
        let name = device_name(self.vni);
        let err = |what: &str, e: netkit::NetlinkError| format!("{what} {name}: {e}");
        let spec = self.spec(&name, ext);
        let existing = nl
            .link_by_name(&name)
            .map_err(|e| err("cannot look up", e))?;
        let kept = match existing {
            Some(d) => {
                let diff = spec.differences(&d);
                if diff.is_empty() {
                    Some(d)
                } else {
                    crate::info!("recreating {name}: {}", diff.join(", "));
                    nl.del_link(d.index)
                        .map_err(|e| err("cannot remove the outdated", e))?;
                    None
                }
            }
            None => None,
        };
        let made = kept.is_none();
        let dev = match kept {
            Some(d) => d,
            None => {
                nl.add_vxlan(&spec).map_err(|e| err("cannot create", e))?;
                nl.link_by_name(&name)
                    .map_err(|e| err("cannot look up", e))?
                    .ok_or_else(|| format!("{name} vanished right after it was made"))?
            }
        };
        if dev.mtu != self.mtu {
            nl.set_mtu(dev.index, self.mtu)
                .map_err(|e| err("cannot set the MTU of", e))?;
            crate::info!("{name}: MTU {} -> {}", dev.mtu, self.mtu);
        }
        let addrs = nl
            .addresses(Some(dev.index))
            .map_err(|e| err("cannot read addresses of", e))?;
        for sn in &self.own {
            let prefix = if sn.is_ipv4() { 32 } else { 128 };
            if !addrs
                .iter()
                .any(|a| a.addr == sn.network() && a.prefix == prefix)
            {
                match nl.add_address_nodad(dev.index, sn.network(), prefix) {
                    Err(e) if !e.is_exists() => return Err(err("cannot address", e)),
                    _ => {}
                }
            }
        }
        if !dev.is_up() {
            nl.set_up(dev.index)
                .map_err(|e| err("cannot bring up", e))?;
        }
        Ok((dev.index, made || !dev.is_up()))
    }

    /// What one peer needs: neighbour and forwarding entries on the device,
    /// and routes.
    pub fn desired(&self, dev: u32, ext: &ExtIface, peer: &Peer, out: &mut Wanted) {
        let Some(mac) = peer.mac else {
            return;
        };
        let Some(public) = peer
            .public_ip
            .map(IpAddr::V4)
            .or(peer.public_ipv6.map(IpAddr::V6))
        else {
            return;
        };
        let Wanted { routes, neigh, fdb } = out;
        let before = neigh.len();
        let direct = self.direct_routing && ext.on_link(public);
        for sn in [peer.key.ipv4, peer.key.ipv6].into_iter().flatten() {
            let mut r = routes::new(sn.network(), sn.prefix());
            if direct && sn.is_ipv4() == public.is_ipv4() {
                r.gateway = Some(public);
                r.oif = Some(ext.index);
            } else {
                r.gateway = Some(sn.network());
                r.oif = Some(dev);
                r.onlink = true;
                neigh.push(Entry {
                    ifindex: dev,
                    ip: sn.network(),
                    mac: mac.to_vec(),
                });
            }
            routes.push(r);
        }
        if neigh.len() > before {
            fdb.push(Entry {
                ifindex: dev,
                ip: public,
                mac: mac.to_vec(),
            });
        }
    }
}
