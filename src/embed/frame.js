/* poptill card frame: the only place a card number is typed. It runs on the edge's origin,
   tokenizes the card with the edge, places the order with the token, and tells the page
   that embeds it only the outcome (status, order, receipt, brand, last four digits).
   Messages are exchanged with exactly one origin (?origin=), which must be one of the
   event's allowed origins (or the edge itself, for the phone pay page). */
(() => {
  'use strict';
  const q = new URLSearchParams(location.search);
  const EVENT = q.get('event') || '';
  const ORIGIN = q.get('origin') || '';
  const T = {
    en: {
      title: 'Card details', number: 'Card number', exp: 'Expiry (MM/YY)', cvc: 'Security code',
      note: 'Card details go straight to poptill and are never shown to the seller.',
      badNumber: 'Check the card number.', badExp: 'Enter a valid expiry date (MM/YY).',
      badCvc: 'Enter the 3 or 4 digit security code.', blocked: 'This checkout is not available on this website.',
      network: 'No connection to the payment service. Please try again.',
      checking: 'Checking your last payment…', confirming: 'Confirming your payment…',
      unknown: 'We could not confirm your payment yet. Press Pay to check again; this will not start a second payment.',
      pending: 'Your payment is being confirmed. Please do not pay again; pressing Pay only checks this payment.',
    },
    de: {
      title: 'Kartendaten', number: 'Kartennummer', exp: 'Gültig bis (MM/JJ)', cvc: 'Prüfnummer',
      note: 'Kartendaten gehen direkt an poptill und werden dem Verkäufer nie gezeigt.',
      badNumber: 'Bitte die Kartennummer prüfen.', badExp: 'Bitte ein gültiges Ablaufdatum eingeben (MM/JJ).',
      badCvc: 'Bitte die 3- oder 4-stellige Prüfnummer eingeben.', blocked: 'Dieser Checkout ist auf dieser Website nicht verfügbar.',
      network: 'Keine Verbindung zum Zahlungsdienst. Bitte erneut versuchen.',
      checking: 'Ihre letzte Zahlung wird geprüft…', confirming: 'Ihre Zahlung wird bestätigt…',
      unknown: 'Ihre Zahlung ist noch nicht bestätigt. Drücken Sie erneut auf „Bezahlen“, um sie zu prüfen; dabei wird nicht noch einmal bezahlt.',
      pending: 'Ihre Zahlung wird noch bestätigt. Bitte nicht erneut bezahlen; „Bezahlen“ prüft jetzt nur diese Zahlung.',
    },
    fr: {
      title: 'Données de carte', number: 'Numéro de carte', exp: "Date d'expiration (MM/AA)", cvc: 'Cryptogramme',
      note: 'Les données de carte vont directement à poptill et ne sont jamais montrées au vendeur.',
      badNumber: 'Vérifiez le numéro de carte.', badExp: "Saisissez une date d'expiration valide (MM/AA).",
      badCvc: 'Saisissez le cryptogramme à 3 ou 4 chiffres.', blocked: "Ce paiement n'est pas disponible sur ce site.",
      network: 'Pas de connexion au service de paiement. Réessayez.',
      checking: 'Vérification de votre dernier paiement…', confirming: 'Confirmation de votre paiement…',
      unknown: "Votre paiement n'est pas encore confirmé. Appuyez de nouveau sur Payer pour le vérifier ; aucun second paiement ne sera lancé.",
      pending: 'Votre paiement est en cours de confirmation. Ne payez pas une seconde fois ; le bouton Payer vérifie seulement ce paiement.',
    },
    es: {
      title: 'Datos de la tarjeta', number: 'Número de tarjeta', exp: 'Caducidad (MM/AA)', cvc: 'Código de seguridad',
      note: 'Los datos de la tarjeta van directamente a poptill y nunca se muestran al vendedor.',
      badNumber: 'Revise el número de tarjeta.', badExp: 'Introduzca una fecha de caducidad válida (MM/AA).',
      badCvc: 'Introduzca el código de seguridad de 3 o 4 dígitos.', blocked: 'Este pago no está disponible en este sitio web.',
      network: 'Sin conexión con el servicio de pago. Inténtelo de nuevo.',
      checking: 'Comprobando su último pago…', confirming: 'Confirmando su pago…',
      unknown: 'Aún no hemos podido confirmar su pago. Pulse Pagar de nuevo para comprobarlo; no se iniciará un segundo pago.',
      pending: 'Su pago se está confirmando. No pague de nuevo; el botón Pagar solo comprueba este pago.',
    },
    nl: {
      title: 'Kaartgegevens', number: 'Kaartnummer', exp: 'Vervaldatum (MM/JJ)', cvc: 'Beveiligingscode',
      note: 'Kaartgegevens gaan rechtstreeks naar poptill en worden nooit aan de verkoper getoond.',
      badNumber: 'Controleer het kaartnummer.', badExp: 'Vul een geldige vervaldatum in (MM/JJ).',
      badCvc: 'Vul de beveiligingscode van 3 of 4 cijfers in.', blocked: 'Deze betaling is niet beschikbaar op deze website.',
      network: 'Geen verbinding met de betaaldienst. Probeer het opnieuw.',
      checking: 'Uw laatste betaling wordt gecontroleerd…', confirming: 'Uw betaling wordt bevestigd…',
      unknown: 'Uw betaling is nog niet bevestigd. Druk opnieuw op Betalen om dit te controleren; er wordt geen tweede betaling gestart.',
      pending: 'Uw betaling wordt nog bevestigd. Betaal niet opnieuw; de knop Betalen controleert alleen deze betaling.',
    },
    ja: {
      title: 'カード情報', number: 'カード番号', exp: '有効期限 (MM/YY)', cvc: 'セキュリティコード',
      note: 'カード情報はpoptillに直接送られ、販売者には表示されません。',
      badNumber: 'カード番号を確認してください。', badExp: '有効な有効期限を入力してください (MM/YY)。',
      badCvc: '3桁または4桁のセキュリティコードを入力してください。', blocked: 'このサイトではこの決済を利用できません。',
      network: '決済サービスに接続できません。もう一度お試しください。',
      checking: '前回の支払いを確認しています…', confirming: '支払いを確定しています…',
      unknown: '支払いをまだ確認できていません。もう一度「支払う」を押すと確認します。新たな支払いは発生しません。',
      pending: '支払いを確定中です。もう一度支払わないでください。「支払う」を押してもこの支払いの確認のみ行います。',
    },
  };
  let t = T.en;
  const $ = (id) => document.getElementById(id);
  const form = $('card');
  const fields = { number: $('number'), exp: $('exp'), cvc: $('cvc') };
  let allowed = false;
  let busy = false;
  // One buyer intent: an Idempotency-Key and the exact request body (with its token pair)
  // it was first sent with. While the outcome is unknown every retry is that same request;
  // only a definitive answer (approved, queued, declined, a refusal to act on) ends it.
  let intent = null;

  const sheet = `
:root{color-scheme:light;font:16px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1c1f24}
body{margin:0;padding:2px 3px}
.field{display:flex;flex-direction:column;gap:4px;margin:0 0 10px;flex:1;min-width:0}
.row{display:flex;gap:12px}
label{font-weight:600;font-size:.9rem}
input{font:inherit;font-size:1.05rem;min-height:46px;padding:8px 12px;border:1px solid #8a919c;border-radius:8px;background:#fff;color:inherit;box-sizing:border-box;width:100%;letter-spacing:.02em}
input:focus{outline:3px solid #2563eb;outline-offset:1px;border-color:#2563eb}
input[aria-invalid=true]{border-color:#b42318}
input[readonly]{background:#f3f4f6}
.err{color:#b42318;font-size:.85rem;margin:0;min-height:0}
.err:empty{display:none}
.note{color:#5b6270;font-size:.8rem;margin:2px 0 0}
#blocked{color:#b42318;font-weight:600;margin:8px}`;
  try {
    const s = new CSSStyleSheet();
    s.replaceSync(sheet);
    document.adoptedStyleSheets = [s];
  } catch { /* unstyled but usable */ }

  const post = (msg) => { if (allowed) parent.postMessage(msg, ORIGIN); };
  const digits = (s) => s.replace(/\D/g, '');
  const brandOf = (n) => /^3[47]/.test(n) ? 'amex' : /^4/.test(n) ? 'visa' : /^(5[1-5]|2[2-7])/.test(n) ? 'mastercard' : '';
  const luhn = (n) => {
    let sum = 0;
    for (let i = 0; i < n.length; i++) {
      let d = +n[n.length - 1 - i];
      if (i % 2) { d *= 2; if (d > 9) d -= 9; }
      sum += d;
    }
    return n.length >= 12 && n.length <= 19 && sum % 10 === 0;
  };

  function setLang(lang) {
    const l = String(lang || '').slice(0, 2);
    t = T[l] || T.en;
    document.documentElement.lang = T[l] ? l : 'en';
    document.title = t.title;
    for (const k of ['number', 'exp', 'cvc']) $('l-' + k).textContent = t[k];
    $('note').textContent = t.note;
  }

  function fieldError(name, message) {
    const input = fields[name];
    input.setAttribute('aria-invalid', message ? 'true' : 'false');
    $('e-' + name).textContent = message || '';
  }

  // Formatting as the buyer types: groups of four (Amex 4-6-5) and MM/YY.
  fields.number.addEventListener('input', () => {
    const n = digits(fields.number.value).slice(0, 19);
    const groups = brandOf(n) === 'amex' ? [4, 6, 5] : [4, 4, 4, 4, 3];
    const out = [];
    let i = 0;
    for (const g of groups) { if (i < n.length) out.push(n.slice(i, i + g)); i += g; }
    fields.number.value = out.join(' ');
    fieldError('number', '');
  });
  fields.exp.addEventListener('input', (e) => {
    let d = digits(fields.exp.value).slice(0, 4);
    if (d.length === 1 && d > '1') d = '0' + d;
    fields.exp.value = d.length > 2 || (d.length === 2 && e.inputType !== 'deleteContentBackward') ? d.slice(0, 2) + '/' + d.slice(2) : d;
    fieldError('exp', '');
  });
  fields.cvc.addEventListener('input', () => { fields.cvc.value = digits(fields.cvc.value).slice(0, 4); fieldError('cvc', ''); });
  // Enter in any card field pays, as in a one-field form (the pay button is on the page).
  form.addEventListener('submit', (e) => e.preventDefault());
  form.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.isComposing) { e.preventDefault(); post({ type: 'poptill:submit' }); }
  });

  function readCard() {
    const number = digits(fields.number.value);
    const [mm, yy] = fields.exp.value.split('/');
    const month = parseInt(mm, 10);
    const year = 2000 + parseInt(yy, 10);
    const cvc = fields.cvc.value;
    const now = new Date();
    const errors = {};
    if (!luhn(number)) errors.number = t.badNumber;
    if (!(month >= 1 && month <= 12) || !(yy && yy.length === 2) ||
        year < now.getFullYear() || (year === now.getFullYear() && month < now.getMonth() + 1)) errors.exp = t.badExp;
    if (!new RegExp(brandOf(number) === 'amex' ? '^\\d{4}$' : '^\\d{3}$').test(cvc)) errors.cvc = t.badCvc;
    return { card: { number, exp_month: month, exp_year: year, cvc }, errors };
  }

  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 15) | 64; b[8] = (b[8] & 63) | 128;
    const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  async function call(path, body, headers = {}) {
    let res;
    try {
      res = await fetch(path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body, credentials: 'omit', cache: 'no-store' });
    } catch {
      return { network: true, json: {} };
    }
    const json = await res.json().catch(() => ({}));
    return { status: res.status, ok: res.ok, json, wait: res.headers.get('retry-after') };
  }

  const lock = (on) => { busy = on; for (const f of Object.values(fields)) f.readOnly = on; form.setAttribute('aria-busy', String(on)); };

  const say = (message) => post({ type: 'poptill:status', message });
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  async function pay(d) {
    if (busy) return;
    const fail = (message, retryable, code, status = 'error') => { lock(false); post({ type: 'poptill:result', status, message, retryable: !!retryable, code: code || '' }); };
    if (intent) {
      // The last payment's outcome is unknown: ask again with the same request, whatever
      // was typed or chosen since, so it can never become a second payment.
      lock(true);
      say(t.checking);
    } else {
      const { card, errors } = readCard();
      for (const k of Object.keys(fields)) fieldError(k, errors[k]);
      const bad = Object.keys(fields).find((k) => errors[k]);
      if (bad) {
        fields[bad].focus();
        post({ type: 'poptill:result', status: 'invalid', message: errors[bad] });
        return;
      }
      lock(true);
      const tok = await call('/v1/tokens', JSON.stringify({ event_id: EVENT, card }));
      card.number = card.cvc = ''; // drop our copies as soon as the vault has them
      if (tok.network) return fail(t.network, true);
      if (!tok.ok) {
        const code = tok.json.error?.code || '';
        const field = /number/.test(code) ? 'number' : /expir|expired/.test(code) ? 'exp' : /cvc/.test(code) ? 'cvc' : '';
        if (field) { fieldError(field, tok.json.error.message); fields[field].focus(); }
        return fail(tok.json.error?.message || t.network, tok.json.error?.retryable);
      }
      const { token, cvc_token, brand, last4 } = tok.json;
      const body = { items: d.items, token, cvc_token, buyer: d.buyer || {} };
      if (d.handover_session) body.handover_session = d.handover_session;
      intent = { key: uuid(), body: JSON.stringify(body), brand, last4 };
    }
    const { key, brand, last4 } = intent;
    let j;
    // A `confirming` answer: accepted, its bank still answering. Asked again every second
    // (same key) until approved or declined; a decline lets the buyer try another card.
    let accepted = null;
    // Until a definitive answer the outcome is unknown (no answer, 5xx, 409, 429, 202
    // pending, a retryable error). When the edge says when to ask again (Retry-After), the
    // frame does so a few times by itself; otherwise the buyer's next press asks again.
    for (let n = 0; ; n++) {
      const res = await call(`/v1/events/${encodeURIComponent(EVENT)}/checkout`, intent.body, { 'idempotency-key': key });
      j = res.json;
      if (j.status === 'confirming') {
        accepted = j;
        if (n < 20) { say(t.confirming); await sleep(Math.min(Math.max(+res.wait || 1, 1), 5) * 1000); continue; }
      }
      // Still no bank answer (or none readable): the payment stands as accepted.
      if (accepted && !/^(approved|declined|canceled)$/.test(j.status || '')) { j = { ...accepted, status: 'queued' }; break; }
      const e = j.error;
      const pending = j.status === 'pending';
      if (/^(approved|queued|declined|canceled)$/.test(j.status) || (!pending && e && !e.retryable && res.status < 500 && res.status !== 429 && !/^idempotency_/.test(e.code))) break;
      if (res.network || !(pending || res.wait) || n >= 5) {
        return pending ? fail(t.pending, true, 'payment_pending', 'pending') : fail(t.unknown, true, e?.code || 'outcome_unknown');
      }
      say(pending ? t.confirming : t.checking);
      await sleep(Math.min(Math.max(+res.wait || 2, 1), 10) * 1000);
    }
    intent = null; // a definitive answer: the next payment is a new intent
    if (!j.status) return fail(j.error.message, false, j.error.code);
    lock(false);
    if (j.status === 'approved' || j.status === 'queued') {
      form.reset();
      for (const f of Object.values(fields)) f.disabled = true;
    } else {
      fields.cvc.value = '';
      fields.number.focus();
    }
    post({
      type: 'poptill:result', status: j.status, order_id: j.order_id || null, receipt_url: j.receipt_url || null,
      brand, last4, message: j.decline?.message || j.message || j.error?.message || '',
    });
  }

  addEventListener('message', (e) => {
    if (!allowed || e.source !== parent || e.origin !== ORIGIN) return;
    const d = e.data;
    if (!d || typeof d !== 'object') return;
    if (d.type === 'poptill:pay' && Array.isArray(d.items)) pay(d);
    else if (d.type === 'poptill:lang') setLang(d.lang);
    else if (d.type === 'poptill:reset') { form.reset(); for (const f of Object.values(fields)) { f.disabled = false; fieldError(Object.keys(fields).find((k) => fields[k] === f), ''); } }
  });

  async function init() {
    setLang(q.get('lang'));
    const ancestors = location.ancestorOrigins;
    let origins = [];
    try {
      const r = await fetch(`/v1/events/${encodeURIComponent(EVENT)}/public`, { credentials: 'omit' });
      if (r.ok) origins = (await r.json()).allowed_origins || [];
    } catch { /* treated as not allowed */ }
    allowed = parent !== window && /^https?:\/\/[^/]+$/.test(ORIGIN) &&
      (ORIGIN === location.origin || origins.includes(ORIGIN)) &&
      (!ancestors || ancestors[0] === ORIGIN);
    if (!allowed) {
      $('blocked').textContent = t.blocked;
      $('blocked').hidden = false;
      return;
    }
    form.hidden = false;
    const report = () => post({ type: 'poptill:height', height: Math.ceil(document.documentElement.getBoundingClientRect().height) });
    new ResizeObserver(report).observe(document.body);
    post({ type: 'poptill:ready' });
    report();
  }
  init();
})();
