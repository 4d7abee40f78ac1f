//! Reading and patching the inner IP packets the tunnel carries: their
//! addresses, the hop count, Internet checksums, and the "unreachable"
//! answer for a destination no peer leases.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// One's-complement sum of `data` read as big-endian 16-bit words (an odd
/// last byte padded with zero), added to `acc` and not yet folded.
/// The words are summed in the machine's own order, 32 bits at a time
/// (which the compiler vectorizes), and the folded result swapped: the
/// sum does not depend on byte order but for that swap (RFC 1071).
pub fn sum(data: &[u8], acc: u64) -> u64 {
    let mut words = data.chunks_exact(4);
    let mut s: u64 = 0;
    for w in &mut words {
        s += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    s += u64::from(u32::from_ne_bytes(tail));
    let folded = fold(s);
    acc + u64::from(if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    })
}

/// `acc` folded to 16 bits (end-around carry).
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// The checksum to write: zero is sent as 0xffff (the same value in
/// one's complement; UDP reads zero as "no checksum").
pub fn finish(acc: u64) -> u16 {
    match !fold(acc) {
        0 => 0xffff,
        c => c,
    }
}

/// The IP header's length and the transport protocol, for a packet of
/// either family; IPv6 extension headers are not followed (the protocol is
/// then whatever comes next, and no offload applies to it).
pub fn ip_header(p: &[u8]) -> Option<(usize, u8)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let hl = usize::from(p[0] & 0x0f) * 4;
            (hl >= 20 && p.len() >= hl).then_some((hl, p[9]))
        }
        6 if p.len() >= 40 => Some((40, p[6])),
        _ => None,
    }
}

/// The packet's length by its own header (the buffer may be longer);
/// `None` unless the buffer holds that much and it covers at least the
/// header (a shorter one is nothing the kernel takes: an IPv4 total
/// length of 0 would be written to the device as an empty packet).
pub fn ip_len(p: &[u8]) -> Option<usize> {
    let n = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let n = usize::from(u16::from_be_bytes([p[2], p[3]]));
            let hl = usize::from(p[0] & 0x0f) * 4;
            if hl < 20 || n < hl {
                return None;
            }
            n
        }
        6 if p.len() >= 40 => 40 + usize::from(u16::from_be_bytes([p[4], p[5]])),
        _ => return None,
    };
    (n <= p.len()).then_some(n)
}

pub fn source(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(IpAddr::V4(v4_at(p, 12))),
        6 if p.len() >= 40 => Some(IpAddr::V6(v6_at(p, 8))),
        _ => None,
    }
}

pub fn destination(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(IpAddr::V4(v4_at(p, 16))),
        6 if p.len() >= 40 => Some(IpAddr::V6(v6_at(p, 24))),
        _ => None,
    }
}

fn v4_at(p: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3])
}

fn v6_at(p: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&p[at..at + 16]);
    Ipv6Addr::from(o)
}

/// The unfolded sum of the pseudo-header for a transport segment of
/// `len` bytes of protocol `proto` inside the IP packet `p`.
pub fn pseudo_sum(p: &[u8], proto: u8, len: usize) -> u64 {
    let addrs = if p[0] >> 4 == 4 {
        &p[12..20]
    } else {
        &p[8..40]
    };
    sum(addrs, u64::from(proto) + len as u64)
}

/// Recomputes an IPv4 header's checksum.
pub fn fix_ipv4_checksum(p: &mut [u8], hl: usize) {
    p[10] = 0;
    p[11] = 0;
    let c = checksum(&p[..hl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Forwarding as a router does: TTL (or hop limit) down by one, the IPv4
/// header checksum patched (RFC 1624). `false` when the packet must not go
/// on.
pub fn decrement_hop(p: &mut [u8]) -> bool {
    match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 && p[8] > 1 => {
            let old = u16::from_be_bytes([p[8], p[9]]);
            p[8] -= 1;
            let new = u16::from_be_bytes([p[8], p[9]]);
            let hc = u16::from_be_bytes([p[10], p[11]]);
            let acc = u64::from(!hc) + u64::from(!old) + u64::from(new);
            p[10..12].copy_from_slice(&(!fold(acc)).to_be_bytes());
            true
        }
        Some(6) if p.len() >= 40 && p[7] > 1 => {
            p[7] -= 1;
            true
        }
        _ => false,
    }
}

/// A "destination network unreachable" (ICMP 3/0, or ICMPv6 1/0 "no
/// route") to the sender of `p`, quoting it as much as the family asks. It
/// comes from the unreachable address itself: our own would be dropped by
/// the kernel as a martian when written back into the device. Never an
/// answer to an error.
pub fn unreachable(p: &[u8]) -> Option<Vec<u8>> {
    let (hl, proto) = ip_header(p)?;
    let len = ip_len(p).unwrap_or(p.len());
    if p[0] >> 4 == 4 {
        if len < hl + 1 || (proto == PROTO_ICMP && p[hl] != 8) {
            return None;
        }
        let quoted = &p[..len.min(hl + 8)];
        let mut icmp = vec![3u8, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quoted);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let total = u16::try_from(20 + icmp.len()).ok()?;
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, PROTO_ICMP, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&p[16..20]);
        ip.extend_from_slice(&p[12..16]);
        fix_ipv4_checksum(&mut ip, 20);
        ip.extend_from_slice(&icmp);
        return Some(ip);
    }
    // ICMPv6 errors (types below 128) are never answered.
    if len < hl + 1 || (proto == PROTO_ICMPV6 && p[hl] < 128) {
        return None;
    }
    // The whole answer within the IPv6 minimum MTU (RFC 4443).
    let quoted = &p[..len.min(1280 - 48)];
    let icmp_len = 8 + quoted.len();
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&u16::try_from(icmp_len).ok()?.to_be_bytes());
    ip.extend_from_slice(&[PROTO_ICMPV6, 64]);
    ip.extend_from_slice(&p[24..40]);
    ip.extend_from_slice(&p[8..24]);
    ip.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    ip.extend_from_slice(quoted);
    let acc = sum(&ip[40..], pseudo_sum(&ip, PROTO_ICMPV6, icmp_len));
    let c = !fold(acc);
    ip[42..44].copy_from_slice(&c.to_be_bytes());
    Some(ip)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A naive reference: 16-bit words, one at a time.
    fn slow(data: &[u8]) -> u16 {
        let mut s: u32 = data
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    pub fn ipv4(proto: u8, ttl: u8, src: [u8; 4], dst: [u8; 4], body: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, ttl, proto, 0, 0];
        p[2..4].copy_from_slice(&u16::try_from(20 + body.len()).unwrap().to_be_bytes());
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        fix_ipv4_checksum(&mut p, 20);
        p.extend_from_slice(body);
        p
    }

    pub fn ipv6(proto: u8, hops: u8, src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        p.extend_from_slice(&[proto, hops]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn the_fast_sum_agrees_with_the_plain_one_at_every_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 97 + 13) as u8).collect();
        for n in 0..data.len() {
            for start in 0..3 {
                let d = &data[start.min(n)..n];
                assert_eq!(checksum(d), slow(d), "length {n} from {start}");
            }
        }
        let ones = vec![0xffu8; 65536];
        assert_eq!(checksum(&ones), slow(&ones));
    }

    #[test]
    fn the_hop_count_goes_down_and_the_checksum_stays_right() {
        let mut p = ipv4(
            PROTO_ICMP,
            64,
            [10, 244, 1, 2],
            [10, 244, 9, 9],
            &[8, 0, 0, 0],
        );
        assert!(decrement_hop(&mut p));
        assert_eq!(p[8], 63);
        assert_eq!(checksum(&p[..20]), 0, "a valid header sums to zero");
        let mut last = ipv4(PROTO_ICMP, 1, [10, 244, 1, 2], [10, 244, 9, 9], &[]);
        assert!(!decrement_hop(&mut last));
        let a: Ipv6Addr = "fd00:244:0:1::2".parse().unwrap();
        let mut v6 = ipv6(PROTO_TCP, 2, a, a, &[]);
        assert!(decrement_hop(&mut v6));
        assert_eq!(v6[7], 1);
        assert!(!decrement_hop(&mut v6));
    }

    #[test]
    fn unreachable_answers_the_sender_and_never_an_error() {
        let p = ipv4(
            PROTO_ICMP,
            64,
            [10, 244, 1, 2],
            [10, 244, 9, 9],
            &[8, 0, 0, 0, 0, 0, 0, 0],
        );
        let reply = unreachable(&p).unwrap();
        assert_eq!(&reply[12..16], &[10, 244, 9, 9]);
        assert_eq!(&reply[16..20], &[10, 244, 1, 2]);
        assert_eq!((reply[20], reply[21]), (3, 0));
        assert_eq!(checksum(&reply[..20]), 0);
        assert_eq!(checksum(&reply[20..]), 0);
        let error = ipv4(
            PROTO_ICMP,
            64,
            [10, 244, 1, 2],
            [10, 244, 9, 9],
            &[3, 0, 0, 0],
        );
        assert!(unreachable(&error).is_none());
    }

    #[test]
    fn unreachable_in_ipv6_is_icmpv6_no_route_with_a_valid_checksum() {
        let src: Ipv6Addr = "fd00:244:0:1::2".parse().unwrap();
        let dst: Ipv6Addr = "fd00:244:0:99::9".parse().unwrap();
        let p = ipv6(PROTO_ICMPV6, 64, src, dst, &[128, 0, 0, 0, 0, 1, 0, 1]);
        let r = unreachable(&p).unwrap();
        assert_eq!(source(&r), Some(IpAddr::V6(dst)));
        assert_eq!(destination(&r), Some(IpAddr::V6(src)));
        assert_eq!((r[6], r[40], r[41]), (PROTO_ICMPV6, 1, 0));
        assert_eq!(ip_len(&r), Some(r.len()));
        let acc = sum(&r[40..], pseudo_sum(&r, PROTO_ICMPV6, r.len() - 40));
        assert_eq!(fold(acc), 0xffff, "the checksum verifies");
        let error = ipv6(PROTO_ICMPV6, 64, src, dst, &[1, 0, 0, 0]);
        assert!(unreachable(&error).is_none());
    }

    #[test]
    fn reads_addresses_of_both_families() {
        let p = ipv4(PROTO_TCP, 64, [10, 244, 1, 2], [10, 244, 3, 7], &[]);
        assert_eq!(destination(&p), Some("10.244.3.7".parse().unwrap()));
        assert_eq!(source(&p), Some("10.244.1.2".parse().unwrap()));
        assert_eq!(destination(&p[..10]), None);
        assert_eq!(ip_header(&p), Some((20, PROTO_TCP)));
        let a: Ipv6Addr = "fd00::1".parse().unwrap();
        let b: Ipv6Addr = "fd00::2".parse().unwrap();
        let v6 = ipv6(PROTO_TCP, 64, a, b, &[0; 4]);
        assert_eq!(destination(&v6), Some(IpAddr::V6(b)));
        assert_eq!(ip_len(&v6), Some(44));
        assert_eq!(ip_len(&v6[..43]), None);
        assert_eq!(destination(&[0x20u8; 40]), None);
    }

    #[test]
    fn a_length_shorter_than_the_header_is_refused() {
        let p = ipv4(PROTO_UDP, 64, [10, 244, 1, 2], [10, 244, 2, 3], &[0; 12]);
        assert_eq!(ip_len(&p), Some(32));
        let with_total = |p: &[u8], n: u16| {
            let mut q = p.to_vec();
            q[2..4].copy_from_slice(&n.to_be_bytes());
            q
        };
        assert_eq!(ip_len(&with_total(&p, 20)), Some(20), "a header alone");
        for n in [0, 1, 19] {
            assert_eq!(ip_len(&with_total(&p, n)), None, "total length {n}");
        }
        // Options: a 24-byte header.
        let mut opt = with_total(&p, 24);
        opt[0] = 0x46;
        assert_eq!(ip_len(&opt), Some(24));
        assert_eq!(ip_len(&with_total(&opt, 23)), None);
        // A header length below the minimum.
        let mut tiny = p.clone();
        tiny[0] = 0x44;
        assert_eq!(ip_len(&tiny), None);
        // IPv6: never shorter than its fixed header.
        let a: Ipv6Addr = "fd00::1".parse().unwrap();
        assert_eq!(ip_len(&ipv6(PROTO_UDP, 64, a, a, &[])), Some(40));
    }
}
