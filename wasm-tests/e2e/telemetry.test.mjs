// Business telemetry end to end: checkouts (approved, declined, queued behind a partitioned
// acquirer, forwarded after recovery) show up in GET /v1/admin/events/{id}/metrics with the
// right funnel, latency, queue, decline and cost figures; the route has the admin routes'
// access rules; and the Worker's log lines for a checkout are JSON objects carrying the
// response's X-Request-Id and no card number.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { BASE, api, admin, createEvent, checkout, tokenFor, merchant, laneControl, healLanes, assertError } from './helpers.mjs';

after(async () => { await healLanes(); });

const metrics = (id, key) => api('GET', `/v1/admin/events/${id}/metrics`, { key });

test('metrics count the funnel, latency, queue, declines and cost of real checkouts', async () => {
  await healLanes();
  const id = await createEvent();
  const m = await merchant();
  const empty = await metrics(id, m.api_key);
  assert.equal(empty.status, 200, empty.text);
  assert.equal(empty.json.funnel.checkout_started, 0);
  assert.equal(empty.json.funnel.conversion_rate, null);

  for (let i = 0; i < 2; i++) {
    const q = await api('POST', `/v1/events/${id}/quote`, { body: { items: [{ sku: 'ticket', quantity: 1 }] } });
    assert.equal(q.status, 200, q.text);
  }
  const ok = await checkout(id, '4242424242424242');
  assert.equal(ok.status, 201, ok.text);
  assert.equal(ok.json.status, 'approved');
  const no = await checkout(id, '4000000000000002');
  assert.equal(no.status, 402, no.text);
  await laneControl('fast', { partition: 'refuse' });
  await laneControl('cheap', { partition: 'refuse' });
  const later = await checkout(id, '4242424242424242', { items: [{ sku: 'shirt', quantity: 1 }] });
  assert.equal(later.status, 201, later.text);
  assert.equal(later.json.status, 'queued');
  // A replayed checkout (same Idempotency-Key) is not a new checkout.
  const key = crypto.randomUUID();
  await laneControl('fast', { partition: 'none' });
  await laneControl('cheap', { partition: 'none' });
  await healLanes();
  const t = await tokenFor(id, '4242424242424242');
  const body = { items: [{ sku: 'ticket', quantity: 1 }], token: t.token, cvc_token: t.cvc_token, buyer: { email: 'ana@example.org', age_confirmed: true, consent_accepted: true } };
  const send = () => api('POST', `/v1/events/${id}/checkout`, { body, headers: { 'idempotency-key': key } });
  const first = await send();
  assert.equal(first.status, 201, first.text);
  const replay = await send();
  assert.equal(replay.headers.get('idempotent-replayed'), 'true', replay.text);

  const r = await metrics(id, m.api_key);
  assert.equal(r.status, 200, r.text);
  const f = r.json.funnel;
  assert.equal(f.quote_shown, 2);
  assert.equal(f.token_issued, 4, 'one token per card entered');
  assert.equal(f.checkout_started, 4, JSON.stringify(f));
  assert.deepEqual([f.approved, f.declined, f.queued], [2, 1, 1]);
  assert.equal(f.converted, 3);
  assert.equal(f.conversion_rate, 0.75);
  // The buyer heard the neutral reason; the merchant's metrics keep the issuer's code.
  assert.equal(no.json.decline.code, 'card_declined');
  assert.deepEqual(r.json.declines, { generic_decline: 1 });
  const colo = ok.headers.get('x-poptill-colo');
  assert.equal(r.json.latency.by_colo[colo].count, 4);
  assert.ok(r.json.latency.by_colo[colo].p95_ms >= r.json.latency.by_colo[colo].p50_ms);
  assert.equal(Object.values(r.json.latency.by_lane).reduce((n, l) => n + l.count, 0), 3, 'approved (2) + declined (1) on a lane');
  assert.equal(r.json.latency_series[colo].reduce((n, p) => n + p.count, 0), 4);
  assert.equal(r.json.conversion_by_latency.reduce((n, b) => n + b.started, 0), 4);
  assert.equal(r.json.conversion_by_latency.reduce((n, b) => n + b.converted, 0), 3);
  assert.equal(r.json.queue.queued_count, 1);
  assert.equal(r.json.queue.queued_exposure, later.json.total);
  const charged = r.json.cost.lanes.reduce((n, l) => n + l.transactions, 0);
  assert.equal(charged, 2, JSON.stringify(r.json.cost));
  assert.ok(r.json.cost.total_cost_minor > 0);
  assert.match(r.json.cost.latency_effect.model, /least-squares/);
  assert.match(r.json.cost.latency_effect.insufficient, /at least 20/);
  assert.ok(Object.keys(r.json.policy_revisions).length >= 1);
  assert.ok(!r.text.includes('4242424242424242') && !r.text.includes('4000000000000002'));

  // The queued payment is forwarded: the event object records it and charges its lane.
  const s = await api('POST', `/v1/admin/events/${id}/sync`, { key: m.api_key });
  assert.equal(s.status, 200, s.text);
  const r2 = await metrics(id, m.api_key);
  assert.equal(r2.json.funnel.forwarded, 1, JSON.stringify(r2.json.funnel));
  assert.equal(r2.json.queue.queued_count, 0);
  assert.equal(r2.json.cost.lanes.reduce((n, l) => n + l.transactions, 0), 3);

  // A refund recorded by the event object.
  const rf = await api('POST', `/v1/admin/events/${id}/refunds`, { key: m.api_key, body: { order_id: ok.json.order_id, goodwill: true } });
  assert.equal(rf.status, 201, rf.text);
  const r3 = await metrics(id, m.api_key);
  assert.equal(r3.json.funnel.refund, 1, JSON.stringify(r3.json.funnel));
  assert.equal(r3.json.refunded_minor, ok.json.total);

  // scripts/cost-report prints the same cost figures for an operator.
  const rep = spawnSync(fileURLToPath(new URL('../../scripts/cost-report', import.meta.url)), ['--url', BASE, '--event', id, '--key', m.api_key], { encoding: 'utf8' });
  assert.equal(rep.status, 0, rep.stderr);
  for (const l of r3.json.cost.lanes) {
    assert.match(rep.stdout, new RegExp(`^${l.lane}\\s+${l.transactions}\\s`, 'm'), rep.stdout);
  }
  assert.match(rep.stdout, /50 ms less p95: no estimate yet/);
  assert.match(rep.stdout, /Model: conversion rate = a \+ b/);
  const bad = spawnSync(fileURLToPath(new URL('../../scripts/cost-report', import.meta.url)), ['--url', BASE, '--event', id, '--key', 'wrong'], { encoding: 'utf8' });
  assert.equal(bad.status, 1);
});

test('metrics: operator or the event\'s own merchant only', async () => {
  const id = await createEvent();
  assert.equal((await admin('GET', `/v1/admin/events/${id}/metrics`)).status, 200);
  assertError(await api('GET', `/v1/admin/events/${id}/metrics`), 401, 'unauthorized');
  const other = await admin('POST', '/v1/admin/merchants', { body: { name: 'Someone Else' } });
  assert.equal(other.status, 201, other.text);
  const foreign = await metrics(id, other.json.api_key);
  assert.equal(foreign.status, 404, foreign.text);
});

test('the Worker logs a checkout as JSON lines with its request id and no card number', async () => {
  const file = process.env.POPTILL_WORKER_LOG;
  assert.ok(file, 'POPTILL_WORKER_LOG is set by the stack');
  await healLanes();
  const id = await createEvent();
  const r = await checkout(id, '4242424242424242');
  assert.equal(r.status, 201, r.text);
  const rid = r.headers.get('x-request-id');
  assert.match(rid, /^req_/);
  let lines = [];
  for (let i = 0; i < 40 && !lines.length; i++) {
    await new Promise((ok) => setTimeout(ok, 100));
    lines = readFileSync(file, 'utf8').split('\n').filter((l) => l.includes(rid));
  }
  assert.ok(lines.length >= 1, 'the checkout was logged');
  for (const line of lines) {
    const v = JSON.parse(line.trim());
    assert.equal(v.request_id, rid);
    assert.equal(typeof v.level, 'string');
    assert.equal(typeof v.msg, 'string');
    assert.equal(v.colo, r.headers.get('x-poptill-colo'));
    assert.equal(v.event_id, id);
  }
  // Every line the Worker wrote as a log object parses, and none holds a card number.
  const all = readFileSync(file, 'utf8');
  const objects = all.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('{"'));
  assert.ok(objects.length > 3);
  for (const l of objects) {
    const v = JSON.parse(l);
    assert.ok(v.level && v.msg, l);
  }
  for (const pan of ['4242424242424242', '4000000000000002', '5555555555554444']) assert.ok(!all.includes(pan), 'no card number in the log');
});
