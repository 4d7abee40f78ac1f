//! Talking to the kernel: changes queued as events are handled, sent in one
//! batch at the end of each round, their failures logged (once while they
//! persist), counted, and answered with a full comparison.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use netkit::Netlink;
use netkit::batch::Op;
use netkit::neigh::Entry;

use crate::diff::{Change, Item};
use crate::health::Health;
use crate::routes;

/// Why a change is made, for the log and the repair count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A peer came, changed or went (quiet: thousands at a time).
    Peer,
    /// Someone changed what we programmed; put back (counted).
    Repair,
    /// The full comparison found it (counted).
    Resync,
}

#[derive(Debug)]
pub struct Kernel {
    nl: Netlink,
    pending: Vec<Op>,
    health: Arc<Health>,
    /// Kernel reads and changes that failed since the last full pass.
    errors: usize,
    /// Errors logged lately: one that persists is logged as an error
    /// once, then at debug level (the full comparison turns the page).
    said: Vec<String>,
    said_before: Vec<String>,
}

/// `10.244.2.0 02:00:00:00:00:02` for the log.
fn entry(e: &Entry) -> String {
    format!("{} {}", e.ip, netkit::link::format_mac(&e.mac))
}

/// What an item is, for the log.
pub fn describe(item: &Item, name: &dyn Fn(u32) -> String) -> String {
    match item {
        Item::Route(r) => format!("route {}", routes::describe(r, name)),
        Item::Neighbour(e) => format!("neighbour {} on {}", entry(e), name(e.ifindex)),
        Item::Fdb(e) => format!("fdb entry {} on {}", entry(e), name(e.ifindex)),
    }
}

fn describe_op(op: &Op, name: &dyn Fn(u32) -> String) -> String {
    let (removal, item) = match op {
        Op::ReplaceRoute(r) => (false, Item::Route(r.clone())),
        Op::DelRoute(r) => (true, Item::Route(r.clone())),
        Op::SetNeighbour(e) => (false, Item::Neighbour(e.clone())),
        Op::DelNeighbour(e) => (true, Item::Neighbour(e.clone())),
        Op::SetFdb(e) => (false, Item::Fdb(e.clone())),
        Op::DelFdb(e) => (true, Item::Fdb(e.clone())),
    };
    let what = describe(&item, name);
    if removal {
        format!("removal of {what}")
    } else {
        what
    }
}

fn is_removal(op: &Op) -> bool {
    matches!(op, Op::DelRoute(_) | Op::DelNeighbour(_) | Op::DelFdb(_))
}

impl Kernel {
    pub fn new(nl: Netlink, health: Arc<Health>) -> Kernel {
        Kernel {
            nl,
            pending: Vec::new(),
            health,
            errors: 0,
            said: Vec::new(),
            said_before: Vec::new(),
        }
    }

    pub fn nl(&mut self) -> &mut Netlink {
        &mut self.nl
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Failures not yet set right by a full comparison.
    pub fn errors(&self) -> usize {
        self.errors
    }

    /// Forgets queued changes (they named a device that was made anew).
    pub fn drop_pending(&mut self) {
        self.pending.clear();
    }

    pub fn repaired(&self) {
        self.health.metrics.repairs.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues `changes`, logged and counted as `why` says.
    pub fn queue(&mut self, changes: Vec<Change>, why: Why, name: &dyn Fn(u32) -> String) {
        for c in changes {
            if why != Why::Peer {
                self.log(&c, why, name);
            }
            self.pending.push(c.into_op());
        }
    }

    fn log(&self, c: &Change, why: Why, name: &dyn Fn(u32) -> String) {
        let repair = matches!(c, Change::Set { .. });
        if repair {
            self.repaired();
        }
        match (c, why) {
            (Change::Set { want, .. }, Why::Repair) => {
                crate::info!("repairing: {}", describe(want, name));
            }
            (Change::Set { want, over: None }, _) => {
                crate::info!("{} was missing: restored", describe(want, name));
            }
            (
                Change::Set {
                    want: Item::Route(w),
                    over: Some(Item::Route(o)),
                },
                _,
            ) if !routes::is_ours(o) && routes::same(o, w) => crate::info!(
                "route {} adopted (it was made as {}, by an earlier version)",
                routes::describe(w, name),
                routes::describe(o, name)
            ),
            (
                Change::Set {
                    want: Item::Route(w),
                    over: Some(Item::Route(o)),
                },
                _,
            ) if !routes::is_ours(o) => crate::warn!(
                "route {} replaces {}, which flanneld did not make",
                routes::describe(w, name),
                routes::describe(o, name)
            ),
            (
                Change::Set {
                    want,
                    over: Some(o),
                },
                _,
            ) => crate::info!(
                "{} was changed to {}: restored",
                describe(want, name),
                describe(o, name)
            ),
            (Change::Remove(item), _) => {
                crate::info!("{} of a departed peer removed", describe(item, name));
            }
        }
    }

    /// Sends the queued changes in one batch; returns how many failed
    /// (each logged and counted). `hint` adds advice to a failure.
    pub fn flush(
        &mut self,
        name: &dyn Fn(u32) -> String,
        hint: &dyn Fn(&Op) -> &'static str,
    ) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        let ops = std::mem::take(&mut self.pending);
        let results = match self.nl.apply(&ops) {
            Ok(r) => r,
            Err(e) => {
                self.failed(format!("cannot send {} kernel changes: {e}", ops.len()));
                return ops.len();
            }
        };
        let mut failed = 0;
        for (op, r) in ops.iter().zip(results) {
            match r {
                Ok(()) => {}
                // Already gone: what a removal wanted.
                Err(e) if is_removal(op) && e.is_not_found() => {}
                Err(e) => {
                    failed += 1;
                    self.failed(format!(
                        "cannot apply {}: {e}{}",
                        describe_op(op, name),
                        hint(op)
                    ));
                }
            }
        }
        failed
    }

    /// A kernel read or change failed: logged and counted.
    pub fn failed(&mut self, msg: String) {
        self.error_once(msg);
        self.errors += 1;
        self.health
            .metrics
            .dataplane_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Logs an error, once while it persists between full comparisons.
    pub fn error_once(&mut self, msg: String) {
        if self.said_before.contains(&msg) || self.said.contains(&msg) {
            crate::debug!("still: {msg}");
        } else {
            crate::error!("{msg}");
        }
        if !self.said.contains(&msg) {
            self.said.push(msg);
        }
    }

    /// A full comparison begins: errors are counted afresh, and the ones
    /// said in the last round are not said again if they persist.
    pub fn new_round(&mut self) {
        self.said_before = std::mem::take(&mut self.said);
        self.errors = 0;
    }
}
