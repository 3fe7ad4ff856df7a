/**
 * Runs lifecycle operations: accepts a request (state and claim checks, the operation
 * record and the VM's `during` state in one write), runs the action's handler under a
 * cluster claim, and writes the outcome with the finished operation in one write. A
 * failed operation settles the VM to what the hypervisor reports, and its record keeps
 * a registered error code, never a raw system error.
 */
import { rmSync } from 'node:fs';
import { pack, unpack } from 'msgpackr';
import type { Logger } from 'pino';
import { NovaError, type ErrorCode } from '../errors.js';
import type { EventLog } from '../events/log.js';
import type { EventDraft } from '../events/types.js';
import { idAt } from '../ids.js';
import { newOperation, opKey, OP_PREFIX, type OperationKind, type OperationRecord } from '../operations/operation.js';
import { prefixRange, type Store, type WriteOp } from '../store/store.js';
import { ACTIONS, actionAllowed, isForcedDelete, type ActionOptions, type ActionOutcome } from './actions.js';
import type { VmClaim, VmClaims } from './claims.js';
import { DriverError, type DriverInstanceState, type HypervisorDriver } from './driver.js';
import { stripUndefined, type VmRegistry } from './registry.js';
import { canTransition, type VmState } from './state.js';
import type { VmStorage } from './media.js';

export interface RunnerDeps {
  store: Store;
  events: EventLog;
  driver: HypervisorDriver;
  storage: VmStorage;
  registry: VmRegistry;
  claims: VmClaims;
  log: Logger;
  /** Default ACPI shutdown timeout. */
  shutdownTimeoutMs: number;
  /** Test fault: called once an action's driver work is done, before its outcome is written. */
  afterDriverWork?: (kind: OperationKind) => void;
}

/** Finished operations kept in memory (older ones are read from the store). */
const OPS_CACHE = 10_000;

export class OperationRunner {
  #deps: RunnerDeps;
  #ops = new Map<string, OperationRecord>();
  /** Running cancellable operations. */
  #aborts = new Map<string, AbortController>();

  constructor(deps: RunnerDeps) {
    this.#deps = deps;
  }

  /** The operation if it is among the recent ones held in memory. */
  peek(id: string): OperationRecord | undefined {
    return this.#ops.get(id);
  }

  async get(id: string): Promise<OperationRecord> {
    const cached = this.#ops.get(id);
    if (cached) return cached;
    const raw = id.startsWith('op-') ? await this.#deps.store.get(opKey(id)) : undefined;
    if (!raw) throw new NovaError('OPERATION_NOT_FOUND', `no operation "${id}"`);
    return unpack(raw) as OperationRecord;
  }

  /** Starts a lifecycle operation; resolves once it is accepted (202), not finished. */
  async request(ref: string, kind: OperationKind, opts: ActionOptions = {}): Promise<OperationRecord> {
    const { registry, claims, driver } = this.#deps;
    await claims.settled(registry.find(ref)?.id);
    const vm = registry.get(ref);
    claims.assertFree(vm); // before state checks
    if (vm.template && kind !== 'delete') throw new NovaError('VM_INVALID_STATE', `VM "${vm.name}" is a template: make a VM from it (POST /v1/vms {fromTemplate})`, { state: vm.state, template: true });
    const action = ACTIONS[kind];
    if (!actionAllowed(kind, vm, opts)) {
      throw new NovaError('VM_INVALID_STATE', `cannot ${kind} VM "${vm.name}" while it is ${vm.state}`, { state: vm.state, allowedFrom: action.from });
    }
    action.check?.(vm, driver, opts, this.#deps.storage);
    const op = newOperation(kind, vm.id);
    const claim = await claims.cluster(vm, kind);
    const started: EventDraft = { type: 'operation.started', vmId: vm.id, tenant: vm.spec.tenant, operationId: op.id, data: { kind } };
    if (action.inline) {
      try {
        await this.#run(op, vm.id, opts, claim, new AbortController().signal, [started]);
      } finally {
        claim.release({ linger: true });
      }
      return this.#ops.get(op.id) ?? op;
    }
    try {
      if (action.during && !isForcedDelete(kind, vm, opts)) {
        await registry.commit(vm.id, { to: action.during, alsoWrite: [opWrite(op)], events: [started] });
      } else {
        await this.#deps.events.commit([opWrite(op)], [started]);
      }
      this.#ops.set(op.id, op);
    } catch (err) {
      claim.release();
      throw err;
    }
    const abort = new AbortController();
    if (action.cancellable) this.#aborts.set(op.id, abort);
    void this.#run(op, vm.id, opts, claim, abort.signal).finally(() => {
      this.#aborts.delete(op.id);
      claim.release({ linger: kind !== 'delete' });
    });
    return op;
  }

  /** Cancels a running cancellable operation (it ends as failed with OPERATION_CANCELLED). */
  async cancel(id: string): Promise<OperationRecord> {
    const op = await this.get(id);
    const abort = this.#aborts.get(id);
    if (!abort) throw new NovaError('OPERATION_NOT_CANCELLABLE', op.state === 'running' ? `a ${op.kind} operation cannot be cancelled` : `operation ${id} has finished (${op.state})`, { state: op.state });
    abort.abort();
    return op;
  }

  /** Marks operations left running by a previous daemon as failed (their outcome is unknown). */
  async failInterrupted(): Promise<void> {
    for (const e of await this.#deps.store.scan(prefixRange(OP_PREFIX))) {
      const op = unpack(e.value) as OperationRecord;
      if (op.state === 'running') await this.#finishAlone(op, 'failed', { error: { code: 'INTERNAL', message: 'interrupted by daemon restart' } });
    }
  }

  /** Runs the action and writes how it ended; `started` events go out with that write (inline actions). */
  async #run(op: OperationRecord, vmId: string, opts: ActionOptions, claim: VmClaim, signal: AbortSignal, started: EventDraft[] = []): Promise<void> {
    const { registry, driver, storage } = this.#deps;
    const vm = registry.get(vmId);
    let lastSaved = 0;
    let current = op;
    const progress = (percent: number, message: string, detail?: Record<string, number>) => {
      current = { ...current, progress: { percent, message, ...(detail ? { detail } : {}) }, updatedAt: new Date().toISOString() };
      this.#ops.set(op.id, current);
      if (Date.now() - lastSaved < 500) return;
      lastSaved = Date.now();
      void this.#deps.events
        .commit([opWrite(current)], [{ type: 'operation.progress', vmId, tenant: vm.spec.tenant, operationId: op.id, data: { kind: op.kind, ...current.progress } }])
        .catch((err) => this.#deps.log.warn({ err, op: op.id }, 'recording progress failed'));
    };
    try {
      const outcome = await ACTIONS[op.kind].run({
        vm,
        driver,
        storage,
        opts,
        shutdownTimeoutMs: this.#deps.shutdownTimeoutMs,
        step: async (to) => {
          claim.assertHeld();
          await registry.commit(vmId, { to });
        },
        progress,
        signal,
      });
      this.#deps.afterDriverWork?.(op.kind);
      claim.assertHeld();
      await this.#record(current, vmId, outcome, started);
    } catch (err) {
      this.#deps.log.warn({ err, op: op.id, vmId, kind: op.kind }, 'operation failed');
      await this.#settleAfterFailure(vmId, op.kind, err).catch((e) => this.#deps.log.error({ err: e, vmId }, 'could not settle VM state'));
      await this.#finishAlone(current, 'failed', { error: operationError(err) }, started).catch((e) => this.#deps.log.error({ err: e, op: op.id }, 'could not record operation failure'));
    }
  }

  /** Writes an action's outcome and the finished operation in one batch. */
  async #record(op: OperationRecord, vmId: string, outcome: ActionOutcome, started: EventDraft[] = []): Promise<void> {
    const { registry } = this.#deps;
    const { done, event } = this.#finished(op, 'succeeded', outcome.result ? { result: outcome.result } : {});
    if (outcome.removed) {
      const vm = registry.get(vmId);
      await registry.drop(vm, [opWrite(done)], [...started, { type: 'vm.deleted', vmId, tenant: vm.spec.tenant, operationId: op.id, data: { name: vm.name } }, event]);
    } else if (outcome.to || outcome.checkpoint || outcome.consumedCheckpoint || outcome.spec) {
      await registry.commit(vmId, stripUndefined({
        to: outcome.to,
        reason: outcome.reason,
        runtime: outcome.runtime,
        ...(outcome.checkpoint || outcome.spec ? { set: { ...(outcome.checkpoint ? { checkpoint: outcome.checkpoint } : {}), ...(outcome.spec ? { spec: outcome.spec } : {}) } } : {}),
        ...(outcome.consumedCheckpoint ? { clear: ['checkpoint' as const] } : {}),
        alsoWrite: [opWrite(done)],
        eventsBefore: started,
        events: [event],
      }));
    } else {
      await this.#deps.events.commit([opWrite(done)], [...started, event]);
    }
    // Cleanup that must follow the write (a moved disk's old volume) is done before anyone
    // reading the operation sees it finished.
    await outcome.after?.().catch((err) => this.#deps.log.error({ err, op: op.id, vmId }, 'cleanup after the operation failed'));
    this.#ops.set(op.id, done);
    // Only once the record no longer points at it: a restored checkpoint is spent.
    if (outcome.consumedCheckpoint) rmSync(outcome.consumedCheckpoint.path, { force: true });
  }

  /** After a failed operation, set the state to what the hypervisor says is true. */
  async #settleAfterFailure(vmId: string, kind: OperationKind, err: unknown): Promise<void> {
    const { registry } = this.#deps;
    const vm = registry.find(vmId);
    if (!vm) return;
    const reason = `${kind} failed: ${reasonOf(err)}`;
    let actual: DriverInstanceState | undefined;
    try {
      actual = await this.#deps.driver.inspect(vmId);
    } catch (inspectErr) {
      await registry.commit(vmId, { to: 'error', reason: `${reason}; inspect failed: ${reasonOf(inspectErr)}` });
      return;
    }
    const target: VmState = kind === 'delete' ? 'error' : actual ? actual.status : 'stopped';
    // An action that kept the VM's state (reboot, move-disk) leaves it there when it fails.
    if (target === vm.state) await registry.commit(vmId, { reason });
    else await registry.commit(vmId, { to: canTransition(vm.state, target) ? target : 'error', reason });
  }

  /** The finished form of an operation and its event, to be written by the caller. */
  #finished(op: OperationRecord, state: 'succeeded' | 'failed', extra: Pick<OperationRecord, 'error' | 'result'>): { done: OperationRecord; event: EventDraft } {
    const now = new Date().toISOString();
    const done: OperationRecord = { ...op, ...stripUndefined(extra), state, progress: { percent: 100, message: state, ...(op.progress.detail ? { detail: op.progress.detail } : {}) }, updatedAt: now, finishedAt: now };
    const vm = this.#deps.registry.find(op.vmId);
    const event: EventDraft = { type: `operation.${state}`, vmId: op.vmId, operationId: op.id, data: { kind: op.kind, ...stripUndefined(extra) } };
    if (vm) event.tenant = vm.spec.tenant;
    this.#trimCache();
    return { done, event };
  }

  /** Writes a finished operation on its own (no VM change with it). */
  async #finishAlone(op: OperationRecord, state: 'succeeded' | 'failed', extra: Pick<OperationRecord, 'error' | 'result'>, started: EventDraft[] = []): Promise<void> {
    const { done, event } = this.#finished(op, state, extra);
    await this.#deps.events.commit([opWrite(done)], [...started, event]);
    this.#ops.set(op.id, done);
  }

  /** Deletes finished operations created before `cutoffMs` (the store's and the cache's); returns how many. */
  async trimBefore(cutoffMs: number): Promise<number> {
    const end = opKey(idAt('op', cutoffMs));
    let removed = 0;
    for (let start = opKey('op-'); ; ) {
      const page = await this.#deps.store.scan({ start, end, limit: 512 });
      const old = page.filter((e) => (unpack(e.value) as OperationRecord).state !== 'running');
      if (old.length > 0) await this.#deps.store.write(old.map((e) => ({ key: e.key })));
      for (const e of old) this.#ops.delete((unpack(e.value) as OperationRecord).id);
      removed += old.length;
      if (page.length < 512) return removed;
      start = `${page.at(-1)!.key}\u0000`;
    }
  }

  #trimCache(): void {
    if (this.#ops.size <= OPS_CACHE) return;
    for (const [id, op] of this.#ops) {
      if (op.state !== 'running') this.#ops.delete(id);
      if (this.#ops.size <= OPS_CACHE * 0.9) break;
    }
  }
}

function opWrite(op: OperationRecord): WriteOp {
  return { key: opKey(op.id), value: pack(op) };
}

/**
 * The error an operation record keeps: a registered code and a message meant for
 * operators. A driver failure keeps its message (it names what the hypervisor said);
 * anything unexpected (a raw system error such as ENOENT) is INTERNAL, its details only
 * in the log.
 */
export function operationError(err: unknown): { code: ErrorCode; message: string } {
  if (err instanceof NovaError) return { code: err.code, message: err.message };
  if (err instanceof DriverError) return { code: 'DRIVER_FAILED', message: err.message };
  return { code: 'INTERNAL', message: 'internal error (see the daemon log)' };
}

export function reasonOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
