// End-to-end: signed policy bundles pushed to the edge, refused when bad, rolled back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BASE, ADMIN_KEY, admin, assertError } from './helpers.mjs';

const CLI = join(process.cwd(), 'target/debug/poptill-policy');
const KEY = process.env.POLICY_KEY_FILE;
const dir = mkdtempSync(join(tmpdir(), 'poptill-policy-'));

function sign(file, revision, key = KEY) {
  const out = join(dir, `r${revision}-${Math.random().toString(36).slice(2)}`);
  execFileSync(CLI, ['sign', '--key', key, '--revision', String(revision), '--out', out, file]);
  const name = file.split('/').pop().replace('.json', '.signed.json');
  return readFileSync(join(out, name), 'utf8');
}
const cli = (...args) => spawnSync(CLI, args, { env: { ...process.env, POPTILL_ADMIN_KEY: ADMIN_KEY }, encoding: 'utf8' });

test('push, replay refusal, tamper, unknown key and rollback', async () => {
  const rev1 = sign('policies/NL.json', 101);
  let r = await admin('PUT', '/v1/admin/policies', { body: rev1 });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.active.revision, 101);

  r = await admin('PUT', '/v1/admin/policies', { body: rev1 });
  assert.equal(r.status, 200, 'same revision again is idempotent');
  assert.equal(r.json.unchanged, true);

  const tampered = JSON.parse(rev1);
  tampered.bundle.tax.rates_ppm.merchandise = 100;
  assertError(await admin('PUT', '/v1/admin/policies', { body: tampered }), 422, 'policy_bad_signature');

  const otherKey = join(dir, 'other.key');
  execFileSync(CLI, ['keygen', '--out', otherKey]);
  assertError(await admin('PUT', '/v1/admin/policies', { body: sign('policies/NL.json', 105, otherKey) }), 403, 'policy_unknown_key');
  assertError(await admin('PUT', '/v1/admin/policies', { body: '{"bundle": 1}' }), 400, 'policy_malformed');

  r = await admin('GET', '/v1/admin/policies/NL');
  assert.equal(r.json.active.revision, 101, 'refused pushes leave revision 101 active');

  r = await admin('PUT', '/v1/admin/policies', { body: sign('policies/NL.json', 102) });
  assert.equal(r.status, 201, r.text);
  assertError(await admin('PUT', '/v1/admin/policies', { body: rev1 }), 409, 'policy_stale_revision');

  const status = cli('status', '--url', BASE, 'NL');
  assert.equal(status.status, 0, status.stderr);
  assert.match(status.stdout, /102/);

  const rb = cli('rollback', '--url', BASE, '--key', KEY, 'NL', '--to', '101');
  assert.equal(rb.status, 0, rb.stderr + rb.stdout);
  r = await admin('GET', '/v1/admin/policies/NL');
  assert.equal(r.json.active.revision, 101);
  assert.equal(r.json.active.via, 'rollback');
  assert.deepEqual(r.json.history.map((h) => h.revision).slice(-3), [101, 102, 101]);

  assertError(await admin('PUT', '/v1/admin/policies', { body: sign('policies/NL.json', 102) }), 409, 'policy_stale_revision');
  r = await admin('GET', '/v1/admin/policies/NL/revisions/102');
  assert.equal(r.status, 200);
  assert.equal(r.json.bundle.manifest.revision, 102);
});

test('the CLI pushes and reports a refusal with exit code 1', async () => {
  const signed = join(dir, 'fr.signed.json');
  writeFileSync(signed, sign('policies/FR.json', 103));
  let p = cli('push', '--url', BASE, signed);
  assert.equal(p.status, 0, p.stderr + p.stdout);
  p = cli('push', '--url', BASE, signed);
  assert.equal(p.status, 0, 'idempotent');
  writeFileSync(signed, sign('policies/FR.json', 102));
  p = cli('push', '--url', BASE, signed);
  assert.equal(p.status, 1, p.stdout + p.stderr);
  assert.match(p.stdout + p.stderr, /stale/i);
});

test('unknown jurisdiction has no status; the strict default applies', async () => {
  assertError(await admin('GET', '/v1/admin/policies/ZZ'), 404, 'policy_not_found');
});
