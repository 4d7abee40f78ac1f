//! Ranges and range sets: the reference plugin's defaults and validations.

use std::fmt;
use std::net::IpAddr;

use cni_types::config::IpRange;
use ipnetwork::IpNetwork;

use crate::ip;

/// A validated range: the subnet's network address, first and last
/// allocatable address (inclusive) and the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    /// Applies the defaults (gateway = network + 1, start = network + 1,
    /// end = broadcast - 1 for IPv4 and the last address for IPv6) and checks
    /// the range the way the reference plugin does.
    pub fn canonicalize(raw: &IpRange) -> Result<Range, String> {
        let given = raw.subnet;
        let (prefix, bits) = (given.prefix(), if given.is_ipv4() { 32 } else { 128 });
        if u32::from(prefix) + 2 > bits {
            return Err(format!("Network {given} too small to allocate from"));
        }
        let network = given.network();
        if network != given.ip() {
            return Err(format!(
                "Network has host bits set. For a subnet mask of length {prefix} the network address is {network}"
            ));
        }
        let subnet = IpNetwork::new(network, prefix).map_err(|e| e.to_string())?;
        let family = |what: &str, addr: IpAddr| {
            if addr.is_ipv4() == network.is_ipv4() {
                Ok(addr)
            } else {
                Err(format!(
                    "{what} {addr} is not in the address family of network {subnet}"
                ))
            }
        };
        let gateway = match raw.gateway {
            Some(gw) => family("gateway", gw)?,
            None => ip::next(network).unwrap_or(network),
        };
        let last = {
            let broadcast = ip::to_u128(subnet.broadcast());
            ip::from_u128(
                if subnet.is_ipv4() {
                    broadcast - 1
                } else {
                    broadcast
                },
                network,
            )
        };
        let mut range = Range {
            subnet,
            start: ip::next(network).unwrap_or(network),
            end: last,
            gateway,
        };
        // As in the reference, a given start or end need only lie in the
        // subnet (and the end not before the start).
        if let Some(start) = raw.range_start {
            if !subnet.contains(family("RangeStart", start)?) {
                return Err(format!("RangeStart {start} not in network {subnet}"));
            }
            range.start = start;
        }
        if let Some(end) = raw.range_end {
            if !subnet.contains(family("RangeEnd", end)?) {
                return Err(format!("RangeEnd {end} not in network {subnet}"));
            }
            if ip::to_u128(end) < ip::to_u128(range.start) {
                return Err(format!(
                    "RangeEnd {end} not in network {subnet}: it is before RangeStart {}",
                    range.start
                ));
            }
            range.end = end;
        }
        Ok(range)
    }

    pub fn is_ipv4(&self) -> bool {
        self.subnet.is_ipv4()
    }

    /// In the subnet and between start and end.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.is_ipv4()
            && self.subnet.contains(addr)
            && ip::to_u128(addr) >= ip::to_u128(self.start)
            && ip::to_u128(addr) <= ip::to_u128(self.end)
    }

    pub fn overlaps(&self, other: &Range) -> bool {
        self.is_ipv4() == other.is_ipv4()
            && (self.contains(other.start)
                || self.contains(other.end)
                || other.contains(self.start)
                || other.contains(self.end))
    }

    /// Why `addr` (inside the range) may not be handed out, if it may not:
    /// the gateway, and for IPv4 the network and broadcast addresses.
    pub fn reserved_reason(&self, addr: IpAddr) -> Option<&'static str> {
        if addr == self.gateway {
            Some("subnet's gateway")
        } else if self.is_ipv4() && addr == self.subnet.network() {
            Some("subnet's network address")
        } else if self.is_ipv4() && addr == self.subnet.broadcast() {
            Some("subnet's broadcast address")
        } else {
            None
        }
    }

    pub fn size(&self) -> u128 {
        ip::to_u128(self.end) - ip::to_u128(self.start) + 1
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// The ranges one address is taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    pub fn canonicalize(raw: &[IpRange]) -> Result<RangeSet, String> {
        let ranges = raw
            .iter()
            .map(Range::canonicalize)
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = ranges.first() else {
            return Err("empty range set".into());
        };
        if ranges.iter().any(|r| r.is_ipv4() != first.is_ipv4()) {
            return Err("mixed address families".into());
        }
        for (i, a) in ranges.iter().enumerate() {
            if let Some(b) = ranges[i + 1..].iter().find(|b| a.overlaps(b)) {
                return Err(format!("subnets {a} and {b} overlap"));
            }
        }
        Ok(RangeSet(ranges))
    }

    pub fn is_ipv4(&self) -> bool {
        self.0.first().is_some_and(Range::is_ipv4)
    }

    pub fn range_for(&self, addr: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(addr))
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.range_for(addr).is_some()
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(subnet: &str, start: Option<&str>, end: Option<&str>, gw: Option<&str>) -> IpRange {
        IpRange {
            subnet: subnet.parse().unwrap(),
            range_start: start.map(|s| s.parse().unwrap()),
            range_end: end.map(|s| s.parse().unwrap()),
            gateway: gw.map(|s| s.parse().unwrap()),
            extra: Default::default(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_follow_the_reference() {
        let r = Range::canonicalize(&raw("10.1.2.0/24", None, None, None)).unwrap();
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("10.1.2.1"), ip("10.1.2.254"), ip("10.1.2.1"))
        );
        let r = Range::canonicalize(&raw("2001:db8:1::/64", None, None, None)).unwrap();
        assert_eq!(r.start, ip("2001:db8:1::1"));
        assert_eq!(r.end, ip("2001:db8:1::ffff:ffff:ffff:ffff"));
        assert_eq!(r.gateway, ip("2001:db8:1::1"));
    }

    #[test]
    fn validation_messages() {
        let err = |r: IpRange| Range::canonicalize(&r).unwrap_err();
        assert_eq!(
            err(raw("10.1.2.0/31", None, None, None)),
            "Network 10.1.2.0/31 too small to allocate from"
        );
        assert_eq!(
            err(raw("2001:db8::/127", None, None, None)),
            "Network 2001:db8::/127 too small to allocate from"
        );
        assert_eq!(
            err(raw("10.1.2.5/24", None, None, None)),
            "Network has host bits set. For a subnet mask of length 24 the network address is 10.1.2.0"
        );
        assert_eq!(
            err(raw("10.1.2.0/24", Some("10.1.3.1"), None, None)),
            "RangeStart 10.1.3.1 not in network 10.1.2.0/24"
        );
        assert_eq!(
            err(raw("10.1.2.0/24", None, Some("10.1.3.1"), None)),
            "RangeEnd 10.1.3.1 not in network 10.1.2.0/24"
        );
        assert!(
            err(raw(
                "10.1.2.0/24",
                Some("10.1.2.50"),
                Some("10.1.2.40"),
                None
            ))
            .contains("before RangeStart")
        );
        assert!(err(raw("10.1.2.0/24", None, None, Some("::1"))).contains("address family"));
    }

    #[test]
    fn sets() {
        let set = |rs: &[IpRange]| RangeSet::canonicalize(rs);
        assert_eq!(set(&[]).unwrap_err(), "empty range set");
        assert_eq!(
            set(&[
                raw("10.1.2.0/24", None, None, None),
                raw("2001:db8::/64", None, None, None)
            ])
            .unwrap_err(),
            "mixed address families"
        );
        assert_eq!(
            set(&[
                raw("10.1.0.0/16", None, None, None),
                raw("10.1.2.0/24", None, None, None)
            ])
            .unwrap_err(),
            "subnets 10.1.0.1-10.1.255.254 and 10.1.2.1-10.1.2.254 overlap"
        );
        let s = set(&[
            raw("10.1.2.0/24", None, None, None),
            raw("10.1.4.0/24", Some("10.1.4.10"), Some("10.1.4.20"), None),
        ])
        .unwrap();
        assert_eq!(s.to_string(), "10.1.2.1-10.1.2.254,10.1.4.10-10.1.4.20");
        assert!(s.contains(ip("10.1.4.15")) && !s.contains(ip("10.1.4.21")));
    }

    #[test]
    fn reserved_addresses() {
        let r = Range::canonicalize(&raw(
            "10.1.2.0/24",
            None,
            Some("10.1.2.255"),
            Some("10.1.2.9"),
        ))
        .unwrap();
        assert_eq!(r.reserved_reason(ip("10.1.2.9")), Some("subnet's gateway"));
        assert_eq!(
            r.reserved_reason(ip("10.1.2.255")),
            Some("subnet's broadcast address")
        );
        assert_eq!(r.reserved_reason(ip("10.1.2.1")), None);
    }
}
