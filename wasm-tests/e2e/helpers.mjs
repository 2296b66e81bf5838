// Shared helpers for the end-to-end tests: they run against the Worker in workerd that
// scripts/test started (POPTILL_URL) and the acquirer simulator (SIM_URL).
import assert from 'node:assert/strict';

export const BASE = process.env.POPTILL_URL;
export const SIM = process.env.SIM_URL;
export const ADMIN_KEY = process.env.ADMIN_KEY;
if (!BASE) throw new Error('POPTILL_URL is not set: run the end-to-end tests through scripts/test');

export async function api(method, path, { body, key, headers = {}, raw = false } = {}) {
  const h = { ...headers };
  if (key) h.authorization = `Bearer ${key}`;
  let payload;
  if (body !== undefined) {
    payload = typeof body === 'string' ? body : JSON.stringify(body);
    h['content-type'] ??= 'application/json';
  }
  const res = await fetch(BASE + path, { method, headers: h, body: payload });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, headers: res.headers, text, json };
}

export const admin = (method, path, opts = {}) => api(method, path, { ...opts, key: ADMIN_KEY });

export function assertError(res, status, code) {
  assert.equal(res.status, status, `expected ${status} ${code}, got ${res.status}: ${res.text}`);
  assert.equal(res.json?.error?.code, code, res.text);
  assert.ok(res.json.error.message.length > 10, 'error has a human sentence');
}
