/**
 * Pools and volumes: the schemas (zod, validated at the config and API edges) and the
 * domain types. A pool is a named place for volumes; a volume is named `pool/volume`
 * everywhere a VM spec or a request refers to one — never by a host path.
 */
import { z } from 'zod';

export const MEDIA_CLASSES = ['fast', 'standard', 'capacity'] as const;
export type MediaClass = (typeof MEDIA_CLASSES)[number];
export const CONTENT_TYPES = ['disk', 'iso', 'kernel', 'template', 'backup'] as const;
export type ContentType = (typeof CONTENT_TYPES)[number];
export const VOLUME_FORMATS = ['qcow2', 'raw'] as const;
export type VolumeFormat = (typeof VOLUME_FORMATS)[number];
export const POOL_TYPES = ['dir'] as const;
/** `host`: the operator's allow-listed host paths (config `hostPaths`), never configured as a pool. */
export type PoolType = (typeof POOL_TYPES)[number] | 'host';

/** Pool names: a short lowercase label (no dots, slashes or commas). */
export const POOL_NAME = /^[a-z][a-z0-9-]{0,31}$/;
/**
 * Volume names: lowercase letters, digits, "-", "_" and single dots, not starting with a
 * dot — never a path component that escapes (`..`), never a QEMU option separator (`,`).
 */
export const VOLUME_NAME = /^[a-z0-9](?:[a-z0-9_-]|\.(?!\.)){0,95}$/;

export const PoolName = z.string().regex(POOL_NAME, 'a pool name: a lowercase letter, then letters, digits and "-" (at most 32)');
export const VolumeName = z.string().regex(VOLUME_NAME, 'a volume name: lowercase letters, digits, "-", "_" and single dots (at most 96), not starting with a dot');
/** `pool/volume`: how specs and requests name a volume (host paths are not accepted). */
export const VolumeRef = z
  .string()
  .max(130)
  .refine((s) => parseVolumeRef(s) !== undefined, 'must name a volume as "pool/volume" (host paths are not accepted: upload the file into a pool)');

export function parseVolumeRef(ref: string): { pool: string; name: string } | undefined {
  const slash = ref.indexOf('/');
  if (slash < 0) return undefined;
  const pool = ref.slice(0, slash);
  const name = ref.slice(slash + 1);
  return POOL_NAME.test(pool) && VOLUME_NAME.test(name) ? { pool, name } : undefined;
}

export const volumeRef = (pool: string, name: string): string => `${pool}/${name}`;

/**
 * A pool's tiering rules (volume-level: whole disks move): disks idle for `days` move to a
 * colder pool; disks above `iops` for `forMinutes` move to a faster one. Background moves
 * run one at a time at `bandwidthMBps`.
 */
export const PoolPolicy = z.strictObject({
  moveAfterIdleDays: z.strictObject({ days: z.number().positive().max(3650), to: PoolName }).optional(),
  moveWhenIopsAbove: z.strictObject({ iops: z.number().positive().max(10_000_000), to: PoolName, forMinutes: z.number().min(0).max(1440).default(10) }).optional(),
  bandwidthMBps: z.number().min(1).max(200).default(50),
});
export type PoolPolicy = z.infer<typeof PoolPolicy>;

export const PoolDef = z.strictObject({
  name: PoolName,
  type: z.enum(POOL_TYPES).default('dir'),
  /** `dir`: the directory; relative paths are under the daemon's data directory. */
  path: z.string().min(1).max(4000).refine((p) => !p.includes('\0'), 'no NUL bytes'),
  /** The same storage is mounted on every member (NFS, CephFS): volumes never need copying. */
  shared: z.boolean().default(false),
  mediaClass: z.enum(MEDIA_CLASSES).default('standard'),
  /** Cap on bytes stored; default: the filesystem's size. */
  capacityGiB: z.number().positive().max(1 << 30).optional(),
  content: z.array(z.enum(CONTENT_TYPES)).min(1).default([...CONTENT_TYPES]),
  /** Virtual sizes may add up to capacity × this (thin provisioning); default: unbounded. */
  overcommitRatio: z.number().min(1).max(1000).optional(),
  /** Tiering rules for the disks in this pool. */
  policy: PoolPolicy.optional(),
});
export type PoolDef = Omit<z.infer<typeof PoolDef>, 'type'> & { type: PoolType };

/**
 * A host path the operator allows VMs to use (config `hostPaths`): a path, or
 * `{path, name?, format?, tenant?}`. It becomes volume `host/<name>` (name: the path with
 * "/" as "-", e.g. `/dev/vg0/data` → `dev-vg0-data`).
 */
export const HostPathEntry = z.union([
  z.string(),
  z.strictObject({ path: z.string(), name: VolumeName.optional(), format: z.enum(VOLUME_FORMATS).default('raw'), tenant: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/).default('default') }),
]).transform((e, ctx) => {
  const o = typeof e === 'string' ? { path: e, format: 'raw' as const, tenant: 'default' } : e;
  if (!o.path.startsWith('/') || o.path.includes('\0')) {
    ctx.addIssue({ code: 'custom', message: `${o.path}: host paths must be absolute` });
    return z.NEVER;
  }
  const name = o.name ?? o.path.replace(/^\/+/, '').replace(/[^a-z0-9_.-]+/gi, '-').toLowerCase().replace(/\.\.+/g, '.').replace(/^[^a-z0-9]+/, '').slice(0, 96);
  if (!VOLUME_NAME.test(name)) {
    ctx.addIssue({ code: 'custom', message: `${o.path}: give it a name (no volume name can be derived)` });
    return z.NEVER;
  }
  return { path: o.path, name, format: o.format, tenant: o.tenant };
});

/** A volume's metadata, kept by the pool driver next to the volume (so a shared pool's members all see it). */
export interface VolumeMeta {
  name: string;
  format: VolumeFormat;
  content: ContentType;
  /** Virtual size (what the guest sees). */
  sizeBytes: number;
  tenant: string;
  /** The VM this volume was created with; it is deleted with that VM (unless kept). */
  owner?: string;
  /** The volume (`pool/name`) this qcow2 overlay is backed by. */
  backing?: string;
  /** Template volumes are never opened for writing. */
  readOnly?: boolean;
  /** Being received by a migration for this VM (or by a disk move): removed if it fails. */
  arriving?: string;
  /** The target of a disk move of VM `arriving`: which disk, from which volume. */
  moving?: { disk: string; from: string };
  /** SHA-256 of the content as uploaded. */
  sha256?: string;
  createdAt: string;
  updatedAt: string;
}

/** A volume as the API shows it. */
export interface VolumeView extends VolumeMeta {
  pool: string;
  ref: string;
  /** Bytes the volume takes on disk now. */
  allocatedBytes: number;
  /** VMs (ids) whose specs use it. */
  attachedTo: string[];
  /** Its backing volumes, nearest first. */
  backingChain: string[];
}

export interface PoolStatus {
  capacityBytes: number;
  /** Sum of the volumes' virtual sizes. */
  allocatedBytes: number;
  /** Bytes on disk. */
  usedBytes: number;
  freeBytes: number;
  volumes: number;
}

export interface PoolView extends PoolDef {
  /** The resolved location on this member. */
  root: string;
  /** Why this member may not use the pool (POOL_UNAVAILABLE); absent when it may. */
  unavailable?: string;
  status: PoolStatus;
}

export const CreateVolumeRequest = z.strictObject({
  name: VolumeName,
  sizeMiB: z.int().min(1).max(64 * 1024 * 1024),
  format: z.enum(VOLUME_FORMATS).default('qcow2'),
  content: z.enum(CONTENT_TYPES).default('disk'),
  tenant: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/).default('default'),
});
export type CreateVolumeRequest = z.infer<typeof CreateVolumeRequest>;

export const CloneVolumeRequest = z.strictObject({
  name: VolumeName,
  /** Target pool (default: the source's). A linked clone must stay where its base is reachable. */
  pool: PoolName.optional(),
  /** A qcow2 overlay on the source (fast, shares its data) or a full copy. */
  linked: z.boolean().default(false),
});
export type CloneVolumeRequest = z.infer<typeof CloneVolumeRequest>;

export const ResizeVolumeRequest = z.strictObject({ sizeMiB: z.int().min(1).max(64 * 1024 * 1024) });

export const UploadQuery = z.strictObject({
  format: z.enum(VOLUME_FORMATS).default('raw'),
  content: z.enum(CONTENT_TYPES).default('disk'),
  tenant: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/).default('default'),
  /** Expected SHA-256 (hex) of the body; a mismatch refuses the upload. */
  sha256: z.string().regex(/^[0-9a-f]{64}$/).optional(),
});
export type UploadQuery = z.infer<typeof UploadQuery>;
