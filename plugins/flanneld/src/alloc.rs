//! Getting this node's lease: keep the one it has, else the subnet it had
//! before a restart, else a random free one. A lost race is retried.

use std::io::Read;
use std::time::{Duration, SystemTime};

use ipnetwork::IpNetwork;

use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::netconfig::{Family, NetConfig};
use crate::store::{Store, StoreError};

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

/// Acquires (or renews) this node's lease. `previous` is the subnet pair
/// from the subnet.env of an earlier run.
pub fn acquire(
    store: &mut dyn Store,
    config: &NetConfig,
    attrs: &LeaseAttrs,
    previous: Option<SubnetKey>,
    lease_ttl: Duration,
) -> Result<Lease, AllocError> {
    for _ in 0..RACE_RETRIES {
        let leases = store.leases()?;
        // 1. The node's own lease, if the config still allows it.
        if let Some(own) = leases.iter().find(|l| same_node(&l.attrs, attrs)) {
            if fits(config, &own.key) {
                // A reservation (no TTL) stays one.
                let ttl = own.expires.map(|_| lease_ttl);
                store.update(&own.key, attrs, ttl)?;
                let expires = ttl.map(|t| SystemTime::now() + t);
                return Ok(Lease {
                    key: own.key,
                    attrs: attrs.clone(),
                    expires,
                });
            }
            store.delete(&own.key)?;
            continue;
        }
        let taken4: Vec<IpNetwork> = leases.iter().filter_map(|l| l.key.ipv4).collect();
        let taken6: Vec<IpNetwork> = leases.iter().filter_map(|l| l.key.ipv6).collect();
        // 2. The subnet this node had before, if free and still valid.
        let key = match previous.filter(|p| fits(config, p)).filter(|p| {
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
        if store.create(&key, attrs, Some(lease_ttl))? {
            return Ok(Lease {
                key,
                attrs: attrs.clone(),
                expires: Some(SystemTime::now() + lease_ttl),
            });
        }
        // Someone took it between our read and our write: look again.
    }
    Err(AllocError::Contended)
}
