//! bridge's masquerade with `ipMasqBackend: "iptables"`, seen from
//! outside: the nat table as `iptables -S` / `ip6tables -S` show it in the
//! test's host namespace, CHECK, and DEL (also after the pod namespace is
//! gone).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use conformance::util::sha512_hex;
use conformance::{Invocation, PluginNode};
use serde_json::{Value, json};

conformance::plugin_node_wrapper!(Node);

impl Node {
    fn new(pods: usize) -> Node {
        Node(PluginNode::new("bridge", pods, "bript"))
    }

    fn conf(&self, ranges: Value) -> Value {
        json!({
            "cniVersion": "1.1.0", "name": "brnet", "type": "bridge", "bridge": "cni0",
            "isGateway": true, "ipMasq": true, "ipMasqBackend": "iptables",
            "ipam": {"type": "host-local", "dataDir": self.data.path(), "ranges": ranges}
        })
    }

    /// `iptables -t nat -S` (or ip6tables) lines mentioning `chain`.
    fn nat(&self, v6: bool, chain: &str) -> Vec<String> {
        let tool = if v6 { "ip6tables" } else { "iptables" };
        let out = self.host.host.exec(tool, &["-w", "-t", "nat", "-S"]);
        assert!(out.status.success(), "{tool} -S failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(chain))
            .map(str::to_string)
            .collect()
    }
}

/// `CNI-` and the first 24 hex digits of `sha512sum` of `text`.
fn chain(text: &str) -> String {
    format!("CNI-{}", &sha512_hex(text)[..24])
}

const COMMENT: &str = r#"-m comment --comment "name: \"brnet\" id: \"ctr0\"""#;

fn expect(v6: bool, chain: &str) -> Vec<String> {
    let (subnet, mcast, src) = if v6 {
        ("fd00:66::/64", "ff00::/8", "fd00:66::2/128")
    } else {
        ("10.66.0.0/24", "224.0.0.0/4", "10.66.0.2/32")
    };
    vec![
        format!("-N {chain}"),
        format!("-A POSTROUTING -s {src} {COMMENT} -j {chain}"),
        format!("-A {chain} -d {subnet} {COMMENT} -j ACCEPT"),
        format!("-A {chain} ! -d {mcast} {COMMENT} -j MASQUERADE"),
    ]
}

#[test]
fn add_check_del_for_v4_and_v6() {
    let node = Node::new(1);
    let conf = node.conf(json!([[{"subnet": "10.66.0.0/24"}], [{"subnet": "fd00:66::/64"}]]));
    let ch = chain("brnetctr0");
    let r = node.run(node.call("ADD", 0, &conf)).success();
    for v6 in [false, true] {
        let mut got = node.nat(v6, &ch);
        got.sort();
        let mut want = expect(v6, &ch);
        want.sort();
        assert_eq!(got, want, "v6: {v6}");
    }
    node.check(0, &conf, &r).silent_success();

    // A jump removed by hand: CHECK fails.
    let out = node
        .host
        .host
        .exec("ip6tables", &["-w", "-t", "nat", "-S", "POSTROUTING"]);
    let number = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A POSTROUTING"))
        .position(|l| l.ends_with(&format!("-j {ch}")))
        .unwrap()
        + 1;
    let number = number.to_string();
    let del = ["-w", "-t", "nat", "-D", "POSTROUTING", number.as_str()];
    assert!(node.host.host.exec("ip6tables", &del).status.success());
    let err = node.check(0, &conf, &r).error(124);
    assert!(err["msg"].as_str().unwrap().contains("fd00:66::2"), "{err}");

    node.run(node.call("DEL", 0, &conf)).silent_success();
    assert!(node.nat(false, &ch).is_empty());
    assert!(node.nat(true, &ch).is_empty());
    node.run(node.call("DEL", 0, &conf)).silent_success(); // again: fine
}

#[test]
fn del_after_the_namespace_is_gone_still_removes_the_rules() {
    let node = Node::new(1);
    let conf = node.conf(json!([[{"subnet": "10.66.0.0/24"}]]));
    let ch = chain("brnetctr0");
    node.run(node.call("ADD", 0, &conf)).success();
    assert_eq!(node.nat(false, &ch).len(), 4);
    let gone = Invocation::new("DEL")
        .container_id("ctr0")
        .env("CNI_NETNS", "/run/netns/cnirs-test-vanished")
        .config(&conf);
    node.run(gone).silent_success();
    assert!(
        node.nat(false, &ch).is_empty(),
        "{:?}",
        node.nat(false, &ch)
    );
}

#[test]
fn gc_removes_the_chains_of_attachments_not_listed() {
    let node = Node::new(2);
    let conf = node.conf(json!([[{"subnet": "10.66.0.0/24"}]]));
    node.run(node.call("ADD", 0, &conf)).success();
    node.run(node.call("ADD", 1, &conf)).success();
    let (keep, stale) = (chain("brnetctr1"), chain("brnetctr0"));
    // No list: nothing goes.
    node.run(Invocation::new("GC").config(&conf))
        .silent_success();
    assert_eq!(node.nat(false, &stale).len(), 4);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr1", "ifname": "eth0"}]);
    node.run(Invocation::new("GC").config(&gc)).silent_success();
    assert!(
        node.nat(false, &stale).is_empty(),
        "{:?}",
        node.nat(false, &stale)
    );
    assert_eq!(node.nat(false, &keep).len(), 4);
}
