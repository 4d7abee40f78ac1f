//! Where leases live: an embedded file store (no server needed), and etcd
//! v3 with upstream's layout, behind one [`Store`] trait. A store runs on
//! threads of its own: its feed (list, then watch) reports what changes as
//! [`StoreEvent`]s, and the agent's requests to write its own lease go to
//! the store's task ([`task`]) as messages, answered the same way. The
//! agent's loop never waits on the network.

pub mod alloc;
pub mod etcd;
pub mod file;
pub mod kube;
pub mod probe;
pub mod task;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::netconfig::NetConfig;
use alloc::AllocError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("lease store {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lease store: {0}")]
    Invalid(String),
}

/// What a write of our own lease came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// Written: the lease as it now is (with its new revision).
    Ours(Lease),
    /// Not written: the record was not as we last saw it (another writer
    /// won); what the store holds there now, if anything readable.
    NotOurs(Option<Lease>),
}

impl Written {
    /// The lease written, if it was.
    pub fn ours(self) -> Option<Lease> {
        match self {
            Written::Ours(l) => Some(l),
            Written::NotOurs(_) => None,
        }
    }
}

/// What a store knows of this node before it takes its lease: what an
/// earlier run published (its VTEP MACs, so peers' entries stay right
/// across a restart) and what a person set (its public addresses, which
/// stand for `--public-ip`). Only the Kubernetes store knows any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    pub public_ip: Option<std::net::Ipv4Addr>,
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    pub mac: Option<[u8; 6]>,
    pub mac6: Option<[u8; 6]>,
}

/// What this node asks for when it takes its lease.
#[derive(Debug)]
pub struct Acquire<'a> {
    pub config: &'a NetConfig,
    pub attrs: &'a LeaseAttrs,
    /// The subnets of an earlier run (from subnet.env), asked for again.
    pub previous: Option<SubnetKey>,
    pub ttl: Duration,
}

/// Every lease record at one moment.
#[derive(Debug, Default)]
pub struct Listing {
    pub leases: Vec<Lease>,
    /// Keys whose records cannot be read: taken, for allocation.
    pub unreadable: Vec<SubnetKey>,
}

/// A store of lease records under their keys (the embedded store, etcd):
/// what allocation is built on. Every write names what it expects to find.
pub trait Records {
    fn list(&mut self) -> Result<Listing, StoreError>;
    /// Writes a lease only if nobody holds the key.
    fn create(
        &mut self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Written, StoreError>;
    /// Rewrites `lease` only if its record is still the revision we saw.
    fn replace(
        &mut self,
        lease: &Lease,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Written, StoreError>;
    /// Deletes `lease` only if its record is still the revision we saw;
    /// `false` when it was not.
    fn delete(&mut self, lease: &Lease) -> Result<bool, StoreError>;
}

/// Why a record's name cannot be read, in either store.
const NOT_A_SUBNET_KEY: &str = "not a subnet key such as 10.244.3.0-24";

/// How many records the feeds cannot read now (the gauge
/// `flannel_leases_unreadable`).
pub static UNREADABLE: AtomicU64 = AtomicU64::new(0);

/// Lease records that cannot be read (a bad key or value; a Node that is
/// no lease): left out, and each named once in the log rather than every
/// resync.
#[derive(Debug)]
pub struct Unreadable {
    names: BTreeSet<String>,
    /// What a record is, for the log ("lease record", "node").
    noun: &'static str,
    /// What happens to it, for the log.
    outcome: &'static str,
    /// A feed's: counted in [`UNREADABLE`].
    counted: bool,
}

impl Default for Unreadable {
    fn default() -> Self {
        Unreadable {
            names: BTreeSet::new(),
            noun: "lease record",
            outcome: "cannot be read, so it is ignored",
            counted: false,
        }
    }
}

impl Unreadable {
    /// A feed's, whose records are `noun`s.
    pub fn for_feed(noun: &'static str) -> Unreadable {
        Unreadable {
            noun,
            counted: true,
            ..Unreadable::default()
        }
    }

    /// A feed's of Nodes, which may simply not be peers.
    pub fn for_nodes() -> Unreadable {
        Unreadable {
            outcome: "is not a peer",
            ..Unreadable::for_feed("node")
        }
    }

    fn counted(&self) {
        if self.counted {
            UNREADABLE.store(self.names.len() as u64, Ordering::Relaxed);
        }
    }

    /// After a listing: every record it could not read, with why.
    pub fn update(&mut self, now: BTreeMap<String, String>) {
        for (key, why) in &now {
            if !self.names.contains(key) {
                self.say(key, why);
            }
        }
        self.names = now.into_keys().collect();
        self.counted();
    }

    /// One record seen unreadable (a feed's event): logged unless it
    /// already was.
    pub fn note(&mut self, key: String, why: &str) {
        if !self.names.contains(&key) {
            self.say(&key, why);
            self.names.insert(key);
            self.counted();
        }
    }

    /// A record that was read fine (or is gone): a later bad write to it
    /// is logged again.
    pub fn forget(&mut self, key: &str) {
        if self.names.remove(key) {
            self.counted();
        }
    }

    fn say(&self, key: &str, why: &str) {
        use crate::log::escape;
        crate::warn!(
            "{} {} {}: {}",
            self.noun,
            escape(key),
            self.outcome,
            escape(why)
        );
    }
}

/// `d` give or take 10 %, so that agents started together do not all
/// list the store (or compare the kernel) at the same moment.
pub fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState has fresh keys: a random number without a crate.
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let permille = 900 + u32::try_from(r % 201).unwrap_or(100);
    d.checked_mul(permille).map_or(d, |x| x / 1000)
}

/// A current-thread runtime: each store's thread and feed has its own.
pub fn runtime() -> Result<tokio::runtime::Runtime, StoreError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| StoreError::Io {
            what: "cannot start an async runtime for the lease store".into(),
            source,
        })
}

/// Waits between attempts to reach a store: 100 ms, doubling to 5 s (or
/// another most).
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Backoff {
        Backoff::up_to(Self::MAX)
    }

    /// Doubling to `max` at most.
    pub fn up_to(max: Duration) -> Backoff {
        Backoff {
            next: Self::FIRST,
            max,
        }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// What a store's feed reports, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreEvent {
    /// Every live lease and the config at one moment: first thing after
    /// `feed`, and again whenever the feed lost track (a broken or
    /// compacted watch, a store that restarted) and on the feed's slow
    /// safety tick. A lease missing from a listing is no proof that it is
    /// gone (the store may have come back empty): the agent waits a grace
    /// period before it removes it.
    Listed {
        leases: Vec<Lease>,
        /// `None`: there is no config (or it cannot be read).
        config: Option<String>,
    },
    /// A lease was created or rewritten.
    Put(Lease),
    /// A lease was deleted or expired: proof that it is gone.
    Gone(SubnetKey),
    /// The network config was written (`None`: deleted).
    Config(Option<String>),
    /// The feed cannot reach the store (it keeps trying, then lists again).
    Trouble(String),
}

/// Receives a feed's events; `false` when the receiver went away, which
/// ends the feed.
pub type Sink = Box<dyn FnMut(StoreEvent) -> bool + Send>;

/// A lease store.
pub trait Store: std::fmt::Debug + Send {
    /// The network config JSON.
    fn network_config(&mut self) -> Result<String, StoreError>;
    /// Whether the feed reports this node's own lease (the Kubernetes
    /// store's does not: the Node is this node's, whatever it holds).
    fn feeds_own_lease(&self) -> bool {
        true
    }
    /// What the store knows of this node before it takes its lease.
    fn hints(&mut self) -> Result<Hints, StoreError> {
        Ok(Hints::default())
    }
    /// Takes this node's lease: the one it holds, else the subnet it had
    /// before, else a free one (the Kubernetes store: its Node's pod CIDR).
    fn acquire(&mut self, want: &Acquire<'_>) -> Result<Lease, AllocError>;
    /// Writes our lease again (renewal, new attributes), only if the store
    /// still holds it as we last saw it.
    fn renew(
        &mut self,
        lease: &Lease,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Written, StoreError>;
    /// Writes our lease again under its key after it was deleted, only if
    /// the key is free.
    fn recreate(&mut self, lease: &Lease, ttl: Option<Duration>) -> Result<Written, StoreError>;
    /// The data plane is up: says so where the store has a place for it
    /// (the Kubernetes store: the Node's NetworkUnavailable condition).
    fn complete(&mut self, _lease: &Lease) -> Result<(), StoreError> {
        Ok(())
    }
    /// Starts a thread that reports the store's changes to `sink`: a
    /// `Listed` first, then each change as it happens (etcd: a watch; the
    /// embedded store: inotify, plus expiry of leases as it comes due),
    /// a `Listed` again after trouble, and one every `relist` (with
    /// jitter) as a safety net.
    ///
    /// The thread runs until `sink` returns `false` (it learns that at
    /// its next event, at the latest at the next `relist`). Each call
    /// starts another feed.
    fn feed(&mut self, sink: Sink, relist: Duration) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let d = Duration::from_secs(100);
        for _ in 0..1000 {
            let j = jittered(d);
            assert!(
                j >= Duration::from_secs(90) && j <= Duration::from_secs(110),
                "{j:?}"
            );
        }
        assert_eq!(jittered(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn backoff_doubles_to_five_seconds_and_resets() {
        let mut b = Backoff::new();
        let waits: Vec<u128> = (0..8).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(100));
    }
}
