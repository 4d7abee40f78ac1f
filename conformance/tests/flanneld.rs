//! flanneld across simulated hosts: network namespaces joined by a bridge
//! in their own "switch" namespace, one agent per host on the embedded
//! store, pods made through the real CNI chain (flannel -> bridge ->
//! host-local), and traffic between pods on different hosts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::time::Duration;

use conformance::cluster::{Cluster, ETCD, start_etcd};
use conformance::util::inner_udp;
use conformance::{
    Daemon, Etcd, EtcdOptions, TempDir, TestNetns, Underlay, plugin_binary, wait_for,
};
use serde_json::{Value, json};

fn host_gw() -> Value {
    json!({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}})
}

fn vxlan() -> Value {
    json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 7}})
}

#[test]
fn host_gw_pods_on_every_host_reach_each_other() {
    all_pairs(&host_gw(), "FLANNEL_MTU=1500\n");
}

#[test]
fn vxlan_pods_on_every_host_reach_each_other() {
    all_pairs(&vxlan(), "FLANNEL_MTU=1450\n");
}

fn all_pairs(config: &Value, mtu_line: &str) {
    all_pairs_on(config, mtu_line, false);
}

fn all_pairs_on(config: &Value, mtu_line: &str, use_etcd: bool) {
    let cluster = Cluster::with_store(3, 2, config, use_etcd);
    let mut addrs = Vec::new();
    for h in 0..3 {
        let env = cluster.subnet_env(h);
        assert!(
            env.contains("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244."),
            "{env}"
        );
        assert!(
            env.contains(mtu_line) && env.ends_with("FLANNEL_IPMASQ=false\n"),
            "{env}"
        );
        for p in 0..2 {
            addrs.push(((h, p), cluster.add_pod(h, p)));
        }
    }
    // Every pod reaches every other pod (the agents program within a resync).
    for ((h, p), _) in &addrs {
        for (_, target) in &addrs {
            assert!(
                wait_for(Duration::from_secs(10), || cluster.reaches(*h, *p, target)),
                "pod {h}/{p} cannot reach {target}"
            );
        }
    }
    // Leases are upstream's key layout, one per host.
    let keys: Vec<String> = if use_etcd {
        cluster.etcd_keys()
    } else {
        std::fs::read_dir(cluster.store().join("subnets"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect()
    };
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with("10.244.") && k.ends_with("-24")),
        "{keys:?}"
    );
}

#[test]
fn a_deleted_route_is_repaired_and_a_departed_host_is_forgotten() {
    let mut cluster = Cluster::new(3, 1, &host_gw());
    let a = cluster.add_pod(0, 0);
    let b = cluster.add_pod(1, 0);
    let c = cluster.add_pod(2, 0);
    assert!(wait_for(Duration::from_secs(10), || cluster
        .reaches(0, 0, &b)
        && cluster.reaches(0, 0, &c)));
    // Someone deletes the route to host 1's pods: back within 5 s.
    let route_to_b =
        cluster.hosts[0]
            .ns
            .ip(&["route", "show", "via", &cluster.hosts[1].underlay_ip]);
    let dst = route_to_b.split_whitespace().next().unwrap().to_string();
    cluster.hosts[0].ns.ip(&["route", "del", &dst]);
    assert!(
        wait_for(Duration::from_secs(5), || cluster.reaches(0, 0, &b)),
        "route to {dst} not repaired"
    );
    // Host 2 leaves: agent stopped and its lease deleted; host 0 drops the route.
    cluster.hosts[2].agent.as_mut().unwrap().stop();
    for e in std::fs::read_dir(cluster.store().join("subnets")).unwrap() {
        let path = e.unwrap().path();
        if std::fs::read_to_string(&path)
            .unwrap()
            .contains(&cluster.hosts[2].underlay_ip)
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    let via_c = cluster.hosts[2].underlay_ip.clone();
    assert!(wait_for(Duration::from_secs(5), || cluster.hosts[0]
        .ns
        .ip(&["route", "show", "via", &via_c])
        .trim()
        .is_empty()));
    // Pod 0 still reaches pod 1, and pod 1 pod 0.
    assert!(cluster.reaches(0, 0, &b) && cluster.reaches(1, 0, &a));
}

#[test]
fn a_restarted_agent_keeps_its_subnet_and_pods_keep_talking_meanwhile() {
    let mut cluster = Cluster::new(2, 1, &host_gw());
    let before = cluster.subnet_env(0);
    cluster.add_pod(0, 0);
    let b = cluster.add_pod(1, 0);
    assert!(wait_for(Duration::from_secs(10), || cluster.reaches(0, 0, &b)));
    let code = cluster.hosts[0].agent.as_mut().unwrap().stop();
    assert_eq!(code, Some(0), "SIGTERM is a clean stop");
    assert!(
        cluster.reaches(0, 0, &b),
        "the data plane stays while the agent is down"
    );
    cluster.start(0);
    assert_eq!(cluster.subnet_env(0), before);
    assert!(cluster.reaches(0, 0, &b));
}

#[test]
fn bad_network_config_names_the_field() {
    let switch = TestNetns::new("cfg");
    let dir = TempDir::new("flanneld-cfg");
    std::fs::write(
        dir.path().join("config"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard-ish"}}"#,
    )
    .unwrap();
    let log = dir.path().join("log");
    let args = vec![
        "--store-dir".to_string(),
        dir.path().display().to_string(),
        "--iface".into(),
        "lo".into(),
    ];
    let mut agent = Daemon::start(&plugin_binary("flanneld"), &args, &switch, &log);
    assert!(wait_for(Duration::from_secs(5), || !agent.alive()));
    assert!(agent.log().contains("Backend.Type"), "{}", agent.log());
}

#[test]
fn vxlan_state_deleted_by_hand_is_restored() {
    let cluster = Cluster::new(2, 1, &vxlan());
    cluster.add_pod(0, 0);
    let b = cluster.add_pod(1, 0);
    assert!(wait_for(Duration::from_secs(10), || cluster.reaches(0, 0, &b)));
    let h0 = &cluster.hosts[0].ns;
    let detail = h0.ip(&["-d", "link", "show", "flannel.7"]);
    assert!(
        detail.contains("vxlan id 7")
            && detail.contains("nolearning")
            && detail.contains("mtu 1450"),
        "{detail}"
    );
    let lease = std::fs::read_dir(cluster.store().join("subnets"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(lease).unwrap();
    assert!(
        text.contains("\"BackendType\":\"vxlan\"") && text.contains("\"VtepMAC\""),
        "{text}"
    );
    // The fdb entry, the neighbour entry, the route, and the whole device.
    let fdb = h0.exec("bridge", &["fdb", "show", "dev", "flannel.7"]);
    let fdb = String::from_utf8_lossy(&fdb.stdout).to_string();
    let mac = fdb.split_whitespace().next().unwrap().to_string();
    let peer = cluster.hosts[1].underlay_ip.clone();
    let del_fdb = h0.exec(
        "bridge",
        &["fdb", "del", &mac, "dev", "flannel.7", "dst", &peer],
    );
    assert!(
        del_fdb.status.success(),
        "{}",
        String::from_utf8_lossy(&del_fdb.stderr)
    );
    assert!(
        wait_for(Duration::from_secs(5), || cluster.reaches(0, 0, &b)),
        "fdb entry not restored"
    );
    h0.ip(&["neigh", "flush", "dev", "flannel.7"]);
    assert!(
        wait_for(Duration::from_secs(5), || cluster.reaches(0, 0, &b)),
        "neighbour entry not restored"
    );
    let route = h0.ip(&["route", "show", "dev", "flannel.7"]);
    let dst = route.split_whitespace().next().unwrap().to_string();
    h0.ip(&["route", "del", &dst, "dev", "flannel.7"]);
    assert!(
        wait_for(Duration::from_secs(5), || cluster.reaches(0, 0, &b)),
        "route not restored"
    );
    h0.ip(&["link", "del", "flannel.7"]);
    assert!(
        wait_for(Duration::from_secs(5), || cluster.reaches(0, 0, &b)),
        "device not recreated with its peers"
    );
}

/// Issue 18, defect 10: an fdb entry pointed elsewhere (`bridge fdb
/// replace`) is put back from its notification, not left to the full
/// comparison minutes later.
#[test]
fn a_replaced_fdb_entry_is_repaired_at_once() {
    let cluster = Cluster::new(2, 1, &vxlan());
    cluster.add_pod(0, 0);
    let b = cluster.add_pod(1, 0);
    assert!(wait_for(Duration::from_secs(10), || cluster.reaches(0, 0, &b)));
    let h0 = &cluster.hosts[0].ns;
    let peer = cluster.hosts[1].underlay_ip.clone();
    let fdb = || {
        let out = h0.exec("bridge", &["fdb", "show", "dev", "flannel.7"]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let before = fdb();
    let mac = before.split_whitespace().next().unwrap().to_string();
    let out = h0.exec(
        "bridge",
        &[
            "fdb",
            "replace",
            &mac,
            "dev",
            "flannel.7",
            "dst",
            "192.168.77.99",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_for(Duration::from_secs(3), || {
            let now = fdb();
            now.contains(&format!("dst {peer} ")) && !now.contains("192.168.77.99")
        }),
        "fdb entry left pointing elsewhere: {}\n{}",
        fdb(),
        cluster.log(0)
    );
    assert!(cluster.reaches(0, 0, &b));
    assert!(
        cluster.log(0).contains("repairing: fdb entry"),
        "{}",
        cluster.log(0)
    );
}

#[test]
fn etcd_store_in_upstream_layout_and_pods_keep_talking_while_it_is_down() {
    let mut cluster = Cluster::with_store(2, 1, &vxlan(), true);
    let a = cluster.add_pod(0, 0);
    let b = cluster.add_pod(1, 0);
    assert!(
        wait_for(Duration::from_secs(10), || cluster.reaches(0, 0, &b)
            && cluster.reaches(1, 0, &a)),
        "pods on two hosts cannot talk; agent logs:\n{}\n---\n{}",
        cluster.hosts[0].agent.as_ref().unwrap().log(),
        cluster.hosts[1].agent.as_ref().unwrap().log()
    );
    // Upstream's keys and values.
    let text = cluster.etcdctl(&["get", "--prefix", "/coreos.com/network/subnets/"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "two keys, two values: {text}");
    for pair in lines.chunks(2) {
        assert!(
            pair[0].starts_with("/coreos.com/network/subnets/10.244.") && pair[0].ends_with("-24"),
            "{text}"
        );
        let v: Value = serde_json::from_str(pair[1]).unwrap();
        assert_eq!(v["BackendType"], "vxlan");
        assert_eq!(v["BackendData"]["VNI"], 7);
        assert!(v["PublicIP"].as_str().unwrap().starts_with("192.168.77."));
        assert!(v["BackendData"]["VtepMAC"].as_str().unwrap().len() == 17);
    }
    // etcd goes away for 30 s: the data plane stays.
    cluster.etcd_mut().stop();
    let down = std::time::Instant::now();
    while down.elapsed() < Duration::from_secs(30) {
        assert!(
            cluster.reaches(0, 0, &b) && cluster.reaches(1, 0, &a),
            "pods lost each other while etcd was down"
        );
        // Pacing: the 30 s without etcd are the test; check once a second.
        std::thread::sleep(Duration::from_millis(1000));
    }
    assert!(
        cluster.hosts[0].agent.as_mut().unwrap().alive(),
        "the agent survives the store's absence"
    );
    // etcd is back (same data): the agents reconnect and repair again.
    cluster.restart_etcd(&vxlan());
    let h0 = &cluster.hosts[0].ns;
    let route = h0.ip(&["route", "show", "dev", "flannel.7"]);
    let dst = route.split_whitespace().next().unwrap().to_string();
    h0.ip(&["route", "del", &dst, "dev", "flannel.7"]);
    assert!(
        wait_for(Duration::from_secs(15), || cluster.reaches(0, 0, &b)),
        "no repair after etcd came back: {}",
        cluster.hosts[0].agent.as_ref().unwrap().log()
    );
}

#[test]
fn udp_pods_on_every_host_reach_each_other() {
    let cluster = Cluster::new(
        2,
        1,
        &json!({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}),
    );
    assert!(cluster.subnet_env(0).contains("FLANNEL_MTU=1472\n"));
    let a = cluster.add_pod(0, 0);
    let b = cluster.add_pod(1, 0);
    assert!(
        wait_for(Duration::from_secs(10), || cluster.reaches(0, 0, &b)
            && cluster.reaches(1, 0, &a)),
        "udp pods cannot talk: {}",
        cluster.hosts[0].agent.as_ref().unwrap().log()
    );
    // A subnet nobody leases: the forwarder says so, as a router would.
    let out = cluster.hosts[0].pods[0].exec("ping", &["-c1", "-W2", "10.244.250.9"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("Destination Net Unreachable"), "{text}");
    let tun = cluster.hosts[0].ns.ip(&["-d", "link", "show", "flannel0"]);
    assert!(tun.contains("tun") && tun.contains("mtu 1472"), "{tun}");
}

#[test]
fn udp_writes_only_what_a_peer_sends_from_its_own_subnet() {
    let mut c = Cluster::with_args(
        2,
        1,
        &json!({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}),
        &["--healthz-port", "18096"],
    );
    // A host on the underlay that is no peer.
    let stranger = c.net.add_host("h9", &["192.168.77.50/24"]);
    let a = c.add_pod(0, 0);
    let b = c.add_pod(1, 0);
    assert!(
        wait_for(Duration::from_secs(10), || c.reaches(1, 0, &a)),
        "udp pods cannot talk: {}",
        c.log(0)
    );
    // A listener in host 0's pod.
    let sock = c.hosts[0].pods[0].run(|| std::net::UdpSocket::bind("0.0.0.0:9999").unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let listener = std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 256];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(n) = sock.recv(&mut buf) {
                tx.send(buf[..n].to_vec()).unwrap();
            }
        }
    });
    let to: std::net::SocketAddr = format!("{}:8285", c.hosts[0].underlay_ip).parse().unwrap();
    let send = |ns: &TestNetns, from: &str, packet: Vec<u8>| {
        let from: std::net::IpAddr = from.parse().unwrap();
        let s = ns.run(|| std::net::UdpSocket::bind((from, 0)).unwrap());
        s.send_to(&packet, to).unwrap();
    };
    let dst: std::net::Ipv4Addr = a.parse().unwrap();
    let peer_src: std::net::Ipv4Addr = b.parse().unwrap();
    send(
        &stranger,
        "192.168.77.50",
        inner_udp(peer_src, dst, b"stranger"),
    );
    // The peer's own address, with a source outside its subnet.
    let h1 = &c.hosts[1];
    send(
        &h1.ns,
        &h1.underlay_ip,
        inner_udp("10.244.250.9".parse().unwrap(), dst, b"spoofed"),
    );
    // The control: the same from the peer, from its subnet, arrives.
    send(
        &h1.ns,
        &h1.underlay_ip,
        inner_udp(peer_src, dst, b"genuine"),
    );
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the genuine datagram did not arrive");
    assert_eq!(got, b"genuine");
    // Both refused datagrams counted as dropped: the agent handled them,
    // so neither can still be on its way to the pod.
    let dropped = [
        "flannel_udp_dropped_total{reason=\"not_a_peer\"} 1\n",
        "flannel_udp_dropped_total{reason=\"spoofed_source\"} 1\n",
    ];
    let scrape = || {
        conformance::cluster::http_get(&c.hosts[0].ns, &c.hosts[0].underlay_ip, 18096, "/metrics").1
    };
    let mut metrics = String::new();
    wait_for(Duration::from_secs(5), || {
        metrics = scrape();
        dropped.iter().all(|l| metrics.contains(l))
    });
    for line in dropped {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(rx.try_recv().is_err(), "a refused datagram reached the pod");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("flannel_udp_packets_total{direction=\"rx\"} ") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    listener.join().unwrap();
}

/// `nft <args>` in `ns`: stdout, or `None` when nft fails (e.g. no such table).
fn nft(ns: &TestNetns, args: &[&str]) -> Option<String> {
    let out = ns.exec("nft", args);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn flannel_table(ns: &TestNetns) -> Option<String> {
    nft(ns, &["list", "table", "ip", "flannel-ipv4"])
}

/// The packets counted by the first `counter` in `listing`.
fn packets(listing: &str) -> u64 {
    listing
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn ip_masq_nats_only_traffic_leaving_the_cluster_and_is_restored() {
    let mut cluster = Cluster::with_args(2, 1, &vxlan(), &["--ip-masq"]);
    assert!(
        cluster.subnet_env(0).ends_with("FLANNEL_IPMASQ=true\n"),
        "{}",
        cluster.subnet_env(0)
    );
    let a = cluster.add_pod(0, 0);
    let b = cluster.add_pod(1, 0);
    assert!(wait_for(Duration::from_secs(10), || cluster.reaches(0, 0, &b)));
    let h0 = &cluster.hosts[0].ns;
    let subnet = cluster
        .subnet_env(0)
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .unwrap()
        .replace(".1/24", ".0/24");

    // Upstream's rules, in its order, where an operator looks for them.
    let listing = flannel_table(h0).expect("no table ip flannel-ipv4");
    let want = [
        "chain postrtg {",
        "type nat hook postrouting priority srcnat; policy accept;",
        "meta mark & 0x00004000 == 0x00004000 return",
        &format!("ip saddr {subnet} ip daddr 10.244.0.0/16 return"),
        &format!("ip saddr 10.244.0.0/16 ip daddr {subnet} return"),
        &format!("ip saddr != 10.244.0.0/16 ip daddr {subnet} return"),
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
        "chain forward {",
        "type filter hook forward priority filter; policy accept;",
        "ip saddr 10.244.0.0/16 accept",
        "ip daddr 10.244.0.0/16 accept",
    ];
    let mut rest = listing.as_str();
    for line in want {
        let at = rest
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} missing or out of order in:\n{listing}"));
        rest = &rest[at + line.len()..];
    }
    // flannel told the bridge not to masquerade: the agent's rules do it all.
    assert!(
        nft(h0, &["list", "table", "inet", "cni_plugins_masquerade"]).is_none(),
        "the bridge plugin masquerades too"
    );

    // Outside: the switch's own address, with no route back to the pods.
    cluster
        .net
        .switch
        .ip(&["addr", "add", "192.168.77.1/24", "dev", "br0"]);
    assert!(
        wait_for(Duration::from_secs(5), || cluster.reaches(
            0,
            0,
            "192.168.77.1"
        )),
        "a pod cannot reach an address outside the cluster"
    );

    // Pod to pod across hosts keeps the pod's address: pod b sees a's.
    let pod_b = &cluster.hosts[1].pods[0];
    nft(pod_b, &["add", "table", "ip", "seen"]).unwrap();
    nft(
        pod_b,
        &[
            "add",
            "chain",
            "ip",
            "seen",
            "in",
            "{ type filter hook input priority 0; }",
        ],
    )
    .unwrap();
    nft(
        pod_b,
        &[
            "add",
            "rule",
            "ip",
            "seen",
            "in",
            "ip",
            "saddr",
            &a,
            "icmp",
            "type",
            "echo-request",
            "counter",
        ],
    )
    .unwrap();
    assert!(cluster.reaches(0, 0, &b));
    let seen = nft(pod_b, &["list", "table", "ip", "seen"]).unwrap();
    assert!(
        packets(&seen) >= 1,
        "pod b never saw pod a's address: {seen}"
    );

    // Deleted by hand: the table, then one rule; both back within 5 s.
    nft(h0, &["delete", "table", "ip", "flannel-ipv4"]).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || flannel_table(h0).as_deref()
            == Some(listing.as_str())),
        "table not restored: {:?}\n{}",
        flannel_table(h0),
        cluster.hosts[0].agent.as_ref().unwrap().log()
    );
    let with_handles = nft(
        h0,
        &["-a", "list", "chain", "ip", "flannel-ipv4", "postrtg"],
    )
    .unwrap();
    let handle = with_handles
        .lines()
        .find(|l| l.contains("daddr != 224.0.0.0/4"))
        .and_then(|l| l.rsplit_once("# handle "))
        .map(|(_, h)| h.trim().to_string())
        .unwrap();
    nft(
        h0,
        &[
            "delete",
            "rule",
            "ip",
            "flannel-ipv4",
            "postrtg",
            "handle",
            &handle,
        ],
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || flannel_table(h0).as_deref()
            == Some(listing.as_str())),
        "rule not restored: {:?}",
        flannel_table(h0)
    );
    assert!(cluster.reaches(0, 0, "192.168.77.1"));
    let log = cluster.hosts[0].agent.as_ref().unwrap().log();
    assert!(
        log.contains("nftables: repaired: made chain postrtg"),
        "{log}"
    );

    // SIGTERM leaves the rules in place, as the rest of the data plane.
    assert_eq!(cluster.hosts[0].agent.as_mut().unwrap().stop(), Some(0));
    assert_eq!(
        flannel_table(&cluster.hosts[0].ns).as_deref(),
        Some(listing.as_str())
    );
    assert!(cluster.reaches(0, 0, "192.168.77.1"));
    // Control: without the table (and no agent to restore it) the outside
    // address is out of reach, so it was our masquerade that did it.
    nft(
        &cluster.hosts[0].ns,
        &["delete", "table", "ip", "flannel-ipv4"],
    )
    .unwrap();
    assert!(!cluster.reaches(0, 0, "192.168.77.1"));
}

#[test]
fn forward_rules_by_default_and_leftovers_removed_when_the_flags_go() {
    let mut cluster = Cluster::with_args(1, 0, &host_gw(), &["--ip-masq"]);
    let h0 = &cluster.hosts[0].ns;
    let both = flannel_table(h0).expect("no table ip flannel-ipv4");
    assert!(
        both.contains("chain postrtg") && both.contains("chain forward"),
        "{both}"
    );
    // Restarted without --ip-masq: the masquerade chain of the last run goes,
    // the forward rules (on by default) stay.
    cluster.hosts[0].agent.as_mut().unwrap().stop();
    cluster.start(0);
    let h0 = &cluster.hosts[0].ns;
    let forward_only = |t: Option<String>| {
        t.is_some_and(|t| {
            !t.contains("chain postrtg") && t.contains("ip daddr 10.244.0.0/16 accept")
        })
    };
    assert!(
        wait_for(Duration::from_secs(5), || forward_only(flannel_table(h0))),
        "{:?}",
        flannel_table(h0)
    );
    // Without forward rules either: no table at all.
    cluster.hosts[0].agent.as_mut().unwrap().stop();
    let started = std::time::Instant::now();
    cluster.start_with(0, &["--iptables-forward-rules=false"]);
    let h0 = &cluster.hosts[0].ns;
    assert!(
        wait_for(Duration::from_secs(5), || flannel_table(h0).is_none()),
        "{:?}",
        flannel_table(h0)
    );
    // And it stays away while the agent runs. Nothing to wait on: the
    // rules are set before subnet.env and checked every 2 s from the
    // start, so the wait ends past the first check.
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(started.elapsed()));
    assert!(flannel_table(h0).is_none());
    assert!(cluster.hosts[0].agent.as_mut().unwrap().alive());
}

fn dual_stack(backend: &str) {
    dual_stack_on(backend, false);
}

fn dual_stack_on(backend: &str, use_etcd: bool) {
    let config = json!({
        "Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:244::/56",
        "Backend": {"Type": backend}
    });
    let cluster = Cluster::with_store(2, 1, &config, use_etcd);
    let env = cluster.subnet_env(0);
    assert!(
        env.contains("FLANNEL_IPV6_NETWORK=fd00:244::/56\nFLANNEL_IPV6_SUBNET=fd00:244:0:"),
        "{env}"
    );
    let a = cluster.add_pod_all(0, 0);
    let b = cluster.add_pod_all(1, 0);
    assert_eq!((a.len(), b.len()), (2, 2), "{a:?} {b:?}");
    for (from, to) in [(0usize, &b), (1, &a)] {
        for target in to.iter() {
            assert!(
                wait_for(Duration::from_secs(10), || cluster.hosts[from].pods[0]
                    .exec("ping", &["-c1", "-W1", target])
                    .status
                    .success()),
                "{backend}: host {from}'s pod cannot reach {target}: {}",
                cluster.hosts[from].agent.as_ref().unwrap().log()
            );
        }
    }
}

#[test]
fn dual_stack_over_vxlan() {
    dual_stack("vxlan");
}

#[test]
fn dual_stack_over_host_gw() {
    dual_stack("host-gw");
}

#[test]
fn health_ready_and_metrics_endpoints() {
    let config = json!({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}});
    let cluster = Cluster::with_args(
        2,
        0,
        &config,
        &["--healthz-ip", "127.0.0.1", "--healthz-port", "18081"],
    );
    let ns = &cluster.hosts[0].ns;
    ns.ip(&["link", "set", "lo", "up"]);
    let get = |path: &str| {
        let out = ns.exec(
            "bash",
            &["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/18081; printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3")],
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(wait_for(Duration::from_secs(5), || get("/healthz")
        .starts_with("HTTP/1.1 200")));
    assert!(
        get("/readyz").starts_with("HTTP/1.1 200"),
        "ready once subnet.env is written"
    );
    let metrics = get("/metrics");
    assert!(
        metrics.contains("flannel_leases 2")
            || wait_for(Duration::from_secs(3), || get("/metrics")
                .contains("flannel_leases 2")),
        "{metrics}"
    );
    assert!(get("/metrics").contains("flannel_peers 1"));
    assert!(get("/nope").starts_with("HTTP/1.1 404"));
}

#[test]
fn routes_of_peers_gone_while_the_agent_was_down_are_removed_at_start() {
    let mut cluster = Cluster::new(2, 0, &host_gw());
    let peer = cluster.hosts[1].underlay_ip.clone();
    let route_to_peer = |c: &Cluster| {
        !c.hosts[0]
            .ns
            .ip(&["route", "show", "via", &peer])
            .trim()
            .is_empty()
    };
    assert!(wait_for(Duration::from_secs(5), || route_to_peer(&cluster)));
    cluster.hosts[0].agent.as_mut().unwrap().stop();
    cluster.hosts[1].agent.as_mut().unwrap().stop();
    for e in std::fs::read_dir(cluster.store().join("subnets")).unwrap() {
        let path = e.unwrap().path();
        if std::fs::read_to_string(&path).unwrap().contains(&peer) {
            std::fs::remove_file(path).unwrap();
        }
    }
    assert!(route_to_peer(&cluster), "the route outlives the agent");
    cluster.start(0);
    assert!(
        wait_for(Duration::from_secs(5), || !route_to_peer(&cluster)),
        "stale route kept after restart"
    );
}

#[test]
fn a_reservation_without_ttl_is_honoured() {
    // An operator reserves 10.244.200.0/24 for host 0's address before it starts.
    let mut cluster = Cluster::new(1, 0, &host_gw());
    cluster.hosts[0].agent.as_mut().unwrap().stop();
    let subnets = cluster.store().join("subnets");
    for e in std::fs::read_dir(&subnets).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    std::fs::remove_file(cluster.hosts[0].dir.join("subnet.env")).unwrap();
    let ip = cluster.hosts[0].underlay_ip.clone();
    std::fs::write(
        subnets.join("10.244.200.0-24"),
        format!(r#"{{"value":{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw"}}}}"#),
    )
    .unwrap();
    cluster.start(0);
    assert!(
        cluster
            .subnet_env(0)
            .contains("FLANNEL_SUBNET=10.244.200.1/24"),
        "{}",
        cluster.subnet_env(0)
    );
    let record = std::fs::read_to_string(subnets.join("10.244.200.0-24")).unwrap();
    assert!(
        !record.contains("expires"),
        "a reservation stays without TTL: {record}"
    );
}

/// A throwaway CA with a server certificate for the test etcd and a client
/// certificate for the agents (openssl, from Debian).
fn make_pki(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("srv.ext"),
        "subjectAltName=IP:192.168.77.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("cli.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=test-ca",
        "-days",
        "1",
    ]);
    for (name, ext) in [("server", "srv.ext"), ("client", "cli.ext")] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "1",
            "-extfile",
            ext,
        ]);
    }
}

#[test]
fn etcd_over_tls_with_client_certificates() {
    let mut net = Underlay::new("tls");
    let host = net.add_host("tlsh", &["192.168.77.10/24"]);
    let switch = &net.switch;
    switch.ip(&["addr", "add", "192.168.77.1/24", "dev", "br0"]);
    let dir = TempDir::new("flanneld-tls");
    let d = dir.path();
    make_pki(d);
    let p = |f: &str| d.join(f).display().to_string();
    let url = "https://192.168.77.1:2379";
    let (cert, key, ca) = (p("server.pem"), p("server.key"), p("ca.pem"));
    let tls = [
        "--cacert",
        &p("ca.pem"),
        "--cert",
        &p("client.pem"),
        "--key",
        &p("client.key"),
    ];
    let server = [
        "--cert-file",
        &cert,
        "--key-file",
        &key,
        "--client-cert-auth",
        "--trusted-ca-file",
        &ca,
    ];
    let opts = EtcdOptions {
        server_flags: server.iter().map(|s| s.to_string()).collect(),
        ctl_flags: tls.iter().map(|s| s.to_string()).collect(),
        ..EtcdOptions::default()
    };
    let etcd = Etcd::start_with(switch, url, d, opts);
    etcd.ctl(&["put", "/coreos.com/network/config", &host_gw().to_string()]);
    let agent_args: Vec<String> = [
        "--etcd-endpoints",
        url,
        "--etcd-cafile",
        &p("ca.pem"),
        "--etcd-certfile",
        &p("client.pem"),
        "--etcd-keyfile",
        &p("client.key"),
        "--iface",
        "eth0",
        "--subnet-file",
        &p("subnet.env"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent = Daemon::start(
        &plugin_binary("flanneld"),
        &agent_args,
        &host,
        &d.join("agent.log"),
    );
    assert!(
        wait_for(Duration::from_secs(15), || d.join("subnet.env").exists()),
        "no lease over TLS: {}",
        agent.log()
    );
    let keys = etcd.ctl(&[
        "get",
        "--prefix",
        "--keys-only",
        "/coreos.com/network/subnets/",
    ]);
    assert!(
        keys.contains("/coreos.com/network/subnets/10.244."),
        "{keys}"
    );
    drop(agent);
    drop(etcd);
}

/// Without `--etcd-cafile` the agent trusts the system's CA certificates,
/// as upstream does: here the "system" store is the test CA, named by
/// `SSL_CERT_FILE`; without it the agent refuses etcd's certificate.
#[test]
fn etcd_over_tls_without_a_cafile_trusts_the_system_roots() {
    let mut net = Underlay::new("tlsroots");
    let host = net.add_host("rooth", &["192.168.77.10/24"]);
    let switch = &net.switch;
    switch.ip(&["addr", "add", "192.168.77.1/24", "dev", "br0"]);
    let dir = TempDir::new("flanneld-tlsroots");
    let d = dir.path();
    make_pki(d);
    let p = |f: &str| d.join(f).display().to_string();
    let url = "https://192.168.77.1:2379";
    let (cert, key, ca) = (p("server.pem"), p("server.key"), p("ca.pem"));
    let opts = EtcdOptions {
        server_flags: ["--cert-file", &cert, "--key-file", &key]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ctl_flags: vec!["--cacert".into(), ca.clone()],
        ..EtcdOptions::default()
    };
    let etcd = Etcd::start_with(switch, url, d, opts);
    etcd.ctl(&["put", "/coreos.com/network/config", &host_gw().to_string()]);
    let start = |tag: &str, env: &[(&str, &str)]| {
        let args: Vec<String> = [
            "--etcd-endpoints",
            url,
            "--iface",
            "eth0",
            "--subnet-file",
            &p(&format!("{tag}.env")),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = d.join(format!("{tag}.log"));
        Daemon::start_with_env(&plugin_binary("flanneld"), &args, &host, &log, env)
    };
    // The machine's own store does not hold the test CA: refused.
    let untrusting = start("untrusting", &[]);
    assert!(
        wait_for(Duration::from_secs(15), || untrusting
            .log()
            .contains("certificate")),
        "no word of the untrusted certificate: {}",
        untrusting.log()
    );
    assert!(!d.join("untrusting.env").exists());
    drop(untrusting);
    // No CA certificate anywhere: it says what to do.
    let missing = p("missing.pem");
    let lost = start("lost", &[("SSL_CERT_FILE", &missing)]);
    assert!(
        wait_for(Duration::from_secs(15), || lost
            .log()
            .contains("give --etcd-cafile")),
        "no advice without CA certificates: {}",
        lost.log()
    );
    drop(lost);
    let trusting = start("trusting", &[("SSL_CERT_FILE", &ca)]);
    assert!(
        wait_for(Duration::from_secs(15), || d.join("trusting.env").exists()),
        "no lease over TLS with the CA in the system's store: {}",
        trusting.log()
    );
    drop(trusting);
    drop(etcd);
}

#[test]
fn iface_regex_picks_the_interface_by_address_or_name() {
    let host = TestNetns::new("rx");
    host.ip(&[
        "link", "add", "uplink7", "type", "veth", "peer", "name", "uplink7p",
    ]);
    host.ip(&["addr", "add", "192.168.77.10/24", "dev", "uplink7"]);
    host.ip(&["link", "set", "uplink7", "up"]);
    let dir = TempDir::new("flanneld-rx");
    std::fs::write(dir.path().join("config"), host_gw().to_string()).unwrap();
    let start = |pattern: &str, tag: &str| {
        let args: Vec<String> = [
            "--store-dir",
            dir.path().to_str().unwrap(),
            "--iface-regex",
            pattern,
            "--subnet-file",
            dir.path().join(format!("{tag}.env")).to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Daemon::start(
            &plugin_binary("flanneld"),
            &args,
            &host,
            &dir.path().join(format!("{tag}.log")),
        )
    };
    for (pattern, tag) in [
        (r"^192\.168\.77\.", "by-addr"),
        ("^uplink[0-9]$", "by-name"),
    ] {
        let agent = start(pattern, tag);
        assert!(
            wait_for(Duration::from_secs(5), || dir
                .path()
                .join(format!("{tag}.env"))
                .exists()),
            "{pattern}: {}",
            agent.log()
        );
        assert!(agent.log().contains("on uplink7"), "{}", agent.log());
    }
    let mut bad = start("(", "bad");
    assert!(wait_for(Duration::from_secs(5), || !bad.alive()));
    assert!(bad.log().contains("--iface-regex"), "{}", bad.log());
}

#[test]
fn ipv6_only_over_vxlan_and_host_gw() {
    for backend in ["vxlan", "host-gw"] {
        let config = json!({
            "EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:244::/56",
            "Backend": {"Type": backend}
        });
        let cluster = Cluster::new(2, 1, &config);
        let env = cluster.subnet_env(0);
        assert!(
            !env.contains("FLANNEL_NETWORK=") && env.contains("FLANNEL_IPV6_SUBNET="),
            "{env}"
        );
        let a = cluster.add_pod_all(0, 0);
        let b = cluster.add_pod_all(1, 0);
        assert!(
            wait_for(Duration::from_secs(10), || cluster.reaches(0, 0, &b[0])
                && cluster.reaches(1, 0, &a[0])),
            "{backend}: IPv6 pods cannot talk: {}",
            cluster.hosts[0].agent.as_ref().unwrap().log()
        );
    }
}

#[test]
fn all_pairs_over_vxlan_and_host_gw_on_etcd() {
    all_pairs_on(&vxlan(), "FLANNEL_MTU=1450\n", true);
    all_pairs_on(&host_gw(), "FLANNEL_MTU=1500\n", true);
}

#[test]
fn dual_stack_on_etcd() {
    dual_stack_on("vxlan", true);
    dual_stack_on("host-gw", true);
}

#[test]
fn direct_routing_uses_plain_routes_to_peers_on_the_segment() {
    let config =
        json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": true}});
    let cluster = Cluster::new(2, 1, &config);
    let a = cluster.add_pod(0, 0);
    let b = cluster.add_pod(1, 0);
    assert!(wait_for(Duration::from_secs(10), || cluster
        .reaches(0, 0, &b)
        && cluster.reaches(1, 0, &a)));
    let peer = cluster.hosts[1].underlay_ip.clone();
    let routes = cluster.hosts[0].ns.ip(&["route", "show"]);
    assert!(routes.contains(&format!("via {peer} dev eth0")), "{routes}");
    assert!(!routes.contains("dev flannel.1"), "{routes}");
}

#[test]
fn host_gw_says_so_when_a_peer_is_not_on_the_segment() {
    let mut cluster = Cluster::new(1, 0, &host_gw());
    // A peer whose public address no interface of ours reaches directly
    // (a documentation address: nothing is ever sent to it).
    std::fs::write(
        cluster.store().join("subnets/10.244.250.0-24"),
        r#"{"value":{"PublicIP":"203.0.113.5","PublicIPv6":null,"BackendType":"host-gw"}}"#,
    )
    .unwrap();
    let agent = cluster.hosts[0].agent.as_mut().unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || agent
            .log()
            .contains("host-gw needs every peer on this host's L2 segment")),
        "{}",
        agent.log()
    );
    assert!(
        agent.alive(),
        "one unreachable peer does not stop the agent"
    );
}

#[test]
fn etcd_with_user_and_password() {
    let mut net = Underlay::new("auth");
    let host = net.add_host("authh", &["192.168.77.10/24"]);
    let switch = &net.switch;
    let dir = TempDir::new("flanneld-auth");
    let d = dir.path();
    let etcd = start_etcd(switch, d, &host_gw());
    let ctl = |args: &[&str]| {
        etcd.ctl(args);
    };
    ctl(&["user", "add", "root:rootpw", "--interactive=false"]);
    ctl(&["user", "add", "flannel:flpw", "--interactive=false"]);
    ctl(&["role", "add", "flannel"]);
    ctl(&[
        "role",
        "grant-permission",
        "flannel",
        "--prefix=true",
        "readwrite",
        "/coreos.com/network/",
    ]);
    ctl(&["user", "grant-role", "flannel", "flannel"]);
    ctl(&["auth", "enable"]);
    let start = |password: &str, tag: &str| {
        let args: Vec<String> = [
            "--etcd-endpoints",
            ETCD,
            "--etcd-username",
            "flannel",
            "--etcd-password",
            password,
            "--iface",
            "eth0",
            "--subnet-file",
            d.join(format!("{tag}.env")).to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Daemon::start(
            &plugin_binary("flanneld"),
            &args,
            &host,
            &d.join(format!("{tag}.log")),
        )
    };
    let wrong = start("nope", "wrong");
    assert!(
        wait_for(Duration::from_secs(10), || wrong
            .log()
            .contains("authentication failed")),
        "{}",
        wrong.log()
    );
    assert!(!d.join("wrong.env").exists());
    drop(wrong);
    let right = start("flpw", "right");
    assert!(
        wait_for(Duration::from_secs(10), || d.join("right.env").exists()),
        "{}",
        right.log()
    );
    drop(right);
    drop(etcd);
}

#[test]
fn the_lease_is_renewed_before_it_expires() {
    // A 63 s lease renewed 1 min before expiry: the first renewal is due
    // about 3 s after the start.
    let cluster = Cluster::with_args(
        1,
        0,
        &host_gw(),
        &[
            "--subnet-lease-ttl",
            "63",
            "--subnet-lease-renew-margin",
            "1",
        ],
    );
    let expires = || {
        let dir = cluster.store().join("subnets");
        let lease = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .unwrap();
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(lease.path()).unwrap()).unwrap();
        v["expires"].as_u64().unwrap()
    };
    let first = expires();
    let agent = cluster.hosts[0].agent.as_ref().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || agent
            .log()
            .contains("renewed lease")
            && expires() > first),
        "no renewal: {}",
        agent.log()
    );
}

#[test]
fn a_lease_time_shorter_than_the_renew_margin_is_refused() {
    let host = TestNetns::new("ttl");
    let dir = TempDir::new("flanneld-ttl");
    std::fs::write(dir.path().join("config"), host_gw().to_string()).unwrap();
    let args: Vec<String> = [
        "--store-dir",
        dir.path().to_str().unwrap(),
        "--iface",
        "lo",
        "--subnet-lease-ttl",
        "60",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut agent = Daemon::start(
        &plugin_binary("flanneld"),
        &args,
        &host,
        &dir.path().join("log"),
    );
    assert!(wait_for(Duration::from_secs(5), || !agent.alive()));
    assert!(
        agent.log().contains("--subnet-lease-ttl"),
        "{}",
        agent.log()
    );
}

#[test]
fn a_host_joining_a_nine_host_cluster_is_reached_by_all() {
    let mut cluster = Cluster::new(10, 1, &vxlan());
    // Host 9 leaves first (agent stopped, lease gone), then joins again.
    cluster.hosts[9].agent.as_mut().unwrap().stop();
    let ip9 = cluster.hosts[9].underlay_ip.clone();
    for e in std::fs::read_dir(cluster.store().join("subnets")).unwrap() {
        let path = e.unwrap().path();
        if std::fs::read_to_string(&path).unwrap().contains(&ip9) {
            std::fs::remove_file(path).unwrap();
        }
    }
    let addrs: Vec<String> = (0..9).map(|h| cluster.add_pod(h, 0)).collect();
    cluster.start(9);
    let new = cluster.add_pod(9, 0);
    for (h, addr) in addrs.iter().enumerate() {
        assert!(
            wait_for(Duration::from_secs(10), || cluster.reaches(h, 0, &new)
                && cluster.reaches(9, 0, addr)),
            "host {h} and the new host cannot reach each other"
        );
    }
}

#[test]
fn version_and_usage() {
    let out = std::process::Command::new(plugin_binary("flanneld"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("flanneld"));
    let out = std::process::Command::new(plugin_binary("flanneld"))
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown flag --no-such-flag"));
    // --help is an answer, not an error; every flag is in it.
    let out = std::process::Command::new(plugin_binary("flanneld"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--iface-regex", "--store-dir", "--healthz-port", "-v N"] {
        assert!(help.contains(flag), "--help lacks {flag}: {help}");
    }
}
