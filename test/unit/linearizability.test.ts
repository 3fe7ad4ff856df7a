import { describe, expect, it } from 'vitest';
import { checkRegister, type RegisterOp } from '../helpers/linearizability.js';

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
