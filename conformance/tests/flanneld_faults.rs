//! flanneld when the lease store misbehaves or lies: a lease taken over by
//! another writer, a store that cannot be written, a network config changed
//! under running agents, an etcd wiped and restarted empty, hostile leases,
//! a departed peer, and etcd leases that must not pile up.
//!
//! Three simulated hosts (network namespaces on a bridge in a "switch"
//! namespace, see `conformance::cluster`), one pod each made through the
//! real CNI chain, vxlan, and a real etcd in the switch namespace or the
//! embedded store. What the agent must say is in its log
//! (`<RFC3339> E|W|I|D <message>`), on `/readyz` and in `/metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conformance::cluster::{
    Cluster, Pinger, http_get, in_mount_ns_of, log_lines, metric, nsenter_mount,
};
use conformance::wait_for;
use serde_json::{Value, json};

const HEALTH_PORT: u16 = 18095;
const HEALTH: [&str; 2] = ["--healthz-port", "18095"];
/// The vxlan device with the default VNI.
const VTEP: &str = "flannel.1";
/// A public address no host has: "another node".
const OTHER_NODE: &str = "192.168.77.99";
const SUBNETS: &str = "/coreos.com/network/subnets/";

fn vxlan() -> Value {
    json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}})
}

fn vxlan_245() -> Value {
    json!({"Network": "10.245.0.0/16", "Backend": {"Type": "vxlan"}})
}

/// Three hosts with one pod each on etcd (`use_etcd`) or the embedded
/// store, every agent started with `extra`; returns the cluster once every
/// pod reaches every other, and the pods' addresses by host.
fn cluster(use_etcd: bool, extra: &[&str]) -> (Cluster, Vec<String>) {
    let c = Cluster::build(3, 1, &vxlan(), use_etcd, extra);
    let pods: Vec<String> = (0..3).map(|h| c.add_pod(h, 0)).collect();
    all_reach(&c, &pods, &[0, 1, 2]);
    (c, pods)
}

/// Every pod of `hosts` reaches every other's (within 10 s).
fn all_reach(c: &Cluster, pods: &[String], hosts: &[usize]) {
    for &from in hosts {
        for &to in hosts.iter().filter(|&&to| to != from) {
            assert!(
                wait_for(Duration::from_secs(10), || c.reaches(from, 0, &pods[to])),
                "host {from}'s pod cannot reach host {to}'s ({}); logs:\n{}\n---\n{}",
                pods[to],
                c.log(from),
                c.log(to)
            );
        }
    }
}

/// GET from host `h`'s agent, on the host's address.
fn get(c: &Cluster, h: usize, path: &str) -> (u16, String) {
    let host = &c.hosts[h];
    http_get(&host.ns, &host.underlay_ip, HEALTH_PORT, path)
}

fn metric_of(c: &Cluster, h: usize, name: &str) -> Option<f64> {
    metric(&get(c, h, "/metrics").1, name)
}

/// Waits (up to `timeout`) for `/readyz` of host `h` to answer `code`
/// with a body containing `text`; the last answer on failure.
fn wait_ready(c: &Cluster, h: usize, code: u16, text: &str, timeout: Duration) {
    let mut last = (0, String::new());
    let ok = wait_for(timeout, || {
        last = get(c, h, "/readyz");
        last.0 == code && last.1.contains(text)
    });
    assert!(
        ok,
        "host {h}: /readyz is not {code} with {text:?}: {last:?}\n{}",
        c.log(h)
    );
}

/// Waits (up to `timeout`) for an `level` line in host `h`'s log that
/// contains every one of `needles`.
fn wait_log(c: &Cluster, h: usize, level: char, needles: &[&str], timeout: Duration) {
    let found = |log: &str| {
        log_lines(log, level, needles[0])
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    };
    assert!(
        wait_for(timeout, || found(&c.log(h))),
        "host {h} logged no {level} line with {needles:?}:\n{}",
        c.log(h)
    );
}

/// `W` lines naming lease `key` after `ignoring lease ` (the key not
/// being the start of a longer one).
fn ignoring(log: &str, key: &str) -> usize {
    let needle = format!("ignoring lease {key}");
    log_lines(log, 'W', &needle)
        .iter()
        .filter(|l| {
            l.split(&needle).skip(1).any(|rest| {
                !rest
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            })
        })
        .count()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The lease under `key` (LeaseAttrs JSON) in whichever store the
/// cluster uses; `None` when there is none.
fn lease(c: &Cluster, key: &str) -> Option<Value> {
    if c.etcd.is_some() {
        let text = c.etcdctl(&["get", "--print-value-only", &format!("{SUBNETS}{key}")]);
        let text = text.trim();
        (!text.is_empty()).then(|| serde_json::from_str(text).unwrap())
    } else {
        let text = std::fs::read_to_string(c.store().join("subnets").join(key)).ok()?;
        let record: Value = serde_json::from_str(&text).unwrap();
        Some(record["value"].clone())
    }
}

/// Writes a lease as another writer would: etcd `put` without a lease
/// (the value as given), or the embedded store's file (renamed into place,
/// expiring in an hour).
fn put_lease(c: &Cluster, key: &str, attrs: &Value) {
    if c.etcd.is_some() {
        c.etcdctl(&["put", &format!("{SUBNETS}{key}"), &attrs.to_string()]);
    } else {
        let record = json!({"value": attrs, "expires": unix_now() + 3600});
        write_atomically(&c.store().join("subnets").join(key), &record.to_string());
    }
}

fn del_lease(c: &Cluster, key: &str) {
    if c.etcd.is_some() {
        let out = c.etcdctl(&["del", &format!("{SUBNETS}{key}")]);
        assert_eq!(out.trim(), "1", "no lease {key} to delete");
    } else {
        std::fs::remove_file(c.store().join("subnets").join(key)).unwrap();
    }
}

/// What changes whenever anybody writes the lease under `key`: etcd's
/// mod_revision, the embedded store's file contents.
fn write_stamp(c: &Cluster, key: &str) -> String {
    if c.etcd.is_some() {
        let out = c.etcdctl(&["get", "-w", "json", &format!("{SUBNETS}{key}")]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["kvs"][0]["mod_revision"].to_string()
    } else {
        std::fs::read_to_string(c.store().join("subnets").join(key)).unwrap_or_default()
    }
}

/// A file replaced at once (a temporary file beside it, hidden, renamed).
fn write_atomically(path: &std::path::Path, text: &str) {
    let name = path.file_name().unwrap().to_str().unwrap();
    let tmp = path.with_file_name(format!(".{name}.test-tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Whether host `h` holds anything for a peer: a route to `subnet` in its
/// main table, a neighbour entry for `gw` on the vxlan device, a
/// forwarding entry to `public_ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerState {
    route: bool,
    neigh: bool,
    fdb: bool,
}

impl PeerState {
    fn any(self) -> bool {
        self.route || self.neigh || self.fdb
    }

    fn all(self) -> bool {
        self.route && self.neigh && self.fdb
    }
}

fn peer_state(c: &Cluster, h: usize, subnet: &str, public_ip: &str) -> PeerState {
    let ns = &c.hosts[h].ns;
    let gw = subnet.split('/').next().unwrap();
    let route = ns
        .ip(&["route", "show", "table", "main"])
        .lines()
        .any(|l| l.starts_with(&format!("{subnet} ")));
    let neigh = ns
        .ip(&["neigh", "show", "dev", VTEP])
        .lines()
        .any(|l| l.starts_with(&format!("{gw} ")));
    let fdb = fdb(c, h)
        .lines()
        .any(|l| l.contains(&format!(" dst {public_ip} ")));
    PeerState { route, neigh, fdb }
}

/// `bridge fdb show dev flannel.1` on host `h` (empty without the device).
fn fdb(c: &Cluster, h: usize) -> String {
    let out = c.hosts[h].ns.exec("bridge", &["fdb", "show", "dev", VTEP]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Our routes (proto 102) of host `h`'s main table, for messages.
fn dataplane(c: &Cluster, h: usize) -> String {
    let ns = &c.hosts[h].ns;
    format!(
        "routes:\n{}neighbours:\n{}fdb:\n{}",
        ns.ip(&["route", "show", "table", "main"]),
        ns.ip(&["neigh", "show", "dev", VTEP]),
        fdb(c, h)
    )
}

/// A pinger for every ordered pair of hosts' pods.
fn ping_all(c: &Cluster, pods: &[String], hosts: &[usize]) -> Vec<Pinger> {
    let mut out = Vec::new();
    for &from in hosts {
        for &to in hosts.iter().filter(|&&to| to != from) {
            let log = c.hosts[from].dir.join(format!("ping-{from}-{to}.txt"));
            out.push(Pinger::start(&c.hosts[from].pods[0], &pods[to], &log));
        }
    }
    out
}

/// Lets every pinger get a few more replies (so the episode before is
/// behind the last reply counted), stops them and asserts none lost any.
fn assert_no_loss(c: &Cluster, pingers: &mut [Pinger], what: &str) {
    for p in pingers.iter() {
        p.wait_for_more(3, Duration::from_secs(5));
    }
    let mut bad = Vec::new();
    for p in pingers.iter_mut() {
        let r = p.stop();
        if r.lost() > 0 || r.last_answered == 0 {
            bad.push(format!(
                "{} -> {}: lost {} (missing {:?}; {} transmitted, {} received):\n{}",
                p.from,
                p.target,
                r.lost(),
                r.missing,
                r.transmitted,
                r.received,
                r.output
                    .lines()
                    .rev()
                    .take(4)
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "pings lost {what}:\n{}\nlogs:\n{}",
        bad.join("\n"),
        (0..c.hosts.len())
            .map(|h| c.log(h))
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
}

// 1. A lease taken over by another writer.

/// Another node's lease under host 0's key: host 0 says so (log, /readyz,
/// /metrics), leaves it alone while it is there, and takes its key back
/// once it is free again; then pods reach host 0's pod again.
fn lease_taken_over(use_etcd: bool) {
    let (c, pods) = cluster(use_etcd, &HEALTH);
    let key = c.key(0);
    let ours = c.hosts[0].underlay_ip.clone();
    let mut theirs = lease(&c, &key).expect("host 0 has no lease");
    assert_eq!(theirs["PublicIP"], ours.as_str(), "{theirs}");
    theirs["PublicIP"] = json!(OTHER_NODE);
    if use_etcd {
        // As in the issue: deleted, then written by the other writer.
        del_lease(&c, &key);
    }
    put_lease(&c, &key, &theirs);
    wait_log(
        &c,
        0,
        'E',
        &["held by another node", OTHER_NODE, &ours],
        Duration::from_secs(5),
    );
    wait_ready(&c, 0, 503, "held by another node", Duration::from_secs(5));
    let conflicts = metric_of(&c, 0, "flannel_lease_conflicts_total");
    assert!(
        conflicts.is_some_and(|n| n > 0.0),
        "flannel_lease_conflicts_total: {conflicts:?}\n{}",
        get(&c, 0, "/metrics").1
    );
    // Never overwritten while the other node's lease is there. Nothing
    // to wait on (no write is the point): the agent writes its lease from
    // its retry timer (after 1 s, then 2 s more) or at renewal (hours
    // away), so 3 s cover the retry timer's first two rounds.
    let stamp = write_stamp(&c, &key);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        write_stamp(&c, &key),
        stamp,
        "host 0 wrote over another node's lease: {:?}\n{}",
        lease(&c, &key),
        c.log(0)
    );
    assert_eq!(lease(&c, &key).unwrap()["PublicIP"], OTHER_NODE);
    // The key is free again: host 0 takes it back at once.
    del_lease(&c, &key);
    assert!(
        wait_for(Duration::from_secs(3), || lease(&c, &key)
            .is_some_and(|l| l["PublicIP"] == ours.as_str())),
        "host 0 did not take back its free key: {:?}\n{}",
        lease(&c, &key),
        c.log(0)
    );
    wait_ready(&c, 0, 200, "", Duration::from_secs(5));
    all_reach(&c, &pods, &[0, 1, 2]);
}

#[test]
fn etcd_lease_taken_over_by_another_node_is_reported_and_never_overwritten() {
    lease_taken_over(true);
}

#[test]
fn embedded_lease_taken_over_by_another_node_is_reported_and_never_overwritten() {
    lease_taken_over(false);
}

// 1. A write that fails: the embedded store made read-only.

#[test]
fn embedded_store_read_only_is_an_error_retried_with_backoff_and_the_lease_comes_back() {
    let (mut c, pods) = cluster(false, &HEALTH);
    // Host 0's agent again, in a mount namespace of its own: the store is
    // made read-only for it alone.
    assert_eq!(c.hosts[0].agent.as_mut().unwrap().stop(), Some(0));
    let pid = c.start_in_own_mount_ns(0, &HEALTH);
    wait_ready(&c, 0, 200, "", Duration::from_secs(5));
    let store = c.store().display().to_string();
    in_mount_ns_of(pid, "mount", &["--bind", &store, &store]);
    in_mount_ns_of(pid, "mount", &["-o", "remount,bind,ro", &store]);
    let probe = format!("{store}/.probe");
    let touch = nsenter_mount(pid, "touch").arg(&probe).output().unwrap();
    assert!(
        !touch.status.success()
            && String::from_utf8_lossy(&touch.stderr).contains("Read-only file system"),
        "the store is not read-only for the agent: {touch:?}"
    );
    assert!(
        std::fs::write(&probe, "").is_ok(),
        "the store must stay writable outside the agent's mount namespace"
    );
    std::fs::remove_file(&probe).unwrap();

    let key = c.key(0);
    let errors_before = metric_of(&c, 0, "flannel_store_errors_total").unwrap_or(0.0);
    del_lease(&c, &key);
    let gone = Instant::now();
    wait_log(
        &c,
        0,
        'E',
        &["cannot re-create lease", "Read-only file system"],
        Duration::from_secs(5),
    );
    wait_ready(&c, 0, 503, "lease store", Duration::from_secs(5));
    let mut errors = 0.0;
    assert!(
        wait_for(Duration::from_secs(5), || {
            errors = metric_of(&c, 0, "flannel_store_errors_total").unwrap_or(0.0);
            errors > errors_before
        }),
        "flannel_store_errors_total did not grow from {errors_before}"
    );
    assert!(
        wait_for(Duration::from_secs(5), || metric_of(
            &c,
            0,
            "flannel_store_errors_total"
        )
        .unwrap_or(0.0)
            > errors),
        "flannel_store_errors_total stopped at {errors}: no retry\n{}",
        c.log(0)
    );
    // Retries back off (1 s doubling): a few tries in 8 s (at 0, 1, 3 and
    // 7 s), not one a second; each failed try is an error line. The tries
    // are counted over a fixed window: the wait is the measurement.
    std::thread::sleep(Duration::from_secs(8).saturating_sub(gone.elapsed()));
    let lines = log_lines(&c.log(0), 'E', "cannot re-create lease").len();
    assert!(
        (1..=5).contains(&lines),
        "{lines} `cannot re-create lease` errors in 8 s:\n{}",
        c.log(0)
    );
    let tries = metric_of(&c, 0, "flannel_store_errors_total").unwrap_or(0.0) - errors_before;
    assert!(
        tries <= 5.0,
        "{tries} failed store writes in {:?}: no backoff\n{}",
        gone.elapsed(),
        c.log(0)
    );
    assert!(lease(&c, &key).is_none());
    // Writable again: the lease is back at the next retry (30 s at most).
    in_mount_ns_of(pid, "umount", &[&store]);
    let ours = c.hosts[0].underlay_ip.clone();
    assert!(
        wait_for(Duration::from_secs(35), || lease(&c, &key)
            .is_some_and(|l| l["PublicIP"] == ours.as_str())),
        "no lease once the store is writable again:\n{}",
        c.log(0)
    );
    wait_ready(&c, 0, 200, "", Duration::from_secs(5));
    all_reach(&c, &pods, &[0, 1, 2]);
}

// 2. A change of the network config.

/// The network config changes under running agents: each says so and
/// stops being ready, and keeps the data plane as it is.
fn config_changed_while_running(use_etcd: bool) {
    let (mut c, pods) = cluster(use_etcd, &HEALTH);
    let mut pingers = ping_all(&c, &pods, &[0, 1, 2]);
    for p in &pingers {
        assert!(
            p.wait_for_more(2, Duration::from_secs(5)),
            "{} -> {}: no replies",
            p.from,
            p.target
        );
    }
    c.set_config(&vxlan_245());
    for h in 0..3 {
        wait_log(
            &c,
            h,
            'E',
            &[
                "network config changed",
                "10.244.0.0/16",
                "10.245.0.0/16",
                "restart",
            ],
            Duration::from_secs(5),
        );
        wait_ready(&c, h, 503, "network config", Duration::from_secs(5));
        assert_eq!(
            metric_of(&c, h, "flannel_config_changed"),
            Some(1.0),
            "host {h}: {}",
            get(&c, h, "/metrics").1
        );
    }
    // The data plane stays as it was: every peer's entries, no ping lost.
    for h in 0..3 {
        for peer in (0..3).filter(|&p| p != h) {
            let st = peer_state(&c, h, &c.subnet(peer), &c.hosts[peer].underlay_ip);
            assert!(
                st.all(),
                "host {h} lost peer {peer}: {st:?}\n{}",
                dataplane(&c, h)
            );
        }
        assert!(c.hosts[h].agent.as_mut().unwrap().alive(), "{}", c.log(h));
    }
    assert_no_loss(&c, &mut pingers, "after the network config changed");
}

#[test]
fn etcd_network_config_change_is_reported_not_ready_and_the_data_plane_kept() {
    config_changed_while_running(true);
}

#[test]
fn embedded_network_config_change_is_reported_not_ready_and_the_data_plane_kept() {
    config_changed_while_running(false);
}

/// After the change, host 2's agent restarts: it takes a subnet in the new
/// network, programs none of the other hosts' (old network) leases, names
/// each once, and settles.
fn restarted_under_a_new_config(use_etcd: bool) {
    let (mut c, _pods) = cluster(use_etcd, &HEALTH);
    let others: Vec<(String, String)> = (0..2).map(|h| (c.key(h), c.subnet(h))).collect();
    let own_old = c.key(2);
    c.set_config(&vxlan_245());
    assert_eq!(c.hosts[2].agent.as_mut().unwrap().stop(), Some(0));
    c.start_with(2, &HEALTH);
    assert!(
        wait_for(Duration::from_secs(10), || c.subnet_env(2).contains(
            "FLANNEL_NETWORK=10.245.0.0/16\nFLANNEL_SUBNET=10.245."
        )),
        "{}\n{}",
        c.subnet_env(2),
        c.log(2)
    );
    for (key, _) in &others {
        assert!(
            wait_for(Duration::from_secs(5), || ignoring(&c.log(2), key) >= 1),
            "host 2 does not say it ignores {key}:\n{}",
            c.log(2)
        );
    }
    let routed = |c: &Cluster| {
        others
            .iter()
            .filter(|(_, subnet)| {
                c.hosts[2]
                    .ns
                    .ip(&["route", "show", "table", "main"])
                    .lines()
                    .any(|l| l.starts_with(&format!("{subnet} ")))
            })
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(5), || routed(&c) == 0),
        "host 2 routes leases outside its network:\n{}\n{}",
        dataplane(&c, 2),
        c.log(2)
    );
    // Its own old lease, if still in the store, is out of the network too.
    let invalid = |c: &Cluster| metric_of(c, 2, "flannel_leases_invalid");
    assert!(
        wait_for(Duration::from_secs(5), || {
            let own_old_left = lease(&c, &own_old).is_some();
            invalid(&c).is_some_and(|n| n == 2.0 || (own_old_left && n == 3.0))
        }),
        "flannel_leases_invalid: {:?} (own old lease {own_old} in the store: {})",
        invalid(&c),
        lease(&c, &own_old).is_some()
    );
    // Settled: no repair after repair. Nothing to wait on: a repair loop
    // would run on the kernel's notifications (milliseconds) or on the
    // agent's 2 s rule check, so 5 s cover two of those.
    let repairs = metric_of(&c, 2, "flannel_repairs_total");
    assert!(repairs.is_some(), "{}", get(&c, 2, "/metrics").1);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        metric_of(&c, 2, "flannel_repairs_total"),
        repairs,
        "host 2 keeps repairing:\n{}",
        c.log(2)
    );
    assert_eq!(routed(&c), 0, "{}", dataplane(&c, 2));
    for (key, _) in &others {
        assert_eq!(ignoring(&c.log(2), key), 1, "{key}:\n{}", c.log(2));
    }
}

#[test]
fn etcd_agent_restarted_under_a_new_network_ignores_leases_outside_it_and_settles() {
    restarted_under_a_new_config(true);
}

#[test]
fn embedded_agent_restarted_under_a_new_network_ignores_leases_outside_it_and_settles() {
    restarted_under_a_new_config(false);
}

// 3. Peer state follows the store's momentary contents.

/// Stops etcd, wipes its data and starts it again empty, the network
/// config written back as an operator would.
fn wipe_etcd(c: &mut Cluster) {
    c.etcd_mut().stop();
    c.etcd().wipe();
    c.restart_etcd(&vxlan());
}

#[test]
fn etcd_wiped_and_restarted_empty_pods_lose_no_ping_while_agents_re_register() {
    let (mut c, pods) = cluster(true, &[]);
    let keys: Vec<String> = (0..3).map(|h| c.key(h)).collect();
    let mut pingers = ping_all(&c, &pods, &[0, 1, 2]);
    for p in &pingers {
        assert!(p.wait_for_more(2, Duration::from_secs(5)));
    }
    wipe_etcd(&mut c);
    assert!(
        wait_for(Duration::from_secs(15), || {
            let mut have = c.etcd_keys();
            have.sort();
            let mut want = keys.clone();
            want.sort();
            have == want
        }),
        "the agents did not re-create their leases: {:?}",
        c.etcd_keys()
    );
    for (h, key) in keys.iter().enumerate() {
        assert_eq!(
            lease(&c, key).unwrap()["PublicIP"],
            c.hosts[h].underlay_ip.as_str()
        );
    }
    assert_no_loss(&c, &mut pingers, "while etcd came back empty");
}

#[test]
fn etcd_peer_absent_from_a_re_list_is_removed_only_after_the_grace_period() {
    let (mut c, pods) = cluster(true, &["--peer-grace-period", "3"]);
    let (subnet2, ip2) = (c.subnet(2), c.hosts[2].underlay_ip.clone());
    let keys: Vec<String> = (0..2).map(|h| c.key(h)).collect();
    for h in 0..2 {
        let st = peer_state(&c, h, &subnet2, &ip2);
        assert!(st.all(), "host {h}: {st:?}\n{}", dataplane(&c, h));
    }
    // Host 2's agent stops (its lease stays), then etcd loses everything:
    // nobody re-creates host 2's lease.
    assert_eq!(c.hosts[2].agent.as_mut().unwrap().stop(), Some(0));
    c.etcd_mut().stop();
    c.etcd().wipe();
    let started = Instant::now();
    c.restart_etcd(&vxlan());
    // Per host: when it re-registered (its grace period runs from its
    // re-list, just before), whether host 2 was still there then, and
    // when host 2 was gone from it.
    let mut registered: [Option<(Duration, PeerState)>; 2] = [None, None];
    let mut gone: [Option<Duration>; 2] = [None, None];
    let done = wait_for(Duration::from_secs(25), || {
        let have = c.etcd_keys();
        for h in 0..2 {
            let st = peer_state(&c, h, &subnet2, &ip2);
            if registered[h].is_none() && have.contains(&keys[h]) {
                registered[h] = Some((started.elapsed(), st));
            }
            if gone[h].is_none() && !st.any() {
                gone[h] = Some(started.elapsed());
            }
        }
        (0..2).all(|h| {
            registered[h].is_some_and(|(at, _)| {
                gone[h].is_some() || started.elapsed() > at + Duration::from_secs(10)
            })
        })
    });
    assert!(
        done && registered.iter().all(Option::is_some),
        "hosts 0 and 1 did not re-create their leases: {:?}; registered {registered:?}\n{}",
        c.etcd_keys(),
        c.log(0)
    );
    for h in 0..2 {
        let (at, st) = registered[h].unwrap();
        assert!(
            st.all(),
            "host {h} removed host 2 at once: gone when it re-registered, {at:?} after etcd started: {st:?}\n{}",
            c.log(h)
        );
        let g = gone[h].unwrap_or_else(|| {
            panic!(
                "host {h} still holds host 2 10 s after it re-registered: {:?}\n{}\n{}",
                peer_state(&c, h, &subnet2, &ip2),
                dataplane(&c, h),
                c.log(h)
            )
        });
        assert!(
            g >= Duration::from_millis(2500),
            "host {h} removed host 2 {g:?} after etcd started: the grace period is 3 s\n{}",
            c.log(h)
        );
    }
    all_reach(&c, &pods, &[0, 1]);
}

// 4. Leases are programmed without validation.

/// Leases nobody may program: the whole network, a /25 inside host 1's
/// /24, and a well-placed /24 whose VTEP MAC is garbage. No host programs
/// any; each agent names each once; valid peers are unaffected.
fn hostile_leases(use_etcd: bool) {
    let (c, pods) = cluster(use_etcd, &HEALTH);
    let used: Vec<String> = (0..3).map(|h| c.subnet(h)).collect();
    let inside = c.subnet(1).replace(".0/24", ".128/25");
    let free = (240..255)
        .map(|n| format!("10.244.{n}.0/24"))
        .find(|s| !used.contains(s))
        .unwrap();
    let attrs = |ip: &str, mac: &str| {
        json!({
            "PublicIP": ip, "PublicIPv6": null, "BackendType": "vxlan",
            "BackendData": {"VNI": 1, "VtepMAC": mac}
        })
    };
    let hostile = [
        ("10.244.0.0/16", "192.168.77.51", "0a:00:00:00:00:51"),
        (inside.as_str(), "192.168.77.52", "0a:00:00:00:00:52"),
        (free.as_str(), "192.168.77.53", "zz"),
    ];
    for (subnet, ip, mac) in hostile {
        put_lease(&c, &subnet.replace('/', "-"), &attrs(ip, mac));
    }
    // Every host has handled each hostile lease once it names it as
    // ignored: it does so while handling the lease's event, and programs
    // what that event asks in the same pass.
    for h in 0..3 {
        assert!(
            wait_for(Duration::from_secs(5), || {
                let log = c.log(h);
                hostile
                    .iter()
                    .all(|(subnet, _, _)| ignoring(&log, &subnet.replace('/', "-")) >= 1)
            }),
            "host {h} did not name every hostile lease:\n{}",
            c.log(h)
        );
    }
    for h in 0..3 {
        for (subnet, ip, mac) in hostile {
            let st = peer_state(&c, h, subnet, ip);
            let by_mac = fdb(&c, h).contains(mac);
            assert!(
                !st.any() && !by_mac,
                "host {h} programmed the lease {subnet}: {st:?}\n{}",
                dataplane(&c, h)
            );
        }
    }
    for h in 0..3 {
        let log = c.log(h);
        for (subnet, _, _) in hostile {
            let key = subnet.replace('/', "-");
            assert_eq!(
                ignoring(&log, &key),
                1,
                "host {h} should name {key} once as ignored:\n{log}"
            );
        }
        assert_eq!(
            metric_of(&c, h, "flannel_leases_invalid"),
            Some(3.0),
            "host {h}: {}",
            get(&c, h, "/metrics").1
        );
    }
    all_reach(&c, &pods, &[0, 1, 2]);
}

#[test]
fn etcd_hostile_leases_are_never_programmed_and_named_once() {
    hostile_leases(true);
}

#[test]
fn embedded_hostile_leases_are_never_programmed_and_named_once() {
    hostile_leases(false);
}

// 5. Departed peers leave fdb entries behind.

/// Host 2's agent stops (leaving its data plane and lease), then its lease
/// is deleted: its route, neighbour and fdb entries go from the other hosts
/// within 5 s.
fn departed_peer(use_etcd: bool) {
    let (mut c, pods) = cluster(use_etcd, &[]);
    let (subnet2, ip2, key2) = (c.subnet(2), c.hosts[2].underlay_ip.clone(), c.key(2));
    for h in 0..2 {
        let st = peer_state(&c, h, &subnet2, &ip2);
        assert!(st.all(), "host {h}: {st:?}\n{}", dataplane(&c, h));
    }
    assert_eq!(c.hosts[2].agent.as_mut().unwrap().stop(), Some(0));
    del_lease(&c, &key2);
    let t = Instant::now();
    for h in 0..2 {
        assert!(
            wait_for(Duration::from_secs(5).saturating_sub(t.elapsed()), || {
                !peer_state(&c, h, &subnet2, &ip2).any()
            }),
            "host {h} still holds the departed host 2 after {:?}: {:?}\n{}\n{}",
            t.elapsed(),
            peer_state(&c, h, &subnet2, &ip2),
            dataplane(&c, h),
            c.log(h)
        );
    }
    eprintln!("departed peer removed everywhere within {:?}", t.elapsed());
    all_reach(&c, &pods, &[0, 1]);
}

#[test]
fn etcd_deleted_lease_of_a_departed_peer_removes_its_route_neighbour_and_fdb_within_5s() {
    departed_peer(true);
}

#[test]
fn embedded_deleted_lease_of_a_departed_peer_removes_its_route_neighbour_and_fdb_within_5s() {
    departed_peer(false);
}

// 6. etcd leases leak.

#[test]
fn etcd_renewals_and_a_re_created_lease_leave_one_etcd_lease_per_node() {
    // A 65 s lease renewed 1 min before it expires: every ~5 s.
    let (c, _pods) = cluster(
        true,
        &[
            "--subnet-lease-ttl",
            "65",
            "--subnet-lease-renew-margin",
            "1",
        ],
    );
    let renewals = |h: usize| log_lines(&c.log(h), 'I', "renewed lease").len();
    for h in 0..3 {
        assert!(
            wait_for(Duration::from_secs(15), || renewals(h) >= 2),
            "host {h} renewed {} times:\n{}",
            renewals(h),
            c.log(h)
        );
    }
    // One etcd lease per node, and it is the one its key is attached to.
    let one_each = |c: &Cluster| {
        let listed = c.etcd_leases();
        let attached: Vec<String> = (0..3)
            .filter_map(|h| {
                let out = c.etcdctl(&["get", "-w", "json", &format!("{SUBNETS}{}", c.key(h))]);
                let v: Value = serde_json::from_str(&out).ok()?;
                v["kvs"][0]["lease"].as_i64().map(|id| format!("{id:x}"))
            })
            .collect();
        let ok =
            listed.len() == 3 && attached.len() == 3 && attached.iter().all(|a| listed.contains(a));
        (
            ok,
            format!("listed {listed:?}, attached to the keys {attached:?}"),
        )
    };
    let check = |c: &Cluster, when: &str| {
        let mut last = String::new();
        assert!(
            wait_for(Duration::from_secs(3), || {
                let (ok, what) = one_each(c);
                last = what;
                ok
            }),
            "{when}: not one etcd lease per node: {last}"
        );
    };
    check(&c, "after renewals");
    // Host 0's key deleted: it re-creates it, and its old grant goes.
    let key = c.key(0);
    del_lease(&c, &key);
    let ours = c.hosts[0].underlay_ip.clone();
    assert!(
        wait_for(Duration::from_secs(5), || lease(&c, &key)
            .is_some_and(|l| l["PublicIP"] == ours.as_str())),
        "host 0 did not re-create its lease:\n{}",
        c.log(0)
    );
    check(&c, "after host 0 re-created its lease");
    let before = renewals(0);
    assert!(
        wait_for(Duration::from_secs(10), || renewals(0) > before),
        "host 0 stopped renewing:\n{}",
        c.log(0)
    );
    check(&c, "after host 0 renewed its re-created lease");
}

/// Issue 18, defect 4: an etcd that hangs (frozen with SIGSTOP, so calls
/// neither fail nor answer) for longer than `/healthz`'s staleness limit,
/// while renewals fall due every few seconds. The store's calls run off
/// the agent's loop: `/healthz` stays 200 throughout (a liveness probe
/// must never restart an agent for a store fault), `/readyz` says why it
/// is not ready, and a route deleted meanwhile is repaired at once.
#[test]
fn a_frozen_etcd_leaves_the_agent_live_not_ready_and_repairing() {
    // A 65 s lease renewed 1 min before expiry: a renewal every 5 s.
    let extra = [
        HEALTH[0],
        HEALTH[1],
        "--subnet-lease-ttl",
        "65",
        "--subnet-lease-renew-margin",
        "1",
    ];
    let (c, pods) = cluster(true, &extra);
    wait_ready(&c, 0, 200, "ready", Duration::from_secs(10));
    let stale = Duration::from_secs(10);
    let pid = c.etcd.as_ref().unwrap().pid().unwrap();
    let etcd = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(etcd, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // Thawed however the test ends.
    struct Thaw(nix::unistd::Pid);
    impl Drop for Thaw {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
        }
    }
    let thaw = Thaw(etcd);
    let frozen = Instant::now();
    let mut not_ready = None;
    let mut repaired = false;
    let peer = c.subnet(1);
    // Longer than the staleness limit, and than etcd's call deadlines.
    while frozen.elapsed() < stale + Duration::from_secs(12) {
        let (code, body) = get(&c, 0, "/healthz");
        assert_eq!(
            code,
            200,
            "/healthz failed {:?} into the freeze: {body}\n{}",
            frozen.elapsed(),
            c.log(0)
        );
        if not_ready.is_none() {
            let (code, body) = get(&c, 0, "/readyz");
            if code == 503 && body.contains("lease store") {
                not_ready = Some(body);
            }
        }
        if !repaired && frozen.elapsed() > stale {
            // The loop repairs as ever.
            c.hosts[0].ns.ip(&["route", "del", &peer]);
            repaired = wait_for(Duration::from_secs(2), || {
                c.hosts[0].ns.ip(&["route", "show", &peer]).contains(VTEP)
            });
            assert!(
                repaired,
                "route {peer} not repaired while etcd hangs:\n{}",
                c.log(0)
            );
        }
        // Pacing: the freeze's length is the test; probe twice a second.
        std::thread::sleep(Duration::from_millis(500));
    }
    let body =
        not_ready.unwrap_or_else(|| panic!("/readyz never said the store fails:\n{}", c.log(0)));
    eprintln!("/readyz while etcd hangs: {body}");
    drop(thaw);
    wait_ready(&c, 0, 200, "ready", Duration::from_secs(40));
    all_reach(&c, &pods, &[0, 1, 2]);
}
