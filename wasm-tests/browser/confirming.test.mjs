// Browser tests of a slow acquirer with the real merchant page and the real card frame: the
// Worker answers the buyer by its answer budget (`201 confirming`, a signed provisional
// receipt, Retry-After) while the same authorization runs on, and the frame asks again
// (same Idempotency-Key, same body) until the acquirer's answer is known: approved, or
// declined while the buyer is still there, who can then try another card. One charge.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  EDGE, EVENT, CARDS, launch, merchant, openRecorded, assertNoCardLeak, shot,
  addFirstItem, answerPrompts, typeCard, setPartition, resetRouting, charges, setLatency,
} from './helpers.mjs';

let chrome, shop;
before(async () => {
  await setPartition('none');
  chrome = await launch();
  shop = await merchant();
});
after(async () => {
  await setLatency(null).catch(() => {});
  await resetRouting().catch(() => {});
  await shop?.close();
  await chrome?.close();
});

/** Opens the shop with every checkout request recorded (each reaches the Worker unchanged). */
async function openShop() {
  const rec = await openRecorded(chrome.browser, shop.url);
  const calls = [];
  await rec.context.route((url) => url.origin === EDGE && /^\/v1\/events\/[^/]+\/checkout$/.test(url.pathname), async (route) => {
    const req = route.request();
    const call = { key: req.headers()['idempotency-key'], body: req.postData(), at: Date.now() };
    calls.push(call);
    const res = await route.fetch();
    call.status = res.status();
    call.retryAfter = res.headers()['retry-after'];
    call.took = Date.now() - call.at;
    call.json = await res.json().catch(() => ({}));
    return route.fulfill({ response: res });
  });
  await rec.page.goto(`${shop.url}/?event=${encodeURIComponent(EVENT)}`);
  return { ...rec, calls };
}

/** The buyer pays with `card` while both lanes answer after `ms`; returns what happened. */
async function payWhileSlow(card, ms) {
  const before = new Set((await charges()).map((c) => c.id));
  await resetRouting();
  await setLatency({ fixed: ms });
  let opened;
  try {
    opened = await openShop();
    const { page } = opened;
    await addFirstItem(page);
    await answerPrompts(page);
    await typeCard(page, card);
    await page.locator('.ptl .ptl-go').click();
    await page.waitForFunction(() => /Confirming your payment…/.test(document.querySelector('.ptl [role=status]')?.textContent), null, { timeout: 15_000 });
    opened.sawConfirming = true;
    await page.locator('.ptl .ptl-r').waitFor({ timeout: 40_000 });
  } finally {
    await setLatency(null);
    await resetRouting();
  }
  const mine = (await charges()).filter((c) => !before.has(c.id));
  return { ...opened, mine };
}

function assertOneIntent(calls) {
  assert.ok(calls.length >= 2, `the frame asked again after confirming (${calls.length} checkout requests)`);
  for (const c of calls) {
    assert.equal(c.key, calls[0].key, 'one Idempotency-Key for one intent');
    assert.equal(c.body, calls[0].body, 'the identical request every time');
  }
}

test('a slow acquirer: 201 confirming by the answer budget, then approved in the frame, one charge', async () => {
  const { context, page, seen, calls, mine } = await payWhileSlow(CARDS.visa, 2500);
  await shot(page, 'confirming-1-approved');
  const answers = JSON.stringify(calls.map((c) => [c.status, c.json?.status || c.json?.error?.code, c.took]));
  assert.equal(calls[0].status, 201, answers);
  assert.equal(calls[0].json.status, 'confirming', `the first answer is confirming: ${answers}`);
  assert.ok(calls[0].took < 2000, `the buyer was answered before the acquirer (${calls[0].took} ms; the acquirer takes 2.5 s)`);
  assert.equal(calls[0].retryAfter, '1', 'Retry-After tells the frame when to ask');
  assert.ok(calls[0].json.receipt?.signature?.mac, 'a signed provisional receipt comes with it');
  assertOneIntent(calls);
  assert.equal(calls.at(-1).json.status, 'approved', `the last answer is the acquirer's approval: ${answers}`);
  const box = page.locator('.ptl .ptl-r');
  assert.match(await box.getAttribute('class'), /approved/, await box.innerText());
  assert.equal(mine.length, 1, `charges at the acquirer for this buyer: ${mine.length} (${answers})`);
  assert.deepEqual(seen.errors, []);
  await assertNoCardLeak(page, seen, shop.requests);
  await context.close();
});

test('a slow decline: confirming, then "declined" reaches the buyer, who pays with another card', async () => {
  const { context, page, seen, calls, mine } = await payWhileSlow(CARDS.declined, 2500);
  await shot(page, 'confirming-2-declined');
  const answers = JSON.stringify(calls.map((c) => [c.status, c.json?.status || c.json?.error?.code]));
  assert.equal(calls[0].json.status, 'confirming', answers);
  assertOneIntent(calls);
  assert.equal(calls.at(-1).json.status, 'declined', `the acquirer's decline reached the frame: ${answers}`);
  const box = page.locator('.ptl .ptl-r');
  assert.match(await box.getAttribute('class'), /declined/, await box.innerText());
  assert.equal(mine.length, 0, 'nothing was charged');
  // The sale is saved: the buyer types another card, and that is a new intent that pays.
  const before = calls.length;
  await typeCard(page, CARDS.mastercard);
  await page.locator('.ptl .ptl-go').click();
  await page.waitForFunction(() => /approved/.test(document.querySelector('.ptl .ptl-r')?.className || ''), null, { timeout: 30_000 });
  const retry = calls.slice(before);
  assert.ok(retry.length >= 1);
  assert.notEqual(retry[0].key, calls[0].key, 'another card is a new payment intent (a new key)');
  assert.equal(retry.at(-1).json.status, 'approved');
  assert.deepEqual(seen.errors, []);
  await assertNoCardLeak(page, seen, shop.requests);
  await context.close();
});
