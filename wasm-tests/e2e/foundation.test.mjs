// End-to-end: the foundation routes, headers, errors and the OpenAPI document.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { api, admin, assertError } from './helpers.mjs';

test('healthz names the service, version, colo and time', async () => {
  const before = Date.now();
  const r = await api('GET', '/healthz');
  assert.equal(r.status, 200);
  assert.equal(r.json.name, 'poptill');
  assert.match(r.json.version, /^\d+\.\d+\.\d+/);
  assert.match(r.json.colo, /^[A-Z]{3}$/, 'colo comes from request.cf');
  assert.ok(Math.abs(Date.parse(r.json.time) - before) < 60_000, r.json.time);
  assert.match(r.headers.get('x-request-id'), /^req_[0-9a-f]{16}$/);
  assert.equal(r.headers.get('x-poptill-colo'), r.json.colo);
});

test('request ids differ between requests', async () => {
  const a = await api('GET', '/healthz');
  const b = await api('GET', '/healthz');
  assert.notEqual(a.headers.get('x-request-id'), b.headers.get('x-request-id'));
});

test('unknown routes and methods get stable JSON errors, not 5xx', async () => {
  assertError(await api('GET', '/no/such/route'), 404, 'route_not_found');
  assertError(await api('DELETE', '/healthz'), 405, 'method_not_allowed');
  const r = await api('GET', '/no/such/route');
  assert.ok(r.headers.get('x-request-id'));
});

test('RFC 9110: a 405 names the allowed methods in Allow; HEAD and OPTIONS answer as the RFC says', async () => {
  const wrong = await api('DELETE', '/healthz');
  assertError(wrong, 405, 'method_not_allowed');
  assert.equal(wrong.headers.get('allow'), 'GET, HEAD, OPTIONS');
  const postOnly = await api('PUT', '/v1/tokens', { body: '{}' });
  assertError(postOnly, 405, 'method_not_allowed');
  assert.equal(postOnly.headers.get('allow'), 'POST, OPTIONS');
  // HEAD is a GET without the body: same status and headers where GET is served, a 405
  // with Allow where it is not.
  const get = await api('GET', '/v1/openapi.json');
  const head = await api('HEAD', '/v1/openapi.json');
  assert.equal(head.status, 200);
  assert.equal(head.text, '');
  assert.equal(head.headers.get('content-type'), get.headers.get('content-type'));
  const headPost = await api('HEAD', '/v1/tokens');
  assert.equal(headPost.status, 405);
  assert.equal(headPost.headers.get('allow'), 'POST, OPTIONS');
  // OPTIONS without CORS: 204 with Allow; with a preflight from a page: the CORS answer.
  const options = await api('OPTIONS', '/v1/events/ev_x/checkout');
  assert.equal(options.status, 204);
  assert.equal(options.headers.get('allow'), 'POST, OPTIONS');
  const preflight = await api('OPTIONS', '/v1/events/ev_x/checkout', {
    headers: { origin: 'https://shop.example', 'access-control-request-method': 'POST' },
  });
  assert.equal(preflight.status, 204);
  assert.match(preflight.headers.get('access-control-allow-methods'), /POST/);
  assert.match(preflight.headers.get('access-control-allow-headers'), /Idempotency-Key/);
  assertError(await api('OPTIONS', '/no/such/route'), 404, 'route_not_found');
  // A method the platform does not know is not taken for a GET.
  const query = await api('QUERY', '/v1/openapi.json');
  assertError(query, 405, 'method_not_allowed');
  assert.equal(query.headers.get('allow'), 'GET, HEAD, OPTIONS');
});

test('every route in the OpenAPI document is served, with the right access', async () => {
  const doc = await api('GET', '/v1/openapi.json');
  assert.equal(doc.status, 200);
  assert.match(doc.json.openapi, /^3\.1/);
  const paths = Object.entries(doc.json.paths);
  assert.ok(paths.length >= 2);
  for (const [path, item] of paths) {
    for (const [method, op] of Object.entries(item)) {
      const concrete = path.replace(/\{[^}]+\}/g, 'zz_unknown');
      const r = await api(method.toUpperCase(), concrete, { body: method === 'get' ? undefined : '{}' });
      assert.notEqual(r.json?.error?.code, 'route_not_found', `${method} ${path} is documented but not served`);
      assert.notEqual(r.json?.error?.code, 'method_not_allowed', `${method} ${path}`);
      assert.ok(r.status < 500, `${method} ${path} answered ${r.status}: ${r.text}`);
      if (op.security?.length) {
        assertError(r, 401, 'unauthorized');
      }
    }
  }
});
