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
    /// A cheap hint that leases may have changed since the last call, so
    /// the agent can resync at once instead of at the next tick. Stores
    /// without one answer `false` and rely on the tick.
    fn changed(&mut self) -> bool {
        false
    }
}
