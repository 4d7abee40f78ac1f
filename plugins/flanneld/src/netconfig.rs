//! The network config (upstream keeps it at `<prefix>/config`): the
//! cluster networks, how they are cut into node subnets, and the backend.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendType {
    Vxlan,
    HostGw,
    Udp,
    Wireguard,
}

impl BackendType {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendType::Vxlan => "vxlan",
            BackendType::HostGw => "host-gw",
            BackendType::Udp => "udp",
            BackendType::Wireguard => "wireguard",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub kind: BackendType,
    pub vni: u32,
    /// 0: the kernel's default (8472) for vxlan. Never 0 for udp: an unset
    /// or zero port is `udp::DEFAULT_PORT`, decided here alone.
    pub port: u16,
    pub direct_routing: bool,
    /// 0: the external interface's MTU.
    pub mtu: u32,
    /// The wireguard backend's settings (defaults for the others).
    pub wg: Wireguard,
}

/// Which underlay carries which inner family (upstream's `Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WgMode {
    /// A device per family, each over its own underlay family.
    #[default]
    Separate,
    /// One device; each peer over IPv6 when both ends have a public
    /// (non-private) IPv6 address and it has no public IPv4, else IPv4.
    Auto,
    Ipv4,
    Ipv6,
}

impl WgMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            WgMode::Separate => "separate",
            WgMode::Auto => "auto",
            WgMode::Ipv4 => "ipv4",
            WgMode::Ipv6 => "ipv6",
        }
    }
}

/// `Backend` of a wireguard network, upstream's names and defaults.
#[derive(Clone, PartialEq, Eq)]
pub struct Wireguard {
    pub listen_port: u16,
    pub listen_port_v6: u16,
    /// `PSK`, decoded.
    pub psk: Option<[u8; 32]>,
    /// `PersistentKeepaliveInterval`, seconds; 0: none.
    pub keepalive: u16,
    pub mode: WgMode,
}

impl Default for Wireguard {
    fn default() -> Wireguard {
        Wireguard {
            listen_port: 51820,
            listen_port_v6: 51821,
            psk: None,
            keepalive: 0,
            mode: WgMode::Separate,
        }
    }
}

// The PSK is a secret: never in a log line or a panic message.
impl std::fmt::Debug for Wireguard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wireguard")
            .field("listen_port", &self.listen_port)
            .field("listen_port_v6", &self.listen_port_v6)
            .field("psk", &self.psk.map(|_| "(set)"))
            .field("keepalive", &self.keepalive)
            .field("mode", &self.mode)
            .finish()
    }
}

/// One family's cut: the network and the node subnets inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub network: IpNetwork,
    pub subnet_len: u8,
    pub subnet_min: IpAddr,
    pub subnet_max: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub ipv4: Option<Family>,
    pub ipv6: Option<Family>,
    pub backend: Backend,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Raw {
    network: Option<String>,
    #[serde(rename = "IPv6Network")]
    ipv6_network: Option<String>,
    #[serde(rename = "EnableIPv4")]
    enable_ipv4: Option<bool>,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: Option<bool>,
    subnet_len: Option<u8>,
    subnet_min: Option<String>,
    subnet_max: Option<String>,
    #[serde(rename = "IPv6SubnetLen")]
    ipv6_subnet_len: Option<u8>,
    #[serde(rename = "IPv6SubnetMin")]
    ipv6_subnet_min: Option<String>,
    #[serde(rename = "IPv6SubnetMax")]
    ipv6_subnet_max: Option<String>,
    backend: Option<Value>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(u32::try_from(v).unwrap_or(u32::MAX).into())
    } else {
        IpAddr::V6(v.into())
    }
}

impl Family {
    fn bits(&self) -> u32 {
        if self.network.is_ipv4() { 32 } else { 128 }
    }

    /// The size of one node subnet.
    pub fn step(&self) -> u128 {
        1u128 << (self.bits() - u32::from(self.subnet_len))
    }

    /// Every candidate subnet from SubnetMin to SubnetMax.
    pub fn subnets(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        let (min, max, step) = (
            to_u128(self.subnet_min),
            to_u128(self.subnet_max),
            self.step(),
        );
        let v4 = self.network.is_ipv4();
        (0..)
            .map(move |i: u128| min.saturating_add(i.saturating_mul(step)))
            .take_while(move |v| *v <= max)
            .filter_map(move |v| IpNetwork::new(from_u128(v, v4), self.subnet_len).ok())
    }

    /// A node subnet of this network: its SubnetLen, aligned, inside the
    /// Network (any node's; SubnetMin and SubnetMax bound only what this
    /// node takes).
    pub fn holds(&self, subnet: &IpNetwork) -> bool {
        subnet.prefix() == self.subnet_len
            && subnet.is_ipv4() == self.network.is_ipv4()
            && self.network.contains(subnet.ip())
            && subnet.network() == subnet.ip()
    }

    /// A subnet this config could have handed out.
    pub fn fits(&self, subnet: &IpNetwork) -> bool {
        self.holds(subnet)
            && to_u128(subnet.ip()) >= to_u128(self.subnet_min)
            && to_u128(subnet.ip()) <= to_u128(self.subnet_max)
    }
}

fn family(
    what: &str,
    network: &str,
    len: Option<u8>,
    min: Option<&str>,
    max: Option<&str>,
) -> Result<Family, String> {
    let network: IpNetwork = network
        .parse()
        .map_err(|e| format!("{what}: {network:?} is not a CIDR ({e})"))?;
    if network.network() != network.ip() {
        return Err(format!(
            "{what}: {network} has host bits set (the network is {})",
            network.network()
        ));
    }
    let v4 = network.is_ipv4();
    let (default_len, min_len, max_len) = if v4 {
        (24u8, 28u8, 30u8)
    } else {
        (64, 124, 126)
    };
    let prefix = network.prefix();
    let subnet_len = match len {
        Some(l) => {
            if l > max_len || l < prefix + 2 {
                return Err(format!(
                    "{what}: subnet length {l} is invalid for {network}: it must be between {} and {max_len}",
                    prefix + 2
                ));
            }
            l
        }
        None if prefix <= default_len - 2 => default_len,
        None if prefix <= min_len => prefix + 2,
        None => {
            return Err(format!(
                "{what}: {network} is too small to split into node subnets"
            ));
        }
    };
    let step = 1u128 << ((if v4 { 32 } else { 128 }) - u32::from(subnet_len));
    let base = to_u128(network.ip());
    // The last subnet's first address, without overflow on `::/0`.
    let last = to_u128(network.broadcast()) - (step - 1);
    let parse_bound = |name: &str, text: Option<&str>, default: u128| -> Result<IpAddr, String> {
        let Some(text) = text else {
            return Ok(from_u128(default, v4));
        };
        let ip: IpAddr = text
            .parse()
            .map_err(|e| format!("{what}: {name} {text:?} is not an address ({e})"))?;
        let v = to_u128(ip);
        if ip.is_ipv4() != v4 || !network.contains(ip) {
            return Err(format!("{what}: {name} {ip} is not in {network}"));
        }
        if !(v - base).is_multiple_of(step) {
            return Err(format!(
                "{what}: {name} {ip} is not aligned to the subnet length /{subnet_len}"
            ));
        }
        Ok(ip)
    };
    // The first subnet is skipped by default, as upstream does.
    let subnet_min = parse_bound("SubnetMin", min, base + step)?;
    let subnet_max = parse_bound("SubnetMax", max, last)?;
    if to_u128(subnet_min) > to_u128(subnet_max) {
        return Err(format!(
            "{what}: SubnetMin {subnet_min} is after SubnetMax {subnet_max}"
        ));
    }
    Ok(Family {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

fn backend(raw: Option<&Value>) -> Result<Backend, String> {
    let empty = Value::Object(Default::default());
    let raw = raw.unwrap_or(&empty);
    let obj = raw.as_object().ok_or("Backend: must be an object")?;
    // A missing type means vxlan (upstream's code says udp; its docs vxlan).
    let kind = match obj
        .get("Type")
        .map(|t| t.as_str().ok_or("Backend.Type: must be a string"))
    {
        None => BackendType::Vxlan,
        Some(Ok("vxlan")) => BackendType::Vxlan,
        Some(Ok("host-gw")) => BackendType::HostGw,
        Some(Ok("udp")) => BackendType::Udp,
        Some(Ok("wireguard")) => BackendType::Wireguard,
        Some(Ok(other)) => {
            return Err(format!(
                "Backend.Type: {other:?} is not supported (use vxlan, host-gw, udp or wireguard)"
            ));
        }
        Some(Err(e)) => return Err(e.into()),
    };
    let num =
        |key: &str, max: u64| -> Result<Option<u64>, String> {
            match obj.get(key) {
                None => Ok(None),
                Some(v) => v.as_u64().filter(|n| *n <= max).map(Some).ok_or_else(|| {
                    format!("Backend.{key}: {v} is not a number between 0 and {max}")
                }),
            }
        };
    let vni = num("VNI", (1 << 24) - 1)?.unwrap_or(1);
    let default_port = if kind == BackendType::Udp {
        u64::from(crate::backend::udp::DEFAULT_PORT)
    } else {
        0
    };
    // 0 means the default, as upstream reads an unset (zero) Port.
    let port = num("Port", 65535)?
        .filter(|p| *p != 0)
        .unwrap_or(default_port);
    let mtu = num("MTU", 65535)?.unwrap_or(0);
    let direct_routing = match obj.get("DirectRouting") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or("Backend.DirectRouting: must be true or false")?,
    };
    let wg = if kind == BackendType::Wireguard {
        wireguard(obj, &num)?
    } else {
        Wireguard::default()
    };
    Ok(Backend {
        kind,
        vni: u32::try_from(vni).unwrap_or(1),
        port: u16::try_from(port).unwrap_or(0),
        direct_routing,
        mtu: u32::try_from(mtu).unwrap_or(0),
        wg,
    })
}

/// A numeric field of `Backend`, checked against its maximum.
type Num<'a> = dyn Fn(&str, u64) -> Result<Option<u64>, String> + 'a;

fn wireguard(obj: &serde_json::Map<String, Value>, num: &Num<'_>) -> Result<Wireguard, String> {
    let d = Wireguard::default();
    // 0 is "unset" in upstream's Go struct, as for Port.
    let port = |key: &str, default: u16| -> Result<u16, String> {
        Ok(num(key, 65535)?
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .unwrap_or(default))
    };
    let psk = match obj.get("PSK") {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(
            crate::backend::wireguard::key::decode(s)
                .map_err(|e| format!("Backend.PSK: {e} (make one with `wg genpsk`)"))?,
        ),
        Some(_) => {
            return Err("Backend.PSK: must be a string (base64, as `wg genpsk` prints)".into());
        }
    };
    let mode = match obj.get("Mode") {
        None => d.mode,
        Some(v) => match v.as_str() {
            Some("separate") | Some("") => WgMode::Separate,
            Some("auto") => WgMode::Auto,
            Some("ipv4") => WgMode::Ipv4,
            Some("ipv6") => WgMode::Ipv6,
            _ => {
                return Err(format!(
                    "Backend.Mode: {v} is not a mode (use separate, auto, ipv4 or ipv6)"
                ));
            }
        },
    };
    Ok(Wireguard {
        listen_port: port("ListenPort", d.listen_port)?,
        listen_port_v6: port("ListenPortV6", d.listen_port_v6)?,
        psk,
        keepalive: num("PersistentKeepaliveInterval", 65535)?
            .and_then(|k| u16::try_from(k).ok())
            .unwrap_or(0),
        mode,
    })
}

impl NetConfig {
    /// The families in use, IPv4 first.
    pub fn families(&self) -> impl Iterator<Item = &Family> {
        [self.ipv4.as_ref(), self.ipv6.as_ref()]
            .into_iter()
            .flatten()
    }

    pub fn parse(text: &str) -> Result<NetConfig, String> {
        let raw: Raw = serde_json::from_str(text)
            .map_err(|e| format!("network config is not valid JSON: {e}"))?;
        let enable_v4 = raw.enable_ipv4.unwrap_or(true);
        let enable_v6 = raw.enable_ipv6.unwrap_or(false);
        let ipv4 = if enable_v4 {
            let network = raw
                .network
                .as_deref()
                .ok_or("Network: missing (or set EnableIPv4 to false)")?;
            Some(family(
                "Network",
                network,
                raw.subnet_len,
                raw.subnet_min.as_deref(),
                raw.subnet_max.as_deref(),
            )?)
        } else {
            None
        };
        let ipv6 = if enable_v6 {
            let network = raw
                .ipv6_network
                .as_deref()
                .ok_or("IPv6Network: missing while EnableIPv6 is true")?;
            Some(family(
                "IPv6Network",
                network,
                raw.ipv6_subnet_len,
                raw.ipv6_subnet_min.as_deref(),
                raw.ipv6_subnet_max.as_deref(),
            )?)
        } else {
            None
        };
        if ipv4.as_ref().is_some_and(|f| !f.network.is_ipv4()) {
            return Err("Network: must be an IPv4 network".into());
        }
        if ipv6.as_ref().is_some_and(|f| f.network.is_ipv4()) {
            return Err("IPv6Network: must be an IPv6 network".into());
        }
        if ipv4.is_none() && ipv6.is_none() {
            return Err("EnableIPv4 and EnableIPv6 are both false: nothing to do".into());
        }
        Ok(NetConfig {
            ipv4,
            ipv6,
            backend: backend(raw.backend.as_ref())?,
        })
    }
}

/// What differs between two configs, for the log: `Network 10.244.0.0/16
/// -> 10.245.0.0/16, Backend vxlan -> host-gw`.
pub fn describe_change(old: &NetConfig, new: &NetConfig) -> String {
    fn fam(f: &Option<Family>) -> (String, String) {
        match f {
            Some(f) => (f.network.to_string(), f.subnet_len.to_string()),
            None => ("none".into(), "none".into()),
        }
    }
    let (o4, n4, o6, n6) = (
        fam(&old.ipv4),
        fam(&new.ipv4),
        fam(&old.ipv6),
        fam(&new.ipv6),
    );
    let (ob, nb) = (&old.backend, &new.backend);
    let fields = [
        ("Network", o4.0, n4.0),
        ("SubnetLen", o4.1, n4.1),
        ("IPv6Network", o6.0, n6.0),
        ("IPv6SubnetLen", o6.1, n6.1),
        (
            "Backend",
            ob.kind.as_str().to_string(),
            nb.kind.as_str().to_string(),
        ),
        ("VNI", ob.vni.to_string(), nb.vni.to_string()),
        ("Port", ob.port.to_string(), nb.port.to_string()),
        (
            "DirectRouting",
            ob.direct_routing.to_string(),
            nb.direct_routing.to_string(),
        ),
        ("MTU", ob.mtu.to_string(), nb.mtu.to_string()),
        (
            "ListenPort",
            ob.wg.listen_port.to_string(),
            nb.wg.listen_port.to_string(),
        ),
        (
            "ListenPortV6",
            ob.wg.listen_port_v6.to_string(),
            nb.wg.listen_port_v6.to_string(),
        ),
        (
            "PersistentKeepaliveInterval",
            ob.wg.keepalive.to_string(),
            nb.wg.keepalive.to_string(),
        ),
        (
            "Mode",
            ob.wg.mode.as_str().to_string(),
            nb.wg.mode.as_str().to_string(),
        ),
        // Said to differ, never shown.
        (
            "PSK",
            if ob.wg.psk.is_some() { "set" } else { "unset" }.to_string(),
            if ob.wg.psk == nb.wg.psk {
                if ob.wg.psk.is_some() { "set" } else { "unset" }
            } else if nb.wg.psk.is_some() {
                "another"
            } else {
                "unset"
            }
            .to_string(),
        ),
    ];
    let mut out: Vec<String> = fields
        .iter()
        .filter(|(_, a, b)| a != b)
        .map(|(name, a, b)| format!("{name} {a} -> {b}"))
        .collect();
    if out.is_empty() {
        // SubnetMin/SubnetMax.
        out.push("the subnet range".into());
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = NetConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        let f = c.ipv4.unwrap();
        assert_eq!(f.subnet_len, 24);
        assert_eq!(f.subnet_min.to_string(), "10.244.1.0");
        assert_eq!(f.subnet_max.to_string(), "10.244.255.0");
        assert_eq!(c.backend.kind, BackendType::Vxlan);
        assert_eq!(c.backend.vni, 1);
        let small =
            NetConfig::parse(r#"{"Network":"10.1.0.0/26","Backend":{"Type":"host-gw"}}"#).unwrap();
        assert_eq!(small.ipv4.unwrap().subnet_len, 28);
        assert_eq!(small.backend.kind, BackendType::HostGw);
        let udp =
            NetConfig::parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp"}}"#).unwrap();
        assert_eq!(udp.backend.port, 8285);
        let zero =
            NetConfig::parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp","Port":0}}"#)
                .unwrap();
        assert_eq!(
            zero.backend.port, 8285,
            "Port 0 is the default, as upstream"
        );
        let v6 = NetConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:244::/56"}"#,
        )
        .unwrap();
        assert_eq!(v6.ipv6.unwrap().subnet_len, 64);
    }

    #[test]
    fn errors_name_the_field() {
        let err = |t: &str| NetConfig::parse(t).unwrap_err();
        assert!(err(r#"{}"#).starts_with("Network"));
        assert!(err(r#"{"Network":"10.1.0.0/29"}"#).contains("too small"));
        assert!(err(r#"{"Network":"10.1.0.5/16"}"#).contains("host bits"));
        assert!(err(r#"{"Network":"10.1.0.0/16","SubnetLen":31}"#).contains("subnet length"));
        assert!(err(r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.0.7"}"#).contains("SubnetMin"));
        assert!(
            err(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"ipsec"}}"#).contains("Backend.Type")
        );
        assert!(err(r#"{"Network":"10.1.0.0/16","Backend":{"VNI":"x"}}"#).contains("Backend.VNI"));
        assert!(err(r#"{"Network":"10.1.0.0/16","EnableIPv6":true}"#).starts_with("IPv6Network"));
    }

    #[test]
    fn the_whole_address_space_is_a_network_like_any_other() {
        let v6 = NetConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"::/0","IPv6SubnetLen":64}"#,
        )
        .unwrap()
        .ipv6
        .unwrap();
        assert_eq!(v6.subnet_min.to_string(), "0:0:0:1::");
        assert_eq!(v6.subnet_max.to_string(), "ffff:ffff:ffff:ffff::");
        let v4 = NetConfig::parse(r#"{"Network":"0.0.0.0/0"}"#)
            .unwrap()
            .ipv4
            .unwrap();
        assert_eq!(v4.subnet_max.to_string(), "255.255.255.0");
    }

    #[test]
    fn candidate_subnets() {
        let c = NetConfig::parse(r#"{"Network":"10.1.0.0/22","SubnetLen":24}"#).unwrap();
        let all: Vec<String> = c.ipv4.unwrap().subnets().map(|s| s.to_string()).collect();
        assert_eq!(all, ["10.1.1.0/24", "10.1.2.0/24", "10.1.3.0/24"]);
    }
}
