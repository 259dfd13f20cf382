#!/usr/bin/env bash
# The test command: formatting, lints, and every test of the workspace (unit, property,
# integration with real node processes, crash tests). Run ./setup.sh first.
set -euo pipefail
cd "$(dirname "$0")"

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
