#!/usr/bin/env node
// A stand-in for the edge that follows the embed's API contract, for developing the embed
// and checking the browser tests before the Worker's checkout routes exist. It is NOT what
// scripts/test runs: the browser tests there target the real Worker (POPTILL_URL).
// It serves the real assets from src/embed with the CSP and CORS headers the Worker must
// send, and doubles as the simulator's control API (/control/lanes/{lane}).
//   node wasm-tests/browser/mock-edge.mjs --port 8790 --merchant http://127.0.0.1:8789
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { randomUUID, randomBytes, createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';

const dir = (f) => fileURLToPath(new URL(`../../src/embed/${f}`, import.meta.url));
const read = (f) => readFileSync(dir(f), 'utf8');

export function startMockEdge({ port = 0, merchantOrigin }) {
  let base = '';
  const EVENT = {
    event_id: 'evt_mock', title: 'Night Market', currency: 'EUR', currency_exponent: 2, languages: ['de', 'en'],
    skus: [
      { id: 'tkt', name: 'Entry ticket', category: 'ticket', price: 1200, available: true },
      { id: 'tee', name: 'T-shirt', category: 'merch', price: 2500, available: 5 },
      { id: 'beer', name: 'Craft beer', category: 'drink', price: 450, available: true },
      { id: 'poster', name: 'Poster', category: 'merch', price: 900, available: false },
    ],
    allowed_origins: [merchantOrigin],
  };
  const lanes = { fast: 'none', cheap: 'none' };
  const tokens = new Map();
  const orders = new Map(); // idempotency key -> response
  const sessions = new Map();
  const luhn = (n) => /^\d{12,19}$/.test(n) && [...n].reverse().reduce((s, c, i) => s + (i % 2 ? ((+c * 2) > 9 ? +c * 2 - 9 : +c * 2) : +c), 0) % 10 === 0;

  const frameCsp = () => `default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self' ${EVENT.allowed_origins.join(' ')}`;
  const payCsp = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

  function quote(items) {
    const lines = [];
    for (const { sku, quantity } of items || []) {
      const s = EVENT.skus.find((x) => x.id === sku);
      if (!s || !Number.isInteger(quantity) || quantity < 1) return null;
      const gross = s.price * quantity;
      const rate = s.category === 'ticket' ? 70000 : 190000;
      const net = Math.round((gross * 1e6) / (1e6 + rate));
      lines.push({ sku, name: s.name, quantity, unit_price: s.price, net, tax: gross - net, gross, tax_rate_ppm: rate, refund: {} });
    }
    const sum = (k) => lines.reduce((a, l) => a + l[k], 0);
    const hasTicket = lines.some((l) => l.sku === 'tkt');
    const hasBeer = lines.some((l) => l.sku === 'beer');
    return {
      lines, subtotal: sum('net'), tax_total: sum('tax'), total: sum('gross'), currency: 'EUR', prices: 'inclusive',
      prompts: {
        age_gate: hasBeer ? { min_age: 18 } : null,
        consent: hasTicket ? [{ lang: 'de', text: 'Ich weiß, dass Tickets für einen bestimmten Termin nicht widerrufen werden können.' }, { lang: 'en', text: 'I understand that tickets for a dated event cannot be withdrawn.' }] : [],
        buyer_fields: ['email'],
      },
      policy_revision: 3, policy_hash: 'mock',
    };
  }

  const publicSession = ({ expires, watchers, ...pub }) => pub;
  // A minimal WebSocket (RFC 6455) server: handshake and unmasked text frames out only.
  const wsSend = (sock, obj) => {
    const data = Buffer.from(JSON.stringify(obj));
    const head = data.length < 126 ? Buffer.from([0x81, data.length]) : Buffer.from([0x81, 126, data.length >> 8, data.length & 255]);
    sock.write(Buffer.concat([head, data]));
  };
  const stats = { wsConnections: 0 };

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    const p = url.pathname;
    const chunks = [];
    for await (const c of req) chunks.push(c);
    let body;
    try { body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : undefined; } catch { body = null; }
    const origin = req.headers.origin;
    const cors = origin && EVENT.allowed_origins.includes(origin) ? { 'access-control-allow-origin': origin, vary: 'Origin' } : {};
    const send = (status, obj, headers = {}) => res.writeHead(status, { 'content-type': 'application/json', ...cors, ...headers }).end(JSON.stringify(obj));
    const err = (status, code, message, retryable = false) => send(status, { error: { code, message, retryable } });
    const asset = (ct, text, headers = {}) => res.writeHead(200, { 'content-type': ct, 'cache-control': 'no-store', ...headers }).end(text);

    if (req.method === 'OPTIONS') {
      return res.writeHead(204, { ...cors, 'access-control-allow-methods': 'GET, POST, OPTIONS', 'access-control-allow-headers': 'Content-Type, Idempotency-Key', 'access-control-max-age': '600' }).end();
    }
    let m;
    if (p === '/mock/stats') return send(200, stats);
    if (p === '/v1/checkout.js') return asset('text/javascript', read('checkout.js'), { 'cache-control': 'public, max-age=300' });
    if (p === '/v1/frame.js') return asset('text/javascript', read('frame.js'));
    if (p === '/v1/frame') return asset('text/html', read('frame.html'), { 'content-security-policy': frameCsp() });
    if ((m = p.match(/^\/p\/([\w-]+)$/))) return asset('text/html', read('pay.html'), { 'content-security-policy': payCsp });
    if ((m = p.match(/^\/control\/lanes\/(fast|cheap)$/)) && req.method === 'POST') { lanes[m[1]] = body?.partition || 'none'; return send(200, { ok: true }); }
    if ((m = p.match(/^\/v1\/events\/([\w-]+)\/public$/))) return m[1] === EVENT.event_id ? send(200, EVENT) : err(404, 'not_found', 'No event with that id exists.');
    if ((m = p.match(/^\/v1\/events\/([\w-]+)\/quote$/)) && req.method === 'POST') {
      const q = quote(body?.items);
      return q ? send(200, q) : err(400, 'invalid_items', 'The items are not valid for this event.');
    }
    if (p === '/v1/tokens' && req.method === 'POST') {
      const c = body?.card || {};
      if (!luhn(c.number)) return err(400, 'invalid_card_number', 'The card number is not valid.');
      const token = `tok_${randomBytes(24).toString('base64url')}`;
      const brand = c.number.startsWith('4') ? 'visa' : c.number.startsWith('3') ? 'amex' : 'mastercard';
      tokens.set(token, { number: c.number, brand });
      return send(201, { token, cvc_token: `cvt_${randomBytes(12).toString('base64url')}`, brand, last4: c.number.slice(-4), exp_month: c.exp_month, exp_year: c.exp_year, expires_at: new Date(Date.now() + 3600e3).toISOString() });
    }
    if ((m = p.match(/^\/v1\/events\/([\w-]+)\/checkout$/)) && req.method === 'POST') {
      const key = req.headers['idempotency-key'];
      if (!key) return err(400, 'idempotency_key_required', 'Send an Idempotency-Key header.');
      if (orders.has(key)) return send(200, orders.get(key));
      const tok = tokens.get(body?.token);
      if (!tok) return err(400, 'invalid_token', 'The card token is unknown or expired.');
      const q = quote(body.items);
      if (!q) return err(400, 'invalid_items', 'The items are not valid for this event.');
      if (q.prompts.age_gate && !body.buyer?.age_confirmed) return err(422, 'age_not_confirmed', 'The buyer must confirm their age.');
      if (q.prompts.consent.length && !body.buyer?.consent_accepted) return err(422, 'consent_required', 'The buyer must accept the conditions.');
      const hs = body.handover_session && sessions.get(body.handover_session);
      if (body.handover_session && (!hs || hs.status !== 'open')) return err(409, 'handover_not_open', 'This payment request is already paid or has expired.');
      const order_id = `ord_${randomUUID().slice(0, 8)}`;
      const receipt_url = `/r/${order_id}`;
      let out;
      if (tok.number === '4000000000000002') out = { status: 'declined', order_id, receipt_id: null, receipt_url: null, decline: { code: 'card_declined', message: 'The card was declined.' }, message: 'The card was declined.' };
      else if (lanes.fast === 'refuse' && lanes.cheap === 'refuse') out = { status: 'queued', order_id, receipt_id: `rcp_${order_id}`, receipt_url, message: 'The acquirer is unreachable; the payment is stored and will be forwarded.' };
      else out = { status: 'approved', order_id, receipt_id: `rcp_${order_id}`, receipt_url, message: 'Payment approved.' };
      if (hs && out.status !== 'declined') {
        hs.status = 'paid';
        hs.receipt_url = receipt_url;
        for (const sock of hs.watchers) wsSend(sock, publicSession(hs));
      }
      orders.set(key, out);
      return send(out.status === 'declined' ? 402 : 201, out);
    }
    if ((m = p.match(/^\/v1\/events\/([\w-]+)\/handover$/)) && req.method === 'POST') {
      const q = quote(body?.items);
      if (!q) return err(400, 'invalid_items', 'The items are not valid for this event.');
      const id = `hs_${randomBytes(8).toString('hex')}`;
      const s = { status: 'open', total: q.total, currency: q.currency, event_id: EVENT.event_id, items: body.items, expires: Date.now() + 10 * 60e3, watchers: [] };
      sessions.set(id, s);
      return send(201, { session_id: id, pay_url: `${base}/p/${id}`, expires_at: new Date(s.expires).toISOString(), ws_url: `/v1/handover/${id}/ws`, status_url: `/v1/handover/${id}` });
    }
    if ((m = p.match(/^\/v1\/handover\/([\w-]+)$/))) {
      const s = sessions.get(m[1]);
      if (!s) return err(404, 'not_found', 'No payment request with that id exists.');
      if (s.status === 'open' && Date.now() > s.expires) s.status = 'expired';
      return send(200, publicSession(s));
    }
    if ((m = p.match(/^\/v1\/handover\/([\w-]+)\/qr\.svg$/))) {
      return asset('image/svg+xml', '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 29 29"><rect width="29" height="29" fill="#fff"/><path d="M4 4h7v7H4zM18 4h7v7h-7zM4 18h7v7H4z"/></svg>');
    }
    if ((m = p.match(/^\/r\/([\w-]+)$/))) return asset('text/html', `<!doctype html><title>Receipt</title><h1>Receipt ${m[1]}</h1>`);
    return err(404, 'route_not_found', 'There is no route here.');
  });
  server.on('upgrade', (req, sock) => {
    const m = new URL(req.url, 'http://x').pathname.match(/^\/v1\/handover\/([\w-]+)\/ws$/);
    const s = m && sessions.get(m[1]);
    if (!s) { sock.end('HTTP/1.1 404 Not Found\r\n\r\n'); return; }
    const accept = createHash('sha1').update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
    sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    stats.wsConnections++;
    s.watchers.push(sock);
    sock.on('error', () => {});
    sock.on('close', () => { s.watchers = s.watchers.filter((x) => x !== sock); });
    wsSend(sock, publicSession(s));
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => {
    base = `http://127.0.0.1:${server.address().port}`;
    resolve({ url: base, event: EVENT.event_id, stats, close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }) });
  }));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (n, d) => { const i = process.argv.indexOf(`--${n}`); return i > 0 ? process.argv[i + 1] : d; };
  const merchant = arg('merchant', 'http://127.0.0.1:8789');
  const m = await startMockEdge({ port: Number(arg('port', 8790)), merchantOrigin: merchant });
  console.log(`POPTILL_URL=${m.url} SIM_URL=${m.url} POPTILL_DEMO_EVENT=${m.event} MERCHANT_ORIGIN=${merchant}`);
}
