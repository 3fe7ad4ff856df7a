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

  it('registers every code the Rust crates produce, and the binding crate invents none', () => {
    const crates = join(import.meta.dirname, '..', '..', 'crates');
    const produced = new Set<string>();
    for (const file of ['store/src/error.rs', 'memdelta/src/lib.rs', 'raftstore/src/error.rs', 'miglink/src/error.rs']) {
      const src = readFileSync(join(crates, file), 'utf8');
      const start = src.indexOf("pub fn code(&self) -> &'static str {");
      expect(start, `${file} has a code() list`).toBeGreaterThan(-1);
      const body = src.slice(start, src.indexOf('\n    }\n', start));
      const codes = [...body.matchAll(/"([A-Z][A-Z0-9_]+)"/g)].map((m) => m[1]!);
      expect(codes.length, file).toBeGreaterThan(0);
      for (const c of codes) produced.add(c);
    }
    for (const c of produced) expect(ERROR_CODES, `code ${c} from the crates`).toHaveProperty(c);
    // The binding only passes domain codes through: no code literals of its own.
    for (const file of ['lib.rs', 'store.rs', 'memdelta.rs', 'raft.rs', 'miglink.rs']) {
      const src = readFileSync(join(crates, 'node', 'src', file), 'utf8');
      expect(src, file).not.toMatch(/(?:js_error|Code|BindingError::new)\("[A-Z]/);
    }
  });
});
