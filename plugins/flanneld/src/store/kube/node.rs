//! Node objects as leases: a Node that flannel manages (its
//! `kube-subnet-manager` annotation says `true`) with a pod CIDR is a lease
//! whose key is its pod CIDR(s) and whose attributes are its annotations,
//! as upstream reads them. Every Node is input from outside: one that is
//! not a lease says why, and nothing here panics.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::slim::{Node, NodeSpec};
use ipnetwork::IpNetwork;
use netkit::link::parse_mac;
use serde_json::Value;

use super::annotations::Annotations;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::store::Hints;

/// The address families the network config enables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

/// A Node's pod CIDRs: `spec.podCIDRs` (one per family), else
/// `spec.podCIDR`.
pub fn pod_cidrs(
    spec: Option<&NodeSpec>,
) -> Result<(Option<IpNetwork>, Option<IpNetwork>), String> {
    let Some(spec) = spec else {
        return Ok((None, None));
    };
    let list: Vec<&String> = match spec.pod_cidrs.as_deref() {
        Some(l) if !l.is_empty() => l.iter().collect(),
        _ => spec.pod_cidr.iter().collect(),
    };
    if list.len() > 2 {
        return Err(format!(
            "it has {} pod CIDRs (at most one IPv4 and one IPv6)",
            list.len()
        ));
    }
    let (mut v4, mut v6) = (None, None);
    for text in list {
        let n: IpNetwork = text
            .parse()
            .map_err(|e| format!("its pod CIDR {text:?} is not a CIDR ({e})"))?;
        let n = IpNetwork::new(n.network(), n.prefix()).map_err(|e| e.to_string())?;
        let slot = if n.is_ipv4() { &mut v4 } else { &mut v6 };
        if slot.replace(n).is_some() {
            return Err(format!("it has two pod CIDRs of one family ({text})"));
        }
    }
    Ok((v4, v6))
}

fn annotations(node: &Node) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    node.metadata.annotations.as_ref().unwrap_or(&EMPTY)
}

/// Backend data as upstream writes it: a JSON document as a string;
/// absent or `null` is none.
fn backend_data(text: Option<&String>, key: &str) -> Result<Option<Value>, String> {
    match text.map(String::as_str) {
        None | Some("null") | Some("") => Ok(None),
        Some(t) => serde_json::from_str::<Value>(t)
            .map(Some)
            .map_err(|e| format!("its {key} is not JSON ({e})")),
    }
}

/// The Node's lease, or why it is not one.
pub fn lease_of(node: &Node, ann: &Annotations, families: Families) -> Result<Lease, String> {
    let a = annotations(node);
    if a.get(&ann.managed).map(String::as_str) != Some("true") {
        return Err(format!(
            "it is not managed by a flannel kube subnet manager (no {}=true annotation)",
            ann.managed
        ));
    }
    let (v4, v6) = pod_cidrs(node.spec.as_ref())?;
    let missing = |family: &str| format!("it has no {family} pod CIDR");
    let ipv4 = match families.v4 {
        true => Some(v4.ok_or_else(|| missing("IPv4"))?),
        false => None,
    };
    let ipv6 = match families.v6 {
        true => Some(v6.ok_or_else(|| missing("IPv6"))?),
        false => None,
    };
    let public_ip = match (families.v4, a.get(&ann.public_ip)) {
        (false, _) => None,
        (true, None) => return Err(format!("it has no {} annotation", ann.public_ip)),
        (true, Some(t)) => Some(
            t.parse::<Ipv4Addr>()
                .map_err(|_| format!("its {} {t:?} is not an IPv4 address", ann.public_ip))?,
        )
        .filter(|ip| !ip.is_unspecified()),
    };
    let public_ipv6 = match (families.v6, a.get(&ann.public_ipv6)) {
        (false, _) => None,
        (true, None) => return Err(format!("it has no {} annotation", ann.public_ipv6)),
        (true, Some(t)) => Some(
            t.parse::<Ipv6Addr>()
                .map_err(|_| format!("its {} {t:?} is not an IPv6 address", ann.public_ipv6))?,
        ),
    };
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6,
        backend_type: a.get(&ann.backend_type).cloned().unwrap_or_default(),
        backend_data: match families.v4 {
            true => backend_data(a.get(&ann.backend_data), &ann.backend_data)?,
            false => None,
        },
        backend_v6_data: match families.v6 {
            true => backend_data(a.get(&ann.backend_v6_data), &ann.backend_v6_data)?,
            false => None,
        },
    };
    Ok(Lease {
        key: SubnetKey { ipv4, ipv6 },
        attrs,
        expires: None,
        rev: node
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

/// What an earlier run published and a person set on this node.
pub fn stored(node: &Node, ann: &Annotations) -> Hints {
    let a = annotations(node);
    let mac = |key: &str| {
        let v: Value = serde_json::from_str(a.get(key)?).ok()?;
        parse_mac(v.get("VtepMAC")?.as_str()?).filter(|m| m[0] & 1 == 0 && *m != [0; 6])
    };
    Hints {
        public_ip: a.get(&ann.node_public_ip).and_then(|t| t.parse().ok()),
        public_ipv6: a.get(&ann.node_public_ipv6).and_then(|t| t.parse().ok()),
        mac: mac(&ann.backend_data),
        mac6: mac(&ann.backend_v6_data),
    }
}

fn json(v: &Option<Value>) -> String {
    v.as_ref()
        .map_or_else(|| "null".to_string(), Value::to_string)
}

/// The annotations this node publishes, as upstream writes them for the
/// same lease (the `*-overwrite` ones, when a person set them, win).
pub fn published(attrs: &LeaseAttrs, ann: &Annotations, node: &Node) -> BTreeMap<String, String> {
    let a = annotations(node);
    let overwrite = |key: &str| a.get(key).filter(|v| !v.is_empty()).cloned();
    let vxlan = attrs.backend_type == "vxlan";
    let mut out = BTreeMap::new();
    out.insert(ann.backend_type.clone(), attrs.backend_type.clone());
    if !vxlan || attrs.backend_data.is_some() {
        out.insert(ann.backend_data.clone(), json(&attrs.backend_data));
        let ip = attrs.public_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string();
        out.insert(
            ann.public_ip.clone(),
            overwrite(&ann.public_ip_overwrite).unwrap_or(ip),
        );
    }
    let v6 = match vxlan {
        true => attrs.backend_v6_data.is_some(),
        false => attrs.public_ipv6.is_some(),
    };
    if let (true, Some(ip6)) = (v6, attrs.public_ipv6) {
        out.insert(ann.backend_v6_data.clone(), json(&attrs.backend_v6_data));
        out.insert(
            ann.public_ipv6.clone(),
            overwrite(&ann.public_ipv6_overwrite).unwrap_or(ip6.to_string()),
        );
    }
    out.insert(ann.managed.clone(), "true".into());
    out
}

/// The published annotations the node does not hold yet (or holds with
/// another value): what a patch must set.
pub fn to_patch(node: &Node, want: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let a = annotations(node);
    want.into_iter()
        .filter(|(k, v)| a.get(k) != Some(v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ann() -> Annotations {
        Annotations::new("flannel.alpha.coreos.com").unwrap()
    }

    fn node(annotations: &[(&str, &str)], cidrs: &[&str]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                resource_version: Some("42".into()),
                annotations: (!annotations.is_empty()).then(|| {
                    annotations
                        .iter()
                        .map(|(k, v)| (format!("flannel.alpha.coreos.com/{k}"), v.to_string()))
                        .collect()
                }),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidrs.first().map(|c| c.to_string()),
                pod_cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()),
            }),
        }
    }

    const V4: Families = Families {
        v4: true,
        v6: false,
    };
    const DUAL: Families = Families { v4: true, v6: true };
    const MAC4: &str = r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#;
    const MAC6: &str = r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e4"}"#;

    fn upstream_dual() -> Node {
        node(
            &[
                ("kube-subnet-manager", "true"),
                ("backend-type", "vxlan"),
                ("backend-data", MAC4),
                ("backend-v6-data", MAC6),
                ("public-ip", "192.168.1.2"),
                ("public-ipv6", "fd00::2"),
            ],
            &["10.244.2.0/24", "fd00:244:0:2::/64"],
        )
    }

    #[test]
    fn an_upstream_node_is_a_lease() {
        let l = lease_of(&upstream_dual(), &ann(), DUAL).unwrap();
        assert_eq!(l.key.to_string(), "10.244.2.0-24&fd00:244:0:2::-64");
        assert_eq!(l.attrs.public_ip, Some("192.168.1.2".parse().unwrap()));
        assert_eq!(l.attrs.public_ipv6, Some("fd00::2".parse().unwrap()));
        assert_eq!(
            l.attrs.backend_data.unwrap()["VtepMAC"],
            "12:c6:65:89:b4:e3"
        );
        assert_eq!(
            l.attrs.backend_v6_data.unwrap()["VtepMAC"],
            "12:c6:65:89:b4:e4"
        );
        assert_eq!(l.rev, 42);
        // An IPv4 network reads the IPv4 half only.
        let l = lease_of(&upstream_dual(), &ann(), V4).unwrap();
        assert_eq!(l.key.to_string(), "10.244.2.0-24");
        assert!(l.attrs.backend_v6_data.is_none() && l.attrs.public_ipv6.is_none());
    }

    #[test]
    fn any_node_is_input_from_outside() {
        let cases: Vec<(Node, &str)> = vec![
            (node(&[], &["10.244.3.0/24"]), "not managed"),
            (
                node(&[("kube-subnet-manager", "false")], &["10.244.3.0/24"]),
                "not managed",
            ),
            (
                node(&[("kube-subnet-manager", "true")], &[]),
                "no IPv4 pod CIDR",
            ),
            (
                node(
                    &[("kube-subnet-manager", "true"), ("public-ip", "1.2.3.4")],
                    &["x"],
                ),
                "not a CIDR",
            ),
            (
                node(
                    &[("kube-subnet-manager", "true"), ("public-ip", "1.2.3.4")],
                    &["10.0.1.0/24", "10.0.2.0/24"],
                ),
                "two pod CIDRs",
            ),
            (
                node(&[("kube-subnet-manager", "true")], &["10.244.3.0/24"]),
                "no flannel.alpha.coreos.com/public-ip",
            ),
            (
                node(
                    &[("kube-subnet-manager", "true"), ("public-ip", "nope")],
                    &["10.244.3.0/24"],
                ),
                "not an IPv4",
            ),
            (
                node(
                    &[
                        ("kube-subnet-manager", "true"),
                        ("public-ip", "1.2.3.4"),
                        ("backend-data", "{x"),
                    ],
                    &["10.244.3.0/24"],
                ),
                "not JSON",
            ),
        ];
        for (n, why) in cases {
            let e = lease_of(&n, &ann(), V4).unwrap_err();
            assert!(e.contains(why), "{e} (wanted {why:?})");
        }
        let no_spec = Node {
            spec: None,
            ..node(&[("kube-subnet-manager", "true")], &[])
        };
        assert!(lease_of(&no_spec, &ann(), V4).is_err());
    }

    #[test]
    fn what_a_node_publishes_is_upstreams_and_only_changes_are_patched() {
        let attrs = lease_of(&upstream_dual(), &ann(), DUAL).unwrap().attrs;
        let fresh = node(&[], &["10.244.2.0/24", "fd00:244:0:2::/64"]);
        let want = published(&attrs, &ann(), &fresh);
        let k = |s: &str| format!("flannel.alpha.coreos.com/{s}");
        assert_eq!(want[&k("backend-data")], MAC4);
        assert_eq!(want[&k("backend-v6-data")], MAC6);
        assert_eq!(want[&k("public-ip")], "192.168.1.2");
        assert_eq!(want[&k("public-ipv6")], "fd00::2");
        assert_eq!(want[&k("kube-subnet-manager")], "true");
        assert_eq!(want.len(), 6);
        // A node already as published needs no patch.
        assert!(to_patch(&upstream_dual(), want.clone()).is_empty());
        assert_eq!(to_patch(&fresh, want).len(), 6);
        // A person's overwrite is what is published.
        let natted = node(
            &[("public-ip-overwrite", "203.0.113.9")],
            &["10.244.2.0/24"],
        );
        let want = published(&attrs, &ann(), &natted);
        assert_eq!(want[&k("public-ip")], "203.0.113.9");
        // host-gw: no data, upstream's "null".
        let hg = LeaseAttrs {
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
            ..attrs
        };
        let want = published(&hg, &ann(), &fresh);
        assert_eq!(want[&k("backend-data")], "null");
        assert_eq!(want[&k("backend-v6-data")], "null");
    }

    #[test]
    fn an_earlier_runs_macs_and_a_persons_addresses_are_read_back() {
        let mut n = upstream_dual();
        n.metadata.annotations.as_mut().unwrap().insert(
            "flannel.alpha.coreos.com/node-public-ip".into(),
            "203.0.113.7".into(),
        );
        let s = stored(&n, &ann());
        assert_eq!(s.mac, Some([0x12, 0xc6, 0x65, 0x89, 0xb4, 0xe3]));
        assert_eq!(s.mac6, Some([0x12, 0xc6, 0x65, 0x89, 0xb4, 0xe4]));
        assert_eq!(s.public_ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(stored(&node(&[], &[]), &ann()), Hints::default());
    }
}
