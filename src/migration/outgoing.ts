/**
 * The source side of one live migration: prepare the destination, stream QEMU's
 * pre-copy through the relay, switch over, and clean up — or, on any failure or a
 * cancel, leave the VM running here, intact.
 */
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { isErrorCode, NovaError } from '../errors.js';
import { DEFAULT_SHARDS, PageEncoder } from '../native/memdelta.js';
import type { HypervisorDriver, LiveMigration, MigrationProgress } from '../vm/driver.js';
import type { VmService } from '../vm/service.js';
import type { MigrationBook } from './book.js';
import type { MigrationRecord } from './record.js';
import { SourceRelay } from './source-relay.js';
import { controlFrame, FrameReader, FrameType, TRANSPORT_VERSION, type ControlMessage } from './wire.js';

export interface OutgoingDeps {
  vms: VmService;
  driver: HypervisorDriver;
  migration: LiveMigration;
  book: MigrationBook;
  log: Logger;
  nodeId: string;
  runDir: string;
  apiToken?: string;
  /** Fault injection (tests): corrupt the Nth pages frame sent. */
  corruptPagesFrame?: number;
}

/** Answer of the target's POST /v1/migrations/incoming. */
export interface IncomingOffer {
  transport: { host: string; port: number };
  token: string;
}

const PROGRESS_EVERY_MS = 500;
const RESUME_TIMEOUT_MS = 60_000;
const TRANSPORT_LOSS_GRACE_MS = 250;

export class OutgoingMigration {
  #deps: OutgoingDeps;
  #rec: MigrationRecord;
  #target: string;
  #cancelled = false;
  #failure?: NovaError;
  #resumedAt?: number;
  #transport?: Socket;
  #relay?: SourceRelay;
  #wake?: () => void;

  constructor(deps: OutgoingDeps, rec: MigrationRecord, target: string) {
    this.#deps = deps;
    this.#rec = rec;
    this.#target = target;
  }

  get record(): MigrationRecord {
    return this.#rec;
  }

  cancel(): void {
    this.#cancelled = true;
    this.#wake?.();
  }

  /** Runs to the end; never throws (the outcome is in the record). */
  async run(release: () => void, cachePages: number, autoConverge: boolean): Promise<void> {
    const { migration, vms, book } = this.#deps;
    const vmId = this.#rec.vmId;
    let streamed = false; // QEMU finished sending: the guest is stopped here
    const t0 = performance.now();
    const since = (t: number) => Math.round(performance.now() - t);
    try {
      await this.#update({ phase: 'prepare', timings: { planMs: Date.now() - Date.parse(this.#rec.createdAt) } });
      const offer = await this.#prepareTarget(cachePages);
      this.#checkGoing();
      this.#transport = await this.#connect(offer);
      const encoder = new PageEncoder(cachePages, DEFAULT_SHARDS);
      const socketPath = join(this.#deps.runDir, `${this.#rec.id}.sock`);
      this.#relay = new SourceRelay({
        socketPath,
        transport: this.#transport,
        encoder,
        ...(this.#rec.policy.bandwidthMBps ? { bandwidthBytesPerSec: this.#rec.policy.bandwidthMBps * 1e6 } : {}),
        ...(this.#deps.corruptPagesFrame ? { corruptPagesFrame: this.#deps.corruptPagesFrame } : {}),
        onError: (err) => this.#fail(err instanceof NovaError ? err : new NovaError('MIGRATION_TRANSPORT', err.message)),
      });
      await this.#relay.listen();
      this.#checkGoing();
      await this.#update({ phase: 'precopy', timings: { ...this.#rec.timings, prepareMs: since(t0) } });
      const tStream = performance.now();
      await migration.startOutgoing(vmId, { socketPath, channels: this.#rec.policy.channels, downtimeLimitMs: this.#rec.policy.maxDowntimeMs, autoConverge });
      let lastSaved = 0;
      for (;;) {
        const p = await migration.progress(vmId);
        if (p.status === 'completed') {
          streamed = true;
          this.#absorb(p);
          break;
        }
        if (p.status === 'failed' || p.status === 'cancelled') throw this.#failure ?? new NovaError('MIGRATION_FAILED', `QEMU migration ${p.status}: ${p.error ?? 'no detail'}`);
        this.#checkGoing();
        this.#absorb(p);
        const phase = p.status === 'device' || p.status === 'pre-switchover' ? 'switchover' : 'precopy';
        if (Date.now() - lastSaved >= PROGRESS_EVERY_MS || phase !== this.#rec.phase) {
          lastSaved = Date.now();
          await this.#update({ phase }, 'migration.progress');
        }
        await this.#nap(50);
      }
      await this.#update({ phase: 'switchover', timings: { ...this.#rec.timings, streamMs: since(tStream) } }, 'migration.progress');
      const tConfirm = performance.now();
      const resumedAt = await this.#awaitResumed();
      this.#rec = { ...this.#rec, timings: { ...this.#rec.timings, confirmMs: since(tConfirm) } };
      const stoppedAt = await migration.stoppedAt(vmId);
      const qemuDowntime = (await migration.progress(vmId)).downtimeMs;
      this.#rec = { ...this.#rec, downtimeMs: { ...(qemuDowntime !== undefined ? { qemu: qemuDowntime } : {}), ...(stoppedAt !== undefined ? { measured: Math.max(0, Math.round((resumedAt - stoppedAt) * 10) / 10) } : {}) } };
      await this.#update({ phase: 'cleanup' });
      this.#teardown();
      // The guest runs on the destination: this copy must never run again.
      await this.#deps.driver.stop(vmId).catch((err) => this.#deps.log.error({ err, vmId }, 'stopping the migrated-away source QEMU failed'));
      const done = book.finished(this.#rec, 'completed');
      book.track(done);
      this.#rec = done;
      await vms.migratedAway(vmId, [book.op(done)], [book.event(done, 'migration.completed', { target: this.#target, downtimeMs: done.downtimeMs, totalMs: done.totalMs })]);
    } catch (err) {
      let error = this.#cancelled ? new NovaError('MIGRATION_CANCELLED', 'cancelled by request') : toNovaError(err);
      if (error.code === 'MIGRATION_TRANSPORT') error = (await this.#destinationsReason()) ?? error;
      this.#deps.log.warn({ err, migrationId: this.#rec.id, vmId }, 'migration failed; the VM stays on the source');
      this.#teardown();
      if (!streamed) await migration.cancelOutgoing(vmId).catch((e) => this.#deps.log.warn({ err: e, vmId }, 'migrate_cancel failed'));
      const state = this.#cancelled ? 'cancelled' : 'failed';
      const done = book.finished(this.#rec, state, { code: error.code, message: error.message });
      book.track(done);
      this.#rec = done;
      const reason = streamed
        ? `migration outcome unknown: QEMU sent everything to ${this.#target} but the destination never confirmed the guest runs there (${error.message}); check the target before resuming this copy`
        : `migration ${state}: ${error.message}`;
      await vms
        .migrationAbandoned(vmId, reason, [book.op(done)], [book.event(done, state === 'cancelled' ? 'migration.cancelled' : 'migration.failed', { error: done.error })], streamed)
        .catch((e) => this.#deps.log.error({ err: e, vmId }, 'could not settle VM after failed migration'));
    } finally {
      release();
    }
  }

  async #prepareTarget(cachePages: number): Promise<IncomingOffer> {
    const vm = this.#deps.vms.get(this.#rec.vmId);
    const body = { migrationId: this.#rec.id, source: this.#deps.nodeId, vm: { id: vm.id, name: vm.name, spec: vm.spec }, channels: this.#rec.policy.channels, cachePages, shards: DEFAULT_SHARDS };
    let res: Response;
    try {
      res = await fetch(`${this.#target}/v1/migrations/incoming`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(this.#deps.apiToken ? { authorization: `Bearer ${this.#deps.apiToken}` } : {}) },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(60_000),
      });
    } catch (err) {
      throw new NovaError('MIGRATION_TARGET_UNREACHABLE', `cannot reach ${this.#target}: ${(err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message}`);
    }
    const json = (await res.json().catch(() => ({}))) as { error?: { code: string; message: string } } & Partial<IncomingOffer>;
    if (!res.ok || !json.transport || !json.token) {
      throw new NovaError('MIGRATION_TARGET_REJECTED', `${this.#target} refused the VM: ${json.error ? `${json.error.code}: ${json.error.message}` : `HTTP ${res.status}`}`, { targetError: json.error });
    }
    return json as IncomingOffer;
  }

  /**
   * When the connection broke, the destination may know why (it refused a frame, its
   * QEMU failed): its record of this migration says, if it can be reached.
   */
  async #destinationsReason(): Promise<NovaError | undefined> {
    try {
      const res = await fetch(`${this.#target}/v1/migrations/${this.#rec.id}`, {
        headers: this.#deps.apiToken ? { authorization: `Bearer ${this.#deps.apiToken}` } : {},
        signal: AbortSignal.timeout(2000),
      });
      const rec = (await res.json()) as Partial<MigrationRecord>;
      const e = rec.error;
      if (!res.ok || rec.state !== 'failed' || !e || e.code === 'MIGRATION_TRANSPORT' || !isErrorCode(e.code)) return undefined;
      return new NovaError(e.code, `destination aborted: ${e.message}`);
    } catch {
      return undefined;
    }
  }

  async #connect(offer: IncomingOffer): Promise<Socket> {
    const s = connect({ host: offer.transport.host, port: offer.transport.port, noDelay: true });
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', (e) => reject(new NovaError('MIGRATION_TRANSPORT', `transport connect to ${offer.transport.host}:${offer.transport.port}: ${e.message}`)));
    });
    const reader = new FrameReader();
    s.on('data', (chunk: Buffer) => {
      try {
        for (const f of reader.push(chunk)) {
          if (f.type === FrameType.Window && f.payload.length === 4) this.#relay?.grant(f.channel, f.payload.readUInt32BE(0));
          else if (f.type === FrameType.Control) this.#onControl(JSON.parse(f.payload.toString()) as ControlMessage);
          else throw new NovaError('MIGRATION_PROTOCOL', `destination sent frame type ${f.type}`);
        }
      } catch (err) {
        this.#fail(toNovaError(err));
      }
    });
    // A destination that aborts says why, then closes; our next write may fail before
    // that message is read. Let the reason win over the broken pipe it causes.
    const lost = (err: NovaError) => setTimeout(() => this.#fail(err), TRANSPORT_LOSS_GRACE_MS).unref();
    s.on('error', (e) => lost(new NovaError('MIGRATION_TRANSPORT', `transport: ${e.message}`)));
    s.on('close', () => lost(new NovaError('MIGRATION_TRANSPORT', 'the destination closed the migration connection')));
    for (const b of controlFrame({ type: 'hello', version: TRANSPORT_VERSION, migrationId: this.#rec.id, token: offer.token })) s.write(b);
    return s;
  }

  #onControl(msg: ControlMessage): void {
    if (msg.type === 'resumed') {
      this.#resumedAt = msg.at;
      this.#wake?.();
    } else if (msg.type === 'abort') {
      this.#fail(new NovaError(isErrorCode(msg.code) ? msg.code : 'MIGRATION_FAILED', `destination aborted: ${msg.message}`));
    }
  }

  #fail(err: NovaError): void {
    if (this.#resumedAt !== undefined) return; // done: a late close is not a failure
    this.#failure ??= err;
    this.#wake?.();
  }

  #checkGoing(): void {
    if (this.#cancelled) throw new NovaError('MIGRATION_CANCELLED', 'cancelled by request');
    if (this.#failure) throw this.#failure;
  }

  async #awaitResumed(): Promise<number> {
    const deadline = Date.now() + RESUME_TIMEOUT_MS;
    while (this.#resumedAt === undefined) {
      if (this.#failure) throw this.#failure; // (cancel is ignored now: the stream is complete)
      if (Date.now() > deadline) throw new NovaError('MIGRATION_TRANSPORT', `the destination did not confirm the guest resumed within ${RESUME_TIMEOUT_MS} ms`);
      await this.#nap(100);
    }
    return this.#resumedAt;
  }

  /** Sleeps up to `ms`, waking early on a control message, failure or cancel. */
  async #nap(ms: number): Promise<void> {
    await Promise.race([sleep(ms), new Promise<void>((r) => (this.#wake = r))]);
    this.#wake = undefined;
  }

  #absorb(p: MigrationProgress): void {
    const stats = this.#relay?.stats;
    const bytesRaw = stats?.rawBytes ?? p.transferredBytes;
    const bytesWire = stats?.wireBytes ?? 0;
    this.#rec = {
      ...this.#rec,
      progress: {
        bytesRaw,
        bytesWire,
        compressionRatio: bytesWire > 0 ? Math.round((bytesRaw / bytesWire) * 100) / 100 : 1,
        rounds: p.rounds,
        dirtyBytesPerSec: p.dirtyBytesPerSec,
        remainingBytes: p.remainingBytes,
        totalBytes: p.totalBytes,
        throttlePercent: p.throttlePercent,
        ...(p.expectedDowntimeMs !== undefined ? { predictedDowntimeMs: p.expectedDowntimeMs } : {}),
      },
    };
  }

  async #update(patch: Partial<MigrationRecord>, event?: 'migration.progress'): Promise<void> {
    this.#rec = { ...this.#rec, ...patch, updatedAt: new Date().toISOString() };
    await this.#deps.book.save(this.#rec, event);
  }

  #teardown(): void {
    this.#relay?.close();
    this.#transport?.removeAllListeners('close');
    this.#transport?.destroy();
  }
}

function toNovaError(err: unknown): NovaError {
  if (err instanceof NovaError) return err;
  const e = err as Error & { code?: string };
  if (e.name === 'DriverError') return new NovaError('MIGRATION_FAILED', e.message);
  return new NovaError('MIGRATION_FAILED', e.message ?? String(err));
}
