//! Small checks the behaviour tests share.

use std::path::Path;

use serde_json::Value;

use crate::netns::TestNetns;

/// How many addresses a host-local store holds (files named by an address).
pub fn reservations(store: &Path) -> usize {
    std::fs::read_dir(store).map_or(0, |dir| {
        dir.filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
            })
            .count()
    })
}

/// The link names of a namespace, in index order.
pub fn link_names(ns: &TestNetns) -> Vec<String> {
    ns.ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// `conf` with `prevResult` set, as a runtime sends CHECK and DEL.
pub fn with_prev(conf: &Value, result: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = result.clone();
    c
}

/// sha512 of `text` in hex, as `sha512sum` prints it (coreutils), to check
/// names the plugins derive from hashes independently of their code.
pub fn sha512_hex(text: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("sha512sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha512sum (coreutils) is needed");
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .expect("cannot feed sha512sum");
    }
    let out = child.wait_with_output().expect("sha512sum failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The addresses of a result's `ips`, without their prefix length.
pub fn addresses(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str())
                .map(|a| a.split('/').next().unwrap_or(a).to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Writes an executable file (a stand-in plugin, usually a shell script).
pub fn script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("cannot make {} executable: {e}", path.display()));
}

/// The Internet checksum of `data` (16-bit big-endian words, an odd last
/// byte padded), starting from `init`.
fn checksum(data: &[u8], init: u64) -> u16 {
    let mut sum = init;
    for c in data.chunks(2) {
        sum += u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4/UDP packet `src` -> `dst`:9999 saying `text` (UDP checksum 0:
/// none, which IPv4 allows), as a tunnel peer would carry it.
pub fn inner_udp(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, text: &[u8]) -> Vec<u8> {
    let total = u16::try_from(28 + text.len()).unwrap_or(u16::MAX);
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&p, 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&9999u16.to_be_bytes());
    p.extend_from_slice(
        &u16::try_from(8 + text.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(text);
    p
}

/// An IPv6/UDP packet `src` -> `dst`:9999 saying `text`, with the UDP
/// checksum IPv6 requires.
pub fn inner_udp6(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, text: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + text.len()).unwrap_or(u16::MAX);
    let mut udp = Vec::new();
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&9999u16.to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(text);
    let pseudo = [&src.octets()[..], &dst.octets()[..], &udp[..]].concat();
    let check = match checksum(&pseudo, 17 + u64::from(len)) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&udp);
    p
}

/// An ICMP echo request `src` -> `dst` (identifier `id`, sequence `seq`,
/// 8 bytes of data), as a tunnel peer would carry it.
pub fn inner_echo(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"forged!!");
    let sum = checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let total = u16::try_from(20 + icmp.len()).unwrap_or(u16::MAX);
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 1, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&p, 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&icmp);
    p
}
