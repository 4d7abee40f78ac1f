//! vxlan, in upstream's layout: a kernel VTEP per family, `flannel.<VNI>`
//! over the IPv4 underlay and `flannel-v6.<VNI>` over the IPv6 one, each
//! with learning off and its own MAC (`BackendData` and `BackendV6Data` in
//! the lease). Per peer and family: a permanent neighbour entry (the peer
//! subnet's address -> the peer's VTEP MAC), a forwarding entry (that MAC
//! -> the peer's public address) and an onlink route. With DirectRouting,
//! a peer on this host's L2 segment gets a plain route instead, as host-gw
//! would.
//!
//! A VTEP sends from the interface's own address; the lease publishes the
//! public one (`--public-ip`), which is what a node behind NAT needs.

mod vtep;

use std::net::IpAddr;

use netkit::Netlink;
use netkit::link::{Link, format_mac, parse_mac};
use netkit::neigh::Entry;
use serde_json::{Value, json};

use super::{Backend, PeerData, Setup, check_type};
use crate::diff::Set;
use crate::iface::ExtIface;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::peers::Peer;
use crate::routes;
use vtep::Vtep;

/// What encapsulation adds: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner
/// Ethernet (14).
pub const OVERHEAD: u32 = 50;
/// The same over an IPv6 underlay (a 40-byte outer header).
pub const OVERHEAD_V6: u32 = 70;

pub fn device_name(vni: u32, v6: bool) -> String {
    if v6 {
        format!("flannel-v6.{vni}")
    } else {
        format!("flannel.{vni}")
    }
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

/// `{"VNI":1,"VtepMAC":"..."}`, as upstream marshals it.
pub fn backend_data(vni: u32, mac: &[u8; 6]) -> Value {
    json!({"VNI": vni, "VtepMAC": format_mac(mac)})
}

/// The VTEP MAC in a lease's backend data (`what` names the field).
fn vtep_mac(data: Option<&Value>, what: &str) -> Result<[u8; 6], String> {
    let text = data
        .and_then(|d| d.get("VtepMAC"))
        .and_then(|m| m.as_str())
        .ok_or_else(|| format!("its {what} has no VtepMAC"))?;
    let mac = parse_mac(text).ok_or_else(|| format!("its {what} VtepMAC {text:?} is not a MAC"))?;
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(format!(
            "its {what} VtepMAC {text} is not a unicast address"
        ));
    }
    Ok(mac)
}

#[derive(Debug)]
pub struct Vxlan {
    vni: u32,
    direct_routing: bool,
    ext: ExtIface,
    v4: Option<Vtep>,
    v6: Option<Vtep>,
}

impl Vxlan {
    pub fn new(setup: &Setup<'_>) -> Result<Vxlan, String> {
        let b = &setup.config.backend;
        let ext = setup.ext;
        let underlay = setup.underlay_mtu();
        let missing = |family: &str| {
            format!(
                "{} has no {family} address for the {family} VTEP (the config enables {family})",
                ext.name
            )
        };
        let v4 = match setup.public_ip {
            Some(public) => {
                let local = ext.ipv4.ok_or_else(|| missing("IPv4"))?;
                Some(Vtep::new(
                    device_name(b.vni, false),
                    local.into(),
                    public.into(),
                    b,
                    underlay.saturating_sub(OVERHEAD),
                    setup.macs.0,
                ))
            }
            None => None,
        };
        let v6 = match setup.public_ipv6 {
            Some(public) => {
                let local = ext.ipv6.ok_or_else(|| missing("IPv6"))?;
                Some(Vtep::new(
                    device_name(b.vni, true),
                    local.into(),
                    public.into(),
                    b,
                    underlay.saturating_sub(OVERHEAD_V6),
                    setup.macs.1,
                ))
            }
            None => None,
        };
        Ok(Vxlan {
            vni: b.vni,
            direct_routing: b.direct_routing,
            ext: ext.clone(),
            v4,
            v6,
        })
    }

    fn vteps(&self) -> impl Iterator<Item = &Vtep> {
        self.v4.iter().chain(self.v6.iter())
    }

    /// One family's entries for `peer`: through the VTEP, or straight to
    /// its public address when DirectRouting allows.
    fn family(&self, vtep: &Vtep, peer: &Peer, v6: bool, out: &mut Set) {
        let (subnet, public, mac) = match (v6, peer.data) {
            (false, PeerData::Vxlan { v4: Some(mac), .. }) => {
                (peer.key.ipv4, peer.public_ip.map(IpAddr::V4), mac)
            }
            (true, PeerData::Vxlan { v6: Some(mac), .. }) => {
                (peer.key.ipv6, peer.public_ipv6.map(IpAddr::V6), mac)
            }
            _ => return,
        };
        let (Some(sn), Some(public), Some(dev)) = (subnet, public, vtep.index()) else {
            return;
        };
        let mut r = routes::new(sn.network(), sn.prefix());
        if self.direct_routing && self.ext.on_link(public) {
            r.gateway = Some(public);
            r.oif = Some(self.ext.index);
        } else {
            r.gateway = Some(sn.network());
            r.oif = Some(dev);
            r.onlink = true;
            out.neigh.push(Entry {
                ifindex: dev,
                ip: sn.network(),
                mac: mac.to_vec(),
            });
            out.fdb.push(Entry {
                ifindex: dev,
                ip: public,
                mac: mac.to_vec(),
            });
        }
        out.routes.push(r);
    }
}

impl Backend for Vxlan {
    fn attrs(&self) -> LeaseAttrs {
        let ip4 = self.v4.as_ref().and_then(|v| match v.public() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        });
        let ip6 = self.v6.as_ref().and_then(|v| match v.public() {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        });
        LeaseAttrs {
            public_ip: ip4,
            public_ipv6: ip6,
            backend_type: "vxlan".into(),
            backend_data: self.v4.as_ref().map(|v| backend_data(self.vni, &v.mac())),
            backend_v6_data: self.v6.as_ref().map(|v| backend_data(self.vni, &v.mac())),
        }
    }

    fn start(&mut self, nl: &mut Netlink, own: &SubnetKey) -> Result<(), String> {
        let ext = self.ext.clone();
        for (vtep, subnet) in [(&mut self.v4, own.ipv4), (&mut self.v6, own.ipv6)] {
            if let Some(v) = vtep {
                v.set_own(subnet);
                v.ensure(nl, &ext)?;
            }
        }
        Ok(())
    }

    fn mtu(&self) -> u32 {
        // One MTU for a pod's interface: it must fit every tunnel.
        self.vteps().map(Vtep::mtu).min().unwrap_or(0)
    }

    fn peer_data(&self, lease: &Lease) -> Result<PeerData, String> {
        check_type(lease, "vxlan")?;
        let a = &lease.attrs;
        let v4 = match lease.key.ipv4 {
            Some(_) => Some(vtep_mac(a.backend_data.as_ref(), "BackendData")?),
            None => None,
        };
        let v6 = match lease.key.ipv6 {
            Some(_) => Some(vtep_mac(a.backend_v6_data.as_ref(), "BackendV6Data")?),
            None => None,
        };
        Ok(PeerData::Vxlan { v4, v6 })
    }

    fn wanted(&self, peer: &Peer, out: &mut Set) {
        if let Some(v) = &self.v4 {
            self.family(v, peer, false, out);
        }
        if let Some(v) = &self.v6 {
            self.family(v, peer, true, out);
        }
    }

    fn entry_devices(&self) -> Vec<u32> {
        self.vteps().filter_map(Vtep::index).collect()
    }

    fn owns(&self, index: u32) -> bool {
        self.vteps().any(|v| v.index() == Some(index))
    }

    fn differs(&self, link: &Link) -> bool {
        self.vteps()
            .find(|v| v.index() == Some(link.index))
            .is_some_and(|v| !link.is_up() || !v.matches(link, &self.ext))
    }

    fn restore(&mut self, nl: &mut Netlink) -> Result<bool, String> {
        let ext = self.ext.clone();
        let mut anew = false;
        for v in [&mut self.v4, &mut self.v6].into_iter().flatten() {
            anew |= v.ensure(nl, &ext)?;
        }
        Ok(anew)
    }

    fn device_name(&self, index: u32) -> Option<String> {
        if index == self.ext.index {
            return Some(self.ext.name.clone());
        }
        self.vteps()
            .find(|v| v.index() == Some(index))
            .map(|v| v.name().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::SubnetKey;
    use crate::netconfig::NetConfig;
    use std::sync::Arc;

    fn ext() -> ExtIface {
        ExtIface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            ipv4: Some("192.168.1.1".parse().unwrap()),
            ipv6: Some("fd00::1".parse().unwrap()),
            networks: vec![
                "192.168.1.0/24".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
            ],
        }
    }

    fn backend(config: &str, public4: Option<&str>, public6: Option<&str>) -> Vxlan {
        let config = NetConfig::parse(config).unwrap();
        let ext = ext();
        let mut v = Vxlan::new(&Setup {
            config: &config,
            ext: &ext,
            public_ip: public4.map(|p| p.parse().unwrap()),
            public_ipv6: public6.map(|p| p.parse().unwrap()),
            udp_offload: false,
            macs: (None, None),
            health: Arc::new(crate::health::Health::new(std::time::Duration::from_secs(
                1,
            ))),
        })
        .unwrap();
        // As if the devices had been made.
        for (vtep, index) in [(&mut v.v4, 7), (&mut v.v6, 8)] {
            if let Some(t) = vtep {
                t.set_index(index);
            }
        }
        v
    }

    fn peer(key: &str, ip: &str, ip6: Option<&str>, v4: u8, v6: Option<u8>) -> Peer {
        Peer {
            key: SubnetKey::parse(key).unwrap(),
            public_ip: Some(ip.parse().unwrap()),
            public_ipv6: ip6.map(|i| i.parse().unwrap()),
            data: PeerData::Vxlan {
                v4: Some([2, 0, 0, 0, 0, v4]),
                v6: v6.map(|l| [2, 0, 0, 0, 6, l]),
            },
        }
    }

    const V4: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:244::/56","Backend":{"Type":"vxlan"}}"#;

    #[test]
    fn a_peer_needs_a_route_a_neighbour_and_an_fdb_entry_per_family() {
        let v = backend(V4, Some("203.0.113.1"), None);
        let mut w = Set::default();
        v.wanted(&peer("10.244.2.0-24", "192.168.1.2", None, 2, None), &mut w);
        assert_eq!(w.routes.len(), 1);
        let r = &w.routes[0];
        assert_eq!(r.gateway, Some("10.244.2.0".parse::<IpAddr>().unwrap()));
        assert!(r.onlink && r.oif == Some(7) && r.protocol == Some(routes::PROTOCOL));
        assert_eq!(w.neigh.len(), 1);
        assert_eq!(w.fdb[0].ip, "192.168.1.2".parse::<IpAddr>().unwrap());

        // Dual stack: the IPv6 subnet through the IPv6 VTEP, to the
        // peer's IPv6 address, with its IPv6 VTEP's MAC.
        let d = backend(DUAL, Some("192.168.1.1"), Some("fd00::1"));
        let mut w = Set::default();
        let p = peer(
            "10.244.2.0-24&fd00:244:0:2::-64",
            "192.168.1.2",
            Some("fd00::2"),
            2,
            Some(2),
        );
        d.wanted(&p, &mut w);
        assert_eq!(w.routes.len(), 2);
        assert_eq!(w.routes[1].oif, Some(8));
        assert_eq!(w.fdb[1].ifindex, 8);
        assert_eq!(w.fdb[1].ip, "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!(w.fdb[1].mac, [2, 0, 0, 0, 6, 2]);
        assert_eq!(d.mtu(), 1500 - OVERHEAD_V6, "a pod's MTU fits both tunnels");
        assert_eq!(d.device_name(8).as_deref(), Some("flannel-v6.1"));
    }

    #[test]
    fn the_lease_is_upstreams_dual_stack_layout() {
        let d = backend(DUAL, Some("203.0.113.1"), Some("2001:db8::1"));
        let a = d.attrs();
        let text = serde_json::to_string(&a).unwrap();
        let mac4 = format_mac(&stable_mac("203.0.113.1".parse().unwrap(), 1));
        let mac6 = format_mac(&stable_mac("2001:db8::1".parse().unwrap(), 1));
        assert_eq!(
            text,
            format!(
                r#"{{"PublicIP":"203.0.113.1","PublicIPv6":"2001:db8::1","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac4}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
            )
        );
        // The VTEPs send from the interface's addresses, not the public ones.
        assert_eq!(
            d.v4.as_ref().unwrap().local(),
            "192.168.1.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            d.v6.as_ref().unwrap().local(),
            "fd00::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_dual_stack_lease_without_its_ipv6_vtep_is_refused() {
        let d = backend(DUAL, Some("192.168.1.1"), Some("fd00::1"));
        let mut lease = Lease {
            key: SubnetKey::parse("10.244.2.0-24&fd00:244:0:2::-64").unwrap(),
            attrs: d.attrs(),
            expires: None,
            rev: 0,
        };
        assert!(d.peer_data(&lease).is_ok());
        lease.attrs.backend_v6_data = None;
        let why = d.peer_data(&lease).unwrap_err();
        assert!(why.contains("BackendV6Data"), "{why}");
    }

    #[test]
    fn direct_routing_uses_the_underlay_for_a_peer_on_the_segment() {
        let mut v = backend(V4, Some("192.168.1.1"), None);
        v.direct_routing = true;
        let mut w = Set::default();
        v.wanted(&peer("10.244.2.0-24", "192.168.1.2", None, 2, None), &mut w);
        assert!(w.neigh.is_empty() && w.fdb.is_empty());
        assert_eq!(w.routes[0].oif, Some(2));
        let mut w = Set::default();
        v.wanted(&peer("10.244.3.0-24", "10.9.9.9", None, 3, None), &mut w);
        assert_eq!(
            w.routes[0].oif,
            Some(7),
            "not on the segment: through the VTEP"
        );
    }
}
