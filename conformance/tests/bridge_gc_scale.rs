//! bridge GC at scale: a thousand stale attachments with `macspoofchk` and
//! `ipMasq` are collected in one GC, every one of their rules goes, and
//! the listed attachments keep theirs.
//!
//! A few attachments are real pods (ADD through the bridge binary); the
//! rest are written with `nft -f` in exactly the layout the bridge writes,
//! which the test first checks against a real pod's rules, so the GC
//! (always the real bridge binary's) finds them as it would find real
//! ones. A thousand real pods would cost a thousand namespaces and ADDs,
//! each reading every rule there is (so the time grows with the square),
//! for no other difference: the GC reads the rules, not the pods.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::BTreeMap;
use std::time::Instant;

use conformance::util::sha512_hex;
use conformance::{Invocation, PluginNode};
use serde_json::{Value, json};

conformance::plugin_node_wrapper!(Node);

const NET: &str = "brgc";
const SUBNET: &str = "10.66.0.0/16";
const MASQ: &str = "cni_plugins_masquerade";
/// Real pods, made by ADD.
const REAL: usize = 4;
/// Stale attachments in all (real ones included).
const STALE: usize = 1000;

/// One attachment as its rules name it.
struct Attachment {
    cid: String,
    veth: String,
    mac: String,
    ip: String,
    /// Its masquerade rules' hash, as the reference computes it.
    hash: String,
}

/// The reference's masquerade hash of attachment `cid`/eth0 of [`NET`].
fn masq_hash(cid: &str) -> String {
    static NET_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let net = NET_HASH.get_or_init(|| sha512_hex(NET)[..16].to_string());
    format!("{net}-{}", &sha512_hex(&format!("eth0:{cid}"))[..16])
}

impl Attachment {
    fn id(&self) -> String {
        format!("{}-eth0", self.cid)
    }

    fn iface(&self) -> String {
        format!("cni-br-iface-{}", self.id())
    }

    /// The rules the bridge writes for it, as `nft list` shows them:
    /// (family and table, chain, rule).
    fn rules(&self) -> Vec<(&'static str, String, String)> {
        let (id, iface, hash) = (self.id(), self.iface(), &self.hash);
        vec![
            (
                "bridge nat",
                "PREROUTING".into(),
                format!(
                    "iifname \"{}\" jump {iface} comment \"macspoofchk-{id}\"",
                    self.veth
                ),
            ),
            (
                "bridge nat",
                iface.clone(),
                format!("jump {iface}-mac comment \"net: {NET}\""),
            ),
            (
                "bridge nat",
                format!("{iface}-mac"),
                format!("ether saddr {} return", self.mac),
            ),
            ("bridge nat", format!("{iface}-mac"), "drop".into()),
            (
                "inet cni_plugins_masquerade",
                "masq_checks".into(),
                format!(
                    "ip saddr {} ip daddr != {SUBNET} masquerade comment \"{hash}, net: {NET}, if: eth0, id: {}\"",
                    self.ip, self.cid
                ),
            ),
        ]
    }
}

/// A crafted attachment, `k` counting from 0.
fn crafted(k: usize) -> Attachment {
    let cid = format!("stale{k}");
    Attachment {
        hash: masq_hash(&cid),
        cid,
        veth: format!("vethgc{k}"),
        mac: format!("0a:58:0a:42:{:02x}:{:02x}", k >> 8, k & 0xff),
        ip: format!("10.66.{}.{}", 100 + k / 200, 2 + k % 200),
    }
}

impl Node {
    fn new(pods: usize) -> Node {
        Node(PluginNode::new("bridge", pods, "brgc"))
    }

    fn conf(&self) -> Value {
        json!({
            "cniVersion": "1.1.0", "name": NET, "type": "bridge", "bridge": "cni0",
            "isGateway": true, "ipMasq": true, "macspoofchk": true,
            "ipam": {"type": "host-local", "dataDir": self.data.path(),
                     "ranges": [[{"subnet": SUBNET}]]}
        })
    }

    /// Every rule of `table` ("bridge nat"), by chain, handles left out;
    /// a chain without rules is listed with none.
    fn listing(&self, table: &str) -> BTreeMap<String, Vec<String>> {
        let mut args = vec!["list", "table"];
        args.extend(table.split(' '));
        let out = self.host.host.exec("nft", &args);
        assert!(
            out.status.success(),
            "nft list table {table}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut chains = BTreeMap::new();
        let mut chain: Option<String> = None;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("chain ") {
                let name = rest.split_whitespace().next().unwrap().to_string();
                chains.insert(name.clone(), Vec::new());
                chain = Some(name);
            } else if line == "}" {
                chain = None;
            } else if let Some(c) = &chain
                && !line.is_empty()
                && !line.starts_with("type ")
                && !line.starts_with("comment ")
            {
                chains.get_mut(c).unwrap().push(line.to_string());
            }
        }
        chains
    }

    /// Writes the attachments' rules with one `nft -f`.
    fn craft(&self, stale: &[Attachment]) {
        let mut script = String::new();
        for a in stale {
            script.push_str(&format!("add chain bridge nat {}\n", a.iface()));
            script.push_str(&format!("add chain bridge nat {}-mac\n", a.iface()));
            // Chains before the rules that jump to them, as the bridge does.
            let mut rules = a.rules();
            rules.sort_by_key(|(_, chain, _)| chain == "PREROUTING");
            for (table, chain, rule) in rules {
                script.push_str(&format!("add rule {table} {chain} {rule}\n"));
            }
        }
        let path = self.data.path().join("stale.nft");
        std::fs::write(&path, script).unwrap();
        let out = self.host.host.exec("nft", &["-f", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn gc(&self, keep: &[usize]) -> std::time::Duration {
        let mut conf = self.conf();
        conf["cni.dev/valid-attachments"] = keep
            .iter()
            .map(|p| json!({"containerID": format!("ctr{p}"), "ifname": "eth0"}))
            .collect();
        let start = Instant::now();
        let out = self.run(Invocation::new("GC").config(&conf));
        let took = start.elapsed();
        out.silent_success();
        took
    }
}

/// The attachment of real pod `pod` from its ADD result.
fn real(pod: usize, result: &Value) -> Attachment {
    let ifs = result["interfaces"].as_array().unwrap();
    Attachment {
        hash: masq_hash(&format!("ctr{pod}")),
        cid: format!("ctr{pod}"),
        veth: ifs[1]["name"].as_str().unwrap().to_string(),
        mac: ifs[2]["mac"].as_str().unwrap().to_lowercase(),
        ip: conformance::util::addresses(result)[0].clone(),
    }
}

/// Whether every rule of `a` is in the listings.
fn has_all(
    nat: &BTreeMap<String, Vec<String>>,
    masq: &BTreeMap<String, Vec<String>>,
    a: &Attachment,
) -> bool {
    a.rules().iter().all(|(table, chain, rule)| {
        let listing = if table.starts_with("bridge") {
            nat
        } else {
            masq
        };
        listing.get(chain).is_some_and(|rules| rules.contains(rule))
    })
}

#[test]
fn gc_of_a_thousand_stale_attachments_removes_every_rule() {
    let node = Node::new(REAL);
    let conf = node.conf();
    let pods: Vec<Attachment> = (0..REAL).map(|p| real(p, &node.add(p, &conf))).collect();

    // The crafted layout is the bridge's own: a real pod's rules are
    // exactly what `Attachment::rules` says.
    let nat = node.listing("bridge nat");
    let masq = node.listing(&format!("inet {MASQ}"));
    for a in &pods {
        for (table, chain, rule) in a.rules() {
            let listing = if table.starts_with("bridge") {
                &nat
            } else {
                &masq
            };
            assert_eq!(
                listing
                    .get(&chain)
                    .map(|r| r.iter().filter(|x| **x == rule).count()),
                Some(1),
                "{rule:?} in {table} {chain}: {listing:#?}"
            );
        }
    }

    let stale: Vec<Attachment> = (0..STALE - REAL).map(crafted).collect();
    node.craft(&stale);
    let nat = node.listing("bridge nat");
    let masq = node.listing(&format!("inet {MASQ}"));
    assert_eq!(nat["PREROUTING"].len(), STALE, "one entry rule each");
    assert_eq!(masq["masq_checks"].len(), STALE, "one masquerade rule each");
    assert!(stale.iter().all(|a| has_all(&nat, &masq, a)));

    // Keep two real pods: everything else goes, in one GC.
    let took = node.gc(&[1, 3]);
    eprintln!("GC of {} stale attachments of {STALE}: {took:?}", STALE - 2);
    let nat = node.listing("bridge nat");
    let masq = node.listing(&format!("inet {MASQ}"));
    let mut want_chains = vec!["PREROUTING".to_string()];
    for p in [1, 3] {
        assert!(
            has_all(&nat, &masq, &pods[p]),
            "pod {p} was listed: {nat:#?}"
        );
        want_chains.push(pods[p].iface());
        want_chains.push(format!("{}-mac", pods[p].iface()));
    }
    want_chains.sort();
    assert_eq!(nat.keys().cloned().collect::<Vec<_>>(), want_chains);
    assert_eq!(nat["PREROUTING"].len(), 2, "{:#?}", nat["PREROUTING"]);
    assert_eq!(masq["masq_checks"].len(), 2, "{:#?}", masq["masq_checks"]);

    // An empty list: nothing of the network stays.
    node.gc(&[]);
    let nat = node.listing("bridge nat");
    let masq = node.listing(&format!("inet {MASQ}"));
    assert_eq!(nat.keys().collect::<Vec<_>>(), ["PREROUTING"], "{nat:#?}");
    assert!(nat["PREROUTING"].is_empty(), "{nat:#?}");
    assert!(masq["masq_checks"].is_empty(), "{masq:#?}");
}
