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
    /// When it is to be renewed (`None`: a reservation, never).
    renew_at: Option<Instant>,
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

/// `margin` before `lease` expires, on the monotonic clock.
fn renew_at(lease: &Lease, margin: Duration) -> Option<Instant> {
    let expires = lease.expires?;
    let left = expires
        .checked_sub(margin)
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .unwrap_or(Duration::ZERO);
    Some(Instant::now() + left)
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
            renew_at: renew_at(&lease, margin),
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

    pub fn lease(&self) -> &Lease {
        &self.lease
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

    /// When the next write is due (`None`: none, or one is in flight).
    pub fn due_at(&self) -> Option<Instant> {
        if self.asked.is_some() {
            return None;
        }
        match &self.state {
            State::Held => self.renew_at,
            State::Retry { at, .. } => Some(*at),
            State::Conflict(_) => None,
        }
    }

    /// The write that is due at `now`, if any, marked as in flight.
    pub fn due(&mut self, now: Instant) -> Option<Request> {
        if self.due_at().is_none_or(|t| t > now) {
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
                self.renew_at = renew_at(&lease, self.margin);
                self.lease = lease;
                self.state = State::Held;
            }
            Ok(Written::NotOurs(now)) => {
                self.failing = None;
                match now {
                    // Rewritten as we would write it (by an earlier run of
                    // this node, say): ours, at the revision the store has
                    // now; written again at once.
                    Some(l) if l.attrs == self.attrs => {
                        self.lease.rev = l.rev;
                        self.seen(Some(&l));
                        self.state = State::Retry {
                            at: Instant::now(),
                            backoff,
                            renew: true,
                        };
                    }
                    // Taken meanwhile by someone else: its holder is named.
                    Some(l) => self.seen(Some(&l)),
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
            // The lease names this node as we write it: ours. (Its
            // revision is learnt from the store's answer to our next
            // write: the feed may report an older version after a newer
            // one was written.)
            Some(l) if l.attrs == self.attrs => match self.state {
                State::Held | State::Retry { renew: true, .. } => {}
                _ => {
                    crate::info!("lease {key} is this node's again");
                    self.state = State::Held;
                }
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(ip: &str) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Some(ip.parse().unwrap()),
            public_ipv6: None,
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    const TTL: Duration = Duration::from_secs(3600);
    const MARGIN: Duration = Duration::from_secs(600);

    /// Ours, written at revision 7, due for renewal in `in_secs`.
    fn own(in_secs: u64) -> Own {
        let lease = Lease {
            key: SubnetKey::parse("10.244.1.0-24").unwrap(),
            attrs: attrs("192.0.2.1"),
            expires: Some(SystemTime::now() + MARGIN + Duration::from_secs(in_secs)),
            rev: 7,
        };
        Own::new(
            lease,
            TTL,
            MARGIN,
            Arc::new(Health::new(Duration::from_secs(1))),
        )
    }

    fn reply(request: Request, result: Result<Written, String>) -> Reply {
        Reply {
            request,
            result,
            took: Duration::ZERO,
        }
    }

    #[test]
    fn a_renewal_is_due_before_expiry_and_one_at_a_time() {
        let mut o = own(100);
        let now = Instant::now();
        assert!(o.due(now).is_none());
        let at = o.due_at().unwrap();
        assert!(at > now + Duration::from_secs(99) && at <= now + Duration::from_secs(100));
        let later = now + Duration::from_secs(101);
        let Some(Request::Renew { lease, ttl, .. }) = o.due(later) else {
            panic!("no renewal");
        };
        assert_eq!((lease.rev, ttl), (7, Some(TTL)));
        assert!(
            o.due(later).is_none() && o.due_at().is_none(),
            "one in flight"
        );
        let mut renewed = lease.clone();
        renewed.rev = 9;
        renewed.expires = Some(SystemTime::now() + TTL);
        o.replied(reply(
            Request::Renew {
                lease,
                attrs: attrs("192.0.2.1"),
                ttl,
            },
            Ok(Written::Ours(renewed)),
        ));
        assert_eq!(o.lease.rev, 9);
        assert!(o.trouble().is_none());
        assert!(o.due(later).is_none(), "renewed: due again later");
    }

    fn renewal(o: &mut Own) -> Request {
        o.due(Instant::now()).expect("a write is due")
    }

    #[test]
    fn a_lost_compare_is_never_a_write_over_another_node() {
        let mut o = own(0);
        let r = renewal(&mut o);
        let mut theirs = o.lease.clone();
        theirs.attrs = attrs("192.0.2.99");
        theirs.rev = 8;
        o.replied(reply(r, Ok(Written::NotOurs(Some(theirs)))));
        assert!(o.is_conflict());
        assert!(
            o.due(Instant::now() + TTL).is_none(),
            "nothing is written over it"
        );
        assert!(o.trouble().unwrap().contains("192.0.2.99"));
        // The key freed: re-created (create-if-absent), not renewed.
        o.seen(None);
        assert!(matches!(renewal(&mut o), Request::Recreate { .. }));
    }

    #[test]
    fn gone_is_re_created_and_rewritten_as_ours_is_adopted() {
        let mut o = own(0);
        let r = renewal(&mut o);
        o.replied(reply(r, Ok(Written::NotOurs(None))));
        let r = renewal(&mut o);
        assert!(matches!(r, Request::Recreate { .. }));
        // Someone wrote our very lease meanwhile (an earlier run of ours):
        // adopted at its revision and written again.
        let mut again = o.lease.clone();
        again.rev = 12;
        o.replied(reply(r, Ok(Written::NotOurs(Some(again)))));
        match renewal(&mut o) {
            Request::Renew { lease, .. } => assert_eq!(lease.rev, 12),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn a_failed_write_is_retried_with_backoff_and_said() {
        let mut o = own(0);
        let r = renewal(&mut o);
        o.replied(reply(r, Err("etcd: no answer".into())));
        let why = o.trouble().unwrap();
        assert!(
            why.contains("cannot renew lease 10.244.1.0-24: etcd: no answer"),
            "{why}"
        );
        assert!(o.due(Instant::now()).is_none(), "not at once");
        let r = o.due(Instant::now() + FIRST_RETRY).unwrap();
        assert!(matches!(r, Request::Renew { .. }));
    }
}
