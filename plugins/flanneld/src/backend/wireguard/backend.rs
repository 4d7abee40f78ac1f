//! The wireguard backend as the agent sees it: its devices (one per
//! family in `separate` mode, else one for both), each with this node's
//! addresses and a route for its cluster network(s), and each device's
//! peer table, rebuilt from the leases when they change.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use boringtun::x25519::{PublicKey, StaticSecret};
use ipnetwork::IpNetwork;
use netkit::Netlink;
use netkit::link::Link;

use super::forward::{self, Ctx};
use super::peers::{Entry, Identity, Table};
use super::{DEVICE, DEVICE_V6, OVERHEAD, PeerKey, backend_data, key, peer_key};
use crate::backend::udp::{self, Queue, clone_sockets, ensure_device};
use crate::backend::{Backend, PeerData, Setup, check_type};
use crate::diff::Set;
use crate::health::Health;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::netconfig::{NetConfig, WgMode};
use crate::peers::{Peer, Table as Peers};

/// The private key, never printed.
struct Secret(StaticSecret);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Which inner families a device carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carries {
    V4,
    V6,
    Both,
}

#[derive(Debug)]
struct Device {
    name: &'static str,
    carries: Carries,
    /// Where its sockets listen (the interface's own addresses).
    binds: Vec<SocketAddr>,
    /// This node's subnets it carries: its addresses, and the only
    /// destinations peers may send to through it.
    own: Vec<IpNetwork>,
    table: Option<Arc<Table>>,
    index: Option<u32>,
}

impl Device {
    fn carries(&self, n: &IpNetwork) -> bool {
        match self.carries {
            Carries::V4 => n.is_ipv4(),
            Carries::V6 => n.is_ipv6(),
            Carries::Both => true,
        }
    }
}

#[derive(Debug)]
pub struct Wireguard {
    config: NetConfig,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
    /// The interface's own addresses (auto mode asks whether they are
    /// private, as upstream does).
    ext4: Option<Ipv4Addr>,
    ext6: Option<Ipv6Addr>,
    secret: Secret,
    public: PublicKey,
    devices: Vec<Device>,
    mtu: u32,
    offload: bool,
    health: Arc<Health>,
}

impl Wireguard {
    pub fn new(setup: &Setup<'_>) -> Result<Wireguard, String> {
        let ext = setup.ext;
        let wg = &setup.config.backend.wg;
        let missing = |name: &str| {
            format!(
                "{} has no {name} address to send wireguard traffic from",
                ext.name
            )
        };
        let v4 = setup.config.ipv4.is_some();
        let v6 = setup.config.ipv6.is_some();
        let bind4 = |p: u16| -> Result<SocketAddr, String> {
            Ok(SocketAddr::new(
                IpAddr::V4(ext.ipv4.ok_or_else(|| missing("IPv4"))?),
                p,
            ))
        };
        let bind6 = |p: u16| -> Result<SocketAddr, String> {
            Ok(SocketAddr::new(
                IpAddr::V6(ext.ipv6.ok_or_else(|| missing("IPv6"))?),
                p,
            ))
        };
        let dev = |name, carries, binds| Device {
            name,
            carries,
            binds,
            own: Vec::new(),
            table: None,
            index: None,
        };
        let mut devices = Vec::new();
        match wg.mode {
            WgMode::Separate => {
                if v4 {
                    devices.push(dev(DEVICE, Carries::V4, vec![bind4(wg.listen_port)?]));
                }
                if v6 {
                    devices.push(dev(DEVICE_V6, Carries::V6, vec![bind6(wg.listen_port_v6)?]));
                }
            }
            WgMode::Ipv4 => devices.push(dev(DEVICE, Carries::Both, vec![bind4(wg.listen_port)?])),
            WgMode::Ipv6 => {
                devices.push(dev(DEVICE, Carries::Both, vec![bind6(wg.listen_port_v6)?]))
            }
            WgMode::Auto => {
                // Each port where the lease says it is.
                let mut binds = Vec::new();
                if ext.ipv4.is_some() {
                    binds.push(bind4(wg.listen_port)?);
                }
                if ext.ipv6.is_some() {
                    binds.push(bind6(wg.listen_port_v6)?);
                }
                if binds.is_empty() {
                    return Err(missing("IP"));
                }
                devices.push(dev(DEVICE, Carries::Both, binds));
            }
        }
        let path = key::path();
        let (secret, public) = key::load_or_create(&path)?;
        crate::info!(
            "wireguard: public key {} (private key in {}), mode {}",
            key::encode(public.as_bytes()),
            path.display(),
            wg.mode.as_str()
        );
        Ok(Wireguard {
            config: setup.config.clone(),
            public_ip: setup.public_ip,
            public_ipv6: setup.public_ipv6,
            ext4: ext.ipv4,
            ext6: ext.ipv6,
            secret: Secret(secret),
            public,
            devices,
            mtu: setup.underlay_mtu().saturating_sub(OVERHEAD),
            offload: setup.udp_offload,
            health: setup.health.clone(),
        })
    }

    /// Where a peer is sent to on a device carrying both families, by
    /// mode (auto: upstream's choice).
    fn endpoint_both(
        &self,
        p: &Peer,
        k4: Option<PeerKey>,
        k6: Option<PeerKey>,
    ) -> Option<SocketAddr> {
        let a4 = p
            .public_ip
            .zip(k4)
            .map(|(ip, k)| SocketAddr::new(IpAddr::V4(ip), k.port));
        let a6 = p
            .public_ipv6
            .zip(k6.or(k4))
            .map(|(ip, k)| SocketAddr::new(IpAddr::V6(ip), k.port));
        match self.config.backend.wg.mode {
            WgMode::Ipv6 => a6,
            WgMode::Auto => {
                let six = match (p.public_ip, p.public_ipv6) {
                    (_, None) => false,
                    (Some(ip4), _) if !ip4.is_private() && self.ext4.is_some() => false,
                    (_, Some(ip6)) => !private6(ip6) && self.ext6.is_some_and(|e| !private6(e)),
                };
                if six { a6.or(a4) } else { a4.or(a6) }
            }
            _ => a4,
        }
    }

    fn entries(&self, d: &Device, peers: &Peers) -> Vec<Entry> {
        let mut out = Vec::new();
        for p in peers.iter() {
            let PeerData::Wireguard { v4, v6 } = p.data else {
                continue;
            };
            let subnets: Vec<IpNetwork> = [p.key.ipv4, p.key.ipv6]
                .into_iter()
                .flatten()
                .filter(|n| d.carries(n))
                .collect();
            let (key, endpoint) = match d.carries {
                Carries::V4 => (
                    v4.map(|k| k.key),
                    p.public_ip
                        .zip(v4)
                        .map(|(ip, k)| SocketAddr::new(IpAddr::V4(ip), k.port)),
                ),
                Carries::V6 => (
                    v6.map(|k| k.key),
                    p.public_ipv6
                        .zip(v6)
                        .map(|(ip, k)| SocketAddr::new(IpAddr::V6(ip), k.port)),
                ),
                Carries::Both => (v4.or(v6).map(|k| k.key), self.endpoint_both(p, v4, v6)),
            };
            if let (Some(key), Some(endpoint), false) = (key, endpoint, subnets.is_empty()) {
                out.push(Entry {
                    key,
                    endpoint,
                    subnets,
                });
            }
        }
        out
    }
}

/// Go's `IsPrivate` for IPv6: fc00::/7.
fn private6(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xfe00 == 0xfc00
}

impl Backend for Wireguard {
    fn attrs(&self) -> LeaseAttrs {
        let wg = &self.config.backend.wg;
        let k = self.public.as_bytes();
        LeaseAttrs {
            public_ip: self.public_ip,
            public_ipv6: self.public_ipv6,
            backend_type: "wireguard".into(),
            // Keyed by the families the network enables, as upstream.
            backend_data: self
                .config
                .ipv4
                .as_ref()
                .map(|_| backend_data(k, wg.listen_port)),
            backend_v6_data: self
                .config
                .ipv6
                .as_ref()
                .map(|_| backend_data(k, wg.listen_port_v6)),
        }
    }

    fn start(&mut self, nl: &mut Netlink, own: &SubnetKey) -> Result<(), String> {
        let wg = &self.config.backend.wg;
        let mut timers = Vec::new();
        for (n, d) in self.devices.iter_mut().enumerate() {
            d.own = [own.ipv4, own.ipv6]
                .into_iter()
                .flatten()
                .filter(|n| d.carries(n))
                .collect();
            let identity = Identity {
                secret: self.secret.0.clone(),
                public: self.public,
                psk: wg.psk,
                keepalive: (wg.keepalive > 0).then_some(wg.keepalive),
            };
            let table = Arc::new(Table::new(identity, d.own.iter().copied()));
            let (queues, off) = udp::open(d.name, "wireguard", &d.binds, self.offload)?;
            let ctx = Ctx {
                health: self.health.clone(),
                off,
                dev: d.name,
                mtu: self.mtu as usize,
            };
            for Queue { tun, socks } in queues {
                let copies = clone_sockets(&socks)?;
                for sock in [copies.v4, copies.v6].into_iter().flatten() {
                    let (t, tb, c, replies) = (
                        tun.try_clone().map_err(|e| e.to_string())?,
                        table.clone(),
                        ctx.clone(),
                        clone_sockets(&socks)?,
                    );
                    udp::spawn("wg-rx", move || {
                        forward::network_to_device(sock, replies, t, tb, c)
                    })?;
                }
                // The timers send from the first queue's sockets.
                if timers.len() == n {
                    timers.push((table.clone(), clone_sockets(&socks)?, ctx.clone()));
                }
                let (r, c) = (table.reader(), ctx.clone());
                udp::spawn("wg-tx", move || {
                    forward::device_to_network(tun, socks, r, c)
                })?;
            }
            let link = nl
                .link_by_name(d.name)
                .map_err(|e| format!("cannot look up {}: {e}", d.name))?
                .ok_or_else(|| format!("{} vanished right after it was made", d.name))?;
            d.index = Some(link.index);
            d.table = Some(table);
            ensure_device(nl, link.index, d.name, self.mtu, &d.own)?;
        }
        let health = self.health.clone();
        udp::spawn("wg-timers", move || forward::timers(timers, health))?;
        Ok(())
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn peer_data(&self, lease: &Lease) -> Result<PeerData, String> {
        check_type(lease, "wireguard")?;
        let wg = &self.config.backend.wg;
        let a = &lease.attrs;
        let v4 = match lease.key.ipv4 {
            Some(_) => Some(peer_key(
                a.backend_data.as_ref(),
                "BackendData",
                wg.listen_port,
            )?),
            None => None,
        };
        let v6 = match lease.key.ipv6 {
            Some(_) => Some(peer_key(
                a.backend_v6_data.as_ref(),
                "BackendV6Data",
                wg.listen_port_v6,
            )?),
            None => None,
        };
        if let (Some(a), Some(b)) = (v4, v6)
            && a.key != b.key
        {
            return Err("its BackendData and BackendV6Data name different keys".into());
        }
        Ok(PeerData::Wireguard { v4, v6 })
    }

    fn wanted(&self, _: &Peer, _: &mut Set) {}

    fn fixed(&self, out: &mut Set) {
        for d in &self.devices {
            let Some(index) = d.index else {
                continue;
            };
            for f in self.config.families() {
                if d.carries(&f.network) {
                    let mut r = crate::routes::new(f.network.network(), f.network.prefix());
                    r.oif = Some(index);
                    out.routes.push(r);
                }
            }
        }
    }

    fn peers_changed(&mut self, peers: &Peers) -> Result<(), String> {
        for d in &self.devices {
            if let Some(t) = &d.table {
                t.set(self.entries(d, peers));
            }
        }
        Ok(())
    }

    fn owns(&self, index: u32) -> bool {
        self.devices.iter().any(|d| d.index == Some(index))
    }

    fn differs(&self, link: &Link) -> bool {
        self.owns(link.index) && (!link.is_up() || link.mtu != self.mtu)
    }

    fn restore(&mut self, nl: &mut Netlink) -> Result<bool, String> {
        let mut again = false;
        for d in &self.devices {
            if let Some(index) = d.index {
                again |= ensure_device(nl, index, d.name, self.mtu, &d.own)?;
            }
        }
        Ok(again)
    }

    fn device_name(&self, index: u32) -> Option<String> {
        self.devices
            .iter()
            .find(|d| d.index == Some(index))
            .map(|d| d.name.to_string())
    }
}
