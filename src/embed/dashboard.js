// poptill operations dashboard: asks for the operator's or the merchant's key once (a form,
// or a #key=… fragment, which never reaches a server), keeps it in this tab's
// sessionStorage, polls GET /v1/admin/events/{id}/metrics with it in the Authorization
// header every few seconds, and draws the charts as inline SVG. No dependencies.
(() => {
  'use strict';
  const EVERY_MS = 3000;
  const KEY_SLOT = 'poptill.ops.key';
  const eventId = decodeURIComponent(location.pathname.split('/').pop() || '');
  const $ = (id) => document.getElementById(id);
  const SVG = 'http://www.w3.org/2000/svg';
  const COLORS = ['#2563eb', '#db2777', '#059669', '#d97706', '#7c3aed', '#0891b2', '#dc2626', '#4b5563'];

  const css = new CSSStyleSheet();
  css.replaceSync(`
    [hidden]{display:none!important}
    body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f5f6f8;color:#111}
    header{display:flex;align-items:baseline;gap:1rem;padding:.8rem 1.2rem;background:#111;color:#fff}
    h1{font-size:1.1rem;margin:0} h1 span{font-weight:400;opacity:.8} #status{margin:0;opacity:.85}
    form{max-width:28rem;margin:3rem auto;display:grid;gap:.5rem;background:#fff;padding:1.2rem;border-radius:8px}
    .hint{color:#555;font-size:.85rem;margin:0}
    main{display:grid;grid-template-columns:repeat(auto-fit,minmax(26rem,1fr));gap:1rem;padding:1rem}
    .card{background:#fff;border-radius:8px;padding:.8rem 1rem;box-shadow:0 1px 2px #0001}
    .wide{grid-column:1/-1} h2{font-size:.95rem;margin:0 0 .6rem}
    svg{width:100%;height:auto;display:block} svg text{font-size:11px;fill:#333}
    table{border-collapse:collapse;width:100%} td,th{padding:.25rem .5rem;text-align:right;border-bottom:1px solid #eee}
    td:first-child,th:first-child{text-align:left} .big{font-size:1.6rem;font-weight:600}
    .model{color:#444;font-size:.85rem} .foot{grid-column:1/-1;text-align:right;margin:0}
    .stale{color:#fbbf24}`);
  document.adoptedStyleSheets = [css];

  const el = (tag, attrs = {}, text) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const svg = (tag, attrs = {}, text) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const fill = (id, ...nodes) => $(id).replaceChildren(...nodes);
  const pct = (x) => (x == null ? '–' : `${(x * 100).toFixed(1)} %`);
  const ms = (x) => (x == null ? '–' : x >= 1000 ? `${(x / 1000).toFixed(1)} s` : `${x} ms`);
  let money = (minor) => String(minor);

  function setMoney(currency) {
    try {
      const f = new Intl.NumberFormat('en', { style: 'currency', currency });
      const digits = f.resolvedOptions().maximumFractionDigits;
      money = (minor) => (minor == null ? '–' : f.format(minor / 10 ** digits));
    } catch { money = (minor) => `${minor} ${currency}`; }
  }

  /** Horizontal bars: rows of [label, value, metric-key]. */
  function bars(rows, { width = 560, color = COLORS[0], format = String } = {}) {
    const h = 26, left = 150, max = Math.max(1, ...rows.map((r) => r[1]));
    const s = svg('svg', { viewBox: `0 0 ${width} ${rows.length * h + 4}`, role: 'img' });
    rows.forEach(([label, value, key], i) => {
      const y = i * h + 2, w = ((width - left - 70) * value) / max;
      s.append(svg('text', { x: 0, y: y + 16 }, label));
      s.append(svg('rect', { x: left, y, width: Math.max(w, value ? 2 : 0), height: h - 6, rx: 3, fill: color }));
      const t = svg('text', { x: left + w + 6, y: y + 16, 'data-metric': key || '' }, format(value));
      s.append(t);
    });
    return s;
  }

  function funnel(m) {
    const f = m.funnel;
    const rows = [
      ['Quotes shown', f.quote_shown, 'funnel.quote_shown'],
      ['Cards tokenized', f.token_issued, 'funnel.token_issued'],
      ['Checkouts', f.checkout_started, 'funnel.checkout_started'],
      ['Approved', f.approved, 'funnel.approved'],
      ['Queued offline', f.queued, 'funnel.queued'],
      ['Declined', f.declined, 'funnel.declined'],
      ['Forwarded later', f.forwarded, 'funnel.forwarded'],
      ['Expired', f.expired, 'funnel.expired'],
      ['Receipts to webhook', f.receipt_sent, 'funnel.receipt_sent'],
      ['Refunds', f.refund, 'funnel.refund'],
    ];
    const head = el('p');
    head.append(el('span', { class: 'big', 'data-metric': 'funnel.conversion_rate' }, pct(f.conversion_rate)),
      document.createTextNode(` conversion: ${f.converted} of ${f.checkout_started} checkouts approved or queued`));
    fill('funnel', head, bars(rows, { width: 900 }));
  }

  function conversion(m) {
    const b = m.conversion_by_latency;
    if (!b.length) return fill('conversion', el('p', {}, 'No checkouts yet.'));
    const W = 560, H = 220, L = 34, B = 36, slot = (W - L) / b.length;
    const max = Math.max(1, ...b.map((x) => x.started));
    const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'conversion by latency bucket' });
    b.forEach((x, i) => {
      const X = L + i * slot + 4, bw = slot - 8;
      const hs = ((H - B - 20) * x.started) / max, hc = ((H - B - 20) * x.converted) / max;
      const g = svg('g', { 'data-bucket': x.le_ms == null ? `>${x.gt_ms}` : `${x.le_ms}`, 'data-started': x.started, 'data-converted': x.converted });
      g.append(svg('rect', { x: X, y: H - B - hs, width: bw, height: hs, fill: '#cbd5e1' }));
      g.append(svg('rect', { x: X, y: H - B - hc, width: bw, height: hc, fill: '#059669' }));
      g.append(svg('text', { x: X + bw / 2, y: H - B - hs - 4, 'text-anchor': 'middle' }, pct(x.rate)));
      g.append(svg('text', { x: X + bw / 2, y: H - B + 14, 'text-anchor': 'middle' }, x.le_ms == null ? `>${ms(x.gt_ms)}` : `≤${ms(x.le_ms)}`));
      g.append(svg('text', { x: X + bw / 2, y: H - B + 28, 'text-anchor': 'middle' }, `${x.converted}/${x.started}`));
      s.append(g);
    });
    fill('conversion', s, el('p', { class: 'model' }, 'Grey: checkouts answered in that time; green: approved or queued.'));
  }

  function series(m) {
    const colos = Object.keys(m.latency_series);
    const pts = colos.flatMap((c) => m.latency_series[c]);
    if (!pts.length) return fill('series', el('p', {}, 'No checkouts yet.'));
    const W = 560, H = 220, L = 48, B = 24, R = 10;
    const t0 = Math.min(...pts.map((p) => p.minute_ms)), t1 = Math.max(...pts.map((p) => p.minute_ms), t0 + 60000);
    const ymax = Math.max(100, ...pts.map((p) => p.p95_ms || 0));
    const X = (t) => L + ((W - L - R) * (t - t0)) / (t1 - t0), Y = (v) => H - B - ((H - B - 10) * v) / ymax;
    const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'p95 latency per minute per PoP' });
    for (const v of [0, ymax / 2, ymax]) {
      s.append(svg('line', { x1: L, x2: W - R, y1: Y(v), y2: Y(v), stroke: '#e5e7eb' }));
      s.append(svg('text', { x: 2, y: Y(v) + 4 }, ms(Math.round(v))));
    }
    s.append(svg('text', { x: L, y: H - 6 }, new Date(t0).toISOString().slice(11, 16)));
    s.append(svg('text', { x: W - R, y: H - 6, 'text-anchor': 'end' }, new Date(t1).toISOString().slice(11, 16) + ' UTC'));
    colos.forEach((c, i) => {
      const color = COLORS[i % COLORS.length];
      const p = m.latency_series[c].filter((q) => q.p95_ms != null);
      const g = svg('g', { 'data-colo': c, 'data-points': p.length });
      if (p.length > 1) g.append(svg('polyline', { points: p.map((q) => `${X(q.minute_ms)},${Y(q.p95_ms)}`).join(' '), fill: 'none', stroke: color, 'stroke-width': 2 }));
      for (const q of p) g.append(svg('circle', { cx: X(q.minute_ms), cy: Y(q.p95_ms), r: 3, fill: color }));
      g.append(svg('text', { x: L + 8 + i * 80, y: 12, fill: color }, `■ ${c}`));
      s.append(g);
    });
    fill('series', s);
  }

  function queue(m) {
    const q = m.queue, cap = q.aggregate_max || 0, used = q.queued_exposure || 0;
    const W = 560, frac = cap ? Math.min(1, used / cap) : 0;
    const s = svg('svg', { viewBox: `0 0 ${W} 46`, role: 'img', 'aria-label': 'queued exposure against the offline budget' });
    s.append(svg('rect', { x: 0, y: 4, width: W, height: 20, rx: 4, fill: '#e5e7eb' }));
    s.append(svg('rect', { x: 0, y: 4, width: W * frac, height: 20, rx: 4, fill: frac > 0.8 ? '#dc2626' : '#d97706' }));
    s.append(svg('text', { x: 0, y: 40 }, `${money(used)} of ${money(cap)} offline budget (${pct(cap ? used / cap : 0)})`));
    const p = el('p');
    p.append(el('span', { class: 'big', 'data-metric': 'queue.queued_count' }, String(q.queued_count)),
      document.createTextNode(' payments queued, exposure '),
      el('strong', { 'data-metric': 'queue.queued_exposure', 'data-minor': used }, money(used)),
      document.createTextNode(`; ${q.refunds_pending} refunds pending; waiting room ${q.waiting_room_depth} waiting, ${q.waiting_room_admitted} admitted.`));
    fill('queue', p, s);
  }

  function declines(m) {
    const rows = Object.entries(m.declines).sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, v, `declines.${k}`]);
    fill('declines', rows.length ? bars(rows, { color: '#dc2626' }) : el('p', {}, 'No declines.'));
  }

  function latency(m) {
    const t = el('table');
    const head = el('tr');
    for (const h of ['', 'answers', 'p50', 'p95', 'p99']) head.append(el('th', {}, h));
    t.append(head);
    const row = (label, key, v) => {
      const r = el('tr', { 'data-latency': key });
      r.append(el('td', {}, label), el('td', {}, String(v.count)), el('td', {}, ms(v.p50_ms)), el('td', { 'data-metric': `${key}.p95_ms` }, ms(v.p95_ms)), el('td', {}, ms(v.p99_ms)));
      t.append(r);
    };
    row('All PoPs (checkout answer)', 'overall', m.latency.overall);
    for (const [c, v] of Object.entries(m.latency.by_colo)) row(`PoP ${c}`, `colo.${c}`, v);
    for (const [l, v] of Object.entries(m.latency.by_lane)) row(`Lane ${l} (acquirer answer)`, `lane.${l}`, v);
    fill('latency', t);
  }

  function cost(m) {
    const c = m.cost, t = el('table');
    const head = el('tr');
    for (const h of ['lane', 'charged', 'amount', 'cost', 'charges per 1 unit of cost']) head.append(el('th', {}, h));
    t.append(head);
    for (const l of c.lanes) {
      const r = el('tr', { 'data-lane': l.lane });
      r.append(el('td', {}, l.lane), el('td', {}, String(l.transactions)), el('td', {}, money(l.amount_minor)), el('td', { 'data-metric': `cost.${l.lane}` }, money(l.cost_minor)), el('td', {}, l.conversions_per_cost_unit == null ? '–' : l.conversions_per_cost_unit.toFixed(2)));
      t.append(r);
    }
    const e = c.latency_effect;
    const effect = el('p');
    effect.append(el('strong', {}, '50 ms less p95: '), document.createTextNode(e.revenue_effect_minor == null
      ? `no estimate yet (${e.insufficient})`
      : `${money(e.revenue_effect_minor)} revenue so far (${e.conversion_delta >= 0 ? '+' : ''}${(e.conversion_delta * 100).toFixed(2)} points of conversion).`));
    fill('cost', el('p', {}, `Total lane cost ${money(c.total_cost_minor)}; ${c.conversions_per_cost_unit == null ? '–' : c.conversions_per_cost_unit.toFixed(2)} converted checkouts per 1 ${m.currency} of cost.`), t, effect, el('p', { class: 'model' }, e.model));
  }

  let timer = null;
  async function refresh() {
    const key = sessionStorage.getItem(KEY_SLOT);
    if (!key) return askKey();
    let res;
    try {
      res = await fetch(`/v1/admin/events/${encodeURIComponent(eventId)}/metrics`, { headers: { Authorization: `Bearer ${key}` }, cache: 'no-store' });
    } catch {
      $('status').textContent = 'Offline: showing the last numbers.';
      $('status').className = 'stale';
      return;
    }
    if (res.status === 401 || res.status === 404) {
      sessionStorage.removeItem(KEY_SLOT);
      askKey(res.status === 401 ? 'That key was not accepted.' : 'No such event for that key.');
      return;
    }
    if (!res.ok) { $('status').textContent = `The edge answered ${res.status}; retrying.`; return; }
    const m = await res.json();
    setMoney(m.currency);
    for (const draw of [funnel, conversion, series, queue, declines, latency, cost]) draw(m);
    $('dash').hidden = false;
    $('key-form').hidden = true;
    $('status').className = '';
    $('status').textContent = `Updated ${new Date(m.generated_ms).toISOString().slice(11, 19)} UTC, every ${EVERY_MS / 1000} s`;
    document.body.dataset.updated = String(m.generated_ms);
  }

  function askKey(why) {
    clearInterval(timer);
    timer = null;
    $('dash').hidden = true;
    $('key-form').hidden = false;
    $('status').textContent = why || 'Enter a key to see this event.';
    $('key').focus();
  }

  function start() {
    clearInterval(timer);
    refresh();
    timer = setInterval(refresh, EVERY_MS);
  }

  $('event-id').textContent = eventId;
  // A key in the fragment (#key=…) is taken once and removed from the address bar.
  const frag = new URLSearchParams(location.hash.slice(1));
  if (frag.get('key')) {
    sessionStorage.setItem(KEY_SLOT, frag.get('key'));
    history.replaceState(null, '', location.pathname);
  }
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_SLOT, $('key').value.trim());
    $('key').value = '';
    start();
  });
  $('forget').addEventListener('click', () => { sessionStorage.removeItem(KEY_SLOT); askKey(); });
  if (sessionStorage.getItem(KEY_SLOT)) start(); else askKey();
})();
