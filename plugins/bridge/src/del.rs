//! DEL: best effort and idempotent. The pod interface goes (and its host
//! end with it), IPAM's DEL always runs, and the attachment's masquerade
//! rules and MAC spoof check are removed even when the namespace is
//! already gone (both on one socket, on the second thread below).
//!
//! The slow steps wait on the kernel, not on the CPU: deleting the veth
//! waits for RCU grace periods (~18 ms), and so does closing the nf_tables
//! socket after deleting rules (5-25 ms). The rules are removed on a second
//! thread while the link goes, and the socket is closed only after the
//! link is gone: the close holds the namespace's nf_tables lock while it
//! waits, and unregistering the host end of the veth needs that lock too,
//! so an earlier close would make the two waits queue up instead of
//! overlap. By the time we close, the kernel has released the rules.

use cni_types::{CmdArgs, CniError, Command, delegate};
use netkit::NetNs;

use crate::config::{self, MasqBackend};
use crate::errors::{self, NETNS};
use crate::masq::{self, Attachment};
use crate::{iptables, spoofchk};

pub fn del(args: &CmdArgs) -> Result<(), CniError> {
    let conf = config::load(args)?;
    let who = Attachment::of(args);
    let iptables_masq = conf.ip_masq && conf.masq_backend == MasqBackend::Iptables;
    let nft_masq = conf.ip_masq && !iptables_masq;
    let (failures, nft) = std::thread::scope(|s| {
        // The thread enters no namespace: its socket is in ours, the node's.
        let rules = (conf.ip_masq || conf.mac_spoof_check).then(|| {
            s.spawn(|| {
                let mut nft = masq::open()?;
                let mut failures = Vec::new();
                if iptables_masq && let Err(e) = iptables::del(&who) {
                    failures.push(e);
                }
                if nft_masq && let Err(e) = masq::del_with(&mut nft, &who) {
                    failures.push(e);
                }
                if conf.mac_spoof_check
                    && let Err(e) = spoofchk::del_with(&mut nft, &who)
                {
                    failures.push(e);
                }
                Ok::<_, CniError>((nft, failures))
            })
        });
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
        let mut nft = None;
        if let Some(thread) = rules {
            match thread.join() {
                Ok(Ok((socket, errs))) => {
                    nft = Some(socket);
                    failures.extend(errs);
                }
                Ok(Err(e)) => failures.push(e),
                // A panic is a bug and ends the plugin, as in release
                // builds (panic = "abort"): no error is made of it.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        (failures, nft)
    });
    drop(nft); // now that the link is gone (see above)
    report("DEL", failures)
}

/// The first failure, with the others in its details.
pub(crate) fn report(verb: &str, mut failures: Vec<CniError>) -> Result<(), CniError> {
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0)),
        _ => {
            let first = failures.remove(0);
            let rest: Vec<String> = failures.iter().map(ToString::to_string).collect();
            Err(first
                .context(format!("{verb} failed"))
                .with_details(rest.join("; ")))
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
