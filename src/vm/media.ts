/**
 * A VM's storage, in the VM domain's terms: which volumes its spec uses, making and
 * removing the ones it owns, and resolving everything the hypervisor opens (disks,
 * CD-ROM, kernel, initrd) through the storage service's checks — the only way a driver
 * learns a path.
 */
import { NovaError } from '../errors.js';
import type { StorageService } from '../storage/service.js';
import { parseVolumeRef } from '../storage/model.js';
import type { DiskMedia, VmMedia } from './driver.js';
import type { VmRecord } from './record.js';
import { diskVolume, type DiskSpec, type VmSpec } from './spec.js';
import { buildSeedIso, seedFiles } from './cloud-init.js';

export type { DiskMedia, VmMedia } from './driver.js';

/** A volume a VM's spec uses, and in which role. */
export interface VmVolumeUse {
  ref: string;
  role: 'disk' | 'cdrom' | 'kernel' | 'initrd' | 'cidata';
  /** Made with the VM (deleted with it unless kept). */
  owned: boolean;
  disk?: DiskSpec;
}

const MiB = 1 << 20;

/** A disk move under way: the disk, its volume now and the one it moves to, and the VM's spec once moved. */
export interface MovePlan {
  vmId: string;
  disk: string;
  from: string;
  to: string;
  format: 'qcow2' | 'raw';
  /** The target's data file (a running VM's mirror writes it; a stopped VM's copy is staged, then renamed to it). */
  targetPath: string;
  spec: VmSpec;
}

export class VmStorage {
  constructor(readonly storage: StorageService) {}

  /** A new VM's spec with the defaults that depend on this daemon filled in (the pool and format of new disks). */
  normalize(spec: VmSpec): VmSpec {
    return { ...spec, disks: spec.disks.map((d) => this.normalizeDisk(d)) };
  }

  normalizeDisk(d: DiskSpec): DiskSpec {
    if (d.volume) return d;
    const pool = d.pool ?? (d.from ? parseVolumeRef(d.from)?.pool : undefined) ?? this.storage.defaultPool;
    return { ...d, pool, format: d.format ?? 'qcow2' };
  }

  /** Every volume the spec uses (for a VM with id `vmId`). */
  uses(vmId: string, spec: VmSpec): VmVolumeUse[] {
    const out: VmVolumeUse[] = spec.disks.map((d) => ({ ...diskVolume(vmId, d, this.storage.defaultPool), role: 'disk' as const, disk: d }));
    if (spec.cdrom) out.push({ ref: spec.cdrom, role: 'cdrom', owned: false });
    if (spec.boot.type === 'kernel') {
      out.push({ ref: spec.boot.kernel, role: 'kernel', owned: false });
      if (spec.boot.initrd) out.push({ ref: spec.boot.initrd, role: 'initrd', owned: false });
    }
    if (spec.cloudInit) out.push({ ref: this.seedRef(vmId), role: 'cidata', owned: true });
    return out;
  }

  /** The volume holding a VM's cloud-init seed (made at each start, deleted with the VM). */
  seedRef(vmId: string): string {
    return `${this.storage.defaultPool}/${vmId}-cidata`;
  }

  /** (Re)builds the VM's cloud-init seed from its spec before its hypervisor starts; drops it when the spec has none. */
  async prepareCloudInit(vm: VmRecord): Promise<void> {
    const ref = this.seedRef(vm.id);
    if (!vm.spec.cloudInit) {
      if (this.storage.find(ref)) await this.storage.discard(ref);
      return;
    }
    const files = seedFiles(vm, vm.spec.cloudInit);
    await this.storage.putContent(ref, { content: 'iso', tenant: vm.spec.tenant, owner: vm.id }, (path) => buildSeedIso(files, path));
  }

  /**
   * Refuses a spec whose volumes this VM may not use: each existing one must open for the
   * VM's tenant with the right content; new ones need a pool that takes disks (and their
   * base must open). `arriving`: volumes a migration is bringing (they are checked once made).
   */
  check(vmId: string, spec: VmSpec, opts: { arriving?: Set<string> } = {}): void {
    for (const use of this.uses(vmId, spec)) {
      if (use.role === 'cidata') continue; // made at start
      if (use.owned) {
        const d = use.disk!;
        const pool = parseVolumeRef(use.ref)!.pool;
        if (!this.storage.hasPool(pool)) throw new NovaError('POOL_NOT_FOUND', `disk "${d.name}": no pool "${pool}"`, { pool });
        if (d.from) this.storage.open(d.from, { tenant: spec.tenant, content: ['disk', 'template'], write: false });
        // A new VM's own volumes are made after this check; an arriving VM's must exist or be on their way.
        if (!opts.arriving && !this.storage.find(use.ref)) continue;
      }
      if (opts.arriving?.has(use.ref)) continue;
      this.storage.open(use.ref, { tenant: spec.tenant, ...slot(use) });
    }
  }

  /** Makes the volumes the VM owns that do not exist yet; on failure none of the new ones remain. */
  async provision(vm: VmRecord, disks: DiskSpec[] = vm.spec.disks): Promise<void> {
    const made: string[] = [];
    try {
      for (const d of disks) {
        const { ref, owned } = diskVolume(vm.id, d, this.storage.defaultPool);
        if (!owned || this.storage.find(ref)) continue;
        const { pool, name } = parseVolumeRef(ref)!;
        const base = d.from ? this.storage.find(d.from) : undefined;
        const sizeMiB = d.sizeMiB ?? Math.ceil((base?.sizeBytes ?? MiB) / MiB);
        await this.storage.create(pool, { name, sizeMiB, format: d.format ?? 'qcow2', content: 'disk', tenant: vm.spec.tenant }, { owner: vm.id, ...(d.from ? { backing: d.from } : {}) });
        made.push(ref);
      }
    } catch (err) {
      for (const ref of made.reverse()) await this.storage.discard(ref).catch(() => undefined);
      throw err;
    }
  }

  /** Refuses (VOLUME_IN_USE) to delete a VM whose own volumes other volumes are based on, unless they are kept. */
  assertReleasable(vm: VmRecord, { keepDisks }: { keepDisks: boolean }): void {
    if (keepDisks) return;
    for (const use of this.uses(vm.id, vm.spec)) if (use.owned && this.storage.find(use.ref)) this.storage.assertRemovable(use.ref, { exceptVm: vm.id });
  }

  /** The VM is gone: its own volumes go too, or (keepDisks) stay as ordinary volumes. */
  async release(vm: VmRecord, { keepDisks }: { keepDisks: boolean }): Promise<void> {
    for (const use of this.uses(vm.id, vm.spec)) {
      if (!use.owned || !this.storage.find(use.ref)) continue;
      if (keepDisks && use.role === 'disk') await this.storage.setOwner(use.ref, undefined);
      else await this.storage.remove(use.ref, { exceptVm: vm.id }); // (a cloud-init seed is no disk to keep)
    }
  }

  /**
   * Makes the target of moving disk `diskName` into `pool`: a volume of the same name,
   * format and size there, marked as the move's (a restarted daemon finds it). Refused
   * while another VM uses the disk's volume or another volume is based on it.
   */
  async prepareMove(vm: VmRecord, diskName: string, pool: string): Promise<MovePlan> {
    const { from, to, owned, src, name } = this.checkMove(vm, diskName, pool);
    const stopped = vm.state === 'stopped';
    await this.storage.create(
      pool,
      { name, sizeMiB: Math.ceil(src.sizeBytes / MiB), format: src.format, content: src.content, tenant: src.tenant },
      { arriving: vm.id, moving: { disk: diskName, from }, exactBytes: src.sizeBytes, reserveBytes: this.storage.allocatedBytes(from), skipData: stopped, ...(owned ? { owner: vm.id } : {}) },
    );
    return { vmId: vm.id, disk: diskName, from, to, format: src.format, targetPath: stopped ? '' : this.storage.dataPath(to), spec: movedSpec(vm.spec, diskName, pool, to, Math.ceil(src.sizeBytes / MiB)) };
  }

  /** Refuses a disk move that cannot work, before anything is made. */
  checkMove(vm: VmRecord, diskName: string, pool: string) {
    const d = vm.spec.disks.find((x) => x.name === diskName);
    if (!d) throw new NovaError('VM_SPEC_INVALID', `VM "${vm.name}" has no disk "${diskName}"`);
    const { ref: from, owned } = diskVolume(vm.id, d, this.storage.defaultPool);
    const src = this.storage.find(from);
    if (!src) throw new NovaError('VOLUME_NOT_FOUND', `disk "${diskName}": no volume ${from}`);
    const { pool: fromPool, name } = parseVolumeRef(from)!;
    if (pool === fromPool) throw new NovaError('VM_SPEC_INVALID', `disk "${diskName}" is already in pool ${pool}`);
    if (!this.storage.hasPool(pool)) throw new NovaError('POOL_NOT_FOUND', `no pool "${pool}"`, { pool });
    this.storage.assertRemovable(from, { exceptVm: vm.id });
    const to = `${pool}/${name}`;
    if (this.storage.find(to)) throw new NovaError('VOLUME_EXISTS', `pool ${pool} already has a volume ${name}`);
    return { from, to, owned, src, name };
  }

  /** A stopped VM's disk: a full copy into the target. */
  copyForMove(plan: MovePlan, opts: { bytesPerSec?: number; signal: AbortSignal; onProgress(p: { copiedBytes: number; totalBytes: number }): void }): Promise<void> {
    return this.storage.copyInto(plan.from, plan.to, opts);
  }

  /** The move failed or was cancelled: the disk stays on its volume; the target goes. */
  async abortMove(plan: MovePlan): Promise<void> {
    await this.storage.discard(plan.to);
  }

  /** The VM's spec names the target now: it is an ordinary volume, and the source goes. */
  async finishMove(plan: MovePlan): Promise<void> {
    await this.storage.arrived(plan.to);
    await this.storage.discard(plan.from);
  }

  /** Removes the volumes `disks` made for the VM (a hot-plug that failed). */
  async releaseDisks(vm: VmRecord, disks: DiskSpec[]): Promise<void> {
    for (const d of disks) {
      const { ref, owned } = diskVolume(vm.id, d, this.storage.defaultPool);
      if (owned) await this.storage.discard(ref);
    }
  }

  /** Volumes the VM owned that its new spec no longer uses stay, as ordinary volumes. */
  async disownDropped(before: VmRecord, after: VmRecord): Promise<void> {
    const kept = new Set(this.uses(after.id, after.spec).map((u) => u.ref));
    for (const use of this.uses(before.id, before.spec)) {
      if (use.owned && !kept.has(use.ref) && this.storage.find(use.ref)) await this.storage.setOwner(use.ref, undefined);
    }
  }

  /** What the hypervisor opens for the VM, each checked now (→ VOLUME_* errors). */
  media(vm: VmRecord): VmMedia {
    const { tenant } = vm.spec;
    const disks: DiskMedia[] = this.uses(vm.id, vm.spec)
      .filter((u) => u.role === 'disk')
      .map((u) => {
        const d = u.disk!;
        const v = this.storage.open(u.ref, { tenant, arrivingFor: vm.id, ...slot(u) });
        return { name: d.name, path: v.target.path, format: v.meta.format, bus: d.bus, readOnly: d.readOnly || v.meta.readOnly === true, ref: u.ref, owned: u.owned, backed: v.meta.backing !== undefined, shared: v.shared };
      });
    const file = (ref: string | undefined, role: VmVolumeUse['role']) => (ref ? this.storage.open(ref, { tenant, ...slot({ role }) }).target.path : undefined);
    const cdrom = file(vm.spec.cdrom, 'cdrom');
    const cidata = vm.spec.cloudInit ? file(this.seedRef(vm.id), 'cidata') : undefined;
    const kernel = vm.spec.boot.type === 'kernel' ? file(vm.spec.boot.kernel, 'kernel') : undefined;
    const initrd = vm.spec.boot.type === 'kernel' ? file(vm.spec.boot.initrd, 'initrd') : undefined;
    return { disks, ...(cdrom ? { cdrom } : {}), ...(cidata ? { cidata } : {}), ...(kernel ? { kernel } : {}), ...(initrd ? { initrd } : {}) };
  }

  /**
   * The volumes that travel with the VM in a migration: its writable disks in pools that
   * are not shared (a shared pool's volumes are already on every member). Read-only media
   * (kernel, initrd, CD-ROM, read-only disks) must exist on the destination as they are.
   */
  carried(vm: VmRecord): Array<{ ref: string; disk: DiskSpec; owned: boolean }> {
    return this.uses(vm.id, vm.spec)
      .filter((u) => u.role === 'disk' && !u.disk!.readOnly && !this.storage.isShared(parseVolumeRef(u.ref)!.pool))
      .map((u) => ({ ref: u.ref, disk: u.disk!, owned: u.owned }));
  }
}

/** The spec once disk `disk` is volume `to` of `pool`: an own disk keeps being one (in the new pool), an attached one names the new volume. */
export function movedSpec(spec: VmSpec, disk: string, pool: string, to: string, sizeMiB: number): VmSpec {
  return {
    ...spec,
    disks: spec.disks.map((d) => {
      if (d.name !== disk) return d;
      if (d.volume) return { ...d, volume: to };
      const { from: _base, ...own } = d; // the copy is whole: no backing any more
      return { ...own, pool, sizeMiB: own.sizeMiB ?? sizeMiB };
    }),
  };
}

/** What content and access a volume needs in each role. */
function slot(use: Pick<VmVolumeUse, 'role' | 'disk'>): { content: Array<'disk' | 'iso' | 'kernel' | 'template'>; write: boolean } {
  switch (use.role) {
    case 'disk':
      return { content: use.disk!.readOnly ? ['disk', 'template', 'iso'] : ['disk'], write: !use.disk!.readOnly };
    case 'cdrom':
    case 'cidata':
      return { content: ['iso'], write: false };
    case 'kernel':
    case 'initrd':
      return { content: ['kernel'], write: false };
  }
}
