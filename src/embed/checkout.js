/*! poptill checkout.js: <script src="https://EDGE/v1/checkout.js" data-event="evt_…" async></script>
   plus <div id="poptill-checkout"></div>. Modes (data-mode): checkout (default), terminal
   (staff start a sale that the buyer pays on a phone), pay (the phone's page). Card
   details are typed only into the edge's frame; this script never sees them. */
(() => {
  'use strict';
  const S = document.currentScript;
  if (!S) return;
  const EDGE = new URL(S.src).origin;
  const D = S.dataset;
  const MODE = D.mode || 'checkout';
  const E = {
    items: 'Items', add: 'Add one', remove: 'Remove one', soldout: 'Sold out', subtotal: 'Subtotal',
    tax: 'Tax', incl: 'Included tax', total: 'Total', pay: 'Pay', paying: 'Paying…',
    email: 'Email for your receipt', age: 'I am at least {n} years old.', card: 'Card details',
    empty: 'Choose at least one item.', needAge: 'Please confirm your age.',
    needConsent: 'Please accept the conditions.', needEmail: 'Please enter a valid email address.',
    approved: 'Payment approved', queued: 'Payment saved, not yet confirmed',
    queuedLong: 'The connection to the bank is interrupted. Your payment is stored and will be sent automatically as soon as the connection is back; the receipt shows its status. Please do not pay again.',
    declined: 'Payment declined', receipt: 'View receipt', again: 'New order', loading: 'Loading…',
    error: 'Something went wrong. Please try again.', start: 'Pay on phone', scan: 'Scan to pay',
    expires: 'Expires at {t}', waiting: 'Waiting for payment…', paid: 'Paid',
    expired: 'This payment request has expired.', cancel: 'Cancel', already: 'This order is already paid.',
    lang: 'Language', newSale: 'New sale', order: 'Your order',
  };
  const L = {
    en: E,
    de: {
      items: 'Artikel', add: 'Eins mehr', remove: 'Eins weniger', soldout: 'Ausverkauft', subtotal: 'Zwischensumme',
      tax: 'MwSt.', incl: 'Enthaltene MwSt.', total: 'Gesamt', pay: 'Bezahlen', paying: 'Zahlung läuft…',
      email: 'E-Mail für den Beleg', age: 'Ich bin mindestens {n} Jahre alt.', card: 'Kartendaten',
      empty: 'Bitte mindestens einen Artikel wählen.', needAge: 'Bitte das Alter bestätigen.',
      needConsent: 'Bitte die Bedingungen akzeptieren.', needEmail: 'Bitte eine gültige E-Mail-Adresse eingeben.',
      approved: 'Zahlung bestätigt', queued: 'Zahlung gespeichert, noch nicht bestätigt',
      queuedLong: 'Die Verbindung zur Bank ist unterbrochen. Ihre Zahlung ist gespeichert und wird automatisch gesendet, sobald die Verbindung wieder steht; der Beleg zeigt den Stand. Bitte nicht erneut bezahlen.',
      declined: 'Zahlung abgelehnt', receipt: 'Beleg ansehen', again: 'Neue Bestellung', loading: 'Wird geladen…',
      error: 'Etwas ist schiefgegangen. Bitte erneut versuchen.', start: 'Am Handy bezahlen', scan: 'Zum Bezahlen scannen',
      expires: 'Gültig bis {t}', waiting: 'Warte auf Zahlung…', paid: 'Bezahlt',
      expired: 'Diese Zahlungsanfrage ist abgelaufen.', cancel: 'Abbrechen', already: 'Diese Bestellung ist bereits bezahlt.',
      lang: 'Sprache', newSale: 'Neuer Verkauf', order: 'Ihre Bestellung',
    },
  };
  // The other policy languages, terse to keep this script small: one '|'-separated string
  // each, in the order of E's keys.
  const K = Object.keys(E);
  for (const [l, v] of Object.entries({
    fr: "Articles|Ajouter un|Retirer un|Épuisé|Sous-total|TVA|TVA incluse|Total|Payer|Paiement…|E-mail pour le reçu|J'ai au moins {n} ans.|Données de carte|Choisissez au moins un article.|Confirmez votre âge.|Acceptez les conditions.|Saisissez un e-mail valide.|Paiement accepté|Paiement enregistré, pas encore confirmé|Connexion à la banque interrompue. Votre paiement est enregistré et sera envoyé automatiquement ; le reçu indique son état. Ne payez pas une seconde fois.|Paiement refusé|Voir le reçu|Nouvelle commande|Chargement…|Une erreur est survenue. Réessayez.|Payer sur mobile|Scannez pour payer|Expire à {t}|En attente du paiement…|Payé|Cette demande de paiement a expiré.|Annuler|Cette commande est déjà payée.|Langue|Nouvelle vente|Votre commande",
    es: 'Artículos|Añadir uno|Quitar uno|Agotado|Subtotal|IVA|IVA incluido|Total|Pagar|Pagando…|Email para el recibo|Tengo al menos {n} años.|Datos de la tarjeta|Elija al menos un artículo.|Confirme su edad.|Acepte las condiciones.|Introduzca un email válido.|Pago aprobado|Pago guardado, aún sin confirmar|Se ha cortado la conexión con el banco. Su pago está guardado y se enviará automáticamente; el recibo muestra su estado. No pague de nuevo.|Pago rechazado|Ver recibo|Nuevo pedido|Cargando…|Algo ha fallado. Inténtelo de nuevo.|Pagar en el móvil|Escanee para pagar|Caduca a las {t}|Esperando el pago…|Pagado|Esta solicitud de pago ha caducado.|Cancelar|Este pedido ya está pagado.|Idioma|Nueva venta|Su pedido',
    nl: 'Artikelen|Eén erbij|Eén minder|Uitverkocht|Subtotaal|Btw|Inclusief btw|Totaal|Betalen|Bezig met betalen…|E-mail voor de bon|Ik ben minstens {n} jaar oud.|Kaartgegevens|Kies minstens één artikel.|Bevestig uw leeftijd.|Accepteer de voorwaarden.|Vul een geldig e-mailadres in.|Betaling goedgekeurd|Betaling opgeslagen, nog niet bevestigd|De verbinding met de bank is onderbroken. Uw betaling is opgeslagen en wordt automatisch verzonden; de bon toont de status. Betaal niet opnieuw.|Betaling geweigerd|Bon bekijken|Nieuwe bestelling|Laden…|Er ging iets mis. Probeer het opnieuw.|Betalen op telefoon|Scan om te betalen|Verloopt om {t}|Wachten op betaling…|Betaald|Dit betaalverzoek is verlopen.|Annuleren|Deze bestelling is al betaald.|Taal|Nieuwe verkoop|Uw bestelling',
    ja: '商品|1つ追加|1つ減らす|売り切れ|小計|税|内税|合計|支払う|支払い中…|領収書用メール|{n}歳以上です。|カード情報|商品を1つ以上選んでください。|年齢を確認してください。|規約に同意してください。|有効なメールアドレスを入力してください。|支払い完了|支払いを保存しました(未確定)|銀行との接続が切れています。支払いは保存され、接続が戻り次第自動で送信されます。状況は領収書で確認できます。再度支払わないでください。|支払いが拒否されました|領収書を見る|新しい注文|読み込み中…|エラーが発生しました。もう一度お試しください。|スマホで支払う|スキャンして支払う|有効期限 {t}|支払い待ち…|支払い済み|この支払いリクエストは期限切れです。|キャンセル|この注文は支払い済みです。|言語|新しい販売|ご注文',
  })) L[l] = Object.fromEntries(v.split('|').map((x, i) => [K[i], x]));
  const CSS = `.ptl{--a:var(--poptill-accent,#1d4ed8);font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1c1f24;background:#fff;border:1px solid #d5d9e0;border-radius:14px;padding:20px;max-width:460px;box-sizing:border-box}
.ptl *{box-sizing:border-box}.ptl h2{font-size:1.3rem;margin:0}.ptl h3{font-size:1.05rem;margin:18px 0 8px}
.ptl-hd{display:flex;justify-content:space-between;align-items:center;gap:8px;flex-wrap:wrap}
.ptl ul{list-style:none;margin:0;padding:0}.ptl li{display:flex;align-items:center;gap:10px;padding:8px 0;border-bottom:1px solid #eceef2}
.ptl-n{flex:1}.ptl-n small{display:block;color:#5b6270}.ptl-q{min-width:1.6em;text-align:center;font-weight:600}
.ptl button,.ptl select{font:inherit;min-height:44px;min-width:44px;border-radius:10px;border:1px solid #8a919c;background:#fff;color:inherit;cursor:pointer;padding:0 12px}
.ptl button:disabled{opacity:.45;cursor:default}
.ptl :focus-visible{outline:3px solid var(--a);outline-offset:2px}
.ptl .ptl-go{width:100%;margin-top:14px;background:var(--a);border-color:var(--a);color:#fff;font-weight:650;font-size:1.1rem;min-height:52px}
.ptl dl{display:grid;grid-template-columns:1fr auto;gap:4px 12px;margin:12px 0 0}.ptl dd{margin:0;text-align:right;font-variant-numeric:tabular-nums}
.ptl .ptl-t{font-weight:700;font-size:1.1rem}
.ptl label{display:flex;gap:10px;align-items:flex-start;margin:10px 0;cursor:pointer}
.ptl input[type=checkbox]{width:22px;height:22px;margin:1px 0 0;flex:none;accent-color:var(--a)}
.ptl .ptl-f{flex-direction:column;gap:4px;font-weight:600;font-size:.9rem}
.ptl input[type=email]{font:inherit;font-weight:400;font-size:1.05rem;min-height:46px;padding:8px 12px;border:1px solid #8a919c;border-radius:8px;width:100%}
.ptl [aria-invalid=true]{border-color:#b42318;outline-color:#b42318}
.ptl iframe{border:0;width:100%;height:170px;display:block}
.ptl-s{min-height:1.4em;margin:10px 0 0;color:#5b6270}.ptl-s.ptl-e{color:#b42318;font-weight:600}
.ptl-r{border-radius:12px;padding:14px;margin-top:14px;background:#ecfdf3;border:1px solid #75e0a7}
.ptl-r.queued{background:#fffaeb;border-color:#fec84b}.ptl-r.declined{background:#fef3f2;border-color:#fda29b}
.ptl-r h3{margin:0 0 6px}.ptl a{color:var(--a);font-weight:600}
.ptl-qr{text-align:center}.ptl-qr img{width:min(100%,300px);height:auto;image-rendering:pixelated}
.ptl-u{font:600 1rem ui-monospace,monospace;word-break:break-all}
.ptl .ptl-v{position:absolute;width:1px;height:1px;overflow:hidden;clip-path:inset(50%);white-space:nowrap}`;

  let host = D.target ? document.querySelector(D.target) : document.getElementById('poptill-checkout');
  if (!host) { host = document.createElement('div'); S.after(host); }
  try {
    const s = new CSSStyleSheet();
    s.replaceSync(CSS);
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, s];
  } catch {
    const s = document.createElement('style');
    s.textContent = CSS;
    document.head.append(s);
  }

  // State.
  let ev = null, lang = 'en', t = E, quote = null, qseq = 0, frame = null, frameReady = false;
  let busy = false, qty = {}, session = null, live = null;
  const fixed = MODE === 'pay';
  let root, status, payBtn, card, resultBox, sumBox, promptBox, itemsBox;

  // A tiny element builder: attributes, listeners (on*) and text children, never HTML strings.
  const h = (tag, attrs, ...kids) => {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else el.setAttribute(k, v === true ? '' : v);
    }
    for (const c of kids.flat(9)) if (c != null && c !== false) el.append(c.nodeType ? c : String(c));
    return el;
  };
  const put = (el, ...kids) => el.replaceChildren(...kids.flat(9).filter((c) => c != null && c !== false));
  const tr = (k, n) => t[k].replace(/\{\w\}/, n);

  const api = async (path, body) => {
    const r = await fetch(EDGE + path, body ? { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {});
    const j = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(j.error?.message || t.error);
    return j;
  };

  // Money from integer minor units, formatted exactly (decimal string, never a float).
  const money = (minor, cur = quote?.currency || ev.currency) => {
    const x = ev.currency_exponent ?? 2;
    const s = String(Math.abs(minor)).padStart(x + 1, '0');
    const dec = (minor < 0 ? '-' : '') + (x ? s.slice(0, -x) + '.' + s.slice(-x) : s);
    return new Intl.NumberFormat(lang, { style: 'currency', currency: cur, minimumFractionDigits: x, maximumFractionDigits: x }).format(dec);
  };

  const say = (msg, err) => { status.textContent = msg || ''; status.classList.toggle('ptl-e', !!err); };
  const items = () => Object.entries(qty).filter(([, n]) => n > 0).map(([sku, quantity]) => ({ sku, quantity }));

  function pickLang(list) {
    // The merchant's page language first; on the phone's pay page, the buyer's browser.
    const want = [D.lang, !fixed && document.documentElement.lang, ...navigator.languages].filter(Boolean).map((l) => l.slice(0, 2));
    // Only languages we have words for; otherwise the event's first such, else English.
    const ok = list.filter((l) => L[l]);
    return want.find((l) => ok.includes(l)) || ok[0] || 'en';
  }

  async function boot() {
    put(host, h('p', { class: 'ptl ptl-s', role: 'status' }, (L[(navigator.language || '').slice(0, 2)] || E).loading));
    try {
      if (fixed) {
        const sid = D.session || (location.pathname.match(/^\/p\/([\w-]+)/) || [])[1];
        session = await api(`/v1/handover/${sid}`);
        session.session_id = sid;
        D.event = session.event_id;
        for (const it of session.items || []) qty[it.sku] = it.quantity;
      }
      ev = await api(`/v1/events/${encodeURIComponent(D.event)}/public`);
    } catch (e) {
      put(host, h('p', { class: 'ptl ptl-s ptl-e', role: 'alert' }, e.message));
      return;
    }
    lang = pickLang(ev.languages || []);
    t = L[lang] || E;
    if (fixed) document.documentElement.lang = lang;
    render();
  }

  function render() {
    const langs = ev.languages || [];
    status = h('p', { class: 'ptl-s', role: 'status', 'aria-live': 'polite' });
    itemsBox = h('div');
    sumBox = h('div');
    promptBox = h('div');
    resultBox = h('div', { tabindex: '-1' });
    payBtn = h('button', { class: 'ptl-go', type: 'button', onclick: MODE === 'terminal' ? startSale : pay });
    card = h('div');
    root = h('section', { class: 'ptl', lang, 'aria-label': ev.title },
      h('div', { class: 'ptl-hd' }, h('h2', null, ev.title),
        langs.length > 1 && h('select', { 'aria-label': t.lang, onchange: (e) => { lang = e.target.value; t = L[lang] || E; render(); } },
          langs.map((l) => h('option', { value: l, selected: l === lang }, l.toUpperCase())))),
      itemsBox, sumBox, promptBox, card, payBtn, status, resultBox);
    put(host, root);
    if (fixed && session.status !== 'open') return showSession(session);
    renderItems();
    if (MODE !== 'terminal') mountFrame();
    requote(0);
  }

  function renderItems() {
    if (fixed) return;
    put(itemsBox, h('h3', null, t.items), h('ul', null, ev.skus.map((s) => {
      const n = qty[s.id] || 0;
      const max = s.available === false ? 0 : typeof s.available === 'number' ? s.available : 99;
      const step = (d) => () => { qty[s.id] = Math.max(0, Math.min(max, n + d)); renderItems(); requote(); itemsBox.querySelector(`[data-k="${s.id}${d}"]`)?.focus(); };
      return h('li', null,
        h('span', { class: 'ptl-n' }, s.name, h('small', null, max ? money(s.price, ev.currency) : t.soldout)),
        h('button', { type: 'button', 'data-k': s.id + -1, 'aria-label': `${t.remove}: ${s.name}`, disabled: !n || busy, onclick: step(-1) }, '−'),
        h('span', { class: 'ptl-q', 'aria-label': `${s.name}: ${n}` }, n),
        h('button', { type: 'button', 'data-k': s.id + 1, 'aria-label': `${t.add}: ${s.name}`, disabled: n >= max || busy, onclick: step(1) }, '+'));
    })));
  }

  let qtimer;
  function requote(delay = 250) {
    clearTimeout(qtimer);
    const seq = ++qseq;
    const list = items();
    if (!list.length) { quote = null; renderQuote(); return; }
    qtimer = setTimeout(async () => {
      try {
        const q = await api(`/v1/events/${encodeURIComponent(ev.event_id)}/quote`, { items: list });
        if (seq !== qseq) return;
        quote = q;
        say('');
      } catch (e) {
        if (seq !== qseq) return;
        quote = null;
        say(e.message, true);
      }
      renderQuote();
    }, delay);
  }

  const label = () => MODE === 'terminal' ? t.start : quote ? `${t.pay} ${money(quote.total)}` : t.pay;

  function renderQuote() {
    payBtn.disabled = !quote || busy;
    payBtn.textContent = label();
    if (!quote) { put(sumBox); put(promptBox); return; }
    const incl = quote.prices === 'inclusive';
    put(sumBox, h('h3', null, t.order), h('dl', null,
      quote.lines.map((l) => [h('dt', null, `${l.quantity} × ${l.name}`), h('dd', null, money(l.gross))]),
      !incl && [h('dt', null, t.subtotal), h('dd', null, money(quote.subtotal))],
      h('dt', { class: 'ptl-t' }, t.total), h('dd', { class: 'ptl-t' }, money(quote.total)),
      [h('dt', null, incl ? t.incl : t.tax), h('dd', null, money(quote.tax_total))]));
    if (MODE === 'terminal') return;
    // Prompts from the policy. Answers survive re-quotes.
    const p = quote.prompts || {};
    const old = (n) => promptBox.querySelector(`[name=${n}]`);
    const keep = (n, attr) => old(n)?.[attr];
    const cl = Array.isArray(p.consent) ? p.consent : Object.entries(p.consent || {}).map(([lang, text]) => ({ lang, text }));
    const consent = cl.find((c) => c.lang === lang) || cl[0];
    put(promptBox,
      (p.buyer_fields || []).includes('email') && h('label', { class: 'ptl-f' }, t.email,
        h('input', { type: 'email', name: 'email', autocomplete: 'email', required: true, value: keep('email', 'value') || '' })),
      p.age_gate && h('label', null, h('input', { type: 'checkbox', name: 'age', checked: keep('age', 'checked') }), tr('age', p.age_gate.min_age)),
      consent && h('label', null, h('input', { type: 'checkbox', name: 'consent', checked: keep('consent', 'checked') }), consent.text));
  }

  function mountFrame() {
    const src = `${EDGE}/v1/frame?event=${encodeURIComponent(ev.event_id)}&origin=${encodeURIComponent(location.origin)}&lang=${lang}`;
    frame = h('iframe', { src, title: t.card });
    frameReady = false;
    put(card, h('h3', null, t.card), frame);
  }

  addEventListener('message', (e) => {
    if (e.origin !== EDGE || !frame || e.source !== frame.contentWindow) return;
    const d = e.data || {};
    if (d.type === 'poptill:ready') frameReady = true;
    else if (d.type === 'poptill:height' && d.height > 0) frame.style.height = Math.min(d.height, 600) + 'px';
    else if (d.type === 'poptill:submit') pay();
    else if (d.type === 'poptill:result') onResult(d);
    else if (d.type === 'poptill:status') say(d.message);
  });

  function pay() {
    if (busy || !quote) return;
    if (!frameReady) return say(t.loading);
    const f = (n) => promptBox.querySelector(`[name=${n}]`);
    const buyer = {};
    for (const el of promptBox.querySelectorAll('input')) el.removeAttribute('aria-invalid');
    const bad = (el, msg) => { el.setAttribute('aria-invalid', 'true'); el.focus(); say(msg, true); };
    if (f('email')) {
      if (!/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(f('email').value)) return bad(f('email'), t.needEmail);
      buyer.email = f('email').value;
    }
    if (f('age')) { if (!f('age').checked) return bad(f('age'), t.needAge); buyer.age_confirmed = true; }
    if (f('consent')) { if (!f('consent').checked) return bad(f('consent'), t.needConsent); buyer.consent_accepted = true; }
    setBusy(true);
    say(t.paying);
    const msg = { type: 'poptill:pay', items: items(), buyer };
    if (fixed) msg.handover_session = session.session_id;
    frame.contentWindow.postMessage(msg, EDGE);
  }

  function setBusy(on) {
    busy = on;
    root.setAttribute('aria-busy', String(on));
    payBtn.disabled = on || !quote;
    payBtn.textContent = on ? t.paying : label();
    renderItems();
  }

  const receipt = (url) => url && h('p', null, h('a', { href: new URL(url, EDGE).href, target: '_blank', rel: 'noopener' }, t.receipt));

  function onResult(d) {
    setBusy(false);
    if (d.code === 'handover_expired') return showSession({ status: 'expired' });
    // 'pending': the frame could not learn the outcome yet; its message says not to pay again.
    if (/^(invalid|error|pending)$/.test(d.status)) return say(d.message || t.error, d.status !== 'pending');
    const ok = d.status === 'approved';
    const q = d.status === 'queued';
    say(ok ? t.approved : q ? t.queued : `${t.declined}. ${d.message || ''}`, !ok && !q);
    const cardText = d.brand && d.last4 ? `${d.brand.toUpperCase()} •••• ${d.last4}` : '';
    resultBox.className = `ptl-r ${d.status}`;
    put(resultBox,
      h('h3', null, ok ? `✓ ${t.approved}` : q ? t.queued : t.declined),
      h('p', null, q ? t.queuedLong : ok ? '' : d.message, cardText && ` ${cardText}`),
      receipt(d.receipt_url),
      (ok || q) && !fixed && h('button', { type: 'button', onclick: () => { qty = {}; quote = null; resultBox.className = ''; frame.contentWindow.postMessage({ type: 'poptill:reset' }, EDGE); render(); } }, t.again));
    if (ok || q) { itemsBox.hidden = promptBox.hidden = card.hidden = payBtn.hidden = true; status.classList.add('ptl-v'); }
    resultBox.focus();
  }

  // Terminal: staff pick items, the buyer scans a QR code and pays on the phone.
  async function startSale() {
    if (busy || !quote) return;
    setBusy(true);
    try {
      session = await api(`/v1/events/${encodeURIComponent(ev.event_id)}/handover`, { items: items(), ...(D.ttl && { ttl_seconds: +D.ttl }) });
    } catch (e) {
      setBusy(false);
      return say(e.message, true);
    }
    busy = false;
    itemsBox.hidden = payBtn.hidden = true;
    const url = new URL(session.pay_url, EDGE).href;
    const until = new Date(session.expires_at);
    put(card, h('div', { class: 'ptl-qr' },
      h('h3', null, t.scan),
      h('img', { src: `${EDGE}/v1/handover/${encodeURIComponent(session.session_id)}/qr.svg`, alt: `${t.scan}: ${url}`, width: 300, height: 300 }),
      h('p', { class: 'ptl-u' }, url),
      h('p', null, tr('expires', until.toLocaleTimeString(lang, { hour: '2-digit', minute: '2-digit' }))),
      h('button', { type: 'button', onclick: endSale }, t.cancel)));
    say(t.waiting);
    watch();
  }

  function watch() {
    const sid = session.session_id;
    const apply = (s) => { if (session?.session_id === sid && s && s.status) showSession(s); };
    const poll = () => {
      if (live?.timer) return;
      live = { timer: setInterval(() => api(`/v1/handover/${encodeURIComponent(sid)}`).then(apply, () => {}), 2000) };
    };
    try {
      const ws = new WebSocket(new URL(session.ws_url || `/v1/handover/${sid}/ws`, EDGE).href.replace(/^http/, 'ws'));
      // A slow backup poll as well: a message lost on the socket still reaches the till.
      live = { ws, timer: setInterval(() => api(`/v1/handover/${encodeURIComponent(sid)}`).then(apply, () => {}), 5000) };
      ws.onmessage = (m) => { try { apply(JSON.parse(m.data)); } catch { /* ignore a bad frame */ } };
      ws.onclose = () => { if (live?.ws === ws) { clearInterval(live.timer); live = null; poll(); } };
    } catch { poll(); }
    // Expiry is decided by the edge; ask it once the local clock says the time is up.
    live.expiry = setTimeout(() => api(`/v1/handover/${encodeURIComponent(sid)}`).then(apply, () => {}), Math.max(0, Date.parse(session.expires_at) - Date.now()) + 1000);
  }

  function stopWatch() {
    if (!live) return;
    const l = live;
    live = null;
    clearInterval(l.timer);
    clearTimeout(l.expiry);
    l.ws?.close();
  }

  function endSale() {
    stopWatch();
    session = null;
    qty = {};
    quote = null;
    render();
  }

  function showSession(s) {
    // 'paying': the phone has claimed the sale; the till waits for the outcome.
    if (s.status === 'open' || (!fixed && s.status === 'paying')) return;
    if (!fixed) stopWatch();
    const paid = s.status === 'paid';
    say(paid ? t.paid : t.expired, !paid);
    resultBox.className = `ptl-r ${paid ? 'approved' : 'declined'}`;
    put(resultBox,
      h('h3', null, paid ? `✓ ${fixed ? t.already : t.paid}` : t.expired),
      s.total != null && h('p', null, `${t.total}: ${money(s.total, s.currency)}`),
      paid && receipt(s.receipt_url),
      !fixed && h('button', { type: 'button', onclick: endSale }, t.newSale));
    itemsBox.hidden = promptBox.hidden = card.hidden = payBtn.hidden = true;
    status.classList.add('ptl-v');
    resultBox.focus();
  }

  boot();
})();
