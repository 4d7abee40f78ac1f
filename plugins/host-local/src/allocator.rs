//! Taking one address from a range set: a requested one, or the next free
//! one round-robin from the last address taken.

use std::net::IpAddr;

use cni_types::CniError;
use cni_types::result::IpConfig;
use ipnetwork::IpNetwork;

use crate::errors;
use crate::ip;
use crate::owner::Owner;
use crate::range::{Range, RangeSet};
use crate::store::Store;

/// Allocates from `set` (index `set_idx`) for `owner`.
pub fn allocate(
    store: &mut Store,
    set_idx: usize,
    set: &RangeSet,
    owner: &Owner,
    requested: Option<IpAddr>,
) -> Result<IpConfig, CniError> {
    let (ip, range) = match requested {
        Some(ip) => (take_requested(store, set, owner, ip)?, set.range_for(ip)),
        None => {
            refuse_duplicate(store, set, owner)?;
            let ip = take_next(store, set_idx, set, owner)?;
            (ip, set.range_for(ip))
        }
    };
    let range =
        range.ok_or_else(|| errors::internal(format!("{ip} is outside range set {set}")))?;
    store
        .set_last_reserved(set_idx, ip)
        .map_err(|e| errors::io("failed to record the last reserved address", e))?;
    Ok(IpConfig {
        interface: None,
        address: IpNetwork::new(ip, range.subnet.prefix())
            .map_err(|e| errors::internal(e.to_string()))?,
        gateway: Some(range.gateway),
    })
}

fn take_requested(
    store: &mut Store,
    set: &RangeSet,
    owner: &Owner,
    ip: IpAddr,
) -> Result<IpAddr, CniError> {
    let range = set
        .range_for(ip)
        .ok_or_else(|| errors::unavailable(format!("{ip} not in range set {set}")))?;
    if let Some(reason) = range.reserved_reason(ip) {
        return Err(errors::unavailable(format!(
            "requested ip {ip} is {reason}"
        )));
    }
    let taken = store
        .reserve(ip, owner)
        .map_err(|e| errors::io(&format!("failed to reserve {ip}"), e))?;
    if !taken {
        return Err(errors::unavailable(format!(
            "requested IP address {ip} is not available in range set {set}"
        )));
    }
    Ok(ip)
}

/// The spec forbids a second ADD for one attachment; the reference plugin
/// refuses it per range set, and so do we.
fn refuse_duplicate(store: &mut Store, set: &RangeSet, owner: &Owner) -> Result<(), CniError> {
    let id = &owner.container_id;
    let mut held = store
        .held_by(id, owner.ifname.as_deref())
        .map_err(|e| errors::io("failed to read the store", e))?;
    held.extend(
        store
            .held_by(id, None)
            .map_err(|e| errors::io("failed to read the store", e))?,
    );
    match held.into_iter().find(|ip| set.contains(*ip)) {
        Some(ip) => Err(errors::duplicate(format!(
            "{ip} has been allocated to {id}, duplicate allocation is not allowed"
        ))),
        None => Ok(()),
    }
}

fn take_next(
    store: &mut Store,
    set_idx: usize,
    set: &RangeSet,
    owner: &Owner,
) -> Result<IpAddr, CniError> {
    let last = store.last_reserved(set_idx).filter(|ip| set.contains(*ip));
    for ip in Candidates::new(set, last) {
        let taken = store
            .reserve(ip, owner)
            .map_err(|e| errors::io(&format!("failed to reserve {ip}"), e))?;
        if taken {
            return Ok(ip);
        }
    }
    Err(errors::exhausted(format!(
        "no IP addresses available in range set: {set}"
    )))
}

/// Every allocatable address of a set once, in round-robin order: from the
/// one after `last` (or the first range's start), wrapping across ranges.
struct Candidates<'a> {
    ranges: &'a [Range],
    range: usize,
    cur: u128,
    left: u128,
}

impl<'a> Candidates<'a> {
    fn new(set: &'a RangeSet, last: Option<IpAddr>) -> Self {
        let ranges = set.0.as_slice();
        let total = ranges
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.size()));
        let (range, cur) =
            match last.and_then(|ip| ranges.iter().position(|r| r.contains(ip)).map(|i| (i, ip))) {
                Some((i, ip)) => {
                    let v = ip::to_u128(ip);
                    if v == ip::to_u128(ranges[i].end) {
                        let next = (i + 1) % ranges.len();
                        (next, ip::to_u128(ranges[next].start))
                    } else {
                        (i, v + 1)
                    }
                }
                None => (0, ranges.first().map(|r| ip::to_u128(r.start)).unwrap_or(0)),
            };
        Candidates {
            ranges,
            range,
            cur,
            left: total,
        }
    }
}

impl Iterator for Candidates<'_> {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        while self.left > 0 {
            self.left -= 1;
            let r = &self.ranges[self.range];
            let ip = ip::from_u128(self.cur, r.start);
            if self.cur >= ip::to_u128(r.end) {
                self.range = (self.range + 1) % self.ranges.len();
                self.cur = ip::to_u128(self.ranges[self.range].start);
            } else {
                self.cur += 1;
            }
            if r.reserved_reason(ip).is_none() {
                return Some(ip);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_types::config::IpRange;

    fn set(ranges: &[(&str, Option<&str>, Option<&str>)]) -> RangeSet {
        let raw: Vec<IpRange> = ranges
            .iter()
            .map(|(s, a, b)| IpRange {
                subnet: s.parse().unwrap(),
                range_start: a.map(|x| x.parse().unwrap()),
                range_end: b.map(|x| x.parse().unwrap()),
                gateway: None,
                extra: Default::default(),
            })
            .collect();
        RangeSet::canonicalize(&raw).unwrap()
    }

    fn order(s: &RangeSet, last: Option<&str>) -> Vec<String> {
        Candidates::new(s, last.map(|l| l.parse().unwrap()))
            .map(|ip| ip.to_string())
            .collect()
    }

    #[test]
    fn round_robin_skips_gateway_and_wraps_across_ranges() {
        let s = set(&[
            ("10.0.0.0/29", None, None),
            ("10.0.1.0/29", Some("10.0.1.4"), None),
        ]);
        assert_eq!(
            order(&s, None),
            [
                "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.1.4", "10.0.1.5",
                "10.0.1.6"
            ]
        );
        assert_eq!(
            order(&s, Some("10.0.0.6")),
            [
                "10.0.1.4", "10.0.1.5", "10.0.1.6", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5",
                "10.0.0.6"
            ]
        );
        assert_eq!(order(&s, Some("10.0.1.6"))[0], "10.0.0.2");
        assert_eq!(order(&s, Some("10.0.0.3"))[0], "10.0.0.4");
    }

    #[test]
    fn never_offers_broadcast_even_when_the_range_includes_it() {
        let s = set(&[("10.0.0.0/30", None, Some("10.0.0.3"))]);
        assert_eq!(order(&s, None), ["10.0.0.2"]);
    }
}
