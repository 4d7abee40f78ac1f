//! Scenario 1: many ADDs at once on one network, then as many DELs at once,
//! each call its own process, all contending for the store's lock.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use crate::plugin::{self, Plugin, Verb};
use crate::store;
use crate::subnet::Subnet;
use crate::tempdir::TempDir;

/// Wall times from the first spawn to the last exit.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub add: Duration,
    pub del: Duration,
}

/// Runs `count` ADDs at once, checks that every one got its own address in
/// `subnet` and that the store holds exactly those, then `count` DELs at once
/// and checks that the store is empty again.
pub fn run(plugin: &Plugin, subnet: Subnet, count: usize) -> Result<Outcome, String> {
    let data = TempDir::new(&format!("{}-concurrent", plugin.label))?;
    let config = plugin::config(data.path(), &subnet.to_string())?;
    let ids: Vec<String> = (0..count).map(|n| format!("bench-{n}")).collect();

    let (add, outs) = all_at_once(plugin, Verb::Add, &ids, &config)?;
    check_all_succeeded(plugin, Verb::Add, &ids, &outs)?;
    let mut owners: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    for (id, out) in ids.iter().zip(&outs) {
        let ip = plugin::added_address(plugin, id, out)?;
        if !subnet.contains(ip) {
            return Err(format!("{}: {id} got {ip}, outside {subnet}", plugin.label));
        }
        if let Some(other) = owners.insert(ip, id) {
            return Err(format!(
                "{}: {ip} was handed out twice, to {other} and to {id}",
                plugin.label
            ));
        }
    }
    // What the results say and what the store says must agree.
    let held = store::contents(data.path())?;
    let handed_out: Vec<Ipv4Addr> = owners.keys().copied().collect();
    if held.reservations != handed_out || !held.unexpected.is_empty() {
        return Err(format!(
            "{}: after {count} ADDs the store holds {} reservations (results name {}) \
             and these other files: {:?}",
            plugin.label,
            held.reservations.len(),
            handed_out.len(),
            held.unexpected
        ));
    }

    let (del, outs) = all_at_once(plugin, Verb::Del, &ids, &config)?;
    check_all_succeeded(plugin, Verb::Del, &ids, &outs)?;
    let left = store::contents(data.path())?;
    if !left.reservations.is_empty() || !left.unexpected.is_empty() {
        return Err(format!(
            "{}: after {count} DELs the store still holds {} reservations {:?} \
             and these other files: {:?}",
            plugin.label,
            left.reservations.len(),
            left.reservations.iter().take(5).collect::<Vec<_>>(),
            left.unexpected
        ));
    }
    Ok(Outcome { add, del })
}

/// Spawns one call per id, all before waiting for any, and times the lot.
fn all_at_once(
    plugin: &Plugin,
    verb: Verb,
    ids: &[String],
    config: &[u8],
) -> Result<(Duration, Vec<Output>), String> {
    let start = Instant::now();
    let mut children: Vec<Child> = Vec::with_capacity(ids.len());
    for id in ids {
        match plugin.spawn(verb, id, config) {
            Ok(child) => children.push(child),
            Err(e) => {
                // Reap the ones started, so none outlives its data dir.
                for child in children {
                    let _ = child.wait_with_output();
                }
                return Err(e);
            }
        }
    }
    let mut outs = Vec::with_capacity(children.len());
    let mut failure = None;
    for child in children {
        match child.wait_with_output() {
            Ok(out) => outs.push(out),
            Err(e) => failure = failure.or(Some(format!("{}: waiting: {e}", plugin.label))),
        }
    }
    let elapsed = start.elapsed();
    match failure {
        Some(e) => Err(e),
        None => Ok((elapsed, outs)),
    }
}

/// Fails naming how many calls failed and quoting the first.
fn check_all_succeeded(
    plugin: &Plugin,
    verb: Verb,
    ids: &[String],
    outs: &[Output],
) -> Result<(), String> {
    let mut errors = ids
        .iter()
        .zip(outs)
        .filter_map(|(id, out)| plugin::check_success(plugin, verb, id, out).err());
    let Some(first) = errors.next() else {
        return Ok(());
    };
    Err(format!(
        "{} of {} calls failed; the first:\n{first}",
        errors.count() + 1,
        ids.len()
    ))
}
