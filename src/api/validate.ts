import type { z } from 'zod';
import { NovaError, type ErrorCode } from '../errors.js';

/** Parses `input` with a zod schema; a mismatch is a 400 with every problem listed. */
export function parseWith<S extends z.ZodType>(schema: S, input: unknown, code: ErrorCode = 'VALIDATION_FAILED'): z.output<S> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const problems = result.error.issues.map((i) => ({ path: i.path.map(String).join('.') || '(root)', message: i.message }));
  const summary = problems.slice(0, 5).map((p) => `${p.path}: ${p.message}`).join('; ');
  throw new NovaError(code, `${code === 'BAD_QUERY' ? 'invalid query' : 'invalid request'}: ${summary}`, { problems });
}
