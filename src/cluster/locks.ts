/**
 * Leased locks with fencing tokens, decided by the replicated state machine. A grant's
 * token is the log index of the grant, so it grows with every new holder; writes that
 * carry a stale token are refused by every replica (`LOCK_FENCED`). Leases are measured
 * on the proposer's clock, recorded in the log so every replica decides alike.
 */
import { NovaError } from '../errors.js';
import { newRequestId, type RaftNode } from '../native/raft-node.js';
import { withRetry } from './replicated-store.js';

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
    if (o.kind === 'granted') return { name, holder, token: o.token!, expiresMs: o.expiresMs! };
    throw new NovaError('LOCK_HELD', `lock ${name} is held by ${o.holder}`, { holder: o.holder, token: o.token, expiresMs: o.expiresMs });
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
   * Takes `name` and keeps renewing its lease (every third of the TTL) until the
   * returned function releases it. If renewal fails for longer than the TTL the lock
   * lapses and the holder's fencing token goes stale: writes fenced by it are refused.
   */
  async hold(name: string, holder: string, ttlMs: number): Promise<{ grant: LockGrant; release: () => Promise<void> }> {
    const grant = await this.acquire(name, holder, ttlMs);
    const renew = setInterval(() => {
      this.acquire(name, holder, ttlMs).catch(() => undefined);
    }, Math.max(50, ttlMs / 3));
    renew.unref();
    const release = async () => {
      clearInterval(renew);
      await this.release(name, grant.token).catch(() => undefined);
    };
    return { grant, release };
  }
}

/** VM exclusivity across the cluster (see `VmLockGuard`): lock `vm/<id>`, held by this member. */
export function vmLockGuard(locks: LockService, memberId: number, ttlMs = 15_000, handoverMs = 3000) {
  return {
    async hold(vmId: string, purpose: string): Promise<() => Promise<void>> {
      // A member finishing with the VM (say, the source of a migration that just
      // completed) releases it a moment later: wait briefly for that hand-over.
      const deadline = Date.now() + handoverMs;
      for (;;) {
        try {
          const { release } = await locks.hold(`vm/${vmId}`, `member-${memberId}`, ttlMs);
          return release;
        } catch (err) {
          if (!(err instanceof NovaError) || err.code !== 'LOCK_HELD') throw err;
          if (Date.now() > deadline) throw new NovaError('VM_BUSY', `another cluster member is working on this VM (${purpose} refused)`, err.details);
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    },
  };
}
