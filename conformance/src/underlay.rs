//! Simulated hosts on one L2 segment: a bridge in its own "switch"
//! namespace, and per host a namespace whose `eth0` is plugged into it.

use crate::netns::TestNetns;

#[derive(Debug)]
pub struct Underlay {
    pub switch: TestNetns,
    ports: usize,
}

impl Underlay {
    pub fn new(tag: &str) -> Underlay {
        let switch = TestNetns::new(tag);
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        Underlay { switch, ports: 0 }
    }

    /// A new host namespace with `eth0` on the segment, up, holding `addrs`
    /// (CIDRs; IPv6 ones without duplicate address detection).
    pub fn add_host(&mut self, tag: &str, addrs: &[&str]) -> TestNetns {
        let host = TestNetns::new(tag);
        let port = format!("port{}", self.ports);
        self.ports += 1;
        self.switch.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.name(),
        ]);
        self.switch
            .ip(&["link", "set", &port, "master", "br0", "up"]);
        for addr in addrs {
            if addr.contains(':') {
                host.ip(&["addr", "add", addr, "dev", "eth0", "nodad"]);
            } else {
                host.ip(&["addr", "add", addr, "dev", "eth0"]);
            }
        }
        host.ip(&["link", "set", "eth0", "up"]);
        host
    }
}
