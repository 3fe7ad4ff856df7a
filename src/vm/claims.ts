/**
 * Who may work on a VM right now. A claim is exclusive on this member; for lifecycle
 * operations and migrations it also holds the VM's cluster-wide lock (its lease kept
 * renewed by the guard), and once that lease is lost every write made for the claim is
 * refused (`assertHeld`), so the work stops instead of running on without the lock.
 */
import { NovaError } from '../errors.js';
import type { VmRecord } from './record.js';

/** A held cluster lease on a VM. */
export interface VmLease {
  /** The lock's fencing token: it grows with every new holder. */
  readonly token: number;
  /** Aborted when the lease was lost (renewal failed past its expiry, or another holder took it). */
  readonly lost: AbortSignal;
  /** Gives the lock back; never rejects (a failed release lapses on the lock's TTL). */
  release(): Promise<void>;
}

/**
 * Cluster-wide exclusivity for a VM: held for the whole of a lifecycle operation or a
 * migration, so no two members work on one VM at once. `hold` throws VM_BUSY when
 * another member has it.
 */
export interface VmLockGuard {
  hold(vmId: string, purpose: string): Promise<VmLease>;
}

/** One piece of work's hold on a VM. */
export interface VmClaim {
  readonly vmId: string;
  /** Throws LOCK_FENCED once the lease is lost; called before every write made for the claim. */
  assertHeld(): void;
  /**
   * Ends the claim (the cluster lock is handed back in the background; see `settled`).
   * With `linger` the VM stays here, so this member keeps its cluster lock a moment
   * (`LINGER_MS`, still renewed) for the next operation on the VM to take at no cost.
   */
  release(opts?: { linger?: boolean }): void;
}

/**
 * How long a member keeps a VM's cluster lock after an operation that leaves the VM here:
 * operations in a row (pause then resume, a snapshot series) take it once instead of a
 * replicated write to take and another to give it back each. Under the guard's hand-over
 * wait, so another member asking for it meanwhile gets it, only later.
 */
export const LINGER_MS = 1000;

export class VmClaims {
  #guard: VmLockGuard | undefined;
  /** vmId → resolves when the claim on it is released; at most one claim per VM. */
  #active = new Map<string, Promise<void>>();
  /** vmId → a finished claim still giving back the VM's cluster lock. */
  #handingBack = new Map<string, Promise<void>>();
  /** vmId → the cluster lease kept after an operation (`LINGER_MS`), and its give-back timer. */
  #lingering = new Map<string, { lease: VmLease; timer: NodeJS.Timeout }>();

  /** Makes cluster claims also take the VM's cluster-wide lock. */
  useLockGuard(guard: VmLockGuard): void {
    this.#guard = guard;
  }

  isClaimed(vmId: string): boolean {
    return this.#active.has(vmId);
  }

  /** Throws VM_BUSY while another claim holds the VM. */
  assertFree(vm: VmRecord): void {
    if (this.#active.has(vm.id)) throw new NovaError('VM_BUSY', `an operation is in progress on "${vm.name}"`);
  }

  /** A claim on this member only (short changes: patch, hot-plug, snapshots; an arriving VM). */
  local(vm: VmRecord): VmClaim {
    this.assertFree(vm);
    let resolve!: () => void;
    this.#active.set(vm.id, new Promise<void>((r) => (resolve = r)));
    return {
      vmId: vm.id,
      assertHeld: () => undefined,
      release: () => {
        this.#active.delete(vm.id);
        resolve();
      },
    };
  }

  /**
   * The local claim plus, in a cluster, the VM's cluster-wide lock. The local claim is
   * released only after the cluster lock is given back, so the next claim here never
   * overlaps the release.
   */
  async cluster(vm: VmRecord, purpose: string): Promise<VmClaim> {
    const local = this.local(vm);
    if (!this.#guard) return local;
    let lease: VmLease;
    try {
      lease = this.#reuse(vm.id) ?? (await this.#guard.hold(vm.id, purpose));
    } catch (err) {
      local.release();
      throw err;
    }
    return {
      vmId: vm.id,
      assertHeld: () => {
        if (lease.lost.aborted) throw new NovaError('LOCK_FENCED', `the cluster lock on VM "${vm.name}" was lost (lease lapsed); its work was stopped`, { token: lease.token });
      },
      release: (opts) => {
        if (opts?.linger && !lease.lost.aborted) {
          const timer = setTimeout(() => this.#endLinger(vm.id), LINGER_MS);
          timer.unref();
          this.#lingering.set(vm.id, { lease, timer });
          local.release();
          return;
        }
        this.#giveBack(vm.id, lease, local.release);
      },
    };
  }

  /** Takes the lease kept after the VM's last operation, if it is still good. */
  #reuse(vmId: string): VmLease | undefined {
    const kept = this.#lingering.get(vmId);
    if (!kept) return undefined;
    this.#lingering.delete(vmId);
    clearTimeout(kept.timer);
    return kept.lease.lost.aborted ? undefined : kept.lease;
  }

  /** Gives back the lease kept after the VM's last operation, if there is one. */
  #endLinger(vmId: string): void {
    const lease = this.#reuse(vmId);
    if (lease) this.#giveBack(vmId, lease, () => undefined);
  }

  #giveBack(vmId: string, lease: VmLease, then: () => void): void {
    // The work already reads as finished; a request arriving now waits for this
    // hand-back rather than seeing VM_BUSY from a claim that is about to go.
    const done = lease.release().catch(() => undefined).finally(then);
    this.#handingBack.set(vmId, done);
    void done.finally(() => {
      if (this.#handingBack.get(vmId) === done) this.#handingBack.delete(vmId);
    });
  }

  /**
   * Resolves once a just-finished claim on the VM has handed its cluster lock back.
   * Every new claim waits here first: the finished work already reads as done to
   * clients, so a request arriving in that gap must wait, not see VM_BUSY.
   */
  async settled(vmId: string | undefined): Promise<void> {
    const pending = vmId === undefined ? undefined : this.#handingBack.get(vmId);
    if (pending) await pending;
  }

  /** Waits for every claim to be released and gives back the locks kept after them (graceful shutdown). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.#active.values()]);
    for (const vmId of [...this.#lingering.keys()]) this.#endLinger(vmId);
    await Promise.allSettled([...this.#handingBack.values()]);
  }
}
