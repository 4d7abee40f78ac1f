//! The bridge plugin's config: every field of the reference plugin,
//! validated before anything is changed.

use cni_types::config::Dns;
use cni_types::{CmdArgs, CniError};
use netkit::link::parse_mac;
use serde::Deserialize;

pub const DEFAULT_BRIDGE: &str = "cni0";
/// The `CNI_ARGS` keys the bridge reads.
const KNOWN_ARGS: &[&str] = &["MAC"];

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TrunkEntry {
    Id {
        id: u16,
    },
    Range {
        #[serde(rename = "minID")]
        min_id: u16,
        #[serde(rename = "maxID")]
        max_id: u16,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    bridge: String,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    force_address: bool,
    #[serde(default)]
    ip_masq_backend: Option<String>,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    #[serde(default)]
    vlan: i32,
    #[serde(default)]
    vlan_trunk: Vec<TrunkEntry>,
    #[serde(default)]
    preserve_default_vlan: bool,
    #[serde(default)]
    enabledad: bool,
    #[serde(default)]
    macspoofchk: bool,
    #[serde(default)]
    disable_container_interface: bool,
    #[serde(default)]
    port_isolation: bool,
}

/// The masquerade backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasqBackend {
    Nftables,
    Iptables,
}

#[derive(Debug)]
pub struct Config {
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub masq_backend: MasqBackend,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub promisc: bool,
    pub vlan: u16,
    pub vlan_trunk: Vec<u16>,
    pub preserve_default_vlan: bool,
    pub enable_dad: bool,
    pub mac_spoof_check: bool,
    pub disable_container_interface: bool,
    pub port_isolation: bool,
    /// `dns` of the config: replaces IPAM's in the result.
    pub dns: Option<Dns>,
    /// The IPAM plugin's type; `None` is L2 mode.
    pub ipam: Option<String>,
    pub mac: Option<[u8; 6]>,
}

impl Config {
    pub fn uses_vlans(&self) -> bool {
        self.vlan != 0 || !self.vlan_trunk.is_empty()
    }
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::invalid_config(msg)
}

pub fn load(args: &CmdArgs) -> Result<Config, CniError> {
    let raw: Raw = serde_json::from_value(serde_json::Value::Object(args.conf.extra.clone()))
        .map_err(|e| invalid(format!("invalid bridge config: {e}")))?;
    if raw.hairpin_mode && raw.promisc_mode {
        return Err(invalid(
            "cannot set hairpin mode and promiscuous mode at the same time",
        ));
    }
    if !(0..=4094).contains(&raw.vlan) {
        return Err(invalid(format!(
            "invalid VLAN ID {} (must be between 0 and 4094)",
            raw.vlan
        )));
    }
    let vlan_trunk = trunk_ids(&raw.vlan_trunk)?;
    let ipam = args
        .conf
        .ipam
        .as_ref()
        .map(|i| i.plugin_type.clone())
        .filter(|t| !t.is_empty());
    if raw.disable_container_interface && ipam.is_some() {
        return Err(invalid(
            "cannot use IPAM when 'disableContainerInterface' is set",
        ));
    }
    let masq_backend = match raw.ip_masq_backend.as_deref() {
        None | Some("") | Some("nftables") => MasqBackend::Nftables,
        Some("iptables") => MasqBackend::Iptables,
        Some(other) => {
            return Err(invalid(format!(
                "unknown ipMasqBackend {other:?} (use \"nftables\" or \"iptables\")"
            )));
        }
    };
    Ok(Config {
        bridge: if raw.bridge.is_empty() {
            DEFAULT_BRIDGE.to_string()
        } else {
            raw.bridge
        },
        is_gateway: raw.is_gateway || raw.is_default_gateway,
        is_default_gateway: raw.is_default_gateway,
        force_address: raw.force_address,
        ip_masq: args.conf.ip_masq.unwrap_or(false),
        masq_backend,
        mtu: (raw.mtu > 0).then_some(raw.mtu),
        hairpin: raw.hairpin_mode,
        promisc: raw.promisc_mode,
        vlan: u16::try_from(raw.vlan).unwrap_or_default(),
        vlan_trunk,
        preserve_default_vlan: raw.preserve_default_vlan,
        enable_dad: raw.enabledad,
        mac_spoof_check: raw.macspoofchk,
        disable_container_interface: raw.disable_container_interface,
        port_isolation: raw.port_isolation,
        dns: args.conf.dns.clone().filter(|d| !d.is_empty()),
        ipam,
        mac: mac(args)?,
    })
}

fn trunk_ids(entries: &[TrunkEntry]) -> Result<Vec<u16>, CniError> {
    let valid = |id: u16| (1..=4094).contains(&id);
    let mut ids = Vec::new();
    for e in entries {
        match *e {
            TrunkEntry::Id { id } if valid(id) => ids.push(id),
            TrunkEntry::Range { min_id, max_id }
                if valid(min_id) && valid(max_id) && min_id <= max_id =>
            {
                ids.extend(min_id..=max_id);
            }
            _ => {
                return Err(invalid(format!(
                    "invalid vlanTrunk entry {e:?}: IDs must be between 1 and 4094, minID <= maxID"
                )));
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The pod MAC: `CNI_ARGS` `MAC`, then `args.cni.mac`, then
/// `runtimeConfig.mac` (later sources win, as in the reference).
fn mac(args: &CmdArgs) -> Result<Option<[u8; 6]>, CniError> {
    args.args.check_known(KNOWN_ARGS)?;
    let conf = &args.conf;
    let from_args = conf
        .args
        .as_ref()
        .and_then(|a| a.cni.as_ref())
        .and_then(|c| c.mac.clone());
    let from_runtime = conf.runtime_config.as_ref().and_then(|r| r.mac.clone());
    let chosen = from_runtime
        .or(from_args)
        .or_else(|| args.args.get("MAC").map(str::to_string));
    chosen
        .map(|text| {
            parse_mac(&text).ok_or_else(|| invalid(format!("invalid MAC address {text:?}")))
        })
        .transpose()
}
