//! Interface addresses.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink::{Netlink, NetlinkError};

/// An address on a link, with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAddress {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix: u8,
    pub scope: AddressScope,
    /// Still in duplicate address detection (IPv6).
    pub tentative: bool,
    /// Duplicate address detection found the address in use.
    pub dad_failed: bool,
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn message(index: u32, addr: IpAddr, prefix: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(addr);
    msg.header.prefix_len = prefix;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    msg
}

impl Netlink {
    pub fn add_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::NewAddress(message(index, addr, prefix)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Adds an IPv6 address usable at once, skipping duplicate address
    /// detection (for addresses unique by construction, like a gateway).
    pub fn add_address_nodad(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut msg = message(index, addr, prefix);
        if addr.is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    pub fn del_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::DelAddress(message(index, addr, prefix)),
            0,
        )
        .map(drop)
    }

    /// Every address in the namespace, or of one link (none if the link
    /// does not exist).
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<LinkAddress>, NetlinkError> {
        let mut req = AddressMessage::default();
        // Under strict checking the kernel sends only the link's addresses.
        if self.filters_dumps()
            && let Some(i) = index
        {
            req.header.index = i;
        }
        let msgs = match self.dump(RouteNetlinkMessage::GetAddress(req)) {
            Err(e) if index.is_some() && e.errno() == Some(nix::libc::ENODEV) => {
                return Ok(Vec::new());
            }
            other => other?,
        };
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => parse(a),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| i == a.index))
            .collect())
    }
}

/// An address, dumped or notified, as a [`LinkAddress`]: the local one
/// where a point-to-point link has a peer address too.
pub(crate) fn parse(a: &AddressMessage) -> Option<LinkAddress> {
    let local = a.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = local.or_else(|| {
        a.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    // IFA_FLAGS holds all 32 bits; the header's byte only the first 8.
    let flags = a
        .attributes
        .iter()
        .find_map(|attr| match attr {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(a.header.flags.bits())));
    Some(LinkAddress {
        index: a.header.index,
        addr,
        prefix: a.header.prefix_len,
        scope: a.header.scope,
        tentative: flags.contains(AddressFlags::Tentative),
        dad_failed: flags.contains(AddressFlags::Dadfailed),
    })
}
