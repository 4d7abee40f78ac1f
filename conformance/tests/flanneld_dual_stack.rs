//! Dual stack over vxlan in upstream flannel's layout (issue 18, defect 2):
//! a VTEP per family (`flannel.<VNI>` over the IPv4 underlay,
//! `flannel-v6.<VNI>` over the IPv6 one), the IPv6 VTEP's MAC in
//! `BackendV6Data`, and the lease JSON byte for byte as upstream's Go code
//! writes it. A node in upstream's layout, programmed by hand from the
//! leases as upstream's agent would, shares the cluster with ours.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::time::Duration;

use conformance::cluster::Cluster;
use conformance::{TestNetns, wait_for};
use serde_json::{Value, json};

fn config() -> Value {
    json!({
        "Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:244::/56",
        "Backend": {"Type": "vxlan"}
    })
}

/// A device's MAC and `ip -d link` text.
fn device(ns: &TestNetns, name: &str) -> (String, String) {
    let v: Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", name])).unwrap();
    let mac = v[0]["address"].as_str().unwrap().to_string();
    (mac, ns.ip(&["-d", "link", "show", name]))
}

/// What upstream's Go code writes for a dual-stack vxlan node: field
/// order, null-free addresses, `{"VNI":..,"VtepMAC":..}` per family.
fn upstream_lease(ip4: &str, ip6: &str, mac4: &str, mac6: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip4}","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac4}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
    )
}

/// Every lease in etcd: key (without the prefix) and value, as bytes.
fn leases(c: &Cluster) -> Vec<(String, String)> {
    let out = c.etcdctl(&["get", "--prefix", "/coreos.com/network/subnets/"]);
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .map(|kv| {
            let key = kv[0].strip_prefix("/coreos.com/network/subnets/").unwrap();
            (key.to_string(), kv[1].to_string())
        })
        .collect()
}

/// Pods reach every other pod's every address.
fn all_reach(c: &Cluster, addrs: &[(usize, Vec<String>)]) {
    for (from, _) in addrs {
        for (to, targets) in addrs {
            if from == to {
                continue;
            }
            for target in targets {
                assert!(
                    wait_for(Duration::from_secs(10), || c.reaches(*from, 0, target)),
                    "host {from}'s pod cannot reach {target} on host {to}: {}",
                    if c.hosts[*from].agent.is_some() {
                        c.log(*from)
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
}

#[test]
fn every_pod_reaches_every_other_over_both_families_in_upstreams_layout() {
    let mut c = Cluster::prepare(3, 1, &config(), true);
    for h in 0..3 {
        c.start(h);
    }
    for h in 0..3 {
        let ns = &c.hosts[h].ns;
        let (mac4, v4) = device(ns, "flannel.1");
        let (mac6, v6) = device(ns, "flannel-v6.1");
        // Each sends from the interface's own address of its family.
        assert!(
            v4.contains(&format!("local 192.168.77.{} ", 10 + h)),
            "{v4}"
        );
        assert!(v6.contains(&format!("local fd00:77::{} ", 10 + h)), "{v6}");
        assert!(
            v4.contains("mtu 1450") && v6.contains("mtu 1430"),
            "{v4}\n{v6}"
        );
        // One MTU for pods: the smaller tunnel's.
        assert!(
            c.subnet_env(h).contains("FLANNEL_MTU=1430\n"),
            "{}",
            c.subnet_env(h)
        );
        let ip4 = format!("192.168.77.{}", 10 + h);
        let ip6 = format!("fd00:77::{}", 10 + h);
        let want = upstream_lease(&ip4, &ip6, &mac4, &mac6);
        let all = leases(&c);
        let (_, value) = all
            .iter()
            .find(|(_, v)| v.contains(&format!("\"{ip4}\"")))
            .unwrap_or_else(|| panic!("no lease of {ip4}: {all:?}"));
        assert_eq!(*value, want, "host {h}'s lease is not upstream's bytes");
    }
    let addrs: Vec<(usize, Vec<String>)> = (0..3).map(|h| (h, c.add_pod_all(h, 0))).collect();
    assert!(addrs.iter().all(|(_, a)| a.len() == 2), "{addrs:?}");
    all_reach(&c, &addrs);
}

/// Host 2 plays an upstream flanneld node: its devices, lease and entries
/// made by hand, as upstream's vxlan backend makes them.
fn upstream_node(c: &Cluster, subnet4: &str, subnet6: &str) {
    let ns = &c.hosts[2].ns;
    let (net4, net6) = (
        subnet4.split('/').next().unwrap(),
        subnet6.split('/').next().unwrap(),
    );
    for (dev, local, own) in [
        ("flannel.1", "192.168.77.12", format!("{net4}/32")),
        ("flannel-v6.1", "fd00:77::12", format!("{net6}/128")),
    ] {
        // Upstream asks both devices for the IPv4 tunnel's MTU; the kernel
        // holds the IPv6 one to what its underlay allows.
        ns.ip(&[
            "link",
            "add",
            dev,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            local,
            "dev",
            "eth0",
            "nolearning",
            "dstport",
            "8472",
        ]);
        ns.ip(&["addr", "add", &own, "dev", dev]);
        ns.ip(&["link", "set", dev, "up"]);
    }
    let (mac4, _) = device(ns, "flannel.1");
    let (mac6, _) = device(ns, "flannel-v6.1");
    let key = format!(
        "/coreos.com/network/subnets/{}&{}",
        subnet4.replace('/', "-"),
        subnet6.replace('/', "-")
    );
    let grant = c.etcdctl(&["lease", "grant", "600"]);
    let id = grant.split_whitespace().nth(1).unwrap().to_string();
    let value = upstream_lease("192.168.77.12", "fd00:77::12", &mac4, &mac6);
    c.etcdctl(&["put", "--lease", &id, &key, &value]);
    std::fs::write(
        c.hosts[2].dir.join("subnet.env"),
        format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={}\nFLANNEL_IPV6_NETWORK=fd00:244::/56\nFLANNEL_IPV6_SUBNET={}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            subnet4.replacen(".0/", ".1/", 1),
            subnet6.replacen("::/", "::1/", 1)
        ),
    )
    .unwrap();
    // Our nodes, read from their leases as upstream reads them.
    for (k, v) in leases(c) {
        let Some((s4, s6)) = k.split_once('&') else {
            panic!("not a dual-stack key: {k}");
        };
        if s4.starts_with(net4) {
            continue;
        }
        let lease: Value = serde_json::from_str(&v).unwrap();
        for (dev, subnet, public, data) in [
            ("flannel.1", s4, &lease["PublicIP"], &lease["BackendData"]),
            (
                "flannel-v6.1",
                s6,
                &lease["PublicIPv6"],
                &lease["BackendV6Data"],
            ),
        ] {
            let mac = data["VtepMAC"]
                .as_str()
                .expect("upstream skips a lease without it");
            let public = public.as_str().unwrap();
            let (ip, len) = subnet.rsplit_once('-').unwrap();
            ns.ip(&[
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
            let out = ns.exec(
                "bridge",
                &["fdb", "replace", mac, "dev", dev, "dst", public],
            );
            assert!(out.status.success(), "{out:?}");
            ns.ip(&[
                "route",
                "replace",
                &format!("{ip}/{len}"),
                "via",
                ip,
                "dev",
                dev,
                "onlink",
            ]);
        }
    }
}

#[test]
fn a_node_in_upstreams_layout_and_ours_reach_each_other_over_both_families() {
    let mut c = Cluster::prepare(3, 1, &config(), true);
    c.start(0);
    c.start(1);
    let (s4, s6) = ("10.244.200.0/24", "fd00:244:0:c8::/64");
    upstream_node(&c, s4, s6);
    // Ours took the upstream-shaped lease as a peer, on both VTEPs.
    for h in 0..2 {
        let ns = &c.hosts[h].ns;
        assert!(
            wait_for(Duration::from_secs(5), || {
                ns.ip(&["route", "show", s4]).contains("dev flannel.1")
                    && ns
                        .ip(&["-6", "route", "show", s6])
                        .contains("dev flannel-v6.1")
            }),
            "host {h} did not program the upstream node: {}",
            c.log(h)
        );
        assert!(!c.log(h).contains("ignoring lease"), "{}", c.log(h));
    }
    let addrs: Vec<(usize, Vec<String>)> = (0..3).map(|h| (h, c.add_pod_all(h, 0))).collect();
    assert!(addrs.iter().all(|(_, a)| a.len() == 2), "{addrs:?}");
    all_reach(&c, &addrs);
}
