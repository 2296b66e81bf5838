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

# ---- the local stack: acquirer simulator + the Worker in workerd (wrangler dev) ----------
STACK_PIDS=()

# Stops every process the stack started (each runs in its own process group).
stop_stack() {
  local pid
  for pid in "${STACK_PIDS[@]:-}"; do
    [ -n "$pid" ] || continue
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${STACK_PIDS[@]:-}"; do
    [ -n "$pid" ] || continue
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  STACK_PIDS=()
}

wait_http() { # url seconds
  local url="$1" limit="${2:-120}" i
  for i in $(seq 1 $((limit * 4))); do
    curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
    sleep 0.25
  done
  return 1
}

dev_var() { # NAME from .dev.vars
  sed -n "s/^$1=//p" "$ROOT/.dev.vars" | head -n1
}

# ensure_schemathesis: the API contract run's tools (scripts/requirements-contract.txt,
# every version pinned) in the project-local virtualenv $ROOT/.venv-schemathesis; installs
# them when the venv is missing or differs. Exports ST_BIN.
ensure_schemathesis() {
  local venv="$ROOT/.venv-schemathesis" req="$ROOT/scripts/requirements-contract.txt"
  ST_BIN="$venv/bin/st"; export ST_BIN
  if [ -x "$ST_BIN" ] && cmp -s "$req" "$venv/.installed-requirements"; then return 0; fi
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" || { echo "error: python3 -m venv failed" >&2; return 1; }
  timeout -k 10 600 "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" ||
    { echo "error: could not install $req into $venv" >&2; return 1; }
  cp "$req" "$venv/.installed-requirements"
}

# start_stack PORT SIM_PORT STATE_DIR LOG_DIR: starts the simulator and wrangler dev; exports
# POPTILL_URL, SIM_URL and ADMIN_KEY for the tests. The Worker must already be built.
# EXTRA_WRANGLER_VARS (optional, see below) adds `--var NAME:VALUE`s, e.g. ROUTING_TUNING.
start_stack() {
  local port="$1" sim_port="$2" state="$3" logs="$4"
  mkdir -p "$state" "$logs"
  if [ -f "$ROOT/scripts/acquirer-sim.mjs" ]; then
    setsid node "$ROOT/scripts/acquirer-sim.mjs" --port "$sim_port" --lanes fast,cheap \
      >"$logs/acquirer-sim.log" 2>&1 < /dev/null &
    STACK_PIDS+=($!)
    wait_http "http://127.0.0.1:$sim_port/control/stats" 30 || { cat "$logs/acquirer-sim.log" >&2; die "acquirer simulator did not start"; }
  fi
  local lanes
  lanes=$(sed -n "s/^LANES = '\(.*\)'$/\1/p" "$ROOT/wrangler.toml" | head -n1 | sed "s/127.0.0.1:8788/127.0.0.1:$sim_port/g")
  local -a extra_vars=(--var "LANES:$lanes")
  if [ -n "${POLICY_PUBLIC_KEYS_JSON:-}" ]; then extra_vars+=(--var "POLICY_PUBLIC_KEYS:$POLICY_PUBLIC_KEYS_JSON"); fi
  # Optional extra vars, each NAME:VALUE: a bash array EXTRA_WRANGLER_VARS=("A:1" "B:{...}")
  # set by the caller, or an exported string with one NAME:VALUE per line.
  local v
  if [[ "$(declare -p EXTRA_WRANGLER_VARS 2>/dev/null)" == "declare -a"* ]]; then
    for v in ${EXTRA_WRANGLER_VARS[@]+"${EXTRA_WRANGLER_VARS[@]}"}; do extra_vars+=(--var "$v"); done
  elif [ -n "${EXTRA_WRANGLER_VARS:-}" ]; then
    while IFS= read -r v; do [ -z "$v" ] || extra_vars+=(--var "$v"); done <<< "$EXTRA_WRANGLER_VARS"
  fi
  # Optional extra wrangler dev arguments: a bash array EXTRA_WRANGLER_ARGS set by the
  # caller (scripts/bench passes --inspector-port).
  if [[ "$(declare -p EXTRA_WRANGLER_ARGS 2>/dev/null)" == "declare -a"* ]]; then
    extra_vars+=(${EXTRA_WRANGLER_ARGS[@]+"${EXTRA_WRANGLER_ARGS[@]}"})
  fi
  WORKER_VARS=("${extra_vars[@]}")
  start_worker "$port" "$state" "$logs/worker.log" || die "the Worker did not start"
  export POPTILL_URL="http://127.0.0.1:$port" SIM_URL="http://127.0.0.1:$sim_port"
  ADMIN_KEY="$(dev_var ADMIN_KEY)"; export ADMIN_KEY
  export POPTILL_WORKER_LOG="$logs/worker.log" POPTILL_STATE_DIR="$state"
}

# start_worker PORT STATE_DIR LOG_FILE: starts wrangler dev alone (the Worker in workerd) with
# the vars start_stack computed (WORKER_VARS), records its pid in WORKER_PID and STACK_PIDS,
# and waits for /healthz. stop_worker stops it again; scripts/chaos restarts the local
# runtime with the two while the simulator keeps running.
WORKER_VARS=()
WORKER_PID=""
start_worker() {
  local port="$1" state="$2" log="$3"
  cd "$ROOT"
  # Each stack gets its own inspector port (wrangler's default 9229 would keep a second
  # stack on the same machine from starting), unless the caller chose one.
  local -a inspector=()
  [[ " ${WORKER_VARS[*]-} " == *" --inspector-port "* ]] || inspector=(--inspector-port "$(free_port)")
  env CLOUDFLARE_CF_FETCH_ENABLED=false WRANGLER_SEND_METRICS=false CI=1 \
    setsid wrangler dev --ip 127.0.0.1 --port "$port" --persist-to "$state" \
      --show-interactive-dev-session=false --log-level log ${inspector[@]+"${inspector[@]}"} ${WORKER_VARS[@]+"${WORKER_VARS[@]}"} \
      >"$log" 2>&1 < /dev/null &
  WORKER_PID=$!
  STACK_PIDS+=("$WORKER_PID")
  if ! wait_http "http://127.0.0.1:$port/healthz" 240; then
    tail -n 40 "$log" >&2
    echo "error: the Worker did not answer on port $port" >&2
    return 1
  fi
}
stop_worker() {
  [ -n "$WORKER_PID" ] || return 0
  local pid="$WORKER_PID" keep=() p
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  for p in "${STACK_PIDS[@]:-}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  STACK_PIDS=(${keep[@]+"${keep[@]}"})
  WORKER_PID=""
}

# ensure_policy_key FILE: makes a policy author key at FILE once (never committed) and
# exports POLICY_KEY_FILE, POLICY_KID and POLICY_PUBLIC_KEYS_JSON for the stack.
ensure_policy_key() {
  local file="$1"
  mkdir -p "$(dirname "$file")"
  [ -f "$file" ] || "$ROOT/scripts/policy" keygen --out "$file" >/dev/null
  POLICY_KEY_FILE="$file"
  POLICY_KID="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["kid"])' "$file")"
  POLICY_PUBLIC_KEYS_JSON="$(python3 -c 'import json,sys; k=json.load(open(sys.argv[1])); print(json.dumps({k["kid"]: k["public_key"]}))' "$file")"
  export POLICY_KEY_FILE POLICY_KID POLICY_PUBLIC_KEYS_JSON
}

# seed_policies URL: signs every bundle in policies/ with the local author key and pushes it
# (an already active revision is left as it is).
seed_policies() {
  local url="$1" out
  out="$(mktemp -d)"
  local files=()
  for f in "$ROOT"/policies/*.json; do [ "$(basename "$f")" = schema.json ] || files+=("$f"); done
  "$ROOT/scripts/policy" sign --key "$POLICY_KEY_FILE" --out "$out" "${files[@]}" >/dev/null
  local f n=0
  for f in "$out"/*.signed.json; do
    POPTILL_ADMIN_KEY="$ADMIN_KEY" "$ROOT/scripts/policy" push --url "$url" "$f" >/dev/null 2>&1 || \
      POPTILL_ADMIN_KEY="$ADMIN_KEY" "$ROOT/scripts/policy" status --url "$url" "$(basename "$f" .signed.json)" >/dev/null 2>&1 || return 1
    n=$((n + 1))
  done
  rm -rf "$out"
  info "pushed $n signed policy bundles"
}
