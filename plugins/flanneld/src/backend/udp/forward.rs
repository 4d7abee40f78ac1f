//! The forwarding threads: per TUN queue, one thread from the device to
//! the network and one per underlay family from the network to the
//! device. Buffers are allocated once; counters are added once per batch.

use std::fs::File;
use std::io::{self, IoSlice};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::offload::{
    self, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN, VnetHdr,
};
use super::relay::{self, DeviceWriter, Next, Outbound, Reader, Rejoin, Running};
use super::sys::{self, BATCH, RecvBatch, SendBatch};
use super::table::{Refused, Snapshot};
use super::{TUN_NAME, packet};
use crate::health::Health;

/// What the kernel offers, decided at start; segmentation can still be
/// turned off later, by the first send the kernel refuses.
#[derive(Debug)]
pub struct Offloads {
    /// Packets to and from the device carry a virtio-net header.
    pub vnet: bool,
    /// The kernel cuts runs of datagrams (`UDP_SEGMENT`).
    pub gso: AtomicBool,
}

/// Most bytes in one segmented send: the IP length field's limit, less
/// headers, with room to spare.
const GSO_MAX_BYTES: usize = 65000;
/// Most datagrams the kernel cuts from one send (`UDP_MAX_SEGMENTS` on
/// older kernels).
const GSO_MAX_SEGS: usize = 64;
/// Small packets and headers queued for sending, and the room the headers
/// of one super-packet may need.
const OUT_BUF: usize = 512 << 10;
const HDR_ROOM: usize = 128 << 10;

/// Counts packets that could not be passed on (logged 1st, 2nd, 4th...).
fn forward_failed(health: &Health, what: std::fmt::Arguments<'_>, e: &io::Error, n: u64) {
    relay::count_lost(&health.metrics.udp_forward_errors, "udp", what, e, n);
}

#[derive(Default)]
struct Tally {
    packets: u64,
    bytes: u64,
    malformed: u64,
    not_peer: u64,
    spoofed: u64,
    not_ours: u64,
}

impl Tally {
    fn refused(&mut self, why: Refused, n: u64) {
        match why {
            Refused::Malformed => self.malformed += n,
            Refused::NotAPeer => self.not_peer += n,
            Refused::Spoofed => self.spoofed += n,
            Refused::NotForThisNode => self.not_ours += n,
        }
    }

    fn add_to(&mut self, packets: &AtomicU64, bytes: &AtomicU64, h: &Health) {
        let m = &h.metrics;
        for (c, v) in [
            (packets, self.packets),
            (bytes, self.bytes),
            (&m.udp_drop_malformed, self.malformed),
            (&m.udp_drop_not_peer, self.not_peer),
            (&m.udp_drop_spoofed, self.spoofed),
            (&m.udp_drop_not_ours, self.not_ours),
        ] {
            if v > 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        }
        *self = Tally::default();
    }
}

/// The sockets of one queue: one per underlay family in use.
#[derive(Debug)]
pub struct Sockets {
    pub v4: Option<UdpSocket>,
    pub v6: Option<UdpSocket>,
}

/// Super-packets read before their datagrams must go (their payloads are
/// sent from where they were read).
const RING: usize = 4;
/// The buffer index of `out` in a batch's parts; ring buffer k is 1 + k.
const OUT: usize = 0;

/// Device to network.
struct Sender {
    net: Outbound,
    /// Small packets, copied, and the headers of cut super-packets.
    out: Vec<u8>,
    used: usize,
    /// Read buffers; `cur` is the next to read into.
    ring: Vec<Vec<u8>>,
    cur: usize,
    tally: Tally,
}

impl Sender {
    fn batch(&mut self, v4: bool) -> &mut SendBatch {
        self.net.batch(v4)
    }

    /// Makes room for one more message to `to`'s family.
    fn room(&mut self, v4: bool, ctx: &Ctx) {
        if self.batch(v4).len() >= BATCH {
            self.send(v4, ctx);
        }
    }

    fn send(&mut self, v4: bool, ctx: &Ctx) {
        let mut bufs: [&[u8]; 1 + RING] = [&[]; 1 + RING];
        bufs[OUT] = &self.out;
        for (slot, r) in bufs[1..].iter_mut().zip(self.ring.iter()) {
            *slot = r;
        }
        if let Some((e, to, lost)) = self.net.flush(v4, &bufs, &ctx.off.gso, "udp") {
            forward_failed(
                &ctx.health,
                format_args!("cannot send to {to}"),
                &e,
                lost as u64,
            );
        }
    }

    fn send_all(&mut self, ctx: &Ctx) {
        self.send(true, ctx);
        self.send(false, ctx);
        self.used = 0;
        self.cur = 0;
        let m = &ctx.health.metrics;
        self.tally
            .add_to(&m.udp_tx_packets, &m.udp_tx_bytes, &ctx.health);
    }

    /// Room for the next read: a free ring buffer and room in `out`.
    fn ready(&mut self, ctx: &Ctx) {
        if self.cur == RING || self.out.len() - self.used < HDR_ROOM + sys::RECV_BUF {
            self.send_all(ctx);
        }
    }

    /// The packet just read into the current ring buffer, `skip` bytes of
    /// header before it and `n` bytes in all. Patched in place, then queued:
    /// a small one copied to `out`, a super-packet as headers in `out` and
    /// its payload where it lies.
    fn packet(
        &mut self,
        skip: usize,
        n: usize,
        reader: &mut Reader<Snapshot>,
        tun: &mut File,
        ctx: &Ctx,
    ) {
        let cur = self.cur;
        let buf = &mut self.ring[cur];
        let hdr = if ctx.off.vnet {
            VnetHdr::read(buf).unwrap_or_default()
        } else {
            VnetHdr::default()
        };
        let p = &mut buf[skip..n];
        let Some(dst) = packet::destination(p) else {
            return;
        };
        let Some(to) = reader.get().route(dst) else {
            return unreachable(p, tun, ctx);
        };
        if !packet::decrement_hop(p) {
            return;
        }
        let v4 = to.is_ipv4();
        let gso = hdr.gso_type & !GSO_ECN;
        if gso == GSO_NONE {
            if hdr.flags & F_NEEDS_CSUM != 0
                && !offload::complete_checksum(
                    p,
                    usize::from(hdr.csum_start),
                    usize::from(hdr.csum_offset),
                )
            {
                self.tally.malformed += 1;
                return;
            }
            let Some(len) = packet::ip_len(p) else {
                self.tally.malformed += 1;
                return;
            };
            let start = self.used;
            self.out[start..start + len].copy_from_slice(&p[..len]);
            self.used += len;
            self.room(v4, ctx);
            self.batch(v4).push(to, 0, 1, [(OUT, start, len)]);
            self.tally.packets += 1;
            self.tally.bytes += len as u64;
            return;
        }
        if gso != GSO_TCPV4 && gso != GSO_TCPV6 && gso != GSO_UDP_L4 {
            self.tally.malformed += 1;
            return;
        }
        let base = self.used;
        let Some(cut) = offload::segment(
            p,
            usize::from(hdr.gso_size),
            &mut self.out[base..base + HDR_ROOM],
        ) else {
            self.tally.malformed += 1;
            return;
        };
        self.used += cut.count * cut.hdr;
        // Its payload is sent from here: the next read goes elsewhere.
        self.cur += 1;
        let parts = |i: usize| {
            let data = cut.payload_of(i);
            [
                (OUT, base + i * cut.hdr, cut.hdr),
                (1 + cur, skip + data.start, data.len()),
            ]
        };
        // Runs of whole datagrams the kernel cuts apart again, or one
        // datagram per message without segmentation.
        let per = if ctx.off.gso.load(Ordering::Relaxed) {
            (GSO_MAX_BYTES / cut.size()).clamp(1, GSO_MAX_SEGS)
        } else {
            1
        };
        let mut i = 0;
        while i < cut.count {
            let k = per.min(cut.count - i);
            self.room(v4, ctx);
            let seg = if k > 1 { cut.size() as u16 } else { 0 };
            self.batch(v4).push(to, seg, k, (i..i + k).flat_map(parts));
            i += k;
        }
        self.tally.packets += cut.count as u64;
        self.tally.bytes += (cut.count * cut.hdr + cut.payload) as u64;
    }
}

/// Answers a packet for a subnet nobody leases, as a router would.
fn unreachable(p: &[u8], tun: &mut File, ctx: &Ctx) {
    if let Err(e) = relay::answer_unreachable(p, tun, ctx.off.vnet) {
        forward_failed(
            &ctx.health,
            format_args!("cannot answer net unreachable"),
            &e,
            1,
        );
    }
}

/// What every thread shares.
#[derive(Debug)]
pub struct Ctx {
    pub health: Arc<Health>,
    pub off: Arc<Offloads>,
}

/// Reads the device's queue until it is empty, sending in batches; then
/// waits for more.
pub fn device_to_network(mut tun: File, socks: Sockets, mut reader: Reader<Snapshot>, ctx: Ctx) {
    let _running = Running(ctx.health.clone(), "udp");
    if let Err(e) = sys::set_nonblocking(tun.as_raw_fd()) {
        return relay::stopped("udp", &format!("cannot set up {TUN_NAME}"), &e);
    }
    let mut s = Sender {
        net: Outbound::new(socks),
        out: vec![0; OUT_BUF],
        used: 0,
        ring: (0..RING)
            .map(|_| vec![0u8; VNET_HDR_LEN + sys::RECV_BUF])
            .collect(),
        cur: 0,
        tally: Tally::default(),
    };
    let skip = if ctx.off.vnet { VNET_HDR_LEN } else { 0 };
    loop {
        s.ready(&ctx);
        match relay::read_device(&mut tun, &mut s.ring[s.cur], "udp", TUN_NAME) {
            Next::Packet(n) if n > skip => s.packet(skip, n, &mut reader, &mut tun, &ctx),
            Next::Packet(_) => {}
            Next::Empty => {
                s.send_all(&ctx);
                if !relay::wait_device(&tun, "udp", TUN_NAME) {
                    return;
                }
            }
            Next::Stop => return,
        }
    }
}

/// Receives datagrams in batches, admits them, and writes them to the
/// device, consecutive TCP segments joined into one write.
pub fn network_to_device(sock: UdpSocket, mut tun: File, mut reader: Reader<Snapshot>, ctx: Ctx) {
    let _running = Running(ctx.health.clone(), "udp");
    let mut batch = RecvBatch::new(16);
    let mut joiner = offload::Joiner::default();
    let mut tally = Tally::default();
    let mut out = DeviceWriter::default();
    let mut rejoin = Rejoin::default();
    loop {
        let n = match batch.recv(&sock) {
            Ok(n) => n,
            Err(e) => return relay::stopped("udp", "cannot receive", &e),
        };
        rejoin.before(&mut joiner);
        let snap = reader.get();
        let bytes = batch.bytes();
        let mut write = |s: &[IoSlice<'_>]| out.write(&mut tun, s);
        for i in 0..n {
            let (from, start, len, seg) = batch.message(i);
            if len == 0 {
                tally.malformed += 1;
                continue;
            }
            let Some(peer) = from.and_then(|f| snap.sender(f.ip())) else {
                tally.not_peer += len.div_ceil(seg) as u64;
                continue;
            };
            let mut at = start;
            while at < start + len {
                let d = seg.min(start + len - at);
                match snap.admit_from(peer, &bytes[at..at + d]) {
                    Ok(()) => {
                        tally.packets += 1;
                        tally.bytes += d as u64;
                        if ctx.off.vnet {
                            joiner.push(bytes, at, d, &mut write);
                        } else {
                            write(&[IoSlice::new(&bytes[at..at + d])]);
                        }
                    }
                    Err(why) => tally.refused(why, 1),
                }
                at += d;
            }
        }
        joiner.flush(bytes, &mut write);
        let m = &ctx.health.metrics;
        tally.add_to(&m.udp_rx_packets, &m.udp_rx_bytes, &ctx.health);
        rejoin.after(&mut joiner, "udp", TUN_NAME);
        match out.take() {
            Ok(None) => {}
            Ok(Some((e, lost))) => forward_failed(
                &ctx.health,
                format_args!("cannot write {TUN_NAME}"),
                &e,
                lost,
            ),
            // The device is gone: nothing will ever be written again.
            Err(e) => return relay::stopped("udp", &format!("cannot write {TUN_NAME}"), &e),
        }
    }
}
