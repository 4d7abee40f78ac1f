//! subnet.env, written by the node agent: the cluster networks, this node's
//! subnets, the MTU and whether the agent masquerades.

use std::path::Path;

use ipnetwork::IpNetwork;

/// What the agent wrote.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubnetEnv {
    pub networks: Vec<IpNetwork>,
    pub ipv6_networks: Vec<IpNetwork>,
    /// This node's IPv4 subnet, as written (first usable address/prefix).
    pub subnet: Option<IpNetwork>,
    pub ipv6_subnet: Option<IpNetwork>,
    pub mtu: Option<u32>,
    pub ipmasq: Option<bool>,
}

/// Why subnet.env cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubnetEnvError {
    /// Not there or not readable: the agent has not written it yet.
    Unreadable(String),
    /// There, but a value is malformed or a key is missing.
    Invalid(String),
}

fn cidrs(key: &str, value: &str) -> Result<Vec<IpNetwork>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e| format!("{key}={value}: {s:?} is not a CIDR ({e})"))
        })
        .collect()
}

impl SubnetEnv {
    pub fn load(path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SubnetEnvError::Unreadable(format!(
                "failed to load flannel 'subnet.env' file {}: {e}. The node agent (flanneld) has not written it yet: check the flannel pod log for this node",
                path.display()
            ))
        })?;
        let env = Self::parse(&text)
            .map_err(|e| SubnetEnvError::Invalid(format!("{}: {e}", path.display())))?;
        env.require(path)?;
        env.consistent()
            .map_err(|e| SubnetEnvError::Invalid(format!("{}: {e}", path.display())))?;
        Ok(env)
    }

    /// The values agree with each other: each subnet lies in its family's
    /// network, and the MTU is one a link of that family can have. A file
    /// that says otherwise was not written by a working agent (or was
    /// edited), and pods configured from it would be unreachable.
    pub fn consistent(&self) -> Result<(), String> {
        let pairs = [
            (
                "FLANNEL_SUBNET",
                self.subnet,
                "FLANNEL_NETWORK",
                &self.networks,
            ),
            (
                "FLANNEL_IPV6_SUBNET",
                self.ipv6_subnet,
                "FLANNEL_IPV6_NETWORK",
                &self.ipv6_networks,
            ),
        ];
        for (skey, subnet, nkey, networks) in pairs {
            let (Some(subnet), false) = (subnet, networks.is_empty()) else {
                continue;
            };
            let inside = networks
                .iter()
                .any(|n| n.prefix() <= subnet.prefix() && n.contains(subnet.network()));
            if !inside {
                let list: Vec<String> = networks.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "{skey}={subnet} lies outside {nkey}={}",
                    list.join(",")
                ));
            }
        }
        if let Some(mtu) = self.mtu {
            // IPv6 needs 1280 on every link; IPv4 68.
            let min = if self.ipv6_subnet.is_some() { 1280 } else { 68 };
            if !(min..=65535).contains(&mtu) {
                return Err(format!(
                    "FLANNEL_MTU={mtu} is out of range ({min} to 65535)"
                ));
            }
        }
        Ok(())
    }

    /// Reads `KEY=VALUE` lines; unknown keys, blank lines and `#` comments
    /// are ignored.
    pub fn parse(text: &str) -> Result<SubnetEnv, String> {
        let mut env = SubnetEnv::default();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let one = |key: &str| -> Result<IpNetwork, String> {
                match value.contains('/') {
                    true => value
                        .parse()
                        .map_err(|e| format!("{key}={value} is not a CIDR ({e})")),
                    false => Err(format!("{key}={value} is not a CIDR (no prefix length)")),
                }
            };
            match key {
                "FLANNEL_NETWORK" => env.networks = cidrs(key, value)?,
                "FLANNEL_IPV6_NETWORK" => env.ipv6_networks = cidrs(key, value)?,
                "FLANNEL_SUBNET" => env.subnet = Some(one(key)?),
                "FLANNEL_IPV6_SUBNET" => env.ipv6_subnet = Some(one(key)?),
                "FLANNEL_MTU" => {
                    env.mtu = Some(
                        value
                            .parse()
                            .map_err(|_| format!("FLANNEL_MTU={value} is not a number"))?,
                    );
                }
                "FLANNEL_IPMASQ" => {
                    env.ipmasq = Some(match value {
                        "true" | "1" | "TRUE" | "True" => true,
                        "false" | "0" | "FALSE" | "False" => false,
                        _ => return Err(format!("FLANNEL_IPMASQ={value} is not true or false")),
                    });
                }
                _ => {}
            }
        }
        Ok(env)
    }

    /// An IPv4 or IPv6 network with its subnet, the MTU and IPMASQ.
    fn require(&self, path: &Path) -> Result<(), SubnetEnvError> {
        let v4 = !self.networks.is_empty() && self.subnet.is_some();
        let v6 = !self.ipv6_networks.is_empty() && self.ipv6_subnet.is_some();
        let mut missing = Vec::new();
        if !v4 && !v6 {
            for (present, key) in [
                (!self.networks.is_empty(), "FLANNEL_NETWORK"),
                (self.subnet.is_some(), "FLANNEL_SUBNET"),
                (!self.ipv6_networks.is_empty(), "FLANNEL_IPV6_NETWORK"),
                (self.ipv6_subnet.is_some(), "FLANNEL_IPV6_SUBNET"),
            ] {
                if !present {
                    missing.push(key);
                }
            }
        }
        if self.mtu.is_none() {
            missing.push("FLANNEL_MTU");
        }
        if self.ipmasq.is_none() {
            missing.push("FLANNEL_IPMASQ");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(SubnetEnvError::Invalid(format!(
                "{} is missing {}",
                path.display(),
                missing.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_and_lists() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.1.0.0/16,10.2.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n\
             FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n\
             FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n# comment\nOTHER=x\n",
        )
        .unwrap();
        assert_eq!(env.networks.len(), 2);
        assert_eq!(env.subnet.unwrap().to_string(), "10.1.17.1/24");
        assert_eq!(env.ipv6_subnet.unwrap().to_string(), "2001:cafe:42::1/64");
        assert_eq!((env.mtu, env.ipmasq), (Some(1472), Some(true)));
    }

    #[test]
    fn bad_values_are_named() {
        assert!(
            SubnetEnv::parse("FLANNEL_MTU=big")
                .unwrap_err()
                .contains("FLANNEL_MTU=big")
        );
        assert!(
            SubnetEnv::parse("FLANNEL_SUBNET=10.1.17.1")
                .unwrap_err()
                .contains("no prefix")
        );
        assert!(
            SubnetEnv::parse("FLANNEL_NETWORK=nope")
                .unwrap_err()
                .contains("nope")
        );
        assert!(
            SubnetEnv::parse("FLANNEL_IPMASQ=maybe")
                .unwrap_err()
                .contains("maybe")
        );
    }

    #[test]
    fn missing_keys_are_listed() {
        let env = SubnetEnv::parse("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_MTU=1450\n").unwrap();
        match env.require(Path::new("/run/flannel/subnet.env")) {
            Err(SubnetEnvError::Invalid(m)) => assert_eq!(
                m,
                "/run/flannel/subnet.env is missing FLANNEL_SUBNET, FLANNEL_IPV6_NETWORK, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let env = |text: &str| SubnetEnv::parse(text).unwrap().consistent();
        let ok = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        assert_eq!(env(ok), Ok(()));
        let outside = ok.replace("10.244.7.1/24", "10.245.7.1/24");
        assert!(
            env(&outside)
                .unwrap_err()
                .contains("lies outside FLANNEL_NETWORK")
        );
        let wider = ok.replace("10.244.7.1/24", "10.244.0.1/15");
        assert!(env(&wider).is_err(), "a subnet wider than the network");
        let v6 = "FLANNEL_IPV6_NETWORK=fd00:244::/56\nFLANNEL_IPV6_SUBNET=fd00:245::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        assert!(env(v6).unwrap_err().contains("FLANNEL_IPV6_SUBNET"));
        assert!(
            env(&ok.replace("1450", "40"))
                .unwrap_err()
                .contains("out of range")
        );
        assert!(env(&ok.replace("1450", "70000")).is_err());
        let v6_small = "FLANNEL_IPV6_NETWORK=fd00:244::/56\nFLANNEL_IPV6_SUBNET=fd00:244:0:7::1/64\nFLANNEL_MTU=1200\nFLANNEL_IPMASQ=true\n";
        assert!(env(v6_small).unwrap_err().contains("1280"));
    }
}
