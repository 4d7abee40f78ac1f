//! Getting this node's lease: keep the one it has, else the subnet it had
//! before a restart, else a random free one. A lost race is retried.

use std::io::Read;
use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::netconfig::{Family, NetConfig};
use crate::store::{Acquire, Records, StoreError, Written};

/// Upstream's lease time.
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
const RACE_RETRIES: usize = 10;
/// Upstream picks at random among the first this many free subnets.
const CANDIDATES: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("out of subnets: every subnet of {0} is leased")]
    Exhausted(String),
    #[error("lost the race for a subnet {RACE_RETRIES} times in a row")]
    Contended,
    /// Not yet possible: the store said why, and waited a while for it.
    #[error("{0}")]
    Waiting(String),
}

fn random_index(n: usize) -> usize {
    let mut b = [0u8; 8];
    let seeded = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    let v = if seeded {
        u64::from_le_bytes(b)
    } else {
        u64::from(std::process::id())
    };
    usize::try_from(v % n.max(1) as u64).unwrap_or(0)
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.contains(b.ip()) || b.contains(a.ip())
}

fn pick(family: &Family, taken: &[IpNetwork]) -> Option<IpNetwork> {
    let free: Vec<IpNetwork> = family
        .subnets()
        .filter(|s| !taken.iter().any(|t| overlaps(s, t)))
        .take(CANDIDATES)
        .collect();
    (!free.is_empty()).then(|| free[random_index(free.len())])
}

fn fits(config: &NetConfig, key: &SubnetKey) -> bool {
    let ok = |fam: &Option<Family>, sn: &Option<IpNetwork>| match (fam, sn) {
        (Some(f), Some(s)) => f.fits(s),
        (None, None) => true,
        _ => false,
    };
    ok(&config.ipv4, &key.ipv4) && ok(&config.ipv6, &key.ipv6)
}

fn same_node(a: &LeaseAttrs, b: &LeaseAttrs) -> bool {
    (a.public_ip.is_some() && a.public_ip == b.public_ip)
        || (a.public_ip.is_none() && a.public_ipv6.is_some() && a.public_ipv6 == b.public_ipv6)
}

/// Acquires (or renews) this node's lease in a store of records.
pub fn acquire(store: &mut dyn Records, want: &Acquire<'_>) -> Result<Lease, AllocError> {
    let (config, attrs) = (want.config, want.attrs);
    for _ in 0..RACE_RETRIES {
        let listing = store.list()?;
        let leases = &listing.leases;
        // 1. The node's own lease, if the config still allows it.
        if let Some(own) = leases.iter().find(|l| same_node(&l.attrs, attrs)) {
            if fits(config, &own.key) {
                // A reservation (no TTL) stays one.
                let ttl = own.expires.map(|_| want.ttl);
                match store.replace(own, attrs, ttl)? {
                    Written::Ours(lease) => return Ok(lease),
                    // Changed between our listing and our write: look again.
                    Written::NotOurs(_) => continue,
                }
            }
            store.delete(own)?;
            continue;
        }
        // Unreadable records are somebody's: never handed out.
        let taken = |v4: bool| -> Vec<IpNetwork> {
            let keys = leases
                .iter()
                .map(|l| l.key)
                .chain(listing.unreadable.iter().copied());
            keys.filter_map(|k| if v4 { k.ipv4 } else { k.ipv6 })
                .collect()
        };
        let (taken4, taken6) = (taken(true), taken(false));
        // 2. The subnet this node had before, if free and still valid.
        let key = match want.previous.filter(|p| fits(config, p)).filter(|p| {
            !p.ipv4
                .is_some_and(|s| taken4.iter().any(|t| overlaps(&s, t)))
                && !p
                    .ipv6
                    .is_some_and(|s| taken6.iter().any(|t| overlaps(&s, t)))
        }) {
            Some(p) => p,
            // 3. A random free one.
            None => {
                let ipv4 = match &config.ipv4 {
                    Some(f) => Some(
                        pick(f, &taken4)
                            .ok_or_else(|| AllocError::Exhausted(f.network.to_string()))?,
                    ),
                    None => None,
                };
                let ipv6 = match &config.ipv6 {
                    Some(f) => Some(
                        pick(f, &taken6)
                            .ok_or_else(|| AllocError::Exhausted(f.network.to_string()))?,
                    ),
                    None => None,
                };
                SubnetKey { ipv4, ipv6 }
            }
        };
        if let Written::Ours(lease) = store.create(&key, attrs, Some(want.ttl))? {
            return Ok(lease);
        }
        // Someone took it between our read and our write: look again.
    }
    Err(AllocError::Contended)
}
