#!/usr/bin/env bash
# The demo, from a fresh Debian machine: a small flannel cluster inside
# throwaway network namespaces. It builds the suite, makes N simulated hosts
# on a shared underlay (a bridge in its own "switch" namespace), starts one
# flanneld per host on the embedded lease store, creates two pods per host
# through the CNI chain (flannel -> bridge -> host-local), and prints each
# host's subnet, each pod's address and a pod-to-pod reachability matrix.
# Then it removes everything it made, also on failure. Run as root.
#
#   scripts/demo.sh [--hosts N] [--backend vxlan|host-gw|udp|wireguard] [--etcd]
# --etcd runs Debian's etcd-server on the underlay (in the switch namespace)
# and the agents use it instead of the embedded store. wireguard encrypts
# pod traffic in userspace; each host keeps its key in its own work dir.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

HOSTS=3
BACKEND=vxlan
ETCD=
while [ $# -gt 0 ]; do
  case "$1" in
    --hosts) HOSTS=$2; shift 2 ;;
    --backend) BACKEND=$2; shift 2 ;;
    --etcd) ETCD=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
case "$BACKEND" in vxlan|host-gw|udp|wireguard) ;; *) die "unknown backend $BACKEND (vxlan, host-gw, udp or wireguard)" ;; esac
[[ "$HOSTS" =~ ^[0-9]+$ ]] && [ "$HOSTS" -ge 2 ] && [ "$HOSTS" -le 20 ] || die "--hosts must be between 2 and 20"

need_root
ensure_packages iproute2 iputils-ping nftables ca-certificates
[ -n "$ETCD" ] && ensure_packages etcd-server etcd-client
ensure_rust

step "building the suite (release)"
cargo build --locked --release --bins -q
BIN=$PWD/target/release

TAG=$$
SWITCH=${NETNS_PREFIX}demo-switch-$TAG
WORK=$(mktemp -d /tmp/cnirs-demo.XXXXXX)
AGENTS=()
host() { echo "${NETNS_PREFIX}demo-h$1-$TAG"; }
pod() { echo "${NETNS_PREFIX}demo-h$1-p$2-$TAG"; }
cleanup() {
  for pid in "${AGENTS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${AGENTS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ns in $(ip netns list | awk '{print $1}' | grep -- "-$TAG\$"); do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

step "making $HOSTS hosts on a shared underlay (192.168.77.0/24)"
ip netns add "$SWITCH"
ip -n "$SWITCH" link add br0 type bridge
ip -n "$SWITCH" link set br0 up
ip -n "$SWITCH" link set lo up
mkdir -p "$WORK/store"
echo "{\"Network\":\"10.244.0.0/16\",\"Backend\":{\"Type\":\"$BACKEND\"}}" >"$WORK/store/config"
for h in $(seq 0 $((HOSTS - 1))); do
  ip netns add "$(host "$h")"
  ip -n "$SWITCH" link add "port$h" type veth peer name eth0 netns "$(host "$h")"
  ip -n "$SWITCH" link set "port$h" master br0 up
  ip -n "$(host "$h")" addr add "192.168.77.$((10 + h))/24" dev eth0
  ip -n "$(host "$h")" link set eth0 up
  ip -n "$(host "$h")" link set lo up
  mkdir -p "$WORK/h$h"
done

STORE=(--store-dir "$WORK/store")
if [ -n "$ETCD" ]; then
  step "starting etcd on the underlay (192.168.77.1:2379)"
  ip -n "$SWITCH" addr add 192.168.77.1/24 dev br0
  EP=http://192.168.77.1:2379
  ip netns exec "$SWITCH" etcd --name demo --data-dir "$WORK/etcd" --listen-client-urls $EP \
    --advertise-client-urls $EP --listen-peer-urls http://192.168.77.1:2380 \
    --initial-advertise-peer-urls http://192.168.77.1:2380 \
    --initial-cluster demo=http://192.168.77.1:2380 >"$WORK/etcd.log" 2>&1 &
  AGENTS+=($!)
  for _ in $(seq 1 100); do
    ip netns exec "$SWITCH" etcdctl --endpoints $EP put /coreos.com/network/config "$(cat "$WORK/store/config")" >/dev/null 2>&1 && break
    sleep 0.2
  done
  STORE=(--etcd-endpoints $EP)
fi
step "starting flanneld on every host (backend $BACKEND, store: ${STORE[*]})"
# The simulated hosts share one filesystem: each agent gets its own
# wireguard key file (the other backends never read it).
for h in $(seq 0 $((HOSTS - 1))); do
  ip netns exec "$(host "$h")" env WIREGUARD_KEY_FILE="$WORK/h$h/wgkey" "$BIN/flanneld" "${STORE[@]}" --iface eth0 \
    --subnet-file "$WORK/h$h/subnet.env" 2>"$WORK/h$h/flanneld.log" &
  AGENTS+=($!)
done
for h in $(seq 0 $((HOSTS - 1))); do
  for _ in $(seq 1 100); do [ -s "$WORK/h$h/subnet.env" ] && break; sleep 0.1; done
  [ -s "$WORK/h$h/subnet.env" ] || { cat "$WORK/h$h/flanneld.log"; die "host $h wrote no subnet.env"; }
done

conf() {
  cat <<JSON
{"cniVersion":"1.1.0","name":"cbr0","type":"flannel","subnetFile":"$WORK/h$1/subnet.env",
 "dataDir":"$WORK/h$1/cache","ipam":{"dataDir":"$WORK/h$1/ipam"},"delegate":{"isDefaultGateway":true}}
JSON
}
step "creating two pods per host through the CNI chain"
declare -A ADDR
for h in $(seq 0 $((HOSTS - 1))); do
  for p in 0 1; do
    ip netns add "$(pod "$h" "$p")"
    ip -n "$(pod "$h" "$p")" link set lo up   # what a runtime's loopback plugin does
    out=$(ip netns exec "$(host "$h")" env -i PATH="$PATH" CNI_COMMAND=ADD CNI_CONTAINERID="h$h-p$p" \
      CNI_NETNS="/run/netns/$(pod "$h" "$p")" CNI_IFNAME=eth0 CNI_PATH="$BIN" "$BIN/flannel" <<<"$(conf "$h")")
    ADDR[$h.$p]=$(sed -n 's/.*"address": "\([0-9.]*\)\/.*/\1/p' <<<"$out" | head -1)
  done
done

step "report"
printf '%-6s %-18s %-8s %s\n' host subnet mtu pods
for h in $(seq 0 $((HOSTS - 1))); do
  sn=$(sed -n 's/^FLANNEL_SUBNET=//p' "$WORK/h$h/subnet.env")
  mtu=$(sed -n 's/^FLANNEL_MTU=//p' "$WORK/h$h/subnet.env")
  printf '%-6s %-18s %-8s %s %s\n' "h$h" "$sn" "$mtu" "${ADDR[$h.0]}" "${ADDR[$h.1]}"
done
echo
echo "reachability (row pings column; the agents program peers within a second):"
KEYS=$(for h in $(seq 0 $((HOSTS - 1))); do echo "$h.0 $h.1"; done)
printf '%-14s' ""; for k in $KEYS; do printf '%-13s' "h${k%.*}/p${k#*.}"; done; echo
ok=0; total=0
for src in $KEYS; do
  printf '%-14s' "h${src%.*}/p${src#*.}"
  for dst in $KEYS; do
    total=$((total + 1))
    reached=no
    for _ in 1 2 3 4 5; do
      if ip netns exec "$(pod "${src%.*}" "${src#*.}")" ping -c1 -W1 "${ADDR[$dst]}" >/dev/null 2>&1; then reached=yes; break; fi
    done
    if [ $reached = yes ]; then ok=$((ok + 1)); printf '%-13s' "ok"; else printf '%-13s' "FAIL"; fi
  done
  echo
done
echo
echo "$ok of $total pod pairs reach each other over $BACKEND"
if [ -n "$ETCD" ]; then
  step "the leases in etcd (upstream's layout)"
  ip netns exec "$SWITCH" etcdctl --endpoints $EP get --prefix /coreos.com/network/subnets/
fi
step "what host h0 programmed"
ip -n "$(host 0)" route | grep -v "^192.168.77" || true
[ "$BACKEND" = vxlan ] && ip -n "$(host 0)" -d link show "flannel.1" | head -3 || true
[ "$BACKEND" = wireguard ] && ip -n "$(host 0)" -d link show "flannel-wg" | head -3 || true
[ $ok -eq $total ] || die "some pods could not reach each other"
echo
echo "demo finished; agents, namespaces and files are removed on exit"
