//! The TUN device's offloads in user space: a TCP super-packet the kernel
//! hands over (up to 64 KB, with a virtio-net header) is cut into packets
//! that fit the tunnel, each with its own headers and checksums; packets
//! that arrive one per datagram are joined back into such a super-packet
//! when they are consecutive segments of one TCP stream, so the kernel
//! takes them in one write. The datagrams on the wire are what upstream
//! sends: one whole inner packet each.

use super::packet::{self, PROTO_TCP};

/// The virtio-net header in front of every packet read from or written to
/// the device (`IFF_VNET_HDR`), in the host's byte order as the kernel's
/// legacy virtio layout is.
pub const VNET_HDR_LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_ECN: u8 = 0x80;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn read(b: &[u8]) -> Option<VnetHdr> {
        let w = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        (b.len() >= VNET_HDR_LEN).then(|| VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: w(2),
            gso_size: w(4),
            csum_start: w(6),
            csum_offset: w(8),
        })
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

/// Fills in a checksum the kernel left for the device to compute
/// (`F_NEEDS_CSUM`): the field already holds the pseudo-header's sum.
pub fn complete_checksum(p: &mut [u8], start: usize, offset: usize) -> bool {
    let at = start + offset;
    if at + 2 > p.len() {
        return false;
    }
    let c = packet::finish(packet::sum(&p[start..], 0));
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// How a super-packet was cut: `count` packets back to back, each `size`
/// bytes but the last, `len` bytes in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub size: usize,
    pub count: usize,
    pub len: usize,
}

/// The headers of a TCP packet: IP header length, TCP header length.
fn tcp_headers(p: &[u8]) -> Option<(usize, usize)> {
    let (ihl, proto) = packet::ip_header(p)?;
    if proto != PROTO_TCP || p.len() < ihl + 20 {
        return None;
    }
    if p[0] >> 4 == 4 && u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return None; // a fragment
    }
    let thl = usize::from(p[ihl + 12] >> 4) * 4;
    (thl >= 20 && p.len() >= ihl + thl).then_some((ihl, thl))
}

/// Cuts the TCP super-packet `p` into packets carrying at most `mss`
/// bytes of payload each, written back to back into `out`, as the kernel
/// would have sent them: sequence numbers and IPv4 IDs advanced, FIN and
/// PSH on the last only, CWR on the first only, every checksum complete.
/// `None` when it is not such a packet or `out` is too small.
pub fn segment(p: &[u8], mss: usize, out: &mut [u8]) -> Option<Cut> {
    let p = &p[..packet::ip_len(p)?];
    let (ihl, thl) = tcp_headers(p)?;
    let hdr = ihl + thl;
    let payload = &p[hdr..];
    if mss == 0 || payload.is_empty() {
        return None;
    }
    let count = payload.len().div_ceil(mss);
    let len = count * hdr + payload.len();
    if len > out.len() {
        return None;
    }
    let v4 = p[0] >> 4 == 4;
    let seq0 = u32::from_be_bytes([p[ihl + 4], p[ihl + 5], p[ihl + 6], p[ihl + 7]]);
    let id0 = u16::from_be_bytes([p[4], p[5]]);
    let flags = p[ihl + 13];
    let mut at = 0;
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let seg = &mut out[at..at + hdr + chunk.len()];
        seg[..hdr].copy_from_slice(&p[..hdr]);
        seg[hdr..].copy_from_slice(chunk);
        let total = hdr + chunk.len();
        if v4 {
            seg[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            packet::fix_ipv4_checksum(seg, ihl);
        } else {
            seg[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        seg[ihl + 4..ihl + 8].copy_from_slice(&seq.to_be_bytes());
        let mut f = flags;
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        seg[ihl + 13] = f;
        seg[ihl + 16] = 0;
        seg[ihl + 17] = 0;
        let acc = packet::sum(&seg[ihl..], packet::pseudo_sum(seg, PROTO_TCP, total - ihl));
        let c = packet::finish(acc);
        seg[ihl + 16..ihl + 18].copy_from_slice(&c.to_be_bytes());
        at += total;
    }
    Some(Cut {
        size: hdr + mss.min(payload.len()),
        count,
        len,
    })
}

/// The largest packet the kernel takes in one write.
const MAX_JOINED: usize = 65535;

/// Joins consecutive segments of one TCP stream into a super-packet for
/// the device, behind a virtio-net header. Whatever cannot be joined goes
/// out alone (its checksum left for the kernel to check).
#[derive(Debug)]
pub struct Joiner {
    buf: Vec<u8>,
    /// Bytes held after the header (0: nothing held).
    len: usize,
    ihl: usize,
    thl: usize,
    /// Payload of the first segment: every one but the last has it.
    mss: usize,
    last: usize,
    segs: usize,
    next_seq: u32,
    joinable: bool,
}

impl Default for Joiner {
    fn default() -> Self {
        Joiner {
            buf: vec![0; VNET_HDR_LEN + MAX_JOINED],
            len: 0,
            ihl: 0,
            thl: 0,
            mss: 0,
            last: 0,
            segs: 0,
            next_seq: 0,
            joinable: false,
        }
    }
}

/// A TCP segment that may start or join a super-packet: plain ACK (with
/// PSH or ECE) and data, no options in the IPv4 header's way, and a
/// checksum that verifies (a joined packet's is recomputed by the kernel,
/// so a damaged one must not hide inside it).
fn joinable(p: &[u8]) -> Option<(usize, usize)> {
    let (ihl, thl) = tcp_headers(p)?;
    let flags = p[ihl + 13];
    if flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR) != 0 || p.len() == ihl + thl {
        return None;
    }
    let acc = packet::sum(&p[ihl..], packet::pseudo_sum(p, PROTO_TCP, p.len() - ihl));
    (packet::fold(acc) == 0xffff).then_some((ihl, thl))
}

fn seq_of(p: &[u8], ihl: usize) -> u32 {
    u32::from_be_bytes([p[ihl + 4], p[ihl + 5], p[ihl + 6], p[ihl + 7]])
}

impl Joiner {
    /// Takes one inner packet (trimmed to its IP length); `emit` receives
    /// each finished buffer, header included.
    pub fn push(&mut self, p: &[u8], emit: &mut impl FnMut(&[u8])) {
        let Some(p) = packet::ip_len(p).map(|n| &p[..n]) else {
            return;
        };
        if self.len > 0 && self.joinable && self.can_join(p) {
            let (ihl, thl) = (self.ihl, self.thl);
            let data = &p[ihl + thl..];
            let at = VNET_HDR_LEN + self.len;
            self.buf[at..at + data.len()].copy_from_slice(data);
            self.len += data.len();
            self.last = data.len();
            self.segs += 1;
            self.next_seq = self.next_seq.wrapping_add(data.len() as u32);
            let fl = VNET_HDR_LEN + ihl + 13;
            self.buf[fl] |= p[ihl + 13] & TCP_PSH;
            return;
        }
        self.flush(emit);
        if p.len() > MAX_JOINED {
            return;
        }
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + p.len()].copy_from_slice(p);
        self.len = p.len();
        self.segs = 1;
        match joinable(p) {
            Some((ihl, thl)) => {
                self.joinable = true;
                self.ihl = ihl;
                self.thl = thl;
                self.mss = p.len() - ihl - thl;
                self.last = self.mss;
                self.next_seq = seq_of(p, ihl).wrapping_add(self.mss as u32);
            }
            None => self.joinable = false,
        }
    }

    /// Whether `p` continues the held stream exactly: same headers but for
    /// lengths, IDs, sequence number, PSH and checksums.
    fn can_join(&self, p: &[u8]) -> bool {
        let held = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.len];
        let (ihl, thl) = (self.ihl, self.thl);
        if p.len() <= ihl + thl
            || held[ihl + 13] & TCP_PSH != 0
            || self.last != self.mss
            || p.len() - ihl - thl > self.mss
            || self.len + p.len() - ihl - thl > MAX_JOINED
            || p[0] != held[0]
            || seq_of(p, ihl) != self.next_seq
        {
            return false;
        }
        let ip_same = if p[0] >> 4 == 4 {
            p[1] == held[1] && p[6..10] == held[6..10] && p[12..ihl] == held[12..ihl]
        } else {
            p[..4] == held[..4] && p[6..40] == held[6..40]
        };
        let t = ihl;
        ip_same
            && p.get(ihl..ihl + thl).is_some()
            && p[t..t + 4] == held[t..t + 4]
            && p[t + 8..t + 13] == held[t + 8..t + 13]
            && p[t + 13] & !TCP_PSH == held[t + 13] & !TCP_PSH
            && p[t + 14..t + 16] == held[t + 14..t + 16]
            && p[t + 18..t + thl] == held[t + 18..t + thl]
            && joinable(p).is_some()
    }

    /// Sends on what is held.
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        if self.len == 0 {
            return;
        }
        let n = VNET_HDR_LEN + self.len;
        let mut hdr = VnetHdr::default();
        if self.segs > 1 {
            let (ihl, thl) = (self.ihl, self.thl);
            let p = &mut self.buf[VNET_HDR_LEN..n];
            let v4 = p[0] >> 4 == 4;
            if v4 {
                p[2..4].copy_from_slice(&(self.len as u16).to_be_bytes());
                packet::fix_ipv4_checksum(p, ihl);
            } else {
                p[4..6].copy_from_slice(&((self.len - 40) as u16).to_be_bytes());
            }
            // The kernel finishes the checksum from the pseudo-header's sum.
            let partial = packet::fold(packet::pseudo_sum(p, PROTO_TCP, self.len - ihl));
            p[ihl + 16..ihl + 18].copy_from_slice(&partial.to_be_bytes());
            hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if v4 { GSO_TCPV4 } else { GSO_TCPV6 },
                hdr_len: (ihl + thl) as u16,
                gso_size: self.mss as u16,
                csum_start: ihl as u16,
                csum_offset: 16,
            };
        }
        hdr.write(&mut self.buf[..VNET_HDR_LEN]);
        emit(&self.buf[..n]);
        self.len = 0;
        self.segs = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::tests::{ipv4, ipv6};
    use super::*;
    use std::net::Ipv6Addr;

    /// A TCP segment (ACK, timestamps option) inside IPv4 or IPv6.
    fn tcp(v6: bool, seq: u32, flags: u8, data: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 32];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&77u32.to_be_bytes());
        t[12] = 8 << 4;
        t[13] = 0x10 | flags;
        t[14..16].copy_from_slice(&500u16.to_be_bytes());
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        t.extend_from_slice(data);
        let mut p = if v6 {
            let a: Ipv6Addr = "fd00:244:0:1::2".parse().unwrap();
            let b: Ipv6Addr = "fd00:244:0:2::3".parse().unwrap();
            ipv6(PROTO_TCP, 64, a, b, &t)
        } else {
            ipv4(PROTO_TCP, 64, [10, 244, 1, 2], [10, 244, 2, 3], &t)
        };
        let ihl = if v6 { 40 } else { 20 };
        let acc = packet::sum(&p[ihl..], packet::pseudo_sum(&p, PROTO_TCP, p.len() - ihl));
        let c = packet::finish(acc);
        p[ihl + 16..ihl + 18].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn verifies(p: &[u8]) -> bool {
        let ihl = packet::ip_header(p).unwrap().0;
        let ok4 = p[0] >> 4 != 4 || packet::checksum(&p[..ihl]) == 0;
        let acc = packet::sum(&p[ihl..], packet::pseudo_sum(p, PROTO_TCP, p.len() - ihl));
        ok4 && packet::fold(acc) == 0xffff
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn a_super_packet_is_cut_into_valid_segments_that_join_back() {
        for v6 in [false, true] {
            let body = data(10_001);
            let big = tcp(v6, 1000, TCP_PSH, &body);
            let mut out = vec![0u8; 20_000];
            let cut = segment(&big, 1400, &mut out).unwrap();
            let hdr = if v6 { 72 } else { 52 };
            assert_eq!(cut.count, 8);
            assert_eq!(cut.size, hdr + 1400);
            assert_eq!(cut.len, 8 * hdr + body.len());
            let segs: Vec<&[u8]> = out[..cut.len].chunks(cut.size).collect();
            let mut got = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                assert!(verifies(s), "segment {i} (v6 {v6}) has bad checksums");
                assert_eq!(packet::ip_len(s), Some(s.len()));
                let ihl = if v6 { 40 } else { 20 };
                assert_eq!(seq_of(s, ihl), 1000 + 1400 * i as u32);
                assert_eq!(s[ihl + 13] & TCP_PSH != 0, i == 7, "PSH on the last only");
                got.extend_from_slice(&s[hdr..]);
            }
            assert_eq!(got, body);
            // And back: one super-packet with the same bytes.
            let mut j = Joiner::default();
            let mut written = Vec::new();
            for s in &segs {
                j.push(s, &mut |b| written.push(b.to_vec()));
            }
            j.flush(&mut |b| written.push(b.to_vec()));
            assert_eq!(written.len(), 1, "v6 {v6}");
            let w = &written[0];
            let h = VnetHdr::read(w).unwrap();
            assert_eq!(h.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
            assert_eq!(
                (h.flags, h.gso_size, h.hdr_len),
                (F_NEEDS_CSUM, 1400, hdr as u16)
            );
            let mut p = w[VNET_HDR_LEN..].to_vec();
            assert_eq!(packet::ip_len(&p), Some(p.len()));
            assert!(complete_checksum(&mut p, usize::from(h.csum_start), 16));
            assert_eq!(p, big, "joined back exactly");
        }
    }

    #[test]
    fn what_does_not_continue_the_stream_goes_out_alone() {
        let a = tcp(false, 0, 0, &data(1000));
        let gap = tcp(false, 1500, 0, &data(1000));
        let mut bad = tcp(false, 2500, 0, &data(1000));
        bad[60] ^= 1; // damaged payload: the checksum no longer verifies
        let syn = tcp(false, 3500, TCP_SYN, &[]);
        let mut j = Joiner::default();
        let mut out = Vec::new();
        for p in [&a, &gap, &bad, &syn] {
            j.push(p, &mut |b| out.push(b.to_vec()));
        }
        j.flush(&mut |b| out.push(b.to_vec()));
        assert_eq!(out.len(), 4);
        for (w, p) in out.iter().zip([&a, &gap, &bad, &syn]) {
            assert_eq!(VnetHdr::read(w).unwrap(), VnetHdr::default());
            assert_eq!(&w[VNET_HDR_LEN..], &p[..], "passed on unchanged");
        }
        // A short segment ends a run; a PSH joins and ends it.
        let mut j = Joiner::default();
        let mut out = Vec::new();
        for p in [
            tcp(false, 0, 0, &data(1000)),
            tcp(false, 1000, TCP_PSH, &data(400)),
            tcp(false, 1400, 0, &data(1000)),
        ] {
            j.push(&p, &mut |b| out.push(b.to_vec()));
        }
        j.flush(&mut |b| out.push(b.to_vec()));
        assert_eq!(out.len(), 2);
        assert_eq!(VnetHdr::read(&out[0]).unwrap().gso_type, GSO_TCPV4);
        assert_eq!(out[0].len(), VNET_HDR_LEN + 52 + 1400);
        assert_ne!(out[0][VNET_HDR_LEN + 20 + 13] & TCP_PSH, 0);
    }

    #[test]
    fn a_checksum_left_to_the_device_is_completed() {
        let mut p = tcp(false, 5, 0, &data(333));
        let want = p.clone();
        // As the kernel hands it over: the field holds the pseudo-header sum.
        let partial = packet::fold(packet::pseudo_sum(&p, PROTO_TCP, p.len() - 20));
        p[36..38].copy_from_slice(&partial.to_be_bytes());
        assert!(complete_checksum(&mut p, 20, 16));
        assert_eq!(p, want);
        assert!(!complete_checksum(&mut p[..30], 20, 16));
    }

    #[test]
    fn nonsense_is_not_cut() {
        let mut out = vec![0u8; 4096];
        assert!(segment(&[0x45, 0, 0], 1400, &mut out).is_none());
        let small = tcp(false, 0, 0, &data(3000));
        assert!(segment(&small, 0, &mut out).is_none());
        assert!(segment(&small, 100, &mut out[..100]).is_none());
        let udp = ipv4(17, 64, [1, 1, 1, 1], [2, 2, 2, 2], &[0; 40]);
        assert!(segment(&udp, 1400, &mut out).is_none());
    }
}
