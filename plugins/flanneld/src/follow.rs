//! Following the store: each event of its feed becomes changes to the peer
//! table and the kernel changes that go with them (queued for the batch).
//!
//! Removal only on evidence: a lease deleted or expired takes its peer
//! with it at once; a lease merely missing from a full listing (the store
//! came back empty, a watch was compacted) is kept for the grace period
//! (`--peer-grace-period`), in which its node re-registers.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::agent::State;
use crate::backend::vxlan::Vxlan;
use crate::iface::ExtIface;
use crate::lease::{Lease, SubnetKey};
use crate::netconfig::{self, NetConfig};
use crate::peers::Update;
use crate::plan::{self, Reach};
use crate::store::StoreEvent;

/// How peers are reached now; `None` while the vxlan device is missing
/// (the repair of the device programs every peer afresh).
pub fn reach<'a>(
    vtep: &'a Option<Vxlan>,
    dev: Option<u32>,
    ext: &'a ExtIface,
    udp: bool,
) -> Option<Reach<'a>> {
    match (vtep, dev) {
        (Some(vtep), Some(dev)) => Some(Reach::Vxlan { vtep, dev, ext }),
        (Some(_), None) => None,
        (None, _) if udp => Some(Reach::Udp),
        (None, _) => Some(Reach::HostGw { ext }),
    }
}

impl State {
    pub fn on_store(&mut self, ev: StoreEvent) {
        match ev {
            StoreEvent::Listed { leases, config } => self.on_listed(&leases, config.as_deref()),
            StoreEvent::Put(lease) if lease.key == self.lease.key => self.own_seen(Some(&lease)),
            StoreEvent::Put(lease) => self.peer_put(&lease),
            StoreEvent::Gone(key) if key == self.lease.key => self.own_seen(None),
            StoreEvent::Gone(key) => {
                if self.peers.get(&key).is_some() {
                    crate::info!("lease {key} is gone from the store: its peer is removed");
                }
                self.peer_gone(&key);
            }
            StoreEvent::Config(text) => self.config_seen(text.as_deref()),
            StoreEvent::Trouble(why) => {
                self.store_failed(format!(
                    "lease store: {why} (the data plane is kept as it is)"
                ));
                self.store_trouble = Some(why);
            }
        }
        self.count();
    }

    fn count(&self) {
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

    fn on_listed(&mut self, leases: &[Lease], config: Option<&str>) {
        if self.store_trouble.take().is_some() {
            crate::info!("the lease store answers again");
        }
        self.config_seen(config);
        self.own_seen(leases.iter().find(|l| l.key == self.lease.key));
        let own = self.lease.key;
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
        if !self.listed {
            self.listed = true;
            // Leftovers of peers that left while we were down go now.
            self.full_soon();
        }
    }

    /// A peer's lease as the store has it now.
    pub fn peer_put(&mut self, lease: &Lease) {
        let reach = reach(&self.vtep, self.dev, &self.ext, self.udp.is_some());
        match self.peers.put(lease, &self.config, &self.lease.key) {
            Update::Same => {}
            Update::Changed { old, new } => {
                self.udp_dirty = true;
                let Some(reach) = reach else {
                    return;
                };
                let before = old.map(|p| plan::of(&reach, &p)).unwrap_or_default();
                plan::diff(&before, &plan::of(&reach, &new), &mut self.pending);
                if old.is_some() {
                    crate::info!("lease {} changed: its peer is reprogrammed", lease.key);
                }
            }
            Update::Invalid { why, first, old } => {
                if first {
                    crate::warn!("ignoring lease {}: {why}", lease.key);
                }
                if let Some(old) = old {
                    self.udp_dirty = true;
                    if let Some(reach) = reach {
                        plan::remove(&plan::of(&reach, &old), &mut self.pending);
                    }
                }
            }
        }
    }

    /// A peer's lease is gone (or its grace period ended).
    pub fn peer_gone(&mut self, key: &SubnetKey) {
        let reach = reach(&self.vtep, self.dev, &self.ext, self.udp.is_some());
        let (gone, retried) = self.peers.remove(key, &self.config, &self.lease.key);
        if gone.is_some() {
            self.udp_dirty = true;
        }
        let Some(reach) = reach else {
            return;
        };
        if let Some(p) = gone {
            plan::remove(&plan::of(&reach, &p), &mut self.pending);
        }
        for u in retried {
            if let Update::Changed { new, .. } = u {
                crate::info!(
                    "lease {} no longer clashes with another: programmed",
                    new.key
                );
                plan::add(&plan::of(&reach, &new), &mut self.pending);
            }
        }
    }

    /// The network config as the store has it now (`None`: none at all).
    pub fn config_seen(&mut self, text: Option<&str>) {
        let Some(text) = text else {
            let msg =
                "the store has no network config any more: running on with the one read at start"
                    .to_string();
            if !self.said.contains(&msg) {
                crate::warn!("{msg}");
                self.said.push(msg);
            }
            return;
        };
        let drift = match NetConfig::parse(text) {
            Ok(c) if c == self.config => None,
            Ok(c) => Some(netconfig::describe_change(&self.config, &c)),
            Err(e) => Some(format!("it no longer parses: {e}")),
        };
        match (&drift, &self.config_drift) {
            (None, Some(_)) => {
                crate::info!("the network config in the store is again the one this agent runs")
            }
            (Some(d), before) if before.as_ref() != Some(d) => crate::error!(
                "network config changed in the store ({d}): restart flanneld to apply it; until then this agent keeps its lease and data plane as they are"
            ),
            _ => {}
        }
        self.config_drift = drift;
    }
}
