//! Rule expressions: written with [`Exprs`], read back from a dump as
//! [`Expr`], and understood as [`Step`]s (a [`HeaderMatch`], a
//! [`MetaMatch`], a verdict, a masquerade), which is how a dumped rule is
//! compared with the one we would write ([`Exprs::same_rule`]).

use std::net::IpAddr;

use super::sys::*;
use super::wire::{self, Writer, attrs, be32};

/// A comparison of bytes of the network header, as in `ip saddr 10.0.0.5`
/// or `ip6 daddr != fd00::/64`: a payload load, an optional mask, a `cmp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub offset: u32,
    /// `None` when all bits of the field count.
    pub mask: Option<Vec<u8>>,
    /// `true` for `!=`.
    pub negate: bool,
    /// Already masked.
    pub value: Vec<u8>,
}

impl HeaderMatch {
    /// `ip[6] saddr|daddr [!=] addr/prefix` (`prefix` clamped to the
    /// family's length; host bits are dropped).
    pub fn address(source: bool, addr: IpAddr, prefix: u8, negate: bool) -> HeaderMatch {
        let (offset, bytes) = match addr {
            IpAddr::V4(a) => (if source { 12 } else { 16 }, a.octets().to_vec()),
            IpAddr::V6(a) => (if source { 8 } else { 24 }, a.octets().to_vec()),
        };
        let bits = usize::from(prefix).min(bytes.len() * 8);
        let mask: Vec<u8> = (0..bytes.len())
            .map(|i| {
                let n = bits.saturating_sub(8 * i).min(8);
                if n == 0 { 0 } else { 0xff << (8 - n) }
            })
            .collect();
        let value = bytes.iter().zip(&mask).map(|(b, m)| b & m).collect();
        HeaderMatch {
            offset,
            mask: (bits < bytes.len() * 8).then_some(mask),
            negate,
            value,
        }
    }

    /// Whether both test the same bits for the same values. nft writes a
    /// byte-aligned prefix as a shorter load without a mask (`ip daddr
    /// 10.0.0.0/16` loads 2 bytes), which is the same test as ours.
    pub fn same_test(&self, other: &HeaderMatch) -> bool {
        self.offset == other.offset
            && self.negate == other.negate
            && same_bits(
                (self.mask.as_deref(), &self.value),
                (other.mask.as_deref(), &other.value),
            )
    }
}

/// Whether two (mask, value) pairs test the same bits for the same values;
/// no mask means every bit of the value, and a shorter value is padded
/// with bits that are not tested.
fn same_bits(a: (Option<&[u8]>, &[u8]), b: (Option<&[u8]>, &[u8])) -> bool {
    let len = a.1.len().max(b.1.len());
    let bits = |(mask, value): (Option<&[u8]>, &[u8])| {
        let mut mask = mask.map_or_else(|| vec![0xff; value.len()], <[u8]>::to_vec);
        mask.resize(len, 0);
        let mut value = value.to_vec();
        value.resize(len, 0);
        let value: Vec<u8> = value.iter().zip(&mask).map(|(v, k)| v & k).collect();
        (mask, value)
    };
    bits(a) == bits(b)
}

/// A comparison of bytes of the link-layer header, as in `ether saddr
/// 02:42:ac:11:00:02`: a payload load of the whole field and a `cmp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMatch {
    pub offset: u32,
    /// `true` for `!=`.
    pub negate: bool,
    pub value: Vec<u8>,
}

impl LinkMatch {
    /// `ether saddr <mac>`.
    pub fn ether_saddr(mac: [u8; 6]) -> LinkMatch {
        LinkMatch {
            offset: 6,
            negate: false,
            value: mac.to_vec(),
        }
    }
}

/// A comparison of packet metadata, as in `meta mark & 0x4000 == 0x4000`:
/// a `meta` load, an optional mask, a `cmp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaMatch {
    /// `NFT_META_*`.
    pub key: u32,
    /// `None` when all bits count.
    pub mask: Option<Vec<u8>>,
    /// `true` for `!=`.
    pub negate: bool,
    /// Already masked.
    pub value: Vec<u8>,
}

impl MetaMatch {
    /// `meta mark & mask == value` (`meta mark value` with a full mask).
    /// The mark is in host byte order, as nft keeps it.
    pub fn mark(mask: u32, value: u32) -> MetaMatch {
        MetaMatch {
            key: NFT_META_MARK,
            mask: (mask != u32::MAX).then(|| mask.to_ne_bytes().to_vec()),
            negate: false,
            value: (value & mask).to_ne_bytes().to_vec(),
        }
    }

    /// `iifname "<name>"`: the input interface's name, compared on all
    /// `IFNAMSIZ` bytes as nft does for a name without a wildcard.
    pub fn iifname(name: &str) -> MetaMatch {
        let mut value = name.as_bytes().to_vec();
        value.resize(IFNAMSIZ.max(value.len()), 0);
        MetaMatch {
            key: NFT_META_IIFNAME,
            mask: None,
            negate: false,
            value,
        }
    }

    /// Whether both test the same bits of the same key for the same values.
    pub fn same_test(&self, other: &MetaMatch) -> bool {
        self.key == other.key
            && self.negate == other.negate
            && same_bits(
                (self.mask.as_deref(), &self.value),
                (other.mask.as_deref(), &other.value),
            )
    }
}

/// Where a rule sends the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Goto(String),
    Jump(String),
    /// Any other code (`NFT_JUMP`, `NFT_CONTINUE`, ...) with its chain.
    Other(i32, Option<String>),
}

/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY` (<linux/netfilter/nf_nat.h>): the
/// source port is chosen at random for each new connection.
pub const NAT_FULLY_RANDOM: u32 = 1 << 4;

/// One step of a rule, as far as this module understands rules: a match,
/// or what is done with the packet. Anything else is kept by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Header(HeaderMatch),
    Link(LinkMatch),
    Meta(MetaMatch),
    Verdict(Verdict),
    /// `masquerade` with its `NF_NAT_RANGE_*` flags (e.g. [`NAT_FULLY_RANDOM`]).
    Masquerade {
        flags: u32,
    },
    /// An expression (or a load without its compare) not understood here.
    Other(String),
}

impl Step {
    /// The same test or action; matches compare the bits they test, so
    /// nft's shorter loads equal our masked ones.
    pub fn same(&self, other: &Step) -> bool {
        match (self, other) {
            (Step::Header(a), Step::Header(b)) => a.same_test(b),
            (Step::Meta(a), Step::Meta(b)) => a.same_test(b),
            (a, b) => a == b,
        }
    }
}

/// A rule's expressions being written (the body of NFTA_RULE_EXPRESSIONS).
#[derive(Debug, Default)]
pub struct Exprs {
    w: Writer,
}

impl Exprs {
    pub fn new() -> Exprs {
        Exprs::default()
    }

    pub(super) fn writer(&self) -> &Writer {
        &self.w
    }

    fn expr(&mut self, name: &str, f: impl FnOnce(&mut Writer)) -> &mut Self {
        self.w.nest(NFTA_LIST_ELEM, |w| {
            w.put_str(NFTA_EXPR_NAME, name);
            w.nest(NFTA_EXPR_DATA, f);
        });
        self
    }

    /// The rule this writes and a dumped one do the same thing, step by step.
    pub fn same_rule(&self, dumped: &[Expr]) -> bool {
        let ours = Expr::steps(&Expr::list(self.w.bytes()));
        let theirs = Expr::steps(dumped);
        ours.len() == theirs.len() && ours.iter().zip(&theirs).all(|(a, b)| a.same(b))
    }

    /// `reg1 &= mask` (xor 0), as nft writes a prefix or a bit test.
    fn mask(&mut self, mask: &[u8]) -> &mut Self {
        let len = u32::try_from(mask.len()).unwrap_or(u32::MAX);
        self.expr("bitwise", |w| {
            w.put_be32(NFTA_BITWISE_SREG, NFT_REG_1);
            w.put_be32(NFTA_BITWISE_DREG, NFT_REG_1);
            w.put_be32(NFTA_BITWISE_LEN, len);
            w.nest(NFTA_BITWISE_MASK, |w| w.put(NFTA_DATA_VALUE, mask));
            w.nest(NFTA_BITWISE_XOR, |w| {
                w.put(NFTA_DATA_VALUE, &vec![0; mask.len()]);
            });
        })
    }

    fn cmp(&mut self, op: u32, value: &[u8]) -> &mut Self {
        self.expr("cmp", |w| {
            w.put_be32(NFTA_CMP_SREG, NFT_REG_1);
            w.put_be32(NFTA_CMP_OP, op);
            w.nest(NFTA_CMP_DATA, |w| w.put(NFTA_DATA_VALUE, value));
        })
    }

    /// `meta nfproto ipv4|ipv6`: in an `inet` table, the guard that must
    /// come before matching IP header fields.
    pub fn nfproto(&mut self, ipv6: bool) -> &mut Self {
        self.expr("meta", |w| {
            w.put_be32(NFTA_META_DREG, NFT_REG_1);
            w.put_be32(NFTA_META_KEY, NFT_META_NFPROTO);
        });
        let proto = if ipv6 {
            nix::libc::NFPROTO_IPV6
        } else {
            nix::libc::NFPROTO_IPV4
        };
        self.cmp(NFT_CMP_EQ, &[proto as u8])
    }

    pub fn header(&mut self, m: &HeaderMatch) -> &mut Self {
        let len = u32::try_from(m.value.len()).unwrap_or(u32::MAX);
        self.expr("payload", |w| {
            w.put_be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
            w.put_be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
            w.put_be32(NFTA_PAYLOAD_OFFSET, m.offset);
            w.put_be32(NFTA_PAYLOAD_LEN, len);
        });
        if let Some(mask) = &m.mask {
            self.mask(mask);
        }
        self.cmp(if m.negate { NFT_CMP_NEQ } else { NFT_CMP_EQ }, &m.value)
    }

    /// A [`LinkMatch`], e.g. `ether saddr 02:42:ac:11:00:02`.
    pub fn link(&mut self, m: &LinkMatch) -> &mut Self {
        let len = u32::try_from(m.value.len()).unwrap_or(u32::MAX);
        self.expr("payload", |w| {
            w.put_be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
            w.put_be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_LL_HEADER);
            w.put_be32(NFTA_PAYLOAD_OFFSET, m.offset);
            w.put_be32(NFTA_PAYLOAD_LEN, len);
        });
        self.cmp(if m.negate { NFT_CMP_NEQ } else { NFT_CMP_EQ }, &m.value)
    }

    /// A [`MetaMatch`], e.g. `meta mark & 0x4000 == 0x4000`.
    pub fn meta(&mut self, m: &MetaMatch) -> &mut Self {
        self.expr("meta", |w| {
            w.put_be32(NFTA_META_DREG, NFT_REG_1);
            w.put_be32(NFTA_META_KEY, m.key);
        });
        if let Some(mask) = &m.mask {
            self.mask(mask);
        }
        self.cmp(if m.negate { NFT_CMP_NEQ } else { NFT_CMP_EQ }, &m.value)
    }

    pub fn verdict(&mut self, v: &Verdict) -> &mut Self {
        let (code, chain) = match v {
            Verdict::Accept => (NF_ACCEPT_CODE, None),
            Verdict::Drop => (NF_DROP_CODE, None),
            Verdict::Return => (NFT_RETURN, None),
            Verdict::Goto(c) => (NFT_GOTO, Some(c.as_str())),
            Verdict::Jump(c) => (NFT_JUMP, Some(c.as_str())),
            Verdict::Other(code, c) => (*code, c.as_deref()),
        };
        self.expr("immediate", |w| {
            w.put_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            w.nest(NFTA_IMMEDIATE_DATA, |w| {
                w.nest(NFTA_DATA_VERDICT, |w| {
                    w.put(NFTA_VERDICT_CODE, &code.to_be_bytes());
                    if let Some(c) = chain {
                        w.put_str(NFTA_VERDICT_CHAIN, c);
                    }
                });
            });
        })
    }

    /// `masquerade`: source NAT to the outgoing interface's address.
    pub fn masquerade(&mut self) -> &mut Self {
        self.w
            .nest(NFTA_LIST_ELEM, |w| w.put_str(NFTA_EXPR_NAME, "masq"));
        self
    }

    /// `masquerade fully-random`: as [`Exprs::masquerade`], with a random
    /// source port for each new connection.
    pub fn masquerade_fully_random(&mut self) -> &mut Self {
        self.expr("masq", |w| w.put_be32(NFTA_MASQ_FLAGS, NAT_FULLY_RANDOM))
    }
}

/// One expression of a dumped rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    pub name: String,
    /// The NFTA_EXPR_DATA attributes.
    data: Vec<u8>,
}

impl Expr {
    /// The expressions in an NFTA_RULE_EXPRESSIONS body.
    pub(super) fn list(body: &[u8]) -> Vec<Expr> {
        attrs(body)
            .filter(|(t, _)| *t == NFTA_LIST_ELEM)
            .map(|(_, elem)| {
                let mut e = Expr {
                    name: String::new(),
                    data: Vec::new(),
                };
                for (t, d) in attrs(elem) {
                    match t {
                        NFTA_EXPR_NAME => e.name = wire::string(d),
                        NFTA_EXPR_DATA => e.data = d.to_vec(),
                        _ => {}
                    }
                }
                e
            })
            .collect()
    }

    fn attr(&self, ty: u16) -> Option<&[u8]> {
        attrs(&self.data).find(|(t, _)| *t == ty).map(|(_, d)| d)
    }

    /// The value inside a nested NFTA_DATA_VALUE attribute.
    fn data_value(&self, ty: u16) -> Option<Vec<u8>> {
        let nested = self.attr(ty)?;
        attrs(nested)
            .find(|(t, _)| *t == NFTA_DATA_VALUE)
            .map(|(_, d)| d.to_vec())
    }

    /// An `immediate` expression's verdict.
    pub fn verdict(&self) -> Option<Verdict> {
        if self.name != "immediate" {
            return None;
        }
        let data = self.attr(NFTA_IMMEDIATE_DATA)?;
        let (_, v) = attrs(data).find(|(t, _)| *t == NFTA_DATA_VERDICT)?;
        let mut code = None;
        let mut chain = None;
        for (t, d) in attrs(v) {
            match t {
                NFTA_VERDICT_CODE => code = be32(d).map(|c| c as i32),
                NFTA_VERDICT_CHAIN => chain = Some(wire::string(d)),
                _ => {}
            }
        }
        Some(match (code?, chain) {
            (NF_ACCEPT_CODE, None) => Verdict::Accept,
            (NF_DROP_CODE, None) => Verdict::Drop,
            (NFT_RETURN, None) => Verdict::Return,
            (NFT_GOTO, Some(c)) => Verdict::Goto(c),
            (NFT_JUMP, Some(c)) => Verdict::Jump(c),
            (code, chain) => Verdict::Other(code, chain),
        })
    }

    /// The network-header matches of a rule: each `payload` load of the
    /// network header, through an optional `bitwise` mask, into a `cmp`.
    pub fn header_matches(exprs: &[Expr]) -> Vec<HeaderMatch> {
        Expr::steps(exprs)
            .into_iter()
            .filter_map(|s| match s {
                Step::Header(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// A `bitwise` that only masks (boolean, xor 0): its mask.
    fn plain_mask(&self) -> Option<Vec<u8>> {
        let op = self.attr(NFTA_BITWISE_OP).and_then(be32);
        let xor = self.data_value(NFTA_BITWISE_XOR);
        let plain = op.is_none_or(|o| o == NFT_BITWISE_BOOL)
            && xor.is_none_or(|x| x.iter().all(|b| *b == 0));
        plain.then(|| self.data_value(NFTA_BITWISE_MASK)).flatten()
    }

    /// A rule's expressions as [`Step`]s: a load (network header payload,
    /// or meta key), an optional mask and a `==`/`!=` compare make one
    /// match; an `immediate` verdict and `masq` their own steps; anything
    /// else, and a load not followed by its compare, [`Step::Other`].
    pub fn steps(exprs: &[Expr]) -> Vec<Step> {
        enum Load {
            Header(u32),
            Link(u32),
            Meta(u32),
            Unknown,
        }
        struct Pending<'a> {
            load: Load,
            name: &'a str,
            mask: Option<Vec<u8>>,
        }
        fn flush(p: &mut Option<Pending<'_>>, out: &mut Vec<Step>) {
            if let Some(p) = p.take() {
                out.push(Step::Other(p.name.to_string()));
            }
        }
        let mut out = Vec::new();
        let mut pending: Option<Pending<'_>> = None;
        for e in exprs {
            let name = e.name.as_str();
            match name {
                "payload" => {
                    flush(&mut pending, &mut out);
                    let base = e.attr(NFTA_PAYLOAD_BASE).and_then(be32);
                    let offset = e.attr(NFTA_PAYLOAD_OFFSET).and_then(be32);
                    let load = match (base, offset, e.attr(NFTA_PAYLOAD_DREG)) {
                        (Some(NFT_PAYLOAD_NETWORK_HEADER), Some(off), Some(_)) => Load::Header(off),
                        (Some(NFT_PAYLOAD_LL_HEADER), Some(off), Some(_)) => Load::Link(off),
                        _ => Load::Unknown,
                    };
                    pending = Some(Pending {
                        load,
                        name,
                        mask: None,
                    });
                }
                "meta" => {
                    flush(&mut pending, &mut out);
                    let key = e.attr(NFTA_META_KEY).and_then(be32);
                    match (key, e.attr(NFTA_META_DREG)) {
                        (Some(key), Some(_)) => {
                            pending = Some(Pending {
                                load: Load::Meta(key),
                                name,
                                mask: None,
                            })
                        }
                        // `meta ... set`: not a match.
                        _ => out.push(Step::Other(name.to_string())),
                    }
                }
                "bitwise" => match (&mut pending, e.plain_mask()) {
                    (Some(p), Some(mask)) if p.mask.is_none() => p.mask = Some(mask),
                    _ => {
                        flush(&mut pending, &mut out);
                        out.push(Step::Other(name.to_string()));
                    }
                },
                "cmp" => {
                    let op = e.attr(NFTA_CMP_OP).and_then(be32);
                    let value = e.data_value(NFTA_CMP_DATA);
                    match (pending.take(), op, value) {
                        (Some(p), Some(op), Some(value))
                            if op == NFT_CMP_EQ || op == NFT_CMP_NEQ =>
                        {
                            let negate = op == NFT_CMP_NEQ;
                            let mask = p.mask;
                            out.push(match p.load {
                                Load::Header(offset) => Step::Header(HeaderMatch {
                                    offset,
                                    mask,
                                    negate,
                                    value,
                                }),
                                Load::Link(offset) if mask.is_none() => Step::Link(LinkMatch {
                                    offset,
                                    negate,
                                    value,
                                }),
                                Load::Meta(key) => Step::Meta(MetaMatch {
                                    key,
                                    mask,
                                    negate,
                                    value,
                                }),
                                Load::Link(_) | Load::Unknown => Step::Other(p.name.to_string()),
                            });
                        }
                        (mut p, _, _) => {
                            flush(&mut p, &mut out);
                            out.push(Step::Other(name.to_string()));
                        }
                    }
                }
                "immediate" => {
                    flush(&mut pending, &mut out);
                    out.push(match e.verdict() {
                        Some(v) => Step::Verdict(v),
                        None => Step::Other(name.to_string()),
                    });
                }
                "masq" => {
                    flush(&mut pending, &mut out);
                    let ports = e.attr(NFTA_MASQ_REG_PROTO_MIN).is_some()
                        || e.attr(NFTA_MASQ_REG_PROTO_MAX).is_some();
                    let flags = e.attr(NFTA_MASQ_FLAGS).and_then(be32).unwrap_or(0);
                    out.push(if ports {
                        Step::Other(name.to_string())
                    } else {
                        Step::Masquerade { flags }
                    });
                }
                _ => {
                    flush(&mut pending, &mut out);
                    out.push(Step::Other(name.to_string()));
                }
            }
        }
        flush(&mut pending, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(e: &Exprs) -> Vec<Expr> {
        Expr::list(e.writer().bytes())
    }

    #[test]
    fn address_matches_mask_the_host_bits() {
        let m = HeaderMatch::address(false, "10.88.3.7".parse().unwrap(), 16, true);
        assert_eq!(m.offset, 16);
        assert_eq!(m.mask.as_deref(), Some(&[255, 255, 0, 0][..]));
        assert_eq!(m.value, [10, 88, 0, 0]);
        let m = HeaderMatch::address(true, "fd00::5".parse().unwrap(), 128, false);
        assert_eq!((m.offset, m.mask, m.value.len()), (8, None, 16));
        let m = HeaderMatch::address(true, "fd00:1:2::5".parse().unwrap(), 36, false);
        assert_eq!(m.mask.unwrap()[..6], [255, 255, 255, 255, 0xf0, 0]);
    }

    #[test]
    fn a_shorter_load_is_the_same_test_as_a_byte_aligned_mask() {
        let ours = HeaderMatch::address(false, "10.88.0.7".parse().unwrap(), 16, true);
        let nft = HeaderMatch {
            offset: 16,
            mask: None,
            negate: true,
            value: vec![10, 88],
        };
        assert!(ours.same_test(&nft) && nft.same_test(&ours));
        let other_net = HeaderMatch {
            value: vec![10, 89],
            ..nft.clone()
        };
        assert!(!ours.same_test(&other_net));
        let eq = HeaderMatch {
            negate: false,
            ..nft
        };
        assert!(!ours.same_test(&eq));
        let slash17 = HeaderMatch::address(false, "10.88.0.7".parse().unwrap(), 17, true);
        assert!(!ours.same_test(&slash17));
    }

    #[test]
    fn what_is_written_reads_back() {
        let saddr = HeaderMatch::address(true, "10.1.2.3".parse().unwrap(), 32, false);
        let daddr = HeaderMatch::address(false, "10.1.2.3".parse().unwrap(), 24, true);
        let mut e = Exprs::new();
        e.nfproto(false)
            .header(&saddr)
            .header(&daddr)
            .masquerade()
            .verdict(&Verdict::Goto("next".into()));
        let exprs = decoded(&e);
        let names: Vec<&str> = exprs.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "meta",
                "cmp",
                "payload",
                "cmp",
                "payload",
                "bitwise",
                "cmp",
                "masq",
                "immediate"
            ]
        );
        // The nfproto compare follows a meta load, not a payload: not a header match.
        assert_eq!(Expr::header_matches(&exprs), [saddr, daddr]);
        assert_eq!(exprs[8].verdict(), Some(Verdict::Goto("next".into())));
        assert_eq!(exprs[0].verdict(), None);
        let mut r = Exprs::new();
        r.verdict(&Verdict::Return);
        assert_eq!(decoded(&r)[0].verdict(), Some(Verdict::Return));
    }

    #[test]
    fn marks_masquerade_flags_and_verdicts_read_back_as_steps() {
        let net = "10.244.0.0".parse().unwrap();
        let mut e = Exprs::new();
        e.meta(&MetaMatch::mark(0x4000, 0x4000))
            .header(&HeaderMatch::address(true, net, 16, true))
            .masquerade_fully_random();
        let steps = Expr::steps(&decoded(&e));
        assert_eq!(
            steps,
            [
                Step::Meta(MetaMatch {
                    key: NFT_META_MARK,
                    mask: Some(0x4000u32.to_ne_bytes().to_vec()),
                    negate: false,
                    value: 0x4000u32.to_ne_bytes().to_vec(),
                }),
                Step::Header(HeaderMatch::address(true, net, 16, true)),
                Step::Masquerade {
                    flags: NAT_FULLY_RANDOM
                },
            ]
        );
        assert!(e.same_rule(&decoded(&e)));
        let mut plain = Exprs::new();
        plain.masquerade();
        assert_eq!(
            Expr::steps(&decoded(&plain)),
            [Step::Masquerade { flags: 0 }]
        );
        for v in [Verdict::Accept, Verdict::Drop, Verdict::Return] {
            let mut r = Exprs::new();
            r.verdict(&v);
            assert_eq!(Expr::steps(&decoded(&r)), [Step::Verdict(v)]);
        }
        // A full mask is no mask: `meta mark 0x1`.
        assert_eq!(MetaMatch::mark(u32::MAX, 1).mask, None);
    }

    #[test]
    fn same_rule_compares_every_step_in_order() {
        let pod = "10.244.1.0".parse().unwrap();
        let net = "10.244.0.0".parse().unwrap();
        let rule = |src_prefix: u8, accept: bool| {
            let mut e = Exprs::new();
            e.header(&HeaderMatch::address(true, pod, src_prefix, false))
                .header(&HeaderMatch::address(false, net, 16, false))
                .verdict(&if accept {
                    Verdict::Accept
                } else {
                    Verdict::Return
                });
            e
        };
        let ours = rule(24, false);
        assert!(ours.same_rule(&decoded(&rule(24, false))));
        assert!(
            !ours.same_rule(&decoded(&rule(25, false))),
            "another subnet"
        );
        assert!(
            !ours.same_rule(&decoded(&rule(24, true))),
            "another verdict"
        );
        // An extra step (a counter, a second verdict) makes another rule.
        let mut longer = rule(24, false);
        longer.verdict(&Verdict::Return);
        assert!(!ours.same_rule(&decoded(&longer)));
        // nft's shorter load for a byte-aligned prefix is the same test.
        let mut nft = Exprs::new();
        nft.header(&HeaderMatch {
            offset: 12,
            mask: None,
            negate: false,
            value: vec![10, 244, 1],
        })
        .header(&HeaderMatch {
            offset: 16,
            mask: None,
            negate: false,
            value: vec![10, 244],
        })
        .verdict(&Verdict::Return);
        assert!(ours.same_rule(&decoded(&nft)));
        // A load whose compare is missing is not a match.
        let steps = Expr::steps(&decoded(&nft)[..1]);
        assert_eq!(steps, [Step::Other("payload".into())]);
    }

    #[test]
    fn bridge_matches_and_jumps_read_back_as_steps() {
        let mac = [2, 0x42, 0xac, 0x11, 0, 2];
        let mut e = Exprs::new();
        e.meta(&MetaMatch::iifname("veth1234"))
            .link(&LinkMatch::ether_saddr(mac))
            .verdict(&Verdict::Jump("next".into()));
        let steps = Expr::steps(&decoded(&e));
        let mut name = b"veth1234".to_vec();
        name.resize(16, 0);
        assert_eq!(
            steps,
            [
                Step::Meta(MetaMatch {
                    key: NFT_META_IIFNAME,
                    mask: None,
                    negate: false,
                    value: name,
                }),
                Step::Link(LinkMatch {
                    offset: 6,
                    negate: false,
                    value: mac.to_vec(),
                }),
                Step::Verdict(Verdict::Jump("next".into())),
            ]
        );
        assert!(e.same_rule(&decoded(&e)));
        let mut other = Exprs::new();
        other
            .meta(&MetaMatch::iifname("veth1235"))
            .link(&LinkMatch::ether_saddr(mac))
            .verdict(&Verdict::Jump("next".into()));
        assert!(!e.same_rule(&decoded(&other)));
    }

    #[test]
    fn a_bitwise_that_does_more_than_mask_is_not_a_match() {
        let mut e = Exprs::new();
        e.expr("meta", |w| {
            w.put_be32(NFTA_META_DREG, NFT_REG_1);
            w.put_be32(NFTA_META_KEY, NFT_META_MARK);
        })
        .expr("bitwise", |w| {
            w.put_be32(NFTA_BITWISE_SREG, NFT_REG_1);
            w.put_be32(NFTA_BITWISE_DREG, NFT_REG_1);
            w.put_be32(NFTA_BITWISE_LEN, 4);
            w.nest(NFTA_BITWISE_MASK, |w| w.put(NFTA_DATA_VALUE, &[0xff; 4]));
            w.nest(NFTA_BITWISE_XOR, |w| w.put(NFTA_DATA_VALUE, &[1, 0, 0, 0]));
        })
        .cmp(NFT_CMP_EQ, &[1, 0, 0, 0]);
        let steps = Expr::steps(&decoded(&e));
        assert_eq!(
            steps,
            [
                Step::Other("meta".into()),
                Step::Other("bitwise".into()),
                Step::Other("cmp".into())
            ]
        );
    }
}
