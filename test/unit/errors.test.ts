import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, NovaError, toErrorBody } from '../../src/errors.js';

describe('error registry', () => {
  it('matches the README table exactly', () => {
    const readme = readFileSync(join(import.meta.dirname, '..', '..', 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('### Error codes'), readme.indexOf('## CLI'));
    const rows = [...section.matchAll(/^\| ([A-Z_]+) \| (\d{3}) \|$/gm)].map((m) => [m[1], Number(m[2])]);
    expect(rows).toEqual(Object.entries(ERROR_CODES).map(([code, { status }]) => [code, status]));
  });

  it('never leaks internals of unexpected errors', () => {
    const { status, body } = toErrorBody(new TypeError('secret at /src/x.ts:1'));
    expect(status).toBe(500);
    expect(body).toEqual({ error: { code: 'INTERNAL', message: 'internal error' } });
    expect(toErrorBody(new NovaError('VM_BUSY')).status).toBe(409);
  });
});
