//! Links: look-up, bridge and veth creation, and the settings the plugins
//! change on them.

use std::os::fd::RawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth,
    InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};

use crate::netlink::{Netlink, NetlinkError};

/// What the plugins need to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub kind: Option<InfoKind>,
    /// The bridge (or other controller) it is attached to.
    pub master: Option<u32>,
    /// For a veth: the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    pub flags: LinkFlags,
    pub vlan_filtering: Option<bool>,
    pub hairpin: Option<bool>,
    pub isolated: Option<bool>,
    /// For a vxlan device: its settings.
    pub vxlan: Option<VxlanInfo>,
}

/// A vxlan device's settings as the kernel reports them (what an agent
/// compares with its config to tell whether the device must be remade).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub underlay: Option<u32>,
    pub local: Option<std::net::IpAddr>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
    pub gbp: bool,
    pub group: Option<std::net::IpAddr>,
}

impl VxlanInfo {
    fn from_opts(opts: Vec<InfoVxlan>) -> VxlanInfo {
        let mut v = VxlanInfo::default();
        for o in opts {
            match o {
                InfoVxlan::Id(id) => v.vni = Some(id),
                InfoVxlan::Link(l) => v.underlay = Some(l),
                InfoVxlan::Local(a) => v.local = Some(a.into()),
                InfoVxlan::Local6(a) => v.local = Some(a.into()),
                InfoVxlan::Group(a) => v.group = Some(a.into()),
                InfoVxlan::Group6(a) => v.group = Some(a.into()),
                InfoVxlan::Port(p) => v.port = Some(p),
                InfoVxlan::Learning(l) => v.learning = Some(l),
                InfoVxlan::Gbp => v.gbp = true,
                _ => {}
            }
        }
        v
    }
}

impl Link {
    /// A link, dumped or notified, as a [`Link`].
    pub(crate) fn from_message(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            kind: None,
            master: None,
            peer_index: None,
            flags: msg.header.flags,
            vlan_filtering: None,
            hairpin: None,
            isolated: None,
            vxlan: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Address(a) => link.mac = a,
                LinkAttribute::Mtu(m) => link.mtu = m,
                LinkAttribute::Controller(c) => link.master = Some(c),
                LinkAttribute::Link(l) => link.peer_index = Some(l),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => link.kind = Some(k),
                            LinkInfo::Data(InfoData::Bridge(opts)) => {
                                for o in opts {
                                    if let InfoBridge::VlanFiltering(v) = o {
                                        link.vlan_filtering = Some(v);
                                    }
                                }
                            }
                            LinkInfo::Data(InfoData::Vxlan(opts)) => {
                                link.vxlan = Some(VxlanInfo::from_opts(opts));
                            }
                            LinkInfo::PortData(InfoPortData::BridgePort(opts)) => {
                                for o in opts {
                                    match o {
                                        InfoBridgePort::HairpinMode(v) => link.hairpin = Some(v),
                                        InfoBridgePort::Isolated(v) => link.isolated = Some(v),
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    pub fn is_up(&self) -> bool {
        self.flags.contains(LinkFlags::Up)
    }

    pub fn is_promisc(&self) -> bool {
        self.flags.contains(LinkFlags::Promisc)
    }

    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (six hex pairs, `:` or `-` separated).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return None;
        }
        *slot = u8::from_str_radix(part, 16).ok()?;
    }
    Some(mac)
}

fn message(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

/// A VXLAN device as an overlay uses it: one VNI, unicast peers only
/// (learning off, entries programmed), bound to the underlay interface.
#[derive(Debug, Clone)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub underlay: u32,
    pub local: std::net::IpAddr,
    /// 0: the kernel's default port.
    pub port: u16,
    pub mtu: u32,
    pub mac: [u8; 6],
}

impl VxlanSpec<'_> {
    /// What differs between `have` and this spec in a way only a new
    /// device fixes, e.g. `dstport 8472 (want 4789)`; empty when the
    /// device can stay. The MTU is not in it: it changes in place.
    pub fn differences(&self, have: &Link) -> Vec<String> {
        let Some(v) = &have.vxlan else {
            return vec!["not a vxlan device".to_string()];
        };
        let mut out = Vec::new();
        let mut check = |what: &str, have: Option<String>, want: String| {
            if have.as_deref() != Some(want.as_str()) {
                let shown = have.unwrap_or_else(|| "none".into());
                out.push(format!("{what} {shown} (want {want})"));
            }
        };
        check("id", v.vni.map(|n| n.to_string()), self.vni.to_string());
        let port = if self.port == 0 {
            VXLAN_KERNEL_PORT
        } else {
            self.port
        };
        check("dstport", v.port.map(|p| p.to_string()), port.to_string());
        check(
            "local",
            v.local.map(|a| a.to_string()),
            self.local.to_string(),
        );
        check(
            "underlay ifindex",
            v.underlay.map(|i| i.to_string()),
            self.underlay.to_string(),
        );
        check("mac", Some(format_mac(&have.mac)), format_mac(&self.mac));
        if v.learning != Some(false) {
            out.push("learning on (want off)".into());
        }
        if v.gbp {
            out.push("gbp on (want off)".into());
        }
        if let Some(g) = v.group {
            out.push(format!("group {g} (want none)"));
        }
        out
    }
}

/// The kernel's vxlan port when none is given (not IANA's 4789, for history).
pub const VXLAN_KERNEL_PORT: u16 = 8472;

/// How a veth pair is made: the host end here, the peer in another namespace.
#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    pub peer_name: &'a str,
    /// The peer's namespace, by open fd.
    pub peer_netns: RawFd,
    pub mtu: Option<u32>,
    pub peer_mac: Option<[u8; 6]>,
}

impl Netlink {
    fn first_link(&mut self, msg: LinkMessage) -> Result<Option<Link>, NetlinkError> {
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut msg = message(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.first_link(msg)
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NetlinkError> {
        self.first_link(message(index))
    }

    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        Ok(self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a bridge; fails with EEXIST if the name is taken.
    pub fn add_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        vlan_filtering: bool,
    ) -> Result<(), NetlinkError> {
        let mut msg = message(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        if vlan_filtering {
            info.push(LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::VlanFiltering(true),
            ])));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(info));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    pub fn add_vxlan(&mut self, spec: &VxlanSpec<'_>) -> Result<(), NetlinkError> {
        let mut opts = vec![
            InfoVxlan::Id(spec.vni),
            InfoVxlan::Link(spec.underlay),
            InfoVxlan::Learning(false),
        ];
        match spec.local {
            std::net::IpAddr::V4(v4) => opts.push(InfoVxlan::Local(v4)),
            std::net::IpAddr::V6(v6) => opts.push(InfoVxlan::Local6(v6)),
        }
        if spec.port != 0 {
            opts.push(InfoVxlan::Port(spec.port));
        }
        let mut msg = message(0);
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        msg.attributes
            .push(LinkAttribute::Address(spec.mac.to_vec()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(opts)),
        ]));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// Creates a veth pair in one request, the peer born in its namespace.
    pub fn add_veth(&mut self, spec: &VethSpec<'_>) -> Result<(), NetlinkError> {
        let mut peer = message(0);
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer_name.to_string()));
        peer.attributes
            .push(LinkAttribute::NetNsFd(spec.peer_netns));
        if let Some(mtu) = spec.mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut msg = message(0);
        msg.attributes
            .push(LinkAttribute::IfName(spec.host_name.to_string()));
        if let Some(mtu) = spec.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    fn set_link(&mut self, msg: LinkMessage) -> Result<(), NetlinkError> {
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map(drop)
    }

    fn set_flag(&mut self, index: u32, flag: LinkFlags, on: bool) -> Result<(), NetlinkError> {
        let mut msg = message(index);
        msg.header.change_mask = flag;
        if on {
            msg.header.flags = flag;
        }
        self.set_link(msg)
    }

    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.set_flag(index, LinkFlags::Up, true)
    }

    pub fn set_down(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.set_flag(index, LinkFlags::Up, false)
    }

    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<(), NetlinkError> {
        self.set_flag(index, LinkFlags::Promisc, on)
    }

    pub fn set_master(&mut self, index: u32, master: u32) -> Result<(), NetlinkError> {
        let mut msg = message(index);
        msg.attributes.push(LinkAttribute::Controller(master));
        self.set_link(msg)
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut msg = message(index);
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(msg)
    }

    pub fn set_mac(&mut self, index: u32, mac: &[u8]) -> Result<(), NetlinkError> {
        let mut msg = message(index);
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.set_link(msg)
    }

    /// Bridge-port options of a link attached to a bridge.
    pub fn set_bridge_port(
        &mut self,
        index: u32,
        opts: Vec<InfoBridgePort>,
    ) -> Result<(), NetlinkError> {
        let mut msg = message(index);
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(opts)),
        ]));
        self.request(RouteNetlinkMessage::NewLink(msg), 0).map(drop)
    }

    pub fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.request(RouteNetlinkMessage::DelLink(message(index)), 0)
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("0a:58:0A:01:00:2a"),
            Some([0x0a, 0x58, 0x0a, 0x01, 0x00, 0x2a])
        );
        assert_eq!(
            parse_mac("0a-58-0a-01-00-2a"),
            Some([0x0a, 0x58, 0x0a, 0x01, 0x00, 0x2a])
        );
        for bad in [
            "",
            "0a:58:0a:01:00",
            "0a:58:0a:01:00:2a:00",
            "0a:58:0a:01:00:zz",
            "0a:58:0a:01:00:2",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0, 1, 0, 0x2a]),
            "0a:58:00:01:00:2a"
        );
    }

    fn spec() -> VxlanSpec<'static> {
        VxlanSpec {
            name: "flannel.7",
            vni: 7,
            underlay: 2,
            local: "192.168.77.10".parse().unwrap(),
            port: 0,
            mtu: 1450,
            mac: [2, 0, 0, 0, 0, 1],
        }
    }

    /// The device `spec` makes, as a dump reports it.
    fn made_by(w: &VxlanSpec<'_>) -> Link {
        let mut msg = LinkMessage::default();
        msg.header.index = 9;
        let mut link = Link::from_message(msg);
        link.mac = w.mac.to_vec();
        link.mtu = w.mtu;
        link.kind = Some(InfoKind::Vxlan);
        link.vxlan = Some(VxlanInfo {
            vni: Some(w.vni),
            underlay: Some(w.underlay),
            local: Some(w.local),
            port: Some(if w.port == 0 {
                VXLAN_KERNEL_PORT
            } else {
                w.port
            }),
            learning: Some(false),
            gbp: false,
            group: None,
        });
        link
    }

    #[test]
    fn a_matching_vxlan_device_stays_whatever_its_mtu() {
        let w = spec();
        let mut d = made_by(&w);
        assert!(w.differences(&d).is_empty());
        d.mtu = 1350;
        assert!(w.differences(&d).is_empty(), "the MTU changes in place");
    }

    #[test]
    fn every_vxlan_attribute_counts() {
        let w = spec();
        let d = made_by(&w);
        let port = VxlanSpec {
            port: 4789,
            ..w.clone()
        };
        assert_eq!(port.differences(&d), ["dstport 8472 (want 4789)"]);
        let local = VxlanSpec {
            local: "192.168.77.110".parse().unwrap(),
            ..w.clone()
        };
        assert_eq!(
            local.differences(&d),
            ["local 192.168.77.10 (want 192.168.77.110)"]
        );
        let mut others = d.clone();
        others.mac = vec![2, 0, 0, 0, 0, 2];
        others.vxlan = Some(VxlanInfo {
            vni: Some(8),
            underlay: Some(3),
            learning: Some(true),
            gbp: true,
            group: Some("239.1.1.1".parse().unwrap()),
            ..d.vxlan.clone().unwrap()
        });
        assert_eq!(
            w.differences(&others).len(),
            6,
            "{:?}",
            w.differences(&others)
        );
        let mut bridge = d;
        bridge.vxlan = None;
        assert_eq!(w.differences(&bridge), ["not a vxlan device"]);
    }
}
