#!/usr/bin/env bash
# Pod sandboxes through containerd's CRI (the path kubelet takes), with our
# plugins and with Debian's Go bridge + host-local, in one run: median
# RunPodSandbox, StopPodSandbox and RemovePodSandbox, and the ratios.
# containerd runs inside throwaway namespaces (see conformance/src/cri);
# nothing on the machine is changed. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

need_root
ensure_packages iproute2 iptables nftables containernetworking-plugins containerd runc busybox-static
ensure_rust

step "building the plugins and the benchmark (release)"
cargo build --locked --release -p flannel -p bridge -p host-local -p bench -q

step "benchmark (Go: containernetworking-plugins $(dpkg-query -W -f='${Version}' containernetworking-plugins))"
target/release/bench-cri "$PWD/target/release" /usr/lib/cni
