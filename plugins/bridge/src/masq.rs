//! Masquerade for pod addresses (placeholder until the nftables backend).

use cni_types::CniError;
use ipnetwork::IpNetwork;

/// Who a rule belongs to: the network, container and interface.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // read by the nftables backend, which comes next
pub struct Attachment<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

/// SNAT traffic from each pod address leaving its subnet.
pub fn add(_who: &Attachment<'_>, _ips: &[IpNetwork]) -> Result<(), CniError> {
    Ok(())
}

/// Removes the attachment's rules, whatever its addresses were.
pub fn del(_who: &Attachment<'_>) -> Result<(), CniError> {
    Ok(())
}

pub fn check(_who: &Attachment<'_>, _ips: &[IpNetwork]) -> Result<(), CniError> {
    Ok(())
}
