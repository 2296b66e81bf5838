// The simulator's misroute control: a lane that answers every API request with one HTTP
// status and a web server's page, processing nothing (a lane base_url that points at the
// wrong place). Run with `node --test wasm-tests/sim/`.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";

const SIM = path.join(path.dirname(fileURLToPath(import.meta.url)), "../../scripts/acquirer-sim.mjs");

let child;
let base;
before(async () => {
  child = spawn(process.execPath, [SIM, "--port", "0", "--lanes", "fast,cheap"], { stdio: ["ignore", "pipe", "pipe"] });
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

const control = (p, body) =>
  fetch(`${base}${p}`, { method: "POST", headers: { "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });

function charge(lane, key) {
  const form = new URLSearchParams({
    amount: "1250",
    currency: "eur",
    confirm: "true",
    "payment_method_data[type]": "card",
    "payment_method_data[card][number]": "4242424242424242",
    "payment_method_data[card][exp_month]": "12",
    "payment_method_data[card][exp_year]": "2034",
  });
  return fetch(`${base}/lanes/${lane}/v1/payment_intents`, {
    method: "POST",
    headers: { Authorization: "Bearer sk_test_x", "Idempotency-Key": key },
    body: form,
  });
}

test("a misrouted lane answers its status with an HTML page and charges nothing, until lifted", async () => {
  let r = await control("/control/lanes/fast/misroute", { status: 404 });
  assert.equal(r.status, 200);
  assert.deepEqual(await r.json(), { misroute: 404 });
  r = await charge("fast", "k1");
  assert.equal(r.status, 404);
  assert.match(r.headers.get("content-type"), /text\/html/);
  assert.match(await r.text(), /<h1>404<\/h1>/);
  // The other lane is not affected.
  r = await charge("cheap", "k2");
  assert.equal(r.status, 200);
  let stats = await (await fetch(`${base}/control/stats`)).json();
  assert.equal(stats.lanes.fast.charges_created, 0);
  assert.equal(stats.lanes.cheap.charges_created, 1);
  // Lifted: the same key charges once, as a first request.
  assert.equal((await control("/control/lanes/fast/misroute", { status: null })).status, 200);
  r = await charge("fast", "k1");
  assert.equal(r.status, 200);
  assert.equal((await r.json()).status, "succeeded");
  stats = await (await fetch(`${base}/control/stats`)).json();
  assert.equal(stats.lanes.fast.charges_created, 1);
  // Reset forgets it too.
  await control("/control/lanes/fast/misroute", { status: 400 });
  await control("/control/reset");
  assert.equal((await charge("fast", "k3")).status, 200);
});

test("misroute refuses bad settings and unknown lanes", async () => {
  assert.equal((await control("/control/lanes/fast/misroute", { status: 200 })).status, 400);
  assert.equal((await control("/control/lanes/fast/misroute", { status: "404" })).status, 400);
  assert.equal((await control("/control/lanes/nope/misroute", { status: 404 })).status, 404);
});
