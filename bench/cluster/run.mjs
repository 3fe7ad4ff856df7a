#!/usr/bin/env node
// bench/cluster: replicated writes, NovaCron's Raft (raft-rs on RocksDB) vs a real etcd
// cluster (Debian etcd-server, installed when missing), side by side in one run.
//
//   node bench/cluster/run.mjs [--duration 5] [--concurrency 1,16,128] [--quick] [--check] [--no-etcd]
//
// Both systems: 3 members on loopback, fsync on, 256-byte values, clients spread over
// every member (followers forward to the leader), HTTP/1.1 keep-alive from one Node
// load generator: NovaCron's `PUT /v1/kv/:key`, etcd's gRPC gateway `POST /v3/kv/put`.
// Then: failover (kill -9 of the leader under c=16 load → first acknowledged write),
// and one member alone at c=128; and linearizable reads on 16 connections while 128 write
// (target: read p99 <= 20 ms). Writes bench/results/cluster-<time>.json; --check
// exits 1 when a target is missed.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import { printTable, writeResults } from '../lib/report.mjs';
import { AUTH, BENCH_TOKEN, freePort } from '../lib/daemon.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '5' },
    concurrency: { type: 'string', default: '1,16,128' },
    quick: { type: 'boolean', default: false },
    check: { type: 'boolean', default: false },
    'no-etcd': { type: 'boolean', default: false },
  },
});
const quick = args.quick;
const DURATION_MS = (quick ? 1 : Number(args.duration)) * 1000;
const LEVELS = quick ? [1, 16] : args.concurrency.split(',').map(Number);
const VALUE = 'x'.repeat(256);
const TARGETS = { throughputVsEtcdAt128: 1.5, p99NoWorseThanEtcd: true, failoverMs: 1000, singleNodeWritesPerSec: 20_000, readP99UnderLoadMs: 20 };
/** The reads-under-load cell: linearizable reads on this many connections while c=128 writes. */
const READERS = 16;
const withEtcd = !args['no-etcd'];

const scratch = mkdtempSync(join(tmpdir(), 'novacron-bench-cluster-'));
const procs = new Set();
process.on('exit', () => {
  for (const p of procs) p.kill('SIGKILL');
  rmSync(scratch, { recursive: true, force: true });
});

const results = { bench: 'cluster', time: new Date().toISOString(), quick, durationMs: DURATION_MS, valueBytes: 256, targets: TARGETS, novacron: {}, etcd: {} };

if (withEtcd) ensureEtcd();

// ---- NovaCron ---------------------------------------------------------------------
{
  const nodes = await novacronCluster(3);
  results.novacron.three = await loadMatrix(nodes, novacronPut);
  results.novacron.reads = await readsUnderWrites(nodes, novacronPut, novacronRequest, novacronReadRequest);
  results.novacron.failover = await failover(nodes, novacronPut, () => novacronLeader(nodes));
  stopAll(nodes);
  const single = await novacronCluster(1);
  results.novacron.single = await load(single, novacronPut, 128);
  stopAll(single);
}

// ---- etcd -------------------------------------------------------------------------
if (withEtcd) {
  const nodes = await etcdCluster(3);
  results.etcd.three = await loadMatrix(nodes, etcdPut);
  results.etcd.reads = await readsUnderWrites(nodes, etcdPut, etcdRequest, etcdReadRequest);
  results.etcd.failover = await failover(nodes, etcdPut, () => etcdLeader(nodes));
  stopAll(nodes);
  const single = await etcdCluster(1);
  results.etcd.single = await load(single, etcdPut, 128);
  stopAll(single);
}

// ---- report -----------------------------------------------------------------------
const rows = [];
for (const c of LEVELS) {
  const n = results.novacron.three[c];
  const e = results.etcd.three?.[c];
  rows.push([`3 members, c=${c}`, n.writesPerSec, n.p50Ms, n.p99Ms, e?.writesPerSec ?? '-', e?.p50Ms ?? '-', e?.p99Ms ?? '-', e ? (n.writesPerSec / e.writesPerSec).toFixed(2) : '-']);
}
{
  const n = results.novacron.single;
  const e = results.etcd.single;
  rows.push(['1 member, c=128', n.writesPerSec, n.p50Ms, n.p99Ms, e?.writesPerSec ?? '-', e?.p50Ms ?? '-', e?.p99Ms ?? '-', e ? (n.writesPerSec / e.writesPerSec).toFixed(2) : '-']);
}
printTable('Replicated 256-byte writes (fsync on)', ['cell', 'novacron w/s', 'p50 ms', 'p99 ms', 'etcd w/s', 'p50 ms', 'p99 ms', 'ratio'], rows);
printTable(`Linearizable reads on ${READERS} connections while 128 connections write`, ['system', 'reads/s', 'read p50 ms', 'read p99 ms', 'writes/s', 'write p99 ms'], [
  ['novacron', results.novacron.reads.readsPerSec, results.novacron.reads.readP50Ms, results.novacron.reads.readP99Ms, results.novacron.reads.writesPerSec, results.novacron.reads.writeP99Ms],
  ...(results.etcd.reads ? [['etcd', results.etcd.reads.readsPerSec, results.etcd.reads.readP50Ms, results.etcd.reads.readP99Ms, results.etcd.reads.writesPerSec, results.etcd.reads.writeP99Ms]] : []),
]);
printTable('Failover: kill -9 of the leader under c=16 load → first acknowledged write', ['system', 'ms'], [
  ['novacron', results.novacron.failover.ms],
  ['etcd', results.etcd.failover?.ms ?? '-'],
]);

const top = Math.max(...LEVELS);
const verdicts = {};
if (withEtcd) {
  verdicts.throughputVsEtcd = results.novacron.three[top].writesPerSec / results.etcd.three[top].writesPerSec >= TARGETS.throughputVsEtcdAt128;
  verdicts.p99VsEtcd = results.novacron.three[top].p99Ms <= results.etcd.three[top].p99Ms;
}
verdicts.failover = results.novacron.failover.ms <= TARGETS.failoverMs;
verdicts.readP99UnderLoad = results.novacron.reads.readP99Ms <= TARGETS.readP99UnderLoadMs;
verdicts.singleNode = results.novacron.single.writesPerSec >= TARGETS.singleNodeWritesPerSec;
results.verdicts = verdicts;
console.log(`\ntargets (top concurrency ${top}): ${Object.entries(verdicts).map(([k, v]) => `${k} ${v ? 'PASS' : 'MISS'}`).join(', ')}`);
console.log(`results: ${writeResults(root, 'cluster', results)}`);
if (args.check && Object.values(verdicts).includes(false)) process.exitCode = 1;
process.exit();

// ---- load -------------------------------------------------------------------------

async function loadMatrix(nodes, put) {
  const out = {};
  for (const c of LEVELS) out[c] = await load(nodes, put, c);
  return out;
}

/**
 * `c` keep-alive connections spread over the members (autocannon, one instance per
 * member, run together), each writing unique keys for DURATION_MS. Percentiles are the
 * worst member's (autocannon reports per instance).
 */
async function load(nodes, put, c) {
  await Promise.all(nodes.map((n, i) => put(n, `warm-${i}`))); // connections + leader known
  const targets = nodes.slice(0, Math.min(c, nodes.length));
  const runs = await Promise.all(targets.map((node, i) => {
    const connections = Math.floor(c / targets.length) + (i < c % targets.length ? 1 : 0);
    let n = 0;
    return autocannon({
      url: node.url,
      connections,
      duration: DURATION_MS / 1000,
      requests: [{ setupRequest: (req) => (put === novacronPut ? novacronRequest : etcdRequest)(req, `k-${c}-${i}-${n++}`) }],
    });
  }));
  const ok = runs.reduce((s, r) => s + r['2xx'], 0);
  const errors = runs.reduce((s, r) => s + r.non2xx + r.errors + r.timeouts, 0);
  const seconds = Math.max(...runs.map((r) => r.duration));
  const r = {
    concurrency: c, writes: ok, errors, writesPerSec: Math.round(ok / seconds),
    p50Ms: Math.max(...runs.map((x) => x.latency.p50)), p99Ms: Math.max(...runs.map((x) => x.latency.p99)),
  };
  console.log(`  c=${c}: ${r.writesPerSec} w/s, p50 ${r.p50Ms} ms, p99 ${r.p99Ms} ms, ${errors} errors`);
  return r;
}

/**
 * Linearizable reads of 64 keys (READERS connections spread over the members) while 128
 * connections write unique keys, both for DURATION_MS: the read latency a client sees on
 * a busy cluster. Percentiles are the worst member's.
 */
async function readsUnderWrites(nodes, put, writeRequest, readRequest) {
  await Promise.all(Array.from({ length: 64 }, (_, i) => put(nodes[i % nodes.length], `r-${i}`)));
  const spread = (total, request) =>
    Promise.all(nodes.map((node, i) => {
      const connections = Math.floor(total / nodes.length) + (i < total % nodes.length ? 1 : 0);
      let n = 0;
      return autocannon({ url: node.url, connections, duration: DURATION_MS / 1000, requests: [{ setupRequest: (req) => request(req, i, n++) }] });
    }));
  const [writes, reads] = await Promise.all([
    spread(128, (req, i, n) => writeRequest(req, `rw-${i}-${n}`)),
    spread(READERS, (req, _i, n) => readRequest(req, `r-${n % 64}`)),
  ]);
  const sum = (runs, f) => runs.reduce((x, r) => x + f(r), 0);
  const seconds = Math.max(...[...writes, ...reads].map((r) => r.duration));
  const r = {
    readers: READERS, writers: 128,
    readsPerSec: Math.round(sum(reads, (x) => x['2xx']) / seconds), readErrors: sum(reads, (x) => x.non2xx + x.errors + x.timeouts),
    readP50Ms: Math.max(...reads.map((x) => x.latency.p50)), readP99Ms: Math.max(...reads.map((x) => x.latency.p99)),
    writesPerSec: Math.round(sum(writes, (x) => x['2xx']) / seconds), writeP99Ms: Math.max(...writes.map((x) => x.latency.p99)),
  };
  console.log(`  reads under write load: ${r.readsPerSec} r/s, p50 ${r.readP50Ms} ms, p99 ${r.readP99Ms} ms, ${r.readErrors} errors; writes ${r.writesPerSec} w/s`);
  return r;
}

async function failover(nodes, put, leaderOf) {
  const leader = await leaderOf();
  const rest = nodes.filter((n) => n !== leader);
  let killedAt = 0;
  let firstAck = 0;
  let running = true;
  const clients = Array.from({ length: 16 }, async (_, client) => {
    for (let i = 0; running; i++) {
      const startedAt = performance.now();
      const ok = await put(rest[client % rest.length], `f-${client}-${i}`).catch(() => false);
      // Only a write issued after the kill proves the survivors commit again.
      if (ok && killedAt && startedAt > killedAt && !firstAck) firstAck = performance.now();
    }
  });
  await sleep(1000);
  killedAt = performance.now();
  leader.proc.kill('SIGKILL');
  const deadline = performance.now() + 20_000;
  while (!firstAck && performance.now() < deadline) await sleep(5);
  running = false;
  await Promise.all(clients);
  const ms = firstAck ? round(firstAck - killedAt) : null;
  console.log(`  failover: ${ms ?? 'no write acknowledged within 20 s'} ms`);
  return { ms };
}

// ---- NovaCron cluster --------------------------------------------------------------

async function novacronCluster(n) {
  const nodes = [];
  const secret = 'bench-cluster-secret-0123456789';
  for (let i = 0; i < n; i++) {
    const port = await freePort();
    const peerPort = await freePort();
    const dir = join(scratch, `novacron-${Date.now()}-${i}`);
    const argv = [join(root, 'bin', 'novacron.js'), 'daemon', '--driver', 'sim', '--listen', `127.0.0.1:${port}`, '--peer-listen', `127.0.0.1:${peerPort}`, '--data-dir', dir, '--log-level', 'warn', '--cluster-secret', secret];
    // Members join on the first one's cluster port, pinning its CA.
    if (i > 0) argv.push('--join', `127.0.0.1:${nodes[0].peerPort}`, '--ca-hash', (await (await fetch(`${nodes[0].url}/v1/cluster`, { headers: AUTH })).json()).caHash);
    nodes.push(await startProc(process.execPath, argv, /listening on/, { port, peerPort, url: `http://127.0.0.1:${port}` }));
  }
  await until(async () => (await (await fetch(`${nodes[0].url}/v1/cluster`, { headers: AUTH })).json()).voters.length === n, 'all members to be voters');
  return nodes;
}

function novacronRequest(req, key) {
  return ({ ...req, method: 'PUT', path: `/v1/kv/${key}`, headers: { ...AUTH, 'content-type': 'application/json' }, body: `{"value":"${VALUE}"}` });
}
function novacronReadRequest(req, key) {
  return ({ ...req, method: 'GET', path: `/v1/kv/${key}`, headers: { ...AUTH } });
}
async function novacronPut(node, key) {
  const res = await fetch(`${node.url}/v1/kv/${key}`, { method: 'PUT', headers: { ...AUTH, 'content-type': 'application/json' }, body: `{"value":"${VALUE}"}` });
  await res.arrayBuffer();
  return res.status === 200;
}

async function novacronLeader(nodes) {
  for (;;) {
    const st = await (await fetch(`${nodes[0].url}/v1/cluster`, { headers: AUTH })).json();
    for (const n of nodes) {
      const s = await (await fetch(`${n.url}/v1/cluster`, { headers: AUTH })).json();
      if (s.role === 'leader' && s.id === st.leader) return n;
    }
    await sleep(50);
  }
}

// ---- etcd cluster ------------------------------------------------------------------

function ensureEtcd() {
  if (spawnSync('sh', ['-c', 'command -v etcd'], { stdio: 'ignore' }).status === 0) return;
  console.log('installing etcd-server (Debian) for the side-by-side run…');
  const r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', 'etcd-server'], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  if (r.status !== 0) throw new Error('could not install etcd-server; rerun with --no-etcd');
  // Debian starts a system etcd on 2379/2380; the bench uses its own ports, but stop it to keep the machine quiet.
  spawnSync('systemctl', ['disable', '--now', 'etcd'], { stdio: 'ignore' });
}

async function etcdCluster(n) {
  const members = [];
  for (let i = 0; i < n; i++) members.push({ name: `e${i}`, client: await freePort(), peer: await freePort() });
  const initial = members.map((m) => `${m.name}=http://127.0.0.1:${m.peer}`).join(',');
  const token = `bench-${Date.now()}`;
  const nodes = await Promise.all(members.map((m) =>
    startProc('etcd', [
      '--name', m.name, '--data-dir', join(scratch, `etcd-${token}-${m.name}`),
      '--listen-client-urls', `http://127.0.0.1:${m.client}`, '--advertise-client-urls', `http://127.0.0.1:${m.client}`,
      '--listen-peer-urls', `http://127.0.0.1:${m.peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${m.peer}`,
      '--initial-cluster', initial, '--initial-cluster-token', token, '--initial-cluster-state', 'new', '--log-level', 'error',
    ], null, { url: `http://127.0.0.1:${m.client}` }),
  ));
  await until(async () => (await etcdPut(nodes[0], 'ping')) === true, 'etcd to accept writes');
  return nodes;
}

function etcdRequest(req, key) {
  return ({ ...req, method: 'POST', path: '/v3/kv/put', body: JSON.stringify({ key: Buffer.from(key).toString('base64'), value: Buffer.from(VALUE).toString('base64') }) });
}
/** A linearizable range read (etcd's default). */
function etcdReadRequest(req, key) {
  return ({ ...req, method: 'POST', path: '/v3/kv/range', body: JSON.stringify({ key: Buffer.from(key).toString('base64') }) });
}
async function etcdPut(node, key) {
  const res = await fetch(`${node.url}/v3/kv/put`, { method: 'POST', body: JSON.stringify({ key: Buffer.from(key).toString('base64'), value: Buffer.from(VALUE).toString('base64') }) });
  await res.arrayBuffer();
  return res.status === 200;
}

async function etcdLeader(nodes) {
  for (;;) {
    for (const n of nodes) {
      const s = await (await fetch(`${n.url}/v3/maintenance/status`, { method: 'POST', body: '{}' })).json();
      if (s.leader && s.leader === s.header?.member_id) return n;
    }
    await sleep(50);
  }
}

// ---- plumbing ---------------------------------------------------------------------

function startProc(cmd, argv, ready, extra) {
  const proc = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, NOVACRON_API_TOKEN: BENCH_TOKEN } });
  procs.add(proc);
  let err = '';
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`${cmd} did not start: ${err}`)), 30_000);
    proc.stderr.on('data', (d) => {
      err += d;
      if (ready?.test(err)) {
        clearTimeout(timer);
        res({ proc, ...extra });
      }
    });
    proc.on('exit', (code) => {
      procs.delete(proc);
      rej(new Error(`${cmd} exited ${code}: ${err}`));
    });
    if (!ready) {
      clearTimeout(timer);
      res({ proc, ...extra }); // readiness is polled by the caller
    }
  });
}

function stopAll(nodes) {
  for (const n of nodes) n.proc.kill('SIGKILL');
}


async function until(cond, what, ms = 30_000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond().catch(() => false)) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function round(x) {
  return Math.round(x * 100) / 100;
}
