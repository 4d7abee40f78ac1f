//! ADD: validate, apply step by step, and undo every step on failure.

use std::net::IpAddr;

use cni_types::result::{CniResult, Interface, IpConfig, Route};
use cni_types::{CmdArgs, CniError, Command, delegate};
use ipnetwork::IpNetwork;
use netkit::link::Link;
use netkit::{NetNs, Netlink};

use crate::config::{self, Config, MasqBackend};
use crate::errors::{self, IPAM};
use crate::masq::{self, Attachment};
use crate::sockets::{self, Sockets};
use crate::{bridge_link, iptables, pod, spoofchk, veth};

/// What a failed ADD must take back, newest last.
enum Undo {
    Veth(u32),
    Ipam(String),
    Masq,
    MasqIptables,
    SpoofChk,
}

pub fn add(args: &CmdArgs) -> Result<CniResult, CniError> {
    let conf = config::load(args)?;
    let Sockets {
        pod_ns,
        mut host,
        pod: mut pod_nl,
        ..
    } = sockets::open(args, "ADD")?;
    let who = Attachment::of(args);
    let mut undo = Vec::new();
    let out = apply(
        args,
        &conf,
        &pod_ns,
        &mut host,
        &mut pod_nl,
        &who,
        &mut undo,
    );
    out.map_err(|e| {
        let failed = roll_back(args, &mut host, &who, undo);
        e.rollback_incomplete("bridge", &failed)
    })
}

/// Undoes what ADD did, newest first, going on past failures; answers
/// what could not be undone.
fn roll_back(
    args: &CmdArgs,
    host: &mut Netlink,
    who: &Attachment<'_>,
    undo: Vec<Undo>,
) -> Vec<String> {
    let mut failed = Vec::new();
    for step in undo.into_iter().rev() {
        let outcome = match step {
            Undo::Veth(index) => host
                .del_link(index)
                .map_err(|e| format!("removing the host veth: {e}")),
            Undo::Ipam(plugin) => delegate::run(&plugin, &args.path, Command::Del, &args.stdin)
                .map_err(|e| format!("releasing the address ({plugin} DEL): {e}")),
            Undo::Masq => masq::del(who).map_err(|e| format!("removing masquerade rules: {e}")),
            Undo::MasqIptables => {
                iptables::del(who).map_err(|e| format!("removing masquerade chains: {e}"))
            }
            Undo::SpoofChk => {
                spoofchk::del(who).map_err(|e| format!("removing the MAC spoof check: {e}"))
            }
        };
        if let Err(what) = outcome {
            failed.push(what);
        }
    }
    failed
}

fn apply(
    args: &CmdArgs,
    conf: &Config,
    pod_ns: &NetNs,
    host: &mut Netlink,
    pod_nl: &mut Netlink,
    who: &Attachment<'_>,
    undo: &mut Vec<Undo>,
) -> Result<CniResult, CniError> {
    let br = bridge_link::ensure(host, conf)?;
    let (host_veth, pod_link) = veth::create(host, pod_nl, pod_ns, conf, &args.ifname)?;
    undo.push(Undo::Veth(host_veth.index));
    veth::attach(host, &host_veth, &br, conf)?;
    if conf.mac_spoof_check {
        let mac = spoofchk::mac6(&pod_link.mac)?;
        undo.push(Undo::SpoofChk);
        spoofchk::add(who, &host_veth.name, mac)?;
    }

    let mut result = CniResult::default();
    if let Some(ipam) = &conf.ipam {
        let ipam_result = delegate::add(ipam, &args.path, &args.stdin, args.version)?;
        undo.push(Undo::Ipam(ipam.clone()));
        if ipam_result.ips.is_empty() {
            return Err(errors::msg(IPAM, "IPAM plugin returned missing IP config"));
        }
        result.ips = ipam_result.ips;
        result.routes = ipam_result.routes;
        result.dns = ipam_result.dns;
        let gateways = calc_gateways(conf, &mut result.ips, &mut result.routes);
        pod::configure(
            pod_ns,
            pod_nl,
            &pod_link,
            &result.ips,
            &result.routes,
            conf.enable_dad,
        )?;
        if conf.is_gateway {
            for gw in &gateways {
                bridge_link::ensure_gateway(host, &br, gw.ip(), gw.prefix(), conf.force_address)?;
            }
            bridge_link::enable_forwarding(
                gateways.iter().any(IpNetwork::is_ipv4),
                gateways.iter().any(IpNetwork::is_ipv6),
            )?;
        }
        if conf.ip_masq {
            let addrs: Vec<IpNetwork> = result.ips.iter().map(|ip| ip.address).collect();
            if conf.masq_backend == MasqBackend::Iptables {
                undo.push(Undo::MasqIptables);
                iptables::add(who, &addrs)?;
            } else {
                undo.push(Undo::Masq);
                masq::add(who, &addrs)?;
            }
        }
    } else if !conf.disable_container_interface {
        pod_nl.set_up(pod_link.index).map_err(|e| {
            errors::err(
                errors::CONFIGURE,
                format!("failed to bring up {}", args.ifname),
                e,
            )
        })?;
    }
    if let Some(dns) = &conf.dns {
        result.dns = dns.clone();
    }
    // The bridge's MAC may have moved when the port was added.
    let br = host.link_by_name(&br.name).ok().flatten().unwrap_or(br);
    let sandbox = args
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    result.interfaces = vec![
        interface(&br, String::new()),
        interface(&host_veth, String::new()),
        interface(&pod_link, sandbox),
    ];
    Ok(result)
}

fn interface(link: &Link, sandbox: String) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: link.mac_string(),
        sandbox,
        ..Interface::default()
    }
}

/// Marks every address as the pod interface's, fills in missing gateways
/// (network + 1) when the bridge is the gateway, adds default routes for
/// `isDefaultGateway`, and returns the gateway addresses (with the pod's
/// prefix) to put on the bridge.
fn calc_gateways(conf: &Config, ips: &mut [IpConfig], routes: &mut Vec<Route>) -> Vec<IpNetwork> {
    let mut gateways: Vec<IpNetwork> = Vec::new();
    for ip in ips.iter_mut() {
        ip.interface = Some(2);
        if !conf.is_gateway {
            continue;
        }
        let gw = *ip
            .gateway
            .get_or_insert_with(|| next_ip(ip.address.network()));
        if let Ok(net) = IpNetwork::new(gw, ip.address.prefix())
            && !gateways.iter().any(|g| g.ip() == gw)
        {
            gateways.push(net);
        }
    }
    if conf.is_default_gateway {
        for v4 in [true, false] {
            let Some(gw) = pod::family_gateway(ips, v4) else {
                continue;
            };
            let has_default = routes
                .iter()
                .any(|r| r.dst.prefix() == 0 && r.dst.is_ipv4() == v4 && r.gw.is_some());
            if !has_default {
                let dst = if v4 { "0.0.0.0/0" } else { "::/0" };
                if let Ok(dst) = dst.parse() {
                    routes.push(Route::new(dst, Some(gw)));
                }
            }
        }
    }
    gateways
}

fn next_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(u32::from(v4).wrapping_add(1).into()),
        IpAddr::V6(v6) => IpAddr::V6(u128::from(v6).wrapping_add(1).into()),
    }
}
