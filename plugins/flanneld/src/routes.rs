//! Which routes are the agent's: every route it makes carries a routing
//! protocol number of its own, [`PROTOCOL`], and only routes with that
//! number are ever removed. `ip route add` and many tools use `boot` (3),
//! so a route without our number is someone else's whatever it looks like.
//!
//! Upgrade from a version that made its routes as `boot`: a wanted route
//! that is there as `boot` is replaced by ours (same route, our number);
//! at start, `boot` routes in the old vxlan pattern (`<subnet> via
//! <subnet address> dev flannel.N onlink`, a shape only flannel makes) that
//! nobody wants any more are removed; other `boot` routes stay.
//!
//! Everything here is pure: the caller dumps, plans, then applies.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netkit::route::Route;

/// Our `rtm_protocol` (`ip route` shows `proto 102`). Any number above
/// `static` (4) is left alone by the kernel; 102 (0x66, 'f') is neither a
/// kernel `RTPROT_*` value nor in iproute2's `rt_protos`, and upstream
/// flannel marks nothing (its routes are `boot`), so it names ours alone.
pub const PROTOCOL: u8 = 102;
/// `RTPROT_BOOT`: what `ip route add` and earlier versions of ours use.
pub const BOOT: u8 = 3;
/// The main routing table, the only one the agent writes to.
pub const MAIN_TABLE: u32 = 254;

/// A route of ours to `dst/prefix`, to be filled in.
pub fn new(dst: IpAddr, prefix: u8) -> Route {
    let mut r = Route::new(dst, prefix);
    r.protocol = Some(PROTOCOL);
    r
}

/// Made by this agent.
pub fn is_ours(r: &Route) -> bool {
    r.protocol == Some(PROTOCOL) && r.table == Some(MAIN_TABLE)
}

/// The same forwarding decision (who made it aside).
pub fn same(a: &Route, b: &Route) -> bool {
    a.dst == b.dst && a.prefix == b.prefix && a.gateway == b.gateway && a.oif == b.oif
}

/// The metric the kernel gives a route made without one.
fn metric(r: &Route) -> u32 {
    r.priority.unwrap_or(if r.dst.is_ipv4() { 0 } else { 1024 })
}

/// A route to the same destination in the main table: a replace of
/// `want` takes its place.
pub fn same_destination(a: &Route, want: &Route) -> bool {
    a.table == Some(MAIN_TABLE)
        && a.dst == want.dst
        && a.prefix == want.prefix
        && metric(a) == metric(want)
}

/// A route an earlier version made on the vxlan device `dev` to a node
/// subnet of `networks` (`<subnet> via <subnet address> onlink`).
pub fn legacy_vxlan(r: &Route, dev: u32, networks: &[(IpNetwork, u8)]) -> bool {
    r.protocol == Some(BOOT)
        && r.table == Some(MAIN_TABLE)
        && r.oif == Some(dev)
        && r.gateway == Some(r.dst)
        && networks
            .iter()
            .any(|(net, len)| *len == r.prefix && net.contains(r.dst))
}

/// `boot` routes that look like a peer route of ours (a gateway route on
/// one of `oifs` into the cluster network) but that nothing wants: an
/// operator's, or an earlier version's we cannot tell from one. Named in
/// the log at start, never touched.
pub fn suspects<'a>(
    current: &'a [Route],
    desired: &[Route],
    oifs: &[Option<u32>],
    in_cluster: impl Fn(IpAddr) -> bool,
) -> Vec<&'a Route> {
    current
        .iter()
        .filter(|r| {
            r.protocol == Some(BOOT)
                && r.table == Some(MAIN_TABLE)
                && r.gateway.is_some()
                && r.oif.is_some()
                && oifs.contains(&r.oif)
                && in_cluster(r.dst)
                && !desired.iter().any(|d| same_destination(r, d))
        })
        .collect()
}

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Program `want` (a replace). `over`: a route not ours that it takes
    /// the place of (the same route, when adopting an earlier version's).
    Add { want: Route, over: Option<Route> },
    /// One of ours that nothing wants.
    Remove(Route),
    /// An earlier version's route that nothing wants (at start only).
    RemoveLegacy(Route),
}

/// Routes by destination, for look-ups in linear time (a full comparison
/// at thousands of peers).
fn by_destination(routes: &[Route]) -> HashMap<(IpAddr, u8), Vec<&Route>> {
    let mut map: HashMap<(IpAddr, u8), Vec<&Route>> = HashMap::with_capacity(routes.len());
    for r in routes {
        map.entry((r.dst, r.prefix)).or_default().push(r);
    }
    map
}

/// What makes one family's `current` routes hold `desired`. `legacy`: at
/// start, which `boot` routes are an earlier version's.
pub fn plan(
    current: &[Route],
    desired: &[Route],
    legacy: Option<&dyn Fn(&Route) -> bool>,
) -> Vec<Change> {
    let have = by_destination(current);
    let want = by_destination(desired);
    let none = Vec::new();
    let mut out = Vec::new();
    for w in desired {
        let there = have.get(&(w.dst, w.prefix)).unwrap_or(&none);
        if there.iter().any(|r| is_ours(r) && same(r, w)) {
            continue;
        }
        let over = there
            .iter()
            .find(|r| !is_ours(r) && same_destination(r, w))
            .map(|r| (*r).clone());
        out.push(Change::Add {
            want: w.clone(),
            over,
        });
    }
    for r in current.iter().filter(|r| is_ours(r)) {
        let wanted = want.get(&(r.dst, r.prefix)).unwrap_or(&none);
        if !wanted.iter().any(|d| same(d, r)) {
            out.push(Change::Remove(r.clone()));
        }
    }
    if let Some(is_legacy) = legacy {
        for r in current {
            let wanted = want
                .get(&(r.dst, r.prefix))
                .unwrap_or(&none)
                .iter()
                .any(|d| same_destination(r, d));
            if !wanted && is_legacy(r) {
                out.push(Change::RemoveLegacy(r.clone()));
            }
        }
    }
    out
}

/// `10.244.3.0/24 via 192.168.1.3 dev 2` for the log.
pub fn describe(r: &Route) -> String {
    let mut s = format!("{}/{}", r.dst, r.prefix);
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" dev #{oif}"));
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    if let Some(p) = r.protocol {
        s.push_str(&format!(" proto {p}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, prefix: u8, gw: &str, oif: u32, proto: u8) -> Route {
        let mut r = Route::new(dst.parse().unwrap(), prefix);
        r.gateway = Some(gw.parse().unwrap());
        r.oif = Some(oif);
        r.protocol = Some(proto);
        r.table = Some(MAIN_TABLE);
        r
    }

    fn want(dst: &str, gw: &str, oif: u32) -> Route {
        let mut r = new(dst.parse().unwrap(), 24);
        r.gateway = Some(gw.parse().unwrap());
        r.oif = Some(oif);
        r
    }

    #[test]
    fn an_operators_route_in_the_cluster_range_is_left_alone() {
        let current = [
            route("10.244.2.0", 24, "192.168.1.2", 2, PROTOCOL),
            // `ip route add 10.244.250.0/24 via 192.168.1.9 dev eth0`
            route("10.244.250.0", 24, "192.168.1.9", 2, BOOT),
        ];
        let desired = [want("10.244.2.0", "192.168.1.2", 2)];
        assert!(plan(&current, &desired, None).is_empty());
        // Not even at start: it is not in the old vxlan pattern.
        let legacy = |r: &Route| legacy_vxlan(r, 7, &[("10.244.0.0/16".parse().unwrap(), 24)]);
        assert!(plan(&current, &desired, Some(&legacy)).is_empty());
        // Named at start, as possibly a leftover.
        let in_cluster = |ip: IpAddr| "10.244.0.0/16".parse::<IpNetwork>().unwrap().contains(ip);
        let named = suspects(&current, &desired, &[Some(2)], in_cluster);
        assert_eq!(named, [&current[1]]);
        assert!(suspects(&current, &desired, &[Some(3)], in_cluster).is_empty());
    }

    #[test]
    fn ours_are_added_and_removed() {
        let current = [
            route("10.244.2.0", 24, "192.168.1.2", 2, PROTOCOL),
            route("10.244.3.0", 24, "192.168.1.3", 2, PROTOCOL),
        ];
        let desired = [
            want("10.244.2.0", "192.168.1.2", 2),
            want("10.244.4.0", "192.168.1.4", 2),
        ];
        assert_eq!(
            plan(&current, &desired, None),
            [
                Change::Add {
                    want: desired[1].clone(),
                    over: None
                },
                Change::Remove(current[1].clone())
            ]
        );
        // A route of ours whose gateway moved: re-added, the old one goes.
        let moved = [want("10.244.2.0", "192.168.1.22", 2)];
        let changes = plan(&current[..1], &moved, None);
        assert_eq!(changes.len(), 2, "{changes:?}");
    }

    #[test]
    fn an_earlier_versions_routes_are_adopted_or_removed_at_start() {
        let vx = 7;
        let net = [("10.244.0.0/16".parse().unwrap(), 24)];
        let current = [
            // Wanted, made as boot by an earlier version: adopted.
            route("10.244.2.0", 24, "10.244.2.0", vx, BOOT),
            // A departed peer of the earlier version: removed.
            route("10.244.9.0", 24, "10.244.9.0", vx, BOOT),
            // Same shape outside the cluster network, or another length: kept.
            route("10.99.9.0", 24, "10.99.9.0", vx, BOOT),
            route("10.244.10.0", 25, "10.244.10.0", vx, BOOT),
        ];
        let mut w = want("10.244.2.0", "10.244.2.0", vx);
        w.onlink = true;
        let legacy = |r: &Route| legacy_vxlan(r, vx, &net);
        let changes = plan(&current, std::slice::from_ref(&w), Some(&legacy));
        assert_eq!(
            changes,
            [
                Change::Add {
                    want: w.clone(),
                    over: Some(current[0].clone())
                },
                Change::RemoveLegacy(current[1].clone())
            ]
        );
        // In the steady state, nothing but ours is touched.
        let changes = plan(&current, std::slice::from_ref(&w), None);
        assert_eq!(changes.len(), 1);
        // IPv6 dumps carry the kernel's default metric (1024).
        let mut v6 = route("fd00:244:0:2::", 64, "fd00:244:0:2::", vx, BOOT);
        v6.priority = Some(1024);
        let mut w6 = new("fd00:244:0:2::".parse().unwrap(), 64);
        w6.gateway = v6.gateway;
        w6.oif = Some(vx);
        let net6 = [("fd00:244::/56".parse().unwrap(), 64)];
        let legacy6 = |r: &Route| legacy_vxlan(r, vx, &net6);
        let changes = plan(
            std::slice::from_ref(&v6),
            std::slice::from_ref(&w6),
            Some(&legacy6),
        );
        assert_eq!(
            changes,
            [Change::Add {
                want: w6,
                over: Some(v6)
            }]
        );
    }
}
