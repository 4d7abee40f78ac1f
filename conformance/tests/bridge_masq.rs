//! bridge's masquerade (`ipMasq`), seen from outside: the nftables rules
//! in the test's host namespace as `nft` lists them, CHECK, DEL (also after
//! the pod namespace is gone), GC, rollback, many pods at once, and real
//! traffic leaving through the masquerade.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use conformance::util::sha512_hex;
use conformance::{Invocation, PluginNode, PluginOutput, TestNetns};
use serde_json::{Value, json};

const TABLE: &str = "cni_plugins_masquerade";

conformance::plugin_node_wrapper!(Node);

impl Node {
    fn new(pods: usize) -> Node {
        Node(PluginNode::new("bridge", pods, "brmasq"))
    }

    /// A bridge config with `ipMasq` and host-local over `ranges`.
    fn conf(&self, ranges: Value, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.1.0", "name": "brnet", "type": "bridge", "bridge": "cni0",
            "isGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "dataDir": self.data.path(), "ranges": ranges}
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn nft(&self, args: &str) -> String {
        nft(&self.host.host, args)
    }

    /// Every rule of our table: (chain, text without the handle, handle).
    fn rules(&self) -> Vec<(String, String, u64)> {
        let out = self
            .host
            .host
            .exec("nft", &["-a", "list", "table", "inet", TABLE]);
        if !out.status.success() {
            return Vec::new(); // no table
        }
        let mut chain = String::new();
        let mut rules = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("chain ") {
                chain = rest.split_whitespace().next().unwrap().to_string();
            } else if let Some((text, handle)) = line.rsplit_once(" # handle ")
                && !line.starts_with("table ")
            {
                rules.push((chain.clone(), text.to_string(), handle.parse().unwrap()));
            }
        }
        rules
    }

    /// The masq_checks rules of one attachment of network `brnet`.
    fn pod_rules(&self, pod: usize) -> Vec<(String, u64)> {
        self.net_pod_rules("brnet", pod)
    }

    fn net_pod_rules(&self, net: &str, pod: usize) -> Vec<(String, u64)> {
        let tag = format!("\"{}, net: {net}, if: eth0, id: ctr{pod}\"", hash(net, pod));
        self.rules()
            .into_iter()
            .filter(|(c, text, _)| c == "masq_checks" && text.ends_with(&tag))
            .map(|(_, text, handle)| (text, handle))
            .collect()
    }
}

/// Runs `nft <command>` (one string, quotes and all) inside `ns`.
fn nft(ns: &TestNetns, command: &str) -> String {
    let out = ns.exec("nft", &[command]);
    assert!(
        out.status.success(),
        "nft {command} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first 16 hex digits of `sha512sum` of `text`.
fn sha16(text: &str) -> String {
    sha512_hex(text)[..16].to_string()
}

/// The reference's rule hash of an attachment (network, eth0, ctr<pod>).
fn hash(net: &str, pod: usize) -> String {
    format!("{}-{}", sha16(net), sha16(&format!("eth0:ctr{pod}")))
}

fn v4() -> Value {
    json!([[{"subnet": "10.88.0.0/24"}]])
}

fn dual() -> Value {
    json!([[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd00:88::/64"}]])
}

#[test]
fn add_writes_one_rule_per_address_as_the_reference_does() {
    let cases = [
        (
            v4(),
            vec!["ip saddr 10.88.0.2 ip daddr != 10.88.0.0/24 masquerade"],
        ),
        (
            json!([[{"subnet": "fd00:88::/64"}]]),
            vec!["ip6 saddr fd00:88::2 ip6 daddr != fd00:88::/64 masquerade"],
        ),
        (
            dual(),
            vec![
                "ip saddr 10.88.0.2 ip daddr != 10.88.0.0/24 masquerade",
                "ip6 saddr fd00:88::2 ip6 daddr != fd00:88::/64 masquerade",
            ],
        ),
    ];
    for (ranges, want) in cases {
        let node = Node::new(1);
        let conf = node.conf(ranges, json!({}));
        let r = node.add(0, &conf);
        let comment = format!(
            "comment \"{}, net: brnet, if: eth0, id: ctr0\"",
            hash("brnet", 0)
        );
        let got: Vec<String> = node.pod_rules(0).into_iter().map(|(t, _)| t).collect();
        let want: Vec<String> = want.iter().map(|w| format!("{w} {comment}")).collect();
        assert_eq!(got, want);
        let post: Vec<String> = node
            .rules()
            .into_iter()
            .filter(|(c, _, _)| c == "postrouting")
            .map(|(_, text, _)| text)
            .collect();
        assert_eq!(post.len(), 3, "{post:?}");
        assert!(
            post[0].starts_with("ip daddr 224.0.0.0/4 return"),
            "{post:?}"
        );
        assert!(post[1].starts_with("ip6 daddr ff00::/8 return"), "{post:?}");
        assert!(post[2].starts_with("goto masq_checks"), "{post:?}");
        let table = node.nft(&format!("list table inet {TABLE}"));
        assert!(
            table.contains("type nat hook postrouting priority srcnat; policy accept;"),
            "{table}"
        );
        node.check(0, &conf, &r).silent_success();

        node.del(0, &conf);
        assert!(node.pod_rules(0).is_empty());
        assert_eq!(node.rules().len(), 3, "the chains and postrouting stay");
        node.del(0, &conf); // again: still fine
    }
}

#[test]
fn a_second_add_leaves_the_postrouting_chain_alone() {
    let node = Node::new(2);
    let conf = node.conf(v4(), json!({}));
    node.add(0, &conf);
    let handles = |node: &Node| -> Vec<u64> {
        node.rules()
            .into_iter()
            .filter(|(c, _, _)| c == "postrouting")
            .map(|(_, _, h)| h)
            .collect()
    };
    let before = handles(&node);
    node.add(1, &conf);
    assert_eq!(handles(&node), before);
    assert_eq!(node.pod_rules(1).len(), 1);
    // Rules written by someone else (the reference writes them without a
    // comment) are replaced by ours.
    node.nft(&format!("flush chain inet {TABLE} postrouting"));
    node.nft(&format!(
        "add rule inet {TABLE} postrouting goto masq_checks"
    ));
    node.del(1, &conf);
    node.add(1, &conf);
    let post: Vec<_> = node
        .rules()
        .into_iter()
        .filter(|(c, _, _)| c == "postrouting")
        .collect();
    assert_eq!(post.len(), 3, "{post:?}");
}

#[test]
fn check_fails_when_a_rule_is_missing_and_accepts_rules_written_by_nft() {
    let node = Node::new(1);
    let conf = node.conf(dual(), json!({}));
    let r = node.add(0, &conf);
    node.check(0, &conf, &r).silent_success();
    let rules = node.pod_rules(0);
    let (v6_text, v6_handle) = rules.iter().find(|(t, _)| t.starts_with("ip6")).unwrap();

    node.nft(&format!(
        "delete rule inet {TABLE} masq_checks handle {v6_handle}"
    ));
    let err = node.check(0, &conf, &r).error(124);
    assert!(
        err["msg"].as_str().unwrap().contains("fd00:88::2/64"),
        "{err}"
    );

    // The rule as the reference plugin writes it (through nft): accepted.
    let (match_part, comment) = v6_text.split_once(" comment ").unwrap();
    node.nft(&format!(
        "add rule inet {TABLE} masq_checks {match_part} comment {comment}"
    ));
    node.check(0, &conf, &r).silent_success();

    // The same rule under another attachment's comment does not count.
    let (v4_text, v4_handle) = rules.iter().find(|(t, _)| t.starts_with("ip ")).unwrap();
    node.nft(&format!(
        "delete rule inet {TABLE} masq_checks handle {v4_handle}"
    ));
    let (match_part, _) = v4_text.split_once(" comment ").unwrap();
    node.nft(&format!(
        "add rule inet {TABLE} masq_checks {match_part} comment \"someone else\""
    ));
    let err = node.check(0, &conf, &r).error(124);
    assert!(
        err["msg"].as_str().unwrap().contains("10.88.0.2/24"),
        "{err}"
    );

    // Without the way in from postrouting, nothing is masqueraded.
    node.del(0, &conf);
    let r = node.add(0, &conf);
    node.check(0, &conf, &r).silent_success();
    let goto = node
        .rules()
        .into_iter()
        .find(|(c, t, _)| c == "postrouting" && t.starts_with("goto"))
        .unwrap();
    node.nft(&format!(
        "delete rule inet {TABLE} postrouting handle {}",
        goto.2
    ));
    let err = node.check(0, &conf, &r).error(124);
    assert!(
        err["msg"].as_str().unwrap().contains("postrouting"),
        "{err}"
    );
}

#[test]
fn del_removes_its_own_rules_only() {
    let node = Node::new(2);
    let conf = node.conf(dual(), json!({}));
    node.add(0, &conf);
    node.add(1, &conf);
    assert_eq!(node.pod_rules(0).len(), 2);
    assert_eq!(node.pod_rules(1).len(), 2);
    node.del(0, &conf);
    assert!(node.pod_rules(0).is_empty());
    assert_eq!(node.pod_rules(1).len(), 2);
    // Same container, other interface name: a different attachment.
    let other_if = node.call("DEL", 1, &conf).ifname("eth1");
    node.run(other_if).silent_success();
    assert_eq!(node.pod_rules(1).len(), 2);
    node.del(1, &conf);
    assert!(node.pod_rules(1).is_empty());
}

#[test]
fn del_after_the_namespace_is_gone_still_removes_the_rules() {
    let node = Node::new(2);
    let conf = node.conf(v4(), json!({}));
    node.add(0, &conf);
    node.add(1, &conf);
    let gone = Invocation::new("DEL")
        .container_id("ctr0")
        .env("CNI_NETNS", "/run/netns/cnirs-test-vanished")
        .config(&conf);
    node.run(gone).silent_success();
    assert!(node.pod_rules(0).is_empty());
    let no_netns = Invocation::new("DEL")
        .container_id("ctr1")
        .without("CNI_NETNS")
        .config(&conf);
    node.run(no_netns).silent_success();
    assert!(node.pod_rules(1).is_empty());
}

#[test]
fn gc_keeps_the_listed_attachments_and_removes_the_others() {
    let node = Node::new(4);
    let conf = node.conf(v4(), json!({}));
    for pod in 0..3 {
        node.add(pod, &conf);
    }
    // Another network on the same node: not ours to collect.
    let mut other = node.conf(
        json!([[{"subnet": "10.99.0.0/24"}]]),
        json!({"bridge": "cni1"}),
    );
    other["name"] = json!("othernet");
    node.add(3, &other);
    assert_eq!(node.net_pod_rules("othernet", 3).len(), 1);

    // No list: nothing is known to be stale.
    node.run(Invocation::new("GC").config(&conf))
        .silent_success();
    assert!((0..3).all(|pod| node.pod_rules(pod).len() == 1));

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr1", "ifname": "eth0"}]);
    node.run(Invocation::new("GC").config(&gc)).silent_success();
    assert!(node.pod_rules(0).is_empty());
    assert_eq!(node.pod_rules(1).len(), 1);
    assert!(node.pod_rules(2).is_empty());
    assert_eq!(node.net_pod_rules("othernet", 3).len(), 1);

    // An empty list collects everything of the network.
    gc["cni.dev/valid-attachments"] = json!([]);
    node.run(Invocation::new("GC").config(&gc)).silent_success();
    assert!(node.pod_rules(1).is_empty());
    assert_eq!(node.net_pod_rules("othernet", 3).len(), 1);
}

#[test]
fn a_failed_add_leaves_no_rule() {
    let node = Node::new(2);
    // A step before the masquerade fails (a route through an unreachable
    // gateway).
    let mut conf = node.conf(v4(), json!({}));
    conf["ipam"]["routes"] = json!([{"dst": "192.168.9.0/24", "gw": "203.0.113.1"}]);
    node.run(node.call("ADD", 0, &conf)).error(122);
    assert!(node.pod_rules(0).is_empty());

    // The masquerade itself fails: `postrouting` exists as a filter chain,
    // where masquerading is not allowed. Nothing of the transaction stays,
    // and the veth and the address are taken back.
    node.nft(&format!("add table inet {TABLE}"));
    node.nft(&format!(
        "add chain inet {TABLE} postrouting {{ type filter hook forward priority 0; }}"
    ));
    let conf = node.conf(v4(), json!({}));
    let err = node.run(node.call("ADD", 1, &conf)).error(123);
    assert!(err["msg"].as_str().unwrap().contains("masquerade"), "{err}");
    assert!(node.rules().is_empty(), "{:?}", node.rules());
    let table = node.nft(&format!("list table inet {TABLE}"));
    assert!(!table.contains("masq_checks"), "{table}");
    assert_eq!(
        node.host.pod(1).ip(&["-o", "link", "show"]).lines().count(),
        1
    );
    let reserved = std::fs::read_dir(node.data.path().join("brnet"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("10.")
        })
        .count();
    assert_eq!(reserved, 0);
}

#[test]
fn many_pods_at_once_get_one_rule_each() {
    let n = 24;
    let node = Node::new(n);
    let conf = node.conf(
        json!([[{"subnet": "10.90.0.0/16"}], [{"subnet": "fd00:90::/64"}]]),
        json!({}),
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
    for out in run_all("ADD") {
        out.success();
    }
    for pod in 0..n {
        assert_eq!(node.pod_rules(pod).len(), 2, "pod {pod}");
    }
    let rules = node.rules();
    assert_eq!(
        rules.iter().filter(|(c, _, _)| c == "postrouting").count(),
        3
    );
    assert_eq!(rules.len(), 3 + 2 * n);
    for out in run_all("DEL") {
        out.silent_success();
    }
    assert_eq!(node.rules().len(), 3, "only postrouting's rules stay");
}

#[test]
fn a_pod_reaches_a_network_without_a_route_back_only_through_the_masquerade() {
    let node = Node::new(1);
    let outside = TestNetns::new("outside");
    let host = &node.host.host;
    host.ip(&[
        "link",
        "add",
        "vout",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        outside.name(),
    ]);
    host.ip(&["addr", "add", "192.0.2.1/24", "dev", "vout"]);
    host.ip(&["link", "set", "vout", "up"]);
    outside.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    outside.ip(&["link", "set", "eth0", "up"]);
    let conf = node.conf(v4(), json!({"isDefaultGateway": true}));
    node.add(0, &conf);
    let ping = || {
        node.host
            .pod(0)
            .exec("ping", &["-c1", "-W2", "192.0.2.2"])
            .status
            .success()
    };
    assert!(ping(), "the masqueraded pod reaches the outside");
    // Without the rule, the outside cannot answer (each ping is a new flow).
    let (_, handle) = node.pod_rules(0).remove(0);
    node.nft(&format!(
        "delete rule inet {TABLE} masq_checks handle {handle}"
    ));
    assert!(!ping(), "without masquerade there is no way back");
    node.del(0, &conf);
}
