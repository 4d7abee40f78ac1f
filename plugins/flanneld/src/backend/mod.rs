//! Data planes: how pod traffic reaches other nodes. A backend owns its
//! devices and says what the kernel must hold for a set of peers; the
//! agent compares that with the kernel (`diff`) and applies the changes.
//! Adding one is a module here and an arm in [`new`] (and the name in
//! `netconfig::BackendType`).

pub mod host_gw;
pub mod udp;
pub mod vxlan;
pub mod wireguard;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use netkit::Netlink;
use netkit::link::Link;

use crate::diff::Set;
use crate::health::Health;
use crate::iface::ExtIface;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::netconfig::{BackendType, NetConfig};
use crate::peers::{Peer, Table};

/// What a backend reads from a peer's lease beyond its subnets and
/// addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PeerData {
    /// Nothing (host-gw, udp).
    #[default]
    None,
    /// The MACs of its VTEPs, one per family (`BackendData`,
    /// `BackendV6Data`).
    Vxlan {
        v4: Option<[u8; 6]>,
        v6: Option<[u8; 6]>,
    },
    /// Its WireGuard key and port, one per family (`BackendData`,
    /// `BackendV6Data`).
    Wireguard {
        v4: Option<wireguard::PeerKey>,
        v6: Option<wireguard::PeerKey>,
    },
}

impl PeerData {
    /// The link-layer addresses a peer claims (no two peers may share one).
    pub fn macs(&self) -> impl Iterator<Item = [u8; 6]> {
        let (a, b) = match *self {
            PeerData::None | PeerData::Wireguard { .. } => (None, None),
            PeerData::Vxlan { v4, v6 } => (v4, v6.filter(|m| Some(*m) != v4)),
        };
        a.into_iter().chain(b)
    }
}

pub trait Backend: std::fmt::Debug + Send {
    /// What this node's lease says about it (known before the lease is
    /// taken: addresses, backend type and data).
    fn attrs(&self) -> LeaseAttrs;
    /// Makes the devices, with this node's subnets `own` on them; runs
    /// before subnet.env is written.
    fn start(&mut self, nl: &mut Netlink, own: &SubnetKey) -> Result<(), String>;
    /// The pods' MTU (subnet.env's `FLANNEL_MTU`).
    fn mtu(&self) -> u32;
    /// A peer's backend data from its lease, or why it is unusable.
    fn peer_data(&self, lease: &Lease) -> Result<PeerData, String>;
    /// What the kernel must hold for `peer`, added to `out`.
    fn wanted(&self, peer: &Peer, out: &mut Set);
    /// What the kernel must hold whatever the peers (a route for the whole
    /// network through a device), added to `out`.
    fn fixed(&self, _out: &mut Set) {}
    /// The peers changed: a backend that keeps peers of its own (udp's
    /// forwarding table) takes them from `peers`.
    fn peers_changed(&mut self, _peers: &Table) -> Result<(), String> {
        Ok(())
    }
    /// Devices whose neighbour and fdb entries are all this agent's.
    fn entry_devices(&self) -> Vec<u32> {
        Vec::new()
    }
    /// `index` is one of the backend's devices.
    fn owns(&self, index: u32) -> bool;
    /// A device of ours, as the kernel reports it, is not as configured
    /// (down, or changed).
    fn differs(&self, link: &Link) -> bool;
    /// Puts the devices back as configured; `true` when one was made anew
    /// or brought back up, which drops what it held (every entry is then
    /// programmed again).
    fn restore(&mut self, nl: &mut Netlink) -> Result<bool, String>;
    /// The name of a device of ours, for the log.
    fn device_name(&self, index: u32) -> Option<String>;
}

/// What a backend is made from.
#[derive(Debug)]
pub struct Setup<'a> {
    pub config: &'a NetConfig,
    /// The interface between nodes; its addresses are the local ones.
    pub ext: &'a ExtIface,
    /// The addresses published in the lease (`--public-ip`, else the
    /// interface's), for the families the config enables.
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    /// `--udp-offload`.
    pub udp_offload: bool,
    /// VTEP MACs an earlier run published (IPv4, IPv6), to keep.
    pub macs: (Option<[u8; 6]>, Option<[u8; 6]>),
    pub health: Arc<Health>,
}

impl Setup<'_> {
    /// The underlay's MTU: the config's `Backend.MTU`, else the interface's.
    pub fn underlay_mtu(&self) -> u32 {
        match self.config.backend.mtu {
            0 => self.ext.mtu,
            mtu => mtu,
        }
    }
}

/// The backend the config names.
pub fn new(setup: Setup<'_>) -> Result<Box<dyn Backend>, String> {
    Ok(match setup.config.backend.kind {
        BackendType::Vxlan => Box::new(vxlan::Vxlan::new(&setup)?),
        BackendType::HostGw => Box::new(host_gw::HostGw::new(&setup)?),
        BackendType::Udp => Box::new(udp::Udp::new(&setup)?),
        BackendType::Wireguard => Box::new(wireguard::Wireguard::new(&setup)?),
    })
}

/// Upstream's backend type, checked on a peer's lease.
pub fn check_type(lease: &Lease, kind: &str) -> Result<(), String> {
    if lease.attrs.backend_type == kind {
        Ok(())
    } else {
        Err(format!(
            "its backend is {:?}, this network's is {kind:?}",
            lease.attrs.backend_type
        ))
    }
}
