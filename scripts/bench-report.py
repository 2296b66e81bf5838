#!/usr/bin/env python3
"""Writes artifacts/bench/report.md and results.json from the files scripts/bench left in
artifacts/bench/, checks the targets, and exits 1 (naming each) when one is missed.

Usage: scripts/bench-report.py OUT_DIR ELAPSED_SECONDS QUICK(0|1)
"""
import json
import os
import sys

out, elapsed, quick = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"

# Targets.
SLOW_P95_TARGET_MS = 150  # adaptive path, acquirer slow (issue 6 item 8)
FREE_PLAN_CPU_MS = 10.0  # Workers free plan, CPU per request
# Assumed slowdown of the core as WebAssembly built for size (opt-level "z", LTO) in V8,
# against native opt-level 3. Not measured here; a range, so the estimate is a range.
WASM_FACTOR = (2.0, 4.0)


def load(name):
    path = os.path.join(out, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


core = load("core")
runs = {n: load(n) for n in ["healthz", "tokens", "checkout_fast", "checkout_slow_adaptive", "checkout_slow_passthrough"]}
routing = {n: load(f"routing_after_{n}") for n in ["fast", "slow_adaptive", "slow_passthrough"]}

missed = []


def res(name):
    r = runs.get(name)
    return r["result"] if r else None


def lat(r, k):
    return r["latency_ms"][k] if r else None


# ---- targets
slow = res("checkout_slow_adaptive")
if slow is None:
    missed.append("the slow-acquirer run against the adaptive Worker did not produce results")
elif lat(slow, "p95") is None or lat(slow, "p95") >= SLOW_P95_TARGET_MS:
    missed.append(f"checkout p95 with a slow acquirer (adaptive) is {lat(slow, 'p95')} ms, target < {SLOW_P95_TARGET_MS} ms")
fast = res("checkout_fast")
if fast is None:
    missed.append("the zero-latency checkout run did not produce results")
elif fast["outcomes"]["approved"] != fast["requests"]:
    missed.append(f"zero-latency checkouts: {fast['outcomes']} of {fast['requests']}, expected all approved")

# ---- CPU per checkout
ops = {o["name"]: o for o in (core or {}).get("operations", [])}
core_worker_us = (core or {}).get("checkout_core_worker_ns", 0) / 1000
core_object_us = (core or {}).get("checkout_core_object_ns", 0) / 1000
est_lo, est_hi = core_worker_us * WASM_FACTOR[0] / 1000, core_worker_us * WASM_FACTOR[1] / 1000
obj_lo, obj_hi = core_object_us * WASM_FACTOR[0] / 1000, core_object_us * WASM_FACTOR[1] / 1000
measured_cpu = fast.get("cpu_ms_per_request") if fast else None
tok_cpu = res("tokens").get("cpu_ms_per_request") if res("tokens") else None
health_cpu = res("healthz").get("cpu_ms_per_request") if res("healthz") else None
if est_hi >= FREE_PLAN_CPU_MS:
    missed.append(f"estimated Worker CPU per checkout up to {est_hi:.2f} ms, free plan allows {FREE_PLAN_CPU_MS} ms")

results = {
    "quick": quick,
    "elapsed_s": elapsed,
    "targets": {
        "slow_acquirer_adaptive_checkout_p95_ms": {"target_lt": SLOW_P95_TARGET_MS, "value": lat(slow, "p95")},
        "worker_cpu_per_checkout_ms_estimate": {"target_lt": FREE_PLAN_CPU_MS, "value": [round(est_lo, 3), round(est_hi, 3)]},
        "zero_latency_checkouts_all_approved": {"value": bool(fast and fast["outcomes"]["approved"] == fast["requests"])},
    },
    "missed": missed,
    "core": core,
    "worker": runs,
    "routing_snapshots": routing,
    "cpu_estimate": {
        "wasm_factor_assumed": WASM_FACTOR,
        "core_native_us_worker_side": round(core_worker_us, 1),
        "core_native_us_object_side": round(core_object_us, 1),
        "worker_cpu_ms_estimate": [round(est_lo, 3), round(est_hi, 3)],
        "object_cpu_ms_estimate": [round(obj_lo, 3), round(obj_hi, 3)],
        "workerd_process_cpu_ms_per_checkout_measured": measured_cpu,
        "workerd_process_cpu_ms_per_token_measured": tok_cpu,
        "workerd_process_cpu_ms_per_healthz_measured": health_cpu,
    },
}
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)


# ---- report.md
def fmt(v, unit=""):
    return "–" if v is None else f"{v}{unit}"


def row(label, r):
    if r is None:
        return f"| {label} | – | – | – | – | – | – |"
    return f"| {label} | {r['requests']} | {fmt(lat(r, 'p50'))} | {fmt(lat(r, 'p95'))} | {fmt(lat(r, 'p99'))} | {fmt(lat(r, 'max'))} | {fmt(r.get('throughput_rps'))} |"


def outcome_row(label, r):
    if r is None:
        return f"| {label} | – | – | – | – | – | – |"
    o = r["outcomes"]
    errs = ", ".join(f"{k} {v}" for k, v in sorted(r.get("errors", {}).items())) or "none"
    rules = ", ".join(f"{k} {v}" for k, v in sorted(r.get("routing_rule", {}).items()))
    return f"| {label} | {o['approved']} | {o['queued']} | {o['declined']} | {o['errors']} ({errs}) | {r['over_1s']} | {rules} |"


L = []
L.append("# poptill benchmark report\n")
L.append(f"Written by `scripts/bench`{' --quick' if quick else ''} in {elapsed} s. Loopback only: the Worker runs in "
         "workerd under `wrangler dev` with fresh local state, the acquirer is `scripts/acquirer-sim.mjs`, the "
         "load comes from `scripts/bench-load.mjs` (Node `fetch`, concurrency "
         f"{(runs.get('checkout_fast') or {}).get('concurrency', 8)}). Load generator, simulator and workerd share "
         "the same machine (2 cores), so every latency here includes their contention.\n")
L.append("## Targets\n")
if missed:
    L.append("**Missed:**\n")
    L += [f"- {m}" for m in missed]
else:
    L.append("All targets met:\n")
L.append(f"- checkout p95 with a slow acquirer, adaptive routing: **{fmt(lat(slow, 'p95'), ' ms')}** (target < {SLOW_P95_TARGET_MS} ms)")
L.append(f"- Worker CPU per checkout, estimated: **{est_lo:.2f}–{est_hi:.2f} ms** (free plan: {FREE_PLAN_CPU_MS:.0f} ms); see below for what is measured")
L.append("")

L.append("## 1. Native core cost (measured)\n")
if core:
    L.append(f"`cargo run --profile bench-native --example bench_core` ({core['target']}, opt-level 3, no LTO); "
             f"median of {core['runs']} runs, each the mean over `iters` calls.\n")
    L.append("| operation | what | median | min | max | iters/run |")
    L.append("| --- | --- | ---: | ---: | ---: | ---: |")
    for o in core["operations"]:
        L.append(f"| `{o['name']}` | {o['what']} | {o['median_ns'] / 1000:.1f} µs | {o['min_ns'] / 1000:.1f} µs | {o['max_ns'] / 1000:.1f} µs | {o['iters_per_run']} |")
    L.append(f"\nThe ledger state of an event with {core['ledger_orders']:,} orders is **{core['ledger_json_bytes']:,} bytes** of JSON. "
             "The event's Durable Object writes the whole document after every state change "
             "(a checkout makes four: begin idempotency, hold, confirm, complete).\n")
else:
    L.append("No results (the example did not run).\n")

L.append("## 2. Inside the Worker, zero-latency acquirer (measured)\n")
L.append("Wall time per request at the client, in ms. `checkout` = one `POST /v1/events/{id}/checkout` (quote, hold, "
         "authorize on a lane, confirm, signed receipt, idempotency record); each used its own fresh token pair "
         "and Idempotency-Key.\n")
L.append("| request | n | p50 | p95 | p99 | max | req/s |")
L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
L.append(row("`GET /healthz` (floor)", res("healthz")))
L.append(row("`POST /v1/tokens`", res("tokens")))
L.append(row("`POST …/checkout`", fast))
L.append("")

L.append("## 3. Slow acquirer: both lanes p50 2 s, p95 4 s, 20 % errors (measured)\n")
L.append("The adaptive run follows the zero-latency run on the same Worker (the router has seen the lanes fast, as "
         "in production before an acquirer degrades); the pass-through run uses a second Worker started with "
         "`ROUTING_TUNING={\"pass_through\": true}` (first lane only, fixed 2.5 s timeout, no breaker), on a "
         "fresh simulator with the same lane settings.\n")
L.append("| routing | n | p50 | p95 | p99 | max | req/s |")
L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
L.append(row("adaptive", slow))
L.append(row("pass-through", res("checkout_slow_passthrough")))
L.append("\n| routing | approved | queued offline | declined | errors | over 1 s | routing rule (X-Poptill-Routing) |")
L.append("| --- | ---: | ---: | ---: | --- | ---: | --- |")
L.append(outcome_row("adaptive", slow))
L.append(outcome_row("pass-through", res("checkout_slow_passthrough")))
L.append("\nLatency by routing rule (ms; `cheapest`/`fastest`/`slow_probe`/`pass_through` waited on the "
         "acquirer, `no_healthy_lane` (breakers open) and `all_lanes_slow` went straight to the offline queue):\n")
L.append("| run | rule | n | p50 | p95 | max |")
L.append("| --- | --- | ---: | ---: | ---: | ---: |")
for name, label in [("checkout_fast", "zero-latency"), ("checkout_slow_adaptive", "slow, adaptive"), ("checkout_slow_passthrough", "slow, pass-through")]:
    r = res(name)
    for rule, v in sorted((r or {}).get("latency_by_rule", {}).items()):
        L.append(f"| {label} | `{rule}` | {v['n']} | {v['p50']} | {v['p95']} | {v['max']} |")
for name, label in [("checkout_fast", "zero-latency"), ("checkout_slow_adaptive", "adaptive"), ("checkout_slow_passthrough", "pass-through")]:
    r = res(name)
    if r and r.get("by_tenth_of_run"):
        parts = " · ".join(f"{d['p50']}" for d in r["by_tenth_of_run"])
        L.append(f"\np50 per tenth of the {label} checkout run, in completion order (ms): {parts}")
L.append("")
if slow:
    rules = slow.get("latency_by_rule", {})
    offline_rules = [v for k, v in rules.items() if k in ("no_healthy_lane", "all_lanes_slow")]
    n_off = sum(v["n"] for v in offline_rules)
    n_acq = sum(v["n"] for k, v in rules.items() if k not in ("no_healthy_lane", "all_lanes_slow"))
    worst_off_p50 = max((v["p50"] for v in offline_rules), default=None)
    L.append(f"Routing sent {n_off} of {slow['requests']} slow-run checkouts straight to the offline queue and "
             f"{n_acq} to the acquirer (first requests before the router learned, and probes).")
    if worst_off_p50 is not None and worst_off_p50 >= SLOW_P95_TARGET_MS:
        L.append(f"Checkouts that never called the acquirer still took p50 {worst_off_p50} ms: the rest of the path "
                 "(the event's Durable Object: hold, queue, order, receipt, idempotency, each a state change "
                 "that re-writes the whole ledger JSON) is itself slower than the target under this load, so no "
                 "routing change alone can meet it; compare the zero-latency checkout latency above.")
    L.append("")

L.append("## 4. CPU per checkout\n")
L.append("workerd does not report CPU time per request locally, so nothing here is Cloudflare's billed CPU time.\n")
L.append("- **Measured (upper bound):** CPU time (user + system, `/proc/PID/stat`) of the whole workerd process "
         f"during the zero-latency checkout phase, divided by the checkouts: **{fmt(measured_cpu, ' ms')}** per checkout. "
         "It includes the Worker, the event's Durable Object (SQLite, the ledger JSON written four times), local KV, "
         "workerd's HTTP stack and the runtime's own work (JS glue, GC, logging); Cloudflare bills the Worker's "
         f"part only (the object is billed separately). Same measure: {fmt(tok_cpu, ' ms')} per token, "
         f"{fmt(health_cpu, ' ms')} per `/healthz`.")
L.append(f"- **Measured (native):** the core work the Worker does for one approved checkout (detokenize + quote + "
         f"routing + acquirer encode/parse + receipt sign/verify): **{core_worker_us:.0f} µs** native; the event "
         f"object's core work (hold + confirm + 4 × JSON persist of a 1,000-order ledger): **{core_object_us:.0f} µs** native.")
L.append(f"- **Estimate:** the same core work as WebAssembly built for size runs, by assumption, {WASM_FACTOR[0]:.0f}–{WASM_FACTOR[1]:.0f}× "
         f"slower than native: **{est_lo:.2f}–{est_hi:.2f} ms** in the Worker per checkout, plus request/response JSON "
         f"and the runtime's per-request work, which the workerd figure above bounds. The event object's share at "
         f"1,000 orders would be {obj_lo:.1f}–{obj_hi:.1f} ms, dominated by re-serializing the whole ledger.")
L.append("- Not CPU: wall time of a checkout minus acquirer time is mostly waiting on Durable Object and KV round "
         "trips, so it is not used as a CPU figure.\n")
if routing.get("slow_adaptive"):
    L.append("## Router state after the slow adaptive run\n")
    L.append("```json")
    L.append(json.dumps(routing["slow_adaptive"].get("routing", routing["slow_adaptive"]), indent=1)[:3000])
    L.append("```\n")
L.append("Raw figures: `artifacts/bench/results.json` (and one JSON per run beside it).\n")
with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(L))

print("\n".join(L[: L.index("## 1. Native core cost (measured)\n")]), file=sys.stderr)
for name in runs:
    r = res(name)
    if r:
        print(f"  {name:<28} n={r['requests']:<5} p50={lat(r, 'p50')} p95={lat(r, 'p95')} p99={lat(r, 'p99')} ms", file=sys.stderr)
print(f"report: {os.path.join(out, 'report.md')}", file=sys.stderr)
if missed:
    print("scripts/bench: TARGET MISSED:", file=sys.stderr)
    for m in missed:
        print(f"  - {m}", file=sys.stderr)
    sys.exit(1)
print("scripts/bench: all targets met", file=sys.stderr)
