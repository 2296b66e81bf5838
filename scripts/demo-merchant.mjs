#!/usr/bin/env node
// A demo merchant website on its own origin: serves src/embed/demo.html with the poptill
// script tag filled in, exactly as a merchant would paste it. Used by scripts/dev and by
// the browser tests (which also record every request the browser makes to this origin).
//   node scripts/demo-merchant.mjs --port 8789 --edge http://127.0.0.1:8787
//   then open http://127.0.0.1:8789/?event=evt_demo  (add &mode=terminal for the till,
//   &lang=fr for data-lang, &ttl=60 for the till's pay-link lifetime in seconds)
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const DEMO = fileURLToPath(new URL('../src/embed/demo.html', import.meta.url));
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** Starts the server; resolves to { url, close, requests } (requests: every one received). */
export function startMerchant({ edge, port = 0, host = '127.0.0.1', defaultEvent = '' }) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      requests.push({ method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString() });
      const url = new URL(req.url, 'http://x');
      if (url.pathname !== '/' && url.pathname !== '/index.html') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
        return;
      }
      const mode = url.searchParams.get('mode') === 'terminal' ? 'terminal' : 'checkout';
      const html = readFileSync(DEMO, 'utf8')
        .replaceAll('{{EDGE}}', esc(edge.replace(/\/$/, '')))
        .replaceAll('{{EVENT}}', esc(url.searchParams.get('event') || defaultEvent))
        .replaceAll('{{MODE}}', mode)
        .replaceAll('{{LANG}}', esc(url.searchParams.get('lang') || ''))
        .replaceAll('{{TTL}}', esc(url.searchParams.get('ttl') || ''));
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }).end(html);
    });
  });
  return new Promise((resolve) => {
    server.listen(port, host, () => {
      const url = `http://${host}:${server.address().port}`;
      resolve({ url, requests, close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }) });
    });
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (name, dflt) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : dflt;
  };
  const edge = arg('edge', process.env.POPTILL_URL || 'http://127.0.0.1:8787');
  const { url } = await startMerchant({ edge, port: Number(arg('port', 8789)), defaultEvent: arg('event', process.env.POPTILL_DEMO_EVENT || '') });
  console.log(`demo merchant on ${url} (edge ${edge})`);
}
