//! The netlink layer against the kernel, in namespaces private to the test
//! (made on throwaway threads, held by fd; never the machine's own).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

mod common;

use common::{ip, private_netns, veth_pair};
use netkit::link::{VethSpec, VxlanSpec};
use netkit::neigh::Entry;
use netkit::route::{Route, RouteFilter};
use netkit::{Netlink, Op};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

#[test]
fn bridge_veth_addresses_and_routes() {
    let host = private_netns();
    let pod = private_netns();
    let mut h: Netlink = host.socket().unwrap();
    let mut p: Netlink = pod.socket().unwrap();

    h.add_bridge("br-test", Some(1400), false).unwrap();
    assert!(
        h.add_bridge("br-test", None, false)
            .unwrap_err()
            .is_exists()
    );
    let br = h.link_by_name("br-test").unwrap().unwrap();
    assert_eq!((br.mtu, br.vlan_filtering), (1400, Some(false)));
    h.set_up(br.index).unwrap();

    h.add_veth(&VethSpec {
        host_name: "veth-test",
        peer_name: "eth0",
        peer_netns: pod.fd(),
        mtu: Some(1400),
        peer_mac: Some([0x0a, 0x58, 0, 0, 0, 9]),
    })
    .unwrap();
    let host_end = h.link_by_name("veth-test").unwrap().unwrap();
    let pod_end = p.link_by_name("eth0").unwrap().unwrap();
    assert_eq!(pod_end.mac_string(), "0a:58:00:00:00:09");
    assert_eq!(pod_end.peer_index, Some(host_end.index));
    assert!(
        h.link_by_name("eth0").unwrap().is_none(),
        "the peer was born in the pod namespace"
    );

    h.set_master(host_end.index, br.index).unwrap();
    h.set_bridge_port(
        host_end.index,
        vec![netlink_packet_route::link::InfoBridgePort::HairpinMode(
            true,
        )],
    )
    .unwrap();
    let host_end = h.link_by_name("veth-test").unwrap().unwrap();
    assert_eq!(
        (host_end.master, host_end.hairpin),
        (Some(br.index), Some(true))
    );

    p.add_address(pod_end.index, ip("10.9.0.2"), 24).unwrap();
    p.add_address(pod_end.index, ip("2001:db8::2"), 64).unwrap();
    p.set_up(pod_end.index).unwrap();
    let addrs = p.addresses(Some(pod_end.index)).unwrap();
    assert!(
        addrs
            .iter()
            .any(|a| a.addr == ip("10.9.0.2") && a.prefix == 24),
        "{addrs:?}"
    );

    let mut r = Route::new(ip("0.0.0.0"), 0);
    r.gateway = Some(ip("10.9.0.1"));
    r.oif = Some(pod_end.index);
    p.add_route(&r).unwrap();
    let mut r2 = Route::new(ip("192.168.5.0"), 24);
    r2.oif = Some(pod_end.index);
    r2.priority = Some(50);
    r2.table = Some(1000);
    r2.mtu = Some(1300);
    p.add_route(&r2).unwrap();
    let routes = p.routes(true).unwrap();
    assert!(
        routes
            .iter()
            .any(|x| x.prefix == 0 && x.gateway == Some(ip("10.9.0.1"))),
        "{routes:?}"
    );
    assert!(
        routes.iter().any(|x| x.dst == ip("192.168.5.0")
            && x.table == Some(1000)
            && x.priority == Some(50)
            && x.mtu == Some(1300)),
        "{routes:?}"
    );

    h.del_link(host_end.index).unwrap();
    assert!(
        p.link_by_name("eth0").unwrap().is_none(),
        "deleting one end deletes the pair"
    );
    assert!(h.del_link(host_end.index).unwrap_err().is_not_found());
}

#[test]
fn errors_carry_the_kernels_reason() {
    let ns = private_netns();
    let mut nl = ns.socket().unwrap();
    // No link reaches the gateway: the kernel says so in words.
    let mut r = Route::new(ip("192.168.9.0"), 24);
    r.gateway = Some(ip("203.0.113.1"));
    let err = nl.add_route(&r).unwrap_err();
    assert_eq!(err.errno(), Some(nix::libc::ENETUNREACH), "{err}");
    let reason = err.kernel_message().expect("an extended ack");
    assert!(reason.contains("gateway"), "{reason}");
    assert_eq!(
        err.to_string(),
        format!("Network is unreachable (kernel: {reason})")
    );

    // Dumps are checked strictly: a header field no dump filters by is
    // refused, with the reason.
    assert!(nl.filters_dumps(), "Linux 4.20+ checks dumps strictly");
    let mut req = RouteMessage::default();
    req.header.address_family = AddressFamily::Inet;
    req.header.scope = RouteScope::Link;
    let err = nl.dump(RouteNetlinkMessage::GetRoute(req)).unwrap_err();
    assert_eq!(err.errno(), Some(nix::libc::EINVAL), "{err}");
    assert!(
        err.kernel_message()
            .is_some_and(|m| m.contains("dump request")),
        "{err}"
    );
}

#[test]
fn filtered_route_dumps_return_only_what_they_name() {
    let ns = private_netns();
    let mut nl = ns.socket().unwrap();
    let (a, b) = veth_pair(&ns, &mut nl, "fa", "fb");
    let route = |dst: &str, oif: u32, table: Option<u32>, protocol: Option<u8>| {
        let mut r = Route::new(ip(dst), 24);
        r.oif = Some(oif);
        r.table = table;
        r.protocol = protocol;
        r
    };
    let all = [
        route("10.1.0.0", a, Some(100), None),
        route("10.2.0.0", b, Some(100), None),
        route("10.3.0.0", a, None, Some(99)),
        route("10.4.0.0", b, None, None),
        route("10.5.0.0", a, Some(1000), None),
    ];
    for r in &all {
        nl.add_route(r).unwrap();
    }
    let mut dsts = |filter: RouteFilter| -> Vec<String> {
        let mut v: Vec<String> = nl
            .routes_filtered(true, &filter)
            .unwrap()
            .iter()
            .map(|r| r.dst.to_string())
            .collect();
        v.sort();
        v
    };
    let table = |t| RouteFilter {
        table: Some(t),
        ..RouteFilter::default()
    };
    assert_eq!(dsts(table(100)), ["10.1.0.0", "10.2.0.0"]);
    assert_eq!(dsts(table(1000)), ["10.5.0.0"], "a table past 255");
    assert_eq!(
        dsts(RouteFilter {
            table: Some(254),
            oif: Some(a),
            ..RouteFilter::default()
        }),
        ["10.3.0.0"]
    );
    assert_eq!(
        dsts(RouteFilter {
            protocol: Some(99),
            ..RouteFilter::default()
        }),
        ["10.3.0.0"]
    );
    assert_eq!(
        dsts(RouteFilter {
            oif: Some(b),
            ..RouteFilter::default()
        }),
        ["10.2.0.0", "10.4.0.0"]
    );
    assert!(dsts(table(4242)).is_empty(), "a table that does not exist");
    assert!(
        dsts(RouteFilter {
            oif: Some(99_999),
            ..RouteFilter::default()
        })
        .is_empty(),
        "a link that does not exist"
    );
    // The same as filtering the whole dump.
    let everything = nl.routes(true).unwrap();
    let by_hand: Vec<&Route> = everything.iter().filter(|r| r.table == Some(100)).collect();
    assert_eq!(by_hand.len(), 2);

    // The kernel itself filtered: the raw dump holds table 100 only.
    let mut req = RouteMessage::default();
    req.header.address_family = AddressFamily::Inet;
    req.attributes.push(RouteAttribute::Table(100));
    let raw = nl.dump(RouteNetlinkMessage::GetRoute(req)).unwrap();
    assert_eq!(raw.len(), 2, "{raw:?}");
}

#[test]
fn neighbour_and_fdb_dumps_return_one_links_entries() {
    let ns = private_netns();
    let mut nl = ns.socket().unwrap();
    let (a, b) = veth_pair(&ns, &mut nl, "na", "nb");
    let entry = |ifindex, addr: &str, last| Entry {
        ifindex,
        ip: ip(addr),
        mac: vec![0x0a, 0x58, 0, 0, 0, last],
    };
    nl.set_neighbour(&entry(a, "10.1.0.5", 1)).unwrap();
    nl.set_neighbour(&entry(a, "fd00:1::5", 2)).unwrap();
    nl.set_neighbour(&entry(b, "10.2.0.5", 3)).unwrap();
    let mut got = nl.neighbours(a).unwrap();
    got.sort_by_key(|e| e.ip);
    assert_eq!(
        got,
        [entry(a, "10.1.0.5", 1), entry(a, "fd00:1::5", 2)],
        "{got:?}"
    );
    assert_eq!(nl.neighbours(b).unwrap(), [entry(b, "10.2.0.5", 3)]);

    // The kernel filtered: a raw dump naming the link holds its entries only.
    let mut req = NeighbourMessage::default();
    req.header.family = AddressFamily::Inet;
    req.attributes.push(NeighbourAttribute::IfIndex(b));
    let raw = nl.dump(RouteNetlinkMessage::GetNeighbour(req)).unwrap();
    assert!(
        raw.iter().all(|m| matches!(m,
            RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == b)),
        "{raw:?}"
    );

    // Forwarding entries of two VXLAN devices, each dumped alone.
    nl.add_address(a, ip("192.168.50.1"), 24).unwrap();
    let vx = |nl: &mut Netlink, name: &str, vni: u32| {
        nl.add_vxlan(&VxlanSpec {
            name,
            vni,
            underlay: a,
            local: ip("192.168.50.1"),
            port: 4789 + u16::try_from(vni).unwrap(),
            mtu: 1450,
            mac: [0x0a, 0x58, 0, 0, 1, u8::try_from(vni).unwrap()],
        })
        .unwrap();
        nl.link_by_name(name).unwrap().unwrap().index
    };
    let (x, y) = (vx(&mut nl, "vx1", 1), vx(&mut nl, "vx2", 2));
    nl.set_fdb(&entry(x, "192.168.50.2", 7)).unwrap();
    nl.set_fdb(&entry(x, "192.168.50.3", 8)).unwrap();
    nl.set_fdb(&entry(y, "192.168.50.4", 9)).unwrap();
    let mut fx = nl.fdb(x).unwrap();
    fx.sort_by_key(|e| e.ip);
    assert_eq!(
        fx,
        [entry(x, "192.168.50.2", 7), entry(x, "192.168.50.3", 8)]
    );
    assert_eq!(nl.fdb(y).unwrap(), [entry(y, "192.168.50.4", 9)]);
    let mut req = NeighbourMessage::default();
    req.header.family = AddressFamily::Bridge;
    req.attributes.push(NeighbourAttribute::IfIndex(y));
    let raw = nl.dump(RouteNetlinkMessage::GetNeighbour(req)).unwrap();
    assert!(
        !raw.is_empty()
            && raw.iter().all(|m| matches!(m,
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == y)),
        "{raw:?}"
    );
}

#[test]
fn a_large_batch_of_route_requests_is_answered_one_by_one() {
    let ns = private_netns();
    let mut nl = ns.socket().unwrap();
    let (a, _) = veth_pair(&ns, &mut nl, "ba", "bb");
    let n = 3000;
    let mut routes: Vec<Route> = (0..n)
        .map(|i| {
            let mut r = Route::new(ip(&format!("10.{}.{}.0", 100 + i / 256, i % 256)), 24);
            r.oif = Some(a);
            r.table = Some(100);
            r
        })
        .collect();
    // One in the middle has a gateway nothing reaches: it alone fails.
    let mut bad = Route::new(ip("10.99.0.0"), 24);
    bad.gateway = Some(ip("203.0.113.1"));
    bad.table = Some(100);
    routes.insert(1500, bad);
    let ops: Vec<Op> = routes.iter().cloned().map(Op::ReplaceRoute).collect();
    let results = nl.apply(&ops).unwrap();
    assert_eq!(results.len(), n + 1);
    for (i, r) in results.iter().enumerate() {
        if i == 1500 {
            let e = r.as_ref().unwrap_err();
            assert_eq!(e.errno(), Some(nix::libc::ENETUNREACH), "{e}");
        } else {
            assert!(r.is_ok(), "route {i}: {r:?}");
        }
    }
    let filter = RouteFilter {
        table: Some(100),
        ..RouteFilter::default()
    };
    assert_eq!(nl.routes_filtered(true, &filter).unwrap().len(), n);

    // Replacing is idempotent; deleting the one never added fails alone.
    let again = nl.apply(&ops).unwrap();
    assert_eq!(again.iter().filter(|r| r.is_err()).count(), 1);
    let dels: Vec<Op> = routes.iter().cloned().map(Op::DelRoute).collect();
    let results = nl.apply(&dels).unwrap();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.is_err(), i == 1500, "route {i}: {r:?}");
    }
    assert!(results[1500].as_ref().unwrap_err().is_not_found());
    assert!(nl.routes_filtered(true, &filter).unwrap().is_empty());
}
