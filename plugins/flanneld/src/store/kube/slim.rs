//! A Node as the agent reads it: its name, resource version, annotations
//! and pod CIDRs. Everything else a kubelet reports (the status with its
//! images and conditions, labels, managed fields) is skipped while the
//! JSON is parsed, never built: a listing of thousands of Nodes then costs
//! a fraction of the memory and time the full objects would.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

/// The Node fields flannel reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Node {
    #[serde(default, deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<NodeSpec>,
}

/// The pod CIDRs of a Node's spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = Meta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        resource_version: m.resource_version,
        uid: m.uid,
        annotations: m.annotations,
        ..ObjectMeta::default()
    })
}

impl k8s_openapi::Resource for Node {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Node";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "nodes";
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::Metadata for Node {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_flannel_reads_is_kept_and_the_rest_skipped() {
        let text = r#"{"apiVersion":"v1","kind":"Node",
            "metadata":{"name":"n1","uid":"u1","resourceVersion":"7",
                "labels":{"a":"b"},"annotations":{"k":"v"},
                "managedFields":[{"manager":"kubelet","fieldsV1":{"f:status":{}}}]},
            "spec":{"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24"],
                "taints":[{"key":"x","effect":"NoSchedule"}]},
            "status":{"images":[{"names":["i"],"sizeBytes":1}],"conditions":[]}}"#;
        let n: Node = serde_json::from_str(text).unwrap();
        assert_eq!(n.metadata.name.as_deref(), Some("n1"));
        assert_eq!(n.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(n.metadata.annotations.unwrap()["k"], "v");
        assert!(n.metadata.labels.is_none() && n.metadata.managed_fields.is_none());
        let spec = n.spec.unwrap();
        assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.1.0/24"));
        assert_eq!(spec.pod_cidrs.unwrap(), ["10.244.1.0/24"]);
    }

    #[test]
    fn missing_and_null_fields_are_none() {
        let n: Node =
            serde_json::from_str(r#"{"metadata":{"annotations":null},"spec":null}"#).unwrap();
        assert!(n.metadata.name.is_none() && n.metadata.annotations.is_none());
        assert!(n.spec.is_none());
        let n: Node = serde_json::from_str(r#"{"metadata":{"name":"x"},"spec":{}}"#).unwrap();
        assert!(n.spec.unwrap().pod_cidrs.is_none());
    }
}
