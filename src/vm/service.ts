/**
 * The VM service: the facade the API routes and the migration service call. It checks
 * requests and delegates: records are written only by the registry (`registry.ts`),
 * lifecycle operations run in the operation runner (`runner.ts`, one handler per action
 * in `actions.ts`), exclusivity is a claim (`claims.ts`), and the reconciler
 * (`reconciler.ts`) keeps records true to the hypervisor after restarts and on driver
 * events.
 */
import type { Logger } from 'pino';
import { NovaError } from '../errors.js';
import type { EventLog } from '../events/log.js';
import type { EventDraft } from '../events/types.js';
import type { OperationKind, OperationRecord } from '../operations/operation.js';
import type { Store, WriteOp } from '../store/store.js';
import type { ActionOptions } from './actions.js';
import { VmClaims, type VmClaim, type VmLockGuard } from './claims.js';
import { DriverError, type DiskSnapshot, type DiskSnapshots, type HypervisorDriver, type VmStats } from './driver.js';
import { newId } from '../ids.js';
import { movedSpec, type VmStorage } from './media.js';
import { parseVolumeRef } from '../storage/model.js';
import { importLegacyVm, isLegacy } from './legacy-import.js';
import type { VmRecord } from './record.js';
import { Reconciler } from './reconciler.js';
import { VmRegistry, type ListPage, type ListQuery } from './registry.js';
import { OperationRunner, reasonOf } from './runner.js';
import { semanticProblems, type CreateVmRequest, type DiskSpec, type FromTemplateRequest, type PatchVmRequest, type VmSpec } from './spec.js';
import type { VmState } from './state.js';

export type { ActionOptions } from './actions.js';
export type { VmLockGuard } from './claims.js';
export type { ListPage, ListQuery } from './registry.js';

export interface VmServiceDeps {
  store: Store;
  events: EventLog;
  driver: HypervisorDriver;
  /** The VMs' volumes (pools, checks, the ones each VM owns). */
  storage: VmStorage;
  nodeId: string;
  log: Logger;
  /** Default ACPI shutdown timeout. */
  shutdownTimeoutMs?: number;
  /** The daemon's data directory: VMs from before storage pools have their files imported from it. */
  dataDir?: string;
  /** Test fault: called once an operation's driver work is done, before its outcome is written. */
  afterDriverWork?: (kind: OperationKind) => void;
}

/** A VM claimed for a migration, and how to give it back. */
export interface MigrationClaim {
  vm: VmRecord;
  release: () => void;
}

/** Admission of new VMs against their tenant's quota (cluster/quotas.ts). */
export interface VmQuota {
  admit(tenant: string, vm: { id: string; vcpus: number; memoryMiB: number }): Promise<void>;
  withdraw(tenant: string, vmId: string): Promise<void>;
}

/** The cluster inventory, as the VM service needs it: a new VM is findable from every member before its create is answered. */
export interface VmDirectory {
  /** Resolves once `vmId`'s placement is published (or after a bounded wait when the cluster cannot take writes). */
  publish(vmId: string): Promise<void>;
}

export class VmService {
  #deps: VmServiceDeps;
  #registry: VmRegistry;
  #claims = new VmClaims();
  #runner: OperationRunner;
  #quota: VmQuota | undefined;
  #directory: VmDirectory | undefined;
  #reconciler: Reconciler;

  private constructor(deps: VmServiceDeps, registry: VmRegistry) {
    this.#deps = deps;
    this.#registry = registry;
    const { store, events, driver, storage, log } = deps;
    this.#runner = new OperationRunner({
      store, events, driver, storage, log, registry, claims: this.#claims, shutdownTimeoutMs: deps.shutdownTimeoutMs ?? 60_000,
      ...(deps.afterDriverWork ? { afterDriverWork: deps.afterDriverWork } : {}),
    });
    storage.storage.useAttachments((ref) => this.#attachments(ref));
    registry.observe((before, after) => this.#indexAttachments(before, after));
    this.#reconciler = new Reconciler({ driver, registry, claims: this.#claims, log, abandonIncoming: (vmId) => this.incomingAbandoned(vmId, [], []) });
  }

  static async open(deps: VmServiceDeps): Promise<VmService> {
    const svc = new VmService(deps, await VmRegistry.load(deps.store, deps.events));
    await svc.#importLegacy();
    svc.#reconciler.watch();
    await svc.#runner.failInterrupted();
    await svc.#reconciler.recover();
    await svc.#recoverMoves();
    await svc.#dropOrphanVolumes();
    return svc;
  }

  /**
   * Disk moves a previous daemon left unfinished. QEMU is the judge: a running VM whose
   * disk is already on the target (the pivot happened) finishes the move; otherwise the
   * mirror is dropped and the VM stays on its volume; the target goes.
   */
  async #recoverMoves(): Promise<void> {
    const { storage, driver, log } = this.#deps;
    for (const m of storage.storage.movesInFlight()) {
      const vm = this.#registry.find(m.vmId);
      if (!vm) continue; // an orphan: removed below
      const live = (vm.state === 'running' || vm.state === 'paused') && driver.diskMover;
      const now = live ? await driver.diskMover!.currentFile(vm.id, m.disk).catch(() => undefined) : undefined;
      let target: string | undefined;
      try {
        target = storage.storage.dataPath(m.ref);
      } catch {
        target = undefined;
      }
      if (now !== undefined && now === target) {
        const meta = storage.storage.find(m.ref)!;
        const spec = movedSpec(vm.spec, m.disk, parseVolumeRef(m.ref)!.pool, m.ref, Math.ceil(meta.sizeBytes / (1 << 20)));
        await this.#registry.commit(vm.id, { set: { spec }, events: [{ type: 'vm.updated', data: { diskMoved: { disk: m.disk, from: m.from, to: m.ref }, recovered: true } }] });
        await storage.finishMove({ vmId: vm.id, disk: m.disk, from: m.from, to: m.ref, format: meta.format, targetPath: target, spec });
        log.warn({ vmId: vm.id, disk: m.disk, to: m.ref }, 'finished a disk move that a restart interrupted after its pivot');
      } else {
        if (live) await driver.diskMover!.abandon(vm.id, m.disk).catch((err) => log.warn({ err, vmId: vm.id }, 'dropping an interrupted disk move in QEMU failed'));
        await storage.storage.discard(m.ref);
        log.warn({ vmId: vm.id, disk: m.disk, target: m.ref }, 'a disk move was interrupted by a restart: the disk stays on its volume, the half-copied target is removed');
      }
    }
  }

  /** VMs whose specs name host paths (from before storage pools) get their files imported as volumes, once. */
  async #importLegacy(): Promise<void> {
    const { dataDir, log } = this.#deps;
    for (const vm of [...this.#registry.all()].filter((v) => isLegacy(v.spec))) {
      if (!dataDir) throw new NovaError('INTERNAL', `VM ${vm.id} has a pre-pool spec and no data directory to import it from`);
      try {
        const spec = await importLegacyVm(vm, { storage: this.#deps.storage.storage, dataDir, log });
        await this.#registry.commit(vm.id, { set: { spec }, events: [{ type: 'vm.updated', data: { changes: { disks: spec.disks, boot: spec.boot, ...(spec.cdrom ? { cdrom: spec.cdrom } : {}) }, importedFrom: 'host paths' } }] });
        log.info({ vmId: vm.id, name: vm.name }, 'imported the files of a VM from before storage pools into the imported pool');
      } catch (err) {
        log.error({ err, vmId: vm.id }, 'importing a VM from before storage pools failed');
        const reason = `its files could not be imported as volumes: ${(err as Error).message}`;
        if (vm.state !== 'error' || vm.stateReason !== reason) await this.#registry.commit(vm.id, { ...(vm.state !== 'error' ? { to: 'error' as const } : {}), reason });
      }
    }
  }

  /**
   * Volumes made for a VM that does not exist here (a create interrupted by a crash, a
   * migration whose VM left or never arrived) are removed.
   */
  async #dropOrphanVolumes(): Promise<void> {
    const storage = this.#deps.storage.storage;
    for (const { ref, vmId } of storage.ownedOrArriving()) {
      if (this.#registry.find(vmId)) continue;
      this.#deps.log.warn({ volume: ref, vmId }, 'removing a volume made for a VM this host does not have');
      await storage.discard(ref).catch((err) => this.#deps.log.error({ err, volume: ref }, 'removing an orphaned volume failed'));
    }
  }

  /** volume ref → the VMs whose specs use it, kept up to date with every record change. */
  #attached = new Map<string, Set<string>>();

  #indexAttachments(before: VmRecord | undefined, after: VmRecord | undefined): void {
    if (before && after && before.spec === after.spec) return;
    if (before) {
      for (const use of this.#deps.storage.uses(before.id, before.spec)) {
        const set = this.#attached.get(use.ref);
        set?.delete(before.id);
        if (set?.size === 0) this.#attached.delete(use.ref);
      }
    }
    if (after) {
      for (const use of this.#deps.storage.uses(after.id, after.spec)) {
        let set = this.#attached.get(use.ref);
        if (!set) this.#attached.set(use.ref, (set = new Set()));
        set.add(after.id);
      }
    }
  }

  /** VMs (ids) whose specs use volume `ref`. */
  #attachments(ref: string): string[] {
    return [...(this.#attached.get(ref) ?? [])];
  }

  // ---- reads -------------------------------------------------------------------

  /** The VMs' volumes (migrations carry them). */
  get storage(): VmStorage {
    return this.#deps.storage;
  }

  get(ref: string): VmRecord {
    return this.#registry.get(ref);
  }

  /** The VM `ref` names (id or name), if it is on this member. */
  tryGet(ref: string): VmRecord | undefined {
    return this.#registry.find(ref);
  }

  /** The VM's JSON, cached until it changes (GET by id is the hottest read). */
  getJson(ref: string): string {
    return this.#registry.getJson(ref);
  }

  /** Every VM on this member. */
  all(): IterableIterator<VmRecord> {
    return this.#registry.all();
  }

  list(q: ListQuery): ListPage {
    return this.#registry.list(q);
  }

  get size(): number {
    return this.#registry.size;
  }

  countByState(): Record<VmState, number> {
    return this.#registry.countByState();
  }

  /** Deletes finished operations created before `cutoffMs`. */
  trimOperations(cutoffMs: number): Promise<number> {
    return this.#runner.trimBefore(cutoffMs);
  }

  /** A recent operation, if this member holds it in memory. */
  peekOperation(id: string): OperationRecord | undefined {
    return this.#runner.peek(id);
  }

  getOperation(id: string): Promise<OperationRecord> {
    return this.#runner.get(id);
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
    const live = [...this.#registry.all()].filter((vm) => vm.state === 'running' || vm.state === 'paused');
    const rows = await Promise.all(live.map(async (vm) => ({ vm, stats: await this.#deps.driver.stats?.(vm.id).catch(() => undefined) })));
    return rows.filter((r): r is { vm: VmRecord; stats: VmStats } => r.stats !== undefined);
  }

  // ---- writes ------------------------------------------------------------------

  async create(req: CreateVmRequest, opts: { prepare?: (id: string) => Promise<void> } = {}): Promise<VmRecord> {
    const { name, ...asked } = req;
    const spec = this.#deps.storage.normalize(asked);
    const id = newId('vm');
    this.#assertValid(spec, id);
    if (this.#registry.find(name)) throw new NovaError('VM_NAME_CONFLICT', `a VM named "${name}" already exists`);
    await this.#quota?.admit(spec.tenant, { id, vcpus: spec.vcpus, memoryMiB: spec.memoryMiB });
    let inserted = false;
    try {
      if (opts.prepare) await opts.prepare(id);
      const vm = await this.#insertNew(id, name, spec);
      inserted = true;
      const made = await this.#createOnDriver(vm);
      await this.#directory?.publish(made.id);
      return made;
    } catch (err) {
      // Not made after all: its admission stops counting now rather than when it expires.
      if (!inserted) await this.#quota?.withdraw(spec.tenant, id).catch(() => undefined);
      throw err;
    }
  }

  async #insertNew(id: string, name: string, spec: VmSpec): Promise<VmRecord> {
    const unreserve = this.#registry.reserveName(name);
    try {
      const now = new Date().toISOString();
      const draft: VmRecord = { id, name, spec, state: 'pending', node: this.#deps.nodeId, generation: 1, createdAt: now, updatedAt: now };
      // Its volumes first: a pool that cannot take them refuses the VM with nothing left behind.
      await this.#deps.storage.provision(draft);
      try {
        return await this.#registry.insert(draft, [{ type: 'vm.created', data: { name, spec } }]);
      } catch (err) {
        await this.#deps.storage.release(draft, { keepDisks: false }).catch(() => undefined);
        throw err;
      }
    } finally {
      unreserve();
    }
  }

  async #createOnDriver(vm: VmRecord): Promise<VmRecord> {
    try {
      await this.#deps.driver.create(vm);
    } catch (err) {
      await this.#registry.commit(vm.id, { to: 'error', reason: reasonOf(err) });
      throw driverFailure('create', err, vm.id);
    }
    return await this.#registry.commit(vm.id, { to: 'stopped' });
  }

  /**
   * Turns a stopped VM into a template: its disks' volumes become read-only template
   * volumes, and the VM never starts again; VMs are made from it with `fromTemplate`.
   */
  async makeTemplate(ref: string): Promise<VmRecord> {
    const vm = await this.#settled(ref);
    if (vm.template) return vm;
    if (vm.state !== 'stopped') throw new NovaError('VM_INVALID_STATE', `VM "${vm.name}" is ${vm.state}; only a stopped VM can become a template`, { state: vm.state });
    const claim = this.#claims.local(vm);
    try {
      for (const use of this.#deps.storage.uses(vm.id, vm.spec).filter((u) => u.role === 'disk')) {
        this.#deps.storage.storage.assertRemovable(use.ref, { exceptVm: vm.id }); // no other VM writes it
        await this.#deps.storage.storage.makeTemplateVolume(use.ref);
      }
      return await this.#registry.commit(vm.id, { set: { template: true }, events: [{ type: 'vm.updated', data: { template: true } }] });
    } finally {
      claim.release();
    }
  }

  /** A new VM from a template: the same spec, its disks linked clones of the template's volumes (or full copies). */
  async createFromTemplate(req: FromTemplateRequest): Promise<VmRecord> {
    const t = this.get(req.fromTemplate);
    if (!t.template) throw new NovaError('VM_INVALID_STATE', `VM "${t.name}" is not a template (POST /v1/vms/${t.id}/template makes it one)`, { state: t.state });
    const storage = this.#deps.storage;
    const bases = new Map(storage.uses(t.id, t.spec).filter((u) => u.role === 'disk').map((u) => [u.disk!.name, u.ref]));
    const disks = t.spec.disks.map((d) => {
      const base = bases.get(d.name)!;
      const pool = parseVolumeRef(base)!.pool;
      const sizeMiB = Math.ceil((storage.storage.find(base)?.sizeBytes ?? 1 << 20) / (1 << 20));
      return req.linked
        ? { name: d.name, bus: d.bus, readOnly: d.readOnly, pool, from: base, format: 'qcow2' as const }
        : { name: d.name, bus: d.bus, readOnly: d.readOnly, pool, sizeMiB, format: storage.storage.find(base)?.format ?? ('qcow2' as const) };
    });
    const { cloudInit, ...rest } = t.spec;
    const spec = { ...rest, disks, labels: req.labels ?? t.spec.labels, ...(cloudInit ? { cloudInit } : {}) };
    return this.create({ name: req.name, ...spec }, {
      // A full copy's volumes are the template's data, copied before the VM is recorded.
      ...(req.linked ? {} : {
        prepare: async (id) => {
          for (const d of disks) {
            const target = `${d.pool}/${id}-${d.name}`;
            await storage.storage.clone(bases.get(d.name)!, { name: `${id}-${d.name}`, pool: d.pool, linked: false });
            await storage.storage.setOwner(target, id);
          }
        },
      }),
    });
  }

  async patch(ref: string, req: PatchVmRequest): Promise<VmRecord> {
    const vm = await this.#settled(ref);
    if (vm.template) throw new NovaError('VM_INVALID_STATE', `VM "${vm.name}" is a template; templates do not change`, { state: vm.state, template: true });
    if (vm.state !== 'stopped' && vm.state !== 'pending') {
      throw new NovaError('VM_INVALID_STATE', `VM "${vm.name}" is ${vm.state}; only stopped VMs can be changed`, { state: vm.state });
    }
    this.#claims.assertFree(vm);
    const spec = this.#deps.storage.normalize({ ...vm.spec, ...req });
    this.#assertValid(spec, vm.id);
    const claim = this.#claims.local(vm);
    try {
      await this.#deps.storage.provision({ ...vm, spec });
      const next = await this.#registry.commit(vm.id, { set: { spec }, events: [{ type: 'vm.updated', data: { changes: req } }] });
      // Disks taken out of the spec keep their volumes, as ordinary volumes now.
      await this.#deps.storage.disownDropped(vm, next);
      return next;
    } finally {
      claim.release();
    }
  }

  /**
   * Moves a disk to another pool (202 with an operation): live with a mirror and a pivot
   * for a running VM, a copy for a stopped one; cancel leaves it where it was.
   */
  async moveDisk(ref: string, disk: string, to: { pool: string; bandwidthMBps?: number }): Promise<OperationRecord> {
    const { from, src } = this.#deps.storage.checkMove(this.get(ref), disk, to.pool);
    // A pool without room refuses the move before it starts (507), not halfway through.
    await this.#deps.storage.storage.assertRoomFor(to.pool, { virtualBytes: src.sizeBytes, bytes: this.#deps.storage.storage.allocatedBytes(from) });
    return this.#runner.request(ref, 'move-disk', { disk, pool: to.pool, ...(to.bandwidthMBps ? { bandwidthMBps: to.bandwidthMBps } : {}) });
  }

  /** Cancels a running cancellable operation. */
  cancelOperation(id: string): Promise<OperationRecord> {
    return this.#runner.cancel(id);
  }

  /** Starts a lifecycle operation; resolves once it is accepted (202), not finished. */
  requestAction(ref: string, kind: OperationKind, opts: ActionOptions = {}): Promise<OperationRecord> {
    return this.#runner.request(ref, kind, opts);
  }

  /** Adds a disk to a stopped VM, or hot-plugs it into a running one. */
  async addDisk(ref: string, disk: DiskSpec): Promise<VmRecord> {
    const vm = await this.#settled(ref);
    if (vm.state !== 'stopped' && vm.state !== 'running') {
      throw new NovaError('VM_INVALID_STATE', `disks can be added to stopped or running VMs, not ${vm.state} ones`, { state: vm.state });
    }
    const claim = this.#claims.local(vm);
    const storage = this.#deps.storage;
    try {
      const added = storage.normalizeDisk(disk);
      const spec = { ...vm.spec, disks: [...vm.spec.disks, added] };
      this.#assertValid(spec, vm.id);
      const attach = this.#deps.driver.attachDisk?.bind(this.#deps.driver);
      if (!attach) throw new NovaError('VM_INVALID_STATE', `the ${this.#deps.driver.name} driver cannot add disks`);
      const withDisk = { ...vm, spec };
      await storage.provision(withDisk, [added]);
      try {
        const media = storage.media(withDisk).disks.find((d) => d.name === added.name)!;
        await attach(vm, media, vm.state === 'running').catch((err) => {
          throw err instanceof DriverError ? driverFailure('attach-disk', err, vm.id) : err;
        });
      } catch (err) {
        await storage.releaseDisks(withDisk, [added]).catch(() => undefined);
        throw err;
      }
      // The claim kept the record unchanged meanwhile, so `spec` is still based on the current one.
      return await this.#registry.commit(vm.id, { set: { spec }, events: [{ type: 'vm.updated', data: { diskAdded: added, hotplug: vm.state === 'running' } }] });
    } finally {
      claim.release();
    }
  }

  /**
   * Takes or deletes a snapshot of volume `ref` inside the running (or paused) VM that has
   * it open; false when none has it (the caller uses qemu-img).
   */
  async snapshotVolumeOnline(ref: string, op: 'create' | 'delete', name: string): Promise<boolean> {
    const found = this.#runningUser(ref);
    if (!found) return false;
    const snap = this.#deps.driver.diskSnapshot?.bind(this.#deps.driver);
    if (!snap) throw new NovaError('SNAPSHOT_UNSUPPORTED', `the ${this.#deps.driver.name} driver cannot snapshot disks of a running VM`);
    await snap(found.vm.id, found.disk, op, name).catch((err) => {
      throw err instanceof DriverError ? driverFailure('snapshot', err, found.vm.id) : err;
    });
    return true;
  }

  /** The running or paused VM whose disk is volume `ref`, if any (a VM in transition is VM_INVALID_STATE). */
  #runningUser(ref: string): { vm: VmRecord; disk: string } | undefined {
    for (const vm of this.#registry.all()) {
      const use = this.#deps.storage.uses(vm.id, vm.spec).find((u) => u.ref === ref && u.role === 'disk');
      if (!use) continue;
      if (vm.state === 'running' || vm.state === 'paused') return { vm, disk: use.disk!.name };
      if (vm.state !== 'stopped' && vm.state !== 'pending' && vm.state !== 'error') throw new NovaError('VM_INVALID_STATE', `volume ${ref} is in use by VM "${vm.name}", which is ${vm.state}`, { state: vm.state });
    }
    return undefined;
  }

  /**
   * Grows volume `ref` inside the running (or paused) VM that has it open, through its
   * hypervisor; false when no such VM has it (the caller resizes it offline).
   */
  async resizeVolumeOnline(ref: string, sizeBytes: number): Promise<boolean> {
    const found = this.#runningUser(ref);
    if (!found) return false;
    const resize = this.#deps.driver.resizeDisk?.bind(this.#deps.driver);
    if (!resize) throw new NovaError('VM_INVALID_STATE', `the ${this.#deps.driver.name} driver cannot resize disks of a running VM`);
    await resize(found.vm.id, found.disk, sizeBytes).catch((err) => {
      throw err instanceof DriverError ? driverFailure('resize', err, found.vm.id) : err;
    });
    return true;
  }

  /** Makes lifecycle operations and migrations also take the VM's cluster-wide lock. */
  useLockGuard(guard: VmLockGuard): void {
    this.#claims.useLockGuard(guard);
  }

  /** From now on, every new VM is admitted against its tenant's quota first (QUOTA_EXCEEDED). */
  useQuota(quota: VmQuota): void {
    this.#quota = quota;
  }

  /** From now on, a create is answered only once `directory` lets every member find the new VM. */
  useDirectory(directory: VmDirectory): void {
    this.#directory = directory;
  }

  /** Waits for running operations to finish (graceful shutdown). */
  drain(): Promise<void> {
    return this.#claims.drain();
  }

  /** The spec's own rules (→ VM_SPEC_INVALID), then its volumes (→ VOLUME_ and POOL_ codes). */
  #assertValid(spec: VmSpec, vmId: string, opts: { arriving?: Set<string> } = {}): void {
    const problems = semanticProblems(spec);
    if (problems.length === 0) problems.push(...(this.#deps.driver.validate?.(spec) ?? []));
    if (problems.length > 0) throw new NovaError('VM_SPEC_INVALID', problems.join('; '), { problems });
    this.#deps.storage.check(vmId, spec, opts);
  }

  /** The VM, once a just-finished claim on it has handed its cluster lock back. */
  async #settled(ref: string): Promise<VmRecord> {
    await this.#claims.settled(this.#registry.find(ref)?.id);
    return this.#registry.get(ref);
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
    const vm = await this.#settled(ref);
    const snaps = this.#snapshotDriver(vm);
    if (!allowed.includes(vm.state)) throw new NovaError('VM_INVALID_STATE', `cannot ${action.replace(/d$/, '')} a snapshot while the VM is ${vm.state}`, { state: vm.state, allowedFrom: allowed });
    const claim = this.#claims.local(vm);
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
      claim.release();
    }
  }

  // ---- live migration hooks (driven by MigrationService) ------------------------

  /** Source: claims a VM (running: live; stopped: cold) for a migration and marks it `migrating`. */
  async beginMigrationOut(ref: string, event: EventDraft): Promise<MigrationClaim> {
    const vm = await this.#settled(ref);
    this.#claims.assertFree(vm);
    if (vm.template) throw new NovaError('VM_INVALID_STATE', `VM "${vm.name}" is a template; templates do not migrate`, { state: vm.state, template: true });
    if (vm.state !== 'running' && vm.state !== 'stopped') throw new NovaError('VM_INVALID_STATE', `cannot migrate VM "${vm.name}" while it is ${vm.state}`, { state: vm.state, allowedFrom: ['running', 'stopped'] });
    const claim = await this.#claims.cluster(vm, 'migration');
    try {
      await this.#registry.commit(vm.id, { to: 'migrating', events: [event] });
    } catch (err) {
      claim.release();
      throw err;
    }
    return { vm, release: () => claim.release() };
  }

  /** Source: the VM runs on the destination now; it is no longer ours. */
  async migratedAway(vmId: string, extraOps: WriteOp[], events: EventDraft[]): Promise<{ cleanedUp: Promise<void> }> {
    const vm = this.#registry.get(vmId);
    await this.#registry.drop(vm, extraOps, [{ type: 'vm.migrated', vmId, tenant: vm.spec.tenant, data: { name: vm.name } }, ...events]);
    // Answered once the VM has left the records; its files go after (that can take a while).
    return { cleanedUp: this.#removeMigratedAway(vm) };
  }

  /** What a migrated-away VM left here is a stale copy: its process directory and the volumes that moved with it. */
  async #removeMigratedAway(vm: VmRecord): Promise<void> {
    const vmId = vm.id;
    await this.#deps.driver.destroy(vm).catch((err) => this.#deps.log.error({ err, vmId }, 'removing the migrated-away VM\'s files failed'));
    const seeds = this.#deps.storage.uses(vm.id, vm.spec).filter((u) => u.role === 'cidata' && this.#deps.storage.storage.find(u.ref));
    for (const { ref } of [...this.#deps.storage.carried(vm), ...seeds]) {
      await this.#deps.storage.storage.discard(ref).catch((err) => this.#deps.log.error({ err, vmId, volume: ref }, 'removing a migrated-away volume failed'));
    }
  }

  /**
   * Source: the migration did not move the VM. With `stuck`, the outcome is unknown and
   * the VM goes to `error` (never resumed blindly: the destination may be running it).
   */
  async migrationAbandoned(vmId: string, reason: string, extraOps: WriteOp[], events: EventDraft[], stuck = false): Promise<void> {
    if (!this.#registry.find(vmId)) return;
    let to: VmState = 'error';
    if (!stuck) {
      const actual = await this.#deps.driver.inspect(vmId).catch(() => undefined);
      to = actual?.status === 'running' ? 'running' : actual ? 'error' : 'stopped';
    }
    await this.#registry.commit(vmId, { to, reason, alsoWrite: extraOps, events });
  }

  /** Destination: records the arriving VM (state `migrating`) and claims it. */
  async adoptIncoming(incoming: { id: string; name: string; spec: VmSpec }, marker: NonNullable<VmRecord['incoming']>, events: EventDraft[], arriving: Set<string> = new Set()): Promise<MigrationClaim> {
    if (this.#registry.find(incoming.id)) throw new NovaError('VM_NAME_CONFLICT', `VM ${incoming.id} already exists on this node`);
    // The same rules as a VM created here: a migration is no way around them.
    this.#assertValid(incoming.spec, incoming.id, { arriving });
    const unreserve = this.#registry.reserveName(incoming.name, `a VM named "${incoming.name}" already exists on this node`);
    const now = new Date().toISOString();
    const vm: VmRecord = { id: incoming.id, name: incoming.name, spec: incoming.spec, state: 'migrating', node: this.#deps.nodeId, incoming: marker, generation: 1, createdAt: now, updatedAt: now };
    let claim: VmClaim | undefined;
    try {
      claim = this.#claims.local(vm);
      await this.#registry.insert(vm, [{ type: 'vm.created', data: { name: vm.name, spec: vm.spec, migrationId: marker.migrationId } }, ...events]);
    } catch (err) {
      claim?.release();
      throw err;
    } finally {
      unreserve();
    }
    return { vm, release: () => claim.release() };
  }

  /** Destination: the VM is here — running (live), or stopped with its files (cold). */
  async incomingArrived(vmId: string, arrived: { to: 'running' | 'stopped'; runtime?: Record<string, unknown>; checkpoint?: VmRecord['checkpoint'] }, extraOps: WriteOp[], events: EventDraft[]): Promise<void> {
    for (const ref of this.#deps.storage.storage.arrivingFor(vmId)) await this.#deps.storage.storage.arrived(ref);
    await this.#registry.commit(vmId, {
      to: arrived.to,
      clear: ['incoming'],
      ...(arrived.checkpoint ? { set: { checkpoint: arrived.checkpoint } } : {}),
      ...(arrived.runtime !== undefined ? { runtime: arrived.runtime } : {}),
      alsoWrite: extraOps,
      events,
    });
  }

  /** Destination: the migration failed; the half-arrived VM is removed (its process is gone). */
  async incomingAbandoned(vmId: string, extraOps: WriteOp[], events: EventDraft[]): Promise<void> {
    const vm = this.#registry.find(vmId);
    if (!vm) return;
    await this.#deps.driver.destroy(vm).catch((err) => this.#deps.log.warn({ err, vmId }, 'cleaning up an aborted incoming VM failed'));
    await this.#registry.drop(vm, extraOps, [{ type: 'vm.deleted', vmId, tenant: vm.spec.tenant, data: { name: vm.name, reason: 'incoming migration aborted' } }, ...events]);
    for (const ref of this.#deps.storage.storage.arrivingFor(vmId)) {
      await this.#deps.storage.storage.discard(ref).catch((err) => this.#deps.log.warn({ err, vmId, volume: ref }, 'removing a half-arrived volume failed'));
    }
  }
}

function driverFailure(op: string, err: unknown, vmId: string): NovaError {
  return new NovaError('DRIVER_FAILED', `${op} failed: ${reasonOf(err)}`, { vmId });
}
