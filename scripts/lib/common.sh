# Shared by the scripts: run as root on Debian, install what is missing.
# shellcheck shell=bash

die() { echo "error: $*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "run me as root: I create network namespaces (sudo $0)"
}

# ensure_packages PKG...: apt-get installs the Debian packages not yet installed.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "apt-get not found; install by hand: ${missing[*]}"
  step "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_rust: cargo plus the rustfmt and clippy components.
ensure_rust() {
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (1.89 or newer) with rustup"
  if command -v rustup >/dev/null; then
    cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
    cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
  fi
}

# Namespaces our tests and demo make carry this prefix.
NETNS_PREFIX=cnirs-
leftover_namespaces() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep "^${NETNS_PREFIX}" || true
}
