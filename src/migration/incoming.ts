/**
 * The destination side: accepts a VM offered by a source daemon, starts its QEMU waiting
 * for the stream and the data link (crates/miglink) that feeds it, and serves the control
 * connection (a cold migration's files too). Until the guest
 * runs here, any failure removes the half-arrived VM; the source keeps running it.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { z } from 'zod';
import { NovaError } from '../errors.js';
import { DestLink } from '../native/miglink.js';
import { DriverError, type HypervisorDriver, type LiveMigration, type StreamListener } from '../vm/driver.js';
import { VmSpecFields } from '../vm/spec.js';
import type { VmService } from '../vm/service.js';
import type { MigrationBook } from './book.js';
import { FileReceiver } from './file-receiver.js';
import { emptyProgress, type MigrationRecord } from './record.js';
import type { IncomingOffer } from './peer.js';
import { checkOffered, makeArriving, OfferedVolume } from './volumes.js';
import { VolumeRef } from '../storage/model.js';
import { controlFrame, FrameReader, FrameType, TRANSPORT_VERSION, type ControlMessage, type Frame } from './wire.js';
import { acceptTls, type TransportTls } from './secure-link.js';

const offered = {
  migrationId: z.string().regex(/^mig-[0-9a-f]{24}$/),
  source: z.string().min(1).max(63),
  vm: z.strictObject({
    id: z.string().regex(/^vm-[0-9a-f]{24}$/),
    name: z.string().min(1).max(63),
    spec: z.strictObject(VmSpecFields),
    /** A checkpoint travelling with a stopped VM (its file is one of `files`). */
    checkpoint: z.strictObject({ file: z.string().max(255), createdAt: z.string().max(64), sizeBytes: z.int().min(0) }).optional(),
  }),
  /** The volumes that travel with the VM (its disks in local pools). */
  volumes: z.array(OfferedVolume).max(32).default([]),
};

export const IncomingRequest = z.discriminatedUnion('mode', [
  z.strictObject({
    mode: z.literal('live'),
    ...offered,
    /** `direct`: the source's QEMU streams to this one over mutual TLS, no data link (MigrateRequest.transport). */
    transport: z.enum(['relay', 'direct']).default('relay'),
    channels: z.int().min(1).max(16),
    cachePages: z.int().min(1).max(1 << 20),
    /** Codec shards (parallel encoders) the source uses; the decoder must match. */
    shards: z.int().min(1).max(64),
  }),
  z.strictObject({
    mode: z.literal('cold'),
    ...offered,
    /** Each carried volume's content (`volume` names it) and the checkpoint. */
    files: z.array(z.strictObject({ name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$/), size: z.int().min(0), volume: VolumeRef.optional() })).max(64),
  }),
]);
export type IncomingRequest = z.infer<typeof IncomingRequest>;

/** How long an accepted VM waits for its transport connection. */
const CONNECT_TIMEOUT_MS = 30_000;
/** How long a lost connection (data link or control) waits for QEMU's own verdict before the VM is abandoned. */
const LINK_LOSS_GRACE_MS = 10_000;
/** How long the guest may take to resume after the stream ended. */
const RESUME_TIMEOUT_MS = 600_000;
/**
 * A direct stream's control connection silent this long (the source says `alive` every
 * second) means the link is dead: the half-arrived VM is abandoned. Nothing of NovaCron's
 * sees QEMU's own connection, and QEMU would wait on it for minutes.
 */
export const INCOMING_SILENCE_MS = 10_000;

interface Pending {
  rec: MigrationRecord;
  token: Buffer;
  release: () => void;
  /** Armed once prepared: the source must connect in time. */
  timer?: NodeJS.Timeout;
  settled: boolean;
  /** Set once the source's control connection said hello: aborts and tells the source why. */
  abort?: (err: NovaError) => void;
  live?: { listen: StreamListener; runtime: Record<string, unknown>; link?: DestLink; nbdSocket?: string };
  cold?: {
    files: Array<{ name: string; size: number }>;
    checkpoint?: { file: string; createdAt: string; sizeBytes: number };
    /** Where each volume file is written until the VM has arrived (file name → staged write). */
    staged: Map<string, { path: string; commit: () => Promise<void>; abort: () => Promise<void> }>;
  };
}

export interface IncomingDeps {
  vms: VmService;
  driver: HypervisorDriver;
  /** Absent when the driver cannot receive live migrations (cold ones still work). */
  migration?: LiveMigration;
  book: MigrationBook;
  log: Logger;
  /** Address the transport listener binds (the API's host). */
  host: string;
  /** Ports for data links (default: any free port). */
  dataPorts?: { from: number; to: number };
  /** This member's certificate: the migration port speaks TLS with it. */
  tls: () => TransportTls;
}

/** A connection that has not said hello by then is closed. */
export const HELLO_DEADLINE_MS = 5000;
/** What a connection may send before its hello (a hello is a few hundred bytes). */
export const HELLO_MAX_BYTES = 64 << 10;
/** Connections one address may hold open without having said hello. */
export const MAX_UNGREETED_PER_SOURCE = 8;

export class IncomingMigrations {
  #ungreeted = new Map<string, number>();
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

  /** `sourceMember`: the cluster member that offered it (absent: a daemon outside the cluster). */
  async accept(req: IncomingRequest, sourceMember?: number): Promise<IncomingOffer> {
    const { vms, book, driver } = this.#deps;
    const migration = this.#deps.migration;
    if (req.mode === 'live' && !migration) throw new NovaError('MIGRATION_UNSUPPORTED', `the ${driver.name} driver cannot receive live migrations`);
    const direct = req.mode === 'live' && req.transport === 'direct';
    if (direct && !migration!.direct) throw new NovaError('MIGRATION_UNSUPPORTED', `the ${driver.name} driver cannot take a direct stream`);
    // QEMU admits exactly the source member's certificate: only a member has one.
    if (direct && sourceMember === undefined) throw new NovaError('FORBIDDEN', 'a direct stream is taken only from a member of this cluster');
    if (req.mode === 'cold' && req.vm.checkpoint && !driver.vmFilePath) throw new NovaError('MIGRATION_UNSUPPORTED', `the ${driver.name} driver cannot receive a checkpoint`);
    const arriving = checkOffered(vms.storage, req.vm.id, req.vm.spec, req.volumes);
    if (req.mode === 'cold') {
      const sent = new Set(req.files.flatMap((f) => (f.volume ? [f.volume] : [])));
      if (sent.size !== arriving.size || [...arriving].some((r) => !sent.has(r))) throw new NovaError('MIGRATION_PROTOCOL', 'a cold migration must send one file per offered volume');
    }
    const now = new Date().toISOString();
    let rec: MigrationRecord = {
      id: req.migrationId, mode: req.mode, vmId: req.vm.id, vmName: req.vm.name, role: 'destination', peer: req.source, state: 'running', phase: 'prepare',
      policy: { maxDowntimeMs: 0, channels: req.mode === 'live' ? req.channels : 1, force: false, maxThrottlePercent: 0, transport: direct ? 'direct' : 'relay' },
      ...(req.mode === 'live' ? { transport: req.transport } : {}),
      progress: emptyProgress(), createdAt: now, updatedAt: now,
    };
    book.track(rec);
    const { checkpoint, ...offeredVm } = req.vm;
    const { vm, release } = await vms.adoptIncoming(offeredVm, { migrationId: rec.id, source: req.source }, [book.event(rec, 'migration.started')], arriving);
    const token = randomBytes(24);
    const p: Pending = { rec, token, release, settled: false };
    if (req.mode === 'live') {
      try {
        await makeArriving(vms.storage, vm, req.volumes, true);
        await vms.storage.prepareCloudInit(vm); // the waiting QEMU has the same devices as the source's
        const { host, dataPorts } = this.#deps;
        const tls = this.#deps.tls().material;
        const prepared = await migration!.prepareIncoming(vm, req.channels, direct ? { host, ...(dataPorts ? { ports: dataPorts } : {}), tls, peerIdentity: `CN=member-${sourceMember}` } : undefined);
        const live: NonNullable<Pending['live']> = (p.live = prepared);
        if (prepared.listen.kind === 'relay') {
          live.link = new DestLink(
            { bindHost: host, ...(dataPorts ? { ports: dataPorts } : {}), qemuSocket: prepared.listen.socketPath, token, tls, capacityPages: req.cachePages, shards: req.shards },
            (err) => this.#linkFailed(p, err),
          );
        }
        if (req.volumes.length > 0) {
          if (!migration!.storage) throw new NovaError('MIGRATION_UNSUPPORTED', `the ${driver.name} driver cannot receive disks of a running VM`);
          p.live.nbdSocket = await migration!.storage.exportDisks(vm.id, req.volumes.map((v) => v.disk));
        }
      } catch (err) {
        p.live?.link?.close();
        // A raw system error's text (paths, errno names) stays in the log, not in the record.
        const known = err instanceof NovaError || err instanceof DriverError;
        if (!known) this.#deps.log.error({ err, migrationId: rec.id }, 'preparing an incoming migration failed');
        rec = book.finished(rec, 'failed', { code: 'MIGRATION_FAILED', message: known ? err.message : 'preparing the destination failed (see the daemon log)' });
        await driver.stop(vm.id).catch(() => undefined);
        await vms.incomingAbandoned(vm.id, [book.op(rec)], [book.event(rec, 'migration.failed')]);
        release();
        // A refusal with its own code (POOL_FULL, VOLUME_EXISTS...) reaches the source as it is.
        if (err instanceof NovaError) throw err;
        throw new NovaError('MIGRATION_FAILED', `destination QEMU could not be prepared: ${known ? (err as Error).message : 'see the destination daemon log'}`);
      }
    } else {
      const staged = new Map<string, { path: string; commit: () => Promise<void>; abort: () => Promise<void> }>();
      try {
        await makeArriving(vms.storage, vm, req.volumes, false);
        for (const f of req.files) if (f.volume) staged.set(f.name, await vms.storage.storage.stageReceive(f.volume));
      } catch (err) {
        for (const s of staged.values()) await s.abort();
        rec = book.finished(rec, 'failed', { code: err instanceof NovaError ? err.code : 'MIGRATION_FAILED', message: (err as Error).message });
        await vms.incomingAbandoned(vm.id, [book.op(rec)], [book.event(rec, 'migration.failed')]);
        release();
        throw err;
      }
      p.cold = { files: req.files, staged, ...(checkpoint ? { checkpoint } : {}) };
    }
    p.rec = rec = { ...rec, phase: req.mode === 'live' ? 'precopy' : 'copy' };
    await book.save(rec);
    p.timer = setTimeout(() => void this.#abandon(p, new NovaError('MIGRATION_TRANSPORT', 'the source never connected')), CONNECT_TIMEOUT_MS);
    this.#pending.set(rec.id, p);
    const listen = p.live?.listen;
    return {
      transport: { host: this.#deps.host, port: this.port, certSha256: this.#deps.tls().fingerprint() }, token: token.toString('hex'),
      ...(p.live?.link ? { data: { port: p.live.link.port } } : {}),
      ...(listen?.kind === 'direct' ? { direct: { port: listen.port } } : {}),
    };
  }

  async close(): Promise<void> {
    this.#server.close();
    for (const p of this.#pending.values()) await this.#abandon(p, new NovaError('MIGRATION_TRANSPORT', 'destination daemon shutting down'));
  }

  #onConnection(raw: Socket): void {
    // Until it has said hello, a connection is a stranger: it gets HELLO_DEADLINE_MS (TLS
    // handshake included) and HELLO_MAX_BYTES, and one source address holds at most
    // MAX_UNGREETED_PER_SOURCE such connections, so strangers cannot tie up memory or the
    // real source's way in.
    raw.on('error', () => undefined);
    const source = raw.remoteAddress ?? '?';
    const ungreeted = (this.#ungreeted.get(source) ?? 0) + 1;
    if (ungreeted > MAX_UNGREETED_PER_SOURCE) return void raw.destroy();
    const sock = acceptTls(raw, this.#deps.tls());
    this.#ungreeted.set(source, ungreeted);
    let greeted = false;
    const greet = () => {
      if (greeted) return;
      greeted = true;
      clearTimeout(deadline);
      const left = (this.#ungreeted.get(source) ?? 1) - 1;
      if (left > 0) this.#ungreeted.set(source, left);
      else this.#ungreeted.delete(source);
    };
    const deadline = setTimeout(() => sock.destroy(), HELLO_DEADLINE_MS);
    deadline.unref();
    raw.once('close', greet);
    let helloBytes = 0;
    const reader = new FrameReader();
    let p: Pending | undefined;
    let files: FileReceiver | undefined;
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
      files?.close();
      void this.#abandon(p, err);
    };
    const onData = (chunk: Buffer) => {
      if (aborted) return;
      if (!p && (helloBytes += chunk.length) > HELLO_MAX_BYTES) return void sock.destroy();
      try {
        for (const f of reader.push(chunk)) {
          if (!p) {
            const hello = this.#hello(f.type === FrameType.Control ? f.payload : undefined);
            if (!hello) return void sock.destroy();
            greet();
            if (hello.stream === 'nbd') {
              // A disk-mirror connection: splice it onto the destination QEMU's NBD server.
              sock.off('data', onData);
              sock.off('close', onClose);
              return this.#spliceNbd(hello.p, sock);
            }
            p = hello.p;
            clearTimeout(p.timer);
            p.abort = abort;
            if (p.live?.listen.kind === 'direct') watchSilence(sock, () => !p || p.settled, abort);
            if (p.live) this.#awaitGuest(p, p.live, sock, abort);
            else files = this.#startFiles(p, sock, abort);
            continue;
          }
          if (f.type === FrameType.Control) continue; // nothing the source may say mid-stream yet
          if (!files) throw new NovaError('MIGRATION_PROTOCOL', `frame type ${f.type} on a live migration's control connection (QEMU's stream goes over the data link)`);
          files.apply(f);
        }
      } catch (err) {
        abort(err instanceof NovaError ? err : new NovaError('MIGRATION_PROTOCOL', (err as Error).message));
      }
    };
    const onClose = () => {
      // A live migration's data link may still deliver the rest; if QEMU gets everything
      // it resumes the guest (success), otherwise it fails — waitIncoming reports either.
      files?.close();
      if (p && !p.settled) this.#abandonLater(p, new NovaError('MIGRATION_TRANSPORT', 'the source connection was lost before the guest resumed here'));
    };
    sock.on('data', onData);
    sock.on('error', () => undefined); // 'close' follows
    sock.on('close', onClose);
  }

  /** Joins a tunnelled NBD client to the disk export; bytes pass through unchanged. */
  #spliceNbd(p: Pending, sock: Socket): void {
    const path = p.live?.nbdSocket;
    if (!path) return void sock.destroy();
    const nbd = connect(path);
    nbd.on('error', () => sock.destroy());
    nbd.on('close', () => sock.destroy());
    sock.on('close', () => nbd.destroy());
    sock.pipe(nbd);
    nbd.pipe(sock);
  }

  #hello(payload: Buffer | undefined): { p: Pending; stream?: 'nbd' } | undefined {
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
    // The control connection's hello is single-use (disk-mirror tunnels, one per disk, come after it).
    if (msg.stream !== 'nbd' && p.abort) return undefined;
    return { p, ...(msg.stream === 'nbd' ? { stream: 'nbd' as const } : {}) };
  }

  /**
   * The data link failed. A refused frame aborts at once; a lost connection may come after
   * QEMU already has everything (it then resumes the guest), so it waits for QEMU's verdict.
   */
  #linkFailed(p: Pending, err: NovaError): void {
    if (p.settled) return;
    if (err.code === 'MIGRATION_TRANSPORT') this.#abandonLater(p, err);
    else if (p.abort) p.abort(err);
    else void this.#abandon(p, err);
  }

  /** A lost connection: QEMU may still have everything and resume; abandon only if it has not by then. */
  #abandonLater(p: Pending, err: NovaError): void {
    setTimeout(() => void this.#abandon(p, err), LINK_LOSS_GRACE_MS).unref();
  }

  /** Live: the data link feeds QEMU; this waits for the guest to resume here. */
  #awaitGuest(p: Pending, live: NonNullable<Pending['live']>, sock: Socket, abort: (err: NovaError) => void): void {
    const link = live.link; // absent for a direct stream: QEMU's own connection carries it
    this.#deps
      .migration!.waitIncoming(p.rec.vmId, RESUME_TIMEOUT_MS)
      .then(async ({ resumedAt }) => {
        if (p.settled) return;
        // Recorded as ours before the source hears of it: once the source lets go, this
        // member already answers for the VM.
        // A direct stream's bytes are counted by the source's QEMU (this one reports none).
        await this.#arrived(p, link?.stats() ?? { wireBytes: 0, rawBytes: 0 }, { to: 'running', runtime: live.runtime });
        // The source closes the link once it hears of the resume; a source that never does is cut off.
        if (link) setTimeout(() => link.close(), LINK_LOSS_GRACE_MS).unref();
        for (const b of controlFrame({ type: 'resumed', at: resumedAt })) sock.write(b);
        // The disks are the guest's now; stop serving them (after the VM is recorded as running here).
        if (live.nbdSocket) await this.#deps.migration!.storage!.unexportDisks(p.rec.vmId).catch(() => undefined);
      })
      // QEMU fails when the link refuses a frame and shuts its sockets: the link's reason is the cause.
      .catch((err: Error) => abort(link?.failure() ?? (err instanceof NovaError ? err : new NovaError('MIGRATION_FAILED', err.message))));
  }

  #startFiles(p: Pending, sock: Socket, abort: (err: NovaError) => void): FileReceiver {
    const { driver } = this.#deps;
    const cold = p.cold!;
    const receiver: FileReceiver = new FileReceiver({
      files: cold.files,
      pathOf: (name) => cold.staged.get(name)?.path ?? driver.vmFilePath!(p.rec.vmId, name),
      pauseTransport: (pause) => (pause ? sock.pause() : sock.resume()),
      onError: (err) => abort(err instanceof NovaError ? err : new NovaError('MIGRATION_FAILED', err.message)),
      onDone: () => {
        if (p.settled) return;
        const ck = cold.checkpoint;
        const checkpoint = ck ? { path: driver.vmFilePath!(p.rec.vmId, ck.file), createdAt: ck.createdAt, sizeBytes: ck.sizeBytes } : undefined;
        Promise.all([...cold.staged.values()].map((s) => s.commit()))
          .then(() => this.#arrived(p, receiver.stats, { to: 'stopped', ...(checkpoint ? { checkpoint } : {}) }))
          .then(() => {
            for (const b of controlFrame({ type: 'arrived', at: Date.now() })) sock.write(b);
          })
          .catch((err: Error) => abort(new NovaError('MIGRATION_FAILED', err.message)));
      },
    });
    return receiver;
  }

  async #arrived(p: Pending, sink: { wireBytes: number; rawBytes: number }, arrived: Parameters<VmService['incomingArrived']>[1]): Promise<void> {
    p.settled = true;
    this.#pending.delete(p.rec.id);
    const { book, vms } = this.#deps;
    const done = book.finished({ ...p.rec, progress: { ...p.rec.progress, bytesWire: sink.wireBytes, bytesRaw: sink.rawBytes } }, 'completed');
    book.track(done);
    try {
      await vms.incomingArrived(p.rec.vmId, arrived, [book.op(done)], [book.event(done, 'migration.completed')]);
    } finally {
      p.release();
    }
  }

  async #abandon(p: Pending, err: NovaError): Promise<void> {
    if (p.settled) return;
    p.settled = true;
    clearTimeout(p.timer);
    p.live?.link?.close();
    this.#pending.delete(p.rec.id);
    this.#deps.log.warn({ migrationId: p.rec.id, vmId: p.rec.vmId, err: err.message }, 'incoming migration abandoned');
    const { book, vms, driver } = this.#deps;
    const done = book.finished(p.rec, 'failed', { code: err.code, message: err.message });
    book.track(done);
    try {
      await driver.stop(p.rec.vmId).catch(() => undefined);
      for (const s of p.cold?.staged.values() ?? []) await s.abort().catch(() => undefined);
      await vms.incomingAbandoned(p.rec.vmId, [book.op(done)], [book.event(done, 'migration.failed', { error: done.error })]);
    } catch (e) {
      this.#deps.log.error({ err: e, vmId: p.rec.vmId }, 'cleaning up an abandoned incoming migration failed');
    } finally {
      p.release();
    }
  }
}

/** Aborts once `sock` has been silent for INCOMING_SILENCE_MS, unless `done()` by then. */
function watchSilence(sock: Socket, done: () => boolean, abort: (err: NovaError) => void): void {
  let last = performance.now();
  sock.on('data', () => (last = performance.now()));
  const timer = setInterval(() => {
    if (done()) return clearInterval(timer);
    const ms = Math.round(performance.now() - last);
    if (ms >= INCOMING_SILENCE_MS) {
      clearInterval(timer);
      abort(new NovaError('MIGRATION_TRANSPORT', `nothing arrived from the source for ${ms} ms`));
    }
  }, 1000);
  timer.unref();
  sock.once('close', () => clearInterval(timer));
}
