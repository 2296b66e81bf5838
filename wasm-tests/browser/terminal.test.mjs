// Browser test of terminal mode: staff start a sale on the merchant's till page, a second
// page plays the buyer's phone (opening the QR code's pay URL), pays there, and the till
// updates live and shows the receipt. A paid session cannot be paid again.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  EDGE, EVENT, CARDS, launch, merchant, openRecorded, assertNoCardLeak, shot,
  addFirstItem, answerPrompts, typeCard, resultOf, setPartition,
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

test('terminal handover: QR code, pay on the phone, till updates live, no double payment', async () => {
  const till = await openRecorded(chrome.browser, shop.url, { viewport: { width: 1024, height: 900 } });
  await till.page.goto(`${shop.url}/?event=${encodeURIComponent(EVENT)}&mode=terminal`);
  await addFirstItem(till.page, 2);
  assert.equal(await till.page.locator('.ptl iframe').count(), 0, 'the till has no card entry');
  const start = till.page.locator('.ptl .ptl-go');
  assert.equal(await start.innerText(), 'Pay on phone');
  const totalText = await till.page.locator('.ptl dd.ptl-t').innerText();
  await start.click();

  // The QR code: an SVG from the edge that the browser could decode and draw.
  const img = till.page.locator('.ptl-qr img');
  await img.waitFor({ timeout: 15_000 });
  await till.page.waitForFunction(() => document.querySelector('.ptl-qr img')?.naturalWidth > 0, null, { timeout: 10_000 });
  const qrSrc = await img.getAttribute('src');
  const qr = await fetch(qrSrc);
  assert.equal(qr.status, 200);
  assert.match(qr.headers.get('content-type'), /image\/svg\+xml/);
  assert.match(await qr.text(), /<svg[^>]*viewBox/);
  const payUrl = await till.page.locator('.ptl-u').innerText();
  assert.ok(payUrl.startsWith(`${EDGE}/p/`), payUrl);
  assert.match(await img.getAttribute('alt'), /Scan to pay/);
  assert.match(await till.page.locator('.ptl [role=status]').innerText(), /Waiting for payment/);
  await shot(till.page, 'terminal-1-qr');
  const sessionId = new URL(payUrl).pathname.split('/').pop();
  const status = await (await fetch(`${EDGE}/v1/handover/${sessionId}`)).json();
  assert.equal(status.status, 'open');
  // The till added two of the first item on sale; the session carries them for the phone.
  const pub = await (await fetch(`${EDGE}/v1/events/${encodeURIComponent(EVENT)}/public`)).json();
  const firstSku = pub.skus.find((s) => s.available !== false && s.available !== 0);
  assert.equal(status.event_id, EVENT);
  assert.deepEqual(status.items, [{ sku: firstSku.id, quantity: 2 }]);

  // The phone: another browser context (no shared state), German, small screen.
  const phone = await chrome.browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, locale: 'de-DE' });
  const p = await phone.newPage();
  const phoneErrors = [];
  p.on('pageerror', (e) => phoneErrors.push(String(e)));
  await p.goto(payUrl);
  await p.locator('.ptl dd.ptl-t').waitFor({ timeout: 15_000 });
  const digits = (x) => x.replace(/\D/g, '');
  assert.equal(digits(await p.locator('.ptl dd.ptl-t').innerText()), digits(totalText), 'the phone shows the till\'s total');
  assert.equal(await p.evaluate(() => document.documentElement.lang), 'de');
  assert.equal(await p.locator('.ptl li button').count(), 0, 'the phone cannot change the items');
  await answerPrompts(p);
  await typeCard(p, CARDS.visa);
  await shot(p, 'terminal-2-phone');
  await p.locator('.ptl .ptl-go').click();
  const r = await resultOf(p);
  await shot(p, 'terminal-3-phone-paid');
  assert.match(r.cls, /approved/, r.text);
  assert.match(r.text, /Zahlung bestätigt/);
  assert.deepEqual(phoneErrors, []);

  // The till learns of the payment by itself (WebSocket, or polling as fallback).
  await till.page.locator('.ptl .ptl-r.approved').waitFor({ timeout: 15_000 });
  const tillResult = await till.page.locator('.ptl .ptl-r').innerText();
  assert.match(tillResult, /Paid/);
  assert.match(tillResult, /View receipt/);
  assert.match(await till.page.locator('.ptl [role=status]').innerText(), /Paid/);
  await shot(till.page, 'terminal-4-till-paid');

  // A paid session cannot be paid twice: the phone page says so...
  await p.reload();
  await p.locator('.ptl .ptl-r').waitFor({ timeout: 15_000 });
  assert.match(await p.locator('.ptl .ptl-r').innerText(), /bereits bezahlt/);
  assert.equal(await p.locator('.ptl iframe').count(), 0, 'no card entry for a paid session');
  await shot(p, 'terminal-5-phone-already-paid');
  // ...and the edge refuses a second checkout for it, even with a fresh card token.
  const tok = await fetch(`${EDGE}/v1/tokens`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ event_id: EVENT, card: { number: CARDS.mastercard, exp_month: 12, exp_year: 2034, cvc: '123' } }),
  }).then((x) => x.json());
  assert.match(tok.token, /^tok_/);
  const again = await fetch(`${EDGE}/v1/events/${encodeURIComponent(EVENT)}/checkout`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'idempotency-key': crypto.randomUUID() },
    body: JSON.stringify({ items: [{ sku: firstSku.id, quantity: 2 }], token: tok.token, cvc_token: tok.cvc_token, buyer: { email: 'b@example.com', age_confirmed: true, consent_accepted: true }, handover_session: sessionId }),
  });
  const againBody = await again.json();
  assert.equal(again.status, 409, `a second payment is a conflict, got ${again.status} ${JSON.stringify(againBody)}`);
  assert.ok(againBody.error?.message?.length > 10, 'with a sentence that says why');
  assert.notEqual(againBody.status, 'approved');
  assert.equal((await (await fetch(`${EDGE}/v1/handover/${sessionId}`)).json()).status, 'paid');

  // New sale resets the till.
  await till.page.getByRole('button', { name: 'New sale' }).click();
  await till.page.locator('.ptl li').first().waitFor();
  assert.equal(await till.page.locator('.ptl-qr').count(), 0);
  await assertNoCardLeak(till.page, till.seen, shop.requests);
  await phone.close();
  await till.context.close();
});

test('an unknown handover session gets a clear message on the phone', async () => {
  const ctx = await chrome.browser.newContext({ locale: 'en-US' });
  const p = await ctx.newPage();
  await p.goto(`${EDGE}/p/hs_doesnotexist`);
  const alert = p.locator('[role=alert]');
  await alert.waitFor({ timeout: 15_000 });
  assert.ok((await alert.innerText()).length > 10);
  await ctx.close();
});
