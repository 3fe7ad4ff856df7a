#!/usr/bin/env node
// Runs cargo with NovaCron's shared target directory. The bundled RocksDB build takes
// minutes on two cores, so build artefacts live outside the checkout (one cache for
// every clone and for CI) unless CARGO_TARGET_DIR says otherwise.
import { spawnSync } from 'node:child_process';
import { cargoEnv } from './lib/env.mjs';

const result = spawnSync('cargo', process.argv.slice(2), { stdio: 'inherit', env: cargoEnv() });
process.exit(result.status ?? 1);
