import { homedir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Shared cargo target dir; see README "Native build". */
export function cargoEnv() {
  const targetDir = process.env.CARGO_TARGET_DIR || join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'novacron', 'cargo-target');
  return { ...process.env, CARGO_TARGET_DIR: targetDir };
}

/** Runs a command, streaming its output; exits the process on failure. */
export function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
  if (r.status !== 0) {
    console.error(`novacron: '${cmd} ${args.join(' ')}' failed (exit ${r.status ?? r.signal})`);
    process.exit(r.status || 1);
  }
}

/**
 * The host's target triple. `napi build --platform` always passes `--target`, which
 * makes cargo use target/<triple>/; passing the same to `cargo test` lets both share one
 * RocksDB build instead of compiling it twice.
 */
export function hostTarget() {
  const out = spawnSync('rustc', ['-vV'], { encoding: 'utf8' }).stdout ?? '';
  const m = /^host: (\S+)$/m.exec(out);
  if (!m) throw new Error('cannot determine the Rust host target (is rustc installed?)');
  return m[1];
}
