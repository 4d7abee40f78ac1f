#!/usr/bin/env bash
# The demo, from a fresh Debian machine: builds the plugins and plays a
# container runtime against them, the way kubelet/containerd would on a
# flannel node: a "node" network namespace with two "pod" namespaces, a
# subnet.env as the node agent writes it, then ADD (flannel -> bridge ->
# host-local), the pods pinging each other and their gateway, CHECK, and DEL.
# Nothing is changed in the machine's own network namespace or in
# /var/lib/cni; everything is removed at the end, also on failure. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

need_root
ensure_packages iproute2 iputils-ping nftables ca-certificates
ensure_rust

step "building the plugins (release)"
cargo build --locked --release --bins -q
BIN=$PWD/target/release

NODE=${NETNS_PREFIX}demo-node-$$
PODS=(${NETNS_PREFIX}demo-pod-a-$$ ${NETNS_PREFIX}demo-pod-b-$$)
WORK=$(mktemp -d /tmp/cnirs-demo.XXXXXX)
cleanup() {
  for ns in "${PODS[@]}" "$NODE"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
for ns in "$NODE" "${PODS[@]}"; do ip netns add "$ns"; done

# What flanneld writes for this node (the agent is the next piece).
cat >"$WORK/subnet.env" <<ENV
FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.7.1/24
FLANNEL_IPV6_NETWORK=fd00:244::/56
FLANNEL_IPV6_SUBNET=fd00:244:0:7::1/64
FLANNEL_MTU=1450
FLANNEL_IPMASQ=false
ENV
CONF=$(cat <<JSON
{"cniVersion":"1.1.0","name":"cbr0","type":"flannel",
 "subnetFile":"$WORK/subnet.env","dataDir":"$WORK/flannel",
 "ipam":{"dataDir":"$WORK/ipam"},
 "delegate":{"hairpinMode":true,"isDefaultGateway":true}}
JSON
)

# call VERB POD-INDEX [CONFIG]: one runtime call, as libcni makes it.
call() {
  local verb=$1 pod=${PODS[$2]} conf=${3:-$CONF}
  ip netns exec "$NODE" env -i PATH="$PATH" CNI_COMMAND="$verb" CNI_CONTAINERID="ctr-$2" \
    CNI_NETNS="/run/netns/$pod" CNI_IFNAME=eth0 CNI_PATH="$BIN" "$BIN/flannel" <<<"$conf"
}

step "subnet.env, as the node agent writes it"
cat "$WORK/subnet.env"

step "ADD pod a (flannel -> bridge -> host-local)"
RESULT_A=$(call ADD 0)
echo "$RESULT_A"
step "ADD pod b"
RESULT_B=$(call ADD 1)
echo "$RESULT_B" | grep '"address"'

addr() { sed -n 's/.*"address": "\([^"/]*\)\/.*/\1/p' <<<"$1" | sed -n "${2}p"; }
step "pod a pings pod b and the gateway, over IPv4 and IPv6"
ip netns exec "${PODS[0]}" ping -c1 -W2 "$(addr "$RESULT_B" 1)" | tail -2
ip netns exec "${PODS[0]}" ping -c1 -W2 10.244.7.1 | tail -1
ip netns exec "${PODS[0]}" ping -6 -c1 -W2 "$(addr "$RESULT_B" 2)" | tail -1

step "what the node and the pod look like"
ip -n "$NODE" -br addr
ip -n "${PODS[0]}" -br addr
ip -n "${PODS[0]}" route

step "the delegate config flannel saved for pod a (upstream's layout)"
cat "$WORK/flannel/ctr-0"; echo

step "CHECK pod a (with its ADD result as prevResult)"
CHECK_CONF=$(python3 -c 'import json,sys; c=json.loads(sys.argv[1]); c["prevResult"]=json.loads(sys.argv[2]); print(json.dumps(c))' "$CONF" "$RESULT_A" 2>/dev/null || true)
if [ -n "$CHECK_CONF" ]; then call CHECK 0 "$CHECK_CONF" && echo "CHECK passed"; fi

step "DEL both pods, then DEL again (idempotent)"
call DEL 0; call DEL 1; call DEL 0 && echo "DEL done"
ip -n "$NODE" -br link

step "an error, as a runtime sees it (spec JSON on stdout, spec code)"
rm "$WORK/subnet.env"
call ADD 0 || echo "(exit status $?)"

echo
echo "demo finished; namespaces and files are removed on exit"
