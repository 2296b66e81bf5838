# shellcheck shell=bash
# Shared helpers for poptill's scripts: logging, timing and the wasm32 toolchain choice.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$ROOT/node_modules/.bin:$PATH"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The wasm-bindgen version in Cargo.lock: the CLI must match it exactly.
wasm_bindgen_version() {
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock"
}

# Which rustup toolchain builds wasm32: the default one when rustup has the target,
# otherwise "web" (Debian's rustc-web with a locally built wasm32 std, see scripts/setup).
wasm_toolchain() {
  if [ -f "$ROOT/target/.wasm-toolchain" ]; then
    cat "$ROOT/target/.wasm-toolchain"
  elif rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    rustup show active-toolchain 2>/dev/null | awk '{print $1}'
  else
    echo web
  fi
}

# Environment for worker-build: local binaries instead of its own downloads.
worker_build_env() {
  export WASM_BINDGEN_BIN="$HOME/.cargo/bin/wasm-bindgen"
  export ESBUILD_BIN="$ROOT/node_modules/.bin/esbuild"
  export WASM_OPT_BIN="$ROOT/node_modules/.bin/wasm-opt"
  RUSTUP_TOOLCHAIN="$(wasm_toolchain)"
  export RUSTUP_TOOLCHAIN
}

# Times a stage and records it for the summary printed by summarize_stages.
STAGES=()
run_stage() {
  local name="$1"; shift
  step "$name"
  local start=$SECONDS status=0
  "$@" || status=$?
  local took=$((SECONDS - start))
  STAGES+=("$(printf '%-34s %5ss  %s' "$name" "$took" "$([ $status -eq 0 ] && echo ok || echo FAILED)")")
  return $status
}
summarize_stages() {
  printf '\n%-34s %6s  %s\n' stage time result >&2
  local s; for s in "${STAGES[@]}"; do printf '%s\n' "$s" >&2; done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
