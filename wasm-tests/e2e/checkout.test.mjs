// End-to-end: merchants, events, quotes and the checkout against workerd and the acquirer
// simulator: approved, declined, failover, queued and forwarded exactly once, budget,
// idempotency, receipts.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { api, admin, assertError, createEvent, checkout, merchant, laneControl, simStats, healLanes, lanesKnownDown, tokenFor } from './helpers.mjs';

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
  // Two calls to the event's object (begin: idempotency + CVC + hold; finish: confirm +
  // signed receipt + stored answer) around one acquirer call.
  assert.match(r.headers.get('server-timing'), /event;dur=\d+;desc="2 calls", acquirer;dur=\d+;desc="1 call", total;dur=\d+/);
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
  assertError(await api('POST', '/v1/receipts/verify', { body: tampered }), 422, 'receipt_tampered');
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

const chargesFor = (stats, orderId) =>
  Object.fromEntries(Object.entries(stats.lanes ?? stats).map(([name, l]) => [name, (l.by_order_id ?? {})[orderId] ?? 0]));

test('a dropped connection is never failed over to another lane: sent again on that lane, completed there, charged once', async () => {
  await healLanes();
  const id = await createEvent();
  // The simulator reads the request, then drops the connection (as a refused or reset
  // connection looks to a Worker: "Network connection lost"): the lane may have charged.
  await laneControl('cheap', { partition: 'refuse' });
  const r = await checkout(id, '4242424242424242');
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.status, 'queued', r.text);
  const routing = r.headers.get('x-poptill-routing');
  assert.match(routing, /cheap connection lost, sending again/, routing);
  assert.match(routing, /outcome unknown, completing on cheap/, routing);
  assert.deepEqual(chargesFor(await simStats(), r.json.order_id), { fast: 0, cheap: 0 });
  await healLanes();
  const m = await merchant();
  assert.equal((await api('POST', `/v1/admin/events/${id}/sync`, { key: m.api_key })).status, 200);
  assert.deepEqual(chargesFor(await simStats(), r.json.order_id), { fast: 0, cheap: 1 });
});

for (const [fault, settings] of [
  ['processed, then the connection reset (twice)', { reset_rate: 1, reset_point: 'mid_body' }],
  ['a processing intent', { processing_rate: 1, processing_ms: 300 }],
  ['a malformed 2xx', { malformed_rate: 1, malformed_body: 'truncated' }],
]) {
  test(`${fault}: never sent to another lane, completed on its lane, charged once`, async () => {
    await healLanes();
    const id = await createEvent();
    await laneControl('cheap', settings);
    await laneControl('fast', settings);
    const r = await checkout(id, '4242424242424242');
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.status, 'queued', r.text);
    const m = /outcome unknown, completing on (\w+)/.exec(r.headers.get('x-poptill-routing'));
    assert.ok(m, r.headers.get('x-poptill-routing'));
    const lane = m[1];
    const other = lane === 'fast' ? 'cheap' : 'fast';
    await new Promise((ok) => setTimeout(ok, 400));
    await healLanes();
    const key = (await merchant()).api_key;
    for (let i = 0; i < 2; i++) assert.equal((await api('POST', `/v1/admin/events/${id}/sync`, { key })).status, 200);
    const ev = await api('GET', `/v1/admin/events/${id}`, { key });
    assert.equal(ev.json.summary.queued_count, 0, JSON.stringify(ev.json.summary));
    assert.deepEqual(chargesFor(await simStats(), r.json.order_id), { [lane]: 1, [other]: 0 });
    const receipt = await api('GET', r.json.receipt_url);
    assert.equal(receipt.json.receipt.status, 'forwarded');
  });
}

test('a 202 pending answer links its status: pending until the acquirer settles it, then approved with the receipt', async () => {
  await healLanes();
  const id = await createEvent();
  // The acquirer answers "processing" and the buyer asked for an online payment: the
  // outcome is unknown, so the buyer hears pending, not the goods.
  await laneControl('cheap', { processing_rate: 1, processing_ms: 300 });
  await laneControl('fast', { processing_rate: 1, processing_ms: 300 });
  const r = await checkout(id, '4242424242424242', { mode: 'require_online' });
  assert.equal(r.status, 202, r.text);
  assert.equal(r.json.status, 'pending', r.text);
  assert.match(r.json.status_url, new RegExp(`^/v1/events/${id}/checkouts/${r.json.order_id}\\.[0-9a-f]{32}`), r.text);
  const s1 = await api('GET', r.json.status_url);
  assert.equal(s1.status, 200, s1.text);
  assert.equal(s1.json.status, 'pending', s1.text);
  assert.ok(+s1.headers.get('retry-after') >= 1, 'says when to ask again');
  assert.equal(s1.headers.get('cache-control'), 'private, no-store');
  assert.equal(s1.json.receipt_url, undefined, 'no receipt while pending');
  // The URL is a capability: the bare order id, or a token for another order, is not found.
  assertError(await api('GET', `/v1/events/${id}/checkouts/${r.json.order_id}`), 404, 'not_found');
  const forged = r.json.status_url.replace(/\.([0-9a-f])/, (_, c) => '.' + (c === '0' ? '1' : '0'));
  assertError(await api('GET', forged), 404, 'not_found');
  await new Promise((ok) => setTimeout(ok, 400));
  await healLanes();
  const key = (await merchant()).api_key;
  for (let i = 0; i < 2; i++) assert.equal((await api('POST', `/v1/admin/events/${id}/sync`, { key })).status, 200);
  const s2 = await api('GET', r.json.status_url);
  assert.equal(s2.json.status, 'approved', s2.text);
  const receipt = await api('GET', s2.json.receipt_url);
  assert.equal(receipt.status, 200, receipt.text);
  assert.equal(receipt.json.receipt.order_id, r.json.order_id);
  assert.equal(Object.values(chargesFor(await simStats(), r.json.order_id)).reduce((a, b) => a + b, 0), 1, "charged once");
});

test('a handover sale whose payment was pending becomes paid by itself once the acquirer approves it', async () => {
  await healLanes();
  const id = await createEvent();
  const items = [{ sku: 'ticket', quantity: 1 }];
  const h = await api('POST', `/v1/events/${id}/handover`, { body: { items } });
  assert.equal(h.status, 201, h.text);
  await laneControl('cheap', { processing_rate: 1, processing_ms: 300 });
  await laneControl('fast', { processing_rate: 1, processing_ms: 300 });
  const t = await tokenFor(id, '4242424242424242');
  const body = { items, token: t.token, cvc_token: t.cvc_token, mode: 'require_online', handover_session: h.json.session_id,
    buyer: { email: 'ana@example.org', age_confirmed: true, consent_accepted: true } };
  const r = await api('POST', `/v1/events/${id}/checkout`, { body, headers: { 'idempotency-key': crypto.randomUUID() } });
  assert.equal(r.status, 202, r.text);
  let s = await api('GET', h.json.status_url);
  assert.equal(s.json.status, 'paying', 'the claim stays while the outcome is unknown: ' + s.text);
  await new Promise((ok) => setTimeout(ok, 400));
  await healLanes();
  const key = (await merchant()).api_key;
  for (let i = 0; i < 2; i++) assert.equal((await api('POST', `/v1/admin/events/${id}/sync`, { key })).status, 200);
  s = await api('GET', h.json.status_url);
  assert.equal(s.json.status, 'paid', s.text);
  assert.equal(s.json.payment_status, 'approved', s.text);
  assert.equal(s.json.order_id, r.json.order_id);
  assert.equal((await api('GET', s.json.receipt_url)).status, 200, 'the till can show the receipt');
});

test('a lane that may have charged is never retried elsewhere: completed on that lane, charged once', async () => {
  await healLanes();
  const id = await createEvent();
  // Both lanes charge on arrival and answer after 4 s, past the attempt timeout: whichever
  // lane is tried, the Worker cannot know whether the card was charged.
  await laneControl('cheap', { latency_ms: { fixed: 4000 } });
  await laneControl('fast', { latency_ms: { fixed: 4000 } });
  const r = await checkout(id, '4242424242424242');
  assert.equal(r.status, 201, r.text);
  // Answered at the attempt's timeout; the same request runs on and settles the payment.
  assert.equal(r.json.status, 'confirming', r.text);
  assert.match(r.json.message, /never charged twice/);
  const m = /(\w+) not answered in \d+ ms, answering now/.exec(r.headers.get('x-poptill-routing'));
  assert.ok(m, r.headers.get('x-poptill-routing'));
  const lane = m[1];
  const other = lane === 'fast' ? 'cheap' : 'fast';
  let charges = chargesFor(await simStats(), r.json.order_id);
  assert.equal(charges[lane], 1, 'the slow lane charged on arrival: ' + JSON.stringify(charges));
  assert.equal(charges[other], 0, 'no failover to another lane after an unknown outcome');
  // The request itself answers 4 s after it left (the buyer heard after 1 s).
  await new Promise((res) => setTimeout(res, 4000));
  await healLanes();
  const merchantKey = (await merchant()).api_key;
  for (let i = 0; i < 2; i++) {
    const s = await api('POST', `/v1/admin/events/${id}/sync`, { key: merchantKey });
    assert.equal(s.status, 200, s.text);
  }
  const ev = await api('GET', `/v1/admin/events/${id}`, { key: merchantKey });
  assert.equal(ev.json.summary.queued_count, 0, JSON.stringify(ev.json.summary));
  const stats = await simStats();
  charges = chargesFor(stats, r.json.order_id);
  assert.deepEqual(charges, { [lane]: 1, [other]: 0 }, 'completed by replaying the same request');
  const lanes = stats.lanes ?? stats;
  assert.equal(lanes[lane].by_idempotency_key[`${r.json.order_id}_online`], 1, 'executed once, replayed after');
  const receipt = await api('GET', r.json.receipt_url);
  assert.equal(receipt.json.receipt.status, 'forwarded');
});

test('partitioned acquirer: queued with a provisional receipt, forwarded exactly once after recovery', async () => {
  await healLanes();
  await lanesKnownDown();
  const id = await createEvent();
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
  await healLanes();
  await lanesKnownDown();
  const id = await createEvent({ offline: { per_transaction_max: 2000, aggregate_max: 2000, per_card_max_count: 5, per_card_window_ms: 3_600_000 } });
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

test('a retryable refusal gives the single-use CVC back: the same request succeeds on retry', async () => {
  await healLanes();
  await lanesKnownDown();
  const id = await createEvent();
  const t = await tokenFor(id, '4242424242424242');
  const body = {
    items: [{ sku: 'ticket', quantity: 1 }], token: t.token, cvc_token: t.cvc_token, mode: 'require_online',
    buyer: { email: 'ana@example.org', age_confirmed: true, consent_accepted: true },
  };
  const headers = { 'idempotency-key': crypto.randomUUID() };
  const path = `/v1/events/${id}/checkout`;
  const a = await api('POST', path, { body, headers });
  assertError(a, 402, 'acquirer_unavailable');
  await healLanes();
  const b = await api('POST', path, { body, headers });
  assert.equal(b.status, 201, b.text);
  assert.equal(b.json.status, 'approved');
  // Once the payment is made, the CVC is spent for good.
  const c = await api('POST', path, { body, headers: { 'idempotency-key': crypto.randomUUID() } });
  assertError(c, 409, 'cvc_already_used');
});

test('once every lane is known down, a checkout is stored in one call; a refusal there undoes everything', async () => {
  await healLanes();
  const strict = await createEvent({ offline: { per_transaction_max: 2000, aggregate_max: 10_000, per_card_max_count: 1, per_card_window_ms: 3_600_000 } });
  const id = await createEvent();
  // Failed attempts open the breakers; from then on the plan is to store at once.
  await lanesKnownDown();
  // The first stored payment of an event also fetches the event's sealing key (then cached).
  const warm = await checkout(id, '5555555555554444');
  assert.equal(warm.json.status, 'queued', warm.text);
  const r = await checkout(id, '4242424242424242');
  assert.match(r.headers.get('x-poptill-routing'), /no_healthy_lane; queued offline/, r.text);
  assert.equal(r.json.status, 'queued', r.text);
  assert.match(r.headers.get('server-timing'), /event;dur=\d+;desc="1 call", acquirer;dur=0;desc="0 calls"/);
  assert.equal((await api('POST', '/v1/receipts/verify', { body: JSON.stringify(r.json.receipt) })).status, 200);
  const stats = await simStats();
  assert.deepEqual(Object.values(chargesFor(stats, r.json.order_id)), [0, 0], 'no acquirer call for it');

  // The strict event allows one stored payment per card: the second is refused in the same
  // call, and the object releases the stock, the Idempotency-Key and the CVC.
  const first = await checkout(strict, '4242424242424242');
  assert.match(first.headers.get('x-poptill-routing'), /no_healthy_lane/);
  assert.equal(first.json.status, 'queued', first.text);
  const t = await tokenFor(strict, '4242424242424242');
  const body = {
    items: [{ sku: 'ticket', quantity: 1 }], token: t.token, cvc_token: t.cvc_token,
    buyer: { email: 'ana@example.org', age_confirmed: true, consent_accepted: true },
  };
  const headers = { 'idempotency-key': crypto.randomUUID() };
  const refused = await api('POST', `/v1/events/${strict}/checkout`, { body, headers });
  // The ledger's own reason, not relabelled: this card's stored payments are at the limit.
  assertError(refused, 402, 'offline_card_velocity');
  assert.equal(refused.json.error.retryable, true);
  const m = await merchant();
  const ev = await api('GET', `/v1/admin/events/${strict}`, { key: m.api_key });
  assert.equal(ev.json.summary.active_holds, 0, JSON.stringify(ev.json.summary));
  assert.equal(ev.json.summary.queued_count, 1);
  await healLanes();
  const retried = await api('POST', `/v1/events/${strict}/checkout`, { body, headers });
  assert.equal(retried.status, 201, retried.text);
  assert.equal(retried.json.status, 'approved');
});

/** A checkout request sent as the card frame sends it: one body, one key, sent again. */
async function intent(eventId, number) {
  const t = await tokenFor(eventId, number);
  const body = { items: [{ sku: 'ticket', quantity: 1 }], token: t.token, cvc_token: t.cvc_token, buyer: { email: 'ana@example.org', age_confirmed: true, consent_accepted: true } };
  const key = crypto.randomUUID();
  return () => api('POST', `/v1/events/${eventId}/checkout`, { body, headers: { 'idempotency-key': key } });
}

/** Makes the router of this isolate see every lane slow (answers of 2 s). */
async function lanesKnownSlow() {
  await laneControl('cheap', { latency_ms: { fixed: 2000 } });
  await laneControl('fast', { latency_ms: { fixed: 2000 } });
  const warm = await createEvent();
  for (let i = 0; i < 8; i++) {
    const r = await checkout(warm, '5555555555554444');
    if (/all_lanes_slow/.test(r.headers.get('x-poptill-routing') ?? '')) return;
  }
  assert.fail('the router never saw the lanes slow');
}

test('slow acquirer: the buyer hears confirming at once and the same attempt authorizes online, no alarm, charged once', async () => {
  await healLanes();
  await lanesKnownSlow();
  const id = await createEvent();
  const send = await intent(id, '4242424242424242');
  const t0 = Date.now();
  const r = await send();
  const took = Date.now() - t0;
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.status, 'confirming', r.text);
  assert.match(r.headers.get('x-poptill-routing'), /all_lanes_slow;.*answer_by=50/);
  assert.ok(took < 1500, `answered in ${took} ms, not after the acquirer's 2 s`);
  assert.equal(r.headers.get('retry-after'), '1');
  assert.ok(r.json.status_url, r.text);
  const provisional = await api('GET', r.json.receipt_url);
  assert.equal(provisional.json.receipt.status, 'queued', 'a signed provisional receipt');
  // The page asks again with the same request until the bank's answer is in.
  let again;
  for (let i = 0; i < 10; i++) {
    await new Promise((res) => setTimeout(res, 1000));
    again = await send();
    if (again.json.status !== 'confirming') break;
  }
  assert.equal(again.status, 201, again.text);
  assert.equal(again.json.status, 'approved', again.text);
  const charges = chargesFor(await simStats(), r.json.order_id);
  assert.equal(charges.fast + charges.cheap, 1, JSON.stringify(charges));
  const m = await merchant();
  const ev = await api('GET', `/v1/admin/events/${id}`, { key: m.api_key });
  assert.equal(ev.json.summary.queued_count, 0, 'authorized online, nothing left to the alarm: ' + JSON.stringify(ev.json.summary));
  const receipt = await api('GET', r.json.receipt_url);
  assert.equal(receipt.json.receipt.status, 'forwarded', 're-signed with the final outcome');
  await healLanes();
});

test('slow acquirer: a decline found after the confirming answer reaches the buyer with the same key', async () => {
  await healLanes();
  await lanesKnownSlow();
  const id = await createEvent();
  const send = await intent(id, '4000000000000002');
  const r = await send();
  assert.equal(r.json.status, 'confirming', r.text);
  let again;
  for (let i = 0; i < 10; i++) {
    await new Promise((res) => setTimeout(res, 1000));
    again = await send();
    if (again.json.status !== 'confirming') break;
  }
  assert.equal(again.status, 402, again.text);
  assert.equal(again.json.status, 'declined', again.text);
  const charges = chargesFor(await simStats(), r.json.order_id);
  assert.equal(charges.fast + charges.cheap, 0, JSON.stringify(charges));
  await healLanes();
});
