// End-to-end guarantees across parts: no oversell under concurrency, a revoked data key
// shreds its tokens at checkout, and an event pinned to a policy revision keeps it.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BASE, api, admin, assertError, createEvent, checkout, tokenFor, healLanes, laneControl, simStats } from './helpers.mjs';
import { freshCard } from '../../scripts/test-cards.mjs';

beforeEach(healLanes);

test('never oversold: 16 concurrent buyers for 5 shirts', async () => {
  const id = await createEvent();
  const results = await Promise.all(
    Array.from({ length: 16 }, () => checkout(id, freshCard(), { items: [{ sku: 'shirt', quantity: 1 }] })),
  );
  const approved = results.filter((r) => r.status === 201 && r.json.status === 'approved').length;
  const soldOut = results.filter((r) => r.json?.error?.code === 'out_of_stock').length;
  assert.equal(approved, 5, results.map((r) => r.status + ' ' + (r.json?.status ?? r.json?.error?.code)).join(', '));
  assert.equal(soldOut, 11);
  const pub = await api('GET', `/v1/events/${id}/public`);
  assert.equal(pub.json.skus.find((s) => s.id === 'shirt').available, 0);
});

test('a revoked data key makes its tokens unusable at checkout', async () => {
  const id = await createEvent();
  const t = await tokenFor(id, '4242424242424242');
  const keys = await admin('GET', '/v1/admin/keys');
  const kid = keys.json.current;
  assert.equal((await admin('POST', `/v1/admin/keys/${kid}/revoke`)).status, 200);
  const r = await api('POST', `/v1/events/${id}/checkout`, {
    body: { items: [{ sku: 'ticket', quantity: 1 }], token: t.token, buyer: { email: 'a@example.org', consent_accepted: true } },
    headers: { 'idempotency-key': crypto.randomUUID() },
  });
  assertError(r, 410, 'key_revoked');
  const fresh = await checkout(id, '4242424242424242');
  assert.equal(fresh.status, 201, 'a new key was started for new tokens: ' + fresh.text);
});

test('a token bound to one event cannot pay at another', async () => {
  const a = await createEvent();
  const b = await createEvent();
  const t = await tokenFor(a, '4242424242424242');
  const r = await api('POST', `/v1/events/${b}/checkout`, {
    body: { items: [{ sku: 'ticket', quantity: 1 }], token: t.token, buyer: { email: 'a@example.org', consent_accepted: true } },
    headers: { 'idempotency-key': crypto.randomUUID() },
  });
  assertError(r, 400, 'invalid_token');
});

test('an event pinned to a policy revision keeps it while others follow the newest', async () => {
  const cli = join(process.cwd(), 'target/debug/poptill-policy');
  const dir = mkdtempSync(join(tmpdir(), 'poptill-pin-'));
  const status = await admin('GET', '/v1/admin/policies/ES');
  const pinnedRev = status.json.active.revision;
  const pinned = await createEvent({ jurisdiction: 'ES', policy_revision: pinnedRev });
  // Push a newer ES bundle whose merchandise rate differs.
  const bundle = JSON.parse(readFileSync('policies/ES.json', 'utf8'));
  bundle.tax.rates_ppm.merchandise = 100000;
  const src = join(dir, 'ES.json');
  writeFileSync(src, JSON.stringify(bundle));
  execFileSync(cli, ['sign', '--key', process.env.POLICY_KEY_FILE, '--revision', String(pinnedRev + 50), '--out', dir, src]);
  const pushed = await admin('PUT', '/v1/admin/policies', { body: readFileSync(join(dir, 'ES.signed.json'), 'utf8') });
  assert.equal(pushed.status, 201, pushed.text);
  const following = await createEvent({ jurisdiction: 'ES' });
  await new Promise((r) => setTimeout(r, 50));
  const items = { items: [{ sku: 'shirt', quantity: 1 }] };
  const qp = await api('POST', `/v1/events/${pinned}/quote`, { body: items });
  const qf = await api('POST', `/v1/events/${following}/quote`, { body: items });
  assert.equal(qp.json.policy_revision, pinnedRev);
  assert.equal(qf.json.policy_revision, pinnedRev + 50);
  assert.notEqual(qp.json.policy_hash, qf.json.policy_hash);
  assert.equal(qf.json.lines[0].rate_ppm, 100000);
  assert.notEqual(qp.json.lines[0].rate_ppm, 100000);
});

test('a sealed CVC is single-use: a second checkout with it is refused', async () => {
  const id = await createEvent();
  const t = await tokenFor(id, '4242424242424242');
  const pay = () => api('POST', `/v1/events/${id}/checkout`, {
    body: { items: [{ sku: 'ticket', quantity: 1 }], token: t.token, cvc_token: t.cvc_token, buyer: { email: 'a@example.org', consent_accepted: true } },
    headers: { 'idempotency-key': crypto.randomUUID() },
  });
  const first = await pay();
  assert.equal(first.status, 201, first.text);
  assertError(await pay(), 409, 'cvc_already_used');
});

test('a buyer whose connection drops mid-checkout is still charged once and the retry replays it', async () => {
  // The acquirer answers in 600 ms (inside the attempt timeout); the buyer's connection is
  // cut after 150 ms: the payment completes once and the same request, sent again, replays
  // it. (Under wrangler dev a client disconnect does not cancel the Worker: this test also
  // passes with the checkout awaited outside wait_until, so it guards the outcome, not
  // the wait_until itself.)
  await laneControl('fast', { latency_ms: { fixed: 600 } });
  await laneControl('cheap', { latency_ms: { fixed: 600 } });
  try {
    const id = await createEvent();
    const t = await tokenFor(id, freshCard());
    const key = crypto.randomUUID();
    const body = JSON.stringify({ items: [{ sku: 'ticket', quantity: 1 }], token: t.token, cvc_token: t.cvc_token, buyer: { email: 'ana@example.org', age_confirmed: true, consent_accepted: true } });
    const cut = new AbortController();
    setTimeout(() => cut.abort(), 150);
    await assert.rejects(fetch(`${BASE}/v1/events/${id}/checkout`, { method: 'POST', body, signal: cut.signal, headers: { 'content-type': 'application/json', 'idempotency-key': key } }));
    await new Promise((ok) => setTimeout(ok, 2500));
    await healLanes();
    const again = await api('POST', `/v1/events/${id}/checkout`, { body, headers: { 'idempotency-key': key } });
    assert.equal(again.status, 201, again.text);
    assert.equal(again.json.status, 'approved', again.text);
    assert.equal(again.headers.get('idempotent-replayed'), 'true', 'the first request finished by itself');
    const stats = await simStats();
    const charges = Object.values(stats.lanes ?? stats).reduce((n, l) => n + (l.by_order_id?.[again.json.order_id] ?? 0), 0);
    assert.equal(charges, 1);
  } finally {
    await healLanes();
  }
});
