// End-to-end: receipts reach the merchant's webhook in signed batches, off the request path.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import crypto from 'node:crypto';
import { api, admin, assertError, checkout, healLanes } from './helpers.mjs';
import { freshCard } from '../../scripts/test-cards.mjs';

const deliveries = [];
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    deliveries.push({ signature: req.headers['poptill-signature'], body: Buffer.concat(chunks).toString() });
    res.writeHead(deliveries.length === 1 ? 503 : 200).end();
  });
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
after(() => server.close());

function verify(secret, header, body) {
  const parts = Object.fromEntries(header.split(',').map((p) => p.split('=')));
  const mac = crypto.createHmac('sha256', secret).update(`poptill-webhook-v1\n${parts.t}\n`).update(body).digest('hex');
  return mac === parts.v1 && Math.abs(Date.now() - Number(parts.t)) < 300_000;
}

test('receipts are delivered to the webhook in signed batches, retried after a failure', async () => {
  await healLanes();
  const url = `http://127.0.0.1:${server.address().port}/hook`;
  assertError(await admin('POST', '/v1/admin/merchants', { body: { name: 'x', webhook_url: 'ftp://nope' } }), 422, 'invalid_webhook_url');
  const m = await admin('POST', '/v1/admin/merchants', { body: { name: 'Webhook Stall', webhook_url: url } });
  assert.equal(m.status, 201, m.text);
  assert.match(m.json.webhook_secret, /^whsec_[0-9a-f]{48}$/);
  const now = Date.now();
  const ev = await api('POST', '/v1/admin/events', { key: m.json.api_key, body: {
    title: 'Webhook night', jurisdiction: 'DE', currency: 'EUR', start_ms: now - 1000, end_ms: now + 86_400_000,
    skus: [{ id: 'ticket', name: 'Entry', category: 'ticket', price: 1500, stock: 50 }],
  } });
  assert.equal(ev.status, 201, ev.text);
  const id = ev.json.event_id;
  const paid = await Promise.all([0, 1, 2, 3, 4].map(() => checkout(id, freshCard())));
  for (const p of paid) assert.equal(p.status, 201, p.text);
  const want = new Set(paid.map((p) => p.json.receipt_id));
  const got = new Set();
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline && got.size < want.size) {
    await new Promise((r) => setTimeout(r, 250));
    got.clear();
    for (const d of deliveries.slice(1)) for (const r of JSON.parse(d.body).receipts) got.add(r.receipt.id);
  }
  assert.deepEqual([...got].sort(), [...want].sort(), 'every receipt delivered after the first attempt failed');
  assert.ok(deliveries.length >= 2, 'the first delivery got a 503 and was retried');
  const largest = Math.max(...deliveries.map((d) => JSON.parse(d.body).count));
  assert.ok(largest >= 2, `batched: the largest delivery carried ${largest} receipts (${deliveries.length} deliveries)`);
  for (const d of deliveries) {
    assert.ok(verify(m.json.webhook_secret, d.signature, d.body), 'Poptill-Signature verifies');
    assert.ok(!verify('whsec_wrong', d.signature, d.body));
    const batch = JSON.parse(d.body);
    assert.equal(batch.type, 'receipts.batch');
    for (const r of batch.receipts) {
      const v = await api('POST', '/v1/receipts/verify', { body: r });
      assert.equal(v.status, 200, 'each delivered receipt verifies on its own');
    }
    assert.ok(!d.body.includes('4242424242424242'));
  }
});
