#!/usr/bin/env node
// Builds everything `npm start` and `npm test` need: system packages (when missing),
// QEMU 10 (so `npm start` manages real VMs; NOVACRON_SKIP_QEMU=1 skips it), the native
// addon (bindings/), and the TypeScript (dist/). Runs as `npm install`'s prepare step, so
// a fresh clone needs only `npm install`.
import { join } from 'node:path';
import { cargoEnv, root, run } from './lib/env.mjs';

const nativeOnly = process.argv.includes('--native-only');

run('bash', [join(root, 'scripts', 'bootstrap-system.sh')]);
if (!process.env.NOVACRON_SKIP_QEMU && !nativeOnly) run('bash', [join(root, 'scripts', 'setup-qemu.sh')]);
run(
  join(root, 'node_modules', '.bin', 'napi'),
  ['build', '--platform', '--release', '--esm', '--manifest-path', 'crates/node/Cargo.toml',
    '--output-dir', 'bindings', '--js', 'index.js', '--dts', 'index.d.ts', '--package-json-path', 'package.json'],
  { env: cargoEnv() },
);
if (!nativeOnly) run(join(root, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.json']);
