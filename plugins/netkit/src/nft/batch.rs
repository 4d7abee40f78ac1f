//! A transaction: BATCH_BEGIN, nf_tables messages, BATCH_END, applied by
//! the kernel all or nothing.
//!
//! Only BATCH_END asks for an ACK. The kernel reports a failing member
//! with or without one, so an ACK per member would only add one answer
//! per message, and those (not the batch) overflowed the socket's receive
//! buffer from a few hundred messages on. BATCH_END's ACK (newer kernels;
//! older ones ignore the flag) confirms the commit. Splitting a large
//! batch would avoid the flood too, but would give up the transaction:
//! half a GC could be applied.

use netlink_packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};

use super::expr::Exprs;
use super::sys::*;
use super::wire::Writer;
use super::{Family, Table};

/// What makes a chain a base chain: its type (`"nat"`, `"filter"`, ...),
/// hook (`NF_INET_*`) and priority.
#[derive(Debug, Clone, Copy)]
pub struct BaseChain<'a> {
    pub kind: &'a str,
    pub hook: u32,
    pub priority: i32,
}

impl BaseChain<'static> {
    /// `type nat hook postrouting priority srcnat`.
    pub const SRCNAT: BaseChain<'static> = BaseChain {
        kind: "nat",
        hook: nix::libc::NF_INET_POST_ROUTING as u32,
        priority: nix::libc::NF_IP_PRI_NAT_SRC,
    };

    /// `type filter hook forward priority filter`.
    pub const FORWARD: BaseChain<'static> = BaseChain {
        kind: "filter",
        hook: nix::libc::NF_INET_FORWARD as u32,
        priority: nix::libc::NF_IP_PRI_FILTER,
    };

    /// In a `bridge` table: `type filter hook prerouting priority -300`
    /// (`dstnat` of the bridge family), before the bridge decides where a
    /// frame goes.
    pub const BRIDGE_PREROUTING: BaseChain<'static> = BaseChain {
        kind: "filter",
        hook: NF_BR_PRE_ROUTING,
        priority: -300,
    };
}

/// `NF_BR_PRE_ROUTING` (<linux/netfilter_bridge.h>).
const NF_BR_PRE_ROUTING: u32 = 0;

/// Changes to send with [`super::Nft::commit`]. Messages are numbered
/// when sent, so an error names the message it belongs to.
#[derive(Debug)]
pub struct Batch {
    w: Writer,
    /// What every message does, in order, to name a failure.
    pub(super) labels: Vec<String>,
}

impl Batch {
    /// `genid`: the ruleset generation the batch was built against; the
    /// kernel refuses it with `ERESTART` if the ruleset changed since.
    pub(super) fn new(genid: Option<u32>) -> Batch {
        let mut w = Writer::default();
        let s = w.begin(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        if let Some(g) = genid {
            w.put_be32(NFNL_BATCH_GENID, g);
        }
        w.end(s);
        Batch {
            w,
            labels: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn push(
        &mut self,
        msg: u8,
        flags: u16,
        family: Family,
        what: String,
        f: impl FnOnce(&mut Writer),
    ) {
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg);
        // No NLM_F_ACK: errors are reported anyway (see the module's notes).
        let s = self
            .w
            .begin(ty, flags | NLM_F_REQUEST, 0, family.proto(), 0);
        f(&mut self.w);
        self.w.end(s);
        self.labels.push(what);
    }

    /// `add table` (no error if it exists).
    pub fn add_table(&mut self, t: Table<'_>, comment: Option<&str>) {
        self.push(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            t.family,
            format!("add {t}"),
            |w| {
                w.put_str(NFTA_TABLE_NAME, t.name);
                if let Some(c) = comment {
                    w.put(NFTA_TABLE_USERDATA, &udata_comment(c));
                }
            },
        );
    }

    /// `add chain`, a base chain when `base` is given (no error if it
    /// exists with the same type and hook).
    pub fn add_chain(
        &mut self,
        t: Table<'_>,
        name: &str,
        base: Option<BaseChain<'_>>,
        comment: Option<&str>,
    ) {
        let what = format!("add chain {} {} {name}", t.family.name(), t.name);
        self.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, t.family, what, |w| {
            w.put_str(NFTA_CHAIN_TABLE, t.name);
            w.put_str(NFTA_CHAIN_NAME, name);
            if let Some(b) = base {
                w.nest(NFTA_CHAIN_HOOK, |w| {
                    w.put_be32(NFTA_HOOK_HOOKNUM, b.hook);
                    w.put(NFTA_HOOK_PRIORITY, &b.priority.to_be_bytes());
                });
                w.put_be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
                w.put_str(NFTA_CHAIN_TYPE, b.kind);
            }
            if let Some(c) = comment {
                w.put(NFTA_CHAIN_USERDATA, &udata_comment(c));
            }
        });
    }

    /// `delete table`, with everything in it.
    pub fn del_table(&mut self, t: Table<'_>) {
        self.push(NFT_MSG_DELTABLE, 0, t.family, format!("delete {t}"), |w| {
            w.put_str(NFTA_TABLE_NAME, t.name);
        });
    }

    /// `delete chain`. Older kernels refuse to delete a chain that still
    /// has rules: flush it first in the same batch.
    pub fn del_chain(&mut self, t: Table<'_>, name: &str) {
        let what = format!("delete chain {} {} {name}", t.family.name(), t.name);
        self.push(NFT_MSG_DELCHAIN, 0, t.family, what, |w| {
            w.put_str(NFTA_CHAIN_TABLE, t.name);
            w.put_str(NFTA_CHAIN_NAME, name);
        });
    }

    /// `add rule` at the end of `chain`.
    pub fn add_rule(&mut self, t: Table<'_>, chain: &str, exprs: &Exprs, comment: Option<&str>) {
        let what = format!("add rule {} {} {chain}", t.family.name(), t.name);
        let flags = NLM_F_CREATE | NLM_F_APPEND;
        self.push(NFT_MSG_NEWRULE, flags, t.family, what, |w| {
            w.put_str(NFTA_RULE_TABLE, t.name);
            w.put_str(NFTA_RULE_CHAIN, chain);
            w.nest(NFTA_RULE_EXPRESSIONS, |w| w.append(exprs.writer()));
            if let Some(c) = comment {
                w.put(NFTA_RULE_USERDATA, &udata_comment(c));
            }
        });
    }

    /// `delete rule ... handle N`.
    pub fn del_rule(&mut self, t: Table<'_>, chain: &str, handle: u64) {
        let what = format!(
            "delete rule {} {} {chain} handle {handle}",
            t.family.name(),
            t.name
        );
        self.push(NFT_MSG_DELRULE, 0, t.family, what, |w| {
            w.put_str(NFTA_RULE_TABLE, t.name);
            w.put_str(NFTA_RULE_CHAIN, chain);
            w.put_be64(NFTA_RULE_HANDLE, handle);
        });
    }

    /// `flush chain`: deletes all its rules.
    pub fn flush_chain(&mut self, t: Table<'_>, chain: &str) {
        let what = format!("flush chain {} {} {chain}", t.family.name(), t.name);
        self.push(NFT_MSG_DELRULE, 0, t.family, what, |w| {
            w.put_str(NFTA_RULE_TABLE, t.name);
            w.put_str(NFTA_RULE_CHAIN, chain);
        });
    }

    /// The bytes to send: the messages and BATCH_END, which asks for the
    /// ACK that confirms the commit.
    pub(super) fn finish(mut self) -> (Vec<u8>, Vec<String>) {
        let s = self.w.begin(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST | NLM_F_ACK,
            0,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        self.w.end(s);
        (self.w.bytes().to_vec(), self.labels)
    }
}

/// A comment as libnftnl stores it in user data (so `nft list` shows it):
/// one TLV, NUL-terminated, cut to the length nft accepts.
fn udata_comment(c: &str) -> Vec<u8> {
    let mut end = c.len().min(COMMENT_MAX);
    while !c.is_char_boundary(end) {
        end -= 1;
    }
    let text = &c.as_bytes()[..end];
    let mut v = Vec::with_capacity(text.len() + 3);
    v.push(UDATA_COMMENT);
    v.push(u8::try_from(text.len() + 1).unwrap_or(u8::MAX));
    v.extend_from_slice(text);
    v.push(0);
    v
}

/// The comment in user data written by [`udata_comment`] or by nft.
pub(super) fn parse_udata_comment(u: &[u8]) -> Option<String> {
    let mut i = 0;
    while let Some(&[ty, len]) = u.get(i..i + 2) {
        let value = u.get(i + 2..i + 2 + usize::from(len))?;
        if ty == UDATA_COMMENT {
            return Some(super::wire::string(value));
        }
        i += 2 + usize::from(len);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_round_trip_and_are_cut_to_what_nft_accepts() {
        let c = udata_comment("hello");
        assert_eq!(c, b"\0\x06hello\0");
        assert_eq!(parse_udata_comment(&c).as_deref(), Some("hello"));
        // A TLV of another type before the comment is skipped.
        let mut other = vec![3, 1, 9];
        other.extend_from_slice(&c);
        assert_eq!(parse_udata_comment(&other).as_deref(), Some("hello"));
        let long = "é".repeat(100);
        let cut = parse_udata_comment(&udata_comment(&long)).unwrap();
        assert_eq!(cut.len(), 128);
        assert!(long.starts_with(&cut));
        assert_eq!(parse_udata_comment(&[0, 9, 1]), None);
    }

    #[test]
    fn only_the_batch_end_asks_for_an_ack() {
        let t = Table {
            family: Family::Inet,
            name: "t",
        };
        let mut b = Batch::new(Some(5));
        b.add_table(t, None);
        b.del_rule(t, "c", 7);
        assert_eq!(b.len(), 2);
        let (bytes, labels) = b.finish();
        assert_eq!(
            labels,
            ["add table inet t", "delete rule inet t c handle 7"]
        );
        let msgs = crate::nlsock::frame::frames(&bytes).unwrap();
        let kinds: Vec<(u16, bool)> = msgs
            .iter()
            .map(|m| (m.ty, m.flags & NLM_F_ACK != 0))
            .collect();
        let nft = |m: u8| (NFNL_SUBSYS_NFTABLES << 8) | u16::from(m);
        assert_eq!(
            kinds,
            [
                (NFNL_MSG_BATCH_BEGIN, false),
                (nft(NFT_MSG_NEWTABLE), false),
                (nft(NFT_MSG_DELRULE), false),
                (NFNL_MSG_BATCH_END, true)
            ]
        );
    }
}
