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
        Ok(env)
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
}
