//! The NETLINK_NETFILTER socket: transactions, the ruleset generation,
//! and dumps of chains and rules.

use std::collections::HashMap;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nix::libc;

use super::batch::{BaseChain, Batch, parse_udata_comment};
use super::expr::Expr;
use super::sys::*;
use super::wire::{self, Writer, attrs, replies};
use super::{NftError, Table};

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
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Nft {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Nft, NftError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NftError::Socket)?;
        socket.bind_auto().map_err(NftError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NftError::Socket)?;
        // The kernel's reason along with the errno, and short error
        // messages; old kernels without them only lose the reason.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Nft {
            socket,
            seq: 1,
            buf: vec![0; 64 * 1024],
        })
    }

    /// An empty transaction; with `genid` (see [`Nft::generation`]) the
    /// kernel refuses it if the ruleset changed since that generation.
    pub fn batch(&mut self, genid: Option<u32>) -> Batch {
        let b = Batch::new(self.seq, genid);
        self.seq = self.seq.wrapping_add(1 << 16);
        b
    }

    fn send(&self, buf: &[u8]) -> Result<(), NftError> {
        let n = self.socket.send(buf, 0).map_err(NftError::Socket)?;
        if n != buf.len() {
            return Err(NftError::Decode(format!("sent {n} of {} bytes", buf.len())));
        }
        Ok(())
    }

    /// One datagram; `None` when `wait` is false and nothing is queued.
    fn recv(&mut self, wait: bool) -> Result<Option<usize>, NftError> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        match self.socket.recv(&mut &mut self.buf[..], flags) {
            Ok(n) if n > self.buf.len() => Err(NftError::Decode(format!(
                "a {n}-byte message does not fit the buffer"
            ))),
            Ok(n) => Ok(Some(n)),
            Err(e) if !wait && e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(NftError::Socket(e)),
        }
    }

    /// Sends the transaction and reads one ACK per message; any error
    /// means nothing was applied. The first error is returned, named
    /// after its message.
    pub fn commit(&mut self, batch: Batch) -> Result<(), NftError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (bytes, labels) = batch.finish();
        let mut pending: HashMap<u32, String> = labels.into_iter().collect();
        self.send(&bytes)?;
        // The kernel runs the whole batch inside sendmsg(), so every answer
        // is queued by now; the first read waits only to be safe. A batch
        // refused as a whole (a stale generation) gets one error for
        // BATCH_BEGIN and nothing else.
        let mut first_err = None;
        let mut wait = true;
        while !pending.is_empty() {
            let Some(n) = self.recv(wait)? else { break };
            wait = false;
            for r in replies(&self.buf[..n])? {
                if r.ty != NLMSG_ERROR {
                    continue;
                }
                let what = pending.remove(&r.seq);
                let (errno, extack) = wire::error(&r);
                if errno != 0 && first_err.is_none() {
                    first_err = Some(NftError::Kernel {
                        what: what.unwrap_or_else(|| "transaction".into()),
                        errno,
                        extack,
                    });
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None if pending.is_empty() => Ok(()),
            None => Err(NftError::Decode(format!(
                "{} acknowledgements missing",
                pending.len()
            ))),
        }
    }

    /// Sends one request and collects the bodies of its answers until the
    /// dump ends (or, without a dump, the first answer).
    fn request(
        &mut self,
        msg: u8,
        flags: u16,
        family: u8,
        what: &str,
        fill: impl FnOnce(&mut Writer),
    ) -> Result<Vec<Vec<u8>>, NftError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut w = Writer::default();
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg);
        let s = w.begin(ty, NLM_F_REQUEST | flags, seq, family, 0);
        fill(&mut w);
        w.end(s);
        self.send(w.bytes())?;
        let dump = flags & NLM_F_DUMP != 0;
        let kernel = |errno, extack| NftError::Kernel {
            what: what.to_string(),
            errno,
            extack,
        };
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let Some(n) = self.recv(true)? else { continue };
            for r in replies(&self.buf[..n])? {
                if r.seq != seq {
                    continue;
                }
                interrupted |= r.flags & NLM_F_DUMP_INTR != 0;
                match r.ty {
                    NLMSG_DONE if interrupted => return Err(kernel(libc::EINTR, None)),
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let (errno, extack) = wire::error(&r);
                        return Err(kernel(errno, extack));
                    }
                    _ if dump => out.push(r.body.to_vec()),
                    _ => return Ok(vec![r.body.to_vec()]),
                }
            }
        }
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
