/**
 * Moving a running VM's disk to another file with QEMU's own block layer: the target is
 * added as a node, `blockdev-mirror` copies the disk into it while the guest keeps
 * writing (each write lands on both once the job is ready), and `job-complete` pivots the
 * guest's device onto the target atomically. Until the pivot the source is the disk;
 * cancelling or failing leaves it there. The job lives in QEMU, not in the daemon, so a
 * restarted daemon finds it (`currentFile`, `abandon`).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { DriverError, type DiskMover } from '../driver.js';
import type { QmpClient } from './qmp.js';

interface QueryJob {
  id: string;
  status: string;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}
interface QueryBlock {
  device: string;
  inserted?: { 'node-name': string; file: string };
}

const jobId = (disk: string) => `move-${disk}`;
const nodeName = (disk: string) => `move-target-${disk}`;

export class QemuDiskMover implements DiskMover {
  constructor(private readonly instance: (vmId: string) => Promise<{ qmp: QmpClient }>) {}

  async move(vmId: string, disk: string, target: { path: string; format: 'qcow2' | 'raw' }, opts: Parameters<DiskMover['move']>[3]): Promise<void> {
    const { qmp } = await this.instance(vmId);
    const id = jobId(disk);
    await qmp.execute('blockdev-add', { driver: target.format, 'node-name': nodeName(disk), file: { driver: 'file', filename: target.path } });
    let pivoted = false;
    try {
      await qmp.execute('blockdev-mirror', {
        'job-id': id, device: `drive-${disk}`, target: nodeName(disk), sync: 'full',
        ...(opts.bytesPerSec ? { speed: opts.bytesPerSec } : {}),
        'auto-finalize': true, 'auto-dismiss': false,
      });
      // Copy until the job is ready (source and target in step), reporting progress.
      for (;;) {
        if (opts.signal.aborted) throw new DriverError('move-disk', 'cancelled');
        const job = await this.#job(qmp, id);
        if (!job || job.status === 'concluded' || job.status === 'aborting') throw new DriverError('move-disk', `the mirror stopped: ${job?.error ?? job?.status ?? 'gone'}`);
        opts.onProgress({ copiedBytes: job['current-progress'], totalBytes: job['total-progress'] });
        if (job.status === 'ready') break;
        await sleep(100);
      }
      // The pivot: from here the guest's disk is the target.
      await qmp.execute('job-complete', { id });
      pivoted = true;
      const done = await this.#concluded(qmp, id, 60_000);
      if (done.error) throw new DriverError('move-disk', `the pivot failed: ${done.error}`);
      const now = await this.currentFile(vmId, disk);
      if (now !== target.path) throw new DriverError('move-disk', `after the pivot the disk is ${now ?? 'nowhere'}, not the target`);
    } catch (err) {
      if (!pivoted) {
        await qmp.execute('block-job-cancel', { device: id, force: true }).catch(() => undefined);
        await this.#concluded(qmp, id, 30_000).catch(() => undefined);
        await qmp.execute('blockdev-del', { 'node-name': nodeName(disk) }).catch(() => undefined);
      }
      throw err;
    } finally {
      await qmp.execute('job-dismiss', { id }).catch(() => undefined);
    }
  }

  async currentFile(vmId: string, disk: string): Promise<string | undefined> {
    const { qmp } = await this.instance(vmId);
    const blocks = await qmp.execute<QueryBlock[]>('query-block');
    return blocks.find((b) => b.device === `drive-${disk}`)?.inserted?.file;
  }

  async abandon(vmId: string, disk: string): Promise<void> {
    const { qmp } = await this.instance(vmId);
    const id = jobId(disk);
    if (await this.#job(qmp, id)) {
      await qmp.execute('block-job-cancel', { device: id, force: true }).catch(() => undefined);
      await this.#concluded(qmp, id, 30_000).catch(() => undefined);
      await qmp.execute('job-dismiss', { id }).catch(() => undefined);
    }
    await qmp.execute('blockdev-del', { 'node-name': nodeName(disk) }).catch(() => undefined);
  }

  async #job(qmp: QmpClient, id: string): Promise<QueryJob | undefined> {
    return (await qmp.execute<QueryJob[]>('query-jobs')).find((j) => j.id === id);
  }

  async #concluded(qmp: QmpClient, id: string, timeoutMs: number): Promise<QueryJob> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const job = await this.#job(qmp, id);
      if (!job) throw new DriverError('move-disk', `job ${id} vanished`);
      if (job.status === 'concluded') return job;
      if (Date.now() > deadline) throw new DriverError('move-disk', `job ${id} did not conclude within ${timeoutMs} ms`);
      await sleep(20);
    }
  }
}
