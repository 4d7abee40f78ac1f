//! What more than one of netkit's test programs needs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::net::IpAddr;

use netkit::link::VethSpec;
use netkit::{NetNs, Netlink};

/// A veth pair with both ends in `ns`, up: (first end, second end).
pub fn veth_pair(ns: &NetNs, nl: &mut Netlink, a: &str, b: &str) -> (u32, u32) {
    nl.add_veth(&VethSpec {
        host_name: a,
        peer_name: b,
        peer_netns: ns.fd(),
        mtu: None,
        peer_mac: None,
    })
    .unwrap();
    let ia = nl.link_by_name(a).unwrap().unwrap().index;
    let ib = nl.link_by_name(b).unwrap().unwrap().index;
    nl.set_up(ia).unwrap();
    nl.set_up(ib).unwrap();
    (ia, ib)
}

/// A fresh network namespace of our own.
pub fn private_netns() -> NetNs {
    NetNs::create().expect("this test needs root (CAP_SYS_ADMIN)")
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
