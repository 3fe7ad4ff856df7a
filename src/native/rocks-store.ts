import type { Entry, KeyRange, Store, WriteOp } from '../store/store.js';
import { NovaError } from '../errors.js';
import { binding, callNative, type Binding } from './binding.js';

export interface RocksStoreOptions {
  /** Fsync the WAL before acknowledging writes. Default true; only benchmarks of the cost of durability turn it off. */
  syncWrites?: boolean;
}

interface Pending {
  ops: Binding.BindingWriteOp[];
  resolve: () => void;
  reject: (e: unknown) => void;
}

/**
 * Single-node `Store` on RocksDB (crates/store) with group commit: while one synced
 * batch is in flight, later writes queue up and go to disk together as the next batch.
 * That keeps writes durable *and* ordered (a later write never becomes durable before
 * an earlier one), so events built on it are published in sequence order.
 */
export class RocksStore implements Store {
  #native: Binding.NativeStore;
  #queue: Pending[] = [];
  #inFlight = false;
  #closed = false;
  #idle: Array<() => void> = [];

  private constructor(native: Binding.NativeStore) {
    this.#native = native;
  }

  static open(path: string, opts: RocksStoreOptions = {}): RocksStore {
    return new RocksStore(callNative(() => binding.NativeStore.open(path, { syncWrites: opts.syncWrites ?? true })));
  }

  async get(key: string): Promise<Buffer | undefined> {
    this.#checkOpen();
    return callNative(() => this.#native.getSync(Buffer.from(key))) ?? undefined;
  }

  async write(ops: WriteOp[]): Promise<void> {
    this.#checkOpen();
    const converted = ops.map((op) => {
      if (op.key.length === 0) throw new NovaError('STORE_INVALID_ARGUMENT', 'key must not be empty');
      const out: Binding.BindingWriteOp = { key: Buffer.from(op.key) };
      if (op.value !== undefined) out.value = Buffer.from(op.value.buffer, op.value.byteOffset, op.value.byteLength);
      return out;
    });
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ ops: converted, resolve, reject });
      this.#pump();
    });
  }

  async scan(range: KeyRange): Promise<Entry[]> {
    this.#checkOpen();
    const pairs = await callNative(() =>
      this.#native.scan({
        start: Buffer.from(range.start),
        end: Buffer.from(range.end),
        limit: range.limit ?? 0,
        reverse: range.reverse ?? false,
      }),
    );
    return pairs.map((p) => ({ key: p.key.toString(), value: p.value }));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#inFlight || this.#queue.length > 0) await new Promise<void>((r) => this.#idle.push(r));
    callNative(() => this.#native.close());
  }

  #checkOpen(): void {
    if (this.#closed) throw new NovaError('STORE_CLOSED');
  }

  #pump(): void {
    if (this.#inFlight) return;
    if (this.#queue.length === 0) {
      for (const r of this.#idle.splice(0)) r();
      return;
    }
    const group = this.#queue.splice(0);
    this.#inFlight = true;
    const ops = group.length === 1 ? group[0]!.ops : group.flatMap((p) => p.ops);
    callNative(() => this.#native.write(ops)).then(
      () => group.forEach((p) => p.resolve()),
      (e) => group.forEach((p) => p.reject(e)),
    ).finally(() => {
      this.#inFlight = false;
      this.#pump();
    });
  }
}
