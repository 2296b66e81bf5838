// Browser tests of the merchant embed: a merchant page on its own origin embeds
// checkout.js; the buyer pays with test cards in the edge's frame. After every flow, no card
// number may appear in the merchant page's DOM, console, messages, or requests.
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
  await setPartition('none').catch(() => {});
  await shop?.close();
  await chrome?.close();
});

async function openShop(contextOptions) {
  const rec = await openRecorded(chrome.browser, shop.url, contextOptions);
  await rec.page.goto(`${shop.url}/?event=${encodeURIComponent(EVENT)}`);
  return rec;
}

const payButton = (page) => page.locator('.ptl .ptl-go');

test('checkout.js loads from the edge only, with a short cache', async () => {
  const res = await fetch(`${EDGE}/v1/checkout.js`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /javascript/);
  assert.match(res.headers.get('cache-control') || '', /max-age=300/);
  const text = await res.text();
  assert.ok(!/\bimport\s*\(|importScripts|\.src\s*=\s*['"`]http/.test(text), 'checkout.js loads no other script');
});

test('a buyer pays with a test card; the merchant never sees the number', async () => {
  const { context, page, seen } = await openShop();
  await addFirstItem(page, 2);
  await answerPrompts(page);
  await shot(page, 'checkout-1-cart');
  assert.match(await payButton(page).innerText(), /^Pay \D*\d/, 'the pay button names the amount');
  await typeCard(page, CARDS.visa);
  await shot(page, 'checkout-2-card');
  await payButton(page).click();
  const r = await resultOf(page);
  await shot(page, 'checkout-3-approved');
  assert.match(r.cls, /approved/, r.text);
  assert.match(r.text, /VISA •••• 4242/);
  const receipt = page.locator('.ptl-r a');
  assert.equal(await receipt.innerText(), 'View receipt');
  assert.ok((await receipt.getAttribute('href')).startsWith(EDGE), 'the receipt lives on the edge');
  assert.match(await page.locator('.ptl [role=status]').innerText(), /approved/i, 'the outcome is announced');
  // The card frame is gone after payment; focus moved to the result for screen readers.
  assert.equal(await page.evaluate(() => document.activeElement?.classList.contains('ptl-r')), true);
  assert.deepEqual(seen.errors, []);
  await assertNoCardLeak(page, seen, shop.requests);
  await context.close();
});

test('a declined card is explained and another card can be used', async () => {
  const { context, page, seen } = await openShop();
  await addFirstItem(page);
  await answerPrompts(page);
  await typeCard(page, CARDS.declined);
  await payButton(page).click();
  let r = await resultOf(page);
  await shot(page, 'checkout-4-declined');
  assert.match(r.cls, /declined/, r.text);
  assert.match(r.text, /declined/i);
  assert.match(await page.locator('.ptl [role=status]').innerText(), /declined/i);
  assert.equal(await payButton(page).isVisible(), true, 'the buyer can try again');
  await typeCard(page, CARDS.mastercard);
  await payButton(page).click();
  await page.locator('.ptl .ptl-r.approved').waitFor({ timeout: 30_000 });
  r = await resultOf(page);
  assert.match(r.text, /MASTERCARD •••• 4444/);
  assert.deepEqual(seen.errors, []);
  await assertNoCardLeak(page, seen, shop.requests);
  await context.close();
});

test('an invalid card and missing answers are caught before anything is sent', async () => {
  const { context, page, seen } = await openShop();
  await addFirstItem(page);
  const hasPrompts = await page.locator('.ptl input[type=email], .ptl input[type=checkbox]').count();
  await typeCard(page, '4242424242424241');
  if (hasPrompts) {
    await payButton(page).click();
    assert.match(await page.locator('.ptl [role=status]').innerText(), /please/i);
    assert.equal(await page.locator('.ptl [aria-invalid=true]').count(), 1);
    await answerPrompts(page);
  }
  await payButton(page).click();
  const frame = page.frameLocator('.ptl iframe');
  await frame.locator('#number[aria-invalid=true]').waitFor({ timeout: 10_000 });
  assert.match(await frame.locator('#e-number').innerText(), /card number/i);
  assert.match(await page.locator('.ptl [role=status]').innerText(), /card number/i);
  assert.equal(await page.locator('.ptl .ptl-r').isVisible(), false, 'no order was placed');
  await shot(page, 'checkout-5-invalid');
  await assertNoCardLeak(page, seen, shop.requests);
  await context.close();
});

test('a payment queued while the acquirers are unreachable is explained honestly', async () => {
  await setPartition('refuse');
  try {
    const { context, page, seen } = await openShop();
    await addFirstItem(page);
    await answerPrompts(page);
    await typeCard(page, CARDS.visa);
    await payButton(page).click();
    const r = await resultOf(page, 60_000);
    await shot(page, 'checkout-6-queued');
    assert.match(r.cls, /queued/, r.text);
    assert.match(r.text, /not yet confirmed/);
    assert.match(r.text, /do not pay again/);
    assert.ok(await page.locator('.ptl-r a').count(), 'a receipt link shows the status later');
    await assertNoCardLeak(page, seen, shop.requests);
    await context.close();
  } finally {
    await setPartition('none');
  }
});

test('on a phone, in German, with keyboard only', async () => {
  const { context, page, seen } = await openShop({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, locale: 'de-DE' });
  await page.locator('.ptl h2').waitFor();
  // The merchant page is English, so the checkout starts in English; the buyer switches.
  await page.locator('.ptl select').selectOption('de');
  await page.locator('.ptl li button[aria-label^="Eins mehr"]:not([disabled])').first().focus();
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => /Bezahlen .*\d/.test(document.querySelector('.ptl .ptl-go')?.textContent || ''));
  await answerPrompts(page);
  await typeCard(page, CARDS.visa);
  const frameTitle = await page.locator('.ptl iframe').getAttribute('title');
  assert.equal(frameTitle, 'Kartendaten');
  // Tap targets are at least 44 px high.
  for (const b of await page.locator('.ptl button').all()) {
    const box = await b.boundingBox();
    if (box) assert.ok(box.height >= 44, `button ${await b.innerText()} is ${box.height}px high`);
  }
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 390, `no horizontal scrolling on a phone (${width}px)`);
  // Enter in the card frame submits, like a form.
  await page.frameLocator('.ptl iframe').locator('#cvc').press('Enter');
  const r = await resultOf(page);
  await shot(page, 'checkout-7-phone-de');
  assert.match(r.text, /Zahlung bestätigt/);
  assert.match(r.text, /Beleg ansehen/);
  await assertNoCardLeak(page, seen, shop.requests);
  await context.close();
});

test('a site that is not an allowed origin gets no checkout and no card frame', async () => {
  const other = await merchant({ other: true });
  try {
    const { context, page } = await openRecorded(chrome.browser, other.url);
    await page.goto(`${other.url}/?event=${encodeURIComponent(EVENT)}`);
    // The frame itself, embedded directly by the foreign page, even claiming an allowed origin.
    await page.evaluate(([edge, event, claimed]) => {
      for (const origin of [location.origin, claimed]) {
        const f = document.createElement('iframe');
        f.className = 'probe';
        f.src = `${edge}/v1/frame?event=${encodeURIComponent(event)}&origin=${encodeURIComponent(origin)}`;
        document.body.append(f);
      }
    }, [EDGE, EVENT, shop.url]);
    await page.waitForTimeout(3000);
    await shot(page, 'checkout-8-foreign-origin');
    for (const f of page.frames().filter((fr) => fr !== page.mainFrame())) {
      const visible = await f.evaluate(() => !!document.querySelector('#number') && !document.getElementById('card')?.hidden).catch(() => false);
      assert.equal(visible, false, `card fields shown in ${f.url()}`);
    }
    const pay = page.locator('.ptl .ptl-go');
    assert.ok(!(await pay.count()) || await pay.isDisabled(), 'no way to pay from a foreign origin');
    await context.close();
  } finally {
    await other.close();
  }
});
