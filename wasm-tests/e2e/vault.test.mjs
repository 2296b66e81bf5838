// End-to-end: card tokenization in the PoP and the vault's key administration.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { before } from 'node:test';
import { api, admin, assertError, createEvent } from './helpers.mjs';

let EVENT;
before(async () => { EVENT = await createEvent(); });
const card = (number, extra = {}) => ({ number, exp_month: 12, exp_year: 2034, cvc: '123', ...extra });
const tokenize = (c, event_id = EVENT) => api('POST', '/v1/tokens', { body: { event_id, card: c } });

test('a valid card becomes an opaque token with brand and last four only', async () => {
  for (const [number, brand] of [['4242424242424242', 'visa'], ['5555555555554444', 'mastercard'], ['378282246310005', 'amex']]) {
    const cvc = brand === 'amex' ? '1234' : '123';
    const r = await tokenize(card(number, { cvc }));
    assert.equal(r.status, 201, r.text);
    assert.match(r.json.token, /^tok_[A-Za-z0-9_-]{40,}$/);
    assert.match(r.json.cvc_token, /^cvt_/);
    assert.equal(r.json.brand, brand);
    assert.equal(r.json.last4, number.slice(-4));
    assert.ok(!r.text.includes(number), 'the response never carries the card number');
    assert.ok(!r.text.includes(number.slice(0, 8)), 'nor its first digits');
    const expires = Date.parse(r.json.expires_at);
    assert.ok(expires > Date.now() && expires <= Date.now() + 3_600_000 + 5_000, r.json.expires_at);
  }
});

test('two tokens of one card differ (random nonce)', async () => {
  const a = await tokenize(card('4242424242424242'));
  const b = await tokenize(card('4242424242424242'));
  assert.notEqual(a.json.token, b.json.token);
});

test('bad cards get clear 4xx errors that never echo the number', async () => {
  let r = await tokenize(card('4242424242424241'));
  assertError(r, 422, 'invalid_card_number');
  assert.ok(!r.text.includes('4242424242424241'));
  assertError(await tokenize(card('4242424242424242', { exp_year: 2020 })), 422, 'card_expired');
  assertError(await tokenize(card('4242424242424242', { exp_month: 13 })), 422, 'invalid_expiry');
  assertError(await tokenize(card('378282246310005', { cvc: '123' })), 422, 'invalid_cvc');
  r = await api('POST', '/v1/tokens', { body: '{"event_id": "e", "card": {"number": "4242424242424242",' });
  assertError(r, 400, 'invalid_json');
  r = await api('POST', '/v1/tokens', { body: { event_id: 'e', card: { number: '4242424242424242', exp_month: '4242424242424242', exp_year: 2030 } } });
  assertError(r, 400, 'invalid_body');
  assert.ok(!r.text.includes('4242424242424242'), r.text);
  assertError(await api('POST', '/v1/tokens', { body: { event_id: 'e' } }), 400, 'invalid_body');
});

test('key admin needs the operator key; a wrong key gets the same 401', async () => {
  const none = await api('GET', '/v1/admin/keys');
  const wrong = await api('GET', '/v1/admin/keys', { key: 'not-the-key' });
  assertError(none, 401, 'unauthorized');
  assertError(wrong, 401, 'unauthorized');
  assert.equal(none.json.error.message, wrong.json.error.message);
});

const listedCreated = (keys, kid) => keys.find((k) => k.kid === kid)?.created;

test('keys are listed without key material, rotated and revoked', async () => {
  await tokenize(card('4242424242424242'));
  let r = await admin('GET', '/v1/admin/keys');
  assert.equal(r.status, 200, r.text);
  const first = r.json.current;
  // dk_<colo>_<created unix seconds>_<16 hex>: the time lets another PoP tell a key KV has
  // not brought there yet from one that is gone.
  const kid = /^dk_[a-z0-9]+_(\d+)_[0-9a-f]{16}$/.exec(first);
  assert.ok(kid, first);
  const created = new Date(listedCreated(r.json.keys, first)).getTime();
  assert.equal(Number(kid[1]), Math.floor(created / 1000), 'the kid carries its creation time');
  assert.equal(r.json.rotate_every_seconds, 900);
  assert.equal(r.json.grace_seconds, 3600);
  const listed = r.json.keys.find((k) => k.kid === first);
  assert.equal(listed.state, 'active');
  assert.ok(!/wrapped|secret|key_b64/i.test(JSON.stringify(r.json.keys)), 'no key material');

  r = await admin('POST', '/v1/admin/keys/rotate');
  assert.equal(r.status, 201, r.text);
  const second = r.json.kid;
  assert.notEqual(second, first);
  const t = await tokenize(card('4242424242424242'));
  assert.equal(t.status, 201);
  r = await admin('GET', '/v1/admin/keys');
  assert.equal(r.json.current, second);

  r = await admin('POST', `/v1/admin/keys/${first}/revoke`);
  assert.equal(r.status, 200, r.text);
  r = await admin('GET', '/v1/admin/keys');
  assert.equal(r.json.keys.find((k) => k.kid === first).state, 'revoked');
  assertError(await admin('POST', '/v1/admin/keys/dk_nope_0000000000000000/revoke'), 404, 'not_found');
});

test("tokens are only issued to the event's allowed origins", async () => {
  const id = await createEvent({ allowed_origins: ['https://shop.example'] });
  const body = { event_id: id, card: card('4242424242424242') };
  const ok = await api('POST', '/v1/tokens', { body, headers: { origin: 'https://shop.example' } });
  assert.equal(ok.status, 201, ok.text);
  assert.equal(ok.headers.get('access-control-allow-origin'), 'https://shop.example');
  assertError(await api('POST', '/v1/tokens', { body, headers: { origin: 'https://evil.example' } }), 403, 'origin_not_allowed');
  assertError(await api('POST', '/v1/tokens', { body: { ...body, event_id: 'evt_000000000000' } }), 404, 'not_found');
});
