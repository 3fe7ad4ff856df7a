#!/usr/bin/env node
// Runs cargo with NovaCron's shared target directory and the host target triple, so
// `cargo test` and `napi build` share one RocksDB build (see lib/env.mjs).
import { spawnSync } from 'node:child_process';
import { cargoEnv, hostTarget } from './lib/env.mjs';

const args = process.argv.slice(2);
if (['build', 'test', 'check', 'clippy', 'bench'].includes(args[0]) && !args.includes('--target')) {
  const sep = args.indexOf('--'); // arguments after `--` belong to the test binary
  args.splice(sep === -1 ? args.length : sep, 0, '--target', hostTarget());
}
const result = spawnSync('cargo', args, { stdio: 'inherit', env: cargoEnv() });
process.exit(result.status ?? 1);
