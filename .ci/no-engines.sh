#!/usr/bin/env bash
# The feature wall: the queue, cluster and actors build and test without the model engines.
# Runs `cargo test -p myco-runtime -p myco-actors --no-default-features`, and fails if its
# build pulled in llama.cpp or ONNX Runtime (or candle, which is gone): cargo reports every artifact of the build
# (fresh ones too) as JSON, so a warm build cache hides nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test -p myco-runtime -p myco-actors --no-default-features --locked --no-run \
  --message-format=json-render-diagnostics >"$log"
heavy=$(python3 - "$log" <<'PY'
import json, re, sys
seen = set()
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") in ("compiler-artifact", "build-script-executed"):
        seen.add(msg.get("package_id", ""))
heavy = sorted(p for p in seen if re.search(r"(^|[/#@ ])(llama-cpp-sys-2|llama-cpp-2|ort|ort-sys|fastembed|candle-core|candle-nn)[@ #]", p))
print(f"{len(seen)} packages built", file=sys.stderr)
print("\n".join(heavy))
PY
)
if [ -n "$heavy" ]; then
  echo "the no-default-features build of myco-runtime and myco-actors pulled in model engines:" >&2
  echo "$heavy" >&2
  exit 1
fi
cargo test -p myco-runtime -p myco-actors --no-default-features --locked
