/**
 * The pool driver seam: everything that depends on where a pool keeps its volumes. The
 * storage service (metadata cache, tenants, attachments, capacity rules) is the only
 * caller; it never builds a path itself. One contract suite
 * (test/unit/pool-driver-contract.test.ts) runs against every driver.
 *
 * How the planned drivers map onto it (docs/storage.md has the details):
 * - `dir`: a volume is a file `<root>/<name>`, its metadata `<root>/.novacron/volumes/<name>.json`.
 * - `lvm-thin`: a thin LV `<vg>/nc-<name>` in the pool's thin pool, metadata in LV tags;
 *   `target` is the LV's device node (under /dev/<vg>, the only device paths allowed).
 * - `rbd`: an RBD image `<rados-pool>/<name>`, metadata in `rbd image-meta`; `target` is
 *   `{kind: 'rbd'}`, opened by QEMU's own rbd driver (no host path at all).
 */
import type { Readable } from 'node:stream';
import type { PoolDef, VolumeFormat, VolumeMeta } from './model.js';

/** What QEMU opens for a volume. */
export type BlockTarget = { kind: 'file'; path: string };

export interface PoolSpace {
  capacityBytes: number;
  usedBytes: number;
  freeBytes: number;
}

/** A volume's content being written (an upload, a received migration): committed whole or not at all. */
export interface StagedWrite {
  /** Where the bytes go meanwhile (a file of the pool, never a volume's final place). */
  readonly path: string;
  /** Makes the staged content volume `name`'s. */
  commit(): Promise<void>;
  abort(): Promise<void>;
}

export interface ImageInfo {
  format: string;
  virtualBytes: number;
  /** Set when the image names a backing file or an external data file (refused for uploads). */
  backingFile?: string;
  dataFile?: string;
}

export interface PoolDriver {
  readonly def: PoolDef;
  /** Where the pool is on this host (for operators; never taken from a request). */
  readonly root: string;
  /** Prepares the pool (creates its directory) and reads every volume's metadata. */
  open(): Promise<VolumeMeta[]>;
  /** Every volume's metadata as the pool holds it now. */
  scan(): Promise<VolumeMeta[]>;
  status(): Promise<PoolSpace>;
  /** Bytes volume `name` takes on disk. */
  allocated(name: string): number;
  /** The shared-pool marker (see StorageService.checkSharedPools): written durably / read back. */
  writeMarker(token: string): Promise<void>;
  readMarker(): string | undefined;
  /** One volume's metadata as the pool holds it now (another member may have changed a shared pool). */
  readMeta(name: string): VolumeMeta | undefined;
  /** Durably records (or replaces) a volume's metadata. */
  writeMeta(meta: VolumeMeta): Promise<void>;
  removeMeta(name: string): Promise<void>;
  /** Makes an empty volume, or a qcow2 overlay on `backing`. */
  create(name: string, o: { format: VolumeFormat; sizeBytes: number; backing?: { target: BlockTarget; format: VolumeFormat } }): Promise<void>;
  /** Full copy of another volume (any pool) into new volume `name`. */
  copyFrom(src: { target: BlockTarget; format: VolumeFormat }, name: string, format: VolumeFormat, onPercent?: (pct: number) => void): Promise<void>;
  resize(name: string, format: VolumeFormat, sizeBytes: number): Promise<void>;
  remove(name: string): Promise<void>;
  /**
   * What QEMU opens for `name`, checked now: it must be this pool's own regular file (or
   * device), not a symlink out of the pool, a FIFO, a socket or a device. → VOLUME_PATH_REFUSED
   */
  target(name: string): BlockTarget;
  /** Whether the volume's data exists (metadata may exist alone while it is being received). */
  exists(name: string): boolean;
  stage(name: string): Promise<StagedWrite>;
  /** The image's own description (qemu-img info, never probing a volume we open). */
  inspect(path: string, format?: VolumeFormat): Promise<ImageInfo>;
  read(name: string): Readable;
}
