/**
 * The VM spec schema: what a client may ask for. Validated with zod at the API edge;
 * the inferred types are the domain types.
 */
import { z } from 'zod';
import { PoolName, VolumeRef } from '../storage/model.js';

export const VM_NAME_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const LABEL_KEY = /^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;

const name = z.string().regex(VM_NAME_PATTERN, 'must be a DNS label: lowercase letters, digits and "-", 1-63 chars');
/**
 * A VM disk is a volume: an existing one (`volume: "pool/name"`), or a new one made with
 * the VM in `pool` (`sizeMiB`, optionally a linked clone `from` another volume) and
 * deleted with it unless kept. A spec never names a host path.
 */
export const DiskSpec = z.strictObject({
  name: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,31}$/, 'lowercase letters, digits, "-" and "_"'),
  /** An existing volume, attached as it is. */
  volume: VolumeRef.optional(),
  /** New volume: the pool it is made in (default: the daemon's default pool, `local`). */
  pool: PoolName.optional(),
  /** New volume: size in MiB (a linked clone defaults to its base's size). */
  sizeMiB: z.int().min(1).max(64 * 1024 * 1024).optional(),
  /** New volume: its format (default qcow2). An existing volume's format is its own. */
  format: z.enum(['qcow2', 'raw']).optional(),
  /** New volume: a qcow2 overlay on this volume (a linked clone). */
  from: VolumeRef.optional(),
  bus: z.enum(['virtio', 'scsi', 'ide']).default('virtio'),
  readOnly: z.boolean().default(false),
});

export const NicSpec = z.strictObject({
  name: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,14}$/),
  mode: z.enum(['user', 'bridge']).default('user'),
  bridge: z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/).optional(),
  mac: z.string().regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/).optional(),
  model: z.enum(['virtio', 'e1000']).default('virtio'),
  /**
   * User mode only. Restricted (the default, QEMU's `restrict=on`): the guest gets its
   * DHCP lease and reaches nothing on the host or beyond it. `false` lets the guest open
   * connections out through the host, including to the host's loopback services (QEMU
   * maps the gateway 10.0.2.2 onto 127.0.0.1); refused while the daemon's API has no token.
   */
  restrict: z.boolean().optional(),
});

export const BootSpec = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('disk'), disk: z.string().optional() }),
  /** Direct kernel boot from `kernel` volumes. */
  z.strictObject({ type: z.literal('kernel'), kernel: VolumeRef, initrd: VolumeRef.optional(), cmdline: z.string().max(4096).default('') }),
]);

/** cloud-init NoCloud data, given to the guest as a seed CD-ROM labelled `cidata`. */
export const CloudInitSpec = z.strictObject({
  /** user-data as the guest's cloud-init reads it (usually `#cloud-config` YAML or a script). */
  userData: z.string().max(64 * 1024).default(''),
  /** Extra meta-data keys (instance-id is the VM's id, local-hostname its hostname). */
  metaData: z
    .record(z.string().regex(/^[a-z][a-z0-9_-]{0,63}$/), z.string().max(1024))
    .refine((m) => Object.keys(m).length <= 32, 'at most 32 meta-data keys')
    .optional(),
  /** network-config (version 1 or 2 YAML). */
  networkConfig: z.string().max(16 * 1024).optional(),
  /** SSH public keys (meta-data public-keys). */
  sshKeys: z.array(z.string().regex(/^[a-z0-9@.-]{3,64} [A-Za-z0-9+/=]{16,16384}( [^\n\r]{0,256})?$/, 'an SSH public key: TYPE BASE64 [COMMENT]')).max(32).optional(),
  /** The guest's hostname (default: the VM's name). */
  hostname: z.string().regex(VM_NAME_PATTERN).optional(),
});
export type CloudInitSpec = z.infer<typeof CloudInitSpec>;

const labels = z
  .record(z.string().regex(LABEL_KEY, 'invalid label key'), z.string().max(63))
  .refine((l) => Object.keys(l).length <= 64, 'at most 64 labels')
  .default({});

export const VmSpecFields = {
  vcpus: z.int().min(1).max(512),
  memoryMiB: z.int().min(16).max(16 * 1024 * 1024),
  /** Guest RAM: anonymous memory, or a file on hugetlbfs (the daemon's hugepagesPath). */
  memoryBacking: z.enum(['anonymous', 'hugepages']).default('anonymous'),
  /** An `iso` volume attached as a read-only CD-ROM. */
  cdrom: VolumeRef.optional(),
  disks: z.array(DiskSpec).max(32).default([]),
  nics: z.array(NicSpec).max(16).default([]),
  boot: BootSpec.default({ type: 'disk' }),
  cloudInit: CloudInitSpec.optional(),
  labels,
  tenant: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/).default('default'),
};

export const CreateVmRequest = z.strictObject({ name, ...VmSpecFields });

/** A new VM from a template VM: its spec, with disks that are linked clones (qcow2 overlays on the template's volumes) or full copies. */
export const FromTemplateRequest = z.strictObject({
  name,
  fromTemplate: z.string().min(1).max(64),
  linked: z.boolean().default(true),
  labels: VmSpecFields.labels.optional(),
});
export type FromTemplateRequest = z.infer<typeof FromTemplateRequest>;

/** PATCH: any subset of the mutable fields (name and tenant are fixed). */
export const PatchVmRequest = z
  .strictObject({
    vcpus: VmSpecFields.vcpus.optional(),
    memoryMiB: VmSpecFields.memoryMiB.optional(),
    memoryBacking: z.enum(['anonymous', 'hugepages']).optional(),
    cdrom: VolumeRef.optional(),
    disks: z.array(DiskSpec).max(32).optional(),
    nics: z.array(NicSpec).max(16).optional(),
    boot: BootSpec.optional(),
    cloudInit: CloudInitSpec.optional(),
    labels: z.record(z.string().regex(LABEL_KEY), z.string().max(63)).optional(),
  })
  .refine((p) => Object.keys(p).length > 0, 'patch must change at least one field');

export type CreateVmRequest = z.infer<typeof CreateVmRequest>;
export type PatchVmRequest = z.infer<typeof PatchVmRequest>;
export type VmSpec = Omit<CreateVmRequest, 'name'>;
export type DiskSpec = z.infer<typeof DiskSpec>;

/** The volume a disk is: the one it names, or the one made for it with the VM (`<vmId>-<disk>` in its pool). */
export function diskVolume(vmId: string, disk: DiskSpec, defaultPool: string): { ref: string; owned: boolean } {
  if (disk.volume) return { ref: disk.volume, owned: false };
  return { ref: `${disk.pool ?? defaultPool}/${vmId}-${disk.name}`, owned: true };
}
export type NicSpec = z.infer<typeof NicSpec>;

/** A user-mode NIC through which the guest can reach the host's loopback (and the outside). */
export function unrestrictedUserNic(n: NicSpec): boolean {
  return n.mode === 'user' && n.restrict === false;
}

/**
 * Cross-field rules zod cannot express per field. Returns human-readable problems;
 * an empty list means the spec is consistent (→ 422 VM_SPEC_INVALID otherwise).
 */
export function semanticProblems(spec: VmSpec): string[] {
  const problems: string[] = [];
  const dup = (items: { name: string }[], what: string) => {
    const seen = new Set<string>();
    for (const i of items) {
      if (seen.has(i.name)) problems.push(`duplicate ${what} name "${i.name}"`);
      seen.add(i.name);
    }
  };
  dup(spec.disks, 'disk');
  dup(spec.nics, 'nic');
  for (const d of spec.disks) {
    if (d.volume !== undefined) {
      for (const k of ['pool', 'sizeMiB', 'format', 'from'] as const) if (d[k] !== undefined) problems.push(`disk "${d.name}": ${k} is only for a new volume, not with volume`);
    } else if (d.sizeMiB === undefined && d.from === undefined) {
      problems.push(`disk "${d.name}" needs a volume, or sizeMiB (or from) for a new one`);
    }
    if (d.from !== undefined && d.format === 'raw') problems.push(`disk "${d.name}": a linked clone (from) must be qcow2`);
  }
  for (const n of spec.nics) {
    if (n.mode === 'bridge' && !n.bridge) problems.push(`nic "${n.name}": bridge mode needs a bridge name`);
    if (n.mode === 'user' && n.bridge) problems.push(`nic "${n.name}": bridge is only valid in bridge mode`);
    if (n.mode === 'bridge' && n.restrict !== undefined) problems.push(`nic "${n.name}": restrict is only valid in user mode`);
  }
  if (spec.boot.type === 'disk') {
    const bootDisk = spec.boot.disk;
    if (spec.disks.length === 0) problems.push('disk boot needs at least one disk');
    else if (bootDisk && !spec.disks.some((d) => d.name === bootDisk)) problems.push(`boot disk "${bootDisk}" is not one of the VM's disks`);
  }
  return problems;
}
