/**
 * Live migration, as the API sees it: plan (dry-run prediction), start, follow, cancel
 * outgoing migrations; accept incoming ones from peer daemons.
 */
import { createCipheriv, randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { NovaError } from '../errors.js';
import type { EventLog } from '../events/log.js';
import { isZeroPage, PageEncoder, PAGE_SIZE } from '../native/memdelta.js';
import type { LinkFaults } from '../native/miglink.js';
import type { TransportTls } from './secure-link.js';
import type { Store } from '../store/store.js';
import type { HypervisorDriver, LiveMigration } from '../vm/driver.js';
import { newId } from '../ids.js';
import type { VmRecord } from '../vm/record.js';
import type { VmService } from '../vm/service.js';
import { MigrationBook } from './book.js';
import { IncomingMigrations, type IncomingRequest } from './incoming.js';
import { ColdMigration } from './cold.js';
import { OutgoingMigration } from './outgoing.js';
import { volumesToCarry } from './volumes.js';
import type { IncomingOffer, TargetCredential } from './peer.js';
import { choosePath, predict, type Prediction } from './predict.js';
import { emptyProgress, type MigrateRequest, type MigrationRecord, type StreamTransport } from './record.js';

export interface MigrationServiceDeps {
  store: Store;
  events: EventLog;
  vms: VmService;
  driver: HypervisorDriver;
  log: Logger;
  nodeId: string;
  dataDir: string;
  /** Address the transport listener binds. */
  host: string;
  /** This member's certificate (the migration port speaks TLS with it); read when a migration arrives. */
  tls: () => TransportTls;
  transportPort?: number;
  /** Ports for incoming migrations' data links (default: any free port). */
  dataPorts?: { from: number; to: number };
  /** Fault injection (tests) for outgoing live migrations. */
  faults?: LinkFaults;
}

/** Raw bytes/s assumed for the relay path when the sample had nothing to measure it on. */
const DEFAULT_PATH_RAW_BYTES_PER_SEC = 150e6;
/**
 * Relay throughput as a share of the codec's encode speed on the sample, in two regimes.
 * While the link is the bottleneck (its cap × the codec's ratio below half the codec's
 * speed), the link's window paces QEMU and the relay keeps up with the link: bench/migration
 * on a 2-core host, ~200 MB/s raw on 1 GbE against 500-700 MB/s of codec. Once the link
 * outruns it, QEMU sends flat out and contends with the codec, the link's TLS and the far
 * side's decode for the cores: ~100 MB/s raw on 10 GbE and unlimited links, about 0.15 of
 * the codec's speed.
 */
const RELAY_SHARE_OF_CODEC_SPEED = 0.5;
const RELAY_CPU_BOUND_SHARE = 0.15;
/**
 * A direct stream's throughput as a share of AES-GCM's speed on the sample, per channel
 * (up to one per core): QEMU encrypts each multifd channel in its own thread (gnutls), the
 * destination decrypts, both copy, and the guest keeps a core busy. bench/migration on a
 * 2-core host: 290-390 MB/s raw against 1.1-1.3 GB/s of cipher on two channels.
 */
const DIRECT_SHARE_OF_CIPHER_SPEED = 0.25;
/** Source and destination each keep this share of guest RAM as codec cache (capped). */
const CACHE_SHARE = 0.25;
const MAX_CACHE_BYTES = 256 << 20;
/** How long the dry-run measures the guest's dirty rate. */
const DIRTY_RATE_SAMPLE_MS = 250;
/** Guest RAM sampled for the codec ratio: chunks × size. */
const SAMPLE_CHUNKS = 32;
const SAMPLE_CHUNK_BYTES = 128 << 10;
/** Samples stay below the PCI hole: guest-physical RAM there is the guest's first 2 GiB. */
const SAMPLE_BELOW = 2 ** 31;

/** Where the plan samples a guest of `memoryBytes`: SAMPLE_CHUNKS page-aligned chunks spread evenly over its low RAM. */
export function samplePlan(memoryBytes: number): { chunk: number; offsets: number[] } {
  const chunk = Math.min(SAMPLE_CHUNK_BYTES, Math.floor(memoryBytes / SAMPLE_CHUNKS / PAGE_SIZE) * PAGE_SIZE);
  const low = Math.min(memoryBytes, SAMPLE_BELOW);
  const offsets = Array.from({ length: SAMPLE_CHUNKS }, (_, i) => Math.floor(((low / SAMPLE_CHUNKS) * i) / PAGE_SIZE) * PAGE_SIZE);
  return { chunk, offsets };
}

/** Who the target is, for authentication: a member of this cluster, or a daemon outside it with a token it accepts. */
export type TargetAuth = { member: number } | { token: string };
/** This member's assertion for a request to member `to` (cluster/member-assertion.ts), acting for itself. */
export type MemberAssert = (to: number, method: string, url: string) => string;

/** Admission of outgoing migrations against their tenant's quota of concurrent migrations (cluster/quotas.ts). */
export interface MigrationQuota {
  admitMigration(tenant: string, vmId: string): Promise<void>;
  endMigration(tenant: string, vmId: string): Promise<void>;
}

export class MigrationService {
  #deps: MigrationServiceDeps;
  #book: MigrationBook;
  #quota: MigrationQuota | undefined;
  #assert: MemberAssert | undefined;
  #incoming?: IncomingMigrations;
  #outgoing = new Map<string, OutgoingMigration | ColdMigration>();
  #runs = new Set<Promise<void>>();

  private constructor(deps: MigrationServiceDeps, book: MigrationBook) {
    this.#deps = deps;
    this.#book = book;
  }

  static async open(deps: MigrationServiceDeps): Promise<MigrationService> {
    const svc = new MigrationService(deps, await MigrationBook.open(deps.store, deps.events));
    const migration = deps.driver.migration;
    svc.#incoming = await IncomingMigrations.listen(
      { vms: deps.vms, driver: deps.driver, ...(migration ? { migration } : {}), book: svc.#book, log: deps.log, host: deps.host, tls: deps.tls, ...(deps.dataPorts ? { dataPorts: deps.dataPorts } : {}) },
      deps.transportPort ?? 0,
    );
    mkdirSync(join(deps.dataDir, 'run'), { recursive: true });
    return svc;
  }

  /** Deletes finished migration records started before `cutoffMs`. */
  trimRecords(cutoffMs: number): Promise<number> {
    return this.#book.trimBefore(cutoffMs);
  }

  get(id: string): MigrationRecord {
    return this.#outgoing.get(id)?.record ?? this.#book.get(id);
  }

  list(): MigrationRecord[] {
    return this.#book.list().map((r) => this.#outgoing.get(r.id)?.record ?? r);
  }

  /**
   * Plans a migration of `vmRef` to `req.target` and, unless it is a dry run or misses its
   * target without `force`, starts it. Resolves once started (202) or planned (200). The
   * source authenticates to a member of this cluster with its certificate (a signed
   * assertion), to a daemon outside it with the token given; never with the caller's.
   */
  async migrate(vmRef: string, req: MigrateRequest, to: TargetAuth): Promise<{ started: boolean; migration?: MigrationRecord; prediction: Prediction }> {
    const { vms } = this.#deps;
    const vm = vms.get(vmRef);
    const credential = this.#credential(to);
    if (vm.state === 'stopped') return this.#migrateCold(vm, req, credential);
    const migration = this.#requireSupport(vm);
    if (vm.state !== 'running') throw new NovaError('VM_INVALID_STATE', `cannot migrate VM "${vm.name}" while it is ${vm.state}`, { state: vm.state, allowedFrom: ['running', 'stopped'] });
    const why = await migration.unsupported(vm.id);
    if (why) throw new NovaError('MIGRATION_UNSUPPORTED', why);
    const paths = this.#paths(vm, migration, to);
    if (req.transport !== 'auto' && !paths.includes(req.transport)) {
      throw new NovaError('MIGRATION_UNSUPPORTED', `VM "${vm.name}" cannot stream directly to ${req.target}: a direct stream needs a cluster member as the target, no disks in local pools, and a driver whose hypervisors speak TLS to each other`);
    }
    const prediction = await this.#predict(vm, migration, req, paths);
    if (req.dryRun) return { started: false, prediction };
    if ((!prediction.converges || prediction.downtimeMs > req.maxDowntimeMs) && !req.force) {
      throw new NovaError('MIGRATION_WONT_CONVERGE', `predicted not to converge within ${req.maxDowntimeMs} ms downtime (needs ~${prediction.throttleNeededPercent}% vCPU throttle, ceiling ${req.maxThrottlePercent}%); pass force to migrate with auto-converge`, { prediction });
    }
    const { rec, release } = await this.#begin(vm, 'live', req, prediction);
    const tenant = vm.spec.tenant;
    const { target } = req;
    const out = new OutgoingMigration(
      {
        vms, driver: this.#deps.driver, migration, book: this.#book, log: this.#deps.log, nodeId: this.#deps.nodeId, runDir: join(this.#deps.dataDir, 'run'),
        credential,
        ...(prediction.transport === 'direct' ? { streamTls: () => this.#deps.tls().material } : {}),
        ...(this.#deps.faults ? { faults: this.#deps.faults } : {}),
      },
      rec,
      target,
    );
    const cachePages = Math.max(1024, Math.floor(Math.min(vm.spec.memoryMiB * 1048576 * CACHE_SHARE, MAX_CACHE_BYTES) / PAGE_SIZE));
    this.#track(out, out.run(release, cachePages, !prediction.converges), tenant);
    return { started: true, migration: rec, prediction };
  }

  /** A stopped VM moves with its files; the "prediction" is the copy at the link's speed. */
  async #migrateCold(vm: VmRecord, req: MigrateRequest, credential: TargetCredential): Promise<{ started: boolean; migration?: MigrationRecord; prediction: Prediction }> {
    const { files } = ColdMigration.files(this.#deps.vms.storage, vm);
    const bytes = files.reduce((n, f) => n + f.size, 0);
    const prediction = predict({
      memoryBytes: bytes, dirtyBytesPerSec: 0, firstRatio: 1, resendRatio: 1,
      ...(req.bandwidthMBps ? { wireBytesPerSec: req.bandwidthMBps * 1e6 } : {}),
      pathRawBytesPerSec: DEFAULT_PATH_RAW_BYTES_PER_SEC, maxDowntimeMs: Infinity,
    });
    if (req.dryRun) return { started: false, prediction };
    const { rec, release } = await this.#begin(vm, 'cold', req, prediction);
    const tenant = vm.spec.tenant;
    const { target } = req;
    const { vms, log, nodeId } = this.#deps;
    const out = new ColdMigration({ vms, book: this.#book, log, nodeId, credential }, rec, target);
    this.#track(out, out.run(release), tenant);
    return { started: true, migration: rec, prediction };
  }

  /** Claims the VM and stores its new migration record with the started event. */
  async #begin(vm: VmRecord, mode: MigrationRecord['mode'], req: MigrateRequest, prediction: Prediction): Promise<{ rec: MigrationRecord; release: () => void }> {
    const quota = this.#quota;
    await quota?.admitMigration(vm.spec.tenant, vm.id);
    try {
      return await this.#record(vm, mode, req, prediction);
    } catch (err) {
      await quota?.endMigration(vm.spec.tenant, vm.id).catch(() => undefined);
      throw err;
    }
  }

  /** From now on, migrations to other members authenticate with this member's assertions (once the cluster runs). */
  useAssertions(assert: MemberAssert): void {
    this.#assert = assert;
  }

  #credential(to: TargetAuth): TargetCredential {
    if ('token' in to) return () => `Bearer ${to.token}`;
    const assert = this.#assert;
    if (!assert) throw new NovaError('RAFT_STOPPED', 'the cluster is not running yet');
    return (method, url) => assert(to.member, method, url);
  }

  /** From now on, outgoing migrations count against their tenant's quota of concurrent migrations. */
  useQuota(quota: MigrationQuota): void {
    this.#quota = quota;
  }

  async #record(vm: VmRecord, mode: MigrationRecord['mode'], req: MigrateRequest, prediction: Prediction): Promise<{ rec: MigrationRecord; release: () => void }> {
    const now = new Date().toISOString();
    const { target, dryRun: _, ...policy } = req;
    const rec: MigrationRecord = {
      id: newId('mig'), mode, vmId: vm.id, vmName: vm.name, role: 'source', peer: target, state: 'running', phase: 'plan',
      policy, ...(prediction.transport ? { transport: prediction.transport } : {}), prediction, progress: emptyProgress(), createdAt: now, updatedAt: now,
    };
    this.#book.track(rec);
    const { release } = await this.#deps.vms.beginMigrationOut(rec.vmId, this.#book.event(rec, 'migration.started', { target, mode }));
    await this.#book.save(rec);
    return { rec, release };
  }

  #track(out: OutgoingMigration | ColdMigration, run: Promise<void>, tenant: string): void {
    this.#outgoing.set(out.record.id, out);
    const quota = this.#quota;
    const tracked = run.finally(() => {
      this.#outgoing.delete(out.record.id);
      this.#runs.delete(tracked);
      quota?.endMigration(tenant, out.record.vmId).catch(() => undefined);
    });
    this.#runs.add(tracked);
  }

  /** Cancels a running outgoing migration; the VM stays where it is. */
  cancel(id: string): MigrationRecord {
    const out = this.#outgoing.get(id);
    if (!out) {
      const rec = this.#book.get(id);
      if (rec.role === 'destination' && rec.state === 'running') throw new NovaError('MIGRATION_NOT_ACTIVE', `migration ${id} is incoming here; cancel it on the source (${rec.peer})`);
      throw new NovaError('MIGRATION_NOT_ACTIVE', `migration ${id} is already ${rec.state}`, { state: rec.state });
    }
    out.cancel();
    return out.record;
  }

  /** `sourceMember`: the cluster member offering it, as its credential proved (absent: a daemon outside the cluster). */
  async acceptIncoming(req: IncomingRequest, sourceMember?: number): Promise<IncomingOffer> {
    return this.#incoming!.accept(req, sourceMember);
  }

  /** Waits for outgoing migrations to settle and stops accepting incoming ones. */
  async close(): Promise<void> {
    for (const out of this.#outgoing.values()) out.cancel();
    await Promise.allSettled([...this.#runs]);
    await this.#incoming?.close();
  }

  #requireSupport(vm: VmRecord): LiveMigration {
    const migration = this.#deps.driver.migration;
    if (!migration) throw new NovaError('MIGRATION_UNSUPPORTED', `the ${this.#deps.driver.name} driver cannot live-migrate VMs`);
    const local = volumesToCarry(this.#deps.vms.storage, vm);
    if (local.length > 0 && !migration.storage) {
      throw new NovaError('MIGRATION_UNSUPPORTED', `VM "${vm.name}" has disks in local pools (${local.map((d) => d.offer.disk).join(', ')}) and the ${this.#deps.driver.name} driver cannot copy disks of a running VM — use a shared pool or cold migration`);
    }
    return migration;
  }

  /** The paths QEMU's stream may take to `to`: always the relay; direct to a member, when the driver can and no disk travels. */
  #paths(vm: VmRecord, migration: LiveMigration, to: TargetAuth): StreamTransport[] {
    const direct = migration.direct && 'member' in to && volumesToCarry(this.#deps.vms.storage, vm).length === 0;
    return direct ? ['relay', 'direct'] : ['relay'];
  }

  /**
   * Dry run: the measured dirty rate, and on the guest's own pages the codec's ratios and
   * speed (the relay) and the cipher's speed (a direct stream) → the model, per path.
   */
  async #predict(vm: VmRecord, migration: LiveMigration, req: MigrateRequest, paths: StreamTransport[]): Promise<Prediction> {
    const memoryBytes = vm.spec.memoryMiB * 1048576;
    const dirtyBytesPerSec = await migration.measureDirtyRate(vm.id, DIRTY_RATE_SAMPLE_MS);
    const { chunk, offsets } = samplePlan(memoryBytes);
    const encoder = new PageEncoder(SAMPLE_CHUNKS * (chunk / PAGE_SIZE));
    const first: Buffer[] = [];
    let raw = 0;
    let wire = 0;
    let zero = 0;
    let sampled = 0;
    const nonZeroBatches: Buffer[] = [];
    for (const off of offsets) {
      const pages = await migration.sampleMemory(vm.id, off, chunk);
      first.push(pages);
      // QEMU sends zero pages as bare offsets (multifd zero-page detection): only the
      // others reach the codec, so only they count for its ratio.
      const nonZero: number[] = [];
      for (let p = 0; p < pages.length / PAGE_SIZE; p++) {
        if (isZeroPage(pages, p)) zero++;
        else nonZero.push(p);
      }
      sampled += pages.length / PAGE_SIZE;
      if (nonZero.length === 0) continue;
      const batch = Buffer.concat(nonZero.map((p) => pages.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)));
      nonZeroBatches.push(batch);
      wire += encoder.encode(BigUint64Array.from(nonZero, (p) => BigInt(off / PAGE_SIZE + p)), batch).length;
      raw += batch.length;
    }
    const firstRatio = raw > 0 ? raw / Math.max(1, wire) : 1;
    const nonZeroFraction = sampled > 0 ? 1 - zero / sampled : 1;
    const speed = codecAndCipherSpeed(Buffer.concat(nonZeroBatches), paths.includes('direct'));
    const pathRawBytesPerSec = relayRawBytesPerSec(speed.codec * 1000, req.bandwidthMBps ? req.bandwidthMBps * 1e6 * firstRatio : Infinity);
    // Re-sent pages: sample again, and encode only the pages that changed, against the
    // versions "sent" above — what pre-copy's later rounds do.
    raw = 0;
    wire = 0;
    for (const [i, off] of offsets.entries()) {
      const again = await migration.sampleMemory(vm.id, off, chunk);
      const changed: number[] = [];
      for (let p = 0; p < again.length / PAGE_SIZE; p++) {
        if (again.compare(first[i]!, p * PAGE_SIZE, (p + 1) * PAGE_SIZE, p * PAGE_SIZE, (p + 1) * PAGE_SIZE) !== 0) changed.push(p);
      }
      if (changed.length === 0) continue;
      const pages = Buffer.concat(changed.map((p) => again.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)));
      wire += encoder.encode(BigUint64Array.from(changed, (p) => BigInt(off / PAGE_SIZE + p)), pages).length;
      raw += pages.length;
    }
    const resendRatio = raw > 0 ? raw / Math.max(1, wire) : firstRatio;
    const disks = volumesToCarry(this.#deps.vms.storage, vm).map((d) => d.offer.disk);
    const diskBytes = disks.length > 0 && migration.storage ? await migration.storage.allocatedBytes(vm.id, disks) : 0;
    const common = {
      memoryBytes: Math.round(memoryBytes * nonZeroFraction),
      dirtyBytesPerSec,
      ...(req.bandwidthMBps ? { wireBytesPerSec: req.bandwidthMBps * 1e6 } : {}),
      maxDowntimeMs: req.maxDowntimeMs,
      ...(diskBytes > 0 ? { diskBytes } : {}),
    };
    const candidates: Array<{ transport: StreamTransport; prediction: Prediction }> = [{ transport: 'relay', prediction: predict({ ...common, firstRatio, resendRatio, pathRawBytesPerSec }) }];
    const cipher = speed.cipher;
    if (paths.includes('direct')) {
      // Nothing compresses a direct stream: the wire carries what QEMU sends.
      const directRaw = cipher > 0 ? cipher * 1000 * DIRECT_SHARE_OF_CIPHER_SPEED * Math.min(req.channels, availableParallelism()) : DEFAULT_PATH_RAW_BYTES_PER_SEC;
      candidates.push({ transport: 'direct', prediction: predict({ ...common, firstRatio: 1, resendRatio: 1, pathRawBytesPerSec: directRaw }) });
    }
    return choosePath(candidates, req.transport);
  }
}

/**
 * What the relay carries, raw bytes/s, given the codec's measured speed and what the link
 * carries of the codec's output (its cap × the ratio): see RELAY_SHARE_OF_CODEC_SPEED.
 */
export function relayRawBytesPerSec(codecBytesPerSec: number, linkRawBytesPerSec: number): number {
  if (codecBytesPerSec <= 0) return DEFAULT_PATH_RAW_BYTES_PER_SEC;
  const paced = codecBytesPerSec * RELAY_SHARE_OF_CODEC_SPEED;
  return linkRawBytesPerSec < paced ? paced : codecBytesPerSec * RELAY_CPU_BOUND_SHARE;
}

/** Pages in the batch the codec's and the cipher's speeds are measured on (2 MiB). */
const SPEED_BATCH_PAGES = 512;
const SPEED_TRIES = 3;

/**
 * The codec's and (`cipher`) AES-GCM's speeds here, bytes/ms, on the sample's non-zero
 * `pages` repeated up to SPEED_BATCH_PAGES under fresh page numbers, each copy stamped so
 * none is a duplicate of another: first sends, enough of them that a call's fixed cost
 * does not pass for slowness when the sample holds a handful of pages. The best of
 * SPEED_TRIES: on a busy host, being descheduled only ever makes a try slower.
 */
function codecAndCipherSpeed(sampled: Buffer, cipher: boolean): { codec: number; cipher: number } {
  // The cipher's speed does not depend on what the pages hold: with none sampled, zeros do.
  const pages = sampled.length > 0 ? sampled : Buffer.alloc(PAGE_SIZE);
  const have = pages.length / PAGE_SIZE;
  const n = SPEED_BATCH_PAGES;
  const batch = Buffer.allocUnsafe(n * PAGE_SIZE);
  for (let i = 0; i < n; i++) {
    pages.copy(batch, i * PAGE_SIZE, (i % have) * PAGE_SIZE, ((i % have) + 1) * PAGE_SIZE);
    batch.writeUInt32LE(i, i * PAGE_SIZE);
  }
  const numbers = BigUint64Array.from({ length: n }, (_, i) => BigInt(i));
  let codec = 0;
  let aes = 0;
  for (let t = 0; t < SPEED_TRIES; t++) {
    if (sampled.length > 0) {
      const encoder = new PageEncoder(n); // an empty cache: no page is a re-send
      const t0 = performance.now();
      encoder.encode(numbers, batch);
      const ms = performance.now() - t0;
      if (ms > 0) codec = Math.max(codec, batch.length / ms);
    }
    if (cipher) aes = Math.max(aes, cipherSpeed(batch));
  }
  return { codec, cipher: aes };
}

/** AES-256-GCM's speed on `batch` here, bytes/ms: what TLS costs a direct stream per byte. */
function cipherSpeed(batch: Buffer): number {
  const c = createCipheriv('aes-256-gcm', randomBytes(32), randomBytes(12));
  const t = performance.now();
  c.update(batch);
  c.final();
  const ms = performance.now() - t;
  return ms > 0 ? batch.length / ms : 0;
}
