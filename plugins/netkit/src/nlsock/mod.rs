//! The one netlink socket core under both protocols we speak: rtnetlink
//! (links, addresses, routes, neighbours; codec in [`crate::netlink`]) and
//! nf_tables (codec in [`crate::nft`]).
//!
//! It numbers requests, sends them (a datagram may hold many: a batch of
//! rtnetlink requests, or an nf_tables transaction), and reads the answers
//! into outcomes matched by sequence number and port id: replies, the ACK
//! or the kernel's error with its extended ack (the reason in words), and
//! whether a dump was interrupted by concurrent changes (`NLM_F_DUMP_INTR`,
//! then the dump is read again, a few times at most).
//!
//! Buffers are sized for what is outstanding: the kernel drops answers
//! that do not fit the socket's receive buffer and reports `ENOBUFS`, so
//! before sending, the buffer is raised to hold every answer the requests
//! can produce (`SO_RCVBUFFORCE` as root, else `SO_RCVBUF` up to
//! `net.core.rmem_max`); likewise the send buffer for a large datagram.
//! Should answers still be dropped, the ones that did arrive are read and
//! the rest are reported as lost, never waited for.
//!
//! The kernel handles a netlink request inside `sendmsg()`: when `send`
//! returns, every answer it will ever give (dumps aside, which it fills
//! as they are read) is queued. So answers that may or may not come (an
//! nf_tables batch member reports only its failure) are collected by
//! reading until the queue is empty, without waiting.
//!
//! The same socket can listen instead (rtnetlink's multicast groups, see
//! [`crate::monitor`]): [`NlSocket::subscribe`], then
//! [`NlSocket::notifications`] hands over what the kernel announces,
//! message by message, from the one receive buffer; notifications the
//! kernel had to drop are reported as lost, not as an error.

mod collect;
mod error;
pub(crate) mod frame;

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_sys::{Socket, SocketAddr};
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, setsockopt, sockopt};

pub use collect::{Answer, Outcome};
pub use error::{KernelError, NetlinkError};
pub use frame::Frame;

use collect::Collector;

/// Receive buffer for one datagram: a dump part is at most 32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// Receive-buffer room one answer (an ACK or an error, which the kernel
/// sends as a small message of its own) takes; the kernel counts the
/// whole socket buffer, about 0.8-1.3 KiB for those.
const ANSWER_ROOM: usize = 2048;
/// No more than this is asked for; answers beyond it may be lost, which is
/// then reported (the first errors, which matter most, come first).
const MAX_RCVBUF: usize = 64 << 20;
/// Attempts at a dump that keeps being interrupted by changes.
const DUMP_ATTEMPTS: u32 = 3;
/// Requests sent together by [`NlSocket::request_all`]: their ACKs fit the
/// default receive buffer, so no privilege is needed.
const WINDOW: usize = 64;
/// Datagrams [`NlSocket::notifications`] reads in one call at most, so
/// that a steady stream still comes back in bounded pieces.
const NOTIFY_DATAGRAMS: usize = 4096;

/// What [`NlSocket::exchange`] read: one outcome per request, and whether
/// answers were lost (`ENOBUFS`).
#[derive(Debug)]
pub struct Exchanged {
    pub outcomes: Vec<Outcome>,
    pub overrun: bool,
}

enum Received {
    Datagram(usize),
    /// A datagram longer than the buffer: its tail is gone.
    Truncated(usize),
    /// Nothing queued (only without waiting).
    Empty,
    /// The kernel dropped answers: the queue overflowed.
    Overrun,
}

/// What [`NlSocket::notifications`] hands over.
#[derive(Debug)]
pub enum Notice<'a> {
    /// One message the kernel announced.
    Message(Frame<'a>),
    /// Notifications were lost: the kernel dropped some because the
    /// receive buffer was full (`ENOBUFS`), or one could not be read whole.
    Lost,
}

/// A netlink socket bound to the network namespace it was made in.
pub struct NlSocket {
    socket: Socket,
    port: u32,
    seq: u32,
    buf: Vec<u8>,
    /// `SO_RCVBUF` / `SO_SNDBUF` as the kernel reports them.
    rcvbuf: usize,
    sndbuf: usize,
    strict: bool,
}

// By hand: the receive buffer's 64 KiB of bytes say nothing.
impl std::fmt::Debug for NlSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NlSocket")
            .field("socket", &self.socket)
            .field("port", &self.port)
            .field("seq", &self.seq)
            .field("rcvbuf", &self.rcvbuf)
            .field("sndbuf", &self.sndbuf)
            .field("strict", &self.strict)
            .finish_non_exhaustive()
    }
}

/// A socket option only newer kernels have: `false` where the kernel does
/// not know it.
fn optional(set: io::Result<()>) -> Result<bool, NetlinkError> {
    match set {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(false),
        Err(e) => Err(NetlinkError::Socket(e)),
    }
}

fn sock_err(e: nix::Error) -> NetlinkError {
    NetlinkError::Socket(e.into())
}

impl NlSocket {
    /// A socket of `protocol` in the calling thread's network namespace;
    /// with `strict`, dump requests are checked strictly and filtered by
    /// what they name (`NETLINK_GET_STRICT_CHK`, rtnetlink only).
    pub fn open(protocol: isize, strict: bool) -> Result<NlSocket, NetlinkError> {
        let mut socket = Socket::new(protocol).map_err(NetlinkError::Socket)?;
        let port = socket
            .bind_auto()
            .map_err(NetlinkError::Socket)?
            .port_number();
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        // The kernel's reason along with the errno (Linux 4.12+), and
        // errors that do not echo the whole request (4.3+). Older kernels
        // lack the options and only lose the reason.
        optional(socket.set_ext_ack(true))?;
        optional(socket.set_cap_ack(true))?;
        // Before 4.20 the kernel ignores dump filters; callers filter
        // what comes back anyway.
        let strict = strict && optional(socket.set_netlink_get_strict_chk(true))?;
        let rcvbuf = getsockopt(&socket, sockopt::RcvBuf).map_err(sock_err)?;
        let sndbuf = getsockopt(&socket, sockopt::SndBuf).map_err(sock_err)?;
        Ok(NlSocket {
            socket,
            port,
            seq: 1,
            buf: vec![0; RECV_BUF],
            rcvbuf,
            sndbuf,
            strict,
        })
    }

    /// Whether the kernel filters dumps by what the request names.
    pub fn strict(&self) -> bool {
        self.strict
    }

    /// Raises the receive buffer to hold `bytes` of answers.
    fn reserve_rcvbuf(&mut self, bytes: usize) -> Result<(), NetlinkError> {
        let want = bytes.min(MAX_RCVBUF);
        if want <= self.rcvbuf {
            return Ok(());
        }
        // The kernel doubles what is set (the doubled value is what it
        // counts). FORCE passes rmem_max but needs CAP_NET_ADMIN; without
        // it, SO_RCVBUF goes as far as rmem_max allows.
        let val = want.div_ceil(2);
        if setsockopt(&self.socket, sockopt::RcvBufForce, &val).is_err() {
            setsockopt(&self.socket, sockopt::RcvBuf, &val).map_err(sock_err)?;
        }
        self.rcvbuf = getsockopt(&self.socket, sockopt::RcvBuf).map_err(sock_err)?;
        Ok(())
    }

    /// Raises the send buffer for a `len`-byte datagram: netlink refuses
    /// (`EMSGSIZE`) one longer than the buffer less 32 bytes.
    fn reserve_sndbuf(&mut self, len: usize) -> Result<(), NetlinkError> {
        let need = len + 64;
        if need <= self.sndbuf {
            return Ok(());
        }
        let val = need.div_ceil(2);
        if setsockopt(&self.socket, sockopt::SndBufForce, &val).is_err() {
            setsockopt(&self.socket, sockopt::SndBuf, &val).map_err(sock_err)?;
        }
        self.sndbuf = getsockopt(&self.socket, sockopt::SndBuf).map_err(sock_err)?;
        if need > self.sndbuf {
            return Err(NetlinkError::Socket(io::Error::other(format!(
                "a {len}-byte request does not fit the socket's {}-byte send buffer \
                 (net.core.wmem_max limits it without CAP_NET_ADMIN)",
                self.sndbuf
            ))));
        }
        Ok(())
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), NetlinkError> {
        self.reserve_sndbuf(bytes.len())?;
        loop {
            match self.socket.send(bytes, 0) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => {
                    return Err(NetlinkError::Socket(io::Error::other(format!(
                        "sent {n} of {} bytes",
                        bytes.len()
                    ))));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(NetlinkError::Socket(e)),
            }
        }
    }

    fn recv(&mut self, wait: bool) -> Result<Received, NetlinkError> {
        let flags = libc::MSG_TRUNC | if wait { 0 } else { libc::MSG_DONTWAIT };
        loop {
            match self.socket.recv(&mut &mut self.buf[..], flags) {
                Ok(n) if n > self.buf.len() => return Ok(Received::Truncated(n)),
                Ok(n) => return Ok(Received::Datagram(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if !wait && e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Received::Empty);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(Received::Overrun),
                Err(e) => return Err(NetlinkError::Socket(e)),
            }
        }
    }

    /// Whether something can be read within `timeout` (a datagram, or the
    /// error that notifications were dropped).
    fn readable(&self, timeout: Duration) -> Result<bool, NetlinkError> {
        // poll() counts whole milliseconds: round up, so that a short
        // timeout still waits rather than only looks.
        let ms = timeout.as_micros().div_ceil(1000);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(n) => Ok(n > 0),
            // A signal cut the wait short: the caller waits again for
            // what is left of its time.
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(sock_err(e)),
        }
    }

    /// Joins the multicast `groups` (e.g. `RTNLGRP_LINK`) and raises the
    /// receive buffer to `rcvbuf` bytes, so that a burst of notifications
    /// queues up while the reader is busy instead of being dropped.
    pub fn subscribe(&mut self, groups: &[u32], rcvbuf: usize) -> Result<(), NetlinkError> {
        for group in groups {
            self.socket
                .add_membership(*group)
                .map_err(NetlinkError::Socket)?;
        }
        self.reserve_rcvbuf(rcvbuf)
    }

    /// Waits up to `timeout` (`None`: as long as it takes) for
    /// notifications, then hands every queued one to `each` without
    /// waiting more. Returns whether anything came (a lost notification
    /// counts); `false` when the time ran out.
    pub fn notifications(
        &mut self,
        timeout: Option<Duration>,
        mut each: impl FnMut(Notice<'_>),
    ) -> Result<bool, NetlinkError> {
        if let Some(t) = timeout
            && !self.readable(t)?
        {
            return Ok(false);
        }
        let mut wait = timeout.is_none();
        for read in 0..NOTIFY_DATAGRAMS {
            match self.recv(wait)? {
                Received::Datagram(n) => {
                    for f in frame::each(&self.buf[..n]) {
                        match f {
                            Ok(f) => each(Notice::Message(f)),
                            // The rest of the datagram cannot be found.
                            Err(_) => each(Notice::Lost),
                        }
                    }
                }
                // The kernel reports a drop once, then delivers what it
                // had queued: reading goes on.
                Received::Truncated(_) | Received::Overrun => each(Notice::Lost),
                Received::Empty => return Ok(read > 0),
            }
            wait = false;
        }
        Ok(true)
    }

    /// Sends the requests in `datagram` (whole messages; their sequence
    /// numbers are set here) and reads what the kernel answers, each
    /// request answered as `kinds` says.
    pub fn exchange(
        &mut self,
        datagram: &mut [u8],
        kinds: &[Answer],
    ) -> Result<Exchanged, NetlinkError> {
        let first = self.seq;
        let count = frame::stamp(datagram, first)?;
        if count != kinds.len() {
            return Err(NetlinkError::Decode(format!(
                "{count} requests to send but {} expected answers",
                kinds.len()
            )));
        }
        self.seq = first.wrapping_add(u32::try_from(count).unwrap_or(u32::MAX));
        // Dumps need no room: the kernel fills them as they are read.
        let answers = kinds.iter().filter(|k| **k != Answer::Dump).count();
        self.reserve_rcvbuf(answers.saturating_mul(ANSWER_ROOM))?;
        self.send(datagram)?;

        let mut c = Collector::new(first, self.port, kinds.to_vec());
        let drain = kinds.contains(&Answer::ErrorOnly);
        let mut overrun = false;
        loop {
            if c.done() && !drain {
                break;
            }
            // Wait only for answers that must come and were not dropped.
            let wait = !c.done() && !overrun;
            match self.recv(wait)? {
                Received::Datagram(n) => c.feed(&self.buf[..n])?,
                Received::Truncated(n) => {
                    return Err(NetlinkError::Decode(format!(
                        "a {n}-byte datagram did not fit the {}-byte buffer",
                        self.buf.len()
                    )));
                }
                Received::Overrun => overrun = true,
                Received::Empty => break,
            }
        }
        Ok(Exchanged {
            outcomes: c.finish(),
            overrun,
        })
    }

    /// One request, acknowledged: its replies, or the kernel's error.
    pub fn request(&mut self, mut msg: Vec<u8>) -> Result<Vec<Vec<u8>>, NetlinkError> {
        frame::add_flags(&mut msg, NLM_F_REQUEST | NLM_F_ACK);
        let ex = self.exchange(&mut msg, &[Answer::Ack])?;
        let mut outcomes = ex.outcomes.into_iter();
        match outcomes.next() {
            Some(o) => settle(o, 1),
            None => Err(NetlinkError::Overrun { lost: 1 }),
        }
    }

    /// A dump, read again if changes interrupted it.
    pub fn dump(&mut self, mut msg: Vec<u8>) -> Result<Vec<Vec<u8>>, NetlinkError> {
        frame::add_flags(&mut msg, NLM_F_REQUEST | NLM_F_DUMP);
        consistent(|| {
            let ex = self.exchange(&mut msg, &[Answer::Dump])?;
            ex.outcomes
                .into_iter()
                .next()
                .ok_or(NetlinkError::Overrun { lost: 1 })
        })
    }

    /// Many acknowledged requests, sent a window at a time (so their ACKs
    /// never outgrow the receive buffer): each one's replies or error, in
    /// order. The outer error is a socket failure.
    #[allow(clippy::type_complexity)]
    pub fn request_all(
        &mut self,
        mut msgs: Vec<Vec<u8>>,
    ) -> Result<Vec<Result<Vec<Vec<u8>>, NetlinkError>>, NetlinkError> {
        let mut results = Vec::with_capacity(msgs.len());
        for window in msgs.chunks_mut(WINDOW) {
            let mut datagram = Vec::new();
            for m in window.iter_mut() {
                frame::add_flags(m, NLM_F_REQUEST | NLM_F_ACK);
                datagram.extend_from_slice(m);
                datagram.resize(frame::align4(datagram.len()), 0);
            }
            let ex = self.exchange(&mut datagram, &vec![Answer::Ack; window.len()])?;
            let lost = ex.outcomes.iter().filter(|o| o.result.is_none()).count();
            results.extend(ex.outcomes.into_iter().map(|o| settle(o, lost)));
        }
        Ok(results)
    }
}

/// Runs a dump until one is not interrupted, [`DUMP_ATTEMPTS`] times at
/// most. A dump that fails is not retried: only an interruption is.
fn consistent(
    mut dump: impl FnMut() -> Result<Outcome, NetlinkError>,
) -> Result<Vec<Vec<u8>>, NetlinkError> {
    for _ in 0..DUMP_ATTEMPTS {
        let o = dump()?;
        if !o.interrupted || matches!(o.result, Some(Err(_))) {
            return settle(o, 1);
        }
    }
    Err(NetlinkError::Interrupted {
        attempts: DUMP_ATTEMPTS,
    })
}

/// A request's outcome as its result; `lost` requests of the same
/// exchange got no answer.
fn settle(o: Outcome, lost: usize) -> Result<Vec<Vec<u8>>, NetlinkError> {
    match o.result {
        Some(Ok(())) => Ok(o.replies),
        Some(Err(e)) => Err(NetlinkError::Kernel(e)),
        None => Err(NetlinkError::Overrun { lost }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump_outcome(interrupted: bool, result: Result<(), KernelError>) -> Outcome {
        Outcome {
            replies: vec![vec![1]],
            result: Some(result),
            interrupted,
        }
    }

    #[test]
    fn an_interrupted_dump_is_read_again_then_reported() {
        let mut calls = 0;
        let got = consistent(|| {
            calls += 1;
            Ok(dump_outcome(calls < 3, Ok(())))
        });
        assert_eq!(
            (got.unwrap().len(), calls),
            (1, 3),
            "the third one was whole"
        );

        let mut calls = 0;
        let err = consistent(|| {
            calls += 1;
            Ok(dump_outcome(true, Ok(())))
        })
        .unwrap_err();
        assert_eq!(calls, DUMP_ATTEMPTS);
        assert!(err.is_interrupted(), "{err}");
        assert!(err.to_string().contains("interrupted"), "{err}");

        // A failed dump is the kernel's answer, not a reason to read again.
        let mut calls = 0;
        let err = consistent(|| {
            calls += 1;
            Ok(dump_outcome(true, Err(KernelError::new(libc::EINVAL))))
        })
        .unwrap_err();
        assert_eq!((err.errno(), calls), (Some(libc::EINVAL), 1));
    }

    #[test]
    fn lost_answers_are_reported_as_such() {
        let o = Outcome::default();
        let err = settle(o, 3).unwrap_err();
        assert!(matches!(err, NetlinkError::Overrun { lost: 3 }), "{err}");
        assert!(err.to_string().contains("ENOBUFS"), "{err}");
    }
}
