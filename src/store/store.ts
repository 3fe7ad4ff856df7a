/**
 * The `Store` contract: NovaCron's persistent key-value state. The single-node
 * implementation is RocksDB (`RocksStore`); the cluster work implements it again on top
 * of Raft. Every implementation must pass `test/unit/store-contract.test.ts`.
 *
 * Contract:
 * - `write` is atomic (all ops or none) and resolves only once durable; writes resolve
 *   in the order they were called, and a write that resolved is visible to every later
 *   `get`/`scan`.
 * - Keys are non-empty strings compared bytewise as UTF-8; values are bytes.
 */
export interface WriteOp {
  key: string;
  /** New value; omit to delete the key. */
  value?: Uint8Array;
}

export interface KeyRange {
  /** Inclusive lower bound. */
  start: string;
  /** Exclusive upper bound; '' for unbounded. */
  end: string;
  /** Maximum pairs; 0 or omitted for unlimited. */
  limit?: number;
  /** Iterate from `end` down to `start`. */
  reverse?: boolean;
}

export interface Entry {
  key: string;
  value: Buffer;
}

export interface Store {
  get(key: string): Promise<Buffer | undefined>;
  write(ops: WriteOp[]): Promise<void>;
  scan(range: KeyRange): Promise<Entry[]>;
  /** Flushes and releases the store; later calls fail with STORE_CLOSED. */
  close(): Promise<void>;
}

/** The range covering every key that starts with `prefix`. */
export function prefixRange(prefix: string, opts: { limit?: number; reverse?: boolean } = {}): KeyRange {
  const last = prefix.charCodeAt(prefix.length - 1);
  const end = prefix.slice(0, -1) + String.fromCharCode(last + 1);
  return { start: prefix, end, ...opts };
}
