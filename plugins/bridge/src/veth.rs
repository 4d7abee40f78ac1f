//! The veth pair: the pod end born in the pod namespace, the host end
//! attached to the bridge.

use std::io::Read;

use cni_types::CniError;
use netkit::link::{Link, VethSpec};
use netkit::{NetNs, Netlink};
use netlink_packet_route::link::InfoBridgePort;

use crate::config::Config;
use crate::errors::{self, VETH};

/// `veth` and 8 random hex digits, as the reference names host ends.
fn random_name() -> Result<String, CniError> {
    let mut bytes = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| errors::err(VETH, "failed to read random bytes for the veth name", e))?;
    Ok(format!("veth{:08x}", u32::from_be_bytes(bytes)))
}

/// Makes the pair; returns (host end, pod end).
pub fn create(
    host: &mut Netlink,
    pod: &mut Netlink,
    pod_ns: &NetNs,
    conf: &Config,
    ifname: &str,
) -> Result<(Link, Link), CniError> {
    if pod
        .link_by_name(ifname)
        .map_err(|e| errors::err(VETH, "failed to look up the pod interface", e))?
        .is_some()
    {
        return Err(errors::msg(
            VETH,
            format!("container veth name provided ({ifname}) already exists"),
        ));
    }
    for _ in 0..10 {
        let host_name = random_name()?;
        let spec = VethSpec {
            host_name: &host_name,
            peer_name: ifname,
            peer_netns: pod_ns.fd(),
            mtu: conf.mtu,
            peer_mac: conf.mac,
        };
        match host.add_veth(&spec) {
            Ok(()) => {
                let lookup = |nl: &mut Netlink, name: &str| {
                    nl.link_by_name(name)
                        .map_err(|e| errors::err(VETH, format!("failed to look up {name}"), e))?
                        .ok_or_else(|| {
                            errors::msg(VETH, format!("{name} vanished right after it was made"))
                        })
                };
                let host_end = lookup(host, &host_name)?;
                let pod_end = lookup(pod, ifname)?;
                return Ok((host_end, pod_end));
            }
            // Our random name was taken (the pod name was checked above,
            // and a racing ADD on the same pod is the runtime's bug).
            Err(e) if e.is_exists() && host.link_by_name(&host_name).ok().flatten().is_some() => {
                continue;
            }
            Err(e) if e.is_exists() => {
                return Err(errors::msg(
                    VETH,
                    format!("container veth name provided ({ifname}) already exists"),
                ));
            }
            Err(e) => {
                return Err(errors::err(
                    VETH,
                    format!("failed to create veth pair {host_name}/{ifname}"),
                    e,
                ));
            }
        }
    }
    Err(errors::msg(
        VETH,
        "failed to find a free host veth name after 10 tries",
    ))
}

/// Host end: on the bridge, port options, up.
pub fn attach(host: &mut Netlink, veth: &Link, br: &Link, conf: &Config) -> Result<(), CniError> {
    let fail = |what: &str, e: netkit::NetlinkError| {
        errors::err(VETH, format!("failed to {what} {}", veth.name), e)
    };
    host.set_master(veth.index, br.index)
        .map_err(|e| fail(&format!("attach to bridge {:?}", br.name), e))?;
    let mut opts = Vec::new();
    if conf.hairpin {
        opts.push(InfoBridgePort::HairpinMode(true));
    }
    if conf.port_isolation {
        opts.push(InfoBridgePort::Isolated(true));
    }
    if !opts.is_empty() {
        host.set_bridge_port(veth.index, opts)
            .map_err(|e| fail("set bridge port options on", e))?;
    }
    no_router_ads(&veth.name);
    host.set_up(veth.index).map_err(|e| fail("bring up", e))
}

/// Keeps router advertisements from configuring a host-side link. Not
/// fatal, as in the reference plugin: without IPv6 there is nothing to
/// turn off, and a read-only /proc/sys must not fail the pod; anything but
/// the former is logged.
pub fn no_router_ads(link: &str) {
    let key = format!("net/ipv6/conf/{link}/accept_ra");
    if let Err(e) = netkit::sysctl::set(&key, "0")
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("bridge: cannot turn off router advertisements on {link}: {e}");
    }
}
