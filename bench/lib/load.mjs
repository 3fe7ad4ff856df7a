// Shared by bench scripts: load generators (Debian packages, installed when missing).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pct } from './report.mjs';
import { BENCH_TOKEN } from './daemon.mjs';

export function ensurePackage(cmd, pkg) {
  if (spawnSync(cmd, ['--version']).error === undefined) return;
  console.error(`bench: installing ${pkg} (Debian package)`);
  const sudo = process.getuid?.() === 0 ? [] : ['sudo'];
  const apt = (...a) => spawnSync(sudo.length ? 'sudo' : 'apt-get', [...(sudo.length ? ['apt-get'] : []), ...a], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }).status;
  if (apt('install', '-y', '-qq', pkg) !== 0 && (apt('update', '-qq'), apt('install', '-y', '-qq', pkg)) !== 0) throw new Error(`cannot install ${pkg}`);
}

/**
 * Latency at a fixed offered rate (open loop): h2load over HTTP/1.1 with `conns`
 * connections, `rps` requests per second in all, the paths of `pathsFile` in turn;
 * `place` wraps the command (e.g. taskset). The warm-up second is dropped.
 */
export function fixedRate(url, pathsFile, rps, seconds, conns, place = (cmd) => [cmd[0], cmd.slice(1)]) {
  ensurePackage('h2load', 'nghttp2-client');
  const dir = mkdtempSync(join(tmpdir(), 'novacron-bench-h2load-'));
  const urls = join(dir, 'urls.txt');
  const logFile = join(dir, 'log.tsv');
  writeFileSync(urls, readFileSync(pathsFile, 'utf8').trim().split('\n').map((p) => url + p).join('\n') + '\n');
  const perClient = Math.ceil(rps / conns);
  const [cmd, cmdArgs] = place(['h2load', '--h1', `-c${conns}`, '-m1', `--rps=${perClient}`, `-D`, String(seconds), '--warm-up-time=1', '-i', urls, `--log-file=${logFile}`, '-H', `authorization: Bearer ${BENCH_TOKEN}`]);
  const r = spawnSync(cmd, cmdArgs, { encoding: 'utf8' });
  const m = /finished in [\d.]+s, ([\d.]+) req\/s/.exec(r.stdout);
  if (!m) throw new Error(`h2load failed: ${r.stderr}\n${r.stdout}`);
  // h2load logs its warm-up second too; drop it (connection set-up, JIT).
  const all = readFileSync(logFile, 'utf8').trim().split('\n').map((l) => l.split('\t'));
  const t0 = Number(all[0][0]);
  const rows = all.filter((f) => Number(f[0]) >= t0 + 1e6);
  rmSync(dir, { recursive: true, force: true });
  const lat = rows.map((f) => Number(f[2])).sort((a, b) => a - b);
  const errors = rows.filter((f) => !f[1].startsWith('2')).length;
  const ms = (q) => pct(lat, q) / 1000;
  return { rps: Math.round(Number(m[1])), offeredRps: perClient * conns, p50Ms: ms(0.5), p90Ms: ms(0.9), p99Ms: ms(0.99), maxMs: lat.at(-1) / 1000, requests: lat.length, errors };
}
