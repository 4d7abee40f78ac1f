//! Inside the pod: sysctls, addresses, link up, routes.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use cni_types::CniError;
use cni_types::result::{IpConfig, Route};
use netkit::link::Link;
use netkit::{NetNs, Netlink, route, sysctl};

use crate::errors::{self, CONFIGURE};

/// The family's gateway: the first address of that family that has one.
pub fn family_gateway(ips: &[IpConfig], v4: bool) -> Option<IpAddr> {
    ips.iter()
        .filter(|ip| ip.address.is_ipv4() == v4)
        .find_map(|ip| ip.gateway)
}

/// Configures the pod interface: IPv6 switched on where it has IPv6
/// addresses (with DAD off unless `enable_dad`), ARP notify, the
/// addresses, the link up, then the routes (a route without a gateway uses
/// its family's gateway).
pub fn configure(
    ns: &NetNs,
    nl: &mut Netlink,
    link: &Link,
    ips: &[IpConfig],
    routes: &[Route],
    enable_dad: bool,
) -> Result<(), CniError> {
    let name = link.name.clone();
    let has_v6 = ips.iter().any(|ip| ip.address.is_ipv6());
    let has_v4 = ips.iter().any(|ip| ip.address.is_ipv4());
    ns.run(|| -> std::io::Result<()> {
        if has_v6 {
            sysctl::set(&format!("net/ipv6/conf/{name}/disable_ipv6"), "0")?;
            sysctl::set(&format!("net/ipv6/conf/{name}/keep_addr_on_down"), "1")?;
            if enable_dad {
                sysctl::set(&format!("net/ipv6/conf/{name}/enhanced_dad"), "1")?;
                sysctl::set(&format!("net/ipv6/conf/{name}/accept_dad"), "1")?;
            } else {
                sysctl::set(&format!("net/ipv6/conf/{name}/accept_dad"), "0")?;
            }
        }
        if has_v4 {
            sysctl::set(&format!("net/ipv4/conf/{name}/arp_notify"), "1")?;
        }
        Ok(())
    })
    .map_err(|e| errors::err(CONFIGURE, "failed to enter the pod namespace", e))?
    .map_err(|e| errors::err(CONFIGURE, "failed to set the pod interface's sysctls", e))?;

    for ip in ips {
        nl.add_address(link.index, ip.address.ip(), ip.address.prefix())
            .map_err(|e| {
                errors::err(
                    CONFIGURE,
                    format!("failed to add address {} to {name}", ip.address),
                    e,
                )
            })?;
    }
    nl.set_up(link.index)
        .map_err(|e| errors::err(CONFIGURE, format!("failed to bring up {name}"), e))?;
    if enable_dad && has_v6 {
        settle_addresses(nl, link)?;
    }
    for r in routes {
        let spec = route_spec(r, ips, link.index);
        nl.add_route(&spec).map_err(|e| {
            errors::err(
                CONFIGURE,
                format!("failed to add route {} to {name}", describe(r, &spec)),
                e,
            )
        })?;
    }
    Ok(())
}

/// With DAD on, IPv6 addresses are unusable (and routes through them
/// refused) until detection ends: wait for it, at most 5 s as the reference.
fn settle_addresses(nl: &mut Netlink, link: &Link) -> Result<(), CniError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let addrs = nl
            .addresses(Some(link.index))
            .map_err(|e| errors::err(CONFIGURE, "failed to list the pod's addresses", e))?;
        if let Some(dup) = addrs.iter().find(|a| a.dad_failed) {
            return Err(errors::msg(
                CONFIGURE,
                format!(
                    "duplicate address detection failed for {} on {}: the address is in use",
                    dup.addr, link.name
                ),
            ));
        }
        if !addrs.iter().any(|a| a.tentative) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(errors::msg(
                CONFIGURE,
                format!("IPv6 addresses on {} still tentative after 5 s", link.name),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The kernel route a result route becomes on the pod interface.
pub fn route_spec(r: &Route, ips: &[IpConfig], oif: u32) -> route::Route {
    let mut spec = route::Route::new(r.dst.network(), r.dst.prefix());
    spec.gateway = r.gw.or_else(|| family_gateway(ips, r.dst.is_ipv4()));
    spec.oif = Some(oif);
    spec.priority = r.priority;
    spec.table = r.table;
    spec.scope = r.scope;
    spec.mtu = r.mtu;
    spec.advmss = r.advmss;
    spec
}

fn describe(r: &Route, spec: &route::Route) -> String {
    match spec.gateway {
        Some(gw) => format!("{} via {gw}", r.dst),
        None => r.dst.to_string(),
    }
}
