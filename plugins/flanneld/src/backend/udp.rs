//! udp: a TUN device `flannel0` and a UDP socket. A packet for another
//! node's subnet is sent whole, as the UDP payload, to that node's public
//! address; what arrives on the socket is written back to the TUN device.
//! Slower than vxlan (every packet crosses into user space twice), kept for
//! networks where VXLAN cannot pass.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use ipnetwork::IpNetwork;
use netkit::route::Route;

use crate::health::Health;

pub const TUN_NAME: &str = "flannel0";
/// The port when the config names none (or 0), as upstream.
pub const DEFAULT_PORT: u16 = 8285;
/// The outer IPv4 and UDP headers.
pub const OVERHEAD: u32 = 28;

nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<nix::libc::c_int>()),
    nix::libc::ifreq
);

/// Where each peer subnet is reached.
pub type Peers = Arc<RwLock<Vec<(IpNetwork, SocketAddr)>>>;

/// The running backend as the resync sees it.
#[derive(Debug)]
pub struct Plane {
    /// Shared with the forwarding threads.
    pub peers: Peers,
    pub tun_index: u32,
}

/// The whole cluster network through the TUN device.
pub fn cluster_route(network: IpNetwork, tun_index: u32) -> Route {
    let mut r = crate::routes::new(network.network(), network.prefix());
    r.oif = Some(tun_index);
    r
}

fn open_tun(name: &str) -> Result<File, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("cannot open /dev/net/tun: {e}"))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, b) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *slot = b as nix::libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (nix::libc::IFF_TUN | nix::libc::IFF_NO_PI) as nix::libc::c_short;
    // SAFETY: the fd is an open /dev/net/tun, and req is a valid ifreq
    // that outlives the call.
    unsafe { tun_set_iff(file.as_raw_fd(), &req) }
        .map_err(|e| format!("cannot create TUN device {name}: {e}"))?;
    Ok(file)
}

/// Why a datagram from the network was not written to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not an IPv4 packet we could read.
    Malformed,
    /// Its outer source is no current peer's public address.
    NotAPeer,
    /// A peer sent it, but its inner source lies outside that peer's subnet.
    Spoofed,
}

/// Whether a datagram from `from` carrying `packet` may enter the pod
/// network: only from a current peer's public address, and only with an
/// inner source inside that peer's subnet. Upstream's backend writes
/// whatever arrives, so anyone reaching the port could inject packets with
/// any source address.
pub fn admit(
    peers: &[(IpNetwork, SocketAddr)],
    from: IpAddr,
    packet: &[u8],
) -> Result<(), Refused> {
    if destination(packet).is_none() {
        return Err(Refused::Malformed);
    }
    let src = IpAddr::V4(Ipv4Addr::new(
        packet[12], packet[13], packet[14], packet[15],
    ));
    let mut known = false;
    for (net, _) in peers.iter().filter(|(_, a)| a.ip() == from) {
        known = true;
        if net.contains(src) {
            return Ok(());
        }
    }
    Err(if known {
        Refused::Spoofed
    } else {
        Refused::NotAPeer
    })
}

/// The IPv4 destination of a packet read from the TUN device.
fn destination(packet: &[u8]) -> Option<IpAddr> {
    (packet.len() >= 20 && packet[0] >> 4 == 4).then(|| {
        IpAddr::V4(Ipv4Addr::new(
            packet[16], packet[17], packet[18], packet[19],
        ))
    })
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Forwarding as a router does: TTL down by one with the header checksum
/// patched (RFC 1624). `false` when the packet must not go on.
fn decrement_ttl(packet: &mut [u8]) -> bool {
    if packet.len() < 20 || packet[8] <= 1 {
        return false;
    }
    let old = u16::from_be_bytes([packet[8], packet[9]]);
    packet[8] -= 1;
    let new = u16::from_be_bytes([packet[8], packet[9]]);
    let hc = u16::from_be_bytes([packet[10], packet[11]]);
    let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    packet[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    true
}

/// An ICMP "destination network unreachable" to the sender of `packet`,
/// quoting its header and first 8 bytes of payload. It comes from the
/// unreachable address itself: our own would be dropped by the kernel as a
/// martian when written back into the device.
fn net_unreachable(packet: &[u8]) -> Option<Vec<u8>> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    // Never answer an ICMP error with another.
    if packet.len() < ihl + 1 || (packet[9] == 1 && packet[ihl] != 8) {
        return None;
    }
    let quoted = &packet[..packet.len().min(ihl + 8)];
    let mut icmp = vec![3u8, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quoted);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = u16::try_from(20 + icmp.len()).ok()?;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&packet[16..20]);
    ip.extend_from_slice(&packet[12..16]);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    Some(ip)
}

/// Counts a packet that could not be passed on; logs the 1st, 2nd, 4th,
/// 8th... so a persistent failure shows without flooding the log.
fn forward_failed(health: &Health, what: &str, e: &std::io::Error) {
    let n = health
        .metrics
        .udp_forward_errors
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    if n.is_power_of_two() {
        crate::warn!("udp: {what}: {e} ({n} packets lost so far)");
    }
}

/// A forwarding thread ended on an error: nothing passes any more until a
/// restart.
fn stopped(what: &str, e: &std::io::Error) {
    crate::error!("udp: {what}: {e}; the forwarder stopped (restart flanneld)");
}

/// Held by a forwarding thread: however it ends (an error, a panic), the
/// health endpoints learn of it.
struct Running(Arc<Health>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.forwarder_died();
    }
}

/// Opens the device and the socket on `local:port` (the config's port:
/// the one peers send to) and starts the two forwarding threads. The
/// device lives as long as the process (it is not persistent), like
/// upstream's.
pub fn start(local: Ipv4Addr, port: u16, peers: Peers, health: Arc<Health>) -> Result<(), String> {
    let tun = open_tun(TUN_NAME)?;
    let sock = UdpSocket::bind((local, port))
        .map_err(|e| format!("cannot bind UDP {local}:{port}: {e}"))?;
    let mut tun_in = tun.try_clone().map_err(|e| e.to_string())?;
    let mut tun_back = tun.try_clone().map_err(|e| e.to_string())?;
    let mut tun_out = tun;
    let sock_in = sock.try_clone().map_err(|e| e.to_string())?;
    let peers_in = peers.clone();
    let running_in = Running(health.clone());
    std::thread::spawn(move || {
        let health = &running_in.0;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match tun_in.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return stopped(&format!("cannot read {TUN_NAME}"), &e),
            };
            let Some(dst) = destination(&buf[..n]) else {
                continue;
            };
            let to = peers
                .read()
                .ok()
                .and_then(|p| p.iter().find(|(net, _)| net.contains(dst)).map(|(_, a)| *a));
            match to {
                Some(to) => {
                    if !decrement_ttl(&mut buf[..n]) {
                        continue;
                    }
                    match sock.send_to(&buf[..n], to) {
                        Ok(_) => {
                            let m = &health.metrics;
                            m.udp_tx_packets.fetch_add(1, Ordering::Relaxed);
                            m.udp_tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => forward_failed(health, &format!("cannot send to {to}"), &e),
                    }
                }
                None => {
                    if let Some(reply) = net_unreachable(&buf[..n])
                        && let Err(e) = tun_back.write(&reply)
                    {
                        forward_failed(health, "cannot answer net unreachable", &e);
                    }
                }
            }
        }
    });
    let running_out = Running(health);
    std::thread::spawn(move || {
        let health = &running_out.0;
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = match sock_in.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return stopped("cannot receive", &e),
            };
            let verdict = peers_in
                .read()
                .map_or(Err(Refused::NotAPeer), |p| admit(&p, from.ip(), &buf[..n]));
            let m = &health.metrics;
            if let Err(why) = verdict {
                let counter = match why {
                    Refused::Malformed => &m.udp_drop_malformed,
                    Refused::NotAPeer => &m.udp_drop_not_peer,
                    Refused::Spoofed => &m.udp_drop_spoofed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            m.udp_rx_packets.fetch_add(1, Ordering::Relaxed);
            m.udp_rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
            if let Err(e) = tun_out.write(&buf[..n]) {
                // The device is gone: nothing will ever be written again.
                if e.raw_os_error() == Some(nix::libc::EBADFD) {
                    return stopped(&format!("cannot write {TUN_NAME}"), &e);
                }
                forward_failed(health, &format!("cannot write {TUN_NAME}"), &e);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(ttl: u8) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 28, 0, 1, 0, 0, ttl, 1, 0, 0, 10, 244, 1, 2, 10, 244, 9, 9,
        ];
        let c = checksum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0]); // an echo request
        p
    }

    #[test]
    fn ttl_goes_down_and_the_checksum_stays_right() {
        let mut p = packet(64);
        assert!(decrement_ttl(&mut p));
        assert_eq!(p[8], 63);
        assert_eq!(checksum(&p[..20]), 0, "a valid header sums to zero");
        assert!(!decrement_ttl(&mut packet(1)));
    }

    #[test]
    fn unreachable_answers_the_sender_and_never_an_error() {
        let reply = net_unreachable(&packet(64)).unwrap();
        assert_eq!(&reply[12..16], &[10, 244, 9, 9]);
        assert_eq!(&reply[16..20], &[10, 244, 1, 2]);
        assert_eq!((reply[20], reply[21]), (3, 0));
        assert_eq!(checksum(&reply[..20]), 0);
        assert_eq!(checksum(&reply[20..]), 0);
        let mut error = packet(64);
        error[20] = 3; // an ICMP error itself
        assert!(net_unreachable(&error).is_none());
    }

    #[test]
    fn only_a_peer_may_send_and_only_from_its_subnet() {
        let peers = [(
            "10.244.1.0/24".parse().unwrap(),
            "192.168.77.11:8285".parse().unwrap(),
        )];
        let peer: IpAddr = "192.168.77.11".parse().unwrap();
        // packet(): from 10.244.1.2 to 10.244.9.9.
        assert_eq!(admit(&peers, peer, &packet(64)), Ok(()));
        let stranger: IpAddr = "192.168.77.50".parse().unwrap();
        assert_eq!(admit(&peers, stranger, &packet(64)), Err(Refused::NotAPeer));
        let mut spoofed = packet(64);
        spoofed[12..16].copy_from_slice(&[10, 244, 2, 7]);
        assert_eq!(admit(&peers, peer, &spoofed), Err(Refused::Spoofed));
        assert_eq!(admit(&peers, peer, &[0x45, 0]), Err(Refused::Malformed));
    }

    #[test]
    fn reads_the_ipv4_destination() {
        let mut p = [0u8; 20];
        p[0] = 0x45;
        p[16..20].copy_from_slice(&[10, 244, 3, 7]);
        assert_eq!(destination(&p), Some("10.244.3.7".parse().unwrap()));
        p[0] = 0x60;
        assert_eq!(destination(&p), None);
        assert_eq!(destination(&p[..10]), None);
    }
}
