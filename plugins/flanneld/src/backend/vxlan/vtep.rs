//! One VTEP device: made as configured, kept so, and made again when it
//! is gone or differs in anything but its MTU (changed in place).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netkit::Netlink;
use netkit::link::{Link, VxlanSpec};

use super::stable_mac;
use crate::iface::ExtIface;
use crate::netconfig::Backend as BackendConfig;

#[derive(Debug)]
pub struct Vtep {
    name: String,
    vni: u32,
    port: u16,
    mtu: u32,
    mac: [u8; 6],
    /// Where it sends from: the interface's own address.
    local: IpAddr,
    /// What the lease publishes (the same, or `--public-ip` behind NAT).
    public: IpAddr,
    /// This node's subnet of the family: the device's address.
    own: Option<IpNetwork>,
    /// The device's index, once it exists.
    index: Option<u32>,
}

impl Vtep {
    pub fn new(
        name: String,
        local: IpAddr,
        public: IpAddr,
        config: &BackendConfig,
        mtu: u32,
        kept: Option<[u8; 6]>,
    ) -> Vtep {
        Vtep {
            name,
            vni: config.vni,
            port: config.port,
            mtu,
            // One an earlier run published, else one derived from the
            // public address: the same across restarts either way.
            mac: kept.unwrap_or_else(|| stable_mac(public, config.vni)),
            local,
            public,
            own: None,
            index: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    pub fn public(&self) -> IpAddr {
        self.public
    }

    #[cfg(test)]
    pub fn local(&self) -> IpAddr {
        self.local
    }

    pub fn index(&self) -> Option<u32> {
        self.index
    }

    #[cfg(test)]
    pub fn set_index(&mut self, index: u32) {
        self.index = Some(index);
    }

    pub fn set_own(&mut self, subnet: Option<IpNetwork>) {
        self.own = subnet;
    }

    fn spec<'a>(&'a self, ext: &ExtIface) -> VxlanSpec<'a> {
        VxlanSpec {
            name: &self.name,
            vni: self.vni,
            underlay: ext.index,
            local: self.local,
            port: self.port,
            mtu: self.mtu,
            mac: self.mac,
        }
    }

    /// The device as the kernel reports it is as configured.
    pub fn matches(&self, dev: &Link, ext: &ExtIface) -> bool {
        dev.mtu == self.mtu && self.spec(ext).differences(dev).is_empty()
    }

    /// Makes sure the device exists as configured, up, with our address.
    /// Returns whether it was made or brought up (what it held is gone
    /// then). The index is forgotten when this fails.
    pub fn ensure(&mut self, nl: &mut Netlink, ext: &ExtIface) -> Result<bool, String> {
        let made = self.ensure_inner(nl, ext);
        match &made {
            Ok((index, _)) => self.index = Some(*index),
            Err(_) => self.index = None,
        }
        made.map(|(_, anew)| anew)
    }

    fn ensure_inner(&self, nl: &mut Netlink, ext: &ExtIface) -> Result<(u32, bool), String> {
        let name = &self.name;
        let err = |what: &str, e: netkit::NetlinkError| format!("{what} {name}: {e}");
        let spec = self.spec(ext);
        let kept = match nl
            .link_by_name(name)
            .map_err(|e| err("cannot look up", e))?
        {
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
                nl.link_by_name(name)
                    .map_err(|e| err("cannot look up", e))?
                    .ok_or_else(|| format!("{name} vanished right after it was made"))?
            }
        };
        if dev.mtu != self.mtu {
            nl.set_mtu(dev.index, self.mtu)
                .map_err(|e| err("cannot set the MTU of", e))?;
            crate::info!("{name}: MTU {} -> {}", dev.mtu, self.mtu);
        }
        if let Some(sn) = self.own {
            let prefix = if sn.is_ipv4() { 32 } else { 128 };
            let addrs = nl
                .addresses(Some(dev.index))
                .map_err(|e| err("cannot read addresses of", e))?;
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
}
