//! The node's bridge: made on first use, reused after; and its gateway
//! addresses.

use std::net::IpAddr;

use cni_types::CniError;
use ipnetwork::IpNetwork;
use netkit::link::Link;
use netkit::{Netlink, sysctl};
use netlink_packet_route::address::AddressScope;
use netlink_packet_route::link::InfoKind;

use crate::config::Config;
use crate::errors::{self, BRIDGE};

/// Finds or creates the bridge and brings it up. An existing bridge keeps
/// its settings (MTU, VLAN filtering) as in the reference.
pub fn ensure(nl: &mut Netlink, conf: &Config) -> Result<Link, CniError> {
    let name = &conf.bridge;
    let fail =
        |what: &str, e: netkit::NetlinkError| errors::err(BRIDGE, format!("{what} {name:?}"), e);
    let link = match nl
        .link_by_name(name)
        .map_err(|e| fail("failed to look up bridge", e))?
    {
        Some(link) => link,
        None => {
            match nl.add_bridge(name, conf.mtu, conf.uses_vlans()) {
                // Another ADD made it first.
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(fail("failed to create bridge", e)),
                Ok(()) => {
                    // Pin its MAC so that it does not follow its ports'.
                    // Without the pin it still works; the MAC changes as
                    // pods come and go, which neighbours notice.
                    if let Ok(Some(made)) = nl.link_by_name(name)
                        && let Err(e) = nl.set_mac(made.index, &made.mac)
                    {
                        eprintln!("bridge: cannot pin the MAC of bridge {name:?}: {e}");
                    }
                }
            }
            nl.link_by_name(name)
                .map_err(|e| fail("failed to look up bridge", e))?
                .ok_or_else(|| {
                    errors::msg(
                        BRIDGE,
                        format!("bridge {name:?} vanished right after it was made"),
                    )
                })?
        }
    };
    if link.kind != Some(InfoKind::Bridge) {
        return Err(errors::msg(
            BRIDGE,
            format!("{name:?} already exists but is not a bridge"),
        ));
    }
    if conf.promisc && !link.is_promisc() {
        nl.set_promisc(link.index, true)
            .map_err(|e| fail("failed to set promiscuous mode on", e))?;
    }
    // Router advertisements must not configure the node's own bridge.
    crate::veth::no_router_ads(name);
    if !link.is_up() {
        nl.set_up(link.index)
            .map_err(|e| fail("failed to bring up bridge", e))?;
    }
    Ok(link)
}

/// Puts `gw/prefix` on the bridge. Another IPv4 address, or an IPv6 address
/// in the same subnet, is an error unless `force` (then it is replaced).
pub fn ensure_gateway(
    nl: &mut Netlink,
    br: &Link,
    gw: IpAddr,
    prefix: u8,
    force: bool,
) -> Result<(), CniError> {
    let fail = |e: netkit::NetlinkError| {
        errors::err(
            BRIDGE,
            format!(
                "failed to set gateway {gw}/{prefix} on bridge {:?}",
                br.name
            ),
            e,
        )
    };
    let want = IpNetwork::new(gw, prefix).map_err(|e| errors::err(BRIDGE, "invalid gateway", e))?;
    let existing: Vec<_> = nl
        .addresses(Some(br.index))
        .map_err(fail)?
        .into_iter()
        .filter(|a| a.addr.is_ipv4() == gw.is_ipv4() && a.scope == AddressScope::Universe)
        .collect();
    if existing.iter().any(|a| a.addr == gw && a.prefix == prefix) {
        return Ok(());
    }
    let conflicting: Vec<_> = existing
        .iter()
        .filter(|a| {
            gw.is_ipv4()
                || IpNetwork::new(a.addr, a.prefix)
                    .is_ok_and(|n| n.contains(gw) || want.contains(a.addr))
        })
        .collect();
    if let Some(first) = conflicting.first() {
        if !force {
            return Err(errors::msg(
                BRIDGE,
                format!(
                    "{:?} already has an IP address different from {want} ({}/{}); set forceAddress to replace it",
                    br.name, first.addr, first.prefix
                ),
            ));
        }
        for a in &conflicting {
            nl.del_address(br.index, a.addr, a.prefix).map_err(fail)?;
        }
    }
    // No DAD: the gateway is unique by construction, and pods can use it at once.
    match nl.add_address_nodad(br.index, gw, prefix) {
        Err(e) if e.is_exists() => Ok(()),
        other => other.map_err(fail),
    }
}

/// IP forwarding on in the node's namespace.
pub fn enable_forwarding(v4: bool, v6: bool) -> Result<(), CniError> {
    let set = |key: &str| {
        sysctl::set(key, "1")
            .map_err(|e| errors::err(errors::CONFIGURE, "failed to enable forwarding", e))
    };
    if v4 {
        set("net/ipv4/ip_forward")?;
    }
    if v6 {
        set("net/ipv6/conf/all/forwarding")?;
    }
    Ok(())
}
