import { describe, expect, it } from 'vitest';
import { page } from '../../src/api/paging.js';

describe('cursor paging', () => {
  const ids = Array.from({ length: 25 }, (_, i) => `id-${String(i).padStart(2, '0')}`);
  it('walks every item once, in order, both ways, and ends without a cursor', () => {
    for (const order of ['asc', 'desc'] as const) {
      const sorted = order === 'asc' ? ids : [...ids].reverse();
      const seen: string[] = [];
      let cursor: string | undefined;
      for (let i = 0; i < 10; i++) {
        const p = page(sorted, (x) => x, { limit: 10, ...(cursor ? { cursor } : {}) }, order);
        seen.push(...p.items);
        cursor = p.nextCursor;
        if (!cursor) break;
      }
      expect(seen).toEqual(sorted);
      expect(cursor).toBeUndefined();
    }
  });

  it('resumes after a cursor whose item has gone', () => {
    const without = ids.filter((x) => x !== 'id-09');
    expect(page(without, (x) => x, { limit: 3, cursor: 'id-09' }).items).toEqual(['id-10', 'id-11', 'id-12']);
    expect(page(ids, (x) => x, { limit: 3, cursor: 'id-99' }).items).toEqual([]);
  });
});
