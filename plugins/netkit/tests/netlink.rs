//! The netlink layer against the kernel, in namespaces private to the test
//! (made on throwaway threads, held by fd; never the machine's own).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::net::IpAddr;

use netkit::link::VethSpec;
use netkit::route::Route;
use netkit::{NetNs, Netlink};
use nix::sched::{CloneFlags, unshare};

fn private_netns() -> NetNs {
    std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET).expect("this test needs root (CAP_SYS_ADMIN)");
        NetNs::current().unwrap()
    })
    .join()
    .unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

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
