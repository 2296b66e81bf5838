// Tests for the simulator's PaymentIntent listing as reconciliation reads it: the
// `created` filter and pagination to the end. Run with `node --test wasm-tests/sim/`.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";

const SIM = path.join(path.dirname(fileURLToPath(import.meta.url)), "../../scripts/acquirer-sim.mjs");
const KEY = "sk_test_poptill";

let child;
let base;
before(async () => {
  child = spawn(process.execPath, [SIM, "--port", "0", "--lanes", "fast"], { stdio: ["ignore", "pipe", "pipe"] });
  base = await new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      const m = /^acquirer-sim listening on (http:\/\/127\.0\.0\.1:\d+)\n/.exec(out);
      if (m) resolve(m[1]);
    });
    child.on("exit", (code) => reject(new Error(`simulator exited early (${code})`)));
  });
});
after(() => child.kill("SIGTERM"));

async function get(p) {
  const res = await fetch(`${base}/lanes/fast${p}`, { headers: { Authorization: `Bearer ${KEY}` } });
  return { status: res.status, body: await res.json() };
}

async function charge(order) {
  const res = await fetch(`${base}/lanes/fast/v1/payment_intents`, {
    method: "POST",
    headers: { Authorization: `Bearer ${KEY}` },
    body: new URLSearchParams({
      amount: "500", currency: "eur", confirm: "true",
      "payment_method_data[type]": "card", "payment_method_data[card][number]": "4242424242424242",
      "payment_method_data[card][exp_month]": "12", "payment_method_data[card][exp_year]": "2034",
      "metadata[order_id]": order,
    }),
  });
  const pi = await res.json();
  assert.equal(pi.status, "succeeded", JSON.stringify(pi));
  return pi;
}

test("the PaymentIntent list filters on created and pages to the end", async () => {
  const old = await charge("old");
  // The next second: `created` is in whole seconds.
  await new Promise((r) => setTimeout(r, 1100 - (Date.now() % 1000)));
  const fresh = [];
  for (let i = 0; i < 5; i++) fresh.push(await charge(`new${i}`));
  const since = fresh[0].created;
  assert.ok(since > old.created, `${since} > ${old.created}`);

  const all = await get("/v1/payment_intents?limit=100");
  assert.equal(all.body.data.length, 6);
  const newer = await get(`/v1/payment_intents?limit=100&created[gte]=${since}`);
  assert.equal(newer.status, 200, JSON.stringify(newer.body));
  assert.deepEqual(newer.body.data.map((p) => p.id), fresh.map((p) => p.id).reverse());
  assert.equal(newer.body.has_more, false);
  const before = await get(`/v1/payment_intents?created[lt]=${since}`);
  assert.deepEqual(before.body.data.map((p) => p.id), [old.id]);
  const exact = await get(`/v1/payment_intents?created=${old.created}`);
  assert.deepEqual(exact.body.data.map((p) => p.id), [old.id]);

  // Two at a time with starting_after, as the edge pages: every new intent once, then the end.
  const seen = [];
  let after;
  for (let pages = 0; pages < 10; pages++) {
    const page = await get(`/v1/payment_intents?limit=2&created[gte]=${since}${after ? `&starting_after=${after}` : ""}`);
    assert.equal(page.status, 200, JSON.stringify(page.body));
    seen.push(...page.body.data.map((p) => p.id));
    if (!page.body.has_more) break;
    after = page.body.data.at(-1).id;
  }
  assert.deepEqual(seen, fresh.map((p) => p.id).reverse());

  const bad = await get("/v1/payment_intents?created[gte]=yesterday");
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.param, "created");
});
