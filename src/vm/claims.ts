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
  /** Ends the claim (the cluster lock is handed back in the background; see `settled`). */
  release(): void;
}

export class VmClaims {
  #guard: VmLockGuard | undefined;
  /** vmId → resolves when the claim on it is released; at most one claim per VM. */
  #active = new Map<string, Promise<void>>();
  /** vmId → a finished claim still giving back the VM's cluster lock. */
  #handingBack = new Map<string, Promise<void>>();

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
      lease = await this.#guard.hold(vm.id, purpose);
    } catch (err) {
      local.release();
      throw err;
    }
    return {
      vmId: vm.id,
      assertHeld: () => {
        if (lease.lost.aborted) throw new NovaError('LOCK_FENCED', `the cluster lock on VM "${vm.name}" was lost (lease lapsed); its work was stopped`, { token: lease.token });
      },
      release: () => {
        // The work already reads as finished; a request arriving now waits for this
        // hand-back rather than seeing VM_BUSY from a claim that is about to go.
        const done = lease.release().catch(() => undefined).finally(local.release);
        this.#handingBack.set(vm.id, done);
        void done.finally(() => {
          if (this.#handingBack.get(vm.id) === done) this.#handingBack.delete(vm.id);
        });
      },
    };
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

  /** Waits for every claim to be released (graceful shutdown). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.#active.values()]);
  }
}
