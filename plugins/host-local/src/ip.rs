//! Address arithmetic on `IpAddr` through `u128`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address `v` in the family of `like`; `v` must fit that family.
pub fn from_u128(v: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX))),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// `ip + 1`, or `None` past the end of the family.
pub fn next(ip: IpAddr) -> Option<IpAddr> {
    let max = if ip.is_ipv4() {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    let v = to_u128(ip);
    (v < max).then(|| from_u128(v + 1, ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(next(ip("10.0.0.255")), Some(ip("10.0.1.0")));
        assert_eq!(next(ip("255.255.255.255")), None);
        assert_eq!(next(ip("2001:db8::ffff")), Some(ip("2001:db8::1:0")));
        assert_eq!(next(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")), None);
    }
}
