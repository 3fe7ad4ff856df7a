/**
 * Volume-level tiering: each pool's rules (`policy` in its config) move whole disks
 * between pools — idle for days → a colder pool, busy above an IOPS threshold for a while
 * → a faster one — driven by every running disk's block statistics (QEMU's blockstats,
 * sampled every `intervalMs`). Moves are ordinary `move-disk` operations, one at a time,
 * capped at the source pool's `bandwidthMBps`. `plan()` is the dry run: what it would move
 * now, and why.
 */
import type { Logger } from 'pino';
import type { PoolPolicy } from '../storage/model.js';
import { parseVolumeRef } from '../storage/model.js';
import type { VmStats } from './driver.js';
import type { VmRecord } from './record.js';
import { diskVolume } from './spec.js';

/** What the engine needs of the VM service and the storage service. */
export interface PolicyHost {
  vms(): Iterable<VmRecord>;
  stats(vm: VmRecord): Promise<VmStats | undefined>;
  defaultPool: string;
  policy(pool: string): PoolPolicy | undefined;
  hasPool(pool: string): boolean;
  moveDisk(vm: VmRecord, disk: string, to: { pool: string; bandwidthMBps: number }): Promise<{ id: string }>;
  operationDone(id: string): Promise<boolean>;
}

export interface PlannedMove {
  vmId: string;
  vmName: string;
  disk: string;
  from: string;
  to: string;
  reason: string;
  bandwidthMBps: number;
}

interface Activity {
  ops: number;
  sampledAt: number;
  /** The last time the disk did any I/O (or when tracking began: a restart never makes a disk look idle). */
  activeAt: number;
  iops: number;
  /** Since when the IOPS has been above the pool's threshold. */
  hotSince?: number;
}

export class DiskPolicyEngine {
  #activity = new Map<string, Activity>();
  #timer?: NodeJS.Timeout;
  #moving?: Promise<void>;

  constructor(
    private readonly host: PolicyHost,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  start(intervalMs: number): void {
    this.#timer = setInterval(() => void this.tick().catch((err) => this.log.warn({ err }, 'disk policy round failed')), intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** Samples every running VM's disks, then starts the first planned move (unless one runs). */
  async tick(): Promise<void> {
    await this.sample();
    if (this.#moving) return;
    const next = this.plan()[0];
    if (!next) return;
    const vm = [...this.host.vms()].find((v) => v.id === next.vmId);
    if (!vm) return;
    this.log.info({ vmId: next.vmId, disk: next.disk, from: next.from, to: next.to, reason: next.reason }, 'disk policy: moving a disk');
    const op = await this.host.moveDisk(vm, next.disk, { pool: parseVolumeRef(next.to)!.pool, bandwidthMBps: next.bandwidthMBps });
    this.#moving = (async () => {
      while (!(await this.host.operationDone(op.id))) await new Promise((r) => setTimeout(r, 1000));
    })().finally(() => (this.#moving = undefined));
  }

  /** Reads the block statistics of every running VM. */
  async sample(): Promise<void> {
    const t = this.now();
    for (const vm of this.host.vms()) {
      if (vm.state !== 'running') continue;
      const stats = await this.host.stats(vm).catch(() => undefined);
      for (const d of stats?.disks ?? []) this.observe(vm.id, d.name, d.readOps + d.writeOps, t);
    }
  }

  /** One sample of a disk's total operations at time `t`. */
  observe(vmId: string, disk: string, ops: number, t: number): void {
    const key = `${vmId}/${disk}`;
    const a = this.#activity.get(key);
    if (!a) {
      this.#activity.set(key, { ops, sampledAt: t, activeAt: t, iops: 0 });
      return;
    }
    const dt = (t - a.sampledAt) / 1000;
    const delta = Math.max(0, ops - a.ops);
    if (dt > 0) a.iops = delta / dt;
    if (delta > 0) a.activeAt = t;
    a.ops = ops;
    a.sampledAt = t;
  }

  /** The dry run: every disk a rule would move now, hot ones first. */
  plan(): PlannedMove[] {
    const t = this.now();
    const hot: PlannedMove[] = [];
    const cold: PlannedMove[] = [];
    for (const vm of this.host.vms()) {
      if (vm.template) continue;
      for (const d of vm.spec.disks) {
        const { ref } = diskVolume(vm.id, d, this.host.defaultPool);
        const pool = parseVolumeRef(ref)!.pool;
        const policy = this.host.policy(pool);
        if (!policy) continue;
        const a = this.#activity.get(`${vm.id}/${d.name}`) ?? { ops: 0, sampledAt: t, activeAt: t, iops: 0 };
        this.#activity.set(`${vm.id}/${d.name}`, a);
        const base = { vmId: vm.id, vmName: vm.name, disk: d.name, from: ref, bandwidthMBps: policy.bandwidthMBps };
        const up = policy.moveWhenIopsAbove;
        if (up && a.iops > up.iops) a.hotSince ??= t;
        else delete a.hotSince;
        if (up && a.hotSince !== undefined && t - a.hotSince >= up.forMinutes * 60_000 && up.to !== pool && this.host.hasPool(up.to)) {
          hot.push({ ...base, to: `${up.to}/${parseVolumeRef(ref)!.name}`, reason: `${Math.round(a.iops)} IOPS, above ${up.iops} for ${up.forMinutes} min` });
          continue;
        }
        const idle = policy.moveAfterIdleDays;
        if (idle && t - a.activeAt >= idle.days * 86_400_000 && idle.to !== pool && this.host.hasPool(idle.to)) {
          cold.push({ ...base, to: `${idle.to}/${parseVolumeRef(ref)!.name}`, reason: `no I/O for ${Math.floor((t - a.activeAt) / 86_400_000)} days (rule: ${idle.days})` });
        }
      }
    }
    return [...hot, ...cold];
  }
}
