// Hostile callers of the public routes (anyone with an event id): each test is an attack
// from the security review and what must happen instead.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { BASE, api, assertError, checkout, createEvent, healLanes, laneControl, merchant, simStats, tokenFor } from './helpers.mjs';
import { freshCard } from '../../scripts/test-cards.mjs';

test('a 60 MB body is refused before it is read, with or without a Content-Length, and a buyer beside it pays', async () => {
  const id = await createEvent();
  const huge = Buffer.alloc(60 * 1024 * 1024, 0x20);
  const sized = fetch(`${BASE}/v1/events/${id}/checkout`, {
    method: 'POST', body: huge, headers: { 'content-type': 'application/json', 'idempotency-key': crypto.randomUUID() },
  });
  // No Content-Length: a stream of 1 MiB chunks, cut off by the Worker's streaming cap.
  let sent = 0;
  const chunk = new Uint8Array(1024 * 1024).fill(0x20);
  const stream = new ReadableStream({
    pull(c) {
      if (sent >= 60) { c.close(); return; }
      sent += 1;
      c.enqueue(chunk);
    },
  });
  const streamed = fetch(`${BASE}/v1/tokens`, {
    method: 'POST', body: stream, duplex: 'half', headers: { 'content-type': 'application/json' },
  }).catch((e) => ({ status: 'reset', e }));
  const honest = checkout(id, '4242424242424242');
  const [a, b, c] = await Promise.all([sized, streamed, honest]);
  assert.equal(a.status, 413);
  assert.equal((await a.json()).error.code, 'body_too_large');
  // The Worker answers 413 and stops reading; the connection may be torn down before the
  // client reads the answer (workerd resets it), which is as good. wrangler dev's local
  // proxy, still sending the body when workerd stops reading, may then answer the client a
  // 503 of its own (not the Worker's JSON: the Worker's 413 is in its log, checked below).
  const bBody = typeof b.status === 'number' ? await b.text().catch(() => '') : '';
  const proxys503 = b.status === 503 && !bBody.includes('"error"');
  assert.ok(b.status === 413 || b.status === 'reset' || proxys503, `streamed body answered ${b.status}: ${bBody.slice(0, 200)}`);
  // What the Worker read of each refused body (its log says; the proxy in front of it may
  // have taken in more): nothing of the sized one, at most the cap and one chunk of the
  // streamed one.
  let refused = [];
  for (let i = 0; i < 40 && refused.length < 2; i++) {
    await new Promise((ok) => setTimeout(ok, 100));
    refused = readFileSync(process.env.POPTILL_WORKER_LOG, 'utf8').split('\n')
      .filter((l) => l.includes('request body over the cap refused')).map((l) => JSON.parse(l.slice(l.indexOf('{'))));
  }
  const byLength = refused.find((r) => r.by === 'content_length' && r.content_length === huge.length);
  assert.ok(byLength, `no refusal by Content-Length logged: ${JSON.stringify(refused)}`);
  assert.equal(byLength.read_bytes, 0);
  const byStream = refused.find((r) => r.by === 'stream');
  assert.ok(byStream, `no refusal of the stream logged: ${JSON.stringify(refused)}`);
  if (proxys503) {
    const answered = readFileSync(process.env.POPTILL_WORKER_LOG, 'utf8').split('\n')
      .some((l) => l.includes('"path":"/v1/tokens"') && l.includes('"status":413'));
    assert.ok(answered, 'the proxy said 503, but the Worker itself answered the stream 413');
  }
  assert.ok(byStream.read_bytes <= 256 * 1024 + 1024 * 1024, `read ${byStream.read_bytes} bytes`);
  assert.equal(c.status, 201, c.text);
  assert.equal(c.json.status, 'approved');
});

test('nothing can be held before sales open', async () => {
  const now = Date.now();
  const id = await createEvent({ start_ms: now + 3_600_000, end_ms: now + 7_200_000 });
  assertError(await checkout(id, '4242424242424242'), 409, 'sales_not_started');
});

test('a full waiting room sheds joins with 429 and Retry-After', async () => {
  const now = Date.now();
  const id = await createEvent({
    queue: { required: false, mode: 'fifo', sale_start_ms: now - 1000, capacity: 2, admission_rate_per_sec: 1, place_ttl_ms: 60_000, admitted_ttl_ms: 600_000 },
  });
  const joins = [];
  for (let i = 0; i < 4; i++) joins.push(await api('POST', `/v1/events/${id}/queue`));
  const full = joins.filter((j) => j.status !== 200);
  assert.ok(full.length >= 1, joins.map((j) => j.status).join(','));
  for (const f of full) {
    assertError(f, 429, 'queue_full');
    assert.ok(Number(f.headers.get('retry-after')) >= 1, 'Retry-After');
  }
});

test('receipts are capabilities: counting receipt numbers reads nobody else\'s receipt', async () => {
  const id = await createEvent();
  const mine = await checkout(id, '4242424242424242');
  const theirs = await checkout(id, '5555555555554444');
  assert.equal(mine.status, 201, mine.text);
  assert.equal(theirs.status, 201, theirs.text);
  assert.match(mine.json.receipt_url, /^\/v1\/receipts\/rcpt_[^./]+\.[0-9a-f]{32}[A-Za-z0-9_.-]+$/);
  const own = await api('GET', mine.json.receipt_url);
  assert.equal(own.status, 200, own.text);
  assert.equal(own.json.receipt.id, mine.json.receipt_id);
  // The stranger's number is one more than mine: by number alone, or with my token, 404.
  assertError(await api('GET', `/v1/receipts/${theirs.json.receipt_id}`), 404, 'not_found');
  const token = mine.json.receipt_url.split('.').slice(1).join('.');
  assertError(await api('GET', `/v1/receipts/${theirs.json.receipt_id}.${token}`), 404, 'not_found');
  // The page of one's own receipt runs nothing, is framed by nobody and leaks no referrer.
  const page = await api('GET', mine.json.receipt_url, { headers: { accept: 'text/html' } });
  assert.equal(page.status, 200);
  const csp = page.headers.get('content-security-policy') ?? '';
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /script-src/);
  assert.equal(page.headers.get('x-content-type-options'), 'nosniff');
  assert.equal(page.headers.get('referrer-policy'), 'no-referrer');
  assert.match(page.headers.get('cache-control') ?? '', /no-store/);
  const html = await api('GET', `/v1/receipts/${theirs.json.receipt_id}`, { headers: { accept: 'text/html' } });
  assert.equal(html.status, 404);
  assert.ok(!html.text.includes('5555'), 'nothing of the stranger\'s receipt');
});

test('one cart cannot take an event\'s stock: the policy\'s per-order limit, and a merchant cannot raise it', async () => {
  const id = await createEvent();
  const r = await checkout(id, '4000000000000002', { items: [{ sku: 'ticket', quantity: 8 }, { sku: 'ticket', quantity: 3 }] });
  assertError(r, 422, 'purchase_limit');
  assert.match(r.json.error.message, /At most 10 of ticket/);
  const ok = await checkout(id, freshCard(), { items: [{ sku: 'ticket', quantity: 10 }] });
  assert.equal(ok.status, 201, ok.text);
  const m = await merchant();
  const now = Date.now();
  const over = await api('POST', '/v1/admin/events', {
    key: m.api_key,
    body: { title: 'x', jurisdiction: 'DE', currency: 'EUR', start_ms: now - 1000, end_ms: now + 86_400_000, allowed_origins: [],
      skus: [{ id: 'ticket', name: 'Entry', category: 'ticket', price: 1500, stock: 100, max_per_order: 50 }] },
  });
  assertError(over, 422, 'purchase_limit_over_policy');
});

test('one card cannot buy past the limit across orders, whatever token or key it comes with', async () => {
  await healLanes();
  const id = await createEvent();
  const card = freshCard();
  for (const qty of [6, 4]) {
    const r = await checkout(id, card, { items: [{ sku: 'ticket', quantity: qty }] });
    assert.equal(r.status, 201, r.text);
  }
  // A new token and a new Idempotency-Key for the same card: the ledger counts the card.
  const more = await checkout(id, card, { items: [{ sku: 'ticket', quantity: 1 }] });
  assertError(more, 422, 'buyer_limit');
  assert.match(more.json.error.message, /At most 10 of ticket can be bought per card; 10 already/);
  const other = await checkout(id, freshCard(), { items: [{ sku: 'ticket', quantity: 10 }] });
  assert.equal(other.status, 201, other.text);
});

test('a hoarding card holds at most two carts while honest buyers pay', async () => {
  await healLanes();
  // A slow (not failing) acquirer keeps checkouts pending long enough to pile them up.
  await laneControl('fast', { latency_ms: { fixed: 600 } });
  await laneControl('cheap', { latency_ms: { fixed: 600 } });
  try {
    const id = await createEvent();
    const card = freshCard();
    const tokens = await Promise.all(Array.from({ length: 6 }, () => tokenFor(id, card)));
    const pay = (t) => api('POST', `/v1/events/${id}/checkout`, {
      body: { items: [{ sku: 'ticket', quantity: 5 }], token: t.token, cvc_token: t.cvc_token, buyer: { email: 'h@example.org', age_confirmed: true, consent_accepted: true } },
      headers: { 'idempotency-key': crypto.randomUUID() },
    });
    const [hoard, honest] = await Promise.all([Promise.all(tokens.map(pay)), checkout(id, freshCard(), { items: [{ sku: 'ticket', quantity: 2 }] })]);
    const refused = hoard.filter((r) => r.status === 429 && r.json?.error?.code === 'too_many_pending');
    const paid = hoard.filter((r) => r.status === 201);
    assert.equal(paid.length, 2, hoard.map((r) => `${r.status} ${r.json?.status ?? r.json?.error?.code}`).join(', '));
    assert.equal(refused.length, 4);
    for (const r of refused) assert.ok(Number(r.headers.get('retry-after')) > 0, 'a retryable refusal says when');
    assert.equal(honest.status, 201, honest.text);
    const pub = await api('GET', `/v1/events/${id}/public`);
    assert.equal(pub.json.skus.find((s) => s.id === 'ticket').available, 50 - 10 - 2);
  } finally {
    await healLanes();
  }
});

test('card testing: after three declines the card is refused before the acquirer sees it', async () => {
  await healLanes();
  const id = await createEvent();
  const tester = '4000000000009995'; // insufficient funds
  for (let i = 0; i < 3; i++) {
    const r = await checkout(id, tester);
    assert.equal(r.status, 402, r.text);
  }
  const requests = (s) => Object.values(s.lanes ?? s).reduce((n, l) => n + l.requests, 0);
  const before = requests(await simStats());
  const fourth = await checkout(id, tester);
  assertError(fourth, 429, 'card_velocity');
  assert.doesNotMatch(fourth.json.error.message, /insufficient|funds|declin/i, 'the sentence does not coach the tester');
  assert.equal(requests(await simStats()), before, 'the acquirer never saw the fourth try');
  const honest = await checkout(id, freshCard());
  assert.equal(honest.status, 201, honest.text);
});

/** Durable Object storage files under the local state directory (one per object made). */
function objectFiles() {
  const dir = process.env.POPTILL_STATE_DIR;
  assert.ok(dir, 'POPTILL_STATE_DIR must be set: run through scripts/test');
  const out = [];
  const walk = (p) => {
    for (const e of readdirSync(p, { withFileTypes: true })) {
      const q = join(p, e.name);
      if (e.isDirectory()) walk(q);
      else if (/\.sqlite$/.test(e.name)) out.push(q);
    }
  };
  walk(dir);
  return out.sort();
}

test('made-up event ids create no Durable Object, on any public route', async () => {
  const real = await createEvent();
  const good = await checkout(real, freshCard());
  assert.equal(good.status, 201, good.text);
  const forged = real.slice(0, -1) + (real.endsWith('0') ? '1' : '0');
  const ids = [forged, 'evt_ca42a3c8c700', ...Array.from({ length: 20 }, () => `evt_${crypto.randomUUID().replace(/-/g, '')}`)];
  const before = objectFiles();
  assert.ok(before.length > 0, 'the state directory holds the real event\'s object: the count means something');
  for (const id of ids) {
    const answers = await Promise.all([
      api('GET', `/v1/events/${id}/public`),
      api('POST', `/v1/events/${id}/quote`, { body: { items: [{ sku: 'ticket', quantity: 1 }] } }),
      api('POST', `/v1/events/${id}/queue`),
      api('GET', `/v1/events/${id}/queue/qt_x`),
      api('POST', `/v1/events/${id}/checkout`, { body: { items: [{ sku: 'ticket', quantity: 1 }], token: 'tok_x', buyer: {} }, headers: { 'idempotency-key': crypto.randomUUID() } }),
      api('POST', '/v1/tokens', { body: { event_id: id, card: { number: freshCard(), exp_month: 12, exp_year: 2034, cvc: '123' } } }),
    ]);
    for (const a of answers) assert.equal(a.status, 404, `${id}: ${a.status} ${a.text}`);
  }
  assert.deepEqual(objectFiles(), before, 'no object was created for an unknown id');
  // The real event still answers.
  assert.equal((await api('GET', `/v1/events/${real}/public`)).status, 200);
});

test('card routes never answer any page: an event that lists no origins is paid for only through the edge', async () => {
  await healLanes();
  const id = await createEvent({ allowed_origins: [] });
  const evil = { origin: 'https://evil.example' };
  const body = { event_id: id, card: { number: freshCard(), exp_month: 12, exp_year: 2034, cvc: '123' } };
  // Another site's page can neither mint tokens for the event (it used to get `*`)...
  const tok = await api('POST', '/v1/tokens', { body, headers: evil });
  assertError(tok, 403, 'origin_not_allowed');
  assert.notEqual(tok.headers.get('access-control-allow-origin'), '*');
  // ...nor pay with a token it found, nor read a checkout's status.
  const t = await tokenFor(id, freshCard());
  const pay = await api('POST', `/v1/events/${id}/checkout`, {
    body: { items: [{ sku: 'ticket', quantity: 1 }], token: t.token, cvc_token: t.cvc_token, buyer: { email: 'ana@example.org', age_confirmed: true, consent_accepted: true } },
    headers: { ...evil, 'idempotency-key': crypto.randomUUID() },
  });
  assertError(pay, 403, 'origin_not_allowed');
  // The edge's own pages (the card frame) still pay, and get no wildcard either.
  const own = { origin: new URL(BASE).origin };
  const t2 = await api('POST', '/v1/tokens', { body: { ...body, card: { ...body.card, number: freshCard() } }, headers: own });
  assert.equal(t2.status, 201, t2.text);
  const ok = await api('POST', `/v1/events/${id}/checkout`, {
    body: { items: [{ sku: 'ticket', quantity: 1 }], token: t2.json.token, cvc_token: t2.json.cvc_token, buyer: { email: 'ana@example.org', age_confirmed: true, consent_accepted: true } },
    headers: { ...own, 'idempotency-key': crypto.randomUUID() },
  });
  assert.equal(ok.status, 201, ok.text);
  assert.notEqual(ok.headers.get('access-control-allow-origin'), '*');
  // A till route (opening a pay link) still answers the merchant's till page when none are listed.
  const h = await api('POST', `/v1/events/${id}/handover`, { body: { items: [{ sku: 'ticket', quantity: 1 }] }, headers: evil });
  assert.equal(h.status, 201, h.text);
});

test('pay-on-phone sessions of an event are capped: the 1001st is a clear 429, nothing grows without bound', async () => {
  const id = await createEvent();
  const open = () => api('POST', `/v1/events/${id}/handover`, { body: { items: [{ sku: 'ticket', quantity: 1 }] } });
  let made = 0;
  for (let round = 0; round < 50; round++) {
    const rs = await Promise.all(Array.from({ length: 20 }, open));
    for (const r of rs) assert.equal(r.status, 201, r.text);
    made += rs.length;
  }
  assert.equal(made, 1000);
  const over = await open();
  assertError(over, 429, 'too_many_handovers');
  assert.ok(Number(over.headers.get('retry-after')) > 0, 'it says when to try again');
});
