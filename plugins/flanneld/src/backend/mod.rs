//! Data planes: what a peer's lease turns into in the kernel.

pub mod hostgw;
pub mod udp;
pub mod vxlan;
