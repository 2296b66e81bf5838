// Browser tests of exactly-once checkout with the real merchant page and the real card frame:
// the edge takes the payment but the buyer's browser never hears the answer, and the buyer
// presses Pay again, as people do. The acquirer simulator must see one charge, not two.
// Playwright routes the browser context's checkout requests (that covers the frame): each one
// reaches the Worker with route.fetch(); the first answer is then thrown away with a reset.
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

/**
 * Opens the shop with the checkout routed: every checkout request goes to the Worker, and
 * `handle(route, answer, n)` may then lose or replace the answer to request `n` (it returns
 * true when it did); otherwise the Worker's answer reaches the frame. `calls` records what
 * was sent and what the Worker answered.
 */
async function openShop(handle) {
  const rec = await openRecorded(chrome.browser, shop.url);
  const calls = [];
  const inflight = [];
  await rec.context.route((url) => url.origin === EDGE && /^\/v1\/events\/[^/]+\/checkout$/.test(url.pathname), async (route) => {
    const req = route.request();
    const call = { key: req.headers()['idempotency-key'], body: req.postData() };
    calls.push(call);
    const answer = route.fetch().then(async (res) => {
      call.status = res.status();
      call.replayed = res.headers()['idempotent-replayed'] === 'true';
      call.json = await res.json().catch(() => ({}));
      return res;
    });
    inflight.push(answer.catch(() => {}));
    if (await handle(route, answer, calls.length)) return;
    return route.fulfill({ response: await answer });
  });
  await rec.page.goto(`${shop.url}/?event=${encodeURIComponent(EVENT)}`);
  return { ...rec, calls, settled: () => Promise.all(inflight) };
}

/** The buyer presses Pay, and again while the page shows no result, at most `presses` times. */
async function pressUntilResult(page, presses = 3) {
  const pay = page.locator('.ptl .ptl-go');
  const statuses = [];
  for (let i = 1; i <= presses; i++) {
    await pay.click();
    // Until the page shows a result, or gives the Pay button back (an error is shown).
    await page.waitForFunction(() => document.querySelector('.ptl .ptl-r') || !document.querySelector('.ptl .ptl-go').disabled, null, { timeout: 45_000 });
    statuses.push(await page.locator('.ptl [role=status]').innerText());
    if (await page.locator('.ptl .ptl-r').count()) return { presses: i, statuses };
    await page.waitForTimeout(400);
  }
  return { presses, statuses };
}

async function buyerPays(page) {
  await addFirstItem(page);
  await answerPrompts(page);
  await typeCard(page, CARDS.visa);
}

test('a lost checkout answer, then Pay again: one charge, and the buyer sees it approved', async () => {
  await resetRouting();
  const before = new Set((await charges()).map((c) => c.id));
  const { context, page, seen, calls, settled } = await openShop(async (route, answer, n) => {
    if (n > 1) return false;
    await answer; // the Worker has answered: the payment is taken
    await route.abort('connectionreset');
    return true;
  });
  await buyerPays(page);
  const { statuses } = await pressUntilResult(page);
  await settled();
  await shot(page, 'lost-answer-1-approved');
  const mine = (await charges()).filter((c) => !before.has(c.id));
  assert.equal(mine.length, 1, `charges at the acquirer for this buyer: ${JSON.stringify(mine.map((c) => [c.lane, c.id, c.metadata.order_id]))}; checkout answers: ${JSON.stringify(calls.map((c) => [c.status, c.json?.error?.code || c.json?.status]))}`);
  assert.equal(calls[0].status, 201, 'the first checkout was processed by the edge (its answer was then lost)');
  const box = page.locator('.ptl .ptl-r');
  assert.match(await box.getAttribute('class'), /approved/, await box.innerText());
  assert.match(await box.innerText(), /VISA •••• 4242/);
  // The buyer was told the truth after the lost answer: pressing Pay checks, it does not pay twice.
  assert.match(statuses[0], /could not confirm your payment yet.*not start a second payment/i, statuses[0]);
  // Every attempt was the same request: one key, one body (the token pair it was made with).
  assert.ok(calls.length >= 2, `the buyer's second press reached the edge (${calls.length} checkout requests)`);
  for (const c of calls) {
    assert.equal(c.key, calls[0].key, 'one Idempotency-Key for one intent');
    assert.equal(c.body, calls[0].body, 'the identical body, not a re-tokenized one');
  }
  assert.equal(calls.at(-1).replayed, true, 'the retry was answered from the stored answer (Idempotent-Replayed)');
  assert.equal(calls.at(-1).json.order_id, calls[0].json.order_id, 'the page shows the order that was paid');
  assert.deepEqual(seen.errors, []);
  await assertNoCardLeak(page, seen, shop.requests);
  await context.close();
});

test('Pay again while the first attempt is still running (409 in flight): one charge, approved', async () => {
  // A slow acquirer keeps the first checkout in flight at the Worker for 1.5 s. A fresh
  // routing state makes the Worker wait its default 2.5 s timeout, not a timeout learned
  // from the fast answers before.
  const before = new Set((await charges()).map((c) => c.id));
  await resetRouting();
  await setLatency({ fixed: 1500 });
  let opened;
  try {
    opened = await openShop(async (route, answer, n) => {
      if (n > 1) return false;
      // The request has reached the Worker and runs on; the browser loses its connection.
      await new Promise((r) => setTimeout(r, 200));
      await route.abort('connectionreset');
      return true;
    });
    await buyerPays(opened.page);
    await pressUntilResult(opened.page);
    await opened.settled();
  } finally {
    await setLatency(null);
    await resetRouting();
  }
  const { context, page, seen, calls } = opened;
  await shot(page, 'lost-answer-2-in-flight-approved');
  const mine = (await charges()).filter((c) => !before.has(c.id));
  const answers = calls.map((c) => [c.status, c.json?.error?.code || c.json?.status]);
  assert.equal(mine.length, 1, `charges at the acquirer for this buyer: ${mine.length}; checkout answers: ${JSON.stringify(answers)}`);
  assert.ok(calls.some((c) => c.status === 409 && c.json?.error?.code === 'idempotency_in_flight'),
    `the second press found the first attempt in flight (answers: ${JSON.stringify(answers)})`);
  for (const c of calls) assert.equal(c.body, calls[0].body, 'every attempt sent the identical body');
  const box = page.locator('.ptl .ptl-r');
  assert.match(await box.getAttribute('class'), /approved/, `${await box.innerText()} (answers: ${JSON.stringify(answers)})`);
  assert.deepEqual(seen.errors, []);
  await assertNoCardLeak(page, seen, shop.requests);
  await context.close();
});

/** What an edge that could not yet record the outcome answers (the Worker's own answer is dropped). */
const pendingAnswer = (route) => route.fulfill({
  status: 202, headers: { 'content-type': 'application/json', 'retry-after': '1' },
  body: JSON.stringify({ status: 'pending', message: 'The payment is being confirmed.' }),
});
const statusText = (page) => page.locator('.ptl [role=status]').innerText();

test('a 202 pending answer: the frame confirms by itself after Retry-After, one charge, approved', async () => {
  const before = new Set((await charges()).map((c) => c.id));
  const { context, page, seen, calls, settled } = await openShop(async (route, answer, n) => {
    if (n > 1) return false;
    await answer;
    await pendingAnswer(route);
    return true;
  });
  await buyerPays(page);
  await page.locator('.ptl .ptl-go').click();
  await page.waitForFunction(() => /Confirming your payment…/.test(document.querySelector('.ptl [role=status]')?.textContent), null, { timeout: 15_000 });
  const r = page.locator('.ptl .ptl-r');
  await r.waitFor({ timeout: 30_000 });
  await settled();
  assert.match(await r.getAttribute('class'), /approved/, await r.innerText());
  assert.equal(calls.length, 2, 'one automatic resend, no second press');
  assert.equal(calls[1].key, calls[0].key);
  assert.equal(calls[1].body, calls[0].body, 'the resend is the identical request');
  assert.equal(calls[1].replayed, true);
  const mine = (await charges()).filter((c) => !before.has(c.id));
  assert.equal(mine.length, 1, `charges for this buyer: ${mine.length}`);
  assert.deepEqual(seen.errors, []);
  await assertNoCardLeak(page, seen, shop.requests);
  await context.close();
});

test('pending for longer: a bounded number of resends, then "do not pay again", and Pay only checks', async () => {
  const before = new Set((await charges()).map((c) => c.id));
  let stillPending = true;
  const { context, page, seen, calls, settled } = await openShop(async (route, answer) => {
    if (!stillPending) return false;
    await answer;
    await pendingAnswer(route);
    return true;
  });
  await buyerPays(page);
  const pay = page.locator('.ptl .ptl-go');
  await pay.click();
  await page.waitForFunction(() => !document.querySelector('.ptl .ptl-go').disabled, null, { timeout: 30_000 });
  await shot(page, 'lost-answer-3-pending');
  assert.match(await statusText(page), /being confirmed\. Please do not pay again/, 'the buyer is told plainly');
  assert.equal(await page.locator('.ptl [role=status].ptl-e').count(), 0, 'pending is not shown as an error');
  assert.equal(await page.locator('.ptl .ptl-r').count(), 0, 'no result yet');
  assert.equal(calls.length, 6, 'the first request and five automatic resends, then the frame stops');
  // The edge learns the outcome; the buyer presses Pay once more: that only checks.
  stillPending = false;
  await pay.click();
  const r = page.locator('.ptl .ptl-r');
  await r.waitFor({ timeout: 30_000 });
  await settled();
  assert.match(await r.getAttribute('class'), /approved/, await r.innerText());
  for (const c of calls) {
    assert.equal(c.key, calls[0].key);
    assert.equal(c.body, calls[0].body, 'every resend is the identical request');
  }
  const mine = (await charges()).filter((c) => !before.has(c.id));
  assert.equal(mine.length, 1, `charges for this buyer: ${mine.length}`);
  assert.deepEqual(seen.errors, []);
  await assertNoCardLeak(page, seen, shop.requests);
  await context.close();
});

test('another card typed after a lost answer: the last payment is checked first, not replaced', async () => {
  const before = new Set((await charges()).map((c) => c.id));
  const { context, page, seen, calls, settled } = await openShop(async (route, answer, n) => {
    if (n === 1) {
      await answer;
      await route.abort('connectionreset');
      return true;
    }
    await new Promise((r) => setTimeout(r, 1000)); // long enough to read the status line
    return false;
  });
  await buyerPays(page);
  const pay = page.locator('.ptl .ptl-go');
  await pay.click();
  await page.waitForFunction(() => !document.querySelector('.ptl .ptl-go').disabled, null, { timeout: 30_000 });
  await typeCard(page, CARDS.mastercard);
  await pay.click();
  await page.waitForFunction(() => /Checking your last payment…/.test(document.querySelector('.ptl [role=status]')?.textContent), null, { timeout: 15_000 });
  const r = page.locator('.ptl .ptl-r');
  await r.waitFor({ timeout: 30_000 });
  await settled();
  assert.match(await r.getAttribute('class'), /approved/, await r.innerText());
  assert.match(await r.innerText(), /VISA •••• 4242/, 'the result is the payment that was made, with the first card');
  assert.equal(calls.length, 2);
  assert.equal(calls[1].body, calls[0].body, 'the edited card did not go out under the same key');
  const mine = (await charges()).filter((c) => !before.has(c.id));
  assert.equal(mine.length, 1, `charges for this buyer: ${mine.length}`);
  assert.equal(mine[0].latest_charge?.payment_method_details?.card?.last4, '4242', 'the first card was charged');
  assert.deepEqual(seen.errors, []);
  await assertNoCardLeak(page, seen, shop.requests);
  await context.close();
});
