//! Our own lease in the store: ours, held by another node, or to be
//! written again (re-created when someone deleted it, renewed when a
//! renewal failed), with backoff.
//!
//! Ownership, not existence: the lease under our key must name this node
//! (addresses and backend data). Another node's lease there is never
//! overwritten; the key is taken back only by the store's atomic
//! create-if-absent once it is free again.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use crate::agent::State;
use crate::lease::{Lease, LeaseAttrs};

/// The first retry of a failed write, doubled up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
pub const MAX_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
pub enum Own {
    Held,
    /// Another node's lease is under our key (described for the log).
    Conflict(String),
    /// To be written at `at`: re-created, or renewed (`renew`).
    Retry {
        at: Instant,
        backoff: Duration,
        renew: bool,
    },
}

impl Own {
    pub fn retry_at(&self) -> Option<Instant> {
        match self {
            Own::Retry { at, .. } => Some(*at),
            _ => None,
        }
    }

    pub fn is_settled(&self) -> bool {
        *self == Own::Held
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, Own::Conflict(_))
    }

    /// The next attempt after one that failed.
    pub fn later(backoff: Duration, renew: bool) -> Own {
        Own::Retry {
            at: Instant::now() + backoff,
            backoff: (backoff * 2).min(MAX_RETRY),
            renew,
        }
    }
}

/// `PublicIP 192.168.1.2` (and the IPv6 one when set).
fn addresses(a: &LeaseAttrs) -> String {
    let mut parts = Vec::new();
    if let Some(ip) = a.public_ip {
        parts.push(format!("PublicIP {ip}"));
    }
    if let Some(ip) = a.public_ipv6 {
        parts.push(format!("PublicIPv6 {ip}"));
    }
    if parts.is_empty() {
        parts.push("no public address".into());
    }
    parts.join(", ")
}

impl State {
    /// What the store holds under our key now (`None`: nothing).
    pub fn own_seen(&mut self, lease: Option<&Lease>) {
        let key = self.lease.key;
        match lease {
            // The lease names this node as we wrote it.
            Some(l) if l.attrs == self.attrs => {
                match &self.own {
                    Own::Held | Own::Retry { renew: true, .. } => {}
                    _ => crate::info!("lease {key} is this node's again"),
                }
                if !matches!(self.own, Own::Retry { renew: true, .. }) {
                    self.own = Own::Held;
                }
            }
            Some(l) => {
                let theirs = addresses(&l.attrs);
                if self.own != Own::Conflict(theirs.clone()) {
                    crate::error!(
                        "lease {key} is held by another node ({theirs}); this node is {}: not overwriting it. Peers now send this node's pod traffic there; the key is taken back when it is free",
                        addresses(&self.attrs)
                    );
                    self.health
                        .metrics
                        .lease_conflicts
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.own = Own::Conflict(theirs);
            }
            None => {
                if !matches!(self.own, Own::Retry { renew: false, .. }) {
                    crate::warn!("lease {key} is gone from the store; re-creating it");
                    self.own = Own::Retry {
                        at: Instant::now(),
                        backoff: FIRST_RETRY,
                        renew: false,
                    };
                }
            }
        }
    }

    /// The retry that is due: re-create or renew our lease.
    pub fn retake_own(&mut self) {
        let Own::Retry { backoff, renew, .. } = self.own.clone() else {
            return;
        };
        let key = self.lease.key;
        let ttl = self.lease.expires.map(|_| self.lease_ttl);
        let result = if renew {
            self.store.update(&key, &self.attrs, ttl).map(|()| true)
        } else {
            self.store.create(&key, &self.attrs, ttl)
        };
        let what = if renew { "renew" } else { "re-create" };
        match result {
            Ok(true) => {
                self.lease.expires = ttl.map(|t| SystemTime::now() + t);
                crate::info!("lease {key}: {what}d");
                self.own = Own::Held;
            }
            // Taken meanwhile: its Put names the holder.
            Ok(false) => {
                crate::error!(
                    "cannot re-create lease {key}: another writer took the key first (looked at again in {} s)",
                    backoff.as_secs()
                );
                self.own = Own::later(backoff, false);
            }
            Err(e) => {
                self.health
                    .metrics
                    .store_errors
                    .fetch_add(1, Ordering::Relaxed);
                crate::error!(
                    "cannot {what} lease {key}: {e} (retrying in {} s)",
                    backoff.as_secs()
                );
                self.own = Own::later(backoff, renew);
            }
        }
    }
}
