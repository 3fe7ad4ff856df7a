/**
 * The `host` pool: host paths the operator listed in the config file (`hostPaths`), such
 * as an LVM logical volume or a disk the host already has — the only way a VM may use a
 * path outside a pool, and never from the API alone. Each listed path is a volume whose
 * name, format and tenant come from the config; the API cannot create, change or delete
 * any. `target` checks that the path still resolves to what it resolved to at start (a
 * symlink swapped afterwards is refused).
 */
import { realpathSync, statSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { createReadStream } from 'node:fs';
import { NovaError } from '../errors.js';
import type { PoolDef, VolumeMeta } from './model.js';
import type { BlockTarget, ImageInfo, PoolDriver, PoolSpace, StagedWrite } from './pool-driver.js';
import type { QemuImg } from './qemu-img.js';

export interface HostPath {
  name: string;
  path: string;
  format: 'raw' | 'qcow2';
  tenant: string;
}

export const HOST_POOL = 'host';

const refuse = (what: string) => new NovaError('POOL_CONTENT_REFUSED', `the ${HOST_POOL} pool holds only the host paths listed in the daemon's config file; it cannot ${what}`);

export class HostPool implements PoolDriver {
  readonly root = '(host paths listed in the config file)';
  #paths = new Map<string, HostPath & { real: string; size: number }>();

  constructor(
    readonly def: PoolDef,
    private readonly listed: HostPath[],
    private readonly img: QemuImg,
  ) {}

  async open(): Promise<VolumeMeta[]> {
    const now = new Date().toISOString();
    const metas: VolumeMeta[] = [];
    for (const p of this.listed) {
      let real: string;
      let size: number;
      try {
        real = realpathSync(p.path);
        const st = statSync(real);
        if (!st.isFile() && !st.isBlockDevice()) throw new Error('not a regular file or a block device');
        size = st.isFile() ? st.size : Number((await this.img.info(real, 'raw'))['virtual-size'] ?? 0);
      } catch (err) {
        throw new NovaError('CONFIG_INVALID', `hostPaths: ${p.path} cannot be used: ${(err as Error).message}`);
      }
      this.#paths.set(p.name, { ...p, real, size });
      metas.push({ name: p.name, format: p.format, content: 'disk', sizeBytes: size, tenant: p.tenant, createdAt: now, updatedAt: now });
    }
    return metas;
  }

  async scan(): Promise<VolumeMeta[]> {
    return this.open();
  }

  async status(): Promise<PoolSpace> {
    let total = 0;
    for (const p of this.#paths.values()) total += p.size;
    return { capacityBytes: total, usedBytes: total, freeBytes: 0 };
  }

  allocated(name: string): number {
    return this.#paths.get(name)?.size ?? 0;
  }

  async writeMarker(): Promise<void> {
    throw refuse('be shared');
  }

  readMarker(): string | undefined {
    return undefined;
  }

  readMeta(): VolumeMeta | undefined {
    return undefined;
  }

  async writeMeta(): Promise<void> {
    throw refuse('record volumes');
  }

  async removeMeta(): Promise<void> {
    throw refuse('remove volumes');
  }

  async create(): Promise<void> {
    throw refuse('make volumes');
  }

  async copyFrom(): Promise<void> {
    throw refuse('take copies');
  }

  async resize(): Promise<void> {
    throw refuse('resize volumes');
  }

  async remove(): Promise<void> {
    throw refuse('remove volumes');
  }

  target(name: string): BlockTarget {
    const p = this.#paths.get(name);
    if (!p) throw new NovaError('VOLUME_NOT_FOUND', `no host path "${name}" is listed`);
    let now: string;
    try {
      now = realpathSync(p.path);
    } catch {
      throw new NovaError('VOLUME_PATH_REFUSED', `host path ${p.path} is gone`);
    }
    if (now !== p.real) throw new NovaError('VOLUME_PATH_REFUSED', `host path ${p.path} resolves to ${now} now, not ${p.real} as at start`);
    return { kind: 'file', path: p.real };
  }

  exists(name: string): boolean {
    return this.#paths.has(name);
  }

  async stage(): Promise<StagedWrite> {
    throw refuse('take uploads');
  }

  async inspect(path: string, format?: 'raw' | 'qcow2'): Promise<ImageInfo> {
    const info = (await this.img.info(path, format)) as { format: string; 'virtual-size': number };
    return { format: info.format, virtualBytes: info['virtual-size'] };
  }

  read(name: string): Readable {
    return createReadStream(this.target(name).path, { highWaterMark: 1 << 20 });
  }
}
