//! The IPAM section of the network config, plus the addresses a runtime
//! asks for, validated into range sets.

use std::net::IpAddr;
use std::path::PathBuf;

use cni_types::config::IpRange;
use cni_types::result::Route;
use cni_types::{CmdArgs, CniError, Version};
use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::range::RangeSet;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// The `CNI_ARGS` keys host-local reads.
const KNOWN_ARGS: &[&str] = &["IP"];

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IpamSection {
    #[serde(default)]
    ranges: Vec<Vec<IpRange>>,
    // The single-range form of older configs.
    subnet: Option<IpNetwork>,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
    data_dir: Option<PathBuf>,
    resolv_conf: Option<PathBuf>,
}

/// Everything an operation needs, validated.
#[derive(Debug)]
pub struct Config {
    /// The network name: the store's directory under `data_dir`.
    pub name: String,
    pub data_dir: PathBuf,
    pub sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub resolv_conf: Option<PathBuf>,
    /// Requested addresses, each once, in the order given.
    pub requested: Vec<IpAddr>,
}

impl Config {
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
}

pub fn load(args: &CmdArgs) -> Result<Config, CniError> {
    let conf = &args.conf;
    let ipam = conf
        .ipam
        .as_ref()
        .ok_or_else(|| CniError::invalid_config("IPAM config missing 'ipam' key"))?;
    let section: IpamSection =
        serde_json::from_value(serde_json::Value::Object(ipam.extra.clone()))
            .map_err(|e| CniError::invalid_config(format!("invalid ipam config: {e}")))?;

    let mut raw_sets: Vec<Vec<IpRange>> = Vec::new();
    if let Some(rc) = conf
        .runtime_config
        .as_ref()
        .and_then(|rc| rc.ip_ranges.as_ref())
    {
        raw_sets.extend(rc.iter().cloned());
    }
    if let Some(subnet) = section.subnet {
        raw_sets.push(vec![IpRange {
            subnet,
            range_start: section.range_start,
            range_end: section.range_end,
            gateway: section.gateway,
            extra: Default::default(),
        }]);
    }
    raw_sets.extend(section.ranges);
    if raw_sets.is_empty() {
        return Err(CniError::invalid_config("no IP ranges specified"));
    }
    let sets = raw_sets
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            RangeSet::canonicalize(raw)
                .map_err(|e| CniError::invalid_config(format!("invalid range set {i}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_sets(&sets, args.version)?;

    Ok(Config {
        name: args.network_name().to_string(),
        data_dir: section
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        sets,
        routes: section.routes,
        resolv_conf: section.resolv_conf.filter(|p| !p.as_os_str().is_empty()),
        requested: requested_ips(args)?,
    })
}

fn check_sets(sets: &[RangeSet], version: Version) -> Result<(), CniError> {
    let v4 = sets.iter().filter(|s| s.is_ipv4()).count();
    if (v4 > 1 || sets.len() - v4 > 1) && version < Version::V0_3_0 {
        return Err(CniError::incompatible_version(format!(
            "CNI version {version} does not support more than 1 address per family"
        )));
    }
    for (i, a) in sets.iter().enumerate() {
        for (j, b) in sets.iter().enumerate().skip(i + 1) {
            if a.overlaps(b) {
                return Err(CniError::invalid_config(format!(
                    "range set {i} overlaps with {j}"
                )));
            }
        }
    }
    Ok(())
}

/// Requested addresses from `CNI_ARGS` `IP=` (comma-separated), `args.cni.ips`
/// and `runtimeConfig.ips`, merged as the reference does; prefixes dropped.
fn requested_ips(args: &CmdArgs) -> Result<Vec<IpAddr>, CniError> {
    args.args.check_known(KNOWN_ARGS)?;
    let mut out: Vec<IpAddr> = Vec::new();
    let mut push = |ip: IpAddr| {
        if !out.contains(&ip) {
            out.push(ip);
        }
    };
    if let Some(list) = args.args.get("IP") {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let req: cni_types::config::IpRequest = item
                .parse()
                .map_err(|e: String| CniError::invalid_env(format!("CNI_ARGS IP: {e}")))?;
            push(req.addr);
        }
    }
    let conf = &args.conf;
    let from_args = conf
        .args
        .as_ref()
        .and_then(|a| a.cni.as_ref())
        .map(|c| &c.ips);
    let from_runtime = conf.runtime_config.as_ref().and_then(|rc| rc.ips.as_ref());
    for req in from_args.into_iter().chain(from_runtime).flatten() {
        push(req.addr);
    }
    Ok(out)
}
