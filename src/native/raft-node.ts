/**
 * Typed wrapper over the native Raft member (crates/raftstore through crates/node).
 * The Raft loop runs on a Rust thread; each request here gets a numeric tag, and the
 * answer arrives through one threadsafe callback that settles the matching promise.
 */
import { randomBytes } from 'node:crypto';
import type { Entry, KeyRange, WriteOp } from '../store/store.js';
import { NovaError } from '../errors.js';
import { binding, callNative, fromBindingError, nativeError, type Binding } from './binding.js';

export type RaftOutcome = Binding.RaftOutcome;
export type RaftStatus = Binding.RaftStatus;
export type RaftMembers = Binding.RaftMembers;
export type RaftOutbound = Binding.RaftOutbound;
export type RaftMemberChange = Binding.RaftMemberChange;
export type RaftPeerAddress = Binding.RaftPeerAddress;

export interface RaftNodeOptions extends Binding.RaftNodeOptions {
  syncWrites?: boolean;
}

export interface WriteOptions {
  /** 16 bytes; a retry with the same id is applied once. Random when omitted. */
  requestId?: Buffer;
  /** Refuse the write unless this lock token is still current. */
  fence?: { lock: string; token: number };
}

type Settle = (c: Binding.RaftCompletion) => void;

/** A new random request id. */
export function newRequestId(): Buffer {
  return randomBytes(16);
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

  #settle(c: Binding.RaftCompletion): void {
    const settle = this.#pending.get(c.tag);
    if (!settle) return;
    this.#pending.delete(c.tag);
    if (this.#pending.size === 0) this.#keepAlive.unref();
    settle(c);
  }

  #request<T>(pick: (c: Binding.RaftCompletion) => T, send: (tag: number) => void): Promise<T> {
    if (this.#stopped) return Promise.reject(new NovaError('RAFT_STOPPED'));
    const tag = this.#nextTag;
    this.#nextTag = this.#nextTag >= 0xffff_fff0 ? 1 : this.#nextTag + 1;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(tag, (c) => (c.error ? reject(fromBindingError(c.error, 'RAFT_INVALID')) : resolve(pick(c))));
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
    return this.#request((c) => c.outcome!, (tag) => this.#native.write(tag, id, converted, opts.fence));
  }

  acquire(lock: string, holder: string, ttlMs: number, requestId = newRequestId()): Promise<RaftOutcome> {
    return this.#request((c) => c.outcome!, (tag) => this.#native.acquire(tag, requestId, lock, holder, ttlMs, Date.now()));
  }

  release(lock: string, token: number, requestId = newRequestId()): Promise<RaftOutcome> {
    return this.#request((c) => c.outcome!, (tag) => this.#native.release(tag, requestId, lock, token));
  }

  /** Records where `member` listens now, in the replicated state (ignored for non-members). */
  setAddress(member: number, address: string, requestId = newRequestId()): Promise<RaftOutcome> {
    return this.#request((c) => c.outcome!, (tag) => this.#native.setAddress(tag, requestId, member, address));
  }

  /** Resolves once a quorum confirmed leadership and this node applied up to that point. */
  readIndex(): Promise<number> {
    return this.#request((c) => c.index!, (tag) => this.#native.readIndex(tag));
  }

  changeMembership(changes: RaftMemberChange[], addresses: RaftPeerAddress[] = []): Promise<RaftMembers> {
    return this.#request((c) => c.members!, (tag) => this.#native.changeMembership(tag, changes, addresses));
  }

  status(): Promise<RaftStatus> {
    return this.#request((c) => c.status!, (tag) => this.#native.status(tag));
  }

  /** Delivers a peer's message; throws RAFT_BAD_MESSAGE for anything malformed. */
  step(bytes: Buffer): void {
    callNative(() => this.#native.step(bytes));
  }

  /** Delivers `[u32 BE length][message]…`; throws RAFT_BAD_MESSAGE at the first bad one. */
  stepBatch(bytes: Buffer): number {
    return callNative(() => this.#native.stepBatch(bytes));
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

  lock(name: string): Binding.RaftLock | undefined {
    return callNative(() => this.#native.lock(name)) ?? undefined;
  }

  /** Stops the Raft thread; every pending request fails with RAFT_STOPPED. */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#native.stop();
    // Completions for requests the thread failed on its way out are still queued on the
    // event loop; anything not answered by then is failed here.
    setImmediate(() => {
      for (const [tag, settle] of this.#pending) settle({ tag, error: { code: 'RAFT_STOPPED', message: 'raft node is stopped' } });
      this.#pending.clear();
      clearInterval(this.#keepAlive);
    });
  }
}
