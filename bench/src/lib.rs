//! Benchmarks of our plugins against the Go reference binaries, run side by
//! side in one process so that the ratios compare like with like.
//!
//! The plugins are run exactly as a runtime runs them (one process per call,
//! environment and stdin per the CNI spec), because process start-up and the
//! store's file lock are part of what a runtime pays for.

pub mod cleanup;
pub mod concurrent;
pub mod etcd;
pub mod kernel;
pub mod plugin;
pub mod pool;
pub mod process;
pub mod scale;
pub mod stats;
pub mod store;
pub mod subnet;
pub mod table;
pub mod tempdir;
