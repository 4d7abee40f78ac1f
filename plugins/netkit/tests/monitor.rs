//! Notifications from the kernel, heard by a Monitor, in namespaces private
//! to the test (made on throwaway threads, held by fd; never the machine's
//! own). This kernel has no dummy driver: bridges and veth pairs stand in.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::HashSet;
mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{ip, private_netns, veth_pair};
use netkit::link::VxlanSpec;
use netkit::neigh::Entry;
use netkit::route::{Route, RouteFilter};
use netkit::{Change, Monitor, Netlink, Op};
use netlink_packet_route::link::InfoKind;

/// What the monitor hears until `found` matches a change, 5 s at most.
fn until(mon: &mut Monitor, mut found: impl FnMut(&Change) -> bool) -> Vec<Change> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut heard = Vec::new();
    while Instant::now() < deadline {
        let batch = mon.next_timeout(Duration::from_millis(200)).unwrap();
        let hit = batch.iter().any(&mut found);
        heard.extend(batch);
        if hit {
            return heard;
        }
    }
    panic!("not heard within 5 s; heard {heard:#?}");
}

/// Everything the monitor hears until it has been quiet for `quiet`.
fn drain(mon: &mut Monitor, quiet: Duration) -> Vec<Change> {
    let mut heard = Vec::new();
    loop {
        let batch = mon.next_timeout(quiet).unwrap();
        if batch.is_empty() {
            return heard;
        }
        heard.extend(batch);
    }
}

/// A VXLAN device on `underlay` (which gets `local`), up.
fn vxlan(nl: &mut Netlink, name: &str, underlay: u32, local: &str) -> u32 {
    nl.add_address(underlay, ip(local), 24).unwrap();
    nl.add_vxlan(&VxlanSpec {
        name,
        vni: 1,
        underlay,
        local: ip(local),
        port: 4789,
        mtu: 1450,
        mac: [0x0a, 0x58, 0, 0, 1, 1],
    })
    .unwrap();
    let index = nl.link_by_name(name).unwrap().unwrap().index;
    nl.set_up(index).unwrap();
    index
}

#[test]
fn links_addresses_routes_neighbours_and_fdb_entries_are_announced() {
    let ns = private_netns();
    // Made inside the namespace, used from this thread.
    let mut mon = ns.monitor().unwrap();
    let mut nl = ns.socket().unwrap();

    // A link comes, changes, goes.
    nl.add_bridge("mon-br", Some(1400), false).unwrap();
    let heard = until(
        &mut mon,
        |c| matches!(c, Change::Link(l) if l.name == "mon-br"),
    );
    let br = heard
        .iter()
        .find_map(|c| match c {
            Change::Link(l) if l.name == "mon-br" => Some(l.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!((br.mtu, br.kind.clone()), (1400, Some(InfoKind::Bridge)));
    nl.set_up(br.index).unwrap();
    until(
        &mut mon,
        |c| matches!(c, Change::Link(l) if l.index == br.index && l.is_up()),
    );

    // An address comes and goes.
    nl.add_address(br.index, ip("10.7.0.1"), 24).unwrap();
    let added = Change::Address {
        index: br.index,
        addr: ip("10.7.0.1"),
        prefix: 24,
    };
    until(&mut mon, |c| *c == added);
    nl.del_address(br.index, ip("10.7.0.1"), 24).unwrap();
    let gone = Change::AddressGone {
        index: br.index,
        addr: ip("10.7.0.1"),
        prefix: 24,
    };
    until(&mut mon, |c| *c == gone);

    nl.del_link(br.index).unwrap();
    let heard = until(&mut mon, |c| matches!(c, Change::LinkGone { .. }));
    assert!(
        heard.contains(&Change::LinkGone {
            index: br.index,
            name: "mon-br".into()
        }),
        "{heard:#?}"
    );
    // The bridge's own AF_BRIDGE announcements are not taken for the link.
    assert!(
        !heard
            .iter()
            .any(|c| matches!(c, Change::Link(l) if l.index == br.index && l.kind.is_none())),
        "{heard:#?}"
    );

    // A route comes and goes, read as a dump reads it.
    let (a, _) = veth_pair(&ns, &mut nl, "ma", "mb");
    nl.add_address(a, ip("10.8.0.1"), 24).unwrap();
    let mut r = Route::new(ip("10.9.0.0"), 24);
    r.gateway = Some(ip("10.50.0.1"));
    r.onlink = true;
    r.oif = Some(a);
    r.priority = Some(7);
    r.table = Some(1000);
    r.protocol = Some(99);
    r.mtu = Some(1300);
    nl.replace_route(&r).unwrap();
    let heard = until(
        &mut mon,
        |c| matches!(c, Change::Route(x) if x.dst == r.dst),
    );
    let notified = heard
        .iter()
        .find_map(|c| match c {
            Change::Route(x) if x.dst == r.dst => Some(x.clone()),
            _ => None,
        })
        .unwrap();
    let dumped = nl
        .routes_filtered(
            true,
            &RouteFilter {
                table: Some(1000),
                ..RouteFilter::default()
            },
        )
        .unwrap();
    assert_eq!(dumped, std::slice::from_ref(&notified));
    assert_eq!(
        (
            notified.gateway,
            notified.onlink,
            notified.oif,
            notified.priority,
            notified.table,
            notified.protocol,
            notified.mtu,
            notified.scope
        ),
        (
            Some(ip("10.50.0.1")),
            true,
            Some(a),
            Some(7),
            Some(1000),
            Some(99),
            Some(1300),
            Some(0) // universe
        )
    );
    nl.del_route(&r).unwrap();
    let heard = until(&mut mon, |c| matches!(c, Change::RouteGone(_)));
    assert!(heard.contains(&Change::RouteGone(notified)), "{heard:#?}");

    // An IPv6 route too.
    let mut r6 = Route::new(ip("fd00:9::"), 64);
    r6.oif = Some(a);
    r6.protocol = Some(99);
    nl.replace_route(&r6).unwrap();
    let heard = until(
        &mut mon,
        |c| matches!(c, Change::Route(x) if x.dst == r6.dst && x.prefix == 64),
    );
    assert!(
        heard.iter().any(|c| matches!(c,
            Change::Route(x) if x.dst == r6.dst && x.oif == Some(a) && x.protocol == Some(99)
                && x.table == Some(254))),
        "{heard:#?}"
    );

    // A neighbour entry is set and deleted.
    let n = Entry {
        ifindex: a,
        ip: ip("10.8.0.9"),
        mac: vec![0x0a, 0x58, 0, 0, 0, 9],
    };
    nl.set_neighbour(&n).unwrap();
    until(&mut mon, |c| *c == Change::Neighbour(n.clone()));
    nl.del_neighbour(&n).unwrap();
    let unsaid = Entry {
        mac: Vec::new(),
        ..n.clone()
    };
    until(&mut mon, |c| *c == Change::NeighbourGone(unsaid.clone()));

    // A forwarding entry on a VXLAN device: the notification names its
    // destination (NDA_DST), set and deleted alike.
    let vx = vxlan(&mut nl, "mon-vx", a, "192.168.70.1");
    let f = Entry {
        ifindex: vx,
        ip: ip("192.168.70.2"),
        mac: vec![0x0a, 0x58, 0, 0, 2, 2],
    };
    nl.set_fdb(&f).unwrap();
    until(&mut mon, |c| *c == Change::Fdb(f.clone()));
    nl.del_fdb(&f).unwrap();
    until(&mut mon, |c| *c == Change::FdbGone(f.clone()));
}

/// Which of `route`, `neighbour`, `fdb` (all on one device) the monitor
/// heard go, as text for the report.
fn announced(heard: &[Change], routes: &[Route], neighbour: &Entry, fdb: &Entry) -> String {
    let route_gone = |r: &Route| {
        heard
            .iter()
            .any(|c| matches!(c, Change::RouteGone(x) if x.dst == r.dst))
    };
    format!(
        "IPv4 route: {}, IPv6 route: {}, neighbour: {}, fdb entry: {}",
        route_gone(&routes[0]),
        route_gone(&routes[1]),
        heard
            .iter()
            .any(|c| matches!(c, Change::NeighbourGone(e) if e.ip == neighbour.ip)),
        heard.contains(&Change::FdbGone(fdb.clone())),
    )
}

/// What goes with a VXLAN device that goes down, then away, and what of it
/// is announced one by one (printed for the record; only what dumps show
/// and the link's own notifications are asserted).
#[test]
fn what_a_vxlan_device_going_down_and_away_takes_and_announces() {
    let ns = private_netns();
    let mut mon = ns.monitor().unwrap();
    let mut nl = ns.socket().unwrap();
    let (a, _) = veth_pair(&ns, &mut nl, "da", "db");
    let vx = vxlan(&mut nl, "vx-down", a, "192.168.80.1");
    let mut r4 = Route::new(ip("10.9.0.0"), 24);
    r4.gateway = Some(ip("10.9.0.0"));
    r4.onlink = true;
    r4.oif = Some(vx);
    r4.protocol = Some(99);
    let mut r6 = Route::new(ip("fd00:9::"), 64);
    r6.gateway = Some(ip("fd00:8::2"));
    r6.oif = Some(vx);
    r6.protocol = Some(99);
    let n = Entry {
        ifindex: vx,
        ip: ip("10.9.0.0"),
        mac: vec![0x0a, 0x58, 0, 0, 9, 9],
    };
    let f = Entry {
        ifindex: vx,
        ip: ip("192.168.80.9"),
        mac: n.mac.clone(),
    };
    let program = |nl: &mut Netlink| {
        // IPv6 addresses go with a link that goes down.
        nl.add_address_nodad(vx, ip("fd00:8::1"), 64).unwrap();
        let ops = [
            Op::SetNeighbour(n.clone()),
            Op::SetFdb(f.clone()),
            Op::ReplaceRoute(r4.clone()),
            Op::ReplaceRoute(r6.clone()),
        ];
        for r in nl.apply(&ops).unwrap() {
            r.unwrap();
        }
    };
    program(&mut nl);
    drain(&mut mon, Duration::from_millis(200));
    let ours = |nl: &mut Netlink| {
        let v4 = nl.routes(true).unwrap();
        let v6 = nl.routes(false).unwrap();
        (
            v4.iter()
                .chain(&v6)
                .filter(|x| x.protocol == Some(99))
                .count(),
            nl.neighbours(vx).unwrap().contains(&n),
            nl.fdb(vx).unwrap().contains(&f),
        )
    };

    nl.set_down(vx).unwrap();
    let mut heard = until(
        &mut mon,
        |c| matches!(c, Change::Link(l) if l.index == vx && !l.is_up()),
    );
    heard.extend(drain(&mut mon, Duration::from_millis(300)));
    let left = ours(&mut nl);
    assert_eq!(left.0, 0, "routes go with a link that goes down");
    eprintln!(
        "vxlan device down: (routes, neighbour, fdb entry) left {left:?}; announced gone: {}",
        announced(&heard, &[r4.clone(), r6.clone()], &n, &f)
    );

    nl.set_up(vx).unwrap();
    program(&mut nl);
    drain(&mut mon, Duration::from_millis(300));
    nl.del_link(vx).unwrap();
    let mut heard = until(&mut mon, |c| {
        *c == Change::LinkGone {
            index: vx,
            name: "vx-down".into(),
        }
    });
    heard.extend(drain(&mut mon, Duration::from_millis(300)));
    eprintln!(
        "vxlan device deleted: announced gone: {}",
        announced(&heard, &[r4, r6], &n, &f)
    );
}

#[test]
fn a_monitor_hears_only_its_own_namespace() {
    let here = private_netns();
    let there = private_netns();
    let mut mon = here.monitor().unwrap();
    let mut h = here.socket().unwrap();
    let mut t = there.socket().unwrap();

    let (ta, _) = veth_pair(&there, &mut t, "ta", "tb");
    let mut r = Route::new(ip("10.66.0.0"), 24);
    r.oif = Some(ta);
    t.replace_route(&r).unwrap();
    t.add_address(ta, ip("10.66.1.1"), 24).unwrap();
    // Announced after all of that, here: what came before it was heard.
    h.add_bridge("marker", None, false).unwrap();
    let heard = until(
        &mut mon,
        |c| matches!(c, Change::Link(l) if l.name == "marker"),
    );
    let foreign = heard.iter().find(|c| match c {
        Change::Link(l) => l.name != "marker",
        Change::Route(x) => x.dst == ip("10.66.0.0"),
        Change::Address { addr, .. } => *addr == ip("10.66.1.1"),
        _ => false,
    });
    assert!(foreign.is_none(), "{foreign:?} in {heard:#?}");
}

#[test]
fn a_burst_of_5000_routes_is_all_reported_or_an_overrun_is_seen() {
    let ns = private_netns();
    let mut mon = ns.monitor().unwrap();
    let mut nl = ns.socket().unwrap();
    let (a, _) = veth_pair(&ns, &mut nl, "ra", "rb");
    let n = 5000;
    let ops: Vec<Op> = (0..n)
        .map(|i| {
            let mut r = Route::new(ip(&format!("10.{}.{}.0", 100 + i / 256, i % 256)), 24);
            r.oif = Some(a);
            r.protocol = Some(77);
            Op::ReplaceRoute(r)
        })
        .collect();
    // Nothing is read while the burst is made: the socket's buffer holds it.
    assert!(nl.apply(&ops).unwrap().iter().all(Result::is_ok));
    let heard = drain(&mut mon, Duration::from_millis(500));
    let overrun = heard.contains(&Change::Overrun);
    let routes: HashSet<IpAddr> = heard
        .iter()
        .filter_map(|c| match c {
            Change::Route(r) if r.protocol == Some(77) => Some(r.dst),
            _ => None,
        })
        .collect();
    eprintln!(
        "burst of {n} routes: {} heard, overrun {overrun}",
        routes.len()
    );
    assert!(routes.len() == n || overrun, "{} of {n}", routes.len());

    // The monitor keeps working either way.
    nl.del_route(&match &ops[0] {
        Op::ReplaceRoute(r) => r.clone(),
        _ => unreachable!(),
    })
    .unwrap();
    until(
        &mut mon,
        |c| matches!(c, Change::RouteGone(r) if r.dst == ip("10.100.0.0")),
    );
}

#[test]
fn a_monitor_read_on_another_thread_hears_a_burst_as_it_is_made() {
    let ns = private_netns();
    let mut mon = ns.monitor().unwrap();
    let mut nl = ns.socket().unwrap();
    let (a, _) = veth_pair(&ns, &mut nl, "ta", "tb");
    let n = 2000;
    let reader = std::thread::spawn(move || {
        let mut routes = HashSet::new();
        let mut overrun = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while routes.len() < n && !overrun && Instant::now() < deadline {
            for c in mon.next().unwrap() {
                match c {
                    Change::Route(r) if r.protocol == Some(78) => {
                        routes.insert(r.dst);
                    }
                    Change::Overrun => overrun = true,
                    _ => {}
                }
            }
        }
        (routes.len(), overrun)
    });
    let ops: Vec<Op> = (0..n)
        .map(|i| {
            let mut r = Route::new(ip(&format!("10.{}.{}.0", 100 + i / 256, i % 256)), 24);
            r.oif = Some(a);
            r.protocol = Some(78);
            Op::ReplaceRoute(r)
        })
        .collect();
    assert!(nl.apply(&ops).unwrap().iter().all(Result::is_ok));
    let (heard, overrun) = reader.join().unwrap();
    assert!(heard == n || overrun, "{heard} of {n}");
}

#[test]
fn apply_programs_5000_peers_on_a_vxlan_device_and_reports_each_deletion() {
    let ns = private_netns();
    let mut nl = ns.socket().unwrap();
    // Listening as the agent does while it programs its peers.
    let mut mon = ns.monitor().unwrap();
    let (under, _) = veth_pair(&ns, &mut nl, "ua", "ub");
    let vx = vxlan(&mut nl, "flannel.1", under, "192.168.60.1");
    let peers = 5000u32;
    let mut ops = Vec::new();
    let mut routes = Vec::new();
    for i in 0..peers {
        let [_, _, hi, lo] = i.to_be_bytes();
        // Flannel's layout: the peer's subnet via its first address on
        // the VXLAN device, that address at the peer's VTEP MAC, that MAC
        // at the peer's underlay address.
        let subnet = IpAddr::from([10, 128 + hi, lo, 0]);
        let mac = vec![0x0a, 0x58, 0x0a, 128 + hi, lo, 0];
        let mut r = Route::new(subnet, 24);
        r.gateway = Some(subnet);
        r.onlink = true;
        r.oif = Some(vx);
        r.protocol = Some(77);
        ops.push(Op::SetNeighbour(Entry {
            ifindex: vx,
            ip: subnet,
            mac: mac.clone(),
        }));
        ops.push(Op::SetFdb(Entry {
            ifindex: vx,
            ip: IpAddr::from([172, 16 + hi, lo, 1]),
            mac,
        }));
        ops.push(Op::ReplaceRoute(r.clone()));
        routes.push(r);
    }
    let started = Instant::now();
    let results = nl.apply(&ops).unwrap();
    let took = started.elapsed();
    eprintln!("apply of {} ops (5,000 peers) took {took:?}", ops.len());
    assert_eq!(results.len(), ops.len());
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "op {i} {:?}: {r:?}", ops[i]);
    }

    let filter = RouteFilter {
        oif: Some(vx),
        protocol: Some(77),
        ..RouteFilter::default()
    };
    let mut dumped = nl.routes_filtered(true, &filter).unwrap();
    dumped.sort_by_key(|r| r.dst);
    assert_eq!(dumped.len(), routes.len());
    assert!(dumped.iter().all(|r| r.onlink && r.gateway == Some(r.dst)));
    let set = |pick: fn(&Op) -> Option<&Entry>| -> HashSet<Entry> {
        ops.iter().filter_map(pick).cloned().collect()
    };
    // IPv6 multicast neighbours (33:33:...) of the device come along.
    let neighbours: HashSet<Entry> = nl.neighbours(vx).unwrap().into_iter().collect();
    let want = set(|o| match o {
        Op::SetNeighbour(e) => Some(e),
        _ => None,
    });
    assert!(neighbours.is_superset(&want));
    let fdb: HashSet<Entry> = nl.fdb(vx).unwrap().into_iter().collect();
    let want = set(|o| match o {
        Op::SetFdb(e) => Some(e),
        _ => None,
    });
    assert_eq!(fdb, want);

    // The burst was heard whole, or its loss was said.
    let heard = drain(&mut mon, Duration::from_millis(500));
    let count = |f: fn(&Change) -> bool| heard.iter().filter(|c| f(c)).count();
    let overrun = heard.contains(&Change::Overrun);
    let (r, n, f) = (
        count(|c| matches!(c, Change::Route(r) if r.protocol == Some(77))),
        count(|c| matches!(c, Change::Neighbour(_))),
        count(|c| matches!(c, Change::Fdb(_))),
    );
    eprintln!("heard {r} routes, {n} neighbours, {f} fdb entries, overrun {overrun}");
    assert!((r, n, f) == (5000, 5000, 5000) || overrun, "{r} {n} {f}");

    // Deleting again: the routes that are there go, the ones that are not
    // fail in their own slots.
    let mut dels: Vec<Op> = routes.iter().cloned().map(Op::DelRoute).collect();
    let missing = |d: &str| {
        let mut r = Route::new(ip(d), 24);
        r.oif = Some(vx);
        Op::DelRoute(r)
    };
    dels.insert(0, missing("10.250.0.0"));
    dels.insert(2500, missing("10.250.1.0"));
    dels.push(missing("10.250.2.0"));
    let started = Instant::now();
    let results = nl.apply(&dels).unwrap();
    eprintln!(
        "apply of {} route deletions took {:?}",
        dels.len(),
        started.elapsed()
    );
    assert_eq!(results.len(), dels.len());
    let last = dels.len() - 1;
    for (i, r) in results.iter().enumerate() {
        if [0, 2500, last].contains(&i) {
            let e = r.as_ref().unwrap_err();
            assert!(e.is_not_found(), "slot {i}: {e}");
        } else {
            assert!(r.is_ok(), "slot {i}: {r:?}");
        }
    }
    assert!(nl.routes_filtered(true, &filter).unwrap().is_empty());
}
