//! Helpers shared by the plugins and the agent for working with network
//! namespaces (and, as the plugins grow, netlink).

pub mod netns;

pub use netns::{NetNs, NetnsError};
