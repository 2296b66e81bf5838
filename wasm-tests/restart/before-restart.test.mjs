// Runs before scripts/test restarts `wrangler dev` on the same state directory: leaves an
// approved and a queued payment behind (the lanes stay down; the restart brings up a fresh
// simulator), for after-restart.test.mjs to check.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { api, createEvent, checkout, merchant, laneControl, healLanes } from '../e2e/helpers.mjs';

const shirt = [{ sku: 'shirt', quantity: 1 }];
before(healLanes);

test('before a restart of the local runtime: leave an approved and a queued payment behind', async () => {
  const id = await createEvent();
  const ok = await checkout(id, '4242424242424242');
  assert.equal(ok.status, 201, ok.text);
  await laneControl('fast', { partition: 'refuse' });
  await laneControl('cheap', { partition: 'refuse' });
  const queued = await checkout(id, '5555555555554444', { items: shirt });
  assert.equal(queued.json.status, 'queued', queued.text);
  // Reading the metrics sends this isolate's telemetry to the event object (SQLite).
  const key = (await merchant()).api_key;
  const m = await api('GET', `/v1/admin/events/${id}/metrics`, { key });
  assert.equal(m.json.funnel.checkout_started, 2, m.text);
  // The lanes stay down: the restart brings up a fresh, healthy simulator.
  const file = process.env.POPTILL_RESTART_FILE;
  if (file) writeFileSync(file, JSON.stringify({ event: id, approved: ok.json, queued: queued.json, merchant_key: key, funnel: m.json.funnel }));
});
