//! Routes.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink::{Netlink, NetlinkError};

/// A unicast route as the plugins program and check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub priority: Option<u32>,
    /// `None` is the main table.
    pub table: Option<u32>,
    pub scope: Option<u8>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    /// The gateway is on the link even without a matching prefix.
    pub onlink: bool,
    /// Who made it (`rtm_protocol`): `None` programs `boot`, as `ip route
    /// add` does; an agent marks its own routes with a number of its own so
    /// it can tell them from an operator's. Dumps fill it in.
    pub protocol: Option<u8>,
}

impl Route {
    pub fn new(dst: IpAddr, prefix: u8) -> Route {
        Route {
            dst,
            prefix,
            gateway: None,
            oif: None,
            priority: None,
            table: None,
            scope: None,
            mtu: None,
            advmss: None,
            onlink: false,
            protocol: None,
        }
    }

    fn table_id(&self) -> u32 {
        self.table.unwrap_or(u32::from(RouteHeader::RT_TABLE_MAIN))
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_message(route: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let table = route.table_id();
    msg.header.address_family = if route.dst.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    msg.header.destination_prefix_length = route.prefix;
    msg.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    msg.header.protocol = route
        .protocol
        .map_or(RouteProtocol::Boot, RouteProtocol::from);
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = match route.scope {
        Some(s) => RouteScope::from(s),
        None if route.gateway.is_none() => RouteScope::Link,
        None => RouteScope::Universe,
    };
    if route.prefix > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(route_address(route.dst)));
    }
    if let Some(gw) = route.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(route_address(gw)));
    }
    if route.onlink {
        msg.header.flags |= RouteFlags::Onlink;
    }
    if let Some(oif) = route.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(p) = route.priority {
        msg.attributes.push(RouteAttribute::Priority(p));
    }
    if table > 255 {
        msg.attributes.push(RouteAttribute::Table(table));
    }
    let mut metrics = Vec::new();
    if let Some(mtu) = route.mtu {
        metrics.push(RouteMetric::Mtu(mtu));
    }
    if let Some(mss) = route.advmss {
        metrics.push(RouteMetric::Advmss(mss));
    }
    if !metrics.is_empty() {
        msg.attributes.push(RouteAttribute::Metrics(metrics));
    }
    msg
}

/// The request that adds `route`, or replaces one to the same destination.
pub(crate) fn replace_request(route: &Route) -> (RouteNetlinkMessage, u16) {
    (
        RouteNetlinkMessage::NewRoute(route_message(route)),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// The request that deletes `route` (any scope matches).
pub(crate) fn delete_request(route: &Route) -> (RouteNetlinkMessage, u16) {
    let mut msg = route_message(route);
    msg.header.scope = RouteScope::NoWhere;
    (RouteNetlinkMessage::DelRoute(msg), 0)
}

impl Netlink {
    pub fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::NewRoute(route_message(route)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Adds the route, or replaces one to the same destination.
    pub fn replace_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let (msg, flags) = replace_request(route);
        self.request(msg, flags).map(drop)
    }

    pub fn del_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let (msg, flags) = delete_request(route);
        self.request(msg, flags).map(drop)
    }

    /// Every unicast route of one family in every table.
    pub fn routes(&mut self, v4: bool) -> Result<Vec<Route>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = family(v4);
        let msgs = self.dump(RouteNetlinkMessage::GetRoute(req))?;
        Ok(msgs.iter().filter_map(parse_new).collect())
    }

    /// The unicast routes of one family that `filter` selects. The kernel
    /// sends only those where it filters dumps; what comes back is checked
    /// here too. A table or link that does not exist has no routes.
    pub fn routes_filtered(
        &mut self,
        v4: bool,
        filter: &RouteFilter,
    ) -> Result<Vec<Route>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = family(v4);
        req.header.kind = RouteType::Unicast;
        if let Some(p) = filter.protocol {
            req.header.protocol = RouteProtocol::from(p);
        }
        if let Some(t) = filter.table {
            // RTA_TABLE holds any table; the header's byte only the first 255.
            req.header.table = u8::try_from(t).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
            req.attributes.push(RouteAttribute::Table(t));
        }
        if let Some(oif) = filter.oif {
            req.attributes.push(RouteAttribute::Oif(oif));
        }
        let msgs = match self.dump(RouteNetlinkMessage::GetRoute(req)) {
            // The kernel refuses a filter on a link or a table it does not
            // know (ENODEV, ENOENT): nothing there.
            Err(e) if filter.oif.is_some() && e.errno() == Some(nix::libc::ENODEV) => {
                return Ok(Vec::new());
            }
            Err(e) if filter.table.is_some() && e.errno() == Some(nix::libc::ENOENT) => {
                return Ok(Vec::new());
            }
            other => other?,
        };
        let kernel_filtered = self.filters_dumps();
        Ok(msgs
            .iter()
            .filter_map(parse_new)
            .filter(|r| filter.selects(r, kernel_filtered))
            .collect())
    }
}

/// Which routes [`Netlink::routes_filtered`] returns; `None` selects all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteFilter {
    /// The table (main is 254).
    pub table: Option<u32>,
    /// The outgoing link.
    pub oif: Option<u32>,
    /// Who made them (`rtm_protocol`, see [`Route::protocol`]).
    pub protocol: Option<u8>,
}

impl RouteFilter {
    /// Whether `r` is one of the routes asked for. A multipath route has no
    /// single link: the kernel's filter (which looks at every next hop)
    /// decides for it where the kernel filters.
    fn selects(&self, r: &Route, kernel_filtered: bool) -> bool {
        self.table.is_none_or(|t| r.table == Some(t))
            && self.protocol.is_none_or(|p| r.protocol == Some(p))
            && self.oif.is_none_or(|o| match r.oif {
                Some(x) => x == o,
                None => kernel_filtered,
            })
    }
}

fn family(v4: bool) -> AddressFamily {
    if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// A dumped route, if it is a unicast one.
fn parse_new(m: &RouteNetlinkMessage) -> Option<Route> {
    match m {
        RouteNetlinkMessage::NewRoute(r) => parse(r),
        _ => None,
    }
}

/// A unicast IPv4 or IPv6 route, dumped or notified, as a [`Route`].
pub(crate) fn parse(r: &RouteMessage) -> Option<Route> {
    if r.header.kind != RouteType::Unicast {
        return None;
    }
    let unspecified: IpAddr = match r.header.address_family {
        AddressFamily::Inet => IpAddr::from([0u8; 4]),
        AddressFamily::Inet6 => IpAddr::from([0u16; 8]),
        _ => return None,
    };
    let mut route = Route::new(unspecified, r.header.destination_prefix_length);
    route.table = Some(u32::from(r.header.table));
    route.onlink = r.header.flags.contains(RouteFlags::Onlink);
    route.scope = Some(u8::from(r.header.scope));
    route.protocol = Some(u8::from(r.header.protocol));
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Destination(a) => route.dst = ip_of(a).unwrap_or(unspecified),
            RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Priority(p) => route.priority = Some(*p),
            RouteAttribute::Table(t) => route.table = Some(*t),
            RouteAttribute::Metrics(ms) => {
                for m in ms {
                    match m {
                        RouteMetric::Mtu(v) => route.mtu = Some(*v),
                        RouteMetric::Advmss(v) => route.advmss = Some(*v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(route)
}
