/**
 * The cluster-wide inventory: which host runs which VM, what each host is, and the
 * migrations in flight (and recently finished). Every member publishes its own VMs under
 * `placement/<member>/<vmId>`, its migrations under `migration/<member>/<id>` and itself
 * under `host/<member>` in the replicated store. Each member writes only its own keys, so
 * members never race on a record; a VM in flight between two hosts briefly shows on
 * both (the source's says `migrating`). Any member answers for the whole cluster.
 */
import { cpus, totalmem } from 'node:os';
import type { Logger } from 'pino';
import { NovaError } from '../errors.js';
import type { EventLog } from '../events/log.js';
import { prefixRange, type WriteOp } from '../store/store.js';
import type { MigrationRecord } from '../migration/record.js';
import type { VmRecord } from '../vm/record.js';
import type { VmService } from '../vm/service.js';
import { VERSION } from '../version.js';
import type { ReplicatedStore } from './replicated-store.js';

export interface Placement {
  vmId: string;
  name: string;
  member: number;
  node: string;
  state: string;
  tenant?: string;
  vcpus: number;
  memoryMiB: number;
  updatedAt: string;
}

export interface HostRecord {
  member: number;
  node: string;
  /** Where its API is reached (host:port). */
  address: string;
  /** Whether its API speaks HTTPS. */
  tls?: boolean;
  version: string;
  driver: string;
  cpus: number;
  memoryMiB: number;
  vms: number;
  /** Provisioned bytes of this member's own (not shared) pools, by tenant and pool: what disk quotas count. */
  disk?: Record<string, Record<string, number>>;
  startedAt: string;
  heartbeatAt: string;
}

/** The base URL of a member's API. */
export const apiUrl = (host: Pick<HostRecord, 'address' | 'tls'>) => `${host.tls ? 'https' : 'http'}://${host.address}`;

const placementPrefix = (member?: number) => (member === undefined ? 'placement/' : `placement/${member}/`);
const migrationPrefix = (member?: number) => (member === undefined ? 'migration/' : `migration/${member}/`);
/** Finished migrations each member keeps in the cluster view (its own store keeps them all). */
const KEEP_FINISHED_MIGRATIONS = 100;

/** A migration as the cluster shows it (either side's record). */
export interface MigrationSummary {
  id: string;
  member: number;
  role: string;
  mode: string;
  vmId: string;
  vmName: string;
  peer: string;
  state: string;
  phase: string;
  progress: { bytesRaw: number; bytesWire: number; remainingBytes: number };
  downtimeMs?: { qemu?: number; measured?: number };
  error?: { code: string; message: string };
  createdAt: string;
  finishedAt?: string;
}
const hostKey = (member: number) => `host/${member}`;
/** A batch of VMs per replicated write (a 10,000-VM host publishes in 10 entries). */
const BATCH = 1000;
const FLUSH_MS = 100;
const HEARTBEAT_MS = 30_000;
/** How often the leader clears inventory that members no longer in the cluster left behind. */
const SWEEP_MS = 2000;
const RETRY_MS = 2000;
/** How long a create waits for its VM's placement to be published. */
const PUBLISH_WAIT_MS = 2000;

export class InventoryPublisher {
  #dirty = new Set<string>();
  #dirtyMigrations = new Set<string>();
  /** Finished migrations published, oldest first (trimmed to KEEP_FINISHED_MIGRATIONS). */
  #finished: string[] = [];
  #timer: NodeJS.Timeout | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #hostTimer: NodeJS.Timeout | undefined;
  #sweeper: NodeJS.Timeout | undefined;
  #flushing: Promise<void> = Promise.resolve();
  /** A flush queued behind the one running and not yet started: callers that want one join it. */
  #queued: Promise<void> | undefined;
  #unsubscribe: (() => void) | undefined;
  #startedAt = new Date().toISOString();
  #stopped = false;

  constructor(
    private readonly store: ReplicatedStore,
    private readonly vms: VmService,
    private readonly host: { member: number; node: string; address: string; tls: boolean; driver: string },
    private readonly log: Logger,
    /** This member's record of a migration, if it still has one. */
    private readonly migrationOf: (id: string) => MigrationRecord | undefined = () => undefined,
    /** The latest Raft view: who leads and who the members are. */
    private readonly membership: () => { leader: number; voters: number[]; learners: number[] } | undefined = () => undefined,
    /** Provisioned bytes of this member's own pools, by tenant and pool. */
    private readonly diskUsage: () => Record<string, Record<string, number>> = () => ({}),
  ) {}

  /**
   * Publishes this host and all its VMs (dropping ones it no longer has), then follows
   * VM events. Never waits for the cluster: without a quorum (a whole cluster restarting
   * member by member) publishing retries in the background.
   */
  start(events: EventLog): void {
    this.#unsubscribe = events.subscribe({}, (ev) => {
      if (ev.type.startsWith('migration.') && typeof ev.data.migrationId === 'string') this.#dirtyMigrations.add(ev.data.migrationId);
      if (ev.vmId) this.#markDirty(ev.vmId);
      // Volumes change the host record's disk usage: republished soon, not at the next heartbeat.
      if (ev.type === 'volume.created' || ev.type === 'volume.deleted' || ev.type === 'volume.updated') this.#hostSoon();
    });
    const prefix = placementPrefix(this.host.member);
    this.#flushing = this.store
      .scan(prefixRange(prefix), { stale: true })
      .then(async (published) => {
        for (const e of published) this.#dirty.add(e.key.slice(prefix.length));
        for (const vm of this.#localVms()) this.#dirty.add(vm.id);
        const migs = await this.store.scan(prefixRange(migrationPrefix(this.host.member)), { stale: true });
        for (const e of migs) {
          const m = JSON.parse(e.value.toString()) as MigrationSummary;
          if (m.state === 'running') this.#dirtyMigrations.add(m.id); // re-published as this daemon now knows it
          else this.#finished.push(m.id);
        }
        this.#flushSoon(); // Also publishes the host record.
      })
      .catch((err) => this.log.warn({ err: (err as Error).message }, 'reading published placements failed'));
    this.#heartbeat = setInterval(() => void this.#writeHost().catch(() => undefined), HEARTBEAT_MS).unref();
    this.#sweeper = setInterval(() => void this.#sweepRemoved().catch(() => undefined), SWEEP_MS).unref();
  }

  /**
   * Leader only: drops the records of members no longer in the cluster. Removal through
   * another member deletes them at once; a member that removed itself cannot (it is no
   * longer a member when it tries), so the leader does.
   */
  async #sweepRemoved(): Promise<void> {
    const st = this.membership();
    if (!st || st.leader !== this.host.member) return;
    const members = new Set([...st.voters, ...st.learners]);
    for (const h of await clusterHosts(this.store, true)) if (!members.has(h.member)) await forgetMember(this.store, h.member);
  }

  #markDirty(vmId: string): void {
    this.#dirty.add(vmId);
    if (!this.#stopped) this.#timer ??= setTimeout(() => void this.#flushSoon(), FLUSH_MS);
  }

  /** Stops publishing; a write in flight is left to fail with the stopping Raft node. */
  stop(): void {
    this.#stopped = true;
    this.#unsubscribe?.();
    clearTimeout(this.#timer);
    clearInterval(this.#heartbeat);
    clearTimeout(this.#hostTimer);
    clearInterval(this.#sweeper);
  }

  /**
   * Publishes `vmId`'s placement now rather than within FLUSH_MS: a create is answered
   * once every member can find the VM. Waits at most PUBLISH_WAIT_MS (a cluster without
   * a quorum takes no writes; publishing then goes on retrying in the background).
   */
  async publish(vmId: string): Promise<void> {
    if (this.#stopped) return;
    this.#dirty.add(vmId);
    let timer: NodeJS.Timeout | undefined;
    const waited = new Promise<void>((resolve) => (timer = setTimeout(resolve, PUBLISH_WAIT_MS)));
    await Promise.race([this.#flushSoon(), waited]).finally(() => clearTimeout(timer));
  }

  /** Starts a flush after the running one (joining one already queued); resolves when it has run, published or not. */
  #flushSoon(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#queued) return this.#queued;
    const run = this.#flushing
      .then(() => {
        this.#queued = undefined;
        return this.#flush();
      })
      .catch((err) => {
        if (this.#stopped) return;
        this.log.warn({ err: (err as Error).message }, 'publishing VM placements failed; will retry');
        this.#timer ??= setTimeout(() => void this.#flushSoon(), RETRY_MS);
      });
    this.#queued = run;
    this.#flushing = run;
    return run;
  }

  async #flush(): Promise<void> {
    await this.#flushMigrations();
    const ids = [...this.#dirty];
    this.#dirty.clear();
    for (let i = 0; i < ids.length; i += BATCH) {
      const ops: WriteOp[] = ids.slice(i, i + BATCH).map((id) => {
        const vm = this.#local(id);
        const key = placementPrefix(this.host.member) + id;
        return vm ? { key, value: Buffer.from(JSON.stringify(this.#placement(vm))) } : { key };
      });
      try {
        await this.store.write(ops);
      } catch (err) {
        for (const id of ids.slice(i)) this.#dirty.add(id); // Not lost: retried on the next flush.
        throw err;
      }
    }
    await this.#writeHost();
  }

  async #flushMigrations(): Promise<void> {
    const ids = [...this.#dirtyMigrations];
    if (ids.length === 0) return;
    this.#dirtyMigrations.clear();
    const ops: WriteOp[] = [];
    for (const id of ids) {
      const key = migrationPrefix(this.host.member) + id;
      const rec = this.migrationOf(id);
      if (!rec) {
        ops.push({ key });
        continue;
      }
      ops.push({ key, value: Buffer.from(JSON.stringify(this.#summary(rec))) });
      if (rec.state !== 'running' && !this.#finished.includes(id)) this.#finished.push(id);
    }
    const expired = this.#finished.splice(0, Math.max(0, this.#finished.length - KEEP_FINISHED_MIGRATIONS));
    for (const id of expired) ops.push({ key: migrationPrefix(this.host.member) + id });
    try {
      await this.store.write(ops);
    } catch (err) {
      for (const id of ids) this.#dirtyMigrations.add(id);
      this.#finished.unshift(...expired);
      throw err;
    }
  }

  #summary(rec: MigrationRecord): MigrationSummary {
    return {
      id: rec.id, member: this.host.member, role: rec.role, mode: rec.mode, vmId: rec.vmId, vmName: rec.vmName, peer: rec.peer, state: rec.state, phase: rec.phase,
      progress: { bytesRaw: rec.progress.bytesRaw, bytesWire: rec.progress.bytesWire, remainingBytes: rec.progress.remainingBytes },
      ...(rec.downtimeMs ? { downtimeMs: rec.downtimeMs } : {}), ...(rec.error ? { error: rec.error } : {}),
      createdAt: rec.createdAt, ...(rec.finishedAt ? { finishedAt: rec.finishedAt } : {}),
    };
  }

  #hostSoon(): void {
    this.#hostTimer ??= setTimeout(() => {
      this.#hostTimer = undefined;
      this.#writeHost().catch(() => undefined);
    }, 100);
    this.#hostTimer.unref();
  }

  async #writeHost(): Promise<void> {
    const now = new Date().toISOString();
    const record: HostRecord = {
      member: this.host.member, node: this.host.node, address: this.host.address, ...(this.host.tls ? { tls: true } : {}), version: VERSION, driver: this.host.driver,
      cpus: cpus().length, memoryMiB: Math.floor(totalmem() / 1048576), vms: this.vms.size, disk: this.diskUsage(), startedAt: this.#startedAt, heartbeatAt: now,
    };
    await this.store.write([{ key: hostKey(this.host.member), value: Buffer.from(JSON.stringify(record)) }]);
  }

  #placement(vm: VmRecord): Placement {
    return {
      vmId: vm.id, name: vm.name, member: this.host.member, node: vm.node, state: vm.state,
      ...(vm.spec.tenant ? { tenant: vm.spec.tenant } : {}),
      vcpus: vm.spec.vcpus, memoryMiB: vm.spec.memoryMiB, updatedAt: vm.updatedAt,
    };
  }

  #local(id: string): VmRecord | undefined {
    try {
      return this.vms.get(id);
    } catch {
      return undefined;
    }
  }

  #localVms(): VmRecord[] {
    const out: VmRecord[] = [];
    for (let cursor: string | undefined; ; ) {
      const page = this.vms.list({ limit: 1000, ...(cursor ? { cursor } : {}) });
      out.push(...page.items);
      if (!page.nextCursor) return out;
      cursor = page.nextCursor;
    }
  }
}

/** Every VM in the cluster with the member it runs on (linearizable unless `stale`). */
export async function clusterPlacements(store: ReplicatedStore, stale = false): Promise<Placement[]> {
  const entries = await store.scan(prefixRange(placementPrefix()), { stale });
  return entries.map((e) => JSON.parse(e.value.toString()) as Placement);
}

/** Migrations every member took part in (both sides of each), newest first. */
export async function clusterMigrations(store: ReplicatedStore, stale = false): Promise<MigrationSummary[]> {
  const entries = await store.scan(prefixRange(migrationPrefix()), { stale });
  return entries.map((e) => JSON.parse(e.value.toString()) as MigrationSummary).sort((a, b) => (a.createdAt < b.createdAt ? 1 : -1));
}

export async function clusterHosts(store: ReplicatedStore, stale = false): Promise<HostRecord[]> {
  const entries = await store.scan(prefixRange('host/'), { stale });
  return entries.map((e) => JSON.parse(e.value.toString()) as HostRecord);
}

/**
 * The API address of the member a migration names by id or node name. A name several
 * members share must be given as an id.
 */
export async function resolveMember(store: ReplicatedStore, self: number, target: string): Promise<{ member: number; url: string }> {
  const hosts = await clusterHosts(store);
  const matches = hosts.filter((h) => String(h.member) === target || h.node === target);
  if (matches.length === 0) throw new NovaError('MIGRATION_TARGET_UNKNOWN', `no cluster member has the id or name "${target}"`);
  if (matches.length > 1) throw new NovaError('MIGRATION_TARGET_UNKNOWN', `${matches.length} members are named "${target}"; name one by id (${matches.map((h) => h.member).join(', ')})`, { members: matches.map((h) => h.member) });
  const host = matches[0]!;
  if (host.member === self) throw new NovaError('VALIDATION_FAILED', `the VM is already on member ${self}`);
  return { member: host.member, url: apiUrl(host) };
}

/** The member of this cluster whose API is reached at `url` (http(s)://host:port), if one is. */
export async function memberAt(store: ReplicatedStore, url: string): Promise<number | undefined> {
  let host: string;
  try {
    host = new URL(url).host;
  } catch {
    return undefined;
  }
  return (await clusterHosts(store, true)).find((h) => h.address === host)?.member;
}

/** What a removed member left behind: its host record and placements. */
export async function forgetMember(store: ReplicatedStore, member: number): Promise<void> {
  const entries = [
    ...(await store.scan(prefixRange(placementPrefix(member)), { stale: true })),
    ...(await store.scan(prefixRange(migrationPrefix(member)), { stale: true })),
  ];
  const ops: WriteOp[] = [{ key: hostKey(member) }, ...entries.map((e) => ({ key: e.key }))];
  for (let i = 0; i < ops.length; i += BATCH) await store.write(ops.slice(i, i + BATCH));
}
