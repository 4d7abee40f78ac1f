//! Command line flags compatible with upstream flanneld (`--flag value`,
//! `--flag=value`, `-flag`; booleans bare or `=true|false`), each also read
//! from `FLANNELD_<FLAG>` (upper case, `-` as `_`) when not given.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    pub etcd_cafile: Option<String>,
    pub etcd_certfile: Option<String>,
    pub etcd_keyfile: Option<String>,
    pub etcd_username: Option<String>,
    pub etcd_password: Option<String>,
    /// The embedded store's directory: run with no server at all.
    pub store_dir: Option<PathBuf>,
    /// The Kubernetes API is the store: the node's subnet is its Node's
    /// pod CIDR, peers are the other Nodes (`--kube-subnet-mgr`).
    pub kube_subnet_mgr: bool,
    pub kube_api_url: Option<String>,
    pub kubeconfig_file: Option<PathBuf>,
    pub kube_annotation_prefix: String,
    /// The network config in kube mode (a file, not a store key).
    pub net_config_path: PathBuf,
    /// Kube mode: set the Node's NetworkUnavailable condition to False
    /// once the data plane is up.
    pub set_node_network_unavailable: bool,
    pub ifaces: Vec<String>,
    pub iface_regex: Vec<String>,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub subnet_file: PathBuf,
    pub renew_margin_minutes: u64,
    /// Lease time in seconds (upstream's is fixed at 24 h; shorter leases
    /// are for labs and tests of renewal).
    pub lease_ttl_seconds: u64,
    /// A peer missing from a full listing of the store (not deleted, not
    /// expired: the store may have come back empty) is removed only after
    /// this many seconds, so agents can re-register meanwhile.
    pub peer_grace_seconds: u64,
    /// Seconds between full comparisons of the kernel with the peers (a
    /// safety net; changes are applied as they are reported), jittered.
    pub full_resync_seconds: u64,
    pub ip_masq: bool,
    pub iptables_forward_rules: bool,
    /// The udp backend uses the kernel's offloads (TUN super-packets,
    /// UDP segmentation and coalescing) where it has them.
    pub udp_offload: bool,
    pub healthz_ip: String,
    pub healthz_port: u16,
    /// Upstream's klog verbosity (`-v=N`): debug lines show from 4
    /// (`log::DEBUG_VERBOSITY`); errors, warnings and info always.
    pub log_level: u32,
    pub version: bool,
    pub help: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            etcd_endpoints: vec![
                "http://127.0.0.1:4001".into(),
                "http://127.0.0.1:2379".into(),
            ],
            etcd_prefix: "/coreos.com/network".into(),
            etcd_cafile: None,
            etcd_certfile: None,
            etcd_keyfile: None,
            etcd_username: None,
            etcd_password: None,
            store_dir: None,
            kube_subnet_mgr: false,
            kube_api_url: None,
            kubeconfig_file: None,
            kube_annotation_prefix: "flannel.alpha.coreos.com".into(),
            net_config_path: PathBuf::from("/etc/kube-flannel/net-conf.json"),
            set_node_network_unavailable: true,
            ifaces: Vec::new(),
            iface_regex: Vec::new(),
            public_ip: None,
            public_ipv6: None,
            subnet_file: PathBuf::from("/run/flannel/subnet.env"),
            renew_margin_minutes: 60,
            lease_ttl_seconds: 24 * 3600,
            peer_grace_seconds: 60,
            full_resync_seconds: 300,
            ip_masq: false,
            iptables_forward_rules: true,
            udp_offload: true,
            healthz_ip: "0.0.0.0".into(),
            healthz_port: 0,
            log_level: 0,
            version: false,
            help: false,
        }
    }
}

const BOOLS: &[&str] = &[
    "ip-masq",
    "iptables-forward-rules",
    "udp-offload",
    "kube-subnet-mgr",
    "set-node-network-unavailable",
    "version",
];
/// Flags taken from the command line only.
const CLI_ONLY: &[&str] = &["v"];
/// Every flag that can also come from the environment.
const FLAGS: &[&str] = &[
    "etcd-endpoints",
    "etcd-prefix",
    "etcd-cafile",
    "etcd-certfile",
    "etcd-keyfile",
    "etcd-username",
    "etcd-password",
    "store-dir",
    "kube-subnet-mgr",
    "kube-api-url",
    "kubeconfig-file",
    "kube-annotation-prefix",
    "net-config-path",
    "set-node-network-unavailable",
    "iface",
    "iface-regex",
    "public-ip",
    "public-ipv6",
    "subnet-file",
    "subnet-lease-renew-margin",
    "subnet-lease-ttl",
    "peer-grace-period",
    "full-resync-period",
    "ip-masq",
    "iptables-forward-rules",
    "udp-offload",
    "healthz-ip",
    "healthz-port",
];

/// The flags of a command line in order, each with its value
/// (`--flag value`, `--flag=value`, `-flag` as `--flag`; a flag `is_bool`
/// says takes no value is "true" alone); `None` when help was asked.
/// `see` names where the usage is, for the errors.
pub fn command_line(
    args: &[String],
    known: impl Fn(&str) -> bool,
    is_bool: impl Fn(&str) -> bool,
    see: &str,
) -> Result<Option<Vec<(String, String)>>, String> {
    let mut out = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(format!("unexpected argument {arg:?} (see {see})"));
        };
        let (flag, inline) = match body.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (body, None),
        };
        if flag == "help" || flag == "h" {
            return Ok(None);
        }
        if !known(flag) {
            return Err(format!("unknown flag --{flag} (see {see})"));
        }
        let value = match inline {
            Some(v) => v,
            None if is_bool(flag) => "true".to_string(),
            None => rest
                .next()
                .cloned()
                .ok_or_else(|| format!("flag --{flag} needs a value"))?,
        };
        out.push((flag.to_string(), value));
    }
    Ok(Some(out))
}

fn bool_value(flag: &str, v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("invalid boolean value {v:?} for --{flag}")),
    }
}

impl Options {
    fn set(&mut self, flag: &str, value: &str) -> Result<(), String> {
        let parse_err = |what: &str| format!("invalid value {value:?} for --{flag}: {what}");
        let some = || Some(value.to_string());
        match flag {
            "etcd-endpoints" => {
                self.etcd_endpoints = value
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            "etcd-prefix" => self.etcd_prefix = value.to_string(),
            "etcd-cafile" => self.etcd_cafile = some(),
            "etcd-certfile" => self.etcd_certfile = some(),
            "etcd-keyfile" => self.etcd_keyfile = some(),
            "etcd-username" => self.etcd_username = some(),
            "etcd-password" => self.etcd_password = some(),
            "store-dir" => self.store_dir = Some(PathBuf::from(value)),
            "kube-subnet-mgr" => self.kube_subnet_mgr = bool_value(flag, value)?,
            "kube-api-url" => self.kube_api_url = some(),
            "kubeconfig-file" => self.kubeconfig_file = Some(PathBuf::from(value)),
            "kube-annotation-prefix" => self.kube_annotation_prefix = value.to_string(),
            "net-config-path" => self.net_config_path = PathBuf::from(value),
            "set-node-network-unavailable" => {
                self.set_node_network_unavailable = bool_value(flag, value)?
            }
            "iface" => self.ifaces.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            ),
            "iface-regex" => self.iface_regex.push(value.to_string()),
            "public-ip" => {
                self.public_ip = Some(
                    value
                        .parse()
                        .map_err(|_| parse_err("not an IPv4 address"))?,
                )
            }
            "public-ipv6" => {
                self.public_ipv6 = Some(
                    value
                        .parse()
                        .map_err(|_| parse_err("not an IPv6 address"))?,
                )
            }
            "subnet-file" => self.subnet_file = PathBuf::from(value),
            "subnet-lease-renew-margin" => {
                let m: u64 = value
                    .parse()
                    .map_err(|_| parse_err("not a number of minutes"))?;
                if !(1..=1439).contains(&m) {
                    return Err(parse_err("must be between 1 and 1439 minutes"));
                }
                self.renew_margin_minutes = m;
            }
            "subnet-lease-ttl" => {
                self.lease_ttl_seconds = value
                    .parse()
                    .map_err(|_| parse_err("not a number of seconds"))?;
            }
            "peer-grace-period" => {
                self.peer_grace_seconds = value
                    .parse()
                    .map_err(|_| parse_err("not a number of seconds"))?;
            }
            "full-resync-period" => {
                let s: u64 = value
                    .parse()
                    .map_err(|_| parse_err("not a number of seconds"))?;
                if s == 0 {
                    return Err(parse_err("must be at least 1 second"));
                }
                self.full_resync_seconds = s;
            }
            "ip-masq" => self.ip_masq = bool_value(flag, value)?,
            "iptables-forward-rules" => self.iptables_forward_rules = bool_value(flag, value)?,
            "udp-offload" => self.udp_offload = bool_value(flag, value)?,
            "healthz-ip" => self.healthz_ip = value.to_string(),
            "healthz-port" => {
                self.healthz_port = value.parse().map_err(|_| parse_err("not a port number"))?
            }
            "version" => self.version = bool_value(flag, value)?,
            "v" => {
                self.log_level = value
                    .parse()
                    .map_err(|_| parse_err("not a log level (a number, as upstream's -v=N)"))?
            }
            other => return Err(format!("unknown flag --{other} (see --help)")),
        }
        Ok(())
    }

    /// Parses `args` (without the program name), then fills what was not
    /// given from `env` (`FLANNELD_*`).
    pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Options, String> {
        let mut opts = Options::default();
        let known = |f: &str| FLAGS.contains(&f) || BOOLS.contains(&f) || CLI_ONLY.contains(&f);
        let Some(flags) = command_line(args, known, |f| BOOLS.contains(&f), "--help")? else {
            opts.help = true;
            return Ok(opts);
        };
        let mut given: Vec<String> = Vec::new();
        for (flag, value) in flags {
            opts.set(&flag, &value)?;
            given.push(flag);
        }
        for flag in FLAGS {
            if given.iter().any(|g| g == *flag) {
                continue;
            }
            let var = format!("FLANNELD_{}", flag.to_uppercase().replace('-', "_"));
            if let Some(v) = env(&var).filter(|v| !v.is_empty()) {
                opts.set(flag, &v).map_err(|e| format!("{var}: {e}"))?;
            }
        }
        Ok(opts)
    }
}

pub fn usage() -> String {
    "usage: flanneld [flags]\n\
     \x20 --store-dir DIR                 embedded lease store (no server); the network config is DIR/config\n\
     \x20 --kube-subnet-mgr               the Kubernetes API as the store: this Node's pod CIDR, peers from Nodes\n\
     \x20 --kube-api-url URL, --kubeconfig-file FILE  the API server (default: in-cluster config)\n\
     \x20 --kube-annotation-prefix P      Node annotations' prefix (default flannel.alpha.coreos.com)\n\
     \x20 --net-config-path FILE          kube mode's network config (default /etc/kube-flannel/net-conf.json)\n\
     \x20 --set-node-network-unavailable=BOOL  NetworkUnavailable=False once up (default true)\n\
     \x20 --etcd-endpoints URLS           etcd v3 endpoints (comma-separated)\n\
     \x20 --etcd-prefix PREFIX            key prefix (default /coreos.com/network)\n\
     \x20 --etcd-cafile/--etcd-certfile/--etcd-keyfile FILE, --etcd-username/--etcd-password S\n\
     \x20 --iface NAME|IP (repeatable)    interface for inter-host traffic (default: the default route's)\n\
     \x20 --iface-regex RE (repeatable)   the first interface whose address, then name, matches\n\
     \x20 --public-ip IP, --public-ipv6 IP address other hosts reach this one at\n\
     \x20 --subnet-file FILE              default /run/flannel/subnet.env\n\
     \x20 --subnet-lease-renew-margin M   minutes before expiry to renew (1-1439, default 60)\n\
     \x20 --subnet-lease-ttl S            lease time in seconds (default 86400, as upstream)\n\
     \x20 --peer-grace-period S          a peer missing from a re-list of the store (not deleted) is\n\
     \x20                                removed after S seconds (default 60): time to re-register\n\
     \x20 --full-resync-period S         full comparison of the kernel with the store every S seconds\n\
     \x20                                (default 300, jittered; changes are applied as they happen)\n\
     \x20 --ip-masq                       masquerade traffic leaving the cluster network\n\
     \x20 --iptables-forward-rules=BOOL   accept forwarding of cluster traffic (default true)\n\
     \x20 --udp-offload=BOOL             udp backend: TUN super-packets, UDP GSO/GRO (default true;\n\
     \x20                                false: one packet per datagram, for comparison)\n\
     \x20 --healthz-ip IP --healthz-port N  /healthz, /readyz and /metrics (port 0: off)\n\
     \x20 -v N                            log verbosity: debug lines from 4 (errors, warnings, info always)\n\
     \x20 --version, --help\n\
     every flag is also read from FLANNELD_<FLAG> (e.g. FLANNELD_IFACE)\n\
     flanneld install-cni --help: put the CNI plugins and the conflist on the node (an init container)"
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Options::parse(&args, |_| None)
    }

    #[test]
    fn forms() {
        let o = parse(&[
            "--iface",
            "eth0",
            "-iface=eth1",
            "--ip-masq",
            "--iptables-forward-rules=false",
            "--healthz-port=8081",
            "--subnet-lease-renew-margin",
            "30",
        ])
        .unwrap();
        assert_eq!(o.ifaces, ["eth0", "eth1"]);
        assert!(o.ip_masq && !o.iptables_forward_rules);
        assert_eq!((o.healthz_port, o.renew_margin_minutes), (8081, 30));
    }

    #[test]
    fn environment_fills_what_was_not_given() {
        let env = |k: &str| match k {
            "FLANNELD_IFACE" => Some("eth9".to_string()),
            "FLANNELD_IP_MASQ" => Some("true".to_string()),
            "FLANNELD_PUBLIC_IP" => Some("192.0.2.7".to_string()),
            _ => None,
        };
        let o = Options::parse(&["--iface".to_string(), "eth0".to_string()], env).unwrap();
        assert_eq!(o.ifaces, ["eth0"]);
        assert!(o.ip_masq);
        assert_eq!(o.public_ip, Some("192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn errors() {
        assert!(
            parse(&["--nope"])
                .unwrap_err()
                .contains("unknown flag --nope")
        );
        assert!(parse(&["--iface"]).unwrap_err().contains("needs a value"));
        assert!(
            parse(&["--subnet-lease-renew-margin=0"])
                .unwrap_err()
                .contains("1439")
        );
        assert!(
            parse(&["--public-ip=foo"])
                .unwrap_err()
                .contains("--public-ip")
        );
        assert!(parse(&["--ip-masq=maybe"]).unwrap_err().contains("boolean"));
    }

    #[test]
    fn upstream_verbosity_and_help() {
        let o = parse(&["-v=2", "--iface", "eth0"]).unwrap();
        assert_eq!((o.log_level, o.version), (2, false));
        assert_eq!(parse(&["-v", "3"]).unwrap().log_level, 3);
        assert!(parse(&["-v=x"]).unwrap_err().contains("log level"));
        assert!(parse(&["--help"]).unwrap().help);
        assert!(parse(&["--version"]).unwrap().version);
    }
}
