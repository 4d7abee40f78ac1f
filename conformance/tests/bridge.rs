//! bridge (+ host-local), run as a runtime runs it inside a throwaway host
//! namespace with throwaway pod namespaces: every config field, every
//! spec version's result, rollback after failures, DEL, CHECK, GC, STATUS,
//! and many pods at once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::PathBuf;

use conformance::util::addresses;
use conformance::util::{link_names, reservations, with_prev};
use conformance::{Invocation, PluginNode, PluginOutput};
use serde_json::{Value, json};

conformance::plugin_node_wrapper!(Node);

impl Node {
    fn new(pods: usize) -> Node {
        Node(PluginNode::new("bridge", pods, "br"))
    }

    /// A bridge config with host-local over `ranges` (empty: L2 mode).
    fn conf(&self, version: &str, ranges: Value, extra: Value) -> Value {
        let mut c =
            json!({"cniVersion": version, "name": "brnet", "type": "bridge", "bridge": "cni0"});
        if ranges.as_array().is_some_and(|r| !r.is_empty()) {
            c["ipam"] =
                json!({"type": "host-local", "dataDir": self.data.path(), "ranges": ranges});
        }
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn store(&self) -> PathBuf {
        self.data.path().join("brnet")
    }

    fn reservations(&self) -> usize {
        reservations(&self.store())
    }

    fn host_links(&self) -> Vec<String> {
        link_names(&self.host.host)
    }
}

fn v4() -> Value {
    json!([[{"subnet": "10.88.0.0/24"}]])
}

fn dual() -> Value {
    json!([[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd00:88::/64"}]])
}

#[test]
fn add_and_del_for_ipv4_ipv6_and_dual_stack() {
    let cases = [
        (v4(), vec!["10.88.0.2/24"], vec!["10.88.0.1/24"]),
        (
            json!([[{"subnet": "fd00:88::/64"}]]),
            vec!["fd00:88::2/64"],
            vec!["fd00:88::1/64"],
        ),
        (
            dual(),
            vec!["10.88.0.2/24", "fd00:88::2/64"],
            vec!["10.88.0.1/24", "fd00:88::1/64"],
        ),
    ];
    for (ranges, addrs, gws) in cases {
        let node = Node::new(1);
        let conf = node.conf("1.1.0", ranges, json!({"isGateway": true}));
        let r = node.add(0, &conf);
        let ifs = r["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 3, "{r}");
        assert_eq!(ifs[0]["name"], "cni0");
        assert!(ifs[1]["name"].as_str().unwrap().starts_with("veth"));
        assert_eq!(ifs[2]["name"], "eth0");
        assert_eq!(ifs[2]["sandbox"], json!(node.host.pod(0).path()));
        for i in ifs {
            assert_eq!(i["mac"].as_str().unwrap().len(), 17, "{i}");
        }
        assert_ne!(ifs[0]["mac"], ifs[1]["mac"]);
        for (ip, want) in r["ips"].as_array().unwrap().iter().zip(&addrs) {
            assert_eq!(ip["address"], *want);
            assert_eq!(ip["interface"], 2);
        }
        let pod_addrs = node.host.pod(0).ip(&["-o", "addr", "show", "dev", "eth0"]);
        for a in &addrs {
            assert!(pod_addrs.contains(a), "{a} not in {pod_addrs}");
        }
        let br_addrs = node.host.host.ip(&["-o", "addr", "show", "dev", "cni0"]);
        for g in &gws {
            assert!(br_addrs.contains(g), "{g} not in {br_addrs}");
        }
        assert_eq!(
            node.host_links().len(),
            3,
            "lo, cni0 and the veth: {:?}",
            node.host_links()
        );
        // The pod reaches its gateway.
        let gw = gws[0].split('/').next().unwrap();
        let ping = node.host.pod(0).exec("ping", &["-c1", "-W2", gw]);
        assert!(
            ping.status.success(),
            "{}",
            String::from_utf8_lossy(&ping.stdout)
        );

        node.del(0, &conf);
        assert_eq!(
            node.host_links(),
            ["lo", "cni0"],
            "the bridge stays, the veth goes"
        );
        assert_eq!(link_names(node.host.pod(0)), ["lo"]);
        assert_eq!(node.reservations(), 0);
        node.del(0, &conf); // again: still fine
    }
}

#[test]
fn result_shape_in_every_spec_version() {
    for version in [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ] {
        let node = Node::new(1);
        let conf = node.conf(version, dual(), json!({"isGateway": true}));
        let r = node.add(0, &conf);
        assert_eq!(r["cniVersion"], version);
        if version < "0.3.0" {
            assert_eq!(r["ip4"]["ip"], "10.88.0.2/24", "{r}");
            assert_eq!(r["ip6"]["ip"], "fd00:88::2/64");
            assert!(r.get("interfaces").is_none());
        } else {
            assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
            assert_eq!(r["ips"][0]["interface"], 2);
            assert_eq!(
                r["ips"][0].get("version").is_some(),
                version.starts_with("0."),
                "{r}"
            );
        }
        node.del(0, &conf);
    }
}

#[test]
fn l2_mode_and_disabled_container_interface() {
    let node = Node::new(2);
    let conf = node.conf("1.1.0", json!([]), json!({}));
    let r = node.add(0, &conf);
    assert!(r.get("ips").is_none());
    assert!(
        node.host
            .pod(0)
            .ip(&["link", "show", "eth0"])
            .contains("state UP")
            || node
                .host
                .pod(0)
                .ip(&["link", "show", "eth0"])
                .contains(",UP")
    );
    let down = node.conf(
        "1.1.0",
        json!([]),
        json!({"disableContainerInterface": true}),
    );
    node.add(1, &down);
    assert!(
        !node
            .host
            .pod(1)
            .ip(&["link", "show", "eth0"])
            .contains(",UP")
    );
    // An L2 result cannot be printed in 0.2.0, and nothing is left behind.
    let old = node.conf("0.2.0", json!([]), json!({}));
    node.del(0, &conf);
    let err = node.run(node.call("ADD", 0, &old)).error(1);
    assert_eq!(err["msg"], "cannot convert: no valid IP addresses");
    let bad = node.conf("1.1.0", v4(), json!({"disableContainerInterface": true}));
    node.run(node.call("ADD", 0, &bad)).error(7);
}

#[test]
fn invalid_configs_are_refused_before_anything_is_made() {
    let node = Node::new(1);
    let cases = [
        json!({"hairpinMode": true, "promiscMode": true}),
        json!({"vlan": 5000}),
        json!({"vlan": -1}),
        json!({"vlanTrunk": [{"id": 0}]}),
        json!({"vlanTrunk": [{"minID": 10, "maxID": 5}]}),
        json!({"ipMasqBackend": "pf"}),
        json!({"mtu": "big"}),
    ];
    for extra in cases {
        let conf = node.conf("1.1.0", v4(), extra.clone());
        node.run(node.call("ADD", 0, &conf)).error(7);
        assert_eq!(node.host_links(), ["lo"], "{extra}");
    }
    let conf = node.conf("1.1.0", v4(), json!({}));
    let err = node
        .run(node.call("ADD", 0, &conf).cni_args("MAC=zz:zz"))
        .error(7);
    assert!(err["msg"].as_str().unwrap().contains("zz:zz"));
    assert_eq!(node.reservations(), 0);
}

#[test]
fn existing_bridge_is_reused_and_a_non_bridge_name_is_an_error() {
    let node = Node::new(2);
    node.host
        .host
        .ip(&["link", "add", "cni0", "type", "bridge"]);
    node.host.host.ip(&["link", "set", "cni0", "promisc", "on"]);
    let conf = node.conf("1.1.0", v4(), json!({"mtu": 1300}));
    node.add(0, &conf);
    assert!(
        node.host
            .host
            .ip(&["link", "show", "cni0"])
            .contains("PROMISC"),
        "an existing bridge keeps its settings"
    );
    assert!(
        node.host
            .pod(0)
            .ip(&["link", "show", "eth0"])
            .contains("mtu 1300")
    );

    node.host.host.ip(&[
        "link", "add", "notbr", "type", "veth", "peer", "name", "notbr-p",
    ]);
    let conf = node.conf("1.1.0", v4(), json!({"bridge": "notbr"}));
    let err = node.run(node.call("ADD", 1, &conf)).error(120);
    assert_eq!(err["msg"], "\"notbr\" already exists but is not a bridge");
    assert_eq!(link_names(node.host.pod(1)), ["lo"]);
    assert_eq!(node.reservations(), 1);
}

#[test]
fn new_bridge_gets_the_mtu_promisc_and_a_stable_mac() {
    let node = Node::new(2);
    let conf = node.conf("1.1.0", v4(), json!({"mtu": 1400, "promiscMode": true}));
    let r0 = node.add(0, &conf);
    let show = node.host.host.ip(&["link", "show", "cni0"]);
    assert!(
        show.contains("mtu 1400") && show.contains("PROMISC"),
        "{show}"
    );
    let r1 = node.add(1, &conf);
    assert_eq!(
        r0["interfaces"][0]["mac"], r1["interfaces"][0]["mac"],
        "the bridge MAC does not follow its ports"
    );
}

#[test]
fn gateway_default_route_and_routes_without_gateway() {
    let node = Node::new(1);
    let ranges = json!([[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd00:88::/64"}]]);
    let mut conf = node.conf("1.1.0", ranges, json!({"isDefaultGateway": true}));
    conf["ipam"]["routes"] =
        json!([{"dst": "192.168.50.0/24"}, {"dst": "172.16.0.0/16", "gw": "10.88.0.254"}]);
    let r = node.add(0, &conf);
    let routes = node.host.pod(0).ip(&["route", "show"]);
    assert!(
        routes.contains("default via 10.88.0.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("192.168.50.0/24 via 10.88.0.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("172.16.0.0/16 via 10.88.0.254 dev eth0"),
        "{routes}"
    );
    assert!(
        node.host
            .pod(0)
            .ip(&["-6", "route", "show"])
            .contains("default via fd00:88::1 dev eth0")
    );
    let fwd = node
        .host
        .host
        .exec("cat", &["/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");
    // CHECK accepts routes without a gateway (the reference wrongly fails).
    node.run(node.call("CHECK", 0, &with_prev(&conf, &r)))
        .silent_success();
}

#[test]
fn force_address_replaces_a_different_bridge_address() {
    let node = Node::new(2);
    node.host
        .host
        .ip(&["link", "add", "cni0", "type", "bridge"]);
    node.host
        .host
        .ip(&["addr", "add", "10.99.0.1/24", "dev", "cni0"]);
    let conf = node.conf("1.1.0", v4(), json!({"isGateway": true}));
    let err = node.run(node.call("ADD", 0, &conf)).error(120);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("already has an IP address different from 10.88.0.1/24"),
        "{err}"
    );
    assert_eq!(node.reservations(), 0);
    assert_eq!(link_names(node.host.pod(0)), ["lo"]);
    let conf = node.conf(
        "1.1.0",
        v4(),
        json!({"isGateway": true, "forceAddress": true}),
    );
    node.add(1, &conf);
    let addrs = node
        .host
        .host
        .ip(&["-o", "-4", "addr", "show", "dev", "cni0"]);
    assert!(
        addrs.contains("10.88.0.1/24") && !addrs.contains("10.99.0.1"),
        "{addrs}"
    );
}

#[test]
fn hairpin_port_isolation_and_mac_sources() {
    let node = Node::new(4);
    let conf = node.conf(
        "1.1.0",
        v4(),
        json!({"hairpinMode": true, "portIsolation": true}),
    );
    let r = node.add(0, &conf);
    let veth = r["interfaces"][1]["name"].as_str().unwrap();
    let detail = node.host.host.ip(&["-d", "link", "show", veth]);
    assert!(
        detail.contains("hairpin on") && detail.contains("isolated on"),
        "{detail}"
    );

    let plain = node.conf("1.1.0", v4(), json!({}));
    let r = node
        .run(
            node.call("ADD", 1, &plain)
                .cni_args("IgnoreUnknown=1;MAC=0a:58:0a:58:00:11"),
        )
        .success();
    assert_eq!(r["interfaces"][2]["mac"], "0a:58:0a:58:00:11");
    let mut c = plain.clone();
    c["args"] = json!({"cni": {"mac": "0a:58:0a:58:00:22"}});
    let r = node
        .run(
            node.call("ADD", 2, &c)
                .cni_args("IgnoreUnknown=1;MAC=0a:58:0a:58:00:11"),
        )
        .success();
    assert_eq!(
        r["interfaces"][2]["mac"], "0a:58:0a:58:00:22",
        "args beats CNI_ARGS"
    );
    c["runtimeConfig"] = json!({"mac": "0a:58:0a:58:00:33"});
    let r = node.add(3, &c);
    assert_eq!(
        r["interfaces"][2]["mac"], "0a:58:0a:58:00:33",
        "runtimeConfig beats args"
    );
    assert!(
        node.host
            .pod(3)
            .ip(&["link", "show", "eth0"])
            .contains("0a:58:0a:58:00:33")
    );
}

#[test]
fn rollback_leaves_nothing_after_each_kind_of_failure() {
    let node = Node::new(2);
    // An IPAM plugin that is not there.
    let mut conf = node.conf("1.1.0", v4(), json!({}));
    conf["ipam"]["type"] = json!("no-such-ipam");
    let err = node.run(node.call("ADD", 0, &conf)).error(100);
    assert!(err["msg"].as_str().unwrap().contains("no-such-ipam"));
    assert_eq!(node.host_links(), ["lo", "cni0"]);
    assert_eq!(link_names(node.host.pod(0)), ["lo"]);
    // IPAM refuses (exhausted range).
    let conf = node.conf("1.1.0", json!([[{"subnet": "10.88.0.0/30"}]]), json!({}));
    node.add(0, &conf);
    node.run(node.call("ADD", 1, &conf)).error(110);
    assert_eq!(node.host_links().len(), 3, "only pod 0's veth");
    assert_eq!(link_names(node.host.pod(1)), ["lo"]);
    // A step after IPAM fails (a route through an unreachable gateway):
    // the reservation is released and the veth removed.
    let mut conf = node.conf("1.1.0", json!([[{"subnet": "10.77.0.0/24"}]]), json!({}));
    conf["name"] = json!("other");
    conf["ipam"]["routes"] = json!([{"dst": "192.168.9.0/24", "gw": "203.0.113.1"}]);
    let err = node.run(node.call("ADD", 1, &conf)).error(122);
    assert!(
        err["msg"].as_str().unwrap().contains("192.168.9.0/24"),
        "{err}"
    );
    assert_eq!(link_names(node.host.pod(1)), ["lo"]);
    assert_eq!(node.host_links().len(), 3);
    assert_eq!(
        std::fs::read_dir(node.data.path().join("other"))
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .starts_with("10."))
            .count(),
        0
    );
    // The pod already has the interface name.
    node.host.pod(1).ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0-peer",
    ]);
    let conf = node.conf("1.1.0", v4(), json!({}));
    let before = node.reservations();
    let err = node.run(node.call("ADD", 1, &conf)).error(121);
    assert!(
        err["msg"].as_str().unwrap().contains("already exists"),
        "{err}"
    );
    assert_eq!(node.reservations(), before);
    assert_eq!(node.host_links().len(), 3);
    // The pod namespace is gone.
    let conf = node.conf("1.1.0", v4(), json!({}));
    let gone = Invocation::new("ADD")
        .container_id("gone")
        .env("CNI_NETNS", "/run/netns/cnirs-test-vanished")
        .config(&conf);
    node.run(gone).error(126);
    assert_eq!(node.reservations(), before);
}

#[test]
fn a_rollback_that_cannot_undo_everything_says_what_is_left() {
    let node = Node::new(1);
    // An IPAM plugin whose address cannot be configured (a route through
    // an unreachable gateway) and whose DEL then fails.
    let fake = conformance::TempDir::new("fakeipam");
    let script = fake.path().join("stuck-ipam");
    conformance::util::script(
        &script,
        r#"#!/bin/sh
case "$CNI_COMMAND" in
ADD) echo '{"cniVersion":"1.1.0","ips":[{"address":"10.66.0.5/24","gateway":"10.66.0.1"}],"routes":[{"dst":"192.168.9.0/24","gw":"203.0.113.1"}]}' ;;
DEL) echo '{"cniVersion":"1.1.0","code":11,"msg":"store is locked"}'; exit 1 ;;
esac
"#,
    );
    let mut conf = node.conf("1.1.0", json!([]), json!({}));
    conf["ipam"] = json!({"type": "stuck-ipam"});
    let path = format!(
        "{}:{}",
        fake.path().display(),
        conformance::bins::bin_dir().display()
    );
    let out = node.run(node.call("ADD", 0, &conf).env("CNI_PATH", &path));
    let err = out.error(122);
    let details = err["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("rollback incomplete") && details.contains("store is locked"),
        "the error must say what the rollback left: {err}"
    );
    assert!(
        out.stderr.contains("rollback was incomplete"),
        "and the log too: {}",
        out.stderr
    );
    // What could be undone was: the veth is gone.
    assert_eq!(node.host_links(), ["lo", "cni0"]);
}

#[test]
fn del_after_the_namespace_is_gone_still_releases_the_address() {
    let node = Node::new(1);
    let conf = node.conf("1.1.0", v4(), json!({}));
    node.add(0, &conf);
    assert_eq!(node.reservations(), 1);
    let gone = Invocation::new("DEL")
        .container_id("ctr0")
        .env("CNI_NETNS", "/run/netns/cnirs-test-vanished")
        .config(&conf);
    node.run(gone).silent_success();
    assert_eq!(node.reservations(), 0);
    let no_netns = Invocation::new("DEL")
        .container_id("ctr0")
        .without("CNI_NETNS")
        .config(&conf);
    node.run(no_netns).silent_success();
}

#[test]
fn check_catches_each_missing_piece() {
    let node = Node::new(1);
    let conf = node.conf("1.1.0", dual(), json!({"isDefaultGateway": true}));
    let r = node.add(0, &conf);
    let checked = with_prev(&conf, &r);
    let check = |code: u64| node.run(node.call("CHECK", 0, &checked)).error(code);
    node.run(node.call("CHECK", 0, &checked)).silent_success();
    node.run(node.call("CHECK", 0, &conf)).error(7); // no prevResult
    let pod = node.host.pod(0);
    let veth = r["interfaces"][1]["name"].as_str().unwrap().to_string();

    pod.ip(&["route", "del", "default"]);
    assert!(check(124)["msg"].as_str().unwrap().contains("0.0.0.0/0"));
    pod.ip(&["route", "add", "default", "via", "10.88.0.1", "dev", "eth0"]);
    node.run(node.call("CHECK", 0, &checked)).silent_success();

    pod.ip(&["addr", "del", "fd00:88::2/64", "dev", "eth0"]);
    assert!(
        check(124)["msg"]
            .as_str()
            .unwrap()
            .contains("fd00:88::2/64")
    );
    pod.ip(&["addr", "add", "fd00:88::2/64", "dev", "eth0", "nodad"]);

    node.host.host.ip(&["link", "set", &veth, "nomaster"]);
    assert!(check(124)["msg"].as_str().unwrap().contains("not attached"));
    node.host.host.ip(&["link", "set", &veth, "master", "cni0"]);

    std::fs::remove_file(node.store().join("10.88.0.2")).unwrap();
    check(113); // IPAM's CHECK
    std::fs::write(node.store().join("10.88.0.2"), "ctr0\r\neth0").unwrap();

    node.host.host.ip(&["link", "del", &veth]);
    assert!(check(124)["msg"].as_str().unwrap().contains("not found"));
}

#[test]
fn status_and_gc_go_to_ipam() {
    let node = Node::new(2);
    let conf = node.conf("1.1.0", v4(), json!({}));
    node.run(node.call("STATUS", 0, &conf)).silent_success();
    node.add(0, &conf);
    node.add(1, &conf);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr1", "ifname": "eth0"}]);
    node.run(Invocation::new("GC").config(&gc)).silent_success();
    assert_eq!(node.reservations(), 1);
    let file = node.data.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let mut broken = conf.clone();
    broken["ipam"]["dataDir"] = json!(file);
    node.run(node.call("STATUS", 0, &broken)).error(50);
    // L2 mode has nothing to ask.
    let l2 = node.conf("1.1.0", json!([]), json!({}));
    node.run(node.call("STATUS", 0, &l2)).silent_success();
}

#[test]
fn a_hundred_pods_at_once_reach_each_other_and_leave_only_the_bridge() {
    let n = 100;
    let node = Node::new(n);
    let conf = node.conf(
        "1.1.0",
        json!([[{"subnet": "10.90.0.0/16"}]]),
        json!({"isGateway": true}),
    );
    let run_all = |command: &str| -> Vec<PluginOutput> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let inv = node.call(command, i, &conf);
                    let node = &node;
                    s.spawn(move || node.run(inv))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let addrs: Vec<String> = run_all("ADD")
        .iter()
        .map(|o| addresses(&o.success()).remove(0))
        .collect();
    let unique: std::collections::BTreeSet<_> = addrs.iter().collect();
    assert_eq!(unique.len(), n);
    assert_eq!(node.host_links().len(), n + 2);
    // Each pod reaches the gateway and the next pod.
    std::thread::scope(|s| {
        for i in 0..n {
            let node = &node;
            let next = addrs[(i + 1) % n].clone();
            s.spawn(move || {
                for target in ["10.90.0.1", next.as_str()] {
                    let out = node.host.pod(i).exec("ping", &["-c1", "-W3", target]);
                    assert!(out.status.success(), "pod {i} cannot reach {target}");
                }
            });
        }
    });
    for out in run_all("DEL") {
        out.silent_success();
    }
    assert_eq!(node.host_links(), ["lo", "cni0"]);
    assert_eq!(node.reservations(), 0);
}

#[test]
fn duplicate_address_detection_off_by_default_and_waited_for_when_on() {
    let node = Node::new(2);
    let v6 = json!([[{"subnet": "fd00:88::/64"}]]);
    let sysctl = |pod: usize, key: &str| {
        let out = node
            .host
            .pod(pod)
            .exec("cat", &[&format!("/proc/sys/net/ipv6/conf/eth0/{key}")]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    node.add(0, &node.conf("1.1.0", v6.clone(), json!({})));
    assert_eq!(sysctl(0, "accept_dad"), "0");
    node.add(1, &node.conf("1.1.0", v6, json!({"enabledad": true})));
    assert_eq!(sysctl(1, "accept_dad"), "1");
    assert_eq!(sysctl(1, "enhanced_dad"), "1");
    let addrs = node.host.pod(1).ip(&["-6", "addr", "show", "dev", "eth0"]);
    assert!(
        addrs.contains("fd00:88::3/64") && !addrs.contains("tentative"),
        "ADD returns once DAD is over: {addrs}"
    );
}
