/**
 * A Wing–Gong–Lowe linearizability checker (the algorithm behind Porcupine and Knossos)
 * for a single read/write register.
 *
 * An operation that failed for sure (the server said it did not happen) is left out of
 * the history. An operation whose outcome is unknown (timeout, connection reset, a
 * 5xx that may have been applied) is kept with an open end (`end = Infinity`): it may
 * take effect at any point after its start, or never — a write with unknown outcome
 * may be linearized or dropped, and a read with unknown outcome constrains nothing.
 */
export type RegisterOp =
  | { kind: 'write'; value: string; start: number; end: number; client: number }
  | { kind: 'read'; value: string | null; start: number; end: number; client: number };

export interface CheckResult {
  ok: boolean;
  /** For a failure: the longest linearizable prefix found, to help debugging. */
  longestPrefix?: RegisterOp[];
}

interface Node {
  op: RegisterOp | undefined;
  /** Index of the operation in the history; call and return entries share it. */
  id: number;
  isCall: boolean;
  match?: Node;
  prev?: Node;
  next?: Node;
}

export function checkRegister(history: RegisterOp[], initial: string | null = null): CheckResult {
  // Reads with unknown outcome say nothing; drop them.
  const ops = history.filter((o) => !(o.kind === 'read' && o.end === Infinity));
  // Entries sorted by time; a call before a return at the same instant.
  const entries: Array<{ time: number; isCall: boolean; id: number }> = [];
  ops.forEach((op, id) => {
    entries.push({ time: op.start, isCall: true, id });
    entries.push({ time: op.end, isCall: false, id });
  });
  entries.sort((a, b) => a.time - b.time || (a.isCall === b.isCall ? 0 : a.isCall ? -1 : 1));
  const head: Node = { op: undefined, id: -1, isCall: false };
  let tail = head;
  const calls = new Map<number, Node>();
  for (const e of entries) {
    const node: Node = { op: ops[e.id], id: e.id, isCall: e.isCall, prev: tail };
    tail.next = node;
    tail = node;
    if (e.isCall) calls.set(e.id, node);
    else {
      const call = calls.get(e.id)!;
      call.match = node;
      node.match = call;
    }
  }

  const lift = (call: Node) => {
    call.prev!.next = call.next;
    if (call.next) call.next.prev = call.prev;
    const ret = call.match!;
    ret.prev!.next = ret.next;
    if (ret.next) ret.next.prev = ret.prev;
  };
  const unlift = (call: Node) => {
    const ret = call.match!;
    ret.prev!.next = ret;
    if (ret.next) ret.next.prev = ret;
    call.prev!.next = call;
    if (call.next) call.next.prev = call;
  };
  const apply = (state: string | null, op: RegisterOp): [boolean, string | null] => {
    if (op.kind === 'write') return [true, op.value];
    return [op.value === state, state];
  };

  const linearized = new Set<number>();
  const cache = new Map<string, Set<string>>(); // linearized-set key → states seen
  const stack: Array<{ call: Node; state: string | null }> = [];
  let state = initial;
  let entry = head.next;
  let best: number[] = [];
  const key = () => [...linearized].sort((a, b) => a - b).join(',');

  while (head.next) {
    if (!entry) return { ok: false, longestPrefix: best.map((i) => ops[i]!) };
    if (entry.isCall) {
      const [ok, next] = apply(state, entry.op!);
      let fresh = false;
      if (ok) {
        linearized.add(entry.id);
        const k = key();
        const seen = cache.get(k) ?? new Set<string>();
        const sk = JSON.stringify(next);
        if (!seen.has(sk)) {
          seen.add(sk);
          cache.set(k, seen);
          fresh = true;
        } else linearized.delete(entry.id);
      }
      if (ok && fresh) {
        stack.push({ call: entry, state });
        state = next;
        lift(entry);
        if (linearized.size > best.length) best = [...linearized];
        entry = head.next;
      } else {
        entry = entry.next;
      }
    } else {
      // A return reached before its call was linearized: backtrack — unless the
      // operation's outcome is unknown (end = Infinity), which never returns.
      if (stack.length === 0) return { ok: false, longestPrefix: best.map((i) => ops[i]!) };
      const top = stack.pop()!;
      linearized.delete(top.call.id);
      state = top.state;
      unlift(top.call);
      entry = top.call.next;
    }
  }
  return { ok: true };
}

/** An operation on one key of a key-value store. */
export type KvOp = RegisterOp & { key: string };

export interface KvCheckResult extends CheckResult {
  /** The first key whose history is not linearizable. */
  key?: string;
  /** How many keys the history touched. */
  keys: number;
}

/**
 * Linearizability of a key-value history. Linearizability is local (Herlihy and Wing):
 * a history is linearizable exactly when each object's sub-history is, so each key is
 * checked as its own register — which also keeps the search small (Porcupine's
 * partitioning).
 */
export function checkKv(history: KvOp[], initial: string | null = null): KvCheckResult {
  const byKey = new Map<string, RegisterOp[]>();
  for (const op of history) {
    let ops = byKey.get(op.key);
    if (!ops) byKey.set(op.key, (ops = []));
    ops.push(op);
  }
  for (const [key, ops] of byKey) {
    const r = checkRegister(ops, initial);
    if (!r.ok) return { ...r, key, keys: byKey.size };
  }
  return { ok: true, keys: byKey.size };
}
