//! Where leases live: an embedded file store (no server needed), and etcd
//! v3 with upstream's layout.

pub mod etcd;
pub mod file;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::lease::{Lease, LeaseAttrs, SubnetKey};

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

/// Lease records that cannot be read (a bad key or value): left out of the
/// listing, and each named once in the log rather than every resync.
#[derive(Debug, Default)]
pub struct Unreadable(BTreeSet<String>);

impl Unreadable {
    /// After a listing: every record it could not read, with why.
    pub fn update(&mut self, now: BTreeMap<String, String>) {
        for (key, why) in &now {
            if !self.0.contains(key) {
                crate::warn!("lease record {key} cannot be read, so it is ignored: {why}");
            }
        }
        self.0 = now.into_keys().collect();
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

pub trait Store: std::fmt::Debug {
    /// The network config JSON.
    fn network_config(&mut self) -> Result<String, StoreError>;
    /// Every live lease (expired ones are not returned).
    fn leases(&mut self) -> Result<Vec<Lease>, StoreError>;
    /// Creates a lease if nobody holds the key; `false` when taken.
    fn create(
        &mut self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError>;
    /// Rewrites (renews) a lease.
    fn update(
        &mut self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError>;
    fn delete(&mut self, key: &SubnetKey) -> Result<(), StoreError>;
    /// Starts a thread that reports the store's changes to `sink`: a
    /// `Listed` first, then each change as it happens (etcd: a watch; the
    /// embedded store: inotify, plus expiry of leases as it comes due),
    /// a `Listed` again after trouble, and one every `relist` (with
    /// jitter) as a safety net.
    fn feed(&mut self, sink: Sink, relist: Duration) -> Result<(), StoreError>;
}
