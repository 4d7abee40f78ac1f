//! host-local's error codes (100+ are plugin codes, cni-types owns 100-109).

use cni_types::CniError;

/// No address is free in a range set.
pub const EXHAUSTED: u32 = 110;
/// The attachment already holds an address in the set.
pub const DUPLICATE: u32 = 111;
/// A requested address cannot be given.
pub const UNAVAILABLE: u32 = 112;
/// CHECK found no reservation for the attachment.
pub const NOT_FOUND: u32 = 113;
/// A state the code should never reach.
pub const INTERNAL: u32 = 119;

pub fn exhausted(msg: String) -> CniError {
    CniError::new(EXHAUSTED, msg)
}

pub fn duplicate(msg: String) -> CniError {
    CniError::new(DUPLICATE, msg)
}

pub fn unavailable(msg: String) -> CniError {
    CniError::new(UNAVAILABLE, msg)
}

pub fn not_found(msg: String) -> CniError {
    CniError::new(NOT_FOUND, msg)
}

pub fn internal(msg: String) -> CniError {
    CniError::new(INTERNAL, msg)
}

pub fn io(what: &str, e: std::io::Error) -> CniError {
    CniError::io(format!("{what}: {e}"))
}
