// The operations dashboard in headless Chromium: real checkouts (approved, declined, queued
// behind a partitioned acquirer) on a fresh event, then /ops/events/{id} opened with the
// merchant's key: the charts show exactly the numbers of the metrics JSON and of the
// checkouts made, update live after one more checkout, and the key never appears in a URL.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { EDGE, launch, shot, setPartition } from './helpers.mjs';

const MERCHANT_KEY = process.env.POPTILL_DEMO_MERCHANT_KEY;
let chrome;
before(async () => { await setPartition('none'); chrome = await launch(); });
after(async () => { await setPartition('none').catch(() => {}); await chrome?.close(); });

async function api(method, path, body, key) {
  const headers = { 'content-type': 'application/json' };
  if (key) headers.authorization = `Bearer ${key}`;
  const r = await fetch(EDGE + path, { method, headers, body: body && JSON.stringify(body) });
  return { status: r.status, json: await r.json().catch(() => undefined) };
}

async function pay(eventId, number) {
  const t = await api('POST', '/v1/tokens', { event_id: eventId, card: { number, exp_month: 12, exp_year: 2034, cvc: '123' } });
  assert.equal(t.status, 201, JSON.stringify(t.json));
  const body = { items: [{ sku: 'lemonade', quantity: 1 }], token: t.json.token, cvc_token: t.json.cvc_token, buyer: { email: 'ana@example.org', age_confirmed: true, consent_accepted: true } };
  return api('POST', `/v1/events/${eventId}/checkout`, body);
}

const text = (page, key) => page.locator(`[data-metric="${key}"]`).first().textContent();

test('the dashboard charts the real numbers of real checkouts and updates live', async () => {
  assert.ok(MERCHANT_KEY, 'the seeded merchant key (scripts/seed) is set');
  const now = Date.now();
  const ev = await api('POST', '/v1/admin/events', {
    title: 'Dashboard night', jurisdiction: 'DE', currency: 'EUR', start_ms: now - 60_000, end_ms: now + 86_400_000,
    skus: [{ id: 'lemonade', name: 'Lemonade', category: 'food_drink', price: 350, stock: 100 }],
  }, MERCHANT_KEY);
  assert.equal(ev.status, 201, JSON.stringify(ev.json));
  const id = ev.json.event_id;
  const outcomes = [];
  for (const n of ['4242424242424242', '4242424242424242', '4000000000000002']) outcomes.push((await pay(id, n)).json.status);
  await setPartition('refuse');
  outcomes.push((await pay(id, '4242424242424242')).json.status);
  // The lanes stay down while the page is read, so the stored payment is still queued then.
  assert.deepEqual(outcomes, ['approved', 'approved', 'declined', 'queued']);

  const metrics = await api('GET', `/v1/admin/events/${id}/metrics`, undefined, MERCHANT_KEY);
  assert.equal(metrics.status, 200);
  const m = metrics.json;
  assert.deepEqual([m.funnel.checkout_started, m.funnel.approved, m.funnel.declined, m.funnel.queued], [4, 2, 1, 1]);

  const context = await chrome.browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 1100 } });
  const page = await context.newPage();
  const urls = [];
  const errors = [];
  page.on('request', (r) => urls.push(r.url()));
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${EDGE}/ops/events/${id}`);
  // No key yet: the form asks for one, nothing is shown.
  await page.locator('#key-form').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#dash').isVisible(), false);
  await page.fill('#key', MERCHANT_KEY);
  await page.click('#key-form button[type=submit]');
  await page.locator('[data-metric="funnel.checkout_started"]').waitFor({ timeout: 15_000 });

  // The funnel shows the metrics JSON, which matches the checkouts made.
  for (const k of ['checkout_started', 'approved', 'declined', 'queued', 'token_issued']) {
    assert.equal(await text(page, `funnel.${k}`), String(m.funnel[k]), k);
  }
  assert.equal(await text(page, 'funnel.conversion_rate'), '75.0 %');
  // Conversion by latency bucket: the bars add up to the checkouts and the conversions.
  const bars = await page.$$eval('#conversion g[data-started]', (gs) => gs.map((g) => [Number(g.dataset.started), Number(g.dataset.converted)]));
  assert.equal(bars.reduce((n, b) => n + b[0], 0), 4);
  assert.equal(bars.reduce((n, b) => n + b[1], 0), 3);
  assert.equal(bars.length, m.conversion_by_latency.length);
  // Latency over time: one line (or point) per PoP in the JSON.
  const colos = await page.$$eval('#series g[data-colo]', (gs) => gs.map((g) => g.dataset.colo));
  assert.deepEqual(colos, Object.keys(m.latency_series));
  assert.ok(await page.locator('#series circle').count() >= 1);
  // Queued exposure and decline reasons.
  assert.equal(await text(page, 'queue.queued_count'), '1');
  assert.equal(await page.locator('[data-metric="queue.queued_exposure"]').getAttribute('data-minor'), String(m.queue.queued_exposure));
  assert.equal(m.queue.queued_exposure, 350);
  const [reason] = Object.keys(m.declines);
  assert.equal(await text(page, `declines.${reason}`), '1');
  assert.match(await page.locator('#cost').innerText(), /Total lane cost €/);
  await shot(page, 'dashboard');

  // Live: one more approved checkout shows up without a reload.
  await setPartition('none');
  assert.equal((await pay(id, '4242424242424242')).json.status, 'approved');
  await page.waitForFunction(() => document.querySelector('[data-metric="funnel.checkout_started"]')?.textContent === '5', null, { timeout: 15_000 });
  assert.equal(await text(page, 'funnel.approved'), '3');
  await shot(page, 'dashboard-live');

  // The key stays in this tab's sessionStorage and never in a URL the server could log.
  assert.equal(await page.evaluate(() => sessionStorage.getItem('poptill.ops.key')), MERCHANT_KEY);
  assert.ok(urls.length >= 3, 'requests were recorded');
  for (const u of urls) assert.ok(!u.includes(MERCHANT_KEY), `key in URL ${u}`);
  assert.deepEqual(errors, []);
  await context.close();
});

test('a wrong key is refused and the form comes back; a #key= fragment is taken and cleared', async () => {
  const context = await chrome.browser.newContext();
  const page = await context.newPage();
  await page.goto(`${EDGE}/ops/events/${process.env.POPTILL_DEMO_EVENT}#key=not-a-key`);
  await page.waitForFunction(() => /not accepted/.test(document.getElementById('status').textContent), null, { timeout: 15_000 });
  assert.equal(await page.locator('#key-form').isVisible(), true);
  assert.equal(new URL(page.url()).hash, '', 'the fragment was removed from the address bar');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('poptill.ops.key')), null);
  await context.close();
});
