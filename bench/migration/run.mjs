#!/usr/bin/env node
// bench/migration: NovaCron live migration vs QEMU's native migration, same guest, same run.
//
//   node bench/migration/run.mjs [--memory 2048] [--working-set 512] [--rates 0,32,128,512]
//        [--links 125,1250,0] [--runs 3] [--modes novacron,plain,xbzrle,auto-converge,multifd,multifd-tls]
//        [--transport auto] [--model vary] [--disk-mib 0] [--timeout 90] [--quick] [--check]
//   (NovaCron migrates between the two members of one cluster, by member id; --transport
//    relay|direct pins the path its plan would otherwise choose — see MigrateRequest.transport.
//    Mode multifd-tls: QEMU's multifd over mutual TLS, QEMU's best encrypted mode, the
//    like-for-like baseline of NovaCron's encrypted streams)
//   (--model vary, the default, boots a new guest for each run with another content model
//    and write pattern — see VARIED_GUESTS; --model half|text|random|sparse|mixed keeps one)
//   (--disk-mib N gives NovaCron's guest a local N MiB qcow2 disk, mirrored during the
//    migration: the pause-before-switchover path)
//   (mode `link`, a diagnostic: NovaCron's native link between two bare QEMUs, no daemons —
//    TLS 1.3 as between members; mode `link-plain`: the same over plain TCP, the baseline
//    of what encryption costs: `tlsCost` per cell, target time and downtime within 10%)
//
// Per cell (guest dirty rate × link): each mode migrates the same kind of guest (RAM
// --memory MiB, --working-set MiB prefilled and re-dirtied at the rate) and we record:
// QEMU's downtime figure, stop→resume from QMP event timestamps, the longest gap between
// guest heartbeats as seen on the host (serial console arrivals), total time, bytes on the
// wire, and whether it converged within --timeout. The stall is the longest heartbeat gap
// less the 100 ms heartbeat period (the raw gap is kept as maxGapMs). NovaCron runs between two daemons
// through its transport (link cap = its token bucket); QEMU's modes run between two bare
// QEMUs over TCP (link cap = max-bandwidth). A link of 0 means unlimited.
// Targets (issue 4), per cell against QEMU's best mode: converges everywhere; wire bytes
// <= 0.6x; total time <= 0.7x; downtime <= QEMU's and <= 50 ms p99; stall <= 100 ms.
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { writeResults, printTable, pct } from '../lib/report.mjs';
import { startPair, call } from '../lib/daemon.mjs';
import { createCa, createCsr, signMember } from '../../dist/tls/pki.js';
import { QmpClient } from '../../dist/vm/qemu/qmp.js';
import { bareQemuArgs, GUEST, installGuest } from '../lib/vm.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const { values: a } = parseArgs({
  options: {
    memory: { type: 'string', default: '2048' }, 'working-set': { type: 'string', default: '512' }, rates: { type: 'string', default: '0,32,128,512' },
    links: { type: 'string', default: '125,1250,0' }, runs: { type: 'string', default: '3' }, modes: { type: 'string', default: 'novacron,plain,xbzrle,auto-converge' },
    transport: { type: 'string', default: 'auto' }, model: { type: 'string', default: 'vary' }, 'disk-mib': { type: 'string', default: '0' }, timeout: { type: 'string', default: '90' }, quick: { type: 'boolean', default: false }, check: { type: 'boolean', default: false },
  },
});
const Q = a.quick;
const MEMORY = Q ? 256 : Number(a.memory);
const WS = Q ? 32 : Number(a['working-set']);
const RATES = (Q ? '16' : a.rates).split(',').map(Number);
const LINKS = (Q ? '0' : a.links).split(',').map(Number);
const RUNS = Q ? 1 : Number(a.runs);
const MODES = (Q ? 'novacron,plain' : a.modes).split(',');
const DISK_MIB = Number(a['disk-mib']);
const TIMEOUT_MS = (Q ? 60 : Number(a.timeout)) * 1000;
const TARGETS = { wireRatio: 0.6, timeRatio: 0.7, downtimeP99Ms: 50, stallMs: 100, tlsCostRatio: 1.1 };
/** The test guest prints a heartbeat every 100 ms (scripts/guest/heartbeat.c). */
const HEARTBEAT_PERIOD_MS = 100;
/** NovaCron's native link between bare QEMUs: TLS (`link`) or plain TCP (`link-plain`). */
const isLink = (mode) => mode === 'link' || mode === 'link-plain';
/** QEMU modes whose destination takes multifd (set up before `migrate-incoming`). */
const isMultifd = (mode) => mode === 'multifd' || mode === 'multifd-tls' || isLink(mode);
const TLS_DOWNTIME_SLACK_MS = 3;

execFileSync('bash', [join(root, 'scripts', 'setup-qemu.sh')], { stdio: 'inherit' });
const guestDir = execFileSync('bash', [join(root, 'scripts', 'build-test-guest.sh')], { encoding: 'utf8' }).trim().split('\n').at(-1);
const kernel = join(guestDir, 'vmlinuz');
const initrd = join(guestDir, 'initrd.img');
const work = mkdtempSync(join(tmpdir(), 'novacron-bench-mig-'));
const results = { bench: 'migration', time: new Date().toISOString(), quick: Q, memoryMiB: MEMORY, workingSetMiB: WS, model: a.model, runs: RUNS, timeoutMs: TIMEOUT_MS, targets: TARGETS, cells: [] };

const daemons = [];
const bares = new Set();

// ---- summaries ---------------------------------------------------------------------------

function summarize(cell) {
  cell.summary = {};
  for (const [mode, runs] of Object.entries(cell.modes)) {
    const ok = runs.filter((r) => r.converged);
    const p = (f, q) => (ok.length ? pct(ok.map(f), q) : undefined);
    cell.summary[mode] = {
      runs: runs.length, converged: ok.length,
      ...(runs.some((r) => r.transport) ? { transports: [...new Set(runs.map((r) => r.transport))] } : {}),
      downtimeP50Ms: p((r) => r.downtimeMs, 0.5), downtimeMaxMs: p((r) => r.downtimeMs, 1),
      stopToResumeP50Ms: p((r) => r.stopToResumeMs, 0.5), stopToResumeP99Ms: p((r) => r.stopToResumeMs, 0.99), stallMaxMs: p((r) => r.stallMs, 1),
      totalP50Ms: p((r) => r.totalMs, 0.5), streamP50Ms: p((r) => r.streamMs, 0.5), wireMiBP50: p((r) => mib(r.wireBytes), 0.5),
    };
  }
  const nova = cell.summary.novacron;
  // What TLS costs the link: `link` against `link-plain`, same guest, same run.
  const { link: tls, 'link-plain': plain } = cell.summary;
  if (tls?.converged && plain?.converged) {
    const t = (cell.tlsCost = { timeRatio: round(tls.totalP50Ms / plain.totalP50Ms), stopToResumeRatio: round(tls.stopToResumeP50Ms / Math.max(1, plain.stopToResumeP50Ms)), stopToResumeDeltaMs: round(tls.stopToResumeP50Ms - plain.stopToResumeP50Ms) });
    // Stop→resume is a few ms: within 10% or within TLS_DOWNTIME_SLACK_MS (timer noise) of plain.
    cell.tlsVerdict = { time: t.timeRatio <= TARGETS.tlsCostRatio, stopToResume: t.stopToResumeRatio <= TARGETS.tlsCostRatio || t.stopToResumeDeltaMs <= TLS_DOWNTIME_SLACK_MS };
  }
  // `link` (NovaCron's link between bare QEMUs) is a diagnostic, not a QEMU mode.
  const qemuModes = Object.entries(cell.summary).filter(([m, s]) => m !== 'novacron' && !isLink(m) && s.converged > 0);
  if (!nova) return cell;
  // QEMU's best mode in this cell: the converging one with the shortest total time.
  const best = qemuModes.sort((x, y) => x[1].totalP50Ms - y[1].totalP50Ms)[0];
  cell.bestQemuMode = best?.[0] ?? 'none converged';
  cell.verdict = { converges: nova.converged === nova.runs, downtimeP99: nova.downtimeMaxMs !== undefined && nova.downtimeMaxMs <= TARGETS.downtimeP99Ms && (nova.stopToResumeP99Ms ?? Infinity) <= TARGETS.downtimeP99Ms, stall: nova.stallMaxMs !== undefined && nova.stallMaxMs <= TARGETS.stallMs };
  if (best && nova.converged) {
    const s = best[1];
    cell.ratios = { wire: round(nova.wireMiBP50 / s.wireMiBP50), time: round(nova.totalP50Ms / s.totalP50Ms) };
    cell.verdict.wire = cell.ratios.wire <= TARGETS.wireRatio;
    cell.verdict.time = cell.ratios.time <= TARGETS.timeRatio;
    // Both QEMU's own figure and the measured stop→resume (QMP event timestamps on both sides).
    cell.verdict.downtimeVsQemu = nova.downtimeMaxMs <= s.downtimeMaxMs && nova.stopToResumeP99Ms <= s.stopToResumeP99Ms;
  }
  return cell;
}

function mib(b) {
  return Math.round((b / 1048576) * 10) / 10;
}

function round(x) {
  return Math.round(x * 100) / 100;
}

// ---- heartbeats seen on the host -----------------------------------------------------------

/** Records when each "HB n" line arrives on a guest's serial console socket. */
class Heartbeats {
  beats = [];
  #socks = [];

  /** Follows a console socket (waits for it to appear). */
  async follow(path) {
    for (let i = 0; i < 2000 && !existsSync(path); i++) await sleep(5);
    const s = connect(path);
    this.#socks.push(s);
    let buf = '';
    s.on('data', (d) => {
      const t = performance.now();
      buf += d.toString('latin1');
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const m = /^HB (\d+) /.exec(buf.slice(0, nl));
        if (m) this.beats.push({ n: Number(m[1]), t });
        buf = buf.slice(nl + 1);
      }
    });
    s.on('error', () => undefined);
    await new Promise((r) => s.once('connect', r));
  }

  /**
   * The guest's longest stall from `t0` on: the longest host-side gap between consecutive
   * heartbeats less the heartbeat period (a guest paused for D ms right after a beat
   * shows a gap of period + D). Both figures are kept.
   */
  stall(t0) {
    const gap = this.maxGap(t0);
    return { stallMs: round(Math.max(0, gap - HEARTBEAT_PERIOD_MS)), maxGapMs: gap };
  }

  /** Longest host-side gap between consecutive heartbeats from `t0` on. */
  maxGap(t0) {
    const seen = new Map();
    for (const b of this.beats) if (b.t >= t0 && !seen.has(b.n)) seen.set(b.n, b.t);
    const ts = [...seen.entries()].sort((x, y) => x[0] - y[0]).map(([, t]) => t);
    let gap = 0;
    for (let i = 1; i < ts.length; i++) gap = Math.max(gap, ts[i] - ts[i - 1]);
    return round(gap);
  }

  close() {
    for (const s of this.#socks) s.destroy();
  }
}

// ---- NovaCron ----------------------------------------------------------------------------


async function untilPrefilled(serialPath) {
  const { readFileSync } = await import('node:fs');
  const deadline = Date.now() + 600_000;
  while (!(existsSync(serialPath) && /PREFILLED/.test(readFileSync(serialPath, 'latin1')))) {
    if (Date.now() > deadline) throw new Error(`no PREFILLED in ${serialPath}`);
    await sleep(200);
  }
  await sleep(1000); // let the dirtier reach its rate
}

async function novaGuest(cmdline, name) {
  const [A] = daemons;
  const vm = await call(A.url, 'POST', '/v1/vms', { name, vcpus: 1, memoryMiB: MEMORY, boot: { type: 'kernel', kernel: GUEST.kernel, initrd: GUEST.initrd, cmdline }, ...(DISK_MIB ? { disks: [{ name: 'data', sizeMiB: DISK_MIB, format: 'qcow2' }] } : {}) });
  const op = await call(A.url, 'POST', `/v1/vms/${vm.id}/start`);
  for (;;) {
    const o = await call(A.url, 'GET', `/v1/operations/${op.id}`);
    if (o.state === 'succeeded') break;
    if (o.state === 'failed') throw new Error(`start failed: ${JSON.stringify(o.error)}`);
    await sleep(50);
  }
  await untilPrefilled(join(A.dataDir, 'vms', vm.id, 'serial.log'));
  const g = { id: vm.id, at: 0 };
  g.remove = async () => {
    const d = daemons[g.at];
    await call(d.url, 'DELETE', `/v1/vms/${g.id}?force=true`);
  };
  return g;
}

async function novaMigrate(g, link) {
  const src = daemons[g.at];
  const dst = daemons[1 - g.at];
  const hb = new Heartbeats();
  await hb.follow(join(src.dataDir, 'vms', g.id, 'console.sock'));
  const t0 = performance.now();
  const m = await call(src.url, 'POST', `/v1/vms/${g.id}/migrate`, { target: String(dst.id), force: true, maxDowntimeMs: 50, transport: a.transport, ...(link ? { bandwidthMBps: link } : {}) });
  void hb.follow(join(dst.dataDir, 'vms', g.id, 'console.sock'));
  let rec;
  let cancelled = false;
  let throttlePercent = 0; // the highest seen: QEMU lifts the throttle once it completes
  for (;;) {
    rec = await call(src.url, 'GET', `/v1/migrations/${m.id}`);
    throttlePercent = Math.max(throttlePercent, rec.progress.throttlePercent ?? 0);
    if (rec.state !== 'running') break;
    if (!cancelled && performance.now() - t0 > TIMEOUT_MS) {
      cancelled = true;
      await call(src.url, 'DELETE', `/v1/migrations/${m.id}`).catch(() => undefined);
    }
    await sleep(20);
  }
  await sleep(1500); // heartbeats after the switchover
  const { stallMs, maxGapMs } = hb.stall(t0);
  hb.close();
  if (rec.state !== 'completed') {
    if (!cancelled) throw new Error(`NovaCron migration ${rec.state}: ${JSON.stringify(rec.error)}`);
    return { converged: false, transport: rec.transport, totalMs: round(performance.now() - t0), wireBytes: rec.progress.bytesWire, stallMs, maxGapMs, throttlePercent };
  }
  g.at = 1 - g.at;
  return {
    converged: true,
    transport: rec.transport,
    downtimeMs: rec.downtimeMs.qemu,
    stopToResumeMs: rec.downtimeMs.measured,
    stallMs,
    maxGapMs,
    totalMs: rec.totalMs,
    streamMs: rec.timings?.streamMs,
    timings: rec.timings,
    wireBytes: rec.progress.bytesWire,
    rawBytes: rec.progress.bytesRaw,
    rounds: rec.progress.rounds,
    dirtyBytesPerSec: rec.progress.dirtyBytesPerSec,
    throttlePercent,
    predictedTotalMs: round(rec.prediction.totalMs),
    // What the plan weighed: each path's predicted total and raw throughput (calibration).
    plan: { transport: rec.prediction.transport, pathRawMBps: round(rec.prediction.inputs.pathRawBytesPerSec / 1e6), firstRatio: round(rec.prediction.inputs.firstRatio), alternatives: rec.prediction.alternatives },
  };
}

// ---- QEMU native -------------------------------------------------------------------------

let tlsDirs;
/** Directories of QEMU x509 credentials for multifd-tls: a CA and two member certificates (made once). */
async function benchTlsDirs() {
  if (tlsDirs) return tlsDirs;
  const { writeFileSync, mkdirSync } = await import('node:fs');
  const ca = await createCa('bench');
  const dirs = { server: join(work, 'tls-server'), client: join(work, 'tls-client') };
  for (const [i, [end, dir]] of Object.entries(dirs).entries()) {
    const { keyPem, csrPem } = await createCsr(i + 1);
    const certPem = await signMember(ca, csrPem, i + 1, ['127.0.0.1']);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    writeFileSync(join(dir, 'ca-cert.pem'), ca.certPem);
    writeFileSync(join(dir, `${end}-cert.pem`), certPem);
    writeFileSync(join(dir, `${end}-key.pem`), keyPem, { mode: 0o600 });
  }
  return (tlsDirs = dirs);
}

let nextPort = 47000 + Math.floor(Math.random() * 1000);

/** A bare QEMU with the driver's machine, devices and guest; optionally waiting for a migration. */
/** A bare QEMU guest; a migration's destination (`incomingPort`) takes its source's `id` (the machine UUID multifd checks). */
async function bareQemu(name, cmdline, incomingPort, mode, id = `vm-bench-${name}`) {
  const dir = join(work, `bare-${name}`);
  execFileSync('mkdir', ['-p', dir]);
  const qmpSock = join(dir, 'qmp.sock');
  const console = join(dir, 'console.sock');
  // The driver's own command line for the same VM spec (unpaused: no daemon resumes it).
  const args = bareQemuArgs(name, { vcpus: 1, memoryMiB: MEMORY, boot: { type: 'kernel', kernel: GUEST.kernel, initrd: GUEST.initrd, cmdline } }, { accel: 'tcg', dir, kernel, initrd, id });
  rmSync(join(dir, 'serial.log'), { force: true }); // the driver's serial log appends
  if (incomingPort) args.push('-incoming', isMultifd(mode) ? 'defer' : `tcp:127.0.0.1:${incomingPort}`);
  const proc = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', openSync(join(dir, 'stderr.log'), 'w')] });
  const g = { id, dir, console, serial: join(dir, 'serial.log'), proc, kill: () => { proc.kill('SIGKILL'); bares.delete(g); } };
  bares.add(g);
  for (let i = 0; i < 2000 && !existsSync(qmpSock); i++) await sleep(5);
  g.qmp = await QmpClient.connect(qmpSock, 5000);
  g.events = [];
  g.qmp.on('event', (ev) => g.events.push(ev));
  return g;
}

async function bareGuest(cmdline, name) {
  const g = await bareQemu(name, cmdline);
  await untilPrefilled(g.serial);
  return g;
}

const evTime = (ev) => ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000;

async function bareMigrate(src, mode, link, name, cmdline) {
  const port = nextPort++;
  // Total time counts from starting the destination, as NovaCron's does.
  const tStart = performance.now();
  const dst = await bareQemu(name, cmdline, port, mode, src.id);
  const hb = new Heartbeats();
  await hb.follow(src.console);
  await hb.follow(dst.console);
  const multifd = isMultifd(mode);
  const caps = [{ capability: 'xbzrle', state: mode === 'xbzrle' }, { capability: 'auto-converge', state: mode === 'auto-converge' }, { capability: 'multifd', state: multifd }];
  await src.qmp.execute('migrate-set-capabilities', { capabilities: caps });
  let uri = `tcp:127.0.0.1:${port}`;
  let links;
  if (multifd) {
    // Both ends must agree on multifd before the stream starts.
    await dst.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'multifd', state: true }] });
    await dst.qmp.execute('migrate-set-parameters', { 'multifd-channels': 2 });
    await src.qmp.execute('migrate-set-parameters', { 'multifd-channels': 2 });
    if (mode === 'multifd-tls') {
      // Mutual TLS with member-like certificates, as NovaCron's direct streams use.
      const creds = await benchTlsDirs();
      // The source was an earlier round's destination: its server credentials make way.
      await src.qmp.execute('object-del', { id: 'tls0' }).catch(() => undefined);
      await dst.qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls0', endpoint: 'server', dir: creds.server, 'verify-peer': true });
      await src.qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls0', endpoint: 'client', dir: creds.client, 'verify-peer': true });
      await dst.qmp.execute('migrate-set-parameters', { 'tls-creds': 'tls0' });
      await src.qmp.execute('migrate-set-parameters', { 'tls-creds': 'tls0', 'tls-hostname': '127.0.0.1' });
    }
    if (isLink(mode)) {
      // Diagnostic: NovaCron's native data link between two bare QEMUs, without daemons.
      links = await nativeLinks(dst, link, mode === 'link-plain');
      uri = `unix:${links.sourceSock}`;
    } else await dst.qmp.execute('migrate-incoming', { uri });
  }
  // Only multifd-tls encrypts (a source that took a multifd-tls stream keeps its credentials).
  if (mode !== 'multifd-tls') await src.qmp.execute('migrate-set-parameters', { 'tls-creds': '', 'tls-hostname': '' });
  // xbzrle cache: the same share of RAM NovaCron's codec keeps (25%, <= 256 MiB).
  await src.qmp.execute('migrate-set-parameters', { 'downtime-limit': 50, 'max-bandwidth': link ? link * 1e6 : 2 ** 40, 'xbzrle-cache-size': Math.min(MEMORY * 1048576 * 0.25, 256 << 20) });
  const t0 = performance.now();
  const cpu0 = linkCpuMs();
  await src.qmp.execute('migrate', { uri });
  let info;
  let cancelled = false;
  for (;;) {
    info = await src.qmp.execute('query-migrate');
    if (info.status === 'completed' || info.status === 'failed' || info.status === 'cancelled') break;
    if (!cancelled && performance.now() - t0 > TIMEOUT_MS) {
      cancelled = true;
      await src.qmp.execute('migrate_cancel');
    }
    await sleep(20);
  }
  const endedAt = performance.now();
  const totalMs = round(endedAt - t0);
  const linkWire = links?.source.stats().wireBytes;
  const linkCpu = links ? round(linkCpuMs() - cpu0) : undefined;
  if (links) {
    // QEMU's source is done once it has handed everything to the link; the destination
    // resumes after the link delivered it (the daemon waits for that confirmation too).
    for (let i = 0; i < 1000 && !dst.events.some((e) => e.event === 'RESUME') && info.status === 'completed'; i++) await sleep(5);
    links.close();
  }
  await sleep(1500);
  const { stallMs, maxGapMs } = hb.stall(t0);
  hb.close();
  if (info.status !== 'completed') {
    dst.kill();
    if (!cancelled) throw new Error(`QEMU ${mode} migration ${info.status}: ${info['error-desc']}; destination QEMU said: ${readFileSync(join(dst.dir, 'stderr.log'), 'utf8').trim().slice(-600) || '(nothing)'}`);
    // The guest keeps running on the source; it stays the source for the next run.
    if (!(await src.qmp.execute('query-status')).running) await src.qmp.execute('cont');
    return { guest: src, result: { converged: false, totalMs, wireBytes: info.ram?.transferred ?? 0, stallMs, maxGapMs } };
  }
  const stop = src.events.filter((e) => e.event === 'STOP').at(-1);
  const resume = dst.events.filter((e) => e.event === 'RESUME').at(-1);
  src.kill();
  return {
    guest: dst,
    result: {
      converged: true,
      downtimeMs: info.downtime,
      stopToResumeMs: stop && resume ? round(evTime(resume) - evTime(stop)) : undefined,
      stallMs,
      maxGapMs,
      totalMs: round(endedAt - tStart),
      streamMs: info['total-time'],
      wireBytes: linkWire ?? info.ram.transferred,
      ...(linkCpu !== undefined ? { linkCpuMs: linkCpu } : {}),
      rounds: info.ram['dirty-sync-count'],
      dirtyBytesPerSec: (info.ram['dirty-pages-rate'] ?? 0) * 4096,
      throttlePercent: info['cpu-throttle-percentage'] ?? 0,
    },
  };
}

/**
 * CPU time (user + system, ms) of this process: in `link` mode, NovaCron's link threads
 * (both ends) plus this script's polling loop, which is small.
 */
function linkCpuMs() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** Source and destination ends of NovaCron's data link, in this process, for `dst` (over plain TCP with `plain`). */
async function nativeLinks(dst, link, plain) {
  const { SourceLink, DestLink, LinkBucket } = await import('../../dist/native/miglink.js');
  const { DEFAULT_SHARDS } = await import('../../dist/native/memdelta.js');
  const { channelWindow } = await import('../../dist/migration/wire.js');
  const { randomBytes, X509Certificate } = await import('node:crypto');
  const { createCa, createCsr, signMember } = await import('../../dist/tls/pki.js');
  const token = randomBytes(24);
  // The link is TLS 1.3 as between members: the destination serves a member certificate, the source pins it.
  const { csrPem, keyPem } = await createCsr(2);
  const certPem = await signMember(await createCa('bench'), csrPem, 2, ['127.0.0.1']);
  const certSha256 = new X509Certificate(certPem).fingerprint256;
  const qemuSocket = join(dst.dir, 'in.sock');
  await dst.qmp.execute('migrate-incoming', { uri: `unix:${qemuSocket}` });
  const capacityPages = Math.min((MEMORY * 256) / 4, 65536);
  const fail = (err) => console.error(`link: ${err.code}: ${err.message}`);
  const dest = new DestLink({ bindHost: '127.0.0.1', qemuSocket, token, tls: plain ? null : { certPem, keyPem }, capacityPages, shards: DEFAULT_SHARDS }, fail);
  const sourceSock = join(dst.dir, 'out.sock');
  const source = new SourceLink(
    { socketPath: sourceSock, host: '127.0.0.1', port: dest.port, certSha256: plain ? null : certSha256, token, capacityPages, shards: DEFAULT_SHARDS, window: channelWindow(link || undefined), ...(link ? { bucket: new LinkBucket(link * 1e6) } : {}) },
    fail,
  );
  return { source, dest, sourceSock, close: () => (source.close(), dest.close()) };
}

/**
 * The guests `--model vary` cycles through (content model × write pattern), each run and
 * rate its own, with its own seed; `--model M` keeps one guest of model M (uniform writes).
 */
const VARIED_GUESTS = [
  { model: 'half', pattern: 'uniform' },
  { model: 'mixed', pattern: 'hot' },
  { model: 'text', pattern: 'seq' },
  { model: 'random', pattern: 'hot' },
  { model: 'sparse', pattern: 'uniform' },
  { model: 'mixed', pattern: 'seq' },
];
function guestOf(run, rateIndex) {
  if (a.model !== 'vary') return { model: a.model, pattern: 'uniform', seed: 1, key: `${a.model}/uniform/1` };
  const g = VARIED_GUESTS[(run + rateIndex * 2) % VARIED_GUESTS.length];
  const seed = 1 + run + rateIndex * 97;
  return { ...g, seed, key: `${g.model}/${g.pattern}/${seed}` };
}

async function main() {
  try {
    daemons.push(...(await startPair(root, [join(work, 'a'), join(work, 'b')])));
    for (const d of daemons) await installGuest(d.url, { kernel, initrd });
    for (const [ri, rate] of RATES.entries()) {
      const cells = LINKS.map((link) => ({ dirtyMiBps: rate, linkMBps: link || 'unlimited', guests: [], modes: {} }));
      let nova;
      let bare;
      let guest;
      for (let run = 0; run < RUNS; run++) {
        // Every mode of a run migrates the same kind of guest; with --model vary each run
        // boots a new one (content model, write pattern, seed), so no tuning fits one guest.
        const want = guestOf(run, ri);
        if (!guest || guest.key !== want.key) {
          if (nova) await nova.remove();
          bare?.kill();
          guest = want;
          const cmdline = `console=ttyS0 quiet panic=-1 nc.dirty_mib=${WS} nc.rate=${rate} nc.model=${guest.model} nc.pattern=${guest.pattern} nc.seed=${guest.seed} nc.prefill=1`;
          guest.cmdline = cmdline;
          // One guest per system; migrations go back and forth.
          nova = MODES.includes('novacron') ? await novaGuest(cmdline, `bench-r${rate}-g${run}`) : undefined;
          bare = MODES.some((m) => m !== 'novacron') ? await bareGuest(cmdline, `r${rate}-g${run}-0`) : undefined;
        }
        for (const [li, link] of LINKS.entries()) {
          const cell = cells[li];
          cell.guests.push(guest.key);
          for (const mode of MODES) {
            let r;
            if (mode === 'novacron') r = await novaMigrate(nova, link);
            else {
              const out = await bareMigrate(bare, mode, link, `r${rate}-l${link}-${run}-${mode}`, guest.cmdline);
              bare = out.guest;
              r = out.result;
            }
            (cell.modes[mode] ??= []).push({ ...r, guest: guest.key });
            console.error(`rate ${rate} MiB/s, link ${link || '∞'}, guest ${guest.key}: ${mode}${r.transport ? ` (${r.transport})` : ''} run ${run + 1}: ${r.converged ? `downtime ${r.downtimeMs} ms (stop→resume ${r.stopToResumeMs}), stall ${r.stallMs} ms, total ${r.totalMs} ms, wire ${mib(r.wireBytes)} MiB` : `did not converge in ${TIMEOUT_MS / 1000} s`}`);
          }
        }
      }
      for (const cell of cells) results.cells.push(summarize(cell));
      if (nova) await nova.remove();
      bare?.kill();
    }
    results.pass = results.cells.every((c) => Object.values({ ...c.verdict, ...c.tlsVerdict }).every(Boolean));
    const out = writeResults(root, 'migration', results);
    const rows = [];
    for (const c of results.cells) {
      for (const [mode, s] of Object.entries(c.summary)) {
        rows.push([`${c.dirtyMiBps} MiB/s, ${c.linkMBps === 'unlimited' ? '∞' : `${c.linkMBps} MB/s`}`, mode, `${s.converged}/${s.runs}`, s.downtimeP50Ms ?? '-', s.downtimeMaxMs ?? '-', s.stopToResumeP50Ms ?? '-', s.stopToResumeP99Ms ?? '-', s.stallMaxMs ?? '-', s.totalP50Ms ?? '-', s.streamP50Ms ?? '-', s.wireMiBP50 ?? '-']);
      }
    }
    printTable(`bench/migration (${MEMORY} MiB guest, ${WS} MiB working set, model ${a.model}, ${RUNS} runs per cell)`, ['cell', 'mode', 'conv', 'down p50', 'down max', 'stop→res p50', 'stop→res p99', 'stall max', 'total p50', 'stream p50', 'wire MiB p50'], rows);
    for (const c of results.cells) console.log(`${c.dirtyMiBps} MiB/s, link ${c.linkMBps}: vs ${c.bestQemuMode ?? '-'} — ${Object.entries(c.verdict ?? {}).map(([k, v]) => `${k} ${v ? 'PASS' : 'MISS'}`).join(', ')}${c.ratios ? ` (wire ${c.ratios.wire}x, time ${c.ratios.time}x)` : ''}`);
    for (const c of results.cells.filter((x) => x.tlsCost)) {
      console.log(`${c.dirtyMiBps} MiB/s, link ${c.linkMBps}: TLS vs plain link — time ${c.tlsCost.timeRatio}x ${c.tlsVerdict.time ? 'PASS' : 'MISS'}, stop→resume ${c.tlsCost.stopToResumeRatio}x (${c.tlsCost.stopToResumeDeltaMs >= 0 ? '+' : ''}${c.tlsCost.stopToResumeDeltaMs} ms) ${c.tlsVerdict.stopToResume ? 'PASS' : 'MISS'}`);
    }
    console.log(`results: ${out}`);
    if (a.check && !results.pass) process.exitCode = 1;
  } finally {
    for (const b of bares) b.kill();
    for (const d of daemons) await d.stop();
    try {
      execFileSync('pkill', ['-9', '-f', work]);
    } catch {
      /* nothing left */
    }
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
