//! The agent: lease this node's subnet, write subnet.env, then keep the data
//! plane equal to the store's leases.
//!
//! After start-up everything is driven by events on one channel, each
//! turned into a plan and applied (the table is [`Agent::handle`]):
//!
//! | event                                   | plan                                        |
//! |-----------------------------------------|---------------------------------------------|
//! | store: a listing                        | every lease put; absent peers wait (grace)  |
//! | store: a peer's lease put               | its old state against its new (`diff`)      |
//! | store: a peer's lease gone              | its state removed                           |
//! | store: our own lease put or gone        | ownership: ours, another's, or re-create it |
//! | store: trouble                          | not ready; the data plane is kept           |
//! | store: the answer to our write          | ours (renewed), or not ours any more        |
//! | kernel: something of ours changed       | what is wanted in its place (`repair`)      |
//! | kernel: notifications lost              | a full comparison                           |
//!
//! and timers: the lease's renewal or a retry, the end of an absent peer's
//! grace period, the nftables check, and a rare full comparison with the
//! kernel (`resync`) as a safety net. Each round's kernel changes go out
//! in one batch. The store runs on threads of its own: the loop never
//! waits on the network.

mod follow;
mod kernel;
mod own;
mod repair;
mod resync;
mod start;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use netkit::batch::Op;
use netkit::monitor::Change;

use crate::backend::Backend;
use crate::health::{self, Health};
use crate::iface::ExtIface;
use crate::netconfig::NetConfig;
use crate::peers::Table;
use crate::store::StoreEvent;
use crate::store::task::{Reply, Request, Task};
use crate::traffic::Traffic;
use kernel::Kernel;
use own::Own;

pub use start::run;

/// The loop goes round at least this often (it records its health then,
/// and notices a request to stop).
pub const TICK: Duration = Duration::from_millis(250);
/// How often the masquerade and forward rules are checked (a cheap look
/// at the ruleset generation when nothing changed).
pub const TRAFFIC_CHECK: Duration = Duration::from_secs(2);

/// How soon a failed "the data plane is up" is said again.
const COMPLETE_AGAIN: Duration = Duration::from_secs(5);

/// A batch this large (a listing, a restored device) leaves the heap
/// grown by megabytes of transient records: handed back afterwards.
const BIG_BATCH: usize = 1000;

/// Returns freed heap memory to the system (glibc keeps it otherwise, per
/// thread arena), so the resident size stays that of the peer table.
pub fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it has no
    // preconditions.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// What wakes the agent.
#[derive(Debug)]
pub enum Event {
    /// The store's feed.
    Store(StoreEvent),
    /// The store's answer to a write of our lease.
    Reply(Box<Reply>),
    /// The kernel's notifications.
    Kernel(Vec<Change>),
    /// The kernel notification socket failed (a full comparison follows).
    KernelTrouble(String),
}

/// How the store's feed stands.
#[derive(Debug, Default)]
struct Feed {
    /// Listed at least once.
    listed: bool,
    /// Why it cannot reach the store, while it cannot.
    trouble: Option<String>,
    /// What differs in the store's network config, while it does.
    drift: Option<String>,
    /// Said once: the store has no network config any more.
    config_gone_said: bool,
}

/// When the timed work is next due.
#[derive(Debug)]
struct Timers {
    full_every: Duration,
    next_full: Instant,
    /// The wait after a failed full comparison.
    full_backoff: Option<Duration>,
    next_traffic: Instant,
    /// When to say again that the data plane is up (the last try failed).
    complete_again: Option<Instant>,
}

/// Everything the running agent holds.
#[derive(Debug)]
pub struct Agent {
    /// The config this agent runs (read at start; a change needs a restart).
    config: NetConfig,
    ext: ExtIface,
    backend: Box<dyn Backend>,
    kernel: Kernel,
    own: Own,
    /// The store's feed reports our own lease (ownership is followed).
    own_in_feed: bool,
    store: Task,
    feed: Feed,
    peers: Table,
    /// How long a peer missing from a listing is kept.
    grace: Duration,
    /// The backend's own peer table must be rebuilt from `peers`.
    peers_dirty: bool,
    traffic: Traffic,
    health: Arc<Health>,
    timers: Timers,
    /// The underlay link is up (routes via it vanish when it goes down).
    ext_up: bool,
    /// The first full comparison after start: an earlier version's
    /// routes are dealt with then.
    first_pass: bool,
}

impl Agent {
    /// The loop: handle what arrives, in batches; run what is due.
    fn run(&mut self, rx: &Receiver<Event>, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.due(now);
            let wait = self.next_deadline(now).saturating_duration_since(now);
            match rx.recv_timeout(wait.min(TICK)) {
                Ok(ev) => {
                    let mut records = self.handle(ev);
                    // Everything queued meanwhile joins the same batch.
                    while let Ok(ev) = rx.try_recv() {
                        records += self.handle(ev);
                    }
                    let big = records.max(self.kernel.pending()) >= BIG_BATCH;
                    self.flush();
                    if big {
                        give_back_memory();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.feed.trouble = Some("the store's feed stopped".into());
                    std::thread::sleep(TICK);
                }
            }
            self.health.record(self.pass());
        }
    }

    /// The event table: each event to its plan. Returns how many records
    /// the event carried (a measure of the garbage it leaves).
    fn handle(&mut self, ev: Event) -> usize {
        let own = self.own.key();
        let mut records = 1;
        match ev {
            Event::Store(StoreEvent::Listed { leases, config }) => {
                records = leases.len();
                self.listed(&leases, config.as_deref());
            }
            Event::Store(StoreEvent::Put(lease)) if lease.key == own => self.own.seen(Some(&lease)),
            Event::Store(StoreEvent::Put(lease)) => self.peer_put(&lease),
            Event::Store(StoreEvent::Gone(key)) if key == own => self.own.seen(None),
            Event::Store(StoreEvent::Gone(key)) => self.peer_deleted(&key),
            Event::Store(StoreEvent::Config(text)) => self.config_seen(text.as_deref()),
            Event::Store(StoreEvent::Trouble(why)) => self.store_trouble(why),
            Event::Reply(reply) if matches!(reply.request, Request::Complete { .. }) => {
                self.completed(*reply)
            }
            Event::Reply(reply) => self.own.replied(*reply),
            Event::Kernel(changes) => {
                records = changes.len();
                self.on_kernel(changes);
            }
            Event::KernelTrouble(e) => {
                self.kernel.error_once(format!(
                    "kernel notifications failed ({e}): comparing everything instead"
                ));
                self.full_soon();
            }
        }
        self.count();
        records
    }

    /// The soonest of the timers.
    fn next_deadline(&self, now: Instant) -> Instant {
        let t = &self.timers;
        [
            Some(t.next_full),
            Some(t.next_traffic),
            t.complete_again,
            self.own.due_at(),
            self.peers.next_expiry(self.grace),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + TICK)
        .max(now)
    }

    /// Runs the timers that are due.
    fn due(&mut self, now: Instant) {
        if let Some(request) = self.own.due(now)
            && let Err(e) = self.store.send(request)
        {
            self.feed.trouble = Some(e);
        }
        if self.timers.complete_again.is_some_and(|t| t <= now) {
            self.timers.complete_again = None;
            let lease = self.own.lease().clone();
            if let Err(e) = self.store.send(Request::Complete { lease }) {
                self.feed.trouble = Some(e);
            }
        }
        self.expire_absent(now);
        if now >= self.timers.next_traffic {
            self.sync_traffic();
            self.timers.next_traffic = now + TRAFFIC_CHECK;
        }
        if now >= self.timers.next_full && self.feed.listed {
            self.full_pass();
        }
    }

    /// Where the agent stands, for `/healthz` and `/readyz`.
    fn pass(&self) -> health::Pass {
        let store = if !self.feed.listed {
            Some("the store has not been listed yet".to_string())
        } else if let Some(why) = &self.feed.trouble {
            Some(why.clone())
        } else {
            self.own.trouble()
        };
        health::Pass {
            store_ok: store.is_none(),
            store_why: store,
            dataplane_errors: self.kernel.errors(),
            conflict: self.own.is_conflict(),
            config_changed: self.feed.drift.is_some(),
        }
    }

    /// The store's answer to "the data plane is up": a failure is said
    /// and the saying tried again in a while.
    fn completed(&mut self, reply: Reply) {
        match reply.result {
            Ok(_) => crate::debug!("the store knows the data plane is up"),
            Err(e) => {
                self.kernel.error_once(format!(
                    "cannot tell the store the data plane is up: {e} (trying again in {} s)",
                    COMPLETE_AGAIN.as_secs()
                ));
                self.timers.complete_again = Some(Instant::now() + COMPLETE_AGAIN);
            }
        }
    }

    /// The feed cannot reach the store: said once while it persists.
    fn store_trouble(&mut self, why: String) {
        self.health
            .metrics
            .store_errors
            .fetch_add(1, Ordering::Relaxed);
        self.kernel.error_once(format!(
            "lease store: {why} (the data plane is kept as it is)"
        ));
        self.feed.trouble = Some(why);
    }

    /// Sends the round's kernel changes in one batch (after the backend's
    /// own peer table, if it has one); failures bring a full comparison,
    /// with backoff.
    fn flush(&mut self) {
        if std::mem::take(&mut self.peers_dirty)
            && let Err(e) = self.backend.peers_changed(&self.peers)
        {
            self.kernel.failed(e);
        }
        let ext = self.ext.index;
        let hint = move |op: &Op| match op {
            Op::ReplaceRoute(r) if r.oif == Some(ext) => {
                " (host-gw needs every peer on this host's L2 segment)"
            }
            _ => "",
        };
        let failed = self.kernel.flush(&names(&*self.backend, &self.ext), &hint);
        if failed > 0 && self.timers.full_backoff.is_none() {
            self.timers.full_backoff = Some(own::FIRST_RETRY);
            self.timers.next_full = Instant::now() + own::FIRST_RETRY;
        }
    }
}

/// Device names for the log: the backend's, the underlay's, else the
/// index.
fn names<'a>(backend: &'a dyn Backend, ext: &'a ExtIface) -> impl Fn(u32) -> String + 'a {
    move |index| match backend.device_name(index) {
        Some(name) => name,
        None if index == ext.index => ext.name.clone(),
        None => format!("ifindex {index}"),
    }
}
