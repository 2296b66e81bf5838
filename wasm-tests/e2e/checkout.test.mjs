// End-to-end: merchants, events, quotes and the checkout against workerd and the acquirer
// simulator: approved, declined, failover, queued and forwarded exactly once, budget,
// idempotency, receipts.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { api, admin, assertError, createEvent, checkout, merchant, laneControl, simStats, healLanes, tokenFor } from './helpers.mjs';

beforeEach(healLanes);

test('a merchant key manages only its own events', async () => {
  const id = await createEvent();
  const m = await merchant();
  let r = await api('GET', `/v1/admin/events/${id}`, { key: m.api_key });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.config.title, 'Backyard Concert');
  const other = await admin('POST', '/v1/admin/merchants', { body: { name: 'Other Stall' } });
  r = await api('GET', `/v1/admin/events/${id}`, { key: other.json.api_key });
  assertError(r, 404, 'not_found');
  assertError(await api('GET', `/v1/admin/events/${id}`, { key: 'mk_forged' }), 401, 'unauthorized');
  assertError(await api('POST', '/v1/admin/merchants', { body: { name: 'x' }, key: m.api_key }), 401, 'unauthorized');
});

test('event creation refuses an offline budget above the policy and bad input', async () => {
  const m = await merchant();
  const now = Date.now();
  const base = { title: 'x', jurisdiction: 'DE', currency: 'EUR', start_ms: now, end_ms: now + 1000, skus: [{ id: 'a', name: 'A', category: 'ticket', price: 100, stock: 1 }] };
  let r = await api('POST', '/v1/admin/events', { key: m.api_key, body: { ...base, offline: { per_transaction_max: 10_000_000, aggregate_max: 10_000_000, per_card_max_count: 1, per_card_window_ms: 1000 } } });
  assertError(r, 422, 'offline_budget_over_policy');
  r = await api('POST', '/v1/admin/events', { key: m.api_key, body: { ...base, currency: 'XXX' } });
  assertError(r, 422, 'invalid_currency');
  r = await api('POST', '/v1/admin/events', { key: m.api_key, body: { ...base, skus: 'nope' } });
  assertError(r, 400, 'invalid_body');
});

test('quote applies the policy: German VAT inclusive, ticket 7 %, merchandise 19 %', async () => {
  const id = await createEvent();
  const r = await api('POST', `/v1/events/${id}/quote`, { body: { items: [{ sku: 'ticket', quantity: 2 }, { sku: 'shirt', quantity: 1 }] } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.total, 2 * 1500 + 2500);
  const ticket = r.json.lines.find((l) => l.sku === 'ticket');
  const shirt = r.json.lines.find((l) => l.sku === 'shirt');
  assert.equal(ticket.rate_ppm, 70000);
  assert.equal(shirt.rate_ppm, 190000);
  assert.equal(ticket.tax, Math.round(3000 - 3000 / 1.07));
  assert.equal(shirt.tax, Math.round(2500 - 2500 / 1.19));
  assert.equal(r.json.tax_total, ticket.tax + shirt.tax);
  assert.ok(r.json.policy_hash.length === 64);
  assertError(await api('POST', `/v1/events/${id}/quote`, { body: { items: [{ sku: 'nope', quantity: 1 }] } }), 422, 'unknown_sku');
  assertError(await api('POST', '/v1/events/evt_missing/quote', { body: { items: [{ sku: 'ticket', quantity: 1 }] } }), 404, 'not_found');
});

test('approved checkout: signed receipt that verifies; tampering is caught', async () => {
  const id = await createEvent();
  const before = await simStats();
  const r = await checkout(id, '4242424242424242');
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.status, 'approved');
  assert.equal(r.json.last4, '4242');
  assert.ok(r.headers.get('x-poptill-routing'), 'the routing decision is explained');
  assert.ok(!r.text.includes('4242424242424242'));
  const receipt = await api('GET', r.json.receipt_url);
  assert.equal(receipt.status, 200, receipt.text);
  assert.equal(receipt.json.receipt.status, 'approved');
  assert.equal(receipt.json.receipt.card.last4, '4242');
  assert.equal(receipt.json.receipt.pop_colo, r.headers.get('x-poptill-colo'));
  assert.ok(receipt.json.receipt.policy_hash.length === 64);
  let v = await api('POST', '/v1/receipts/verify', { body: receipt.text });
  assert.equal(v.status, 200, v.text);
  assert.equal(v.json.valid, true);
  const tampered = JSON.parse(receipt.text);
  tampered.receipt.totals.total -= 100;
  assertError(await api('POST', '/v1/receipts/verify', { body: tampered }), 400, 'receipt_tampered');
  const html = await api('GET', r.json.receipt_url, { headers: { accept: 'text/html' } });
  assert.match(html.headers.get('content-type'), /text\/html/);
  assert.match(html.text, /4242/);
  const after = await simStats();
  const charged = Object.values(after.lanes ?? after).reduce((n, l) => n + (l.charges_succeeded ?? 0), 0)
    - Object.values(before.lanes ?? before).reduce((n, l) => n + (l.charges_succeeded ?? 0), 0);
  assert.equal(charged, 1, 'exactly one charge at the acquirer');
});

test('declines: each declining test card gives its reason and releases the stock', async () => {
  const id = await createEvent({ skus: [{ id: 'ticket', name: 'Entry', category: 'ticket', price: 1500, stock: 1 }] });
  for (const [card, code] of [['4000000000000002', 'card_declined'], ['4000000000009995', 'insufficient_funds'], ['4000000000000069', 'expired_card']]) {
    const r = await checkout(id, card);
    assert.equal(r.status, 402, r.text);
    assert.equal(r.json.status, 'declined');
    assert.equal(r.json.decline.code, code);
    assert.ok(r.json.decline.message.length > 10);
  }
  const ok = await checkout(id, '4242424242424242');
  assert.equal(ok.status, 201, 'the single ticket was released after each decline: ' + ok.text);
  const sold = await checkout(id, '5555555555554444');
  assertError(sold, 409, 'out_of_stock');
});

test('idempotency: same key and body replays; another body is 422', async () => {
  const id = await createEvent();
  const t = await tokenFor(id, '4242424242424242');
  const body = { items: [{ sku: 'ticket', quantity: 1 }], token: t.token, buyer: { email: 'a@example.org', consent_accepted: true } };
  const key = crypto.randomUUID();
  const a = await api('POST', `/v1/events/${id}/checkout`, { body, headers: { 'idempotency-key': key } });
  const b = await api('POST', `/v1/events/${id}/checkout`, { body, headers: { 'idempotency-key': key } });
  assert.equal(a.status, 201, a.text);
  assert.equal(b.status, 201);
  assert.equal(b.json.order_id, a.json.order_id);
  assert.equal(b.headers.get('idempotent-replayed'), 'true');
  const c = await api('POST', `/v1/events/${id}/checkout`, { body: { ...body, items: [{ sku: 'ticket', quantity: 2 }] }, headers: { 'idempotency-key': key } });
  assert.equal(c.status, 422, c.text);
});

test('a slow lane fails over to the next lane', async () => {
  const id = await createEvent();
  await laneControl('cheap', { latency_ms: { fixed: 6000 } });
  await laneControl('fast', { latency_ms: { fixed: 6000 } });
  // Make one lane hang and the other healthy: whichever is tried first, the payment ends approved.
  await laneControl('cheap', { partition: 'hang' });
  await laneControl('fast', { latency_ms: { fixed: 0 } });
  const r = await checkout(id, '4242424242424242');
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.status, 'approved');
  assert.match(r.headers.get('x-poptill-routing'), /approved on fast/);
});

test('partitioned acquirer: queued with a provisional receipt, forwarded exactly once after recovery', async () => {
  const id = await createEvent();
  await laneControl('fast', { partition: 'refuse' });
  await laneControl('cheap', { partition: 'refuse' });
  const r = await checkout(id, '4242424242424242');
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.status, 'queued');
  assert.match(r.json.message, /charged automatically/);
  let receipt = await api('GET', r.json.receipt_url);
  assert.equal(receipt.json.receipt.status, 'queued');
  assert.equal((await api('POST', '/v1/receipts/verify', { body: receipt.text })).status, 200);
  const m = await merchant();
  let ev = await api('GET', `/v1/admin/events/${id}`, { key: m.api_key });
  assert.equal(ev.json.summary.queued_count, 1);
  await healLanes();
  const before = await simStats();
  const s1 = await api('POST', `/v1/admin/events/${id}/sync`, { key: m.api_key });
  assert.equal(s1.status, 200, s1.text);
  const s2 = await api('POST', `/v1/admin/events/${id}/sync`, { key: m.api_key });
  assert.equal(s2.status, 200);
  ev = await api('GET', `/v1/admin/events/${id}`, { key: m.api_key });
  assert.equal(ev.json.summary.queued_count, 0, JSON.stringify(ev.json.summary));
  const after = await simStats();
  const key = `${r.json.order_id}_queued`;
  const charges = Object.values(after.lanes ?? after).reduce((n, l) => n + ((l.by_idempotency_key ?? {})[key] ?? 0), 0);
  assert.equal(charges, 1, 'forwarded exactly once: ' + JSON.stringify(before) + JSON.stringify(after));
  receipt = await api('GET', r.json.receipt_url);
  assert.equal(receipt.json.receipt.status, 'forwarded');
  assert.equal((await api('POST', '/v1/receipts/verify', { body: receipt.text })).status, 200);
});

test('offline budget exhausted: refused clearly, nothing queued', async () => {
  const id = await createEvent({ offline: { per_transaction_max: 2000, aggregate_max: 2000, per_card_max_count: 5, per_card_window_ms: 3_600_000 } });
  await laneControl('fast', { partition: 'refuse' });
  await laneControl('cheap', { partition: 'refuse' });
  const a = await checkout(id, '4242424242424242');
  assert.equal(a.json.status, 'queued', a.text);
  const b = await checkout(id, '5555555555554444');
  assertError(b, 402, 'offline_budget_exhausted');
  assert.equal(b.json.error.retryable, true);
  const c = await checkout(id, '4242424242424242', { mode: 'require_online' });
  assertError(c, 402, 'acquirer_unavailable');
  assert.equal(c.json.error.retryable, true);
  assert.equal(c.headers.get('retry-after'), '2');
});

test('policy prompts are enforced at checkout', async () => {
  const id = await createEvent();
  const quote = await api('POST', `/v1/events/${id}/quote`, { body: { items: [{ sku: 'ticket', quantity: 1 }] } });
  assert.ok(Object.keys(quote.json.prompts.consent).length > 0, 'DE asks for consent');
  assertError(await checkout(id, '4242424242424242', { buyer: {} }), 422, 'consent_required');
  const ok = await checkout(id, '4242424242424242', { buyer: { consent_accepted: true, email: 'b@example.org' } });
  assert.equal(ok.status, 201, ok.text);
});
