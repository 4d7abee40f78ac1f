#!/usr/bin/env bash
# Benchmarks our bridge + host-local against Debian's Go bridge + host-local
# (/usr/lib/cni) in one run, with ipMasq on: p50/p99 of ADD and DEL and the
# ratios. Everything happens in throwaway network namespaces. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

need_root
ensure_packages iproute2 iptables nftables containernetworking-plugins
ensure_rust

step "building the plugins and the benchmark (release)"
cargo build --locked --release -p bridge -p host-local -p bench -q

step "benchmark (Go: containernetworking-plugins $(dpkg-query -W -f='${Version}' containernetworking-plugins))"
target/release/bench-bridge "$PWD/target/release" /usr/lib/cni
