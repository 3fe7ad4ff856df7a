/**
 * The `Store` contract on Raft. Writes are proposed through this member (raft-rs
 * forwards them to the leader) and resolve once applied here, so a resolved write is
 * visible to every later read on this member. Reads are linearizable through ReadIndex
 * unless `stale` is asked for. A write that timed out or met no leader is retried with
 * the same request id, which the state machine applies at most once.
 */
import { NovaError } from '../errors.js';
import { newRequestId, type RaftNode, type WriteOptions } from '../native/raft-node.js';
import type { Entry, KeyRange, Store, WriteOp } from '../store/store.js';

export interface ReadOptions {
  /** Read this member's applied state without confirming leadership (may lag). */
  stale?: boolean;
}

const RETRYABLE = new Set(['RAFT_NO_LEADER', 'RAFT_TIMEOUT']);

/** Retries `attempt` on leaderless or timed-out rounds until `deadlineMs` passes. */
export async function withRetry<T>(attempt: () => Promise<T>, deadlineMs: number): Promise<T> {
  let delay = 25;
  for (;;) {
    try {
      return await attempt();
    } catch (e) {
      if (!(e instanceof NovaError) || !RETRYABLE.has(e.code) || Date.now() + delay > deadlineMs) throw e;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 500);
    }
  }
}

export class ReplicatedStore implements Store {
  #closed = false;

  constructor(
    private readonly node: RaftNode,
    private readonly opts: { retryForMs: number } = { retryForMs: 10_000 },
  ) {}

  async get(key: string, read: ReadOptions = {}): Promise<Buffer | undefined> {
    this.#checkOpen();
    if (!read.stale) await withRetry(() => this.node.readIndex(), Date.now() + this.opts.retryForMs);
    return this.node.getLocal(key);
  }

  async write(ops: WriteOp[], opts: WriteOptions = {}): Promise<void> {
    await this.writeIndex(ops, opts);
  }

  /** Like `write`, resolving with the write's log index; a stale fence is LOCK_FENCED with the lock's current token. */
  async writeIndex(ops: WriteOp[], opts: WriteOptions = {}): Promise<number> {
    this.#checkOpen();
    for (const op of ops) if (op.key.length === 0) throw new NovaError('STORE_INVALID_ARGUMENT', 'key must not be empty');
    const requestId = opts.requestId ?? newRequestId();
    const outcome = await withRetry(() => this.node.write(ops, { ...opts, requestId }), Date.now() + this.opts.retryForMs);
    if (outcome.kind === 'fenced') throw new NovaError('LOCK_FENCED', `fencing token ${opts.fence?.token} of lock ${opts.fence?.lock} is stale`, { current: outcome.token ?? null });
    if (outcome.kind !== 'written') throw new NovaError('INTERNAL', `a replicated write came back ${outcome.kind}`);
    return outcome.index;
  }

  async scan(range: KeyRange, read: ReadOptions = {}): Promise<Entry[]> {
    this.#checkOpen();
    if (!read.stale) await withRetry(() => this.node.readIndex(), Date.now() + this.opts.retryForMs);
    return this.node.scanLocal(range);
  }

  /** The Raft node belongs to the cluster; closing the store only stops its use. */
  async close(): Promise<void> {
    this.#closed = true;
  }

  #checkOpen(): void {
    if (this.#closed) throw new NovaError('STORE_CLOSED');
  }
}
