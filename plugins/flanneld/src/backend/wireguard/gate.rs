//! A device's gate for handshake initiations, WireGuard's defence against
//! floods of them: an initiation's first MAC must be made for our key
//! (checked before any key exchange is spent on it); past
//! [`INITIATIONS_PER_SECOND`] its sender must prove its address with a
//! cookie; and a proven address still gets only [`SOURCE_PER_SECOND`] key
//! exchanges a second while the flood lasts, as the kernel module limits
//! each source (a cookie proves an address, it does not make it a friend:
//! without this limit one host could replay a cookie-carrying initiation
//! and spend a core on key exchanges).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519::PublicKey;

/// Handshake initiations a device takes a second before it asks their
/// senders to prove their address first (a cookie reply): far above what
/// rekeys (one per peer every two minutes) and restarting peers send, far
/// below what the key exchanges cost a core.
pub const INITIATIONS_PER_SECOND: u64 = 1000;

/// Initiations a second one proven address (an IPv4 address, an IPv6 /64)
/// may have key exchanges for while the device is under load, after a
/// burst of [`SOURCE_BURST`]: the kernel module's figures. A real peer
/// sends one every 5 s at most.
pub const SOURCE_PER_SECOND: u32 = 20;
pub const SOURCE_BURST: u32 = 5;
/// Addresses tracked at once under load; a new one past this is refused
/// until the table is pruned (each second: addresses quiet for a second).
const SOURCES_MAX: usize = 4096;

/// What to do with an initiation instead of a key exchange.
#[derive(Debug)]
pub enum Refused<'a> {
    /// Not made for our key (or not an initiation at all).
    BadMac,
    /// Under load, without a valid cookie: send this cookie reply.
    Cookie(&'a [u8]),
    /// Under load, with a cookie, from an address past its share.
    SourceLimited,
}

/// A proven address's allowance, as time credit: each initiation costs
/// 1/[`SOURCE_PER_SECOND`] s of it; it refills with time up to a burst.
struct Bucket {
    credit: Duration,
    last: Instant,
}

const COST: Duration = Duration::from_nanos(1_000_000_000 / SOURCE_PER_SECOND as u64);

fn most() -> Duration {
    COST * SOURCE_BURST
}

pub struct Gate {
    limiter: RateLimiter,
    /// Initiations with a good first MAC since `since`.
    seen: AtomicU64,
    since: Mutex<Instant>,
    sources: Mutex<HashMap<u64, Bucket>>,
}

impl Gate {
    pub fn new(public: &PublicKey) -> Gate {
        Gate {
            limiter: RateLimiter::new(public, INITIATIONS_PER_SECOND),
            seen: AtomicU64::new(0),
            since: Mutex::new(Instant::now()),
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// The initiation `datagram` from `from` may have its key exchange
    /// (Ok), or is refused; `reply` holds a cookie reply.
    pub fn check<'a>(
        &self,
        from: Option<SocketAddr>,
        datagram: &[u8],
        reply: &'a mut [u8],
    ) -> Result<(), Refused<'a>> {
        let from = from.map(|a| a.ip());
        match self.limiter.verify_packet(from, datagram, reply) {
            Ok(Packet::HandshakeInit(_)) => {}
            Ok(_) => return Err(Refused::BadMac),
            Err(TunnResult::WriteToNetwork(cookie)) => {
                self.seen.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Cookie(cookie));
            }
            // Under load with no address to send a cookie to (not a
            // datagram from the network).
            Err(TunnResult::Err(WireGuardError::UnderLoad)) => return Err(Refused::SourceLimited),
            Err(_) => return Err(Refused::BadMac),
        }
        let seen = self.seen.fetch_add(1, Ordering::Relaxed);
        match from {
            Some(ip) if seen >= INITIATIONS_PER_SECOND && !self.allow(ip, Instant::now()) => {
                Err(Refused::SourceLimited)
            }
            _ => Ok(()),
        }
    }

    /// Takes one initiation's cost from `ip`'s allowance, if it has it.
    fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut sources = match self.sources.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let full = sources.len() >= SOURCES_MAX;
        let b = match sources.entry(source(ip)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if full => return false,
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Bucket {
                credit: most(),
                last: now,
            }),
        };
        b.credit = (b.credit + now.saturating_duration_since(b.last)).min(most());
        b.last = now;
        match b.credit.checked_sub(COST) {
            Some(left) => {
                b.credit = left;
                true
            }
            None => false,
        }
    }

    /// Starts a new second's count and forgets addresses quiet for a
    /// second (once a second at most, however often it is called).
    pub fn new_second(&self) {
        self.limiter.reset_count();
        self.new_second_at(Instant::now());
    }

    fn new_second_at(&self, now: Instant) {
        {
            let mut since = match self.since.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            if now.saturating_duration_since(*since) < Duration::from_secs(1) {
                return;
            }
            *since = now;
        }
        self.seen.store(0, Ordering::Relaxed);
        let mut sources = match self.sources.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        sources.retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(1));
    }
}

/// The share of a receiving thread's time that handshake messages (and
/// anything else that is not data) may take, per lane: past it they are
/// dropped unread until time gives it back, so that a flood larger than
/// the thread can answer, even with cookie replies, leaves the data that
/// shares its socket most of the thread. One lane is for messages from a
/// peer's address, one for the rest: a flood from strangers does not take
/// the peers' handshakes with it.
const SHARE: i64 = 4;
/// Most credit a lane saves up while quiet (a burst: 5,000 peers'
/// handshake responses after a restart take some 300 ms of work).
const SAVED_MOST: i64 = 50_000_000;

/// One lane's credit, in nanoseconds of handling time (below zero after a
/// message that took more than was left).
#[derive(Debug)]
pub struct Budget {
    credit: i64,
    last: Instant,
}

impl Budget {
    pub fn new(now: Instant) -> Budget {
        Budget {
            credit: SAVED_MOST,
            last: now,
        }
    }

    /// Whether a message may be handled at `now`.
    pub fn allows(&mut self, now: Instant) -> bool {
        let gone = now.saturating_duration_since(self.last).as_nanos();
        self.last = now;
        let earned = i64::try_from(gone).unwrap_or(i64::MAX) / SHARE;
        self.credit = self.credit.saturating_add(earned).min(SAVED_MOST);
        self.credit > 0
    }

    /// Handling a message took `took`.
    pub fn spend(&mut self, took: Duration) {
        let took = i64::try_from(took.as_nanos()).unwrap_or(i64::MAX);
        self.credit = self.credit.saturating_sub(took);
    }
}

/// The key an address is limited under: an IPv4 address, or an IPv6 /64
/// (one host may hold all of one).
fn source(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => u64::from(u32::from(a)) | 1 << 63,
        IpAddr::V6(a) => (u128::from(a) >> 64) as u64 & !(1 << 63),
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proven_address_gets_a_burst_then_its_rate() {
        let gate = Gate::new(&PublicKey::from([9u8; 32]));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        let burst = (0..20).filter(|_| gate.allow(ip, t0)).count();
        assert_eq!(burst, SOURCE_BURST as usize);
        // One more each 1/20 s; another address has its own.
        assert!(!gate.allow(ip, t0 + COST / 2));
        assert!(gate.allow(ip, t0 + COST));
        assert!(gate.allow("192.0.2.8".parse().unwrap(), t0 + COST));
        // A quiet second refills the burst, no more.
        let later = t0 + Duration::from_secs(10);
        let burst = (0..20).filter(|_| gate.allow(ip, later)).count();
        assert_eq!(burst, SOURCE_BURST as usize);
    }

    #[test]
    fn addresses_are_forgotten_after_a_quiet_second_and_never_more_than_the_table_holds() {
        let gate = Gate::new(&PublicKey::from([9u8; 32]));
        let t0 = Instant::now();
        let ip = |i: usize| IpAddr::from((i as u32 + 1).to_be_bytes());
        for i in 0..SOURCES_MAX {
            assert!(gate.allow(ip(i), t0));
        }
        // Full: a new address is refused, a known one still has its share.
        assert!(!gate.allow(ip(SOURCES_MAX), t0));
        assert!(gate.allow(ip(0), t0));
        gate.seen.store(INITIATIONS_PER_SECOND, Ordering::Relaxed);
        // Within the second nothing is forgotten; a second on, all is.
        gate.new_second_at(t0 + Duration::from_millis(500));
        assert_eq!(gate.sources.lock().unwrap().len(), SOURCES_MAX);
        gate.new_second_at(t0 + Duration::from_secs(2));
        assert!(gate.sources.lock().unwrap().is_empty());
        assert_eq!(gate.seen.load(Ordering::Relaxed), 0);
        assert!(gate.allow(ip(SOURCES_MAX), t0 + Duration::from_secs(2)));
    }

    #[test]
    fn handshake_work_takes_at_most_its_share_of_a_thread() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        // The saved burst, then nothing until time gives some back.
        assert!(b.allows(t0));
        b.spend(Duration::from_millis(60));
        assert!(!b.allows(t0));
        assert!(!b.allows(t0 + Duration::from_millis(40)));
        // 10 ms of work is earned back in 40 ms more.
        assert!(b.allows(t0 + Duration::from_millis(80)));
        // Quiet for a long time: the burst, not more.
        let later = t0 + Duration::from_secs(60);
        assert!(b.allows(later));
        b.spend(Duration::from_millis(50));
        assert!(!b.allows(later));
    }

    #[test]
    fn an_ipv6_host_is_limited_by_its_64_and_the_families_do_not_meet() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source(a), source(b));
        assert_ne!(source(a), source(c));
        let v4: IpAddr = "0.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        assert_ne!(source(v4), source(v6));
    }
}
