// Shared by bench scripts: a real daemon child process and a JSON API call.
import { spawn } from 'node:child_process';
import { join } from 'node:path';

/**
 * The administrator token every bench daemon also accepts (given through the environment,
 * as an operator would): one token for every daemon of a run, so migrations between
 * them can name it as their `targetToken`.
 */
export const BENCH_TOKEN = 'bench-admin-token-0123456789';
export const AUTH = { authorization: `Bearer ${BENCH_TOKEN}` };

/** Starts `bin/novacron.js daemon` on a free loopback port; resolves once it listens. */
export function startDaemon(root, dataDir, driver = 'qemu', extraArgs = []) {
  const proc = spawn(process.execPath, [join(root, 'bin', 'novacron.js'), 'daemon', '--driver', driver, '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--log-level', 'warn', ...extraArgs], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, NOVACRON_API_TOKEN: BENCH_TOKEN } });
  let err = '';
  return new Promise((res, rej) => {
    proc.stderr.on('data', (d) => {
      err += d;
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m) res({ url: m[1], dataDir, stop: () => new Promise((r) => { proc.on('exit', r); proc.kill('SIGTERM'); }) });
    });
    proc.on('exit', (c) => rej(new Error(`daemon exited ${c}: ${err}`)));
  });
}

/** A JSON API call that throws on a non-2xx answer. */
export async function call(url, method, path, body) {
  const res = await fetch(url + path, { method, headers: { ...AUTH, ...(body ? { 'content-type': 'application/json' } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}) });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}
