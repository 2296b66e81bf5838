// Shared helpers for the end-to-end tests: they run against the Worker in workerd that
// scripts/test started (POPTILL_URL) and the acquirer simulator (SIM_URL).
import assert from 'node:assert/strict';

export const BASE = process.env.POPTILL_URL;
export const SIM = process.env.SIM_URL;
export const ADMIN_KEY = process.env.ADMIN_KEY;
if (!BASE) throw new Error('POPTILL_URL is not set: run the end-to-end tests through scripts/test');

export async function api(method, path, { body, key, headers = {}, raw = false } = {}) {
  const h = { ...headers };
  if (key) h.authorization = `Bearer ${key}`;
  let payload;
  if (body !== undefined) {
    payload = typeof body === 'string' ? body : JSON.stringify(body);
    h['content-type'] ??= 'application/json';
  }
  const res = await fetch(BASE + path, { method, headers: h, body: payload });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  const answer = { status: res.status, headers: res.headers, text, json };
  await conforms(method, path, answer);
  return answer;
}

// Every answer an end-to-end test gets is checked against the served OpenAPI document: its
// status must be one the operation describes, and an error's code one the document lists
// for that operation and status. So the whole suite keeps the document honest about what
// the Worker really answers (the document is generated from the Rust types; the error
// codes per operation are written in src/openapi/operations.rs).
let operations;
async function loadOperations() {
  const res = await fetch(BASE + '/v1/openapi.json');
  const doc = await res.json();
  const ops = [];
  for (const [template, item] of Object.entries(doc.paths)) {
    const pattern = new RegExp('^' + template.replace(/[.]/g, '\\.').replace(/\{[^}]+\}/g, '[^/]+') + '$');
    for (const [method, op] of Object.entries(item)) ops.push({ method: method.toUpperCase(), template, pattern, op });
  }
  return ops;
}
async function conforms(method, path, answer) {
  operations ??= await loadOperations();
  const bare = path.split('?')[0];
  const m = method.toUpperCase() === 'HEAD' ? 'GET' : method.toUpperCase();
  const found = operations.filter((o) => o.method === m && o.pattern.test(bare));
  // The most specific template wins (`/v1/checkout.js` over a parameter).
  found.sort((a, b) => (a.template.match(/\{/g) || []).length - (b.template.match(/\{/g) || []).length);
  const hit = found[0];
  if (!hit) return;
  const where = `${method} ${hit.template} answered ${answer.status}`;
  const described = hit.op.responses[String(answer.status)] ?? hit.op.responses[`${String(answer.status)[0]}XX`];
  assert.ok(described, `${where}, which the OpenAPI document does not describe: ${answer.text.slice(0, 200)}`);
  const code = answer.json?.error?.code;
  // The error schema, alone or beside a payment's answer (`anyOf`).
  const schema = described.content?.['application/json']?.schema;
  const error = schema?.anyOf?.find((s) => s.allOf) ?? schema;
  const codes = error?.properties?.error?.properties?.code?.enum;
  if (answer.status >= 400 && code && codes && !answer.json?.status) {
    assert.ok(codes.includes(code), `${where} ${code}, which the OpenAPI document does not list (it lists ${codes.join(', ')})`);
  }
}

export const admin = (method, path, opts = {}) => api(method, path, { ...opts, key: ADMIN_KEY });

export function assertError(res, status, code) {
  assert.equal(res.status, status, `expected ${status} ${code}, got ${res.status}: ${res.text}`);
  assert.equal(res.json?.error?.code, code, res.text);
  assert.ok(res.json.error.message.length > 10, 'error has a human sentence');
}

export async function sim(method, path, body) {
  const res = await fetch(SIM + path, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  return res.json();
}

export const laneControl = (lane, settings) => sim('POST', `/control/lanes/${lane}`, settings);
export const simStats = () => sim('GET', '/control/stats');
export async function healLanes() {
  for (const lane of ['fast', 'cheap']) await laneControl(lane, { partition: 'none', error_rate: 0, latency_ms: { fixed: 0 }, reset_rate: 0, processing_rate: 0, malformed_rate: 0 });
  // The router remembers the faults earlier tests injected (open breakers): start afresh.
  const r = await admin('POST', '/v1/admin/routing/reset');
  assert.equal(r.status, 200, r.text);
}

/** Takes both lanes down (connections dropped) and makes checkouts on a warm-up event until
 * this isolate's router knows it (breakers open: `no_healthy_lane`). The warm-up payments
 * have an unknown outcome at first and are completed on their lane later. */
export async function lanesKnownDown() {
  await laneControl('fast', { partition: 'refuse' });
  await laneControl('cheap', { partition: 'refuse' });
  const warm = await createEvent({ offline: { per_transaction_max: 2000, aggregate_max: 100_000, per_card_max_count: 50, per_card_window_ms: 3_600_000 } });
  for (let i = 0; i < 16; i++) {
    const r = await checkout(warm, '5555555555554444');
    if (/no_healthy_lane/.test(r.headers.get('x-poptill-routing') ?? '')) return;
  }
  throw new Error('the router never planned around the dropped lanes');
}

let merchantCache;
export async function merchant() {
  if (!merchantCache) {
    const r = await admin('POST', '/v1/admin/merchants', { body: { name: 'E2E Night Market' } });
    assert.equal(r.status, 201, r.text);
    merchantCache = r.json;
  }
  return merchantCache;
}

/// Creates an event with the given overrides; returns its id.
export async function createEvent(overrides = {}) {
  const m = await merchant();
  const now = Date.now();
  const body = {
    title: 'Backyard Concert',
    jurisdiction: 'DE',
    currency: 'EUR',
    start_ms: now - 3_600_000,
    end_ms: now + 86_400_000,
    skus: [
      { id: 'ticket', name: 'Entry', category: 'ticket', price: 1500, stock: 50 },
      { id: 'shirt', name: 'T-shirt', category: 'merchandise', price: 2500, stock: 5 },
    ],
    allowed_origins: [],
    ...overrides,
  };
  const r = await api('POST', '/v1/admin/events', { body, key: m.api_key });
  assert.equal(r.status, 201, r.text);
  return r.json.event_id;
}

export async function tokenFor(eventId, number, extra = {}) {
  const r = await api('POST', '/v1/tokens', { body: { event_id: eventId, card: { number, exp_month: 12, exp_year: 2034, cvc: number.length === 15 ? '1234' : '123', ...extra } } });
  assert.equal(r.status, 201, r.text);
  return r.json;
}

export async function checkout(eventId, number, { items = [{ sku: 'ticket', quantity: 1 }], key = crypto.randomUUID(), buyer = { email: 'ana@example.org', age_confirmed: true, consent_accepted: true }, mode } = {}) {
  const t = await tokenFor(eventId, number);
  const body = { items, token: t.token, cvc_token: t.cvc_token, buyer };
  if (mode) body.mode = mode;
  return api('POST', `/v1/events/${eventId}/checkout`, { body, headers: { 'idempotency-key': key } });
}
