#!/usr/bin/env bash
# The test command: formatting, lints, the layering checks, and every test of the workspace
# (unit, property, integration with real node processes, crash tests). Run ./setup.sh first.
set -euo pipefail
cd "$(dirname "$0")"

cargo fmt --all --check
# No import circles between the files of a crate.
python3 .ci/import-cycles.py runtime jobs actors cli
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p myco-runtime -p myco-actors --no-default-features --all-targets --locked -- -D warnings
# The queue, cluster and actors without model engines: builds no llama.cpp or ONNX Runtime,
# and runs the runtime's tests (they do not depend on the engines: not run twice).
.ci/no-engines.sh
cargo test --workspace --exclude myco-runtime --locked
