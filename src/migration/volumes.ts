/**
 * The volumes a migration carries: a VM's writable disks in pools that are not shared
 * (a shared pool's volumes are on every member already). The source offers each with
 * its metadata; the destination makes it again in its pool of the same name — empty
 * for a live migration's mirror to fill, or as the file a cold migration sends — marked
 * as arriving until the VM is here (a failure removes it).
 */
import { z } from 'zod';
import { NovaError } from '../errors.js';
import { parseVolumeRef, VolumeRef } from '../storage/model.js';
import type { MirroredDisk } from '../vm/driver.js';
import { movedSpec, type VmStorage } from '../vm/media.js';
import type { VmRecord } from '../vm/record.js';
import type { VmSpec } from '../vm/spec.js';

export const OfferedVolume = z.strictObject({
  ref: VolumeRef,
  /** The disk of the VM's spec it is. */
  disk: z.string().max(32),
  format: z.enum(['qcow2', 'raw']),
  sizeBytes: z.int().min(1).max(2 ** 46),
  owned: z.boolean(),
  /** A qcow2 overlay on this volume, which must exist on the destination. */
  backing: VolumeRef.optional(),
  /** Bytes it takes on the source: the destination must have that much room. */
  allocatedBytes: z.int().min(0).max(2 ** 46).optional(),
});
export type OfferedVolume = z.infer<typeof OfferedVolume>;

/** A carried volume: where it is here (`source`), and how it is offered (its ref on the destination). */
export interface CarriedVolume {
  source: string;
  offer: OfferedVolume;
}

/**
 * Source: the volumes that travel with `vm`, each into the destination's pool of the same
 * name unless `pools` maps its pool elsewhere.
 */
export function volumesToCarry(storage: VmStorage, vm: VmRecord, pools: Record<string, string> = {}): CarriedVolume[] {
  return storage.carried(vm).map(({ ref, disk, owned }) => {
    const meta = storage.storage.find(ref);
    if (!meta) throw new NovaError('VOLUME_NOT_FOUND', `disk "${disk.name}": no volume ${ref}`);
    const { pool, name } = parseVolumeRef(ref)!;
    const to = `${pools[pool] ?? pool}/${name}`;
    return { source: ref, offer: { ref: to, disk: disk.name, format: meta.format, sizeBytes: meta.sizeBytes, owned, allocatedBytes: storage.storage.allocatedBytes(ref), ...(meta.backing ? { backing: meta.backing } : {}) } };
  });
}

/** The spec the destination records: each carried disk in its destination pool. */
export function offeredSpec(vm: VmRecord, carried: CarriedVolume[]): VmSpec {
  let spec = vm.spec;
  for (const c of carried) {
    if (c.offer.ref === c.source) continue;
    spec = movedSpec(spec, c.offer.disk, parseVolumeRef(c.offer.ref)!.pool, c.offer.ref, Math.ceil(c.offer.sizeBytes / (1 << 20)));
  }
  return spec;
}

/** Source: how each carried disk is mirrored (an overlay copies only its own data). */
export function mirroredDisks(volumes: CarriedVolume[]): MirroredDisk[] {
  return volumes.map(({ offer: v }) => ({ name: v.disk, sync: v.backing ? 'top' : 'full' }));
}

/**
 * Destination: checks that every offered volume is one of the spec's own disks (a source
 * cannot make arbitrary volumes here) and that the spec's other local disks are not
 * silently missing.
 */
export function checkOffered(storage: VmStorage, vmId: string, spec: VmSpec, volumes: OfferedVolume[]): Set<string> {
  const uses = new Map(storage.uses(vmId, spec).filter((u) => u.role === 'disk').map((u) => [u.disk!.name, u]));
  const refs = new Set<string>();
  for (const v of volumes) {
    const use = uses.get(v.disk);
    if (!use || use.ref !== v.ref || use.owned !== v.owned) throw new NovaError('MIGRATION_PROTOCOL', `offered volume ${v.ref} is not disk "${v.disk}" of the VM`);
    if (refs.has(v.ref)) throw new NovaError('MIGRATION_PROTOCOL', `volume ${v.ref} offered twice`);
    const pool = parseVolumeRef(v.ref)!.pool;
    if (!storage.storage.hasPool(pool)) throw new NovaError('POOL_NOT_FOUND', `this host has no pool "${pool}" for volume ${v.ref}`, { pool });
    if (storage.storage.isShared(pool)) throw new NovaError('MIGRATION_PROTOCOL', `volume ${v.ref} is in a pool that is shared here but not on the source`);
    refs.add(v.ref);
  }
  return refs;
}

/** Destination: makes the offered volumes (marked as arriving for the VM). `data: false` leaves their content to a cold migration's files. */
export async function makeArriving(storage: VmStorage, vm: VmRecord, volumes: OfferedVolume[], data: boolean): Promise<void> {
  for (const v of volumes) {
    const { pool, name } = parseVolumeRef(v.ref)!;
    await storage.storage.create(
      pool,
      { name, sizeMiB: Math.ceil(v.sizeBytes / (1 << 20)), format: v.format, content: 'disk', tenant: vm.spec.tenant },
      { arriving: vm.id, exactBytes: v.sizeBytes, reserveBytes: v.allocatedBytes ?? 0, ...(v.owned ? { owner: vm.id } : {}), ...(v.backing ? { backing: v.backing } : {}), skipData: !data },
    );
  }
}
