//! flanneld given a list of etcd endpoints of which one is dead, as
//! upstream's default list (`http://127.0.0.1:2379,http://127.0.0.1:4001`)
//! is on most clusters: every start gets its lease and writes subnet.env
//! in the usual time, whatever the order, whether the dead endpoint
//! refuses connections or does not answer at all, and pods reach each
//! other.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::time::Duration;

use conformance::cluster::{Cluster, ETCD};
use conformance::{plugin_binary, wait_for};
use serde_json::json;

/// The switch's address, where nothing listens on 4001: refused.
const REFUSED: &str = "http://192.168.77.1:4001";
/// An unused underlay address that the hosts send to a MAC nobody owns:
/// a connect gets no answer at all and waits for its timeout.
const BLACKHOLED: &str = "http://192.168.77.250:2379";

#[test]
fn agents_get_their_lease_with_a_dead_etcd_endpoint_in_the_list() {
    let config = json!({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}});
    let mut c = Cluster::prepare(2, 1, &config, true);
    for h in &c.hosts {
        h.ns.ip(&[
            "neigh",
            "replace",
            "192.168.77.250",
            "lladdr",
            "02:00:00:00:00:fa",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
    }
    // With the dead endpoint first, the agent meets it (and says so).
    let lists = [
        (format!("{REFUSED},{ETCD}"), Some(REFUSED)),
        (format!("{ETCD},{REFUSED}"), None),
        (format!("{BLACKHOLED},{ETCD}"), Some(BLACKHOLED)),
    ];
    let mut pods: Option<(String, String)> = None;
    for (list, first_dead) in &lists {
        for start in 0..2 {
            for h in 0..c.hosts.len() {
                // The previous agent stops first; its lease stays in etcd
                // (a restart renews it, the first start creates it).
                c.hosts[h].agent = None;
                let _ = std::fs::remove_file(c.hosts[h].dir.join("subnet.env"));
                let mut args = c.agent_args(h, &[]);
                let at = args.iter().position(|a| a == "--etcd-endpoints").unwrap();
                args[at + 1] = list.clone();
                eprintln!("start {start} of host {h} with --etcd-endpoints={list}");
                // Fails the test unless subnet.env is written in time.
                c.launch(h, &plugin_binary("flanneld"), &args);
                assert!(
                    c.subnet_env(h).contains("FLANNEL_SUBNET=10.244."),
                    "{}",
                    c.log(h)
                );
                if let Some(dead) = first_dead {
                    let log = c.log(h);
                    let said = log.lines().find(|l| l.contains(&format!("{dead}: ")));
                    assert!(said.is_some(), "the dead endpoint was not met: {log}");
                    eprintln!("  {}", said.unwrap_or_default());
                }
            }
            let (a, b) = pods
                .get_or_insert_with(|| (c.add_pod(0, 0), c.add_pod(1, 0)))
                .clone();
            assert!(
                wait_for(Duration::from_secs(10), || c.reaches(0, 0, &b)
                    && c.reaches(1, 0, &a)),
                "pods cannot talk with --etcd-endpoints={list}; agent logs:\n{}\n---\n{}",
                c.log(0),
                c.log(1)
            );
        }
    }
    assert_eq!(c.etcd_keys().len(), 2, "{:?}", c.etcd_keys());
}
