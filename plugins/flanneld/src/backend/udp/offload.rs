//! The TUN device's offloads in user space: a TCP super-packet the kernel
//! hands over (up to 64 KB, with a virtio-net header) is cut into packets
//! that fit the tunnel, each with its own headers and checksums; packets
//! that arrive one per datagram are joined back into such a super-packet
//! when they are consecutive segments of one TCP stream, so the kernel
//! takes them in one write. The datagrams on the wire are what upstream
//! sends: one whole inner packet each.

use std::io::IoSlice;

use super::packet::{self, PROTO_TCP, PROTO_UDP};

/// The virtio-net header in front of every packet read from or written to
/// the device (`IFF_VNET_HDR`), in the host's byte order as the kernel's
/// legacy virtio layout is.
pub const VNET_HDR_LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
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

/// How a super-packet is cut: `count` packets, each `hdr` bytes of
/// headers (written back to back into a headers buffer) followed by its
/// share of the original's payload, `mss` bytes but the last. The payload
/// is not copied: a send points at it where it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub hdr: usize,
    pub mss: usize,
    pub count: usize,
    /// Payload bytes in all.
    pub payload: usize,
}

impl Cut {
    /// Every datagram's size but the last's.
    pub fn size(&self) -> usize {
        self.hdr + self.mss.min(self.payload)
    }

    /// Where packet `i`'s payload lies in the original.
    pub fn payload_of(&self, i: usize) -> std::ops::Range<usize> {
        let start = self.hdr + i * self.mss;
        start..(start + self.mss).min(self.hdr + self.payload)
    }
}

/// An IPv4 fragment (more to come, or not the first): never cut or
/// joined. `p` has a whole IP header.
fn fragment(p: &[u8]) -> bool {
    p[0] >> 4 == 4 && u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0
}

/// The headers of a TCP packet: IP header length, TCP header length.
fn tcp_headers(p: &[u8]) -> Option<(usize, usize)> {
    let (ihl, proto) = packet::ip_header(p)?;
    if proto != PROTO_TCP || p.len() < ihl + 20 {
        return None;
    }
    if fragment(p) {
        return None;
    }
    let thl = usize::from(p[ihl + 12] >> 4) * 4;
    (thl >= 20 && p.len() >= ihl + thl).then_some((ihl, thl))
}

/// Cuts the super-packet `p` (TCP, or UDP from a sender that segments)
/// into packets carrying at most `mss` bytes of payload each, as the
/// kernel would have sent them: IPv4 IDs advanced; for TCP sequence numbers
/// advanced, FIN and PSH on the last only, CWR on the first only; for UDP
/// each datagram's length; every checksum complete. Their headers go to
/// `hdrs`. `None` when it is not such a packet or `hdrs` is too small.
pub fn segment(p: &[u8], mss: usize, hdrs: &mut [u8]) -> Option<Cut> {
    let p = &p[..packet::ip_len(p)?];
    let (ihl, proto) = packet::ip_header(p)?;
    let thl = match proto {
        PROTO_TCP => tcp_headers(p)?.1,
        PROTO_UDP if p.len() >= ihl + 8 => 8,
        _ => return None,
    };
    let hdr = ihl + thl;
    let payload = p.len() - hdr;
    if mss == 0 || payload == 0 {
        return None;
    }
    let cut = Cut {
        hdr,
        mss,
        count: payload.div_ceil(mss),
        payload,
    };
    if cut.count * hdr > hdrs.len() {
        return None;
    }
    let v4 = p[0] >> 4 == 4;
    let seq0 = u32::from_be_bytes([p[ihl + 4], p[ihl + 5], p[ihl + 6], p[ihl + 7]]);
    let id0 = u16::from_be_bytes([p[4], p[5]]);
    let (check, flags) = if proto == PROTO_TCP {
        (16, p[ihl + 13])
    } else {
        (6, 0)
    };
    for (i, h) in hdrs.chunks_exact_mut(hdr).take(cut.count).enumerate() {
        let data = &p[cut.payload_of(i)];
        h.copy_from_slice(&p[..hdr]);
        let total = hdr + data.len();
        if v4 {
            h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            h[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            packet::fix_ipv4_checksum(h, ihl);
        } else {
            h[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        }
        if proto == PROTO_TCP {
            let seq = seq0.wrapping_add((i * mss) as u32);
            h[ihl + 4..ihl + 8].copy_from_slice(&seq.to_be_bytes());
            let mut f = flags;
            if i + 1 < cut.count {
                f &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                f &= !TCP_CWR;
            }
            h[ihl + 13] = f;
        } else {
            h[ihl + 4..ihl + 6].copy_from_slice(&((total - ihl) as u16).to_be_bytes());
        }
        h[ihl + check] = 0;
        h[ihl + check + 1] = 0;
        let acc = packet::sum(data, packet::pseudo_sum(h, proto, total - ihl));
        let c = packet::finish(packet::sum(&h[ihl..], acc));
        h[ihl + check..ihl + check + 2].copy_from_slice(&c.to_be_bytes());
    }
    Some(cut)
}

/// The largest packet the kernel takes in one write.
const MAX_JOINED: usize = 65535;
/// Most segments joined in one write (a coalesced receive holds no more).
const MAX_SEGS: usize = 64;
/// Room for the virtio-net header and the largest IP and TCP headers.
const HEAD: usize = VNET_HDR_LEN + 60 + 60;
/// The header of a packet written alone.
static PLAIN: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// What became of a write to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    Taken,
    /// Refused as invalid (EINVAL).
    Invalid,
    /// Failed otherwise.
    Failed,
}

/// Whether `s`, a write for the device, is a joined one (its virtio-net
/// header asks the kernel to cut it). A writer counts every failed write
/// but a joined one refused as invalid: the joiner writes that again
/// packet by packet.
pub fn joined(s: &[IoSlice<'_>]) -> bool {
    s.first()
        .and_then(|h| h.get(1))
        .is_some_and(|&t| t & !GSO_ECN != GSO_NONE)
}

/// Joins consecutive segments of one TCP stream into a super-packet for
/// the device, behind a virtio-net header. Only the headers are copied:
/// the write gathers the payloads from the receive buffer, which must stay
/// as it is until `flush`. Whatever cannot be joined goes out alone.
#[derive(Debug)]
pub struct Joiner {
    /// The virtio-net header and the first segment's headers.
    head: [u8; HEAD],
    /// Payloads held, as ranges of the receive buffer.
    parts: [(usize, usize); MAX_SEGS],
    segs: usize,
    /// The first segment whole, written as it is if nothing joins it.
    first: (usize, usize),
    ihl: usize,
    /// The TCP or UDP header's length.
    thl: usize,
    proto: u8,
    /// Payload of the first segment: every one but the last has it.
    mss: usize,
    last: usize,
    /// IP length of the joined packet so far.
    len: usize,
    next_seq: u32,
    /// Runs of same-size UDP datagrams are joined too (the kernel cuts
    /// them apart again on delivery); off while the kernel refuses them.
    pub udp: bool,
    /// The device took a joined UDP run: the kernel can, and a refusal
    /// later is about those packets, never a reason to stop joining.
    udp_taken: bool,
    /// `udp` went off: see [`Joiner::udp_refused`].
    udp_refused: bool,
}

impl Default for Joiner {
    fn default() -> Self {
        Joiner {
            head: [0; HEAD],
            parts: [(0, 0); MAX_SEGS],
            segs: 0,
            first: (0, 0),
            ihl: 0,
            thl: 0,
            proto: 0,
            mss: 0,
            last: 0,
            len: 0,
            next_seq: 0,
            udp: true,
            udp_taken: false,
            udp_refused: false,
        }
    }
}

/// A packet that may start or join a super-packet: a TCP segment that
/// is plain ACK (with PSH or ECE) and data, or (with `udp`) a UDP datagram
/// with a payload. Checksums are not checked here: the datagram carrying
/// it had its own UDP checksum covering every byte on the way, and the
/// kernel computes the joined packet's. Returns the header lengths and the
/// protocol.
fn joinable(p: &[u8], udp: bool) -> Option<(usize, usize, u8)> {
    let (ihl, proto) = packet::ip_header(p)?;
    if proto == PROTO_UDP {
        let claimed = p
            .get(ihl + 4..ihl + 6)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])));
        let whole = claimed == Some(p.len() - ihl);
        return (udp
            && !fragment(p)
            && whole
            && p.len() > ihl + 8
            && ihl + 8 + VNET_HDR_LEN <= HEAD)
            .then_some((ihl, 8, PROTO_UDP));
    }
    let (ihl, thl) = tcp_headers(p)?;
    let flags = p[ihl + 13];
    let plain = flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR) == 0;
    (plain && p.len() > ihl + thl && ihl + thl + VNET_HDR_LEN <= HEAD)
        .then_some((ihl, thl, PROTO_TCP))
}

fn seq_of(p: &[u8], ihl: usize) -> u32 {
    u32::from_be_bytes([p[ihl + 4], p[ihl + 5], p[ihl + 6], p[ihl + 7]])
}

impl Joiner {
    /// Takes the inner packet at `bufs[start..start + len]`; `emit`
    /// receives each finished packet as slices to write at once, header
    /// included, and says what became of it (see [`joined`]).
    pub fn push(
        &mut self,
        bufs: &[u8],
        start: usize,
        len: usize,
        emit: &mut impl FnMut(&[IoSlice<'_>]) -> Wrote,
    ) {
        let Some(p) = bufs.get(start..start + len) else {
            return;
        };
        let Some(p) = packet::ip_len(p).map(|n| &p[..n]) else {
            return;
        };
        if self.segs > 0 && self.can_join(p) {
            let data = (start + self.ihl + self.thl, p.len() - self.ihl - self.thl);
            self.parts[self.segs] = data;
            self.segs += 1;
            self.len += data.1;
            self.last = data.1;
            if self.proto == PROTO_TCP {
                self.next_seq = self.next_seq.wrapping_add(data.1 as u32);
                self.head[VNET_HDR_LEN + self.ihl + 13] |= p[self.ihl + 13] & TCP_PSH;
            }
            return;
        }
        self.flush(bufs, emit);
        let Some((ihl, thl, proto)) = joinable(p, self.udp) else {
            emit(&[IoSlice::new(&PLAIN), IoSlice::new(p)]);
            return;
        };
        let hl = ihl + thl;
        self.head[VNET_HDR_LEN..VNET_HDR_LEN + hl].copy_from_slice(&p[..hl]);
        self.first = (start, p.len());
        self.parts[0] = (start + hl, p.len() - hl);
        self.segs = 1;
        self.ihl = ihl;
        self.thl = thl;
        self.proto = proto;
        self.mss = p.len() - hl;
        self.last = self.mss;
        self.len = p.len();
        if proto == PROTO_TCP {
            self.next_seq = seq_of(p, ihl).wrapping_add(self.mss as u32);
        }
    }

    /// Whether `p` continues the held flow exactly: the same headers but
    /// for lengths, IDs and checksums (for TCP also the sequence number,
    /// which must follow on, and PSH), and no bigger than the first.
    fn can_join(&self, p: &[u8]) -> bool {
        let (ihl, thl) = (self.ihl, self.thl);
        let held = &self.head[VNET_HDR_LEN..VNET_HDR_LEN + ihl + thl];
        if self.segs >= MAX_SEGS
            || p.len() <= ihl + thl
            || self.last != self.mss
            || p.len() - ihl - thl > self.mss
            || self.len + p.len() - ihl - thl > MAX_JOINED
            || p[0] != held[0]
            || joinable(p, self.udp) != Some((ihl, thl, self.proto))
        {
            return false;
        }
        let ip_same = if p[0] >> 4 == 4 {
            p[1] == held[1] && p[6..10] == held[6..10] && p[12..ihl] == held[12..ihl]
        } else {
            p[..4] == held[..4] && p[6..40] == held[6..40]
        };
        let t = ihl;
        if !ip_same || p[t..t + 4] != held[t..t + 4] {
            return false;
        }
        self.proto == PROTO_UDP
            || (held[t + 13] & TCP_PSH == 0
                && seq_of(p, ihl) == self.next_seq
                && p[t + 8..t + 13] == held[t + 8..t + 13]
                && p[t + 13] & !TCP_PSH == held[t + 13] & !TCP_PSH
                && p[t + 14..t + 16] == held[t + 14..t + 16]
                && p[t + 18..t + thl] == held[t + 18..t + thl])
    }

    /// Whether UDP joining went off since the last call: a joined UDP run
    /// was refused although the device took each of its datagrams alone,
    /// and none had been taken before (a kernel without UDP super-packets
    /// on TUN, before 6.2).
    pub fn udp_refused(&mut self) -> bool {
        std::mem::take(&mut self.udp_refused)
    }

    /// Sends on what is held.
    pub fn flush(&mut self, bufs: &[u8], emit: &mut impl FnMut(&[IoSlice<'_>]) -> Wrote) {
        match self.segs {
            0 => return,
            1 => {
                let (start, len) = self.first;
                if let Some(p) = bufs.get(start..start + len) {
                    emit(&[IoSlice::new(&PLAIN), IoSlice::new(p)]);
                }
            }
            segs => {
                let (ihl, thl) = (self.ihl, self.thl);
                let h = &mut self.head[VNET_HDR_LEN..VNET_HDR_LEN + ihl + thl];
                let v4 = h[0] >> 4 == 4;
                if v4 {
                    h[2..4].copy_from_slice(&(self.len as u16).to_be_bytes());
                    packet::fix_ipv4_checksum(h, ihl);
                } else {
                    h[4..6].copy_from_slice(&((self.len - 40) as u16).to_be_bytes());
                }
                // The kernel finishes the checksum from the pseudo-header's sum.
                let partial = packet::fold(packet::pseudo_sum(h, self.proto, self.len - ihl));
                let (gso_type, at) = match (self.proto, v4) {
                    (PROTO_UDP, _) => {
                        h[ihl + 4..ihl + 6]
                            .copy_from_slice(&((self.len - ihl) as u16).to_be_bytes());
                        (GSO_UDP_L4, 6)
                    }
                    (_, true) => (GSO_TCPV4, 16),
                    (_, false) => (GSO_TCPV6, 16),
                };
                h[ihl + at..ihl + at + 2].copy_from_slice(&partial.to_be_bytes());
                VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type,
                    hdr_len: (ihl + thl) as u16,
                    gso_size: self.mss as u16,
                    csum_start: ihl as u16,
                    csum_offset: at as u16,
                }
                .write(&mut self.head[..VNET_HDR_LEN]);
                let mut slices = [IoSlice::new(&[]); MAX_SEGS + 1];
                slices[0] = IoSlice::new(&self.head[..VNET_HDR_LEN + ihl + thl]);
                for (slot, &(start, len)) in slices[1..].iter_mut().zip(&self.parts[..segs]) {
                    *slot = IoSlice::new(bufs.get(start..start + len).unwrap_or_default());
                }
                match emit(&slices[..segs + 1]) {
                    Wrote::Taken => self.udp_taken |= self.proto == PROTO_UDP,
                    Wrote::Invalid => self.refused(bufs, emit),
                    Wrote::Failed => {}
                }
            }
        }
        self.segs = 0;
    }

    /// The held run was refused as invalid: its packets go again one by
    /// one, as they arrived, so none is lost. UDP joining goes off only
    /// if the kernel never took a joined UDP run and takes each datagram
    /// of this one alone: then it is the joining it refuses (a kernel
    /// before 6.2), not the packets. Anything else leaves joining as it
    /// is, so packets a peer sends (whole, by admission) cannot change how
    /// the device is written; and the forwarder tries joining again later,
    /// so no single event turns it off for good.
    fn refused(&mut self, bufs: &[u8], emit: &mut impl FnMut(&[IoSlice<'_>]) -> Wrote) {
        let hl = self.ihl + self.thl;
        let mut all = true;
        for &(start, len) in &self.parts[..self.segs] {
            let p = start
                .checked_sub(hl)
                .and_then(|at| bufs.get(at..start + len))
                .unwrap_or_default();
            all &= emit(&[IoSlice::new(&PLAIN), IoSlice::new(p)]) == Wrote::Taken;
        }
        if self.proto == PROTO_UDP && all && !self.udp_taken {
            self.udp = false;
            self.udp_refused = true;
        }
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

    /// The packets a cut stands for, whole.
    fn materialize(p: &[u8], cut: &Cut, hdrs: &[u8]) -> Vec<Vec<u8>> {
        (0..cut.count)
            .map(|i| {
                let mut s = hdrs[i * cut.hdr..(i + 1) * cut.hdr].to_vec();
                s.extend_from_slice(&p[cut.payload_of(i)]);
                s
            })
            .collect()
    }

    /// Runs packets through a joiner as if received back to back in one
    /// buffer; returns what was written, each write joined up.
    fn join(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let bufs: Vec<u8> = packets.concat();
        let mut j = Joiner::default();
        let mut out = Vec::new();
        let mut emit = |s: &[IoSlice<'_>]| {
            out.push(s.iter().flat_map(|x| x.to_vec()).collect());
            Wrote::Taken
        };
        let mut at = 0;
        for p in packets {
            j.push(&bufs, at, p.len(), &mut emit);
            at += p.len();
        }
        j.flush(&bufs, &mut emit);
        out
    }

    #[test]
    fn a_super_packet_is_cut_into_valid_segments_that_join_back() {
        for v6 in [false, true] {
            let body = data(10_001);
            let big = tcp(v6, 1000, TCP_PSH, &body);
            let mut hdrs = vec![0u8; 4096];
            let cut = segment(&big, 1400, &mut hdrs).unwrap();
            let hdr = if v6 { 72 } else { 52 };
            assert_eq!((cut.count, cut.hdr, cut.size()), (8, hdr, hdr + 1400));
            let segs = materialize(&big, &cut, &hdrs);
            let mut got = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                assert!(verifies(s), "segment {i} (v6 {v6}) has bad checksums");
                assert_eq!(packet::ip_len(s), Some(s.len()));
                assert_eq!(s.len(), if i < 7 { cut.size() } else { hdr + 201 });
                let ihl = if v6 { 40 } else { 20 };
                assert_eq!(seq_of(s, ihl), 1000 + 1400 * i as u32);
                assert_eq!(s[ihl + 13] & TCP_PSH != 0, i == 7, "PSH on the last only");
                got.extend_from_slice(&s[hdr..]);
            }
            assert_eq!(got, body);
            // And back: one super-packet with the same bytes.
            let written = join(&segs);
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
        let mut other = tcp(false, 2500, 0, &data(1000));
        other[20 + 14] ^= 1; // another window
        let syn = tcp(false, 3500, TCP_SYN, &[]);
        let sent = [a, gap, other, syn];
        let out = join(&sent);
        assert_eq!(out.len(), 4);
        for (w, p) in out.iter().zip(&sent) {
            assert_eq!(VnetHdr::read(w).unwrap(), VnetHdr::default());
            assert_eq!(&w[VNET_HDR_LEN..], &p[..], "passed on unchanged");
        }
        // A short segment ends a run; a PSH joins and ends it.
        let out = join(&[
            tcp(false, 0, 0, &data(1000)),
            tcp(false, 1000, TCP_PSH, &data(400)),
            tcp(false, 1400, 0, &data(1000)),
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!(VnetHdr::read(&out[0]).unwrap().gso_type, GSO_TCPV4);
        assert_eq!(out[0].len(), VNET_HDR_LEN + 52 + 1400);
        assert_ne!(out[0][VNET_HDR_LEN + 20 + 13] & TCP_PSH, 0);
        // No more than a receive's worth in one write.
        let many: Vec<Vec<u8>> = (0..70)
            .map(|i| tcp(false, i * 100, 0, &data(100)))
            .collect();
        let out = join(&many);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), VNET_HDR_LEN + 52 + 64 * 100);
    }

    /// A UDP datagram 40000 -> `dport` inside IPv4.
    fn udp(dport: u16, data: &[u8]) -> Vec<u8> {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&40000u16.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        u.extend_from_slice(data);
        ipv4(PROTO_UDP, 64, [10, 244, 1, 2], [10, 244, 2, 3], &u)
    }

    #[test]
    fn a_run_of_udp_datagrams_of_one_flow_is_joined_and_cuts_back_the_same() {
        let sent = [
            udp(9999, &data(500)),
            udp(9999, &data(500)),
            udp(9999, &data(200)),
            udp(9999, &data(500)), // after a shorter one: a new run
            udp(7777, &data(500)), // another flow
        ];
        let out = join(&sent);
        assert_eq!(out.len(), 3);
        let h = VnetHdr::read(&out[0]).unwrap();
        assert_eq!((h.gso_type, h.gso_size, h.hdr_len), (GSO_UDP_L4, 500, 28));
        assert_eq!(
            (h.flags, h.csum_start, h.csum_offset),
            (F_NEEDS_CSUM, 20, 6)
        );
        let p = &out[0][VNET_HDR_LEN..];
        assert_eq!(packet::ip_len(p), Some(28 + 1200));
        assert_eq!(u16::from_be_bytes([p[24], p[25]]), 8 + 1200);
        // Cut as the kernel will: the same payloads at the same bounds.
        let payloads: Vec<&[u8]> = p[28..].chunks(500).collect();
        for (got, want) in payloads.iter().zip(&sent[..3]) {
            assert_eq!(*got, &want[28..]);
        }
        for (w, p) in out[1..].iter().zip(&sent[3..]) {
            assert_eq!(&w[VNET_HDR_LEN..], &p[..], "passed on unchanged");
        }
    }

    #[test]
    fn a_udp_super_packet_is_cut_into_datagrams_with_their_own_lengths_and_sums() {
        let big = udp(443, &data(3000));
        let mut hdrs = vec![0u8; 1024];
        let cut = segment(&big, 1200, &mut hdrs).unwrap();
        assert_eq!((cut.count, cut.hdr, cut.size()), (3, 28, 1228));
        let segs = materialize(&big, &cut, &hdrs);
        let mut got = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(packet::ip_len(s), Some(s.len()));
            assert_eq!(packet::checksum(&s[..20]), 0, "IPv4 header {i}");
            assert_eq!(
                usize::from(u16::from_be_bytes([s[24], s[25]])),
                s.len() - 20
            );
            let acc = packet::sum(&s[20..], packet::pseudo_sum(s, PROTO_UDP, s.len() - 20));
            assert_eq!(packet::fold(acc), 0xffff, "UDP checksum {i}");
            got.extend_from_slice(&s[28..]);
        }
        assert_eq!(segs[2].len(), 28 + 600);
        assert_eq!(got, big[28..]);
    }

    #[test]
    fn udp_joining_can_be_turned_off() {
        let bufs = [udp(9999, &data(100)), udp(9999, &data(100))].concat();
        let mut j = Joiner {
            udp: false,
            ..Joiner::default()
        };
        let mut n = 0;
        let mut emit = |s: &[IoSlice<'_>]| {
            assert_eq!(s.len(), 2, "a plain header and the datagram");
            n += 1;
            Wrote::Taken
        };
        j.push(&bufs, 0, 128, &mut emit);
        j.push(&bufs, 128, 128, &mut emit);
        j.flush(&bufs, &mut emit);
        assert_eq!(n, 2);
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
        let mut hdrs = vec![0u8; 4096];
        assert!(segment(&[0x45, 0, 0], 1400, &mut hdrs).is_none());
        let small = tcp(false, 0, 0, &data(3000));
        assert!(segment(&small, 0, &mut hdrs).is_none());
        assert!(segment(&small, 10, &mut hdrs[..100]).is_none());
        let icmp = ipv4(1, 64, [1, 1, 1, 1], [2, 2, 2, 2], &[0; 40]);
        assert!(segment(&icmp, 1400, &mut hdrs).is_none());
    }

    /// Runs `packets` through `j` as if received back to back, the device
    /// answering each write with `answer`; returns each write, whole.
    fn join_with(
        j: &mut Joiner,
        packets: &[Vec<u8>],
        answer: impl Fn(&[IoSlice<'_>]) -> Wrote,
    ) -> Vec<Vec<u8>> {
        let bufs: Vec<u8> = packets.concat();
        let mut out = Vec::new();
        let mut emit = |s: &[IoSlice<'_>]| {
            out.push(s.iter().flat_map(|x| x.to_vec()).collect());
            answer(s)
        };
        let mut at = 0;
        for p in packets {
            j.push(&bufs, at, p.len(), &mut emit);
            at += p.len();
        }
        j.flush(&bufs, &mut emit);
        out
    }

    /// A kernel without UDP super-packets: joined UDP runs are invalid.
    fn no_uso(s: &[IoSlice<'_>]) -> Wrote {
        let udp = s.first().and_then(|h| h.get(1)) == Some(&GSO_UDP_L4);
        if udp { Wrote::Invalid } else { Wrote::Taken }
    }

    #[test]
    fn a_kernel_that_refuses_joined_udp_runs_gets_them_one_by_one() {
        let run: Vec<Vec<u8>> = (0..3).map(|_| udp(9999, &data(500))).collect();
        let mut j = Joiner::default();
        let out = join_with(&mut j, &run, no_uso);
        assert!(joined(&[IoSlice::new(&out[0])]), "tried joined first");
        assert_eq!(out.len(), 4, "then each datagram alone");
        for (w, p) in out[1..].iter().zip(&run) {
            assert!(!joined(&[IoSlice::new(w)]));
            assert_eq!(&w[VNET_HDR_LEN..], &p[..]);
        }
        assert!(!j.udp && j.udp_refused() && !j.udp_refused());
        // From now on written one by one at once; TCP is still joined.
        assert_eq!(join_with(&mut j, &run, no_uso).len(), 3);
        let tcp_run = [tcp(false, 0, 0, &data(100)), tcp(false, 100, 0, &data(100))];
        assert_eq!(join_with(&mut j, &tcp_run, no_uso).len(), 1);
    }

    #[test]
    fn a_refusal_from_a_kernel_that_took_runs_or_of_the_packets_alone_changes_nothing() {
        let run: Vec<Vec<u8>> = (0..3).map(|_| udp(9999, &data(500))).collect();
        // The kernel took a joined run before: the refusal is about
        // these packets.
        let mut j = Joiner::default();
        assert_eq!(join_with(&mut j, &run, |_| Wrote::Taken).len(), 1);
        assert_eq!(join_with(&mut j, &run, no_uso).len(), 4);
        assert!(j.udp && !j.udp_refused());
        // Refused alone too: the packets, not the joining.
        let mut j = Joiner::default();
        assert_eq!(join_with(&mut j, &run, |_| Wrote::Invalid).len(), 4);
        assert!(j.udp && !j.udp_refused());
        // Nor does a refused TCP run, which goes again segment by segment.
        let mut j = Joiner::default();
        let tcp_run = [tcp(false, 0, 0, &data(100)), tcp(false, 100, 0, &data(100))];
        let out = join_with(&mut j, &tcp_run, |s| {
            if joined(s) {
                Wrote::Invalid
            } else {
                Wrote::Taken
            }
        });
        assert_eq!(out.len(), 3);
        assert_eq!(&out[2][VNET_HDR_LEN..], &tcp_run[1][..]);
        assert!(j.udp && !j.udp_refused());
    }
}
