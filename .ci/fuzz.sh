#!/usr/bin/env bash
# Fuzz the input myco reads from outside (fuzz/fuzz_targets/: peers' wire frames, job files,
# HTML and PDF documents, GGUF headers) and what it stores (queue records of every format),
# MYCO_FUZZ_SECS (default 30) seconds each.
#
# The targets use cargo-fuzz's layout, but CI does not need cargo-fuzz or a nightly
# toolchain: this builds them as `cargo fuzz build --sanitizer none` does, with libFuzzer's
# coverage instrumentation (stable rustc flags), for the host target only (so build scripts
# and proc macros stay uninstrumented). Each run starts from the committed corpus
# (fuzz/corpus/TARGET, seeds from examples/ and the fixtures) and writes what it finds to a
# scratch copy; a crash leaves its input in fuzz/artifacts/TARGET/ and fails the run: commit
# that file as a regression input under fuzz/regressions/TARGET/ with the fix.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${MYCO_FUZZ_SECS:-30}"
host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/myco/target}/fuzz"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --locked --target "$host" --bins
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in wire records job_toml extract gguf_header; do
  bin="$CARGO_TARGET_DIR/$host/release/$t"
  mkdir -p "artifacts/$t" "$scratch/$t"
  # Known crashers first: each must now pass.
  if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t")" ]; then
    "$bin" -runs=0 "regressions/$t"/* >/dev/null 2>&1 || {
      echo "fuzz: a regression input of $t fails again" >&2
      "$bin" -runs=0 "regressions/$t"/*
      exit 1
    }
  fi
  echo "fuzz: $t for ${secs}s"
  "$bin" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "$scratch/$t" "corpus/$t" 2>&1 | tail -n 4
done
