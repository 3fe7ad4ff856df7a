#!/usr/bin/env node
// The whole test suite, as CI runs it: Rust crates, the structural checks of
// scripts/ready.mjs (formatting, folder boundaries, bindings drift), the TypeScript
// unit and integration tests against the real daemon, and the
// benchmarks in smoke mode. Ends with one summary line over every runner.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { root, run } from './lib/env.mjs';

const totals = { passed: 0, failed: 0, skipped: 0 };

// Rust: stream cargo's output and count its "test result" lines.
const cargo = spawnSync(process.execPath, [join(root, 'scripts', 'cargo.mjs'), 'test', '--release', '--workspace'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 << 20 });
process.stdout.write(cargo.stdout ?? '');
for (const m of (cargo.stdout ?? '').matchAll(/test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored/g)) {
  totals.passed += Number(m[1]);
  totals.failed += Number(m[2]);
  totals.skipped += Number(m[3]);
}
if (cargo.status !== 0) finish(1, 'cargo test failed');

run('node', [join(root, 'scripts', 'build.mjs')]);
// Formatting, folder boundaries, bindings drift (scripts/ready.mjs).
const ready = spawnSync(process.execPath, [join(root, 'scripts', 'ready.mjs')], { cwd: root, stdio: 'inherit' });
if (ready.status !== 0) finish(1, 'scripts/ready.mjs failed');

// The tests are type-checked too (vitest only strips types): a stale option in a test
// would otherwise pass silently.
const types = spawnSync(join(root, 'node_modules', '.bin', 'tsc'), ['-p', join(root, 'tsconfig.test.json')], { cwd: root, stdio: 'inherit' });
if (types.status !== 0) finish(1, 'type errors in src/ or test/ (tsc -p tsconfig.test.json)');

const report = join(mkdtempSync(join(tmpdir(), 'novacron-vitest-')), 'report.json');
const vitest = spawnSync(join(root, 'node_modules', '.bin', 'vitest'), ['run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...process.argv.slice(2)], { cwd: root, stdio: 'inherit' });
try {
  const r = JSON.parse(readFileSync(report, 'utf8'));
  totals.passed += r.numPassedTests;
  totals.failed += r.numFailedTests;
  totals.skipped += r.numPendingTests + r.numTodoTests;
} catch {
  totals.failed += 1; // No report: vitest itself failed.
}
if (vitest.status !== 0) finish(1, 'vitest failed');

// Benchmarks run in smoke mode so they never rot (figures are not judged here).
for (const bench of ['api/run.mjs', 'qemu/run.mjs', 'native/memdelta.mjs', 'native/miglink-tls.mjs', 'migration/run.mjs', 'cluster/run.mjs', 'storage/run.mjs']) {
  const r = spawnSync(process.execPath, [join(root, 'bench', bench), '--quick'], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) finish(1, `bench/${bench} smoke run failed`);
}
finish(totals.failed > 0 ? 1 : 0);

function finish(code, why) {
  if (why) console.error(`novacron: ${why}`);
  console.log(`\n${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`);
  process.exit(code);
}
