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
//! Everything here is pure; `diff` compares, the agent dumps and applies.

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

/// Made by this agent (a route we program names no table: the main one).
pub fn is_ours(r: &Route) -> bool {
    r.protocol == Some(PROTOCOL) && r.table.is_none_or(|t| t == MAIN_TABLE)
}

/// The metric the kernel gives a route made without one.
pub fn metric(r: &Route) -> u32 {
    r.priority.unwrap_or(if r.dst.is_ipv4() { 0 } else { 1024 })
}

/// In the same place in the main table: a replace of one takes the
/// other's place.
pub fn same_place(a: &Route, b: &Route) -> bool {
    a.dst == b.dst && a.prefix == b.prefix && metric(a) == metric(b)
}

/// The same route (who made it aside): the same place and forwarding.
pub fn same(a: &Route, b: &Route) -> bool {
    same_place(a, b) && a.gateway == b.gateway && a.oif == b.oif && a.onlink == b.onlink
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
                && !desired.iter().any(|d| same_place(r, d))
        })
        .collect()
}

/// Routes an earlier version left for peers that are gone: in the old
/// vxlan pattern (`is_legacy`) where nothing is wanted. At start only.
pub fn legacy<'a>(
    current: &'a [Route],
    desired: &[Route],
    is_legacy: impl Fn(&Route) -> bool,
) -> Vec<&'a Route> {
    current
        .iter()
        .filter(|r| is_legacy(r) && !desired.iter().any(|d| same_place(r, d)))
        .collect()
}

/// `10.244.3.0/24 via 192.168.1.3 dev eth0 onlink` for the log; `name`
/// gives a device's name from its index.
pub fn describe(r: &Route, name: &dyn Fn(u32) -> String) -> String {
    let mut s = format!("{}/{}", r.dst, r.prefix);
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" dev {}", name(oif)));
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    match r.protocol {
        Some(PROTOCOL) | None => {}
        Some(BOOT) => s.push_str(" proto boot"),
        Some(p) => s.push_str(&format!(" proto {p}")),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{self, Change, Item, Set};

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

    fn routes(r: &[Route]) -> Set {
        Set {
            routes: r.to_vec(),
            ..Set::default()
        }
    }

    #[test]
    fn an_operators_route_in_the_cluster_range_is_left_alone() {
        let current = [
            route("10.244.2.0", 24, "192.168.1.2", 2, PROTOCOL),
            // `ip route add 10.244.250.0/24 via 192.168.1.9 dev eth0`
            route("10.244.250.0", 24, "192.168.1.9", 2, BOOT),
        ];
        let desired = [want("10.244.2.0", "192.168.1.2", 2)];
        assert!(diff::diff(&routes(&current), &routes(&desired)).is_empty());
        // Not even at start: it is not in the old vxlan pattern.
        let is_legacy = |r: &Route| legacy_vxlan(r, 7, &[("10.244.0.0/16".parse().unwrap(), 24)]);
        assert!(legacy(&current, &desired, is_legacy).is_empty());
        // Named at start, as possibly a leftover.
        let in_cluster = |ip: IpAddr| "10.244.0.0/16".parse::<IpNetwork>().unwrap().contains(ip);
        let named = suspects(&current, &desired, &[Some(2)], in_cluster);
        assert_eq!(named, [&current[1]]);
        assert!(suspects(&current, &desired, &[Some(3)], in_cluster).is_empty());
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
        let is_legacy = |r: &Route| legacy_vxlan(r, vx, &net);
        let desired = std::slice::from_ref(&w);
        assert_eq!(
            diff::diff(&routes(&current), &routes(desired)),
            [Change::Set {
                want: Item::Route(w.clone()),
                over: Some(Item::Route(current[0].clone()))
            }]
        );
        assert_eq!(legacy(&current, desired, is_legacy), [&current[1]]);
        // IPv6 dumps carry the kernel's default metric (1024).
        let mut v6 = route("fd00:244:0:2::", 64, "fd00:244:0:2::", vx, BOOT);
        v6.priority = Some(1024);
        let mut w6 = new("fd00:244:0:2::".parse().unwrap(), 64);
        w6.gateway = v6.gateway;
        w6.oif = Some(vx);
        let net6 = [("fd00:244::/56".parse().unwrap(), 64)];
        let current6 = std::slice::from_ref(&v6);
        let desired6 = std::slice::from_ref(&w6);
        assert!(legacy(current6, desired6, |r: &Route| legacy_vxlan(r, vx, &net6)).is_empty());
        assert_eq!(
            diff::diff(&routes(current6), &routes(desired6)),
            [Change::Set {
                want: Item::Route(w6),
                over: Some(Item::Route(v6))
            }]
        );
    }

    #[test]
    fn descriptions_name_devices_and_hide_our_own_protocol() {
        let mut r = want("10.244.2.0", "10.244.2.0", 7);
        r.onlink = true;
        let name = |i: u32| {
            if i == 7 {
                "flannel.1".to_string()
            } else {
                format!("#{i}")
            }
        };
        assert_eq!(
            describe(&r, &name),
            "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"
        );
        r.protocol = Some(BOOT);
        assert!(describe(&r, &name).ends_with(" proto boot"));
    }
}
