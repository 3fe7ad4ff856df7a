#!/usr/bin/env node
// The whole test suite, as CI runs it: Rust crates, a drift check of the generated
// bindings, then the TypeScript unit and integration tests against the real daemon.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { root, run } from './lib/env.mjs';

run('node', [join(root, 'scripts', 'cargo.mjs'), 'test', '--release', '--workspace']);
run('node', [join(root, 'scripts', 'build.mjs')]);
const git = spawnSync('git', ['diff', '--exit-code', '--stat', '--', 'bindings/index.js', 'bindings/index.d.ts'], { cwd: root, stdio: 'inherit' });
if (git.status === 1) {
  console.error('novacron: bindings/ is out of date with crates/node; commit the regenerated loader and .d.ts');
  process.exit(1);
}
run(join(root, 'node_modules', '.bin', 'vitest'), ['run', ...process.argv.slice(2)]);
// Benchmarks run in smoke mode so they never rot (figures are not judged here).
run('node', [join(root, 'bench', 'api', 'run.mjs'), '--quick']);
