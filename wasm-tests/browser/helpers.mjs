// Shared helpers for the browser tests of the merchant embed: headless Chromium (Debian's
// package) driven by playwright-core, a demo merchant site on its own origin that records
// every request, and the checks that no card number reaches the merchant's page.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startMerchant } from '../../scripts/demo-merchant.mjs';
import { freshCard } from '../../scripts/test-cards.mjs';

export const EDGE = (process.env.POPTILL_URL || '').replace(/\/$/, '');
export const SIM = (process.env.SIM_URL || '').replace(/\/$/, '');
export const ADMIN_KEY = process.env.ADMIN_KEY;
export const EVENT = process.env.POPTILL_DEMO_EVENT;
/** The origin the harness put into the event's allowed origins; the merchant server listens there. */
export const MERCHANT_ORIGIN = process.env.MERCHANT_ORIGIN || 'http://127.0.0.1:8789';
if (!EDGE || !EVENT) throw new Error('POPTILL_URL and POPTILL_DEMO_EVENT must be set: run the browser tests through scripts/test');

/** `visa` is this test file's own card: the demo event limits what one card buys. */
export const CARDS = {
  visa: freshCard(),
  mastercard: '5555555555554444',
  declined: '4000000000000002',
};
const ALL_NUMBERS = Object.values(CARDS);
/** A card number as the buyer may have typed it: plain, in groups of four, with dashes. */
const leakPatterns = (n) => [n, n.replace(/(\d{4})(?=\d)/g, '$1 '), n.replace(/(\d{4})(?=\d)/g, '$1-')];

const SHOTS = fileURLToPath(new URL('../../artifacts/screenshots/', import.meta.url));
mkdirSync(SHOTS, { recursive: true });

// playwright-core gives every launch() a fresh temporary profile (its own --user-data-dir,
// removed on close) and refuses one passed in args; launchPersistentContext would take a
// directory but allows only one context, and the terminal test needs two (till and phone).
export async function launch() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  return { browser, close: () => browser.close() };
}

/** Starts the demo merchant site at MERCHANT_ORIGIN (or, with `other`, on a free port: a foreign origin). */
export async function merchant({ other = false } = {}) {
  const { port, hostname } = new URL(MERCHANT_ORIGIN);
  return startMerchant({ edge: EDGE, host: hostname, port: other ? 0 : Number(port || 80), defaultEvent: EVENT });
}

/**
 * Opens a page and records what the merchant's origin could see: every request the browser
 * sends to `origin`, every console message, and every postMessage the top page receives.
 */
export async function openRecorded(browser, origin, contextOptions = {}) {
  const context = await browser.newContext({ locale: 'en-US', ...contextOptions });
  const page = await context.newPage();
  const seen = { requests: [], console: [], errors: [] };
  page.on('request', (r) => {
    if (new URL(r.url()).origin === origin) seen.requests.push({ url: r.url(), headers: r.headers(), body: r.postData() || '' });
  });
  page.on('console', (m) => seen.console.push(m.text()));
  page.on('pageerror', (e) => seen.errors.push(String(e)));
  await page.addInitScript((o) => {
    if (window.top !== window || location.origin !== o) return;
    window.__poptillMessages = [];
    addEventListener('message', (e) => window.__poptillMessages.push(JSON.stringify(e.data)), true);
  }, origin);
  return { context, page, seen };
}

/** Fails if any card number (or its first digits) reached the merchant page, its console,
 *  its messages, or any request to the merchant's origin (server side and browser side). */
export async function assertNoCardLeak(page, seen, serverRequests) {
  const dom = await page.content();
  const texts = {
    dom,
    console: seen.console.join('\n'),
    requests: JSON.stringify(seen.requests),
    server: JSON.stringify(serverRequests),
    messages: JSON.stringify(await page.evaluate(() => window.__poptillMessages || [])),
    storage: await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie),
  };
  for (const [where, text] of Object.entries(texts)) {
    for (const n of ALL_NUMBERS) {
      for (const pattern of leakPatterns(n)) assert.ok(!text.includes(pattern), `card digits ${pattern.slice(0, 4)}… found in the merchant's ${where}`);
    }
    assert.ok(!/tok_[A-Za-z0-9_-]{20,}/.test(text), `a card token reached the merchant's ${where}`);
  }
  // The recording itself must work, or the checks above prove nothing.
  assert.ok(serverRequests.length >= 1, 'the merchant server saw the page load');
  assert.ok(dom.includes('poptill-checkout'), 'the DOM was captured');
}

export async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

/** Adds `count` of the first buyable item and waits for the quote (the pay button shows a total). */
export async function addFirstItem(page, count = 1) {
  await page.locator('.ptl h2').waitFor({ timeout: 15_000 });
  for (let i = 0; i < count; i++) {
    await page.locator('.ptl li button[aria-label^="Add one"]:not([disabled])').first().click();
  }
  await page.waitForFunction(() => /\d/.test(document.querySelector('.ptl .ptl-go')?.textContent || '') || document.querySelector('.ptl dl'), null, { timeout: 15_000 });
}

/** Answers whatever the policy asks: email, age confirmation, consent. */
export async function answerPrompts(page) {
  const email = page.locator('.ptl input[type=email]');
  if (await email.count()) await email.fill('buyer@example.com');
  for (const box of await page.locator('.ptl input[type=checkbox]').all()) await box.check();
}

/** Types a card into the edge's frame (the only place it is typed). */
export async function typeCard(page, number, { exp = '12/34', cvc = '123' } = {}) {
  const frame = page.frameLocator('.ptl iframe');
  await frame.locator('#number').waitFor({ state: 'visible', timeout: 15_000 });
  await frame.locator('#number').fill(number);
  await frame.locator('#exp').fill(exp);
  await frame.locator('#cvc').fill(cvc);
}

export async function resultOf(page, timeout = 30_000) {
  const box = page.locator('.ptl .ptl-r');
  await box.waitFor({ state: 'visible', timeout });
  return { cls: await box.getAttribute('class'), text: await box.innerText() };
}

/** The simulator's two lanes, as wrangler.toml's LANES names them. */
const LANES = ['fast', 'cheap'];

export async function setPartition(partition) {
  for (const lane of LANES) {
    const r = await fetch(`${SIM}/control/lanes/${lane}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ partition }) });
    assert.ok(r.ok, `simulator control ${lane}: ${r.status}`);
  }
  if (partition === 'none') await resetRouting();
}

/** Makes the Worker forget lane faults that earlier tests injected (open breakers). */
export async function resetRouting() {
  const r = await fetch(`${EDGE}/v1/admin/routing/reset`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  assert.ok(r.ok, `routing reset: ${r.status}`);
}


/** This event's payment intents that took money (authorized or captured), on every lane. */
export async function charges() {
  const out = [];
  for (const lane of LANES) {
    let after = '';
    for (;;) {
      const r = await fetch(`${SIM}/lanes/${lane}/v1/payment_intents?limit=100&expand[]=data.latest_charge${after && `&starting_after=${after}`}`, {
        headers: { authorization: 'Bearer sk_test_browser' },
      });
      assert.equal(r.status, 200, `simulator list on ${lane}`);
      const page = await r.json();
      for (const pi of page.data) {
        if (pi.metadata?.event_id === EVENT && ['succeeded', 'requires_capture'].includes(pi.status)) out.push({ lane, ...pi });
      }
      if (!page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
  }
  return out;
}

/** Both lanes of the simulator answer after `latency_ms` (`{fixed: ms}`; null: as usual). */
export async function setLatency(latency_ms) {
  for (const lane of LANES) {
    const r = await fetch(`${SIM}/control/lanes/${lane}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ latency_ms }) });
    assert.ok(r.ok, `simulator control ${lane}: ${r.status}`);
  }
}
