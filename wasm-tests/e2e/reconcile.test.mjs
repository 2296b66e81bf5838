// End-to-end: the event's Durable Object reconciles with the acquirer by itself (here at
// the event's end), refunds a lost checkout's charge without the operator route, and keeps
// a signed end-of-event report that verifies like a receipt.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { admin, api, assertError, createEvent, checkout, merchant, healLanes, SIM, simStats } from './helpers.mjs';

beforeEach(healLanes);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const lanes = (s) => s.lanes ?? s;

test('at the event end the object reconciles by itself, refunds a lost charge once, and signs a report that adds up', async () => {
  const m = await merchant();
  const start = Date.now() - 3_600_000;
  const end = Date.now() + 8_000;
  const id = await createEvent({ start_ms: start, end_ms: end });
  const paid = await checkout(id, '4242424242424242');
  assert.equal(paid.status, 201, paid.text);
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
  const before = lanes(await simStats()).fast.refunds;
  const path = `/v1/admin/events/${id}/report`;
  assertError(await api('GET', path, { key: m.api_key }), 404, 'report_not_ready');
  assertError(await api('GET', path), 401, 'unauthorized');

  // Nobody calls POST .../reconcile: the object's alarm at end_ms does it, refunds the lost
  // charge, and redoes the report once that refund settled.
  let r;
  for (let i = 0; i < 60; i++) {
    await sleep(1000);
    r = await api('GET', path, { key: m.api_key });
    if (r.status === 200 && r.json.report.end_of_event) break;
  }
  assert.equal(r?.status, 200, r?.text);
  const rep = r.json.report;
  assert.equal(rep.end_of_event, true, r.text);
  assert.ok(Date.now() >= end, 'made after the end');
  assert.equal(lanes(await simStats()).fast.refunds, before + 1, 'the lost charge is refunded once');
  const order = await admin('GET', `/v1/admin/events/${id}/export?format=ndjson`);
  const states = Object.fromEntries(order.text.trim().split('\n').map((l) => JSON.parse(l)).map((o) => [o.order_id, o.state]));
  assert.equal(states[d.json.order_id], 'lost');
  assert.equal(states[paid.json.order_id], 'approved');

  assert.equal(rep.event_id, id);
  assert.equal(rep.clean, true, r.text);
  assert.equal(rep.truncated, false);
  assert.ok(rep.covered.from_ms <= start && rep.covered.to_ms >= end, JSON.stringify(rep.covered));
  assert.deepEqual(rep.discrepancies.refunded_unpaid, [pi.id]);
  assert.deepEqual(rep.discrepancies.missing_at_edge, []);
  assert.deepEqual(rep.discrepancies.missing_at_acquirer, []);
  assert.equal(rep.matched, 1);
  const t = rep.totals;
  assert.deepEqual(
    [t.orders, t.paid_orders, t.sales, t.refunded, t.net],
    [2, 1, 1500, 0, 1500],
  );
  assert.deepEqual(
    [t.acquirer_charges, t.acquirer_charged, t.acquirer_refunded, t.lost_charges, t.lost_charged, t.lost_refunded],
    [2, 3000, 1500, 1, 1500, 1500],
  );
  const sum = (k) => rep.lanes.reduce((s, l) => s + l[k], 0);
  assert.deepEqual([sum('charges'), sum('charged'), sum('refunded')], [2, 3000, 1500]);
  assert.equal(rep.lanes.find((l) => l.lane === 'fast').refunded, 1500);

  // The merchant checks it like a receipt; one changed byte is refused.
  const ok = await api('POST', '/v1/receipts/verify', { body: r.text });
  assert.equal(ok.status, 200, ok.text);
  assert.equal(ok.json.kind, 'report');
  assert.equal(ok.json.event_id, id);
  const tampered = r.text.replace('"lost_refunded":1500', '"lost_refunded":1501');
  assert.notEqual(tampered, r.text);
  assertError(await api('POST', '/v1/receipts/verify', { body: tampered }), 422, 'report_tampered');
  // The operator reads the same report.
  const op = await admin('GET', path);
  assert.equal(op.status, 200);
  assert.equal(op.json.signature.mac, r.json.signature.mac);
});
