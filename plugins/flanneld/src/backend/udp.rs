//! udp: a TUN device `flannel0` and a UDP socket. A packet for another
//! node's subnet is sent whole, as the UDP payload, to that node's public
//! address; what arrives on the socket is written back to the TUN device.
//! Slower than vxlan (every packet crosses into user space twice), kept for
//! networks where VXLAN cannot pass.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};

use ipnetwork::IpNetwork;

pub const TUN_NAME: &str = "flannel0";
/// The outer IPv4 and UDP headers.
pub const OVERHEAD: u32 = 28;

nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<nix::libc::c_int>()),
    nix::libc::ifreq
);

/// Where each peer subnet is reached.
pub type Peers = Arc<RwLock<Vec<(IpNetwork, SocketAddr)>>>;

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

/// The IPv4 destination of a packet read from the TUN device.
fn destination(packet: &[u8]) -> Option<IpAddr> {
    (packet.len() >= 20 && packet[0] >> 4 == 4).then(|| {
        IpAddr::V4(Ipv4Addr::new(
            packet[16], packet[17], packet[18], packet[19],
        ))
    })
}

/// Opens the device and the socket and starts the two forwarding threads.
/// The device lives as long as the process (it is not persistent), like
/// upstream's.
pub fn start(local: Ipv4Addr, port: u16, peers: Peers) -> Result<(), String> {
    let tun = open_tun(TUN_NAME)?;
    let sock = UdpSocket::bind((local, port))
        .map_err(|e| format!("cannot bind UDP {local}:{port}: {e}"))?;
    let mut tun_in = tun.try_clone().map_err(|e| e.to_string())?;
    let mut tun_out = tun;
    let sock_in = sock.try_clone().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = tun_in.read(&mut buf) {
            let Some(dst) = destination(&buf[..n]) else {
                continue;
            };
            let to = peers
                .read()
                .ok()
                .and_then(|p| p.iter().find(|(net, _)| net.contains(dst)).map(|(_, a)| *a));
            if let Some(to) = to {
                let _ = sock.send_to(&buf[..n], to);
            }
        }
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, _)) = sock_in.recv_from(&mut buf) {
            if destination(&buf[..n]).is_some() {
                let _ = tun_out.write(&buf[..n]);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
