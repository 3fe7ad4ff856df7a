/**
 * QEMU's half of a NovaCron live migration, over QMP. QEMU tracks dirty pages and saves
 * or loads device state; its multifd stream goes to (and comes from) NovaCron's relay on
 * a unix socket, or — a direct migration — straight to the destination QEMU over TCP with
 * mutual TLS (QEMU's tls-creds-x509 with the members' cluster certificates, and an
 * authz-simple rule on the destination admitting only the source member's). Both ends use
 * the same capabilities: multifd without QEMU-side compression, zero-page detection in
 * multifd.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DriverError, type DirectIncoming, type LiveMigration, type MigrationProgress, type MigrationStatus, type OutgoingParams, type StreamListener, type StreamTls } from '../driver.js';
import type { VmRecord } from '../record.js';
import type { QmpClient, QmpEvent } from './qmp.js';
import { QemuStorageMirror } from './storage-mirror.js';

/** Oldest QEMU whose multifd RAM packet layout NovaCron's data link (crates/miglink) parses. */
export const MIN_QEMU = { major: 9, minor: 0 };

export function supportsQemu(v: { major: number; minor: number }): boolean {
  return v.major > MIN_QEMU.major || (v.major === MIN_QEMU.major && v.minor >= MIN_QEMU.minor);
}

export interface MigrationHost {
  vmDir(vmId: string): string;
  /** Starts the VM's QEMU with `-incoming defer`, running the guest once it arrives. */
  spawnIncoming(vm: VmRecord): Promise<Record<string, unknown>>;
  instance(vmId: string): Promise<{ qmp: QmpClient; pid: number; exited: Promise<void>; stoppedAt(): number | undefined; resumedAt(): number | undefined }>;
  stop(vmId: string): Promise<void>;
}

interface QueryMigrate {
  status?: string;
  ram?: { transferred: number; remaining: number; total: number; 'dirty-pages-rate'?: number; 'dirty-sync-count'?: number; 'page-size'?: number };
  'expected-downtime'?: number;
  downtime?: number;
  'total-time'?: number;
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
}

/** Effectively unlimited: QEMU's default cap is 128 MiB/s; NovaCron's relay does the capping. */
const NO_CAP = 2 ** 40;
/** QEMU object ids of a direct migration's TLS credentials and the destination's admission rule. */
const TLS_CREDS = 'nc-migration-tls';
const TLS_AUTHZ = 'nc-migration-authz';

export class QemuLiveMigration implements LiveMigration {
  #host: MigrationHost;
  readonly storage: QemuStorageMirror;

  constructor(host: MigrationHost) {
    this.#host = host;
    this.storage = new QemuStorageMirror(host);
  }

  async unsupported(vmId: string): Promise<string | undefined> {
    const { qmp } = await this.#host.instance(vmId);
    const v = qmp.version?.qemu;
    if (!v) return 'QEMU did not report its version';
    if (!supportsQemu(v)) return `QEMU ${v.major}.${v.minor} uses a multifd packet layout NovaCron's transport does not parse (needs QEMU ≥ ${MIN_QEMU.major}.${MIN_QEMU.minor})`;
    return undefined;
  }

  readonly direct = true;

  async prepareIncoming(vm: VmRecord, channels: number, direct?: DirectIncoming): Promise<{ listen: StreamListener; runtime: Record<string, unknown> }> {
    const runtime = await this.#host.spawnIncoming(vm);
    try {
      const { qmp } = await this.#host.instance(vm.id);
      await setCapabilities(qmp, { multifd: true, events: true });
      await qmp.execute('migrate-set-parameters', { 'multifd-channels': channels, 'multifd-compression': 'none' });
      if (direct) {
        await addTlsCreds(qmp, this.#host.vmDir(vm.id), 'server', direct.tls);
        await qmp.execute('object-add', { 'qom-type': 'authz-simple', id: TLS_AUTHZ, identity: direct.peerIdentity });
        await qmp.execute('migrate-set-parameters', { 'tls-creds': TLS_CREDS, 'tls-authz': TLS_AUTHZ });
        return { listen: { kind: 'direct', port: await listenTcp(qmp, direct.host, direct.ports) }, runtime };
      }
      const socketPath = join(this.#host.vmDir(vm.id), 'migrate-in.sock');
      rmSync(socketPath, { force: true });
      await qmp.execute('migrate-incoming', { uri: `unix:${socketPath}` });
      return { listen: { kind: 'relay', socketPath }, runtime };
    } catch (err) {
      await this.#host.stop(vm.id).catch(() => undefined);
      throw new DriverError('migrate-incoming', (err as Error).message);
    }
  }

  /**
   * Waits for the guest to resume here, or for the incoming migration to fail. Driven by
   * QMP events: polling query-migrate often would compete with the incoming stream for
   * QEMU's main loop (it slowed migrations down 2-3x here); a slow poll stays as a backstop.
   */
  async waitIncoming(vmId: string, timeoutMs: number): Promise<{ resumedAt: number }> {
    const inst = await this.#host.instance(vmId);
    const failed = (why: string) => new DriverError('migrate-incoming', why);
    const stderr = () => stderrTail(this.#host.vmDir(vmId));
    return await new Promise<{ resumedAt: number }>((resolve, reject) => {
      let done = false;
      const finish = (settle: () => void) => {
        if (done) return;
        done = true;
        clearInterval(poll);
        clearTimeout(deadline);
        inst.qmp.off('event', onEvent);
        settle();
      };
      const resumed = () => {
        const at = inst.resumedAt();
        if (at !== undefined) finish(() => resolve({ resumedAt: at }));
      };
      // The driver's own listener (registered first) records the RESUME time.
      const onEvent = (ev: QmpEvent) => {
        if (ev.event === 'RESUME') queueMicrotask(resumed);
        else if (ev.event === 'MIGRATION' && ev.data?.status === 'failed') finish(() => reject(failed(`incoming migration failed: ${stderr()}`)));
      };
      inst.qmp.on('event', onEvent);
      void inst.exited.then(() => finish(() => reject(failed(`destination QEMU exited: ${stderr()}`))));
      const poll = setInterval(() => {
        resumed();
        void inst.qmp
          .execute<QueryMigrate>('query-migrate')
          .then((info) => info.status === 'failed' && finish(() => reject(failed(`incoming migration failed: ${info['error-desc'] ?? stderr()}`))))
          .catch(() => undefined);
      }, 500);
      const deadline = setTimeout(() => finish(() => reject(failed(`guest did not resume within ${timeoutMs} ms`))), timeoutMs);
      resumed();
    });
  }

  async startOutgoing(vmId: string, p: OutgoingParams): Promise<void> {
    const { qmp } = await this.#host.instance(vmId);
    const to = p.to;
    if (to.kind === 'direct') await addTlsCreds(qmp, this.#host.vmDir(vmId), 'client', to.tls);
    await setCapabilities(qmp, { multifd: true, events: true, 'auto-converge': p.autoConverge, 'pause-before-switchover': p.pauseBeforeSwitchover });
    await qmp.execute('migrate-set-parameters', {
      'multifd-channels': p.channels,
      'multifd-compression': 'none',
      'downtime-limit': p.downtimeLimitMs,
      'max-bandwidth': to.kind === 'direct' && p.maxBytesPerSec ? Math.round(p.maxBytesPerSec) : NO_CAP,
      // A relayed stream is plain on the unix socket (the relay's link is TLS); an earlier
      // direct attempt's settings must not stay.
      'tls-creds': to.kind === 'direct' ? TLS_CREDS : '',
      'tls-hostname': to.kind === 'direct' ? to.hostname : '',
      // Gentle steps: throttle only as much as convergence needs.
      'cpu-throttle-initial': 10,
      'cpu-throttle-increment': 10,
      'cpu-throttle-tailslow': true,
      'max-cpu-throttle': p.maxThrottlePercent,
    });
    await qmp.execute('migrate', { uri: to.kind === 'direct' ? `tcp:${uriHost(to.host)}:${to.port}` : `unix:${to.socketPath}` });
  }

  async progress(vmId: string): Promise<MigrationProgress> {
    const { qmp } = await this.#host.instance(vmId);
    migrationWatch(qmp).changed = false; // this read sees every change before it
    return toProgress(await qmp.execute<QueryMigrate>('query-migrate'));
  }

  async statusChange(vmId: string, maxMs: number): Promise<void> {
    const { qmp } = await this.#host.instance(vmId);
    const w = migrationWatch(qmp);
    if (w.changed) return; // an event came after the last progress() read
    await qmp.nextEvent(['MIGRATION'], maxMs);
  }

  async cancelOutgoing(vmId: string): Promise<void> {
    const { qmp } = await this.#host.instance(vmId);
    await qmp.execute('migrate_cancel');
    // Wait until QEMU is out of the migration (the guest keeps running throughout).
    for (let i = 0; i < 500; i++) {
      const s = (await qmp.execute<QueryMigrate>('query-migrate')).status;
      if (s !== 'active' && s !== 'setup' && s !== 'cancelling' && s !== 'device' && s !== 'pre-switchover') break;
      await sleep(10);
    }
    await this.#runIfStopped(qmp);
  }

  async continueSwitchover(vmId: string): Promise<void> {
    await (await this.#host.instance(vmId)).qmp.execute('migrate-continue', { state: 'pre-switchover' });
  }

  async tuneSwitchover(vmId: string, s: { downtimeLimitMs: number; bytesPerSec?: number }): Promise<void> {
    // avail-switchover-bandwidth arrived in QEMU 8.2; live migration needs 9.0 (unsupported()).
    const bandwidth = s.bytesPerSec ? { 'avail-switchover-bandwidth': Math.round(s.bytesPerSec) } : {};
    await (await this.#host.instance(vmId)).qmp.execute('migrate-set-parameters', { 'downtime-limit': s.downtimeLimitMs, ...bandwidth });
  }

  async resumeHere(vmId: string): Promise<void> {
    await this.#runIfStopped((await this.#host.instance(vmId)).qmp);
  }

  async #runIfStopped(qmp: QmpClient): Promise<void> {
    const st = await qmp.execute<{ running: boolean; status: string }>('query-status');
    if (!st.running) await qmp.execute('cont');
  }

  async stoppedAt(vmId: string): Promise<number | undefined> {
    return (await this.#host.instance(vmId)).stoppedAt();
  }

  async measureDirtyRate(vmId: string, ms: number): Promise<number> {
    const { qmp } = await this.#host.instance(vmId);
    const v = qmp.version?.qemu;
    // Millisecond resolution arrived in QEMU 8.2; older ones measure whole seconds.
    if (v && (v.major > 8 || (v.major === 8 && v.minor >= 2))) await qmp.execute('calc-dirty-rate', { 'calc-time': ms, 'calc-time-unit': 'millisecond' });
    else await qmp.execute('calc-dirty-rate', { 'calc-time': Math.max(1, Math.round(ms / 1000)) });
    const deadline = Date.now() + ms + 10_000;
    for (;;) {
      await sleep(Math.min(50, ms / 4));
      const r = await qmp.execute<{ status: string; 'dirty-rate'?: number }>('query-dirty-rate');
      if (r.status === 'measured') return (r['dirty-rate'] ?? 0) * 1024 * 1024; // MiB/s
      if (Date.now() > deadline) throw new DriverError('calc-dirty-rate', 'dirty-rate measurement did not finish');
    }
  }

  async sampleMemory(vmId: string, offset: number, bytes: number): Promise<Buffer> {
    const { qmp } = await this.#host.instance(vmId);
    const file = join(this.#host.vmDir(vmId), `sample-${process.pid}-${Date.now()}.bin`);
    try {
      await qmp.execute('pmemsave', { val: offset, size: bytes, filename: file });
      return readFileSync(file);
    } finally {
      rmSync(file, { force: true });
    }
  }
}

/** Whether a MIGRATION event came since the last progress read, per QMP connection. */
const watches = new WeakMap<QmpClient, { changed: boolean }>();
function migrationWatch(qmp: QmpClient): { changed: boolean } {
  let w = watches.get(qmp);
  if (!w) {
    const watch = { changed: false };
    qmp.on('event', (ev: QmpEvent) => {
      if (ev.event === 'MIGRATION') watch.changed = true;
    });
    watches.set(qmp, (w = watch));
  }
  return w;
}

/**
 * QEMU's x509 credentials object for one end of a direct migration. QEMU reads the files
 * when the object is made, so they exist (root-only, in the VM's directory) only for that
 * call; the key never reaches QEMU's command line or the QMP stream.
 */
async function addTlsCreds(qmp: QmpClient, vmDir: string, endpoint: 'server' | 'client', tls: StreamTls): Promise<void> {
  const dir = join(vmDir, 'migration-tls');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { mode: 0o700 });
  try {
    writeFileSync(join(dir, 'ca-cert.pem'), tls.caPem, { mode: 0o600 });
    writeFileSync(join(dir, `${endpoint}-cert.pem`), tls.certPem, { mode: 0o600 });
    writeFileSync(join(dir, `${endpoint}-key.pem`), tls.keyPem, { mode: 0o600 });
    // An earlier migration's credentials (an attempt that failed) make way.
    await qmp.execute('object-del', { id: TLS_CREDS }).catch(() => undefined);
    await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: TLS_CREDS, endpoint, dir, 'verify-peer': true });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Starts the incoming migration on a TCP port: the first free one of `ports`, or any (QEMU reports which). */
async function listenTcp(qmp: QmpClient, host: string, ports?: { from: number; to: number }): Promise<number> {
  if (!ports) {
    await qmp.execute('migrate-incoming', { uri: `tcp:${uriHost(host)}:0` });
    const info = await qmp.execute<{ 'socket-address'?: Array<{ port?: string }> }>('query-migrate');
    const port = Number(info['socket-address']?.[0]?.port);
    if (!Number.isInteger(port) || port <= 0) throw new DriverError('migrate-incoming', 'QEMU did not report the port it listens on');
    return port;
  }
  for (let port = ports.from; port <= ports.to; port++) {
    try {
      await qmp.execute('migrate-incoming', { uri: `tcp:${uriHost(host)}:${port}` });
      return port;
    } catch (err) {
      if (!/in use/i.test((err as Error).message)) throw err;
    }
  }
  throw new DriverError('migrate-incoming', `no free port in ${ports.from}-${ports.to} for the incoming stream`);
}

const uriHost = (host: string) => (host.includes(':') ? `[${host}]` : host);

async function setCapabilities(qmp: QmpClient, caps: Record<string, boolean>): Promise<void> {
  await qmp.execute('migrate-set-capabilities', { capabilities: Object.entries(caps).map(([capability, state]) => ({ capability, state })) });
}

/**
 * QEMU's migration states (qapi MigrationStatus) in the engine's terms. NovaCron never
 * enables postcopy or COLO, so those states mean something went wrong.
 */
export function migrationStatus(qemu: string | undefined): { status: MigrationStatus; error?: string } {
  switch (qemu ?? 'none') {
    case 'none':
      return { status: 'none' };
    case 'setup':
      return { status: 'setup' };
    case 'active':
    case 'wait-unplug':
      return { status: 'precopy' };
    case 'pre-switchover':
      return { status: 'paused-for-disks' };
    case 'device':
      return { status: 'switchover' };
    case 'cancelling':
      return { status: 'cancelling' };
    case 'cancelled':
      return { status: 'cancelled' };
    case 'completed':
      return { status: 'completed' };
    case 'failed':
      return { status: 'failed' };
    default:
      return { status: 'failed', error: `QEMU reports migration state "${qemu}", which NovaCron does not use` };
  }
}

function toProgress(q: QueryMigrate): MigrationProgress {
  const ram = q.ram;
  const pageSize = ram?.['page-size'] ?? 4096;
  const { status, error } = migrationStatus(q.status);
  return {
    status,
    transferredBytes: ram?.transferred ?? 0,
    remainingBytes: ram?.remaining ?? 0,
    totalBytes: ram?.total ?? 0,
    dirtyBytesPerSec: (ram?.['dirty-pages-rate'] ?? 0) * pageSize,
    rounds: ram?.['dirty-sync-count'] ?? 0,
    throttlePercent: q['cpu-throttle-percentage'] ?? 0,
    ...(q['expected-downtime'] !== undefined ? { expectedDowntimeMs: q['expected-downtime'] } : {}),
    ...(q.downtime !== undefined ? { downtimeMs: q.downtime } : {}),
    ...(q['total-time'] !== undefined ? { totalTimeMs: q['total-time'] } : {}),
    ...(q['error-desc'] !== undefined ? { error: q['error-desc'] } : error !== undefined ? { error } : {}),
  };
}

function stderrTail(dir: string): string {
  try {
    return readFileSync(join(dir, 'qemu.stderr'), 'utf8').trim().split('\n').slice(-3).join(' | ') || 'no detail';
  } catch {
    return 'no detail';
  }
}
