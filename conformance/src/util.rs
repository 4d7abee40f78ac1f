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
