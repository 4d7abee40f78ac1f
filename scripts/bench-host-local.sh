#!/usr/bin/env bash
# Benchmarks our host-local against the Go reference binary in one run:
# 200 concurrent ADDs/DELs as separate processes, and the cost of one ADD/DEL
# in an empty /16 versus one holding 60,000 reservations. Prints the figures
# and the ratios; exits non-zero if a correctness check fails. Run as root
# (it installs packages); it only writes files under a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

GO_HOST_LOCAL=/usr/lib/cni/host-local

need_root
ensure_packages containernetworking-plugins
ensure_rust
[ -x "$GO_HOST_LOCAL" ] || die "$GO_HOST_LOCAL missing although containernetworking-plugins is installed"

step "building host-local and the benchmark (release)"
cargo build --locked --release -p host-local -p bench

# The benchmark removes its own data dirs; this parent also goes if it is
# interrupted (a filled store is 60,000 files).
tmp=$(mktemp -d /tmp/bench-host-local.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

step "benchmark (Go: containernetworking-plugins $(dpkg-query -W -f='${Version}' containernetworking-plugins); temp fs: $(stat -f -c %T "$tmp"))"
TMPDIR=$tmp target/release/bench-host-local "$PWD/target/release/host-local" "$GO_HOST_LOCAL"
