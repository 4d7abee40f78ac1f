//! Just enough IPv4 subnet arithmetic for the scenarios.

use std::fmt;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

impl Subnet {
    /// None unless `prefix` is 1..=30 and `base` has no host bits.
    pub fn new(base: Ipv4Addr, prefix: u8) -> Option<Subnet> {
        let base = u32::from(base);
        let s = Subnet { base, prefix };
        ((1..=30).contains(&prefix) && base & !s.mask() == 0).then_some(s)
    }

    fn mask(self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.base
    }

    /// The address `offset` past the network address; None past the end.
    pub fn host(self, offset: u32) -> Option<Ipv4Addr> {
        (offset <= !self.mask()).then(|| Ipv4Addr::from(self.base + offset))
    }

    /// Offset of the last address before the broadcast address.
    pub fn last_host_offset(self) -> u32 {
        !self.mask() - 1
    }

    /// How far `ip` is past the network address; None outside the subnet.
    pub fn offset_of(self, ip: Ipv4Addr) -> Option<u32> {
        self.contains(ip).then(|| u32::from(ip) - self.base)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let s = Subnet::new(Ipv4Addr::new(10, 30, 0, 0), 16).unwrap();
        assert_eq!(s.to_string(), "10.30.0.0/16");
        assert_eq!(s.host(2), Some(Ipv4Addr::new(10, 30, 0, 2)));
        assert_eq!(s.host(60_001), Some(Ipv4Addr::new(10, 30, 234, 97)));
        assert_eq!(s.host(65_536), None);
        assert_eq!(
            s.host(s.last_host_offset()),
            Some(Ipv4Addr::new(10, 30, 255, 254))
        );
        assert!(!s.contains(Ipv4Addr::new(10, 31, 0, 1)));
        assert_eq!(s.offset_of(Ipv4Addr::new(10, 30, 1, 0)), Some(256));
        assert!(Subnet::new(Ipv4Addr::new(10, 30, 0, 1), 16).is_none());
    }
}
