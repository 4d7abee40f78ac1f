#!/usr/bin/env bash
# Benchmarks flanneld's data planes against the same paths built by hand
# with `ip` in one run (pod-to-pod iperf3 over vxlan and host-gw across two
# simulated hosts), and the time until a new host's pods are reachable in a
# 10-host cluster. Everything happens in throwaway namespaces. Run as root.
# Per path (udp with offloads on/off, vxlan, host-gw; vxlan and host-gw also
# by hand): TCP 1 and 4 streams, 64-byte UDP packets/s, machine-wide CPU
# seconds per GB moved, and TCP as a ratio of hand-built vxlan.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

need_root
ensure_packages iproute2 iputils-ping iperf3 nftables
ensure_rust

step "building (release)"
cargo build --locked --release --bins -q
target/release/bench-flanneld "$PWD/target/release"
