// Runs after scripts/test stopped and restarted `wrangler dev` on the same state directory:
// the event's Durable Object (SQLite) and KV must have survived, and the queued payment
// left behind must still be forwarded exactly once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { api, simStats } from '../e2e/helpers.mjs';

const saved = JSON.parse(readFileSync(process.env.POPTILL_RESTART_FILE, 'utf8'));

test('state survives a restart of the local runtime', async () => {
  const r = await api('GET', `/v1/admin/events/${saved.event}`, { key: saved.merchant_key });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.summary.orders_by_state.approved, 1, JSON.stringify(r.json.summary));
  const byState = r.json.summary.orders_by_state;
  // The object's alarm may already have forwarded it after the restart: either way, once.
  assert.equal((byState.queued ?? 0) + (byState.forwarded ?? 0), 1, JSON.stringify(byState));
  const receipt = await api('GET', saved.approved.receipt_url);
  assert.equal(receipt.status, 200);
  assert.equal((await api('POST', '/v1/receipts/verify', { body: receipt.text })).status, 200, 'the receipt key and record survived');
  // The event's telemetry rows survived too.
  const m = await api('GET', `/v1/admin/events/${saved.event}/metrics`, { key: saved.merchant_key });
  assert.equal(m.status, 200, m.text);
  for (const k of ['checkout_started', 'approved', 'queued', 'token_issued']) assert.equal(m.json.funnel[k], saved.funnel[k], k);
});

test('the queued payment is forwarded exactly once after the restart', async () => {
  const s = await api('POST', `/v1/admin/events/${saved.event}/sync`, { key: saved.merchant_key });
  assert.equal(s.status, 200, s.text);
  assert.equal(s.json.summary.queued_count, 0, JSON.stringify(s.json.summary));
  assert.equal(s.json.summary.orders_by_state.forwarded, 1);
  const stats = await simStats();
  // Counted per order over every key and lane: stored while the dropped connections left its
  // outcome unknown, it completes that attempt (`_online`) rather than a new `_queued` one.
  const order = saved.queued.order_id;
  const n = Object.values(stats.lanes).reduce((sum, l) => sum + ((l.by_order_id ?? {})[order] ?? 0), 0);
  assert.equal(n, 1);
  const receipt = await api('GET', saved.queued.receipt_url);
  assert.equal(receipt.json.receipt.status, 'forwarded');
});
