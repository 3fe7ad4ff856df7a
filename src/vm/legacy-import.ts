/**
 * One-time migration of VMs whose specs still name host paths (NovaCron before storage
 * pools): their files become volumes of the `imported` pool (DIR/pools/imported) and
 * their specs name those volumes. Disks the VM owned (made in DIR/vms/<id>/) are moved
 * into the pool; files it used where they were (an image in place, a clone's base, a
 * kernel, an initrd, an ISO) are hard-linked into it — the same inode, so the VM sees the
 * same data — or copied when the link crosses filesystems. Block devices are not imported:
 * such a VM goes to `error` naming the device.
 */
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, linkSync, renameSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { PoolDef, type ContentType, type VolumeFormat } from '../storage/model.js';
import type { StorageService } from '../storage/service.js';
import type { VmRecord } from './record.js';
import type { DiskSpec, VmSpec } from './spec.js';

export const IMPORTED_POOL = 'imported';
const run = promisify(execFile);

/** A disk as specs held it before pools. */
interface LegacyDisk {
  name: string;
  sizeMiB?: number;
  format?: VolumeFormat;
  image?: string;
  clone?: boolean;
  bus?: DiskSpec['bus'];
  readOnly?: boolean;
}

export function isLegacy(spec: VmSpec): boolean {
  const s = spec as unknown as { disks: LegacyDisk[]; cdrom?: string; boot: { type: string; kernel?: string; initrd?: string } };
  return s.disks.some((d) => 'image' in d || 'clone' in d) || s.cdrom?.startsWith('/') === true || s.boot.kernel?.startsWith('/') === true || s.boot.initrd?.startsWith('/') === true;
}

export interface LegacyImportDeps {
  storage: StorageService;
  dataDir: string;
  log: Logger;
}

/** The spec `vm` has once its files are volumes of the imported pool; throws (with the reason) when it cannot be imported. */
export async function importLegacyVm(vm: VmRecord, deps: LegacyImportDeps): Promise<VmSpec> {
  const { storage } = deps;
  await storage.addPool(PoolDef.parse({ name: IMPORTED_POOL, path: `pools/${IMPORTED_POOL}` }));
  const pool = await storage.pool(IMPORTED_POOL);
  const tenant = vm.spec.tenant;
  const legacy = vm.spec as unknown as { disks: LegacyDisk[]; cdrom?: string; boot: { type: 'disk' | 'kernel'; disk?: string; kernel?: string; initrd?: string; cmdline?: string } };

  /** A host file used in place: one volume per path, shared by every VM that used it. */
  const external = async (path: string, format: VolumeFormat, content: ContentType): Promise<string> => {
    const st = statSync(path);
    if (!st.isFile()) throw new Error(`${path} is not a regular file (devices are not imported; give the VM a volume)`);
    const name = `img-${createHash('sha256').update(path).digest('hex').slice(0, 16)}`;
    const ref = `${IMPORTED_POOL}/${name}`;
    if (storage.find(ref)) return ref;
    const dest = join(pool.root, name);
    if (!existsSync(dest)) {
      try {
        linkSync(path, dest);
      } catch {
        deps.log.warn({ vmId: vm.id, path }, 'importing a host file by copying it (a hard link would cross filesystems)');
        copyFileSync(path, dest);
      }
    }
    await storage.register(IMPORTED_POOL, { name, format, content, sizeBytes: await virtualSize(dest, format), tenant });
    return ref;
  };

  const disks: DiskSpec[] = [];
  for (const d of legacy.disks) {
    const format = d.format ?? 'qcow2';
    const base = { name: d.name, bus: d.bus ?? 'virtio', readOnly: d.readOnly ?? false };
    if (d.image && !d.clone) {
      disks.push({ ...base, volume: await external(d.image, format, 'disk') });
      continue;
    }
    // The VM's own file: moved into the pool as the volume the new spec's disk names.
    const own = join(deps.dataDir, 'vms', vm.id, `disk-${d.name}.${format}`);
    const name = `${vm.id}-${d.name}`;
    const dest = join(pool.root, name);
    if (existsSync(own)) renameSync(own, dest);
    let backing: string | undefined;
    if (d.image && d.clone) {
      const baseFormat = (await imageFormat(d.image)) as VolumeFormat;
      backing = await external(d.image, baseFormat, 'disk');
      const basePath = join(pool.root, backing.slice(IMPORTED_POOL.length + 1));
      if (existsSync(dest)) await run('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', basePath, '-F', baseFormat, dest]);
    }
    if (!storage.find(`${IMPORTED_POOL}/${name}`) && existsSync(dest)) {
      await storage.register(IMPORTED_POOL, { name, format, content: 'disk', sizeBytes: await virtualSize(dest, format), tenant, owner: vm.id, ...(backing ? { backing } : {}) });
    }
    disks.push({ ...base, pool: IMPORTED_POOL, format, ...(d.sizeMiB ? { sizeMiB: d.sizeMiB } : {}) });
  }
  const spec: VmSpec = { ...vm.spec, disks };
  if (legacy.cdrom) spec.cdrom = await external(legacy.cdrom, 'raw', 'iso');
  if (legacy.boot.type === 'kernel' && legacy.boot.kernel) {
    spec.boot = {
      type: 'kernel',
      kernel: await external(legacy.boot.kernel, 'raw', 'kernel'),
      ...(legacy.boot.initrd ? { initrd: await external(legacy.boot.initrd, 'raw', 'kernel') } : {}),
      cmdline: legacy.boot.cmdline ?? '',
    };
  }
  return spec;
}

async function imageFormat(path: string): Promise<string> {
  // The base's own header says what it is; this probe runs once, at import, never on a volume QEMU opens.
  const { stdout } = await run('qemu-img', ['info', '-U', '--output=json', path]);
  return (JSON.parse(stdout) as { format: string }).format;
}

async function virtualSize(path: string, format: VolumeFormat): Promise<number> {
  const { stdout } = await run('qemu-img', ['info', '-U', '-f', format, '--output=json', path]);
  return (JSON.parse(stdout) as { 'virtual-size': number })['virtual-size'];
}
