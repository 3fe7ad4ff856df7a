/**
 * Typed wrapper over the native Raft member (crates/raftstore through crates/node).
 * The Raft loop runs on a Rust thread; each request here gets a numeric tag, and the
 * answer arrives through one threadsafe callback that settles the matching promise.
 */
import { randomBytes } from 'node:crypto';
import type { Entry, KeyRange, WriteOp } from '../store/store.js';
import { NovaError } from '../errors.js';
import { binding, callNative, fromBindingError, nativeError, type Binding } from './binding.js';

// Domain types: what the cluster code and the API see. Every binding value is converted
// field by field below, so renaming a Rust field breaks this file's build instead of
// silently changing what GET /v1/cluster returns.

/** What a replicated write or lock request came to. */
export type RaftOutcome =
  | { kind: 'written'; index: number }
  /** The write's fence is stale; `token` is the lock's current token, if it is held. */
  | { kind: 'fenced'; token?: number }
  | { kind: 'granted'; token: number; expiresMs: number }
  | { kind: 'held'; holder: string; token: number; expiresMs: number }
  | { kind: 'released' }
  | { kind: 'notHeld' };

export type RaftRole = 'leader' | 'follower' | 'candidate' | 'pre-candidate';

export interface RaftPeerProgress {
  id: number;
  /** Highest index known replicated on it. */
  matched: number;
  /** Next index to send. */
  next: number;
  state: 'probe' | 'replicate' | 'snapshot';
  /** Heard from within the last election timeout. */
  recentActive: boolean;
  learner: boolean;
}

export interface RaftPeerAddress {
  id: number;
  address: string;
}

export interface RaftStatus {
  id: number;
  role: RaftRole;
  term: number;
  /** Known leader, 0 when none. */
  leader: number;
  commit: number;
  applied: number;
  firstIndex: number;
  lastIndex: number;
  voters: number[];
  learners: number[];
  /** The previous voters while in a joint configuration, else empty. */
  votersOutgoing: number[];
  /** Per-member progress (leader only). */
  progress: RaftPeerProgress[];
  addresses: RaftPeerAddress[];
}

export interface RaftMembers {
  voters: number[];
  learners: number[];
}

export interface RaftLock {
  holder: string;
  token: number;
  expiresMs: number;
}

/** A message for another member: `bytes` is one encoded Raft message. */
export interface RaftOutbound {
  to: number;
  /** A snapshot message (large; the transport streams it in chunks). */
  snapshot: boolean;
  bytes: Buffer;
}

export interface RaftMemberChange {
  kind: 'addVoter' | 'addLearner' | 'remove';
  id: number;
}

export interface RaftNodeOptions {
  /** This member's id. */
  id: number;
  /** Tick length in ms (default 50). */
  tickMs?: number;
  /** Election timeout in ticks (default 10). */
  electionTicks?: number;
  /** Heartbeat interval in ticks (default 2). */
  heartbeatTicks?: number;
  /** Deadline for proposals, reads and membership changes, ms (default 5000). */
  requestTimeoutMs?: number;
  /** Largest write accepted, bytes (default 1 MiB). */
  maxRequestBytes?: number;
  /** Compact the log once this many applied entries are kept (default 10,000). */
  compactThreshold?: number;
  /** Applied entries kept after a compaction (default 1000). */
  keepEntries?: number;
  /** Fsync the log before acknowledging (default true). */
  syncWrites?: boolean;
}

function toOutcome(o: Binding.BindingRaftOutcome): RaftOutcome {
  const kind = o.kind;
  switch (kind) {
    case 'written':
      return { kind, index: need(o.index, 'index') };
    case 'fenced':
      return o.token === undefined || o.token === null ? { kind } : { kind, token: o.token };
    case 'granted':
      return { kind, token: need(o.token, 'token'), expiresMs: need(o.expiresMs, 'expiresMs') };
    case 'held':
      return { kind, holder: need(o.holder, 'holder'), token: need(o.token, 'token'), expiresMs: need(o.expiresMs, 'expiresMs') };
    case 'released':
    case 'notHeld':
      return { kind };
    default:
      throw new NovaError('INTERNAL', `the raft binding answered with an unknown outcome ${JSON.stringify(kind)}`);
  }
}

const ROLES: readonly string[] = ['leader', 'follower', 'candidate', 'pre-candidate'] satisfies RaftRole[];
const PROGRESS_STATES: readonly string[] = ['probe', 'replicate', 'snapshot'] satisfies RaftPeerProgress['state'][];

function toStatus(b: Binding.BindingRaftStatus): RaftStatus {
  return {
    id: b.id,
    role: oneOf(b.role, ROLES, 'role') as RaftRole,
    term: b.term,
    leader: b.leader,
    commit: b.commit,
    applied: b.applied,
    firstIndex: b.firstIndex,
    lastIndex: b.lastIndex,
    voters: [...b.voters],
    learners: [...b.learners],
    votersOutgoing: [...b.votersOutgoing],
    progress: b.progress.map((p) => ({ id: p.id, matched: p.matched, next: p.next, state: oneOf(p.state, PROGRESS_STATES, 'progress state') as RaftPeerProgress['state'], recentActive: p.recentActive, learner: p.learner })),
    addresses: b.addresses.map((a) => ({ id: a.id, address: a.address })),
  };
}

function toMembers(b: Binding.BindingRaftMembers): RaftMembers {
  return { voters: [...b.voters], learners: [...b.learners] };
}

function need<T>(v: T | undefined | null, field: string): T {
  if (v === undefined || v === null) throw new NovaError('INTERNAL', `the raft binding left out ${field}`);
  return v;
}

function oneOf(v: string, allowed: readonly string[], what: string): string {
  if (!allowed.includes(v)) throw new NovaError('INTERNAL', `the raft binding answered with an unknown ${what} "${v}"`);
  return v;
}


export interface WriteOptions {
  /** 16 bytes; a retry with the same id is applied once. Random when omitted. */
  requestId?: Buffer;
  /** Refuse the write unless this lock token is still current. */
  fence?: { lock: string; token: number };
}

type Settle = (c: Binding.BindingRaftCompletion) => void;

/** This process's half of every request id it makes: random, drawn once. */
const ID_PREFIX = randomBytes(8);
let idCounter = 0n;

/**
 * A new request id, unique across members and restarts: this process's random 8 bytes
 * and a counter (a fresh random draw per write cost 4% of the write path's CPU).
 */
export function newRequestId(): Buffer {
  const id = Buffer.allocUnsafe(16);
  ID_PREFIX.copy(id, 0);
  id.writeBigUInt64BE(idCounter++, 8);
  return id;
}

export class RaftNode {
  #native: Binding.NativeRaftNode;
  #pending = new Map<number, Settle>();
  #nextTag = 1;
  #stopped = false;
  /**
   * The completion callback is a weak threadsafe function (a running node alone must not
   * keep the process alive); this timer is ref'd while requests are pending so awaiting
   * one does.
   */
  #keepAlive = setInterval(() => undefined, 1 << 30).unref();

  private constructor(path: string, opts: RaftNodeOptions, onMessages: (batch: RaftOutbound[]) => void) {
    const { syncWrites, ...node } = opts;
    this.#native = callNative(() =>
      binding.NativeRaftNode.start(path, node, { syncWrites: syncWrites ?? true }, onMessages, () => {
        for (const done of this.#native.takeCompletions()) this.#settle(done);
      }),
    );
  }

  /** Makes the node in `path` the sole member of a new cluster. */
  static bootstrap(path: string, id: number, address: string, opts: { syncWrites?: boolean } = {}): void {
    callNative(() => binding.NativeRaftNode.bootstrap(path, id, address, { syncWrites: opts.syncWrites ?? true }));
  }

  /** Opens the node's database and starts its Raft thread; `onMessages` carries peer traffic. */
  static start(path: string, opts: RaftNodeOptions, onMessages: (batch: RaftOutbound[]) => void): RaftNode {
    return new RaftNode(path, opts, onMessages);
  }

  #settle(c: Binding.BindingRaftCompletion): void {
    const settle = this.#pending.get(c.tag);
    if (!settle) return;
    this.#pending.delete(c.tag);
    if (this.#pending.size === 0) this.#keepAlive.unref();
    settle(c);
  }

  /** Sends a tagged request and settles with its completion, which must be of kind `expect` (or `failed`). */
  #request<K extends Binding.BindingRaftCompletion['kind'], T>(expect: K, pick: (c: Extract<Binding.BindingRaftCompletion, { kind: K }>) => T, send: (tag: number) => void): Promise<T> {
    if (this.#stopped) return Promise.reject(new NovaError('RAFT_STOPPED'));
    const tag = this.#nextTag;
    this.#nextTag = this.#nextTag >= 0xffff_fff0 ? 1 : this.#nextTag + 1;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(tag, (c) => {
        if (c.kind === 'failed') return reject(fromBindingError(c.error, 'RAFT_INVALID'));
        if (c.kind !== expect) return reject(new NovaError('INTERNAL', `the raft binding answered a ${expect} request with ${c.kind}`));
        try {
          resolve(pick(c as Extract<Binding.BindingRaftCompletion, { kind: K }>));
        } catch (e) {
          reject(e);
        }
      });
      if (this.#pending.size === 1) this.#keepAlive.ref();
      try {
        send(tag);
      } catch (e) {
        this.#pending.delete(tag);
        if (this.#pending.size === 0) this.#keepAlive.unref();
        reject(nativeError(e));
      }
    });
  }

  write(ops: WriteOp[], opts: WriteOptions = {}): Promise<RaftOutcome> {
    const converted = ops.map((op) => {
      const out: Binding.BindingWriteOp = { key: Buffer.from(op.key) };
      if (op.value !== undefined) out.value = Buffer.from(op.value.buffer, op.value.byteOffset, op.value.byteLength);
      return out;
    });
    const id = opts.requestId ?? newRequestId();
    return this.#request('outcome', (c) => toOutcome(c.outcome), (tag) => this.#native.write(tag, id, converted, opts.fence));
  }

  acquire(lock: string, holder: string, ttlMs: number, requestId = newRequestId()): Promise<RaftOutcome> {
    return this.#request('outcome', (c) => toOutcome(c.outcome), (tag) => this.#native.acquire(tag, requestId, lock, holder, ttlMs, Date.now()));
  }

  release(lock: string, token: number, requestId = newRequestId()): Promise<RaftOutcome> {
    return this.#request('outcome', (c) => toOutcome(c.outcome), (tag) => this.#native.release(tag, requestId, lock, token));
  }

  /** Records where `member` listens now, in the replicated state (ignored for non-members). */
  setAddress(member: number, address: string, requestId = newRequestId()): Promise<RaftOutcome> {
    return this.#request('outcome', (c) => toOutcome(c.outcome), (tag) => this.#native.setAddress(tag, requestId, member, address));
  }

  /** Resolves once a quorum confirmed leadership and this node applied up to that point. */
  readIndex(): Promise<number> {
    return this.#request('readIndex', (c) => c.index, (tag) => this.#native.readIndex(tag));
  }

  changeMembership(changes: RaftMemberChange[], addresses: RaftPeerAddress[] = []): Promise<RaftMembers> {
    return this.#request('members', (c) => toMembers(c.members), (tag) => this.#native.changeMembership(tag, changes, addresses));
  }

  status(): Promise<RaftStatus> {
    return this.#request('status', (c) => toStatus(c.status), (tag) => this.#native.status(tag));
  }

  /** Delivers a message from member `from`; throws RAFT_BAD_MESSAGE for anything malformed or sent by another member. */
  step(bytes: Buffer, from: number): void {
    callNative(() => this.#native.step(bytes, from));
  }

  /** Delivers `[u32 BE length][message]…` from member `from`; throws RAFT_BAD_MESSAGE at the first bad one. */
  stepBatch(bytes: Buffer, from: number): number {
    return callNative(() => this.#native.stepBatch(bytes, from));
  }

  reportUnreachable(id: number): void {
    if (!this.#stopped) this.#native.reportUnreachable(id);
  }

  reportSnapshot(id: number, delivered: boolean): void {
    if (!this.#stopped) this.#native.reportSnapshot(id, delivered);
  }

  transferLeader(id: number): void {
    callNative(() => this.#native.transferLeader(id));
  }

  campaign(): void {
    this.#native.campaign();
  }

  /** The locally applied value (not linearizable on its own; see `readIndex`). */
  getLocal(key: string): Buffer | undefined {
    return callNative(() => this.#native.getSync(Buffer.from(key))) ?? undefined;
  }

  scanLocal(range: KeyRange): Entry[] {
    const pairs = callNative(() =>
      this.#native.scanSync({ start: Buffer.from(range.start), end: Buffer.from(range.end), limit: range.limit ?? 0, reverse: range.reverse ?? false }),
    );
    return pairs.map((p) => ({ key: p.key.toString(), value: p.value }));
  }

  lock(name: string): RaftLock | undefined {
    const l = callNative(() => this.#native.lock(name));
    return l ? { holder: l.holder, token: l.token, expiresMs: l.expiresMs } : undefined;
  }

  /** Stops the Raft thread; every pending request fails with RAFT_STOPPED. */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#native.stop();
    // Completions for requests the thread failed on its way out are still queued on the
    // event loop; anything not answered by then is failed here.
    setImmediate(() => {
      for (const [tag, settle] of this.#pending) settle({ kind: 'failed', tag, error: { code: 'RAFT_STOPPED', message: 'raft node is stopped' } });
      this.#pending.clear();
      clearInterval(this.#keepAlive);
    });
  }
}
