//! subnet.env in upstream's exact format, written atomically.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use ipnetwork::IpNetwork;

use crate::lease::SubnetKey;
use crate::netconfig::NetConfig;

/// The subnet with its first usable address: `10.244.1.0/24` -> `10.244.1.1/24`.
fn first_host(n: IpNetwork) -> String {
    let next = match n.network() {
        std::net::IpAddr::V4(v4) => std::net::IpAddr::V4(u32::from(v4).wrapping_add(1).into()),
        std::net::IpAddr::V6(v6) => std::net::IpAddr::V6(u128::from(v6).wrapping_add(1).into()),
    };
    format!("{next}/{}", n.prefix())
}

pub fn render(config: &NetConfig, key: &SubnetKey, mtu: u32, ip_masq: bool) -> String {
    let mut out = String::new();
    if let (Some(f), Some(sn)) = (&config.ipv4, key.ipv4) {
        out.push_str(&format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\n",
            f.network,
            first_host(sn)
        ));
    }
    if let (Some(f), Some(sn)) = (&config.ipv6, key.ipv6) {
        out.push_str(&format!(
            "FLANNEL_IPV6_NETWORK={}\nFLANNEL_IPV6_SUBNET={}\n",
            f.network,
            first_host(sn)
        ));
    }
    out.push_str(&format!("FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ip_masq}\n"));
    out
}

/// The subnets of an earlier run, to ask for them again.
pub fn previous(path: &Path) -> Option<SubnetKey> {
    let text = fs::read_to_string(path).ok()?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse::<IpNetwork>().ok())
            .and_then(|n| IpNetwork::new(n.network(), n.prefix()).ok())
    };
    let key = SubnetKey {
        ipv4: get("FLANNEL_SUBNET="),
        ipv6: get("FLANNEL_IPV6_SUBNET="),
    };
    (key.ipv4.is_some() || key.ipv6.is_some()).then_some(key)
}

/// Temporary file and rename; the directory 0755 and the file 0644.
pub fn write(path: &Path, text: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    let tmp = path.with_extension("env.tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_format() {
        let c = NetConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"2001:cafe:42::/56"}"#,
        )
        .unwrap();
        let key = SubnetKey::parse("10.244.1.0-24&2001:cafe:42::-64").unwrap();
        assert_eq!(
            render(&c, &key, 1450, true),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }
}
