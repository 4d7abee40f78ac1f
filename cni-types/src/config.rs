//! Network configuration as the runtime hands it to a plugin (spec §1),
//! and the network configuration list it is taken from.
//!
//! Every struct keeps the fields it does not know in `extra`, so that a
//! parse/serialize round trip (and therefore a delegate's config) loses nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::CniError;
use crate::version::{self, Version};

/// Keys a runtime puts in the config for GC: the spec's name and the older
/// one libcni still sends beside it.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
pub const LEGACY_ATTACHMENTS_KEY: &str = "cni.dev/attachments";

/// One plugin's configuration object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub plugin_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<BTreeMap<String, bool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<RuntimeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<ConfArgs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_masq: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Ipam>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// Kept raw: its layout depends on `cniVersion`; see [`NetConf::prev_result`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<Attachment>>,
    #[serde(
        rename = "cni.dev/attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_attachments: Option<Vec<Attachment>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl NetConf {
    /// The config's spec version; a missing `cniVersion` means 0.1.0.
    pub fn version(&self) -> Result<Version, CniError> {
        match self.cni_version.as_deref() {
            None | Some("") => Ok(version::IMPLICIT),
            Some(v) => v.parse().map_err(|_| {
                CniError::incompatible_version("incompatible CNI versions").with_details(format!(
                    "config is {v:?}, plugin supports {}",
                    Version::supported_list()
                ))
            }),
        }
    }

    /// The attachments GC must keep. `None` when the runtime sent no list,
    /// which must release nothing.
    pub fn gc_valid_attachments(&self) -> Option<&[Attachment]> {
        self.valid_attachments
            .as_deref()
            .or(self.legacy_attachments.as_deref())
    }

    /// `prevResult` decoded in the config's version.
    pub fn prev_result(&self) -> Result<Option<crate::result::CniResult>, CniError> {
        let Some(raw) = &self.prev_result else {
            return Ok(None);
        };
        let version = self.version()?;
        crate::result::CniResult::from_value(raw.clone(), version)
            .map(Some)
            .map_err(|e| e.context("invalid prevResult"))
    }
}

/// A network configuration list (a `.conflist` file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConfList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_versions: Option<Vec<String>>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_check: Option<bool>,
    #[serde(rename = "disableGC", default, skip_serializing_if = "Option::is_none")]
    pub disable_gc: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_only_inlined_plugins: Option<bool>,
    #[serde(default)]
    pub plugins: Vec<NetConf>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl NetConfList {
    /// The version a runtime would pick: the highest of `cniVersion` and
    /// `cniVersions` that this suite supports.
    pub fn selected_version(&self) -> Option<Version> {
        self.cni_version
            .iter()
            .chain(self.cni_versions.iter().flatten())
            .filter_map(|v| v.parse::<Version>().ok())
            .max()
    }

    /// The config a runtime hands to plugin `index`: the list's name and
    /// selected version injected into the plugin object.
    pub fn plugin_config(&self, index: usize) -> Option<NetConf> {
        let mut conf = self.plugins.get(index)?.clone();
        conf.name = Some(self.name.clone());
        conf.cni_version = self
            .selected_version()
            .map(|v| v.as_str().to_string())
            .or_else(|| self.cni_version.clone());
        Some(conf)
    }
}

/// `ipam`: `type` plus whatever the IPAM plugin reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ipam {
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub plugin_type: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// DNS settings, in configs and in results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
            && self.extra.is_empty()
    }
}

/// One attachment in GC's list of attachments to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `args` object (CONVENTIONS.md); `args.cni` is the part plugins read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniConfArgs>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniConfArgs {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<Label>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub key: String,
    pub value: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `runtimeConfig`: the capabilities a runtime fills in (CONVENTIONS.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<IpRequest>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_ranges: Option<Vec<Vec<IpRange>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mappings: Option<Vec<PortMapping>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<RuntimeDns>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One range of a host-local style range set (also the `ipRanges` capability).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpRange {
    pub subnet: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_burst: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `dns` capability: note the names differ from the result's `dns`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeDns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A requested address, `ip` or `ip/prefix` (the prefix is kept only so the
/// text survives a round trip; allocators use the address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpRequest {
    pub addr: IpAddr,
    pub prefix: Option<u8>,
}

impl FromStr for IpRequest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid IP address {s:?}: expected an address or address/prefix");
        match s.split_once('/') {
            None => Ok(IpRequest {
                addr: s.parse().map_err(|_| bad())?,
                prefix: None,
            }),
            Some(_) => {
                let net: IpNetwork = s.parse().map_err(|_| bad())?;
                Ok(IpRequest {
                    addr: net.ip(),
                    prefix: Some(net.prefix()),
                })
            }
        }
    }
}

impl fmt::Display for IpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix {
            Some(p) => write!(f, "{}/{p}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl Serialize for IpRequest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
