//! Where each peer subnet is sent, and who may send into ours (and only
//! into ours). The agent replaces the whole table when a peer comes or
//! goes ([`Published`]): the hot path takes no lock.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnetwork::IpNetwork;

use super::packet;
use super::relay::{Published, Reader};

/// One peer as the forwarder needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub subnet4: Option<IpNetwork>,
    pub subnet6: Option<IpNetwork>,
    pub public4: Option<Ipv4Addr>,
    pub public6: Option<Ipv6Addr>,
}

/// Why a datagram from the network was not written to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not an IP packet we could read.
    Malformed,
    /// Its outer source is no current peer's public address.
    NotAPeer,
    /// A peer sent it, but its inner source lies outside that peer's subnet.
    Spoofed,
    /// Its inner destination lies outside this node's subnet: the node
    /// itself, another node, the world through masquerade.
    NotForThisNode,
}

/// The subnets of the peers at one public address (one, unless a node
/// re-registered and its old lease has not expired yet), or this node's,
/// as network and mask to compare addresses with.
#[derive(Debug, Clone, Default)]
pub struct Subnets {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl Subnets {
    pub fn add(&mut self, n: IpNetwork) {
        match n {
            IpNetwork::V4(n) => self.v4.push((u32::from(n.network()), mask4(n.prefix()))),
            IpNetwork::V6(n) => self.v6.push((u128::from(n.network()), mask6(n.prefix()))),
        }
    }

    pub fn holds(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.iter().any(|&(n, m)| u32::from(a) & m == n),
            IpAddr::V6(a) => self.v6.iter().any(|&(n, m)| u128::from(a) & m == n),
        }
    }
}

pub fn mask4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

pub fn mask6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// The table at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    entries: Vec<Entry>,
    /// Prefix lengths in use (one, in a valid cluster), longest first.
    lens4: Vec<u8>,
    lens6: Vec<u8>,
    to4: HashMap<(u32, u8), SocketAddr>,
    to6: HashMap<(u128, u8), SocketAddr>,
    from: HashMap<IpAddr, Subnets>,
    /// This node's subnets: what may be sent to.
    own: Subnets,
}

impl Snapshot {
    /// `local4`/`local6`: whether this node sends over that underlay
    /// family. Each inner family rides the same underlay family when both
    /// ends have it, else the other. `own`: this node's subnets.
    pub fn new(
        entries: Vec<Entry>,
        port: u16,
        local4: bool,
        local6: bool,
        own: Subnets,
    ) -> Snapshot {
        let mut s = Snapshot {
            own,
            ..Snapshot::default()
        };
        let a4 = |e: &Entry| e.public4.filter(|_| local4).map(IpAddr::V4);
        let a6 = |e: &Entry| e.public6.filter(|_| local6).map(IpAddr::V6);
        for e in &entries {
            let publics = [e.public4.map(IpAddr::V4), e.public6.map(IpAddr::V6)];
            if let Some(IpNetwork::V4(n)) = e.subnet4 {
                let (net, len) = (u32::from(n.network()), n.prefix());
                for ip in publics.iter().flatten() {
                    s.from.entry(*ip).or_default().add(IpNetwork::V4(n));
                }
                if let Some(to) = a4(e).or_else(|| a6(e)) {
                    s.to4.insert((net, len), SocketAddr::new(to, port));
                    s.lens4.push(len);
                }
            }
            if let Some(IpNetwork::V6(n)) = e.subnet6 {
                let (net, len) = (u128::from(n.network()), n.prefix());
                for ip in publics.iter().flatten() {
                    s.from.entry(*ip).or_default().add(IpNetwork::V6(n));
                }
                if let Some(to) = a6(e).or_else(|| a4(e)) {
                    s.to6.insert((net, len), SocketAddr::new(to, port));
                    s.lens6.push(len);
                }
            }
        }
        for lens in [&mut s.lens4, &mut s.lens6] {
            lens.sort_unstable_by(|a, b| b.cmp(a));
            lens.dedup();
        }
        s.entries = entries;
        s
    }

    /// Where a packet for `dst` goes.
    pub fn route(&self, dst: IpAddr) -> Option<SocketAddr> {
        match dst {
            IpAddr::V4(a) => self
                .lens4
                .iter()
                .find_map(|&l| self.to4.get(&(u32::from(a) & mask4(l), l)).copied()),
            IpAddr::V6(a) => self
                .lens6
                .iter()
                .find_map(|&l| self.to6.get(&(u128::from(a) & mask6(l), l)).copied()),
        }
    }

    /// The subnets a datagram from `from` may carry sources of.
    pub fn sender(&self, from: IpAddr) -> Option<&Subnets> {
        self.from.get(&from)
    }

    /// Whether a datagram from `from` carrying `p` may enter the pod
    /// network: only from a current peer's public address, only with an
    /// inner source inside that peer's subnet, and only to an address in
    /// this node's subnet. Upstream's backend writes whatever arrives, so
    /// anyone reaching the port could inject packets with any source
    /// address; and a peer's source alone would still let a forged
    /// datagram reach the node's own services or leave through its
    /// masquerade.
    pub fn admit(&self, from: IpAddr, p: &[u8]) -> Result<(), Refused> {
        let peer = self.sender(from).ok_or(Refused::NotAPeer)?;
        self.admit_from(peer, p)
    }

    /// `admit` once the sender is known (one lookup per message from it).
    pub fn admit_from(&self, peer: &Subnets, p: &[u8]) -> Result<(), Refused> {
        let (src, dst) = packet::source(p)
            .zip(packet::destination(p))
            .filter(|_| packet::ip_len(p).is_some())
            .ok_or(Refused::Malformed)?;
        if !peer.holds(src) {
            Err(Refused::Spoofed)
        } else if !self.own.holds(dst) {
            Err(Refused::NotForThisNode)
        } else {
            Ok(())
        }
    }
}

/// The table the agent writes and the forwarders read.
#[derive(Debug)]
pub struct Table {
    current: Arc<Published<Snapshot>>,
    port: u16,
    local4: bool,
    local6: bool,
    own: Subnets,
}

impl Table {
    /// `own`: this node's subnets (its lease's), the only destinations
    /// datagrams may carry in.
    pub fn new(
        port: u16,
        local4: bool,
        local6: bool,
        own: impl IntoIterator<Item = IpNetwork>,
    ) -> Table {
        let mut subnets = Subnets::default();
        for n in own {
            subnets.add(n);
        }
        let first = Snapshot::new(Vec::new(), port, local4, local6, subnets.clone());
        Table {
            current: Arc::new(Published::new(first)),
            port,
            local4,
            local6,
            own: subnets,
        }
    }

    /// Replaces the table when `entries` differ.
    pub fn set(&self, entries: Vec<Entry>) {
        self.current.update(|cur| {
            (cur.entries != entries).then(|| {
                Snapshot::new(
                    entries,
                    self.port,
                    self.local4,
                    self.local6,
                    self.own.clone(),
                )
            })
        });
    }

    pub fn reader(&self) -> Reader<Snapshot> {
        self.current.reader()
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::tests::{ipv4, ipv6};
    use super::*;

    fn entry(s4: &str, s6: Option<&str>, p4: Option<&str>, p6: Option<&str>) -> Entry {
        Entry {
            subnet4: Some(s4.parse().unwrap()),
            subnet6: s6.map(|s| s.parse().unwrap()),
            public4: p4.map(|s| s.parse().unwrap()),
            public6: p6.map(|s| s.parse().unwrap()),
        }
    }

    /// This node's subnets.
    fn ours(nets: &[&str]) -> Subnets {
        let mut s = Subnets::default();
        for n in nets {
            s.add(n.parse().unwrap());
        }
        s
    }

    #[test]
    fn only_a_peer_may_send_and_only_from_its_subnet() {
        let s = Snapshot::new(
            vec![entry("10.244.1.0/24", None, Some("192.168.77.11"), None)],
            8285,
            true,
            false,
            ours(&["10.244.9.0/24"]),
        );
        let peer: IpAddr = "192.168.77.11".parse().unwrap();
        let p = ipv4(1, 64, [10, 244, 1, 2], [10, 244, 9, 9], &[8, 0, 0, 0]);
        assert_eq!(s.admit(peer, &p), Ok(()));
        let stranger: IpAddr = "192.168.77.50".parse().unwrap();
        assert_eq!(s.admit(stranger, &p), Err(Refused::NotAPeer));
        let spoofed = ipv4(1, 64, [10, 244, 2, 7], [10, 244, 9, 9], &[8, 0, 0, 0]);
        assert_eq!(s.admit(peer, &spoofed), Err(Refused::Spoofed));
        assert_eq!(s.admit(peer, &[0x45, 0]), Err(Refused::Malformed));
        // Claims more bytes than it has.
        let mut short = p.clone();
        short[3] += 1;
        assert_eq!(s.admit(peer, &short), Err(Refused::Malformed));
        // Claims fewer bytes than its own header.
        let mut empty = p.clone();
        empty[2..4].copy_from_slice(&[0, 0]);
        assert_eq!(s.admit(peer, &empty), Err(Refused::Malformed));
    }

    #[test]
    fn a_peer_may_send_only_into_this_nodes_subnet() {
        let s = Snapshot::new(
            vec![entry("10.244.1.0/24", None, Some("192.168.77.11"), None)],
            8285,
            true,
            false,
            ours(&["10.244.9.0/24"]),
        );
        let peer: IpAddr = "192.168.77.11".parse().unwrap();
        let to = |dst: [u8; 4]| ipv4(1, 64, [10, 244, 1, 2], dst, &[8, 0, 0, 0]);
        assert_eq!(s.admit(peer, &to([10, 244, 9, 0])), Ok(()), "the TUN's own");
        // This node itself, another node's pods, the world.
        for dst in [[192, 168, 77, 10], [10, 244, 3, 3], [198, 51, 100, 7]] {
            assert_eq!(
                s.admit(peer, &to(dst)),
                Err(Refused::NotForThisNode),
                "{dst:?}"
            );
        }
        // No IPv6 subnet here: no IPv6 packet is for us.
        let a: Ipv6Addr = "fd00:244:0:1::5".parse().unwrap();
        let v6 = ipv6(58, 64, a, a, &[128, 0, 0, 0]);
        let s6 = Snapshot::new(
            vec![entry(
                "10.244.1.0/24",
                Some("fd00:244:0:1::/64"),
                Some("192.168.77.11"),
                None,
            )],
            8285,
            true,
            false,
            ours(&["10.244.9.0/24"]),
        );
        assert_eq!(s6.admit(peer, &v6), Err(Refused::NotForThisNode));
        // The table hands its own subnets to every snapshot, the first too.
        let t = Arc::new(Table::new(
            8285,
            true,
            false,
            ["10.244.9.0/24".parse().unwrap()],
        ));
        let mut r = t.reader();
        assert_eq!(
            r.get().admit(peer, &to([10, 244, 9, 9])),
            Err(Refused::NotAPeer)
        );
        t.set(vec![entry(
            "10.244.1.0/24",
            None,
            Some("192.168.77.11"),
            None,
        )]);
        assert_eq!(r.get().admit(peer, &to([10, 244, 9, 9])), Ok(()));
        assert_eq!(
            r.get().admit(peer, &to([10, 244, 8, 9])),
            Err(Refused::NotForThisNode)
        );
    }

    #[test]
    fn each_family_rides_its_own_underlay_when_both_ends_have_it() {
        let e = entry(
            "10.244.1.0/24",
            Some("fd00:244:0:1::/64"),
            Some("192.168.77.11"),
            Some("fd00:77::11"),
        );
        let own = ours(&["10.244.2.0/24", "fd00:244:0:2::/64"]);
        let dual = Snapshot::new(vec![e.clone()], 8285, true, true, own.clone());
        assert_eq!(
            dual.route("10.244.1.9".parse().unwrap()),
            Some("192.168.77.11:8285".parse().unwrap())
        );
        assert_eq!(
            dual.route("fd00:244:0:1::9".parse().unwrap()),
            Some("[fd00:77::11]:8285".parse().unwrap())
        );
        assert_eq!(dual.route("10.244.2.9".parse().unwrap()), None);
        // We have no IPv6 underlay: IPv6 pods ride IPv4.
        let v4 = Snapshot::new(vec![e.clone()], 8285, true, false, own);
        assert_eq!(
            v4.route("fd00:244:0:1::9".parse().unwrap()),
            Some("192.168.77.11:8285".parse().unwrap())
        );
        // From either public address, sources of the matching family only.
        let a: Ipv6Addr = "fd00:244:0:1::5".parse().unwrap();
        let b: Ipv6Addr = "fd00:244:0:2::5".parse().unwrap();
        let inner6 = ipv6(58, 64, a, b, &[128, 0, 0, 0]);
        let from6: IpAddr = "fd00:77::11".parse().unwrap();
        let from4: IpAddr = "192.168.77.11".parse().unwrap();
        assert_eq!(dual.admit(from6, &inner6), Ok(()));
        assert_eq!(dual.admit(from4, &inner6), Ok(()));
        let spoof6 = ipv6(58, 64, b, a, &[128, 0, 0, 0]);
        assert_eq!(dual.admit(from6, &spoof6), Err(Refused::Spoofed));
        let elsewhere = "fd00:244:0:3::5".parse().unwrap();
        let relayed6 = ipv6(58, 64, a, elsewhere, &[128, 0, 0, 0]);
        assert_eq!(dual.admit(from6, &relayed6), Err(Refused::NotForThisNode));
    }

    #[test]
    fn a_node_with_two_leases_at_one_address_may_send_from_both() {
        let s = Snapshot::new(
            vec![
                entry("10.244.1.0/24", None, Some("192.168.77.11"), None),
                entry("10.244.7.0/24", None, Some("192.168.77.11"), None),
            ],
            8285,
            true,
            false,
            ours(&["10.244.9.0/24"]),
        );
        let from: IpAddr = "192.168.77.11".parse().unwrap();
        for src in [[10, 244, 1, 2], [10, 244, 7, 2]] {
            let p = ipv4(1, 64, src, [10, 244, 9, 9], &[8, 0, 0, 0]);
            assert_eq!(s.admit(from, &p), Ok(()));
        }
    }

    #[test]
    fn readers_see_a_new_table_and_an_unchanged_one_is_not_replaced() {
        let t = Arc::new(Table::new(8285, true, false, []));
        let mut r = t.reader();
        assert!(r.get().route("10.244.1.1".parse().unwrap()).is_none());
        let e = vec![entry("10.244.1.0/24", None, Some("192.168.1.1"), None)];
        t.set(e.clone());
        assert!(r.get().route("10.244.1.1".parse().unwrap()).is_some());
        let before = r.get().clone();
        t.set(e);
        assert!(
            Arc::ptr_eq(&before, r.get()),
            "an unchanged table was replaced"
        );
        t.set(Vec::new());
        assert!(r.get().route("10.244.1.1".parse().unwrap()).is_none());
    }
}
