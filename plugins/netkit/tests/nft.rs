//! The nf_tables layer against the kernel, in namespaces private to the
//! test (made on throwaway threads, held by fd; never the machine's own).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use netkit::NetNs;
use netkit::nft::{
    BaseChain, Expr, Exprs, Family, HeaderMatch, LinkMatch, MetaMatch, NAT_FULLY_RANDOM, Nft, Step,
    Table, Verdict,
};
use nix::libc;

const T: Table<'static> = Table {
    family: Family::Inet,
    name: "nft_test",
};

/// A socket in a fresh private namespace (kept alive by the NetNs).
fn private_nft() -> (NetNs, Nft) {
    let ns = NetNs::create().expect("this test needs root (CAP_SYS_ADMIN)");
    let nft = ns.run(Nft::new).unwrap().unwrap();
    (ns, nft)
}

fn masq_rule(addr: &str, prefix: u8) -> Exprs {
    let ip = addr.parse().unwrap();
    let mut e = Exprs::new();
    e.nfproto(addr.contains(':'))
        .header(&HeaderMatch::address(true, ip, 128, false))
        .header(&HeaderMatch::address(false, ip, prefix, true))
        .masquerade();
    e
}

#[test]
fn tables_chains_and_rules_are_made_listed_and_deleted() {
    let (_ns, mut nft) = private_nft();
    assert!(nft.chains(T).unwrap().is_empty(), "no table yet");
    assert!(nft.rules(T, Some("c")).unwrap().is_empty());

    let mut b = nft.batch(None);
    b.add_table(T, Some("a table"));
    b.add_chain(T, "checks", None, None);
    b.add_chain(T, "post", Some(BaseChain::SRCNAT), Some("a base chain"));
    let mut goto = Exprs::new();
    goto.verdict(&Verdict::Goto("checks".into()));
    b.add_rule(T, "post", &goto, None);
    b.add_rule(T, "checks", &masq_rule("10.9.0.5", 16), Some("pod a"));
    b.add_rule(T, "checks", &masq_rule("fd00:9::5", 64), Some("pod a"));
    b.add_rule(T, "checks", &masq_rule("10.9.0.6", 16), Some("pod b"));
    assert_eq!(b.len(), 7);
    nft.commit(b).unwrap();

    let mut chains = nft.chains(T).unwrap();
    chains.sort();
    assert_eq!(chains, ["checks", "post"]);
    let all = nft.rules(T, None).unwrap();
    assert_eq!(all.len(), 4);
    let post: Vec<_> = all.iter().filter(|r| r.chain == "post").collect();
    assert_eq!(post.len(), 1);
    assert_eq!(
        post[0].exprs[0].verdict(),
        Some(Verdict::Goto("checks".into()))
    );
    let checks = nft.rules(T, Some("checks")).unwrap();
    let comments: Vec<_> = checks.iter().map(|r| r.comment.as_deref()).collect();
    assert_eq!(comments, [Some("pod a"), Some("pod a"), Some("pod b")]);
    let m = netkit::nft::Expr::header_matches(&checks[1].exprs);
    let ip6 = "fd00:9::5".parse().unwrap();
    assert_eq!(
        m,
        [
            HeaderMatch::address(true, ip6, 128, false),
            HeaderMatch::address(false, ip6, 64, true)
        ]
    );
    assert!(checks[1].exprs.iter().any(|e| e.name == "masq"));

    let mut b = nft.batch(None);
    for r in checks
        .iter()
        .filter(|r| r.comment.as_deref() == Some("pod a"))
    {
        b.del_rule(T, "checks", r.handle);
    }
    nft.commit(b).unwrap();
    let left = nft.rules(T, Some("checks")).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].handle, checks[2].handle);

    let mut b = nft.batch(None);
    b.flush_chain(T, "checks");
    nft.commit(b).unwrap();
    assert!(nft.rules(T, Some("checks")).unwrap().is_empty());
    let empty = nft.batch(None);
    nft.commit(empty).unwrap(); // nothing to send
}

#[test]
fn a_failing_batch_applies_nothing_and_names_the_culprit() {
    let (_ns, mut nft) = private_nft();
    let mut b = nft.batch(None);
    b.add_table(T, None);
    b.add_chain(T, "checks", None, None);
    b.add_rule(T, "missing", &masq_rule("10.9.0.5", 16), None);
    let err = nft.commit(b).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string().contains("add rule inet nft_test missing"),
        "{err}"
    );
    assert!(nft.chains(T).unwrap().is_empty(), "the table was not made");

    // masquerade outside a nat postrouting chain fails validation.
    let mut b = nft.batch(None);
    b.add_table(T, None);
    b.add_chain(T, "checks", None, None);
    b.add_rule(T, "checks", &masq_rule("10.9.0.5", 16), None);
    let mut goto = Exprs::new();
    goto.verdict(&Verdict::Goto("checks".into()));
    let filter = BaseChain {
        kind: "filter",
        hook: libc::NF_INET_FORWARD as u32,
        priority: 0,
    };
    b.add_chain(T, "fwd", Some(filter), None);
    b.add_rule(T, "fwd", &goto, None);
    let err = nft.commit(b).unwrap_err();
    assert!(err.errno().is_some(), "{err}");
    assert!(nft.chains(T).unwrap().is_empty());
}

#[test]
fn a_batch_built_on_a_stale_generation_is_refused() {
    let (_ns, mut nft) = private_nft();
    let generation = nft.generation().unwrap();
    let mut b = nft.batch(None);
    b.add_table(T, None);
    nft.commit(b).unwrap();
    assert_ne!(nft.generation().unwrap(), generation);

    let mut b = nft.batch(Some(generation));
    b.add_chain(T, "c", None, None);
    let err = nft.commit(b).unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert!(nft.chains(T).unwrap().is_empty());

    let current = nft.generation().unwrap();
    let mut b = nft.batch(Some(current));
    b.add_chain(T, "c", None, None);
    nft.commit(b).unwrap();
    assert_eq!(nft.chains(T).unwrap(), ["c"]);
}

const IP: Table<'static> = Table {
    family: Family::Ip,
    name: "nft_test_ip",
};

/// flanneld's kind of rules: a mark test, negated network matches,
/// masquerade fully-random, accept.
fn flannel_like() -> Vec<(&'static str, Exprs)> {
    let net = "10.244.0.0".parse().unwrap();
    let pods = "10.244.3.0".parse().unwrap();
    let mcast = "224.0.0.0".parse().unwrap();
    let mut mark = Exprs::new();
    mark.meta(&MetaMatch::mark(0x4000, 0x4000))
        .verdict(&Verdict::Return);
    let mut inside = Exprs::new();
    inside
        .header(&HeaderMatch::address(true, net, 16, true))
        .header(&HeaderMatch::address(false, pods, 24, false))
        .verdict(&Verdict::Return);
    let mut masq = Exprs::new();
    masq.header(&HeaderMatch::address(true, net, 16, false))
        .header(&HeaderMatch::address(false, mcast, 4, true))
        .masquerade_fully_random();
    let mut fwd = Exprs::new();
    fwd.header(&HeaderMatch::address(false, net, 16, false))
        .verdict(&Verdict::Accept);
    vec![
        ("post", mark),
        ("post", inside),
        ("post", masq),
        ("fwd", fwd),
    ]
}

#[test]
fn ip_family_rules_with_marks_negations_and_flags_read_back_the_same() {
    let (_ns, mut nft) = private_nft();
    assert!(!nft.has_table(IP).unwrap());
    let mut b = nft.batch(None);
    b.add_table(IP, None);
    b.add_chain(IP, "post", Some(BaseChain::SRCNAT), None);
    b.add_chain(IP, "fwd", Some(BaseChain::FORWARD), None);
    b.add_chain(IP, "plain", None, None);
    let rules = flannel_like();
    for (chain, e) in &rules {
        b.add_rule(IP, chain, e, None);
    }
    nft.commit(b).unwrap();
    assert!(nft.has_table(IP).unwrap());
    assert!(!nft.has_table(T).unwrap(), "another family, another name");

    let mut chains = nft.chain_list(IP).unwrap();
    chains.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(chains.len(), 3);
    assert!(chains[0].is(Some(&BaseChain::FORWARD)), "{:?}", chains[0]);
    assert!(!chains[0].is(Some(&BaseChain::SRCNAT)));
    assert!(chains[1].is(None), "{:?}", chains[1]);
    assert!(chains[2].is(Some(&BaseChain::SRCNAT)), "{:?}", chains[2]);
    assert!(!chains[2].is(None));

    let dumped = nft.rules(IP, None).unwrap();
    assert_eq!(dumped.len(), rules.len());
    for ((chain, want), got) in rules.iter().zip(&dumped) {
        assert_eq!(&got.chain, chain);
        assert!(want.same_rule(&got.exprs), "{:?}", Expr::steps(&got.exprs));
    }
    assert!(!rules[0].1.same_rule(&dumped[1].exprs));
    let steps = Expr::steps(&dumped[2].exprs);
    assert_eq!(
        steps.last(),
        Some(&Step::Masquerade {
            flags: NAT_FULLY_RANDOM
        })
    );
    assert_eq!(
        Expr::steps(&dumped[3].exprs).last(),
        Some(&Step::Verdict(Verdict::Accept))
    );

    // A chain deleted and made again in one batch, rules and all.
    let generation = nft.generation().unwrap();
    let mut b = nft.batch(Some(generation));
    b.flush_chain(IP, "post");
    b.del_chain(IP, "post");
    b.add_chain(IP, "post", Some(BaseChain::SRCNAT), None);
    b.add_rule(IP, "post", &rules[0].1, None);
    b.del_chain(IP, "plain");
    nft.commit(b).unwrap();
    let post = nft.rules(IP, Some("post")).unwrap();
    assert_eq!(post.len(), 1);
    assert!(rules[0].1.same_rule(&post[0].exprs));
    let mut names = nft.chains(IP).unwrap();
    names.sort();
    assert_eq!(names, ["fwd", "post"]);

    let mut b = nft.batch(None);
    b.del_table(IP);
    nft.commit(b).unwrap();
    assert!(!nft.has_table(IP).unwrap());
    assert!(nft.chain_list(IP).unwrap().is_empty());
}

#[test]
fn bridge_family_chains_with_iifname_ether_saddr_and_jumps_round_trip() {
    let (ns, mut nft) = private_nft();
    let t = Table {
        family: Family::Bridge,
        name: "nat",
    };
    let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    let mut b = nft.batch(None);
    b.add_table(t, None);
    b.add_chain(t, "PREROUTING", Some(BaseChain::BRIDGE_PREROUTING), None);
    b.add_chain(t, "iface", None, None);
    b.add_chain(t, "iface-mac", None, None);
    let mut mac_rule = Exprs::new();
    mac_rule
        .link(&LinkMatch::ether_saddr(mac))
        .verdict(&Verdict::Return);
    b.add_rule(t, "iface-mac", &mac_rule, None);
    let mut jump_mac = Exprs::new();
    jump_mac.verdict(&Verdict::Jump("iface-mac".into()));
    b.add_rule(t, "iface", &jump_mac, None);
    let mut drop = Exprs::new();
    drop.verdict(&Verdict::Drop);
    b.add_rule(t, "iface-mac", &drop, None);
    let mut entry = Exprs::new();
    entry
        .meta(&MetaMatch::iifname("vethabc"))
        .verdict(&Verdict::Jump("iface".into()));
    b.add_rule(t, "PREROUTING", &entry, Some("macspoofchk-x"));
    nft.commit(b).unwrap();

    let chains = nft.chain_list(t).unwrap();
    let pre = chains.iter().find(|c| c.name == "PREROUTING").unwrap();
    assert!(pre.is(Some(&BaseChain::BRIDGE_PREROUTING)), "{pre:?}");
    let rules = nft.rules(t, None).unwrap();
    let find = |chain: &str| -> Vec<&netkit::nft::Rule> {
        rules.iter().filter(|r| r.chain == chain).collect()
    };
    assert!(entry.same_rule(&find("PREROUTING")[0].exprs));
    assert_eq!(
        find("PREROUTING")[0].comment.as_deref(),
        Some("macspoofchk-x")
    );
    assert!(mac_rule.same_rule(&find("iface-mac")[0].exprs));
    assert!(drop.same_rule(&find("iface-mac")[1].exprs));
    assert!(jump_mac.same_rule(&find("iface")[0].exprs));

    // nft shows what we wrote as it would write it.
    let listing = ns
        .run(|| {
            std::process::Command::new("nft")
                .args(["list", "table", "bridge", "nat"])
                .output()
        })
        .unwrap();
    if let Ok(out) = listing {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("iifname \"vethabc\" jump iface comment \"macspoofchk-x\""),
            "{text}"
        );
        assert!(
            text.contains("ether saddr 02:11:22:33:44:55 return"),
            "{text}"
        );
        assert!(text.contains("jump iface-mac"), "{text}");
        assert!(
            text.contains("type filter hook prerouting priority dstnat; policy accept;")
                || text.contains("type filter hook prerouting priority -300; policy accept;"),
            "{text}"
        );
    }

    // Deleted in one batch: the jump, then the chains flushed and removed.
    let handle = find("PREROUTING")[0].handle;
    let mut b = nft.batch(None);
    b.del_rule(t, "PREROUTING", handle);
    b.flush_chain(t, "iface");
    b.flush_chain(t, "iface-mac");
    b.del_chain(t, "iface");
    b.del_chain(t, "iface-mac");
    nft.commit(b).unwrap();
    assert_eq!(nft.chains(t).unwrap(), ["PREROUTING"]);
}

/// Thousands of messages in one transaction: the kernel answers only a
/// failure (and the commit), so nothing overflows and nothing applied is
/// reported as failed.
#[test]
fn a_large_transaction_commits_whole() {
    let (_ns, mut nft) = private_nft();
    let n = 3000;
    let mut b = nft.batch(None);
    b.add_table(T, None);
    b.add_chain(T, "c", None, None);
    for i in 0..n {
        b.add_rule(
            T,
            "c",
            &masq_rule(&format!("10.{}.{}.5", i / 250, i % 250), 16),
            Some(&format!("rule {i}")),
        );
    }
    nft.commit(b).unwrap();
    let rules = nft.rules(T, Some("c")).unwrap();
    assert_eq!(rules.len(), n);

    let generation = nft.generation().unwrap();
    let mut b = nft.batch(Some(generation));
    for r in &rules {
        b.del_rule(T, "c", r.handle);
    }
    nft.commit(b).unwrap();
    assert!(nft.rules(T, Some("c")).unwrap().is_empty());
}

/// A large transaction failing: the first failing message is named, even
/// when every message fails, and nothing is applied.
#[test]
fn a_large_failing_transaction_names_its_first_failure() {
    let (_ns, mut nft) = private_nft();
    let mut b = nft.batch(None);
    b.add_table(T, None);
    b.add_chain(T, "c", None, None);
    nft.commit(b).unwrap();

    // Every one of 3000 deletions fails: 3000 errors come back.
    let mut b = nft.batch(None);
    for handle in 1000..4000 {
        b.del_rule(T, "c", handle);
    }
    let err = nft.commit(b).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string()
            .contains("delete rule inet nft_test c handle 1000:"),
        "{err}"
    );

    // 2999 good ones, then one that fails: none of them is applied.
    let mut b = nft.batch(None);
    for i in 0..2999 {
        b.add_rule(
            T,
            "c",
            &masq_rule(&format!("10.{}.{}.5", i / 250, i % 250), 16),
            None,
        );
    }
    b.add_rule(T, "missing", &masq_rule("10.9.0.5", 16), None);
    let err = nft.commit(b).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string().contains("add rule inet nft_test missing"),
        "{err}"
    );
    assert!(nft.rules(T, Some("c")).unwrap().is_empty());
}
