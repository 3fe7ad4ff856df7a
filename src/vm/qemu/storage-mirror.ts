/**
 * Live storage migration with QEMU's own block layer: the destination QEMU (waiting for
 * its incoming migration) exports its fresh disk copies over NBD on a unix socket; the
 * source QEMU `drive-mirror`s each local disk into them (through NovaCron's tunnel).
 * Once every mirror is ready the RAM migration runs; at pre-switchover, with the guest
 * paused, the mirrors are completed (`block-job-cancel` of a ready mirror copies what is
 * left and leaves the target consistent), and only then is the device state sent.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { DriverError, type MirroredDisk, type MirrorProgress, type StorageMigration } from '../driver.js';
import type { QmpClient } from './qmp.js';

export interface MirrorHost {
  vmDir(vmId: string): string;
  instance(vmId: string): Promise<{ qmp: QmpClient }>;
}

interface QueryBlock {
  device: string;
  inserted?: { 'node-name': string; image?: { 'actual-size'?: number } };
}
interface QueryJob {
  id: string;
  type: string;
  status: string;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}
interface QueryBlockJob {
  device: string;
  ready: boolean;
  offset: number;
  len: number;
}

const jobId = (disk: string) => `mirror-${disk}`;
const EXPORT_PREFIX = 'nc-mig-';

export class QemuStorageMirror implements StorageMigration {
  /** vmId → the mirror jobs this daemon started. */
  #jobs = new Map<string, string[]>();

  constructor(private readonly host: MirrorHost) {}

  async exportDisks(vmId: string, disks: string[]): Promise<string> {
    const { qmp } = await this.host.instance(vmId);
    const socketPath = join(this.host.vmDir(vmId), 'nbd-in.sock');
    rmSync(socketPath, { force: true });
    const blocks = await qmp.execute<QueryBlock[]>('query-block');
    // nbd-server-start still takes the legacy (nested) socket address form.
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: socketPath } } });
    for (const name of disks) {
      const node = blocks.find((b) => b.device === `drive-${name}`)?.inserted?.['node-name'];
      if (!node) throw new DriverError('migrate-storage', `the destination VM has no disk "${name}" to receive into`);
      // Exporting activates the image (inactive while a migration is incoming) for writing.
      await qmp.execute('block-export-add', { type: 'nbd', id: EXPORT_PREFIX + name, 'node-name': node, name, writable: true });
    }
    return socketPath;
  }

  async unexportDisks(vmId: string): Promise<void> {
    const { qmp } = await this.host.instance(vmId);
    const exports = await qmp.execute<Array<{ id: string }>>('query-block-exports').catch(() => []);
    for (const e of exports) if (e.id.startsWith(EXPORT_PREFIX)) await qmp.execute('block-export-del', { id: e.id }).catch(() => undefined);
    await qmp.execute('nbd-server-stop').catch(() => undefined);
  }

  async startMirrors(vmId: string, disks: MirroredDisk[], socketPath: string): Promise<void> {
    const { qmp } = await this.host.instance(vmId);
    // A daemon that died mid-mirror leaves its jobs in QEMU (finished ones are kept for
    // their error): clear them so the ids are free again.
    const ids = disks.map((d) => jobId(d.name));
    const stale = (await qmp.execute<QueryJob[]>('query-jobs')).filter((j) => ids.includes(j.id)).map((j) => j.id);
    for (const id of stale) await qmp.execute('block-job-cancel', { device: id, force: true }).catch(() => undefined);
    if (stale.length > 0) await this.#settle(qmp, stale, 30_000);
    const started: string[] = [];
    this.#jobs.set(vmId, started);
    for (const d of disks) {
      await qmp.execute('drive-mirror', {
        'job-id': jobId(d.name),
        device: `drive-${d.name}`,
        target: `nbd+unix:///${encodeURIComponent(d.name)}?socket=${socketPath}`,
        format: 'raw', // the export shows the guest's view of the disk
        mode: 'existing',
        sync: d.sync,
        'auto-dismiss': false, // keep a finished job around so its error can be read
      });
      started.push(jobId(d.name));
    }
  }

  async allocatedBytes(vmId: string, disks: string[]): Promise<number> {
    const { qmp } = await this.host.instance(vmId);
    const blocks = await qmp.execute<QueryBlock[]>('query-block');
    return disks.reduce((sum, name) => sum + (blocks.find((b) => b.device === `drive-${name}`)?.inserted?.image?.['actual-size'] ?? 0), 0);
  }

  async mirrorProgress(vmId: string): Promise<MirrorProgress> {
    const { qmp } = await this.host.instance(vmId);
    const ours = this.#jobs.get(vmId) ?? [];
    const jobs = await qmp.execute<QueryJob[]>('query-jobs');
    const blockJobs = await qmp.execute<QueryBlockJob[]>('query-block-jobs');
    let copied = 0;
    let total = 0;
    let ready = ours.length > 0;
    for (const id of ours) {
      const job = jobs.find((j) => j.id === id);
      if (!job || job.status === 'concluded' || job.status === 'aborting' || job.status === 'null') {
        throw new DriverError('migrate-storage', `mirror ${id} stopped: ${job?.error ?? job?.status ?? 'gone'}`);
      }
      copied += job['current-progress'];
      total += job['total-progress'];
      ready &&= blockJobs.find((b) => b.device === id)?.ready === true;
    }
    return { ready, copiedBytes: copied, totalBytes: total };
  }

  async completeMirrors(vmId: string, timeoutMs: number): Promise<Pick<MirrorProgress, 'copiedBytes' | 'totalBytes'>> {
    const { qmp } = await this.host.instance(vmId);
    const ours = this.#jobs.get(vmId) ?? [];
    // The guest is paused while this runs: end every mirror at once.
    await Promise.all(ours.map((id) => qmp.execute('block-job-cancel', { device: id })));
    const { errors, copiedBytes, totalBytes } = await this.#settle(qmp, ours, timeoutMs);
    this.#jobs.delete(vmId);
    if (errors.length > 0) throw new DriverError('migrate-storage', `finishing the disk mirrors failed: ${errors.join('; ')}`);
    return { copiedBytes, totalBytes };
  }

  async cancelMirrors(vmId: string): Promise<void> {
    const ours = this.#jobs.get(vmId);
    if (!ours) return;
    this.#jobs.delete(vmId);
    const { qmp } = await this.host.instance(vmId);
    for (const id of ours) await qmp.execute('block-job-cancel', { device: id, force: true }).catch(() => undefined);
    await this.#settle(qmp, ours, 30_000).catch(() => undefined);
  }

  /** Waits for the jobs to conclude, dismisses them, and returns their errors and final progress. */
  async #settle(qmp: QmpClient, ids: string[], timeoutMs: number): Promise<{ errors: string[]; copiedBytes: number; totalBytes: number }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const jobs = (await qmp.execute<QueryJob[]>('query-jobs')).filter((j) => ids.includes(j.id));
      if (jobs.every((j) => j.status === 'concluded')) {
        await Promise.all(jobs.map((j) => qmp.execute('job-dismiss', { id: j.id }).catch(() => undefined)));
        return {
          errors: jobs.flatMap((j) => (j.error ? [`${j.id}: ${j.error}`] : [])),
          copiedBytes: jobs.reduce((n, j) => n + j['current-progress'], 0),
          totalBytes: jobs.reduce((n, j) => n + j['total-progress'], 0),
        };
      }
      if (Date.now() > deadline) throw new DriverError('migrate-storage', `disk mirrors did not finish within ${timeoutMs} ms`);
      await qmp.nextEvent(['JOB_STATUS_CHANGE'], 10);
    }
  }
}
