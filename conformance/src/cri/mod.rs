//! The path kubelet takes: containerd's CRI, driven by a small client of
//! our own, with containerd running inside a simulated host.

pub mod client;
pub mod containerd;
pub mod image;
pub mod wire;

pub use client::CriClient;
pub use containerd::{Containerd, ContainerdOptions};
