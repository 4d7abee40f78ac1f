//! Helpers shared by the plugins and the agent: network namespaces, a small
//! blocking rtnetlink socket and the link/address/route operations built on
//! it, an nf_tables socket, and sysctls. Both sockets sit on one netlink
//! core (`nlsock`): numbering, sending, reading answers, errors with the
//! kernel's reason, interrupted dumps, buffer sizing.

pub mod addr;
pub mod batch;
pub mod link;
pub mod neigh;
pub mod netlink;
pub mod netns;
pub mod nft;
mod nlsock;
pub mod route;
pub mod sysctl;

pub use batch::Op;
pub use netlink::{KernelError, Netlink, NetlinkError};
pub use netns::{NetNs, NetnsError};
