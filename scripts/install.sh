#!/usr/bin/env bash
# Installs the suite onto this node, or into a staging root.
#
#   scripts/install.sh [--root DIR] [--cni-bin-dir DIR] [--cni-conf-dir DIR]
#                      [--bin-from DIR] [--force] [--uninstall]
#
# Puts, under DIR (default /):
#   <cni-bin-dir>/flannel, bridge, host-local   (default /opt/cni/bin)
#   /usr/local/bin/flanneld
#   <cni-conf-dir>/10-flannel.conflist          (default /etc/cni/net.d)
#   /etc/systemd/system/flanneld.service
#   /etc/default/flanneld                       (FLANNELD_* settings, mode 0600)
# and records each file with its sha256 in /var/lib/cni-rs/install-manifest.
# The files come from dist/; the binaries from a build with the dist profile
# (cargo build --locked --profile dist), or from --bin-from.
#
#   --root DIR          install under DIR (a packager's or a test's staging
#                       root); nothing outside DIR is touched, systemd is not
#                       called. The other paths are paths on the node, under DIR.
#   --cni-bin-dir DIR   where the CNI plugins go (default /opt/cni/bin)
#   --cni-conf-dir DIR  where the conflist goes (default /etc/cni/net.d)
#   --bin-from DIR      take flannel, bridge, host-local and flanneld already
#                       built in DIR (e.g. target/debug) instead of building
#   --force             overwrite files that are not ours or were changed since
#                       we installed them; with --uninstall, remove changed
#                       files too
#   --uninstall         remove what the install put there (per the manifest):
#                       files still as installed, then the directories the
#                       install created, when empty, and the manifest; a
#                       changed file is kept and stays in the manifest
#   -h, --help          this text
#
# Re-running is safe: identical files are left alone ("unchanged"), our own
# unchanged files are updated, edits to files under /etc are kept (--force
# replaces them). A file
# that is not ours is never overwritten without --force, and when there is
# such a conflict nothing at all is installed. On the node itself (no
# --root) it runs `systemctl daemon-reload` when systemd runs, and never
# enables or starts flanneld: it prints the next steps.
#
# The conflist is kube-flannel's: flannel, then portmap for hostPorts.
# portmap is not part of this suite: it comes from the reference CNI plugins
# (Debian: containernetworking-plugins, in /usr/lib/cni).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/lib/common.sh"

# The comment block above, without its "#".
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

ROOT=
CNI_BIN_DIR=/opt/cni/bin
CNI_CONF_DIR=/etc/cni/net.d
BIN_FROM=
FORCE=
UNINSTALL=
MANIFEST=/var/lib/cni-rs/install-manifest
PLUGINS=(flannel bridge host-local)

# value OPTION "$@": the option's value (`--opt value` or `--opt=value`).
value() {
  local opt=$1 arg=$2
  if [[ "$arg" == *=* ]]; then
    printf '%s' "${arg#*=}"
  else
    [ $# -ge 3 ] || die "$opt needs a value (see --help)"
    printf '%s' "$3"
  fi
}
while [ $# -gt 0 ]; do
  arg=$1
  shift_by=1
  [[ "$arg" == --*=* ]] || shift_by=2
  case "$arg" in
    --root | --root=*) ROOT=$(value --root "$@"); [ -n "$ROOT" ] || die "--root needs a directory" ;;
    --cni-bin-dir | --cni-bin-dir=*) CNI_BIN_DIR=$(value --cni-bin-dir "$@") ;;
    --cni-conf-dir | --cni-conf-dir=*) CNI_CONF_DIR=$(value --cni-conf-dir "$@") ;;
    --bin-from | --bin-from=*) BIN_FROM=$(value --bin-from "$@"); [ -n "$BIN_FROM" ] || die "--bin-from needs a directory" ;;
    --force) FORCE=1; shift_by=1 ;;
    --uninstall) UNINSTALL=1; shift_by=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $arg (see --help)" ;;
  esac
  shift "$shift_by"
done

# Paths on the node are absolute and plain; the staging root is made absolute.
for v in "$CNI_BIN_DIR" "$CNI_CONF_DIR"; do
  [[ "$v" == /* ]] || die "--cni-bin-dir and --cni-conf-dir take absolute paths (on the node), not $v"
done
for v in "$ROOT" "$CNI_BIN_DIR" "$CNI_CONF_DIR" "$BIN_FROM"; do
  [[ "$v" != *$'\n'* ]] || die "paths with a newline are not supported"
done
CNI_BIN_DIR=${CNI_BIN_DIR%/}
CNI_CONF_DIR=${CNI_CONF_DIR%/}
if [ -n "$ROOT" ]; then
  ROOT=$(realpath -m -- "$ROOT")
  if [ "$ROOT" = / ]; then ROOT=; fi
fi
[ -n "$ROOT" ] || [ "$(id -u)" -eq 0 ] || die "installing onto this node needs root (sudo $0), or stage it with --root DIR"
[ -z "$ROOT" ] || [ ! -e "$ROOT" ] || [ -d "$ROOT" ] || die "--root $ROOT is not a directory"

# Where a node path lands: under the staging root, which it must not leave
# through a symlink.
at() { printf '%s%s' "$ROOT" "$1"; }
# A file's directory must resolve inside the root (the file itself may be a
# symlink: it is replaced or removed, never written through).
check_inside_root() {
  [ -n "$ROOT" ] || return 0
  local real
  real=$(realpath -m -- "$(dirname -- "$(at "$1")")")
  case "$real/" in
    "$ROOT"/*) ;;
    *) die "$(dirname -- "$(at "$1")") resolves to $real, outside --root $ROOT (a symlink?); nothing was changed" ;;
  esac
}

sha() { sha256sum -- "$1" | awk '{print $1}'; }
mode_of() { stat -c '%a' -- "$1"; }

# The manifest: "dir PATH" for directories the install created, "file SHA256
# PATH" for files; node paths. Loaded into OLD_FILES / OLD_DIRS.
declare -A OLD_FILES=()
declare -a OLD_DIRS=()
load_manifest() {
  local m kind rest
  m=$(at "$MANIFEST")
  [ -f "$m" ] || return 0
  while IFS= read -r line; do
    case "$line" in '' | '#'*) continue ;; esac
    kind=${line%% *}
    rest=${line#* }
    case "$kind" in
      dir) OLD_DIRS+=("$rest") ;;
      file) OLD_FILES[${rest#* }]=${rest%% *} ;;
      *) die "$m: unexpected line \"$line\" (this is not a manifest install.sh wrote)" ;;
    esac
  done <"$m"
}

TMP_FILES=()
cleanup() { [ ${#TMP_FILES[@]} -eq 0 ] || rm -f -- "${TMP_FILES[@]}"; }
trap cleanup EXIT

# put SRC DEST MODE: write DEST (a real path) atomically: a temporary file
# in the same directory, synced, then renamed over DEST.
put() {
  local src=$1 dest=$2 mode=$3 tmp
  tmp=$(mktemp "$(dirname -- "$dest")/.$(basename -- "$dest").cni-rs-install.XXXXXX")
  TMP_FILES+=("$tmp")
  cat -- "$src" >"$tmp"
  chmod "$mode" -- "$tmp"
  sync -- "$tmp"
  mv -f -T -- "$tmp" "$dest"
}

report() { printf '  %-10s %s\n' "$1" "$2"; }

# write_manifest: the manifest from FILES (node path -> sha256) and DIRS.
declare -A FILES=()
DIRS=()
# An unchanged manifest is not touched (nor its directory, by a temp file).
write_manifest() {
  local m text tmp
  m=$(at "$MANIFEST")
  text=$(
    echo "# cni-rs: what scripts/install.sh installed; scripts/install.sh --uninstall removes it."
    echo "# dir PATH: a directory the install created; file SHA256 PATH: a file as installed."
    for d in "${DIRS[@]}"; do [ -z "$d" ] || echo "dir $d"; done | sort -u
    for path in "${!FILES[@]}"; do echo "file ${FILES[$path]} $path"; done | sort -k3
  )
  if [ -f "$m" ] && printf '%s\n' "$text" | cmp -s -- - "$m"; then
    return 0
  fi
  tmp=$(mktemp "$(dirname -- "$m")/.install-manifest.XXXXXX")
  TMP_FILES+=("$tmp")
  printf '%s\n' "$text" >"$tmp"
  put "$tmp" "$m" 644
}

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

# ---------------------------------------------------------------- uninstall
if [ -n "$UNINSTALL" ]; then
  load_manifest
  m=$(at "$MANIFEST")
  if [ ! -f "$m" ]; then
    echo "nothing to uninstall: no manifest at $m"
    exit 0
  fi
  if systemd_running && systemctl is-active --quiet flanneld.service; then
    echo "warning: flanneld.service is running; it keeps running until you stop it (systemctl disable --now flanneld)" >&2
  fi
  step "removing what install.sh put under ${ROOT:-/}"
  kept=0
  unit_removed=
  mapfile -t paths < <(printf '%s\n' "${!OLD_FILES[@]}" | sort)
  for path in "${paths[@]}"; do
    [ -n "$path" ] || continue
    check_inside_root "$path"
    f=$(at "$path")
    if [ ! -e "$f" ] && [ ! -L "$f" ]; then
      report gone "$f"
    elif [ ! -L "$f" ] && [ -f "$f" ] && [ "$(sha "$f")" = "${OLD_FILES[$path]}" ]; then
      rm -f -- "$f"
      report removed "$f"
    elif [ -n "$FORCE" ] && [ ! -d "$f" ]; then
      rm -f -- "$f"
      report removed "$f (changed since install; --force)"
    else
      echo "warning: kept $f: changed since it was installed (--force removes it)" >&2
      kept=$((kept + 1))
      FILES[$path]=${OLD_FILES[$path]}
      continue
    fi
    if [[ "$path" == */flanneld.service ]]; then unit_removed=1; fi
  done
  # With nothing kept the manifest goes first, so its directory can go too.
  if [ "$kept" -eq 0 ]; then
    rm -f -- "$m"
    report removed "$m"
  fi
  # Directories we created, deepest first, when nothing else is in them.
  while IFS= read -r dir; do
    [ -n "$dir" ] || continue
    d=$(at "$dir")
    if [ -d "$d" ] && [ ! -L "$d" ] && rmdir -- "$d" 2>/dev/null; then
      report removed "$d/"
    fi
  done < <(printf '%s\n' "${OLD_DIRS[@]}" | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
  if [ -n "$unit_removed" ] && systemd_running; then
    systemctl daemon-reload
    report reloaded "systemd (daemon-reload)"
  fi
  if [ "$kept" -gt 0 ]; then
    # The kept files stay listed (with the directories still there), so
    # that --uninstall --force can find them later.
    for d in "${OLD_DIRS[@]}"; do
      if [ -d "$(at "$d")" ]; then DIRS+=("$d"); fi
    done
    write_manifest
    report kept "$m (lists the $kept kept file(s))"
    echo "$kept changed file(s) kept; remove them by hand or re-run with --uninstall --force"
  fi
  echo "uninstalled"
  exit 0
fi

# ------------------------------------------------------------------ install
if [ -z "$BIN_FROM" ]; then
  # shellcheck source=/dev/null
  if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
  command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (1.89 or newer), or give built binaries with --bin-from DIR"
  step "building the suite (profile dist: release with whole-program LTO)"
  (cd "$REPO" && cargo build --locked --profile dist --bins -p flannel -p bridge -p host-local -p flanneld)
  BIN_FROM=${CARGO_TARGET_DIR:-$REPO/target}/dist
fi
BIN_FROM=$(realpath -m -- "$BIN_FROM")
missing=()
for b in "${PLUGINS[@]}" flanneld; do
  [ -f "$BIN_FROM/$b" ] && [ -x "$BIN_FROM/$b" ] || missing+=("$b")
done
[ ${#missing[@]} -eq 0 ] || die "--bin-from $BIN_FROM lacks ${missing[*]} (build them: cargo build --locked --bins -p flannel -p bridge -p host-local -p flanneld)"

# What goes where: source, node path, mode.
SRC=() DEST=() MODE=()
add() { SRC+=("$1"); DEST+=("$2"); MODE+=("$3"); }
for b in "${PLUGINS[@]}"; do add "$BIN_FROM/$b" "$CNI_BIN_DIR/$b" 755; done
add "$BIN_FROM/flanneld" /usr/local/bin/flanneld 755
add "$REPO/dist/10-flannel.conflist" "$CNI_CONF_DIR/10-flannel.conflist" 644
add "$REPO/dist/flanneld.service" /etc/systemd/system/flanneld.service 644
# 0600: it may hold the etcd password.
add "$REPO/dist/flanneld.env" /etc/default/flanneld 600
for s in "${SRC[@]}"; do [ -f "$s" ] || die "$s is missing (a broken checkout?)"; done

load_manifest

# Plan every target before touching any:
#   new        absent
#   unchanged  same content and mode (recorded only if we installed it)
#   mode       ours, same content, another mode: chmod
#   update     ours and as we installed it: replaced by the new version
#   keep       ours under /etc, edited since: left alone (without --force)
#   replace    anything else, with --force; without it, a conflict.
ACTION=()
conflicts=()
for i in "${!DEST[@]}"; do
  path=${DEST[$i]}
  check_inside_root "$path"
  f=$(at "$path")
  parent=$(dirname -- "$f")
  while [ ! -e "$parent" ] && [ ! -L "$parent" ]; do parent=$(dirname -- "$parent"); done
  [ -d "$parent" ] || die "$parent is not a directory, so $f cannot be installed; nothing was installed"
  [ -d "$f" ] && [ ! -L "$f" ] && die "$f is a directory; move it away first; nothing was installed"
  ours=${OLD_FILES[$path]:-}
  if [ ! -e "$f" ] && [ ! -L "$f" ]; then
    action=new
  elif [ -L "$f" ] || [ ! -f "$f" ]; then
    action=conflict
  elif cmp -s -- "${SRC[$i]}" "$f"; then
    if [ "$(mode_of "$f")" = "${MODE[$i]}" ]; then
      action=unchanged
    elif [ -n "$ours" ]; then
      action=mode
    else
      action=conflict
    fi
  elif [ -n "$ours" ] && [ "$(sha "$f")" = "$ours" ]; then
    action=update
  elif [ -n "$ours" ] && [[ "$path" == /etc/* ]] && [ -z "$FORCE" ]; then
    action=keep
  else
    action=conflict
  fi
  if [ "$action" = conflict ]; then
    if [ -n "$FORCE" ]; then action=replace; else conflicts+=("$f"); fi
  fi
  ACTION+=("$action")
done
if [ ${#conflicts[@]} -gt 0 ]; then
  for f in "${conflicts[@]}"; do
    echo "error: $f already exists, differs from what install.sh would put there (content or mode), and was not installed by it" >&2
  done
  die "nothing was installed. Move the file(s) above away, or re-run with --force to overwrite them"
fi

# Directories: every missing ancestor of a target (and of the manifest) is
# created and recorded, so that --uninstall removes it again when empty.
declare -A SEEN=()
NEW_DIRS=()
for path in "${DEST[@]}" "$MANIFEST"; do
  d=$(dirname -- "$path")
  while [ "$d" != / ] && [ ! -e "$(at "$d")" ]; do
    if [ -z "${SEEN[$d]:-}" ]; then SEEN[$d]=1; NEW_DIRS+=("$d"); fi
    d=$(dirname -- "$d")
  done
done

# The manifest: earlier entries kept (a file installed before under another
# --cni-bin-dir is still ours), rewritten after every change so that it is
# right also when the install stops half-way.
for path in "${!OLD_FILES[@]}"; do FILES[$path]=${OLD_FILES[$path]}; done
DIRS=("${OLD_DIRS[@]}" "${NEW_DIRS[@]}")

step "installing under ${ROOT:-/} (binaries from $BIN_FROM)"
umask 022
[ -z "$ROOT" ] || mkdir -p -- "$ROOT"
if [ ${#NEW_DIRS[@]} -gt 0 ]; then
  for d in "${NEW_DIRS[@]}"; do mkdir -p -- "$(at "$d")"; done
  write_manifest
fi
unit_changed=
binary_changed=
for i in "${!DEST[@]}"; do
  path=${DEST[$i]}
  f=$(at "$path")
  case "${ACTION[$i]}" in
    unchanged)
      if [ -n "${OLD_FILES[$path]:-}" ]; then
        report unchanged "$f"
      else
        report unchanged "$f (was already there: not recorded, --uninstall leaves it)"
      fi
      continue ;;
    keep)
      report kept "$f (edited since installed; the new one is $REPO/dist/$(basename -- "${SRC[$i]}"), --force installs it)"
      continue ;;
    mode) chmod "${MODE[$i]}" -- "$f"; report mode "$f (set to ${MODE[$i]})" ;;
    new) put "${SRC[$i]}" "$f" "${MODE[$i]}"; report installed "$f" ;;
    update) put "${SRC[$i]}" "$f" "${MODE[$i]}"; report updated "$f" ;;
    replace) put "${SRC[$i]}" "$f" "${MODE[$i]}"; report replaced "$f (--force)" ;;
  esac
  FILES[$path]=$(sha "$f")
  write_manifest
  if [[ "$path" == */flanneld.service ]]; then unit_changed=1; fi
  if [ "$path" = /usr/local/bin/flanneld ]; then binary_changed=1; fi
done

if [ ! -e "$(at "$CNI_BIN_DIR/portmap")" ]; then
  cat >&2 <<EOF
warning: $(at "$CNI_BIN_DIR/portmap") is missing. The conflist chains portmap after
  flannel (hostPort support), as kube-flannel's does, and a runtime fails
  every pod on this network until it is there. portmap is not part of this
  suite: it comes with the reference CNI plugins, e.g. on Debian
  \`apt-get install containernetworking-plugins\`, then
  \`ln -s /usr/lib/cni/portmap $CNI_BIN_DIR/portmap\`
  (or github.com/containernetworking/plugins/releases); or drop the portmap
  entry from $CNI_CONF_DIR/10-flannel.conflist.
EOF
fi

if [ -z "$ROOT" ]; then
  if systemd_running; then
    systemctl daemon-reload
    report reloaded "systemd (daemon-reload)"
    if [ -n "$binary_changed$unit_changed" ] && systemctl is-active --quiet flanneld.service; then
      echo "flanneld.service is running the previous version: systemctl restart flanneld"
    fi
  fi
  cat <<EOF

next steps (nothing was enabled or started):
  1. set the lease store, interface and masquerade in /etc/default/flanneld
     (etcd endpoints, or FLANNELD_STORE_DIR for a single node)
  2. put the network config in the store, e.g.
     etcdctl put /coreos.com/network/config '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
  3. systemctl enable --now flanneld
  4. check: journalctl -u flanneld; cat /run/flannel/subnet.env
  5. the runtime must run the plugins from $CNI_BIN_DIR, with the reference
     loopback and portmap there too (Debian's containerd is configured for
     /usr/lib/cni: set bin_dir = "$CNI_BIN_DIR" in /etc/containerd/config.toml)
EOF
fi
echo "installed"
