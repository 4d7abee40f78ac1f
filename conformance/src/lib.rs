//! Test harness: throwaway network namespaces, and plugin binaries run in
//! them the way a container runtime runs them (env + stdin, result parsed).
//!
//! Everything a test makes is removed on drop, also when the test panics.
//! The harness never touches the machine's root network namespace: plugins
//! run inside a "host" namespace the test created.

// Test-support code: a failed set-up step should stop the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod bins;
pub mod cluster;
pub mod cri;
pub mod daemon;
pub mod etcd;
pub mod kube;
pub mod kubecluster;
pub mod netns;
pub mod node;
pub mod runner;

pub use bins::plugin_binary;
pub use daemon::{Daemon, DaemonOptions, start_flanneld, wait_for};
pub use etcd::{Etcd, EtcdOptions};
pub use netns::{TestHost, TestNetns, require_root};
pub use node::PluginNode;
pub use runner::{Invocation, PluginOutput};

pub mod tempdir;
pub mod tool;
pub mod underlay;
pub mod util;
pub mod wireguard;
pub use tempdir::TempDir;
pub use tool::Tool;
pub use underlay::Underlay;
