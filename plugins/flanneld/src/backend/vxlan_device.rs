//! The vxlan device as the kernel has it, compared with what the config
//! asks, attribute by attribute: a device made by an earlier run with
//! another port, underlay or address must not be kept just because its
//! name and MAC match.

use std::net::IpAddr;

use netkit::{Netlink, NetlinkError};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};

/// The kernel's port when none is given (not IANA's 4789, for history).
pub const KERNEL_DEFAULT_PORT: u16 = 8472;

/// What we compare of a device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub is_vxlan: bool,
    pub up: bool,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub vni: Option<u32>,
    pub underlay: Option<u32>,
    pub local: Option<IpAddr>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
    pub gbp: bool,
    pub group: Option<IpAddr>,
}

/// The device as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub vni: u32,
    pub underlay: u32,
    pub local: IpAddr,
    /// 0: the kernel's default.
    pub port: u16,
    pub mtu: u32,
    pub mac: [u8; 6],
}

fn from_message(msg: LinkMessage) -> Device {
    let mut d = Device {
        index: msg.header.index,
        up: msg.header.flags.contains(LinkFlags::Up),
        ..Device::default()
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::Address(a) => d.mac = a,
            LinkAttribute::Mtu(m) => d.mtu = m,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => d.is_vxlan = k == InfoKind::Vxlan,
                        LinkInfo::Data(InfoData::Vxlan(opts)) => {
                            for o in opts {
                                match o {
                                    InfoVxlan::Id(v) => d.vni = Some(v),
                                    InfoVxlan::Link(l) => d.underlay = Some(l),
                                    InfoVxlan::Local(a) => d.local = Some(a.into()),
                                    InfoVxlan::Local6(a) => d.local = Some(a.into()),
                                    InfoVxlan::Group(a) => d.group = Some(a.into()),
                                    InfoVxlan::Group6(a) => d.group = Some(a.into()),
                                    InfoVxlan::Port(p) => d.port = Some(p),
                                    InfoVxlan::Learning(l) => d.learning = Some(l),
                                    InfoVxlan::Gbp => d.gbp = true,
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
    d
}

/// The device called `name`, if there is one.
pub fn read(nl: &mut Netlink, name: &str) -> Result<Option<Device>, NetlinkError> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    match nl.request(RouteNetlinkMessage::GetLink(msg), 0) {
        Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(from_message(l)),
            _ => None,
        })),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// What differs in a way only a new device fixes, e.g. `dstport 8472
/// (want 4789)`; empty when the device can stay. The MTU is not in it: it
/// changes in place.
pub fn differences(have: &Device, want: &Want) -> Vec<String> {
    let mut out = Vec::new();
    if !have.is_vxlan {
        out.push("not a vxlan device".to_string());
        return out;
    }
    let show = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    let mut check = |what: &str, have: Option<String>, want: String| {
        if have.as_deref() != Some(want.as_str()) {
            out.push(format!("{what} {} (want {want})", show(have)));
        }
    };
    check("id", have.vni.map(|v| v.to_string()), want.vni.to_string());
    let port = if want.port == 0 {
        KERNEL_DEFAULT_PORT
    } else {
        want.port
    };
    check(
        "dstport",
        have.port.map(|p| p.to_string()),
        port.to_string(),
    );
    check(
        "local",
        have.local.map(|a| a.to_string()),
        want.local.to_string(),
    );
    check(
        "underlay ifindex",
        have.underlay.map(|i| i.to_string()),
        want.underlay.to_string(),
    );
    check(
        "mac",
        Some(netkit::link::format_mac(&have.mac)),
        netkit::link::format_mac(&want.mac),
    );
    if have.learning != Some(false) {
        out.push("learning on (want off)".into());
    }
    if have.gbp {
        out.push("gbp on (want off)".into());
    }
    if let Some(g) = have.group {
        out.push(format!("group {g} (want none)"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want() -> Want {
        Want {
            vni: 7,
            underlay: 2,
            local: "192.168.77.10".parse().unwrap(),
            port: 0,
            mtu: 1450,
            mac: [2, 0, 0, 0, 0, 1],
        }
    }

    fn made_by(w: &Want) -> Device {
        Device {
            index: 9,
            is_vxlan: true,
            up: true,
            mac: w.mac.to_vec(),
            mtu: w.mtu,
            vni: Some(w.vni),
            underlay: Some(w.underlay),
            local: Some(w.local),
            port: Some(if w.port == 0 {
                KERNEL_DEFAULT_PORT
            } else {
                w.port
            }),
            learning: Some(false),
            gbp: false,
            group: None,
        }
    }

    #[test]
    fn a_matching_device_stays_whatever_its_mtu() {
        let w = want();
        let mut d = made_by(&w);
        assert!(differences(&d, &w).is_empty());
        d.mtu = 1350;
        assert!(differences(&d, &w).is_empty(), "the MTU changes in place");
    }

    #[test]
    fn every_attribute_counts() {
        let w = want();
        let d = made_by(&w);
        let port = Want {
            port: 4789,
            ..w.clone()
        };
        assert_eq!(differences(&d, &port), ["dstport 8472 (want 4789)"]);
        let local = Want {
            local: "192.168.77.110".parse().unwrap(),
            ..w.clone()
        };
        assert_eq!(
            differences(&d, &local),
            ["local 192.168.77.10 (want 192.168.77.110)"]
        );
        let others = Device {
            vni: Some(8),
            underlay: Some(3),
            learning: Some(true),
            gbp: true,
            group: Some("239.1.1.1".parse().unwrap()),
            mac: vec![2, 0, 0, 0, 0, 2],
            ..d.clone()
        };
        assert_eq!(
            differences(&others, &w).len(),
            6,
            "{:?}",
            differences(&others, &w)
        );
        let bridge = Device {
            is_vxlan: false,
            ..d
        };
        assert_eq!(differences(&bridge, &w), ["not a vxlan device"]);
    }
}
