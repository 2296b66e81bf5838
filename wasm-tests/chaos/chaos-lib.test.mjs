// The pure parts of the chaos suite (scripts/chaos-lib.mjs): each invariant check is fed
// synthetic data that holds, then data that breaks it, and must tell the two apart; the
// report and the SVG chart carry the figures and the fault windows.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkInvariants, tallyRequests, renderReport, renderSvg, latencyStats, phaseOf, outcomeClass, offlineOnlyWhenUnreachable, honestSuccessHolds, stateBounded, receiptsGuarded } from '../../scripts/chaos-lib.mjs';

/** A run in which every invariant holds: two orders, one approved, one queued then forwarded. */
function healthy() {
  return {
    events: [{
      id: 'evt_a', name: 'hot',
      summary: { skus: [{ sku: 'ticket', stock: 2, sold: 2 }], queued_count: 0 },
      exportRows: [
        { order_id: 'ord_1', state: 'approved', charge_id: 'pi_1', buyer_email: 'b00001@x.org', lines: [{ sku: 'ticket', qty: 1 }] },
        { order_id: 'ord_2', state: 'forwarded', charge_id: 'pi_2', buyer_email: 'b00002@x.org', lines: [{ sku: 'ticket', qty: 1 }] },
        { order_id: 'ord_3', state: 'declined', charge_id: null, buyer_email: 'b00003@x.org', lines: [{ sku: 'ticket', qty: 1 }] },
      ],
      reconcile: { report: { matched: [['ord_1', 'pi_1'], ['ord_2', 'pi_2']], missing_at_acquirer: [], missing_at_edge: [], amount_mismatch: [], awaiting_forward: [] }, lost_checkouts_refunded: [] },
    }],
    charges: {
      pi_1: { lane: 'fast', order_id: 'ord_1', key: 'ord_1_online', status: 'succeeded', amount: 1500, currency: 'eur', refunded: 0, created: 1 },
      pi_2: { lane: 'cheap', order_id: 'ord_2', key: 'ord_2_queued', status: 'succeeded', amount: 1500, currency: 'eur', refunded: 0, created: 2 },
      pi_3: { lane: 'fast', order_id: 'ord_3', key: 'ord_3_online', status: 'requires_payment_method', amount: 1500, currency: 'eur', refunded: 0, created: 3 },
    },
    intents: [
      { id: 'b00001', email: 'b00001@x.org', event: 'hot', style: 'frame-like', items: [{ sku: 'ticket', quantity: 1 }], history: [], outcome: 'approved' },
      { id: 'b00002', email: 'b00002@x.org', event: 'hot', style: 'same body', items: [{ sku: 'ticket', quantity: 1 }], history: [], outcome: 'queued' },
      { id: 'b00003', email: 'b00003@x.org', event: 'hot', style: 'gives up', items: [{ sku: 'ticket', quantity: 1 }], history: [], outcome: 'declined' },
      { id: 'b00004', email: 'b00004@x.org', event: 'hot', style: 'gives up', items: [{ sku: 'ticket', quantity: 1 }], history: [], outcome: 'gave up after no answer' },
    ],
    sim: { lanes: {
      fast: { by_idempotency_key: { ord_1_online: 1, ord_3_online: 1 }, by_order_id: { ord_1: 1 } },
      cheap: { by_idempotency_key: { ord_2_queued: 1 }, by_order_id: { ord_2: 1 } },
    } },
    accepted: [{ event: 'hot', order_id: 'ord_1', status: 'approved' }, { event: 'hot', order_id: 'ord_2', status: 'queued' }],
    declined: [{ event: 'hot', order_id: 'ord_3' }],
    requests: [{ t: 0.1, kind: 'checkout', status: 201, ms: 30 }, { t: 1.2, kind: 'checkout', status: 402, ms: 40, code: 'card_declined' }],
    panics: [], leaks: [], filesScanned: 12,
    replays: { checked: 3, mismatches: [] },
    unexpectedNoAnswer: [],
  };
}

const byName = (inv, prefix) => inv.find((i) => i.name.startsWith(prefix));
function expectOnlyBroken(data, prefix) {
  const inv = checkInvariants(data);
  const broken = inv.filter((i) => !i.ok).map((i) => i.name);
  assert.ok(broken.some((n) => n.startsWith(prefix)), `${prefix} should be violated; broken: ${broken.join('; ')}`);
  return byName(inv, prefix);
}

test('a healthy run holds every invariant, each with a figure', () => {
  const inv = checkInvariants(healthy());
  assert.equal(inv.length, 12);
  for (const i of inv) {
    assert.equal(i.ok, true, `${i.name}: ${i.details.join('; ')}`);
    assert.ok(i.figure.length > 5, i.name);
  }
  assert.match(byName(inv, 'no ticket oversold').figure, /hot 2\/2/);
});

test('oversold: sold above stock, or paid orders holding more units than the stock', () => {
  const d = healthy();
  d.events[0].summary.skus[0].sold = 3;
  assert.match(expectOnlyBroken(d, 'no ticket oversold').details[0], /sold 3 > stock 2/);
  const e = healthy();
  e.events[0].exportRows.push({ order_id: 'ord_9', state: 'approved', lines: [{ sku: 'ticket', qty: 1 }] });
  assert.match(expectOnlyBroken(e, 'no ticket oversold').details.join(), /3 units > stock 2/);
});

test('charged twice: one acquirer key on two lanes, or two charges for one order', () => {
  const d = healthy();
  d.sim.lanes.cheap.by_idempotency_key.ord_1_online = 1;
  d.sim.lanes.cheap.by_order_id.ord_1 = 1;
  const c = expectOnlyBroken(d, 'no payment charged twice');
  assert.ok(c.details.some((x) => /ord_1_online: 2 charges \(fast 1, cheap 1\)/.test(x)), c.details.join('\n'));
  assert.ok(c.details.some((x) => /order ord_1: 2 successful charges/.test(x)));
  // the same order is then also out of step with the acquirer
  assert.equal(byName(checkInvariants(d), 'every accepted').ok, false);
});

/** The frame's double charge: buyer b00001's first press charged ord_4, whose checkout was
 *  lost (the ledger released it); a later press with a new key became ord_1 and charged again. */
function frameDoubleCharge({ refundedByReconciliation = true } = {}) {
  const d = healthy();
  d.events[0].exportRows.push({ order_id: 'ord_4', state: 'declined', charge_id: null, buyer_email: 'b00001@x.org', lines: [{ sku: 'ticket', qty: 1 }] });
  d.charges.pi_4 = { lane: 'cheap', order_id: 'ord_4', key: 'ord_4_online', status: 'succeeded', amount: 1500, currency: 'eur', refunded: refundedByReconciliation ? 1500 : 0, created: 0 };
  if (refundedByReconciliation) {
    d.events[0].reconcile.report.refunded_unpaid = ['pi_4'];
    d.events[0].reconcile.lost_checkouts_refunded = [{ charge_id: 'pi_4', order_id: 'ord_4', amount: 1500 }];
  } else d.events[0].reconcile.report.missing_at_edge = ['pi_4'];
  d.intents[0].history = ['1.0s k1/t1 → no answer (UND_ERR_SOCKET)', '3.1s k1/t2 → 422 idempotency_mismatch', '5.0s k2/t3 → 201 approved ord_1'];
  return d;
}

test('one charge per buyer intent holds, with its figure', () => {
  const inv = checkInvariants(healthy());
  const one = byName(inv, 'at most one charge per buyer intent');
  assert.equal(one.ok, true, one.details.join('\n'));
  assert.match(one.figure, /^2 charges for 2 of 4 buyer intents, max 1 per intent; 0 intents charged more than once/);
  const held = byName(inv, 'every charge held by its order');
  assert.equal(held.ok, true, held.details.join('\n'));
  assert.match(held.figure, /^2 charges held by their orders; 0 charges of lost checkouts refunded/);
});

test('a double charge on two order ids for one buyer is caught, even when reconciliation refunded one of them', () => {
  const d = frameDoubleCharge();
  const inv = checkInvariants(d);
  // The per-order count cannot see it, and the books are clean.
  assert.equal(byName(inv, 'no payment charged twice').ok, true);
  assert.equal(byName(inv, 'reconciliation clean').ok, true);
  const one = byName(inv, 'at most one charge per buyer intent');
  assert.equal(one.ok, false);
  assert.match(one.figure, /3 charges for 2 of 4 buyer intents, max 2 per intent; 1 intents charged more than once \(1 extra charges, 15\.00 EUR\)/);
  assert.equal(one.details.length, 1);
  const line = one.details[0];
  assert.match(line, /^buyer b00001 \(frame-like, hot, 1×ticket, b00001@x\.org\): 2 charges on 2 orders, 30\.00 EUR in all/);
  assert.match(line, /pi_4 on cheap for order ord_4 \(declined; acquirer key ord_4_online\), refunded 15\.00 EUR by reconciliation as a lost checkout/);
  assert.match(line, /pi_1 on fast for order ord_1 \(approved; acquirer key ord_1_online\)/);
  assert.match(line, /k1\/t2 → 422 idempotency_mismatch/);
  // The refunded lost checkout is noted separately with its figure.
  const held = byName(inv, 'every charge held by its order');
  assert.equal(held.ok, true, held.details.join('\n'));
  assert.match(held.figure, /1 charges of lost checkouts refunded in full \(1 by the final reconciliation\), 15\.00 EUR/);
  assert.match(held.notes[0], /^lost checkout refunded: pi_4 .* buyer b00001 \(frame-like, 2 charges\)/);
  const md = renderReport({ run: { started: 'x', seconds: 1, buyers: 1, events: 1 }, invariants: inv, tally: tallyRequests([], []), faults: [] });
  assert.match(md, /### at most one charge per buyer intent: violated\n\n- buyer b00001/);
  assert.match(md, /### every charge held by its order or refunded as a lost checkout: noted\n\n- lost checkout refunded: pi_4/);
});

test('a charge no order holds and nobody refunded is caught, as is one for an order the ledger does not know', () => {
  let d = frameDoubleCharge({ refundedByReconciliation: false });
  let held = expectOnlyBroken(d, 'every charge held by its order');
  assert.match(held.details[0], /^charge pi_4 on cheap for order ord_4 \(declined; .*\): no order holds it and it is not refunded/);
  assert.equal(byName(checkInvariants(d), 'at most one charge per buyer intent').ok, false);
  d = healthy();
  d.charges.pi_9 = { lane: 'fast', order_id: 'ord_nowhere', key: 'ord_nowhere_online', status: 'succeeded', amount: 1200, currency: 'eur', refunded: 0, created: 9 };
  held = expectOnlyBroken(d, 'every charge held by its order');
  assert.match(held.details[0], /pi_9 on fast for order ord_nowhere \(unknown to the ledger;/);
  assert.match(held.figure, /1 charges no order holds \(1 for orders unknown to the ledger\)/);
  // A second charge on the same order (failed over to another lane) is not held either.
  d = healthy();
  d.charges.pi_5 = { lane: 'cheap', order_id: 'ord_1', key: 'ord_1_online', status: 'succeeded', amount: 1500, currency: 'eur', refunded: 0, created: 5 };
  const inv = checkInvariants(d);
  assert.equal(byName(inv, 'every charge held by its order').ok, false);
  assert.match(byName(inv, 'at most one charge per buyer intent').details[0], /^buyer b00001 .*: 2 charges on 1 order,/);
});

test('a processing charge counts; a charge whose order has no buyer e-mail, or no intents at all, fails', () => {
  let d = healthy();
  d.events[0].exportRows.push({ order_id: 'ord_6', state: 'declined', charge_id: null, buyer_email: 'b00002@x.org', lines: [] });
  d.charges.pi_6 = { lane: 'fast', order_id: 'ord_6', key: 'ord_6_online', status: 'processing', amount: 1500, currency: 'eur', refunded: 0, created: 6 };
  assert.match(expectOnlyBroken(d, 'at most one charge per buyer intent').details[0], /^buyer b00002 .*pi_6 processing on fast/);
  d = healthy();
  delete d.events[0].exportRows[0].buyer_email;
  assert.match(expectOnlyBroken(d, 'at most one charge per buyer intent').details[0], /pi_1 .*no buyer e-mail in the export/);
  d = healthy();
  d.events[0].exportRows[0].buyer_email = 'someone@else.org';
  assert.match(expectOnlyBroken(d, 'at most one charge per buyer intent').details[0], /is no buyer intent of this run/);
  d = healthy();
  d.intents = [];
  assert.match(expectOnlyBroken(d, 'at most one charge per buyer intent').details.join(), /no buyer intent was recorded/);
  d = healthy();
  delete d.charges;
  assert.match(expectOnlyBroken(d, 'at most one charge per buyer intent').details.join(), /charge list is missing/);
});

test('final states: missing, duplicated, pending or queued orders, and states that disagree with the acquirer', () => {
  let d = healthy();
  d.events[0].exportRows = d.events[0].exportRows.filter((r) => r.order_id !== 'ord_2');
  assert.match(expectOnlyBroken(d, 'every accepted').details[0], /appears 0 times/);
  d = healthy();
  d.events[0].exportRows.push({ ...d.events[0].exportRows[0] });
  assert.match(expectOnlyBroken(d, 'every accepted').details[0], /appears 2 times/);
  d = healthy();
  d.events[0].exportRows[0].state = 'pending';
  assert.match(expectOnlyBroken(d, 'every accepted').details[0], /pending, not a final state/);
  d = healthy();
  d.events[0].exportRows[0].state = 'declined'; // declined, yet the acquirer charged it
  assert.match(expectOnlyBroken(d, 'every accepted').details[0], /declined with 1 successful charges .*expected 0/);
  d = healthy();
  delete d.sim.lanes.cheap.by_order_id.ord_2; // forwarded, yet never charged
  assert.match(expectOnlyBroken(d, 'every accepted').details[0], /forwarded with 0 successful charges/);
  d = healthy();
  d.sim.lanes.fast.by_order_id.ord_3 = 1; // answered declined, charged anyway
  assert.ok(expectOnlyBroken(d, 'every accepted').details.some((x) => /answered declined but has 1 charges/.test(x)));
});

test('queued authorizations left behind are caught in the summary and in the export', () => {
  let d = healthy();
  d.events[0].summary.queued_count = 1;
  assert.match(expectOnlyBroken(d, 'no queued').details[0], /1 queued authorizations still stored/);
  d = healthy();
  d.events[0].exportRows[1].state = 'queued';
  const inv = checkInvariants(d);
  assert.equal(byName(inv, 'no queued').ok, false);
  assert.equal(byName(inv, 'every accepted').ok, false, 'queued is not a final state');
});

test('any 5xx, panic line, card number, missing scan, lost connection or inconsistent replay fails', () => {
  let d = healthy();
  d.requests.push({ t: 2, kind: 'checkout', status: 503, ms: 9, code: 'acquirer_unavailable' });
  assert.match(expectOnlyBroken(d, 'no 5xx').details[0], /1 × 503 checkout acquirer_unavailable/);
  d = healthy();
  d.panics = ['worker.log: panicked at src/lib.rs:1'];
  expectOnlyBroken(d, 'no panic');
  d = healthy();
  d.leaks = [{ pan: '4242424242424242', file: '/state/x.sqlite' }];
  const leak = expectOnlyBroken(d, 'no card number');
  assert.match(leak.details[0], /4242…4242 in \/state\/x.sqlite/);
  assert.ok(!leak.details[0].includes('4242424242424242'), 'the report itself never prints the number');
  d = healthy();
  d.filesScanned = 0;
  expectOnlyBroken(d, 'no card number');
  d = healthy();
  d.unexpectedNoAnswer = ['checkout /v1/events/x/checkout at 3.0 s: ECONNREFUSED'];
  expectOnlyBroken(d, 'no lost connection');
  d = healthy();
  d.replays = { checked: 2, mismatches: ['one key, two orders: ord_1 ord_2'] };
  expectOnlyBroken(d, 'duplicated and replayed');
  d = healthy();
  d.replays = { checked: 0, mismatches: [] };
  expectOnlyBroken(d, 'duplicated and replayed');
});

test('reconciliation: every kind of discrepancy, and a missing report, fail; charges are described', () => {
  for (const field of ['missing_at_acquirer', 'missing_at_edge', 'amount_mismatch', 'awaiting_forward', 'lost_refunding']) {
    const d = healthy();
    d.events[0].reconcile.report[field] = field === 'amount_mismatch' ? [{ order_id: 'ord_1' }] : ['pi_9'];
    d.charges = { pi_9: { lane: 'cheap', order_id: 'ord_3' } };
    const r = expectOnlyBroken(d, 'reconciliation clean');
    assert.match(r.details[0], new RegExp(field));
    if (field === 'missing_at_edge') assert.match(r.details[0], /pi_9 \(cheap, order ord_3, ledger state declined\)/);
  }
  const cut = healthy();
  cut.events[0].reconcile.report.truncated = true;
  assert.match(expectOnlyBroken(cut, 'reconciliation clean').details[0], /truncated/);
  const d = healthy();
  d.events[0].reconcile = { error: { code: 'x' } };
  assert.match(expectOnlyBroken(d, 'reconciliation clean').details[0], /no reconciliation report/);
});

test('tallies, percentiles and phases', () => {
  const s = latencyStats([5, 1, 4, 2, 3, 100, 7, 8, 9, 10]);
  assert.deepEqual([s.n, s.p50, s.p95, s.p99, s.max], [10, 5, 100, 100, 100]);
  assert.equal(latencyStats([]).p50, null);
  const faults = [{ start: 10, end: 20, label: 'all lanes refuse' }, { start: 15, end: 30, label: 'runtime restart' }];
  assert.equal(phaseOf(faults, 5), 'steady');
  assert.equal(phaseOf(faults, 16), 'all lanes refuse + runtime restart');
  const t = tallyRequests([
    { t: 1, kind: 'checkout', status: 201, ms: 10 }, { t: 12, kind: 'checkout', status: 201, ms: 50 },
    { t: 12, kind: 'token', status: 201, ms: 2 }, { t: 13, kind: 'checkout', status: 0, ms: 1 }, { t: 25, kind: 'hostile', status: 502, ms: 3 },
  ], faults);
  assert.equal(t.total, 5);
  assert.deepEqual(t.byKind.checkout.statuses, { 201: 2, 'no answer': 1 });
  assert.equal(t.latency['all lanes refuse'].checkout.n, 1, 'lost answers carry no latency');
  assert.equal(t.latency['all lanes refuse'].all.n, 2);
  assert.equal(t.fiveXX.length, 1);
  assert.equal(outcomeClass({ status: 201, outcome: 'queued' }), 'queued');
  assert.equal(outcomeClass({ status: 402, code: 'card_declined' }), 'declined');
  assert.equal(outcomeClass({ status: 402, code: 'offline_budget_exhausted' }), 'refused');
  assert.equal(outcomeClass({ status: 409, code: 'out_of_stock' }), 'sold out');
  assert.equal(outcomeClass({ status: 410, code: 'key_revoked' }), 'refused');
  assert.equal(outcomeClass({ status: 0 }), 'no answer');
});

test('the report carries every invariant with its figure, the violations, latency per phase and the fault timeline', () => {
  const d = healthy();
  d.events[0].summary.skus[0].sold = 3;
  const invariants = checkInvariants(d);
  const faults = [{ start: 1, end: 2, label: 'error burst', note: 'fast 40 %' }];
  const md = renderReport({
    run: { started: '2025-01-01T00:00:00Z', seconds: 60, buyers: 18, events: 4 },
    invariants, tally: tallyRequests(d.requests, faults), faults, outcomes: { approved: 7 }, findings: ['a finding'],
  });
  assert.match(md, /INVARIANT VIOLATED/);
  for (const i of invariants) assert.ok(md.includes(`| ${i.name} |`), i.name);
  assert.match(md, /\| no ticket oversold \| \*\*VIOLATED\*\* \| sold\/stock: hot 3\/2 \|/);
  assert.match(md, /sold 3 > stock 2/);
  assert.match(md, /\| steady \| 1 \| 30 \|/);
  assert.match(md, /\| 1 \| 2 \| error burst \| fast 40 % \|/);
  assert.match(md, /\| approved \| 7 \|/);
  assert.match(md, /- a finding/);
  assert.match(md, /!\[latency and outcomes over time\]\(chart\.svg\)/);
  const ok = renderReport({ run: { started: 'x', seconds: 1, buyers: 1, events: 1 }, invariants: checkInvariants(healthy()), tally: tallyRequests([], []), faults: [] });
  assert.match(ok, /all invariants held/);
});

test('the SVG chart is well formed, shades and labels each fault window, and plots latency and outcomes', () => {
  const requests = [];
  for (let t = 0; t < 60; t += 0.5) requests.push({ t, kind: 'checkout', status: t > 20 && t < 25 ? 0 : 201, outcome: t > 30 && t < 40 ? 'queued' : 'approved', ms: 20 + t });
  requests.push({ t: 50, kind: 'checkout', status: 503, ms: 4000 });
  const faults = [{ start: 20, end: 25, label: 'runtime restart' }, { start: 30, end: 40, label: 'all lanes refuse & <hang>' }];
  const svg = renderSvg({ requests, faults, seconds: 60 });
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.match(svg, /<\/svg>$/);
  assert.equal((svg.match(/class="fault"/g) ?? []).length, 2);
  assert.ok(svg.includes('>runtime restart<'));
  assert.ok(svg.includes('all lanes refuse &amp; &lt;hang&gt;'), 'labels are escaped');
  assert.equal((svg.match(/class="latency"/g) ?? []).length, 2, 'p50 and p99 lines');
  for (const o of ['approved', 'queued', 'no answer', '5xx']) assert.ok(svg.includes(`data-outcome="${o}"`), o);
  assert.ok(!/NaN|undefined/.test(svg), 'no NaN or undefined coordinates');
  // the fault band sits where its time is: 20 s of 60 s across the plot
  const x = Number(/class="fault" x="([\d.]+)"/.exec(svg)[1]);
  assert.ok(Math.abs(x - (60 + (20 / 60) * 920)) < 1, String(x));
  // balanced tags (a cheap well-formedness check without a parser)
  const open = (svg.match(/<(rect|polyline|text|line)\b[^>]*[^/]>/g) ?? []).length;
  const close = (svg.match(/<\/(rect|polyline|text|line)>/g) ?? []).length;
  assert.equal(open, close);
});

test('offline acceptance is allowed only inside an acquirer fault and its breaker cool-down', () => {
  const faults = [{ label: 'acquirer slow', start: 5, end: 10 }, { label: 'all lanes refuse', start: 20, end: 25 }];
  const ok = offlineOnlyWhenUnreachable([
    { order_id: 'o1', status: 'approved', started: 1, event: 'hot' },
    { order_id: 'o2', status: 'queued', started: 21, event: 'hot' },
    { order_id: 'o3', status: 'queued', started: 34, event: 'hot' }, // inside the breaker's cool-down after it
  ], faults);
  assert.equal(ok.ok, true, ok.details.join('; '));
  assert.match(ok.figure, /2 while no lane could be reached, 0 while it was slow or failing, 0 while it was healthy/);
  // A slow acquirer is the acquirer's fault, not a buyer's: allowed, and counted apart.
  const slow = offlineOnlyWhenUnreachable([{ order_id: 'o4', status: 'queued', started: 6, event: 'hot' }], faults);
  assert.equal(slow.ok, true);
  assert.match(slow.figure, /0 while no lane could be reached, 1 while it was slow or failing/);
  const vault = offlineOnlyWhenUnreachable([{ order_id: 'o6', status: 'queued', started: 51, event: 'hot' }], [...faults, { label: 'vault key rotation', start: 50, end: 52 }]);
  assert.equal(vault.ok, false);
  assert.match(vault.details[0], /during vault key rotation/);
  const healthy = offlineOnlyWhenUnreachable([{ order_id: 'o5', status: 'queued', started: 40, event: 'hot' }], faults);
  assert.equal(healthy.ok, false);
  assert.match(healthy.details[0], /acquirer healthy/);
});

test('honest success under attack is compared with the same run without attackers', () => {
  const mk = (n, from, good) => Array.from({ length: n }, (_, k) => ({ id: `b${from}-${k}`, event: 'hot', style: 'same body', started: from + k * 0.1, outcome: k < good ? 'approved' : 'refused 429 too_many_requests' }));
  const opts = { baseline: [0, 10], attacked: [10, 20], events: ['hot'], bound: 0.1 };
  assert.equal(honestSuccessHolds([...mk(20, 0, 20), ...mk(20, 10, 19)], opts).ok, true);
  const hurt = honestSuccessHolds([...mk(20, 0, 20), ...mk(20, 10, 14)], opts);
  assert.equal(hurt.ok, false);
  assert.match(hurt.details[0], /70.0 %.*100.0 %/);
  // A decline card refused by the per-card decline limit is a definite answer; an approving one is not.
  const velocity = (declining) => [...mk(20, 0, 20), ...mk(20, 10, 20).map((i, k) => (k < 5 ? { ...i, outcome: 'refused 429 card_velocity', declining } : i))];
  assert.equal(honestSuccessHolds(velocity(true), opts).ok, true);
  assert.equal(honestSuccessHolds(velocity(false), opts).ok, false);
  // Too few to compare is a failure, not a pass.
  assert.equal(honestSuccessHolds(mk(3, 0, 3), opts).ok, false);
  // Other events (the sell-out) do not count.
  assert.equal(honestSuccessHolds([...mk(20, 0, 20), ...mk(20, 10, 20), { event: 'sellout', started: 11, outcome: 'refused 409 sold_out' }], opts).ok, true);
});

test('event state and receipts under attack', () => {
  const ev = (orders, queue) => ({ name: 'hot', summary: { orders_by_state: { approved: orders }, queue_depth: queue } });
  const caps = { orders: 100, queue: 50, dbBytes: 1000 };
  assert.equal(stateBounded([ev(100, 50)], caps, [{ file: 'a.sqlite', bytes: 999 }]).ok, true);
  assert.equal(stateBounded([ev(101, 0)], caps).ok, false);
  assert.equal(stateBounded([ev(1, 51)], caps).ok, false);
  assert.equal(stateBounded([ev(1, 1)], caps, [{ file: 'a.sqlite', bytes: 1001 }]).ok, false);
  assert.equal(stateBounded([], caps).ok, false);
  assert.equal(receiptsGuarded([{ path: '/v1/receipts/rcpt_x-000001', status: 404 }]).ok, true);
  assert.equal(receiptsGuarded([{ path: '/v1/receipts/rcpt_x-000001', status: 200 }]).ok, false);
  assert.equal(receiptsGuarded([{ path: '/v1/receipts/rcpt_x-000001', status: 0 }]).ok, false);
});
