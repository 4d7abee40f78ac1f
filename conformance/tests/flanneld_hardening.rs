//! flanneld hardening: routes it did not make are left alone, the health
//! endpoints say how the agent really is and cannot be held up by idle
//! clients, a changed vxlan config reaches the device, the udp backend's
//! route is repaired, errors are reported, and the log is levelled.
//!
//! Simulated hosts as in `flanneld.rs` (`conformance::cluster::Cluster`):
//! network namespaces on a bridge in a "switch" namespace, one agent per
//! host on the embedded store.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use conformance::cluster::{Cluster, http_get, http_request};
use conformance::{TestNetns, wait_for};
use serde_json::{Value, json};

/// `ip route` shows our routes as `proto 102` (the agent's own number).
const OURS: &str = "proto 102";
const HEALTH_PORT: u16 = 18090;

fn connect(ns: &TestNetns, n: usize) -> Vec<TcpStream> {
    ns.run(move || {
        (0..n)
            .map(|_| TcpStream::connect(("127.0.0.1", HEALTH_PORT)).unwrap())
            .collect()
    })
}

/// GET `path` from the agent in `ns`: status code and body (0 and the
/// error when there is no answer within 2 s).
fn get(ns: &TestNetns, path: &str) -> (u16, String) {
    http_get(ns, "127.0.0.1", HEALTH_PORT, path)
}

/// `n` hosts on one segment (192.168.77.10 + h), one pod namespace each,
/// the embedded store holding `config`; no agent started.
fn cluster(n: usize, config: &Value) -> Cluster {
    Cluster::prepare(n, 1, config, false)
}

fn metric(ns: &TestNetns, name: &str) -> Option<u64> {
    let (_, body) = get(ns, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
}

const HEALTH: [&str; 4] = ["--healthz-ip", "127.0.0.1", "--healthz-port", "18090"];

fn host_gw() -> Value {
    json!({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}})
}

fn vxlan() -> Value {
    json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 7}})
}

/// Routes of `ns` with their protocol, `boot` too.
fn routes(ns: &TestNetns) -> String {
    ns.ip(&["-d", "route", "show"])
}

fn route_line(ns: &TestNetns, dst: &str) -> Option<String> {
    routes(ns)
        .lines()
        .find(|l| l.starts_with(&format!("unicast {dst} ")))
        .map(str::to_string)
}

#[test]
fn an_operators_route_in_the_cluster_range_survives_resyncs() {
    let mut c = cluster(2, &host_gw());
    let args: Vec<&str> = HEALTH
        .iter()
        .copied()
        .chain(["--full-resync-period", "1"])
        .collect();
    c.start_with(0, &args);
    c.start_with(1, &[]);
    let peer = c.subnet(1);
    let h0 = &c.hosts[0].ns;
    assert!(
        wait_for(Duration::from_secs(5), || route_line(h0, &peer).is_some()),
        "no route to {peer}: {}\n{}",
        routes(h0),
        c.log(0)
    );
    // What an operator types: `boot`, a gateway on eth0, in 10.244.0.0/16.
    h0.ip(&[
        "route",
        "add",
        "10.244.250.0/24",
        "via",
        "192.168.77.99",
        "dev",
        "eth0",
    ]);
    let operators = || {
        route_line(h0, "10.244.250.0/24")
            .is_some_and(|l| l.contains("via 192.168.77.99") && l.contains("proto boot"))
    };
    // At least 10 full comparisons (one a second here), the route checked
    // after each.
    let resyncs = || metric(h0, "flannel_resyncs_total").unwrap_or(0);
    let start = resyncs();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut done = start;
    while done < start + 10 {
        assert!(Instant::now() < deadline, "only {} resyncs", done - start);
        wait_for(Duration::from_secs(3), || resyncs() > done);
        done = resyncs();
        assert!(
            operators(),
            "the operator's route is gone after {} resyncs: {}\n{}",
            done - start,
            routes(h0),
            c.log(0)
        );
    }
    assert!(
        route_line(h0, &peer).is_some_and(|l| l.contains(OURS)),
        "{}",
        routes(h0)
    );
    // The agent still removes its own: host 1 leaves, its route goes.
    c.stop(1);
    std::fs::remove_file(c.lease_file_of(&c.hosts[1].underlay_ip.clone()).unwrap()).unwrap();
    let h0 = &c.hosts[0].ns;
    assert!(
        wait_for(Duration::from_secs(5), || route_line(h0, &peer).is_none()),
        "{}",
        routes(h0)
    );
    assert!(route_line(h0, "10.244.250.0/24").is_some());
}

#[test]
fn routes_of_an_earlier_version_are_adopted_or_cleared_at_start() {
    let mut c = cluster(2, &vxlan());
    c.start_with(0, &[]);
    c.start_with(1, &[]);
    let peer = c.subnet(1);
    let gw = peer.replace("/24", "");
    let h0 = &c.hosts[0].ns;
    assert!(wait_for(Duration::from_secs(5), || route_line(h0, &peer).is_some()));
    c.stop(0);
    // As an earlier version left them: its route to the peer (as `boot`),
    // one to a peer that left meanwhile, and an operator's route.
    let h0 = &c.hosts[0].ns;
    h0.ip(&[
        "route",
        "replace",
        &peer,
        "via",
        &gw,
        "dev",
        "flannel.7",
        "onlink",
        "proto",
        "boot",
    ]);
    h0.ip(&[
        "route",
        "add",
        "10.244.200.0/24",
        "via",
        "10.244.200.0",
        "dev",
        "flannel.7",
        "onlink",
        "proto",
        "boot",
    ]);
    h0.ip(&[
        "route",
        "add",
        "10.244.201.0/24",
        "via",
        "192.168.77.99",
        "dev",
        "eth0",
    ]);
    assert!(route_line(h0, &peer).unwrap().contains("proto boot"));
    c.start_afresh(0, &[]);
    let h0 = &c.hosts[0].ns;
    assert!(
        wait_for(Duration::from_secs(5), || route_line(h0, "10.244.200.0/24")
            .is_none()),
        "the earlier version's route to a departed peer stays: {}\n{}",
        routes(h0),
        c.log(0)
    );
    assert!(
        route_line(h0, "10.244.201.0/24").is_some_and(|l| l.contains("proto boot")),
        "the operator's route is gone: {}",
        routes(h0)
    );
    assert!(
        route_line(h0, &peer).is_some_and(|l| l.contains(OURS)),
        "the earlier version's route to the peer is not adopted: {}",
        routes(h0)
    );
    // (The listing at start replaces it with ours before the first full
    // comparison would name it "adopted".)
    let log = c.log(0);
    assert!(
        log.lines()
            .any(|l| l.contains(" W ") && l.contains("10.244.201.0/24")),
        "the operator's route is named as possibly stale: {log}"
    );
}

#[test]
fn health_answers_while_idle_clients_hold_connections() {
    let mut c = cluster(1, &host_gw());
    c.start_with(0, &HEALTH);
    let h0 = &c.hosts[0].ns;
    assert!(wait_for(Duration::from_secs(5), || get(h0, "/readyz").0 == 200));
    let idle = connect(h0, 50);
    // One request line sent but never finished: a slow client.
    let mut slow = connect(h0, 1).remove(0);
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    // Answered at all (within http_request's 2 s: a server held up by
    // the idle clients never answers); how fast is bench-flanneld-scale's
    // `/healthz` row.
    for probe in connect(h0, 3) {
        let (code, body) = http_request(probe, "/healthz");
        assert_eq!(code, 200, "{body}");
    }
    drop(idle);
    drop(slow);
}

#[test]
fn readiness_and_health_follow_the_agent() {
    let mut c = cluster(1, &host_gw());
    // No network config yet: the agent waits, and says so.
    std::fs::remove_file(c.store().join("config")).unwrap();
    c.spawn(0, &HEALTH);
    let h0 = &c.hosts[0].ns;
    assert!(
        wait_for(Duration::from_secs(5), || get(h0, "/healthz").0 == 200),
        "/healthz does not answer while starting: {}",
        c.log(0)
    );
    let (code, body) = get(h0, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("subnet.env"), "{body}");
    c.set_config(&host_gw());
    assert!(
        wait_for(Duration::from_secs(10), || get(h0, "/readyz").0 == 200),
        "{:?} {}",
        get(h0, "/readyz"),
        c.log(0)
    );
    // A peer that cannot be routed (not on this segment): the data plane
    // is failing, so not ready at once; but alive: a restart would not
    // cure it, and a liveness probe must not restart the agent in a loop.
    let bad = c.store().join("subnets/10.244.250.0-24");
    std::fs::write(
        &bad,
        r#"{"value":{"PublicIP":"203.0.113.5","PublicIPv6":null,"BackendType":"host-gw"}}"#,
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || get(h0, "/readyz")
            .1
            .contains("data plane")),
        "{:?}",
        get(h0, "/readyz")
    );
    assert_eq!(get(h0, "/readyz").0, 503);
    // Alive for longer than the liveness limit (10 s of failing retries).
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        assert_eq!(get(h0, "/healthz").0, 200, "{:?}", get(h0, "/healthz"));
        // Pacing: the 12 s are the test; probe twice a second.
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(get(h0, "/readyz").0, 503);
    assert!(
        metric(h0, "flannel_dataplane_errors_total").is_some_and(|n| n > 0),
        "{}",
        get(h0, "/metrics").1
    );
    // The peer leaves: healthy and ready again.
    std::fs::remove_file(&bad).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || get(h0, "/readyz").0 == 200
            && get(h0, "/healthz").0 == 200),
        "{:?} {:?}",
        get(h0, "/readyz"),
        get(h0, "/healthz")
    );
}

fn udp(port: u16) -> Value {
    json!({"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": port}})
}

#[test]
fn the_udp_cluster_route_is_repaired_and_one_port_is_used() {
    let mut c = cluster(2, &udp(0));
    c.start_with(0, &[]);
    c.start_with(1, &[]);
    let a = c.add_pod(0, 0);
    let b = c.add_pod(1, 0);
    assert!(
        wait_for(Duration::from_secs(10), || c.reaches(0, 0, &b)
            && c.reaches(1, 0, &a)),
        "{}",
        c.log(0)
    );
    // Port 0 is the default on both sides: bound to 8285.
    let ss = c.hosts[0].ns.exec("ss", &["-Hulpn"]);
    let ss = String::from_utf8_lossy(&ss.stdout).to_string();
    assert!(ss.contains("192.168.77.10:8285"), "{ss}");
    let h0 = &c.hosts[0].ns;
    h0.ip(&["route", "del", "10.244.0.0/16", "dev", "flannel0"]);
    assert!(
        wait_for(Duration::from_secs(5), || c.reaches(0, 0, &b)),
        "the cluster route via flannel0 was not repaired: {}\n{}",
        routes(h0),
        c.log(0)
    );
    let cluster = route_line(h0, "10.244.0.0/16").unwrap();
    assert!(
        cluster.contains("dev flannel0") && cluster.contains(OURS),
        "{cluster}"
    );
}

#[test]
fn a_dead_udp_forwarder_shows_in_health() {
    let mut c = cluster(1, &udp(8285));
    c.start_with(0, &HEALTH);
    let h0 = &c.hosts[0].ns;
    assert!(wait_for(Duration::from_secs(5), || get(h0, "/readyz").0 == 200));
    // Deleting the TUN device ends the thread reading it.
    h0.ip(&["link", "del", "flannel0"]);
    assert!(
        wait_for(Duration::from_secs(5), || get(h0, "/healthz").0 == 503),
        "{:?} {}",
        get(h0, "/healthz"),
        c.log(0)
    );
    let (code, body) = get(h0, "/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("udp"), "{body}");
    let log = c.log(0);
    assert!(
        log.lines()
            .any(|l| l.contains(" E ") && l.contains("forwarder stopped")),
        "{log}"
    );
}

/// `ip -d link show flannel.7` in `ns`, and the device's ifindex.
fn vtep(ns: &TestNetns) -> (String, String) {
    let text = ns.ip(&["-d", "link", "show", "flannel.7"]);
    let index = text.split(':').next().unwrap_or("").trim().to_string();
    (text, index)
}

#[test]
fn a_changed_vxlan_config_reaches_the_existing_device() {
    let mut c = cluster(2, &vxlan());
    c.start_with(0, &[]);
    c.start_with(1, &[]);
    let (text, first) = vtep(&c.hosts[0].ns);
    assert!(
        text.contains("dstport 8472")
            && text.contains("mtu 1450")
            && text.contains("local 192.168.77.10 "),
        "{text}"
    );
    let restart_all = |c: &mut Cluster, config: &Value| {
        c.set_config(config);
        for h in 0..2 {
            c.stop(h);
        }
        for h in 0..2 {
            c.start_afresh(h, &[]);
        }
    };
    // The underlay MTU alone: changed in place.
    restart_all(
        &mut c,
        &json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 7, "MTU": 1400}}),
    );
    let (text, index) = vtep(&c.hosts[0].ns);
    assert!(text.contains("mtu 1350"), "{text}");
    assert_eq!(index, first, "an MTU change keeps the device");
    // The port: a new device, and the peers programmed again on it.
    restart_all(
        &mut c,
        &json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 7, "Port": 4789}}),
    );
    let (text, index) = vtep(&c.hosts[0].ns);
    assert!(
        text.contains("dstport 4789") && text.contains("mtu 1450"),
        "{text}\n{}",
        c.log(0)
    );
    assert_ne!(index, first);
    let a = c.add_pod(0, 0);
    let b = c.add_pod(1, 0);
    assert!(
        wait_for(Duration::from_secs(10), || c.reaches(0, 0, &b)
            && c.reaches(1, 0, &a)),
        "pods cannot talk over the new device: {}",
        c.log(0)
    );
    // Another public address (a node behind NAT): published in the lease,
    // but the VTEP still sends from the interface's own address; its MAC,
    // which follows the public address, makes a new device.
    c.stop(0);
    c.start_afresh(0, &["--public-ip", "192.168.77.110"]);
    let (text, _) = vtep(&c.hosts[0].ns);
    assert!(
        text.contains("local 192.168.77.10 "),
        "{text}\n{}",
        c.log(0)
    );
    assert!(
        c.log(0).contains("recreating flannel.7: mac"),
        "{}",
        c.log(0)
    );
}

#[test]
fn store_errors_in_the_resync_are_reported() {
    let mut c = cluster(1, &host_gw());
    c.start_with(0, &HEALTH);
    let h0 = &c.hosts[0].ns;
    assert!(wait_for(Duration::from_secs(5), || get(h0, "/readyz").0 == 200));
    let ip = c.hosts[0].underlay_ip.clone();
    let own = c.lease_file_of(&ip).unwrap();
    // Our lease deleted, and the store cannot take a new one (its lock is
    // a directory now): the re-creation fails and says so.
    let lock = c.store().join("lock");
    std::fs::remove_file(&lock).unwrap();
    std::fs::create_dir(&lock).unwrap();
    std::fs::remove_file(&own).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || c.log(0).lines().any(|l| l
            .contains(" E ")
            && l.contains("cannot re-create lease"))),
        "{}",
        c.log(0)
    );
    let (code, body) = get(h0, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("lease store"), "{body}");
    assert!(metric(h0, "flannel_store_errors_total").is_some_and(|n| n > 0));
    // The store works again: the lease is back, and so is readiness.
    std::fs::remove_dir(&lock).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || own.exists()
            && get(h0, "/readyz").0 == 200),
        "{}",
        c.log(0)
    );
    // Our key taken over by another node: an error, not ready.
    std::fs::write(
        &own,
        r#"{"value":{"PublicIP":"192.168.77.99","PublicIPv6":null,"BackendType":"host-gw"}}"#,
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || get(h0, "/readyz").0 == 503),
        "{}",
        c.log(0)
    );
    assert!(
        c.log(0)
            .lines()
            .any(|l| l.contains(" E ") && l.contains("held by another node")),
        "{}",
        c.log(0)
    );
    // A record nobody can read: named once, not at every resync.
    std::fs::write(c.store().join("subnets/10.244.251.0-24"), "{oops").unwrap();
    let named = |c: &Cluster| {
        c.log(0)
            .lines()
            .filter(|l| l.contains(" W ") && l.contains("10.244.251.0-24 cannot be read"))
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(5), || named(&c) == 1),
        "{}",
        c.log(0)
    );
    // Other changes (re-reading the store's directory) do not name it again.
    std::fs::write(c.store().join("subnets/10.244.252.0-24"), "{oops").unwrap();
    assert!(wait_for(Duration::from_secs(5), || c
        .log(0)
        .contains("10.244.252.0-24 cannot be read")));
    assert_eq!(named(&c), 1, "{}", c.log(0));
}

/// `2025-06-01T12:00:00.123Z X ` with X one of E W I D.
fn levelled(line: &str) -> Option<char> {
    let b = line.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    let ok = b.len() > 27
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && &b[23..25] == b"Z "
        && b[26] == b' ';
    let level = char::from(*b.get(25)?);
    (ok && "EWID".contains(level)).then_some(level)
}

#[test]
fn log_lines_are_timestamped_and_levelled() {
    let mut c = cluster(2, &host_gw());
    c.start_with(0, &[]);
    c.start_with(1, &["-v", "4"]);
    // A peer that cannot be routed: an error line.
    std::fs::write(
        c.store().join("subnets/10.244.250.0-24"),
        r#"{"value":{"PublicIP":"203.0.113.5","PublicIPv6":null,"BackendType":"host-gw"}}"#,
    )
    .unwrap();
    for h in 0..2 {
        assert!(
            wait_for(Duration::from_secs(5), || c.log(h).lines().any(|l| {
                levelled(l) == Some('E') && l.contains("host-gw needs every peer")
            })),
            "{}",
            c.log(h)
        );
    }
    c.stop(0);
    c.stop(1);
    for h in 0..2 {
        let log = c.log(h);
        let levels: Vec<char> = log
            .lines()
            .map(|l| levelled(l).unwrap_or_else(|| panic!("not levelled: {l:?}")))
            .collect();
        assert!(
            log.lines()
                .any(|l| levelled(l) == Some('I') && l.contains("acquired lease")),
            "{log}"
        );
        // Debug lines only with -v 4.
        assert_eq!(levels.contains(&'D'), h == 1, "{log}");
    }
}

/// Issue 18, defects 12 and 13: what operators read names addresses and
/// devices as they are written (no `Some(..)`, no `#3` for a device), and
/// a record's name from the store cannot make a log line of its own.
#[test]
fn log_lines_name_addresses_and_devices_and_escape_the_stores_text() {
    let mut c = cluster(2, &vxlan());
    // A record whose name would start a forged error line, there before
    // any agent made the store's directory.
    std::fs::create_dir_all(c.store().join("subnets")).unwrap();
    let forged = "2030-01-01T00:00:00.000Z E forged by a store writer";
    std::fs::write(
        c.store()
            .join("subnets")
            .join(format!("10.244.9.0-24\n{forged}")),
        "{}",
    )
    .unwrap();
    c.start_with(0, &[]);
    c.start_with(1, &[]);
    let peer = c.subnet(1);
    assert!(wait_for(Duration::from_secs(5), || route_line(
        &c.hosts[0].ns,
        &peer
    )
    .is_some()));
    c.hosts[0].ns.ip(&["route", "del", &peer]);
    assert!(
        wait_for(Duration::from_secs(5), || c
            .log(0)
            .contains("repairing: route")),
        "{}",
        c.log(0)
    );
    let log = c.log(0);
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{log}"))
    };
    assert!(
        line("acquired lease").ends_with("on eth0, reached at 192.168.77.10"),
        "{log}"
    );
    assert!(
        line("repairing: route").contains(&format!("{peer} via ")),
        "{log}"
    );
    assert!(
        line("repairing: route").contains(" dev flannel.7 onlink"),
        "{log}"
    );
    assert!(!log.contains("Some(") && !log.contains("dev #"), "{log}");
    // The name is in the log, escaped, on its own line's end.
    assert!(line("cannot be read").contains("\\n2030-01-01T00"), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with(forged)),
        "a store writer forged a line:\n{log}"
    );
}
