// Browser test of the embed's languages: an event in France (policy languages fr, en),
// embedded with data-lang="fr", shows French labels in the page script and in the card
// frame, and a payment there works end to end.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  EDGE, ADMIN_KEY, MERCHANT_ORIGIN, CARDS, launch, merchant, openRecorded, assertNoCardLeak, shot,
  answerPrompts, typeCard, resultOf, setPartition,
} from './helpers.mjs';

/** Creates a merchant and an event through the admin API, as scripts/seed does. */
async function createEvent({ jurisdiction, currency, title }) {
  const call = async (path, body, key) => {
    const r = await fetch(EDGE + path, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body: JSON.stringify(body) });
    const j = await r.json();
    assert.ok(r.ok, `${path}: ${r.status} ${JSON.stringify(j)}`);
    return j;
  };
  const m = await call('/v1/admin/merchants', { name: `${title} merchant` }, ADMIN_KEY);
  const now = Date.now();
  const e = await call('/v1/admin/events', {
    title, jurisdiction, currency, start_ms: now - 3600_000, end_ms: now + 86400_000,
    skus: [{ id: 'entry', name: 'Entrée', category: 'ticket', price: 1200, stock: 50 }],
    allowed_origins: [MERCHANT_ORIGIN],
  }, m.api_key);
  return e.event_id;
}

let chrome, shop, frEvent;
before(async () => {
  await setPartition('none');
  chrome = await launch();
  shop = await merchant();
  frEvent = await createEvent({ jurisdiction: 'FR', currency: 'EUR', title: 'Marché de nuit' });
});
after(async () => {
  await shop?.close();
  await chrome?.close();
});

test('an event in France speaks French (page and card frame) and takes a payment', async () => {
  const pub = await (await fetch(`${EDGE}/v1/events/${encodeURIComponent(frEvent)}/public`)).json();
  assert.ok(pub.languages.includes('fr'), `the FR policy names French: ${JSON.stringify(pub.languages)}`);

  // An English browser: the language comes from the event's languages and data-lang.
  const { context, page, seen } = await openRecorded(chrome.browser, shop.url, { locale: 'en-US' });
  await page.goto(`${shop.url}/?event=${encodeURIComponent(frEvent)}&lang=fr`);
  await page.locator('.ptl h2').waitFor({ timeout: 15_000 });
  assert.equal(await page.locator('section.ptl').getAttribute('lang'), 'fr');
  assert.equal(await page.locator('.ptl h3').first().innerText(), 'Articles');
  await page.locator('.ptl li button[aria-label^="Ajouter un"]:not([disabled])').first().click();
  const pay = page.locator('.ptl .ptl-go');
  await page.waitForFunction(() => /\d/.test(document.querySelector('.ptl .ptl-go')?.textContent || ''), null, { timeout: 15_000 });
  assert.match(await pay.innerText(), /^Payer \d+,\d\d\s?€$/, 'the pay button is French, with a French amount');
  assert.match(await page.locator('.ptl').innerText(), /Votre commande/);
  assert.match(await page.locator('.ptl').innerText(), /Données de carte/);

  // The card frame (the edge's origin) is French too.
  const frame = page.frameLocator('.ptl iframe');
  await frame.locator('#number').waitFor({ state: 'visible', timeout: 15_000 });
  assert.equal(await frame.locator('#l-number').innerText(), 'Numéro de carte');
  assert.equal(await frame.locator('#l-exp').innerText(), "Date d'expiration (MM/AA)");
  assert.equal(await frame.locator('#l-cvc').innerText(), 'Cryptogramme');
  assert.equal(await frame.locator('html').getAttribute('lang'), 'fr');
  // A bad card number is refused in French, before anything is sent.
  await typeCard(page, '4242424242424241');
  await answerPrompts(page);
  await pay.click();
  await frame.locator('#e-number').waitFor({ state: 'visible', timeout: 10_000 });
  assert.equal(await frame.locator('#e-number').innerText(), 'Vérifiez le numéro de carte.');

  await typeCard(page, CARDS.visa);
  await shot(page, 'i18n-fr-1-card');
  await pay.click();
  const r = await resultOf(page);
  await shot(page, 'i18n-fr-2-approved');
  assert.match(r.cls, /approved/, r.text);
  assert.match(r.text, /Paiement accepté/);
  assert.match(r.text, /VISA •••• 4242/);
  assert.equal(await page.locator('.ptl-r a').innerText(), 'Voir le reçu');
  assert.equal(await page.locator('.ptl-r button').innerText(), 'Nouvelle commande');
  assert.deepEqual(seen.errors, []);
  await assertNoCardLeak(page, seen, shop.requests);

  // The buyer can switch to English with the language menu.
  await page.locator('.ptl-r button').click();
  await page.locator('.ptl select').selectOption('en');
  await page.locator('.ptl li button[aria-label^="Add one"]').first().waitFor({ timeout: 10_000 });
  assert.equal(await page.locator('.ptl .ptl-go').innerText(), 'Pay');
  await context.close();
});
