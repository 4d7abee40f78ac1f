//! Leases as upstream stores them: the key `10.5.52.0-24` (dual stack:
//! `10.5.52.0-24&fc00::-64`) and the JSON value of `LeaseAttrs`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A lease's subnets; at least one is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    pub ipv4: Option<IpNetwork>,
    pub ipv6: Option<IpNetwork>,
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ipv4 {
            Some(n) => write!(f, "{}-{}", n.ip(), n.prefix())?,
            None => f.write_str("0.0.0.0-0")?,
        }
        if let Some(n) = self.ipv6 {
            write!(f, "&{}-{}", n.ip(), n.prefix())?;
        }
        Ok(())
    }
}

impl SubnetKey {
    pub fn parse(key: &str) -> Option<SubnetKey> {
        let one = |part: &str| -> Option<IpNetwork> {
            let (ip, len) = part.rsplit_once('-')?;
            let ip: IpAddr = ip.parse().ok()?;
            IpNetwork::new(ip, len.parse().ok()?).ok()
        };
        let (v4, v6) = match key.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (key, None),
        };
        let ipv4 = one(v4).filter(|n| n.is_ipv4() && n.prefix() > 0);
        let ipv6 = match v6 {
            Some(p) => Some(one(p).filter(|n| n.is_ipv6())?),
            None => None,
        };
        (ipv4.is_some() || ipv6.is_some()).then_some(SubnetKey { ipv4, ipv6 })
    }
}

/// The lease value, field for field and byte for byte as upstream's
/// `lease.LeaseAttrs` JSON (upstream's `PublicIP` is not optional: a lease
/// without an IPv4 address says `"0.0.0.0"`, and `null` would fail its
/// decoder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(
        rename = "PublicIP",
        default,
        deserialize_with = "ipv4_or_null",
        serialize_with = "ipv4_or_zero"
    )]
    pub public_ip: Option<Ipv4Addr>,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "in_upstream_order"
    )]
    pub backend_data: Option<Value>,
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "in_upstream_order"
    )]
    pub backend_v6_data: Option<Value>,
}

/// Backend data's fields in the order upstream's Go structs declare them
/// (`{"PublicKey":..,"Port":..}` for wireguard, where sorted keys would
/// put Port first), any others after them, sorted.
fn in_upstream_order<S: serde::Serializer>(v: &Option<Value>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    const ORDER: [&str; 4] = ["VNI", "VtepMAC", "PublicKey", "Port"];
    let Some(Value::Object(map)) = v else {
        return v.serialize(s);
    };
    let rank = |k: &str| ORDER.iter().position(|o| *o == k).unwrap_or(ORDER.len());
    let mut fields: Vec<(&String, &Value)> = map.iter().collect();
    fields.sort_by(|a, b| rank(a.0).cmp(&rank(b.0)).then(a.0.cmp(b.0)));
    let mut m = s.serialize_map(Some(fields.len()))?;
    for (k, v) in fields {
        m.serialize_entry(k, v)?;
    }
    m.end()
}

fn ipv4_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(v.and_then(|s| s.parse().ok())
        .filter(|ip: &Ipv4Addr| !ip.is_unspecified()))
}

fn ipv4_or_zero<S: serde::Serializer>(ip: &Option<Ipv4Addr>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&ip.unwrap_or(Ipv4Addr::UNSPECIFIED))
}

/// Which version of a record a store holds (etcd: the key's
/// `mod_revision`; the embedded store: a digest of the record). A write of
/// our own lease names the version it replaces and fails if the record
/// changed since: another writer won.
pub type Revision = u64;

/// A lease as read from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub key: SubnetKey,
    pub attrs: LeaseAttrs,
    /// `None` for a reservation (no TTL).
    pub expires: Option<SystemTime>,
    /// The version read or written (0: unknown).
    pub rev: Revision,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for key in [
            "10.5.52.0-24",
            "10.5.52.0-24&fc00::-64",
            "0.0.0.0-0&fd00:244:0:7::-64",
        ] {
            assert_eq!(SubnetKey::parse(key).unwrap().to_string(), key);
        }
        for bad in [
            "",
            "10.5.52.0",
            "10.5.52.0-33",
            "x-24",
            "10.5.52.0-24&10.1.0.0-16",
            "0.0.0.0-0",
        ] {
            assert!(SubnetKey::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn attrs_match_upstream_json() {
        let text = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let attrs: LeaseAttrs = serde_json::from_str(text).unwrap();
        assert_eq!(attrs.public_ip, Some("192.168.64.3".parse().unwrap()));
        assert_eq!(serde_json::to_string(&attrs).unwrap(), text);
        // Dual stack, as upstream's vxlan writes it: a VTEP per family.
        let text = r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#;
        let attrs: LeaseAttrs = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&attrs).unwrap(), text);
        // IPv6 only: upstream's IPv4 field is never null.
        let text = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::3","BackendType":"host-gw"}"#;
        let attrs: LeaseAttrs = serde_json::from_str(text).unwrap();
        assert_eq!(attrs.public_ip, None);
        assert_eq!(serde_json::to_string(&attrs).unwrap(), text);
        let old: LeaseAttrs =
            serde_json::from_str(r#"{"PublicIP":null,"PublicIPv6":"fd00::3"}"#).unwrap();
        assert_eq!(old.public_ip, None, "our earlier versions wrote null");
    }
}
