//! bridge: a Linux bridge on the node, a veth pair per pod, addresses and
//! routes in the pod, the gateway on the bridge, and masquerade.

mod add;
mod attachment;
mod bridge_link;
mod check;
pub mod config;
mod del;
pub mod errors;
mod iptables;
mod masq;
mod pod;
mod sockets;
mod spoofchk;
mod veth;

use crate::attachment::Attachment;
use crate::config::MasqBackend;
use cni_types::result::CniResult;
use cni_types::{CmdArgs, CniError, Command, Plugin, delegate};

#[derive(Debug, Clone, Copy)]
pub struct Bridge;

impl Plugin for Bridge {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        add::add(args)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        del::del(args)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        check::check(args)
    }

    /// GC goes to IPAM (the spec's MUST, which the reference skips) and
    /// removes masquerade rules of attachments not in the list (none when
    /// the runtime sends no list), and MAC spoof checks the same way.
    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = config::load(args)?;
        let mut failures = Vec::new();
        if let Some(ipam) = &conf.ipam
            && let Err(e) = delegate::run(ipam, &args.path, Command::Gc, &args.stdin)
        {
            failures.push(e);
        }
        // A missing list removes nothing.
        if let Some(valid) = args.conf.gc_valid_attachments() {
            let keep: Vec<Attachment<'_>> = valid
                .iter()
                .map(|a| Attachment {
                    network: args.network_name(),
                    container_id: &a.container_id,
                    ifname: &a.ifname,
                })
                .collect();
            if conf.ip_masq {
                let swept = match conf.masq_backend {
                    MasqBackend::Nftables => masq::gc(args.network_name(), &keep),
                    MasqBackend::Iptables => iptables::gc(args.network_name(), &keep),
                };
                if let Err(e) = swept {
                    failures.push(e);
                }
            }
            if conf.mac_spoof_check
                && let Err(e) = spoofchk::gc(args.network_name(), &keep)
            {
                failures.push(e);
            }
        }
        del::report("GC", failures)
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = config::load(args)?;
        match &conf.ipam {
            Some(ipam) => delegate::run(ipam, &args.path, Command::Status, &args.stdin),
            None => Ok(()),
        }
    }

    fn about(&self) -> String {
        "CNI bridge plugin (cni-rs) for spec 0.1.0-1.1.0".into()
    }
}
