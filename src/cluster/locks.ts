/**
 * Leased locks with fencing tokens, decided by the replicated state machine. A grant's
 * token is the log index of the grant, so it grows with every new holder; writes that
 * carry a stale token are refused by every replica (`LOCK_FENCED`). Leases are measured
 * on the proposer's clock, recorded in the log so every replica decides alike.
 */
import { NovaError } from '../errors.js';
import { newRequestId, type RaftNode } from '../native/raft-node.js';
import { withRetry } from './replicated-store.js';
import type { VmLease, VmLockGuard } from '../vm/claims.js';

export interface LockGrant {
  name: string;
  holder: string;
  token: number;
  expiresMs: number;
}

export interface LockView {
  name: string;
  held: boolean;
  holder?: string;
  token?: number;
  expiresMs?: number;
}

export class LockService {
  constructor(
    private readonly node: RaftNode,
    private readonly retryForMs = 10_000,
  ) {}

  /** Takes (or, for its holder, renews) the lock; throws LOCK_HELD with the holder's details otherwise. */
  async acquire(name: string, holder: string, ttlMs: number, requestId = newRequestId()): Promise<LockGrant> {
    const o = await withRetry(() => this.node.acquire(name, holder, ttlMs, requestId), Date.now() + this.retryForMs);
    if (o.kind === 'granted') return { name, holder, token: o.token, expiresMs: o.expiresMs };
    if (o.kind === 'held') throw new NovaError('LOCK_HELD', `lock ${name} is held by ${o.holder}`, { holder: o.holder, token: o.token, expiresMs: o.expiresMs });
    throw new NovaError('INTERNAL', `a lock request came back ${o.kind}`);
  }

  async release(name: string, token: number, requestId = newRequestId()): Promise<void> {
    const o = await withRetry(() => this.node.release(name, token, requestId), Date.now() + this.retryForMs);
    if (o.kind !== 'released') throw new NovaError('LOCK_NOT_HELD', `token ${token} does not hold lock ${name}`);
  }

  /** The lock as applied on this member (may lag the leader slightly). */
  get(name: string): LockView {
    const l = this.node.lock(name);
    if (!l || l.expiresMs <= Date.now()) return { name, held: false };
    return { name, held: true, holder: l.holder, token: l.token, expiresMs: l.expiresMs };
  }

  /**
   * Takes `name` and keeps renewing its lease (every third of the TTL) until released.
   * When renewal fails until the lease's expiry, or another holder has the lock, the
   * lease is lost: `lost` aborts, renewal stops, and the holder's fencing token is stale
   * (writes fenced by it are refused).
   */
  async hold(name: string, holder: string, ttlMs: number): Promise<HeldLock> {
    const grant = await this.acquire(name, holder, ttlMs);
    const lost = new AbortController();
    let expires = grant.expiresMs;
    const lose = (why: string) => {
      if (lost.signal.aborted) return;
      clearInterval(renew);
      clearTimeout(expiry);
      lost.abort(new NovaError('LOCK_FENCED', `lost lock ${name} (token ${grant.token}): ${why}`));
    };
    // Fires at the lease's expiry unless a renewal moved it.
    const armExpiry = () => setTimeout(() => lose('the lease expired before it could be renewed'), Math.max(0, expires - Date.now())).unref();
    let expiry = armExpiry();
    const renew = setInterval(() => {
      this.acquire(name, holder, ttlMs).then(
        (g) => {
          if (lost.signal.aborted) return;
          if (g.token !== grant.token) return lose(`renewal was granted as a new lock (token ${g.token}) after the lease lapsed`);
          expires = g.expiresMs;
          clearTimeout(expiry);
          expiry = armExpiry();
        },
        (err) => {
          if (err instanceof NovaError && err.code === 'LOCK_HELD') lose(`taken by ${(err.details as { holder?: string }).holder ?? 'another holder'}`);
        },
      );
    }, Math.max(50, ttlMs / 3));
    renew.unref();
    const release = async () => {
      clearInterval(renew);
      clearTimeout(expiry);
      if (!lost.signal.aborted) await this.release(name, grant.token).catch(() => undefined);
    };
    return { grant, lost: lost.signal, release };
  }
}

/** A lock held (and kept renewed) by `LockService.hold`. */
export interface HeldLock {
  grant: LockGrant;
  /** Aborted when the lease was lost; the reason is a LOCK_FENCED error. */
  lost: AbortSignal;
  /** Stops renewing and gives the lock back; never rejects. */
  release: () => Promise<void>;
}

/** VM exclusivity across the cluster (see `VmLockGuard`): lock `vm/<id>`, held by this member. */
export function vmLockGuard(locks: LockService, memberId: number, ttlMs = 15_000, handoverMs = 3000): VmLockGuard {
  return {
    async hold(vmId: string, purpose: string): Promise<VmLease> {
      // A member finishing with the VM (say, the source of a migration that just
      // completed) releases it a moment later: wait briefly for that hand-over.
      const deadline = Date.now() + handoverMs;
      for (;;) {
        try {
          const { grant, lost, release } = await locks.hold(`vm/${vmId}`, `member-${memberId}`, ttlMs);
          return { token: grant.token, lost, release };
        } catch (err) {
          if (!(err instanceof NovaError) || err.code !== 'LOCK_HELD') throw err;
          if (Date.now() > deadline) throw new NovaError('VM_BUSY', `another cluster member is working on this VM (${purpose} refused)`, err.details);
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    },
  };
}
