#!/usr/bin/env node
// bench/api: the API read path under load, NovaCron (uWS) vs a plain node:http server
// over the same store, in the same run.
//
//   node bench/api/run.mjs [--vms 10000] [--duration 10] [--connections 64] [--quick] [--check]
//
// Also measures forwarding: in a two-member cluster, GET by id of member A's VMs sent
// to A and sent to B (which forwards to A), at the same fixed offered rate; the target
// is at most 1 ms added to the p50. And the daemon over HTTPS (--api-tls on) against
// itself over plain HTTP: GET by id at saturation, target >= 0.6x.
//
// The server under test is pinned to CPU 0 and wrk to CPU 1 (taskset), so "one core"
// is literal. Writes bench/results/api-<time>.json and prints a table. With --check,
// exits 1 when a target is missed (the SLA runner mode).
import { AUTH, BENCH_TOKEN } from '../lib/daemon.mjs';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { writeResults, printTable as printRows, pct } from '../lib/report.mjs';
import { ensurePackage, fixedRate as fixedRateLoad } from '../lib/load.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const { values: args } = parseArgs({
  options: {
    vms: { type: 'string', default: '10000' },
    duration: { type: 'string', default: '10' },
    connections: { type: 'string', default: '64' },
    quick: { type: 'boolean', default: false },
    check: { type: 'boolean', default: false },
  },
});
const quick = args.quick;
const VMS = quick ? 1000 : Number(args.vms);
const DURATION = quick ? 2 : Number(args.duration);
const CONNS = Number(args.connections);
const TARGETS = { getRps: 30_000, getP99Ms: 2, ratioVsNodeHttp: 2, forwardAddedP50Ms: 1, authSharePercent: 5, httpsVsHttp: 0.6 };
/** Offered rate and connections of the forwarding comparison: a latency measurement, well below saturation. */
const FORWARD_RPS = 2000;
const FORWARD_CONNS = 8;

ensurePackage('wrk', 'wrk');
ensurePackage('h2load', 'nghttp2-client');
const twoCores = cpus().length >= 2;
const pin = (cpu, cmd) => (twoCores ? ['taskset', ['-c', String(cpu), ...cmd]] : [cmd[0], cmd.slice(1)]);
const unpinned = (cmd) => [cmd[0], cmd.slice(1)];

const dataDir = mkdtempSync(join(tmpdir(), 'novacron-bench-api-'));
const results = { bench: 'api', time: new Date().toISOString(), quick, vms: VMS, durationS: DURATION, connections: CONNS, pinned: twoCores, targets: TARGETS, runs: {} };
try {
  // 1. NovaCron daemon, seeded with VMS VMs through its own API.
  // Seed through the API, then restart: both servers are measured as freshly started
  // processes over the same 10,000 stored VMs (not while RocksDB compacts the seed).
  const daemonCmd = pin(0, [process.execPath, join(root, 'bin', 'novacron.js'), 'daemon', '--driver', 'sim', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--log-level', 'warn']);
  const seeder = await startServer(daemonCmd, /listening on (http:\/\/[^\s]+)/);
  const ids = await seed(seeder.url, VMS);
  await seeder.stop();
  const files = writePathFiles(ids);
  const daemon = await startServer(daemonCmd, /listening on (http:\/\/[^\s]+)/);
  results.runs.novacron = await measure(daemon.url, files);
  await daemon.stop();

  // 1b. The same daemon and store over HTTPS (--api-tls on: the member certificate, ECDSA P-256, TLS 1.3), GET by id at saturation.
  const tlsDaemon = await startServer(pin(0, [process.execPath, join(root, 'bin', 'novacron.js'), 'daemon', '--driver', 'sim', '--listen', '127.0.0.1:0', '--api-tls', 'on', '--data-dir', dataDir, '--log-level', 'warn']), /listening on (https:\/\/[^\s]+)/);
  wrk(tlsDaemon.url, files.get, 1);
  results.runs.novacronHttps = { get: wrk(tlsDaemon.url, files.get, DURATION) };
  await tlsDaemon.stop();

  // 2. Baseline: node:http over the same store and VmService.
  const baseline = await startServer(pin(0, [process.execPath, join(here, 'baseline-http.mjs'), dataDir]), /baseline listening on (http:\/\/[^\s]+)/);
  results.runs.nodeHttp = await measure(baseline.url, files);
  await baseline.stop();

  results.forwarding = await measureForwarding();
  results.auth = await measureAuthCost(results.runs.novacron.get.rps);

  const n = results.runs.novacron;
  const b = results.runs.nodeHttp;
  results.ratio = { getRps: round(n.get.rps / b.get.rps), listRps: round(n.list.rps / b.list.rps), getP99AtTarget: round(b.getAtTarget.p99Ms / n.getAtTarget.p99Ms), httpsGetRps: round(results.runs.novacronHttps.get.rps / n.get.rps) };
  results.verdict = {
    getRps: n.get.rps >= TARGETS.getRps,
    // "30,000 req/s with p99 <= 2 ms": the p99 measured while 30,000 req/s are offered.
    getP99: n.getAtTarget.p99Ms <= TARGETS.getP99Ms && n.getAtTarget.rps >= TARGETS.getRps * 0.98,
    ratio: results.ratio.getRps >= TARGETS.ratioVsNodeHttp,
    errorsFree: [n.get, n.getAtTarget, n.list, results.runs.novacronHttps.get, results.forwarding.direct, results.forwarding.forwarded].every((r) => r.errors === 0),
    forwarding: results.forwarding.addedP50Ms <= TARGETS.forwardAddedP50Ms,
    auth: results.auth.apiToken.sharePercent <= TARGETS.authSharePercent,
    https: results.ratio.httpsGetRps >= TARGETS.httpsVsHttp,
  };
  results.pass = Object.values(results.verdict).every(Boolean);

  const out = writeResults(root, 'api', results);
  printTable(results);
  console.log(`\nresults: ${out}`);
  if (args.check && !results.pass) {
    console.error('SLA MISSED:', Object.entries(results.verdict).filter(([, ok]) => !ok).map(([k]) => k).join(', '));
    process.exitCode = 1;
  }
} finally {
  rmSync(dataDir, { recursive: true, force: true });
}

/**
 * What authentication and authorization cost a GET by id, measured in this process on the
 * daemon's own code: an identity store of 1,000 users with a token and an ACL entry each,
 * then the server's per-request work (parse and check the bearer token, build or reuse the
 * principal, check VM.Audit on a VM's ACL chain), for an API token and a session JWT. The
 * share is that time over the time one GET by id took at saturation in this run.
 */
async function measureAuthCost(getRps) {
  const { IdentityStore } = await import('../../dist/auth/identity.js');
  const { Authenticator } = await import('../../dist/auth/principal.js');
  const { Sessions } = await import('../../dist/auth/sessions.js');
  const { newToken } = await import('../../dist/auth/secrets.js');
  const entries = [];
  const put = (key, v) => entries.push({ key, value: Buffer.from(JSON.stringify(v)) });
  let last;
  for (let i = 0; i < 1000; i++) {
    const t = newToken();
    put(`auth/user/u${i}`, { name: `u${i}`, tenant: `t${i % 10}`, createdAt: new Date().toISOString() });
    put(`auth/token/${t.id}`, { id: t.id, user: `u${i}`, hash: t.hash, createdAt: new Date().toISOString() });
    put(`auth/acl//tenants/t${i % 10}\u0000u${i}`, { path: `/tenants/t${i % 10}`, user: `u${i}`, role: 'TenantUser', propagate: true });
    last = { text: t.text, user: `u${i}`, tenant: `t${i % 10}` };
  }
  const backend = {
    scan: async () => entries.sort((a, b) => (a.key < b.key ? -1 : 1)),
    write: async (ops) => { for (const o of ops) if (o.value) entries.push({ key: o.key, value: Buffer.from(o.value) }); },
  };
  const identity = new IdentityStore();
  await identity.attach(backend, 3_600_000);
  const sessions = new Sessions(identity);
  const authn = new Authenticator(identity, undefined, sessions);
  const session = (await sessions.issue(last.user)).token;
  identity.stop();
  await identity.refresh();
  const vm = { kind: 'vm', id: 'vm-01a2349c8cc90000499f4e7a', tenant: last.tenant };
  const perCall = (header) => {
    const N = quick ? 50_000 : 300_000;
    for (let i = 0; i < 5000; i++) authn.authenticate(header).principal.assertCan('VM.Audit', vm);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < N; i++) {
      const o = authn.authenticate(header);
      if (!o.ok) throw new Error('bench: authentication failed');
      o.principal.assertCan('VM.Audit', vm);
    }
    return Number(process.hrtime.bigint() - t0) / N / 1000; // µs
  };
  const requestUs = 1e6 / getRps;
  const row = (us) => ({ usPerRequest: round(us), sharePercent: round((100 * us) / requestUs) });
  return { users: 1000, getRequestUs: round(requestUs), apiToken: row(perCall(`Bearer ${last.text}`)), session: row(perCall(`Bearer ${session}`)) };
}

/**
 * Two members on loopback (a cluster secret, fixed ports); VMs created on A; the same
 * GET-by-id paths at the same offered rate, to A directly and to B, which forwards them.
 */
async function measureForwarding() {
  const count = quick ? 200 : 1000;
  const secret = 'bench-cluster-secret-0123456789';
  const dirs = [mkdtempSync(join(tmpdir(), 'novacron-bench-fwd-a-')), mkdtempSync(join(tmpdir(), 'novacron-bench-fwd-b-'))];
  const ports = [await freePort(), await freePort()];
  const peerPorts = [await freePort(), await freePort()];
  // Not pinned: two members share this host's two cores as the scheduler sees fit (on
  // separate hosts each would have its own); the load generator is light at this rate.
  const member = (i, extra) => unpinned([process.execPath, join(root, 'bin', 'novacron.js'), 'daemon', '--driver', 'sim', '--listen', `127.0.0.1:${ports[i]}`, '--peer-listen', `127.0.0.1:${peerPorts[i]}`, '--data-dir', dirs[i], '--log-level', 'warn', '--cluster-secret', secret, ...extra]);
  const a = await startServer(member(0, []), /listening on (http:\/\/[^\s]+)/);
  const { caHash } = await (await fetch(`${a.url}/v1/cluster`, { headers: AUTH })).json();
  const b = await startServer(member(1, ['--join', `127.0.0.1:${peerPorts[0]}`, '--ca-hash', caHash]), /listening on (http:\/\/[^\s]+)/);
  try {
    const ids = await seed(a.url, count);
    // B forwards once its copy of the inventory places A's VMs.
    for (const deadline = Date.now() + 60_000; ; ) {
      const r = await fetch(`${b.url}/v1/cluster/vms?consistency=stale`, { headers: AUTH }).then((res) => res.json()).catch(() => undefined);
      if (r?.items?.length === count) break;
      if (Date.now() > deadline) throw new Error('member B never saw member A\'s VMs in its inventory');
      await new Promise((res) => setTimeout(res, 200));
    }
    const files = writePathFiles(ids);
    fixedRate(b.url, files.get, FORWARD_RPS, 1, FORWARD_CONNS, unpinned); // warm-up: connections between the members, JIT
    const direct = fixedRate(a.url, files.get, FORWARD_RPS, DURATION, FORWARD_CONNS, unpinned);
    const forwarded = fixedRate(b.url, files.get, FORWARD_RPS, DURATION, FORWARD_CONNS, unpinned);
    return { vms: count, offeredRps: FORWARD_RPS, connections: FORWARD_CONNS, direct, forwarded, addedP50Ms: round(forwarded.p50Ms - direct.p50Ms), addedP99Ms: round(forwarded.p99Ms - direct.p99Ms) };
  } finally {
    await b.stop();
    await a.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

async function freePort() {
  const { createServer } = await import('node:net');
  return new Promise((res) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

async function startServer([cmd, cmdArgs], readyPattern) {
  const proc = spawn(cmd, cmdArgs, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, NOVACRON_API_TOKEN: BENCH_TOKEN } });
  let err = '';
  const url = await new Promise((res, rej) => {
    proc.stderr.on('data', (d) => {
      err += d;
      const m = readyPattern.exec(err);
      if (m) res(m[1]);
    });
    proc.on('exit', (code) => rej(new Error(`${cmdArgs.join(' ')} exited ${code}: ${err}`)));
  });
  return {
    url,
    stop: () => new Promise((r) => {
      proc.on('exit', r);
      proc.kill('SIGTERM');
    }),
  };
}

async function seed(url, count) {
  const started = performance.now();
  const ids = [];
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      const res = await fetch(`${url}/v1/vms`, {
        method: 'POST',
        headers: { ...AUTH, 'content-type': 'application/json' },
        body: JSON.stringify({ name: `bench-${i}`, vcpus: 1 + (i % 8), memoryMiB: 512 * (1 + (i % 4)), disks: [{ name: 'root', sizeMiB: 10240, format: 'raw' }], nics: [{ name: 'eth0' }], labels: { app: `app-${i % 50}`, tier: i % 3 ? 'web' : 'db' }, tenant: `t${i % 10}` }),
      });
      if (res.status !== 201) throw new Error(`seed failed: ${res.status} ${await res.text()}`);
      ids.push((await res.json()).id);
    }
  };
  await Promise.all(Array.from({ length: 64 }, worker));
  ids.sort();
  console.log(`seeded ${count} VMs in ${((performance.now() - started) / 1000).toFixed(1)} s (durable writes, group commit)`);
  return ids;
}

function writePathFiles(ids) {
  const dir = mkdtempSync(join(tmpdir(), 'novacron-bench-paths-'));
  const get = join(dir, 'get.txt');
  const list = join(dir, 'list.txt');
  writeFileSync(get, ids.map((id) => `/v1/vms/${id}`).join('\n') + '\n');
  // List pages of 100 starting at random cursors, plus the first page.
  const pages = ['/v1/vms?limit=100'];
  for (let i = 0; i < 500; i++) pages.push(`/v1/vms?limit=100&cursor=${ids[Math.floor(Math.random() * (ids.length - 100))]}`);
  writeFileSync(list, pages.join('\n') + '\n');
  return { get, list };
}

async function measure(url, files) {
  // Warm-up (JIT, caches), then the measured runs: saturation (closed loop, wrk) and
  // latency at the target's offered rate (open loop, h2load at a fixed request rate).
  wrk(url, files.get, 1);
  return {
    get: wrk(url, files.get, DURATION),
    getAtTarget: repeatFixedRate(url, files.get, TARGETS.getRps, DURATION),
    list: wrk(url, files.list, DURATION),
  };
}

/**
 * Latency at a fixed offered rate, three times: these machines are shared, and a single
 * hypervisor stall of 10-20 ms lands hundreds of queued requests in the tail. Every
 * repetition is kept in the results; the verdict uses the median repetition by p99.
 */
function repeatFixedRate(url, pathsFile, rps, seconds) {
  const reps = Array.from({ length: quick ? 1 : 3 }, () => fixedRate(url, pathsFile, rps, seconds));
  const median = [...reps].sort((a, b) => a.p99Ms - b.p99Ms)[Math.floor(reps.length / 2)];
  return { ...median, repetitions: reps.map(({ rps: r, p50Ms, p99Ms, maxMs }) => ({ rps: r, p50Ms, p99Ms, maxMs })) };
}

function fixedRate(url, pathsFile, rps, seconds, conns = CONNS, place = (cmd) => pin(1, cmd)) {
  return fixedRateLoad(url, pathsFile, rps, seconds, conns, place);
}

function wrk(url, pathsFile, seconds) {
  const [cmd, cmdArgs] = pin(1, ['wrk', '-t1', `-c${CONNS}`, `-d${seconds}s`, '--latency', '-H', `Authorization: Bearer ${BENCH_TOKEN}`, '-s', join(here, 'wrk-report.lua'), url, '--', pathsFile]);
  const r = spawnSync(cmd, cmdArgs, { encoding: 'utf8' });
  const line = /WRK_JSON (\{.*\})/.exec(r.stdout);
  if (!line) throw new Error(`wrk failed: ${r.stderr}\n${r.stdout}`);
  const s = JSON.parse(line[1]);
  return {
    rps: Math.round(s.requests / (s.durationUs / 1e6)),
    p50Ms: s.p50Us / 1000,
    p90Ms: s.p90Us / 1000,
    p99Ms: s.p99Us / 1000,
    maxMs: s.maxUs / 1000,
    requests: s.requests,
    errors: s.errors,
  };
}

function round(x) {
  return Math.round(x * 100) / 100;
}

function printTable(r) {
  const rows = [];
  for (const [server, run] of Object.entries(r.runs)) {
    for (const [kind, m] of Object.entries(run)) rows.push([server, kind, m.rps, m.p50Ms, m.p99Ms, m.maxMs, m.errors]);
  }
  printRows(`bench/api: ${r.vms} VMs, ${r.connections} connections, ${r.durationS}s per run${r.pinned ? ', server on CPU 0, load generator on CPU 1' : ''}`, ['server', 'request', 'req/s', 'p50 ms', 'p99 ms', 'max ms', 'errors'], rows);
  console.log('(get, list: closed loop at saturation, wrk; getAtTarget: open loop at a fixed offered rate, h2load)');
  console.log(`\nGET by id: ${r.ratio.getRps}x node:http throughput (target >= ${r.targets.ratioVsNodeHttp}x); list: ${r.ratio.listRps}x; p99 at ${r.targets.getRps} req/s: ${r.ratio.getP99AtTarget}x lower than node:http`);
  const f = r.forwarding;
  console.log(`forwarding (2 members, ${f.offeredRps} req/s offered, ${f.connections} connections): GET by id p50 ${f.direct.p50Ms} ms direct, ${f.forwarded.p50Ms} ms through the other member: +${f.addedP50Ms} ms p50 (target <= ${r.targets.forwardAddedP50Ms} ms) ${r.verdict.forwarding ? 'PASS' : 'MISS'}; p99 +${f.addedP99Ms} ms`);
  console.log(`HTTPS (TLS 1.3, ECDSA P-256, keep-alive): GET by id ${r.runs.novacronHttps.get.rps} req/s = ${r.ratio.httpsGetRps}x plain HTTP (target >= ${r.targets.httpsVsHttp}x) ${r.verdict.https ? 'PASS' : 'MISS'}`);
  console.log(`authentication + authorization per GET by id (1,000 users): API token ${r.auth.apiToken.usPerRequest} µs = ${r.auth.apiToken.sharePercent}% of a request at saturation (target <= ${r.targets.authSharePercent}%) ${r.verdict.auth ? 'PASS' : 'MISS'}; session JWT ${r.auth.session.usPerRequest} µs = ${r.auth.session.sharePercent}%`);
  console.log(`targets: GET >= ${r.targets.getRps} req/s ${r.verdict.getRps ? 'PASS' : 'MISS'}, p99 <= ${r.targets.getP99Ms} ms at ${r.targets.getRps} req/s ${r.verdict.getP99 ? 'PASS' : 'MISS'}, ratio ${r.verdict.ratio ? 'PASS' : 'MISS'}, errors ${r.verdict.errorsFree ? 'none' : 'PRESENT'}`);
}
