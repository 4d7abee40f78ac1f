//! Helpers shared by the plugins and the agent: network namespaces, a small
//! blocking rtnetlink socket and the link/address/route operations built on
//! it (one at a time, or many at once: [`Op`]), a [`Monitor`] of what
//! changes in a namespace, an nf_tables socket, and sysctls. All sockets sit
//! on one netlink core (`nlsock`): numbering, sending, reading answers,
//! errors with the kernel's reason, interrupted dumps, buffer sizing,
//! notifications.

pub mod addr;
pub mod batch;
pub mod link;
pub mod monitor;
pub mod neigh;
pub mod netlink;
pub mod netns;
pub mod nft;
mod nlsock;
pub mod route;
pub mod sysctl;

pub use batch::Op;
pub use monitor::{Change, Monitor};
pub use netlink::{KernelError, Netlink, NetlinkError};
pub use netns::{NetNs, NetnsError};
