//! The bridge plugin's error codes (100+ are plugin codes; cni-types owns
//! 100-109, host-local 110-119).

use std::fmt::Display;

use cni_types::CniError;

/// The bridge link could not be made or used.
pub const BRIDGE: u32 = 120;
/// The veth pair could not be made (e.g. the interface exists in the pod).
pub const VETH: u32 = 121;
/// Addresses, routes or sysctls could not be applied.
pub const CONFIGURE: u32 = 122;
/// Masquerade rules could not be programmed.
pub const MASQUERADE: u32 = 123;
/// CHECK found something missing or different.
pub const CHECK: u32 = 124;
/// IPAM answered without an address.
pub const IPAM: u32 = 125;
/// The pod's network namespace cannot be used.
pub const NETNS: u32 = 126;
/// The MAC spoof check (`macspoofchk`) could not be programmed.
pub const SPOOFCHK: u32 = 127;

pub fn err(code: u32, what: impl Display, e: impl Display) -> CniError {
    CniError::new(code, format!("{what}: {e}"))
}

pub fn msg(code: u32, what: impl Into<String>) -> CniError {
    CniError::new(code, what)
}
