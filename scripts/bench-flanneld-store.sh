#!/usr/bin/env bash
# flanneld's lease stores at scale, through the agent's own store library:
# 5,000 leases (or --leases N) in the embedded store and in a real etcd
# (in a throwaway namespace); per store the time to list them all after
# the feed starts, a write's time to its event, and the feed's CPU while
# nothing changes, each beside its target. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

need_root
ensure_packages iproute2 etcd-server
ensure_rust

step "building (release)"
cargo build --locked --release -p bench --bins -q
target/release/bench-flanneld-store "$@"
