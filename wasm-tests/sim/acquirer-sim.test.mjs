// Tests for scripts/acquirer-sim.mjs: run with `node --test wasm-tests/sim/`.
// Starts the simulator as a child process on a free port and talks to it over HTTP.

import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { makeRng, sampleLatency, parseForm } from "../../scripts/acquirer-sim.mjs";

const SIM = path.join(path.dirname(fileURLToPath(import.meta.url)), "../../scripts/acquirer-sim.mjs");
const KEY = "sk_test_poptill";

function startSim(args = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [SIM, "--port", "0", ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stderr.on("data", (d) => (err += d));
    child.stdout.on("data", (d) => {
      out += d;
      const m = /^acquirer-sim listening on (http:\/\/127\.0\.0\.1:(\d+))\n/.exec(out);
      if (m) resolve({ child, base: m[1], logs: () => err, stdout: () => out });
    });
    child.on("exit", (code) => reject(new Error(`simulator exited early (${code}): ${err}`)));
  });
}

let sim;
before(async () => {
  sim = await startSim(["--lanes", "fast,cheap", "--seed", "7", "--log"]);
});
after(() => sim.child.kill("SIGTERM"));
beforeEach(async () => {
  const r = await fetch(`${sim.base}/control/reset`, { method: "POST" });
  assert.equal(r.status, 200);
});

async function call(lane, method, p, { form, key = KEY, idem, signal } = {}) {
  const headers = {};
  if (key) headers.Authorization = `Bearer ${key}`;
  if (idem) headers["Idempotency-Key"] = idem;
  const res = await fetch(`${sim.base}/lanes/${lane}${p}`, {
    method,
    headers,
    body: form ? new URLSearchParams(form) : undefined,
    signal,
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, body: JSON.parse(text) };
}

function cardForm(number, extra = {}) {
  return {
    amount: "1250",
    currency: "EUR",
    confirm: "true",
    "payment_method_data[type]": "card",
    "payment_method_data[card][number]": number,
    "payment_method_data[card][exp_month]": "12",
    "payment_method_data[card][exp_year]": String(new Date().getUTCFullYear() + 3),
    "payment_method_data[card][cvc]": number.startsWith("3") ? "1234" : "123",
    "metadata[order_id]": "ord_1",
    ...extra,
  };
}

async function control(lane, settings) {
  const r = await fetch(`${sim.base}/control/lanes/${lane}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(settings),
  });
  assert.equal(r.status, 200, await r.clone().text());
  return r.json();
}

async function stats() {
  return (await (await fetch(`${sim.base}/control/stats`)).json()).lanes;
}

test("approves the succeeding test cards and unknown Luhn-valid numbers", async () => {
  for (const [number, brand] of [
    ["4242424242424242", "visa"],
    ["5555555555554444", "mastercard"],
    ["378282246310005", "amex"],
    ["4111111111111111", "visa"],
  ]) {
    const r = await call("fast", "POST", "/v1/payment_intents", { form: cardForm(number) });
    assert.equal(r.status, 200, r.text);
    assert.match(r.body.id, /^pi_[A-Za-z0-9]{24}$/);
    assert.equal(r.body.object, "payment_intent");
    assert.equal(r.body.status, "succeeded");
    assert.equal(r.body.amount, 1250);
    assert.equal(r.body.amount_received, 1250);
    assert.equal(r.body.currency, "eur");
    assert.deepEqual(r.body.metadata, { order_id: "ord_1" });
    assert.ok(!r.text.includes(number), "the response must not echo the card number");
    const g = await call("fast", "GET", `/v1/payment_intents/${r.body.id}?expand[]=latest_charge`);
    assert.equal(g.status, 200);
    assert.equal(g.body.latest_charge.payment_method_details.card.brand, brand);
    assert.equal(g.body.latest_charge.payment_method_details.card.last4, number.slice(-4));
  }
  const bad = await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4242424242424241") });
  assert.equal(bad.status, 402);
  assert.equal(bad.body.error.code, "incorrect_number");
  assert.ok(!sim.logs().includes("4242424242424242"), "card numbers must never be logged");
  assert.ok(sim.logs().includes("fast POST /v1/payment_intents -> 200"), "the log has request lines");
});

test("each declining test card gives Stripe's 402 card_error and a failed PaymentIntent", async () => {
  const cases = [
    ["4000000000000002", "card_declined", "generic_decline"],
    ["4000000000009995", "card_declined", "insufficient_funds"],
    ["4000000000000069", "expired_card", "expired_card"],
    ["4000000000000127", "incorrect_cvc", "incorrect_cvc"],
  ];
  for (const [number, code, declineCode] of cases) {
    const r = await call("fast", "POST", "/v1/payment_intents", { form: cardForm(number) });
    assert.equal(r.status, 402, number);
    assert.equal(r.body.error.type, "card_error");
    assert.equal(r.body.error.code, code);
    assert.equal(r.body.error.decline_code, declineCode);
    assert.equal(typeof r.body.error.message, "string");
    const pi = r.body.error.payment_intent;
    assert.equal(pi.status, "requires_payment_method");
    assert.equal(pi.last_payment_error.code, code);
    assert.equal(pi.last_payment_error.decline_code, declineCode);
    assert.ok(!r.text.includes(number));
  }
  const s = (await stats()).fast;
  assert.equal(s.charges_created, 4);
  assert.equal(s.charges_succeeded, 0);
  assert.equal(s.declines, 4);
});

test("idempotent replay returns the stored answer; other parameters are refused", async () => {
  const form = cardForm("4242424242424242");
  const a = await call("fast", "POST", "/v1/payment_intents", { form, idem: "order-1-attempt-1" });
  const b = await call("fast", "POST", "/v1/payment_intents", { form, idem: "order-1-attempt-1" });
  assert.equal(a.status, 200);
  assert.equal(b.status, 200);
  assert.equal(a.headers.get("idempotent-replayed"), null);
  assert.equal(b.headers.get("idempotent-replayed"), "true");
  assert.equal(b.body.id, a.body.id);

  const c = await call("fast", "POST", "/v1/payment_intents", {
    form: { ...form, amount: "999" },
    idem: "order-1-attempt-1",
  });
  assert.equal(c.status, 400);
  assert.equal(c.body.error.type, "idempotency_error");

  // Keys are per lane: the same key on another lane is a new charge.
  const d = await call("cheap", "POST", "/v1/payment_intents", { form, idem: "order-1-attempt-1" });
  assert.equal(d.status, 200);
  assert.notEqual(d.body.id, a.body.id);

  // A declined answer is replayed as well.
  const e1 = await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4000000000000002"), idem: "k-decl" });
  const e2 = await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4000000000000002"), idem: "k-decl" });
  assert.equal(e2.status, 402);
  assert.equal(e2.headers.get("idempotent-replayed"), "true");
  assert.equal(e2.body.error.payment_intent.id, e1.body.error.payment_intent.id);

  const s = await stats();
  assert.equal(s.fast.by_idempotency_key["order-1-attempt-1"], 1);
  assert.equal(s.fast.charges_created, 2);
  assert.equal(s.fast.idempotent_replays, 2);
  assert.equal(s.cheap.by_idempotency_key["order-1-attempt-1"], 1);
});

test("manual capture, then partial and full refunds", async () => {
  const a = await call("fast", "POST", "/v1/payment_intents", {
    form: cardForm("5555555555554444", { capture_method: "manual" }),
  });
  assert.equal(a.body.status, "requires_capture");
  assert.equal(a.body.amount_capturable, 1250);
  const early = await call("fast", "POST", "/v1/refunds", { form: { payment_intent: a.body.id } });
  assert.equal(early.status, 400);

  const c = await call("fast", "POST", `/v1/payment_intents/${a.body.id}/capture`, { form: {} });
  assert.equal(c.status, 200, c.text);
  assert.equal(c.body.status, "succeeded");
  assert.equal(c.body.amount_received, 1250);
  const again = await call("fast", "POST", `/v1/payment_intents/${a.body.id}/capture`, { form: {} });
  assert.equal(again.status, 400);
  assert.equal(again.body.error.code, "payment_intent_unexpected_state");

  const r1 = await call("fast", "POST", "/v1/refunds", { form: { payment_intent: a.body.id, amount: "500" } });
  assert.equal(r1.status, 200, r1.text);
  assert.match(r1.body.id, /^re_/);
  assert.equal(r1.body.object, "refund");
  assert.equal(r1.body.amount, 500);
  assert.equal(r1.body.status, "succeeded");
  assert.equal(r1.body.payment_intent, a.body.id);
  const tooMuch = await call("fast", "POST", "/v1/refunds", { form: { payment_intent: a.body.id, amount: "751" } });
  assert.equal(tooMuch.status, 400);
  const r2 = await call("fast", "POST", "/v1/refunds", { form: { payment_intent: a.body.id } });
  assert.equal(r2.body.amount, 750);
  const r3 = await call("fast", "POST", "/v1/refunds", { form: { payment_intent: a.body.id } });
  assert.equal(r3.status, 400);
  assert.equal(r3.body.error.code, "charge_already_refunded");

  const list = await call("fast", "GET", "/v1/refunds?limit=10");
  assert.deepEqual(list.body.data.map((r) => r.amount), [750, 500]);
  const pis = await call("fast", "GET", "/v1/payment_intents?expand[]=data.latest_charge");
  assert.equal(pis.body.data[0].latest_charge.amount_refunded, 1250);
  assert.equal(pis.body.data[0].latest_charge.refunded, true);

  const s = (await stats()).fast;
  assert.equal(s.captures, 1);
  assert.equal(s.refunds, 2);
  assert.equal(s.amount_refunded, 1250);
});

test("lists paginate newest first with starting_after and has_more", async () => {
  const ids = [];
  for (let i = 0; i < 5; i++) {
    const r = await call("fast", "POST", "/v1/payment_intents", {
      form: cardForm("4242424242424242", { "metadata[order_id]": `ord_${i}` }),
    });
    ids.push(r.body.id);
  }
  const seen = [];
  let after;
  let pages = 0;
  for (;;) {
    const q = `/v1/payment_intents?limit=2${after ? `&starting_after=${after}` : ""}`;
    const page = await call("fast", "GET", q);
    assert.equal(page.body.object, "list");
    assert.ok(page.body.data.length <= 2);
    seen.push(...page.body.data.map((p) => p.id));
    pages += 1;
    if (!page.body.has_more) break;
    after = page.body.data.at(-1).id;
  }
  assert.equal(pages, 3);
  assert.deepEqual(seen, [...ids].reverse());
  const other = await call("cheap", "GET", "/v1/payment_intents");
  assert.deepEqual(other.body.data, []);
  const bad = await call("fast", "GET", "/v1/payment_intents?limit=0");
  assert.equal(bad.status, 400);
});

test("a fixed latency of 200 ms is observed", async () => {
  const cfg = await control("fast", { latency_ms: { fixed: 200 } });
  assert.deepEqual(cfg.latency_ms, { fixed: 200 });
  const t0 = performance.now();
  const r = await call("fast", "GET", "/v1/payment_intents");
  const took = performance.now() - t0;
  assert.equal(r.status, 200);
  assert.ok(took >= 200, `took ${took} ms`);
  const t1 = performance.now();
  await call("cheap", "GET", "/v1/payment_intents");
  assert.ok(performance.now() - t1 < 200, "the other lane is not slowed");
  const got = await (await fetch(`${sim.base}/control/lanes/fast`)).json();
  assert.deepEqual(got.latency_ms, { fixed: 200 });
});

test("log-normal latency matches p50 and p95 and is reproducible from the seed", () => {
  const rng = makeRng(42);
  const xs = Array.from({ length: 20000 }, () => sampleLatency(rng, { p50: 80, p95: 400 })).sort((a, b) => a - b);
  const p50 = xs[Math.floor(xs.length * 0.5)];
  const p95 = xs[Math.floor(xs.length * 0.95)];
  assert.ok(Math.abs(p50 - 80) / 80 < 0.08, `p50 ${p50}`);
  assert.ok(Math.abs(p95 - 400) / 400 < 0.1, `p95 ${p95}`);
  const a = makeRng(9);
  const b = makeRng(9);
  const c = makeRng(10);
  const sa = [a(), a(), a()];
  assert.deepEqual(sa, [b(), b(), b()]);
  assert.notDeepEqual(sa, [c(), c(), c()]);
});

test("form decoding handles Stripe's nested keys and percent escapes", () => {
  const f = parseForm("a=1&metadata%5Border_id%5D=x%26y%3Dz+w&p[card][number]=42&expand[]=u&expand[]=v");
  assert.deepEqual(f, { a: "1", metadata: { order_id: "x&y=z w" }, p: { card: { number: "42" } }, expand: ["u", "v"] });
});

test("error rate 1.0 answers 500/503 api_error and charges nothing; error_mode after loses the answer only", async () => {
  await control("fast", { error_rate: 1 });
  const codes = new Set();
  for (let i = 0; i < 12; i++) {
    const r = await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4242424242424242"), idem: "same" });
    assert.ok(r.status === 500 || r.status === 503, String(r.status));
    assert.equal(r.body.error.type, "api_error");
    codes.add(r.status);
  }
  assert.deepEqual([...codes].sort(), [500, 503]);
  let s = (await stats()).fast;
  assert.equal(s.charges_created, 0);
  assert.equal(s.faults, 12);

  await control("fast", { error_mode: "after" });
  const lost = await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4242424242424242"), idem: "lost" });
  assert.ok(lost.status >= 500);
  await control("fast", { error_rate: 0 });
  const retry = await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4242424242424242"), idem: "lost" });
  assert.equal(retry.status, 200);
  assert.equal(retry.headers.get("idempotent-replayed"), "true");
  s = (await stats()).fast;
  assert.equal(s.charges_succeeded, 1);
  assert.equal(s.by_idempotency_key.lost, 1);

  const badCfg = await fetch(`${sim.base}/control/lanes/fast`, { method: "POST", body: '{"error_rate": 2}' });
  assert.equal(badCfg.status, 400);
});

test("partition refuse drops the connection; hang holds until the client gives up or it is lifted", async () => {
  await control("fast", { partition: "refuse" });
  await assert.rejects(call("fast", "GET", "/v1/payment_intents"), TypeError);
  const ok = await call("cheap", "GET", "/v1/payment_intents");
  assert.equal(ok.status, 200, "other lanes are unaffected");

  await control("fast", { partition: "hang" });
  const t0 = performance.now();
  await assert.rejects(
    call("fast", "POST", "/v1/payment_intents", { form: cardForm("4242424242424242"), signal: AbortSignal.timeout(300) }),
    (e) => e.name === "TimeoutError",
  );
  assert.ok(performance.now() - t0 >= 290);
  assert.equal((await stats()).fast.charges_created, 0, "a request given up during a hang is never served");

  const pending = call("fast", "POST", "/v1/payment_intents", { form: cardForm("4242424242424242") });
  await new Promise((r) => setTimeout(r, 100));
  await control("fast", { partition: "none" });
  const released = await pending;
  assert.equal(released.status, 200);
  assert.equal(released.body.status, "succeeded");
  assert.equal((await stats()).fast.charges_succeeded, 1);
});

test("stats count charges, successes, captures, refunds and charges per key and order", async () => {
  const a = await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4242424242424242", { capture_method: "manual" }), idem: "k1" });
  await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4242424242424242", { capture_method: "manual" }), idem: "k1" });
  await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4000000000000002"), idem: "k2" });
  await call("fast", "POST", `/v1/payment_intents/${a.body.id}/capture`, { form: {}, idem: "cap1" });
  await call("fast", "POST", `/v1/payment_intents/${a.body.id}/capture`, { form: {}, idem: "cap1" });
  await call("fast", "POST", "/v1/refunds", { form: { payment_intent: a.body.id, amount: "100" }, idem: "rf1" });
  await call("fast", "POST", "/v1/refunds", { form: { payment_intent: a.body.id, amount: "100" }, idem: "rf1" });
  const s = (await stats()).fast;
  assert.equal(s.charges_created, 2);
  assert.equal(s.charges_succeeded, 1);
  assert.equal(s.declines, 1);
  assert.equal(s.captures, 1);
  assert.equal(s.refunds, 1);
  assert.deepEqual(s.by_idempotency_key, { k1: 1, k2: 1 });
  assert.deepEqual(s.by_order_id, { ord_1: 1 });
  assert.equal(s.requests, 7);
});

test("401 in Stripe's shape without a key or with a non-test key", async () => {
  const none = await call("fast", "GET", "/v1/payment_intents", { key: null });
  assert.equal(none.status, 401);
  assert.equal(none.body.error.type, "invalid_request_error");
  assert.match(none.body.error.message, /API key/);
  const live = await call("fast", "POST", "/v1/payment_intents", { key: "sk_live_abcdefgh1234", form: cardForm("4242424242424242") });
  assert.equal(live.status, 401);
  assert.ok(!live.text.includes("abcdefgh1234"));
  assert.equal((await stats()).fast.charges_created, 0);
});

test("unknown lanes are 404 and the process exits cleanly on SIGTERM and SIGINT", async () => {
  const r = await fetch(`${sim.base}/lanes/nope/v1/payment_intents`, { headers: { Authorization: `Bearer ${KEY}` } });
  assert.equal(r.status, 404);
  for (const signal of ["SIGTERM", "SIGINT"]) {
    const other = await startSim([]);
    const exited = new Promise((resolve) => other.child.on("exit", (code, sig) => resolve({ code, sig })));
    other.child.kill(signal);
    assert.deepEqual(await exited, { code: 0, sig: null });
  }
});

test("accepts the exact body src/acquirer.rs builds (kept equal to its test fixture)", async () => {
  // Same string as `authorize_body_is_exactly_form_encoded` in src/acquirer/tests.rs.
  const body =
    "amount=1250&currency=eur&confirm=true&capture_method=automatic" +
    "&payment_method_types%5B%5D=card" +
    "&payment_method_data%5Btype%5D=card" +
    "&payment_method_data%5Bcard%5D%5Bnumber%5D=4242424242424242" +
    "&payment_method_data%5Bcard%5D%5Bexp_month%5D=12" +
    "&payment_method_data%5Bcard%5D%5Bexp_year%5D=2045" +
    "&payment_method_data%5Bcard%5D%5Bcvc%5D=123" +
    "&metadata%5Border_id%5D=ord+1%26x%3Dy%2F%C3%A9" +
    "&metadata%5Bevent_id%5D=ev%5B1%5D%2B%25" +
    "&metadata%5Bidempotency_key%5D=ord_1_1";
  const res = await fetch(`${sim.base}/lanes/fast/v1/payment_intents`, {
    method: "POST",
    headers: {
      Authorization: `Bearer ${KEY}`,
      "Stripe-Version": "2024-06-20",
      Accept: "application/json",
      "Content-Type": "application/x-www-form-urlencoded",
      "Idempotency-Key": "ord_1_1",
    },
    body,
  });
  const pi = await res.json();
  assert.equal(res.status, 200);
  assert.equal(pi.status, "succeeded");
  assert.equal(pi.currency, "eur");
  assert.deepEqual(pi.metadata, { order_id: "ord 1&x=y/é", event_id: "ev[1]+%", idempotency_key: "ord_1_1" });
  assert.deepEqual((await stats()).fast.by_order_id, { "ord 1&x=y/é": 1 });
});

// ---- Failure modes after the API ran: processed then reset, processing intents, malformed 2xx

/** A raw POST whose answer the test reads itself (the body may be cut or not JSON). */
function rawPost(lane, form, idem) {
  const headers = { Authorization: `Bearer ${KEY}` };
  if (idem) headers["Idempotency-Key"] = idem;
  return fetch(`${sim.base}/lanes/${lane}/v1/payment_intents`, { method: "POST", headers, body: new URLSearchParams(form) });
}

async function intents(lane) {
  return (await call(lane, "GET", "/v1/payment_intents?limit=100&expand[]=data.latest_charge")).body.data;
}

test("the new modes default to off and refuse bad values", async () => {
  const cfg = await (await fetch(`${sim.base}/control/lanes/fast`)).json();
  assert.deepEqual(
    { ...cfg, latency_ms: undefined },
    {
      latency_ms: undefined, error_rate: 0, error_mode: "before", partition: "none",
      reset_rate: 0, reset_point: "before_response", processing_rate: 0, processing_ms: 2000, malformed_rate: 0, malformed_body: "garbage",
    },
  );
  for (const bad of [{ reset_rate: 1.5 }, { reset_point: "later" }, { processing_rate: -1 }, { processing_ms: 1.5 }, { processing_ms: 200_000 }, { malformed_rate: "1" }, { malformed_body: "html" }]) {
    const r = await fetch(`${sim.base}/control/lanes/fast`, { method: "POST", body: JSON.stringify(bad) });
    assert.equal(r.status, 400, JSON.stringify(bad));
    assert.equal((await r.json()).error.type, "invalid_request_error");
  }
});

test("processed, then reset before the answer: the card is charged, the client sees a reset, the same key replays", async () => {
  await control("fast", { reset_rate: 1 });
  await assert.rejects(rawPost("fast", cardForm("4242424242424242"), "reset-1").then((r) => r.text()), TypeError);
  let s = (await stats()).fast;
  assert.equal(s.resets, 1);
  assert.equal(s.charges_created, 1);
  assert.equal(s.charges_succeeded, 1, "the charge was made although no answer came");
  assert.deepEqual(s.by_order_id, { ord_1: 1 });
  await control("fast", { reset_rate: 0 });
  const [pi] = await intents("fast");
  assert.equal(pi.status, "succeeded");
  assert.equal(pi.latest_charge.status, "succeeded");
  // The stored answer of the key is the real one.
  const again = await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4242424242424242"), idem: "reset-1" });
  assert.equal(again.status, 200);
  assert.equal(again.headers.get("idempotent-replayed"), "true");
  assert.equal(again.body.id, pi.id);
  assert.equal(again.body.status, "succeeded");
  s = (await stats()).fast;
  assert.equal(s.charges_created, 1);
  assert.equal(s.by_idempotency_key["reset-1"], 1);
  // Replays and other requests that reached the API are reset too.
  await control("fast", { reset_rate: 1 });
  await assert.rejects(call("fast", "POST", "/v1/payment_intents", { form: cardForm("4242424242424242"), idem: "reset-1" }), TypeError);
  await assert.rejects(call("fast", "GET", "/v1/payment_intents"), TypeError);
  assert.equal((await stats()).fast.charges_created, 1);
  const other = await call("cheap", "GET", "/v1/payment_intents");
  assert.equal(other.status, 200, "other lanes are unaffected");
});

test("processed, then reset part way through the body: status and headers arrive, the body read fails", async () => {
  await control("cheap", { reset_rate: 1, reset_point: "mid_body" });
  const res = await rawPost("cheap", cardForm("5555555555554444"), "mid-1");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "application/json");
  assert.equal(res.headers.get("idempotency-key"), "mid-1");
  assert.ok(Number(res.headers.get("content-length")) > 100);
  await assert.rejects(res.text(), TypeError);
  const s = (await stats()).cheap;
  assert.equal(s.resets, 1);
  assert.equal(s.charges_succeeded, 1);
  // A decline is reset the same way (a 402 the client never reads).
  const d = await rawPost("cheap", cardForm("4000000000000002", { "metadata[order_id]": "ord_2" }), "mid-2");
  assert.equal(d.status, 402);
  await assert.rejects(d.text(), TypeError);
  assert.equal((await stats()).cheap.declines, 1);
});

test("processing: 200 with a processing intent that later takes the card's outcome; a replay answers the stored processing answer", async () => {
  await control("fast", { processing_rate: 1, processing_ms: 300 });
  const ok = await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4242424242424242"), idem: "proc-ok" });
  const no = await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4000000000009995", { "metadata[order_id]": "ord_2" }), idem: "proc-no" });
  const man = await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4242424242424242", { capture_method: "manual", "metadata[order_id]": "ord_3" }), idem: "proc-man" });
  for (const r of [ok, no, man]) {
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.object, "payment_intent");
    assert.equal(r.body.status, "processing");
    assert.equal(r.body.amount_received, 0);
    assert.match(r.body.latest_charge, /^ch_/);
    assert.equal(r.body.last_payment_error, null);
  }
  const now = await call("fast", "GET", `/v1/payment_intents/${ok.body.id}?expand[]=latest_charge`);
  assert.equal(now.body.status, "processing");
  assert.equal(now.body.latest_charge.status, "pending");
  assert.equal(now.body.latest_charge.paid, false);
  let s = (await stats()).fast;
  assert.equal(s.processing, 3);
  assert.equal(s.charges_created, 3);
  assert.equal(s.charges_succeeded, 0, "nothing has succeeded yet");
  assert.deepEqual(s.by_order_id, {});
  // A capture or refund of a processing intent is refused as at Stripe.
  assert.equal((await call("fast", "POST", "/v1/refunds", { form: { payment_intent: ok.body.id } })).body.error.code, "charge_not_refundable");

  await new Promise((r) => setTimeout(r, 450));
  const done = await call("fast", "GET", `/v1/payment_intents/${ok.body.id}?expand[]=latest_charge`);
  assert.equal(done.body.status, "succeeded");
  assert.equal(done.body.amount_received, 1250);
  assert.equal(done.body.latest_charge.status, "succeeded");
  assert.equal(done.body.latest_charge.captured, true);
  const failed = await call("fast", "GET", `/v1/payment_intents/${no.body.id}`);
  assert.equal(failed.body.status, "requires_payment_method");
  assert.equal(failed.body.last_payment_error.type, "card_error");
  assert.equal(failed.body.last_payment_error.decline_code, "insufficient_funds");
  assert.equal((await call("fast", "GET", `/v1/payment_intents/${man.body.id}`)).body.status, "requires_capture");
  const listed = Object.fromEntries((await intents("fast")).map((p) => [p.id, p.status]));
  assert.deepEqual(listed, { [ok.body.id]: "succeeded", [no.body.id]: "requires_payment_method", [man.body.id]: "requires_capture" });
  s = (await stats()).fast;
  assert.equal(s.charges_succeeded, 2);
  assert.equal(s.declines, 1);
  assert.deepEqual(s.by_order_id, { ord_1: 1, ord_3: 1 });

  // Stripe saved the first answer per key: replays still say processing, and charge nothing.
  await control("fast", { processing_rate: 0 });
  for (const [r, form] of [[ok, cardForm("4242424242424242")], [no, cardForm("4000000000009995", { "metadata[order_id]": "ord_2" })]]) {
    const rep = await call("fast", "POST", "/v1/payment_intents", { form, idem: r === ok ? "proc-ok" : "proc-no" });
    assert.equal(rep.status, 200);
    assert.equal(rep.headers.get("idempotent-replayed"), "true");
    assert.equal(rep.text, r.text, "the replay is the stored answer byte for byte");
  }
  assert.equal((await stats()).fast.charges_created, 3);
});

test("malformed 2xx: the card is charged and the answer is a 200 that is not JSON, or cut in half; the key replays the real answer", async () => {
  await control("fast", { malformed_rate: 1 });
  const g = await rawPost("fast", cardForm("4242424242424242"), "mal-g");
  assert.equal(g.status, 200);
  const gText = await g.text();
  assert.equal(Number(g.headers.get("content-length")), Buffer.byteLength(gText));
  assert.throws(() => JSON.parse(gText), SyntaxError);
  assert.ok(!gText.includes("4242424242424242"));

  await control("fast", { malformed_body: "truncated" });
  const t = await rawPost("fast", cardForm("4242424242424242", { "metadata[order_id]": "ord_2" }), "mal-t");
  assert.equal(t.status, 200);
  const tText = await t.text();
  assert.equal(Number(t.headers.get("content-length")), Buffer.byteLength(tText), "the body read itself succeeds");
  assert.throws(() => JSON.parse(tText), SyntaxError);
  assert.ok(tText.startsWith("{"));
  // Only 2xx answers are mangled: a decline arrives intact.
  const d = await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4000000000000002", { "metadata[order_id]": "ord_3" }) });
  assert.equal(d.status, 402);
  assert.equal(d.body.error.code, "card_declined");

  let s = (await stats()).fast;
  assert.equal(s.malformed, 2);
  assert.equal(s.charges_succeeded, 2, "both malformed answers charged the card");
  assert.deepEqual(s.by_order_id, { ord_1: 1, ord_2: 1 });
  await control("fast", { malformed_rate: 0 });
  const rep = await call("fast", "POST", "/v1/payment_intents", { form: cardForm("4242424242424242", { "metadata[order_id]": "ord_2" }), idem: "mal-t" });
  assert.equal(rep.status, 200);
  assert.equal(rep.headers.get("idempotent-replayed"), "true");
  assert.equal(rep.body.status, "succeeded");
  assert.ok(rep.text.startsWith(tText), "the truncated body was the first half of the real answer");
  s = (await stats()).fast;
  assert.equal(s.charges_created, 3);
});
