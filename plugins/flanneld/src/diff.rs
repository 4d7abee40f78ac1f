//! The one comparison of kernel state: what the kernel holds (`have`)
//! against what it should hold (`want`), as the changes that take one to
//! the other. Pure. The same rules serve every path: a peer's lease that
//! changed (its old state against its new), a kernel notification (the
//! entry as notified against what is wanted in its place), and the full
//! comparison (dumps against every peer).
//!
//! Each entry has a place, and at most one entry of ours is wanted there:
//! - a route: its destination, prefix and metric in the main table (the
//!   agent writes no other table); content: gateway, device, `onlink`, and
//!   that it is ours (`routes::PROTOCOL`);
//! - a neighbour: its device and IP address; content: the MAC;
//! - an fdb entry: its device and MAC; content: the destination IP.
//!
//! A wanted entry missing, or found with other content, is set (a replace,
//! never a delete and an add, so traffic never sees a gap). An entry in
//! `have` whose place nothing wants is removed when it is ours: routes
//! carry their maker (only ours go); neighbour and fdb entries must be
//! given only from devices of ours (the caller filters).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use netkit::batch::Op;
use netkit::neigh::Entry;
use netkit::route::Route;

use crate::routes;

/// Routes, neighbour and fdb entries: wanted, or found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Set {
    pub routes: Vec<Route>,
    pub neigh: Vec<Entry>,
    pub fdb: Vec<Entry>,
}

impl Set {
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.neigh.is_empty() && self.fdb.is_empty()
    }

    pub fn extend(&mut self, other: Set) {
        self.routes.extend(other.routes);
        self.neigh.extend(other.neigh);
        self.fdb.extend(other.fdb);
    }
}

/// One kernel entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Route(Route),
    Neighbour(Entry),
    Fdb(Entry),
}

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `want` programmed (a replace); `over`: what held its place, if
    /// anything (another's route, or one of ours that differs).
    Set { want: Item, over: Option<Item> },
    /// An entry of ours in a place nothing wants.
    Remove(Item),
}

impl Change {
    /// The netlink operation that makes the change.
    pub fn into_op(self) -> Op {
        match self {
            Change::Set { want, .. } => match want {
                Item::Route(r) => Op::ReplaceRoute(r),
                Item::Neighbour(e) => Op::SetNeighbour(e),
                Item::Fdb(e) => Op::SetFdb(e),
            },
            Change::Remove(have) => match have {
                Item::Route(r) => Op::DelRoute(r),
                Item::Neighbour(e) => Op::DelNeighbour(e),
                Item::Fdb(e) => Op::DelFdb(e),
            },
        }
    }
}

/// Where a route sits.
type RoutePlace = (IpAddr, u8, u32);

fn route_place(r: &Route) -> RoutePlace {
    (r.dst, r.prefix, routes::metric(r))
}

fn neigh_place(e: &Entry) -> (u32, IpAddr) {
    (e.ifindex, e.ip)
}

/// The device and the MAC (at most 8 bytes, packed).
fn fdb_place(e: &Entry) -> (u32, u64) {
    let mac = e
        .mac
        .iter()
        .take(8)
        .fold(0u64, |a, b| a << 8 | u64::from(*b));
    (e.ifindex, mac)
}

/// Below this many entries a scan beats hashing: what a peer or a
/// notification brings. A dump has thousands.
const FEW: usize = 8;

/// Entries by place: scanned when there are few, hashed when many.
struct Index<'a, T, K> {
    items: &'a [T],
    place: fn(&T) -> K,
    hashed: Option<HashMap<K, Vec<usize>>>,
}

impl<'a, T, K: Hash + Eq> Index<'a, T, K> {
    fn new(items: &'a [T], place: fn(&T) -> K) -> Self {
        let hashed = (items.len() > FEW).then(|| {
            let mut map: HashMap<K, Vec<usize>> = HashMap::with_capacity(items.len());
            for (i, t) in items.iter().enumerate() {
                map.entry(place(t)).or_default().push(i);
            }
            map
        });
        Index {
            items,
            place,
            hashed,
        }
    }

    /// The entries at `place`.
    fn at<'s>(&'s self, place: &'s K) -> impl Iterator<Item = &'a T> + 's {
        let (hits, scan): (&[usize], &[T]) = match &self.hashed {
            Some(map) => (map.get(place).map_or(&[], Vec::as_slice), &[]),
            None => (&[], self.items),
        };
        hits.iter()
            .map(|&i| &self.items[i])
            .chain(scan.iter().filter(move |t| (self.place)(t) == *place))
    }

    fn holds(&self, place: &K) -> bool {
        self.at(place).next().is_some()
    }
}

/// The changes that take `have` to `want`: removals first.
pub fn diff(have: &Set, want: &Set) -> Vec<Change> {
    let mut out = Vec::new();
    // Removals: what nothing wants in its place.
    if !have.routes.is_empty() {
        let wanted = Index::new(&want.routes, route_place);
        for r in &have.routes {
            if routes::is_ours(r) && !wanted.holds(&route_place(r)) {
                out.push(Change::Remove(Item::Route(r.clone())));
            }
        }
    }
    if !have.neigh.is_empty() {
        let wanted = Index::new(&want.neigh, neigh_place);
        for e in &have.neigh {
            if !wanted.holds(&neigh_place(e)) {
                out.push(Change::Remove(Item::Neighbour(e.clone())));
            }
        }
    }
    if !have.fdb.is_empty() {
        let wanted = Index::new(&want.fdb, fdb_place);
        for e in &have.fdb {
            if !wanted.holds(&fdb_place(e)) {
                out.push(Change::Remove(Item::Fdb(e.clone())));
            }
        }
    }
    // Additions and replacements.
    let found = Index::new(&have.routes, route_place);
    for w in &want.routes {
        let place = route_place(w);
        if found
            .at(&place)
            .any(|r| routes::is_ours(r) && routes::same(r, w))
        {
            continue;
        }
        // Ours first: replacing it is a repair, not a takeover.
        let over = found
            .at(&place)
            .find(|r| routes::is_ours(r))
            .or_else(|| found.at(&place).next())
            .map(|r| Item::Route(r.clone()));
        out.push(Change::Set {
            want: Item::Route(w.clone()),
            over,
        });
    }
    let found = Index::new(&have.neigh, neigh_place);
    for w in &want.neigh {
        let place = neigh_place(w);
        match found.at(&place).next() {
            Some(e) if e.mac == w.mac => {}
            there => out.push(Change::Set {
                want: Item::Neighbour(w.clone()),
                over: there.map(|e| Item::Neighbour(e.clone())),
            }),
        }
    }
    let found = Index::new(&have.fdb, fdb_place);
    for w in &want.fdb {
        let place = fdb_place(w);
        match found.at(&place).next() {
            Some(e) if e.ip == w.ip => {}
            there => out.push(Change::Set {
                want: Item::Fdb(w.clone()),
                over: there.map(|e| Item::Fdb(e.clone())),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, gw: &str, oif: u32, proto: u8) -> Route {
        let mut r = Route::new(dst.parse().unwrap(), 24);
        r.gateway = Some(gw.parse().unwrap());
        r.oif = Some(oif);
        r.protocol = Some(proto);
        r
    }

    fn ours(dst: &str, gw: &str, oif: u32) -> Route {
        route(dst, gw, oif, routes::PROTOCOL)
    }

    fn entry(ifindex: u32, ip: &str, last: u8) -> Entry {
        Entry {
            ifindex,
            ip: ip.parse().unwrap(),
            mac: vec![2, 0, 0, 0, 0, last],
        }
    }

    fn set(routes: &[Route], neigh: &[Entry], fdb: &[Entry]) -> Set {
        Set {
            routes: routes.to_vec(),
            neigh: neigh.to_vec(),
            fdb: fdb.to_vec(),
        }
    }

    #[test]
    fn the_same_state_needs_nothing_whichever_way_it_was_read() {
        let w = set(
            &[ours("10.244.2.0", "10.244.2.0", 7)],
            &[entry(7, "10.244.2.0", 2)],
            &[entry(7, "192.168.1.2", 2)],
        );
        assert!(diff(&w, &w).is_empty());
        // A dump says main table and, for IPv6, the default metric.
        let mut dumped = w.clone();
        dumped.routes[0].table = Some(routes::MAIN_TABLE);
        assert!(diff(&dumped, &w).is_empty());
        let mut v6 = Route::new("fd00:244:0:2::".parse().unwrap(), 64);
        v6.protocol = Some(routes::PROTOCOL);
        let mut v6_dumped = v6.clone();
        v6_dumped.priority = Some(1024);
        v6_dumped.table = Some(routes::MAIN_TABLE);
        assert!(diff(&set(&[v6_dumped], &[], &[]), &set(&[v6], &[], &[])).is_empty());
    }

    #[test]
    fn from_nothing_everything_is_set_and_to_nothing_ours_are_removed() {
        let w = set(
            &[ours("10.244.2.0", "10.244.2.0", 7)],
            &[entry(7, "10.244.2.0", 2)],
            &[entry(7, "192.168.1.2", 2)],
        );
        let add = diff(&Set::default(), &w);
        assert_eq!(add.len(), 3);
        assert!(
            add.iter()
                .all(|c| matches!(c, Change::Set { over: None, .. }))
        );
        let remove = diff(&w, &Set::default());
        assert_eq!(remove.len(), 3);
        assert!(remove.iter().all(|c| matches!(c, Change::Remove(_))));
        assert!(matches!(remove[0].clone().into_op(), Op::DelRoute(_)));
    }

    #[test]
    fn a_changed_entry_is_replaced_in_place_never_deleted_first() {
        let old = set(
            &[ours("10.244.2.0", "192.168.1.2", 2)],
            &[entry(7, "10.244.2.0", 2)],
            &[entry(7, "192.168.1.2", 2)],
        );
        // New gateway, new MAC for the neighbour, same MAC now at a new
        // address for the fdb entry.
        let new = set(
            &[ours("10.244.2.0", "192.168.1.22", 2)],
            &[entry(7, "10.244.2.0", 3)],
            &[entry(7, "192.168.1.22", 2)],
        );
        let changes = diff(&old, &new);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(
            changes
                .iter()
                .all(|c| matches!(c, Change::Set { over: Some(_), .. })),
            "{changes:?}"
        );
        // A new MAC is a new fdb place: the old entry goes.
        let moved = set(&[], &[], &[entry(7, "192.168.1.2", 9)]);
        let changes = diff(&set(&[], &[], &old.fdb), &moved);
        assert!(
            matches!(
                &changes[..],
                [Change::Remove(Item::Fdb(_)), Change::Set { over: None, .. }]
            ),
            "{changes:?}"
        );
    }

    #[test]
    fn only_our_routes_are_removed_and_another_s_in_our_place_is_taken_over() {
        let operators = route("10.244.250.0", "192.168.1.9", 2, routes::BOOT);
        let have = set(
            &[ours("10.244.3.0", "192.168.1.3", 2), operators.clone()],
            &[],
            &[],
        );
        let changes = diff(&have, &Set::default());
        assert_eq!(changes.len(), 1, "{changes:?}");
        // Wanted where the operator's is: replaced, and said so.
        let want = set(&[ours("10.244.250.0", "192.168.1.9", 2)], &[], &[]);
        let changes = diff(&set(std::slice::from_ref(&operators), &[], &[]), &want);
        assert_eq!(
            changes,
            [Change::Set {
                want: Item::Route(want.routes[0].clone()),
                over: Some(Item::Route(operators))
            }]
        );
        // Another metric is another place: left alone.
        let mut other = ours("10.244.2.0", "192.168.1.2", 2);
        other.priority = Some(100);
        other.protocol = Some(routes::BOOT);
        let want = set(&[ours("10.244.2.0", "192.168.1.2", 2)], &[], &[]);
        let changes = diff(&set(&[other], &[], &[]), &want);
        assert!(
            matches!(&changes[..], [Change::Set { over: None, .. }]),
            "{changes:?}"
        );
    }

    #[test]
    fn a_dump_of_thousands_compares_as_a_handful_does() {
        let n = 2000u32;
        let peer = |i: u32| {
            let dst = format!("10.{}.{}.0", 100 + i / 256, i % 256);
            let mac = vec![2, 0, 0, 0, (i >> 8) as u8, i as u8];
            let public = format!("192.168.{}.{}", i / 250, i % 250);
            let e = |ip: &str| Entry {
                ifindex: 7,
                ip: ip.parse().unwrap(),
                mac: mac.clone(),
            };
            (ours(&dst, &dst, 7), e(&dst), e(&public))
        };
        let mut want = Set::default();
        for i in 0..n {
            let (r, ne, f) = peer(i);
            want.routes.push(r);
            want.neigh.push(ne);
            want.fdb.push(f);
        }
        assert!(diff(&want, &want).is_empty());
        // One of each missing, one of each changed, one stray of ours.
        let mut have = want.clone();
        have.routes.remove(5);
        have.neigh[6].mac = vec![2, 0, 0, 0, 0, 99];
        have.fdb.remove(7);
        have.routes.push(ours("10.250.0.0", "10.250.0.0", 7));
        let changes = diff(&have, &want);
        assert_eq!(changes.len(), 4, "{changes:?}");
        assert!(
            matches!(&changes[0], Change::Remove(Item::Route(r)) if r.dst.to_string() == "10.250.0.0")
        );
    }

    #[test]
    fn onlink_is_part_of_a_route() {
        let mut w = ours("10.244.2.0", "10.244.2.0", 7);
        w.onlink = true;
        let have = set(&[ours("10.244.2.0", "10.244.2.0", 7)], &[], &[]);
        let changes = diff(&have, &set(&[w], &[], &[]));
        assert!(matches!(&changes[..], [Change::Set { over: Some(_), .. }]));
    }
}
