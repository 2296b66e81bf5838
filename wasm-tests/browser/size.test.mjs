// checkout.js must stay small: at most 10 KB gzip (issue 7), with no dependencies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

const src = readFileSync(new URL('../../src/embed/checkout.js', import.meta.url));

test('checkout.js is at most 10 KB gzip', () => {
  const gz = gzipSync(src, { level: 9 }).length;
  console.log(`checkout.js: ${src.length} bytes, ${gz} bytes gzip`);
  assert.ok(gz <= 10 * 1024, `checkout.js is ${gz} bytes gzip, over 10240`);
  assert.ok(gz > 1024, 'the measurement read the real script');
});

test('checkout.js imports nothing and never touches card fields', () => {
  const text = src.toString();
  assert.ok(!/\bimport\b|require\(|importScripts/.test(text));
  assert.ok(!/innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function/.test(text), 'no HTML strings, no eval');
  assert.ok(!/cc-number|\/v1\/tokens/.test(text), 'the page script never handles card numbers or tokens');
});
