//! One device's peers as its forwarders see them: where each subnet goes,
//! which peer a message's receiver index or a handshake's key names, and
//! each peer's WireGuard state. The agent replaces the whole table when
//! the leases change ([`Published`]); a peer whose key stays keeps its sessions (and its
//! index), a peer that is gone is forgotten with everything it held.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnetwork::IpNetwork;

use super::gate::Gate;
use crate::backend::udp::relay::{Published, Reader};
use crate::backend::udp::table::{Subnets, mask4, mask6};

/// One peer as the agent gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: [u8; 32],
    pub endpoint: SocketAddr,
    /// Its allowed IPs: its lease's subnets carried by this device.
    pub subnets: Vec<IpNetwork>,
}

/// A peer's WireGuard state, kept while its key is.
pub struct Session {
    /// Our 24-bit index for it: the top bits of every receiver index it
    /// sends us.
    pub index: u32,
    /// Ours, shared by every peer of the device: what its Noise state is
    /// made from, with the peer's key.
    identity: Arc<Identity>,
    key: [u8; 32],
    /// Made when first needed (a packet for the peer, a message from it):
    /// boringtun's state is 11 KiB whatever it holds, so a node does not
    /// pay it for peers it never talks to.
    state: Mutex<Option<Box<Live>>>,
    /// `state` is made: the timers pass the others by without a lock.
    made: AtomicBool,
    /// Its handshake responses fail to authenticate (a different PSK, or
    /// a key that is not the one its lease says); cleared by a handshake
    /// that completes.
    pub failing: AtomicBool,
    /// Said in the log already (once per failing spell).
    pub said: AtomicBool,
    /// Its handshake initiations we answered since data last came.
    pub answered: AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({})", self.index)
    }
}

/// A peer's Noise state, and where it was last heard from.
pub struct Live {
    tunn: Tunn,
    /// Where an authenticated message from it last came from, when that
    /// was not its lease's endpoint (a node behind NAT without a port
    /// forward: its router picks the port), with the lease endpoint it was
    /// heard under, so that a new lease wins: WireGuard's roaming.
    roamed: Option<(SocketAddr, SocketAddr)>,
}

impl Live {
    /// Where to send to the peer whose lease says `lease`.
    pub fn endpoint(&self, lease: SocketAddr) -> SocketAddr {
        match self.roamed {
            Some((l, at)) if l == lease => at,
            _ => lease,
        }
    }

    /// A message from the peer (lease endpoint `lease`) that came from
    /// `from` authenticated under its key and was fresh: replies and
    /// packets go there from now on.
    pub fn heard_from(&mut self, lease: SocketAddr, from: SocketAddr) {
        self.roamed = (from != lease).then_some((lease, from));
    }
}

impl std::ops::Deref for Live {
    type Target = Tunn;
    fn deref(&self) -> &Tunn {
        &self.tunn
    }
}

impl std::ops::DerefMut for Live {
    fn deref_mut(&mut self) -> &mut Tunn {
        &mut self.tunn
    }
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, Option<Box<Live>>> {
        // A forwarder that panicked while holding it left it as it was,
        // which is still a consistent state to go on from.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `f` on the Noise state, made first if need be.
    pub fn with_tunn<R>(&self, f: impl FnOnce(&mut Live) -> R) -> R {
        let mut g = self.lock();
        let t = g.get_or_insert_with(|| {
            let id = &self.identity;
            self.made.store(true, Ordering::Relaxed);
            Box::new(Live {
                tunn: Tunn::new(
                    id.secret.clone(),
                    PublicKey::from(self.key),
                    id.psk,
                    id.keepalive,
                    self.index,
                    None,
                ),
                roamed: None,
            })
        });
        f(t)
    }

    /// Its Noise state is made.
    pub fn is_live(&self) -> bool {
        self.made.load(Ordering::Relaxed)
    }

    /// The timers' turn: `f` on the Noise state if it is made; when `f`
    /// says it holds nothing any more (WireGuard gave up on the peer, its
    /// keys zeroed), it is dropped (the next message makes it afresh).
    pub fn tick(&self, f: impl FnOnce(&mut Live) -> bool) {
        if !self.made.load(Ordering::Relaxed) {
            return;
        }
        let mut g = self.lock();
        if let Some(t) = g.as_deref_mut()
            && !f(t)
        {
            *g = None;
            self.made.store(false, Ordering::Relaxed);
        }
    }
}

/// A peer at one moment.
#[derive(Debug, Clone)]
pub struct Peer {
    pub key: [u8; 32],
    pub endpoint: SocketAddr,
    pub allowed: Subnets,
    pub session: Arc<Session>,
}

/// The table at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    entries: Vec<Entry>,
    pub peers: Vec<Peer>,
    lens4: Vec<u8>,
    lens6: Vec<u8>,
    to4: HashMap<(u32, u8), usize>,
    to6: HashMap<(u128, u8), usize>,
    by_index: HashMap<u32, usize>,
    by_key: HashMap<[u8; 32], usize>,
    /// Peers by their lease endpoint's address.
    by_host: HashMap<IpAddr, Vec<usize>>,
}

impl Snapshot {
    /// The peer that carries packets for `dst`.
    pub fn route(&self, dst: IpAddr) -> Option<&Peer> {
        let i = match dst {
            IpAddr::V4(a) => self
                .lens4
                .iter()
                .find_map(|&l| self.to4.get(&(u32::from(a) & mask4(l), l)))?,
            IpAddr::V6(a) => self
                .lens6
                .iter()
                .find_map(|&l| self.to6.get(&(u128::from(a) & mask6(l), l)))?,
        };
        self.peers.get(*i)
    }

    /// The peer a receiver index of ours belongs to.
    pub fn by_receiver(&self, receiver: u32) -> Option<&Peer> {
        self.peers.get(*self.by_index.get(&(receiver >> 8))?)
    }

    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Peer> {
        self.peers.get(*self.by_key.get(key)?)
    }

    /// The peers whose leases name this address (several nodes behind
    /// one NAT router share theirs).
    pub fn at_host(&self, ip: IpAddr) -> impl Iterator<Item = &Peer> {
        self.by_host
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|&i| self.peers.get(i))
    }

    /// Whether a peer's lease names this address.
    pub fn is_peer_host(&self, ip: IpAddr) -> bool {
        self.by_host.contains_key(&ip)
    }
}

/// What every peer's Noise state is made with.
pub struct Identity {
    pub secret: StaticSecret,
    pub public: PublicKey,
    pub psk: Option<[u8; 32]>,
    pub keepalive: Option<u16>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identity({})",
            super::key::encode(self.public.as_bytes())
        )
    }
}

/// Where peer indices start: random, so that after a restart a peer's
/// messages under our old indices name no new session.
fn random_start() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    match read {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::from(d.subsec_nanos())),
    }
}

/// The table the agent writes and the forwarders read.
#[derive(Debug)]
pub struct Table {
    pub identity: Arc<Identity>,
    pub gate: Gate,
    /// This node's subnets on this device: the only destinations a
    /// peer's packets may have.
    pub own: Subnets,
    current: Arc<Published<Snapshot>>,
    /// The next peer index to hand out (24 bits, never 0).
    next: AtomicU64,
}

impl Table {
    pub fn new(identity: Identity, own: impl IntoIterator<Item = IpNetwork>) -> Table {
        let mut subnets = Subnets::default();
        for n in own {
            subnets.add(n);
        }
        Table {
            gate: Gate::new(&identity.public),
            identity: Arc::new(identity),
            own: subnets,
            current: Arc::new(Published::new(Snapshot::default())),
            next: AtomicU64::new(random_start()),
        }
    }

    /// Noise state for a new peer with `key`, under a fresh index.
    fn session_for(&self, key: &[u8; 32]) -> Arc<Session> {
        // Wrapping past 2^24 reuses indices of peers long gone; a stale
        // message to one fails to authenticate.
        let index = (self.next.fetch_add(1, Ordering::Relaxed) % ((1 << 24) - 1)) as u32 + 1;
        Arc::new(Session {
            index,
            identity: self.identity.clone(),
            key: *key,
            state: Mutex::new(None),
            made: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            said: AtomicBool::new(false),
            answered: AtomicU64::new(0),
        })
    }

    /// Replaces the peers when `entries` differ; a key seen before keeps
    /// its session. Entries with our own key or a key seen twice are
    /// skipped (the agent has refused such leases already).
    pub fn set(&self, mut entries: Vec<Entry>) {
        entries.sort_by_key(|e| e.key);
        self.current
            .update(|cur| (cur.entries != entries).then(|| self.build(cur, entries)));
    }

    fn build(&self, cur: &Snapshot, entries: Vec<Entry>) -> Snapshot {
        let old: HashMap<[u8; 32], Arc<Session>> = cur
            .peers
            .iter()
            .map(|p| (p.key, p.session.clone()))
            .collect();
        let mut s = Snapshot::default();
        for e in &entries {
            if e.key == *self.identity.public.as_bytes() || s.by_key.contains_key(&e.key) {
                continue;
            }
            let session = old
                .get(&e.key)
                .cloned()
                .unwrap_or_else(|| self.session_for(&e.key));
            let i = s.peers.len();
            let mut allowed = Subnets::default();
            for n in &e.subnets {
                allowed.add(*n);
                match n {
                    IpNetwork::V4(n) => {
                        s.to4.insert((u32::from(n.network()), n.prefix()), i);
                        s.lens4.push(n.prefix());
                    }
                    IpNetwork::V6(n) => {
                        s.to6.insert((u128::from(n.network()), n.prefix()), i);
                        s.lens6.push(n.prefix());
                    }
                }
            }
            s.by_index.insert(session.index, i);
            s.by_key.insert(e.key, i);
            s.by_host.entry(e.endpoint.ip()).or_default().push(i);
            s.peers.push(Peer {
                key: e.key,
                endpoint: e.endpoint,
                allowed,
                session,
            });
        }
        for lens in [&mut s.lens4, &mut s.lens6] {
            lens.sort_unstable_by(|a, b| b.cmp(a));
            lens.dedup();
        }
        s.entries = entries;
        s
    }

    /// The table now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.get()
    }

    pub fn reader(&self) -> Reader<Snapshot> {
        self.current.reader()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(seed: u8) -> Identity {
        let secret = StaticSecret::from([seed; 32]);
        let public = PublicKey::from(&secret);
        Identity {
            secret,
            public,
            psk: None,
            keepalive: None,
        }
    }

    fn entry(key: u8, subnet: &str, ep: &str) -> Entry {
        let public = PublicKey::from(&StaticSecret::from([key; 32]));
        Entry {
            key: *public.as_bytes(),
            endpoint: ep.parse().unwrap(),
            subnets: vec![subnet.parse().unwrap()],
        }
    }

    #[test]
    fn a_kept_key_keeps_its_session_and_a_removed_one_is_forgotten() {
        let t = Table::new(identity(1), ["10.244.1.0/24".parse().unwrap()]);
        t.set(vec![
            entry(2, "10.244.2.0/24", "192.168.1.2:51820"),
            entry(3, "10.244.3.0/24", "192.168.1.3:51820"),
        ]);
        let s = t.snapshot();
        let p2 = s.route("10.244.2.9".parse().unwrap()).unwrap();
        let idx2 = p2.session.index;
        assert_eq!(s.by_receiver(idx2 << 8 | 5).unwrap().key, p2.key);
        let gone = s.route("10.244.3.9".parse().unwrap()).unwrap().clone();
        assert!(s.route("10.244.4.1".parse().unwrap()).is_none());
        // Peer 3 leaves; peer 2 moves to another address.
        t.set(vec![entry(2, "10.244.2.0/24", "192.168.1.22:51820")]);
        let s = t.snapshot();
        let p2 = s.route("10.244.2.9".parse().unwrap()).unwrap();
        assert_eq!(p2.session.index, idx2);
        assert_eq!(p2.endpoint, "192.168.1.22:51820".parse().unwrap());
        assert!(s.by_receiver(gone.session.index << 8).is_none());
        assert!(s.by_key(&gone.key).is_none());
        assert!(s.route("10.244.3.9".parse().unwrap()).is_none());
    }

    #[test]
    fn our_own_key_is_never_a_peer() {
        let me = identity(1);
        let mine = *me.public.as_bytes();
        let t = Table::new(me, []);
        t.set(vec![Entry {
            key: mine,
            endpoint: "192.168.1.1:51820".parse().unwrap(),
            subnets: vec!["10.244.1.0/24".parse().unwrap()],
        }]);
        assert!(t.snapshot().peers.is_empty());
    }
}
