//! flanneld's udp backend across simulated hosts: inner IPv4 and IPv6
//! packets over IPv4 and IPv6 underlays, hosts joining and leaving, long
//! TCP streams with and without the TUN/UDP offloads (also through the
//! wireguard backend, which shares the machinery), and the path MTU.
//!
//! Every cluster is the harness's own (network namespaces on a bridge in a
//! namespace of its own), removed on drop, also when a test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use conformance::cluster::{Cluster, http_get, metric};
use conformance::util::{inner_echo, inner_udp, inner_udp6};
use conformance::{TestNetns, wait_for};
use serde_json::{Value, json};

/// The port peers send to (the config names none).
const PORT: u16 = 8285;
/// How long a pod may take to reach another once both agents run (they
/// program their peers within a resync).
const REACH: Duration = Duration::from_secs(10);

fn udp4() -> Value {
    json!({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}})
}

fn udp_dual() -> Value {
    json!({
        "Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:244::/56",
        "Backend": {"Type": "udp"}
    })
}

fn udp6_only() -> Value {
    json!({
        "EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:244::/56",
        "Backend": {"Type": "udp"}
    })
}

/// The last `n` lines of `text`, for failure messages.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `ping args` in `ns`: whether it succeeded, and what it printed (stdout,
/// then stderr).
fn ping(ns: &TestNetns, args: &[&str]) -> (bool, String) {
    let out = ns.exec("ping", args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn family(target: &str) -> &'static str {
    if target.contains(':') { "-6" } else { "-4" }
}

/// Host `h`'s pod 0 reaches `target` (either family) within [`REACH`].
fn assert_reaches(c: &Cluster, h: usize, target: &str) {
    let mut last = String::new();
    let ok = wait_for(REACH, || {
        let (ok, text) = ping(&c.hosts[h].pods[0], &[family(target), "-c1", "-W1", target]);
        last = text;
        ok
    });
    assert!(
        ok,
        "host {h}'s pod cannot reach {target}: {last}\nhost {h}'s agent:\n{}",
        tail(&c.log(h), 20)
    );
}

/// `ping -c1 -W2 target` from host `h`'s pod comes back, within `REACH`,
/// with a line containing `text` (an ICMP error rather than a silent loss).
fn assert_answered_with(c: &Cluster, h: usize, target: &str, text: &str) {
    let mut last = String::new();
    let ok = wait_for(REACH, || {
        last = ping(&c.hosts[h].pods[0], &[family(target), "-c1", "-W2", target]).1;
        last.contains(text)
    });
    assert!(
        ok,
        "no {text:?} from host {h}'s pod to {target}: {last}\nhost {h}'s agent:\n{}",
        tail(&c.log(h), 20)
    );
}

/// The largest ping (DF set) that fits `mtu` crosses from host `h`'s pod
/// to `target`; one byte more fails in the pod, before anything is sent,
/// with iputils' "message too long".
fn assert_pmtu(c: &Cluster, h: usize, target: &str, mtu: usize) {
    let (headers, said) = if target.contains(':') {
        (48, format!("local error: message too long, mtu: {mtu}"))
    } else {
        (28, format!("local error: message too long, mtu={mtu}"))
    };
    let pod = &c.hosts[h].pods[0];
    let try_size = |payload: usize| {
        let size = payload.to_string();
        ping(
            pod,
            &[
                family(target),
                "-M",
                "do",
                "-s",
                &size,
                "-c1",
                "-W2",
                target,
            ],
        )
    };
    let fits = mtu - headers;
    let (ok, text) = try_size(fits);
    assert!(
        ok,
        "{fits} bytes of payload (a {mtu}-byte packet) do not cross to {target}: {text}"
    );
    let (ok, text) = try_size(fits + 1);
    assert!(
        !ok && text.contains(&said),
        "a packet one byte over {mtu} to {target}: want {said:?}, got: {text}"
    );
}

/// The IPv6 address host `h`'s `eth0` has on the underlay (see
/// [`Cluster::prepare`]).
fn underlay_ipv6(h: usize) -> String {
    format!("fd00:77::{}", 10 + h)
}

/// The UDP sockets of `ns` (`ss -Huan`).
fn udp_sockets(ns: &TestNetns) -> String {
    let out = ns.exec("ss", &["-Huan"]);
    assert!(out.status.success(), "ss: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A socket in `ss` output bound to `addr` (`1.2.3.4` or `[fd00::1]`,
/// maybe with `%dev`) port `port`.
fn bound(ss: &str, addr: &str, port: u16) -> bool {
    let tail = format!(":{port}");
    ss.split_whitespace().any(|w| {
        w.strip_suffix(&tail)
            .is_some_and(|a| a == addr || a.starts_with(&format!("{addr}%")))
    })
}

/// Host `h` has UDP sockets on every address in `addrs`, port [`PORT`].
fn assert_bound(c: &Cluster, h: usize, addrs: &[String]) {
    let ss = udp_sockets(&c.hosts[h].ns);
    for a in addrs {
        assert!(
            bound(&ss, a, PORT),
            "host {h} has no UDP socket on {a}:{PORT}:\n{ss}"
        );
    }
}

/// Host-wide UDP counters of a namespace: /proc/net/snmp (IPv4) and
/// /proc/net/snmp6, read by a process inside it (the counters are per
/// network namespace).
#[derive(Debug, Clone, Copy, Default)]
struct UdpCounters {
    v4_in: u64,
    v4_out: u64,
    v6_in: u64,
    v6_out: u64,
}

fn udp_counters(ns: &TestNetns) -> UdpCounters {
    let read = |file: &str| {
        let out = ns.exec("cat", &[file]);
        assert!(out.status.success(), "cat {file}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let snmp6 = read("/proc/net/snmp6");
    let v6 = |name: &str| -> u64 {
        snmp6
            .lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no {name} in /proc/net/snmp6"))
    };
    // "Udp: InDatagrams NoPorts ..." then "Udp: 12 0 ...".
    let snmp = read("/proc/net/snmp");
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let v4 = |name: &str| -> u64 {
        let at = names
            .split_whitespace()
            .position(|w| w == name)
            .unwrap_or_else(|| panic!("no Udp {name} in /proc/net/snmp"));
        values.split_whitespace().nth(at).unwrap().parse().unwrap()
    };
    UdpCounters {
        v4_in: v4("InDatagrams"),
        v4_out: v4("OutDatagrams"),
        v6_in: v6("Udp6InDatagrams"),
        v6_out: v6("Udp6OutDatagrams"),
    }
}

/// Counter `name` of protocol `proto` (`Icmp`, `Udp`...) in `ns`'s
/// /proc/net/snmp (read by a process inside it: the counters are per
/// network namespace).
fn snmp(ns: &TestNetns, proto: &str, name: &str) -> u64 {
    let out = ns.exec("cat", &["/proc/net/snmp"]);
    assert!(out.status.success(), "cat /proc/net/snmp: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{proto}: ");
    let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (rows.next().unwrap(), rows.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|w| w == name)
        .unwrap_or_else(|| panic!("no {proto} {name} in /proc/net/snmp"));
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// The UDP counters of host `h` around a burst of 20 quick pings from its
/// pod to `target`, all answered: how much each rose.
fn burst(c: &Cluster, h: usize, target: &str) -> UdpCounters {
    let ns = &c.hosts[h].ns;
    let before = udp_counters(ns);
    let (ok, text) = ping(
        &c.hosts[h].pods[0],
        &[family(target), "-c", "20", "-i", "0.01", "-W", "2", target],
    );
    assert!(
        ok && text.contains("20 packets transmitted, 20 received"),
        "{text}"
    );
    let after = udp_counters(ns);
    UdpCounters {
        v4_in: after.v4_in - before.v4_in,
        v4_out: after.v4_out - before.v4_out,
        v6_in: after.v6_in - before.v6_in,
        v6_out: after.v6_out - before.v6_out,
    }
}

/// Host `h`'s /metrics page (the agent runs with `--healthz-port port`).
fn metrics(c: &Cluster, h: usize, port: u16) -> String {
    let host = &c.hosts[h];
    let mut page = (0, String::new());
    assert!(
        wait_for(Duration::from_secs(5), || {
            page = http_get(&host.ns, &host.underlay_ip, port, "/metrics");
            page.0 == 200
        }),
        "no /metrics from host {h}: {page:?}"
    );
    page.1
}

fn udp_metric(page: &str, name: &str, label: &str) -> f64 {
    metric(page, &format!("{name}{{{label}}}"))
        .unwrap_or_else(|| panic!("no {name}{{{label}}} in:\n{page}"))
}

fn dropped(page: &str, reason: &str) -> f64 {
    udp_metric(
        page,
        "flannel_udp_dropped_total",
        &format!("reason=\"{reason}\""),
    )
}

/// `--healthz-port port` and `extra`, as [`Cluster::start_with`] takes them.
fn with_port<'a>(port: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--healthz-port", port];
    args.extend_from_slice(extra);
    args
}

/// The lease key of host `h` in the embedded store, deleted: the host has
/// left the cluster (its agent stopped first).
fn delete_lease(c: &Cluster, h: usize) {
    let path = c.store().join("subnets").join(c.key(h));
    std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[test]
fn udp_dual_stack_pods_reach_each_other_over_both_families() {
    let cluster = Cluster::new(3, 1, &udp_dual());
    let pods: Vec<Vec<String>> = (0..3).map(|h| cluster.add_pod_all(h, 0)).collect();
    for (h, addrs) in pods.iter().enumerate() {
        assert!(
            addrs.len() == 2 && !addrs[0].contains(':') && addrs[1].contains(':'),
            "host {h}'s pod should have an IPv4 and an IPv6 address: {addrs:?}"
        );
    }
    // Every pod reaches every other host's pod over IPv4, and 20 IPv4
    // pings (with their replies) are 20 IPv4 datagrams each way on host 0's
    // underlay, none of them IPv6: inner IPv4 rides the IPv4 underlay.
    let all_pairs = |family: usize| {
        for from in 0..3 {
            for (to, addrs) in pods.iter().enumerate() {
                if to != from {
                    assert_reaches(&cluster, from, &addrs[family]);
                }
            }
        }
    };
    all_pairs(0);
    let d = burst(&cluster, 0, &pods[1][0]);
    assert!(
        d.v4_out >= 20 && d.v4_in >= 20 && d.v6_out < 20 && d.v6_in < 20,
        "IPv4 pod traffic did not cross as IPv4 datagrams: {d:?}"
    );
    // The same over IPv6, on the IPv6 underlay.
    all_pairs(1);
    let d = burst(&cluster, 0, &pods[1][1]);
    assert!(
        d.v6_out >= 20 && d.v6_in >= 20 && d.v4_out < 20 && d.v4_in < 20,
        "IPv6 pod traffic did not cross as IPv6 datagrams: {d:?}"
    );
    // An IPv6 underlay is in use: 40 bytes of outer IPv6 header, 8 of UDP;
    // and a socket on each public address.
    for h in 0..3 {
        let env = cluster.subnet_env(h);
        assert!(env.contains("FLANNEL_MTU=1452\n"), "host {h}: {env}");
        let tun = cluster.hosts[h].ns.ip(&["link", "show", "flannel0"]);
        assert!(tun.contains("mtu 1452"), "host {h}: {tun}");
        let v4 = cluster.hosts[h].underlay_ip.clone();
        assert_bound(&cluster, h, &[v4, format!("[{}]", underlay_ipv6(h))]);
    }
    // The largest packet that fits crosses, in both families.
    assert_pmtu(&cluster, 0, &pods[2][0], 1452);
    assert_pmtu(&cluster, 0, &pods[2][1], 1452);
}

#[test]
fn udp_ipv6_only_cluster_runs_over_an_ipv6_underlay() {
    let mut cluster = Cluster::prepare(2, 1, &udp6_only(), false);
    // The underlay is IPv6 only: nothing can ride IPv4.
    for h in &cluster.hosts {
        h.ns.ip(&["-4", "addr", "flush", "dev", "eth0"]);
    }
    for h in 0..2 {
        cluster.start(h);
    }
    for h in 0..2 {
        let env = cluster.subnet_env(h);
        assert!(
            !env.contains("FLANNEL_NETWORK=")
                && env.contains("FLANNEL_IPV6_SUBNET=fd00:244:")
                && env.contains("FLANNEL_MTU=1452\n"),
            "host {h}: {env}"
        );
        let tun = cluster.hosts[h].ns.ip(&["link", "show", "flannel0"]);
        assert!(tun.contains("mtu 1452"), "host {h}: {tun}");
        assert_bound(&cluster, h, &[format!("[{}]", underlay_ipv6(h))]);
    }
    let a = cluster.add_pod_all(0, 0);
    let b = cluster.add_pod_all(1, 0);
    assert!(
        a.len() == 1 && a[0].contains(':') && b.len() == 1 && b[0].contains(':'),
        "{a:?} {b:?}"
    );
    assert_reaches(&cluster, 0, &b[0]);
    assert_reaches(&cluster, 1, &a[0]);
    // An address in the network that no host leases: the forwarder answers
    // as a router without a route does, rather than letting ping time out.
    let unleased = "fd00:244:0:fa::9";
    for h in 0..2 {
        let env = cluster.subnet_env(h);
        assert!(
            !env.contains("FLANNEL_IPV6_SUBNET=fd00:244:0:fa::"),
            "host {h} leases the address picked as unleased: {env}"
        );
    }
    assert_answered_with(&cluster, 0, unleased, "Destination unreachable: No route");
}

#[test]
fn udp_host_joining_and_leaving() {
    const HEALTH: &str = "18201";
    let port: u16 = HEALTH.parse().unwrap();
    let mut cluster = Cluster::prepare(3, 1, &udp4(), false);
    cluster.start_with(0, &with_port(HEALTH, &[]));
    cluster.start_with(1, &with_port(HEALTH, &[]));
    let a = cluster.add_pod(0, 0);
    let b = cluster.add_pod(1, 0);
    assert_reaches(&cluster, 0, &b);
    assert_reaches(&cluster, 1, &a);
    // A third host joins: the old ones learn of it, it learns of them.
    cluster.start_with(2, &with_port(HEALTH, &[]));
    let public = cluster.hosts[2].underlay_ip.clone();
    assert_bound(&cluster, 2, &[public]);
    let c = cluster.add_pod(2, 0);
    for (h, addr) in [&a, &b].into_iter().enumerate() {
        assert_reaches(&cluster, h, &c);
        assert_reaches(&cluster, 2, addr);
    }
    // It leaves: agent stopped, lease deleted. The others forget its
    // subnet: the forwarder answers for it as for any unleased one.
    let departed = cluster.hosts[2].underlay_ip.clone();
    cluster.hosts[2].agent.as_mut().unwrap().stop();
    delete_lease(&cluster, 2);
    for h in 0..2 {
        assert_answered_with(&cluster, h, &c, "Destination Net Unreachable");
    }
    // And its address is no peer's any more: a datagram from it, carrying
    // a packet from its old subnet, is refused as from a stranger.
    let before = dropped(&metrics(&cluster, 0, port), "not_a_peer");
    let sock = cluster.hosts[2]
        .ns
        .run(|| UdpSocket::bind((departed.parse::<IpAddr>().unwrap(), 0)).unwrap());
    let to: SocketAddr = format!("{}:{PORT}", cluster.hosts[0].underlay_ip)
        .parse()
        .unwrap();
    let packet = inner_udp(c.parse().unwrap(), a.parse().unwrap(), b"departed");
    sock.send_to(&packet, to).unwrap();
    let mut now = before;
    assert!(
        wait_for(Duration::from_secs(5), || {
            now = dropped(&metrics(&cluster, 0, port), "not_a_peer");
            now > before
        }),
        "a datagram from the departed host was not refused as not_a_peer ({before} before, {now} now): {}",
        metrics(&cluster, 0, port)
    );
    assert_eq!(now, before + 1.0);
    // The remaining hosts still talk.
    assert_reaches(&cluster, 0, &b);
    assert_reaches(&cluster, 1, &a);
}

#[test]
fn udp_pmtu() {
    let cluster = Cluster::new(2, 1, &udp4());
    let env = cluster.subnet_env(0);
    assert!(env.contains("FLANNEL_MTU=1472\n"), "{env}");
    cluster.add_pod(0, 0);
    let b = cluster.add_pod(1, 0);
    let mtu = cluster.hosts[0].pods[0].ip(&["link", "show", "eth0"]);
    assert!(mtu.contains("mtu 1472"), "the pod's MTU: {mtu}");
    assert_reaches(&cluster, 0, &b);
    assert_pmtu(&cluster, 0, &b, 1472);
}

// Long TCP streams: 64 MiB each way at once, checked byte for byte.

/// Bytes sent each way.
const STREAM_BYTES: u64 = 64 << 20;
/// The size of each write (and of the reader's buffer).
const CHUNK: usize = 1 << 20;
/// A read or write that makes no progress for this long fails the test.
const STALL: Duration = Duration::from_secs(10);
/// The whole exchange, both ways.
const EXCHANGE: Duration = Duration::from_secs(40);
const TCP_PORT: u16 = 5201;
/// The two streams' patterns.
const UP: u64 = 1;
const DOWN: u64 = 2;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Bytes `offset..offset + buf.len()` of stream `seed`'s pseudo-random
/// pattern: any stretch can be made on its own, so a receiver checks what
/// it got without keeping what was sent.
fn pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let at = offset + i as u64;
        let word = splitmix64((seed << 40) ^ (at / 8)).to_le_bytes();
        let skip = (at % 8) as usize;
        let n = (8 - skip).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[skip..skip + n]);
        i += n;
    }
}

#[test]
fn the_stream_pattern_is_the_same_however_it_is_cut() {
    let mut whole = vec![0u8; 1000];
    pattern(UP, 3, &mut whole);
    let mut pieces = vec![0u8; 1000];
    let mut at = 0;
    for len in [1, 7, 8, 9, 100, 875] {
        pattern(UP, 3 + at as u64, &mut pieces[at..at + len]);
        at += len;
    }
    assert_eq!(at, 1000);
    assert_eq!(whole, pieces);
    let mut other = vec![0u8; 1000];
    pattern(DOWN, 3, &mut other);
    assert_ne!(whole, other, "the two directions differ");
    assert!(
        whole.iter().filter(|b| **b == 0).count() < 20,
        "not a run of zeros"
    );
}

/// Writes [`STREAM_BYTES`] of pattern `seed` in [`CHUNK`]-size writes,
/// then ends the stream.
fn send_pattern(mut s: &TcpStream, seed: u64, deadline: Instant) -> Result<(), String> {
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while sent < STREAM_BYTES {
        if Instant::now() > deadline {
            return Err(format!("only {sent} bytes sent by the deadline"));
        }
        let n = usize::try_from(STREAM_BYTES - sent).unwrap().min(CHUNK);
        pattern(seed, sent, &mut buf[..n]);
        s.write_all(&buf[..n])
            .map_err(|e| format!("write after {sent} bytes: {e}"))?;
        sent += n as u64;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown after sending: {e}"))
}

/// Reads until the stream ends and checks it is exactly [`STREAM_BYTES`]
/// of pattern `seed`.
fn check_pattern(mut s: &TcpStream, seed: u64, deadline: Instant) -> Result<(), String> {
    let mut buf = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        if Instant::now() > deadline {
            return Err(format!("only {got} bytes received by the deadline"));
        }
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read after {got} bytes: {e}")),
        };
        if n == 0 {
            return if got == STREAM_BYTES {
                Ok(())
            } else {
                Err(format!("the stream ended after {got} bytes"))
            };
        }
        if got + n as u64 > STREAM_BYTES {
            return Err(format!("more than {STREAM_BYTES} bytes arrived"));
        }
        pattern(seed, got, &mut want[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            return Err(format!(
                "byte {} is {:#04x}, sent was {:#04x}",
                got + i as u64,
                buf[i],
                want[i]
            ));
        }
        got += n as u64;
    }
}

/// Both ways at once between host 0's pod (client) and host 1's pod
/// (server, at `server_ip`): [`STREAM_BYTES`] client -> server and as much
/// server -> client, every byte checked; a stall or a wrong byte fails.
fn tcp_both_ways(c: &Cluster, server_ip: &str) {
    let addr = SocketAddr::new(server_ip.parse().unwrap(), TCP_PORT);
    let listener = c.hosts[1].pods[0].run(|| TcpListener::bind(addr).unwrap());
    let client = c.hosts[0].pods[0]
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("host 0's pod cannot connect to {addr}: {e}"));
    // Connected: the kernel has queued it, accept returns at once.
    let (server, _) = listener.accept().unwrap();
    for s in [&client, &server] {
        s.set_read_timeout(Some(STALL)).unwrap();
        s.set_write_timeout(Some(STALL)).unwrap();
    }
    let started = Instant::now();
    let deadline = started + EXCHANGE;
    // A failed side closes its socket, so the others fail at once too
    // rather than waiting out their timeouts.
    let fail_fast = |s: &TcpStream, r: Result<(), String>| {
        if r.is_err() {
            let _ = s.shutdown(Shutdown::Both);
        }
        r
    };
    let results: Vec<(&str, Result<(), String>)> = std::thread::scope(|scope| {
        let jobs = [
            (
                "client -> server, sending",
                scope.spawn(|| fail_fast(&client, send_pattern(&client, UP, deadline))),
            ),
            (
                "client -> server, receiving",
                scope.spawn(|| fail_fast(&server, check_pattern(&server, UP, deadline))),
            ),
            (
                "server -> client, sending",
                scope.spawn(|| fail_fast(&server, send_pattern(&server, DOWN, deadline))),
            ),
            (
                "server -> client, receiving",
                scope.spawn(|| fail_fast(&client, check_pattern(&client, DOWN, deadline))),
            ),
        ];
        jobs.into_iter()
            .map(|(what, job)| (what, job.join().unwrap()))
            .collect()
    });
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(what, r)| r.as_ref().err().map(|e| format!("{what}: {e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "TCP to {addr} after {:?}:\n{}\nhost 0's agent:\n{}\nhost 1's agent:\n{}",
        started.elapsed(),
        failed.join("\n"),
        tail(&c.log(0), 20),
        tail(&c.log(1), 20)
    );
    eprintln!(
        "{} MiB each way to {addr} in {:?}",
        STREAM_BYTES >> 20,
        started.elapsed()
    );
}

/// Two hosts, host 0's agent with `extra0` flags, host 1's with `extra1`
/// (both with `--healthz-port port`); pods on both, reaching each other
/// over every family. Returns the cluster and host 1's pod's addresses.
fn tcp_pair(
    config: &Value,
    port: &str,
    extra0: &[&str],
    extra1: &[&str],
) -> (Cluster, Vec<String>) {
    let mut c = Cluster::prepare(2, 1, config, false);
    c.start_with(0, &with_port(port, extra0));
    c.start_with(1, &with_port(port, extra1));
    let a = c.add_pod_all(0, 0);
    let b = c.add_pod_all(1, 0);
    for (x, y) in a.iter().zip(&b) {
        assert_reaches(&c, 0, y);
        assert_reaches(&c, 1, x);
    }
    (c, b)
}

/// After the streams: nothing either agent got was malformed, and each
/// carried at least a stream's worth each way.
fn assert_clean_traffic(c: &Cluster, port: &str) {
    assert_clean_traffic_of(c, port, "udp");
}

/// [`assert_clean_traffic`] for `backend`'s counters (udp, wireguard).
fn assert_clean_traffic_of(c: &Cluster, port: &str, backend: &str) {
    let port = port.parse().unwrap();
    for h in 0..2 {
        let page = metrics(c, h, port);
        let malformed = udp_metric(
            &page,
            &format!("flannel_{backend}_dropped_total"),
            "reason=\"malformed\"",
        );
        assert_eq!(malformed, 0.0, "host {h}:\n{page}");
        for dir in ["tx", "rx"] {
            let bytes = udp_metric(
                &page,
                &format!("flannel_{backend}_bytes_total"),
                &format!("direction=\"{dir}\""),
            );
            assert!(
                bytes >= STREAM_BYTES as f64,
                "host {h} counted only {bytes} bytes {dir}:\n{page}"
            );
        }
    }
}

#[test]
fn udp_tcp_streams_arrive_intact_with_and_without_offloads() {
    // Host 1 sends one packet per datagram, as upstream's agent does;
    // host 0 cuts super-packets for it and coalesces what it sends.
    const HEALTH: &str = "18202";
    let (c, server) = tcp_pair(&udp4(), HEALTH, &[], &["--udp-offload=false"]);
    // The flag took effect: only host 0's device carries virtio headers.
    for (h, want) in [(0, "vnet_hdr on"), (1, "vnet_hdr off")] {
        let link = c.hosts[h].ns.ip(&["-d", "link", "show", "flannel0"]);
        assert!(link.contains(want), "host {h}: {link}");
    }
    // And each agent said once what it uses.
    for (h, said) in [
        (0, "TUN offloads on, UDP segmentation on, coalescing on"),
        (
            1,
            "TUN offloads off, UDP segmentation off, coalescing off (--udp-offload=false)",
        ),
    ] {
        let log = c.log(h);
        assert_eq!(log.matches(said).count(), 1, "host {h}: {log}");
    }
    tcp_both_ways(&c, &server[0]);
    assert_clean_traffic(&c, HEALTH);
}

#[test]
fn udp_tcp_streams_arrive_intact_with_offloads_on_both_sides() {
    const HEALTH: &str = "18203";
    let (c, server) = tcp_pair(&udp4(), HEALTH, &[], &[]);
    tcp_both_ways(&c, &server[0]);
    assert_clean_traffic(&c, HEALTH);
}

#[test]
fn udp_tcp_streams_arrive_intact_with_and_without_offloads_over_ipv6() {
    const HEALTH: &str = "18204";
    let (c, server) = tcp_pair(&udp_dual(), HEALTH, &[], &["--udp-offload=false"]);
    assert_eq!(server.len(), 2, "{server:?}");
    tcp_both_ways(&c, &server[1]);
    assert_clean_traffic(&c, HEALTH);
}

/// The wireguard backend on the same machinery, with its cuts, padding
/// and encryption: long TCP streams both ways over IPv4 and IPv6 between a
/// host with offloads and one without, intact, nothing malformed.
#[test]
fn wireguard_tcp_streams_arrive_intact_with_and_without_offloads() {
    const HEALTH: &str = "18210";
    let config = json!({
        "Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:244::/56",
        "Backend": {"Type": "wireguard"}
    });
    let (c, server) = tcp_pair(&config, HEALTH, &[], &["--udp-offload=false"]);
    assert_eq!(server.len(), 2, "{server:?}");
    tcp_both_ways(&c, &server[0]);
    tcp_both_ways(&c, &server[1]);
    assert_clean_traffic_of(&c, HEALTH, "wireguard");
}

#[test]
fn wireguard_tcp_streams_arrive_intact_with_offloads_on_both_sides() {
    const HEALTH: &str = "18211";
    let config = json!({"Network": "10.244.0.0/16", "Backend": {"Type": "wireguard"}});
    let (c, server) = tcp_pair(&config, HEALTH, &[], &[]);
    tcp_both_ways(&c, &server[0]);
    assert_clean_traffic_of(&c, HEALTH, "wireguard");
}

/// Runs of UDP datagrams (16 of 1,200 bytes, then one of 300) between
/// pods on offloading hosts, sent one by one and then, as QUIC stacks
/// do, in one send the kernel segments (`UDP_SEGMENT`): the sending agent
/// may get the run as one super-packet and the receiving one may join it
/// into one write that the kernel cuts apart again, so every datagram must
/// still arrive once, whole, in its own size.
#[test]
fn udp_datagram_runs_arrive_whole_each_in_its_own_size() {
    const HEALTH: &str = "18205";
    const RUNS: usize = 60;
    const PER: usize = 17;
    let (c, server) = tcp_pair(&udp4(), HEALTH, &[], &[]);
    let addr = SocketAddr::new(server[0].parse().unwrap(), 5300);
    let rx = c.hosts[1].pods[0].run(|| UdpSocket::bind(addr).unwrap());
    let tx = c.hosts[0].pods[0].run(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let datagram = |i: usize| -> Vec<u8> {
        let size = if i % PER == PER - 1 { 300 } else { 1200 };
        let mut d: Vec<u8> = (0..size).map(|k| (i * 7 + k * 13) as u8).collect();
        d[..4].copy_from_slice(&(i as u32).to_be_bytes());
        d
    };
    let mut seen = vec![false; 2 * RUNS * PER];
    let mut buf = [0u8; 2048];
    for run in 0..2 * RUNS {
        let run_of = run * PER..(run + 1) * PER;
        if run == RUNS {
            set_udp_segment(&tx, 1200);
        }
        if run < RUNS {
            for i in run_of {
                tx.send_to(&datagram(i), addr).unwrap();
            }
        } else {
            let whole: Vec<u8> = run_of.flat_map(datagram).collect();
            tx.send_to(&whole, addr).unwrap();
        }
        for _ in 0..PER {
            let n = rx.recv(&mut buf).unwrap_or_else(|e| {
                panic!("run {run}: {e}\nhost 1's agent:\n{}", tail(&c.log(1), 20))
            });
            let i = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            assert!(
                i < seen.len() && !seen[i],
                "datagram {i} unexpected or twice"
            );
            assert_eq!(
                &buf[..n],
                &datagram(i)[..],
                "datagram {i} arrived as {n} bytes"
            );
            seen[i] = true;
        }
    }
    for h in 0..2 {
        let page = metrics(&c, h, HEALTH.parse().unwrap());
        assert_eq!(dropped(&page, "malformed"), 0.0, "host {h}: {page}");
        assert!(!c.log(h).contains("refused"), "{}", c.log(h));
    }
}

/// Makes every send on `s` a run of datagrams of `size` bytes, cut by the
/// kernel (`UDP_SEGMENT`).
fn set_udp_segment(s: &UdpSocket, size: u16) {
    set_udp_option(s, nix::libc::UDP_SEGMENT, size.into());
}

/// Lets `s` receive runs of datagrams that arrive whole (`UDP_GRO`): one
/// read returns the run, all of it.
fn set_udp_gro(s: &UdpSocket) {
    set_udp_option(s, nix::libc::UDP_GRO, 1);
}

fn set_udp_option(s: &UdpSocket, opt: nix::libc::c_int, v: nix::libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain setsockopt with an int that outlives the call.
    let r = unsafe {
        nix::libc::setsockopt(
            s.as_raw_fd(),
            nix::libc::SOL_UDP,
            opt,
            (&v as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    assert_eq!(
        r,
        0,
        "UDP option {opt}: {}",
        std::io::Error::last_os_error()
    );
}

/// A malformed inner packet from a real peer's address (an IPv4 total
/// length of 0, shorter than its own header) is dropped and counted as
/// malformed, and the receiving agent still joins runs of UDP datagrams:
/// nothing a peer sends changes how the device is written.
#[test]
fn udp_a_malformed_packet_from_a_peer_leaves_joining_on() {
    const HEALTH: &str = "18208";
    /// From as many ports: host 1 spreads senders over its sockets (one a
    /// core), each with its own joiner.
    const SENDERS: usize = 16;
    const RUN: usize = 16 * 1200 + 300;
    let port: u16 = HEALTH.parse().unwrap();
    let (c, server) = tcp_pair(&udp4(), HEALTH, &[], &[]);
    let net = c.subnet(0);
    let net: std::net::Ipv4Addr = net.split('/').next().unwrap().parse().unwrap();
    let src = std::net::Ipv4Addr::from(u32::from(net) + 7);
    let dst = server[0].parse().unwrap();
    let mut bad = inner_udp(src, dst, b"malformed");
    bad[2..4].copy_from_slice(&[0, 0]);
    let peer: IpAddr = c.hosts[0].underlay_ip.parse().unwrap();
    let to = SocketAddr::new(c.hosts[1].underlay_ip.parse().unwrap(), PORT);
    for _ in 0..SENDERS {
        let s = c.hosts[0].ns.run(|| UdpSocket::bind((peer, 0)).unwrap());
        s.send_to(&bad, to).unwrap();
    }
    let malformed = || dropped(&metrics(&c, 1, port), "malformed");
    wait_for(Duration::from_secs(5), || {
        malformed() >= SENDERS as f64 || c.log(1).contains("refused")
    });
    assert!(
        !c.log(1).contains("refused a joined run"),
        "a peer's packet turned joining off:\n{}",
        tail(&c.log(1), 20)
    );
    assert_eq!(malformed(), SENDERS as f64, "{}", metrics(&c, 1, port));
    // Runs still arrive joined: a receiver that takes them whole gets each
    // in one read.
    let addr = SocketAddr::new(dst.into(), 5301);
    let rx = c.hosts[1].pods[0].run(|| UdpSocket::bind(addr).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    set_udp_gro(&rx);
    let tx = c.hosts[0].pods[0].run(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    set_udp_segment(&tx, 1200);
    let run: Vec<u8> = (0..RUN).map(|i| (i % 251) as u8).collect();
    let mut buf = vec![0u8; 1 << 16];
    for r in 0..5 {
        tx.send_to(&run, addr).unwrap();
        let n = rx.recv(&mut buf).unwrap_or_else(|e| panic!("run {r}: {e}"));
        assert_eq!(
            n,
            RUN,
            "run {r} arrived in pieces, not joined:\n{}",
            tail(&c.log(1), 20)
        );
        assert_eq!(&buf[..n], &run[..]);
    }
}

/// Anti-spoofing over the IPv6 underlay: an IPv6 datagram reaches a pod
/// only from a peer's public IPv6 address with an inner source in that
/// peer's IPv6 subnet; the rest is dropped and counted.
#[test]
fn udp_ipv6_datagrams_enter_only_from_a_peer_and_its_subnet() {
    const HEALTH: &str = "18206";
    let mut c = Cluster::with_args(2, 1, &udp_dual(), &["--healthz-port", HEALTH]);
    let stranger = c
        .net
        .add_host("h9", &["192.168.77.50/24", "fd00:77::50/64"]);
    let a = c.add_pod_all(0, 0);
    let b = c.add_pod_all(1, 0);
    assert_reaches(&c, 1, &a[1]);
    let listener = c.hosts[0].pods[0].run(|| UdpSocket::bind("[::]:9999").unwrap());
    listener
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = SocketAddr::new(underlay_ipv6(0).parse().unwrap(), 8285);
    let send = |ns: &TestNetns, from: &str, packet: Vec<u8>| {
        let from: IpAddr = from.parse().unwrap();
        let s = ns.run(|| UdpSocket::bind((from, 0)).unwrap());
        s.send_to(&packet, to).unwrap();
    };
    let (dst, peer_src) = (a[1].parse().unwrap(), b[1].parse().unwrap());
    send(
        &stranger,
        "fd00:77::50",
        inner_udp6(peer_src, dst, b"stranger"),
    );
    let outside = "fd00:244:0:ff::9".parse().unwrap();
    send(
        &c.hosts[1].ns,
        &underlay_ipv6(1),
        inner_udp6(outside, dst, b"spoofed"),
    );
    send(
        &c.hosts[1].ns,
        &underlay_ipv6(1),
        inner_udp6(peer_src, dst, b"genuine"),
    );
    let mut buf = [0u8; 64];
    let n = listener
        .recv(&mut buf)
        .expect("the genuine datagram did not arrive");
    assert_eq!(&buf[..n], b"genuine");
    listener
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(
        listener.recv(&mut buf).is_err(),
        "a refused datagram reached the pod"
    );
    let page = metrics(&c, 0, HEALTH.parse().unwrap());
    assert_eq!(dropped(&page, "not_a_peer"), 1.0, "{page}");
    assert_eq!(dropped(&page, "spoofed_source"), 1.0, "{page}");
}

/// Holds an agent frozen (SIGSTOP) until dropped, also when the test
/// fails: what reaches its device meanwhile waits there, and is read and
/// sent in full batches once it goes on.
struct Frozen(nix::unistd::Pid);

impl Frozen {
    fn new(c: &Cluster, h: usize) -> Frozen {
        let pid = nix::unistd::Pid::from_raw(c.agent(h).pid().unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// A peer whose public address host 0 has no route to (every datagram to
/// it fails, ENETUNREACH) costs only its own datagrams: those to a real
/// peer sent in the same batches all arrive, and the failures are counted
/// one per datagram lost.
#[test]
fn udp_a_peer_out_of_reach_costs_only_its_own_datagrams() {
    const HEALTH: &str = "18207";
    /// Datagrams to each peer, from as many sockets (flows, spread over
    /// the device's queues) each.
    const EACH: usize = 96;
    const FLOWS: usize = 8;
    let port: u16 = HEALTH.parse().unwrap();
    let c = Cluster::with_args(2, 1, &udp4(), &["--healthz-port", HEALTH]);
    // A documentation address: no host has a route to it.
    std::fs::write(
        c.store().join("subnets/10.244.250.0-24"),
        r#"{"value":{"PublicIP":"203.0.113.5","PublicIPv6":null,"BackendType":"udp"}}"#,
    )
    .unwrap();
    c.add_pod(0, 0);
    let b = c.add_pod(1, 0);
    assert_reaches(&c, 0, &b);
    let errors = || metric(&metrics(&c, 0, port), "flannel_udp_forward_errors_total").unwrap();
    let lost: SocketAddr = "10.244.250.9:9999".parse().unwrap();
    let to = SocketAddr::new(b.parse().unwrap(), 5300);
    let pod = &c.hosts[0].pods[0];
    let socks: Vec<UdpSocket> = (0..FLOWS)
        .map(|_| pod.run(|| UdpSocket::bind("0.0.0.0:0").unwrap()))
        .collect();
    // Host 0 knows the peer once a datagram for it fails to go.
    let mut before = 0.0;
    assert!(
        wait_for(REACH, || {
            let e = errors();
            socks[0].send_to(b"probe", lost).unwrap();
            wait_for(Duration::from_secs(1), || {
                before = errors();
                before > e
            })
        }),
        "host 0 never tried the unreachable peer: {}",
        tail(&c.log(0), 20)
    );
    let rx = c.hosts[1].pods[0].run(|| UdpSocket::bind(to).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    {
        let _frozen = Frozen::new(&c, 0);
        for i in 0..EACH {
            let s = &socks[i % FLOWS];
            s.send_to(&(i as u32).to_be_bytes(), lost).unwrap();
            s.send_to(&(i as u32).to_be_bytes(), to).unwrap();
        }
    }
    let mut seen = [false; EACH];
    let mut buf = [0u8; 16];
    for got in 0..EACH {
        let n = rx.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "only {got} of {EACH} datagrams reached the real peer: {e}\nhost 0's agent:\n{}",
                tail(&c.log(0), 20)
            )
        });
        let i = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        assert!(
            n == 4 && i < EACH && !seen[i],
            "datagram {i} unexpected or twice"
        );
        seen[i] = true;
    }
    let mut now = before;
    wait_for(Duration::from_secs(5), || {
        now = errors();
        now >= before + EACH as f64
    });
    assert_eq!(
        now,
        before + EACH as f64,
        "each datagram to the unreachable peer counts once"
    );
}

/// A datagram from a peer, its inner source in that peer's subnet, enters
/// only when addressed into this node's subnet: forged echo requests for
/// host 0's own underlay address are neither delivered nor answered, a
/// packet for an address outside the cluster is not passed on, and all
/// are counted as not_for_this_node.
#[test]
fn udp_datagrams_from_a_peer_enter_only_for_this_nodes_subnet() {
    const HEALTH: &str = "18209";
    const FORGED: u16 = 5;
    let port: u16 = HEALTH.parse().unwrap();
    let c = Cluster::with_args(2, 1, &udp4(), &["--healthz-port", HEALTH]);
    let a = c.add_pod(0, 0);
    let b = c.add_pod(1, 0);
    // Host 0 admits host 1's pod's packets.
    assert_reaches(&c, 0, &b);
    let host0 = &c.hosts[0];
    let echos = || snmp(&host0.ns, "Icmp", "InEchos");
    let before = echos();
    let node: std::net::Ipv4Addr = host0.underlay_ip.parse().unwrap();
    let src: std::net::Ipv4Addr = b.parse().unwrap();
    let peer: IpAddr = c.hosts[1].underlay_ip.parse().unwrap();
    let to = SocketAddr::new(node.into(), PORT);
    let s = c.hosts[1].ns.run(|| UdpSocket::bind((peer, 0)).unwrap());
    for seq in 0..FORGED {
        s.send_to(&inner_echo(src, node, 0x4242, seq), to).unwrap();
    }
    let outside = "198.51.100.7".parse().unwrap();
    s.send_to(&inner_udp(src, outside, b"out via masquerade"), to)
        .unwrap();
    let refused = || {
        metric(
            &metrics(&c, 0, port),
            "flannel_udp_dropped_total{reason=\"not_for_this_node\"}",
        )
        .unwrap_or(0.0)
    };
    let sent = f64::from(FORGED + 1);
    wait_for(Duration::from_secs(5), || {
        refused() >= sent || echos() > before
    });
    assert_eq!(
        echos() - before,
        0,
        "forged echo requests for host 0's own address were delivered"
    );
    assert_eq!(refused(), sent, "{}", metrics(&c, 0, port));
    // Pod traffic still enters.
    assert_reaches(&c, 1, &a);
}

/// Issue 18, defect 6: `flannel0` set down (which takes its routes along)
/// is brought back up with its routes from the link's notification, as
/// the vxlan device is; pods on the host reach the others again.
#[test]
fn udp_device_set_down_is_brought_back_with_its_routes() {
    let c = Cluster::with_args(2, 1, &udp4(), &[]);
    c.add_pod(0, 0);
    let b = c.add_pod(1, 0);
    assert_reaches(&c, 0, &b);
    let ns = &c.hosts[0].ns;
    ns.ip(&["link", "set", "flannel0", "down"]);
    let up = || {
        let link = ns.ip(&["link", "show", "flannel0"]);
        let flags = link
            .split('<')
            .nth(1)
            .unwrap_or("")
            .split('>')
            .next()
            .unwrap_or("");
        flags.split(',').any(|f| f == "UP")
            && ns
                .ip(&["route", "show", "10.244.0.0/16"])
                .contains("dev flannel0")
    };
    assert!(
        wait_for(Duration::from_secs(5), up),
        "flannel0 not restored: {}\n{}",
        ns.ip(&["link", "show", "flannel0"]),
        tail(&c.log(0), 20)
    );
    assert_reaches(&c, 0, &b);
}
