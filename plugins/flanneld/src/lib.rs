//! flanneld: leases this node's pod subnet from a store, writes subnet.env
//! for the CNI plugin, and programs the data plane to every other node.

pub mod agent;
pub mod alloc;
pub mod backend;
pub mod flags;
pub mod follow;
pub mod health;
pub mod iface;
pub mod lease;
pub mod log;
pub mod netconfig;
pub mod own;
pub mod peers;
pub mod plan;
pub mod reconcile;
pub mod repair;
pub mod routes;
pub mod store;
pub mod subnet_env;
pub mod traffic;
