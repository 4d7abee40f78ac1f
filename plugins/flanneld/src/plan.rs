//! What the kernel should hold for each peer, and the changes that take it
//! from one peer record to the next. Pure: the agent applies the changes
//! in one batch (see `netkit::batch`).

use netkit::batch::Op;
use netkit::neigh::Entry;
use netkit::route::Route;

use crate::backend::hostgw;
use crate::backend::vxlan::Vxlan;
use crate::iface::ExtIface;
use crate::peers::Peer;
use crate::routes;

/// Kernel state for some peers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub routes: Vec<Route>,
    pub neigh: Vec<Entry>,
    pub fdb: Vec<Entry>,
}

impl Wanted {
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.neigh.is_empty() && self.fdb.is_empty()
    }
}

/// How the backend reaches peers.
#[derive(Debug, Clone, Copy)]
pub enum Reach<'a> {
    /// Through the vxlan device `dev`.
    Vxlan {
        vtep: &'a Vxlan,
        dev: u32,
        ext: &'a ExtIface,
    },
    HostGw {
        ext: &'a ExtIface,
    },
    /// The udp backend: one route for the whole network, nothing per peer
    /// in the kernel (its forwarder has the peer table).
    Udp,
}

/// Adds what `peer` needs to `out`.
pub fn wanted(reach: &Reach<'_>, peer: &Peer, out: &mut Wanted) {
    match reach {
        Reach::Vxlan { vtep, dev, ext } => vtep.desired(*dev, ext, peer, out),
        Reach::HostGw { ext } => hostgw::routes(ext, peer, &mut out.routes),
        Reach::Udp => {}
    }
}

pub fn of(reach: &Reach<'_>, peer: &Peer) -> Wanted {
    let mut w = Wanted::default();
    wanted(reach, peer, &mut w);
    w
}

/// The same route, `onlink` included.
pub fn same_route(a: &Route, b: &Route) -> bool {
    routes::same(a, b) && a.onlink == b.onlink
}

/// The changes from `old` to `new`, removals first, appended to `ops`.
pub fn diff(old: &Wanted, new: &Wanted, ops: &mut Vec<Op>) {
    for r in &old.routes {
        if !new
            .routes
            .iter()
            .any(|n| n.dst == r.dst && n.prefix == r.prefix)
        {
            ops.push(Op::DelRoute(r.clone()));
        }
    }
    for e in &old.neigh {
        if !new.neigh.iter().any(|n| n.ip == e.ip) {
            ops.push(Op::DelNeighbour(e.clone()));
        }
    }
    for e in &old.fdb {
        if !new.fdb.contains(e) {
            ops.push(Op::DelFdb(e.clone()));
        }
    }
    for r in &new.routes {
        if !old.routes.iter().any(|o| same_route(o, r)) {
            ops.push(Op::ReplaceRoute(r.clone()));
        }
    }
    for e in &new.neigh {
        if !old.neigh.contains(e) {
            ops.push(Op::SetNeighbour(e.clone()));
        }
    }
    for e in &new.fdb {
        if !old.fdb.contains(e) {
            ops.push(Op::SetFdb(e.clone()));
        }
    }
}

/// Everything in `w` programmed.
pub fn add(w: &Wanted, ops: &mut Vec<Op>) {
    diff(&Wanted::default(), w, ops);
}

/// Everything in `w` removed.
pub fn remove(w: &Wanted, ops: &mut Vec<Op>) {
    diff(w, &Wanted::default(), ops);
}

/// `set neighbour 10.244.2.0 -> 02:..` for the log.
pub fn describe(op: &Op) -> String {
    let entry = |e: &Entry| format!("{} {}", e.ip, netkit::link::format_mac(&e.mac));
    match op {
        Op::ReplaceRoute(r) => format!("route {}", routes::describe(r)),
        Op::DelRoute(r) => format!("removal of route {}", routes::describe(r)),
        Op::SetNeighbour(e) => format!("neighbour {}", entry(e)),
        Op::DelNeighbour(e) => format!("removal of neighbour {}", entry(e)),
        Op::SetFdb(e) => format!("fdb entry {}", entry(e)),
        Op::DelFdb(e) => format!("removal of fdb entry {}", entry(e)),
    }
}

/// A removal that found nothing to remove.
pub fn is_removal(op: &Op) -> bool {
    matches!(op, Op::DelRoute(_) | Op::DelNeighbour(_) | Op::DelFdb(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::SubnetKey;
    use std::net::IpAddr;

    fn ext() -> ExtIface {
        ExtIface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            ipv4: Some("192.168.1.1".parse().unwrap()),
            ipv6: None,
            networks: vec!["192.168.1.0/24".parse().unwrap()],
        }
    }

    fn vtep(direct_routing: bool) -> Vxlan {
        Vxlan {
            vni: 1,
            port: 0,
            mtu: 1450,
            mac: [2, 0, 0, 0, 0, 1],
            local: "192.168.1.1".parse().unwrap(),
            direct_routing,
            own: vec![],
        }
    }

    fn peer(key: &str, ip: &str, last: u8) -> Peer {
        Peer {
            key: SubnetKey::parse(key).unwrap(),
            public_ip: Some(ip.parse().unwrap()),
            public_ipv6: None,
            mac: Some([2, 0, 0, 0, 0, last]),
        }
    }

    #[test]
    fn a_vxlan_peer_needs_a_route_a_neighbour_and_an_fdb_entry() {
        let (e, v) = (ext(), vtep(false));
        let reach = Reach::Vxlan {
            vtep: &v,
            dev: 7,
            ext: &e,
        };
        let w = of(&reach, &peer("10.244.2.0-24", "192.168.1.2", 2));
        assert_eq!(w.routes.len(), 1);
        let r = &w.routes[0];
        assert_eq!(r.gateway, Some("10.244.2.0".parse::<IpAddr>().unwrap()));
        assert!(r.onlink && r.oif == Some(7) && r.protocol == Some(routes::PROTOCOL));
        assert_eq!(w.neigh.len(), 1);
        assert_eq!(w.fdb[0].ip, "192.168.1.2".parse::<IpAddr>().unwrap());
        let mut ops = Vec::new();
        add(&w, &mut ops);
        assert_eq!(ops.len(), 3);
        ops.clear();
        remove(&w, &mut ops);
        assert!(matches!(ops[0], Op::DelRoute(_)));
        assert_eq!(ops.len(), 3);
        // Direct routing: a peer on our segment gets a plain route only.
        let d = vtep(true);
        let reach = Reach::Vxlan {
            vtep: &d,
            dev: 7,
            ext: &e,
        };
        let w = of(&reach, &peer("10.244.2.0-24", "192.168.1.2", 2));
        assert!(w.neigh.is_empty() && w.fdb.is_empty());
        assert_eq!(w.routes[0].oif, Some(2));
    }

    #[test]
    fn a_moved_peer_changes_only_what_differs() {
        let (e, v) = (ext(), vtep(false));
        let reach = Reach::Vxlan {
            vtep: &v,
            dev: 7,
            ext: &e,
        };
        let old = of(&reach, &peer("10.244.2.0-24", "192.168.1.2", 2));
        let same = of(&reach, &peer("10.244.2.0-24", "192.168.1.2", 2));
        let mut ops = Vec::new();
        diff(&old, &same, &mut ops);
        assert!(ops.is_empty());
        // New public address, same MAC: only the fdb entry moves.
        let moved = of(&reach, &peer("10.244.2.0-24", "192.168.1.22", 2));
        diff(&old, &moved, &mut ops);
        assert!(
            matches!(&ops[..], [Op::DelFdb(_), Op::SetFdb(_)]),
            "{ops:?}"
        );
        // host-gw: the route is replaced in place, never deleted.
        let reach = Reach::HostGw { ext: &e };
        let old = of(&reach, &peer("10.244.2.0-24", "192.168.1.2", 2));
        let moved = of(&reach, &peer("10.244.2.0-24", "192.168.1.22", 2));
        ops.clear();
        diff(&old, &moved, &mut ops);
        assert!(matches!(&ops[..], [Op::ReplaceRoute(_)]), "{ops:?}");
        assert!(of(&Reach::Udp, &peer("10.244.2.0-24", "192.168.1.2", 2)).is_empty());
    }
}
