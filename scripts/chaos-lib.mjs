// chaos-lib: the pure parts of the soak and chaos suite (scripts/chaos.mjs): percentiles,
// request tallies, the invariant checks, the Markdown report and the SVG chart. No I/O, no
// clock: everything comes in as data, so wasm-tests/chaos/ can feed each check synthetic
// data that breaks it and show that it fails.

/** Final states an accepted checkout (a 201: approved or queued) may end in after recovery. */
export const FINAL_STATES = new Set(['approved', 'forwarded', 'declined', 'expired', 'refunded', 'partially_refunded']);
/** Final states in which the acquirer holds exactly one successful charge for the order. */
export const CHARGED_STATES = new Set(['approved', 'forwarded', 'refunded', 'partially_refunded']);
/** Payment intent statuses in which the acquirer holds (or may still make) a charge. */
export const CHARGE_STATUSES = new Set(['succeeded', 'requires_capture', 'processing']);
/** Test card numbers the suite uses: none may appear in state or logs. */
export const TEST_PANS = [
  '4242424242424242', '5555555555554444', '378282246310005', '4000000000000002',
  '4000000000009995', '4000000000000069', '2223003122003222', '6011111111111117',
];
/** Lines of the Worker's log that mean it panicked or trapped. */
export const PANIC_PATTERNS = [/panicked/i, /RuntimeError/, /unreachable/];

export function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

export function latencyStats(ms) {
  const s = [...ms].sort((a, b) => a - b);
  return { n: s.length, p50: percentile(s, 50), p95: percentile(s, 95), p99: percentile(s, 99), max: s.length ? s[s.length - 1] : null };
}

/** The fault windows active at time t (seconds since start). */
export function phasesAt(faults, t) {
  return faults.filter((f) => t >= f.start && t < (f.end ?? Infinity)).map((f) => f.label);
}

/** The phase name of a request: the fault windows it started in, or "steady". */
export function phaseOf(faults, t) {
  const p = phasesAt(faults, t);
  return p.length ? p.join(' + ') : 'steady';
}

/**
 * Tallies request records {t, kind, status, ms, code} (status 0 = no answer):
 * by kind and status, and latency per phase for checkouts and for every request.
 */
export function tallyRequests(requests, faults) {
  const byKind = {};
  for (const r of requests) {
    const k = (byKind[r.kind] ??= { total: 0, statuses: {} });
    k.total += 1;
    const s = r.status === 0 ? 'no answer' : String(r.status);
    k.statuses[s] = (k.statuses[s] ?? 0) + 1;
  }
  const phases = {};
  for (const r of requests) {
    if (r.status === 0) continue;
    const ph = phaseOf(faults, r.t);
    const p = (phases[ph] ??= { all: [], checkout: [] });
    p.all.push(r.ms);
    if (r.kind === 'checkout') p.checkout.push(r.ms);
  }
  const latency = {};
  for (const [ph, v] of Object.entries(phases)) latency[ph] = { all: latencyStats(v.all), checkout: latencyStats(v.checkout) };
  const fiveXX = requests.filter((r) => r.status >= 500);
  return { total: requests.length, byKind, latency, fiveXX };
}

const check = (name, ok, figure, details = [], notes = []) => ({ name, ok, figure, details: details.slice(0, 20), more: Math.max(0, details.length - 20), notes: notes.slice(0, 40) });

const money = (minor, currency) => `${(minor / 100).toFixed(2)} ${(currency ?? '').toUpperCase()}`.trim();

/**
 * Maps every charge the acquirer ever made (refunded ones included) to the order it paid for
 * (its `metadata.order_id`, looked up in the merchant exports) and through the order's buyer
 * e-mail to the buyer intent that made it. A charge is *held* when its order is in a charged
 * state with exactly this charge; any other charge must have been refunded in full (the
 * lost checkouts that reconciliation refunds). Returns:
 *   charged: [charge], byIntent: Map(intent id -> {intent, charges}),
 *   unknownOrder / noBuyer / stranger: charges whose order is not in any export, whose order
 *   has no buyer e-mail, or whose e-mail is no intent's,
 *   held / refundedUnheld / unheld: charges held by their order, not held but refunded in
 *   full, and not held and not refunded (money taken for nothing).
 * Each charge: {id, lane, order_id, key, status, amount, currency, refunded, event, state,
 * lostRefund (the reconciliation's lost-checkout refund of it, or null)}.
 */
export function attributeCharges(data) {
  const rows = new Map();
  for (const e of data.events ?? []) for (const r of e.exportRows ?? []) rows.set(r.order_id, { ...r, event: e.name });
  const lost = new Map();
  for (const e of data.events ?? []) for (const l of e.reconcile?.lost_checkouts_refunded ?? []) lost.set(l.charge_id, l);
  const byEmail = new Map((data.intents ?? []).map((it) => [it.email, it]));
  const out = { charged: [], byIntent: new Map(), unknownOrder: [], noBuyer: [], stranger: [], held: [], refundedUnheld: [], unheld: [] };
  const ids = Object.keys(data.charges ?? {}).sort((a, b) => (data.charges[a].created ?? 0) - (data.charges[b].created ?? 0));
  for (const id of ids) {
    const c = data.charges[id];
    if (!CHARGE_STATUSES.has(c.status)) continue;
    const row = c.order_id ? rows.get(c.order_id) : undefined;
    const ch = { id, ...c, refunded: c.refunded ?? 0, event: row?.event ?? null, state: row?.state ?? null, lostRefund: lost.get(id) ?? null };
    out.charged.push(ch);
    if (row && CHARGED_STATES.has(row.state) && row.charge_id === id) out.held.push(ch);
    else if (ch.refunded >= ch.amount) out.refundedUnheld.push(ch);
    else out.unheld.push(ch);
    if (!row) { out.unknownOrder.push(ch); continue; }
    if (!row.buyer_email) { out.noBuyer.push(ch); continue; }
    const it = byEmail.get(row.buyer_email);
    if (!it) { out.stranger.push(ch); continue; }
    if (!out.byIntent.has(it.id)) out.byIntent.set(it.id, { intent: it, charges: [] });
    out.byIntent.get(it.id).charges.push(ch);
  }
  return out;
}

/** One charge in a sentence: id, lane, order, its ledger state and any refund. */
export function describeCharge(ch) {
  const state = ch.state ?? 'unknown to the ledger';
  const refund = ch.lostRefund
    ? `, refunded ${money(ch.lostRefund.amount ?? ch.refunded, ch.currency)} by reconciliation as a lost checkout`
    : ch.refunded > 0 ? `, refunded ${money(ch.refunded, ch.currency)}` : '';
  const st = ch.status === 'succeeded' ? '' : ` ${ch.status}`;
  return `${ch.id}${st} on ${ch.lane} for order ${ch.order_id ?? '(none)'} (${state}; acquirer key ${ch.key ?? '?'})${refund}`;
}

/** Sums a per-lane simulator stats map (by_idempotency_key or by_order_id) over lanes. */
export function sumOverLanes(simStats, field) {
  const out = {};
  for (const lane of Object.values(simStats?.lanes ?? {})) {
    for (const [k, n] of Object.entries(lane[field] ?? {})) out[k] = (out[k] ?? 0) + n;
  }
  return out;
}

/**
 * Checks every invariant and returns [{name, ok, figure, details}].
 *
 * data = {
 *   events: [{id, name, summary: {skus: [{sku, stock, sold}], queued_count},
 *             exportRows: [{order_id, state, lines: [{sku, qty}]}], reconcile: {report}}],
 *   sim: {lanes: {lane: {by_idempotency_key, by_order_id}}},
 *   accepted: [{event, order_id, status}],   // 201 answers the buyers got
 *   declined: [{event, order_id}],           // 402 decline answers the buyers got
 *   requests: [{t, kind, status, code, path}],
 *   panics: [line], leaks: [{pan, file}], filesScanned: n,
 *   replays: {checked, mismatches: [text]}, unexpectedNoAnswer: [text],
 *   charges: {payment_intent_id: {lane, order_id, key, status, amount, currency, refunded, created}}:
 *            every payment intent the acquirer ever made (refunded ones included),
 *   intents: [{id, email, event, style, items, history, outcome}]: every buyer intent of the
 *            run (one simulated buyer and one cart, with its own e-mail address),
 *   (exportRows carry charge_id and buyer_email; reconcile carries lost_checkouts_refunded:
 *    [{charge_id, order_id, amount}])
 * }
 */
export function checkInvariants(data) {
  const out = [];

  // 1. No ticket oversold: sold <= stock per SKU, and the units of paid orders in the export fit too.
  {
    const bad = [];
    const figs = [];
    for (const e of data.events) {
      let sold = 0, stock = 0;
      for (const s of e.summary?.skus ?? []) {
        sold += s.sold; stock += s.stock;
        if (s.sold > s.stock) bad.push(`${e.name} ${s.sku}: sold ${s.sold} > stock ${s.stock}`);
        const paidUnits = (e.exportRows ?? [])
          .filter((o) => CHARGED_STATES.has(o.state) || o.state === 'queued')
          .reduce((n, o) => n + (o.lines ?? []).filter((l) => l.sku === s.sku).reduce((m, l) => m + (l.qty ?? l.quantity ?? 0), 0), 0);
        if (paidUnits > s.stock) bad.push(`${e.name} ${s.sku}: paid orders hold ${paidUnits} units > stock ${s.stock}`);
      }
      figs.push(`${e.name} ${sold}/${stock}`);
    }
    out.push(check('no ticket oversold', bad.length === 0, `sold/stock: ${figs.join(', ')}`, bad));
  }

  // 2. No payment charged twice at the acquirer: per acquirer idempotency key and per order, over all lanes.
  {
    const byKey = sumOverLanes(data.sim, 'by_idempotency_key');
    const byOrder = sumOverLanes(data.sim, 'by_order_id');
    const bad = [];
    const perLane = (field, k) => Object.entries(data.sim?.lanes ?? {}).filter(([, l]) => (l[field] ?? {})[k]).map(([name, l]) => `${name} ${l[field][k]}`).join(', ');
    for (const [k, n] of Object.entries(byKey)) if (n > 1) bad.push(`acquirer idempotency key ${k}: ${n} charges (${perLane('by_idempotency_key', k)})`);
    for (const [o, n] of Object.entries(byOrder)) if (n > 1) bad.push(`order ${o}: ${n} successful charges (${perLane('by_order_id', o)})`);
    const charges = Object.values(byOrder).reduce((a, b) => a + b, 0);
    out.push(check('no payment charged twice', bad.length === 0,
      `${charges} successful charges for ${Object.keys(byOrder).length} orders, ${Object.keys(byKey).length} acquirer idempotency keys, max ${Math.max(0, ...Object.values(byOrder))} per order`, bad));
  }

  // 2b. At most one charge per buyer intent, counted from every charge the acquirer ever made
  //     (refunded ones too): a retry that became a second order is a double charge, even
  //     when reconciliation later refunded one of the two.
  const att = attributeCharges(data);
  {
    const bad = [];
    if (!data.charges) bad.push("the acquirer's charge list is missing");
    if (!(data.intents ?? []).length) bad.push('no buyer intent was recorded');
    let doubles = 0, extra = 0, extraAmount = 0, max = 0;
    const currency = att.charged[0]?.currency;
    for (const { intent: it, charges } of att.byIntent.values()) {
      max = Math.max(max, charges.length);
      if (charges.length < 2) continue;
      doubles += 1;
      extra += charges.length - 1;
      extraAmount += charges.slice(1).reduce((n, c) => n + c.amount, 0);
      const cart = (it.items ?? []).map((l) => `${l.quantity}×${l.sku}`).join(' + ');
      const total = charges.reduce((n, c) => n + c.amount, 0);
      const orders = new Set(charges.map((c) => c.order_id)).size;
      bad.push(`buyer ${it.id} (${it.style}, ${it.event}, ${cart}, ${it.email}): ${charges.length} charges on ${orders} order${orders > 1 ? 's' : ''}, ${money(total, charges[0].currency)} in all: ${charges.map(describeCharge).join('; ')}${it.outcome ? `; the buyer ended with: ${it.outcome}` : ''}${it.history?.length ? `; checkout requests: ${it.history.join(', ')}` : ''}`);
    }
    for (const c of att.noBuyer) bad.push(`charge ${describeCharge(c)}: its order has no buyer e-mail in the export, so no buyer intent can be counted`);
    for (const c of att.stranger) bad.push(`charge ${describeCharge(c)}: its order's buyer e-mail is no buyer intent of this run`);
    const charged = att.byIntent.size;
    out.push(check('at most one charge per buyer intent', bad.length === 0,
      `${att.charged.length} charges for ${charged} of ${(data.intents ?? []).length} buyer intents, max ${max} per intent; ${doubles} intents charged more than once (${extra} extra charges, ${money(extraAmount, currency)})`, bad));
  }

  // 2c. Every charge is held by its order in the ledger, or was refunded in full (the lost
  //     checkouts that reconciliation refunds, listed separately with their figure).
  {
    const bad = att.unheld.map((c) => `charge ${describeCharge(c)}: no order holds it and it is not refunded`);
    const lostAmount = att.refundedUnheld.reduce((n, c) => n + c.amount, 0);
    const byRecon = att.refundedUnheld.filter((c) => c.lostRefund).length;
    const currency = att.charged[0]?.currency;
    const notes = att.refundedUnheld.map((c) => {
      const buyer = [...att.byIntent.values()].find((b) => b.charges.includes(c));
      return `lost checkout refunded: ${describeCharge(c)}${buyer ? `, buyer ${buyer.intent.id} (${buyer.intent.style}, ${buyer.charges.length} charge${buyer.charges.length > 1 ? 's' : ''})` : ''}`;
    });
    out.push(check('every charge held by its order or refunded as a lost checkout', bad.length === 0,
      `${att.held.length} charges held by their orders; ${att.refundedUnheld.length} charges of lost checkouts refunded in full (${byRecon} by the final reconciliation), ${money(lostAmount, currency)}; ${att.unheld.length} charges no order holds (${att.unknownOrder.length} for orders unknown to the ledger)`,
      bad, notes));
  }

  // 3. Every accepted checkout in exactly one final state, matching the acquirer.
  {
    const byOrder = sumOverLanes(data.sim, 'by_order_id');
    const rows = new Map();
    for (const e of data.events) for (const r of e.exportRows ?? []) rows.set(r.order_id, [...(rows.get(r.order_id) ?? []), r]);
    const bad = [];
    const states = {};
    for (const a of data.accepted) {
      const found = rows.get(a.order_id) ?? [];
      if (found.length !== 1) { bad.push(`order ${a.order_id} (${a.status} at checkout) appears ${found.length} times in the exports`); continue; }
      const st = found[0].state;
      states[st] = (states[st] ?? 0) + 1;
      if (!FINAL_STATES.has(st)) { bad.push(`order ${a.order_id} (${a.status} at checkout) is ${st}, not a final state`); continue; }
      const charges = byOrder[a.order_id] ?? 0;
      const want = CHARGED_STATES.has(st) ? 1 : 0;
      if (charges !== want) bad.push(`order ${a.order_id} is ${st} with ${charges} successful charges at the acquirer (expected ${want})`);
    }
    for (const d of data.declined ?? []) {
      const charges = byOrder[d.order_id] ?? 0;
      if (charges !== 0) bad.push(`order ${d.order_id} was answered declined but has ${charges} charges at the acquirer`);
      const st = (rows.get(d.order_id) ?? [])[0]?.state;
      if (st && CHARGED_STATES.has(st)) bad.push(`order ${d.order_id} was answered declined but is ${st} in the ledger`);
    }
    const fig = Object.entries(states).map(([s, n]) => `${s} ${n}`).join(', ') || 'none';
    out.push(check('every accepted checkout in exactly one final state, matching the acquirer', bad.length === 0,
      `${data.accepted.length} accepted: ${fig}; ${(data.declined ?? []).length} declines uncharged`, bad));
  }

  // 4. No queued authorization left behind after recovery.
  {
    const bad = [];
    let n = 0;
    for (const e of data.events) {
      const q = e.summary?.queued_count ?? 0;
      n += q;
      if (q !== 0) bad.push(`${e.name}: ${q} queued authorizations still stored`);
      const rowsQueued = (e.exportRows ?? []).filter((r) => r.state === 'queued').length;
      if (rowsQueued !== 0) bad.push(`${e.name}: ${rowsQueued} orders still in state queued`);
    }
    const everQueued = data.accepted.filter((a) => a.status === 'queued').length;
    out.push(check('no queued authorization left behind', bad.length === 0, `${everQueued} accepted offline, ${n} still queued`, bad));
  }

  // 5. No 5xx at all.
  {
    const fives = data.requests.filter((r) => r.status >= 500);
    const by = {};
    for (const r of fives) { const k = `${r.status} ${r.kind} ${r.code ?? ''}`.trim(); by[k] = (by[k] ?? 0) + 1; }
    out.push(check('no 5xx answers', fives.length === 0, `${fives.length} of ${data.requests.length} requests`, Object.entries(by).map(([k, n]) => `${n} × ${k}`)));
  }

  // 6. No panic in the Worker's log.
  out.push(check('no panic in the Worker log', (data.panics ?? []).length === 0, `${(data.panics ?? []).length} panic lines`, data.panics ?? []));

  // 7. No card number in state or logs (and something was really scanned).
  {
    const leaks = data.leaks ?? [];
    const scanned = data.filesScanned ?? 0;
    const bad = leaks.map((l) => `card ${l.pan.slice(0, 4)}…${l.pan.slice(-4)} in ${l.file}`);
    if (scanned === 0) bad.push('no files were scanned');
    out.push(check('no card number in state or logs', bad.length === 0, `${scanned} files searched for ${TEST_PANS.length} test card numbers, ${leaks.length} found`, bad));
  }

  // 8. Reconciliation clean for every event.
  {
    const bad = [];
    let matched = 0;
    let lostRefunded = 0;
    for (const e of data.events) {
      const rep = e.reconcile?.report ?? e.reconcile;
      if (!rep || !Array.isArray(rep.matched)) { bad.push(`${e.name}: no reconciliation report`); continue; }
      matched += rep.matched.length;
      lostRefunded += (rep.refunded_unpaid ?? []).length;
      if (rep.truncated) bad.push(`${e.name}: the acquirer listing was truncated`);
      for (const f of ['missing_at_acquirer', 'missing_at_edge', 'amount_mismatch', 'awaiting_forward', 'lost_refunding']) {
        const v = rep[f] ?? [];
        const describe = (x) => {
          if (typeof x !== 'string') return JSON.stringify(x);
          const c = data.charges?.[x];
          if (!c) return x;
          const row = (e.exportRows ?? []).find((r) => r.order_id === c.order_id);
          return `${x} (${c.lane}, order ${c.order_id}, ledger state ${row?.state ?? 'unknown'})`;
        };
        if (v.length) bad.push(`${e.name}: ${f} ${v.length}: ${v.slice(0, 5).map(describe).join(', ')}`);
      }
    }
    const lost = lostRefunded ? `, ${lostRefunded} charges of checkouts cut off mid-way refunded in full` : '';
    out.push(check('reconciliation clean', bad.length === 0, `${matched} matched, ${bad.length} discrepancies${lost}`, bad));
  }

  // 9. Idempotent replays are consistent (same key + body: same answer; other body: refused).
  {
    const r = data.replays ?? { checked: 0, mismatches: [] };
    const bad = [...r.mismatches];
    if (r.checked === 0) bad.push('no replay was checked');
    out.push(check('duplicated and replayed requests answered consistently', bad.length === 0, `${r.checked} replays checked, ${r.mismatches.length} inconsistent`, bad));
  }

  // 10. The Worker answered every request except during the runtime restart.
  {
    const u = data.unexpectedNoAnswer ?? [];
    out.push(check('no lost connection outside the runtime restart', u.length === 0, `${u.length} requests without an answer outside the restart window`, u));
  }
  return out;
}

// ------------------------------------------------------------------------------ report

const fmt = (v) => (v === null || v === undefined ? '–' : typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(1)) : String(v));
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);

/** Markdown report: run, invariants, requests by kind and status, latency per phase, faults, findings. */
export function renderReport({ run, invariants, tally, faults, outcomes = {}, findings = [], svgFile = 'chart.svg' }) {
  const L = [];
  L.push('# poptill soak and chaos run', '');
  L.push(`${run.started} · ${fmt(run.seconds)} s of load · ${run.buyers} concurrent buyers over ${run.events} events · ${tally.total} requests · result: **${invariants.every((i) => i.ok) ? 'all invariants held' : 'INVARIANT VIOLATED'}**`, '');
  L.push(`![latency and outcomes over time](${svgFile})`, '');
  L.push('## Invariants', '', '| invariant | result | figure |', '| --- | --- | --- |');
  for (const i of invariants) L.push(`| ${i.name} | ${i.ok ? 'held' : '**VIOLATED**'} | ${i.figure} |`);
  const broken = invariants.filter((i) => !i.ok);
  for (const i of broken) {
    L.push('', `### ${i.name}: violated`, '');
    for (const d of i.details) L.push(`- ${d}`);
    if (i.more) L.push(`- … and ${i.more} more`);
  }
  for (const i of invariants.filter((x) => x.notes?.length)) {
    L.push('', `### ${i.name}: noted`, '');
    for (const n of i.notes) L.push(`- ${n}`);
  }
  L.push('', '## Buyer outcomes', '', '| outcome | count |', '| --- | --- |');
  for (const [k, n] of Object.entries(outcomes).sort((a, b) => b[1] - a[1])) L.push(`| ${k} | ${n} |`);
  L.push('', '## Requests by kind and status', '', '| kind | total | statuses |', '| --- | --- | --- |');
  for (const [k, v] of Object.entries(tally.byKind).sort((a, b) => b[1].total - a[1].total)) {
    L.push(`| ${k} | ${v.total} | ${Object.entries(v.statuses).sort().map(([s, n]) => `${s}: ${n}`).join(', ')} |`);
  }
  L.push('', '## Latency per phase (ms, answered requests)', '', '| phase | checkouts n | p50 | p95 | p99 | all requests n | p50 | p95 | p99 |', '| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const [ph, v] of Object.entries(tally.latency)) {
    const c = v.checkout, a = v.all;
    L.push(`| ${ph} | ${c.n} | ${fmt(c.p50)} | ${fmt(c.p95)} | ${fmt(c.p99)} | ${a.n} | ${fmt(a.p50)} | ${fmt(a.p95)} | ${fmt(a.p99)} |`);
  }
  L.push('', '## Fault timeline (seconds from the start of the load)', '', '| from | to | fault | note |', '| --- | --- | --- | --- |');
  for (const f of faults) L.push(`| ${fmt(f.start)} | ${fmt(f.end)} | ${f.label} | ${f.note ?? ''} |`);
  if (findings.length) {
    L.push('', '## Findings', '');
    for (const f of findings) L.push(`- ${f}`);
  }
  L.push('');
  return L.join('\n');
}

const OUTCOME_COLORS = {
  approved: '#2e7d32', queued: '#1565c0', declined: '#f9a825', 'sold out': '#90a4ae', refused: '#8e24aa',
  'client error': '#6d4c41', '5xx': '#c62828', 'no answer': '#212121',
};

/** Classifies a checkout record for the chart. */
export function outcomeClass(r) {
  if (r.status === 0) return 'no answer';
  if (r.status >= 500) return '5xx';
  if (r.status === 201) return r.outcome === 'queued' ? 'queued' : 'approved';
  if (r.status === 402 && r.code && /declin|insufficient|expired_card|processing/.test(r.code)) return 'declined';
  if (r.status === 409 && r.code === 'out_of_stock') return 'sold out';
  if (r.status === 429 || r.status === 402 || r.status === 409 || r.status === 410) return 'refused';
  return 'client error';
}

/**
 * Hand-written SVG: checkout latency p50/p99 per time bucket (log scale) above, checkout
 * outcomes per bucket (stacked bars) below, fault windows as labelled shaded bands.
 */
export function renderSvg({ requests, faults, seconds, bucket = 1 }) {
  const W = 1000, H = 560, left = 60, right = 20, top = 30;
  const latH = 230, gap = 50, outH = 180;
  const plotW = W - left - right;
  const span = Math.max(seconds, 1);
  const x = (t) => left + (Math.min(Math.max(t, 0), span) / span) * plotW;
  const nb = Math.ceil(span / bucket);
  const lat = Array.from({ length: nb }, () => []);
  const outc = Array.from({ length: nb }, () => ({}));
  for (const r of requests) {
    if (r.kind !== 'checkout') continue;
    const b = Math.min(nb - 1, Math.max(0, Math.floor(r.t / bucket)));
    if (r.status !== 0) lat[b].push(r.ms);
    const c = outcomeClass(r);
    outc[b][c] = (outc[b][c] ?? 0) + 1;
  }
  const allMs = requests.filter((r) => r.kind === 'checkout' && r.status !== 0).map((r) => r.ms);
  const maxMs = Math.max(10, ...allMs);
  const lo = 1, hi = 10 ** Math.ceil(Math.log10(maxMs));
  const yLat = (ms) => top + latH - ((Math.log10(Math.max(ms, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * latH;
  const outTop = top + latH + gap;
  const maxCount = Math.max(1, ...outc.map((o) => Object.values(o).reduce((a, b) => a + b, 0)));
  const yOut = (n) => outTop + outH - (n / maxCount) * outH;
  const s = [];
  s.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`);
  s.push(`<rect width="${W}" height="${H}" fill="#fff"/>`);
  s.push(`<text x="${left}" y="18" font-size="14" font-weight="bold">Checkout latency (p50, p99 per ${bucket} s, log scale) and outcomes over time; fault windows shaded</text>`);
  // fault bands, staggered labels
  const palette = ['#ffcdd2', '#ffe0b2', '#fff9c4', '#c8e6c9', '#b3e5fc', '#d1c4e9', '#f8bbd0', '#dcedc8'];
  faults.forEach((f, i) => {
    const x0 = x(f.start), x1 = x(f.end ?? span);
    s.push(`<rect class="fault" x="${x0.toFixed(1)}" y="${top}" width="${Math.max(1, x1 - x0).toFixed(1)}" height="${latH + gap + outH}" fill="${palette[i % palette.length]}" fill-opacity="0.55"><title>${esc(f.label)}</title></rect>`);
    s.push(`<text x="${(x0 + 2).toFixed(1)}" y="${top + 10 + (i % 4) * 11}" font-size="9" fill="#333">${esc(f.label)}</text>`);
  });
  // latency axes
  s.push(`<line x1="${left}" y1="${top + latH}" x2="${W - right}" y2="${top + latH}" stroke="#000"/><line x1="${left}" y1="${top}" x2="${left}" y2="${top + latH}" stroke="#000"/>`);
  for (let d = lo; d <= hi; d *= 10) {
    s.push(`<line x1="${left - 4}" y1="${yLat(d).toFixed(1)}" x2="${W - right}" y2="${yLat(d).toFixed(1)}" stroke="#ddd"/><text x="${left - 6}" y="${(yLat(d) + 4).toFixed(1)}" text-anchor="end">${d >= 1000 ? d / 1000 + ' s' : d + ' ms'}</text>`);
  }
  const line = (p, color, name) => {
    const pts = [];
    lat.forEach((v, i) => {
      if (!v.length) return;
      const sorted = [...v].sort((a, b) => a - b);
      pts.push(`${x((i + 0.5) * bucket).toFixed(1)},${yLat(percentile(sorted, p)).toFixed(1)}`);
    });
    if (pts.length) s.push(`<polyline class="latency" data-p="${p}" points="${pts.join(' ')}" fill="none" stroke="${color}" stroke-width="1.5"><title>${name}</title></polyline>`);
  };
  line(50, '#1565c0', 'p50');
  line(99, '#c62828', 'p99');
  s.push(`<text x="${W - right - 120}" y="${top + 12}" fill="#1565c0">— p50</text><text x="${W - right - 70}" y="${top + 12}" fill="#c62828">— p99</text>`);
  // outcomes
  s.push(`<line x1="${left}" y1="${outTop + outH}" x2="${W - right}" y2="${outTop + outH}" stroke="#000"/><line x1="${left}" y1="${outTop}" x2="${left}" y2="${outTop + outH}" stroke="#000"/>`);
  s.push(`<text x="${left - 6}" y="${outTop + 4}" text-anchor="end">${maxCount}</text><text x="${left - 6}" y="${outTop + outH + 4}" text-anchor="end">0</text>`);
  s.push(`<text x="${left}" y="${outTop - 6}">checkouts per ${bucket} s by outcome</text>`);
  const bw = Math.max(1, plotW / nb - 0.5);
  const order = Object.keys(OUTCOME_COLORS);
  outc.forEach((o, i) => {
    let acc = 0;
    for (const k of order) {
      const n = o[k] ?? 0;
      if (!n) continue;
      const y1 = yOut(acc), y0 = yOut(acc + n);
      s.push(`<rect class="outcome" data-outcome="${k}" x="${x(i * bucket).toFixed(1)}" y="${y0.toFixed(1)}" width="${bw.toFixed(1)}" height="${(y1 - y0).toFixed(1)}" fill="${OUTCOME_COLORS[k]}"/>`);
      acc += n;
    }
  });
  // time axis
  const step = span > 400 ? 60 : span > 120 ? 30 : 10;
  for (let t = 0; t <= span; t += step) s.push(`<text x="${x(t).toFixed(1)}" y="${outTop + outH + 14}" text-anchor="middle">${t}s</text>`);
  // legend
  order.forEach((k, i) => {
    const lx = left + i * 115;
    s.push(`<rect x="${lx}" y="${H - 22}" width="10" height="10" fill="${OUTCOME_COLORS[k]}"/><text x="${lx + 14}" y="${H - 13}">${esc(k)}</text>`);
  });
  s.push('</svg>');
  return s.join('\n');
}

// ------------------------------------------------------------------------- hostile buyers

/**
 * Fault windows in which the acquirer itself failed: lanes refused or held connections, the
 * local runtime restarted, the acquirer was slow, answered errors, or lost or garbled its
 * answers after charging (an unknown outcome within the exposure bound is accepted like a
 * stored payment). Only inside one of them may a checkout be accepted offline; never while
 * the acquirer was healthy, whatever buyers and attackers did (a crowd in the waiting room,
 * lanes filled by slow checkouts, junk) and whatever the operators did (key rotation, policy
 * pushes). A window counts until `graceS` seconds after it ended (the breaker's cool-down).
 */
export const ACQUIRER_FAULTS = new Set(['all lanes refuse', 'all lanes hang', 'runtime restart', 'acquirer slow', 'error burst', 'one lane partitioned', 'processed, then reset', 'processing intents', 'malformed 2xx']);
/** Of those, the windows in which no lane could be reached at all. */
export const UNREACHABLE_FAULTS = new Set(['all lanes refuse', 'all lanes hang', 'runtime restart']);

/**
 * No goods released offline while the acquirer answered: every checkout answered `queued`
 * (stored offline, the goods handed over) must have started inside an acquirer fault.
 * `accepted`: [{order_id, status, started, event}] with `started` the second of the run at
 * which the first request under the checkout's Idempotency-Key was sent;
 * `faults`: [{label, start, end}].
 */
// After a fault the router keeps a lane's breaker open for its cool-down (routing.rs
// `breaker_cool_down_ms`, 10 s): checkouts in those seconds still see the acquirer's failure.
export function offlineOnlyWhenUnreachable(accepted, faults, graceS = 12) {
  const windows = (set) => faults.filter((f) => set.has(f.label)).map((f) => [f.start - 0.5, (f.end ?? Infinity) + graceS]);
  const inside = (a, ws) => typeof a.started === 'number' && ws.some(([s, e]) => a.started >= s && a.started <= e);
  const down = windows(ACQUIRER_FAULTS), unreachable = windows(UNREACHABLE_FAULTS);
  const offline = accepted.filter((a) => a.status === 'queued');
  const bad = offline
    .filter((a) => !inside(a, down))
    .map((a) => {
      const during = faults.filter((f) => a.started >= f.start - 0.5 && a.started <= (f.end ?? Infinity) + graceS).map((f) => f.label);
      return `${a.event} ${a.order_id} stored offline at ${typeof a.started === 'number' ? a.started.toFixed(1) : '?'} s (${during.length ? `during ${during.join(', ')}` : 'acquirer healthy'})`;
    });
  const whileUnreachable = offline.filter((a) => inside(a, unreachable)).length;
  return check('no goods released offline while the acquirer answered', bad.length === 0,
    `${offline.length} accepted offline: ${whileUnreachable} while no lane could be reached, ${offline.length - whileUnreachable - bad.length} while it was slow or failing, ${bad.length} while it was healthy`, bad);
}

/** An honest buyer intent that got an answer from the acquirer (or a stored payment). */
export const definite = (outcome) => ['approved', 'queued', 'declined'].includes(outcome);
/** Success for an honest intent: a definite answer, or (for a card the issuer declines) the
 *  per-card decline limit refusing it before the acquirer sees it, which is the same answer. */
export const honestSuccess = (i) => definite(i.outcome) || (i.declining === true && /card_velocity/.test(i.outcome ?? ''));

/**
 * Honest buyers' success with attackers beside them stays within `bound` of the same run's
 * baseline window without attackers. `intents`: [{started, outcome, event, style}];
 * `baseline` and `attacked`: [from, to] seconds, both before any fault; only the events in
 * `events` count (a sell-out event's stock is gone within seconds either way).
 */
export function honestSuccessHolds(intents, { baseline, attacked, events, bound = 0.1, minIntents = 10 }) {
  const within = ([from, to]) => intents.filter((i) => events.includes(i.event) && i.style !== 'canary' && i.started >= from && i.started < to);
  const rate = (xs) => (xs.length ? xs.filter(honestSuccess).length / xs.length : null);
  const a = within(baseline), b = within(attacked);
  const ra = rate(a), rb = rate(b);
  const pct = (r) => (r === null ? 'n/a' : `${(r * 100).toFixed(1)} %`);
  const bad = [];
  if (a.length < minIntents || b.length < minIntents) bad.push(`too few honest intents to compare: ${a.length} without attackers, ${b.length} with (need ${minIntents} each)`);
  else if (rb < ra - bound) {
    bad.push(`with attackers ${pct(rb)} of honest intents got an answer, against ${pct(ra)} without (bound ${bound * 100} points)`);
    for (const i of b.filter((x) => !honestSuccess(x)).slice(0, 10)) bad.push(`${i.event} ${i.id ?? ''}: ${i.outcome}`);
  }
  return check(`honest buyers' success with attackers within ${bound * 100} points of the run without them`, bad.length === 0,
    `without attackers ${pct(ra)} of ${a.length} intents, with attackers ${pct(rb)} of ${b.length}`, bad);
}

/**
 * The event objects' state stays bounded: the orders, the waiting room and each object's
 * SQLite file stay under their caps. `events`: [{name, summary}] with `summary.orders_by_state`
 * and `queue_depth`; `caps`: {orders (a number, or a function of the event), queue, dbBytes};
 * `dbFiles`: [{file, bytes}].
 */
export function stateBounded(events, caps, dbFiles = []) {
  const bad = [];
  const figs = [];
  for (const e of events) {
    const orders = Object.values(e.summary?.orders_by_state ?? {}).reduce((a, b) => a + b, 0);
    const queue = e.summary?.queue_depth ?? 0;
    const cap = typeof caps.orders === 'function' ? caps.orders(e) : caps.orders;
    figs.push(`${e.name} ${orders} orders, ${queue} waiting`);
    if (orders > cap) bad.push(`${e.name}: ${orders} orders > cap ${cap}`);
    if (queue > caps.queue) bad.push(`${e.name}: ${queue} places in the waiting room > cap ${caps.queue}`);
  }
  const biggest = dbFiles.reduce((m, f) => (f.bytes > (m?.bytes ?? -1) ? f : m), null);
  for (const f of dbFiles) if (f.bytes > caps.dbBytes) bad.push(`${f.file}: ${f.bytes} bytes > ${caps.dbBytes}`);
  if (!events.length) bad.push('no event summaries to check');
  const size = biggest ? `; largest object database ${(biggest.bytes / 1024).toFixed(0)} KiB of ${dbFiles.length}` : '';
  return check('event state bounded under attack', bad.length === 0, `${figs.join(', ')}${size}`, bad);
}

/** No receipt readable without its URL: `guesses`: [{path, status}] of receipt reads without the capability. */
export function receiptsGuarded(guesses) {
  const bad = guesses.filter((g) => g.status === 200).map((g) => `${g.path} answered 200`);
  const answered = guesses.filter((g) => g.status !== 0);
  if (!answered.length) bad.push('no receipt guess was answered');
  return check('no receipt readable without its URL', bad.length === 0, `${answered.length} guessed receipt URLs, ${bad.length} readable`, bad);
}
