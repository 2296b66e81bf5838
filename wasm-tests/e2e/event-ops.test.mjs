// End-to-end: what operators do with an event's Durable Object: refunds under the policy,
// reconciliation against the acquirer, CRM export, and the waiting room.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { api, assertError, createEvent, checkout, merchant, healLanes, laneControl, SIM, simStats } from './helpers.mjs';

beforeEach(healLanes);

const shirt = [{ sku: 'shirt', quantity: 1 }];

test('refunds follow the policy: merchandise partly and fully, tickets only as goodwill', async () => {
  const id = await createEvent();
  const m = await merchant();
  const paid = await checkout(id, '4242424242424242', { items: shirt });
  assert.equal(paid.status, 201, paid.text);
  const refund = (body, key = crypto.randomUUID()) =>
    api('POST', `/v1/admin/events/${id}/refunds`, { key: m.api_key, body, headers: { 'idempotency-key': key } });
  let r = await refund({ order_id: paid.json.order_id, amount: 1000 });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.refund.amount, 1000);
  let receipt = await api('GET', paid.json.receipt_url);
  assert.equal(receipt.json.receipt.status, 'partially_refunded', receipt.text);
  assert.equal(receipt.json.receipt.refunded_amount, 1000);
  assert.equal((await api('POST', '/v1/receipts/verify', { body: receipt.text })).status, 200);
  assertError(await refund({ order_id: paid.json.order_id, amount: 5000 }), 422, 'refund_exceeds_captured');
  r = await refund({ order_id: paid.json.order_id });
  assert.equal(r.status, 201, r.text);
  receipt = await api('GET', paid.json.receipt_url);
  assert.equal(receipt.json.receipt.status, 'refunded');

  const ticket = await checkout(id, '4242424242424242');
  assert.equal(ticket.status, 201, ticket.text);
  const refused = await refund({ order_id: ticket.json.order_id });
  assert.equal(refused.status >= 400 && refused.status < 500, true, refused.text);
  assert.equal(refused.json.error.code, 'refund_not_allowed', 'EU Art. 16(l): dated leisure tickets have no withdrawal right');
  r = await refund({ order_id: ticket.json.order_id, goodwill: true });
  assert.equal(r.status, 201, 'the operator may still refund a cancelled night: ' + r.text);
});

test('reconciliation matches the ledger with the acquirer; export lists every order', async () => {
  const id = await createEvent();
  const m = await merchant();
  const a = await checkout(id, '4242424242424242');
  const b = await checkout(id, '5555555555554444', { items: shirt });
  const d = await checkout(id, '4000000000000002');
  assert.equal(a.status, 201); assert.equal(b.status, 201); assert.equal(d.status, 402);
  const r = await api('POST', `/v1/admin/events/${id}/reconcile`, { key: m.api_key });
  assert.equal(r.status, 200, r.text);
  const rep = r.json.report;
  assert.deepEqual(rep.matched.map(([o]) => o).sort(), [a.json.order_id, b.json.order_id].sort());
  assert.deepEqual(rep.missing_at_acquirer, []);
  assert.deepEqual(rep.missing_at_edge, []);
  assert.deepEqual(rep.amount_mismatch, []);

  const csv = await api('GET', `/v1/admin/events/${id}/export?format=csv`, { key: m.api_key });
  assert.equal(csv.status, 200, csv.text);
  assert.match(csv.headers.get('content-type'), /text\/csv/);
  const rows = csv.text.trim().split('\n');
  assert.ok(rows[0].includes('order_id'), rows[0]);
  for (const o of [a, b, d]) assert.ok(csv.text.includes(o.json.order_id), 'every order exported');
  assert.ok(csv.text.includes('ana@example.org'), 'DE collects e-mail for e-receipts, so the CRM export has it');
  const nd = await api('GET', `/v1/admin/events/${id}/export?format=ndjson`, { key: m.api_key });
  const lines = nd.text.trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(lines.length, 3);
  assert.ok(!nd.text.includes('4242424242424242') && !csv.text.includes('5555555555554444'));
  assertError(await api('GET', `/v1/admin/events/${id}/export?format=xml`, { key: m.api_key }), 400, 'invalid_format');
});

test('the waiting room gives tickets and positions; a required queue gates checkout', async () => {
  const now = Date.now();
  const id = await createEvent({
    queue: { required: true, mode: 'fifo', sale_start_ms: now - 1000, capacity: 100, admission_rate_per_sec: 1, place_ttl_ms: 60_000, admitted_ttl_ms: 600_000 },
  });
  const first = await api('POST', `/v1/events/${id}/queue`);
  assert.equal(first.status, 200, first.text);
  assert.match(first.json.ticket, /^q_[0-9a-f]{32}$/);
  const others = [];
  for (let i = 0; i < 3; i++) others.push((await api('POST', `/v1/events/${id}/queue`)).json);
  const last = others[others.length - 1];
  assert.ok(last.admitted === false && last.position >= 2, JSON.stringify(last));
  const poll = await api('GET', `/v1/events/${id}/queue/${first.json.ticket}`);
  assert.equal(poll.status, 200);
  assert.equal(poll.json.admitted, true, 'the first in line is admitted at 1 per second: ' + poll.text);
  assertError(await checkout(id, '4242424242424242'), 403, 'not_admitted');
  assertError(await api('GET', `/v1/events/${id}/queue/deadbeef`), 404, 'ticket_not_found');
});

test('a charge whose checkout was lost is refunded by reconciliation, once, and the books close', async () => {
  const id = await createEvent();
  const m = await merchant();
  const d = await checkout(id, '4000000000000002');
  assert.equal(d.status, 402, d.text);
  // As if a Worker had charged for this (unpaid) order and died before telling the ledger.
  const form = new URLSearchParams({
    amount: '1500', currency: 'eur', confirm: 'true', 'payment_method_types[]': 'card',
    'payment_method_data[type]': 'card', 'payment_method_data[card][number]': '4242424242424242',
    'payment_method_data[card][exp_month]': '12', 'payment_method_data[card][exp_year]': '2034',
    'metadata[order_id]': d.json.order_id, 'metadata[event_id]': id,
  });
  const res = await fetch(`${SIM}/lanes/fast/v1/payment_intents`, {
    method: 'POST', body: form,
    headers: { authorization: 'Bearer sk_test_lost', 'content-type': 'application/x-www-form-urlencoded' },
  });
  const pi = await res.json();
  assert.equal(pi.status, 'succeeded', JSON.stringify(pi));
  const before = await simStats();
  const r = await api('POST', `/v1/admin/events/${id}/reconcile`, { key: m.api_key });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.lost_checkouts_refunded.map((x) => x.order_id), [d.json.order_id]);
  assert.deepEqual(r.json.report.missing_at_edge, []);
  assert.deepEqual(r.json.report.refunded_unpaid, [pi.id]);
  const lanes = (s) => s.lanes ?? s;
  assert.equal(lanes(await simStats()).fast.refunds, lanes(before).fast.refunds + 1);
  // Reconciling again refunds nothing more and stays clean.
  const again = await api('POST', `/v1/admin/events/${id}/reconcile`, { key: m.api_key });
  assert.deepEqual(again.json.lost_checkouts_refunded, []);
  assert.deepEqual(again.json.report.missing_at_edge, []);
  assert.equal(lanes(await simStats()).fast.refunds, lanes(before).fast.refunds + 1);
});

test('a refund goes to the lane that charged the order: it waits while that lane is down, never uses another', async () => {
  const id = await createEvent();
  const m = await merchant();
  const paid = await checkout(id, '4242424242424242', { items: shirt });
  assert.equal(paid.status, 201, paid.text);
  const laneStats = (s) => s.lanes ?? s;
  const charged = Object.entries(laneStats(await simStats())).filter(([, l]) => (l.by_order_id ?? {})[paid.json.order_id]).map(([n]) => n);
  assert.equal(charged.length, 1, 'charged on one lane: ' + charged);
  const [own] = charged;
  const other = own === 'fast' ? 'cheap' : 'fast';
  // The order's lane refuses connections; the other lane is healthy (another account,
  // where this charge does not exist).
  await laneControl(own, { partition: 'refuse' });
  const before = laneStats(await simStats());
  const r = await api('POST', `/v1/admin/events/${id}/refunds`, { key: m.api_key, body: { order_id: paid.json.order_id }, headers: { 'idempotency-key': crypto.randomUUID() } });
  assert.ok(r.status === 201 || r.status === 202, r.text);
  let now = laneStats(await simStats());
  assert.equal(now[other].refunds, before[other].refunds, 'never refunded on another lane');
  assert.equal(now[own].refunds, before[own].refunds, 'its own lane is down: nothing refunded yet');
  await healLanes();
  for (let i = 0; i < 2; i++) assert.equal((await api('POST', `/v1/admin/events/${id}/sync`, { key: m.api_key })).status, 200);
  now = laneStats(await simStats());
  assert.equal(now[own].refunds, before[own].refunds + 1, 'refunded once, on its own lane: ' + JSON.stringify(now[own]));
  assert.equal(now[other].refunds, before[other].refunds, 'never on another lane');
  const receipt = await api('GET', paid.json.receipt_url);
  assert.equal(receipt.json.receipt.status, 'refunded', receipt.text);
});
