//! Netlink framing every protocol shares: the message header, splitting a
//! datagram into messages, numbering requests, attributes, and reading the
//! kernel's verdicts (ACK, error, end of dump) with their extended ack.

use netlink_packet_core::{NLA_TYPE_MASK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLMSG_DONE, NLMSG_ERROR};

use super::{KernelError, NetlinkError};

/// `struct nlmsghdr`: length, type, flags, sequence number, port id.
pub const HDR_LEN: usize = 16;
/// `NLMSGERR_ATTR_MSG`: the extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// `NLMSGERR_ATTR_OFFS`: where in the request the problem is.
const NLMSGERR_ATTR_OFFS: u16 = 2;

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// One message of a datagram.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub port: u32,
    /// The whole message, its header included.
    pub bytes: &'a [u8],
}

impl<'a> Frame<'a> {
    /// What follows the header.
    pub fn payload(&self) -> &'a [u8] {
        self.bytes.get(HDR_LEN..).unwrap_or_default()
    }
}

/// The messages of a datagram, in order.
pub fn frames(buf: &[u8]) -> Result<Vec<Frame<'_>>, NetlinkError> {
    each(buf).collect()
}

/// The messages of a datagram one by one, without collecting them; a
/// malformed one ends the walk with its error.
pub fn each(buf: &[u8]) -> impl Iterator<Item = Result<Frame<'_>, NetlinkError>> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let m = buf.get(off..).filter(|m| m.len() >= HDR_LEN)?;
        let len = u32_at(m, 0) as usize;
        if len < HDR_LEN || len > m.len() {
            off = buf.len(); // nothing after it can be found
            return Some(Err(NetlinkError::Decode(format!(
                "a message claims {len} bytes where {} remain",
                m.len()
            ))));
        }
        off += align4(len);
        Some(Ok(Frame {
            ty: u16_at(m, 4),
            flags: u16_at(m, 6),
            seq: u32_at(m, 8),
            port: u32_at(m, 12),
            bytes: &m[..len],
        }))
    })
}

/// Numbers the messages of `buf` `first`, `first + 1`, ... and returns how
/// many there are.
pub fn stamp(buf: &mut [u8], first: u32) -> Result<usize, NetlinkError> {
    let mut off = 0;
    let mut n = 0usize;
    while off + HDR_LEN <= buf.len() {
        let len = u32_at(&buf[off..], 0) as usize;
        if len < HDR_LEN || off + len > buf.len() {
            return Err(NetlinkError::Decode(format!(
                "a request claims {len} bytes where {} remain",
                buf.len() - off
            )));
        }
        let seq = first.wrapping_add(u32::try_from(n).unwrap_or(u32::MAX));
        buf[off + 8..off + 12].copy_from_slice(&seq.to_ne_bytes());
        n += 1;
        off += align4(len);
    }
    Ok(n)
}

/// Adds `flags` to the header of the single message in `buf`.
pub fn add_flags(buf: &mut [u8], flags: u16) {
    if buf.len() >= HDR_LEN {
        let f = u16_at(buf, 6) | flags;
        buf[6..8].copy_from_slice(&f.to_ne_bytes());
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

/// The kernel's verdict in an `NLMSG_ERROR` (an ACK when its code is 0) or
/// an `NLMSG_DONE` (a dump that ended, or failed part way).
pub fn verdict(f: &Frame<'_>) -> Result<(), KernelError> {
    let b = f.payload();
    let code = match b.get(..4) {
        Some(c) => i32::from_ne_bytes([c[0], c[1], c[2], c[3]]),
        // Some subsystems end a dump with an empty DONE.
        None if f.ty == NLMSG_DONE => 0,
        None => return Err(KernelError::new(nix::libc::EPROTO)),
    };
    if code == 0 {
        return Ok(());
    }
    let mut err = KernelError::new(code.saturating_neg());
    if f.flags & NLM_F_ACK_TLVS == 0 {
        return Err(err);
    }
    // An error echoes the request's header, and its payload unless
    // capped; a DONE carries its TLVs right after the code.
    let skip = if f.ty != NLMSG_ERROR {
        0
    } else if f.flags & NLM_F_CAPPED != 0 {
        HDR_LEN
    } else {
        b.get(4..8)
            .map_or(HDR_LEN, |l| align4(u32_at(l, 0) as usize))
    };
    for (ty, d) in attrs(b.get(4 + skip..).unwrap_or_default()) {
        match ty {
            NLMSGERR_ATTR_MSG => {
                let text = d.strip_suffix(&[0]).unwrap_or(d);
                err.message = Some(String::from_utf8_lossy(text).into_owned());
            }
            NLMSGERR_ATTR_OFFS => {
                err.offset = d.try_into().ok().map(u32::from_ne_bytes);
            }
            _ => {}
        }
    }
    Err(err)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use netlink_packet_core::NLM_F_MULTIPART;

    /// A message as the kernel would send it.
    pub fn message(ty: u16, flags: u16, seq: u32, port: u32, payload: &[u8]) -> Vec<u8> {
        let len = (HDR_LEN + payload.len()) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&port.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(align4(m.len()), 0);
        m
    }

    /// An NLMSG_ERROR for request `seq` with `errno` (0: an ACK), capped,
    /// with an extended-ack text when given.
    pub fn error(seq: u32, port: u32, errno: i32, text: Option<&str>) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&(-errno).to_ne_bytes());
        p.extend_from_slice(&message(0x18, 0, seq, port, &[])); // the request's header
        let mut flags = NLM_F_CAPPED;
        if let Some(t) = text {
            flags |= NLM_F_ACK_TLVS;
            let mut v = t.as_bytes().to_vec();
            v.push(0);
            p.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
            p.extend_from_slice(&v);
            p.resize(align4(p.len()), 0);
            p.extend_from_slice(&8u16.to_ne_bytes());
            p.extend_from_slice(&NLMSGERR_ATTR_OFFS.to_ne_bytes());
            p.extend_from_slice(&28u32.to_ne_bytes());
        }
        message(NLMSG_ERROR, flags, seq, port, &p)
    }

    #[test]
    fn datagrams_split_into_messages_and_requests_are_numbered() {
        let mut buf = message(0x18, 0, 0, 0, &[1, 2, 3]);
        buf.extend(message(0x19, 5, 0, 0, &[]));
        assert_eq!(stamp(&mut buf, u32::MAX).unwrap(), 2);
        let f = frames(&buf).unwrap();
        assert_eq!(
            (f[0].ty, f[0].seq, f[0].payload()),
            (0x18, u32::MAX, &[1u8, 2, 3][..])
        );
        assert_eq!((f[1].ty, f[1].flags, f[1].seq), (0x19, 5, 0));
        add_flags(&mut buf, NLM_F_MULTIPART);
        assert_eq!(frames(&buf).unwrap()[0].flags, NLM_F_MULTIPART);
        // A length running past the datagram is refused.
        buf[16] = 0xff;
        assert!(frames(&buf[16..]).is_err());
        assert!(stamp(&mut buf[16..], 1).is_err());
        // One by one: what precedes a malformed message is read, then the
        // walk ends.
        let mut two = message(0x18, 0, 0, 0, &[]);
        two.extend_from_slice(&[0xff, 0, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let got: Vec<_> = each(&two).collect();
        assert!(matches!(got.as_slice(), [Ok(_), Err(_)]), "{got:?}");
    }

    #[test]
    fn errors_carry_the_extended_ack_text_and_offset() {
        let ack = error(7, 9, 0, None);
        assert_eq!(verdict(&frames(&ack).unwrap()[0]), Ok(()));
        let plain = error(7, 9, nix::libc::EEXIST, None);
        assert_eq!(
            verdict(&frames(&plain).unwrap()[0]),
            Err(KernelError::new(nix::libc::EEXIST))
        );
        let told = error(
            7,
            9,
            nix::libc::ENETUNREACH,
            Some("Nexthop has invalid gateway"),
        );
        let e = verdict(&frames(&told).unwrap()[0]).unwrap_err();
        assert_eq!(e.errno, nix::libc::ENETUNREACH);
        assert_eq!(e.message.as_deref(), Some("Nexthop has invalid gateway"));
        assert_eq!(e.offset, Some(28));
        // Uncapped: the request's payload is echoed before the TLVs.
        let mut p = (-nix::libc::EINVAL).to_ne_bytes().to_vec();
        p.extend(message(0x18, 0, 7, 9, &[0xaa; 8]));
        p.extend_from_slice(&[7, 0, 1, 0, b'n', b'o', 0, 0]);
        let uncapped = message(NLMSG_ERROR, NLM_F_ACK_TLVS, 7, 9, &p);
        let e = verdict(&frames(&uncapped).unwrap()[0]).unwrap_err();
        assert_eq!(e.message.as_deref(), Some("no"));
    }

    #[test]
    fn a_done_carries_the_dumps_own_error() {
        let ok = message(NLMSG_DONE, NLM_F_MULTIPART, 3, 9, &0i32.to_ne_bytes());
        assert_eq!(verdict(&frames(&ok).unwrap()[0]), Ok(()));
        let empty = message(NLMSG_DONE, NLM_F_MULTIPART, 3, 9, &[]);
        assert_eq!(verdict(&frames(&empty).unwrap()[0]), Ok(()));
        let mut p = (-nix::libc::EMSGSIZE).to_ne_bytes().to_vec();
        p.extend_from_slice(&[8, 0, 1, 0, b'b', b'i', b'g', 0]);
        let failed = message(NLMSG_DONE, NLM_F_MULTIPART | NLM_F_ACK_TLVS, 3, 9, &p);
        let e = verdict(&frames(&failed).unwrap()[0]).unwrap_err();
        assert_eq!(
            (e.errno, e.message.as_deref()),
            (nix::libc::EMSGSIZE, Some("big"))
        );
    }

    #[test]
    fn truncated_attributes_end_the_walk() {
        assert_eq!(attrs(&[8, 0, 1, 0, 1, 2]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
        let two = [5, 0, 1, 0, b'a', 0, 0, 0, 4, 0, 0x02, 0x80];
        let got: Vec<_> = attrs(&two).collect();
        assert_eq!(
            got,
            [(1, &b"a"[..]), (2, &[][..])],
            "the nested flag is masked off"
        );
    }
}
