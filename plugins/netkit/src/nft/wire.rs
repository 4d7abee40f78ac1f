//! Netlink framing for nfnetlink: message headers followed by `struct
//! nfgenmsg`, attributes (nested ones flagged), and reading them back.

use netlink_packet_core::{NLA_F_NESTED, NLA_TYPE_MASK, NLM_F_ACK_TLVS, NLM_F_CAPPED};

use super::NftError;

/// `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG_LEN: usize = 4;
/// `NLMSGERR_ATTR_MSG`: the extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Types below this are netlink's own (NOOP, ERROR, DONE, OVERRUN).
const NLMSG_MIN_TYPE: u16 = 0x10;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Netlink messages being written one after another.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// Starts a message; pass the returned offset to [`Writer::end`].
    pub fn begin(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by end()
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    pub fn end(&mut self, start: usize) {
        let len = u32::try_from(self.buf.len() - start).unwrap_or(u32::MAX);
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    pub fn put(&mut self, ty: u16, data: &[u8]) {
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// A NUL-terminated string, as the kernel's NLA_STRING policy wants.
    pub fn put_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(ty, &v);
    }

    pub fn put_be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    pub fn put_be64(&mut self, ty: u16, v: u64) {
        self.put(ty, &v.to_be_bytes());
    }

    /// A nested attribute whose body `f` writes.
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// Appends what another writer holds (whole attributes).
    pub fn append(&mut self, other: &Writer) {
        self.buf.extend_from_slice(&other.buf);
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// The attributes in `buf` as (type without flags, payload); stops at the
/// first malformed one.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        let head = buf.get(off..off + 4)?;
        let len = usize::from(u16::from_ne_bytes([head[0], head[1]]));
        let ty = u16::from_ne_bytes([head[2], head[3]]) & NLA_TYPE_MASK;
        if len < 4 {
            return None;
        }
        let data = buf.get(off + 4..off + len)?;
        off += align4(len);
        Some((ty, data))
    })
}

pub fn be32(d: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(d.try_into().ok()?))
}

/// A string attribute without its NUL.
pub fn string(d: &[u8]) -> String {
    String::from_utf8_lossy(d.strip_suffix(&[0]).unwrap_or(d)).into_owned()
}

/// One message the kernel sent.
#[derive(Debug)]
pub struct Reply<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// After the netlink header (and, for nf_tables messages, after
    /// `struct nfgenmsg`).
    pub body: &'a [u8],
}

/// Splits a received datagram into its messages.
pub fn replies(buf: &[u8]) -> Result<Vec<Reply<'_>>, NftError> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let m = &buf[off..];
        let field = |i: usize| [m[i], m[i + 1]];
        let len = u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize;
        if len < NLMSG_HDRLEN || len > m.len() {
            return Err(NftError::Decode(format!("bad message length {len}")));
        }
        let ty = u16::from_ne_bytes(field(4));
        let skip = if ty >= NLMSG_MIN_TYPE {
            NLMSG_HDRLEN + NFGENMSG_LEN
        } else {
            NLMSG_HDRLEN
        };
        out.push(Reply {
            ty,
            flags: u16::from_ne_bytes(field(6)),
            seq: u32::from_ne_bytes([m[8], m[9], m[10], m[11]]),
            body: m.get(skip.min(len)..len).unwrap_or_default(),
        });
        off += align4(len);
    }
    Ok(out)
}

/// An `NLMSG_ERROR` body: the positive errno (0 for an ACK) and the
/// extended ack's message.
pub fn error(r: &Reply<'_>) -> (i32, Option<String>) {
    let b = r.body;
    let Some(code) = b.get(..4) else {
        return (nix::libc::EPROTO, None);
    };
    let errno = -i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
    let mut extack = None;
    if r.flags & NLM_F_ACK_TLVS != 0 && b.len() >= 4 + NLMSG_HDRLEN {
        // The request's header follows, with its payload unless capped.
        let request_len = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]) as usize;
        let skip = if r.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            align4(request_len)
        };
        if let Some(tlvs) = b.get(4 + skip..) {
            extack = attrs(tlvs)
                .find(|(t, _)| *t == NLMSGERR_ATTR_MSG)
                .map(|(_, d)| string(d));
        }
    }
    (errno, extack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_round_trip() {
        let mut w = Writer::default();
        w.put_str(1, "abc");
        w.nest(2, |w| {
            w.put_be32(7, 0x0102_0304);
            w.put(8, &[9]);
        });
        let top: Vec<_> = attrs(w.bytes()).collect();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0], (1, &b"abc\0"[..]));
        assert_eq!(top[1].0, 2, "the nested flag is masked off");
        let inner: Vec<_> = attrs(top[1].1).collect();
        assert_eq!(inner, [(7, &[1u8, 2, 3, 4][..]), (8, &[9u8][..])]);
        assert_eq!(be32(inner[0].1), Some(0x0102_0304));
        assert_eq!(string(top[0].1), "abc");
    }

    #[test]
    fn truncated_attributes_end_the_walk() {
        assert_eq!(attrs(&[8, 0, 1, 0, 1, 2]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
    }

    #[test]
    fn messages_are_split_and_errors_read() {
        let mut w = Writer::default();
        let s = w.begin(0x0a06, 0, 7, 1, 0);
        w.put_str(1, "t");
        w.end(s);
        let mut buf = w.bytes().to_vec();
        // An NLMSG_ERROR for seq 8 with EEXIST and an extack message.
        let mut err = Vec::new();
        err.extend_from_slice(&(-nix::libc::EEXIST).to_ne_bytes());
        err.extend_from_slice(&[16, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0]);
        err.extend_from_slice(&[7, 0, 1, 0, b'n', b'o', 0, 0]);
        let len = (NLMSG_HDRLEN + err.len()) as u32;
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&2u16.to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_ACK_TLVS | NLM_F_CAPPED).to_ne_bytes());
        buf.extend_from_slice(&8u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&err);
        let r = replies(&buf).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].ty, r[0].seq), (0x0a06, 7));
        assert_eq!(attrs(r[0].body).next(), Some((1, &b"t\0"[..])));
        assert_eq!(r[1].seq, 8);
        assert_eq!(error(&r[1]), (nix::libc::EEXIST, Some("no".into())));
    }
}
