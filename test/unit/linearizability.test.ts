import { describe, expect, it } from 'vitest';
import { checkKv, checkRegister, type KvOp, type RegisterOp } from '../helpers/linearizability.js';

const w = (value: string, start: number, end: number, client = 0): RegisterOp => ({ kind: 'write', value, start, end, client });
const r = (value: string | null, start: number, end: number, client = 1): RegisterOp => ({ kind: 'read', value, start, end, client });

describe('register linearizability checker', () => {
  it('accepts a sequential history', () => {
    expect(checkRegister([w('a', 0, 1), r('a', 2, 3), w('b', 4, 5), r('b', 6, 7)]).ok).toBe(true);
  });

  it('accepts a read overlapping a write seeing either value', () => {
    expect(checkRegister([w('a', 0, 1), w('b', 2, 6), r('a', 3, 4)]).ok).toBe(true);
    expect(checkRegister([w('a', 0, 1), w('b', 2, 6), r('b', 3, 4)]).ok).toBe(true);
  });

  it('rejects a stale read after a completed write', () => {
    expect(checkRegister([w('a', 0, 1), w('b', 2, 3), r('a', 4, 5)]).ok).toBe(false);
  });

  it('rejects reads that go back in time', () => {
    // b is written concurrently; one reader sees b, then a later read sees a again.
    expect(checkRegister([w('a', 0, 1), w('b', 2, 10), r('b', 3, 4), r('a', 5, 6, 2)]).ok).toBe(false);
  });

  it('rejects a value nobody wrote, and a lost acknowledged write', () => {
    expect(checkRegister([w('a', 0, 1), r('z', 2, 3)]).ok).toBe(false);
    expect(checkRegister([w('a', 0, 1), r(null, 2, 3)]).ok).toBe(false);
  });

  it('lets a write with unknown outcome take effect late or never', () => {
    expect(checkRegister([w('a', 0, 1), w('x', 2, Infinity), r('a', 3, 4), r('x', 5, 6)]).ok).toBe(true);
    expect(checkRegister([w('a', 0, 1), w('x', 2, Infinity), r('a', 3, 4)]).ok).toBe(true);
    // But not before it was issued.
    expect(checkRegister([w('a', 0, 1), r('x', 2, 3), w('x', 4, Infinity)]).ok).toBe(false);
  });
});

const on = (key: string, op: RegisterOp): KvOp => ({ ...op, key });

describe('key-value linearizability checker (per-key partitioning)', () => {
  it('accepts interleaved histories of several keys that are each linearizable', () => {
    const h = [on('x', w('a', 0, 2)), on('y', w('b', 1, 3)), on('x', r('a', 4, 5)), on('y', r('b', 4, 5)), on('y', w('c', 6, 7)), on('x', r('a', 8, 9)), on('y', r('c', 8, 9))];
    expect(checkKv(h)).toEqual({ ok: true, keys: 2 });
  });

  it('names the key whose history breaks, even when every other key is fine', () => {
    const h = [on('x', w('a', 0, 1)), on('x', r('a', 2, 3)), on('y', w('b', 0, 1)), on('y', w('c', 2, 3)), on('y', r('b', 4, 5))];
    const res = checkKv(h);
    expect(res.ok).toBe(false);
    expect(res.key).toBe('y');
  });

  it('does not let a value written to one key satisfy a read of another', () => {
    // As one register this would pass: the read of y sees the value written to x.
    expect(checkKv([on('x', w('a', 0, 1)), on('y', r('a', 2, 3))]).ok).toBe(false);
    expect(checkRegister([w('a', 0, 1), r('a', 2, 3)]).ok).toBe(true);
  });

  it('rejects a lost acknowledged write found by the final read after healing', () => {
    // Acknowledged b on x; after healing a member still returns a (a lost write).
    const h = [on('x', w('a', 0, 1)), on('x', w('b', 2, 3)), on('x', r('a', 100, 101, 9))];
    expect(checkKv(h).ok).toBe(false);
  });

  it('rejects a member answering the initial (missing) value after a write was read elsewhere', () => {
    // A follower that serves a stale local read: a write seen by one client, then "not found" to another.
    const h = [on('k', w('v', 0, 10)), on('k', r('v', 2, 3, 1)), on('k', r(null, 4, 5, 2))];
    expect(checkKv(h).ok).toBe(false);
  });

  it('rejects two clients that see two concurrent writes in opposite orders', () => {
    const h = [
      on('k', w('a', 0, 10, 0)), on('k', w('b', 0, 10, 1)),
      on('k', r('a', 1, 2, 2)), on('k', r('b', 3, 4, 2)),
      on('k', r('b', 1, 2, 3)), on('k', r('a', 3, 4, 3)),
    ];
    expect(checkKv(h).ok).toBe(false);
  });

  it('rejects a write with unknown outcome that is seen, then unseen, then seen again', () => {
    const h = [on('k', w('a', 0, 1)), on('k', w('x', 2, Infinity)), on('k', r('x', 3, 4)), on('k', r('a', 5, 6)), on('k', r('x', 7, 8))];
    expect(checkKv(h).ok).toBe(false);
  });
});
