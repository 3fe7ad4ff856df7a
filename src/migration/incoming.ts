/**
 * The destination side: accepts a VM offered by a source daemon, starts its QEMU waiting
 * for the stream, and serves the transport connection that feeds it. Until the guest
 * runs here, any failure removes the half-arrived VM; the source keeps running it.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { z } from 'zod';
import { NovaError } from '../errors.js';
import { PageDecoder } from '../native/memdelta.js';
import type { HypervisorDriver, LiveMigration } from '../vm/driver.js';
import { VmSpecFields } from '../vm/spec.js';
import type { VmService } from '../vm/service.js';
import type { MigrationBook } from './book.js';
import { DestRelay } from './dest-relay.js';
import { emptyProgress, type MigrationRecord } from './record.js';
import type { IncomingOffer } from './outgoing.js';
import { controlFrame, FrameReader, FrameType, TRANSPORT_VERSION, windowFrame, type ControlMessage } from './wire.js';

export const IncomingRequest = z.strictObject({
  migrationId: z.string().regex(/^mig-[0-9a-f]{24}$/),
  source: z.string().min(1).max(63),
  vm: z.strictObject({ id: z.string().regex(/^vm-[0-9a-f]{24}$/), name: z.string().min(1).max(63), spec: z.strictObject(VmSpecFields) }),
  channels: z.int().min(1).max(16),
  cachePages: z.int().min(1).max(1 << 20),
  /** Codec shards (parallel encoders) the source uses; the decoder must match. */
  shards: z.int().min(1).max(64),
});
export type IncomingRequest = z.infer<typeof IncomingRequest>;

/** How long an accepted VM waits for its transport connection. */
const CONNECT_TIMEOUT_MS = 30_000;
/** How long the guest may take to resume after the stream ended. */
const RESUME_TIMEOUT_MS = 600_000;

interface Pending {
  rec: MigrationRecord;
  token: Buffer;
  socketPath: string;
  runtime: Record<string, unknown>;
  decoder: PageDecoder;
  release: () => void;
  timer: NodeJS.Timeout;
  settled: boolean;
}

export interface IncomingDeps {
  vms: VmService;
  driver: HypervisorDriver;
  migration: LiveMigration;
  book: MigrationBook;
  log: Logger;
  /** Address the transport listener binds (the API's host). */
  host: string;
}

export class IncomingMigrations {
  #deps: IncomingDeps;
  #server: Server;
  #pending = new Map<string, Pending>();

  private constructor(deps: IncomingDeps, server: Server) {
    this.#deps = deps;
    this.#server = server;
  }

  static async listen(deps: IncomingDeps, port = 0): Promise<IncomingMigrations> {
    const server = createServer();
    const self = new IncomingMigrations(deps, server);
    server.on('connection', (s) => self.#onConnection(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, deps.host, () => resolve());
    });
    return self;
  }

  get port(): number {
    return (this.#server.address() as { port: number }).port;
  }

  async accept(req: IncomingRequest): Promise<IncomingOffer> {
    const { vms, migration, book } = this.#deps;
    const now = new Date().toISOString();
    let rec: MigrationRecord = {
      id: req.migrationId, vmId: req.vm.id, vmName: req.vm.name, role: 'destination', peer: req.source, state: 'running', phase: 'prepare',
      policy: { maxDowntimeMs: 0, channels: req.channels, force: false }, progress: emptyProgress(), createdAt: now, updatedAt: now,
    };
    book.track(rec);
    const { vm, release } = await vms.adoptIncoming(req.vm, { migrationId: rec.id, source: req.source }, [book.event(rec, 'migration.started')]);
    let prepared: { socketPath: string; runtime: Record<string, unknown> };
    try {
      prepared = await migration.prepareIncoming(vm, req.channels);
    } catch (err) {
      rec = book.finished(rec, 'failed', { code: 'MIGRATION_FAILED', message: (err as Error).message });
      await vms.incomingAbandoned(vm.id, [book.op(rec)], [book.event(rec, 'migration.failed')]);
      release();
      throw new NovaError('MIGRATION_FAILED', `destination QEMU could not be prepared: ${(err as Error).message}`);
    }
    rec = { ...rec, phase: 'precopy' };
    await book.save(rec);
    const token = randomBytes(24);
    const p: Pending = {
      rec, token, ...prepared, decoder: new PageDecoder(req.cachePages, req.shards), release, settled: false,
      timer: setTimeout(() => void this.#abandon(p, new NovaError('MIGRATION_TRANSPORT', 'the source never connected')), CONNECT_TIMEOUT_MS),
    };
    this.#pending.set(rec.id, p);
    return { transport: { host: this.#deps.host, port: this.port }, token: token.toString('hex') };
  }

  async close(): Promise<void> {
    this.#server.close();
    for (const p of this.#pending.values()) await this.#abandon(p, new NovaError('MIGRATION_TRANSPORT', 'destination daemon shutting down'));
  }

  #onConnection(sock: Socket): void {
    sock.setNoDelay(true);
    const reader = new FrameReader();
    let p: Pending | undefined;
    let relay: DestRelay | undefined;
    let aborted = false;
    const abort = (err: NovaError) => {
      if (aborted) return;
      aborted = true;
      if (!p || p.settled) return void sock.destroy();
      // Tell the source why, then half-close and ignore what is still in flight: a reset
      // here could discard the abort before the source reads it.
      for (const b of controlFrame({ type: 'abort', code: err.code, message: err.message })) sock.write(b);
      sock.end();
      setTimeout(() => sock.destroy(), 5000).unref();
      relay?.close();
      void this.#abandon(p, err);
    };
    sock.on('data', (chunk: Buffer) => {
      if (aborted) return;
      try {
        for (const f of reader.push(chunk)) {
          if (!p) {
            p = this.#hello(f.type === FrameType.Control ? f.payload : undefined);
            if (!p) return void sock.destroy();
            clearTimeout(p.timer);
            relay = this.#startRelay(p, sock, abort);
            continue;
          }
          if (f.type === FrameType.Control) continue; // nothing the source may say mid-stream yet
          relay!.apply(f);
        }
      } catch (err) {
        abort(err instanceof NovaError ? err : new NovaError('MIGRATION_PROTOCOL', (err as Error).message));
      }
    });
    sock.on('error', () => undefined); // 'close' follows
    sock.on('close', () => {
      // QEMU's sockets end too; if it had everything it resumes the guest (success),
      // otherwise it fails and exits — waitIncoming reports either.
      relay?.close();
      if (p && !p.settled) {
        const pending = p;
        setTimeout(() => void this.#abandon(pending, new NovaError('MIGRATION_TRANSPORT', 'the source connection was lost before the guest resumed here')), 10_000).unref();
      }
    });
  }

  #hello(payload: Buffer | undefined): Pending | undefined {
    if (!payload) return undefined;
    let msg: ControlMessage;
    try {
      msg = JSON.parse(payload.toString()) as ControlMessage;
    } catch {
      return undefined;
    }
    if (msg.type !== 'hello' || msg.version !== TRANSPORT_VERSION) return undefined;
    const p = this.#pending.get(msg.migrationId);
    const given = Buffer.from(String(msg.token), 'hex');
    if (!p || p.settled || given.length !== p.token.length || !timingSafeEqual(given, p.token)) return undefined;
    return p;
  }

  #startRelay(p: Pending, sock: Socket, abort: (err: NovaError) => void): DestRelay {
    const relay = new DestRelay({
      qemuSocket: p.socketPath,
      decoder: p.decoder,
      pauseTransport: (pause) => (pause ? sock.pause() : sock.resume()),
      grant: (channel, bytes) => sock.write(windowFrame(channel, bytes)),
      onError: (err) => abort(err instanceof NovaError ? err : new NovaError('MIGRATION_TRANSPORT', err.message)),
    });
    this.#deps.migration
      .waitIncoming(p.rec.vmId, RESUME_TIMEOUT_MS)
      .then(async ({ resumedAt }) => {
        if (p.settled) return;
        for (const b of controlFrame({ type: 'resumed', at: resumedAt })) sock.write(b);
        await this.#arrived(p, relay);
      })
      .catch((err: Error) => abort(err instanceof NovaError ? err : new NovaError('MIGRATION_FAILED', err.message)));
    return relay;
  }

  async #arrived(p: Pending, relay: DestRelay): Promise<void> {
    p.settled = true;
    this.#pending.delete(p.rec.id);
    const { book, vms } = this.#deps;
    const done = book.finished({ ...p.rec, progress: { ...p.rec.progress, bytesWire: relay.stats.wireBytes, bytesRaw: relay.stats.rawBytes } }, 'completed');
    book.track(done);
    try {
      await vms.incomingArrived(p.rec.vmId, p.runtime, [book.op(done)], [book.event(done, 'migration.completed')]);
    } finally {
      p.release();
    }
  }

  async #abandon(p: Pending, err: NovaError): Promise<void> {
    if (p.settled) return;
    p.settled = true;
    clearTimeout(p.timer);
    this.#pending.delete(p.rec.id);
    this.#deps.log.warn({ migrationId: p.rec.id, vmId: p.rec.vmId, err: err.message }, 'incoming migration abandoned');
    const { book, vms, driver } = this.#deps;
    const done = book.finished(p.rec, 'failed', { code: err.code, message: err.message });
    book.track(done);
    try {
      await driver.stop(p.rec.vmId).catch(() => undefined);
      await vms.incomingAbandoned(p.rec.vmId, [book.op(done)], [book.event(done, 'migration.failed', { error: done.error })]);
    } catch (e) {
      this.#deps.log.error({ err: e, vmId: p.rec.vmId }, 'cleaning up an abandoned incoming migration failed');
    } finally {
      p.release();
    }
  }
}
