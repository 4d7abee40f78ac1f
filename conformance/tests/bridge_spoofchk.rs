//! bridge's MAC spoof check (`macspoofchk`), seen from outside: the
//! `bridge nat` rules in the test's host namespace as `nft` lists them,
//! real frames with a forged source MAC being dropped, CHECK, DEL (also
//! after the pod namespace is gone), GC and rollback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use conformance::{Invocation, PluginNode};
use serde_json::{Value, json};

conformance::plugin_node_wrapper!(Node);

impl Node {
    fn new(pods: usize) -> Node {
        Node(PluginNode::new("bridge", pods, "brspoof"))
    }

    fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.1.0", "name": "brnet", "type": "bridge", "bridge": "cni0",
            "isGateway": true, "macspoofchk": true,
            "ipam": {"type": "host-local", "dataDir": self.data.path(),
                     "ranges": [[{"subnet": "10.77.0.0/24"}]]}
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn nft(&self, command: &str) -> String {
        let out = self.host.host.exec("nft", &[command]);
        assert!(
            out.status.success(),
            "nft {command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `nft -a list table bridge nat`, or "" when there is no such table.
    fn table(&self) -> String {
        let out = self
            .host
            .host
            .exec("nft", &["-a", "list", "table", "bridge", "nat"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether anything of pod `pod`'s check is in the table.
    fn has_pod(&self, pod: usize) -> bool {
        let t = self.table();
        t.contains(&format!("cni-br-iface-ctr{pod}-eth0"))
            || t.contains(&format!("ctr{pod}-eth0\""))
    }

    fn ping(&self, pod: usize, target: &str) -> bool {
        self.host
            .pod(pod)
            .exec("ping", &["-c1", "-W1", target])
            .status
            .success()
    }
}

/// (host veth, pod MAC) from an ADD result.
fn veth_and_mac(r: &Value) -> (String, String) {
    let ifs = r["interfaces"].as_array().unwrap();
    (
        ifs[1]["name"].as_str().unwrap().to_string(),
        ifs[2]["mac"].as_str().unwrap().to_lowercase(),
    )
}

/// The rules of `chain` without their handles.
fn chain_rules(table: &str, chain: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in table.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("chain ") {
            inside = rest.split_whitespace().next() == Some(chain);
        } else if inside && line == "}" {
            inside = false;
        } else if inside
            && let Some((text, _)) = line.rsplit_once(" # handle ")
            && !line.starts_with("type ")
        {
            out.push(text.to_string());
        }
    }
    out
}

#[test]
fn add_installs_the_reference_layout_and_del_removes_it() {
    let node = Node::new(1);
    let conf = node.conf(json!({}));
    let r = node.add(0, &conf);
    let (veth, mac) = veth_and_mac(&r);
    let table = node.table();
    assert!(
        table.contains("type filter hook prerouting priority -300; policy accept;")
            || table.contains("type filter hook prerouting priority dstnat; policy accept;"),
        "{table}"
    );
    assert_eq!(
        chain_rules(&table, "PREROUTING"),
        [format!(
            "iifname \"{veth}\" jump cni-br-iface-ctr0-eth0 comment \"macspoofchk-ctr0-eth0\""
        )],
        "{table}"
    );
    assert_eq!(
        chain_rules(&table, "cni-br-iface-ctr0-eth0"),
        ["jump cni-br-iface-ctr0-eth0-mac comment \"net: brnet\""],
        "{table}"
    );
    assert_eq!(
        chain_rules(&table, "cni-br-iface-ctr0-eth0-mac"),
        [format!("ether saddr {mac} return"), "drop".to_string()],
        "{table}"
    );
    node.check(0, &conf, &r).silent_success();

    node.del(0, &conf);
    assert!(!node.has_pod(0), "{}", node.table());
    node.del(0, &conf); // again: still fine
}

#[test]
fn a_forged_source_mac_cannot_reach_the_gateway() {
    let node = Node::new(2);
    let conf = node.conf(json!({}));
    let r = node.add(0, &conf);
    let (_, mac) = veth_and_mac(&r);
    assert!(node.ping(0, "10.77.0.1"), "the real MAC gets through");
    let pod = node.host.pod(0);
    pod.ip(&["link", "set", "eth0", "address", "02:de:ad:be:ef:01"]);
    pod.ip(&["neigh", "flush", "dev", "eth0"]);
    assert!(!node.ping(0, "10.77.0.1"), "a forged MAC must be dropped");
    pod.ip(&["link", "set", "eth0", "address", &mac]);
    assert!(node.ping(0, "10.77.0.1"), "the real MAC again");
    node.del(0, &conf);

    // Control: without the check, the same forgery gets through.
    let plain = node.conf(json!({"macspoofchk": false}));
    node.add(1, &plain);
    let pod = node.host.pod(1);
    pod.ip(&["link", "set", "eth0", "address", "02:de:ad:be:ef:02"]);
    pod.ip(&["neigh", "flush", "dev", "eth0"]);
    assert!(node.ping(1, "10.77.0.1"), "no check, no drop");
    node.del(1, &plain);
}

#[test]
fn del_after_the_namespace_is_gone_still_removes_the_check() {
    let node = Node::new(2);
    let conf = node.conf(json!({}));
    node.add(0, &conf);
    node.add(1, &conf);
    let gone = Invocation::new("DEL")
        .container_id("ctr0")
        .env("CNI_NETNS", "/run/netns/cnirs-test-vanished")
        .config(&conf);
    node.run(gone).silent_success();
    assert!(!node.has_pod(0), "{}", node.table());
    assert!(node.has_pod(1));
    let no_netns = Invocation::new("DEL")
        .container_id("ctr1")
        .without("CNI_NETNS")
        .config(&conf);
    node.run(no_netns).silent_success();
    assert!(!node.has_pod(1), "{}", node.table());
}

#[test]
fn check_fails_when_a_rule_was_deleted_by_hand() {
    let node = Node::new(1);
    let conf = node.conf(json!({}));
    let r = node.add(0, &conf);
    node.check(0, &conf, &r).silent_success();
    let table = node.table();
    let line = table
        .lines()
        .find(|l| l.contains("ether saddr"))
        .unwrap()
        .to_string();
    let handle = line.rsplit_once(" # handle ").unwrap().1.trim();
    node.nft(&format!(
        "delete rule bridge nat cni-br-iface-ctr0-eth0-mac handle {handle}"
    ));
    let err = node.check(0, &conf, &r).error(124);
    assert!(err["msg"].as_str().unwrap().contains("-mac"), "{err}");

    // ADD again repairs it; and without the entry rule CHECK fails too.
    node.del(0, &conf);
    let r = node.add(0, &conf);
    node.check(0, &conf, &r).silent_success();
    let table = node.table();
    let handle = table
        .lines()
        .find(|l| l.contains("macspoofchk-ctr0-eth0"))
        .unwrap()
        .rsplit_once(" # handle ")
        .unwrap()
        .1
        .trim()
        .to_string();
    node.nft(&format!(
        "delete rule bridge nat PREROUTING handle {handle}"
    ));
    let err = node.check(0, &conf, &r).error(124);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("macspoofchk-ctr0-eth0"),
        "{err}"
    );
    node.del(0, &conf);
    assert!(!node.has_pod(0), "{}", node.table());
}

#[test]
fn gc_removes_the_checks_of_attachments_not_listed() {
    let node = Node::new(4);
    let conf = node.conf(json!({}));
    for pod in 0..3 {
        node.add(pod, &conf);
    }
    // Another network on the same node: not ours to collect.
    let mut other = node.conf(json!({"bridge": "cni1"}));
    other["name"] = json!("othernet");
    other["ipam"]["ranges"] = json!([[{"subnet": "10.78.0.0/24"}]]);
    node.add(3, &other);

    node.run(Invocation::new("GC").config(&conf))
        .silent_success();
    assert!((0..4).all(|pod| node.has_pod(pod)));

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr1", "ifname": "eth0"}]);
    node.run(Invocation::new("GC").config(&gc)).silent_success();
    let table = node.table();
    assert!(!node.has_pod(0), "{table}");
    assert!(node.has_pod(1), "{table}");
    assert!(!node.has_pod(2), "{table}");
    assert!(node.has_pod(3), "{table}");
    assert_eq!(chain_rules(&table, "PREROUTING").len(), 2, "{table}");

    gc["cni.dev/valid-attachments"] = json!([]);
    node.run(Invocation::new("GC").config(&gc)).silent_success();
    assert!(!node.has_pod(1));
    assert!(node.has_pod(3));
}

#[test]
fn a_failed_add_leaves_no_check() {
    let node = Node::new(2);
    // A step after the check fails (a route through an unreachable gateway).
    let mut conf = node.conf(json!({}));
    conf["ipam"]["routes"] = json!([{"dst": "192.168.9.0/24", "gw": "203.0.113.1"}]);
    node.run(node.call("ADD", 0, &conf)).error(122);
    assert!(!node.has_pod(0), "{}", node.table());

    // Nor does its veth stay behind.
    assert_eq!(
        node.host.pod(0).ip(&["-o", "link", "show"]).lines().count(),
        1,
        "the veth is taken back"
    );
    // The next ADD of the same attachment works and is checked.
    let conf = node.conf(json!({}));
    let r = node.add(0, &conf);
    node.check(0, &conf, &r).silent_success();
    node.del(0, &conf);
    assert!(!node.has_pod(0), "{}", node.table());
}
