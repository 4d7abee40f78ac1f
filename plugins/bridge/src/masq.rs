//! Masquerade for pod addresses with nftables, in the reference plugin's
//! layout (pkg/ip/ipmasq_nftables_linux.go) so that either binary can take
//! over the other's rules:
//!
//! ```text
//! table inet cni_plugins_masquerade {
//!     chain masq_checks {
//!         ip saddr 10.88.0.5 ip daddr != 10.88.0.0/16 masquerade comment "<hash>, net: <net>, if: <if>, id: <cid>"
//!     }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat;
//!         ip daddr 224.0.0.0/4 return
//!         ip6 daddr ff00::/8 return
//!         goto masq_checks
//!     }
//! }
//! ```
//!
//! One rule per pod address. Its comment starts with the attachment's
//! hash, `sha512(network)[:16]-sha512(ifname:containerID)[:16]` in hex, so
//! DEL finds an attachment's rules without knowing its addresses and GC
//! finds all of a network's. Each call is one transaction, built after
//! reading what is there so that only what is missing is sent.
//!
//! `ipMasqBackend: "iptables"` uses the reference's iptables layout
//! instead (see `iptables.rs`).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cni_types::CniError;
use ipnetwork::IpNetwork;
use netkit::nft::{
    BaseChain, Batch, Expr, Exprs, Family, HeaderMatch, Nft, NftError, Rule, Table, Verdict,
};

use crate::errors::{self, CHECK, MASQUERADE};

const TABLE: Table<'static> = Table {
    family: Family::Inet,
    name: "cni_plugins_masquerade",
};
const CHECKS: &str = "masq_checks";
const POSTROUTING: &str = "postrouting";
const TABLE_COMMENT: &str = "Masquerading for plugins from github.com/containernetworking/plugins";
const CHECKS_COMMENT: &str =
    "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet";
/// Marks our postrouting rules, so that an ADD can tell they are intact
/// and leave them be: rewriting them means a flush, and then closing the
/// socket waits for an RCU grace period. (The reference flushes and
/// rewrites them on every ADD; after one of its ADDs ours rewrites them once.)
const POSTROUTING_TAG: &str = "cni-rs postrouting v1";
/// Attempts when the ruleset changes under us (concurrent plugins).
const ATTEMPTS: u32 = 10;

pub use crate::attachment::Attachment;

impl Attachment<'_> {
    /// The start of each of its rules' comments.
    fn masq_hash(&self) -> String {
        format!(
            "{}-{}",
            hash16(self.network),
            hash16(&format!("{}:{}", self.ifname, self.container_id))
        )
    }

    /// As the reference writes it (cut to 128 bytes when it is written).
    fn masq_comment(&self) -> String {
        let clean = |s: &str| s.replace('"', "");
        format!(
            "{}, net: {}, if: {}, id: {}",
            self.masq_hash(),
            clean(self.network),
            clean(self.ifname),
            clean(self.container_id)
        )
    }
}

/// The first 16 hex digits of the SHA-512 of `s`.
fn hash16(s: &str) -> String {
    crate::attachment::sha512_hex(s, 8)
}

/// The attachment hash a rule's comment starts with.
fn rule_hash(r: &Rule) -> Option<&str> {
    let c = r.comment.as_deref()?;
    Some(c.split_once(',').map_or(c, |(hash, _)| hash))
}

/// `ip[6] saddr <ip>`
fn from_pod(ip: &IpNetwork) -> HeaderMatch {
    HeaderMatch::address(true, ip.ip(), 128, false)
}

/// `ip[6] daddr != <its subnet>`
fn leaving_subnet(ip: &IpNetwork) -> HeaderMatch {
    HeaderMatch::address(false, ip.ip(), ip.prefix(), true)
}

fn masq_rule(ip: &IpNetwork) -> Exprs {
    let mut e = Exprs::new();
    e.nfproto(ip.is_ipv6())
        .header(&from_pod(ip))
        .header(&leaving_subnet(ip))
        .masquerade();
    e
}

fn is_masq_rule_for(r: &Rule, ip: &IpNetwork) -> bool {
    let matches = Expr::header_matches(&r.exprs);
    let has = |want: HeaderMatch| matches.iter().any(|m| m.same_test(&want));
    has(from_pod(ip)) && has(leaving_subnet(ip)) && r.exprs.iter().any(|e| e.name == "masq")
}

fn leads_to_checks(r: &Rule) -> bool {
    r.chain == POSTROUTING
        && r.exprs
            .iter()
            .any(|e| matches!(e.verdict(), Some(Verdict::Goto(c)) if c == CHECKS))
}

/// A socket for nf_tables in our own namespace (the node's).
///
/// Closing it after rules were deleted waits until the kernel has released
/// them (an RCU grace period), and holds the namespace's nf_tables lock
/// meanwhile, which deleting a link in the namespace also takes. Where a
/// link goes too, drop the socket after it: by then the release is done.
pub fn open() -> Result<Nft, CniError> {
    Nft::new().map_err(|e| errors::err(MASQUERADE, "failed to open nf_tables netlink", e))
}

/// Runs an nf_tables step, again when the ruleset changed under it; a
/// final failure becomes a plugin error with `code`.
pub(crate) fn retrying<T>(
    code: u32,
    nft: &mut Nft,
    what: &str,
    mut f: impl FnMut(&mut Nft) -> Result<T, NftError>,
) -> Result<T, CniError> {
    netkit::nft::retry(ATTEMPTS, || f(nft)).map_err(|e| errors::err(code, what, e))
}

fn list(ips: &[IpNetwork]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// SNAT traffic from each pod address leaving its subnet; replaces rules
/// the attachment may already have.
pub fn add(who: &Attachment<'_>, ips: &[IpNetwork]) -> Result<(), CniError> {
    let hash = who.masq_hash();
    let comment = who.masq_comment();
    let what = format!("failed to set up masquerade for {}", list(ips));
    retrying(MASQUERADE, &mut open()?, &what, |nft| {
        let generation = nft.generation()?;
        let chains = nft.chains(TABLE)?;
        let rules = if chains.is_empty() {
            Vec::new()
        } else {
            nft.rules(TABLE, None)?
        };
        let post: Vec<&Rule> = rules.iter().filter(|r| r.chain == POSTROUTING).collect();
        let stale: Vec<u64> = rules
            .iter()
            .filter(|r| r.chain == CHECKS && rule_hash(r) == Some(hash.as_str()))
            .map(|r| r.handle)
            .collect();
        let post_intact = post.len() == 3
            && post
                .iter()
                .all(|r| r.comment.as_deref() == Some(POSTROUTING_TAG));
        // Appending rules is safe whatever happens meanwhile; rewriting the
        // postrouting chain or deleting rules is not, so those go with the
        // generation they were read at.
        let guard = !post_intact || !stale.is_empty();
        let mut b = nft.batch(guard.then_some(generation));
        ensure(&mut b, &chains, &post, post_intact);
        for handle in stale {
            b.del_rule(TABLE, CHECKS, handle);
        }
        for ip in ips {
            b.add_rule(TABLE, CHECKS, &masq_rule(ip), Some(&comment));
        }
        nft.commit(b)
    })
}

/// Adds to `b` the table, chains and postrouting rules that are missing.
fn ensure(b: &mut Batch, chains: &[String], post: &[&Rule], post_intact: bool) {
    let has = |name: &str| chains.iter().any(|c| c == name);
    if chains.is_empty() {
        b.add_table(TABLE, Some(TABLE_COMMENT));
    }
    if !has(CHECKS) {
        b.add_chain(TABLE, CHECKS, None, Some(CHECKS_COMMENT));
    }
    if !has(POSTROUTING) {
        b.add_chain(TABLE, POSTROUTING, Some(BaseChain::SRCNAT), None);
    }
    if post_intact {
        return;
    }
    if !post.is_empty() {
        b.flush_chain(TABLE, POSTROUTING);
    }
    let multicast = [
        (false, IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 4),
        (
            true,
            IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)),
            8,
        ),
    ];
    for (v6, net, prefix) in multicast {
        let mut e = Exprs::new();
        e.nfproto(v6)
            .header(&HeaderMatch::address(false, net, prefix, false))
            .verdict(&Verdict::Return);
        b.add_rule(TABLE, POSTROUTING, &e, Some(POSTROUTING_TAG));
    }
    let mut e = Exprs::new();
    e.verdict(&Verdict::Goto(CHECKS.into()));
    b.add_rule(TABLE, POSTROUTING, &e, Some(POSTROUTING_TAG));
}

/// Removes the attachment's rules, whatever its addresses were.
pub fn del(who: &Attachment<'_>) -> Result<(), CniError> {
    del_with(&mut open()?, who)
}

/// [`del`] on a socket from [`open`], to close when it suits the caller.
pub fn del_with(nft: &mut Nft, who: &Attachment<'_>) -> Result<(), CniError> {
    let hash = who.masq_hash();
    retrying(
        MASQUERADE,
        nft,
        "failed to remove masquerade rules",
        |nft| {
            let rules = nft.rules(TABLE, Some(CHECKS))?;
            let mut b = nft.batch(None);
            for r in rules.iter().filter(|r| rule_hash(r) == Some(hash.as_str())) {
                b.del_rule(TABLE, CHECKS, r.handle);
            }
            nft.commit(b)
        },
    )
}

/// Each address has its rule, and postrouting leads to them.
pub fn check(who: &Attachment<'_>, ips: &[IpNetwork]) -> Result<(), CniError> {
    let hash = who.masq_hash();
    let rules = retrying(
        MASQUERADE,
        &mut open()?,
        "failed to read masquerade rules",
        |nft| nft.rules(TABLE, None),
    )?;
    if !rules.iter().any(leads_to_checks) {
        return Err(errors::msg(
            CHECK,
            format!("chain {POSTROUTING} of {TABLE} does not lead to {CHECKS}"),
        ));
    }
    for ip in ips {
        let found = rules.iter().any(|r| {
            r.chain == CHECKS && rule_hash(r) == Some(hash.as_str()) && is_masq_rule_for(r, ip)
        });
        if !found {
            return Err(errors::msg(
                CHECK,
                format!("masquerade rule for {ip} not found in chain {CHECKS} of {TABLE}"),
            ));
        }
    }
    Ok(())
}

/// Removes the rules of `network` whose attachment is not in `keep`.
pub fn gc(network: &str, keep: &[Attachment<'_>]) -> Result<(), CniError> {
    let prefix = format!("{}-", hash16(network));
    let keep: HashSet<String> = keep.iter().map(Attachment::masq_hash).collect();
    retrying(
        MASQUERADE,
        &mut open()?,
        "failed to remove stale masquerade rules",
        |nft| {
            let rules = nft.rules(TABLE, Some(CHECKS))?;
            let mut b = nft.batch(None);
            for r in &rules {
                if let Some(h) = rule_hash(r)
                    && h.starts_with(&prefix)
                    && !keep.contains(h)
                {
                    b.del_rule(TABLE, CHECKS, r.handle);
                }
            }
            nft.commit(b)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_comments_match_the_reference() {
        // As `printf %s mynet | sha512sum | cut -c1-16` (the reference's
        // MustFormatHashWithPrefix(16, "", s)).
        let who = Attachment {
            network: "mynet",
            container_id: "cid123",
            ifname: "eth0",
        };
        assert_eq!(who.masq_hash(), "d23676b4f2d9fe04-9d01cec599f072d1");
        assert_eq!(
            who.masq_comment(),
            "d23676b4f2d9fe04-9d01cec599f072d1, net: mynet, if: eth0, id: cid123"
        );
        let quoted = Attachment {
            network: "my\"net",
            ..who
        };
        assert!(
            quoted
                .masq_comment()
                .ends_with("net: mynet, if: eth0, id: cid123")
        );
    }
}
