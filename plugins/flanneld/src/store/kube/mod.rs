//! The Kubernetes API as the lease store (`--kube-subnet-mgr`), as
//! upstream's kube subnet manager: this node's subnet is its Node's pod
//! CIDR, its lease data are flannel's annotations on its Node (patched
//! through the `status` subresource, which upstream's RBAC allows), and
//! peers are the other Nodes that carry them, followed with one list and
//! watch (`feed`). The network config is a file (`--net-config-path`).
//!
//! Unlike upstream, a Node without a pod CIDR yet is waited for (on a
//! watch of that Node), not a reason to exit: the agent says so in its log
//! and on `/readyz`, and goes on the moment the CIDR is set.

mod annotations;
mod connect;
mod feed;
pub mod node;
pub mod slim;

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::json;
use slim::Node;
use tokio::runtime::Runtime;
use tokio_stream::StreamExt;

pub use annotations::Annotations;
use node::Families;

use super::alloc::AllocError;
use super::{Acquire, Hints, Sink, Store, StoreError, Written};
use crate::flags::Options;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::netconfig::{Family, NetConfig};

/// How long one call to the API server may take.
const CALL_WAIT: Duration = Duration::from_secs(15);
/// How long `acquire` waits on its Node's watch for a pod CIDR before it
/// answers "not yet" (and is called again).
const CIDR_WAIT: Duration = Duration::from_secs(10);

pub struct KubeStore {
    rt: Runtime,
    config: kube::Config,
    client: kube::Client,
    nodes: Api<Node>,
    /// This node's Node (learnt by [`KubeStore::find_node`]).
    name: String,
    ann: Annotations,
    net_config: PathBuf,
    set_network_unavailable: bool,
    /// Said (once, at once) that the pod CIDR is waited for; later calls
    /// wait on the Node's watch before they answer.
    waiting: bool,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("server", &self.config.cluster_url.to_string())
            .field("node", &self.name)
            .finish_non_exhaustive()
    }
}

fn kube_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Invalid(format!("kubernetes API: {what}: {e}"))
}

/// `call` within `wait`; what failed worded `<what>: <why>`.
async fn answered<T>(
    wait: Duration,
    what: &str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(wait, call).await {
        Ok(r) => r.map_err(|e| format!("{what}: {}", connect::describe(&e))),
        Err(_) => Err(format!("{what}: no answer in time")),
    }
}

/// `call` within [`CALL_WAIT`].
async fn within<T>(
    what: &str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, StoreError> {
    answered(CALL_WAIT, what, call)
        .await
        .map_err(|e| StoreError::Invalid(format!("kubernetes API: {e}")))
}

fn families(config: &NetConfig) -> Families {
    Families {
        v4: config.ipv4.is_some(),
        v6: config.ipv6.is_some(),
    }
}

/// A pod CIDR must lie inside the network of its family.
fn inside(
    family: &Option<Family>,
    cidr: Option<ipnetwork::IpNetwork>,
    name: &str,
    node: &str,
) -> Result<(), String> {
    match (family, cidr) {
        (Some(f), Some(c)) if f.network.prefix() <= c.prefix() && f.network.contains(c.ip()) => {
            Ok(())
        }
        (Some(f), Some(c)) => Err(format!(
            "node {node}'s {name} pod CIDR {c} is not inside the network config's {} (--net-config-path): fix one of them",
            f.network
        )),
        _ => Ok(()),
    }
}

impl KubeStore {
    /// The client as the flags say; what is wrong with them is an error
    /// (a retry would not help).
    pub fn new(opts: &Options) -> Result<KubeStore, StoreError> {
        let ann = Annotations::new(&opts.kube_annotation_prefix).map_err(StoreError::Invalid)?;
        connect::check_node_env()?;
        let rt = super::runtime()?;
        let config = rt.block_on(connect::config(opts))?;
        let client = rt
            .block_on(async { kube::Client::try_from(config.clone()) })
            .map_err(|e| kube_err("cannot make a client", e))?;
        Ok(KubeStore {
            rt,
            config,
            nodes: Api::all(client.clone()),
            client,
            name: String::new(),
            ann,
            net_config: opts.net_config_path.clone(),
            set_network_unavailable: opts.set_node_network_unavailable,
            waiting: false,
        })
    }

    /// Learns which Node this is (asking the API server when only the pod
    /// is known); an error is worth retrying.
    pub fn find_node(&mut self) -> Result<&str, StoreError> {
        if self.name.is_empty() {
            self.name = self.rt.block_on(connect::node_name(&self.client))?;
        }
        Ok(&self.name)
    }

    fn node(&self) -> Result<Node, StoreError> {
        let what = format!("cannot read node {}", self.name);
        self.rt.block_on(within(&what, self.nodes.get(&self.name)))
    }

    /// Waits (a while) for a change of this node after `rev`.
    fn wait_for_change(&self, rev: &str) -> Result<(), StoreError> {
        let params = WatchParams::default()
            .fields(&format!("metadata.name={}", self.name))
            .timeout(u32::try_from(CIDR_WAIT.as_secs()).unwrap_or(10));
        self.rt.block_on(async {
            let events = within("cannot watch this node", self.nodes.watch(&params, rev)).await?;
            let mut events = std::pin::pin!(events);
            let changed = tokio::time::timeout(CIDR_WAIT, async {
                while let Some(ev) = events.next().await {
                    if matches!(ev, Ok(WatchEvent::Modified(_) | WatchEvent::Added(_))) {
                        return;
                    }
                }
            });
            let _ = changed.await;
            Ok(())
        })
    }

    /// This node's subnets from its Node, or why it has none usable yet.
    fn subnets(&self, node: &Node, config: &NetConfig) -> Result<SubnetKey, String> {
        let name = &self.name;
        let fam = families(config);
        let (v4, v6) =
            node::pod_cidrs(node.spec.as_ref()).map_err(|e| format!("node {name}: {e}"))?;
        let (no4, no6) = (fam.v4 && v4.is_none(), fam.v6 && v6.is_none());
        if no4 || no6 {
            let what = match (no4, no6) {
                (true, true) => "IPv4 and IPv6 pod CIDRs",
                (true, false) => "IPv4 pod CIDR",
                _ => "IPv6 pod CIDR",
            };
            return Err(format!(
                "node {name} has no {what} yet: waiting for one (kube-controller-manager --allocate-node-cidrs assigns it, or kubectl patch node {name} -p '{{\"spec\":{{\"podCIDR\":\"...\"}}}}')"
            ));
        }
        inside(&config.ipv4, v4, "IPv4", name)?;
        inside(&config.ipv6, v6, "IPv6", name)?;
        Ok(SubnetKey {
            ipv4: v4.filter(|_| fam.v4),
            ipv6: v6.filter(|_| fam.v6),
        })
    }

    /// Publishes `attrs` on this node: a patch of what differs, through
    /// the status subresource (as upstream, whose RBAC has only that).
    fn publish(&self, node: &Node, attrs: &LeaseAttrs) -> Result<(), StoreError> {
        let changes = node::to_patch(node, node::published(attrs, &self.ann, node));
        if changes.is_empty() {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": changes}});
        self.patch_status(&format!("cannot annotate node {}", self.name), patch)
    }

    /// A strategic merge patch of this node's Node through the status
    /// subresource (all upstream's RBAC allows).
    fn patch_status(&self, what: &str, patch: serde_json::Value) -> Result<(), StoreError> {
        let (pp, patch) = (PatchParams::default(), Patch::Strategic(patch));
        let call = self.nodes.patch_status(&self.name, &pp, &patch);
        self.rt.block_on(within(what, call)).map(drop)
    }
}

impl Store for KubeStore {
    fn network_config(&mut self) -> Result<String, StoreError> {
        std::fs::read_to_string(&self.net_config).map_err(|source| StoreError::Io {
            what: format!(
                "cannot read the network config {} (--net-config-path)",
                self.net_config.display()
            ),
            source,
        })
    }

    fn feeds_own_lease(&self) -> bool {
        false
    }

    fn hints(&mut self) -> Result<Hints, StoreError> {
        Ok(node::stored(&self.node()?, &self.ann))
    }

    fn acquire(&mut self, want: &Acquire<'_>) -> Result<Lease, AllocError> {
        let node = self.node()?;
        match self.subnets(&node, want.config) {
            Ok(key) => {
                self.publish(&node, want.attrs)?;
                self.waiting = false;
                Ok(Lease {
                    key,
                    attrs: want.attrs.clone(),
                    // Kube mode has nothing to renew: the Node is the lease.
                    expires: None,
                    rev: 0,
                })
            }
            // Said at once; from then on each call first waits for the
            // Node to change, so the caller may call again straight away.
            Err(why) => {
                if std::mem::replace(&mut self.waiting, true) {
                    let rev = node.metadata.resource_version.clone().unwrap_or_default();
                    self.wait_for_change(&rev)?;
                }
                Err(AllocError::Waiting(why))
            }
        }
    }

    fn renew(
        &mut self,
        lease: &Lease,
        _attrs: &LeaseAttrs,
        _ttl: Option<Duration>,
    ) -> Result<Written, StoreError> {
        Ok(Written::Ours(lease.clone()))
    }

    fn recreate(&mut self, lease: &Lease, _ttl: Option<Duration>) -> Result<Written, StoreError> {
        Ok(Written::Ours(lease.clone()))
    }

    fn complete(&mut self, _lease: &Lease) -> Result<(), StoreError> {
        if !self.set_network_unavailable {
            return Ok(());
        }
        // RFC 3339 in whole seconds, as the API server writes times.
        let now = crate::log::timestamp(std::time::SystemTime::now());
        let now = format!("{}Z", now.split('.').next().unwrap_or(&now));
        let condition = json!({
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": "FlannelIsUp",
            "message": "Flannel is running on this node",
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        });
        // A strategic merge keys conditions by type: the others stay.
        let patch = json!({"status": {"conditions": [condition]}});
        let what = format!(
            "cannot set node {}'s NetworkUnavailable condition",
            self.name
        );
        self.patch_status(&what, patch)
    }

    fn feed(&mut self, sink: Sink, relist: Duration) -> Result<(), StoreError> {
        let config = NetConfig::parse(&self.network_config()?).map_err(StoreError::Invalid)?;
        feed::start(
            feed::Setup {
                config: self.config.clone(),
                ann: self.ann.clone(),
                own: self.name.clone(),
                families: families(&config),
                net_config: self.net_config.clone(),
            },
            sink,
            relist,
        )
    }
}
