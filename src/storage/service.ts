/**
 * The storage service: pools (from the daemon's configuration, plus the default `local`
 * pool), their volumes' metadata (cached here, kept by each pool's driver next to the
 * volume), tenants, capacity rules, and the checks every open goes through. It knows
 * nothing of VMs: who uses a volume is asked through `useAttachments`.
 */
import { createHash, randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { open as openFile } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { NovaError } from '../errors.js';
import type { EventLog } from '../events/log.js';
import { DirPool } from './dir-pool.js';
import {
  parseVolumeRef, PoolDef, volumeRef,
  type CloneVolumeRequest, type ContentType, type CreateVolumeRequest, type PoolStatus, type PoolView, type UploadQuery, type VolumeFormat, type VolumeMeta, type VolumeView,
} from './model.js';
import type { BlockTarget, PoolDriver } from './pool-driver.js';
import { QemuImg } from './qemu-img.js';
import { HOST_POOL, HostPool, type HostPath } from './host-pool.js';

export const DEFAULT_POOL = 'local';
const MiB = 1 << 20;
const PROGRESS_EVERY_MS = 1000;

export interface StorageDeps {
  dataDir: string;
  /** Pools configured by the operator; `local` is added when absent. */
  pools: PoolDef[];
  events: EventLog;
  log: Logger;
  qemuImg?: string;
  /** Largest accepted upload, bytes. */
  uploadLimitBytes?: number;
  /** Host paths the operator allows VMs to use: the `host` pool. */
  hostPaths?: HostPath[];
}

/** A volume opened for a consumer: what to hand QEMU, checked just now. */
export interface OpenedVolume {
  ref: string;
  meta: VolumeMeta;
  target: BlockTarget;
  shared: boolean;
}

export interface OpenRequest {
  tenant: string;
  /** Content types acceptable here (a kernel slot takes `kernel` volumes...). */
  content: ContentType[];
  /** The consumer writes to it (template volumes refuse). */
  write: boolean;
  /** The VM a migration is bringing the volume for (only it may open the volume meanwhile). */
  arrivingFor?: string;
}

interface Pool {
  def: PoolDef;
  driver: PoolDriver;
  volumes: VolumeIndex;
  /** Bytes on disk of all volumes, summed at `at` (a pool with many volumes re-sums at most once a second). */
  used?: { bytes: number; at: number };
  /** Why this member may not use the pool (a shared pool whose marker it does not see). */
  unavailable?: string;
}

/** Pools with more volumes than this sum their bytes on disk at most once a second. */
const EXACT_USE_UP_TO = 1000;

export interface VolumeListQuery {
  tenant?: string;
  content?: ContentType;
  limit: number;
  cursor?: string;
  /** Only the volumes of the tenants the caller may see. */
  visibleTenant?: (tenant: string) => boolean;
}

/** Admission of new provisioned bytes against their tenant's disk quota (cluster/quotas.ts). */
export interface DiskQuota {
  admitDisk(tenant: string, pool: string, bytes: number): Promise<void>;
}

export class StorageService {
  #pools = new Map<string, Pool>();
  #quota: DiskQuota | undefined;
  #deps: StorageDeps;
  #img: QemuImg;
  #attachments: (ref: string) => string[] = () => [];
  /** Names being created or uploaded right now (refs), so two requests never race for one. */
  #busy = new Set<string>();

  private constructor(deps: StorageDeps) {
    this.#deps = deps;
    this.#img = new QemuImg(deps.qemuImg);
  }

  static async open(deps: StorageDeps): Promise<StorageService> {
    const svc = new StorageService(deps);
    const defs = [...deps.pools];
    if (!defs.some((p) => p.name === DEFAULT_POOL)) defs.unshift(PoolDef.parse({ name: DEFAULT_POOL, path: 'pools/local' }));
    for (const def of defs) {
      if (svc.#pools.has(def.name) || def.name === HOST_POOL) throw new NovaError('CONFIG_INVALID', `pool "${def.name}" is configured twice (or is the reserved name "${HOST_POOL}")`);
      await svc.addPool(def);
    }
    if (deps.hostPaths?.length) {
      const names = new Set<string>();
      for (const h of deps.hostPaths) {
        if (names.has(h.name)) throw new NovaError('CONFIG_INVALID', `hostPaths: two entries are named "${h.name}"`);
        names.add(h.name);
      }
      const def: PoolDef = { name: HOST_POOL, type: 'host', path: '(config hostPaths)', shared: false, mediaClass: 'standard', content: ['disk'] };
      const driver = new HostPool(def, deps.hostPaths, svc.#img);
      svc.#pools.set(HOST_POOL, { def, driver, volumes: new VolumeIndex(await driver.open()) });
    }
    return svc;
  }

  /** Pools added after start from the cluster store (pool-sync.ts), which it may drop again. */
  #fromApi = new Set<string>();

  apiPools(): string[] {
    return [...this.#fromApi];
  }

  /** Drops a pool defined through the API, unless this member has volumes in it. */
  dropPool(name: string): boolean {
    const p = this.#pools.get(name);
    if (!p || !this.#fromApi.has(name) || p.volumes.size > 0) return false;
    this.#pools.delete(name);
    this.#fromApi.delete(name);
    return true;
  }

  /** Opens a pool (a configured one at start, one defined in the cluster store, or the `imported` pool on first need); an existing one stays. */
  async addPool(def: PoolDef, opts: { fromApi?: boolean } = {}): Promise<void> {
    if (this.#pools.has(def.name)) return;
    if (opts.fromApi) this.#fromApi.add(def.name);
    const root = isAbsolute(def.path) ? def.path : join(this.#deps.dataDir, def.path);
    const driver = new DirPool(def, root, this.#img);
    const volumes = new VolumeIndex();
    for (const meta of await driver.open()) {
      if (!driver.exists(meta.name) && !meta.arriving) {
        this.#deps.log.warn({ pool: def.name, volume: meta.name }, 'volume metadata without data (a create interrupted by a crash): removed');
        await driver.removeMeta(meta.name);
        continue;
      }
      volumes.set(meta.name, meta);
    }
    this.#pools.set(def.name, { def, driver, volumes });
  }

  /** Records a file already in the pool as a volume (the import of pre-pool VMs' files). */
  async register(poolName: string, m: Omit<VolumeMeta, 'createdAt' | 'updatedAt'>): Promise<void> {
    const pool = this.#pool(poolName);
    this.#assertFree(pool, m.name);
    pool.driver.target(m.name);
    const now = new Date().toISOString();
    const meta: VolumeMeta = { ...m, createdAt: now, updatedAt: now };
    await pool.driver.writeMeta(meta);
    pool.volumes.set(meta.name, meta);
    await this.#event('volume.created', pool, meta, { imported: true });
  }

  /** Tells the service who uses volumes (the VM service: the VMs whose specs name `ref`). */
  useAttachments(fn: (ref: string) => string[]): void {
    this.#attachments = fn;
  }

  get defaultPool(): string {
    return DEFAULT_POOL;
  }

  // ---- pools -------------------------------------------------------------------

  async pools(): Promise<PoolView[]> {
    return Promise.all([...this.#pools.values()].map((p) => this.#view(p)));
  }

  async pool(name: string): Promise<PoolView> {
    const p = this.#pools.get(name);
    if (!p) throw new NovaError('POOL_NOT_FOUND', `no pool "${name}"`, { pool: name });
    return this.#view(p); // an unavailable pool is shown, with why
  }

  /** Pool status for metrics: every pool, with its media class. */
  /** From now on, new volumes and growth are admitted against their tenant's disk quota first (QUOTA_EXCEEDED). */
  useQuota(quota: DiskQuota): void {
    this.#quota = quota;
  }

  /**
   * Provisioned bytes (virtual sizes) by tenant and pool: of this member's own pools, or
   * (`shared`) of the shared pools as every member sees them. What disk quotas count.
   */
  diskUsage(shared = false): Record<string, Record<string, number>> {
    const out: Record<string, Record<string, number>> = {};
    for (const [name, pool] of this.#pools) {
      if (pool.def.shared !== shared || pool.def.type !== 'dir') continue;
      for (const m of pool.volumes.values()) {
        const t = (out[m.tenant] ??= {});
        t[name] = (t[name] ?? 0) + m.sizeBytes;
      }
    }
    return out;
  }

  /** A shared pool's index, read again from the pool: what every member wrote. */
  async #rescanShared(pool: Pool): Promise<void> {
    if (pool.def.shared) pool.volumes = new VolumeIndex(await pool.driver.scan());
  }

  /** The shared pools' usage, read from the pools now (what other members wrote included). */
  async sharedDiskUsage(): Promise<Record<string, Record<string, number>>> {
    for (const pool of this.#pools.values()) await this.#rescanShared(pool);
    return this.diskUsage(true);
  }

  async statuses(): Promise<Array<{ pool: string; mediaClass: string; status: PoolStatus }>> {
    return Promise.all([...this.#pools.values()].map(async (p) => ({ pool: p.def.name, mediaClass: p.def.mediaClass, status: await this.#status(p) })));
  }

  /** POOL_FULL unless `pool` can take `bytes` more on disk and `virtualBytes` more provisioned (a check before a long copy starts). */
  async assertRoomFor(poolName: string, need: { virtualBytes: number; bytes: number }): Promise<void> {
    await this.#assertRoom(this.#pool(poolName), need);
  }

  /** A pool's tiering rules, if it has any. */
  policyOf(pool: string): PoolDef['policy'] {
    return this.#pools.get(pool)?.def.policy;
  }

  isShared(pool: string): boolean {
    return this.#pools.get(pool)?.def.shared === true;
  }

  hasPool(pool: string): boolean {
    return this.#pools.has(pool);
  }

  // ---- volumes -----------------------------------------------------------------

  find(ref: string): VolumeMeta | undefined {
    const r = parseVolumeRef(ref);
    const pool = r && this.#pools.get(r.pool);
    return pool ? this.#meta(pool, r.name) : undefined;
  }

  /** A volume's metadata: from the cache, except in a shared pool, which other members change (read from the pool). */
  #meta(pool: Pool, name: string): VolumeMeta | undefined {
    if (!pool.def.shared) return pool.volumes.get(name);
    const fresh = pool.driver.readMeta(name);
    if (fresh) pool.volumes.set(name, fresh);
    else pool.volumes.delete(name);
    return fresh;
  }

  get(ref: string): VolumeView {
    const { pool, meta } = this.#require(ref);
    return this.#volumeView(pool, meta);
  }

  async list(poolName: string, q: VolumeListQuery): Promise<{ items: VolumeView[]; nextCursor?: string; total: number }> {
    const pool = this.#pool(poolName);
    await this.#rescanShared(pool);
    // Names in order (kept sorted until the pool changes); a cursor is the last name seen.
    const page = this.#page(pool, q);
    return { items: page.metas.map((m) => this.#volumeView(pool, m)), total: page.total, ...(page.nextCursor ? { nextCursor: page.nextCursor } : {}) };
  }

  /**
   * `list` as the API serves it, assembled from each volume's cached JSON (a cached view
   * is at most a second old in `allocatedBytes` and `attachedTo`, and rebuilt at once when
   * the volume changes; `GET` of one volume is always fresh).
   */
  async listJson(poolName: string, q: VolumeListQuery): Promise<string> {
    const pool = this.#pool(poolName);
    await this.#rescanShared(pool);
    const page = this.#page(pool, q);
    let json = `{"items":[${page.metas.map((m) => this.#viewJson(pool, m)).join(',')}],"total":${page.total}`;
    if (page.nextCursor) json += `,"nextCursor":${JSON.stringify(page.nextCursor)}`;
    return `${json}}`;
  }

  #page(pool: Pool, q: VolumeListQuery): { metas: VolumeMeta[]; total: number; nextCursor?: string } {
    const names = pool.volumes.sortedNames();
    const visible = q.visibleTenant;
    const match = (m: VolumeMeta) => (!q.tenant || m.tenant === q.tenant) && (!q.content || m.content === q.content) && (!visible || visible(m.tenant));
    const filtered = q.tenant !== undefined || q.content !== undefined || visible !== undefined;
    let i = q.cursor ? upperBound(names, q.cursor) : 0;
    const metas: VolumeMeta[] = [];
    for (; i < names.length && metas.length < q.limit; i++) {
      const m = pool.volumes.get(names[i]!)!;
      if (match(m)) metas.push(m);
    }
    let more = false;
    for (; i < names.length && !more; i++) more = match(pool.volumes.get(names[i]!)!);
    const total = filtered ? names.reduce((n, name) => n + (match(pool.volumes.get(name)!) ? 1 : 0), 0) : names.length;
    return { metas, total, ...(more ? { nextCursor: metas.at(-1)!.name } : {}) };
  }

  #viewJson(pool: Pool, meta: VolumeMeta): string {
    const now = Date.now();
    const hit = pool.volumes.json.get(meta.name);
    if (hit && hit.meta === meta && now - hit.at < 1000) return hit.json;
    const json = JSON.stringify(this.#volumeView(pool, meta));
    pool.volumes.json.set(meta.name, { meta, json, at: now });
    return json;
  }

  async create(poolName: string, req: CreateVolumeRequest, extra: { owner?: string; backing?: string; arriving?: string; moving?: VolumeMeta['moving']; skipData?: boolean; exactBytes?: number; reserveBytes?: number } = {}): Promise<VolumeView> {
    const pool = this.#pool(poolName);
    this.#assertManaged(pool);
    this.#assertContent(pool, req.content);
    const sizeBytes = extra.exactBytes ?? req.sizeMiB * MiB;
    let backing: { target: BlockTarget; format: VolumeFormat } | undefined;
    if (extra.backing) {
      if (req.format !== 'qcow2') throw new NovaError('VOLUME_FORMAT_INVALID', 'a linked clone (backed volume) must be qcow2');
      const base = this.open(extra.backing, { tenant: req.tenant, content: ['disk', 'template'], write: false });
      backing = { target: base.target, format: base.meta.format };
    }
    return this.#exclusive(volumeRef(poolName, req.name), async () => {
      this.#assertFree(pool, req.name);
      await this.#assertRoom(pool, { virtualBytes: sizeBytes, bytes: extra.reserveBytes ?? 0 });
      // A new allocation (not a volume arriving by migration or moving between pools) counts against the disk quota.
      if (!extra.arriving && !extra.moving) await this.#quota?.admitDisk(req.tenant, poolName, sizeBytes);
      const now = new Date().toISOString();
      const meta: VolumeMeta = {
        name: req.name, format: req.format, content: req.content, sizeBytes, tenant: req.tenant,
        ...(extra.owner ? { owner: extra.owner } : {}), ...(extra.backing ? { backing: extra.backing } : {}), ...(extra.arriving ? { arriving: extra.arriving } : {}), ...(extra.moving ? { moving: extra.moving } : {}),
        createdAt: now, updatedAt: now,
      };
      await pool.driver.writeMeta(meta);
      pool.volumes.set(meta.name, meta);
      try {
        if (!extra.skipData) await pool.driver.create(meta.name, { format: meta.format, sizeBytes, ...(backing ? { backing } : {}) });
      } catch (err) {
        pool.volumes.delete(meta.name);
        await pool.driver.removeMeta(meta.name);
        throw err;
      }
      await this.#event('volume.created', pool, meta);
      return this.#volumeView(pool, meta);
    });
  }

  /** Deletes a volume: refused while a VM uses it or another volume is backed by it. */
  async remove(ref: string, opts: { exceptVm?: string } = {}): Promise<void> {
    const { pool, meta } = this.#require(ref);
    this.#assertManaged(pool);
    this.assertRemovable(ref, opts);
    await this.#exclusive(ref, async () => {
      await pool.driver.remove(meta.name);
      await pool.driver.removeMeta(meta.name);
      pool.volumes.delete(meta.name);
      await this.#event('volume.deleted', pool, meta);
    });
  }

  /** Refuses (VOLUME_IN_USE) while a VM other than `exceptVm` uses the volume or another volume is based on it. */
  assertRemovable(ref: string, opts: { exceptVm?: string } = {}): void {
    const users = this.#attachments(ref).filter((id) => id !== opts.exceptVm);
    if (users.length > 0) throw new NovaError('VOLUME_IN_USE', `volume ${ref} is attached to ${users.join(', ')}`, { attachedTo: users });
    const dependents = this.#dependents(ref);
    if (dependents.length > 0) throw new NovaError('VOLUME_IN_USE', `volume ${ref} is the base of ${dependents.join(', ')}`, { dependents });
  }

  /** Grows a volume that no running VM has open (an attached one is resized through the hypervisor). */
  async resize(ref: string, sizeMiB: number, online?: (newBytes: number) => Promise<void>): Promise<VolumeView> {
    const { pool, meta } = this.#require(ref);
    this.#assertManaged(pool);
    const sizeBytes = sizeMiB * MiB;
    if (sizeBytes < meta.sizeBytes) throw new NovaError('VOLUME_FORMAT_INVALID', `volumes only grow: ${ref} is ${meta.sizeBytes / MiB} MiB`);
    if (meta.readOnly) throw new NovaError('VOLUME_IN_USE', `volume ${ref} is a read-only template volume`);
    return this.#exclusive(ref, async () => {
      await this.#assertRoom(pool, { virtualBytes: sizeBytes - meta.sizeBytes, bytes: 0 });
      await this.#quota?.admitDisk(meta.tenant, pool.def.name, sizeBytes - meta.sizeBytes);
      if (online) await online(sizeBytes);
      else await pool.driver.resize(meta.name, meta.format, sizeBytes);
      return this.#update(pool, meta, { sizeBytes });
    });
  }

  /** Internal snapshots of a qcow2 volume (qemu-img's view; it reads a volume a running VM has open too). */
  async snapshots(ref: string): Promise<Array<{ name: string; createdAt: string; vmStateBytes: number }>> {
    const { pool, meta } = this.#require(ref);
    if (meta.format !== 'qcow2') return [];
    const info = (await this.#img.info(pool.driver.target(meta.name).path, 'qcow2')) as { snapshots?: Array<{ name: string; 'date-sec': number; 'vm-state-size': number }> };
    return (info.snapshots ?? []).map((s) => ({ name: s.name, createdAt: new Date(s['date-sec'] * 1000).toISOString(), vmStateBytes: s['vm-state-size'] }));
  }

  /**
   * Takes, reverts or deletes an internal snapshot of a qcow2 volume. `online` does it in
   * the running VM that has the volume open (false: none has; done with qemu-img). Revert
   * needs the volume closed.
   */
  async snapshot(ref: string, op: 'create' | 'revert' | 'delete', name: string, online?: (op: 'create' | 'delete') => Promise<boolean>): Promise<void> {
    const { pool, meta } = this.#require(ref);
    this.#assertManaged(pool);
    if (meta.format !== 'qcow2') throw new NovaError('SNAPSHOT_UNSUPPORTED', `volume ${ref} is ${meta.format}; snapshots need qcow2`);
    if (meta.readOnly) throw new NovaError('VOLUME_IN_USE', `volume ${ref} is a read-only template volume`);
    const existing = (await this.snapshots(ref)).some((s) => s.name === name);
    if (op === 'create' && existing) throw new NovaError('SNAPSHOT_EXISTS', `volume ${ref} already has a snapshot "${name}"`);
    if (op !== 'create' && !existing) throw new NovaError('SNAPSHOT_NOT_FOUND', `volume ${ref} has no snapshot "${name}"`);
    await this.#exclusive(ref, async () => {
      if (op !== 'revert' && online && (await online(op))) return;
      const flag = op === 'create' ? '-c' : op === 'revert' ? '-a' : '-d';
      await this.#img.run(['snapshot', '-q', '-f', 'qcow2', flag, name, pool.driver.target(meta.name).path]).catch((err: NovaError) => {
        throw /lock/i.test(err.message) ? new NovaError('VOLUME_IN_USE', `volume ${ref} is open in a running VM; stop it to ${op} a snapshot`) : err;
      });
    });
    await this.#event('volume.updated', pool, meta, { snapshot: { op, name } });
  }

  /** The offline resize itself (for a resize hook that found no running VM with the volume open). */
  async resizeOffline(ref: string, sizeBytes: number): Promise<void> {
    const { pool, meta } = this.#require(ref);
    await pool.driver.resize(meta.name, meta.format, sizeBytes);
  }

  /** A linked clone (qcow2 overlay on `ref`) or a full copy, into the same pool or another. */
  async clone(ref: string, req: CloneVolumeRequest): Promise<VolumeView> {
    const src = this.#require(ref);
    const poolName = req.pool ?? src.pool.def.name;
    if (req.linked) {
      if (this.#pool(poolName) !== src.pool && !src.pool.def.shared) {
        throw new NovaError('VOLUME_FORMAT_INVALID', `a linked clone of ${ref} must be in pool ${src.pool.def.name} (its base is not shared)`);
      }
      return this.create(poolName, { name: req.name, sizeMiB: Math.ceil(src.meta.sizeBytes / MiB), format: 'qcow2', content: src.meta.content === 'template' ? 'disk' : src.meta.content, tenant: src.meta.tenant }, { backing: ref });
    }
    const pool = this.#pool(poolName);
    this.#assertManaged(pool);
    this.#assertContent(pool, src.meta.content === 'template' ? 'disk' : src.meta.content);
    const source = this.open(ref, { tenant: src.meta.tenant, content: [src.meta.content], write: false });
    return this.#exclusive(volumeRef(poolName, req.name), async () => {
      this.#assertFree(pool, req.name);
      await this.#assertRoom(pool, { virtualBytes: src.meta.sizeBytes, bytes: src.pool.driver.allocated(src.meta.name) });
      const now = new Date().toISOString();
      const content = src.meta.content === 'template' ? 'disk' : src.meta.content; // a copy of a template is a writable disk
      const meta: VolumeMeta = { name: req.name, format: src.meta.format, content, sizeBytes: src.meta.sizeBytes, tenant: src.meta.tenant, createdAt: now, updatedAt: now };
      await pool.driver.writeMeta(meta);
      pool.volumes.set(meta.name, meta);
      try {
        let last = Date.now();
        const progress = (pct: number) => {
          if (Date.now() - last < PROGRESS_EVERY_MS) return;
          last = Date.now();
          const totalBytes = src.pool.driver.allocated(src.meta.name);
          void this.#deps.events.commit([], [{ type: 'volume.progress', tenant: meta.tenant, data: { pool: poolName, volume: meta.name, action: 'clone', bytes: Math.round((pct / 100) * totalBytes), totalBytes, percent: pct } }]).catch(() => undefined);
        };
        await pool.driver.copyFrom({ target: source.target, format: src.meta.format }, meta.name, meta.format, progress);
      } catch (err) {
        pool.volumes.delete(meta.name);
        await pool.driver.removeMeta(meta.name);
        throw err;
      }
      await this.#event('volume.created', pool, meta, { clonedFrom: ref });
      return this.#volumeView(pool, meta);
    });
  }

  /**
   * Stores an uploaded image as a new volume: streamed to a staging file with a size
   * limit, hashed, checked with `qemu-img info` (declared format, no backing or external
   * data file), then committed. Nothing remains of a refused upload.
   */
  async upload(poolName: string, name: string, q: UploadQuery, body: AsyncIterable<Buffer>, declaredBytes: number | undefined): Promise<VolumeView> {
    const pool = this.#pool(poolName);
    this.#assertManaged(pool);
    this.#assertContent(pool, q.content);
    const ref = volumeRef(poolName, name);
    this.#assertFree(pool, name);
    const limit = this.#deps.uploadLimitBytes ?? 64 * 2 ** 30;
    if (declaredBytes !== undefined && declaredBytes > limit) throw new NovaError('BODY_TOO_LARGE', `upload of ${declaredBytes} bytes exceeds the ${limit}-byte limit`);
    return this.#exclusive(ref, async () => {
      this.#assertFree(pool, name);
      const room = await this.#assertRoom(pool, { virtualBytes: declaredBytes ?? 0, bytes: declaredBytes ?? 0 });
      const staged = await pool.driver.stage(name);
      const hash = createHash('sha256');
      let bytes = 0;
      let lastProgress = Date.now();
      const fh = await openFile(staged.path, 'wx', 0o600);
      try {
        try {
          for await (const chunk of body) {
            bytes += chunk.length;
            if (bytes > limit) throw new NovaError('BODY_TOO_LARGE', `upload exceeds the ${limit}-byte limit`);
            if (bytes > room) throw new NovaError('POOL_FULL', `pool ${poolName} has no room for more than ${room} bytes`);
            hash.update(chunk);
            await fh.write(chunk);
            if (Date.now() - lastProgress >= PROGRESS_EVERY_MS) {
              lastProgress = Date.now();
              await this.#deps.events.commit([], [{ type: 'volume.progress', tenant: q.tenant, data: { pool: poolName, volume: name, action: 'upload', bytes, totalBytes: declaredBytes ?? null } }]);
            }
          }
        } finally {
          await fh.close();
        }
        if (declaredBytes !== undefined && bytes !== declaredBytes) throw new NovaError('VALIDATION_FAILED', `upload ended after ${bytes} of ${declaredBytes} bytes`);
        const sha256 = hash.digest('hex');
        if (q.sha256 && q.sha256 !== sha256) throw new NovaError('VOLUME_CHECKSUM_MISMATCH', `upload's SHA-256 is ${sha256}, expected ${q.sha256}`, { sha256 });
        const info = await pool.driver.inspect(staged.path);
        if (info.format !== q.format) throw new NovaError('VOLUME_FORMAT_INVALID', `the upload is a ${info.format} image, not ${q.format}`, { detected: info.format });
        if (info.backingFile) throw new NovaError('VOLUME_FORMAT_INVALID', 'uploaded images may not name a backing file (it would be opened from the host)');
        if (info.dataFile) throw new NovaError('VOLUME_FORMAT_INVALID', 'uploaded images may not name an external data file (it would be opened from the host)');
        await this.#quota?.admitDisk(q.tenant, poolName, info.virtualBytes);
        const now = new Date().toISOString();
        const meta: VolumeMeta = { name, format: q.format, content: q.content, sizeBytes: info.virtualBytes, tenant: q.tenant, sha256, createdAt: now, updatedAt: now };
        await pool.driver.writeMeta(meta);
        await staged.commit();
        pool.volumes.set(name, meta);
        await this.#event('volume.created', pool, meta, { uploadedBytes: bytes });
        return this.#volumeView(pool, meta);
      } catch (err) {
        await staged.abort();
        throw err;
      }
    });
  }

  /** The volume's content as a stream (raw bytes of its image). */
  download(ref: string): { stream: Readable; sizeBytes: number; meta: VolumeMeta } {
    const { pool, meta } = this.#require(ref);
    const { path } = pool.driver.target(meta.name);
    return { stream: pool.driver.read(meta.name), sizeBytes: statSync(path).size, meta };
  }

  /**
   * Opens a volume for a consumer after every check: it exists, belongs to the tenant,
   * holds acceptable content, may be written if asked, and its data (and its backing
   * chain) is the pool's own regular file.
   */
  open(ref: string, req: OpenRequest): OpenedVolume {
    const { pool, meta } = this.#require(ref);
    if (meta.tenant !== req.tenant) throw new NovaError('VOLUME_TENANT_MISMATCH', `volume ${ref} belongs to another tenant`, { volume: ref });
    if (!req.content.includes(meta.content)) throw new NovaError('VOLUME_CONTENT_MISMATCH', `volume ${ref} holds ${meta.content}, not ${req.content.join(' or ')}`, { volume: ref, content: meta.content });
    if (req.write && meta.readOnly) throw new NovaError('VOLUME_IN_USE', `volume ${ref} is a read-only template volume`);
    if (meta.arriving && meta.arriving !== req.arrivingFor) throw new NovaError('VOLUME_IN_USE', `volume ${ref} is still arriving by migration`);
    const target = pool.driver.target(meta.name);
    for (let base = meta.backing, depth = 0; base; depth++) {
      if (depth > 16) throw new NovaError('VOLUME_PATH_REFUSED', `volume ${ref}'s backing chain is too deep`);
      const b = this.#require(base);
      b.pool.driver.target(b.meta.name);
      base = b.meta.backing;
    }
    return { ref, meta, target, shared: pool.def.shared };
  }

  /**
   * Makes (or replaces) volume `ref`'s whole content with `make`, which writes a file at
   * the path it is given (a staging file, renamed into place): a VM's cloud-init seed.
   */
  async putContent(ref: string, m: { content: ContentType; tenant: string; owner?: string }, make: (path: string) => Promise<void>): Promise<void> {
    const r = parseVolumeRef(ref);
    if (!r) throw new NovaError('VOLUME_NOT_FOUND', `"${ref}" does not name a volume`);
    const pool = this.#pool(r.pool);
    this.#assertContent(pool, m.content);
    await this.#exclusive(ref, async () => {
      const staged = await pool.driver.stage(r.name);
      try {
        await make(staged.path);
        const info = await pool.driver.inspect(staged.path, 'raw');
        const now = new Date().toISOString();
        const old = this.#meta(pool, r.name);
        const meta: VolumeMeta = { name: r.name, format: 'raw', content: m.content, sizeBytes: info.virtualBytes, tenant: m.tenant, ...(m.owner ? { owner: m.owner } : {}), createdAt: old?.createdAt ?? now, updatedAt: now };
        await pool.driver.writeMeta(meta);
        await staged.commit();
        pool.volumes.set(meta.name, meta);
      } catch (err) {
        await staged.abort();
        throw err;
      }
    });
  }

  /** A template's volume: read-only from now on, content `template`. */
  async makeTemplateVolume(ref: string): Promise<void> {
    const { pool, meta } = this.#require(ref);
    await this.#update(pool, meta, { readOnly: true, content: 'template' });
  }

  /** Marks who owns a volume (the VM it was made with), or that no VM does any more. */
  async setOwner(ref: string, owner: string | undefined): Promise<void> {
    const { pool, meta } = this.#require(ref);
    const { owner: _old, ...rest } = meta;
    await this.#update(pool, rest as VolumeMeta, owner ? { owner } : {});
  }

  /** A volume received by a migration (or a disk move) is complete: it is an ordinary volume now. */
  async arrived(ref: string): Promise<void> {
    const { pool, meta } = this.#require(ref);
    const { arriving: _a, moving: _m, ...rest } = meta;
    await this.#update(pool, rest as VolumeMeta, {});
  }

  /** Every volume made for a VM (owned) or arriving for one, with that VM's id. */
  ownedOrArriving(): Array<{ ref: string; vmId: string }> {
    const out: Array<{ ref: string; vmId: string }> = [];
    for (const p of this.#pools.values()) {
      if (p.def.shared) continue; // another member's VM may own it
      for (const m of p.volumes.values()) {
        const vmId = m.arriving ?? m.owner;
        if (vmId) out.push({ ref: volumeRef(p.def.name, m.name), vmId });
      }
    }
    return out;
  }

  /** Targets of disk moves that never finished (a daemon restart finds them). */
  movesInFlight(): Array<{ ref: string; vmId: string; disk: string; from: string }> {
    const out: Array<{ ref: string; vmId: string; disk: string; from: string }> = [];
    for (const p of this.#pools.values()) {
      for (const m of p.volumes.values()) if (m.moving && m.arriving) out.push({ ref: volumeRef(p.def.name, m.name), vmId: m.arriving, ...m.moving });
    }
    return out;
  }

  /** The file of a volume's data (what QEMU has open), without the consumer checks of `open`. */
  dataPath(ref: string): string {
    const { pool, meta } = this.#require(ref);
    return pool.driver.target(meta.name).path;
  }

  /** Full copy of `from` into the staged data of `to` (made with skipData), committed at the end. */
  async copyInto(from: string, to: string, opts: { bytesPerSec?: number; signal: AbortSignal; onProgress(p: { copiedBytes: number; totalBytes: number }): void }): Promise<void> {
    const src = this.#require(from);
    const dst = this.#require(to);
    const staged = await dst.pool.driver.stage(dst.meta.name);
    try {
      await this.#img.convert(
        { path: src.pool.driver.target(src.meta.name).path, format: src.meta.format },
        { path: staged.path, format: dst.meta.format },
        { ...(opts.bytesPerSec ? { bytesPerSec: opts.bytesPerSec } : {}), signal: opts.signal, onPercent: (pct) => opts.onProgress({ copiedBytes: Math.round((pct / 100) * src.meta.sizeBytes), totalBytes: src.meta.sizeBytes }) },
      );
      await staged.commit();
    } catch (err) {
      await staged.abort();
      throw err;
    }
  }

  /** Volumes still marked as arriving for `vmId` (a migration that never finished). */
  arrivingFor(vmId: string): string[] {
    const out: string[] = [];
    for (const p of this.#pools.values()) for (const m of p.volumes.values()) if (m.arriving === vmId) out.push(volumeRef(p.def.name, m.name));
    return out;
  }

  /** Where a received volume's bytes are written before it is committed. */
  async stageReceive(ref: string): Promise<{ path: string; commit: () => Promise<void>; abort: () => Promise<void> }> {
    const { pool, meta } = this.#require(ref);
    return pool.driver.stage(meta.name);
  }

  /** Drops a volume's data and metadata without the in-use checks (a failed arrival's leftovers). */
  async discard(ref: string): Promise<void> {
    const found = this.find(ref);
    if (!found) return;
    const { pool, meta } = this.#require(ref);
    await pool.driver.remove(meta.name);
    await pool.driver.removeMeta(meta.name);
    pool.volumes.delete(meta.name);
  }

  allocatedBytes(ref: string): number {
    const { pool, meta } = this.#require(ref);
    return pool.driver.allocated(meta.name);
  }

  // ---- internals ---------------------------------------------------------------

  #pool(name: string): Pool {
    const p = this.#pools.get(name);
    if (!p) throw new NovaError('POOL_NOT_FOUND', `no pool "${name}"`, { pool: name });
    if (p.unavailable) throw new NovaError('POOL_UNAVAILABLE', `pool ${name} is unavailable on this member: ${p.unavailable}`, { pool: name });
    return p;
  }

  /**
   * Checks that this member really sees each shared pool: the first member to check
   * writes a random marker into the pool and records it in the cluster store; every later
   * one must read the same marker from its copy of the directory, or the pool is
   * unavailable here (POOL_UNAVAILABLE) — a "shared" directory that is really local
   * would otherwise let two hosts run one VM's disk each.
   */
  async checkSharedPools(cluster: { get(key: string): Promise<string | undefined>; put(key: string, value: string): Promise<void> }): Promise<void> {
    for (const pool of this.#pools.values()) {
      if (!pool.def.shared) continue;
      const key = `pool-marker/${pool.def.name}`;
      let recorded = await cluster.get(key);
      if (recorded === undefined) {
        const token = randomBytes(16).toString('hex');
        await pool.driver.writeMarker(token);
        await cluster.put(key, token);
        recorded = (await cluster.get(key)) ?? token;
      }
      const seen = pool.driver.readMarker();
      if (seen === recorded) {
        delete pool.unavailable;
      } else {
        pool.unavailable = seen === undefined ? 'its directory has no marker from the cluster (not the shared directory the other members use?)' : 'its directory holds another marker than the cluster recorded (a different directory?)';
        this.#deps.log.error({ pool: pool.def.name, root: pool.driver.root }, `shared pool unavailable: ${pool.unavailable}`);
      }
    }
  }

  #require(ref: string): { pool: Pool; meta: VolumeMeta } {
    const r = parseVolumeRef(ref);
    if (!r) throw new NovaError('VOLUME_NOT_FOUND', `"${ref}" does not name a volume (pool/volume)`);
    const pool = this.#pool(r.pool);
    const meta = this.#meta(pool, r.name);
    if (!meta) throw new NovaError('VOLUME_NOT_FOUND', `no volume ${ref}`, { volume: ref });
    return { pool, meta };
  }

  /** The host pool's volumes are the operator's (config hostPaths): the API makes, changes and removes none. */
  #assertManaged(pool: Pool): void {
    if (pool.def.type === 'host') throw new NovaError('POOL_CONTENT_REFUSED', `the ${HOST_POOL} pool holds only the host paths listed in the daemon's config file; the API cannot change it`);
  }

  #assertFree(pool: Pool, name: string): void {
    if (this.#meta(pool, name)) throw new NovaError('VOLUME_EXISTS', `volume ${volumeRef(pool.def.name, name)} already exists`);
  }

  #assertContent(pool: Pool, content: ContentType): void {
    if (!pool.def.content.includes(content)) throw new NovaError('POOL_CONTENT_REFUSED', `pool ${pool.def.name} does not hold ${content} volumes (it holds ${pool.def.content.join(', ')})`);
  }

  /** Refuses with POOL_FULL when the pool cannot take `bytes` more on disk or `virtualBytes` more provisioned; returns the bytes it can take. */
  async #assertRoom(pool: Pool, need: { virtualBytes: number; bytes: number }): Promise<number> {
    const s = await this.#status(pool);
    if (pool.def.overcommitRatio !== undefined && s.allocatedBytes + need.virtualBytes > s.capacityBytes * pool.def.overcommitRatio) {
      throw new NovaError('POOL_FULL', `pool ${pool.def.name} would provision ${s.allocatedBytes + need.virtualBytes} bytes, over ${pool.def.overcommitRatio} × its ${s.capacityBytes}-byte capacity`, { pool: pool.def.name });
    }
    if (need.bytes > s.freeBytes) throw new NovaError('POOL_FULL', `pool ${pool.def.name} has ${s.freeBytes} bytes free, ${need.bytes} needed`, { pool: pool.def.name });
    return s.freeBytes;
  }

  async #status(pool: Pool): Promise<PoolStatus> {
    const space = await pool.driver.status();
    let allocatedBytes = 0;
    for (const m of pool.volumes.values()) allocatedBytes += m.sizeBytes;
    const now = Date.now();
    if (!pool.used || pool.volumes.size <= EXACT_USE_UP_TO || now - pool.used.at > 1000) {
      let bytes = 0;
      for (const m of pool.volumes.values()) bytes += this.#allocated(pool, m.name, pool.volumes.size <= EXACT_USE_UP_TO);
      pool.used = { bytes, at: now };
    }
    const usedBytes = pool.used.bytes;
    const byCapacity = pool.def.capacityGiB !== undefined ? Math.max(0, space.capacityBytes - usedBytes) : space.freeBytes;
    return { capacityBytes: space.capacityBytes, allocatedBytes, usedBytes, freeBytes: Math.min(space.freeBytes, byCapacity), volumes: pool.volumes.size };
  }

  async #view(p: Pool): Promise<PoolView> {
    return { ...p.def, root: p.driver.root, ...(p.unavailable ? { unavailable: p.unavailable } : {}), status: await this.#status(p) };
  }

  #volumeView(pool: Pool, meta: VolumeMeta): VolumeView {
    const ref = volumeRef(pool.def.name, meta.name);
    const chain: string[] = [];
    for (let b = meta.backing; b && chain.length < 17; b = this.find(b)?.backing) chain.push(b);
    return { ...meta, pool: pool.def.name, ref, allocatedBytes: this.#allocated(pool, meta.name), attachedTo: this.#attachments(ref), backingChain: chain };
  }

  /** A volume's bytes on disk, at most a second old (`exact`: read now). */
  #allocated(pool: Pool, name: string, exact = false): number {
    const now = Date.now();
    const hit = pool.volumes.allocated.get(name);
    if (!exact && hit && now - hit.at < 1000) return hit.bytes;
    const bytes = pool.driver.allocated(name);
    pool.volumes.allocated.set(name, { bytes, at: now });
    return bytes;
  }

  #dependents(ref: string): string[] {
    const out: string[] = [];
    for (const p of this.#pools.values()) for (const m of p.volumes.values()) if (m.backing === ref) out.push(volumeRef(p.def.name, m.name));
    return out;
  }

  async #update(pool: Pool, meta: VolumeMeta, change: Partial<VolumeMeta>): Promise<VolumeView> {
    const next: VolumeMeta = { ...meta, ...change, updatedAt: new Date().toISOString() };
    await pool.driver.writeMeta(next);
    pool.volumes.set(next.name, next);
    await this.#event('volume.updated', pool, next, change);
    return this.#volumeView(pool, next);
  }

  async #exclusive<T>(ref: string, fn: () => Promise<T>): Promise<T> {
    if (this.#busy.has(ref)) throw new NovaError('VOLUME_IN_USE', `volume ${ref} is being changed by another request`);
    this.#busy.add(ref);
    try {
      return await fn();
    } finally {
      this.#busy.delete(ref);
    }
  }

  async #event(type: 'volume.created' | 'volume.deleted' | 'volume.updated', pool: Pool, meta: VolumeMeta, data: Record<string, unknown> = {}): Promise<void> {
    await this.#deps.events.commit([], [{ type, tenant: meta.tenant, data: { pool: pool.def.name, volume: meta.name, format: meta.format, sizeBytes: meta.sizeBytes, ...data } }]);
  }
}

/** A pool's volumes by name, with the names kept sorted for paging (re-sorted only after a change). */
class VolumeIndex {
  #byName = new Map<string, VolumeMeta>();
  #sorted: string[] | undefined;
  /** Bytes on disk per volume, read at most once a second each (a page of 100 would be 100 stats otherwise). */
  readonly allocated = new Map<string, { bytes: number; at: number }>();
  /** Each volume's list entry as JSON, for the metadata it was built from, at most a second old. */
  readonly json = new Map<string, { meta: VolumeMeta; json: string; at: number }>();

  constructor(metas: VolumeMeta[] = []) {
    for (const m of metas) this.#byName.set(m.name, m);
  }

  get size(): number {
    return this.#byName.size;
  }

  get(name: string): VolumeMeta | undefined {
    return this.#byName.get(name);
  }

  has(name: string): boolean {
    return this.#byName.has(name);
  }

  set(name: string, meta: VolumeMeta): void {
    if (!this.#byName.has(name)) this.#sorted = undefined;
    this.#byName.set(name, meta);
  }

  delete(name: string): void {
    if (this.#byName.delete(name)) this.#sorted = undefined;
    this.allocated.delete(name);
    this.json.delete(name);
  }

  values(): IterableIterator<VolumeMeta> {
    return this.#byName.values();
  }

  sortedNames(): string[] {
    return (this.#sorted ??= [...this.#byName.keys()].sort());
  }
}

/** The index of the first name greater than `key`. */
function upperBound(names: string[], key: string): number {
  let lo = 0;
  let hi = names.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (names[mid]! <= key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
