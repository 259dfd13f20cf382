#!/usr/bin/env bash
# Set up everything myco needs on a fresh Debian machine with the Rust toolchain: system
# packages and (with later job kinds) model files. Idempotent: run it as often as you like.
set -euo pipefail
cd "$(dirname "$0")"

say() { printf 'setup: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo is missing: install the Rust toolchain (https://rustup.rs) and run ./setup.sh again"
  exit 1
fi

# Debian packages the build needs, installed only if absent. The current job kinds (chunk,
# noop) are pure Rust, so the list is empty; llama.cpp (cmake, clang) joins it with inference.
APT_PACKAGES=()
need=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  say "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

say "fetching crates"
cargo fetch --locked
say "ready: cargo run --release -p myco -- --help"
