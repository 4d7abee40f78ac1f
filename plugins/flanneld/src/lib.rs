//! flanneld: leases this node's pod subnet from a store, writes subnet.env
//! for the CNI plugin, and programs the data plane to every other node.
//!
//! - `agent/`: start-up and the event loop (event -> plan -> apply);
//! - `store/`: where leases live (embedded files, etcd), each on threads
//!   of its own behind the `Store` trait;
//! - `backend/`: the data planes (vxlan, host-gw, udp) behind the
//!   `Backend` trait: what the kernel must hold for a set of peers;
//! - `diff`: the one comparison of wanted and actual kernel state;
//! - `peers`: the valid peers, from the leases;
//! - `install_cni`: the `install-cni` subcommand (an init container's copy
//!   of the plugins and the conflist onto the node).

pub mod agent;
pub mod backend;
pub mod diff;
pub mod flags;
pub mod health;
pub mod iface;
pub mod install_cni;
pub mod lease;
pub mod log;
pub mod netconfig;
pub mod peers;
pub mod routes;
pub mod store;
pub mod subnet_env;
pub mod traffic;
