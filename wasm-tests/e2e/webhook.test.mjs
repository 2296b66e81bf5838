// End-to-end: receipts reach the merchant's webhook in signed batches, off the request path.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import crypto from 'node:crypto';
import { api, admin, assertError, checkout, healLanes } from './helpers.mjs';
import { freshCard } from '../../scripts/test-cards.mjs';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { verifyPoptill } from '../../examples/webhooks/verify.mjs';

const ROOT = new URL('../../', import.meta.url);
const PY_VERIFY = new URL('examples/webhooks/verify.py', ROOT);
// The README's Python snippet, run on a delivery: prints True or False.
function verifyWithPython(secret, header, body) {
  const program = `${readFileSync(PY_VERIFY, 'utf8')}\nimport sys\nprint(verify_poptill(sys.stdin.buffer.read(), sys.argv[1], sys.argv[2]))\n`;
  return execFileSync('python3', ['-c', program, header, secret], { input: body }).toString().trim() === 'True';
}

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
    // Poptill-Signature verifies, with the README's snippets (Node and Python).
    assert.ok(verifyPoptill(d.body, d.signature, m.json.webhook_secret), 'Poptill-Signature verifies (the Node snippet)');
    assert.ok(!verifyPoptill(d.body + ' ', d.signature, m.json.webhook_secret), 'the Node snippet refuses a changed body');
    assert.ok(!verifyPoptill(d.body, d.signature, 'whsec_wrong'));
    assert.ok(verifyWithPython(m.json.webhook_secret, d.signature, d.body), 'the Python snippet verifies it');
    assert.ok(!verifyWithPython('whsec_wrong', d.signature, d.body), 'the Python snippet refuses a wrong secret');
    const batch = JSON.parse(d.body);
    assert.equal(batch.type, 'receipts.batch');
    for (const r of batch.receipts) {
      const v = await api('POST', '/v1/receipts/verify', { body: r });
      assert.equal(v.status, 200, 'each delivered receipt verifies on its own');
    }
    assert.ok(!d.body.includes('4242424242424242'));
  }
});

test('the README shows the webhook verification snippets exactly as the files the suite runs', () => {
  const readme = readFileSync(new URL('README.md', ROOT), 'utf8');
  for (const file of ['examples/webhooks/verify.mjs', 'examples/webhooks/verify.py']) {
    assert.ok(readme.includes(readFileSync(new URL(file, ROOT), 'utf8')), `README.md carries ${file} verbatim`);
  }
});

test('an old delivery is refused by both snippets (replays)', () => {
  const secret = 'whsec_test';
  const body = '{"type":"receipts.batch","count":0,"receipts":[]}';
  const t = Date.now() - 600_000;
  const v1 = crypto.createHmac('sha256', secret).update(`poptill-webhook-v1\n${t}\n${body}`).digest('hex');
  const fresh = Date.now();
  const v1Fresh = crypto.createHmac('sha256', secret).update(`poptill-webhook-v1\n${fresh}\n${body}`).digest('hex');
  assert.ok(verifyPoptill(body, `t=${fresh},v1=${v1Fresh}`, secret));
  assert.ok(verifyWithPython(secret, `t=${fresh},v1=${v1Fresh}`, body));
  assert.ok(!verifyPoptill(body, `t=${t},v1=${v1}`, secret), 'ten minutes old');
  assert.ok(!verifyWithPython(secret, `t=${t},v1=${v1}`, body), 'ten minutes old');
});
