//! Results of every spec version, and the conversions between them.
//!
//! [`CniResult`] is the 1.x result, the richest layout; the older layouts are
//! converted to and from it by the rules of the spec's upgrade notes:
//! 0.3.x/0.4.0 add `ips[].version` and lack the 1.1 interface fields;
//! 0.1.0/0.2.0 hold the first address of each family in `ip4` / `ip6`.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Dns;
use crate::error::CniError;
use crate::version::{ResultFormat, Version};

/// A result in the 1.0.0/1.1.0 layout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub socket_path: String,
    #[serde(rename = "pciID", default, skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Index into `interfaces`; absent in IPAM results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// Address with its prefix length, e.g. `10.1.0.5/16`.
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    /// A route with only a destination and an optional gateway.
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

// ---- 0.3.0 / 0.3.1 / 0.4.0 -------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct ResultV04 {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<InterfaceV04>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ips: Vec<IpConfigV04>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    dns: Dns,
}

#[derive(Debug, Serialize, Deserialize)]
struct InterfaceV04 {
    name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    mac: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    sandbox: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct IpConfigV04 {
    /// "4" or "6"; derived from the address when read.
    #[serde(default)]
    version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<usize>,
    address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
}

// ---- 0.1.0 / 0.2.0 ---------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct ResultLegacy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip4: Option<IpConfigLegacy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<IpConfigLegacy>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    dns: Dns,
}

#[derive(Debug, Serialize, Deserialize)]
struct IpConfigLegacy {
    ip: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<RouteLegacy>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RouteLegacy {
    dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gw: Option<IpAddr>,
}

fn family_tag(addr: &IpNetwork) -> &'static str {
    if addr.is_ipv4() { "4" } else { "6" }
}

fn decode_err(version: Version, e: serde_json::Error) -> CniError {
    CniError::decode(format!("failed to decode {version} result: {e}"))
}

impl CniResult {
    /// Decodes a result printed in `version`'s layout. A `cniVersion` inside
    /// the JSON wins over `version` (libcni reads it the same way).
    pub fn from_value(value: Value, version: Version) -> Result<Self, CniError> {
        let version = match value.get("cniVersion").and_then(Value::as_str) {
            Some(v) if !v.is_empty() => v.parse().map_err(|_| {
                CniError::incompatible_version(format!("result has unsupported cniVersion {v:?}"))
            })?,
            _ => version,
        };
        match version.result_format() {
            ResultFormat::V1 => serde_json::from_value(value).map_err(|e| decode_err(version, e)),
            ResultFormat::V04 => {
                let old: ResultV04 =
                    serde_json::from_value(value).map_err(|e| decode_err(version, e))?;
                Ok(Self::from_v04(old))
            }
            ResultFormat::Legacy => {
                let old: ResultLegacy =
                    serde_json::from_value(value).map_err(|e| decode_err(version, e))?;
                Ok(Self::from_legacy(old))
            }
        }
    }

    /// Decodes a result from bytes; see [`CniResult::from_value`].
    pub fn from_slice(bytes: &[u8], version: Version) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode(format!("failed to decode result: {e}")))?;
        Self::from_value(value, version)
    }

    /// The result as `version` prints it, `cniVersion` included.
    pub fn to_value(&self, version: Version) -> Result<Value, CniError> {
        let body = match version.result_format() {
            ResultFormat::V1 => serde_json::to_value(self),
            ResultFormat::V04 => serde_json::to_value(self.to_v04()),
            ResultFormat::Legacy => serde_json::to_value(self.to_legacy()?),
        }
        .map_err(|e| CniError::decode(format!("failed to encode result: {e}")))?;
        let mut out = serde_json::Map::new();
        out.insert("cniVersion".into(), Value::String(version.as_str().into()));
        if let Value::Object(fields) = body {
            out.extend(fields);
        }
        Ok(Value::Object(out))
    }

    fn from_v04(old: ResultV04) -> Self {
        CniResult {
            interfaces: old
                .interfaces
                .into_iter()
                .map(|i| Interface {
                    name: i.name,
                    mac: i.mac,
                    sandbox: i.sandbox,
                    ..Interface::default()
                })
                .collect(),
            ips: old
                .ips
                .into_iter()
                .map(|ip| IpConfig {
                    interface: ip.interface,
                    address: ip.address,
                    gateway: ip.gateway,
                })
                .collect(),
            routes: old.routes,
            dns: old.dns,
        }
    }

    fn to_v04(&self) -> ResultV04 {
        ResultV04 {
            interfaces: self
                .interfaces
                .iter()
                .map(|i| InterfaceV04 {
                    name: i.name.clone(),
                    mac: i.mac.clone(),
                    sandbox: i.sandbox.clone(),
                })
                .collect(),
            ips: self
                .ips
                .iter()
                .map(|ip| IpConfigV04 {
                    version: family_tag(&ip.address).into(),
                    interface: ip.interface,
                    address: ip.address,
                    gateway: ip.gateway,
                })
                .collect(),
            routes: self.routes.clone(),
            dns: self.dns.clone(),
        }
    }

    fn from_legacy(old: ResultLegacy) -> Self {
        let mut result = CniResult {
            dns: old.dns,
            ..CniResult::default()
        };
        for ipc in [old.ip4, old.ip6].into_iter().flatten() {
            result.ips.push(IpConfig {
                interface: None,
                address: ipc.ip,
                gateway: ipc.gateway,
            });
            result
                .routes
                .extend(ipc.routes.into_iter().map(|r| Route::new(r.dst, r.gw)));
        }
        result
    }

    fn to_legacy(&self) -> Result<ResultLegacy, CniError> {
        let first = |v4: bool| self.ips.iter().find(|ip| ip.address.is_ipv4() == v4);
        let build = |v4: bool| {
            first(v4).map(|ip| IpConfigLegacy {
                ip: ip.address,
                gateway: ip.gateway,
                routes: self
                    .routes
                    .iter()
                    .filter(|r| r.dst.is_ipv4() == v4)
                    .map(|r| RouteLegacy {
                        dst: r.dst,
                        gw: r.gw,
                    })
                    .collect(),
            })
        };
        let (ip4, ip6) = (build(true), build(false));
        if ip4.is_none() && ip6.is_none() {
            return Err(CniError::incompatible_version(
                "cannot convert: no valid IP addresses",
            ));
        }
        Ok(ResultLegacy {
            ip4,
            ip6,
            dns: self.dns.clone(),
        })
    }
}
