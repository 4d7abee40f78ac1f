#!/usr/bin/env bash
# The demo, from a fresh Debian machine: builds the plugins and plays a
# container runtime against them inside throwaway network namespaces (a
# "host" namespace and a "pod" namespace), printing each call and answer.
# Nothing is changed in the machine's own network namespace, and the
# namespaces are removed at the end, also on failure. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

need_root
ensure_packages iproute2 ca-certificates
ensure_rust

step "building the plugins (release)"
cargo build --locked --release --bins -q
BIN=$PWD/target/release

HOST=${NETNS_PREFIX}demo-host-$$
POD=${NETNS_PREFIX}demo-pod-$$
cleanup() { ip netns del "$POD" 2>/dev/null || true; ip netns del "$HOST" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$HOST"
ip netns add "$POD"

# call PLUGIN VERB CONFIG [VAR=VALUE...]: one runtime call, as libcni makes it.
call() {
  local plugin=$1 verb=$2 conf=$3; shift 3
  printf '\n$ CNI_COMMAND=%s %s%s <<< %s\n' "$verb" "${*:+$* }" "$plugin" "$conf"
  local rc=0
  ip netns exec "$HOST" env -i PATH="$PATH" CNI_COMMAND="$verb" CNI_CONTAINERID=demo-ctr \
    CNI_NETNS=/run/netns/$POD CNI_IFNAME=eth0 CNI_PATH="$BIN" "$@" \
    "$BIN/$plugin" <<<"$conf" || rc=$?
  echo "(exit status $rc)"
}

CONF='{"cniVersion":"1.1.0","name":"demo-net","type":"bridge","bridge":"cni0","isGateway":true,"ipam":{"type":"host-local","subnet":"10.88.0.0/24"}}'

step "every plugin answers VERSION with the caller's version and the versions it speaks"
for p in bridge host-local flannel; do call "$p" VERSION '{"cniVersion":"0.4.0"}'; done

step "errors come as spec JSON on stdout with the spec's code"
call bridge ADD '{"cniVersion":"1.1.0","name":"bad name","type":"bridge"}'
call bridge ADD '{"cniVersion":"2.0.0","name":"demo-net","type":"bridge"}'
call bridge CHECK '{"cniVersion":"0.3.1","name":"demo-net","type":"bridge"}'
call bridge ADD "$CONF" CNI_IFNAME=this-name-is-far-too-long

step "what ADD and STATUS answer today"
call bridge ADD "$CONF"
call bridge STATUS "$CONF"

step "the pod namespace was left untouched"
ip -n "$POD" -br link
echo
echo "demo finished; namespaces $HOST and $POD are removed on exit"
