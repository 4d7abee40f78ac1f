//! A node behind NAT (issue 18, defect 3): its public address belongs to
//! the underlay's router, which forwards the tunnel's port to the node and
//! rewrites what the node sends. The node publishes `--public-ip` in its
//! lease but sends from (and, for udp, binds to) its own interface address,
//! the one `--iface=<IP>` names (not the interface's first). Pods on it and
//! on two nodes on the segment reach each other. On wireguard, also
//! behind a router that forwards nothing: the others answer it where its
//! handshakes come from.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::time::{Duration, Instant};

use conformance::cluster::{Cluster, Host, Pinger, http_get};
use conformance::{TestNetns, plugin_binary, wait_for};
use serde_json::{Value, json};

/// Host 0's health port.
const HEALTH: &str = "18431";

/// The router's address on the segment: the NAT'ed node's public one.
const PUBLIC: &str = "192.168.77.50";
/// The node's address behind the router (the second on its interface).
const PRIVATE: &str = "10.99.0.2";

/// The router: on the segment at [`PUBLIC`], and at 10.99.0.1 towards the
/// node. It forwards the tunnel's `port` to the node (with `port`; without,
/// nothing is forwarded and the node's traffic leaves from a port of the
/// router's choosing, as a home router does), rewrites the node's traffic
/// to come from [`PUBLIC`], and drops what the node sends from any other
/// address (so a tunnel sent from the wrong one goes nowhere).
fn router(c: &mut Cluster, port: Option<u16>) -> (TestNetns, TestNetns) {
    let r = c.net.add_host("natr", &[&format!("{PUBLIC}/24")]);
    let node = TestNetns::new("nath");
    r.ip(&[
        "link",
        "add",
        "lan0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        node.name(),
    ]);
    r.ip(&["addr", "add", "10.99.0.1/24", "dev", "lan0"]);
    r.ip(&["link", "set", "lan0", "up"]);
    let out = r.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    assert!(out.status.success(), "{out:?}");
    let (forward, to) = match port {
        Some(p) => (
            format!("iifname \"eth0\" ip daddr {PUBLIC} udp dport {p} dnat to {PRIVATE};"),
            PUBLIC.to_string(),
        ),
        None => (String::new(), format!("{PUBLIC}:40000-40999")),
    };
    let udp = if port.is_some() {
        ""
    } else {
        "meta l4proto udp"
    };
    let rules = format!(
        "table ip nat {{
  chain prerouting {{ type nat hook prerouting priority dstnat; {forward} }}
  chain postrouting {{ type nat hook postrouting priority srcnat; oifname \"eth0\" ip saddr {PRIVATE} {udp} snat to {to}; oifname \"eth0\" ip saddr {PRIVATE} snat to {PUBLIC}; }}
}}
table ip filter {{
  chain forward {{ type filter hook forward priority 0; policy drop;
    iifname \"lan0\" ip saddr {PRIVATE} accept
    iifname \"eth0\" ip daddr {PRIVATE} accept
  }}
}}
"
    );
    let file = c.dir.path().join("nat.nft");
    std::fs::write(&file, rules).unwrap();
    let out = r.exec("nft", &["-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // The node: another address first on its interface, so only the one
    // --iface names is the right one.
    node.ip(&["addr", "add", "10.99.0.9/24", "dev", "eth0"]);
    node.ip(&["addr", "add", &format!("{PRIVATE}/24"), "dev", "eth0"]);
    node.ip(&["link", "set", "eth0", "up"]);
    node.ip(&["route", "add", "default", "via", "10.99.0.1"]);
    (r, node)
}

/// Pods on the node behind the router (host 2) and on two nodes on the
/// segment reach each other; `forwarded`: the router forwards the
/// tunnel's port. The cluster, the router (kept while it lives) and the
/// pods' addresses, host by host.
fn behind_nat(backend: Value, port: u16, forwarded: bool) -> (Cluster, TestNetns, Vec<String>) {
    let name = backend["Type"].as_str().unwrap_or_default().to_string();
    let config = json!({"Network": "10.244.0.0/16", "Backend": backend});
    let mut c = Cluster::prepare(2, 1, &config, false);
    c.start_with(0, &["--healthz-port", HEALTH]);
    c.start(1);
    let (router, node) = router(&mut c, forwarded.then_some(port));
    let dir = c.dir.path().join("host2");
    std::fs::create_dir_all(&dir).unwrap();
    c.hosts.push(Host {
        agent: None,
        pods: vec![TestNetns::new("nathp0")],
        ns: node,
        dir: dir.clone(),
        underlay_ip: PRIVATE.into(),
    });
    let args: Vec<String> = [
        "--store-dir",
        c.store().to_str().unwrap(),
        "--iface",
        PRIVATE,
        "--public-ip",
        PUBLIC,
        "--subnet-file",
        dir.join("subnet.env").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    c.launch(2, &plugin_binary("flanneld"), &args);
    // The lease publishes the router's address.
    let lease = std::fs::read_to_string(c.store().join("subnets").join(c.key(2))).unwrap();
    assert!(
        lease.contains(&format!("\"PublicIP\":\"{PUBLIC}\"")),
        "{lease}"
    );
    let ns = &c.hosts[2].ns;
    if name == "vxlan" {
        let dev = ns.ip(&["-d", "link", "show", "flannel.1"]);
        assert!(dev.contains(&format!("local {PRIVATE} ")), "{dev}");
    } else {
        let ss = ns.exec("ss", &["-uln"]);
        let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
        assert!(ss.contains(&format!("{PRIVATE}:{port}")), "{ss}");
    }
    let pods: Vec<String> = (0..3).map(|h| c.add_pod(h, 0)).collect();
    for from in 0..3 {
        for (to, target) in pods.iter().enumerate() {
            if from == to {
                continue;
            }
            assert!(
                wait_for(Duration::from_secs(10), || c.reaches(from, 0, target)),
                "{name}: host {from}'s pod cannot reach host {to}'s pod {target}:\n{}",
                c.log(from)
            );
        }
    }
    (c, router, pods)
}

#[test]
fn vxlan_node_behind_nat_publishes_its_public_address_and_sends_from_its_own() {
    behind_nat(json!({"Type": "vxlan"}), 8472, true);
}

#[test]
fn udp_node_behind_nat_publishes_its_public_address_and_binds_its_own() {
    behind_nat(json!({"Type": "udp"}), 8285, true);
}

#[test]
fn wireguard_node_behind_nat_publishes_its_public_address_and_binds_its_own() {
    behind_nat(json!({"Type": "wireguard"}), 51820, true);
}

/// No port forward: the node's handshakes reach the others from a port
/// its router chose, they answer there and send there from then on
/// (WireGuard's roaming, which upstream's kernel device does too); its
/// keepalive holds the router's mapping open. Host 0 restarted (all its
/// WireGuard state gone, and the node's lease names a port nothing is
/// forwarded to) greets the node where its pings come from: no ping is
/// lost beyond the restart's own gap (WireGuard alone would wait 15 s for
/// the node to start a handshake).
#[test]
fn wireguard_node_behind_nat_without_a_port_forward_is_reached_where_it_sends_from() {
    let (mut c, _router, pods) = behind_nat(
        json!({"Type": "wireguard", "PersistentKeepaliveInterval": 5}),
        51820,
        false,
    );
    let mut pinger = Pinger::start(
        &c.hosts[2].pods[0],
        &pods[0],
        &c.dir.path().join("ping.txt"),
    );
    assert!(pinger.wait_for_more(5, Duration::from_secs(5)));
    let away = Instant::now();
    c.stop(0);
    c.start_with(0, &["--healthz-port", HEALTH]);
    let ready = || {
        let h = &c.hosts[0];
        http_get(&h.ns, &h.underlay_ip, HEALTH.parse().unwrap(), "/readyz").0 == 200
    };
    assert!(
        wait_for(Duration::from_secs(10), ready),
        "not ready: {}",
        c.log(0)
    );
    let gap = away.elapsed();
    assert!(
        pinger.wait_for_more(10, Duration::from_secs(30)),
        "the node's pod stopped reaching host 0's after its restart: {}",
        c.log(0)
    );
    let report = pinger.stop();
    let allowed = (gap.as_millis() / 200) as u64 + 2;
    eprintln!("restart gap {gap:?}: {} pings lost", report.lost());
    assert!(
        report.lost() <= allowed,
        "{} pings lost across a restart of {gap:?} (at most {allowed}):\n{report:?}",
        report.lost()
    );
}
