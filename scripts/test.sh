#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs,
# then runs the format check, clippy and every test (unit, golden-file and the
# black-box conformance tests that run the built binaries in throwaway
# network namespaces). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

need_root
ensure_packages iproute2 iputils-ping nftables iptables ca-certificates containernetworking-plugins etcd-server etcd-client openssl containerd runc busybox-static e2fsprogs xz-utils wireguard-go wireguard-tools tcpdump
# kubectl for the kube-flannel tests: Debian's (kubernetes-client) only where
# none is on PATH, since it conflicts with other packagings (e.g. google-cloud-sdk's).
command -v kubectl >/dev/null || ensure_packages kubernetes-client
ensure_rust

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "building the plugin binaries"
cargo build --locked --workspace --bins

step "running every test"
status=0
# Every test binary runs even when one fails, so one run shows every failure.
cargo test --locked --workspace --no-fail-fast || status=$?

step "checking that no test left a namespace behind"
left=$(leftover_namespaces)
if [ -n "$left" ]; then
  echo "tests left these network namespaces behind (removing them now):" >&2
  echo "$left" >&2
  for ns in $left; do ip netns del "$ns" || true; done
  status=1
else
  echo "none left"
fi
exit "$status"
