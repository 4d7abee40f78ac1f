//! The pod's namespace and a netlink socket on each side of the veth pair:
//! one in the node's namespace (where the plugin runs), one made inside the
//! pod's and used from here.

use std::path::Path;

use cni_types::{CmdArgs, CniError};
use netkit::{NetNs, Netlink};

use crate::errors::{self, NETNS};

#[derive(Debug)]
pub struct Sockets<'a> {
    pub netns_path: &'a Path,
    pub pod_ns: NetNs,
    pub host: Netlink,
    pub pod: Netlink,
}

/// Opens both for `verb` (ADD, CHECK), which needs `CNI_NETNS`.
pub fn open<'a>(args: &'a CmdArgs, verb: &str) -> Result<Sockets<'a>, CniError> {
    let netns_path = args
        .netns
        .as_deref()
        .ok_or_else(|| CniError::invalid_env(format!("CNI_NETNS is required for {verb}")))?;
    let pod_ns =
        NetNs::open(netns_path).map_err(|e| errors::err(NETNS, "failed to open netns", e))?;
    let host = Netlink::new().map_err(|e| errors::err(NETNS, "failed to open netlink", e))?;
    let pod = pod_ns
        .socket()
        .map_err(|e| errors::err(NETNS, "failed to open netlink in the pod", e))?;
    Ok(Sockets {
        netns_path,
        pod_ns,
        host,
        pod,
    })
}
