//! The NETLINK_NETFILTER socket: transactions, the ruleset generation,
//! and dumps of chains and rules, over the shared socket core.

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::batch::{BaseChain, Batch, parse_udata_comment};
use super::expr::Expr;
use super::sys::*;
use super::wire::{self, Writer, attrs};
use super::{NftError, Table};
use crate::nlsock::{Answer, NlSocket};

/// A rule as a dump shows it.
#[derive(Debug, Clone)]
pub struct Rule {
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
    pub exprs: Vec<Expr>,
}

/// A chain as a dump shows it; a base chain has its type, hook, priority
/// and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// `"nat"`, `"filter"`, ...
    pub kind: Option<String>,
    /// `NF_INET_*`.
    pub hook: Option<u32>,
    pub priority: Option<i32>,
    /// `NF_ACCEPT` or `NF_DROP`.
    pub policy: Option<u32>,
}

impl Chain {
    /// Whether it is what [`super::Batch::add_chain`] makes with `base`: a
    /// regular chain for `None`, else that type, hook and priority with an
    /// accept policy.
    pub fn is(&self, base: Option<&BaseChain<'_>>) -> bool {
        match base {
            None => self.hook.is_none(),
            Some(b) => {
                self.kind.as_deref() == Some(b.kind)
                    && self.hook == Some(b.hook)
                    && self.priority == Some(b.priority)
                    && self.policy == Some(NF_ACCEPT)
            }
        }
    }
}

/// An nf_tables netlink socket in the namespace it was made in.
#[derive(Debug)]
pub struct Nft {
    sock: NlSocket,
}

impl Nft {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Nft, NftError> {
        let sock = NlSocket::open(NETLINK_NETFILTER, false)
            .map_err(|e| NftError::from_netlink("open", e))?;
        Ok(Nft { sock })
    }

    /// An empty transaction; with `genid` (see [`Nft::generation`]) the
    /// kernel refuses it if the ruleset changed since that generation.
    pub fn batch(&mut self, genid: Option<u32>) -> Batch {
        Batch::new(genid)
    }

    /// Sends the transaction, which the kernel applies whole or not at
    /// all. A failure is the first failing message's error, named after
    /// it, with the kernel's reason.
    pub fn commit(&mut self, batch: Batch) -> Result<(), NftError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (mut bytes, labels) = batch.finish();
        let end = labels.len() + 1;
        // BATCH_BEGIN and BATCH_END around the messages; a batch refused
        // as a whole (a stale generation, a failed commit) gets one error,
        // on BATCH_BEGIN.
        let kinds = vec![Answer::ErrorOnly; end + 1];
        let ex = self
            .sock
            .exchange(&mut bytes, &kinds)
            .map_err(|e| NftError::from_netlink("transaction", e))?;
        let failed = ex
            .outcomes
            .iter()
            .enumerate()
            .find_map(|(i, o)| match &o.result {
                Some(Err(e)) => Some((i, e)),
                _ => None,
            });
        if let Some((i, e)) = failed {
            let what = match i.checked_sub(1).and_then(|m| labels.get(m)) {
                Some(label) => label.clone(),
                None => "transaction".into(),
            };
            return Err(NftError::Kernel {
                what,
                errno: e.errno,
                extack: e.message.clone(),
            });
        }
        let committed = ex
            .outcomes
            .get(end)
            .is_some_and(|o| matches!(o.result, Some(Ok(()))));
        // Answers were dropped, yet none that came is an error: only the
        // commit's ACK can tell, and it is not there.
        if ex.overrun && !committed {
            return Err(NftError::Overrun {
                what: "transaction".into(),
            });
        }
        Ok(())
    }

    /// Sends one request and collects the bodies of its answers: a dump's
    /// parts, or a GET's reply.
    fn request(
        &mut self,
        msg: u8,
        flags: u16,
        family: u8,
        what: &str,
        fill: impl FnOnce(&mut Writer),
    ) -> Result<Vec<Vec<u8>>, NftError> {
        let mut w = Writer::default();
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg);
        let s = w.begin(ty, NLM_F_REQUEST | flags, 0, family, 0);
        fill(&mut w);
        w.end(s);
        let bytes = w.bytes().to_vec();
        let replies = if flags & NLM_F_DUMP != 0 {
            self.sock.dump(bytes)
        } else {
            self.sock.request(bytes)
        }
        .map_err(|e| NftError::from_netlink(what, e))?;
        Ok(replies.iter().map(|r| wire::body(r).to_vec()).collect())
    }

    /// The ruleset's generation, for [`Nft::batch`].
    pub fn generation(&mut self) -> Result<u32, NftError> {
        let bodies = self.request(NFT_MSG_GETGEN, 0, NFPROTO_UNSPEC, "get generation", |_| {})?;
        bodies
            .iter()
            .flat_map(|b| attrs(b))
            .find(|(t, _)| *t == NFTA_GEN_ID)
            .and_then(|(_, d)| wire::be32(d))
            .ok_or_else(|| NftError::Decode("generation without an id".into()))
    }

    /// Whether the table exists (an empty one too).
    pub fn has_table(&mut self, t: Table<'_>) -> Result<bool, NftError> {
        let what = format!("get {t}");
        match self.request(NFT_MSG_GETTABLE, 0, t.family.proto(), &what, |w| {
            w.put_str(NFTA_TABLE_NAME, t.name)
        }) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The names of the table's chains; none if the table does not exist.
    pub fn chains(&mut self, t: Table<'_>) -> Result<Vec<String>, NftError> {
        Ok(self.chain_list(t)?.into_iter().map(|c| c.name).collect())
    }

    /// The table's chains with how they hook in; none if the table does
    /// not exist.
    pub fn chain_list(&mut self, t: Table<'_>) -> Result<Vec<Chain>, NftError> {
        let what = format!("list chains of {t}");
        let bodies =
            match self.request(NFT_MSG_GETCHAIN, NLM_F_DUMP, t.family.proto(), &what, |w| {
                w.put_str(NFTA_CHAIN_TABLE, t.name)
            }) {
                Err(e) if e.is_not_found() => return Ok(Vec::new()),
                other => other?,
            };
        Ok(bodies
            .iter()
            .filter_map(|b| {
                let mut table = None;
                let mut chain = Chain {
                    name: String::new(),
                    kind: None,
                    hook: None,
                    priority: None,
                    policy: None,
                };
                for (ty, d) in attrs(b) {
                    match ty {
                        NFTA_CHAIN_TABLE => table = Some(wire::string(d)),
                        NFTA_CHAIN_NAME => chain.name = wire::string(d),
                        NFTA_CHAIN_TYPE => chain.kind = Some(wire::string(d)),
                        NFTA_CHAIN_POLICY => chain.policy = wire::be32(d),
                        NFTA_CHAIN_HOOK => {
                            for (ty, d) in attrs(d) {
                                match ty {
                                    NFTA_HOOK_HOOKNUM => chain.hook = wire::be32(d),
                                    NFTA_HOOK_PRIORITY => {
                                        chain.priority = wire::be32(d).map(|p| p as i32)
                                    }
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                (table.as_deref() == Some(t.name) && !chain.name.is_empty()).then_some(chain)
            })
            .collect())
    }

    /// The table's rules (of one chain, or of all); none if the table or
    /// chain does not exist.
    pub fn rules(&mut self, t: Table<'_>, chain: Option<&str>) -> Result<Vec<Rule>, NftError> {
        let what = format!("list rules of {t}");
        let bodies = match self.request(NFT_MSG_GETRULE, NLM_F_DUMP, t.family.proto(), &what, |w| {
            w.put_str(NFTA_RULE_TABLE, t.name);
            if let Some(c) = chain {
                w.put_str(NFTA_RULE_CHAIN, c);
            }
        }) {
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            other => other?,
        };
        let mut out = Vec::new();
        for body in &bodies {
            let mut table = None;
            let mut handle = None;
            let mut rule = Rule {
                chain: String::new(),
                handle: 0,
                comment: None,
                exprs: Vec::new(),
            };
            for (ty, d) in attrs(body) {
                match ty {
                    NFTA_RULE_TABLE => table = Some(wire::string(d)),
                    NFTA_RULE_CHAIN => rule.chain = wire::string(d),
                    NFTA_RULE_HANDLE => handle = d.try_into().ok().map(u64::from_be_bytes),
                    NFTA_RULE_EXPRESSIONS => rule.exprs = Expr::list(d),
                    NFTA_RULE_USERDATA => rule.comment = parse_udata_comment(d),
                    _ => {}
                }
            }
            // The kernel filters already; be sure anyway.
            if let Some(h) = handle
                && table.as_deref() == Some(t.name)
                && chain.is_none_or(|c| c == rule.chain)
            {
                rule.handle = h;
                out.push(rule);
            }
        }
        Ok(out)
    }
}
