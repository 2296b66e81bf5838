// scripts/preflight against the local stack: a ready event passes every check (including
// the chaos drill against the simulator); an event whose jurisdiction has no active policy
// bundle, or a latency target no edge can meet, makes it exit non-zero naming the check.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { BASE, SIM, ADMIN_KEY, createEvent, healLanes, simStats } from './helpers.mjs';

const PREFLIGHT = fileURLToPath(new URL('../../scripts/preflight', import.meta.url));
after(async () => { await healLanes(); });

function preflight(args) {
  const r = spawnSync(PREFLIGHT, ['--url', BASE, ...args], {
    env: { ...process.env, POPTILL_ADMIN_KEY: ADMIN_KEY }, encoding: 'utf8', timeout: 120_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const row = (out, check) => out.split('\n').find((l) => l.startsWith(check));

test('a ready event passes every check, chaos drill included', async () => {
  const id = await createEvent();
  const r = preflight(['--event', id, '--sim', SIM, '--target-p95-ms', '2000']);
  assert.equal(r.code, 0, r.out + r.err);
  for (const check of ['event', 'policy bundle', 'p95 checkout latency', 'vault keys', 'chaos: slow lane → failover', 'chaos: partition → queued', 'chaos: heal → forwarded', 'refunds + reconcile']) {
    assert.match(row(r.out, check) ?? '', /\sPASS\s/, `${check}: ${r.out}`);
  }
  assert.match(r.out, /READY: every check passed/);
  // The drill left the simulator healthy.
  const lanes = await (await fetch(`${SIM}/control/lanes`)).json();
  for (const [name, cfg] of Object.entries(lanes.lanes)) assert.equal(cfg.partition, 'none', `${name} left partitioned`);
  // --json gives the same verdict in machine form.
  const j = preflight(['--event', id, '--json', '--checkouts', '2', '--target-p95-ms', '2000']);
  const doc = JSON.parse(j.out);
  assert.equal(doc.ok, j.code === 0);
  assert.equal(doc.checks.find((c) => c.check === 'chaos: partition → queued').result, 'SKIP', 'no --sim: the drill is skipped, not passed');
});

test('no active policy for the event\'s jurisdiction: non-zero exit naming the check', async () => {
  const id = await createEvent({ jurisdiction: 'ZZ' });
  const r = preflight(['--event', id, '--sim', SIM, '--checkouts', '3', '--target-p95-ms', '2000']);
  assert.equal(r.code, 1, r.out + r.err);
  assert.match(row(r.out, 'policy bundle') ?? '', /\sFAIL\s.*no active bundle for ZZ/, r.out);
  assert.match(r.out, /NOT READY: \d+ check\(s\) failed: policy bundle/);
});

test('a p95 target the edge cannot meet fails the latency check', async () => {
  const id = await createEvent();
  const r = preflight(['--event', id, '--checkouts', '3', '--target-p95-ms', '0.001']);
  assert.equal(r.code, 1, r.out + r.err);
  assert.match(row(r.out, 'p95 checkout latency') ?? '', /\sFAIL\s.*target 0\.001 ms/, r.out);
  assert.match(r.out, /failed: p95 checkout latency/);
});

test('bad usage exits 2 with a usage line', () => {
  const r = spawnSync(PREFLIGHT, ['--url', BASE], { encoding: 'utf8', env: { ...process.env, POPTILL_ADMIN_KEY: 'x' } });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /usage: scripts\/preflight/);
});
