// Load on one event that must never move a checkout to offline storage: a crowd in the
// waiting room (anyone with the event id can join it), lanes whose concurrency limits are
// full, and a drop of 120 buyers pressing Pay at once on a healthy acquirer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { api, checkout, createEvent, healLanes, laneControl, simStats, tokenFor } from './helpers.mjs';
import { freshCard } from '../../scripts/test-cards.mjs';

const lanes = (s) => s.lanes ?? s;
const succeeded = (s) => Object.values(lanes(s)).reduce((n, l) => n + l.charges_succeeded, 0);

const skus = [{ id: 'ticket', name: 'Entry', category: 'ticket', price: 1500, stock: 1000 }];

/** Tokenizes first (each buyer their own card token), then presses Pay all at once. */
async function drop(eventId, cards) {
  const tokens = [];
  for (let i = 0; i < cards.length; i += 20) {
    tokens.push(...(await Promise.all(cards.slice(i, i + 20).map((n) => tokenFor(eventId, n)))));
  }
  return Promise.all(tokens.map((t) => api('POST', `/v1/events/${eventId}/checkout`, {
    body: { items: [{ sku: 'ticket', quantity: 1 }], token: t.token, cvc_token: t.cvc_token, buyer: { email: 'ana@example.org', age_confirmed: true, consent_accepted: true } },
    headers: { 'idempotency-key': crypto.randomUUID() },
  })));
}

/** An answer as `status outcome`, e.g. `201 approved` or `429 overloaded`. */
const label = (a) => `${a.status} ${a.json?.status ?? a.json?.error?.code}`;

/** The routing header of each answer whose label is not in `expected`: why it went there. */
const why = (answers, expected) => answers
  .filter((a) => !(label(a) in expected))
  .map((a) => `${label(a)}: ${a.headers.get('x-poptill-routing') ?? ''}`);

function tally(answers) {
  const t = {};
  for (const a of answers) {
    const k = label(a);
    t[k] = (t[k] ?? 0) + 1;
  }
  return t;
}

test('a crowd in the waiting room does not make a declined card come back queued', async () => {
  await healLanes();
  const now = Date.now();
  const id = await createEvent({
    skus,
    queue: { required: false, mode: 'fifo', sale_start_ms: now - 1000, capacity: 500, admission_rate_per_sec: 1, place_ttl_ms: 60_000, admitted_ttl_ms: 600_000 },
  });
  for (let i = 0; i < 60; i += 20) {
    const joins = await Promise.all(Array.from({ length: 20 }, () => api('POST', `/v1/events/${id}/queue`)));
    for (const j of joins) assert.equal(j.status, 200, j.text);
  }
  const declined = await checkout(id, '4000000000000002');
  assert.equal(declined.status, 402, declined.text);
  assert.equal(declined.json.status, 'declined', declined.text);
  const approved = await checkout(id, freshCard());
  assert.equal(approved.status, 201, approved.text);
  assert.equal(approved.json.status, 'approved', approved.text);
  assert.doesNotMatch(approved.headers.get('x-poptill-routing') ?? '', /queue/);
});

test('lanes at their concurrency limit: checkouts wait for a permit and stay online', async () => {
  await healLanes();
  // Slow enough that the 20 first permits (10 per lane) are busy while the rest arrive,
  // fast enough that no lane counts as slow (1 s).
  await laneControl('fast', { latency_ms: { fixed: 250 } });
  await laneControl('cheap', { latency_ms: { fixed: 250 } });
  try {
    const id = await createEvent({ skus });
    // Eight declines: Stripe's four card_declined test cards, two each (a card may have two
    // checkouts in progress).
    const declining = ['4000000000000002', '4000000000009995', '4000000000009987', '4000000000009979'];
    const cards = Array.from({ length: 60 }, (_, i) => (i % 7 === 0 && i < 56 ? declining[(i / 7) % 4] : freshCard()));
    const answers = await drop(id, cards);
    const t = tally(answers);
    const want = { '201 approved': 52, '402 declined': 8 };
    assert.deepEqual(t, want, `${JSON.stringify(t)}\n${why(answers, want).join('\n')}`);
    const waited = answers.filter((a) => /waited for a permit/.test(a.headers.get('x-poptill-routing') ?? ''));
    assert.ok(waited.length > 0, 'no checkout found the limits full: the test proves nothing');
  } finally {
    await healLanes();
  }
});

test('a drop of 120 buyers at once on a healthy acquirer: all approved online, none stored, none refused', async () => {
  await healLanes();
  const id = await createEvent({ skus });
  const before = await simStats();
  const answers = await drop(id, Array.from({ length: 120 }, () => freshCard()));
  const t = tally(answers);
  const want = { '201 approved': 120 };
  assert.deepEqual(t, want, `${JSON.stringify(t)}\n${why(answers, want).join('\n')}`);
  const after = await simStats();
  assert.equal(succeeded(after) - succeeded(before), 120, 'one charge per buyer');
});
