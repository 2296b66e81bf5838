// End-to-end: store-and-forward under failures that are not the card's. A stored payment
// whose lane answers 404 stays queued with its card and is charged once the lane is fixed;
// one dead lane does not hold up the forwards of a healthy one; a ledger write that fails
// part way leaves nothing half written.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { api, admin, createEvent, checkout, merchant, laneControl, sim, simStats, healLanes } from './helpers.mjs';

const misroute = (lane, status) => sim('POST', `/control/lanes/${lane}/misroute`, { status });

beforeEach(async () => {
  for (const lane of ['fast', 'cheap']) await misroute(lane, null);
  await healLanes();
});

async function summary(id) {
  const m = await merchant();
  const r = await api('GET', `/v1/admin/events/${id}`, { key: m.api_key });
  assert.equal(r.status, 200, r.text);
  return r.json.summary;
}

/// The event's orders (export), by order id.
async function orders(id) {
  const m = await merchant();
  const r = await api('GET', `/v1/admin/events/${id}/export?format=ndjson`, { key: m.api_key });
  assert.equal(r.status, 200, r.text);
  const out = {};
  for (const line of r.text.split('\n').filter(Boolean)) {
    const o = JSON.parse(line);
    out[o.order_id] = o;
  }
  return out;
}

async function sync(id) {
  const m = await merchant();
  const r = await api('POST', `/v1/admin/events/${id}/sync`, { key: m.api_key });
  assert.equal(r.status, 200, r.text);
}

const chargesFor = (stats, key) =>
  Object.values(stats.lanes ?? stats).reduce((n, l) => n + ((l.by_idempotency_key ?? {})[key] ?? 0), 0);

async function until(what, check, ms = 20_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

test('a lane answering 404 keeps a stored payment queued with its card; the alarm charges it once the lane is fixed', async () => {
  const id = await createEvent();
  await laneControl('fast', { partition: 'refuse' });
  await laneControl('cheap', { partition: 'refuse' });
  const r = await checkout(id, '4242424242424242');
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.status, 'queued', r.text);
  const lane = (await orders(id))[r.json.order_id].lane;
  assert.ok(['fast', 'cheap'].includes(lane), lane);
  // The lane's URL now points at a web server that answers 404 (a mistyped base_url). Set
  // before the partition is lifted, so no forward ever finds the lane working.
  await misroute(lane, 404);
  await healLanes();
  const before = (await simStats()).lanes[lane].requests;
  await sync(id);
  await sync(id);
  let s = await summary(id);
  assert.equal(s.queued_count, 1, 'still queued: ' + JSON.stringify(s));
  assert.equal(s.orders_by_state.declined ?? 0, 0, JSON.stringify(s));
  assert.equal(s.orders_by_state.queued, 1, JSON.stringify(s));
  let receipt = await api('GET', r.json.receipt_url);
  assert.equal(receipt.json.receipt.status, 'queued', 'the buyer is not told "declined"');
  // Fixed: nobody syncs by hand; the alarm, still armed, forwards it with its sealed card.
  await misroute(lane, null);
  s = await until('the alarm to forward the payment', async () => {
    const v = await summary(id);
    return v.queued_count === 0 ? v : null;
  });
  assert.equal(s.orders_by_state.forwarded, 1, JSON.stringify(s));
  const stats = await simStats();
  assert.ok(stats.lanes[lane].requests > before, 'the 404 lane was called');
  // Stored when the dropped connections left its outcome unknown, so it completes that
  // attempt (`_online`); counted per order across keys and lanes.
  const charged = Object.values(stats.lanes).reduce((n, l) => n + ((l.by_order_id ?? {})[r.json.order_id] ?? 0), 0);
  assert.equal(charged, 1, 'charged exactly once');
  receipt = await api('GET', r.json.receipt_url);
  assert.equal(receipt.json.receipt.status, 'forwarded');
});

/// Stores a payment of unknown outcome on `lane`: the other lane answers 429 (provably not
/// processed, so the checkout moves on), `lane` answers 500. No lane is healthy at any
/// moment, so no alarm forwards anything meanwhile.
async function resolvingOn(id, lane) {
  const other = lane === 'fast' ? 'cheap' : 'fast';
  await misroute(lane, null);
  await misroute(other, 429);
  await laneControl(other, { partition: 'none', error_rate: 0 });
  await laneControl(lane, { partition: 'none', error_rate: 1, error_mode: 'before' });
  // Close the breakers the previous attempts opened, so both lanes are planned.
  assert.equal((await admin('POST', '/v1/admin/routing/reset')).status, 200);
  const r = await checkout(id, '4242424242424242');
  assert.ok([201, 202].includes(r.status), r.text);
  assert.match(r.headers.get('x-poptill-routing') ?? '', new RegExp(`completing on ${lane}`), r.text);
  return r.json.order_id;
}

test('one dead lane does not hold up the forwards of a healthy lane in the same wake', async () => {
  const id = await createEvent();
  const onCheap = [];
  const onFast = [];
  for (let i = 0; i < 3; i++) onCheap.push(await resolvingOn(id, 'cheap'));
  for (let i = 0; i < 3; i++) onFast.push(await resolvingOn(id, 'fast'));
  let o = await orders(id);
  for (const oid of onCheap) assert.equal(o[oid].lane, 'cheap');
  for (const oid of onFast) assert.equal(o[oid].lane, 'fast');
  assert.equal((await summary(id)).queued_count, 6);
  // fast is down, cheap is back. One wake forwards in a random order of ids: every cheap
  // payment must go through, whichever fast payment was tried first.
  for (const lane of ['fast', 'cheap']) await misroute(lane, null);
  await laneControl('fast', { partition: 'refuse', error_rate: 0 });
  await laneControl('cheap', { partition: 'none', error_rate: 0 });
  await sync(id);
  o = await orders(id);
  for (const oid of onCheap) assert.equal(o[oid].state, 'forwarded', `cheap ${oid}: ${o[oid].state}`);
  for (const oid of onFast) assert.equal(o[oid].state, 'queued', `fast ${oid}: ${o[oid].state}`);
  // fast heals: the rest follow, each charged once on its own lane.
  await healLanes();
  for (let i = 0; i < 5 && (await summary(id)).queued_count > 0; i++) await sync(id);
  assert.equal((await summary(id)).queued_count, 0);
  const stats = await simStats();
  for (const oid of [...onCheap, ...onFast]) {
    assert.equal(chargesFor(stats, `${oid}_online`), 1, oid);
    const lane = onCheap.includes(oid) ? 'cheap' : 'fast';
    assert.equal((stats.lanes[lane].by_order_id ?? {})[oid], 1, `${oid} on ${lane}`);
  }
});

test('a ledger write that fails part way is rolled back whole: no stock held for an order that was never saved', async () => {
  // Local runs only: this title makes the event object fail every write of an order row,
  // after the head row (counts, holds) of the same command was written.
  const id = await createEvent({ title: 'Backyard Concert [fault:persist_order_row]' });
  for (let i = 0; i < 2; i++) {
    const r = await checkout(id, '4242424242424242');
    assert.equal(r.status, 503, r.text);
    assert.equal(r.json.error.retryable, true, r.text);
    assert.ok(r.headers.get('retry-after'), 'Retry-After is set');
  }
  // The event still answers (memory was reloaded from storage), and storage has no trace of
  // the failed holds: nothing held, all stock available, no orders.
  const s = await summary(id);
  const ticket = s.skus.find((k) => k.sku === 'ticket');
  assert.deepEqual({ held: ticket.held, sold: ticket.sold, available: ticket.available }, { held: 0, sold: 0, available: ticket.stock }, JSON.stringify(s));
  assert.equal(s.active_holds, 0, JSON.stringify(s));
  assert.deepEqual(s.orders_by_state, {}, JSON.stringify(s));
});
