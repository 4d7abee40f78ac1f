//! Helpers shared by the plugins and the agent: network namespaces, a small
//! blocking rtnetlink socket and the link/address/route operations built on
//! it, an nf_tables socket, and sysctls.

pub mod addr;
pub mod link;
pub mod neigh;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod route;
pub mod sysctl;

pub use netlink::{Netlink, NetlinkError};
pub use netns::{NetNs, NetnsError};
