#!/usr/bin/env bash
# flanneld at scale, black box on a real etcd in throwaway namespaces:
# one node with N fake peer leases (N = 100, 1,000 and 5,000 by default),
# a cluster of 50 agents, and one node in kube mode beside a real
# kube-apiserver holding N Nodes (skipped, loudly, without this workspace's
# Kubernetes binaries); each figure printed against its target.
# Arguments go to the program, e.g.
#   scripts/bench-flanneld-scale.sh --sizes 100,1000 --agents 10
#   scripts/bench-flanneld-scale.sh --upstream /path/to/upstream/flanneld --only single
#   scripts/bench-flanneld-scale.sh --only kube
# Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

need_root
# openssl and xz-utils: the kube part's API server keys and binaries.
ensure_packages iproute2 etcd-server openssl xz-utils
# Upstream's flanneld sets up its forward rules with iptables.
case " $* " in
  *" --upstream"*) ensure_packages iptables ;;
esac
ensure_rust

step "building (release)"
# flanneld as it is shipped (profile dist); the bench itself as release.
cargo build --locked --profile dist -p flanneld --bins -q
cargo build --locked --release -p bench --bins -q
target/release/bench-flanneld-scale "$PWD/target/dist" "$@"
