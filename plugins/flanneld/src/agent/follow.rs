//! Following the store: each lease of the feed becomes a change to the
//! peer table, and the peer's old kernel state against its new one
//! (`diff`) becomes the changes queued for the batch.
//!
//! Removal only on evidence: a lease deleted or expired takes its peer
//! with it at once; a lease merely missing from a full listing (the store
//! came back empty, a watch was compacted) is kept for the grace period
//! (`--peer-grace-period`), in which its node re-registers.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::kernel::Why;
use super::{Agent, names};
use crate::diff::{self, Set};
use crate::lease::{Lease, SubnetKey};
use crate::log::escape;
use crate::netconfig::{self, NetConfig};
use crate::peers::{Peer, Update};

impl Agent {
    /// What the kernel must hold for `peer`.
    pub(super) fn wanted(&self, peer: Option<&Peer>) -> Set {
        let mut w = Set::default();
        if let Some(p) = peer {
            self.backend.wanted(p, &mut w);
        }
        w
    }

    /// Queues what takes the kernel from `old` peer state to `new`.
    fn reprogram(&mut self, old: Option<&Peer>, new: Option<&Peer>) {
        let changes = diff::diff(&self.wanted(old), &self.wanted(new));
        self.kernel
            .queue(changes, Why::Peer, &names(&*self.backend, &self.ext));
    }

    pub(super) fn count(&self) {
        let m = &self.health.metrics;
        let peers = self.peers.len() as u64;
        m.peers.store(peers, Ordering::Relaxed);
        m.leases.store(
            peers + u64::from(!self.own.is_conflict()),
            Ordering::Relaxed,
        );
        m.leases_invalid
            .store(self.peers.invalid() as u64, Ordering::Relaxed);
        m.peers_absent
            .store(self.peers.absent() as u64, Ordering::Relaxed);
    }

    /// Every lease at one moment.
    pub(super) fn listed(&mut self, leases: &[Lease], config: Option<&str>) {
        if self.feed.trouble.take().is_some() {
            crate::info!("the lease store answers again");
        }
        self.config_seen(config);
        let own = self.own.key();
        if self.own_in_feed {
            self.own.seen(leases.iter().find(|l| l.key == own));
        }
        for lease in leases.iter().filter(|l| l.key != own) {
            self.peer_put(lease);
        }
        let absent_before = self.peers.absent();
        let present: HashSet<SubnetKey> = leases.iter().map(|l| l.key).collect();
        self.peers.listed(&present, Instant::now());
        let absent = self.peers.absent();
        if absent > absent_before {
            crate::warn!(
                "{} peers are missing from the store's listing but were not deleted: kept for {} s (--peer-grace-period) for them to re-register",
                absent - absent_before,
                self.grace.as_secs()
            );
        }
        if !self.feed.listed {
            self.feed.listed = true;
            // Leftovers of peers that left while we were down go now.
            self.full_soon();
        }
    }

    /// A peer's lease as the store has it now.
    pub(super) fn peer_put(&mut self, lease: &Lease) {
        let own = self.own.key();
        match self.peers.put(lease, &self.config, &*self.backend, &own) {
            Update::Same => {}
            Update::Changed { old, new } => {
                self.peers_dirty = true;
                self.reprogram(old.as_ref(), Some(&new));
                if old.is_some() {
                    crate::info!("lease {} changed: its peer is reprogrammed", lease.key);
                }
            }
            Update::Invalid { why, first, old } => {
                if first {
                    crate::warn!("ignoring lease {}: {}", lease.key, escape(&why));
                }
                if old.is_some() {
                    self.peers_dirty = true;
                    self.reprogram(old.as_ref(), None);
                }
            }
        }
    }

    /// A peer's lease was deleted or expired.
    pub(super) fn peer_deleted(&mut self, key: &SubnetKey) {
        if self.peers.get(key).is_some() {
            crate::info!("lease {key} is gone from the store: its peer is removed");
        }
        self.peer_gone(key);
    }

    /// Absent peers whose grace period is over go.
    pub(super) fn expire_absent(&mut self, now: Instant) {
        let expired = self.peers.expired(self.grace, now);
        if expired.is_empty() {
            return;
        }
        for key in expired {
            crate::info!(
                "lease {key} has been missing from the store for {} s: its peer is removed",
                self.grace.as_secs()
            );
            self.peer_gone(&key);
        }
        self.flush();
    }

    /// A peer's lease is gone (or its grace period ended); refused leases
    /// that clashed with it are looked at again.
    fn peer_gone(&mut self, key: &SubnetKey) {
        let own = self.own.key();
        let (gone, retried) = self.peers.remove(key, &self.config, &*self.backend, &own);
        if gone.is_some() {
            self.peers_dirty = true;
            self.reprogram(gone.as_ref(), None);
        }
        for u in retried {
            if let Update::Changed { new, .. } = u {
                crate::info!(
                    "lease {} no longer clashes with another: programmed",
                    new.key
                );
                self.peers_dirty = true;
                self.reprogram(None, Some(&new));
            }
        }
    }

    /// The network config as the store has it now (`None`: none at all).
    pub(super) fn config_seen(&mut self, text: Option<&str>) {
        let Some(text) = text else {
            if !std::mem::replace(&mut self.feed.config_gone_said, true) {
                crate::warn!(
                    "the store has no network config any more: running on with the one read at start"
                );
            }
            return;
        };
        self.feed.config_gone_said = false;
        let drift = match NetConfig::parse(text) {
            Ok(c) if c == self.config => None,
            Ok(c) => Some(netconfig::describe_change(&self.config, &c)),
            Err(e) => Some(format!("it no longer parses: {}", escape(&e))),
        };
        match (&drift, &self.feed.drift) {
            (None, Some(_)) => {
                crate::info!("the network config in the store is again the one this agent runs")
            }
            (Some(d), before) if before.as_ref() != Some(d) => crate::error!(
                "network config changed in the store ({d}): restart flanneld to apply it; until then this agent keeps its lease and data plane as they are"
            ),
            _ => {}
        }
        self.feed.drift = drift;
    }
}
