//! The forwarding threads of one device: per queue, one from the device to
//! the network (cut super-packets, encrypt each packet under its peer's
//! session, send runs of equal datagrams as one segmented send) and one
//! per socket from the network to the device (decrypt, check the inner
//! addresses, join TCP segments back into super-packets); and one timer
//! thread for every device (handshake retries, rekeys, keepalives, and
//! what `/readyz` says about peers that fail to authenticate).

use std::fs::File;
use std::io::{self, ErrorKind, IoSlice};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};

use super::gate::{Budget, Refused};
use super::peers::{Live, Peer, Snapshot, Table};
use crate::backend::udp::offload::{
    self, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN, VnetHdr,
};
use crate::backend::udp::packet;
use crate::backend::udp::relay::{self, DeviceWriter, Next, Outbound, Reader, Rejoin, Running};
use crate::backend::udp::sys::{self, BATCH, RecvBatch, SendBatch};
use crate::backend::udp::{Offloads, Sockets};
use crate::health::{Health, WgMetrics};

/// WireGuard's data message: type, receiver, counter before the
/// ciphertext, the tag after it.
const DATA_OVERHEAD: usize = 32;
const MSG_RESPONSE: u8 = 2;
const MSG_DATA: u8 = 4;
/// A cookie reply's length.
const COOKIE_REPLY: usize = 64;
/// Most bytes and datagrams in one segmented send.
const GSO_MAX_BYTES: usize = 65000;
const GSO_MAX_SEGS: usize = 64;
/// Encrypted datagrams queued for sending.
const OUT_BUF: usize = 1 << 20;
/// Room one super-packet may take in `out` once encrypted.
const SUPER_ROOM: usize = 96 << 10;
/// Room the cut headers of one super-packet may take.
const HDR_ROOM: usize = 128 << 10;
/// Messages per receive.
const RECV_SLOTS: usize = 16;

/// What every forwarding thread of a device shares.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub health: Arc<Health>,
    pub off: Arc<Offloads>,
    pub dev: &'static str,
    /// The device's MTU: what packets are padded up to at most.
    pub mtu: usize,
}

impl Ctx {
    fn m(&self) -> &WgMetrics {
        &self.health.metrics.wg
    }
}

const TAG: &str = "wireguard";

/// Counts packets that could not be passed on (logged 1st, 2nd, 4th...).
fn send_failed(ctx: &Ctx, what: std::fmt::Arguments<'_>, e: &io::Error, n: u64) {
    relay::count_lost(&ctx.m().drop_send_failed, TAG, what, e, n);
}

/// Sends one handshake or keepalive message on whichever socket has the
/// endpoint's family.
fn send_one(socks: &Sockets, to: SocketAddr, msg: &[u8], ctx: &Ctx) {
    let sock = if to.is_ipv4() { &socks.v4 } else { &socks.v6 };
    let r = match sock {
        Some(s) => s.send_to(msg, to).map(|_| ()),
        None => Err(io::Error::from(ErrorKind::AddrNotAvailable)),
    };
    if let Err(e) = r {
        send_failed(ctx, format_args!("cannot send to {to}"), &e, 1);
    }
}

/// Datagrams bound for one peer, consecutive in `out`: all of one size
/// but the last, which may be shorter (what one segmented send carries).
#[derive(Debug, Clone, Copy)]
struct Run {
    to: SocketAddr,
    start: usize,
    size: usize,
    count: usize,
    end: usize,
    /// A shorter datagram closed it.
    closed: bool,
}

/// Device to network.
struct Sender {
    net: Outbound,
    out: Vec<u8>,
    used: usize,
    run: Option<Run>,
    hdrs: Vec<u8>,
    packets: u64,
    bytes: u64,
    malformed: u64,
}

impl Sender {
    fn batch(&mut self, v4: bool) -> &mut SendBatch {
        self.net.batch(v4)
    }

    /// Queues the open run as one message.
    fn close_run(&mut self, ctx: &Ctx) {
        let Some(r) = self.run.take() else {
            return;
        };
        let v4 = r.to.is_ipv4();
        if self.batch(v4).len() >= BATCH {
            self.send(v4, ctx);
        }
        let seg = if r.count > 1 { r.size as u16 } else { 0 };
        let parts = (0..r.count).map(|i| {
            let at = r.start + i * r.size;
            (0, at, r.size.min(r.end - at))
        });
        self.batch(v4).push(r.to, seg, r.count, parts);
    }

    /// The datagram just written at `out[start..start + len]`, for `to`.
    fn add(&mut self, to: SocketAddr, start: usize, len: usize, ctx: &Ctx) {
        if let Some(r) = &mut self.run
            && r.to == to
            && r.end == start
            && !r.closed
            && len <= r.size
            && r.count < GSO_MAX_SEGS
            && r.end - r.start + len <= GSO_MAX_BYTES
            && ctx.off.gso.load(Ordering::Relaxed)
        {
            r.count += 1;
            r.end += len;
            r.closed = len < r.size;
            return;
        }
        self.close_run(ctx);
        self.run = Some(Run {
            to,
            start,
            size: len,
            count: 1,
            end: start + len,
            closed: false,
        });
    }

    fn send(&mut self, v4: bool, ctx: &Ctx) {
        if let Some((e, to, lost)) = self.net.flush(v4, &[&self.out], &ctx.off.gso, TAG) {
            send_failed(ctx, format_args!("cannot send to {to}"), &e, lost as u64);
        }
    }

    fn send_all(&mut self, ctx: &Ctx) {
        self.close_run(ctx);
        self.send(true, ctx);
        self.send(false, ctx);
        self.used = 0;
        let m = ctx.m();
        for (c, v) in [
            (&m.tx_packets, &mut self.packets),
            (&m.tx_bytes, &mut self.bytes),
            (&m.drop_malformed, &mut self.malformed),
        ] {
            if *v > 0 {
                c.fetch_add(*v, Ordering::Relaxed);
                *v = 0;
            }
        }
    }

    /// Encrypts the packet at `room[..len]` for `peer` (under its lock,
    /// held by the caller) into `out` and queues it. Zeros after it pad it
    /// to a multiple of 16 bytes, at most the device's MTU, as the
    /// protocol asks (so the wire shows packet sizes only that coarsely);
    /// the receiver trims them by the IP length.
    fn seal(&mut self, live: &mut Live, peer: &Peer, room: &mut [u8], len: usize, ctx: &Ctx) {
        let padded = len
            .next_multiple_of(16)
            .min(ctx.mtu)
            .max(len)
            .min(room.len());
        room[len..padded].fill(0);
        let start = self.used;
        let to = live.endpoint(peer.endpoint);
        let sealed = match live.encapsulate(&room[..padded], &mut self.out[start..]) {
            TunnResult::WriteToNetwork(d) => d.len(),
            // Queued until the handshake in progress completes.
            TunnResult::Done => return,
            TunnResult::Err(_) => {
                self.malformed += 1;
                return;
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => return,
        };
        if self.out[start] != MSG_DATA {
            // A handshake initiation: the packet waits in the session's
            // queue until it completes.
            self.close_run(ctx);
            self.used += sealed;
            self.add(to, start, sealed, ctx);
            self.close_run(ctx);
            return;
        }
        self.used += sealed;
        self.packets += 1;
        self.bytes += len as u64;
        self.add(to, start, sealed, ctx);
    }

    /// The packet at `buf[skip..n]`: to its peer, or answered as
    /// unreachable.
    fn packet(
        &mut self,
        buf: &mut [u8],
        skip: usize,
        n: usize,
        snap: &Snapshot,
        tun: &mut File,
        ctx: &Ctx,
    ) {
        let hdr = if ctx.off.vnet {
            VnetHdr::read(buf).unwrap_or_default()
        } else {
            VnetHdr::default()
        };
        let p = &mut buf[skip..n];
        let Some(dst) = packet::destination(p) else {
            return;
        };
        let Some(peer) = snap.route(dst) else {
            return unreachable(p, tun, ctx);
        };
        if !packet::decrement_hop(p) {
            return;
        }
        let gso = hdr.gso_type & !GSO_ECN;
        let session = peer.session.clone();
        if gso == GSO_NONE {
            if hdr.flags & F_NEEDS_CSUM != 0
                && !offload::complete_checksum(
                    p,
                    usize::from(hdr.csum_start),
                    usize::from(hdr.csum_offset),
                )
            {
                self.malformed += 1;
                return;
            }
            let Some(len) = packet::ip_len(p) else {
                self.malformed += 1;
                return;
            };
            return session.with_tunn(|tunn| self.seal(tunn, peer, &mut buf[skip..], len, ctx));
        }
        if gso != GSO_TCPV4 && gso != GSO_TCPV6 && gso != GSO_UDP_L4 {
            self.malformed += 1;
            return;
        }
        let mut hdrs = std::mem::take(&mut self.hdrs);
        match offload::segment(p, usize::from(hdr.gso_size), &mut hdrs) {
            Some(cut) if cut.payload_of(0).start >= cut.hdr => session.with_tunn(|tunn| {
                // Each packet is made whole where it lies: its headers go
                // just before its payload, over the tail of the payload
                // before it (sealed already), so nothing is copied twice.
                let room = &mut buf[skip..];
                for i in 0..cut.count {
                    let data = cut.payload_of(i);
                    let at = data.start - cut.hdr;
                    room[at..data.start].copy_from_slice(&hdrs[i * cut.hdr..(i + 1) * cut.hdr]);
                    let (len, end) = (data.end - at, data.end);
                    // The padding goes over the next payload's head: kept.
                    let keep = 16.min(room.len() - end);
                    let mut saved = [0u8; 16];
                    saved[..keep].copy_from_slice(&room[end..end + keep]);
                    self.seal(tunn, peer, &mut room[at..], len, ctx);
                    room[end..end + keep].copy_from_slice(&saved[..keep]);
                }
            }),
            _ => self.malformed += 1,
        }
        self.hdrs = hdrs;
    }
}

/// Answers a packet for a subnet no peer holds, as a router would.
fn unreachable(p: &[u8], tun: &mut File, ctx: &Ctx) {
    if let Err(e) = relay::answer_unreachable(p, tun, ctx.off.vnet) {
        send_failed(
            ctx,
            format_args!("cannot answer net unreachable on {}", ctx.dev),
            &e,
            1,
        );
    }
}

/// Reads the device's queue until it is empty, sending in batches; then
/// waits for more.
pub fn device_to_network(mut tun: File, socks: Sockets, mut reader: Reader<Snapshot>, ctx: Ctx) {
    let _running = Running(ctx.health.clone(), TAG);
    if let Err(e) = sys::set_nonblocking(tun.as_raw_fd()) {
        return relay::stopped(TAG, &format!("cannot set up {}", ctx.dev), &e);
    }
    let mut s = Sender {
        net: Outbound::new(socks),
        out: vec![0; OUT_BUF],
        used: 0,
        run: None,
        hdrs: vec![0; HDR_ROOM],
        packets: 0,
        bytes: 0,
        malformed: 0,
    };
    let mut buf = vec![0u8; VNET_HDR_LEN + sys::RECV_BUF];
    let skip = if ctx.off.vnet { VNET_HDR_LEN } else { 0 };
    loop {
        if s.out.len() - s.used < SUPER_ROOM {
            s.send_all(&ctx);
        }
        match relay::read_device(&mut tun, &mut buf, TAG, ctx.dev) {
            Next::Packet(n) if n > skip => {
                let snap = reader.get();
                s.packet(&mut buf, skip, n, snap, &mut tun, &ctx);
            }
            Next::Packet(_) => {}
            Next::Empty => {
                s.send_all(&ctx);
                if !relay::wait_device(&tun, TAG, ctx.dev) {
                    return;
                }
            }
            Next::Stop => return,
        }
    }
}

/// What the receiving side counts, added to the metrics once per batch.
#[derive(Default)]
struct Tally {
    packets: u64,
    bytes: u64,
    handshakes: u64,
    malformed: u64,
    unknown: u64,
    auth: u64,
    replayed: u64,
    spoofed: u64,
    not_ours: u64,
    bad_mac: u64,
    under_load: u64,
    rate_limited: u64,
    over_budget: u64,
}

impl Tally {
    fn add_to(&mut self, m: &WgMetrics) {
        for (c, v) in [
            (&m.rx_packets, self.packets),
            (&m.rx_bytes, self.bytes),
            (&m.handshakes, self.handshakes),
            (&m.drop_malformed, self.malformed),
            (&m.drop_unknown_peer, self.unknown),
            (&m.drop_auth_failed, self.auth),
            (&m.drop_replayed, self.replayed),
            (&m.drop_spoofed, self.spoofed),
            (&m.drop_not_ours, self.not_ours),
            (&m.drop_bad_mac, self.bad_mac),
            (&m.drop_under_load, self.under_load),
            (&m.drop_rate_limited, self.rate_limited),
            (&m.drop_over_budget, self.over_budget),
        ] {
            if v > 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        }
        *self = Tally::default();
    }

    fn error(&mut self, e: &WireGuardError) {
        match e {
            WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => self.replayed += 1,
            WireGuardError::InvalidAeadTag
            | WireGuardError::InvalidMac
            | WireGuardError::WrongKey
            | WireGuardError::InvalidTai64nTimestamp
            | WireGuardError::WrongTai64nTimestamp => self.auth += 1,
            WireGuardError::NoCurrentSession
            | WireGuardError::WrongIndex
            | WireGuardError::UnexpectedPacket => self.unknown += 1,
            _ => self.malformed += 1,
        }
    }
}

/// A handshake response from `peer` did not authenticate: said once per
/// failing spell, and on `/readyz` (by the timer thread) until one does.
fn handshake_failed(peer: &Peer, why: &str, ctx: &Ctx) {
    let s = &peer.session;
    s.failing.store(true, Ordering::Relaxed);
    if !s.said.swap(true, Ordering::Relaxed) {
        crate::error!(
            "wireguard: the handshake with {} (key {}) on {} fails: {why}; check that both nodes have the same Backend.PSK",
            peer.endpoint,
            super::key::encode(&peer.key),
            ctx.dev
        );
    }
}

/// The peer now talks to us: clears a failing spell.
fn handshake_done(peer: &Peer, tally: &mut Tally) {
    let s = &peer.session;
    tally.handshakes += 1;
    s.answered.store(0, Ordering::Relaxed);
    if s.failing.swap(false, Ordering::Relaxed) {
        s.said.store(false, Ordering::Relaxed);
        crate::info!(
            "wireguard: the handshake with {} completes again",
            peer.endpoint
        );
    }
}

/// Answered handshake initiations in a row, with no data after any of
/// them, before the peer counts as failing (it cannot use our responses).
const UNANSWERED_INITS: u64 = 3;

/// Receives datagrams in batches, decrypts, admits and writes them to the
/// device, consecutive TCP segments joined into one write.
/// `replies`: the queue's sockets, for handshake messages to peers of
/// either family.
pub fn network_to_device(
    sock: UdpSocket,
    replies: Sockets,
    mut tun: File,
    table: Arc<Table>,
    ctx: Ctx,
) {
    let _running = Running(ctx.health.clone(), TAG);
    let mut reader = table.reader();
    let mut batch = RecvBatch::new(RECV_SLOTS);
    let mut plain = vec![0u8; RECV_SLOTS * sys::RECV_BUF];
    let mut small = vec![0u8; sys::RECV_BUF + DATA_OVERHEAD];
    let mut wrote: Vec<(usize, usize)> = Vec::with_capacity(RECV_SLOTS * GSO_MAX_SEGS);
    let mut joiner = offload::Joiner::default();
    let mut tally = Tally::default();
    let mut out = DeviceWriter::default();
    let mut rejoin = Rejoin::default();
    let mut lanes = Lanes::new();
    loop {
        let n = match batch.recv(&sock) {
            Ok(n) => n,
            Err(e) => return relay::stopped(TAG, "cannot receive", &e),
        };
        rejoin.before(&mut joiner);
        let snap = reader.get();
        let bytes = batch.bytes();
        // Decrypted packets go to `plain` at `at`, then to the joiner.
        let mut at = 0;
        wrote.clear();
        for i in 0..n {
            let (from, start, len, seg) = batch.message(i);
            let mut d0 = start;
            while d0 < start + len {
                let d = seg.min(start + len - d0);
                let datagram = &bytes[d0..d0 + d];
                d0 += d;
                let bufs = Bufs {
                    data: &mut plain[at..at + d],
                    small: &mut small,
                };
                // Anything but data is timed against its lane's budget.
                let mut lane = lanes
                    .lane(datagram, from, snap)
                    .map(|l| (l, Instant::now()));
                if let Some((l, began)) = &mut lane
                    && !l.allows(*began)
                {
                    tally.over_budget += 1;
                    continue;
                }
                if let Some(len) = receive(
                    datagram, from, snap, &table, bufs, &replies, &mut tally, &ctx,
                ) {
                    wrote.push((at, len));
                    at += len;
                }
                if let Some((l, began)) = lane {
                    l.spend(began.elapsed());
                }
            }
        }
        let mut write = |s: &[IoSlice<'_>]| out.write(&mut tun, s);
        for &(a, l) in &wrote {
            if ctx.off.vnet {
                joiner.push(&plain, a, l, &mut write);
            } else {
                write(&[IoSlice::new(&plain[a..a + l])]);
            }
        }
        joiner.flush(&plain, &mut write);
        tally.add_to(ctx.m());
        rejoin.after(&mut joiner, TAG, ctx.dev);
        match out.take() {
            Ok(None) => {}
            Ok(Some((e, lost))) => {
                send_failed(&ctx, format_args!("cannot write {}", ctx.dev), &e, lost)
            }
            Err(e) => return relay::stopped(TAG, &format!("cannot write {}", ctx.dev), &e),
        }
    }
}

/// A receiving thread's budgets for what is not data (see [`Budget`]).
struct Lanes {
    peers: Budget,
    others: Budget,
}

impl Lanes {
    fn new() -> Lanes {
        let now = Instant::now();
        Lanes {
            peers: Budget::new(now),
            others: Budget::new(now),
        }
    }

    /// The budget `datagram` is handled under: none for data messages
    /// (their cost is bounded by what they carry, and a forged one costs
    /// a lookup and a failed decryption at most).
    fn lane(
        &mut self,
        datagram: &[u8],
        from: Option<SocketAddr>,
        snap: &Snapshot,
    ) -> Option<&mut Budget> {
        if datagram.first() == Some(&MSG_DATA) {
            return None;
        }
        match from {
            Some(a) if snap.is_peer_host(a.ip()) => Some(&mut self.peers),
            _ => Some(&mut self.others),
        }
    }
}

/// Where a received datagram's results go: a data message's inner packet
/// to `data`, handshake replies and packets that waited for a handshake
/// to `small`.
struct Bufs<'a> {
    data: &'a mut [u8],
    small: &'a mut [u8],
}

/// One datagram from the network: handled, and the length of the inner
/// packet it left in `bufs.data` for the device, if any.
#[allow(clippy::too_many_arguments)]
fn receive(
    datagram: &[u8],
    from: Option<SocketAddr>,
    snap: &Snapshot,
    table: &Table,
    bufs: Bufs<'_>,
    socks: &Sockets,
    tally: &mut Tally,
    ctx: &Ctx,
) -> Option<usize> {
    let packet = match Tunn::parse_incoming_packet(datagram) {
        Ok(p) => p,
        Err(_) => {
            tally.malformed += 1;
            return None;
        }
    };
    if let Packet::HandshakeInit(_) = packet {
        // Before any key exchange: refused unless its first MAC is for
        // our key, answered with a cookie under a flood.
        let mut cookie = [0u8; COOKIE_REPLY];
        match table.gate.check(from, datagram, &mut cookie) {
            Ok(()) => {}
            Err(Refused::Cookie(reply)) => {
                if let Some(to) = from {
                    send_one(socks, to, reply, ctx);
                }
                tally.under_load += 1;
                return None;
            }
            Err(Refused::BadMac) => {
                tally.bad_mac += 1;
                return None;
            }
            Err(Refused::SourceLimited) => {
                tally.rate_limited += 1;
                return None;
            }
        }
    }
    let peer = match &packet {
        Packet::PacketData(p) => snap.by_receiver(p.receiver_idx),
        Packet::HandshakeResponse(p) => snap.by_receiver(p.receiver_idx),
        Packet::PacketCookieReply(p) => snap.by_receiver(p.receiver_idx),
        Packet::HandshakeInit(p) => {
            let id = &table.identity;
            match parse_handshake_anon(&id.secret, &id.public, p) {
                Ok(half) => snap.by_key(&half.peer_static_public),
                Err(e) => {
                    tally.error(&e);
                    return None;
                }
            }
        }
    };
    let kind = match packet {
        Packet::HandshakeInit(_) => 1,
        Packet::HandshakeResponse(_) => 2,
        Packet::PacketCookieReply(_) => 3,
        Packet::PacketData(_) => 4,
    };
    let Some(peer) = peer else {
        tally.unknown += 1;
        if kind == 4
            && let Some(from) = from
        {
            // The peer whose lease names `from`; else every peer at its
            // address (behind NAT, a peer sends from a port its router
            // chose): the others' greetings are refused there unread
            // (made for another key).
            let exact = snap.at_host(from.ip()).find(|p| p.endpoint == from);
            match exact {
                Some(p) => greet(p, from, socks, ctx),
                None => snap
                    .at_host(from.ip())
                    .for_each(|p| greet(p, from, socks, ctx)),
            }
        }
        return None;
    };
    peer.session.with_tunn(|live| {
        deliver(
            live, peer, kind, datagram, from, bufs, table, socks, tally, ctx,
        )
    })
}

/// A handshake with `peer`, sent to `to`, unless we have a session with it
/// or a handshake is in progress (so that replayed old messages cannot make
/// handshake after handshake). For a peer's data under a session we do not
/// have, `to` is where the data came from: we restarted (or it did not
/// notice ours expire), and it would go on for 15 s before its own timers
/// give up on it; behind NAT that is also where its lease does not say.
/// With a keepalive, every peer is greeted at its lease from the start.
fn greet(peer: &Peer, to: SocketAddr, socks: &Sockets, ctx: &Ctx) {
    let mut buf = [0u8; 256];
    peer.session.with_tunn(|live| {
        if live.stats().0.is_none()
            && let TunnResult::WriteToNetwork(p) = live.format_handshake_initiation(&mut buf, false)
        {
            send_one(socks, to, p, ctx);
        }
    });
}

/// A message for `peer`, `kind` its type, through its Noise state. One
/// that authenticates and is fresh moves the peer's endpoint to where it
/// came from (WireGuard's roaming: a node behind NAT is answered at the
/// port its router chose).
#[allow(clippy::too_many_arguments)]
fn deliver(
    live: &mut Live,
    peer: &Peer,
    kind: u8,
    datagram: &[u8],
    from: Option<SocketAddr>,
    bufs: Bufs<'_>,
    table: &Table,
    socks: &Sockets,
    tally: &mut Tally,
    ctx: &Ctx,
) -> Option<usize> {
    let Bufs { data, small } = bufs;
    let out: &mut [u8] = if kind == 4 { data } else { &mut *small };
    let r = live.decapsulate(from.map(|a| a.ip()), datagram, out);
    let heard = |live: &mut Live| {
        if let Some(f) = from {
            live.heard_from(peer.endpoint, f);
        }
    };
    let inner = match r {
        TunnResult::Done => {
            if kind == 4 {
                // A keepalive: the session works.
                heard(live);
                note_data(peer, tally);
            }
            None
        }
        TunnResult::Err(e) => {
            if kind == 2
                && matches!(
                    e,
                    WireGuardError::InvalidAeadTag | WireGuardError::InvalidMac
                )
            {
                handshake_failed(peer, "its response does not authenticate", ctx);
            }
            tally.error(&e);
            None
        }
        TunnResult::WriteToNetwork(reply) => {
            // The reply says whether the message authenticated: a response
            // to an initiation, a keepalive after a response (not a cookie
            // reply from the peer's own handshake limit).
            let authentic = matches!(
                (kind, reply.first()),
                (1, Some(&MSG_RESPONSE)) | (2, Some(&MSG_DATA))
            );
            if authentic {
                heard(live);
            }
            let to = live.endpoint(peer.endpoint);
            send_one(socks, to, reply, ctx);
            if authentic && kind == 1 {
                let n = peer.session.answered.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= UNANSWERED_INITS {
                    handshake_failed(
                        peer,
                        "it keeps starting handshakes that never complete (our responses do not authenticate for it)",
                        ctx,
                    );
                }
            } else if authentic {
                handshake_done(peer, tally);
            }
            // Packets that waited for the handshake.
            while let TunnResult::WriteToNetwork(p) = live.decapsulate(None, &[], small) {
                send_one(socks, to, p, ctx);
            }
            None
        }
        TunnResult::WriteToTunnelV4(p, src) => {
            heard(live);
            admit(peer, table, p, IpAddr::V4(src), tally)
        }
        TunnResult::WriteToTunnelV6(p, src) => {
            heard(live);
            admit(peer, table, p, IpAddr::V6(src), tally)
        }
    };
    if inner.is_some() {
        note_data(peer, tally);
    }
    inner
}

/// Data decrypted under `peer`'s session.
fn note_data(peer: &Peer, tally: &mut Tally) {
    let s = &peer.session;
    if s.answered.load(Ordering::Relaxed) > 0 || s.failing.load(Ordering::Relaxed) {
        handshake_done(peer, tally);
    }
}

/// WireGuard's rule (the inner source within the sender's allowed IPs)
/// and ours (the inner destination within this node's subnet on this
/// device); the length of the packet to write when both hold.
fn admit(peer: &Peer, table: &Table, p: &[u8], src: IpAddr, tally: &mut Tally) -> Option<usize> {
    if !peer.allowed.holds(src) {
        tally.spoofed += 1;
        return None;
    }
    match packet::destination(p) {
        Some(dst) if table.own.holds(dst) => {
            tally.packets += 1;
            tally.bytes += p.len() as u64;
            Some(p.len())
        }
        Some(_) => {
            tally.not_ours += 1;
            None
        }
        None => {
            tally.malformed += 1;
            None
        }
    }
}

/// How often each peer's timers are looked at (boringtun's own device
/// does it every 250 ms).
const TICK: Duration = Duration::from_millis(250);

/// Handshake retries, rekeys and keepalives for every device's peers;
/// and `/readyz`'s word on peers whose handshakes fail.
pub fn timers(tables: Vec<(Arc<Table>, Sockets, Ctx)>, health: Arc<Health>) {
    let _running = Running(health.clone(), TAG);
    let mut buf = vec![0u8; sys::RECV_BUF + DATA_OVERHEAD];
    loop {
        std::thread::sleep(TICK);
        let mut failing = Vec::new();
        let mut active = 0;
        for (table, socks, ctx) in &tables {
            table.gate.new_second();
            let snap = table.snapshot();
            // With a keepalive every peer is talked to from the start, as
            // upstream's kernel device does (it keeps NAT mappings open);
            // without, only peers there is traffic for.
            let keepalive = table.identity.keepalive.is_some();
            for peer in &snap.peers {
                if keepalive && !peer.session.is_live() {
                    greet(peer, peer.endpoint, socks, ctx);
                }
                // Peers never talked to have no timers to run; those given
                // up on hold nothing and are dropped.
                peer.session.tick(|live| {
                    let to = live.endpoint(peer.endpoint);
                    match live.update_timers(&mut buf) {
                        TunnResult::WriteToNetwork(p) => {
                            send_one(socks, to, p, ctx);
                            true
                        }
                        TunnResult::Err(WireGuardError::ConnectionExpired) => keepalive,
                        _ => true,
                    }
                });
                active += u64::from(peer.session.is_live());
                if peer.session.failing.load(Ordering::Relaxed) {
                    failing.push(peer.endpoint.to_string());
                }
            }
        }
        health
            .metrics
            .wg
            .peers_active
            .store(active, Ordering::Relaxed);
        health.peers_failing((!failing.is_empty()).then(|| {
            let more = failing.len().saturating_sub(3);
            failing.truncate(3);
            format!(
                "wireguard handshakes with {}{} fail to authenticate (a different Backend.PSK? see the log)",
                failing.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            )
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use boringtun::x25519::{PublicKey, StaticSecret};

    use super::super::gate::{INITIATIONS_PER_SECOND, SOURCE_BURST};
    use super::super::peers::{Entry, Identity};
    use super::*;
    use crate::backend::udp::packet::tests::ipv4;

    /// Node A (under test, with its receive path) and a peer B speaking
    /// WireGuard through boringtun directly; B's socket gets A's replies.
    struct Pair {
        table: Arc<Table>,
        socks: Sockets,
        b: Tunn,
        b_sock: UdpSocket,
        ctx: Ctx,
        tally: Tally,
    }

    /// A handshake initiation from `t` (`force`: even with one in progress).
    fn initiation(t: &mut Tunn, force: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        match t.format_handshake_initiation(&mut buf, force) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            other => panic!("no initiation: {other:?}"),
        }
    }

    fn key(seed: u8) -> (StaticSecret, PublicKey) {
        let s = StaticSecret::from([seed; 32]);
        let p = PublicKey::from(&s);
        (s, p)
    }

    impl Pair {
        fn new() -> Pair {
            let (sa, pa) = key(1);
            let (sb, pb) = key(2);
            let b_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            b_sock
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let identity = Identity {
                secret: sa,
                public: pa,
                psk: None,
                keepalive: None,
            };
            let table = Arc::new(Table::new(identity, ["10.244.1.0/24".parse().unwrap()]));
            table.set(vec![Entry {
                key: *pb.as_bytes(),
                endpoint: b_sock.local_addr().unwrap(),
                subnets: vec!["10.244.2.0/24".parse().unwrap()],
            }]);
            let socks = Sockets {
                v4: Some(UdpSocket::bind("127.0.0.1:0").unwrap()),
                v6: None,
            };
            let ctx = Ctx {
                health: Arc::new(Health::new(Duration::from_secs(10))),
                off: Arc::new(Offloads {
                    vnet: false,
                    gso: AtomicBool::new(false),
                }),
                dev: "flannel-wg",
                mtu: 1420,
            };
            let b = Tunn::new(sb, pa, None, None, 77, None);
            Pair {
                table,
                socks,
                b,
                b_sock,
                ctx,
                tally: Tally::default(),
            }
        }

        /// A receives `d`; the inner packet's length if it was delivered.
        fn a_gets(&mut self, d: &[u8]) -> Option<usize> {
            let from = self.b_sock.local_addr().ok();
            self.a_gets_from(d, from)
        }

        fn a_gets_from(&mut self, d: &[u8], from: Option<SocketAddr>) -> Option<usize> {
            let snap = self.table.snapshot();
            let mut data = vec![0u8; 2048];
            let mut small = vec![0u8; 2048];
            let bufs = Bufs {
                data: &mut data,
                small: &mut small,
            };
            receive(
                d,
                from,
                &snap,
                &self.table,
                bufs,
                &self.socks,
                &mut self.tally,
                &self.ctx,
            )
        }

        /// What A sent B.
        fn b_receives(&self) -> Vec<u8> {
            let mut buf = vec![0u8; 2048];
            let (n, _) = self.b_sock.recv_from(&mut buf).unwrap();
            buf.truncate(n);
            buf
        }

        fn handshake(&mut self) {
            let mut buf = vec![0u8; 2048];
            let init = initiation(&mut self.b, false);
            assert_eq!(self.a_gets(&init), None);
            let resp = self.b_receives();
            let keepalive = match self.b.decapsulate(None, &resp, &mut buf) {
                TunnResult::WriteToNetwork(d) => d.to_vec(),
                other => panic!("B took no response: {other:?}"),
            };
            assert_eq!(self.a_gets(&keepalive), None);
        }

        fn b_seals(&mut self, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
            let p = ipv4(1, 64, src, dst, &[8, 0, 0, 0, 0, 0, 0, 0]);
            let mut buf = vec![0u8; 2048];
            match self.b.encapsulate(&p, &mut buf) {
                TunnResult::WriteToNetwork(d) => d.to_vec(),
                other => panic!("B sealed nothing: {other:?}"),
            }
        }
    }

    #[test]
    fn only_authentic_fresh_data_from_a_peers_subnet_to_ours_is_delivered() {
        let mut t = Pair::new();
        t.handshake();
        assert_eq!(t.tally.handshakes, 1);
        let good = t.b_seals([10, 244, 2, 5], [10, 244, 1, 7]);
        assert_eq!(t.a_gets(&good), Some(28));
        assert_eq!(t.tally.packets, 1);
        // The same datagram again.
        assert_eq!(t.a_gets(&good), None);
        assert_eq!(t.tally.replayed, 1);
        // A source outside B's subnet, a destination outside ours.
        let spoofed = t.b_seals([10, 244, 3, 5], [10, 244, 1, 7]);
        assert_eq!(t.a_gets(&spoofed), None);
        assert_eq!(t.tally.spoofed, 1);
        let elsewhere = t.b_seals([10, 244, 2, 5], [10, 244, 9, 9]);
        assert_eq!(t.a_gets(&elsewhere), None);
        assert_eq!(t.tally.not_ours, 1);
        // A flipped bit in the ciphertext.
        let mut forged = t.b_seals([10, 244, 2, 5], [10, 244, 1, 7]);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(t.a_gets(&forged), None);
        assert_eq!(t.tally.auth, 1);
        // B's lease is gone: its session with it.
        let later = t.b_seals([10, 244, 2, 5], [10, 244, 1, 7]);
        t.table.set(Vec::new());
        assert_eq!(t.a_gets(&later), None);
        assert_eq!(t.tally.unknown, 1);
        assert_eq!(t.tally.packets, 1);
    }

    /// Where A sends to B now.
    fn endpoint_of_b(t: &Pair) -> SocketAddr {
        let snap = t.table.snapshot();
        let peer = snap.by_key(key(2).1.as_bytes()).unwrap();
        peer.session.with_tunn(|l| l.endpoint(peer.endpoint))
    }

    #[test]
    fn a_peer_is_sent_to_where_its_fresh_authentic_messages_come_from() {
        let mut t = Pair::new();
        let lease = t.b_sock.local_addr().unwrap();
        t.handshake();
        assert_eq!(endpoint_of_b(&t), lease);
        // B behind a NAT that picked another port.
        let nat: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let good = t.b_seals([10, 244, 2, 5], [10, 244, 1, 7]);
        assert_eq!(t.a_gets_from(&good, Some(nat)), Some(28));
        assert_eq!(endpoint_of_b(&t), nat);
        // A replay, a forgery, and data under nobody's session, each from
        // elsewhere: no move.
        let elsewhere: SocketAddr = "127.0.0.1:40002".parse().unwrap();
        assert_eq!(t.a_gets_from(&good, Some(elsewhere)), None);
        let mut forged = t.b_seals([10, 244, 2, 5], [10, 244, 1, 7]);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(t.a_gets_from(&forged, Some(elsewhere)), None);
        assert_eq!((t.tally.replayed, t.tally.auth), (1, 1));
        assert_eq!(endpoint_of_b(&t), nat);
        // Back at its lease's address.
        let again = t.b_seals([10, 244, 2, 5], [10, 244, 1, 7]);
        assert_eq!(t.a_gets(&again), Some(28));
        assert_eq!(endpoint_of_b(&t), lease);
        // Moved again, then its lease names a new endpoint: the lease wins.
        let more = t.b_seals([10, 244, 2, 5], [10, 244, 1, 7]);
        assert_eq!(t.a_gets_from(&more, Some(nat)), Some(28));
        let moved: SocketAddr = "127.0.0.1:40003".parse().unwrap();
        let (_, pb) = key(2);
        t.table.set(vec![Entry {
            key: *pb.as_bytes(),
            endpoint: moved,
            subnets: vec!["10.244.2.0/24".parse().unwrap()],
        }]);
        assert_eq!(endpoint_of_b(&t), moved);
    }

    #[test]
    fn a_handshake_initiation_from_a_new_address_is_answered_there() {
        let mut t = Pair::new();
        t.handshake();
        // B's NAT mapping changed (its router restarted): its next
        // initiation comes from a new port, and the response goes there.
        let nat = UdpSocket::bind("127.0.0.1:0").unwrap();
        nat.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let init = initiation(&mut t.b, true);
        assert_eq!(t.a_gets_from(&init, nat.local_addr().ok()), None);
        let mut buf = vec![0u8; 2048];
        let (n, _) = nat.recv_from(&mut buf).unwrap();
        assert_eq!(buf[0], 2, "a handshake response");
        assert!(n > 0);
        assert_eq!(endpoint_of_b(&t), nat.local_addr().unwrap());
    }

    /// A real initiation for A from a key that is no peer of A's.
    fn strangers_initiation() -> Vec<u8> {
        let (sc, _) = key(3);
        let (_, pa) = key(1);
        initiation(&mut Tunn::new(sc, pa, None, None, 9, None), false)
    }

    #[test]
    fn a_handshake_from_a_key_that_is_no_peer_is_refused() {
        let mut t = Pair::new();
        let init = strangers_initiation();
        assert_eq!(t.a_gets(&init), None);
        assert_eq!(t.tally.unknown, 1);
        assert_eq!(t.tally.handshakes, 0);
    }

    #[test]
    fn an_initiation_not_made_for_our_key_costs_no_key_exchange() {
        let mut t = Pair::new();
        // The right length and type, the rest junk.
        let mut junk = vec![0x5a; 148];
        junk[..4].copy_from_slice(&[1, 0, 0, 0]);
        assert_eq!(t.a_gets(&junk), None);
        // A real initiation, for another node's key.
        let (sb, _) = key(2);
        let (_, pc) = key(3);
        let mut b = Tunn::new(sb, pc, None, None, 78, None);
        let init = initiation(&mut b, false);
        assert_eq!(t.a_gets(&init), None);
        assert_eq!(t.tally.bad_mac, 2);
        assert_eq!(
            (t.tally.auth, t.tally.unknown, t.tally.handshakes),
            (0, 0, 0)
        );
    }

    /// A stranger's initiation, sent to A over and over up to its limit:
    /// a flood; then B's initiation gets a cookie reply, not a key
    /// exchange, and B takes the cookie.
    fn overload_and_prove_b(t: &mut Pair) {
        let flood = strangers_initiation();
        for _ in 0..INITIATIONS_PER_SECOND {
            t.a_gets(&flood);
        }
        assert_eq!(t.tally.unknown, INITIATIONS_PER_SECOND);
        let init = initiation(&mut t.b, false);
        assert_eq!(t.a_gets(&init), None);
        assert_eq!(t.tally.under_load, 1);
        let cookie = t.b_receives();
        assert_eq!(cookie[0], 3, "a cookie reply");
        let mut buf = vec![0u8; 2048];
        assert!(matches!(
            t.b.decapsulate(None, &cookie, &mut buf),
            TunnResult::Done
        ));
    }

    #[test]
    fn past_the_limit_an_initiator_proves_its_address_with_a_cookie_and_gets_through() {
        let mut t = Pair::new();
        overload_and_prove_b(&mut t);
        let mut buf = vec![0u8; 2048];
        // With the cookie, B's next initiation is answered.
        let again = initiation(&mut t.b, true);
        assert_eq!(t.a_gets(&again), None);
        let resp = t.b_receives();
        assert_eq!(resp[0], 2, "a handshake response");
        assert!(matches!(
            t.b.decapsulate(None, &resp, &mut buf),
            TunnResult::WriteToNetwork(_)
        ));
        assert_eq!(t.tally.under_load, 1);
    }

    #[test]
    fn a_proven_address_replaying_its_initiation_gets_only_its_share_of_key_exchanges() {
        let mut t = Pair::new();
        // B proves its address, then sends its cookie-carrying initiation
        // over and over.
        overload_and_prove_b(&mut t);
        let proven = initiation(&mut t.b, true);
        let started = std::time::Instant::now();
        for _ in 0..100 {
            assert_eq!(t.a_gets(&proven), None);
        }
        // A burst, and one more per 1/20 s the loop took.
        let refills = (started.elapsed().as_secs_f64() * 20.0).ceil() as u64;
        let spent = 100 - t.tally.rate_limited;
        assert!(
            spent >= u64::from(SOURCE_BURST) && spent <= u64::from(SOURCE_BURST) + refills,
            "{spent} key exchanges"
        );
        // The first was answered; the rest were refused as replays of it,
        // each after its key exchange.
        assert_eq!(t.b_receives()[0], 2, "a handshake response");
        assert_eq!(t.tally.auth, spent - 1);
    }

    /// A restarts: same key, a fresh table with B (and `more` peers),
    /// nothing of the old session.
    fn restart_a(t: &mut Pair, more: Vec<Entry>) {
        let (sa, pa) = key(1);
        let (_, pb) = key(2);
        let fresh = Arc::new(Table::new(
            Identity {
                secret: sa,
                public: pa,
                psk: None,
                keepalive: None,
            },
            ["10.244.1.0/24".parse().unwrap()],
        ));
        let mut entries = vec![Entry {
            key: *pb.as_bytes(),
            endpoint: t.b_sock.local_addr().unwrap(),
            subnets: vec!["10.244.2.0/24".parse().unwrap()],
        }];
        entries.extend(more);
        fresh.set(entries);
        t.table = fresh;
    }

    #[test]
    fn a_restart_greets_a_peer_behind_nat_where_its_data_comes_from() {
        let mut t = Pair::new();
        t.handshake();
        let data = t.b_seals([10, 244, 2, 5], [10, 244, 1, 7]);
        // C's lease names B's address too (both behind one router).
        let (_, pc) = key(3);
        restart_a(
            &mut t,
            vec![Entry {
                key: *pc.as_bytes(),
                endpoint: "127.0.0.1:40009".parse().unwrap(),
                subnets: vec!["10.244.3.0/24".parse().unwrap()],
            }],
        );
        // B's data comes from the port its router chose: both are greeted
        // there; B takes its own greeting and not C's.
        let nat = UdpSocket::bind("127.0.0.1:0").unwrap();
        nat.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let at = nat.local_addr().unwrap();
        assert_eq!(t.a_gets_from(&data, Some(at)), None);
        let mut buf = vec![0u8; 2048];
        let mut resp = None;
        for _ in 0..2 {
            let (n, _) = nat.recv_from(&mut buf).unwrap();
            assert_eq!(buf[0], 1, "a handshake initiation");
            let mut out = vec![0u8; 2048];
            if let TunnResult::WriteToNetwork(d) = t.b.decapsulate(None, &buf[..n], &mut out) {
                assert!(resp.is_none(), "B took both greetings");
                resp = Some(d.to_vec());
            }
        }
        let resp = resp.expect("B took neither greeting");
        assert_eq!(t.a_gets_from(&resp, Some(at)), None);
        assert_eq!(t.tally.handshakes, 2);
        assert_eq!(endpoint_of_b(&t), at);
    }

    #[test]
    fn noise_state_is_made_on_first_use_and_a_restart_greets_a_peer_that_sends_under_an_old_session()
     {
        let mut t = Pair::new();
        let unmade = |t: &Pair| !t.table.snapshot().peers[0].session.is_live();
        assert!(unmade(&t), "made before any message");
        t.handshake();
        assert!(!unmade(&t));
        let data = t.b_seals([10, 244, 2, 5], [10, 244, 1, 7]);
        restart_a(&mut t, Vec::new());
        assert_eq!(t.a_gets(&data), None);
        assert_eq!(t.tally.unknown, 1);
        let init = t.b_receives();
        assert_eq!(init[0], 1, "a handshake initiation for B");
        let mut buf = vec![0u8; 2048];
        let resp = match t.b.decapsulate(None, &init, &mut buf) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            other => panic!("B did not answer: {other:?}"),
        };
        assert_eq!(t.a_gets(&resp), None);
        assert_eq!(t.tally.handshakes, 2);
        // A's keepalive confirms the new session to B (the responder).
        let keepalive = t.b_receives();
        assert!(matches!(
            t.b.decapsulate(None, &keepalive, &mut buf),
            TunnResult::Done
        ));
        let after = t.b_seals([10, 244, 2, 5], [10, 244, 1, 7]);
        assert_eq!(t.a_gets(&after), Some(28));
    }

    #[test]
    fn a_response_under_another_psk_marks_the_peer_failing() {
        let mut t = Pair::new();
        // A initiates; B (with a PSK A does not have) answers.
        let (sb, _) = key(2);
        let (_, pa) = key(1);
        t.b = Tunn::new(sb, pa, Some([5; 32]), None, 77, None);
        let snap = t.table.snapshot();
        let peer = &snap.peers[0];
        let mut buf = vec![0u8; 2048];
        let init = peer.session.with_tunn(|t| initiation(t, false));
        let resp = match t.b.decapsulate(None, &init, &mut buf) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            other => panic!("B did not answer: {other:?}"),
        };
        assert_eq!(t.a_gets(&resp), None);
        assert!(peer.session.failing.load(Ordering::Relaxed));
        assert_eq!(t.tally.auth, 1);
    }
}
