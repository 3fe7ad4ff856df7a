/**
 * The VM service: owns VM records and their lifecycle. Every change is persisted with
 * its event in one atomic store write before anyone is told about it; the in-memory
 * index is a cache of the store, rebuilt on start.
 */
import { rmSync } from 'node:fs';
import { pack, unpack } from 'msgpackr';
import type { Logger } from 'pino';
import { NovaError } from '../errors.js';
import type { EventLog } from '../events/log.js';
import type { EventDraft } from '../events/types.js';
import { newOperation, opKey, OP_PREFIX, type OperationKind, type OperationRecord } from '../operations/operation.js';
import { prefixRange, type Store, type WriteOp } from '../store/store.js';
import { DriverError, type DiskSnapshot, type DiskSnapshots, type DriverEvent, type DriverInstanceState, type HypervisorDriver, type VmStats } from './driver.js';
import { newId, type VmRecord } from './record.js';
import { semanticProblems, unrestrictedUserNic, type CreateVmRequest, type DiskSpec, type PatchVmRequest, type VmSpec } from './spec.js';
import { allowedTransitions, canTransition, VM_STATES, type VmState } from './state.js';

const VM_PREFIX = 'vm/';
const vmKey = (id: string) => VM_PREFIX + id;

export interface ListQuery {
  state?: VmState[];
  tenant?: string;
  /** Every label must match exactly. */
  labels?: Record<string, string>;
  limit: number;
  /** The last id of the previous page. */
  cursor?: string;
}

export interface ListPage {
  items: VmRecord[];
  nextCursor?: string;
  total: number;
}

export interface ActionOptions {
  /** ACPI shutdown timeout before forcing. */
  timeoutMs?: number;
  /** delete: stop a running VM first. */
  force?: boolean;
  /** delete: keep disk images. */
  keepDisks?: boolean;
}

/** State each action moves to while running, and the states it may start from. */
const ACTIONS: Record<OperationKind, { from: readonly VmState[]; during?: VmState }> = {
  start: { from: ['stopped', 'error'], during: 'starting' },
  stop: { from: ['running', 'paused', 'error'], during: 'stopping' },
  shutdown: { from: ['running'], during: 'stopping' },
  pause: { from: ['running'], during: 'pausing' },
  resume: { from: ['paused'], during: 'resuming' },
  reboot: { from: ['running'] },
  delete: { from: ['stopped', 'error', 'pending'], during: 'deleting' },
  checkpoint: { from: ['running', 'paused'], during: 'stopping' },
  restore: { from: ['stopped'], during: 'starting' },
};

export interface VmServiceDeps {
  store: Store;
  events: EventLog;
  driver: HypervisorDriver;
  nodeId: string;
  log: Logger;
  /** Default ACPI shutdown timeout. */
  shutdownTimeoutMs?: number;
  /** True when this host's API requires a token; only then may a guest's NIC reach the host's loopback. */
  apiAuthenticated?: boolean;
}

/**
 * Cluster-wide exclusivity for a VM: held for the whole of a lifecycle operation or a
 * migration, so no two members work on one VM at once. `hold` throws VM_BUSY when
 * another member has it; the returned function gives it back.
 */
export interface VmLockGuard {
  hold(vmId: string, purpose: string): Promise<() => Promise<void>>;
}

export class VmService {
  #deps: VmServiceDeps;
  #guard: VmLockGuard | undefined;
  #byId = new Map<string, VmRecord>();
  #byName = new Map<string, string>();
  /** Ids in ascending order (ids are time-ordered), for stable pagination. */
  #ids: string[] = [];
  #json = new Map<string, string>();
  #ops = new Map<string, OperationRecord>();
  /** vmId → running operation; at most one long operation per VM. */
  #active = new Map<string, Promise<void>>();
  /** vmId → a finished operation still giving back the VM's cluster lock (milliseconds). */
  #handingBack = new Map<string, Promise<void>>();
  /** Names being created right now (reserved before the store write). */
  #reserved = new Set<string>();

  private constructor(deps: VmServiceDeps) {
    this.#deps = deps;
    deps.driver.events.on('event', (ev: DriverEvent) => {
      this.#onDriverEvent(ev).catch((err) => deps.log.error({ err, ev }, 'handling driver event failed'));
    });
  }

  static async open(deps: VmServiceDeps): Promise<VmService> {
    const svc = new VmService(deps);
    for (const e of await deps.store.scan(prefixRange(VM_PREFIX))) svc.#index(unpack(e.value) as VmRecord);
    await svc.#recover();
    return svc;
  }

  // ---- reads -------------------------------------------------------------------

  get(ref: string): VmRecord {
    const vm = this.#find(ref);
    if (!vm) throw new NovaError('VM_NOT_FOUND', `no VM with id or name "${ref}"`);
    return vm;
  }

  /** The VM's JSON, cached until it changes (GET by id is the hottest read). */
  getJson(ref: string): string {
    const vm = this.get(ref);
    let json = this.#json.get(vm.id);
    if (json === undefined) {
      json = JSON.stringify(vm);
      this.#json.set(vm.id, json);
    }
    return json;
  }

  list(q: ListQuery): ListPage {
    const states = q.state && new Set(q.state);
    const labelPairs = q.labels ? Object.entries(q.labels) : [];
    const unfiltered = !states && !q.tenant && labelPairs.length === 0;
    let i = q.cursor ? upperBound(this.#ids, q.cursor) : 0;
    const items: VmRecord[] = [];
    for (; i < this.#ids.length && items.length < q.limit; i++) {
      const vm = this.#byId.get(this.#ids[i]!)!;
      if (states && !states.has(vm.state)) continue;
      if (q.tenant && vm.spec.tenant !== q.tenant) continue;
      if (labelPairs.some(([k, v]) => vm.spec.labels[k] !== v)) continue;
      items.push(vm);
    }
    // The total of a filtered list is unknown without a full scan; the API omits it.
    const page: ListPage = { items, total: unfiltered ? this.#ids.length : -1 };
    const more = i < this.#ids.length;
    if (more && items.length > 0) page.nextCursor = items[items.length - 1]!.id;
    return page;
  }

  get size(): number {
    return this.#byId.size;
  }

  countByState(): Record<VmState, number> {
    const counts = Object.fromEntries(VM_STATES.map((s) => [s, 0])) as Record<VmState, number>;
    for (const vm of this.#byId.values()) counts[vm.state]++;
    return counts;
  }

  async getOperation(id: string): Promise<OperationRecord> {
    const cached = this.#ops.get(id);
    if (cached) return cached;
    const raw = id.startsWith('op-') ? await this.#deps.store.get(opKey(id)) : undefined;
    if (!raw) throw new NovaError('OPERATION_NOT_FOUND', `no operation "${id}"`);
    return unpack(raw) as OperationRecord;
  }

  // ---- writes ------------------------------------------------------------------

  async create(req: CreateVmRequest): Promise<VmRecord> {
    const { name, ...spec } = req;
    const problems = this.#problems(spec);
    if (problems.length > 0) throw new NovaError('VM_SPEC_INVALID', problems.join('; '), { problems });
    if (this.#byName.has(name) || this.#reserved.has(name)) throw new NovaError('VM_NAME_CONFLICT', `a VM named "${name}" already exists`);
    this.#reserved.add(name);
    try {
      const now = new Date().toISOString();
      const vm: VmRecord = { id: newId('vm'), name, spec, state: 'pending', node: this.#deps.nodeId, generation: 1, createdAt: now, updatedAt: now };
      await this.#persist(vm, [{ type: 'vm.created', data: { name, spec } }]);
      try {
        await this.#deps.driver.create(vm);
      } catch (err) {
        await this.#setState(vm.id, 'error', reasonOf(err));
        throw driverFailure('create', err, vm.id);
      }
      return await this.#setState(vm.id, 'stopped');
    } finally {
      this.#reserved.delete(name);
    }
  }

  async patch(ref: string, req: PatchVmRequest): Promise<VmRecord> {
    const vm = await this.#getSettled(ref);
    if (vm.state !== 'stopped' && vm.state !== 'pending') {
      throw new NovaError('VM_INVALID_STATE', `VM "${vm.name}" is ${vm.state}; only stopped VMs can be changed`, { state: vm.state });
    }
    if (this.#active.has(vm.id)) throw new NovaError('VM_BUSY', `an operation is in progress on "${vm.name}"`);
    const spec = { ...vm.spec, ...req };
    const problems = this.#problems(spec);
    if (problems.length > 0) throw new NovaError('VM_SPEC_INVALID', problems.join('; '), { problems });
    const next: VmRecord = { ...vm, spec, generation: vm.generation + 1, updatedAt: new Date().toISOString() };
    await this.#persist(next, [{ type: 'vm.updated', data: { changes: req } }]);
    return next;
  }

  #problems(spec: VmSpec): string[] {
    const problems = semanticProblems(spec);
    if (!this.#deps.apiAuthenticated) {
      for (const n of spec.nics.filter(unrestrictedUserNic)) {
        problems.push(`nic "${n.name}": an unrestricted user-mode NIC lets the guest reach this host's loopback, where the API serves without a token; configure an API token first`);
      }
    }
    return problems.length > 0 ? problems : (this.#deps.driver.validate?.(spec) ?? []);
  }

  /** Starts a lifecycle operation; resolves once it is accepted (202), not finished. */
  async requestAction(ref: string, kind: OperationKind, opts: ActionOptions = {}): Promise<OperationRecord> {
    const vm = await this.#getSettled(ref);
    if (this.#active.has(vm.id)) throw new NovaError('VM_BUSY', `an operation is in progress on "${vm.name}"`); // before state checks
    const rule = ACTIONS[kind];
    const forcedDelete = kind === 'delete' && opts.force && (vm.state === 'running' || vm.state === 'paused');
    if (!rule.from.includes(vm.state) && !forcedDelete) {
      throw new NovaError('VM_INVALID_STATE', `cannot ${kind} VM "${vm.name}" while it is ${vm.state}`, {
        state: vm.state,
        allowedFrom: rule.from,
      });
    }
    if (kind === 'restore' && !vm.checkpoint) throw new NovaError('VM_INVALID_STATE', `VM "${vm.name}" has no checkpoint to restore`, { state: vm.state });
    if (kind === 'checkpoint' && !this.#deps.driver.checkpoint) throw new NovaError('VM_INVALID_STATE', `the ${this.#deps.driver.name} driver cannot checkpoint VMs`);
    const op = newOperation(kind, vm.id);
    const release = await this.#claimEverywhere(vm, kind);
    try {
      const opDraft: EventDraft = { type: 'operation.started', vmId: vm.id, tenant: vm.spec.tenant, operationId: op.id, data: { kind } };
      if (rule.during && !forcedDelete) {
        await this.#setState(vm.id, rule.during, undefined, [op], [opDraft]);
      } else {
        await this.#deps.events.commit([{ key: opKey(op.id), value: pack(op) }], [opDraft]);
      }
      this.#ops.set(op.id, op);
    } catch (err) {
      release();
      throw err;
    }
    void this.#run(op, opts).finally(release);
    return op;
  }

  /** Live resource usage of a VM (404 unknown; 409 when it is not running). */
  async stats(ref: string): Promise<VmStats> {
    const vm = this.get(ref);
    const stats = await this.#deps.driver.stats?.(vm.id);
    if (!stats) throw new NovaError('VM_INVALID_STATE', `VM "${vm.name}" has no live statistics while ${vm.state}`, { state: vm.state });
    return stats;
  }

  /** Statistics of every VM whose hypervisor process should exist (metrics, telemetry). */
  async liveStats(): Promise<Array<{ vm: VmRecord; stats: VmStats }>> {
    const live = [...this.#byId.values()].filter((vm) => vm.state === 'running' || vm.state === 'paused');
    const rows = await Promise.all(live.map(async (vm) => ({ vm, stats: await this.#deps.driver.stats?.(vm.id).catch(() => undefined) })));
    return rows.filter((r): r is { vm: VmRecord; stats: VmStats } => r.stats !== undefined);
  }

  /** Adds a disk to a stopped VM, or hot-plugs it into a running one. */
  async addDisk(ref: string, disk: DiskSpec): Promise<VmRecord> {
    const vm = await this.#getSettled(ref);
    if (vm.state !== 'stopped' && vm.state !== 'running') {
      throw new NovaError('VM_INVALID_STATE', `disks can be added to stopped or running VMs, not ${vm.state} ones`, { state: vm.state });
    }
    const release = this.#claim(vm);
    try {
      const spec = { ...vm.spec, disks: [...vm.spec.disks, disk] };
      const problems = this.#problems(spec);
      if (problems.length > 0) throw new NovaError('VM_SPEC_INVALID', problems.join('; '), { problems });
      const attach = this.#deps.driver.attachDisk?.bind(this.#deps.driver);
      if (!attach) throw new NovaError('VM_INVALID_STATE', `the ${this.#deps.driver.name} driver cannot add disks`);
      await attach(vm, disk, vm.state === 'running').catch((err) => {
        throw err instanceof DriverError ? driverFailure('attach-disk', err, vm.id) : err;
      });
      // The claim kept the record unchanged meanwhile, so `vm` is still current.
      const next: VmRecord = { ...vm, spec, generation: vm.generation + 1, updatedAt: new Date().toISOString() };
      await this.#persist(next, [{ type: 'vm.updated', data: { diskAdded: disk, hotplug: vm.state === 'running' } }]);
      return next;
    } finally {
      release();
    }
  }

  // ---- disk snapshots ----------------------------------------------------------

  async listSnapshots(ref: string): Promise<DiskSnapshot[]> {
    const vm = this.get(ref);
    return this.#snapshotDriver(vm).list(vm, vm.state !== 'stopped');
  }

  async createSnapshot(ref: string, name: string): Promise<DiskSnapshot> {
    return this.#snapshotOp(ref, name, 'created', ['stopped', 'running', 'paused'], async (vm, snaps, existing) => {
      if (existing.some((s) => s.name === name)) throw new NovaError('SNAPSHOT_EXISTS', `VM "${vm.name}" already has a snapshot "${name}"`);
      await snaps.create(vm, name, vm.state !== 'stopped');
    });
  }

  async revertSnapshot(ref: string, name: string): Promise<DiskSnapshot> {
    return this.#snapshotOp(ref, name, 'reverted', ['stopped'], async (vm, snaps, existing) => {
      if (!existing.some((s) => s.name === name)) throw new NovaError('SNAPSHOT_NOT_FOUND', `VM "${vm.name}" has no snapshot "${name}"`);
      await snaps.revert(vm, name);
    });
  }

  async deleteSnapshot(ref: string, name: string): Promise<DiskSnapshot> {
    return this.#snapshotOp(ref, name, 'deleted', ['stopped', 'running', 'paused'], async (vm, snaps, existing) => {
      if (!existing.some((s) => s.name === name)) throw new NovaError('SNAPSHOT_NOT_FOUND', `VM "${vm.name}" has no snapshot "${name}"`);
      await snaps.remove(vm, name, vm.state !== 'stopped');
    });
  }

  #snapshotDriver(vm: VmRecord): DiskSnapshots {
    const snaps = this.#deps.driver.snapshots;
    if (!snaps) throw new NovaError('SNAPSHOT_UNSUPPORTED', `the ${this.#deps.driver.name} driver has no disk snapshots`);
    if (!vm.spec.disks.some((d) => d.format === 'qcow2' && !d.readOnly)) throw new NovaError('SNAPSHOT_UNSUPPORTED', `VM "${vm.name}" has no writable qcow2 disk`);
    return snaps;
  }

  /** Runs a snapshot change exclusively on the VM, in an allowed state, and records it. */
  async #snapshotOp(
    ref: string,
    name: string,
    action: 'created' | 'reverted' | 'deleted',
    allowed: VmState[],
    body: (vm: VmRecord, snaps: DiskSnapshots, existing: DiskSnapshot[]) => Promise<void>,
  ): Promise<DiskSnapshot> {
    const vm = await this.#getSettled(ref);
    const snaps = this.#snapshotDriver(vm);
    if (!allowed.includes(vm.state)) throw new NovaError('VM_INVALID_STATE', `cannot ${action.replace(/d$/, '')} a snapshot while the VM is ${vm.state}`, { state: vm.state, allowedFrom: allowed });
    const release = this.#claim(vm);
    try {
      const existing = await snaps.list(vm, vm.state !== 'stopped');
      try {
        await body(vm, snaps, existing);
      } catch (err) {
        throw err instanceof DriverError ? driverFailure('snapshot', err, vm.id) : err;
      }
      await this.#deps.events.commit([], [{ type: 'vm.snapshot', vmId: vm.id, tenant: vm.spec.tenant, data: { action, name } }]);
      const after = await snaps.list(vm, vm.state !== 'stopped');
      return after.find((s) => s.name === name) ?? existing.find((s) => s.name === name)!;
    } finally {
      release();
    }
  }

  /**
   * Claims the VM for one operation at a time (409 VM_BUSY otherwise). The returned
   * function releases it; `drain()` waits for every claim to be released.
   */
  #claim(vm: VmRecord): () => void {
    if (this.#active.has(vm.id)) throw new NovaError('VM_BUSY', `an operation is in progress on "${vm.name}"`);
    let release!: () => void;
    this.#active.set(vm.id, new Promise<void>((r) => (release = r)));
    return () => {
      this.#active.delete(vm.id);
      release();
    };
  }

  /** Makes lifecycle operations and migrations also take the VM's cluster-wide lock. */
  useLockGuard(guard: VmLockGuard): void {
    this.#guard = guard;
  }

  /**
   * The local claim plus, in a cluster, the VM's cluster-wide lock. The local claim is
   * released only after the cluster lock is given back, so the next operation here never
   * overlaps the release.
   */
  async #claimEverywhere(vm: VmRecord, purpose: string): Promise<() => void> {
    const releaseLocal = this.#claim(vm);
    if (!this.#guard) return releaseLocal;
    let releaseCluster: () => Promise<void>;
    try {
      releaseCluster = await this.#guard.hold(vm.id, purpose);
    } catch (err) {
      releaseLocal();
      throw err;
    }
    return () => {
      // The operation already reads as finished; a request arriving now waits for this
      // hand-back rather than seeing VM_BUSY from a claim that is about to go.
      const done = releaseCluster().finally(releaseLocal);
      this.#handingBack.set(vm.id, done);
      void done.finally(() => {
        if (this.#handingBack.get(vm.id) === done) this.#handingBack.delete(vm.id);
      });
    };
  }

  /**
   * The VM once a just-finished operation has handed its cluster lock back. Every claim
   * goes through here: the finished operation already reads as done to clients, so a
   * request arriving in that gap must wait, not see VM_BUSY.
   */
  async #getSettled(ref: string): Promise<VmRecord> {
    const found = this.#find(ref);
    const pending = found && this.#handingBack.get(found.id);
    // The cluster guard's release swallows its own failures (the lock then lapses on its
    // TTL); should another guard's reject, the request goes on and meets the lock instead.
    if (pending) await pending.catch(() => undefined);
    return this.get(ref);
  }

  /** By id or name. */
  #find(ref: string): VmRecord | undefined {
    return this.#byId.get(ref) ?? this.#byId.get(this.#byName.get(ref) ?? '');
  }

  /** Waits for running operations to finish (graceful shutdown). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.#active.values()]);
  }

  // ---- live migration hooks (driven by MigrationService) ------------------------

  /** Source: claims a VM (running: live; stopped: cold) for a migration and marks it `migrating`. */
  async beginMigrationOut(ref: string, event: EventDraft): Promise<{ vm: VmRecord; release: () => void }> {
    const vm = await this.#getSettled(ref);
    if (this.#active.has(vm.id)) throw new NovaError('VM_BUSY', `an operation is in progress on "${vm.name}"`);
    if (vm.state !== 'running' && vm.state !== 'stopped') throw new NovaError('VM_INVALID_STATE', `cannot migrate VM "${vm.name}" while it is ${vm.state}`, { state: vm.state, allowedFrom: ['running', 'stopped'] });
    const release = await this.#claimEverywhere(vm, 'migration');
    try {
      await this.#setState(vm.id, 'migrating', undefined, [], [{ ...event, vmId: vm.id, tenant: vm.spec.tenant }]);
    } catch (err) {
      release();
      throw err;
    }
    return { vm, release };
  }

  /** Source: the VM runs on the destination now; it is no longer ours. */
  async migratedAway(vmId: string, extraOps: WriteOp[], events: EventDraft[]): Promise<void> {
    const vm = this.#byId.get(vmId)!;
    await this.#drop(vm, extraOps, [{ type: 'vm.migrated', vmId, tenant: vm.spec.tenant, data: { name: vm.name } }, ...events]);
  }

  /**
   * Source: the migration did not move the VM. With `stuck`, the outcome is unknown and
   * the VM goes to `error` (never resumed blindly: the destination may be running it).
   */
  async migrationAbandoned(vmId: string, reason: string, extraOps: WriteOp[], events: EventDraft[], stuck = false): Promise<void> {
    const vm = this.#byId.get(vmId);
    if (!vm) return;
    let to: VmState = 'error';
    if (!stuck) {
      const actual = await this.#deps.driver.inspect(vmId).catch(() => undefined);
      to = actual?.status === 'running' ? 'running' : actual ? 'error' : 'stopped';
    }
    await this.#setState(vmId, to, reason, [], events, undefined, extraOps);
  }

  /** Destination: records the arriving VM (state `migrating`) and claims it. */
  async adoptIncoming(incoming: { id: string; name: string; spec: VmSpec }, marker: NonNullable<VmRecord['incoming']>, events: EventDraft[]): Promise<{ vm: VmRecord; release: () => void }> {
    if (this.#byId.has(incoming.id)) throw new NovaError('VM_NAME_CONFLICT', `VM ${incoming.id} already exists on this node`);
    if (this.#byName.has(incoming.name) || this.#reserved.has(incoming.name)) throw new NovaError('VM_NAME_CONFLICT', `a VM named "${incoming.name}" already exists on this node`);
    const problems = this.#problems(incoming.spec);
    if (problems.length > 0) throw new NovaError('VM_SPEC_INVALID', problems.join('; '), { problems });
    const now = new Date().toISOString();
    const vm: VmRecord = { id: incoming.id, name: incoming.name, spec: incoming.spec, state: 'migrating', node: this.#deps.nodeId, incoming: marker, generation: 1, createdAt: now, updatedAt: now };
    const release = this.#claim(vm);
    try {
      await this.#persist(vm, [{ type: 'vm.created', data: { name: vm.name, spec: vm.spec, migrationId: marker.migrationId } }, ...events]);
    } catch (err) {
      release();
      throw err;
    }
    return { vm, release };
  }

  /** Destination: the VM is here — running (live), or stopped with its files (cold). */
  async incomingArrived(vmId: string, arrived: { to: 'running' | 'stopped'; runtime?: Record<string, unknown>; checkpoint?: VmRecord['checkpoint'] }, extraOps: WriteOp[], events: EventDraft[]): Promise<void> {
    const { incoming: _, ...rest } = this.#byId.get(vmId)!;
    this.#byId.set(vmId, arrived.checkpoint ? { ...rest, checkpoint: arrived.checkpoint } : rest);
    await this.#setState(vmId, arrived.to, undefined, [], events, arrived.runtime, extraOps);
  }

  /** Destination: the migration failed; the half-arrived VM is removed (its process is gone). */
  async incomingAbandoned(vmId: string, extraOps: WriteOp[], events: EventDraft[]): Promise<void> {
    const vm = this.#byId.get(vmId);
    if (!vm) return;
    await this.#deps.driver.destroy(vm).catch((err) => this.#deps.log.warn({ err, vmId }, 'cleaning up an aborted incoming VM failed'));
    await this.#drop(vm, extraOps, [{ type: 'vm.deleted', vmId, tenant: vm.spec.tenant, data: { name: vm.name, reason: 'incoming migration aborted' } }, ...events]);
  }

  // ---- operation execution -----------------------------------------------------

  async #run(op: OperationRecord, opts: ActionOptions): Promise<void> {
    const { driver } = this.#deps;
    const vmId = op.vmId;
    const vm = this.#byId.get(vmId)!;
    try {
      // The final state and the finished operation are persisted in one write.
      let final: {
        to?: VmState;
        reason?: string;
        runtime?: Record<string, unknown>;
        result?: Record<string, unknown>;
        checkpoint?: VmRecord['checkpoint'];
        clearCheckpoint?: boolean;
      } = {};
      switch (op.kind) {
        case 'start':
        case 'restore': {
          // A VM with a checkpoint resumes from it (like libvirt's managed save).
          const from = vm.checkpoint?.path;
          final = { to: 'running', runtime: (await driver.start(vm, from ? { restoreFrom: from } : {})).runtime ?? {}, clearCheckpoint: from !== undefined };
          if (from) final.result = { restoredFrom: from };
          break;
        }
        case 'checkpoint': {
          const path = driver.checkpointPath!(vmId);
          const { sizeBytes } = await driver.checkpoint!(vmId, path);
          final = { to: 'stopped', reason: 'checkpointed', checkpoint: { path, createdAt: new Date().toISOString(), sizeBytes }, result: { path, sizeBytes } };
          break;
        }
        case 'stop':
          await driver.stop(vmId);
          final = { to: 'stopped' };
          break;
        case 'shutdown': {
          const { forced } = await driver.shutdown(vmId, { timeoutMs: opts.timeoutMs ?? this.#deps.shutdownTimeoutMs ?? 60_000 });
          final = { to: 'stopped', result: { forced }, ...(forced ? { reason: 'guest did not power off in time; forced' } : {}) };
          break;
        }
        case 'pause':
          await driver.pause(vmId);
          final = { to: 'paused' };
          break;
        case 'resume':
          await driver.resume(vmId);
          final = { to: 'running' };
          break;
        case 'reboot':
          await driver.reboot(vmId);
          break;
        case 'delete':
          if (vm.state === 'running' || vm.state === 'paused') {
            await this.#setState(vmId, 'stopping');
            await driver.stop(vmId);
            await this.#setState(vmId, 'stopped');
            await this.#setState(vmId, 'deleting');
          }
          await driver.destroy({ ...vm, runtime: { ...vm.runtime, keepDisks: opts.keepDisks ?? false } });
          await this.#remove(vmId, op);
          return;
      }
      const { done, event } = this.#finished(op, 'succeeded', final.result ? { result: final.result } : {});
      if (final.checkpoint) this.#byId.set(vmId, { ...this.#byId.get(vmId)!, checkpoint: final.checkpoint });
      const consumed = final.clearCheckpoint ? this.#byId.get(vmId)!.checkpoint : undefined;
      if (consumed) {
        const { checkpoint: _, ...rest } = this.#byId.get(vmId)!;
        this.#byId.set(vmId, rest);
      }
      if (final.to) await this.#setState(vmId, final.to, final.reason, [done], [event], final.runtime);
      else await this.#deps.events.commit([{ key: opKey(op.id), value: pack(done) }], [event]);
      this.#ops.set(op.id, done);
      // Only once the record no longer points at it: a restored checkpoint is spent.
      if (consumed) rmSync(consumed.path, { force: true });
    } catch (err) {
      this.#deps.log.warn({ err, op: op.id, vmId, kind: op.kind }, 'operation failed');
      await this.#settleAfterFailure(vmId, op.kind, err).catch((e) => this.#deps.log.error({ err: e, vmId }, 'could not settle VM state'));
      const error = err instanceof DriverError ? { code: 'DRIVER_FAILED', message: err.message } : { code: (err as NovaError).code ?? 'INTERNAL', message: (err as Error).message };
      await this.#finish(op, 'failed', { error }).catch((e) => this.#deps.log.error({ err: e, op: op.id }, 'could not record operation failure'));
    }
  }

  /** After a failed operation, set the state to what the hypervisor says is true. */
  async #settleAfterFailure(vmId: string, kind: OperationKind, err: unknown): Promise<void> {
    const vm = this.#byId.get(vmId);
    if (!vm) return;
    const reason = `${kind} failed: ${reasonOf(err)}`;
    let actual: DriverInstanceState | undefined;
    try {
      actual = await this.#deps.driver.inspect(vmId);
    } catch (inspectErr) {
      await this.#setState(vmId, 'error', `${reason}; inspect failed: ${reasonOf(inspectErr)}`);
      return;
    }
    const target: VmState = kind === 'delete' ? 'error' : actual ? actual.status : 'stopped';
    await this.#setState(vmId, canTransition(vm.state, target) ? target : 'error', reason);
  }

  /** The finished form of an operation and its event, to be written by the caller. */
  #finished(op: OperationRecord, state: 'succeeded' | 'failed', extra: Pick<OperationRecord, 'error' | 'result'>): { done: OperationRecord; event: EventDraft } {
    const now = new Date().toISOString();
    const done: OperationRecord = { ...op, ...stripUndefined(extra), state, progress: { percent: 100, message: state }, updatedAt: now, finishedAt: now };
    const vm = this.#byId.get(op.vmId);
    const event: EventDraft = { type: `operation.${state}`, vmId: op.vmId, operationId: op.id, data: { kind: op.kind, ...stripUndefined(extra) } };
    if (vm) event.tenant = vm.spec.tenant;
    this.#trimOpsCache();
    return { done, event };
  }

  async #finish(op: OperationRecord, state: 'succeeded' | 'failed', extra: Pick<OperationRecord, 'error' | 'result'>): Promise<void> {
    const { done, event } = this.#finished(op, state, extra);
    await this.#deps.events.commit([{ key: opKey(op.id), value: pack(done) }], [event]);
    this.#ops.set(op.id, done);
  }

  // ---- state persistence -------------------------------------------------------

  /** Moves a VM to `to` (validated), persisting it with its event and any extra ops. */
  async #setState(
    vmId: string,
    to: VmState,
    reason?: string,
    opsToStore: OperationRecord[] = [],
    extraEvents: EventDraft[] = [],
    runtime?: Record<string, unknown>,
    extraOps: WriteOp[] = [],
  ): Promise<VmRecord> {
    const vm = this.#byId.get(vmId);
    if (!vm) throw new NovaError('VM_NOT_FOUND', `no VM with id "${vmId}"`);
    if (!canTransition(vm.state, to)) {
      throw new NovaError('VM_INVALID_STATE', `illegal transition ${vm.state} → ${to}`, { state: vm.state, allowed: allowedTransitions(vm.state) });
    }
    const next: VmRecord = { ...vm, state: to, generation: vm.generation + 1, updatedAt: new Date().toISOString() };
    if (reason !== undefined) next.stateReason = reason;
    else delete next.stateReason;
    if (runtime !== undefined) next.runtime = runtime;
    else if (to === 'stopped') delete next.runtime;
    const drafts: EventDraft[] = [{ type: 'vm.state', vmId, tenant: vm.spec.tenant, data: stripUndefined({ from: vm.state, to, reason }) }, ...extraEvents];
    await this.#persist(next, drafts, [...opsToStore.map((o) => ({ key: opKey(o.id), value: pack(o) })), ...extraOps]);
    return next;
  }

  async #persist(vm: VmRecord, drafts: Array<Omit<EventDraft, 'vmId'> & { vmId?: string }>, extraOps: WriteOp[] = []): Promise<void> {
    const events = drafts.map((d) => ({ ...d, vmId: vm.id, tenant: vm.spec.tenant }) as EventDraft);
    await this.#deps.events.commit([{ key: vmKey(vm.id), value: pack(vm) }, ...extraOps], events);
    this.#index(vm);
  }

  async #remove(vmId: string, op: OperationRecord): Promise<void> {
    const vm = this.#byId.get(vmId)!;
    const { done, event } = this.#finished(op, 'succeeded', {});
    await this.#drop(vm, [{ key: opKey(op.id), value: pack(done) }], [{ type: 'vm.deleted', vmId, tenant: vm.spec.tenant, operationId: op.id, data: { name: vm.name } }, event]);
    this.#ops.set(op.id, done);
  }

  /** Deletes the VM's record (with `ops` and `events` in the same write) and unindexes it. */
  async #drop(vm: VmRecord, ops: WriteOp[], events: EventDraft[]): Promise<void> {
    await this.#deps.events.commit([{ key: vmKey(vm.id) }, ...ops], events);
    this.#byId.delete(vm.id);
    this.#byName.delete(vm.name);
    this.#json.delete(vm.id);
    const i = lowerBound(this.#ids, vm.id);
    if (this.#ids[i] === vm.id) this.#ids.splice(i, 1);
  }

  #index(vm: VmRecord): void {
    if (!this.#byId.has(vm.id)) {
      const i = lowerBound(this.#ids, vm.id);
      this.#ids.splice(i, 0, vm.id);
    }
    this.#byId.set(vm.id, vm);
    this.#byName.set(vm.name, vm.id);
    this.#json.delete(vm.id);
  }

  #trimOpsCache(): void {
    if (this.#ops.size <= 10_000) return;
    for (const [id, op] of this.#ops) {
      if (op.state !== 'running') this.#ops.delete(id);
      if (this.#ops.size <= 9_000) break;
    }
  }

  // ---- recovery and driver events ---------------------------------------------

  /**
   * After a restart: operations that were running are marked failed (their outcome is
   * unknown), and every VM's state is reconciled with what the driver reports.
   */
  async #recover(): Promise<void> {
    const interrupted: OperationRecord[] = [];
    for (const e of await this.#deps.store.scan(prefixRange(OP_PREFIX))) {
      const op = unpack(e.value) as OperationRecord;
      if (op.state === 'running') interrupted.push(op);
    }
    for (const op of interrupted) {
      await this.#finish(op, 'failed', { error: { code: 'INTERNAL', message: 'interrupted by daemon restart' } });
    }
    for (const vm of [...this.#byId.values()]) {
      if (vm.incoming) {
        // It never finished arriving: the source still has it (or reports the failure).
        if (await this.#deps.driver.inspect(vm.id).catch(() => undefined)) await this.#deps.driver.stop(vm.id).catch(() => undefined);
        await this.incomingAbandoned(vm.id, [], []);
        continue;
      }
      if (vm.state === 'stopped' || vm.state === 'error') continue;
      const actual = await this.#deps.driver.inspect(vm.id).catch(() => undefined);
      if (vm.state === 'pending') {
        await this.#setState(vm.id, 'error', 'creation was interrupted by a daemon restart');
      } else if (vm.state === 'deleting') {
        await this.#setState(vm.id, 'error', 'deletion was interrupted by a daemon restart; delete again');
      } else if (actual) {
        if (actual.status !== vm.state) await this.#forceState(vm, actual.status, 'reconciled with the hypervisor after restart', actual.runtime);
      } else if (vm.state !== 'stopping') {
        await this.#forceState(vm, 'error', 'VM process not found after daemon restart');
      } else {
        await this.#forceState(vm, 'stopped', 'reconciled with the hypervisor after restart');
      }
    }
  }

  /** Reconciliation: the hypervisor's truth wins, via a legal path where one exists. */
  async #forceState(vm: VmRecord, to: VmState, reason: string, runtime?: Record<string, unknown>): Promise<void> {
    if (!canTransition(vm.state, to) && canTransition(vm.state, 'error') && canTransition('error', to)) {
      await this.#setState(vm.id, 'error', reason);
    }
    await this.#setState(vm.id, canTransition(this.#byId.get(vm.id)!.state, to) ? to : 'error', reason, [], [], runtime);
  }

  async #onDriverEvent(ev: DriverEvent): Promise<void> {
    const vm = this.#byId.get(ev.vmId);
    if (!vm || this.#active.has(vm.id)) return; // An operation in flight settles the state itself.
    switch (ev.type) {
      case 'exited':
        if (!ev.expected) await this.#setState(vm.id, 'error', `VM process exited unexpectedly: ${ev.reason}`);
        break;
      case 'guest-shutdown':
        if (canTransition(vm.state, 'stopping')) {
          await this.#setState(vm.id, 'stopping', 'guest powered off');
          await this.#setState(vm.id, 'stopped', 'guest powered off');
        }
        break;
      case 'paused':
        if (vm.state === 'running') await this.#forceState(vm, 'paused', ev.reason);
        break;
      case 'resumed':
        if (vm.state === 'paused') await this.#forceState(vm, 'running', 'resumed by the hypervisor');
        break;
      case 'guest-reset':
        break;
    }
  }
}

function reasonOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function driverFailure(op: string, err: unknown, vmId: string): NovaError {
  return new NovaError('DRIVER_FAILED', `${op} failed: ${reasonOf(err)}`, { vmId });
}

function stripUndefined<T extends Record<string, unknown>>(o: T): T {
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  return o;
}

function lowerBound(arr: string[], x: string): number {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (arr[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function upperBound(arr: string[], x: string): number {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (arr[mid]! <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
