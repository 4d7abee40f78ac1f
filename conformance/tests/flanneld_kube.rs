//! flanneld's kube subnet manager (`--kube-subnet-mgr`) against a real
//! kube-apiserver (`conformance::kube`), with upstream's RBAC alone: the
//! agents run as the user of the service account `kube-flannel/flannel`,
//! which upstream's ClusterRoleBinding names. Nodes are made as a cluster
//! would have them (pod CIDRs, one annotation already); the agents learn
//! their Node from `NODE_NAME`.
//!
//! Where the Kubernetes binaries are absent, each test says SKIPPED and
//! returns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::time::Duration;

use conformance::cluster::Cluster;
use conformance::wait_for;
use serde_json::{Value, json};

const PREFIX: &str = "flannel.alpha.coreos.com/";

fn vxlan() -> Value {
    json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}})
}

/// Host `h`'s pod CIDR in these tests.
fn cidr(h: usize) -> Vec<String> {
    vec![format!("10.244.{}.0/24", 10 + h)]
}

fn annotation(node: &Value, suffix: &str) -> Option<String> {
    node["metadata"]["annotations"][format!("{PREFIX}{suffix}")]
        .as_str()
        .map(str::to_string)
}

/// Every pod reaches every other (within 10 s).
fn all_reach(c: &Cluster, pods: &[String]) {
    for (from, _) in pods.iter().enumerate() {
        for (to, target) in pods.iter().enumerate() {
            if from != to {
                assert!(
                    wait_for(Duration::from_secs(10), || c.reaches(from, 0, target)),
                    "host {from}'s pod cannot reach host {to}'s ({target}):\n{}",
                    c.log(from)
                );
            }
        }
    }
}

fn three_hosts(config: &Value) {
    let Some(mut c) = Cluster::prepare_kube(3, 1, config, cidr) else {
        return;
    };
    for h in 0..3 {
        c.start(h);
    }
    let backend = config["Backend"]["Type"].as_str().unwrap().to_string();
    for h in 0..3 {
        let env = c.subnet_env(h);
        assert!(
            env.contains(&format!("FLANNEL_SUBNET=10.244.{}.1/24\n", 10 + h)),
            "{env}"
        );
        let node = c.kube().node(&Cluster::node_name(h));
        assert_eq!(
            annotation(&node, "kube-subnet-manager").as_deref(),
            Some("true")
        );
        assert_eq!(annotation(&node, "backend-type"), Some(backend.clone()));
        assert_eq!(
            annotation(&node, "public-ip"),
            Some(c.hosts[h].underlay_ip.clone())
        );
        let data = annotation(&node, "backend-data").unwrap();
        if backend == "vxlan" {
            let mac = c.hosts[h].ns.ip(&["-j", "link", "show", "flannel.1"]);
            let mac: Value = serde_json::from_str(&mac).unwrap();
            assert_eq!(
                data,
                format!(
                    r#"{{"VNI":1,"VtepMAC":"{}"}}"#,
                    mac[0]["address"].as_str().unwrap()
                )
            );
        } else {
            assert_eq!(data, "null");
        }
        // The annotation a kubelet put there is kept.
        assert!(node["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"].is_string());
        // NetworkUnavailable False, as upstream sets it.
        let ok = wait_for(Duration::from_secs(5), || {
            let node = c.kube().node(&Cluster::node_name(h));
            node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|cond| {
                    cond["type"] == "NetworkUnavailable"
                        && cond["status"] == "False"
                        && cond["reason"] == "FlannelIsUp"
                        && cond["message"] == "Flannel is running on this node"
                })
        });
        assert!(
            ok,
            "no NetworkUnavailable=False on node {h}: {}",
            c.kube().node(&Cluster::node_name(h))
        );
    }
    let pods: Vec<String> = (0..3).map(|h| c.add_pod(h, 0)).collect();
    all_reach(&c, &pods);
}

#[test]
fn three_nodes_over_vxlan_reach_each_other_with_upstreams_annotations_and_condition() {
    three_hosts(&vxlan());
}

#[test]
fn three_nodes_over_host_gw_reach_each_other() {
    three_hosts(&json!({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}));
}
