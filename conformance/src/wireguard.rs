//! WireGuard from the test's side: keys made by `wg` (wireguard-tools),
//! the reference userspace implementation (Debian's `wireguard-go`) run in
//! a test namespace and configured with `wg set`, and underlay captures
//! (`tcpdump -w`) read back by a small classic-pcap reader, to look at
//! what crossed the wire.
//!
//! Everything is stopped and removed on drop, also when the test panics.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::daemon::{Daemon, DaemonOptions, wait_for};
use crate::netns::TestNetns;

/// `wg <args>` with `input` on stdin; its stdout trimmed, or the test fails.
fn wg(args: &[&str], input: Option<&str>) -> String {
    let mut child = Command::new("wg")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`wg` is needed (apt-get install wireguard-tools; scripts/test.sh does)");
    if let Some(mut stdin) = child.stdin.take()
        && let Some(text) = input
    {
        stdin.write_all(text.as_bytes()).expect("cannot feed wg");
    }
    let out = child.wait_with_output().expect("wg failed");
    assert!(
        out.status.success(),
        "wg {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A new private key (`wg genkey`: base64 of 32 bytes).
pub fn genkey() -> String {
    wg(&["genkey"], None)
}

/// A new preshared key (`wg genpsk`).
pub fn genpsk() -> String {
    wg(&["genpsk"], None)
}

/// The public key of `private` (`wg pubkey`).
pub fn pubkey(private: &str) -> String {
    wg(&["pubkey"], Some(&format!("{}\n", private.trim())))
}

/// Writes a key (private or preshared) to `path`, readable by root only,
/// as `wg set` wants to read it.
pub fn write_key(path: &Path, key: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    writeln!(f, "{}", key.trim())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// One peer of a [`WgGo`] device, as `wg set ... peer` takes it.
#[derive(Debug, Clone, Default)]
pub struct WgPeer {
    pub public_key: String,
    /// A file holding the preshared key.
    pub preshared_key: Option<PathBuf>,
    /// `ip:port` or `[ip6]:port`.
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Seconds.
    pub persistent_keepalive: Option<u32>,
}

static NEXT_IF: AtomicU32 = AtomicU32::new(0);

/// Where wireguard-go's UAPI sockets are (one filesystem for every
/// simulated host: the interface names must differ).
const UAPI_DIR: &str = "/var/run/wireguard";

/// Debian's `wireguard-go` running one device in a test namespace, in the
/// foreground, stopped (and its UAPI socket removed) on drop. It opens
/// /dev/net/tun in the network namespace it runs in, so it is started in
/// the test's namespace (entered between fork and exec, see
/// [`crate::netns::spawn_in`]) and its device is made there; its UDP
/// sockets too. The UAPI socket is in the filesystem, which every
/// simulated host shares, so `wg` finds the device by name alone.
#[derive(Debug)]
pub struct WgGo {
    daemon: Option<Daemon>,
    ns: TestNetns,
    pub ifname: String,
    private_key: String,
    key_file: PathBuf,
    log: PathBuf,
}

impl WgGo {
    /// Starts `wireguard-go -f <name>` in `ns` with a new private key (its
    /// files, the key and the log, in `dir`), waits for its UAPI socket,
    /// and sets the key and `listen_port`. The device is up, without
    /// addresses or peers yet.
    pub fn start(ns: &TestNetns, dir: &Path, listen_port: u16) -> WgGo {
        Self::start_with_key(ns, dir, &genkey(), listen_port)
    }

    /// As [`WgGo::start`], with the private key `private`.
    pub fn start_with_key(ns: &TestNetns, dir: &Path, private: &str, listen_port: u16) -> WgGo {
        // Unique on this machine: the socket directory is shared by every
        // namespace and by test binaries running side by side. At most
        // 2 + 7 + 1 + 5 characters, within IFNAMSIZ - 1 = 15.
        let n = NEXT_IF.fetch_add(1, Ordering::Relaxed);
        let ifname = format!("wg{}x{n}", std::process::id());
        let sock = Path::new(UAPI_DIR).join(format!("{ifname}.sock"));
        // A socket left by a killed run of a process with our pid.
        if sock.exists() && std::os::unix::net::UnixStream::connect(&sock).is_err() {
            let _ = std::fs::remove_file(&sock);
        }
        let key_file = dir.join(format!("{ifname}.key"));
        write_key(&key_file, private);
        let log = dir.join(format!("{ifname}.log"));
        let opts = DaemonOptions {
            env: vec![("WG_PROCESS_FOREGROUND".into(), "1".into())],
            ..DaemonOptions::default()
        };
        let daemon = Daemon::try_start(
            Path::new("/usr/bin/wireguard-go"),
            &["-f".to_string(), ifname.clone()],
            ns,
            &log,
            &opts,
        )
        .unwrap_or_else(|e| panic!("{e} (apt-get install wireguard-go; scripts/test.sh does)"));
        let mut wg = WgGo {
            daemon: Some(daemon),
            ns: ns.handle(),
            ifname,
            private_key: private.trim().to_string(),
            key_file,
            log,
        };
        let up = wait_for(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        if !up {
            let alive = wg.daemon.as_mut().is_some_and(Daemon::alive);
            panic!(
                "wireguard-go made no UAPI socket {} within 10 s (running: {alive}): {}",
                sock.display(),
                wg.log()
            );
        }
        let port = listen_port.to_string();
        let key = wg.key_file.display().to_string();
        wg.set(&["private-key", &key, "listen-port", &port]);
        wg.ns.ip(&["link", "set", &wg.ifname, "up"]);
        wg
    }

    pub fn private_key(&self) -> &str {
        &self.private_key
    }

    pub fn public_key(&self) -> String {
        pubkey(&self.private_key)
    }

    /// What wireguard-go printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `wg <args>` inside the device's namespace; its stdout, or the test
    /// fails.
    pub fn wg(&self, args: &[&str]) -> String {
        let out = self.ns.exec("wg", args);
        assert!(
            out.status.success(),
            "wg {} in {}: {}\nwireguard-go:\n{}",
            args.join(" "),
            self.ns.name(),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `wg set <device> <args>`.
    pub fn set(&self, args: &[&str]) {
        let mut all = vec!["set", self.ifname.as_str()];
        all.extend_from_slice(args);
        self.wg(&all);
    }

    /// Adds (or updates) a peer.
    pub fn peer(&self, p: &WgPeer) {
        let mut args = vec!["peer".to_string(), p.public_key.clone()];
        if let Some(f) = &p.preshared_key {
            args.extend(["preshared-key".into(), f.display().to_string()]);
        }
        if let Some(e) = &p.endpoint {
            args.extend(["endpoint".into(), e.clone()]);
        }
        if !p.allowed_ips.is_empty() {
            args.extend(["allowed-ips".into(), p.allowed_ips.join(",")]);
        }
        if let Some(k) = p.persistent_keepalive {
            args.extend(["persistent-keepalive".into(), k.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.set(&args);
    }

    /// Adds `cidr` to the device (an IPv6 one without duplicate address
    /// detection: usable at once).
    pub fn address(&self, cidr: &str) {
        let mut args = vec!["addr", "add", cidr, "dev", &self.ifname];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ns.ip(&args);
    }

    /// Routes `cidr` through the device, from `src` when given.
    pub fn route(&self, cidr: &str, src: Option<&str>) {
        let mut args = vec!["route", "add", cidr, "dev", &self.ifname];
        if let Some(s) = src {
            args.extend(["src", s]);
        }
        self.ns.ip(&args);
    }

    /// `wg show <device> dump`: the device line, then a line per peer
    /// (public key, psk, endpoint, allowed ips, latest handshake, rx, tx,
    /// keepalive; tab-separated).
    pub fn dump(&self) -> String {
        self.wg(&["show", &self.ifname, "dump"])
    }

    /// The seconds since the epoch of the latest handshake with `peer`
    /// (0: none yet).
    pub fn latest_handshake(&self, peer: &str) -> u64 {
        self.dump()
            .lines()
            .skip(1)
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&peer))
            .and_then(|f| f.get(4)?.parse().ok())
            .unwrap_or(0)
    }

    /// Stops wireguard-go (SIGTERM) and removes its socket.
    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
        let _ = std::fs::remove_file(Path::new(UAPI_DIR).join(format!("{}.sock", self.ifname)));
    }
}

impl Drop for WgGo {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `tcpdump -w` on one interface of a test namespace, from when it says
/// it listens until [`Capture::stop`] or drop.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    pub file: PathBuf,
    /// What tcpdump said on stderr so far.
    err: Arc<Mutex<String>>,
}

impl Capture {
    /// Captures what `filter` (a pcap expression, e.g. `udp`) passes on
    /// `iface` in `ns` into `file`; returns once tcpdump listens. `file`
    /// ends in `.pcap`: Debian's AppArmor profile for tcpdump lets it
    /// write only such files (and its stderr is a pipe, for the same
    /// reason).
    pub fn start(ns: &TestNetns, iface: &str, filter: &str, file: &Path) -> Capture {
        assert!(
            file.extension().is_some_and(|e| e == "pcap"),
            "{}: tcpdump may write only *.pcap files under AppArmor",
            file.display()
        );
        let mut cmd = Command::new("tcpdump");
        // Each packet written as it comes (-U, --immediate-mode); as root
        // (-Z root), since the scratch directory is root's.
        cmd.args([
            "--immediate-mode",
            "-U",
            "-n",
            "-Z",
            "root",
            "-i",
            iface,
            "-w",
        ])
        .arg(file)
        .args(filter.split_whitespace())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = crate::netns::spawn_in(&mut cmd, ns)
            .unwrap_or_else(|e| panic!("cannot start tcpdump (apt-get install tcpdump): {e}"));
        let err = Arc::new(Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let err = err.clone();
            // Ends at EOF: when tcpdump does.
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 1024];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut e) = err.lock() {
                        e.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let mut cap = Capture {
            child: Some(child),
            file: file.to_path_buf(),
            err,
        };
        let listening = wait_for(Duration::from_secs(10), || {
            cap.stderr().contains("listening on")
                || cap
                    .child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_some())
        });
        assert!(
            listening && cap.stderr().contains("listening on"),
            "tcpdump -i {iface} in {} does not listen: {}",
            ns.name(),
            cap.stderr()
        );
        cap
    }

    /// What tcpdump said on stderr.
    pub fn stderr(&self) -> String {
        self.err.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The IP packets captured so far (a record still being written is
    /// left out).
    pub fn packets(&self) -> Vec<Packet> {
        let bytes = std::fs::read(&self.file).unwrap_or_default();
        read_pcap(&bytes).unwrap_or_else(|e| panic!("{}: {e}", self.file.display()))
    }

    /// The UDP datagrams captured so far.
    pub fn datagrams(&self) -> Vec<Datagram> {
        udp_datagrams(&self.packets())
    }

    /// Stops tcpdump (SIGINT: it writes out what it has) and returns every
    /// UDP datagram it captured.
    pub fn stop(&mut self) -> Vec<Datagram> {
        if let Some(mut child) = self.child.take() {
            crate::daemon::end_child(
                &mut child,
                nix::sys::signal::Signal::SIGINT,
                Duration::from_secs(5),
            );
        }
        self.datagrams()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One captured IP packet: addresses, protocol, and the IP payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// 17 for UDP, 1 ICMP, 58 ICMPv6, ...
    pub proto: u8,
    pub payload: Vec<u8>,
}

/// One captured UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// Link types tcpdump writes for the interfaces the tests capture on.
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;

/// The IP packets of a classic pcap file (either byte order, micro- or
/// nanosecond stamps; Ethernet, raw IP or Linux "cooked" link types).
/// Frames that hold no IPv4/IPv6 packet are skipped, and so is a last
/// record cut short (tcpdump may be writing it).
pub fn read_pcap(bytes: &[u8]) -> Result<Vec<Packet>, String> {
    if bytes.len() < 24 {
        // tcpdump has not written its header yet.
        return Ok(Vec::new());
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let big = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => false,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => true,
        _ => return Err(format!("not a classic pcap file (magic {magic:02x?})")),
    };
    let u32_at = |b: &[u8], at: usize| {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if big {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    };
    let link = u32_at(bytes, 20) & 0x0fff_ffff;
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen = u32_at(bytes, at + 8) as usize;
        let frame_at = at + 16;
        let Some(frame) = bytes.get(frame_at..frame_at + caplen) else {
            break;
        };
        at = frame_at + caplen;
        let ip = match link {
            LINKTYPE_ETHERNET => ethernet_payload(frame),
            LINKTYPE_RAW => Some(frame),
            LINKTYPE_LINUX_SLL => frame.get(16..).filter(|_| {
                let proto = u16::from_be_bytes([frame[14], frame[15]]);
                proto == 0x0800 || proto == 0x86dd
            }),
            other => return Err(format!("link type {other} is not read here")),
        };
        if let Some(p) = ip.and_then(ip_packet) {
            out.push(p);
        }
    }
    Ok(out)
}

/// What an Ethernet frame carries when it is IPv4 or IPv6 (VLAN tags
/// skipped).
fn ethernet_payload(frame: &[u8]) -> Option<&[u8]> {
    let mut at = 12;
    loop {
        let ty = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        match ty {
            0x8100 | 0x88a8 => at += 4,
            0x0800 | 0x86dd => return frame.get(at + 2..),
            _ => return None,
        }
    }
}

/// An IPv4 or IPv6 packet's addresses, protocol and payload (IPv4
/// fragments other than the first, and IPv6 extension headers, are not
/// followed: the payload is then what follows the fixed header).
fn ip_packet(p: &[u8]) -> Option<Packet> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
            let src: [u8; 4] = p.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = p.get(16..20)?.try_into().ok()?;
            Some(Packet {
                src: Ipv4Addr::from(src).into(),
                dst: Ipv4Addr::from(dst).into(),
                proto: p[9],
                payload: p.get(ihl..total.min(p.len()))?.to_vec(),
            })
        }
        6 => {
            let len = usize::from(u16::from_be_bytes([*p.get(4)?, *p.get(5)?]));
            let src: [u8; 16] = p.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = p.get(24..40)?.try_into().ok()?;
            Some(Packet {
                src: Ipv6Addr::from(src).into(),
                dst: Ipv6Addr::from(dst).into(),
                proto: p[6],
                payload: p.get(40..(40 + len).min(p.len()))?.to_vec(),
            })
        }
        _ => None,
    }
}

/// The UDP datagrams among `packets`.
pub fn udp_datagrams(packets: &[Packet]) -> Vec<Datagram> {
    packets
        .iter()
        .filter(|p| p.proto == 17 && p.payload.len() >= 8)
        .map(|p| {
            let u = &p.payload;
            let sport = u16::from_be_bytes([u[0], u[1]]);
            let dport = u16::from_be_bytes([u[2], u[3]]);
            let len = usize::from(u16::from_be_bytes([u[4], u[5]])).clamp(8, u.len());
            Datagram {
                src: SocketAddr::new(p.src, sport),
                dst: SocketAddr::new(p.dst, dport),
                payload: u[8..len].to_vec(),
            }
        })
        .collect()
}

/// The WireGuard message type of a UDP payload (1 handshake initiation,
/// 2 response, 3 cookie reply, 4 transport data), checked as the protocol
/// lays them out: three reserved zero bytes, 148, 92 and 64 bytes for
/// types 1 to 3, and for data a 16-byte header and a 16-byte tag around
/// the encrypted packet (32 bytes: a keepalive). The protocol pads the
/// packet to a multiple of 16 bytes, but receivers do not insist on it
/// (boringtun does not pad), and neither does this check: see
/// [`wireguard_padded`].
pub fn wireguard_message(payload: &[u8]) -> Result<u8, String> {
    let (&ty, rest) = payload
        .split_first()
        .ok_or_else(|| "an empty datagram".to_string())?;
    if rest.get(..3) != Some(&[0, 0, 0][..]) {
        return Err(format!(
            "not a WireGuard header: {:02x?}",
            &payload[..payload.len().min(4)]
        ));
    }
    let len = payload.len();
    let ok = match ty {
        1 => len == 148,
        2 => len == 92,
        3 => len == 64,
        4 => len >= 32,
        _ => return Err(format!("message type {ty} is none of WireGuard's 1 to 4")),
    };
    if ok {
        Ok(ty)
    } else {
        Err(format!(
            "a type {ty} message of {len} bytes (WireGuard's are 148, 92, 64, or 32 or more for data)"
        ))
    }
}

/// Whether a data message's packet was padded to a multiple of 16 bytes,
/// as the protocol says (Linux and wireguard-go do; a packet that fills
/// the MTU may end unpadded).
pub fn wireguard_padded(payload: &[u8]) -> bool {
    payload.len() >= 32 && (payload.len() - 32).is_multiple_of(16)
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// `hex` ("deadbeef...") as bytes; for a `ping -p` pattern.
pub fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pcap file (little-endian, microseconds, Ethernet) of `frames`,
    /// the last one cut short by `cut` bytes.
    fn pcap(frames: &[Vec<u8>], cut: usize) -> Vec<u8> {
        let mut f = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&262_144u32.to_le_bytes());
        f.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        for fr in frames {
            let len = u32::try_from(fr.len()).unwrap();
            f.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
            f.extend_from_slice(&len.to_le_bytes());
            f.extend_from_slice(&len.to_le_bytes());
            f.extend_from_slice(fr);
        }
        f.truncate(f.len() - cut);
        f
    }

    fn ether(ty: u16, ip: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        f.extend_from_slice(&ty.to_be_bytes());
        f.extend_from_slice(ip);
        f
    }

    #[test]
    fn pcap_reader_finds_udp_over_ipv4_and_ipv6_and_skips_the_rest() {
        let v4 = crate::util::inner_udp(
            "192.168.77.10".parse().unwrap(),
            "192.168.77.11".parse().unwrap(),
            b"hello",
        );
        let v6 = crate::util::inner_udp6(
            "fd00:77::10".parse().unwrap(),
            "fd00:77::11".parse().unwrap(),
            b"world!",
        );
        let arp = ether(0x0806, &[0; 28]);
        let echo = crate::util::inner_echo(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            1,
            1,
        );
        let frames = vec![
            ether(0x0800, &v4),
            arp,
            ether(0x86dd, &v6),
            ether(0x0800, &echo),
            ether(0x0800, &v4),
        ];
        let packets = read_pcap(&pcap(&frames, 3)).unwrap();
        assert_eq!(packets.len(), 3, "{packets:?}");
        assert_eq!(packets[2].proto, 1);
        let d = udp_datagrams(&packets);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].src, "192.168.77.10:40000".parse().unwrap());
        assert_eq!(d[0].dst, "192.168.77.11:9999".parse().unwrap());
        assert_eq!(d[0].payload, b"hello");
        assert_eq!(d[1].src, "[fd00:77::10]:40000".parse().unwrap());
        assert_eq!(d[1].payload, b"world!");
        // The whole file: the last one too.
        assert_eq!(
            udp_datagrams(&read_pcap(&pcap(&frames, 0)).unwrap()).len(),
            3
        );
        assert!(read_pcap(&[0; 30]).is_err());
        assert!(read_pcap(&[]).unwrap().is_empty());
    }

    #[test]
    fn wireguard_messages_by_type_and_length() {
        let msg = |ty: u8, len: usize| {
            let mut m = vec![0; len];
            m[0] = ty;
            m
        };
        assert_eq!(wireguard_message(&msg(1, 148)), Ok(1));
        assert_eq!(wireguard_message(&msg(2, 92)), Ok(2));
        assert_eq!(wireguard_message(&msg(3, 64)), Ok(3));
        assert_eq!(wireguard_message(&msg(4, 32)), Ok(4));
        assert_eq!(wireguard_message(&msg(4, 32 + 96)), Ok(4));
        assert_eq!(wireguard_message(&msg(4, 40)), Ok(4));
        assert!(wireguard_padded(&msg(4, 48)) && !wireguard_padded(&msg(4, 40)));
        assert!(wireguard_message(&msg(4, 31)).is_err());
        assert!(wireguard_message(&msg(1, 147)).is_err());
        assert!(wireguard_message(&msg(5, 148)).is_err());
        let mut reserved = msg(4, 48);
        reserved[2] = 1;
        assert!(wireguard_message(&reserved).is_err());
        assert!(wireguard_message(b"").is_err());
        assert!(contains(b"xxdeadyy", b"dead") && !contains(b"dea", b"dead"));
        assert_eq!(unhex("de0aff"), vec![0xde, 0x0a, 0xff]);
    }
}
