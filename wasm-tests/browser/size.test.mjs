// checkout.js must stay small: what the Worker serves (src/embed/checkout.min.js, made by
// scripts/minify from the readable src/embed/checkout.js) at most 8 KiB gzip with all six
// languages, the source at most 10 KB gzip; no dependencies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { execFileSync } from 'node:child_process';

const root = new URL('../../', import.meta.url);
const src = readFileSync(new URL('src/embed/checkout.js', root));
const served = readFileSync(new URL('src/embed/checkout.min.js', root));

test('the checkout.js the Worker serves is at most 8 KiB gzip; its source at most 10 KB', () => {
  const gz = gzipSync(served, { level: 9 }).length;
  const srcGz = gzipSync(src, { level: 9 }).length;
  console.log(`checkout.js served: ${served.length} bytes, ${gz} bytes gzip (source ${src.length} bytes, ${srcGz} gzip)`);
  assert.ok(gz <= 8 * 1024, `the served checkout.js is ${gz} bytes gzip, over 8192`);
  assert.ok(srcGz <= 10 * 1024, `checkout.js is ${srcGz} bytes gzip, over 10240`);
  for (const lang of ["en", "de", "fr", "es", "nl", "ja"]) assert.match(served.toString(), new RegExp(`[{,]${lang}:`), `the ${lang} strings are served`);
});

test('the served checkout.js is the minified source (scripts/minify was run after the last edit)', () => {
  const esbuild = new URL('node_modules/.bin/esbuild', root).pathname;
  const fresh = execFileSync(esbuild, [new URL('src/embed/checkout.js', root).pathname, '--minify', '--legal-comments=none', '--log-level=warning']).toString();
  const body = served.toString().split('\n').slice(1).join('\n');
  assert.equal(body, fresh, 'src/embed/checkout.min.js is stale: run scripts/minify');
});

test('checkout.js imports nothing and never touches card fields', () => {
  for (const text of [src.toString(), served.toString()]) {
    assert.ok(!/\bimport\b|require\(|importScripts/.test(text));
    assert.ok(!/innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function/.test(text), 'no HTML strings, no eval');
    assert.ok(!/cc-number|\/v1\/tokens/.test(text), 'the page script never handles card numbers or tokens');
  }
});
