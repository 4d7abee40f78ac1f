//! The system calls of the fast path: TUN queues with virtio-net headers
//! and offloads, UDP sockets sharing one port (`SO_REUSEPORT`) with
//! segmentation (`UDP_SEGMENT`) and coalescing (`UDP_GRO`), and batched
//! `sendmmsg`/`recvmmsg` over buffers allocated once.

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use nix::libc;

nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, size_of::<libc::c_int>()),
    libc::ifreq
);
nix::ioctl_write_int_bad!(
    tun_set_offload,
    nix::request_code_write!(b'T', 208, size_of::<libc::c_uint>())
);

/// TSO for both families and checksums left to us.
const OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
/// And UDP super-packets from senders that segment (kernel 6.2 and later).
const USO: libc::c_uint = libc::TUN_F_USO4 | libc::TUN_F_USO6;

/// Opens one queue of the TUN device `name` (made by the first call).
pub fn tun_queue(name: &str, vnet: bool, multi: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { zeroed() };
    for (slot, b) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *slot = b as libc::c_char;
    }
    let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
    if vnet {
        flags |= libc::IFF_VNET_HDR;
    }
    if multi {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: the fd is an open /dev/net/tun, and req is a valid ifreq
    // that outlives the call.
    unsafe { tun_set_iff(file.as_raw_fd(), &req) }?;
    Ok(file)
}

/// Lets the kernel hand over TCP (and, where it can, UDP) super-packets
/// and unchecked sums; returns whether UDP ones are included.
pub fn tun_offload(tun: &File) -> io::Result<bool> {
    // SAFETY: the fd is a TUN queue; the argument is a flag word.
    if unsafe { tun_set_offload(tun.as_raw_fd(), (OFFLOADS | USO) as libc::c_int) }.is_ok() {
        return Ok(true);
    }
    // SAFETY: as above.
    unsafe { tun_set_offload(tun.as_raw_fd(), OFFLOADS as libc::c_int) }?;
    Ok(false)
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    // SAFETY: fd is open for the whole call (borrowed from its owner).
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let fl = OFlag::from_bits_truncate(fcntl(b, FcntlArg::F_GETFL)?);
    fcntl(b, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Waits until `fd` is readable.
pub fn wait_readable(fd: RawFd) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    match unsafe { libc::poll(&mut p, 1, -1) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the value lives across the call and its size is given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Socket buffer sizes asked for.
const SOCK_BUF: libc::c_int = 4 << 20;

/// A UDP socket on `addr`; with `shared`, one of several on the same port
/// that the kernel spreads senders over.
pub fn udp_socket(addr: SocketAddr, shared: bool) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket owned by nobody else; from here on the
    // UdpSocket closes it.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    if shared {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    if addr.is_ipv6() {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    // Room for bursts of coalesced receives (a few 64 KB messages would
    // fill the default); beyond the system's limit where we may.
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, SOCK_BUF).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCK_BUF);
        }
    }
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage holds a sockaddr of `len` bytes for the family.
    let r = unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// Asks for coalesced receives: several datagrams of one flow in one
/// buffer, all but the last of the size given alongside.
pub fn enable_gro(sock: &UdpSocket) -> io::Result<()> {
    setsockopt_int(sock.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// Whether the kernel knows `UDP_SEGMENT` (setting 0 changes nothing).
pub fn probe_gso(sock: &UdpSocket) -> io::Result<()> {
    setsockopt_int(sock.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, 0)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut s: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            let sin = unsafe {
                &mut *(&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (s, len as libc::socklen_t)
}

fn peer_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let sin = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let sin6 =
                unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
}

/// Room for one `u16` control message.
const CMSG_ROOM: usize = 32;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Cmsg([u8; CMSG_ROOM]);

/// One message of a batch: its parts are consecutive entries of `parts`.
#[derive(Debug, Clone, Copy)]
struct Msg {
    to: SocketAddr,
    first: usize,
    parts: usize,
    seg: u16,
    datagrams: usize,
}

/// Datagrams waiting to go, each message gathered from byte ranges of the
/// sender's buffers (headers here, payload where it was read) and sent as
/// one datagram or, with `seg`, as a run of datagrams of that size (the
/// last may be shorter) that the kernel cuts apart.
pub struct SendBatch {
    msgs: Vec<Msg>,
    /// (buffer, start, length) of each part.
    parts: Vec<(usize, usize, usize)>,
    /// Filled in at each flush, allocated once (BATCH entries each but
    /// `iov`, which grows to the most parts seen).
    iov: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<Cmsg>,
    hdrs: Vec<libc::mmsghdr>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SendBatch({})", self.msgs.len())
    }
}

/// The most messages in one `sendmmsg`/`recvmmsg`.
pub const BATCH: usize = 64;

impl Default for SendBatch {
    fn default() -> SendBatch {
        SendBatch::new()
    }
}

impl SendBatch {
    pub fn new() -> SendBatch {
        SendBatch {
            msgs: Vec::with_capacity(BATCH),
            parts: Vec::with_capacity(4 * BATCH),
            iov: Vec::with_capacity(4 * BATCH),
            // SAFETY: plain C structs; all-zero is valid for each.
            names: vec![unsafe { zeroed() }; BATCH],
            cmsgs: vec![Cmsg([0; CMSG_ROOM]); BATCH],
            // SAFETY: as above.
            hdrs: vec![unsafe { zeroed() }; BATCH],
        }
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    pub fn clear(&mut self) {
        self.msgs.clear();
        self.parts.clear();
    }

    /// Queues one message of `datagrams` datagrams (`seg` 0: one); a run's
    /// parts are its datagrams' in order, as many for each.
    pub fn push(
        &mut self,
        to: SocketAddr,
        seg: u16,
        datagrams: usize,
        parts: impl IntoIterator<Item = (usize, usize, usize)>,
    ) {
        let first = self.parts.len();
        self.parts.extend(parts);
        self.msgs.push(Msg {
            to,
            first,
            parts: self.parts.len() - first,
            seg,
            datagrams,
        });
    }

    /// Sends everything queued on `sock` (one family), reading the parts
    /// from `bufs`. A message the kernel refuses (no route to its
    /// destination, say) is lost alone: the others still go.
    pub fn flush(&mut self, sock: &UdpSocket, bufs: &[&[u8]]) -> Flushed {
        let n = self.prepare(bufs);
        let mut out = Flushed::default();
        let mut done = 0;
        while done < n {
            // SAFETY: hdrs[done..n] are filled in by prepare and point into
            // names, cmsgs and iov, whose entries point into `bufs`; all
            // stay alive and unchanged across the call.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.hdrs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    0,
                )
            };
            if r > 0 {
                let r = r as usize;
                out.sent += self.msgs[done..done + r]
                    .iter()
                    .map(|m| m.datagrams)
                    .sum::<usize>();
                done += r;
                continue;
            }
            let e = if r == 0 {
                io::Error::from(io::ErrorKind::WriteZero)
            } else {
                io::Error::last_os_error()
            };
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // sendmmsg stops at the first message the kernel refuses and
            // returns how many went before it; called again from there, it
            // fails on that message itself. It alone is lost.
            let m = self.msgs[done];
            if m.seg > 0 && m.datagrams > 1 && e.raw_os_error() == Some(libc::EIO) {
                // The way out cannot segment: the run again, a datagram
                // per message.
                self.one_by_one(sock, done, &mut out);
                out.unsegmented = Some(e);
            } else {
                out.lost += m.datagrams;
                out.error = Some((e, m.to));
            }
            done += 1;
        }
        self.clear();
        out
    }

    /// Fills in the system call's headers for the messages queued (at
    /// most [`BATCH`]) and returns how many.
    fn prepare(&mut self, bufs: &[&[u8]]) -> usize {
        self.iov.clear();
        for &(b, start, len) in &self.parts {
            let bytes = bufs
                .get(b)
                .and_then(|b| b.get(start..start + len))
                .unwrap_or_default();
            self.iov.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
        }
        for (i, m) in self.msgs.iter().enumerate().take(BATCH) {
            let (s, slen) = sockaddr(m.to);
            self.names[i] = s;
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = slen;
            h.msg_iov = self.iov[m.first..].as_mut_ptr();
            h.msg_iovlen = m.parts as _;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            if m.seg > 0 && m.datagrams > 1 {
                h.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure size computation.
                h.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
                // SAFETY: msg_control points at CMSG_ROOM aligned bytes,
                // more than CMSG_SPACE(2); the header fits at the start.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), m.seg);
                }
            }
        }
        self.msgs.len().min(BATCH)
    }

    /// Sends message `i`, prepared, as one datagram per call.
    fn one_by_one(&mut self, sock: &UdpSocket, i: usize, out: &mut Flushed) {
        let m = self.msgs[i];
        // A run is pushed datagram by datagram, each with the same parts.
        let per = m.parts / m.datagrams.max(1);
        if per == 0 || per * m.datagrams != m.parts {
            out.lost += m.datagrams;
            out.error = Some((io::Error::from(io::ErrorKind::InvalidInput), m.to));
            return;
        }
        for d in 0..m.datagrams {
            // SAFETY: all-zero is a valid msghdr.
            let mut h: libc::msghdr = unsafe { zeroed() };
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = self.hdrs[i].msg_hdr.msg_namelen;
            h.msg_iov = self.iov[m.first + d * per..].as_mut_ptr();
            h.msg_iovlen = per as _;
            loop {
                // SAFETY: h points at names[i] and at `per` entries of iov
                // (inside the message's parts), all alive across the call.
                if unsafe { libc::sendmsg(sock.as_raw_fd(), &h, 0) } >= 0 {
                    out.sent += 1;
                    break;
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    out.lost += 1;
                    out.error = Some((e, m.to));
                    break;
                }
            }
        }
    }
}

/// What became of one flush.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Datagrams the kernel took.
    pub sent: usize,
    /// Datagrams lost, and the error of the last message that lost some
    /// with its destination.
    pub lost: usize,
    pub error: Option<(io::Error, SocketAddr)>,
    /// The kernel refused to segment (EIO, from a device that cannot):
    /// those runs went again one datagram per message.
    pub unsegmented: Option<io::Error>,
}

/// Largest coalesced receive (and largest datagram).
pub const RECV_BUF: usize = 65536;

/// Buffers and headers for one `recvmmsg`, allocated once.
pub struct RecvBatch {
    bufs: Vec<u8>,
    slots: usize,
    names: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<Cmsg>,
    lens: Vec<usize>,
    segs: Vec<usize>,
    from: Vec<Option<SocketAddr>>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecvBatch({})", self.slots)
    }
}

impl RecvBatch {
    pub fn new(slots: usize) -> RecvBatch {
        let slots = slots.clamp(1, BATCH);
        RecvBatch {
            bufs: vec![0; slots * RECV_BUF],
            slots,
            // SAFETY: all-zero is a valid sockaddr_storage.
            names: vec![unsafe { zeroed() }; slots],
            cmsgs: vec![Cmsg([0; CMSG_ROOM]); slots],
            lens: vec![0; slots],
            segs: vec![0; slots],
            from: vec![None; slots],
        }
    }

    /// Waits for at least one datagram, then takes what else is queued;
    /// returns how many messages arrived.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        // SAFETY: plain C structs; all-zero is valid.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let base = self.bufs.as_mut_ptr();
        for i in 0..self.slots {
            iov[i] = libc::iovec {
                // SAFETY: slot i lies inside bufs (slots * RECV_BUF bytes).
                iov_base: unsafe { base.add(i * RECV_BUF) }.cast(),
                iov_len: RECV_BUF,
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
            h.msg_controllen = CMSG_ROOM as _;
        }
        let n = loop {
            // SAFETY: msgs point into iov, names, cmsgs and bufs, all
            // alive and sized as declared across the call.
            let r = unsafe {
                libc::recvmmsg(
                    sock.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    self.slots as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        for (i, m) in msgs.iter_mut().enumerate().take(n) {
            let len = m.msg_len as usize;
            self.lens[i] = len;
            self.from[i] = peer_addr(&self.names[i]);
            let mut seg = len;
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                // Cut short: nothing in it can be trusted whole.
                self.lens[i] = 0;
            }
            // SAFETY: the kernel filled msg_control up to msg_controllen
            // within cmsgs[i]; the CMSG macros stay inside it.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        if v > 0 {
                            seg = v as usize;
                        }
                    }
                    c = libc::CMSG_NXTHDR(&m.msg_hdr, c);
                }
            }
            self.segs[i] = seg;
        }
        Ok(n)
    }

    /// Message `i` of the last receive: its sender, where its bytes lie in
    /// `bytes()`, and the size its datagrams were cut at.
    pub fn message(&self, i: usize) -> (Option<SocketAddr>, usize, usize, usize) {
        (
            self.from[i],
            i * RECV_BUF,
            self.lens[i],
            self.segs[i].max(1),
        )
    }

    /// The receive buffers.
    pub fn bytes(&self) -> &[u8] {
        &self.bufs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netkit::netns::NetNs;
    use std::time::Duration;

    /// A namespace of this test's own with only `lo` up: 127.0.0.1 answers
    /// and every other address has no route (ENETUNREACH).
    fn lo_only() -> NetNs {
        let ns = NetNs::create().expect("this test needs root (CAP_SYS_ADMIN)");
        let mut nl = ns.socket().unwrap();
        let lo = nl.link_by_name("lo").unwrap().unwrap();
        nl.set_up(lo.index).unwrap();
        ns
    }

    #[test]
    fn a_message_that_fails_is_counted_alone_and_the_rest_still_go() {
        let ns = lo_only();
        let (tx, rx) = ns
            .run(|| {
                let tx = udp_socket("127.0.0.1:0".parse().unwrap(), false).unwrap();
                (tx, UdpSocket::bind("127.0.0.1:0").unwrap())
            })
            .unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = rx.local_addr().unwrap();
        let nowhere: SocketAddr = "10.99.0.1:8285".parse().unwrap();
        // Message i carries byte i: unroutable first, in the middle, last.
        let plan = [nowhere, to, to, nowhere, nowhere, to, nowhere];
        let data: Vec<u8> = (0..=255).collect();
        let mut b = SendBatch::new();
        for (i, &dst) in plan.iter().enumerate() {
            b.push(dst, 0, 1, [(0, i, 1)]);
        }
        // And a run of three the kernel would cut: lost as three.
        b.push(nowhere, 1, 3, [(0, 10, 1), (0, 11, 1), (0, 12, 1)]);
        let done = b.flush(&tx, &[&data]);
        assert!(b.is_empty());
        assert_eq!((done.sent, done.lost), (3, 7), "{done:?}");
        let (e, to) = done.error.as_ref().unwrap();
        assert_eq!((e.raw_os_error(), *to), (Some(libc::ENETUNREACH), nowhere));
        assert!(done.unsegmented.is_none());
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        for _ in 0..3 {
            let n = rx
                .recv(&mut buf)
                .expect("a datagram to a good address was not sent");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, [1, 2, 5]);
    }

    #[test]
    fn a_run_the_kernel_will_not_segment_goes_again_a_datagram_at_a_time() {
        // The kernel's refusal (EIO) comes only from devices that cannot
        // segment (before 6.11) or IPsec paths; the resend itself is what
        // is checked here.
        let ns = lo_only();
        let (tx, rx) = ns
            .run(|| {
                let tx = udp_socket("127.0.0.1:0".parse().unwrap(), false).unwrap();
                (tx, UdpSocket::bind("127.0.0.1:0").unwrap())
            })
            .unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let hdrs = b"h0h1h2".as_slice();
        let data = b"aaaabbbbcc".as_slice();
        let mut b = SendBatch::new();
        b.push(
            rx.local_addr().unwrap(),
            6,
            3,
            [
                (0, 0, 2),
                (1, 0, 4),
                (0, 2, 2),
                (1, 4, 4),
                (0, 4, 2),
                (1, 8, 2),
            ],
        );
        assert_eq!(b.prepare(&[hdrs, data]), 1);
        let mut out = Flushed::default();
        b.one_by_one(&tx, 0, &mut out);
        assert_eq!((out.sent, out.lost), (3, 0), "{out:?}");
        let mut buf = [0u8; 64];
        for want in [&b"h0aaaa"[..], b"h1bbbb", b"h2cc"] {
            let n = rx.recv(&mut buf).expect("a datagram of the run is missing");
            assert_eq!(&buf[..n], want);
        }
    }
}
