//! udp: a TUN device `flannel0` and UDP sockets. A packet for another
//! node's subnet is sent whole, as the UDP payload, to that node's public
//! address; what arrives is written back to the device. On the wire this
//! is upstream's format: one inner packet per datagram, port 8285.
//!
//! The fast path: the device hands over TCP super-packets of up to 64 KB
//! (`IFF_VNET_HDR`, `TUNSETOFFLOAD`; UDP ones too from senders that
//! segment, such as QUIC stacks), which are cut to the tunnel's MTU
//! here and sent as one run of datagrams the kernel cuts apart
//! (`UDP_SEGMENT`); received runs come coalesced (`UDP_GRO`) and are
//! joined back into super-packets for the device. One queue of the device
//! and one socket per family for each core (`IFF_MULTI_QUEUE`,
//! `SO_REUSEPORT`), sends and receives batched (`sendmmsg`/`recvmmsg`).
//! Whatever the kernel lacks is done without, and said once.

mod backend;
mod forward;
pub mod offload;
pub mod packet;
pub mod relay;
pub mod sys;
pub mod table;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::health::Health;
pub use backend::{Udp, ensure_device};
use forward::Ctx;
pub use forward::{Offloads, Sockets};
pub use table::{Entry, Refused, Table};

pub const TUN_NAME: &str = "flannel0";
/// The port when the config names none (or 0), as upstream.
pub const DEFAULT_PORT: u16 = 8285;

/// Outer IP and UDP headers: the tunnel's MTU is the underlay's less this.
pub fn overhead(ipv6_underlay: bool) -> u32 {
    if ipv6_underlay { 48 } else { 28 }
}

/// Where this node sends from and listens.
#[derive(Debug, Clone, Copy)]
pub struct Local {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub port: u16,
    /// `--udp-offload`: use the kernel's offloads where it has them.
    pub offload: bool,
}

/// How many queues: one per core, a few at most.
fn queues() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// The device's queues, with the offloads the kernel grants; falls back
/// step by step (no offloads, no header, one queue) and says so. `tag`
/// names the backend in the log.
fn open_device(
    name: &str,
    tag: &str,
    want: usize,
    offload: bool,
) -> Result<(Vec<std::fs::File>, bool), String> {
    let err = |e: std::io::Error| format!("cannot create TUN device {name}: {e}");
    let multi = want > 1;
    let first = if offload {
        match sys::tun_queue(name, true, multi) {
            Ok(f) => Some(f),
            Err(e) => {
                crate::warn!("{tag}: no virtio-net header on {name} ({e}): packets one at a time");
                None
            }
        }
    } else {
        None
    };
    let (first, vnet, multi) = match first {
        Some(f) => (f, true, multi),
        None => match sys::tun_queue(name, false, multi) {
            Ok(f) => (f, false, multi),
            Err(e) if multi => {
                crate::warn!("{tag}: no multi-queue TUN ({e}): one queue");
                (
                    sys::tun_queue(name, false, false).map_err(err)?,
                    false,
                    false,
                )
            }
            Err(e) => return Err(err(e)),
        },
    };
    if vnet {
        match sys::tun_offload(&first) {
            Ok(true) => {}
            Ok(false) => crate::info!(
                "{tag}: no UDP super-packets from {name} (a kernel before 6.2): TCP ones only"
            ),
            Err(e) => {
                crate::warn!("{tag}: the kernel refused TUN offloads ({e}): packets one at a time")
            }
        }
    }
    let mut files = vec![first];
    while multi && files.len() < want {
        match sys::tun_queue(name, vnet, true) {
            Ok(f) => files.push(f),
            Err(e) => {
                crate::warn!(
                    "{tag}: cannot add a queue to {name} ({e}): {} queues",
                    files.len()
                );
                break;
            }
        }
    }
    Ok((files, vnet))
}

/// One queue of a device and its sockets.
#[derive(Debug)]
pub struct Queue {
    pub tun: std::fs::File,
    pub socks: Sockets,
}

/// A TUN device `name` with a queue per core, and per queue a socket for
/// each address in `binds` (one per underlay family), with the offloads
/// the kernel grants (all off without `offload`), said in the log.
pub fn open(
    name: &str,
    tag: &str,
    binds: &[SocketAddr],
    offload: bool,
) -> Result<(Vec<Queue>, Arc<Offloads>), String> {
    let (tuns, vnet) = open_device(name, tag, queues(), offload)?;
    let shared = tuns.len() > 1;
    let mut gro = offload;
    let mut gso = offload;
    let mut out = Vec::new();
    for tun in tuns {
        let mut socks = Sockets { v4: None, v6: None };
        for &at in binds {
            let s =
                sys::udp_socket(at, shared).map_err(|e| format!("cannot bind UDP {at}: {e}"))?;
            if gro && let Err(e) = sys::enable_gro(&s) {
                crate::warn!(
                    "{tag}: no UDP receive coalescing (UDP_GRO: {e}): one datagram per packet"
                );
                gro = false;
            }
            if gso && let Err(e) = sys::probe_gso(&s) {
                crate::warn!(
                    "{tag}: no UDP segmentation (UDP_SEGMENT: {e}): one datagram per send"
                );
                gso = false;
            }
            match at {
                SocketAddr::V4(_) => socks.v4 = Some(s),
                SocketAddr::V6(_) => socks.v6 = Some(s),
            }
        }
        out.push(Queue { tun, socks });
    }
    crate::info!(
        "{tag}: {} queue(s) on {name}; TUN offloads {}, UDP segmentation {}, coalescing {}{}",
        out.len(),
        on(vnet),
        on(gso),
        on(gro),
        if offload {
            ""
        } else {
            " (--udp-offload=false)"
        }
    );
    Ok((
        out,
        Arc::new(Offloads {
            vnet,
            gso: AtomicBool::new(gso),
        }),
    ))
}

/// A copy of each of `socks`' sockets (for another thread).
pub fn clone_sockets(socks: &Sockets) -> Result<Sockets, String> {
    let clone = |s: &Option<std::net::UdpSocket>| -> Result<_, String> {
        s.as_ref()
            .map(|s| s.try_clone().map_err(|e| e.to_string()))
            .transpose()
    };
    Ok(Sockets {
        v4: clone(&socks.v4)?,
        v6: clone(&socks.v6)?,
    })
}

/// Opens the device and the sockets, and starts the forwarding threads.
/// The device lives as long as the process (it is not persistent), like
/// upstream's.
pub fn start(local: Local, peers: Arc<Table>, health: Arc<Health>) -> Result<(), String> {
    let binds: Vec<SocketAddr> = [local.v4.map(IpAddr::V4), local.v6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
        .map(|ip| SocketAddr::new(ip, local.port))
        .collect();
    let (queues, off) = open(TUN_NAME, "udp", &binds, local.offload)?;
    let ctx = || Ctx {
        health: health.clone(),
        off: off.clone(),
    };
    for Queue { tun, socks } in queues {
        let copies = clone_sockets(&socks)?;
        for sock in [copies.v4, copies.v6].into_iter().flatten() {
            let (t, r, c) = (
                tun.try_clone().map_err(|e| e.to_string())?,
                peers.reader(),
                ctx(),
            );
            spawn("udp-rx", move || forward::network_to_device(sock, t, r, c))?;
        }
        let (r, c) = (peers.reader(), ctx());
        spawn("udp-tx", move || {
            forward::device_to_network(tun, socks, r, c)
        })?;
    }
    Ok(())
}

fn on(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

pub fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| format!("cannot start a forwarding thread: {e}"))
}
