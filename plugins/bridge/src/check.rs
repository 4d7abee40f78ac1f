//! CHECK: everything ADD made must still be there as the result says.

use cni_types::result::CniResult;
use cni_types::{CmdArgs, CniError, Command, delegate};
use ipnetwork::IpNetwork;
use netkit::Netlink;
use netkit::link::Link;
use netlink_packet_route::link::InfoKind;

use crate::config::{self, Config, MasqBackend};
use crate::errors::{self, CHECK};
use crate::masq::{self, Attachment};
use crate::sockets::{self, Sockets};
use crate::{iptables, pod, spoofchk};

fn missing(msg: String) -> CniError {
    errors::msg(CHECK, msg)
}

pub fn check(args: &CmdArgs) -> Result<(), CniError> {
    let conf = config::load(args)?;
    let prev = args
        .conf
        .prev_result()?
        .ok_or_else(|| CniError::invalid_config("Required prevResult missing"))?;
    if let Some(ipam) = &conf.ipam {
        delegate::run(ipam, &args.path, Command::Check, &args.stdin)?;
    }
    let Sockets {
        netns_path,
        mut host,
        pod: mut pod_nl,
        ..
    } = sockets::open(args, "CHECK")?;
    let sandbox = netns_path.display().to_string();

    let br = check_bridge(&mut host, &conf, &prev)?;
    let pod_link = check_pod_link(&mut pod_nl, &prev, &args.ifname, &sandbox)?;
    check_host_veth(&mut host, &prev, &br, &pod_link)?;
    check_addresses_and_routes(&mut pod_nl, &prev, &pod_link)?;
    if conf.mac_spoof_check {
        let who = Attachment::of(args);
        // The host end: the result's interface outside the pod that is not the bridge.
        let host_veth = prev
            .interfaces
            .iter()
            .find(|i| i.sandbox.is_empty() && i.name != conf.bridge)
            .map(|i| i.name.as_str());
        spoofchk::check(&who, host_veth, spoofchk::mac6(&pod_link.mac)?)?;
    }
    if conf.ip_masq {
        let who = Attachment::of(args);
        let addrs: Vec<IpNetwork> = prev.ips.iter().map(|ip| ip.address).collect();
        if conf.masq_backend == MasqBackend::Iptables {
            iptables::check(&who, &addrs)?;
        } else {
            masq::check(&who, &addrs)?;
        }
    }
    Ok(())
}

fn lookup(nl: &mut Netlink, name: &str) -> Result<Option<Link>, CniError> {
    nl.link_by_name(name)
        .map_err(|e| errors::err(CHECK, format!("failed to look up {name}"), e))
}

fn check_bridge(host: &mut Netlink, conf: &Config, prev: &CniResult) -> Result<Link, CniError> {
    let name = &conf.bridge;
    let br = lookup(host, name)?
        .ok_or_else(|| missing(format!("CNI created bridge {name} not found")))?;
    if br.kind != Some(InfoKind::Bridge) {
        return Err(missing(format!(
            "CNI created bridge {name} is not a bridge"
        )));
    }
    if let Some(want) = prev
        .interfaces
        .iter()
        .find(|i| &i.name == name && !i.mac.is_empty())
        && !want.mac.eq_ignore_ascii_case(&br.mac_string())
    {
        return Err(missing(format!(
            "bridge {name} has MAC {}, the result says {}",
            br.mac_string(),
            want.mac
        )));
    }
    if conf.promisc && !br.is_promisc() {
        return Err(missing(format!("bridge {name} is not in promiscuous mode")));
    }
    Ok(br)
}

fn check_pod_link(
    pod: &mut Netlink,
    prev: &CniResult,
    ifname: &str,
    sandbox: &str,
) -> Result<Link, CniError> {
    let want = prev
        .interfaces
        .iter()
        .find(|i| i.name == ifname && i.sandbox == sandbox)
        .ok_or_else(|| {
            missing(format!(
                "interface {ifname} in sandbox {sandbox} is not in prevResult"
            ))
        })?;
    let link = lookup(pod, ifname)?
        .ok_or_else(|| missing(format!("interface in container {ifname} not found")))?;
    if link.kind != Some(InfoKind::Veth) {
        return Err(missing(format!(
            "interface in container {ifname} is not a veth"
        )));
    }
    if !want.mac.is_empty() && !want.mac.eq_ignore_ascii_case(&link.mac_string()) {
        return Err(missing(format!(
            "interface {ifname} has MAC {}, the result says {}",
            link.mac_string(),
            want.mac
        )));
    }
    Ok(link)
}

fn check_host_veth(
    host: &mut Netlink,
    prev: &CniResult,
    br: &Link,
    pod_link: &Link,
) -> Result<(), CniError> {
    let Some(want) = prev
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_empty() && i.name != br.name)
    else {
        return Ok(());
    };
    let veth = lookup(host, &want.name)?.ok_or_else(|| {
        missing(format!(
            "CNI veth created for bridge {} was not found",
            br.name
        ))
    })?;
    if pod_link.peer_index != Some(veth.index) {
        return Err(missing(format!(
            "{} is not the peer of the pod interface {}",
            veth.name, pod_link.name
        )));
    }
    if veth.master != Some(br.index) {
        return Err(missing(format!(
            "{} is not attached to bridge {}",
            veth.name, br.name
        )));
    }
    Ok(())
}

fn check_addresses_and_routes(
    pod: &mut Netlink,
    prev: &CniResult,
    link: &Link,
) -> Result<(), CniError> {
    let have = pod
        .addresses(Some(link.index))
        .map_err(|e| errors::err(CHECK, "failed to list the pod's addresses", e))?;
    for ip in &prev.ips {
        if !have
            .iter()
            .any(|a| a.addr == ip.address.ip() && a.prefix == ip.address.prefix())
        {
            return Err(missing(format!(
                "address {} is not on {}",
                ip.address, link.name
            )));
        }
    }
    for v4 in [true, false] {
        let wanted: Vec<_> = prev
            .routes
            .iter()
            .filter(|r| r.dst.is_ipv4() == v4)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let routes = pod
            .routes(v4)
            .map_err(|e| errors::err(CHECK, "failed to list the pod's routes", e))?;
        for r in wanted {
            let spec = pod::route_spec(r, &prev.ips, link.index);
            let found = routes.iter().any(|k| {
                k.dst == spec.dst
                    && k.prefix == spec.prefix
                    && k.gateway == spec.gateway
                    && k.oif == Some(link.index)
                    && spec.table.is_none_or(|t| k.table == Some(t))
            });
            if !found {
                return Err(missing(format!(
                    "route {} on {} not found",
                    r.dst, link.name
                )));
            }
        }
    }
    Ok(())
}
