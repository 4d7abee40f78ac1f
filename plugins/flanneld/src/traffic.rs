//! Masquerade (`--ip-masq`) and forward (`--iptables-forward-rules`) rules,
//! in upstream's nftables layout (pkg/trafficmngr/nftables) so an operator
//! finds them where flannel keeps them, programmed over nf_tables netlink
//! (no `nft` process):
//!
//! ```text
//! table ip flannel-ipv4 {                      # ip6 flannel-ipv6 alike
//!     chain postrtg {                          # with --ip-masq
//!         type nat hook postrouting priority srcnat; policy accept;
//!         meta mark & 0x00004000 == 0x00004000 return      # kube-proxy's
//!         ip saddr <podCIDR> ip daddr <Network> return
//!         ip saddr <Network> ip daddr <podCIDR> return
//!         ip saddr != <Network> ip daddr <podCIDR> return
//!         ip saddr <Network> ip daddr != 224.0.0.0/4 masquerade fully-random
//!         ip saddr != <Network> ip daddr <Network> masquerade fully-random
//!     }
//!     chain forward {                          # with --iptables-forward-rules
//!         type filter hook forward priority filter; policy accept;
//!         ip saddr <Network> accept
//!         ip daddr <Network> accept
//!     }
//! }
//! ```
//!
//! The masquerade rules are upstream's iptables ones, in its order (its
//! nftables variant writes the fourth as `saddr != <podCIDR> daddr
//! <Network>`; the iptables form is the one every flannel release has
//! shipped). Multicast is `ff00::/8` for IPv6.
//!
//! [`Traffic::setup`] runs at startup: it makes what is missing, replaces
//! a chain whose rules differ (the Network or the subnet changed since the
//! last run), and removes what the flags no longer ask for. Then every
//! resync [`Traffic::ensure`] restores what someone deleted. The check is
//! read-only: one generation read when nothing changed in the namespace's
//! ruleset since the last good check, else dumps of the tables; a batch is
//! sent only when something is missing or different. The socket lives as
//! long as the agent, so the RCU wait that closing a socket after a flush
//! costs (see netkit::nft) is paid once, at exit. On SIGTERM the rules stay.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netkit::nft::{
    BaseChain, Batch, Chain, Exprs, Family, HeaderMatch, MetaMatch, Nft, NftError, Rule, Table,
    Verdict,
};

use crate::lease::SubnetKey;
use crate::netconfig::NetConfig;

pub const TABLE_V4: Table<'static> = Table {
    family: Family::Ip,
    name: "flannel-ipv4",
};
pub const TABLE_V6: Table<'static> = Table {
    family: Family::Ip6,
    name: "flannel-ipv6",
};
pub const POSTRTG: &str = "postrtg";
pub const FORWARD: &str = "forward";
/// The chains of ours that a flag may ask to remove.
const OURS: [&str; 2] = [POSTRTG, FORWARD];
/// kube-proxy's mark for traffic it will masquerade itself.
pub const KUBE_PROXY_MARK: u32 = 0x4000;
/// Attempts when the ruleset changes between reading and writing.
const ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// `what`: e.g. "program the masquerade and forward rules".
    #[error("cannot {what}: {source}")]
    Nft {
        what: &'static str,
        #[source]
        source: NftError,
    },
}

/// A chain as we want it: how it hooks in and its rules in order.
#[derive(Debug)]
pub struct ChainSpec {
    pub name: &'static str,
    pub base: BaseChain<'static>,
    pub comment: &'static str,
    pub rule_comment: &'static str,
    pub rules: Vec<Exprs>,
}

/// One family's table as we want it; no chains: no table.
#[derive(Debug)]
pub struct TableSpec {
    pub table: Table<'static>,
    pub chains: Vec<ChainSpec>,
}

/// `ip[6] saddr|daddr [!=] net`
fn addr(source: bool, net: IpNetwork, negate: bool) -> HeaderMatch {
    HeaderMatch::address(source, net.network(), net.prefix(), negate)
}

fn rule(matches: &[HeaderMatch], then: impl FnOnce(&mut Exprs)) -> Exprs {
    let mut e = Exprs::new();
    for m in matches {
        e.header(m);
    }
    then(&mut e);
    e
}

/// Upstream's six masquerade rules for one family.
pub fn masq_rules(network: IpNetwork, pod_cidr: IpNetwork) -> Vec<Exprs> {
    let not_multicast = if network.is_ipv4() {
        HeaderMatch::address(false, IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 4, true)
    } else {
        let ff00 = Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0);
        HeaderMatch::address(false, IpAddr::V6(ff00), 8, true)
    };
    let ret = |e: &mut Exprs| {
        e.verdict(&Verdict::Return);
    };
    let masq = |e: &mut Exprs| {
        e.masquerade_fully_random();
    };
    let mut kube_proxy = Exprs::new();
    kube_proxy
        .meta(&MetaMatch::mark(KUBE_PROXY_MARK, KUBE_PROXY_MARK))
        .verdict(&Verdict::Return);
    vec![
        kube_proxy,
        rule(
            &[addr(true, pod_cidr, false), addr(false, network, false)],
            ret,
        ),
        rule(
            &[addr(true, network, false), addr(false, pod_cidr, false)],
            ret,
        ),
        rule(
            &[addr(true, network, true), addr(false, pod_cidr, false)],
            ret,
        ),
        rule(&[addr(true, network, false), not_multicast], masq),
        rule(
            &[addr(true, network, true), addr(false, network, false)],
            masq,
        ),
    ]
}

/// Upstream's two forward rules for one family.
pub fn forward_rules(network: IpNetwork) -> Vec<Exprs> {
    let accept = |e: &mut Exprs| {
        e.verdict(&Verdict::Accept);
    };
    vec![
        rule(&[addr(true, network, false)], accept),
        rule(&[addr(false, network, false)], accept),
    ]
}

/// Both families' tables as the flags, the config and the lease ask.
pub fn desired(
    config: &NetConfig,
    key: &SubnetKey,
    ip_masq: bool,
    forward: bool,
) -> [TableSpec; 2] {
    let family = |table, network: Option<IpNetwork>, pod_cidr: Option<IpNetwork>| {
        let mut chains = Vec::new();
        if let (true, Some(network), Some(pod_cidr)) = (ip_masq, network, pod_cidr) {
            chains.push(ChainSpec {
                name: POSTRTG,
                base: BaseChain::SRCNAT,
                comment: "chain to manage traffic masquerading by flannel",
                rule_comment: "flanneld masq",
                rules: masq_rules(network, pod_cidr),
            });
        }
        if let (true, Some(network)) = (forward, network) {
            chains.push(ChainSpec {
                name: FORWARD,
                base: BaseChain::FORWARD,
                comment: "chain to accept flannel traffic",
                rule_comment: "flanneld forward",
                rules: forward_rules(network),
            });
        }
        TableSpec { table, chains }
    };
    [
        family(TABLE_V4, config.ipv4.as_ref().map(|f| f.network), key.ipv4),
        family(TABLE_V6, config.ipv6.as_ref().map(|f| f.network), key.ipv6),
    ]
}

fn same_rules(have: &[&Rule], want: &[Exprs]) -> bool {
    have.len() == want.len() && want.iter().zip(have).all(|(w, h)| w.same_rule(&h.exprs))
}

fn add_rules(b: &mut Batch, t: Table<'_>, c: &ChainSpec) {
    for r in &c.rules {
        b.add_rule(t, c.name, r, Some(c.rule_comment));
    }
}

/// Adds to `b` what makes the table as `want` says, and names each change
/// in `done`. `prune`: also remove the table, or chains of ours, that are
/// not wanted (at startup, after an earlier run with other flags).
fn plan(
    nft: &mut Nft,
    want: &TableSpec,
    prune: bool,
    b: &mut Batch,
    done: &mut Vec<String>,
) -> Result<(), NftError> {
    let t = want.table;
    if want.chains.is_empty() {
        if prune && nft.has_table(t)? {
            b.del_table(t);
            done.push(format!("removed {t}"));
        }
        return Ok(());
    }
    let chains: Vec<Chain> = nft.chain_list(t)?;
    let rules = if chains.is_empty() {
        Vec::new()
    } else {
        nft.rules(t, None)?
    };
    if chains.is_empty() {
        // Missing, or (rarely) there without chains: adding is harmless.
        b.add_table(t, Some(&format!("rules for {}", t.name)));
    }
    for c in &chains {
        if prune && OURS.contains(&c.name.as_str()) && !want.chains.iter().any(|w| w.name == c.name)
        {
            b.flush_chain(t, &c.name);
            b.del_chain(t, &c.name);
            done.push(format!("removed chain {} of {t}", c.name));
        }
    }
    for w in &want.chains {
        let have: Vec<&Rule> = rules.iter().filter(|r| r.chain == w.name).collect();
        match chains.iter().find(|c| c.name == w.name) {
            None => {
                b.add_chain(t, w.name, Some(w.base), Some(w.comment));
                add_rules(b, t, w);
                done.push(format!("made chain {} of {t}", w.name));
            }
            // Someone made it another kind of chain: a hook cannot change.
            Some(c) if !c.is(Some(&w.base)) => {
                b.flush_chain(t, w.name);
                b.del_chain(t, w.name);
                b.add_chain(t, w.name, Some(w.base), Some(w.comment));
                add_rules(b, t, w);
                done.push(format!(
                    "made chain {} of {t} again (it was another kind of chain)",
                    w.name
                ));
            }
            Some(_) if !same_rules(&have, &w.rules) => {
                if !have.is_empty() {
                    b.flush_chain(t, w.name);
                }
                add_rules(b, t, w);
                done.push(format!("rewrote the rules of chain {} of {t}", w.name));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The agent's rules and its socket for them.
#[derive(Debug)]
pub struct Traffic {
    pub ip_masq: bool,
    pub forward: bool,
    /// Opened on first use, dropped after an error (a fresh one next time).
    nft: Option<Nft>,
    /// The ruleset generation at which everything was last found in place.
    verified: Option<u32>,
}

impl Traffic {
    pub fn new(ip_masq: bool, forward: bool) -> Traffic {
        Traffic {
            ip_masq,
            forward,
            nft: None,
            verified: None,
        }
    }

    /// What failed, for the message.
    fn what(&self) -> &'static str {
        match (self.ip_masq, self.forward) {
            (true, true) => "program the masquerade and forward rules",
            (true, false) => "program the masquerade rules",
            (false, true) => "program the forward rules",
            (false, false) => "remove leftover flannel rules",
        }
    }

    /// At startup: makes, replaces and removes until the tables are as
    /// the flags, the config and the lease ask. Returns what it changed.
    pub fn setup(
        &mut self,
        config: &NetConfig,
        key: &SubnetKey,
    ) -> Result<Vec<String>, TrafficError> {
        self.sync(config, key, true)
    }

    /// In the resync: restores what is missing or different; writes
    /// nothing when all is in place. Returns what it restored.
    pub fn ensure(
        &mut self,
        config: &NetConfig,
        key: &SubnetKey,
    ) -> Result<Vec<String>, TrafficError> {
        if !self.ip_masq && !self.forward {
            return Ok(Vec::new());
        }
        self.sync(config, key, false)
    }

    fn sync(
        &mut self,
        config: &NetConfig,
        key: &SubnetKey,
        prune: bool,
    ) -> Result<Vec<String>, TrafficError> {
        let want = desired(config, key, self.ip_masq, self.forward);
        let what = self.what();
        netkit::nft::retry(ATTEMPTS, || self.try_sync(&want, prune)).map_err(|source| {
            self.nft = None;
            self.verified = None;
            TrafficError::Nft { what, source }
        })
    }

    fn try_sync(&mut self, want: &[TableSpec], prune: bool) -> Result<Vec<String>, NftError> {
        let nft = match &mut self.nft {
            Some(n) => n,
            slot => slot.insert(Nft::new()?),
        };
        let generation = nft.generation()?;
        if !prune && self.verified == Some(generation) {
            return Ok(Vec::new());
        }
        // One batch for both families, on the generation read first: if
        // anything changes meanwhile the kernel refuses it and we read again.
        let mut b = nft.batch(Some(generation));
        let mut done = Vec::new();
        for t in want {
            plan(nft, t, prune, &mut b, &mut done)?;
        }
        let wrote = !b.is_empty();
        nft.commit(b)?;
        // After our own write the generation moved: check again next time.
        self.verified = (!wrote).then_some(generation);
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NetConfig {
        NetConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:244::/56"}"#,
        )
        .unwrap()
    }

    fn key() -> SubnetKey {
        SubnetKey::parse("10.244.3.0-24&fd00:244:0:3::-64").unwrap()
    }

    #[test]
    fn flags_choose_the_chains_per_family() {
        let [v4, v6] = desired(&config(), &key(), true, true);
        assert_eq!(v4.table, TABLE_V4);
        assert_eq!(v6.table, TABLE_V6);
        let names = |t: &TableSpec| t.chains.iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(names(&v4), [POSTRTG, FORWARD]);
        assert_eq!(names(&v6), [POSTRTG, FORWARD]);
        assert_eq!(v4.chains[0].rules.len(), 6);
        assert_eq!(v4.chains[1].rules.len(), 2);
        let [v4, v6] = desired(&config(), &key(), false, true);
        assert_eq!((names(&v4), names(&v6)), (vec![FORWARD], vec![FORWARD]));
        let [v4, v6] = desired(&config(), &key(), false, false);
        assert!(v4.chains.is_empty() && v6.chains.is_empty());
        // IPv4 only: nothing for IPv6 (its table is removed at startup).
        let v4_only = NetConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        let [v4, v6] = desired(
            &v4_only,
            &SubnetKey::parse("10.244.3.0-24").unwrap(),
            true,
            true,
        );
        assert_eq!(names(&v4), [POSTRTG, FORWARD]);
        assert!(v6.chains.is_empty());
    }

    #[test]
    fn masquerade_rules_follow_the_subnet_and_network() {
        let net: IpNetwork = "10.244.0.0/16".parse().unwrap();
        let pods: IpNetwork = "10.244.3.0/24".parse().unwrap();
        let other: IpNetwork = "10.244.4.0/24".parse().unwrap();
        let a = masq_rules(net, pods);
        let b = masq_rules(net, other);
        assert_eq!(a.len(), 6);
        // Same mark rule and the same last two, different subnet rules.
        let differ: Vec<usize> = (0..6)
            .filter(|&i| format!("{:?}", a[i]) != format!("{:?}", b[i]))
            .collect();
        assert_eq!(differ, [1, 2, 3]);
        let v6 = masq_rules(
            "fd00:244::/56".parse().unwrap(),
            "fd00:244:0:3::/64".parse().unwrap(),
        );
        assert_eq!(v6.len(), 6);
    }

    /// Runs `f` in a network namespace private to the test (made on a
    /// throwaway thread, held by fd; never the machine's own).
    fn in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        let ns = netkit::NetNs::create().expect("this test needs root (CAP_SYS_ADMIN)");
        ns.run(f).unwrap()
    }

    fn v4_config() -> NetConfig {
        NetConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap()
    }

    fn v4_key(s: &str) -> SubnetKey {
        SubnetKey::parse(s).unwrap()
    }

    fn counts(nft: &mut Nft, t: Table<'_>) -> Vec<(String, usize)> {
        let rules = nft.rules(t, None).unwrap();
        let mut names = nft.chains(t).unwrap();
        names.sort();
        names
            .into_iter()
            .map(|c| {
                let n = rules.iter().filter(|r| r.chain == c).count();
                (c, n)
            })
            .collect()
    }

    #[test]
    fn rules_are_made_checked_without_writing_restored_replaced_and_removed() {
        in_private_netns(|| {
            let cfg = v4_config();
            let key = v4_key("10.244.3.0-24");
            let mut nft = Nft::new().unwrap();
            // A leftover IPv6 table from a dual-stack run goes at startup.
            let mut b = nft.batch(None);
            b.add_table(TABLE_V6, None);
            nft.commit(b).unwrap();

            let mut traffic = Traffic::new(true, true);
            let done = traffic.setup(&cfg, &key).unwrap();
            assert_eq!(
                done,
                [
                    "made chain postrtg of table ip flannel-ipv4",
                    "made chain forward of table ip flannel-ipv4",
                    "removed table ip6 flannel-ipv6"
                ]
            );
            assert!(!nft.has_table(TABLE_V6).unwrap());
            let full = vec![(FORWARD.to_string(), 2), (POSTRTG.to_string(), 6)];
            assert_eq!(counts(&mut nft, TABLE_V4), full);
            let chains = nft.chain_list(TABLE_V4).unwrap();
            assert!(chains.iter().all(|c| c.hook.is_some()), "{chains:?}");

            // In place: the checks write nothing (the generation stays).
            let generation = nft.generation().unwrap();
            for _ in 0..3 {
                assert!(traffic.ensure(&cfg, &key).unwrap().is_empty());
            }
            assert_eq!(nft.generation().unwrap(), generation);
            // Also when something else changed the ruleset meanwhile.
            let mut b = nft.batch(None);
            b.add_table(
                Table {
                    family: Family::Inet,
                    name: "someone_else",
                },
                None,
            );
            nft.commit(b).unwrap();
            let generation = nft.generation().unwrap();
            assert!(traffic.ensure(&cfg, &key).unwrap().is_empty());
            assert_eq!(nft.generation().unwrap(), generation);

            // One rule deleted: the chain is rewritten in order.
            let third = nft.rules(TABLE_V4, Some(POSTRTG)).unwrap()[2].handle;
            let mut b = nft.batch(None);
            b.del_rule(TABLE_V4, POSTRTG, third);
            nft.commit(b).unwrap();
            assert_eq!(
                traffic.ensure(&cfg, &key).unwrap(),
                ["rewrote the rules of chain postrtg of table ip flannel-ipv4"]
            );
            let want = masq_rules(
                "10.244.0.0/16".parse().unwrap(),
                "10.244.3.0/24".parse().unwrap(),
            );
            let have = nft.rules(TABLE_V4, Some(POSTRTG)).unwrap();
            let refs: Vec<&Rule> = have.iter().collect();
            assert!(same_rules(&refs, &want));
            assert_eq!(have[0].comment.as_deref(), Some("flanneld masq"));
            assert!(traffic.ensure(&cfg, &key).unwrap().is_empty());

            // The whole table deleted.
            let mut b = nft.batch(None);
            b.del_table(TABLE_V4);
            nft.commit(b).unwrap();
            assert_eq!(traffic.ensure(&cfg, &key).unwrap().len(), 2);
            assert_eq!(counts(&mut nft, TABLE_V4), full);

            // The forward chain made again as a regular chain, with a rule of
            // someone else's: replaced by ours.
            let mut b = nft.batch(None);
            b.flush_chain(TABLE_V4, FORWARD);
            b.del_chain(TABLE_V4, FORWARD);
            b.add_chain(TABLE_V4, FORWARD, None, None);
            let mut drop = Exprs::new();
            drop.verdict(&Verdict::Drop);
            b.add_rule(TABLE_V4, FORWARD, &drop, None);
            nft.commit(b).unwrap();
            assert_eq!(
                traffic.ensure(&cfg, &key).unwrap(),
                [
                    "made chain forward of table ip flannel-ipv4 again (it was another kind of chain)"
                ]
            );
            assert_eq!(counts(&mut nft, TABLE_V4), full);
            let fwd = nft.chain_list(TABLE_V4).unwrap();
            assert!(
                fwd.iter()
                    .any(|c| c.name == FORWARD && c.is(Some(&BaseChain::FORWARD)))
            );

            // A new subnet at the next start: the masquerade rules follow.
            let moved = v4_key("10.244.9.0-24");
            let mut next = Traffic::new(true, true);
            assert_eq!(
                next.setup(&cfg, &moved).unwrap(),
                ["rewrote the rules of chain postrtg of table ip flannel-ipv4"]
            );
            let have = nft.rules(TABLE_V4, Some(POSTRTG)).unwrap();
            let refs: Vec<&Rule> = have.iter().collect();
            let want = masq_rules(
                "10.244.0.0/16".parse().unwrap(),
                "10.244.9.0/24".parse().unwrap(),
            );
            assert!(same_rules(&refs, &want));

            // Flags turned off at the next starts: ours go.
            let mut no_masq = Traffic::new(false, true);
            assert_eq!(
                no_masq.setup(&cfg, &moved).unwrap(),
                ["removed chain postrtg of table ip flannel-ipv4"]
            );
            assert_eq!(counts(&mut nft, TABLE_V4), [(FORWARD.to_string(), 2)]);
            let mut none = Traffic::new(false, false);
            assert_eq!(
                none.setup(&cfg, &moved).unwrap(),
                ["removed table ip flannel-ipv4"]
            );
            assert!(!nft.has_table(TABLE_V4).unwrap());
            assert!(none.ensure(&cfg, &moved).unwrap().is_empty());
            assert!(!nft.has_table(TABLE_V4).unwrap());
            assert!(none.setup(&cfg, &moved).unwrap().is_empty());
        });
    }

    #[test]
    fn dual_stack_gets_both_tables() {
        in_private_netns(|| {
            let mut traffic = Traffic::new(true, true);
            let done = traffic.setup(&config(), &key()).unwrap();
            assert_eq!(done.len(), 4, "{done:?}");
            let mut nft = Nft::new().unwrap();
            let full = vec![(FORWARD.to_string(), 2), (POSTRTG.to_string(), 6)];
            assert_eq!(counts(&mut nft, TABLE_V6), full);
            assert_eq!(counts(&mut nft, TABLE_V4), full);
            assert!(traffic.ensure(&config(), &key()).unwrap().is_empty());
        });
    }
}
