//! Rule expressions: written with [`Exprs`], read back from a dump as
//! [`Expr`] (and, for header matches, [`HeaderMatch`]).

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
        let len = self.value.len().max(other.value.len());
        let bits = |m: &HeaderMatch| {
            let mut mask = m.mask.clone().unwrap_or_else(|| vec![0xff; m.value.len()]);
            mask.resize(len, 0);
            let mut value = m.value.clone();
            value.resize(len, 0);
            let value: Vec<u8> = value.iter().zip(&mask).map(|(v, k)| v & k).collect();
            (mask, value)
        };
        self.offset == other.offset && self.negate == other.negate && bits(self) == bits(other)
    }
}

/// Where a rule sends the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Return,
    Goto(String),
    /// Any other code (`NF_ACCEPT`, `NFT_JUMP`, ...) with its chain.
    Other(i32, Option<String>),
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
            self.expr("bitwise", |w| {
                w.put_be32(NFTA_BITWISE_SREG, NFT_REG_1);
                w.put_be32(NFTA_BITWISE_DREG, NFT_REG_1);
                w.put_be32(NFTA_BITWISE_LEN, len);
                w.nest(NFTA_BITWISE_MASK, |w| w.put(NFTA_DATA_VALUE, mask));
                w.nest(NFTA_BITWISE_XOR, |w| {
                    w.put(NFTA_DATA_VALUE, &vec![0; mask.len()]);
                });
            });
        }
        self.cmp(if m.negate { NFT_CMP_NEQ } else { NFT_CMP_EQ }, &m.value)
    }

    pub fn verdict(&mut self, v: &Verdict) -> &mut Self {
        let (code, chain) = match v {
            Verdict::Return => (NFT_RETURN, None),
            Verdict::Goto(c) => (NFT_GOTO, Some(c.as_str())),
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
            (NFT_RETURN, None) => Verdict::Return,
            (NFT_GOTO, Some(c)) => Verdict::Goto(c),
            (code, chain) => Verdict::Other(code, chain),
        })
    }

    /// The network-header matches of a rule: each `payload` load of the
    /// network header, through an optional `bitwise` mask, into a `cmp`.
    pub fn header_matches(exprs: &[Expr]) -> Vec<HeaderMatch> {
        let mut out = Vec::new();
        let mut loaded: Option<(u32, Option<Vec<u8>>)> = None;
        for e in exprs {
            match e.name.as_str() {
                "payload" => {
                    let base = e.attr(NFTA_PAYLOAD_BASE).and_then(be32);
                    let offset = e.attr(NFTA_PAYLOAD_OFFSET).and_then(be32);
                    loaded = match (base, offset) {
                        (Some(NFT_PAYLOAD_NETWORK_HEADER), Some(off)) => Some((off, None)),
                        _ => None,
                    };
                }
                "bitwise" => {
                    if let Some((_, mask)) = &mut loaded {
                        *mask = e.data_value(NFTA_BITWISE_MASK);
                    }
                }
                "cmp" => {
                    let op = e.attr(NFTA_CMP_OP).and_then(be32);
                    let value = e.data_value(NFTA_CMP_DATA);
                    if let (Some((offset, mask)), Some(op), Some(value)) =
                        (loaded.take(), op, value)
                        && (op == NFT_CMP_EQ || op == NFT_CMP_NEQ)
                    {
                        out.push(HeaderMatch {
                            offset,
                            mask,
                            negate: op == NFT_CMP_NEQ,
                            value,
                        });
                    }
                }
                _ => loaded = None,
            }
        }
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
}
