#!/usr/bin/env node
// Measures the Worker isolate's CPU time per request in workerd (wrangler dev) with the V8
// CPU profiler, over the Chrome DevTools Protocol on wrangler's inspector port. No npm
// dependencies: it uses the global WebSocket (Node >= 22, or Node 20 with
// --experimental-websocket; scripts/bench passes the flag when needed).
//
//   node scripts/bench-cpu.mjs --url http://127.0.0.1:8787 --inspector 127.0.0.1:9229
//        --event evt_... [--checkouts 200] [--healthz 400] [--concurrency 8]
//        [--interval-us 500] [--host-pid PID] [--out FILE] [--profile-out FILE.cpuprofile]
//
// For each phase (healthz, then checkouts) it runs Profiler.start, sends the requests,
// runs Profiler.stop and attributes every sample to its node: "(idle)" is time the isolate
// waited, "(program)" is V8/runtime work outside JavaScript and WebAssembly (parsing,
// compiling, the embedder's own code while the isolate is entered), "(garbage collector)"
// is GC; everything else is JavaScript (the wasm-bindgen glue) and WebAssembly (the
// crate). CPU per request = (sampled time - idle) / requests. Token pairs for the
// checkouts are made before the checkout profile starts (they are measured in a phase of
// their own). Loopback only.
//
// V8 only records a sample when the isolate is entered (sampler.cc: "We require a fully
// initialized and entered isolate"); workerd leaves the isolate while it waits, so an idle
// Worker yields no samples at all and each sample stands for one tick of the sampler (its
// actual period, measured from the gaps between samples, see tickPeriodUs). Samples x
// period is the time the isolate was entered: CPU time plus any time the kernel took the
// thread off the CPU while it held the isolate. With --host-pid (the workerd process that
// runs the Worker), /proc/PID/task/TID/schedstat gives that thread's on-CPU and run-queue
// time during each phase; the CPU estimate is the entered time x on-CPU / (on-CPU +
// run-queue), and the thread's own on-CPU time per request is reported as an upper bound.

import fs from "node:fs";
import { freshCard } from "./test-cards.mjs";
import crypto from "node:crypto";

function parseArgs(argv) {
  const o = { checkouts: 200, healthz: 400, tokens: true, concurrency: 8, intervalUs: 500, sku: "entry" };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--url") o.url = v();
    else if (a === "--inspector") o.inspector = v();
    else if (a === "--event") o.event = v();
    else if (a === "--sku") o.sku = v();
    else if (a === "--checkouts") o.checkouts = Number(v());
    else if (a === "--healthz") o.healthz = Number(v());
    else if (a === "--concurrency") o.concurrency = Number(v());
    else if (a === "--interval-us") o.intervalUs = Number(v());
    else if (a === "--out") o.out = v();
    else if (a === "--host-pid") o.hostPid = Number(v());
    else if (a === "--profile-out") o.profileOut = v();
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.url || !/^http:\/\/(127\.0\.0\.1|localhost)(:\d+)?$/.test(o.url)) throw new Error("--url must be http://127.0.0.1:PORT (loopback only)");
  if (!o.inspector || !/^(127\.0\.0\.1|localhost):\d+$/.test(o.inspector)) throw new Error("--inspector must be 127.0.0.1:PORT (loopback only)");
  if (!o.event) throw new Error("--event is required");
  for (const k of ["checkouts", "healthz", "concurrency", "intervalUs"]) {
    if (!Number.isInteger(o[k]) || o[k] < 1) throw new Error(`--${k} must be a positive integer`);
  }
  return o;
}

/// A minimal CDP client: send(method, params) -> result; events are ignored.
async function connect(wsUrl) {
  if (typeof WebSocket === "undefined") throw new Error("no global WebSocket: use Node >= 22 or node --experimental-websocket");
  // wrangler's inspector proxy accepts only a localhost Origin (and needs one when a
  // User-Agent is sent); undici's WebSocket (Node's global) takes headers as an option.
  const ws = new WebSocket(wsUrl, { headers: { Origin: "http://localhost" } });
  await new Promise((resolve, reject) => {
    ws.addEventListener("open", resolve, { once: true });
    ws.addEventListener("error", () => reject(new Error(`cannot connect to the inspector at ${wsUrl}`)), { once: true });
  });
  let nextId = 1;
  const pending = new Map();
  ws.addEventListener("message", (ev) => {
    let msg;
    try {
      msg = JSON.parse(typeof ev.data === "string" ? ev.data : Buffer.from(ev.data).toString("utf8"));
    } catch {
      return;
    }
    if (msg.id !== undefined && pending.has(msg.id)) {
      const { resolve, reject, method } = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.error) reject(new Error(`${method}: ${msg.error.message}`));
      else resolve(msg.result);
    }
  });
  ws.addEventListener("close", () => {
    for (const { reject, method } of pending.values()) reject(new Error(`${method}: inspector connection closed`));
    pending.clear();
  });
  const send = (method, params = {}, timeoutMs = 120_000) =>
    new Promise((resolve, reject) => {
      const id = nextId++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`${method}: no answer in ${timeoutMs} ms`));
      }, timeoutMs);
      pending.set(id, {
        method,
        resolve: (r) => (clearTimeout(timer), resolve(r)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      ws.send(JSON.stringify({ id, method, params }));
    });
  return { send, close: () => ws.close(), ws };
}

async function runPool(n, concurrency, task) {
  let next = 0;
  const results = [];
  const t0 = performance.now();
  async function worker() {
    while (next < n) {
      const i = next++;
      results[i] = await task(i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  return { results, wallMs: performance.now() - t0 };
}

async function req(url, init) {
  try {
    const res = await fetch(url, { ...init, signal: AbortSignal.timeout(30_000) });
    return { status: res.status, text: await res.text() };
  } catch (e) {
    return { status: 0, text: String(e?.name ?? e) };
  }
}

/// On-CPU and run-queue nanoseconds of every thread of `pid` (null when unreadable).
function schedstat(pid) {
  if (!pid) return null;
  try {
    const out = {};
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      const [run, wait] = fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").trim().split(/\s+/).map(Number);
      out[tid] = { run, wait, comm: fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim() };
    }
    return out;
  } catch {
    return null;
  }
}

/// The busiest thread between two schedstat snapshots (the one running the isolates).
function busiestThread(before, after) {
  if (!before || !after) return null;
  let best = null;
  for (const [tid, a] of Object.entries(after)) {
    const b = before[tid];
    if (!b) continue;
    const run = a.run - b.run;
    const wait = a.wait - b.wait;
    if (!best || run > best.run_ns) best = { tid: Number(tid), comm: a.comm, run_ns: run, wait_ns: wait };
  }
  return best;
}

const SPECIAL = new Set(["(idle)", "(program)", "(garbage collector)", "(root)"]);

/// The sampler's actual tick period in µs: V8 ticks every `interval` plus the sampler
/// thread's wake-up lateness, and only records a sample when the isolate is entered (see
/// the file header), so every gap between two samples is about k whole periods. The
/// one-period gaps are those shorter than 1.5 × the shortest common gap; their median is
/// the period.
export function tickPeriodUs(deltas, intervalUs) {
  const d = deltas.filter((x) => x >= intervalUs * 0.5).sort((a, b) => a - b);
  if (d.length === 0) return intervalUs;
  const base = d[Math.floor(d.length * 0.05)];
  const ones = d.filter((x) => x < base * 1.5);
  return Math.max(intervalUs, ones[Math.floor(ones.length / 2)] ?? intervalUs);
}

/// Samples per category and the top self-time functions of one profile; each sample stands
/// for one tick period of isolate time.
export function analyze(profile, intervalUs) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const count = { idle: 0, program: 0, gc: 0, js: 0, wasm: 0, root: 0 };
  const self = new Map();
  const samples = profile.samples ?? [];
  for (const id of samples) {
    const node = byId.get(id);
    if (!node) continue;
    const cf = node.callFrame;
    const name = cf.functionName || "(anonymous)";
    if (name === "(idle)") count.idle++;
    else if (name === "(program)") count.program++;
    else if (name === "(garbage collector)") count.gc++;
    else if (name === "(root)") count.root++;
    else if (cf.url?.startsWith("wasm://") || /\.wasm-[0-9a-f]+$/.test(cf.url ?? "") || /^\$?wasm-function|^\$func/.test(name)) count.wasm++;
    else count.js++;
    if (!SPECIAL.has(name)) {
      const file = cf.url ? cf.url.split("/").pop() : "";
      const key = file ? `${name} (${file})` : name;
      self.set(key, (self.get(key) ?? 0) + 1);
    }
  }
  const periodUs = tickPeriodUs(profile.timeDeltas ?? [], intervalUs);
  const ms = (n) => (n * periodUs) / 1000;
  const top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([fn, n]) => ({ fn, samples: n, ms: Math.round(ms(n) * 100) / 100 }));
  return { samples: samples.length, period_us: periodUs, idle_ms: ms(count.idle), program_ms: ms(count.program), gc_ms: ms(count.gc), js_ms: ms(count.js), wasm_ms: ms(count.wasm), root_ms: ms(count.root), top };
}

async function profiled(cdp, hostPid, f) {
  await cdp.send("Profiler.start");
  const before = schedstat(hostPid);
  const t0 = performance.now();
  const out = await f();
  const wallMs = performance.now() - t0;
  const after = schedstat(hostPid);
  const { profile } = await cdp.send("Profiler.stop");
  return { out, wallMs, profile, thread: busiestThread(before, after) };
}

function phase(name, n, { wallMs, profile, thread }, ok, intervalUs) {
  const a = analyze(profile, intervalUs);
  const busy = a.program_ms + a.gc_ms + a.js_ms + a.wasm_ms + a.root_ms;
  const r3 = (x) => Math.round(x * 1000) / 1000;
  const onCpuShare = thread && thread.run_ns + thread.wait_ns > 0 ? thread.run_ns / (thread.run_ns + thread.wait_ns) : null;
  return {
    name,
    requests: n,
    ok,
    wall_ms: Math.round(wallMs),
    profile_ms: r3((profile.endTime - profile.startTime) / 1000),
    samples: a.samples,
    tick_period_us: Math.round(a.period_us),
    busy_ms: r3(busy),
    idle_ms: r3(a.idle_ms),
    program_ms: r3(a.program_ms),
    gc_ms: r3(a.gc_ms),
    js_ms: r3(a.js_ms),
    wasm_ms: r3(a.wasm_ms),
    entered_ms_per_request: r3(busy / n),
    host_thread: thread ? { ...thread, on_cpu_share: r3(onCpuShare), run_ms_per_request: r3(thread.run_ns / 1e6 / n) } : null,
    cpu_ms_per_request: onCpuShare === null ? r3(busy / n) : r3((busy * onCpuShare) / n),
    cpu_corrected_for_run_queue: onCpuShare !== null,
    program_ms_per_request: r3((a.program_ms * (onCpuShare ?? 1)) / n),
    gc_ms_per_request: r3((a.gc_ms * (onCpuShare ?? 1)) / n),
    js_ms_per_request: r3((a.js_ms * (onCpuShare ?? 1)) / n),
    wasm_ms_per_request: r3((a.wasm_ms * (onCpuShare ?? 1)) / n),
    top_self_time: a.top,
  };
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const list = await (await fetch(`http://${o.inspector}/json`, { signal: AbortSignal.timeout(10_000) })).json();
  const targets = list.filter((t) => t.webSocketDebuggerUrl);
  if (targets.length === 0) throw new Error(`the inspector at ${o.inspector} lists no target`);
  const cdp = await connect(targets[0].webSocketDebuggerUrl);
  const report = { inspector: o.inspector, target: { title: targets[0].title, description: targets[0].description }, targets_listed: targets.length, sampling_interval_us: o.intervalUs, concurrency: o.concurrency, started_at: new Date().toISOString() };
  try {
    await cdp.send("Profiler.enable");
    await cdp.send("Profiler.setSamplingInterval", { interval: o.intervalUs });
    // Warm-up outside the profile: the first requests compile lazily (Liftoff, then TurboFan).
    await runPool(20, 4, () => req(`${o.url}/healthz`, {}));

    // Phase 1: the floor, GET /healthz.
    const h = await profiled(cdp, o.hostPid, () => runPool(o.healthz, o.concurrency, () => req(`${o.url}/healthz`, {})));
    report.healthz = phase("healthz", o.healthz, h, h.out.results.filter((r) => r.status === 200).length, o.intervalUs);

    // Phase 2: token pairs (POST /v1/tokens), also the input of phase 3.
    // Every buyer their own card: the ledger limits what one card holds and buys.
    const tokenBody = () => JSON.stringify({ event_id: o.event, card: { number: freshCard(), exp_month: 12, exp_year: 2034, cvc: "123" } });
    const t = await profiled(cdp, o.hostPid, () => runPool(o.checkouts, o.concurrency, () => req(`${o.url}/v1/tokens`, { method: "POST", headers: { "content-type": "application/json" }, body: tokenBody() })));
    const pairs = t.out.results.map((r) => (r.status === 201 ? JSON.parse(r.text) : null)).filter((p) => p?.token && p?.cvc_token);
    report.tokens = phase("tokens", o.checkouts, t, pairs.length, o.intervalUs);
    if (pairs.length === 0) throw new Error(`no token could be made: ${t.out.results[0]?.status} ${t.out.results[0]?.text?.slice(0, 200)}`);

    // Phase 3: checkouts, each with its own token pair and Idempotency-Key.
    const c = await profiled(cdp, o.hostPid, () =>
      runPool(pairs.length, o.concurrency, (i) =>
        req(`${o.url}/v1/events/${o.event}/checkout`, {
          method: "POST",
          headers: { "content-type": "application/json", "idempotency-key": crypto.randomUUID() },
          body: JSON.stringify({ items: [{ sku: o.sku, quantity: 1 }], token: pairs[i].token, cvc_token: pairs[i].cvc_token, buyer: { email: "b@example.org", consent_accepted: true, age_confirmed: true } }),
        }),
      ),
    );
    const approved = c.out.results.filter((r) => r.status === 201 && JSON.parse(r.text)?.status === "approved").length;
    report.checkout = phase("checkout", pairs.length, c, approved, o.intervalUs);
    // Which code ran: the glue's exported class methods show whether the event object ran
    // in this isolate (its fetch goes through the EventObject wrapper).
    report.checkout.nodes_in_profile = c.profile.nodes.length;
    const names = c.profile.nodes.map((n) => n.callFrame.functionName);
    report.checkout.event_object_frames = names.filter((f) => /event_object|eventobject/i.test(f)).length;
    report.checkout.worker_shell_frames = names.filter((f) => /poptill::edge::events::/.test(f)).length;
    if (o.profileOut) fs.writeFileSync(o.profileOut, JSON.stringify(c.profile));
    await cdp.send("Profiler.disable");
  } finally {
    cdp.close();
  }
  const text = JSON.stringify(report, null, 2);
  if (o.out) fs.writeFileSync(o.out, text + "\n");
  else console.log(text);
  for (const p of [report.healthz, report.tokens, report.checkout]) {
    console.error(`isolate CPU (V8 profiler): ${p.name} ${p.cpu_ms_per_request} ms/request (entered ${p.entered_ms_per_request}, on-CPU share ${p.host_thread?.on_cpu_share ?? "?"}, program ${p.program_ms_per_request}, GC ${p.gc_ms_per_request}) over ${p.requests} requests, ${p.ok} ok`);
  }
}

// Exits explicitly: the WebSocket's closing handshake through wrangler's proxy can keep the
// event loop alive.
main().then(
  () => process.exit(0),
  (e) => {
    console.error(`bench-cpu: ${e.message}`);
    process.exit(1);
  },
);
