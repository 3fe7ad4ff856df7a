/** Cursor pagination of in-memory lists: `?limit=&cursor=`, the cursor being the last key of the previous page. */
import { z } from 'zod';

export const PageQuery = {
  limit: z.coerce.number().int().min(1).max(1000).default(1000),
  cursor: z.string().min(1).max(128).optional(),
};

/** The page after `cursor` of `items`, which are sorted by `key` (`order`). */
export function page<T>(items: T[], key: (t: T) => string, q: { limit: number; cursor?: string | undefined }, order: 'asc' | 'desc' = 'asc'): { items: T[]; nextCursor?: string } {
  const after = q.cursor === undefined ? 0 : items.findIndex((t) => (order === 'asc' ? key(t) > q.cursor! : key(t) < q.cursor!));
  const start = after === -1 ? items.length : after;
  const out = items.slice(start, start + q.limit);
  return { items: out, ...(start + q.limit < items.length && out.length > 0 ? { nextCursor: key(out.at(-1)!) } : {}) };
}
