//! `macspoofchk`: frames a pod sends must carry its own MAC. The reference
//! plugin's layout (pkg/link/spoofcheck.go), in the node's namespace:
//!
//! ```text
//! table bridge nat {
//!     chain PREROUTING {
//!         type filter hook prerouting priority -300; policy accept;
//!         iifname "<host veth>" jump cni-br-iface-<id> comment "macspoofchk-<id>"
//!     }
//!     chain cni-br-iface-<id> {
//!         jump cni-br-iface-<id>-mac comment "net: <network>"
//!     }
//!     chain cni-br-iface-<id>-mac {
//!         ether saddr <pod MAC> return
//!         drop
//!     }
//! }
//! ```
//!
//! The `drop` is in the `-mac` chain, after the `return`: a `return` goes
//! back to the rule after the `jump`, so a `drop` there would drop the pod's
//! own frames too.
//!
//! `<id>` is `<containerID>-<ifname>` as in the reference (a hash of it if
//! that would make a chain name longer than nf_tables allows), so DEL finds
//! an attachment's rules by name alone, also when its namespace is gone.
//! The `net:` comment (ours; the reference writes none) lets GC tell the
//! network's attachments from other networks' on the same node; chains
//! without it are never collected.

use std::collections::HashSet;

use cni_types::CniError;
use netkit::nft::{
    BaseChain, Batch, Chain, Exprs, Family, LinkMatch, MetaMatch, Nft, Rule, Table, Verdict,
};

use crate::errors::{self, CHECK, SPOOFCHK};
use crate::masq::retrying;

const TABLE: Table<'static> = Table {
    family: Family::Bridge,
    name: "nat",
};
const PREROUTING: &str = "PREROUTING";
const CHAIN_PREFIX: &str = "cni-br-iface-";
const COMMENT_PREFIX: &str = "macspoofchk-";
/// nf_tables' limit on names (NFT_NAME_MAXLEN, with its NUL).
const NAME_MAX: usize = 255;
/// Attempts when the ruleset changes under us (concurrent plugins).
pub use crate::attachment::Attachment;

impl Attachment<'_> {
    fn spoof_id(&self) -> String {
        let id = format!("{}-{}", self.container_id, self.ifname);
        if CHAIN_PREFIX.len() + id.len() + "-mac".len() <= NAME_MAX {
            return id;
        }
        crate::attachment::sha512_hex(&id, 16)
    }

    fn spoof_chain(&self) -> String {
        format!("{CHAIN_PREFIX}{}", self.spoof_id())
    }

    fn spoof_comment(&self) -> String {
        format!("{COMMENT_PREFIX}{}", self.spoof_id())
    }
}

fn mac_chain(iface_chain: &str) -> String {
    format!("{iface_chain}-mac")
}

fn net_tag(network: &str) -> String {
    format!("net: {}", network.replace('"', ""))
}

fn entry_rule(host_veth: &str, iface_chain: &str) -> Exprs {
    let mut e = Exprs::new();
    e.meta(&MetaMatch::iifname(host_veth))
        .verdict(&Verdict::Jump(iface_chain.into()));
    e
}

fn jump_rule(iface_chain: &str) -> Exprs {
    let mut e = Exprs::new();
    e.verdict(&Verdict::Jump(mac_chain(iface_chain)));
    e
}

fn drop_rule() -> Exprs {
    let mut e = Exprs::new();
    e.verdict(&Verdict::Drop);
    e
}

fn mac_rule(mac: [u8; 6]) -> Exprs {
    let mut e = Exprs::new();
    e.link(&LinkMatch::ether_saddr(mac))
        .verdict(&Verdict::Return);
    e
}

/// The pod MAC as 6 bytes.
pub fn mac6(mac: &[u8]) -> Result<[u8; 6], CniError> {
    mac.try_into().map_err(|_| {
        errors::msg(
            SPOOFCHK,
            format!("the pod interface has a {}-byte MAC", mac.len()),
        )
    })
}

/// A socket for nf_tables in our own namespace (the node's).
pub fn open() -> Result<Nft, CniError> {
    Nft::new().map_err(|e| errors::err(SPOOFCHK, "failed to open nf_tables", e))
}

fn rules_of<'r>(rules: &'r [Rule], chain: &str) -> Vec<&'r Rule> {
    rules.iter().filter(|r| r.chain == chain).collect()
}

/// Whether `chain` holds exactly `want`, in order.
fn holds(rules: &[Rule], chain: &str, want: &[&Exprs]) -> bool {
    let have = rules_of(rules, chain);
    have.len() == want.len() && have.iter().zip(want).all(|(r, w)| w.same_rule(&r.exprs))
}

/// Lets only `mac` in from `host_veth`; what is already right is left
/// alone, what is not is replaced.
pub fn add(who: &Attachment<'_>, host_veth: &str, mac: [u8; 6]) -> Result<(), CniError> {
    let iface = who.spoof_chain();
    let macc = mac_chain(&iface);
    let comment = who.spoof_comment();
    let tag = net_tag(who.network);
    let entry = entry_rule(host_veth, &iface);
    let (jump, drop, allow) = (jump_rule(&iface), drop_rule(), mac_rule(mac));
    let what = format!("failed to set up the MAC spoof check on {host_veth}");
    retrying(SPOOFCHK, &mut open()?, &what, |nft| {
        let generation = nft.generation()?;
        let chains = nft.chain_list(TABLE)?;
        let rules = if chains.is_empty() {
            Vec::new()
        } else {
            nft.rules(TABLE, None)?
        };
        let has = |name: &str| chains.iter().any(|c| c.name == name);
        let entries: Vec<&Rule> = rules_of(&rules, PREROUTING)
            .into_iter()
            .filter(|r| r.comment.as_deref() == Some(comment.as_str()))
            .collect();
        let entry_ok = entries.len() == 1 && entry.same_rule(&entries[0].exprs);
        let iface_ok = has(&iface) && holds(&rules, &iface, &[&jump]);
        let mac_ok = has(&macc) && holds(&rules, &macc, &[&allow, &drop]);
        if entry_ok && iface_ok && mac_ok {
            return Ok(());
        }
        let stale = !entries.is_empty() || has(&iface) || has(&macc);
        let mut b = nft.batch(stale.then_some(generation));
        if chains.is_empty() {
            b.add_table(TABLE, None);
        }
        if !has(PREROUTING) {
            b.add_chain(TABLE, PREROUTING, Some(BaseChain::BRIDGE_PREROUTING), None);
        }
        for r in &entries {
            b.del_rule(TABLE, PREROUTING, r.handle);
        }
        if has(&macc) {
            b.flush_chain(TABLE, &macc);
        } else {
            b.add_chain(TABLE, &macc, None, None);
        }
        if has(&iface) {
            b.flush_chain(TABLE, &iface);
        } else {
            b.add_chain(TABLE, &iface, None, None);
        }
        b.add_rule(TABLE, &macc, &allow, None);
        b.add_rule(TABLE, &macc, &drop, None);
        b.add_rule(TABLE, &iface, &jump, Some(&tag));
        b.add_rule(TABLE, PREROUTING, &entry, Some(&comment));
        nft.commit(b)
    })
}

/// Adds to `b` the removal of one attachment's entry rules and chains.
fn remove(b: &mut Batch, chains: &[Chain], entries: &[&Rule], iface: &str) {
    for r in entries {
        b.del_rule(TABLE, PREROUTING, r.handle);
    }
    let macc = mac_chain(iface);
    let has = |name: &str| chains.iter().any(|c| c.name == name);
    for c in [iface, macc.as_str()] {
        if has(c) {
            b.flush_chain(TABLE, c);
        }
    }
    for c in [iface, macc.as_str()] {
        if has(c) {
            b.del_chain(TABLE, c);
        }
    }
}

/// Removes the attachment's rules and chains, found by their names, on a
/// socket from [`open`] (to close when it suits the caller).
pub fn del_with(nft: &mut Nft, who: &Attachment<'_>) -> Result<(), CniError> {
    let iface = who.spoof_chain();
    let comment = who.spoof_comment();
    retrying(
        SPOOFCHK,
        nft,
        "failed to remove the MAC spoof check",
        |nft| {
            let chains = nft.chain_list(TABLE)?;
            if chains.is_empty() {
                return Ok(());
            }
            let rules = nft.rules(TABLE, Some(PREROUTING))?;
            let entries: Vec<&Rule> = rules
                .iter()
                .filter(|r| r.comment.as_deref() == Some(comment.as_str()))
                .collect();
            let mut b = nft.batch(None);
            remove(&mut b, &chains, &entries, &iface);
            nft.commit(b)
        },
    )
}

/// [`del_with`] on a socket of its own.
pub fn del(who: &Attachment<'_>) -> Result<(), CniError> {
    del_with(&mut open()?, who)
}

/// The entry rule, both chains and their rules are there, for this veth
/// and MAC.
pub fn check(who: &Attachment<'_>, host_veth: Option<&str>, mac: [u8; 6]) -> Result<(), CniError> {
    let iface = who.spoof_chain();
    let macc = mac_chain(&iface);
    let comment = who.spoof_comment();
    let rules = retrying(
        SPOOFCHK,
        &mut open()?,
        "failed to read the MAC spoof check",
        |nft| nft.rules(TABLE, None),
    )?;
    let fail = |what: String| Err(errors::msg(CHECK, what));
    let entry = rules_of(&rules, PREROUTING)
        .into_iter()
        .find(|r| r.comment.as_deref() == Some(comment.as_str()));
    let Some(entry) = entry else {
        return fail(format!(
            "MAC spoof check rule {comment:?} not found in chain {PREROUTING} of table bridge nat"
        ));
    };
    let entry_ok = match host_veth {
        Some(veth) => entry_rule(veth, &iface).same_rule(&entry.exprs),
        None => entry
            .exprs
            .iter()
            .any(|e| e.verdict() == Some(Verdict::Jump(iface.clone()))),
    };
    if !entry_ok {
        return fail(format!(
            "MAC spoof check rule {comment:?} does not send {} to chain {iface}",
            host_veth.unwrap_or("the host veth")
        ));
    }
    if !holds(&rules, &iface, &[&jump_rule(&iface)]) {
        return fail(format!(
            "chain {iface} of table bridge nat does not lead to {macc}"
        ));
    }
    if !holds(&rules, &macc, &[&mac_rule(mac), &drop_rule()]) {
        return fail(format!(
            "chain {macc} of table bridge nat does not let only {} through",
            netkit::link::format_mac(&mac)
        ));
    }
    Ok(())
}

/// Removes the checks of `network`'s attachments not in `keep`.
pub fn gc(network: &str, keep: &[Attachment<'_>]) -> Result<(), CniError> {
    let tag = net_tag(network);
    let keep: HashSet<String> = keep.iter().map(Attachment::spoof_chain).collect();
    retrying(
        SPOOFCHK,
        &mut open()?,
        "failed to remove stale MAC spoof checks",
        |nft| {
            let chains = nft.chain_list(TABLE)?;
            if chains.is_empty() {
                return Ok(());
            }
            let rules = nft.rules(TABLE, None)?;
            // The network's iface chains: tagged by their jump rule.
            let ours: Vec<&str> = rules
                .iter()
                .filter(|r| {
                    r.chain.starts_with(CHAIN_PREFIX)
                        && r.comment.as_deref() == Some(tag.as_str())
                        && !keep.contains(&r.chain)
                })
                .map(|r| r.chain.as_str())
                .collect();
            let mut b = nft.batch(None);
            for iface in ours {
                let entries: Vec<&Rule> = rules_of(&rules, PREROUTING)
                    .into_iter()
                    .filter(|r| {
                        r.comment
                            .as_deref()
                            .is_some_and(|c| c.starts_with(COMMENT_PREFIX))
                            && r.exprs
                                .iter()
                                .any(|e| e.verdict() == Some(Verdict::Jump(iface.to_string())))
                    })
                    .collect();
                remove(&mut b, &chains, &entries, iface);
            }
            nft.commit(b)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_reference_and_stay_within_limits() {
        let who = Attachment {
            network: "net",
            container_id: "abc",
            ifname: "eth0",
        };
        assert_eq!(who.spoof_chain(), "cni-br-iface-abc-eth0");
        assert_eq!(mac_chain(&who.spoof_chain()), "cni-br-iface-abc-eth0-mac");
        assert_eq!(who.spoof_comment(), "macspoofchk-abc-eth0");
        let long = "c".repeat(300);
        let who = Attachment {
            container_id: &long,
            ..who
        };
        assert!(mac_chain(&who.spoof_chain()).len() <= NAME_MAX);
        assert_eq!(who.spoof_id().len(), 32);
    }
}
