#!/usr/bin/env bash
# Benchmarks flanneld's data planes against the same paths built by hand
# with `ip` in one run (pod-to-pod iperf3 over vxlan and host-gw across two
# simulated hosts), our wireguard against Debian's wireguard-go configured
# by hand with `wg`, and the time until a new host's pods are reachable in a
# 10-host cluster. Everything happens in throwaway namespaces. Run as root.
# Per path (udp with offloads on/off, wireguard, wireguard-go, vxlan,
# host-gw; vxlan and host-gw also by hand): TCP 1 and 4 streams, 64-byte UDP
# packets/s, machine-wide CPU seconds per GB moved, and each as a ratio of
# hand-built vxlan; then the targets (wireguard: >= 4x wireguard-go and
# >= 0.5x udp with offloads, on 1 and 4 streams).
# Arguments go to the program: --only ROW,... runs just those rows, e.g.
#   scripts/bench-flanneld.sh --only wireguard,wireguard-go,udp,vxlan-hand
# (rows: udp, udp-no-offload, wireguard, wireguard-go, vxlan, vxlan-hand,
# host-gw, host-gw-hand, propagation; default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

need_root
ensure_packages iproute2 iputils-ping iperf3 nftables wireguard-go wireguard-tools
ensure_rust

step "building (release)"
cargo build --locked --release --bins -q
target/release/bench-flanneld "$PWD/target/release" "$@"
