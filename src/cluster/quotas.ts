/**
 * Per-tenant quotas on VMs (count, vCPUs, memory), enforced cluster-wide and atomically.
 *
 * A tenant's usage is what the cluster inventory places (every member publishes its VMs)
 * plus admissions not yet in it. An admission is checked and recorded under the tenant's
 * lock, and recorded with a write fenced by that lock's token, so two members admitting at
 * once cannot both see room that only one of them may take: the second waits for the lock,
 * or its fenced write is refused and it checks again. An admission counts for
 * `PENDING_MS` (by then the VM is in the inventory, or it was never made); a VM counts
 * until the inventory drops it.
 */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { NovaError } from '../errors.js';
import { prefixRange } from '../store/store.js';
import { clusterHosts, clusterPlacements } from './inventory.js';
import { PoolName } from '../storage/model.js';
import type { LockService } from './locks.js';
import type { ReplicatedStore } from './replicated-store.js';

export const QuotaLimits = z.strictObject({
  vms: z.int().min(0).max(1_000_000).optional(),
  vcpus: z.int().min(0).max(100_000_000).optional(),
  memoryMiB: z.int().min(0).max(2 ** 40).optional(),
  /** Outgoing migrations running at once. */
  migrations: z.int().min(0).max(10_000).optional(),
  /** Provisioned GiB (virtual sizes of volumes) per pool. */
  diskGiB: z.record(PoolName, z.number().min(0).max(2 ** 30)).optional(),
});
export type QuotaLimits = z.infer<typeof QuotaLimits>;
type Counted = 'vms' | 'vcpus' | 'memoryMiB' | 'migrations';
export type Usage = Record<Counted, number> & { diskBytes: Record<string, number> };
type Resource = Counted;

/** How long an admission counts without its VM in the inventory. */
export const PENDING_MS = 30_000;
/** How long a migration counts if its source never says it ended (a crashed member). */
export const MIGRATION_MS = 10 * 60_000;
const LOCK_TTL_MS = 5000;
const LOCK_WAIT_MS = 10_000;

const limitsKey = (t: string) => `quota/${t}/limits`;
const pendingPrefix = (t: string) => `quota/${t}/pending/`;
const migratingPrefix = (t: string) => `quota/${t}/migrating/`;
const diskPrefix = (t: string) => `quota/${t}/disk/`;
const GiB = 2 ** 30;

interface Pending {
  vmId: string;
  vcpus: number;
  memoryMiB: number;
  until: number;
}

/** QUOTA_EXCEEDED, naming each resource that `want` would take over its limit. */
function assertFits(tenant: string, limits: QuotaLimits, used: Usage, want: Partial<Usage>): void {
  const over = (Object.keys(want) as Resource[])
    .filter((r) => limits[r] !== undefined && used[r] + want[r]! > limits[r]!)
    .map((r) => ({ resource: r, limit: limits[r]!, used: used[r], requested: want[r]! }));
  if (over.length > 0) {
    throw new NovaError('QUOTA_EXCEEDED', `tenant "${tenant}" is over its quota: ${over.map((o) => `${o.resource} ${o.used} + ${o.requested} > ${o.limit}`).join(', ')}`, { tenant, over });
  }
}

export class Quotas {
  constructor(
    private readonly store: ReplicatedStore,
    private readonly locks: LockService,
    /** Who holds a tenant's lock while admitting (this member). */
    private readonly holder: string,
    /** Provisioned bytes of the shared pools, by tenant and pool (every member sees the same). */
    private readonly sharedDisk: () => Promise<Record<string, Record<string, number>>> = async () => ({}),
  ) {}

  /**
   * The tenant's limits. `stale` reads this member's copy (no quorum needed): admissions
   * use it to skip tenants without limits, so a member cut off from the majority still
   * creates their VMs; with limits, they read again under the lock.
   */
  async limits(tenant: string, stale = false): Promise<QuotaLimits | undefined> {
    const raw = await this.store.get(limitsKey(tenant), { stale });
    return raw ? (JSON.parse(raw.toString()) as QuotaLimits) : undefined;
  }

  async get(tenant: string): Promise<{ tenant: string; limits: QuotaLimits | null; usage: Usage }> {
    return { tenant, limits: (await this.limits(tenant)) ?? null, usage: await this.usage(tenant) };
  }

  async setLimits(tenant: string, limits: QuotaLimits | undefined): Promise<void> {
    await this.#locked(tenant, (fence) => this.store.write([{ key: limitsKey(tenant), ...(limits ? { value: Buffer.from(JSON.stringify(limits)) } : {}) }], { fence }));
  }

  /** The tenant's VMs in the inventory, plus admissions not yet in it (linearizable reads). */
  async usage(tenant: string, now = Date.now()): Promise<Usage> {
    const [placed, pending, migrating, hosts, shared, disk] = await Promise.all([
      clusterPlacements(this.store), this.store.scan(prefixRange(pendingPrefix(tenant))), this.store.scan(prefixRange(migratingPrefix(tenant))),
      clusterHosts(this.store), this.sharedDisk(), this.store.scan(prefixRange(diskPrefix(tenant))),
    ]);
    const mine = placed.filter((p) => (p.tenant ?? 'default') === tenant);
    const seen = new Set(mine.map((p) => p.vmId));
    const u: Usage = { vms: 0, vcpus: 0, memoryMiB: 0, migrations: migrating.filter((e) => (JSON.parse(e.value.toString()) as { until: number }).until > now).length, diskBytes: {} };
    // Disk: what every member publishes of its own pools, the shared pools, and admissions
    // not yet published (counted twice until they expire: never too little).
    const addDisk = (pool: string, bytes: number) => (u.diskBytes[pool] = (u.diskBytes[pool] ?? 0) + bytes);
    for (const h of hosts) for (const [pool, bytes] of Object.entries(h.disk?.[tenant] ?? {})) addDisk(pool, bytes);
    for (const [pool, bytes] of Object.entries(shared[tenant] ?? {})) addDisk(pool, bytes);
    for (const e of disk) {
      const a = JSON.parse(e.value.toString()) as { pool: string; bytes: number; until: number };
      if (a.until > now) addDisk(a.pool, a.bytes);
    }
    for (const p of mine) {
      u.vms++;
      u.vcpus += p.vcpus;
      u.memoryMiB += p.memoryMiB;
    }
    for (const e of pending) {
      const a = JSON.parse(e.value.toString()) as Pending;
      if (a.until <= now || seen.has(a.vmId)) continue;
      u.vms++;
      u.vcpus += a.vcpus;
      u.memoryMiB += a.memoryMiB;
    }
    return u;
  }

  /**
   * Admits a new VM of `tenant` (no-op without limits): QUOTA_EXCEEDED, naming what is
   * over, when it does not fit. The check and the admission are one fenced write under
   * the tenant's lock.
   */
  async admit(tenant: string, vm: { id: string; vcpus: number; memoryMiB: number }): Promise<void> {
    if (!(await this.limits(tenant, true))) return;
    await this.#locked(tenant, async (fence) => {
      const limits = await this.limits(tenant); // again, linearizable, under the lock
      if (!limits) return;
      const used = await this.usage(tenant);
      assertFits(tenant, limits, used, { vms: 1, vcpus: vm.vcpus, memoryMiB: vm.memoryMiB });
      const a: Pending = { vmId: vm.id, vcpus: vm.vcpus, memoryMiB: vm.memoryMiB, until: Date.now() + PENDING_MS };
      // Admissions that expired, or whose VM the inventory has now, go in the same write.
      const placed = new Set((await clusterPlacements(this.store, true)).map((p) => p.vmId));
      const stale = (await this.store.scan(prefixRange(pendingPrefix(tenant)))).filter((e) => {
        const p = JSON.parse(e.value.toString()) as Pending;
        return p.until <= Date.now() || placed.has(p.vmId);
      });
      await this.store.write([{ key: pendingPrefix(tenant) + vm.id, value: Buffer.from(JSON.stringify(a)) }, ...stale.map((e) => ({ key: e.key }))], { fence });
    });
  }

  /** Admits an outgoing migration of `vmId` against the tenant's limit of concurrent migrations. */
  async admitMigration(tenant: string, vmId: string): Promise<void> {
    const limits = await this.limits(tenant, true);
    if (limits?.migrations === undefined) return;
    await this.#locked(tenant, async (fence) => {
      const now = await this.limits(tenant);
      if (now?.migrations === undefined) return;
      assertFits(tenant, now, await this.usage(tenant), { migrations: 1 });
      await this.store.write([{ key: migratingPrefix(tenant) + vmId, value: Buffer.from(JSON.stringify({ until: Date.now() + MIGRATION_MS })) }], { fence });
    });
  }

  /**
   * Admits `bytes` more provisioned in `pool` for `tenant` against its `diskGiB` limit for
   * that pool (no-op without one); counted from now, as an admission until the member's
   * published usage has it.
   */
  async admitDisk(tenant: string, pool: string, bytes: number): Promise<void> {
    if (bytes <= 0 || (await this.limits(tenant, true))?.diskGiB?.[pool] === undefined) return;
    await this.#locked(tenant, async (fence) => {
      const limit = (await this.limits(tenant))?.diskGiB?.[pool];
      if (limit === undefined) return;
      const used = (await this.usage(tenant)).diskBytes[pool] ?? 0;
      if (used + bytes > limit * GiB) {
        const gib = (b: number) => Math.round((b / GiB) * 1000) / 1000;
        throw new NovaError('QUOTA_EXCEEDED', `tenant "${tenant}" is over its quota: diskGiB in ${pool} ${gib(used)} + ${gib(bytes)} > ${limit}`, { tenant, over: [{ resource: 'diskGiB', pool, limit, used: gib(used), requested: gib(bytes) }] });
      }
      const stale = (await this.store.scan(prefixRange(diskPrefix(tenant)))).filter((e) => (JSON.parse(e.value.toString()) as { until: number }).until <= Date.now());
      const a = { pool, bytes, until: Date.now() + PENDING_MS };
      await this.store.write([{ key: diskPrefix(tenant) + randomBytes(8).toString('hex'), value: Buffer.from(JSON.stringify(a)) }, ...stale.map((e) => ({ key: e.key }))], { fence });
    });
  }

  /** The migration of `vmId` ended (or never started). */
  async endMigration(tenant: string, vmId: string): Promise<void> {
    await this.store.write([{ key: migratingPrefix(tenant) + vmId }]);
  }

  /** Withdraws an admission whose VM was not made after all (best effort: it expires anyway). */
  async withdraw(tenant: string, vmId: string): Promise<void> {
    await this.store.write([{ key: pendingPrefix(tenant) + vmId }]);
  }

  /** Runs `fn` holding the tenant's quota lock; its writes are fenced with the lock's token. */
  async #locked<T>(tenant: string, fn: (fence: { lock: string; token: number }) => Promise<T>): Promise<T> {
    const lock = `quota/${tenant}`;
    const deadline = Date.now() + LOCK_WAIT_MS;
    for (let delay = 5; ; delay = Math.min(delay * 2, 100)) {
      let grant;
      try {
        // A holder per attempt: two admissions on this member must not share a lease.
        grant = await this.locks.acquire(lock, `${this.holder}/${randomBytes(6).toString('hex')}`, LOCK_TTL_MS);
      } catch (err) {
        if (!(err instanceof NovaError) || err.code !== 'LOCK_HELD' || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, delay + Math.random() * delay));
        continue;
      }
      try {
        return await fn({ lock, token: grant.token });
      } catch (err) {
        // Our lease ran out and someone else took the lock: check again from the start.
        if (err instanceof NovaError && err.code === 'LOCK_FENCED' && Date.now() < deadline) continue;
        throw err;
      } finally {
        await this.locks.release(lock, grant.token).catch(() => undefined);
      }
    }
  }
}
