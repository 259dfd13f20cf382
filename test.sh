#!/usr/bin/env bash
# The test command: formatting, lints, the layering checks, and every test of the workspace
# (unit, property, integration with real node processes, crash tests). Run ./setup.sh first.
set -euo pipefail
cd "$(dirname "$0")"

# llama-cpp-sys-2 configures llama.cpp's CMake build only when the build folder has no
# CMakeCache.txt. A configure that was cut off (a full disk, a killed run) leaves the cache
# without a Makefile, and every later build of that folder then fails with "No rule to make
# target 'Makefile'". Drop such caches so the next build configures again.
for cache in "${CARGO_TARGET_DIR:-target}"/*/build/llama-cpp-sys-2-*/out/build/CMakeCache.txt; do
  [ -e "$cache" ] || continue
  dir=$(dirname "$cache")
  if [ ! -e "$dir/Makefile" ] && [ ! -e "$dir/build.ninja" ]; then
    echo "test.sh: $dir was configured but not generated (a cut-off build); configuring it again" >&2
    rm -f "$cache"
  fi
done

cargo fmt --all --check
# No import circles between the files of a crate.
python3 .ci/import-cycles.py runtime jobs actors cli
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p myco-runtime -p myco-actors --no-default-features --all-targets --locked -- -D warnings
# The queue, cluster and actors without model engines: builds no llama.cpp or ONNX Runtime,
# and runs the runtime's tests (they do not depend on the engines: not run twice).
.ci/no-engines.sh
cargo test --workspace --exclude myco-runtime --locked
# The tests that need root (network namespaces: a partition, and the chaos test's cut-off
# node; a mount namespace: a full disk during a model transfer) are #[ignore]d for plain
# `cargo test`; they run here wherever this runs as root.
if [ "$(id -u)" = 0 ]; then
  cargo test -p myco --locked --test partition --test chaos --test pipeline -- --ignored
else
  echo "test.sh: not root: the partition, chaos and full-disk tests did not run" >&2
fi
# llama.cpp's Vulkan backend, on Mesa's software device (ggml skips CPU-type Vulkan devices
# unless GGML_VK_VISIBLE_DEVICES names them): infer and a 2-stage chain with every layer on
# the device give the CPU's tokens. Newer Vulkan headers than Debian 12's: see setup.sh.
VK_HEADERS="${XDG_CACHE_HOME:-$HOME/.cache}/myco/vulkan-headers/usr/include"
if [ -d "$VK_HEADERS" ]; then export CPLUS_INCLUDE_PATH="$VK_HEADERS${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}"; fi
cargo clippy -p myco-jobs --features vulkan --all-targets --locked -- -D warnings
GGML_VK_VISIBLE_DEVICES=0 cargo test -p myco-jobs --features vulkan --test gpu --locked
# Fuzzing: each target in fuzz/ for a bounded time (MYCO_FUZZ_SECS, default 30), on the
# stable toolchain; a crash fails the run and leaves its input in fuzz/artifacts/.
.ci/fuzz.sh
