//! The external interface: the one inter-host traffic uses, and the
//! addresses this node is reached at.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netkit::Netlink;
use netlink_packet_route::address::AddressScope;

use crate::flags::Options;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtIface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// The interface's own networks (to tell peers on the same segment).
    pub networks: Vec<ipnetwork::IpNetwork>,
}

impl ExtIface {
    /// The interface with `ip` as its address of that family.
    pub fn with_address(mut self, ip: IpAddr) -> ExtIface {
        match ip {
            IpAddr::V4(v4) => self.ipv4 = Some(v4),
            IpAddr::V6(v6) => self.ipv6 = Some(v6),
        }
        self
    }

    /// `ip` is on one of the interface's networks (no router in between).
    pub fn on_link(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
    }
}

fn describe(nl: &mut Netlink, index: u32) -> Result<ExtIface, String> {
    let link = nl
        .link_by_index(index)
        .map_err(|e| format!("cannot read interface {index}: {e}"))?
        .ok_or_else(|| format!("interface {index} vanished"))?;
    let addrs = nl
        .addresses(Some(index))
        .map_err(|e| format!("cannot read addresses of {}: {e}", link.name))?;
    let global: Vec<_> = addrs
        .iter()
        .filter(|a| a.scope == AddressScope::Universe)
        .collect();
    let networks = global
        .iter()
        .filter_map(|a| ipnetwork::IpNetwork::new(a.addr, a.prefix).ok())
        .collect();
    let mut ipv4 = None;
    let mut ipv6 = None;
    for a in &global {
        match a.addr {
            IpAddr::V4(v4) if ipv4.is_none() => ipv4 = Some(v4),
            IpAddr::V6(v6) if ipv6.is_none() => ipv6 = Some(v6),
            _ => {}
        }
    }
    Ok(ExtIface {
        index,
        name: link.name,
        mtu: link.mtu,
        ipv4,
        ipv6,
        networks,
    })
}

/// `--iface` entries in order (name or address), else the interface of
/// the default route.
pub fn choose(nl: &mut Netlink, opts: &Options) -> Result<ExtIface, String> {
    for want in &opts.ifaces {
        match want.parse::<IpAddr>() {
            Ok(ip) => {
                let index = nl
                    .addresses(None)
                    .map_err(|e| format!("cannot list addresses: {e}"))?
                    .into_iter()
                    .find(|a| a.addr == ip)
                    .map(|a| a.index);
                if let Some(index) = index {
                    // As upstream: that address, not the interface's first.
                    return describe(nl, index).map(|ext| ext.with_address(ip));
                }
            }
            Err(_) => {
                let index = nl
                    .link_by_name(want)
                    .map_err(|e| format!("cannot look up {want}: {e}"))?
                    .map(|l| l.index);
                if let Some(index) = index {
                    return describe(nl, index);
                }
            }
        }
    }
    // As upstream: each pattern against the addresses first, then the names.
    for pattern in &opts.iface_regex {
        let re =
            regex::Regex::new(pattern).map_err(|e| format!("--iface-regex {pattern:?}: {e}"))?;
        let addrs = nl
            .addresses(None)
            .map_err(|e| format!("cannot list addresses: {e}"))?;
        let by_addr = addrs
            .iter()
            .filter(|a| a.scope == AddressScope::Universe)
            .find(|a| re.is_match(&a.addr.to_string()))
            .map(|a| a.index);
        let index = match by_addr {
            Some(i) => Some(i),
            None => nl
                .links()
                .map_err(|e| format!("cannot list links: {e}"))?
                .into_iter()
                .find(|l| l.name != "lo" && re.is_match(&l.name))
                .map(|l| l.index),
        };
        if let Some(index) = index {
            return describe(nl, index);
        }
    }
    if !opts.ifaces.is_empty() || !opts.iface_regex.is_empty() {
        return Err(format!(
            "no interface matches --iface {} / --iface-regex {} on this host",
            opts.ifaces.join(","),
            opts.iface_regex.join(",")
        ));
    }
    for v4 in [true, false] {
        let routes = nl
            .routes(v4)
            .map_err(|e| format!("cannot list routes: {e}"))?;
        if let Some(oif) = routes
            .iter()
            .find(|r| r.prefix == 0 && r.table == Some(254))
            .and_then(|r| r.oif)
        {
            return describe(nl, oif);
        }
    }
    Err("no default route to pick the external interface from: use --iface".into())
}
