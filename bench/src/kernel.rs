//! What a node's kernel holds for its vxlan peers, read over netlink from
//! inside the node's namespace, black box: no assumption on who made it.
//!
//! A peer (a lease: subnet, public IP, VTEP MAC) is programmed when the
//! node has
//! - a route to the subnet through the vxlan device with the subnet's
//!   address as gateway (`10.100.3.0/24 via 10.100.3.0 dev flannel.1
//!   onlink`, whatever its protocol: ours marks routes `proto 102`,
//!   upstream's are `boot`),
//! - a neighbour entry on the device: subnet address -> VTEP MAC,
//! - a forwarding (fdb) entry on the device: VTEP MAC -> public IP,
//!
//! exactly as both upstream flannel and ours program vxlan. "Equal to the
//! store" is that for every peer, and no such route, neighbour or unicast
//! fdb entry besides.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use conformance::TestNetns;
use netkit::neigh::Entry;
use netkit::route::{Route, RouteFilter};
use netkit::{Netlink, NetlinkError};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::libc;

pub type Mac = [u8; 6];

/// What the kernel should hold for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    /// The subnet's network address (its length is the network config's).
    pub subnet: Ipv4Addr,
    pub public: Ipv4Addr,
    pub mac: Mac,
}

pub fn format_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

/// The cluster network: which routes are peer routes.
#[derive(Debug, Clone, Copy)]
pub struct ClusterNet {
    pub base: Ipv4Addr,
    pub prefix: u8,
    pub subnet_len: u8,
}

impl ClusterNet {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        };
        u32::from(ip) & mask == u32::from(self.base) & mask
    }
}

/// The expected state, indexed for comparison.
#[derive(Debug, Default, Clone)]
pub struct Want {
    /// The subnets (a map, for `compare`).
    routes: BTreeMap<Ipv4Addr, ()>,
    neigh: BTreeMap<Ipv4Addr, Mac>,
    fdb: BTreeMap<Mac, Ipv4Addr>,
}

impl Want {
    pub fn of<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> Want {
        let mut w = Want::default();
        for p in peers {
            w.routes.insert(p.subnet, ());
            w.neigh.insert(p.subnet, p.mac);
            w.fdb.insert(p.mac, p.public);
        }
        w
    }
}

/// How the kernel differs from what is wanted: counts, and one example of
/// each kind for the report.
#[derive(Debug, Default, Clone)]
pub struct Diff {
    pub no_device: bool,
    pub routes_missing: usize,
    pub routes_extra: usize,
    pub neigh_missing: usize,
    pub neigh_extra: usize,
    pub fdb_missing: usize,
    pub fdb_extra: usize,
    pub examples: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        !self.no_device
            && self.routes_missing
                + self.routes_extra
                + self.neigh_missing
                + self.neigh_extra
                + self.fdb_missing
                + self.fdb_extra
                == 0
    }

    pub fn summary(&self) -> String {
        if self.no_device {
            return "no vxlan device".into();
        }
        let mut parts = Vec::new();
        for (what, missing, extra) in [
            ("routes", self.routes_missing, self.routes_extra),
            ("neighbours", self.neigh_missing, self.neigh_extra),
            ("fdb entries", self.fdb_missing, self.fdb_extra),
        ] {
            if missing + extra > 0 {
                parts.push(format!("{what}: {missing} missing or wrong, {extra} extra"));
            }
        }
        if parts.is_empty() {
            return "equal".into();
        }
        let mut s = parts.join("; ");
        if !self.examples.is_empty() {
            s.push_str(&format!(" (e.g. {})", self.examples.join(", ")));
        }
        s
    }
}

/// Per kind, how `have` differs from `want`: (missing or wrong, extra,
/// an example).
fn compare<K: Ord + Copy, V: PartialEq + Copy>(
    want: &BTreeMap<K, V>,
    have: &BTreeMap<K, V>,
    show: impl Fn(&K) -> String,
) -> (usize, usize, Option<String>) {
    let mut missing = 0;
    let mut example = None;
    for (k, v) in want {
        if have.get(k) != Some(v) {
            missing += 1;
            example.get_or_insert_with(|| format!("{} missing or wrong", show(k)));
        }
    }
    let mut extra = 0;
    for k in have.keys() {
        if !want.contains_key(k) {
            extra += 1;
            example.get_or_insert_with(|| format!("{} extra", show(k)));
        }
    }
    (missing, extra, example)
}

/// One kind's dump (with a count of entries that are extra whatever is
/// wanted) compared with `want`, into its missing and extra counts and the
/// examples. A dump interrupted by concurrent changes counts as one
/// missing. Whether to look no further: the dump was interrupted, or the
/// kind differs and `cheap`.
fn tally<K: Ord + Copy, V: PartialEq + Copy>(
    dump: Result<(BTreeMap<K, V>, usize), NetlinkError>,
    want: &BTreeMap<K, V>,
    what: &str,
    show: impl Fn(&K) -> String,
    cheap: bool,
    (missing, extra, examples): (&mut usize, &mut usize, &mut Vec<String>),
) -> Result<bool, String> {
    let (have, more) = match dump {
        Ok(d) => d,
        Err(e) if e.is_interrupted() => {
            *missing = 1;
            return Ok(true);
        }
        Err(e) => return Err(nl_err(&format!("cannot list {what}"), e)),
    };
    let (m, x, ex) = compare(want, &have, show);
    *missing = m;
    *extra = x + more;
    examples.extend(ex);
    Ok(cheap && m + x + more > 0)
}

/// A netlink socket inside one node's namespace, and the device to look at.
#[derive(Debug)]
pub struct Kernel {
    nl: Netlink,
    device: String,
    net: ClusterNet,
}

fn nl_err(what: &str, e: NetlinkError) -> String {
    format!("{what}: {e}")
}

impl Kernel {
    pub fn open(ns: &TestNetns, device: &str, net: ClusterNet) -> Result<Kernel, String> {
        let nl = netkit::NetNs::open(ns.path())
            .and_then(|n| n.socket())
            .map_err(|e| e.to_string())?;
        Ok(Kernel {
            nl,
            device: device.to_string(),
            net,
        })
    }

    /// The vxlan device's index, if it is there.
    pub fn device(&mut self) -> Result<Option<u32>, String> {
        Ok(self
            .nl
            .link_by_name(&self.device)
            .map_err(|e| nl_err("cannot look up the vxlan device", e))?
            .map(|l| l.index))
    }

    /// Peer routes on the device: subnet -> the route as dumped. Routes
    /// into the cluster network of another shape are extra: keyed by
    /// their destination too, with gateway None.
    fn routes(&mut self, dev: u32) -> Result<BTreeMap<Ipv4Addr, Route>, NetlinkError> {
        let filter = RouteFilter {
            table: Some(254),
            oif: Some(dev),
            protocol: None,
        };
        let routes = self.nl.routes_filtered(true, &filter)?;
        let mut out = BTreeMap::new();
        for r in routes {
            let IpAddr::V4(dst) = r.dst else { continue };
            if r.oif == Some(dev) && self.net.contains(dst) {
                out.insert(dst, r);
            }
        }
        Ok(out)
    }

    fn is_peer_route(&self, r: &Route) -> bool {
        r.prefix == self.net.subnet_len && r.gateway == Some(r.dst)
    }

    fn neighbours(&mut self, dev: u32) -> Result<BTreeMap<Ipv4Addr, Mac>, NetlinkError> {
        let list = self.nl.neighbours(dev)?;
        Ok(list
            .into_iter()
            .filter_map(|e| match e.ip {
                IpAddr::V4(ip) => Some((ip, <Mac>::try_from(e.mac.as_slice()).ok()?)),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    fn fdb(&mut self, dev: u32) -> Result<BTreeMap<Mac, Ipv4Addr>, NetlinkError> {
        let list = self.nl.fdb(dev)?;
        Ok(list
            .into_iter()
            .filter_map(|e| {
                let mac = <Mac>::try_from(e.mac.as_slice()).ok()?;
                // Unicast entries only (the all-zeros default is not a peer's).
                if mac[0] & 1 == 1 || mac == [0; 6] {
                    return None;
                }
                match e.ip {
                    IpAddr::V4(ip) => Some((mac, ip)),
                    IpAddr::V6(_) => None,
                }
            })
            .collect())
    }

    /// How the kernel differs from `want`. `cheap`: stop at the first kind
    /// that differs (routes, then neighbours, then fdb), for polling.
    /// A dump interrupted by concurrent changes counts as a difference.
    pub fn diff(&mut self, want: &Want, cheap: bool) -> Result<Diff, String> {
        let mut d = Diff::default();
        let Some(dev) = self.device()? else {
            d.no_device = true;
            return Ok(d);
        };
        let routes = self.routes(dev).map(|all| {
            let shaped: BTreeMap<Ipv4Addr, ()> = all
                .iter()
                .filter(|(_, r)| self.is_peer_route(r))
                .map(|(k, _)| (*k, ()))
                .collect();
            // A route into the cluster network of another shape is extra too.
            let other = all.len() - shaped.len();
            (shaped, other)
        });
        let counts = (&mut d.routes_missing, &mut d.routes_extra, &mut d.examples);
        let show = |ip: &Ipv4Addr| format!("route {ip}");
        if tally(routes, &want.routes, "routes", show, cheap, counts)? {
            return Ok(d);
        }
        let neigh = self.neighbours(dev).map(|n| (n, 0));
        let counts = (&mut d.neigh_missing, &mut d.neigh_extra, &mut d.examples);
        let show = |ip: &Ipv4Addr| format!("neighbour {ip}");
        if tally(neigh, &want.neigh, "neighbours", show, cheap, counts)? {
            return Ok(d);
        }
        let fdb = self.fdb(dev).map(|f| (f, 0));
        let counts = (&mut d.fdb_missing, &mut d.fdb_extra, &mut d.examples);
        let show = |mac: &Mac| format!("fdb {}", format_mac(mac));
        tally(fdb, &want.fdb, "fdb entries", show, cheap, counts)?;
        Ok(d)
    }

    /// The peer route to `subnet`, looked up alone (the FIB entry the
    /// kernel would use for the subnet's address), if it is one.
    pub fn route_to(&mut self, dev: u32, subnet: Ipv4Addr) -> Result<Option<Route>, String> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 32;
        msg.header.flags = RouteFlags::FibMatch;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(subnet)));
        let replies = match self.nl.request(RouteNetlinkMessage::GetRoute(msg), 0) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.errno(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENOENT | libc::ESRCH)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(nl_err("cannot look up a route", e)),
        };
        for reply in replies {
            let RouteNetlinkMessage::NewRoute(m) = reply else {
                continue;
            };
            let mut r = Route::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                m.header.destination_prefix_length,
            );
            r.protocol = Some(u8::from(m.header.protocol));
            r.onlink = m.header.flags.contains(RouteFlags::Onlink);
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => r.dst = IpAddr::V4(*ip),
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => {
                        r.gateway = Some(IpAddr::V4(*ip))
                    }
                    RouteAttribute::Oif(i) => r.oif = Some(*i),
                    RouteAttribute::Table(t) => r.table = Some(*t),
                    _ => {}
                }
            }
            if r.table.is_none() {
                r.table = Some(u32::from(m.header.table));
            }
            let right = r.dst == IpAddr::V4(subnet) && r.oif == Some(dev) && self.is_peer_route(&r);
            return Ok(right.then_some(r));
        }
        Ok(None)
    }

    /// The MAC of the neighbour entry for `ip` on the device.
    pub fn neighbour(&mut self, dev: u32, ip: Ipv4Addr) -> Result<Option<Mac>, String> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = dev;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        let replies = match self.nl.request(RouteNetlinkMessage::GetNeighbour(msg), 0) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(nl_err("cannot look up a neighbour", e)),
        };
        Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(l) => <Mac>::try_from(l.as_slice()).ok(),
                _ => None,
            }),
            _ => None,
        }))
    }

    /// Where the device's forwarding entry for `mac` sends frames.
    pub fn fdb_entry(&mut self, dev: u32, mac: Mac) -> Result<Option<Ipv4Addr>, String> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = dev;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        let replies = match self.nl.request(RouteNetlinkMessage::GetNeighbour(msg), 0) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(nl_err("cannot look up an fdb entry", e)),
        };
        Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(d) => match d {
                    NeighbourAddress::Inet(ip) => Some(*ip),
                    NeighbourAddress::Other(b) => {
                        <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                    }
                    _ => None,
                },
                _ => None,
            }),
            _ => None,
        }))
    }

    /// Whether everything for `peer` is there (`Some(true)`), nothing of
    /// it is (`Some(false)`), or part of it (`None`). No device: nothing.
    pub fn peer_state(&mut self, peer: &Peer) -> Result<Option<bool>, String> {
        let Some(dev) = self.device()? else {
            return Ok(Some(false));
        };
        let route = self.route_to(dev, peer.subnet)?.is_some();
        let neigh = self.neighbour(dev, peer.subnet)?;
        let fdb = self.fdb_entry(dev, peer.mac)?;
        let all = route && neigh == Some(peer.mac) && fdb == Some(peer.public);
        let none = !route && neigh.is_none() && fdb.is_none();
        Ok(if all {
            Some(true)
        } else if none {
            Some(false)
        } else {
            None
        })
    }

    /// Deletes the peer's route (as the kernel holds it, protocol and all).
    pub fn delete_route(&mut self, peer: &Peer) -> Result<bool, String> {
        let Some(dev) = self.device()? else {
            return Ok(false);
        };
        let Some(r) = self.route_to(dev, peer.subnet)? else {
            return Ok(false);
        };
        self.nl
            .del_route(&r)
            .map_err(|e| nl_err("cannot delete a route", e))?;
        Ok(true)
    }

    pub fn delete_neighbour(&mut self, peer: &Peer) -> Result<bool, String> {
        let Some(dev) = self.device()? else {
            return Ok(false);
        };
        let e = Entry {
            ifindex: dev,
            ip: IpAddr::V4(peer.subnet),
            mac: peer.mac.to_vec(),
        };
        match self.nl.del_neighbour(&e) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(nl_err("cannot delete a neighbour", e)),
        }
    }

    pub fn delete_fdb(&mut self, peer: &Peer) -> Result<bool, String> {
        let Some(dev) = self.device()? else {
            return Ok(false);
        };
        let e = Entry {
            ifindex: dev,
            ip: IpAddr::V4(peer.public),
            mac: peer.mac.to_vec(),
        };
        match self.nl.del_fdb(&e) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(nl_err("cannot delete an fdb entry", e)),
        }
    }

    pub fn delete_device(&mut self) -> Result<bool, String> {
        let Some(dev) = self.device()? else {
            return Ok(false);
        };
        self.nl
            .del_link(dev)
            .map_err(|e| nl_err("cannot delete the vxlan device", e))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_networks() {
        let m = parse_mac("aa:bb:cc:dd:ee:0f").unwrap();
        assert_eq!(format_mac(&m), "aa:bb:cc:dd:ee:0f");
        assert!(parse_mac("aa:bb").is_none());
        let net = ClusterNet {
            base: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 8,
            subnet_len: 24,
        };
        assert!(net.contains(Ipv4Addr::new(10, 200, 3, 0)));
        assert!(!net.contains(Ipv4Addr::new(192, 168, 0, 1)));
    }

    #[test]
    fn differences_are_counted() {
        let want: BTreeMap<u8, u8> = [(1, 1), (2, 2), (3, 3)].into();
        let have: BTreeMap<u8, u8> = [(1, 1), (2, 9), (4, 4)].into();
        let (missing, extra, ex) = compare(&want, &have, |k| k.to_string());
        assert_eq!((missing, extra), (2, 1));
        assert_eq!(ex.as_deref(), Some("2 missing or wrong"));
        let d = Diff {
            fdb_extra: 1,
            ..Diff::default()
        };
        assert!(!d.is_empty());
        assert!(Diff::default().is_empty());
    }
}
