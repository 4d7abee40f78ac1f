#!/usr/bin/env bash
# Builds the container image of the suite, for dist/kube-flannel.yml, as an
# OCI image archive: no registry, no daemon, no network once built.
#
#   scripts/image.sh [--out FILE] [--tag NAME] [--bin-from DIR]
#
#   --out FILE      the archive (default target/cni-rs-flannel-VERSION.oci.tar)
#   --tag NAME      the image's name (default cni-rs/flannel:VERSION, the name
#                   dist/kube-flannel.yml runs; VERSION is the workspace's)
#   --bin-from DIR  take flanneld, flannel, bridge and host-local already
#                   built from DIR (e.g. target/debug, as the cluster test
#                   does) instead of building them; plugins that are not
#                   static are taken with a warning (they then need a C
#                   library like this machine's on the node)
#   -h, --help      this text
#
# One layer, /opt/bin/{flanneld,flannel,bridge,host-local}, plus what
# flanneld loads (its shared libraries per ldd, and the dynamic loader).
# The three CNI plugins are linked statically: install-cni copies them onto
# the node, where they must run against whatever C library the host has.
# Binaries are stripped; tar entries are sorted, root-owned and dated
# SOURCE_DATE_EPOCH (default: the last commit's time), as is the image, so
# the same build of the same commit gives the same bytes.
#
# Load it on a node and run it:
#   ctr -n k8s.io images import FILE     (containerd, what kubelet uses)
#   podman load -i FILE
#   skopeo copy oci-archive:FILE docker://REGISTRY/cni-rs/flannel:VERSION
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/lib/common.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

VERSION=$(awk -F'"' '/^\[workspace.package\]/ { p = 1 } p && /^version *=/ { print $2; exit }' "$REPO/Cargo.toml")
[ -n "$VERSION" ] || die "cannot read the workspace version from Cargo.toml"
OUT=
TAG=cni-rs/flannel:$VERSION
BIN_FROM=
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a file"; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    --tag) [ $# -ge 2 ] || die "--tag needs a name"; TAG=$2; shift 2 ;;
    --tag=*) TAG=${1#*=}; shift ;;
    --bin-from) [ $# -ge 2 ] || die "--bin-from needs a directory"; BIN_FROM=$2; shift 2 ;;
    --bin-from=*) BIN_FROM=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

# The name as containerd and kubelet spell it: "cni-rs/flannel:0.1.0" is
# docker.io/cni-rs/flannel:0.1.0, which the manifest's image then matches.
full_name() {
  local name=$1 first=${1%%/*}
  [[ "$name" == */* ]] || name=library/$name
  if [[ "$name" != */* || ( "$first" != *.* && "$first" != *:* && "$first" != localhost ) ]]; then
    name=docker.io/$name
  fi
  [[ "${name##*/}" == *:* || "$name" == *@* ]] || name=$name:latest
  printf '%s' "$name"
}
[[ "$TAG" =~ ^[a-z0-9]([a-z0-9._/:-]*[a-zA-Z0-9_.-])?$ ]] || die "--tag $TAG is not an image name"
NAME=$(full_name "$TAG")

ensure_packages tar gzip binutils coreutils libc-bin
[ -n "$BIN_FROM" ] || ensure_rust

case "$(uname -m)" in
  x86_64) ARCH=amd64 ;;
  aarch64) ARCH=arm64 ;;
  *) ARCH=$(dpkg --print-architecture) ;;
esac
EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)}
[[ "$EPOCH" =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH=$EPOCH is not a number of seconds"
CREATED=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
[ -n "$OUT" ] || OUT=$TARGET/cni-rs-flannel-$VERSION.oci.tar

if [ -n "$BIN_FROM" ]; then
  [ -d "$BIN_FROM" ] || die "--bin-from $BIN_FROM is not a directory"
  FLANNELD=$BIN_FROM/flanneld
  PLUGIN_DIR=$BIN_FROM
  for b in flanneld flannel bridge host-local; do
    [ -f "$BIN_FROM/$b" ] && [ -x "$BIN_FROM/$b" ] || die "--bin-from $BIN_FROM lacks $b"
  done
else
  HOST=$(rustc -vV | awk '/^host:/ { print $2 }')
  [ -n "$HOST" ] || die "cannot ask rustc for its host target"
  step "building flanneld (profile dist: release with whole-program LTO)"
  (cd "$REPO" && cargo build --locked --profile dist --bin flanneld -p flanneld)
  # With --target, RUSTFLAGS reach the binaries but not build scripts or
  # proc macros, which cannot be static.
  step "building flannel, bridge, host-local (profile dist, static)"
  (cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --profile dist --target "$HOST" --bins -p flannel -p bridge -p host-local)
  FLANNELD=$TARGET/dist/flanneld
  PLUGIN_DIR=$TARGET/$HOST/dist
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cni-rs-image.XXXXXX")
trap 'rm -rf -- "$WORK"' EXIT
ROOTFS=$WORK/rootfs
LAYOUT=$WORK/layout
mkdir -p "$ROOTFS/opt/bin" "$LAYOUT/blobs/sha256"

strip_into() { strip --strip-all -o "$2" -- "$1"; chmod 0755 -- "$2"; }
strip_into "$FLANNELD" "$ROOTFS/opt/bin/flanneld"
for p in flannel bridge host-local; do
  bin=$PLUGIN_DIR/$p
  said=$(ldd "$bin" 2>&1 || true)
  if [[ "$said" != *"not a dynamic executable"* && "$said" != *"statically linked"* ]]; then
    [ -n "$BIN_FROM" ] || die "$bin is not static (ldd: ${said%%$'\n'*})"
    echo "warning: $bin is not static: on a node it needs a C library like this machine's" >&2
  fi
  strip_into "$bin" "$ROOTFS/opt/bin/$p"
done

# flanneld's libraries and loader, at the paths it asks for them.
step "adding what flanneld loads"
libs=$(ldd "$FLANNELD" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u)
[ -n "$libs" ] || die "ldd lists no libraries for flanneld"
for lib in $libs; do
  [ -f "$lib" ] || die "ldd names $lib, which is not a file"
  mkdir -p -- "$ROOTFS$(dirname -- "$lib")"
  cp -L -- "$lib" "$ROOTFS$lib"
  printf '  %s\n' "$lib"
done
find "$ROOTFS" -type d -exec chmod 0755 {} +

# deterministic tar of DIR's ENTRIES into OUT
det_tar() {
  local dir=$1 out=$2; shift 2
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" --format=gnu \
    --no-acls --no-xattrs -C "$dir" -cf "$out" "$@"
}
sha() { sha256sum -- "$1" | awk '{ print $1 }'; }
# blob FILE: moved under its digest; prints "DIGEST SIZE".
blob() {
  local d s
  d=$(sha "$1"); s=$(stat -c %s -- "$1")
  mv -- "$1" "$LAYOUT/blobs/sha256/$d"
  printf '%s %s\n' "$d" "$s"
}
json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

step "writing the OCI image $NAME"
mapfile -t top < <(cd "$ROOTFS" && ls -A)
det_tar "$ROOTFS" "$WORK/layer.tar" "${top[@]}"
DIFF_ID=$(sha "$WORK/layer.tar")
gzip -n -9 "$WORK/layer.tar"
read -r LAYER LAYER_SIZE < <(blob "$WORK/layer.tar.gz")

cat >"$WORK/config.json" <<EOF
{"created":"$CREATED","architecture":"$ARCH","os":"linux","config":{"Env":["PATH=/opt/bin"],"Entrypoint":["/opt/bin/flanneld"],"WorkingDir":"/","Labels":{"org.opencontainers.image.title":"cni-rs flannel","org.opencontainers.image.version":$(json_str "$VERSION"),"org.opencontainers.image.description":"flanneld, install-cni and the flannel, bridge and host-local CNI plugins"}},"rootfs":{"type":"layers","diff_ids":["sha256:$DIFF_ID"]}}
EOF
read -r CONFIG CONFIG_SIZE < <(blob "$WORK/config.json")

cat >"$WORK/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$CONFIG","size":$CONFIG_SIZE},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$LAYER","size":$LAYER_SIZE}]}
EOF
read -r MANIFEST MANIFEST_SIZE < <(blob "$WORK/manifest.json")

# containerd names the image from the first annotation, podman from the second.
cat >"$LAYOUT/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$MANIFEST","size":$MANIFEST_SIZE,"platform":{"architecture":"$ARCH","os":"linux"},"annotations":{"io.containerd.image.name":$(json_str "$NAME"),"org.opencontainers.image.ref.name":$(json_str "$NAME")}}]}
EOF
printf '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"

mkdir -p -- "$(dirname -- "$OUT")"
det_tar "$LAYOUT" "$WORK/image.tar" oci-layout index.json blobs
mv -f -- "$WORK/image.tar" "$OUT"

step "done"
for f in "$ROOTFS"/opt/bin/*; do printf '  %-12s %s bytes\n' "${f##*/}" "$(stat -c %s -- "$f")"; done
printf '  %-12s %s bytes (compressed layer %s bytes)\n' "image" "$(stat -c %s -- "$OUT")" "$LAYER_SIZE"
echo "$NAME"
echo "$OUT ($(du -h -- "$OUT" | cut -f1))"
echo "sha256:$MANIFEST (manifest digest)"
