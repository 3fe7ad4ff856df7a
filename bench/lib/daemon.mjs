// Shared by bench scripts: a real daemon child process and a JSON API call.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
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

/** A free TCP port on the loopback (for a daemon's listeners). */
export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/**
 * Two daemons forming one cluster (the second joins the first, pinning its CA), as
 * hypervisor hosts do; each handle carries its member `id`. Resolves once both vote.
 */
export async function startPair(root, dirs, driver = 'qemu', extraArgs = []) {
  const secret = 'bench-cluster-secret-0123456789';
  const ports = [await freePort(), await freePort()];
  const peer = (i) => ['--peer-listen', `127.0.0.1:${ports[i]}`, '--cluster-secret', secret];
  const first = await startDaemon(root, dirs[0], driver, [...peer(0), ...extraArgs]);
  const info = await call(first.url, 'GET', '/v1/cluster');
  const second = await startDaemon(root, dirs[1], driver, [...peer(1), '--join', `127.0.0.1:${ports[0]}`, '--ca-hash', info.caHash, ...extraArgs]);
  for (let i = 0; ; i++) {
    const c = await call(first.url, 'GET', '/v1/cluster');
    if (c.voters?.length === 2) break;
    if (i > 600) throw new Error(`the second daemon never became a voter: ${JSON.stringify(c)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  first.id = info.id;
  second.id = (await call(second.url, 'GET', '/v1/cluster')).id;
  return [first, second];
}
