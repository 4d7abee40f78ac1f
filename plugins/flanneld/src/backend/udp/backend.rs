//! The udp backend as the agent sees it: the TUN device with this node's
//! addresses and a route for each cluster network through it, and the
//! forwarders' peer table, rebuilt when the peers change.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use netkit::Netlink;
use netkit::link::Link;

use super::{Entry, Local, TUN_NAME, Table, overhead};
use crate::backend::{Backend, PeerData, Setup, check_type};
use crate::diff::Set;
use crate::health::Health;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::netconfig::NetConfig;
use crate::peers::{Peer, Table as Peers};

#[derive(Debug)]
pub struct Udp {
    config: NetConfig,
    local: Local,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
    mtu: u32,
    health: Arc<Health>,
    /// Shared with the forwarding threads, once started.
    peers: Option<Arc<Table>>,
    /// This node's subnets: the device's addresses, and where peers' packets
    /// may go.
    own: Vec<ipnetwork::IpNetwork>,
    /// The device, once started.
    tun: Option<u32>,
}

impl Udp {
    pub fn new(setup: &Setup<'_>) -> Result<Udp, String> {
        let ext = setup.ext;
        let missing = |name: &str| {
            format!(
                "{} has no {name} address to send udp traffic from",
                ext.name
            )
        };
        // Sent from and bound to the interface's own addresses; the lease
        // publishes the public ones.
        let v4 = match setup.public_ip {
            Some(_) => Some(ext.ipv4.ok_or_else(|| missing("IPv4"))?),
            None => None,
        };
        let v6 = match setup.public_ipv6 {
            Some(_) => Some(ext.ipv6.ok_or_else(|| missing("IPv6"))?),
            None => None,
        };
        let local = Local {
            v4,
            v6,
            port: setup.config.backend.port,
            offload: setup.udp_offload,
        };
        Ok(Udp {
            config: setup.config.clone(),
            local,
            public_ip: setup.public_ip,
            public_ipv6: setup.public_ipv6,
            mtu: setup
                .underlay_mtu()
                .saturating_sub(overhead(local.v6.is_some())),
            health: setup.health.clone(),
            peers: None,
            own: Vec::new(),
            tun: None,
        })
    }

    fn ensure(&self, nl: &mut Netlink, index: u32) -> Result<bool, String> {
        ensure_device(nl, index, TUN_NAME, self.mtu, &self.own)
    }
}

/// A TUN device of ours up, with `own`'s addresses (one host address per
/// subnet) and `mtu`; `true` when it had to be brought up (its routes went
/// down with it).
pub fn ensure_device(
    nl: &mut Netlink,
    index: u32,
    name: &str,
    mtu: u32,
    own: &[ipnetwork::IpNetwork],
) -> Result<bool, String> {
    let err = |what: &str, e: netkit::NetlinkError| format!("{what} {name}: {e}");
    let dev = nl
        .link_by_index(index)
        .map_err(|e| err("cannot look up", e))?
        .ok_or_else(|| {
            format!("{name} was deleted: restart flanneld to make it again (pods on this node are cut off until then)")
        })?;
    if dev.mtu != mtu {
        nl.set_mtu(index, mtu)
            .map_err(|e| err("cannot set the MTU of", e))?;
    }
    let addrs = nl
        .addresses(Some(index))
        .map_err(|e| err("cannot read the addresses of", e))?;
    for own in own {
        let host = if own.is_ipv4() { 32 } else { 128 };
        if addrs
            .iter()
            .any(|a| a.addr == own.network() && a.prefix == host)
        {
            continue;
        }
        match nl.add_address(index, own.network(), host) {
            Err(e) if !e.is_exists() => return Err(err("cannot address", e)),
            _ => {}
        }
    }
    if dev.is_up() {
        return Ok(false);
    }
    nl.set_up(index).map_err(|e| err("cannot bring up", e))?;
    Ok(true)
}

impl Backend for Udp {
    fn attrs(&self) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: self.public_ip,
            public_ipv6: self.public_ipv6,
            backend_type: "udp".into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    fn start(&mut self, nl: &mut Netlink, own: &SubnetKey) -> Result<(), String> {
        self.own = [own.ipv4, own.ipv6].into_iter().flatten().collect();
        let local = self.local;
        let peers = Arc::new(Table::new(
            local.port,
            local.v4.is_some(),
            local.v6.is_some(),
            self.own.iter().copied(),
        ));
        super::start(local, peers.clone(), self.health.clone())?;
        self.peers = Some(peers);
        let tun = nl
            .link_by_name(TUN_NAME)
            .map_err(|e| format!("cannot look up {TUN_NAME}: {e}"))?
            .ok_or_else(|| format!("{TUN_NAME} vanished right after it was made"))?;
        self.tun = Some(tun.index);
        self.ensure(nl, tun.index)?;
        Ok(())
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn peer_data(&self, lease: &Lease) -> Result<PeerData, String> {
        // Upstream's udp writes no backend type.
        if !lease.attrs.backend_type.is_empty() {
            check_type(lease, "udp")?;
        }
        Ok(PeerData::None)
    }

    fn wanted(&self, _: &Peer, _: &mut Set) {}

    fn fixed(&self, out: &mut Set) {
        let Some(tun) = self.tun else {
            return;
        };
        for f in self.config.families() {
            let mut r = crate::routes::new(f.network.network(), f.network.prefix());
            r.oif = Some(tun);
            out.routes.push(r);
        }
    }

    fn peers_changed(&mut self, peers: &Peers) -> Result<(), String> {
        let Some(table) = &self.peers else {
            return Ok(());
        };
        let entries = peers
            .iter()
            .map(|p| Entry {
                subnet4: p.key.ipv4,
                subnet6: p.key.ipv6,
                public4: p.public_ip,
                public6: p.public_ipv6,
            })
            .collect();
        table.set(entries);
        Ok(())
    }

    fn owns(&self, index: u32) -> bool {
        self.tun == Some(index)
    }

    fn differs(&self, link: &Link) -> bool {
        self.owns(link.index) && (!link.is_up() || link.mtu != self.mtu)
    }

    fn restore(&mut self, nl: &mut Netlink) -> Result<bool, String> {
        match self.tun {
            Some(index) => self.ensure(nl, index),
            None => Ok(false),
        }
    }

    fn device_name(&self, index: u32) -> Option<String> {
        self.owns(index).then(|| TUN_NAME.to_string())
    }
}
