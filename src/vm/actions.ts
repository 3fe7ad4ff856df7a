/**
 * The lifecycle actions, one handler each: the states an action may start from, the
 * state the VM is in while it runs, the checks it makes before it is accepted, and the
 * driver work it does. The operation runner (`runner.ts`) owns everything around them:
 * claims, records, events, failure settling.
 */
import { NovaError } from '../errors.js';
import type { OperationKind } from '../operations/operation.js';
import type { HypervisorDriver } from './driver.js';
import type { VmStorage } from './media.js';
import type { VmRecord } from './record.js';
import type { VmState } from './state.js';
import type { VmSpec } from './spec.js';

export interface ActionOptions {
  /** ACPI shutdown timeout before forcing. */
  timeoutMs?: number;
  /** delete: stop a running VM first. */
  force?: boolean;
  /** delete: keep disk images. */
  keepDisks?: boolean;
  /** move-disk: which disk, to which pool, at most how fast (MB/s). */
  disk?: string;
  pool?: string;
  bandwidthMBps?: number;
}

/** What an action's handler may use. */
export interface ActionContext {
  vm: VmRecord;
  driver: HypervisorDriver;
  /** The VM's volumes (delete removes the ones it owns). */
  storage: VmStorage;
  opts: ActionOptions;
  /** Default ACPI shutdown timeout. */
  shutdownTimeoutMs: number;
  /** Moves the VM through an intermediate state (delete of a running VM). */
  step(to: VmState): Promise<void>;
  /** Reports how far a long action is (persisted and sent as operation.progress, at most twice a second). */
  progress(percent: number, message: string, detail?: Record<string, number>): void;
  /** Aborted when the operation is cancelled (cancellable actions only). */
  signal: AbortSignal;
}

/** How an action ended; the runner writes it with the finished operation in one batch. */
export interface ActionOutcome {
  /** The settled state; omitted: the state stays (reboot). */
  to?: VmState;
  reason?: string;
  runtime?: Record<string, unknown>;
  result?: Record<string, unknown>;
  /** A checkpoint the VM now has. */
  checkpoint?: NonNullable<VmRecord['checkpoint']>;
  /** The checkpoint was resumed from: it is spent and its file is removed after the write. */
  consumedCheckpoint?: NonNullable<VmRecord['checkpoint']>;
  /** The VM is gone: its record is deleted. */
  removed?: boolean;
  /** The VM's new spec, written with the finished operation. */
  spec?: VmSpec;
  /** Runs once the outcome is written (cleanup that must not come before it). */
  after?: () => Promise<void>;
}

export interface ActionHandler {
  /** States the action may start from (a subset of those with a legal transition to `during`). */
  from: readonly VmState[];
  /** The state while it runs; omitted: the state does not change until it ends. */
  during?: VmState;
  /**
   * Done before it is acknowledged (a quick hypervisor command): no state while it runs;
   * the driver call, then its outcome, the operation and its events in one write. A crash
   * in between leaves nothing recorded (nothing was acknowledged) and the hypervisor's
   * state, which the reconciler takes after the restart.
   */
  inline?: boolean;
  /** `DELETE /v1/operations/:id` aborts its signal. */
  cancellable?: boolean;
  /** Refuses the request before anything is recorded. */
  check?(vm: VmRecord, driver: HypervisorDriver, opts: ActionOptions, storage: VmStorage): void;
  run(ctx: ActionContext): Promise<ActionOutcome>;
}

/** delete with `force` also starts from these, stopping the VM first. */
export const FORCED_DELETE_FROM: readonly VmState[] = ['running', 'paused'];

const startOrRestore: ActionHandler['run'] = async ({ vm, driver, storage }) => {
  await storage.prepareCloudInit(vm); // the seed follows the spec as it is now
  // A VM with a checkpoint resumes from it (like libvirt's managed save).
  const saved = vm.checkpoint;
  const state = await driver.start(vm, saved ? { restoreFrom: saved.path } : {});
  return { to: 'running', runtime: state.runtime ?? {}, ...(saved ? { consumedCheckpoint: saved, result: { restoredFrom: saved.path } } : {}) };
};

export const ACTIONS: Record<OperationKind, ActionHandler> = {
  start: { from: ['stopped', 'error'], during: 'starting', run: startOrRestore },
  restore: {
    from: ['stopped'],
    during: 'starting',
    check(vm) {
      if (!vm.checkpoint) throw new NovaError('VM_INVALID_STATE', `VM "${vm.name}" has no checkpoint to restore`, { state: vm.state });
    },
    run: startOrRestore,
  },
  checkpoint: {
    from: ['running', 'paused'],
    during: 'stopping',
    check(_vm, driver) {
      if (!driver.checkpoint || !driver.checkpointPath) throw new NovaError('VM_INVALID_STATE', `the ${driver.name} driver cannot checkpoint VMs`);
    },
    async run({ vm, driver }) {
      const path = driver.checkpointPath!(vm.id);
      const { sizeBytes } = await driver.checkpoint!(vm.id, path);
      return { to: 'stopped', reason: 'checkpointed', checkpoint: { path, createdAt: new Date().toISOString(), sizeBytes }, result: { path, sizeBytes } };
    },
  },
  stop: {
    from: ['running', 'paused', 'error'],
    during: 'stopping',
    async run({ vm, driver }) {
      await driver.stop(vm.id);
      return { to: 'stopped' };
    },
  },
  shutdown: {
    from: ['running'],
    during: 'stopping',
    async run({ vm, driver, opts, shutdownTimeoutMs }) {
      const { forced } = await driver.shutdown(vm.id, { timeoutMs: opts.timeoutMs ?? shutdownTimeoutMs });
      return { to: 'stopped', result: { forced }, ...(forced ? { reason: 'guest did not power off in time; forced' } : {}) };
    },
  },
  pause: {
    from: ['running'],
    inline: true,
    async run({ vm, driver }) {
      await driver.pause(vm.id);
      return { to: 'paused' };
    },
  },
  resume: {
    from: ['paused'],
    inline: true,
    async run({ vm, driver }) {
      await driver.resume(vm.id);
      return { to: 'running' };
    },
  },
  reboot: {
    from: ['running'],
    async run({ vm, driver }) {
      await driver.reboot(vm.id);
      return {};
    },
  },
  'move-disk': {
    from: ['running', 'paused', 'stopped'],
    cancellable: true,
    check(vm, driver, opts) {
      if (!vm.spec.disks.some((d) => d.name === opts.disk)) throw new NovaError('VM_SPEC_INVALID', `VM "${vm.name}" has no disk "${opts.disk}"`);
      if (vm.state !== 'stopped' && !driver.diskMover) throw new NovaError('VM_INVALID_STATE', `the ${driver.name} driver cannot move disks of a running VM; stop it first`, { state: vm.state });
    },
    async run({ vm, driver, storage, opts, progress, signal }) {
      const plan = await storage.prepareMove(vm, opts.disk!, opts.pool!);
      const bytesPerSec = opts.bandwidthMBps ? opts.bandwidthMBps * 1e6 : undefined;
      const started = Date.now();
      const onProgress = ({ copiedBytes, totalBytes }: { copiedBytes: number; totalBytes: number }) => {
        const secs = (Date.now() - started) / 1000;
        progress(totalBytes > 0 ? Math.min(99, Math.floor((copiedBytes / totalBytes) * 100)) : 0, `copying ${opts.disk} to ${plan.to}`, { copiedBytes, totalBytes, bytesPerSec: secs > 0 ? Math.round(copiedBytes / secs) : 0 });
      };
      try {
        if (vm.state === 'stopped') await storage.copyForMove(plan, { ...(bytesPerSec ? { bytesPerSec } : {}), signal, onProgress });
        else await driver.diskMover!.move(vm.id, plan.disk, { path: plan.targetPath, format: plan.format }, { ...(bytesPerSec ? { bytesPerSec } : {}), signal, onProgress });
      } catch (err) {
        await storage.abortMove(plan);
        if (signal.aborted) throw new NovaError('OPERATION_CANCELLED', `moving disk "${plan.disk}" was cancelled; it stays on ${plan.from}`);
        throw err;
      }
      return { spec: plan.spec, after: () => storage.finishMove(plan), result: { disk: plan.disk, from: plan.from, to: plan.to, seconds: Math.round((Date.now() - started) / 100) / 10 } };
    },
  },
  delete: {
    from: ['stopped', 'error', 'pending'],
    during: 'deleting',
    check(vm, _driver, opts, storage) {
      // Before anything changes: a VM whose volumes other volumes are based on (a template with clones) stays.
      storage.assertReleasable(vm, { keepDisks: opts.keepDisks ?? false });
    },
    async run({ vm, driver, storage, opts, step }) {
      const keepDisks = opts.keepDisks ?? false;
      storage.assertReleasable(vm, { keepDisks });
      if (FORCED_DELETE_FROM.includes(vm.state)) {
        await step('stopping');
        await driver.stop(vm.id);
        await step('stopped');
        await step('deleting');
      }
      await driver.destroy(vm);
      await storage.release(vm, { keepDisks });
      return { removed: true };
    },
  },
};

/** Whether `kind` may start on `vm` now (with delete's `force`, also from a running or paused VM). */
export function actionAllowed(kind: OperationKind, vm: VmRecord, opts: ActionOptions): boolean {
  return ACTIONS[kind].from.includes(vm.state) || isForcedDelete(kind, vm, opts);
}

export function isForcedDelete(kind: OperationKind, vm: VmRecord, opts: ActionOptions): boolean {
  return kind === 'delete' && opts.force === true && FORCED_DELETE_FROM.includes(vm.state);
}
