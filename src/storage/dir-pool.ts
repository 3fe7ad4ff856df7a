/**
 * The `dir` pool driver: volumes are files in one directory, their metadata JSON files in
 * `<root>/.novacron/volumes/`. Every write of data or metadata goes to a staging file and
 * is renamed into place after an fsync, so a crash leaves either the old state or the new
 * one; staging files left by a crash are removed on open.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, statfsSync } from 'node:fs';
import { chmod, open, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { NovaError } from '../errors.js';
import { syncDir, writeFileDurablyAsync } from '../util/durable-file.js';
import type { PoolDef, VolumeFormat, VolumeMeta } from './model.js';
import { VOLUME_NAME } from './model.js';
import type { BlockTarget, ImageInfo, PoolDriver, PoolSpace, StagedWrite } from './pool-driver.js';
import type { QemuImg } from './qemu-img.js';

const META_DIR = '.novacron/volumes';
const STAGE_PREFIX = '.stage-';

export class DirPool implements PoolDriver {
  readonly root: string;
  #realRoot = '';

  constructor(
    readonly def: PoolDef,
    root: string,
    private readonly img: QemuImg,
  ) {
    this.root = root;
  }

  async open(): Promise<VolumeMeta[]> {
    mkdirSync(join(this.root, META_DIR), { recursive: true, mode: 0o700 });
    this.#realRoot = realpathSync(this.root);
    // Staging files left by a crash of this daemon (in a shared pool, another member may be writing its own).
    if (!this.def.shared) {
      for (const dir of [this.root, join(this.root, META_DIR)]) {
        for (const f of readdirSync(dir)) if (f.startsWith(STAGE_PREFIX)) rmSync(join(dir, f), { force: true });
      }
    }
    return this.scan();
  }

  async scan(): Promise<VolumeMeta[]> {
    const metas: VolumeMeta[] = [];
    const dir = join(this.root, META_DIR);
    for (const f of readdirSync(dir)) {
      if (!f.endsWith('.json') || !VOLUME_NAME.test(f.slice(0, -5))) continue;
      try {
        metas.push(JSON.parse(readFileSync(join(dir, f), 'utf8')) as VolumeMeta);
      } catch {
        /* unreadable metadata: not a volume (reported by the service as missing) */
      }
    }
    return metas;
  }

  async status(): Promise<PoolSpace> {
    const fs = statfsSync(this.root);
    const fsSize = fs.blocks * fs.bsize;
    const capacityBytes = this.def.capacityGiB ? Math.min(fsSize, Math.round(this.def.capacityGiB * 2 ** 30)) : fsSize;
    return { capacityBytes, usedBytes: (fs.blocks - fs.bfree) * fs.bsize, freeBytes: fs.bavail * fs.bsize };
  }

  allocated(name: string): number {
    try {
      return statSync(this.#path(name)).blocks * 512;
    } catch {
      return 0;
    }
  }

  async writeMarker(token: string): Promise<void> {
    await writeDurably(join(this.root, '.novacron'), 'marker', token);
  }

  readMarker(): string | undefined {
    try {
      return readFileSync(join(this.root, '.novacron', 'marker'), 'utf8').trim();
    } catch {
      return undefined;
    }
  }

  readMeta(name: string): VolumeMeta | undefined {
    try {
      return JSON.parse(readFileSync(join(this.root, META_DIR, `${checkedName(name)}.json`), 'utf8')) as VolumeMeta;
    } catch {
      return undefined;
    }
  }

  async writeMeta(meta: VolumeMeta): Promise<void> {
    const dir = join(this.root, META_DIR);
    await writeDurably(dir, `${meta.name}.json`, JSON.stringify(meta, null, 1));
  }

  async removeMeta(name: string): Promise<void> {
    await rm(join(this.root, META_DIR, `${checkedName(name)}.json`), { force: true });
    await syncDir(join(this.root, META_DIR));
  }

  async create(name: string, o: { format: VolumeFormat; sizeBytes: number; backing?: { target: BlockTarget; format: VolumeFormat } }): Promise<void> {
    if (o.format === 'raw' && !o.backing) {
      // An empty sparse file is a whole raw volume at every instant: made in place ('wx' never replaces one).
      const path = this.#path(name);
      const fh = await open(path, 'wx', 0o600).catch((err: NodeJS.ErrnoException) => {
        throw err.code === 'EEXIST' ? new NovaError('VOLUME_EXISTS', `pool ${this.def.name} already holds a file named "${name}"`) : err;
      });
      try {
        await fh.truncate(o.sizeBytes);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await syncDir(this.root);
      return;
    }
    await this.#intoPlace(name, async (tmp) => {
      const args = ['create', '-q', '-f', o.format];
      if (o.backing) args.push('-b', o.backing.target.path, '-F', o.backing.format);
      args.push(tmp, String(o.sizeBytes));
      await this.img.run(args);
    });
  }

  async copyFrom(src: { target: BlockTarget; format: VolumeFormat }, name: string, format: VolumeFormat, onPercent: (pct: number) => void = () => undefined): Promise<void> {
    await this.#intoPlace(name, (tmp) => this.img.convert({ path: src.target.path, format: src.format }, { path: tmp, format }, { signal: new AbortController().signal, onPercent }));
  }

  async resize(name: string, format: VolumeFormat, sizeBytes: number): Promise<void> {
    await this.img.run(['resize', '-q', '-f', format, this.target(name).path, String(sizeBytes)]);
  }

  async remove(name: string): Promise<void> {
    await rm(this.#path(name), { force: true });
    await syncDir(this.root);
  }

  target(name: string): BlockTarget {
    const path = this.#path(name);
    let st;
    try {
      st = lstatSync(path);
    } catch {
      throw new NovaError('VOLUME_NOT_FOUND', `volume ${this.def.name}/${name} has no data in the pool`);
    }
    let real = path;
    if (st.isSymbolicLink()) {
      try {
        real = realpathSync(path);
      } catch {
        throw refused(this.def.name, name, 'it is a dangling symbolic link');
      }
      if (!real.startsWith(`${this.#realRoot}/`)) throw refused(this.def.name, name, 'it is a symbolic link out of the pool');
      st = statSync(real);
    }
    if (st.isFIFO()) throw refused(this.def.name, name, 'it is a FIFO');
    if (st.isSocket()) throw refused(this.def.name, name, 'it is a socket');
    if (st.isBlockDevice() || st.isCharacterDevice()) throw refused(this.def.name, name, 'it is a device');
    if (!st.isFile()) throw refused(this.def.name, name, 'it is not a regular file');
    return { kind: 'file', path: real };
  }

  exists(name: string): boolean {
    return existsSync(this.#path(name));
  }

  async stage(name: string): Promise<StagedWrite> {
    checkedName(name);
    const path = join(this.root, `${STAGE_PREFIX}${name}-${randomBytes(4).toString('hex')}`);
    const final = this.#path(name);
    const root = this.root;
    return {
      path,
      async commit() {
        const fh = await open(path, 'r+');
        try {
          await fh.sync();
        } finally {
          await fh.close();
        }
        await rename(path, final);
        await syncDir(root);
      },
      async abort() {
        await rm(path, { force: true });
      },
    };
  }

  async inspect(path: string, format?: VolumeFormat): Promise<ImageInfo> {
    const info = (await this.img.info(path, format)) as {
      format: string;
      'virtual-size': number;
      'backing-filename'?: string;
      'format-specific'?: { data?: { 'data-file'?: string } };
    };
    return {
      format: info.format,
      virtualBytes: info['virtual-size'],
      ...(info['backing-filename'] ? { backingFile: info['backing-filename'] } : {}),
      ...(info['format-specific']?.data?.['data-file'] ? { dataFile: info['format-specific'].data['data-file'] } : {}),
    };
  }

  read(name: string): Readable {
    return createReadStream(this.target(name).path, { highWaterMark: 1 << 20 });
  }

  #path(name: string): string {
    return join(this.root, checkedName(name));
  }

  /** Makes the volume's data under a staging name, then renames it into place. */
  async #intoPlace(name: string, make: (tmp: string) => Promise<void>): Promise<void> {
    if (this.exists(name)) throw new NovaError('VOLUME_EXISTS', `pool ${this.def.name} already holds a file named "${name}"`);
    const staged = await this.stage(name);
    try {
      await make(staged.path);
      await chmod(staged.path, 0o600); // qemu-img makes files 0644; guests' disks are nobody else's
      await staged.commit();
    } catch (err) {
      await staged.abort();
      throw err;
    }
  }
}

function checkedName(name: string): string {
  if (!VOLUME_NAME.test(name)) throw new NovaError('VOLUME_PATH_REFUSED', `"${name}" is not a volume name`);
  return name;
}

function refused(pool: string, name: string, why: string): NovaError {
  return new NovaError('VOLUME_PATH_REFUSED', `volume ${pool}/${name} cannot be opened: ${why}`, { pool, volume: name });
}

/** Writes `name` in `dir` through a staging file: fsync, rename, fsync the directory. */
function writeDurably(dir: string, name: string, text: string): Promise<void> {
  return writeFileDurablyAsync(join(dir, name), text, { staging: join(dir, `${STAGE_PREFIX}${name}-${randomBytes(4).toString('hex')}`) });
}
