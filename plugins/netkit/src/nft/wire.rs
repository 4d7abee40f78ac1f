//! The nf_tables codec: messages are a netlink header, `struct nfgenmsg`
//! and attributes (nested ones flagged). Sending them and reading the
//! answers is the socket core's job ([`crate::nlsock`]).

use netlink_packet_core::NLA_F_NESTED;

pub use crate::nlsock::frame::attrs;
use crate::nlsock::frame::{HDR_LEN, align4};

/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG_LEN: usize = 4;

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

pub fn be32(d: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(d.try_into().ok()?))
}

/// A string attribute without its NUL.
pub fn string(d: &[u8]) -> String {
    String::from_utf8_lossy(d.strip_suffix(&[0]).unwrap_or(d)).into_owned()
}

/// The attributes of an nf_tables message the kernel sent (after its
/// netlink header and `struct nfgenmsg`).
pub fn body(msg: &[u8]) -> &[u8] {
    msg.get(HDR_LEN + NFGENMSG_LEN..).unwrap_or_default()
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
    fn a_messages_body_is_its_attributes() {
        let mut w = Writer::default();
        let s = w.begin(0x0a06, 0, 7, 1, 0);
        w.put_str(1, "t");
        w.end(s);
        assert_eq!(attrs(body(w.bytes())).next(), Some((1, &b"t\0"[..])));
        assert!(body(&[1, 2]).is_empty());
    }
}
