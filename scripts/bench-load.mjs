#!/usr/bin/env node
// Load generator for scripts/bench (no npm dependencies): sends one kind of request to a
// running poptill Worker with bounded concurrency, a bounded request count and a bounded
// duration, and writes latency percentiles and outcome counts as JSON.
//
//   node scripts/bench-load.mjs --url http://127.0.0.1:8787 --scenario healthz|tokens|checkout|counter
//        [--event evt_...] [--sku entry] [--concurrency 8] [--requests 500] [--duration-ms 60000]
//        [--label name] [--out FILE] [--cpu-pids "PID PID"]
//
// healthz:  GET /healthz (the floor: routing, logging, no storage).
// counter:  POST /v1/admin/bench/counter/{--counter} with ADMIN_KEY from the environment:
//           one SQLite increment in a bare Durable Object (the floor for one hot event).
// tokens:   POST /v1/tokens for --event (card 4242..., CVC) - a card token and a CVC token.
// checkout: first makes one token pair per checkout (measured and reported as "tokens"),
//           then POST /v1/events/{id}/checkout, each with its own token pair and a unique
//           Idempotency-Key; outcomes: approved / queued (201), declined (402), errors
//           (anything else, by error code). The X-Poptill-Routing header's rule (the text
//           before ';') is counted too.
// Latency is wall time from just before fetch() to the end of the response body, in ms.
// --cpu-pids: processes (the workerd of the stack) whose CPU time (user + system, from
// /proc/PID/stat) each phase used; reported as cpu_ms and cpu_ms_per_request.
// Loopback only: the URL must be http://127.0.0.1 or http://localhost.

import fs from "node:fs";
import crypto from "node:crypto";
import { freshCard } from "./test-cards.mjs";

function parseArgs(argv) {
  const o = { concurrency: 8, requests: 500, durationMs: 60_000, sku: "entry", label: null, out: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--url") o.url = v();
    else if (a === "--scenario") o.scenario = v();
    else if (a === "--event") o.event = v();
    else if (a === "--sku") o.sku = v();
    else if (a === "--concurrency") o.concurrency = Number(v());
    else if (a === "--requests") o.requests = Number(v());
    else if (a === "--duration-ms") o.durationMs = Number(v());
    else if (a === "--label") o.label = v();
    else if (a === "--out") o.out = v();
    else if (a === "--counter") o.counter = v();
    else if (a === "--cpu-pids") o.cpuPids = v().split(/\s+/).filter(Boolean);
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.url || !/^http:\/\/(127\.0\.0\.1|localhost)(:\d+)?$/.test(o.url)) throw new Error("--url must be http://127.0.0.1:PORT (loopback only)");
  if (!["healthz", "tokens", "checkout", "counter"].includes(o.scenario)) throw new Error("--scenario must be healthz, tokens, checkout or counter");
  if (["tokens", "checkout"].includes(o.scenario) && !o.event) throw new Error(`--scenario ${o.scenario} needs --event`);
  if (o.scenario === "counter" && !(o.counter && process.env.ADMIN_KEY)) throw new Error("--scenario counter needs --counter NAME and ADMIN_KEY in the environment");
  for (const k of ["concurrency", "requests", "durationMs"]) {
    if (!Number.isInteger(o[k]) || o[k] < 1) throw new Error(`--${k} must be a positive integer`);
  }
  o.label ??= o.scenario;
  return o;
}

const CLK_TCK = 100; // Linux USER_HZ; scripts/bench checks getconf CLK_TCK.

/// CPU milliseconds used so far by the given processes (null when unknown).
function cpuMs(pids) {
  if (!pids?.length) return null;
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      ticks += Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
    } catch {
      return null;
    }
  }
  return (ticks * 1000) / CLK_TCK;
}

/// Runs a phase and adds the CPU the given processes spent during it.
async function withCpu(pids, f) {
  const before = cpuMs(pids);
  const out = await f();
  const after = cpuMs(pids);
  out.cpuMs = before === null || after === null ? null : after - before;
  return out;
}

function cpuFields(cpu, n) {
  return cpu === null || cpu === undefined ? {} : { cpu_ms: Math.round(cpu), cpu_ms_per_request: n ? Math.round((cpu / n) * 100) / 100 : null };
}

/// Nearest-rank percentile of sorted values.
function pct(sorted, p) {
  if (sorted.length === 0) return null;
  const idx = Math.max(0, Math.ceil((p / 100) * sorted.length) - 1);
  return Math.round(sorted[Math.min(idx, sorted.length - 1)] * 10) / 10;
}

function summarize(name, samples, wallMs, extra = {}) {
  const ms = samples.map((s) => s.ms).sort((a, b) => a - b);
  const sum = ms.reduce((a, b) => a + b, 0);
  return {
    name,
    requests: samples.length,
    wall_ms: Math.round(wallMs),
    throughput_rps: wallMs > 0 ? Math.round((samples.length / wallMs) * 1000 * 10) / 10 : null,
    latency_ms: {
      min: pct(ms, 0),
      p50: pct(ms, 50),
      p90: pct(ms, 90),
      p95: pct(ms, 95),
      p99: pct(ms, 99),
      max: ms.length ? Math.round(ms[ms.length - 1] * 10) / 10 : null,
      mean: ms.length ? Math.round((sum / ms.length) * 10) / 10 : null,
    },
    over_1s: ms.filter((x) => x > 1000).length,
    ...extra,
  };
}

/// Runs `task(i)` for i = 0.. with at most `concurrency` at once, until `requests` were
/// started or `durationMs` passed (requests in flight at the deadline are awaited).
async function runPool({ concurrency, requests, durationMs }, task) {
  const start = performance.now();
  let next = 0;
  const results = [];
  async function worker() {
    while (next < requests && performance.now() - start < durationMs) {
      const i = next++;
      results.push(await task(i));
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, requests) }, worker));
  return { results, wallMs: performance.now() - start };
}

async function timed(url, init) {
  const t0 = performance.now();
  try {
    const res = await fetch(url, { ...init, signal: AbortSignal.timeout(30_000) });
    const text = await res.text();
    return { ms: performance.now() - t0, status: res.status, text, headers: res.headers };
  } catch (e) {
    return { ms: performance.now() - t0, status: 0, text: String(e?.name ?? e), headers: new Headers() };
  }
}

const json = (t) => {
  try {
    return JSON.parse(t);
  } catch {
    return undefined;
  }
};

function tokenRequest(o) {
  return timed(`${o.url}/v1/tokens`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    // Every buyer their own card: the ledger limits what one card holds and buys.
    body: JSON.stringify({ event_id: o.event, card: { number: freshCard(), exp_month: 12, exp_year: 2034, cvc: "123" } }),
  });
}

function countErrors(samples) {
  const errors = {};
  for (const s of samples) {
    if (s.status >= 200 && s.status < 300) continue;
    const code = json(s.text)?.error?.code ?? (s.status === 0 ? `no_answer:${s.text}` : `http_${s.status}`);
    errors[code] = (errors[code] ?? 0) + 1;
  }
  return errors;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const report = { label: o.label, scenario: o.scenario, concurrency: o.concurrency, max_requests: o.requests, max_duration_ms: o.durationMs, started_at: new Date().toISOString() };

  if (o.scenario === "healthz") {
    const { results, wallMs, cpuMs: cpu } = await withCpu(o.cpuPids, () => runPool(o, () => timed(`${o.url}/healthz`, {})));
    const ok = results.filter((r) => r.status === 200).length;
    report.result = summarize("healthz", results, wallMs, { ok, errors: countErrors(results), ...cpuFields(cpu, results.length) });
  } else if (o.scenario === "counter") {
    const init = { method: "POST", headers: { authorization: `Bearer ${process.env.ADMIN_KEY}` } };
    const { results, wallMs, cpuMs: cpu } = await withCpu(o.cpuPids, () => runPool(o, () => timed(`${o.url}/v1/admin/bench/counter/${o.counter}`, init)));
    const counts = results.map((r) => json(r.text)?.count).filter(Number.isInteger);
    const ok = results.filter((r) => r.status === 200).length;
    // Every increment is acknowledged with a distinct count: the object really serialized them.
    const distinct = new Set(counts).size;
    report.result = summarize("counter", results, wallMs, { ok, distinct_counts: distinct, max_count: counts.length ? Math.max(...counts) : null, errors: countErrors(results), ...cpuFields(cpu, results.length) });
  } else if (o.scenario === "tokens") {
    const { results, wallMs, cpuMs: cpu } = await withCpu(o.cpuPids, () => runPool(o, () => tokenRequest(o)));
    const ok = results.filter((r) => r.status === 201 && json(r.text)?.token).length;
    report.result = summarize("tokens", results, wallMs, { ok, errors: countErrors(results), ...cpuFields(cpu, results.length) });
  } else {
    // Phase 1: one token pair per planned checkout (same concurrency), reported as tokens.
    const pool = await withCpu(o.cpuPids, () => runPool({ ...o, durationMs: 120_000 }, () => tokenRequest(o)));
    report.tokens = summarize("tokens", pool.results, pool.wallMs, { ok: pool.results.filter((r) => r.status === 201).length, errors: countErrors(pool.results), ...cpuFields(pool.cpuMs, pool.results.length) });
    const pairs = pool.results.map((r) => json(r.text)).filter((t) => t?.token && t?.cvc_token);
    if (pairs.length === 0) throw new Error(`no token could be made: ${pool.results[0]?.status} ${pool.results[0]?.text?.slice(0, 300)}`);
    // Phase 2: the checkouts.
    const outcomes = { approved: 0, queued: 0, confirming: 0, declined: 0, errors: 0 };
    // `confirming` answers (accepted, the acquirer still answering): asked again after the run.
    const confirming = [];
    const routing = {};
    const byRule = {};
    const lanes = {};
    const { results, wallMs, cpuMs: cpu } = await withCpu(o.cpuPids, () => runPool({ ...o, requests: Math.min(o.requests, pairs.length) }, async (i) => {
      const t = pairs[i];
      const request = {
        method: "POST",
        headers: { "content-type": "application/json", "idempotency-key": crypto.randomUUID() },
        body: JSON.stringify({
          items: [{ sku: o.sku, quantity: 1 }],
          token: t.token,
          cvc_token: t.cvc_token,
          buyer: { email: "b@example.org", consent_accepted: true, age_confirmed: true },
        }),
      };
      const r = await timed(`${o.url}/v1/events/${o.event}/checkout`, request);
      const body = json(r.text);
      if (r.status === 201 && body?.status === "approved") outcomes.approved++;
      else if (r.status === 201 && body?.status === "queued") outcomes.queued++;
      else if (r.status === 201 && body?.status === "confirming") { outcomes.confirming++; confirming.push({ request, at: performance.now() }); }
      else if (r.status === 402) outcomes.declined++;
      else outcomes.errors++;
      const rule = (r.headers.get("x-poptill-routing") ?? body?.routing ?? "none").split(";")[0];
      routing[rule] = (routing[rule] ?? 0) + 1;
      (byRule[rule] ??= []).push(r.ms);
      if (body?.receipt?.receipt?.lane) lanes[body.receipt.receipt.lane] = (lanes[body.receipt.receipt.lane] ?? 0) + 1;
      return r;
    }));
    // What became of the confirming answers: the same request again (as the card frame
    // asks), until the acquirer's own answer settled it; still confirming after 20 s means
    // the attempt's answer never came and the payment is left to the object's alarm.
    const settledLater = { approved: 0, declined: 0, still_confirming: 0 };
    for (const c of confirming) {
      let last = "confirming";
      do {
        const again = await timed(`${o.url}/v1/events/${o.event}/checkout`, c.request);
        last = json(again.text)?.status ?? `http_${again.status}`;
        if (last !== "confirming") break;
        await new Promise((res) => setTimeout(res, 500));
      } while (performance.now() - c.at < 20_000);
      if (last === "approved") settledLater.approved++;
      else if (last === "declined") settledLater.declined++;
      else settledLater.still_confirming++;
    }
    report.result = summarize("checkout", results, wallMs, { outcomes, confirming_then: settledLater, errors: countErrors(results.filter((r) => r.status !== 402)), routing_rule: routing, ...cpuFields(cpu, results.length) });
    // Latency over time, in tenths of the run, to show how fast the router learns.
    const deciles = [];
    const n = results.length;
    for (let d = 0; d < 10 && n >= 10; d++) {
      const part = results.slice(Math.floor((d * n) / 10), Math.floor(((d + 1) * n) / 10)).map((r) => r.ms).sort((a, b) => a - b);
      deciles.push({ p50: pct(part, 50), p95: pct(part, 95), max: pct(part, 100) });
    }
    report.result.by_tenth_of_run = deciles;
    // Latency by routing rule: shows whether a slow checkout waited on the acquirer
    // (cheapest/fastest/slow_probe/pass_through) or on the rest of the path (offline rules).
    report.result.latency_by_rule = Object.fromEntries(
      Object.entries(byRule).map(([rule, v]) => {
        v.sort((a, b) => a - b);
        return [rule, { n: v.length, p50: pct(v, 50), p95: pct(v, 95), max: pct(v, 100) }];
      }),
    );
  }
  const text = JSON.stringify(report, null, 2);
  if (o.out) fs.writeFileSync(o.out, text + "\n");
  const r = report.result;
  console.error(`${o.label}: ${r.requests} requests in ${r.wall_ms} ms, p50 ${r.latency_ms.p50} ms, p95 ${r.latency_ms.p95} ms, p99 ${r.latency_ms.p99} ms${r.outcomes ? `, ${JSON.stringify(r.outcomes)}` : ""}`);
  if (!o.out) console.log(text);
}

main().catch((e) => {
  console.error(`bench-load: ${e.message}`);
  process.exit(1);
});
