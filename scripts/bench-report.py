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
CPU_TARGET_MS = 5.0  # "far below" the free plan's 10 ms (issue 6 item 8): at most half
# https://developers.cloudflare.com/workers/platform/limits/ : Worker size 3 MB after
# compression on the Free plan (10 MB Paid); wrangler's own error says "3 MiB", so 3 MiB.
SIZE_LIMIT_GZIP_KIB = 3 * 1024
STARTUP_LIMIT_MS = 1000  # same page: Worker startup time 1 second (400 ms before 2025-10-10)
CHECKOUT_JS_GZIP_BUDGET = 10 * 1024  # wasm-tests/browser/size.test.mjs
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
N_STOCK = "1,000,000"
runs = {n: load(n) for n in ["healthz", "tokens", "checkout_fast", "counter_hot", "healthz_hot", "checkout_hot", "checkout_slow_adaptive", "checkout_slow_passthrough", "burst_small", "burst_large", "counter_burst_large"]}
sizes = load("sizes")
composition = load("composition")
startup = load("startup")
icpu = load("isolate_cpu")
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
iso = (icpu or {}).get("checkout")
iso_cpu = iso.get("cpu_ms_per_request") if iso else None
if iso_cpu is None:
    missed.append("the isolate's CPU per checkout could not be measured (scripts/bench-cpu.mjs over the inspector failed)")
elif iso_cpu > CPU_TARGET_MS:
    missed.append(f"isolate CPU per checkout is {iso_cpu} ms, target <= {CPU_TARGET_MS} ms (free plan {FREE_PLAN_CPU_MS:.0f} ms)")
elif iso and iso.get("ok", 0) < iso.get("requests", 0):
    missed.append(f"profiled checkouts: {iso.get('ok')} of {iso.get('requests')} approved, expected all")

# The checkout machine drives the same parts as the hand-timed rows: its whole checkout may
# cost at most MACHINE_OVERHEAD_MAX times their sum, measured in this run. Both sides are
# the fastest of their runs: the median of a 100 µs operation on this shared 2-core machine
# moves with whatever else runs (a compile beside the bench doubled it), the best run does
# not, and the parts are compared the same way.
MACHINE_OVERHEAD_MAX = 3.0
machine_ns = ops.get("checkout_machine_approved", {}).get("min_ns")
parts_ns = sum(ops.get(n, {}).get("min_ns", 0) for n in (
    "quote_5_lines", "routing_plan_acquire_complete", "acquirer_build_parse",
    "receipt_sign_verify", "ledger_hold_confirm_1000"))
machine_ratio = round(machine_ns / parts_ns, 2) if machine_ns and parts_ns else None
if machine_ratio is None:
    missed.append("the checkout machine's native cost was not measured (bench_core's checkout_machine_approved)")
elif machine_ratio > MACHINE_OVERHEAD_MAX:
    missed.append(f"one checkout through the checkout machine costs {machine_ratio}x its parts natively, at most {MACHINE_OVERHEAD_MAX}x")

upload = (sizes or {}).get("upload")
if not upload:
    missed.append("wrangler deploy --dry-run reported no upload size")
elif upload["gzip_kib"] > SIZE_LIMIT_GZIP_KIB:
    missed.append(f"Worker upload is {upload['gzip_kib']} KiB gzip, Free plan limit {SIZE_LIMIT_GZIP_KIB} KiB")
cjs = (sizes or {}).get("checkout_js")
if cjs and cjs["gzip_bytes"] > CHECKOUT_JS_GZIP_BUDGET:
    missed.append(f"checkout.js is {cjs['gzip_bytes']} bytes gzip, budget {CHECKOUT_JS_GZIP_BUDGET}")
startup_ms = (startup or {}).get("profile_span_ms")
if startup_ms is None:
    missed.append("the Worker's start-up time could not be measured (wrangler check startup)")
elif startup_ms >= STARTUP_LIMIT_MS:
    missed.append(f"Worker start-up {startup_ms} ms, limit {STARTUP_LIMIT_MS} ms")
hot, counter, hhot = res("checkout_hot"), res("counter_hot"), res("healthz_hot")
if hot is None or counter is None:
    missed.append("the hot-event run or its Durable Object counter floor did not produce results")
elif hot["outcomes"]["errors"] or counter["ok"] != counter["requests"]:
    missed.append(f"hot event: checkout outcomes {hot['outcomes']}, counter {counter['ok']} of {counter['requests']} ok")
after_hot = load("after_hot")
if after_hot is None:
    missed.append("no check of the Worker after the hot-event run")
elif not after_hot.get("responsive_15s_after") or after_hot.get("workerd_too_many_open_files"):
    missed.append(f"after the hot-event run (its offline-stored payments being forwarded) the Worker answered /healthz: "
                  f"{after_hot.get('responsive_15s_after')}; workerd logged 'Too many open files' "
                  f"{after_hot.get('workerd_too_many_open_files')} times (see artifacts/bench/after_hot_errors.log)")


def ratio(a, b):
    return round(a / b, 2) if a and b else None


# ---- the lean edge (issue 18's table): the upload, checkout.js, CPU per checkout, start-up
LEAN_UPLOAD_GZIP_KIB = 400
LEAN_CHECKOUT_JS_GZIP = 8192
LEAN_CPU_MS = 1.0
LEAN_STARTUP_MS = 30
if upload and upload["gzip_kib"] > LEAN_UPLOAD_GZIP_KIB:
    missed.append(f"lean edge: upload {upload['gzip_kib']} KiB gzip, target <= {LEAN_UPLOAD_GZIP_KIB} KiB")
if cjs and cjs["gzip_bytes"] > LEAN_CHECKOUT_JS_GZIP:
    missed.append(f"lean edge: checkout.js {cjs['gzip_bytes']} B gzip, target <= {LEAN_CHECKOUT_JS_GZIP} B")
if iso_cpu is not None and iso_cpu > LEAN_CPU_MS:
    missed.append(f"lean edge: isolate CPU per checkout {iso_cpu} ms, target <= {LEAN_CPU_MS} ms")
if startup_ms is not None and startup_ms > LEAN_STARTUP_MS:
    missed.append(f"lean edge: start-up {startup_ms} ms, target <= {LEAN_STARTUP_MS} ms")
if composition is None:
    missed.append("the module's composition was not measured (scripts/wasm-composition.py)")
elif composition["deployed"]["custom_sections"].get("name"):
    missed.append("the deployed module still carries a names section")

# ---- issue 15: drops and slow acquirers (targets from its table)
SLOW_ONLINE_MIN = 0.95  # slow acquirer: authorized online, not left to the alarm
SLOW_VS_PASSTHROUGH_MIN = 10.0  # adaptive buyer-answer p95 at least 10x better than pass-through
BURST_LARGE_APPROVED_MIN = 0.99
BURST_LARGE_P95_OVER_COUNTER_MAX = 3.0


def slow_online(r):
    """Of the slow run's checkouts: answered by the acquirer online (at once, or its own
    late answer to a confirming one), and left to the object's alarm (stored, or still
    confirming 20 s on)."""
    if r is None:
        return None
    o, later = r["outcomes"], r.get("confirming_then") or {}
    online = o["approved"] + o["declined"] + later.get("approved", 0) + later.get("declined", 0)
    alarm = o["queued"] + later.get("still_confirming", 0)
    n = online + alarm
    return {"online": online, "left_to_alarm": alarm, "share_online": round(online / n, 3) if n else None,
            "confirming": o.get("confirming", 0), "confirming_then": later}


def online(b):
    """Approved at once, or approved by the same online request after a `confirming`
    answer (never stored for the alarm)."""
    return b["outcomes"]["approved"] + (b.get("confirming_then") or {}).get("approved", 0)


slow_on = slow_online(slow)
passthrough = res("checkout_slow_passthrough")
slow_gain = ratio(lat(passthrough, "p95"), lat(slow, "p95"))
if slow_on is None or slow_on["share_online"] is None:
    missed.append("the slow-acquirer run gave no figure for payments authorized online")
elif slow_on["share_online"] < SLOW_ONLINE_MIN:
    missed.append(f"slow acquirer: {slow_on['online']} authorized online, {slow_on['left_to_alarm']} left to the alarm "
                  f"({slow_on['share_online']:.1%} online, target >= {SLOW_ONLINE_MIN:.0%})")
if slow_gain is None or slow_gain < SLOW_VS_PASSTHROUGH_MIN:
    missed.append(f"slow acquirer: buyer-answer p95 adaptive {lat(slow, 'p95')} ms vs pass-through {lat(passthrough, 'p95')} ms "
                  f"({slow_gain}x, target >= {SLOW_VS_PASSTHROUGH_MIN:.0f}x better)")
b_small, b_large, c_large = res("burst_small"), res("burst_large"), res("counter_burst_large")
if b_small is None:
    missed.append("the burst of 120 buyers produced no results")
elif online(b_small) != b_small["requests"] or b_small["outcomes"]["queued"] or b_small["outcomes"]["errors"]:
    missed.append(f"burst of {b_small['requests']} buyers on a healthy acquirer: {b_small['outcomes']}, target all approved online, none refused or stored")
b_large_share = round(online(b_large) / b_large["requests"], 3) if b_large and b_large["requests"] else None
b_large_p95_ratio = ratio(lat(b_large, "p95"), lat(c_large, "p95"))
if b_large is None or c_large is None:
    missed.append("the burst of 500 buyers or its counter floor produced no results")
else:
    if b_large_share is None or b_large_share < BURST_LARGE_APPROVED_MIN:
        missed.append(f"burst of {b_large['requests']} buyers: {b_large['outcomes']}, then {b_large.get('confirming_then')} ({b_large_share} approved online, target >= {BURST_LARGE_APPROVED_MIN})")
    if b_large_p95_ratio is None or b_large_p95_ratio > BURST_LARGE_P95_OVER_COUNTER_MAX:
        missed.append(f"burst of {b_large['requests']} buyers: p95 {lat(b_large, 'p95')} ms is {b_large_p95_ratio}x the counter's "
                      f"{lat(c_large, 'p95')} ms at the same concurrency (target <= {BURST_LARGE_P95_OVER_COUNTER_MAX:.0f}x)")
hot_stored = (hot or {}).get("outcomes", {}).get("queued")
if hot_stored:
    missed.append(f"hot event on a healthy acquirer: {hot_stored} checkouts stored offline, target 0")

results = {
    "quick": quick,
    "elapsed_s": elapsed,
    "targets": {
        "slow_acquirer_adaptive_checkout_p95_ms": {"target_lt": SLOW_P95_TARGET_MS, "value": lat(slow, "p95")},
        "isolate_cpu_per_checkout_ms": {"target_le": CPU_TARGET_MS, "free_plan_limit": FREE_PLAN_CPU_MS, "value": iso_cpu},
        "upload_gzip_kib": {"limit": SIZE_LIMIT_GZIP_KIB, "value": (upload or {}).get("gzip_kib")},
        "checkout_js_gzip_bytes": {"budget": CHECKOUT_JS_GZIP_BUDGET, "value": (cjs or {}).get("gzip_bytes")},
        "startup_ms": {"limit": STARTUP_LIMIT_MS, "value": startup_ms},
        "zero_latency_checkouts_all_approved": {"value": bool(fast and fast["outcomes"]["approved"] == fast["requests"])},
        "checkout_machine_over_its_parts": {"target_le": MACHINE_OVERHEAD_MAX, "value": machine_ratio},
        "slow_acquirer_share_authorized_online": {"target_ge": SLOW_ONLINE_MIN, "value": (slow_on or {}).get("share_online"), "detail": slow_on},
        "slow_acquirer_p95_passthrough_over_adaptive": {"target_ge": SLOW_VS_PASSTHROUGH_MIN, "value": slow_gain},
        "burst_small_all_approved_online": {"value": bool(b_small and online(b_small) == b_small["requests"]),
                                            "outcomes": (b_small or {}).get("outcomes"),
                                            "confirming_then": (b_small or {}).get("confirming_then")},
        "burst_large_share_approved_online": {"target_ge": BURST_LARGE_APPROVED_MIN, "value": b_large_share},
        "burst_large_p95_over_counter_p95": {"target_le": BURST_LARGE_P95_OVER_COUNTER_MAX, "value": b_large_p95_ratio},
        "hot_event_stored_offline": {"target": 0, "value": hot_stored},
        "lean_upload_gzip_kib": {"target_le": LEAN_UPLOAD_GZIP_KIB, "value": (upload or {}).get("gzip_kib")},
        "lean_checkout_js_gzip_bytes": {"target_le": LEAN_CHECKOUT_JS_GZIP, "value": (cjs or {}).get("gzip_bytes")},
        "lean_cpu_per_checkout_ms": {"target_le": LEAN_CPU_MS, "value": iso_cpu},
        "lean_startup_ms": {"target_le": LEAN_STARTUP_MS, "value": startup_ms},
    },
    "missed": missed,
    "core": core,
    "worker": runs,
    "routing_snapshots": routing,
    "whole_system": {
        "hot_event_checkouts_per_s": (hot or {}).get("throughput_rps"),
        "do_counter_increments_per_s": (counter or {}).get("throughput_rps"),
        "hot_checkout_share_of_counter": ratio((hot or {}).get("throughput_rps"), (counter or {}).get("throughput_rps")),
        "checkout_p50_over_healthz_p50": ratio(lat(fast, "p50"), lat(res("healthz"), "p50")),
        "sizes": sizes,
        "composition": composition,
        "startup": startup,
        "isolate_cpu": icpu,
        "after_hot": after_hot,
    },
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
L.append(f"- the Worker isolate's CPU per checkout, measured with the V8 profiler: **{fmt(iso_cpu, ' ms')}** (target ≤ {CPU_TARGET_MS:.0f} ms; free plan {FREE_PLAN_CPU_MS:.0f} ms)")
L.append(f"- Worker upload: **{fmt((upload or {}).get('gzip_kib'), ' KiB')} gzip** (Free plan limit {SIZE_LIMIT_GZIP_KIB} KiB = 3 MiB)")
L.append(f"- checkout.js: **{fmt((cjs or {}).get('gzip_bytes'), ' bytes')} gzip** (budget {CHECKOUT_JS_GZIP_BUDGET})")
L.append(f"- Worker start-up: **{fmt(startup_ms, ' ms')}** (limit {STARTUP_LIMIT_MS} ms)")
if slow_on:
    L.append(f"- slow acquirer: **{slow_on['online']} authorized online, {slow_on['left_to_alarm']} left to the alarm** "
             f"({fmt(slow_on['share_online'])}; target ≥ {SLOW_ONLINE_MIN}); {slow_on['confirming']} answered `confirming` first, "
             f"then {slow_on['confirming_then']}; buyer-answer p95 {fmt(lat(slow, 'p95'), ' ms')} vs pass-through "
             f"{fmt(lat(passthrough, 'p95'), ' ms')} ({fmt(slow_gain, '×')}; target ≥ {SLOW_VS_PASSTHROUGH_MIN:.0f}×)")
for label, b in (("burst of 120", b_small), ("burst of 500", b_large)):
    if b:
        L.append(f"- {label} buyers at once, healthy acquirer: **{online(b)} approved online** ({b['outcomes']}; "
                 f"the confirming ones then {b.get('confirming_then')}), p50/p95/p99 "
                 f"{fmt(lat(b, 'p50'))}/{fmt(lat(b, 'p95'))}/{fmt(lat(b, 'p99'))} ms")
if c_large:
    L.append(f"  (bare counter at concurrency {c_large['requests']}: p95 {fmt(lat(c_large, 'p95'), ' ms')}; "
             f"burst p95 ÷ counter p95 {fmt(b_large_p95_ratio, '×')}, target ≤ {BURST_LARGE_P95_OVER_COUNTER_MAX:.0f}×)")
L.append("")

if composition:
    c = composition
    L.append("## What the module is made of\n")
    L.append(f"Deployed `build/index_bg.wasm`: {c['deployed']['raw_bytes']:,} B raw, {c['deployed']['gzip_bytes']:,} B gzip "
             f"(the symbolized build, `build/symbols/`, is {c['symbolized']['raw_bytes']:,} B: its names section of "
             f"{c['symbolized']['names_section_bytes']:,} B and producers of {c['symbolized']['producers_section_bytes']} B "
             f"are stripped). {c['functions']:,} functions, {c['code_bytes']:,} B of code; {c['data_segments']['bytes']:,} B of "
             f"data in {c['data_segments']['count']} segments (largest {', '.join(f'{b:,}' for b in c['data_segments']['largest'])} B).\n")
    L.append("| section | bytes |")
    L.append("| --- | ---: |")
    for sec in sorted(c["deployed"]["sections"], key=lambda x: -x["bytes"])[:6]:
        L.append(f"| {sec['section']} | {sec['bytes']:,} |")
    L.append("\nCode per crate (own function bodies):\n")
    L.append("| crate | bytes |")
    L.append("| --- | ---: |")
    for k, v in list(c["code_by_crate"].items())[:10]:
        L.append(f"| `{k}` | {v:,} |")
    L.append("\nLargest functions by their own size (not retained size):\n")
    L.append("| function | bytes |")
    L.append("| --- | ---: |")
    for f in c["top_functions_by_own_size"][:12]:
        L.append(f"| `{f['name'][:110]}` | {f['bytes']:,} |")
    L.append("")

L.append("## Whole system, each figure beside its floor from this run\n")
L.append("| figure | value | floor (same run) | ratio |")
L.append("| --- | ---: | ---: | ---: |")
hz = res("healthz")
hot_out = ", ".join(f"{k} {v}" for k, v in ((hot or {}).get("outcomes") or {}).items())
L.append(f"| checkouts/s, one hot event, concurrency {(runs.get('checkout_hot') or {}).get('concurrency', '–')} ({hot_out}) | {fmt((hot or {}).get('throughput_rps'))} | bare Durable Object counter: {fmt((counter or {}).get('throughput_rps'))} increments/s | {fmt(ratio((hot or {}).get('throughput_rps'), (counter or {}).get('throughput_rps')))} |")
for k in ("p50", "p95", "p99"):
    L.append(f"| checkout {k}, concurrency {(runs.get('checkout_fast') or {}).get('concurrency', '–')} | {fmt(lat(fast, k), ' ms')} | `GET /healthz` {k}: {fmt(lat(hz, k), ' ms')} | {fmt(ratio(lat(fast, k), lat(hz, k)))}× |")
for k in ("p50", "p95", "p99"):
    L.append(f"| hot-event checkout {k}, concurrency {(runs.get('checkout_hot') or {}).get('concurrency', '–')} | {fmt(lat(hot, k), ' ms')} | counter {k}: {fmt(lat(counter, k), ' ms')}; `/healthz` {k}: {fmt(lat(hhot, k), ' ms')} | {fmt(ratio(lat(hot, k), lat(counter, k)))}× counter |")
w = (sizes or {}).get("wasm") or {}
g = (sizes or {}).get("glue_js") or {}
L.append(f"| `build/index_bg.wasm` | {fmt(w.get('raw_bytes'))} B raw, {fmt(w.get('gzip_bytes'))} B gzip | Free plan: 3 MiB gzip for the whole upload | {fmt(ratio(w.get('gzip_bytes'), SIZE_LIMIT_GZIP_KIB * 1024))} |")
L.append(f"| upload (wasm + bundled glue, as `wrangler deploy --dry-run` counts it) | {fmt((upload or {}).get('raw_kib'))} KiB raw, {fmt((upload or {}).get('gzip_kib'))} KiB gzip | {SIZE_LIMIT_GZIP_KIB} KiB gzip | {fmt(ratio((upload or {}).get('gzip_kib'), SIZE_LIMIT_GZIP_KIB))} |")
L.append(f"| `checkout.js` | {fmt((cjs or {}).get('raw_bytes'))} B raw, {fmt((cjs or {}).get('gzip_bytes'))} B gzip | budget {CHECKOUT_JS_GZIP_BUDGET} B gzip | {fmt(ratio((cjs or {}).get('gzip_bytes'), CHECKOUT_JS_GZIP_BUDGET))} |")
L.append(f"| Worker start-up (`wrangler check startup` profile span) | {fmt(startup_ms, ' ms')} | limit {STARTUP_LIMIT_MS} ms | {fmt(ratio(startup_ms, STARTUP_LIMIT_MS))} |")
L.append(f"| isolate CPU per checkout | {fmt(iso_cpu, ' ms')} | `/healthz`: {fmt(((icpu or {}).get('healthz') or {}).get('cpu_ms_per_request'), ' ms')}; free plan {FREE_PLAN_CPU_MS:.0f} ms | {fmt(ratio(iso_cpu, FREE_PLAN_CPU_MS))} of 10 ms |")
L.append("")
L.append("- **Hot event**: one event is one Durable Object, the single writer of its stock and orders, so "
         "its checkouts per second are bounded by what one object of this Worker can serialize. The floor is "
         "`POST /v1/admin/bench/counter/{name}` (src/edge/counter_object.rs): the same Worker, operator auth, one "
         "Durable Object call that increments one SQLite row, driven at the same concurrency right before. "
         f"The checkouts used a fresh event with {N_STOCK} in stock; each had its own token pair (made before, not timed). "
         "At this concurrency the adaptive router may see the (zero-latency) acquirer slow down under the machine's own "
         "load and store payments offline (`queued`); both outcomes count as checkouts, the split is shown.")
L.append("- **Latency**: client wall time at the same concurrency; `/healthz` does routing, the log line and JSON, no storage.")
L.append("- **Size**: gzip -9 of the files; the upload figure is wrangler's own (what the plan limit applies to). "
         "Limits from https://developers.cloudflare.com/workers/platform/limits/ (Worker size: 3 MB Free / 10 MB Paid "
         "after compression; a May 2026 docs change, cloudflare-docs PR #31002, replaces it with 64 MiB uncompressed on all plans; "
         "the stricter 3 MiB gzip is used here).")
L.append("- **Start-up**: `wrangler check startup` (Cloudflare's tool for this limit) runs the deploy bundle in workerd and "
         "records a V8 CPU profile of the start-up phase (compiling the 2 MB wasm module, evaluating the glue, "
         "instantiating and running the crate's start function); the figure is the profile's span, an upper bound of "
         f"the start-up CPU on this loaded machine ({fmt((startup or {}).get('samples'))} samples: {fmt((startup or {}).get('samples_by_function'))}). "
         "Node 20 cannot compile this wasm (it uses the exception-handling/reference-type features of newer V8), so the "
         "glue cannot be timed in Node here.")
L.append("")

L.append("## 1. Native core cost (measured)\n")
if core:
    L.append(f"`cargo run --profile bench-native --example bench_core` ({core['target']}, opt-level 3, no LTO); "
             f"median of {core['runs']} runs, each the mean over `iters` calls.\n")
    L.append("| operation | what | median | min | max | iters/run |")
    L.append("| --- | --- | ---: | ---: | ---: | ---: |")
    for o in core["operations"]:
        L.append(f"| `{o['name']}` | {o['what']} | {o['median_ns'] / 1000:.1f} µs | {o['min_ns'] / 1000:.1f} µs | {o['max_ns'] / 1000:.1f} µs | {o['iters_per_run']} |")
    L.append(f"\nThe ledger state of an event with {core['ledger_orders']:,} orders is **{core['ledger_json_bytes']:,} bytes** of JSON "
             "(read once per object start; each change writes only its changed rows). "
             f"`checkout_machine_approved` is one whole checkout through the same `checkout::Checkout` machine the Worker and "
             f"the simulation drive: best run {machine_ns / 1000 if machine_ns else 0:.1f} µs, {machine_ratio}x the sum of the best runs of the parts timed "
             f"above (quote, routing, acquirer, receipt, hold and confirm; at most {MACHINE_OVERHEAD_MAX}x), "
             f"{core.get('checkout_machine_persisted_bytes', 0):.0f} bytes of changed rows per checkout.\n")
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

L.append("## 4. CPU per checkout (measured in the isolate)\n")
if icpu and iso:
    hz_c = icpu.get("healthz") or {}
    tk_c = icpu.get("tokens") or {}
    L.append(f"`scripts/bench-cpu.mjs` connects to `wrangler dev --inspector-port` (Chrome DevTools Protocol), runs "
             f"`Profiler.start`, sends {iso['requests']} checkouts at concurrency {icpu.get('concurrency')} on a fresh event "
             f"(token pairs made beforehand, in their own phase), and `Profiler.stop` (sampling interval {icpu.get('sampling_interval_us')} µs, "
             f"actual tick {iso.get('tick_period_us')} µs). V8 records a sample only while the isolate is entered (workerd leaves it "
             "while it waits on I/O), so samples × tick = the time the isolate was entered; `(idle)` samples are excluded. "
             f"workerd runs the event's Durable Object in the same isolate as the Worker (one script, one isolate in "
             f"`wrangler dev`; this profile holds {iso.get('event_object_frames', 0)} call-tree nodes of `edge::event_object` and "
             f"{iso.get('worker_shell_frames', 0)} of `edge::events`), so this figure is **Worker + Durable Object**, SQLite calls "
             "included (they run synchronously inside the isolate). On Cloudflare the two are billed separately.\n")
    L.append("On this shared 2-core machine the workerd thread waits in the run queue for much of the time, and an entered "
             "isolate whose thread is preempted still collects samples. The CPU figure therefore scales the entered time by "
             "the thread's on-CPU share during the phase (`/proc/PID/task/TID/schedstat`: on-CPU / (on-CPU + run-queue)).\n")
    L.append("| phase | n | entered ms/req | on-CPU share | **CPU ms/req** | (program) | (garbage collector) | JS glue | wasm | workerd thread on-CPU ms/req (all isolates, upper bound) |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, ph in (("`GET /healthz` (floor)", hz_c), ("`POST /v1/tokens`", tk_c), ("`POST …/checkout`", iso)):
        th = ph.get("host_thread") or {}
        L.append(f"| {label} | {ph.get('requests')} | {ph.get('entered_ms_per_request')} | {fmt(th.get('on_cpu_share'))} | **{ph.get('cpu_ms_per_request')}** | "
                 f"{ph.get('program_ms_per_request')} | {ph.get('gc_ms_per_request')} | {ph.get('js_ms_per_request')} | {ph.get('wasm_ms_per_request')} | {fmt(th.get('run_ms_per_request'))} |")
    L.append("\nWhere the checkout's isolate time went (self time, top functions):\n")
    L.append("| function | samples | ms (entered) |")
    L.append("| --- | ---: | ---: |")
    for t in iso.get("top_self_time", [])[:10]:
        fn = t["fn"].replace("|", "\\|")
        L.append(f"| `{fn[:110]}` | {t['samples']} | {t['ms']} |")
    L.append("")
else:
    L.append("The inspector measurement did not produce results (see the run's log).\n")
L.append("For context (not the target): the whole workerd process CPU (`/proc`, both workerd processes of `wrangler dev`, "
         f"all runtime work, KV and SQLite) per zero-latency checkout was {fmt(measured_cpu, ' ms')} "
         f"({fmt(tok_cpu, ' ms')} per token, {fmt(health_cpu, ' ms')} per `/healthz`); the native core work of a checkout is "
         f"{core_worker_us:.0f} µs (Worker side) and {core_object_us:.0f} µs (event object side, 1,000-order ledger).\n")
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
