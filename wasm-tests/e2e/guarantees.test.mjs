// End-to-end guarantees across parts: no oversell under concurrency, a revoked data key
// shreds its tokens at checkout, and an event pinned to a policy revision keeps it.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { api, admin, assertError, createEvent, checkout, tokenFor, healLanes } from './helpers.mjs';
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
