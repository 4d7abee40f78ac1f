//! The forwarding threads: per TUN queue, one thread from the device to
//! the network and one per underlay family from the network to the
//! device. Buffers are allocated once; counters are added once per batch.

use std::fs::File;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::offload::{
    self, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN, VnetHdr,
    Wrote,
};
use super::sys::{self, BATCH, RecvBatch, SendBatch};
use super::table::{Reader, Refused};
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

/// Counts a packet that could not be passed on; logs the 1st, 2nd, 4th,
/// 8th... so a persistent failure shows without flooding the log.
fn forward_failed(health: &Health, what: std::fmt::Arguments<'_>, e: &io::Error, n: u64) {
    let before = health
        .metrics
        .udp_forward_errors
        .fetch_add(n, Ordering::Relaxed);
    let after = before + n;
    if (before + 1..=after).any(u64::is_power_of_two) {
        crate::warn!("udp: {what}: {e} ({after} packets lost so far)");
    }
}

/// A forwarding thread ended on an error: nothing passes any more until a
/// restart.
fn stopped(what: &str, e: &io::Error) {
    crate::error!("udp: {what}: {e}; the forwarder stopped (restart flanneld)");
}

/// Held by a forwarding thread: however it ends (an error, a panic), the
/// health endpoints learn of it.
struct Running(Arc<Health>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.forwarder_died("udp");
    }
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
    socks: Sockets,
    /// Small packets, copied, and the headers of cut super-packets.
    out: Vec<u8>,
    used: usize,
    /// Read buffers; `cur` is the next to read into.
    ring: Vec<Vec<u8>>,
    cur: usize,
    b4: SendBatch,
    b6: SendBatch,
    tally: Tally,
}

impl Sender {
    fn batch(&mut self, v4: bool) -> &mut SendBatch {
        if v4 { &mut self.b4 } else { &mut self.b6 }
    }

    /// Makes room for one more message to `to`'s family.
    fn room(&mut self, v4: bool, ctx: &Ctx) {
        if self.batch(v4).len() >= BATCH {
            self.send(v4, ctx);
        }
    }

    fn send(&mut self, v4: bool, ctx: &Ctx) {
        let Sender {
            socks,
            out,
            ring,
            b4,
            b6,
            ..
        } = self;
        let (batch, sock) = if v4 {
            (b4, socks.v4.as_ref())
        } else {
            (b6, socks.v6.as_ref())
        };
        if batch.is_empty() {
            return;
        }
        // Never: routes only name families we have a socket for.
        let Some(sock) = sock else {
            batch.clear();
            return;
        };
        let mut bufs: [&[u8]; 1 + RING] = [&[]; 1 + RING];
        bufs[OUT] = out;
        for (slot, r) in bufs[1..].iter_mut().zip(ring.iter()) {
            *slot = r;
        }
        let done = batch.flush(sock, &bufs);
        // Some devices refuse segmentation (EIO): without it from now.
        if let Some(e) = &done.unsegmented
            && ctx.off.gso.swap(false, Ordering::Relaxed)
        {
            crate::warn!(
                "udp: the kernel refused UDP segmentation ({e}): one datagram per send from now on"
            );
        }
        if let Some((e, to)) = &done.error {
            forward_failed(
                &ctx.health,
                format_args!("cannot send to {to}"),
                e,
                done.lost as u64,
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
    fn packet(&mut self, skip: usize, n: usize, reader: &mut Reader, tun: &mut File, ctx: &Ctx) {
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
    let Some(reply) = packet::unreachable(p) else {
        return;
    };
    let r = if ctx.off.vnet {
        tun.write_vectored(&[IoSlice::new(&[0; VNET_HDR_LEN]), IoSlice::new(&reply)])
    } else {
        tun.write(&reply)
    };
    if let Err(e) = r {
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
pub fn device_to_network(mut tun: File, socks: Sockets, mut reader: Reader, ctx: Ctx) {
    let _running = Running(ctx.health.clone());
    if let Err(e) = sys::set_nonblocking(tun.as_raw_fd()) {
        return stopped(&format!("cannot set up {TUN_NAME}"), &e);
    }
    let mut s = Sender {
        socks,
        out: vec![0; OUT_BUF],
        used: 0,
        ring: (0..RING)
            .map(|_| vec![0u8; VNET_HDR_LEN + sys::RECV_BUF])
            .collect(),
        cur: 0,
        b4: SendBatch::new(),
        b6: SendBatch::new(),
        tally: Tally::default(),
    };
    let skip = if ctx.off.vnet { VNET_HDR_LEN } else { 0 };
    loop {
        s.ready(&ctx);
        let n = match tun.read(&mut s.ring[s.cur]) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                s.send_all(&ctx);
                if let Err(e) = sys::wait_readable(tun.as_raw_fd())
                    && e.kind() != ErrorKind::Interrupted
                {
                    return stopped(&format!("cannot wait for {TUN_NAME}"), &e);
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return stopped(&format!("cannot read {TUN_NAME}"), &e),
        };
        if n > skip {
            s.packet(skip, n, &mut reader, &mut tun, &ctx);
        }
    }
}

/// After the kernel refused a joined run of UDP datagrams that it took
/// one by one, how long such runs are written one by one before joining
/// is tried again: a kernel without them costs a refused write (its
/// datagrams then written alone) a minute, and no single event turns
/// joining off for good.
const UDP_REJOIN: Duration = Duration::from_secs(60);

/// Receives datagrams in batches, admits them, and writes them to the
/// device, consecutive TCP segments joined into one write.
pub fn network_to_device(sock: UdpSocket, mut tun: File, mut reader: Reader, ctx: Ctx) {
    let _running = Running(ctx.health.clone());
    let mut batch = RecvBatch::new(16);
    let mut joiner = offload::Joiner::default();
    let mut tally = Tally::default();
    let mut failed: Option<io::Error> = None;
    let mut lost = 0u64;
    let mut rejoin: Option<Instant> = None;
    let mut said = false;
    loop {
        let n = match batch.recv(&sock) {
            Ok(n) => n,
            Err(e) => return stopped("cannot receive", &e),
        };
        if let Some(at) = rejoin
            && Instant::now() >= at
        {
            joiner.udp = true;
            rejoin = None;
        }
        let snap = reader.get();
        let bytes = batch.bytes();
        let mut write = |s: &[IoSlice<'_>]| match tun.write_vectored(s) {
            Ok(_) => Wrote::Taken,
            Err(e) => {
                let invalid = e.raw_os_error() == Some(nix::libc::EINVAL);
                // A joined write refused as invalid is the joiner's to
                // write again, packet by packet.
                if !(invalid && offload::joined(s)) {
                    // A packet for each payload behind the header.
                    lost += s.len().saturating_sub(1).max(1) as u64;
                    failed = Some(e);
                }
                if invalid {
                    Wrote::Invalid
                } else {
                    Wrote::Failed
                }
            }
        };
        for i in 0..n {
            let (from, start, len, seg) = batch.message(i);
            if len == 0 {
                tally.malformed += 1;
                continue;
            }
            let Some(peer) = from.and_then(|f| snap.sender(f)) else {
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
        if joiner.udp_refused() {
            rejoin = Some(Instant::now() + UDP_REJOIN);
            if !said {
                said = true;
                crate::warn!(
                    "udp: {TUN_NAME} refused a joined run of UDP datagrams it takes one by one (a kernel before 6.2): written one by one, joined again every {}s to try",
                    UDP_REJOIN.as_secs()
                );
            }
        }
        if let Some(e) = failed.take() {
            // The device is gone: nothing will ever be written again.
            if e.raw_os_error() == Some(nix::libc::EBADFD) {
                return stopped(&format!("cannot write {TUN_NAME}"), &e);
            }
            forward_failed(
                &ctx.health,
                format_args!("cannot write {TUN_NAME}"),
                &e,
                lost,
            );
            lost = 0;
        }
    }
}
