#!/usr/bin/env node
// chaos: the soak and chaos driver that scripts/chaos runs against a fresh local stack (the
// Worker in wrangler dev + the acquirer simulator). Plain Node 18+ (fetch), no npm packages.
//
//   node scripts/chaos.mjs --url http://127.0.0.1:P --sim http://127.0.0.1:S --seconds N
//        --out DIR --ctl DIR --state DIR --logs DIR [--max-requests N] [--seed N]
//
// Drives concurrent buyers across four events (a hot event pushed hard on one Durable
// Object, a sell-out behind a required waiting queue, two ordinary markets), injects faults
// on a schedule scaled to N seconds (acquirer slowdown, error bursts, a partition of one lane
// and of all lanes, refusing then hanging, a restart of the local runtime, short bursts of
// answers lost after the acquirer charged: processed then reset, "processing" intents,
// malformed 2xx; a vault data-key rotation and revocation, a policy push and rollback) while
// a mischief loop sends duplicated and replayed checkouts and hostile input throughout.
// A prelude on a healthy acquirer runs the honest buyers alone, then with hostile buyers
// beside them (a waiting-room flooder, a hoarder, a card tester, junk checkouts, 4 MiB
// bodies, a receipt guesser), who stay for the whole run; the invariants add that nothing
// was released offline while the acquirer answered, that the honest buyers' success under
// attack stays within 10 points of the prelude without it, that the objects' state stays
// bounded and that no guessed receipt URL reads a receipt.
// Every buyer intent (one buyer, one cart) has its own e-mail address, so each charge the
// acquirer ever made is counted against the buyer it charged. Then it heals the
// acquirer, forces every event to sync, waits for forwarding, checks the invariants
// (scripts/chaos-lib.mjs), writes report.md, chart.svg and results.json to --out, prints
// each invariant with its figure, and exits 1 when one is violated.
//
// The runtime restart is asked of scripts/chaos (which owns the processes): the driver
// writes CTL/restart.request and waits for CTL/restart.done. After an answer that does not
// say what happened, some buyers retry with the same Idempotency-Key and identical body (the
// fixed card frame), some behave like the card frame before the fix (tokenize again and
// press Pay under the same key, drop the key after a refusal, press again), others give up.
// A quarter of the buyers are on a flaky network that cuts half of their checkout requests
// part way (the buyer loses the answer; these are not counted as lost connections).
// Loopback only: --url and --sim must be http://127.0.0.1:PORT.

import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { freshCard, GENERATED_PATTERN } from './test-cards.mjs';
import { checkInvariants, attributeCharges, tallyRequests, renderReport, renderSvg, TEST_PANS, PANIC_PATTERNS, FINAL_STATES, offlineOnlyWhenUnreachable, honestSuccessHolds, stateBounded, receiptsGuarded } from './chaos-lib.mjs';

// ------------------------------------------------------------------------- arguments

function parseArgs(argv) {
  const o = { seconds: 60, maxRequests: null, seed: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => { if (i + 1 >= argv.length) throw new Error(`${a} needs a value`); return argv[++i]; };
    if (a === '--url') o.url = v();
    else if (a === '--sim') o.sim = v();
    else if (a === '--seconds') o.seconds = Number(v());
    else if (a === '--out') o.out = v();
    else if (a === '--ctl') o.ctl = v();
    else if (a === '--state') o.state = v();
    else if (a === '--logs') o.logs = v();
    else if (a === '--max-requests') o.maxRequests = Number(v());
    else if (a === '--seed') o.seed = Number(v());
    else throw new Error(`unknown argument ${a}`);
  }
  const loop = /^http:\/\/127\.0\.0\.1:\d+$/;
  if (!loop.test(o.url ?? '') || !loop.test(o.sim ?? '')) throw new Error('--url and --sim must be http://127.0.0.1:PORT (loopback only)');
  for (const k of ['out', 'ctl', 'state', 'logs']) if (!o[k]) throw new Error(`--${k} is required`);
  if (!(o.seconds >= 10 && o.seconds <= 3600)) throw new Error('--seconds must be 10..3600');
  // The prelude (24 s, honest buyers, then attackers beside them) comes on top of the seconds.
  o.maxRequests ??= Math.round((o.seconds + 24) * 150);
  return o;
}

const opt = parseArgs(process.argv.slice(2));
const ADMIN_KEY = process.env.ADMIN_KEY;
const POLICY_KEY_FILE = process.env.POLICY_KEY_FILE;
const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
if (!ADMIN_KEY || !POLICY_KEY_FILE) throw new Error('ADMIN_KEY and POLICY_KEY_FILE must be set (scripts/chaos sets them)');

// A small seedable PRNG so a run's mix can be repeated (timing still varies).
let seed = (opt.seed ?? crypto.randomBytes(4).readUInt32LE(0)) >>> 0;
const runSeed = seed;
function rand() {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (xs) => xs[Math.floor(rand() * xs.length)];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => process.stderr.write(`chaos ${elapsed().toFixed(1).padStart(6)}s  ${a.join(' ')}\n`);

// ------------------------------------------------------------------------- requests

const T0 = Date.now();
const elapsed = () => (Date.now() - T0) / 1000;
const requests = []; // {t, kind, status, ms, code, outcome, path}
let stopping = false; // the load phase is over (time or request budget)
let budgetExhausted = false;
const restartWindows = []; // {start, end}
const findings = [];
const noteFinding = (f) => { if (!findings.includes(f)) { findings.push(f); log('finding:', f); } };

async function call(kind, method, url, { body, key, headers = {}, timeoutMs = 30_000, final = false, cut = false } = {}) {
  if (!final && requests.length >= opt.maxRequests) { budgetExhausted = true; stopping = true; }
  const h = { ...headers };
  if (key) h.authorization = `Bearer ${key}`;
  let payload;
  if (body !== undefined) {
    payload = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
    h['content-type'] ??= 'application/json';
  }
  const t = elapsed();
  const start = performance.now();
  const rec = { t, kind, status: 0, ms: 0, code: null, path: url.replace(/^http:\/\/[^/]+/, '').slice(0, 80) };
  try {
    const res = await fetch(url, { method, headers: h, body: payload, signal: AbortSignal.timeout(timeoutMs) });
    const text = await res.text();
    rec.ms = performance.now() - start;
    rec.status = res.status;
    let json;
    try { json = JSON.parse(text); } catch { json = undefined; }
    rec.code = json?.error?.code ?? null;
    if (kind === 'checkout' && res.status === 201) rec.outcome = json?.status;
    if (res.status >= 500) log(`5xx: ${method} ${rec.path} -> ${res.status} ${text.slice(0, 200)}`);
    requests.push(rec);
    return { status: res.status, headers: res.headers, text, json };
  } catch (e) {
    rec.ms = performance.now() - start;
    rec.err = String(e?.cause?.code ?? e?.name ?? e);
    // A buyer's flaky network cutting its own request is not a lost connection of the Worker.
    if (cut && e?.name === 'TimeoutError') { rec.cut = true; rec.err = `cut by the buyer's network after ${timeoutMs.toFixed(0)} ms`; }
    requests.push(rec);
    return { status: 0, error: rec.err, json: undefined, text: '', headers: new Headers() };
  }
}
const api = (kind, method, p, o) => call(kind, method, opt.url + p, o);
const admin = (kind, method, p, o = {}) => api(kind, method, p, { ...o, key: ADMIN_KEY });
async function sim(method, p, body) {
  const res = await fetch(opt.sim + p, { method, headers: body ? { 'content-type': 'application/json' } : {}, body: body ? JSON.stringify(body) : undefined, signal: AbortSignal.timeout(10_000) });
  return res.json();
}

// ------------------------------------------------------------------------- setup

const CARDS = [
  ['4242424242424242', 60], ['5555555555554444', 10], ['378282246310005', 5], ['2223003122003222', 5], ['6011111111111117', 5],
  ['4000000000000002', 5], ['4000000000009995', 5], ['4000000000000069', 5],
];
/** Stripe's decline cards are shared by every buyer who draws one (so the per-card decline
 *  limit is met, as it would be by a card tester); an approving draw is a card of the
 *  buyer's own (the ledger limits what one card holds and buys). */
const DECLINING = new Set(['4000000000000002', '4000000000009995', '4000000000000069']);
function pickCard() {
  let r = rand() * 100;
  for (const [n, w] of CARDS) { if (r < w) return DECLINING.has(n) ? n : freshCard(); r -= w; }
  return freshCard();
}
const BUYER = { email: 'buyer@example.org', age_confirmed: true, consent_accepted: true };
const OFFLINE = { per_transaction_max: 10_000, aggregate_max: 200_000, per_card_max_count: 1_000_000, per_card_window_ms: 3_600_000 };

let merchantKey;
const events = []; // {id, name, jurisdiction, buyers, items(), queue}

async function setup() {
  const m = await admin('setup', 'POST', '/v1/admin/merchants', { body: { name: 'Chaos Night Market' } });
  if (m.status !== 201) throw new Error(`could not create the merchant: ${m.status} ${m.text}`);
  merchantKey = m.json.api_key;
  const now = Date.now();
  const mk = async (name, jurisdiction, skus, extra, buyers, items) => {
    const body = { title: `Chaos ${name}`, jurisdiction, currency: 'EUR', start_ms: now - 3_600_000, end_ms: now + 86_400_000, skus, allowed_origins: [], offline: OFFLINE, ...extra };
    const r = await api('setup', 'POST', '/v1/admin/events', { body, key: merchantKey });
    if (r.status !== 201) throw new Error(`could not create event ${name}: ${r.status} ${r.text}`);
    events.push({ id: r.json.event_id, name, jurisdiction, buyers, items, queue: Boolean(extra.queue) });
  };
  const ticketOnly = () => [{ sku: 'ticket', quantity: 1 }];
  const mixed = () => (rand() < 0.3 ? [{ sku: 'shirt', quantity: 1 }] : rand() < 0.5 ? [{ sku: 'ticket', quantity: 2 }] : [{ sku: 'ticket', quantity: 1 }]);
  await mk('hot', 'DE', [{ id: 'ticket', name: 'Entry', category: 'ticket', price: 1500, stock: 100_000 }], {}, 8, ticketOnly);
  await mk('sellout', 'DE', [{ id: 'ticket', name: 'Front row', category: 'ticket', price: 2000, stock: 40 }], {
    queue: { required: true, mode: 'fifo', sale_start_ms: now - 1000, capacity: 5000, admission_rate_per_sec: 5, place_ttl_ms: 60_000, admitted_ttl_ms: 600_000 },
  }, 4, ticketOnly);
  const market = [
    { id: 'ticket', name: 'Entry', category: 'ticket', price: 1200, stock: 5000 },
    { id: 'shirt', name: 'T-shirt', category: 'merchandise', price: 2500, stock: 30 },
  ];
  await mk('market-es', 'ES', market, {}, 2, mixed);
  await mk('night-fr', 'FR', market, {}, 2, mixed);
  log(`events: ${events.map((e) => `${e.name}=${e.id}`).join(' ')}`);
}

// ------------------------------------------------------------------------- buyers

const accepted = new Map(); // order_id -> {event, order_id, status, key, body, httpStatus}
const declined = [];
const outcomes = {};
const bump = (k) => { outcomes[k] = (outcomes[k] ?? 0) + 1; };

async function tokenize(ev, number) {
  for (let i = 0; i < 20 && !(stopping && i > 5); i++) {
    const r = await api('token', 'POST', '/v1/tokens', { body: { event_id: ev.id, card: { number, exp_month: 12, exp_year: 2034, cvc: number.length === 15 ? '1234' : '123' } } });
    if (r.status === 201) return r.json;
    if (r.status === 0 || r.json?.error?.retryable) { await sleep(300 + rand() * 700); continue; }
    return null;
  }
  return null;
}

async function waitInQueue(ev) {
  const deadline = Date.now() + 60_000;
  let ticket = null;
  while (Date.now() < deadline) {
    const r = ticket ? await api('queue poll', 'GET', `/v1/events/${ev.id}/queue/${ticket}`) : await api('queue join', 'POST', `/v1/events/${ev.id}/queue`);
    if (r.status === 200) {
      ticket = r.json.ticket;
      if (r.json.admitted) return ticket;
    } else if (r.status === 404 && ticket) ticket = null; // lapsed place: join again
    else if (r.status !== 0 && !r.json?.error?.retryable) { bump(`queue refused ${r.status} ${r.json?.error?.code}`); return null; }
    if (stopping && Date.now() > deadline - 50_000) return null;
    await sleep(250 + rand() * 250);
  }
  return null;
}

// Each buyer intent (one simulated buyer wanting one cart) has its own e-mail address, which
// the ledger records on every order it makes; the end of the run maps every charge the
// acquirer made (metadata[order_id]) through the merchant export to its buyer intent.
const intents = []; // {id, email, event, style, items, history: [text], outcome}
function newIntent(ev, style, items) {
  const id = `b${String(intents.length + 1).padStart(5, '0')}`;
  // A quarter of the buyers are on a flaky network that cuts half of their checkout requests
  // part way (the answer is lost; the Worker may or may not have finished).
  const flaky = style !== 'canary' && !style.startsWith('attacker') && rand() < 0.25;
  const it = { id, email: `${id}-${runSeed}@chaos.example.org`, event: ev.name, style: flaky ? `${style}, flaky network` : style, items, history: [], outcome: null, keys: new Map(), keyStart: new Map(), tokens: 0, flaky, started: elapsed() };
  intents.push(it);
  return it;
}
const buyerOf = (it) => ({ ...BUYER, email: it.email });
/** How a buyer's client behaves after an answer it cannot read: weights out of 100. */
const STYLES = [['same body', 45], ['frame-like', 35], ['gives up', 20]];
function pickStyle() {
  let r = rand() * 100;
  for (const [s, w] of STYLES) { if (r < w) return s; r -= w; }
  return STYLES[0][0];
}
const answerText = (r) => (r.status === 0 ? `no answer (${r.error})` : `${r.status} ${r.json?.status ?? r.json?.error?.code ?? ''}${r.json?.order_id ? ` ${r.json.order_id}` : ''}`.trim());

/** One checkout POST of a buyer intent, noted in its history (keys and tokens numbered). */
async function postCheckout(ev, it, key, body) {
  if (!it.keys.has(key)) { it.keys.set(key, `k${it.keys.size + 1}`); it.keyStart.set(key, elapsed()); }
  const cut = it.flaky && rand() < 0.5;
  const r = await api('checkout', 'POST', `/v1/events/${ev.id}/checkout`, { body: wire(body), headers: { 'idempotency-key': key }, ...(cut ? { timeoutMs: Math.round(300 + rand() * 1700), cut } : {}) });
  if (it.history.length < 24) it.history.push(`${elapsed().toFixed(1)}s ${it.keys.get(key)}/t${body.tokenNo ?? '?'} → ${answerText(r)}`);
  if (r.status === 201 && r.json?.status === 'confirming') return confirmed(ev, it, key, body, r);
  return r;
}

/** A `confirming` answer (accepted, the acquirer still answering): the card frame asks
 *  again each second with the same key until approved or declined; still confirming after
 *  20 tries, or no readable answer, the payment stands as accepted without the acquirer's
 *  word, which the report counts as stored (`queued`). */
async function confirmed(ev, it, key, body, first) {
  bump('answered confirming');
  for (let n = 0; n < 20; n++) {
    await sleep(1000);
    const r = await api('checkout', 'POST', `/v1/events/${ev.id}/checkout`, { body: wire(body), headers: { 'idempotency-key': key } });
    if (r.json?.status === 'confirming') continue;
    if (r.status === 201 || (r.status === 402 && r.json?.status === 'declined')) {
      bump(`confirming, then ${r.json.status}`);
      if (it.history.length < 24) it.history.push(`${elapsed().toFixed(1)}s ${it.keys.get(key)} confirming → ${answerText(r)}`);
      return r;
    }
    break;
  }
  bump('confirming, no final answer');
  return { ...first, json: { ...first.json, status: 'queued' } };
}
/** The request body without the driver's own bookkeeping. */
const wire = (body) => { const { tokenNo, ...rest } = body; return rest; };

/** POST a checkout until it has a definite answer: same key and body on every retry. */
async function checkoutDefinite(ev, key, body, it = null) {
  const deadline = Date.now() + 150_000;
  let sawUnknown = false, sawRetryable = false, attempts = 0;
  for (;;) {
    attempts += 1;
    const r = it ? await postCheckout(ev, it, key, body) : await api('checkout', 'POST', `/v1/events/${ev.id}/checkout`, { body, headers: { 'idempotency-key': key } });
    const code = r.json?.error?.code;
    if (Date.now() > deadline) return { ...r, attempts, sawUnknown, sawRetryable, gaveUp: true };
    if (r.status === 0) { sawUnknown = true; await sleep(400 + rand() * 1200); continue; }
    if (r.status === 409 && code === 'idempotency_in_flight') { await sleep(500 + rand() * 1000); continue; }
    if (r.status >= 500 || (r.json?.error?.retryable && r.status !== 201)) {
      sawRetryable = true;
      if (attempts < 6 && !(stopping && attempts > 2)) { await sleep(500 + rand() * 1500); continue; }
    }
    return { ...r, attempts, sawUnknown, sawRetryable };
  }
}

/** A definite answer (201, or 402 with a declined status) ends an intent: record it. */
function settled(ev, it, r, key, body) {
  if (r.status === 201) {
    const st = r.json.status;
    accepted.set(r.json.order_id, { event: ev.name, order_id: r.json.order_id, status: st, key, body: wire(body), httpStatus: r.status, receipt_url: r.json.receipt_url, intent: it.id, started: it.keyStart.get(key) ?? it.started });
    it.outcome = st;
    return st;
  }
  if (r.status === 402 && r.json?.status === 'declined') {
    declined.push({ event: ev.name, order_id: r.json.order_id, intent: it.id });
    it.outcome = 'declined';
    return 'declined';
  }
  return null;
}

async function freshBody(ev, it, number, withCvc, ticket) {
  const t = await tokenize(ev, number);
  if (!t) return null;
  it.tokens += 1;
  const body = { items: it.items, token: t.token, buyer: buyerOf(it), tokenNo: it.tokens };
  if (withCvc) body.cvc_token = t.cvc_token;
  if (ticket) body.admission_ticket = ticket;
  return body;
}

/**
 * A buyer behind the card frame as it was before the fix (src/embed/frame.js at a917f3e):
 * every press of Pay tokenizes the card again; the Idempotency-Key is kept only after a
 * lost or retryable answer (so the next press sends a new body under the old key) and is
 * dropped after any other refusal (422 idempotency_mismatch, 409 cvc_already_used), after
 * which the buyer presses Pay again with a new key. A person presses at most five times.
 */
async function frameBuyer(ev, it, number, ticket) {
  let pendingKey = null;
  for (let press = 1; press <= 5; press++) {
    if (press > 1) await sleep(800 + rand() * 1700);
    if (stopping && press > 2) break;
    const body = await freshBody(ev, it, number, true, ticket);
    if (!body) { it.history.push(`press ${press}: could not tokenize`); continue; }
    pendingKey ??= crypto.randomUUID();
    const key = pendingKey;
    const r = await postCheckout(ev, it, key, body);
    const done = settled(ev, it, r, key, body);
    if (done) { bump(`frame-like: ${done}${press > 1 ? ` (press ${press})` : ''}`); return; }
    if (r.status === 0) continue; // the frame's network error: key kept
    const err = r.json?.error ?? {};
    if (!err.retryable) pendingKey = null;
    if (err.retryable || ['idempotency_mismatch', 'cvc_already_used', 'idempotency_in_flight'].includes(err.code) || r.status >= 500) continue;
    it.outcome = `refused ${r.status} ${err.code ?? ''}`.trim();
    bump(`frame-like: ${it.outcome}`);
    return;
  }
  it.outcome ??= 'gave up pressing Pay';
  bump(`frame-like: ${it.outcome}`);
}

async function buyOnce(ev) {
  const style = pickStyle();
  const it = newIntent(ev, style, ev.items());
  let ticket = null;
  if (ev.queue) {
    ticket = await waitInQueue(ev);
    if (!ticket) { it.outcome = 'gave up in the waiting queue'; bump('gave up in the waiting queue'); return; }
  }
  if (style === 'frame-like') {
    const number = pickCard();
    it.declining = DECLINING.has(number);
    return frameBuyer(ev, it, number, ticket);
  }
  for (let round = 0; round < 3; round++) {
    const number = pickCard();
    it.declining = DECLINING.has(number);
    const withCvc = rand() < 0.5;
    // Some buyers hesitate between entering the card and paying (a key rotation or
    // revocation can happen in between).
    const body = await freshBody(ev, it, number, withCvc, ticket);
    if (!body) { it.outcome = 'could not tokenize'; bump('could not tokenize'); return; }
    if (rand() < 0.15) await sleep(1000 + rand() * 3000);
    const key = crypto.randomUUID();
    let r;
    if (style === 'gives up') {
      // One press; an answer that does not say what happened ends the intent.
      r = await postCheckout(ev, it, key, body);
      const unknown = r.status === 0 || r.status >= 500 || (r.status !== 201 && r.json?.error?.retryable);
      if (unknown) { it.outcome = `gave up after ${answerText(r)}`; bump(`gave up after ${r.status === 0 ? 'a lost answer' : `a ${r.status}`}`); return; }
    } else r = await checkoutDefinite(ev, key, body, it);
    const code = r.json?.error?.code;
    if (r.gaveUp) { it.outcome = 'gave up (no definite answer in 150 s)'; bump('gave up (no definite answer in 150 s)'); return; }
    const done = settled(ev, it, r, key, body);
    if (done === 'declined') { bump(`declined ${r.json.decline?.code}`); return; }
    if (done) { bump(`${done}${r.sawUnknown ? ' (after a lost answer)' : ''}`); return; }
    if (code === 'key_revoked' || code === 'token_expired') { bump(`${code}: tokenized again`); continue; }
    if (code === 'cvc_already_used' && (r.sawRetryable || r.sawUnknown)) {
      noteFinding('A checkout retried with the same Idempotency-Key and body after a retryable refusal (or a lost answer) is refused 409 cvc_already_used: the first attempt spent the single-use CVC token (POST /cvc-use in checkout_inner runs before the hold) and AbandonIdempotent does not give it back, so the prescribed retry cannot succeed without asking the buyer for the CVC again.');
      bump('cvc_already_used after a retryable answer');
      it.outcome = 'cvc_already_used after a retryable answer';
      return;
    }
    it.outcome = `refused ${r.status} ${code ?? ''}`.trim();
    bump(it.outcome);
    return;
  }
}

async function buyerLoop(ev) {
  while (!stopping) {
    await buyOnce(ev);
    await sleep(20 + rand() * 80);
  }
}

// ------------------------------------------------------------------------- mischief

const replays = { checked: 0, mismatches: [] };
const shredding = { checked: false, answer: null };
const hostile = { sent: 0, unexpected: [] };
const BIG = 'x'.repeat(2 * 1024 * 1024);
function hostileCases(ev) {
  const co = `/v1/events/${ev.id}/checkout`;
  const idem = { 'idempotency-key': crypto.randomUUID() };
  return [
    ['bad JSON checkout', 'POST', co, { body: '{"items": [', headers: idem }],
    ['bad JSON token', 'POST', '/v1/tokens', { body: '{"event_id": "' + ev.id + '", "card": {"number": "4242424242424242",' }],
    ['huge body', 'POST', co, { body: `{"items": [], "token": "${BIG}"}`, headers: idem }],
    ['huge token body', 'POST', '/v1/tokens', { body: `{"event_id": "${BIG}"}` }],
    ['wrong types', 'POST', co, { body: { items: [{ sku: 'ticket', quantity: '1' }], token: 42, buyer: [] }, headers: idem }],
    ['negative quantity', 'POST', `/v1/events/${ev.id}/quote`, { body: { items: [{ sku: 'ticket', quantity: -1 }] } }],
    ['huge quantity', 'POST', `/v1/events/${ev.id}/quote`, { body: { items: [{ sku: 'ticket', quantity: 4294967295 }, { sku: 'ticket', quantity: 4294967295 }] } }],
    ['unicode sku', 'POST', `/v1/events/${ev.id}/quote`, { body: { items: [{ sku: '🎟️\u202e\u0000票', quantity: 1 }] } }],
    ['injection sku', 'POST', `/v1/events/${ev.id}/quote`, { body: { items: [{ sku: "'; DROP TABLE orders;--", quantity: 1 }] } }],
    ['html email', 'POST', co, { body: { items: [{ sku: 'ticket', quantity: 1 }], token: 'tok_x', buyer: { email: '<script>alert(1)</script>@x.y', consent_accepted: true } }, headers: idem }],
    ['forged token', 'POST', co, { body: { items: [{ sku: 'ticket', quantity: 1 }], token: 'tok_' + 'A'.repeat(60), buyer: BUYER }, headers: idem }],
    ['empty token', 'POST', co, { body: { items: [{ sku: 'ticket', quantity: 1 }], token: '', buyer: BUYER }, headers: idem }],
    ['card number as token', 'POST', co, { body: { items: [{ sku: 'ticket', quantity: 1 }], token: '4242424242424242', buyer: BUYER }, headers: idem }],
    ['card number in a wrong field', 'POST', '/v1/tokens', { body: { event_id: ev.id, card: { number: '4242424242424242', exp_month: '4242424242424242', exp_year: 2034 } } }],
    ['bad Luhn', 'POST', '/v1/tokens', { body: { event_id: ev.id, card: { number: '4242424242424241', exp_month: 12, exp_year: 2034, cvc: '123' } } }],
    ['long idempotency key', 'POST', co, { body: { items: [{ sku: 'ticket', quantity: 1 }], token: 'tok_x', buyer: BUYER }, headers: { 'idempotency-key': 'k'.repeat(300) } }],
    ['path traversal event', 'GET', '/v1/events/..%2F..%2Fetc%2Fpasswd/public', {}],
    ['injection event id', 'POST', "/v1/events/evt_'%20OR%201=1--/checkout", { body: { items: [] }, headers: idem }],
    ['bogus queue ticket', 'GET', `/v1/events/${ev.id}/queue/${encodeURIComponent('q_<script>')}`, {}],
    ['forged merchant key', 'GET', `/v1/admin/events/${ev.id}`, { key: 'mk_forged' }],
    ['no admin key', 'POST', '/v1/admin/keys/rotate', {}],
    ['wrong method', 'DELETE', co, {}],
    ['unknown route', 'GET', '/v1/%00%ff', {}],
    ['forged receipt', 'POST', '/v1/receipts/verify', { body: { receipt: { order_id: 'ord_x', totals: { total: -1 } }, signature: 'AAAA' } }],
    ['wrong content type', 'POST', co, { body: 'items=1&token=x', headers: { ...idem, 'content-type': 'application/x-www-form-urlencoded' } }],
  ];
}

async function mischiefLoop() {
  let i = 0;
  while (!stopping) {
    i += 1;
    const ev = events[0];
    const kind = i % 4;
    if (kind === 0 && accepted.size) {
      // replay: same key and body gives the same order; another body is refused
      const a = pick([...accepted.values()]);
      const evA = events.find((e) => e.name === a.event);
      const r = await api('replay', 'POST', `/v1/events/${evA.id}/checkout`, { body: a.body, headers: { 'idempotency-key': a.key } });
      if (r.status !== 0 && r.status !== 409) {
        replays.checked += 1;
        if (r.status !== a.httpStatus || r.json?.order_id !== a.order_id) replays.mismatches.push(`replay of ${a.order_id} answered ${r.status} ${r.json?.order_id ?? r.json?.error?.code}`);
        else if (r.headers.get('idempotent-replayed') !== 'true') replays.mismatches.push(`replay of ${a.order_id} lacks Idempotent-Replayed`);
      }
      const other = { ...a.body, items: [{ sku: 'ticket', quantity: 3 }] };
      const d = await api('replay other body', 'POST', `/v1/events/${evA.id}/checkout`, { body: other, headers: { 'idempotency-key': a.key } });
      if (d.status !== 0) {
        replays.checked += 1;
        if (d.status !== 422 || d.json?.error?.code !== 'idempotency_mismatch') replays.mismatches.push(`same key, other body for ${a.order_id} answered ${d.status} ${d.json?.order_id ?? d.json?.error?.code}`);
      }
    } else if (kind === 1) {
      // duplicate in flight: the same new checkout sent twice at once
      // A double click of a buyer with a card of its own.
      const t = await tokenize(ev, freshCard());
      if (t) {
        const it = newIntent(ev, 'duplicate in flight', [{ sku: 'ticket', quantity: 1 }]);
        const body = { items: it.items, token: t.token, cvc_token: t.cvc_token, buyer: buyerOf(it) };
        const key = crypto.randomUUID();
        const [x, y] = await Promise.all([0, 1].map(() => api('duplicate', 'POST', `/v1/events/${ev.id}/checkout`, { body, headers: { 'idempotency-key': key } })));
        const ok = [x, y].filter((r) => r.status === 201);
        if (x.status !== 0 && y.status !== 0) {
          replays.checked += 1;
          const ids = new Set(ok.map((r) => r.json.order_id));
          if (ids.size > 1) replays.mismatches.push(`one key, two orders: ${[...ids].join(' ')}`);
          for (const r of [x, y]) if (r.status === 409 && !['idempotency_in_flight'].includes(r.json?.error?.code)) replays.mismatches.push(`duplicate answered 409 ${r.json?.error?.code}`);
        }
        it.history.push(`${elapsed().toFixed(1)}s k1/t1 twice at once → ${answerText(x)}; ${answerText(y)}`);
        for (const r of ok) accepted.set(r.json.order_id, { event: ev.name, order_id: r.json.order_id, status: r.json.status, key, body, httpStatus: 201, intent: it.id, started: it.started });
        // settle it: whoever lost the race retries until the answer is definite
        const fin = await checkoutDefinite(ev, key, body, it);
        settled(ev, it, fin, key, body);
        it.outcome ??= `refused ${fin.status} ${fin.json?.error?.code ?? ''}`.trim();
      }
    } else {
      const cases = hostileCases(pick(events));
      const [name, method, p, o] = cases[i % cases.length];
      const r = await api('hostile', method, p, { ...o, timeoutMs: 15_000 });
      if (r.status !== 0) {
        hostile.sent += 1;
        if (!(r.status >= 400 && r.status < 500)) hostile.unexpected.push(`${name}: ${method} ${p.slice(0, 60)} answered ${r.status}`);
        if (/4242424242424242/.test(r.text)) hostile.unexpected.push(`${name}: the answer echoes the card number`);
      }
    }
    await sleep(100 + rand() * 150);
  }
}

// ------------------------------------------------------------------------- attackers

// Hostile buyers beside the honest ones, from the end of the prelude's baseline window to the
// end of the load: a queue flooder, a hoarder, a card tester, junk checkouts, huge bodies and
// a receipt guesser. Every request they send is public (an event id is in the script tag).
// Their checkouts are buyer intents of style "attacker: ..." (so each charge they cause is
// still counted against a buyer intent) that the honest success figure leaves out.
const PRELUDE = { baseline_s: 12, attacked_s: 12 };
let attackersOn = false;
const attacks = {}; // kind -> {status: count}
const receiptGuesses = [];
const noteAttack = (kind, r) => {
  const k = r.status === 0 ? 'no answer' : `${r.status}${r.json?.error?.code ? ` ${r.json.error.code}` : r.json?.status ? ` ${r.json.status}` : ''}`;
  attacks[kind] ??= {};
  attacks[kind][k] = (attacks[kind][k] ?? 0) + 1;
};
// 4 MiB, sixteen times the 256 KiB cap. (A 60 MB body beside a paying buyer is an e2e test,
// wasm-tests/e2e/hostile.test.mjs; sent every few seconds under this load, 60 MB uploads made
// the local runtime's proxy answer 503 "worker restarted mid-request" now and then, which is
// the dev server's doing, not the Worker's.)
const HUGE = Buffer.alloc(4 * 1024 * 1024, 0x61);
const b64url = (n) => crypto.randomBytes(n).toString('base64url');

/** One attacker's checkout: its own buyer intent, one key, one press. */
async function attackCheckout(kind, ev, items, number) {
  const it = newIntent(ev, `attacker: ${kind}`, items);
  const t = await api(`attack ${kind}`, 'POST', '/v1/tokens', { body: { event_id: ev.id, card: { number, exp_month: 12, exp_year: 2034, cvc: '123' } } });
  noteAttack(`${kind} (tokenize)`, t);
  if (t.status !== 201) { it.outcome = `refused ${t.status} ${t.json?.error?.code ?? ''}`.trim(); return; }
  const body = { items, token: t.json.token, cvc_token: t.json.cvc_token, buyer: buyerOf(it) };
  const key = crypto.randomUUID();
  const r = await postCheckout(ev, it, key, body);
  noteAttack(kind, r);
  if (!settled(ev, it, r, key, body)) it.outcome = answerText(r);
}

function attackerLoops() {
  const byName = (n) => events.find((e) => e.name === n);
  const loop = (fn, pauseMs) => (async () => {
    while (!attackersOn && !stopping) await sleep(100);
    while (!stopping) { await fn(); await sleep(pauseMs * (0.5 + rand())); }
  })();
  return [
    // Queue flooding: places in the sell-out's waiting room it never uses.
    loop(async () => noteAttack('queue flood', await api('attack queue', 'POST', `/v1/events/${byName('sellout').id}/queue`)), 60),
    // Hoarding: the per-order limit of shirts on a card the issuer declines, again and again.
    loop(() => attackCheckout('hoarding cart', byName('market-es'), [{ sku: 'shirt', quantity: 10 }], '4000000000000002'), 150),
    // Card testing: a new card number on every try, the smallest cart.
    loop(() => attackCheckout('card testing', byName('hot'), [{ sku: 'ticket', quantity: 1 }], freshCard()), 100),
    // Junk checkouts: a new key each time, a body that never reaches a hold.
    loop(async () => {
      const ev = pick(events);
      const junk = pick([
        { items: [{ sku: 'ticket', quantity: 1 }], token: `tok_${b64url(30)}`, buyer: BUYER },
        { items: [{ sku: `nope-${b64url(6)}`, quantity: 1 }], token: 'tok_x', buyer: BUYER },
        { items: [], token: 'tok_x', buyer: BUYER },
        { items: Array.from({ length: 500 }, (_, k) => ({ sku: `s${k}`, quantity: 1 })), token: 'tok_x' },
      ]);
      const r = await api('attack junk', 'POST', `/v1/events/${ev.id}/checkout`, { body: junk, headers: { 'idempotency-key': crypto.randomUUID() } });
      noteAttack('junk checkout', r);
      if (r.status !== 0 && !(r.status >= 400 && r.status < 500)) hostile.unexpected.push(`junk checkout answered ${r.status}`);
    }, 80),
    // Huge bodies: 4 MiB to the checkout and the vault.
    loop(async () => {
      const ev = pick(events);
      const [p, h] = rand() < 0.5 ? [`/v1/events/${ev.id}/checkout`, { 'idempotency-key': crypto.randomUUID() }] : ['/v1/tokens', {}];
      const r = await api('attack huge', 'POST', p, { body: HUGE, headers: h, timeoutMs: 30_000 });
      noteAttack('4 MiB body', r);
      if (r.status !== 0 && r.status !== 413) hostile.unexpected.push(`a 4 MiB body to ${p.slice(0, 40)} answered ${r.status}`);
    }, 1000),
    // Receipt guessing: sequential receipt numbers, bare or with a made-up capability.
    loop(async () => {
      const ev = pick(events);
      const n = String(1 + Math.floor(rand() * 200)).padStart(6, '0');
      const p = `/v1/receipts/rcpt_${ev.id}-${n}${rand() < 0.5 ? `.${b64url(16)}` : ''}`;
      const r = await api('attack receipt', 'GET', p);
      noteAttack('receipt guess', r);
      receiptGuesses.push({ path: p, status: r.status });
    }, 200),
  ];
}

// ------------------------------------------------------------------------- operators

async function opsLoop() {
  let i = 0;
  while (!stopping) {
    i += 1;
    const ev = pick(events);
    if (i % 5 === 0) {
      const shirts = [...accepted.values()].filter((a) => a.status === 'approved' && a.body.items[0].sku === 'shirt' && !a.refundTried);
      if (shirts.length) {
        const a = pick(shirts);
        a.refundTried = true;
        const evA = events.find((e) => e.name === a.event);
        const key = crypto.randomUUID();
        for (let k = 0; k < 5; k++) {
          const r = await api('refund', 'POST', `/v1/admin/events/${evA.id}/refunds`, { key: merchantKey, body: { order_id: a.order_id }, headers: { 'idempotency-key': key } });
          if (r.status === 0 || r.json?.error?.retryable) { await sleep(1000); continue; }
          bump(`refund ${r.status}${r.json?.error?.code ? ' ' + r.json.error.code : ''}`);
          break;
        }
      }
    } else if (i % 5 === 1) await api('sync-now', 'POST', `/v1/admin/events/${ev.id}/sync`, { key: merchantKey });
    else if (i % 5 === 2) await api('admin summary', 'GET', `/v1/admin/events/${ev.id}`, { key: merchantKey });
    else if (i % 5 === 3) await api('public', 'GET', `/v1/events/${ev.id}/public`);
    else await admin('routing', 'GET', '/v1/admin/routing');
    await sleep(800 + rand() * 800);
  }
}

// ------------------------------------------------------------------------- faults

const faults = []; // {start, end, label, note}
const lanes = ['fast', 'cheap'];
const HEALTHY = { partition: 'none', error_rate: 0, error_mode: 'before', reset_rate: 0, processing_rate: 0, malformed_rate: 0, latency_ms: { p50: 15, p95: 60 } };
async function setLanes(settings) { for (const l of lanes) await sim('POST', `/control/lanes/${l}`, settings[l] ?? settings); }

function startFault(label, note) { const f = { start: elapsed(), end: null, label, note }; faults.push(f); log(`fault: ${label}${note ? ` (${note})` : ''}`); return f; }
const endFault = (f) => { f.end = elapsed(); };

async function restartRuntime() {
  const f = startFault('runtime restart', 'wrangler dev stopped and started on the same port and state');
  const win = { start: f.start, end: Infinity };
  restartWindows.push(win);
  const done = path.join(opt.ctl, 'restart.done');
  fs.rmSync(done, { force: true });
  fs.writeFileSync(path.join(opt.ctl, 'restart.request'), String(Date.now()));
  const deadline = Date.now() + 300_000;
  while (!fs.existsSync(done) && Date.now() < deadline) await sleep(200);
  const result = fs.existsSync(done) ? fs.readFileSync(done, 'utf8').trim() : 'timeout';
  endFault(f);
  win.end = f.end + 2;
  f.note += `; took ${(f.end - f.start).toFixed(1)} s (${result})`;
  if (result !== 'ok') throw new Error(`the runtime restart failed: ${result}`);
}

function signPolicy(file, revision, mutate) {
  const dir = fs.mkdtempSync(path.join(opt.ctl, 'policy-'));
  const src = path.join(dir, path.basename(file));
  const bundle = JSON.parse(fs.readFileSync(file, 'utf8'));
  mutate(bundle);
  fs.writeFileSync(src, JSON.stringify(bundle));
  try {
    execFileSync(path.join(ROOT, 'target/debug/poptill-policy'), ['sign', '--key', POLICY_KEY_FILE, '--revision', String(revision), '--out', dir, src], { encoding: 'utf8', stdio: 'pipe' });
  } catch (e) {
    throw new Error(`could not sign the policy: ${String(e.stderr ?? e).slice(0, 300)}`);
  }
  return fs.readFileSync(path.join(dir, path.basename(file).replace('.json', '.signed.json')), 'utf8');
}

async function schedule(D) {
  // The prelude: honest buyers alone, then with the attackers beside them, on a healthy
  // acquirer; the fault schedule starts after it.
  await sleep(PRELUDE.baseline_s * 1000);
  attackersOn = true;
  log('attackers start');
  await sleep(PRELUDE.attacked_s * 1000);
  const base = Date.now();
  const at = async (frac) => { const wait = base + frac * D * 1000 - Date.now(); if (wait > 0) await sleep(wait); return !stopping; };
  const windowed = async (from, to, label, note, apply) => {
    if (!(await at(from))) return;
    const f = startFault(label, note);
    await apply();
    await at(to);
    await setLanes(HEALTHY);
    endFault(f);
  };
  await setLanes(HEALTHY);
  await windowed(0.08, 0.18, 'acquirer slow', 'both lanes p50 400 ms, p95 2.5 s', () => setLanes({ latency_ms: { p50: 400, p95: 2500 } }));
  await windowed(0.20, 0.28, 'error burst', 'fast 40 % 5xx before the API; cheap 25 % after it (lost answers)', () =>
    setLanes({ fast: { error_rate: 0.4, error_mode: 'before' }, cheap: { error_rate: 0.25, error_mode: 'after' } }));
  await windowed(0.30, 0.38, 'one lane partitioned', 'fast refuses connections', () => setLanes({ fast: { partition: 'refuse' }, cheap: {} }));
  await windowed(0.40, 0.47, 'all lanes refuse', 'both lanes refuse connections', () => setLanes({ partition: 'refuse' }));
  await windowed(0.48, 0.55, 'all lanes hang', 'both lanes hold requests', () => setLanes({ partition: 'hang' }));
  if (!(await at(0.58))) return;
  await restartRuntime();
  // The acquirer's answers that come after it charged run in short bursts alongside the
  // vault and the policy faults (which do not touch the lanes).
  const after = answerBursts(at);
  try {
    await lateFaults(at);
  } finally {
    await after;
  }
}

/** The vault key rotation and revocation, the policy push and rollback. */
async function lateFaults(at) {
  if (!(await at(0.68))) return;
  {
    const before = await admin('vault', 'GET', '/v1/admin/keys');
    // A canary token minted under the key about to be revoked: afterwards it must not pay.
    const canary = await tokenize(events[0], '4242424242424242');
    const f = startFault('vault key rotation');
    const r = await admin('vault', 'POST', '/v1/admin/keys/rotate');
    f.note = `rotate ${r.status}: ${before.json?.current} → ${r.json?.kid}`;
    await sleep(1500);
    endFault(f);
    if (!(await at(0.72))) return;
    const g = startFault('vault key revocation');
    const v = await admin('vault', 'POST', `/v1/admin/keys/${before.json?.current}/revoke`);
    g.note = `revoke ${before.json?.current}: ${v.status}`;
    if (canary) {
      const it = newIntent(events[0], 'canary', [{ sku: 'ticket', quantity: 1 }]);
      const c = await api('canary', 'POST', `/v1/events/${events[0].id}/checkout`, { body: { items: it.items, token: canary.token, buyer: buyerOf(it) }, headers: { 'idempotency-key': crypto.randomUUID() } });
      it.history.push(`canary → ${answerText(c)}`);
      it.outcome = answerText(c);
      shredding.checked = true;
      shredding.answer = `${c.status} ${c.json?.error?.code ?? c.json?.status ?? ''}`.trim();
      g.note += `; a token of the revoked key then answered ${shredding.answer}`;
      if (c.status === 201) accepted.set(c.json.order_id, { event: events[0].name, order_id: c.json.order_id, status: c.json.status, key: 'canary', body: {}, httpStatus: 201, intent: it.id, started: it.started });
    }
    await sleep(1500);
    endFault(g);
  }
  if (!(await at(0.78))) return;
  {
    const st = await admin('policy', 'GET', '/v1/admin/policies/DE');
    const rev = st.json?.active?.revision ?? 1;
    const f = startFault('policy push');
    // A real change a policy author might push: merchandise at the first reduced rate.
    const signed = signPolicy(path.join(ROOT, 'policies/DE.json'), rev + 1, (b) => { b.tax.rates_ppm.merchandise = b.tax.reduced_rates_ppm[0]; });
    const r = await admin('policy', 'PUT', '/v1/admin/policies', { body: signed });
    f.note = `DE revision ${rev} → ${rev + 1}: ${r.status}`;
    if (r.status !== 201) noteFinding(`policy push answered ${r.status} ${r.text.slice(0, 200)}`);
    await at(0.86);
    endFault(f);
    const g = startFault('policy rollback');
    let out = '';
    try {
      out = execFileSync(path.join(ROOT, 'target/debug/poptill-policy'), ['rollback', '--url', opt.url, '--key', POLICY_KEY_FILE, 'DE', '--to', String(rev)], { env: { ...process.env, POPTILL_ADMIN_KEY: ADMIN_KEY }, encoding: 'utf8', timeout: 30_000 });
      g.note = `DE back to revision ${rev}`;
    } catch (e) {
      g.note = 'rollback FAILED';
      noteFinding(`policy rollback failed: ${String(e.stdout ?? '') + String(e.stderr ?? '')}`.slice(0, 300));
    }
    const after = await admin('policy', 'GET', '/v1/admin/policies/DE');
    if (after.json?.active?.revision !== rev) noteFinding(`after the rollback DE is at revision ${after.json?.active?.revision}, not ${rev} ${out.slice(0, 100)}`);
    await sleep(1500);
    endFault(g);
  }
}

/** Bursts of the failures that happen after the acquirer charged: each loses or hides the outcome. */
async function answerBursts(at) {
  const burst = async (from, to, label, note, settings) => {
    if (!(await at(from))) return;
    const f = startFault(label, note);
    await setLanes(settings);
    await at(to);
    await setLanes(HEALTHY);
    endFault(f);
  };
  await burst(0.69, 0.74, 'processed, then reset', 'charged, then the connection reset: fast 50 % before the answer, cheap 50 % mid-body',
    { fast: { reset_rate: 0.5, reset_point: 'before_response' }, cheap: { reset_rate: 0.5, reset_point: 'mid_body' } });
  await burst(0.78, 0.83, 'processing intents', 'both lanes answer 50 % of new payment intents "processing", settling 1.5 s later',
    { processing_rate: 0.5, processing_ms: 1500 });
  await burst(0.88, 0.93, 'malformed 2xx', 'charged, then a 200 that is not JSON: fast 50 % garbage, cheap 50 % truncated',
    { fast: { malformed_rate: 0.5, malformed_body: 'garbage' }, cheap: { malformed_rate: 0.5, malformed_body: 'truncated' } });
}

// ------------------------------------------------------------------------- the end

/**
 * Every payment intent the simulator ever made (refunded ones included): id -> {lane,
 * order_id, key (the acquirer idempotency key), status, amount, refunded, created}.
 */
async function chargeList() {
  const out = {};
  for (const lane of lanes) {
    let after = null;
    for (let page = 0; page < 200; page++) {
      const q = `limit=100&expand[]=data.latest_charge${after ? `&starting_after=${after}` : ''}`;
      const res = await fetch(`${opt.sim}/lanes/${lane}/v1/payment_intents?${q}`, { headers: { authorization: 'Bearer sk_test_chaos' }, signal: AbortSignal.timeout(10_000) });
      const body = await res.json();
      for (const pi of body.data ?? []) {
        out[pi.id] = {
          lane, order_id: pi.metadata?.order_id ?? null, key: pi.metadata?.idempotency_key ?? null, status: pi.status,
          amount: pi.amount, currency: pi.currency, refunded: pi.latest_charge?.amount_refunded ?? 0, created: pi.created,
        };
      }
      if (!body.has_more || !body.data?.length) break;
      after = body.data[body.data.length - 1].id;
    }
  }
  return out;
}

/** Explains each order charged more than once: which acquirer keys on which lanes, and when. */
function diagnoseDoubleCharges(simStats, charges) {
  const perOrder = {};
  for (const [lane, st] of Object.entries(simStats.lanes ?? {})) {
    for (const [k, n] of Object.entries(st.by_idempotency_key ?? {})) {
      const m = /^(ord_[0-9a-f]+)_(online|queued)$/.exec(k);
      if (m) (perOrder[m[1]] ??= []).push(`${m[2]} on ${lane}${n > 1 ? ` ×${n}` : ''}`);
    }
  }
  const succeeded = {};
  for (const c of Object.values(charges)) if (c.order_id && c.status === 'succeeded') (succeeded[c.order_id] ??= []).push(c);
  const patterns = {};
  for (const [o, cs] of Object.entries(succeeded)) {
    if (cs.length < 2) continue;
    const first = Math.min(...cs.map((c) => c.created)) - T0 / 1000;
    const pattern = `${(perOrder[o] ?? []).sort().join(' + ')}`;
    const p = (patterns[pattern] ??= { n: 0, phases: {}, example: o });
    p.n += 1;
    const ph = faults.filter((f) => first >= f.start - 1 && first < (f.end ?? Infinity) + 3).map((f) => f.label).join(' + ') || 'steady';
    p.phases[ph] = (p.phases[ph] ?? 0) + 1;
  }
  for (const [pattern, p] of Object.entries(patterns)) {
    findings.push(`${p.n} orders charged more than once with acquirer keys ${pattern} (e.g. ${p.example}); first charge during: ${Object.entries(p.phases).map(([k, n]) => `${k} ${n}`).join(', ')}`);
  }
}

/** For orders still queued at the end: their payment intents at the acquirer, and the fault window each was made in. */
function diagnoseLeftQueued(evData, charges) {
  const byOrder = {};
  for (const [id, c] of Object.entries(charges)) if (c.order_id) (byOrder[c.order_id] ??= []).push({ id, ...c });
  const lines = [];
  const phases = {};
  for (const e of evData) {
    for (const r of e.exportRows.filter((x) => x.state === 'queued')) {
      const pis = byOrder[r.order_id] ?? [];
      for (const c of pis) {
        const t = c.created - T0 / 1000;
        const ph = faults.filter((f) => t >= f.start - 1 && t < (f.end ?? Infinity) + 1).map((f) => f.label).join(' + ') || 'steady';
        phases[ph] = (phases[ph] ?? 0) + 1;
      }
      if (lines.length < 8) lines.push(`${e.name} ${r.order_id}: ${pis.length ? pis.map((c) => `${c.id} ${c.status} on ${c.lane} (key ${c.key}, made at ${(c.created - T0 / 1000).toFixed(0)} s)`).join(', ') : 'no payment intent'}`);
    }
  }
  if (lines.length) findings.push(`orders still queued after recovery and their payment intents at the acquirer (made during: ${Object.entries(phases).map(([k, v]) => `${k} ${v}`).join(', ')}): ${lines.join('; ')}`);
}

/** Sums up the buyer intents charged more than once: by buyer style and by the fault phase of each extra charge. */
function diagnoseBuyerDoubles(data) {
  const att = attributeCharges(data);
  const styles = {};
  const phases = {};
  let n = 0;
  for (const { intent, charges } of att.byIntent.values()) {
    if (charges.length < 2) continue;
    n += 1;
    styles[intent.style] = (styles[intent.style] ?? 0) + 1;
    for (const c of charges.slice(1)) {
      const t = c.created - T0 / 1000;
      const ph = faults.filter((f) => t >= f.start - 1 && t < (f.end ?? Infinity) + 3).map((f) => f.label).join(' + ') || 'steady';
      phases[ph] = (phases[ph] ?? 0) + 1;
    }
  }
  const list = (o) => Object.entries(o).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ');
  if (n) findings.push(`${n} buyer intents charged more than once; by buyer style: ${list(styles)}; extra charges made during: ${list(phases)}`);
  const intentsByStyle = {};
  for (const it of data.intents) intentsByStyle[it.style] = (intentsByStyle[it.style] ?? 0) + 1;
  findings.push(`buyer intents by style: ${list(intentsByStyle)}`);
}

function scanFiles(dirs) {
  let filesScanned = 0;
  const leaks = [];
  const walk = (p) => {
    let st;
    try { st = fs.statSync(p); } catch { return; }
    if (st.isDirectory()) { for (const n of fs.readdirSync(p)) walk(path.join(p, n)); return; }
    filesScanned += 1;
    const text = fs.readFileSync(p).toString('latin1');
    for (const pan of TEST_PANS) if (text.includes(pan)) leaks.push({ pan, file: p });
    const generated = text.match(GENERATED_PATTERN);
    if (generated && !TEST_PANS.includes(generated[0])) leaks.push({ pan: generated[0], file: p });
  };
  for (const d of dirs) walk(d);
  return { filesScanned, leaks };
}

/** Every SQLite file under the local state directory (the Durable Objects' storage). */
function sqliteFiles(dir) {
  const out = [];
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (/\.sqlite(-wal)?$/.test(e.name)) out.push({ file: path.relative(dir, p), bytes: fs.statSync(p).size });
    }
  };
  try { walk(dir); } catch { /* no state yet */ }
  return out;
}

function panicLines(dir) {
  const out = [];
  for (const n of fs.readdirSync(dir)) {
    if (!n.startsWith('worker')) continue;
    for (const line of fs.readFileSync(path.join(dir, n), 'utf8').split('\n')) {
      if (PANIC_PATTERNS.some((p) => p.test(line))) out.push(`${n}: ${line.slice(0, 300)}`);
    }
  }
  return out;
}

async function finish(loadSeconds) {
  log('load over: healing the acquirer, forcing sync, waiting for forwarding');
  await setLanes({ ...HEALTHY, latency_ms: null });
  await admin('final', 'POST', '/v1/admin/routing/reset', { final: true });
  const summaries = new Map();
  const deadline = Date.now() + 90_000;
  for (;;) {
    let queued = 0;
    for (const ev of events) {
      const s = await api('final', 'POST', `/v1/admin/events/${ev.id}/sync`, { key: merchantKey, final: true });
      const q = await api('final', 'GET', `/v1/admin/events/${ev.id}`, { key: merchantKey, final: true });
      if (q.status === 200) summaries.set(ev.id, q.json.summary);
      queued += q.json?.summary?.queued_count ?? (s.status === 200 ? 0 : 1);
    }
    if (queued === 0 || Date.now() > deadline) break;
    await sleep(2000);
  }
  // A checkout cut off by the restart may have charged before its Worker died; reconciliation
  // refunds such a charge once no live checkout can own it: 30 s after its hold lapsed
  // (HOLD_MS, 120 s, in src/edge/events.rs; LOST_CHECKOUT_AFTER_MS in src/ledger/report.rs).
  // Reconcile only after that.
  const lastRestart = restartWindows.length ? restartWindows[restartWindows.length - 1].end : null;
  if (lastRestart !== null) {
    const wait = (lastRestart + 120 + 31) * 1000 - (Date.now() - T0);
    if (wait > 0) { log(`waiting ${Math.ceil(wait / 1000)} s so checkouts cut off by the restart can be swept`); await sleep(wait); }
  }
  const evData = [];
  for (const ev of events) {
    const rec = await api('final', 'POST', `/v1/admin/events/${ev.id}/reconcile`, { key: merchantKey, final: true });
    // The merchant's export carries each order's buyer e-mail (every policy here collects it).
    const ex = await api('final', 'GET', `/v1/admin/events/${ev.id}/export?format=ndjson`, { key: merchantKey, final: true });
    const exportRows = ex.status === 200 ? ex.text.split('\n').filter(Boolean).map((l) => JSON.parse(l)) : [];
    if (ex.status !== 200) findings.push(`the export of ${ev.name} answered ${ex.status}: ${ex.text.slice(0, 200)}`);
    evData.push({ id: ev.id, name: ev.name, summary: summaries.get(ev.id), reconcile: rec.json, exportRows });
  }
  // Read after reconciliation, so the refunds it made are in the figures; the list holds every
  // payment intent ever made, refunded or not.
  const simStats = await sim('GET', '/control/stats');
  const charges = await chargeList();
  const states = {};
  for (const e of evData) for (const r of e.exportRows) states[r.state] = (states[r.state] ?? 0) + 1;
  // 'lost': a checkout cut off after the acquirer charged, whose charge reconciliation refunded.
  const pending = evData.flatMap((e) => e.exportRows.filter((r) => !FINAL_STATES.has(r.state) && r.state !== 'abandoned' && r.state !== 'lost').map((r) => `${e.name} ${r.order_id} ${r.state}`));
  if (pending.length) findings.push(`${pending.length} orders in the ledgers are neither final, abandoned nor lost after recovery (none of them was answered 201): ${pending.slice(0, 6).join(', ')}`);

  diagnoseDoubleCharges(simStats, charges);
  diagnoseLeftQueued(evData, charges);
  const unexpectedNoAnswer = requests
    // a request in flight when the runtime stopped loses its answer then, whenever it started
    .filter((r) => r.status === 0 && !r.cut && !restartWindows.some((w) => r.t + r.ms / 1000 >= w.start - 0.5 && r.t <= w.end))
    // A 4 MiB upload is answered 413 from its Content-Length and the connection closed while
    // the client still sends, so the client may see a reset instead of the answer.
    .filter((r) => r.kind !== 'attack huge')
    .map((r) => `${r.kind} ${r.path} at ${r.t.toFixed(1)} s: ${r.err}`);
  const scan = scanFiles([opt.state, opt.logs]);
  const data = {
    events: evData, sim: simStats, accepted: [...accepted.values()], declined, requests,
    intents: intents.map(({ keys, keyStart, tokens, ...it }) => it),
    charges, panics: panicLines(opt.logs), leaks: scan.leaks, filesScanned: scan.filesScanned, replays, unexpectedNoAnswer,
  };
  const invariants = checkInvariants(data);
  diagnoseBuyerDoubles(data);
  invariants.push({
    name: 'hostile input refused with a 4xx that echoes no card number', ok: hostile.sent > 0 && hostile.unexpected.length === 0,
    figure: `${hostile.sent} hostile requests, ${hostile.unexpected.length} unexpected answers`, details: hostile.unexpected.slice(0, 20), more: 0,
  });
  invariants.push(offlineOnlyWhenUnreachable([...accepted.values()], faults));
  invariants.push(honestSuccessHolds(intents.filter((i) => !i.style.startsWith('attacker')), {
    baseline: [0, PRELUDE.baseline_s], attacked: [PRELUDE.baseline_s + 1, PRELUDE.baseline_s + PRELUDE.attacked_s], events: ['hot', 'market-es', 'night-fr'], bound: 0.1,
  }));
  invariants.push(stateBounded(evData, {
    // Sold orders are bounded by the stock; unsold ones by the ledger's cap (MAX_UNSOLD_ORDERS).
    orders: (e) => (e.summary?.skus ?? []).reduce((n, k) => n + k.sold, 0) + 5000,
    queue: 5000,
    dbBytes: 64 * 1024 * 1024,
  }, sqliteFiles(opt.state)));
  invariants.push(receiptsGuarded(receiptGuesses));
  for (const [kind, st] of Object.entries(attacks)) findings.push(`attacker ${kind}: ${Object.entries(st).sort((x, y) => y[1] - x[1]).map(([k, n]) => `${k} × ${n}`).join(', ')}`);
  if (shredding.checked) invariants.push({
    name: 'a revoked data key shreds its tokens', ok: /^410 key_revoked$/.test(shredding.answer),
    figure: `a checkout with a token of the revoked key answered ${shredding.answer}`, details: [], more: 0,
  });
  const tally = tallyRequests(requests, faults);
  const sellout = evData.find((e) => e.name === 'sellout')?.summary?.skus?.[0];
  const run = { started: new Date(T0).toISOString(), seconds: loadSeconds, buyers: events.reduce((n, e) => n + e.buyers, 0) + 2, events: events.length, seed: runSeed };
  if (sellout) findings.unshift(`sell-out event: ${sellout.sold} of ${sellout.stock} sold${sellout.sold === sellout.stock ? ' (sold out)' : ''}; ledger order states over all events: ${Object.entries(states).map(([s, n]) => `${s} ${n}`).join(', ')}`);
  if (budgetExhausted) findings.push(`the request budget (${opt.maxRequests}) ended the load early`);
  fs.mkdirSync(opt.out, { recursive: true });
  const svg = renderSvg({ requests, faults, seconds: Math.ceil(loadSeconds) + 5, bucket: loadSeconds > 240 ? 5 : 1 });
  fs.writeFileSync(path.join(opt.out, 'chart.svg'), svg);
  fs.writeFileSync(path.join(opt.out, 'report.md'), renderReport({ run, invariants, tally, faults, outcomes, findings }));
  fs.writeFileSync(path.join(opt.out, 'results.json'), JSON.stringify({ run, invariants, intents: data.intents, charges, sim: simStats, byKind: tally.byKind, latency: tally.latency, faults, outcomes, findings, events: evData.map((e) => ({ id: e.id, name: e.name, summary: e.summary, reconcile: e.reconcile })) }, null, 2));
  process.stdout.write(`\npoptill chaos: ${tally.total} requests in ${loadSeconds.toFixed(0)} s of load, seed ${runSeed}\n`);
  for (const i of invariants) {
    process.stdout.write(`  ${i.ok ? 'ok  ' : 'FAIL'}  ${i.name}: ${i.figure}\n${i.ok ? '' : i.details.map((d) => `          ${d}\n`).join('')}`);
    for (const n of (i.notes ?? []).slice(0, 10)) process.stdout.write(`          note: ${n}\n`);
  }
  for (const f of findings) process.stdout.write(`  note  ${f}\n`);
  const checkouts = Object.entries(tally.latency).map(([ph, v]) => `${ph} p50 ${v.checkout.p50?.toFixed(0)} p95 ${v.checkout.p95?.toFixed(0)} p99 ${v.checkout.p99?.toFixed(0)} ms (n ${v.checkout.n})`);
  process.stdout.write(`  checkout latency: ${checkouts.join('; ')}\n  report: ${path.join(opt.out, 'report.md')}\n`);
  return invariants.every((i) => i.ok);
}

async function main() {
  await setup();
  const D = opt.seconds;
  const loops = [];
  for (const ev of events) for (let i = 0; i < ev.buyers; i++) loops.push(buyerLoop(ev));
  loops.push(mischiefLoop(), opsLoop(), ...attackerLoops());
  const timer = setTimeout(() => { stopping = true; }, (D + PRELUDE.baseline_s + PRELUDE.attacked_s) * 1000);
  let scheduleError = null;
  await schedule(D).catch((e) => { scheduleError = e; stopping = true; });
  await Promise.all(loops);
  clearTimeout(timer);
  const loadSeconds = elapsed();
  if (scheduleError) { log(`the fault schedule failed: ${scheduleError.stack ?? scheduleError}`); findings.push(`the fault schedule failed: ${scheduleError.message}`); }
  const ok = await finish(loadSeconds);
  process.exit(ok && !scheduleError ? 0 : 1);
}

main().catch((e) => { process.stderr.write(`chaos: ${e.stack ?? e}\n`); process.exit(2); });
