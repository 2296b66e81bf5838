// Browser test of a till's pay link that runs out: the till asks for a 5 s lifetime
// (data-ttl), the till then shows the sale as expired, the phone page says so and cannot
// pay, and the edge refuses a checkout for the session (410 handover_expired).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  EDGE, EVENT, CARDS, launch, merchant, openRecorded, shot,
  addFirstItem, answerPrompts, typeCard, setPartition,
} from './helpers.mjs';

let chrome, shop;
before(async () => {
  await setPartition('none');
  chrome = await launch();
  shop = await merchant();
});
after(async () => {
  await shop?.close();
  await chrome?.close();
});

const handover = (body) => fetch(`${EDGE}/v1/events/${encodeURIComponent(EVENT)}/handover`, {
  method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
});

test('the handover lifetime is bounded (5..1800 s) and defaults to 600 s', async () => {
  const pub = await (await fetch(`${EDGE}/v1/events/${encodeURIComponent(EVENT)}/public`)).json();
  const items = [{ sku: pub.skus[0].id, quantity: 1 }];
  for (const ttl_seconds of [4, 1801, 0, -5]) {
    const r = await handover({ items, ttl_seconds });
    const j = await r.json();
    assert.equal(r.status, 422, `ttl ${ttl_seconds}: ${r.status} ${JSON.stringify(j)}`);
    assert.equal(j.error?.code, 'invalid_ttl');
    assert.match(j.error?.message, /between 5 and 1800 seconds/);
  }
  const unknown = await handover({ items, ttl: 60 });
  assert.ok(unknown.status >= 400 && unknown.status < 500, `an unknown field is refused: ${unknown.status}`);
  for (const [body, want] of [[{ items }, 600_000], [{ items, ttl_seconds: 5 }, 5_000], [{ items, ttl_seconds: 1800 }, 1_800_000]]) {
    const r = await handover(body);
    const j = await r.json();
    assert.equal(r.status, 201, JSON.stringify(j));
    assert.equal(j.expires_ms - j.created_ms, want, JSON.stringify(body));
  }
});

test('a till session with a 5 s lifetime expires: till and phone say so, nobody can pay', async () => {
  const till = await openRecorded(chrome.browser, shop.url, { viewport: { width: 1024, height: 900 } });
  await till.page.goto(`${shop.url}/?event=${encodeURIComponent(EVENT)}&mode=terminal&ttl=5`);
  await addFirstItem(till.page, 1);
  await till.page.locator('.ptl .ptl-go').click();
  await till.page.locator('.ptl-qr img').waitFor({ timeout: 15_000 });
  const payUrl = await till.page.locator('.ptl-u').innerText();
  const sessionId = new URL(payUrl).pathname.split('/').pop();
  const s = await (await fetch(`${EDGE}/v1/handover/${sessionId}`)).json();
  assert.equal(s.expires_ms - s.created_ms, 5_000, 'the till asked for 5 s (data-ttl)');

  // The phone opens the link while it is still open.
  const phone = await chrome.browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, locale: 'en-US' });
  const p = await phone.newPage();
  const phoneErrors = [];
  p.on('pageerror', (e) => phoneErrors.push(String(e)));
  await p.goto(payUrl);
  await p.locator('.ptl dd.ptl-t').waitFor({ timeout: 15_000 });

  // The till notices the expiry by itself.
  await till.page.locator('.ptl .ptl-r.declined').waitFor({ timeout: 20_000 });
  assert.match(await till.page.locator('.ptl .ptl-r').innerText(), /This payment request has expired/);
  assert.match(await till.page.locator('.ptl [role=status]').innerText(), /expired/);
  assert.equal(await till.page.locator('.ptl-qr').isVisible(), false, 'the QR code is no longer offered');
  await shot(till.page, 'expiry-1-till');

  // The phone, opened in time, tries to pay now: refused, and told the link expired.
  await answerPrompts(p);
  await typeCard(p, CARDS.visa);
  await p.locator('.ptl .ptl-go').click();
  await p.locator('.ptl .ptl-r.declined').waitFor({ timeout: 20_000 });
  assert.match(await p.locator('.ptl .ptl-r').innerText(), /This payment request has expired/);
  assert.equal(await p.locator('.ptl iframe').isVisible(), false, 'no card entry once expired');
  await shot(p, 'expiry-2-phone');

  // Reloaded, the phone page says so at once and offers no card entry.
  await p.reload();
  await p.locator('.ptl .ptl-r').waitFor({ timeout: 15_000 });
  assert.match(await p.locator('.ptl .ptl-r').innerText(), /This payment request has expired/);
  assert.equal(await p.locator('.ptl iframe').count(), 0);
  assert.deepEqual(phoneErrors, []);

  // The edge refuses a checkout for the expired session, even with a fresh card token.
  const tok = await fetch(`${EDGE}/v1/tokens`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ event_id: EVENT, card: { number: CARDS.mastercard, exp_month: 12, exp_year: 2034, cvc: '123' } }),
  }).then((x) => x.json());
  assert.match(tok.token, /^tok_/);
  const res = await fetch(`${EDGE}/v1/events/${encodeURIComponent(EVENT)}/checkout`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'idempotency-key': crypto.randomUUID() },
    body: JSON.stringify({ items: s.items, token: tok.token, cvc_token: tok.cvc_token, buyer: { email: 'b@example.com', age_confirmed: true, consent_accepted: true }, handover_session: sessionId }),
  });
  const body = await res.json();
  assert.equal(res.status, 410, JSON.stringify(body));
  assert.equal(body.error?.code, 'handover_expired');
  assert.equal((await (await fetch(`${EDGE}/v1/handover/${sessionId}`)).json()).status, 'expired');
  await phone.close();
  await till.context.close();
});
