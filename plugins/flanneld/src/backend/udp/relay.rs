//! What the userspace forwarders (udp, wireguard) share: the peer table
//! the agent replaces whole and the forwarders read without a lock, the
//! guard that reports a forwarder that ended, reading the device, answering
//! for subnets nobody leases, flushing a batch of sends, and writing to the
//! device.

use std::fs::File;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Sockets;
use super::offload::{self, VNET_HDR_LEN, Wrote};
use super::packet;
use super::sys::{self, SendBatch};
use crate::health::Health;

/// A value the agent replaces whole (a peer table) and forwarders read:
/// each looks at one atomic generation number per batch and takes the
/// lock only when it moved.
#[derive(Debug)]
pub struct Published<T> {
    generation: AtomicU64,
    current: Mutex<Arc<T>>,
}

impl<T> Published<T> {
    pub fn new(first: T) -> Published<T> {
        Published {
            generation: AtomicU64::new(0),
            current: Mutex::new(Arc::new(first)),
        }
    }

    /// Replaces the value with what `next` makes of the current one
    /// (`None`: unchanged). A forwarder that panicked while holding the
    /// lock left the value whole: it is used as it is.
    pub fn update(&self, next: impl FnOnce(&T) -> Option<T>) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = next(&cur) {
            *cur = Arc::new(v);
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// The value now.
    pub fn get(&self) -> Arc<T> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn reader(self: &Arc<Self>) -> Reader<T> {
        Reader {
            seen: self.generation.load(Ordering::Acquire),
            snap: self.get(),
            src: self.clone(),
        }
    }
}

/// A forwarder's view: refreshed only when the generation moved.
#[derive(Debug)]
pub struct Reader<T> {
    src: Arc<Published<T>>,
    seen: u64,
    snap: Arc<T>,
}

impl<T> Reader<T> {
    pub fn get(&mut self) -> &Arc<T> {
        let g = self.src.generation.load(Ordering::Acquire);
        if g != self.seen {
            self.snap = self.src.get();
            self.seen = g;
        }
        &self.snap
    }
}

/// Held by a forwarding thread: however it ends (an error, a panic), the
/// health endpoints learn of it.
#[derive(Debug)]
pub struct Running(pub Arc<Health>, pub &'static str);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.forwarder_died(self.1);
    }
}

/// A forwarding thread ended on an error: nothing passes any more until a
/// restart.
pub fn stopped(tag: &str, what: &str, e: &io::Error) {
    crate::error!("{tag}: {what}: {e}; the forwarder stopped (restart flanneld)");
}

/// Adds `n` lost packets to `counter`; logs the 1st, 2nd, 4th, 8th... so a
/// lasting failure shows without flooding the log.
pub fn count_lost(
    counter: &AtomicU64,
    tag: &str,
    what: std::fmt::Arguments<'_>,
    e: &io::Error,
    n: u64,
) {
    if n == 0 {
        return;
    }
    let before = counter.fetch_add(n, Ordering::Relaxed);
    let after = before + n;
    if (before + 1..=after).any(u64::is_power_of_two) {
        crate::warn!("{tag}: {what}: {e} ({after} packets lost so far)");
    }
}

/// What a read of the device gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A packet of this many bytes.
    Packet(usize),
    /// The queue is empty: send what is batched, then [`wait_device`].
    Empty,
    /// The device failed (said): the thread ends.
    Stop,
}

/// The next packet from the device into `buf`.
pub fn read_device(tun: &mut File, buf: &mut [u8], tag: &str, dev: &str) -> Next {
    loop {
        match tun.read(buf) {
            Ok(n) => return Next::Packet(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Empty,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                stopped(tag, &format!("cannot read {dev}"), &e);
                return Next::Stop;
            }
        }
    }
}

/// Waits until the device has a packet; `false` when it failed (said).
pub fn wait_device(tun: &File, tag: &str, dev: &str) -> bool {
    match sys::wait_readable(tun.as_raw_fd()) {
        Err(e) if e.kind() != ErrorKind::Interrupted => {
            stopped(tag, &format!("cannot wait for {dev}"), &e);
            false
        }
        _ => true,
    }
}

/// Answers a packet for a subnet nobody leases, as a router would (ICMP
/// net unreachable, written back to the device).
pub fn answer_unreachable(p: &[u8], tun: &mut File, vnet: bool) -> io::Result<()> {
    let Some(reply) = packet::unreachable(p) else {
        return Ok(());
    };
    // A TUN write takes a whole packet or fails: the count says nothing.
    if vnet {
        tun.write_vectored(&[IoSlice::new(&[0; VNET_HDR_LEN]), IoSlice::new(&reply)])
            .map(|_| ())
    } else {
        tun.write_all(&reply)
    }
}

/// A sending thread's sockets (one per underlay family in use) and a
/// batch of messages queued for each.
#[derive(Debug)]
pub struct Outbound {
    socks: Sockets,
    b4: SendBatch,
    b6: SendBatch,
}

impl Outbound {
    pub fn new(socks: Sockets) -> Outbound {
        Outbound {
            socks,
            b4: SendBatch::new(),
            b6: SendBatch::new(),
        }
    }

    /// The batch for one underlay family.
    pub fn batch(&mut self, v4: bool) -> &mut SendBatch {
        if v4 { &mut self.b4 } else { &mut self.b6 }
    }

    /// Sends what the family's batch holds, its parts read from `bufs`. A
    /// kernel that refuses segmentation turns `gso` off for good (said
    /// once). Returns what was lost: the last error, its destination, how
    /// many.
    pub fn flush(
        &mut self,
        v4: bool,
        bufs: &[&[u8]],
        gso: &AtomicBool,
        tag: &str,
    ) -> Option<(io::Error, SocketAddr, usize)> {
        let (batch, sock) = if v4 {
            (&mut self.b4, self.socks.v4.as_ref())
        } else {
            (&mut self.b6, self.socks.v6.as_ref())
        };
        if batch.is_empty() {
            return None;
        }
        // Never: routes only name families we have a socket for.
        let Some(sock) = sock else {
            batch.clear();
            return None;
        };
        let done = batch.flush(sock, bufs);
        if let Some(e) = &done.unsegmented
            && gso.swap(false, Ordering::Relaxed)
        {
            crate::warn!(
                "{tag}: the kernel refused UDP segmentation ({e}): one datagram per send from now on"
            );
        }
        done.error.map(|(e, to)| (e, to, done.lost))
    }
}

/// Writes to the device, keeping the last failure and how many packets it
/// cost until [`DeviceWriter::take`].
#[derive(Debug, Default)]
pub struct DeviceWriter {
    lost: u64,
    failed: Option<io::Error>,
}

impl DeviceWriter {
    pub fn write(&mut self, tun: &mut File, s: &[IoSlice<'_>]) -> Wrote {
        // A TUN write takes a whole packet or fails.
        match tun.write_vectored(s).map(|_| ()) {
            Ok(()) => Wrote::Taken,
            Err(e) => {
                let invalid = e.raw_os_error() == Some(nix::libc::EINVAL);
                // A joined write refused as invalid is the joiner's to
                // write again, packet by packet.
                if !(invalid && offload::joined(s)) {
                    // A packet for each payload behind the header.
                    self.lost += s.len().saturating_sub(1).max(1) as u64;
                    self.failed = Some(e);
                }
                if invalid {
                    Wrote::Invalid
                } else {
                    Wrote::Failed
                }
            }
        }
    }

    /// The failure since the last call and the packets it cost; `Err`
    /// when the device is gone for good (the thread should end).
    pub fn take(&mut self) -> Result<Option<(io::Error, u64)>, io::Error> {
        let Some(e) = self.failed.take() else {
            return Ok(None);
        };
        let lost = std::mem::take(&mut self.lost);
        if e.raw_os_error() == Some(nix::libc::EBADFD) {
            return Err(e);
        }
        Ok(Some((e, lost)))
    }
}

/// After the device refused a joined run of UDP datagrams that it takes
/// one by one (a kernel before 6.2), how long such runs are written one by
/// one before joining is tried again: such a kernel costs a refused write
/// (its datagrams then written alone) a minute, and no single event turns
/// joining off for good.
const UDP_REJOIN: Duration = Duration::from_secs(60);

/// When the joiner may join UDP datagrams again.
#[derive(Debug, Default)]
pub struct Rejoin {
    at: Option<Instant>,
    said: bool,
}

impl Rejoin {
    /// Before a batch: joining UDP again once the pause is over.
    pub fn before(&mut self, joiner: &mut offload::Joiner) {
        if let Some(at) = self.at
            && Instant::now() >= at
        {
            joiner.udp = true;
            self.at = None;
        }
    }

    /// After a batch: a refused run pauses UDP joining (said once).
    pub fn after(&mut self, joiner: &mut offload::Joiner, tag: &str, dev: &str) {
        if joiner.udp_refused() {
            self.at = Some(Instant::now() + UDP_REJOIN);
            if !self.said {
                self.said = true;
                crate::warn!(
                    "{tag}: {dev} refused a joined run of UDP datagrams it takes one by one (a kernel before 6.2): written one by one, joined again every {}s to try",
                    UDP_REJOIN.as_secs()
                );
            }
        }
    }
}
