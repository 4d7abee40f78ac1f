//! The peers the data plane serves: a compact record per valid lease
//! (what programming it takes, nothing else), the leases refused and why,
//! and peers missing from a re-list, which wait out a grace period.
//!
//! A lease is a peer only if its subnets are ones the network config could
//! have handed out (inside the Network, with its SubnetLen), it does not
//! take a subnet or a VTEP MAC already held by our lease or another peer,
//! and its backend data is well formed: a single writer to the store must
//! not be able to steer pod traffic of other nodes.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use crate::backend::{Backend, PeerData};
use crate::lease::{Lease, SubnetKey};
use crate::netconfig::{Family, NetConfig};

/// What the data plane needs of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub key: SubnetKey,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    /// What its backend publishes (VTEP MACs).
    pub data: PeerData,
}

/// Inside the Network with its SubnetLen (SubnetMin and SubnetMax bound
/// what this node takes, not what others hold, as upstream).
fn fits(family: &Option<Family>, subnet: Option<IpNetwork>, name: &str) -> Result<(), String> {
    match (family, subnet) {
        (Some(f), Some(s)) if f.holds(&s) => Ok(()),
        (Some(f), Some(s)) => Err(format!(
            "its {name} subnet {s} is not one of {} cut into /{}",
            f.network, f.subnet_len
        )),
        (None, Some(s)) => Err(format!(
            "its {name} subnet {s} is in no network of the config"
        )),
        (_, None) => Ok(()),
    }
}

/// The peer a lease describes, or why it cannot be one. Overlaps are
/// checked by [`Table`], which knows the others.
pub fn validate(lease: &Lease, config: &NetConfig, backend: &dyn Backend) -> Result<Peer, String> {
    fits(&config.ipv4, lease.key.ipv4, "IPv4")?;
    fits(&config.ipv6, lease.key.ipv6, "IPv6")?;
    let a = &lease.attrs;
    // Each subnet is reached at a public address of its own family.
    if lease.key.ipv4.is_some() && a.public_ip.is_none() {
        return Err("it has an IPv4 subnet but no PublicIP".into());
    }
    if lease.key.ipv6.is_some() && a.public_ipv6.is_none() {
        return Err("it has an IPv6 subnet but no PublicIPv6".into());
    }
    Ok(Peer {
        key: lease.key,
        public_ip: a.public_ip,
        public_ipv6: a.public_ipv6,
        data: backend.peer_data(lease)?,
    })
}

/// What an update did to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// `old` (if any) was replaced by `new`.
    Changed { old: Option<Peer>, new: Peer },
    /// Nothing the data plane cares about changed.
    Same,
    /// Refused; `first` when this reason was not reported before.
    Invalid {
        why: String,
        first: bool,
        /// The peer it had, which goes.
        old: Option<Peer>,
    },
}

/// The valid peers, indexed by subnet (and VTEP MAC), and the refused
/// leases (kept to be looked at again when what they clashed with goes).
#[derive(Debug, Default)]
pub struct Table {
    peers: BTreeMap<SubnetKey, Peer>,
    /// Peers the store's listings no longer show, and since when (kept
    /// apart: the loop looks at it every round, and it is mostly empty).
    absent: HashMap<SubnetKey, Instant>,
    by_subnet: HashMap<IpNetwork, SubnetKey>,
    by_mac: HashMap<[u8; 6], SubnetKey>,
    invalid: BTreeMap<SubnetKey, (Lease, String)>,
}

impl Table {
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn invalid(&self) -> usize {
        self.invalid.len()
    }

    pub fn absent(&self) -> usize {
        self.absent.len()
    }

    pub fn get(&self, key: &SubnetKey) -> Option<&Peer> {
        self.peers.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// The peer whose subnet is `subnet`.
    pub fn by_subnet(&self, subnet: &IpNetwork) -> Option<&Peer> {
        self.by_subnet.get(subnet).and_then(|k| self.get(k))
    }

    /// The peer whose VTEP has `mac`.
    pub fn by_mac(&self, mac: &[u8; 6]) -> Option<&Peer> {
        self.by_mac.get(mac).and_then(|k| self.get(k))
    }

    fn subnets(key: &SubnetKey) -> impl Iterator<Item = IpNetwork> {
        [key.ipv4, key.ipv6].into_iter().flatten()
    }

    /// The lease another peer (or `own`) holds that `peer` clashes with.
    fn clash(&self, peer: &Peer, own: &SubnetKey) -> Option<String> {
        for sn in Self::subnets(&peer.key) {
            if Self::subnets(own).any(|o| o == sn) {
                return Some(format!("its subnet {sn} is this node's ({own})"));
            }
            if let Some(k) = self.by_subnet.get(&sn).filter(|k| **k != peer.key) {
                return Some(format!("its subnet {sn} is held by lease {k}"));
            }
        }
        peer.data.macs().find_map(|mac| {
            self.by_mac
                .get(&mac)
                .filter(|k| **k != peer.key)
                .map(|k| format!("its VtepMAC is lease {k}'s"))
        })
    }

    fn insert(&mut self, peer: Peer) -> Option<Peer> {
        for sn in Self::subnets(&peer.key) {
            self.by_subnet.insert(sn, peer.key);
        }
        self.absent.remove(&peer.key);
        let old = self.peers.insert(peer.key, peer);
        if let Some(old) = old {
            for mac in old.data.macs() {
                self.by_mac.remove(&mac);
            }
        }
        for mac in peer.data.macs() {
            self.by_mac.insert(mac, peer.key);
        }
        old
    }

    fn take(&mut self, key: &SubnetKey) -> Option<Peer> {
        self.absent.remove(key);
        let peer = self.peers.remove(key)?;
        for sn in Self::subnets(key) {
            self.by_subnet.remove(&sn);
        }
        for mac in peer.data.macs() {
            self.by_mac.remove(&mac);
        }
        Some(peer)
    }

    /// A lease as the store has it now (never our own).
    pub fn put(
        &mut self,
        lease: &Lease,
        config: &NetConfig,
        backend: &dyn Backend,
        own: &SubnetKey,
    ) -> Update {
        let checked = validate(lease, config, backend).and_then(|p| match self.clash(&p, own) {
            Some(why) => Err(why),
            None => Ok(p),
        });
        match checked {
            Ok(peer) => {
                self.invalid.remove(&lease.key);
                match self.peers.get(&peer.key) {
                    Some(p) if *p == peer => {
                        self.absent.remove(&peer.key);
                        Update::Same
                    }
                    _ => Update::Changed {
                        old: self.insert(peer),
                        new: peer,
                    },
                }
            }
            Err(why) => {
                let first = self
                    .invalid
                    .get(&lease.key)
                    .is_none_or(|(_, before)| *before != why);
                self.invalid.insert(lease.key, (lease.clone(), why.clone()));
                Update::Invalid {
                    why,
                    first,
                    old: self.take(&lease.key),
                }
            }
        }
    }

    /// The lease is gone from the store: its peer (if any) is returned,
    /// and refused leases that clashed with it are looked at again (their
    /// updates follow).
    pub fn remove(
        &mut self,
        key: &SubnetKey,
        config: &NetConfig,
        backend: &dyn Backend,
        own: &SubnetKey,
    ) -> (Option<Peer>, Vec<Update>) {
        self.invalid.remove(key);
        let gone = self.take(key);
        let mut retried = Vec::new();
        if gone.is_some() {
            let waiting: Vec<Lease> = self.invalid.values().map(|(l, _)| l.clone()).collect();
            for lease in waiting {
                if let u @ Update::Changed { .. } = self.put(&lease, config, backend, own) {
                    retried.push(u);
                }
            }
        }
        (gone, retried)
    }

    /// After a full listing: peers it lacks are marked absent (from `now`,
    /// unless already), refused leases it lacks are forgotten.
    pub fn listed(&mut self, present: &std::collections::HashSet<SubnetKey>, now: Instant) {
        for key in self.peers.keys() {
            if !present.contains(key) {
                self.absent.entry(*key).or_insert(now);
            }
        }
        self.invalid.retain(|k, _| present.contains(k));
    }

    /// When the next absent peer's grace period ends.
    pub fn next_expiry(&self, grace: Duration) -> Option<Instant> {
        self.absent.values().min().map(|t| *t + grace)
    }

    /// Absent peers whose grace period is over.
    pub fn expired(&self, grace: Duration, now: Instant) -> Vec<SubnetKey> {
        if self.absent.is_empty() {
            return Vec::new();
        }
        self.absent
            .iter()
            .filter(|(_, t)| **t + grace <= now)
            .map(|(k, _)| *k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use serde_json::json;

    fn config() -> NetConfig {
        NetConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap()
    }

    fn lease(key: &str, ip: &str, mac: &str) -> Lease {
        Lease {
            key: SubnetKey::parse(key).unwrap(),
            attrs: LeaseAttrs {
                public_ip: Some(ip.parse().unwrap()),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: Some(json!({"VNI": 1, "VtepMAC": mac})),
                backend_v6_data: None,
            },
            expires: None,
            rev: 0,
        }
    }

    /// The vxlan backend these leases are checked by.
    fn vx(c: &NetConfig) -> Box<dyn Backend> {
        let ext = crate::iface::ExtIface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            ipv4: Some("192.168.1.1".parse().unwrap()),
            ipv6: None,
            networks: vec![],
        };
        crate::backend::new(crate::backend::Setup {
            config: c,
            ext: &ext,
            public_ip: ext.ipv4,
            public_ipv6: None,
            udp_offload: false,
            macs: (None, None),
            health: std::sync::Arc::new(crate::health::Health::new(Duration::from_secs(1))),
        })
        .unwrap()
    }

    fn own() -> SubnetKey {
        SubnetKey::parse("10.244.1.0-24").unwrap()
    }

    #[test]
    fn hostile_leases_are_refused() {
        let c = config();
        let be = vx(&c);
        let mut t = Table::default();
        let good = lease("10.244.2.0-24", "192.168.1.2", "02:00:00:00:00:02");
        assert!(matches!(
            t.put(&good, &c, &*be, &own()),
            Update::Changed { old: None, .. }
        ));
        for (bad, why) in [
            (
                lease("10.244.0.0-16", "192.168.1.9", "02:00:00:00:00:09"),
                "not one of",
            ),
            (
                lease("10.244.79.128-25", "192.168.1.9", "02:00:00:00:00:09"),
                "not one of",
            ),
            (
                lease("10.245.3.0-24", "192.168.1.9", "02:00:00:00:00:09"),
                "not one of",
            ),
            (lease("10.244.3.0-24", "192.168.1.9", "zz"), "not a MAC"),
            (
                lease("10.244.3.0-24", "192.168.1.9", "01:00:5e:00:00:01"),
                "unicast",
            ),
            (
                lease("10.244.3.0-24", "192.168.1.9", "02:00:00:00:00:02"),
                "VtepMAC is lease 10.244.2.0-24's",
            ),
        ] {
            match t.put(&bad, &c, &*be, &own()) {
                Update::Invalid { why: w, first, .. } => {
                    assert!(w.contains(why), "{w}");
                    assert!(first);
                }
                other => panic!("{other:?} for {bad:?}"),
            }
        }
        // Reported once while the reason stays.
        let again = lease("10.244.0.0-16", "192.168.1.9", "02:00:00:00:00:09");
        assert!(matches!(
            t.put(&again, &c, &*be, &own()),
            Update::Invalid { first: false, .. }
        ));
        assert_eq!(t.len(), 1);
        let mut other = good.clone();
        other.attrs.backend_type = "host-gw".into();
        other.key = SubnetKey::parse("10.244.4.0-24").unwrap();
        assert!(matches!(
            t.put(&other, &c, &*be, &own()),
            Update::Invalid { .. }
        ));
    }

    #[test]
    fn a_refused_lease_is_looked_at_again_when_its_clash_goes() {
        let c = config();
        let be = vx(&c);
        let mut t = Table::default();
        let a = lease("10.244.2.0-24", "192.168.1.2", "02:00:00:00:00:02");
        let b = lease("10.244.3.0-24", "192.168.1.3", "02:00:00:00:00:02");
        t.put(&a, &c, &*be, &own());
        assert!(matches!(
            t.put(&b, &c, &*be, &own()),
            Update::Invalid { .. }
        ));
        assert_eq!(t.invalid(), 1);
        let (gone, retried) = t.remove(&a.key, &c, &*be, &own());
        assert_eq!(gone.map(|p| p.key), Some(a.key));
        assert_eq!(retried.len(), 1);
        assert_eq!(t.invalid(), 0);
        assert!(t.get(&b.key).is_some());
        let (gone, _) = t.remove(&a.key, &c, &*be, &own());
        assert!(gone.is_none(), "removing twice is harmless");
    }

    #[test]
    fn our_own_subnet_is_never_a_peer() {
        let c = config();
        let be = vx(&c);
        let mut t = Table::default();
        let mine = lease("10.244.1.0-24", "192.168.1.9", "02:00:00:00:00:09");
        assert!(matches!(
            t.put(&mine, &c, &*be, &own()),
            Update::Invalid { .. }
        ));
    }

    #[test]
    fn a_changed_lease_reports_the_old_peer_and_the_same_one_nothing() {
        let c = config();
        let be = vx(&c);
        let mut t = Table::default();
        let a = lease("10.244.2.0-24", "192.168.1.2", "02:00:00:00:00:02");
        t.put(&a, &c, &*be, &own());
        assert_eq!(t.put(&a, &c, &*be, &own()), Update::Same);
        let moved = lease("10.244.2.0-24", "192.168.1.22", "02:00:00:00:00:22");
        match t.put(&moved, &c, &*be, &own()) {
            Update::Changed { old: Some(o), new } => {
                assert_eq!(o.public_ip, Some("192.168.1.2".parse().unwrap()));
                assert_eq!(
                    new.data,
                    PeerData::Vxlan {
                        v4: Some([2, 0, 0, 0, 0, 0x22]),
                        v6: None
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        // The old MAC is free again.
        let reuse = lease("10.244.3.0-24", "192.168.1.3", "02:00:00:00:00:02");
        assert!(matches!(
            t.put(&reuse, &c, &*be, &own()),
            Update::Changed { .. }
        ));
        // A lease turning bad takes its peer away.
        let broken = lease("10.244.3.0-24", "192.168.1.3", "zz");
        assert!(matches!(
            t.put(&broken, &c, &*be, &own()),
            Update::Invalid { old: Some(_), .. }
        ));
    }

    #[test]
    fn absence_from_a_listing_waits_out_the_grace_period() {
        let c = config();
        let be = vx(&c);
        let mut t = Table::default();
        let a = lease("10.244.2.0-24", "192.168.1.2", "02:00:00:00:00:02");
        let b = lease("10.244.3.0-24", "192.168.1.3", "02:00:00:00:00:03");
        t.put(&a, &c, &*be, &own());
        t.put(&b, &c, &*be, &own());
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        t.listed(&[a.key].into_iter().collect(), t0);
        assert_eq!(t.absent(), 1);
        assert_eq!(t.next_expiry(grace), Some(t0 + grace));
        assert!(t.expired(grace, t0 + Duration::from_secs(59)).is_empty());
        // A later listing does not restart the clock.
        t.listed(&[a.key].into_iter().collect(), t0 + Duration::from_secs(30));
        assert_eq!(t.expired(grace, t0 + grace), [b.key]);
        // It came back: no longer absent.
        t.put(&b, &c, &*be, &own());
        assert_eq!(t.absent(), 0);
        assert_eq!(t.next_expiry(grace), None);
    }
}
