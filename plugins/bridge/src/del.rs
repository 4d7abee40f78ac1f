//! DEL: best effort and idempotent. The pod interface goes (and its host
//! end with it), IPAM's DEL always runs, and the attachment's masquerade
//! rules are removed even when the namespace is already gone.

use cni_types::{CmdArgs, CniError, Command, delegate};
use netkit::NetNs;

use crate::config;
use crate::errors::{self, NETNS};
use crate::masq::{self, Attachment};

pub fn del(args: &CmdArgs) -> Result<(), CniError> {
    let conf = config::load(args)?;
    let mut failures: Vec<CniError> = Vec::new();
    if let Some(path) = args.netns.as_ref().filter(|p| p.exists())
        && let Err(e) = remove_pod_interface(path, &args.ifname)
    {
        failures.push(e);
    }
    if let Some(ipam) = &conf.ipam
        && let Err(e) = delegate::run(ipam, &args.path, Command::Del, &args.stdin)
    {
        failures.push(e);
    }
    let who = Attachment {
        network: args.network_name(),
        container_id: &args.container_id,
        ifname: &args.ifname,
    };
    if let Err(e) = masq::del(&who) {
        failures.push(e);
    }
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0)),
        _ => {
            let first = failures.remove(0);
            let rest: Vec<String> = failures.iter().map(ToString::to_string).collect();
            Err(first.context("DEL failed").with_details(rest.join("; ")))
        }
    }
}

fn remove_pod_interface(path: &std::path::Path, ifname: &str) -> Result<(), CniError> {
    let ns = NetNs::open(path).map_err(|e| errors::err(NETNS, "failed to open netns", e))?;
    let mut nl = ns
        .socket()
        .map_err(|e| errors::err(NETNS, "failed to open netlink in the pod", e))?;
    let fail = |e| errors::err(errors::VETH, format!("failed to delete {ifname}"), e);
    if let Some(link) = nl.link_by_name(ifname).map_err(fail)? {
        match nl.del_link(link.index) {
            Err(e) if e.is_not_found() => {}
            other => other.map_err(fail)?,
        }
    }
    Ok(())
}
