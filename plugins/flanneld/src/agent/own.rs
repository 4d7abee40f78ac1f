//! Our own lease in the store: ours, held by another node, or to be
//! written again (renewed before it expires, re-created when someone
//! deleted it, retried with backoff when a write failed). Every write is a
//! request to the store's task (`store::task`) that names the revision we
//! last saw; the answer comes back as an event.
//!
//! Ownership, not existence: the lease under our key must name this node
//! (addresses and backend data), at the revision we know. Another node's
//! lease there is never overwritten; the key is taken back only by the
//! store's atomic create-if-absent once it is free again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use crate::health::Health;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::store::Written;
use crate::store::task::{Reply, Request};

/// The first retry of a failed write, doubled up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
pub const MAX_RETRY: Duration = Duration::from_secs(30);
/// A write unanswered this long makes the agent not ready (a store that
/// hangs rather than refuses).
const SLOW: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq)]
enum State {
    Held,
    /// Another node's lease is under our key (described for the log).
    Conflict(String),
    /// To be written at `at`: renewed (`renew`), or re-created.
    Retry {
        at: Instant,
        backoff: Duration,
        renew: bool,
    },
}

#[derive(Debug)]
pub struct Own {
    /// As last written or seen (its revision, its expiry).
    lease: Lease,
    /// What this node publishes.
    attrs: LeaseAttrs,
    ttl: Duration,
    /// Renewed this long before it expires.
    margin: Duration,
    state: State,
    /// A request is with the store, since then.
    asked: Option<Instant>,
    /// The last write failed, and why (until one succeeds).
    failing: Option<String>,
    health: Arc<Health>,
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

fn later(backoff: Duration, renew: bool) -> State {
    State::Retry {
        at: Instant::now() + backoff,
        backoff: (backoff * 2).min(MAX_RETRY),
        renew,
    }
}

impl Own {
    pub fn new(lease: Lease, ttl: Duration, margin: Duration, health: Arc<Health>) -> Own {
        Own {
            attrs: lease.attrs.clone(),
            lease,
            ttl,
            margin,
            state: State::Held,
            asked: None,
            failing: None,
            health,
        }
    }

    pub fn key(&self) -> SubnetKey {
        self.lease.key
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self.state, State::Conflict(_))
    }

    /// Why the lease is not settled (ours, in place, the last write
    /// through), for `/readyz`.
    pub fn trouble(&self) -> Option<String> {
        if let Some(why) = &self.failing {
            return Some(why.clone());
        }
        if let Some(t) = self.asked.map(|t| t.elapsed()).filter(|t| *t >= SLOW) {
            return Some(format!(
                "no answer from the store for {} s to a write of this node's lease {}",
                t.as_secs(),
                self.lease.key
            ));
        }
        match &self.state {
            State::Held => None,
            State::Conflict(theirs) => Some(format!(
                "this node's lease {} is held by another node ({theirs})",
                self.lease.key
            )),
            State::Retry { renew: false, .. } => Some(format!(
                "this node's lease {} is gone from the store; re-creating it",
                self.lease.key
            )),
            State::Retry { .. } => None,
        }
    }

    /// The lease's time to live for a write: a reservation stays one.
    fn write_ttl(&self) -> Option<Duration> {
        self.lease.expires.map(|_| self.ttl)
    }

    /// When the next write is due, seen at `now` (`None`: none, or one is
    /// in flight).
    pub fn due_at(&self, now: Instant) -> Option<Instant> {
        if self.asked.is_some() {
            return None;
        }
        match &self.state {
            State::Held => {
                let expires = self.lease.expires?;
                let left = expires
                    .checked_sub(self.margin)
                    .and_then(|t| t.duration_since(SystemTime::now()).ok())
                    .unwrap_or(Duration::ZERO);
                Some(now + left)
            }
            State::Retry { at, .. } => Some(*at),
            State::Conflict(_) => None,
        }
    }

    /// The write that is due at `now`, if any, marked as in flight.
    pub fn due(&mut self, now: Instant) -> Option<Request> {
        if self.due_at(now).is_none_or(|t| t > now) {
            return None;
        }
        let renew = match self.state {
            State::Held => true,
            State::Retry { renew, .. } => renew,
            State::Conflict(_) => return None,
        };
        self.asked = Some(now);
        let ttl = self.write_ttl();
        Some(if renew {
            Request::Renew {
                lease: self.lease.clone(),
                attrs: self.attrs.clone(),
                ttl,
            }
        } else {
            Request::Recreate {
                lease: Lease {
                    attrs: self.attrs.clone(),
                    ..self.lease.clone()
                },
                ttl,
            }
        })
    }

    /// The store's answer to our request.
    pub fn replied(&mut self, reply: Reply) {
        self.asked = None;
        let what = reply.request.verb();
        let key = self.lease.key;
        let backoff = match self.state {
            State::Retry { backoff, .. } => backoff,
            _ => FIRST_RETRY,
        };
        let renew = matches!(reply.request, Request::Renew { .. });
        match reply.result {
            Ok(Written::Ours(lease)) => {
                if self.failing.take().is_some() || self.state != State::Held {
                    crate::info!("lease {key}: {what}d");
                } else {
                    crate::info!("renewed lease {key}");
                }
                self.lease = lease;
                self.state = State::Held;
            }
            Ok(Written::NotOurs(now)) => {
                self.failing = None;
                match &now {
                    // Taken meanwhile by someone else: its holder is named.
                    Some(l) if l.attrs != self.attrs => self.seen(now.as_ref()),
                    // Ours after all (rewritten as we would): adopted.
                    Some(_) => self.seen(now.as_ref()),
                    None if renew => self.seen(None),
                    // The key is not free (a record that cannot be read).
                    None => {
                        crate::error!(
                            "cannot re-create lease {key}: the key is not free (looked at again in {} s)",
                            backoff.as_secs()
                        );
                        self.state = later(backoff, false);
                    }
                }
            }
            Err(e) => {
                self.health
                    .metrics
                    .store_errors
                    .fetch_add(1, Ordering::Relaxed);
                let msg = format!("cannot {what} lease {key}: {e}");
                crate::error!("{msg} (retrying in {} s)", backoff.as_secs());
                self.failing = Some(msg);
                self.state = later(backoff, renew);
            }
        }
    }

    /// What the store holds under our key now (`None`: nothing), as its
    /// feed or an answer reports it.
    pub fn seen(&mut self, lease: Option<&Lease>) {
        let key = self.lease.key;
        match lease {
            // The lease names this node as we write it: ours. A newer
            // revision (rewritten as we would) is adopted; an older one
            // is an echo of a write we already know.
            Some(l) if l.attrs == self.attrs => {
                if l.rev > self.lease.rev {
                    self.lease.rev = l.rev;
                    self.lease.expires = l.expires.map(|_| {
                        self.lease
                            .expires
                            .unwrap_or_else(|| SystemTime::now() + self.ttl)
                    });
                }
                match self.state {
                    State::Held | State::Retry { renew: true, .. } => {}
                    _ => {
                        crate::info!("lease {key} is this node's again");
                        self.state = State::Held;
                    }
                }
            }
            Some(l) => {
                let theirs = addresses(&l.attrs);
                if self.state != State::Conflict(theirs.clone()) {
                    crate::error!(
                        "lease {key} is held by another node ({theirs}); this node is {}: not overwriting it. Peers now send this node's pod traffic there; the key is taken back when it is free",
                        addresses(&self.attrs)
                    );
                    self.health
                        .metrics
                        .lease_conflicts
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.state = State::Conflict(theirs);
            }
            None => {
                if !matches!(self.state, State::Retry { renew: false, .. }) {
                    crate::warn!("lease {key} is gone from the store; re-creating it");
                    self.state = State::Retry {
                        at: Instant::now(),
                        backoff: FIRST_RETRY,
                        renew: false,
                    };
                }
            }
        }
    }
}
